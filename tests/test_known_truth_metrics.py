"""Known-truth evaluation (docs/known-truth.md): the maps scored against the lesion and the
planted marker (`mask: roi | marker`, `marker_share`), the model's reliance on the marker
(ModelReliance), and the evaluation that reports both.

The end-to-end tests run two hand-built models through the real ExplanationEvaluator on the
synthetic dataset's decorrelated split: one reads only the marker's pixels (reliance must be
exactly 1), one never sees them and answers from the lesion (reliance exactly 0).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO_ROOT, TINY_RUN, fails_cleanly, run_cli
from omegaconf import OmegaConf
from torch import nn

from xai_bench import evaluate as entry
from xai_bench.data.datamodule import SyntheticDataModule
from xai_bench.explain import build_method
from xai_bench.metrics import EvalBatch, ModelReliance, bootstrap_summary, build_metric
from xai_bench.modules.evaluator import ExplanationEvaluator
from xai_bench.modules.reliance import measure_reliance
from xai_bench.report.tables import PREDICTION_COLUMNS, per_image_rows, summarise
from xai_bench.tracking.records import EvaluationSummary, TrainingRecord
from xai_bench.utils.errors import ConfigError

NAN = float("nan")
ROI_METRICS = ["pointing_game", "iou", "relevance_mass", "relevance_rank", "top_k_intersection",
               "auc", "attribution_localisation"]
SETTINGS: dict[str, dict[str, Any]] = {"iou": {"q": [10, 40]}, "top_k_intersection": {"k": 5}}
KNOWN_TRUTH_COLUMNS = ["lesion_pointing_game", "marker_pointing_game", "lesion_mass",
                       "marker_mass", "lesion_iou@1", "lesion_iou@5", "marker_iou@1",
                       "marker_iou@5", "marker_share"]


def _batch(maps: torch.Tensor, masks: torch.Tensor | None, marker: torch.Tensor | None,
           has_mask: torch.Tensor | None = None, logits: torch.Tensor | None = None,
           labels: torch.Tensor | None = None) -> EvalBatch:
    count = maps.shape[0]
    logits = torch.zeros(count, 2) if logits is None else logits
    if has_mask is None and masks is not None:
        has_mask = masks.flatten(1).any(dim=1)
    return EvalBatch(
        images=torch.zeros(count, 3, *maps.shape[1:]),
        labels=torch.zeros(count, dtype=torch.long) if labels is None else labels,
        ids=torch.arange(count), maps=maps, target=logits.argmax(-1), logits=logits,
        model=nn.Identity(), method=build_method("uniform"), masks=masks, has_mask=has_mask,
        marker_masks=marker,
    )


def _scores(metric_name: str, batch: EvalBatch, **kwargs: Any) -> dict[str, torch.Tensor]:
    metric = build_metric(metric_name, **{**SETTINGS.get(metric_name, {}), **kwargs})
    metric.update(batch)
    table = metric.compute()
    return {k: v for k, v in table.items() if k != "id"}


# ---------------------------------------------------------------------------------------------
# marker_share


def _regions(size: int = 6, count: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3 x 3 lesion in the middle and a 2 x 2 marker in the corner, on `count` images."""
    lesion = torch.zeros(count, size, size)
    lesion[:, 2:5, 2:5] = 1
    marker = torch.zeros(count, size, size)
    marker[:, 0:2, 0:2] = 1
    return lesion, marker


def test_marker_share_is_positive_relevance_per_pixel_on_the_marker_over_both() -> None:
    lesion, marker = _regions(count=3)
    maps = torch.zeros(3, 6, 6)
    maps[0, 0:2, 0:2] = 0.25  # marker: 0.25 per pixel
    maps[0, 2:5, 2:5] = 1.0 / 3  # lesion: 1/3 per pixel
    maps[0, 2, 2] = -5.0  # negative relevance is clipped at 0: the lesion keeps 8/3 / 9 px
    maps[0, 5, 0] = 7.0  # outside both regions: ignored
    maps[1, 0, 0] = 2.0  # all positive relevance on the marker
    maps[1, 3, 3] = -1.0
    maps[2, 3, 3] = 0.5  # all on the lesion
    share = _scores("marker_share", _batch(maps, lesion, marker))["marker_share"]
    torch.testing.assert_close(share, torch.tensor([0.25 / (0.25 + 8.0 / 27), 1.0, 0.0]))


