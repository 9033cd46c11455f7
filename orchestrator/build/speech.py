"""Speech recognition: the clips, the reference's greedy transcripts and the artifact's parity.

A ``speech-recognition`` model (a Whisper folder; see docs/generative.md) is validated on
transcripts and tokens:

- the evaluation set is ``model.data.eval``: a loader returning ``(clips, transcripts)``
  or ``(clips, transcripts, held_out)`` (16 kHz float samples, reference texts, and a
  flag per clip saying it was not trained on);
- the reference is the folder in PyTorch (FP32, eager): transformers' Whisper feature
  extractor, the encoder, then greedy decoding with the KV cache from the decoder prompt
  (start of transcript, language, task, no timestamps); its tokens, texts and step-1 logits
  are computed once per folder, clip set and settings and kept
  (:mod:`orchestrator.build.kept_reference`: ``references/<model>/``, the DVC output of
  ``edgeship reference``, else the build's cache in ``.edgeship/reference/``);
- the artifact transcribes with OpenVINO GenAI's ``WhisperPipeline``
  (:mod:`orchestrator.device.agent.speech`, what a device runs) in a fresh process: word
  error rate against the transcripts and against the reference's texts, tokens compared
  whole, real-time factor, peak memory; and, with OpenVINO on the same features, the
  decoder fed the reference's tokens (teacher-forced top-1 agreement, step-1 logits).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.build import kept_reference as kept
from orchestrator.build import reference as ref
from orchestrator.core.schema import ModelConfig, SpeechConfig
from orchestrator.device.agent import speech as asr
from orchestrator.errors import BuildError

log = logging.getLogger(__name__)

PROMPT = ("<|startoftranscript|>", "{language}", "<|{task}|>", "<|notimestamps|>")
# the feature extractor's settings the spec states, as preprocessor_config.json names them
FEATURE_KEYS = {
    "sampling_rate": "sampling_rate",
    "feature_size": "feature_size",
    "chunk_seconds": "chunk_length",
    "hop_length": "hop_length",
    "n_fft": "n_fft",
}


@dataclass
class Clips:
    """The evaluation set: samples, reference transcripts, held-out flags."""

    samples: list[np.ndarray]
    texts: list[str]
    held_out: list[bool]
    sha256: str  # of the samples and texts: the evaluation data's identity

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def seconds(self) -> float:
        return float(sum(len(s) for s in self.samples)) / 16000.0


@dataclass
class SpeechReference:
    """The reference's greedy tokens, texts and step-1 logits for every clip."""

    tokens: list[list[int]]  # generated tokens, end-of-text excluded
    texts: list[str]
    first_logits: np.ndarray  # [clips, vocab], float32
    real_time_factor: float  # PyTorch eager: processing seconds / audio seconds
    cached: bool  # read from a kept file rather than computed now
    path: Path
    stored: bool = False  # read from references/<model> (the DVC output)
    key: str = ""  # what the outputs depend on (kept_reference)


def settings(model: ModelConfig) -> SpeechConfig:
    s = model.speech
    if s is None:
        raise BuildError("error: model.speech: a speech-recognition model needs it; none set")
    return s


def language_token(s: SpeechConfig) -> str:
    lang = s.language
    return lang if lang.startswith("<|") else f"<|{lang}|>"


def folder(model: ModelConfig, root: Path) -> Path:
    return root / (model.source.path or "")


def check_features(model: ModelConfig, root: Path) -> dict[str, Any]:
    """The folder's ``preprocessor_config.json``, checked against ``model.speech``."""
    s = settings(model)
    path = folder(model, root) / "preprocessor_config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(
            f"error: model.source.path: no Whisper feature extractor settings in {path}: {exc}"
        ) from exc
    wrong = [
        f"model.speech.{key}: {getattr(s, key)} but {path.name} has {name} {config.get(name)}"
        for key, name in FEATURE_KEYS.items()
        if config.get(name) != getattr(s, key)
    ]
    if wrong:
        raise BuildError(
            "error: the spec's feature settings differ from the folder's:\n  " + "\n  ".join(wrong)
        )
    return config


