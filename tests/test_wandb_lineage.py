"""W&B lineage read back from the offline transaction logs: the dataset and checkpoint artifacts of
a training run, the evaluation that uses them and logs its own, the report that uses that; the
run id a run folder keeps across attempts; checkpoint files frozen for `wandb sync`."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_cli

from xai_bench.tracking.lineage import (
    LINEAGE_DIR,
    WandbLogger,
    declare_use,
    log_model_mode,
    run_id_for,
)
from xai_bench.tracking.run_folder import atomic_open
from xai_bench.tracking.wandb_offline import (
    offline_run_dirs,
    read_offline_run,
    wandb_run_dirs,
    wandb_run_id,
)
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.quiet import drop_retired_wandb_settings

TRAIN = ["debug=tiny", "dataset.num_train=64", "dataset.num_val=32", "dataset.num_test=32",
         "print_config=false"]
EVAL = ["method=gradcam", "max_images=4", "data.batch_size=4", "overlays=0",
        "metric=[localisation]", "baselines=[random]", "bootstrap.samples=20",
        "print_config=false"]


def _b64_md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def _only(items: list) -> object:
    assert len(items) == 1, items
    return items[0]


# --------------------------------------------------------------------------------------------
# fast: the pieces


def test_log_model_values() -> None:
    assert [log_model_mode(v) for v in (False, "false", "reference", "best", True, "ALL")] == [
        "false", "false", "reference", "best", "best", "all"]
    with pytest.raises(ConfigError, match="log_model='last' is not one of"):
        log_model_mode("last")


def _fake_run_dir(run_folder: Path, stamp: str, run_id: str) -> None:
    folder = run_folder / "wandb" / f"offline-run-{stamp}-{run_id}"
    folder.mkdir(parents=True)
    (folder / f"run-{run_id}.wandb").write_bytes(b"")


def test_run_folder_keeps_its_run_id(tmp_path: Path) -> None:
    fresh = {run_id_for(tmp_path / "new") for _ in range(3)}
    assert len(fresh) == 3 and all(len(i) == 8 and i.isalnum() for i in fresh)
    _fake_run_dir(tmp_path, "20260101_000000", "first1")
    _fake_run_dir(tmp_path, "20260102_000000", "second2")
    assert [p.name.rsplit("-", 1)[1] for p in wandb_run_dirs(tmp_path)] == ["first1", "second2"]
    assert wandb_run_id(tmp_path) == run_id_for(tmp_path) == "second2"  # the newest


def _offline_logger(tmp_path: Path, log_model: str) -> WandbLogger:
    """A started offline logger (as train.py starts it before fitting)."""
    logger = drop_retired_wandb_settings(
        WandbLogger(project="p", save_dir=str(tmp_path), mode="offline", log_model=log_model))
    _ = logger.experiment
    return logger


def _finish(logger: WandbLogger) -> Path:
    """Finish the run and stop W&B's service process, which writes the transaction log: only
    then is the file complete (an entry point's process exit does the same)."""
    import wandb

    logger.experiment.finish()
    wandb.teardown()
    return _only(offline_run_dirs(logger._run_folder))


def test_log_model_all_freezes_every_saved_checkpoint(tmp_path: Path) -> None:
    """Every save is logged from a hard link that keeps the version logged: a checkpoint replaced
    later (atomically, as AtomicCheckpointIO does) leaves the logged file as it was."""
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    best, last = ckpt / "best.ckpt", ckpt / "last.ckpt"
    callback = SimpleNamespace(best_model_path=str(best), last_model_path=str(last),
                               best_model_score=0.5, monitor="val/loss")
    logger = _offline_logger(tmp_path, "all")
    for epoch in range(2):
        for path, text in ((best, f"best {epoch}"), (last, f"last {epoch}")):
            with atomic_open(path, "w") as handle:
                handle.write(text)
            os.utime(path, ns=(10**9 * (epoch + 1), 10**9 * (epoch + 1) + len(path.name)))
        logger.after_save_checkpoint(callback)
    logger.finalize("success")  # "all" already logged everything: nothing more
    run = read_offline_run(_finish(logger))
    models = run.outputs("model")
    assert [set(m.aliases) for m in models] == [{"latest", "best"}, {"latest", "last"}] * 2
    assert {m.name for m in models} == {f"model-{run.run_id}"}
    texts = []
    for model in models:
        entry = _only(model.entries)
        frozen = Path(entry["local_path"])
        assert entry["path"] == "model.ckpt" and frozen.parent == tmp_path / LINEAGE_DIR
        assert entry["digest"] == _b64_md5(frozen)  # what sync will upload matches the record
        texts.append(frozen.read_text())
    assert texts == ["best 0", "last 0", "best 1", "last 1"]


def test_log_model_best_and_reference_log_once_at_the_end(tmp_path: Path) -> None:
    for mode in ("best", "reference", "false"):
        folder = tmp_path / mode
        (folder / "checkpoints").mkdir(parents=True)
        best = folder / "checkpoints" / "best.ckpt"
        best.write_text("weights")
        callback = SimpleNamespace(best_model_path=str(best), last_model_path="",
                                   best_model_score=None, monitor="val/loss")
        logger = _offline_logger(folder, mode)
        logger.after_save_checkpoint(callback)
        logger.finalize("success")
        logger.finalize("success")  # validate / test call it again: no second version
        models = read_offline_run(_finish(logger)).outputs("model")
        if mode == "false":
            assert models == []
            continue
        entry = _only(_only(models).entries)
        assert entry["digest"] == _b64_md5(best)
        if mode == "reference":  # nothing to upload: the path and the checksum
            assert entry["ref"] == best.resolve().as_uri() and entry["local_path"] is None
        else:
            assert Path(entry["local_path"]).parent == folder / LINEAGE_DIR


def test_declared_use_is_recorded_offline(tmp_path: Path) -> None:
    """W&B refuses use_artifact offline; the use is recorded as W&B's own use of a new artifact
    (logged with use-after-commit, not as an output), which `wandb sync` declares."""
    import wandb

    data = tmp_path / "labels.csv"
    data.write_text("image,label,split\n")
    logger = _offline_logger(tmp_path, "false")
    run = logger.experiment
    with pytest.raises(TypeError, match="offline"):
        run.use_artifact("some-artifact:latest")
    artifact = wandb.Artifact("data-x", type="dataset")
    artifact.add_reference(data.as_uri(), name="labels.csv")
    declare_use(run, artifact)
    record = read_offline_run(_finish(logger))
    used = _only(record.inputs("dataset"))
    assert used.name == "data-x" and not used.is_output
    assert _only(used.entries)["digest"] == _b64_md5(data)


# --------------------------------------------------------------------------------------------
# slow: train -> evaluate -> report through the CLI, offline


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("lineage")
    train, sweep = tmp / "train", tmp / "sweep"
    steps = [
        ["xai_bench.train", *TRAIN, "logger.wandb.log_model=best", f"hydra.run.dir={train}"],
        ["xai_bench.evaluate", f"ckpt={train}", *EVAL, f"hydra.run.dir={sweep / '0_eval'}"],
        ["xai_bench.report", f"sweep={sweep}", "significance.enabled=false", "galleries=0",
         "print_config=false"],
    ]
    for args in steps:
        proc = run_cli(args, cwd=tmp, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return SimpleNamespace(
        train_dir=train, eval_dir=sweep / "0_eval",
        train=read_offline_run(_only(offline_run_dirs(train))),
        eval=read_offline_run(_only(offline_run_dirs(sweep / "0_eval"))),
        report=read_offline_run(_only(offline_run_dirs(sweep / "report"))),
    )


@pytest.mark.slow
def test_training_run_uses_its_dataset_and_logs_its_best_checkpoint(study) -> None:
    run = study.train
    dataset = _only(run.inputs("dataset"))
    assert dataset.name == "dataset-synthetic" and not dataset.is_output
    assert _only(dataset.entries)["path"] == "dataset.json"
    model = _only(run.outputs("model"))
    assert model.name == f"model-{run.run_id}" and "best" in model.aliases
    entry = _only(model.entries)
    assert entry["digest"] == _b64_md5(study.train_dir / "checkpoints" / "best.ckpt")
    assert Path(entry["local_path"]).is_file()  # frozen in the run folder for `wandb sync`


@pytest.mark.slow
def test_evaluation_uses_the_checkpoint_version_training_logged(study) -> None:
    """Same name and content digest: W&B resolves the use to the training run's version."""
    run, train = study.eval, study.train
    model = _only(run.inputs("model"))
    logged = _only(train.outputs("model"))
    assert (model.name, model.digest) == (logged.name, logged.digest)
    assert _only(model.entries)["ref"] == (study.train_dir / "checkpoints" / "best.ckpt").as_uri()
    dataset = _only(run.inputs("dataset"))
    assert dataset.digest == _only(train.inputs("dataset")).digest
    output = _only(run.outputs("evaluation"))
    assert output.name == f"eval-{run.run_id}"
    assert sorted(e["path"] for e in output.entries) == ["metrics.json", "per_image.csv"]


@pytest.mark.slow
def test_report_uses_the_evaluations_it_read(study) -> None:
    used = _only(study.report.inputs("evaluation"))
    logged = _only(study.eval.outputs("evaluation"))
    assert (used.name, used.digest) == (logged.name, logged.digest)
    assert {e["ref"] for e in used.entries} == {(study.eval_dir / n).as_uri()
                                               for n in ("metrics.json", "per_image.csv")}


@pytest.mark.slow
def test_second_attempt_in_the_folder_continues_the_w_and_b_run(study) -> None:
    """What a requeued SLURM job does: train again in its run folder. Offline, W&B writes a
    second folder with the same run id (resume on), which `wandb sync` appends to the run."""
    proc = run_cli(["xai_bench.train", *TRAIN, "trainer.max_epochs=3",
                    "logger.wandb.log_model=best", f"hydra.run.dir={study.train_dir}"],
                   cwd=study.train_dir.parent, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "continuing the W&B run of this run folder" in proc.stdout + proc.stderr
    first, second = (read_offline_run(d) for d in wandb_run_dirs(study.train_dir))
    assert first.run_id == second.run_id == study.train.run_id
    assert first.resume and second.resume
    # the attempt logged into its own folder, from where the first stopped: the curves continue
    # on their x-axis (trainer/global_step)
    assert min(second.metric("epoch")) == 2
    steps = "trainer/global_step"
    assert min(second.metric(steps)) >= max(first.metric(steps))
