"""The report's significance section, from the per-image records the evaluation runs write
(per_image.csv): which differences between methods and baselines are more than noise.

Per (dataset, init, metric), every method meets each baseline and every other method on the same
images (paired by checkpoint and image id: the evaluation jobs of one checkpoint share its
images): Wilcoxon's signed-rank test (Wilcoxon 1945), or the sign test (mid-p McNemar, Fagerland
et al. 2013) when every score is 0 or 1 (the pointing game); the matched-pairs rank-biserial
correlation (Kerby 2014) as effect size. Several checkpoints of a row (seeds) are combined as
xai_bench.stats.paired.paired_test_seeds states, and tested alone too. Holm's correction (Holm
1979) runs over each family: the combined comparisons of one (dataset, init, metric). The dagger
"not above the random baseline" is the corrected test against random where per-image records
exist. Across the grid: Friedman / Nemenyi ranks over the rows (Friedman 1937, Nemenyi 1963,
Demsar 2006), Kendall's tau between metrics (Kendall 1938). docs/statistics.md explains each.
The tests of one metric run batched (paired_batch); the same records give the table's
several-seed cells their hierarchical interval (seeds, then images).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xai_bench.report.eval_runs import EvalRun
from xai_bench.report.paired_batch import bootstrap_intervals, paired_tests, seed_cell_scores
from xai_bench.report.study_table import (
    StudyTable,
    mark_beats_random_by_test,
    set_seed_intervals,
)
from xai_bench.stats.agreement import ranking_agreement
from xai_bench.stats.paired import PairedTest, holm, is_binary
from xai_bench.stats.ranking import RankTest, friedman_nemenyi
from xai_bench.tracking.records import read_plain_config
from xai_bench.tracking.run_folder import run_of
from xai_bench.utils.errors import ConfigError

__all__ = ["NEEDS_ROWS", "Comparison", "Ranking", "Replicate", "Settings", "Significance",
           "analyse", "apply_dagger", "collect_replicates", "settings_from"]

Row = tuple[str, str]
# per_image.csv rounds to 6 decimals: its mean matches metrics.json's value far closer than this
_TOLERANCE = 1e-4
NEEDS_ROWS = "the ranking needs at least 2 grid rows (dataset, init) with every entry scored"


@dataclass(frozen=True)
class Settings:
    """conf/report.yaml `significance:`: the level of every test, the bootstrap's settings."""

    enabled: bool = True
    alpha: float = 0.05
    samples: int = 1000
    level: float = 0.95
    seed: int = 0


def settings_from(node: Mapping[str, Any] | None) -> Settings:
    """Settings from the config block (absent keys: the defaults); a clear error when invalid."""
    if node is not None and not isinstance(node, Mapping):
        raise ConfigError(f"significance={node}: a block of enabled, alpha, samples, level, seed "
                          "(e.g. significance.enabled=false).")
    values = {k: v for k, v in dict(node or {}).items() if v is not None}
    unknown = sorted(set(values) - set(Settings.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"significance: unknown key(s) {', '.join(unknown)}; "
                          "use enabled, alpha, samples, level, seed.")
    default = Settings()
    try:
        settings = Settings(bool(values.get("enabled", default.enabled)),
                            float(values.get("alpha", default.alpha)),
                            int(values.get("samples", default.samples)),
                            float(values.get("level", default.level)),
                            int(values.get("seed", default.seed)))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"significance: {err} (alpha, level: numbers in (0, 1); samples, "
                          "seed: integers).") from None
    for key in ("alpha", "level"):
        if not 0.0 < getattr(settings, key) < 1.0:
            raise ConfigError(f"significance.{key}={getattr(settings, key)}: must lie in (0, 1).")
    if settings.samples < 1:
        raise ConfigError(f"significance.samples={settings.samples}: must be a positive number "
                          "of bootstrap resamples.")
    return settings


@dataclass
class Replicate:
    """One checkpoint of a grid row (one training seed): image id -> score per (entry, metric)."""

    checkpoint: str
    seed: str
    values: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """One paired test: method `a` against `b` (a baseline or a later method) on one row and
    metric; `seed` None = every seed of the row combined (the one Holm corrects and the report
    shows), else that seed alone (report.csv only, corrected within its seed)."""

    dataset: str
    init: str
    metric: str
    a: str
    b: str
    b_kind: str
    seed: str | None
    test: PairedTest
    p_holm: float
    significant: bool
    direction: bool | None

    @property
    def row(self) -> Row:
        return self.dataset, self.init

    @property
    def better(self) -> str | None:
        """The significantly better entry (None for a metric without a better direction)."""
        if not self.significant or not self.test.mean_diff or self.direction is None:
            return None
        larger, smaller = (self.a, self.b) if self.test.mean_diff > 0 else (self.b, self.a)
        return larger if self.direction else smaller


