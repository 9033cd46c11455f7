"""A small deterministic corpus of clinical-workflow exchanges for the assistant example.

Every question is built from templates and its answer follows from the question alone, so
a model trained on it briefly gives peaked next-token distributions (what teacher-forced
parity needs). Nothing is random: the same call returns the same text everywhere.
"""

from __future__ import annotations

import itertools

WARDS = ("north", "south", "cardiology", "oncology", "paediatrics", "surgery")
ITEMS = {
    "blood pressure": "every four hours",
    "temperature": "every six hours",
    "heart rate": "every two hours",
    "oxygen saturation": "every hour",
    "blood glucose": "before each meal",
    "pain score": "every four hours",
    "fluid balance": "at the end of each shift",
    "weight": "every morning",
}
TASKS = {
    "handover": "Give the handover at the nurses' station at the change of shift.",
    "discharge": "Check the discharge letter, the medication list and the follow-up date.",
    "admission": "Record allergies, current medication and the next of kin on admission.",
    "transfer": "Send the transfer note and call the receiving ward before the patient leaves.",
    "fall": "Report the fall, check for injury and review the falls risk assessment.",
    "sepsis": "Start the sepsis pathway: cultures, lactate, antibiotics within one hour.",
}
BEDS = tuple(range(1, 13))

SYSTEM = "You are a ward assistant. Answer briefly."


def exchanges() -> list[tuple[str, str]]:
    """Every (question, answer) pair of the corpus, in a fixed order."""
    pairs: list[tuple[str, str]] = []
    for item, when in ITEMS.items():
        for ward in WARDS:
            pairs.append(
                (
                    f"How often is {item} measured on the {ward} ward?",
                    f"On the {ward} ward, {item} is measured {when}.",
                )
            )
    for task, answer in TASKS.items():
        for ward in WARDS:
            pairs.append((f"What do I do for a {task} on the {ward} ward?", answer))
    for bed, item in itertools.product(BEDS, ITEMS):
        pairs.append(
            (
                f"Record the {item} for bed {bed}.",
                f"Recorded the {item} for bed {bed}. Next check {ITEMS[item]}.",
            )
        )
    return pairs


def texts() -> list[str]:
    """The corpus as plain text, one exchange per entry (what the tokenizer learns from)."""
    return [f"{SYSTEM}\n{q}\n{a}" for q, a in exchanges()]


HELDOUT_WARDS = ("maternity", "neurology", "renal")
HELDOUT_BEDS = (13, 14, 15, 16)


def heldout_exchanges() -> list[tuple[str, str]]:
    """Exchanges of the corpus's forms about wards and beds it never names (the model was
    not trained on them): held-out text for perplexity."""
    pairs: list[tuple[str, str]] = []
    for item, when in ITEMS.items():
        for ward in HELDOUT_WARDS:
            pairs.append(
                (
                    f"How often is {item} measured on the {ward} ward?",
                    f"On the {ward} ward, {item} is measured {when}.",
                )
            )
    for bed, item in itertools.product(HELDOUT_BEDS, ITEMS):
        pairs.append(
            (
                f"Record the {item} for bed {bed}.",
                f"Recorded the {item} for bed {bed}. Next check {ITEMS[item]}.",
            )
        )
    seen = set(exchanges())
    return [p for p in pairs if p not in seen]


def eval_prompts(count: int = 8) -> list[str]:
    """The prompt set a build validates on: questions of the corpus, spread over it."""
    pairs = exchanges()
    step = max(1, len(pairs) // count)
    return [pairs[i * step][0] for i in range(count)]
