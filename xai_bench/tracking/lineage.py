"""W&B lineage: the artifacts that link a study's runs, dataset -> train -> evaluate -> report.

W&B draws lineage from artifacts: a run *logs* an artifact (its output) or *uses* one (its input).
- A training run uses `dataset-<name>` (the dataset's settings, and its labels.csv by reference)
  and logs its checkpoint as `model-<its run id>` (`logger.wandb.log_model`, see `WandbLogger`).
- An evaluation run uses the dataset and `model-<training run id>`, and logs `eval-<its run id>`
  (metrics.json and per_image.csv).
- A report run uses the `eval-<run id>` of every evaluation run it aggregates.

A use is declared with an artifact of the producer's name and content (its files added by
reference and checksummed, so nothing is uploaded again): W&B deduplicates a version by content,
so the use lands on the version the producing run logged. W&B refuses `use_artifact` in offline
mode; its own `use_artifact` of a new artifact is a log marked "use after commit", and that
record is written to the offline transaction log here, so `wandb sync` declares the use when it
uploads the run (online, the public `use_artifact` does the same).

Offline, a file an artifact uploads must still be there, unchanged, when `wandb sync` runs. W&B
would copy it to a staging folder in the user's home, outside the run folder; here it is a hard
link in <run>/wandb/lineage/ (no copy: a checkpoint replaced later keeps the version logged).

Run ids: a run folder keeps one W&B run id (`run_id_for`): a requeued SLURM attempt, which runs
again in the same folder, continues the run of the first attempt (resume "allow") instead of
starting a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_only

from xai_bench.tracking.run_folder import atomic_open, run_of
from xai_bench.tracking.wandb_offline import wandb_run_id
from xai_bench.utils.errors import ConfigError

__all__ = [
    "EVAL_OUTPUTS",
    "LOG_MODEL_MODES",
    "WandbLogger",
    "declare_evaluation_inputs",
    "declare_report_inputs",
    "declare_training_inputs",
    "log_evaluation_outputs",
    "log_model_mode",
    "run_id_for",
]

log = logging.getLogger(__name__)

# logger.wandb.log_model -> what a training run logs of its checkpoints
LOG_MODEL_MODES = {
    False: "false", "false": "false", None: "false",
    "reference": "reference",  # best.ckpt at the end, by reference: path + checksum, no upload
    True: "best", "true": "best", "best": "best",  # best.ckpt uploaded at the end
    "all": "all",  # every checkpoint ModelCheckpoint saves, uploaded as it is saved
}
LINEAGE_DIR = Path("wandb") / "lineage"
# what an evaluation run logs as eval-<run id> (those present)
EVAL_OUTPUTS = ("metrics.json", "per_image.csv")
# dataset settings that change how data is loaded, not which data: left out of its identity
_LOADER_KEYS = {"root", "batch_size", "num_workers", "pin_memory", "persistent_workers",
                "prefetch_factor", "transforms", "prepare_hint", "_target_"}
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def log_model_mode(value: Any) -> str:
    """logger.wandb.log_model -> false | reference | best | all (ConfigError otherwise)."""
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in LOG_MODEL_MODES:
        raise ConfigError(f"logger.wandb.log_model={value!r} is not one of false, reference, "
                          "best, all (see conf/logger/wandb.yaml).")
    return LOG_MODEL_MODES[key]


def run_id_for(run_folder: str | Path) -> str:
    """The W&B run id of a run folder: the id of the W&B run already there (a requeued or
    resumed attempt continues it), else a new random one (a new folder at a path used before
    must not continue the old folder's run on the server)."""
    existing = wandb_run_id(run_folder)
    if existing:
        log.info("W&B run %s: continuing the W&B run of this run folder", existing)
        return existing
    return "".join(_ID_CHARS[b % len(_ID_CHARS)] for b in os.urandom(8))


def artifact_name(prefix: str, run_folder: Path) -> str:
    """`<prefix>-<W&B run id of run_folder>`, or of the folder's name when it has no W&B run."""
    ident = wandb_run_id(run_folder) or _NAME_CHARS.sub("-", run_folder.name)
    return f"{prefix}-{ident}"[:120]


# --------------------------------------------------------------------------------------------
# W&B runs and artifacts


def _wandb_run(loggers: Iterable[Any]) -> Any | None:
    """The W&B run of the loggers (rank zero, not disabled), else None."""
    for logger in loggers:
        if isinstance(logger, LightningWandbLogger):
            run = logger.experiment
            if hasattr(run, "log_artifact") and not getattr(run, "disabled", False):
                return run
    return None


def _frozen(path: Path, run_folder: Path) -> Path:
    """A hard link (a copy where links are impossible) of `path` in <run>/wandb/lineage/, named
    by its version: what an offline record points to stays as logged until `wandb sync`."""
    stat = path.stat()
    target = run_folder / LINEAGE_DIR / f"{path.stem}.{stat.st_mtime_ns}{path.suffix}"
    if target.is_file() and target.stat().st_size == stat.st_size:
        return target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)
    return target.resolve()


