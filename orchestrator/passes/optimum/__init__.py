"""Passes that run Hugging Face optimum in its tool environment."""
