"""Complexity metrics (sparseness, complexity, effective_complexity) against Quantus 0.6.0 on a
tiny CNN's maps, a hand-computed linear model, invalid settings and the edge cases (all-zero,
constant and NaN maps: NaN where undefined, never a crash)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xai_bench.explain import build_method
from xai_bench.metrics import EvalBatch, build_metric
from xai_bench.metrics.functional import complexity as FC
from xai_bench.utils.errors import ConfigError

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

SIZE = 16
N = SIZE * SIZE


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def _tiny_cnn(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * SIZE * SIZE, classes)).eval()


def _batch(model: nn.Module, method_name: str = "saliency", n: int = 6,
           **method_kwargs: object) -> EvalBatch:
    images = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    method = build_method(method_name, **method_kwargs)
    with torch.no_grad():
        logits = model(images)
    explanation = method(model, images, target=logits.argmax(1), ids=torch.arange(n))
    return EvalBatch(images=images, labels=logits.argmax(1), ids=torch.arange(n),
                     maps=explanation.maps.detach(), target=explanation.target, logits=logits,
                     model=model, method=method)


@pytest.fixture(scope="module")
def cnn_maps() -> dict[str, torch.Tensor]:
    """The tiny CNN's saliency maps (min-max, [0, 1]) and raw signed input x gradient maps."""
    model = _tiny_cnn()
    return {"saliency": _batch(model).maps,
            "signed": _batch(model, "input_x_gradient", normalize="none").maps}


def _oracle(metric: type, maps: torch.Tensor, **init: object) -> np.ndarray:
    """Quantus on each map alone (a batch of one: its normalisation is then per image)."""
    out = []
    for a in maps.numpy():
        out += list(metric(disable_warnings=True, **init)(
            model=None, x_batch=np.zeros((1, 1, SIZE, SIZE), np.float32),
            y_batch=np.zeros(1, np.int64), a_batch=a[None, None].astype(np.float32),
            channel_first=True))
    return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------------- 1. oracle
