"""ATCON's evaluation (docs/atcon.md): the weakly supervised localisation IoU by hand, batched vs
per image, ties and edge cases; macro F1 against torchmetrics; the evaluator on a tiny multi-label
dataset with boxes.csv (in process) and the whole prepare -> train -> evaluate path (slow)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import albumentations as A
import pytest
import pytorch_lightning as pl
import torch
from albumentations.pytorch import ToTensorV2
from conftest import run_cli
from test_data_boxes import CLASS_NAMES, write_multilabel_dataset
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassF1Score, MultilabelF1Score

from xai_bench.data import ImageTableDataset
from xai_bench.explain import build_method
from xai_bench.metrics import EvalBatch, build_metric
from xai_bench.metrics.functional.localisation import wsl_iou
from xai_bench.metrics.predictions import PredictionTable, class_set_texts
from xai_bench.modules.evaluator import ExplanationEvaluator
from xai_bench.report import per_image_rows, summarise
from xai_bench.tracking.records import EvaluationSummary
from xai_bench.utils.errors import ConfigError


def _box(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _class_masks(*per_class: torch.Tensor | None, h: int = 8, w: int = 8) -> torch.Tensor:
    """(1, C, H, W) from one mask (or None = no box) per class."""
    return torch.stack([m if m is not None else torch.zeros(h, w, dtype=torch.uint8)
                        for m in per_class])[None]


# ----------------------------------------------------------------------------- wsl_iou by hand
def test_map_equal_to_the_box_scores_one() -> None:
    box = _box(8, 8, 2, 1, 6, 5)
    assert wsl_iou(box[None].float(), _class_masks(None, box), torch.tensor([1])).item() == 1.0


def test_half_overlap_and_union_of_boxes() -> None:
    boxes = _box(8, 8, 0, 0, 4, 4)  # 16 px
    kept = _box(8, 8, 2, 0, 6, 4).float()  # 16 px, 8 of them inside
    assert wsl_iou(kept[None], _class_masks(boxes),
                   torch.tensor([0])).item() == pytest.approx(8 / 24)
    union = boxes | _box(8, 8, 4, 0, 6, 4)  # a second box of the same class: the union counts
    assert wsl_iou(kept[None], _class_masks(union),
                   torch.tensor([0])).item() == pytest.approx(16 / 24)


def test_the_explained_class_decides_and_a_class_without_box_is_a_miss() -> None:
    cat, dog = _box(8, 8, 0, 0, 4, 8), _box(8, 8, 4, 0, 8, 8)
    maps = cat[None].float().expand(3, -1, -1)
    masks = _class_masks(cat, dog, None).expand(3, -1, -1, -1)
    assert wsl_iou(maps, masks, torch.tensor([0, 1, 2])).tolist() == [1.0, 0.0, 0.0]


def test_image_without_boxes_and_nan_map_are_nan() -> None:
    maps = torch.stack([torch.ones(8, 8), torch.full((8, 8), math.nan)])
    masks = torch.cat([_class_masks(None, None), _class_masks(_box(8, 8, 0, 0, 2, 2), None)])
    scores = wsl_iou(maps, masks, torch.tensor([0, 0]))
    assert torch.isnan(scores).all() and scores.dtype == torch.float32


def test_threshold_ties_are_kept_and_constant_maps() -> None:
    box = _box(8, 8, 0, 0, 4, 4)
    at = torch.zeros(8, 8)
    at[:4, :4] = 0.5  # exactly at the threshold: kept (>=)
    below = at.clone()
    below[:4, :4] = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))
    masks = _class_masks(box).expand(4, -1, -1, -1)
    maps = torch.stack([at, below, torch.ones(8, 8), torch.zeros(8, 8)])
    assert (wsl_iou(maps, masks, torch.zeros(4, dtype=torch.long)).tolist()
            == [1.0, 0.0, 16 / 64, 0.0])
    assert wsl_iou(at[None], masks[:1], torch.tensor([0]), threshold=0.6).item() == 0.0


def test_batched_equals_per_image() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(16, 12, 10, generator=gen)
    masks = (torch.rand(16, 5, 12, 10, generator=gen) > 0.7).to(torch.uint8)
    masks[3] = 0  # an image without boxes
    masks[5, 2] = 0  # a class without box
    targets = torch.randint(0, 5, (16,), generator=gen)
    targets[5] = 2
    batched = wsl_iou(maps, masks, targets, threshold=0.6)
    single = torch.cat([wsl_iou(maps[i:i + 1], masks[i:i + 1], targets[i:i + 1], threshold=0.6)
                        for i in range(16)])
    torch.testing.assert_close(batched, single, equal_nan=True)
    assert (math.isnan(batched[3]) and batched[5] == 0.0
            and (batched[~torch.isnan(batched)] > 0).sum() >= 10)


@pytest.mark.parametrize(
    ("masks", "targets", "threshold", "match"),
    [
        (torch.zeros(1, 2, 8, 7), [0], 0.5, "class_masks must be"),
        (torch.zeros(1, 2, 8, 8), [2], 0.5, r"targets must be 1 class indices in 0..1"),
        (torch.zeros(1, 2, 8, 8), [0, 1], 0.5, "targets must be"),
        (torch.zeros(1, 2, 8, 8), [0], float("nan"), "threshold"),
    ],
)
def test_invalid_arguments_raise_config_errors(masks, targets, threshold, match) -> None:
    with pytest.raises(ConfigError, match=match):
        wsl_iou(torch.rand(1, 8, 8), masks, torch.tensor(targets), threshold=threshold)


# ----------------------------------------------------------------------------- the metric
def _eval_batch(maps: torch.Tensor, class_masks: torch.Tensor | None,
                target: list[int]) -> EvalBatch:
    n = maps.shape[0]
    return EvalBatch(images=torch.zeros(n, 3, *maps.shape[1:]), labels=torch.zeros(n, 2),
                     ids=torch.arange(n), maps=maps, target=torch.tensor(target),
                     logits=torch.zeros(n, 2), model=nn.Identity(),
                     method=None, class_masks=class_masks)  # type: ignore[arg-type]


def test_metric_scores_per_image_and_counts_nan() -> None:
    box = _box(8, 8, 0, 0, 4, 4)
    masks = torch.cat([_class_masks(box, None), _class_masks(None, box), _class_masks(None, None)])
    metric = build_metric("wsl_iou", threshold=0.5)
    metric.update(_eval_batch(box[None].float().expand(3, -1, -1), masks, [0, 0, 1]))
    table = metric.compute()
    assert table["id"].tolist() == [0, 1, 2] and table["wsl_iou"][:2].tolist() == [1.0, 0.0]
    assert math.isnan(table["wsl_iou"][2])
    assert metric.aggregate({"wsl_iou": table["wsl_iou"]})["wsl_iou"].item() == pytest.approx(0.5)


def test_metric_without_boxes_says_so() -> None:
    with pytest.raises(ConfigError, match="no boxes.csv"):
        build_metric("wsl_iou").update(_eval_batch(torch.rand(1, 8, 8), None, [0]))


def test_wsl_config_builds_the_metric(compose_cfg) -> None:
    import hydra

    cfg = compose_cfg("metric=[wsl]", "ckpt=x.ckpt", config_name="evaluate")
    assert list(cfg.metric) == ["wsl_iou"]
    metric = hydra.utils.instantiate(cfg.metric.wsl_iou)(key="wsl_iou")
    assert metric.threshold == 0.5 and metric.columns == ("wsl_iou",)


# ----------------------------------------------------------------------------- macro F1
def _predictions(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool,
                 batch: int = 7) -> dict:
    table = PredictionTable(num_classes=logits.shape[1], multilabel=multilabel)
    n = logits.shape[0]
    for start in range(0, n, batch):
        rows = slice(start, start + batch)
        table.update(EvalBatch(images=torch.zeros(0), labels=labels[rows],
                               ids=torch.arange(n)[rows], maps=torch.zeros(0),
                               target=torch.zeros(0), logits=logits[rows],
                               model=nn.Identity(), method=None))  # type: ignore[arg-type]
    return table.compute()


@pytest.mark.parametrize("num_classes", [5, 30])  # 30: the label sets span two bit words
def test_multilabel_macro_f1_equals_torchmetrics(num_classes: int) -> None:
    gen = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(60, num_classes, generator=gen) * 2 - 1
    labels = (torch.rand(60, num_classes, generator=gen) > 0.6).float()
    labels[:, 1], logits[:, 1] = 0, -5  # a class nobody has nor predicts: F1 0, still averaged
    columns = {k: v for k, v in _predictions(logits, labels, multilabel=True).items() if k != "id"}
    ours = PredictionTable(num_classes=num_classes).aggregate(columns)
    expected = MultilabelF1Score(num_classes, average="macro")(logits.sigmoid(), labels.long())
    # torchmetrics: float32
    assert ours["f1_macro"].item() == pytest.approx(expected.item(), rel=1e-6)
    exact = ((logits.sigmoid() >= 0.5) == labels.bool()).all(dim=1).double().mean()
    assert ours["accuracy"].item() == pytest.approx(exact.item())
    # bootstrap resamples (R, N) reduce the last dimension like the point estimate
    resampled = PredictionTable(num_classes=num_classes).aggregate(
        {k: v[None].repeat(3, 1) for k, v in columns.items()})
    assert resampled["f1_macro"].tolist() == pytest.approx([ours["f1_macro"].item()] * 3)


def test_multilabel_sets_and_threshold_tie() -> None:
    # sigmoid(0) = 0.5 exactly: positive
    logits = torch.tensor([[0.0, -1.0, 3.0], [-2.0, 1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    table = _predictions(logits, labels, multilabel=True)
    assert class_set_texts(table, "label_set") == ["0;2", "2"]
    assert class_set_texts(table, "pred_set") == ["0;2", "1"]
    assert table["correct"].tolist() == [1.0, 0.0] and torch.isnan(table["label"]).all()
    assert table["prob"].tolist() == pytest.approx(torch.sigmoid(torch.tensor([3.0, 1.0])).tolist())
    assert class_set_texts({"label": table["label"]}, "label_set") is None


def test_single_label_macro_f1_equals_torchmetrics() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 4, generator=gen)
    logits[:, 3] -= 10  # class 3: never predicted ...
    labels = torch.randint(0, 3, (50,), generator=gen)  # ... nor a label: left out of the average
    columns = {k: v for k, v in _predictions(logits, labels, multilabel=False).items() if k != "id"}
    ours = PredictionTable(num_classes=4).aggregate(columns)
    expected = MulticlassF1Score(4, average="macro")(logits, labels)
    # torchmetrics: float32
    assert ours["f1_macro"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(ours) == {"accuracy", "balanced_accuracy", "f1_macro"}


# ----------------------------------------------------------------------------- evaluation
class _FixedLogits(nn.Module):
    """Logits [1, -1, 2] for every image: predicted set {0, 2}, top class 2 (what maps explain)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, -1.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1) + 0 * x.mean(dim=(1, 2, 3))[:, None]


