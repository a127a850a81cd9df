"""The study as a static web page: index.html with the tables, the significance section (with
its critical-difference diagrams), the known-truth section (with its figure), bar plots per
dataset and overlay galleries, in one self-contained folder (images copied under assets/,
relative links only), so it can be zipped, copied off a cluster or opened from disk. No
JavaScript."""

from __future__ import annotations

import csv
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xai_bench.report.known_truth import KnownTruth  # noqa: E402
from xai_bench.report.known_truth_writers import known_truth_html  # noqa: E402
from xai_bench.report.significance import Significance  # noqa: E402
from xai_bench.report.significance_writers import significance_html  # noqa: E402
from xai_bench.report.study import Cell, EvalRun, SkippedRun, StudyTable  # noqa: E402
from xai_bench.report.trust import TrustedModel, trust_html  # noqa: E402
from xai_bench.report.writers import (  # noqa: E402
    cell_parts,
    fmt,
    footnotes,
    header_cells,
    metric_title,
)
from xai_bench.tracking.run_folder import (  # noqa: E402
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
)

__all__ = ["GalleryImage", "copy_galleries", "plot_dataset", "write_html", "write_plots"]

BOUNDED = ("pointing_game", "iou")  # metrics in [0, 1]: a fixed axis makes plots comparable
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}
th,td{border-bottom:1px solid #ddd;padding:0.3em 0.6em;text-align:right;white-space:nowrap}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
table.pairs th:nth-child(3),table.pairs td:nth-child(3){text-align:left}
td.baseline,th.baseline{background:#f3f3f3;color:#555}
.detail{color:#777;font-size:0.85em}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:0.2em 1em}
dl.facts dt{font-weight:bold}
.gallery{display:flex;flex-wrap:wrap;gap:0.5em;margin-bottom:1em}
figure{margin:0;width:360px}
figure img{width:100%}
figcaption{font-size:0.75em;color:#555}
img.plot{max-width:100%}
"""


@dataclass
class GalleryImage:
    src: str  # relative to the report folder
    caption: str


def _safe(name: str) -> str:
    """A file-system and URL friendly folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


def _href(relative: Path | str) -> str:
    return html.escape(quote(Path(relative).as_posix()))


# ---------------------------------------------------------------------------------------------
# plots


def _error(cell: Cell) -> tuple[float, float]:
    """Error bar below/above the value: the bootstrap interval, else the range across runs."""
    assert cell.value is not None
    low, high = ((cell.ci_low, cell.ci_high) if cell.ci_low is not None
                 else (cell.runs_min, cell.runs_max))
    if low is None or high is None:
        return 0.0, 0.0
    return max(cell.value - low, 0.0), max(high - cell.value, 0.0)


def _colours(table: StudyTable) -> dict[str, object]:
    palette = plt.get_cmap("tab10")
    colours: dict[str, object] = {m: palette(i % 10) for i, m in enumerate(table.methods)}
    greys = ("0.35", "0.6", "0.8", "0.5", "0.7")
    colours.update({b: greys[i % len(greys)] for i, b in enumerate(table.baselines)})
    return colours


def _bars(ax: plt.Axes, table: StudyTable, inits: Sequence[str], dataset: str, metric: str) -> None:
    entries, colours = table.entries, _colours(table)
    width = 0.8 / max(len(entries), 1)
    x = np.arange(len(inits))
    for i, entry in enumerate(entries):
        cells = [table.cell((dataset, init), entry, metric) for init in inits]
        values = [c.value if c is not None and c.value is not None else np.nan for c in cells]
        errors = np.array([_error(c) if c is not None and c.value is not None else (0.0, 0.0)
                           for c in cells]).T
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, yerr=errors, capsize=2,
               color=colours[entry], hatch="//" if entry in table.baselines else None,
               label=f"{entry} (baseline)" if entry in table.baselines else entry,
               edgecolor="white", linewidth=0.3)
    ax.set_xticks(x, inits)
    ax.set_title(metric_title(metric), fontsize=9)
    if metric.startswith(BOUNDED):
        ax.set_ylim(0, 1.05)


def plot_dataset(table: StudyTable, dataset: str, path: str | Path) -> Path:
    """Grouped bars for one dataset: per metric, the inits on x, methods then baselines as bars,
    with their bootstrap intervals as error bars."""
    inits = [init for d, init in table.rows if d == dataset]
    ncols = min(len(table.metrics), 3)
    nrows = -(-len(table.metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows + 0.6), squeeze=False)
    for ax, metric in zip(axes.flat, table.metrics, strict=False):
        _bars(ax, table, inits, dataset, metric)
    for ax in list(axes.flat)[len(table.metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8,
               frameon=False)
    fig.suptitle(dataset, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    try:
        with atomic_open(path, "wb", fsync=False) as handle:
            fig.savefig(handle, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def write_plots(table: StudyTable, out: Path) -> dict[str, Path]:
    """dataset -> its plot, <out>/assets/plots/<n>_<dataset>.png (n keeps the study's order)."""
    datasets = list(dict.fromkeys(d for d, _ in table.rows))
    return {d: plot_dataset(table, d, out / "assets" / "plots" / f"{i:02d}_{_safe(d)}.png")
            for i, d in enumerate(datasets)}


# ---------------------------------------------------------------------------------------------
# overlay galleries


def _captions(run: EvalRun, entry: str) -> dict[str, str]:
    """Overlay file stem -> "image, label, prediction, scores" from the run's per_image.csv."""
    path = run.run_dir / "per_image.csv"
    if not path.is_file():
        return {}
    captions = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("method") != entry or not str(row.get("id", "")).isdigit():
                continue
            scores = ", ".join(f"{k} {row[k]}" for k in ("pointing_game", "iou@10")
                               if row.get(k) not in (None, ""))
            captions[f"{int(row['id']):06d}"] = (
                f"{row.get('image', '')}: label {row.get('label', '?')}, "
                f"pred {row.get('pred', '?')}" + (f"; {scores}" if scores else ""))
    return captions


def _source_run(runs: Sequence[EvalRun], row: tuple[str, str], entry: str) -> EvalRun | None:
    """The run whose overlays show `entry` on this row: the method's own run, else (baselines)
    the first run of the row that drew it."""
    candidates = [r for r in runs if (r.dataset, r.init) == row]
    own = [r for r in candidates if r.method == entry]
    drew = [r for r in own or candidates if r.overlays(entry)]
    return drew[0] if drew else None


def copy_galleries(runs: Sequence[EvalRun], table: StudyTable, out: Path, per_gallery: int
                   ) -> dict[tuple[str, str], dict[str, list[GalleryImage]]]:
    """Copy the first `per_gallery` overlays of every row x method (and baseline) into
    <out>/assets/overlays/<dataset>/<init>/<method>/."""
    ordered = sorted(runs, key=lambda r: str(r.run_dir))
    galleries: dict[tuple[str, str], dict[str, list[GalleryImage]]] = {}
    for row in table.rows:
        for entry in table.entries:
            run = _source_run(ordered, row, entry) if per_gallery > 0 else None
            if run is None:
                continue
            captions = _captions(run, entry)
            folder = Path("assets", "overlays", *(_safe(p) for p in (*row, entry)))
            (out / folder).mkdir(parents=True, exist_ok=True)
            images = []
            for png in run.overlays(entry)[:per_gallery]:
                atomic_write_bytes(out / folder / _safe(png.name), png.read_bytes(), fsync=False)
                images.append(GalleryImage(str(folder / _safe(png.name)),
                                           captions.get(png.stem, png.stem)))
            galleries.setdefault(row, {})[entry] = images
    return galleries


# ---------------------------------------------------------------------------------------------
# the page


def _td(cell: Cell | None, kind: str, digits: int) -> str:
    value, mark, detail = cell_parts(cell, digits)
    text = html.escape(value)
    if cell is not None and cell.best and kind == "method":
        text = f"<strong>{text}</strong>"
    text += html.escape(mark)
    if detail:
        text += f' <span class="detail">{html.escape(detail)}</span>'
    return f'<td class="{kind}">{text}</td>'


def _html_table(table: StudyTable, metric: str, digits: int) -> list[str]:
    header = header_cells(table)
    lead = len(header) - len(table.entries)
    heads = [f"<th>{html.escape(h)}</th>" for h in header[:lead]]
    heads += [f'<th class="{table.kind(e)}">{html.escape(e)}</th>' for e in table.entries]
    lines = [f"<h3>{html.escape(metric_title(metric))}</h3>", "<table>",
             "<tr>" + "".join(heads) + "</tr>"]
    for row in table.rows:
        cells = [f"<td>{html.escape(row[0])}</td>", f"<td>{html.escape(row[1])}</td>"]
        if lead == 3:
            cells.append(f"<td>{html.escape(fmt(table.accuracy.get(row), digits))}</td>")
        cells += [_td(table.cell(row, e, metric), table.kind(e), digits) for e in table.entries]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return [*lines, "</table>"]


def _gallery_section(table: StudyTable,
                     galleries: dict[tuple[str, str], dict[str, list[GalleryImage]]]) -> list[str]:
    lines = ["<h2>Overlays</h2>",
             "<p>Image | map | map over the image with the ROI outlined; "
             "the first images of each evaluation.</p>"]
    for row in table.rows:
        if row not in galleries:
            continue
        lines.append(f"<h3>{html.escape(row[0])} / {html.escape(row[1])}</h3>")
        for entry, images in galleries[row].items():
            label = f"{entry} (baseline)" if table.kind(entry) == "baseline" else entry
            lines += [f"<h4>{html.escape(label)}</h4>", '<div class="gallery">']
            lines += [f'<figure><a href="{_href(i.src)}">'
                      f'<img src="{_href(i.src)}" alt="{html.escape(i.caption)}"></a>'
                      f"<figcaption>{html.escape(i.caption)}</figcaption></figure>" for i in images]
            lines.append("</div>")
    return lines


def _skipped_section(incomplete: Sequence[SkippedRun]) -> list[str]:
    if not incomplete:
        return []
    items = [f"<li><code>{html.escape(str(s.run_dir))}</code>: {html.escape(s.reason)}</li>"
             for s in incomplete]
    return ["<h2>Incomplete runs (left out)</h2>", "<ul>", *items, "</ul>"]


def write_html(table: StudyTable, facts: Sequence[tuple[str, str]], out: Path,
               plots: dict[str, Path],
               galleries: dict[tuple[str, str], dict[str, list[GalleryImage]]],
               incomplete: Sequence[SkippedRun] = (), digits: int = 2,
               trust: Sequence[TrustedModel] = (),
               significance: Significance | None = None,
               known_truth: KnownTruth | None = None) -> Path:
    """<out>/index.html; `plots`: dataset -> PNG below `out`; `trust`: the meta-evaluations;
    `significance`: the tests (its CD diagrams already written below `out`); `known_truth`:
    the known-truth section (its figure already written below `out`)."""
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Interpretability study report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>Interpretability study report</h1>", '<dl class="facts">']
    lines += [f"<dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd>" for label, text in facts]
    lines += ["</dl>", '<p>Files: <a href="report.csv">report.csv</a> · '
              '<a href="report.md">report.md</a> · <a href="report.tex">report.tex</a></p>',
              "<h2>Tables</h2>"]
    for metric in table.metrics:
        lines += _html_table(table, metric, digits)
    lines += trust_html(trust, out, digits)
    lines += significance_html(significance, table, out, metric_title, digits)
    lines += known_truth_html(known_truth, out, digits)
    lines += ["<h2>Notes</h2>", "<ul>",
              *(f"<li>{html.escape(n)}</li>" for n in footnotes(table, incomplete)), "</ul>"]
    lines.append("<h2>Plots</h2>")
    for dataset, png in plots.items():
        src = _href(png.relative_to(out))
        lines.append(f'<h3>{html.escape(dataset)}</h3>'
                     f'<img class="plot" src="{src}" alt="{html.escape(dataset)} metrics">')
    lines += _gallery_section(table, galleries)
    lines += _skipped_section(incomplete)
    lines.append("</body></html>")
    return atomic_write_text(out / "index.html", "\n".join(lines) + "\n")
