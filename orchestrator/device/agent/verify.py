"""Everything a device checks before it installs a bundle, and bundles in as folders or tars.

A manifest is judged on its raw bytes first (size, nesting depth, the signature by
a key trusted to sign bundles), then parsed (duplicate keys refused) and checked by
the rules of :mod:`.rules` (every path, the names, the structure), before anything
is written for it.

Versions: a bundle whose version is lower than the active one is refused unless
a signed rollback order (rollback.json + .sig, beside the manifest) names that
version and manifest digest, the version the device runs now and this device or
its fleet, with a nonce this device has not executed yet. The same version with
the same manifest digest is a no-op ("unchanged"); the same version with another
digest is refused. A manifest created more than ``MAX_CLOCK_SKEW_SECONDS`` ahead of
the device's clock is refused.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from datetime import timedelta

from . import rootmeta
from .clock import parse_time, utcnow
from .crypto import openssl_verify, sha256_bytes, sha256_check
from .errors import AgentError, Refusal
from .files import (
    APPROVAL,
    APPROVAL_SIG,
    ENVELOPE,
    MANIFEST,
    ROLLBACK,
    ROLLBACK_SIG,
    SIGNATURE,
    remove_tree,
)
from .rules import (
    BUNDLE_KIND,
    MAX_CLOCK_SKEW_SECONDS,
    MAX_MANIFEST_BYTES,
    MAX_ORDER_BYTES,
    MAX_SIGNATURE_BYTES,
    MEASURE_KIND,
    DuplicateKey,
    claimed_key_id,
    json_depth_problem,
    manifest_problems,
    path_problem,
    strict_json,
    version_problem,
)
from .runtimes import runtime_version, satisfies
from .trust import Trust
from .unpack import extract_bundle


class Verifier(Trust):
    """Signature, files and policy of a bundle folder; raises Refusal."""

    def _read_capped(self, path: str, limit: int, what: str) -> bytes:
        """The bytes of a regular file (not a link) of at most ``limit`` bytes."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise Refusal("malformed", f"{path}: missing") from None
        if not stat.S_ISREG(info.st_mode):
            raise Refusal("unsafe_path", f"{path}: {what} is not a regular file")
        if info.st_size > limit:
            raise Refusal(
                "too_large", f"{path}: {info.st_size} bytes; a {what} may have at most {limit}"
            )
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise Refusal("too_large", f"{path}: more than {limit} bytes; too large for a {what}")
        return data

    def signed_by(self, data: bytes, sig: bytes) -> str | None:
        """The id of the bundle key whose signature ``sig`` is over the raw ``data``, or None.

        Tries every key the trust set allows to sign bundles (openssl, on exactly these
        bytes written to a private temporary folder), before anything parses ``data``.
        """
        keys = list(self.bundle_keys())
        claimed = claimed_key_id(data)
        keys.sort(key=lambda k: k[0] != claimed)  # the key the document names first
        os.makedirs(self.staging, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".verify-", dir=self.staging) as tmp:
            data_path = os.path.join(tmp, "data")
            sig_path = os.path.join(tmp, "data.sig")
            for name, body in ((data_path, data), (sig_path, sig)):
                with open(name, "wb") as fh:
                    fh.write(body)
            for kid, pem in keys:
                if os.path.isfile(pem) and openssl_verify(pem, data_path, sig_path):
                    return str(kid)
        return None

    def _signature_refusal(self, data: bytes, what: str) -> Refusal:
        """Why no bundle key signed ``data``: revoked, untrusted or a bad signature."""
        claimed = claimed_key_id(data)
        if claimed is not None:
            try:
                self.key_pem(claimed)
            except Refusal as exc:
                return exc
            return Refusal(
                "bad_signature", f"bad signature: {what} does not verify with key {claimed}"
            )
        return Refusal(
            "bad_signature",
            f"bad signature: {what} does not verify with any key trusted to sign bundles",
        )

    def load_manifest(self, folder: str, kinds: tuple = (BUNDLE_KIND,)) -> tuple:
        """(manifest, sha256 of its bytes, id of the key that signed it); raises Refusal.

        On the raw bytes first: size, nesting depth, the signature by a bundle key;
        then the parse (duplicate keys refused) and every rule of :mod:`.rules`
        (``kinds``: the manifest kinds accepted).
        """
        path = os.path.join(folder, MANIFEST)
        if not os.path.lexists(path):
            raise Refusal("malformed", f"{folder} has no {MANIFEST}")
        data = self._read_capped(path, MAX_MANIFEST_BYTES, "manifest")
        why = json_depth_problem(data)
        if why:
            raise Refusal("too_deep", f"{path}: {why}; refused before parsing")
        sig = os.path.join(folder, SIGNATURE)
        if not os.path.lexists(sig):
            raise Refusal("missing_signature", f"no signature: {SIGNATURE} is missing")
        signature = self._read_capped(sig, MAX_SIGNATURE_BYTES, "signature")
        kid = self.signed_by(data, signature)
        if kid is None:
            raise self._signature_refusal(data, SIGNATURE)
        manifest = self._parse(path, data)
        problems = manifest_problems(manifest, kinds)
        if problems:
            raise Refusal(
                problems[0][0],
                f"{path}: {problems[0][1]}",
                [(c, f"{path}: {m}") for c, m in problems[1:]],
            )
        return manifest, sha256_bytes(data), kid

    def _parse(self, path: str, data: bytes) -> object:
        try:
            return strict_json(data)
        except DuplicateKey as exc:
            raise Refusal("duplicate_key", f"{path}: {exc}") from exc
        except RecursionError as exc:
            raise Refusal("too_deep", f"{path}: nested too deep to parse") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refusal("malformed", f"{path}: not valid JSON ({exc})") from exc

    def read_manifest(self, folder: str, kinds: tuple = (BUNDLE_KIND,)) -> tuple:
        """(manifest, digest) of a signed, well-formed manifest; raises Refusal."""
        manifest, digest, _ = self.load_manifest(folder, kinds)
        return manifest, digest

    def check_signature(self, folder: str, kinds: tuple = (BUNDLE_KIND,)) -> tuple:
        """Signature of the manifest by a trusted, unrevoked key (openssl), then its rules."""
        return self.read_manifest(folder, kinds)

    def check_files(self, folder: str, manifest: dict) -> list:
        """Every file listed, none unlisted, every hash right. Returns problems."""
        problems = []
        listed = {}
        for entry in manifest["files"]:
            path = entry.get("path")
            why = path_problem(path)
            if why:
                problems.append(("unsafe_path", f"unsafe file name in manifest: {why}"))
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
                elif not os.path.isfile(full):
                    problems.append(("unlisted_file", f"not a regular file in bundle: {rel}"))
                elif rel not in listed:
                    problems.append(("unlisted_file", f"file not in the manifest: {rel}"))
        present = []
        for rel, entry in sorted(listed.items()):
            full = os.path.join(folder, rel)
            if not os.path.isfile(full) or links_on_the_way(folder, rel):
                problems.append(("missing_file", f"file missing: {rel}"))
            elif os.path.getsize(full) != int(entry.get("size", -1)):
                problems.append(("hash_mismatch", f"size differs from the manifest: {rel}"))
            else:
                present.append(entry)
        for rel in sha256_check(folder, present):
            problems.append(("hash_mismatch", f"sha256 differs from the manifest: {rel}"))
        return problems

    def check_rollback_order(self, folder: str, manifest: dict, digest: str) -> tuple:
        """(order, None) when a valid signed rollback order allows this bundle now, else
        (None, (code, why)).

        The order must be signed by a bundle key (checked on its raw bytes), name this
        bundle (deployment, version, manifest digest), the version the device runs now
        (``from_version``), this device or its fleet, carry a nonce this device has not
        executed yet, and be neither expired nor created in the future.
        """
        path = os.path.join(folder, ROLLBACK)
        sig = os.path.join(folder, ROLLBACK_SIG)
        if not os.path.lexists(path):
            return None, ("downgrade", "no signed rollback order names it")
        if not os.path.lexists(sig):
            return None, ("downgrade", "the rollback order has no signature")
        try:
            data = self._read_capped(path, MAX_ORDER_BYTES, "rollback order")
            why = json_depth_problem(data)
            if why:
                raise Refusal("too_deep", f"the rollback order is {why}")
            signature = self._read_capped(sig, MAX_SIGNATURE_BYTES, "signature")
        except Refusal as exc:
            return None, (exc.code, exc.message)
        if self.signed_by(data, signature) is None:
            return None, (
                "downgrade",
                "the rollback order's signature does not verify with any key trusted to sign "
                "bundles",
            )
        try:
            order = self._parse(path, data)
        except Refusal as exc:
            return None, (exc.code, exc.message)
        if not isinstance(order, dict) or order.get("kind") != "edgeship.rollback":
            return None, ("downgrade", "the rollback order is not an edgeship rollback order")
        if (
            order.get("deployment") != manifest.get("deployment")
            or order.get("version") != manifest["version"]
            or order.get("manifest_sha256") != digest
        ):
            return None, ("downgrade", "the rollback order names another bundle")
        try:
            expires = parse_time(str(order.get("expires_at")))
            created = parse_time(str(order.get("created_at")))
        except ValueError:
            return None, ("malformed", "the rollback order has no valid created_at/expires_at")
        if expires <= utcnow():
            return None, (
                "downgrade",
                "the rollback order expired at {}".format(order["expires_at"]),
            )
        if created > utcnow() + timedelta(seconds=MAX_CLOCK_SKEW_SECONDS):
            return None, (
                "future_manifest",
                "the rollback order was created at {}, in the future by this device's clock "
                "(more than {} s ahead)".format(order["created_at"], MAX_CLOCK_SKEW_SECONDS),
            )
        nonce = order.get("nonce")
        if not isinstance(nonce, str) or not re.match(r"^[0-9a-f]{32,128}$", nonce):
            return None, (
                "malformed",
                "the rollback order has no valid nonce (32+ hex digits); issue a new one",
            )
        used = [u.get("nonce") for u in self.state().get("rollback_orders_used", [])]
        if nonce in used:
            return None, (
                "rollback_replayed",
                f"the rollback order {nonce[:12]} was already executed on this device; "
                "each order is used once",
            )
        current = self.link_version(self.current)
        if (
            version_problem(order.get("from_version"), "from_version")
            or order.get("from_version") != current
        ):
            return None, (
                "rollback_from",
                "the rollback order leaves version {}; this device runs version {}".format(
                    order.get("from_version"), current
                ),
            )
        device = self.device()
        scope = {k: order.get(k) for k in ("device", "fleet") if order.get(k) is not None}
        if not scope:
            return None, ("rollback_scope", "the rollback order names no device and no fleet")
        for key, wanted in sorted(scope.items()):
            have = device.get("name") if key == "device" else device.get("fleet")
            if wanted != have:
                return None, (
                    "rollback_scope",
                    f"the rollback order is for {key} {wanted!r}; this device is "
                    + (f"{key} {have!r}" if have else f"in no {key} (enrol it with --fleet)"),
                )
        return order, None

    def check_approval(self, folder: str, manifest: dict, digest: str) -> tuple | None:
        """(code, why) when the root of trust requires an approval for this device's fleet
        and the bundle carries none that holds; None otherwise.

        The approval's signature is checked on its raw bytes with ``openssl`` against the
        approver keys the installed root names (signed by the root threshold).
        """
        signed = self.trust()
        policy = rootmeta.fleet_policy(signed, self.device().get("fleet"))
        two_person = bool(policy.get("two_person"))
        if "approved" not in (policy.get("requires") or []) and not two_person:
            return None
        path = os.path.join(folder, APPROVAL)
        sig = os.path.join(folder, APPROVAL_SIG)
        fleet = self.device().get("fleet")
        if not os.path.isfile(path) or os.path.islink(path):
            return (
                "not_approved",
                f"fleet {fleet} requires an approved bundle; this bundle carries no approval",
            )
        if not os.path.isfile(sig) or os.path.islink(sig):
            return ("not_approved", "the approval has no signature (approval.json.sig)")
        try:
            data = self._read_capped(path, MAX_ORDER_BYTES, "approval")
            signature = self._read_capped(sig, MAX_SIGNATURE_BYTES, "signature")
        except Refusal as exc:
            return (exc.code, exc.message)
        return rootmeta.approval_problem(
            data,
            manifest,
            digest,
            signed,
            lambda pem: self.verify_bytes(pem, data, signature),
            two_person,
        )

    def check_policy(self, folder: str, manifest: dict, digest: str) -> tuple:
        """Expiry, creation time, family, deployment, version order (rollback orders), runtime.

        A measurement candidate (never installed) is judged on all but deployment and
        version. Returns (problems, unchanged, the rollback order that allows a lower
        version or None).
        """
        problems = []
        order = None
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
        try:
            created = parse_time(str(manifest["created_at"]))
        except (KeyError, ValueError):
            problems.append(("malformed", "manifest has no valid created_at"))
        else:
            if created > utcnow() + timedelta(seconds=MAX_CLOCK_SKEW_SECONDS):
                problems.append(
                    (
                        "future_manifest",
                        "manifest created_at {} is in the future by this device's clock "
                        "(more than {} s ahead, the allowed clock skew)".format(
                            manifest["created_at"], MAX_CLOCK_SKEW_SECONDS
                        ),
                    )
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
        if current is not None and manifest.get("kind") != MEASURE_KIND:
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
                order, refused = self.check_rollback_order(folder, manifest, digest)
                if refused is not None:
                    code, why = refused
                    problems.append(
                        (
                            code,
                            f"version {version} is lower than the active version {current} "
                            f"and {why}",
                        )
                    )
        if manifest.get("kind") != MEASURE_KIND:
            refused = self.check_approval(folder, manifest, digest)
            if refused is not None:
                problems.append(refused)
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
        return problems, unchanged, order

    def verify(
        self, folder: str, policy: bool = True, files: bool = True, kinds: tuple = (BUNDLE_KIND,)
    ) -> dict:
        """Everything a device checks before it installs a bundle; raises Refusal.

        ``files=False`` checks only the signed manifest (signature, key, policy): a
        sender asks that before uploading the files. ``kinds``: the manifest kinds
        accepted (activation takes bundles only; ``measure`` takes measurement candidates).
        """
        manifest, digest = self.check_signature(folder, kinds)
        problems = []
        unchanged = False
        order = None
        if policy:
            problems, unchanged, order = self.check_policy(folder, manifest, digest)
        if files:
            problems += self.check_files(folder, manifest)
        if problems:
            code, message = problems[0]
            raise Refusal(code, message, problems[1:])
        return {
            "deployment": manifest.get("deployment"),
            "version": manifest.get("version"),
            "kind": manifest.get("kind"),
            "manifest_sha256": digest,
            "key_id": manifest["signing"]["key_id"],
            "unchanged": unchanged,
            "manifest": manifest,
            "rollback_order": order,
        }

    # -- bundles in, as folders or tar files ---------------------------------------------------

    def open_bundle(self, path: str) -> tuple:
        """A folder to verify: the folder itself, or a tar extracted into staging/ within the
        limits of :mod:`.unpack` (removed again when it is refused)."""
        path = os.path.abspath(path)
        if os.path.isdir(path):
            return path, None
        if not os.path.isfile(path):
            raise AgentError(f"no bundle at {path}")
        os.makedirs(self.staging, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="tar-", dir=self.staging)
        try:
            extract_bundle(path, tmp)
            found = []
            for top in sorted(os.listdir(tmp)):
                if os.path.isfile(os.path.join(tmp, top, MANIFEST)):
                    found.append(os.path.join(tmp, top))
            if os.path.isfile(os.path.join(tmp, MANIFEST)):
                found.append(tmp)
            if len(found) != 1:
                raise Refusal("malformed", f"{path} holds {len(found)} bundles; expected one")
        except BaseException:
            remove_tree(tmp)
            raise
        return found[0], tmp


def links_on_the_way(folder: str, rel: str) -> bool:
    """Whether any part of ``rel`` under ``folder`` is a symbolic link."""
    current = folder
    for part in rel.split("/"):
        current = os.path.join(current, part)
        if os.path.islink(current):
            return True
    return False
