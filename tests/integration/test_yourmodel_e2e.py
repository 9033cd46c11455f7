"""Done means: a team's own four models, built, validated, recorded and bundled by the
installed tool for a server and an Intel NUC, in a project made with `edgeship init`.

In a temporary folder outside the checkout, with this checkout's wheel as the installed
tool (``tests/installed.py``) and a clean environment, the team writes what
``docs/your-model.md`` shows (the texts below are the docs' snippets, checked word for
word by the first test):

- ``seg3d``: a MONAI DynUNet 3-D segmentation net from a factory in the team's package,
  its weights written by ``edgeship train`` (a short fit on synthetic volumes);
- ``mobilenet``: an ONNX file the team hands over (written here by the test's setup);
- ``ecg``: a classifier the team registered in the project's own MLflow store
  (``sqlite:///mlflow.db``), named by alias;
- ``sensor``: two inputs with a dynamic batch (min/opt/max) and two outputs.

Each model is built with ``recipe=auto`` (two candidates per target) for ``server`` and
``intel_nuc`` in one ``edgeship build -m``, recorded in the project's MLflow store with its
source's lineage, and bundled (``edgeship keys init``, ``edgeship bundle``).
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from tests import installed

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "your-model.md"

# What the team writes into the project made by `edgeship init team`: path -> text.
FILES = {
    "team/__init__.py": "",
    "team/seg.py": '''
        """A 3-D segmentation net (MONAI DynUNet), synthetic CT-like volumes, a short fit."""

        import torch
        from monai.networks.nets import DynUNet


        def build():
            return DynUNet(
                spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3, 3, 3],
                strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[8, 16, 32],
            )


        def volumes(samples=4, seed=1):
            """32^3 volumes holding a bright sphere in noise, and the sphere as the label."""
            g = torch.Generator().manual_seed(seed)
            grid = torch.stack(torch.meshgrid(*[torch.arange(32.0)] * 3, indexing="ij"))
            centres = 8 + 16 * torch.rand(samples, 3, 1, 1, 1, generator=g)
            radius = 4 + 6 * torch.rand(samples, 1, 1, 1, generator=g)
            mask = ((grid - centres) ** 2).sum(1).sqrt() < radius
            x = mask.float()[:, None] + 0.3 * torch.randn(samples, 1, 32, 32, 32, generator=g)
            return x, mask.long()


        def train(weights, steps=8):
            torch.manual_seed(0)
            net = build()
            opt = torch.optim.Adam(net.parameters(), 2e-2)
            x, y = volumes(8, seed=0)
            for _ in range(steps):
                i = torch.randint(0, 8, (2,))
                loss = torch.nn.functional.cross_entropy(net(x[i]), y[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
            torch.save(net.state_dict(), weights)
    ''',
    "team/images.py": '''
        """Evaluation images for the ONNX classifier (no labels: parity with the ONNX file)."""

        import numpy as np


        def images(samples=8, seed=0):
            rng = np.random.default_rng(seed)
            return rng.standard_normal((samples, 3, 64, 64)).astype("float32")
    ''',
    "team/ecg.py": '''
        """An ECG rhythm classifier, its data, and its registration in the project's MLflow."""

        import torch


        class EcgNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv1d(1, 8, 7, padding=3)
                self.fc = torch.nn.Linear(8, 3)

            def forward(self, ecg):
                return self.fc(self.conv(ecg).relu().amax(-1))


        def beats(samples=12, seed=0):
            """Noisy sine rhythms at three rates; the rate is the class."""
            g = torch.Generator().manual_seed(seed)
            y = torch.randint(0, 3, (samples,), generator=g)
            t = torch.linspace(0, 1, 250)
            noise = 0.2 * torch.randn(samples, 250, generator=g)
            x = torch.sin(6.28 * (3 + 3 * y[:, None]) * t) + noise
            return x[:, None], y


        def register():
            import mlflow

            torch.manual_seed(0)
            net = EcgNet().eval()
            mlflow.set_tracking_uri("sqlite:///mlflow.db")
            with mlflow.start_run():
                mlflow.pytorch.log_model(
                    net, name="model", registered_model_name="ecg-classifier",
                    input_example=beats(1)[0].numpy(),
                )
            mlflow.MlflowClient().set_registered_model_alias("ecg-classifier", "champion", "1")
    ''',
    "team/register.py": '''
        """`python -m team.register`: the team's model into the project's MLflow store."""

        from team.ecg import register

        register()
    ''',
    "team/sensor.py": '''
        """Sensor window + metadata in; class logits and an auxiliary score out."""

        import torch


        class TwoInputs(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.conv = torch.nn.Conv1d(6, 8, 3, padding=1)
                self.fc = torch.nn.Linear(8 + 3, 4)
                self.aux = torch.nn.Linear(3, 2)

            def forward(self, imu, meta):
                h = self.conv(imu).relu().mean(-1)
                return self.fc(torch.cat([h, meta], -1)), self.aux(meta)


        def two_inputs():
            return TwoInputs()


        def windows(samples=10, seed=0):
            """Loaders may return numpy arrays, torch tensors, a mapping name -> array,
            a list of per-sample mappings, or a torch DataLoader."""
            g = torch.Generator().manual_seed(seed)
            imu = torch.randn(samples, 6, 100, generator=g)
            meta = torch.randn(samples, 3, generator=g)
            return {"imu": imu, "meta": meta}, torch.randint(0, 4, (samples,), generator=g)
    ''',
    "conf/model/seg3d.yaml": """
        name: seg3d
        task: segmentation
        source:
          factory: {fn: team.seg:build}
          weights: models/seg3d.pt
          train: {fn: team.seg:train}
        inputs:
          - {name: ct, shape: [1, 1, 32, 32, 32]}
        outputs:
          - {name: logits, shape: [1, 2, 32, 32, 32]}
        labels: [background, lesion]
        data:
          eval: {fn: team.seg:volumes}
          calibration: {fn: team.seg:volumes, args: {seed: 2}}
    """,
    "conf/model/mobilenet.yaml": """
        name: mobilenet
        task: classification
        source: {kind: onnx, path: models/mobilenet.onnx}
        inputs:
          - {name: image, shape: [1, 3, 64, 64]}
        outputs:
          - {name: logits, shape: [1, 5]}
        labels: [a, b, c, d, e]
        data:
          eval: {fn: team.images:images}
          calibration: {fn: team.images:images, args: {seed: 1}}
    """,
    "conf/model/ecg.yaml": """
        name: ecg
        task: classification
        source: {kind: mlflow, uri: "models:/ecg-classifier@champion"}
        inputs:
          - {name: ecg, shape: [1, 1, 250]}
        outputs:
          - {name: logits, shape: [1, 3]}
        labels: [slow, normal, fast]
        data:
          eval: {fn: team.ecg:beats}
          calibration: {fn: team.ecg:beats, args: {seed: 1}}
    """,
    "conf/model/sensor.yaml": """
        name: sensor
        task: classification
        source:
          factory: {fn: team.sensor:two_inputs}
        inputs:
          - name: imu
            shape: [batch, 6, 100]            # a positive int, or a name declared under dynamic
            dynamic: {batch: {min: 1, opt: 4, max: 16}}
          - name: meta
            shape: [batch, 3]                 # the same name is the same dimension
            dynamic: {batch: {min: 1, opt: 4, max: 16}}
        outputs:                              # every output is compared with the reference
          - {name: logits, shape: [batch, 4]}
          - {name: aux, shape: [batch, 2]}
        labels: [a, b, c, d]
        data:
          eval: {fn: team.sensor:windows}
          calibration: {fn: team.sensor:windows, args: {seed: 1}}
    """,
}

CANDIDATES = {"server": "[ort_fp32, ort_int8_static]", "intel_nuc": "[ov_fp32, int8_nncf]"}
SHORT = {"server": "server", "intel_nuc": "nuc"}

# model -> (source kind, the gates of both its deployments)
MODELS = {
    "seg3d": ("pytorch", "[dice_vs_reference >= 0.95, dice_drop <= 0.02]"),
    "mobilenet": ("onnx", "[agreement >= 0.9, max_abs_error <= 0.5]"),
    "ecg": ("mlflow", "[agreement >= 0.9, accuracy_drop <= 0.05]"),
    "sensor": ("pytorch", "[agreement >= 0.9, max_abs_error.aux <= 0.05]"),
}


def deployment(model: str, target: str) -> tuple[str, str]:
    """The deployment ``<model>_<server|nuc>``: its file and text."""
    name = f"{model}_{SHORT[target]}"
    text = f"""\
        # @package _global_
        defaults:
          - override /model: {model}
          - override /recipe: auto
          - override /target: {target}
          - _self_
        recipe:
          candidates: {CANDIDATES[target]}
        deployment:
          name: {name}
          gates: {MODELS[model][1]}
          validation: {{latency_warmup: 1, latency_runs: 5}}
    """
    return f"conf/deployment/{name}.yaml", text


DEPLOYMENTS = dict(deployment(m, t) for m in MODELS for t in SHORT)


def _text(raw: str) -> str:
    return textwrap.dedent(raw).lstrip("\n")


def _doc_blocks() -> list[str]:
    """The fenced code blocks of docs/your-model.md."""
    return [m.group(1) for m in re.finditer(r"```[a-z]*\n(.*?)```", DOC.read_text(), re.S)]


def test_docs_show_exactly_what_the_end_to_end_test_writes() -> None:
    blocks = _doc_blocks()
    for path, raw in {**FILES, **DEPLOYMENTS}.items():
        if not raw:
            continue
        shown = f"# {path}\n{_text(raw)}"
        if path.startswith("conf/deployment/") and "seg3d" not in path:
            # the other deployments differ from seg3d's in name, model and gates only
            model = Path(path).stem.rsplit("_", 1)[0]
            line = f"| `{model}` | `{MODELS[model][1]}` |"
            assert line in DOC.read_text(), f"docs/your-model.md lacks the row {line}"
            continue
        assert shown in blocks, f"docs/your-model.md has no block equal to {path}:\n{shown}"


def _write_onnx(path: Path) -> None:
    """The ONNX file the team hands over: a small MobileNet-like classifier."""
    import torch
    from torch import nn

    def separable(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin),
            nn.BatchNorm2d(cin),
            nn.ReLU6(),
            nn.Conv2d(cin, cout, 1),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1),
        nn.ReLU6(),
        separable(16, 32, 2),
        separable(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 5),
    ).eval()
    program = torch.onnx.export(
        net,
        (torch.zeros(1, 3, 64, 64),),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
    )
    program.save(str(path), external_data=False)


@pytest.mark.integration
@pytest.mark.slow
def test_four_own_models_build_record_and_bundle_for_server_and_nuc_with_the_installed_tool(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    from registry.bundle import verify_bundle
    from registry.keys import KeyStore

    tool = installed.install(tmp_path / "tool")
    home = tmp_path / "home"  # the user's home: the key store lives under ~/.config
    home.mkdir()
    env = installed.clean_env(tool, HOME=str(home))

    def edgeship(*args: str) -> str:
        return installed.edgeship(tool, project, *args, env=env).stdout

    work = tmp_path / "work"
    work.mkdir()
    installed.edgeship(tool, work, "init", "team", env=env)
    project = work / "team"
    for path, raw in {**FILES, **DEPLOYMENTS}.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(_text(raw))
    (project / "models").mkdir(exist_ok=True)
    _write_onnx(project / "models" / "mobilenet.onnx")
    installed.run(tool, project, "python", "-m", "team.register", env=env)
    edgeship("train", "model=seg3d")
    assert (project / "models" / "seg3d.pt").is_file()
    edgeship("keys", "init")

    names = [Path(p).stem for p in DEPLOYMENTS]
    built = edgeship("build", "-m", "deployment=" + ",".join(names))
    bundled = edgeship("bundle", "deployment=" + ",".join(names))
    for name in names:
        assert f"{name}: PASSED" in built, built
        assert f"{name}: bundle version 1" in bundled, bundled
    # each signature checks out with stock openssl, as the bundle command says
    checks = re.findall(r"check:\s+(openssl .+)", bundled)
    assert len(checks) == len(names)
    for check in checks:
        verified = installed.run(tool, project, *shlex.split(check), env=env)
        assert "Signature Verified Successfully" in verified.stdout

    # the project's store for runs and registry alike (an earlier test may have set the
    # process's registry URI elsewhere)
    store = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    trust = KeyStore(home / ".config" / "edgeship" / "keys").trust()
    for name in names:
        model = name.rsplit("_", 1)[0]
        kind = MODELS[model][0]
        art = project / "artifacts" / name
        build = json.loads((art / "build.json").read_text())
        assert build["status"] == "passed" and build["source"]["kind"] == kind
        assert build["selection"]["winner"] in CANDIDATES[build["choices"]["target"]]
        # the winner's run and its registered version carry the source's lineage
        run = client.get_run(build["mlflow"]["run_id"])
        version = client.get_model_version(name, build["mlflow"]["model_version"])
        for tags in (run.data.tags, version.tags):
            assert tags["edgeship.source.kind"] == kind
            assert tags["edgeship.source.sha256"] == build["source"]["sha256"]
        if kind == "mlflow":
            assert version.tags["edgeship.source.mlflow.registered_model"] == "ecg-classifier"
            assert version.tags["edgeship.source.mlflow.alias"] == "champion"
            assert version.tags["edgeship.source.mlflow.version"] == "1"
        elif kind == "onnx":
            assert version.tags["edgeship.source.file.path"] == "models/mobilenet.onnx"
        elif model == "seg3d":
            assert version.tags["edgeship.source.file.weights"] == "models/seg3d.pt"
        # the bundle: signed by the project's key store, every file's hash as in its manifest
        (bundle,) = (project / "bundles" / name).glob("*/manifest.json")
        assert verify_bundle(bundle.parent, trust) == []
        manifest = json.loads(bundle.read_text())
        assert manifest["deployment"] == name
        assert int(run.data.tags["edgeship.bundle.version"]) == manifest["version"] == 1

    sensor = json.loads((project / "artifacts" / "sensor_nuc" / "validation.json").read_text())
    assert [b["batch"] for b in sensor["details"]["latency_by_batch"]] == [1, 4, 16]
