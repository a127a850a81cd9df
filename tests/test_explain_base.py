"""The shared explain interface: targets, post-processing, model state, registry."""

from __future__ import annotations

import math

import pytest
import torch

from xai_bench.explain.base import (
    ExplainMethod,
    model_state,
    normalize,
    resolve_target,
    upsample,
)
from xai_bench.explain.vit_geometry import capture_attention, token_grid, tokens_to_grid
from xai_bench.models import build_model
from xai_bench.utils.errors import ConfigError


def test_resolve_target_variants() -> None:
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])
    assert resolve_target("predicted", logits).tolist() == [1, 0, 1]
    assert resolve_target(None, logits).tolist() == [1, 0, 1]
    assert resolve_target(1, logits).tolist() == [1, 1, 1]
    assert resolve_target("label", logits, torch.tensor([0, 0, 1])).tolist() == [0, 0, 1]
    assert resolve_target(torch.tensor([1, 0, 0]), logits).tolist() == [1, 0, 0]
    with pytest.raises(ConfigError):
        resolve_target(2, logits)
    with pytest.raises(ConfigError, match="labels"):
        resolve_target("label", logits)
    with pytest.raises(ConfigError):
        resolve_target("biggest", logits)


def test_upsample_nearest_makes_blocks_and_bilinear_is_smooth() -> None:
    raw = torch.arange(4.0).view(1, 2, 2)
    near = upsample(raw, (4, 4), "nearest")
    assert (torch.equal(near[0, :2, :2], torch.zeros(2, 2))
            and torch.equal(near[0, 2:, 2:], torch.full((2, 2), 3.0)))
    bil = upsample(raw, (4, 4), "bilinear")
    assert bil[0, 0, 0] == 0.0 and 0.0 < bil[0, 1, 1] < 3.0
    with pytest.raises(ConfigError):
        upsample(raw, (4, 4), "bicubic")


def test_minmax_per_map_and_constant_maps() -> None:
    maps = torch.stack([torch.tensor([[1.0, 3.0], [2.0, 5.0]]), torch.full((2, 2), 7.0)])
    out = normalize(maps)
    assert out[0].min() == 0.0 and out[0].max() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map has no evidence: all zero
    assert torch.equal(normalize(maps, "none"), maps)


def test_model_state_restores_mode_flags_and_grads() -> None:
    model = build_model("vit_tiny_patch16_224", 2, 32, patch_size=8, depth=2, embed_dim=32,
                        num_heads=2)
    model.train()
    model.blocks[0].attn.fused_attn = True
    model.head.weight.requires_grad_(False)
    with model_state(model):
        assert not model.training
        model.blocks[0].attn.fused_attn = False
        for p in model.parameters():
            p.requires_grad_(True)
    assert model.training and model.blocks[0].attn.fused_attn is True
    assert model.head.weight.requires_grad is False


@pytest.mark.parametrize("kwargs,prefix,grid", [
    ({}, 1, (4, 4)),
    ({"img_size": 48}, 1, (6, 6)),
])
def test_token_geometry_and_attention_capture(kwargs: dict, prefix: int,
                                              grid: tuple[int, int]) -> None:
    size = kwargs.pop("img_size", 32)
    model = build_model("vit_tiny_patch16_224", 2, size, patch_size=8, depth=2, embed_dim=32,
                        num_heads=2).eval()
    assert token_grid(model) == (prefix, *grid)
    x = torch.randn(2, 3, size, size)
    fused_out = model(x)
    with capture_attention(model) as attn:
        out = model(x)
    assert len(attn) == 2 and attn[0].shape == (2, 2, prefix + grid[0] * grid[1],
                                                prefix + grid[0] * grid[1])
    assert torch.allclose(attn[0].sum(-1), torch.ones(()), atol=1e-5)
    assert torch.allclose(out, fused_out, atol=1e-5)
    tokens = torch.randn(2, prefix + grid[0] * grid[1], 5)
    assert tokens_to_grid(tokens, model).shape == (2, *grid, 5)


def test_distilled_vit_has_two_prefix_tokens() -> None:
    model = build_model("deit_tiny_distilled_patch16_224", 2, 32, patch_size=8, depth=1,
                        embed_dim=32, num_heads=2)
    assert token_grid(model) == (2, 4, 4)


def test_unknown_method_lists_the_available_ones() -> None:
    from xai_bench.explain.base import build_method

    with pytest.raises(ConfigError, match="available"):
        build_method("no_such_method")


def test_base_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        ExplainMethod(upsample="cubic")
    with pytest.raises(ConfigError):
        ExplainMethod(normalize="zscore")


