"""Tune the model's kernels for the target's CPU with Apache TVM's MetaSchedule.

The recipe declares the budget: ``max_trials_global`` measured candidates in all
(``max_trials_per_task`` caps one kernel's share), proposed ``num_trials_per_iter`` at a
time. Candidates are built and timed on the build machine, so tune for a device's CPU on
a machine with that CPU (``target.device: host``), or a lab machine like it. The tuning
database (``database_workload.json``, ``database_tuning_record.json``) is the pass's
output beside the unchanged ONNX model; ``tvm_compile`` applies it, and it stays in the
artifact as the record of the tuning (``tuning.json`` sums it up).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.tvm_tool import call, llvm_target
from orchestrator.passes.base import Pass, PassContext, register_pass
from orchestrator.passes.tvm.compile import DATABASE_FILES, input_specs


@dataclass
class TvmTuneOptions:
    max_trials_global: int = 64  # measured candidates over all kernels
    max_trials_per_task: int = 0  # cap per kernel (0: no cap beyond the global budget)
    num_trials_per_iter: int = 16  # candidates proposed and measured per round
    strategy: str = field(
        default="evolutionary",
        metadata={"choices": ("evolutionary", "replay-trace", "replay-func")},
    )
    # evolutionary: MetaSchedule's search; replay-trace: random samples (for tiny budgets)
    cost_model: str = field(default="random", metadata={"choices": ("random", "xgb", "mlp")})
    # "xgb" and "mlp" need xgboost / torch in the TVM tool environment
    seed: int = 0
    timeout: int = 3600  # seconds the tuning may take


@register_pass
class TvmTune(Pass):
    name = "tvm_tune"
    description = "Apache TVM MetaSchedule tuning within a trial budget (database kept as artifact)"
    Options = TvmTuneOptions
    output_format = "onnx"  # the model unchanged, the tuning database beside it
    runtimes = ("tvm",)
    backend = "onnx"  # what runs here; TVM itself runs in its tool environment

    @classmethod
    def static_shapes_reason(cls, options: Any) -> str | None:
        return "tvm_tune tunes kernels for static input shapes"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        work = ctx.workdir / "tuning"
        request = {
            "onnx": str(model.path),
            "inputs": input_specs(model, ctx),
            "target": llvm_target(ctx.device, ctx.threads),
            "work_dir": str(work),
            "max_trials_global": options.max_trials_global,
            "max_trials_per_task": options.max_trials_per_task,
            "num_trials_per_iter": options.num_trials_per_iter,
            "cost_model": options.cost_model,
            "strategy": options.strategy,
            "seed": options.seed,
            "threads": ctx.threads,
        }
        result = call("tune", request, ctx.workdir, timeout=options.timeout)
        out = ctx.workdir / "model.onnx"
        shutil.copy2(model.path, out)
        extra = []
        for name in DATABASE_FILES:
            src = work / name
            if src.is_file():
                shutil.copy2(src, ctx.workdir / name)
                extra.append(ctx.workdir / name)
        summary = ctx.workdir / "tuning.json"
        summary.write_text(
            json.dumps(
                {
                    "tvm_version": result["tvm_version"],
                    "target": result["target"],
                    "records": result["records"],
                    "measured": result["measured"],
                    "seconds": result["seconds"],
                    "budget": {
                        "max_trials_global": options.max_trials_global,
                        "max_trials_per_task": options.max_trials_per_task,
                        "num_trials_per_iter": options.num_trials_per_iter,
                        "cost_model": options.cost_model,
                        "strategy": options.strategy,
                        "seed": options.seed,
                    },
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )
        extra.append(summary)
        shutil.rmtree(work, ignore_errors=True)
        return ModelFile(out, "onnx", model.precision, tuple(extra))
