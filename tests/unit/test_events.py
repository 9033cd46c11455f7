"""Events pieces without services: the outbox, event summaries, rule conditions, episodes,
strict rule files and the spec's events section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.device.agent.events import error_event, make_event, summarise
from orchestrator.device.agent.outbox import Outbox
from orchestrator.errors import SpecError
from orchestrator.events.rules import Condition, ConditionError, Episodes, load_rules
from orchestrator.spec.rules import check_events


def test_outbox_drops_the_oldest_when_full_and_counts_them(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path), limit=3)
    dropped = [box.add({"id": f"e{i}"}) for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [body for _, body in box.pending()] == ['{"id":"e2"}', '{"id":"e3"}', '{"id":"e4"}']
    box.remove([seq for seq, _ in box.pending(2)])
    assert box.stats() == {"pending": 1, "sent": 2, "dropped": 2, "limit": 3}
    box.close()
    again = Outbox(str(tmp_path))  # a reader without a limit sees the one set by the writer
    assert again.stats() == {"pending": 1, "sent": 2, "dropped": 2, "limit": 3}
    assert again.add({"id": "e4"}) == 0 and again.stats()["pending"] == 1  # same id: kept once


def test_event_carries_only_the_declared_fields_and_no_inputs_unless_asked() -> None:
    runtime = {
        "task": "classification",
        "labels": ["a", "b"],
        "deployment": "demo",
        "events": {"fields": ["prediction", "score", "device"], "include_inputs": False},
    }
    x = {"x": np.ones((1, 2), np.float32)}
    event = make_event(runtime, [np.array([[0.0, 3.0]])], 1.5, {"device": "d1", "fleet": "f"}, x)
    assert sorted(event) == ["device", "id", "prediction", "score"]
    assert event["prediction"] == "b" and 0.95 < event["score"] < 0.96
    runtime["events"]["include_inputs"] = True
    assert make_event(runtime, [np.array([[0.0, 3.0]])], 1.5, {}, x)["inputs"] == {"x": [[1, 1]]}


def test_a_failed_inference_is_an_event_with_its_error() -> None:
    runtime = {"deployment": "demo", "events": {"fields": ["prediction", "latency_ms", "device"]}}
    event = error_event(runtime, 2.5, {"device": "d1"}, RuntimeError("shape mismatch"))
    assert sorted(event) == ["device", "error", "id", "latency_ms", "prediction"]
    assert event["prediction"] is None and event["error"] == "RuntimeError: shape mismatch"


def test_segmentation_event_counts_voxels_per_class() -> None:
    logits = np.zeros((1, 3, 2, 2, 2), np.float32)
    logits[0, 1, 0] = 5.0  # 4 voxels of class 1
    logits[0, 2, 1, 0, 0] = 5.0  # 1 voxel of class 2
    got = summarise({"task": "segmentation", "labels": ["bg", "liver", "tumour"]}, [logits])
    assert got["prediction"]["voxels"] == {"bg": 3, "liver": 4, "tumour": 1}
    assert got["prediction"]["total"] == 8


@pytest.mark.parametrize(
    ("text", "event", "holds"),
    [
        (
            'prediction == "Running" and score >= 0.9',
            {"prediction": "Running", "score": 0.95},
            True,
        ),
        (
            'prediction == "Running" and score >= 0.9',
            {"prediction": "Running", "score": 0.5},
            False,
        ),
        ('prediction == "Running" and score >= 0.9', {"prediction": "Running"}, False),
        ('prediction["voxels"]["tumour"] > 10', {"prediction": {"voxels": {"tumour": 11}}}, True),
        ('prediction["voxels"]["tumour"] > 10', {"prediction": "x"}, False),
        ('device in ["a", "b"] and not latency_ms > 5', {"device": "a", "latency_ms": 1}, True),
    ],
)
def test_condition_holds(text: str, event: dict, holds: bool) -> None:
    assert Condition(text).holds(event) is holds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scor > 1", "unknown event field 'scor'"),
        ("__import__('os')", "unsupported Call"),
        ("score >", "invalid expression"),
        ("prediction.upper", "unsupported Attribute"),
    ],
)
def test_condition_refuses_what_is_not_the_rule_language(text: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message.replace("(", r"\(")):
        Condition(text)


def _rules(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "conf" / "actions"
    folder.mkdir(parents=True)
    (folder / "running.yaml").write_text(text)
    return tmp_path


def test_episodes_fire_once_per_run_of_consecutive_matches(tmp_path: Path) -> None:
    root = _rules(
        tmp_path,
        'name: running\nwhen: prediction == "R"\nconsecutive: 2\n'
        "webhook: {url: 'http://127.0.0.1:1/x'}\n",
    )
    episodes = Episodes(load_rules(root))
    feed = [("R", "a"), ("R", "b"), ("R", "a"), ("R", "a"), ("W", "a"), ("R", "a"), ("R", "b")]
    feed.append(("R", "a"))
    fired = [bool(episodes.feed({"prediction": p}, device)) for p, device in feed]
    assert fired == [False, False, True, False, False, False, True, True]


def test_rule_files_are_checked_strictly(tmp_path: Path) -> None:
    root = _rules(
        tmp_path,
        "name: walking\nwhen: scor > 1\nconsecutive: 0\nretry: 3\n"
        "webhook: {url: 'ftp://x', backoff: -1}\n",
    )
    with pytest.raises(SpecError) as err:
        load_rules(root)
    got = {p.key: p.message for p in err.value.problems}
    assert {p.source for p in err.value.problems} == {"conf/actions/running.yaml"}
    assert got["retry"].startswith("unknown key 'retry'")
    assert got["name"] == "expected 'running' (the file name), found 'walking'"
    assert got["consecutive"] == "expected 1 or more, found 0"
    assert got["when"].startswith("unknown event field 'scor'")
    assert got["webhook.url"] == "expected an http:// or https:// address, found 'ftp://x'"
    assert got["webhook.backoff"] == "expected 0 or more, found -1"


def test_a_rule_has_exactly_one_action_and_a_command_is_a_list_of_strings(tmp_path: Path) -> None:
    base = 'name: running\nwhen: prediction == "R"\n'
    cases = {
        "": (
            "webhook",
            "expected the rule's action: webhook (an HTTP POST) or command, found neither",
        ),
        "webhook: {url: 'http://h/x'}\ncommand: {argv: [true]}\n": (
            "command",
            "expected one action per rule, found both webhook and command",
        ),
        "command: {argv: [], timeout: -2}\n": (
            "command.argv",
            "expected a program and its arguments (strings), found []",
        ),
    }
    for extra, (key, message) in cases.items():
        with pytest.raises(SpecError) as err:
            load_rules(_rules(tmp_path / str(len(extra)), base + extra))
        assert {p.key: p.message for p in err.value.problems}[key] == message
    with pytest.raises(SpecError) as err:
        load_rules(_rules(tmp_path / "t", base + "command: {argv: [tee], timeout: -2}\n"))
    assert [(p.key, p.message) for p in err.value.problems] == [
        ("command.timeout", "expected 0 or more, found -2")
    ]
    (rule,) = load_rules(_rules(tmp_path / "ok", base + "command: {argv: [tee, -a, out]}\n"))
    assert rule.config.webhook is None and rule.config.command is not None
    assert list(rule.config.command.argv) == ["tee", "-a", "out"]


def test_a_command_action_reads_the_body_on_stdin_and_is_retried(tmp_path: Path) -> None:
    from orchestrator.core.schema import CommandActionConfig
    from orchestrator.events.actions import run_command

    body = {"rule": "running", "device": "bed-01", "events": [{"id": "e1"}]}
    ok = run_command(CommandActionConfig(argv=["tee", "-a", "alerts.jsonl"]), body, tmp_path)
    assert ok == {"delivered": True, "exit": 0, "attempts": 1}
    import json

    assert [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()] == [body]
    waits: list[float] = []
    failing = CommandActionConfig(
        argv=["sh", "-c", "cat > /dev/null; echo paging gateway down >&2; exit 3"],
        retries=2,
        backoff=0.5,
    )
    out = run_command(failing, body, tmp_path, sleep=waits.append)
    assert out == {"delivered": False, "attempts": 3, "error": "exit 3: paging gateway down"}
    assert waits == [0.5, 1.0]
    missing = run_command(CommandActionConfig(argv=["no-such-program-x"]), body, tmp_path)
    assert missing["delivered"] is False and missing["error"].startswith(
        "cannot run no-such-program-x"
    )
    slow = run_command(CommandActionConfig(argv=["sleep", "5"], timeout=0.2), body, tmp_path)
    assert slow["error"] == "still running after 0.2s; stopped"


def test_spec_events_section_rules() -> None:
    problems: list[tuple[str, str]] = []
    spec = {
        "deployment": {
            "events": {
                "enabled": False,
                "fields": ["prediction", "scores", "prediction"],
                "include_inputs": True,
                "outbox_max": 0,
            }
        }
    }
    check_events(spec, lambda key, msg: problems.append((key, msg)))
    keys = [k for k, _ in problems]
    assert keys == [
        "deployment.events.fields[1]",
        "deployment.events.fields[2]",
        "deployment.events.outbox_max",
        "deployment.events.include_inputs",
    ]
    assert "did you mean 'score'" in problems[0][1]
