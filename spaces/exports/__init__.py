"""Exports of architectures and static nets: JSON spec, node-link JSON, GraphML, TorchScript, torch.export,
ONNX, state dict. The formats are the table ``FORMATS`` (``formats.py``). The model functions (from
``model.py``, which imports torch) load on first use, so the CLI can read the formats without torch."""
from __future__ import annotations

from typing import Any

from .formats import (
    EXPORT_FORMATS, FORMATS, SUFFIXES, ExportFormat, check_output_path, export, import_architecture, resolve_target,
    write_export,
)
from .graph import (
    architecture_to_graph, from_node_link, from_node_link_json, graph_to_architecture, node_link_json, read_graphml,
    to_node_link,
)

_MODEL_NAMES = (
    "ONNX_OPSET", "export_program", "load_state_dict", "onnx_exporter", "save_export", "save_onnx", "save_state_dict",
    "save_torchscript", "trace",
)


def __getattr__(name: str) -> Any:
    if name in _MODEL_NAMES:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXPORT_FORMATS", "FORMATS", "ONNX_OPSET", "SUFFIXES", "ExportFormat", "architecture_to_graph",
    "check_output_path", "export", "export_program", "from_node_link", "from_node_link_json", "graph_to_architecture",
    "import_architecture", "load_state_dict", "node_link_json", "onnx_exporter", "read_graphml", "resolve_target",
    "save_export", "save_onnx", "save_state_dict", "save_torchscript", "to_node_link", "trace", "write_export",
]
