"""What a manifest may say, checked before anything is written: limits, paths, names, raw JSON.

The build host imports this very module (through ``registry/bundle_rules.py``), so
both sides refuse the same names with the same codes. Everything here is pure: it reads bytes
and values and returns problems as ``(refusal code, message)`` pairs.

Order of the checks on a manifest's bytes (``Verifier.load_manifest``): size
(:data:`MAX_MANIFEST_BYTES`), nesting depth (:func:`json_depth_problem`, a scanner
without recursion), the signature over the raw bytes, and only then the parse
(:func:`strict_json`: duplicate keys and NaN refused), the structure and every
path (:func:`manifest_problems`).
"""

from __future__ import annotations

import json
import re

from .files import ENVELOPE

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
BUNDLE_KIND = "edgeship.bundle"  # a signed bundle: installed and activated
MEASURE_KIND = "edgeship.measure"  # a signed candidate for a lab device: measured, never installed

# one path component: ASCII letters, digits and ._+- ; never starting with '.' or '-'
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
# deployment names (they name staging folders and the deployment a device runs)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENVELOPE_FOLDED = frozenset(n.casefold() for n in ENVELOPE)
MAX_VERSION = 2**53  # versions stay exact in every JSON reader


def path_problem(path: object) -> str | None:
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


def collision_problems(paths: list, where: str = "files") -> list:
    """Paths that would land on the same place: repeated, equal after case folding, or a
    file that is also the folder of another path. Returns (code, message) pairs."""
    problems = []
    seen: dict = {}
    for path in paths:
        key = path.casefold()
        if key in seen:
            same = "" if seen[key] == path else f" (same as {seen[key]!r} after case folding)"
            problems.append(("duplicate_path", f"{where}: {path!r} is listed twice{same}"))
        else:
            seen[key] = path
    folders: dict = {}
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


def manifest_problems(manifest: object, kinds: tuple = (BUNDLE_KIND,)) -> list:
    """Every structural, name and path problem of a parsed manifest, as (code, message).

    ``kinds``: the manifest kinds accepted here. A bundle (``edgeship.bundle``) carries a
    version; a measurement candidate (``edgeship.measure``, measured on a lab device and
    never installed) carries none.
    """
    if not isinstance(manifest, dict):
        return [("malformed", "manifest: expected a JSON object")]
    problems = []
    kind = manifest.get("kind")
    if kind not in kinds:
        expected = " or ".join(repr(k) for k in kinds)
        problems.append(("malformed", f"kind: expected {expected}, found {kind!r}"))
    why = identifier_problem(manifest.get("deployment"), "deployment")
    if why:
        problems.append(("unsafe_path", why))
    if kind != MEASURE_KIND:
        why = version_problem(manifest.get("version"))
        if why:
            problems.append(("malformed", why))
    elif "version" in manifest:
        problems.append(("malformed", "version: a measurement candidate has no version"))
    signing = manifest.get("signing")
    if not isinstance(signing, dict) or not isinstance(signing.get("key_id"), str):
        problems.append(("malformed", "signing.key_id: expected a key id"))
    files = manifest.get("files")
    if not isinstance(files, list):
        return [*problems, ("malformed", "files: expected a list of file entries")]
    if len(files) > MAX_FILES:
        why = f"files: {len(files)} entries; at most {MAX_FILES} are accepted"
        return [*problems, ("too_large", why)]
    paths = []
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
        # a package folder (Core ML's .mlpackage) is the model when listed files lie in it
        folder = f"{model['file']}/"
        if not any(isinstance(p, str) and p.startswith(folder) for p in paths):
            problems.append(
                ("unsafe_path", f"model.file: {model.get('file')!r} is not a listed file")
            )
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


def _unique_pairs(pairs: list) -> dict:
    out = {}
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


_KEY_ID = re.compile(rb'"key_id"\s*:\s*"([0-9a-f]{1,64})"')


def claimed_key_id(data: bytes) -> str | None:
    """The signing key id a manifest claims, found without parsing it (unsigned bytes)."""
    match = _KEY_ID.search(data)
    return match.group(1).decode() if match else None
