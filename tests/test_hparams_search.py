"""Hyperparameter search (hparams_search=optuna): the study's bookkeeping, and real searches.

The fast tests drive xai_bench.tracking.search.SearchCallback on composed configs and an Optuna
study in SQLite; the slow ones run `python -m xai_bench.train -m hparams_search=optuna` on the
synthetic dataset (debug=tiny: seconds per trial), locally and as SLURM jobs.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import optuna
import pytest
import torch
from conftest import REPO_ROOT, fails_cleanly, run_cli
from omegaconf import OmegaConf
from optuna.trial import TrialState

from xai_bench.tracking.records import TrainingRecord
from xai_bench.tracking.search import (
    METRIC_DIRECTIONS,
    SearchCallback,
    metric_direction,
    optimized_value,
    prepare_search,
    storage_folder,
)
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run
from xai_bench.utils.errors import ConfigError

# study names follow ${dataset.name}-${init.name}-<model config>-${optimizer.name}
STUDY = "synthetic-random-vit_test-adamw"
# a trial: the tiny debug run on fewer synthetic images (about 3 s on one core)
TRIAL = ["debug=tiny", "print_config=false", "dataset.num_train=128", "dataset.num_val=64",
         "dataset.num_test=32"]
# TPE from the third trial on
SEARCH = ["xai_bench.train", "-m", "hparams_search=optuna", *TRIAL,
          "hydra.sweeper.sampler.n_startup_trials=2"]


def _storage(log_dir: Path, study: str = STUDY) -> str:
    return f"sqlite:///{log_dir}/train/hparams_search/{study}.db"


def _compose(compose_cfg, tmp_path: Path, *overrides: str):
    return compose_cfg("hparams_search=optuna", "model=vit_test", f"paths.log_dir={tmp_path}",
                       *overrides)


# --- metrics and directions ------------------------------------------------------------------

@pytest.mark.parametrize("multilabel", [False, True])
def test_known_metrics_are_the_ones_the_classifier_logs(multilabel: bool) -> None:
    from xai_bench.modules.classifier import SplitMetrics

    metrics = SplitMetrics(3, "val/", multilabel=multilabel)
    labels = (torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]]) if multilabel
              else torch.tensor([0, 1, 2, 1]))
    metrics.update(torch.arange(4), torch.softmax(torch.randn(4, 3), 1), labels,
                   torch.ones(4), torch.ones(4))
    assert set(metrics.compute()) == {f"val/{name}" for name in METRIC_DIRECTIONS}


def test_direction_follows_the_metric_and_only_validation_metrics_are_accepted() -> None:
    assert metric_direction("val/loss") == "minimize"
    assert metric_direction("val/auroc") == metric_direction("val/balanced_acc") == "maximize"
    for bad in ("test/auroc", "val/aucroc", "auroc", None):
        with pytest.raises(ConfigError, match="val/loss, val/acc"):
            metric_direction(bad)


def test_the_value_returned_to_the_sweeper() -> None:
    metrics = {"val": {"auroc": 0.75, "loss": 0.5}, "test": {"auroc": 0.9}}
    assert optimized_value(metrics, "val/auroc") == 0.75
    assert optimized_value(metrics, None) is None  # not a search: main returns nothing
    # a trial that failed on its values (diverged) scores the worst value
    assert optimized_value(None, "val/loss") == math.inf
    assert optimized_value(None, "val/auroc") == -math.inf
    with pytest.raises(ConfigError, match="auroc, loss"):
        optimized_value(metrics, "val/balanced_acc")
    with pytest.raises(ConfigError, match="set test=true"):
        optimized_value({"val": {}}, "val/auroc")


def test_a_diverged_trial_returns_no_metrics_and_other_errors_stop_the_search(monkeypatch) -> None:
    import xai_bench.train as entry
    from xai_bench.modules.callbacks import NonFiniteLossError

    def diverges(cfg):
        raise NonFiniteLossError("the training loss became nan at epoch 1, step 3")

    monkeypatch.setattr(entry, "train", diverges)
    assert entry._trial(OmegaConf.create({})) is None
    monkeypatch.setattr(entry, "train", lambda cfg: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        entry._trial(OmegaConf.create({}))


def test_sqlite_storage_folder() -> None:
    assert storage_folder("sqlite:////abs/dir/s.db") == Path("/abs/dir")
    assert storage_folder("sqlite:///rel/s.db") == Path("rel")
    assert storage_folder("postgresql://host/db") is None and storage_folder(None) is None


# --- the search config and the callback ---------------------------------------------------

@pytest.mark.parametrize("optimizer,lr", [
    ("adamw", "tag(log, interval(1e-5, 1e-2))"),  # the synthetic dataset's optimizer
    ("sgd", "tag(log, interval(1e-4, 0.3))"),
])
def test_search_config_takes_the_ranges_of_the_chosen_optimizer(compose_cfg, tmp_path: Path,
                                                                 optimizer: str, lr: str) -> None:
    from hydra.core.hydra_config import HydraConfig

    cfg = _compose(compose_cfg, tmp_path, f"optimizer={optimizer}")
    HydraConfig.instance().set_config(cfg)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 42
    assert sweeper.params["optimizer.lr"] == lr
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "optimizer.momentum",
                                   "dataset.batch_size", "scheduler.warmup"}
    assert sweeper.params["scheduler.warmup"] == "int(interval(0, 5))"
    study = f"synthetic-random-vit_test-{optimizer}"
    assert sweeper.study_name == study
    assert sweeper.storage == _storage(tmp_path, study)
    assert cfg.group == f"hparams_search-{study}" and list(cfg.tags) == ["hparams_search"]
    assert cfg.optimized_metric == "val/auroc"


def test_callback_prepares_a_new_study(compose_cfg, tmp_path: Path) -> None:
    cfg = _compose(compose_cfg, tmp_path, "optimized_metric=val/loss")
    SearchCallback().on_multirun_start(cfg)
    assert cfg.hydra.sweeper.direction == "minimize"
    assert Path(cfg.hydra.sweep.dir).is_dir()  # for optimization_results.yaml
    study = optuna.load_study(study_name=STUDY, storage=_storage(tmp_path))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["optimized_metric"] == "val/loss" and not study.trials
    assert cfg.hydra.sweeper.n_trials == 20 and cfg.hydra.sweeper.sampler.seed == 42


def test_callback_resumes_a_stored_study(compose_cfg, tmp_path: Path) -> None:
    SearchCallback().on_multirun_start(_compose(compose_cfg, tmp_path))
    study = optuna.load_study(study_name=STUDY, storage=_storage(tmp_path))
    for value in (0.6, 0.7):
        study.tell(study.ask({"optimizer.lr": optuna.distributions.LogUniformDistribution(
            1e-5, 1e-2)}), value)
    interrupted = study.ask()  # a search stopped while this trial ran

    cfg = _compose(compose_cfg, tmp_path, "hydra.sweeper.n_trials=5")
    SearchCallback().on_multirun_start(cfg)
    assert cfg.hydra.sweeper.n_trials == 3  # 2 of 5 complete
    assert cfg.hydra.sweeper.sampler.seed == 42 + 3  # its suggestions do not repeat the first
    states = [t.state for t in optuna.load_study(study_name=STUDY,
                                                 storage=_storage(tmp_path)).trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert interrupted.number == 2

    done = _compose(compose_cfg, tmp_path, "hydra.sweeper.n_trials=2")
    SearchCallback().on_multirun_start(done)
    assert done.hydra.sweeper.n_trials == 0  # finished: only the results are written again


@pytest.mark.parametrize("overrides,needle", [
    (["optimized_metric=val/loss"], "optimised val/auroc (maximize), not val/loss"),
    (["hydra.sweeper.direction=minimize"], "would select the worst trial"),
    (["optimized_metric=test/auroc"], "not a validation metric"),
    (["test=false"], "drop test=false"),
])
def test_callback_refuses_a_search_that_would_mislead(compose_cfg, tmp_path: Path,
                                                      overrides: list[str], needle: str) -> None:
    SearchCallback().on_multirun_start(_compose(compose_cfg, tmp_path))  # stores val/auroc
    with pytest.raises(ConfigError, match=re.escape(needle)):
        prepare_search(_compose(compose_cfg, tmp_path, *overrides))


def test_a_refused_search_stops_with_its_message(compose_cfg, tmp_path: Path, capsys) -> None:
    """Hydra turns a callback's exception into a warning and goes on: the callback must exit."""
    with pytest.raises(SystemExit) as stop:
        SearchCallback().on_multirun_start(
            _compose(compose_cfg, tmp_path, "optimized_metric=val/aucroc"))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "error: optimized_metric=val/aucroc is not a validation metric" in err


