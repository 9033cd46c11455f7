"""Managed tool environments: a toolchain whose pins cannot share edgeship's environment.

Some compilers pin packages that conflict with edgeship's own environment (Apache TVM
0.27 needs ``typing-extensions>=4.13``, which another toolchain in edgeship's
environment caps below 4.13). Such a toolchain runs in its own virtual environment,
made once and reused: :func:`toolenv` returns the interpreter of that environment, and
the passes and targets that use it run a worker script with it (files in, files out).

An environment lives in ``$EDGESHIP_TOOLENV_DIR`` (default
``~/.cache/edgeship/toolenvs``) in a folder named after the tool and a hash of its
pinned requirements and Python version, so changing a pin makes a new environment and
never alters one in use. Creating it:

- is atomic: the environment is built in a temporary folder beside the final one and
  renamed into place once its packages import; a failed or interrupted install leaves
  nothing a later run could mistake for a ready environment;
- is safe when concurrent: an exclusive file lock per environment serialises
  installers; the second waits, then finds the environment ready;
- uses ``python -m venv`` and ``python -m pip``. pip reads the machine's pip
  configuration (``pip.conf``: index URLs, find-links, certificates, constraints), so
  the environment installs from the same package sources as edgeship's own environment;
  uv does not read ``pip.conf`` and would need every index repeated, so it is not used.

Only ``bin/python`` of an environment is ever run (``python -m pip``, worker scripts):
the console scripts in ``bin/`` keep the temporary folder's path in their first line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import EdgeshipError, MissingDependencyError
from orchestrator.project import toolenvs_dir

MARKER = "edgeship-toolenv.json"  # written last: its presence means the environment is ready


@dataclass(frozen=True)
class ToolSpec:
    """A tool environment: its pinned requirements and how to check it works."""

    name: str
    what: str  # what it holds, for messages
    requirements: tuple[str, ...]
    probe: str  # Python that imports the tool and prints its version
    # installed after ``requirements`` with ``pip install --no-deps``: a package whose
    # declared dependencies would replace a pinned one (every dependency it needs is
    # named in ``requirements`` instead)
    no_deps: tuple[str, ...] = ()

    def digest(self) -> str:
        """Hash of the requirements and the interpreter's version (the folder name's tail)."""
        key = json.dumps(
            {
                "requirements": sorted(self.requirements),
                **({"no_deps": sorted(self.no_deps)} if self.no_deps else {}),
                "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            },
            sort_keys=True,
        )
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def install_command(self) -> str:
        return f"edgeship toolenv install {self.name}"


TOOLS: dict[str, ToolSpec] = {
    "tvm": ToolSpec(
        name="tvm",
        what="Apache TVM (Relax compiler and runtime)",
        # numpy and onnx at the versions of edgeship's environment: arrays and ONNX files
        # cross between the two
        requirements=(
            "apache-tvm==0.27.0.post1",
            # apache-tvm asks for >=0.1.14.post0; with 0.1.15 its JSON serialisation of IR
            # objects (which MetaSchedule's worker processes depend on) crashes
            "apache-tvm-ffi==0.1.14.post0",
            "onnx==1.23.2",
            "numpy==2.4.6",
            "psutil==7.2.2",  # MetaSchedule: CPU count and worker processes
            "cloudpickle==3.1.2",  # MetaSchedule: worker processes
        ),
        probe="import onnx, numpy, tvm; print(tvm.__version__)",
    ),
    "optimum-onnx": ToolSpec(
        name="optimum-onnx",
        what="Hugging Face optimum-onnx (ONNX export of transformers models with KV cache)",
        # optimum-onnx 0.1 needs transformers < 4.58 (edgeship's environment has 5.x); torch
        # is the CPU build of edgeship's environment, named exactly so that pip never picks
        # a CUDA build; onnx and numpy at edgeship's versions: the files cross between them
        requirements=(
            "optimum-onnx==0.1.0",
            "optimum==2.1.0",
            "transformers==4.57.6",
            "tokenizers==0.22.2",
            "huggingface-hub==0.36.2",
            "torch==2.13.0",
            "onnx==1.23.2",
            "onnxruntime==1.31.1",  # the exporter fixes dynamic axes with it
            "numpy==2.4.6",
        ),
        probe="import optimum.exporters.onnx, transformers; print(transformers.__version__)",
    ),
    "optimum-intel": ToolSpec(
        name="optimum-intel",
        what="Hugging Face optimum-intel (OpenVINO export of transformers models, tokenizers "
        "for OpenVINO GenAI, NNCF weight compression)",
        # optimum-intel 2.2 needs transformers < 5.6 and declares an unpinned torchvision
        # that would replace the CPU torch with a CUDA build: it is installed without its
        # dependencies, which are named here instead (torchvision is needed by none of the
        # exports edgeship runs). openvino, its tokenizers and NNCF at edgeship's versions:
        # the IR it writes is loaded by edgeship's OpenVINO and OpenVINO GenAI
        requirements=(
            "optimum==2.3.0",
            "transformers[sentencepiece]==5.5.4",
            "tokenizers==0.22.2",
            "huggingface-hub==1.21.0",
            "torch==2.13.0",
            "openvino==2026.4.1",
            "openvino-tokenizers==2026.4.1.0",
            "nncf==3.4.0",
            "tiktoken==0.14.0",
            "setuptools",
            "requests>=2.33,<3",
            "onnx==1.23.2",
            "numpy==2.4.6",
        ),
        no_deps=("optimum-intel==2.2.0",),
        probe="import optimum.intel.openvino, transformers, openvino_tokenizers; "
        "print(transformers.__version__)",
    ),
    "ort-genai": ToolSpec(
        name="ort-genai",
        what="ONNX Runtime GenAI (its model builder and generator)",
        # onnxruntime-genai 0.18 needs onnxruntime 1.32 (edgeship's environment has 1.31);
        # its model builder reads the Hugging Face folder with transformers and torch (the
        # CPU build, named exactly so that pip never picks a CUDA one) and writes the graph
        # with onnx-ir; onnx and numpy at edgeship's versions: the files cross between them
        requirements=(
            "onnxruntime-genai==0.18.0",
            "onnxruntime==1.32.0",
            "onnx-ir==1.1.0",
            "onnx==1.23.2",
            "transformers==5.24.0",
            "tokenizers==0.23.3",
            "torch==2.13.0",
            "numpy==2.4.6",
        ),
        probe="import onnxruntime, onnxruntime_genai, onnxruntime_genai.models.builder, "
        "transformers; print(onnxruntime_genai.__version__)",
    ),
}


class ToolEnvError(EdgeshipError):
    """A tool environment could not be created."""

    exit_code = MissingDependencyError.exit_code


def tool(name: str) -> ToolSpec:
    try:
        return TOOLS[name]
    except KeyError:
        raise ToolEnvError(
            f"error: unknown tool environment '{name}'; expected one of: {', '.join(sorted(TOOLS))}"
        ) from None


def env_dir(name: str, root: Path | None = None) -> Path:
    """The folder of tool environment ``name`` (whether it exists or not)."""
    spec = tool(name)
    return (root or toolenvs_dir()) / f"{spec.name}-{spec.digest()}"


def _python(folder: Path) -> Path:
    return folder / "bin" / "python"


def info(name: str, root: Path | None = None) -> dict[str, Any] | None:
    """The ready environment's record (requirements, tool version), or None."""
    folder = env_dir(name, root)
    marker = folder / MARKER
    if not (marker.is_file() and _python(folder).exists()):
        return None
    try:
        data: dict[str, Any] = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data


