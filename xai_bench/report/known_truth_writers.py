"""The known-truth section (xai_bench.report.known_truth computes it; docs/known-truth.md
explains it) as Markdown, LaTeX and HTML, its figure (marker share against reliance, one point
per model), report.csv's rows (sections known_truth and known_truth_models) and the W&B tables
`report/known_truth`, `report/known_truth_models` with the figure. Like significance_writers,
the functions take the report's TeX escaping as an argument, so writers.py can import this
module."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from xai_bench.report.known_truth import summary_sentences  # noqa: E402
from xai_bench.report.known_truth_models import (  # noqa: E402
    GROUP_TITLES,
    GROUPS,
    SHARE,
    Estimate,
    KnownTruth,
    KnownTruthEntry,
)
from xai_bench.report.significance_writers import MISSING, _plain, format_p  # noqa: E402
from xai_bench.tracking.run_folder import atomic_open  # noqa: E402

__all__ = ["FIGURE", "KNOWN_TRUTH_COLUMNS", "KNOWN_TRUTH_MODEL_COLUMNS", "TITLE",
           "known_truth_html", "known_truth_markdown", "known_truth_rows", "known_truth_tex",
           "log_known_truth", "write_known_truth_figure"]

TITLE = "Known truth"
FIGURE = Path("assets", "known_truth", "known_truth.png")
# report.csv's columns of the section (writers.LONG_COLUMNS joins them to the table's):
# known_truth: one row per method or baseline x model group (vit, cnn, all)
KNOWN_TRUTH_COLUMNS = ("section", "method", "kind", "group", "metric", "test", "value",
                       "ci_low", "ci_high", "n", "p_value", "skipped", "flag_fraction",
                       "flag_images", "flag_models", "flag_p", "flag_p_holm", "flagged",
                       "contrast", "verdict", "rank", "alpha")
# known_truth_models: one row per model x method or baseline (its mean marker share)
KNOWN_TRUTH_MODEL_COLUMNS = ("section", "model", "dataset", "init", "arch", "group", "rule",
                             "strength", "seed", "reliance", "reliance_low", "reliance_high",
                             "agree_accuracy", "agree_low", "agree_high", "conflict", "agree",
                             "method", "kind", "metric", "value", "ci_low", "ci_high", "n",
                             "run")
RULE_COLOURS = {"lesion": "tab:blue", "both": "tab:purple", "marker": "tab:red"}
KIND_MARKERS = {"vit": "o", "cnn": "s"}


def intro(kt: KnownTruth) -> str:
    return (f"Known-truth benchmark (docs/known-truth.md): models trained so that the label "
            f"follows the lesion, a planted marker or both, evaluated on the decorrelated split "
            f"where the two disagree. Reliance: the fraction of conflict images whose prediction "
            f"follows the marker (0 = lesion only, 1 = marker only). Per method: Spearman's rho "
            f"between its mean marker share (relevance per pixel on the marker / on marker + "
            f"lesion; 0.5 = equally bright) and the reliance, across models "
            f"[{kt.level:.0%} bootstrap interval over models], one-sided permutation p; flag: "
            f"on the marker-only models, the fraction of images whose map singles the marker "
            f"out (marker share > {kt.flag_share:.2g}: the marker at least "
            f"{kt.flag_share / (1 - kt.flag_share):.2g} times as bright per pixel as the "
            f"lesion), one-sided sign test, Holm-corrected over the "
            f"methods and baselines (bold: flagged, fraction > 0.5 and corrected p < "
            f"{kt.alpha:g}); contrast: mean marker share on marker-only minus lesion-only "
            f"models. Faithful = rho's interval above 0 (and permutation p < {kt.alpha:g}) and "
            f"flagged; plausible, not faithful = not flagged (the map does not single the "
            f"marker out); partly faithful otherwise. Baselines are reference rows and must not "
            f"come out faithful.")


def _num(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return MISSING
    value = round(value, digits) + 0.0  # no "-0.00"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _estimate(e: Estimate, digits: int) -> str:
    text = _num(e.value, digits)
    if math.isfinite(e.ci_low) and math.isfinite(e.ci_high):
        text += f" [{_num(e.ci_low, digits)}, {_num(e.ci_high, digits)}]"
    return text


def _rho(entry: KnownTruthEntry, group: str, digits: int) -> str:
    r = entry.correlations.get(group)
    if r is None:
        return MISSING
    if not r.defined:
        return f"{MISSING} (n {r.n})"
    interval = (f" [{_num(r.ci_low, digits, True)}, {_num(r.ci_high, digits, True)}]"
                if math.isfinite(r.ci_low) else "")
    return f"{_num(r.rho, digits, True)}{interval}, p {format_p(r.p_value)} (n {r.n})"


def _flag(entry: KnownTruthEntry) -> tuple[str, bool]:
    f = entry.flag
    if f is None:
        return MISSING, False
    return f"{f.fraction:.0%} (p {format_p(f.p_holm)})", f.flagged


TABLE_HEADER = ("rank", "method", "verdict", *(f"rho {GROUP_TITLES[g]}" for g in GROUPS),
                "flag (marker-only)", "contrast")
MODEL_HEADER = ("model", "arch", "rule", "strength", "seed", "reliance", "agree accuracy",
                "conflict / agree images")


def _table_cells(kt: KnownTruth, digits: int) -> list[tuple[list[str], bool, str]]:
    """Per entry: (cells, flagged, kind) in TABLE_HEADER's order; the flag cell is the 5th."""
    rows = []
    for e in kt.entries:
        flag, flagged = _flag(e)
        name = e.name if e.kind == "method" else f"{e.name} (baseline)"
        rows.append(([str(e.rank) if e.rank is not None else "", name, e.verdict,
                      *(_rho(e, g, digits) for g in GROUPS), flag,
                      _num(e.contrast, digits, True)], flagged, e.kind))
    return rows


