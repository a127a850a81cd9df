"""Which metrics can be trusted on each model: the meta-evaluation runs
(`python -m xai_bench.meta_evaluate`, Hedström et al. 2023) found in or beside a sweep, as a
report section (Markdown, LaTeX, HTML), trust.csv and the W&B table `report/trust`.

A metric column is trusted on a model when its scores stay put under minor perturbations of the
model and its inputs (noise resilience, NR) and move under disruptive ones (adversarial
reactivity, AR); docs/meta-evaluation.md defines the scores and the pass marks. The section says
it per model, because a metric that is reliable on one model can be fooled on another.
"""

from __future__ import annotations

import csv
import html
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from xai_bench.report.eval_runs import SkippedRun
from xai_bench.tracking.records import MetaEvaluationRecord, RecordError, read_plain_config
from xai_bench.tracking.run_folder import atomic_open

__all__ = ["TRUST_COLUMNS", "TrustedModel", "read_trust", "trust_html", "trust_markdown",
           "trust_rows", "trust_tex", "write_trust_csv"]

TITLE = "Which metrics can be trusted on this model"
INTRO = ("Meta-evaluation of the metrics (Hedström et al. 2023): a metric column passes when its "
         "scores stay put under minor perturbations of the model and inputs (noise resilience, "
         "NR: IAC_NR, IEC_NR) and move under disruptive ones (adversarial reactivity, AR: "
         "IAC_AR, IEC_AR); MC is the mean of the four. Only trusted columns should carry a "
         "study's conclusions on that model.")
SCORES = ("IAC_NR", "IEC_NR", "IAC_AR", "IEC_AR", "MC")
TABLE_HEADER = ("column", "test", *SCORES, "NR", "AR", "verdict")
TRUST_COLUMNS = ("model", "dataset", "init", "arch", "metric", "column", "higher_is_better",
                 "space", *SCORES, "images_nr", "images_ar", "NR", "AR", "verdict", "run")


@dataclass
class TrustedModel:
    """One meta-evaluation run: the model it judged the metrics on, and its record."""

    run_dir: Path
    dataset: str
    init: str
    arch: str
    record: MetaEvaluationRecord

    @property
    def label(self) -> str:
        return f"{self.dataset} / {self.init} ({self.arch})"

    @property
    def plots(self) -> list[Path]:
        return sorted((self.run_dir / "plots").glob("*.png"))

    def summary(self) -> str:
        """One sentence: trusted columns, then the others with the tests they fail."""
        verdicts = self.record.verdicts()
        trusted = [c for c, v in verdicts.items() if v == "pass"]
        failing: dict[str, list[str]] = {}
        for row in self.record.rows:
            for test in ("NR", "AR"):
                if row.get(test) == "fail":
                    failing.setdefault(str(row.get("column")), []).append(
                        f"{test} ({row.get('space')})")
        undecided = [c for c, v in verdicts.items() if v not in ("pass", "fail")]
        parts = [f"Trusted: {', '.join(trusted) if trusted else 'none'}."]
        if failing:
            parts.append("Not trusted: " + "; ".join(
                f"{c} fails {', '.join(tests)}" for c, tests in failing.items()) + ".")
        if undecided:
            parts.append(f"Not judged (n/a): {', '.join(undecided)}.")
        return " ".join(parts)

    def facts(self) -> str:
        r = self.record
        return (f"{len(r.methods)} methods ({', '.join(r.methods)}), {r.images} images, "
                f"{r.draws} draws per test, tests: {', '.join(r.spaces)}")


def _name(cfg: dict[str, Any], section: str, key: str = "name") -> str:
    node = cfg.get(section)
    return str(node.get(key, "?")) if isinstance(node, dict) else "?"


def read_trust(folders: Iterable[Path]) -> tuple[list[TrustedModel], list[SkippedRun]]:
    """The meta-evaluation runs in `folders` (duplicates dropped), and those without a usable
    meta_evaluation.json (a failed or unfinished job): never fatal to the report."""
    models: list[TrustedModel] = []
    skipped: list[SkippedRun] = []
    for folder in dict.fromkeys(Path(f).resolve() for f in folders):
        try:
            record = MetaEvaluationRecord.read(folder)
        except RecordError as err:
            skipped.append(SkippedRun(folder, f"meta-evaluation without a result: {err}"))
            continue
        cfg = read_plain_config(folder) or {}
        models.append(TrustedModel(folder, _name(cfg, "dataset"), _name(cfg, "init"),
                                   _name(cfg, "model", "arch"), record))
    models.sort(key=lambda m: (m.dataset, m.init, m.arch, str(m.run_dir)))
    return models, skipped


