"""Passes that rewrite a torch.export program (``pt2``) before a runtime converts it."""
