"""How to choose: search strategies (Optuna, NNI), encodings, budgets, and Common extraction.

Importing this package does not import optuna or nni; the strategy and engine modules do, when used."""
from .budget import ArchBudget, BudgetChecker, SearchBudget, check_feasible, cheapest_architecture
from .common import EdgeFrequencies, common_architecture, edge_frequencies
from .config import SearchConfig
from .encoding import Encoding, repair_edges
from .strategy import STRATEGIES, OptunaStrategy, Strategy, make_strategy

__all__ = [
    "ArchBudget", "BudgetChecker", "EdgeFrequencies", "Encoding", "OptunaStrategy", "STRATEGIES", "SearchBudget",
    "SearchConfig", "Strategy", "check_feasible", "cheapest_architecture", "common_architecture", "edge_frequencies",
    "make_strategy", "repair_edges",
]
