"""Everything a device checks before it installs a bundle, and bundles in as folders or tars.

Versions: a bundle whose version is lower than the active one is refused unless
a signed rollback order (rollback.json + .sig, beside the manifest) names that
version and manifest digest. The same version with the same manifest digest is
a no-op ("unchanged"); the same version with another digest is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile

from .clock import parse_time, utcnow
from .crypto import openssl_verify, sha256_bytes, sha256sum_check
from .errors import AgentError, Refusal
from .files import ENVELOPE, MANIFEST, ROLLBACK, ROLLBACK_SIG, SIGNATURE, read_json
from .runtimes import runtime_version, satisfies
from .trust import Trust

SAFE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*)*$")


class Verifier(Trust):
    """Signature, files and policy of a bundle folder; raises Refusal."""

    def read_manifest(self, folder: str) -> tuple:
        path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(path):
            raise Refusal("malformed", f"{folder} has no {MANIFEST}")
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            manifest = json.loads(data.decode())
            if manifest.get("kind") != "edgeship.bundle":
                raise ValueError("kind is not edgeship.bundle")
            int(manifest["version"])
            str(manifest["signing"]["key_id"])
            list(manifest["files"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Refusal("malformed", f"{path}: not a valid manifest ({exc})") from exc
        return manifest, sha256_bytes(data)

    def check_signature(self, folder: str) -> tuple:
        """Signature of the manifest by a trusted, unrevoked key (openssl)."""
        sig = os.path.join(folder, SIGNATURE)
        if not os.path.isfile(os.path.join(folder, MANIFEST)):
            raise Refusal("malformed", f"{folder} has no {MANIFEST}")
        if not os.path.isfile(sig):
            raise Refusal("missing_signature", f"no signature: {SIGNATURE} is missing")
        manifest, digest = self.read_manifest(folder)
        kid = str(manifest["signing"]["key_id"])
        pem = self.key_pem(kid)
        if not openssl_verify(pem, os.path.join(folder, MANIFEST), sig):
            raise Refusal(
                "bad_signature",
                f"bad signature: {SIGNATURE} does not verify with key {kid}",
            )
        return manifest, digest

    def check_files(self, folder: str, manifest: dict) -> list:
        """Every file listed, none unlisted, every hash right (sha256sum). Returns problems."""
        problems = []
        listed = {}
        for entry in manifest["files"]:
            path = str(entry.get("path", ""))
            if not SAFE_PATH.match(path) or ".." in path.split("/"):
                problems.append(("malformed", f"unsafe file name in manifest: {path!r}"))
                continue
            listed[path] = entry
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in filenames + [
                d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
            ]:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, folder).replace(os.sep, "/")
                if rel in ENVELOPE and dirpath == folder:
                    continue
                if os.path.islink(full):
                    problems.append(("unlisted_file", f"symbolic link in bundle: {rel}"))
                elif rel not in listed:
                    problems.append(("unlisted_file", f"file not in the manifest: {rel}"))
        present = []
        for rel, entry in sorted(listed.items()):
            full = os.path.join(folder, rel)
            if not os.path.isfile(full) or os.path.islink(full):
                problems.append(("missing_file", f"file missing: {rel}"))
            elif os.path.getsize(full) != int(entry.get("size", -1)):
                problems.append(("hash_mismatch", f"size differs from the manifest: {rel}"))
            else:
                present.append(entry)
        for rel in sha256sum_check(folder, present):
            problems.append(("hash_mismatch", f"sha256 differs from the manifest: {rel}"))
        return problems

    def check_rollback_order(self, folder: str, manifest: dict, digest: str) -> str | None:
        """None when a valid signed rollback order names this bundle, else why not."""
        path = os.path.join(folder, ROLLBACK)
        sig = os.path.join(folder, ROLLBACK_SIG)
        if not os.path.isfile(path):
            return "no signed rollback order names it"
        if not os.path.isfile(sig):
            return "the rollback order has no signature"
        try:
            order = read_json(path)
            kid = str(order["signing"]["key_id"])
        except (ValueError, KeyError, TypeError) as exc:
            return f"the rollback order is malformed ({exc})"
        try:
            pem = self.key_pem(kid)
        except Refusal as exc:
            return f"the rollback order is {exc.message}"
        if not openssl_verify(pem, path, sig):
            return "the rollback order's signature does not verify"
        if order.get("kind") != "edgeship.rollback":
            return "the rollback order is not an edgeship rollback order"
        if (
            order.get("deployment") != manifest.get("deployment")
            or int(order.get("version", -1)) != int(manifest["version"])
            or order.get("manifest_sha256") != digest
        ):
            return "the rollback order names another bundle"
        if parse_time(str(order.get("expires_at"))) <= utcnow():
            return "the rollback order expired at {}".format(order.get("expires_at"))
        return None

    def check_policy(self, folder: str, manifest: dict, digest: str) -> tuple:
        """Expiry, family, deployment, version order, runtime; returns (problems, unchanged)."""
        problems = []
        device = self.device()
        try:
            expires = parse_time(str(manifest["expires_at"]))
        except (KeyError, ValueError):
            problems.append(("malformed", "manifest has no valid expires_at"))
        else:
            if expires <= utcnow():
                problems.append(
                    ("expired", "manifest expired at {}".format(manifest["expires_at"]))
                )
        target = manifest.get("target") or {}
        family = target.get("family")
        if family != device.get("family"):
            problems.append(
                (
                    "wrong_family",
                    "bundle is for target family '{}'; this device is '{}'".format(
                        family, device.get("family")
                    ),
                )
            )
        state = self.state()
        current = self.link_version(self.current)
        deployment = manifest.get("deployment")
        unchanged = False
        if current is not None:
            if state.get("deployment") and deployment != state.get("deployment"):
                problems.append(
                    (
                        "wrong_deployment",
                        "bundle is for deployment '{}'; this device runs '{}'".format(
                            deployment, state.get("deployment")
                        ),
                    )
                )
            version = int(manifest["version"])
            if version == current:
                installed = state.get("versions", {}).get(str(current), {})
                if installed.get("manifest_sha256") == digest:
                    unchanged = True
                else:
                    problems.append(
                        (
                            "version_conflict",
                            f"version {version} is installed with a different manifest",
                        )
                    )
            elif version < current:
                why = self.check_rollback_order(folder, manifest, digest)
                if why is not None:
                    problems.append(
                        (
                            "downgrade",
                            f"version {version} is lower than the active version {current} "
                            f"and {why}",
                        )
                    )
        runtime = target.get("runtime")
        have = runtime_version(str(runtime))
        if have is None:
            problems.append(
                (
                    "runtime_unavailable",
                    f"runtime {runtime} is not installed on this device",
                )
            )
        else:
            wanted = str(target.get("runtime_requirement") or "")
            if wanted and not satisfies(have, wanted):
                problems.append(
                    (
                        "runtime_version",
                        f"bundle needs {runtime} {wanted}; this device has {have}",
                    )
                )
        return problems, unchanged

    def verify(self, folder: str, policy: bool = True, files: bool = True) -> dict:
        """Everything a device checks before it installs a bundle; raises Refusal.

        ``files=False`` checks only the signed manifest (signature, key, policy): a
        sender asks that before uploading the files.
        """
        manifest, digest = self.check_signature(folder)
        problems = []
        unchanged = False
        if policy:
            problems, unchanged = self.check_policy(folder, manifest, digest)
        if files:
            problems += self.check_files(folder, manifest)
        if problems:
            code, message = problems[0]
            raise Refusal(code, message, problems[1:])
        return {
            "deployment": manifest.get("deployment"),
            "version": int(manifest["version"]),
            "manifest_sha256": digest,
            "key_id": manifest["signing"]["key_id"],
            "unchanged": unchanged,
            "manifest": manifest,
        }

    # -- bundles in, as folders or tar files ---------------------------------------------------

    def open_bundle(self, path: str) -> tuple:
        """A folder to verify: the folder itself, or a tar extracted into staging/."""
        path = os.path.abspath(path)
        if os.path.isdir(path):
            return path, None
        if not os.path.isfile(path):
            raise AgentError(f"no bundle at {path}")
        os.makedirs(self.staging, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="tar-", dir=self.staging)
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            for member in members:
                parts = member.name.split("/")
                if (
                    member.name.startswith("/")
                    or ".." in parts
                    or not (member.isfile() or member.isdir())
                ):
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise Refusal("malformed", f"unsafe entry in {path}: {member.name}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp, members=members)  # every member was checked above
        found = [d for d, _, files in os.walk(tmp) if MANIFEST in files]
        if len(found) != 1:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Refusal("malformed", f"{path} holds {len(found)} manifests; expected one")
        return found[0], tmp
