"""Security limits measured: key and root sizes, repository metadata cost, the raw-bytes depth
scanner, and a tar bomb stopped while extracting.

    PYTHONPATH=. .venv/bin/python bench/security_limits.py
"""

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

tmp = Path(tempfile.mkdtemp())
t = time.perf_counter()
store = KeyStore(tmp / "keys", passphrase=b"")
store.init()
print(
    f"keys init (3 root keys, threshold 2): {time.perf_counter() - t:.3f} s; root.json {len(store.trust_files())} bytes"
)
art = make_artifact(tmp / "a" / "demo")
t = time.perf_counter()
b = make_bundle(art, store, tmp / "bundles")
print(
    f"bundle + TUF targets/snapshot/timestamp: {time.perf_counter() - t:.3f} s, {len(b.files())} files"
)
# nested manifest: refused on raw bytes
data = b"[" * 5_000_000 + b"]" * 5_000_000
t = time.perf_counter()
p = rules.json_depth_problem(data)
print(f"10 MB nested JSON: depth check {time.perf_counter() - t:.4f} s -> {p}")
# tar bomb
big = b"\0" * (512 * 1024 * 1024)
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w:gz") as tf:
    info = tarfile.TarInfo("b/zeros.bin")
    info.size = len(big)
    tf.addfile(info, io.BytesIO(big))
del big
bomb = tmp / "bomb.tar.gz"
bomb.write_bytes(raw.getvalue())
dest = tmp / "out"
dest.mkdir()
t = time.perf_counter()
try:
    bundle_rules.extract_export(bomb, dest)
except Exception as exc:
    print(
        f"tar bomb {bomb.stat().st_size / 1e6:.2f} MB .tar.gz (512 MiB inside): refused in {time.perf_counter() - t:.2f} s: {str(exc)[:120]}"
    )
written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
print(
    f"  bytes written before the refusal: {written / 2**20:.1f} MiB; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
)
