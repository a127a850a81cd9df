"""End-to-end evaluation runs through the CLI: run folder, W&B, DDP exactness, sweeps, errors."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from xai_bench.tracking.records import EvaluationSummary
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run

pytestmark = pytest.mark.slow

TRAIN = ["debug=tiny", "dataset.num_train=128", "dataset.num_val=32", "dataset.num_test=64",
         "logger=none"]
# every metric family, with schedules cut down to seconds
LIGHT_METRICS = [
    "metric=[localisation,sanity,faithfulness]",
    "metric.aopc.region=[8,16]", "metric.aopc.steps=4",
    "metric.max_sensitivity.radius=[0.1]", "metric.max_sensitivity.samples=[2]",
    "metric.deletion_insertion.steps=4",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run (its quality does not matter here; see test_demo for that)."""
    tmp = tmp_path_factory.mktemp("train")
    out = tmp / "run"
    proc = run_cli(["xai_bench.train", *TRAIN, f"hydra.run.dir={out}"], cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def _evaluate(cwd: Path, out: Path, *overrides: str, timeout: float = 900) -> EvaluationSummary:
    proc = run_cli(["xai_bench.evaluate", f"hydra.run.dir={out}", *overrides], cwd=cwd,
                   timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return EvaluationSummary.read(out)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_run_folder_metrics_csv_overlays_and_wandb(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    metrics = _evaluate(tmp_path, out, f"ckpt={trained / 'checkpoints' / 'best.ckpt'}",
                        "method=gradcam", "max_images=12", "data.batch_size=8", "overlays=3",
                        *LIGHT_METRICS)
    assert metrics.split == "roi" and metrics.images == 12 and metrics.world_size == 1
    assert set(metrics.methods) == {"gradcam", "random", "centre", "uniform"}
    assert metrics.method == "gradcam" and metrics.baselines == ["random", "centre", "uniform"]
    gradcam = metrics.methods["gradcam"].metrics
    expected = {"pointing_game", "iou@5", "iou@40", "pixel_iou@10", "relevance_mass",
                "relevance_rank", "aopc@8", "aopc@16", "max_sensitivity@0.1", "haas",
                "haas/accuracy", "deletion_insertion/deletion", "deletion_insertion/insertion",
                "mprt/spearman/0_head"}
    assert expected <= set(gradcam)
    for name in ("pointing_game", "iou@5", "relevance_mass"):
        stats = gradcam[name]
        assert stats["ci_low"] <= stats["value"] <= stats["ci_high"] and stats["n"] == 12
    # each column records what its metric declares
    scores = metrics.methods["gradcam"]
    assert (scores.higher_is_better("pointing_game") is True
            and scores.higher_is_better("aopc@8") is True)
    assert scores.higher_is_better("deletion_insertion/deletion") is False
    assert scores.higher_is_better("max_sensitivity@0.1") is False
    uniform = metrics.methods["uniform"]
    assert uniform.counts["constant_maps"] == 12
    assert uniform.value("pointing_game") == 1.0  # the tie rule, on non-empty masks
    # a constant map keeps every pixel: IoU at any q = the ROI's area (docs/metrics.md)
    assert uniform.value("iou@5") == pytest.approx(uniform.value("iou@40"))
    assert uniform.value("max_sensitivity@0.1") in (0.0, None)

    rows = _rows(out / "per_image.csv")
    assert len(rows) == 12 * 4
    assert {"id", "image", "label", "pred", "correct", "method", "target", "constant_map",
            "pointing_game", "iou@5", "aopc@8", "haas/correct"} <= set(rows[0])
    assert rows[0]["image"].startswith("test/")
    assert len(list((out / "overlays" / "gradcam").glob("*.png"))) == 3
    assert (out / "config.yaml").is_file()

    run = read_offline_run(offline_run_dirs(out)[0])
    assert run.job_type == "eval" and run.group == "synthetic-random"
    assert {"synthetic", "gradcam"} <= set(run.tags)
    assert run.metric("eval/gradcam/pointing_game")[-1] == pytest.approx(
        gradcam["pointing_game"]["value"])
    assert run.metric("eval/accuracy")


def test_two_process_ddp_equals_one_process(trained: Path, tmp_path: Path) -> None:
    """Padding duplicates dropped by id, noise seeded by id: 2 ranks reproduce 1 rank."""
    common = [f"ckpt={trained}", "method=gradcam", "max_images=11", "data.batch_size=4",
              "overlays=0", "logger=none", "trainer.accelerator=cpu", *LIGHT_METRICS]
    one = _evaluate(tmp_path, tmp_path / "one", *common)
    two = _evaluate(tmp_path, tmp_path / "two", *common, "trainer=ddp", "trainer.devices=2")
    assert one.world_size == 1 and two.world_size == 2
    assert one.counts == two.counts
    for method, entry in one.methods.items():
        for name, stats in entry.metrics.items():
            other = two.methods[method].metrics[name]
            for key in ("value", "ci_low", "ci_high"):
                if stats[key] is None:
                    assert other[key] is None, (method, name)
                else:
                    assert other[key] == pytest.approx(stats[key], rel=1e-5,
                                                       abs=1e-6), (method, name, key)
    rows_one, rows_two = (_rows(tmp_path / "one" / "per_image.csv"),
                          _rows(tmp_path / "two" / "per_image.csv"))
    assert [(r["method"], r["id"]) for r in rows_one] == [(r["method"], r["id"]) for r in rows_two]


def test_method_sweep_writes_one_run_per_method(trained: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["xai_bench.evaluate", "-m", f"ckpt={trained}", "method=attention,random",
                    "metric=[study]", "max_images=8", "baselines=[]", "overlays=0",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    runs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert [p.name for p in runs] == ["0_synthetic-random-adamw-s42-attention",
                                      "1_synthetic-random-adamw-s42-random"]
    assert list(EvaluationSummary.read(runs[0]).methods) == ["attention"]
    assert read_offline_run(offline_run_dirs(runs[1])[0]).job_type == "eval"


def _fails_cleanly(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_missing_checkpoint_argument_or_file(tmp_path: Path) -> None:
    err = _fails_cleanly(run_cli(["xai_bench.evaluate", "logger=none"], cwd=tmp_path, timeout=300))
    assert "ckpt=" in err and err.count("error:") == 1
    err = _fails_cleanly(run_cli(["xai_bench.evaluate", "ckpt=nowhere/best.ckpt", "logger=none"],
                                 cwd=tmp_path, timeout=300))
    assert "checkpoint not found" in err and str(tmp_path / "nowhere" / "best.ckpt") in err


def test_checkpoint_without_run_config_says_how_to_fix(trained: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "best.ckpt"
    lonely.write_bytes((trained / "checkpoints" / "best.ckpt").read_bytes())
    err = _fails_cleanly(run_cli(["xai_bench.evaluate", f"ckpt={lonely}", "logger=none"],
                                 cwd=tmp_path, timeout=300))
    assert "run_config=" in err
    # ... and with it, the evaluation runs
    _evaluate(tmp_path, tmp_path / "ok", f"ckpt={lonely}", f"run_config={trained / 'config.yaml'}",
              "logger=none", "metric=[study]", "max_images=4", "baselines=[]", "overlays=0")


def test_pickled_checkpoint_is_refused(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text((trained / "config.yaml").read_text())
    state = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    state["extra"] = Fraction(1, 3)  # an arbitrary Python object: only a full unpickler reads it
    torch.save(state, run / "checkpoints" / "best.ckpt")
    err = _fails_cleanly(run_cli(["xai_bench.evaluate", f"ckpt={run}", "logger=none"], cwd=tmp_path,
                                 timeout=300))
    assert "refused to load" in err
