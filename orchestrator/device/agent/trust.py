"""The device's root of trust (a TUF root.json) and how a newer root version replaces it.

``trust/current -> trust/<version>-<hash>/`` holds ``root.json`` as issued and
``keys/<key id>.pem`` for every key it names (what ``openssl`` verifies with).
Bundle manifests and rollback orders must be signed by a key of the root's
``targets`` role; a new root must be exactly one version newer and carry the root
threshold of the installed root and its own (:mod:`.rootmeta`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from . import rootmeta
from .crypto import openssl_verify, sha256_bytes
from .errors import Nothing, Refusal
from .files import fsync_dir, write_atomic
from .state import Install

LEGACY_TRUST = "trust.json"  # the format before TUF roles (refused with what to do)
CARRIED_ROOT = re.compile(r"^(\d+)\.root\.json$")


class Trust(Install):
    """Reads, checks and installs the device's root of trust (``trust/current``)."""

    def trust_path(self) -> str:
        return os.path.join(self.trust_dir, "current")

    def _read_root(self) -> dict:
        folder = self.trust_path()
        path = os.path.join(folder, "root.json")
        if not os.path.isfile(path):
            if os.path.isfile(os.path.join(folder, LEGACY_TRUST)):
                raise Refusal(
                    "legacy_trust",
                    "this device holds a trust set of the format before TUF roles; re-enrol "
                    "it with: edgeship enroll --reset-trust",
                )
            raise Nothing("no root of trust on this device; run edgeship enroll")
        with open(path, "rb") as fh:
            data = fh.read(rootmeta.MAX_ROOT_BYTES + 1)
        return rootmeta.parse_root(data, path)

    def trust(self) -> dict:
        """The installed root's ``signed`` part (``version`` is the trust serial)."""
        return self._read_root()["signed"]

    def role_key_paths(self, role: str, trust: dict | None = None) -> list:
        """(key id, PEM path) of the keys of ``role`` in the installed root."""
        signed = trust if trust is not None else self.trust()
        folder = os.path.join(self.trust_path(), "keys")
        return [(k, os.path.join(folder, k + ".pem")) for k in signed["roles"][role]["keyids"]]

    def bundle_keys(self) -> list:
        """(key id, PEM path) of every key allowed to sign bundles and rollback orders.

        Refuses when the installed root has expired: a device that has not heard from
        the root of trust for that long does not take new software (a freeze attack).
        """
        signed = self.trust()
        if rootmeta.expired(signed):
            raise Refusal(
                "trust_expired",
                "the root of trust (version {}) expired at {}; renew it with 'edgeship keys "
                "renew' and deploy again".format(signed["version"], signed["expires"]),
            )
        return self.role_key_paths("targets", signed)

    def key_pem(self, kid: str, trust: dict | None = None) -> str:
        """The PEM file of a key allowed to sign bundles; Refusal for any other key."""
        keys = self.bundle_keys() if trust is None else self.role_key_paths("targets", trust)
        for key_id, pem in keys:
            if key_id == kid:
                return pem
        raise Refusal("untrusted_key", f"signed by key {kid}, which this device does not trust")

    def verify_bytes(self, pem: str, data: bytes, signature: bytes) -> bool:
        """Ed25519 ``signature`` of ``data`` by the PEM text ``pem``, checked with openssl."""
        tmp = tempfile.mkdtemp(prefix=".verify-", dir=self.root)
        try:
            paths = {}
            for name, content in (("key.pem", pem.encode()), ("doc", data), ("doc.sig", signature)):
                paths[name] = os.path.join(tmp, name)
                with open(paths[name], "wb") as fh:
                    fh.write(content)
            return openssl_verify(paths["key.pem"], paths["doc"], paths["doc.sig"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _install_trust(self, data: bytes, doc: dict) -> None:
        version = int(doc["signed"]["version"])
        name = f"{version}-{sha256_bytes(data)[:12]}"  # never the folder `current` points at
        folder = os.path.join(self.trust_dir, name)
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "keys"))
        signed = doc["signed"]
        for kid, key in sorted(signed["keys"].items()):
            write_atomic(os.path.join(tmp, "keys", kid + ".pem"), rootmeta.key_pem(key).encode())
        write_atomic(os.path.join(tmp, "root.json"), data)
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
        link_tmp = os.path.join(self.trust_dir, f".current.tmp-{os.getpid()}")
        if os.path.lexists(link_tmp):
            os.unlink(link_tmp)
        os.symlink(name, link_tmp)
        os.replace(link_tmp, self.trust_path())
        fsync_dir(self.trust_dir)
        for entry in os.listdir(self.trust_dir):
            if entry not in ("current", name):
                full = os.path.join(self.trust_dir, entry)
                if os.path.islink(full):
                    os.unlink(full)
                else:
                    shutil.rmtree(full, ignore_errors=True)

    def update_trust(self, path: str, sig_path: str | None = None, first: bool = False) -> dict:
        """Install root version N+1 signed by the root thresholds of version N and its own.

        ``first`` (enrolment, or ``--reset-trust``): the root is taken on first use,
        checked against its own root threshold only.
        """
        del sig_path  # a TUF root carries its signatures
        size = os.path.getsize(path)
        if size > rootmeta.MAX_ROOT_BYTES:
            self.drop_upload(path)
            raise Refusal(
                "too_large",
                f"{path}: {size} bytes; a root is at most {rootmeta.MAX_ROOT_BYTES} bytes",
            )
        with open(path, "rb") as fh:
            data = fh.read()
        self.drop_upload(path)
        try:
            doc = rootmeta.parse_root(data, path)
            if first:
                rootmeta.check_first_root(doc, path, self.verify_bytes)
                self._install_trust(data, doc)
                version = doc["signed"]["version"]
                self.log("trust_installed", version=version, first=True)
                return {"result": "installed", "serial": version}
            current = self._read_root()
            if int(doc["signed"]["version"]) == int(current["signed"]["version"]):
                installed = os.path.join(self.trust_path(), "root.json")
                with open(installed, "rb") as fh:
                    if fh.read() == data:
                        return {"result": "unchanged", "serial": doc["signed"]["version"]}
            rootmeta.check_root_update(current, doc, path, self.verify_bytes)
        except rootmeta.RootError as exc:
            raise Refusal(exc.code, exc.message) from exc
        self._install_trust(data, doc)
        version = doc["signed"]["version"]
        self.log(
            "trust_updated",
            serial=version,
            previous=current["signed"]["version"],
            targets=doc["signed"]["roles"]["targets"]["keyids"],
        )
        return {
            "result": "updated",
            "serial": version,
            "previous_serial": current["signed"]["version"],
        }

    def apply_carried_trust(self, extracted: str) -> None:
        """Apply the root versions an exported bundle carries (trust/<N>.root.json), in order."""
        folder = os.path.join(extracted, "trust")
        if not os.path.isdir(folder):
            return
        serial = int(self.trust()["version"])
        carried = []
        for name in os.listdir(folder):
            match = CARRIED_ROOT.match(name)
            if match and int(match.group(1)) > serial:
                carried.append((int(match.group(1)), name))
        for _, name in sorted(carried):
            self.update_trust(os.path.join(folder, name))
