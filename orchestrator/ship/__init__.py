"""The ship half: signed bundles onto devices, and what they run.

Only this room talks to Fabric (and so to paramiko). Its modules:

- ``ssh``: strict host-key connections;
- ``enroll``: install the device agent and trust set;
- ``bundling``: ``edgeship bundle``'s logic (sign a passing artifact, list, open bundles);
- ``deploy``: one device's path (resumable, deduplicated upload, then verify -> activate
  -> health check on the device), and ``edgeship deploy`` over a list of devices;
- ``rollout/`` (``plan``, ``journal``, ``lock``, ``engine``): ``edgeship rollout`` (waves,
  failure budget, automatic rollback, a resumable fsync'd journal, device locks);
- ``status``, ``trace``: what devices run, and the evidence behind it;
- ``feed``: the signed update feed phones poll (``edgeship publish``);
- ``results``: per-device outcomes.

It never imports the build half: the two meet at the artifact folder.
"""
