"""Batched complexity metrics: how concentrated is a saliency map, whatever it points at?

A map that spreads its relevance over every pixel explains little; one that concentrates it on
a few is easier to read. These metrics judge the map alone (no mask, no model). Every function
takes ``maps`` as a float tensor ``(B, H, W)`` and returns one score per image as a ``(B,)``
float32 tensor on the maps' device, computed for the whole batch at once (sums in float64).

Definitions (Quantus 0.6.0 names; docs/metrics.md, "Complexity"):

- ``sparseness`` (Chalasani et al. 2020): the Gini index of the map's values,
  ``sum_i (2 i - n - 1) a_(i) / (n sum_i a_i)`` over the values sorted ascending (``i`` from 1).
  1 = all relevance on one pixel, 0 = uniform. Higher is better.
- ``complexity`` (Bhatt et al. 2020): the Shannon entropy (nats) of ``p = a / sum |a|``, with
  ``0 log 0 = 0``. 0 = one pixel, ``log(H W)`` = uniform. Lower is better.
- ``effective_complexity`` (Nguyen & Martinez 2020): the number of pixels with ``a > eps``
  after dividing the map by its maximum ``|a|`` (``normalise``). Lower is better.

``abs=True`` (Quantus' default for all three) scores ``|a|``; the benchmark's maps are min-max
normalised to [0, 1], where it changes nothing.

Edge cases (no function raises on a map; only invalid settings raise ``ConfigError``):

- a map holding a NaN scores NaN (the method failed; make it visible);
- an all-zero map (what min-max normalisation makes of every constant map) is undefined for
  all three and scores NaN: its Gini index and entropy are 0 / 0, and ``normalise`` divides it
  by a zero maximum. Quantus 0.6.0 returns 0 for Sparseness (it adds 1e-7 to every value
  first), NaN for Complexity, and 0 for EffectiveComplexity (its normalisation leaves an
  all-zero array as it is). With ``normalise=False`` an all-zero map has 0 effective pixels;
- a constant non-zero map is defined: Gini 0, entropy ``log(H W)``, ``H W`` effective pixels;
- ``abs=False`` with negative values: the Gini formula is applied as is (as Quantus does);
  the entropy of negative "probabilities" is NaN (Quantus also gives NaN there).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xai_bench.utils.errors import ConfigError

__all__ = ["check_eps", "complexity", "effective_complexity", "sparseness"]


def _flat(maps: Tensor, abs: bool) -> Tensor:
    """(B, N) float64 values of validated maps, absolute if asked."""
    if not isinstance(maps, Tensor) or maps.ndim != 3 or not maps.is_floating_point():
        what = (f"{tuple(maps.shape)} {maps.dtype}" if isinstance(maps, Tensor)
                else type(maps).__name__)
        raise ConfigError(f"maps must be a (B, H, W) floating-point tensor, got {what}")
    flat = maps.flatten(1).to(torch.float64)
    return flat.abs() if abs else flat


def check_eps(eps: object) -> float:
    """The effective-complexity threshold as a float.

    Args:
        eps: The threshold setting (a real number, not a bool or a string).

    Returns:
        ``eps`` as a float.

    Raises:
        ConfigError: ``eps`` is not a finite number >= 0.
    """
    ok = isinstance(eps, (int, float)) and not isinstance(eps, bool)
    level = float(eps) if ok else math.nan  # type: ignore[arg-type]
    if not math.isfinite(level) or level < 0:
        raise ConfigError(f"effective_complexity eps={eps!r} is invalid; use a finite number >= 0")
    return level


def _undefined(scores: Tensor, flat: Tensor, undefined: Tensor) -> Tensor:
    """NaN where `undefined` or where the map holds a NaN; float32 out."""
    undefined = undefined | torch.isnan(flat).any(dim=1)
    return scores.masked_fill(undefined, math.nan).to(torch.float32)


def sparseness(maps: Tensor, abs: bool = True) -> Tensor:
    """(B,) the Gini index of each map (Chalasani et al. 2020): 1 when all relevance is on one
    pixel, 0 when it is spread evenly. Exact: no epsilon is added (Quantus adds 1e-7 to every
    value, which scales its score by ``S / (S + 1e-7 n)``, ``S`` the map's sum).

    Args:
        maps: (B, H, W) float maps.
        abs: Score ``|a|`` (Quantus' default) instead of the signed values.

    Returns:
        (B,) float32 Gini index; NaN for an all-zero (sum 0) or NaN map.
    """
    flat = _flat(maps, abs)
    n = flat.shape[1]
    ordered = flat.sort(dim=1).values
    weights = 2.0 * torch.arange(1, n + 1, device=flat.device, dtype=torch.float64) - n - 1
    total = flat.sum(dim=1)
    scores = (ordered * weights).sum(dim=1) / (n * total)
    return _undefined(scores, flat, total == 0)


def complexity(maps: Tensor, abs: bool = True) -> Tensor:
    """(B,) the entropy (nats) of each map read as a distribution over pixels (Bhatt et al.
    2020): ``-sum p log p`` with ``p = a / sum |a|``; 0 for a single pixel, ``log(H W)`` for a
    uniform map.

    Args:
        maps: (B, H, W) float maps.
        abs: Score ``|a|`` (Quantus' default) instead of the signed values.

    Returns:
        (B,) float32 entropy; NaN for an all-zero or NaN map, or negative values with
        ``abs=False``.
    """
    flat = _flat(maps, abs)
    total = flat.abs().sum(dim=1, keepdim=True)
    p = flat / total.clamp_min(torch.finfo(torch.float64).tiny)
    scores = -torch.xlogy(p, p).sum(dim=1)  # xlogy: 0 log 0 = 0; log of a negative p is NaN
    return _undefined(scores, flat, total[:, 0] == 0)


def effective_complexity(maps: Tensor, eps: float = 1e-5, abs: bool = True,
                         normalise: bool = True) -> Tensor:
    """(B,) the number of pixels whose relevance exceeds ``eps`` (Nguyen & Martinez 2020).

    With ``normalise`` each map is first divided by its own maximum ``|a|``, so ``eps`` is a
    fraction of the peak and the count does not depend on the map's scale (Quantus divides by
    the maximum over the whole batch, so its count depends on the batch an image lands in).

    Args:
        maps: (B, H, W) float maps.
        eps: Threshold; a pixel counts where its (normalised) value is strictly above it.
        abs: Score ``|a|`` (Quantus' default) instead of the signed values.
        normalise: Divide each map by its maximum ``|a|`` first (Quantus' default).

    Returns:
        (B,) float32 counts; NaN for a NaN map, and for an all-zero map when ``normalise``.

    Raises:
        ConfigError: ``eps`` is not a finite number >= 0.
    """
    level = check_eps(eps)
    flat = _flat(maps, abs)
    peak = flat.abs().amax(dim=1, keepdim=True)
    undefined = torch.zeros_like(peak[:, 0], dtype=torch.bool)
    if normalise:
        undefined = peak[:, 0] == 0
        flat = flat / peak.clamp_min(torch.finfo(torch.float64).tiny)
    scores = (flat > level).sum(dim=1).to(torch.float64)
    return _undefined(scores, flat, undefined)
