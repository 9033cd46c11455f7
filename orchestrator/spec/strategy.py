"""Rollout strategies: ``conf/rollout/<name>.yaml``, strictly checked.

A strategy says in which order devices receive a bundle and when to stop:

- ``all_at_once``: one wave of every selected device;
- ``canary``: a few devices first (a count, or those matching a selector), a soak
  time, then the rest;
- ``waves``: cumulative steps (``count`` devices or a ``fraction`` of the selected
  ones by the end of each wave), e.g. 1 -> 10% -> 50% -> 100%.

Every strategy has ``max_parallel`` (devices at a time), timeouts, a failure
budget per wave (a count or a fraction of the wave's devices; one failure more
halts the rollout) and ``on_failure``: ``rollback`` (devices updated by this
rollout go back to the version they ran before) or ``hold`` (they stay as they are).

:func:`load_rollout` reads one file, checks it against :class:`RolloutConfig` and
the rules below, and reports every problem at once as ``file: dotted.key: message``.
"""

# OmegaConf resolves typing.List/Dict/Optional; keep them here.
# ruff: noqa: UP006, UP035, UP045

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, TypeGuard

from omegaconf import MISSING, OmegaConf

from orchestrator.core.typecheck import Report, check_dataclass, unknown_name_message
from orchestrator.errors import Problem, SpecError
from orchestrator.spec.files import list_options, option_file, option_label, read_yaml
from orchestrator.spec.fleet import LABEL_KEYS

CLI = "command line"
STRATEGIES = ("all_at_once", "canary", "waves")
ON_FAILURE = ("rollback", "hold")


@dataclass
class SelectorConfig:
    """Which devices of the fleet: by name, group and labels (all given conditions hold)."""

    devices: List[str] = field(default_factory=list)  # device names (any of)
    groups: List[str] = field(default_factory=list)  # fleet groups (any of)
    labels: Dict[str, str] = field(default_factory=dict)  # label -> value, e.g. {site: north}


@dataclass
class CanaryConfig:
    """The first devices of a canary rollout."""

    count: int = 1  # canary devices (0: every device the selector matches)
    select: SelectorConfig = field(default_factory=SelectorConfig)  # where canaries come from
    soak_seconds: float = 60.0  # wait after the canaries, then re-check their health


@dataclass
class WaveConfig:
    """One wave of a ``waves`` rollout: how far the rollout has got when it ends."""

    count: Optional[int] = None  # devices updated by the end of this wave (cumulative), or
    fraction: Optional[float] = None  # the fraction of the selected devices (cumulative)
    soak_seconds: Optional[float] = None  # wait after this wave (default: soak_seconds)


@dataclass
class FailureBudgetConfig:
    """Failed devices a wave tolerates; one more halts the rollout (default: none)."""

    max_failures: Optional[int] = None  # a count, or
    max_fraction: Optional[float] = None  # a fraction of the wave's devices (rounded down)

    def allowed(self, wave_size: int) -> int:
        """Failures tolerated in a wave of ``wave_size`` devices."""
        if self.max_fraction is not None:
            return int(self.max_fraction * wave_size + 1e-9)
        return self.max_failures or 0

    def describe(self) -> str:
        if self.max_fraction is not None:
            return f"{self.max_fraction:.0%} of a wave"
        return f"{self.max_failures or 0} per wave"


@dataclass
class TimeoutsConfig:
    """Per-device time limits, in seconds."""

    connect: float = 15.0  # SSH connection and login
    health: float = 120.0  # the agent's health check (a real inference)
    device: float = 900.0  # one device from connect to health check; exceeded = failed


@dataclass
class AnalysisConfig:
    """Live canary analysis: gates on the prediction events of a soak, each wave's devices
    against the devices still on the previous version; a failing gate halts the rollout."""

    min_events: int = 20  # events the wave's devices must send during the soak
    max_p95_ratio: Optional[float] = None  # wave p95 latency <= this x the baseline's p95
    max_psi: Optional[float] = None  # drift of the predictions from validation's distribution
    max_error_share: Optional[float] = None  # share of events that report an inference error
    db: str = ""  # the collector's SQLAlchemy URL (default: as for `edgeship events`)


