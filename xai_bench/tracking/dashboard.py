"""A study group's W&B workspace: `python -m xai_bench.dashboard group=<group>`.

The W&B keys the jobs log are named once, below (the registry); the workspace's panels are
built from those names and from what the group's run folders say was run (grid rows, methods,
baselines, metrics, which report tables exist), never from the keys W&B recorded, so
tests/test_dashboard.py can check every panel against the keys of real offline runs and the
dashboard cannot drift from the logging. The spec (sections of panels with the keys they plot)
is plain JSON, written offline; online it becomes a wandb_workspaces Workspace and is saved.

A workspace has one run set: its sections cannot hold different runs, so the grid rows are
the run set's groups (config dataset.name x init.name): every panel draws a line or bar per
grid row, the seeds of a row averaged.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xai_bench.tracking.records import (
    EvaluationSummary,
    RecordError,
    TrainingRecord,
    read_plain_config,
)
from xai_bench.tracking.run_folder import CONFIG_FILE, atomic_write_text
from xai_bench.utils.errors import ConfigError

__all__ = [
    "SPEC_FILE",
    "DashboardSpec",
    "GroupFacts",
    "Panel",
    "Section",
    "build_spec",
    "eval_key",
    "overlay_key",
    "report_metric_key",
    "save_workspace",
    "scan_group",
    "to_workspace",
]

# ---------------------------------------------------------------------------------------------
# the registry: every W&B key the jobs log, named once

EPOCH = "epoch"  # Lightning adds it to every row logged per epoch
GLOBAL_STEP = "trainer/global_step"
TRAIN_LOSS = "train/loss"  # logged per step and per epoch: Lightning appends _step / _epoch
TRAIN_LOSS_STEP = f"{TRAIN_LOSS}_step"
TRAIN_LOSS_EPOCH = f"{TRAIN_LOSS}_epoch"
TRAIN_ACC = "train/acc"
TRAIN_LR = "train/lr"
BEST_EPOCH = "best_epoch"
# a split's metrics: the prefix + the names of metrics.json's `val` / `test` entries
VAL_PREFIX = "val/"
TEST_PREFIX = "test/"
# evaluation: eval/<classification metric>, eval/<method>/<metric> (flat_scalars), tables, images
EVAL_PREFIX = "eval"
EVAL_SCORES = "eval/scores"  # the run's table: a row per method and baseline, a column per metric
EVAL_PER_IMAGE = "eval/per_image"  # every image's scores, all methods
EVAL_OVERLAYS = "eval/overlays"
# report: the long table, one wide table per metric, the trust and significance tables, images
REPORT_PREFIX = "report"
REPORT_TABLE = "report/table"
REPORT_TRUST = "report/trust"
REPORT_SIGNIFICANCE = "report/significance"
REPORT_FRIEDMAN = "report/friedman"
REPORT_AGREEMENT = "report/agreement"
REPORT_PLOTS = "report/plots"
REPORT_CD = "report/cd"


def eval_key(method: str | None, metric: str) -> str:
    """eval/<method>/<metric>, or eval/<metric> for a classification metric (method None)."""
    return f"{EVAL_PREFIX}/{metric}" if method is None else f"{EVAL_PREFIX}/{method}/{metric}"


def overlay_key(method: str) -> str:
    return f"{EVAL_OVERLAYS}/{method}"


def report_metric_key(metric: str) -> str:
    return f"{REPORT_PREFIX}/{metric}"


# what the report folder holds -> the W&B table the report logged with it
_REPORT_SECTIONS = {"paired": REPORT_SIGNIFICANCE, "paired_seed": REPORT_SIGNIFICANCE,
                    "friedman": REPORT_FRIEDMAN, "nemenyi": REPORT_FRIEDMAN,
                    "agreement": REPORT_AGREEMENT}
# run folders' sub-folders that never hold a run of the group (pruned while searching)
_PRUNE = {"wandb", "checkpoints", "overlays", "assets", "plots", "attempts", ".submitit"}
SPEC_FILE = "workspace.json"
# config keys that training and evaluation runs both log (an evaluation copies its training
# run's dataset, init and model), pinned as columns of the runs table
COLUMNS = ("dataset.name", "init.name", "model.arch")

# ---------------------------------------------------------------------------------------------
# what the group's run folders say


@dataclass
class GroupFacts:
    """What ran in a W&B group, read from its run folders (config.yaml, metrics.json, the
    report's files)."""

    group: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # grid rows: (dataset, init)
    val: list[str] = field(default_factory=list)  # metric names of the validation split
    test: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    # metric -> the methods and baselines with a finite value (a NaN is never logged)
    scores: dict[str, list[str]] = field(default_factory=dict)
    classification: list[str] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)  # methods / baselines with overlay images
    report_tables: list[str] = field(default_factory=list)  # W&B keys of the report's tables
    report_media: list[str] = field(default_factory=list)
    # (entity, project) the runs logged to, and how many runs of each task were found
    destinations: set[tuple[str | None, str | None]] = field(default_factory=set)
    runs: dict[str, int] = field(default_factory=dict)


