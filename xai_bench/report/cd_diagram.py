"""Critical-difference diagrams (Demsar 2006, JMLR 7:1-30, section 3.2.4 and Fig. 1).

An axis of average ranks 1..k with the best on the left; each method hangs from its rank with
its name and rank beside it (the better half labelled on the left, the worse half on the
right); thick bars join groups of methods whose average ranks differ by less than the Nemenyi
critical difference (not significantly different), and the CD itself is drawn as a bracket
above the axis. The same layout is written as a PNG (matplotlib, Agg backend, for the HTML
report) and as a plain TikZ picture (for the LaTeX report).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xai_bench.stats.ranking import RankTest  # noqa: E402
from xai_bench.tracking.run_folder import atomic_open  # noqa: E402

__all__ = ["cd_diagram_png", "cd_diagram_tikz", "cd_groups"]

# layout, in axis units (PNG: data units; TikZ: cm); rows stack downwards from the axis at 0
_TICK = 0.1
_BAR_GAP = 0.12      # between the group bars under the axis
_ROW_GAP = 0.28      # between the method label rows
_CD_Y = 0.55         # height of the CD bracket
_TIKZ_Y = 1.5        # cm per axis unit upwards in the TikZ picture (\scriptsize rows)


def cd_groups(avg_ranks: np.ndarray, cd: float) -> list[tuple[int, int]]:
    """The bars of the diagram: maximal runs (first, last) of positions in the ascending order
    of `avg_ranks` (np.argsort(avg_ranks, kind="stable")) whose ranks span less than `cd`.
    Runs of one method are left out (nothing to join) and so is any run inside another."""
    ranks = np.sort(np.asarray(avg_ranks, dtype=float), kind="stable")
    groups: list[tuple[int, int]] = []
    last_end = -1
    for first in range(ranks.size):
        end = first
        while end + 1 < ranks.size and ranks[end + 1] - ranks[first] < cd:
            end += 1
        if end > first and end > last_end:
            groups.append((first, end))
        last_end = max(last_end, end)
    return groups


def _format_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _caption(result: RankTest, title: str) -> str:
    """The title line: what was compared, Friedman's p, the number of blocks and alpha."""
    lead = f"{title}: " if title else ""
    return (f"{lead}Friedman p {_format_p(result.p_value)}, N = {result.n_blocks} blocks, "
            f"Nemenyi CD = {result.cd:.2f} at alpha = {result.alpha:g}")


class _Layout:
    """Where everything goes, shared by the PNG and the TikZ writers; x in rank units."""

    def __init__(self, result: RankTest) -> None:
        self.k = len(result.methods)
        self.order = [int(i) for i in np.argsort(result.avg_ranks, kind="stable")]
        self.ranks = [float(result.avg_ranks[i]) for i in self.order]
        self.names = [result.methods[i] for i in self.order]
        self.groups = cd_groups(result.avg_ranks, result.cd)
        self.left = (self.k + 1) // 2  # the better half is labelled on the left
        self.cd_end = min(1.0 + result.cd, float(self.k))
        self.cd_clipped = 1.0 + result.cd > self.k
        top_rows = max(self.left, self.k - self.left)
        self.bottom = self.row_y(top_rows - 1) - _ROW_GAP

    def bar_y(self, g: int) -> float:
        return -_BAR_GAP * (g + 1)

    def row_y(self, row: int) -> float:
        """Label row `row` (0 = the first under the group bars)."""
        return -_BAR_GAP * (len(self.groups) + 1) - _ROW_GAP * (row + 1)

    def label(self, pos: int) -> tuple[float, float, str]:
        """(y, x of the label end, side) for the method at sorted position `pos`: the best on
        the top left row, the worst on the top right row, so no two lines cross."""
        if pos < self.left:
            return self.row_y(pos), 1.0 - 0.3, "left"
        return self.row_y(self.k - 1 - pos), self.k + 0.3, "right"

    def cd_label(self, cd: float) -> str:
        return f"CD = {cd:.2f}" + (" (wider than the axis)" if self.cd_clipped else "")


