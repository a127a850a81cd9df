"""Batched localisation metrics: does a saliency map point at the annotated region?

Every function takes ``maps`` as a float tensor ``(B, H, W)`` and ``masks`` as a tensor of the
same shape (bool, uint8 or any numeric dtype; nonzero = inside the region) and returns one score
per image as a ``(B,)`` float32 tensor on the maps' device. Everything is computed for the whole
batch at once (no Python loop over images), so the same code runs on CPU and CUDA.

Definitions follow the reference study (docs/metrics.md) and, where one exists, Quantus 0.6.0:

- ``pointing_game``: hit if ANY pixel tied at the map's maximum lies inside the mask (Quantus
  ``PointingGame`` uses the same lenient tie rule). ``tolerance > 0`` grows the mask by an open
  disc: a maximal pixel at Euclidean distance strictly ``< tolerance`` from a mask pixel is a hit
  (TorchRay uses 15 px); ``tolerance=0`` means the pixel itself must be inside.
- ``iou_at_q``: keep the top q% (``k = int(H*W*q/100)``; threshold = the (k+1)-th largest value;
  every pixel ``>=`` threshold kept, ties included), then IoU of the enclosing box
  (``region="box"``, the study's metric) or of the kept pixels (``region="pixel"``) with the mask.
  Because of the "(k+1)-th largest" rule, ``k + 1`` pixels are kept when there are no ties, and a
  map equal to a mask keeps exactly the mask only while ``k < |mask|``. ``k`` is capped at
  ``H*W - 1``, so ``q=100`` keeps every pixel.
- ``relevance_mass``: ``sum(map inside mask) / sum(map)`` (Quantus ``RelevanceMassAccuracy``).
- ``relevance_rank``: share of the top-``|mask|`` pixels of the map inside the mask (Quantus
  ``RelevanceRankAccuracy``), with ties at the cut-off resolved by their expected value.
- ``wsl_iou`` (ATCON, docs/atcon.md): the map binarised at ``threshold`` (``>=``) against the
  union of the boxes of the class the map explains, from per-class masks ``(B, C, H, W)``. It
  has its own edge cases (see its docstring): no box of that class = 0.0, no boxes at all = NaN.

Edge cases (no function raises on any of them; only invalid arguments raise ``ConfigError``),
in order of precedence:

1. A map containing any NaN scores NaN on every metric (the method failed; make it visible),
   even against an empty mask. ``has_nan`` flags such maps; ``is_constant`` is False for them.
2. ``pointing_game(..., constant="nan")`` scores a constant map NaN (excluded), whatever the mask.
3. An EMPTY mask scores 0.0 on every metric (the study counts it as a miss; the caller may turn
   it into NaN). This includes an all-zero map against an empty mask. Quantus 0.6.0 differs: its
   pointing game counts an empty mask as a HIT (it writes NaN into a bool array, which stores
   True) and its mass / rank accuracies return NaN.
4. Otherwise the metric's own value, with these conventions:

   - a constant map under ``pointing_game``: every pixel is a maximum, so ``constant="ties"`` (the
     study's literal rule, default) is a hit iff the mask is non-empty; ``"miss"`` scores 0.0;
   - a constant map under ``iou_at_q`` keeps every pixel, so the box is the whole image and the
     IoU equals the mask's area fraction (the same holds for any map whose top q% is scattered);
   - ``relevance_mass`` with ``sum(map) == 0`` (e.g. an all-zero map) is NaN (0/0). Negative values
     are NOT clipped, exactly as Quantus with ``abs=False``: for signed maps the ratio can leave
     [0, 1]. The benchmark's maps are min-max normalised to [0, 1], where it is a proper fraction.
     Quantus' default ``normalise=True`` (divide by max |a|) does not change the ratio.
   - ``relevance_rank`` with ties at the k-th largest value ``t``: the expected score under random
     tie-breaking, ``(|{v > t} & M| + (k - |{v > t}|) * |{v = t} & M| / |{v = t}|) / k``. Quantus
     breaks ties by the arbitrary order of ``np.argsort``; both agree when the map has no ties.
     A constant (e.g. all-zero) map therefore scores the mask's area fraction.
   - ``+-inf`` values get no special treatment (an infinite maximum is a maximum like any other;
     ``relevance_mass`` of a map holding ``inf`` is NaN or 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from xai_bench.utils.errors import ConfigError

__all__ = [
    "has_nan",
    "is_constant",
    "iou_at_q",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "wsl_iou",
]

_CONSTANT_CHOICES = ("ties", "miss", "nan")
_REGION_CHOICES = ("box", "pixel")


def _check_maps(maps: Tensor) -> None:
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ConfigError(f"maps must be a (B, H, W) tensor, got {shape}")
    if not maps.is_floating_point():
        raise ConfigError(f"maps must be a floating-point tensor, got dtype {maps.dtype}")


def _as_float(value: object) -> float:
    """Accept any real number (int, float, NumPy scalar, 0-d tensor); NaN if it is not one."""
    if isinstance(value, (str, bytes)):  # "5" is a typo in a config, not a number
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _prepare(maps: Tensor, masks: Tensor) -> Tensor:
    """Validate shapes and return the masks as bool on the maps' device (nonzero = inside)."""
    _check_maps(maps)
    if not isinstance(masks, Tensor) or tuple(masks.shape) != tuple(maps.shape):
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ConfigError(
            f"masks must be a tensor with the maps' shape {tuple(maps.shape)}, got {shape}"
        )
    masks = masks.to(maps.device)
    return masks if masks.dtype == torch.bool else masks != 0