def test_evaluator_on_a_multilabel_dataset_with_boxes(tmp_path: Path) -> None:
    root = write_multilabel_dataset(tmp_path / "voc_like")
    transform = A.Compose([A.Resize(10, 20), A.Normalize(), ToTensorV2()])
    dataset = ImageTableDataset(root, "test", transform, class_names=CLASS_NAMES, multilabel=True)
    module = ExplanationEvaluator(_FixedLogits(), {"uniform": build_method("uniform")},
                                  {"wsl_iou": lambda key: build_metric("wsl_iou", key=key)},
                                  num_classes=3, multilabel=True, overlay_ids=[0],
                                  overlay_dir=tmp_path / "overlays")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.test(module, dataloaders=DataLoader(dataset, batch_size=2), verbose=False)

    summary = summarise(module.results, {"uniform": module.metric_objects("uniform")}, 3,
                        samples=50)
    # uniform maps keep every pixel, explaining class 2: t0 -> its class-2 area (432 / 800 px),
    # t1 has no boxes (NaN), t2 has no class-2 box (a miss)
    wsl = summary["methods"]["uniform"]["metrics"]["wsl_iou"]
    assert wsl["value"] == pytest.approx((432 / 800 + 0.0) / 2) and wsl["n"] == 2
    classification = summary["classification"]
    assert classification["accuracy"]["value"] == pytest.approx(1 / 3)  # only t0's set is {0, 2}
    assert classification["f1_macro"]["value"] == pytest.approx((0.8 + 0.0 + 0.5) / 3)
    rows = per_image_rows(module.results)
    assert [(r["label"], r["pred"], r["target"]) for r in rows] == [("0;2", "0;2", 2),
                                                                      ("1", "0;2", 2),
                                                                      ("0;1", "0;2", 2)]
    assert rows[1]["wsl_iou"] == "" and rows[2]["wsl_iou"] == 0
    assert (tmp_path / "overlays" / "uniform" / "000000.png").is_file()


