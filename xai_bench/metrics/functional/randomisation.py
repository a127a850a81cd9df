"""Batched randomisation metrics: Random Logit, Smooth MPRT and Efficient MPRT.

Definitions (images x (B, C, H, W), maps A (B, H, W) of the target class y (B,), K classes):

- Random Logit (Sixt et al. 2020): c ~ uniform over the K - 1 classes other than y (seeded
  per image id); score = similarity(A, explain(x, c)). A map that barely changes when another
  class is explained ignores the class: lower is better.
- Smooth MPRT (Hedström et al. 2023): each map is the mean of `samples` explanations of noisy
  inputs x + e_n, e_n ~ N(0, (noise * (max x - min x))^2) per image for n < N - 1 and e_{N-1} = 0
  (the last sample is the noise-free map); the denoised map of the trained model is compared
  (Spearman by default) with the denoised map of each randomised model. Lower is better.
- Efficient MPRT (Hedström et al. 2024): relative rise of the maps' discrete entropy from the
  trained to the fully randomised model, (H(A_rand) - H(A)) / H(A), with H the Shannon entropy
  (natural log) of a histogram of `n_bins` equal-width bins between the map's min and max
  (numpy's `histogram` rule: the last bin closed, a constant map in one bin). Higher is better.

The noise of sample n is `seeded_normal` keyed by (seed, image id, n): the same for every
model, batch and DDP rank. Randomised layers reuse `functional.sanity` (same seeding).
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Callable, Hashable, Iterator

import torch
from torch import Tensor, nn

from xai_bench.metrics.functional import sanity as F_sanity
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import image_seed, seeded_normal, seeded_permutation

__all__ = [
    "LAYER_ORDERS",
    "SIMILARITIES",
    "RandomisedModelCache",
    "discrete_entropy",
    "efficient_mprt",
    "fully_randomised",
    "histogram",
    "model_fingerprint",
    "off_class",
    "ordered_randomised_models",
    "similarity",
    "smooth_maps",
]

SIMILARITIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "spearman": F_sanity.spearman, "ssim": F_sanity.ssim}
# quantus' names: cascading from the output side / from the input side / one layer at a time
LAYER_ORDERS = ("bottom_up", "top_down", "independent")
# the stream of the randomised models' seeds, as `functional.sanity.randomised_models` uses it
_MODEL_STREAM = 7


def similarity(name: str, a: Tensor, b: Tensor) -> Tensor:
    """(B,) similarity of two batches of maps (B, H, W).

    Args:
        name: "spearman" (rank correlation; a map that collapsed to a constant scores 0) or
            "ssim" (Gaussian window 11, data range 1: maps in [0, 1]).
        a: (B, H, W) maps.
        b: (B, H, W) maps.

    Returns:
        (B,) float32 similarities.
    """
    if name not in SIMILARITIES:
        raise ConfigError(f"similarity must be one of {tuple(SIMILARITIES)}; got {name!r}.")
    return SIMILARITIES[name](a, b)


def off_class(target: Tensor, num_classes: int, ids: Tensor, seed: int = 0) -> Tensor:
    """A class other than the target, uniform over the other K - 1, drawn per image id.

    Draws r in {0, ..., K - 2} and skips the target: c = r + (r >= y), which is quantus'
    choice of the r-th class of the sorted others.

    Args:
        target: (B,) explained classes.
        num_classes: K >= 2.
        ids: (B,) image ids (the key of the draw).
        seed: The metric's seed.

    Returns:
        (B,) long classes on the target's device, never equal to the target.
    """
    if int(num_classes) < 2:
        raise ConfigError(f"random_logit needs at least 2 classes; the model has {num_classes}.")
    draw = seeded_permutation(ids.view(-1).cpu(), int(num_classes) - 1, seed=seed)[:, 0]
    draw = draw.to(target.device)
    return draw + (draw >= target).long()


def smooth_maps(explain: Callable[[Tensor], Tensor], images: Tensor, ids: Tensor,
                samples: int = 50, noise: float = 0.1, seed: int = 0,
                samples_per_call: int = 1) -> Tensor:
    """Mean of the maps of `samples` noisy copies of the images, the last one noise-free.

    Args:
        explain: images (k B, C, H, W) stacked sample-major (row n B + b: sample n of image b)
            -> (k B, H, W) maps; the caller repeats targets and ids to match.
        images: (B, C, H, W) inputs.
        ids: (B,) image ids: sample n of image i draws from (seed, id_i, n).
        samples: N >= 1 explanations averaged per image.
        noise: Noise std as a fraction of each image's value range (max x - min x).
        seed: The metric's seed.
        samples_per_call: Noisy copies per call of `explain` (larger batches on a GPU).

    Returns:
        (B, H, W) float32 denoised maps.
    """
    if int(samples) < 1 or int(samples_per_call) < 1:
        raise ConfigError(f"samples and samples_per_call must be >= 1; got {samples}, "
                          f"{samples_per_call}.")
    batch = images.shape[0]
    ids_cpu = ids.view(-1).cpu()
    flat = images.detach().flatten(1)
    std = (flat.amax(dim=1) - flat.amin(dim=1)).mul(float(noise)).view(-1, 1, 1, 1)
    total: Tensor | None = None
    for first in range(0, int(samples), int(samples_per_call)):
        draws = range(first, min(first + int(samples_per_call), int(samples)))
        noisy = torch.cat([
            images if n == int(samples) - 1 else images + std * seeded_normal(
                ids_cpu, tuple(images.shape[1:]), seed=seed, stream=n, device=images.device
            ).to(images.dtype)
            for n in draws
        ])
        maps = explain(noisy).detach().double().view(len(draws), batch, *images.shape[2:])
        part = maps.sum(dim=0)
        total = part if total is None else total + part
    assert total is not None
    return (total / int(samples)).float()


def ordered_randomised_models(model: nn.Module, granularity: str = "blocks",
                              order: str = "bottom_up",
                              seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Yield (layer name, randomised copy) in quantus' layer orders; the model is untouched.

    top_down and independent are `functional.sanity.randomised_models` (cascading from the
    head; one layer at a time). bottom_up randomises cumulatively from the input side (what
    Hedström et al. recommend). A layer gets the same seed (seed, its top-down index) in every
    order, so every cascading order ends at the same fully randomised model.

    Args:
        model: The trained model (deep-copied, never modified).
        granularity: "blocks" or "modules" (`functional.sanity.randomisation_layers`).
        order: "bottom_up", "top_down" or "independent".
        seed: The metric's seed.

    Yields:
        (name of the step's layer, the randomised model).
    """
    if order not in LAYER_ORDERS:
        raise ConfigError(f"order must be one of {LAYER_ORDERS}; got {order!r}.")
    if order != "bottom_up":
        mode = "cascading" if order == "top_down" else "independent"
        yield from F_sanity.randomised_models(model, granularity, mode, seed)
        return
    work = copy.deepcopy(model)
    layers = F_sanity.randomisation_layers(work, granularity)
    for index in reversed(range(len(layers))):
        F_sanity.randomise_layer(layers[index], image_seed(seed, index, stream=_MODEL_STREAM))
        yield layers[index][0], work