def _any(flags: Tensor, dim: int = 1) -> Tensor:
    """Bool any() along dim. Reducing the uint8 view is several times faster than bool any()
    on CPU."""
    return flags.view(torch.uint8).amax(dim=dim).bool()


def _count(flags: Tensor) -> Tensor:
    """(B,) int32 number of True entries per image of a (B, ...) bool tensor (fast path as _any)."""
    return flags.flatten(1).view(torch.uint8).sum(dim=1, dtype=torch.int32)


def _finish(scores: Tensor, maps: Tensor, masks: Tensor) -> Tensor:
    """Apply the shared edge cases: empty mask -> 0.0, then NaN map -> NaN (NaN wins)."""
    scores = scores.to(torch.float32)
    empty = ~_any(masks.flatten(1))
    scores = torch.where(empty, torch.zeros_like(scores), scores)
    return torch.where(has_nan(maps), torch.full_like(scores, math.nan), scores)


def has_nan(maps: Tensor) -> Tensor:
    """(B,) bool: the map holds a NaN, so every metric reports NaN for it instead of a score.

    Args:
        maps: (B, H, W) float maps.

    Returns:
        (B,) bool on the maps' device.
    """
    _check_maps(maps)
    return _any(torch.isnan(maps).flatten(1))


def is_constant(maps: Tensor) -> Tensor:
    """(B,) bool: max == min, i.e. the map ranks no pixel above another (uninformative).

    A map containing NaN is not constant (NaN compares unequal); ``has_nan`` flags it instead.

    Args:
        maps: (B, H, W) float maps.

    Returns:
        (B,) bool on the maps' device.
    """
    _check_maps(maps)
    flat = maps.flatten(1)
    return flat.amax(dim=1) == flat.amin(dim=1)


def _disc_dilate(masks: Tensor, tolerance: float) -> Tensor:
    """Grow the masks by the open disc {d : |d| < tolerance}, batched.

    The disc is a stack of horizontal segments, one per row offset dy, of half-width
    w(dy) = the largest integer with w^2 < tolerance^2 - dy^2. A segment test is a difference of
    row-wise prefix counts, so the cost is O(radius) tensor passes instead of a conv2d's
    O(radius^2) multiply-adds per pixel, and the arithmetic is exact integer counting.
    """
    radius = math.ceil(tolerance) - 1  # the largest integer offset strictly below the tolerance
    if radius <= 0:
        return masks
    _, h, w = masks.shape
    padded = F.pad(masks.to(torch.int32), (radius, radius, radius, radius))
    # counts[..., x] = sum of [0, x)
    counts = F.pad(padded.cumsum(dim=2, dtype=torch.int32), (1, 0))
    grown = torch.zeros_like(masks)
    for dy in range(radius + 1):  # rows +dy and -dy share one half-width
        room = tolerance * tolerance - dy * dy
        half = math.isqrt(math.ceil(room))  # then step down until half^2 < room strictly
        while half * half >= room:
            half -= 1
        lo, hi = radius - half, radius + half + 1
        segment = (counts[:, :, hi: hi + w] - counts[:, :, lo: lo + w]) > 0  # (B, H + 2r, W)
        grown |= segment[:, radius + dy: radius + dy + h]
        grown |= segment[:, radius - dy: radius - dy + h]
    return grown