@pytest.mark.slow
def test_cli_refuses_a_search_for_another_metric_before_any_trial(tmp_path: Path) -> None:
    (tmp_path / "train" / "hparams_search").mkdir(parents=True)
    stored = optuna.create_study(study_name=STUDY, storage=_storage(tmp_path), direction="maximize")
    stored.set_user_attr("optimized_metric", "val/auroc")
    proc = run_cli([*SEARCH, f"paths.log_dir={tmp_path}", "optimized_metric=val/balanced_acc"],
                   cwd=REPO_ROOT, timeout=300)
    fails_cleanly(proc, "optimised val/auroc (maximize), not val/balanced_acc", "search.name=")
    assert not list(tmp_path.glob("train/multiruns/*/*/0_*"))  # no trial ran


def test_callback_fits_the_space_to_the_optimizer_and_schedule(compose_cfg,
                                                               tmp_path: Path) -> None:
    cfg = _compose(compose_cfg, tmp_path, "scheduler=none")
    SearchCallback().on_multirun_start(cfg)
    assert "scheduler.warmup" not in cfg.hydra.sweeper.params  # a constant lr has no warm-up
    cfg = _compose(compose_cfg, tmp_path, "~search.space.adamw")
    with pytest.raises(ConfigError, match="add search.space.adamw"):
        prepare_search(cfg)


