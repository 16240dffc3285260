"""Matplotlib pictures of searches, distributions and studies.

Every plot is ``f(data, *, ax=None) -> Axes``: given an ``ax`` it draws there, otherwise
on a fresh :class:`matplotlib.figure.Figure` (no pyplot, no global state, no rcParams
changes), which Jupyter displays when it is a cell's last value (``ax.figure``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .spaces import EDGES

__all__ = [
    "new_axes",
    "close",
    "softmax_row",
    "gaussian_pdf",
    "alpha_heatmap",
    "sigma_heatmap",
    "alpha_trajectory",
    "posterior_densities",
    "metric_curves",
    "proxy_scatter",
    "proxy_study_figure",
    "ablation_bars",
    "bench_bars",
]

EDGE_LABELS = [f"{i}←{j}" for i, j in EDGES]
OP_LABELS = ["none", "skip", "conv1x1", "conv3x3", "pool3x3"]


def new_axes(figsize: tuple[float, float] = (5.0, 3.5), ncols: int = 1, nrows: int = 1) -> Any:
    """Axes on a new Figure (an array of Axes when there are several)."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig.subplots(nrows, ncols)


def close(fig: Figure) -> None:
    """Free a figure's canvas memory (Figures made here are not tracked by pyplot)."""
    fig.clear()


def softmax_row(row: Sequence[float]) -> list[float]:
    """softmax of one row of alpha (plain floats)."""
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def gaussian_pdf(x: float, mu: float, sigma: float) -> float:
    """Density of N(mu, sigma^2) at x."""
    return math.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def integer_ticks(axis: Any) -> None:
    """Ticks only at whole numbers on ``axis`` (``ax.xaxis``/``ax.yaxis``): for epochs and counts."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _quantity(title: str) -> str:
    """The quantity a heat map's title names: ``"σ per edge and op"`` -> ``"σ"``."""
    head = title.split(" per ")[0].strip() if " per " in title else ""
    return head if 0 < len(head) <= 20 else "α"


def alpha_heatmap(alpha: Sequence[Sequence[float]], *, softmax: bool = True, ax: Axes | None = None,
                  title: str = "", label: str | None = None) -> Axes:
    """Edges x ops heat map of ``softmax(alpha)`` (or the raw values).

    ``label`` names the colour bar; by default ``softmax(α)``, or for raw values the
    quantity the title names before " per " (``title="σ per edge and op"`` -> ``σ``), else
    ``α``. :func:`sigma_heatmap` draws a sigma table with the right labels.
    """
    ax = ax if ax is not None else new_axes((5.2, 3.2))
    rows = [softmax_row(r) if softmax else list(r) for r in alpha]
    im = ax.imshow(rows, cmap="viridis", aspect="auto")  # colour range: the data's own
    lo, hi = min(map(min, rows)), max(map(max, rows))
    ax.set_xticks(range(len(OP_LABELS)), OP_LABELS, rotation=30, ha="right")
    ax.set_yticks(range(len(EDGE_LABELS)), EDGE_LABELS)
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < (lo + hi) / 2 else "black")
    if label is None:
        label = "softmax(α)" if softmax else _quantity(title)
    ax.figure.colorbar(im, ax=ax, label=label)
    ax.set_title(title or ("softmax(α) per edge" if softmax else f"{label} per edge"))
    return ax


def sigma_heatmap(sigma: Sequence[Sequence[float]], *, ax: Axes | None = None,
                  title: str = "σ per edge and op") -> Axes:
    """Edges x ops heat map of BaLeNAS's learned standard deviations (colour bar: σ)."""
    return alpha_heatmap(sigma, softmax=False, ax=ax, title=title, label="σ")


def alpha_trajectory(history: Sequence[dict[str, Any]], edge: int = 0, *, ax: Axes | None = None,
                     band: float = 1.0) -> Axes:
    """mu of every op on one edge over epochs, with a ``± band * sigma`` ribbon."""
    ax = ax if ax is not None else new_axes()
    epochs = [h["epoch"] for h in history]
    for k, label in enumerate(OP_LABELS):
        mu = [h["mu"][edge][k] for h in history]
        line = ax.plot(epochs, mu, marker="o", ms=3, label=label)[0]
        if history and history[0].get("sigma") is not None:
            sd = [h["sigma"][edge][k] for h in history]
            ax.fill_between(epochs, [m - band * s for m, s in zip(mu, sd)],
                            [m + band * s for m, s in zip(mu, sd)], color=line.get_color(),
                            alpha=0.08)
    ax.set_xlabel("epoch")
    integer_ticks(ax.xaxis)
    ax.set_ylabel("μ (α)")
    ax.set_title(f"edge {EDGE_LABELS[edge]}")
    ax.legend(fontsize=7)
    return ax


