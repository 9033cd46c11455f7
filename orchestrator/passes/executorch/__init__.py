"""Passes that make ExecuTorch programs (``.pte``): lowering with the XNNPACK partitioner."""
