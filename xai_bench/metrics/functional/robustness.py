"""Batched robustness metrics: does the map stay put when the input barely changes?

Definitions (images x (B, C, H, W) as the model takes them, maps A (B, H, W) = explain(x),
E_j = explain(x_j) the map of the j-th perturbed copy x_j, ||.|| the Frobenius / L2 norm over
all elements of one image):

- Avg-Sensitivity (Yeh et al. 2019): mean_j ||E_j - A|| / ||A|| with x_j = x + U[-r, r] on every
  input element (the mean counterpart of Max-Sensitivity; `normalise=False` drops the division).
- Local Lipschitz Estimate (Alvarez-Melis & Jaakkola 2018): max_j ||E_j - A|| /
  (||x_j - x|| + 1e-10) with x_j = x + N(0, std^2).
- Continuity (Montavon et al. 2018): max_k ||E_k - A||_1 / (||x_k - x|| + 1e-9) over horizontal
  translations x_k of the image by s_k = -W + (k + 1) * ((2 W + 1) // K) px, k = 0..K-1 (> 0:
  right), the uncovered columns set to the image's minimum over all channels and pixels.
- Relative stability (Agarwal et al. 2022): max_j ||(A - E_j) / A'|| / max(D_j, eps) with
  A' = A where A != 0, else eps (a relative change of the map), x_j = x + U[low, high], and
  D_j = ||(x - x_j) / x'|| (input, RIS), ||h(x) - h(x_j)|| on the logits h (output, ROS) or
  ||(r(x) - r(x_j)) / r'|| on an internal representation r (representation, RRS), primes as for
  A. Draws whose predicted class differs from x's are left out of the max (`exclude_changed`);
  an image whose draws all changed class scores NaN.
- Consistency (Dasgupta et al. 2022): each map is discretised to a label; an image's score is
  the fraction of the OTHER images with the same label that have the same predicted class
  (NaN when no other image shares its label).

All randomness comes from `seeded_uniform` / `seeded_normal` keyed by (seed, image id, draw j),
so an image gets the same draws whatever batch, position or DDP rank it is evaluated in; the
uniform draws of avg_sensitivity are max_sensitivity's for the same seed and radius.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from xai_bench.metrics.functional.faithfulness import _check_positive, _check_shapes, _ids_cpu
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal, seeded_uniform

__all__ = [
    "DISCRETISERS",
    "STABILITIES",
    "avg_sensitivity",
    "consistency",
    "continuity",
    "discretise",
    "local_lipschitz_estimate",
    "model_forward",
    "relative_stability",
    "translate_x",
    "translations",
]

STABILITIES = ("input", "output", "representation")
DISCRETISERS = ("top_k", "top_n_sign", "rank")

# images (n * B, C, H, W), draw-major (row j * B + b) -> maps (n * B, H, W)
Explain = Callable[[Tensor], Tensor]
# images (N, C, H, W) -> (logits (N, K), representation (N, D) or None), without gradients
Forward = Callable[[Tensor], tuple[Tensor, Tensor | None]]
# draw number j -> the perturbed images (B, C, H, W)
Draw = Callable[[int], Tensor]


def _explained_draws(explain: Explain, draw: Draw, count: int, draws_per_call: int,
                     batch: int) -> Iterator[tuple[range, Tensor, Tensor]]:
    """(draws, perturbed (n, B, C, H, W), their maps (n, B, H, W)) per call of `explain`:
    `draws_per_call` draws of every image stacked draw-major into one call."""
    _check_positive("draws_per_call", draws_per_call)
    for first in range(0, count, int(draws_per_call)):
        draws = range(first, min(first + int(draws_per_call), count))
        perturbed = torch.stack([draw(j) for j in draws])
        maps = explain(perturbed.flatten(0, 1)).detach().float()
        yield draws, perturbed, maps.view(len(draws), batch, *maps.shape[1:])


def _noise_draw(images: Tensor, ids: Tensor | None, seed: int, kind: str, a: float,
                b: float) -> Draw:
    """x + noise_j: uniform in [a, b) or normal with mean a and std b, per (seed, id, j)."""
    ids_c = _ids_cpu(ids, images.shape[0])
    shape, sample = tuple(images.shape[1:]), seeded_uniform if kind == "uniform" else seeded_normal

    def draw(j: int) -> Tensor:
        noise = sample(ids_c, shape, seed, j, a, b, device=images.device)
        return images + noise.to(images.dtype)

    return draw


def _norm(values: Tensor) -> Tensor:
    """L2 norm of each image's elements over every dimension after the first two (n, B)."""
    return torch.linalg.vector_norm(values.double().flatten(2), dim=2)


