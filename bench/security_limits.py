"""Security limits measured: root size, repository metadata cost, the raw-bytes depth
scanner, and a tar bomb stopped while extracting.

    PYTHONPATH=. .venv/bin/python bench/security_limits.py
"""

from __future__ import annotations

import io
import resource
import tarfile
import tempfile
import time
from pathlib import Path

from orchestrator.device.agent import rules
from registry import bundle_rules
from registry.bundle import make_bundle
from registry.keys import KeyStore
from tests.unit.test_bundle import make_artifact


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    store = KeyStore(tmp / "keys", passphrase=b"")
    store.init()
    took = time.perf_counter() - start
    size = len(store.trust_files())
    print(f"keys init (3 root keys, threshold 2): {took:.3f} s; root.json {size} bytes")

    artifact = make_artifact(tmp / "a" / "demo")
    start = time.perf_counter()
    bundle = make_bundle(artifact, store, tmp / "bundles")
    took = time.perf_counter() - start
    print(f"bundle + TUF targets/snapshot/timestamp: {took:.3f} s, {len(bundle.files())} files")

    nested = b"[" * 5_000_000 + b"]" * 5_000_000
    start = time.perf_counter()
    problem = rules.json_depth_problem(nested)
    print(f"10 MB nested JSON: depth check {time.perf_counter() - start:.4f} s -> {problem}")

    zeros = b"\0" * (512 * 1024 * 1024)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("b/zeros.bin")
        info.size = len(zeros)
        tar.addfile(info, io.BytesIO(zeros))
    del zeros
    bomb = tmp / "bomb.tar.gz"
    bomb.write_bytes(raw.getvalue())
    dest = tmp / "out"
    dest.mkdir()
    start = time.perf_counter()
    try:
        bundle_rules.extract_export(bomb, dest)
        print("tar bomb: NOT refused")
    except bundle_rules.ExportError as exc:
        took = time.perf_counter() - start
        print(
            f"tar bomb {bomb.stat().st_size / 1e6:.2f} MB .tar.gz (512 MiB inside): refused in "
            f"{took:.2f} s ({exc.code})"
        )
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"  bytes written before the refusal: {written / 2**20:.1f} MiB; peak RSS {peak:.0f} MiB "
        "(most of it the bomb this script builds in memory)"
    )


if __name__ == "__main__":
    main()
