"""Localisation metrics: Quantus 0.6.0 as oracle, hand-computed cases on the study's real masks,
an independent NumPy reference for IoU at q% and the tolerance pointing game, and edge cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xai_bench.metrics.functional.localisation import (
    has_nan,
    iou_at_q,
    is_constant,
    pointing_game,
    relevance_mass,
    relevance_rank,
)
from xai_bench.utils.errors import ConfigError

ROI_DIR = Path(__file__).resolve().parent / "data" / "rois"
EMPTY = ("mura/patient11213_study1_positive_image2.png",
         "mura/patient11261_study1_positive_image1.png")
FULL = "kvasir/8dc062be-ed0c-49c7-a629-87c8b0304707.png"
ANTI_ALIASED = ("cp_child/1 (10).png", "duke/1-040-819.png")
SIDE = 224
Q_LEVELS = (5, 10, 20, 40)


# ----------------------------------------------------------------------------- helpers
def _load_grey(name: str) -> np.ndarray:
    return np.array(Image.open(ROI_DIR / name).convert("L"))


ROI_NAMES = sorted(str(p.relative_to(ROI_DIR)) for p in ROI_DIR.glob("*/*.png"))
NONEMPTY = [n for n in ROI_NAMES if n not in EMPTY]


@pytest.fixture(scope="module")
def rois() -> dict[str, np.ndarray]:
    """name -> (224, 224) bool foreground (any grey level > 0)."""
    return {name: _load_grey(name) > 0 for name in ROI_NAMES}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _bbox(m: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(m)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def _rect_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two inclusive pixel rectangles (top, bottom, left, right), by arithmetic."""
    def area(r: tuple[int, int, int, int]) -> int:
        return (r[1] - r[0] + 1) * (r[3] - r[2] + 1)

    ih = min(a[1], b[1]) - max(a[0], b[0]) + 1
    iw = min(a[3], b[3]) - max(a[2], b[2]) + 1
    inter = max(ih, 0) * max(iw, 0)
    return inter / (area(a) + area(b) - inter)


def ref_kept(a: np.ndarray, q: float, region: str) -> np.ndarray:
    """Independent reference: sort, threshold at the (k+1)-th largest, box by scanning rows/cols."""
    h, w = a.shape
    k = min(int(h * w * q / 100), h * w - 1)
    thr = np.sort(a.ravel())[::-1][k]
    kept = a >= thr
    if region == "box":
        rows = [y for y in range(h) if kept[y].any()]
        cols = [x for x in range(w) if kept[:, x].any()]
        kept = np.zeros_like(kept)
        kept[min(rows): max(rows) + 1, min(cols): max(cols) + 1] = True
    return kept


def ref_iou(a: np.ndarray, m: np.ndarray, q: float, region: str) -> float:
    kept = ref_kept(a, q, region)
    return float((kept & m).sum() / (kept | m).sum())


def ref_grow(m: np.ndarray, tolerance: float) -> np.ndarray:
    """Independent reference: OR of the mask shifted by every integer offset d with |d| < tol."""
    h, w = m.shape
    grown = m.copy()
    reach = int(math.ceil(tolerance))
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if tolerance > 0 and dy * dy + dx * dx < tolerance * tolerance:
                grown[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] |= m[
                    max(-dy, 0): h + min(-dy, 0), max(-dx, 0): w + min(-dx, 0)
                ]
    return grown


def ref_pointing_game(a: np.ndarray, grown: np.ndarray) -> float:
    """Hit iff a maximal pixel lies in the (grown) mask."""
    return float((grown & (a == a.max())).any())


def _chebyshev(center: tuple[int, int], side: int = SIDE) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    return np.maximum(abs(yy - center[0]), abs(xx - center[1]))