def test_marker_share_is_nan_unless_both_regions_and_some_positive_relevance() -> None:
    lesion, marker = _regions(count=6)
    maps = torch.rand(6, 6, 6, generator=torch.Generator().manual_seed(0)) + 0.1
    marker[0] = 0  # no marker
    lesion[1] = 0  # no lesion
    has_mask = torch.ones(6, dtype=torch.bool)
    has_mask[1] = False
    has_mask[2] = False  # a lesion mask the image is said not to have: not a lesion
    maps[3, 1, 4] = NAN  # NaN map
    maps[4] = 0.0  # no relevance anywhere
    maps[5] = -1.0  # only negative relevance
    share = _scores("marker_share", _batch(maps, lesion, marker, has_mask))["marker_share"]
    assert torch.isnan(share).all(), share


def test_marker_share_declares_what_it_needs_and_refuses_batches_without() -> None:
    metric = build_metric("marker_share")
    assert metric.needs == {"mask", "marker_mask"} and metric.higher_is_better is None
    assert metric.requires_mask and metric.requires_marker
    lesion, marker = _regions()
    with pytest.raises(ConfigError, match="marker masks.*dataset.shortcut.enabled=true"):
        metric.update(_batch(torch.rand(1, 6, 6), lesion, None))
    with pytest.raises(ConfigError, match="lesion \\(ROI\\) masks"):
        metric.update(_batch(torch.rand(1, 6, 6), None, marker))


# ---------------------------------------------------------------------------------------------
# every ROI metric against the marker


def _random_case(count: int = 6, size: int = 12) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    maps = torch.rand(count, size, size, generator=gen)
    lesion = torch.zeros(count, size, size)
    lesion[:, 4:9, 5:10] = 1
    marker = torch.zeros(count, size, size)
    marker[:, 0:3, 0:3] = 1
    marker[1::2] = 0  # every other image without a marker
    maps[0, 1, 1] = 5.0  # a peak on the marker (pointing game: a hit)
    return maps, lesion, marker


@pytest.mark.parametrize("name", ROI_METRICS)
@pytest.mark.parametrize("empty_mask", ["miss", "skip"])
def test_mask_marker_scores_as_the_roi_metric_with_the_marker_as_roi(name: str,
                                                                     empty_mask: str) -> None:
    maps, lesion, marker = _random_case()
    kwargs = {} if name == "auc" else {"empty_mask": empty_mask}
    ours = _scores(name, _batch(maps, lesion, marker), mask="marker", **kwargs)
    has_marker = marker.flatten(1).any(dim=1)
    as_roi = _scores(name, _batch(maps, marker, None, has_mask=has_marker), **kwargs)
    assert ours.keys() == as_roi.keys()
    for column, values in ours.items():
        # an image without a marker is undefined (NaN), whatever empty_mask says
        assert torch.isnan(values[~has_marker]).all(), column
        torch.testing.assert_close(values[has_marker], as_roi[column][has_marker],
                                   rtol=0, atol=0, equal_nan=True, msg=column)
        assert not torch.isnan(values[has_marker]).all(), column


@pytest.mark.parametrize("name", ROI_METRICS)
def test_mask_roi_is_the_metric_as_it_was(name: str) -> None:
    maps, lesion, marker = _random_case()
    lesion[2] = 0  # an empty ROI: the default empty_mask counts a miss
    plain = _scores(name, _batch(maps, lesion, None))
    for batch in (_batch(maps, lesion, None), _batch(maps, lesion, marker)):
        ours = _scores(name, batch, mask="roi")
        for column, values in plain.items():
            torch.testing.assert_close(ours[column], values, rtol=0, atol=0, equal_nan=True,
                                       msg=column)


