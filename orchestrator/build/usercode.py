"""Calling the project's own code named in a spec, with errors that point at it.

A factory, a data loader, preprocessing, a train function or the model's forward
that raises (or a module that cannot be imported) becomes one
:class:`~orchestrator.errors.UserCodeError` naming the spec key and the user's
``file:line``; the traceback stays attached (``raise ... from``) for ``-v``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import BuildError, EdgeshipError, SpecError, UserCodeError
from orchestrator.project import project_root

__all__ = ["UserCodeError", "call_user", "function_location", "resolve_callable"]

# frames in these folders are not the user's: the standard library, installed packages,
# edgeship itself
_NOT_USER = tuple(
    str(Path(p).resolve())
    for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
)
_EDGESHIP = tuple(
    str(Path(__file__).resolve().parents[i] / name)
    for i, name in ((2, "orchestrator"), (2, "targets"), (2, "registry"))
)


def is_user_file(filename: str) -> bool:
    """Whether a source file is the project's code (not Python's, a package's, edgeship's)."""
    if filename.startswith("<") or not Path(filename).is_file():
        return False  # (compiled extensions name .pyx files that are not on disk)
    path = str(Path(filename).resolve())
    if "site-packages" in path or "dist-packages" in path:
        return False
    return not path.startswith(_NOT_USER) and not path.startswith(_EDGESHIP)


def _shown(filename: str, root: Path | None) -> str:
    path = Path(filename).resolve()
    if root is None:
        try:
            root = project_root()
        except SpecError:
            root = Path.cwd()
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return str(path)


def user_frame(exc: BaseException, root: Path | None = None) -> str | None:
    """``file:line in function`` of the innermost frame of the user's code in a traceback."""
    if isinstance(exc, SyntaxError) and exc.filename and is_user_file(exc.filename):
        return f"{_shown(exc.filename, root)}:{exc.lineno}"
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if is_user_file(frame.filename):
            found = f"{_shown(frame.filename, root)}:{frame.lineno} in {frame.name}"
    return found


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def resolve_callable(ref: str, key: str, root: Path | None = None) -> Callable[..., Any]:
    """Import ``package.module:function``; a clear error names the spec key when it fails."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise BuildError(f"error: {key}: expected 'package.module:function', found '{ref}'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = user_frame(exc, root)
        if where is None and exc.name and module_name.startswith(exc.name):
            raise UserCodeError(
                key, f"cannot import module '{module_name}': no module named '{exc.name}'"
            ) from exc
        raise UserCodeError(
            key, f"importing module '{module_name}' failed: {_describe(exc)}", where
        ) from exc
    except Exception as exc:  # the module's own code raised while being imported
        raise UserCodeError(
            key, f"importing module '{module_name}' failed: {_describe(exc)}", user_frame(exc, root)
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserCodeError(
            key, f"module '{module_name}' has no callable '{attr}'", module_file(module_name, root)
        )
    return fn


def module_file(module_name: str, root: Path | None = None) -> str | None:
    module = sys.modules.get(module_name)
    filename = getattr(module, "__file__", None)
    return _shown(filename, root) if filename else None


def function_location(fn: Callable[..., Any], root: Path | None = None) -> str | None:
    """``file:line`` where ``fn`` is defined."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None or not is_user_file(code.co_filename):
        return None
    return f"{_shown(code.co_filename, root)}:{code.co_firstlineno}"


def call_user(
    fn: Callable[..., Any],
    key: str,
    what: str,
    *args: Any,
    root: Path | None = None,
    **kwargs: Any,
) -> Any:
    """``fn(*args, **kwargs)``; anything but an edgeship error becomes a UserCodeError."""
    try:
        return fn(*args, **kwargs)
    except (EdgeshipError, KeyboardInterrupt):
        raise
    except Exception as exc:
        where = user_frame(exc, root) or function_location(fn, root)
        raise UserCodeError(key, f"{what} raised {_describe(exc)}", where) from exc
