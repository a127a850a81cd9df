"""Robustness metrics against quantus 0.6.0 (same model, images, maps and noise draws: quantus'
numpy draws are replaced by ours) and hand-computed cases where the exact value is known."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import timm
import torch
from torch import nn

from xai_bench.explain import build_method
from xai_bench.metrics import EvalBatch, build_metric
from xai_bench.metrics.functional import robustness as FR
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal, seeded_uniform

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

SIZE = 16
IDS = torch.tensor([7, 3, 11, 0])


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def _tiny_cnn(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Flatten(),
                         nn.Linear(4 * SIZE * SIZE, classes)).eval()


def _batch(model: nn.Module, images: torch.Tensor, method: Any = None,
           ids: torch.Tensor = IDS, maps: torch.Tensor | None = None) -> EvalBatch:
    method = method or build_method("saliency")
    with torch.no_grad():
        logits = model(images)
    target = logits.argmax(1)
    if maps is None:
        maps = method(model, images, target=target, ids=ids).maps
    return EvalBatch(images=images, labels=target, ids=ids, maps=maps, target=target,
                     logits=logits, model=model, method=method)


def _setup(seed: int = 0) -> EvalBatch:
    model = _tiny_cnn(seed)
    return _batch(model, torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))


def _score(name: str, batch: EvalBatch, **settings: Any) -> dict[str, torch.Tensor]:
    metric = build_metric(name, **settings)
    metric.update(batch)
    table = metric.compute()
    order = torch.argsort(torch.argsort(batch.ids))  # the table is sorted by id
    # (torchmetrics squeezes a one-image table to 0-d)
    return {k: v.view(-1)[order] for k, v in table.items() if k != "id"}


def _quantus_explain(method: Any):
    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        maps = method(model, torch.as_tensor(inputs), target=torch.as_tensor(targets)).maps
        return maps[:, None].numpy()

    return explain


def _feed(monkeypatch: pytest.MonkeyPatch, name: str, draws: Iterator[np.ndarray],
          expected: tuple[float, float]) -> None:
    """Replace np.random.<name> (quantus' perturb functions draw with it) by our draws."""

    def fake(*args: float, size: tuple[int, ...], **bounds: float) -> np.ndarray:
        assert (*args, *bounds.values()) == pytest.approx(expected), (args, bounds)
        out = next(draws)
        assert out.shape == tuple(size)
        return out

    monkeypatch.setattr(np.random, name, fake)


def _uniform_draws(batch: EvalBatch, low: float, high: float, samples: int,
                   seed: int = 0) -> Iterator[np.ndarray]:
    shape = tuple(batch.images.shape[1:])
    for j in range(samples):
        yield seeded_uniform(batch.ids, shape, seed=seed, stream=j, low=low,
                             high=high).flatten(1).double().numpy()


def _call(metric: Any, batch: EvalBatch, **extra: Any) -> np.ndarray:
    out = metric(model=batch.model, x_batch=batch.images.numpy(), y_batch=batch.target.numpy(),
                 a_batch=batch.maps[:, None].numpy(), explain_func=_quantus_explain(batch.method),
                 device="cpu", **extra)
    return np.asarray(out, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# quantus as the oracle


def test_avg_sensitivity_matches_quantus(quantus, monkeypatch: pytest.MonkeyPatch) -> None:
    batch, samples = _setup(), 5
    _feed(monkeypatch, "uniform", _uniform_draws(batch, -0.2, 0.2, samples), (-0.2, 0.2))
    expected = _call(quantus.AvgSensitivity(nr_samples=samples, lower_bound=0.2,
                                            disable_warnings=True), batch)
    ours = _score("avg_sensitivity", batch, radius=0.2, samples=samples, draws_per_call=2)
    np.testing.assert_allclose(ours["avg_sensitivity@0.2"].numpy(), expected, rtol=1e-5)
    assert (expected > 0).all()


def test_local_lipschitz_estimate_matches_quantus(quantus, monkeypatch) -> None:
    """quantus' default normalise=True divides every map by the max over the WHOLE batch (its
    normalise_by_max reduces over all axes), so an image's score would depend on its batch;
    our maps are already in [0, 1] and normalise=False is the same computation."""
    batch, samples, std = _setup(), 5, 0.1
    shape = tuple(batch.images.shape[1:])
    draws = (seeded_normal(batch.ids, shape, seed=0, stream=j, std=std).flatten(1).double()
             .numpy() for j in range(samples))
    _feed(monkeypatch, "normal", draws, (0.0, std))
    expected = _call(quantus.LocalLipschitzEstimate(nr_samples=samples, perturb_std=std,
                                                    normalise=False, disable_warnings=True),
                     batch)
    ours = _score("local_lipschitz_estimate", batch, std=std, samples=samples)
    np.testing.assert_allclose(ours["local_lipschitz_estimate"].numpy(), expected, rtol=1e-5)


def test_continuity_matches_quantus(quantus) -> None:
    """quantus 0.6 translates along x by -W + (k+1) dx px, dx = (2W+1) // nr_steps, filling
    with the image minimum ("black", hard-coded: its perturb_baseline is ignored), re-explains
    the original (= our maps for a deterministic method) and takes max_k L1 / (L2 + 1e-9)."""
    batch = _setup()
    expected = _call(quantus.Continuity(nr_steps=8, normalise=False, disable_warnings=True),
                     batch)
    ours = _score("continuity", batch, steps=8, draws_per_call=3)
    np.testing.assert_allclose(ours["continuity"].numpy(), expected, rtol=1e-5)
    assert FR.translations(SIZE, 8) == [-12, -8, -4, 0, 4, 8, 12, 16]  # 16: all minimum


def _relative_oracle(quantus, monkeypatch, name: str, batch: EvalBatch, samples: int,
                     bounds: tuple[float, float] = (0.02, 0.2), **init: Any) -> np.ndarray:
    _feed(monkeypatch, "uniform", _uniform_draws(batch, *bounds, samples), bounds)
    cls = getattr(quantus, name)
    kwargs = {"lower_bound": bounds[0], "upper_bound": bounds[1]}
    return _call(cls(nr_samples=samples, disable_warnings=True, perturb_func_kwargs=kwargs,
                     **init), batch)


RELATIVE = [("RelativeInputStability", "relative_input_stability", {}),
            ("RelativeOutputStability", "relative_output_stability", {}),
            ("RelativeRepresentationStability", "relative_representation_stability",
             {"layer_names": ["1"]})]


@pytest.mark.parametrize(("qname", "name", "init"), RELATIVE)
def test_relative_stability_matches_quantus_on_every_draw(quantus, monkeypatch, qname: str,
                                                          name: str, init: dict) -> None:
    """exclude_changed=false is quantus' return_nan_when_prediction_changes=False: the max over
    all draws of x + U[0.02, 0.2] (quantus' default bounds: one-sided noise)."""
    batch, samples = _setup(), 4
    expected = _relative_oracle(quantus, monkeypatch, qname, batch, samples,
                                return_nan_when_prediction_changes=False, **init)
    settings = {"layer": "1"} if init else {}
    ours = _score(name, batch, samples=samples, exclude_changed=False, draws_per_call=3,
                  **settings)
    np.testing.assert_allclose(ours[name].numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize(("qname", "name", "init"), RELATIVE)
def test_relative_stability_leaves_out_changed_draws(quantus, monkeypatch, qname: str,
                                                     name: str, init: dict) -> None:
    """quantus' default sets a draw that changed the predicted class to NaN and then takes
    np.max, so ONE changed draw makes the image NaN; we leave such draws out of the max (the
    maximisation over the neighbourhood where the class holds). Where no draw changed the class
    the two agree; where quantus is NaN ours is the max over the kept draws. U[0.1, 1] flips
    the class on 3 of the 6 draws of the last image only."""
    batch, samples, bounds = _setup(), 6, (0.1, 1.0)
    expected = _relative_oracle(quantus, monkeypatch, qname, batch, samples, bounds, **init)
    settings = {"layer": "1"} if init else {}
    ours = _score(name, batch, samples=samples, low=0.1, high=1.0, **settings)[name].numpy()
    every = _score(name, batch, samples=samples, low=0.1, high=1.0, exclude_changed=False,
                   **settings)[name].numpy()
    kept = ~np.isnan(expected)
    assert kept.any() and (~kept).any()  # both cases occur on this batch
    np.testing.assert_allclose(ours[kept], expected[kept], rtol=1e-5)
    assert (~np.isnan(ours)).all() and (ours[~kept] < every[~kept]).all()


def _consistency_maps(zeros: bool = True) -> torch.Tensor:
    """8 maps: the first 5 pixels take three sign patterns (`zeros`); rankings shared by pairs
    (without zeros no ties: numpy's argsort orders ties as it likes)."""
    gen = torch.Generator().manual_seed(5)
    maps = torch.rand(8, SIZE, SIZE, generator=gen) * 0.9 + 0.1
    if zeros:
        maps[[1, 4, 6], 0, :3] = 0.0
        maps[[2, 7], 0, 1:5] = 0.0
    for a, b in [(0, 3), (2, 7), (5, 6)]:
        maps[b] = maps[a] ** 2  # same order, different values
    return maps


@pytest.mark.parametrize("how", ["top_n_sign", "rank"])
def test_consistency_matches_quantus(quantus, how: str) -> None:
    """Within one quantus batch (ours: the whole evaluated set) the same computation; quantus
    divides by (count + 1e-9), so an image whose label no other image shares scores 0 there and
    NaN here (undefined)."""
    model = _tiny_cnn(2)
    images = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    batch = _batch(model, images, ids=torch.arange(8) * 3,
                   maps=_consistency_maps(zeros=how == "top_n_sign"))
    discretise = {"top_n_sign": quantus.functions.discretise_func.top_n_sign,
                  "rank": quantus.functions.discretise_func.rank}[how]
    expected = _call(quantus.Consistency(discretise_func=discretise, disable_warnings=True),
                     batch)
    ours = _score("consistency", batch, discretise=how)["consistency"].numpy()
    alone = np.isnan(ours)
    assert (~alone).sum() >= 4 and len(set(batch.predicted.tolist())) > 1
    np.testing.assert_allclose(ours[~alone], expected[~alone], atol=1e-6)
    np.testing.assert_array_equal(expected[alone], 0.0)


# ----------------------------------------------------------------------------------------------
# hand-computed cases: "methods" whose map is a known function of the image, a linear model


class Echo:
    """A method whose map is `scale` x the image's first channel (no post-processing)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale, self.calls = scale, 0

    def __call__(self, model: nn.Module, images: torch.Tensor, target: Any = None,
                 ids: Any = None, labels: Any = None) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(maps=self.scale * images[:, 0], target=target)


class Linear2(nn.Module):
    """logits (c - sum(x), 0): class 0 while the pixel sum stays below c."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.c.repeat(x.shape[0] // self.c.numel())  # draws stacked draw-major
        z = c - self.features(x).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def _echo_batch(images: torch.Tensor, c: torch.Tensor, scale: float = 1.0,
                ids: torch.Tensor | None = None) -> EvalBatch:
    model, method = Linear2(c), Echo(scale)
    ids = torch.arange(images.shape[0]) if ids is None else ids
    with torch.no_grad():
        logits = model(images)
    return EvalBatch(images=images, labels=logits.argmax(1), ids=ids,
                     maps=scale * images[:, 0], target=logits.argmax(1), logits=logits,
                     model=model, method=method)


def test_continuity_by_hand() -> None:
    """x = [[0, 1], [0, 1]], the map = x: shifts -1, 0, 1, 2, 3 give L1 / L2 = 4 / 2, 0,
    2 / sqrt 2 (three times): continuity = 2."""
    images = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    batch = _echo_batch(images, torch.tensor([9.0]))
    assert FR.translations(2, 5) == [-1, 0, 1, 2, 3]
    assert _score("continuity", batch, steps=5)["continuity"].item() == pytest.approx(2.0)


def test_lipschitz_and_input_stabilities_by_hand() -> None:
    """map = 2 x (one channel): ||E_j - A|| = 2 ||x_j - x|| -> LLE = 2; RIS compares the same
    relative change twice -> 1 (x nonzero); RRS with r = x (an identity layer) -> 1."""
    gen = torch.Generator().manual_seed(0)
    images = 1.0 + torch.rand(3, 1, 4, 4, generator=gen)
    batch = _echo_batch(images, torch.full((3,), 100.0), scale=2.0)
    lle = _score("local_lipschitz_estimate", batch, samples=4)["local_lipschitz_estimate"]
    torch.testing.assert_close(lle, torch.full((3,), 2.0), rtol=1e-6, atol=0)
    ris = _score("relative_input_stability", batch, samples=4)["relative_input_stability"]
    torch.testing.assert_close(ris, torch.ones(3), rtol=1e-6, atol=0)
    rrs = _score("relative_representation_stability", batch, samples=4, layer="features")
    torch.testing.assert_close(rrs["relative_representation_stability"], torch.ones(3),
                               rtol=1e-6, atol=0)


def test_avg_sensitivity_by_hand() -> None:
    """map = x (one channel): mean_j ||d_j|| / ||x|| over the seeded draws d_j ~ U[-r, r]."""
    images = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    batch = _echo_batch(images, torch.full((2,), 9.0), ids=torch.tensor([4, 9]))
    draws = [seeded_uniform(batch.ids, (1, 3, 3), seed=2, stream=j, low=-0.3, high=0.3)
             for j in range(3)]
    by_hand = torch.stack([d.flatten(1).norm(dim=1) for d in draws]).mean(0)
    ours = _score("avg_sensitivity", batch, radius=0.3, samples=3, seed=2)["avg_sensitivity@0.3"]
    torch.testing.assert_close(ours, by_hand / images.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
    raw = _score("avg_sensitivity", batch, radius=0.3, samples=3, seed=2, normalise=False)
    torch.testing.assert_close(raw["avg_sensitivity@0.3"], by_hand, rtol=1e-5, atol=0)


def test_output_stability_leaves_out_draws_that_change_the_class_by_hand() -> None:
    """Linear model logits (c - sum x, 0), map = x = 1 (one channel, 2 x 2): a draw d keeps
    class 0 iff sum d < c - 4, and ROS_j = ||d|| / |sum d|. Image 0 sits 0.44 below the
    boundary (some draws flip), image 1 0.01 below (every draw, sum d >= 0.08, flips: NaN)."""
    images = torch.ones(2, 1, 2, 2)
    gaps = torch.tensor([0.44, 0.01])
    batch = _echo_batch(images, 4.0 + gaps)
    samples = 12
    draws = torch.stack([seeded_uniform(batch.ids, (1, 2, 2), stream=j, low=0.02, high=0.2)
                         .flatten(1) for j in range(samples)])  # (S, B, 4)
    ratio = draws.double().norm(dim=2) / draws.double().sum(2).abs()
    kept = draws.sum(2) < gaps
    assert kept[:, 0].any() and not kept[:, 0].all() and not kept[:, 1].any()
    ours = _score("relative_output_stability", batch, samples=samples)
    expected0 = ratio[:, 0][kept[:, 0]].max().item()
    assert ours["relative_output_stability"][0].item() == pytest.approx(expected0, rel=1e-5)
    assert math.isnan(ours["relative_output_stability"][1].item())
    every = _score("relative_output_stability", batch, samples=samples, exclude_changed=False)
    torch.testing.assert_close(every["relative_output_stability"], ratio.amax(0).float(),
                               rtol=1e-5, atol=0)


def test_consistency_top_k_by_hand() -> None:
    """Peaks in grid cells [0, 0, 0, 5, 5, 10] with predictions [0, 0, 1, 1, 1, 0]: 1/2, 1/2,
    0, 1, 1, and NaN for the image alone in its cell."""
    maps = torch.zeros(6, 8, 8)
    for i, cell in enumerate([0, 0, 0, 5, 5, 10]):
        maps[i, 2 * (cell // 4), 2 * (cell % 4)] = 1.0
    labels = FR.discretise(maps, "top_k", k=1, grid=4)
    scores = FR.consistency(labels, torch.tensor([0, 0, 1, 1, 1, 0]))
    torch.testing.assert_close(scores, torch.tensor([0.5, 0.5, 0.0, 1.0, 1.0, math.nan]),
                               equal_nan=True)


def test_consistency_is_gathered_over_batches_and_duplicates_once() -> None:
    """The score is over every evaluated image, whatever the batches; a padded repeat counts
    once."""
    model = _tiny_cnn(2)
    images = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    whole = _batch(model, images, ids=torch.arange(8), maps=_consistency_maps())
    metric = build_metric("consistency", discretise="rank")
    for rows in ([0, 1, 2], [3, 4, 5, 6, 7, 0]):
        metric.update(_batch(model, images[rows], ids=torch.tensor(rows),
                             maps=whole.maps[rows]))
    table = metric.compute()
    assert table["id"].tolist() == list(range(8))
    torch.testing.assert_close(table["consistency"], _score("consistency", whole,
                                                            discretise="rank")["consistency"],
                               equal_nan=True)


def test_draws_do_not_depend_on_batching_or_draws_per_call() -> None:
    batch = _setup(1)
    whole = _score("relative_input_stability", batch, samples=4, exclude_changed=False)
    halves = [_score("relative_input_stability",
                     _batch(batch.model, batch.images[rows], ids=batch.ids[rows]), samples=4,
                     exclude_changed=False, draws_per_call=4)
              for rows in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(torch.cat([h["relative_input_stability"] for h in halves]),
                               whole["relative_input_stability"], rtol=1e-5, atol=1e-7)


def test_default_representation_is_timms_pre_logits() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                            num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, rep = FR.model_forward(vit, None, representation=True)(x)
    with torch.no_grad():
        pre = vit.forward_head(vit.forward_features(x), pre_logits=True)
        torch.testing.assert_close(logits, vit(x))
    torch.testing.assert_close(rep, pre.flatten(1))


class Recording:
    """Wraps a method; records the targets it is asked to explain."""

    def __init__(self, method: Any) -> None:
        self.method, self.targets = method, []

    def __call__(self, model: nn.Module, images: torch.Tensor, target: Any = None,
                 ids: Any = None) -> Any:
        self.targets.append(target)
        return self.method(model, images, target=target, ids=ids)


def test_target_label_explains_the_label() -> None:
    """target: label re-explains x for the label where the map explains another class, then
    the draws for the label."""
    batch = _setup()
    batch.labels = (batch.target + 1) % 3
    batch.method = recording = Recording(batch.method)
    build_metric("local_lipschitz_estimate", samples=2, target="label").update(batch)
    assert len(recording.targets) == 3
    assert all(torch.equal(t[:4], batch.labels) for t in recording.targets)


# ----------------------------------------------------------------------------------------------
# invalid settings


@pytest.mark.parametrize(("name", "settings"), [
    ("avg_sensitivity", {"radius": -0.1}),
    ("avg_sensitivity", {"samples": 0}),
    ("avg_sensitivity", {"target": "predicted"}),
    ("avg_sensitivity", {"draws_per_call": 0}),
    ("local_lipschitz_estimate", {"std": -1.0}),
    ("continuity", {"steps": 0}),
    ("relative_input_stability", {"low": 0.2, "high": 0.2}),
    ("relative_output_stability", {"eps": 0.0}),
    ("relative_representation_stability", {"samples": -1}),
    ("consistency", {"discretise": "sign"}),
    ("consistency", {"k": 17, "grid": 4}),
    ("consistency", {"grid": 0}),
])
def test_invalid_settings_raise_config_error(name: str, settings: dict) -> None:
    with pytest.raises(ConfigError):
        build_metric(name, **settings)


@pytest.mark.parametrize(("name", "settings", "case"), [
    ("continuity", {"steps": 2 * SIZE + 2}, None),
    ("relative_representation_stability", {"layer": "nope"}, None),
    ("relative_representation_stability", {}, "plain"),
    ("avg_sensitivity", {"target": "label"}, "multilabel"),
])
def test_settings_the_batch_rules_out_raise_config_error(name: str, settings: dict,
                                                         case: str | None) -> None:
    """Too many translations for the width, an unknown layer, layer null on a model without
    get_classifier() (the tiny CNN is an nn.Sequential), target: label on multi-hot labels."""
    batch = _setup()
    if case == "multilabel":
        batch.labels = torch.ones(4, 3)
    metric = build_metric(name, **settings)
    with pytest.raises(ConfigError):
        metric.update(batch)
