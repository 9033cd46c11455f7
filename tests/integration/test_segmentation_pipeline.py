"""ct_seg's whole-volume pipeline end to end: a bf16 OpenVINO build with every pipeline
optimisation on passes the same whole-volume gates, ships its pipeline, and the device
runner and ``edgeship segment`` run it (a NIfTI volume in, a label map with its affine out)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import build_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPTIMISED = (
    "model.pipeline.steps=["
    "{name: clip_normalize, options: {low: -1000.0, high: 1000.0, mean: 180.0, std: 170.0}},"
    "{name: resample, options: {spacing: [1.45, 1.9, 1.9]}},"
    "{name: sliding_window, options: {overlap: 0.5, batch: 4, skip_outside_body: true,"
    " body_threshold: -500.0, overlap_io: true}},"
    "{name: argmax}, {name: largest_component}, {name: label_map}]"
)


@pytest.fixture(scope="module")
def bf16_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_once(
        ["deployment=ct_seg_nuc", "recipe=ov_bf16", OPTIMISED],
        tmp_path_factory.mktemp("ct-seg-pipeline"),
    )


def test_pipeline_optimised_bf16_build_passes_whole_volume_gates(bf16_artifact: Path) -> None:
    import openvino as ov

    validation = json.loads((bf16_artifact / "validation.json").read_text())
    metrics = validation["metrics"]
    assert validation["passed"], validation["gates"]
    gated = {g["gate"].split()[0] for g in validation["gates"]}
    assert {"volume_dice_vs_reference", "volume_min_dice_vs_reference", "volume_s"} <= gated
    assert metrics["volume_dice_vs_reference"] >= 0.98
    assert metrics["volume_s"] > 0 and metrics["reference_volume_s"] > 0
    assert "volume_dice_vs_labels" in metrics and "volume_dice_vs_reference.liver" in metrics
    first = validation["details"]["pipeline"]["pipeline"][0]
    assert first["windows"] == 8 and first["calls"] == 2  # batch 4
    # the precision recorded is what OpenVINO compiled, not what was asked
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert validation["details"]["execution_precision"] == ("bf16" if "BF16" in caps else "f32")
    runtime = json.loads((bf16_artifact / "runtime.json").read_text())
    assert runtime["model"]["precision"] == "bf16"
    assert runtime["pipeline"]["patch"] == [32, 32, 32]
    assert runtime["pipeline"]["steps"][2]["options"]["skip_outside_body"] is True


def test_pipeline_device_health_check_runs_the_shipped_pipeline(bf16_artifact: Path) -> None:
    from orchestrator.device.agent.health import health_run

    result = health_run(str(bf16_artifact))

    assert result["result"] == "pass", result.get("reason")
    assert result["pipeline"]["passed"] and result["pipeline"]["dice"] >= 0.99
    assert result["pipeline"]["windows"] == 8
    assert result["runtime"]["execution_precision"] in ("bf16", "f32")


def test_pipeline_segment_writes_a_nifti_label_map_on_the_input_grid(
    bf16_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import nibabel as nib

    from examples.ct_seg.phantoms import make_volume
    from orchestrator.cli.main import main

    hu, truth = make_volume(2100, (48, 64, 64))
    affine = np.diag([0.8, 0.9, 1.1, 1.0])
    affine[:3, 3] = [-12.0, 30.0, 7.5]
    source, dest = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    image = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)).astype(np.int16), affine)
    nib.save(image, source)

    code = main(["segment", str(bf16_artifact), str(source), str(dest), "--json"])

    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shape"] == [48, 64, 64] and report["pipeline"]["windows"] > 0
    out = nib.load(dest)
    assert out.shape == (64, 64, 48) and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, affine)
    labels = np.asarray(out.dataobj).transpose(2, 1, 0)
    assert set(np.unique(labels)) <= set(range(6))
    assert (labels[truth == 1] == 1).mean() > 0.5  # the liver is found where it is


def test_pipeline_segment_refuses_an_artifact_without_a_pipeline(tmp_path: Path) -> None:
    from orchestrator.device.agent.segment import SegmentError, bundle_pipeline

    with pytest.raises(SegmentError, match="ships no pipeline"):
        bundle_pipeline({"deployment": "posture_server"})


def test_pipeline_device_activation_runs_the_shipped_pipeline_and_segments_over_ssh(
    bf16_artifact: Path, ssh_devices: list, tmp_path: Path
) -> None:
    import nibabel as nib

    from examples.ct_seg.phantoms import make_volume
    from tests.sshd import ShipLab

    lab = ShipLab(
        tmp_path / "lab", ssh_devices[:1], bf16_artifact, {ssh_devices[0].name: "intel_nuc"}
    )
    name = ssh_devices[0].name
    assert [o.result for o in lab.enroll([name]).outcomes] == ["enrolled"]
    bundle = lab.bundle()
    assert {"smoke/volume.npz", "smoke/volume_expected.npz"} <= {f["path"] for f in bundle.files()}

    outcome = lab.deploy(bundle, [name]).outcomes[0]

    assert outcome.result == "activated", outcome.summary()
    assert outcome.health["pipeline"]["passed"] and outcome.health["pipeline"]["windows"] == 8
    hu, _ = make_volume(2200, (48, 64, 64))
    source, dest = tmp_path / "ct.nii.gz", tmp_path / "out" / "labels.nii.gz"
    dest.parent.mkdir()
    dest.parent.chmod(0o777)  # the agent user writes it
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), np.eye(4)), source)
    source.chmod(0o644)
    res = lab.agent(name, f"segment {source} {dest}")
    assert res.code == 0, res
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["version"] == bundle.version and report["pipeline"]["windows"] == 8
    assert nib.load(dest).shape == (64, 64, 48)