def fully_randomised(model: nn.Module, granularity: str = "blocks", seed: int = 0) -> nn.Module:
    """A copy of the model with every layer randomised (the last cascading step).

    Args:
        model: The trained model (deep-copied, never modified).
        granularity: "blocks" or "modules"; the layer seeds follow it.
        seed: The metric's seed.

    Returns:
        The randomised copy.
    """
    work = copy.deepcopy(model)
    layers = F_sanity.randomisation_layers(work, granularity)
    for index, layer in enumerate(layers):
        F_sanity.randomise_layer(layer, image_seed(seed, index, stream=_MODEL_STREAM))
    return work


def model_fingerprint(model: nn.Module) -> Hashable | None:
    """What a randomised copy of the model depends on: every parameter's and buffer's identity,
    storage, device, dtype and shape, the version counter that every in-place write bumps (an
    optimiser step, `load_state_dict`), and each module's train / eval mode. None when a tensor
    keeps no version counter (made under torch.inference_mode): its writes cannot be seen."""
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    if any(t.is_inference() for t in tensors):
        return None
    return (tuple((id(t), t.data_ptr(), t._version, t.device, t.dtype, t.shape)
                  for t in tensors),
            tuple(module.training for module in model.modules()))


class RandomisedModelCache:
    """The fully randomised copy of the last model seen, reused while that model (the same
    object, same weights and modes: `model_fingerprint`) is explained again and nothing wrote
    into the copy itself (a method that updates statistics of the model it explains).

    Why: the copy depends on the model alone, not on the batch, and building it (deep copy and
    re-initialisation: about a tenth of a ViT-tiny explanation of 8 images on a CPU) on every
    batch adds up. Holds the model weakly; `clear()` frees the copy; pickles and deep copies
    without it (it is rebuilt on demand).
    """

    def __init__(self, granularity: str = "blocks", seed: int = 0) -> None:
        self.granularity, self.seed = granularity, int(seed)
        # (the model, its fingerprint, the copy, the copy's fingerprint when built)
        self._entry: tuple[weakref.ref[nn.Module], Hashable, nn.Module, Hashable] | None = None

    def get(self, model: nn.Module) -> nn.Module:
        """`fully_randomised(model, granularity, seed)`, built once per model state."""
        key = model_fingerprint(model)
        if self._entry is not None and key is not None:
            ref, cached_key, randomised, randomised_key = self._entry
            if (ref() is model and cached_key == key
                    and model_fingerprint(randomised) == randomised_key):
                return randomised
        self._entry = None  # free the old copy before building the new one
        randomised = fully_randomised(model, self.granularity, self.seed)
        randomised_key = model_fingerprint(randomised)
        if key is not None and randomised_key is not None:
            self._entry = (weakref.ref(model), key, randomised, randomised_key)
        return randomised

    def clear(self) -> None:
        """Drop the cached copy."""
        self._entry = None

    def __getstate__(self) -> dict[str, object]:
        return {"granularity": self.granularity, "seed": self.seed, "_entry": None}


