"""Passes that rewrite the ONNX graph itself, for every runtime that loads ONNX."""
