"""The dictation model's evaluation clips (``model.data.eval``): synthesised speech and
its transcripts, trained sentences and held-out ones."""

from __future__ import annotations

import numpy as np

from examples.dictation_whisper import audio, corpus


def eval_clips(
    trained: int = 8, held_out: int = 8
) -> tuple[list[np.ndarray], list[str], list[bool]]:
    """``trained`` training sentences and ``held_out`` held-out ones, spread over each set,
    spoken in turn by each voice: (16 kHz samples, transcripts, held-out flags)."""
    train, held = corpus.sentences()
    picked = [(s, False) for s in _spread(train, trained)] + [
        (s, True) for s in _spread(held, held_out)
    ]
    clips, texts, flags = [], [], []
    for i, (sentence, is_held) in enumerate(picked):
        voice, speed = audio.VOICES[i % len(audio.VOICES)]
        clips.append(audio.synthesise(sentence, voice, speed))
        texts.append(sentence)
        flags.append(is_held)
    return clips, texts, flags


def _spread(items: list[str], count: int) -> list[str]:
    count = min(count, len(items))
    return [items[i * len(items) // count] for i in range(count)] if count else []
