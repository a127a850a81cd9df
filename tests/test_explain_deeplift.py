"""DeepLIFT (Rescale rule, xai_bench.explain.deeplift): captum where captum is right (no max
pool), summation-to-delta everywhere (max pools included), hand-computed cases, a dense numpy
reference, and the method's contract (batching, refusals, the model left as it was)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from tiny_models import TinyCNN, tiny_cnn
from torch import nn

from xai_bench.explain.base import build_method
from xai_bench.explain.deeplift import DeepLift, deeplift_attr, derivative
from xai_bench.models import build_model
from xai_bench.utils.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum.*")
TARGET = torch.tensor([0, 1, 1])



@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return tiny_cnn()


def _images(batch: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _resnet18(maxpool: bool = True) -> nn.Module:
    torch.manual_seed(0)
    resnet = build_model("resnet18", 2, 32).double().eval()
    with torch.no_grad():
        resnet.get_classifier().weight.normal_(0, 1.0)  # logit gaps of order 1, not 1e-2
    if not maxpool:
        resnet.maxpool = nn.Identity()
    return resnet


def _vgg_like() -> nn.Module:
    """Two conv -> ReLU -> 2x2 max pool stages: the second pool's reference map is not
    constant even for a zero baseline."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 2)).double().eval()


def _captum(model: nn.Module, x: torch.Tensor, baseline: float) -> torch.Tensor:
    for module in model.modules():  # captum's hooks cannot handle timm's in-place ReLUs
        if getattr(module, "inplace", False):
            module.inplace = False
    return CaptumDeepLift(model).attribute(x.clone().requires_grad_(True), target=TARGET[:len(x)],
                                           baselines=torch.full_like(x, baseline)).detach()


@pytest.mark.parametrize("baseline", [0.0, 0.3])
def test_deeplift_equals_captum_without_max_pooling(cnn: nn.Module, resnets: dict[bool, nn.Module],
                                                    baseline: float) -> None:
    """captum's DeepLift is right where no max pool sits next to a ReLU: the same maps, per
    image (a small CNN, and a timm ResNet-18 with batch norm and residuals, its max pool
    removed)."""
    for model, x in ((cnn, _images()), (resnets[False], _images(2, 32))):
        ours = DeepLift(baseline=baseline).attribute(model, x, TARGET[:len(x)])
        ref = _captum(model, x, baseline)
        for i in range(len(x)):
            torch.testing.assert_close(ours[i], ref[i], rtol=1e-9,
                                       atol=1e-12 * float(ref[i].abs().max()))


def _smooth_net(act: type[nn.Module]) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), act(), nn.Conv2d(4, 4, 3, stride=2),
                         act(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)).double()


@pytest.mark.parametrize("act", [nn.ELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.SiLU, nn.GELU])
def test_other_activations_captum_and_completeness(act: type[nn.Module]) -> None:
    """The Rescale rule on every activation with a rule: equal to captum's DeepLift where captum
    has the rule (ELU, Tanh, Sigmoid; it passes the others by their gradient), and summing to
    f(x) - f(x0) on all of them; the gradient fallback (z = z0) is the activation's derivative."""
    model, x = _smooth_net(act).eval(), _images()
    ours = DeepLift(baseline=0.3).attribute(model, x, TARGET)
    if act in (nn.ELU, nn.Tanh, nn.Sigmoid):
        torch.testing.assert_close(ours, _captum(model, x, 0.3), rtol=1e-9, atol=1e-14)
    total, gap = _gap(model, x, ours, 0.3)
    torch.testing.assert_close(total, gap, rtol=1e-9, atol=1e-12)
    z = torch.linspace(-4, 4, 81, dtype=torch.float64, requires_grad=True)
    module = act()
    y = module(z)
    (slope,) = torch.autograd.grad(y.sum(), z)
    torch.testing.assert_close(derivative(module, z.detach(), y.detach()), slope)


