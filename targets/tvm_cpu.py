"""CPUs running models compiled by Apache TVM (Relax): the ``tvm_cpu`` family.

The artifact is a shared library (``model.so``) compiled for the device's CPU
(``target.device``: an LLVM CPU name such as ``x86-64-v3`` or ``skylake-avx512``;
``host``: the build machine's own CPU), with ``model.tvm.json`` beside it (the LLVM
target, the TVM version, the signature) and, for a tuned build, the MetaSchedule tuning
database. A device runs it with TVM's runtime in the Relax virtual machine.

TVM's pins cannot share edgeship's environment, so its runtime lives in the TVM tool
environment (``edgeship toolenv install tvm``): a loaded model runs in a persistent
worker process of that environment, which also times the runs (the pipe between the
processes is never timed) and reports its own peak memory.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.core import toolenv
from orchestrator.core.model_file import ModelFile
from orchestrator.core.tvm_tool import METADATA, TOOL, WorkerSession, llvm_target
from targets.base import Session, Target, register_target


def _metadata(model: ModelFile) -> dict[str, Any]:
    path = model.path.parent / METADATA
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@register_target
class TvmCpuTarget(Target):
    family = "tvm_cpu"
    runtime = "tvm"
    description = (
        "CPUs, Apache TVM Relax (a shared library compiled with LLVM for the device's CPU)"
    )
    formats = ("tvm",)
    install_hint = "edgeship toolenv install tvm (Apache TVM in its own environment)"
    contract_recipe = "tvm_fp32"
    tool_environments = (TOOL,)  # the runtime lives in this managed tool environment

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return toolenv.unavailable_reason(TOOL)

    def runtime_version(self) -> str:
        found = toolenv.info(TOOL)
        return str((found or {}).get("version") or "unknown")

    def load(self, model: ModelFile) -> Session:
        meta = _metadata(model)
        names = [i["name"] for i in meta.get("inputs", [])]
        if not names and self.model is not None:
            names = [t.name for t in self.model.inputs]
        return WorkerSession(model.path, names, self.config.threads)

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        meta = _metadata(model)
        return {
            "executable": "relax_vm",
            "entry": meta.get("entry", "main"),
            "llvm_target": meta.get("target") or llvm_target(self.config.device, 0),
            "num_threads": self.config.threads,
            "compiled_with_tvm": meta.get("tvm_version", self.runtime_version()),
            "tuned": bool(meta.get("tuned", False)),
            "metadata": f"model/{METADATA}",
        }
