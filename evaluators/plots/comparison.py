"""The comparison's figures: mIoU vs GFLOPs with seed error bars and each dynamic net's per-image GFLOPs
spread, and learning curves (mIoU vs training steps). Their data are the comparison's summarised rows
(``search.compare.summarise``) and curves, plain mappings."""
from __future__ import annotations

from typing import Mapping, Sequence

from .canvas import SMALL, new_figure
from .data import ResultPoint, pareto_front
from .pareto import _pad_limits, group_styles, label_axes, style_axes


def plot_comparison(rows: Sequence[Mapping], title: str | None = None):
    """Each row at (mean GFLOPs, mean mIoU): vertical bar = ± std of mIoU over seeds; dynamic rows also get
    a thick horizontal bar over the 10th-90th percentile of their per-image GFLOPs and a thin one over
    min-max. The Pareto front of the means is joined and ringed."""
    points = [ResultPoint(r["name"], float(r["gflops"]), float(r["miou"]), r["kind"]) for r in rows]
    front = pareto_front(points)
    fig = new_figure(7.6, 5.0)
    ax = fig.add_subplot()
    styles = group_styles(p.group for p in points)
    for r, p in zip(rows, points):
        marker, color = styles[p.group]
        if r.get("n", 1) > 1:
            ax.errorbar(p.gflops, p.miou, yerr=r["miou_std"], fmt="none", ecolor=color, elinewidth=1.2, capsize=3, zorder=2)
        if r.get("dynamic") and r.get("gflops_p10") is not None:
            ax.plot([r["gflops_min"], r["gflops_max"]], [p.miou, p.miou], color=color, linewidth=0.8, alpha=0.6, zorder=2)
            ax.plot([r["gflops_p10"], r["gflops_p90"]], [p.miou, p.miou], color=color, linewidth=3.5, alpha=0.45,
                    solid_capstyle="butt", zorder=2)
    for g, (marker, color) in styles.items():
        pts = [p for p in points if p.group == g]
        ax.scatter([p.gflops for p in pts], [p.miou for p in pts], marker=marker, c=color, s=60, label=g, zorder=3,
                   linewidths=1.2)
    fp = [points[i] for i in front]
    ax.step([p.gflops for p in fp], [p.miou for p in fp], where="post", color="#C0392B", linewidth=1.2, alpha=0.8,
            zorder=1, label="Pareto front (means)")
    ax.scatter([p.gflops for p in fp], [p.miou for p in fp], s=170, facecolors="none", edgecolors="#C0392B",
               linewidths=1.4, zorder=4)
    ax.plot([], [], color="#555555", linewidth=3.5, alpha=0.45, label="dynamic: per-image GFLOPs p10-p90")
    ax.plot([], [], color="#555555", linewidth=0.8, alpha=0.6, label="dynamic: per-image min-max")
    ax.errorbar([], [], yerr=[], fmt="none", ecolor="#555555", capsize=3, label="± std of mIoU over seeds")
    style_axes(ax, "GFLOPs per image (dynamic: realised mean)", "mIoU", title or "mIoU vs GFLOPs")
    ax.legend(fontsize=SMALL, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0.0)
    xs = [p for p in points] + [ResultPoint("", float(r[k]), float(r["miou"])) for r in rows if r.get("dynamic")
                                for k in ("gflops_min", "gflops_max") if r.get(k) is not None]
    _pad_limits(ax, xs)
    if points:
        label_axes(ax, [(p.gflops, p.miou) for p in points], [p.label for p in points])
    return fig


def plot_learning_curves(curves: Mapping[str, Mapping], title: str | None = None):
    """mIoU vs training steps, one line per row (``curves[name] = {'kind': ..., 'points': [[step, miou], ...]}``)."""
    fig = new_figure(6.4, 3.8)
    ax = fig.add_subplot()
    styles = group_styles(c["kind"] for c in curves.values())
    for name, c in curves.items():
        marker, color = styles[c["kind"]]
        steps, miou = zip(*c["points"]) if c["points"] else ((), ())
        ax.plot(steps, miou, marker=marker, color=color, linewidth=1.4, markersize=6, label=f"{name} ({c['kind']})")
    style_axes(ax, "training steps", "mIoU (validation)", title or "learning curves")
    ax.legend(fontsize=SMALL, loc="best", frameon=True, framealpha=0.92, edgecolor="none")
    return fig
