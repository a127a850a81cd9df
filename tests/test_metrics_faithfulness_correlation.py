"""Correlation-type faithfulness metrics against quantus 0.6.0 / captum 0.9.0 (the same model,
images, maps and random draws) and hand-computed cases on linear models.

The bridge for quantus: it broadcasts a (B, 1, H, W) map to the C channels and treats each of
the C H W elements as a feature; we treat a pixel (all its channels) as a feature. Giving quantus
C times our set sizes / steps and drawing whole pixels for it makes the two the same computation
(its attribution sums are C times ours, which a correlation ignores).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xai_bench.metrics import build_metric
from xai_bench.metrics.functional import faithfulness_correlation as FC
from xai_bench.metrics.functional.faithfulness_correlation import _SIZE_STREAM
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal, seeded_permutation, seeded_uniform

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

IDS = torch.tensor([5, 0, 12, 3])


def _tiny_cnn(size: int, seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * size * size, classes)).eval()


def _setup(size: int, seed: int = 1) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = _tiny_cnn(size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(IDS), 3, size, size, generator=gen)
    maps = torch.rand(len(IDS), size, size, generator=gen)  # distinct values: no ties
    return model, x, maps, torch.tensor([0, 1, 2, 1])


class Linear2(nn.Module):
    """logits (w . x + c, 0): the target-0 logit moves by exactly w . (x - x')."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.3) -> None:
        super().__init__()
        self.weight, self.bias = weight.reshape(-1), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.weight + self.bias
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def _quantus(cls_name: str, model, x, maps, y, softmax: bool | None = None,
             **params) -> np.ndarray:
    import quantus

    metric = getattr(quantus, cls_name)(disable_warnings=True, return_aggregate=False, **params)
    call = {} if softmax is None else {"softmax": softmax}
    out = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                 a_batch=maps[:, None].numpy(), device="cpu", **call)
    return np.asarray(out, dtype=np.float64)


def _fake_choice(monkeypatch, subsets: list[torch.Tensor], channels: int, n_pix: int) -> None:
    """quantus draws np.random.choice(C H W, C n) per run and image: hand it our pixel sets,
    every channel of each pixel."""
    draws = iter([torch.cat([c * n_pix + s for c in range(channels)]).numpy()
                  for subset in subsets for s in subset])

    def choice(n, size, replace=True):
        assert (n, size, replace) == (channels * n_pix, channels * subsets[0].shape[1], False)
        return next(draws)

    monkeypatch.setattr(np.random, "choice", choice)


def _subsets(n_pix: int, size: int, runs: int, seed: int, k: int = 0) -> list[torch.Tensor]:
    return [seeded_permutation(IDS, n_pix, seed=seed, stream=k * _SIZE_STREAM + r)[:, :size]
            for r in range(runs)]


# ----------------------------------------------------------------------------------------------
# per image against the oracles


@pytest.mark.parametrize(("fill", "baseline"), [("min", "black"), ("zero", 0.0)])
def test_faithfulness_correlation_matches_quantus(monkeypatch, fill, baseline) -> None:
    model, x, maps, y = _setup(16)
    size, runs, seed = 10, 8, 3
    _fake_choice(monkeypatch, _subsets(256, size, runs, seed), 3, 256)
    q = _quantus("FaithfulnessCorrelation", model, x, maps, y, subset_size=3 * size,
                 nr_runs=runs, perturb_baseline=baseline)
    ours = FC.faithfulness_correlation(model, x, maps, y, subset_size=size, runs=runs,
                                       fill=fill, seed=seed, ids=IDS, batch_size=5)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-5)


