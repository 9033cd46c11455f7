"""Text generation: the prompt set, the reference's greedy tokens and the artifact's parity.

A ``text-generation`` model (see docs/generative.md) is validated on token sequences, not
on tensors:

- the prompt set is ``model.data.eval`` (a loader returning prompt strings), each wrapped
  in the tokenizer's chat template (``model.generation.chat``);
- the reference is the Hugging Face folder in PyTorch (FP32, eager), decoding greedily with
  its KV cache until end-of-sequence or ``max_new_tokens``; its tokens and step-1 logits are
  computed once per folder, prompt set and settings and kept
  (:mod:`orchestrator.build.kept_reference`: ``references/<model>/``, a DVC output written
  by ``edgeship reference``, else the build's cache in ``.edgeship/reference/``);
- the artifact decodes with :mod:`orchestrator.device.agent.generate` (the loop a device
  runs) in a fresh process: teacher-forced top-1 agreement (fed the reference's tokens, its
  top token at each step compared with the reference's), the first step where they differ,
  free greedy generations compared whole, step-1 logits' largest difference, time to first
  token at a stated prompt length, tokens per second, peak resident memory;
- the artifact's own tokenizer file (``tokenizer.json``, read by the ``tokenizers``
  library as a device would) must give the reference tokenizer's ids on every prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.build import kept_reference as kept
from orchestrator.build import reference as ref
from orchestrator.core.model_file import ModelFile
from orchestrator.core.schema import GenerationConfig, ModelConfig
from orchestrator.device.agent import generate as decoding
from orchestrator.errors import BuildError

log = logging.getLogger(__name__)


@dataclass
class Prompts:
    """The prompt set: the texts, the rendered model input and its token ids."""

    texts: list[str]
    rendered: list[str]  # the text the tokenizer encodes (chat template applied)
    ids: list[list[int]]
    eos: int | None
    sha256: str  # of the texts and their ids: the evaluation data's identity
    heldout: list[list[int]] = field(default_factory=list)  # held-out text, ids (perplexity)
    heldout_sha256: str = ""

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class GenerationReference:
    """The reference's greedy tokens and step-1 logits for every prompt."""

    tokens: list[list[int]]
    first_logits: np.ndarray  # [prompts, vocab], float32
    tokens_per_s: float  # PyTorch eager decoding speed (median step), target threads
    ttft_ms: float  # PyTorch eager time to the first token of the first prompt
    cached: bool  # read from a kept file rather than computed now
    path: Path
    perplexity: float | None = None  # on the held-out text (None: no held-out text)
    stored: bool = False  # read from references/<model> (the DVC output)
    key: str = ""  # what the outputs depend on (kept_reference)


def settings(model: ModelConfig) -> GenerationConfig:
    gen = model.generation
    if gen is None:
        raise BuildError("error: model.generation: a text-generation model needs it; none set")
    return gen


def tokenizer_folder(model: ModelConfig, root: Path) -> Path:
    gen = settings(model)
    return root / (gen.tokenizer or model.source.path or "")


