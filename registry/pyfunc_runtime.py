"""The MLflow ``python_function`` model of an edgeship artifact that is not plain ONNX
(OpenVINO IR, ONNX Runtime's ``.ort`` format): it runs the artifact exactly as a device
does, through the device agent's runner for its runtime and the artifact's settings.

MLflow stores this file inside the model ("models from code") and the agent's modules
beside it (``code/edgeship_agent``), so loading the model needs MLflow, numpy and the
runtime only, never edgeship. Inputs: a mapping of the model's input
names to arrays (or one array for a one-input model); outputs: a mapping of output names
to arrays, as MLflow's ``onnx`` flavour returns them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class RuntimeModel(PythonModel):
    """An edgeship artifact run by the runtime its ``runtime.json`` names."""

    def load_context(self, context: Any) -> None:
        from edgeship_agent import runners  # the device agent's runners (code_paths)

        folder = Path(context.artifacts["artifact"])
        runtime = json.loads((folder / "runtime.json").read_text())
        self.inputs = [t["name"] for t in runtime["inputs"]]
        self.dtypes = {t["name"]: t["dtype"] for t in runtime["inputs"]}
        self.outputs = [t["name"] for t in runtime["outputs"]]
        self.runner = runners.load(str(folder), runtime)

    # no type hints here: MLflow reads them as a schema of its own; the signature says it all
    def predict(self, context, model_input, params=None):
        if not isinstance(model_input, dict):
            if hasattr(model_input, "to_dict") and not isinstance(model_input, np.ndarray):
                model_input = {c: np.stack(model_input[c].to_list()) for c in model_input}
            else:
                model_input = {self.inputs[0]: model_input}
        missing = [n for n in self.inputs if n not in model_input]
        if missing:
            raise ValueError(f"missing input(s) {missing}; the model takes {self.inputs}")
        feed = {n: np.asarray(model_input[n], dtype=self.dtypes[n]) for n in self.inputs}
        outputs = self.runner.run(feed)
        return {n: np.asarray(v) for n, v in zip(self.outputs, outputs, strict=True)}


mlflow.models.set_model(RuntimeModel())
