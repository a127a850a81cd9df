"""Axiomatic metrics (non_sensitivity, input_invariance, completeness) against quantus 0.6.0 on
the same model, images and maps, and hand-computed cases on linear models.

Where quantus and ours differ, and how the comparisons bridge it:
- non_sensitivity: quantus removes one input ELEMENT per step (a channel of a pixel, its map
  value broadcast over channels); ours removes a pixel (every channel). On one-channel images
  the two coincide. quantus cannot group features (features_in_step > 1 compares arrays of
  different lengths); ours groups pixels.
- input_invariance: quantus shifts every input element except the first (its perturb_batch
  passes indices[1:]) and absorbs the shift with ONE bias per channel taken from the smallest
  response, which is wrong at the borders of a zero-padded first layer. The comparison gives
  quantus a perturb_func that shifts every element and an unpadded first layer; a separate test
  shows quantus' shifted model is not the original function on a padded one, and ours is.
- completeness: quantus compares sum(A) == f(x) - f(x0) with exact float equality (and
  normalises the map by default); ours tolerates rtol / atol. rtol = atol = 0 is quantus' rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from xai_bench.explain import build_method
from xai_bench.metrics import build_metric
from xai_bench.metrics.base import EvalBatch
from xai_bench.metrics.functional import axiomatic as F_axiom
from xai_bench.utils.errors import ConfigError

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

SIZE = 8


class Window(nn.Module):
    """Multiplies the image by a fixed 0/1 window: pixels outside it cannot matter."""

    def __init__(self, window: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("window", window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.window


def _windowed_cnn(channels: int = 1, classes: int = 3) -> nn.Module:
    torch.manual_seed(3)
    window = torch.zeros(SIZE, SIZE)
    window[2:7, 1:6] = 1
    return nn.Sequential(
        Window(window), nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * SIZE * SIZE, classes),
    ).eval()


def _cnn(padding: int = 0, classes: int = 3, channels: int = 3) -> nn.Module:
    torch.manual_seed(4)
    inner = SIZE - 2 * (1 - padding)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=padding), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
        nn.Tanh(), nn.Flatten(), nn.Linear(4 * inner * inner, classes),
    ).eval()


def _batch(model: nn.Module, method: Any, images: torch.Tensor) -> EvalBatch:
    ids = torch.arange(images.shape[0]) + 10
    exp = method(model, images, ids=ids)
    return EvalBatch(images=images, labels=exp.target, ids=ids, maps=exp.maps, target=exp.target,
                     logits=exp.logits, model=model, method=method)


def _explain_func(method: Any):
    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        return method(model, x, target=torch.as_tensor(np.asarray(targets)).long()).maps.numpy()

    return explain


def _scores(name: str, batch: EvalBatch, **settings: Any) -> dict[str, torch.Tensor]:
    metric = build_metric(name, **settings)
    metric.update(batch)
    return metric.compute()


# ----------------------------------------------------------------------------------------------
# non_sensitivity


@pytest.mark.parametrize("method_name,eps", [("saliency", 1e-5), ("input_x_gradient", 1e-2),
                                             ("random", 1e-5)])
def test_non_sensitivity_matches_quantus_on_one_channel(method_name: str, eps: float) -> None:
    import quantus

    model = _windowed_cnn()
    images = torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    batch = _batch(model, build_method(method_name), images)
    ours = _scores("non_sensitivity", batch, eps=eps, fill="black", batch_size=50)
    oracle = quantus.NonSensitivity(eps=eps, features_in_step=1, abs=True, normalise=False,
                                    perturb_baseline="black", disable_warnings=True)
    theirs = np.asarray(oracle(model=model, x_batch=images.numpy(), y_batch=batch.target.numpy(),
                               a_batch=batch.maps[:, None].numpy(), device="cpu"))
    np.testing.assert_array_equal(ours["non_sensitivity"].numpy(), theirs.astype(np.float32))
    assert theirs.max() > 0  # not vacuous


def test_non_sensitivity_by_hand_on_a_linear_model() -> None:
    """logits (w . x, 0) with w = 0 on the last 8 of 16 pixels: removing a pixel (set to min x =
    0) changes p exactly where w x != 0. The map is |w| / max |w|, but also marks two pixels the
    model ignores: exactly those two are violations; a map that is zero on two pixels the model
    uses adds two more."""
    w = torch.zeros(16)
    w[:8] = torch.tensor([1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.5]) / 10
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, torch.zeros(16)]))
    images = torch.ones(1, 1, 4, 4)
    images[0, 0, 3, 3] = 0.0  # min x = 0: the black fill; this pixel's removal changes nothing
    maps = (w.abs() / 0.45).view(1, 4, 4).clone()
    maps[0, 2, 0] = maps[0, 2, 1] = 0.5  # attributed but ignored by the model
    target = torch.zeros(1, dtype=torch.long)
    count = F_axiom.non_sensitivity(model, images, maps, target, eps=1e-6)
    assert count.tolist() == [2.0]
    maps[0, 0, 0] = maps[0, 0, 1] = 0.0  # used by the model but not attributed
    assert F_axiom.non_sensitivity(model, images, maps, target, eps=1e-6).tolist() == [4.0]
    # groups of 4 pixels = the rows: rows 0 and 1 are used and attributed (row 0 partly), row 2
    # is ignored but attributed, row 3 is ignored and not attributed: one violation
    assert F_axiom.non_sensitivity(model, images, maps, target, eps=1e-6,
                                   features_in_step=4).tolist() == [1.0]
    # features_in_step need not divide H W: 3 pixels per group, the last group of one pixel;
    # only the group of pixels 9 - 11 (ignored, pixel 9 attributed) disagrees
    assert F_axiom.non_sensitivity(model, images, maps, target, eps=1e-6,
                                   features_in_step=3).tolist() == [1.0]


def test_non_sensitivity_forwards_the_evaluation_batch_size_by_default() -> None:
    """Default: forwards of B images (the size the run chose for its device); any batch_size
    gives the same counts; the clean images and each group once (the declared cost)."""
    model = _cnn()
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    images = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    batch = _batch(model, build_method("saliency"), images)
    groups = -(-SIZE * SIZE // 7)
    scores = {}
    for batch_size in (None, 3, 1000):
        sizes.clear()
        settings = {} if batch_size is None else {"batch_size": batch_size}  # None: the default
        scores[batch_size] = _scores("non_sensitivity", batch, eps=1e-2, features_in_step=7,
                                     **settings)["non_sensitivity"]
        assert sum(sizes) == 5 * (groups + 1)
        expected = 5 if batch_size is None else min(batch_size, 5 * (groups + 1))
        assert max(sizes) == expected and sizes.count(expected) == len(sizes) - (
            sum(sizes) % expected > 0)
    assert torch.equal(scores[None], scores[3]) and torch.equal(scores[None], scores[1000])
    assert scores[None].max() > 0  # not vacuous


# ----------------------------------------------------------------------------------------------
# input_invariance


def test_shifted_model_is_the_original_function_even_with_padding() -> None:
    from quantus.helpers.model.pytorch_model import PyTorchModel

    model = _cnn(padding=1)
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    shifted = F_axiom.shift_absorbing_model(model, -1.0)
    with torch.no_grad():
        torch.testing.assert_close(shifted(images - 1.0), model(images), atol=1e-5, rtol=1e-5)
        theirs = PyTorchModel(model, channel_first=True, softmax=False, device="cpu")
        quantus_shifted = theirs.add_mean_shift_to_first_layer(-1.0, (1, 3, SIZE, SIZE))
        gap = (quantus_shifted(images - 1.0) - model(images)).abs().max()
    assert gap > 1e-3  # quantus' one bias per channel misses the zero-padded borders
    untouched = _cnn(padding=1).state_dict()
    assert all(torch.equal(v, untouched[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method_name,invariant", [("saliency", True),
                                                   ("input_x_gradient", False)])
def test_input_invariance_matches_quantus(method_name: str, invariant: bool) -> None:
    import quantus

    model = _cnn(padding=0)
    method = build_method(method_name)
    images = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    batch = _batch(model, method, images)
    ours = _scores("input_invariance", batch, shift=-1.0)
    shifted_maps: list[np.ndarray] = []
    explain = _explain_func(method)

    def recording(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kw: Any):
        out = explain(model, inputs, targets, **kw)
        shifted_maps.append(out)
        return out

    def shift_all(arr: np.ndarray, indices: Any, indexed_axes: Any, input_shift: float,
                  **_: Any) -> np.ndarray:
        return arr + input_shift

    oracle = quantus.InputInvariance(input_shift=-1.0, perturb_func=shift_all,
                                     disable_warnings=True)
    theirs = np.asarray(oracle(model=model, x_batch=images.numpy(), y_batch=batch.target.numpy(),
                               a_batch=batch.maps[:, None].numpy(), explain_func=recording,
                               device="cpu"))
    assert theirs.tolist() == [invariant] * 4
    assert ours["input_invariance"].tolist() == [float(invariant)] * 4
    shifted = F_axiom.shift_absorbing_model(model, -1.0)
    mine = method(shifted, images - 1.0, target=batch.target).maps
    np.testing.assert_allclose(mine.numpy(), shifted_maps[-1], atol=1e-5)
    expected_diff = (batch.maps - mine).flatten(1).abs().amax(1)
    torch.testing.assert_close(ours["input_invariance/max_abs_diff"], expected_diff)


def test_input_invariance_by_hand_on_a_linear_model() -> None:
    """f = w . x + b on one 2 x 2 channel, x = 1, shift -1: x' = 0. Saliency |w| does not
    change; Input x Gradient goes from w = (1, 2, 3, 4), normalised (0, 1/3, 2/3, 1) / (1 +
    eps / 3), to the zero map (all zeros after min-max): the largest change is 3 / (3 + eps)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.copy_(torch.tensor([0.5, 0.0]))
    images = torch.ones(2, 1, 2, 2)
    for name, expected, diff in [("saliency", 1.0, 0.0), ("input_x_gradient", 0.0,
                                                          3 / (3 + 1e-7))]:
        batch = _batch(model, build_method(name, target=0), images)
        scores = _scores("input_invariance", batch, shift=-1.0)
        assert scores["input_invariance"].tolist() == [expected] * 2, name
        assert scores["input_invariance/max_abs_diff"].tolist() == pytest.approx([diff] * 2,
                                                                                 abs=1e-6)