def load_tokenizer(model: ModelConfig, root: Path) -> Any:
    """transformers' tokenizer of the model folder (local files only)."""
    from orchestrator.build.framework_sources import _offline
    from orchestrator.core.runtime_imports import require

    transformers = require("transformers")
    folder = tokenizer_folder(model, root)
    with _offline():
        try:
            return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise BuildError(
                f"error: model.generation.tokenizer: no tokenizer in {folder}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc


def load_prompts(model: ModelConfig, root: Path) -> Prompts:
    """The prompt set of ``model.data.eval``, rendered and tokenised."""
    gen = settings(model)
    raw = ref.call(model.data.eval, "model.data.eval")
    if not isinstance(raw, list | tuple) or not raw or not all(isinstance(p, str) for p in raw):
        raise BuildError(
            "error: model.data.eval: a text-generation model's loader returns a non-empty "
            f"list of prompt strings; {model.data.eval.fn} returned {type(raw).__name__}"
        )
    texts = list(raw)[: model.data.eval_samples or None]
    tok = load_tokenizer(model, root)
    rendered = []
    for text in texts:
        if gen.chat:
            if not getattr(tok, "chat_template", None):
                where = tokenizer_folder(model, root)
                raise BuildError(
                    f"error: model.generation.chat: the tokenizer in {where} "
                    "has no chat template; set chat: false to use the prompts as they are"
                )
            messages = ([{"role": "system", "content": gen.system}] if gen.system else []) + [
                {"role": "user", "content": text}
            ]
            rendered.append(
                tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        else:
            rendered.append(text)
    ids = [list(tok(r, add_special_tokens=False)["input_ids"]) for r in rendered]
    longest = max(len(i) for i in ids)
    if longest + gen.max_new_tokens > gen.max_context:
        raise BuildError(
            f"error: model.generation.max_context: a prompt of {longest} tokens plus "
            f"max_new_tokens {gen.max_new_tokens} exceeds max_context {gen.max_context}"
        )
    digest = hashlib.sha256(json.dumps([texts, ids]).encode()).hexdigest()
    eos = tok.eos_token_id if gen.stop_at_eos else None
    heldout = heldout_ids(model, tok)
    return Prompts(
        texts,
        rendered,
        ids,
        None if eos is None else int(eos),
        digest,
        heldout,
        hashlib.sha256(json.dumps(heldout).encode()).hexdigest() if heldout else "",
    )


def heldout_ids(model: ModelConfig, tok: Any) -> list[list[int]]:
    """The token ids of ``model.generation.heldout``'s texts (none when it is unset): a
    string as it is; a [user, assistant] pair rendered by the chat template after the
    system turn, as the model would see the exchange."""
    gen = settings(model)
    if gen.heldout is None:
        return []
    raw = ref.call(gen.heldout, "model.generation.heldout")
    if not isinstance(raw, list | tuple) or not raw:
        raise BuildError(
            "error: model.generation.heldout: expected a non-empty list of strings or "
            f"[user, assistant] pairs; {gen.heldout.fn} returned {type(raw).__name__}"
        )
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            text = item
        elif (
            isinstance(item, list | tuple)
            and len(item) == 2
            and all(isinstance(t, str) for t in item)
        ):
            messages = ([{"role": "system", "content": gen.system}] if gen.system else []) + [
                {"role": "user", "content": item[0]},
                {"role": "assistant", "content": item[1]},
            ]
            text = tok.apply_chat_template(messages, tokenize=False)
        else:
            raise BuildError(
                f"error: model.generation.heldout: item {i} of {gen.heldout.fn}: expected a "
                f"string or a [user, assistant] pair, found {type(item).__name__}"
            )
        out.append([int(t) for t in tok(text, add_special_tokens=False)["input_ids"]])
    return out


def _reference_key(model: ModelConfig, source_sha: str, prompts: Prompts) -> str:
    import torch
    import transformers

    gen = settings(model)
    key = {
        "source": source_sha,
        "prompts": prompts.sha256,
        "max_new_tokens": gen.max_new_tokens,
        "eos": prompts.eos,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if prompts.heldout_sha256:  # only then: a cache made before held-out text stays valid
        key["heldout"] = prompts.heldout_sha256
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _greedy_torch(net: Any, prompt: list[int], new: int, eos: int | None) -> tuple[Any, ...]:
    """Greedy decoding with the model's own KV cache (transformers 5 calls it ``cache``,
    earlier releases ``past_key_values``)."""
    import inspect

    import torch

    name = "cache" if "cache" in inspect.signature(net.forward).parameters else "past_key_values"
    with torch.inference_mode():
        start = time.perf_counter()
        out = net(input_ids=torch.tensor([prompt]), use_cache=True)
        ttft = (time.perf_counter() - start) * 1000.0
        logits = out.logits[0, -1].float()
        first = logits.numpy().copy()
        tokens = [int(logits.argmax())]
        past = out[name]
        steps = []
        while len(tokens) < new and (eos is None or tokens[-1] != eos):
            t0 = time.perf_counter()
            out = net(input_ids=torch.tensor([[tokens[-1]]]), use_cache=True, **{name: past})
            steps.append((time.perf_counter() - t0) * 1000.0)
            past = out[name]
            tokens.append(int(out.logits[0, -1].argmax()))
    return tokens, first, ttft, steps


def reference(
    model: ModelConfig,
    root: Path,
    load_net: Callable[[], Any],
    source_sha: str,
    prompts: Prompts,
    threads: int,
) -> GenerationReference:
    """The reference's greedy tokens and step-1 logits, computed once and kept
    (:mod:`orchestrator.build.kept_reference`); ``load_net`` loads the reference model,
    called only when no kept outputs match."""

    gen = settings(model)
    key = _reference_key(model, source_sha, prompts)
    found = kept.find(root, model.name, key)
    if found is not None:
        meta = found.meta
        return GenerationReference(
            [list(map(int, t)) for t in meta["tokens"]],
            found.first_logits,
            float(meta["tokens_per_s"]),
            float(meta["ttft_ms"]),
            True,
            found.path,
            meta.get("perplexity"),
            found.stored,
            key,
        )
    with kept.computing(root, model.name, key, load_net, threads) as net:
        _greedy_torch(net, prompts.ids[0], min(4, gen.max_new_tokens), None)  # warm-up
        tokens, firsts, steps, ttfts = [], [], [], []
        for prompt in prompts.ids:
            t, first, ttft, s = _greedy_torch(net, prompt, gen.max_new_tokens, prompts.eos)
            tokens.append(t)
            firsts.append(first)
            steps += s
            ttfts.append(ttft)
        perplexity = _perplexity_torch(net, prompts.heldout) if prompts.heldout else None
    step = float(np.median(steps)) if steps else 0.0
    meta = {
        "tokens": tokens,
        "tokens_per_s": 1000.0 / step if step else 0.0,
        "ttft_ms": ttfts[0],
        "threads": threads,
        "key": key,
        "perplexity": perplexity,
    }
    logits = np.stack(firsts).astype(np.float32)
    path = kept.cache(root, model.name, meta, logits)
    return GenerationReference(
        tokens, logits, meta["tokens_per_s"], meta["ttft_ms"], False, path, perplexity, False, key
    )


def reference_summary(
    model: ModelConfig, reference_: GenerationReference, prompts: Prompts
) -> dict[str, Any]:
    """What ``references/<model>/reference.json`` says of the stored reference."""

    return {
        **kept.summary_head(model, reference_.key),
        "prompts": len(prompts),
        "prompts_sha256": prompts.sha256,
        "heldout_sha256": prompts.heldout_sha256 or None,
        "max_new_tokens": settings(model).max_new_tokens,
        "tokens": [len(t) for t in reference_.tokens],
        "tokens_per_s": reference_.tokens_per_s,
        "ttft_ms": reference_.ttft_ms,
        "perplexity": reference_.perplexity,
    }


def _perplexity_torch(net: Any, sequences: list[list[int]]) -> float:
    """The reference's perplexity on the held-out token sequences: every token after the
    first predicted from those before it (what the device-side
    :func:`~orchestrator.device.agent.generate.negative_log_likelihood` computes)."""
    import math

    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for ids in sequences:
            if len(ids) < 2:
                continue
            logits = net(input_ids=torch.tensor([ids])).logits[0, :-1].double()
            target = torch.tensor(ids[1:])
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            total += float(nll)
            count += len(ids) - 1
    return math.exp(total / count) if count else 0.0


def ttft_prompt(prompts: Prompts, length: int) -> list[int]:
    """A prompt of ``length`` tokens made from the prompt set's ids (0: the first prompt)."""
    if length <= 0:
        return list(prompts.ids[0])
    pool = [t for ids in prompts.ids for t in ids]
    out: list[int] = []
    while len(out) < length:
        out += pool
    return out[:length]


OV_TOKENIZER = "openvino_tokenizer.xml"


def tokenizer_exact(artifact_dir: Path, prompts: Prompts) -> float:
    """Fraction of prompts on which the artifact's ``tokenizer.json`` (the ``tokenizers``
    library, as a device reads it) gives the reference tokenizer's ids."""
    from tokenizers import Tokenizer

    path = artifact_dir / "tokenizer.json"
    if not path.is_file():
        return 0.0
    tok = Tokenizer.from_file(str(path))
    same = [
        tok.encode(text, add_special_tokens=False).ids == ids
        for text, ids in zip(prompts.rendered, prompts.ids, strict=True)
    ]
    return sum(same) / len(same)


def openvino_tokenizer_exact(artifact_dir: Path, prompts: Prompts) -> float | None:
    """Fraction of prompts on which the artifact's OpenVINO tokenizer
    (``openvino_tokenizer.xml``, what OpenVINO GenAI's ``LLMPipeline`` encodes text with)
    gives the reference tokenizer's ids; None when the artifact has none."""
    path = artifact_dir / OV_TOKENIZER
    if not path.is_file():
        return None
    from orchestrator.core.runtime_imports import require

    ov = require("openvino")
    require("openvino_tokenizers", "openvino-tokenizers")  # registers the tokenizer operations
    tokenizer = ov.Core().compile_model(str(path), "CPU")
    same = []
    for text, ids in zip(prompts.rendered, prompts.ids, strict=True):
        got = tokenizer([text])["input_ids"][0].tolist()
        same.append([int(t) for t in got] == ids)
    return sum(same) / len(same)


def measure_artifact(
    model: ModelFile,
    prompts: Prompts,
    reference_: GenerationReference,
    threads: int,
    length: int,
    runtime: str = "onnxruntime",
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`orchestrator.device.agent.generate.measure` on the artifact, in a fresh process.

    ``runtime`` ``openvino``: the stateful IR compiled with ``settings`` (the artifact's
    runtime.json settings), and OpenVINO GenAI's ``LLMPipeline`` on the same folder."""
    request = {
        "runtime": runtime,
        "config": dict(settings or {}),
        "genai": runtime == "openvino",
        "model": str(model.path),
        "threads": threads,
        "prompts": prompts.ids,
        "reference": reference_.tokens,
        "ttft_prompt": ttft_prompt(prompts, length),
        "heldout": prompts.heldout,
        "repeats": 5,
    }
    with tempfile.TemporaryDirectory(prefix="edgeship-generate-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        proc = subprocess.run(
            [sys.executable, str(Path(decoding.__file__).resolve()), "measure", str(req), str(res)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not res.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise BuildError(
                f"error: decoding the artifact failed (exit {proc.returncode}):\n{tail}"
            )
        result: dict[str, Any] = json.loads(res.read_text())
    return result


GENAI_TOOL = "ort-genai"
GENAI_CONFIG = "genai_config.json"


def measure_genai(
    folder: Path, prompts: Prompts, measured: dict[str, Any], threads: int, length: int
) -> dict[str, Any] | None:
    """ONNX Runtime GenAI's generator on an ONNX artifact folder that has a
    ``genai_config.json``, in the ``ort-genai`` tool environment (onnxruntime-genai needs a
    newer ONNX Runtime than edgeship's): its greedy tokens on every prompt against those the
    validation loop generated, its time to first token at the loop's prompt length and its
    tokens/s (:func:`orchestrator.device.agent.generate.genai_measure`).

    None when the folder has no ``genai_config.json``; ``{"available": False, "reason"}``
    when the tool environment is not installed (nothing fails)."""
    from orchestrator.core import toolenv

    if not (folder / GENAI_CONFIG).is_file():
        return None
    missing = toolenv.unavailable_reason(GENAI_TOOL)
    if missing:
        reason = f"{missing} (create it with `edgeship toolenv install {GENAI_TOOL}`)"
        log.info("onnxruntime-genai not measured: %s", reason)
        return {"available": False, "reason": reason}
    request = {
        "folder": str(folder),
        "threads": threads,
        "prompts": prompts.ids,
        "expected": [p["greedy"] for p in measured["prompts"]],
        "eos": prompts.eos,
        "ttft_prompt": ttft_prompt(prompts, length),
        "repeats": 5,
    }
    script = Path(decoding.__file__).resolve()
    with tempfile.TemporaryDirectory(prefix="edgeship-genai-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        try:
            proc = toolenv.run_worker(
                GENAI_TOOL, script, ["genai", str(req), str(res)], timeout=1800
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError("error: onnxruntime-genai's generator ran past 1800 s") from exc
        if proc.returncode != 0 or not res.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise BuildError(
                f"error: decoding the artifact with onnxruntime-genai failed in the "
                f"{GENAI_TOOL} tool environment ({toolenv.env_dir(GENAI_TOOL)}, exit "
                f"{proc.returncode}):\n{tail}"
            )
        result: dict[str, Any] = json.loads(res.read_text())
    env = toolenv.info(GENAI_TOOL) or {}
    result["threads"] = threads
    result["toolenv"] = {"name": GENAI_TOOL, "digest": env.get("digest"), "lock": env.get("lock")}
    return result


def parity_metrics(
    measured: dict[str, Any], reference_: GenerationReference, prompts: Prompts, max_new: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Teacher-forced agreement, first divergence, exact generations, step-1 logits error.

    ``first_divergence`` is the earliest step, over all prompts, at which the artifact's top
    token differs from the reference's when both are fed the reference's tokens; ``max_new``
    (``max_new_tokens``) when none differs."""
    agreed = total = exact = 0
    first_div: list[int] = []
    per_prompt = []
    errors, means = [], []
    for i, (got, want) in enumerate(zip(measured["prompts"], reference_.tokens, strict=True)):
        share, first = decoding.agreement(got["top1"], want)
        agreed += round(share * len(want))
        total += len(want)
        exact += int(got["greedy"] == want)
        first_div.append(max_new if first < 0 else first)
        diff = np.abs(np.asarray(got["first_logits"], np.float32) - reference_.first_logits[i])
        errors.append(float(diff.max()))
        means.append(float(diff.mean()))
        per_prompt.append(
            {
                "prompt": prompts.texts[i],
                "prompt_tokens": len(prompts.ids[i]),
                "reference_tokens": want,
                "greedy_tokens": got["greedy"],
                "teacher_forced_agreement": share,
                "first_divergence": first,
                "step1_max_abs_error": errors[-1],
            }
        )
    shares = [p["teacher_forced_agreement"] for p in per_prompt]
    metrics = {
        "teacher_forced_agreement": agreed / total if total else 1.0,
        "min_teacher_forced_agreement": min(shares),
        "first_divergence": float(min(first_div)),
        "exact_generations": exact / len(per_prompt),
        "step1_max_abs_error": max(errors),
        "max_abs_error": max(errors),
        "mean_abs_error": float(np.mean(means)),
    }
    return metrics, per_prompt
