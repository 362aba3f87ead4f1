"""What an architecture costs and how good it is: FLOPs/params, data, training, mIoU."""
from .cost import CONVENTIONS, CostReport, NodeCost, architecture_cost, gflops, space_cost

__all__ = ["CONVENTIONS", "CostReport", "NodeCost", "architecture_cost", "gflops", "space_cost"]
