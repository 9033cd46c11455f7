"""Exported bundles (``.tar``, ``.tar.gz``, ``.tar.bz2``, ``.tar.xz``) extracted within limits.

Nothing of the archive is trusted before the manifest inside it is verified, so
extraction itself is bounded: the number of members, the bytes read out of a
compressed file (:data:`rules.MAX_TAR_RATIO` per byte of the file, past a floor),
the bytes written (counted as they are written, not taken from the headers), the
size of one header tarfile may read at once, and the member types (regular files
and folders only: no symbolic or hard links, devices, FIFOs or sparse files).
Every name follows the bundle path rules (:func:`rules.path_problem`) and no two
members may land on the same place. Files are created with ``O_EXCL`` and
``O_NOFOLLOW``: nothing that exists is ever written through.
"""

from __future__ import annotations

import io
import os
import tarfile
import typing

from .errors import Refusal
from .rules import (
    MAX_BUNDLE_BYTES,
    MAX_FILE_BYTES,
    MAX_TAR_MEMBERS,
    MAX_TAR_RATIO,
    MAX_TAR_READ,
    TAR_RATIO_FLOOR,
    path_problem,
)

CHUNK = 64 * 1024


class _Bounded(io.RawIOBase):
    """A readable, seekable view of a (decompressed) stream that refuses to read too much."""

    def __init__(
        self, raw: typing.BinaryIO, source: str, compressed_size: int, compressed: bool
    ) -> None:
        self.raw = raw
        self.source = source
        self.compressed_size = compressed_size
        self.compressed = compressed
        self.high = 0  # the furthest offset read so far

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_TAR_READ:
            raise Refusal(
                "too_large",
                f"{self.source}: a tar header or read of {size} bytes; "
                f"at most {MAX_TAR_READ} bytes at once are accepted",
            )
        data = self.raw.read(size)
        end = self.raw.tell()
        if end > self.high:
            self.high = end
            if self.compressed and end > max(TAR_RATIO_FLOOR, MAX_TAR_RATIO * self.compressed_size):
                raise Refusal(
                    "too_large",
                    f"{self.source}: expands to more than {end} bytes from "
                    f"{self.compressed_size} compressed (more than {MAX_TAR_RATIO} times); "
                    "refused as a compression bomb",
                )
            if end > MAX_BUNDLE_BYTES + MAX_TAR_MEMBERS * 1024:
                raise Refusal(
                    "too_large", f"{self.source}: more than {MAX_BUNDLE_BYTES} bytes of bundle"
                )
        return data

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _open_decompressed(path: str) -> tuple:
    """(file object, compressed?) by the file's first bytes: gzip, bzip2, xz or plain tar."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head[:2] == b"\x1f\x8b":
        import gzip

        return gzip.open(path, "rb"), True
    if head[:3] == b"BZh":
        import bz2

        return bz2.open(path, "rb"), True
    if head == b"\xfd7zXZ\x00":
        import lzma

        return lzma.open(path, "rb"), True
    return open(path, "rb"), False


def _member_problem(member: tarfile.TarInfo) -> tuple | None:
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
        kind = (
            "device file"
            if (member.ischr() or member.isblk())
            else ("FIFO" if member.isfifo() else "special entry")
        )
        return (
            "unsafe_member",
            f"tar member {member.name!r} is a {kind}; expected regular files and folders only",
        )
    if member.isfile() and member.size > MAX_FILE_BYTES:
        return (
            "too_large",
            f"tar member {member.name!r}: {member.size} bytes; at most {MAX_FILE_BYTES} per file",
        )
    return None


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str, budget: int) -> int:
    """Write one regular file (new, never through a link); returns the bytes written."""
    src = tar.extractfile(member)
    if src is None:
        raise Refusal("unsafe_member", f"tar member {member.name!r} has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(dest, flags, 0o644)
    written = 0
    try:
        while True:
            block = src.read(CHUNK)
            if not block:
                break
            written += len(block)
            if written > member.size or written > budget:
                raise Refusal(
                    "too_large",
                    f"tar member {member.name!r}: more bytes than its header says "
                    f"or than the bundle may hold ({written})",
                )
            os.write(fd, block)
    finally:
        os.close(fd)
    return written


def extract_bundle(path: str, dest: str) -> None:
    """Extract the exported bundle ``path`` into the empty folder ``dest``; raises Refusal."""
    compressed_size = os.path.getsize(path)
    raw, compressed = _open_decompressed(path)
    source = os.path.basename(path)
    try:
        bounded = _Bounded(raw, source, compressed_size, compressed)
        try:
            tar = tarfile.open(fileobj=bounded, mode="r:")  # noqa: SIM115 (closed below)
        except tarfile.TarError as exc:
            raise Refusal("malformed", f"{source}: not a tar file ({exc})") from exc
        with tar:
            files: dict = {}  # case-folded name -> name, of regular files
            folders: dict = {}  # case-folded name -> name, of folders (members or parents)
            written = 0
            count = 0
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as exc:
                    raise Refusal("malformed", f"{source}: broken tar file ({exc})") from exc
                if member is None:
                    break
                count += 1
                if count > MAX_TAR_MEMBERS:
                    raise Refusal("too_large", f"{source}: more than {MAX_TAR_MEMBERS} members")
                problem = _member_problem(member)
                if problem is not None:
                    raise Refusal(problem[0], f"{source}: {problem[1]}")
                clash = _claim(member, files, folders)
                if clash is not None:
                    raise Refusal("duplicate_path", f"{source}: {clash}")
                target = os.path.join(dest, *member.name.split("/"))
                parent = os.path.dirname(target)
                _makedirs_real(dest, parent)
                if member.isdir():
                    _makedirs_real(dest, target)
                    continue
                written += _write_member(tar, member, target, MAX_BUNDLE_BYTES - written)
    finally:
        raw.close()


def _claim(member: tarfile.TarInfo, files: dict, folders: dict) -> str | None:
    """Record where ``member`` lands; why it clashes with an earlier member, or None.

    A folder may be named again (``a/`` after ``a/b``); a file may not, nor may two names
    equal after case folding, nor may a file also be a folder.
    """
    name = member.name
    key = name.casefold()
    if key in files:
        return f"{name!r} is in the archive twice (as {files[key]!r})"
    if member.isfile():
        if key in folders:
            return f"{name!r} is a file and also the folder of {folders[key]!r}"
        files[key] = name
    else:
        folders.setdefault(key, name)
    parts = key.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in files:
            return f"{files[prefix]!r} is a file and also the folder of {name!r}"
        folders.setdefault(prefix, name)
    return None


def _makedirs_real(top: str, folder: str) -> None:
    """Create ``folder`` under ``top``, refusing any existing part that is not a real folder."""
    rel = os.path.relpath(folder, top)
    if rel == ".":
        return
    current = top
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        if os.path.islink(current) or (os.path.lexists(current) and not os.path.isdir(current)):
            raise Refusal(
                "duplicate_path", f"{rel}: {part} is already a file; a tar member cannot use it"
            )
        if not os.path.isdir(current):
            os.mkdir(current, 0o755)
