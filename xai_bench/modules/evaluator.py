"""The evaluation LightningModule: explains a trained classifier and scores the maps.

Separate from training so it runs on a checkpoint, on one or many devices, with any set of
methods and metrics. Each rank explains its share of the images; every metric keeps per-image
rows keyed by the image id, and `on_test_epoch_end` gathers them (all ranks take part), so the
results equal a single-process run's. The entry point (xai_bench.evaluate) writes the files.

Precision: everything runs in float32 (`trainer.precision: 32-true`). A `*-mixed` precision is
overridden (autocast is off in `test_step`, with a warning); half-precision weights (`16-true`,
`bf16-true`) are refused. TF32 matmuls and convolutions (CUDA, Ampere and later) are off during
the evaluation unless `allow_tf32`: with TF32 a GPU rounds products to 10 mantissa bits, so maps
differ from a CPU's or from another GPU's beyond float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from xai_bench.explain.base import ExplainMethod, autocast_off
from xai_bench.metrics.base import EvalBatch, ImageMetric
from xai_bench.metrics.known_truth import ModelReliance
from xai_bench.metrics.predictions import MapStats, PredictionTable
from xai_bench.report.overlays import denormalize, save_overlay
from xai_bench.utils.errors import ConfigError

MetricFactory = Callable[..., ImageMetric]
FULL_PRECISIONS = ("32-true", "64-true", "32", "64")


def check_precision(precision: str) -> bool:
    """True when `precision` (Lightning's string) computes in full precision; False for a
    `*-mixed` one (overridden: evaluation turns autocast off); half weights are refused."""
    precision = str(precision)
    if precision in FULL_PRECISIONS:
        return True
    if precision.endswith("-mixed"):
        return False
    raise ConfigError(
        f"trainer.precision={precision} puts the model's weights in half precision: explanations "
        "and their metrics need float32; use trainer.precision=32-true (conf/evaluate.yaml's "
        "default)."
    )


class tf32_disabled:  # noqa: N801 - used as a context manager, reads like a function
    """Turn TF32 off for CUDA matmuls and cuDNN convolutions (unless `allow`), restoring the
    flags found. The legacy `allow_tf32` flags are used: every supported torch has them."""

    def __init__(self, allow: bool = False) -> None:
        self.allow = bool(allow)
        self.saved: tuple[bool, bool] | None = None

    def __enter__(self) -> tf32_disabled:
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = self.allow
        torch.backends.cudnn.allow_tf32 = self.allow
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
            self.saved = None


def _outlined(context: EvalBatch, row: int) -> torch.Tensor | None:
    """What an overlay outlines: the image's ROI (when annotated), with the planted marker
    added where the image has one, so a map on the marker shows against its outline."""
    mask = None
    if context.masks is not None and (context.has_mask is None or bool(context.has_mask[row])):
        mask = context.masks[row] > 0
    if context.marker_masks is not None and bool((context.marker_masks[row] > 0).any()):
        marker = context.marker_masks[row] > 0
        mask = marker if mask is None else mask | marker.to(mask.device)
    return mask


def _label_text(label: torch.Tensor) -> str:
    """A class index, or a multi-hot row as its ";"-separated classes (as in labels.csv)."""
    if label.ndim == 0:
        return str(int(label))
    return ";".join(str(c) for c in torch.nonzero(label > 0).flatten().tolist())


class ExplanationEvaluator(pl.LightningModule):
    """Runs every method on every batch and updates each method's metrics.

    Each batch is loaded once for all the methods (and the baselines, which are methods too);
    a method's scores do not depend on the others (its own logits, else one plain forward per
    batch), so a job of several methods scores each as a job of that method alone would. The
    predictions, and the model's reliance on the synthetic dataset's planted marker
    (ModelReliance, docs/known-truth.md), come from the first method's forward.

    Args:
        net: the trained classifier (frozen here).
        methods: name -> explain method (baselines included, they are methods too).
        metrics: key -> factory(key=...) building one metric; one instance per method.
        num_classes: for balanced accuracy and macro F1.
        multilabel: sigmoid outputs and multi-hot labels (macro F1 at 0.5, exact-match accuracy).
        mean, std: the input normalisation (HAAS and overlays de-normalise with it).
        overlay_ids: image ids to render as overlay PNGs into `overlay_dir/<method>/`.
        allow_tf32: let CUDA use TF32 for float32 matmuls / convolutions (faster on Ampere and
            later, not reproducible to float32 rounding); off by default.
    """

    def __init__(
        self,
        net: nn.Module,
        methods: Mapping[str, ExplainMethod],
        metrics: Mapping[str, MetricFactory],
        num_classes: int,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        overlay_ids: Iterable[int] = (),
        overlay_dir: str | Path | None = None,
        image_names: Callable[[int], str] | None = None,
        multilabel: bool = False,
        allow_tf32: bool = False,
    ) -> None:
        super().__init__()
        self.tf32 = tf32_disabled(allow_tf32)
        if not methods:
            raise ConfigError(
                "evaluation needs at least one method (method=... or baselines=[...]).")
        self.net = net.eval().requires_grad_(False)
        self.methods = dict(methods)
        self.method_metrics = nn.ModuleDict(
            {name: nn.ModuleDict({key: factory(key=key) for key, factory in metrics.items()})
             for name in self.methods}
        )
        self.map_stats = nn.ModuleDict({name: MapStats() for name in self.methods})
        self.predictions = PredictionTable(num_classes=num_classes, multilabel=multilabel)
        self.reliance = ModelReliance()
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.overlay_ids = {int(i) for i in overlay_ids}
        self.overlay_dir = Path(overlay_dir) if overlay_dir is not None else None
        self.image_names = image_names
        self.results: dict[str, Any] = {}
        for per_method in self.method_metrics.values():
            for metric in per_method.values():
                if hasattr(metric, "configure"):
                    metric.configure(self.net)  # fixes model-dependent columns on every rank

    @property
    def requires_mask(self) -> bool:
        return any(m.requires_mask for per in self.method_metrics.values() for m in per.values())

    def setup(self, stage: str) -> None:
        """Refuse half-precision weights before the strategy converts them (module docstring)."""
        if not check_precision(self.trainer.precision):
            rank_zero_warn(f"trainer.precision={self.trainer.precision} is ignored: evaluation "
                           "computes in float32 (maps are compared to float32 rounding).")

    def on_test_start(self) -> None:
        if torch.is_inference_mode_enabled():
            raise ConfigError("evaluation computes gradients: "
                              "build the Trainer with inference_mode=False.")
        self.net.eval()
        self.tf32.__enter__()

    def on_test_end(self) -> None:
        self.tf32.__exit__(None, None, None)

    def teardown(self, stage: str) -> None:
        self.tf32.__exit__(None, None, None)  # also after an error (no-op when already restored)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # float32 even inside a *-mixed precision's autocast (which leaves the inputs float32)
        with autocast_off(batch["image"].device.type):
            self._explain_and_score(batch)

    def _explain_and_score(self, batch: dict[str, torch.Tensor]) -> None:
        images, labels, ids = batch["image"], batch["label"], batch["index"]
        masks, has_mask = batch.get("mask"), batch.get("has_mask")
        class_masks = batch.get("class_masks")  # only datasets with boxes.csv have them
        marker_masks = batch.get("marker_mask")  # only the synthetic dataset plants a marker
        plain: torch.Tensor | None = None  # one plain forward per batch, for the methods
        for position, (name, method) in enumerate(self.methods.items()):  # that return no logits
            with torch.enable_grad():
                explanation = method(self.net, images, labels=labels, ids=ids)
                logits = explanation.logits
                if logits is None:
                    if plain is None:
                        with torch.no_grad():
                            plain = self.net(images)
                    logits = plain
                context = EvalBatch(
                    images=images, labels=labels, ids=ids, maps=explanation.maps,
                    target=explanation.target, logits=logits, model=self.net, method=method,
                    masks=masks, has_mask=has_mask, class_masks=class_masks,
                    marker_masks=marker_masks, mean=self.mean, std=self.std,
                )
                if position == 0:  # predictions once per image, from the first method's forward
                    self.predictions.update(context)
                    self.reliance.update(context)
                self.map_stats[name].update(context)
                for metric in self.method_metrics[name].values():
                    metric.update(context)
            self._save_overlays(name, context)

    def _save_overlays(self, method: str, context: EvalBatch) -> None:
        if self.overlay_dir is None or not self.overlay_ids:
            return
        for row, image_id in enumerate(context.ids.tolist()):
            if image_id not in self.overlay_ids:
                continue
            mask = _outlined(context, row)
            label, target = _label_text(context.labels[row]), int(context.target[row])
            pred = int(context.predicted[row])
            name = self.image_names(image_id) if self.image_names else str(image_id)
            save_overlay(
                self.overlay_dir / method / f"{image_id:06d}.png",
                denormalize(context.images[row], self.mean, self.std),
                context.maps[row],
                mask,
                title=f"{name} | {method} | label {label}, pred {pred}, explains {target}",
            )

    def on_test_epoch_end(self) -> None:
        """Gather every metric's per-image rows from all ranks (collective: all ranks call it)."""
        self.results = {
            "predictions": self.predictions.compute(),
            "reliance": self.reliance.compute(),
            "methods": {
                name: {
                    "maps": self.map_stats[name].compute(),
                    "metrics": {key: metric.compute()
                                for key, metric in self.method_metrics[name].items()},
                }
                for name in self.methods
            },
        }

    def metric_objects(self, method: str) -> dict[str, ImageMetric]:
        return dict(self.method_metrics[method].items())