def test_sensitivity_n_is_quantus_faithfulness_correlation_at_each_n(monkeypatch) -> None:
    """Ancona et al.'s sensitivity-n (per image, random sets of n features) is what quantus'
    FaithfulnessCorrelation computes at subset_size n; quantus' own SensitivityN is not (docs)."""
    model, x, maps, y = _setup(16)
    sizes, runs, seed = [3, 40], 8, 1
    ours = FC.sensitivity_n(model, x, maps, y, sizes, runs=runs, output="probability",
                            seed=seed, ids=IDS)
    for k, size in enumerate(sizes):
        _fake_choice(monkeypatch, _subsets(256, size, runs, seed, k), 3, 256)
        q = _quantus("FaithfulnessCorrelation", model, x, maps, y, subset_size=3 * size,
                     nr_runs=runs, perturb_baseline="black", softmax=True)
        np.testing.assert_allclose(ours[:, k].numpy(), q, atol=1e-5)


@pytest.mark.parametrize("step", [4, 6])
def test_faithfulness_estimate_matches_quantus(step: int) -> None:
    """quantus sorts the C copies of each pixel together (distinct pixel values), so steps of
    C k elements are steps of k whole pixels; 12 x 12 px makes C k divide its H W."""
    model, x, maps, y = _setup(12)
    q = _quantus("FaithfulnessEstimate", model, x, maps, y, features_in_step=3 * step,
                 perturb_baseline="black")
    ours = FC.faithfulness_estimate(model, x, maps, y, features_in_step=step, ids=IDS,
                                    batch_size=7)
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-5)


def test_monotonicity_correlation_matches_quantus(monkeypatch) -> None:
    """quantus' "uniform" baseline is one np.random.uniform value per image and draw (in step,
    draw order); it receives ours."""
    model, x, maps, y = _setup(12)
    step, samples, seed = 24, 2, 2
    n_steps = 144 // step
    draws = iter([seeded_uniform(IDS, (1,), seed=seed, stream=t)[:, 0].double().numpy()
                  for t in range(n_steps * samples)])

    def uniform(low=0.0, high=1.0, size=None):
        assert (low, high, size) == (0.0, 1.0, len(IDS))
        return next(draws)

    monkeypatch.setattr(np.random, "uniform", uniform)
    q = _quantus("MonotonicityCorrelation", model, x, maps, y, features_in_step=3 * step,
                 nr_samples=samples)
    ours = FC.monotonicity_correlation(model, x, maps, y, features_in_step=step,
                                       samples=samples, seed=seed, ids=IDS, batch_size=5)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-5)


@pytest.mark.parametrize("normalise", [True, False])
def test_infidelity_matches_captum(normalise: bool) -> None:
    """captum repeat_interleaves the inputs (row b J + j is draw j of image b) and calls
    perturb_func once; it returns our draws as the perturbation I and x - I."""
    from captum.metrics import infidelity

    model, x, maps, y = _setup(16)
    samples, std, seed = 6, 0.3, 4
    noise = torch.stack([seeded_normal(IDS, (3, 16, 16), seed=seed, stream=j, std=std)
                         for j in range(samples)], dim=1).reshape(-1, 3, 16, 16)

    def perturb(inputs: torch.Tensor):
        assert torch.equal(inputs, x.repeat_interleave(samples, 0))
        return noise, inputs - noise

    expected = infidelity(model, perturb, x, maps[:, None].expand_as(x).contiguous(), target=y,
                          n_perturb_samples=samples, normalize=normalise)
    ours = FC.infidelity(model, x, maps, y, samples=samples, std=std, normalise=normalise,
                         seed=seed, ids=IDS, batch_size=3)
    torch.testing.assert_close(ours, expected.double(), atol=1e-5, rtol=1e-5)


def _clustered_maps(seed: int = 0, which: list[int] | None = None) -> torch.Tensor:
    """8 x 8 maps in tight clusters (`which`: each map's cluster; default three clusters and two
    loners), every pixel varying."""
    which_t = torch.tensor([0, 0, 0, 1, 1, 2, 3, 4] if which is None else which)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(int(which_t.max()) + 1, 8, 8, generator=gen)
    noise = 0.05 * torch.rand(len(which_t), 8, 8, generator=gen)
    return (centres[which_t] + noise).clamp(0, 1)


