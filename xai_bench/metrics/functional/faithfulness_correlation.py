"""Correlation-type faithfulness metrics, batched: do the map's values predict how much the
model's output moves when the pixels they score are perturbed?

Definitions (images x (B, C, H, W) as the model takes them, maps A (B, H, W), target y (B,), f the
target's logit or softmax probability (`output`); a "feature" is a PIXEL, all its channels
perturbed together, and a set S of pixels "removed" takes the `fill` (the per-image minimum
over all channels and pixels, quantus' "black"; zero; or the per-channel mean) on every channel):

- Faithfulness correlation (Bhatt et al. 2020): for runs r = 1..R, a random set S_r of
  `subset_size` pixels (without replacement, seeded per image id); Pearson correlation over r
  between sum_{p in S_r} A_p and f(x) - f(x without S_r).
- Sensitivity-n (Ancona et al. 2018): the same correlation for each set size n (a fraction of
  the pixels), one value per n; a map that sums to the output change everywhere scores 1.
- Faithfulness estimate (Alvarez-Melis & Jaakkola 2018): pixels ranked by A (descending, ties by
  pixel index), cut into steps of `features_in_step`; step s removes only its own pixels;
  Pearson correlation over s between the step's attribution sum and f(x) - f(x without step s).
- Monotonicity correlation (Nguyen & Martinez 2020): pixels ranked by A ascending, steps as
  above; step s replaced `samples` times (fill "uniform": ONE value U[low, high) per image and
  draw, quantus' default); Spearman correlation over s between the step's attribution sum and
  the mean squared change of f (quantus also divides by f(x)^2, a per-image constant that a
  rank correlation ignores).
- Infidelity (Yeh et al. 2019): draws I_j ~ N(0, std^2) on every input element; the
  infidelity is 1/J sum_j (sum_{c,h,w} A_hw I_j,chw - (f(x) - f(x - I_j)))^2; `normalise`
  first rescales A by the least-squares beta = sum_j a_j b_j / sum_j a_j^2 (captum's normalize).
- Sufficiency (Dasgupta et al. 2022): over the whole evaluated set, standardised Euclidean
  distances between the |maps| (each pixel divided by its standard deviation over the set;
  pixels constant over the set left out), divided by the largest distance; images within
  `threshold` are neighbours; the score is the fraction of an image's neighbours predicted as
  the same class (NaN without neighbours).

Correlations of a constant series are NaN (undefined), as scipy's. All randomness comes from
`seeded_permutation` / `seeded_uniform` / `seeded_normal` keyed by (seed, image id, stream).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from xai_bench.metrics.functional.faithfulness import (
    _check_choice,
    _check_positive,
    _check_shapes,
    _fill_fn,
    _ids_cpu,
    _inverse_permutation,
)
from xai_bench.metrics.functional.perturbed import Score, step_scores, target_logit, target_prob
from xai_bench.metrics.functional.sanity import average_ranks
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal, seeded_permutation, seeded_uniform

__all__ = [
    "FILLS",
    "MONOTONICITY_FILLS",
    "OUTPUTS",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "infidelity",
    "monotonicity_correlation",
    "pearson",
    "sensitivity_n",
    "spearman",
    "sufficiency",
]

OUTPUTS = ("logit", "probability")
FILLS = ("min", "zero", "mean")
MONOTONICITY_FILLS = ("uniform", *FILLS)
# Streams of the random pixel sets of sensitivity-n's k-th size: k * _SIZE_STREAM + run.
_SIZE_STREAM = 1 << 32


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation of (B, N) series -> (B,) float64; NaN where a row is
    constant (exactly, as scipy's pearsonr) or holds a NaN."""
    a, b = a.double(), b.double()
    constant = (a == a[:, :1]).all(dim=1) | (b == b[:, :1]).all(dim=1)
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    r = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))
    return r.clamp(-1.0, 1.0).masked_fill(constant, math.nan)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Spearman correlation (ties share their mean rank, as scipy's spearmanr) of
    (B, N) series -> (B,) float64; NaN where a row is constant or holds a NaN."""
    nan = torch.isnan(a).any(dim=1) | torch.isnan(b).any(dim=1)
    rho = pearson(average_ranks(a.double()), average_ranks(b.double()))
    return rho.masked_fill(nan, math.nan)


def _score(output: str) -> Score:
    """f: the target's logit or softmax probability."""
    _check_choice("output", output, OUTPUTS)
    return target_logit if output == "logit" else target_prob


def _prepare(images: Tensor, maps: Tensor, target: Tensor, ids: Tensor | None, output: str,
             batch_size: int | None) -> tuple[Tensor, Tensor, Score]:
    score = _score(output)
    _check_positive("batch_size", batch_size, allow_none=True)
    _check_shapes(images, maps)
    return _ids_cpu(ids, images.shape[0]), target.to(images.device), score


def _step_sums(values: Tensor, step: int) -> Tensor:
    """(B, ceil(N / step)) sums of consecutive runs of `step` columns of (B, N) values."""
    batch, n = values.shape
    n_steps = math.ceil(n / step)
    padded = torch.nn.functional.pad(values.double(), (0, n_steps * step - n))
    return padded.view(batch, n_steps, step).sum(dim=2)


def sensitivity_n(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    sizes: Sequence[int],
    runs: int = 100,
    fill: str = "min",
    output: str = "logit",
    seed: int = 0,
    ids: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Sensitivity-n (above): per image and set size, the correlation between the attribution
    of random pixel sets and the output drop when they are removed. The clean forward is shared.

    Args:
        model, images, maps, target: The classifier (under no_grad), x, A and y (above).
        sizes: Pixels per random set, one correlation each (1 <= n <= H W).
        runs: Random sets per size (R).
        fill: min | zero | mean (above).
        output: "logit" or "probability" of the target class.
        seed, ids: Key the random sets per image (ids None: 0..B-1).
        batch_size: Images per forward (None: B).

    Returns:
        (B, len(sizes)) float64 Pearson correlations (NaN where undefined).
    """
    ids_c, target, score = _prepare(images, maps, target, ids, output, batch_size)
    _check_positive("runs", runs)
    _check_choice("fill", fill, FILLS)
    batch, _, height, width = images.shape
    n_pix, runs = height * width, int(runs)
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 1 or max(sizes) > n_pix:
        raise ConfigError(f"the random pixel sets must hold 1 to {n_pix} pixels (the image's "
                          f"{height} x {width}); got {sizes}.")
    dev = images.device
    flat_maps = maps.flatten(1).double()
    # the attribution of each pixel set, stored as the images are built (drawn once); set
    # k * R + r (size-major) holds the first n_k pixels of a seeded permutation
    sums = torch.empty(batch, len(sizes) * runs, dtype=torch.float64, device=dev)
    fill_of = _fill_fn(fill, images, ids_c, seed)

    def build(item: int, lo: int, hi: int) -> Tensor:
        k, r = divmod(item - 1, runs)
        chosen = seeded_permutation(ids_c[lo:hi], n_pix, seed=seed, stream=k * _SIZE_STREAM + r,
                                    device=dev)[:, :sizes[k]]
        sums[lo:hi, item - 1] = flat_maps[lo:hi].gather(1, chosen).sum(dim=1)
        removed = torch.zeros(hi - lo, n_pix, dtype=torch.bool, device=dev)
        removed.scatter_(1, chosen, True)
        return torch.where(removed.view(hi - lo, 1, height, width), fill_of(item, lo, hi),
                           images[lo:hi])

    out = step_scores(model, [batch] * (1 + len(sizes) * runs), build, target, batch_size,
                      score, clean=images)
    drops = (out[:, :1] - out[:, 1:]).view(batch, len(sizes), runs)
    return torch.stack([pearson(sums[:, k * runs:(k + 1) * runs], drops[:, k])
                        for k in range(len(sizes))], dim=1)


def faithfulness_correlation(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    subset_size: int = 224,
    runs: int = 100,
    fill: str = "min",
    output: str = "logit",
    seed: int = 0,
    ids: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Faithfulness correlation (above): sensitivity-n at the one set size `subset_size`.

    Args:
        model, images, maps, target, runs, fill, output, seed, ids, batch_size: As for
            `sensitivity_n`.
        subset_size: Pixels per random set.

    Returns:
        (B,) float64 Pearson correlations (NaN where undefined).
    """
    return sensitivity_n(model, images, maps, target, [subset_size], runs=runs, fill=fill,
                         output=output, seed=seed, ids=ids, batch_size=batch_size)[:, 0]


def _ranked_steps(maps: Tensor, features_in_step: int,
                  descending: bool) -> tuple[Tensor, Tensor, int]:
    """Pixels ranked by the map (stable: ties by pixel index) and cut into steps.

    Returns:
        (step (B, 1, H, W) long: the 0-based step of each pixel, sums (B, steps) float64: the
        attribution of each step's pixels, the number of steps).
    """
    _check_positive("features_in_step", features_in_step)
    step = int(features_in_step)
    batch, height, width = maps.shape
    flat = maps.flatten(1)
    ranking = flat.argsort(dim=1, descending=descending, stable=True)
    pixel_step = (_inverse_permutation(ranking) // step).view(batch, 1, height, width)
    sums = _step_sums(flat.gather(1, ranking), step)
    return pixel_step, sums, sums.shape[1]


def faithfulness_estimate(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    features_in_step: int = 224,
    fill: str = "min",
    output: str = "logit",
    ids: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Faithfulness estimate (above): one forward per step of the ranked pixels.

    Args:
        model, images, maps, target, fill, output, ids, batch_size: As for `sensitivity_n`.
        features_in_step: Pixels per step (the last step may hold fewer).

    Returns:
        (B,) float64 Pearson correlations (NaN where undefined, e.g. a single step).
    """
    ids_c, target, score = _prepare(images, maps, target, ids, output, batch_size)
    _check_choice("fill", fill, FILLS)
    pixel_step, sums, n_steps = _ranked_steps(maps, features_in_step, descending=True)
    fill_of = _fill_fn(fill, images, ids_c, 0)

    def build(item: int, lo: int, hi: int) -> Tensor:
        return torch.where(pixel_step[lo:hi] == item - 1, fill_of(item, lo, hi), images[lo:hi])

    out = step_scores(model, [images.shape[0]] * (1 + n_steps), build, target, batch_size, score,
                      clean=images)
    return pearson(sums, out[:, :1] - out[:, 1:])


def monotonicity_step(height: int, width: int, features_in_step: int | None,
                      steps: int = 32) -> int:
    """Pixels per step of monotonicity correlation: as given, or H W / steps rounded up."""
    if features_in_step is not None:
        _check_positive("features_in_step", features_in_step)
        return int(features_in_step)
    _check_positive("steps", steps)
    return math.ceil(height * width / int(steps))


def monotonicity_correlation(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    features_in_step: int | None = None,
    samples: int = 10,
    fill: str = "uniform",
    low: float = 0.0,
    high: float = 1.0,
    output: str = "probability",
    seed: int = 0,
    ids: Tensor | None = None,
    batch_size: int | None = None,
    steps: int = 32,
) -> Tensor:
    """Monotonicity correlation (above): `samples` forwards per step of the ranked pixels.

    Args:
        model, images, maps, target, output, seed, ids, batch_size: As for `sensitivity_n`.
        features_in_step: Pixels per step, ranked ascending (the last step may hold fewer);
            None = ceil(H W / steps). A count that leaves one step is a ConfigError: a rank
            correlation needs two.
        steps: The number of steps when features_in_step is None (224 px: 1568 pixels).
        samples: Replacements per step (all alike unless fill is "uniform").
        fill: uniform (one value U[low, high) per image and draw, stream s * samples + j) |
            min | zero | mean.
        low, high: The range of the uniform fill, in the model's input space.

    Returns:
        (B,) float64 Spearman correlations (NaN where undefined, e.g. a single step).
    """
    ids_c, target, score = _prepare(images, maps, target, ids, output, batch_size)
    _check_positive("samples", samples)
    _check_choice("fill", fill, MONOTONICITY_FILLS)
    if not float(low) < float(high):
        raise ConfigError(f"the uniform fill needs low < high; got {low!r} and {high!r}.")
    samples = int(samples)
    features_in_step = monotonicity_step(maps.shape[-2], maps.shape[-1], features_in_step, steps)
    pixel_step, sums, n_steps = _ranked_steps(maps, features_in_step, descending=False)
    if n_steps < 2:
        raise ConfigError(
            f"monotonicity_correlation: features_in_step={features_in_step} leaves {n_steps} "
            f"step on {maps.shape[-2]}x{maps.shape[-1]} maps, and a rank correlation needs at "
            f"least 2: lower it, or leave it null ({steps} steps).")
    constant = None if fill == "uniform" else _fill_fn(fill, images, ids_c, seed)

    def build(item: int, lo: int, hi: int) -> Tensor:
        if constant is not None:
            value = constant(item, lo, hi)
        else:
            value = seeded_uniform(ids_c[lo:hi], (1, 1, 1), seed=seed, stream=item - 1,
                                   low=float(low), high=float(high),
                                   device=images.device).to(images.dtype)
        return torch.where(pixel_step[lo:hi] == (item - 1) // samples, value, images[lo:hi])

    batch = images.shape[0]
    out = step_scores(model, [batch] * (1 + n_steps * samples), build, target, batch_size, score,
                      clean=images)
    changes = (out[:, 1:].double().view(batch, n_steps, samples) - out[:, :1, None].double())
    return spearman(sums, changes.pow(2).mean(dim=2))


def infidelity(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    samples: int = 10,
    std: float = 0.1,
    normalise: bool = True,
    output: str = "logit",
    seed: int = 0,
    ids: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Infidelity (above): one forward per Gaussian draw, the map broadcast over the channels.

    Args:
        model, images, maps, target, output, seed, ids, batch_size: As for `sensitivity_n`.
        samples: Draws J (stream j).
        std: The draws' standard deviation, in the model's input space.
        normalise: Rescale the map by the least-squares beta first (captum's normalize).

    Returns:
        (B,) float64 infidelity (lower is better).
    """
    ids_c, target, score = _prepare(images, maps, target, ids, output, batch_size)
    _check_positive("samples", samples)
    if std is None or not float(std) > 0:
        raise ConfigError(f"infidelity's std must be a float > 0; got {std!r}.")
    batch, channels, height, width = images.shape
    samples = int(samples)
    explained = torch.empty(batch, samples, dtype=torch.float64, device=images.device)
    weights = maps.to(images.dtype)[:, None]

    def build(item: int, lo: int, hi: int) -> Tensor:
        noise = seeded_normal(ids_c[lo:hi], (channels, height, width), seed=seed,
                              stream=item - 1, std=float(std), device=images.device)
        noise = noise.to(images.dtype)
        # the map's account of the change, stored as the images are built (drawn once)
        explained[lo:hi, item - 1] = (weights[lo:hi] * noise).flatten(1).double().sum(dim=1)
        return images[lo:hi] - noise

    out = step_scores(model, [batch] * (1 + samples), build, target, batch_size, score,
                      clean=images)
    drops = (out[:, :1] - out[:, 1:]).double()
    if not normalise:
        return (explained - drops).pow(2).mean(dim=1)
    aa, ab, bb = (explained**2).sum(dim=1), (explained * drops).sum(dim=1), (drops**2).sum(dim=1)
    beta = ab / torch.where(aa == 0, torch.ones_like(aa), aa)
    return (beta**2 * aa - 2 * beta * ab + bb) / samples


def _std(flat: Tensor, block: int) -> Tensor:
    """(P,) float64 standard deviation of each pixel of |flat| over the rows (correction 1; 0
    for one row), two passes of `block` rows at a time."""
    n, rows = flat.shape[0], range(0, flat.shape[0], block)
    mean = sum(flat[lo:lo + block].double().abs().sum(dim=0) for lo in rows) / max(n, 1)
    squares = sum((flat[lo:lo + block].double().abs() - mean).pow(2).sum(dim=0) for lo in rows)
    return (squares / (n - 1)).sqrt() if n > 1 else torch.zeros_like(mean)


def sufficiency(maps: Tensor, predicted: Tensor, threshold: float = 0.6,
                block: int = 512) -> Tensor:
    """Sufficiency (above) over the set given: an image's neighbourhood is every other map. The
    metric gives it the whole evaluated set (quantus: one batch); float64, `block` maps at a
    time, so memory is the N x N distances plus two blocks of standardised maps.

    Args:
        maps: (N, H, W) maps, any float dtype; their absolute values are compared.
        predicted: (N,) the predicted class of each image.
        threshold: Neighbours lie within this fraction of the largest distance in the set.
        block: Maps standardised and compared at a time (memory only, not the result).

    Returns:
        (N,) float64 fraction of neighbours with the same prediction; NaN without neighbours.
    """
    if threshold is None or not 0 <= float(threshold) <= 1:
        raise ConfigError(f"sufficiency's threshold must lie in [0, 1]; got {threshold!r}.")
    _check_positive("block", block)
    if maps.dim() != 3 or predicted.shape != maps.shape[:1] or not maps.shape[0]:
        raise ValueError(f"expected maps (N, H, W), N >= 1, and predicted (N,); got "
                         f"{tuple(maps.shape)} and {tuple(predicted.shape)}.")
    n, block, dev = maps.shape[0], int(block), maps.device
    flat = maps.flatten(1)
    std = _std(flat, block)
    divisor = torch.where(std > 0, std, 1.0)

    def scaled(lo: int) -> Tensor:  # pixels constant over the set carry no distance: left out
        return torch.where(std > 0, flat[lo:lo + block].double().abs() / divisor, 0.0)

    dist = torch.empty(n, n, dtype=torch.float64, device=dev)
    for lo in range(0, n, block):
        rows = scaled(lo)
        for hi in range(lo, n, block):  # symmetric: the blocks on and above the diagonal
            part = torch.cdist(rows, rows if hi == lo else scaled(hi),
                               compute_mode="donot_use_mm_for_euclid_dist")
            dist[lo:lo + block, hi:hi + block], dist[hi:hi + block, lo:lo + block] = part, part.T
    largest = dist.max()
    if largest > 0:
        dist /= largest
    near = dist <= float(threshold)
    near.fill_diagonal_(False)
    predicted = predicted.to(dev)
    count = near.sum(dim=1).double()
    agree = (near & (predicted[:, None] == predicted[None, :])).sum(dim=1).double()
    return torch.where(count > 0, agree / count.clamp(min=1), math.nan)
