"""LRP for CNNs (xai_bench.explain.lrp_cnn) against zennit 0.5.1 (same composite, same model,
per image), captum's epsilon rule, hand-computed z+ / gamma / flat / box cases, and relevance
conservation layer by layer where the rules conserve."""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import LRP as CaptumLRP
from captum.attr._utils.lrp_rules import EpsilonRule
from tiny_models import TinyCNN
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.rules import Epsilon
from zennit.torchvision import ResNetCanonizer
from zennit.types import Linear as AnyLinear

from xai_bench.explain import lrp_cnn
from xai_bench.explain.base import build_method
from xai_bench.explain.lrp_cnn import BOX_LOW, LRP
from xai_bench.models import build_model
from xai_bench.utils.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TARGET = torch.tensor([0, 1, 1])
LOW, HIGH = -2.0, 2.5



def _images(batch: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _random_batch_norms(model: nn.Module, eps: float = 0.0) -> nn.Module:
    """Non-trivial running statistics; eps = 0 because zennit's merge leaves each batch norm
    computing x / sqrt(1 + eps) instead of x (a 5e-6 relative change per layer, 1e-4 over a
    ResNet), which would hide a real difference of that size."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0, 0.2)
            module.eps = eps
    return model.eval()


def _nets() -> dict[str, tuple[nn.Module, torch.Tensor, list]]:
    """name -> (model, images, zennit canonizers)."""
    torch.manual_seed(0)
    tiny = TinyCNN().double().eval()
    torch.manual_seed(2)
    # a conv right after a conv: signed inputs, so z+ and gamma use both weight signs
    signed = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 6, 3, padding=1),
                           nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3),
                           nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    torch.manual_seed(3)
    resnet = torchvision.models.resnet18(num_classes=2)
    return {"tiny": (tiny, _images(), []),
            "signed_bn": (_random_batch_norms(signed.double()), _images(),
                          [SequentialMergeBatchNorm()]),
            "torchvision_resnet18": (_random_batch_norms(resnet.double()), _images(2, 16),
                                     [ResNetCanonizer()])}


@pytest.fixture(scope="module")
def nets() -> dict[str, tuple[nn.Module, torch.Tensor, list]]:
    return _nets()


def _zennit(model: nn.Module, composite: object, x: torch.Tensor) -> torch.Tensor:
    """zennit's relevance, starting from the target logit's value (as captum and we do)."""
    inputs = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(inputs)
        start = nn.functional.one_hot(TARGET[:len(x)], out.shape[1]).to(out) * out.detach()
        (relevance,) = torch.autograd.grad(out, inputs, grad_outputs=start)
    return relevance


def _composites(stab: float, canonizers: list) -> dict[str, object]:
    return {
        "epsilon": LayerMapComposite(layer_map_base(stab) + [(AnyLinear, Epsilon(stab))],
                                     canonizers=canonizers),
        "epsilon_plus_flat": EpsilonPlusFlat(epsilon=stab, stabilizer=stab, canonizers=canonizers),
        "epsilon_gamma_box": EpsilonGammaBox(low=LOW, high=HIGH, epsilon=stab, stabilizer=stab,
                                             canonizers=canonizers),
    }


@pytest.mark.parametrize("net", ["tiny", "signed_bn", "torchvision_resnet18"])
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box"])
def test_composites_equal_zennit_per_image(nets: dict, net: str, composite: str) -> None:
    """Same composite, same model, per image, batch norms merged (zennit's canonizers; for the
    ResNet its ResNetCanonizer, whose residual sum gets the norm rule). With a stabiliser of
    1e-12 everywhere the maps agree to 1e-9 of their scale; at zennit's default 1e-6 they differ
    only where zennit stabilises the residual sum (our split is exact): below 1e-3 of the scale."""
    model, x, canonizers = nets[net]
    for stab, rtol in ((1e-12, 1e-9), (1e-6, 1e-3 if net == "torchvision_resnet18" else 1e-9)):
        ref = _zennit(model, _composites(stab, canonizers)[composite], x)
        ours = LRP(composite=composite, epsilon=stab, stabilizer=stab, low=LOW,
                   high=HIGH).attribute(model, x, TARGET[:len(x)])
        for i in range(len(x)):
            scale = float(ref[i].abs().max())
            torch.testing.assert_close(ours[i], ref[i], rtol=0, atol=rtol * scale)


def test_epsilon_equals_captum_per_image(nets: dict) -> None:
    """captum's LRP with the epsilon rule on every conv, linear and average pool (no batch norm:
    captum gives BN its own epsilon step where we merge it)."""
    model, x, _ = nets["tiny"]
    ruled = TinyCNN().double().eval()
    ruled.load_state_dict(model.state_dict())
    for module in (ruled.c1, ruled.c2, ruled.pool, ruled.fc):
        module.rule = EpsilonRule(epsilon=1e-9)
    ref = CaptumLRP(ruled).attribute(x.clone().requires_grad_(True), target=TARGET)
    ours = LRP(composite="epsilon", epsilon=1e-9).attribute(model, x, TARGET)
    for i in range(len(x)):
        torch.testing.assert_close(ours[i], ref[i], rtol=1e-9,
                                   atol=1e-12 * float(ref[i].abs().max()))
    # epsilon 0 (LRP-0) on a ReLU network is input x gradient (Ancona et al. 2018), without NaNs
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).gather(1, TARGET[:, None]).sum(), xg)
    torch.testing.assert_close(LRP(epsilon=0.0).attribute(model, x, TARGET), x * grad)


def _hand_net() -> nn.Module:
    """x (2 channels, 1 pixel) -> 1x1 conv W1 = [[1, -1], [2, 1]] -> ReLU -> 1x1 conv
    W2 = [[3, -0.5]] -> flatten: a first layer and one more conv, no biases."""
    net = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1, bias=False),
                        nn.Flatten()).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]).view(2, 2, 1, 1))
        net[2].weight.copy_(torch.tensor([[3.0, -0.5]]).view(1, 2, 1, 1))
    return net


def test_hand_computed_rules_on_a_two_layer_net() -> None:
    """x = (2, 1): z1 = (1, 5) = a (both positive), logit z2 = 3 - 2.5 = 0.5 = R.

    z+ (second conv): z+ = 3 * 1 = 3, R_a = (3 / 3, 0) * 0.5 = (0.5, 0).
      then flat (first): each unit has 2 inputs: R_x = (0.5 / 2, 0.5 / 2) = (0.25, 0.25).
    gamma 0.25 (second conv, z2 > 0): weights W2 + 0.25 W2+ = (3.75, -0.5), denominator
      3.75 - 2.5 = 1.25, R_a = (3.75 / 1.25, -2.5 / 1.25) * 0.5 = (1.5, -1.0).
      then box, l = -2, h = 2.5 (first): zB_1 = 1 - (-2) (1) - 2.5 (-1) = 5.5,
      zB_2 = 5 - (-2) (2 + 1) = 11;
      R_x1 = (2 * 1 + 2 * 1) / 5.5 * 1.5 + (2 * 2 + 2 * 2) / 11 * (-1) = 12 / 11 - 8 / 11,
      R_x2 = (1 * -1 - 2.5 * -1) / 5.5 * 1.5 + (1 * 1 + 2 * 1) / 11 * (-1) = 4.5 / 11 - 3 / 11.
    epsilon everywhere (LRP-0): x * W1^T (W2^T) = (2, 1) * (3 - 1, -3 - 0.5) = (4, -3.5).
    Each map sums to the logit 0.5 (no biases: every rule conserves)."""
    net = _hand_net()
    x = torch.tensor([2.0, 1.0], dtype=torch.float64).view(1, 2, 1, 1)
    target = torch.tensor([0])
    cases = {
        "epsilon_plus_flat": [0.25, 0.25],
        "epsilon_gamma_box": [4.0 / 11, 1.5 / 11],
        "epsilon": [4.0, -3.5],
    }
    for composite, want in cases.items():
        got = LRP(composite=composite, epsilon=1e-12, stabilizer=1e-12, low=LOW, high=HIGH,
                  gamma=0.25).attribute(net, x, target)
        torch.testing.assert_close(got.flatten(), torch.tensor(want, dtype=torch.float64),
                                   rtol=0, atol=1e-10)
        assert float(got.sum()) == pytest.approx(0.5, abs=1e-10)
    # the second conv's rule alone, read at the ReLU output: z+ -> (0.5, 0), gamma -> (1.5, -1)
    for composite, want in (("epsilon_plus_flat", [0.5, 0.0]), ("epsilon_gamma_box", [1.5, -1.0])):
        got = _relevance_at(net, net[1], x, composite)
        torch.testing.assert_close(got.flatten(), torch.tensor(want, dtype=torch.float64),
                                   rtol=0, atol=1e-10)


def _relevance_at(net: nn.Module, module: nn.Module, x: torch.Tensor, composite: str,
                  target: torch.Tensor | None = None) -> torch.Tensor:
    """R = t * dS/dt at the output t of `module` during an LRP explanation."""
    seen: list[torch.Tensor] = []

    def keep(_m: nn.Module, _a: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        seen.append(out)

    handle = module.register_forward_hook(keep)
    try:
        LRP(composite=composite, epsilon=1e-12, stabilizer=1e-12, low=LOW,
            high=HIGH).attribute(net, x, torch.zeros(len(x), dtype=torch.long) if target is None
                                 else target)
    finally:
        handle.remove()
    return seen[0].detach() * seen[0].grad


class _ResidualNet(nn.Module):
    """No biases anywhere: conv -> ReLU -> (conv -> ReLU -> conv) + skip -> ReLU -> max pool
    -> conv -> ReLU -> average pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a0 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU()
        self.b1, self.a1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU()
        self.b2, self.a2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU()
        self.pool1, self.c3, self.a3 = nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, bias=False), nn.ReLU()
        self.pool2, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(5, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a0(self.stem(x))
        h = self.a2(self.b2(self.a1(self.b1(h))) + h)
        h = self.a3(self.c3(self.pool1(h)))
        return self.fc(self.pool2(h).flatten(1))


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box"])
def test_relevance_is_conserved_layer_by_layer(composite: str) -> None:
    """Without biases every rule here conserves (tiny stabilisers): the relevance summed at the
    input and at every cut through the network (each activation outside the residual branch,
    the pools) equals the target logit; the residual sum splits it between branch and skip."""
    torch.manual_seed(4)
    net = _ResidualNet().double().eval()
    x = _images(2, 12)
    with torch.no_grad():
        logit = net(x).gather(1, TARGET[:2, None])[:, 0]
    for module in (net.a0, net.a2, net.pool1, net.a3, net.pool2):
        total = _relevance_at(net, module, x, composite, TARGET[:2]).flatten(1).sum(1)
        torch.testing.assert_close(total, logit, rtol=1e-8, atol=1e-10)
    relevance = LRP(composite=composite, epsilon=1e-12, stabilizer=1e-12, low=-3.0,
                    high=3.0).attribute(net, x, TARGET[:2])
    torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box"])
def test_timm_resnet_batch_equals_single_calls_and_model_is_left_alone(composite: str) -> None:
    torch.manual_seed(0)
    resnet = build_model("resnet18", 2, 32, attention="se").double().eval()
    resnet.conv1.weight.requires_grad_(False)
    x = _images(2, 32)
    method = build_method("lrp", composite=composite)
    batch = method(resnet, x, TARGET[:2])
    assert batch.raw.shape == (2, 32, 32) and torch.isfinite(batch.raw).all()
    for i in range(2):
        single = method(resnet, x[i:i + 1], TARGET[i:i + 1])
        torch.testing.assert_close(single.raw[0], batch.raw[i], atol=1e-10, rtol=1e-8)
    assert all(m.inplace for m in resnet.modules() if isinstance(m, nn.ReLU))
    assert not resnet.conv1.weight.requires_grad and resnet.fc.weight.requires_grad
    assert method.passes(resnet, 32, 32).backwards == 1


def test_settings_and_refusals() -> None:
    method = LRP(composite="epsilon_gamma_box")
    assert torch.allclose(method.settings.low.flatten(), torch.tensor(BOX_LOW, dtype=torch.float64))
    assert float(method.settings.high.flatten()[0]) == pytest.approx((1 - 0.485) / 0.229)
    assert BOX_LOW[0] == pytest.approx(-0.485 / 0.229)
    for bad in ({"composite": "alpha_beta"}, {"gamma": -1.0}, {"stabilizer": 0.0},
                {"low": 1.0, "high": 0.0}):
        with pytest.raises(ConfigError):
            LRP(**bad)
    torch.manual_seed(0)
    vit = build_model("vit_tiny_patch16_224", 2, 32, patch_size=8, depth=2, embed_dim=32,
                      num_heads=2).eval()
    with pytest.raises(ConfigError, match="chefer or attnlrp"):
        build_method("lrp")(vit, torch.randn(1, 3, 32, 32))
    reflect = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                            nn.Flatten(), nn.Linear(2 * 8 * 8, 2)).eval()
    build_method("lrp")(reflect, torch.randn(1, 3, 8, 8))  # epsilon needs no transposed conv
    with pytest.raises(ConfigError, match="padding_mode='reflect'"):
        build_method("lrp", composite="epsilon_plus_flat")(reflect, torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="GroupNorm"):
        build_method("lrp")(nn.Sequential(nn.Conv2d(3, 2, 3), nn.GroupNorm(1, 2), nn.Flatten(),
                                          nn.Linear(72, 2)).eval(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="2 values"):
        build_method("lrp", composite="epsilon_gamma_box", low=[0.0, 0.0], high=[1.0, 1.0])(
            TinyCNN().eval(), torch.randn(1, 3, 8, 8))


def test_cached_weights_follow_the_model_state() -> None:
    """The merged / clamped weights are kept per model state: after a weight written in place, a
    BatchNorm statistic changed or a layer replaced, the maps are a fresh computation's."""
    torch.manual_seed(0)
    model = _random_batch_norms(build_model("resnet18", 2, 32), eps=1e-5)
    x, target = _images(1, 32).float(), TARGET[:1]
    method = build_method("lrp", composite="epsilon_gamma_box")

    def fresh() -> torch.Tensor:
        lrp_cnn._WEIGHTS.clear()
        lrp_cnn._FLAT_COUNTS.clear()
        return method(model, x, target).raw

    before = method(model, x, target).raw
    assert len(lrp_cnn._WEIGHTS) > 0
    torch.testing.assert_close(method(model, x, target).raw, before, rtol=0, atol=0)
    edits = [lambda: model.layer1[0].conv1.weight.mul_(-1.5),
             lambda: model.layer2[0].bn1.running_var.mul_(3.0),
             lambda: setattr(model.layer3[0], "conv2", nn.Conv2d(256, 256, 3, padding=1,
                                                                 bias=False)),
             lambda: model.conv1.weight.mul_(0.5)]  # the first layer (the box rule)
    for edit in edits:
        with torch.no_grad():
            edit()
        cached = method(model, x, target).raw
        assert not torch.allclose(cached, before)
        torch.testing.assert_close(cached, fresh(), rtol=0, atol=0)
        before = cached