def test_sufficiency_matches_quantus() -> None:
    """Same set of maps, same predictions: equal where an image has neighbours; quantus scores an
    image without neighbours 0, we score it NaN (undefined). The result does not depend on how
    many maps are standardised and compared at a time (`block`)."""
    maps = _clustered_maps()
    model = _tiny_cnn(8, classes=2)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        predicted = model(x).argmax(1)
    q = _quantus("Sufficiency", model, x, maps, predicted)
    ours = FC.sufficiency(maps, predicted, threshold=0.6).numpy()
    lonely = np.isnan(ours)
    assert 0 < lonely.sum() < len(ours)
    np.testing.assert_allclose(ours[~lonely], q[~lonely], atol=1e-12)
    assert (q[lonely] == 0).all()
    for block in (1, 3, 5):
        np.testing.assert_array_equal(FC.sufficiency(maps, predicted, block=block).numpy(), ours)


# twelve images in five clusters and a loner, their ids in no particular order
_SET_CLUSTERS = [0, 0, 0, 1, 1, 2, 3, 4, 2, 1, 5, 0]
_SET_IDS = torch.tensor([17, 4, 30, 9, 1, 22, 13, 40, 6, 27, 35, 11])


def _sufficiency_set() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = _tiny_cnn(8, classes=2)
    x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(x)
    return model, x, _clustered_maps(seed=2, which=_SET_CLUSTERS), logits


