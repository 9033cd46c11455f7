"""What a manifest may say, on the build host: the device agent's own rules, one copy.

The rules live in :mod:`orchestrator.device.agent.rules` (standard library only; they
ship to devices inside the agent) and tar extraction in
:mod:`orchestrator.device.agent.unpack`. The build host imports those same modules,
so both sides refuse the same names with the same refusal codes; here the agent's
refusals become :class:`BundleError` (with ``code``).

:func:`registry.bundle.Bundle.open` checks a manifest's bytes in this order: size
(:data:`MAX_MANIFEST_BYTES`), nesting depth (:func:`json_depth_problem`, a scanner
without recursion), the parse (:func:`strict_json`: duplicate keys and NaN refused),
then structure and every path (:func:`manifest_problems`).
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.device.agent import unpack
from orchestrator.device.agent.errors import Refusal
from orchestrator.device.agent.files import ENVELOPE
from orchestrator.device.agent.rules import (
    BUNDLE_KIND,
    MAX_BUNDLE_BYTES,
    MAX_CLOCK_SKEW_SECONDS,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_NAME_CHARS,
    MAX_ORDER_BYTES,
    MAX_PATH_CHARS,
    MAX_SIGNATURE_BYTES,
    MAX_TAR_MEMBERS,
    MAX_TAR_RATIO,
    MAX_TAR_READ,
    MEASURE_KIND,
    TAR_RATIO_FLOOR,
    DuplicateKey,
    collision_problems,
    identifier_problem,
    json_depth_problem,
    manifest_problems,
    path_problem,
    strict_json,
    version_problem,
)
from orchestrator.errors import BundleError

__all__ = [
    "BUNDLE_KIND",
    "ENVELOPE",
    "MAX_BUNDLE_BYTES",
    "MAX_CLOCK_SKEW_SECONDS",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MAX_NAME_CHARS",
    "MAX_ORDER_BYTES",
    "MAX_PATH_CHARS",
    "MAX_SIGNATURE_BYTES",
    "MAX_TAR_MEMBERS",
    "MAX_TAR_RATIO",
    "MAX_TAR_READ",
    "MEASURE_KIND",
    "TAR_RATIO_FLOOR",
    "DuplicateKey",
    "ExportError",
    "collision_problems",
    "extract_export",
    "identifier_problem",
    "json_depth_problem",
    "manifest_problems",
    "path_problem",
    "strict_json",
    "version_problem",
]


class ExportError(BundleError):
    """An exported bundle breaks a limit or rule; ``code`` is the agent's refusal code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"error: {message} ({code})")
        self.code = code


def extract_export(tar_path: Path, dest: Path) -> None:
    """Extract an exported bundle into the empty folder ``dest`` as a device would.

    Regular files and folders only, names by :func:`path_problem`, no two members on
    one place, at most :data:`MAX_TAR_MEMBERS` members, :data:`MAX_BUNDLE_BYTES` written
    (counted as written) and :data:`MAX_TAR_RATIO` expansion. Raises ExportError naming
    the archive, the member and the limit.
    """
    try:
        unpack.extract_bundle(str(tar_path), str(dest))
    except Refusal as exc:
        raise ExportError(exc.code, exc.message) from exc