@pytest.mark.parametrize("kind", ["saliency", "signed"])
def test_sparseness_matches_quantus_without_its_epsilon(quantus, cnn_maps, kind: str) -> None:
    maps = cnn_maps[kind]
    ours = FC.sparseness(maps).double().numpy()
    expected = _oracle(quantus.Sparseness, maps)
    # Quantus adds 1e-7 to every |a| / max|a|: its Gini is ours scaled by S / (S + 1e-7 n)
    a = maps.abs().flatten(1).double()
    s = (a / a.amax(dim=1, keepdim=True)).sum(dim=1).numpy()
    np.testing.assert_allclose(ours * s / (s + 1e-7 * N), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(ours, ours[0])  # the maps differ: the comparison can fail


@pytest.mark.parametrize("kind", ["saliency", "signed"])
def test_complexity_matches_quantus(quantus, cnn_maps, kind: str) -> None:
    maps = cnn_maps[kind]
    ours = FC.complexity(maps).numpy()
    np.testing.assert_allclose(ours, _oracle(quantus.Complexity, maps), rtol=1e-5, atol=1e-6)
    assert (ours < math.log(N)).all() and (ours > 0).all()


@pytest.mark.parametrize("eps", [1e-5, 0.1, 0.3, 0.6])
def test_effective_complexity_matches_quantus_per_image(quantus, cnn_maps, eps: float) -> None:
    for maps in cnn_maps.values():
        ours = FC.effective_complexity(maps, eps=eps).numpy()
        np.testing.assert_array_equal(ours, _oracle(quantus.EffectiveComplexity, maps, eps=eps))


def test_quantus_effective_complexity_depends_on_the_batch_ours_does_not(quantus) -> None:
    maps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    maps[1] *= 0.5  # a map whose peak is half the other's
    ours = FC.effective_complexity(maps, eps=0.3).numpy()
    alone = _oracle(quantus.EffectiveComplexity, maps, eps=0.3)
    together = np.asarray(quantus.EffectiveComplexity(eps=0.3, disable_warnings=True)(
        model=None, x_batch=np.zeros((2, 1, SIZE, SIZE), np.float32),
        y_batch=np.zeros(2, np.int64), a_batch=maps[:, None].numpy(), channel_first=True))
    np.testing.assert_array_equal(ours, alone)
    assert together[1] < alone[1]  # Quantus divides the second map by the FIRST map's peak


# ------------------------------------------------------------------------------- 2. by hand
class Linear(nn.Module):
    """logits (w . x, -w . x) on 1-channel 16 x 16 inputs: the saliency map is |w|."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight.reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.weight
        return torch.stack([z, -z], dim=1)


def test_linear_model_saliency_scores_are_the_closed_form() -> None:
    weight = torch.zeros(SIZE, SIZE)
    weight[3, 4], weight[7, 1], weight[10, 12], weight[15, 15] = 1.0, -2.0, 3.0, 4.0
    model = Linear(weight)
    images = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    method = build_method("saliency")
    logits = model(images)
    explanation = method(model, images, target=logits.argmax(1), ids=torch.arange(2))
    batch = EvalBatch(images=images, labels=logits.argmax(1), ids=torch.arange(2),
                      maps=explanation.maps.detach(), target=explanation.target, logits=logits,
                      model=model, method=method)
    # min-max normalised |w|: 0.25, 0.5, 0.75, 1 (up to the method's eps) on 4 pixels, 0 elsewhere
    p = np.array([1, 2, 3, 4]) / 10
    expected = {
        "sparseness": 1 - 3 / N,  # sum_i (2i - n - 1) a_(i) / (n sum a) = (10 n - 30) / (10 n)
        "complexity": float(-(p * np.log(p)).sum()),  # 1.2799 nats
        "effective_complexity": 3.0,  # 0.5, 0.75, 1 exceed eps = 0.3 of the peak
    }
    settings = {"effective_complexity": {"eps": 0.3}}
    for name, value in expected.items():
        metric = build_metric(name, **settings.get(name, {}))
        metric.update(batch)
        scores = metric.compute()[name].double().numpy()
        np.testing.assert_allclose(scores, [value, value], rtol=1e-6, err_msg=name)
    assert FC.effective_complexity(batch.maps).tolist() == [4.0, 4.0]  # default eps 1e-5


# ------------------------------------------------------------------------------- 3. settings
@pytest.mark.parametrize(("name", "settings"), [
    ("sparseness", {"abs": "yes"}),
    ("complexity", {"abs": 1}),
    ("effective_complexity", {"eps": -1.0}),
    ("effective_complexity", {"eps": float("nan")}),
    ("effective_complexity", {"eps": "1e-5"}),
    ("effective_complexity", {"normalise": None}),
])
def test_invalid_settings_raise_config_error(name: str, settings: dict) -> None:
    with pytest.raises(ConfigError, match=name):
        build_metric(name, **settings)


def test_maps_of_the_wrong_shape_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="maps"):
        FC.sparseness(torch.zeros(SIZE, SIZE))


# ------------------------------------------------------------------------------- 4. edge cases
def _edge_maps() -> torch.Tensor:
    """zero, constant 0.5, NaN-holding, one-hot maps."""
    maps = torch.zeros(4, SIZE, SIZE)
    maps[1] = 0.5
    maps[2, 0, 0] = math.nan
    maps[3, 5, 5] = 1.0
    return maps


def test_edge_cases_score_nan_where_undefined() -> None:
    maps = _edge_maps()
    nan = math.nan
    torch.testing.assert_close(FC.sparseness(maps), torch.tensor([nan, 0.0, nan, 1 - 1 / N]),
                               equal_nan=True)
    torch.testing.assert_close(FC.complexity(maps), torch.tensor([nan, math.log(N), nan, 0.0]),
                               equal_nan=True)
    torch.testing.assert_close(FC.effective_complexity(maps),
                               torch.tensor([nan, float(N), nan, 1.0]), equal_nan=True)
    # without normalisation an all-zero map has no pixel above eps: 0, defined
    assert FC.effective_complexity(maps, normalise=False)[0].item() == 0.0
    # signed maps without abs: entropy of negative "probabilities" is NaN, the Gini index is not
    signed = torch.randn(1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert math.isnan(FC.complexity(signed, abs=False).item())
    assert math.isfinite(FC.sparseness(signed, abs=False).item())


def test_a_batch_of_undefined_maps_is_scored_not_crashed() -> None:
    model = _tiny_cnn()
    batch = _batch(model, n=4)
    batch.maps = _edge_maps()
    for name in ("sparseness", "complexity", "effective_complexity"):
        metric = build_metric(name)
        metric.update(batch)
        values = metric.compute()[name]
        assert values.shape == (4,) and torch.isnan(values[[0, 2]]).all(), name
        assert torch.isfinite(values[[1, 3]]).all(), name


def test_what_quantus_does_with_zero_and_constant_maps(quantus) -> None:
    """Documented in docs/metrics.md: a batch of only constant maps makes Quantus raise; mixed
    with others, an all-zero map scores 0 (Sparseness, EffectiveComplexity) or NaN
    (Complexity); we score NaN on all three."""
    zero = np.zeros((2, 1, SIZE, SIZE), np.float32)
    call = {"model": None, "x_batch": zero, "y_batch": np.zeros(2, np.int64),
            "channel_first": True}
    with pytest.raises(AssertionError):
        quantus.Sparseness(disable_warnings=True)(a_batch=zero, **call)
    mixed = zero.copy()
    mixed[0, 0] = np.random.default_rng(0).random((SIZE, SIZE))
    assert quantus.Sparseness(disable_warnings=True)(a_batch=mixed, **call)[1] == 0.0
    assert math.isnan(quantus.Complexity(disable_warnings=True)(a_batch=mixed, **call)[1])
    assert quantus.EffectiveComplexity(disable_warnings=True)(a_batch=mixed, **call)[1] == 0
    ours = torch.from_numpy(mixed[:, 0])
    for fn in (FC.sparseness, FC.complexity, FC.effective_complexity):
        assert math.isnan(fn(ours)[1].item()) and math.isfinite(fn(ours)[0].item())
