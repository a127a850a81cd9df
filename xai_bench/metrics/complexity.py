"""Complexity metrics: is the map concentrated enough to be read? (docs/metrics.md)

Map-only: they need neither a mask nor the model, and cost no model pass. An all-zero map (every
constant map after min-max normalisation) is undefined and scores NaN; NaN maps score NaN; both
are counted by the evaluation (`constant_maps`, `nan_maps`). Definitions and edge cases:
`xai_bench.metrics.functional.complexity`.
"""

from __future__ import annotations

from typing import Any

import torch

from xai_bench.metrics.base import EvalBatch, ImageMetric, register_metric
from xai_bench.metrics.functional import complexity as F_cx
from xai_bench.utils.errors import ConfigError


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false; got {value!r}.")
    return value


@register_metric("sparseness")
class Sparseness(ImageMetric):
    """Gini index of the map's values (Chalasani et al. 2020, "Concise explanations of neural
    networks using adversarial training"): 1 = all relevance on one pixel, 0 = uniform. Higher
    is better (a sparser, more readable map)."""

    higher_is_better = True

    def __init__(self, key: str = "sparseness", abs: bool = True, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.abs = _flag(abs, f"{key}.abs")
        self._add_columns([key])

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        return {self.key: F_cx.sparseness(batch.maps.float(), abs=self.abs)}


@register_metric("complexity")
class Complexity(ImageMetric):
    """Entropy (nats) of the map read as a distribution over pixels (Bhatt et al. 2020,
    "Evaluating and aggregating feature-based model explanations"): 0 = one pixel,
    log(H W) = uniform. Lower is better (a less complex map)."""

    higher_is_better = False

    def __init__(self, key: str = "complexity", abs: bool = True, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.abs = _flag(abs, f"{key}.abs")
        self._add_columns([key])

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        return {self.key: F_cx.complexity(batch.maps.float(), abs=self.abs)}


@register_metric("effective_complexity")
class EffectiveComplexity(ImageMetric):
    """Number of pixels above `eps` of the map's peak (Nguyen & Martinez 2020, "On quantitative
    aspects of model interpretability"). Lower is better (fewer pixels to look at)."""

    higher_is_better = False

    def __init__(self, key: str = "effective_complexity", eps: float = 1e-5, abs: bool = True,
                 normalise: bool = True, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.abs = _flag(abs, f"{key}.abs")
        self.normalise = _flag(normalise, f"{key}.normalise")
        self.eps = F_cx.check_eps(eps)
        self._add_columns([key])

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        return {self.key: F_cx.effective_complexity(batch.maps.float(), eps=self.eps,
                                                    abs=self.abs, normalise=self.normalise)}
