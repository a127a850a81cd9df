"""Pixel-level attribution methods against captum (float64), their definitions (DeepLIFT, LRP:
hand-computed cases, dense numpy references, zennit) and their invariants."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import InputXGradient as CaptumInputXGradient
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Saliency as CaptumSaliency
from torch import nn

from xai_bench.explain import gradients as G
from xai_bench.explain.base import build_method
from xai_bench.models import build_model
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
    torch.manual_seed(0)
    return build_model("vit_tiny_patch16_224", 2, 32, patch_size=8, depth=2, embed_dim=32,
                       num_heads=2).double().eval()


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


# ----------------------------------------------------------------------------------------------
# DeepLIFT and LRP against their definitions (not against captum, the library they call)


def _two_unit_net(bias: float = -0.5) -> nn.Module:
    """f(x) = 2 relu(x1 + x2 + bias) + relu(x1 - x2), x given as a (B, 1, 1, 2) image."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double().eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        net[1].bias.copy_(torch.tensor([bias, 0.0]))
        net[3].weight.copy_(torch.tensor([[2.0, 1.0]]))
        net[3].bias.zero_()
    return net


def test_deeplift_and_lrp_hand_computed_on_two_relu_units() -> None:
    """x = (2, -1), baseline 0. Hidden pre-activations z = (0.5, 3), at the baseline z0 = (-0.5, 0);
    f(x) = 2 * 0.5 + 3 = 4, f(0) = 0.

    DeepLIFT rescale: slopes (relu(z) - relu(z0)) / (z - z0) = (0.5 / 1, 3 / 3) = (0.5, 1);
    multipliers of the hidden units (2 * 0.5, 1 * 1) = (1, 1); of the inputs W1^T (1, 1) = (2, 0);
    attributions x * (2, 0) = (4, 0): they sum to f(x) - f(0) = 4. (Input x gradient would give
    x * W1^T (2, 1) = (6, -1), which sums to 5: the rescale rule is what makes the difference.)

    LRP-epsilon (epsilon -> 0), starting from R = f(x) = 4 at the output: the hidden units get
    a_k w_k / z_out * 4 = (0.5 * 2, 3 * 1) = (1, 3); the inputs x_j sum_k W1[k, j] R_k / z_k =
    (2 * (1 / 0.5 + 3 / 3), -1 * (1 / 0.5 - 3 / 3)) = (6, -1): the bias -0.5 keeps 1 of the 4
    (relevance is conserved only without biases), and on a ReLU net LRP-0 equals input x gradient.
    """
    net = _two_unit_net()
    x = torch.tensor([2.0, -1.0], dtype=torch.float64).view(1, 1, 1, 2)
    target = torch.tensor([0])

    def check(attr: torch.Tensor, expected: list[float], atol: float = 1e-12) -> None:
        want = torch.tensor(expected, dtype=attr.dtype)
        torch.testing.assert_close(attr.flatten(), want, atol=atol, rtol=0)

    check(G.DeepLift().attribute(net, x, target), [4.0, 0.0])
    check(G.LRP().attribute(net, x, target), [6.0, -1.0], atol=1e-7)
    check(G.InputXGradient().attribute(net, x, target), [6.0, -1.0])
    # a nonzero constant baseline: z0 = W1 (1, 1) + b = (1.5, 0), relu(z0) = (1.5, 0), f(1) = 3;
    # slopes ((0.5 - 1.5) / (0.5 - 1.5), (3 - 0) / (3 - 0)) = (1, 1) -> multipliers
    # W1^T (2, 1) = (3, 1), attributions (x - 1) * (3, 1) = (3, -2), summing to f(x) - f(1) = 1
    check(G.DeepLift(baseline=1.0).attribute(net, x, target), [3.0, -2.0])


Stage = tuple[str, np.ndarray | None, np.ndarray | None]


def _dense_layers(model: TinyCNN, shape: tuple[int, ...]) -> list[Stage]:
    """TinyCNN as a list of ("affine", W, b) / ("relu", -, -) stages on flattened vectors: each
    affine module (conv, average pool, linear) turned into its dense matrix by applying it to
    the zero vector and to every basis vector. All rule arithmetic then happens in numpy."""
    stages = []
    with torch.no_grad():
        for module in (model.c1, model.r1, model.c2, model.r2, model.pool, model.fc):
            if isinstance(module, nn.ReLU):
                stages.append(("relu", None, None))
                continue
            n = int(np.prod(shape))
            if isinstance(module, nn.Linear):
                basis = torch.eye(n, dtype=torch.float64)
                bias = module(torch.zeros(1, n, dtype=torch.float64))
                out = module(basis) - bias
            else:
                basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
                bias = module(torch.zeros(1, *shape, dtype=torch.float64))
                out = module(basis) - bias
            pooled = isinstance(module, nn.AdaptiveAvgPool2d)  # flattened next
            shape = (int(bias.numel()),) if pooled else tuple(bias.shape[1:])
            stages.append(("affine", out.reshape(n, -1).T.numpy(), bias.reshape(-1).numpy()))
    return stages


