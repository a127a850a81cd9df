"""Hyperparameter search (`hparams_search=optuna`): what Hydra's Optuna sweeper leaves to us.

hydra-optuna-sweeper asks Optuna for trials, launches each as a job of the multirun and tells
Optuna the value the job returned (`train` returns its `optimized_metric`). `SearchCallback`
prepares the study before the sweeper is built, in the config object Hydra builds it from:

- the direction follows the metric (the loss is minimised, the rest maximised);
- SQLite does not create folders: the storage's folder is made, and the sweep folder (where the
  sweeper writes optimization_results.yaml, even when no trial is left to run);
- a stored study resumes: trials an interrupted search left running are marked failed, only the
  trials still missing to `n_trials` run, and the sampler's seed moves on by the number of
  trials already in the study, so a resumed search does not repeat its first suggestions;
- a study is one search: resuming it with another metric or direction is refused.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from xai_bench.utils.errors import ConfigError
from xai_bench.utils.task import run_entry

log = logging.getLogger(__name__)

# the validation metrics the classifier logs (xai_bench.modules.classifier.SplitMetrics) and
# which way is better; tests/test_hparams_search.py keeps the two in step
METRIC_DIRECTIONS = {
    "loss": "minimize",
    "acc": "maximize",
    "balanced_acc": "maximize",
    "f1_macro": "maximize",
    "auroc": "maximize",
}
SPLIT = "val/"
SQLITE = "sqlite:///"
# the study's user attribute that records what it optimises
METRIC_ATTR = "optimized_metric"


def metric_direction(metric: str | None) -> str:
    """`minimize` or `maximize` for a validation metric `val/<name>`; anything else is refused
    before a trial trains (a test metric would select on the test split)."""
    name = str(metric).removeprefix(SPLIT) if metric else ""
    if not metric or not str(metric).startswith(SPLIT) or name not in METRIC_DIRECTIONS:
        choices = ", ".join(SPLIT + key for key in METRIC_DIRECTIONS)
        raise ConfigError(
            f"optimized_metric={metric} is not a validation metric of the classifier: "
            f"pass one of {choices}.")
    return METRIC_DIRECTIONS[name]


def optimized_value(metrics: dict[str, Any] | None, metric: str | None) -> float | None:
    """What a training job returns to the sweeper: None outside a search, the metric's value, or
    the worst value there is (+inf loss, -inf AUROC) for a trial that failed on its
    hyperparameters (diverged): TPE then counts its region as bad rather than ignoring it (as it
    would a failed trial), and the sweeper cannot take NaN (it stops the search)."""
    if not metric:
        return None
    if metrics is None:
        return math.inf if metric_direction(metric) == "minimize" else -math.inf
    name = str(metric).removeprefix(SPLIT)
    value = metrics.get("val", {}).get(name)
    if value is None:
        raise ConfigError(
            f"optimized_metric={metric}: the run has no such validation metric (it has "
            f"{', '.join(sorted(metrics.get('val', {}))) or 'none: set test=true'}).")
    return float(value)


def storage_folder(storage: str | None) -> Path | None:
    """The folder of a SQLite storage URL (sqlite:///relative or sqlite:////absolute)."""
    if not storage or not str(storage).startswith(SQLITE):
        return None
    path = str(storage).removeprefix(SQLITE)
    return Path(path).parent if path and path != ":memory:" else None


def _open_study(sweeper: DictConfig, direction: str, metric: str) -> Any:
    """The stored study, created when new; refused when it was a search for something else."""
    import optuna

    try:  # loaded as stored: create_study would try to overwrite its direction
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    except KeyError:
        study = optuna.create_study(study_name=sweeper.study_name, storage=sweeper.storage,
                                    direction=direction)
    recorded = study.user_attrs.get(METRIC_ATTR)
    stored = [d.name.lower() for d in study.directions]
    if recorded is None and not study.trials:
        study.set_user_attr(METRIC_ATTR, metric)
    elif recorded != metric or stored != [direction]:
        raise ConfigError(
            f"the stored study {sweeper.study_name} ({sweeper.storage}) optimised "
            f"{recorded or 'another metric'} ({', '.join(stored)}), not {metric} ({direction}): "
            "start a new study with search.name=<new name>.")
    return study


def _fail_interrupted(study: Any) -> int:
    """Trials an interrupted search left running will never report: marked failed."""
    from optuna.trial import TrialState

    running = [t for t in study.trials if t.state == TrialState.RUNNING]
    for trial in running:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(running)


def _check_space(config: DictConfig) -> None:
    """The search space must fit the chosen optimizer and schedule (an unknown optimizer has no
    ranges; a schedule without warm-up drops it) before any trial is composed."""
    optimizer = config.optimizer.name
    space = config.get("search", {}).get("space", {})
    if space and optimizer not in space:
        raise ConfigError(
            f"the search has no ranges for optimizer={optimizer} (it has {', '.join(space)}): "
            f"add search.space.{optimizer} (lr, weight_decay, momentum) to the search config.")
    params = config.hydra.sweeper.get("params") or {}
    # scheduler=none composes a node without _target_ (perhaps a dataset's warm-up default)
    if "scheduler.warmup" in params and not (config.get("scheduler") or {}).get("_target_"):
        del params["scheduler.warmup"]
        log.info("this scheduler has no warm-up: scheduler.warmup is not searched")


class SearchCallback(Callback):
    """Prepares the Optuna sweeper's study before the sweeper is built (see the module doc)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and goes on: a refused search must
        # stop here, with its one-line message and exit status 2 like the entry points
        run_entry(prepare_search, config)


def prepare_search(config: DictConfig) -> None:
    """Direction, folders and the stored study, written into `config`'s sweeper node."""
    # a multirun's own process has no HydraConfig until a job starts: the study's name
    # (${hydra:runtime.choices.model}) needs it, here and when Hydra builds the sweeper
    HydraConfig.instance().set_config(config)
    metric = config.get("optimized_metric")
    direction = metric_direction(metric)
    if not config.get("test", True):
        raise ConfigError(
            "a search scores each trial with the validation metrics of its best checkpoint, "
            "computed when test=true: drop test=false.")
    with read_write(config.hydra), open_dict(config.hydra):
        sweeper = config.hydra.sweeper
        chosen = sweeper.get("direction")
        if chosen is not None and str(chosen).lower() != direction:
            raise ConfigError(
                f"hydra.sweeper.direction={chosen} would select the worst trial of "
                f"optimized_metric={metric}: leave it unset (null), it follows the metric.")
        sweeper.direction = direction
        _check_space(config)
        # the sweeper writes optimization_results.yaml there even when no trial is left to run
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        folder = storage_folder(sweeper.get("storage"))
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        _resume(sweeper, direction, metric)


def _resume(sweeper: DictConfig, direction: str, metric: str) -> None:
    """Open (or create) the stored study; budget and seed of the part still to run."""
    from optuna.trial import TrialState

    study = _open_study(sweeper, direction, metric)
    failed = _fail_interrupted(study)
    done = sum(t.state == TrialState.COMPLETE for t in study.trials)
    if not study.trials:
        log.info("new study %s in %s", sweeper.study_name, sweeper.storage)
        return
    wanted = int(sweeper.n_trials)
    sweeper.n_trials = max(wanted - done, 0)
    seed = sweeper.sampler.get("seed")
    if seed is not None:
        sweeper.sampler.seed = int(seed) + len(study.trials)
    log.info(
        "resuming study %s: %d of %d trials complete (%d interrupted, marked failed); "
        "%d to run", sweeper.study_name, done, wanted, failed, sweeper.n_trials)