def _all_metrics(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {
        "pointing_game": pointing_game(maps, masks),
        "pointing_game_tol": pointing_game(maps, masks, tolerance=3.0),
        "relevance_mass": relevance_mass(maps, masks),
        "relevance_rank": relevance_rank(maps, masks),
    }
    for q in (5, 40):
        for region in ("box", "pixel"):
            out[f"iou_{q}_{region}"] = iou_at_q(maps, masks, q, region=region)
    return out


def _random_batch(seed: int, b: int = 12, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random maps without ties and non-empty masks (rectangles and scattered blobs)."""
    rng = np.random.default_rng(seed)
    n = side * side  # distinct values (no accidental float32 ties): a shuffled ramp
    maps = np.stack([rng.permutation(n).reshape(side, side) / n
                     for _ in range(b)]).astype(np.float32)
    masks = np.zeros((b, side, side), dtype=bool)
    for i in range(b):
        if i % 3 == 2:
            masks[i] = rng.random((side, side)) < 0.2
        else:
            y0, x0 = rng.integers(0, side - 2, size=2)
            y1, x1 = y0 + rng.integers(1, side - y0), x0 + rng.integers(1, side - x0)
            masks[i, y0:y1, x0:x1] = True
        masks[i, rng.integers(side), rng.integers(side)] = True  # never empty
    return maps, masks


# ----------------------------------------------------------------------------- 1. Quantus oracle
@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def _quantus(metric, maps: np.ndarray, masks: np.ndarray, **init) -> np.ndarray:
    """Call a Quantus localisation metric on precomputed maps (no model, no explain_func)."""
    b = maps.shape[0]
    init = {"disable_warnings": True, "normalise": False, "abs": False, **init}
    scores = metric(**init)(
        model=None,
        x_batch=np.zeros((b, 1, *maps.shape[1:]), dtype=np.float32),
        y_batch=np.zeros(b, dtype=np.int64),
        a_batch=maps[:, None].astype(np.float32),
        s_batch=masks[:, None].astype(np.float32),
        channel_first=True,
    )
    return np.asarray(scores, dtype=np.float64)


def test_pointing_game_matches_quantus_including_ties(quantus) -> None:
    maps, masks = _random_batch(0)
    tied = np.round(maps * 3) / 3  # 4 levels: many pixels tie at the maximum
    both = np.concatenate([maps, tied])
    masks2 = np.concatenate([masks, masks])
    ours = pointing_game(_t(both), _t(masks2)).numpy()
    expected = _quantus(quantus.PointingGame, both, masks2)
    np.testing.assert_array_equal(ours, expected)
    assert 0 < ours.sum() < len(ours)  # both outcomes exercised


def test_relevance_mass_matches_quantus_signed_and_default_normalisation(quantus) -> None:
    maps, masks = _random_batch(1)
    signed = np.random.default_rng(2).normal(size=maps.shape).astype(np.float32) + 0.2
    block = np.zeros((1, *maps.shape[1:]), dtype=bool)
    block[0, :8, :8] = True
    over = np.where(block, 2.0, -0.01).astype(np.float32)  # 128 / (128 - 9.6): ratio > 1
    both = np.concatenate([maps, signed, over])
    masks2 = np.concatenate([masks, masks, block])
    ours = relevance_mass(_t(both), _t(masks2)).numpy()
    # Quantus' defaults (normalise by max |a|) leave the ratio unchanged; negatives are not clipped
    expected = _quantus(quantus.RelevanceMassAccuracy, both, masks2, normalise=True)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
    assert ours[-1] > 1.0  # not clipped, as in Quantus


def test_relevance_rank_matches_quantus_without_ties(quantus) -> None:
    maps, masks = _random_batch(3)
    assert all(len(np.unique(m)) == m.size for m in maps)
    ours = relevance_rank(_t(maps), _t(masks)).numpy()
    expected = _quantus(quantus.RelevanceRankAccuracy, maps, masks)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_quantus_counts_empty_mask_as_hit_we_count_a_miss(quantus) -> None:
    maps = np.random.default_rng(4).random((1, 16, 16)).astype(np.float32)
    empty = np.zeros((1, 16, 16), dtype=bool)
    assert _quantus(quantus.PointingGame, maps, empty)[0] == 1.0  # Quantus 0.6.0 bug
    assert pointing_game(_t(maps), _t(empty)).item() == 0.0  # the study: a miss


# ----------------------------------------------------------------------------- 2. real masks
def test_copied_masks_have_the_documented_shapes(rois) -> None:
    assert len(rois) >= 8 and any(" " in n for n in rois)
    for name in EMPTY:
        assert not rois[name].any()
    assert rois[FULL].all()
    for name in ANTI_ALIASED:
        grey = _load_grey(name)
        assert ((grey > 0) & (grey < 255)).any()  # grey edges count as foreground
    for name in NONEMPTY:  # every non-empty mask is one filled rectangle
        t, b, left, r = _bbox(rois[name])
        assert (rois[name][t: b + 1, left: r + 1].all()
                and rois[name].sum() == (b - t + 1) * (r - left + 1))


def test_single_bright_pixel_inside_outside(rois) -> None:
    names = [n for n in NONEMPTY if n != FULL]
    maps = np.zeros((2 * len(names), SIDE, SIDE), dtype=np.float32)
    masks = np.stack([rois[n] for n in names for _ in range(2)])
    for i, name in enumerate(names):
        t, b, left, r = _bbox(rois[name])
        maps[2 * i, (t + b) // 2, (left + r) // 2] = 1.0  # centre of the box
        outside = np.argwhere(~rois[name])[0]
        maps[2 * i + 1, outside[0], outside[1]] = 1.0
    assert pointing_game(_t(maps), _t(masks)).tolist() == [1.0, 0.0] * len(names)
    # the zero background ties at the threshold: everything is kept, box = image, IoU = area
    area = masks.reshape(len(masks), -1).mean(1)
    for q in Q_LEVELS:
        for region in ("box", "pixel"):
            np.testing.assert_allclose(iou_at_q(_t(maps), _t(masks), q, region).numpy(), area,
                                       rtol=1e-6)


def test_iou_hand_computed_square_and_two_blobs(rois) -> None:
    # -Chebyshev distance from (100, 120): rings of equal value. q=5: k = int(50176*0.05) = 2508;
    # the 2509th largest lies on ring 25 (49^2 = 2401 < 2509 <= 51^2), so the kept set is the
    # 51x51 square rows 75..125, cols 95..145. q=10: k = 5017, ring 35 (69^2 < 5018 <= 71^2).
    one = -_chebyshev((100, 120)).astype(np.float32)
    # two cones at (40, 40) and (180, 180): q=5 keeps two 37x37 squares (2*35^2 = 2450 < 2509
    # <= 2*37^2); the ONE enclosing box spans rows/cols 22..198.
    two = -np.minimum(_chebyshev((40, 40)), _chebyshev((180, 180))).astype(np.float32)
    cases = [(one, 5, (75, 125, 95, 145)), (one, 10, (65, 135, 85, 155)),
             (two, 5, (22, 198, 22, 198))]
    masks = np.stack([rois[n] for n in NONEMPTY])
    for a, q, box in cases:
        kept = ref_kept(a, q, "box")
        assert _bbox(kept) == box  # the reference agrees with the hand computation
        got = iou_at_q(_t(np.stack([a] * len(masks))), _t(masks), q, "box").numpy()
        expected = [_rect_iou(box, _bbox(m)) for m in masks]
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"q={q}")
    # pixel region of the two blobs: exactly 2 * 37^2 kept pixels (ring 18 and inside)
    kept = two >= -18
    assert kept.sum() == 2 * 37**2 and (ref_kept(two, 5, "pixel") == kept).all()
    got = iou_at_q(_t(np.stack([two] * len(masks))), _t(masks), 5, "pixel").numpy()
    expected = [(kept & m).sum() / (kept | m).sum() for m in masks]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def _reference_maps(seed: int) -> np.ndarray:
    """Random continuous, random with many ties, constant, a smooth blob, a Chebyshev cone."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    blob = np.exp(-((yy - 60.0) ** 2 + (xx - 150.0) ** 2) / (2 * 25.0**2))
    return np.stack(
        [
            rng.random((SIDE, SIDE)),
            rng.integers(0, 20, size=(SIDE, SIDE)) / 19.0,
            np.full((SIDE, SIDE), 0.5),
            blob,
            -_chebyshev((150, 70)) / 224.0,
        ]
    ).astype(np.float32)


def test_iou_and_pointing_game_match_numpy_reference_on_all_masks(rois) -> None:
    base = _reference_maps(5)
    nb = len(base)
    maps = np.concatenate([base] * len(ROI_NAMES))
    masks = np.stack([rois[n] for n in ROI_NAMES for _ in range(nb)])
    tm, tk = _t(maps), _t(masks)
    for q in Q_LEVELS:
        for region in ("box", "pixel"):
            ours = iou_at_q(tm, tk, q, region).numpy()
            kept = [ref_kept(a, q, region) for a in base]  # the kept set ignores the mask
            ref = [(kept[i % nb] & m).sum() / (kept[i % nb] | m).sum() for i, m in enumerate(masks)]
            np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0, err_msg=f"q={q} {region}")
    for tol in (0.0, 15.0):
        grown = [ref_grow(rois[n], tol) for n in ROI_NAMES]
        ours = pointing_game(tm, tk, tolerance=tol).numpy()
        ref = [ref_pointing_game(a, grown[i // nb]) for i, a in enumerate(maps)]
        np.testing.assert_array_equal(ours, ref, err_msg=f"tolerance={tol}")


def test_empty_masks_score_zero_on_every_metric(rois) -> None:
    base = _reference_maps(6)[:3]  # random, many ties, constant
    for name in EMPTY:
        masks = _t(np.stack([rois[name]] * len(base)))
        for key, scores in _all_metrics(_t(base), masks).items():
            assert scores.tolist() == [0.0] * len(base), key


def test_full_image_mask_box_iou_is_one_for_random_map(rois) -> None:
    a = np.random.default_rng(7).random((SIDE, SIDE)).astype(np.float32)
    m = rois[FULL]
    for q in Q_LEVELS:
        assert ref_iou(a, m, q, "box") == 1.0
        assert iou_at_q(_t(a[None]), _t(m[None]), q, "box").item() == 1.0


def test_random_map_box_iou_equals_mask_area(rois) -> None:
    # As docs/metrics.md says: the enclosing box of a random top 5% already covers the whole image
    a = np.random.default_rng(8).random((SIDE, SIDE)).astype(np.float32)
    masks = np.stack([rois[n] for n in ROI_NAMES])
    maps = np.stack([a] * len(ROI_NAMES))
    area = masks.reshape(len(masks), -1).mean(1)
    for q in Q_LEVELS:
        np.testing.assert_allclose(iou_at_q(_t(maps), _t(masks), q, "box").numpy(), area, rtol=1e-6)


# ----------------------------------------------------------------------------- 3. map == mask
@pytest.mark.parametrize("name", NONEMPTY)
def test_map_equal_to_mask_scores_one(rois, name: str) -> None:
    m = rois[name]
    a = _t(m[None].astype(np.float32))
    tm = _t(m[None])
    assert pointing_game(a, tm).item() == 1.0
    assert relevance_mass(a, tm).item() == 1.0
    assert relevance_rank(a, tm).item() == 1.0
    frac = m.mean()
    for q in (5, 10):
        if frac > q / 100:  # k < |mask|: the threshold is 1, kept = mask, box = mask
            assert iou_at_q(a, tm, q, "box").item() == 1.0
    # pixel IoU while k = |mask| - 1 (q a hair below the mask's area) keeps exactly the mask
    q_area = 100 * (m.sum() - 0.5) / m.size
    assert iou_at_q(a, tm, q_area, "pixel").item() == 1.0
    # at q == area exactly, k = |mask|: the (k+1)-th largest is background -> all kept
    if not m.all():
        assert iou_at_q(a, tm, 100 * m.sum() / m.size, "pixel").item() == pytest.approx(frac)


@pytest.mark.parametrize("name", ANTI_ALIASED)
def test_anti_aliased_grey_map_scores_one(name: str) -> None:
    grey = _load_grey(name)
    a = _t((grey / 255.0)[None].astype(np.float32))
    tm = _t(grey[None])  # uint8 mask with grey edges: nonzero = inside
    assert pointing_game(a, tm).item() == 1.0
    assert relevance_mass(a, tm).item() == 1.0
    assert relevance_rank(a, tm).item() == 1.0


# ----------------------------------------------------------------------------- 4. tolerance
def test_tolerance_is_a_strict_disc() -> None:
    def score(peak: tuple[int, int], mask_px: tuple[int, int], tol: float) -> float:
        a = torch.zeros(1, 40, 40)
        a[0, peak[0], peak[1]] = 1.0
        m = torch.zeros(1, 40, 40, dtype=torch.bool)
        m[0, mask_px[0], mask_px[1]] = True
        return pointing_game(a, m, tolerance=tol).item()

    assert score((13, 14), (10, 10), 5.0) == 0.0  # distance exactly 5 (3-4-5): not < 5
    assert score((13, 14), (10, 10), 4.5 + 1.0) == 1.0  # 5 < 5.5
    assert score((12, 14), (10, 10), 5.0) == 1.0  # sqrt(20) = 4.47 < 5
    assert score((10, 11), (10, 10), 1.0) == 0.0  # adjacent pixel at distance 1: not < 1
    assert score((10, 11), (10, 10), 1.5) == 1.0
    assert score((10, 10), (10, 10), 0.5) == 1.0  # inside is always a hit
    assert score((10, 11), (10, 10), 0.0) == 0.0
    # TorchRay's 15 px
    assert score((0, 15), (0, 0), 15.0) == 0.0
    assert score((0, 14), (0, 0), 15.0) == 1.0
    assert score((9, 12), (0, 0), 15.0) == 0.0  # distance exactly 15 on a diagonal
    assert score((10, 11), (0, 0), 15.0) == 1.0  # sqrt(221) = 14.87
    assert score((39, 39), (39, 25), 15.0) == 1.0  # near the border: zero padding is harmless


def test_tolerance_matches_reference_on_random_maps() -> None:
    maps, masks = _random_batch(9, b=16, side=32)
    masks = masks & (np.random.default_rng(10).random(masks.shape) < 0.05)  # sparse, maybe empty
    for tol in (0.0, 1.0, 2.5, 4.0, 7.3):
        ours = pointing_game(_t(maps), _t(masks), tolerance=tol).numpy()
        ref = [ref_pointing_game(a, ref_grow(m, tol)) for a, m in zip(maps, masks, strict=True)]
        np.testing.assert_array_equal(ours, ref, err_msg=f"tolerance={tol}")


# ----------------------------------------------------------------------------- 5. edge cases
def test_constant_map_policies() -> None:
    maps = torch.full((2, 8, 8), 0.3)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 2:4] = True  # masks[1] empty
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0]  # "ties": hit iff mask non-empty
    assert pointing_game(maps, masks, constant="miss").tolist() == [0.0, 0.0]
    assert pointing_game(maps, masks, constant="nan").isnan().all()
    assert pointing_game(maps, masks, tolerance=15.0).tolist() == [1.0, 0.0]
    # IoU at q keeps every pixel of a constant map: box = image, IoU = area fraction
    for q in Q_LEVELS:
        assert iou_at_q(maps, masks, q).tolist() == [4 / 64, 0.0]
        assert iou_at_q(maps, masks, q, "pixel").tolist() == [4 / 64, 0.0]
    assert is_constant(maps).tolist() == [True, True]
    # non-constant maps are unaffected by the policy
    varied = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    for policy in ("miss", "nan"):
        assert torch.equal(pointing_game(varied, masks, constant=policy),
                           pointing_game(varied, masks))
    assert is_constant(varied).tolist() == [False, False]


def test_nan_map_scores_nan_on_every_metric() -> None:
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    maps[0, 3, 4] = math.nan
    maps[1] = math.nan
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:2, 2:9, 3:7] = True
    masks[2] = False
    masks[0] = False  # NaN outranks the empty-mask rule
    assert has_nan(maps).tolist() == [True, True, False]
    assert is_constant(maps).tolist() == [False, False, False]
    for key, scores in _all_metrics(maps, masks).items():
        assert scores[:2].isnan().all() and scores[2].item() == 0.0, key
    for policy in ("ties", "miss", "nan"):
        assert pointing_game(maps, masks, constant=policy)[:2].isnan().all()


def test_zero_sum_maps_and_relevance_rank_ties() -> None:
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:2, :4, :2] = True  # 8 of 64 pixels; masks[2] empty
    zero = torch.zeros(3, 8, 8)
    mass = relevance_mass(zero, masks)
    assert mass[:2].isnan().all() and mass[2].item() == 0.0
    # all pixels tie: expected share under random tie-breaking = area fraction
    assert relevance_rank(zero, masks).tolist() == [8 / 64, 8 / 64, 0.0]
    signed = torch.zeros(1, 8, 8)
    signed[0, 0, 0], signed[0, 7, 7] = 1.0, -1.0  # total 0 -> NaN, not inf
    assert relevance_mass(signed, masks[:1]).isnan().all()
    # hand-computed ties: k = 3, t = 2; one pixel above (outside), 3 tied of which 2 inside
    a = torch.tensor([[[3.0, 2.0, 2.0], [2.0, 1.0, 0.0]]])
    m = torch.tensor([[[0, 1, 0], [1, 1, 0]]], dtype=torch.uint8)
    assert relevance_rank(a, m).item() == pytest.approx((0 + (3 - 1) * 2 / 3) / 3)
    # the same by enumerating tie-break orders: pick 2 of the 3 tied pixels
    tied_inside = [1, 1, 0]
    pairs = [(0, 1), (0, 2), (1, 2)]
    mean_hits = np.mean([tied_inside[i] + tied_inside[j] for i, j in pairs])
    assert relevance_rank(a, m).item() == pytest.approx(mean_hits / 3)