def cd_diagram_png(result: RankTest, path: str | Path, title: str) -> Path:
    """Draw the diagram to `path` (PNG, written atomically); fonts small enough for 12
    methods. Returns the path."""
    lay = _Layout(result)
    width = 6.4
    height = 0.9 + (_CD_Y + 0.3 - lay.bottom) * 0.75
    fig, ax = plt.subplots(figsize=(width, height), dpi=120)
    line = {"color": "black", "linewidth": 0.8}
    ax.plot([1, lay.k], [0, 0], **line)
    for tick in range(1, lay.k + 1):
        ax.plot([tick, tick], [0, _TICK], **line)
        ax.text(tick, _TICK + 0.03, str(tick), ha="center", va="bottom", fontsize=7)
    ax.plot([1, lay.cd_end], [_CD_Y, _CD_Y], **line)
    for end in (1.0, lay.cd_end):
        ax.plot([end, end], [_CD_Y - 0.04, _CD_Y + 0.04], **line)
    ax.text((1 + lay.cd_end) / 2, _CD_Y + 0.06, lay.cd_label(result.cd), ha="center",
            va="bottom", fontsize=7)
    for g, (first, last) in enumerate(lay.groups):
        y = lay.bar_y(g)
        ax.plot([lay.ranks[first] - 0.04, lay.ranks[last] + 0.04], [y, y], color="black",
                linewidth=2.5, solid_capstyle="butt")
    for pos, (rank, name) in enumerate(zip(lay.ranks, lay.names, strict=True)):
        y, x_end, side = lay.label(pos)
        ax.plot([rank, rank, x_end], [0, y, y], **line)
        ax.text(x_end - 0.05 if side == "left" else x_end + 0.05, y, f"{name} ({rank:.2f})",
                ha="right" if side == "left" else "left", va="center", fontsize=7)
    ax.set_xlim(0.5, lay.k + 0.5)
    ax.set_ylim(lay.bottom, _CD_Y + 0.3)
    ax.axis("off")
    ax.set_title(_caption(result, title), fontsize=7)
    path = Path(path)
    try:
        with atomic_open(path, "wb", fsync=False) as handle:
            fig.savefig(handle, format="png", bbox_inches="tight", pad_inches=0.05)
    finally:
        plt.close(fig)
    return path


# < and > in text mode print as inverted marks in LaTeX's default OT1 font encoding: math mode
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$"}


def _tex(text: str) -> str:
    """LaTeX-escape a method name or title, the title's "p < 0.001" included (kept here so this
    module needs no writer)."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def cd_diagram_tikz(result: RankTest, title: str) -> str:
    """The diagram as a standalone tikzpicture (plain TikZ, no library), 10 cm wide between
    ranks 1 and k; paste it into a figure environment."""
    lay = _Layout(result)
    scale = 10.0 / max(lay.k - 1, 1)

    def x(rank: float) -> str:
        return f"{(rank - 1.0) * scale:.3f}"

    def pt(rank: float, y: float) -> str:
        return f"({x(rank)},{y * _TIKZ_Y:.3f})"

    out = [r"\begin{tikzpicture}[font=\scriptsize]",
           rf"\node[anchor=south] at {pt((1 + lay.k) / 2, _CD_Y + 0.35)} "
           rf"{{{_tex(_caption(result, title))}}};",
           rf"\draw {pt(1, 0)} -- {pt(lay.k, 0)};"]
    for tick in range(1, lay.k + 1):
        out.append(rf"\draw {pt(tick, 0)} -- {pt(tick, _TICK)} node[anchor=south] {{{tick}}};")
    out.append(rf"\draw {pt(1, _CD_Y - 0.05)} -- {pt(1, _CD_Y + 0.05)} "
               rf"{pt(1, _CD_Y)} -- {pt(lay.cd_end, _CD_Y)} "
               rf"{pt(lay.cd_end, _CD_Y - 0.05)} -- {pt(lay.cd_end, _CD_Y + 0.05)};")
    out.append(rf"\node[anchor=south] at {pt((1 + lay.cd_end) / 2, _CD_Y + 0.05)} "
               rf"{{{_tex(lay.cd_label(result.cd))}}};")
    for g, (first, last) in enumerate(lay.groups):
        y = lay.bar_y(g) * _TIKZ_Y
        out.append(rf"\draw[line width=2pt] ({float(x(lay.ranks[first])) - 0.1:.3f},{y:.3f})"
                   rf" -- ({float(x(lay.ranks[last])) + 0.1:.3f},{y:.3f});")
    for pos, (rank, name) in enumerate(zip(lay.ranks, lay.names, strict=True)):
        y, x_end, side = lay.label(pos)
        anchor = "east" if side == "left" else "west"
        out.append(rf"\draw {pt(rank, 0)} |- {pt(x_end, y)} node[anchor={anchor}] "
                   rf"{{{_tex(name)} ({rank:.2f})}};")
    out.append(r"\end{tikzpicture}")
    return "\n".join(out) + "\n"
