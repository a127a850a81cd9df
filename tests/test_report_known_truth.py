"""The report's known-truth section, on hand-made run folders with a planted truth: six models
whose reliance on the marker is 0, 0.2, 0.5, 0.8, 1, 1 (ViT and CNN, trained with rule lesion,
both or marker); gradcam's marker share rises with the reliance (faithful), attention's stays
at 0.05 on the ViTs (plausible, not faithful), hirescam's sits above 2/3 everywhere without
following the reliance (partly faithful), the baselines stay low. The section ranks and judges
them, writes its figure, csv rows, md / html / tex and W&B tables, says when there are too few
models, flags a baseline that comes out faithful, and is absent without known truth."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import run_cli

from xai_bench.report.html import write_html, write_plots
from xai_bench.report.known_truth import (
    FAITHFUL,
    NEEDS_MODELS,
    PARTLY,
    PLAUSIBLE,
    analyse_known_truth,
    model_kind,
    summary_sentences,
)
from xai_bench.report.known_truth_writers import write_known_truth_figure
from xai_bench.report.study import scan_sweep, study_table, sweep_facts
from xai_bench.report.writers import (
    LONG_COLUMNS,
    log_to_loggers,
    write_csv,
    write_markdown,
    write_tex,
)
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run
from xai_bench.utils.errors import ConfigError

IMAGES = 30  # with both cues (marker_share defined)
SINGLE = 10  # one cue only: marker_share empty
METRIC = "lesion_pointing_game"
BASELINES = ("random", "centre", "uniform")
# (arch, rule, strength, seed, reliance)
MODELS = (
    ("vit_tiny_patch16_224", "lesion", 0.9, 1, 0.0),
    ("resnet34", "both", 0.6, 1, 0.2),
    ("vit_tiny_patch16_224", "both", 0.8, 2, 0.5),
    ("resnet34", "both", 0.95, 2, 0.8),
    ("vit_tiny_patch16_224", "marker", 0.9, 3, 1.0),
    ("resnet34", "marker", 0.9, 3, 1.0),
)
HIRESCAM = (0.85, 0.7, 0.82, 0.72, 0.8, 0.78)  # above 2/3, not following the reliance


def _means(index: int, reliance: float, vit: bool, tracking_baseline: bool
           ) -> dict[str, float]:
    """entry -> the model's mean marker share (the planted truth)."""
    means = {"gradcam": 0.1 + 0.8 * reliance, "hirescam": HIRESCAM[index],
             "random": 0.2, "centre": 0.02, "uniform": 0.15}
    if vit:
        means["attention"] = 0.05 + 0.002 * (index % 3)
    if tracking_baseline:
        means["centre"] = 0.1 + 0.8 * reliance
    return means


def _stats(values: np.ndarray) -> dict[str, Any]:
    value = float(np.nanmean(values)) if np.isfinite(values).any() else None
    return {"value": value, "ci_low": None if value is None else value - 0.03,
            "ci_high": None if value is None else value + 0.03,
            "n": int(np.isfinite(values).sum()), "higher_is_better": None}


def _interval(value: float, n: int) -> dict[str, Any]:
    return {"value": value, "ci_low": max(value - 0.05, 0.0), "ci_high": min(value + 0.05, 1.0),
            "n": n}


