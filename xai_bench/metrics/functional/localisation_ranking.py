"""Batched localisation metrics that rank the whole map against the mask (Quantus 0.6.0 names).

Same conventions as ``xai_bench.metrics.functional.localisation``: ``maps`` (B, H, W) float,
``masks`` of the same shape (nonzero = inside), one ``(B,)`` float32 score per image on the
maps' device, the whole batch at once (no Python loop over images), sums in float64.

- ``top_k_intersection`` (Theiner et al. 2021): the share of the map's ``k`` highest pixels
  that lie inside the mask; ``concept_influence`` multiplies it by ``H W / |mask|`` (1 = as
  good as chance, > 1 better). Ties at the cut-off get their expected share under random
  tie-breaking (as ``relevance_rank``); Quantus takes the order of ``np.argsort``, which is
  arbitrary among ties, so the two agree on maps without ties at the cut.
- ``auc`` (Fawcett 2006): the area under the ROC curve of the map's values as a score for
  "pixel in the mask", by the Mann-Whitney formula with average ranks for ties:
  ``(sum of the ranks inside - P (P + 1) / 2) / (P N)`` with ``P`` pixels inside and ``N``
  outside. Equal to scikit-learn's ``roc_curve`` + ``auc`` (Quantus), ties included (a tie
  between an inside and an outside pixel counts one half). 0.5 = chance, 1 = every inside pixel
  above every outside pixel.
- ``attribution_localisation`` (Kohlbrenner et al. 2020): ``mu = sum(a inside) / sum(a)``;
  ``weighted`` multiplies by ``H W / |mask|`` (the paper's size weighting: a uniform map scores
  1 whatever the box size). Quantus 0.6.0 multiplies by ``|mask| / x_batch[2:].size`` instead:
  the inverse weighting, over an image size that is really ``(B - 2) C H W`` (it slices the
  batch axis), so its weighted score depends on the batch size and is infinite for ``B <= 2``.

Edge cases (no function raises on a map or mask; only invalid settings raise ``ConfigError``),
in order of precedence:

1. A map holding a NaN scores NaN.
2. ``auc`` is NaN for an empty mask and for a full mask (the ROC curve needs pixels of both
   kinds); Quantus gives NaN too.
3. An EMPTY mask scores 0.0 on ``top_k_intersection`` and ``attribution_localisation`` (a
   miss, the study's rule for every localisation metric; the Metric's ``empty_mask: skip``
   makes it NaN). Quantus returns NaN.
4. ``attribution_localisation`` with ``sum(a) == 0`` (an all-zero map, i.e. every constant map
   after min-max normalisation) is NaN (0 / 0); Quantus adds 1e-9 to the sum and returns 0. A
   ratio outside [0, 1] (possible only with signed values, ``abs=False``) is NaN; Quantus makes
   only ratios above 1 NaN.
5. A constant map: ``top_k_intersection`` = the mask's area fraction (``concept_influence``:
   1), ``auc`` = 0.5. Quantus' top-k takes whichever pixels ``np.argsort`` lists first.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xai_bench.metrics.functional.localisation import _count, _prepare, has_nan
from xai_bench.utils.errors import ConfigError

__all__ = ["attribution_localisation", "auc", "check_k", "top_k_intersection"]


def _signed(maps: Tensor, abs: bool) -> Tensor:
    """(B, N) float64 values, absolute if asked."""
    flat = maps.flatten(1).to(torch.float64)
    return flat.abs() if abs else flat


def _nan_where(scores: Tensor, undefined: Tensor) -> Tensor:
    return scores.masked_fill(undefined, math.nan).to(torch.float32)


def check_k(k: object) -> int:
    """The top-k setting as an int.

    Args:
        k: The number of top pixels (a positive integer, not a bool).

    Returns:
        ``k`` as an int.

    Raises:
        ConfigError: ``k`` is not an integer >= 1.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"top_k_intersection k={k!r} is invalid; use a whole number of "
                          "pixels >= 1")
    return k


