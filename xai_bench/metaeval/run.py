"""The meta-evaluation's two passes: score every method's maps under every condition (the clean
model and inputs, then K draws of each perturbation test), then judge each metric column by
MetaQuantus' consistency scores (xai_bench.metaeval.scores).

Like MetaQuantus, a perturbed condition explains the class the clean map explains (its target),
with the perturbed model or on the perturbed inputs, and scores those maps with the perturbed
model / inputs. Unlike MetaQuantus' input test, which scores the CLEAN input's explanation on
the noisy input, the maps are recomputed on the noisy input: the scored map is the map of the
scored image. Metrics that score only correctly classified images (`only_correct`) score every
image here (`score_every_image`): the tests select their images by the prediction themselves.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xai_bench.explain.base import ExplainMethod
from xai_bench.metaeval.perturbations import (
    Condition,
    conditions,
    perturb_images,
    perturb_model,
)
from xai_bench.metaeval.scores import CRITERIA, MetaScores, Thresholds, meta_scores, verdict
from xai_bench.metrics.base import EvalBatch, ImageMetric
from xai_bench.utils.errors import ConfigError

__all__ = ["MetaRow", "MetaSettings", "ScoreTable", "collect_scores", "judge",
           "write_rows_csv", "write_scores_csv"]

log = logging.getLogger(__name__)
MetricFactory = Callable[..., ImageMetric]
NR_IMAGES = ("kept", "all")
AR_IMAGES = ("changed", "all")


@dataclass
class MetaSettings:
    """The meta-evaluation's settings (conf/meta_evaluate.yaml, `meta:`)."""

    draws: int = 5
    seed: int = 0
    spaces: tuple[str, ...] = ("model", "input")
    model_noise: dict[str, float] = field(default_factory=lambda: {"nr": 0.001, "ar": 2.0})
    model_noise_type: str = "multiplicative"
    input_noise: dict[str, float] = field(default_factory=lambda: {"nr": 0.001, "ar": 5.0})
    # the images a draw is judged on. NR: kept = those whose prediction the draw left
    # unchanged (the paper) | all. AR: changed = those whose prediction it changed (the paper)
    # | all (the default: see docs/meta-evaluation.md)
    nr_images: str = "kept"
    ar_images: str = "all"
    score_every_image: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        for name, choices in (("nr_images", NR_IMAGES), ("ar_images", AR_IMAGES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"meta.{name} must be one of {', '.join(choices)}; "
                                  f"got {getattr(self, name)!r}.")
        self.spaces = tuple(self.spaces)
        self.conditions = conditions(self.draws, self.spaces, dict(self.model_noise),
                                     dict(self.input_noise))


@dataclass
class ScoreTable:
    """Per-image scores: scores[condition][column] is (L methods, N images); kept[condition]
    (N,) says whether the condition left the image's prediction unchanged."""

    ids: np.ndarray
    methods: list[str]
    metric_of: dict[str, str] = field(default_factory=dict)  # column -> metric key
    higher_is_better: dict[str, bool | None] = field(default_factory=dict)
    scores: dict[Condition, dict[str, np.ndarray]] = field(default_factory=dict)
    kept: dict[Condition, np.ndarray] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return list(self.metric_of)


def _fresh_metrics(factories: Mapping[str, MetricFactory], model: nn.Module, device: torch.device,
                   every_image: bool) -> dict[str, ImageMetric]:
    metrics = {}
    for key, factory in factories.items():
        metric = factory(key=key).to(device)
        if every_image and hasattr(metric, "only_correct"):
            metric.only_correct = False
        if hasattr(metric, "configure"):
            metric.configure(model)  # model-dependent columns (parameter randomisation)
        metrics[key] = metric
    return metrics


def _condition_inputs(condition: Condition, model: nn.Module, settings: MetaSettings
                      ) -> tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The model of a condition and how its images are made from the clean ones."""
    if condition.space == "model":
        perturbed = perturb_model(model, condition.level, settings.seed, condition.draw,
                                  condition.stream, settings.model_noise_type)
        return perturbed.requires_grad_(False), lambda images, ids: images
    if condition.space == "input":
        return model, lambda images, ids: perturb_images(images, ids, condition.level,
                                                         settings.seed, condition.draw,
                                                         condition.stream)
    return model, lambda images, ids: images


def collect_scores(model: nn.Module, methods: Mapping[str, ExplainMethod],
                   factories: Mapping[str, MetricFactory], batches: Sequence[dict[str, Any]],
                   settings: MetaSettings, mean: Sequence[float] = (0.485, 0.456, 0.406),
                   std: Sequence[float] = (0.229, 0.224, 0.225)) -> ScoreTable:
    """Explain and score every batch under every condition.

    Args:
        model: The trained classifier (eval mode; not modified).
        methods: name -> explanation method (L of them).
        factories: metric key -> factory(key=...) of an ImageMetric (conf/metric entries).
        batches: The evaluation batches ("image", "label", "index", and "mask", "has_mask",
            "class_masks" when the dataset has them), on the model's device.
        settings: The meta-evaluation's settings.
        mean, std: The input normalisation (metrics that de-normalise use it).

    Returns:
        The per-image scores of every (condition, column, method, image).
    """
    if not methods or not factories:
        raise ConfigError("the meta-evaluation needs at least one method and one metric.")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    ids = torch.cat([b["index"].view(-1).cpu() for b in batches]).numpy()
    position = {int(i): n for n, i in enumerate(ids.tolist())}
    table = ScoreTable(ids=ids, methods=list(methods))
    clean_targets: dict[tuple[str, int], torch.Tensor] = {}
    clean_pred: list[torch.Tensor] = []
    for condition in settings.conditions:
        start = time.perf_counter()
        net, make_images = _condition_inputs(condition, model, settings)
        metrics = {name: _fresh_metrics(factories, net, device, settings.score_every_image)
                   for name in methods}
        kept = []
        for index, batch in enumerate(batches):
            images = make_images(batch["image"], batch["index"])
            with torch.no_grad():
                logits = net(images)
            predicted = logits.argmax(dim=-1)
            if condition.space == "clean":
                clean_pred.append(predicted)
            kept.append((predicted == clean_pred[index]).cpu())
            for name, method in methods.items():
                target = clean_targets.get((name, index))
                with torch.enable_grad():
                    explanation = method(net, images, target=target, labels=batch["label"],
                                         ids=batch["index"])
                if condition.space == "clean":
                    clean_targets[(name, index)] = explanation.target
                context = EvalBatch(
                    images=images, labels=batch["label"], ids=batch["index"],
                    maps=explanation.maps, target=explanation.target, logits=logits, model=net,
                    method=method, masks=batch.get("mask"), has_mask=batch.get("has_mask"),
                    class_masks=batch.get("class_masks"), mean=tuple(mean), std=tuple(std),
                )
                for metric in metrics[name].values():
                    metric.update(context)
        table.kept[condition] = torch.cat(kept).numpy()
        table.scores[condition] = _gather(metrics, list(methods), position, table)
        log.info("meta-evaluation: %s draw %d scored in %.1f s", condition.name, condition.draw,
                 time.perf_counter() - start)
    return table


def _gather(metrics: dict[str, dict[str, ImageMetric]], methods: list[str],
            position: dict[int, int], table: ScoreTable) -> dict[str, np.ndarray]:
    """{column: (L, N)} from each method's metrics, rows in the batches' image order."""
    out: dict[str, np.ndarray] = {}
    for row, name in enumerate(methods):
        for key, metric in metrics[name].items():
            computed = metric.compute()
            where = [position[int(i)] for i in computed["id"].tolist()]
            for column, values in computed.items():
                if column == "id":
                    continue
                if column not in out:
                    out[column] = np.full((len(methods), len(position)), np.nan)
                    table.metric_of.setdefault(column, key)
                    table.higher_is_better.setdefault(column,
                                                      metric.column_higher_is_better(column))
                out[column][row, where] = values.double().cpu().numpy()
    return out


@dataclass
class MetaRow:
    """One line of meta_evaluation.csv: a metric column judged in one perturbation space."""

    metric: str
    column: str
    higher_is_better: bool | None
    space: str
    scores: MetaScores
    nr: str
    ar: str
    verdict: str = ""

    def as_dict(self) -> dict[str, Any]:
        values = {c: getattr(self.scores, c) for c in CRITERIA}
        return {"metric": self.metric, "column": self.column,
                "higher_is_better": self.higher_is_better, "space": self.space,
                **values, "MC": self.scores.mc, "images_nr": self.scores.images_nr,
                "images_ar": self.scores.images_ar, "NR": self.nr, "AR": self.ar,
                "verdict": self.verdict}


def _stack(table: ScoreTable, space: str, kind: str, column: str, select: str
           ) -> tuple[np.ndarray, np.ndarray]:
    draws = [c for c in table.scores if c.space == space and c.kind == kind]
    q_hat = np.stack([table.scores[c][column] for c in draws])
    kept = np.stack([table.kept[c] for c in draws])
    if select == "all":
        return q_hat, np.ones_like(kept)
    return q_hat, kept if select == "kept" else ~kept


def judge(table: ScoreTable, settings: MetaSettings) -> list[MetaRow]:
    """The meta-scores and verdicts of every column in every space. A column's `verdict`: fail
    when NR or AR fails in a space; pass when none fails and NR and AR each passed in some
    space; n/a otherwise (e.g. no draw changed a prediction, so AR was never judged)."""
    clean = next(c for c in table.scores if c.space == "clean")
    rows: list[MetaRow] = []
    for column in table.columns:
        direction = table.higher_is_better[column]
        per_column = []
        for space in settings.spaces:
            q_nr, keep_nr = _stack(table, space, "nr", column, settings.nr_images)
            q_ar, keep_ar = _stack(table, space, "ar", column, settings.ar_images)
            scores = meta_scores(table.scores[clean][column], q_nr, keep_nr, q_ar, keep_ar,
                                 direction)
            nr, ar = verdict(scores, settings.thresholds)
            per_column.append(MetaRow(table.metric_of[column], column, direction, space,
                                      scores, nr, ar))
        marks = [m for row in per_column for m in (row.nr, row.ar)]
        if "fail" in marks:
            overall = "fail"
        elif any(r.nr == "pass" for r in per_column) and any(r.ar == "pass" for r in per_column):
            overall = "pass"
        else:
            overall = "n/a"
        for row in per_column:
            row.verdict = overall
        rows += per_column
    return rows


def _cell(value: Any, digits: str = ".4f") -> Any:
    if isinstance(value, float):
        return "" if not np.isfinite(value) else format(value, digits)
    return "" if value is None else value


def write_rows_csv(rows: Sequence[MetaRow], path: Path) -> Path:
    """meta_evaluation.csv: one line per (metric column, space)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dicts = [row.as_dict() for row in rows]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dicts[0]) if dicts else ["metric"])
        writer.writeheader()
        for entry in dicts:
            writer.writerow({k: _cell(v) for k, v in entry.items()})
    return path


def write_scores_csv(table: ScoreTable, path: Path) -> Path:
    """scores.csv: every per-image score, one line per (condition, draw, method, image), to
    float32 precision (9 significant digits: the minor perturbations move scores by less than
    the table's 4 decimals)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = table.columns
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["condition", "draw", "method", "id", "prediction_kept", *columns])
        for condition, scores in table.scores.items():
            for row, method in enumerate(table.methods):
                for n, image_id in enumerate(table.ids.tolist()):
                    writer.writerow([condition.name, condition.draw, method, image_id,
                                     int(table.kept[condition][n]),
                                     *(_cell(float(scores[c][row, n]), ".9g")
                                       if c in scores else "" for c in columns)])
    return path
