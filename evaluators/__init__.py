"""What an architecture costs and how good it is: FLOPs/params, data, training, mIoU.

Only the light cost names are imported here; the rest live in their modules (``evaluators.train``,
``evaluators.evaluate``, ``evaluators.datasets``, ``evaluators.plots``; the comparison pipeline is
``routespace.search.compare``) so that
importing the package stays fast."""
from .cost import CONVENTIONS, CostReport, NodeCost, architecture_cost, gflops, space_cost

__all__ = ["CONVENTIONS", "CostReport", "NodeCost", "architecture_cost", "gflops", "space_cost"]
