"""Noise tunnel (SmoothGrad, SmoothGrad-squared, VarGrad), GradientSHAP and DeepLiftSHAP against
captum (float64) with the SAME random draws: captum's noise, baseline and interpolation draws are
monkeypatched to return ours, and DeepLiftSHAP gets our baselines. Plus hand cases, batching
invariance, passes and invalid settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import DeepLiftShap as CaptumDeepLiftShap
from captum.attr import GradientShap as CaptumGradientShap
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import InputXGradient as CaptumInputXGradient
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import NoiseTunnel as CaptumNoiseTunnel
from captum.attr import Saliency as CaptumSaliency
from scipy import ndimage
from tiny_models import tiny_cnn, tiny_vit
from torch import nn

from xai_bench.explain import shap
from xai_bench.explain.base import build_method
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum.*")

TARGET = torch.tensor([0, 1, 1])
IDS = torch.tensor([11, 4, 7])



@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return tiny_cnn()


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return tiny_vit()


def _images(size: int) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def _model(request: pytest.FixtureRequest, name: str) -> tuple[nn.Module, torch.Tensor]:
    return request.getfixturevalue(name), _images(32 if name == "vit" else 16)


def _range(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    return flat.max(1).values - flat.min(1).values


CAPTUM_BASES = {
    "saliency": (lambda m: CaptumSaliency(m), {"abs": False}),
    "input_x_gradient": (lambda m: CaptumInputXGradient(m), {}),
    "integrated_gradients": (lambda m: CaptumIG(m), {"n_steps": 4, "method": "gausslegendre"}),
    "guided_backprop": (lambda m: CaptumGuidedBackprop(m), {}),
    "deeplift": (lambda m: CaptumDeepLift(m), {"baselines": 0.0}),  # no max pool: captum is right
}
CASES = [("cnn", "saliency"), ("vit", "saliency"), ("cnn", "integrated_gradients"),
         ("cnn", "guided_backprop"), ("vit", "input_x_gradient"), ("cnn", "deeplift")]


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize(("name", "base"), CASES)
def test_noise_tunnel_matches_captum_with_the_same_noise(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, name: str, base: str,
        nt_type: str) -> None:
    model, x = _model(request, name)
    samples, stdev, seed = 4, 0.2, 3
    settings = {"n_steps": 4} if base == "integrated_gradients" else {}
    method = build_method(nt_type, base=base, base_settings=settings, samples=samples,
                          stdev=stdev, seed=seed, batch_size=5)
    method.current_ids = IDS
    ours = method.attribute(model, x, TARGET)
    # the noise each copy gets: sigma = stdev x the image's range, seeded by (seed, id, k)
    sigma = (stdev * _range(x)).view(-1, 1, 1, 1, 1)
    noise = torch.stack([seeded_normal(IDS, tuple(x.shape[1:]), seed=seed, stream=k)
                         for k in range(samples)], dim=1).double() * sigma

    def same_noise(inp: torch.Tensor, _stdev: float, n: int) -> torch.Tensor:
        assert n == samples and inp.shape[0] == x.shape[0]
        return inp.repeat_interleave(n, dim=0) + noise.reshape(-1, *x.shape[1:])

    monkeypatch.setattr(CaptumNoiseTunnel, "_add_noise_to_input", staticmethod(same_noise))
    make, kwargs = CAPTUM_BASES[base]
    ref = CaptumNoiseTunnel(make(model)).attribute(x, nt_type=nt_type, nt_samples=samples,
                                                   target=TARGET, **kwargs)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-7)
    # the base's reduction afterwards (saliency: |.| then max; guided backprop: |.| summed;
    # the others: signed sum)
    torch.testing.assert_close(method.explain_raw(model, x, TARGET),
                               _reduce(ref, base == "saliency" or base == "guided_backprop",
                                       "max" if base == "saliency" else "sum"))


def _reduce(attr: torch.Tensor, take_abs: bool, reduction: str) -> torch.Tensor:
    values = attr.abs() if take_abs else attr
    return {"max": lambda v: v.max(1).values, "sum": lambda v: v.sum(1)}[reduction](values)


def test_noise_tunnel_hand_case_on_a_linear_model() -> None:
    """f(x) = w . x has the gradient w everywhere: SmoothGrad = w, squared = w^2, VarGrad = 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double().eval()
    x = _images(4)
    w = model[1].weight.detach().view(2, 3, 4, 4)[TARGET]
    for nt_type, expected in [("smoothgrad", w), ("smoothgrad_sq", w * w),
                              ("vargrad", torch.zeros_like(w))]:
        method = build_method(nt_type, samples=3, stdev=0.5)
        torch.testing.assert_close(method.attribute(model, x, TARGET), expected)


