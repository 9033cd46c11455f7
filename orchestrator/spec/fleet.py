"""Fleets: ``conf/fleet/<name>.yaml`` inventories of SSH devices, strictly checked.

A fleet is not part of a deployment's composition (it does not change what is
built), so it has its own loader: :func:`load_fleet` reads one file, checks it
against :class:`FleetConfig`, and reports every problem at once (unknown keys,
wrong types, unknown target families, duplicate device names or addresses,
undeclared groups and declared groups without devices).

Every device field but ``name``, ``address`` and ``family`` may come from the
fleet's ``defaults``; :func:`load_fleet` fills them in, expands ``~`` and makes
paths absolute (relative ones are relative to the project root).

A fleet of phones has no SSH devices: it names a ``feed`` instead, the host that
serves the signed update feed its apps poll (see :mod:`orchestrator.ship.feed`).
"""

# OmegaConf resolves typing.List/Dict/Optional; keep them here.
# ruff: noqa: UP006, UP035, UP045

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, OmegaConf

from orchestrator.core.typecheck import check_dataclass, unknown_name_message
from orchestrator.errors import Problem, SpecError
from orchestrator.spec.files import read_yaml

DEFAULT_INSTALL_ROOT = "/opt/edgeship"
DEFAULT_AGENT_USER = "edgeship"
# a portable user name (useradd's and POSIX's): lower case, digits, '_' and '-', 32 at most
AGENT_USER_PATTERN = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
CLI = "command line"


@dataclass
class DeviceLabels:
    """Where a device stands, for people and for selecting devices."""

    site: str = ""  # hospital or campus
    ward: str = ""  # ward or department
    bed: str = ""  # bed or room (a string: "12", "ICU-3")


@dataclass
class DeviceDefaults:
    """Values every device of the fleet takes unless it sets its own."""

    family: str = ""  # registered target family (see `edgeship list`)
    user: str = "root"  # SSH user
    port: int = 22  # SSH port
    identity_file: str = ""  # SSH private key; ~ expanded, relative to the project root
    install_root: str = DEFAULT_INSTALL_ROOT  # where the agent, versions and log live
    python: str = "python3"  # the device's interpreter that runs the agent
    agent_user: str = DEFAULT_AGENT_USER  # user the agent and health check run as (enrolling
    #                                       as root creates it; `root` runs them as root)


@dataclass
class DeviceConfig:
    """One device. Empty strings and port 0 mean: take the fleet's default."""

    name: str = MISSING  # unique within the fleet
    address: str = ""  # IP address or DNS name (SSH fleets; a pull fleet's devices need none)
    family: str = ""  # registered target family
    port: int = 0  # SSH port
    user: str = ""  # SSH user
    identity_file: str = ""  # SSH private key
    install_root: str = ""  # agent install root on the device
    python: str = ""  # the device's interpreter for the agent
    agent_user: str = ""  # user the agent and health check run as
    host_key: str = ""  # pinned host key "ssh-ed25519 AAAA..." (else pinned at enrolment)
    lab: bool = False  # a lab device: builds measure candidates here (deployment.validate_on)
    labels: DeviceLabels = field(default_factory=DeviceLabels)  # site, ward, bed
    groups: List[str] = field(default_factory=list)  # groups declared in the fleet's `groups`


@dataclass
class FeedConfig:
    """The host serving a phone fleet's signed update feed, reached over SSH to publish."""

    host: str = MISSING  # address of the feed host
    port: int = 22  # SSH port
    user: str = "root"  # SSH user
    identity_file: str = ""  # SSH private key (default: defaults.identity_file)
    host_key: str = ""  # pinned host key "ssh-ed25519 AAAA..." (else pinned at enrolment)
    path: str = MISSING  # folder on the feed host its web server serves
    base_url: str = MISSING  # URL at which apps fetch that folder
    channels: List[str] = field(default_factory=lambda: ["stable", "beta"])  # channels offered
    index_valid_days: float = 7.0  # apps refuse an index older than this (stale feed)
    timestamp_valid_hours: float = 24.0  # apps refuse a feed whose freshness timestamp is older


