"""Where a build came from: git commit and dirty state of the project, the files the
spec references (hash, git state), the packages the project's code imports, and the
versions of the tools."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def _git(root: Path, *args: str, strip: bool = True) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() if strip else proc.stdout.rstrip("\n")


def git_info(root: Path) -> dict[str, Any]:
    """The commit of the project's repository and whether it had uncommitted changes.

    New files that git does not ignore count as changes (a team's model code that was
    never committed makes the tree dirty); ``changes`` lists the first of them.
    """
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", ".", strip=False)
    lines = [line for line in (status or "").splitlines() if line.strip()]
    prefix = _git(root, "rev-parse", "--show-prefix") or ""  # the project's folder in the repo
    lines = [line for line in lines if not _is_build_output(line[3:], prefix)]
    return {
        "commit": commit or "unknown",
        "dirty": bool(lines) if status is not None else None,
        "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD") or "unknown",
        "repository": _git(root, "rev-parse", "--show-toplevel"),
        "changes": [line[3:] for line in lines[:MAX_CHANGES]],
    }


# What builds themselves write into the project (``dvc repro``: the lock, the composed specs
# and the reports it records; ``edgeship build``: the DVC stage list it refreshes): changes
# to them follow from a build and never change what a build makes, so they do not make the
# tree dirty.
BUILD_OUTPUTS = ("dvc.lock", "dvc-stages.yaml", "reports/", "specs/")


def _is_build_output(path: str, prefix: str = "") -> bool:
    path = path.split(" -> ")[-1].strip().strip('"')
    if prefix and path.startswith(prefix):
        path = path[len(prefix) :]
    return any(path == out or (out.endswith("/") and path.startswith(out)) for out in BUILD_OUTPUTS)


MAX_CHANGES = 20


class GitStates:
    """Git states of files, one ``git status`` per repository (cached)."""

    def __init__(self) -> None:
        self._repos: dict[Path, tuple[Path, list[tuple[str, str]]] | None] = {}

    def _status(self, folder: Path) -> tuple[Path, list[tuple[str, str]]] | None:
        if folder not in self._repos:
            top = _git(folder, "rev-parse", "--show-toplevel")
            status = None
            if top is not None:
                status = _git(Path(top), "status", "--porcelain", "--ignored", strip=False)
            self._repos[folder] = (
                None
                if top is None or status is None
                else (
                    Path(top).resolve(),
                    [(line[:2], line[3:].strip('"')) for line in status.splitlines()],
                )
            )
        return self._repos[folder]

    def state(self, path: Path) -> str:
        """committed, modified, untracked, ignored, or not-in-git."""
        found = self._status(path.resolve().parent)
        if found is None:
            return "not-in-git"
        top, entries = found
        rel = path.resolve().relative_to(top).as_posix()
        for code, name in entries:
            if rel == name or (name.endswith("/") and rel.startswith(name)):
                return {"??": "untracked", "!!": "ignored"}.get(code, "modified")
        return "committed"


def file_record(path: Path, root: Path, states: GitStates | None = None) -> dict[str, Any]:
    """A file the spec references: path (project-relative when inside), sha256, git state."""
    from orchestrator.core.model_file import sha256_file

    try:
        shown = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        shown = str(path.resolve())
    return {
        "path": shown,
        "sha256": sha256_file(path) if path.is_file() else None,
        "git": (states or GitStates()).state(path),
    }


def user_modules(root: Path) -> dict[str, Path]:
    """Loaded modules that are the project's own code: files under ``root`` that are not
    edgeship's packages or an environment's installed packages."""
    from orchestrator.build.usercode import is_user_file

    base = root.resolve()
    out: dict[str, Path] = {}
    for name, module in list(sys.modules.items()):
        filename = getattr(module, "__file__", None)
        if not isinstance(filename, str) or not filename.endswith(".py"):
            continue
        if not Path(filename).is_absolute() or not is_user_file(filename):
            continue  # (torch.ops and the like carry a made-up relative __file__)
        if name.split(".")[0] in ("tests", "conftest"):
            continue  # a test suite's own modules, when a build runs under pytest
        path = Path(filename).resolve()
        if base in path.parents and not any(
            part in (".venv", "venv", "site-packages") for part in path.parts
        ):
            out[name] = path
    return out


def imported_distributions(files: list[Path], local: set[str]) -> dict[str, str]:
    """Installed distributions (name -> version) that ``files`` import, found by reading
    their import statements; ``local`` are the project's own top-level names."""
    import ast

    names: set[str] = set()
    for path in files:
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    dists = metadata.packages_distributions()
    out: dict[str, str] = {}
    for name in sorted(names - local - set(sys.stdlib_module_names)):
        for dist in dists.get(name, []):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                out[dist] = "not installed"
    return out


def _imported_names(path: Path, package: str) -> set[str]:
    """Absolute module names a file's import statements name (relative ones resolved
    against ``package``), with each ``from X import y`` also as ``X.y``."""
    import ast

    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - node.level + 1] if node.level > 1 else parts
                base = ".".join([*parts, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def reachable_modules(modules: dict[str, Path], start: list[Path]) -> dict[str, Path]:
    """The modules of ``modules`` that the files ``start`` reach through their imports
    (and the packages above each): the project code a build ran, not every project module
    the process happens to have loaded (several builds share a process in a multirun, a
    Ray worker or a test run)."""
    by_path = {path: name for name, path in modules.items()}
    todo = [by_path[p.resolve()] for p in start if p.resolve() in by_path]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [
            ".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules
        ]
        path = modules[name]
        package = name if path.name == "__init__.py" else ".".join(parts[:-1])
        todo += [n for n in _imported_names(path, package) if n in modules]
    return {name: modules[name] for name in sorted(seen)}


def code_provenance(root: Path, spec_files: list[tuple[str, Path]]) -> dict[str, Any]:
    """The project's code a build ran: each module file the spec's callables reach, with its
    hash and git state, the spec's callables' files, and the distributions (with versions)
    that code imports."""
    modules = reachable_modules(user_modules(root), [path for _key, path in spec_files])
    local = {name.split(".")[0] for name in modules}
    states = GitStates()
    files = [{"key": key, **file_record(path, root, states)} for key, path in spec_files]
    return {
        "files": files,
        "modules": {
            name: file_record(path, root, states) for name, path in sorted(modules.items())
        },
        "packages": imported_distributions(list(modules.values()), local),
    }


def package_versions(*names: str) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "packages": package_versions(
            "edgeship", "torch", "onnx", "onnxruntime", "openvino", "nncf", "mlflow"
        ),
    }