def add_upload(run: Any, artifact: Any, path: Path, name: str, run_folder: Path,
               frozen: bool = False) -> None:
    """Add a file that the artifact uploads: offline a frozen link recorded by path (W&B's
    `immutable` policy; `frozen`: the file itself never changes), online W&B's own staged copy
    (`mutable`)."""
    if run.offline:
        path = path.resolve() if frozen else _frozen(path, run_folder)
        artifact.add_file(str(path), name=name, policy="immutable")
    else:
        artifact.add_file(str(path.resolve()), name=name, policy="mutable")


def declare_use(run: Any, artifact: Any) -> None:
    """Record `artifact` as an input of `run`, online and offline (see the module docstring)."""
    if not run.offline:
        run.use_artifact(artifact)
        return
    try:  # what Run.use_artifact does with a new artifact online, recorded for `wandb sync`
        run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
    except (AttributeError, TypeError) as err:  # a W&B release that changed this internal
        log.warning("W&B cannot record the use of %s offline (%s): the lineage misses it",
                    artifact.name, err)


def _new_artifact(name: str, kind: str, metadata: dict[str, Any] | None = None) -> Any:
    import wandb

    return wandb.Artifact(name, type=kind, metadata=metadata or {})


# --------------------------------------------------------------------------------------------
# the study's artifacts


def _dataset_artifact(run: Any, dataset: Any, run_folder: Path, root: Any = None) -> Any:
    """dataset-<name>: dataset.json (the settings that pick the data) and labels.csv (by
    reference) when the dataset has one."""
    from omegaconf import OmegaConf

    settings = (OmegaConf.to_container(dataset, resolve=True) if OmegaConf.is_config(dataset)
                else dict(dataset))
    assert isinstance(settings, dict)
    identity = {k: v for k, v in settings.items() if k not in _LOADER_KEYS}
    name = _NAME_CHARS.sub("-", str(settings.get("name", "data")))
    text = json.dumps(identity, sort_keys=True, indent=1, default=str) + "\n"
    digest = hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[:12]
    target = run_folder / LINEAGE_DIR / f"dataset-{name}.{digest}.json"  # named by content
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(target, "w") as handle:
            handle.write(text)
    artifact = _new_artifact(f"dataset-{name}", "dataset", {"name": settings.get("name")})
    add_upload(run, artifact, target, "dataset.json", run_folder, frozen=True)
    data_root = root or settings.get("root")
    labels = Path(str(data_root)).expanduser() / "labels.csv" if data_root else None
    if labels is not None and labels.is_file():
        artifact.add_reference(labels.resolve().as_uri(), name="labels.csv")
    return artifact


def _checkpoint_reference(checkpoint: Path) -> Any:
    """model-<training run id> holding the checkpoint by reference, as its training run logs it."""
    artifact = _new_artifact(artifact_name("model", run_of(checkpoint)), "model")
    artifact.add_reference(checkpoint.resolve().as_uri(), name="model.ckpt")
    return artifact


def _eval_outputs(run_folder: Path) -> list[Path]:
    return [run_folder / name for name in EVAL_OUTPUTS if (run_folder / name).is_file()]


def declare_training_inputs(loggers: Sequence[Any], dataset: Any, run_folder: Path) -> None:
    """A training run uses its dataset."""
    run = _wandb_run(loggers)
    if run is not None:
        declare_use(run, _dataset_artifact(run, dataset, Path(run_folder)))