@dataclass
class Ranking:
    """Friedman / Nemenyi of one metric over the grid rows, or why there is none."""

    metric: str
    result: RankTest | None
    message: str | None = None
    left_out: list[str] = field(default_factory=list)
    rows_dropped: int = 0


@dataclass
class Significance:
    """Everything the section shows; `figures` (metric -> CD PNG) is filled by the writer."""

    settings: Settings
    comparisons: list[Comparison]
    rankings: dict[str, Ranking]
    agreement: tuple[list[str], np.ndarray, np.ndarray] | None
    agreement_message: str | None
    binary: dict[str, bool]
    baselines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    _index: dict[tuple[Row, str, str, str], Comparison] = field(default_factory=dict, repr=False)

    def combined(self, metric: str, row: Row | None = None) -> list[Comparison]:
        return [c for c in self.comparisons if c.seed is None and c.metric == metric
                and (row is None or c.row == row)]

    def tested_rows(self, metric: str) -> list[Row]:
        return list(dict.fromkeys(c.row for c in self.combined(metric)))

    def find(self, row: Row, a: str, b: str, metric: str) -> tuple[Comparison, bool] | None:
        """The combined test of a against b in either order; True when stored as (b, a)."""
        if not self._index:
            self._index.update({(c.row, c.a, c.b, c.metric): c for c in self.comparisons
                                if c.seed is None})
        if (found := self._index.get((row, a, b, metric))) is not None:
            return found, False
        found = self._index.get((row, b, a, metric))
        return None if found is None else (found, True)


# ---------------------------------------------------------------------------------------------
# the per-image records


def _float(text: str | None) -> float:
    return float("nan") if text is None or text.strip() == "" else float(text)


