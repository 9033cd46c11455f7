"""The command line: parsing and printing only. Each module with ``register(sub)`` adds verbs."""