# ----------------------------------------------------------------------------------------------
# completeness


def _integer_linear(classes: int = 3) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, classes)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model[1].weight.copy_(torch.randint(-3, 4, model[1].weight.shape, generator=gen).float())
        model[1].bias.copy_(torch.randint(-3, 4, (classes,), generator=gen).float())
    return model


@pytest.mark.parametrize("model_name", ["integer_linear", "cnn"])
def test_completeness_matches_quantus(model_name: str) -> None:
    import quantus

    # one channel: quantus replaces only the first H W input elements (the first channel) by
    # the baseline when the map has one value per pixel
    model = _integer_linear() if model_name == "integer_linear" else _cnn(1, channels=1)
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 4, (4, 1, SIZE, SIZE), generator=gen).float()  # min 0: black = 0
    method = build_method("input_x_gradient")
    batch = _batch(model, method, images)
    raw = method(model, images, target=batch.target).raw
    ours = _scores("completeness", batch, baseline="black", rtol=0.0, atol=0.0)
    deltas: list[np.ndarray] = []

    def capture(delta: np.ndarray) -> np.ndarray:
        deltas.append(np.asarray(delta).copy())
        return delta

    oracle = quantus.Completeness(abs=False, normalise=False, perturb_baseline="black",
                                  output_func=capture, disable_warnings=True)
    theirs = np.asarray(oracle(model=model, x_batch=images.numpy(), y_batch=batch.target.numpy(),
                               a_batch=raw[:, None].numpy(), device="cpu"))
    total, delta = F_axiom.completeness(model, images, raw, batch.target, baseline="black")
    np.testing.assert_allclose(delta.numpy(), deltas[-1], rtol=1e-5, atol=1e-4)
    assert ours["completeness"].tolist() == theirs.astype(float).tolist()
    torch.testing.assert_close(ours["completeness/gap"], (total - delta).abs().float())
    # Input x Gradient is complete on a linear model (exactly, with integer weights and
    # inputs), not on the CNN
    assert theirs.all() if model_name == "integer_linear" else not theirs.any()


