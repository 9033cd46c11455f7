"""Third-party output (NNCF's bars and INFO lines on stdout) goes to edgeship's log; with
-v (edgeship logging at INFO) it is left as it is."""

from __future__ import annotations

import logging

import pytest

from orchestrator.core.quiet import third_party_output


def test_stdout_and_library_info_go_to_the_log(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    lib = logging.getLogger("somelib")
    lib.setLevel(logging.INFO)
    with caplog.at_level(logging.DEBUG, logger="edgeship.thirdparty"):
        logging.getLogger("edgeship").setLevel(logging.WARNING)
        with third_party_output("somelib", ("somelib",)):
            print("Statistics collection ━━━━ 100% 32/32\rdone")
            assert lib.level == logging.WARNING
    assert capsys.readouterr().out == ""
    assert lib.level == logging.INFO  # restored
    messages = [r.getMessage() for r in caplog.records if r.name == "edgeship.thirdparty.somelib"]
    assert messages == ["Statistics collection ━━━━ 100% 32/32", "done"]


def test_verbose_leaves_third_party_output_alone(capsys: pytest.CaptureFixture[str]) -> None:
    edgeship = logging.getLogger("edgeship")
    old = edgeship.level
    edgeship.setLevel(logging.INFO)
    try:
        with third_party_output("somelib"):
            print("shown as it is")
    finally:
        edgeship.setLevel(old)
    assert capsys.readouterr().out == "shown as it is\n"
