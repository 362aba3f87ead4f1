"""How to choose: search strategies (Optuna, NNI), encodings, budgets; dynamic routing and Common
extraction in ``routespace.search.dynamic``.

Importing this package does not import torch, optuna or nni; the modules that need them do, when used."""
from .budget import ArchBudget, BudgetChecker, SearchBudget, check_feasible, cheapest_architecture
from .config import SearchConfig
from .encoding import Encoding, repair_edges
from .strategy import STRATEGIES, OptunaStrategy, Strategy, make_strategy

__all__ = [
    "ArchBudget", "BudgetChecker", "Encoding", "OptunaStrategy", "STRATEGIES", "SearchBudget",
    "SearchConfig", "Strategy", "check_feasible", "cheapest_architecture",
    "make_strategy", "repair_edges",
]
