"""optimum-intel's OpenVINO export of a Whisper folder, run by the optimum-intel tool
environment's interpreter.

optimum-intel 2.2 needs a transformers release (< 5.6) other than edgeship's, so the export
runs here, in a separate interpreter, and talks to edgeship through JSON files. This file
imports nothing of edgeship (only the standard library, optimum-intel and OpenVINO), so
``python openvino_speech_worker.py ...`` works in an environment that holds only those.

Commands (each reads a JSON request file and writes a JSON result file):

- ``export REQUEST RESULT``: a local Hugging Face Whisper folder -> OpenVINO IR with
  optimum-intel's exporter for ``automatic-speech-recognition-with-past``: the encoder
  (``openvino_encoder_model.xml``: ``input_features`` in, ``last_hidden_state`` out), the
  decoder with its KV cache as the model's state (``openvino_decoder_model.xml``:
  ``input_ids``, ``encoder_hidden_states``, ``beam_idx`` in, ``logits`` out), weights at
  ``weight_format`` (``fp32``: no compression at export; compression is a pass after it),
  and the tokenizer converted by openvino_tokenizers (``openvino_tokenizer.xml``,
  ``openvino_detokenizer.xml``), the folder OpenVINO GenAI's ``WhisperPipeline`` loads.
  ``frames`` is the encoder's input length (the feature extractor's ``nb_max_frames``:
  100 per second of window). The hub is switched off; only the folder is read.
"""

from __future__ import annotations

import json
import os
import sys
import time

MODELS = ("openvino_encoder_model.xml", "openvino_decoder_model.xml")
TOKENIZERS = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")


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
        convert_tokenizer=True,
        library_name="transformers",
        nb_max_frames=int(req["frames"]),
    )
    seconds = time.perf_counter() - start
    missing = [n for n in MODELS + TOKENIZERS if not os.path.isfile(os.path.join(req["output"], n))]
    if missing:
        raise RuntimeError("the export wrote no {}".format(", ".join(missing)))
    core = ov.Core()
    graphs = {}
    for name in MODELS:
        model = core.read_model(os.path.join(req["output"], name))
        graphs[name] = {
            "inputs": [i.get_any_name() for i in model.inputs],
            "outputs": [o.get_any_name() for o in model.outputs],
            "state_variables": len(model.get_sinks()),
        }
    return {
        "seconds": seconds,
        "graphs": graphs,
        "versions": {
            "optimum-intel": metadata.version("optimum-intel"),
            "optimum": metadata.version("optimum"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "openvino": ov.get_version(),
            "openvino-tokenizers": metadata.version("openvino-tokenizers"),
        },
    }


def main(argv):
    if len(argv) != 3 or argv[0] not in ("export",):
        print("usage: openvino_speech_worker.py export REQUEST RESULT", file=sys.stderr)
        return 2
    _write(argv[2], export(_read(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
