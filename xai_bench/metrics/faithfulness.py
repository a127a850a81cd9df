"""Faithfulness metrics: does the model's output depend on what the map highlights?
(the Grad-CAM vs HiResCAM faithfulness study)

They run the model (or the method) again on perturbed inputs, so they cost forwards: AOPC
(L+1) forwards per region size, deletion/insertion 2 x (steps+1), Max-Sensitivity one
explanation per draw, HAAS one forward. All randomness is seeded per image id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from xai_bench.metrics.base import Cost, EvalBatch, ImageMetric, check_choice, register_metric
from xai_bench.metrics.functional import faithfulness as F_faith
from xai_bench.utils.errors import ConfigError


def _as_list(value: Sequence[Any] | Any) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]


class _ModelMetric(ImageMetric):
    """Scores only the correctly classified images when `only_correct` (the study's rule);
    the others get NaN, so they are counted but left out of the mean."""

    needs = frozenset({"model"})

    def __init__(self, key: str, only_correct: bool = True, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.only_correct = bool(only_correct)

    def _restrict(self, batch: EvalBatch,
                  scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.only_correct:
            return scores
        wrong = ~batch.correct
        return {k: v.float().masked_fill(wrong.to(v.device), float("nan"))
                for k, v in scores.items()}


@register_metric("aopc")
class AOPC(_ModelMetric):
    """Area over the perturbation curve: regions of r x r px removed in map order (morf |
    lerf | random), replaced by noise in [min x, max x] (fresh every step, or once) or a
    constant; mean drop of the predicted class's probability. One column per region size.
    Higher is better for MoRF (removing the top regions first hurts most), lower for LeRF;
    random order is a reference with no better direction."""

    higher_is_better = True
    ORDER_HIGHER_IS_BETTER: ClassVar[dict[str, bool | None]] = {
        "morf": True, "lerf": False, "random": None}

    def __init__(self, key: str = "aopc", region: Sequence[int] | int = (56, 28, 21, 16),
                 order: str = "morf", fill: str = "noise", steps: int | None = None,
                 only_correct: bool = True, seed: int = 0, batch_size: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(key, only_correct, **kwargs)
        self.regions = [int(r) for r in _as_list(region)]
        if not self.regions or min(self.regions) < 1:
            raise ConfigError(
                f"{key}.region must be one or more region sizes >= 1 px; got {region!r}.")
        self.order = check_choice(order, ("morf", "lerf", "random"), f"{key}.order")
        self.fill, self.steps, self.seed, self.batch_size = fill, steps, int(seed), batch_size
        self._add_columns([f"{key}@{r}" for r in self.regions])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """(L + 1) forwards per region size, L = the r x r tiles (partial ones too), or `steps`."""
        tiles = [math.ceil(height / r) * math.ceil(width / r) for r in self.regions]
        steps = [t if self.steps is None else min(int(self.steps), t) for t in tiles]
        return Cost(forwards=sum(n + 1 for n in steps))

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        scores = {}
        for region in self.regions:
            curve = F_faith.region_perturbation(
                batch.model, batch.images, batch.maps, batch.predicted, region=region,
                order=self.order, steps=self.steps, fill=self.fill, seed=self.seed, ids=batch.ids,
                batch_size=self.batch_size,
            )
            scores[f"{self.key}@{region}"] = F_faith.aopc(curve)
        return self._restrict(batch, scores)

    def column_higher_is_better(self, column: str) -> bool | None:
        return self.ORDER_HIGHER_IS_BETTER[self.order]


@register_metric("deletion_insertion")
class DeletionInsertion(_ModelMetric):
    """Probability-curve AUCs when pixels are deleted (lower is better) or inserted into a
    blurred image (higher is better) in map order; columns `<key>/deletion`, `<key>/insertion`."""

    higher_is_better = None  # per column, see column_higher_is_better

    def __init__(self, key: str = "deletion_insertion", steps: int = 20, fill: str = "zero",
                 insertion_start: str = "blur", only_correct: bool = False, seed: int = 0,
                 batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(key, only_correct, **kwargs)
        self.steps, self.fill, self.insertion_start = int(steps), fill, insertion_start
        self.seed, self.batch_size = int(seed), batch_size
        self._add_columns([f"{key}/deletion", f"{key}/insertion"])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The clean image once, `steps` deletions and `steps` insertions."""
        return Cost(forwards=2 * self.steps + 1)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        deletion, insertion = F_faith.deletion_insertion(
            batch.model, batch.images, batch.maps, batch.predicted, steps=self.steps,
            fill=self.fill, insertion_start=self.insertion_start, batch_size=self.batch_size,
            seed=self.seed, ids=batch.ids,
        )
        return self._restrict(batch, {f"{self.key}/deletion": deletion,
                                      f"{self.key}/insertion": insertion})

    def column_higher_is_better(self, column: str) -> bool | None:
        return {f"{self.key}/deletion": False, f"{self.key}/insertion": True}.get(column)


@register_metric("max_sensitivity")
class MaxSensitivity(_ModelMetric):
    """Largest L2 change of the (min-max normalised) map under uniform input noise U[-r, r];
    one column per radius. normalise=true divides by ||map|| (captum / quantus); the study
    did not. target=label explains the true label (the study); explained = the map's target.
    Lower is better: a robust explanation barely changes."""

    needs = frozenset({"method"})
    higher_is_better = False

    def __init__(self, key: str = "max_sensitivity", radius: Sequence[float] | float = (0.05, 0.1),
                 samples: Sequence[int] | int = (20, 20), normalise: bool = False,
                 target: str = "label", only_correct: bool = True, seed: int = 0,
                 draws_per_call: int = 1, **kwargs: Any) -> None:
        super().__init__(key, only_correct, **kwargs)
        self.radii = [float(r) for r in _as_list(radius)]
        samples_list = [int(s) for s in _as_list(samples)]
        if len(samples_list) == 1:
            samples_list *= len(self.radii)
        if len(samples_list) != len(self.radii) or not self.radii:
            raise ConfigError(f"{key}.samples needs one number or one per radius "
                              f"({len(self.radii)}); got {samples!r}.")
        self.samples = samples_list
        self.normalise = bool(normalise)
        self.target = check_choice(target, ("label", "explained"), f"{key}.target")
        self.seed, self.draws_per_call = int(seed), int(draws_per_call)
        self._add_columns([f"{key}@{r:g}" for r in self.radii])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One explanation per noise draw; with target=label, one more for the images whose
        map explains another class than their label."""
        return Cost(explanations=sum(self.samples))

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        target = batch.labels.to(batch.target.device) if self.target == "label" else batch.target
        maps = (batch.maps if torch.equal(target, batch.target)
                else batch.explain(batch.images, target))

        def explain(images: torch.Tensor) -> torch.Tensor:
            repeat = images.shape[0] // target.shape[0]
            return batch.explain(images, target.repeat(repeat), ids=batch.ids.repeat(repeat))

        scores = {}
        for radius, samples in zip(self.radii, self.samples, strict=True):
            scores[f"{self.key}@{radius:g}"] = F_faith.max_sensitivity(
                explain, batch.images, maps, radius=radius, samples=samples, seed=self.seed,
                ids=batch.ids, normalise=self.normalise, draws_per_call=self.draws_per_call,
            )
        return self._restrict(batch, scores)


@register_metric("haas")
class HAAS(ImageMetric):
    """Highlighted-attribution accuracy score: accuracy on images brightened by the map
    (in the [-1, 1] frame whatever the normalisation) over accuracy on the originals, all
    test images. > 1: the map highlights what the model uses."""

    needs = frozenset({"model"})
    higher_is_better = True

    def __init__(self, key: str = "haas", **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self._add_columns([f"{key}/correct", f"{key}/correct_highlighted"])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """The originals and the highlighted images."""
        return Cost(forwards=2)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        correct, highlighted = F_faith.haas(batch.model, batch.images, batch.maps, batch.labels,
                                            batch.mean, batch.std)
        return {f"{self.key}/correct": correct.float(),
                f"{self.key}/correct_highlighted": highlighted.float()}

    def aggregate(self, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        correct = columns[f"{self.key}/correct"].double()
        highlighted = columns[f"{self.key}/correct_highlighted"].double()
        return {
            self.key: highlighted.sum(-1) / correct.sum(-1),
            f"{self.key}/accuracy": correct.mean(-1),
            f"{self.key}/accuracy_highlighted": highlighted.mean(-1),
        }