def _add(items: list[str], values: Iterable[str]) -> None:
    items.extend(v for v in values if v not in items)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _get(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, dict) else None  # type: ignore[assignment]
    return values


def _run_folders(root: Path) -> Iterator[Path]:
    """Folders below `root` holding a config.yaml (run folders), W&B's and others pruned."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _PRUNE)
        if CONFIG_FILE in files:
            yield Path(folder)


def _add_training(facts: GroupFacts, folder: Path, values: dict[str, Any]) -> None:
    row = (str(_get(values, "dataset.name")), str(_get(values, "init.name")))
    if row not in facts.rows:
        facts.rows.append(row)
    try:
        record = TrainingRecord.read(folder)
    except RecordError:  # failed or running: its curves are there, its results not yet
        return
    _add(facts.val, (k for k, v in (record.val or {}).items() if _finite(v)))
    _add(facts.test, (k for k, v in (record.test or {}).items() if _finite(v)))


def _add_evaluation(facts: GroupFacts, folder: Path) -> None:
    try:
        summary = EvaluationSummary.read(folder)
    except RecordError:
        return
    _add(facts.methods, (m for m in summary.methods if m not in summary.baselines))
    _add(facts.baselines, summary.baselines)
    _add(facts.classification,
         (k for k, v in summary.classification.items() if _finite(v.get("value"))))
    for method, scores in summary.methods.items():
        for metric, stats in scores.metrics.items():
            if _finite(stats.get("value")):
                _add(facts.scores.setdefault(metric, []), [method])
    # evaluate logs a method's overlay PNGs as one image list per method
    overlays = folder / "overlays"
    if overlays.is_dir():
        _add(facts.overlays, sorted(p.name for p in overlays.iterdir()
                                    if p.is_dir() and any(p.glob("*.png"))))


def _add_report(facts: GroupFacts, folder: Path) -> None:
    path = folder / "report.csv"
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    tables = [REPORT_TABLE]
    _add(tables, (report_metric_key(r["metric"]) for r in rows
                  if r.get("section") == "table" and r.get("metric")))
    if (folder / "trust.csv").is_file():
        tables.append(REPORT_TRUST)
    _add(tables, (_REPORT_SECTIONS[s] for r in rows
                  if (s := r.get("section") or "") in _REPORT_SECTIONS))
    _add(facts.report_tables, tables)
    for key, sub in ((REPORT_PLOTS, "plots"), (REPORT_CD, "significance")):
        if any((folder / "assets" / sub).glob("*.png")):
            _add(facts.report_media, [key])


def scan_group(root: str | Path, group: str) -> GroupFacts:
    """The facts of the runs below `root` that logged to the W&B group `group`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"runs={root} is not a folder: pass the folder holding the study's "
                          "run folders (outputs/, or a sweep folder).")
    facts = GroupFacts(group=group)
    for folder in _run_folders(root):
        try:  # a cheap test first: most folders belong to other groups
            if group.encode() not in (folder / CONFIG_FILE).read_bytes():
                continue
        except OSError:
            continue
        values = read_plain_config(folder)
        wandb = _get(values or {}, "logger.wandb")
        if not isinstance(wandb, dict) or str(wandb.get("group")) != group:
            continue  # another group, or a run without a W&B logger (logger=none)
        task = str(values.get("task_name")) if values else ""
        if task == "train":
            _add_training(facts, folder, values or {})
        elif task == "evaluate":
            _add_evaluation(facts, folder)
        elif task == "report":
            _add_report(facts, folder)
        else:  # meta-evaluations, this command's own folders
            continue
        facts.runs[task] = facts.runs.get(task, 0) + 1
        facts.destinations.add((wandb.get("entity"), wandb.get("project")))
    if not facts.runs:
        raise ConfigError(f"no training, evaluation or report run of the W&B group {group} "
                          f"below {root}: check group= (each job logs its group; config.yaml "
                          "logger.wandb.group) and pass runs=<the folder holding its run "
                          "folders>.")
    return facts


