"""Core ML passes: torch.export program -> ML program package (coremltools), weight compression."""
