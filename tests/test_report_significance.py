"""The report's significance section, on fake sweeps whose per_image.csv plant the answer: chefer
clearly above the random baseline (significant: no dagger), attention a hair above it (the point
estimate beats random, the corrected paired test does not: dagger), two seeds per row; the
batched tests equal the per-test path; three seeds: mean +- sd across seeds with the
hierarchical interval; the Friedman ranks and CD diagrams across rows, the agreement matrix,
report.csv's long form, the fallback for run folders without per-image records, and the CLI
with its W&B tables."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import run_cli
from omegaconf import OmegaConf
from scipy import stats

from xai_bench.report.html import write_html, write_plots
from xai_bench.report.paired_batch import paired_tests
from xai_bench.report.significance import (
    NEEDS_ROWS,
    Settings,
    _aligned,
    analyse,
    apply_dagger,
    collect_replicates,
    settings_from,
)
from xai_bench.report.significance_writers import metric_summary, write_cd_figures
from xai_bench.report.study import scan_sweep, study_table, sweep_facts
from xai_bench.report.writers import (
    LONG_COLUMNS,
    footnotes,
    metric_title,
    write_csv,
    write_markdown,
    write_tex,
)
from xai_bench.stats.paired import hierarchical_bootstrap, holm, paired_test, paired_test_seeds
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run
from xai_bench.utils.errors import ConfigError

METHODS = ("gradcam_study", "attention", "chefer")
BASELINES = ("random", "centre", "uniform")
METRICS = ("pointing_game", "iou@10")
ROWS = (("cp_child", "random"), ("cp_child", "dino"), ("kvasir", "random"))
IMAGES = 60
SETTINGS = Settings(samples=200)


def _scores(rng: np.random.Generator, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """entry -> metric -> per-image scores of one checkpoint. chefer: far above random;
    attention: random's scores with two misses turned into hits (mean above random, not
    significant); gradcam_study: below random; the seed shifts every score a little."""
    random_pg = (rng.random(IMAGES) < 0.5).astype(float)
    random_iou = rng.uniform(0.2, 0.4, IMAGES)
    attention_pg = random_pg.copy()
    attention_pg[np.flatnonzero(random_pg == 0)[:2]] = 1.0
    shift = 0.01 * seed
    out = {
        "random": {"pointing_game": random_pg, "iou@10": random_iou},
        "centre": {"pointing_game": (rng.random(IMAGES) < 0.45).astype(float),
                   "iou@10": rng.uniform(0.1, 0.3, IMAGES)},
        "uniform": {"pointing_game": np.ones(IMAGES), "iou@10": random_iou + 0.001},
        "chefer": {"pointing_game": (rng.random(IMAGES) < 0.97).astype(float),
                   "iou@10": random_iou + 0.25 + shift + rng.normal(0, 0.02, IMAGES)},
        "attention": {"pointing_game": attention_pg,
                      "iou@10": random_iou + rng.normal(0.001, 0.03, IMAGES)},
        "gradcam_study": {"pointing_game": (rng.random(IMAGES) < 0.3).astype(float),
                          "iou@10": random_iou - 0.08 - shift + rng.normal(0, 0.02, IMAGES)},
    }
    return {e: {m: np.round(v, 6) for m, v in metrics.items()} for e, metrics in out.items()}


def _stats(values: np.ndarray) -> dict[str, Any]:
    value = float(np.nanmean(values))
    return {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05,
            "n": int(np.isfinite(values).sum()), "higher_is_better": True}


def _eval_run(root: Path, train: Path, dataset: str, init: str, method: str,
              scores: dict[str, dict[str, np.ndarray]], per_image: bool) -> None:
    run = root / f"{dataset}-{init}-{method}-{train.name}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "task_name": "evaluate", "dataset": {"name": dataset}, "init": {"name": init},
        "method": {"name": method}, "model": {"arch": "vit_tiny_patch16_224"},
        "ckpt": str(train), "seed": 42, "logger": {"wandb": {"group": "g"}}}))
    entries = (method, *BASELINES)
    methods = {e: {"metrics": {m: _stats(scores[e][m]) for m in METRICS}, "counts": {}}
               for e in entries}
    (run / "metrics.json").write_text(json.dumps({
        "method": method, "baselines": list(BASELINES), "methods": methods,
        "counts": {"images": IMAGES}, "bootstrap": {"samples": 100, "level": 0.95, "seed": 0},
        "checkpoint": str(train / "checkpoints" / "best.ckpt"), "training_run": str(train)}))
    if not per_image:
        return
    with (run / "per_image.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "label", "pred", "method", *METRICS])
        for entry in entries:
            for i in range(IMAGES):
                writer.writerow([i, f"img{i}.png", 1, 1, entry,
                                 *(scores[entry][m][i] for m in METRICS)])


def make_sweep(root: Path, rows=ROWS, seeds=(1, 2), without_per_image=()) -> Path:
    """Every row x seed a training run; every method an evaluation run of each checkpoint."""
    rng = np.random.default_rng(0)
    for dataset, init in rows:
        for seed in seeds:
            train = root / "train" / f"{dataset}-{init}-s{seed}"
            train.mkdir(parents=True)
            (train / "config.yaml").write_text(yaml.safe_dump({"task_name": "train",
                                                               "seed": seed}))
            scores = _scores(rng, seed)
            for method in METHODS:
                _eval_run(root / "eval", train, dataset, init, method, scores,
                          (dataset, init) not in without_per_image)
    return root


def _analysed(root: Path, settings: Settings = SETTINGS):
    scan = scan_sweep(root)
    table = study_table(scan.runs, metrics=METRICS)
    significance = analyse(scan.runs, table, settings)
    apply_dagger(table, significance, scan.runs)
    return scan, table, significance


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory):
    return _analysed(make_sweep(tmp_path_factory.mktemp("sweep")))


# ---------------------------------------------------------------------------------------------
# the paired tests and the dagger


def test_planted_difference_is_significant_and_the_null_is_not(analysed) -> None:
    _scan, table, sig = analysed
    row = ("kvasir", "random")
    tests = {(c.a, c.b, c.metric): c for c in sig.combined("pointing_game", row)
             + sig.combined("iou@10", row)}
    chefer = tests[("chefer", "random", "pointing_game")]
    assert chefer.test.test == "sign" and chefer.test.n_seeds == 2 and chefer.test.n == IMAGES
    assert chefer.significant and chefer.better == "chefer" and chefer.test.mean_diff > 0.3
    assert tests[("chefer", "random", "iou@10")].test.test == "wilcoxon"
    assert tests[("chefer", "random", "iou@10")].significant
    attention = tests[("attention", "random", "pointing_game")]
    assert attention.test.mean_diff > 0 and not attention.significant and attention.better is None
    assert not tests[("attention", "random", "iou@10")].significant
    gradcam = tests[("gradcam_study", "chefer", "iou@10")]  # method vs method, a < b
    assert gradcam.significant and gradcam.better == "chefer" and gradcam.b_kind == "method"
    # the dagger: chefer none; attention's point estimate beats random, the test does not
    for metric in METRICS:
        cell = table.cell(row, "chefer", metric)
        assert cell.beats_random is True and cell.beats_random_rule == "test"
    att, rnd = table.cell(row, "attention", "pointing_game"), table.cell(row, "random",
                                                                         "pointing_game")
    assert att.value > rnd.value and att.beats_random is False
    assert att.beats_random_rule == "test" and table.alpha == 0.05
    assert "decided by the test" in footnotes(table)[1]


def _same(ours, expected) -> bool:
    """The same test (summation order aside: the report aligns images by id)."""
    return (ours.test == expected.test
            and astuple(ours)[1:] == pytest.approx(astuple(expected)[1:], rel=1e-9))


def test_tests_match_the_stats_functions_and_holm_runs_per_family(analysed) -> None:
    scan, table, sig = analysed
    row = ("cp_child", "dino")
    family = sig.combined("iou@10", row)
    assert len(family) == 3 + 3 * 3  # method pairs + methods x baselines
    assert [c.p_holm for c in family] == pytest.approx(list(holm([c.test.p_value
                                                                   for c in family])))
    # recompute chefer vs random from the files: per seed and combined
    per_seed = {}
    for run in scan.runs:
        if (run.dataset, run.init, run.method) == (*row, "chefer"):
            rows = list(csv.DictReader((run.run_dir / "per_image.csv").open()))
            per_seed[run.checkpoint] = [np.array([float(r["iou@10"]) for r in rows
                                                  if r["method"] == e]) for e in ("chefer",
                                                                                  "random")]
    pairs = [per_seed[k] for k in sorted(per_seed)]
    combined = paired_test_seeds([a for a, _ in pairs], [b for _, b in pairs], samples=200)
    found, flipped = sig.find(row, "chefer", "random", "iou@10")
    assert not flipped and _same(found.test, combined)
    seeds = [c for c in sig.comparisons if c.seed is not None and c.row == row
             and (c.a, c.b, c.metric) == ("chefer", "random", "iou@10")]
    assert [c.seed for c in seeds] == ["1", "2"]  # the training runs' seeds
    assert _same(seeds[0].test, paired_test(*pairs[0], samples=200))


def _identical(ours, expected) -> bool:
    """Bit for bit (NaN equal to NaN)."""
    return repr(astuple(ours)) == repr(astuple(expected))


def test_batched_tests_equal_the_per_test_path(analysed) -> None:
    """analyse runs a metric's tests in one batch (paired_batch); each equals paired_test_seeds
    (seeds combined) or paired_test (one seed) called on its own."""
    scan, table, sig = analysed
    replicates, _notes = collect_replicates(scan.runs, table.metrics)
    assert len(sig.comparisons) == 2 * 3 * 12 * 3  # metrics x rows x pairs x (combined + 2 seeds)
    for c in sig.comparisons:
        seeds, xs, ys = _aligned(replicates[c.row], c.a, c.b, c.metric)
        options = {"binary": sig.binary[c.metric], "samples": SETTINGS.samples}
        if c.seed is None:
            expected = paired_test_seeds(xs, ys, **options)
        else:
            i = seeds.index(c.seed)
            expected = paired_test(xs[i], ys[i], **options)
        assert _identical(c.test, expected), (c.row, c.a, c.b, c.metric, c.seed)


@pytest.mark.parametrize("binary", [False, True])
def test_paired_tests_batch_equals_one_call_each(binary: bool) -> None:
    """Shapes and paths mixed in one batch: exact Wilcoxon (n <= 50), sign flips (ties or zeros,
    n <= 13), the normal approximation, missing scores, 1-3 seeds, a comparison without pairs."""
    rng = np.random.default_rng(1)
    jobs = []
    for n in (8, 30, 60):
        for seeds in (1, 2, 3):
            for kind in ("plain", "zeros", "ties", "nan"):
                a, b = rng.uniform(size=(seeds, n)), rng.uniform(size=(seeds, n))
                if binary:
                    a, b = (a > 0.5).astype(float), (b > 0.4).astype(float)
                if kind == "zeros":
                    b[:, :3] = a[:, :3]
                elif kind == "ties":
                    a, b = np.round(a, 1), np.round(b, 1)
                elif kind == "nan":
                    a[0, 2] = b[-1, 5] = np.nan
                jobs.append((list(a), list(b)))
    jobs.append(([np.full(5, np.nan)], [np.ones(5)]))
    batched = paired_tests(jobs, binary=binary, samples=300, seed=3)
    for (xs, ys), test in zip(jobs, batched, strict=True):
        assert _identical(test, paired_test_seeds(xs, ys, binary=binary, samples=300, seed=3))


def test_three_seeds_show_mean_sd_and_the_hierarchical_interval(tmp_path: Path) -> None:
    """A cell of three seeds: mean +- sd across the seeds (numpy's std, ddof 1, of the per-seed
    values), its interval the hierarchical bootstrap of the same per-image records; a row
    without records keeps the range across runs, and the footnotes say which is which."""
    root = make_sweep(tmp_path / "sweep", rows=ROWS[:2], seeds=(1, 2, 3),
                      without_per_image=[ROWS[1]])
    scan, table, sig = _analysed(root)
    for entry in ("chefer", "random"):
        cell = table.cell(ROWS[0], "chefer" if entry == "chefer" else "random", "iou@10")
        runs = sorted((r for r in scan.runs if (r.dataset, r.init) == ROWS[0]
                       and (r.method == entry or entry == "random" and r.method == "chefer")),
                      key=lambda r: r.checkpoint)
        assert len(runs) == cell.n_runs == 3
        stats_of = [r.metrics if r.method == entry else r.baselines[entry] for r in runs]
        means = [s["iou@10"]["value"] for s in stats_of]
        assert cell.value == pytest.approx(np.mean(means))
        assert cell.sd == pytest.approx(np.std(means, ddof=1), rel=1e-12) and cell.sd > 0
        per_seed = []
        for run in runs:
            rows = list(csv.DictReader((run.run_dir / "per_image.csv").open()))
            per_seed.append(np.array([float(r["iou@10"]) for r in rows if r["method"] == entry]))
        expected = hierarchical_bootstrap(per_seed, level=SETTINGS.level,
                                          samples=SETTINGS.samples, seed=SETTINGS.seed)
        assert (cell.ci_low, cell.ci_high) == expected
        assert cell.interval_rule == "hierarchical" and cell.ci_low < cell.value < cell.ci_high
    fallback = table.cell(ROWS[1], "chefer", "iou@10")
    assert fallback.interval_rule == "range" and fallback.ci_low is None and fallback.sd > 0
    files = _write(scan, table, sig, tmp_path / "out")
    md = files["md"].read_text()
    cell = table.cell(ROWS[0], "chefer", "iou@10")
    assert (f"**{cell.value:.2f} \u00b1 {cell.sd:.2f}** [{cell.ci_low:.2f}, {cell.ci_high:.2f}]"
            in md)
    assert f"{fallback.value:.2f} \u00b1 {fallback.sd:.2f}** (3 runs: " in md
    notes = " ".join(footnotes(table))
    assert "standard deviation across runs" in notes
    assert "(12 cells): the interval is a hierarchical bootstrap" in notes
    assert "(12 cells): the range across the k runs is shown instead" in notes
    tex = files["tex"].read_text()
    assert rf"\textbf{{{cell.value:.2f} $\pm$ {cell.sd:.2f}}}" in tex
    assert "\u00b1" not in "\n".join(x for x in tex.splitlines() if not x.startswith("%"))
    assert f"{cell.value:.2f} \u00b1 {cell.sd:.2f}</strong>" in files["html"].read_text()
    rows = [r for r in csv.DictReader(files["csv"].open()) if r["section"] == "table"]
    chefer = next(r for r in rows if (r["dataset"], r["init"], r["method"], r["metric"])
                  == (*ROWS[0], "chefer", "iou@10"))
    assert (float(chefer["sd"]), float(chefer["ci_low"]), chefer["interval_rule"],
            chefer["n_runs"]) == (pytest.approx(cell.sd), cell.ci_low, "hierarchical", "3")
    assert {r["interval_rule"] for r in rows} == {"hierarchical", "range"}


def test_runs_without_per_image_records_fall_back_to_the_point_estimate(tmp_path: Path) -> None:
    root = make_sweep(tmp_path, rows=ROWS[:2], without_per_image=[ROWS[1]])
    _scan, table, sig = _analysed(root)
    assert sig.tested_rows("pointing_game") == [ROWS[0]]
    att = table.cell(ROWS[1], "attention", "pointing_game")
    assert att.beats_random is True and att.beats_random_rule == "point"
    note = footnotes(table)[1]
    assert "by the test for 6 cells" in note and "by the point estimate for 6 cells" in note
    assert any("without a readable per_image.csv" in n for n in sig.notes)


# ---------------------------------------------------------------------------------------------
# across the grid


def _cell_scores(table, metric: str, entries) -> np.ndarray:
    return np.array([[table.cell(r, e, metric).value for e in entries] for r in table.rows])


def test_friedman_ranks_and_kendall_agreement_across_rows(analysed) -> None:
    _scan, table, sig = analysed
    ranking = sig.rankings["iou@10"].result
    assert ranking.methods == table.entries and ranking.n_blocks == 3
    scores = _cell_scores(table, "iou@10", table.entries)
    expected = stats.rankdata(-scores, axis=1).mean(axis=0)
    assert ranking.avg_ranks == pytest.approx(expected)
    assert ranking.chi2 == pytest.approx(stats.friedmanchisquare(*scores.T).statistic)
    metrics, tau, n = sig.agreement
    assert metrics == list(METRICS) and n[0, 1] == 3
    pg, iou = (_cell_scores(table, m, table.methods) for m in METRICS)
    taus = [stats.kendalltau(pg[r], iou[r]).statistic for r in range(3)]
    assert tau[0, 1] == pytest.approx(np.mean(taus)) and tau[0, 0] == 1.0
    summary = metric_summary(sig, "pointing_game")
    assert "Above the random baseline (corrected p < 0.05): " in summary
    assert "chefer in 3 of 3 rows" in summary and "attention in 0 of 3 rows" in summary
    assert "attention vs chefer: chefer better in 3 of 3 rows" in summary
    assert "best average rank: chefer" in metric_summary(sig, "iou@10")


def _write(scan, table, sig, out: Path) -> dict[str, Path]:
    out.mkdir()
    facts = sweep_facts(scan, table)
    write_cd_figures(sig, out, metric_title)
    return {"csv": write_csv(table, out / "report.csv", sig),
            "md": write_markdown(table, facts, out / "report.md", scan.incomplete, 2, (), sig),
            "tex": write_tex(table, facts, out / "report.tex", scan.incomplete, 2, (), sig),
            "html": write_html(table, facts, out, write_plots(table, out), {}, scan.incomplete,
                               2, (), sig)}


def test_section_in_md_tex_html_and_csv_long_form(analysed, tmp_path: Path) -> None:
    scan, table, sig = analysed
    out = tmp_path / "out"
    files = _write(scan, table, sig, out)
    md = files["md"].read_text()
    assert md.index("## Significance") < md.index("## Notes")
    assert "### Agreement between metrics" in md and "| pointing_game | +1.00 |" in md
    assert "![Critical-difference diagram: Pointing game](assets/significance/" in md
    assert ("| dataset | init | method | vs gradcam_study | vs attention | vs chefer | vs random "
            "| vs centre | vs uniform |") in md
    line = next(x for x in md.splitlines() if x.startswith("| kvasir | random | chefer |"))
    assert "**+0.4" in line or "**+0.5" in line  # chefer - gradcam_study, significant, bold
    attention = next(x for x in md.splitlines() if x.startswith("| kvasir | random | attention |"))
    assert attention.split(" | ")[6].startswith("+0.0")  # vs random: not bold
    tex = files["tex"].read_text()
    assert tex.count(r"\begin{tikzpicture}") == 2 and tex.count(r"\begin{figure}") == 2
    assert tex.count("{") == tex.count("}") and r"\label{tab:agreement}" in tex
    assert re.search(r"(?<![\\$])<", tex) is None  # p < 0.001 in math mode
    page = files["html"].read_text()
    pngs = re.findall(r'src="(assets/significance/[^"]+\.png)"', page)
    assert len(pngs) == 2 and all((out / p).stat().st_size > 1000 for p in pngs)
    assert "<h2>Significance</h2>" in page and "<strong>" in page

    rows = list(csv.DictReader(files["csv"].open()))
    assert tuple(rows[0]) == LONG_COLUMNS
    sections = [r["section"] for r in rows]
    paired = [r for r in rows if r["section"] == "paired"]
    assert sections.count("table") == 3 * 6 * 2 and len(paired) == 3 * 2 * 12
    assert sections.count("paired_seed") == 2 * len(paired)
    assert sections.count("friedman") == 2 * 6 and sections.count("nemenyi") == 2 * 15
    assert sections.count("agreement") == 2
    chefer = next(r for r in paired if (r["dataset"], r["init"], r["metric"], r["method"],
                                        r["versus"]) == ("kvasir", "random", "pointing_game",
                                                         "chefer", "random"))
    assert (chefer["test"], chefer["n"], chefer["n_seeds"], chefer["significant"],
            chefer["better"], chefer["versus_kind"]) == ("sign", "60", "2", "true", "chefer",
                                                         "baseline")
    assert float(chefer["p_holm"]) >= float(chefer["p_value"])
    cell = next(r for r in rows if r["section"] == "table" and r["method"] == "attention")
    assert cell["beats_random_rule"] == "test"


def test_one_grid_row_says_the_ranking_needs_two(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep", rows=ROWS[:1], seeds=(1,))
    scan, table, sig = _analysed(root)
    assert all(c.test.n_seeds == 1 for c in sig.comparisons)
    assert not any(c.seed for c in sig.comparisons)
    assert sig.rankings["pointing_game"].result is None
    assert NEEDS_ROWS in sig.rankings["pointing_game"].message
    files = _write(scan, table, sig, tmp_path / "out")
    md = files["md"].read_text()
    assert f"T{NEEDS_ROWS[1:]}; this sweep has 1." in md
    assert "tikzpicture" not in files["tex"].read_text()
    assert not (tmp_path / "out" / "assets" / "significance").exists()


def test_a_metric_without_direction_is_tested_but_not_ranked(tmp_path: Path) -> None:
    scan = scan_sweep(make_sweep(tmp_path, rows=ROWS[:2], seeds=(1,)))
    table = study_table(scan.runs, metrics=METRICS)
    assert "decided by the point estimate" in footnotes(table)[1]  # significance disabled
    table.higher_is_better["iou@10"] = None  # as a metric declaring no direction would
    sig = analyse(scan.runs, table, SETTINGS)
    apply_dagger(table, sig, scan.runs)
    assert len(sig.combined("iou@10")) == 2 * 12 and "iou@10" not in sig.rankings
    assert all(c.better is None for c in sig.combined("iou@10"))
    assert table.cell(ROWS[0], "chefer", "iou@10").beats_random_rule != "test"  # no dagger test
    summary = metric_summary(sig, "iou@10")
    assert summary.startswith("No better direction") and "No ranking: the metric has no" in summary
    assert "chefer vs attention" not in summary and "attention vs chefer: a significant" in summary
    assert sig.agreement is None and "at least 2 methods and 2 metrics" in sig.agreement_message


def test_settings_are_checked(compose_cfg) -> None:
    cfg = compose_cfg("sweep=s", "significance.alpha=0.01", config_name="report")
    assert settings_from(OmegaConf.to_container(cfg.significance)) == Settings(alpha=0.01)
    assert settings_from(None) == Settings()
    assert settings_from({"alpha": 0.01, "samples": 50}) == Settings(alpha=0.01, samples=50)
    with pytest.raises(ConfigError, match=r"significance.alpha=1.5: must lie in \(0, 1\)"):
        settings_from({"alpha": 1.5})
    with pytest.raises(ConfigError, match="unknown key"):
        settings_from({"alpah": 0.1})
    with pytest.raises(ConfigError, match="samples=0"):
        settings_from({"samples": 0})


# ---------------------------------------------------------------------------------------------
# the command


@pytest.mark.slow
def test_cli_writes_the_section_and_the_wandb_tables(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep", rows=ROWS[:2])
    proc = run_cli(["xai_bench.report", f"sweep={root}", "print_config=false",
                    "metrics=[pointing_game,iou@10]", "significance.samples=100"],
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = root / "report"
    assert "## Significance" in (out / "report.md").read_text()
    assert len(list((out / "assets" / "significance").glob("cd_*.png"))) == 2
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert {r["section"] for r in rows} == {"table", "paired", "paired_seed", "friedman",
                                             "nemenyi", "agreement"}
    run_dir = offline_run_dirs(out)[0]
    run = read_offline_run(run_dir)
    logged = {key for row in run.history for key in row}
    assert {"report/significance/_type", "report/friedman/_type", "report/agreement/_type",
            "report/cd/count"} <= logged
    tables = {p.name.rsplit("_", 2)[0]: json.loads(p.read_text())["data"]
              for p in run_dir.rglob("*.table.json")}
    assert len(tables["significance"]) == sum(r["section"].startswith("paired") for r in rows)
    assert len(tables["table"]) == sum(r["section"] == "table" for r in rows)
    assert len(tables["agreement"]) == 2
