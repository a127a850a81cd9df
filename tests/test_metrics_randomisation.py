"""Randomisation metrics (random_logit, smooth_mprt, efficient_mprt) against quantus 0.6.0 on
the same model, maps and random draws, and hand-computed cases on linear models.

How the comparisons share quantus' randomness:
- random_logit: quantus draws the other class with np.random.randint(0, K - 1); the test hands it
  our per-image draw r (c = the r-th of the other classes, sorted: ours by construction).
- smooth_mprt / efficient_mprt: quantus re-initialises every module after
  torch.manual_seed(seed + 1); the tests inject that seed into our layer seeding, which makes the
  randomised models bit-identical (tests/test_metrics_sanity.py checks it), and hand quantus'
  np.random.randn our per-image noise, sample by sample. quantus' SmoothMPRT calls
  `quantus.explain` (captum) for the noisy samples whatever `explain_func` it is given: the test
  routes that call to our method.
"""

from __future__ import annotations

import copy
import itertools
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from xai_bench.explain import build_method
from xai_bench.metrics import build_metric
from xai_bench.metrics.base import EvalBatch
from xai_bench.metrics.functional import randomisation as F_rand
from xai_bench.metrics.functional import sanity as F_sanity
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal, seeded_permutation

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

QUANTUS_SEED = 42
SIZE = 8


def _cnn(classes: int = 3) -> nn.Module:
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, classes),
    )
    with torch.no_grad():  # non-trivial batch-norm state, so resetting it changes the maps
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
    return model.eval()


def _batch(model: nn.Module, method: Any, images: torch.Tensor,
           ids: torch.Tensor | None = None) -> EvalBatch:
    ids = torch.arange(images.shape[0]) * 3 + 1 if ids is None else ids
    exp = method(model, images, ids=ids)
    return EvalBatch(images=images, labels=exp.target, ids=ids, maps=exp.maps, target=exp.target,
                     logits=exp.logits, model=model, method=method)


def _images(n: int = 5, seed: int = 9) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _explain_func(method: Any, dtype: torch.dtype = torch.float32):
    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        out = method(model, x, target=torch.as_tensor(np.asarray(targets)).long())
        return out.maps.to(dtype).numpy()

    return explain


def _quantus_layer_seeding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every layer of ours seeded as quantus seeds every layer: torch.manual_seed(seed + 1)."""
    monkeypatch.setattr(F_sanity, "image_seed", lambda seed, step, stream=0: QUANTUS_SEED + 1)
    monkeypatch.setattr(F_rand, "image_seed", lambda seed, step, stream=0: QUANTUS_SEED + 1)


# ----------------------------------------------------------------------------------------------
# random_logit


def test_off_class_is_uniform_over_the_others_and_keyed_by_id() -> None:
    target = torch.tensor([0, 3, 4] * 400)
    ids = torch.arange(1200)
    other = F_rand.off_class(target, 5, ids, seed=1)
    assert (other != target).all()
    counts = torch.bincount(other[target == 3], minlength=5).tolist()
    assert counts[3] == 0 and min(c for i, c in enumerate(counts) if i != 3) > 70
    again = F_rand.off_class(target[[5, 2]], 5, ids[[5, 2]], seed=1)
    assert again.tolist() == other[[5, 2]].tolist()  # the same draw in any batch
    with pytest.raises(ConfigError, match="2 classes"):
        F_rand.off_class(target, 1, ids)


@pytest.mark.parametrize("method_name", ["saliency", "input_x_gradient"])
def test_random_logit_matches_quantus(monkeypatch: pytest.MonkeyPatch, method_name: str) -> None:
    import quantus
    from quantus.functions.similarity_func import correlation_spearman

    classes = 5
    model = _cnn(classes)
    method = build_method(method_name)
    batch = _batch(model, method, _images(6))
    metric = build_metric("random_logit", similarity="spearman", seed=3)
    metric.update(batch)
    ours = metric.compute()["random_logit"].numpy()

    draws = seeded_permutation(batch.ids, classes - 1, seed=3)[:, 0].numpy()
    monkeypatch.setattr(np.random, "randint", lambda low, high, size: draws.copy())
    explained: list[np.ndarray] = []
    explain = _explain_func(method)

    def recording(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kw: Any):
        explained.append(np.asarray(targets).copy())
        return explain(model, inputs, targets, **kw)

    oracle = quantus.RandomLogit(similarity_func=correlation_spearman, num_classes=classes,
                                 seed=QUANTUS_SEED, abs=False, normalise=False,
                                 disable_warnings=True)
    theirs = np.asarray(oracle(model=model, x_batch=batch.images.numpy(),
                               y_batch=batch.target.numpy(), a_batch=batch.maps[:, None].numpy(),
                               explain_func=recording, device="cpu"))
    other = F_rand.off_class(batch.target, classes, batch.ids, seed=3)
    assert explained[-1].tolist() == other.tolist()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert ours.min() < 0.9  # not vacuous: the other class's map differs


def _linear(weight: torch.Tensor) -> nn.Module:
    """logits = W x on (B, 1, H, W) images: the saliency map of class c is |W_c|."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weight)
    return model.eval()


