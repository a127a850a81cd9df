"""`make demo` = `python -m xai_bench.train` with defaults: it must actually learn the task, and
the explanations of the model it trains must find the lesion (the synthetic ROI)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import run_cli

from xai_bench.tracking.records import EvaluationSummary, TrainingRecord
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run

pytestmark = pytest.mark.slow

METHODS = ("attention", "chefer", "gradcam", "random")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo"
    proc = run_cli(["xai_bench.train", f"hydra.run.dir={out}"], cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def test_default_run_reaches_the_accuracy_goal(demo_run: Path) -> None:
    record = TrainingRecord.read(demo_run)
    assert record.val["acc"] >= 0.90
    assert record.test_accuracy >= 0.90
    run = read_offline_run(offline_run_dirs(demo_run)[0])
    assert len(run.metric("val/acc")) >= 8  # one per epoch, plus the final validation
    assert max(run.metric("val/acc")) >= 0.90
    assert run.metric("train/loss_epoch")[-1] < run.metric("train/loss_epoch")[0]


def test_methods_localise_the_lesion_and_fail_parameter_randomisation(demo_run: Path,
                                                                      tmp_path: Path) -> None:
    sweep = tmp_path / "eval"
    proc = run_cli(["xai_bench.evaluate", "-m", f"ckpt={demo_run / 'checkpoints' / 'best.ckpt'}",
                    f"method={','.join(METHODS)}", "baselines=[]", "max_images=96", "overlays=2",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = {}
    for folder in sweep.iterdir():
        if (folder / "metrics.json").is_file():
            summary = EvaluationSummary.read(folder)
            results[summary.method] = summary.methods[summary.method].metrics
            assert (folder / "per_image.csv").is_file() and offline_run_dirs(folder)
            wandb_run = read_offline_run(offline_run_dirs(folder)[0])
            # an evaluation joins its training run's W&B group
            assert (wandb_run.group, wandb_run.job_type) == ("synthetic-random", "eval")
            assert summary.method in wandb_run.tags
    assert set(results) == set(METHODS)
    random = results["random"]
    best = {name: max(results[m][name]["value"] for m in METHODS[:3])
            for name in ("pointing_game", "iou@5", "iou@10")}
    assert best["pointing_game"] >= random["pointing_game"]["value"] + 0.5
    assert best["iou@5"] >= random["iou@5"]["value"] + 0.3
    assert best["iou@10"] >= random["iou@10"]["value"] + 0.3
    for method in METHODS[:3]:
        steps = [k for k in results[method] if k.startswith("mprt/ssim/")]
        first, last = results[method][steps[0]]["value"], results[method][steps[-1]]["value"]
        # randomised all the way down: the maps change
        assert last < 0.3 < first, (method, first, last)
    # the random map ignores the model entirely: it does not pass the randomisation test
    assert min(v["value"] for k, v in random.items()
               if k.startswith("mprt/ssim/")) == pytest.approx(1.0)

    # step 3 of `make demo`: the report of this sweep carries the same numbers
    proc = run_cli(["xai_bench.report", f"sweep={sweep}", "print_config=false"], cwd=tmp_path,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Open the report:" in proc.stdout
    rows = list(csv.DictReader((sweep / "report" / "report.csv").open()))
    for method in METHODS:
        (row,) = [r for r in rows if r["method"] == method and r["metric"] == "pointing_game"
                  and r["section"] == "table"]
        assert float(row["value"]) == pytest.approx(results[method]["pointing_game"]["value"])
        assert row["dataset"] == "synthetic" and row["init"] == "random"
    html = (sweep / "report" / "index.html").read_text()
    assert all(method in html for method in METHODS) and "<img" in html
