"""The significance section as Markdown, LaTeX and HTML, the critical-difference figures, every
test as report.csv's long rows, and the W&B tables `report/significance`, `report/friedman`,
`report/agreement` (xai_bench.report.significance computes it; docs/statistics.md explains
it). Like trust.py, the functions take the report's TeX escaping and metric titles as
arguments, so writers.py can import this module."""

from __future__ import annotations

import html
import math
import numbers
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from xai_bench.report.cd_diagram import cd_diagram_png, cd_diagram_tikz
from xai_bench.report.significance import Significance
from xai_bench.report.study_table import StudyTable

__all__ = ["PAIRED_COLUMNS", "RANK_COLUMNS", "TITLE", "log_significance", "metric_summary",
           "pairwise_matrix", "significance_html", "significance_markdown", "significance_rows",
           "significance_tex", "write_cd_figures"]

# report.csv's columns of the tests (sections paired / paired_seed, friedman / nemenyi /
# agreement); writers.LONG_COLUMNS joins them to the table's
PAIRED_COLUMNS = ("section", "dataset", "init", "metric", "method", "kind", "versus",
                  "versus_kind", "seed", "n_seeds", "test", "n", "mean_a", "mean_b", "mean_diff",
                  "ci_low", "ci_high", "statistic", "p_value", "p_holm", "effect_size",
                  "significant", "better")
RANK_COLUMNS = ("section", "metric", "method", "kind", "versus", "value", "n", "statistic",
                "p_value", "iman_davenport", "p_iman_davenport", "cd", "alpha", "significant")
TITLE = "Significance"
Title = Callable[[str], str]
MISSING = "\u2013"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


def intro(significance: Significance) -> str:
    s = significance.settings
    return (f"Paired tests on the same images (per grid row and metric, every method against "
            f"every other method and each baseline): Wilcoxon signed-rank, or the sign test "
            f"(mid-p McNemar) for 0/1 metrics such as the pointing game; p-values Holm-corrected "
            f"over all comparisons of one row and metric; effect size r = matched-pairs "
            f"rank-biserial correlation; significant = corrected p < {s.alpha:g}. A row with "
            f"several seeds (checkpoints) combines them (per-seed tests in report.csv). Each "
            f"cell: mean difference of the row's method minus the column's entry [paired "
            f"bootstrap {s.level:.0%} interval in report.csv], corrected p, r; significant cells "
            f"marked. Across the grid: Friedman test over the (dataset, init) rows with the "
            f"Nemenyi critical difference (CD), and Kendall's tau between the metrics' method "
            f"rankings. How to read them: docs/statistics.md.")


def format_p(p: float, less: str = "<") -> str:
    """A p-value for a table cell: 3 decimals, "<0.001" below, a dash when undefined."""
    if math.isnan(p):
        return MISSING
    return f"{less}0.001" if p < 0.001 else f"{p:.3f}"


def write_cd_figures(significance: Significance, out: Path, title: Title = str
                     ) -> dict[str, Path]:
    """metric -> its CD diagram, <out>/assets/significance/cd_<metric>.png (also kept in
    significance.figures for the page and W&B)."""
    for metric, ranking in significance.rankings.items():
        if ranking.result is not None:
            path = out / "assets" / "significance" / f"cd_{_safe(metric)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            significance.figures[metric] = cd_diagram_png(ranking.result, path, title(metric))
    return dict(significance.figures)


