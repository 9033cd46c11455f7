"""``edgeship reference``: compute a generative model's reference outputs and keep them in
``references/<model>/`` (the output of the ``reference@<model>`` stage of ``dvc.yaml``;
see :mod:`orchestrator.build.kept_reference`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.build import generative, sources
from orchestrator.build import speech as asr
from orchestrator.build.kept_reference import read, store
from orchestrator.errors import BuildError, SpecError
from orchestrator.spec.files import option_label


def compute_and_store(model: Any, root: Path, threads: int) -> tuple[Path, dict[str, Any], bool]:
    """``edgeship reference``: the reference outputs of a text-generation or
    speech-recognition model, kept in ``references/<model>/`` (computed now unless a kept
    file already matches). Returns the file, its summary and whether it was computed now."""
    if model.task not in ("text-generation", "speech-recognition"):
        raise BuildError(
            f"error: model.task: edgeship reference keeps the outputs of text-generation and "
            f"speech-recognition models; model '{model.name}' is {model.task!r}, whose "
            "reference runs in each build"
        )
    label = option_label(root, "model", model.name)
    problems = sources.missing_source_files(model, root, {"model": label}, [])
    if problems:
        raise SpecError(problems, title="model source not found")
    source = sources.open_source(model, root, load=False)
    sha = str(source.lineage.get("sha256"))

    def load_net() -> Any:  # called only when no kept outputs match
        return sources.reference_net(model, root)

    result: Any
    if model.task == "text-generation":
        prompts = generative.load_prompts(model, root)
        result = generative.reference(model, root, load_net, sha, prompts, threads)
        summary = generative.reference_summary(model, result, prompts)
    else:
        asr.check_features(model, root)
        clips = asr.load_clips(model)
        result = asr.reference(model, root, load_net, sha, clips, threads)
        summary = asr.reference_summary(model, result, clips)
    summary["source"] = {"folder": source.lineage.get("folder"), "sha256": sha}
    summary["threads"] = read(result.path)[0].get("threads")
    path = store(root, model.name, result.path, summary)
    return path, summary, not result.cached