def _model_runs(root: Path, index: int, model: tuple, known_truth: bool,
                tracking_baseline: bool) -> None:
    arch, rule, strength, seed, reliance = model
    vit = model_kind(arch) == "vit"
    train = root / "train" / f"{arch}-{rule}-{strength}-s{seed}"
    train.mkdir(parents=True)
    (train / "config.yaml").write_text(yaml.safe_dump({"task_name": "train", "seed": seed}))
    rng = np.random.default_rng(index)
    means = _means(index, reliance, vit, tracking_baseline)
    # per image around the mean; uniform: the marker's share of the two areas, the same images
    # (the decorrelated split is fixed) for every model
    noise = {e: 0.0 if e == "uniform" else 0.05 for e in means}
    shares = {e: np.concatenate([np.clip(m + rng.normal(0, noise[e], IMAGES), 0, 1),
                                 np.full(SINGLE, np.nan)]) for e, m in means.items()}
    shares = {e: np.round(v, 6) for e, v in shares.items()}
    pg = {e: (rng.random(IMAGES + SINGLE) < 0.6).astype(float) for e in means}
    methods = [e for e in ("gradcam", "hirescam", "attention") if e in means]
    run = root / "eval" / f"{train.name}-{'+'.join(methods)}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "task_name": "evaluate", "seed": 42, "ckpt": str(train),
        "dataset": {"name": "synthetic", "shortcut": {"enabled": True, "rule": rule,
                                                      "strength": strength}},
        "init": {"name": "random"}, "model": {"arch": arch},
        "logger": {"wandb": {"group": "kt"}}}))
    scores = {e: {"metrics": {"marker_share": _stats(shares[e]), METRIC: _stats(pg[e])},
                  "counts": {}} for e in means}
    summary: dict[str, Any] = {
        "method": None, "evaluated_methods": methods, "baselines": list(BASELINES),
        "methods": scores, "split": "decorrelated" if known_truth else "roi",
        "counts": {"images": IMAGES + SINGLE},
        "bootstrap": {"samples": 100, "level": 0.95, "seed": 0},
        "checkpoint": str(train / "checkpoints" / "best.ckpt"), "training_run": str(train)}
    if not vit:
        summary["skipped_methods"] = {"attention": "explains vit models only"}
    if known_truth:
        summary["known_truth"] = {
            "reliance": _interval(reliance, 20), "agree_accuracy": _interval(0.95, 20),
            "conflict_images": _interval(0.5, 40), "counts": {"conflict": 20, "agree": 20}}
    (run / "metrics.json").write_text(json.dumps(summary))
    with (run / "per_image.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "label", "pred", "method", "marker_share", METRIC,
                         "lesion", "marker", "follows_marker"])
        for entry in means:
            for i in range(IMAGES + SINGLE):
                share = shares[entry][i]
                writer.writerow([i, f"img{i}.png", 1, 1, entry,
                                 "" if math.isnan(share) else share, pg[entry][i],
                                 int(i < IMAGES or i % 2 == 0), int(i < IMAGES or i % 2 == 1),
                                 ""])


def make_sweep(root: Path, models: tuple = MODELS, known_truth: bool = True,
               tracking_baseline: bool = False) -> Path:
    for index, model in enumerate(models):
        _model_runs(root, index, model, known_truth, tracking_baseline)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("kt") / "sweep")


@pytest.fixture(scope="module")
def known(sweep: Path):
    return analyse_known_truth(scan_sweep(sweep).runs, samples=500)


# ---------------------------------------------------------------------------------------------
# reading the runs


def test_runs_carry_the_known_truth_and_the_training_condition(sweep: Path) -> None:
    scan = scan_sweep(sweep)
    assert len(scan.runs) == 3 * 3 + 2 * 3 and not scan.incomplete
    by_arch = {(r.arch, r.shortcut_rule, r.shortcut_strength, r.train_seed,
                r.known_truth["reliance"]["value"]) for r in scan.runs}
    assert by_arch == set(MODELS)
    assert {r.split for r in scan.runs} == {"decorrelated"}
    assert {r.seed for r in scan.runs} == {42}  # the evaluation's own seed, as before


def test_models_and_their_reliance(known) -> None:
    assert [(m.kind, m.rule, m.reliance.value) for m in known.models] == [
        ("cnn", "both", 0.2), ("cnn", "both", 0.8), ("cnn", "marker", 1.0),
        ("vit", "lesion", 0.0), ("vit", "both", 0.5), ("vit", "marker", 1.0)]
    assert len({m.label for m in known.models}) == 6
    assert known.models[0].label == "resnet34 both (0.6) s1"
    assert known.models[0].conflict == 20 and known.models[0].agree_accuracy.value == 0.95
    assert set(known.models[0].shares) == {"gradcam", "hirescam", *BASELINES}
    assert "attention" in known.models[-1].shares
    assert known.message is None