def posterior_densities(mu: Sequence[float], sigma: Sequence[float], *, ax: Axes | None = None,
                        title: str = "") -> Axes:
    """The Gaussian N(mu_o, sigma_o^2) of every op on one edge."""
    ax = ax if ax is not None else new_axes()
    lo = min(m - 4 * s for m, s in zip(mu, sigma))
    hi = max(m + 4 * s for m, s in zip(mu, sigma))
    xs = [lo + (hi - lo) * i / 400 for i in range(401)]
    for m, s, label in zip(mu, sigma, OP_LABELS):
        ys = [gaussian_pdf(x, m, s) for x in xs]
        ax.plot(xs, ys, label=label)
    ax.set_xlabel("α")
    ax.set_ylabel("density")
    ax.set_title(title or "posterior of α on one edge")
    ax.legend(fontsize=7)
    return ax


def metric_curves(runs: dict[str, Sequence[dict[str, Any]]], key: str, *, ax: Axes | None = None,
                  ylabel: str | None = None) -> Axes:
    """One line per run of a per-epoch metric (``metrics.jsonl`` records). Epochs, and a
    metric whose values are all whole numbers (a count such as ``parameter_free_ops``),
    get ticks only at whole numbers."""
    ax = ax if ax is not None else new_axes()
    values: list[Any] = []
    for label, records in runs.items():
        pts = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
            values += [v for _, v in pts]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        integer_ticks(ax.yaxis)
    integer_ticks(ax.xaxis)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel or key)
    ax.legend(fontsize=8)
    return ax


