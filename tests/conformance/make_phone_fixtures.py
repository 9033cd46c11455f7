"""Phone feed conformance fixtures: real signed feeds, and the verdict every phone client owes them.

``edgeship publish`` (over SSH, to a simulated feed host: a real ``sshd`` on loopback) writes
a feed from real bundles of a posture_phone build; after each publication the feed folder is
copied as one named feed under ``OUT/feeds/``. Attacks and faults are then made from those
copies with edgeship's own signing code (:func:`registry.signing.sign`, the key store's keys):
a tampered model, a forged or replayed index, an expired timestamp, a root version signed
by the wrong key or by fewer root keys than its threshold, oversized documents, and so on.

``OUT/cases.json`` lists the cases. A case is an app installation (its root of trust, target
family, channel and install id) and the polls it makes in order, each against one feed,
with the report it must give: ``result`` (activated, unchanged, waiting, unhealthy,
refused), ``refusal`` (the refusal code, or null) and ``version`` (the version that runs
afterwards, or null). The Python reference client (``tests/conformance/test_phone_conformance.py``)
and the TypeScript client (``clients/react-native``, ``npm test`` with
``EDGESHIP_PHONE_FIXTURES=OUT``) must both give exactly these reports::

    python -m tests.conformance.make_phone_fixtures --artifact artifacts/posture_phone --out /tmp/fx
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.device.agent import rootmeta
from orchestrator.ship.feed import TIME_FORMAT, TIMESTAMP_KIND, bucket
from orchestrator.sim.simulator import start_devices, stop_devices
from registry.bundle import make_bundle
from registry.keys import KeyStore
from registry.signing import canonical_json, sign

ROOT = Path(__file__).resolve().parents[2]
FAMILY = "android_phone"
DEPLOYMENT = "posture_phone"


def _iso(moment: datetime) -> str:
    return moment.strftime(TIME_FORMAT)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in [*values, "EDGESHIP_KEY_PASSPHRASE"]}
    os.environ.update(values)
    os.environ.pop("EDGESHIP_KEY_PASSPHRASE", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _install_ids(salt: str, fraction: float) -> tuple[str, str]:
    """(an install id inside a staged rollout of ``fraction``, one outside it)."""
    inside = next(
        f"install-{i:03d}" for i in range(1000) if bucket(salt, f"install-{i:03d}") < fraction
    )
    outside = next(
        f"install-{i:03d}" for i in range(1000) if bucket(salt, f"install-{i:03d}") >= fraction
    )
    return inside, outside


class FeedWriter:
    """Copies of the published feed, and signed documents written into them."""

    def __init__(self, www: Path, out: Path, store: KeyStore) -> None:
        self.www = www
        self.feeds = out / "feeds"
        self.store = store

    def snapshot(self, name: str) -> Path:
        dest = self.feeds / name
        shutil.copytree(self.www, dest)
        return dest

    def variant(self, base: str, name: str, change: Callable[[Path], None]) -> None:
        dest = self.feeds / name
        shutil.copytree(self.feeds / base, dest)
        change(dest)

    @staticmethod
    def serial(feed: Path) -> int:
        return int((feed / "index" / "latest").read_text())

    def index(self, feed: Path) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(
            (feed / "index" / f"{self.serial(feed)}.json").read_bytes()
        )
        return doc

    def write_index(self, feed: Path, doc: dict[str, Any], data: bytes | None = None) -> bytes:
        """``doc`` as the next index, signed by the targets key, named by a fresh timestamp.

        The key store's current keys sign: use it on a feed that carries their root version.
        """
        serial = self.serial(feed) + 1
        doc = dict(doc, serial=serial)
        data = data if data is not None else canonical_json(doc)
        (feed / "index" / f"{serial}.json").write_bytes(data)
        (feed / "index" / f"{serial}.json.sig").write_bytes(sign(self.store.signing_key()[1], data))
        (feed / "index" / "latest").write_text(f"{serial}\n")
        self.write_timestamp(feed, serial, data)
        return data

    def write_timestamp(
        self,
        feed: Path,
        serial: int,
        index: bytes,
        expires: datetime | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> None:
        moment = datetime.now(UTC)
        kid, private = self.store.timestamp_key()
        doc = {
            "kind": TIMESTAMP_KIND,
            "schema": 1,
            "fleet": "phones",
            "index_serial": serial,
            "index_sha256": hashlib.sha256(index).hexdigest(),
            "created_at": _iso(moment),
            "expires_at": _iso(expires or moment + timedelta(days=30)),
            "signing": {"algorithm": "ed25519", "key_id": kid, "role": "timestamp"},
        }
        data = canonical_json(doc)
        (feed / "index" / "timestamp.json").write_bytes(data)
        (feed / "index" / "timestamp.json.sig").write_bytes(sign(key or private, data))


def _flip_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _bad_smoke_artifact(artifact: Path, dest: Path) -> Path:
    """A copy of ``artifact`` whose smoke test expects other logits (argmax moved)."""
    shutil.copytree(artifact, dest)
    smoke = dest / "smoke" / "expected.npz"
    with np.load(smoke) as npz:
        expected = {k: np.asarray(npz[k]) for k in npz.files}
    for key, value in expected.items():
        expected[key] = np.roll(value, 1, axis=-1) + 10.0
    np.savez(smoke, **expected)
    return dest


def generate(artifact: Path, out: Path) -> dict[str, Any]:
    """Write the feeds and ``cases.json`` under ``out`` (which must not exist or be empty)."""
    from orchestrator.cli.main import main

    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty")
    base = Path(tempfile.mkdtemp(prefix="edgeship-phone-fixtures-"))
    (host,) = start_devices(1, base / "host", first_octet=91, names=["feedhost"])
    try:
        www = host.install_root
        fleet = base / "phones.yaml"
        fleet.write_text(
            yaml.safe_dump(
                {
                    "name": "phones",
                    "known_hosts": str(base / "known_hosts"),
                    "defaults": {"family": FAMILY, "identity_file": str(host.client_key)},
                    "feed": {
                        "host": host.address,
                        "port": host.port,
                        "path": str(www),
                        "base_url": "http://127.0.0.1/",
                        "channels": ["stable", "beta"],
                    },
                    "devices": [],
                }
            )
        )
        env = {
            "EDGESHIP_ROOT": str(ROOT),
            "EDGESHIP_BUNDLES": str(base / "bundles"),
            "EDGESHIP_KEYS_DIR": str(base / "keys"),
        }
        with _environment(env):
            return _generate(artifact, out, base, fleet, www, main)
    finally:
        stop_devices([host])
        shutil.rmtree(base, ignore_errors=True)


def _generate(
    artifact: Path, out: Path, base: Path, fleet: Path, www: Path, main: Any
) -> dict[str, Any]:
    store = KeyStore()
    store.init()
    for _ in range(3):
        make_bundle(artifact, store, base / "bundles")
    writer = FeedWriter(www, out, store)
    trust = out / "trust"
    trust.mkdir()
    shutil.copy(store.root_path(1), trust / "1.root.json")

    def publish(channel: str, version: int, fraction: float = 1.0) -> None:
        args = ["publish", f"deployment={DEPLOYMENT}", f"fleet={fleet}", f"channel={channel}"]
        code = main([*args, f"version={version}", "--fraction", str(fraction)])
        if code != 0:
            raise RuntimeError(f"edgeship publish {channel} v{version} failed ({code})")

    assert main(["enroll", f"fleet={fleet}"]) == 0
    publish("stable", 1)
    publish("beta", 1, 0.5)
    v1 = writer.snapshot("v1")
    beta_in, beta_out = _install_ids(writer.index(v1)["channels"]["beta"]["bucket_salt"], 0.5)
    publish("stable", 2, 0.5)
    half = writer.snapshot("v2_half")
    staged_in, staged_out = _install_ids(
        writer.index(half)["channels"]["stable"]["bucket_salt"], 0.5
    )
    publish("stable", 2)
    writer.snapshot("v2")
    store.rotate("targets")  # root version 2: a new targets key signs from now on
    publish("stable", 3)
    writer.snapshot("v3_rotated")
    bad = make_bundle(_bad_smoke_artifact(artifact, base / "bad-smoke"), store, base / "bundles")
    publish("stable", bad.version)
    writer.snapshot("v4_bad_smoke")

    # -- faults and attacks, each on a copy of a published feed --------------------------------
    model = Path("bundles", DEPLOYMENT, "2", "model", "model.ort")
    writer.variant("v2", "tampered_model", lambda f: _flip_byte(f / model))
    writer.variant(
        "v2", "oversized_model", lambda f: (f / model).write_bytes((f / model).read_bytes() + b"0")
    )

    def forge_index(feed: Path) -> None:
        path = feed / "index" / f"{writer.serial(feed)}.json"
        doc = json.loads(path.read_bytes())
        doc["channels"]["stable"]["rollout_fraction"] = 0.01
        path.write_bytes(canonical_json(doc))

    writer.variant("v2", "forged_index", forge_index)

    def expire_timestamp(feed: Path) -> None:
        serial = writer.serial(feed)
        data = (feed / "index" / f"{serial}.json").read_bytes()
        writer.write_timestamp(feed, serial, data, expires=datetime(2020, 1, 1, tzinfo=UTC))

    writer.variant("v2", "stale_timestamp", expire_timestamp)

    def expire_index(feed: Path) -> None:
        doc = writer.index(feed)
        doc["expires_at"] = "2020-01-01T00:00:00Z"
        writer.write_index(feed, doc)

    writer.variant("v3_rotated", "expired_index", expire_index)

    def timestamp_by_targets_key(feed: Path) -> None:
        serial = writer.serial(feed)
        data = (feed / "index" / f"{serial}.json").read_bytes()
        writer.write_timestamp(feed, serial, data, key=store.signing_key()[1])

    writer.variant("v3_rotated", "timestamp_wrong_role", timestamp_by_targets_key)

    def index_by_timestamp_key(feed: Path) -> None:
        serial = writer.serial(feed)
        data = (feed / "index" / f"{serial}.json").read_bytes()
        sig = sign(store.timestamp_key()[1], data)
        (feed / "index" / f"{serial}.json.sig").write_bytes(sig)

    writer.variant("v2", "index_wrong_key", index_by_timestamp_key)

    def duplicate_key_index(feed: Path) -> None:
        data = canonical_json(writer.index(feed))
        # the same key twice: a signed document that two JSON readers could read differently
        data = data.replace(b'"kind":', b'"fleet":"other","kind":', 1)
        writer.write_index(feed, {}, data)

    writer.variant("v3_rotated", "duplicate_key_index", duplicate_key_index)

    def oversized_timestamp(feed: Path) -> None:
        path = feed / "index" / "timestamp.json"
        path.write_bytes(path.read_bytes() + b" " * (4 * 1024 * 1024))

    writer.variant("v2", "oversized_timestamp", oversized_timestamp)

    root2 = Path("trust", "2.root.json")

    def foreign_root_signature(feed: Path) -> None:
        doc = json.loads((feed / root2).read_bytes())
        foreign = Ed25519PrivateKey.generate()
        payload = rootmeta.canonical(doc["signed"])
        for sig in doc["signatures"]:
            sig["sig"] = foreign.sign(payload).hex()
        (feed / root2).write_bytes(json.dumps(doc, indent=1).encode())

    writer.variant("v3_rotated", "root_wrong_signature", foreign_root_signature)

    def root_below_threshold(feed: Path) -> None:
        doc = json.loads((feed / root2).read_bytes())
        doc["signatures"] = doc["signatures"][:1]
        (feed / root2).write_bytes(json.dumps(doc, indent=1).encode())

    writer.variant("v3_rotated", "root_threshold_not_met", root_below_threshold)
    writer.variant(
        "v3_rotated",
        "root_replayed",
        lambda f: (f / root2).write_bytes((f / "trust" / "1.root.json").read_bytes()),
    )
    writer.variant(
        "v3_rotated",
        "root_oversized",
        lambda f: (f / root2).write_bytes((f / root2).read_bytes() + b" " * (1024 * 1024)),
    )
    renewed = store.renew(valid_days=-1)  # root version 3, expired: every signature refused
    writer.variant(
        "v3_rotated",
        "root_expired",
        lambda f: shutil.copy(renewed.path or store.root_path(3), f / "trust" / "3.root.json"),
    )
    bad_trust = json.loads((trust / "1.root.json").read_bytes())
    for sig in bad_trust["signatures"]:
        sig["sig"] = ("0" if sig["sig"][0] != "0" else "1") + sig["sig"][1:]
    (trust / "1.root.bad-signature.json").write_text(json.dumps(bad_trust, indent=1))

    def case(
        name: str,
        polls: list[tuple[str, str, int | None, str | None]],
        install_id: str = "install-fixed",
        channel: str = "stable",
        family: str = FAMILY,
        trust_file: str = "1.root.json",
        note: str = "",
    ) -> dict[str, Any]:
        return {
            "name": name,
            "note": note,
            "trust": f"trust/{trust_file}",
            "family": family,
            "channel": channel,
            "install_id": install_id,
            "polls": [
                {"feed": f"feeds/{feed}/", "expect": {"result": r, "version": v, "refusal": c}}
                for feed, r, v, c in polls
            ],
        }

    act, ref = "activated", "refused"
    cases = [
        case(
            "activate",
            [("v1", act, 1, None)],
            note="a fresh install takes v1 and runs its smoke test",
        ),
        case("unchanged", [("v1", act, 1, None), ("v1", "unchanged", 1, None)]),
        case("upgrade", [("v1", act, 1, None), ("v2", act, 2, None)]),
        case("staged_in", [("v2_half", act, 2, None)], install_id=staged_in),
        case(
            "staged_out",
            [("v1", act, 1, None), ("v2_half", "unchanged", 1, None)],
            install_id=staged_out,
            note="outside the 50% rollout: the channel's fallback (v1)",
        ),
        case("staged_out_fresh", [("v2_half", act, 1, None)], install_id=staged_out),
        case("beta_in", [("v1", act, 1, None)], install_id=beta_in, channel="beta"),
        case(
            "waiting",
            [("v1", "waiting", None, None)],
            install_id=beta_out,
            channel="beta",
            note="outside the rollout of a channel with no earlier release",
        ),
        case("no_release", [("v1", ref, None, "no_release")], channel="nightly"),
        case("wrong_family", [("v1", ref, None, "wrong_family")], family="ios_phone"),
        case("rotated_root", [("v1", act, 1, None), ("v3_rotated", act, 3, None)]),
        case("unhealthy", [("v1", act, 1, None), ("v4_bad_smoke", "unhealthy", 1, None)]),
        case("unhealthy_fresh", [("v4_bad_smoke", "unhealthy", None, None)]),
        case("tampered_model", [("v1", act, 1, None), ("tampered_model", ref, 1, "hash_mismatch")]),
        case(
            "oversized_model", [("v1", act, 1, None), ("oversized_model", ref, 1, "hash_mismatch")]
        ),
        case("forged_index", [("v1", act, 1, None), ("forged_index", ref, 1, "hash_mismatch")]),
        case(
            "replayed_index",
            [("v2", act, 2, None), ("v1", ref, 2, "stale_index")],
            note="an older signed index (rollback to v1) served with its own timestamp",
        ),
        case("stale_timestamp", [("stale_timestamp", ref, None, "stale_feed")]),
        case("expired_index", [("v1", act, 1, None), ("expired_index", ref, 1, "expired")]),
        case("timestamp_wrong_role", [("timestamp_wrong_role", ref, None, "bad_signature")]),
        case("index_wrong_key", [("index_wrong_key", ref, None, "bad_signature")]),
        case("duplicate_key_index", [("duplicate_key_index", ref, None, "duplicate_key")]),
        case("oversized_timestamp", [("oversized_timestamp", ref, None, "too_large")]),
        case("root_wrong_signature", [("root_wrong_signature", ref, None, "untrusted_root")]),
        case("root_threshold_not_met", [("root_threshold_not_met", ref, None, "untrusted_root")]),
        case("root_replayed", [("root_replayed", ref, None, "stale_trust")]),
        case("root_oversized", [("root_oversized", ref, None, "too_large")]),
        case(
            "root_expired",
            [("v1", act, 1, None), ("root_expired", ref, 1, "trust_expired")],
        ),
        case(
            "first_trust_bad_signature",
            [("v1", ref, None, "bad_signature")],
            trust_file="1.root.bad-signature.json",
            note="the root of trust shipped with the app does not carry its own threshold",
        ),
    ]
    doc = {"schema": 1, "deployment": DEPLOYMENT, "cases": cases}
    (out / "cases.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", type=Path, required=True, help="a built posture_phone artifact")
    p.add_argument("--out", type=Path, required=True, help="an empty folder for the fixtures")
    args = p.parse_args(argv)
    doc = generate(args.artifact.resolve(), args.out.resolve())
    print(f"{len(doc['cases'])} cases in {args.out / 'cases.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
