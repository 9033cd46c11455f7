"""Speech recognition with OpenVINO GenAI's ``WhisperPipeline``: transcripts, word error
rate, real-time factor.

A ``speech-recognition`` bundle's model folder is what optimum-intel exports for
``automatic-speech-recognition-with-past`` (``openvino_encoder_model.xml``,
``openvino_decoder_model.xml`` with its KV cache as state, ``openvino_tokenizer.xml``,
``openvino_detokenizer.xml``, ``generation_config.json``, ``preprocessor_config.json``).
``WhisperPipeline`` computes the log-mel features of 16 kHz float samples, encodes them and
decodes greedily from the decoder prompt (start of transcript, language, task, no
timestamps). The build's validation and the device's health check transcribe with the
same calls (:func:`load_pipeline`, :func:`transcribe`), so what was validated is what runs.

Standard library and Python 3.8+, like the rest of the agent; numpy and OpenVINO GenAI
are imported only when a model is loaded.
"""

from __future__ import annotations

import re
import time

INSTALL = "pip install openvino-genai"
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")


class SpeechUnavailable(RuntimeError):
    """OpenVINO GenAI is not installed: the model cannot be run here."""


def words(text: str) -> list:
    """A transcript's words for the word error rate: lower case, punctuation dropped
    (a decimal point or an apostrophe inside a word is kept: ``36.8``, ``patient's``)."""
    return _WORD.findall(text.lower())


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance between two word lists (substitutions, insertions, deletions)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def wer(references: list, hypotheses: list) -> float:
    """Word error rate: word edits over reference words, all utterances together."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    edits = total = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = words(ref), words(hyp)
        edits += edit_distance(r, h)
        total += len(r)
    if total == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / total


def genai_version():
    """OpenVINO GenAI's version where it can be imported, else None."""
    try:
        import openvino_genai as og
    except ImportError:
        return None
    return str(getattr(og, "__version__", None) or "unknown")


def load_pipeline(model_dir: str, threads: int = 0, precision: str = "f32"):
    """``openvino_genai.WhisperPipeline`` on the CPU with ``threads`` inference threads and
    the given inference precision (``f32``: the CPU plugin's default on processors with
    bf16 or fp16 units is not f32, and parity with the reference needs f32)."""
    try:
        import openvino_genai as og
    except ImportError as exc:
        raise SpeechUnavailable(
            f"OpenVINO GenAI is not installed on this device ({exc}); the speech model was "
            f"not run; install it with: {INSTALL}"
        ) from exc
    options = {}  # type: dict
    if precision:
        options["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        options["INFERENCE_NUM_THREADS"] = int(threads)
    return og.WhisperPipeline(model_dir, "CPU", **options)


def _recorder():
    import openvino_genai as og

    class TokenRecorder(og.StreamerBase):
        """Keeps the token ids the pipeline generates (the streamer sees ids, not text)."""

        def __init__(self) -> None:
            super().__init__()
            self.tokens = []  # type: list

        def write(self, token):
            if isinstance(token, (list, tuple)):
                self.tokens.extend(int(t) for t in token)
            else:
                self.tokens.append(int(token))
            return og.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    return TokenRecorder()


def transcribe(pipe, samples, language: str, task: str, max_new_tokens: int) -> dict:
    """One clip (16 kHz float samples) transcribed greedily: text, token ids, seconds."""
    config = pipe.get_generation_config()
    config.language = language
    config.task = task
    config.return_timestamps = False
    config.max_new_tokens = int(max_new_tokens)
    recorder = _recorder()
    speech = [float(x) for x in samples]
    start = time.perf_counter()
    result = pipe.generate(speech, config, recorder)
    seconds = time.perf_counter() - start
    eos = int(config.eos_token_id)
    tokens = [t for t in recorder.tokens if t != eos]
    return {"text": str(result.texts[0]), "tokens": tokens, "seconds": seconds}


def measure(request: dict) -> dict:
    """Transcribe every clip of ``request["clips"]`` (an ``.npz`` of ``clip<i>`` arrays) with
    the pipeline of ``request["model"]``: texts, tokens, real-time factor, peak memory.

    The real-time factor is processing time over audio time, all clips together, after
    one untimed warm-up transcription; each clip is transcribed ``repeats`` times and its
    fastest time counts."""
    import numpy as np

    load_start = time.perf_counter()
    pipe = load_pipeline(request["model"], int(request.get("threads") or 0), "f32")
    load_s = time.perf_counter() - load_start
    rate = int(request.get("sampling_rate") or 16000)
    with np.load(request["clips"]) as npz:
        clips = [np.asarray(npz[f"clip{i}"], dtype=np.float32) for i in range(len(npz.files))]
    args = (str(request["language"]), str(request["task"]), int(request["max_new_tokens"]))
    transcribe(pipe, clips[0], *args)  # warm-up
    out, audio_s, busy_s = [], 0.0, 0.0
    for clip in clips:
        runs = [transcribe(pipe, clip, *args) for _ in range(int(request.get("repeats") or 1))]
        best = min(r["seconds"] for r in runs)
        out.append({"text": runs[0]["text"], "tokens": runs[0]["tokens"], "seconds": best})
        audio_s += len(clip) / rate
        busy_s += best
    return {
        "clips": out,
        "audio_seconds": audio_s,
        "processing_seconds": busy_s,
        "real_time_factor": busy_s / audio_s if audio_s else 0.0,
        "load_seconds": load_s,
        "peak_memory_mb": peak_rss_mb(),
        "runtime": {"name": "openvino-genai", "version": genai_version()},
    }


def peak_rss_mb() -> float:
    """This process image's peak resident memory (``VmHWM``; see generate.peak_rss_mb, which
    this file cannot import when it runs as a script)."""
    import resource

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list) -> int:
    """``python speech.py measure REQUEST RESULT``: :func:`measure` on a JSON request."""
    import json
    import os
    import sys

    if len(argv) != 3 or argv[0] != "measure":
        print("usage: speech.py measure REQUEST RESULT", file=sys.stderr)
        return 2
    with open(argv[1]) as fh:
        request = json.load(fh)
    result = measure(request)
    tmp = argv[2] + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    os.replace(tmp, argv[2])
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
