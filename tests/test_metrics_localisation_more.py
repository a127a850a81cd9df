"""top_k_intersection, auc and attribution_localisation against Quantus 0.6.0 (and scikit-learn
for the AUC's ties) on a tiny CNN's maps, a hand-computed linear model, invalid settings, and
the edge cases (empty / full masks, all-zero, constant and NaN maps: never a crash)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xai_bench.explain import build_method
from xai_bench.metrics import EvalBatch, build_metric
from xai_bench.metrics.functional import localisation_ranking as FR
from xai_bench.utils.errors import ConfigError

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

SIZE = 16
N = SIZE * SIZE
NAMES = ("top_k_intersection", "auc", "attribution_localisation")


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def _tiny_cnn(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * SIZE * SIZE, classes)).eval()


def _boxes(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, SIZE, SIZE)
    for i in range(n):
        top, left = torch.randint(0, SIZE // 2, (2,), generator=gen).tolist()
        height, width = torch.randint(3, SIZE // 2, (2,), generator=gen).tolist()
        masks[i, top:top + height, left:left + width] = 1
    return masks


def _batch(model: nn.Module, maps: torch.Tensor | None = None, n: int = 6,
           masks: torch.Tensor | None = None, method_name: str = "saliency",
           **method_kwargs: object) -> EvalBatch:
    images = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    method = build_method(method_name, **method_kwargs)
    with torch.no_grad():
        logits = model(images)
    explanation = method(model, images, target=logits.argmax(1), ids=torch.arange(n))
    return EvalBatch(images=images, labels=logits.argmax(1), ids=torch.arange(n),
                     maps=explanation.maps.detach() if maps is None else maps,
                     target=explanation.target, logits=logits, model=model, method=method,
                     masks=_boxes(n) if masks is None else masks,
                     has_mask=torch.ones(n, dtype=torch.bool))


@pytest.fixture(scope="module")
def cnn() -> dict[str, torch.Tensor]:
    """The tiny CNN's saliency maps ([0, 1]), its signed raw input x gradient maps, masks."""
    model = _tiny_cnn()
    return {"saliency": _batch(model).maps,
            "signed": _batch(model, method_name="input_x_gradient", normalize="none").maps,
            "masks": _boxes(6)}


def _oracle(metric: type, maps: torch.Tensor, masks: torch.Tensor, batch: bool = False,
            **init: object) -> np.ndarray:
    """Quantus on each (map, mask) alone, or on the whole batch at once (`batch`)."""
    a, s = maps.numpy()[:, None].astype(np.float32), masks.numpy()[:, None].astype(np.float32)
    groups = [slice(0, len(a))] if batch else [slice(i, i + 1) for i in range(len(a))]
    out = []
    for g in groups:
        b = len(a[g])
        out += list(metric(disable_warnings=True, **init)(
            model=None, x_batch=np.zeros((b, 1, SIZE, SIZE), np.float32),
            y_batch=np.zeros(b, np.int64), a_batch=a[g], s_batch=s[g], channel_first=True))
    return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------------- 1. oracle
@pytest.mark.parametrize("kind", ["saliency", "signed"])
@pytest.mark.parametrize(("k", "concept_influence", "abs"),
                         [(1, False, False), (20, False, False), (100, True, False),
                          (N - 1, False, True)])  # Quantus refuses k = H W
def test_top_k_intersection_matches_quantus(quantus, cnn, kind, k, concept_influence,
                                            abs) -> None:
    maps, masks = cnn[kind], cnn["masks"]
    ours = FR.top_k_intersection(maps, masks, k=k, concept_influence=concept_influence, abs=abs)
    expected = _oracle(quantus.TopKIntersection, maps, masks, k=k,
                       concept_influence=concept_influence, abs=abs)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["saliency", "signed"])
@pytest.mark.parametrize("abs", [False, True])
def test_auc_matches_quantus(quantus, cnn, kind: str, abs: bool) -> None:
    maps, masks = cnn[kind], cnn["masks"]
    ours = FR.auc(maps, masks, abs=abs).numpy()
    expected = _oracle(quantus.AUC, maps, masks, batch=True, abs=abs)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    assert np.ptp(ours) > 0.05  # the images differ: the comparison can fail


