"""Grad-CAM / HiResCAM against pytorch-grad-cam, captum and hand-computed cases, and invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from pytorch_grad_cam import GradCAM as LibGradCAM
from pytorch_grad_cam import HiResCAM as LibHiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from xai_bench.explain import cam as C
from xai_bench.explain.base import build_method
from xai_bench.explain.vit_geometry import token_grid
from xai_bench.models import build_model
from xai_bench.models.heads import set_feature_layer
from xai_bench.utils.errors import ConfigError

LIB = {"gradcam": LibGradCAM, "hirescam": LibHiResCAM}
TARGET = torch.tensor([0, 1, 1])


class TinyCNN(nn.Module):
    """Conv -> ReLU -> Conv -> ReLU -> [explained map] -> GAP or Flatten -> Linear."""

    def __init__(self, head: str = "gap") -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
                     if head == "gap" else nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 2)))
        set_feature_layer(self, self.features, "features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _images(batch: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@pytest.fixture(scope="module")
def gap_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN("gap").double().eval()


@pytest.fixture(scope="module")
def flat_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN("flatten").double().eval()


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vit_tiny_patch16_224", 2, 32, patch_size=8, depth=2, embed_dim=32,
                       num_heads=2).double().eval()


def _drop_prefix(model: nn.Module):
    prefix, gh, gw = token_grid(model)

    def transform(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:]
        return patches.reshape(patches.shape[0], gh, gw, patches.shape[-1]).permute(0, 3, 1, 2)

    return transform


def _library(model: nn.Module, mode: str, x: torch.Tensor, target: torch.Tensor,
             **kwargs: bool) -> torch.Tensor:
    vit = hasattr(model, "blocks")
    layer = model.blocks[-1].norm1 if vit else model.feature_layer
    lib = LIB[mode](model, [layer], reshape_transform=_drop_prefix(model) if vit else None)
    try:
        out = lib(x, [ClassifierOutputTarget(int(t)) for t in target], **kwargs)
    finally:
        lib.activations_and_grads.release()
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _library_raw(
    model: nn.Module, mode: str, x: torch.Tensor, target: torch.Tensor, eigen: bool
) -> torch.Tensor:
    """pytorch-grad-cam's raw map at the layer's resolution (before its ReLU and scaling): its
    get_cam_image on the activations and gradients its own hooks recorded (after its
    reshape_transform for ViT tokens). Nothing of xai_bench's CAM code is involved."""
    vit = hasattr(model, "blocks")
    layer = model.blocks[-1].norm1 if vit else model.feature_layer
    lib = LIB[mode](model, [layer], reshape_transform=_drop_prefix(model) if vit else None)
    targets = [ClassifierOutputTarget(int(t)) for t in target]
    try:
        lib(x, targets, eigen_smooth=eigen)  # forward + backward; the hooks keep what they saw
        acts = lib.activations_and_grads.activations[0].cpu().numpy()
        grads = lib.activations_and_grads.gradients[0].cpu().numpy()
        raw = lib.get_cam_image(x, layer, targets, acts, grads, eigen_smooth=eigen)
    finally:
        lib.activations_and_grads.release()
    return torch.from_numpy(np.asarray(raw)).to(x.dtype)


def _case(request: pytest.FixtureRequest, name: str) -> tuple[nn.Module, torch.Tensor]:
    model = request.getfixturevalue(name)
    return model, _images(size=32 if name == "vit" else 16)


@pytest.mark.parametrize("name", ["flat_cnn", "vit"])
@pytest.mark.parametrize("mode", ["gradcam", "hirescam"])
@pytest.mark.parametrize("eigen", [False, True])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_matches_pytorch_grad_cam(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture,
                                  name: str, mode: str, eigen: bool) -> None:
    model, x = _case(request, name)
    ref = _library(model, mode, x, TARGET, eigen_smooth=eigen)
    method = build_method(mode, order="gradcam_lib", eigen_smooth=eigen, eigen_sign="library")
    out = method(model, x, TARGET)
    assert out.maps.shape == ref.shape
    assert out.raw.shape == ((3, 4, 4) if name == "vit" else (3, 8, 8))
    torch.testing.assert_close(out.maps, ref, atol=1e-4, rtol=0)
    # at token / feature resolution, before ReLU and scaling: the library's own raw map (its
    # eigen projection is returned as float32, hence the looser tolerance there)
    lib_raw = _library_raw(model, mode, x, TARGET, eigen)
    scale = float(lib_raw.abs().max())
    tol = dict(atol=1e-6 * scale, rtol=1e-6) if eigen else dict(atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.raw, lib_raw, **tol)
    assert lib_raw.abs().max() > 1e-3 and (lib_raw < 0).any()  # raw: signed, before the ReLU


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_matches_pytorch_grad_cam_on_timm_resnet() -> None:
    torch.manual_seed(0)
    resnet = build_model("resnet18", 2, 64).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = _library(resnet, "gradcam", x, TARGET[:2])
    out = build_method("gradcam", order="gradcam_lib")(resnet, x, TARGET[:2])
    torch.testing.assert_close(out.maps, ref, atol=1e-4, rtol=0)
    assert all(p.requires_grad for p in resnet.parameters())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_aug_smooth_and_the_study_variant_match_the_library(vit: nn.Module,
                                                            flat_cnn: nn.Module) -> None:
    x = _images(size=32)
    ones = torch.ones(3, dtype=torch.long)
    ref = _library(vit, "gradcam", x, ones, eigen_smooth=True, aug_smooth=True)
    study = build_method("gradcam_study")
    assert (study.target == 1 and study.eigen_smooth and study.aug_smooth
            and study.order == "gradcam_lib")
    out = study(vit, x)
    assert out.target.tolist() == [1, 1, 1]
    torch.testing.assert_close(out.maps, ref, atol=1e-4, rtol=0)
    x = _images()
    ref = _library(flat_cnn, "hirescam", x, TARGET, aug_smooth=True)
    out = build_method("hirescam", aug_smooth=True, order="gradcam_lib")(flat_cnn, x, TARGET)
    torch.testing.assert_close(out.maps, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["flat_cnn", "vit"])