def test_completeness_by_hand_on_a_linear_model() -> None:
    """f = w . x + b, baseline 0: Input x Gradient sums to w . x = f(x) - f(0) exactly; the
    saliency |w| sums to |w|_1, a gap of |w|_1 - w . x."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.copy_(torch.tensor([0.25, 0.0]))
    images = torch.tensor([[[[2.0, 1.0], [1.0, 4.0]]]])
    ixg = _scores("completeness", _batch(model, build_method("input_x_gradient", target=0),
                                         images))
    assert ixg["completeness"].reshape(-1).tolist() == [1.0]  # one image: compute() squeezes
    assert ixg["completeness/gap"].reshape(-1).tolist() == pytest.approx([0.0], abs=1e-6)
    sal = _scores("completeness", _batch(model, build_method("saliency", target=0), images))
    assert sal["completeness"].reshape(-1).tolist() == [0.0]
    assert sal["completeness/gap"].reshape(-1).tolist() == pytest.approx([6.5 - 5.0], abs=1e-6)


def test_integrated_gradients_is_complete_within_tolerance() -> None:
    model = _cnn(padding=1)
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    batch = _batch(model, build_method("integrated_gradients", n_steps=64), images)
    scores = _scores("completeness", batch)  # zero baseline = IG's, rtol 0.05
    assert scores["completeness"].tolist() == [1.0] * 3
    ixg = _scores("completeness", _batch(model, build_method("input_x_gradient"), images))
    assert (ixg["completeness/gap"] > scores["completeness/gap"]).all()


# ----------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize("name,settings,match", [
    ("non_sensitivity", {"fill": "grey"}, "fill"),
    ("non_sensitivity", {"features_in_step": 0}, "features_in_step"),
    ("non_sensitivity", {"eps": -1.0}, "eps"),
    ("non_sensitivity", {"batch_size": 0}, "batch_size"),
    ("input_invariance", {"shift": float("nan")}, "shift"),
    ("input_invariance", {"atol": -1e-4}, "atol"),
    ("completeness", {"baseline": "blur"}, "baseline"),
    ("completeness", {"output": "log_probability"}, "output"),
    ("completeness", {"rtol": -0.1}, "rtol"),
])
def test_invalid_settings_raise_config_errors(name: str, settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_metric(name, **settings)


def test_a_model_without_an_affine_layer_is_refused() -> None:
    with pytest.raises(ConfigError, match="Conv2d or Linear"):
        F_axiom.shift_absorbing_model(nn.Sequential(nn.Tanh()), -1.0)
