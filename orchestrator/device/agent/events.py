"""Prediction events: one per inference, declared by the bundle's runtime.json ``events``.

``infer`` runs the current bundle on every sample of an ``.npz`` (arrays named as
runtime.json's inputs, batch first) and queues one event per sample in the
outbox (:mod:`.outbox`); ``send`` publishes the outbox to the MQTT broker
(:mod:`.sender`); ``run --replay`` does both in a loop and keeps going while
the broker is away. An event carries only the fields the spec names, and the
raw inputs only when the spec says ``include_inputs: true``.
"""

from __future__ import annotations

import os
import time
import uuid

from .clock import iso
from .errors import AgentError, Nothing
from .files import read_json
from .outbox import Outbox
from .runners import load

MAX_VALUES = 64  # a regression or custom output longer than this is summarised, not carried


def events_folder(root: str) -> str:
    return os.path.join(root, "events")


def _softmax(np, x):
    z = x.astype(np.float64) - np.max(x)
    e = np.exp(z)
    return e / np.sum(e)


def _probabilities(np, row, multi_label: bool):
    if multi_label:
        if np.all((row >= 0) & (row <= 1)):
            return row.astype(np.float64)
        return 1.0 / (1.0 + np.exp(-row.astype(np.float64)))
    if np.all(row >= 0) and abs(float(np.sum(row)) - 1.0) < 1e-3:
        return row.astype(np.float64)  # the model already gives probabilities
    return _softmax(np, row)


def summarise(runtime: dict, outputs: list) -> dict:
    """``prediction`` (and ``score``) of one sample's outputs, by the model's task."""
    import numpy as np

    task = runtime.get("task")
    labels = [str(x) for x in runtime.get("labels") or []]
    cfg = runtime.get("events") or {}
    first = np.asarray(outputs[0])[0] if outputs else np.zeros(0)

    def name(i: int) -> str:
        return labels[i] if i < len(labels) else str(i)

    if task == "classification":
        row = first.reshape(-1)
        probs = _probabilities(np, row, bool(cfg.get("multi_label")))
        if cfg.get("multi_label"):
            threshold = float(cfg.get("threshold", 0.5))
            chosen = [name(i) for i in range(len(probs)) if probs[i] >= threshold]
            return {"prediction": chosen, "score": round(float(np.max(probs)), 6)}
        top = int(np.argmax(probs))
        return {"prediction": name(top), "score": round(float(probs[top]), 6)}
    if task == "segmentation":  # [classes, *spatial]: voxels per predicted class
        classes = np.argmax(first, axis=0)
        counts = np.bincount(classes.reshape(-1), minlength=first.shape[0])
        total = int(classes.size)
        return {
            "prediction": {
                "voxels": {name(i): int(c) for i, c in enumerate(counts)},
                "total": total,
                "fraction": {name(i): round(int(c) / total, 6) for i, c in enumerate(counts)},
            },
            "score": None,
        }
    flat = first.reshape(-1)
    if flat.size <= MAX_VALUES:
        return {"prediction": [float(v) for v in flat], "score": None}
    return {
        "prediction": {
            "size": int(flat.size),
            "mean": float(flat.mean()),
            "max": float(flat.max()),
        },
        "score": None,
    }


def make_event(
    runtime: dict, outputs: list, latency_ms: float, context: dict, inputs: dict | None = None
) -> dict:
    """One event with the fields runtime.json's ``events.fields`` names (and always its id)."""
    event = _event(runtime, summarise(runtime, outputs), latency_ms, context)
    if (runtime.get("events") or {}).get("include_inputs") and inputs is not None:
        event["inputs"] = {k: v.tolist() for k, v in inputs.items()}
    return event


def _event(runtime: dict, prediction: dict, latency_ms: float, context: dict) -> dict:
    """The fields runtime.json's ``events.fields`` names, from ``prediction`` and the rest."""
    values = dict(prediction)
    values.update(
        latency_ms=round(latency_ms, 3),
        deployment=runtime.get("deployment"),
        model_sha256=(runtime.get("model") or {}).get("sha256"),
        time=iso(),
        **context,
    )
    event: dict = {"id": str(uuid.uuid4())}
    for field in (runtime.get("events") or {}).get("fields") or []:
        event[field] = values.get(field)
    return event


def error_event(runtime: dict, latency_ms: float, context: dict, exc: BaseException) -> dict:
    """An inference that failed: the event's fields without a prediction, and ``error``."""
    event = _event(runtime, {"prediction": None, "score": None}, latency_ms, context)
    event["error"] = (type(exc).__name__ + ": " + str(exc))[:500]
    return event


def current_bundle(agent) -> tuple:
    """(folder, runtime.json, context) of the active version; Nothing when none is."""
    version = agent.link_version(agent.current)
    if version is None:
        raise Nothing("no current version: activate a bundle first")
    folder = agent.version_dir(version)
    runtime = read_json(os.path.join(folder, "runtime.json"))
    if not runtime.get("events"):
        raise AgentError(
            f"version {version} (deployment {runtime.get('deployment')}) declares no events: "
            "set deployment.events.enabled: true in its spec and ship a new bundle"
        )
    device = agent.device()
    info = (agent.state().get("versions") or {}).get(str(version)) or {}
    context = {
        "version": version,
        "bundle_digest": info.get("manifest_sha256"),
        "device": device.get("name"),
        "fleet": device.get("fleet"),
    }
    return folder, runtime, context


