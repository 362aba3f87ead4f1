"""The layer x scale grid with an architecture, a dynamic net's edge frequencies, or one image's route."""
from __future__ import annotations

from typing import Iterable, Mapping

from ...spaces.architecture import Architecture
from ...spaces.space import RoutingSpace
from .canvas import FONT, SMALL, new_figure
from .data import CELL_MARKERS, DECODER_X_OFFSET, EDGE_STYLES, INACTIVE_EDGE, GridData, grid_data, stride_ticks

FREQUENCY_CMAP = "viridis"


def _cmap():
    import matplotlib

    return matplotlib.colormaps[FREQUENCY_CMAP]


def draw_grid(ax, data: GridData, legend: bool = True, compact: bool = False):
    """Draw ``data`` on ``ax``; returns the ScalarMappable of the frequency colours (dynamic) or None."""
    from matplotlib.lines import Line2D

    cmap = _cmap()
    # closed space edges first (underneath), then open ones by increasing frequency
    for e in sorted(data.edges, key=lambda e: (e.active, e.frequency or 0.0)):
        style = EDGE_STYLES[e.kind]
        if not e.active:
            color, ls = INACTIVE_EDGE.color, INACTIVE_EDGE.linestyle
        elif data.dynamic:
            color, ls = cmap(e.frequency), style.linestyle
        else:
            color, ls = style.color, style.linestyle
        ax.plot([e.x0, e.x1], [e.y0, e.y1], color=color, linestyle=ls, linewidth=e.width * (0.7 if compact else 1),
                alpha=e.alpha, solid_capstyle="round", zorder=1 + e.active)
    size = 30 if compact else 70
    for n in data.nodes:
        if n.active:
            marker, face = CELL_MARKERS[n.cell]
            ax.scatter([n.x], [n.y], s=size, marker=marker, c=[face], edgecolors="#222222", linewidths=0.8, zorder=4)
        else:
            ax.scatter([n.x], [n.y], s=size * 0.25, marker="o", c=["#DDDDDD"], edgecolors="#AAAAAA",
                       linewidths=0.5, zorder=3)
    if any(e.kind == "out" for e in data.edges):
        ax.text(data.layers + DECODER_X_OFFSET + 0.05, -0.45, "decoder", fontsize=SMALL, ha="center", va="bottom",
                color="#555555")
    ticks, labels = stride_ticks()
    ax.set_yticks(ticks, labels, fontsize=SMALL if compact else FONT)
    ax.set_ylim(3.5 if compact else 3.6, -0.6)  # stride 4 (fine) on top
    step = 1 if data.layers <= 16 else 2
    ax.set_xticks(range(0, data.layers + 1, step))
    ax.tick_params(axis="x", labelsize=SMALL if compact else FONT)
    ax.set_xlim(-0.5, data.layers + DECODER_X_OFFSET + 0.5)
    ax.set_xlabel("layer (0 = stem)", fontsize=SMALL if compact else FONT)
    ax.set_ylabel("output stride", fontsize=SMALL if compact else FONT)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if legend:
        handles = [
            Line2D([], [], color="#444444" if data.dynamic else EDGE_STYLES[k].color,
                   linestyle=EDGE_STYLES[k].linestyle, linewidth=2, label=EDGE_STYLES[k].label)
            for k in data.kinds_used
        ]
        handles += [
            Line2D([], [], marker=CELL_MARKERS[c][0], color="none", markerfacecolor=CELL_MARKERS[c][1],
                   markeredgecolor="#222222", markersize=8, label=c + " cell")
            for c in data.cells_used
        ]
        if any(not e.active for e in data.edges):
            handles.append(Line2D([], [], color=INACTIVE_EDGE.color, linewidth=1, label=INACTIVE_EDGE.label))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=SMALL, frameon=False,
                  borderaxespad=0.0)
    if not data.dynamic:
        return None
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap)


def plot_architecture(
    arch: Architecture | None = None,
    *,
    space: RoutingSpace | None = None,
    frequencies: Mapping[object, float] | None = None,
    route: Iterable[object] | None = None,
    title: str | None = None,
    show_space: bool = True,
):
    """A Figure of the grid: a static ``arch``, a dynamic net's edge ``frequencies`` ({edge: f} over a data
    set; width, alpha and colour follow f, with a colour bar), or one image's ``route``."""
    data = grid_data(arch, space=space, frequencies=frequencies, route=route, show_space=show_space)
    width = 4.2 + 0.42 * (data.layers + 1) + (1.0 if data.dynamic else 0.0)
    fig = new_figure(width, 3.3)
    ax = fig.add_subplot()
    mappable = draw_grid(ax, data)
    if mappable is not None:
        cb = fig.colorbar(mappable, ax=ax, location="bottom", shrink=0.5, aspect=30, pad=0.02)
        cb.set_label("edge open frequency over the data set", fontsize=FONT)
        cb.ax.tick_params(labelsize=SMALL)
    space_ = arch.space if arch is not None else space
    if title is None:
        what = data.name or ("dynamic net" if data.dynamic else "route" if route is not None else "architecture")
        title = f"{what} in space '{space_.name}' ({space_.layers} layers, C={space_.base_channels})"
    ax.set_title(title, fontsize=FONT + 1, loc="left")
    return fig