@dataclass
class RolloutConfig:
    """A rollout strategy."""

    name: str = MISSING  # identifier; the file is conf/rollout/<name>.yaml
    description: str = ""  # one line for people
    strategy: str = field(default=MISSING, metadata={"choices": STRATEGIES})  # wave plan
    select: SelectorConfig = field(default_factory=SelectorConfig)  # devices it covers
    canary: Optional[CanaryConfig] = None  # strategy canary: the first devices
    waves: List[WaveConfig] = field(default_factory=list)  # strategy waves: the steps
    soak_seconds: float = 0.0  # wait after each wave but the last, then re-check health
    max_parallel: int = 8  # devices updated at a time within a wave
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)  # per device
    failure_budget: FailureBudgetConfig = field(default_factory=FailureBudgetConfig)  # per wave
    on_failure: str = field(default="rollback", metadata={"choices": ON_FAILURE})  # when halted
    limit_rate_kbps: float = 0.0  # upload rate per device in kB/s (0: unlimited)
    analysis: Optional[AnalysisConfig] = None  # live gates evaluated over each soak


def rollout_options(root: Path) -> list[str]:
    """The strategies: the project's ``conf/rollout/`` and the built-in ones."""
    return list_options(root, "rollout")


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_selector(data: Any, key: str, report: Report) -> None:
    if not isinstance(data, dict):
        return
    labels = data.get("labels")
    if isinstance(labels, dict):
        for label, value in labels.items():
            if label not in LABEL_KEYS:
                report(f"{key}.labels.{label}", unknown_name_message("label", label, LABEL_KEYS))
            elif not isinstance(value, str):
                report(f"{key}.labels.{label}", f"expected str, found {type(value).__name__}")


def _check_rules(data: dict[str, Any], report: Report) -> None:
    """Cross-field rules (the types are already checked by check_dataclass)."""
    strategy = data.get("strategy")
    waves = data.get("waves")
    canary = data.get("canary")
    _check_selector(data.get("select"), "select", report)
    if strategy == "waves":
        if not waves:
            report("waves", "strategy waves needs at least one wave, e.g. [{fraction: 1.0}]")
    elif waves:
        report("waves", f"only strategy waves has waves; this strategy is '{strategy}'")
    if strategy != "canary" and canary is not None:
        report("canary", f"only strategy canary has a canary section; this one is '{strategy}'")
    if isinstance(canary, dict):
        count = canary.get("count", 1)
        if _number(count) and count < 0:
            report("canary.count", f"expected 0 (every matching device) or more, found {count}")
        soak = canary.get("soak_seconds")
        if _number(soak) and soak < 0:
            report("canary.soak_seconds", f"expected 0 or more, found {soak}")
        _check_selector(canary.get("select"), "canary.select", report)
    if isinstance(waves, list):
        last_fraction: float = 0.0
        last_count = 0
        for i, wave in enumerate(waves):
            if not isinstance(wave, dict):
                continue
            key = f"waves[{i}]"
            count, fraction = wave.get("count"), wave.get("fraction")
            if (count is None) == (fraction is None):
                report(key, "expected exactly one of count (devices) or fraction (of the fleet)")
                continue
            if _number(count):
                if count < 1:
                    report(f"{key}.count", f"expected 1 or more, found {count}")
                elif count <= last_count:
                    report(
                        f"{key}.count",
                        f"expected more than the previous wave's {last_count} (waves are "
                        f"cumulative), found {count}",
                    )
                last_count = max(last_count, int(count))
            if _number(fraction):
                if not 0 < fraction <= 1:
                    report(f"{key}.fraction", f"expected a number in (0, 1], found {fraction}")
                elif fraction <= last_fraction:
                    report(
                        f"{key}.fraction",
                        f"expected more than the previous wave's {last_fraction:g} (waves are "
                        f"cumulative), found {fraction}",
                    )
                last_fraction = max(last_fraction, float(fraction))
            soak = wave.get("soak_seconds")
            if _number(soak) and soak < 0:
                report(f"{key}.soak_seconds", f"expected 0 or more, found {soak}")
        final = waves[-1] if waves and isinstance(waves[-1], dict) else {}
        fraction = final.get("fraction")
        if final.get("count") is not None or (_number(fraction) and fraction != 1):
            report(
                f"waves[{len(waves) - 1}]",
                "the last wave must reach every selected device; expected fraction: 1.0",
            )
    parallel = data.get("max_parallel")
    if _number(parallel) and parallel < 1:
        report("max_parallel", f"expected 1 or more, found {parallel}")
    for name in ("soak_seconds", "limit_rate_kbps"):
        value = data.get(name)
        if _number(value) and value < 0:
            report(name, f"expected 0 or more, found {value}")
    timeouts = data.get("timeouts")
    if isinstance(timeouts, dict):
        for name, value in timeouts.items():
            if _number(value) and value <= 0:
                report(f"timeouts.{name}", f"expected a positive number of seconds, found {value}")
    analysis = data.get("analysis")
    if isinstance(analysis, dict):
        gates = ("max_p95_ratio", "max_psi", "max_error_share")
        if all(analysis.get(g) is None for g in gates):
            report("analysis", "expected at least one gate: " + ", ".join(gates))
        ratio, drift, errors = (analysis.get(g) for g in gates)
        if _number(ratio) and ratio <= 0:
            report("analysis.max_p95_ratio", f"expected a positive number, found {ratio}")
        if _number(drift) and drift < 0:
            report("analysis.max_psi", f"expected 0 or more, found {drift}")
        if _number(errors) and not 0 <= errors <= 1:
            report("analysis.max_error_share", f"expected a number in [0, 1], found {errors}")
        least = analysis.get("min_events")
        if _number(least) and least < 1:
            report("analysis.min_events", f"expected 1 or more, found {least}")
        soaks = [data.get("soak_seconds")]
        if strategy == "canary":
            soaks.append((canary if isinstance(canary, dict) else {}).get("soak_seconds", 60.0))
        if isinstance(waves, list):
            soaks += [w.get("soak_seconds") for w in waves if isinstance(w, dict)]
        if not any(_number(x) and x > 0 for x in soaks):
            report(
                "analysis",
                "expected a soak to analyse (soak_seconds, canary.soak_seconds or a wave's "
                "soak_seconds above 0), found none",
            )
    budget = data.get("failure_budget")
    if isinstance(budget, dict):
        count, fraction = budget.get("max_failures"), budget.get("max_fraction")
        if count is not None and fraction is not None:
            report("failure_budget", "expected one of max_failures or max_fraction, not both")
        if _number(count) and count < 0:
            report("failure_budget.max_failures", f"expected 0 or more, found {count}")
        if _number(fraction) and not 0 <= fraction < 1:
            report("failure_budget.max_fraction", f"expected a number in [0, 1), found {fraction}")