def top_k_intersection(maps: Tensor, masks: Tensor, k: int = 1000,
                       concept_influence: bool = False, abs: bool = False) -> Tensor:
    """(B,) share of the map's ``k`` highest pixels inside the mask (Theiner et al. 2021).

    Args:
        maps: (B, H, W) float maps.
        masks: (B, H, W) ROI masks, any dtype; nonzero = inside.
        k: Pixels kept, 1 <= k <= H W (Quantus' default 1000 is about 2% of 224 x 224).
        concept_influence: Multiply by ``H W / |mask|``, the score relative to chance.
        abs: Rank ``|a|`` instead of the signed values (Quantus' default: False).

    Returns:
        (B,) float32 scores in [0, 1] (``concept_influence``: [0, H W / |mask|]).

    Raises:
        ConfigError: ``k`` is not an integer in [1, H W].
    """
    k = check_k(k)
    masks = _prepare(maps, masks)
    n = maps.shape[1] * maps.shape[2]
    if k > n:
        raise ConfigError(f"top_k_intersection k={k} exceeds the {n} pixels of a "
                          f"{maps.shape[1]}x{maps.shape[2]} map; lower k.")
    flat = _signed(maps, abs)
    inside = masks.flatten(1)
    t = torch.kthvalue(flat, n - k + 1, dim=1).values[:, None]  # the k-th largest value
    above, tied = flat > t, flat == t
    n_above, above_in = _count(above).double(), _count(above & inside).double()
    n_tied, tied_in = _count(tied).double(), _count(tied & inside).double()
    scores = (above_in + (k - n_above) * tied_in / n_tied.clamp_min(1)) / k
    area = _count(inside).double()
    if concept_influence:
        scores = scores * n / area.clamp_min(1)
    scores = torch.where(area == 0, torch.zeros_like(scores), scores)
    return _nan_where(scores, has_nan(maps))


def auc(maps: Tensor, masks: Tensor, abs: bool = False) -> Tensor:
    """(B,) ROC AUC of the map's values against the mask (Fawcett 2006), ties counted one half.

    Rank-based (Mann-Whitney) and batched: one sort per map, average ranks of tied values by
    two binary searches, so the cost is O(H W log(H W)) per image with no loop over images.

    Args:
        maps: (B, H, W) float maps.
        masks: (B, H, W) ROI masks, any dtype; nonzero = inside.
        abs: Rank ``|a|`` instead of the signed values (Quantus' default: False).

    Returns:
        (B,) float32 AUC in [0, 1]; NaN for an empty or full mask or a NaN map.
    """
    masks = _prepare(maps, masks)
    flat = _signed(maps, abs).contiguous()
    inside = masks.flatten(1)
    ordered = flat.sort(dim=1).values
    below = torch.searchsorted(ordered, flat, right=False)  # values strictly smaller
    upto = torch.searchsorted(ordered, flat, right=True)  # values smaller or equal
    ranks = (below + upto + 1).to(torch.float64) / 2  # 1-based average rank
    pos = _count(inside).double()
    neg = inside.shape[1] - pos
    rank_sum = torch.where(inside, ranks, torch.zeros_like(ranks)).sum(dim=1)
    scores = (rank_sum - pos * (pos + 1) / 2) / (pos * neg).clamp_min(1)
    return _nan_where(scores, (pos == 0) | (neg == 0) | has_nan(maps))


def attribution_localisation(maps: Tensor, masks: Tensor, weighted: bool = False,
                             abs: bool = True, positive_only: bool = False) -> Tensor:
    """(B,) share of the map's relevance inside the mask (Kohlbrenner et al. 2020).

    Args:
        maps: (B, H, W) float maps.
        masks: (B, H, W) ROI masks, any dtype; nonzero = inside.
        weighted: Multiply by ``H W / |mask|`` (the paper's weighting: 1 = a uniform map).
        abs: Use ``|a|`` (Quantus' default).
        positive_only: Clip negative values to 0 first (the paper counts positive relevance;
            applied after ``abs``, where it changes nothing).

    Returns:
        (B,) float32 ratio in [0, 1] (``weighted``: [0, H W / |mask|]); 0 for an empty mask;
        NaN for a zero-sum map, a ratio outside [0, 1] or a NaN map.
    """
    masks = _prepare(maps, masks)
    flat = _signed(maps, abs)
    if positive_only:
        flat = flat.clamp_min(0)
    inside = masks.flatten(1)
    total = flat.sum(dim=1)
    ratio = torch.where(inside, flat, torch.zeros_like(flat)).sum(dim=1) / total
    area = _count(inside).double()
    # a ratio outside [0, 1] beyond rounding (signed maps only) is not a share of relevance
    undefined = (total == 0) | (ratio < -1e-9) | (ratio > 1 + 1e-9)
    ratio = ratio.clamp(0, 1)
    if weighted:
        ratio = ratio * inside.shape[1] / area.clamp_min(1)
    empty = area == 0
    scores = torch.where(empty, torch.zeros_like(ratio), ratio)
    return _nan_where(scores, (undefined & ~empty) | has_nan(maps))
