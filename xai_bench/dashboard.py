"""A study's W&B workspace: `python -m xai_bench.dashboard group=<W&B group>`.

Thin entry point: Hydra composes conf/dashboard.yaml; xai_bench.tracking.dashboard reads what
ran in the group from its run folders below `runs` and builds the workspace's spec, written to
<out>/workspace.json (default <runs>/dashboard/<group>). When W&B is online (WANDB_MODE=online
or logger.wandb.offline=false) the spec is saved to W&B as a workspace (wandb-workspaces), in
the logger's project and entity (null: the W&B settings' entity).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from xai_bench.tracking import resolved_config, write_config
from xai_bench.tracking.dashboard import (
    SPEC_FILE,
    GroupFacts,
    build_spec,
    resolve_entity,
    save_workspace,
    scan_group,
)
from xai_bench.tracking.resolvers import register_resolvers
from xai_bench.tracking.task import task_wrapper
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.instantiate import check_wandb_reachable, wandb_mode
from xai_bench.utils.quiet import silence_library_noise
from xai_bench.utils.rich_config import print_config_tree
from xai_bench.utils.task import run_entry

log = logging.getLogger(__name__)

USAGE = ("pass group=<the study's W&B group> (each job logs it: W&B's Group column, or "
         "logger.wandb.group in a run folder's config.yaml)")


def _folder_name(group: str) -> str:
    """A group as one folder name (W&B allows any characters in a group)."""
    return re.sub(r"[^A-Za-z0-9._@+=-]", "_", group).lstrip(".") or "_"


def _dashboard_dir(*, _root_: DictConfig) -> str:
    """hydra.run.dir: `out`, else <runs>/dashboard/<group>; a scratch folder when group is not
    given (Hydra creates the folder before the task can say what is missing)."""
    if OmegaConf.is_missing(_root_, "group"):
        return str(Path(tempfile.gettempdir()) / "xai_bench-dashboard-no-group")
    if _root_.get("out"):
        return str(_root_.out)
    return str(Path(str(_root_.runs)) / "dashboard" / _folder_name(str(_root_.group)))


register_resolvers()  # before Hydra composes conf/ (${xai.*})
OmegaConf.register_new_resolver("xai.dashboard_dir", _dashboard_dir, replace=True)


def _mode(cfg: DictConfig) -> tuple[str, str]:
    """(online | offline | disabled, why), as the jobs' W&B logger decides it."""
    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return "disabled", "no W&B logger (logger=none)"
    return wandb_mode(bool(node.get("offline", False)))


def _summary(facts: GroupFacts) -> str:
    runs = ", ".join(f"{n} {task}" for task, n in sorted(facts.runs.items()))
    return (f"{runs} run(s); {len(facts.rows)} grid row(s), methods "
            f"{', '.join(facts.methods) or '-'}, baselines {', '.join(facts.baselines) or '-'}, "
            f"{len(facts.scores)} metric(s), {len(facts.report_tables)} report table(s)")


@task_wrapper
def dashboard(cfg: DictConfig) -> dict[str, Any]:
    """Read the group's runs, write the workspace's spec, save it to W&B when online."""
    if OmegaConf.is_missing(cfg, "group"):
        raise ConfigError(f"no group given: {USAGE}.")
    mode, why = _mode(cfg)
    log.info("W&B mode: %s, from %s", mode, why)
    if mode == "online":
        check_wandb_reachable()  # refused in seconds, before anything is written
    facts = scan_group(str(cfg.runs), str(cfg.group))
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    node = (cfg.get("logger") or {}).get("wandb") or {}
    entity, project = node.get("entity"), node.get("project")
    others = sorted(f"{e or '<default entity>'}/{p}" for e, p in facts.destinations
                    if (e, p) != (entity, project) and not (e is None and p == project))
    if others:
        log.warning("runs of group %s logged to %s, the workspace goes to %s/%s: pass "
                    "logger.wandb.project=... (and logger.wandb.entity=...) to follow them",
                    cfg.group, ", ".join(others), entity or "<default entity>", project)
    metrics = cfg.get("metrics")
    if metrics is not None:
        metrics = [str(m) for m in ([metrics] if isinstance(metrics, str) else metrics)]
    spec = build_spec(facts, project=project, entity=entity, name=cfg.get("name"),
                      metrics=metrics, group_by=[str(k) for k in cfg.get("group_by") or []])
    out = Path(cfg.paths.output_dir)
    write_config(resolved_config(cfg), out)
    path = spec.write(out / SPEC_FILE)
    log.info("group %s: %s; %d panels in %d sections", cfg.group, _summary(facts),
             sum(len(s.panels) for s in spec.sections), len(spec.sections))
    if mode != "online":
        print(f"Workspace spec, not saved to W&B (W&B {mode}, from {why}): {path}")
        return {"spec": str(path)}
    if not project:
        raise ConfigError("logger.wandb.project is not set: pass the project the group's runs "
                          "logged to, e.g. logger.wandb.project=xai_bench.")
    entity = resolve_entity(entity)
    save_workspace(spec, entity, str(project), cfg.get("url"))
    print(f"Workspace '{spec.name}' saved to W&B ({entity}/{project}); its spec: {path}")
    return {"spec": str(path), "entity": entity, "project": str(project)}


@hydra.main(version_base="1.3", config_path="../conf", config_name="dashboard")
def main(cfg: DictConfig) -> None:
    silence_library_noise()
    run_entry(dashboard, cfg)


if __name__ == "__main__":
    main()
