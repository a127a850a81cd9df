"""Class weights for the cross-entropy: given, or 'balanced' from the training labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xai_bench.utils.errors import ConfigError


def balanced_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[float]:
    """n_samples / (n_classes * count_c), scikit-learn's 'balanced' rule. Multi-label (a
    multi-hot (N, C) array): negatives / positives per class, BCE's pos_weight."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        positives = labels.sum(axis=0).astype(float)
        if (positives == 0).any():
            raise ConfigError(f"class_weights=balanced: classes "
                              f"{np.flatnonzero(positives == 0).tolist()} have no positives.")
        return ((labels.shape[0] - positives) / positives).tolist()
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(float)
    if (counts == 0).any():
        missing = [i for i, c in enumerate(counts) if c == 0]
        raise ConfigError(f"class_weights=balanced: classes {missing} have no training images.")
    return (counts.sum() / (num_classes * counts)).tolist()


def resolve_class_weights(spec: Any, train_labels: Callable[[], Any] | None,
                          num_classes: int) -> list[float] | None:
    """`module.class_weights` as a list: null, a list (one per class), or "balanced" from the
    training labels (`train_labels`: the data module's, read only for "balanced")."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ConfigError(
                f"module.class_weights must be null, 'balanced' or a list; got {spec!r}.")
        if train_labels is None:
            raise ConfigError("module.class_weights=balanced needs the training labels "
                              "(train_labels=).")
        return balanced_weights(train_labels(), num_classes)
    return [float(w) for w in spec]