def unavailable_reason(name: str) -> str | None:
    """None when tool environment ``name`` is ready; otherwise why not, with the fix."""
    if info(name) is not None:
        return None
    return f"no {tool(name).name} tool environment at {env_dir(name)}"


def toolenv(name: str) -> Path:
    """The interpreter of the ready tool environment ``name``.

    Raises MissingDependencyError naming the command that creates it.
    """
    if info(name) is None:
        spec = tool(name)
        raise MissingDependencyError(
            f"the {spec.name} tool environment ({spec.what})",
            spec.install_command(),
            f"no environment at {env_dir(name)}",
        )
    return _python(env_dir(name))


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check(proc: subprocess.CompletedProcess[str], step: str, spec: ToolSpec) -> None:
    if proc.returncode != 0:
        tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-15:])
        raise ToolEnvError(
            f"error: creating the {spec.name} tool environment failed at {step} "
            f"(exit {proc.returncode}):\n{tail}"
        )


def install(
    name: str,
    *,
    force: bool = False,
    root: Path | None = None,
    run: Runner = subprocess.run,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Create tool environment ``name`` when it is not ready (``force``: make it anew).

    Returns its interpreter. ``run`` runs the commands (``subprocess.run``'s signature).
    """
    spec = tool(name)
    final = env_dir(name, root)
    say = on_step or (lambda _line: None)
    with _locked(final.parent / f".{final.name}.lock"):
        if info(name, root) is not None and not force:
            return _python(final)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            say(f"python -m venv {tmp}")
            base = getattr(sys, "_base_executable", sys.executable)
            _check(
                run([base, "-m", "venv", str(tmp)], capture_output=True, text=True, check=False),
                "python -m venv",
                spec,
            )
            py = _python(tmp)
            pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
            say(f"pip install {' '.join(spec.requirements)}")
            _check(
                run([*pip, *spec.requirements], capture_output=True, text=True, check=False),
                f"pip install {' '.join(spec.requirements)}",
                spec,
            )
            if spec.no_deps:
                say(f"pip install --no-deps {' '.join(spec.no_deps)}")
                _check(
                    run(
                        [*pip, "--no-deps", *spec.no_deps],
                        capture_output=True,
                        text=True,
                        check=False,
                    ),
                    f"pip install --no-deps {' '.join(spec.no_deps)}",
                    spec,
                )
            probe = run([str(py), "-c", spec.probe], capture_output=True, text=True, check=False)
            _check(probe, "the import check", spec)
            printed = (probe.stdout or "").strip().splitlines()
            freeze = run(
                [str(py), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
                capture_output=True,
                text=True,
                check=False,
            )
            record = {
                "name": spec.name,
                "requirements": list(spec.requirements),
                "no_deps": list(spec.no_deps),
                "digest": spec.digest(),
                "version": printed[-1] if printed else "",
                "python": f"{sys.version_info.major}.{sys.version_info.minor}",
                # every distribution the environment holds, as pip freeze writes it: the
                # environment's lock, recorded in the provenance of what its passes build
                "lock": sorted((freeze.stdout or "").split()) if freeze.returncode == 0 else [],
            }
            (tmp / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            if final.exists():
                old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _python(final)


def listing(root: Path | None = None) -> list[dict[str, Any]]:
    """Every known tool environment: name, folder, requirements, state, tool version."""
    rows = []
    for name, spec in sorted(TOOLS.items()):
        found = info(name, root)
        rows.append(
            {
                "name": name,
                "what": spec.what,
                "path": str(env_dir(name, root)),
                "requirements": list(spec.requirements),
                "installed": found is not None,
                "version": (found or {}).get("version"),
            }
        )
    return rows


def run_python(
    name: str,
    argv: list[str],
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the interpreter of tool environment ``name`` with ``argv`` (a script or ``-m``
    and a module, then its arguments); output captured, the exit status not checked."""
    python = toolenv(name)
    environ = {**os.environ, **(env or {})}
    environ.pop("PYTHONPATH", None)  # nothing of edgeship's environment leaks in
    return subprocess.run(
        [str(python), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environ,
    )


def run_worker(
    name: str,
    script: Path,
    args: list[str],
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the interpreter of tool environment ``name``."""
    return run_python(name, [str(script), *args], timeout=timeout, env=env)
