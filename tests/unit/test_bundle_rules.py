"""The bundle rules on both sides (device agent and build host): paths, names, raw JSON, tars."""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from orchestrator.device.agent import rules as agent_rules
from orchestrator.device.agent import unpack as agent_unpack
from orchestrator.device.agent.errors import Refusal
from orchestrator.errors import BundleError
from registry import bundle_rules as host_rules

SIDES = [agent_rules, host_rules]

GOOD_PATHS = [
    "runtime.json",
    "model/model.onnx",
    "smoke/input.npz",
    "a/b/c/d_e-f+g.1",
    "_private/x",
]
BAD_PATHS = {
    "": "empty path",
    "/etc/passwd": "absolute path",
    "../../bin/edgeship_agent.pyz": "'..' component",
    "../../../x": "'..' component",
    "model/../../x": "'..' component",
    "a/./b": "'.' component",
    "./a": "'.' component",
    "a//b": "empty component",
    "model/": "empty component",
    "model\\model.onnx": "backslash",
    "model/model.onnx\x00.txt": "NUL",
    "model/\nmodel.onnx": "control character",
    "mode\u0301l.onnx": "non-ASCII",
    "\u017fmoke/input.npz": "non-ASCII",  # long s: case-folds to 's'
    "manifest.json": "signed envelope",
    "MANIFEST.JSON": "signed envelope",
    "rollback.json": "signed envelope",
    "manifest.json.sig": "signed envelope",
    ".hidden": "not a plain name",
    "-rf": "not a plain name",
    "a b": "not a plain name",
    "x" * 256: "longer than 255",
    "a/" * 600 + "b": "longer than 1024",
}


@pytest.mark.parametrize("side", SIDES, ids=["agent", "host"])
@pytest.mark.parametrize("path", GOOD_PATHS)
def test_path_rules_accept_plain_relative_paths(side, path: str) -> None:
    assert side.path_problem(path) is None


@pytest.mark.parametrize("side", SIDES, ids=["agent", "host"])
@pytest.mark.parametrize(("path", "why"), sorted(BAD_PATHS.items()))
def test_path_rules_refuse_each_unsafe_path_with_the_reason(side, path: str, why: str) -> None:
    problem = side.path_problem(path)
    assert problem is not None and why in problem


def test_the_build_host_checks_with_the_agents_own_rules() -> None:
    assert host_rules.path_problem is agent_rules.path_problem
    assert host_rules.manifest_problems is agent_rules.manifest_problems


def _manifest(paths: list[str], **extra) -> dict:
    return {
        "kind": "edgeship.bundle",
        "deployment": "posture_server",
        "version": 3,
        "signing": {"key_id": "0" * 16},
        "files": [{"path": p, "sha256": "a" * 64, "size": 1} for p in paths],
        **extra,
    }


@pytest.mark.parametrize("side", SIDES, ids=["agent", "host"])
@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["model/model.onnx", "model/model.onnx"], "'model/model.onnx' is listed twice"),
        (["Model.onnx", "model.onnx"], "same as 'Model.onnx' after case folding"),
        (["model", "model/model.onnx"], "'model' is a file and also the folder of"),
        (["MODEL", "model/x"], "'MODEL' is a file and also the folder of"),
    ],
)
def test_manifest_paths_that_collide_are_duplicate_paths(side, paths, message) -> None:
    problems = side.manifest_problems(_manifest(paths))
    assert [c for c, _ in problems] == ["duplicate_path"]
    assert message in problems[0][1]


@pytest.mark.parametrize("side", SIDES, ids=["agent", "host"])
def test_manifest_names_and_fields_are_checked(side) -> None:
    bad = _manifest(["ok.bin"], deployment="../../etc", version=True)
    bad["files"].append({"path": "../x", "sha256": "Z", "size": -1})
    bad["model"] = {"file": "elsewhere.onnx"}
    codes = [c for c, _ in side.manifest_problems(bad)]
    expected = ["unsafe_path", "malformed", "unsafe_path", "malformed", "malformed"]
    assert codes == [*expected, "unsafe_path"]
    assert side.manifest_problems(_manifest(["a"] * 1, model={"file": "a"})) == []
    too_many = _manifest([f"f{i}" for i in range(side.MAX_FILES + 1)])
    assert [c for c, _ in side.manifest_problems(too_many)] == ["too_large"]