def _model_cells(kt: KnownTruth, digits: int) -> list[list[str]]:
    return [[m.label, m.arch, m.rule or "?",
             _num(m.strength, digits) if m.rule == "both" else MISSING,
             MISSING if m.seed is None else str(m.seed), _estimate(m.reliance, digits),
             _estimate(m.agree_accuracy, digits),
             f"{MISSING if m.conflict is None else m.conflict} / "
             f"{MISSING if m.agree is None else m.agree}"] for m in kt.models]


# ---------------------------------------------------------------------------------------------
# the figure


def _panel(ax: Any, kt: KnownTruth, entry: KnownTruthEntry) -> None:
    for model in kt.models:
        share = model.shares.get(entry.name)
        if share is None or not model.reliance.finite:
            continue
        xerr = ([[max(model.reliance.value - model.reliance.ci_low, 0.0)],
                 [max(model.reliance.ci_high - model.reliance.value, 0.0)]]
                if math.isfinite(model.reliance.ci_low) else None)
        yerr = ([[max(share.value - share.ci_low, 0.0)], [max(share.ci_high - share.value, 0.0)]]
                if math.isfinite(share.ci_low) else None)
        ax.errorbar(model.reliance.value, share.value, xerr=xerr, yerr=yerr,
                    fmt=KIND_MARKERS[model.kind], color=RULE_COLOURS.get(model.rule or "", "0.4"),
                    ecolor="0.75", elinewidth=0.8, markersize=6, markeredgecolor="black",
                    markeredgewidth=0.4)
    ax.axhline(0.5, color="0.6", linestyle=":", linewidth=0.8)
    rho = entry.pooled
    detail = f"rho {rho.rho:+.2f}" if rho is not None and rho.defined else "rho \u2013"
    label = entry.name if entry.kind == "method" else f"{entry.name} (baseline)"
    # a name from a run folder must not switch on matplotlib's mathtext
    ax.set_title(f"{label}\n{detail}, {entry.verdict}".replace("$", r"\$"), fontsize=8)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.tick_params(labelsize=7)


def write_known_truth_figure(kt: KnownTruth, out: Path) -> Path | None:
    """<out>/assets/known_truth/known_truth.png: per method and baseline, its mean marker share
    (y) against each model's reliance (x), ViT circles and CNN squares, coloured by the
    training rule (lesion-only blue, marker-only red); also kept in kt.figure."""
    if not kt.entries or not kt.models:
        return None
    ncols = min(len(kt.entries), 4)
    nrows = -(-len(kt.entries) // ncols)
    height = 2.9 * nrows + 0.5
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, height), squeeze=False)
    try:
        for index, (ax, entry) in enumerate(zip(axes.flat, kt.entries, strict=False)):
            _panel(ax, kt, entry)
            if index + ncols >= len(kt.entries):  # the lowest panel of its column
                ax.set_xlabel("reliance on the marker", fontsize=8)
            if index % ncols == 0:
                ax.set_ylabel(SHARE, fontsize=8)
        for ax in list(axes.flat)[len(kt.entries):]:
            ax.axis("off")
        handles = [Line2D([], [], linestyle="", marker="o", color=c, label=f"rule {r}")
                   for r, c in RULE_COLOURS.items()]
        handles += [Line2D([], [], linestyle="", marker=KIND_MARKERS[k], color="0.5",
                           label=GROUP_TITLES[k]) for k in KIND_MARKERS]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7,
                   frameon=False)
        fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
        path = out / FIGURE
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb", fsync=False) as handle:
            fig.savefig(handle, dpi=100, format="png")
    finally:
        plt.close(fig)
    kt.figure = path
    return path