def histogram(values: Tensor, n_bins: int = 100) -> Tensor:
    """Per-row counts of `n_bins` equal-width bins over [min, max] of the row, numpy's rule.

    Exactly `numpy.histogram(row, bins=n_bins)` on float64 values: edges = linspace(min, max),
    bin = floor((v - min) / (max - min) * n_bins) corrected to the edges, the right edge in the
    last bin; a constant row spans [v - 0.5, v + 0.5] (all values in the middle bin).

    Args:
        values: (B, N) values (compared in float64).
        n_bins: The number of bins.

    Returns:
        (B, n_bins) float64 counts.
    """
    if int(n_bins) < 1:
        raise ConfigError(f"n_bins must be >= 1; got {n_bins}.")
    n_bins = int(n_bins)
    values = values.double()
    lo = values.amin(dim=1, keepdim=True)
    hi = values.amax(dim=1, keepdim=True)
    flat = lo == hi
    lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)
    delta = hi - lo
    index = ((values - lo) / delta * n_bins).long()
    index = index - (index == n_bins).long()
    steps = torch.arange(n_bins + 1, dtype=torch.float64, device=values.device)
    edges = steps * (delta / n_bins) + lo
    edges[:, -1:] = hi
    index = index - (values < edges.gather(1, index)).long()
    upper = edges.gather(1, index + 1)
    index = index + ((values >= upper) & (index != n_bins - 1)).long()
    counts = torch.zeros(values.shape[0], n_bins, dtype=torch.float64, device=values.device)
    return counts.scatter_add_(1, index, torch.ones_like(values))


def discrete_entropy(maps: Tensor, n_bins: int = 100) -> Tensor:
    """(B,) Shannon entropy (nats) of each map's `histogram` (quantus' discrete_entropy).

    Args:
        maps: (B, H, W) maps; a map with a NaN scores NaN.
        n_bins: Equal-width bins between the map's min and max.

    Returns:
        (B,) float64 entropies in [0, log n_bins].
    """
    flat = maps.flatten(1)
    nan = torch.isnan(flat).any(dim=1)
    counts = histogram(torch.nan_to_num(flat), n_bins)
    p = counts / counts.sum(dim=1, keepdim=True)
    entropy = -torch.where(p > 0, p * p.clamp(min=1e-300).log(), torch.zeros_like(p)).sum(dim=1)
    return entropy.masked_fill(nan, float("nan"))


def efficient_mprt(maps: Tensor, random_maps: Tensor, n_bins: int = 100) -> Tensor:
    """(B,) relative entropy rise (H(random_maps) - H(maps)) / H(maps); NaN where H(maps) = 0
    (a map in a single bin: quantus divides by zero).

    Args:
        maps: (B, H, W) maps of the trained model.
        random_maps: (B, H, W) maps of the fully randomised model.
        n_bins: Histogram bins (quantus' default 100).

    Returns:
        (B,) float64 scores; higher is better (the map degrades as the model does).
    """
    before = discrete_entropy(maps, n_bins)
    after = discrete_entropy(random_maps, n_bins)
    rise = (after - before) / before
    return rise.masked_fill(before == 0, float("nan"))
