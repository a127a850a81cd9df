"""Randomisation metrics beyond the parameter randomisation test: does the map change when the
class or the model it explains is replaced by a random one?

Random Logit explains another class (one explanation per image); Smooth MPRT denoises every map
over `samples` noisy inputs before comparing the trained and the randomised models' maps
(samples x (1 + layers) explanations); Efficient MPRT compares the entropy of the maps of the
trained and the fully randomised model (one explanation). All draws are seeded per image id,
the randomised models per layer: the same on every batch and DDP rank.
"""

from __future__ import annotations

from typing import Any

import torch

from xai_bench.metrics.base import Cost, EvalBatch, ImageMetric, check_choice, register_metric
from xai_bench.metrics.functional import randomisation as F_rand
from xai_bench.metrics.functional import sanity as F_sanity
from xai_bench.utils.errors import ConfigError


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1; got {value!r}.")
    return value


@register_metric("random_logit")
class RandomLogit(ImageMetric):
    """Similarity of the map to the map of a random other class (Sixt et al. 2020, "When
    explanations lie"); the class is drawn uniformly from the K - 1 others per image id. A map
    that does not depend on the class scores high: lower is better."""

    higher_is_better = False
    needs = frozenset({"method"})

    def __init__(self, key: str = "random_logit", similarity: str = "ssim", seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.similarity = check_choice(similarity, tuple(F_rand.SIMILARITIES),
                                       f"{key}.similarity")
        self.seed = int(seed)
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One explanation of the other class."""
        return Cost(explanations=1)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        other = F_rand.off_class(batch.target, batch.logits.shape[-1], batch.ids, self.seed)
        maps = batch.explain(batch.images, other)
        return {self.key: F_rand.similarity(self.similarity, batch.maps, maps)}


class _LayerColumns(ImageMetric):
    """Columns named after the randomised layers, fixed by the first batch's model."""

    def _configure(self, model: torch.nn.Module) -> None:
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:
        self._configure(batch.model)
        super().update(batch)


@register_metric("smooth_mprt")
class SmoothMPRT(_LayerColumns):
    """Smooth model parameter randomisation test (Hedström et al. 2023, "Sanity checks
    revisited"): MPRT on maps averaged over `samples` noisy inputs (noise std = `noise` x the
    image's value range; the last sample noise-free), which removes the noise that makes plain
    MPRT flag good methods. One column per randomisation step,
    `<key>/<step>_<layer>` (only the last step with `skip_layers`). Lower is better."""

    higher_is_better = False
    needs = frozenset({"method"})

    def __init__(self, key: str = "smooth_mprt", granularity: str = "blocks",
                 order: str = "bottom_up", similarity: str = "spearman", samples: int = 50,
                 noise: float = 0.1, skip_layers: bool = False, seed: int = 0,
                 samples_per_call: int = 1, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.granularity = check_choice(granularity, F_sanity.GRANULARITIES,
                                        f"{key}.granularity")
        self.order = check_choice(order, F_rand.LAYER_ORDERS, f"{key}.order")
        self.similarity = check_choice(similarity, tuple(F_rand.SIMILARITIES),
                                       f"{key}.similarity")
        self.samples = _positive(samples, f"{key}.samples")
        self.samples_per_call = _positive(samples_per_call, f"{key}.samples_per_call")
        if not float(noise) >= 0:
            raise ConfigError(f"{key}.noise must be >= 0; got {noise!r}.")
        self.noise, self.skip_layers, self.seed = float(noise), bool(skip_layers), int(seed)
        self.layer_names: list[str] | None = None

    def _steps(self, model: torch.nn.Module) -> list[str]:
        names = [name for name, _, _ in F_sanity.randomisation_layers(model, self.granularity)]
        return names[::-1] if self.order == "bottom_up" else names

    def _configure(self, model: torch.nn.Module) -> None:
        if self.layer_names is not None:
            return
        self.layer_names = self._steps(model)
        steps = list(enumerate(self.layer_names))
        self._add_columns([f"{self.key}/{i}_{name}"
                           for i, name in (steps[-1:] if self.skip_layers else steps)])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """`samples` explanations of the trained model and of each scored randomised model."""
        models = 1 + (1 if self.skip_layers else len(self._steps(model)))
        return Cost(explanations=self.samples * models)

    def _smooth(self, batch: EvalBatch, model: torch.nn.Module) -> torch.Tensor:
        def explain(images: torch.Tensor) -> torch.Tensor:
            repeat = images.shape[0] // batch.target.shape[0]
            return batch.method(model, images, target=batch.target.repeat(repeat),
                                ids=batch.ids.repeat(repeat)).maps

        return F_rand.smooth_maps(explain, batch.images, batch.ids, self.samples, self.noise,
                                  self.seed, self.samples_per_call)

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        self._configure(batch.model)
        assert self.layer_names is not None
        original = self._smooth(batch, batch.model)
        scores: dict[str, torch.Tensor] = {}
        models = F_rand.ordered_randomised_models(batch.model, self.granularity, self.order,
                                                  self.seed)
        for step, (name, randomised) in enumerate(models):
            if self.skip_layers and step < len(self.layer_names) - 1:
                continue
            smoothed = self._smooth(batch, randomised)
            scores[f"{self.key}/{step}_{name}"] = F_rand.similarity(self.similarity, original,
                                                                    smoothed)
        return scores


@register_metric("efficient_mprt")
class EfficientMPRT(ImageMetric):
    """Efficient MPRT (Hedström et al. 2024, "Sanity checks revisited"): the relative rise of
    the map's discrete entropy (`n_bins` equal-width bins) from the trained to the fully
    randomised model, (H_random - H) / H. A map that becomes noise when the model does rises;
    one that keeps its structure does not. Higher is better; NaN for a map in a single bin.
    The randomised model is built once and reused by the next batches while the model's
    weights and modes stay the same (`functional.randomisation.RandomisedModelCache`)."""

    higher_is_better = True
    needs = frozenset({"method"})

    def __init__(self, key: str = "efficient_mprt", granularity: str = "blocks",
                 n_bins: int = 100, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.granularity = check_choice(granularity, F_sanity.GRANULARITIES,
                                        f"{key}.granularity")
        self.n_bins = _positive(n_bins, f"{key}.n_bins")
        self.seed = int(seed)
        # built on the first batch, reused while the model and its weights stay the same
        self._randomised = F_rand.RandomisedModelCache(self.granularity, self.seed)
        self._add_columns([key])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One explanation on the fully randomised model."""
        return Cost(explanations=1)

    def reset(self) -> None:
        """Clear the scores and free the randomised model."""
        super().reset()
        if hasattr(self, "_randomised"):
            self._randomised.clear()

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        randomised = self._randomised.get(batch.model)
        maps = batch.method(randomised, batch.images, target=batch.target, ids=batch.ids).maps
        return {self.key: F_rand.efficient_mprt(batch.maps, maps, self.n_bins)}