def test_mask_marker_needs_the_marker_not_the_roi() -> None:
    roi, on_marker = build_metric("iou", q=[5]), build_metric("iou", q=[5], mask="marker")
    assert roi.needs == {"mask"} and roi.requires_mask and not roi.requires_marker
    assert on_marker.needs == {"marker_mask"} and on_marker.requires_marker
    assert not on_marker.requires_mask
    assert build_metric("iou").needs == {"mask"}  # the class's declaration is untouched
    maps, lesion, _ = _random_case()
    with pytest.raises(ConfigError, match="mask: marker.*dataset.shortcut.enabled=true"):
        on_marker.update(_batch(maps, lesion, None))
    with pytest.raises(ConfigError, match="mask must be one of roi, marker"):
        build_metric("pointing_game", mask="lesion")


def test_the_known_truth_config_names_its_columns() -> None:
    metrics = _known_truth_metrics()
    maps, lesion, marker = _random_case(size=64)
    batch = _batch(maps, lesion, marker)
    columns = []
    for key, factory in metrics.items():
        metric = factory(key=key)
        metric.update(batch)
        columns += [c for c in metric.compute() if c != "id"]
    assert columns == KNOWN_TRUTH_COLUMNS
    assert all(factory(key=key).requires_marker == key.startswith("marker")
               for key, factory in metrics.items())


# ---------------------------------------------------------------------------------------------
# ModelReliance


def _reliance_batch(lesion: list[int], marker: list[int], pred: list[int],
                    classes: int = 2) -> EvalBatch:
    count = len(lesion)
    lesion_masks = torch.zeros(count, 4, 4)
    lesion_masks[torch.tensor(lesion).bool(), 2:, 2:] = 1
    marker_masks = torch.zeros(count, 4, 4)
    marker_masks[torch.tensor(marker).bool(), 0, 0] = 1
    logits = torch.nn.functional.one_hot(torch.tensor(pred), classes).float()
    return _batch(torch.rand(count, 4, 4), lesion_masks, marker_masks, logits=logits)