def avg_sensitivity(explain: Explain, images: Tensor, maps: Tensor, radius: float, samples: int,
                    seed: int = 0, ids: Tensor | None = None, normalise: bool = True,
                    draws_per_call: int = 1) -> Tensor:
    """Avg-Sensitivity (above): how far the map moves, on average, under small uniform noise.

    Args:
        explain: images -> maps on draws stacked draw-major (`.repeat` a per-image target / id).
        images, maps: x (B, C, H, W) and its maps A (B, H, W).
        radius, samples: x_j = x + U[-radius, radius]; the number of draws j.
        seed, ids: Key the noise per image (ids None: 0..B-1).
        normalise: Divide by ||A|| (quantus; a zero-norm map counts as 1, as captum does).
        draws_per_call: Draws per call of `explain`.

    Returns:
        (B,) mean_j ||E_j - A||, optionally / ||A||.
    """
    if radius is None or float(radius) < 0:
        raise ConfigError(f"radius must be a float >= 0; got {radius!r}.")
    _check_positive("samples", samples)
    _check_shapes(images, maps)
    ref = maps.detach().float()
    draw = _noise_draw(images, ids, seed, "uniform", -float(radius), float(radius))
    total = torch.zeros(images.shape[0], dtype=torch.float64, device=images.device)
    for _, _, out in _explained_draws(explain, draw, int(samples), draws_per_call,
                                      images.shape[0]):
        total += _norm(out - ref).sum(0)
    mean = total / int(samples)
    if normalise:
        norm = _norm(ref[None])[0]
        mean = mean / torch.where(norm == 0, torch.ones_like(norm), norm)
    return mean.float()


def local_lipschitz_estimate(explain: Explain, images: Tensor, maps: Tensor, std: float,
                             samples: int, seed: int = 0, ids: Tensor | None = None,
                             draws_per_call: int = 1) -> Tensor:
    """Local Lipschitz Estimate (above): the steepest change of the map per unit of Gaussian
    input noise.

    Args:
        explain, images, maps, seed, ids, draws_per_call: As for `avg_sensitivity`.
        std, samples: x_j = x + N(0, std^2) on every element; the number of draws j.

    Returns:
        (B,) max_j ||E_j - A|| / (||x_j - x|| + 1e-10).
    """
    if std is None or float(std) < 0:
        raise ConfigError(f"std must be a float >= 0; got {std!r}.")
    _check_positive("samples", samples)
    _check_shapes(images, maps)
    ref = maps.detach().float()
    draw = _noise_draw(images, ids, seed, "normal", 0.0, float(std))
    best = torch.full((images.shape[0],), -math.inf, dtype=torch.float64, device=images.device)
    for _, noisy, out in _explained_draws(explain, draw, int(samples), draws_per_call,
                                          images.shape[0]):
        ratio = _norm(out - ref) / (_norm(noisy - images[None]) + 1e-10)
        best = torch.maximum(best, ratio.amax(0))
    return best.float()


def translations(width: int, steps: int) -> list[int]:
    """The K = `steps` horizontal shifts of continuity: -W + (k + 1) * ((2 W + 1) // K) px."""
    _check_positive("steps", steps)
    if int(steps) > 2 * width + 1:
        raise ConfigError(f"steps must be <= 2 W + 1 = {2 * width + 1} at width {width} px "
                          f"(larger ones all shift by -W); got {steps!r}.")
    dx = (2 * width + 1) // int(steps)
    return [-width + (k + 1) * dx for k in range(int(steps))]


def translate_x(images: Tensor, shift: int) -> Tensor:
    """The images moved `shift` px right (< 0: left), uncovered columns = each image's minimum
    over all channels and pixels (quantus' "black"); |shift| >= W leaves only that minimum."""
    width = images.shape[-1]
    low = images.flatten(1).amin(1).view(-1, 1, 1, 1)
    cols = torch.arange(width, device=images.device)
    uncovered = cols < shift if shift >= 0 else cols >= width + shift
    moved = torch.roll(images, shifts=int(shift) % width if abs(shift) < width else 0, dims=-1)
    return torch.where(uncovered, low.to(images.dtype), moved)