@dataclass
class FleetEventsConfig:
    """The MQTT broker a fleet's devices send prediction events to; enrolment issues each
    device its own credential in ``password_file`` and its own topic in ``acl_file``."""

    broker: str = MISSING  # HOST:PORT the devices publish to (TLS when ca_file is set)
    ca_file: str = ""  # CA of the broker's TLS certificate, copied to each device
    password_file: str = MISSING  # the broker's password file (Mosquitto's format)
    acl_file: str = MISSING  # the broker's ACL file (Mosquitto's format)
    pid_file: str = ""  # a broker on this machine: enrolment sends this pid SIGHUP (re-read)
    reload: List[str] = field(default_factory=list)  # or a command that makes the broker
    #                                                  re-read its files, e.g. [systemctl,
    #                                                  reload, mosquitto]; run after enrolment


@dataclass
class PullConfig:
    """Devices that poll: the signed repository they fetch and where they report."""

    base_url: str = MISSING  # URL at which devices fetch the bundles repository (static files)
    reports_url: str = MISSING  # URL devices POST their reports to
    reports_listen: str = "127.0.0.1:8471"  # HOST:PORT the rollout's report receiver listens on
    poll_seconds: float = 60.0  # how often devices poll (a wave waits at least about this long)
    wave_timeout_seconds: float = 3600.0  # a device silent this long after its wave opened fails


@dataclass
class FleetConfig:
    """An inventory of devices reached over SSH (or, for phones, the feed they poll)."""

    name: str = MISSING  # fleet identifier; the file is conf/fleet/<name>.yaml
    description: str = ""  # one line for people
    known_hosts: str = ""  # pinned host keys (default conf/fleet/<name>.known_hosts)
    mlflow_alias: str = ""  # alias a completed rollout sets on the model version
    #                         (default production-<name>)
    defaults: DeviceDefaults = field(default_factory=DeviceDefaults)  # shared device values
    groups: Dict[str, str] = field(default_factory=dict)  # group name -> description
    feed: Optional[FeedConfig] = None  # phones: the update feed's host (publish target)
    events: Optional[FleetEventsConfig] = None  # the events broker (credentials at enrolment)
    pull: Optional[PullConfig] = None  # devices poll a signed repository (docs/scale.md)
    devices: List[DeviceConfig] = MISSING  # the devices (may be empty when `feed` is set)
    requires: List[str] = field(default_factory=list)  # [approved]: bundles need an approval
    two_person: bool = False  # the approver must be neither the builder nor the bundler

    @property
    def alias(self) -> str:
        """The MLflow alias of the model version this fleet runs."""
        return self.mlflow_alias or f"production-{self.name}"

    def device(self, name: str) -> DeviceConfig:
        """The device called ``name``."""
        for dev in self.devices:
            if dev.name == name:
                return dev
        raise SpecError(
            [Problem(CLI, "device", unknown_name_message("device", name, self.names()))]
        )

    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    def select(
        self,
        names: list[str] | None = None,
        groups: list[str] | None = None,
        labels: dict[str, list[str]] | None = None,
        source: str = CLI,
    ) -> list[DeviceConfig]:
        """Devices chosen by name, group and labels, in fleet order.

        A device is chosen when it is named in ``names`` or is in one of ``groups`` (every
        device when both are empty), and its label ``key`` is one of ``labels[key]`` for
        every key given.
        """
        problems = [
            Problem(source, "device", unknown_name_message("device", n, self.names()))
            for n in names or []
            if n not in self.names()
        ]
        problems += [
            Problem(source, "group", unknown_name_message("group", g, self.groups))
            for g in groups or []
            if g not in self.groups
        ]
        problems += [
            Problem(source, key, unknown_name_message("label", key, LABEL_KEYS))
            for key in labels or {}
            if key not in LABEL_KEYS
        ]
        if problems:
            raise SpecError(problems, title=f"invalid device selection for fleet {self.name}")
        chosen = (
            list(self.devices)
            if not names and not groups
            else [
                d
                for d in self.devices
                if d.name in (names or []) or any(g in d.groups for g in groups or [])
            ]
        )
        return [d for d in chosen if labels_match(d, labels or {})]

    def feed_host(self) -> DeviceConfig:
        """The feed host as an SSH endpoint (``install_root`` is the feed folder)."""
        if self.feed is None:
            raise SpecError(
                [Problem(CLI, "fleet", f"fleet {self.name} has no `feed:` section (phones)")]
            )
        f = self.feed
        return DeviceConfig(
            name=f"{self.name}-feed",
            address=f.host,
            family="",
            port=f.port,
            user=f.user,
            identity_file=f.identity_file or self.defaults.identity_file,
            install_root=f.path,
            python="",
            host_key=f.host_key,
        )