# ---------------------------------------------------------------------------------------------
# the planted truth comes out


def test_ranking_and_verdicts(known) -> None:
    # by verdict first (faithful, partly, plausible), then rho
    assert [(e.name, e.rank) for e in known.methods] == [("gradcam", 1), ("hirescam", 2),
                                                         ("attention", 3)]
    verdicts = {e.name: e.verdict for e in known.entries}
    assert verdicts == {"gradcam": FAITHFUL, "attention": PLAUSIBLE, "hirescam": PARTLY,
                        "random": PLAUSIBLE, "centre": PLAUSIBLE, "uniform": PLAUSIBLE}
    assert [e.name for e in known.baselines] == list(BASELINES)
    assert all(e.rank is None for e in known.baselines)


def test_correlations_per_model_kind(known) -> None:
    gradcam = known.entry("gradcam")
    assert set(gradcam.correlations) == {"vit", "cnn", "all"}
    pooled = gradcam.pooled
    assert pooled.n == 6 and pooled.rho == pytest.approx(1.0, abs=0.1) and pooled.above_zero
    assert pooled.exact and pooled.p_value < 0.05
    attention = known.entry("attention")  # evaluated on the ViTs only
    assert set(attention.correlations) == {"vit", "all"} and attention.pooled.n == 3
    assert known.entry("hirescam").pooled.rho < 0.5
    uniform = known.entry("uniform").pooled
    assert not uniform.defined and "y is the same for every pair" in uniform.reason


def test_flag_and_contrast(known) -> None:
    gradcam, attention = known.entry("gradcam").flag, known.entry("attention").flag
    assert gradcam.models == 2 and gradcam.images == IMAGES  # both cues only
    assert gradcam.fraction > 0.9 and gradcam.flagged and gradcam.p_holm >= gradcam.p_value
    assert attention.models == 1 and attention.fraction == 0 and not attention.flagged
    assert known.entry("hirescam").flag.flagged
    assert known.entry("gradcam").contrast == pytest.approx(0.8, abs=0.05)
    assert known.entry("attention").contrast == pytest.approx(0.0, abs=0.02)
    assert not any(e.flag.flagged for e in known.baselines)


def test_plain_language_summary(known) -> None:
    text = " ".join(summary_sentences(known))
    assert "6 models (3 ViT, 3 CNN" in text
    assert "faithful: marker share rises with the reliance and flags the marker-only models): " \
           "gradcam (rho" in text
    assert "plausible, not faithful: they would hide a shortcut): attention." in text
    assert "Partly faithful" in text and "hirescam" in text
    assert "Sanity check passed" in text