def test_random_logit_by_hand_on_a_linear_model() -> None:
    """Two classes: the other class is the only one. |W_1| reverses |W_0|'s order: Spearman -1;
    W_1 = -2 W_0 has the same min-max normalised saliency: Spearman and SSIM 1."""
    w0 = torch.arange(1.0, 145.0)
    images = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))  # SSIM: >= 11 px
    for w1, expected in [(w0.flip(0), -1.0), (-2 * w0, 1.0)]:
        model = _linear(torch.stack([w0, w1]))
        batch = _batch(model, build_method("saliency", target=0), images)
        for similarity in ("spearman", "ssim") if expected == 1.0 else ("spearman",):
            metric = build_metric("random_logit", similarity=similarity)
            metric.update(batch)
            assert metric.compute()["random_logit"].tolist() == pytest.approx([expected] * 3,
                                                                              abs=1e-6)


# ----------------------------------------------------------------------------------------------
# smooth_mprt


def test_smooth_maps_average_noisy_maps_and_end_noise_free() -> None:
    images = _images(3)
    ids = torch.tensor([4, 0, 9])
    seen: list[torch.Tensor] = []

    def explain(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x[:, 0]

    out = F_rand.smooth_maps(explain, images, ids, samples=3, noise=0.2, seed=1,
                             samples_per_call=2)
    noisy = torch.cat(seen).view(3, 3, 3, SIZE, SIZE)
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(-1, 1, 1, 1)
    for n in range(2):
        expected = images + 0.2 * span * seeded_normal(ids, (3, SIZE, SIZE), seed=1, stream=n)
        torch.testing.assert_close(noisy[n], expected)
    assert torch.equal(noisy[2], images)
    torch.testing.assert_close(out, noisy.mean(dim=0)[:, 0])
    # the same image gets the same noise in another batch
    alone = F_rand.smooth_maps(lambda x: x[:, 0], images[1:2], ids[1:2], 3, 0.2, seed=1)
    torch.testing.assert_close(alone, out[1:2])


def test_bottom_up_order_ends_at_the_same_fully_randomised_model() -> None:
    model = _cnn()
    names = [n for n, _ in F_rand.ordered_randomised_models(model, "modules", "bottom_up", 2)]
    assert names == ["0", "1", "3", "6"]
    *_, (_, last_bottom_up) = F_rand.ordered_randomised_models(model, "modules", "bottom_up", 2)
    *_, (_, last_top_down) = F_rand.ordered_randomised_models(model, "modules", "top_down", 2)
    full = F_rand.fully_randomised(model, "modules", 2)
    for a, b, c in zip(last_bottom_up.state_dict().values(), last_top_down.state_dict().values(),
                       full.state_dict().values(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(full[0].weight, model[0].weight)


@pytest.mark.parametrize("order", ["bottom_up", "top_down", "independent"])
def test_smooth_mprt_matches_quantus(monkeypatch: pytest.MonkeyPatch, order: str) -> None:
    import quantus

    model = _cnn()
    method = build_method("saliency")
    batch = _batch(model, method, _images(3))
    samples = 3
    _quantus_layer_seeding(monkeypatch)
    metric = build_metric("smooth_mprt", granularity="modules", order=order, samples=samples,
                          noise=0.1, seed=7)
    metric.update(batch)
    ours = metric.compute()

    draws = [seeded_normal(batch.ids, (3, SIZE, SIZE), seed=7, stream=n).double().numpy()
             for n in range(samples - 1)]
    cycle = itertools.cycle(draws)
    monkeypatch.setattr(np.random, "randn", lambda *shape: next(cycle).copy())
    monkeypatch.setattr(quantus, "explain", _explain_func(method))
    oracle = quantus.SmoothMPRT(layer_order=order, seed=QUANTUS_SEED, nr_samples=samples,
                                noise_magnitude=0.1, abs=False, normalise=False,
                                disable_warnings=True)
    theirs = oracle(model=model, x_batch=batch.images.numpy(), y_batch=batch.target.numpy(),
                    a_batch=None, explain_func=_explain_func(method), device="cpu")
    ours_by_layer = {column.split("/")[1].split("_", 1)[1]: values
                     for column, values in ours.items() if column != "id"}
    assert set(ours_by_layer) == set(theirs) - {"original"} == {"0", "1", "3", "6"}
    np.testing.assert_allclose(theirs["original"], 1.0, atol=1e-6)
    for name, values in ours_by_layer.items():
        np.testing.assert_allclose(values.numpy(), theirs[name], atol=1e-5, err_msg=name)
    assert min(min(v) for k, v in theirs.items() if k != "original") < 0.9  # not vacuous


def test_smooth_mprt_of_a_linear_model_is_the_plain_mprt() -> None:
    """Saliency of a linear model does not depend on the input: smoothing changes nothing, so
    smooth_mprt equals parameter_randomisation's Spearman step by step."""
    model = _linear(torch.randn(3, 16, generator=torch.Generator().manual_seed(1)))
    images = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    batch = _batch(model, build_method("saliency"), images)
    smooth = build_metric("smooth_mprt", order="top_down", samples=3, seed=4)
    plain = build_metric("parameter_randomisation", key="mprt", order="cascading",
                         similarity=["spearman"], seed=4)
    smooth.update(batch)
    plain.update(batch)
    a, b = smooth.compute(), plain.compute()
    assert list(a) == ["id", "smooth_mprt/0_1"]
    torch.testing.assert_close(a["smooth_mprt/0_1"], b["mprt/spearman/0_1"])
    assert smooth.cost(model, 4, 4).explanations == 3 * 2


def test_smooth_mprt_skip_layers_scores_the_last_step_only() -> None:
    model = _cnn()
    batch = _batch(model, build_method("saliency"), _images(2))
    metric = build_metric("smooth_mprt", granularity="modules", samples=2, skip_layers=True)
    metric.update(batch)
    assert list(metric.compute()) == ["id", "smooth_mprt/3_6"]
    assert metric.cost(model, SIZE, SIZE).explanations == 2 * 2


# ----------------------------------------------------------------------------------------------
# efficient_mprt


def test_histogram_is_numpys() -> None:
    gen = torch.Generator().manual_seed(3)
    rows = [torch.rand(200, generator=gen, dtype=torch.float64),
            torch.linspace(0, 1, 101, dtype=torch.float64).repeat(2)[:200],  # on the edges
            torch.full((200,), 0.3, dtype=torch.float64),  # constant
            (torch.rand(200, generator=gen, dtype=torch.float64) * 7).round() / 7 - 3.0]
    values = torch.stack(rows)
    for bins in (1, 7, 100):
        ours = F_rand.histogram(values, bins)
        for row in range(values.shape[0]):
            expected = np.histogram(values[row].numpy(), bins=bins)[0]
            assert ours[row].long().tolist() == expected.tolist(), (bins, row)


def test_discrete_entropy_by_hand() -> None:
    """Four values spread over the range, equally often: four occupied bins, entropy log 4
    (eight values: log 8); a constant map: one bin, entropy 0; a NaN map: NaN."""
    four = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]).repeat(4).view(1, 4, 4)
    maps = torch.cat([four, torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), float("nan"))])
    entropy = F_rand.discrete_entropy(maps, n_bins=100)
    assert entropy[0].item() == pytest.approx(np.log(4), abs=1e-12)
    assert entropy[1].item() == 0.0 and torch.isnan(entropy[2])
    eight = (torch.arange(8.0) / 7).repeat(2).view(1, 4, 4)  # log 8: (log 8 - log 4) / log 4
    assert F_rand.efficient_mprt(four, eight, 100).item() == pytest.approx(0.5, abs=1e-12)
    assert F_rand.efficient_mprt(eight, four, 100).item() == pytest.approx(-1 / 3, abs=1e-12)
    assert torch.isnan(F_rand.efficient_mprt(maps[1:2], maps[:1], 100)).all()