def _sufficiency_table(rank_rows: list[torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
    """The metric's table when each 'rank' updates its rows (in that order) `batch` at a time,
    the ranks' states then gathered rank after rank (torchmetrics' merge, as a DDP sync)."""
    from xai_bench.metrics import EvalBatch

    model, x, maps, logits = _sufficiency_set()
    ranks = []
    for rows in rank_rows:
        metric = build_metric("sufficiency")
        for part in rows.split(batch):
            metric.update(EvalBatch(
                images=x[part], labels=logits[part].argmax(1), ids=_SET_IDS[part],
                maps=maps[part], target=logits[part].argmax(1), logits=logits[part],
                model=model, method=None))  # type: ignore[arg-type]
        ranks.append(metric)
    for other in ranks[1:]:
        ranks[0].merge_state(other)
    return ranks[0].compute()


def test_sufficiency_over_the_evaluated_set_matches_quantus_on_one_batch() -> None:
    """The metric, fed in shuffled batches of 3, scores each image against the WHOLE set: quantus
    given the whole set as one batch (its default batch_size 64 > 12 images). The metric keeps
    the maps as float16, so quantus gets the same rounded maps."""
    model, x, maps, logits = _sufficiency_set()
    shuffled = torch.randperm(12, generator=torch.Generator().manual_seed(7))
    table = _sufficiency_table([shuffled], batch=3)
    order = _SET_IDS.argsort()
    assert torch.equal(table["id"], _SET_IDS[order])
    predicted = logits.argmax(1)
    q = _quantus("Sufficiency", model, x[order], maps[order].half().float(), predicted[order])
    ours = table["sufficiency"].double().numpy()
    lonely = np.isnan(ours)
    assert 0 < lonely.sum() < 6 and len(set(ours[~lonely])) > 2  # a case that can fail
    np.testing.assert_allclose(ours[~lonely], q[~lonely], atol=1e-6)
    assert (q[lonely] == 0).all()
    # scored within its batch of 3 instead, an image would get another value
    first = shuffled[:3]
    in_batch = FC.sufficiency(maps[first], predicted[first]).numpy()
    where = np.searchsorted(_SET_IDS[order].numpy(), _SET_IDS[first].numpy())
    assert not np.allclose(in_batch, ours[where], equal_nan=True)


def test_sufficiency_table_does_not_depend_on_batches_or_ranks() -> None:
    """One rank in id order as one batch, or two ranks (a shuffled order interleaved as a
    DistributedSampler spreads it, padded with a repeat) in batches of 2: the same table."""
    one = _sufficiency_table([_SET_IDS.argsort()], batch=12)
    shuffled = torch.randperm(12, generator=torch.Generator().manual_seed(11)).tolist()
    padded = torch.tensor(shuffled + shuffled[:2])
    for batch in (1, 2, 5):
        two = _sufficiency_table([padded[0::2], padded[1::2]], batch=batch)
        assert torch.equal(two["id"], one["id"])
        torch.testing.assert_close(two["sufficiency"], one["sufficiency"], equal_nan=True,
                                   rtol=0, atol=0)


def test_sufficiency_ignores_pixels_constant_over_the_batch() -> None:
    """A pixel equal in every map has no spread: quantus divides 0 by 0 there, every distance
    turns NaN and every score 0; we leave that pixel out."""
    maps = _clustered_maps()
    maps[:, 0, 0] = 0.0
    predicted = torch.tensor([0, 0, 1, 1, 1, 0, 1, 0])
    ours = FC.sufficiency(maps, predicted)
    reference = FC.sufficiency(maps.flatten(1)[:, 1:].reshape(8, 1, 63), predicted)
    torch.testing.assert_close(ours, reference, equal_nan=True)
    assert 0 < torch.isfinite(ours).sum() < 8


# ----------------------------------------------------------------------------------------------
# hand-computed cases on linear models


def _linear(seed: int = 0, size: int = 6, positive: bool = False):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(1, size, size, generator=gen)
    x = torch.randn(3, 1, size, size, generator=gen)
    if positive:
        weight, x = weight.abs() + 0.1, x.abs() + 0.1
    return Linear2(weight), weight, x, torch.zeros(3, dtype=torch.long)


def test_gradient_times_input_is_perfectly_faithful_on_a_linear_model() -> None:
    """Removing a set S (fill zero) moves the logit by sum_{p in S} w_p x_p: the map w * x
    explains every change exactly, so every correlation is 1 and the infidelity 0."""
    model, weight, x, y = _linear()
    maps = (weight * x)[:, 0]
    ids = torch.tensor([1, 2, 3])
    one = torch.ones(3, dtype=torch.float64)
    kw = {"fill": "zero", "output": "logit", "ids": ids}
    torch.testing.assert_close(FC.faithfulness_correlation(model, x, maps, y, subset_size=5,
                                                           runs=7, **kw), one)
    torch.testing.assert_close(FC.sensitivity_n(model, x, maps, y, [1, 12, 30], runs=6, **kw),
                               torch.ones(3, 3, dtype=torch.float64))
    torch.testing.assert_close(FC.faithfulness_estimate(model, x, maps, y, features_in_step=5,
                                                        **kw), one)
    # the map w explains a draw I exactly: f(x) - f(x - I) = w . I
    w_maps = weight[0].expand(3, -1, -1)
    zero = FC.infidelity(model, x, w_maps, y, samples=5, std=0.5, normalise=False, ids=ids)
    torch.testing.assert_close(zero, torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_infidelity_of_a_scaled_map_by_hand() -> None:
    """The map 2 w over-explains each change w . I by w . I: infidelity = mean_j (w . I_j)^2;
    normalise finds beta = 1/2 and leaves 0."""
    model, weight, x, y = _linear(seed=1)
    ids, samples, std = torch.tensor([4, 0, 9]), 4, 0.2
    maps = 2 * weight[0].expand(3, -1, -1)
    by_hand = torch.stack([
        (seeded_normal(ids, (1, 6, 6), seed=0, stream=j, std=std) * weight).flatten(1).sum(1)
        for j in range(samples)], dim=1).double().pow(2).mean(1)
    raw = FC.infidelity(model, x, maps, y, samples=samples, std=std, normalise=False, ids=ids)
    torch.testing.assert_close(raw, by_hand, rtol=1e-4, atol=1e-7)
    scaled = FC.infidelity(model, x, maps, y, samples=samples, std=std, normalise=True, ids=ids)
    torch.testing.assert_close(scaled, torch.zeros(3, dtype=torch.float64), atol=1e-8, rtol=0)


def test_monotonicity_correlation_on_a_positive_linear_model() -> None:
    """w, x > 0 and fill zero: replacing a step moves the logit by its sum s of w * x, so the
    squared change s^2 rises with s and the rank correlation is exactly 1."""
    model, weight, x, y = _linear(seed=2, positive=True)
    maps = (weight * x)[:, 0]
    rho = FC.monotonicity_correlation(model, x, maps, y, features_in_step=4, samples=2,
                                      fill="zero", output="logit")
    torch.testing.assert_close(rho, torch.ones(3, dtype=torch.float64))
    # the reversed map ranks the steps backwards
    back = FC.monotonicity_correlation(model, x, -maps, y, features_in_step=4, samples=2,
                                       fill="zero", output="logit")
    torch.testing.assert_close(back, -torch.ones(3, dtype=torch.float64))


def test_sufficiency_by_hand() -> None:
    """Two identical pairs and a loner on disjoint regions: each image's only neighbour is its
    twin (the cross distances are >= sqrt(0.8) of the largest)."""
    maps = torch.zeros(5, 3, 3)
    for image, region in enumerate([0, 0, 1, 1, 2]):
        maps[image, region] = 1.0
    scores = FC.sufficiency(maps, torch.tensor([0, 0, 1, 0, 1]), threshold=0.6)
    torch.testing.assert_close(scores, torch.tensor([1.0, 1.0, 0.0, 0.0, float("nan")],
                                                    dtype=torch.float64), equal_nan=True)
    # a threshold of 1 makes everyone a neighbour
    everyone = FC.sufficiency(maps, torch.tensor([0, 0, 1, 0, 1]), threshold=1.0)
    torch.testing.assert_close(everyone, torch.tensor([2, 2, 1, 2, 1]) / 4.0,
                               check_dtype=False)


# ----------------------------------------------------------------------------------------------
# batching, seeding, settings


def test_scores_depend_on_the_image_not_on_its_batch() -> None:
    model, x, maps, y = _setup(12)
    full = FC.faithfulness_correlation(model, x, maps, y, subset_size=9, runs=5, ids=IDS)
    part = FC.faithfulness_correlation(model, x[2:], maps[2:], y[2:], subset_size=9, runs=5,
                                       ids=IDS[2:], batch_size=1)
    torch.testing.assert_close(part, full[2:], atol=1e-6, rtol=1e-5)
    mono = FC.monotonicity_correlation(model, x, maps, y, features_in_step=24, samples=2,
                                       ids=IDS)
    mono_part = FC.monotonicity_correlation(model, x[1:3], maps[1:3], y[1:3],
                                            features_in_step=24, samples=2, ids=IDS[1:3])
    torch.testing.assert_close(mono_part, mono[1:3], atol=1e-6, rtol=1e-5)


def test_the_metric_classes_score_the_explained_class() -> None:
    from xai_bench.metrics import EvalBatch

    model, x, maps, _ = _setup(12)
    with torch.no_grad():
        logits = model(x)
    target = torch.tensor([2, 0, 1, 1])
    batch = EvalBatch(images=x, labels=logits.argmax(1), ids=IDS, maps=maps, target=target,
                      logits=logits, model=model, method=None)  # type: ignore[arg-type]
    metric = build_metric("sensitivity_n", fractions=[0.05, 0.5], runs=4)
    metric.update(batch)
    table = metric.compute()
    assert list(table) == ["id", "sensitivity_n@0.05", "sensitivity_n@0.5"]
    expected = FC.sensitivity_n(model, x, maps, target, [7, 72], runs=4, output="probability",
                                ids=IDS)
    order = IDS.argsort()
    torch.testing.assert_close(table["sensitivity_n@0.5"], expected[order, 1].float())
    suff = build_metric("sufficiency")
    suff.update(batch)
    assert suff.compute()["sufficiency"].shape == (4,)


def test_monotonicity_correlation_defaults_fit_any_image_size() -> None:
    """The default cuts every image into 32 steps (1568 pixels at 224 px): a fixed pixel count
    left small images with one step, where a rank correlation is undefined (NaN for every
    image, found by `metric=all` on 32 px images). A pixel count that leaves one step is a
    ConfigError naming the setting."""
    from xai_bench.metrics import EvalBatch

    model, x, maps, _ = _setup(12)
    with torch.no_grad():
        logits = model(x)
    batch = EvalBatch(images=x, labels=logits.argmax(1), ids=IDS, maps=maps,
                      target=logits.argmax(1), logits=logits, model=model,
                      method=None)  # type: ignore[arg-type]
    metric = build_metric("monotonicity_correlation", samples=2)
    assert metric.cost(model, 12, 12).forwards == 29 * 2 + 1  # 5 pixels per step: 29 steps
    assert metric.cost(model, 224, 224).forwards == 32 * 2 + 1
    metric.update(batch)
    values = metric.compute()["monotonicity_correlation"]
    assert torch.isfinite(values).all()
    expected = FC.monotonicity_correlation(model, x, maps, logits.argmax(1), features_in_step=5,
                                           samples=2, ids=IDS)  # ceil(144 / 32)
    torch.testing.assert_close(values, expected[IDS.argsort()].float())
    one_step = build_metric("monotonicity_correlation", features_in_step=144, samples=2)
    with pytest.raises(ConfigError, match="features_in_step=144 leaves 1 step"):
        one_step.update(batch)


@pytest.mark.parametrize(("name", "settings"), [
    ("faithfulness_correlation", {"runs": 0}),
    ("faithfulness_correlation", {"subset_size": 0}),
    ("faithfulness_correlation", {"fill": "black"}),
    ("faithfulness_correlation", {"output": "softmax"}),
    ("faithfulness_correlation", {"batch_size": 0}),
    ("sensitivity_n", {"fractions": [0.1, 0.0]}),
    ("sensitivity_n", {"fractions": 1.5}),
    ("faithfulness_estimate", {"features_in_step": 0}),
    ("monotonicity_correlation", {"low": 1.0, "high": 0.0}),
    ("monotonicity_correlation", {"fill": "noise"}),
    ("monotonicity_correlation", {"samples": 0}),
    ("infidelity", {"std": 0.0}),
    ("infidelity", {"samples": 2.5}),
    ("sufficiency", {"threshold": 1.5}),
])
def test_invalid_settings_raise_config_error(name: str, settings: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(settings))):
        build_metric(name, **settings)


def test_a_subset_larger_than_the_image_is_a_config_error() -> None:
    model, x, maps, y = _setup(12)
    with pytest.raises(ConfigError, match="144"):
        FC.faithfulness_correlation(model, x, maps, y, subset_size=145, runs=2)


def test_pearson_and_spearman_match_scipy() -> None:
    from scipy import stats

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 9, generator=gen), torch.randn(3, 9, generator=gen)
    b[1, :4] = b[1, 0]  # ties
    for i in range(3):
        assert FC.pearson(a, b)[i].item() == pytest.approx(stats.pearsonr(a[i], b[i])[0])
        assert FC.spearman(a, b)[i].item() == pytest.approx(stats.spearmanr(a[i], b[i])[0])
    constant = torch.ones(1, 9)
    assert torch.isnan(FC.pearson(constant, a[:1])).all()
    assert torch.isnan(FC.spearman(a[:1], constant)).all()
