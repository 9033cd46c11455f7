"""The device's inference runtimes: installed versions and version requirements."""

from __future__ import annotations

import re

RUNTIME_DISTRIBUTIONS = {
    "onnxruntime": (
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxruntime-openvino",
        "onnxruntime-directml",
    ),
    # the mobile format (.ort) runs in the full runtime where a device has no app around it
    "onnxruntime_mobile": (
        "onnxruntime",
        "onnxruntime-gpu",
    ),
    "openvino": ("openvino",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-libs"),
}


def parse_release(text: str) -> tuple:
    match = re.match(r"\d+(\.\d+)*", text.strip())
    if not match:
        return ()
    return tuple(int(p) for p in match.group(0).split("."))


def _cmp(a: tuple, b: tuple) -> int:
    width = max(len(a), len(b))
    a = a + (0,) * (width - len(a))
    b = b + (0,) * (width - len(b))
    return (a > b) - (a < b)


def satisfies(version: str, specifier: str) -> bool:
    """A small PEP 440 specifier check on release numbers (>=, <=, >, <, ==, !=, ~=, ==X.*)."""
    have = parse_release(version)
    for clause in [c.strip() for c in specifier.split(",") if c.strip()]:
        match = re.match(r"(~=|==|!=|>=|<=|>|<)\s*(.+)$", clause)
        if not match:
            return False
        op, want_text = match.group(1), match.group(2).strip()
        if want_text.endswith(".*"):
            prefix = parse_release(want_text[:-2])
            same = have[: len(prefix)] == prefix
            if (op == "==" and not same) or (op == "!=" and same):
                return False
            continue
        want = parse_release(want_text)
        c = _cmp(have, want)
        ok = {
            "==": c == 0,
            "!=": c != 0,
            ">=": c >= 0,
            "<=": c <= 0,
            ">": c > 0,
            "<": c < 0,
            "~=": c >= 0 and have[: max(len(want) - 1, 1)] == want[: max(len(want) - 1, 1)],
        }[op]
        if not ok:
            return False
    return True


def runtime_version(runtime: str) -> str | None:
    """The installed version of a runtime, from package metadata (no import).

    TensorRT without a Python package (JetPack's ``trtexec`` alone) is found by the version
    ``trtexec`` reports.
    """
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    for dist in RUNTIME_DISTRIBUTIONS.get(runtime, (runtime,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if runtime == "tensorrt":
        from .tensorrt_engine import trtexec_path, trtexec_version

        if trtexec_path() is not None:
            return trtexec_version()
    return None