def significance_rows(significance: Significance) -> list[dict[str, Any]]:
    """Every test in long form (report.csv): `section` paired (seeds combined, Holm-corrected
    per row and metric), paired_seed (one seed), friedman (one row per entry: its average
    rank), nemenyi (pairwise p-values), agreement (Kendall tau between two metrics)."""
    rows: list[dict[str, Any]] = []
    for c in significance.comparisons:
        t = c.test
        rows.append({
            "section": "paired" if c.seed is None else "paired_seed", "dataset": c.dataset,
            "init": c.init, "metric": c.metric, "method": c.a, "kind": "method", "versus": c.b,
            "versus_kind": c.b_kind, "seed": c.seed, "n_seeds": t.n_seeds, "test": t.test,
            "n": t.n, "mean_a": t.mean_a, "mean_b": t.mean_b, "mean_diff": t.mean_diff,
            "ci_low": t.ci_low, "ci_high": t.ci_high, "statistic": t.statistic,
            "p_value": t.p_value, "p_holm": c.p_holm, "effect_size": t.effect_size,
            "significant": c.significant, "better": c.better})
    for metric, ranking in significance.rankings.items():
        r = ranking.result
        if r is None:
            continue
        shared = {"metric": metric, "n": r.n_blocks, "statistic": r.chi2, "p_value": r.p_value,
                  "iman_davenport": r.iman_davenport, "p_iman_davenport": r.p_iman_davenport,
                  "cd": r.cd, "alpha": r.alpha}
        for i, entry in enumerate(r.methods):
            kind = "baseline" if entry in significance.baselines else "method"
            rows.append({"section": "friedman", **shared, "method": entry, "kind": kind,
                         "value": float(r.avg_ranks[i])})
        for i, entry in enumerate(r.methods):
            for j in range(i + 1, len(r.methods)):
                p = float(r.nemenyi_p[i, j])
                rows.append({"section": "nemenyi", "metric": metric, "method": entry,
                             "versus": r.methods[j], "alpha": r.alpha, "p_value": p,
                             "value": float(r.avg_ranks[i] - r.avg_ranks[j]),
                             "n": r.n_blocks, "cd": r.cd, "significant": p < r.alpha})
    if significance.agreement is not None:
        metrics, tau, n = significance.agreement
        for i, metric in enumerate(metrics):
            for j, other in enumerate(metrics):
                if i != j:
                    rows.append({"section": "agreement", "metric": metric, "versus": other,
                                 "value": float(tau[i, j]), "n": int(n[i, j])})
    return rows


# ---------------------------------------------------------------------------------------------
# what the section says


def _count(rows: int, total: int) -> str:
    return f"{rows} of {total} row{'s' if total != 1 else ''}"


def _ranking_sentence(significance: Significance, metric: str) -> str:
    ranking = significance.rankings.get(metric)
    if ranking is None:
        return "No ranking: the metric has no better direction."
    r = ranking.result
    if r is None:
        return f"{ranking.message[:1].upper()}{ranking.message[1:]}."
    order = sorted(range(len(r.methods)), key=lambda i: r.avg_ranks[i])
    best = order[0]
    close = [r.methods[i] for i in order[1:] if r.avg_ranks[i] - r.avg_ranks[best] < r.cd]
    verdict = "differ" if r.p_value < r.alpha else "do not differ significantly"
    text = (f"Across {r.n_blocks} grid rows the ranks {verdict} "
            f"(Friedman p {format_p(r.p_value)}); "
            f"best average rank: {r.methods[best]} ({r.avg_ranks[best]:.2f}), within the "
            f"critical difference ({r.cd:.2f}) of it: {', '.join(close) if close else 'none'}.")
    if ranking.left_out:
        text += f" Left out (scored on under half the rows): {', '.join(ranking.left_out)}."
    if ranking.rows_dropped:
        text += f" {ranking.rows_dropped} row(s) without a score for every entry left out."
    return text


