"""Shipping signed bundles: enrolment, push, activation, rollouts, status, trace, phone feeds.

Only this package talks to Fabric (and so to paramiko). Its modules:

- ``ssh``: strict host-key connections;
- ``enroll``: install the device agent and trust set;
- ``deploy``: one device's path (resumable, deduplicated upload, then verify -> activate
  -> health check on the device), and ``edgeship deploy`` over a list of devices;
- ``plan``, ``journal``, ``lock``, ``engine``: ``edgeship rollout`` (waves, failure
  budget, automatic rollback, a resumable fsync'd journal, device locks);
- ``status``, ``trace``: what devices run, and the evidence behind it;
- ``feed``: the signed update feed phones poll (``edgeship publish``);
- ``results``, ``errors``: per-device outcomes and the errors of keys, bundles, rollouts.
"""
