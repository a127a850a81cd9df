"""Occlusion against captum's Occlusion (same window, strides, baseline; float64 model), a
hand-computed case on a linear model, batching invariance, passes and invalid settings."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from tiny_models import tiny_vit
from torch import nn

from xai_bench.explain import occlusion as O
from xai_bench.explain.base import build_method
from xai_bench.utils.errors import ConfigError

TARGET = torch.tensor([0, 1, 1])


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(2), nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.c2(torch.relu(self.c1(x))))).flatten(1))


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().double().eval()


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return tiny_vit()


def _images(size: int) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


@pytest.mark.parametrize(("name", "window", "stride", "baseline"), [
    ("cnn", 8, 4, 0.0),          # overlapping windows, stride divides
    ("cnn", 5, 3, 0.5),          # the last window is cut at the border (captum's positions)
    ("cnn", [6, 4], [6, 2], -1.0),  # rectangular window and stride
    ("cnn", 16, 16, 0.0),        # one window: the whole image
    ("vit", 8, 8, 0.0),          # patch-aligned on the ViT
    ("vit", 12, 5, 0.2),
])
def test_occlusion_matches_captum(request: pytest.FixtureRequest, name: str,
                                  window: int | list[int], stride: int | list[int],
                                  baseline: float) -> None:
    model = request.getfixturevalue(name)
    x = _images(32 if name == "vit" else 16)
    method = build_method("occlusion", window=window, stride=stride, baseline=baseline,
                          batch_size=7)
    ours = method.explain_raw(model, x, TARGET.clone())
    win = (window, window) if isinstance(window, int) else tuple(window)
    st = (stride, stride) if isinstance(stride, int) else tuple(stride)
    ref = CaptumOcclusion(model).attribute(x, sliding_window_shapes=(3, *win),
                                           strides=(3, *st), baselines=baseline, target=TARGET,
                                           perturbations_per_eval=16)
    for c in range(1, 3):  # the window spans every channel: one value per pixel
        torch.testing.assert_close(ref[:, c], ref[:, 0])
    assert ours.abs().max() > 0
    # captum returns float32 (it divides by the window counts after .float())
    torch.testing.assert_close(ours.float(), ref[:, 0], atol=2e-6, rtol=1e-5)


def test_occlusion_hand_case_on_a_linear_model() -> None:
    """f = w . x, non-overlapping windows: a pixel's value is the drop of its window,
    sum over the window and channels of w (x - b)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).double().eval()
    x, b = _images(8), 0.3
    w = model[1].weight.detach().view(2, 3, 8, 8)[TARGET]
    contrib = (w * (x - b)).sum(1)  # (B, 8, 8)
    blocks = contrib.view(3, 2, 4, 2, 4).sum((2, 4))  # 4x4 windows
    expected = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)
    out = build_method("occlusion", window=4, stride=4, baseline=b)(model, x, TARGET)
    torch.testing.assert_close(out.raw, expected)
    assert out.maps.shape == (3, 8, 8)


def test_occlusion_batching_and_target_from_its_own_forward(cnn: nn.Module) -> None:
    x = _images(16)
    ref = build_method("occlusion", window=6, stride=3, batch_size=1000)(cnn, x, TARGET)
    for batch_size in (1, 5):
        out = build_method("occlusion", window=6, stride=3, batch_size=batch_size)(cnn, x, TARGET)
        torch.testing.assert_close(out.raw, ref.raw)
    torch.testing.assert_close(build_method("occlusion", window=6, stride=3)(
        cnn, x[1:], TARGET[1:]).raw, ref.raw[1:])
    predicted = build_method("occlusion", window=6, stride=3)(cnn, x)  # target=predicted
    with torch.no_grad():
        assert torch.equal(predicted.target, cnn(x).argmax(-1))
    assert predicted.logits is not None


def test_occlusion_passes_are_the_windows_plus_one(cnn: nn.Module) -> None:
    x = _images(16)
    seen = []
    handle = cnn.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    method = build_method("occlusion", window=5, stride=3, batch_size=8)
    try:
        method(cnn, x, TARGET)
    finally:
        handle.remove()
    windows = len(O.window_starts(16, 5, 3)) ** 2
    assert windows == 25  # starts 0, 3, 6, 9, 12 (the last window cut to 4 pixels)
    assert sum(seen) == x.shape[0] * (1 + windows) and max(seen) <= 8
    declared = method.passes(cnn, 16, 16)
    assert (declared.forwards, declared.backwards) == (1 + windows, 0)


@pytest.mark.parametrize("kwargs", [
    {"window": 4, "stride": 5}, {"window": 0}, {"window": [4, 4, 4]}, {"stride": [2, 0]},
    {"batch_size": 0}])
def test_invalid_settings_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        build_method("occlusion", **kwargs)


def test_window_larger_than_the_image_is_a_config_error(cnn: nn.Module) -> None:
    with pytest.raises(ConfigError, match="larger than the image"):
        build_method("occlusion", window=17, stride=4)(cnn, _images(16), TARGET)