def metric_summary(significance: Significance, metric: str) -> str:
    """Two or three plain sentences: each method against random, each pair of methods, the
    ranking across the grid."""
    combined = significance.combined(metric)
    alpha = significance.settings.alpha
    sentences = []
    directed = bool(combined) and combined[0].direction is not None
    methods = list(dict.fromkeys(c.a for c in combined))
    random = [c for c in combined if c.b == "random"]
    if not combined:
        sentences.append("No paired test: no per-image records of this metric.")
    elif not directed:
        sentences.append("No better direction: differences are tested (two-sided), none is "
                         "called better.")
    elif random:
        parts = [f"{m} in {_count(sum(c.better == m for c in random if c.a == m), n)}"
                 for m in methods if (n := sum(c.a == m for c in random))]
        sentences.append(f"Above the random baseline (corrected p < {alpha:g}): "
                         + ", ".join(parts) + ".")
    pairs: dict[tuple[str, str], list[Any]] = {}
    for c in combined:
        if c.b_kind == "method":
            pairs.setdefault((c.a, c.b), []).append(c)
    if pairs:
        texts = []
        for (a, b), tests in pairs.items():
            counts = {"no significant difference": sum(not c.significant for c in tests)}
            if directed:
                counts.update({f"{w} better": sum(c.better == w for c in tests) for w in (a, b)})
            else:
                counts["a significant difference"] = sum(c.significant for c in tests)
            texts.append(f"{a} vs {b}: " + ", ".join(
                f"{what} in {_count(k, len(tests))}" for what, k in counts.items() if k))
        sentences.append("Between methods: " + "; ".join(texts) + ".")
    sentences.append(_ranking_sentence(significance, metric))
    return " ".join(sentences)


def pairwise_matrix(significance: Significance, table: StudyTable, metric: str, digits: int = 2
                    ) -> tuple[list[str], list[tuple[str, str, str, list[tuple[str, bool]]]]]:
    """The columns (entries) and, per tested row and method, one (text, significant) per
    column: mean difference (method minus column), corrected p, effect size r."""
    columns = [e for e in table.entries
               if any(e in (c.a, c.b) for c in significance.combined(metric))]
    rows = []
    for row in significance.tested_rows(metric):
        for method in (m for m in table.methods if m in columns):
            cells = []
            for entry in columns:
                found = significance.find(row, method, entry, metric)
                if found is None:
                    cells.append(("" if entry == method else MISSING, False))
                    continue
                c, flipped = found
                sign = -1.0 if flipped else 1.0
                cells.append((f"{sign * c.test.mean_diff:+.{digits}f} (p {format_p(c.p_holm)}, "
                              f"r {sign * c.test.effect_size:+.2f})", c.significant))
            rows.append((row[0], row[1], method, cells))
    return columns, rows


def _agreement_rows(significance: Significance) -> tuple[list[str], list[list[str]]]:
    metrics, tau, _n = significance.agreement  # type: ignore[misc]
    return metrics, [[f"{tau[i, j]:+.2f}" if math.isfinite(tau[i, j]) else MISSING
                      for j in range(len(metrics))] for i in range(len(metrics))]


AGREEMENT_TEXT = ("Kendall's tau-b between the rankings of the methods that two metrics give, "
                  "averaged over the grid rows (1: same order, -1: reversed, 0: unrelated).")


# ---------------------------------------------------------------------------------------------
# Markdown, LaTeX, HTML


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def significance_markdown(significance: Significance | None, table: StudyTable,
                          title: Title = str, digits: int = 2) -> list[str]:
    if significance is None:
        return []
    lines = ["", f"## {TITLE}", "", intro(significance)]
    lines += [""] + [f"- {_md(n)}" for n in significance.notes] if significance.notes else []
    for metric in table.metrics:
        lines += ["", f"### {_md(title(metric))}", "", _md(metric_summary(significance, metric))]
        if metric in significance.figures:
            src = quote(f"assets/significance/{significance.figures[metric].name}")
            lines += ["", f"![Critical-difference diagram: {_md(title(metric))}]({src})"]
        columns, rows = pairwise_matrix(significance, table, metric, digits)
        if rows:
            lines += ["", "| dataset | init | method | "
                      + " | ".join(f"vs {_md(c)}" for c in columns) + " |",
                      "|:--|:--|:--|" + "--:|" * len(columns)]
            lines += [f"| {_md(d)} | {_md(i)} | {_md(m)} | "
                      + " | ".join(f"**{t}**" if s else t for t, s in cells) + " |"
                      for d, i, m, cells in rows]
    lines += ["", "### Agreement between metrics", ""]
    if significance.agreement is None:
        return [*lines, f"No agreement matrix: {significance.agreement_message}."]
    metrics, cells = _agreement_rows(significance)
    lines += [AGREEMENT_TEXT, "", "| | " + " | ".join(_md(m) for m in metrics) + " |",
              "|:--|" + "--:|" * len(metrics)]
    return lines + [f"| {_md(m)} | " + " | ".join(row) + " |"
                    for m, row in zip(metrics, cells, strict=True)]


