"""Histogram of a dynamic net's realised GFLOPs per image, with the budget target marked."""
from __future__ import annotations

from typing import Sequence

from .canvas import FONT, SMALL, new_figure
from .data import flops_histogram


def plot_flops_histogram(
    gflops: Sequence[float],
    target: float | None = None,
    bins: int | None = None,
    title: str | None = None,
    xlabel: str = "realised GFLOPs per image",
):
    """Bars of images per GFLOPs bin; the mean (solid) and the budget ``target`` (dashed red) marked."""
    h = flops_histogram(gflops, target, bins)
    fig = new_figure(6.4, 3.8)
    ax = fig.add_subplot()
    widths = h.bin_edges[1:] - h.bin_edges[:-1]
    ax.bar(h.bin_edges[:-1], h.counts, width=widths, align="edge", color="#7FA7C9", edgecolor="#2F4F6F", linewidth=0.6,
           label=f"{int(h.counts.sum())} images")
    ax.axvline(h.mean, color="#222222", linewidth=1.6, label=f"mean {h.mean:.3g} (std {h.std:.2g})")
    if h.target is not None:
        ax.axvline(h.target, color="#C0392B", linestyle="--", linewidth=2,
                   label=f"budget target {h.target:.3g} ({100 * h.fraction_over_target:.0f} % of images above)")
    lo = min(h.bin_edges[0], h.target if h.target is not None else h.bin_edges[0])
    hi = max(h.bin_edges[-1], h.target if h.target is not None else h.bin_edges[-1])
    pad = 0.05 * (hi - lo)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(0, max(1, h.counts.max()) * 1.3)  # headroom for the legend
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel("images", fontsize=FONT)
    ax.tick_params(labelsize=SMALL)
    ax.legend(fontsize=SMALL, loc="upper left", frameon=True, framealpha=0.92, edgecolor="none")
    ax.set_title(title or "realised cost per image", fontsize=FONT + 1, loc="left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig
