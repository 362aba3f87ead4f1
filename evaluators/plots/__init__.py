"""Plots: data steps (pure, in ``data``) and drawings on pyplot-free Figures (never global state)."""
from .canvas import new_figure, save_figure
from .data import (
    EDGE_STYLES, GridData, HistoryData, ResultPoint, edge_frequencies, flops_histogram, grid_data, history_data,
    pareto_front, place_labels, routes_from_gates,
)
from .grid import draw_grid, plot_architecture
from .histogram import plot_flops_histogram
from .history import optuna_figure, plot_history
from .pareto import plot_pareto
from .routes import plot_routes
from .show import VIEWS, show

__all__ = [
    "EDGE_STYLES", "GridData", "HistoryData", "ResultPoint", "VIEWS", "draw_grid", "edge_frequencies",
    "flops_histogram", "grid_data", "history_data", "new_figure", "optuna_figure", "pareto_front", "place_labels",
    "plot_architecture", "plot_flops_histogram", "plot_history", "plot_pareto", "plot_routes", "routes_from_gates",
    "save_figure", "show",
]