def test_invalid_arguments_raise_config_error() -> None:
    maps = torch.rand(2, 8, 8)
    masks = torch.ones(2, 8, 8, dtype=torch.bool)
    with pytest.raises(ConfigError, match="ties.*miss.*nan"):
        pointing_game(maps, masks, constant="hit")
    for tolerance in (-1.0, math.inf, "15px"):
        with pytest.raises(ConfigError, match="tolerance"):
            pointing_game(maps, masks, tolerance=tolerance)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="box.*pixel"):
        iou_at_q(maps, masks, 5, region="blob")
    for q in (0, -5, 100.5, math.nan, "5"):
        with pytest.raises(ConfigError, match="0 < q <= 100"):
            iou_at_q(maps, masks, q)
    with pytest.raises(ConfigError, match="shape"):
        relevance_mass(maps, masks[:, :4])
    with pytest.raises(ConfigError, match=r"\(B, H, W\)"):
        relevance_rank(maps[0], masks[0])
    with pytest.raises(ConfigError, match="floating-point"):
        has_nan(torch.ones(2, 8, 8, dtype=torch.int64))
    assert iou_at_q(maps, masks, 100).tolist() == [1.0, 1.0]  # q = 100 keeps everything
    # NumPy / tensor scalars from configs and sweeps are fine
    assert torch.equal(iou_at_q(maps, masks, np.int64(5)), iou_at_q(maps, masks, 5.0))
    assert torch.equal(pointing_game(maps, masks, tolerance=np.float32(2)),
                       pointing_game(maps, masks, 2))


