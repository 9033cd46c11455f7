"""Prediction events from devices: the collector (MQTT -> database), queries, rules, actions.

See docs/events.md. Devices write events into their outbox and publish them
(``orchestrator/device/agent/events.py``); this room receives, stores,
deduplicates and acts on them.
"""
