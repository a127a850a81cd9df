"""Correlation-type faithfulness metrics (the toolkits' FaithfulnessCorrelation,
FaithfulnessEstimate, MonotonicityCorrelation, Infidelity, SensitivityN, Sufficiency).

They ask whether the map's values predict how much the model's output moves when the pixels
they score are perturbed, so all but Sufficiency run the model again: one forward for the clean
images plus one per perturbed image (declared in `cost`). The score is taken on the class the
map explains; Sufficiency compares the maps and predictions of the whole evaluated set.
Definitions: `xai_bench.metrics.functional.faithfulness_correlation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from xai_bench.metrics.base import Cost, EvalBatch, ImageMetric, check_choice, register_metric
from xai_bench.metrics.faithfulness import _as_list, _ModelMetric
from xai_bench.metrics.functional import faithfulness_correlation as F_corr
from xai_bench.utils.errors import ConfigError


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1; got {value!r}.")
    return value


class _PerturbationMetric(_ModelMetric):
    """Shared settings: which output moves (`output`), what removed pixels hold (`fill`), the
    seed of the random draws and the perturbed images per forward (`batch_size`)."""

    fills: tuple[str, ...] = F_corr.FILLS

    def __init__(self, key: str, fill: str | None, output: str, only_correct: bool,
                 seed: int, batch_size: int | None, **kwargs: Any) -> None:
        super().__init__(key, only_correct, **kwargs)
        self.fill = None if fill is None else check_choice(fill, self.fills, f"{key}.fill")
        self.output = check_choice(output, F_corr.OUTPUTS, f"{key}.output")
        self.seed = int(seed)
        self.batch_size = None if batch_size is None else _positive(batch_size,
                                                                    f"{key}.batch_size")

    def _common(self, batch: EvalBatch) -> dict[str, Any]:
        return {"model": batch.model, "images": batch.images, "maps": batch.maps,
                "target": batch.target, "output": self.output, "ids": batch.ids,
                "batch_size": self.batch_size}


@register_metric("faithfulness_correlation")
class FaithfulnessCorrelation(_PerturbationMetric):
    """Faithfulness correlation (Bhatt, Weller & Moura 2020): Pearson correlation, over `runs`
    random sets of `subset_size` pixels, between the map's sum over a set and the drop of the
    target's logit when the set is removed. Higher is better."""

    higher_is_better = True

    def __init__(self, key: str = "faithfulness_correlation", subset_size: int = 224,
                 runs: int = 100, fill: str = "min", output: str = "logit",
                 only_correct: bool = False, seed: int = 0, batch_size: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(key, fill, output, only_correct, seed, batch_size, **kwargs)
        self.subset_size = _positive(subset_size, f"{key}.subset_size")
        self.runs = _positive(runs, f"{key}.runs")
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The clean image and one per run."""
        return Cost(forwards=self.runs + 1)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        value = F_corr.faithfulness_correlation(
            **self._common(batch), subset_size=self.subset_size, runs=self.runs, fill=self.fill,
            seed=self.seed)
        return self._restrict(batch, {self.key: value})


@register_metric("sensitivity_n")
class SensitivityN(_PerturbationMetric):
    """Sensitivity-n (Ancona, Ceolini, Oztireli & Gross 2018): the faithfulness correlation
    for each set size n, given as a fraction of the pixels; one column `<key>@<fraction>` each.
    A map whose sums equal the output change at every n scores 1. Higher is better."""

    higher_is_better = True

    def __init__(self, key: str = "sensitivity_n",
                 fractions: Sequence[float] | float = (0.01, 0.1, 0.5, 0.8), runs: int = 50,
                 fill: str = "min", output: str = "probability", only_correct: bool = False,
                 seed: int = 0, batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(key, fill, output, only_correct, seed, batch_size, **kwargs)
        self.fractions = [float(f) for f in _as_list(fractions)]
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"{key}.fractions must be one or more fractions of the pixels in "
                              f"(0, 1]; got {fractions!r}.")
        self.runs = _positive(runs, f"{key}.runs")
        self._add_columns([f"{key}@{f:g}" for f in self.fractions])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The clean image and one per run and set size."""
        return Cost(forwards=len(self.fractions) * self.runs + 1)

    def sizes(self, height: int, width: int) -> list[int]:
        """Pixels per set: round(fraction x H W), at least 1."""
        return [max(1, round(f * height * width)) for f in self.fractions]

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        height, width = batch.images.shape[-2:]
        values = F_corr.sensitivity_n(
            **self._common(batch), sizes=self.sizes(height, width), runs=self.runs,
            fill=self.fill, seed=self.seed)
        return self._restrict(batch, {f"{self.key}@{f:g}": values[:, k]
                                      for k, f in enumerate(self.fractions)})


@register_metric("faithfulness_estimate")
class FaithfulnessEstimate(_PerturbationMetric):
    """Faithfulness estimate (Alvarez-Melis & Jaakkola 2018): pixels ranked by the map and cut
    into steps of `features_in_step`; Pearson correlation, over the steps, between a step's
    attribution and the drop of the target's logit when only that step is removed. Higher is
    better."""

    higher_is_better = True

    def __init__(self, key: str = "faithfulness_estimate", features_in_step: int = 224,
                 fill: str = "min", output: str = "logit", only_correct: bool = False,
                 seed: int = 0, batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(key, fill, output, only_correct, seed, batch_size, **kwargs)
        self.features_in_step = _positive(features_in_step, f"{key}.features_in_step")
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The clean image and one per step."""
        return Cost(forwards=math.ceil(height * width / self.features_in_step) + 1)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        value = F_corr.faithfulness_estimate(
            **self._common(batch), features_in_step=self.features_in_step, fill=self.fill)
        return self._restrict(batch, {self.key: value})


@register_metric("monotonicity_correlation")
class MonotonicityCorrelation(_PerturbationMetric):
    """Monotonicity correlation (Nguyen & Martinez 2020): pixels ranked by the map (ascending)
    and cut into steps of `features_in_step` (None: `steps` steps whatever the image size),
    each replaced `samples` times by one uniform value;
    Spearman correlation, over the steps, between a step's attribution and the mean squared
    change of the target's probability. Higher is better."""

    higher_is_better = True
    fills = F_corr.MONOTONICITY_FILLS

    def __init__(self, key: str = "monotonicity_correlation", features_in_step: int | None = None,
                 steps: int = 32, samples: int = 10, fill: str = "uniform", low: float = 0.0,
                 high: float = 1.0, output: str = "probability", only_correct: bool = False,
                 seed: int = 0, batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(key, fill, output, only_correct, seed, batch_size, **kwargs)
        self.features_in_step = (None if features_in_step is None
                                 else _positive(features_in_step, f"{key}.features_in_step"))
        self.steps = _positive(steps, f"{key}.steps")
        self.samples = _positive(samples, f"{key}.samples")
        self.low, self.high = float(low), float(high)
        if not self.low < self.high:
            raise ConfigError(f"{key} needs low < high; got {low!r} and {high!r}.")
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The clean image and `samples` per step."""
        step = F_corr.monotonicity_step(height, width, self.features_in_step, self.steps)
        return Cost(forwards=math.ceil(height * width / step) * self.samples + 1)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        value = F_corr.monotonicity_correlation(
            **self._common(batch), features_in_step=self.features_in_step, steps=self.steps,
            samples=self.samples, fill=self.fill, low=self.low, high=self.high, seed=self.seed)
        return self._restrict(batch, {self.key: value})


@register_metric("infidelity")
class Infidelity(_PerturbationMetric):
    """Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019): mean squared difference, over
    `samples` Gaussian input perturbations I, between the map's account of the change
    (sum A I, the map broadcast over channels) and the actual drop of the target's logit;
    `normalise` rescales the map optimally first (captum's normalize). Lower is better."""

    higher_is_better = False

    def __init__(self, key: str = "infidelity", samples: int = 10, std: float = 0.1,
                 normalise: bool = True, output: str = "logit", only_correct: bool = False,
                 seed: int = 0, batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(key, None, output, only_correct, seed, batch_size, **kwargs)
        self.samples = _positive(samples, f"{key}.samples")
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
            raise ConfigError(f"{key}.std must be a number > 0; got {std!r}.")
        self.std, self.normalise = float(std), bool(normalise)
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The clean image and one per draw."""
        return Cost(forwards=self.samples + 1)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        value = F_corr.infidelity(**self._common(batch), samples=self.samples, std=self.std,
                                  normalise=self.normalise, seed=self.seed)
        return self._restrict(batch, {self.key: value})


@register_metric("sufficiency")
class Sufficiency(ImageMetric):
    """Sufficiency (Dasgupta, Frost & Moshkovitz 2022): the fraction of an image's neighbours
    (maps within `threshold` of the largest standardised Euclidean distance) that the model
    predicts as the same class; NaN for an image without neighbours. The neighbourhood is the
    WHOLE EVALUATED SET: `update` keeps each |map| (float16: half the memory, a value moves by
    at most 2^-11 of itself) and prediction, `compute` scores the gathered, de-duplicated set,
    so the scores do not depend on the batches or DDP processes (quantus: within each of its
    batches). No model pass: it reads the batch's predictions. Higher is better."""

    higher_is_better = True

    def __init__(self, key: str = "sufficiency", threshold: float = 0.6,
                 **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0 <= threshold <= 1:
            raise ConfigError(f"{key}.threshold must be a number in [0, 1]; got {threshold!r}.")
        self.threshold = float(threshold)
        self.columns = (key,)
        self.add_state("abs_maps", default=[], dist_reduce_fx="cat")
        self.add_state("predicted", default=[], dist_reduce_fx="cat")

    def update(self, batch: EvalBatch) -> None:
        self.ids.append(batch.ids.detach().to(self.device, torch.int64).view(-1))
        self.abs_maps.append(batch.maps.detach().abs().to(self.device, torch.float16))
        self.predicted.append(batch.predicted.detach().to(self.device, torch.int64).view(-1))

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-image table {"id", key}: gathered, de-duplicated, sorted by id, then scored."""
        ids, (maps, predicted) = self._gathered_rows("abs_maps", "predicted")
        if not len(ids):
            return {"id": ids, self.key: torch.zeros(0)}
        return {"id": ids, self.key: F_corr.sufficiency(maps, predicted, self.threshold).float()}
