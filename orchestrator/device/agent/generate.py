"""Greedy and teacher-forced decoding of an ONNX decoder with a KV cache, in numpy.

The graph is the one optimum-onnx exports for ``text-generation-with-past`` (and what the
weight-only passes make of it): ``input_ids``, ``attention_mask``, ``position_ids`` (when
the graph has it) and ``past_key_values.<layer>.key|value`` in; ``logits`` and
``present.<layer>.key|value`` out. The first call (the prompt) gets empty caches
(sequence length 0); each later call gets one token and the caches the previous call
returned. The build's validation and the device's health check both decode with this one
loop, so what was validated is what runs.

Standard library and Python 3.8+, like the rest of the agent; numpy and ONNX Runtime are
imported only when a model is loaded.
"""

from __future__ import annotations

import time
from typing import Union

PAST = "past_key_values."


class KvDecoder:
    """An ONNX Runtime session of a decoder with a KV cache: prefill, then one token a call.

    ``cache_dims`` (KV heads, head size) stands in for cache dimensions the graph leaves
    symbolic: onnxruntime-genai's model builder names the head size ``kv_cache_dim`` (its
    ``genai_config.json`` has it, see :func:`cache_dims`). Its graph takes no
    ``position_ids``: its ``GroupQueryAttention`` nodes take the positions from the
    attention mask, which this loop feeds either way."""

    def __init__(self, session, cache_dims=None) -> None:
        import numpy as np

        self.np = np
        self.session = session
        inputs = session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.past = [i for i in inputs if i.name.startswith(PAST)]
        if "input_ids" not in self.input_names or not self.past:
            raise ValueError(
                "the model is not a decoder with a KV cache (input_ids and "
                "past_key_values.* inputs); found inputs {}".format(", ".join(self.input_names))
            )
        self.last_all = None  # every position's logits of the last call
        self.past_shapes = {}
        for i in self.past:
            dims = list(i.shape)  # [batch, kv heads, past sequence, head dim]
            heads, head_dim = dims[1], dims[3]
            if cache_dims is not None:
                heads = heads if isinstance(heads, int) else int(cache_dims[0])
                head_dim = head_dim if isinstance(head_dim, int) else int(cache_dims[1])
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise ValueError(
                    f"input {i.name} has no static heads/head dims: {dims} (and no "
                    "genai_config.json beside the graph names them)"
                )
            self.past_shapes[i.name] = (heads, head_dim)
        self.float_type = np.float16 if "float16" in self.past[0].type else np.float32
        outputs = [o.name for o in session.get_outputs()]
        self.present = ["present" + n[len(PAST) - 1 :] for n in (i.name for i in self.past)]
        missing = [n for n in self.present if n not in outputs]
        if "logits" not in outputs or missing:
            raise ValueError("the model's outputs lack logits or {}".format(", ".join(missing)))
        self.output_names = ["logits", *self.present]

    def empty(self) -> dict:
        """Empty caches (past sequence length 0) for a batch of one."""
        np = self.np
        return {
            name: np.zeros((1, heads, 0, head_dim), dtype=self.float_type)
            for name, (heads, head_dim) in self.past_shapes.items()
        }

    def forward(self, ids: list, cache: dict, position: int) -> tuple:
        """Logits of the last position ([vocab], float32) and the new caches, for ``ids``
        appended at ``position`` after what ``cache`` holds."""
        np = self.np
        n = len(ids)
        feed = dict(cache)
        feed["input_ids"] = np.asarray([ids], dtype=np.int64)
        if "attention_mask" in self.input_names:
            feed["attention_mask"] = np.ones((1, position + n), dtype=np.int64)
        if "position_ids" in self.input_names:
            feed["position_ids"] = np.arange(position, position + n, dtype=np.int64)[None, :]
        out = self.session.run(self.output_names, feed)
        self.last_all = out[0][0]  # every position's logits of this call
        logits = np.asarray(out[0][0, -1], dtype=np.float32)
        new = dict(zip([p.name for p in self.past], out[1:]))
        return logits, new

    def sequence_logits(self, ids: list):
        """Logits of every position of ``ids`` ([len, vocab], float32), from an empty cache."""
        self.forward(list(ids), self.empty(), 0)
        return self.np.asarray(self.last_all, dtype=self.np.float32)