def load_clips(model: ModelConfig) -> Clips:
    """The clips of ``model.data.eval``, checked."""
    raw = ref.call(model.data.eval, "model.data.eval")
    if not isinstance(raw, list | tuple) or len(raw) not in (2, 3):
        raise BuildError(
            "error: model.data.eval: a speech-recognition model's loader returns (clips, "
            f"transcripts) or (clips, transcripts, held_out); {model.data.eval.fn} returned "
            f"{type(raw).__name__}"
        )
    clips, texts = list(raw[0]), list(raw[1])
    held = [bool(h) for h in raw[2]] if len(raw) == 3 else [False] * len(texts)
    if not clips or len(clips) != len(texts) or len(held) != len(texts):
        raise BuildError(
            f"error: model.data.eval: {len(clips)} clips, {len(texts)} transcripts and "
            f"{len(held)} held-out flags; expected as many of each (at least one)"
        )
    n = model.data.eval_samples or None
    samples = [np.ascontiguousarray(c, dtype=np.float32).reshape(-1) for c in clips[:n]]
    texts = [str(t) for t in texts[:n]]
    held = held[:n]
    digest = hashlib.sha256()
    for c, t in zip(samples, texts, strict=True):
        digest.update(c.tobytes())
        digest.update(t.encode() + b"\0")
    return Clips(samples, texts, held, digest.hexdigest())


def prompt_ids(tokenizer: Any, s: SpeechConfig) -> list[int]:
    names = [p.format(language=language_token(s), task=s.task) for p in PROMPT]
    ids = [int(tokenizer.convert_tokens_to_ids(n)) for n in names]
    unknown = [n for n, i in zip(names, ids, strict=True) if i == tokenizer.unk_token_id]
    if unknown:
        raise BuildError(f"error: model.speech: the tokenizer has no {', '.join(unknown)}")
    return ids


def _features(model: ModelConfig, root: Path, clips: Clips) -> np.ndarray:
    from orchestrator.build.framework_sources import _offline
    from orchestrator.core.runtime_imports import require

    transformers = require("transformers")
    with _offline():
        fe = transformers.WhisperFeatureExtractor.from_pretrained(
            str(folder(model, root)), local_files_only=True
        )
    out = fe(clips.samples, sampling_rate=settings(model).sampling_rate, return_tensors="np")
    return np.asarray(out["input_features"], dtype=np.float32)


def load_tokenizer(model: ModelConfig, root: Path) -> Any:
    from orchestrator.build.framework_sources import _offline
    from orchestrator.core.runtime_imports import require

    transformers = require("transformers")
    with _offline():
        return transformers.AutoTokenizer.from_pretrained(
            str(folder(model, root)), local_files_only=True
        )


def begin_suppress(model: ModelConfig, root: Path) -> list[int]:
    """The generation config's ``begin_suppress_tokens`` (masked at the first step)."""
    path = folder(model, root) / "generation_config.json"
    try:
        return [int(t) for t in json.loads(path.read_text()).get("begin_suppress_tokens") or []]
    except (OSError, ValueError):
        return []


def _greedy_torch(
    net: Any, features: Any, prompt: list[int], new: int, eos: int, suppress: list[int]
) -> tuple[list[int], np.ndarray]:
    """Greedy decoding with the decoder's own KV cache (tokens before end-of-text)."""
    import inspect

    import torch

    # transformers 5 names the decoder's cache ``cache``, earlier releases ``past_key_values``
    name = "cache" if "cache" in inspect.signature(net.forward).parameters else "past_key_values"
    with torch.inference_mode():
        states = net.model.encoder(torch.from_numpy(features[None])).last_hidden_state
        out = net(
            encoder_outputs=(states,), decoder_input_ids=torch.tensor([prompt]), use_cache=True
        )
        logits = out.logits[0, -1].float()
        first = logits.numpy().copy()
        masked = logits.clone()
        masked[suppress] = -float("inf")
        tokens = [int(masked.argmax())]
        past = getattr(out, name)
        while len(tokens) < new and tokens[-1] != eos:
            out = net(
                encoder_outputs=(states,),
                decoder_input_ids=torch.tensor([[tokens[-1]]]),
                use_cache=True,
                **{name: past},
            )
            past = getattr(out, name)
            tokens.append(int(out.logits[0, -1].argmax()))
    return [t for t in tokens if t != eos], first


