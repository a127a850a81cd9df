"""The study table as files: report.csv (long format, for analysis: the table's cells and every
statistical test, told apart by `section`), report.md (for reading and pasting), report.tex
(booktabs fragments for a paper). The HTML page reuses the cell texts."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xai_bench.report.known_truth import KnownTruth
from xai_bench.report.known_truth_writers import (
    KNOWN_TRUTH_COLUMNS,
    KNOWN_TRUTH_MODEL_COLUMNS,
    known_truth_markdown,
    known_truth_rows,
    known_truth_tex,
    log_known_truth,
)
from xai_bench.report.significance import Significance
from xai_bench.report.significance_writers import (
    PAIRED_COLUMNS,
    RANK_COLUMNS,
    log_significance,
    significance_markdown,
    significance_rows,
    significance_tex,
)
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
    "TABLE_COLUMNS",
    "footnotes",
    "log_to_loggers",
    "long_rows",
    "metric_title",
    "write_csv",
    "write_markdown",
    "write_tex",
]

TABLE_COLUMNS = ("dataset", "init", "method", "kind", "metric", "value", "sd", "ci_low",
                 "ci_high", "interval_rule", "n", "n_runs", "runs_min", "runs_max", "best",
                 "beats_random", "published", "delta", "accuracy", "beats_random_rule")
# report.csv: the table's cells (section "table"), the tests (section paired, paired_seed,
# friedman, nemenyi, agreement: xai_bench.report.significance.significance_rows) and the
# known-truth section (known_truth, known_truth_models) in one file
LONG_COLUMNS = tuple(dict.fromkeys((*TABLE_COLUMNS, "section", *PAIRED_COLUMNS, *RANK_COLUMNS,
                                    *KNOWN_TRUTH_COLUMNS, *KNOWN_TRUTH_MODEL_COLUMNS)))
DAGGER = "\u2020"
MISSING = "\u2013"
PLUS_MINUS = "\u00b1"


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
    """One row per dataset x init x method-or-baseline x metric (tidy data; section "table")."""
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
                    "sd": cell.sd, "ci_low": cell.ci_low, "ci_high": cell.ci_high,
                    "interval_rule": cell.interval_rule, "n": cell.n,
                    "n_runs": cell.n_runs, "runs_min": cell.runs_min, "runs_max": cell.runs_max,
                    "best": cell.best if table.kind(entry) == "method" else None,
                    "beats_random": cell.beats_random, "published": cell.published,
                    "delta": cell.delta, "accuracy": table.accuracy.get(row),
                    "beats_random_rule": cell.beats_random_rule, "section": "table",
                })
    return rows


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_csv(table: StudyTable, path: str | Path,
              significance: Significance | None = None,
              known_truth: KnownTruth | None = None) -> Path:
    """The table's cells, then every test, then the known-truth section (docs/report.md lists
    the columns per section)."""
    path = Path(path)
    rows = (long_rows(table) + (significance_rows(significance) if significance else [])
            + known_truth_rows(known_truth))
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LONG_COLUMNS, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return path


# ---------------------------------------------------------------------------------------------
# cell texts shared by markdown, tex and html


def cell_parts(cell: Cell | None, digits: int = 2) -> tuple[str, str, str]:
    """(value, mark, detail): the number (several runs: mean ± sd across them), a dagger when
    it does not beat random, and the interval (one run: over images; several: seeds, then
    images) or else the range over runs, and the published value, as one bracketed text."""
    if cell is None or cell.value is None:
        return MISSING, "", ""
    mark = DAGGER if cell.beats_random is False else ""
    value = fmt(cell.value, digits)
    details = []
    if cell.n_runs > 1 and cell.sd is not None:
        value += f" {PLUS_MINUS} {fmt(cell.sd, digits)}"
    if cell.ci_low is not None and cell.ci_high is not None:
        details.append(f"[{fmt(cell.ci_low, digits)}, {fmt(cell.ci_high, digits)}]")
    elif cell.n_runs > 1:
        spread = (f": {fmt(cell.runs_min, digits)}{MISSING}{fmt(cell.runs_max, digits)}"
                  if cell.runs_min is not None else "")
        details.append(f"({cell.n_runs} runs{spread})")
    if cell.published is not None:
        details.append(f"(pub. {fmt(cell.published, digits)})")
    return value, mark, " ".join(details)


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
        _dagger_note(table),
        "[a, b]: bootstrap interval over images. Baselines are scored by every evaluation run on "
        "its images; runs of one checkpoint share them.",
    ]
    notes += _seed_notes(table)
    if table.compare == "study":
        notes.append("pub.: the reference study's published value (its Grad-CAM beside "
                     "gradcam_study, else gradcam); delta = ours - published in report.csv.")
    notes.extend(table.notes)
    if incomplete:
        notes.append(f"{len(incomplete)} evaluation run(s) incomplete, left out: "
                     + "; ".join(f"{s.run_dir.name} ({s.reason})" for s in incomplete))
    return notes


def _seed_notes(table: StudyTable) -> list[str]:
    """What a cell averaged over several runs shows: its interval, or the range across runs."""
    if not table.averaged:
        return []
    rules = [c.interval_rule for c in table.cells.values() if c.n_runs > 1]
    notes = [f"m {PLUS_MINUS} s: the mean of the runs (seeds or checkpoints) of the same "
             "dataset, initialisation and method, and their standard deviation across runs "
             "(n_runs and sd in report.csv)."]
    if "hierarchical" in rules:
        notes.append(f"m {PLUS_MINUS} s [a, b] ({rules.count('hierarchical')} cells): the "
                     "interval is a hierarchical bootstrap over the runs' per-image records "
                     "(the seeds resampled, then the images, one draw shared by the drawn seeds; "
                     "docs/statistics.md).")
    if "range" in rules:
        notes.append(f"m {PLUS_MINUS} s (k runs: min{MISSING}max) "
                     f"({rules.count('range')} cells): the range across the "
                     "k runs is shown instead of an interval (no per-image records matching "
                     "every run: older run folders, another aggregate than the mean, or "
                     "significance.enabled=false).")
    return notes


def _dagger_note(table: StudyTable) -> str:
    """What the dagger means, and which rule decided it: the paired test where the runs wrote
    per-image records, the point estimate elsewhere."""
    rules = [c.beats_random_rule for c in table.cells.values() if c.beats_random is not None]
    tested, point = rules.count("test"), rules.count("point")
    alpha = f"{table.alpha:g}" if table.alpha is not None else "0.05"
    test_rule = ("the Holm-corrected paired test against random on the same images (Wilcoxon "
                 "signed-rank; sign test for 0/1 metrics such as the pointing game) is not "
                 f"significant at alpha {alpha}, or its mean difference is not in the better "
                 "direction (docs/statistics.md)")
    point_rule = "the point estimate does not beat random's"
    if tested and not point:
        rule = f"decided by the test: {test_rule}"
    elif tested:
        rule = (f"decided by the test for {tested} cells: {test_rule}; by the point estimate for "
                f"{point} cells without per-image records (older run folders or "
                "significance.enabled=false): " + point_rule)
    else:
        rule = (f"decided by the point estimate ({point_rule}; no per-image records were "
                "tested: older run folders, or significance.enabled=false)")
    return (f"{DAGGER}: not above the random baseline (a uniformly random map) on the same "
            f"images, {rule}: the method localises no better than chance. Trivial baselines "
            "matter: a constant map scores pointing game 1 on every non-empty mask under the tie "
            "rule.")


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
                   trust: Sequence[TrustedModel] = (),
                   significance: Significance | None = None,
                   known_truth: KnownTruth | None = None) -> Path:
    lines = ["# Interpretability study report", ""]
    lines += [f"- **{_md_escape(label)}**: {_md_escape(text)}" for label, text in facts]
    for metric in table.metrics:
        lines += ["", f"## {metric_title(metric)}", "", *markdown_table(table, metric, digits)]
    lines += trust_markdown(trust, digits)
    lines += significance_markdown(significance, table, metric_title, digits)
    lines += known_truth_markdown(known_truth, digits)
    lines += ["", "## Notes", ""] + [f"- {_md_escape(n)}" for n in footnotes(table, incomplete)]
    return atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# LaTeX

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", DAGGER: r"$^\dagger$", MISSING: "--",
                PLUS_MINUS: r"$\pm$"}


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
              trust: Sequence[TrustedModel] = (),
              significance: Significance | None = None,
              known_truth: KnownTruth | None = None) -> Path:
    lines = ["% Interpretability study report: one booktabs table per metric; \\input{} it in a",
             "% document with \\usepackage{booktabs} (and graphicx and tikz for the "
             "significance and known-truth sections).",
             *(f"% {tex_escape(label)}: {tex_escape(text)}" for label, text in facts), ""]
    for metric in table.metrics:
        lines += tex_table(table, metric, digits)
    lines += trust_tex(trust, tex_escape, digits)
    lines += significance_tex(significance, table, tex_escape, metric_title, digits)
    lines += known_truth_tex(known_truth, tex_escape, digits)
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
                   trust: Sequence[TrustedModel] = (),
                   significance: Significance | None = None,
                   known_truth: KnownTruth | None = None) -> None:
    """The long table (key report/table: the cells), one wide table per metric
    (report/<metric>), the meta-evaluation's verdicts (report/trust), the plots (report/plots),
    the significance section's tables and CD diagrams and the known-truth section's tables and
    figure to every logger that takes them."""
    rows = long_rows(table)
    for logger in loggers:
        if hasattr(logger, "log_table"):
            logger.log_table(key="report/table", columns=list(TABLE_COLUMNS),
                             data=[[row[c] for c in TABLE_COLUMNS] for row in rows])
            if trust:
                logger.log_table(key="report/trust", columns=list(TRUST_COLUMNS),
                                 data=trust_rows(trust))
            for metric in table.metrics:
                columns, data = wide_rows(table, metric)
                logger.log_table(key=f"report/{metric}", columns=columns, data=data)
        if hasattr(logger, "log_image") and plots:
            logger.log_image(key="report/plots", images=[str(p) for p in plots.values()],
                             caption=list(plots))
    log_significance(loggers, significance)
    log_known_truth(loggers, known_truth)
