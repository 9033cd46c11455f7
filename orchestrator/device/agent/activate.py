"""Activation: install a verified bundle beside the others, switch to it, check, roll back.

Every step is crash-safe: a version is copied into ``versions/.<v>.tmp-<pid>``,
verified again, renamed into place, and ``current`` is switched with one rename;
state.json journals the activation so that the next command repairs an
interrupted one (:meth:`Install.recover`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat

from .clock import iso
from .errors import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNHEALTHY,
    EXIT_UNHEALTHY_NO_PREVIOUS,
    AgentError,
    Nothing,
    Refusal,
)
from .files import ENVELOPE, fsync_dir, make_read_only, remove_tree
from .health import Health
from .rules import MAX_MANIFEST_BYTES, path_problem, strict_json
from .verify import Verifier, links_on_the_way

CHUNK = 1024 * 1024

ACTIVATION_STEPS = (
    "copying",  # half of the files copied into versions/.<v>.tmp
    "copied",
    "verified",
    "installed",  # versions/<v> in place
    "journal",  # state.json says an activation is under way
    "previous_link",  # temp symlink for `previous` created
    "previous_switched",
    "current_link",  # temp symlink for `current` created
    "current_switched",
    "state_written",
    "health_done",
)


class Activation(Verifier, Health):
    """Activate, roll back, and reuse installed files (deduplicated uploads)."""

    def known_files(self) -> dict:
        """sha256 -> absolute path of files already installed (their manifests re-verified)."""
        out: dict = {}
        for version in self.installed():
            folder = self.version_dir(version)
            try:
                manifest, _ = self.read_manifest(folder)
            except Refusal:
                continue
            for entry in manifest["files"]:
                full = os.path.join(folder, entry["path"])
                if os.path.isfile(full) and os.path.getsize(full) == int(entry.get("size", -1)):
                    out.setdefault(entry["sha256"], full)
        return out

    def install_copy(self, src: str, manifest: dict, version: int) -> str:
        """Copy a bundle into versions/.<v>.tmp: every file a new file (never a link to an
        installed one), copied from an installed version when one holds the same bytes."""
        os.makedirs(self.versions, exist_ok=True)
        tmp = os.path.join(self.versions, f".{version}.tmp-{os.getpid()}")
        remove_tree(tmp)
        os.makedirs(tmp)
        known = self.known_files()
        files = list(manifest["files"])
        for i, entry in enumerate(files):
            dest = os.path.join(tmp, *entry["path"].split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            source = known.get(entry["sha256"])
            copied = source is not None and self.copy_file(source, dest, entry)
            if not copied and not self.copy_file(os.path.join(src, entry["path"]), dest, entry):
                raise Refusal(
                    "hash_mismatch",
                    "sha256 differs from the manifest: {}".format(entry["path"]),
                )
            if i == len(files) // 2:
                self.step("copying")
        for name in ENVELOPE:
            if os.path.isfile(os.path.join(src, name)) and not os.path.islink(
                os.path.join(src, name)
            ):
                shutil.copyfile(os.path.join(src, name), os.path.join(tmp, name))
        self.step("copied")
        return tmp

    def copy_file(self, source: str, dest: str, entry: dict) -> bool:
        """Copy ``source`` to the new file ``dest`` if its bytes hash to ``entry``'s SHA-256."""
        return copy_checked(source, dest, entry)

    def recheck(self, version: int) -> Refusal | None:
        """Verify an installed version again (signature, every hash) before switching to it;
        the refusal when it no longer verifies (damaged, or signed by a key now revoked)."""
        folder = self.version_dir(version)
        if not os.path.isdir(folder):
            return Refusal("missing_file", f"version {version} is not installed")
        try:
            self.verify(folder, policy=False)
        except Refusal as exc:
            return exc
        except (OSError, ValueError) as exc:
            return Refusal("malformed", f"version {version}: {type(exc).__name__}: {exc}")
        return None

    def usable_version(self, version: int) -> bool:
        """Whether recovery may switch to ``version`` (it verifies again); logs when not."""
        refused = self.recheck(version)
        if refused is None:
            return True
        self.log(
            "rollback_refused",
            version=version,
            refusal=refused.code,
            message=f"version {version} no longer verifies: {refused.message}",
        )
        return False

    def activate(self, bundle: str, timeout: float) -> tuple:
        self.recover()
        device = self.device()
        folder, extracted = self.open_bundle(bundle)
        try:
            try:
                if extracted:
                    self.apply_carried_trust(extracted)
                info = self.verify(folder)
            except Refusal as exc:
                self.log(
                    "refused",
                    refusal=exc.code,
                    message=exc.message,
                    more=[m for _, m in exc.more],
                    bundle=bundle,
                )
                self._drop_staged(bundle)
                return self.refusal_result(exc), EXIT_REFUSED
            version = info["version"]
            state = self.state()
            if info["unchanged"]:
                if state.get("pending_health") == version:
                    self._drop_staged(bundle)
                    return self._finish_health(version, state.get("pending_from"), timeout)
                self.log("unchanged", version=version, deployment=info["deployment"])
                self._drop_staged(bundle)
                return {
                    "result": "unchanged",
                    "version": version,
                    "deployment": info["deployment"],
                }, EXIT_OK
            dest = self.version_dir(version)
            if os.path.isdir(dest):
                _, existing = self.read_manifest(dest)
                if existing != info["manifest_sha256"]:
                    refusal = Refusal(
                        "version_conflict",
                        f"version {version} is installed with a different manifest",
                    )
                    self.log(
                        "refused", refusal=refusal.code, message=refusal.message, bundle=bundle
                    )
                    self._drop_staged(bundle)
                    return self.refusal_result(refusal), EXIT_REFUSED
            else:
                tmp = os.path.join(self.versions, f".{version}.tmp-{os.getpid()}")
                try:
                    tmp = self.install_copy(folder, info["manifest"], version)
                    self.verify(tmp, policy=False)
                except Refusal as exc:
                    remove_tree(tmp)
                    self.log("refused", refusal=exc.code, message="installed copy: " + exc.message)
                    self._drop_staged(bundle)
                    return self.refusal_result(exc), EXIT_REFUSED
                self.step("verified")
                make_read_only(tmp)
                os.rename(tmp, dest)
                make_read_only(dest)  # files 0444, folders 0555: installed versions never change
                fsync_dir(self.versions)
                self.step("installed")
        finally:
            if extracted:
                shutil.rmtree(extracted, ignore_errors=True)
        old = self.link_version(self.current)
        state["pending"] = {
            "version": version,
            "from": old,
            "pid": os.getpid(),
            "started_at": iso(),
        }
        state["deployment"] = info["deployment"]
        order = info.get("rollback_order")
        if order is not None:  # used once: remembered before anything switches
            state.setdefault("rollback_orders_used", []).append(
                {
                    "nonce": order["nonce"],
                    "version": version,
                    "from_version": order.get("from_version"),
                    "used_at": iso(),
                }
            )
        state.setdefault("versions", {})[str(version)] = {
            "manifest_sha256": info["manifest_sha256"],
            "key_id": info["key_id"],
            "installed_at": iso(),
            "created_at": info["manifest"].get("created_at"),
            "expires_at": info["manifest"].get("expires_at"),
            "provenance": {
                "git": (info["manifest"].get("provenance") or {}).get("git"),
                "mlflow": (info["manifest"].get("provenance") or {}).get("mlflow"),
            },
        }
        self.save_state(state)
        self.step("journal")
        if old is not None and old != version:
            self.switch(self.previous, old)
        self.switch(self.current, version)
        state = self.state()
        state["pending"] = None
        state["pending_health"] = version
        state["pending_from"] = old
        state["history"] = [v for v in state.get("history", []) if v != version] + [version]
        state["versions"][str(version)]["activated_at"] = iso()
        self.save_state(state)
        self.log(
            "activated",
            version=version,
            previous=old,
            deployment=info["deployment"],
            device=device.get("name"),
        )
        self.step("state_written")
        self._drop_staged(bundle)
        return self._finish_health(version, old, timeout)

    def _finish_health(self, version: int, old: int | None, timeout: float) -> tuple:
        result = self.run_health(version, timeout)
        self.step("health_done")
        state = self.state()
        self.record_health(state, version, result)
        state["pending_health"] = None
        state["pending_from"] = None
        self.save_state(state)
        if result["result"] == "pass":
            self.log("healthy", version=version, latency_ms=result.get("latency_ms"))
            return {
                "result": "activated",
                "version": version,
                "previous": old,
                "health": result,
            }, EXIT_OK
        self.log("unhealthy", version=version, reason=result.get("reason"))
        state["failed"] = sorted(set(state.get("failed", [])) | {version})
        state["history"] = [v for v in state.get("history", []) if v != version]
        self.save_state(state)
        refused = None
        if old is not None and old != version and os.path.isdir(self.version_dir(old)):
            refused = self.recheck(old)
        if (
            refused is None
            and old is not None
            and old != version
            and os.path.isdir(self.version_dir(old))
        ):
            self.switch(self.current, old)
            self.switch(self.previous, self._predecessor(old))
            self.log("rolled_back", version=old, from_version=version, reason="health check failed")
            return (
                {
                    "result": "rolled_back",
                    "version": old,
                    "failed_version": version,
                    "health": result,
                },
                EXIT_UNHEALTHY,
            )
        self.switch(self.current, None)
        out = {
            "result": "unhealthy",
            "version": None,
            "failed_version": version,
            "health": result,
        }
        if refused is not None:
            why = (
                f"previous version {old} no longer verifies ({refused.code}: {refused.message}); "
                "not switched to it"
            )
            self.log("rollback_refused", version=old, refusal=refused.code, message=why)
            out["rollback_refused"] = {"version": old, "refusal": refused.code, "message": why}
        self.log(
            "deactivated",
            version=version,
            reason="health check failed and no previous version"
            if refused is None
            else "health check failed and the previous version no longer verifies",
        )
        return out, EXIT_UNHEALTHY_NO_PREVIOUS

    def _predecessor(self, version: int) -> int | None:
        """The good version activated before ``version`` that is still on disk."""
        state = self.state()
        history = [v for v in state.get("history", []) if v not in state.get("failed", [])]
        if version in history:
            earlier = history[: history.index(version)]
        else:
            earlier = [v for v in history if v < version]
        for v in reversed(earlier):
            if os.path.isdir(self.version_dir(v)):
                return v
        return None

    def rollback(self, to: int | None) -> dict:
        self.recover()
        current = self.link_version(self.current)
        target = to if to is not None else self.link_version(self.previous)
        if target is None:
            raise Nothing("no previous version to roll back to")
        folder = self.version_dir(target)
        if not os.path.isdir(folder):
            raise Nothing(f"version {target} is not installed here; installed: {self.installed()}")
        if target == current:
            return {"result": "unchanged", "version": current}
        refused = self.recheck(target)
        if refused is not None:
            raise Refusal(
                refused.code,
                f"version {target} no longer verifies; not switched to it: {refused.message}",
                refused.more,
            )
        self.switch(self.current, target)
        self.switch(self.previous, self._predecessor(target))
        state = self.state()
        state["history"] = [v for v in state.get("history", []) if v != target] + [target]
        self.save_state(state)
        self.log("rolled_back", version=target, from_version=current, reason="on command")
        return {"result": "rolled_back", "version": target, "from_version": current}

    def inventory(self) -> dict:
        known = self.known_files()
        return {"files": {sha: os.path.relpath(p, self.root) for sha, p in known.items()}}

    def link(self, plan_path: str) -> dict:
        """Copy installed files into staging/ (plan: [{"sha256", "dest"}]) so they need not
        travel. A copy, never a hard link: nothing written into staging can reach an
        installed version. Each copy is checked against its sha256 while it is made."""
        data = self._read_capped(plan_path, MAX_MANIFEST_BYTES, "link plan")
        self.drop_upload(plan_path)
        try:
            plan = strict_json(data)
        except ValueError as exc:
            raise AgentError(f"{plan_path}: not a valid link plan ({exc})") from exc
        if not isinstance(plan, list):
            raise AgentError(f"{plan_path}: expected a list of {{sha256, dest}}")
        known = self.known_files()
        linked, missing = 0, []
        for item in plan:
            rel = str(item["dest"])
            dest = os.path.abspath(os.path.join(self.root, rel))
            why = path_problem(rel)
            if why or not dest.startswith(self.staging + os.sep):
                raise AgentError("link destination outside staging/: {}".format(item["dest"]))
            source = known.get(item["sha256"])
            if source is None:
                missing.append(item["dest"])
                continue
            if links_on_the_way(self.root, rel):
                raise AgentError(f"link destination passes a symbolic link: {rel}")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            for stale in (dest, dest + ".part"):
                if os.path.lexists(stale):
                    os.unlink(stale)
            entry = {"sha256": item["sha256"], "size": os.path.getsize(source)}
            if copy_checked(source, dest, entry):
                linked += 1
            else:
                missing.append(item["dest"])
        return {"linked": linked, "missing": missing}


def copy_checked(source: str, dest: str, entry: dict) -> bool:
    """Copy ``source`` to the new file ``dest`` (O_EXCL, O_NOFOLLOW) hashing as it goes.

    Reads at most ``entry["size"]`` + 1 bytes; True when size and sha256 match the entry.
    A mismatching copy is removed again. ``dest`` must not exist: nothing is written
    through an existing file or link.
    """
    size = int(entry["size"])
    digest = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        src = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            return False
        out = os.open(dest, flags, 0o644)
        count = 0
        try:
            while count <= size:
                block = os.read(src, min(CHUNK, size + 1 - count))
                if not block:
                    break
                count += len(block)
                digest.update(block)
                os.write(out, block)
        finally:
            os.close(out)
    finally:
        os.close(src)
    if count != size or digest.hexdigest() != entry["sha256"]:
        os.unlink(dest)
        return False
    os.chmod(dest, 0o444)
    return True