def declare_evaluation_inputs(loggers: Sequence[Any], cfg: Any, checkpoint: Path) -> None:
    """An evaluation run uses its dataset and the training run's checkpoint artifact."""
    run = _wandb_run(loggers)
    if run is None:
        return
    folder = Path(cfg.paths.output_dir)
    root = (cfg.get("data") or {}).get("root")
    declare_use(run, _dataset_artifact(run, cfg.dataset, folder, root))
    declare_use(run, _checkpoint_reference(Path(checkpoint)))


def log_evaluation_outputs(loggers: Sequence[Any], run_folder: Path) -> None:
    """An evaluation run logs eval-<run id>: its metrics.json and per_image.csv."""
    run = _wandb_run(loggers)
    files = _eval_outputs(Path(run_folder))
    if run is None or not files:
        return
    artifact = _new_artifact(f"eval-{run.id}", "evaluation", {"run_folder": str(run_folder)})
    for path in files:
        add_upload(run, artifact, path, path.name, Path(run_folder))
    run.log_artifact(artifact)


def declare_report_inputs(loggers: Sequence[Any], eval_run_folders: Iterable[Path]) -> None:
    """A report run uses the eval-<run id> of each evaluation run it read (by reference)."""
    run = _wandb_run(loggers)
    if run is None:
        return
    for folder in eval_run_folders:
        files = _eval_outputs(Path(folder))
        if not files:
            continue
        artifact = _new_artifact(artifact_name("eval", Path(folder)), "evaluation")
        for path in files:
            artifact.add_reference(path.resolve().as_uri(), name=path.name)
        declare_use(run, artifact)


# --------------------------------------------------------------------------------------------
# the logger


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger with this project's run id and checkpoint artifacts.

    - `id` (unless given): the run folder's own W&B run (`run_id_for`); Lightning already
      passes resume="allow", so a requeued attempt continues that run when online.
    - `log_model`: false | reference | best | all. The checkpoint artifact is `model-<run id>`
      (file `model.ckpt`, aliases best / last); offline the files are frozen links (see the
      module docstring), which Lightning's own log_model (copies in the user's home) is not.
    """

    def __init__(self, *args: Any, log_model: Any = False, **kwargs: Any) -> None:
        self._model_mode = log_model_mode(log_model)
        save_dir = kwargs.get("save_dir") or kwargs.get("dir")
        if kwargs.get("id") is None and kwargs.get("version") is None and save_dir:
            kwargs["id"] = run_id_for(save_dir)
        super().__init__(*args, log_model=False, **kwargs)
        self._run_folder = Path(save_dir) if save_dir else Path.cwd()
        self._watched: dict[int, Any] = {}
        self._logged: set[tuple[str, int]] = set()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._model_mode == "all":
            self._log_checkpoints(checkpoint_callback, every_file=True)
        elif self._model_mode != "false":
            self._watched[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "success" and self._experiment is not None:
            for callback in self._watched.values():
                self._log_checkpoints(callback, every_file=False)

    def _log_checkpoints(self, callback: Any, every_file: bool) -> None:
        best = getattr(callback, "best_model_path", "") or ""
        paths = {best: ["best"]} if best else {}
        last = getattr(callback, "last_model_path", "") or ""
        if every_file and last and last != best:
            paths[last] = ["last"]
        score = getattr(callback, "best_model_score", None)
        for path_str, aliases in paths.items():
            path = Path(path_str)
            if not path.is_file():
                continue
            version = (str(path.resolve()), path.stat().st_mtime_ns)
            if version in self._logged:
                continue
            self._logged.add(version)
            metadata = {"original_filename": path.name, "run_folder": str(self._run_folder),
                        "monitor": getattr(callback, "monitor", None),
                        "best_score": float(score) if score is not None else None}
            self._log_checkpoint(path, aliases, metadata)

    def _log_checkpoint(self, path: Path, aliases: list[str], metadata: dict[str, Any]) -> None:
        run = self.experiment
        artifact = _new_artifact(f"model-{run.id}", "model", metadata)
        if self._model_mode == "reference":
            artifact.add_reference(path.resolve().as_uri(), name="model.ckpt")
        else:
            add_upload(run, artifact, path, "model.ckpt", self._run_folder)
        run.log_artifact(artifact, aliases=aliases)