@pytest.mark.parametrize("name,forwards", [
    ("attention", 1), ("rollout", 1), ("random", 1), ("saliency", 1), ("input_x_gradient", 1),
    ("guided_backprop", 1), ("gradcam", 1), ("hirescam", 1), ("chefer_generic", 1), ("chefer", 1),
])
def test_forward_passes_per_call(name: str, forwards: int) -> None:
    """Maps take the logits (and the predicted target) from their own forward where they can:
    one model pass per call, not a separate one to find the target."""
    from xai_bench.explain import build_method

    model = build_model("vit_tiny_patch16_224", 2, 32, patch_size=8, depth=2, embed_dim=32,
                        num_heads=2).eval()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    out = build_method(name)(model, x)
    assert len(calls) == forwards
    with torch.no_grad():
        assert torch.allclose(out.logits, model(x), atol=1e-5)
        assert torch.equal(out.target, model(x).argmax(-1))


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "guided_backprop", "gradcam",
                                  "chefer_generic"])
def test_target_from_own_forward_equals_explicit_target(name: str) -> None:
    from xai_bench.explain import build_method

    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", 3, 32, patch_size=8, depth=2, embed_dim=32,
                        num_heads=2).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    method = build_method(name)
    implicit = method(model, x)
    explicit = method(model, x, target=predicted)
    assert torch.equal(implicit.target, predicted)
    assert torch.allclose(implicit.maps, explicit.maps, atol=1e-6)


# ----------------------------------------------------------------------------- centre prior
def _pooled_linear() -> torch.nn.Module:
    """Any image size in, two logits out (the centre prior only runs it for the logits)."""
    nn = torch.nn
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))


def _centre_by_hand(height: int, width: int, sigma: float) -> torch.Tensor:
    """The documented definition written out pixel by pixel: pixel centres (i + 0.5, j + 0.5),
    offsets from the image centre (H / 2, W / 2) as fractions of the side, an unnormalised
    Gaussian exp(-(dy^2 + dx^2) / (2 sigma^2)) with sigma a fraction of the side."""
    out = torch.empty(height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            dy, dx = (i + 0.5 - height / 2) / height, (j + 0.5 - width / 2) / width
            out[i, j] = math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
    return out


@pytest.mark.parametrize(
    "height,width,sigma", [(8, 8, 0.25), (7, 7, 0.25), (6, 10, 0.1), (9, 4, 0.5)]
)
def test_centre_prior_is_the_documented_gaussian(height: int, width: int, sigma: float) -> None:
    from xai_bench.explain import build_method

    model = _pooled_linear()
    images = torch.randn(3, 3, height, width)
    out = build_method("centre", sigma=sigma)(model, images)
    assert out.raw.shape == (3, height, width) and out.raw.dtype == torch.float32
    assert out.maps.shape == (3, height, width) and out.maps.dtype == torch.float32
    expected = _centre_by_hand(height, width, sigma)
    for b in range(3):  # every image gets the same map, whatever its content
        torch.testing.assert_close(out.raw[b].double(), expected, atol=1e-6, rtol=0)
    # min-max of the same map: 1 at the centre, 0 at the corners
    ref = (expected - expected.min()) / (expected.max() - expected.min())
    torch.testing.assert_close(out.maps[0].double(), ref, atol=1e-5, rtol=0)


def test_centre_prior_symmetry_peak_and_batch_independence() -> None:
    from xai_bench.explain import build_method

    model = _pooled_linear()
    method = build_method("centre")
    assert method.sigma == 0.25 and method.needs_grad is False
    odd = method(model, torch.randn(2, 3, 9, 9)).raw[0]
    # odd side: one centre pixel, exactly 1 (zero offset), strictly the maximum
    assert odd[4, 4].item() == 1.0 and (odd.flatten().topk(2).values[1] < 1.0).item()
    even = method(model, torch.randn(2, 3, 8, 12)).raw[0]
    # even sides: the 2 x 2 central pixels tie at the maximum; mirror-symmetric on both axes
    central = torch.zeros_like(even, dtype=torch.bool)
    central[3:5, 5:7] = True
    assert torch.equal(even == even.max(), central)
    for raw in (odd, even):
        assert torch.equal(raw, raw.flip(0)) and torch.equal(raw, raw.flip(1))
    assert torch.equal(odd, odd.T)  # square: isotropic
    # values fall monotonically from the centre along a row and a column
    assert (odd[4, 4:].diff() < 0).all() and (odd[4:, 4].diff() < 0).all()
    # batch independence: batch size, image content, target and dtype do not matter
    x = torch.randn(5, 3, 9, 9)
    batch = method(model, x, 0).raw
    assert all(torch.equal(batch[b], odd) for b in range(5))
    assert torch.equal(method(model, torch.zeros(1, 3, 9, 9), 1).raw[0], odd)
    assert torch.equal(method(model.double(), x.double()[:2]).raw[1], odd)
    with pytest.raises(ConfigError):
        build_method("centre", sigma=0)
    with pytest.raises(ConfigError):
        build_method("centre", sigma=-0.1)
