"""The known-truth variants of the synthetic dataset: each rule's decision holds on generated
data, and the decorrelated split sets the two cues against each other (docs/known-truth.md).

The marker rule reads the pixels (the marker's pure white square in its corner); the lesion rule
reads the lesion mask, and a test shows the mask is exactly where a lesion was painted (an image
differs from its lesion-free twin iff it has one), so "the label follows the rule" is a property
of what a model sees, not of bookkeeping arrays."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from xai_bench.data import SyntheticDataModule, generate_synthetic
from xai_bench.data.synthetic import _MARKER_RGB
from xai_bench.utils.errors import ConfigError

SIZE = 48
MARKER = 4


def _shortcut(rule: str, strength: float = 0.9) -> dict:
    return {"enabled": True, "rule": rule, "strength": strength, "size": MARKER,
            "position": "corner"}


def marker_rule(images: np.ndarray) -> np.ndarray:
    """1 where the corner window is the marker's pure white (no tissue pixel is that white)."""
    margin = max(1, round(0.03 * SIZE))
    window = images[:, margin:margin + MARKER, margin:margin + MARKER]
    return (window == _MARKER_RGB).all(axis=(1, 2, 3)).astype(np.int64)


def lesion_rule(samples: object) -> np.ndarray:
    """1 where the image has lesion pixels (its mask is not empty)."""
    return samples.masks.reshape(len(samples), -1).any(axis=1).astype(np.int64)


@pytest.fixture(scope="module", params=["lesion", "marker", "both_0.9", "both_1.0"])
def variant(request: pytest.FixtureRequest) -> tuple[str, float, object, object]:
    rule, _, strength = request.param.partition("_")
    spec = _shortcut(rule, float(strength or 0.9))
    train = generate_synthetic(600, SIZE, seed=5, shortcut=spec)
    decorrelated = generate_synthetic(400, SIZE, seed=6, shortcut=spec, decorrelated=True)
    return rule, float(strength or 0.9), train, decorrelated


def test_rule_classifiers_read_the_truth(variant) -> None:
    """The rules agree with the generator's own record of each cue, image by image."""
    _, _, train, decorrelated = variant
    for samples in (train, decorrelated):
        np.testing.assert_array_equal(marker_rule(samples.images), samples.markers)
        np.testing.assert_array_equal(lesion_rule(samples), samples.lesions)


def test_lesion_mask_marks_painted_lesions() -> None:
    """Rule lesion plants its marker independently of the label, so positive_fraction=0 gives
    every image's lesion-free twin: the pixels differ iff the image has a lesion, nearly all of
    its mask's pixels change, and every visible change (> 8 / 255) lies within 3 px of the mask
    (the lesion's soft edge and rim)."""
    spec = _shortcut("lesion")
    samples = generate_synthetic(200, SIZE, seed=8, shortcut=spec)
    twins = generate_synthetic(200, SIZE, seed=8, positive_fraction=0.0, shortcut=spec)
    change = np.abs(samples.images.astype(int) - twins.images.astype(int)).max(axis=-1)
    np.testing.assert_array_equal((change > 0).any(axis=(1, 2)), samples.lesions)
    mask = samples.masks.astype(bool)
    assert (change > 0)[mask].mean() > 0.99
    near = np.stack([binary_dilation(m, iterations=3) for m in mask])
    assert not (change > 8)[~near].any()


