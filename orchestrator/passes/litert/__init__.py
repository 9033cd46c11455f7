"""Passes that make LiteRT (TensorFlow Lite) models: litert-torch conversion and quantization."""
