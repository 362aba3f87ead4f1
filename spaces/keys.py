"""String keys of nodes and edges for ``nn.ModuleDict`` (one place, shared by every network)."""
from __future__ import annotations


def node_key(node: tuple[int, int]) -> str:
    return f"{node[0]}_{node[1]}"


def edge_key(edge: tuple[int, int, int]) -> str:
    return f"{edge[0]}_{edge[1]}_{edge[2]}"