def _number(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    return f"{float(value):.{digits}f}"


def _cells(row: dict[str, Any], digits: int) -> list[str]:
    return [str(row.get("column")), str(row.get("space")),
            *(_number(row.get(s), digits) for s in SCORES),
            str(row.get("NR")), str(row.get("AR")), str(row.get("verdict"))]


def trust_rows(models: Sequence[TrustedModel]) -> list[list[Any]]:
    """Every (model, column, test) in the order of TRUST_COLUMNS (for trust.csv and W&B)."""
    rows = []
    for model in models:
        for row in model.record.rows:
            values = {"model": model.label, "dataset": model.dataset, "init": model.init,
                      "arch": model.arch, "run": str(model.run_dir), **row}
            rows.append([values.get(c) for c in TRUST_COLUMNS])
    return rows


def write_trust_csv(models: Sequence[TrustedModel], path: Path) -> Path | None:
    if not models:
        return None
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRUST_COLUMNS)
        writer.writerows(["" if v is None else v for v in row] for row in trust_rows(models))
    return path


def trust_markdown(models: Sequence[TrustedModel], digits: int = 2) -> list[str]:
    if not models:
        return []
    lines = ["", f"## {TITLE}", "", INTRO]
    for model in models:
        lines += ["", f"### {model.label}", "", f"{model.facts()}. {model.summary()}", "",
                  "| " + " | ".join(TABLE_HEADER) + " |",
                  "|" + "---|" * len(TABLE_HEADER)]
        lines += ["| " + " | ".join(_cells(row, digits)) + " |" for row in model.record.rows]
    return lines


def trust_tex(models: Sequence[TrustedModel], escape: Any, digits: int = 2) -> list[str]:
    """booktabs tables, one per model; `escape` is the report's TeX escaping."""
    lines: list[str] = []
    for index, model in enumerate(models):
        lines += [f"% {escape(TITLE)}: {escape(model.label)}", r"\begin{table}[ht]",
                  r"\centering",
                  rf"\caption{{{escape(TITLE)}: {escape(model.label)}. "
                  rf"{escape(model.summary())}}}",
                  rf"\label{{tab:trust-{index}}}",
                  r"\begin{tabular}{ll" + "r" * len(SCORES) + "lll}", r"\toprule",
                  " & ".join(escape(h) for h in TABLE_HEADER) + r" \\", r"\midrule"]
        lines += [" & ".join(escape(c) for c in _cells(row, digits)) + r" \\"
                  for row in model.record.rows]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return lines


def trust_html(models: Sequence[TrustedModel], out: Path, digits: int = 2) -> list[str]:
    """The section with each model's table and its per-metric plots (copied under
    assets/trust/<n>/ so the page stays self-contained)."""
    if not models:
        return []
    lines = [f"<h2>{html.escape(TITLE)}</h2>", f"<p>{html.escape(INTRO)}</p>"]
    for index, model in enumerate(models):
        lines += [f"<h3>{html.escape(model.label)}</h3>",
                  f"<p>{html.escape(model.facts())}. {html.escape(model.summary())}</p>",
                  "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER)
                  + "</tr>"]
        for row in model.record.rows:
            lines.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>"
                                          for c in _cells(row, digits)) + "</tr>")
        lines.append("</table>")
        plots = model.plots
        if plots:
            target = out / "assets" / "trust" / str(index)
            target.mkdir(parents=True, exist_ok=True)
            lines.append('<div class="gallery">')
            for png in plots:
                shutil.copyfile(png, target / png.name)
                src = html.escape(quote(f"assets/trust/{index}/{png.name}"))
                lines.append(f'<figure><img src="{src}" '
                             f'alt="{html.escape(png.stem)}"><figcaption>'
                             f"{html.escape(png.stem)}</figcaption></figure>")
            lines.append("</div>")
    return lines
