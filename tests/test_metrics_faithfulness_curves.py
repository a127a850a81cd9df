"""Curve-type faithfulness metrics (Pixel-Flipping, Monotonicity, Selectivity, IROF, ROAD) against
quantus 0.6.0 per image, and hand-computed cases on a linear model.

quantus 0.6 needs bridging here (docs/metrics.md, "Faithfulness curves"):
- its AUCs call np.trapz, removed in numpy 2: restored as np.trapezoid for the oracle calls;
- Monotonicity's default perturb_func replaces the inserted features by the baseline again, so
  its curve is flat and every image scores True: the oracle gets a perturb_func that inserts x;
- IROF asserts on multi-channel input (its segment mask has one channel), pads the curves of a
  batch to the longest one and fills with a batch-wide statistic: called one image at a time on
  one-channel images with "black" (= fill min);
- ROAD indexes channel elements as pixels and fails on RGB (IndexError): compared on one-channel
  images; RGB is checked by hand-computed imputations;
- a (B, 1, H, W) map is broadcast over channels and channel elements are the features
  (Pixel-Flipping, Monotonicity, ROAD): compared on one-channel images, where they are pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xai_bench.metrics import build_metric
from xai_bench.metrics.base import EvalBatch
from xai_bench.metrics.functional import faithfulness_curves as FC
from xai_bench.metrics.functional.road_imputation import noisy_linear_imputation
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_normal

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _tiny_cnn(channels: int = 1, size: int = 16, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * size * size, classes)).eval()


class Recorder(nn.Module):
    """Passes through to `net` and keeps every input and output (the oracle's curve)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.inputs.append(x.detach().clone())
        self.outputs.append(out.detach().clone())
        return out


class Linear2(nn.Module):
    """logits (w . x + c, 0): p(class 0) = sigmoid(w . x + c) in closed form for any input."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.weight, self.bias = weight.reshape(-1).float(), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.weight + self.bias
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def _sigmoid(z: list[float]) -> torch.Tensor:
    return torch.sigmoid(torch.tensor(z, dtype=torch.float64)).float()


@pytest.fixture
def np_trapz(monkeypatch: pytest.MonkeyPatch) -> None:
    """quantus 0.6 calls np.trapz, which numpy 2 removed."""
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def _quantus(metric: object, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             maps: torch.Tensor) -> object:
    return metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(),  # type: ignore[operator]
                  a_batch=maps[:, None].numpy(), device="cpu")


def _data(channels: int, size: int = 16, n: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=gen)
    maps = torch.rand(n, size, size, generator=gen)  # continuous: no ties
    return x, maps, torch.tensor([0, 1, 2, 1][:n])


# ----------------------------------------------------------------------------------------------
# quantus 0.6 as the oracle


def test_pixel_flipping_matches_quantus(np_trapz: None) -> None:
    import quantus

    model = _tiny_cnn()
    x, maps, y = _data(1)
    kwargs = {"features_in_step": 16, "normalise": False, "abs": False, "disable_warnings": True}
    q_curve = np.asarray(_quantus(quantus.PixelFlipping(**kwargs), model, x, y, maps))
    q_auc = np.asarray(_quantus(quantus.PixelFlipping(return_auc_per_sample=True, **kwargs),
                                model, x, y, maps))
    curve = FC.pixel_flipping_curve(model, x, maps, y, features_in_step=16, fill="min",
                                    batch_size=7)
    assert curve.shape == q_curve.shape == (4, 16)
    np.testing.assert_allclose(curve.numpy(), q_curve, atol=1e-6)
    np.testing.assert_allclose(FC.curve_auc(curve).numpy(), q_auc, atol=1e-5)


def test_monotonicity_matches_quantus_with_its_insertion_fixed() -> None:
    """quantus' own perturb_func writes the baseline over the baseline: a flat curve, True for
    every image. Bridged with a perturb_func that inserts x (its documented intent); then its
    curve (recorded at the model) and verdicts are ours."""
    import quantus

    torch.manual_seed(4)
    net = _tiny_cnn(size=8)
    x, maps, _ = _data(1, size=8, n=4)
    # a linear model with positive weights on x > min x is monotonic under ascending insertion:
    # mix images where the verdict is True (linear) and False (the CNN)
    linear = Linear2(torch.rand(64) + 0.1)
    flat = x.numpy().reshape(4, -1)

    def insert_x(arr: np.ndarray, indices: np.ndarray, **kwargs: object) -> np.ndarray:
        out = arr.copy()
        rows = np.arange(arr.shape[0])[:, None]
        out[rows, indices] = flat[rows, indices]
        return out

    broken = quantus.Monotonicity(features_in_step=8, normalise=False, abs=False,
                                  disable_warnings=True)
    verdicts = []
    for model, y in ((net, torch.tensor([0, 1, 2, 1])), (linear, torch.zeros(4, dtype=torch.long))):
        recorder = Recorder(model).eval()
        bridged = quantus.Monotonicity(features_in_step=8, normalise=False, abs=False,
                                       perturb_func=insert_x, disable_warnings=True)
        q = np.asarray(_quantus(bridged, recorder, x, y, maps))
        q_curve = torch.stack([torch.softmax(o, 1)[torch.arange(4), y] for o in recorder.outputs],
                              dim=1)
        curve = FC.monotonicity_curve(model, x, maps, y, features_in_step=8, fill="min",
                                      batch_size=5)
        torch.testing.assert_close(curve, q_curve, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(FC.monotonicity(curve).numpy(), q.astype(float))
        assert all(_quantus(broken, model, x, y, maps))  # the oracle's bug: always True
        verdicts += q.tolist()
    assert True in verdicts and False in verdicts  # both verdicts were exercised


def test_selectivity_matches_quantus_on_rgb(np_trapz: None) -> None:
    import quantus

    model = _tiny_cnn(channels=3)
    x, maps, y = _data(3)
    metric = quantus.Selectivity(patch_size=4, normalise=False, abs=False,
                                 disable_warnings=True)
    q_curve = np.asarray(_quantus(metric, model, x, y, maps))
    curve = FC.selectivity_curve(model, x, maps, y, patch_size=4, fill="min", batch_size=6)
    np.testing.assert_allclose(curve.numpy(), q_curve, atol=1e-6)
    q_auc = [np.trapezoid(c) for c in metric.evaluation_scores]
    np.testing.assert_allclose(FC.curve_auc(curve).numpy(), q_auc, atol=1e-5)


def test_irof_matches_quantus_one_image_at_a_time(np_trapz: None) -> None:
    """On images under 100 px quantus' SLIC (n_segments=100) makes every pixel a segment."""
    import quantus
    from quantus.helpers.utils import get_superpixel_segments

    model = _tiny_cnn(size=6)
    x, maps, y = _data(1, size=6, n=3)
    segments = FC.superpixels(x)
    ratios, counts = FC.irof_curve(model, x, maps, y, segments, fill="min", batch_size=9)
    ours = FC.irof(ratios, counts)
    q_scores = []
    for i in range(3):
        q_seg = get_superpixel_segments(np.moveaxis(x[i].numpy(), 0, -1).astype("double"), "slic")
        np.testing.assert_array_equal(segments[i].numpy(), q_seg)
        metric = quantus.IROF(perturb_baseline="black", normalise=False, abs=False,
                              return_aggregate=False, disable_warnings=True)
        q_scores += list(_quantus(metric, model, x[i:i + 1], y[i:i + 1], maps[i:i + 1]))
    np.testing.assert_allclose(ours.numpy(), q_scores, atol=1e-5, rtol=1e-6)  # float32 p_k
    # its batched call fills with the minimum of the whole batch: another image's presence
    # changes a score (ours do not depend on the batch)
    batched = quantus.IROF(perturb_baseline="black", normalise=False, abs=False,
                           return_aggregate=False, disable_warnings=True)
    assert not np.allclose(_quantus(batched, model, x, y, maps), q_scores)


def test_irof_with_segment_counts_that_differ_per_image() -> None:
    """Images with 2, 4 and 3 segments in one batch give their one-image scores."""
    model = _tiny_cnn(size=4)
    x, maps, y = _data(1, size=4, n=3)
    segments = torch.zeros(3, 4, 4, dtype=torch.long)
    segments[0, 2:] = 1
    segments[1] = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    segments[2, :, 1:] = 1
    segments[2, :, 3] = 2
    ratios, counts = FC.irof_curve(model, x, maps, y, segments, fill="mean", batch_size=2)
    assert counts.tolist() == [2, 4, 3]
    assert torch.isnan(ratios[0, 2:]).all() and torch.isnan(ratios[2, 3:]).all()
    for i in range(3):
        alone, n = FC.irof_curve(model, x[i:i + 1], maps[i:i + 1], y[i:i + 1], segments[i:i + 1])
        torch.testing.assert_close(ratios[i, :int(n)], alone[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(FC.irof(ratios, counts)[i], FC.irof(alone, n)[0])


def test_road_matches_quantus_on_one_channel_with_the_same_noise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle's np.random.randn returns our seeded draws at its imputed pixels (in its
    order); its imputed images, recorded at the model, and its verdicts are ours."""
    import quantus

    size, percentages, seed = 12, [10, 30, 50, 70, 90], 3
    model = _tiny_cnn(size=size)
    x, maps, _ = _data(1, size=size, n=3)
    y = model(x).argmax(1)
    ids = torch.tensor([5, 9, 2])
    ours = FC.road_curve(model, x, maps, y, percentages=percentages, noise=0.01, seed=seed,
                         ids=ids, batch_size=4)
    for b in range(3):
        order = np.argsort(-maps[b].numpy().reshape(-1))
        queue = []
        for step, q in enumerate(percentages):
            z = seeded_normal(ids[b:b + 1], (1, size, size), seed=seed, stream=step)
            queue.append(z[0].numpy().reshape(1, -1)[:, order[:int(size * size * q / 100)]])
        monkeypatch.setattr(np.random, "randn", lambda *shape, draws=queue: draws.pop(0))
        recorder = Recorder(model).eval()
        metric = quantus.ROAD(percentages=percentages, noise=0.01, normalise=False, abs=False,
                              disable_warnings=True)
        scores = _quantus(metric, recorder, x[b:b + 1], y[b:b + 1], maps[b:b + 1])
        monkeypatch.undo()
        assert not queue
        np.testing.assert_array_equal(ours[b].numpy(), [scores[q] for q in percentages])
        rank = maps[b].reshape(-1).argsort(descending=True, stable=True).argsort()
        for step, q in enumerate(percentages):
            removed = (rank < int(size * size * q / 100)).view(1, size, size)
            noise = 0.01 * seeded_normal(ids[b:b + 1], (1, size, size), seed=seed, stream=step)
            mine = noisy_linear_imputation(x[b:b + 1], removed, noise)
            torch.testing.assert_close(recorder.inputs[step], mine, atol=2e-7, rtol=0)
    assert 0 < ours.mean() < 1  # kept and lost predictions both occur


def test_quantus_road_fails_on_rgb() -> None:
    import quantus

    model = _tiny_cnn(channels=3, size=8)
    x, maps, y = _data(3, size=8, n=2)
    with pytest.raises(IndexError):
        _quantus(quantus.ROAD(percentages=[50], normalise=False, disable_warnings=True),
                 model, x, y, maps)


# ----------------------------------------------------------------------------------------------
# hand-computed cases on a linear model: p = sigmoid(w . x)


X4 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # one channel, pixels 0..3; min = 1
W4 = torch.tensor([1.0, -1.0, 0.5, 2.0])
A4 = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])  # descending: pixel 1, 2, 3, 0


def test_pixel_flipping_by_hand() -> None:
    # w . x = 1 - 2 + 1.5 + 8 = 8.5; pixels set to 1 in the order 1, 2, 3, 0
    # k=1: 1 - 1 + 1.5 + 8 = 9.5; k=2: 1 - 1 + 0.5 + 8 = 8.5; k=3: 1 - 1 + 0.5 + 2 = 2.5; k=4 same
    curve = FC.pixel_flipping_curve(Linear2(W4), X4, A4, torch.tensor([0]),
                                    features_in_step=1, fill="min")
    expected = _sigmoid([9.5, 8.5, 2.5, 2.5])
    torch.testing.assert_close(curve[0], expected)
    e = expected.double()
    auc = (e[0] + e[1]) / 2 + (e[1] + e[2]) / 2 + (e[2] + e[3]) / 2
    torch.testing.assert_close(FC.curve_auc(curve)[0].double(), auc, atol=1e-6, rtol=0)
    curve2 = FC.pixel_flipping_curve(Linear2(W4), X4, A4, torch.tensor([0]),
                                     features_in_step=3, fill="zero")
    # steps of 3 pixels: k=1 removes 1, 2, 3 -> 1; k=2 removes all -> 0
    torch.testing.assert_close(curve2[0], _sigmoid([1.0, 0.0]))


def test_monotonicity_by_hand() -> None:
    # inserted into the min image (all 1) in ascending order: pixel 0, 3, 2, 1
    # z: start 1 - 1 + .5 + 2 = 2.5; +px0 (x=1): 2.5; +px3 (x=4): 8.5; +px2 (3): 9.5; +px1: 8.5
    curve = FC.monotonicity_curve(Linear2(W4), X4, A4, torch.tensor([0]), features_in_step=1)
    torch.testing.assert_close(curve[0], _sigmoid([2.5, 8.5, 9.5, 8.5]))
    assert FC.monotonicity(curve).tolist() == [0.0]  # the last insertion lowers p
    positive = Linear2(W4.abs())  # every insertion adds w (x - 1) >= 0: monotonic
    assert FC.monotonicity(FC.monotonicity_curve(positive, X4, A4, torch.tensor([0]),
                                                 features_in_step=1)).tolist() == [1.0]


def test_selectivity_by_hand() -> None:
    # 4 x 4 image of ones, 2 x 2 tiles; w = 1 on tile 0 (top left), 2 on tile 3 (bottom right)
    x = torch.ones(1, 1, 4, 4)
    w = torch.zeros(4, 4)
    w[:2, :2], w[2:, 2:] = 1.0, 2.0
    maps = torch.zeros(1, 4, 4)
    maps[0, 2:, 2:], maps[0, :2, :2], maps[0, :2, 2:] = 0.9, 0.5, 0.2  # tiles 3, 0, 1, 2
    # zero fill: z = 4 + 8 = 12 -> remove tile 3: 4; tile 0: 0; then 0, 0
    curve = FC.selectivity_curve(Linear2(w), x, maps, torch.tensor([0]), patch_size=2,
                                 fill="zero")
    torch.testing.assert_close(curve[0], _sigmoid([4.0, 0.0, 0.0, 0.0]))


def test_irof_by_hand() -> None:
    # quadrant segments 0..3 of a 4 x 4 image of ones; w = 1 on segment 0, -1 on segment 1
    x = torch.ones(1, 1, 4, 4)
    segments = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])[None]
    w = torch.zeros(4, 4)
    w[:2, :2], w[:2, 2:] = 1.0, -1.0
    maps = torch.tensor([0.4, 0.8, 0.1, 0.2])[segments]  # order: segment 1, 0, 3, 2
    # zero fill: z0 = 4 - 4 = 0; -seg1: 4; -seg0: 0; -seg3: 0; -seg2: 0
    ratios, counts = FC.irof_curve(Linear2(w), x, maps, torch.tensor([0]), segments,
                                   fill="zero")
    p = _sigmoid([4.0, 0.0, 0.0, 0.0]).double() / 0.5
    torch.testing.assert_close(ratios[0], p)
    area = (p[0] + p[1]) / 2 + (p[1] + p[2]) / 2 + (p[2] + p[3]) / 2
    assert counts.tolist() == [4]
    torch.testing.assert_close(FC.irof(ratios, counts)[0], 4 - area)


@pytest.mark.parametrize("solver", ["cg", "direct"])
def test_noisy_linear_imputation_by_hand_on_rgb(solver: str) -> None:
    # one removed pixel in a 3 x 3 image: the mean of its 8 neighbours, 1/6 edge, 1/12 corner
    x = torch.arange(27, dtype=torch.float32).view(1, 3, 3, 3) ** 2
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True
    out = noisy_linear_imputation(x, removed, solver=solver)
    for c in range(3):
        v = x[0, c]
        edge = (v[0, 1] + v[1, 0] + v[1, 2] + v[2, 1]) / 6
        corner = (v[0, 0] + v[0, 2] + v[2, 0] + v[2, 2]) / 12
        torch.testing.assert_close(out[0, c, 1, 1], edge + corner)
    kept = ~removed[:, None].expand_as(x)
    assert torch.equal(out[kept], x[kept])
    # two removed pixels on the top row of a 2 x 3 image (a, b at (0, 0), (0, 1)): out-of-frame
    # weights drop out. a: (1/6 b + 1/6 x10 + 1/12 x11) / (5/12);
    # b: (1/6 a + 1/6 x02 + 1/6 x11 + 1/12 x10 + 1/12 x12) / (2/3)
    x2 = torch.tensor([[[[0.0, 0.0, 6.0], [12.0, 24.0, 36.0]]]])
    removed2 = torch.tensor([[[True, True, False], [False, False, False]]])
    a_mat = torch.tensor([[5 / 12, -1 / 6], [-1 / 6, 2 / 3]], dtype=torch.float64)
    rhs = torch.tensor([12 / 6 + 24 / 12, 6 / 6 + 24 / 6 + 12 / 12 + 36 / 12],
                       dtype=torch.float64)
    a, b = torch.linalg.solve(a_mat, rhs).tolist()
    out2 = noisy_linear_imputation(x2, removed2, noise=torch.full_like(x2, 0.5), solver=solver)
    torch.testing.assert_close(out2[0, 0, 0, :2], torch.tensor([a + 0.5, b + 0.5]))
    torch.testing.assert_close(out2[0, 0, 1], x2[0, 0, 1])


def test_road_by_hand_and_its_lerf_column() -> None:
    # w = 1 on the centre pixel of a 3 x 3 image, bias -1: class 0 iff the centre > 1; the centre
    # is 9, its neighbours 0: imputing it gives 0 -> class 1. The map ranks the centre first.
    x = torch.zeros(2, 1, 3, 3)
    x[:, 0, 1, 1] = 9.0
    w = torch.zeros(3, 3)
    w[1, 1] = 1.0
    maps = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    maps[:, 1, 1] = 1.0
    model = Linear2(w, bias=-1.0)
    y = torch.zeros(2, dtype=torch.long)
    # 9 px: 12 % -> int(1.08) = 1 pixel (the centre); 5 % -> 0 pixels
    morf = FC.road_curve(model, x, maps, y, percentages=[5, 12, 50], noise=0.0)
    assert morf.tolist() == [[1.0, 0.0, 0.0]] * 2
    # LeRF imputes the centre last: 8 px at 99 % (int(8.91) = 8) keeps it
    lerf = FC.road_curve(model, x, maps, y, percentages=[12, 50, 99], order="lerf", noise=0.0)
    assert lerf.tolist() == [[1.0, 1.0, 1.0]] * 2
    prob = FC.road_curve(model, x, maps, y, percentages=[5], noise=0.0, output="probability")
    torch.testing.assert_close(prob, _sigmoid([8.0, 8.0])[:, None])
    metric = build_metric("road", percentages=[5, 12, 50], noise=0.0, per_percentage=True)
    scores = metric.score(_eval_batch(model, x, maps, y, torch.tensor([3, 4])))
    torch.testing.assert_close(scores["road/morf"], torch.full((2,), 1 / 3))
    torch.testing.assert_close(scores["road/lerf"], torch.ones(2))
    assert scores["road/morf@12"].tolist() == [0.0, 0.0]
    assert metric.column_higher_is_better("road/morf") is False
    assert metric.column_higher_is_better("road/lerf@50") is True


# ----------------------------------------------------------------------------------------------
# the metric classes: batch independence, settings


def _eval_batch(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                ids: torch.Tensor) -> EvalBatch:
    with torch.no_grad():
        logits = model(x)
    return EvalBatch(images=x, labels=target, ids=ids, maps=maps, target=target, logits=logits,
                     model=model, method=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name, settings", [
    ("pixel_flipping", {"features_in_step": 37, "fill": "noise", "batch_size": 5}),
    ("monotonicity", {"features_in_step": 64, "fill": "noise_once"}),
    ("selectivity", {"patch_size": 5, "fill": "mean", "batch_size": 3}),
    ("irof", {"n_segments": 20, "batch_size": 7}),
    ("road", {"percentages": [20, 60], "batch_size": 3}),
])
def test_a_score_does_not_depend_on_the_batch(name: str, settings: dict) -> None:
    """Per image, split batches give the whole batch's values (seeded noise keyed by id)."""
    model = _tiny_cnn(channels=3)
    x, maps, y = _data(3)
    ids = torch.tensor([11, 3, 7, 0])
    whole = build_metric(name, **settings)
    whole.update(_eval_batch(model, x, maps, y, ids))
    split = build_metric(name, **settings)
    for rows in ([2, 0], [3], [1]):
        split.update(_eval_batch(model, x[rows], maps[rows], y[rows], ids[rows]))
    a, b = whole.compute(), split.compute()
    for column in a:
        torch.testing.assert_close(a[column], b[column], equal_nan=True, atol=1e-5, rtol=1e-5)
    declared = whole.cost(model, 16, 16).forwards
    assert declared == {"pixel_flipping": 7, "monotonicity": 4, "selectivity": 16,
                        "irof": 21, "road": 4}[name]


@pytest.mark.parametrize("name, settings, match", [
    ("pixel_flipping", {"features_in_step": 0}, "features_in_step"),
    ("pixel_flipping", {"fill": "black"}, "fill"),
    ("monotonicity", {"features_in_step": 1.5}, "features_in_step"),
    ("selectivity", {"patch_size": 0}, "patch_size"),
    ("selectivity", {"batch_size": 0}, "batch_size"),
    ("irof", {"segmentation": "quickshift"}, "segmentation"),
    ("irof", {"n_segments": 0}, "n_segments"),
    ("irof", {"compactness": 0}, "compactness"),
    ("road", {"percentages": [100]}, "percentages"),
    ("road", {"percentages": []}, "percentages"),
    ("road", {"orders": ["morf", "morf"]}, "orders"),
    ("road", {"orders": "up"}, "orders"),
    ("road", {"noise": -0.1}, "noise"),
    ("road", {"output": "logit"}, "output"),
    ("road", {"solver": "lu"}, "solver"),
    ("road", {"tol": 0}, "tol"),
    ("road", {"max_iter": 0}, "max_iter"),
    ("road", {"precision": "half"}, "precision"),
])
def test_invalid_settings_raise_config_errors(name: str, settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_metric(name, **settings)


def test_irof_is_nan_for_an_image_left_in_one_segment() -> None:
    ratios = torch.tensor([[0.5, math.nan], [0.2, 0.1]], dtype=torch.float64)
    scores = FC.irof(ratios, torch.tensor([1, 2]))
    assert math.isnan(scores[0]) and scores[1].item() == pytest.approx(2 - 0.15)


def test_irof_runs_one_plus_s_forwards_per_image_and_records_s() -> None:
    """IROF's declared cost is an estimate (1 + n_segments); what it runs is 1 + S_i per image,
    S_i in its `irof/segments` column."""
    model = _tiny_cnn(channels=3)
    x, maps, y = _data(3)
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    metric = build_metric("irof", n_segments=30, batch_size=8)
    assert metric.cost(model, 16, 16).forwards == 31  # the estimate: 1 + n_segments
    scores = metric.score(_eval_batch(model, x, maps, y, torch.arange(4)))
    segments = FC.superpixels(x, n_segments=30).flatten(1).amax(1) + 1
    assert scores["irof/segments"].tolist() == segments.float().tolist()
    assert sum(seen) - 4 == int((1 + segments).sum())  # minus _eval_batch's own forward
    spent = metric.spent({"irof/segments": scores["irof/segments"]})
    assert spent.forwards == (sum(seen) - 4) / 4  # what it really cost, per image
    assert max(seen) <= 8
    assert metric.column_higher_is_better("irof") is True
    assert metric.column_higher_is_better("irof/segments") is None
