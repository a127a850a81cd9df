"""The study report: collecting an evaluation sweep, the aggregated table (best marks, beats-random
flags, seeds averaged, published numbers), the csv/md/tex/html files and the CLI with W&B."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli
from PIL import Image

from xai_bench.report.html import copy_galleries, write_html, write_plots
from xai_bench.report.study import EvalRun, scan_sweep, study_table, sweep_facts
from xai_bench.report.trust import read_trust, write_trust_csv
from xai_bench.report.writers import footnotes, write_csv, write_markdown, write_tex
from xai_bench.tracking.records import MetaEvaluationRecord, read_plain_config
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run
from xai_bench.utils.errors import ConfigError

QS = (5, 10, 20, 40)
GROUP = "study-sweep"
# pointing game per (dataset, init) and method; iou@q = pg / 2 + q / 1000 (see _method_metrics)
PG = {
    ("cp_child", "random"): {"gradcam_study": 0.40, "attention": 0.70, "chefer": 0.60},
    # a tie for best
    ("cp_child", "dino"): {"gradcam_study": 0.80, "attention": 0.65, "chefer": 0.80},
    ("kvasir", "random"): {"gradcam_study": 0.30, "attention": 0.58, "chefer": 0.90},
    ("kvasir", "dino"): {"gradcam_study": 0.55, "attention": 0.75, "chefer": 0.50},
}
# the random baseline's pointing game per dataset; IoU of random and uniform maps = the ROI area
RANDOM_PG = {"cp_child": 0.50, "kvasir": 0.58}
ROI_AREA = {"cp_child": 0.431, "kvasir": 0.588}
ACCURACY = {("cp_child", "random", 1): 0.90, ("cp_child", "random", 2): 0.80,
            ("cp_child", "dino", 1): 0.95, ("kvasir", "random", 1): 0.70,
            ("kvasir", "dino", 1): 0.88}


def _stats(value: float) -> dict[str, Any]:
    return {"value": value, "ci_low": round(value - 0.05, 6), "ci_high": round(value + 0.05, 6),
            "n": 50}


def _method_metrics(pg: float) -> dict[str, Any]:
    return {"pointing_game": _stats(pg),
            **{f"iou@{q}": _stats(round(pg / 2 + q / 1000, 6)) for q in QS},
            "relevance_mass": _stats(0.3)}


def _baseline_metrics(dataset: str, seed: int) -> dict[str, dict[str, Any]]:
    # another checkpoint, another draw
    random_pg = RANDOM_PG[dataset] + (0.04 if seed == 2 else 0.0)
    area = ROI_AREA[dataset]
    return {
        "random": {"pointing_game": _stats(random_pg), **{f"iou@{q}": _stats(area) for q in QS}},
        "centre": {"pointing_game": _stats(0.45), **{f"iou@{q}": _stats(0.2) for q in QS}},
        "uniform": {"pointing_game": _stats(1.0), **{f"iou@{q}": _stats(area) for q in QS}},
    }


def _png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (shade, 0, 0)).save(path)


def _training_run(root: Path, dataset: str, init: str, seed: int) -> Path:
    run = root / "train" / f"{dataset}-{init}-s{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump({"task_name": "train", "dataset": {"name": dataset}}))
    (run / "metrics.json").write_text(
        json.dumps({"best_epoch": 3, "test": {"acc": ACCURACY[(dataset, init, seed)]}}))
    return run


def _eval_run(root: Path, number: int, dataset: str, init: str, method: str, pg: float,
              seed: int = 1) -> Path:
    train = root / "train" / f"{dataset}-{init}-s{seed}"
    run = root / f"{number}_{dataset}-{init}-{method}-s{seed}"
    run.mkdir(parents=True)
    config = {"task_name": "evaluate", "dataset": {"name": dataset}, "init": {"name": init},
              "method": {"name": method}, "model": {"arch": "vit_base_patch16_224"},
              "ckpt": str(train),
              "logger": {"wandb": {"group": GROUP}}, "run_name": run.name, "seed": 42}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    methods = {method: {"metrics": _method_metrics(pg), "counts": {}}}
    methods.update({b: {"metrics": m, "counts": {}}
                    for b, m in _baseline_metrics(dataset, seed).items()})
    metrics = {"method": method, "baselines": ["random", "centre", "uniform"], "methods": methods,
               "counts": {"images": 50, "with_mask": 50},
               "bootstrap": {"samples": 1000, "level": 0.95, "seed": 0},
               "checkpoint": str(train / "checkpoints" / "best.ckpt"), "training_run": str(train)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows = [{"id": i, "image": f"test/img {i}.png", "label": 1, "pred": 1, "method": m,
             "pointing_game": 1, "iou@10": 0.5} for m in methods for i in range(3)]
    with (run / "per_image.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for m in methods:
        for i in range(3):
            _png(run / "overlays" / m / f"{i:06d}.png", 40 * i)
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 datasets x 2 inits x 3 methods, a second seed of one, a failed job, training runs."""
    root = tmp_path / "sweep"
    for dataset, init, seed in ACCURACY:
        _training_run(root, dataset, init, seed)
    number = 0
    for (dataset, init), methods in PG.items():
        for method, pg in methods.items():
            _eval_run(root, number, dataset, init, method, pg)
            number += 1
    _eval_run(root, number, "cp_child", "random", "attention", 0.80, seed=2)
    failed = root / f"{number + 1}_kvasir-dino-rollout"
    failed.mkdir()
    (failed / "config.yaml").write_text(yaml.safe_dump({"task_name": "evaluate",
                                                        "method": {"name": "rollout"}}))
    (failed / "error.txt").write_text("Traceback (most recent call last):\n"
                                      "RuntimeError: CUDA out of memory\n")
    (root / ".submitit").mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def _meta_row(column: str, space: str, nr: str, ar: str, verdict: str) -> dict[str, Any]:
    return {"metric": column.split("@")[0], "column": column, "higher_is_better": True,
            "space": space, "IAC_NR": 0.9, "IEC_NR": 0.8, "IAC_AR": 0.2 if ar == "fail" else 0.7,
            "IEC_AR": None, "MC": 0.6, "images_nr": 8, "images_ar": 8, "NR": nr, "AR": ar,
            "verdict": verdict}