def pointing_game(
    maps: Tensor, masks: Tensor, tolerance: float = 0.0, constant: str = "ties"
) -> Tensor:
    """(B,) 1.0 where a maximal pixel of the map lies in the mask, else 0.0.

    All pixels tied at the maximum count (the reference study's rule): a method gains nothing
    from its arg-max convention. ``tolerance`` (pixels, strict ``<`` Euclidean disc) forgives
    near-misses as TorchRay does; 0 means the pixel itself must be inside.

    Args:
        maps: (B, H, W) float maps.
        masks: (B, H, W) ROI masks, any dtype; nonzero = inside.
        tolerance: Pixels; a maximum strictly closer than this to the mask is a hit.
        constant: What a constant map scores: "ties" (every pixel is a maximum: a hit iff
            the mask is non-empty), "miss" (0.0) or "nan" (excluded).

    Returns:
        (B,) float32 scores in {0, 1}; NaN for a NaN map (edge cases: module docstring).

    Raises:
        ConfigError: An invalid ``tolerance`` or ``constant``.
    """
    if constant not in _CONSTANT_CHOICES:
        raise ConfigError(
            f"pointing_game constant={constant!r} is invalid; "
            f"choose one of {list(_CONSTANT_CHOICES)}"
        )
    tol = _as_float(tolerance)
    if not math.isfinite(tol) or tol < 0:
        raise ConfigError(
            f"pointing_game tolerance={tolerance!r} is invalid; use a finite number of pixels >= 0"
        )
    masks = _prepare(maps, masks)
    flat = maps.flatten(1)
    is_max = flat == flat.amax(dim=1, keepdim=True)
    target = _disc_dilate(masks, tol) if tol > 0 else masks
    scores = _finish(_any(is_max & target.flatten(1)), maps, masks)
    if constant != "ties":  # a NaN map is never constant, so NaN maps stay NaN
        fill = 0.0 if constant == "miss" else math.nan  # "nan" outranks the empty-mask rule
        scores = torch.where(is_constant(maps), torch.full_like(scores, fill), scores)
    return scores


def _kth_largest_threshold(flat: Tensor, q: float) -> Tensor:
    """(B,) the (k+1)-th largest value, k = int(N*q/100) clamped to N-1 (q=100 keeps all)."""
    n = flat.shape[1]
    k = min(int(n * q / 100), n - 1)
    # the (k+1)-th largest is the (n-k)-th smallest
    return torch.kthvalue(flat, n - k, dim=1).values


def iou_at_q(maps: Tensor, masks: Tensor, q: float, region: str = "box") -> Tensor:
    """(B,) IoU between the top q% of the map and the mask (the study's "IoU at q%").

    ``region="box"`` (the study) compares ONE enclosing rectangle of the kept pixels, which is
    what a box annotation can judge, but it punishes scattered maps hard: a random map's top 5%
    already spans the whole image. ``region="pixel"`` compares the kept pixels themselves.
    Ties at the threshold are all kept, so the kept set can exceed q%.

    Args:
        maps: (B, H, W) float maps.
        masks: (B, H, W) ROI masks, any dtype; nonzero = inside.
        q: The kept percentage, 0 < q <= 100.
        region: "box" (one enclosing rectangle, the study) or "pixel".

    Returns:
        (B,) float32 IoU in [0, 1]; NaN for a NaN map.

    Raises:
        ConfigError: An invalid ``q`` or ``region``.
    """
    if region not in _REGION_CHOICES:
        raise ConfigError(
            f"iou_at_q region={region!r} is invalid; choose one of {list(_REGION_CHOICES)}"
        )
    percent = _as_float(q)
    if not 0 < percent <= 100:  # also rejects NaN
        raise ConfigError(f"iou_at_q q={q!r} is invalid; it is a percentage with 0 < q <= 100")
    masks = _prepare(maps, masks)
    b, h, w = maps.shape
    flat = maps.flatten(1)
    kept = (flat >= _kth_largest_threshold(flat, percent)[:, None]).view(b, h, w)
    if region == "box":
        rows = torch.arange(h, device=maps.device)
        cols = torch.arange(w, device=maps.device)
        row_any, col_any = _any(kept, dim=2), _any(kept, dim=1)
        top = torch.where(row_any, rows, h).amin(dim=1)
        bottom = torch.where(row_any, rows, -1).amax(dim=1)
        left = torch.where(col_any, cols, w).amin(dim=1)
        right = torch.where(col_any, cols, -1).amax(dim=1)
        in_rows = (rows >= top[:, None]) & (rows <= bottom[:, None])
        in_cols = (cols >= left[:, None]) & (cols <= right[:, None])
        kept = in_rows[:, :, None] & in_cols[:, None, :]
    inter, union = _count(kept & masks), _count(kept | masks)
    # union == 0 only happens for a NaN map (nothing kept) with an empty mask; _finish sets NaN.
    scores = inter.to(torch.float64) / union.clamp_min(1).to(torch.float64)
    return _finish(scores, maps, masks)


