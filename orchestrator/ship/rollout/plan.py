"""From a strategy and a fleet to the waves of a rollout: which devices, in which order.

Selection: the strategy's ``select`` and the command line's selectors (``device=``,
``group=``, and labels such as ``site=north ward=icu``) must all hold; devices whose
target family is not the bundle's are left out (and listed as such). Fleet order is
kept, so a plan is the same every time for the same inputs.

Waves: ``all_at_once`` is one wave; ``canary`` is the canary devices, then the rest;
``waves`` turns cumulative counts and fractions into the devices each wave adds
(fractions round up; a wave that would add nobody is dropped).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.fleet import DeviceConfig, FleetConfig
from orchestrator.spec.strategy import RolloutConfig, SelectorConfig


@dataclass
class Selection:
    """Device selectors from the command line (every given one must hold)."""

    devices: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    labels: dict[str, list[str]] = field(default_factory=dict)  # label -> accepted values

    def empty(self) -> bool:
        return not (self.devices or self.groups or self.labels)

    def describe(self) -> str:
        parts = []
        if self.devices:
            parts.append("device=" + ",".join(self.devices))
        if self.groups:
            parts.append("group=" + ",".join(self.groups))
        parts += [f"{k}={','.join(v)}" for k, v in self.labels.items()]
        return " ".join(parts) or "every device"


@dataclass
class Wave:
    """One wave of a plan."""

    index: int  # 1-based
    name: str  # "canary", "rest", "wave 2", "all"
    devices: list[str]
    soak_seconds: float  # wait after this wave, then re-check health (0: none)
    allowed_failures: int  # failures this wave tolerates; one more halts the rollout

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """The waves of a rollout and the devices left out of it."""

    waves: list[Wave]
    excluded: dict[str, str] = field(default_factory=dict)  # device -> why it is left out

    @property
    def devices(self) -> list[str]:
        return [d for w in self.waves for d in w.devices]

    def to_json(self) -> dict[str, Any]:
        return {"waves": [w.to_json() for w in self.waves], "excluded": self.excluded}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls([Wave(**w) for w in data["waves"]], dict(data.get("excluded") or {}))


def _selector(fleet: FleetConfig, sel: SelectorConfig, source: str) -> list[DeviceConfig]:
    labels = {k: [v] for k, v in sel.labels.items()}
    return fleet.select(sel.devices or None, sel.groups or None, labels, source=source)


def select_devices(
    fleet: FleetConfig, strategy: RolloutConfig, selection: Selection, source: str
) -> list[DeviceConfig]:
    """Devices both the strategy's ``select`` and the command line's selectors choose."""
    chosen = _selector(fleet, strategy.select, f"{source}: select")
    if not selection.empty():
        wanted = {
            d.name
            for d in fleet.select(
                selection.devices or None, selection.groups or None, selection.labels
            )
        }
        chosen = [d for d in chosen if d.name in wanted]
    return chosen


def plan_rollout(
    fleet: FleetConfig,
    strategy: RolloutConfig,
    family: str,
    selection: Selection | None = None,
    source: str = "rollout",
) -> Plan:
    """The waves of ``strategy`` over the selected devices of ``fleet`` that run ``family``."""
    selection = selection or Selection()
    chosen = select_devices(fleet, strategy, selection, source)
    excluded = {
        d.name: f"target family {d.family}; the bundle is for {family}"
        for d in chosen
        if d.family != family
    }
    devices = [d.name for d in chosen if d.family == family]
    if not devices:
        if fleet.feed is not None and not fleet.devices:
            raise SpecError(
                [
                    Problem(
                        "command line",
                        "fleet",
                        f"fleet {fleet.name} is phones polling a feed (no SSH devices); "
                        f"publish to it with: edgeship publish deployment=NAME "
                        f"fleet={fleet.name} channel=CHANNEL",
                    )
                ],
                title="nothing to roll out",
            )
        why = f" ({len(excluded)} left out for their target family)" if excluded else ""
        raise SpecError(
            [
                Problem(
                    "command line",
                    "selection",
                    f"no device of fleet {fleet.name} matches {selection.describe()}"
                    f" and the strategy's select{why}",
                )
            ],
            title="nothing to roll out",
        )
    budget = strategy.failure_budget
    waves: list[Wave] = []

    def add(name: str, members: list[str], soak: float) -> None:
        if members:
            waves.append(
                Wave(len(waves) + 1, name, members, max(soak, 0.0), budget.allowed(len(members)))
            )

    if strategy.strategy == "all_at_once":
        add("all", devices, 0.0)
    elif strategy.strategy == "canary":
        canary = strategy.canary
        assert canary is not None
        candidates = {d.name for d in _selector(fleet, canary.select, f"{source}: canary.select")}
        matching = [d for d in devices if d in candidates]
        if not matching:
            raise SpecError(
                [
                    Problem(
                        source,
                        "canary.select",
                        "matches none of the selected devices: "
                        + ", ".join(devices[:10])
                        + (" ..." if len(devices) > 10 else ""),
                    )
                ],
                title="nothing to roll out",
            )
        first = matching[: canary.count] if canary.count else matching
        add("canary", first, canary.soak_seconds)
        add("rest", [d for d in devices if d not in first], 0.0)
    else:
        done = 0
        total = len(devices)
        for wave in strategy.waves:
            if wave.count is not None:
                target = min(wave.count, total)
            else:
                target = min(math.ceil((wave.fraction or 0.0) * total - 1e-9), total)
            soak = strategy.soak_seconds if wave.soak_seconds is None else wave.soak_seconds
            name = (
                f"up to {wave.count} device(s)"
                if wave.count is not None
                else f"up to {wave.fraction:.0%}"
            )
            if target > done:
                add(name, devices[done:target], soak)
                done = target
        add("rest", devices[done:], 0.0)
    if waves:
        waves[-1].soak_seconds = 0.0
    return Plan(waves, excluded)
