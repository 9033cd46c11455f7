"""The reference model of a build, from any source kind, with its lineage.

- ``pytorch`` + ``factory`` (+ ``weights``): the factory's module with the state_dict,
  exported by ``torch.onnx.export`` (dynamo);
- ``pytorch`` + ``path``: a ``.pt2`` archive (``torch.export.save``; the ExportedProgram
  is exported) or a TorchScript file (``torch.jit.save``; the TorchScript exporter);
- ``onnx`` + ``path``: ONNX Runtime (FP32, CPU) on the original file; the export is a copy;
- ``mlflow`` + ``uri``: the onnx flavour as ``onnx``, else the pytorch flavour as above;
- ``huggingface`` and ``monai_bundle`` + ``path`` (a folder): see
  :mod:`orchestrator.build.framework_sources`.

Nothing here trains or invents weights: a file the spec names must exist
(:func:`missing_source_files`), and training is the explicit ``edgeship train``.
Every source records its lineage: the hash of the model file(s), the files the spec
references, and for MLflow the model version it came from.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.build import reference as ref
from orchestrator.build.export import onnx_signature
from orchestrator.build.reference_model import Reference, tree_sha256
from orchestrator.core.model_file import sha256_file
from orchestrator.core.schema import ModelConfig
from orchestrator.errors import BuildError, Problem, SpecError

log = logging.getLogger(__name__)


# -- files a spec names ------------------------------------------------------------------------


def _spec_source(files: dict[str, str], overrides: list[str], key: str) -> str:
    """Where ``key`` was set: the override that set it, else the model's file."""
    for line in overrides:
        name = line.lstrip("+~").split("=", 1)[0]
        if "." not in name:
            continue  # a choice of group (model=NAME): the value comes from that file
        if key == name or key.startswith(name + "."):
            return f"command line ({line})"
    return files.get("model", "command line")


def missing_source_files(
    model: ModelConfig, root: Path, files: dict[str, str], overrides: list[str]
) -> list[Problem]:
    """Every file the model source names that does not exist (checked before any work).

    A missing weights file is never trained for silently: a build stops here, and the
    weights come from ``edgeship train`` (or the project's own pipeline).
    """
    from orchestrator.build.framework_sources import folder_problems

    problems = []
    src = model.source
    for key, rel in (("model.source.weights", src.weights), ("model.source.path", src.path)):
        if not rel:
            continue
        path = root / rel
        if src.kind in ("huggingface", "monai_bundle") and key == "model.source.path":
            problems += folder_problems(src.kind, path, rel, _spec_source(files, overrides, key))
            continue
        if path.is_file():
            continue
        msg = f"file {rel} does not exist in the project"
        if key == "model.source.weights":
            msg += (
                "; builds never train: write it with `edgeship train model=NAME` "
                "(model.source.train) or correct the path"
            )
        problems.append(Problem(_spec_source(files, overrides, key), key, msg))
    return problems


def check_source_files(
    model: ModelConfig, root: Path, files: dict[str, str], overrides: list[str]
) -> None:
    problems = missing_source_files(model, root, files, overrides)
    if problems:
        raise SpecError(problems, title="model source not found")


# -- opening a source --------------------------------------------------------------------------


def open_source(model: ModelConfig, root: Path, load: bool = True) -> Reference:
    """Load the spec's reference model (see the table in this module's docstring).
    ``load=False`` (Hugging Face folders only) checks and hashes the folder, leaving
    ``module`` None until a second call loads it."""
    kind = model.source.kind
    if kind == "onnx":
        return _open_onnx(model, root)
    if kind == "mlflow":
        return _open_mlflow(model, root)
    if kind in ("huggingface", "monai_bundle"):
        from orchestrator.build import framework_sources

        if kind == "huggingface":
            return framework_sources.open_huggingface(model, root, load)
        return framework_sources.open_monai_bundle(model, root)
    if model.source.path:
        return _open_torch_file(model, root)
    return _open_factory(model, root)


def reference_net(model: ModelConfig, root: Path) -> Any:
    """The reference's torch module, loaded now (a generative build loads it only when no
    kept reference outputs match; see orchestrator/build/kept_reference.py)."""
    module = open_source(model, root).module
    return getattr(module, "net", module)


def _file_entry(key: str, path: Path, root: Path) -> dict[str, Any]:
    from orchestrator.build.provenance import file_record

    return {"key": key, **file_record(path, root)}


def _open_factory(model: ModelConfig, root: Path) -> Reference:
    net = ref.load_reference(model, root)
    weights = ref.weights_path(model, root)
    files = []
    factory = model.source.factory
    assert factory is not None
    module_file = ref.callable_file(factory.fn)
    if module_file is not None:
        files.append(_file_entry("model.source.factory", module_file, root))
    if weights is not None:
        files.append(_file_entry("model.source.weights", weights, root))
    lineage: dict[str, Any] = {
        "kind": "pytorch",
        "format": "state_dict" if weights is not None else "factory",
        "factory": factory.fn,
        "sha256": files[-1]["sha256"] if files else None,
        "files": files,
    }
    training = ref.training_record(weights)
    if training is not None:
        lineage["training"] = training
    fmt = lineage["format"]
    return Reference("pytorch", fmt, "model.source.factory", lineage, net, net)