def test_efficient_mprt_by_hand_on_a_linear_model() -> None:
    """The trained saliency |W_0| takes 4 values equally often (log 4); the randomised model's
    weights are drawn by its (known) seeded reset: the score is (H(|W'_0|) - log 4) / log 4."""
    w = torch.tensor([1.0, 2.0, 3.0, 4.0]).repeat(4)
    model = _linear(torch.stack([w, -w]))
    images = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    batch = _batch(model, build_method("saliency", target=0), images)
    metric = build_metric("efficient_mprt", n_bins=100, seed=3)
    metric.update(batch)
    random_weight = F_rand.fully_randomised(model, "blocks", 3)[1].weight.detach()[0]
    saliency = random_weight.abs()
    normalised = (saliency - saliency.min()) / (saliency.max() - saliency.min() + 1e-7)
    counts = np.histogram(normalised.double().numpy(), bins=100)[0]
    p = counts[counts > 0] / counts.sum()
    expected = (-(p * np.log(p)).sum() - np.log(4)) / np.log(4)
    assert metric.compute()["efficient_mprt"].tolist() == pytest.approx([expected] * 2, abs=1e-6)
    assert expected > 0  # sixteen random magnitudes spread over more bins than four values


def test_efficient_mprt_matches_quantus(monkeypatch: pytest.MonkeyPatch) -> None:
    import quantus

    model = _cnn()
    method = build_method("saliency")
    batch = _batch(model, method, _images(5))
    _quantus_layer_seeding(monkeypatch)
    metric = build_metric("efficient_mprt", granularity="modules", seed=0)
    metric.update(batch)
    ours = metric.compute()["efficient_mprt"].numpy()
    oracle = quantus.EfficientMPRT(layer_order="bottom_up", seed=QUANTUS_SEED, skip_layers=True,
                                   abs=False, normalise=False, disable_warnings=True)
    explain = _explain_func(method, dtype=torch.float64)  # float64 histograms on both sides
    theirs = np.asarray(oracle(model=model, x_batch=batch.images.numpy(),
                               y_batch=batch.target.numpy(),
                               a_batch=batch.maps[:, None].double().numpy(),
                               explain_func=explain, device="cpu"))
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert np.abs(theirs).max() > 0.01  # not vacuous


