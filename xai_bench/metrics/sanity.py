"""Sanity metrics: does the map change when the model it explains is destroyed?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from xai_bench.metrics.base import Cost, EvalBatch, ImageMetric, check_choice, register_metric
from xai_bench.metrics.functional import sanity as F_sanity
from xai_bench.utils.errors import ConfigError

SIMILARITIES = {"spearman": F_sanity.spearman, "ssim": F_sanity.ssim}


@register_metric("parameter_randomisation")
class ParameterRandomisation(ImageMetric):
    """Similarity of each map to the map of progressively randomised models, one column per
    (similarity, step): `<key>/<similarity>/<step>_<layer>`. A trustworthy method's similarity
    falls as layers are randomised top-down; one that stays high ignores the weights.

    The layer list depends on the architecture, so it is fixed by the first batch. Lower is
    better: the map should change (similarity fall) as the model is destroyed."""

    higher_is_better = False
    needs = frozenset({"method"})

    def __init__(self, key: str = "mprt", granularity: str = "blocks", order: str = "cascading",
                 similarity: Sequence[str] = ("spearman", "ssim"), seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.granularity = check_choice(granularity, F_sanity.GRANULARITIES, f"{key}.granularity")
        self.order = check_choice(order, F_sanity.ORDERS, f"{key}.order")
        self.similarity = [check_choice(s, tuple(SIMILARITIES), f"{key}.similarity")
                           for s in similarity]
        if not self.similarity:
            raise ConfigError(f"{key}.similarity needs at least one of {', '.join(SIMILARITIES)}.")
        self.seed = int(seed)
        self.layer_names: list[str] | None = None

    def configure(self, model: torch.nn.Module) -> None:
        """Fix the columns from the model's layers (before the first update)."""
        if self.layer_names is not None:
            return
        self.layer_names = [name for name, _, _
                            in F_sanity.randomisation_layers(model, self.granularity)]
        self._add_columns([f"{self.key}/{sim}/{step}_{name}" for sim in self.similarity
                           for step, name in enumerate(self.layer_names)])

    def cost(self, model: torch.nn.Module, height: int, width: int) -> Cost:
        """One explanation per randomisation step."""
        return Cost(explanations=len(F_sanity.randomisation_layers(model, self.granularity)))

    def score(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        self.configure(batch.model)
        scores: dict[str, torch.Tensor] = {}
        for step, (name, randomised) in enumerate(
            F_sanity.randomised_models(batch.model, self.granularity, self.order, self.seed)
        ):
            maps = batch.method(randomised, batch.images, target=batch.target, ids=batch.ids).maps
            for sim in self.similarity:
                scores[f"{self.key}/{sim}/{step}_{name}"] = SIMILARITIES[sim](batch.maps, maps)
        return scores

    def update(self, batch: EvalBatch) -> None:
        self.configure(batch.model)
        super().update(batch)
