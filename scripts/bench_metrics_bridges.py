"""The bench rows whose peer run needs more than settings (scripts/bench_metrics.py).

As in the metric tests, each makes Quantus 0.6 (captum 0.9 for Infidelity) compute what ours
computes, so that the timed runs are the same computation:
- a one-channel view of the model (`Gray`) where Quantus fails on RGB (IROF asserts, ROAD
  indexes channel elements as pixels, NonSensitivity broadcasts per-pixel maps over the
  channels); NonSensitivity on 16 px blocks besides, since Quantus cannot group pixels and one
  forward per pixel of a 224 px image is 50176 per image;
- the randomisation tests' layer seeding (`quantus_layer_seeding`) on a copy of the model whose
  parameters that no module resets are buffers (`frozen_embeddings`): Quantus re-initialises
  every module with `reset_parameters` after torch.manual_seed(seed + 1) and never the ViT's
  class token and position embedding; ours with granularity "modules" then has the same steps
  and, seeded the same, bit-identical randomised models;
- our seeded draws handed to np.random (RandomLogit's other class, ROAD's imputation noise,
  SmoothMPRT's input noise, FaithfulnessCorrelation's pixel sets) or to captum's perturb_func.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.utils.seeded_noise import seeded_normal, seeded_permutation

if TYPE_CHECKING:
    from bench_metrics_quantus import Ctx

QUANTUS_SEED = 42  # Quantus' default seed of the randomisation metrics


def _q() -> Any:
    import quantus

    return quantus


def _arr(out: Any) -> np.ndarray:
    return np.asarray(out, dtype=np.float64)


@contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name = value` for the duration."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def feed(name: str, draws: Iterator[np.ndarray]) -> Iterator[None]:
    """Replace np.random.<name> (Quantus' perturbations draw with it) by our seeded draws."""
    with patched(np.random, name, lambda *a, **k: np.array(next(draws), copy=True)):
        yield


@contextmanager
def trapz() -> Iterator[None]:
    """Quantus 0.6 calls np.trapz, which numpy 2 removed."""
    missing = not hasattr(np, "trapz")
    if missing:
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if missing:
            del np.trapz  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------
# model views


class Gray(nn.Module):
    """The model on a one-channel image: (B, 1, h, w) upsampled `block` times (nearest, each
    pixel a block x block square) and repeated to the model's channels."""

    def __init__(self, model: nn.Module, channels: int = 3, block: int = 1) -> None:
        super().__init__()
        self.model, self.channels, self.block = model, channels, block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.block > 1:
            x = x.repeat_interleave(self.block, dim=2).repeat_interleave(self.block, dim=3)
        return self.model(x.expand(-1, self.channels, -1, -1))


def gray_images(x: torch.Tensor, block: int = 1) -> torch.Tensor:
    """The channel mean of (B, C, H, W) images, averaged over block x block squares."""
    gray = x.mean(dim=1, keepdim=True)
    return F.avg_pool2d(gray, block) if block > 1 else gray


def frozen_embeddings(model: nn.Module) -> nn.Module:
    """A copy whose parameters owned by modules without `reset_parameters` (a timm ViT's class
    token and position embedding) are buffers: the same function, and the parameters Quantus'
    randomisation never redraws are no randomisation step of ours either."""
    out = copy.deepcopy(model)
    for module in out.modules():
        if callable(getattr(module, "reset_parameters", None)):
            continue
        for name, param in list(module._parameters.items()):
            if param is not None:
                del module._parameters[name]
                module.register_buffer(name, param.detach())
    return out


class FirstConvFirst(nn.Module):
    """The model with its first Conv2d registered first. Quantus' InputInvariance shifts the
    bias of the model's first named module, on a timm ViT the bias-less PatchEmbed wrapper
    (AttributeError); the patch convolution itself is unpadded, where Quantus' one bias per
    channel absorbs the shift exactly (tests/test_metrics_axiomatic.py)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@contextmanager
def quantus_layer_seeding() -> Iterator[None]:
    """Our randomisation steps seeded as Quantus seeds every layer, torch.manual_seed(seed + 1)
    (what tests/test_metrics_sanity.py and test_metrics_randomisation.py inject)."""
    from xai_bench.metrics.functional import randomisation as F_rand
    from xai_bench.metrics.functional import sanity as F_sanity

    def seed(*_: Any, **__: Any) -> int:
        return QUANTUS_SEED + 1

    with patched(F_sanity, "image_seed", seed), patched(F_rand, "image_seed", seed):
        yield


# ----------------------------------------------------------------------------------------------
# matching our table with the peer's scores


def by_layer(table: dict[str, torch.Tensor], theirs: dict[str, Any]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Our `<key>/.../<step>_<layer>` columns against Quantus' {layer: scores}, the layers
    both have (Quantus adds "original")."""
    ours = {col.rsplit("/", 1)[-1].split("_", 1)[1]: values for col, values in table.items()
            if col != "id"}
    common = [name for name in ours if name in theirs]
    if not common:
        raise ValueError(f"no layer in common: ours {list(ours)[:3]}, theirs {list(theirs)[:3]}")
    return (np.stack([ours[n].double().cpu().numpy() for n in common], axis=1),
            np.stack([_arr(theirs[n]) for n in common], axis=1))


def columns(*names: str) -> Callable[[dict[str, torch.Tensor], Any],
                                     tuple[np.ndarray, np.ndarray]]:
    """Our columns `names` against the peer's (B, len(names)) scores."""

    def pair(table: dict[str, torch.Tensor], theirs: Any) -> tuple[np.ndarray, np.ndarray]:
        mine = np.stack([table[n].double().cpu().numpy().reshape(-1) for n in names], axis=1)
        return mine, _arr(theirs).reshape(mine.shape)

    return pair


# ----------------------------------------------------------------------------------------------
# peers


def random_logit(c: Ctx) -> np.ndarray:
    """np.random.randint(0, K - 1, B) returns our per-image draw of the other class."""
    from quantus.functions.similarity_func import correlation_spearman

    draws = seeded_permutation(c.ids, c.classes - 1, seed=0)[:, 0].numpy()
    metric = _q().RandomLogit(similarity_func=correlation_spearman, num_classes=c.classes,
                              seed=QUANTUS_SEED, abs=False, normalise=False,
                              disable_warnings=True)
    with feed("randint", itertools.repeat(draws, 1)):
        return _arr(metric(model=c.model, x_batch=c.x, y_batch=c.y, a_batch=c.maps[:, None],
                           explain_func=c.explain, device="cpu", batch_size=len(c.x)))


def irof(c: Ctx) -> np.ndarray:
    """One image at a time (a batched call fills with the batch's minimum), SLIC at our
    n_segments (Quantus: skimage's default 100)."""
    from skimage.segmentation import slic

    def segments(img: np.ndarray, segmentation_method: str) -> np.ndarray:
        return slic(img, n_segments=c.args.segments, compactness=10.0, start_label=0)

    out: list[float] = []
    with patched(_q().helpers.utils, "get_superpixel_segments", segments), trapz():
        for i in range(len(c.x)):
            metric = _q().IROF(perturb_baseline="black", normalise=False, abs=False,
                               return_aggregate=False, disable_warnings=True)
            out += list(metric(model=c.model, x_batch=c.x[i:i + 1], y_batch=c.y[i:i + 1],
                               a_batch=c.maps[i:i + 1, None], device="cpu"))
    return _arr(out)


ROAD_PERCENTAGES = (30, 70)


def road(c: Ctx) -> np.ndarray:
    """One image at a time (Quantus returns the batch's accuracy per percentage); its
    np.random.randn returns our seeded N(0, 1) draws at the pixels it imputes, in its order."""
    (height, width), out = c.maps.shape[1:], []
    for b in range(len(c.x)):
        order = np.argsort(-c.maps[b].reshape(-1))
        draws = [seeded_normal(c.ids[b:b + 1], (1, height, width), seed=0, stream=step)[0]
                 .numpy().reshape(1, -1)[:, order[:int(height * width * q / 100)]]
                 for step, q in enumerate(ROAD_PERCENTAGES)]
        metric = _q().ROAD(percentages=list(ROAD_PERCENTAGES), noise=0.01, normalise=False,
                           abs=False, disable_warnings=True)
        with feed("randn", iter(draws)):
            scores = metric(model=c.model, x_batch=c.x[b:b + 1], y_batch=c.y[b:b + 1],
                            a_batch=c.maps[b:b + 1, None], device="cpu")
        out.append(np.mean([scores[q] for q in ROAD_PERCENTAGES]))
    return _arr(out)


def non_sensitivity(c: Ctx) -> np.ndarray:
    metric = _q().NonSensitivity(eps=1e-5, features_in_step=1, abs=True, normalise=False,
                                 perturb_baseline="black", disable_warnings=True)
    return _arr(metric(model=c.model, x_batch=c.x, y_batch=c.y, a_batch=c.maps[:, None],
                       device="cpu"))


INFIDELITY_STD = 0.1


def infidelity(c: Ctx) -> np.ndarray:
    """captum's infidelity with its perturb_func returning our draws I (and x - I): it
    repeat_interleaves the inputs, so row b J + j is draw j of image b."""
    from captum.metrics import infidelity as captum_infidelity

    x, samples = torch.as_tensor(c.x), c.args.samples
    noise = torch.stack([seeded_normal(c.ids, tuple(x.shape[1:]), seed=0, stream=j,
                                       std=INFIDELITY_STD) for j in range(samples)],
                        dim=1).reshape(-1, *x.shape[1:])

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return noise, inputs - noise

    maps = torch.as_tensor(c.maps)[:, None].expand_as(x).contiguous()
    return captum_infidelity(c.model, perturb, x, maps, target=torch.as_tensor(c.y),
                             n_perturb_samples=samples, normalize=True).double().numpy()


def sensitivity_n(c: Ctx, sizes: list[int]) -> np.ndarray:
    """Ancona et al.'s sensitivity-n at set size n is Quantus' FaithfulnessCorrelation at
    subset_size C n with our pixel sets (all channels of each), per size: (B, sizes). Its
    assert that C n < H W is lifted: it draws the C n from the C H W channel elements."""
    from xai_bench.metrics.functional.faithfulness_correlation import _SIZE_STREAM

    hw, channels, runs = c.maps.shape[1] * c.maps.shape[2], c.x.shape[1], c.args.samples
    out = []
    for k, size in enumerate(sizes):
        subsets = [seeded_permutation(c.ids, hw, seed=0, stream=k * _SIZE_STREAM + r)[:, :size]
                   for r in range(runs)]
        draws = iter([torch.cat([ch * hw + s for ch in range(channels)]).numpy()
                      for subset in subsets for s in subset])
        metric = _q().FaithfulnessCorrelation(
            subset_size=channels * size, nr_runs=runs, perturb_baseline="black",
            return_aggregate=False, normalise=False, abs=False, disable_warnings=True)
        with feed("choice", draws), patched(_q().helpers.asserts,
                                            "assert_value_smaller_than_input_size",
                                            lambda **_: None):
            out.append(_arr(metric(model=c.model, x_batch=c.x, y_batch=c.y,
                                   a_batch=c.maps[:, None], device="cpu", softmax=True)))
    return np.stack(out, axis=1)


def mprt(c: Ctx) -> dict[str, Any]:
    """Quantus' top-down cascade = our "cascading"; Spearman on both sides."""
    metric = _q().MPRT(layer_order="top_down", seed=QUANTUS_SEED, abs=False, normalise=False,
                       disable_warnings=True)
    return metric(model=c.model, x_batch=c.x, y_batch=c.y, a_batch=c.maps[:, None],
                  explain_func=c.explain, device="cpu")


SMOOTH_NOISE = 0.1


def smooth_mprt(c: Ctx) -> dict[str, Any]:
    """Its np.random.randn returns our per-image noise, sample by sample; its noisy samples are
    explained by `quantus.explain` (captum) whatever explain_func is: routed to our method."""
    samples = c.args.samples
    draws = [seeded_normal(c.ids, tuple(c.x.shape[1:]), seed=0, stream=n).double().numpy()
             for n in range(samples - 1)]
    metric = _q().SmoothMPRT(layer_order="bottom_up", seed=QUANTUS_SEED, nr_samples=samples,
                             noise_magnitude=SMOOTH_NOISE, skip_layers=True, abs=False,
                             normalise=False, disable_warnings=True)
    with feed("randn", itertools.cycle(draws)), patched(_q(), "explain", c.explain):
        return metric(model=c.model, x_batch=c.x, y_batch=c.y, a_batch=None,
                      explain_func=c.explain, device="cpu")


def efficient_mprt(c: Ctx) -> np.ndarray:
    """Quantus' default bottom-up cascade to the fully randomised model; float64 maps (its
    histograms), as the test."""

    def explain64(model: nn.Module, inputs: np.ndarray, targets: np.ndarray,
                  **kw: Any) -> np.ndarray:
        return c.explain(model, inputs, targets, **kw).astype(np.float64)

    metric = _q().EfficientMPRT(layer_order="bottom_up", seed=QUANTUS_SEED, skip_layers=True,
                                abs=False, normalise=False, disable_warnings=True)
    return _arr(metric(model=c.model, x_batch=c.x, y_batch=c.y,
                       a_batch=c.maps[:, None].astype(np.float64), explain_func=explain64,
                       device="cpu"))


def input_invariance(c: Ctx) -> np.ndarray:
    """Quantus' default perturb_func shifts every element but the first: one that shifts all."""

    def shift_all(arr: np.ndarray, indices: Any, indexed_axes: Any, input_shift: float,
                  **_: Any) -> np.ndarray:
        return arr + input_shift

    metric = _q().InputInvariance(input_shift=-1.0, perturb_func=shift_all, abs=False,
                                  normalise=False, disable_warnings=True)
    return _arr(metric(model=FirstConvFirst(c.model), x_batch=c.x, y_batch=c.y,
                       a_batch=c.maps[:, None], explain_func=c.explain, device="cpu"))


def make_variant(kind: str, model: nn.Module, x: torch.Tensor,
                 region: int) -> tuple[nn.Module, torch.Tensor]:
    """The model and images a row runs on besides the benchmark's own ("rgb"): "gray" (the
    one-channel view), "gray_blocks" (the one-channel view on `region` px blocks) or "frozen"
    (the model with its embeddings as buffers, for the randomisation rows)."""
    if kind == "gray":
        return Gray(model, x.shape[1]).eval(), gray_images(x)
    if kind == "gray_blocks":
        if x.shape[-1] % region or x.shape[-2] % region:
            raise ValueError(f"--region {region} must divide the image size {x.shape[-1]}")
        return Gray(model, x.shape[1], region).eval(), gray_images(x, region)
    if kind == "frozen":
        return frozen_embeddings(model).eval(), x
    raise ValueError(f"unknown variant {kind!r}")