def test_model_reliance_columns_and_aggregate() -> None:
    # agree: (0, 0) x2, (1, 1) x2; conflict: lesion only x3, marker only x3
    lesion = [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    marker = [0, 0, 1, 1, 0, 0, 0, 1, 1, 1]
    pred = [0, 1, 1, 1, 1, 0, 0, 1, 1, 0]
    metric = ModelReliance()
    metric.update(_reliance_batch(lesion, marker, pred))
    table = metric.compute()
    assert table["lesion"].tolist() == lesion and table["marker"].tolist() == marker
    follows = table["follows_marker"]
    assert torch.isnan(follows[:4]).all()
    # lesion only: pred 0 follows the (absent) marker; marker only: pred 1 does
    assert follows[4:].tolist() == [0, 1, 1, 1, 1, 0]
    out = metric.aggregate({k: v for k, v in table.items() if k != "id"})
    assert out["reliance"].item() == pytest.approx(4 / 6)
    assert out["agree_accuracy"].item() == pytest.approx(3 / 4)
    assert out["conflict_images"].item() == 6


def test_model_reliance_reduces_the_last_dim_under_the_bootstrap() -> None:
    metric = ModelReliance()
    metric.update(_reliance_batch([0, 1, 1, 0, 1, 0], [0, 1, 0, 1, 1, 1], [1, 1, 0, 1, 0, 0]))
    columns = {k: v for k, v in metric.compute().items() if k != "id"}
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(6, (50, 6), generator=gen)
    stacked = metric.aggregate({k: v[idx] for k, v in columns.items()})
    for name, values in stacked.items():
        assert values.shape == (50,), name
        rows = torch.stack([metric.aggregate({k: v[row] for k, v in columns.items()})[name]
                            for row in idx])
        torch.testing.assert_close(values, rows, equal_nan=True, msg=name)
    summary = bootstrap_summary(columns, metric.aggregate, samples=200)
    assert set(summary) == {"reliance", "agree_accuracy", "conflict_images"}
    assert summary["reliance"]["ci_low"] <= summary["reliance"]["value"] <= \
        summary["reliance"]["ci_high"]


@pytest.mark.parametrize("case", ["no_marker_masks", "three_classes", "multilabel"])
def test_model_reliance_is_nan_where_it_has_no_meaning(case: str) -> None:
    batch = _reliance_batch([0, 1], [1, 0], [1, 0], classes=3 if case == "three_classes" else 2)
    if case == "no_marker_masks":
        batch.marker_masks = None
    if case == "multilabel":
        batch.labels = torch.tensor([[1, 0], [0, 1]])
    metric = ModelReliance()
    metric.update(batch)
    table = metric.compute()
    assert all(torch.isnan(table[c]).all() for c in ("lesion", "marker", "follows_marker"))
    out = metric.aggregate({k: v for k, v in table.items() if k != "id"})
    assert math.isnan(out["reliance"]) and out["conflict_images"] == 0


@pytest.mark.parametrize("markers", [[0, 1, 1, 0], [0, 0, 0, 0]], ids=["agreeing", "none"])
def test_summaries_without_conflict_images_stay_as_they_were(markers: list[int]) -> None:
    """An evaluation whose images never set lesion against marker (the cues always agree, or a
    dataset without a planted marker, whose marker masks are all empty): no known_truth key,
    and per_image.csv has exactly the columns it had."""
    metric = ModelReliance()
    metric.update(_reliance_batch([0, 1, 1, 0], markers, [0, 1, 0, 0]))
    predictions = {"id": torch.arange(4), **{c: torch.zeros(4) for c in PREDICTION_COLUMNS}}
    results: dict[str, Any] = {"predictions": predictions, "methods": {}}
    before = summarise(results, {}, num_classes=2, samples=10)
    rows_before = per_image_rows(results)
    results["reliance"] = metric.compute()
    assert summarise(results, {}, num_classes=2, samples=10) == before
    assert "known_truth" not in before
    assert per_image_rows(results) == rows_before
    assert "known_truth" not in EvaluationSummary.from_dict(before).to_dict()


# ---------------------------------------------------------------------------------------------
# hand-built models through the real evaluator


SIZE, IMAGES = 32, 64
MARKER_THRESHOLD = 0.85  # the marker is near white (250, 250, 246); mucosa is far darker


def _data() -> SyntheticDataModule:
    return SyntheticDataModule(img_size=SIZE, num_train=8, num_val=8, num_test=8,
                               num_decorrelated=IMAGES, batch_size=16,
                               shortcut={"enabled": True, "rule": "both", "strength": 0.9})


def _window(data: SyntheticDataModule) -> tuple[slice, slice]:
    """The marker's pixels, found from the split's masks (one fixed square for every image)."""
    dataset = data.eval_dataloader("decorrelated").dataset
    masks = torch.stack([dataset[i]["marker_mask"] for i in range(len(dataset))])
    ys, xs = torch.nonzero(masks.amax(dim=0), as_tuple=True)
    return slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)