# ---------------------------------------------------------------------------------------------
# the spec


@dataclass
class Panel:
    """One panel: kind line | bar | table | media, and every W&B key it shows."""

    kind: str
    title: str
    keys: list[str]
    x: str | None = None


@dataclass
class Section:
    name: str
    panels: list[Panel]


@dataclass
class DashboardSpec:
    """The workspace, independent of wandb_workspaces: what is written offline."""

    name: str
    group: str
    entity: str | None
    project: str | None
    group_by: list[str]  # the run set's grouping (config keys): the grid rows
    columns: list[str]  # config keys pinned as columns of the runs table
    sections: list[Section]

    def keys(self) -> set[str]:
        """Every W&B key a panel shows, x axes included."""
        panels = [p for s in self.sections for p in s.panels]
        return {k for p in panels for k in p.keys} | {p.x for p in panels if p.x}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DashboardSpec:
        sections = [Section(s["name"], [Panel(**p) for p in s["panels"]])
                    for s in data["sections"]]
        return cls(**{**data, "sections": sections})

    def write(self, path: str | Path) -> Path:
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


def _per_row(mark: str, rows: str) -> str:
    return f" (a {mark} per {rows})" if rows else ""


def _training_sections(facts: GroupFacts, rows: str) -> list[Section]:
    if not facts.runs.get("train"):
        return []
    val = [n for n in facts.val if n not in ("loss", "acc")]
    curves = [Panel("line", "loss", [TRAIN_LOSS_EPOCH, *_val(facts, "loss")], EPOCH),
              Panel("line", "accuracy", [TRAIN_ACC, *_val(facts, "acc")], EPOCH),
              *(Panel("line", f"{VAL_PREFIX}{n}", [f"{VAL_PREFIX}{n}"], EPOCH) for n in val),
              Panel("line", "learning rate", [TRAIN_LR], EPOCH),
              Panel("line", "loss per step", [TRAIN_LOSS_STEP], GLOBAL_STEP)]
    sections = [Section(f"Training curves{_per_row('line', rows)}", curves)]
    results = [Panel("bar", f"{TEST_PREFIX}{n}", [f"{TEST_PREFIX}{n}"]) for n in facts.test]
    if facts.val:  # metrics.json written: training finished, best_epoch logged
        results.append(Panel("bar", "best epoch (validation loss)", [BEST_EPOCH]))
    if results:
        sections.append(Section(f"Training results{_per_row('bar', rows)}", results))
    return sections


def _val(facts: GroupFacts, name: str) -> list[str]:
    return [f"{VAL_PREFIX}{name}"] if name in facts.val else []


def _evaluation_sections(facts: GroupFacts, metrics: list[str] | None,
                         rows: str) -> list[Section]:
    if not facts.runs.get("evaluate"):
        return []
    chosen = list(facts.scores) if metrics is None else [m for m in metrics if m in facts.scores]
    order = [*facts.methods, *facts.baselines]
    classification = [eval_key(None, n) for n in facts.classification]
    panels = [Panel("bar", "classification", classification)] if classification else []
    for metric in chosen:
        scored = [m for m in order if m in facts.scores[metric]]
        panels.append(Panel("bar", metric, [eval_key(m, metric) for m in scored]))
    sections = [Section(f"Evaluation: methods and baselines{_per_row('bar', rows)}", panels),
                Section("Evaluation: tables",
                        [Panel("table", "scores per method and baseline", [EVAL_SCORES]),
                         Panel("table", "per-image scores", [EVAL_PER_IMAGE])])]
    overlays = [Panel("media", m, [overlay_key(m)]) for m in order if m in facts.overlays]
    if overlays:
        sections.append(Section("Overlays", overlays))
    return sections


