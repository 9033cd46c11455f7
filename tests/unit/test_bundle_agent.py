"""The device agent's own pieces, run locally (the device tests run it over SSH)."""

from __future__ import annotations

import ast
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from orchestrator.device.agent import AGENT_FILE, agent_source
from registry.bundle import make_bundle
from registry.keys import KeyStore
from registry.signing import load_public_pem, verify
from tests.unit.test_bundle import make_artifact

AGENT_PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator" / "device" / "agent"


@pytest.fixture(scope="module")
def agent() -> SimpleNamespace:
    """The agent's helpers under test, from the package its zipapp is built from."""
    from orchestrator.device.agent import rootmeta, runtimes

    return SimpleNamespace(satisfies=runtimes.satisfies, rootmeta=rootmeta)


@pytest.fixture(scope="module")
def agent_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent as devices get it: one zipapp file, outside the repository."""
    path = tmp_path_factory.mktemp("bin") / AGENT_FILE
    path.write_bytes(agent_source())
    return path


def test_agent_imports_only_the_standard_library() -> None:
    tops = set()
    relative = set()
    for path in sorted(AGENT_PACKAGE.glob("*.py")):  # every module of the agent package
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                tops.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level:
                relative.add((path.name, node.level, node.module))
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                tops.add(str(node.module).split(".")[0])
    # imported inside the runners only (the health check, measure), each by the runtime it serves
    # paho-mqtt: only the event sender, when the device has it (else it refuses clearly)
    runtime_only = {"numpy", "onnxruntime", "openvino", "tensorrt", "torch", "paho", "tvm"}
    # text generation (ONNX Runtime GenAI, OpenVINO GenAI's LLMPipeline) and speech
    # recognition (WhisperPipeline), where the device has them
    runtime_only |= {"onnxruntime_genai", "openvino_genai"}
    runtime_only |= {"coremltools", "ai_edge_litert", "tflite_runtime", "executorch"}
    # nibabel: only `segment` on NIfTI files (else it says how to install it); scipy: only the
    # pipeline's connected components, with a numpy fallback of the same result
    runtime_only |= {"nibabel", "scipy"}
    assert tops - runtime_only <= set(sys.stdlib_module_names), (
        tops - runtime_only - set(sys.stdlib_module_names)
    )
    assert "orchestrator" not in tops and "registry" not in tops
    # relative imports stay inside the package (it is top level inside the zipapp)
    assert all(level == 1 for _, level, _ in relative), relative


def test_agent_zipapp_is_one_deterministic_file_that_runs_alone(
    agent_program: Path, tmp_path: Path
) -> None:
    assert agent_source() == agent_program.read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(agent_program), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: edgeship-agent")


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [
        ("1.31.1", ">=1.20", True),
        ("1.19.2", ">=1.20", False),
        ("1.31.1", ">=1.20,<2", True),
        ("2.0", ">=1.20,<2", False),
        ("2026.4.1", "~=2026.0", True),
        ("2027.1", "~=2026.0", False),
        ("1.31.1", "==1.31.*", True),
        ("1.32.0", "==1.31.*", False),
        ("1.31.1", "!=1.31.1", False),
        ("1.31.1", "", True),
    ],
)
def test_agent_runtime_specifier(agent: SimpleNamespace, version: str, spec: str, ok: bool) -> None:
    assert agent.satisfies(version, spec) is ok


def _ed25519_ok(pem: str, data: bytes, signature: bytes) -> bool:
    return verify(load_public_pem(pem), data, signature)


def test_agent_reads_roots_as_python_tuf_writes_them(
    agent: SimpleNamespace, tmp_path: Path
) -> None:
    rootmeta = agent.rootmeta
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    kid = store.init().key_id
    store.rotate()
    (_, data1), (_, data2) = store.trust_chain(0)
    md = Metadata[Root].from_bytes(data2)
    doc1, doc2 = rootmeta.parse_root(data1, "1"), rootmeta.parse_root(data2, "2")
    assert rootmeta.canonical(doc2["signed"]) == md.signed_bytes  # the bytes TUF signs
    for key_id, key in doc2["signed"]["keys"].items():
        assert rootmeta.default_keyid(key) == key_id
    assert rootmeta.key_pem(doc2["signed"]["keys"][kid]) == store.pub_path(kid).read_text()
    rootmeta.check_first_root(doc1, "1", _ed25519_ok)
    rootmeta.check_root_update(doc1, doc2, "2", _ed25519_ok)
    with pytest.raises(rootmeta.RootError) as gap:
        rootmeta.check_root_update(doc2, doc2, "2", _ed25519_ok)
    assert gap.value.code == "stale_trust"


def test_agent_refuses_a_root_signed_by_an_online_key_whatever_its_version(
    agent: SimpleNamespace, tmp_path: Path
) -> None:
    """Trust capture: a leaked targets key signs a root with a huge version and its own key."""
    rootmeta = agent.rootmeta
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    ((_, data1),) = store.trust_chain(0)
    forged = Metadata[Root].from_bytes(data1)
    kid, leaked = store.signing_key()
    forged.signed.version = 2
    forged.signed.roles["root"].keyids = [kid]
    forged.signed.roles["root"].threshold = 1
    forged.signatures.clear()
    forged.sign(CryptoSigner(leaked), append=True)
    doc1 = rootmeta.parse_root(data1, "1")
    with pytest.raises(rootmeta.RootError) as refused:
        rootmeta.check_root_update(
            doc1, rootmeta.parse_root(forged.to_bytes(), "2"), "2", _ed25519_ok
        )
    assert refused.value.code == "untrusted_root"
    assert "signed by 0 of the trusted root keys; the trusted root (version 1) requires 2" in str(
        refused.value
    )
    huge = rootmeta.parse_root(forged.to_bytes(), "2")
    huge["signed"]["version"] = 10**9
    with pytest.raises(rootmeta.RootError) as gap:
        rootmeta.check_root_update(doc1, huge, "x", _ed25519_ok)
    assert gap.value.code == "trust_gap"


def test_agent_json_limits_on_raw_bytes(agent: SimpleNamespace) -> None:
    rootmeta = agent.rootmeta
    with pytest.raises(rootmeta.RootError) as deep:
        rootmeta.strict_loads(b"[" * 100000 + b"]" * 100000, "x")
    assert deep.value.code == "too_deep"
    with pytest.raises(rootmeta.RootError) as dup:
        rootmeta.strict_loads(b'{"a": 1, "a": 2}', "x")
    assert dup.value.code == "duplicate_key" and "'a' appears twice" in dup.value.message
    with pytest.raises(rootmeta.RootError) as floats:
        rootmeta.strict_loads(b'{"a": [1.5]}', "x")
    assert "floating-point" in floats.value.message
    assert rootmeta.strict_loads(b'{"a": [1.5]}', "x", floats=True) == {"a": [1.5]}
    with pytest.raises(rootmeta.RootError) as big:
        rootmeta.strict_loads(b" " * (rootmeta.MAX_ROOT_BYTES + 1), "x")
    assert big.value.code == "too_large"


def _runner(agent_program: Path, root: Path):  # type: ignore[no-untyped-def]
    """Run the agent zipapp locally as its caller (root on purpose); (exit code, JSON)."""
    me = pwd.getpwuid(os.getuid()).pw_name

    def run(*args: str) -> tuple[int, dict]:
        proc = subprocess.run(
            [sys.executable, str(agent_program), "--root", str(root), "--user", me, *args],
            capture_output=True,
            text=True,
        )
        return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])

    return run


@pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("sha256sum")), reason="needs openssl, sha256sum"
)
def test_agent_verify_exit_codes_locally(agent_program: Path, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    bundle = make_bundle(make_artifact(tmp_path / "a" / "demo"), store, tmp_path / "bundles")
    root = tmp_path / "device"
    trust = tmp_path / "1.root.json"
    trust.write_bytes(store.trust_files())

    run = _runner(agent_program, root)

    assert run("status")[1]["enrolled"] is False
    assert run("verify", str(bundle.path))[0] == 13  # not enrolled yet
    code, answer = run("init", "--name", "d1", "--family", "server", "--trust", str(trust))
    assert code == 0 and answer["trust"]["serial"] == 1
    code, answer = run("verify", str(bundle.path))
    assert code == 0 and answer["version"] == 1 and answer["manifest_sha256"] == bundle.digest
    (bundle.path / "metrics.json").write_text('{"tampered": true}')
    code, answer = run("verify", str(bundle.path))
    assert (code, answer["refusal"]) == (10, "hash_mismatch")
    assert answer["message"] == "size differs from the manifest: metrics.json"
    log = [json.loads(line) for line in (root / "log" / "agent.log").read_text().splitlines()]
    assert [e["event"] for e in log][-1] == "refused"
    assert run("health")[0] == 13 and run("rollback")[0] == 13


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl")
def test_agent_refuses_bundles_once_its_root_of_trust_expired(
    agent_program: Path, tmp_path: Path
) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init(root_keys=1, threshold=1, valid_days=-1)  # a root nobody renewed
    bundle = make_bundle(make_artifact(tmp_path / "a" / "demo"), store, tmp_path / "bundles")
    trust = tmp_path / "1.root.json"
    trust.write_bytes(store.trust_files())
    root = tmp_path / "device"

    run = _runner(agent_program, root)
    assert run("init", "--name", "d1", "--family", "server", "--trust", str(trust))[0] == 0
    code, answer = run("verify", str(bundle.path))
    assert (code, answer["refusal"]) == (10, "trust_expired")
    assert "expired at" in answer["message"] and "edgeship keys renew" in answer["message"]
