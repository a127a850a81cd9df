"""Results of an evaluation as files: metrics.json (aggregates with bootstrap intervals) and
per_image.csv (one row per image x method with every score).

An evaluation whose images set the synthetic dataset's lesion against its planted marker (at
least one conflict image, e.g. split=decorrelated, docs/known-truth.md) also gets the model's
reliance on the marker (`known_truth` in metrics.json; lesion, marker, follows_marker in
per_image.csv); any other evaluation's files are as they were.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from xai_bench.metrics.aggregate import bootstrap_summary
from xai_bench.metrics.base import ImageMetric
from xai_bench.metrics.known_truth import RELIANCE_COLUMNS, ModelReliance
from xai_bench.metrics.predictions import MapStats, PredictionTable, class_set_texts
from xai_bench.tracking.run_folder import atomic_open

__all__ = ["flat_scalars", "known_truth_summary", "per_image_rows", "summarise",
           "write_per_image_csv"]

PREDICTION_COLUMNS = ("label", "pred", "prob", "correct", "has_mask", "empty_mask")
MAP_COLUMNS = ("target", "constant_map", "nan_map")


def _scores(table: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in table.items() if k != "id"}


def _reliance(results: Mapping[str, Any]) -> Mapping[str, torch.Tensor] | None:
    """The evaluation's ModelReliance table when it has a conflict image, else None. A dataset
    that plants no marker still gives every image an empty marker mask: without one image
    that has a marker, no image sets lesion against marker."""
    table = results.get("reliance")
    if not table or "lesion" not in table:
        return None
    lesion, marker = table["lesion"], table["marker"]
    conflict = lesion.isfinite() & marker.isfinite() & (lesion != marker)
    return table if bool(conflict.any()) and bool((marker == 1).any()) else None


def known_truth_summary(table: Mapping[str, torch.Tensor], samples: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """metrics.json's `known_truth`: reliance, agree_accuracy and conflict_images with their
    bootstrap intervals (over images, as every other aggregate), and the image counts."""
    lesion, marker = table["lesion"], table["marker"]
    known = lesion.isfinite() & marker.isfinite()
    counts = {"conflict": int((known & (lesion != marker)).sum()),
              "agree": int((known & (lesion == marker)).sum())}
    out: dict[str, Any] = bootstrap_summary(_scores(table), ModelReliance().aggregate, samples,
                                            level, seed)
    # n: the images each number is computed on (bootstrap_summary counts every image)
    out["reliance"]["n"], out["agree_accuracy"]["n"] = counts["conflict"], counts["agree"]
    return {**out, "counts": counts}


def summarise(
    results: Mapping[str, Any],
    metrics: Mapping[str, Mapping[str, ImageMetric]],
    num_classes: int,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics.json body: per method, every metric's value with its bootstrap interval
    and the number of images it is defined on, plus the counts that explain missing scores
    (and `known_truth` when the images set lesion against marker: module docstring)."""
    predictions = results["predictions"]
    summary: dict[str, Any] = {
        "classification": bootstrap_summary(
            _scores(predictions), PredictionTable(num_classes=num_classes).aggregate, samples,
            level, seed
        ),
        "counts": {
            "images": int(predictions["id"].numel()),
            "with_mask": int(predictions["has_mask"].sum()),
            "empty_mask": int(predictions["empty_mask"].sum()),
            "without_mask": int((predictions["has_mask"] == 0).sum()),
            "misclassified": int((predictions["correct"] == 0).sum()),
        },
        "bootstrap": {"samples": samples, "level": level, "seed": seed},
        "methods": {},
    }
    reliance = _reliance(results)
    if reliance is not None:
        summary["known_truth"] = known_truth_summary(reliance, samples, level, seed)
    for method, per_method in results["methods"].items():
        maps = per_method["maps"]
        entry: dict[str, Any] = {"metrics": {}, "counts": {}}
        for key, table in per_method["metrics"].items():
            metric = metrics[method][key]
            for name, stats in bootstrap_summary(_scores(table), metric.aggregate, samples, level,
                                                 seed).items():
                entry["metrics"][name] = {**stats,
                                          "higher_is_better": metric.column_higher_is_better(name)}
        counts = MapStats().aggregate(_scores(maps))
        entry["counts"] = {name: int(value) for name, value in counts.items()}
        targets = maps["target"].long()
        entry["counts"]["targets"] = {str(c): int((targets == c).sum())
                                      for c in targets.unique().tolist()}
        summary["methods"][method] = entry
    return summary


def _cell(value: float) -> float | int | str:
    if math.isnan(value):
        return ""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else round(value, 6)


def per_image_rows(results: Mapping[str, Any],
                   image_name: Callable[[int], str] | None = None) -> list[dict[str, Any]]:
    """One row per image x method: id, image, prediction columns (and lesion, marker,
    follows_marker when the images set lesion against marker), map columns, every score."""
    predictions = results["predictions"]
    ids = predictions["id"].tolist()
    base = {
        image_id: {"id": image_id, "image": image_name(image_id) if image_name else str(image_id),
                   **{c: _cell(float(predictions[c][row])) for c in PREDICTION_COLUMNS}}
        for row, image_id in enumerate(ids)
    }
    reliance = _reliance(results)
    if reliance is not None:
        for row, image_id in enumerate(reliance["id"].tolist()):
            base[image_id].update({c: _cell(float(reliance[c][row])) for c in RELIANCE_COLUMNS})
    for column in ("label", "pred"):  # multi-label: the sets as labels.csv writes them ("3;7")
        texts = class_set_texts(predictions, f"{column}_set")
        for image_id, text in zip(ids, texts or (), strict=False):
            base[image_id][column] = text
    rows = []
    for method, per_method in results["methods"].items():
        columns: dict[int, dict[str, Any]] = {image_id: {} for image_id in ids}
        for table in [per_method["maps"], *per_method["metrics"].values()]:
            for row, image_id in enumerate(table["id"].tolist()):
                columns.setdefault(image_id, {}).update(
                    {name: _cell(float(values[row])) for name, values in _scores(table).items()}
                )
        for image_id in ids:
            rows.append({**base[image_id], "method": method, **columns[image_id]})
    return rows


def write_per_image_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def flat_scalars(summary: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """{"eval/<method>/<metric>": value, "eval/<classification metric>": value} for loggers."""
    out = {f"{prefix}/{name}": entry["value"] for name, entry in summary["classification"].items()}
    for method, entry in summary["methods"].items():
        for name, stats in entry["metrics"].items():
            out[f"{prefix}/{method}/{name}"] = stats["value"]
    return {k: v for k, v in out.items() if v is not None and not math.isnan(v)}