def _read_per_image(path: Path, metrics: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """entry -> metric -> image id -> score, for the metrics that are columns of the file."""
    data: dict[str, dict[str, dict[str, float]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            entry, image = row.get("method"), row.get("id")
            if not entry or image is None:
                continue
            per_entry = data.setdefault(entry, {})
            for metric in metrics:
                if metric in row:
                    per_entry.setdefault(metric, {})[image] = _float(row[metric])
    return data


def _consistent(values: Mapping[str, float], stats: Any) -> bool | None:
    """Whether the per-image column is what the table shows (its mean is metrics.json's value;
    metrics aggregated otherwise, such as a ratio of sums, are not tested on it); None when
    there is nothing to compare (no finite score, or no value)."""
    expected = stats.get("value") if isinstance(stats, dict) else None
    scores = np.array(list(values.values()), dtype=float)
    scores = scores[np.isfinite(scores)]
    if expected is None or not math.isfinite(float(expected)) or scores.size == 0:
        return None if expected is None or scores.size == 0 else False
    return abs(float(scores.mean()) - float(expected)) <= _TOLERANCE * max(1.0, abs(expected))


def _seed_label(checkpoint: str) -> str | None:
    """The training seed of a checkpoint, when its training run's config is reachable."""
    cfg = read_plain_config(run_of(checkpoint)) if checkpoint else None
    seed = cfg.get("seed") if cfg else None
    return None if seed is None else str(seed)


def collect_replicates(runs: Sequence[EvalRun], metrics: Sequence[str]
                       ) -> tuple[dict[Row, list[Replicate]], list[str]]:
    """Row -> its checkpoints with their per-image scores, and notes on what was left out. A
    baseline is scored by every run of its checkpoint: the first run's scores are taken."""
    by_checkpoint: dict[tuple[Row, str], Replicate] = {}
    missing = unreadable = 0
    inconsistent: set[str] = set()
    for run in sorted(runs, key=lambda r: str(r.run_dir)):
        path = run.run_dir / "per_image.csv"
        if not path.is_file():
            missing += 1
            continue
        try:
            data = _read_per_image(path, metrics)
        except (OSError, ValueError, UnicodeDecodeError, csv.Error):
            unreadable += 1
            continue
        replicate = by_checkpoint.setdefault(((run.dataset, run.init), run.checkpoint),
                                             Replicate(run.checkpoint, ""))
        for entry, stats in [(run.method, run.metrics), *run.baselines.items()]:
            for metric, values in data.get(entry, {}).items():
                if (entry, metric) in replicate.values:
                    continue
                consistent = _consistent(values, stats.get(metric))
                if consistent:
                    replicate.values[(entry, metric)] = values
                elif consistent is False:
                    inconsistent.add(metric)
    rows: dict[Row, list[Replicate]] = {}
    for (row, _checkpoint), replicate in sorted(by_checkpoint.items()):
        rows.setdefault(row, []).append(replicate)
    for replicates in rows.values():
        labels = [_seed_label(r.checkpoint) for r in replicates]
        unique = len(set(labels)) == len(labels) and None not in labels
        for index, (replicate, label) in enumerate(zip(replicates, labels, strict=True)):
            replicate.seed = str(label) if unique else f"#{index + 1}"
    notes = []
    if missing or unreadable:
        notes.append(f"{missing + unreadable} evaluation run(s) without a readable "
                     "per_image.csv (older run folders): their cells are not tested, their "
                     "dagger is the point estimate.")
    if inconsistent:
        notes.append(f"{', '.join(sorted(inconsistent))}: the per-image column's mean is not the "
                     "reported value (another aggregate, or a file that does not match its "
                     "metrics.json), not tested.")
    return rows, notes


# ---------------------------------------------------------------------------------------------
# the paired tests


def _aligned(replicates: Sequence[Replicate], a: str, b: str, metric: str
             ) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Per seed holding both entries: the scores of a and b, aligned by image id across the
    seeds (the checkpoints of a row score the same test images; NaN where one has no score)."""
    held = [(r.seed, r.values[(a, metric)], r.values[(b, metric)]) for r in replicates
            if (a, metric) in r.values and (b, metric) in r.values]
    ids = sorted({i for _seed, va, vb in held for i in va.keys() & vb.keys()},
                 key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i))
    nan = float("nan")
    return ([seed for seed, *_ in held],
            [np.array([va.get(i, nan) for i in ids], dtype=float) for _s, va, _b in held],
            [np.array([vb.get(i, nan) for i in ids], dtype=float) for _s, _a, vb in held])


def _family(tests: Sequence[tuple[str, str, str | None, PairedTest]], table: StudyTable, row: Row,
            metric: str, alpha: float) -> list[Comparison]:
    """One Holm family: its tests with the corrected p-values."""
    if not tests:
        return []
    corrected = holm([t.p_value for *_, t in tests])
    return [Comparison(row[0], row[1], metric, a, b, table.kind(b), seed, test, float(p),
                       bool(p < alpha), table.direction(metric))
            for (a, b, seed, test), p in zip(tests, corrected, strict=True)]


# (a, b, seed or None, a's per-seed scores, b's): one comparison, paired_test_seeds' arguments
Job = tuple[str, str, str | None, list[np.ndarray], list[np.ndarray]]


def _row_jobs(replicates: Sequence[Replicate], table: StudyTable, metric: str
              ) -> list[list[Job]]:
    """The row's Holm families: the comparisons with the seeds combined, then (several seeds)
    each seed's alone."""
    methods = table.methods
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    pairs += [(a, b) for a in methods for b in table.baselines]
    combined: list[Job] = []
    per_seed: dict[str, list[Job]] = {}
    for a, b in pairs:
        seeds, xs, ys = _aligned(replicates, a, b, metric)
        if not seeds:
            continue
        combined.append((a, b, None, xs, ys))
        for seed, x, y in zip(seeds, xs, ys, strict=True) if len(seeds) > 1 else ():
            per_seed.setdefault(seed, []).append((a, b, seed, [x], [y]))
    return [combined, *per_seed.values()]


def _metric_tests(replicates: Mapping[Row, Sequence[Replicate]], table: StudyTable, metric: str,
                  binary: bool, settings: Settings) -> list[Comparison]:
    """Every family of one metric, row by row; the tests run in one batch (paired_batch: the
    same results as paired_test_seeds one comparison at a time)."""
    families = [(row, family) for row in table.rows
                for family in _row_jobs(replicates.get(row, []), table, metric)]
    tests = iter(paired_tests([(xs, ys) for _row, family in families for *_, xs, ys in family],
                              binary=binary, level=settings.level, samples=settings.samples,
                              seed=settings.seed))
    out: list[Comparison] = []
    for row, family in families:
        out += _family([(a, b, seed, next(tests)) for a, b, seed, _x, _y in family], table, row,
                       metric, settings.alpha)
    return out


def _seed_intervals(replicates: Mapping[Row, Sequence[Replicate]], table: StudyTable,
                    settings: Settings) -> dict[tuple[str, str, str, str], tuple[float, float]]:
    """The hierarchical bootstrap interval (seeds, then images) of each cell averaged over
    several runs whose per-image records match it (paired_batch.seed_cell_scores); the other
    cells keep the range across runs."""
    arrays: dict[tuple[str, str, str, str], np.ndarray] = {}
    for key, cell in table.cells.items():
        if cell.interval_rule == "range" and cell.value is not None:
            _seeds, xs, _ = _aligned(replicates.get(key[:2], []), key[2], key[2], key[3])
            if (values := seed_cell_scores(xs, cell.value, cell.n_runs, _TOLERANCE)) is not None:
                arrays[key] = values
    return bootstrap_intervals(arrays, level=settings.level, samples=settings.samples,
                               seed=settings.seed)  # type: ignore[return-value]


def _binary(replicates: Mapping[Row, Sequence[Replicate]], metric: str) -> bool:
    arrays = [np.array(list(v.values()), dtype=float) for reps in replicates.values()
              for r in reps for (_e, m), v in r.values.items() if m == metric]
    return bool(arrays) and is_binary(*arrays)


# ---------------------------------------------------------------------------------------------
# across the grid


def _grid_scores(table: StudyTable, metric: str, entries: Sequence[str]) -> np.ndarray:
    """(rows, entries): each cell's value (the mean over seeds), NaN where missing."""
    cells = [[table.cell(row, e, metric) for e in entries] for row in table.rows]
    return np.array([[np.nan if c is None or c.value is None else c.value for c in row]
                     for row in cells], dtype=float)


def _ranking(table: StudyTable, metric: str, alpha: float) -> Ranking:
    """Friedman / Nemenyi over the rows; entries scored on fewer than half the rows are left
    out (rather than losing every row they miss), then rows missing a kept entry are dropped."""
    direction = table.direction(metric)
    assert direction is not None
    entries = table.entries
    scores = _grid_scores(table, metric, entries)
    scored = np.isfinite(scores).sum(axis=0)
    keep = [i for i, count in enumerate(scored) if count >= max(2, len(table.rows) / 2)]
    left_out = [entries[i] for i in range(len(entries)) if i not in keep]
    scores = scores[:, keep]
    complete = int(np.isfinite(scores).all(axis=1).sum())
    ranking = Ranking(metric, None, left_out=left_out, rows_dropped=len(table.rows) - complete)
    if len(keep) < 2 and len(table.rows) >= 2:
        ranking.message = "the ranking needs at least 2 methods or baselines scored on 2 rows"
    elif complete < 2:
        ranking.message = f"{NEEDS_ROWS}; this sweep has {min(complete, len(table.rows))}"
    else:
        try:
            ranking.result = friedman_nemenyi(scores, [entries[i] for i in keep],
                                              higher_is_better=direction, alpha=alpha)
        except ConfigError as err:
            ranking.message = str(err)
    return ranking


def _agreement(table: StudyTable) -> tuple[tuple[list[str], np.ndarray, np.ndarray] | None,
                                           str | None]:
    """Kendall tau between the rankings of the methods (baselines aside) that two metrics give."""
    metrics = [m for m in table.metrics if table.direction(m) is not None]
    if len(table.methods) < 2 or len(metrics) < 2:
        return None, ("the agreement between metrics needs at least 2 methods and 2 metrics "
                      "with a better direction")
    scores = {m: _grid_scores(table, m, table.methods) for m in metrics}
    directions = {m: bool(table.direction(m)) for m in metrics}
    return ranking_agreement(scores, directions), None


# ---------------------------------------------------------------------------------------------
# the whole section


def analyse(runs: Sequence[EvalRun], table: StudyTable, settings: Settings) -> Significance:
    """The paired tests of every row and metric, the rankings and the agreement; the table's
    cells averaged over several seeds get their hierarchical interval from the same records."""
    replicates, notes = collect_replicates(runs, table.metrics)
    set_seed_intervals(table, _seed_intervals(replicates, table, settings))
    binary = {m: _binary(replicates, m) for m in table.metrics}
    comparisons: list[Comparison] = []
    for metric in table.metrics:
        comparisons += _metric_tests(replicates, table, metric, binary[metric], settings)
    rankings = {m: _ranking(table, m, settings.alpha) for m in table.metrics
                if table.direction(m) is not None}
    agreement, message = _agreement(table)
    return Significance(settings, comparisons, rankings, agreement, message, binary,
                        list(table.baselines), notes)


def apply_dagger(table: StudyTable, significance: Significance, runs: Sequence[EvalRun]) -> int:
    """Cell.beats_random from the corrected test against random: Holm p < alpha with the mean
    difference in the better direction. Only where every checkpoint behind the cell was tested
    (else the point estimate stays). Returns the number of cells decided by the test."""
    checkpoints: dict[tuple[str, str, str, str], set[str]] = {}
    for run in runs:
        for metric in run.metrics:
            checkpoints.setdefault((run.dataset, run.init, run.method, metric),
                                   set()).add(run.checkpoint)
    decided: dict[tuple[str, str, str, str], bool] = {}
    for c in significance.comparisons:
        if c.seed is not None or c.b != "random" or c.direction is None:
            continue
        key = (c.dataset, c.init, c.a, c.metric)
        if c.test.n_seeds < len(checkpoints.get(key, ())):
            continue  # a seed without per-image records: the point estimate decides
        sign = 1.0 if c.direction else -1.0
        decided[key] = c.significant and sign * c.test.mean_diff > 0
    mark_beats_random_by_test(table, decided, significance.settings.alpha)
    return len(decided)
