"""Many paired tests and seed intervals at once, for the report's significance section.

A study's report runs thousands of paired tests (16 grid rows x 5 metrics x 12 comparisons, each
also per seed: about 3,800 with 3 seeds), and one test is mostly fixed cost: a bootstrap and a
scipy call of about 10 ms. The comparisons that share a shape (the same number of seeds and
images, every score present or not) run instead as the rows of one array through
xai_bench.stats.paired.compare_rows and bootstrap_rows. bootstrap_rows draws its resamples from
its seed and the array's shape only, so every row gets the draws a call of its own would get:
the results are those of paired_test_seeds / hierarchical_bootstrap called once per comparison,
bit for bit (tests/test_report_significance.py checks equality).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from xai_bench.stats.paired import (
    PairedTest,
    bootstrap_rows,
    compare_rows,
    paired_test_seeds,
    seed_averages,
)

__all__ = ["bootstrap_intervals", "paired_tests", "seed_cell_scores"]

Arrays = Sequence[np.ndarray]


@dataclass(frozen=True)
class _Pair:
    """One comparison after paired_test_seeds' preparation (the same operations, so the same
    floats): images without a pair in any seed dropped."""

    d: np.ndarray  # (seeds, images): a - b, NaN where a seed lacks the pair
    image_d: np.ndarray  # per image: the difference averaged over the seeds holding the pair
    mean_a: float
    mean_b: float


def _prepare(xs: Arrays, ys: Arrays) -> _Pair | None:
    """The comparison's arrays; None when no image has a pair, or the arrays do not line up
    (paired_test_seeds answers those: the empty result, or the error)."""
    arrays = [np.asarray(x, dtype=np.float64) for x in (*xs, *ys)]
    if not xs or len(xs) != len(ys) or any(x.ndim != 1 or x.size != arrays[0].size
                                           for x in arrays):
        return None
    a, b = np.stack(arrays[:len(xs)]), np.stack(arrays[len(xs):])
    both = np.isfinite(a) & np.isfinite(b)
    keep = both.any(axis=0)
    if not keep.any():
        return None
    a, b, both = a[:, keep], b[:, keep], both[:, keep]
    d = np.where(both, a - b, np.nan)
    image_d, image_a, image_b = seed_averages(d, a, b, both)
    return _Pair(d, image_d, float(image_a.mean()), float(image_b.mean()))


def _groups(keys: Mapping[Hashable, Hashable]) -> list[list[Hashable]]:
    """The items sharing a key, in first-seen order."""
    groups: dict[Hashable, list[Hashable]] = {}
    for item, key in keys.items():
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def bootstrap_intervals(arrays: Mapping[Hashable, np.ndarray], *, level: float, samples: int,
                        seed: int) -> dict[Hashable, tuple[float, float]]:
    """key -> bootstrap_rows' interval of one (seeds, images) array, batched by shape: the
    arrays of one shape and NaN pattern kind (all finite or not: bootstrap_rows takes another
    path for each) form one call."""
    shapes = {k: (*a.shape, bool(np.isfinite(a).all())) for k, a in arrays.items()}
    out: dict[Hashable, tuple[float, float]] = {}
    for keys in _groups(shapes):
        low, high = bootstrap_rows(np.stack([arrays[k] for k in keys]), level=level,
                                   samples=samples, seed=seed)
        out.update({k: (float(lo), float(hi)) for k, lo, hi in zip(keys, low, high, strict=True)})
    return out


def seed_cell_scores(xs: Arrays, value: float, n_runs: int, tolerance: float
                     ) -> np.ndarray | None:
    """A table cell's per-seed scores (aligned by image; images scored in no seed dropped) for
    its hierarchical interval: hierarchical_bootstrap(xs) is bootstrap_intervals of this array.
    None when they are not the cell's: not one array per run averaged into it (a run without
    records, two runs of one checkpoint), or their per-seed means do not average to its value
    (within tolerance x max(1, |value|))."""
    if not xs or len(xs) != n_runs:
        return None
    values = np.stack([np.asarray(x, dtype=np.float64) for x in xs])
    values = values[:, np.isfinite(values).any(axis=0)]
    finite = np.isfinite(values)
    if not finite.any(axis=1).all():
        return None
    means = np.where(finite, values, 0.0).sum(axis=1) / finite.sum(axis=1)
    return values if abs(float(means.mean()) - value) <= tolerance * max(1.0, abs(value)) else None


def paired_tests(jobs: Sequence[tuple[Arrays, Arrays]], *, binary: bool, level: float = 0.95,
                 samples: int = 1000, seed: int = 0) -> list[PairedTest]:
    """paired_test_seeds(xs, ys, binary=binary, level=..., samples=..., seed=...) for every
    (xs, ys) job (per-seed arrays aligned by image), in order; the tests of the jobs with the
    same number of images share one compare_rows call, the intervals one bootstrap per shape."""
    out: list[PairedTest | None] = [None] * len(jobs)
    pairs: dict[int, _Pair] = {}
    for i, (xs, ys) in enumerate(jobs):
        pair = _prepare(xs, ys)
        if pair is None:
            out[i] = paired_test_seeds(xs, ys, binary=binary, level=level, samples=samples,
                                       seed=seed)
        else:
            pairs[i] = pair
    tests: dict[int, tuple[float, float, float]] = {}
    for keys in _groups({i: p.d.shape[1] for i, p in pairs.items()}):
        stat, p, effect = compare_rows(np.stack([pairs[i].image_d for i in keys]), binary)
        tests.update({i: (float(s), float(q), float(e))
                      for i, s, q, e in zip(keys, stat, p, effect, strict=True)})
    intervals = bootstrap_intervals({i: p.d for i, p in pairs.items()}, level=level,
                                    samples=samples, seed=seed)
    for i, pair in pairs.items():
        stat, p, effect = tests[i]
        low, high = intervals[i]
        out[i] = PairedTest(
            test="sign" if binary else "wilcoxon", n=int(pair.d.shape[1]), mean_a=pair.mean_a,
            mean_b=pair.mean_b, mean_diff=float(pair.image_d.mean()), ci_low=low, ci_high=high,
            statistic=stat, p_value=p, effect_size=effect, n_seeds=int(pair.d.shape[0]))
    return [t for t in out if t is not None]