def _report_sections(facts: GroupFacts) -> list[Section]:
    panels = [Panel("table", k.split("/", 1)[1], [k]) for k in facts.report_tables]
    panels += [Panel("media", k.split("/", 1)[1], [k]) for k in facts.report_media]
    return [Section("Report", panels)] if panels else []


def build_spec(facts: GroupFacts, *, project: str | None, entity: str | None = None,
               name: str | None = None, metrics: list[str] | None = None,
               group_by: list[str] | None = None) -> DashboardSpec:
    """The group's workspace: training curves and results, the evaluation per metric (methods
    and baselines side by side), per-image tables, overlays, the report's tables and images.
    `metrics`: the evaluation metrics given a panel (None: every metric scored)."""
    group_by = list(group_by or [])
    rows = " / ".join(group_by)
    sections = [*_training_sections(facts, rows), *_evaluation_sections(facts, metrics, rows),
                *_report_sections(facts)]
    return DashboardSpec(name=name or f"xai_bench {facts.group}", group=facts.group,
                         entity=entity, project=project, group_by=group_by,
                         columns=list(COLUMNS), sections=sections)


# ---------------------------------------------------------------------------------------------
# the W&B workspace (wandb-workspaces)


def _panel(panel: Panel) -> Any:
    import wandb_workspaces.reports.v2 as wr

    if panel.kind == "line":
        return wr.LinePlot(title=panel.title, x=panel.x or "Step", y=list(panel.keys))
    if panel.kind == "bar":
        return wr.BarPlot(title=panel.title, metrics=list(panel.keys), orientation="v")
    if panel.kind == "table":
        (key,) = panel.keys
        return wr.WeavePanelSummaryTable(table_name=key, layout=wr.Layout(w=24, h=12))
    if panel.kind == "media":
        return wr.MediaBrowser(title=panel.title, media_keys=list(panel.keys), num_columns=4)
    raise ValueError(f"unknown panel kind {panel.kind!r}")


def _config_column(key: str) -> str:
    """A nested config key as a runs-table column: W&B stores {"dataset": {"value": {...}}}."""
    first, _, rest = key.partition(".")
    return f"config:{first}.value" + (f".{rest}" if rest else "")


def to_workspace(spec: DashboardSpec, entity: str, project: str) -> Any:
    """The spec as a wandb_workspaces Workspace: the run set is the group's runs, grouped."""
    import wandb_workspaces.workspaces as ws

    sections = [ws.Section(name=s.name, panels=[_panel(p) for p in s.panels], is_open=True)
                for s in spec.sections]
    runset = ws.RunsetSettings(filters=[ws.Metric("Group") == spec.group],
                               groupby=[ws.Config(k) for k in spec.group_by],
                               pinned_columns=[_config_column(k) for k in spec.columns])
    return ws.Workspace(entity=entity, project=project, name=spec.name, sections=sections,
                        runset_settings=runset)


def save_workspace(spec: DashboardSpec, entity: str, project: str,
                   url: str | None = None) -> Any:
    """Save the workspace as a new W&B view, or into the saved view at `url` (its sections,
    run set and name replaced); returns the saved Workspace."""
    import wandb_workspaces.workspaces as ws

    workspace = to_workspace(spec, entity, project)
    if url:
        saved = ws.Workspace.from_url(url)
        if (saved.entity, saved.project) != (entity, project):
            raise ConfigError(f"url={url} is a workspace of {saved.entity}/{saved.project}, "
                              f"not of {entity}/{project} where the group's runs are.")
        saved.name, saved.sections = workspace.name, workspace.sections
        saved.runset_settings = workspace.runset_settings
        workspace = saved
    return workspace.save()


def resolve_entity(configured: str | None) -> str:
    """logger.wandb.entity, else the W&B settings' entity (WANDB_ENTITY, `wandb login`'s
    default), as wandb.init would pick it."""
    if configured:
        return configured
    import wandb

    api = wandb.Api()
    entity = api.settings.get("entity") or api.default_entity
    if not entity:
        raise ConfigError("no W&B entity: pass logger.wandb.entity=<team or user> (or set "
                          "WANDB_ENTITY).")
    return str(entity)