def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """(B,) share of the map's total relevance that falls inside the mask.

    Unlike the pointing game it uses the whole map, not only its peak. Sums are accumulated in
    float64; a zero total (e.g. an all-zero map) gives NaN. Negative values are not clipped.

    Args:
        maps: (B, H, W) float maps.
        masks: (B, H, W) ROI masks, any dtype; nonzero = inside.

    Returns:
        (B,) float32 ``sum(map inside mask) / sum(map)``.
    """
    masks = _prepare(maps, masks)
    flat = maps.flatten(1).to(torch.float64)
    inside = torch.where(masks.flatten(1), flat, torch.zeros_like(flat)).sum(dim=1)
    total = flat.sum(dim=1)
    scores = torch.where(total == 0, torch.full_like(total, math.nan), inside / total)
    return _finish(scores, maps, masks)


def relevance_rank(maps: Tensor, masks: Tensor) -> Tensor:
    """(B,) share of the map's top-|mask| pixels that lie inside the mask.

    Scale-free and threshold-free (k is set by the annotation). Ties at the cut-off value get
    their expected share under random tie-breaking, so the score is deterministic and does not
    depend on a sort order.

    Args:
        maps: (B, H, W) float maps.
        masks: (B, H, W) ROI masks, any dtype; nonzero = inside.

    Returns:
        (B,) float32 scores in [0, 1].
    """
    masks = _prepare(maps, masks)
    flat = maps.flatten(1)
    inside = masks.flatten(1)
    k = _count(inside).long()  # (B,) differs per image
    ordered = flat.sort(dim=1, descending=True).values
    t = ordered.gather(1, (k - 1).clamp_min(0)[:, None])  # (B, 1) the k-th largest value
    above, tied = flat > t, flat == t
    n_above, above_in = _count(above).double(), _count(above & inside).double()
    n_tied, tied_in = _count(tied).double(), _count(tied & inside).double()
    kf = k.to(torch.float64)
    hits = above_in + (kf - n_above) * tied_in / n_tied.clamp_min(1)
    scores = hits / kf.clamp_min(1)
    return _finish(scores, maps, masks)


def _prepare_class_masks(maps: Tensor, class_masks: Tensor,
                         targets: Tensor) -> tuple[Tensor, Tensor]:
    """Validate; -> (bool (B, C, H, W) class masks, long (B,) targets) on the maps' device."""
    _check_maps(maps)
    b, h, w = maps.shape
    if not isinstance(class_masks, Tensor) or class_masks.ndim != 4 or class_masks.shape[0] != b \
            or tuple(class_masks.shape[2:]) != (h, w):
        shape = (tuple(class_masks.shape) if isinstance(class_masks, Tensor)
                 else type(class_masks).__name__)
        raise ConfigError(f"class_masks must be a (B, C, H, W) tensor matching the maps "
                          f"{(b, h, w)}, got {shape}")
    targets = torch.as_tensor(targets, device=maps.device).long().view(-1)
    num_classes = class_masks.shape[1]
    if targets.numel() != b or bool(((targets < 0) | (targets >= num_classes)).any()):
        raise ConfigError(f"targets must be {b} class indices in 0..{num_classes - 1}, "
                          f"got {targets.tolist()}")
    return class_masks.to(maps.device) != 0, targets


def wsl_iou(maps: Tensor, class_masks: Tensor, targets: Tensor, threshold: float = 0.5) -> Tensor:
    """(B,) IoU of {map >= threshold} with the union of the boxes of class ``targets[i]``.

    ATCON's weakly supervised localisation: the maps are min-max normalised, so one absolute
    threshold means the same on every map. Edge cases, in order: a NaN map -> NaN; an image
    without any class box (no annotation) -> NaN; a target class without a box in the image (the
    map explains an absent class) -> 0.0, a miss; otherwise the IoU (an all-below-threshold map
    scores 0, a constant map at or above it the box's area fraction).

    Args:
        maps: (B, H, W) float maps, min-max normalised.
        class_masks: (B, C, H, W) per-class box masks (nonzero = inside a box of that class).
        targets: (B,) the class each map explains.
        threshold: A map pixel counts as kept where it is ``>=`` this.

    Returns:
        (B,) float32 IoU in [0, 1], or NaN (edge cases above).

    Raises:
        ConfigError: A non-finite threshold, mismatched shapes or out-of-range targets.
    """
    level = _as_float(threshold)
    if not math.isfinite(level):
        raise ConfigError(f"wsl_iou threshold={threshold!r} is invalid; "
                          "use a finite number (maps lie in [0, 1])")
    masks, targets = _prepare_class_masks(maps, class_masks, targets)
    b = maps.shape[0]
    # (B, H, W) the explained class's boxes
    chosen = masks[torch.arange(b, device=maps.device), targets]
    kept = maps >= level
    inter, union = _count(kept & chosen), _count(kept | chosen)
    # no box: inter = 0 -> 0.0
    scores = inter.to(torch.float64) / union.clamp_min(1).to(torch.float64)
    undefined = ~_any(masks.flatten(1)) | has_nan(maps)
    return torch.where(undefined, torch.full_like(scores, math.nan), scores).to(torch.float32)