# --- real searches ---------------------------------------------------------------------------

def _sweep_folders(log_dir: Path) -> list[Path]:
    return sorted(p.parent for p in log_dir.glob("train/multiruns/*/*/optimization_results.yaml"))


def _trial_runs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if (p / "metrics.json").is_file()),
                  key=lambda p: int(p.name.split("_", 1)[0]))


def _params_of(run: Path) -> dict[str, float]:
    values = OmegaConf.load(run / "config.yaml")
    return {"optimizer.lr": values.optimizer.lr, "optimizer.weight_decay":
            values.optimizer.weight_decay, "optimizer.momentum": values.optimizer.momentum,
            "dataset.batch_size": values.dataset.batch_size,
            "scheduler.warmup": values.scheduler.warmup}


@pytest.mark.slow
def test_search_finishes_resumes_and_its_best_trial_trains_to_its_score(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = run_cli([*SEARCH, f"paths.log_dir={tmp_path}", "hydra.sweeper.n_trials=4"],
                   cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    first_s = time.monotonic() - start
    (sweep,) = _sweep_folders(tmp_path)
    runs = _trial_runs(sweep)
    assert [p.name.split("_", 1)[0] for p in runs] == ["0", "1", "2", "3"]
    study = optuna.load_study(study_name=STUDY, storage=_storage(tmp_path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    # each trial's value is its run's validation AUROC, its params the run's config
    for trial, run in zip(study.trials, runs, strict=True):
        record = TrainingRecord.read(run)
        assert trial.value == pytest.approx(record.val["auroc"], abs=0)
        assert trial.params == pytest.approx(_params_of(run))
    # TPE after the 2 random trials; every trial different
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == max(t.value for t in study.trials)
    assert dict(results.best_params) == study.best_params
    # every trial logged to W&B (offline) in the study's group
    groups = {read_offline_run(d).group for run in runs for d in offline_run_dirs(run)}
    assert groups == {f"hparams_search-{STUDY}"}
    assert sum(len(offline_run_dirs(run)) for run in runs) == 4

    # the same command again with a larger budget: one more trial, in a new sweep folder, here
    # with a learning rate that makes it diverge: it scores the worst AUROC, the search goes on
    # (without W&B from here on: seconds less)
    proc = run_cli([*SEARCH, f"paths.log_dir={tmp_path}", "hydra.sweeper.n_trials=5",
                    "search.space.adamw.lr='tag(log, interval(1e29, 1e30))'", "logger=none"],
                   cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "4 of 5 trials complete" in proc.stderr + proc.stdout
    assert "trial failed, the search goes on: the training loss became nan" in proc.stdout
    sweeps = _sweep_folders(tmp_path)
    assert len(sweeps) == 2
    (diverged,) = [p for p in sweeps[1].iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert diverged.name.startswith("0_") and (diverged / "error.txt").is_file()
    study = optuna.load_study(study_name=STUDY, storage=_storage(tmp_path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    assert study.trials[4].value == -math.inf and study.trials[4].params["optimizer.lr"] > 1e28

    # the best trial's values, as a plain training run, train to the same score
    best = OmegaConf.load(sweeps[1] / "optimization_results.yaml")
    assert best.best_value == study.best_value
    rerun = tmp_path / "rerun"
    overrides = [f"{name}={value}" for name, value in best.best_params.items()]
    proc = run_cli(["xai_bench.train", *TRIAL, "logger=none", *overrides,
                    f"hydra.run.dir={rerun}"], cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert TrainingRecord.read(rerun).val["auroc"] == best.best_value
    print(f"4-trial search {first_s:.0f} s")


# --- on SLURM --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm() -> None:
    import test_slurm

    problem = test_slurm._cluster_problem()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the SLURM tests: {problem}")
    pytest.skip(problem)


@pytest.mark.slow
def test_search_runs_its_trials_as_slurm_jobs(slurm, tmp_path: Path) -> None:
    from xai_bench.tracking.cluster import read_attempts

    proc = run_cli([*SEARCH, f"paths.log_dir={tmp_path}", "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.n_jobs=2", "hydra/launcher=slurm",
                    "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                    "hydra.launcher.timeout_min=10"],
                   cwd=REPO_ROOT, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (sweep,) = _sweep_folders(tmp_path)
    runs = _trial_runs(sweep)
    assert len(runs) == 2
    jobs = [read_attempts(run)[0]["slurm"] for run in runs]
    # both trials at once: two tasks of one SLURM array
    assert len({job["job_id"] for job in jobs}) == 2
    assert len({job["array_job_id"] for job in jobs}) == 1
    study = optuna.load_study(study_name=STUDY, storage=_storage(tmp_path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.value for t in study.trials) == sorted(
        TrainingRecord.read(run).val["auroc"] for run in runs)
    groups = {read_offline_run(d).group for run in runs for d in offline_run_dirs(run)}
    assert groups == {f"hparams_search-{STUDY}"}
    assert (sweep / ".submitit").is_dir()