FLEET_REQUIREMENTS = ("approved",)  # what `requires:` may name
LABEL_KEYS = tuple(f.name for f in dataclasses.fields(DeviceLabels))


def lab_devices(fleet: FleetConfig, family: str) -> list[DeviceConfig]:
    """The fleet's lab devices of a target family, in fleet order."""
    return [d for d in fleet.devices if d.lab and d.family == family]


def find_lab_device(
    root: Path, family: str, fleet_name: str = "", device_name: str = ""
) -> tuple[FleetConfig, DeviceConfig]:
    """The lab device a build measures on: ``device_name`` (else the first lab device of
    ``family``) of ``fleet_name`` (else of the one fleet under conf/fleet/ that has a lab
    device of ``family``). SpecError (key ``deployment.validate_on.*``) when there is none."""
    key = "deployment.validate_on"
    if fleet_name:
        fleets = [load_fleet(fleet_name, root)]
    else:
        fleets = []
        for option in fleet_options(root):
            try:
                fleet = load_fleet(option, root)
            except SpecError:
                continue  # a broken fleet file is reported when it is used
            if lab_devices(fleet, family):
                fleets.append(fleet)
        if len(fleets) != 1:
            found = ", ".join(f.name for f in fleets) or "none"
            raise SpecError(
                [
                    Problem(
                        CLI,
                        f"{key}.fleet",
                        f"expected the fleet whose lab device measures (family {family}); "
                        + (
                            f"fleets with one: {found}; name one with validate_on.fleet=NAME"
                            if fleets
                            else "no fleet under conf/fleet/ has a device with `lab: true` of "
                            f"family {family}"
                        ),
                    )
                ]
            )
    fleet = fleets[0]
    chosen = lab_devices(fleet, family)
    if device_name:
        named = [d for d in fleet.devices if d.name == device_name]
        if not named:
            raise SpecError(
                [
                    Problem(
                        CLI,
                        f"{key}.device",
                        unknown_name_message("device", device_name, fleet.names()),
                    )
                ]
            )
        dev = named[0]
        if not dev.lab or dev.family != family:
            raise SpecError(
                [
                    Problem(
                        CLI,
                        f"{key}.device",
                        f"expected a lab device (lab: true) of family {family}; {dev.name} of "
                        f"fleet {fleet.name} is "
                        + ("a lab device" if dev.lab else "not a lab device")
                        + f" of family {dev.family}",
                    )
                ]
            )
        return fleet, dev
    if not chosen:
        labs = ", ".join(f"{d.name} ({d.family})" for d in fleet.devices if d.lab) or "none"
        raise SpecError(
            [
                Problem(
                    CLI,
                    f"{key}.fleet",
                    f"fleet {fleet.name} has no lab device of family {family} (expected a device "
                    f"with `lab: true` and family {family}; lab devices: " + f"{labs})",
                )
            ]
        )
    return fleet, chosen[0]


def device_labels(device: DeviceConfig) -> dict[str, str]:
    """A device's labels as a mapping (empty ones left out)."""
    return {k: v for k in LABEL_KEYS if (v := str(getattr(device.labels, k) or ""))}


def labels_match(device: DeviceConfig, labels: dict[str, list[str]]) -> bool:
    """Whether the device's label ``key`` is one of ``labels[key]`` for every key."""
    return all(str(getattr(device.labels, k, "")) in values for k, values in labels.items())


def _resolve_path(value: str, root: Path) -> str:
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (root / path))


def fleet_options(root: Path) -> list[str]:
    """The fleets under ``conf/fleet/``."""
    return sorted(p.stem for p in (root / "conf" / "fleet").glob("*.yaml"))