def _gap(model: nn.Module, x: torch.Tensor, attr: torch.Tensor,
         baseline: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the attributions, f_t(x) - f_t(baseline)) per image."""
    target = TARGET[:len(x)]
    with torch.no_grad():
        gap = (model(x) - model(torch.full_like(x, baseline))).gather(1, target[:, None])[:, 0]
    assert gap.abs().min() > 1e-3  # a real difference to explain
    return attr.flatten(1).sum(1), gap


@pytest.fixture(scope="module")
def resnets() -> dict[bool, nn.Module]:
    return {True: _resnet18(), False: _resnet18(maxpool=False)}


@pytest.mark.parametrize("case", ["cnn", "vgg", "resnet", "resnet_no_maxpool"])
def test_deeplift_completeness_through_max_pooling(cnn: nn.Module, resnets: dict[bool, nn.Module],
                                                   case: str) -> None:
    """Summation-to-delta (Shrikumar et al. 2017) on every network here, max pools included: a
    VGG-style net (ReLU -> max pool twice) and the timm ResNet-18 stem (ReLU -> 3x3 / 2 max pool,
    overlapping windows), zero and non-zero baselines."""
    model, x = {"cnn": (cnn, _images()), "vgg": (_vgg_like(), _images()),
                "resnet": (resnets[True], _images(2, 32)),
                "resnet_no_maxpool": (resnets[False], _images(2, 32))}[case]
    for baseline in (0.0, 0.3):
        attr = DeepLift(baseline=baseline).attribute(model, x, TARGET[:len(x)])
        total, gap = _gap(model, x, attr, baseline)
        torch.testing.assert_close(total, gap, rtol=1e-9, atol=1e-12)


def test_captum_loses_the_sum_where_relu_meets_max_pool(resnets: dict[bool, nn.Module]) -> None:
    """What the test above adds: captum 0.9.0 is off by 11 % (VGG-style, zero baseline) and
    13 % (ResNet stem, baseline 0.3) of f(x) - f(baseline) on the same nets."""
    for model, x, baseline in ((_vgg_like(), _images(), 0.0), (resnets[True], _images(2, 32), 0.3)):
        total, gap = _gap(model, x, _captum(model, x, baseline), baseline)
        assert ((total - gap).abs() / gap.abs()).max() > 0.05


def _pool_net(kernel: tuple[int, int], stride: int) -> nn.Module:
    """A (1, 1, 1, 3) image -> ReLU -> max pool along the row -> sum of the windows."""
    net = nn.Sequential(nn.ReLU(), nn.MaxPool2d(kernel, stride), nn.Flatten(),
                        nn.LazyLinear(1, bias=False)).double().eval()
    net(torch.zeros(1, 1, 1, 3, dtype=torch.float64))
    with torch.no_grad():
        net[3].weight.fill_(1.0)
    return net


def test_max_pool_rule_hand_computed() -> None:
    """The max-pool rule by hand, one window of the first two inputs (kernel (1, 2), stride 2):

    x = (1, 3), x0 = (2, 0.5): y = 3 >= y0 = 2, so the input holding max(y, y0) is x's argmax
    (index 1), dx_1 = 2.5, m = (3 - 2) / 2.5 = 0.4: attributions (0, 1, 0), summing to 1.
    x = (1, 0.5), x0 = (2, 0): y = 1 < y0 = 2, so the reference's argmax (index 0) takes it,
    dx_0 = -1, m = -1 / -1 = 1: attributions (-1, 0, 0), summing to -1. (The max's plain
    gradient gives (0, 2.5, 0) in the first case: 2.5, not 1.)
    Overlapping windows (kernel (1, 2), stride 1) with x = (0, 5, 1), x0 = 0: both windows pick
    input 1, m = 1 each, and their multipliers ADD: attributions (0, 10, 0) = f(x) - f(x0) = 5 + 5
    (captum's max_unpool keeps one window: 5)."""
    one = _pool_net((1, 2), 2)
    target = torch.tensor([0])

    def attr(net: nn.Module, x: list[float], x0: list[float] | float) -> list[float]:
        image = torch.tensor(x, dtype=torch.float64).view(1, 1, 1, 3)
        ref = torch.as_tensor(x0, dtype=torch.float64).view(-1)
        ref = ref.view(1, 1, 1, 3) if ref.numel() == 3 else float(ref)
        return deeplift_attr(net, image, ref, target).flatten().tolist()

    assert attr(one, [1.0, 3.0, 7.0], [2.0, 0.5, 7.0]) == pytest.approx([0.0, 1.0, 0.0], abs=1e-12)
    assert attr(one, [1.0, 0.5, 7.0], [2.0, 0.0, 7.0]) == pytest.approx([-1.0, 0.0, 0.0],
                                                                       abs=1e-12)
    two = _pool_net((1, 2), 1)
    assert attr(two, [0.0, 5.0, 1.0], 0.0) == pytest.approx([0.0, 10.0, 0.0], abs=1e-12)


def _two_unit_net() -> nn.Module:
    """f(x) = 2 relu(x1 + x2 - 0.5) + relu(x1 - x2), x given as a (B, 1, 1, 2) image."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double().eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        net[1].bias.copy_(torch.tensor([-0.5, 0.0]))
        net[3].weight.copy_(torch.tensor([[2.0, 1.0]]))
        net[3].bias.zero_()
    return net


def test_deeplift_hand_computed_on_two_relu_units() -> None:
    """x = (2, -1), baseline 0: hidden pre-activations z = (0.5, 3), at the baseline (-0.5, 0);
    f(x) = 4, f(0) = 0. Rescale slopes (0.5 / 1, 3 / 3) = (0.5, 1); hidden multipliers (1, 1);
    input multipliers W1^T (1, 1) = (2, 0); attributions (4, 0), summing to 4 (input x gradient
    would give (6, -1), summing to 5). Baseline 1: z0 = (1.5, 0), slopes (1, 1), multipliers
    W1^T (2, 1) = (3, 1), attributions (x - 1) (3, 1) = (3, -2), summing to f(x) - f(1) = 1."""
    net = _two_unit_net()
    x = torch.tensor([2.0, -1.0], dtype=torch.float64).view(1, 1, 1, 2)
    for baseline, want in ((0.0, [4.0, 0.0]), (1.0, [3.0, -2.0])):
        got = DeepLift(baseline=baseline).attribute(net, x, torch.tensor([0]))
        torch.testing.assert_close(got.flatten(), torch.tensor(want, dtype=torch.float64),
                                   atol=1e-12, rtol=0)


def _dense_rescale_reference(model: TinyCNN, x: np.ndarray, target: int) -> np.ndarray:
    """TinyCNN as dense matrices (each affine module applied to the zero vector and every basis
    vector), then the Rescale rule in numpy against a zero baseline."""
    stages, shape = [], (3, 16, 16)
    with torch.no_grad():
        for module in (model.c1, model.r1, model.c2, model.r2, model.pool, model.fc):
            if isinstance(module, nn.ReLU):
                stages.append(None)
                continue
            n = int(np.prod(shape))
            basis = torch.eye(n, dtype=torch.float64)
            if not isinstance(module, nn.Linear):
                basis = basis.view(n, *shape)
            bias = module(torch.zeros_like(basis[:1]))
            out = module(basis) - bias
            shape = (bias.numel(),) if isinstance(module, nn.AdaptiveAvgPool2d) else bias.shape[1:]
            stages.append((out.reshape(n, -1).T.numpy(), bias.reshape(-1).numpy()))
    values, base = [x], [np.zeros_like(x)]
    for stage in stages:
        for seq in (values, base):
            seq.append(np.maximum(seq[-1], 0) if stage is None else stage[0] @ seq[-1] + stage[1])
    mult = np.zeros_like(values[-1])
    mult[target] = 1.0
    for i in reversed(range(len(stages))):
        if stages[i] is not None:
            mult = stages[i][0].T @ mult
            continue
        dz = values[i] - base[i]
        secant = (np.maximum(values[i], 0) - np.maximum(base[i], 0)) / np.where(dz == 0, 1, dz)
        mult = mult * np.where(np.abs(dz) < 1e-10, (values[i] > 0).astype(float), secant)
    return x * mult


def test_deeplift_matches_a_dense_reference(cnn: nn.Module) -> None:
    x = _images()
    ours = DeepLift().attribute(cnn, x, TARGET).flatten(1).numpy()
    for b in range(3):
        ref = _dense_rescale_reference(cnn, x[b].flatten().numpy(), int(TARGET[b]))
        np.testing.assert_allclose(ours[b], ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_batch_equals_single_calls_and_model_is_left_alone() -> None:
    resnet = _resnet18()
    resnet.conv1.weight.requires_grad_(False)
    x = _images(3, 32)
    method = build_method("deeplift", baseline=0.2)
    batch = method(resnet, x, TARGET)
    assert batch.maps.shape == (3, 32, 32) and batch.raw.shape == (3, 32, 32)
    for i in range(3):
        single = method(resnet, x[i:i + 1], TARGET[i:i + 1])
        torch.testing.assert_close(single.raw[0], batch.raw[i], atol=1e-10, rtol=1e-8)
    assert all(m.inplace for m in resnet.modules() if isinstance(m, nn.ReLU))
    assert not any("forward" in m.__dict__ for m in resnet.modules())  # max pool's own again
    assert not resnet.conv1.weight.requires_grad and resnet.fc.weight.requires_grad
    assert method.passes(resnet, 32, 32).forwards == 2


def test_refusals() -> None:
    torch.manual_seed(0)
    vit = build_model("vit_tiny_patch16_224", 2, 32, patch_size=8, depth=2, embed_dim=32,
                      num_heads=2).eval()
    with pytest.raises(ConfigError, match="integrated_gradients"):
        build_method("deeplift")(vit, torch.randn(1, 3, 32, 32))
    normed = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GroupNorm(1, 2), nn.ReLU(), nn.Flatten(),
                           nn.LazyLinear(2)).eval()
    normed(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="GroupNorm"):
        build_method("deeplift")(normed, torch.randn(1, 3, 8, 8))
    unpooled = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.MaxPool2d(2, return_indices=True))
    with pytest.raises(ConfigError, match="return_indices"):
        build_method("deeplift")(unpooled, torch.randn(1, 3, 8, 8))


class _InPlaceAfterActivation(nn.Module):
    """conv -> ReLU, whose output the forward then shifts in place (as `x += 1` would), -> max
    pool -> linear: the rule's activations are views, so the first try fails and DeepLIFT runs
    again on copies of them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.act, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        y += 0.25
        return self.fc(self.pool(y).flatten(1))


def test_an_activation_changed_in_place_is_copied_not_lost() -> None:
    """Summation-to-delta and the dense equal of the same net without the in-place shift."""
    model = _InPlaceAfterActivation().double().eval()
    x = _images()
    attr = DeepLift(baseline=0.3).attribute(model, x, TARGET)
    total, gap = _gap(model, x, attr, 0.3)
    torch.testing.assert_close(total, gap, rtol=1e-9, atol=1e-12)
    # the shift moves both sides equally: the same multipliers as without it
    plain = nn.Sequential(model.conv, model.act, model.pool, nn.Flatten(), model.fc)
    ref = DeepLift(baseline=0.3).attribute(plain, x, TARGET)
    torch.testing.assert_close(attr, ref, rtol=1e-9, atol=1e-12)
