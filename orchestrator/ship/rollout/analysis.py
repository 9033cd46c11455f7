"""Live canary analysis: the gates of a strategy's ``analysis`` section, evaluated on the
prediction events of a soak (the wave's devices against those still on the previous version).

The figures come from an :data:`Analyst`, a callable the caller supplies (the command line
gives one that reads the events collector's database): ``analyst(devices, baseline,
deployment, version, since, db)`` (``db``: the strategy's ``analysis.db``, empty for the
default) returns two mappings, the wave's and the baseline's, each
with ``events``, ``p95_ms``, ``psi`` and ``error_share``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.spec.strategy import AnalysisConfig

Figures = tuple[dict[str, Any], dict[str, Any]]
Analyst = Callable[[list[str], list[str], str, int, str, str], Figures]


def evaluate(
    cfg: AnalysisConfig, version: int, wave: Mapping[str, Any], baseline: Mapping[str, Any]
) -> list[str]:
    """Why the analysis fails (empty: it passes). A gate without the figures it needs fails."""
    events = int(wave.get("events") or 0)
    if events < cfg.min_events:
        return [
            f"{events} event(s) from the wave's devices during the soak; the analysis needs "
            f"at least {cfg.min_events} (analysis.min_events)"
        ]
    reasons = []
    if cfg.max_p95_ratio is not None:
        p95, base = wave.get("p95_ms"), baseline.get("p95_ms")
        if base is None or p95 is None:
            reasons.append(
                "no latency from the devices still on the previous version to compare with "
                "(analysis.max_p95_ratio)"
            )
        elif p95 > cfg.max_p95_ratio * base:
            reasons.append(
                f"p95 latency {p95:.2f} ms is above {cfg.max_p95_ratio:g} x the baseline's "
                f"{base:.2f} ms (analysis.max_p95_ratio)"
            )
    if cfg.max_psi is not None:
        psi = wave.get("psi")
        if psi is None:
            reasons.append(
                f"no prediction distribution recorded at validation for version {version} "
                "to measure drift against (analysis.max_psi)"
            )
        elif psi > cfg.max_psi:
            reasons.append(
                f"prediction drift PSI {psi:.3f} is above {cfg.max_psi:g} (analysis.max_psi)"
            )
    if cfg.max_error_share is not None:
        share = float(wave.get("error_share") or 0.0)
        if share > cfg.max_error_share:
            reasons.append(
                f"{share:.1%} of the events report an inference error; at most "
                f"{cfg.max_error_share:.1%} allowed (analysis.max_error_share)"
            )
    return reasons