def _meta_run(root: Path, name: str = "meta") -> Path:
    """A meta-evaluation run folder as python -m xai_bench.meta_evaluate writes it."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"task_name": "meta_evaluate", "dataset": {"name": "kvasir"}, "init": {"name": "dino"},
         "model": {"arch": "vit_tiny_patch16_224"}}))
    rows = [_meta_row("pointing_game", "model", "pass", "fail", "fail"),
            _meta_row("pointing_game", "input", "pass", "pass", "fail"),
            _meta_row("relevance_mass", "model", "pass", "pass", "pass"),
            _meta_row("relevance_mass", "input", "pass", "pass", "pass"),
            _meta_row("aopc@16", "model", "pass", "n/a", "n/a")]
    MetaEvaluationRecord(checkpoint="x.ckpt", training_run="x", methods=["gradcam", "random"],
                         images=8, draws=2, spaces=["model", "input"], seconds=3.0,
                         trusted=["relevance_mass"], rows=rows).write(run)
    _png(run / "plots" / "aopc.png", 10)
    _png(run / "plots" / "pointing_game.png", 20)
    return run


def _table(sweep: Path, **kwargs: Any):
    scan = scan_sweep(sweep)
    return scan, study_table(scan.runs, **kwargs)


# ---------------------------------------------------------------------------------------------
# collecting and aggregating


def test_collect_finds_eval_runs_and_reports_the_rest(sweep: Path) -> None:
    scan = scan_sweep(sweep)
    assert len(scan.runs) == 13
    assert ({(r.dataset, r.init, r.method) for r in scan.runs}
            == {(d, i, m) for (d, i), ms in PG.items() for m in ms})
    assert [s.run_dir.name for s in scan.incomplete] == ["13_kvasir-dino-rollout"]
    assert scan.incomplete[0].reason == "failed: RuntimeError: CUDA out of memory"
    assert len(scan.other) == 5 and all(s.reason == "task_name: train" for s in scan.other)
    run = next(r for r in scan.runs if r.run_dir.name.startswith("0_"))
    assert (run.dataset, run.init, run.method, run.arch) == ("cp_child", "random", "gradcam_study",
                                                             "vit_base_patch16_224")
    assert run.accuracy == 0.90 and run.best_epoch == 3 and run.group == GROUP and run.images == 50
    assert set(run.baselines) == {"random", "centre", "uniform"}
    assert run.metrics["pointing_game"]["value"] == 0.40
    assert [p.name for p in run.overlays("centre")] == ["000000.png", "000001.png", "000002.png"]


def test_collect_skips_report_folders_and_the_excluded_output(sweep: Path) -> None:
    old = sweep / "old_report"
    shutil.copytree(sweep / "0_cp_child-random-gradcam_study-s1", old / "assets" / "copy")
    (old / "config.yaml").write_text(yaml.safe_dump({"task_name": "report"}))
    shutil.copytree(sweep / "0_cp_child-random-gradcam_study-s1", sweep / "report" / "copy")
    scan = scan_sweep(sweep, exclude=[sweep / "report"])
    assert len(scan.runs) == 13 and len(scan.other) == 5
    assert len(scan_sweep(sweep).runs) == 14


def test_report_config_composes(compose_cfg) -> None:
    cfg = compose_cfg("sweep=some/sweep", config_name="report")
    assert cfg.task_name == "report" and cfg.out == "some/sweep/report" and cfg.compare is None
    assert cfg.compare_iou == "mean" and list(cfg.metrics) == ["pointing_game", "iou@5", "iou@10",
                                                               "iou@20", "iou@40"]
    assert cfg.galleries == 4 and cfg.group is None
    wandb = cfg.logger.wandb
    assert (wandb.job_type, wandb.name, list(wandb.tags), wandb.group) == ("report", "report",
                                                                           ["report"], None)
    assert compose_cfg("sweep=s", "logger=none", config_name="report").get("logger") in (None, {})


def test_table_order_values_best_and_beats_random(sweep: Path) -> None:
    _, table = _table(sweep)
    assert table.rows == [("cp_child", "random"), ("cp_child", "dino"), ("kvasir", "random"),
                          ("kvasir", "dino")]
    assert table.methods == ["gradcam_study", "attention", "chefer"]
    assert table.baselines == ["random", "centre", "uniform"]
    assert table.metrics == ["pointing_game", "iou@5", "iou@10", "iou@20", "iou@40"]

    def cell(row: tuple[str, str], entry: str, metric: str = "pointing_game"):
        c = table.cell(row, entry, metric)
        assert c is not None
        return c

    g = cell(("cp_child", "dino"), "gradcam_study")
    assert (g.value, g.ci_low, g.ci_high, g.n, g.n_runs) == (0.80, 0.75, 0.85, 50, 1)
    # best: ties all marked; baselines never
    assert [cell(("cp_child", "dino"), m).best for m in table.methods] == [True, False, True]
    assert [cell(("kvasir", "random"), m).best for m in table.methods] == [False, False, True]
    assert not cell(("cp_child", "dino"), "uniform").best
    # beats random: strictly above (kvasir attention 0.58 == random 0.58 does not)
    assert ([cell(("kvasir", "random"), m).beats_random for m in table.methods]
            == [False, False, True])
    assert [cell(("kvasir", "dino"), m).beats_random for m in table.methods] == [False, True, False]
    assert cell(("kvasir", "dino"), "centre").beats_random is None
    # IoU: methods below the ROI area a random map reaches
    iou = cell(("kvasir", "random"), "chefer", "iou@40")
    assert iou.value == pytest.approx(0.49) and iou.beats_random is False
    assert cell(("kvasir", "random"), "random", "iou@40").value == 0.588
    assert table.accuracy == {("cp_child", "random"): pytest.approx(0.85),
                              ("cp_child", "dino"): 0.95, ("kvasir", "random"): 0.70,
                              ("kvasir", "dino"): 0.88}


def test_seeds_are_averaged_and_baselines_taken_once_per_checkpoint(sweep: Path) -> None:
    _, table = _table(sweep)
    row = ("cp_child", "random")
    attention = table.cell(row, "attention", "pointing_game")
    assert attention.value == pytest.approx(0.75) and attention.n_runs == 2
    assert (attention.runs_min, attention.runs_max) == (0.70, 0.80)
    assert attention.ci_low is None and attention.best and attention.beats_random
    # 4 runs of 2 checkpoints: the random baseline is the mean of the 2 checkpoints' values
    random = table.cell(row, "random", "pointing_game")
    assert random.value == pytest.approx(0.52) and random.n_runs == 2
    assert table.cell(row, "uniform", "iou@5").n_runs == 2
    assert table.cell(("kvasir", "dino"), "random", "pointing_game").n_runs == 1
    assert table.averaged


def test_metrics_selection_and_missing_metrics(sweep: Path) -> None:
    _, table = _table(sweep, metrics=("relevance_mass", "aopc_morf@16"))
    assert table.metrics == ["relevance_mass"]
    assert table.baselines == ["random", "centre", "uniform"]
    assert table.cell(("cp_child", "dino"), "random", "relevance_mass") is None
    assert table.notes == ["aopc_morf@16: no run has this metric, left out."]


def test_compare_study_puts_published_numbers_beside_ours(sweep: Path) -> None:
    _, table = _table(sweep, compare="study")
    row = ("cp_child", "random")
    assert table.metrics[-1] == "iou@mean"
    pg = [table.cell(row, m, "pointing_game").published for m in table.methods]
    assert pg == [0.64, 0.96, 0.54]
    iou = [table.cell(row, m, "iou@mean").published for m in table.methods]
    assert iou == [0.36, 0.45, 0.33]
    attention = table.cell(row, "attention", "iou@mean")
    assert attention.value == pytest.approx(0.75 / 2 + 0.01875)
    assert attention.delta == pytest.approx(0.39375 - 0.45)
    assert table.cell(row, "attention", "iou@5").published is None
    assert table.cell(row, "random", "pointing_game").published is None
    assert table.cell(("kvasir", "dino"), "chefer", "pointing_game").published == 0.90

    _, by_max = _table(sweep, compare="study", compare_iou="max")
    cell = by_max.cell(row, "chefer", "iou@max")
    assert cell.value == pytest.approx(0.34) and cell.published == 0.33

    _, at_q = _table(sweep, compare="study", compare_iou="iou@10")
    assert at_q.metrics == ["pointing_game", "iou@5", "iou@10", "iou@20", "iou@40"]
    assert at_q.cell(row, "gradcam_study", "iou@10").published == 0.36
    assert at_q.cell(row, "gradcam_study", "iou@20").published is None

    _, plain = _table(sweep)
    assert all(c.published is None for c in plain.cells.values())


def test_compare_errors(sweep: Path) -> None:
    scan = scan_sweep(sweep)
    with pytest.raises(ConfigError, match="compare=paper: unknown"):
        study_table(scan.runs, compare="paper")
    with pytest.raises(ConfigError, match="compare_iou=iou@15"):
        study_table(scan.runs, compare="study", compare_iou="iou@15")
    with pytest.raises(ConfigError, match=r"metrics=\['iou@7'\]: none is in the evaluation runs; "
                                          r"they have iou@10,"):
        study_table(scan.runs, metrics=["iou@7"])


def test_directions_declared_by_the_metrics_decide_best_and_dagger(sweep: Path) -> None:
    """A column declared lower-is-better flips the marks; one declared without a direction
    (an auxiliary column such as completeness/gap's sign-free parts) gets neither bold nor
    dagger, instead of the name's guess."""
    for folder in sweep.iterdir():
        path = folder / "metrics.json"
        if folder.name[0].isdigit() and path.is_file():
            data = json.loads(path.read_text())
            for entry in data["methods"].values():
                pg = entry["metrics"]["pointing_game"]
                entry["metrics"]["lower_pg"] = {**pg, "higher_is_better": False}
                entry["metrics"]["neutral_pg"] = {**pg, "higher_is_better": None}
            path.write_text(json.dumps(data))
    scan, table = _table(sweep, metrics=["pointing_game", "lower_pg", "neutral_pg"])
    row = ("kvasir", "random")
    assert table.cell(row, "chefer", "pointing_game").best
    assert table.cell(row, "gradcam_study", "lower_pg").best  # 0.30: the lowest
    assert table.cell(row, "chefer", "lower_pg").beats_random is False
    neutral = [table.cell(r, m, "neutral_pg") for r in table.rows for m in table.methods]
    assert all(c is not None and not c.best and c.beats_random is None for c in neutral)
    notes = " ".join(footnotes(table))
    assert "lower_pg (lower is better)" in notes and "neutral_pg: no direction" in notes


def test_published_gradcam_falls_back_to_our_gradcam(tmp_path: Path) -> None:
    stats = _method_metrics(0.5)
    runs = [EvalRun(tmp_path, "duke", "sup", "gradcam", "vit", stats, {}, checkpoint="a")]
    table = study_table(runs, compare="study")
    assert table.baselines == []
    cell = table.cell(("duke", "sup"), "gradcam", "pointing_game")
    assert cell.published == 0.00 and cell.delta == pytest.approx(0.5) and cell.beats_random is None


# ---------------------------------------------------------------------------------------------
# files


def _write_all(sweep: Path, out: Path, **kwargs: Any) -> dict[str, Path]:
    scan, table = _table(sweep, **kwargs)
    out.mkdir()
    facts = sweep_facts(scan, table)
    plots = write_plots(table, out)
    galleries = copy_galleries(scan.runs, table, out, 2)
    return {"csv": write_csv(table, out / "report.csv"),
            "md": write_markdown(table, facts, out / "report.md", scan.incomplete),
            "tex": write_tex(table, facts, out / "report.tex", scan.incomplete),
            "html": write_html(table, facts, out, plots, galleries, scan.incomplete)}


def test_csv_long_format(sweep: Path, tmp_path: Path) -> None:
    files = _write_all(sweep, tmp_path / "out", compare="study")
    rows = list(csv.DictReader(files["csv"].open()))
    # the table's columns, then the significance section's (tests/test_report_significance.py)
    assert list(rows[0])[:21] == ["dataset", "init", "method", "kind", "metric", "value", "sd",
                                  "ci_low", "ci_high", "interval_rule", "n", "n_runs",
                                  "runs_min", "runs_max", "best", "beats_random", "published",
                                  "delta", "accuracy", "beats_random_rule", "section"]
    assert {r["section"] for r in rows} == {"table"}  # no significance given
    assert len(rows) == 4 * 6 * 6  # rows x (3 methods + 3 baselines) x (5 metrics + iou@mean)
    first = rows[0]
    assert (first["dataset"], first["init"], first["method"], first["kind"], first["metric"]) == (
        "cp_child", "random", "gradcam_study", "method", "pointing_game")
    assert ((float(first["value"]), float(first["ci_low"]), first["n"], first["n_runs"])
            == (0.40, 0.35, "50", "1"))
    assert (first["sd"], first["interval_rule"]) == ("", "images")
    attention = next(r for r in rows if (r["init"], r["method"], r["metric"])
                     == ("random", "attention", "pointing_game"))
    assert (float(attention["sd"]) == pytest.approx(0.0707107, abs=1e-6)
            and attention["interval_rule"] == "range" and attention["ci_low"] == "")
    assert ((first["best"], first["beats_random"], float(first["published"]))
            == ("false", "false", 0.64))
    assert (float(first["delta"]) == pytest.approx(-0.24)
            and float(first["accuracy"]) == pytest.approx(0.85))
    uniform = next(r for r in rows if r["method"] == "uniform" and r["metric"] == "pointing_game")
    assert ((uniform["kind"], uniform["best"], uniform["beats_random"], uniform["published"])
            == ("baseline", "", "", ""))


def test_markdown(sweep: Path, tmp_path: Path) -> None:
    text = _write_all(sweep, tmp_path / "out", compare="study")["md"].read_text()
    assert "- **evaluation runs**: 13 complete, 1 incomplete (skipped)" in text
    assert "- **images per evaluation**: 50" in text
    assert "- **bootstrap**: 95% percentile intervals over images, 1000 resamples" in text
    assert f"- **W&B group**: {GROUP}" in text
    assert ("## Pointing game" in text and "## IoU (top 5%)" in text
            and "## IoU (mean over q)" in text)
    header = ("| dataset | init | test acc. | gradcam_study | attention | chefer | "
              "random (baseline) | centre (baseline) | uniform (baseline) |")
    assert header in text
    assert ("| cp_child | random | 0.85 | 0.40† [0.35, 0.45] (pub. 0.64) | "
            "**0.75 ± 0.07** (2 runs: 0.70–0.80) (pub. 0.96) | "
            "0.60 [0.55, 0.65] (pub. 0.54) | 0.52 ± 0.03 (2 runs: 0.50–0.54) | "
            "0.45 ± 0.00 (2 runs: 0.45–0.45) | 1.00 ± 0.00 (2 runs: 1.00–1.00) |") in text
    # no significance section: no per-image records tested, the range across the runs
    assert "(20 cells): the range across the k runs is shown instead of an interval" in text
    assert ("| kvasir | dino | 0.88 | 0.55† [0.50, 0.60] (pub. 0.72) | "
            "**0.75** [0.70, 0.80] (pub. 0.96) |") in text
    assert "13_kvasir-dino-rollout (failed: RuntimeError: CUDA out of memory)" in text
    assert "†: not above the random baseline" in text


def test_tex_fragments(sweep: Path, tmp_path: Path) -> None:
    text = _write_all(sweep, tmp_path / "out")["tex"].read_text()
    assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 5
    assert text.count(r"\toprule") == text.count(r"\bottomrule") == 5
    assert (r"dataset & init & test acc. & gradcam\_study & attention & chefer & random & centre & "
            r"uniform \\") in text
    assert (r"cp\_child & random & 0.85 & 0.40$^\dagger$ {\scriptsize [0.35, 0.45]} & "
            r"\textbf{0.75 $\pm$ 0.07} {\scriptsize (2 runs: 0.70--0.80)} &") in text
    assert r"\label{tab:iou-5}" in text
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    assert re.search(r"(?<!\\)_", body.replace(r"\label{tab:pointing-game}", "")) is None
    assert text.count("{") == text.count("}")


def test_html_is_self_contained(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    page = _write_all(sweep, out, compare="study")["html"].read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    # img + link each
    assert len([x for x in links if x.startswith("assets/overlays/")]) == 4 * 6 * 2 * 2
    assert sum(x.startswith("assets/plots/") for x in links) == 2
    for link in links:
        assert not link.startswith(("/", "http")) and (out / link).is_file(), link
    assert (out / "assets" / "overlays" / "kvasir" / "dino" / "uniform" / "000001.png").is_file()
    assert "<strong>0.75</strong>" in page and "0.40†" in page
    assert "test/img 0.png: label 1, pred 1; pointing_game 1, iou@10 0.5" in page
    assert "CUDA out of memory" in page and "<script" not in page


def test_trust_section_says_which_metrics_can_be_trusted(sweep: Path, tmp_path: Path) -> None:
    meta = _meta_run(sweep)
    (sweep / "meta_failed").mkdir()  # a meta-evaluation that crashed: listed, not fatal
    (sweep / "meta_failed" / "config.yaml").write_text(
        yaml.safe_dump({"task_name": "meta_evaluate"}))
    scan, table = _table(sweep)
    assert sorted(p.name for p in scan.meta) == ["meta", "meta_failed"]
    assert len(scan.runs) == 13 and len(scan.other) == 5
    trust, skipped = read_trust(scan.meta)
    assert [t.run_dir for t in trust] == [meta.resolve()]
    assert "meta-evaluation without a result" in skipped[0].reason
    model = trust[0]
    assert model.label == "kvasir / dino (vit_tiny_patch16_224)"
    assert model.summary() == ("Trusted: relevance_mass. Not trusted: pointing_game fails AR "
                               "(model). Not judged (n/a): aopc@16.")
    out = tmp_path / "out"
    out.mkdir()
    facts = sweep_facts(scan, table)
    md = write_markdown(table, facts, out / "report.md", scan.incomplete, 2, trust).read_text()
    assert "## Which metrics can be trusted on this model" in md
    assert "### kvasir / dino (vit_tiny_patch16_224)" in md
    assert ("| pointing_game | model | 0.90 | 0.80 | 0.20 | \u2013 | 0.60 | pass | fail | fail |"
            in md)
    assert md.index("## Which metrics") < md.index("## Notes")
    tex = write_tex(table, facts, out / "report.tex", scan.incomplete, 2, trust).read_text()
    assert tex.count(r"\begin{tabular}") == 6 and tex.count("{") == tex.count("}")
    assert r"relevance\_mass & input & 0.90" in tex
    page = write_html(table, facts, out, write_plots(table, out), {}, scan.incomplete, 2,
                      trust).read_text()
    assert "<h2>Which metrics can be trusted on this model</h2>" in page
    links = re.findall(r'src="(assets/trust/[^"]+)"', page)
    assert sorted(links) == ["assets/trust/0/aopc.png", "assets/trust/0/pointing_game.png"]
    assert all((out / link).is_file() for link in links)
    rows = list(csv.DictReader(write_trust_csv(trust, out / "trust.csv").open()))
    assert len(rows) == 5 and rows[0]["model"] == model.label and rows[0]["verdict"] == "fail"
    assert write_trust_csv([], out / "none.csv") is None  # no meta-evaluation: no file


def test_trust_from_folders_outside_the_sweep(sweep: Path, tmp_path: Path) -> None:
    from xai_bench.report.__main__ import trust_or_warn

    elsewhere = tmp_path / "meta_runs"
    _meta_run(elsewhere, "a")
    scan = scan_sweep(sweep)
    assert [t.run_dir.name for t in trust_or_warn(scan, [str(elsewhere)])] == ["a"]
    assert trust_or_warn(scan, []) == []
    with pytest.raises(ConfigError, match="is not a folder"):
        trust_or_warn(scan, [str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="no meta-evaluation run below"):
        trust_or_warn(scan, [str(sweep / "0_cp_child-random-gradcam_study-s1")])


# ---------------------------------------------------------------------------------------------
# the command


@pytest.mark.slow
def test_cli_writes_report_and_wandb_run(sweep: Path, tmp_path: Path) -> None:
    _meta_run(sweep)
    proc = run_cli(["xai_bench.report", f"sweep={sweep}", "compare=study", "print_config=false"],
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = sweep / "report"
    for name in ("report.csv", "report.md", "report.tex", "index.html", "config.yaml",
                 "trust.csv"):
        assert (out / name).is_file(), name
    assert f"Open the report: {(out / 'index.html').resolve()}" in proc.stdout
    config = read_plain_config(out)
    assert (config["task_name"] == "report" and config["group"] == GROUP
            and config["compare"] == "study")

    runs = offline_run_dirs(out)
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert (run.job_type, run.group, run.name, run.tags) == ("report", GROUP, "report", ["report"])
    logged = {key for row in run.history for key in row}
    assert {"report/table/_type", "report/pointing_game/_type", "report/iou@mean/_type",
            "report/trust/_type", "report/plots/count"} <= logged
    tables = {}
    for path in runs[0].rglob("*.table.json"):
        data = json.loads(path.read_text())
        tables[path.name.rsplit("_", 2)[0]] = data["data"]
    cells = [r for r in csv.DictReader((out / "report.csv").open()) if r["section"] == "table"]
    assert len(tables["table"]) == len(cells)
    assert len(tables["trust"]) == 5


@pytest.mark.slow
def test_cli_empty_sweep_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(["xai_bench.report", f"sweep={empty}", "logger=none"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert f"error: no evaluation runs in sweep={empty}: pass sweep=" in proc.stderr
    assert "Traceback" not in proc.stderr