def test_noise_tunnel_does_not_depend_on_batching(cnn: nn.Module) -> None:
    x = _images(16)
    full = build_method("vargrad", samples=5, batch_size=64)(cnn, x, TARGET, ids=IDS).raw
    for batch_size in (1, 4):
        chunked = build_method("vargrad", samples=5, batch_size=batch_size)
        torch.testing.assert_close(chunked(cnn, x, TARGET, ids=IDS).raw, full)
    alone = build_method("vargrad", samples=5)(cnn, x[1:], TARGET[1:], ids=IDS[1:]).raw
    torch.testing.assert_close(alone, full[1:])  # an image's noise is keyed by its id
    other_ids = build_method("vargrad", samples=5)(cnn, x, TARGET, ids=IDS + 1).raw
    assert not torch.allclose(other_ids, full)


class _Counter:
    """Images through the model's forward (tests/test_explain_catalog.py counts backwards)."""

    def __init__(self, model: nn.Module) -> None:
        self.forwards = 0
        self.handle = model.register_forward_hook(self.hook)

    def hook(self, _m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        self.forwards += inputs[0].shape[0]


def test_passes_are_counted(cnn: nn.Module) -> None:
    x = _images(16)
    for method, expected, backwards in [
        (build_method("smoothgrad", samples=3, batch_size=4), 1 + 3, 3),
        (build_method("smoothgrad", base="integrated_gradients", samples=2,
                      base_settings={"n_steps": 5}), 1 + 2 * 5, 2 * 5),
        (build_method("gradient_shap", samples=6, batch_size=5), 1 + 6, 6),
        # deeplift: an image forward (no graph) and a reference forward, one backward;
        # deeplift_shap: one image forward for all its baselines
        (build_method("smoothgrad", base="deeplift", samples=3, batch_size=4), 1 + 3 * 2, 3),
        (build_method("deeplift_shap", n_baselines=3, batch_size=4), 1 + 3, 3),
    ]:
        counter = _Counter(cnn)
        try:
            method(cnn, x, TARGET)
        finally:
            counter.handle.remove()
        assert counter.forwards == expected * x.shape[0]
        declared = method.passes(cnn, 16, 16)
        assert declared.forwards == expected and declared.backwards == backwards


# ----------------------------------------------------------------------------------------------
# GradientSHAP


def _captum_gradient_shap(monkeypatch: pytest.MonkeyPatch, model: nn.Module,
                          method: shap.GradientShap, x: torch.Tensor) -> torch.Tensor:
    """captum GradientShap image by image (its baselines are one distribution for the whole
    batch; ours are per image) with our baselines, noise, alphas and baseline picks."""
    bases = method.baseline_images(x)
    alphas, index = method.draws(x)
    sigma = shap.noise_sigma(x, method.stdev, method.stdev_mode)
    n = method.samples
    out = []
    for i in range(x.shape[0]):
        ks = torch.arange(n)
        noise = sigma[i] * method.noise(x, ks, torch.full((n,), i))
        monkeypatch.setattr(CaptumNoiseTunnel, "_add_noise_to_input", staticmethod(
            lambda inp, _s, k, noise=noise: inp.repeat_interleave(k, dim=0) + noise))
        monkeypatch.setattr(np.random, "choice", lambda num, size, i=i: (
            np.asarray(index[i].tolist()) if (num, size) == (bases.shape[1], n) else None))
        monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size, i=i: (
            alphas[i].numpy() if (lo, hi, size) == (0.0, 1.0, n) else None))
        out.append(CaptumGradientShap(model).attribute(
            x[i:i + 1], baselines=bases[i], n_samples=n, stdevs=float(sigma[i]),
            target=int(TARGET[i])))
        monkeypatch.undo()
    return torch.cat(out)


@pytest.mark.parametrize(("name", "baselines", "stdev"), [
    ("cnn", "uniform", 0.1), ("cnn", "zero", 0.0), ("cnn", "blur", 0.2), ("vit", "uniform", 0.0),
    ("vit", "blur", 0.1)])
def test_gradient_shap_matches_captum_with_the_same_draws(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, name: str,
        baselines: str, stdev: float) -> None:
    model, x = _model(request, name)
    method = build_method("gradient_shap", baselines=baselines, n_baselines=3, samples=5,
                          stdev=stdev, blur_sigma=2.0, batch_size=4, seed=2)
    method.current_ids = IDS
    ours = method.attribute(model, x, TARGET)
    ref = _captum_gradient_shap(monkeypatch, model, method, x)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(method.explain_raw(model, x, TARGET), ref.sum(dim=1))


def test_gradient_shap_draws_are_per_image_and_cover_the_baselines(cnn: nn.Module) -> None:
    x = _images(16)
    method = build_method("gradient_shap", n_baselines=4, samples=200, stdev=0.1)
    full = method(cnn, x, TARGET, ids=IDS).raw
    torch.testing.assert_close(method(cnn, x[2:], TARGET[2:], ids=IDS[2:]).raw, full[2:])
    chunked = build_method("gradient_shap", n_baselines=4, samples=200, stdev=0.1, batch_size=7)
    torch.testing.assert_close(chunked(cnn, x, TARGET, ids=IDS).raw, full)
    method.current_ids = IDS
    alphas, index = method.draws(x)
    assert alphas.min() >= 0 and alphas.max() < 1 and 0.4 < alphas.mean() < 0.6
    assert set(index.flatten().tolist()) == {0, 1, 2, 3}
    bases = method.baseline_images(x)  # uniform in each image's own [min, max]
    flat = x.flatten(1)
    assert (bases.flatten(2).min(2).values >= flat.min(1).values[:, None]).all()
    assert (bases.flatten(2).max(2).values <= flat.max(1).values[:, None]).all()


