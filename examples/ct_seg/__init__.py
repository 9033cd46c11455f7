"""3-D nnU-Net-style segmentation network trained on synthetic CT phantoms."""