@pytest.mark.slow
def test_prepare_train_evaluate_pascal_voc_layout(tmp_path: Path) -> None:
    """The real path: a VOC-layout folder prepared by the script, a tiny model trained on it,
    evaluated with the study's metrics and wsl_iou; metrics.json and per_image.csv carry them."""
    from test_prepare import _voc_raw

    from xai_bench import prepare as prepare_cli

    prepare_cli.run(["pascal_voc", "--raw", str(_voc_raw(tmp_path / "raw").parent), "--out",
                     str(tmp_path / "data" / "pascal_voc")])
    common = [f"paths.data_dir={tmp_path / 'data'}", "logger=none"]
    train = run_cli(["xai_bench.train", "dataset=pascal_voc", "debug=tiny",
                     f"hydra.run.dir={tmp_path / 'run'}", *common], cwd=tmp_path, timeout=600)
    assert train.returncode == 0, train.stderr[-5000:]
    out = tmp_path / "eval"
    proc = run_cli(["xai_bench.evaluate", f"ckpt={tmp_path / 'run'}", "method=attention",
                    "metric=[study,wsl]", "overlays=1", f"hydra.run.dir={out}", *common],
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = EvaluationSummary.read(out)
    assert {"accuracy", "f1_macro"} == set(summary.classification)
    for method in ("attention", "random", "centre", "uniform"):
        stats = summary.methods[method].metrics["wsl_iou"]
        assert stats["n"] == 4 and 0.0 <= stats["value"] <= 1.0
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    # dog;person, cat;person
    assert len(rows) == 16 and {r["label"] for r in rows} <= {"11;14", "7;14"}