def _cross_check(data: dict[str, Any], report: Any, families: list[str]) -> None:
    defaults = data.get("defaults") or {}
    declared = data.get("groups") or {}
    devices = data.get("devices") or []
    if (
        not isinstance(defaults, dict)
        or not isinstance(declared, dict)
        or not isinstance(devices, list)
    ):
        return
    for key, value in [("defaults.agent_user", defaults.get("agent_user"))] + [
        (f"devices[{i}].agent_user", dev.get("agent_user"))
        for i, dev in enumerate(devices)
        if isinstance(dev, dict)
    ]:
        if isinstance(value, str) and value and not AGENT_USER_PATTERN.fullmatch(value):
            report(
                key,
                "expected a user name (lower-case letters, digits, '_' and '-', starting with a "
                f"letter or '_', at most 32 characters), found '{value}'",
            )
        elif value == "" and key.startswith("defaults."):
            report(key, f"expected a user name (default {DEFAULT_AGENT_USER}), found ''")
    default_family = defaults.get("family", "")
    if default_family and isinstance(default_family, str) and default_family not in families:
        report("defaults.family", unknown_name_message("target family", default_family, families))
    pull = isinstance(data.get("pull"), dict)
    seen: dict[str, int] = {}
    endpoints: dict[tuple[str, int], int] = {}
    used: set[str] = set()
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict):
            continue
        name = dev.get("name")
        if isinstance(name, str):
            if name in seen:
                report(
                    f"devices[{i}].name",
                    f"duplicate device name '{name}' (also devices[{seen[name]}])",
                )
            else:
                seen[name] = i
        family = dev.get("family") or default_family
        if isinstance(family, str):
            if not family:
                report(
                    f"devices[{i}].family",
                    "missing; set it here or in defaults.family; expected one of: "
                    + ", ".join(families),
                )
            elif dev.get("family") and family not in families:
                report(
                    f"devices[{i}].family", unknown_name_message("target family", family, families)
                )
        if not pull:  # devices that poll the repository have no SSH endpoint and no key
            if not dev.get("address"):
                report(
                    f"devices[{i}].address",
                    "missing; expected the device's IP address or DNS name (devices of a fleet "
                    "with a `pull:` section poll instead and need none)",
                )
            identity = dev.get("identity_file") or defaults.get("identity_file")
            if not identity:
                report(
                    f"devices[{i}].identity_file",
                    "missing; set it here or in defaults.identity_file",
                )
            address, port = dev.get("address"), dev.get("port") or defaults.get("port", 22)
            if isinstance(address, str) and isinstance(port, int):
                if (address, port) in endpoints:
                    report(
                        f"devices[{i}].address",
                        f"{address}:{port} is already devices[{endpoints[(address, port)]}]",
                    )
                else:
                    endpoints[(address, port)] = i
        host_key = dev.get("host_key")
        if isinstance(host_key, str) and host_key and len(host_key.split()) < 2:
            report(
                f"devices[{i}].host_key",
                f"expected 'TYPE BASE64' (e.g. ssh-ed25519 AAAA...), found '{host_key}'",
            )
        for j, group in enumerate(dev.get("groups") or []):
            if isinstance(group, str):
                used.add(group)
                if group not in declared:
                    report(
                        f"devices[{i}].groups[{j}]", unknown_name_message("group", group, declared)
                    )
    for group in declared:
        if group not in used:
            report(f"groups.{group}", "declared but no device is in it")
    feed = data.get("feed")
    if isinstance(data.get("devices"), list) and not devices and not isinstance(feed, dict):
        report("devices", "expected at least one device (or a `feed:` section for phones)")
    if isinstance(feed, dict):
        if not feed.get("identity_file") and not defaults.get("identity_file"):
            report("feed.identity_file", "missing; set it here or in defaults.identity_file")
        url = feed.get("base_url")
        if isinstance(url, str) and not url.startswith(("http://", "https://")):
            report("feed.base_url", f"expected an http:// or https:// URL, found '{url}'")
        channels = feed.get("channels")
        if isinstance(channels, list):
            for j, channel in enumerate(channels):
                if isinstance(channel, str) and not channel.replace("-", "").isalnum():
                    report(
                        f"feed.channels[{j}]",
                        f"expected letters, digits and '-', found '{channel}'",
                    )
        days = feed.get("index_valid_days")
        if isinstance(days, int | float) and not isinstance(days, bool) and days <= 0:
            report("feed.index_valid_days", f"expected a positive number, found {days}")
        hours = feed.get("timestamp_valid_hours")
        if isinstance(hours, int | float) and not isinstance(hours, bool) and hours <= 0:
            report("feed.timestamp_valid_hours", f"expected a positive number, found {hours}")
    events = data.get("events")
    if isinstance(events, dict):
        broker = events.get("broker")
        if isinstance(broker, str):
            host, sep, port = broker.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                report("events.broker", f"expected HOST:PORT (port 1-65535), found '{broker}'")
        reload = events.get("reload")
        if isinstance(reload, list) and not all(isinstance(a, str) and a for a in reload):
            report(
                "events.reload", f"expected a program and its arguments (strings), found {reload}"
            )
        if events.get("pid_file") and reload:
            report(
                "events.reload",
                "expected pid_file or reload (how the broker reads its files again), found both",
            )


