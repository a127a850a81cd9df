"""Axiomatic metrics: does the map have the properties an attribution is supposed to have?

Non-Sensitivity removes every pixel group once (ceil(H W / features_in_step) + 1 forwards);
Input Invariance explains a shifted input on a model that absorbs the shift (one explanation);
Completeness compares the sum of the raw attributions with the output change from a baseline
(one explanation for the raw map, two forwards). Nothing here is random.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from xai_bench.metrics.base import Cost, EvalBatch, ImageMetric, check_choice, register_metric
from xai_bench.metrics.functional import axiomatic as F_axiom
from xai_bench.utils.errors import ConfigError


def _non_negative(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{what} must be a number >= 0; got {value!r}.")
    return float(value)


@register_metric("non_sensitivity")
class NonSensitivity(ImageMetric):
    """Non-Sensitivity (Nguyen & Martinez 2020, "On quantitative aspects of model
    interpretability"): the number of pixel groups where the map and the model disagree,
    a (near-)zero attribution on pixels whose removal changes the target's probability, or an
    attribution on pixels whose removal does not (both by `eps`). Lower is better.

    Counts depend on the resolution and `features_in_step`: compare methods at equal settings.
    `batch_size` perturbed images per forward (None: the evaluation batch's size, which the run
    chose for its device; on a 2-core CPU a ViT-tiny forward of 120 images cost 1.5x per image
    what forwards of 8 did)."""

    higher_is_better = False
    needs = frozenset({"model"})

    def __init__(self, key: str = "non_sensitivity", eps: float = 1e-5,
                 features_in_step: int = 1, fill: str = "black", batch_size: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.eps = _non_negative(eps, f"{key}.eps")
        if isinstance(features_in_step, bool) or not isinstance(features_in_step, int) \
                or features_in_step < 1:
            raise ConfigError(
                f"{key}.features_in_step must be an integer >= 1; got {features_in_step!r}.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"{key}.batch_size must be an integer >= 1 or null; "
                              f"got {batch_size!r}.")
        self.features_in_step, self.batch_size = features_in_step, batch_size
        self.fill = check_choice(fill, F_axiom.FILLS, f"{key}.fill")
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The clean image and one image per pixel group."""
        return Cost(forwards=math.ceil(height * width / self.features_in_step) + 1)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        return {self.key: F_axiom.non_sensitivity(
            batch.model, batch.images, batch.maps, batch.target, eps=self.eps,
            features_in_step=self.features_in_step, fill=self.fill, batch_size=self.batch_size)}


@register_metric("input_invariance")
class InputInvariance(ImageMetric):
    """Input Invariance (Kindermans et al. 2017, "The (un)reliability of saliency methods"):
    the input is shifted by a constant and explained on a model whose first layer's bias
    absorbs the shift (the same function of the original input); the map should not change.
    Columns: `<key>` 1 if every pixel is within atol + rtol |A'| (quantus), else 0 (higher is
    better); `<key>/max_abs_diff` the largest change (lower is better)."""

    higher_is_better = True
    needs = frozenset({"method"})

    def __init__(self, key: str = "input_invariance", shift: float = -1.0, atol: float = 1e-4,
                 rtol: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        if isinstance(shift, bool) or not isinstance(shift, int | float) or not math.isfinite(
                shift):
            raise ConfigError(f"{key}.shift must be a finite number; got {shift!r}.")
        self.shift = float(shift)
        self.atol = _non_negative(atol, f"{key}.atol")
        self.rtol = _non_negative(rtol, f"{key}.rtol")
        self._add_columns([key, f"{key}/max_abs_diff"])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One explanation of the shifted input on the shifted model."""
        return Cost(explanations=1)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        shifted = F_axiom.shift_absorbing_model(batch.model, self.shift)
        maps = batch.method(shifted, batch.images + self.shift, target=batch.target,
                            ids=batch.ids).maps
        diff = (batch.maps.detach().float() - maps.float()).flatten(1).abs().amax(dim=1)
        return {self.key: F_axiom.isclose_all(batch.maps, maps, self.rtol, self.atol),
                f"{self.key}/max_abs_diff": diff}

    def column_higher_is_better(self, column: str) -> bool | None:
        return {self.key: True, f"{self.key}/max_abs_diff": False}.get(column)


@register_metric("completeness")
class Completeness(ImageMetric):
    """Completeness (Sundararajan et al. 2017, "Axiomatic attribution for deep networks"): the
    raw attributions should add up to f(x) - f(baseline). Scored on the method's raw signed map
    (`Explanation.raw`, before ReLU / upsampling / normalisation: the evaluated maps are min-max
    normalised and cannot add up to anything), so the method explains each image once more.
    Columns: `<key>` 1 if |sum A - d| <= atol + rtol |d| (higher is better), `<key>/gap` the
    absolute gap |sum A - d| (lower is better)."""

    higher_is_better = True
    needs = frozenset({"model", "method"})

    def __init__(self, key: str = "completeness", baseline: str = "zero", output: str = "logit",
                 rtol: float = 0.05, atol: float = 0.0, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.baseline = check_choice(baseline, F_axiom.FILLS, f"{key}.baseline")
        self.output = check_choice(output, F_axiom.OUTPUTS, f"{key}.output")
        self.rtol = _non_negative(rtol, f"{key}.rtol")
        self.atol = _non_negative(atol, f"{key}.atol")
        self._add_columns([key, f"{key}/gap"])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The raw map (one explanation), the image and its baseline (two forwards)."""
        return Cost(forwards=2, explanations=1)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        raw = batch.method(batch.model, batch.images, target=batch.target, ids=batch.ids).raw
        total, delta = F_axiom.completeness(batch.model, batch.images, raw, batch.target,
                                            self.baseline, self.output)
        gap = (total - delta).abs()
        complete = (gap <= self.atol + self.rtol * delta.abs()).float()
        nan = torch.isnan(gap)
        return {self.key: complete.masked_fill(nan, float("nan")), f"{self.key}/gap": gap}

    def column_higher_is_better(self, column: str) -> bool | None:
        return {self.key: True, f"{self.key}/gap": False}.get(column)