def cache_dims(model_dir: str):
    """(KV heads, head size) from the ``genai_config.json`` of a model folder, or None when
    it has none: what :class:`KvDecoder` needs for a graph whose cache dims are symbolic."""
    import json
    import os

    path = os.path.join(model_dir, "genai_config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        decoder = (json.load(fh).get("model") or {}).get("decoder") or {}
    heads = decoder.get("num_key_value_heads") or decoder.get("num_attention_heads")
    if not heads or not decoder.get("head_size"):
        return None
    return int(heads), int(decoder["head_size"])


class OvStatefulDecoder:
    """A compiled stateful OpenVINO decoder (optimum-intel's ``text-generation-with-past``):
    the KV cache is the infer request's state, so :meth:`empty` resets it and the ``cache``
    that :meth:`forward` takes and returns is only a placeholder. ``input_ids``,
    ``attention_mask`` (every position so far), ``position_ids`` and ``beam_idx`` (batch of
    one: ``[0]``) in; ``logits`` out. The same :func:`greedy` and :func:`teacher_forced`
    drive it as the ONNX decoder."""

    def __init__(self, compiled) -> None:
        import numpy as np

        self.np = np
        self.compiled = compiled
        self.input_names = [i.get_any_name() for i in compiled.inputs]
        if "input_ids" not in self.input_names or "beam_idx" not in self.input_names:
            raise ValueError(
                "the model is not a stateful decoder (input_ids and beam_idx inputs, the KV "
                "cache as state); found inputs {}".format(", ".join(self.input_names))
            )
        self.logits = None
        for out in compiled.outputs:
            if "logits" in out.get_names():
                self.logits = out
        if self.logits is None:
            raise ValueError("the model has no logits output")
        self.request = compiled.create_infer_request()
        self.last_all = None  # every position's logits of the last call

    def empty(self) -> dict:
        self.request.reset_state()
        return {}

    def forward(self, ids: list, cache: dict, position: int) -> tuple:
        np = self.np
        n = len(ids)
        feed = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "beam_idx": np.zeros((1,), dtype=np.int32),
        }
        if "attention_mask" in self.input_names:
            feed["attention_mask"] = np.ones((1, position + n), dtype=np.int64)
        if "position_ids" in self.input_names:
            feed["position_ids"] = np.arange(position, position + n, dtype=np.int64)[None, :]
        # shared buffers: no copies in or out (the logits row is copied before the next call)
        result = self.request.infer(feed, share_inputs=True, share_outputs=True)
        self.last_all = result[self.logits][0]  # every position's logits (a shared buffer)
        logits = np.array(result[self.logits][0, -1], dtype=np.float32)
        return logits, cache

    def sequence_logits(self, ids: list):
        """Logits of every position of ``ids`` ([len, vocab], float32), from a reset state."""
        self.forward(list(ids), self.empty(), 0)
        return self.np.array(self.last_all, dtype=self.np.float32)


# what greedy() and teacher_forced() drive: an ONNX decoder or a stateful OpenVINO one
Decoder = Union[KvDecoder, OvStatefulDecoder]


def ov_properties(compiled) -> dict:
    """What a compiled OpenVINO model runs at, as the plugin reports it (the precision asked
    may not be the one a CPU has)."""
    out = {}
    for key in (
        "INFERENCE_PRECISION_HINT",
        "KV_CACHE_PRECISION",
        "DYNAMIC_QUANTIZATION_GROUP_SIZE",
        "INFERENCE_NUM_THREADS",
    ):
        try:
            value = compiled.get_property(key)
        except Exception:  # a property this plugin does not report
            continue
        out[key] = str(getattr(value, "get_type_name", lambda v=value: v)())
    return out


def ov_compile(path: str, config: dict):
    """A stateful decoder IR compiled with ``config`` (``device`` picks the device)."""
    import openvino as ov

    config = dict(config or {})
    device = str(config.pop("device", "CPU"))
    core = ov.Core()
    return core.compile_model(core.read_model(path), device, config)


def ov_genai_pipeline(folder: str, config: dict):
    """OpenVINO GenAI's ``LLMPipeline`` on a model folder (``openvino_model.xml`` and the
    OpenVINO tokenizers), compiled with ``config`` (``device`` picks the device)."""
    import openvino_genai

    config = dict(config or {})
    device = str(config.pop("device", "CPU"))
    return openvino_genai.LLMPipeline(folder, device, **config)


