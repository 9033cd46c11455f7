"""Short clinical dictation sentences, generated from templates (deterministic).

Every sentence is built from a few templates and word lists; the training set and the
held-out set are disjoint combinations of the same words, so held-out sentences test
whether the model transcribes words in orders it did not hear.
"""

from __future__ import annotations

import itertools

SYMPTOMS = ("chest pain", "a headache", "nausea", "a cough", "dizziness", "back pain", "a fever")
SINCE = ("this morning", "yesterday", "two days", "last week")
DRUGS = ("aspirin", "metformin", "heparin", "amoxicillin", "paracetamol", "insulin")
DOSES = ("5", "10", "20", "50", "100", "500")
WHEN = ("daily", "twice daily", "at night", "every six hours")
FINDINGS = ("clear", "normal", "stable", "improving")
ORGANS = ("lungs", "abdomen", "wound", "heart sounds")
VITALS = (
    ("blood pressure", ("110 over 70", "120 over 80", "135 over 85", "150 over 95")),
    ("heart rate", ("62", "78", "96", "110")),
    ("temperature", ("36.8", "37.5", "38.2", "39.0")),
    ("oxygen saturation", ("92 percent", "95 percent", "98 percent")),
)


def _all() -> list[str]:
    out = []
    for s, t in itertools.product(SYMPTOMS, SINCE):
        out.append(f"Patient reports {s} since {t}.")
    for k in range(36):  # 36 of the 144 drug orders, every word in several of them
        d, n, w = DRUGS[k % 6], DOSES[(k // 6 + k) % 6], WHEN[(k + k // 4) % 4]
        out.append(f"Start {d} {n} milligrams {w}.")
    for o, f in itertools.product(ORGANS, FINDINGS):
        out.append(f"The {o} are {f}." if o.endswith("s") else f"The {o} is {f}.")
    for name, values in VITALS:
        for v in values:
            out.append(f"{name.capitalize()} {v}.")
    return out


def phrases() -> list[str]:
    """Every word-list entry on its own ("chest pain.", "metformin."): short clips that
    teach the encoder the words, since a sentence's template can be guessed from its
    first words without listening."""
    out: list[str] = []
    for group in (SYMPTOMS, SINCE, DRUGS, DOSES, WHEN, FINDINGS, ORGANS):
        out += [f"{p}." for p in group]
    for name, values in VITALS:
        out.append(f"{name}.")
        out += [f"{v}." for v in values]
    return list(dict.fromkeys(out))


def sentences() -> tuple[list[str], list[str]]:
    """(training sentences, held-out sentences): every seventh sentence is held out."""
    train: list[str] = []
    held: list[str] = []
    for i, s in enumerate(_all()):
        (held if i % 7 == 3 else train).append(s)
    return train, held
