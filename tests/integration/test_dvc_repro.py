"""`dvc repro` in a temporary git repo rebuilds exactly the stages whose inputs changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COPY = [
    "conf",
    "examples",
    "orchestrator",
    "targets",
    "registry",
    "dvc.yaml",
    "dvc-stages.yaml",
    ".dvcignore",
]
POSTURE = ["build@posture_server", "build@posture_nuc"]


def _run(repo: Path, *args: str) -> str:
    env = os.environ.copy()
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env.pop("EDGESHIP_ROOT", None)
    env.pop("EDGESHIP_ARTIFACTS", None)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    proc = subprocess.run(
        args, cwd=repo, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("dvc-project")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=ignore)
        else:
            shutil.copy2(src, repo / name)
    (repo / ".gitignore").write_text("/artifacts/\n/mlflow.db\n/mlartifacts/\n")
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "config", "user.email", "ci@example.invalid")
    _run(repo, "git", "config", "user.name", "edgeship ci")
    _run(repo, str(BIN / "dvc"), "init", "-q")
    _run(repo, str(BIN / "dvc"), "config", "core.analytics", "false")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "project")
    return repo


def _repro(repo: Path, *targets: str) -> set[str]:
    return _ran(_run(repo, str(BIN / "dvc"), "repro", *targets))


def test_dvc_repro_builds_then_noop_then_only_what_changed(repo: Path) -> None:
    first = _repro(repo, *POSTURE)
    assert first == {
        "train@posture_cnn",
        "spec@posture_server",
        "spec@posture_nuc",
        "build@posture_server",
        "build@posture_nuc",
    }
    assert (repo / "dvc.lock").is_file()
    assert (repo / "reports" / "posture_nuc" / "metrics.json").is_file()

    assert _repro(repo, *POSTURE) == set()

    # a recipe only posture_nuc uses (of the two): only its build reruns
    recipe = repo / "conf" / "recipe" / "int8_nncf.yaml"
    recipe.write_text(recipe.read_text().replace("subset_size: 300", "subset_size: 200"))
    ran = _repro(repo, *POSTURE)
    assert "build@posture_nuc" in ran and "build@posture_server" not in ran
    assert "train@posture_cnn" not in ran

    # a target file composed into posture_server's spec
    target = repo / "conf" / "target" / "server.yaml"
    target.write_text(target.read_text().replace("threads: 2", "threads: 1"))
    ran = _repro(repo, *POSTURE)
    assert "build@posture_server" in ran and "build@posture_nuc" not in ran

    # a comment in the model file: training reruns (its input file changed) and, being
    # deterministic, writes the same weights; no composed spec changed: nothing rebuilds
    model = repo / "conf" / "model" / "posture_cnn.yaml"
    model.write_text("# reviewed\n" + model.read_text())
    ran = _repro(repo, *POSTURE)
    assert "train@posture_cnn" in ran
    assert not any(s.startswith("build@") for s in ran)

    # the posture data: retrain and rebuild both posture deployments
    data = repo / "examples" / "posture_cnn" / "basicmotions" / "BasicMotions_TRAIN.ts"
    data.write_text("#re-exported\n" + data.read_text())
    ran = _repro(repo, *POSTURE)
    assert {"train@posture_cnn", *POSTURE} <= ran

    metrics = _run(repo, str(BIN / "dvc"), "metrics", "show")
    assert "reports/posture_server/metrics.json" in metrics and "agreement" in metrics

    # the plots are images the build rendered: `dvc plots show` writes them into its page,
    # no vega specification (and so no script from a CDN) needed to see them
    images = [
        f"reports/{d}/plots/{p}.png"
        for d in ("posture_server", "posture_nuc")
        for p in ("latency_histogram", "parity_scatter")
    ]
    _run(repo, str(BIN / "dvc"), "plots", "show", "-o", "plots_out", *images)
    page = (repo / "plots_out" / "index.html").read_text()
    assert "latency_histogram.png" in page and "parity_scatter.png" in page
    assert (repo / "reports" / "posture_nuc" / "plots" / "latency_histogram.png").is_file()


def test_reference_stage_keeps_generative_outputs_and_the_build_reads_them(repo: Path) -> None:
    """``reference@assistant_llm`` runs the PyTorch reference once; DVC caches its outputs
    (restored by ``dvc checkout``); the build stage depends on them and reads them instead
    of loading the reference model."""
    import json

    from orchestrator.build import reference
    from orchestrator.core import toolenv
    from orchestrator.spec.compose import load_option

    reference.ensure_weights(load_option("model", "assistant_llm", ROOT), ROOT)
    shutil.copytree(ROOT / "models" / "assistant_llm", repo / "models" / "assistant_llm")
    stored = repo / "references" / "assistant_llm" / "reference.npz"

    assert _repro(repo, "-s", "reference@assistant_llm") == {"reference@assistant_llm"}
    summary = json.loads(stored.with_name("reference.json").read_text())
    assert summary["model"] == "assistant_llm" and summary["prompts"] == 8
    lock = (repo / "dvc.lock").read_text()
    assert "reference@assistant_llm" in lock and "path: references/assistant_llm" in lock
    assert _repro(repo, "-s", "reference@assistant_llm") == set()

    # another machine (or a cleaned workspace): DVC restores the outputs, nothing reruns
    content = stored.read_bytes()
    shutil.rmtree(stored.parent)
    _run(repo, str(BIN / "dvc"), "checkout", "reference@assistant_llm")
    assert stored.read_bytes() == content

    reason = toolenv.unavailable_reason("optimum-onnx")
    if reason:
        pytest.skip(f"the build half needs optimum-onnx: {reason}")
    _repro(repo, "-s", "spec@assistant_llm_server")
    assert _repro(repo, "-s", "build@assistant_llm_server") == {"build@assistant_llm_server"}
    validation = json.loads(
        (repo / "artifacts" / "assistant_llm_server" / "validation.json").read_text()
    )
    kept = validation["details"]["generation"]["reference"]
    assert kept["stored"] and kept["cached"] and kept["key"] == summary["key"]
    assert kept["file"] == "references/assistant_llm/reference.npz"
    assert (
        "path: references/assistant_llm"
        in (repo / "dvc.lock").read_text().split("build@assistant_llm_server")[1].split("outs:")[0]
    )