@pytest.mark.parametrize("side", SIDES, ids=["agent", "host"])
def test_depth_scanner_counts_brackets_outside_strings_without_recursion(side) -> None:
    assert (
        side.json_depth_problem(b'{"a": [1, {"b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]}') is None
    )
    assert side.json_depth_problem(b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') is None
    deep = b"[" * 200_000 + b"]" * 200_000  # json.loads would raise RecursionError
    problem = side.json_depth_problem(deep)
    assert problem is not None and "deeper than 32 levels" in problem
    assert side.json_depth_problem(b"[" * 32 + b"]" * 32) is None


@pytest.mark.parametrize("side", SIDES, ids=["agent", "host"])
def test_strict_json_refuses_duplicate_keys_and_nan(side) -> None:
    with pytest.raises(side.DuplicateKey, match="'version' appears twice"):
        side.strict_json(b'{"version": 1, "files": [], "version": 9}')
    with pytest.raises(ValueError, match="NaN is not JSON"):
        side.strict_json(b'{"size": NaN}')
    assert side.strict_json(b'{"a": {"a": 1}}') == {"a": {"a": 1}}


def test_agent_finds_the_claimed_key_id_without_parsing() -> None:
    data = json.dumps({"provenance": {"signing_key_id": "b" * 16}, "signing": {"key_id": "a" * 16}})
    assert agent_rules.claimed_key_id(data.encode()) == "a" * 16


# -- tar limits (agent: unpack.extract_bundle; host: bundle_rules.extract_export) -------------


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = False) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(raw.getvalue()) if gz else raw.getvalue())
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def _extract(side: str, tar: Path, dest: Path) -> str:
    """Extract on one side; the refusal code (agent) or error text (host)."""
    dest.mkdir()
    if side == "agent":
        try:
            agent_unpack.extract_bundle(str(tar), str(dest))
        except Refusal as exc:
            return f"{exc.code}: {exc.message}"
        return "ok"
    try:
        host_rules.extract_export(tar, dest)
    except BundleError as exc:
        return f"{getattr(exc, 'code', '?')}: {exc}"
    return "ok"


TAR_CASES = {
    "symlink": ([_special("b/model.onnx", tarfile.SYMTYPE, "/etc/passwd")], "unsafe_member"),
    "hardlink": ([_file("b/x"), _special("b/y", tarfile.LNKTYPE, "b/x")], "unsafe_member"),
    "device": ([_special("b/null", tarfile.CHRTYPE)], "unsafe_member"),
    "fifo": ([_special("b/fifo", tarfile.FIFOTYPE)], "unsafe_member"),
    "dotdot": ([_file("b/../../x")], "unsafe_path"),
    "absolute": ([_file("/tmp/x")], "unsafe_path"),
    "twice": ([_file("b/x"), _file("b/x")], "duplicate_path"),
    "case_twice": ([_file("b/Model.onnx"), _file("b/model.onnx")], "duplicate_path"),
    "file_then_folder": ([_file("b/m"), _file("b/m/x")], "duplicate_path"),
}


@pytest.mark.parametrize("side", ["agent", "host"])
@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_tar_members_that_are_links_devices_or_unsafe_names_are_refused(
    side: str, case: str, tmp_path: Path
) -> None:
    members, code = TAR_CASES[case]
    tar = _tar(tmp_path / "x.tar", members)
    answer = _extract(side, tar, tmp_path / "out")
    assert answer.startswith(code), answer
    assert not (tmp_path / "x").exists() and not Path("/tmp/x").is_symlink()


@pytest.mark.parametrize("side", ["agent", "host"])
def test_tar_bomb_is_refused_by_the_bytes_read_not_the_headers(side: str, tmp_path: Path) -> None:
    big = b"\0" * (80 * 1024 * 1024)  # compresses about 1000 : 1
    tar = _tar(tmp_path / "bomb.tar.gz", [_file("b/zeros.bin", big)], gz=True)
    assert tar.stat().st_size < 200 * 1024
    answer = _extract(side, tar, tmp_path / "out")
    assert answer.startswith("too_large") and "compression bomb" in answer, answer
    written = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written <= host_rules.TAR_RATIO_FLOOR


@pytest.mark.parametrize("side", ["agent", "host"])
def test_tar_with_too_many_members_or_a_huge_header_is_refused(
    side: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_unpack, "MAX_TAR_MEMBERS", 5)
    monkeypatch.setattr(host_rules, "MAX_TAR_MEMBERS", 5)
    tar = _tar(tmp_path / "many.tar", [_file(f"b/f{i}") for i in range(6)])
    assert _extract(side, tar, tmp_path / "out").startswith("too_large")
    long_name = "b/" + "x" * 200  # a pax header of 2 MB (a huge name) is never read into memory
    info, data = _file(long_name)
    info.pax_headers = {"comment": "c" * (2 * 1024 * 1024)}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(info, io.BytesIO(data))
    (tmp_path / "pax.tar").write_bytes(raw.getvalue())
    answer = _extract(side, tmp_path / "pax.tar", tmp_path / "out2")
    assert answer.startswith("too_large") and "at once" in answer, answer


