"""Batched curve-type faithfulness metrics: Pixel-Flipping, Monotonicity, Selectivity, IROF and
ROAD, as quantus 0.6 defines them (and where it is wrong, as their papers do).

Definitions (images x (B, C, H, W) as the model takes them, maps A (B, H, W), target y (B,): the
class each map explains; p(x) = softmax(model(x))[y]):

- Features are PIXELS (all channels together), as the maps are per pixel. quantus broadcasts a
  (B, 1, H, W) map over the channels and perturbs single channel elements (its ties between the
  channels of a pixel fall where np.argsort puts them); on one-channel inputs the two coincide.
  Orders are stable: ties go to the lower pixel (tile, segment) index.
- Pixel-Flipping (Bach et al. 2015): pixels in DESCENDING A are replaced by the fill
  cumulatively, f = `features_in_step` per step: at step k = 1..n, n = ceil(HW / f), the top
  min(k f, HW) pixels hold the fill; curve p_1..p_n (no k = 0 point, as quantus); score = the
  trapezoid with unit spacing sum_{k<n} (p_k + p_{k+1}) / 2 (quantus' return_auc_per_sample).
  Lower is better.
- Monotonicity (Arya et al. 2019): from the fill image, pixels are INSERTED (set to x) in
  ASCENDING A, f per step: curve p_1..p_n; score 1 if p_{k+1} >= p_k for every k, else 0.
  Higher is better.
- Selectivity (Montavon et al. 2018): the r x r tiles of `faithfulness.region_order` (MoRF,
  ranked by mean A; partial edge tiles) are replaced cumulatively: curve p_1..p_L; score = the
  unit-spacing trapezoid as for Pixel-Flipping. Lower is better.
- IROF (Rieger & Hansen 2020): superpixels (`superpixels`: skimage SLIC as quantus calls it)
  ranked by their mean A, descending, replaced cumulatively: r_k = p_k / p_0 for k = 1..S;
  IROF = S - trapezoid(r_1..r_S) (quantus: the area over the normalised curve, in segments).
  NaN when the segmentation finds fewer than 2 segments (quantus refuses those). Higher is better.
- ROAD (Rong et al. 2022): for each percentage q the top (MoRF) or bottom (LeRF)
  int(H W q / 100) pixels are imputed (`road_imputation`: noisy linear imputation, noise std
  `noise`, seeded per image id and step); the score at q is 1 if argmax model(x_q) = y
  ("accuracy", quantus and the paper) or p(x_q) ("probability"). MoRF: lower is better; LeRF:
  higher.
- Fills (what removed pixels hold): `faithfulness.FILLS`; `min` (the per-image minimum over all
  channels and pixels) is quantus' "black"; `mean` is the per-image PER-CHANNEL mean of x (quantus'
  "mean" pools the channels, and in IROF also the whole batch and the pixels already replaced).

Every perturbed image of a step is built on the model's device with one comparison per pixel
(no per-pixel Python); the images of all steps are flattened step-major and cut into forwards of
`batch_size`. Randomness (noise fills, ROAD's noise) comes from `seeded_noise`, keyed by image id.
Peers: docs/metrics.md and tests/test_metrics_faithfulness_curves.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from xai_bench.metrics.functional.faithfulness import (
    FILLS,
    _check_choice,
    _check_positive,
    _check_shapes,
    _fill_fn,
    _ids_cpu,
    _inverse_permutation,
    region_order,
)
from xai_bench.metrics.functional.perturbed import step_scores, target_prob
from xai_bench.metrics.functional.road_imputation import noisy_linear_imputation
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal

__all__ = [
    "OUTPUTS",
    "SEGMENTATIONS",
    "curve_auc",
    "irof",
    "irof_curve",
    "monotonicity",
    "monotonicity_curve",
    "pixel_flipping_curve",
    "road_curve",
    "selectivity_curve",
    "superpixels",
]

SEGMENTATIONS = ("slic", "felzenszwalb")
OUTPUTS = ("accuracy", "probability")
# ROAD's LeRF noise streams start here, far from MoRF's (one stream per percentage)
_LERF_STREAM = 1 << 20

def _hit(logits: Tensor, target: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == target).float()


def _pixel_rank(maps: Tensor, descending: bool) -> Tensor:
    """(B, 1, H, W) position of every pixel in the stable order of A."""
    batch, height, width = maps.shape
    order = maps.reshape(batch, -1).argsort(dim=1, descending=descending, stable=True)
    return _inverse_permutation(order).view(batch, 1, height, width)


def _prepare(images: Tensor, maps: Tensor, target: Tensor, fill: str, ids: Tensor | None,
             batch_size: int | None) -> tuple[Tensor, Tensor]:
    _check_shapes(images, maps)
    _check_choice("fill", fill, FILLS)
    _check_positive("batch_size", batch_size, allow_none=True)
    return _ids_cpu(ids, images.shape[0]), target.to(images.device)


def _cumulative_curve(model: nn.Module, images: Tensor, maps: Tensor, target: Tensor,
                      features_in_step: int, fill: str, seed: int, ids: Tensor | None,
                      batch_size: int | None, most_relevant_first: bool) -> Tensor:
    """p_k after the first k f ranked pixels changed: removed into the fill (most relevant
    first, Pixel-Flipping) or shown on the fill (least relevant first, Monotonicity)."""
    _check_positive("features_in_step", features_in_step)
    ids_c, target = _prepare(images, maps, target, fill, ids, batch_size)
    batch, _, height, width = images.shape
    step_px, n_pix = int(features_in_step), height * width
    rank = _pixel_rank(maps, descending=most_relevant_first)
    fill_of = _fill_fn(fill, images, ids_c, seed)

    def build(step: int, lo: int, hi: int) -> Tensor:
        changed = rank[lo:hi] < min((step + 1) * step_px, n_pix)
        fill_value, image = fill_of(step + 1, lo, hi), images[lo:hi]
        if most_relevant_first:
            return torch.where(changed, fill_value, image)
        return torch.where(changed, image, fill_value)

    n_steps = math.ceil(n_pix / step_px)
    return step_scores(model, [batch] * n_steps, build, target, batch_size)


def pixel_flipping_curve(model: nn.Module, images: Tensor, maps: Tensor, target: Tensor,
                         features_in_step: int = 224, fill: str = "min", seed: int = 0,
                         ids: Tensor | None = None, batch_size: int | None = None) -> Tensor:
    """Pixel-Flipping's curve (above): the most relevant pixels removed first.

    Args:
        model, images, maps, target: The classifier, x, A and y (above).
        features_in_step: f, pixels removed per step.
        fill, seed, ids: What removed pixels hold (`faithfulness.FILLS`; noise seeded per id,
            stream = step k).
        batch_size: Perturbed images per forward (None: B).

    Returns:
        (B, n) p_k for k = 1..n.
    """
    return _cumulative_curve(model, images, maps, target, features_in_step, fill, seed, ids,
                             batch_size, most_relevant_first=True)


def monotonicity_curve(model: nn.Module, images: Tensor, maps: Tensor, target: Tensor,
                       features_in_step: int = 224, fill: str = "min", seed: int = 0,
                       ids: Tensor | None = None, batch_size: int | None = None) -> Tensor:
    """Monotonicity's curve (above): the least relevant pixels inserted first into the fill.

    Args:
        As for `pixel_flipping_curve`.

    Returns:
        (B, n) p_k for k = 1..n (k f pixels of x shown).
    """
    return _cumulative_curve(model, images, maps, target, features_in_step, fill, seed, ids,
                             batch_size, most_relevant_first=False)


def curve_auc(curve: Tensor) -> Tensor:
    """(B,) trapezoid of a (B, n) curve with unit spacing (quantus' calculate_auc)."""
    return torch.trapezoid(curve, dim=1)


def monotonicity(curve: Tensor) -> Tensor:
    """(B,) 1.0 where the (B, n) curve never decreases, else 0.0."""
    return (curve.diff(dim=1) >= 0).all(dim=1).float()


def selectivity_curve(model: nn.Module, images: Tensor, maps: Tensor, target: Tensor,
                      patch_size: int = 8, fill: str = "min", seed: int = 0,
                      ids: Tensor | None = None, batch_size: int | None = None) -> Tensor:
    """Selectivity's curve (above): r x r tiles removed in descending mean attribution.

    Args:
        patch_size: r, the tile side in pixels; the rest as for `pixel_flipping_curve`.

    Returns:
        (B, L) p_k for k = 1..L, L the number of tiles.
    """
    ids_c, target = _prepare(images, maps, target, fill, ids, batch_size)
    batch = images.shape[0]
    labels, removal = region_order(maps, patch_size, order="morf")
    tile_rank = _inverse_permutation(removal)
    pixel_rank = tile_rank.gather(1, labels.view(1, -1).expand(batch, -1)).view(
        batch, 1, *labels.shape)
    fill_of = _fill_fn(fill, images, ids_c, seed)

    def build(step: int, lo: int, hi: int) -> Tensor:
        return torch.where(pixel_rank[lo:hi] <= step, fill_of(step + 1, lo, hi), images[lo:hi])

    return step_scores(model, [batch] * removal.shape[1], build, target, batch_size)


def superpixels(images: Tensor, segmentation: str = "slic", n_segments: int = 100,
                compactness: float = 10.0) -> Tensor:
    """Superpixels of every image, as quantus' IROF segments them: skimage `slic(img,
    n_segments, compactness, start_label=0)` (the rest at skimage's defaults: sigma 0, 10
    iterations, connectivity enforced; 3-channel images in Lab after skimage's min-max rescale)
    or `felzenszwalb(img)`, on the image channel-last in float64. A per-image CPU loop (skimage
    has no batched SLIC): a few ms per image at 224 px, beside its ~100 forwards.

    Args:
        images: (B, C, H, W).
        segmentation: "slic" or "felzenszwalb".
        n_segments, compactness: SLIC's settings (quantus: skimage's defaults 100, 10).

    Returns:
        (B, H, W) long on the CPU: segment labels renumbered 0..S-1 per image.
    """
    from skimage.segmentation import felzenszwalb, slic

    _check_choice("segmentation", segmentation, SEGMENTATIONS)
    _check_positive("n_segments", n_segments)
    if not float(compactness) > 0:
        raise ConfigError(f"compactness must be > 0; got {compactness!r}.")
    out = []
    for image in images.detach().cpu().double().numpy():
        channels_last = np.moveaxis(image, 0, -1)
        if segmentation == "slic":
            seg = slic(channels_last, n_segments=int(n_segments), compactness=float(compactness),
                       start_label=0)
        else:
            seg = felzenszwalb(channels_last)
        _, inverse = np.unique(seg, return_inverse=True)
        out.append(inverse.reshape(seg.shape))
    return torch.from_numpy(np.stack(out)).long()


def irof_curve(model: nn.Module, images: Tensor, maps: Tensor, target: Tensor, segments: Tensor,
               fill: str = "mean", seed: int = 0, ids: Tensor | None = None,
               batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """IROF's normalised curve (above). Each image runs its own S_i + 1 forwards (the clean
    image, then one per segment): images are sorted by S_i so that those still perturbed at
    step k are a prefix of the batch.

    Args:
        segments: (B, H, W) labels 0..S_i-1 (`superpixels`); the rest as for
            `pixel_flipping_curve` (noise stream = step k).

    Returns:
        (ratios (B, S_max): r_k = p_k / p_0 for k = 1..S_i, NaN beyond; S (B,) long).
    """
    ids_c, target = _prepare(images, maps, target, fill, ids, batch_size)
    batch, _, height, width = images.shape
    dev = images.device
    seg = segments.to(dev).long().view(batch, -1)
    if seg.shape[1] != height * width:
        raise ValueError(f"segments must be (B, H, W) = {(batch, height, width)}; "
                         f"got {tuple(segments.shape)}.")
    counts = seg.amax(dim=1) + 1
    s_max = int(counts.max())
    sums = torch.zeros(batch, s_max, dtype=torch.float64, device=dev).scatter_add_(
        1, seg, maps.reshape(batch, -1).double())
    sizes = torch.zeros_like(sums).scatter_add_(1, seg, torch.ones_like(seg, dtype=sums.dtype))
    means = torch.where(sizes > 0, sums / sizes.clamp(min=1), -math.inf)
    seg_rank = _inverse_permutation(means.argsort(dim=1, descending=True, stable=True))
    pixel_rank = seg_rank.gather(1, seg).view(batch, 1, height, width)
    perm = counts.argsort(descending=True, stable=True)
    x, rank_s, tgt = images[perm], pixel_rank[perm], target[perm]
    fill_of = _fill_fn(fill, x, ids_c[perm.cpu()], seed)
    counts_cpu = counts.cpu()
    steps = [batch] + [int((counts_cpu >= k).sum()) for k in range(1, s_max + 1)]

    def build(step: int, lo: int, hi: int) -> Tensor:
        return torch.where(rank_s[lo:hi] < step, fill_of(step, lo, hi), x[lo:hi])

    probs = torch.empty(batch, s_max + 1, device=dev)
    probs[perm] = step_scores(model, steps, build, tgt, batch_size, clean=x)
    probs = probs.double()
    return probs[:, 1:] / probs[:, :1], counts


def irof(ratios: Tensor, counts: Tensor) -> Tensor:
    """(B,) IROF = S - trapezoid(r_1..r_S) with unit spacing; NaN where S < 2."""
    valid = torch.arange(ratios.shape[1], device=ratios.device)[None] < counts[:, None]
    pairs = (ratios[:, :-1] + ratios[:, 1:]) / 2
    area = torch.where(valid[:, 1:], pairs, torch.zeros_like(pairs)).sum(dim=1)
    score = counts.to(area.dtype) - area
    return torch.where(counts >= 2, score, torch.full_like(score, math.nan))


def road_curve(model: nn.Module, images: Tensor, maps: Tensor, target: Tensor,
               percentages: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
               order: str = "morf", noise: float = 0.01, output: str = "accuracy",
               seed: int = 0, ids: Tensor | None = None,
               batch_size: int | None = None, solver: str = "cg", tol: float = 1e-7,
               max_iter: int = 100, precision: str = "float32") -> Tensor:
    """ROAD's curve (above). Each step's imputation is solved for the whole batch at once
    (`road_imputation`; `cg` on the images' device), then its images are forwarded.

    Args:
        percentages: q in [0, 100), the percentages of pixels imputed.
        order: "morf" (most relevant imputed first) or "lerf".
        noise: Standard deviation of the Gaussian noise added to imputed pixels (seeded per
            image id; stream = percentage index, LeRF offset by 2^20).
        output: "accuracy" (argmax = y) or "probability" (p).
        solver, tol, max_iter, precision: The imputation's (`noisy_linear_imputation`).
        model, images, maps, target, seed, ids, batch_size: As for `pixel_flipping_curve`.

    Returns:
        (B, len(percentages)) the score at each q.
    """
    _check_choice("order", order, ("morf", "lerf"))
    _check_choice("output", output, OUTPUTS)
    ids_c, target = _prepare(images, maps, target, "zero", ids, batch_size)
    values = [float(q) for q in percentages]
    if not values or min(values) < 0 or max(values) >= 100:
        raise ConfigError(f"percentages must be one or more values in [0, 100); "
                          f"got {list(percentages)!r}.")
    if noise is None or float(noise) < 0:
        raise ConfigError(f"noise must be a float >= 0; got {noise!r}.")
    batch, channels, height, width = images.shape
    rank = _pixel_rank(maps, descending=(order == "morf"))[:, 0]
    counts = [int(height * width * q / 100) for q in values]  # quantus' rounding (floor)
    base = 0 if order == "morf" else _LERF_STREAM
    cache: dict[int, Tensor] = {}

    def build(step: int, lo: int, hi: int) -> Tensor:
        if step not in cache:  # steps arrive in order: keep only the current one
            cache.clear()
            draws = None
            if float(noise) > 0:
                draws = float(noise) * seeded_normal(ids_c, (channels, height, width), seed=seed,
                                                     stream=base + step, device=images.device)
            cache[step] = noisy_linear_imputation(images, rank < counts[step], draws,
                                                  solver=solver, tol=tol, max_iter=max_iter,
                                                  precision=precision)
        return cache[step][lo:hi]

    score = _hit if output == "accuracy" else target_prob
    return step_scores(model, [batch] * len(values), build, target, batch_size, score=score)