def ov_genai_greedy(pipe, prompt: list, max_new_tokens: int) -> dict:
    """Greedy generation of exactly ``max_new_tokens`` tokens (end-of-sequence ignored) from
    the prompt's token ids with an ``LLMPipeline``. Same result shape as :func:`greedy`;
    the step times are the pipeline's mean time per output token."""
    import numpy as np
    import openvino as ov
    import openvino_genai

    gen = openvino_genai.GenerationConfig()
    gen.max_new_tokens = int(max_new_tokens)
    gen.do_sample = False
    gen.ignore_eos = True
    result = pipe.generate(ov.Tensor(np.asarray([prompt], dtype=np.int64)), gen)
    tokens = [int(t) for t in result.tokens[0]]
    perf = result.perf_metrics
    step = float(perf.get_tpot().mean)
    return {
        "tokens": tokens,
        "first_logits": None,
        "ttft_ms": float(perf.get_ttft().mean),
        "steps_ms": [step] * max(0, len(tokens) - 1),
    }


def genai_model(folder: str, threads: int = 0):
    """ONNX Runtime GenAI's model of a folder with a ``genai_config.json``; ``threads``
    (when not 0) sets its session's intra-op threads (one inter-op thread)."""
    import onnxruntime_genai as og

    if threads and hasattr(og, "Config"):
        import json

        config = og.Config(folder)
        options = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
        overlay = {"model": {"decoder": {"session_options": options}}}
        if hasattr(config, "overlay"):
            config.overlay(json.dumps(overlay))
            return og.Model(config)
    return og.Model(folder)


def genai_greedy(folder: str, prompt: list, max_new_tokens: int, model=None) -> dict:
    """Greedy generation with ONNX Runtime GenAI's generator on a model folder that has a
    ``genai_config.json`` (what a device with ``onnxruntime-genai`` runs), until its
    end-of-sequence token or ``max_new_tokens``; ``model`` reuses a loaded
    :func:`genai_model`. Same result shape as :func:`greedy`."""
    import onnxruntime_genai as og

    model = model if model is not None else og.Model(folder)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + max_new_tokens)
    gen = og.Generator(model, params)
    start = time.perf_counter()
    gen.append_tokens([int(t) for t in prompt])
    tokens: list = []
    steps_ms = []
    ttft_ms = 0.0
    while not gen.is_done() and len(tokens) < max_new_tokens:
        t0 = time.perf_counter()
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
        if len(tokens) == 1:
            ttft_ms = (time.perf_counter() - start) * 1000.0
        else:
            steps_ms.append((time.perf_counter() - t0) * 1000.0)
    return {"tokens": tokens, "first_logits": None, "ttft_ms": ttft_ms, "steps_ms": steps_ms}


def same_until_eos(got: list, want: list, eos) -> bool:
    """Whether a generation that stops at end-of-sequence (``got``) is ``want``: equal, or
    ``got`` ends with ``eos`` and ``want`` begins with exactly its tokens."""
    got, want = [int(t) for t in got], [int(t) for t in want]
    if got == want:
        return True
    return bool(got) and eos is not None and got[-1] == int(eos) and want[: len(got)] == got


def genai_measure(request: dict) -> dict:
    """ONNX Runtime GenAI's generator on a model folder, on the prompt set the build's loop
    decoded: its greedy tokens against the loop's (``expected``, each), its time to first
    token at ``ttft_prompt`` and its tokens/s. Run by the interpreter of a Python that has
    ``onnxruntime_genai`` (the ``ort-genai`` tool environment on the build machine).

    ``request``: ``folder``, ``threads``, ``prompts``, ``expected``, ``eos`` (the token
    that ends a generation, or None), ``ttft_prompt``, ``repeats``."""
    import onnxruntime_genai as og

    model = genai_model(request["folder"], int(request.get("threads") or 0))
    eos = request.get("eos")
    same = 0
    first_difference = []
    steps: list = []
    generations = []
    for prompt, want in zip(request["prompts"], request["expected"]):
        got = genai_greedy(request["folder"], prompt, len(want), model)
        _, first = agreement(got["tokens"], want)
        ok = same_until_eos(got["tokens"], want, eos)
        same += int(ok)
        first_difference.append(-1 if ok else (first if first >= 0 else len(got["tokens"])))
        steps.extend(got["steps_ms"])
        generations.append(got["tokens"])
    ttft_prompt = list(request.get("ttft_prompt") or request["prompts"][0])
    genai_greedy(request["folder"], ttft_prompt, 2, model)  # warm-up at this length
    ttfts = [
        genai_greedy(request["folder"], ttft_prompt, 1, model)["ttft_ms"]
        for _ in range(int(request.get("repeats") or 5))
    ]
    step = _median(steps)
    version = getattr(og, "__version__", None)
    if version is None:
        from importlib import metadata

        version = metadata.version("onnxruntime-genai")
    return {
        "available": True,
        "runtime": "onnxruntime-genai",
        "version": str(version),
        "exact": same / len(generations) if generations else 1.0,
        "first_difference": first_difference,
        "generations": generations,
        "ttft_ms": _median(ttfts),
        "tokens_per_s": 1000.0 / step if step else 0.0,
        "decode_steps": len(steps),
        "peak_memory_mb": peak_rss_mb(),
    }