def check_rollout_data(data: Any, source: str, expected_name: str | None = None) -> RolloutConfig:
    """Check a loaded mapping; returns the typed strategy or raises SpecError with every problem."""
    problems: list[Problem] = []

    def report(key: str, message: str) -> None:
        problems.append(Problem(source, key, message))

    if not isinstance(data, dict):
        raise SpecError(
            [Problem(source, "", "expected a mapping at the top")], title="invalid rollout"
        )
    check_dataclass(data, RolloutConfig, "", report)
    _check_rules(data, report)
    if expected_name is not None and data.get("name", expected_name) != expected_name:
        report("name", f"expected '{expected_name}' (the file's name), found '{data.get('name')}'")
    if problems:
        raise SpecError(problems, title="invalid rollout")
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RolloutConfig), data))
    assert isinstance(config, RolloutConfig)
    return config


def load_rollout_file(path: Path, source: str | None = None) -> RolloutConfig:
    """Load and check one strategy file (any path); ``source`` is how problems name it."""
    source = source or str(path)
    data = read_yaml(path, source, title="invalid rollout")
    return check_rollout_data(data, source, path.stem)


def load_rollout(name: str, root: Path) -> RolloutConfig:
    """``conf/rollout/<name>.yaml`` (or a path to a strategy file), checked."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        path = path if path.is_absolute() else (root / path)
        if not path.is_file():
            raise SpecError([Problem(CLI, "rollout", f"no rollout file {path}")])
        return load_rollout_file(path)
    options = rollout_options(root)
    if name not in options:
        raise SpecError([Problem(CLI, "rollout", unknown_name_message("rollout", name, options))])
    return load_rollout_file(
        option_file(root, "rollout", name), option_label(root, "rollout", name)
    )


def rollout_to_dict(config: RolloutConfig) -> dict[str, Any]:
    """The strategy as plain data (for the journal: a resumed rollout uses the same one)."""
    data = OmegaConf.to_container(OmegaConf.structured(config))
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}