# ---------------------------------------------------------------------------------------------
# report.csv and W&B


def known_truth_rows(kt: KnownTruth | None) -> list[dict[str, Any]]:
    """Every entry x model group (section known_truth) and model x entry (known_truth_models)."""
    if kt is None:
        return []
    rows: list[dict[str, Any]] = []
    for e in kt.entries:
        f = e.flag
        common = {"section": "known_truth", "method": e.name, "kind": e.kind, "metric": SHARE,
                  "test": "spearman", "contrast": e.contrast, "verdict": e.verdict,
                  "rank": e.rank, "alpha": kt.alpha}
        if f is not None:
            common.update({"flag_fraction": f.fraction, "flag_images": f.images,
                           "flag_models": f.models, "flag_p": f.p_value,
                           "flag_p_holm": f.p_holm, "flagged": f.flagged})
        for group, r in e.correlations.items():
            rows.append({**common, "group": group, "value": r.rho, "ci_low": r.ci_low,
                         "ci_high": r.ci_high, "n": r.n, "p_value": r.p_value,
                         "skipped": r.skipped})
    for m in kt.models:
        model = {"section": "known_truth_models", "model": m.label, "dataset": m.dataset,
                 "init": m.init, "arch": m.arch, "group": m.kind, "rule": m.rule,
                 "strength": m.strength, "seed": m.seed, "reliance": m.reliance.value,
                 "reliance_low": m.reliance.ci_low, "reliance_high": m.reliance.ci_high,
                 "agree_accuracy": m.agree_accuracy.value, "agree_low": m.agree_accuracy.ci_low,
                 "agree_high": m.agree_accuracy.ci_high, "conflict": m.conflict,
                 "agree": m.agree, "metric": SHARE, "run": m.run}
        for e in kt.entries:
            share = m.shares.get(e.name)
            if share is not None:
                rows.append({**model, "method": e.name, "kind": e.kind, "value": share.value,
                             "ci_low": share.ci_low, "ci_high": share.ci_high, "n": share.n})
    return rows


def log_known_truth(loggers: Sequence[Any], kt: KnownTruth | None) -> None:
    """report/known_truth (per entry and model group), report/known_truth_models (per model
    and entry) and the figure (report/known_truth_plot) to the report's run."""
    if kt is None:
        return
    rows = known_truth_rows(kt)
    tables = {}
    for key, columns in (("known_truth", KNOWN_TRUTH_COLUMNS),
                         ("known_truth_models", KNOWN_TRUTH_MODEL_COLUMNS)):
        names = [c for c in columns if c != "section"]
        tables[key] = (names, [[_plain(r.get(c)) for c in names] for r in rows
                               if r["section"] == key])
    for logger in loggers:
        if hasattr(logger, "log_table"):
            for key, (columns, data) in tables.items():
                logger.log_table(key=f"report/{key}", columns=columns, data=data)
        if hasattr(logger, "log_image") and kt.figure is not None:
            logger.log_image(key="report/known_truth_plot", images=[str(kt.figure)],
                             caption=[TITLE])