def continuity(explain: Explain, images: Tensor, maps: Tensor, steps: int = 28,
               draws_per_call: int = 1) -> Tensor:
    """Continuity (above): the largest L1 change of the map per unit of input change under
    horizontal translations of the image.

    Args:
        explain, images, maps, draws_per_call: As for `avg_sensitivity` (here: translations
            per call).
        steps: K, the number of translations (`translations`).

    Returns:
        (B,) max_k ||E_k - A||_1 / (||x_k - x|| + 1e-9).
    """
    _check_shapes(images, maps)
    shifts = translations(images.shape[-1], steps)
    ref = maps.detach().float()
    best = torch.full((images.shape[0],), -math.inf, dtype=torch.float64, device=images.device)
    for _, moved, out in _explained_draws(explain, lambda k: translate_x(images, shifts[k]),
                                          len(shifts), draws_per_call, images.shape[0]):
        l1 = (out - ref).double().abs().flatten(2).sum(2)
        best = torch.maximum(best, (l1 / (_norm(moved - images[None]) + 1e-9)).amax(0))
    return best.float()


def _relative(values: Tensor, ref: Tensor, eps: float) -> Tensor:
    """(ref - values) / ref', ref' = ref where nonzero, else eps (Agarwal et al.'s guard)."""
    ref = ref.double()
    return (ref - values.double()) / (ref + (ref == 0) * eps)


def relative_stability(
    explain: Explain,
    images: Tensor,
    maps: Tensor,
    kind: str,
    logits: Tensor,
    forward: Forward | None = None,
    representation: Tensor | None = None,
    low: float = 0.02,
    high: float = 0.2,
    samples: int = 20,
    seed: int = 0,
    ids: Tensor | None = None,
    exclude_changed: bool = True,
    eps: float = 1e-6,
    draws_per_call: int = 1,
) -> Tensor:
    """Relative input / output / representation stability (above).

    Args:
        explain, images, maps, seed, ids, draws_per_call: As for `avg_sensitivity`.
        kind: "input" (RIS), "output" (ROS) or "representation" (RRS).
        logits: (B, K) the model's logits on x (the prediction a draw must keep; ROS's h(x)).
        forward: Perturbed images -> (logits, representation), without gradients; needed for
            output, representation and exclude_changed (one forward per draw).
        representation: (B, D) r(x) for kind="representation".
        low, high, samples: x_j = x + U[low, high] on every element (quantus: 0.02, 0.2 - one
            sided); the number of draws j.
        exclude_changed: Leave out draws whose predicted class is not x's.
        eps: The guard of the divisions (quantus' eps_min).

    Returns:
        (B,) the max over the kept draws; NaN where none is kept.
    """
    if kind not in STABILITIES:
        raise ConfigError(f"kind must be one of {STABILITIES}; got {kind!r}.")
    if low is None or high is None or not float(low) < float(high):
        raise ConfigError(f"noise bounds must satisfy low < high; got {low!r}, {high!r}.")
    if eps is None or not float(eps) > 0:
        raise ConfigError(f"eps must be a float > 0; got {eps!r}.")
    _check_positive("samples", samples)
    _check_shapes(images, maps)
    needs_forward = kind != "input" or exclude_changed
    if needs_forward and forward is None:
        raise ValueError(f"relative {kind} stability needs `forward`.")
    if kind == "representation" and representation is None:
        raise ValueError("relative representation stability needs `representation` of x.")
    eps, batch = float(eps), images.shape[0]
    ref, predicted = maps.detach().float(), logits.argmax(-1)
    draw = _noise_draw(images, ids, seed, "uniform", float(low), float(high))
    best = torch.full((batch,), -math.inf, dtype=torch.float64, device=images.device)
    for draws, noisy, out in _explained_draws(explain, draw, int(samples), draws_per_call, batch):
        numerator = _norm(_relative(out, ref, eps))
        if needs_forward:
            assert forward is not None
            new_logits, new_repr = forward(noisy.flatten(0, 1))
            new_logits = new_logits.view(len(draws), batch, -1)
        if kind == "input":
            denominator = _norm(_relative(noisy, images, eps))
        elif kind == "output":
            denominator = _norm(new_logits - logits[None])
        else:
            assert new_repr is not None and representation is not None
            denominator = _norm(_relative(new_repr.view(len(draws), batch, -1),
                                          representation, eps))
        ratio = numerator / (denominator + (denominator == 0) * eps)
        if exclude_changed:
            ratio = ratio.masked_fill(new_logits.argmax(-1) != predicted, -math.inf)
        best = torch.maximum(best, ratio.amax(0))
    return best.masked_fill(best == -math.inf, math.nan).float()


