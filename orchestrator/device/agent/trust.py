"""The device's trust set: which keys may sign bundles, and how a newer set replaces it."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

from .crypto import key_id_of_pem, openssl_verify, sha256_bytes
from .errors import Nothing, Refusal
from .files import fsync_dir, read_json, write_atomic
from .state import Install


class Trust(Install):
    """Reads, checks and installs trust sets (``trust/current``)."""

    def trust_path(self) -> str:
        return os.path.join(self.trust_dir, "current")

    def trust(self) -> dict:
        path = os.path.join(self.trust_path(), "trust.json")
        if not os.path.isfile(path):
            raise Nothing("no trust set on this device; run edgeship enroll")
        return read_json(path)

    def key_pem(self, kid: str, trust: dict | None = None) -> str:
        """The PEM file of a trusted key; Refusal for a revoked or unknown key."""
        trust = trust if trust is not None else self.trust()
        if kid in trust.get("revoked", []):
            raise Refusal("revoked_key", f"signed by revoked key {kid}")
        if kid not in [k["key_id"] for k in trust.get("keys", [])]:
            raise Refusal("untrusted_key", f"signed by key {kid}, which this device does not trust")
        return os.path.join(self.trust_path(), "keys", kid + ".pem")

    def bundle_keys(self) -> list:
        """(key id, PEM path) of every key allowed to sign bundles and rollback orders."""
        trust = self.trust()
        revoked = trust.get("revoked", [])
        return [
            (k["key_id"], os.path.join(self.trust_path(), "keys", k["key_id"] + ".pem"))
            for k in trust.get("keys", [])
            if k["key_id"] not in revoked
        ]

    def _check_trust_doc(self, data: bytes, source: str) -> dict:
        try:
            doc = json.loads(data.decode())
        except ValueError as exc:
            raise Refusal("malformed_trust", f"{source}: invalid JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("kind") != "edgeship.trust":
            raise Refusal("malformed_trust", f"{source}: not an edgeship trust set")
        try:
            for entry in doc["keys"]:
                if key_id_of_pem(entry["public_key_pem"]) != entry["key_id"]:
                    raise Refusal(
                        "malformed_trust",
                        "{}: key {} does not match its id".format(source, entry["key_id"]),
                    )
            int(doc["serial"])
            str(doc["signed_by"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Refusal("malformed_trust", f"{source}: malformed trust set ({exc!r})") from exc
        return doc

    def _install_trust(self, data: bytes, sig: bytes, doc: dict) -> None:
        serial = int(doc["serial"])
        name = f"{serial}-{sha256_bytes(data)[:12]}"  # never the folder `current` points at
        folder = os.path.join(self.trust_dir, name)
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "keys"))
        for entry in doc["keys"]:
            if entry["key_id"] in doc.get("revoked", []):
                continue
            write_atomic(
                os.path.join(tmp, "keys", entry["key_id"] + ".pem"),
                entry["public_key_pem"].encode(),
            )
        write_atomic(os.path.join(tmp, "trust.json.sig"), sig)
        write_atomic(os.path.join(tmp, "trust.json"), data)
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
                shutil.rmtree(os.path.join(self.trust_dir, entry), ignore_errors=True)

    def _verify_with(self, pem_path: str, data: bytes, sig: bytes) -> bool:
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            data_path = os.path.join(tmp, "doc")
            sig_path = os.path.join(tmp, "doc.sig")
            with open(data_path, "wb") as fh:
                fh.write(data)
            with open(sig_path, "wb") as fh:
                fh.write(sig)
            return openssl_verify(pem_path, data_path, sig_path)

    def update_trust(self, path: str, sig_path: str | None, first: bool = False) -> dict:
        """Accept a trust set signed by a key this device trusts, with a higher serial."""
        sig_path = sig_path or path + ".sig"
        if not os.path.isfile(sig_path):
            raise Refusal("missing_signature", f"no signature {sig_path} for the trust set")
        with open(path, "rb") as fh:
            data = fh.read()
        with open(sig_path, "rb") as fh:
            sig = fh.read()
        self.drop_upload(path, sig_path)
        doc = self._check_trust_doc(data, path)
        signer = str(doc["signed_by"])
        if first:
            pems = {k["key_id"]: k["public_key_pem"] for k in doc["keys"]}
            if signer not in pems:
                raise Refusal(
                    "untrusted_key",
                    f"the trust set is signed by {signer}, which it does not list",
                )
            with tempfile.TemporaryDirectory(dir=self.root) as tmp:
                pem = os.path.join(tmp, "signer.pem")
                with open(pem, "w") as fh:
                    fh.write(pems[signer])
                if not self._verify_with(pem, data, sig):
                    raise Refusal("bad_signature", "the trust set's signature does not verify")
            self._install_trust(data, sig, doc)
            self.log("trust_installed", serial=doc["serial"], keys=sorted(pems), first=True)
            return {"result": "installed", "serial": doc["serial"]}
        current = self.trust()
        if int(doc["serial"]) == int(current["serial"]):
            installed = os.path.join(self.trust_path(), "trust.json")
            with open(installed, "rb") as fh:
                if fh.read() == data:
                    return {"result": "unchanged", "serial": doc["serial"]}
            raise Refusal(
                "stale_trust",
                "trust set serial {} is already installed with other content".format(doc["serial"]),
            )
        if int(doc["serial"]) < int(current["serial"]):
            raise Refusal(
                "stale_trust",
                "trust set serial {} is not newer than the installed serial {}".format(
                    doc["serial"], current["serial"]
                ),
            )
        pem = self.key_pem(signer, current)
        if not self._verify_with(pem, data, sig):
            raise Refusal(
                "bad_signature",
                f"the trust set's signature does not verify with key {signer}",
            )
        self._install_trust(data, sig, doc)
        self.log(
            "trust_updated", serial=doc["serial"], signed_by=signer, revoked=doc.get("revoked", [])
        )
        return {"result": "updated", "serial": doc["serial"], "previous_serial": current["serial"]}

    def apply_carried_trust(self, extracted: str) -> None:
        """Apply the trust sets an exported bundle carries (trust/), oldest first, if newer."""
        folder = os.path.join(extracted, "trust")
        if not os.path.isdir(folder):
            return
        serial = int(self.trust()["serial"])
        for name in sorted(os.listdir(folder)):
            match = re.match(r"trust-(\d+)\.json$", name)
            if match and int(match.group(1)) > serial:
                self.update_trust(os.path.join(folder, name), None)
                serial = int(match.group(1))