def greedy(decoder: Decoder, prompt: list, max_new_tokens: int, eos=None) -> dict:
    """Greedy generation of up to ``max_new_tokens`` tokens, ending after ``eos`` when given.
    Returns tokens, step-1 logits, time to first token (ms) and the time of every later
    step (ms)."""
    start = time.perf_counter()
    logits, cache = decoder.forward(list(prompt), decoder.empty(), 0)
    ttft_ms = (time.perf_counter() - start) * 1000.0
    first_logits = logits
    tokens = [int(logits.argmax())]
    steps_ms = []
    position = len(prompt)
    while len(tokens) < max_new_tokens and (eos is None or tokens[-1] != eos):
        t0 = time.perf_counter()
        logits, cache = decoder.forward([tokens[-1]], cache, position)
        steps_ms.append((time.perf_counter() - t0) * 1000.0)
        position += 1
        tokens.append(int(logits.argmax()))
    return {
        "tokens": tokens,
        "first_logits": first_logits,
        "ttft_ms": ttft_ms,
        "steps_ms": steps_ms,
    }


def teacher_forced(decoder: Decoder, prompt: list, forced: list) -> dict:
    """The model's top token at each step when fed the ``forced`` tokens (the reference's
    generation) instead of its own: ``top1[i]`` is its choice for ``forced[i]``."""
    logits, cache = decoder.forward(list(prompt), decoder.empty(), 0)
    top1 = [int(logits.argmax())]
    step_logits = [logits]
    position = len(prompt)
    for token in forced[:-1]:
        logits, cache = decoder.forward([int(token)], cache, position)
        position += 1
        top1.append(int(logits.argmax()))
        step_logits.append(logits)
    return {"top1": top1, "logits": step_logits}


def negative_log_likelihood(decoder: Decoder, sequences: list) -> tuple:
    """(summed negative log-likelihood, tokens scored) of ``sequences`` (token ids each):
    every token after the first, predicted from those before it in one call per sequence.
    Perplexity is ``exp(nll / tokens)``."""
    import numpy as np

    total = 0.0
    count = 0
    for ids in sequences:
        if len(ids) < 2:
            continue
        logits = np.asarray(decoder.sequence_logits(list(ids)), dtype=np.float64)[:-1]
        peak = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
        target = np.asarray(ids[1:], dtype=np.int64)
        total += float((log_z - logits[np.arange(len(target)), target]).sum())
        count += len(target)
    return total, count


def agreement(top1: list, forced: list) -> tuple:
    """(fraction of steps whose top token is the forced one, first step that differs or -1)."""
    n = min(len(top1), len(forced))
    same = [int(a) == int(b) for a, b in zip(top1[:n], forced[:n])]
    first = same.index(False) if False in same else -1
    return (sum(same) / n if n else 1.0), first