class MarkerReader(nn.Module):
    """Reads only the marker's pixels: class 1 iff the window's mean brightness (de-normalised)
    exceeds MARKER_THRESHOLD. Its input gradient is constant on the window, 0 elsewhere."""

    def __init__(self, window: tuple[slice, slice], mean: Any, std: Any) -> None:
        super().__init__()
        self.window = window
        self.register_buffer("mean", torch.tensor(mean)[:, None, None])
        self.register_buffer("std", torch.tensor(std)[:, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x * self.std + self.mean
        brightness = image[:, :, self.window[0], self.window[1]].mean(dim=(1, 2, 3))
        z = 20.0 * (brightness - MARKER_THRESHOLD)
        return torch.stack([-z, z], dim=-1)


class LesionOracle(nn.Module):
    """Never sees the marker (its pixels are zeroed first) and answers from the lesion: the
    nearest of the split's images (marker blanked) decides, class 1 iff it has a lesion. What
    a perfect lesion reader predicts, differentiable almost everywhere (the logit is the gap
    between the nearest image without and the nearest with a lesion), so gradient maps are
    exactly 0 on the marker."""

    def __init__(self, images: torch.Tensor, lesion: torch.Tensor,
                 window: tuple[slice, slice]) -> None:
        super().__init__()
        keep = torch.ones(images.shape[1:])
        keep[:, window[0], window[1]] = 0
        self.register_buffer("keep", keep)
        self.register_buffer("keys", (images * keep).flatten(1))
        self.register_buffer("lesion", lesion.bool())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = (x * self.keep).flatten(1)
        dist = ((seen[:, None] - self.keys[None]) ** 2).sum(dim=-1)
        gap = dist[:, ~self.lesion].amin(dim=1) - dist[:, self.lesion].amin(dim=1)
        return torch.stack([-gap, gap], dim=-1)


def _known_truth_metrics() -> dict[str, Any]:
    node = OmegaConf.load(REPO_ROOT / "conf" / "metric" / "known_truth.yaml")
    return {str(key): hydra.utils.instantiate(value) for key, value in node.items()}


def _run(net: nn.Module, data: SyntheticDataModule) -> tuple[dict[str, Any], list[dict]]:
    """evaluate.py's steps: the evaluator under a Trainer, then the summary and the rows."""
    methods = {"saliency": build_method("saliency"), "uniform": build_method("uniform")}
    mean, std = data.input_normalization()
    module = ExplanationEvaluator(net, methods, _known_truth_metrics(), num_classes=2, mean=mean,
                                  std=std)
    trainer = pl.Trainer(inference_mode=False, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.test(module, dataloaders=data.eval_dataloader("decorrelated"), verbose=False)
    summary = summarise(module.results, {m: module.metric_objects(m) for m in methods},
                        num_classes=2, samples=200)
    return summary, per_image_rows(module.results)


def _check_reliance(summary: dict[str, Any], rows: list[dict], reliance: float) -> None:
    truth = summary["known_truth"]
    assert truth["counts"] == {"conflict": IMAGES // 2, "agree": IMAGES // 2}
    assert truth["reliance"]["value"] == reliance
    assert truth["reliance"]["n"] == IMAGES // 2
    assert truth["reliance"]["ci_low"] == truth["reliance"]["ci_high"] == reliance
    assert truth["agree_accuracy"]["value"] == 1.0 and truth["agree_accuracy"]["n"] == IMAGES // 2
    assert truth["conflict_images"]["value"] == IMAGES // 2
    assert EvaluationSummary.from_dict(summary).reliance == reliance
    assert len(rows) == 2 * IMAGES
    for row in rows:
        index = row["id"]
        lesion, marker = index % 2, (index // 2) % 2  # the split's 2 x 2 design
        assert (row["lesion"], row["marker"]) == (lesion, marker), row
        expected = "" if lesion == marker else int(reliance)
        assert row["follows_marker"] == expected, row
        assert row["has_mask"] == lesion
    for method in ("saliency", "uniform"):
        assert list(summary["methods"][method]["metrics"]) == KNOWN_TRUTH_COLUMNS


def _column(rows: list[dict], method: str, column: str) -> list[Any]:
    return [row[column] for row in rows if row["method"] == method]


def test_a_model_that_reads_only_the_marker_has_reliance_one(
        caplog: pytest.LogCaptureFixture) -> None:
    data = _data()
    window = _window(data)
    summary, rows = _run(MarkerReader(window, *data.input_normalization()), data)
    _check_reliance(summary, rows, 1.0)
    with caplog.at_level(logging.INFO, logger=entry.log.name):
        entry._print_summary(EvaluationSummary.from_dict(summary))
    assert "reliance on the marker 1.000 [1.000, 1.000] on 32 conflict images" in caplog.text
    saliency = summary["methods"]["saliency"]["metrics"]
    # its gradient lives on the marker only: every map says so
    assert saliency["marker_share"]["value"] == 1.0 and saliency["marker_share"]["n"] == 16
    assert saliency["marker_mass"]["value"] == 1.0 and saliency["marker_mass"]["n"] == 32
    assert saliency["marker_pointing_game"]["value"] == 1.0
    assert saliency["marker_iou@1"]["value"] == 1.0  # the 36 tied pixels are the marker
    assert saliency["lesion_mass"]["value"] == 0.0 and saliency["lesion_mass"]["n"] == 32
    assert saliency["lesion_pointing_game"]["value"] == 0.0
    # a uniform map is as bright on the marker as on the lesion: 0.5 where both are present
    shares = _column(rows, "uniform", "marker_share")
    data_set = data.eval_dataloader("decorrelated").dataset
    for index, share in enumerate(shares):
        sample = data_set[index]
        if sample["mask"].any() and sample["marker_mask"].any():
            assert share == pytest.approx(0.5, abs=1e-6), index
        else:
            assert share == "", index


def test_a_model_that_reads_only_the_lesion_has_reliance_zero() -> None:
    data = _data()
    window = _window(data)
    split = data.eval_dataloader("decorrelated").dataset
    batch = next(iter(torch.utils.data.DataLoader(split, batch_size=IMAGES)))
    summary, rows = _run(LesionOracle(batch["image"], batch["has_mask"], window), data)
    _check_reliance(summary, rows, 0.0)
    saliency = summary["methods"]["saliency"]["metrics"]
    # the model never sees the marker: no map puts relevance there
    assert saliency["marker_share"]["value"] == 0.0 and saliency["marker_share"]["n"] == 16
    assert saliency["marker_mass"]["value"] == 0.0 and saliency["marker_mass"]["n"] == 32


# ---------------------------------------------------------------------------------------------
# evaluate.py: refusing marker metrics without a marker, leaving out inapplicable methods


def test_marker_metrics_are_refused_on_a_dataset_without_a_marker() -> None:
    metrics = _known_truth_metrics()
    plain = SyntheticDataModule(img_size=SIZE, num_train=8, num_val=8, num_test=8)
    with pytest.raises(ConfigError, match=r"known-truth metrics \(marker_pointing_game, "
                                          r"marker_mass, marker_iou, marker_share\) need the "
                                          r"planted marker"):
        entry.check_marker_metrics(metrics, plain)
    entry.check_marker_metrics(metrics, _data())  # a planted marker: fine
    lesion_only = {k: v for k, v in metrics.items() if k.startswith("lesion")}
    entry.check_marker_metrics(lesion_only, plain)  # the ROI versions need no marker


def test_inapplicable_methods_are_named_with_the_reason() -> None:
    methods = {name: build_method(name) for name in ("attention", "deeplift", "saliency")}
    assert entry.inapplicable_methods(methods, ["attention", "deeplift", "saliency"], "cnn") == {
        "attention": "explains vit models only; the checkpoint is a cnn"}
    assert entry.inapplicable_methods(methods, ["attention", "saliency"], "vit") == {}
    assert entry.inapplicable_methods(methods, ["deeplift"], "vit") == {
        "deeplift": "explains cnn models only; the checkpoint is a vit"}
    from tiny_models import tiny_cnn, tiny_vit

    assert entry.model_kind(tiny_vit()) == "vit" and entry.model_kind(tiny_cnn()) == "cnn"


@pytest.mark.slow
def test_evaluate_refuses_marker_metrics_without_a_marker(finished_run: Path,
                                                         tmp_path: Path) -> None:
    proc = run_cli(["xai_bench.evaluate", f"ckpt={finished_run}", "metric=known_truth",
                    "method=saliency", "logger=none", "print_config=false",
                    f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path)
    fails_cleanly(proc, "known-truth metrics", "planted marker",
                  "dataset.shortcut.enabled=true", "split=decorrelated")
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.slow
def test_skip_inapplicable_leaves_out_and_records_a_method(finished_run: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = run_cli(["xai_bench.evaluate", f"ckpt={finished_run}", "method=[saliency,deeplift]",
                    "skip_inapplicable=true", "metric=[study]", "max_images=4", "baselines=[]",
                    "overlays=0", "logger=none", "print_config=false", f"hydra.run.dir={out}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = EvaluationSummary.read(out)
    assert summary.evaluated_methods == ["saliency"] and summary.method == "saliency"
    assert set(summary.methods) == {"saliency"} and summary.baselines == []
    assert summary.skipped_methods == {
        "deeplift": "explains cnn models only; the checkpoint is a vit"}
    assert summary.failed_methods == {}
    assert summary.known_truth == {}  # no planted marker: no known truth, no key
    assert "known_truth" not in (out / "metrics.json").read_text()
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert not {"lesion", "marker", "follows_marker"} & set(header)


# ---------------------------------------------------------------------------------------------
# training: the best checkpoint's reliance, measured when training ends


def test_training_measures_the_same_reliance() -> None:
    """measure_reliance (train.py, after the test) gives the evaluation's numbers: 1 for the
    marker reader; None for a dataset without a decorrelated split; the model's mode kept."""
    data = _data()
    net = MarkerReader(_window(data), *data.input_normalization()).train()
    truth = measure_reliance(net, data, samples=200)
    assert truth is not None and net.training
    assert truth["reliance"]["value"] == 1.0 and truth["reliance"]["n"] == IMAGES // 2
    assert truth["counts"] == {"conflict": IMAGES // 2, "agree": IMAGES // 2}
    evaluated, _ = _run(net, data)
    assert truth == evaluated["known_truth"]
    plain = SyntheticDataModule(img_size=SIZE, num_train=8, num_val=8, num_test=8)
    assert measure_reliance(net, plain) is None


@pytest.mark.slow
def test_training_run_records_its_reliance(tmp_path: Path) -> None:
    """A tiny training run on the synthetic task with a marker writes `known_truth` into its
    metrics.json (read back through TrainingRecord) and says it in its last line."""
    out = tmp_path / "run"
    proc = run_cli(["xai_bench.train", *TINY_RUN, "dataset.shortcut.enabled=true",
                    "dataset.shortcut.rule=marker", "dataset.num_decorrelated=32",
                    f"hydra.run.dir={out}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    record = TrainingRecord.read(out)
    truth = record.known_truth
    assert truth is not None and truth["counts"] == {"conflict": 16, "agree": 16}
    assert 0.0 <= truth["reliance"]["value"] <= 1.0
    assert "reliance on the marker" in proc.stdout + proc.stderr


def test_an_evaluation_of_one_image_is_summarised() -> None:
    """max_images=1: torchmetrics squeezes a one-element compute() result to a 0-d tensor;
    ImageMetric gives every per-image column back as (1,), so the summary and the rows still
    come out (this raised IndexError in bootstrap_summary before)."""
    data = _data()
    net = MarkerReader(_window(data), *data.input_normalization())
    methods = {"saliency": build_method("saliency")}
    module = ExplanationEvaluator(net, methods, _known_truth_metrics(), num_classes=2)
    trainer = pl.Trainer(inference_mode=False, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.test(module, dataloaders=data.eval_dataloader("decorrelated", max_images=1),
                 verbose=False)
    summary = summarise(module.results, {m: module.metric_objects(m) for m in methods},
                        num_classes=2, samples=50)
    assert summary["counts"]["images"] == 1
    assert summary["classification"]["accuracy"]["n"] == 1
    rows = per_image_rows(module.results)
    assert [row["id"] for row in rows] == [0]