@pytest.mark.parametrize("side", ["agent", "host"])
def test_tar_member_writing_more_than_its_header_is_stopped(
    side: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_unpack, "MAX_BUNDLE_BYTES", 1000)
    monkeypatch.setattr(host_rules, "MAX_BUNDLE_BYTES", 1000)
    tar = _tar(tmp_path / "x.tar", [_file("b/a", b"1" * 600), _file("b/b", b"2" * 600)])
    answer = _extract(side, tar, tmp_path / "out")
    assert answer.startswith("too_large"), answer
    assert (tmp_path / "out" / "b" / "b").stat().st_size <= 400


@pytest.mark.parametrize("side", ["agent", "host"])
def test_good_export_extracts(side: str, tmp_path: Path) -> None:
    folder = tarfile.TarInfo("b")
    folder.type = tarfile.DIRTYPE
    tar = _tar(
        tmp_path / "ok.tar.gz",
        [(folder, None), _file("b/manifest.json", b"{}"), _file("b/model/m.onnx", b"123")],
        gz=True,
    )
    assert _extract(side, tar, tmp_path / "out") == "ok"
    assert (tmp_path / "out" / "b" / "model" / "m.onnx").read_bytes() == b"123"


# -- the build host's bundle functions use the rules -----------------------------------------


@pytest.fixture
def issued(tmp_path: Path):
    from registry.bundle import make_bundle
    from registry.keys import KeyStore
    from tests.unit.test_bundle import make_artifact

    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    return store, make_bundle(make_artifact(tmp_path / "a" / "demo"), store, tmp_path / "b")


def _resign(store, folder: Path, data: bytes) -> None:
    from registry.signing import sign

    (folder / "manifest.json").write_bytes(data)
    (folder / "manifest.json.sig").write_bytes(sign(store.signing_key()[1], data))


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lambda m: m["files"].append(dict(m["files"][0], path="../../bin/x")), "unsafe_path"),
        (lambda m: m["files"].append(dict(m["files"][0])), "duplicate_path"),
        (lambda m: m.update(deployment="../demo"), "unsafe_path"),
    ],
)
def test_bundle_open_refuses_signed_manifests_that_break_the_rules(issued, edit, code) -> None:
    from registry.bundle import Bundle, BundleRuleError
    from registry.signing import canonical_json

    store, bundle = issued
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    edit(manifest)
    _resign(store, bundle.path, canonical_json(manifest))
    with pytest.raises(BundleRuleError) as caught:
        Bundle.open(bundle.path)
    assert caught.value.code == code and "manifest.json" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"kind": "edgeship.bundle", "kind": "edgeship.bundle"}', "duplicate_key"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b" " * (host_rules.MAX_MANIFEST_BYTES + 1), "too_large"),
    ],
)
def test_bundle_open_checks_raw_bytes_before_parsing(issued, data: bytes, code: str) -> None:
    from registry.bundle import Bundle, BundleRuleError

    store, bundle = issued
    _resign(store, bundle.path, data)
    with pytest.raises(BundleRuleError) as caught:
        Bundle.open(bundle.path)
    assert caught.value.code == code


def test_build_manifest_refuses_artifact_names_equal_after_case_folding(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from registry.bundle import build_manifest
    from tests.unit.test_bundle import make_artifact

    artifact = make_artifact(tmp_path / "demo")
    (artifact / "model" / "Model.onnx").write_bytes(b"twin")
    with pytest.raises(
        BundleError, match=re.escape("same as 'model/Model.onnx' after case folding")
    ):
        build_manifest(artifact, 1, "0" * 16, datetime.now(UTC), 1)


def test_verify_bundle_refuses_a_manifest_created_in_the_future(issued) -> None:
    from registry.bundle import verify_bundle
    from registry.signing import canonical_json

    store, bundle = issued
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["created_at"] = "2099-01-01T00:00:00Z"
    manifest["expires_at"] = "2099-04-01T00:00:00Z"
    _resign(store, bundle.path, canonical_json(manifest))
    problems = verify_bundle(bundle.path, store.trust())
    assert problems == [
        "created_at 2099-01-01T00:00:00Z is in the future (more than 3600 s ahead) "
        "(future_manifest)"
    ]


def test_rollback_order_names_version_left_scope_and_a_nonce(issued) -> None:
    from registry.bundle import issue_rollback

    store, bundle = issued
    with pytest.raises(BundleError, match="give a fleet or a device"):
        issue_rollback(bundle, store, from_version=3)
    with pytest.raises(BundleError, match="must be higher than the version rolled back to"):
        issue_rollback(bundle, store, from_version=1, fleet="ward")
    with pytest.raises(BundleError, match="fleet: expected a name"):
        issue_rollback(bundle, store, from_version=3, fleet="../ward")
    first = json.loads(issue_rollback(bundle, store, from_version=3, device="bed-01").read_text())
    second = json.loads(issue_rollback(bundle, store, from_version=3, device="bed-01").read_text())
    assert (first["from_version"], first["device"], first["fleet"]) == (3, "bed-01", None)
    assert len(first["nonce"]) == 32 and first["nonce"] != second["nonce"]
