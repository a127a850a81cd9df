"""The study table as files: report.csv (long format, for analysis), report.md (for reading and
pasting), report.tex (booktabs fragments for a paper). The HTML page reuses the cell texts."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xai_bench.report.study import Cell, SkippedRun, StudyTable
from xai_bench.report.trust import (
    TRUST_COLUMNS,
    TrustedModel,
    trust_markdown,
    trust_rows,
    trust_tex,
)
from xai_bench.tracking.run_folder import atomic_open, atomic_write_text

__all__ = [
    "LONG_COLUMNS",
    "footnotes",
    "log_to_loggers",
    "long_rows",
    "metric_title",
    "write_csv",
    "write_markdown",
    "write_tex",
]

LONG_COLUMNS = ("dataset", "init", "method", "kind", "metric", "value", "ci_low", "ci_high", "n",
                "n_runs", "runs_min", "runs_max", "best", "beats_random", "published", "delta",
                "accuracy")
DAGGER = "\u2020"
MISSING = "\u2013"


def metric_title(metric: str) -> str:
    """A readable name: pointing_game -> Pointing game, iou@10 -> IoU (top 10%)."""
    if metric == "pointing_game":
        return "Pointing game"
    if metric in ("iou@mean", "iou@max"):
        return f"IoU ({metric[4:]} over q)"
    if metric.startswith("iou@"):
        return f"IoU (top {metric[4:]}%)"
    return metric


def fmt(value: float | None, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def long_rows(table: StudyTable) -> list[dict[str, Any]]:
    """One row per dataset x init x method-or-baseline x metric (tidy data)."""
    rows = []
    for row in table.rows:
        for entry in table.entries:
            for metric in table.metrics:
                cell = table.cell(row, entry, metric)
                if cell is None:
                    continue
                rows.append({
                    "dataset": row[0], "init": row[1], "method": entry,
                    "kind": table.kind(entry), "metric": metric, "value": cell.value,
                    "ci_low": cell.ci_low, "ci_high": cell.ci_high, "n": cell.n,
                    "n_runs": cell.n_runs, "runs_min": cell.runs_min, "runs_max": cell.runs_max,
                    "best": cell.best if table.kind(entry) == "method" else None,
                    "beats_random": cell.beats_random, "published": cell.published,
                    "delta": cell.delta, "accuracy": table.accuracy.get(row),
                })
    return rows


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_csv(table: StudyTable, path: str | Path) -> Path:
    path = Path(path)
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LONG_COLUMNS)
        writer.writeheader()
        for row in long_rows(table):
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return path


# ---------------------------------------------------------------------------------------------
# cell texts shared by markdown, tex and html


def cell_parts(cell: Cell | None, digits: int = 2) -> tuple[str, str, str]:
    """(value, mark, detail): the number, a dagger when it does not beat random, and the
    interval / range over runs / published value as one bracketed text."""
    if cell is None or cell.value is None:
        return MISSING, "", ""
    mark = DAGGER if cell.beats_random is False else ""
    details = []
    if cell.n_runs > 1:
        spread = (f": {fmt(cell.runs_min, digits)}{MISSING}{fmt(cell.runs_max, digits)}"
                  if cell.runs_min is not None else "")
        details.append(f"({cell.n_runs} runs{spread})")
    elif cell.ci_low is not None and cell.ci_high is not None:
        details.append(f"[{fmt(cell.ci_low, digits)}, {fmt(cell.ci_high, digits)}]")
    if cell.published is not None:
        details.append(f"(pub. {fmt(cell.published, digits)})")
    return fmt(cell.value, digits), mark, " ".join(details)


def header_cells(table: StudyTable) -> list[str]:
    accuracy = ["test acc."] if any(v is not None for v in table.accuracy.values()) else []
    return ["dataset", "init", *accuracy, *table.methods,
            *(f"{b} (baseline)" for b in table.baselines)]


def footnotes(table: StudyTable, incomplete: Sequence[SkippedRun] = ()) -> list[str]:
    """What the marks mean, what was averaged or derived, and which runs are missing."""
    lower = [m for m in table.metrics if table.lower_is_better(m)]
    neutral = [m for m in table.metrics if table.direction(m) is None]
    notes = [
        "Bold: the best method of the row (baselines excluded; ties all bold). Higher is better"
        + (f" except for {', '.join(lower)} (lower is better)." if lower else ".")
        + (f" {', '.join(neutral)}: no direction (no bold, no {DAGGER})." if neutral else ""),
        f"{DAGGER}: not above the random baseline (a uniformly random map) on the same images: "
        "the method localises no better than chance. Trivial baselines matter: a constant map "
        "scores pointing game 1 on every non-empty mask under the tie rule.",
        "[a, b]: bootstrap interval over images. Baselines are scored by every evaluation run on "
        "its images; runs of one checkpoint share them.",
    ]
    if table.averaged:
        notes.append("(k runs: min-max): the mean of k runs (seeds or checkpoints) of the same "
                     "dataset, initialisation and method; the range across runs replaces the "
                     "bootstrap interval.")
    if table.compare == "study":
        notes.append("pub.: the reference study's published value (its Grad-CAM beside "
                     "gradcam_study, else gradcam); delta = ours - published in report.csv.")
    notes.extend(table.notes)
    if incomplete:
        notes.append(f"{len(incomplete)} evaluation run(s) incomplete, left out: "
                     + "; ".join(f"{s.run_dir.name} ({s.reason})" for s in incomplete))
    return notes


# ---------------------------------------------------------------------------------------------
# markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def md_cell(cell: Cell | None, kind: str, digits: int = 2) -> str:
    value, mark, detail = cell_parts(cell, digits)
    if cell is not None and cell.best and kind == "method":
        value = f"**{value}**"
    return " ".join(p for p in (value + mark, detail) if p)


def markdown_table(table: StudyTable, metric: str, digits: int = 2) -> list[str]:
    header = header_cells(table)
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join([":--", ":--"] + ["--:"] * (len(header) - 2)) + "|"]
    with_accuracy = len(header) > 2 + len(table.entries)
    for row in table.rows:
        cells = [_md_escape(row[0]), _md_escape(row[1])]
        if with_accuracy:
            cells.append(fmt(table.accuracy.get(row), digits))
        cells += [md_cell(table.cell(row, e, metric), table.kind(e), digits) for e in table.entries]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(table: StudyTable, facts: Sequence[tuple[str, str]], path: str | Path,
                   incomplete: Sequence[SkippedRun] = (), digits: int = 2,
                   trust: Sequence[TrustedModel] = ()) -> Path:
    lines = ["# Interpretability study report", ""]
    lines += [f"- **{_md_escape(label)}**: {_md_escape(text)}" for label, text in facts]
    for metric in table.metrics:
        lines += ["", f"## {metric_title(metric)}", "", *markdown_table(table, metric, digits)]
    lines += trust_markdown(trust, digits)
    lines += ["", "## Notes", ""] + [f"- {_md_escape(n)}" for n in footnotes(table, incomplete)]
    return atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# LaTeX

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", DAGGER: r"$^\dagger$", MISSING: "--"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def tex_cell(cell: Cell | None, kind: str, digits: int = 2) -> str:
    value, mark, detail = cell_parts(cell, digits)
    value = tex_escape(value)
    if cell is not None and cell.best and kind == "method":
        value = rf"\textbf{{{value}}}"
    detail = rf" {{\scriptsize {tex_escape(detail)}}}" if detail else ""
    return value + tex_escape(mark) + detail


def tex_table(table: StudyTable, metric: str, digits: int = 2) -> list[str]:
    header = header_cells(table)
    lead = len(header) - len(table.entries)
    m, b = len(table.methods), len(table.baselines)
    group = [rf"\multicolumn{{{lead}}}{{l}}{{}}"]
    rules = []
    if m:
        group.append(rf"\multicolumn{{{m}}}{{c}}{{methods}}")
        rules.append(rf"\cmidrule(lr){{{lead + 1}-{lead + m}}}")
    if b:
        group.append(rf"\multicolumn{{{b}}}{{c}}{{baselines}}")
        rules.append(rf"\cmidrule(lr){{{lead + m + 1}-{lead + m + b}}}")
    names = header[:lead] + table.entries
    lines = [
        f"% {tex_escape(metric_title(metric))} (needs \\usepackage{{booktabs}})",
        r"\begin{table}[ht]", r"\centering",
        rf"\caption{{{tex_escape(metric_title(metric))}: bold = best method of the row, "
        r"$^\dagger$ = not above the random baseline.}",
        rf"\label{{tab:{re.sub(r'[^A-Za-z0-9]+', '-', metric)}}}",
        r"\begin{tabular}{" + "l" * lead + "r" * len(table.entries) + "}",
        r"\toprule",
        " & ".join(group) + r" \\",
        "".join(rules),
        " & ".join(tex_escape(n) for n in names) + r" \\",
        r"\midrule",
    ]
    for row in table.rows:
        cells = [tex_escape(row[0]), tex_escape(row[1])]
        if lead == 3:
            cells.append(tex_escape(fmt(table.accuracy.get(row), digits)))
        cells += [tex_cell(table.cell(row, e, metric), table.kind(e), digits)
                  for e in table.entries]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return lines


def write_tex(table: StudyTable, facts: Sequence[tuple[str, str]], path: str | Path,
              incomplete: Sequence[SkippedRun] = (), digits: int = 2,
              trust: Sequence[TrustedModel] = ()) -> Path:
    lines = ["% Interpretability study report: one booktabs table per metric; \\input{} it in a",
             "% document with \\usepackage{booktabs}.",
             *(f"% {tex_escape(label)}: {tex_escape(text)}" for label, text in facts), ""]
    for metric in table.metrics:
        lines += tex_table(table, metric, digits)
    lines += trust_tex(trust, tex_escape, digits)
    lines += [f"% {tex_escape(n)}" for n in footnotes(table, incomplete)]
    return atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# experiment loggers (W&B)


def wide_rows(table: StudyTable, metric: str) -> tuple[list[str], list[list[Any]]]:
    """One metric as columns dataset, init, accuracy, one per method and baseline (and their
    published values when compared): the table a W&B panel shows."""

    def value(row: tuple[str, str], entry: str, published: bool = False) -> float | None:
        cell = table.cell(row, entry, metric)
        return None if cell is None else (cell.published if published else cell.value)

    compared = [e for e in table.entries if any(value(r, e, True) is not None for r in table.rows)]
    columns = ["dataset", "init", "accuracy", *table.entries,
               *(f"{e} (published)" for e in compared)]
    data = [[*row, table.accuracy.get(row), *(value(row, e) for e in table.entries),
             *(value(row, e, True) for e in compared)] for row in table.rows]
    return columns, data


def log_to_loggers(loggers: Sequence[Any], table: StudyTable, plots: dict[str, Path],
                   trust: Sequence[TrustedModel] = ()) -> None:
    """The long table (key report/table), one wide table per metric (report/<metric>), the
    meta-evaluation's verdicts (report/trust) and the plots (report/plots) to every logger that
    takes them."""
    rows = long_rows(table)
    for logger in loggers:
        if hasattr(logger, "log_table"):
            logger.log_table(key="report/table", columns=list(LONG_COLUMNS),
                             data=[[row[c] for c in LONG_COLUMNS] for row in rows])
            if trust:
                logger.log_table(key="report/trust", columns=list(TRUST_COLUMNS),
                                 data=trust_rows(trust))
            for metric in table.metrics:
                columns, data = wide_rows(table, metric)
                logger.log_table(key=f"report/{metric}", columns=columns, data=data)
        if hasattr(logger, "log_image") and plots:
            logger.log_image(key="report/plots", images=[str(p) for p in plots.values()],
                             caption=list(plots))
