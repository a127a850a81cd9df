"""Batched faithfulness metrics: region perturbation / AOPC, deletion-insertion, Max-Sensitivity
and HAAS, as the Grad-CAM vs HiResCAM faithfulness study defined them.

Definitions (images x (B, C, H, W) as the model takes them, maps A (B, H, W), target y (B,)):

- Regions: non-overlapping r x r tiles in row-major order; when H or W is not divisible by r the
  last row / column of tiles is partial (224 px with r = 21 -> 11 x 11 tiles, the last 14 px).
  A tile's score is the MEAN attribution over its real pixels.
- Region perturbation (Samek et al. 2016): order the tiles (MoRF: score descending, LeRF:
  ascending, ties by tile id; random: a seeded permutation per image id), remove the first k
  cumulatively for k = 0..L and record p_k = softmax(model(x_k))[y]. Removed pixels (all
  channels) take the fill value:
    noise       uniform in [min(x), max(x)] (per image), a fresh noise image at every step k
                (stream k): every removed pixel holds noise_k at step k (the published runs);
    noise_once  one noise image per input (stream 0) reused at every step (a later code version);
    min         the per-image minimum over all channels and pixels (quantus' "black");
    zero        0 in the model's input space;
    mean        the per-image per-channel mean.
- AOPC = 1/(L+1) * sum_{k=0..L} (p_0 - p_k); higher is better for MoRF.
- Deletion / insertion (RISE, Petsiuk et al. 2018): pixels ranked by the map (descending, ties by
  pixel index); at step k in 0..S the top n_k = round_half_up(k * H * W / S) pixels are deleted
  (set to the fill) / inserted (copied from x into a start image: "blur" or a fill). AUC =
  trapezoid of p_k over the fraction axis n_k / (H * W) in [0, 1].
- Max-Sensitivity (Yeh et al. 2019): max over draws j of || explain(x + d_j) - A ||_F with
  d_j ~ U[-radius, radius] on every input element (no clipping); the faithfulness study does not
  divide by || A ||_F, captum's sensitivity_max and quantus do (normalise=True).
- HAAS (highlighted-image accuracy): HA = clip(x_pm1 * (1 + A), -1, 1) with x_pm1 the image in the
  [-1, 1] frame; HAAS = accuracy(HA) / accuracy(x).

Peers (quantus, captum): docs/metrics.md, tests/test_metrics_faithfulness.py. All randomness
comes from `seeded_uniform` keyed by (seed, image id, stream), so an image gets the same noise
whatever batch, position or DDP rank it is evaluated in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai_bench.metrics.functional.perturbed import Builder, step_scores
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_uniform

__all__ = [
    "BLUR_KERNEL_SIZE",
    "BLUR_SIGMA",
    "FILLS",
    "INSERTION_STARTS",
    "ORDERS",
    "aopc",
    "deletion_insertion",
    "haas",
    "haas_score",
    "max_sensitivity",
    "region_order",
    "region_perturbation",
]

ORDERS = ("morf", "lerf", "random")
FILLS = ("noise", "noise_once", "min", "zero", "mean")
INSERTION_STARTS = ("blur", *FILLS)
# RISE's insertion start: an 11 x 11 gaussian with sigma 5 (its gkern(klen=11, nsig=5)).
BLUR_KERNEL_SIZE = 11
BLUR_SIGMA = 5.0
# Stream of the random region order: far above any step number so it never shares a stream
# with the noise fills of the same seed.
_ORDER_STREAM = 1 << 40


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}; got {value!r}.")


def _check_positive(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or int(value) < 1:
        raise ConfigError(f"{name} must be an integer >= 1; got {value!r}.")


def _check_shapes(images: Tensor, maps: Tensor) -> None:
    if images.dim() != 4 or maps.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"expected images (B, C, H, W) and maps (B, H, W); "
                         f"got {tuple(images.shape)} and {tuple(maps.shape)}.")


def _ids_cpu(ids: Tensor | None, batch: int) -> Tensor:
    """Dataset indices on the CPU: seeded_uniform reads them with .tolist(), which would force a
    device sync per call (and stall the GPU pipeline) if they lived on the GPU."""
    if ids is None:
        return torch.arange(batch)
    ids = torch.as_tensor(ids).view(-1).cpu()
    if ids.numel() != batch:
        raise ValueError(f"ids must hold one index per image ({batch}); got {ids.numel()}.")
    return ids


def _inverse_permutation(order: Tensor) -> Tensor:
    """rank[b, order[b, i]] = i: the step at which each item is removed."""
    rank = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return rank.scatter_(1, order, positions)


def _fill_fn(fill: str, images: Tensor, ids: Tensor, seed: int) -> Builder:
    """fill_fn(step, lo, hi) -> the fill of images lo:hi at that step, broadcastable to them."""
    _, channels, height, width = images.shape
    dev, dtype = images.device, images.dtype
    if fill == "zero":
        zero = images.new_zeros(())
        return lambda step, lo, hi: zero
    if fill == "min":
        low = images.flatten(1).amin(1).view(-1, 1, 1, 1)
        return lambda step, lo, hi: low[lo:hi]
    if fill == "mean":
        mean = images.mean(dim=(2, 3), keepdim=True)
        return lambda step, lo, hi: mean[lo:hi]
    low = images.flatten(1).amin(1).view(-1, 1, 1, 1)
    span = images.flatten(1).amax(1).view(-1, 1, 1, 1) - low

    def noise(stream: int, lo: int, hi: int) -> Tensor:
        u = seeded_uniform(ids[lo:hi], (channels, height, width), seed=seed, stream=stream,
                           device=dev)
        # u < 1 and the affine map may round up to max(x): clamp keeps the promise [min, max].
        return torch.minimum(low[lo:hi] + span[lo:hi] * u.to(dtype), low[lo:hi] + span[lo:hi])

    if fill == "noise":
        return noise
    once = noise(0, 0, images.shape[0])
    return lambda step, lo, hi: once[lo:hi]


def _gaussian_blur(images: Tensor) -> Tensor:
    """RISE's insertion start: separable gaussian (BLUR_KERNEL_SIZE taps, sigma BLUR_SIGMA) per
    channel with replicate padding (RISE pads with zeros, which darkens the borders and would be
    revealed as signal)."""
    half = BLUR_KERNEL_SIZE // 2
    t = torch.arange(BLUR_KERNEL_SIZE, dtype=torch.float64) - half
    k1 = torch.exp(-(t**2) / (2 * BLUR_SIGMA**2))
    k1 = (k1 / k1.sum()).to(device=images.device, dtype=images.dtype)
    channels = images.shape[1]
    x = F.pad(images, (half, half, half, half), mode="replicate")
    x = F.conv2d(x, k1.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous(), groups=channels)
    return F.conv2d(x, k1.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous(),
                    groups=channels)


def region_order(
    maps: Tensor,
    region: int,
    order: str = "morf",
    seed: int = 0,
    ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The tiles of region perturbation and their removal order (Regions, above).

    Tile scores are sums over the zero-padded grid divided by each tile's count of real pixels:
    the exact mean of partial edge tiles, where avg_pool's count_include_pad / ceil_mode
    divisors are easy to get wrong. Sorting is stable, so ties go to the lower tile id.

    Args:
        maps: (B, H, W) attributions.
        region: Tile side r in pixels.
        order: "morf", "lerf" or "random" (seeded by `seed` and the image `ids`, None: 0..B-1).

    Returns:
        (labels (H, W) long: tile id of each pixel, order (B, R) long: tile ids in removal order).
    """
    _check_positive("region", region)
    _check_choice("order", order, ORDERS)
    region = int(region)
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, H, W); got {tuple(maps.shape)}.")
    batch, height, width = maps.shape
    nh, nw = math.ceil(height / region), math.ceil(width / region)
    dev = maps.device
    rows = torch.arange(height, device=dev) // region
    cols = torch.arange(width, device=dev) // region
    labels = rows[:, None] * nw + cols[None, :]
    n_regions = nh * nw
    if order == "random":
        keys = seeded_uniform(_ids_cpu(ids, batch), (n_regions,), seed=seed,
                              stream=_ORDER_STREAM, device=dev)
        return labels, keys.argsort(dim=1, stable=True)
    padded = F.pad(maps.double(), (0, nw * region - width, 0, nh * region - height))
    sums = padded.view(batch, nh, region, nw, region).sum(dim=(2, 4)).view(batch, n_regions)
    counts = torch.bincount(labels.view(-1), minlength=n_regions).to(sums.dtype)
    means = sums / counts
    return labels, means.argsort(dim=1, descending=(order == "morf"), stable=True)