_FULLY_RANDOMISED = F_rand.fully_randomised  # the builder, before a test counts its calls


def _uncached_efficient_mprt(model: nn.Module, method: Any, batch: EvalBatch) -> torch.Tensor:
    randomised = _FULLY_RANDOMISED(model, "blocks", 0)
    maps = method(randomised, batch.images, target=batch.target, ids=batch.ids).maps
    return F_rand.efficient_mprt(batch.maps, maps, 100).float()


def test_efficient_mprt_builds_the_randomised_model_once_per_model_state(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The second batch reuses the randomised model; another model, new weights, another mode
    or a write into the copy rebuild it; every score equals the uncached computation; reset()
    frees the copy."""
    built: list[nn.Module] = []

    def counting(model: nn.Module, granularity: str = "blocks", seed: int = 0) -> nn.Module:
        built.append(model)
        return _FULLY_RANDOMISED(model, granularity, seed)

    monkeypatch.setattr(F_rand, "fully_randomised", counting)
    method = build_method("saliency")
    model, other = _cnn(), _cnn()
    with torch.no_grad():
        other[0].weight.mul_(-1.5)
    metric = build_metric("efficient_mprt")
    images = _images(6)
    halves = [_batch(model, method, images[:3], torch.arange(3)),
              _batch(model, method, images[3:], torch.arange(3, 6))]
    for batch in halves:
        metric.update(batch)
    assert built == [model]  # the second batch reused it
    expected = torch.cat([_uncached_efficient_mprt(model, method, b) for b in halves])
    assert torch.equal(metric.compute()["efficient_mprt"], expected)

    def scored(batch: EvalBatch) -> torch.Tensor:
        metric.reset()
        metric.update(batch)
        return metric.compute()["efficient_mprt"]

    scored(halves[0])  # reset() freed the copy
    assert built == [model, model] and metric._randomised._entry is not None
    another = _batch(other, method, images[:3], torch.arange(3))
    assert torch.equal(scored(another), _uncached_efficient_mprt(other, method, another))
    assert built[-1] is other  # another model: rebuilt
    with torch.no_grad():
        other[3].weight.mul_(0.5)  # new weights in place (an optimiser step, load_state_dict)
    changed = _batch(other, method, images[:3], torch.arange(3))
    assert torch.equal(scored(changed), _uncached_efficient_mprt(other, method, changed))
    assert len(built) == 4
    other.train()  # another mode
    assert torch.equal(scored(changed), _uncached_efficient_mprt(other, method, changed))
    assert len(built) == 5
    other.eval()
    halves = [changed, _batch(other, method, images[3:], torch.arange(3, 6))]
    metric.reset()
    metric.update(halves[0])
    with torch.no_grad():  # something (a method) wrote into the copy: it is rebuilt
        metric._randomised._entry[2][1].running_mean.add_(1.0)
    metric.update(halves[1])
    assert len(built) == 7
    expected = torch.cat([_uncached_efficient_mprt(other, method, b) for b in halves])
    assert torch.equal(metric.compute()["efficient_mprt"], expected)
    metric.reset()
    assert metric._randomised._entry is None
    metric.update(changed)
    assert copy.deepcopy(metric)._randomised._entry is None  # copies rebuild on demand
    assert pickle.loads(pickle.dumps(metric._randomised))._entry is None


# ----------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize("name,settings,match", [
    ("random_logit", {"similarity": "pearson"}, "similarity"),
    ("smooth_mprt", {"order": "cascading"}, "order"),
    ("smooth_mprt", {"granularity": "layers"}, "granularity"),
    ("smooth_mprt", {"samples": 0}, "samples"),
    ("smooth_mprt", {"samples_per_call": 0}, "samples_per_call"),
    ("smooth_mprt", {"noise": -0.1}, "noise"),
    ("smooth_mprt", {"similarity": "l2"}, "similarity"),
    ("efficient_mprt", {"n_bins": 0}, "n_bins"),
    ("efficient_mprt", {"granularity": "all"}, "granularity"),
])
def test_invalid_settings_raise_config_errors(name: str, settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_metric(name, **settings)