def model_forward(model: nn.Module, layer: str | None = None,
                  representation: bool = False) -> Forward:
    """The `forward` of `relative_stability`: logits and, with `representation`, the flattened
    output of module `layer` (a name of model.named_modules()) or, with layer None, the input
    of the classifier (model.get_classifier(): timm's pre-logit features, =
    forward_head(forward_features(x), pre_logits=True)), both from the same forward.

    Raises:
        ConfigError: `layer` names no module, or layer None on a model without get_classifier.
    """
    if not representation:
        def plain(images: Tensor) -> tuple[Tensor, Tensor | None]:
            with torch.no_grad():
                return model(images), None

        return plain
    if layer is None:
        if not hasattr(model, "get_classifier"):
            raise ConfigError("layer: null takes the classifier's input (timm models); this "
                              f"model ({type(model).__name__}) has no get_classifier(): name "
                              "a module of model.named_modules().")
        module, pre = model.get_classifier(), True
    else:
        modules = dict(model.named_modules())
        if layer not in modules:
            names = ", ".join(n for n in list(modules)[1:8])
            raise ConfigError(f"layer {layer!r} is not a module of the model (e.g. {names}).")
        module, pre = modules[layer], False

    def forward(images: Tensor) -> tuple[Tensor, Tensor | None]:
        seen: list[Tensor] = []

        def keep(_m: nn.Module, args: tuple, out: Tensor | None = None) -> None:
            seen.append((args[0] if pre else out).detach().flatten(1))

        handle = (module.register_forward_pre_hook(keep) if pre
                  else module.register_forward_hook(keep))
        try:
            with torch.no_grad():
                logits = model(images)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise ConfigError(f"the representation layer ran {len(seen)} times in one forward; "
                              "name a module that runs once.")
        return logits, seen[0]

    return forward


def discretise(maps: Tensor, how: str = "top_k", k: int = 1, grid: int = 4,
               n: int = 5) -> Tensor:
    """One label per map (a 63-bit hash of its discrete form, equal across processes):

    top_k       the set of the k highest cells of the map mean-pooled on an even grid x grid
                split (pixel row i in cell row i * grid // H, columns alike; ties by cell index);
    top_n_sign  the signs of the first n values of the flattened map (quantus' default: the
                top-left pixels, not the most relevant);
    rank        the full descending order of the pixels (ties by pixel index).

    Args:
        maps: (B, H, W) maps.
        how, k, grid, n: The discretisation and its settings.

    Returns:
        (B,) int64 labels.
    """
    if how not in DISCRETISERS:
        raise ConfigError(f"discretise must be one of {DISCRETISERS}; got {how!r}.")
    flat = maps.detach().flatten(1)
    if how == "top_n_sign":
        _check_positive("n", n)
        codes = torch.sign(flat[:, : int(n)]).to(torch.int8)
    elif how == "rank":
        codes = flat.argsort(dim=1, descending=True, stable=True)
    else:
        _check_positive("k", k)
        _check_positive("grid", grid)
        height, width = maps.shape[1:]
        if int(grid) > min(height, width) or int(k) > int(grid) ** 2:
            raise ConfigError(f"grid must be <= the map's side ({min(height, width)}) and k <= "
                              f"grid^2; got grid={grid!r}, k={k!r}.")
        rows = torch.arange(height, device=maps.device) * int(grid) // height
        cols = torch.arange(width, device=maps.device) * int(grid) // width
        cell = (rows[:, None] * int(grid) + cols[None, :]).view(-1)
        sums = torch.zeros(flat.shape[0], int(grid) ** 2, dtype=torch.float64,
                           device=maps.device).index_add_(1, cell, flat.double())
        means = sums / torch.bincount(cell, minlength=int(grid) ** 2).double()
        codes = means.argsort(dim=1, descending=True, stable=True)[:, : int(k)].sort(1).values
    rows_bytes = codes.cpu().contiguous().numpy()
    return torch.tensor([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(),
                                        "little") >> 1 for row in rows_bytes], dtype=torch.int64)


def consistency(labels: Tensor, predicted: Tensor) -> Tensor:
    """Consistency (above) over every image given (the whole evaluated set).

    Args:
        labels: (N,) `discretise` labels of the maps.
        predicted: (N,) the predicted classes.

    Returns:
        (N,) for each image, the fraction of the other images with its label that share its
        predicted class; NaN where no other image has its label.
    """
    _, label_of, label_count = torch.unique(labels, return_inverse=True, return_counts=True)
    _, pair_of, pair_count = torch.unique(torch.stack([labels, predicted.to(labels)], dim=1),
                                          dim=0, return_inverse=True, return_counts=True)
    others = (label_count[label_of] - 1).double()  # O(N log N): no N x N comparison
    agree = (pair_count[pair_of] - 1).double()
    return (agree / others).masked_fill(others == 0, math.nan).float()
