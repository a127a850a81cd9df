"""Upload a study's W&B offline runs: `python -m xai_bench.sync sweep=DIR [dry_run=true]`.

Thin entry point: Hydra composes conf/sync.yaml; xai_bench.tracking.sync finds every offline run
below `sweep` (a sweep folder, a study's outputs, one run folder), skips those `wandb sync`
already uploaded, and uploads the others in lineage order (training, evaluation, report runs),
listing what it did. `--dry-run` is accepted for `dry_run=true`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from xai_bench.tracking.sync import (
    SyncOutcome,
    find_runs,
    summary_line,
    sync_runs,
    wandb_command,
)
from xai_bench.utils.errors import ConfigError, XaiBenchError
from xai_bench.utils.task import run_entry

USAGE = "pass sweep=<a folder holding run folders with W&B offline runs (<run>/wandb/)>"


def sync(cfg: DictConfig) -> list[SyncOutcome]:
    """List the folder's offline runs and upload the pending ones (or say what it would do)."""
    if OmegaConf.is_missing(cfg, "sweep"):
        raise ConfigError(f"no sweep given: {USAGE}.")
    root = Path(str(cfg.sweep)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"sweep={cfg.sweep} is not a folder: {USAGE}.")
    runs = find_runs(root, include_synced=bool(cfg.get("include_synced")))
    if not runs:
        print(f"No W&B offline runs below {root}.")
        return []
    dry_run = bool(cfg.get("dry_run"))
    name = str(cfg.get("wandb_command") or "wandb")
    try:
        command = wandb_command(name)
    except ConfigError:
        if not dry_run:
            raise
        command = [name]
    if not dry_run and any(run.pending for run in runs) and cfg.get("check_server", True):
        _check_server()
    outcomes = sync_runs(runs, command, dry_run=dry_run, project=cfg.get("project"),
                         entity=cfg.get("entity"))
    for outcome in outcomes:
        print(outcome.line())
    print(("Dry run, nothing uploaded: " if dry_run else "") + summary_line(outcomes) + ".")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise XaiBenchError(
            f"{len(failed)} of {len(outcomes)} runs were not uploaded (listed above as failed); "
            "the others were. Fix the cause and run the same command again: uploaded runs are "
            "skipped.")
    return outcomes


def _check_server() -> None:
    """Stop in seconds, before any upload, when the W&B server cannot be reached (`wandb sync`
    itself retries for minutes per run)."""
    from xai_bench.utils.instantiate import check_wandb_reachable, wandb_base_url  # Lightning

    try:
        check_wandb_reachable()
    except XaiBenchError as err:
        reason = str(err).split(" (", 1)[-1].split(")", 1)[0]
        raise XaiBenchError(
            f"the W&B server {wandb_base_url()} cannot be reached from here ({reason}): run the "
            "sync where it can be (a login node, a machine with network access), or set "
            "WANDB_BASE_URL to your server. Nothing was uploaded.") from None


@hydra.main(version_base="1.3", config_path="../conf", config_name="sync")
def main(cfg: DictConfig) -> Any:
    return run_entry(sync, cfg)


def hydra_argv(argv: list[str]) -> list[str]:
    """`--dry-run` (the usual flag) as the Hydra override `dry_run=true`."""
    return [("dry_run=true" if arg == "--dry-run" else arg) for arg in argv]


if __name__ == "__main__":
    sys.argv = hydra_argv(sys.argv)
    main()