def test_aug_smooth_commutes_with_flips(request: pytest.FixtureRequest, name: str) -> None:
    """x and flip(x) have the same set of augmented views, so for ANY model the smoothed map of
    flip(x) is the mirrored smoothed map of x (the invariant that ttach-free checks rest on)."""
    model, x = _case(request, name)
    method = build_method("gradcam", aug_smooth=True, eigen_smooth=True)
    a, b = method(model, x, TARGET), method(model, x.flip(-1), TARGET)
    torch.testing.assert_close(a.raw.flip(-1), b.raw)
    torch.testing.assert_close(a.maps.flip(-1), b.maps, atol=1e-5, rtol=0)
    assert float(a.maps.min()) == 0.0 and float(a.maps.max()) == pytest.approx(1.0, abs=1e-5)
    plain = build_method("gradcam")(model, x, TARGET)
    assert not torch.allclose(plain.raw, a.raw)


def test_a_layer_used_twice_is_refused(flat_cnn: nn.Module) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = flat_cnn
            set_feature_layer(self, flat_cnn.features, "inner.features")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + self.inner(x.flip(-1))

    with pytest.raises(ConfigError, match="ran 2 times"):
        build_method("gradcam")(Twice(), _images(), TARGET)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eigen_sign_options(vit: nn.Module) -> None:
    x = _images(size=32)
    acts, grads, _, _ = C.layer_activations_and_grads(vit, x, TARGET)
    weighted = grads.mean((2, 3), keepdim=True) * acts
    lib = C.eigen_projection(weighted, "library").flatten(1)
    plain = weighted.sum(1).flatten(1)
    for sign in ("svd", "align", "max_abs"):
        ours = C.eigen_projection(weighted, sign).flatten(1)
        corr = torch.nn.functional.cosine_similarity(ours, lib, dim=1)
        torch.testing.assert_close(corr.abs(), torch.ones(3, dtype=corr.dtype))
    aligned = C.eigen_projection(weighted, "align").flatten(1)
    assert ((aligned * (plain - plain.mean(1, keepdim=True))).sum(1) >= 0).all()
    flipped = C.eigen_projection(weighted, "max_abs").flatten(1)
    assert (flipped.max(1).values >= flipped.min(1).values.abs()).all()
    with pytest.raises(ConfigError):
        build_method("gradcam", eigen_sign="random")
    with pytest.raises(ConfigError):
        build_method("gradcam", eigen_smooth=True, eigen_sign="library", differentiable=True)