def significance_tex(significance: Significance | None, table: StudyTable,
                     escape: Callable[[str], str], title: Title = str,
                     digits: int = 2) -> list[str]:
    """A figure (TikZ CD diagram) and a booktabs table of the pairwise tests (scaled to the
    text width) per metric, and the agreement table; needs booktabs, graphicx and tikz."""
    if significance is None:
        return []

    def tex(text: str) -> str:
        return escape(text).replace("<", "$<$")

    def cell(text: str, significant: bool) -> str:
        return rf"\textbf{{{tex(text)}}}" if significant else tex(text)

    lines = [f"% {TITLE} (needs \\usepackage{{booktabs}}, \\usepackage{{graphicx}} and "
             "\\usepackage{tikz})",
             f"% {tex(intro(significance))}", *(f"% {tex(n)}" for n in significance.notes)]
    for metric in table.metrics:
        label = re.sub(r"[^A-Za-z0-9]+", "-", metric)
        name, summary = tex(title(metric)), tex(metric_summary(significance, metric))
        ranking = significance.rankings.get(metric)
        if ranking is not None and ranking.result is not None:
            lines += [r"\begin{figure}[ht]", r"\centering",
                      cd_diagram_tikz(ranking.result, title(metric)).rstrip("\n"),
                      rf"\caption{{Critical-difference diagram, {name}: average ranks over the "
                      r"grid rows (1 = best); entries joined by a bar are within the "
                      r"critical difference (Nemenyi).}",
                      rf"\label{{fig:cd-{label}}}", r"\end{figure}", ""]
        else:
            lines.append(f"% {name}: {tex(_ranking_sentence(significance, metric))}")
        columns, rows = pairwise_matrix(significance, table, metric, digits)
        if not rows:
            lines.append(f"% {name}: {summary}")
            continue
        lines += [r"\begin{table}[ht]", r"\centering", r"\scriptsize",
                  rf"\caption{{Paired tests, {name} (row method minus column entry: mean "
                  rf"difference, Holm-corrected p, effect size r; bold = significant). "
                  rf"{summary}}}",
                  rf"\label{{tab:pairs-{label}}}",
                  r"\resizebox{\textwidth}{!}{%",
                  r"\begin{tabular}{lll" + "r" * len(columns) + "}", r"\toprule",
                  "dataset & init & method & "
                  + " & ".join(f"vs {escape(c)}" for c in columns) + r" \\", r"\midrule"]
        lines += [" & ".join([escape(d), escape(i), escape(m), *(cell(t, s) for t, s in cells)])
                  + r" \\" for d, i, m, cells in rows]
        lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    if significance.agreement is None:
        return [*lines, f"% {tex(significance.agreement_message or '')}"]
    metrics, cells = _agreement_rows(significance)
    lines += [r"\begin{table}[ht]", r"\centering",
              rf"\caption{{Agreement between metrics: {escape(AGREEMENT_TEXT)}}}",
              r"\label{tab:agreement}", r"\begin{tabular}{l" + "r" * len(metrics) + "}",
              r"\toprule", " & " + " & ".join(escape(m) for m in metrics) + r" \\", r"\midrule"]
    lines += [" & ".join([escape(m), *(escape(c) for c in row)]) + r" \\"
              for m, row in zip(metrics, cells, strict=True)]
    return [*lines, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]