def _binomial_ok(accuracy: float, p: float, n: int) -> bool:
    return abs(accuracy - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_each_rule_decides_its_variant(variant) -> None:
    """A perfect classifier of the variant's rule scores 1; the other cue sits at its odds:
    1/2 (lesion / marker rules), `strength` (rule both)."""
    rule, strength, train, _ = variant
    by_marker = (marker_rule(train.images) == train.labels).mean()
    by_lesion = (lesion_rule(train) == train.labels).mean()
    n = len(train)
    if rule == "marker":
        assert by_marker == 1.0 and _binomial_ok(by_lesion, 0.5, n)
        # lesions appear in both classes at equal odds
        for cls in (0, 1):
            assert _binomial_ok(train.lesions[train.labels == cls].mean(), 0.5,
                                int((train.labels == cls).sum()))
    else:
        assert by_lesion == 1.0
        expected = 0.5 if rule == "lesion" else strength
        assert by_marker == 1.0 if expected == 1.0 else _binomial_ok(by_marker, expected, n)


def test_decorrelated_split_is_a_balanced_two_by_two(variant) -> None:
    """Every cell of (lesion, marker) holds a quarter of the images (any prefix of 4k too), the
    rule's own classifier scores 1 and the other rule exactly chance."""
    rule, _, _, dec = variant
    cells = dec.lesions.astype(int) * 2 + dec.markers.astype(int)
    assert np.bincount(cells, minlength=4).tolist() == [100] * 4
    assert np.bincount(cells[:40], minlength=4).tolist() == [10] * 4
    by_marker = (marker_rule(dec.images) == dec.labels).mean()
    by_lesion = (lesion_rule(dec) == dec.labels).mean()
    own, other = (by_marker, by_lesion) if rule == "marker" else (by_lesion, by_marker)
    assert own == 1.0 and other == 0.5
    conflict = dec.lesions != dec.markers
    assert conflict.mean() == 0.5


def test_marker_and_lesion_never_overlap(variant) -> None:
    _, _, train, dec = variant
    for samples in (train, dec):
        assert not (samples.masks.astype(bool) & samples.shortcut_masks.astype(bool)).any()


def test_rule_both_is_the_old_shortcut() -> None:
    """Configs written before the rules existed generate the same data (rule both is the
    default; without a marker nothing changed at all)."""
    old = {"enabled": True, "strength": 0.8, "size": MARKER, "position": "corner"}
    a = generate_synthetic(50, 32, seed=3, shortcut=old)
    b = generate_synthetic(50, 32, seed=3, shortcut={**old, "rule": "both"})
    for field in ("images", "labels", "masks", "shortcut_masks", "markers", "lesions"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    plain = generate_synthetic(50, 32, seed=3)
    np.testing.assert_array_equal(plain.labels, a.labels)
    np.testing.assert_array_equal(plain.lesions, plain.labels.astype(bool))


def test_bad_rule_and_decorrelated_without_marker_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="shortcut.rule must be one of"):
        generate_synthetic(4, 32, seed=0, shortcut=_shortcut("ruler"))
    with pytest.raises(ConfigError, match="needs dataset.shortcut.enabled=true"):
        generate_synthetic(4, 32, seed=0, decorrelated=True)


def _datamodule(**kwargs: object) -> SyntheticDataModule:
    settings = {"img_size": 32, "num_train": 8, "num_val": 8, "num_test": 8,
                "num_decorrelated": 12, "batch_size": 4, **kwargs}
    return SyntheticDataModule(**settings)


def test_datamodule_serves_the_decorrelated_split() -> None:
    dm = _datamodule(shortcut=_shortcut("marker"))
    batch = next(iter(dm.eval_dataloader("decorrelated")))
    assert batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["has_mask"].tolist() == [False, True, False, True]  # lesion: odd index
    assert batch["marker_mask"].flatten(1).any(1).tolist() == [False, False, True, True]
    assert batch["label"].tolist() == [0, 0, 1, 1]  # rule marker: the marker decides
    assert len(dm.eval_dataloader("decorrelated").dataset) == 12
    assert dm.image_name("decorrelated", 3) == "decorrelated/00003"
    # its own seed: no image shared with the test split
    test_images = dm.generate("test").images
    assert not any((img == test_images).all(axis=(1, 2, 3)).any()
                   for img in dm.generate("decorrelated").images)


def test_decorrelated_split_needs_a_marker() -> None:
    with pytest.raises(ConfigError, match="roi, test, val for dataset synthetic"):
        _datamodule().eval_dataloader("decorrelated")
    with pytest.raises(ConfigError, match="num_decorrelated"):
        _datamodule(shortcut=_shortcut("lesion"), num_decorrelated=0)