# ----------------------------------------------------------------------------- 6. batching, dtypes
def _edge_batch() -> tuple[torch.Tensor, torch.Tensor]:
    maps_np, masks_np = _random_batch(11, b=6, side=24)
    maps, masks = _t(maps_np), _t(masks_np)
    maps[1] = 0.7  # constant
    maps[2, 5, 5] = math.nan
    masks[3] = False  # empty
    maps[4] = torch.round(maps[4] * 2)  # heavy ties
    return maps, masks


def test_batched_equals_per_image() -> None:
    maps, masks = _edge_batch()
    batched = _all_metrics(maps, masks)
    singles = [_all_metrics(maps[i: i + 1], masks[i: i + 1]) for i in range(len(maps))]
    for key, scores in batched.items():
        assert scores.shape == (len(maps),) and scores.dtype == torch.float32
        joined = torch.cat([s[key] for s in singles])
        assert torch.equal(scores.isnan(), joined.isnan()), key
        assert torch.equal(scores.nan_to_num(-1.0), joined.nan_to_num(-1.0)), key


def test_mask_and_map_dtypes_are_accepted() -> None:
    maps, masks = _edge_batch()
    expected = _all_metrics(maps, masks)
    for mask_dtype in (torch.bool, torch.uint8, torch.int64, torch.float64, torch.float32):
        m = masks.to(mask_dtype) * (3 if mask_dtype != torch.bool else 1)  # any nonzero = inside
        got = _all_metrics(maps, m.bool() if mask_dtype == torch.bool else m)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], equal_nan=True, msg=key)
    got64 = _all_metrics(maps.double(), masks)
    for key in expected:
        assert got64[key].dtype == torch.float32
        torch.testing.assert_close(got64[key], expected[key], equal_nan=True, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    maps, masks = _edge_batch()
    cpu = _all_metrics(maps, masks)
    gpu = _all_metrics(maps.cuda(), masks.cuda())
    for key in cpu:
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], equal_nan=True, msg=key)
