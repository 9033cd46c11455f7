"""The lowest room: the typed config schema, type checks, model files, file-system helpers,
metrics. Imports nothing of edgeship but ``project`` and ``errors``."""
