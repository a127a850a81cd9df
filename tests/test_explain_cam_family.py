"""The CAM family (Grad-CAM++, XGrad-CAM, LayerCAM, EigenCAM, EigenGrad-CAM, Score-CAM,
Ablation-CAM, FullGrad) against pytorch-grad-cam 1.5.7 on a small CNN and a depth-2 ViT (prefix
tokens dropped), hand-computed cases, declared passes counted, and invalid settings."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from xai_bench.explain.base import build_method
from xai_bench.explain.vit_geometry import token_grid
from xai_bench.models import build_model
from xai_bench.models.heads import set_feature_layer
from xai_bench.utils.errors import ConfigError

LIB = {"gradcam_plusplus": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
       "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM,
       "scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM}
GRADIENT_WEIGHTED = ("gradcam_plusplus", "xgradcam", "layercam")
PERTURBATION = ("scorecam", "ablationcam")
TARGET = torch.tensor([0, 1, 1])
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class TinyCNN(nn.Module):
    """Conv (bias) -> BatchNorm -> in-place ReLU -> Conv -> ReLU -> [explained map] -> Flatten ->
    Linear: spatially varying gradients, and every kind of FullGrad bias layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6),
                                      nn.ReLU(inplace=True),
                                      nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 2))
        set_feature_layer(self, self.features, "features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    model = TinyCNN().double().eval()
    with torch.no_grad():  # non-trivial running statistics: the effective BatchNorm bias
        bn = model.features[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return model


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vit_tiny_patch16_224", 2, 32, patch_size=8, depth=2, embed_dim=32,
                       num_heads=2).double().eval()


def _images(size: int, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def _case(request: pytest.FixtureRequest, name: str) -> tuple[nn.Module, torch.Tensor]:
    return request.getfixturevalue(name), _images(32 if name == "vit" else 16)


def _drop_prefix(model: nn.Module):
    prefix, gh, gw = token_grid(model)

    def transform(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:]
        return patches.reshape(patches.shape[0], gh, gw, patches.shape[-1]).permute(0, 3, 1, 2)

    return transform


def _library(model: nn.Module, name: str, x: torch.Tensor, target: torch.Tensor,
             eigen: bool, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-grad-cam's maps and its raw map (get_cam_image on the activations and gradients
    its own hooks recorded, before its ReLU and scaling)."""
    vit = hasattr(model, "blocks")
    layer = model.blocks[-1].norm1 if vit else model.feature_layer
    if name == "ablationcam" and vit:
        kwargs.setdefault("ablation_layer", AblationLayerVit())
    lib = LIB[name](model, [layer], reshape_transform=_drop_prefix(model) if vit else None,
                    **kwargs)
    targets = [ClassifierOutputTarget(int(t)) for t in target]
    try:
        maps = lib(x, targets, eigen_smooth=eigen)
        acts = lib.activations_and_grads.activations[0].numpy()
        grads = lib.activations_and_grads.gradients
        raw = lib.get_cam_image(x, layer, targets, acts, grads[0].numpy() if grads else None,
                                eigen_smooth=eigen)
    finally:
        lib.activations_and_grads.release()
    return (torch.from_numpy(np.asarray(maps, dtype=np.float32)),
            torch.from_numpy(np.asarray(raw)).to(x.dtype))


CASES = ([(m, e) for m in GRADIENT_WEIGHTED for e in (False, True)]
         + [("eigencam", False), ("eigengradcam", False)]
         + [(m, e) for m in PERTURBATION for e in (False, True)])


@pytest.mark.parametrize("model_name", ["cnn", "vit"])
@pytest.mark.parametrize("name,eigen", CASES)
def test_matches_pytorch_grad_cam(request: pytest.FixtureRequest, model_name: str, name: str,
                                  eigen: bool) -> None:
    """Maps within 1e-4 through the library's chain; raw maps to float32 precision (the library
    returns eigen projections in float32 and keeps Score-CAM / Ablation-CAM scores in float32).
    Ablation on the ViT: the library's value (min - 1e7) with its batch_size=1, where its
    ablation value does not drift (see test_ablation_value_and_the_library_drift)."""
    model, x = _case(request, model_name)
    vit_ablation = name == "ablationcam" and model_name == "vit"
    ref, lib_raw = _library(model, name, x, TARGET, eigen,
                            **({"batch_size": 1} if vit_ablation else {}))
    settings = dict(order="gradcam_lib", eigen_sign="library")
    if eigen:
        settings["eigen_smooth"] = True
    if vit_ablation:
        settings["ablation_value"] = "library"
    out = build_method(name, **settings)(model, x, TARGET)
    assert out.raw.shape == ((3, 4, 4) if model_name == "vit" else (3, 8, 8))
    torch.testing.assert_close(out.maps, ref, atol=1e-4, rtol=0)
    scale = float(lib_raw.abs().max())
    loose = eigen or name in ("eigencam", "eigengradcam") or name in PERTURBATION
    tol = dict(atol=1e-5 * scale, rtol=1e-5) if loose else dict(atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.raw, lib_raw, **tol)
    assert scale > 1e-6 and float(out.maps.max()) == pytest.approx(1.0, abs=1e-6)


def test_ablation_value_and_the_library_drift(vit: nn.Module, cnn: nn.Module) -> None:
    """The library re-reads the minimum after ablating each row of its batch, so with its
    default batch_size=32 the k-th channel of a ViT batch is set to min - k * 1e7; our `library`
    value is its batch_size=1 rule at any batch_size (on this ViT the LayerNorms after the layer
    absorb the drift: the library's batch sizes agree to 1e-4). On a ReLU map (minimum 0) both
    ablate to zero, the paper's rule and our default."""
    x = _images(32)
    drift, _ = _library(vit, "ablationcam", x, TARGET, False)
    single, _ = _library(vit, "ablationcam", x, TARGET, False, batch_size=1)
    ours = build_method("ablationcam", ablation_value="library", order="gradcam_lib",
                        batch_size=7)(vit, x, TARGET)
    torch.testing.assert_close(ours.maps, single, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.maps, drift, atol=1e-4, rtol=0)
    zero = build_method("ablationcam", order="gradcam_lib")(vit, x, TARGET)
    assert (zero.maps - single).abs().max() > 1e-3
    x = _images(16)
    lib, _ = _library(cnn, "ablationcam", x, TARGET, False)
    for value in ("zero", "library"):
        out = build_method("ablationcam", ablation_value=value, order="gradcam_lib")(cnn, x, TARGET)
        torch.testing.assert_close(out.maps, lib, atol=1e-4, rtol=0)


def _library_fullgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    lib = pgc.FullGrad(model, [])
    try:
        out = lib(x, [ClassifierOutputTarget(int(t)) for t in target])
    finally:
        lib.activations_and_grads.release()
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def test_fullgrad_matches_pytorch_grad_cam(cnn: nn.Module, capsys: pytest.CaptureFixture) -> None:
    """Conv bias, BatchNorm effective bias (followed by an in-place ReLU) and the input term;
    and a timm ResNet-18 (20 BatchNorm layers, no conv biases) in float32."""
    x = _images(16)
    out = build_method("fullgrad")(cnn, x, TARGET)
    assert out.raw.shape == (3, 16, 16) and (out.raw >= 0).all()
    torch.testing.assert_close(out.maps, _library_fullgrad(cnn, x, TARGET), atol=1e-4, rtol=0)
    torch.manual_seed(0)
    resnet = build_model("resnet18", 2, 32).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    out = build_method("fullgrad")(resnet, x, TARGET[:2])
    torch.testing.assert_close(out.maps, _library_fullgrad(resnet, x, TARGET[:2]), atol=1e-4,
                               rtol=0)
    assert all(p.requires_grad for p in resnet.parameters())


def test_fullgrad_is_cnn_only(vit: nn.Module) -> None:
    method = build_method("fullgrad")
    assert method.models == ("cnn",) and method.family == "cam"
    with pytest.raises(ConfigError, match="CNNs"):
        method(vit, _images(32), TARGET)


class KnownHead(nn.Module):
    """The explained layer is the input (nn.Identity) followed by Flatten -> Linear: for class
    0, dy/dA = W_0 = [[1, 0], [0, 1]], [[2, 2], [-2, 2]], bias 0.25 (test_explain_cam's case)."""

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


def test_hand_computed_on_known_weights() -> None:
    """A_0 = [[1, 2], [3, 4]] (sum 10), A_1 = [[0, 1], [1, 0]] (sum 2), class 0.
      LayerCAM  sum_c relu(W_c) A_c = [[1, 0], [0, 4]] + [[0, 2], [0, 0]] = [[1, 2], [0, 4]]
      XGrad-CAM w_0 = (1 + 4) / 10 = 0.5, w_1 = (2 - 2) / 2 = 0: 0.5 A_0
      Grad-CAM++ alpha = g^2 / (2 g^2 + sum(A_c) g^3): 1/12 where W_0 = 1 (two places), 1/6
        where W_1 = 2 (three places; -2 is cut by the ReLU): w_0 = 2/12, w_1 = 3 * 2/6 = 1
      Ablation-CAM (zero) y = 5.25; ablating channel 0 leaves 0.25, channel 1 leaves 5.25:
        w_0 = 5 / 5.25, w_1 = 0."""
    model = KnownHead().double().eval()
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]],
                     dtype=torch.float64)[None]
    a0, a1 = x[0, 0], x[0, 1]
    expected = {"layercam": torch.tensor([[1.0, 2.0], [0.0, 4.0]], dtype=torch.float64),
                "xgradcam": 0.5 * a0, "gradcam_plusplus": a0 / 6 + a1,
                "ablationcam": a0 * 5 / 5.25}
    for name, want in expected.items():
        raw = build_method(name)(model, x, torch.tensor([0])).raw[0]
        torch.testing.assert_close(raw, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_name", ["cnn", "vit"])
@pytest.mark.parametrize("name", PERTURBATION)
def test_perturbed_forwards_batched_any_way(request: pytest.FixtureRequest, model_name: str,
                                            name: str) -> None:
    """The perturbed copies' batching (batch_size, across images) does not change a map, and a
    batch of images gives each image's own map."""
    model, x = _case(request, model_name)
    maps = [build_method(name, batch_size=bs)(model, x, TARGET).raw for bs in (1, 5, 1000)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], atol=1e-12, rtol=1e-10)
    single = build_method(name)(model, x[1:2], TARGET[1:2]).raw[0]
    torch.testing.assert_close(single, maps[0][1], atol=1e-12, rtol=1e-10)