def _forward_dense(stages: list, x: np.ndarray) -> list[np.ndarray]:
    """Every stage's input, and the output last."""
    values = [x]
    for kind, w, b in stages:
        values.append(np.maximum(values[-1], 0) if kind == "relu" else w @ values[-1] + b)
    return values


def _stab(z: np.ndarray, eps: float) -> np.ndarray:
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _lrp_epsilon_reference(
    stages: list[Stage], x: np.ndarray, target: int, eps: float = 1e-9
) -> np.ndarray:
    """Bach et al. 2015 epsilon rule, layer by layer: R_out = f_t(x) on the target unit, then for
    every affine stage z = W a + b: R_a = a * W^T (R_z / (z + eps sign z)) (sign 0 -> +1);
    ReLU hands relevance through unchanged."""
    values = _forward_dense(stages, x)
    rel = np.zeros_like(values[-1])
    rel[target] = values[-1][target]
    for i in reversed(range(len(stages))):
        kind, w, _ = stages[i]
        a, z = values[i], values[i + 1]
        if kind == "affine":
            rel = a * (w.T @ (rel / _stab(z, eps)))
    return rel


def _deeplift_rescale_reference(
    stages: list[Stage], x: np.ndarray, x0: np.ndarray, target: int
) -> np.ndarray:
    """Shrikumar et al. 2017 rescale rule: multipliers m = d Delta f_t / d Delta(input) backwards,
    W^T m through affine stages, m * (relu(z) - relu(z0)) / (z - z0) through ReLUs (the ReLU
    gradient where z == z0); attributions (x - x0) * m."""
    values, base = _forward_dense(stages, x), _forward_dense(stages, x0)
    mult = np.zeros_like(values[-1])
    mult[target] = 1.0
    for i in reversed(range(len(stages))):
        kind, w, _ = stages[i]
        if kind == "affine":
            mult = w.T @ mult
        else:
            z, z0 = values[i], base[i]
            dz = z - z0
            secant = (np.maximum(z, 0) - np.maximum(z0, 0)) / np.where(dz == 0, 1, dz)
            slope = np.where(np.abs(dz) < 1e-10, (z > 0).astype(float), secant)
            mult = mult * slope
    return (x - x0) * mult


@pytest.mark.parametrize("flatten_module", [False, True])
def test_lrp_and_deeplift_match_dense_references_on_a_cnn(
    cnn: nn.Module, flatten_module: bool
) -> None:
    model = cnn
    if flatten_module:  # nn.Flatten has no captum rule: we pass relevance through it
        model = TinyCNN(flatten_module=True).double().eval()
        model.load_state_dict(cnn.state_dict())
    x = _images()
    stages = _dense_layers(cnn, (3, 16, 16))
    lrp = G.LRP().attribute(model, x, TARGET).flatten(1).numpy()
    deeplift = G.DeepLift().attribute(model, x, TARGET).flatten(1).numpy()
    for b in range(3):
        xb = x[b].flatten().numpy()
        ref = _lrp_epsilon_reference(stages, xb, int(TARGET[b]))
        # nn.Flatten gets the epsilon rule too (z = x): one more eps / |z| relative change
        atol = (1e-6 if flatten_module else 1e-9) * np.abs(ref).max()
        np.testing.assert_allclose(lrp[b], ref, rtol=1e-7, atol=atol)
        ref = _deeplift_rescale_reference(stages, xb, np.zeros_like(xb), int(TARGET[b]))
        np.testing.assert_allclose(deeplift[b], ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    assert not any(hasattr(m, "rule") for m in model.modules())


def test_lrp_matches_zennit_epsilon(cnn: nn.Module) -> None:
    """zennit (an LRP library independent of captum): epsilon rule on conv / linear, the same
    normalisation on the average pool, relevance passed through the ReLUs."""
    zennit = pytest.importorskip("zennit")
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Norm, Pass
    from zennit.types import Activation, AvgPool, Convolution
    from zennit.types import Linear as ZLinear

    assert zennit is not None
    x = _images()
    composite = LayerMapComposite([
        (Activation, Pass()),
        (Convolution, Epsilon(epsilon=1e-9)),
        (ZLinear, Epsilon(epsilon=1e-9)),
        (AvgPool, Norm(stabilizer=1e-9)),
    ])
    inputs = x.clone().requires_grad_(True)
    with composite.context(cnn) as modified:
        out = modified(inputs)
        start = torch.nn.functional.one_hot(TARGET, 2).double() * out.detach()
        (ref,) = torch.autograd.grad(out, inputs, grad_outputs=start)
    ours = G.LRP().attribute(cnn, x, TARGET)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-9 * float(ref.abs().max()))


