"""Exportable model modules, the cross-attention custom op and the ONNX exporter."""
