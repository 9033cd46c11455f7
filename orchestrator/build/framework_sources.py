"""Reference models kept in a framework's own folder layout.

- ``huggingface`` + ``path``: a folder written by ``save_pretrained`` (``config.json`` and
  the weights), loaded with transformers from that folder only (``local_files_only``, the
  hub switched off, no ``trust_remote_code``); the class is ``model.source.auto_class`` or
  the architecture ``config.json`` names. Inputs are passed by name (``model.inputs``) and
  the outputs are taken by name from the model's output (``logits``, ``last_hidden_state``).
- ``monai_bundle`` + ``path``: a MONAI bundle folder: ``configs/metadata.json``, an
  inference config (``configs/inference.json`` or ``.yaml``) whose ``network_def`` builds
  the network, and ``models/model.pt`` (its state_dict) or ``models/model.ts`` (TorchScript).
  The bundle's config is code (MONAI evaluates its ``$`` expressions and ``_target_``
  components): a bundle is trusted like the project's own Python.

Both record the folder's hash, every file's hash and the framework's version.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.build.reference_model import Reference, tree_sha256
from orchestrator.build.usercode import call_user
from orchestrator.core.schema import ModelConfig
from orchestrator.errors import BuildError, Problem

_INFERENCE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
_BUNDLE_WEIGHTS = ("model.pt", "model.ts")


def folder_problems(kind: str, folder: Path, rel: str, where: str) -> list[Problem]:
    """What a framework folder lacks (checked with the spec, before any work)."""
    key = "model.source.path"
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "does not exist in the project"
        return [Problem(where, key, f"folder {rel} {what}")]
    missing: list[str] = []
    if kind == "huggingface":
        if not (folder / "config.json").is_file():
            missing.append("config.json")
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            missing.append("the weights (model.safetensors or pytorch_model.bin)")
    elif kind == "monai_bundle":
        if not (folder / "configs" / "metadata.json").is_file():
            missing.append("configs/metadata.json")
        has_ts = (folder / "models" / "model.ts").is_file()
        if not has_ts and not any((folder / "configs" / c).is_file() for c in _INFERENCE_CONFIGS):
            missing.append("configs/inference.json (or .yaml)")
        if not any((folder / "models" / w).is_file() for w in _BUNDLE_WEIGHTS):
            missing.append("models/model.pt (or models/model.ts)")
    if not missing:
        return []
    return [Problem(where, key, f"folder {rel} has no {', '.join(missing)}")]


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _files(folder: Path, root: Path) -> list[dict[str, Any]]:
    from orchestrator.build.provenance import file_record

    # one entry per file, keyed by the spec key and the file's place in the folder
    return [
        {"key": f"model.source.path/{p.relative_to(folder).as_posix()}", **file_record(p, root)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


# -- Hugging Face --------------------------------------------------------------------------------


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No hub access while a local folder loads, whatever the environment says."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _named_io_module(net: Any, input_names: list[str], output_names: list[str]) -> Any:
    """A module taking the inputs positionally (the ONNX signature) and returning the named
    outputs of a transformers model as a tuple."""
    import torch

    class NamedIO(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def call(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
            result = self.net(**dict(zip(input_names, args, strict=True)), return_dict=True)
            missing = [n for n in output_names if n not in result]
            if missing:
                raise BuildError(
                    f"error: model.outputs: {type(self.net).__name__} returns "
                    f"{list(result.keys())}; model.outputs name {missing}, which it does not"
                )
            return tuple(result[n] for n in output_names)

    # torch.export matches dynamic_shapes to forward's parameters one by one, so forward
    # takes exactly as many (generated, fixed) parameters as the model has inputs
    params = ", ".join(f"x{i}" for i in range(len(input_names)))
    scope: dict[str, Any] = {}
    exec(f"def forward(self, {params}):\n    return self.call(({params},))\n", scope)
    NamedIO.forward = scope["forward"]
    return NamedIO().eval()


def open_huggingface(model: ModelConfig, root: Path, load: bool = True) -> Any:
    """A Hugging Face folder as the reference; ``load=False`` checks its configuration and
    class and hashes its files without loading the weights (a generative build loads them
    only when no kept reference outputs match)."""
    from orchestrator.core.runtime_imports import require

    assert model.source.path is not None
    rel = model.source.path
    folder = root / rel
    transformers = require("transformers")
    key = "model.source.path"
    with _offline():
        try:
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise BuildError(
                f"error: {key}: {model.source.path}/config.json is not a transformers "
                f"configuration: {str(exc).splitlines()[0]}"
            ) from exc
        architectures = list(getattr(config, "architectures", None) or [])
        name = model.source.auto_class or (architectures[0] if architectures else None)
        class_key = "model.source.auto_class"
        if name is None:
            raise BuildError(
                f"error: {class_key}: missing; {model.source.path}/config.json names no "
                "architecture, so say which transformers class loads the model "
                "(e.g. AutoModelForSequenceClassification)"
            )
        cls = getattr(transformers, name, None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise BuildError(
                f"error: {class_key}: transformers {transformers.__version__} has no model "
                f"class '{name}'"
                + ("" if model.source.auto_class else f" (named in {rel}/config.json)")
            )
        if not load:
            net = None
        else:
            net = call_user(
                cls.from_pretrained,
                key,
                f"{name}.from_pretrained",
                str(folder),
                local_files_only=True,
                trust_remote_code=False,
            )
    wrapped = None
    if net is not None:
        net = net.float().eval()
        wrapped = _named_io_module(
            net, [t.name for t in model.inputs], [t.name for t in model.outputs]
        )
    files = _files(folder, root)
    lineage: dict[str, Any] = {
        "kind": "huggingface",
        "format": "huggingface",
        "folder": rel,
        "sha256": tree_sha256(folder),
        "files": files,
        "huggingface": {
            "class": name,
            "model_type": getattr(config, "model_type", None),
            "architectures": architectures,
            "transformers_version": getattr(config, "transformers_version", None),
        },
        "packages": {"transformers": transformers.__version__},
    }
    return Reference("huggingface", "huggingface", key, lineage, wrapped, wrapped)


# -- MONAI bundles -------------------------------------------------------------------------------


def _bundle_metadata(folder: Path, rel: str) -> dict[str, Any]:
    path = folder / "configs" / "metadata.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"error: model.source.path: {rel}/configs/metadata.json: {exc}") from exc
    if not isinstance(data, dict):
        raise BuildError(
            f"error: model.source.path: {rel}/configs/metadata.json: expected a JSON object"
        )
    return data


def check_bundle_signature(model: ModelConfig, meta: dict[str, Any], rel: str) -> None:
    """The channels the bundle's metadata declares against the spec's inputs and outputs:
    a spec written for another bundle fails here, before the network is built."""
    fmt = meta.get("network_data_format")
    if not isinstance(fmt, dict):
        return
    shown = f"{rel}/configs/metadata.json network_data_format"
    for side, tensors in (("inputs", model.inputs), ("outputs", model.outputs)):
        declared = fmt.get(side)
        if not isinstance(declared, dict) or len(declared) != len(tensors):
            continue
        for i, (tensor, (name, info)) in enumerate(zip(tensors, declared.items(), strict=True)):
            channels = info.get("num_channels") if isinstance(info, dict) else None
            shape = tensor.shape
            declared_int = isinstance(channels, int) and len(shape) > 1
            if declared_int and isinstance(shape[1], int) and shape[1] != channels:
                raise BuildError(
                    f"error: model.{side}[{i}].shape: {list(shape)} has {shape[1]} "
                    f"channel(s); {shown} says {side} '{name}' has {channels}"
                )


def open_monai_bundle(model: ModelConfig, root: Path) -> Any:
    import torch

    from orchestrator.core.runtime_imports import require

    assert model.source.path is not None
    rel = model.source.path
    folder = root / rel
    key = "model.source.path"
    monai = require("monai")
    meta = _bundle_metadata(folder, rel)
    check_bundle_signature(model, meta, rel)
    weights = folder / "models" / "model.pt"
    lineage: dict[str, Any] = {
        "kind": "monai_bundle",
        "folder": rel,
        "sha256": tree_sha256(folder),
        "files": _files(folder, root),
        "monai_bundle": {
            k: meta.get(k) for k in ("name", "version", "monai_version", "pytorch_version")
        },
        "packages": {"monai": monai.__version__, "torch": torch.__version__},
    }
    if not weights.is_file():  # a TorchScript bundle: the network and weights in one file
        try:
            net = torch.jit.load(str(folder / "models" / "model.ts"), map_location="cpu")
        except Exception as exc:
            raise BuildError(
                f"error: {key}: {rel}/models/model.ts is not a TorchScript file: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        lineage["format"] = "monai_bundle:torchscript"
        fmt = lineage["format"]
        return Reference("monai_bundle", fmt, key, lineage, net.eval(), net, dynamo=False)
    configs = folder / "configs"
    config = next(configs / c for c in _INFERENCE_CONFIGS if (configs / c).is_file())
    parser = monai.bundle.ConfigParser()
    parser.read_meta(str(folder / "configs" / "metadata.json"))
    parser.read_config(str(config))
    if "network_def" not in parser:
        raise BuildError(
            f"error: {key}: {rel}/configs/{config.name} has no 'network_def' (the network the "
            "bundle's weights belong to)"
        )
    net = call_user(
        parser.get_parsed_content,
        key,
        f"network_def of {rel}/configs/{config.name}",
        "network_def",
        instantiate=True,
    )
    if not isinstance(net, torch.nn.Module):
        raise BuildError(
            f"error: {key}: network_def of {rel}/configs/{config.name} built "
            f"{type(net).__name__}; expected a torch.nn.Module"
        )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint of several objects: the network's part
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise BuildError(
            f"error: {key}: {rel}/models/model.pt does not fit the network_def of "
            f"{rel}/configs/{config.name}: {str(exc).splitlines()[0]}"
        ) from exc
    lineage["format"] = "monai_bundle:state_dict"
    lineage["config"] = config.name
    return Reference("monai_bundle", lineage["format"], key, lineage, net.eval(), net)
