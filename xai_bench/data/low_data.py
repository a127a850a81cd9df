"""The low-data regime (`dataset.low_data`): which training images keep their labels.

The survey's 1/10/50/100% of each class, or ATCON's n labelled images per class; the rest
forms the unlabeled pool that objectives training on unlabeled images draw from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch.utils.data import Subset

from xai_bench.utils.errors import ConfigError

__all__ = ["LabelledSubset", "check_low_data", "low_data_rows"]


class LabelledSubset(Subset):
    """A Subset that still answers `labels` (class weights, samplers)."""

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset.labels)[self.indices]  # type: ignore[attr-defined]


def check_low_data(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The `dataset.low_data` setting checked at construction; None when it selects nothing."""
    if not spec or (spec.get("fraction") is None and spec.get("per_class") is None):
        return None
    fraction, per_class = spec.get("fraction"), spec.get("per_class")
    if fraction is not None and per_class is not None:
        raise ConfigError("dataset.low_data: set fraction OR per_class, not both.")
    if fraction is not None and not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"dataset.low_data.fraction must lie in (0, 1]; got {fraction}.")
    if per_class is not None and (not isinstance(per_class, int | np.integer) or per_class < 1):
        raise ConfigError(
            f"dataset.low_data.per_class must be a positive integer; got {per_class!r}.")
    return {"fraction": None if fraction is None else float(fraction),
            "per_class": None if per_class is None else int(per_class),
            "seed": int(spec.get("seed", 42))}


def low_data_rows(labels: np.ndarray, fraction: float | None = None, per_class: int | None = None,
                  seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(labelled rows, unlabeled rows) of a training split: a stratified `fraction` of each
    class (at least one image per class; the survey's 1/10/50/100%), or `per_class` images of
    each class (ATCON's n labelled per class), seeded. Multi-label: a plain random fraction."""
    rng = np.random.default_rng(seed)
    rows = np.arange(labels.shape[0])
    if labels.ndim == 2:
        if per_class is not None:
            raise ConfigError(
                "dataset.low_data.per_class needs a single-label dataset; use fraction.")
        chosen = np.sort(
            rng.permutation(rows)[: max(1, int(round(float(fraction or 1.0) * rows.size)))])
    else:
        picks = []
        for cls in np.unique(labels):
            members = rng.permutation(rows[labels == cls])
            if per_class is not None:
                if members.size < per_class:
                    raise ConfigError(
                        f"dataset.low_data.per_class={per_class} but class {int(cls)} "
                        f"has {members.size} training images."
                    )
                picks.append(members[:per_class])
            else:
                picks.append(members[: max(1, int(round(float(fraction) * members.size)))])
        chosen = np.sort(np.concatenate(picks))
    return chosen, np.setdiff1d(rows, chosen)
