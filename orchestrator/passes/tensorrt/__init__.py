"""Passes that shape an ONNX model for TensorRT's ONNX parser."""