def test_auc_ties_count_one_half_as_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(5)
    maps = torch.randint(0, 4, (5, 24, 20), generator=gen).float() / 3  # 4 levels: many ties
    masks = torch.rand(5, 24, 20, generator=gen) < 0.3
    ours = FR.auc(maps, masks).double().numpy()
    expected = [roc_auc_score(m.flatten().numpy(), a.flatten().numpy())
                for a, m in zip(maps, masks, strict=True)]
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["saliency", "signed"])
def test_attribution_localisation_matches_quantus(quantus, cnn, kind: str) -> None:
    maps, masks = cnn[kind], cnn["masks"]
    ours = FR.attribution_localisation(maps, masks).numpy()  # abs=True: Quantus' default
    expected = _oracle(quantus.AttributionLocalisation, maps, masks, batch=True)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)


def test_attribution_localisation_positive_only_matches_quantus(quantus, cnn) -> None:
    maps, masks = cnn["signed"], cnn["masks"]
    ours = FR.attribution_localisation(maps, masks, abs=False, positive_only=True).numpy()
    expected = _oracle(quantus.AttributionLocalisation, maps, masks, batch=True, abs=False,
                       positive_attributions=True)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    plain = FR.attribution_localisation(maps, masks).numpy()
    assert np.abs(ours - plain).max() > 1e-3  # clipping the negatives matters on signed maps


def test_quantus_weighted_attribution_localisation_is_the_inverse_over_a_wrong_size(
        quantus, cnn) -> None:
    """Quantus multiplies by |mask| / x_batch[2:].size = |mask| / ((B - 2) C H W): the inverse
    of the paper's weighting, and batch-size dependent. We multiply by H W / |mask|."""
    maps, masks = cnn["saliency"], cnn["masks"]
    mu = FR.attribution_localisation(maps, masks).double().numpy()
    area = masks.flatten(1).sum(1).double().numpy()
    theirs = _oracle(quantus.AttributionLocalisation, maps, masks, batch=True, weighted=True)
    np.testing.assert_allclose(theirs, mu * area / ((len(maps) - 2) * N), rtol=1e-5)
    ours = FR.attribution_localisation(maps, masks, weighted=True).double().numpy()
    np.testing.assert_allclose(ours, mu * N / area, rtol=1e-6)


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
    """w = +-1 on a 2 x 2 block, 0 elsewhere: the saliency map is that block (min-max to ~1),
    zeros elsewhere; the mask is the 3 x 3 block holding it (4 relevant + 5 zero pixels)."""
    weight = torch.zeros(SIZE, SIZE)
    weight[5:7, 5:7] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    model = Linear(weight)
    images = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, SIZE, SIZE)
    masks[:, 5:8, 5:8] = 1
    method = build_method("saliency")
    logits = model(images)
    explanation = method(model, images, target=logits.argmax(1), ids=torch.arange(2))
    batch = EvalBatch(images=images, labels=logits.argmax(1), ids=torch.arange(2),
                      maps=explanation.maps.detach(), target=explanation.target, logits=logits,
                      model=model, method=method, masks=masks,
                      has_mask=torch.ones(2, dtype=torch.bool))
    expected = {
        ("top_k_intersection", (("k", 4),)): 1.0,
        ("top_k_intersection", (("k", 4), ("concept_influence", True))): N / 9,
        # the 4 block pixels, then 4 of the N - 4 tied zeros, of which 5 lie in the mask
        ("top_k_intersection", (("k", 8),)): (4 + 4 * 5 / (N - 4)) / 8,
        # positives: 4 above every negative, 5 tied with all N - 9 negatives (one half each)
        ("auc", ()): (4 * 1.0 + 5 * 0.5) / 9,
        ("attribution_localisation", ()): 1.0,
        ("attribution_localisation", (("weighted", True),)): N / 9,
    }
    for (name, settings), value in expected.items():
        metric = build_metric(name, **dict(settings))
        metric.update(batch)
        scores = metric.compute()[name].double().numpy()
        np.testing.assert_allclose(scores, [value, value], rtol=1e-6, err_msg=f"{name}{settings}")


# ------------------------------------------------------------------------------- 3. settings
@pytest.mark.parametrize(("name", "settings"), [
    ("top_k_intersection", {"k": 0}),
    ("top_k_intersection", {"k": 1.5}),
    ("top_k_intersection", {"k": True}),
    ("top_k_intersection", {"concept_influence": "no"}),
    ("top_k_intersection", {"empty_mask": "zero"}),
    ("auc", {"abs": None}),
    ("attribution_localisation", {"weighted": 1}),
    ("attribution_localisation", {"positive_only": "true"}),
    ("attribution_localisation", {"empty_mask": "nan"}),
])
def test_invalid_settings_raise_config_error(name: str, settings: dict) -> None:
    with pytest.raises(ConfigError, match=name):
        build_metric(name, **settings)


