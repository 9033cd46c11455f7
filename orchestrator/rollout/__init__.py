"""Shipping signed bundles to SSH devices: enrolment, push, activation, per-device results.

Only this package talks to Fabric (and so to paramiko). Its modules:
``ssh`` (strict host-key connections), ``enroll`` (install the device agent and
trust set), ``deploy`` (resumable, deduplicated upload, then verify -> activate ->
health check on the device), ``errors`` (the errors of keys, bundles and rollout).
"""
