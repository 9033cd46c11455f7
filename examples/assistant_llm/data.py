"""The assistant's prompt set (``model.data.eval``): questions of the generated corpus."""

from __future__ import annotations

from examples.assistant_llm import corpus


def eval_prompts(count: int = 8) -> list[str]:
    """``count`` questions spread over the corpus (the answers the model learnt)."""
    return corpus.eval_prompts(count)


def heldout(count: int = 16) -> list[list[str]]:
    """``count`` exchanges (question, answer) the model was not trained on, spread over the
    held-out set: the text perplexity is measured on."""
    pairs = corpus.heldout_exchanges()
    step = max(1, len(pairs) // count)
    return [list(pairs[i * step]) for i in range(min(count, len(pairs)))]