def session(path: str, threads: int = 0, provider: str = "CPUExecutionProvider"):
    """An ONNX Runtime session of a decoder for this loop (sequential, all optimisations)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=[provider])


def _median(values: list) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def measure(request: dict) -> dict:
    """Parity and speed of a decoder on a prompt set, in this (fresh) process.

    ``request``: ``model`` (path), ``threads``, ``prompts`` (token ids each), ``reference``
    (the reference's greedy tokens each), ``eos`` (or None), ``ttft_prompt`` (token ids of
    the prompt time-to-first-token is stated at), ``repeats``. Returns per prompt the
    teacher-forced top tokens, the free greedy tokens and the step-1 logits, and the
    timings; ``peak_memory_mb`` is this process's peak resident memory.
    """
    import resource

    import numpy as np

    properties = {}
    if request.get("runtime") == "openvino":
        compiled = ov_compile(request["model"], dict(request.get("config") or {}))
        properties = ov_properties(compiled)
        dec: Decoder = OvStatefulDecoder(compiled)
    else:
        import os

        dec = KvDecoder(
            session(request["model"], int(request.get("threads") or 0)),
            cache_dims(os.path.dirname(os.path.abspath(request["model"]))),
        )
    results = []
    steps_ms: list = []
    for prompt, ref in zip(request["prompts"], request["reference"]):
        forced = teacher_forced(dec, prompt, ref)
        free = greedy(dec, prompt, len(ref))
        steps_ms.extend(free["steps_ms"])
        results.append(
            {
                "top1": forced["top1"],
                "greedy": free["tokens"],
                "first_logits": np.asarray(forced["logits"][0], dtype=np.float32).tolist(),
            }
        )
    perplexity = None
    if request.get("heldout"):
        import math

        nll, count = negative_log_likelihood(dec, request["heldout"])
        perplexity = {"perplexity": math.exp(nll / count) if count else 0.0, "tokens": count}
    ttft = []
    ttft_prompt = list(request.get("ttft_prompt") or request["prompts"][0])
    greedy(dec, ttft_prompt, 2)  # warm-up at this length
    for _ in range(int(request.get("repeats") or 5)):
        ttft.append(greedy(dec, ttft_prompt, 1)["ttft_ms"])
    steps_sorted = sorted(steps_ms)

    def pct(q: float) -> float:
        if not steps_sorted:
            return 0.0
        return steps_sorted[min(len(steps_sorted) - 1, round(q * (len(steps_sorted) - 1)))]

    median_step = _median(steps_ms)
    peak = peak_rss_mb()  # before a second runtime is loaded into this process
    genai = None
    if request.get("runtime") == "openvino" and request.get("genai"):
        genai = _ov_genai_check(request, results)
    return {
        "genai": genai,
        "perplexity": perplexity,
        "prompts": results,
        "ttft_ms": _median(ttft),
        "ttft_prompt_tokens": len(ttft_prompt),
        "step_p50_ms": median_step,
        "step_p95_ms": pct(0.95),
        "step_p99_ms": pct(0.99),
        "step_mean_ms": sum(steps_ms) / len(steps_ms) if steps_ms else 0.0,
        "tokens_per_s": 1000.0 / median_step if median_step else 0.0,
        "decode_steps": len(steps_ms),
        "steps_ms": steps_ms,
        "properties": properties,
        "peak_memory_mb": peak,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _ov_genai_check(request: dict, results: list) -> dict:
    """OpenVINO GenAI's ``LLMPipeline`` (what a device with it runs) on every prompt: its
    greedy tokens against the loop's, and its own time to first token and tokens/s.
    ``{"available": False, ...}`` where openvino_genai cannot be imported."""
    import os

    try:
        import openvino_genai
    except ImportError as exc:
        return {"available": False, "reason": str(exc)}
    folder = os.path.dirname(os.path.abspath(request["model"]))
    pipe = ov_genai_pipeline(folder, dict(request.get("config") or {}))
    same = 0
    first_difference = []
    ttfts, tpots = [], []
    for prompt, done in zip(request["prompts"], results):
        got = ov_genai_greedy(pipe, prompt, len(done["greedy"]))
        _, first = agreement(got["tokens"], done["greedy"])
        same += int(got["tokens"] == done["greedy"])
        first_difference.append(first)
        if got["steps_ms"]:
            tpots.append(got["steps_ms"][0])
    # time to first token at the length the loop's is stated at; each repeat a rotated
    # prompt, so that a prefix cache (LLMPipeline's continuous-batching backend keeps one)
    # cannot answer from an earlier run
    ttft_prompt = list(request.get("ttft_prompt") or request["prompts"][0])
    ov_genai_greedy(pipe, ttft_prompt, 2)  # warm-up at this length
    for r in range(1, int(request.get("repeats") or 5) + 1):
        rotated = ttft_prompt[r:] + ttft_prompt[:r]
        ttfts.append(ov_genai_greedy(pipe, rotated, 1)["ttft_ms"])
    tpot = _median(tpots)
    return {
        "available": True,
        "version": str(openvino_genai.__version__),
        "exact": same / len(results) if results else 1.0,
        "first_difference": first_difference,
        "ttft_ms": _median(ttfts),
        "tokens_per_s": 1000.0 / tpot if tpot else 0.0,
    }


def peak_rss_mb() -> float:
    """This process image's peak resident memory: ``VmHWM`` of /proc/self/status (Linux),
    else ``ru_maxrss``. ``ru_maxrss`` survives exec on Linux, so in a process a large parent
    started it reports the parent's peak; ``VmHWM`` starts afresh with the new image."""
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
    """``python generate.py measure|genai REQUEST RESULT``: :func:`measure` (ONNX Runtime or
    OpenVINO, the validation loop) or :func:`genai_measure` (ONNX Runtime GenAI) on a JSON
    request."""
    import json
    import sys

    if len(argv) != 3 or argv[0] not in ("measure", "genai"):
        print("usage: generate.py measure|genai REQUEST RESULT", file=sys.stderr)
        return 2
    with open(argv[1]) as fh:
        request = json.load(fh)
    result = measure(request) if argv[0] == "measure" else genai_measure(request)
    with open(argv[2], "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
