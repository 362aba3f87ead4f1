"""Exports of architectures and static nets: JSON spec, node-link JSON, GraphML, TorchScript, torch.export,
ONNX, state dict. The formats are the table ``FORMATS`` (``formats.py``)."""
from .formats import (
    EXPORT_FORMATS, FORMATS, SUFFIXES, ExportFormat, check_output_path, export, import_architecture, resolve_target,
    write_export,
)
from .graph import (
    architecture_to_graph, from_node_link, from_node_link_json, graph_to_architecture, node_link_json, read_graphml,
    to_node_link,
)
from .model import (
    ONNX_OPSET, export_program, load_state_dict, onnx_exporter, save_export, save_onnx, save_state_dict,
    save_torchscript, trace,
)

__all__ = [
    "EXPORT_FORMATS", "FORMATS", "ONNX_OPSET", "SUFFIXES", "ExportFormat", "architecture_to_graph",
    "check_output_path", "export", "export_program", "from_node_link", "from_node_link_json", "graph_to_architecture",
    "import_architecture", "load_state_dict", "node_link_json", "onnx_exporter", "read_graphml", "resolve_target",
    "save_export", "save_onnx", "save_state_dict", "save_torchscript", "to_node_link", "trace", "write_export",
]
