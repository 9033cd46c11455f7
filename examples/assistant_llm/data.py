"""The assistant's prompt set (``model.data.eval``): questions of the generated corpus."""

from __future__ import annotations

from examples.assistant_llm import corpus


def eval_prompts(count: int = 8) -> list[str]:
    """``count`` questions spread over the corpus (the answers the model learnt)."""
    return corpus.eval_prompts(count)