def _eval_mode(net: Any) -> Any:
    with contextlib.suppress(NotImplementedError):  # a torch.export module is frozen already
        net.eval()
    return net


def _open_torch_file(model: ModelConfig, root: Path) -> Reference:
    import torch

    assert model.source.path is not None
    path = root / model.source.path
    entry = _file_entry("model.source.path", path, root)
    lineage = {"kind": "pytorch", "sha256": entry["sha256"], "files": [entry]}
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise BuildError(
                f"error: model.source.path: {model.source.path} is not a torch.export "
                f"archive (torch.export.save): {str(exc).splitlines()[0]}"
            ) from exc
        lineage["format"] = "torch_export"
        return Reference(
            "pytorch", "torch_export", "model.source.path", lineage, program.module(), program
        )
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise BuildError(
            f"error: model.source.path: {model.source.path} is not a TorchScript file "
            f"(torch.jit.save) or a .pt2 archive (torch.export.save); a state_dict goes in "
            f"model.source.weights with a factory: {str(exc).splitlines()[0]}"
        ) from exc
    lineage["format"] = "torchscript"
    return Reference(
        "pytorch", "torchscript", "model.source.path", lineage, _eval_mode(net), net, dynamo=False
    )


def _check_onnx_signature(path: Path, model: ModelConfig, key: str, shown: str) -> None:
    got_in, got_out = onnx_signature(path)
    want_in = [t.name for t in model.inputs]
    want_out = [t.name for t in model.outputs]
    if got_in != want_in or got_out != want_out:
        raise BuildError(
            f"error: {key}: {shown} has inputs {got_in} and outputs {got_out}; "
            f"model.inputs name {want_in} and model.outputs {want_out}"
        )


def _open_onnx(model: ModelConfig, root: Path) -> Reference:
    assert model.source.path is not None
    path = root / model.source.path
    _check_onnx_signature(path, model, "model.source.path", model.source.path)
    entry = _file_entry("model.source.path", path, root)
    lineage = {"kind": "onnx", "format": "onnx", "sha256": entry["sha256"], "files": [entry]}
    return Reference("onnx", "onnx", "model.source.path", lineage, onnx_path=path)


def _open_mlflow(model: ModelConfig, root: Path) -> Reference:
    from registry.model_source import fetch_model, load_pytorch

    uri = model.source.uri
    assert uri is not None
    tmp = tempfile.TemporaryDirectory(prefix="edgeship-mlflow-")
    try:
        found = fetch_model(uri, root, Path(tmp.name))
        lineage: dict[str, Any] = {
            "kind": "mlflow",
            "sha256": tree_sha256(found.local_dir),
            "mlflow": found.lineage,
            "flavors": sorted(found.flavors),
        }
        key = "model.source.uri"
        onnx_flavor = found.flavor("onnx")
        torch_flavor = found.flavor("pytorch")
        if onnx_flavor is not None:
            path = found.local_dir / str(onnx_flavor.get("data", "model.onnx"))
            _check_onnx_signature(path, model, key, uri)
            lineage |= {"format": "mlflow:onnx", "model_sha256": sha256_file(path)}
            return Reference("mlflow", "mlflow:onnx", key, lineage, onnx_path=path, _tmp=tmp)
        if torch_flavor is not None:
            data = found.local_dir / str(torch_flavor.get("model_data", "data"))
            pt2 = data / "model.pt2"
            if pt2.is_file():
                import torch

                program = torch.export.load(str(pt2))
                lineage |= {"format": "mlflow:pytorch", "model_sha256": sha256_file(pt2)}
                return Reference(
                    "mlflow", "mlflow:pytorch", key, lineage, program.module(), program, _tmp=tmp
                )
            net = _eval_mode(load_pytorch(found))
            lineage |= {"format": "mlflow:pytorch"}
            return Reference("mlflow", "mlflow:pytorch", key, lineage, net, net, _tmp=tmp)
        raise BuildError(
            f"error: {key}: '{uri}' has the flavours {', '.join(sorted(found.flavors))}; "
            "edgeship takes an onnx or a pytorch flavour (a python_function-only model cannot "
            "be exported to ONNX)"
        )
    except BaseException:
        tmp.cleanup()
        raise


def source_tags(lineage: dict[str, Any]) -> dict[str, str]:
    """MLflow tags (on the build's run and the registered version) naming the source."""
    tags = {
        "edgeship.source.kind": str(lineage.get("kind")),
        "edgeship.source.format": str(lineage.get("format")),
        "edgeship.source.sha256": str(lineage.get("sha256")),
    }
    for entry in lineage.get("files", []):
        if "/" in entry["key"]:
            continue  # a file of a model folder: the folder's hash (sha256) covers them
        tags[f"edgeship.source.file.{entry['key'].rsplit('.', 1)[-1]}"] = str(entry["path"])
    if lineage.get("folder"):
        tags["edgeship.source.folder"] = str(lineage["folder"])
    mlflow = lineage.get("mlflow") or {}
    for k in ("uri", "registered_model", "version", "alias", "run_id", "model_id"):
        if mlflow.get(k):
            tags[f"edgeship.source.mlflow.{k}"] = str(mlflow[k])
    return tags
