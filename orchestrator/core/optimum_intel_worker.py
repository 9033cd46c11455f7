"""Hugging Face optimum-intel work, run by the optimum-intel tool environment's interpreter.

optimum-intel 2.2 needs a transformers release (< 5.6) other than edgeship's, so the export
runs here, in a separate interpreter, and talks to edgeship through JSON files. This file
imports nothing of edgeship (only the standard library, optimum-intel and OpenVINO), so
``python optimum_intel_worker.py ...`` works in an environment that holds only those.

Commands (each reads a JSON request file and writes a JSON result file):

- ``export REQUEST RESULT``: a local Hugging Face folder -> OpenVINO IR with optimum-intel's
  exporter for ``task`` (``text-generation-with-past``, stateful: one decoder whose KV cache
  is the model's internal state, ``input_ids``, ``attention_mask``, ``position_ids`` and
  ``beam_idx`` in, ``logits`` out), weights at ``weight_format`` (``fp32``: no compression
  at export; compression is a pass after it), and the tokenizer converted by
  openvino_tokenizers (``openvino_tokenizer.xml``, ``openvino_detokenizer.xml``) so that
  OpenVINO GenAI's ``LLMPipeline`` can load the folder. The hub is switched off; only the
  folder is read.
"""

from __future__ import annotations

import json
import os
import sys
import time

MODEL_XML = "openvino_model.xml"
TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"


def _read(path):
    with open(path) as fh:
        return json.load(fh)


def _write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _convert_tokenizer(folder, output):
    """openvino_tokenizers' tokenizer and detokenizer of the folder's tokenizer, saved as
    LLMPipeline expects them (the exporter's own conversion is not relied on: a failure
    there is only logged)."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer, detokenizer = convert_tokenizer(hf, with_detokenizer=True)
    ov.save_model(tokenizer, os.path.join(output, TOKENIZER_XML))
    ov.save_model(detokenizer, os.path.join(output, DETOKENIZER_XML))


def export(req):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from importlib import metadata

    import openvino as ov
    import torch
    import transformers
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    torch.set_num_threads(int(req.get("threads") or 1) or 1)
    start = time.perf_counter()
    main_export(
        req["folder"],
        req["output"],
        task=req["task"],
        device="cpu",
        framework="pt",
        local_files_only=True,
        trust_remote_code=False,
        ov_config=OVConfig(dtype=req.get("weight_format") or "fp32"),
        stateful=bool(req.get("stateful", True)),
        convert_tokenizer=False,
        library_name="transformers",
    )
    seconds = time.perf_counter() - start
    if req.get("tokenizer", True):
        _convert_tokenizer(req["folder"], req["output"])
    core = ov.Core()
    model = core.read_model(os.path.join(req["output"], MODEL_XML))
    weights: dict = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            kind = op.get_output_element_type(0).get_type_name()
            weights[kind] = weights.get(kind, 0) + 1
    return {
        "seconds": seconds,
        "inputs": [i.get_any_name() for i in model.inputs],
        "outputs": [o.get_any_name() for o in model.outputs],
        "stateful": bool(model.get_sinks()),
        "state_variables": len(model.get_sinks()),
        "constants_by_type": weights,
        "versions": {
            "optimum-intel": metadata.version("optimum-intel"),
            "optimum": metadata.version("optimum"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "openvino": ov.get_version(),
            "openvino-tokenizers": metadata.version("openvino-tokenizers"),
            "nncf": metadata.version("nncf"),
        },
    }


def main(argv):
    if len(argv) != 3 or argv[0] not in ("export",):
        print("usage: optimum_intel_worker.py export REQUEST RESULT", file=sys.stderr)
        return 2
    _write(argv[2], export(_read(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