def test_k_larger_than_the_map_raises_config_error() -> None:
    batch = _batch(_tiny_cnn(), n=2)
    with pytest.raises(ConfigError, match="exceeds"):
        build_metric("top_k_intersection", k=N + 1).update(batch)


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_without_masks_is_refused(name: str) -> None:
    batch = _batch(_tiny_cnn(), n=2)
    batch.masks = None
    with pytest.raises(ConfigError, match="mask"):
        build_metric(name).update(batch)


# ------------------------------------------------------------------------------- 4. edge cases
def _edge_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(map, mask) pairs: random/empty, random/full, zero/box, constant/box, NaN/box,
    zero/empty."""
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(6, SIZE, SIZE, generator=gen)
    maps[2], maps[3], maps[5] = 0.0, 0.5, 0.0
    maps[4, 3, 3] = math.nan
    masks = torch.zeros(6, SIZE, SIZE)
    masks[1] = 1
    masks[2:5, 2:6, 4:12] = 1  # 32 px: area fraction 1 / 8
    return maps, masks


def test_edge_cases() -> None:
    maps, masks = _edge_batch()
    nan = math.nan
    torch.testing.assert_close(  # empty = a miss; tied zeros / constant: the area fraction
        FR.top_k_intersection(maps, masks, k=10), torch.tensor([0, 1, 1 / 8, 1 / 8, nan, 0]),
        equal_nan=True)
    torch.testing.assert_close(
        FR.top_k_intersection(maps, masks, k=10, concept_influence=True),
        torch.tensor([0, 1, 1, 1, nan, 0]), equal_nan=True)
    torch.testing.assert_close(  # no positives or no negatives: undefined
        FR.auc(maps, masks), torch.tensor([nan, nan, 0.5, 0.5, nan, nan]), equal_nan=True)
    al = FR.attribution_localisation(maps, masks)
    torch.testing.assert_close(al, torch.tensor([0, 1, nan, 1 / 8, nan, 0]), equal_nan=True)
    torch.testing.assert_close(FR.attribution_localisation(maps, masks, weighted=True),
                               torch.tensor([0, 1, nan, 1, nan, 0]), equal_nan=True)
    # signed maps without abs: a "share" above 1 or below 0 is undefined
    signed = torch.tensor([-0.01, 0.5])[:, None, None].repeat(1, SIZE, SIZE)  # outside
    signed[:, 2:6, 4:12] = torch.tensor([1.0, -1.0])[:, None, None]  # ratios 32/29.76, -32/80
    out = FR.attribution_localisation(signed, masks[2:4], abs=False)
    assert torch.isnan(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_metrics_score_the_edge_batch_and_skip_empty_masks_on_request(name: str) -> None:
    maps, masks = _edge_batch()
    batch = _batch(_tiny_cnn(), maps=maps, masks=masks, n=6)
    batch.has_mask[3] = False  # an image without annotation: NaN, whatever its map
    settings = {"k": 10} if name == "top_k_intersection" else {}
    metric = build_metric(name, **settings)
    metric.update(batch)
    values = metric.compute()[name]
    assert values.shape == (6,) and torch.isnan(values[[3, 4]]).all()
    if name != "auc":
        assert values[0] == 0 and values[5] == 0  # empty mask: a miss
        skip = build_metric(name, empty_mask="skip", **settings)
        skip.update(batch)
        assert torch.isnan(skip.compute()[name][[0, 5]]).all()


def test_what_quantus_does_with_empty_masks_and_constant_maps(quantus) -> None:
    """Documented in docs/metrics.md: Quantus returns NaN for an empty mask on all three;
    0 (not NaN) for an all-zero map's attribution localisation; and its top-k takes the
    first k pixels in argsort order of a constant map (here: the top rows)."""
    maps, masks = _edge_batch()
    keep = [0, 2, 3]  # random/empty, zero/box, constant/box (no NaN map: Quantus would raise)
    maps, masks = maps[keep], masks[keep]
    topk = _oracle(quantus.TopKIntersection, maps, masks, batch=True, k=10)
    assert math.isnan(topk[0]) and topk[1] == topk[2] == 0.0  # rows 0..1 miss the box
    assert math.isnan(_oracle(quantus.AUC, maps, masks, batch=True)[0])
    al = _oracle(quantus.AttributionLocalisation, maps, masks, batch=True)
    assert math.isnan(al[0]) and al[1] == 0.0
    ours = FR.top_k_intersection(maps, masks, k=10)
    assert ours[1] == ours[2] == 1 / 8