def samples(path: str, runtime: dict) -> list:
    """The samples of an ``.npz`` (arrays named as runtime.json's inputs, batch first)."""
    import numpy as np

    names = [str(t["name"]) for t in runtime["inputs"]]
    with np.load(path) as npz:
        missing = [n for n in names if n not in npz.files]
        if missing:
            raise AgentError(
                f"{path}: expected arrays {names} (runtime.json's inputs), "
                f"found {sorted(npz.files)}"
            )
        arrays = {
            str(t["name"]): np.asarray(npz[t["name"]]).astype(t.get("dtype", "float32"))
            for t in runtime["inputs"]
        }
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise AgentError(f"{path}: the inputs hold different numbers of samples: {sorted(counts)}")
    (count,) = counts
    return [{k: a[i : i + 1] for k, a in arrays.items()} for i in range(count)]


class Inference:
    """The active version loaded once; ``infer(sample)`` runs it and queues the event."""

    def __init__(self, agent) -> None:
        folder, self.runtime, self.context = current_bundle(agent)
        self.runner = load(folder, self.runtime)
        cfg = self.runtime["events"]
        self.outbox = Outbox(events_folder(agent.root), int(cfg.get("outbox_max", 10000)))

    def infer(self, sample: dict) -> dict:
        start = time.perf_counter()
        try:
            outputs = self.runner.run(sample)
        except Exception as exc:  # the failure is an event too (the error share of monitoring)
            latency_ms = (time.perf_counter() - start) * 1000.0
            event = error_event(self.runtime, latency_ms, self.context, exc)
        else:
            latency_ms = (time.perf_counter() - start) * 1000.0
            event = make_event(self.runtime, outputs, latency_ms, self.context, sample)
        self.outbox.add(event)
        return event


def infer(agent, path: str) -> dict:
    """Run every sample of ``path`` through the active version; one event each into the outbox."""
    loop = Inference(agent)
    events = [loop.infer(sample) for sample in samples(path, loop.runtime)]
    stats = loop.outbox.stats()
    loop.outbox.close()
    return {
        "result": "ok",
        "events": len(events),
        "ids": [e["id"] for e in events],
        "outbox": stats,
    }


def _broker_flags(args) -> dict:
    given = {
        "username": args.username,
        "password_file": args.password_file,
        "ca_file": args.ca_file,
    }
    if args.broker:
        host, sep, port = str(args.broker).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise AgentError(f"--broker: expected HOST:PORT, found {args.broker!r}")
        given.update(host=host, port=int(port))
    return given


def events_command(agent, args) -> dict:
    """``infer``, ``send``, ``run`` and ``events`` (see the agent's usage)."""
    from .sender import broker_settings, send, topic

    if args.command == "infer":
        return infer(agent, args.inputs)
    device = agent.device()
    if args.command == "events":
        outbox = Outbox(events_folder(agent.root))
        try:
            return {"result": "ok", "outbox": outbox.stats()}
        finally:
            outbox.close()
    settings = broker_settings(agent.root, _broker_flags(args))
    to = topic(device.get("fleet"), device.get("name"))
    client_id = f"edgeship-{device.get('fleet')}-{device.get('name')}"
    if args.command == "send":
        outbox = Outbox(events_folder(agent.root))
        try:
            return dict(send(outbox, settings, to, client_id, args.timeout), result="ok", topic=to)
        finally:
            outbox.close()
    loop = Inference(agent)
    errors = 0
    sent = 0
    try:
        for sample in samples(args.replay, loop.runtime):
            if agent.link_version(agent.current) != loop.context.get("version"):
                # a rollout (or a rollback) changed the active version: answer with the new one
                try:
                    fresh = Inference(agent)
                except Exception as exc:  # mid-change: keep the loaded version for now
                    agent.log("events_version_not_loaded", message=str(exc))
                else:
                    loop.outbox.close()
                    loop = fresh
                    agent.log("events_version_changed", version=loop.context.get("version"))
            loop.infer(sample)
            try:
                sent += send(loop.outbox, settings, to, client_id, args.timeout)["sent"]
            except AgentError as exc:  # the network is away: the outbox keeps the events
                errors += 1
                agent.log("events_not_sent", message=str(exc))
            time.sleep(max(args.interval, 0.0))
        deadline = time.monotonic() + max(args.drain, 0.0)
        while loop.outbox.stats()["pending"] and time.monotonic() < deadline:
            try:
                sent += send(loop.outbox, settings, to, client_id, args.timeout)["sent"]
            except AgentError as exc:
                errors += 1
                agent.log("events_not_sent", message=str(exc))
                time.sleep(1.0)
        stats = loop.outbox.stats()
    finally:
        loop.outbox.close()
    return {
        "result": "ok" if not stats["pending"] else "pending",
        "sent": sent,
        "send_errors": errors,
        "outbox": stats,
        "topic": to,
    }
