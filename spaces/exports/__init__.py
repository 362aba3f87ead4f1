"""Exports of architectures and static nets: JSON spec, node-link JSON, GraphML, TorchScript, ONNX, state dict."""
from .formats import EXPORT_FORMATS, SUFFIXES, check_output_path, export, import_architecture, resolve_target
from .graph import (
    architecture_to_graph, from_node_link, from_node_link_json, graph_to_architecture, node_link_json, read_graphml,
    to_node_link,
)
from .model import ONNX_OPSET, load_state_dict, save_onnx, save_state_dict, save_torchscript, trace

__all__ = [
    "EXPORT_FORMATS", "ONNX_OPSET", "SUFFIXES", "architecture_to_graph", "check_output_path", "export",
    "from_node_link", "from_node_link_json", "graph_to_architecture", "import_architecture", "load_state_dict",
    "node_link_json", "read_graphml", "resolve_target", "save_onnx", "save_state_dict", "save_torchscript", "to_node_link", "trace",
]