def load_fleet(name: str, root: Path) -> FleetConfig:
    """Load, check and resolve ``conf/fleet/<name>.yaml`` (every problem reported at once).

    ``name`` may also be a path to a fleet file (``*.yaml`` or containing ``/``).
    """
    from targets.base import registered_targets

    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        path = path if path.is_absolute() else (root / path)
        if not path.is_file():
            raise SpecError([Problem(CLI, "fleet", f"no fleet file {path}")])
        return load_fleet_file(path, root)
    options = fleet_options(root)
    if name not in options:
        raise SpecError([Problem(CLI, "fleet", unknown_name_message("fleet", name, options))])
    rel = f"conf/fleet/{name}.yaml"
    return load_fleet_file(root / rel, root, rel, sorted(registered_targets()))


def load_fleet_file(
    path: Path, root: Path, source: str | None = None, families: list[str] | None = None
) -> FleetConfig:
    """Load one fleet file (any path); ``source`` is how problems name it."""
    from targets.base import registered_targets

    source = source or str(path)
    families = families if families is not None else sorted(registered_targets())
    problems: list[Problem] = []

    def report(key: str, message: str) -> None:
        problems.append(Problem(source, key, message))

    data = read_yaml(path, source)
    if not isinstance(data, dict):
        raise SpecError(
            [Problem(source, "", "expected a mapping at the top")], title="invalid fleet"
        )
    check_dataclass(data, FleetConfig, "", report)
    requires = data.get("requires")
    if isinstance(requires, list):
        for i, item in enumerate(requires):
            if isinstance(item, str) and item not in FLEET_REQUIREMENTS:
                report(
                    f"requires[{i}]",
                    f"expected one of {', '.join(FLEET_REQUIREMENTS)}, found {item!r}",
                )
    _cross_check(data, report, families)
    if path.stem != data.get("name", path.stem):
        report("name", f"expected '{path.stem}' (the file's name), found '{data.get('name')}'")
    events = data.get("events")
    if isinstance(events, dict):
        ca = events.get("ca_file")
        if isinstance(ca, str) and ca and not Path(_resolve_path(ca, root)).is_file():
            report("events.ca_file", f"expected an existing CA certificate file, found '{ca}'")
        for key in ("password_file", "acl_file"):
            value = events.get(key)
            if isinstance(value, str) and value:
                folder = Path(_resolve_path(value, root)).parent
                if not folder.is_dir():
                    report(
                        f"events.{key}",
                        f"expected a file in an existing folder, found '{value}' "
                        f"(no folder {folder})",
                    )
    if problems:
        raise SpecError(problems, title="invalid fleet")
    fleet = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FleetConfig), data))
    assert isinstance(fleet, FleetConfig)
    return _resolve(fleet, root)


def _resolve(fleet: FleetConfig, root: Path) -> FleetConfig:
    fleet = copy.deepcopy(fleet)
    root = root.resolve()
    d = fleet.defaults
    fleet.known_hosts = _resolve_path(
        fleet.known_hosts or f"conf/fleet/{fleet.name}.known_hosts", root
    )
    if fleet.events is not None:
        for key in ("ca_file", "password_file", "acl_file", "pid_file"):
            setattr(fleet.events, key, _resolve_path(getattr(fleet.events, key), root))
    if fleet.feed is not None:
        fleet.feed.identity_file = _resolve_path(fleet.feed.identity_file or d.identity_file, root)
    for dev in fleet.devices:
        dev.family = dev.family or d.family
        dev.port = dev.port or d.port
        dev.user = dev.user or d.user
        dev.identity_file = _resolve_path(dev.identity_file or d.identity_file, root)
        dev.install_root = dev.install_root or d.install_root
        dev.python = dev.python or d.python
        dev.agent_user = dev.agent_user or d.agent_user
    return fleet