def _reference_key(model: ModelConfig, source_sha: str, clips: Clips) -> str:
    import torch
    import transformers

    s = settings(model)
    key = {
        "source": source_sha,
        "clips": clips.sha256,
        "language": s.language,
        "task": s.task,
        "max_new_tokens": s.max_new_tokens,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def reference(
    model: ModelConfig,
    root: Path,
    load_net: Callable[[], Any],
    source_sha: str,
    clips: Clips,
    threads: int,
) -> SpeechReference:
    """The reference's greedy transcripts and step-1 logits, computed once and kept
    (:mod:`orchestrator.build.kept_reference`); ``load_net`` loads the reference model,
    called only when no kept outputs match."""

    s = settings(model)
    key = _reference_key(model, source_sha, clips)
    found = kept.find(root, model.name, key)
    if found is not None:
        meta = found.meta
        return SpeechReference(
            [list(map(int, t)) for t in meta["tokens"]],
            list(meta["texts"]),
            found.first_logits,
            float(meta["real_time_factor"]),
            True,
            found.path,
            found.stored,
            key,
        )
    tok = load_tokenizer(model, root)
    prompt = prompt_ids(tok, s)
    eos = int(tok.eos_token_id)
    suppress = begin_suppress(model, root)
    with kept.computing(root, model.name, key, load_net, threads) as net:
        fe_start = time.perf_counter()
        feats = _features(model, root, clips)
        fe_s = time.perf_counter() - fe_start
        _greedy_torch(net, feats[0], prompt, 2, eos, suppress)  # warm-up
        tokens, firsts, busy = [], [], fe_s
        for f in feats:
            start = time.perf_counter()
            t, first = _greedy_torch(net, f, prompt, s.max_new_tokens, eos, suppress)
            busy += time.perf_counter() - start
            tokens.append(t)
            firsts.append(first)
    texts = [tok.decode(t, skip_special_tokens=True) for t in tokens]
    meta = {
        "tokens": tokens,
        "texts": texts,
        "real_time_factor": busy / clips.seconds,
        "threads": threads,
        "key": key,
    }
    logits = np.stack(firsts).astype(np.float32)
    path = kept.cache(root, model.name, meta, logits)
    return SpeechReference(tokens, texts, logits, meta["real_time_factor"], False, path, False, key)


def reference_summary(
    model: ModelConfig, reference_: SpeechReference, clips: Clips
) -> dict[str, Any]:
    """What ``references/<model>/reference.json`` says of the stored reference."""

    s = settings(model)
    return {
        **kept.summary_head(model, reference_.key),
        "clips": len(clips),
        "clips_sha256": clips.sha256,
        "language": s.language,
        "speech_task": s.task,
        "max_new_tokens": s.max_new_tokens,
        "texts": reference_.texts,
        "real_time_factor": reference_.real_time_factor,
    }


def measure_artifact(
    model_dir: Path, model: ModelConfig, clips: Clips, threads: int
) -> dict[str, Any]:
    """:func:`orchestrator.device.agent.speech.measure` on the artifact, in a fresh process."""
    s = settings(model)
    with tempfile.TemporaryDirectory(prefix="edgeship-speech-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        npz = Path(tmp) / "clips.npz"
        arrays = {f"clip{i}": c for i, c in enumerate(clips.samples)}
        np.savez(npz, **arrays)  # type: ignore[arg-type]
        req.write_text(
            json.dumps(
                {
                    "model": str(model_dir),
                    "threads": threads,
                    "clips": str(npz),
                    "sampling_rate": s.sampling_rate,
                    "language": language_token(s),
                    "task": s.task,
                    "max_new_tokens": s.max_new_tokens,
                    "repeats": 3,
                }
            )
        )
        proc = subprocess.run(
            [sys.executable, str(Path(asr.__file__).resolve()), "measure", str(req), str(res)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not res.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise BuildError(
                f"error: transcribing with the artifact failed (exit {proc.returncode}):\n{tail}"
            )
        result: dict[str, Any] = json.loads(res.read_text())
    return result


def teacher_forced(
    model_dir: Path,
    model: ModelConfig,
    root: Path,
    clips: Clips,
    reference_: SpeechReference,
    threads: int,
) -> list[dict[str, Any]]:
    """The artifact's encoder and decoder IRs (OpenVINO, f32) on the reference's features,
    the decoder fed the prompt and the reference's tokens: its top token at every step and
    its step-1 logits."""
    from orchestrator.core.runtime_imports import require

    ov = require("openvino")
    s = settings(model)
    tok = load_tokenizer(model, root)
    prompt = prompt_ids(tok, s)
    eos = int(tok.eos_token_id)
    suppress = begin_suppress(model, root)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    core = ov.Core()
    encoder = core.compile_model(str(model_dir / "openvino_encoder_model.xml"), "CPU", config)
    decoder = core.compile_model(str(model_dir / "openvino_decoder_model.xml"), "CPU", config)
    enc_req, dec_req = encoder.create_infer_request(), decoder.create_infer_request()
    feats = _features(model, root, clips)
    out = []
    for f, want in zip(feats, reference_.tokens, strict=True):
        states = enc_req.infer({"input_features": f[None]})[encoder.output(0)]
        dec_req.reset_state()
        ids = np.asarray([prompt + want], dtype=np.int64)  # the last fed token predicts end-of-text
        logits = dec_req.infer(
            {"input_ids": ids, "encoder_hidden_states": states, "beam_idx": np.zeros(1, np.int32)}
        )[decoder.output(0)][0, len(prompt) - 1 :]
        first = np.asarray(logits[0], dtype=np.float32).copy()
        step0 = first.copy()
        step0[suppress] = -np.inf
        top = [int(step0.argmax())] + [int(t) for t in logits[1:].argmax(-1)]
        out.append({"top1": top, "target": [*want, eos], "first_logits": first})
    return out


def parity_metrics(
    forced: list[dict[str, Any]], reference_: SpeechReference
) -> tuple[dict[str, float], list[float], list[float]]:
    """Teacher-forced agreement (end-of-text included), worst clip, step-1 logits error."""
    agreed = total = 0
    shares, errors, means = [], [], []
    for i, f in enumerate(forced):
        same = sum(int(a == b) for a, b in zip(f["top1"], f["target"], strict=True))
        agreed += same
        total += len(f["target"])
        shares.append(same / len(f["target"]))
        diff = np.abs(f["first_logits"] - reference_.first_logits[i])
        errors.append(float(diff.max()))
        means.append(float(diff.mean()))
    return (
        {
            "teacher_forced_agreement": agreed / total if total else 1.0,
            "min_teacher_forced_agreement": min(shares),
            "step1_max_abs_error": max(errors),
            "max_abs_error": max(errors),
            "mean_abs_error": float(np.mean(means)),
        },
        shares,
        errors,
    )


def wer_metrics(
    clips: Clips, measured: dict[str, Any], reference_: SpeechReference
) -> dict[str, float]:
    """Word error rates of the artifact and of the reference, all clips and held-out ones."""
    got = [c["text"] for c in measured["clips"]]
    wer = asr.wer(clips.texts, got)
    reference_wer = asr.wer(clips.texts, reference_.texts)
    metrics = {
        "wer": wer,
        "reference_wer": reference_wer,
        "wer_drop": wer - reference_wer,
        "wer_vs_reference": asr.wer(reference_.texts, got),
        "exact_transcripts": sum(
            int(c["tokens"] == t) for c, t in zip(measured["clips"], reference_.tokens, strict=True)
        )
        / len(clips),
    }
    held = [i for i, h in enumerate(clips.held_out) if h]
    if held:
        metrics["heldout_wer"] = asr.wer([clips.texts[i] for i in held], [got[i] for i in held])
        metrics["reference_heldout_wer"] = asr.wer(
            [clips.texts[i] for i in held], [reference_.texts[i] for i in held]
        )
    return metrics
