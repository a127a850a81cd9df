"""Pixel-level attribution methods against captum (float64) and their invariants (DeepLIFT:
tests/test_explain_deeplift.py; LRP: tests/test_explain_lrp_cnn.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import InputXGradient as CaptumInputXGradient
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Saliency as CaptumSaliency
from tiny_models import tiny_vit
from torch import nn

from xai_bench.explain import gradients as G
from xai_bench.explain.base import build_method
from xai_bench.utils.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum.*")


class TinyCNN(nn.Module):
    """Conv -> ReLU -> Conv -> ReLU -> pool -> (functional or module) flatten -> Linear."""

    def __init__(self, flatten_module: bool = False) -> None:
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten() if flatten_module else None
        self.fc = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.r2(self.c2(self.r1(self.c1(x)))))
        return self.fc(self.flat(h) if self.flat is not None else h.flatten(1))


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().double().eval()


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return tiny_vit()


def _images(batch: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


TARGET = torch.tensor([0, 1, 1])


def _model(request: pytest.FixtureRequest, name: str) -> tuple[nn.Module, torch.Tensor]:
    model = request.getfixturevalue(name)
    return model, _images(size=32 if name == "vit" else 16)


@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_saliency_and_input_x_gradient_match_captum(request: pytest.FixtureRequest,
                                                    name: str) -> None:
    model, x = _model(request, name)
    ours = G.Saliency().attribute(model, x, TARGET)
    ref = CaptumSaliency(model).attribute(x, target=TARGET, abs=False)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    method = G.Saliency()
    torch.testing.assert_close(method.explain_raw(model, x, TARGET), ref.abs().max(dim=1).values)
    ixg = G.InputXGradient()
    ref = CaptumInputXGradient(model).attribute(x, target=TARGET)
    torch.testing.assert_close(ixg.attribute(model, x, TARGET), ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(ixg.explain_raw(model, x, TARGET), ref.sum(dim=1))


@pytest.mark.parametrize("name", ["cnn", "vit"])
@pytest.mark.parametrize("method", G.IG_METHODS)
def test_integrated_gradients_match_captum(request: pytest.FixtureRequest, name: str,
                                           method: str) -> None:
    model, x = _model(request, name)
    ref = CaptumIG(model).attribute(x, baselines=torch.zeros_like(x), target=TARGET, n_steps=6,
                                    method=method)
    # chunks mix steps/images
    ig = G.IntegratedGradients(n_steps=6, method=method, internal_batch_size=5)
    torch.testing.assert_close(ig.attribute(model, x, TARGET), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(ig.explain_raw(model, x, TARGET), ref.sum(dim=1), atol=1e-6, rtol=0)


def test_ig_chunking_does_not_change_the_result(vit: nn.Module) -> None:
    x = _images(2, 32)
    small = G.integrated_gradients_attr(vit, x, TARGET[:2], n_steps=64, internal_batch_size=8)
    large = G.integrated_gradients_attr(vit, x, TARGET[:2], n_steps=64, internal_batch_size=128)
    one = G.integrated_gradients_attr(vit, x, TARGET[:2], n_steps=64, internal_batch_size=1)
    torch.testing.assert_close(small, large, atol=1e-6, rtol=0)
    torch.testing.assert_close(one, large, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError):
        G.IntegratedGradients(method="simpson")
    with pytest.raises(ConfigError):
        G.IntegratedGradients(internal_batch_size=0)


def test_ig_completeness_with_gausslegendre(vit: nn.Module) -> None:
    """On a smooth (GELU) model Gauss-Legendre IG sums to f(x) - f(0) to high accuracy."""
    x = _images(size=32)
    attr = G.integrated_gradients_attr(vit, x, TARGET, n_steps=32)
    with torch.no_grad():
        gap = (vit(x) - vit(torch.zeros_like(x))).gather(1, TARGET[:, None])[:, 0]
    torch.testing.assert_close(attr.flatten(1).sum(1), gap, atol=1e-6, rtol=1e-4)


def test_guided_backprop_matches_captum_on_relu_cnn(cnn: nn.Module) -> None:
    x = _images()
    ref = CaptumGuidedBackprop(cnn).attribute(x, target=TARGET)
    gb = G.GuidedBackprop()
    torch.testing.assert_close(gb.attribute(cnn, x, TARGET), ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(gb.explain_raw(cnn, x, TARGET), ref.abs().sum(dim=1))


def test_guided_backprop_gelu_rule_on_vit(vit: nn.Module) -> None:
    x = _images(size=32)
    plain = G.Saliency().attribute(vit, x, TARGET)
    guided = G.GuidedBackprop(gelu_rule=True).attribute(vit, x, TARGET)
    assert not torch.allclose(guided, plain, atol=1e-6)
    with pytest.warns(UserWarning, match="plain input gradient"):
        off = G.GuidedBackprop(gelu_rule=False).attribute(vit, x, TARGET)
    torch.testing.assert_close(off, plain, atol=0, rtol=0)


def test_gelu_derivative_matches_autograd() -> None:
    x = torch.linspace(-5, 5, 101, dtype=torch.float64, requires_grad=True)
    for approximate in ("none", "tanh"):
        (ref,) = torch.autograd.grad(nn.functional.gelu(x, approximate=approximate).sum(), x)
        torch.testing.assert_close(G.gelu_derivative(x.detach(), approximate), ref)


def test_guided_backprop_differentiable_reaches_the_weights(cnn: nn.Module) -> None:
    x = _images()
    gb = G.guided_backprop_differentiable(cnn, x, "predicted")
    assert gb.shape == (3, 16, 16) and gb.requires_grad
    (grad,) = torch.autograd.grad(gb.pow(2).sum(), cnn.c1.weight)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        target = cnn(x).argmax(1)
    torch.testing.assert_close(gb.detach(), G.GuidedBackprop().explain_raw(cnn, x, target))


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "integrated_gradients",
                                  "guided_backprop"])
def test_batch_equals_single_calls(request: pytest.FixtureRequest, name: str) -> None:
    model, x = _model(request, "vit" if name in ("saliency", "integrated_gradients") else "cnn")
    kwargs = {"n_steps": 8} if name == "integrated_gradients" else {}
    method = build_method(name, **kwargs)
    batch = method(model, x, TARGET)
    assert batch.maps.shape == (3, *x.shape[-2:]) and batch.raw.shape == (3, *x.shape[-2:])
    for i in range(3):
        single = method(model, x[i:i + 1], TARGET[i:i + 1])
        torch.testing.assert_close(single.raw[0], batch.raw[i], atol=1e-8, rtol=1e-6)
        torch.testing.assert_close(single.maps[0], batch.maps[i], atol=1e-5, rtol=1e-5)


def test_channel_reduction_settings(cnn: nn.Module) -> None:
    x = _images()
    grad = G.Saliency().attribute(cnn, x, TARGET)
    for reduction, ref in (("max", grad.max(1).values), ("sum", grad.sum(1)),
                           ("mean", grad.mean(1))):
        torch.testing.assert_close(
            G.Saliency(abs=False, channel_reduction=reduction).explain_raw(cnn, x, TARGET), ref)
    with pytest.raises(ConfigError):
        G.Saliency(channel_reduction="median")


def test_random_map_is_seeded(cnn: nn.Module) -> None:
    x = _images()
    first = build_method("random", seed=3)(cnn, x)
    again = build_method("random", seed=3)(cnn, x)
    other = build_method("random", seed=4)(cnn, x)
    assert first.raw.shape == (3, 16, 16) and first.maps.shape == (3, 16, 16)
    assert torch.equal(first.raw, again.raw) and not torch.equal(first.raw, other.raw)
    assert 0 <= float(first.raw.min()) and float(first.raw.max()) <= 1
    assert build_method("random").needs_grad is False


def test_model_state_is_restored(cnn: nn.Module) -> None:
    cnn.train()
    cnn.c1.weight.requires_grad_(False)
    try:
        for name in ("saliency", "guided_backprop", "integrated_gradients"):
            method = (build_method(name, n_steps=4) if name == "integrated_gradients"
                      else build_method(name))
            method(cnn, _images())
            assert cnn.training and not cnn.c1.weight.requires_grad and cnn.c2.weight.requires_grad
    finally:
        cnn.c1.weight.requires_grad_(True)
        cnn.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        G.Saliency().attribute(cnn, _images(), TARGET)