def significance_html(significance: Significance | None, table: StudyTable, out: Path,
                      title: Title = str, digits: int = 2) -> list[str]:
    if significance is None:
        return []
    e = html.escape
    lines = [f"<h2>{TITLE}</h2>", f"<p>{e(intro(significance))}</p>"]
    if significance.notes:
        lines += ["<ul>", *(f"<li>{e(n)}</li>" for n in significance.notes), "</ul>"]
    for metric in table.metrics:
        lines += [f"<h3>{e(title(metric))}</h3>",
                  f"<p>{e(metric_summary(significance, metric))}</p>"]
        if metric in significance.figures:
            src = e(quote(significance.figures[metric].relative_to(out).as_posix()))
            lines.append(f'<img class="plot" src="{src}" '
                         f'alt="critical-difference diagram: {e(title(metric))}">')
        columns, rows = pairwise_matrix(significance, table, metric, digits)
        if rows:
            lines += ['<table class="pairs"><tr><th>dataset</th><th>init</th><th>method</th>'
                      + "".join(f"<th>vs {e(c)}</th>" for c in columns) + "</tr>"]
            lines += ["<tr>" + "".join(f"<td>{e(x)}</td>" for x in (d, i, m))
                      + "".join(f"<td><strong>{e(t)}</strong></td>" if s else f"<td>{e(t)}</td>"
                                for t, s in cells) + "</tr>" for d, i, m, cells in rows]
            lines.append("</table>")
    lines.append("<h3>Agreement between metrics</h3>")
    if significance.agreement is None:
        return [*lines, f"<p>No agreement matrix: {e(significance.agreement_message or '')}.</p>"]
    metrics, cells = _agreement_rows(significance)
    lines += [f"<p>{e(AGREEMENT_TEXT)}</p>",
              "<table><tr><th></th>" + "".join(f"<th>{e(m)}</th>" for m in metrics) + "</tr>"]
    lines += ["<tr>" + f"<td>{e(m)}</td>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
              for m, row in zip(metrics, cells, strict=True)]
    return [*lines, "</table>"]


# ---------------------------------------------------------------------------------------------
# W&B


def _plain(value: Any) -> Any:
    """None for NaN (an empty W&B cell), plain Python numbers for numpy ones."""
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value


def log_significance(loggers: Sequence[Any], significance: Significance | None) -> None:
    """report/significance (every paired test), report/friedman (ranks, Nemenyi p-values),
    report/agreement (the tau matrix) and the CD diagrams (report/cd) to the report's run."""
    if significance is None:
        return
    rows = significance_rows(significance)
    paired = [[_plain(r.get(c)) for c in PAIRED_COLUMNS] for r in rows
              if r["section"] in ("paired", "paired_seed")]
    ranks = [[_plain(r.get(c)) for c in RANK_COLUMNS] for r in rows
             if r["section"] in ("friedman", "nemenyi")]
    for logger in loggers:
        if hasattr(logger, "log_table"):
            logger.log_table(key="report/significance", columns=list(PAIRED_COLUMNS),
                             data=paired)
            if ranks:
                logger.log_table(key="report/friedman", columns=list(RANK_COLUMNS), data=ranks)
            if significance.agreement is not None:
                metrics, tau, _n = significance.agreement
                data = [[m, *(_plain(v) for v in tau[i])]
                        for i, m in enumerate(metrics)]
                logger.log_table(key="report/agreement", columns=["metric", *metrics],
                                 data=data)
        if hasattr(logger, "log_image") and significance.figures:
            logger.log_image(key="report/cd",
                             images=[str(p) for p in significance.figures.values()],
                             caption=list(significance.figures))