def test_eigencam_is_class_agnostic(vit: nn.Module) -> None:
    x = _images(32)
    method = build_method("eigencam")
    zero = method(vit, x, torch.zeros(3, dtype=torch.long))
    one = method(vit, x, torch.ones(3, dtype=torch.long))
    torch.testing.assert_close(zero.raw, one.raw, atol=0, rtol=0)
    assert one.target.tolist() == [1, 1, 1]


def _count_passes(model: nn.Module, method, x: torch.Tensor,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    """(images through the model / B, gradient calls) for one explanation of the batch x."""
    seen: list[int] = []
    calls: list[int] = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    handle = model.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    try:
        method(model, x, TARGET)
    finally:
        handle.remove()
        monkeypatch.undo()
    return sum(seen) / x.shape[0], float(len(calls))


@pytest.mark.parametrize("name,settings", [
    ("gradcam_plusplus", {}), ("xgradcam", {}), ("layercam", {}), ("eigengradcam", {}),
    ("eigencam", {}), ("eigencam", {"aug_smooth": True}), ("scorecam", {"batch_size": 5}),
    ("scorecam", {"aug_smooth": True}), ("ablationcam", {"batch_size": 7}), ("fullgrad", {}),
])
def test_declared_passes_are_the_counted_passes(cnn: nn.Module, vit: nn.Module,
                                                monkeypatch: pytest.MonkeyPatch, name: str,
                                                settings: dict) -> None:
    method = build_method(name, **settings)
    cases = [(cnn, _images(16))] + ([(vit, _images(32))] if name != "fullgrad" else [])
    for model, x in cases:
        declared = method.passes(model, *x.shape[-2:])
        forwards, backwards = _count_passes(model, method, x, monkeypatch)
        assert (forwards, backwards) == (declared.forwards, declared.backwards)
    channels = 8 if name in PERTURBATION else 0  # the CNN's explained map has 8 channels
    if name in PERTURBATION and not settings.get("aug_smooth"):
        assert method.passes(cnn, 16, 16).forwards == 1 + channels
        assert method.passes(vit, 32, 32).forwards == 1 + 32  # embed_dim channels


def test_invalid_settings_are_config_errors() -> None:
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ConfigError, match="batch_size"):
            build_method("scorecam", batch_size=bad)
    with pytest.raises(ConfigError, match="ablation_value"):
        build_method("ablationcam", ablation_value="min")
    with pytest.raises(ConfigError, match="eigen_smooth"):
        build_method("eigencam", eigen_smooth=False)
    for name in ("eigencam", "scorecam", "ablationcam"):
        with pytest.raises(ConfigError, match="differentiable"):
            build_method(name, differentiable=True)
    with pytest.raises(ConfigError, match="eigen_sign"):
        build_method("layercam", eigen_sign="up")


def test_gradient_weighted_modes_are_differentiable(cnn: nn.Module) -> None:
    x = _images(16)
    for name in ("gradcam_plusplus", "xgradcam", "layercam", "eigengradcam"):
        plain = build_method(name)(cnn, x, TARGET).raw
        graph = build_method(name, differentiable=True).explain_raw(cnn, x, TARGET)
        assert graph.requires_grad
        torch.testing.assert_close(graph.detach(), plain)