def proxy_scatter(log10_scores: Sequence[float], accs: Sequence[float], *, ax: Axes | None = None,
                  title: str = "", xlabel: str = "proxy score (signed log10)",
                  ylabel: str = "test accuracy (%)") -> Axes:
    """Scatter of proxy scores against ground-truth accuracy."""
    ax = ax if ax is not None else new_axes()
    ax.scatter(log10_scores, accs, s=6, alpha=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def proxy_study_figure(summary: dict[str, Any]) -> Figure:
    """Proxies (rows) x datasets (columns) scatter grid with rank correlations."""
    proxies = list(summary["scores"])
    targets = ("cifar10_test", "cifar100_test", "imagenet16_test")
    axes = new_axes((4.0 * len(targets), 3.0 * len(proxies)), ncols=len(targets),
                    nrows=len(proxies))
    if len(proxies) == 1:
        axes = [axes]
    for row, proxy in zip(axes, proxies):
        rows = summary["scores"][proxy]
        for ax, t in zip(row, targets):
            c = summary["correlations"][proxy][t]
            proxy_scatter([r["log10"] for r in rows], [r[t] for r in rows], ax=ax,
                          title=f"{proxy} vs {t}: ρ={c['spearman']:.2f}, τ={c['kendall']:.2f}",
                          xlabel=f"{proxy} (signed log10)")
    return axes[0][0].figure


def ablation_bars(table: dict[str, Any], metric: str = "cifar10_test", *,
                  ax: Axes | None = None) -> Axes:
    """Bars of mean ± std of one metric for every row of an ablation table JSON."""
    ax = ax if ax is not None else new_axes((6.0, 3.5))
    rows = [r for r in table["rows"] if r.get(metric) is not None]
    labels = [r["label"] for r in rows]
    means = [r[metric][0] for r in rows]
    stds = [r[metric][1] for r in rows]
    ax.barh(range(len(rows)), means, xerr=stds, color="tab:blue", alpha=0.7)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (%)")
    ax.set_title(table.get("title", ""), fontsize=9)
    return ax


def bench_bars(report: dict[str, Any], *, goals: dict[str, float] | None = None,
               ax: Axes | None = None) -> Axes:
    """Projected minutes for the report's epochs (log scale), one bar per benchmark row,
    grouped by method; ``goals`` (``{"darts": 3.0, "balenas M=3": 5.0}``) draws targets."""
    ax = ax if ax is not None else new_axes((6.0, 3.8))
    epochs = report["config"]["epochs"]
    key = f"projected_min_{epochs}_epochs"
    rows = [r for r in report["rows"] if key in r]
    labels = [f"{bench_label(r)}: {r['path']}" for r in rows]
    colors = {"plain": "tab:gray", "fast": "tab:blue", "graph": "tab:green",
              "graph-conv": "tab:olive", "compiled": "tab:purple"}
    ax.barh(range(len(rows)), [r[key] for r in rows], color=[colors.get(r["path"], "tab:red") for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    log_axis(ax, "x")
    ax.set_xlabel(f"projected minutes for {epochs} epochs")
    for goal_label, minutes in (goals or {}).items():
        idx = [i for i, r in enumerate(rows) if bench_label(r) == goal_label]
        if idx:
            ax.vlines(minutes, min(idx) - 0.4, max(idx) + 0.4, colors="tab:red", linestyles="--")
            ax.text(minutes, min(idx) - 0.45, f" goal {minutes:g} min", color="tab:red", fontsize=7,
                    va="bottom")
    env = report.get("env", {})
    ax.set_title(f"{env.get('device', '?')}, torch {env.get('torch', '?')}, preset "
                 f"{report['config'].get('preset', '?')}", fontsize=9)
    return ax


def log_axis(ax: Axes, which: str = "x") -> None:
    """A log scale on ``ax``'s x (or y) axis labelled at 1, 2 and 5 times powers of ten in
    plain numbers (``20``, not ``2×10¹``), minor ticks unlabelled, so labels never overlap."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def bench_label(row: dict[str, Any]) -> str:
    """``darts`` or ``balenas M=k`` for a benchmark row, with `` 2nd order`` for a
    second-order row (first-order goals do not apply to it)."""
    label = row["method"] if row.get("mc_samples") is None else f"{row['method']} M={row['mc_samples']}"
    return label + (" 2nd order" if row.get("order") == 2 else "")


def draw_genotype(genotype: Any, *, axes: Sequence[Axes] | None = None) -> Any:
    """The normal and the reduction cell of a DARTS genotype, side by side, as DAGs.

    Nodes ``c_{k-2}``, ``c_{k-1}`` (the cell inputs), the intermediate nodes ``0..3`` and
    the output ``c_{k}`` (the concatenation, dashed edges); every chosen edge is an arrow
    labelled with its op. ``genotype`` is a DARTS ``Genotype`` or its text (or a shipped
    name, see ``spaces.darts.GENOTYPES``). Drawn with matplotlib only (DARTS's own plot uses
    graphviz). Returns the new Figure, or ``axes`` (a pair) when given.
    """
    from .spaces.darts import DartsSpace  # the DARTS codec; viz draws, it does not train

    space = DartsSpace()
    g = space.parse(genotype) if isinstance(genotype, str) else space.parse(space.format(genotype))
    fig = None
    if axes is None:
        axs = new_axes((14.0, 4.0), ncols=2)
        fig = axs[0].figure
    else:
        axs = axes
        if len(axs) != 2:
            raise ValueError(f"draw_genotype draws two cells: pass two axes, got {len(axs)}")
    for ax, pairs, concat, title in ((axs[0], g.normal, g.normal_concat, "normal cell"),
                                     (axs[1], g.reduce, g.reduce_concat, "reduction cell")):
        _draw_cell(ax, pairs, concat, title)
    return fig if fig is not None else axs


def _draw_cell(ax: Axes, pairs: Sequence[tuple[str, int]], concat: Sequence[int], title: str) -> None:
    """One DARTS cell on ``ax`` (genotype nodes: 0, 1 the inputs; 2.. the intermediate ones)."""
    steps = len(pairs) // 2
    # every node on one ellipse (convex position), so no straight edge passes through a node:
    # inputs on the left, the output on the right, even nodes above and odd nodes below
    rx, ry, radius = 5.0, 2.2, 0.32

    def at(deg: float) -> tuple[float, float]:
        return rx * math.cos(math.radians(deg)), ry * math.sin(math.radians(deg))

    pos: dict[int | str, tuple[float, float]] = {0: at(155.0), 1: at(205.0), "out": at(0.0)}
    for parity, sign in ((0, 1.0), (1, -1.0)):
        row = [i for i in range(steps) if i % 2 == parity]
        for k, i in enumerate(row):
            pos[i + 2] = at(sign * (155.0 - 155.0 * (k + 1) / (len(row) + 1)))

    def edge(src: tuple[float, float], dst: tuple[float, float], label: str | None, color: str,
             style: str) -> None:
        (x0, y0), (x1, y1) = src, dst
        length = math.hypot(x1 - x0, y1 - y0)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        a = (x0 + radius * ux, y0 + radius * uy)  # from rim to rim of the node circles
        b = (x1 - radius * ux, y1 - radius * uy)
        ax.annotate("", xy=b, xytext=a, zorder=1,
                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.2, "linestyle": style,
                                "shrinkA": 0, "shrinkB": 0})
        if label is not None:  # nearer the target, so a node's two in-edge labels part ways
            angle = math.degrees(math.atan2(uy, ux))  # along the edge, never upside down
            angle = angle - 180 if angle > 90 else angle + 180 if angle < -90 else angle
            ax.text(x0 + 0.62 * (x1 - x0), y0 + 0.62 * (y1 - y0), label, fontsize=7, ha="center",
                    va="center", rotation=angle, rotation_mode="anchor", zorder=3,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})

    for p, (op, j) in enumerate(pairs):
        edge(pos[j], pos[p // 2 + 2], op, "tab:blue" if "conv" in op else "tab:gray", "-")
    for n in concat:
        edge(pos[n], pos["out"], None, "0.6", "--")
    names: dict[int | str, str] = {0: "$c_{k-2}$", 1: "$c_{k-1}$", "out": "$c_{k}$"}
    colors: dict[int | str, str] = {0: "#b4eeb4", 1: "#b4eeb4", "out": "#eee8aa"}
    for key, (x, y) in pos.items():
        label = names[key] if key in names else str(int(key) - 2)
        ax.text(x, y, label, ha="center", va="center", fontsize=9, zorder=4,
                bbox={"boxstyle": "circle,pad=0.3", "fc": colors.get(key, "#add8e6"), "ec": "0.3"})
    ax.set_xlim(-rx - 0.6, rx + 0.6)
    ax.set_ylim(-ry - 0.6, ry + 0.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title)
