"""Curve-type faithfulness metrics (quantus' names): Monotonicity, Pixel-Flipping, Selectivity,
IROF and ROAD. Each perturbs the image step by step in the map's order and reads the model's
output along the way, so each costs one forward per step and image (steps batched across
images, `batch_size` images per forward). They score the class each map explains (quantus'
y_batch) and every image (`only_correct: false`, as quantus). Definitions:
`xai_bench.metrics.functional.faithfulness_curves` and docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from xai_bench.metrics.base import Cost, EvalBatch, check_choice, register_metric
from xai_bench.metrics.faithfulness import _as_list, _ModelMetric
from xai_bench.metrics.functional import faithfulness_curves as F_curves
from xai_bench.metrics.functional.faithfulness import FILLS
from xai_bench.metrics.functional.road_imputation import PRECISIONS, SOLVERS
from xai_bench.utils.errors import ConfigError


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
            or int(value) < 1:
        raise ConfigError(f"{what} must be an integer >= 1; got {value!r}.")
    return int(value)


def _batch_size(value: Any, what: str) -> int | None:
    return None if value is None else _positive_int(value, what)


class _StepMetric(_ModelMetric):
    """Settings shared by the pixel-order metrics: the fill, the seed of noise fills, the
    perturbed images per forward."""

    def __init__(self, key: str, fill: str, only_correct: bool, seed: int,
                 batch_size: int | None, **kwargs: Any) -> None:
        super().__init__(key, only_correct, **kwargs)
        self.fill = check_choice(fill, FILLS, f"{key}.fill")
        self.seed = int(seed)
        self.batch_size = _batch_size(batch_size, f"{key}.batch_size")

    def _common(self, batch: EvalBatch) -> dict[str, Any]:
        return {"fill": self.fill, "seed": self.seed, "ids": batch.ids,
                "batch_size": self.batch_size}


class _PixelStepMetric(_StepMetric):
    """A curve over pixels taken `features_in_step` at a time: one forward per step."""

    def __init__(self, key: str, features_in_step: int = 224, fill: str = "min",
                 only_correct: bool = False, seed: int = 0, batch_size: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(key, fill, only_correct, seed, batch_size, **kwargs)
        self.features_in_step = _positive_int(features_in_step, f"{key}.features_in_step")
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One forward per step: ceil(H W / features_in_step)."""
        return Cost(forwards=math.ceil(height * width / self.features_in_step))


@register_metric("pixel_flipping")
class PixelFlipping(_PixelStepMetric):
    """Pixel-Flipping (Bach et al. 2015): the most relevant pixels replaced first,
    `features_in_step` at a time; the unit-spacing trapezoid of the explained class's
    probability over the steps (quantus' AUC per sample). Lower is better: a faithful map
    destroys the evidence fast."""

    higher_is_better = False

    def __init__(self, key: str = "pixel_flipping", **kwargs: Any) -> None:
        super().__init__(key, **kwargs)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        curve = F_curves.pixel_flipping_curve(
            batch.model, batch.images, batch.maps, batch.target,
            features_in_step=self.features_in_step, **self._common(batch))
        return self._restrict(batch, {self.key: F_curves.curve_auc(curve)})


@register_metric("monotonicity")
class Monotonicity(_PixelStepMetric):
    """Monotonicity (Arya et al. 2019): pixels inserted into the fill image from the least to
    the most relevant, `features_in_step` at a time; 1 if the explained class's probability never
    decreases, else 0 (the mean is the fraction of monotonic images). Higher is better."""

    higher_is_better = True

    def __init__(self, key: str = "monotonicity", **kwargs: Any) -> None:
        super().__init__(key, **kwargs)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        curve = F_curves.monotonicity_curve(
            batch.model, batch.images, batch.maps, batch.target,
            features_in_step=self.features_in_step, **self._common(batch))
        return self._restrict(batch, {self.key: F_curves.monotonicity(curve)})


