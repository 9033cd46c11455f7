"""Whisper's real multilingual tokenizer as Hugging Face tokenizer files.

The vocabulary is openai-whisper's ``whisper/assets/multilingual.tiktoken`` (byte-level
BPE ranks, 50,257 tokens), read from an installed ``openai-whisper`` distribution
(``pip install --no-deps openai-whisper==20250625``: its dependencies, CUDA torch among
them, are not needed to read one file; the package is never imported). The ranks become
``vocab.json`` and ``merges.txt`` the way transformers' tiktoken converter derives merges
(a token's merge is a split of it into two tokens, ordered by rank), and openai-whisper's
special tokens follow in its order: end-of-text, start-of-transcript, the 99 languages,
translate, transcribe, start-of-LM, start-of-previous, no-speech, no-timestamps and the
1,501 timestamps: 51,865 ids, Whisper tiny's vocabulary.
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path
from typing import Any

INSTALL = "pip install --no-deps openai-whisper==20250625"
LANGUAGE_CODES = (  # noqa: SIM905 (openai-whisper's LANGUAGES, in its order: multilingual v1/v2)
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su"
).split()


def specials() -> list[str]:
    """openai-whisper's special tokens of the multilingual vocabulary, in id order."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in LANGUAGE_CODES],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]


def vocabulary_file() -> Path:
    """``multilingual.tiktoken`` of the installed openai-whisper (not imported)."""
    spec = importlib.util.find_spec("whisper")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "assets" / "multilingual.tiktoken"
        if path.is_file():
            return path
    raise RuntimeError(
        "error: Whisper's vocabulary (whisper/assets/multilingual.tiktoken) is not installed; "
        f"install it with: {INSTALL}"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def vocab_and_merges(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges of a tiktoken rank file."""
    ranks: dict[bytes, int] = {}
    for line in path.read_text().splitlines():
        if line:
            encoded, number = line.split()
            ranks[base64.b64decode(encoded)] = int(number)
    enc = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(enc[c] for c in b)

    merges = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        local = [
            (token[:i], token[i:], rank)
            for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks
        ]
        local.sort(key=lambda m: (ranks[m[0]], ranks[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])
    vocab = {text(t): r for t, r in ranks.items()}
    return vocab, [(text(a), text(b)) for a, b, _ in merges]


def whisper_tokenizer(language: str = "en", task: str = "transcribe") -> Any:
    """transformers' ``WhisperTokenizer`` with the multilingual vocabulary and its specials."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    vocab, merges = vocab_and_merges(vocabulary_file())
    tok = WhisperTokenizer(
        vocab=vocab,
        merges=merges,
        language=None,
        task=None,
        predict_timestamps=False,
        model_max_length=448,
    )
    names = specials()
    # timestamps are ordinary added tokens in Hugging Face's Whisper tokenizers
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in names[:-1501]],
        special_tokens=True,
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in names[-1501:]])
    first = len(vocab)
    for i, t in enumerate(names):
        got = tok.convert_tokens_to_ids(t)
        if got != first + i:
            raise RuntimeError(f"tokenizer: {t} has id {got}, expected {first + i}")
    tok.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    return tok