def test_lrp_conserves_relevance_without_biases_and_equals_input_x_gradient(cnn: nn.Module) -> None:
    """Without biases every epsilon step (epsilon 1e-9) conserves relevance: the input map sums to
    f_t(x); and on a ReLU network LRP-0 is input x gradient (Ancona et al. 2018)."""
    model = TinyCNN().double().eval()
    model.load_state_dict(cnn.state_dict())
    with torch.no_grad():
        for module in (model.c1, model.c2, model.fc):
            module.bias.zero_()
    x = _images()
    lrp = G.LRP().attribute(model, x, TARGET)
    with torch.no_grad():
        logit = model(x).gather(1, TARGET[:, None])[:, 0]
    torch.testing.assert_close(lrp.flatten(1).sum(1), logit, rtol=1e-6, atol=1e-10)
    ixg = G.InputXGradient().attribute(model, x, TARGET)
    # equal up to the stabiliser's eps / |z| on near-zero pre-activations
    torch.testing.assert_close(lrp, ixg, rtol=1e-6, atol=1e-6 * float(ixg.abs().max()))


def _deeplift_completeness_gap(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                               baseline: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the DeepLIFT map, f_t(x) - f_t(baseline)) per image."""
    attr = G.DeepLift(baseline=baseline).attribute(model, x, target)
    with torch.no_grad():
        gap = (model(x) - model(torch.full_like(x, baseline))).gather(1, target[:, None])[:, 0]
    assert gap.abs().min() > 1e-3  # a real difference to explain
    return attr.flatten(1).sum(1), gap


def _resnet18(maxpool: bool = True) -> nn.Module:
    torch.manual_seed(0)
    resnet = build_model("resnet18", 2, 32).double().eval()
    with torch.no_grad():
        resnet.get_classifier().weight.normal_(0, 1.0)  # logit gaps of order 1, not 1e-2
    if not maxpool:
        resnet.maxpool = nn.Identity()
    return resnet


def test_deeplift_completeness_on_a_cnn_and_a_timm_resnet(cnn: nn.Module) -> None:
    """Rescale-rule DeepLIFT sums to f_t(x) - f_t(baseline) exactly (summation-to-delta, Shrikumar
    et al. 2017), through convolutions, average pooling, batch norm and residual additions."""
    for model, x in ((cnn, _images()), (_resnet18(maxpool=False), _images(2, 32))):
        for baseline in (0.0, 0.3):
            total, gap = _deeplift_completeness_gap(model, x, TARGET[: x.shape[0]], baseline)
            torch.testing.assert_close(total, gap, rtol=1e-9, atol=1e-12)
    # with a zero baseline the ResNet stem's max pool sees a constant reference: exact as well
    total, gap = _deeplift_completeness_gap(_resnet18(), _images(2, 32), TARGET[:2], 0.0)
    torch.testing.assert_close(total, gap, rtol=1e-9, atol=1e-12)


@pytest.mark.xfail(
    strict=True,
    reason="captum 0.9.0's DeepLift loses summation-to-delta where a ReLU and a MaxPool are "
    "adjacent and the reference's pooled map is not constant; xai_bench's deeplift calls it "
    "(remove this marker once deeplift handles max pooling)",
)
def test_deeplift_completeness_through_max_pooling() -> None:
    """The same property with max pooling: a VGG-style net (two ReLU -> max pool stages, zero
    baseline: the second pool's reference map is not constant) and a ResNet stem (ReLU -> 3x3 / 2
    max pool) with a non-zero baseline. Measured on captum 0.9.0: off by 2-11 % of
    f(x) - f(baseline) on the VGG-style net, 13 % on the ResNet. A max pool alone (no ReLU next
    to it) and a ReLU alone are exact, as is the ResNet with a zero baseline (its stem's
    reference is constant per channel)."""
    torch.manual_seed(1)
    vgg_like = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(6 * 4 * 4, 2)).double().eval()
    for model, x, baseline in ((vgg_like, _images(), 0.0), (_resnet18(), _images(2, 32), 0.3)):
        total, gap = _deeplift_completeness_gap(model, x, TARGET[: x.shape[0]], baseline)
        torch.testing.assert_close(total, gap, rtol=1e-6, atol=1e-9)


def test_deeplift_lrp_on_timm_resnet_restore_inplace_and_refuse_vits(vit: nn.Module) -> None:
    torch.manual_seed(0)
    resnet = build_model("resnet18", 2, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    for name in ("deeplift", "lrp"):
        out = build_method(name)(resnet, x)
        assert out.maps.shape == (2, 32, 32) and torch.isfinite(out.raw).all()
    assert all(m.inplace for m in resnet.modules() if isinstance(m, nn.ReLU))
    assert all(p.requires_grad for p in resnet.parameters())
    for name, hint in (("lrp", "chefer"), ("deeplift", "integrated_gradients")):
        with pytest.raises(ConfigError, match=hint):
            build_method(name)(vit, _images(size=32))


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "integrated_gradients",
                                  "guided_backprop", "deeplift", "lrp"])
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