@register_metric("selectivity")
class Selectivity(_StepMetric):
    """Selectivity (Montavon et al. 2018): patch_size x patch_size tiles removed in descending
    mean relevance; the unit-spacing trapezoid of the explained class's probability over the
    tiles (quantus' AUC). Lower is better."""

    higher_is_better = False

    def __init__(self, key: str = "selectivity", patch_size: int = 8, fill: str = "min",
                 only_correct: bool = False, seed: int = 0, batch_size: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(key, fill, only_correct, seed, batch_size, **kwargs)
        self.patch_size = _positive_int(patch_size, f"{key}.patch_size")
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One forward per tile (partial edge tiles too)."""
        return Cost(forwards=math.ceil(height / self.patch_size)
                    * math.ceil(width / self.patch_size))

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        curve = F_curves.selectivity_curve(
            batch.model, batch.images, batch.maps, batch.target, patch_size=self.patch_size,
            **self._common(batch))
        return self._restrict(batch, {self.key: F_curves.curve_auc(curve)})


@register_metric("irof")
class IROF(_StepMetric):
    """Iterative removal of features (Rieger & Hansen 2020): superpixels (SLIC, as quantus)
    replaced in descending mean relevance; S - the unit-spacing trapezoid of p_k / p_0 over the
    S segments (the area over the normalised curve, in segments). Higher is better. NaN for an
    image the segmentation leaves in fewer than 2 segments.

    Its cost depends on the image: 1 + S_i forwards, S_i the superpixels SLIC finds (about
    n_segments on natural images, fewer on flat or noisy ones); `cost` declares 1 + n_segments
    and `spent` gives the real figure. The column `<key>/segments` records S_i (the scale of the
    score, and what the image cost)."""

    higher_is_better = True

    def __init__(self, key: str = "irof", segmentation: str = "slic", n_segments: int = 100,
                 compactness: float = 10.0, fill: str = "mean", only_correct: bool = False,
                 seed: int = 0, batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(key, fill, only_correct, seed, batch_size, **kwargs)
        self.segmentation = check_choice(segmentation, F_curves.SEGMENTATIONS,
                                         f"{key}.segmentation")
        self.n_segments = _positive_int(n_segments, f"{key}.n_segments")
        if isinstance(compactness, bool) or not isinstance(compactness, int | float) \
                or not compactness > 0:
            raise ConfigError(f"{key}.compactness must be a number > 0; got {compactness!r}.")
        self.compactness = float(compactness)
        self._add_columns([key, f"{key}/segments"])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The clean image and one forward per superpixel: estimated as n_segments (SLIC's
        target; the count found varies per image)."""
        return Cost(forwards=1 + self.n_segments)

    def spent(self, table: dict[str, torch.Tensor]) -> Cost | None:
        """1 + the superpixels each image really had (its `<key>/segments` column)."""
        return Cost(forwards=1 + table[f"{self.key}/segments"].float().mean().item())

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        segments = F_curves.superpixels(batch.images, self.segmentation, self.n_segments,
                                        self.compactness)
        ratios, counts = F_curves.irof_curve(batch.model, batch.images, batch.maps, batch.target,
                                             segments, **self._common(batch))
        return self._restrict(batch, {self.key: F_curves.irof(ratios, counts),
                                      f"{self.key}/segments": counts.float()})

    def column_higher_is_better(self, column: str) -> bool | None:
        return True if column == self.key else None


@register_metric("road")
class ROAD(_ModelMetric):
    """Remove and debias (Rong et al. 2022): the top (MoRF) / bottom (LeRF) q % of pixels
    imputed by noisy linear imputation for each q in `percentages`; per order, the mean over q
    of the explained class's correctness (or probability). Columns `<key>/morf` (lower is
    better) and `<key>/lerf` (higher is better), and `<key>/<order>@q` with `per_percentage`.
    The imputation is one solve per step for the whole batch: `solver` cg (multigrid-
    preconditioned conjugate gradients on the model's device, to relative residual `tol`
    within `max_iter` iterations, in `precision`) or direct (scipy on the CPU)."""

    higher_is_better = None  # per column, see column_higher_is_better
    ORDERS: ClassVar[tuple[str, ...]] = ("morf", "lerf")

    def __init__(self, key: str = "road",
                 percentages: Sequence[float] | float = (10, 20, 30, 40, 50, 60, 70, 80, 90),
                 orders: Sequence[str] | str = ("morf", "lerf"), noise: float = 0.01,
                 output: str = "accuracy", per_percentage: bool = False,
                 only_correct: bool = False, seed: int = 0, batch_size: int | None = None,
                 solver: str = "cg", tol: float = 1e-7, max_iter: int = 100,
                 precision: str = "float32", **kwargs: Any) -> None:
        super().__init__(key, only_correct, **kwargs)
        values = _as_list(percentages)
        if not values or any(isinstance(q, bool) or not isinstance(q, int | float)
                             or not 0 <= q < 100 for q in values):
            raise ConfigError(f"{key}.percentages must be one or more numbers in [0, 100); "
                              f"got {percentages!r}.")
        self.percentages = [float(q) for q in values]
        self.orders = [check_choice(o, self.ORDERS, f"{key}.orders") for o in _as_list(orders)]
        if not self.orders or len(set(self.orders)) != len(self.orders):
            raise ConfigError(f"{key}.orders must list morf and/or lerf once; got {orders!r}.")
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
            raise ConfigError(f"{key}.noise must be a number >= 0; got {noise!r}.")
        self.noise = float(noise)
        self.output = check_choice(output, F_curves.OUTPUTS, f"{key}.output")
        self.per_percentage = bool(per_percentage)
        self.seed = int(seed)
        self.batch_size = _batch_size(batch_size, f"{key}.batch_size")
        self.solver = check_choice(solver, SOLVERS, f"{key}.solver")
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
            raise ConfigError(f"{key}.tol must be a number in (0, 1); got {tol!r}.")
        self.tol = float(tol)
        self.max_iter = _positive_int(max_iter, f"{key}.max_iter")
        self.precision = check_choice(precision, tuple(PRECISIONS), f"{key}.precision")
        columns = [f"{key}/{o}" for o in self.orders]
        if self.per_percentage:
            columns += [f"{key}/{o}@{q:g}" for o in self.orders for q in self.percentages]
        self._add_columns(columns)

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One forward per percentage and order (plus, not counted here, one imputation solve
        per percentage and order)."""
        return Cost(forwards=len(self.percentages) * len(self.orders))

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        scores = {}
        for order in self.orders:
            curve = F_curves.road_curve(
                batch.model, batch.images, batch.maps, batch.target,
                percentages=self.percentages, order=order, noise=self.noise, output=self.output,
                seed=self.seed, ids=batch.ids, batch_size=self.batch_size, solver=self.solver,
                tol=self.tol, max_iter=self.max_iter, precision=self.precision)
            scores[f"{self.key}/{order}"] = curve.mean(dim=1)
            if self.per_percentage:
                for index, q in enumerate(self.percentages):
                    scores[f"{self.key}/{order}@{q:g}"] = curve[:, index]
        return self._restrict(batch, scores)

    def column_higher_is_better(self, column: str) -> bool | None:
        order = column[len(self.key) + 1:].split("@", 1)[0]
        return {"morf": False, "lerf": True}.get(order)
