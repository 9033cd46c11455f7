"""Apache TVM passes: they run in the TVM tool environment (orchestrator/core/toolenv.py)."""