def test_a_baseline_that_comes_out_faithful_is_called_out(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep", tracking_baseline=True)
    known = analyse_known_truth(scan_sweep(root).runs, samples=200)
    assert known.entry("centre").verdict == FAITHFUL
    assert "Sanity check FAILED: the baseline(s) centre (faithful)" in " ".join(
        summary_sentences(known))


def test_too_few_models_says_so(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep", models=(MODELS[0], MODELS[4]))
    known = analyse_known_truth(scan_sweep(root).runs, samples=200)
    assert known.message == f"{NEEDS_MODELS} (found 2)"
    gradcam = known.entry("gradcam")
    assert not gradcam.pooled.defined and gradcam.verdict != FAITHFUL
    assert gradcam.flag.flagged and gradcam.contrast == pytest.approx(0.8, abs=0.05)
    md = _write(scan_sweep(root), known, tmp_path / "out")["md"].read_text()
    assert f"No correlation: {NEEDS_MODELS} (found 2)" in md


def test_three_models_in_perfect_order_are_no_proof(tmp_path: Path) -> None:
    """Every resample of 3 ordered models that varies has rho 1: the bootstrap interval is
    [1, 1], the exact permutation p 1/6. The verdict asks both: partly faithful."""
    root = make_sweep(tmp_path / "sweep", models=(MODELS[0], MODELS[2], MODELS[4]))
    known = analyse_known_truth(scan_sweep(root).runs, samples=200)
    gradcam = known.entry("gradcam")
    assert gradcam.pooled.above_zero and gradcam.pooled.p_value == pytest.approx(1 / 6)
    assert gradcam.flag.flagged and gradcam.verdict == PARTLY
    assert known.message is None


def test_a_model_without_marker_shares_is_left_out_and_said(tmp_path: Path) -> None:
    """An evaluation on the decorrelated split without metric=[known_truth]: its reliance is
    measured, its maps have no marker share."""
    root = make_sweep(tmp_path / "sweep")
    run = next(p.parent for p in (root / "eval").glob("resnet34-both-0.6-*/metrics.json"))
    summary = json.loads((run / "metrics.json").read_text())
    for entry in summary["methods"].values():
        del entry["metrics"]["marker_share"]
    (run / "metrics.json").write_text(json.dumps(summary))
    rows = list(csv.DictReader((run / "per_image.csv").open()))
    with (run / "per_image.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [c for c in rows[0] if c != "marker_share"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    known = analyse_known_truth(scan_sweep(root).runs, samples=200)
    gradcam = known.entry("gradcam")
    # 5 models keep a share: 3 ViTs, and 2 CNNs, too few for a rho of their own, so the
    # stratified "all" is the ViTs' alone
    assert len(known.models) == 6 and gradcam.correlations["cnn"].n == 2
    assert not gradcam.correlations["cnn"].defined
    assert gradcam.pooled.n == 3 and gradcam.pooled == gradcam.correlations["vit"]
    assert ("No marker_share (an evaluation without metric=[known_truth]): centre on 1 of 6 "
            "models, gradcam on 1 of 6 models") in known.notes[0]


# ---------------------------------------------------------------------------------------------
# the files and W&B


def _write(scan, known, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True)
    table = study_table(scan.runs, metrics=[METRIC])
    facts = sweep_facts(scan, table)
    if known is not None:
        write_known_truth_figure(known, out)
    plots = write_plots(table, out)
    return {"csv": write_csv(table, out / "report.csv", None, known),
            "md": write_markdown(table, facts, out / "report.md", known_truth=known),
            "tex": write_tex(table, facts, out / "report.tex", known_truth=known),
            "html": write_html(table, facts, out, plots, {}, known_truth=known)}


class _Logger:
    def __init__(self) -> None:
        self.tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
        self.images: dict[str, list[str]] = {}

    def log_table(self, key: str, columns: list[str], data: list[list[Any]]) -> None:
        self.tables[key] = (columns, data)

    def log_image(self, key: str, images: list[str], caption: list[str]) -> None:
        self.images[key] = images


def test_files_figure_and_logged_tables(sweep: Path, known, tmp_path: Path) -> None:
    scan = scan_sweep(sweep)
    files = _write(scan, known, tmp_path / "out")
    figure = tmp_path / "out" / "assets" / "known_truth" / "known_truth.png"
    assert known.figure == figure and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = list(csv.DictReader(files["csv"].open()))
    assert list(rows[0]) == list(LONG_COLUMNS)
    kt = [r for r in rows if r["section"] == "known_truth"]
    assert len(kt) == 3 + 2 + 3 + 3 * 3  # gradcam, attention (vit, all), hirescam, baselines
    top = next(r for r in kt if r["method"] == "gradcam" and r["group"] == "all")
    assert (top["verdict"], top["rank"], top["flagged"], top["n"]) == (FAITHFUL, "1", "true", "6")
    per_model = [r for r in rows if r["section"] == "known_truth_models"]
    assert len(per_model) == 6 * 5 + 3  # every model x entry; attention on the 3 ViTs
    assert {r["rule"] for r in per_model} == {"lesion", "both", "marker"}

    md = files["md"].read_text()
    assert "## Known truth" in md and "### Ranking by faithfulness" in md
    assert "![Marker share against reliance](assets/known_truth/known_truth.png)" in md
    ranking = md.split("### Ranking by faithfulness")[1].split("![")[0]
    assert ranking.index("| 1 | gradcam | faithful |") < ranking.index("| 2 | hirescam |")
    assert "random (baseline)" in ranking
    html_text = files["html"].read_text()
    assert "<h2>Known truth</h2>" in html_text
    assert 'src="assets/known_truth/known_truth.png"' in html_text
    tex = files["tex"].read_text()
    assert r"\includegraphics[width=\textwidth]{assets/known_truth/known_truth.png}" in tex
    assert r"\label{tab:known-truth}" in tex and "\\textbf{" in tex

    logger = _Logger()
    table = study_table(scan.runs, metrics=[METRIC])
    log_to_loggers([logger], table, {}, known_truth=known)
    columns, data = logger.tables["report/known_truth"]
    assert len(data) == len(kt) and "verdict" in columns and "section" not in columns
    assert len(logger.tables["report/known_truth_models"][1]) == len(per_model)
    assert logger.images["report/known_truth_plot"] == [str(figure)]


def test_no_section_without_known_truth(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep", models=MODELS[:3], known_truth=False)
    scan = scan_sweep(root)
    assert all(r.known_truth is None and r.shortcut_rule is None for r in scan.runs)
    assert analyse_known_truth(scan.runs) is None
    files = _write(scan, None, tmp_path / "out")
    assert "Known truth" not in files["md"].read_text()
    assert "Known truth" not in files["html"].read_text()
    assert "known_truth" not in {r["section"] for r in csv.DictReader(files["csv"].open())}
    logger = _Logger()
    log_to_loggers([logger], study_table(scan.runs, metrics=[METRIC]), {})
    assert not any("known_truth" in key for key in logger.tables)


@pytest.mark.slow
def test_cli_writes_the_section_and_the_wandb_tables(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep")
    # no metrics=...: the default table metrics are not in known-truth runs, their own are
    proc = run_cli(["xai_bench.report", f"sweep={root}", "print_config=false",
                    "significance.samples=100", "galleries=0"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = root / "report"
    md = (out / "report.md").read_text()
    assert "## Known truth" in md and "## lesion_pointing_game" in md
    assert (out / "assets" / "known_truth" / "known_truth.png").is_file()
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert {"known_truth", "known_truth_models"} <= {r["section"] for r in rows}
    run_dir = offline_run_dirs(out)[0]
    run = read_offline_run(run_dir)
    logged = {key for row in run.history for key in row}
    assert {"report/known_truth/_type", "report/known_truth_models/_type",
            "report/known_truth_plot/count"} <= logged
    tables = {p.name.rsplit("_", 2)[0]: json.loads(p.read_text())["data"]
              for p in run_dir.rglob("*.table.json")}
    assert len(tables["known_truth"]) == sum(r["section"] == "known_truth" for r in rows)


def test_flag_share_is_a_setting_and_checked(sweep: Path) -> None:
    """The bar a map's marker share must clear to flag a marker-only model is a setting: at 0.9
    the hand-made hirescam (near 0.8 there) no longer flags, gradcam (near 0.9) partly; a bar
    outside [0.5, 1) is refused."""
    runs = scan_sweep(sweep).runs
    strict = analyse_known_truth(runs, samples=100, flag_share=0.9)
    assert strict.flag_share == 0.9
    assert strict.entry("hirescam").flag.fraction < 0.1
    assert not strict.entry("hirescam").flag.flagged
    with pytest.raises(ConfigError, match="flag_share must lie in"):
        analyse_known_truth(runs, flag_share=0.3)