def region_perturbation(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    region: int = 16,
    order: str = "morf",
    steps: int | None = None,
    fill: str = "noise",
    seed: int = 0,
    ids: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """The region-perturbation curve (above). Perturbed batches are built with one comparison of
    each pixel's removal step against k (no per-pixel Python): the cost is the (L+1) forwards.

    Args:
        model, images, maps, target: The classifier (under no_grad), x, A and y (above).
        region, order, seed, ids: The tiles and their order (`region_order`).
        steps: L, capped at the number of tiles R (as quantus' regions_evaluation); None: R.
        fill: noise | noise_once | min | zero | mean (above).
        batch_size: Images per forward (None: B).

    Returns:
        (B, L+1) p_k: the probability of `target` with the first k tiles removed, k = 0..L.
    """
    _check_choice("fill", fill, FILLS)
    _check_positive("steps", steps, allow_none=True)
    _check_positive("batch_size", batch_size, allow_none=True)
    _check_shapes(images, maps)
    batch = images.shape[0]
    ids_c, target = _ids_cpu(ids, batch), target.to(images.device)
    labels, removal = region_order(maps, region, order=order, seed=seed, ids=ids_c)
    n_regions = removal.shape[1]
    n_steps = n_regions if steps is None else min(int(steps), n_regions)
    rank = _inverse_permutation(removal)
    # removal step (1-based) of every pixel: pixel p is removed at steps k >= pixel_step[p]
    pixel_step = rank.gather(1, labels.view(1, -1).expand(batch, -1)).view(
        batch, 1, *labels.shape) + 1
    fill_of = _fill_fn(fill, images, ids_c, seed)

    def build(step: int, lo: int, hi: int) -> Tensor:
        return torch.where(pixel_step[lo:hi] <= step, fill_of(step, lo, hi), images[lo:hi])

    return step_scores(model, [batch] * (n_steps + 1), build, target, batch_size, clean=images)


def aopc(curve: Tensor) -> Tensor:
    """AOPC (above) of a (B, L+1) curve of probabilities p_k from `region_perturbation`.

    Returns:
        (B,) 1/(L+1) * sum_{k=0..L} (p_0 - p_k).
    """
    return (curve[:, :1] - curve).mean(dim=1)


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    steps: int = 20,
    fill: str = "zero",
    insertion_start: str = "blur",
    batch_size: int | None = None,
    seed: int = 0,
    ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """RISE's deletion and insertion AUCs (above): a faithful map makes the probability fall fast
    when its top pixels are deleted and rise fast when they alone are revealed.

    Args:
        model, images, maps, target, batch_size, seed, ids: As for `region_perturbation`.
        steps, fill: S; what deleted pixels hold (`region_perturbation`'s fills).
        insertion_start: The image pixels are inserted into: "blur" or a fill.

    Returns:
        (deletion AUC (B,), insertion AUC (B,)); the unperturbed forward is shared.
    """
    _check_positive("steps", steps)
    _check_choice("fill", fill, FILLS)
    _check_choice("insertion_start", insertion_start, INSERTION_STARTS)
    _check_positive("batch_size", batch_size, allow_none=True)
    _check_shapes(images, maps)
    steps = int(steps)
    batch, _, height, width = images.shape
    n_pix = height * width
    ids_c, target = _ids_cpu(ids, batch), target.to(images.device)
    ranking = maps.reshape(batch, -1).argsort(dim=1, descending=True, stable=True)
    pixel_rank = _inverse_permutation(ranking).view(batch, 1, height, width)
    counts = [(2 * k * n_pix + steps) // (2 * steps) for k in range(steps + 1)]
    fill_of = _fill_fn(fill, images, ids_c, seed)
    if insertion_start == "blur":
        blurred = _gaussian_blur(images)
        start_of: Builder = lambda step, lo, hi: blurred[lo:hi]  # noqa: E731
    else:
        start_of = _fill_fn(insertion_start, images, ids_c, seed)

    # steps 0..S: deletion with k pixels removed; S+1..2S: insertion with k - S - 1 pixels shown
    # (insertion at k = S is the clean image, already deletion's step 0).
    def build(step: int, lo: int, hi: int) -> Tensor:
        x = images[lo:hi]
        if step <= steps:
            return torch.where(pixel_rank[lo:hi] < counts[step], fill_of(step, lo, hi), x)
        k = step - steps - 1
        return torch.where(pixel_rank[lo:hi] < counts[k], x, start_of(k, lo, hi).expand_as(x))

    probs = step_scores(model, [batch] * (2 * steps + 1), build, target, batch_size,
                        clean=images)
    deletion = probs[:, : steps + 1]
    insertion = torch.cat([probs[:, steps + 1 :], probs[:, :1]], dim=1)
    frac = torch.tensor(counts, dtype=torch.float32, device=probs.device) / n_pix
    return torch.trapezoid(deletion, frac, dim=1), torch.trapezoid(insertion, frac, dim=1)


def max_sensitivity(
    explain: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    radius: float,
    samples: int,
    seed: int = 0,
    ids: Tensor | None = None,
    normalise: bool = False,
    draws_per_call: int = 1,
) -> Tensor:
    """Max-Sensitivity (above).

    Args:
        explain: images -> maps, called with gradients on draws_per_call draws stacked
            draw-major (rows j * B + b: `.repeat` a per-image target or id); output detached.
        images, maps: x (B, C, H, W) and its maps A (B, H, W).
        radius, samples: d_j ~ U[-radius, radius]; the number of draws j.
        seed, ids: Key the noise per image (ids None: 0..B-1).
        normalise: Divide by || A ||_F (a zero-norm map counts as 1, as captum does).
        draws_per_call: Draws per call of `explain`.

    Returns:
        (B,) max_j || explain(x + d_j) - A ||_F, optionally / || A ||_F.
    """
    if radius is None or float(radius) < 0:
        raise ConfigError(f"radius must be a float >= 0; got {radius!r}.")
    _check_positive("samples", samples)
    _check_positive("draws_per_call", draws_per_call)
    _check_shapes(images, maps)
    batch, channels, height, width = images.shape
    ids_c = _ids_cpu(ids, batch)
    ref = maps.detach().float()
    best = torch.full((batch,), -math.inf, device=images.device)
    for first in range(0, int(samples), int(draws_per_call)):
        draws = range(first, min(first + int(draws_per_call), int(samples)))
        noisy = torch.cat([
            images + seeded_uniform(ids_c, (channels, height, width), seed=seed, stream=j,
                                    low=-radius, high=radius, device=images.device).to(images.dtype)
            for j in draws
        ])
        out = explain(noisy).detach().float().view(len(draws), batch, height, width)
        dist = torch.linalg.vector_norm(out - ref, dim=(2, 3)).amax(dim=0)
        best = torch.maximum(best, dist)
    if normalise:
        norm = torch.linalg.vector_norm(ref, dim=(1, 2))
        best = best / torch.where(norm == 0, torch.ones_like(norm), norm)
    return best


def haas(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    labels: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[Tensor, Tensor]:
    """The two classifications behind HAAS (above). The [-1, 1] frame is reached by the single
    affine map x * 2 std + (2 mean - 1) (and back by its inverse) so that mean = std = 0.5
    reduces bit-exactly to clip(x * (1 + A), -1, 1).

    Args:
        model, images, maps: As for `region_perturbation`; maps in [0, 1].
        labels, mean, std: (B,) true classes; the per-channel normalisation of `images`.

    Returns:
        (correct on originals (B,) bool, correct on highlighted images (B,) bool).
    """
    _check_shapes(images, maps)
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean and std need one value per channel ({channels}); "
                          f"got {list(mean)} and {list(std)}.")
    scale = torch.tensor([2.0 * s for s in std], dtype=images.dtype,
                         device=images.device).view(1, -1, 1, 1)
    shift = torch.tensor([2.0 * m - 1.0 for m in mean], dtype=images.dtype,
                         device=images.device).view(1, -1, 1, 1)
    x_pm1 = images * scale + shift
    highlighted = torch.clamp(x_pm1 * (1 + maps.to(images.dtype)[:, None]), -1.0, 1.0)
    x_ha = (highlighted - shift) / scale
    with torch.no_grad():
        correct_orig = model(images).argmax(dim=-1) == labels
        correct_ha = model(x_ha).argmax(dim=-1) == labels
    return correct_orig, correct_ha


def haas_score(correct_orig: Tensor, correct_ha: Tensor) -> float:
    """HAAS from the two outputs of `haas`.

    Returns:
        sum(correct_ha) / sum(correct_orig); NaN when no original is correct (undefined).
    """
    n_orig = int(torch.as_tensor(correct_orig).sum())
    if n_orig == 0:
        return math.nan
    return int(torch.as_tensor(correct_ha).sum()) / n_orig
