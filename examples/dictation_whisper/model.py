"""The dictation model's architecture: Whisper (transformers' ``WhisperForConditionalGeneration``).

Whisper tiny's layout (encoder of two convolutions and transformer layers over log-mel
frames, decoder with cross-attention, learnt positions, GELU, pre-norm, tied output
embedding, 80 mel bins, the 51,865-token multilingual vocabulary) with smaller dimensions
so that it trains in minutes on two CPU threads: width 128 instead of 384, 2 + 2 layers
instead of 4 + 4, 4 heads instead of 6, and 10-second windows instead of 30 (500 encoder
positions instead of 1,500). The feature extractor is Whisper's (``WhisperFeatureExtractor``:
25 ms windows, 10 ms hop, 80 mel bins, log-mel clamped 8 dB below the peak).
"""

from __future__ import annotations

from typing import Any

from examples.dictation_whisper import tokenizer as vocab

SAMPLING_RATE = 16000
HOP = 160


def build_config(tok: Any, chunk_seconds: int = 10, **sizes: Any) -> Any:
    """A ``WhisperConfig`` of the tiny family, shrunk (see the module's docstring)."""
    from transformers import WhisperConfig

    frames = chunk_seconds * SAMPLING_RATE // HOP
    dims = {
        "d_model": 128,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 512,
        "decoder_ffn_dim": 512,
        "max_target_positions": 448,
        **sizes,
    }
    return WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=80,
        max_source_positions=frames // 2,
        decoder_start_token_id=tok.convert_tokens_to_ids("<|startoftranscript|>"),
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        begin_suppress_tokens=None,
        suppress_tokens=None,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        tie_word_embeddings=True,
        **dims,
    )


def feature_extractor(chunk_seconds: int = 10) -> Any:
    """Whisper's feature extractor for ``chunk_seconds`` windows."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=80,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP,
        chunk_length=chunk_seconds,
        n_fft=400,
        padding_value=0.0,
    )


def generation_config(tok: Any, max_new_tokens: int = 48) -> Any:
    """Whisper's generation settings: English transcription without timestamps, greedy."""
    from transformers import GenerationConfig

    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(
        decoder_start_token_id=tok.convert_tokens_to_ids("<|startoftranscript|>"),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=448,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        is_multilingual=True,
        lang_to_id={
            f"<|{c}|>": tok.convert_tokens_to_ids(f"<|{c}|>") for c in vocab.LANGUAGE_CODES
        },
        task_to_id={
            "transcribe": tok.convert_tokens_to_ids("<|transcribe|>"),
            "translate": tok.convert_tokens_to_ids("<|translate|>"),
        },
        language="<|en|>",
        task="transcribe",
        no_timestamps_token_id=tok.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tok.convert_tokens_to_ids("<|startofprev|>"),
        return_timestamps=False,
        max_initial_timestamp_index=50,
        begin_suppress_tokens=[220, eot],
        suppress_tokens=[],
    )
