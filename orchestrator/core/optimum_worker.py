"""Hugging Face optimum-onnx work, run by the optimum-onnx tool environment's interpreter.

optimum-onnx needs a transformers release older than edgeship's, so the export runs here,
in a separate interpreter, and talks to edgeship through JSON files. This file imports
nothing of edgeship (only the standard library and optimum), so
``python optimum_worker.py ...`` works in an environment that holds only those.

Commands (each reads a JSON request file and writes a JSON result file):

- ``export REQUEST RESULT``: a local Hugging Face folder -> ONNX with optimum's exporter
  for ``task`` (``text-generation-with-past``: one decoder graph that takes and returns
  the KV cache, ``past_key_values.<layer>.key|value`` in, ``present.<layer>.key|value``
  out). The hub is switched off; only the folder is read.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _read(path):
    with open(path) as fh:
        return json.load(fh)


def _write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def export(req):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import onnx
    import optimum
    import torch
    import transformers
    from optimum.exporters.onnx import main_export

    torch.set_num_threads(int(req.get("threads") or 1) or 1)
    start = time.perf_counter()
    main_export(
        req["folder"],
        req["output"],
        task=req["task"],
        opset=req.get("opset"),
        device="cpu",
        do_validation=False,
        local_files_only=True,
        trust_remote_code=False,
    )
    seconds = time.perf_counter() - start
    path = os.path.join(req["output"], "model.onnx")
    proto = onnx.load(path, load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    from importlib import metadata

    return {
        "seconds": seconds,
        "inputs": [v.name for v in proto.graph.input if v.name not in inits],
        "outputs": [v.name for v in proto.graph.output],
        "opset": max(
            (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0
        ),
        "versions": {
            "optimum": getattr(optimum, "__version__", None) or metadata.version("optimum"),
            "optimum-onnx": metadata.version("optimum-onnx"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
    }


def main(argv):
    if len(argv) != 3 or argv[0] not in ("export",):
        print("usage: optimum_worker.py export REQUEST RESULT", file=sys.stderr)
        return 2
    _write(argv[2], export(_read(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
