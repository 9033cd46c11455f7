"""An edgeship artifact as an MLflow model: ``MLmodel``, a signature, an input example.

ONNX artifacts use MLflow's ``onnx`` flavour (its ``python_function`` runs ONNX Runtime);
the other formats (OpenVINO IR, ONNX Runtime's ``.ort``) a ``python_function`` model whose
code (:mod:`registry.pyfunc_runtime`) runs the artifact's own runtime. Either way
``mlflow.pyfunc.load_model("models:/<deployment>@candidate")`` predicts and ``mlflow models
serve`` serves the registered version. The signature comes from ``runtime.json`` (dynamic
dimensions as -1), the input example is the artifact's smoke input.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PYFUNC_CODE = Path(__file__).with_name("pyfunc_runtime.py")
# the device agent's modules (standard library only): the served model runs the artifact
# through the same runner as a device's health check
AGENT_DIR = Path(__file__).resolve().parents[1] / "orchestrator" / "device" / "agent"
_RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _pins(*dists: str) -> list[str]:
    return [f"{d}=={v}" for d in dists if (v := _version(d))]


def signature_of(runtime: dict[str, Any]) -> Any:
    """The MLflow tensor signature of ``runtime.json``'s inputs and outputs."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def schema(tensors: list[dict[str, Any]]) -> Any:
        return Schema(
            [
                TensorSpec(
                    np.dtype(t.get("dtype", "float32")),
                    tuple(d if isinstance(d, int) else -1 for d in t["shape"]),
                    t["name"],
                )
                for t in tensors
            ]
        )

    return ModelSignature(inputs=schema(runtime["inputs"]), outputs=schema(runtime["outputs"]))


def input_example(artifact: Path, runtime: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The artifact's smoke input, by input name (None when the artifact has none)."""
    path = artifact / "smoke" / "input.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        names = [t["name"] for t in runtime["inputs"]]
        if not all(n in data.files for n in names):
            return None
        return {n: np.asarray(data[n]) for n in names}


def artifact_digest(artifact: Path) -> str:
    """The content digest of an artifact: ``runtime.json`` and every model file. Two builds
    with the same digest made the same thing (the evidence around it may differ)."""
    import hashlib

    runtime = json.loads((artifact / "runtime.json").read_text())
    digest = hashlib.sha256(json.dumps(runtime, sort_keys=True).encode())
    model = runtime["model"]
    for rel in sorted(model.get("files") or [model["file"]]):
        digest.update(b"\0" + rel.encode() + b"\0")
        with open(artifact / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _no_environment_scan() -> Iterator[None]:
    """MLflow checks a model's pip requirements against the running environment by mapping
    every installed distribution's files to modules (seconds on a full environment), only to
    warn about a mismatch. The requirements here are pinned from this environment's own
    versions (:func:`_pins`), so the check cannot find one: it is skipped while saving.
    Where MLflow has no such check (another version), nothing is changed."""
    from mlflow.utils import environment

    name = "warn_dependency_requirement_mismatches"
    original = getattr(environment, name, None)
    if original is None:
        yield
        return
    setattr(environment, name, lambda requirements: None)
    try:
        yield
    finally:
        setattr(environment, name, original)


def save_artifact_model(artifact: Path, out: Path) -> str:
    """Write the MLflow model of ``artifact`` to the new folder ``out``; returns its flavour
    (``onnx`` or ``python_function``)."""
    with _no_environment_scan():
        return _save_artifact_model(artifact, out)


def _save_artifact_model(artifact: Path, out: Path) -> str:
    import mlflow

    runtime = json.loads((artifact / "runtime.json").read_text())
    model = runtime["model"]
    signature = signature_of(runtime)
    example = input_example(artifact, runtime)
    metadata_ = {
        "edgeship.deployment": runtime.get("deployment"),
        "edgeship.target_family": (runtime.get("target") or {}).get("family"),
        "edgeship.runtime": (runtime.get("target") or {}).get("runtime"),
        "edgeship.format": model["format"],
        "edgeship.precision": model.get("precision"),
        "edgeship.model_sha256": model.get("sha256"),
    }
    if model["format"] == "onnx":
        import onnx

        mlflow.onnx.save_model(
            onnx.load(str(artifact / model["file"])),
            str(out),
            signature=signature,
            input_example=example,
            pip_requirements=_pins("onnx", "onnxruntime", "numpy"),
            onnx_execution_providers=["CPUExecutionProvider"],
            metadata=metadata_,
            save_as_external_data=False,
        )
        return "onnx"
    runtime_name = (runtime.get("target") or {}).get("runtime", "")
    dist = "openvino" if model["format"] == "openvino_ir" else "onnxruntime"
    with tempfile.TemporaryDirectory(prefix="edgeship-pyfunc-") as tmp:
        files = Path(tmp) / "artifact"
        files.mkdir()
        shutil.copy2(artifact / "runtime.json", files / "runtime.json")
        for rel in model.get("files") or [model["file"]]:
            (files / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(artifact / rel, files / rel)
        agent = Path(tmp) / "edgeship_agent"
        agent.mkdir()
        for module in AGENT_DIR.glob("*.py"):
            if module.name != "__init__.py":  # the builder of the zipapp stays with edgeship
                shutil.copy2(module, agent / module.name)
        (agent / "__init__.py").write_text("")
        mlflow.pyfunc.save_model(
            str(out),
            python_model=str(PYFUNC_CODE),
            artifacts={"artifact": str(files)},
            code_paths=[str(agent)],
            signature=signature,
            input_example=example,
            pip_requirements=_pins(_RUNTIME_PACKAGES.get(runtime_name, dist), "numpy"),
            metadata=metadata_,
        )
    return "python_function"
