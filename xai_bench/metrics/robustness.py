"""Robustness metrics: does the map stay put when the input barely changes?

Quantus' robustness family (Max-Sensitivity lives with the study's faithfulness metrics). They
explain perturbed copies of each image again, so they cost one explanation per draw (several
draws of an image go into one method call with `draws_per_call`), plus one forward per draw
where the model's outputs are compared; Consistency only reads the maps and predictions of
the whole evaluated set. All randomness is seeded per image id. Definitions:
`xai_bench.metrics.functional.robustness`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from xai_bench.metrics.base import Cost, EvalBatch, ImageMetric, check_choice, register_metric
from xai_bench.metrics.functional import robustness as F_rob
from xai_bench.utils.errors import ConfigError


def _positive(value: Any, what: str) -> int:
    if value is None or isinstance(value, bool) or int(value) < 1:
        raise ConfigError(f"{what} must be an integer >= 1; got {value!r}.")
    return int(value)


class _Reexplaining(ImageMetric):
    """Re-explains perturbed images: the class explained (`target`: explained = the map's own,
    label = the true label, one more explanation where it differs), `only_correct` (other
    images NaN) and `draws_per_call`."""

    needs = frozenset({"method"})
    higher_is_better = False

    def __init__(self, key: str, target: str = "explained", only_correct: bool = False,
                 draws_per_call: int = 1, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.target = check_choice(target, ("explained", "label"), f"{key}.target")
        self.only_correct = bool(only_correct)
        self.draws_per_call = _positive(draws_per_call, f"{key}.draws_per_call")

    def _reference(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(target (B,), the maps of x for it): the batch's maps unless target=label differs."""
        if self.target == "explained":
            return batch.target, batch.maps
        labels = batch.labels.to(batch.target.device)
        if labels.ndim != 1:
            raise ConfigError(f"{self.key}.target: label needs single-label data; use "
                              "explained on multi-label datasets.")
        if torch.equal(labels, batch.target):
            return labels, batch.maps
        return labels, batch.explain(batch.images, labels)

    @staticmethod
    def _explainer(batch: EvalBatch, target: torch.Tensor) -> F_rob.Explain:
        def explain(images: torch.Tensor) -> torch.Tensor:
            repeat = images.shape[0] // target.shape[0]
            return batch.explain(images, target.repeat(repeat), ids=batch.ids.repeat(repeat))

        return explain

    def _restrict(self, batch: EvalBatch, scores: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
        if not self.only_correct:
            return scores
        wrong = ~batch.correct
        return {k: v.float().masked_fill(wrong.to(v.device), float("nan"))
                for k, v in scores.items()}


@register_metric("avg_sensitivity")
class AvgSensitivity(_Reexplaining):
    """Avg-Sensitivity (Yeh et al. 2019): mean L2 change of the map under uniform input noise
    U[-r, r], divided by the map's norm (quantus; `normalise: false` drops it); one column per
    radius. The mean counterpart of `max_sensitivity`, on the same draws for the same seed.
    Lower is better."""

    def __init__(self, key: str = "avg_sensitivity", radius: Sequence[float] | float = 0.2,
                 samples: int = 20, normalise: bool = True, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        radii = list(radius) if isinstance(radius, Sequence) and not isinstance(radius, str) \
            else [radius]
        if not radii or any(r is None or float(r) < 0 for r in radii):
            raise ConfigError(f"{key}.radius must be one or more floats >= 0; got {radius!r}.")
        self.radii = [float(r) for r in radii]
        self.samples = _positive(samples, f"{key}.samples")
        self.normalise, self.seed = bool(normalise), int(seed)
        self._add_columns([f"{key}@{r:g}" for r in self.radii])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One explanation per draw and radius (+1 where target=label is not the map's class)."""
        return Cost(explanations=self.samples * len(self.radii))

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        target, maps = self._reference(batch)
        explain = self._explainer(batch, target)
        return self._restrict(batch, {
            f"{self.key}@{r:g}": F_rob.avg_sensitivity(
                explain, batch.images, maps, r, self.samples, seed=self.seed, ids=batch.ids,
                normalise=self.normalise, draws_per_call=self.draws_per_call)
            for r in self.radii})


@register_metric("local_lipschitz_estimate")
class LocalLipschitzEstimate(_Reexplaining):
    """Local Lipschitz Estimate (Alvarez-Melis & Jaakkola 2018): largest ratio of the map's L2
    change to the input's under Gaussian noise N(0, std^2). Lower is better."""

    def __init__(self, key: str = "local_lipschitz_estimate", std: float = 0.1,
                 samples: int = 20, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        if std is None or float(std) < 0:
            raise ConfigError(f"{key}.std must be a float >= 0; got {std!r}.")
        self.std, self.samples = float(std), _positive(samples, f"{key}.samples")
        self.seed = int(seed)
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One explanation per draw (+1 where target=label is not the map's class)."""
        return Cost(explanations=self.samples)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        target, maps = self._reference(batch)
        value = F_rob.local_lipschitz_estimate(
            self._explainer(batch, target), batch.images, maps, self.std, self.samples,
            seed=self.seed, ids=batch.ids, draws_per_call=self.draws_per_call)
        return self._restrict(batch, {self.key: value})


@register_metric("continuity")
class Continuity(_Reexplaining):
    """Continuity (Montavon et al. 2018): largest ratio of the map's L1 change to the input's
    L2 change over `steps` horizontal translations of the image (quantus 0.6's perturbation).
    Deterministic. Lower is better."""

    def __init__(self, key: str = "continuity", steps: int = 28, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.steps = _positive(steps, f"{key}.steps")
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One explanation per translation (+1 where target=label is not the map's class)."""
        return Cost(explanations=self.steps)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        target, maps = self._reference(batch)
        value = F_rob.continuity(self._explainer(batch, target), batch.images, maps,
                                 steps=self.steps, draws_per_call=self.draws_per_call)
        return self._restrict(batch, {self.key: value})


class _RelativeStability(_Reexplaining):
    """Agarwal et al. 2022's relative stabilities; `kind` set by each subclass."""

    kind = "input"
    needs = frozenset({"method", "model"})

    def __init__(self, key: str, samples: int = 20, low: float = 0.02, high: float = 0.2,
                 exclude_changed: bool = True, eps: float = 1e-6, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.samples = _positive(samples, f"{key}.samples")
        if low is None or high is None or not float(low) < float(high):
            raise ConfigError(f"{key}: low must be < high; got low={low!r}, high={high!r}.")
        if eps is None or not float(eps) > 0:
            raise ConfigError(f"{key}.eps must be a float > 0; got {eps!r}.")
        self.low, self.high, self.eps = float(low), float(high), float(eps)
        self.exclude_changed, self.seed = bool(exclude_changed), int(seed)
        self._add_columns([key])

    def _forwards(self) -> int:
        return self.samples if self.kind != "input" or self.exclude_changed else 0

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One explanation per draw (+1 where target=label is not the map's class) and, to
        read the outputs or the predicted class, one forward per draw."""
        return Cost(explanations=self.samples, forwards=self._forwards())

    def _forward(self, batch: EvalBatch) -> tuple[F_rob.Forward, torch.Tensor | None]:
        return F_rob.model_forward(batch.model), None

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        target, maps = self._reference(batch)
        forward, representation = self._forward(batch)
        value = F_rob.relative_stability(
            self._explainer(batch, target), batch.images, maps, self.kind, batch.logits,
            forward=forward, representation=representation, low=self.low, high=self.high,
            samples=self.samples, seed=self.seed, ids=batch.ids,
            exclude_changed=self.exclude_changed, eps=self.eps,
            draws_per_call=self.draws_per_call)
        return self._restrict(batch, {self.key: value})


@register_metric("relative_input_stability")
class RelativeInputStability(_RelativeStability):
    """Relative Input Stability (Agarwal et al. 2022): largest ratio of the map's relative
    change to the input's relative change under U[low, high] noise, over the draws that keep
    the predicted class. Lower is better."""

    kind = "input"

    def __init__(self, key: str = "relative_input_stability", **kwargs: Any) -> None:
        super().__init__(key, **kwargs)


@register_metric("relative_output_stability")
class RelativeOutputStability(_RelativeStability):
    """Relative Output Stability (Agarwal et al. 2022): largest ratio of the map's relative
    change to the L2 change of the logits, over the draws that keep the predicted class.
    Lower is better."""

    kind = "output"

    def __init__(self, key: str = "relative_output_stability", **kwargs: Any) -> None:
        super().__init__(key, **kwargs)


@register_metric("relative_representation_stability")
class RelativeRepresentationStability(_RelativeStability):
    """Relative Representation Stability (Agarwal et al. 2022): largest ratio of the map's
    relative change to the relative change of an internal representation (`layer`: a module
    name, its output; null: the pre-logit features, the classifier's input), over the draws
    that keep the predicted class. Lower is better."""

    kind = "representation"

    def __init__(self, key: str = "relative_representation_stability",
                 layer: str | None = None, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.layer = None if layer is None else str(layer)

    def _forwards(self) -> int:
        return self.samples + 1  # the draws and the representation of x

    def _forward(self, batch: EvalBatch) -> tuple[F_rob.Forward, torch.Tensor | None]:
        forward = F_rob.model_forward(batch.model, self.layer, representation=True)
        return forward, forward(batch.images)[1]


@register_metric("consistency")
class Consistency(ImageMetric):
    """Consistency (Dasgupta et al. 2022): the fraction of the other evaluated images whose
    map has the same discrete label (`discretise`) that share the image's predicted class; NaN
    without such an image. Computed over the whole evaluated set when the table is gathered
    (quantus: within each of its batches). Map only. Higher is better: the explanation
    predicts the prediction (quantus 0.6 declares lower, a slip)."""

    higher_is_better = True

    def __init__(self, key: str = "consistency", discretise: str = "top_k", k: int = 1,
                 grid: int = 4, n: int = 5, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.discretise = check_choice(discretise, F_rob.DISCRETISERS, f"{key}.discretise")
        self.k, self.grid = _positive(k, f"{key}.k"), _positive(grid, f"{key}.grid")
        self.n = _positive(n, f"{key}.n")
        if self.discretise == "top_k" and self.k > self.grid**2:
            raise ConfigError(f"{key}.k must be <= grid^2 = {self.grid**2}; got {k!r}.")
        self.columns = (key,)
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("predicted", default=[], dist_reduce_fx="cat")

    def update(self, batch: EvalBatch) -> None:
        labels = F_rob.discretise(batch.maps, self.discretise, k=self.k, grid=self.grid, n=self.n)
        self.ids.append(batch.ids.detach().to(self.device, torch.int64).view(-1))
        self.labels.append(labels.to(self.device))
        self.predicted.append(batch.predicted.detach().to(self.device, torch.int64).view(-1))

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-image table {"id", key}: gathered, de-duplicated, sorted by id, then scored."""
        ids, (labels, predicted) = self._gathered_rows("labels", "predicted")
        if not len(ids):
            return {"id": ids, self.key: torch.zeros(0)}
        return {"id": ids, self.key: F_rob.consistency(labels.long(), predicted.long())}
