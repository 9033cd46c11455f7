"""Specs: Hydra composition, the one YAML reader, pure cross-field rules, gates, fleets and
rollout strategies. Every problem is reported with its file, key, expectation and finding."""
