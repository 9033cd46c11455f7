"""Pass and target registries, and the CLI's listing."""

from __future__ import annotations

import dataclasses

from orchestrator.cli.main import main
from orchestrator.passes.base import registered_passes
from targets.base import registered_targets


def test_registered_passes_have_dataclass_options_and_descriptions() -> None:
    passes = registered_passes()
    assert {
        "ort_graph_optimize",
        "ort_quantize_dynamic",
        "ort_quantize_static",
        "ov_convert",
        "nncf_quantize",
    } <= set(passes)
    for name, cls in passes.items():
        assert cls.name == name
        assert dataclasses.is_dataclass(cls.Options)
        assert cls.description


def test_registered_targets_include_server_and_nuc() -> None:
    targets = registered_targets()
    assert targets["server"].runtime == "onnxruntime"
    assert targets["intel_nuc"].runtime == "openvino"


def test_cli_list_shows_groups_passes_and_families(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in (
        "posture_server",
        "ct_seg_nuc",
        "int8_nncf",
        "intel_nuc",
        "nncf_quantize",
        "fleets",
    ):
        assert word in out
