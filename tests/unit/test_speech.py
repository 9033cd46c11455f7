"""Speech recognition: the spec rules, word error rate and the parity figures (no model,
no runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.build import speech
from orchestrator.device.agent import speech as asr
from orchestrator.errors import SpecError
from orchestrator.spec.compose import compose
from orchestrator.spec.gates import measured_metrics

ROOT = Path(__file__).resolve().parents[2]


def _problems(overrides: list[str]) -> str:
    with pytest.raises(SpecError) as info:
        compose(["deployment=dictation_whisper_nuc", *overrides], ROOT)
    return str(info.value)


def test_dictation_whisper_nuc_composes_with_speech_settings() -> None:
    spec = spec_ = compose(["deployment=dictation_whisper_nuc"], ROOT)
    s = spec_.config.model.speech
    assert spec.config.model.task == "speech-recognition" and s is not None
    assert (s.sampling_rate, s.language, s.task, s.decoding) == (
        16000,
        "en",
        "transcribe",
        "greedy",
    )
    passes = [p.name for p in spec.config.recipe.passes]
    assert passes == ["optimum_export_openvino_speech", "nncf_compress_folder"]


def test_speech_settings_outside_whisper_are_refused() -> None:
    text = _problems(
        [
            "model.speech.sampling_rate=8000",
            "model.speech.feature_size=64",
            "model.speech.chunk_seconds=40",
            "model.speech.max_new_tokens=445",
        ]
    )
    assert "model.speech.sampling_rate: expected 16000 (Whisper's feature extractor" in text
    assert "model.speech.feature_size: expected 80 or 128 log-mel bins" in text
    assert "model.speech.chunk_seconds: expected 1 to 30 seconds, found 40" in text
    assert "model.speech.max_new_tokens: expected 1 to 444 (Whisper's decoder holds 448" in text


def test_an_unknown_language_lists_whispers() -> None:
    text = _problems(["model.speech.language=englsh"])
    assert "model.speech.language: unknown language 'englsh'; expected one of: af, am, ar" in text


def test_a_language_token_is_accepted() -> None:
    spec = compose(["deployment=dictation_whisper_nuc", "model.speech.language='<|de|>'"], ROOT)
    assert speech.language_token(spec.config.model.speech) == "<|de|>"
    spec = compose(["deployment=dictation_whisper_nuc", "model.speech.language=fr"], ROOT)
    assert speech.language_token(spec.config.model.speech) == "<|fr|>"


def test_greedy_is_the_only_decoding_and_tasks_are_whispers() -> None:
    text = _problems(["model.speech.decoding=beam", "model.speech.task=summarise"])
    assert "model.speech.decoding: unknown value 'beam'" in text
    assert "model.speech.task: unknown value 'summarise'" in text


def test_speech_recognition_needs_its_settings() -> None:
    text = _problems(["~model.speech"])
    assert "model.speech: expected the speech settings of a speech-recognition model" in text


def test_speech_settings_belong_to_speech_recognition_only() -> None:
    text = _problems(["model.task=classification"])
    assert "model.speech: expected no speech settings for a classification model" in text


def test_speech_recipe_must_start_from_the_folder() -> None:
    text = _problems(["recipe=ov_fp32"])
    assert "a speech-recognition model is exported with its KV cache by a first pass" in text
    assert "optimum_export_openvino_speech" in text


def test_speech_metrics_can_be_gated() -> None:
    names = measured_metrics("speech-recognition", [])
    for metric in ("wer", "wer_vs_reference", "teacher_forced_agreement", "real_time_factor"):
        assert metric in names
    assert "size_mb" in names and "peak_memory_mb" in names


# -- word error rate -------------------------------------------------------------------------------


def test_words_drop_case_and_punctuation_but_keep_decimals() -> None:
    assert asr.words(" Temperature 36.8, patient's BP!") == [
        "temperature",
        "36.8",
        "patient's",
        "bp",
    ]


def test_edit_distance_counts_substitutions_insertions_deletions() -> None:
    assert asr.edit_distance(list("abc"), list("abc")) == 0
    assert asr.edit_distance(list("abc"), list("axc")) == 1
    assert asr.edit_distance(list("abc"), list("ac")) == 1
    assert asr.edit_distance(list("abc"), list("abxc")) == 1
    assert asr.edit_distance([], list("ab")) == 2


def test_wer_pools_edits_over_reference_words() -> None:
    refs = ["Start aspirin 100 milligrams daily.", "Heart rate 62."]
    hyps = [" start aspirin 10 milligrams daily", " Heart rate 62 now."]
    assert asr.wer(refs, hyps) == pytest.approx(2 / 8)
    assert asr.wer(refs, refs) == 0.0
    with pytest.raises(ValueError):
        asr.wer(refs, hyps[:1])


# -- parity figures --------------------------------------------------------------------------------


def _reference(tokens: list[list[int]], texts: list[str]) -> speech.SpeechReference:
    logits = np.zeros((len(tokens), 6), dtype=np.float32)
    return speech.SpeechReference(tokens, texts, logits, 0.2, True, Path("ref.npz"))


def test_teacher_forced_agreement_includes_end_of_text() -> None:
    ref = _reference([[1, 2], [3]], ["a b", "c"])
    forced = [
        {"top1": [1, 2, 5], "target": [1, 2, 5], "first_logits": np.zeros(6, np.float32)},
        {"top1": [3, 4], "target": [3, 5], "first_logits": np.full(6, 0.5, np.float32)},
    ]
    metrics, shares, errors = speech.parity_metrics(forced, ref)
    assert metrics["teacher_forced_agreement"] == pytest.approx(4 / 5)
    assert metrics["min_teacher_forced_agreement"] == pytest.approx(0.5)
    assert shares == [1.0, 0.5] and errors == [0.0, 0.5]
    assert metrics["step1_max_abs_error"] == pytest.approx(0.5)


def test_wer_metrics_against_transcripts_reference_and_held_out() -> None:
    clips = speech.Clips(
        [np.zeros(16000, np.float32)] * 2,
        ["Heart rate 62.", "The lungs are clear."],
        [False, True],
        "x",
    )
    ref = _reference([[1], [2]], [" Heart rate 62.", " The lungs are clean."])
    measured = {
        "clips": [
            {"text": " Heart rate 62.", "tokens": [1]},
            {"text": " The lungs are clean.", "tokens": [2]},
        ]
    }
    m = speech.wer_metrics(clips, measured, ref)
    assert m["wer"] == pytest.approx(1 / 7) and m["reference_wer"] == pytest.approx(1 / 7)
    assert m["wer_vs_reference"] == 0.0 and m["wer_drop"] == 0.0
    assert m["exact_transcripts"] == 1.0
    assert m["heldout_wer"] == pytest.approx(1 / 4)


def test_health_check_without_openvino_genai_says_the_model_was_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import sys

    from orchestrator.device.agent.runners import smoke_check

    (tmp_path / "model").mkdir()
    (tmp_path / "smoke").mkdir()
    np.save(tmp_path / "smoke" / "clip.npy", np.zeros(1600, np.float32))
    runtime = {
        "deployment": "dictation",
        "task": "speech-recognition",
        "target": {"runtime": "openvino", "threads": 2},
        "model": {"file": "model/openvino_encoder_model.xml"},
        "speech": {"language": "<|en|>", "task": "transcribe", "max_new_tokens": 8},
    }
    (tmp_path / "runtime.json").write_text(json.dumps(runtime))
    smoke = {"speech": {"clip": "clip.npy", "expected_tokens": [1, 2], "expected_text": " a"}}
    (tmp_path / "smoke" / "smoke.json").write_text(json.dumps(smoke))
    monkeypatch.setitem(sys.modules, "openvino_genai", None)  # import fails
    result = smoke_check(str(tmp_path))
    assert result["result"] == "fail" and result["unavailable"] is True
    assert "OpenVINO GenAI is not installed" in result["reason"]
    assert "pip install openvino-genai" in result["reason"]