# ---------------------------------------------------------------------------------------------
# Markdown, LaTeX, HTML


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Cells already escaped (and bold where marked)."""
    lines = ["| " + " | ".join(_md(h) for h in header) + " |",
             "|" + "|".join(":--" if i < 3 else "--:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


FLAG_COLUMN = TABLE_HEADER.index("flag (marker-only)")


def known_truth_markdown(kt: KnownTruth | None, digits: int = 2) -> list[str]:
    if kt is None:
        return []
    ranking = [[f"**{_md(c)}**" if i == FLAG_COLUMN and flagged else _md(c)
                for i, c in enumerate(cells)] for cells, flagged, _k in _table_cells(kt, digits)]
    lines = ["", f"## {TITLE}", "", _md(intro(kt)), "", _md(" ".join(summary_sentences(kt))),
             "", "### Ranking by faithfulness", "", *_md_table(TABLE_HEADER, ranking)]
    if kt.figure is not None:
        lines += ["", f"![Marker share against reliance]({quote(FIGURE.as_posix())})"]
    models = [[_md(c) for c in row] for row in _model_cells(kt, digits)]
    lines += ["", "### Models", "", *_md_table(MODEL_HEADER, models)]
    if kt.notes:
        lines += [""] + [f"- {_md(n)}" for n in kt.notes]
    return lines


def known_truth_tex(kt: KnownTruth | None, escape: Callable[[str], str],
                    digits: int = 2) -> list[str]:
    """The ranking and the models as booktabs tables (scaled to the text width) and the figure;
    needs booktabs and graphicx."""
    if kt is None:
        return []

    def tex(text: str) -> str:
        return escape(text).replace("<", "$<$")

    lines = [f"% {TITLE} (needs \\usepackage{{booktabs}} and \\usepackage{{graphicx}})",
             f"% {tex(intro(kt))}", *(f"% {tex(n)}" for n in kt.notes)]
    summary = tex(" ".join(summary_sentences(kt)))
    ranking = [" & ".join(rf"\textbf{{{tex(c)}}}" if i == FLAG_COLUMN and flagged else tex(c)
                          for i, c in enumerate(cells)) + r" \\"
               for cells, flagged, _k in _table_cells(kt, digits)]
    lines += [r"\begin{table}[ht]", r"\centering", r"\scriptsize",
              rf"\caption{{Known truth: ranking by faithfulness (Spearman's rho between marker "
              rf"share and reliance, bootstrap interval, permutation p; flag on the marker-only "
              rf"models, bold = flagged). {summary}}}",
              r"\label{tab:known-truth}", r"\resizebox{\textwidth}{!}{%",
              r"\begin{tabular}{lll" + "r" * (len(TABLE_HEADER) - 3) + "}", r"\toprule",
              " & ".join(tex(h) for h in TABLE_HEADER) + r" \\", r"\midrule", *ranking,
              r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    if kt.figure is not None:
        lines += [r"\begin{figure}[ht]", r"\centering",
                  rf"\includegraphics[width=\textwidth]{{{FIGURE.as_posix()}}}",
                  r"\caption{Known truth: each method's mean marker share against each model's "
                  r"reliance on the marker (circles ViT, squares CNN; blue lesion-only, red "
                  r"marker-only models).}",
                  r"\label{fig:known-truth}", r"\end{figure}", ""]
    lines += [r"\begin{table}[ht]", r"\centering", r"\scriptsize",
              r"\caption{Known truth: the models, their training rule and measured reliance on "
              r"the marker.}", r"\label{tab:known-truth-models}",
              r"\begin{tabular}{lll" + "r" * (len(MODEL_HEADER) - 3) + "}", r"\toprule",
              " & ".join(tex(h) for h in MODEL_HEADER) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(c) for c in row) + r" \\" for row in _model_cells(kt, digits)]
    return [*lines, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]


def known_truth_html(kt: KnownTruth | None, out: Path, digits: int = 2) -> list[str]:
    if kt is None:
        return []
    e = html.escape
    lines = [f"<h2>{TITLE}</h2>", f"<p>{e(intro(kt))}</p>",
             "".join(f"<p>{e(s)}</p>" for s in summary_sentences(kt)),
             "<h3>Ranking by faithfulness</h3>", '<table class="pairs">',
             "<tr>" + "".join(f"<th>{e(h)}</th>" for h in TABLE_HEADER) + "</tr>"]
    for cells, flagged, kind in _table_cells(kt, digits):
        td = f'<td class="{kind}">'  # baselines greyed, as in the tables
        lines.append("<tr>" + "".join(f"{td}<strong>{e(c)}</strong></td>"
                                      if i == FLAG_COLUMN and flagged else f"{td}{e(c)}</td>"
                                      for i, c in enumerate(cells)) + "</tr>")
    lines.append("</table>")
    if kt.figure is not None:
        src = e(quote(kt.figure.relative_to(out).as_posix()))
        lines.append(f'<img class="plot" src="{src}" alt="marker share against reliance">')
    lines += ["<h3>Models</h3>", "<table>",
              "<tr>" + "".join(f"<th>{e(h)}</th>" for h in MODEL_HEADER) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
              for row in _model_cells(kt, digits)]
    lines.append("</table>")
    if kt.notes:
        lines += ["<ul>", *(f"<li>{e(n)}</li>" for n in kt.notes), "</ul>"]
    return lines