class KnownHead(nn.Module):
    """The explained layer is the input itself (nn.Identity), followed by Flatten -> Linear with
    hand-set weights: d logit_t / dA is the weight map W_t, so both CAMs can be written down."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
        with torch.no_grad():
            self.head[1].weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0, 2.0, 2.0, -2.0, 2.0],
                                                    [0.0, 1.0, -1.0, 0.0, 1.0, 1.0, 1.0, 1.0]]))
            self.head[1].bias.copy_(torch.tensor([0.25, -0.5]))
        set_feature_layer(self, self.features, "features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_gradcam_and_hirescam_hand_computed_on_known_weights() -> None:
    """A = [[1, 2], [3, 4]] (channel 0), [[0, 1], [1, 0]] (channel 1); class 0's weights
    W_0 = [[1, 0], [0, 1]], [[2, 2], [-2, 2]], channel means 0.5 and 1.0.
      Grad-CAM = 0.5 * A_0 + 1.0 * A_1 = [[0.5, 2], [2.5, 2]]
      HiResCAM = sum_c W_0c * A_c = [[1, 2], [-2, 4]], summing to the logit minus the bias, 5.
    Class 1: W_1 = [[0, 1], [-1, 0]], [[1, 1], [1, 1]] (means 0 and 1): Grad-CAM = A_1,
    HiResCAM = [[0, 3], [-2, 0]]."""
    model = KnownHead().double().eval()
    image = [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]
    x = torch.tensor(image, dtype=torch.float64)[None].repeat(2, 1, 1, 1)
    target = torch.tensor([0, 1])
    grad = build_method("gradcam")(model, x, target)
    hires = build_method("hirescam")(model, x, target)

    def check(got: torch.Tensor, expected: list[list[float]], atol: float = 1e-12) -> None:
        torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), atol=atol, rtol=0)

    check(grad.raw[0], [[0.5, 2.0], [2.5, 2.0]])
    check(grad.raw[1], [[0.0, 1.0], [1.0, 0.0]])
    check(hires.raw[0], [[1.0, 2.0], [-2.0, 4.0]])
    check(hires.raw[1], [[0.0, 3.0], [-2.0, 0.0]])
    # post-processing: ReLU then min-max (no resize: the map is at input resolution)
    check(hires.maps[0], [[0.25, 0.5], [0.0, 1.0]], atol=1e-6)
    check(grad.maps[0], [[0.0, 0.75], [1.0, 0.75]], atol=1e-6)


def test_gradcam_matches_captum_layergradcam(gap_cnn: nn.Module, flat_cnn: nn.Module) -> None:
    x = _images()
    for model in (gap_cnn, flat_cnn):
        ref = LayerGradCam(model, model.features).attribute(x, target=TARGET,
                                                            relu_attributions=True)[:, 0]
        raw = build_method("gradcam", layer="features")(model, x, TARGET).raw
        torch.testing.assert_close(raw.clamp(min=0), ref, atol=1e-10, rtol=0)


def test_hirescam_vs_gradcam_gap_and_flatten_heads(gap_cnn: nn.Module, flat_cnn: nn.Module) -> None:
    x = _images()
    grad_gap = build_method("gradcam")(gap_cnn, x, TARGET).raw
    hires_gap = build_method("hirescam")(gap_cnn, x, TARGET).raw
    torch.testing.assert_close(hires_gap, grad_gap)  # GAP + linear: gradients constant over space
    grad_flat = build_method("gradcam")(flat_cnn, x, TARGET).raw
    hires_flat = build_method("hirescam")(flat_cnn, x, TARGET).raw
    assert not torch.allclose(grad_flat, hires_flat, atol=1e-4)
    # Flatten -> Linear: the HiResCAM map sums exactly to the target logit minus its bias
    with torch.no_grad():
        logit = flat_cnn(x).gather(1, TARGET[:, None])[:, 0] - flat_cnn.head[1].bias[TARGET]
    torch.testing.assert_close(hires_flat.flatten(1).sum(1), logit)


@pytest.mark.parametrize("name,method", [("vit", "gradcam"), ("vit", "hirescam"),
                                         ("vit", "gradcam_study"),
                                         ("flat_cnn", "gradcam"), ("flat_cnn", "hirescam")])
def test_batch_equals_single_calls(request: pytest.FixtureRequest, name: str, method: str) -> None:
    model, x = _case(request, name)
    explain = build_method(method)
    batch = explain(model, x, TARGET)
    for i in range(3):
        single = explain(model, x[i:i + 1], TARGET[i:i + 1])
        torch.testing.assert_close(single.raw[0], batch.raw[i], atol=1e-8, rtol=1e-6)
        torch.testing.assert_close(single.maps[0], batch.maps[i], atol=1e-5, rtol=1e-5)


def test_differentiable_gradcam_is_second_order(flat_cnn: nn.Module, vit: nn.Module) -> None:
    x = _images()
    cam = C.gradcam_differentiable(flat_cnn, x, "predicted")
    assert cam.shape == (3, 8, 8) and cam.requires_grad
    (grad,) = torch.autograd.grad(cam.sum(), flat_cnn.features[0].weight)  # a layer before the map
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        target = flat_cnn(x).argmax(1)
    plain = build_method("gradcam")(flat_cnn, x, target).raw
    torch.testing.assert_close(cam.detach(), plain)
    method = build_method("gradcam", differentiable=True)
    torch.testing.assert_close(method.explain_raw(flat_cnn, x, target).detach(), plain)
    cam = C.gradcam_differentiable(vit, _images(size=32), 1, relu=True, mode="hirescam")
    (grad,) = torch.autograd.grad(cam.pow(2).sum(), vit.patch_embed.proj.weight)
    assert cam.shape == (3, 4, 4) and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_vit_token_geometry_and_layer_paths() -> None:
    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", 2, 48, patch_size=8, depth=2, embed_dim=32,
                        num_heads=2, reg_tokens=2).eval()
    assert token_grid(model)[0] == 3
    x = torch.randn(2, 3, 48, 48)
    out = build_method("gradcam")(model, x)
    assert out.raw.shape == (2, 6, 6) and out.maps.shape == (2, 48, 48)
    other = build_method("hirescam", layer="blocks.0.norm2")(model, x)
    assert other.raw.shape == (2, 6, 6)
    with pytest.raises(ConfigError, match="not a module path"):
        build_method("gradcam", layer="blocks.9.norm1")(model, x)
    with pytest.raises(ConfigError, match="order"):
        build_method("gradcam", order="backwards")
