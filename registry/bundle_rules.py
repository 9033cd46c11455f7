"""What a manifest may say, on the build host: limits, paths, names, raw JSON, tar extraction.

The device agent holds the same rules in ``orchestrator/device/agent/rules.py``
(it imports nothing of edgeship); ``tests/unit/test_bundle_rules.py`` runs both
over the same table of names. Problems are ``(refusal code, message)`` pairs with
the agent's refusal codes, so both sides name a problem alike.

:func:`registry.bundle.Bundle.open` checks a manifest's bytes in this order: size
(:data:`MAX_MANIFEST_BYTES`), nesting depth (:func:`json_depth_problem`, a scanner
without recursion), the parse (:func:`strict_json`: duplicate keys and NaN refused),
then structure and every path (:func:`manifest_problems`).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import tarfile
from pathlib import Path
from typing import BinaryIO

from orchestrator.errors import BundleError

ENVELOPE = ("manifest.json", "manifest.json.sig", "rollback.json", "rollback.json.sig")

# -- limits (refusal too_large / too_deep) ------------------------------------------------------

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest of 10 000 files is about 1.5 MB
MAX_SIGNATURE_BYTES = 1024  # a raw Ed25519 signature is 64 bytes
MAX_ORDER_BYTES = 64 * 1024  # a rollback order is a few hundred bytes
MAX_JSON_DEPTH = 32  # nested objects/arrays; a manifest needs about 6
MAX_FILES = 10000  # files listed in one manifest
MAX_FILE_BYTES = 16 * 1024**3  # one file of a bundle
MAX_BUNDLE_BYTES = 32 * 1024**3  # all files of a bundle together
MAX_PATH_CHARS = 1024  # one path in a manifest or tar
MAX_NAME_CHARS = 255  # one component of a path
MAX_TAR_MEMBERS = 20000  # entries of an exported bundle (files, folders, trust sets)
MAX_TAR_RATIO = 200  # bytes read out of a compressed export per byte of the file ...
TAR_RATIO_FLOOR = 64 * 1024 * 1024  # ... once more than this much has been read
MAX_TAR_READ = 1024 * 1024  # the most tarfile may ask for at once (pax/longname headers)

# A manifest created further in the future than this (by the device's clock) is refused
# (future_manifest): it was signed with a wrong clock, or made to outlive its expiry.
MAX_CLOCK_SKEW_SECONDS = 3600

# one path component: ASCII letters, digits and ._+- ; never starting with '.' or '-'
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
# deployment names (they name staging folders and the deployment a device runs)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENVELOPE_FOLDED = frozenset(n.casefold() for n in ENVELOPE)
MAX_VERSION = 2**53  # versions stay exact in every JSON reader


def path_problem(path: object) -> str | None:  # the agent's rules.path_problem, kept equal
    """Why ``path`` may not name a file of a bundle, or None when it may.

    A bundle path is a relative POSIX path inside the bundle folder: components of
    ASCII letters, digits and ``._+-`` that do not start with ``.`` or ``-`` (so no
    ``..``, ``.``, hidden names or option-like names), separated by single ``/``;
    no absolute path, empty component (``a//b``, trailing ``/``), backslash, NUL or
    other control character, no non-ASCII letter (case folding differs between file
    systems), at most :data:`MAX_PATH_CHARS` characters and :data:`MAX_NAME_CHARS`
    per component, and never a name of the signed envelope (``manifest.json``,
    ``manifest.json.sig``, ``rollback.json``, ``rollback.json.sig``) in any case.
    """
    if not isinstance(path, str):
        return f"expected a string, found {type(path).__name__}"
    shown = repr(path) if len(path) <= 200 else repr(path[:200]) + "..."
    if not path:
        return "empty path"
    if len(path) > MAX_PATH_CHARS:
        return f"{shown}: longer than {MAX_PATH_CHARS} characters"
    if "\x00" in path:
        return f"{shown}: contains a NUL character"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return f"{shown}: contains a control character"
    if "\\" in path:
        return f"{shown}: contains a backslash; paths use '/'"
    if any(ord(c) > 0x7E for c in path):
        return f"{shown}: contains a non-ASCII character"
    if path.startswith("/"):
        return f"{shown}: absolute path; expected a path inside the bundle"
    parts = path.split("/")
    for part in parts:
        if part == "":
            return f"{shown}: empty component ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"{shown}: '{part}' component; expected a normalised path inside the bundle"
        if len(part) > MAX_NAME_CHARS:
            return f"{shown}: a component is longer than {MAX_NAME_CHARS} characters"
        if not _NAME.match(part):
            return (
                f"{shown}: component {part!r} is not a plain name "
                "(letters, digits, '._+-', not starting with '.' or '-')"
            )
    if len(parts) == 1 and path.casefold() in _ENVELOPE_FOLDED:
        return f"{shown}: the name of the signed envelope, not a bundle file"
    return None


def collision_problems(paths: list[str], where: str = "files") -> list[tuple[str, str]]:
    """Paths that would land on the same place: repeated, equal after case folding, or a
    file that is also the folder of another path. Returns (code, message) pairs."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for path in paths:
        key = path.casefold()
        if key in seen:
            same = "" if seen[key] == path else f" (same as {seen[key]!r} after case folding)"
            problems.append(("duplicate_path", f"{where}: {path!r} is listed twice{same}"))
        else:
            seen[key] = path
    folders: dict[str, str] = {}
    for key, path in seen.items():
        parts = key.split("/")
        for i in range(1, len(parts)):
            folders.setdefault("/".join(parts[:i]), path)
    for key, path in sorted(seen.items()):
        if key in folders:
            problems.append(
                (
                    "duplicate_path",
                    f"{where}: {path!r} is a file and also the folder of {folders[key]!r}",
                )
            )
    return problems


def identifier_problem(value: object, what: str) -> str | None:
    """Why ``value`` is not a safe deployment name, or None."""
    if isinstance(value, str) and _IDENTIFIER.match(value):
        return None
    return (
        f"{what}: expected a name of letters, digits, '_' and '-' (at most 128, "
        f"starting with a letter or digit), found {value!r}"[:400]
    )


def version_problem(value: object, what: str = "version") -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value < MAX_VERSION:
        return None
    return f"{what}: expected a whole number from 1 to 2^53, found {value!r}"[:300]


def manifest_problems(manifest: object) -> list[tuple[str, str]]:
    """Every structural, name and path problem of a parsed manifest, as (code, message)."""
    if not isinstance(manifest, dict):
        return [("malformed", "manifest: expected a JSON object")]
    problems: list[tuple[str, str]] = []
    if manifest.get("kind") != "edgeship.bundle":
        problems.append(
            ("malformed", f"kind: expected 'edgeship.bundle', found {manifest.get('kind')!r}")
        )
    why = identifier_problem(manifest.get("deployment"), "deployment")
    if why:
        problems.append(("unsafe_path", why))
    why = version_problem(manifest.get("version"))
    if why:
        problems.append(("malformed", why))
    signing = manifest.get("signing")
    if not isinstance(signing, dict) or not isinstance(signing.get("key_id"), str):
        problems.append(("malformed", "signing.key_id: expected a key id"))
    files = manifest.get("files")
    if not isinstance(files, list):
        return [*problems, ("malformed", "files: expected a list of file entries")]
    if len(files) > MAX_FILES:
        why = f"files: {len(files)} entries; at most {MAX_FILES} are accepted"
        return [*problems, ("too_large", why)]
    paths: list[str] = []
    total = 0
    for i, entry in enumerate(files):
        where = f"files[{i}]"
        if not isinstance(entry, dict):
            problems.append(("malformed", f"{where}: expected an object with path, sha256, size"))
            continue
        why = path_problem(entry.get("path"))
        if why:
            problems.append(("unsafe_path", f"{where}.path: {why}"))
        else:
            paths.append(entry["path"])
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            problems.append(("malformed", f"{where}.sha256: expected 64 lowercase hex digits"))
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(("malformed", f"{where}.size: expected a byte count, found {size!r}"))
        elif size > MAX_FILE_BYTES:
            problems.append(
                ("too_large", f"{where}.size: {size} bytes; at most {MAX_FILE_BYTES} per file")
            )
        else:
            total += size
    if total > MAX_BUNDLE_BYTES:
        problems.append(
            ("too_large", f"files: {total} bytes in all; at most {MAX_BUNDLE_BYTES} per bundle")
        )
    problems += collision_problems(paths)
    model = manifest.get("model")
    if isinstance(model, dict) and model.get("file") is not None and model["file"] not in paths:
        problems.append(("unsafe_path", f"model.file: {model.get('file')!r} is not a listed file"))
    return problems


# -- raw JSON ----------------------------------------------------------------------------------


def json_depth_problem(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why the raw JSON ``data`` nests too deep (objects and arrays), or None.

    A byte scanner without recursion: it skips strings (and their escapes) and counts
    brackets, so a document of any depth costs one pass and no stack.
    """
    depth = 0
    in_string = False
    escaped = False
    for i, byte in enumerate(data):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # "
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            depth += 1
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels (at byte {i})"
        elif byte in (0x7D, 0x5D):  # } ]
            depth -= 1
    return None


class DuplicateKey(ValueError):
    """A JSON object names one key twice (the parsers of others may keep either value)."""


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> object:
    """Parse UTF-8 JSON refusing duplicate keys (DuplicateKey) and NaN/Infinity (ValueError)."""
    return json.loads(
        data.decode("utf-8"), object_pairs_hook=_unique_pairs, parse_constant=_no_constant
    )


# -- exported bundles ---------------------------------------------------------------------------


class ExportError(BundleError):
    """An exported bundle breaks a limit or rule; ``code`` is the agent's refusal code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"error: {message} ({code})")
        self.code = code


def _refuse(code: str, message: str) -> ExportError:
    return ExportError(code, message)


class _Bounded(io.RawIOBase):
    """A seekable view of a (decompressed) export that refuses too large reads and expansion."""

    def __init__(self, raw: BinaryIO, source: str, compressed_size: int, compressed: bool) -> None:
        self.raw, self.source = raw, source
        self.compressed_size, self.compressed = compressed_size, compressed
        self.high = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > MAX_TAR_READ:
            raise _refuse(
                "too_large",
                f"{self.source}: a tar header or read of {size} bytes; "
                f"at most {MAX_TAR_READ} bytes at once are accepted",
            )
        data = self.raw.read(size)
        end = self.raw.tell()
        if end > self.high:
            self.high = end
            if self.compressed and end > max(TAR_RATIO_FLOOR, MAX_TAR_RATIO * self.compressed_size):
                raise _refuse(
                    "too_large",
                    f"{self.source}: expands to more than {end} bytes from "
                    f"{self.compressed_size} compressed (more than {MAX_TAR_RATIO} times); "
                    "refused as a compression bomb",
                )
        return data

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _decompressed(path: Path) -> tuple[BinaryIO, bool]:
    with path.open("rb") as fh:
        head = fh.read(6)
    if head[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb"), True  # type: ignore[return-value]
    if head[:3] == b"BZh":
        return bz2.open(path, "rb"), True  # type: ignore[return-value]
    if head == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb"), True  # type: ignore[return-value]
    return path.open("rb"), False


def member_problem(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """Why a tar member may not be extracted (its name, its type, its size), or None."""
    why = path_problem(member.name)
    if why:
        return ("unsafe_path", f"tar member {why}")
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        return (
            "unsafe_member",
            f"tar member {member.name!r} is a {kind} link to {member.linkname!r}; "
            "expected regular files and folders only",
        )
    if member.issparse():
        return ("unsafe_member", f"tar member {member.name!r} is a sparse file")
    if not (member.isfile() or member.isdir()):
        kind = "device file" if (member.ischr() or member.isblk()) else "special entry"
        if member.isfifo():
            kind = "FIFO"
        return (
            "unsafe_member",
            f"tar member {member.name!r} is a {kind}; expected regular files and folders only",
        )
    if member.isfile() and member.size > MAX_FILE_BYTES:
        return ("too_large", f"tar member {member.name!r}: {member.size} bytes")
    return None


def _claim(member: tarfile.TarInfo, files: dict[str, str], folders: dict[str, str]) -> str | None:
    key = member.name.casefold()
    if key in files:
        return f"{member.name!r} is in the archive twice (as {files[key]!r})"
    if member.isfile():
        if key in folders:
            return f"{member.name!r} is a file and also the folder of {folders[key]!r}"
        files[key] = member.name
    else:
        folders.setdefault(key, member.name)
    parts = key.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in files:
            return f"{files[prefix]!r} is a file and also the folder of {member.name!r}"
        folders.setdefault(prefix, member.name)
    return None


def extract_export(tar_path: Path, dest: Path) -> None:
    """Extract an exported bundle into the empty folder ``dest`` within the limits above.

    Regular files and folders only, names by :func:`path_problem`, no two members on one
    place, at most :data:`MAX_TAR_MEMBERS` members, :data:`MAX_BUNDLE_BYTES` written (counted
    as written) and :data:`MAX_TAR_RATIO` expansion; files are created with ``O_EXCL`` and
    ``O_NOFOLLOW``. Raises BundleError naming the archive, the member and the limit.
    """
    raw, compressed = _decompressed(tar_path)
    source = str(tar_path)
    files: dict[str, str] = {}
    folders: dict[str, str] = {}
    written = count = 0
    try:
        bounded = _Bounded(raw, source, tar_path.stat().st_size, compressed)
        try:
            tar = tarfile.open(fileobj=bounded, mode="r:")  # noqa: SIM115 (closed below)
        except tarfile.TarError as exc:
            raise _refuse("malformed", f"{source}: not a tar file ({exc})") from exc
        with tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as exc:
                    raise _refuse("malformed", f"{source}: broken tar file ({exc})") from exc
                if member is None:
                    break
                count += 1
                if count > MAX_TAR_MEMBERS:
                    raise _refuse("too_large", f"{source}: more than {MAX_TAR_MEMBERS} members")
                problem = member_problem(member)
                if problem is not None:
                    raise _refuse(problem[0], f"{source}: {problem[1]}")
                clash = _claim(member, files, folders)
                if clash is not None:
                    raise _refuse("duplicate_path", f"{source}: {clash}")
                parts = member.name.split("/")
                target = dest.joinpath(*parts)
                depth = len(parts) if member.isdir() else len(parts) - 1
                for i in range(1, depth + 1):
                    folder = dest.joinpath(*parts[:i])
                    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                        name = "/".join(parts[:i])
                        raise _refuse("duplicate_path", f"{source}: {name} is already a file")
                    folder.mkdir(exist_ok=True)
                if member.isdir():
                    continue
                written += _write(tar, member, target, MAX_BUNDLE_BYTES - written, source)
    finally:
        raw.close()


def _write(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, budget: int, source: str
) -> int:
    data = tar.extractfile(member)
    if data is None:
        raise _refuse("unsafe_member", f"{source}: {member.name!r} has no data")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    written = 0
    try:
        while block := data.read(64 * 1024):
            written += len(block)
            if written > member.size or written > budget:
                raise _refuse(
                    "too_large",
                    f"{source}: {member.name!r}: more bytes than its header says or than a "
                    f"bundle may hold ({written})",
                )
            os.write(fd, block)
    finally:
        os.close(fd)
    return written