def test_gradient_shap_on_a_linear_model_is_exact() -> None:
    """For f = w . x the gradient is w at every point: GradientSHAP = mean_k (x + e_k - b_k) w;
    with zero baselines and no noise, x * w (completeness holds exactly)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double().eval()
    x = _images(4)
    w = model[1].weight.detach().view(2, 3, 4, 4)[TARGET]
    method = build_method("gradient_shap", baselines="zero", samples=3)
    torch.testing.assert_close(method.attribute(model, x, TARGET), x * w)


def test_blur_baseline_matches_scipy() -> None:
    x = _images(16)
    ours = shap.gaussian_blur(x, 2.0)
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 2.0, 2.0), mode="nearest", truncate=3.0)
    torch.testing.assert_close(ours, torch.from_numpy(ref), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------
# DeepLiftSHAP


@pytest.mark.parametrize(("baselines", "n_baselines"), [("uniform", 3), ("zero", 1), ("blur", 1)])
def test_deeplift_shap_matches_captum(cnn: nn.Module, baselines: str, n_baselines: int) -> None:
    """captum image by image with our baselines (DeepLiftShap needs >= 2 of them; one baseline
    is plain DeepLift). TinyCNN has no max pool, where captum's DeepLift is right."""
    x = _images(16)
    method = build_method("deeplift_shap", baselines=baselines, n_baselines=n_baselines,
                          blur_sigma=2.0, batch_size=2, seed=5)
    method.current_ids = IDS
    ours = method.attribute(cnn, x, TARGET)
    bases = method.baseline_images(x)
    assert bases.shape[1] == n_baselines
    ref = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        oracle = CaptumDeepLiftShap(cnn) if n_baselines > 1 else CaptumDeepLift(cnn)
        ref.append(oracle.attribute(xi, baselines=bases[i], target=int(TARGET[i])).detach())
    ref = torch.cat(ref)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(method.explain_raw(cnn, x, TARGET), ref.sum(dim=1))


def test_deeplift_shap_sums_to_the_mean_delta_through_max_pooling() -> None:
    """sum(a) = f_t(x) - mean_j f_t(b_j), also with a ReLU next to a max pool (where captum's
    DeepLift loses the sum): the average of exact DeepLIFT deltas."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2)).double().eval()
    x = _images(16)
    method = build_method("deeplift_shap", n_baselines=4, batch_size=5)
    out = method(model, x, TARGET, ids=IDS)
    method.current_ids = IDS
    attr, bases = method.attribute(model, x, TARGET), method.baseline_images(x)
    with torch.no_grad():
        fx = model(x).gather(1, TARGET[:, None]).squeeze(1)
        fb = torch.stack([model(bases[:, j]).gather(1, TARGET[:, None]).squeeze(1)
                          for j in range(4)], 1)
    torch.testing.assert_close(attr.sum((1, 2, 3)), fx - fb.mean(1), atol=1e-10, rtol=0)
    torch.testing.assert_close(out.raw, attr.sum(1))
    alone = build_method("deeplift_shap", n_baselines=4)(model, x[:1], TARGET[:1], ids=IDS[:1])
    torch.testing.assert_close(alone.raw, out.raw[:1])


def test_deeplift_shap_refuses_a_vit(vit: nn.Module) -> None:
    with pytest.raises(ConfigError, match="for CNNs"):
        build_method("deeplift_shap")(vit, _images(32), TARGET)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("smoothgrad", {"base": "gradcam"}), ("smoothgrad", {"base": "gradient_shap"}),
    ("vargrad", {"base": "nope"}), ("smoothgrad", {"samples": 0}),
    ("smoothgrad_sq", {"stdev": -0.1}), ("smoothgrad", {"stdev_mode": "relative"}),
    ("smoothgrad", {"batch_size": 0}), ("smoothgrad", {"channel_reduction": "median"}),
    ("gradient_shap", {"baselines": "black"}), ("gradient_shap", {"n_baselines": 0}),
    ("gradient_shap", {"blur_sigma": 0}), ("gradient_shap", {"samples": 0}),
    ("gradient_shap", {"batch_size": 0}), ("gradient_shap", {"stdev_mode": "x"}),
    ("deeplift_shap", {"baselines": "mean"}), ("deeplift_shap", {"n_baselines": 0}),
])
def test_invalid_settings_are_config_errors(name: str, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        build_method(name, **kwargs)
