"""A team's own project: built-in options under the project's conf/, the root marker,
`edgeship init` and the lists of dvc-stages.yaml (no builds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.project import builtin_conf_dir, project_root
from orchestrator.spec.compose import compose
from orchestrator.spec.dvc_stages import read_stage_lists, stage_lists, write_stage_lists
from orchestrator.spec.files import list_options, option_origin
from orchestrator.spec.scaffold import init_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("EDGESHIP_ROOT", raising=False)
    folder = tmp_path / "team"
    init_project(folder)
    return folder


def test_init_project_has_no_recipes_or_targets_of_its_own(project: Path) -> None:
    assert not (project / "conf" / "recipe").exists()
    assert not (project / "conf" / "target").exists()
    assert not (project / "conf" / "config.yaml").exists()
    assert (project / ".gitignore").is_file() and (project / "dvc.yaml").is_file()


def test_project_root_found_from_a_subfolder_by_conf_deployment(project: Path) -> None:
    assert project_root(project / "mymodel") == project.resolve()


def test_list_options_adds_builtin_recipes_and_targets_to_the_project(project: Path) -> None:
    assert "ort_fp32" in list_options(project, "recipe")
    assert "server" in list_options(project, "target")
    assert "canary" in list_options(project, "rollout")
    assert list_options(project, "deployment") == ["mymodel_server"]
    assert option_origin(project, "recipe", "ort_fp32") == "built-in"
    assert option_origin(project, "deployment", "mymodel_server") == "project"


def test_compose_in_a_project_uses_builtin_recipe_and_target(project: Path) -> None:
    spec = compose(["deployment=mymodel_server"], project)
    assert spec.choices == {
        "model": "mymodel",
        "recipe": "ort_fp32",
        "target": "server",
        "deployment": "mymodel_server",
    }
    assert spec.files["recipe"] == str(builtin_conf_dir() / "recipe" / "ort_fp32.yaml")
    assert spec.files["model"] == "conf/model/mymodel.yaml"


def test_compose_project_recipe_overrides_builtin_of_the_same_name(project: Path) -> None:
    own = project / "conf" / "recipe" / "ort_fp32.yaml"
    own.parent.mkdir(parents=True)
    own.write_text(
        "name: ort_fp32\ndescription: ours\n"
        "passes:\n  - name: ort_graph_optimize\n    options: {level: basic}\n"
    )
    assert option_origin(project, "recipe", "ort_fp32") == "project, overrides built-in"
    spec = compose(["deployment=mymodel_server"], project)
    assert spec.config.recipe.description == "ours"
    assert spec.config.recipe.passes[0].options == {"level": "basic"}
    assert spec.files["recipe"] == "conf/recipe/ort_fp32.yaml"


def test_compose_error_in_builtin_choice_names_project_file(project: Path) -> None:
    deployment = project / "conf" / "deployment" / "mymodel_server.yaml"
    deployment.write_text(deployment.read_text().replace("/recipe: ort_fp32", "/recipe: ort_fp23"))
    with pytest.raises(SpecError) as info:
        compose(["deployment=mymodel_server"], project)
    assert "conf/deployment/mymodel_server.yaml: defaults[1]: unknown recipe 'ort_fp23'" in str(
        info.value
    )
    assert "did you mean 'ort_fp32'" in str(info.value)


def test_init_refuses_to_overwrite_and_writes_nothing(project: Path) -> None:
    (project / "mymodel" / "model.py").write_text("# ours\n")
    with pytest.raises(SpecError) as info:
        init_project(project)
    assert "mymodel/model.py: expected no file here" in str(info.value)
    assert (project / "mymodel" / "model.py").read_text() == "# ours\n"


def test_dvc_stage_lists_follow_conf_deployment(project: Path) -> None:
    write_stage_lists(project)
    assert read_stage_lists(project) == {
        "deployments": {
            "mymodel_server": {
                "model": "mymodel",
                "code": "mymodel",
                "weights": "models/mymodel.pt",
                "reference": "models/mymodel.pt",  # run inside the build: the weights
            }
        },
        "models": {"mymodel": {"code": "mymodel", "weights": "models/mymodel.pt"}},
        "references": {},  # no generative model
    }
    src = project / "conf" / "deployment" / "mymodel_server.yaml"
    (src.parent / "second.yaml").write_text(src.read_text().replace("mymodel_server", "second"))
    assert write_stage_lists(project) == ["added deployment second"]
    assert read_stage_lists(project) == stage_lists(project)
    assert write_stage_lists(project) == []


def test_dvc_stage_lists_depend_on_the_onnx_file_or_the_spec_of_a_model_without_one(
    project: Path,
) -> None:
    models = project / "conf" / "model"
    data = "data:\n  eval: {fn: mymodel.data:eval_set}\n"
    (models / "net.yaml").write_text(f"name: net\nsource: {{kind: onnx, path: m/net.onnx}}\n{data}")
    (models / "reg.yaml").write_text(
        f"name: reg\nsource: {{kind: mlflow, uri: 'models:/r/1'}}\n{data}"
    )
    lists = stage_lists(project)
    assert lists["deployments"]["mymodel_server"]["weights"] == "models/mymodel.pt"
    src = project / "conf" / "deployment" / "mymodel_server.yaml"
    for model in ("net", "reg"):
        text = src.read_text().replace("mymodel_server", model)
        (src.parent / f"{model}.yaml").write_text(
            text.replace("/model: mymodel", f"/model: {model}")
        )
    lists = stage_lists(project)
    assert lists["deployments"]["net"] == {
        "model": "net",
        "code": "mymodel",
        "weights": "m/net.onnx",
        "reference": "m/net.onnx",
    }
    assert lists["deployments"]["reg"]["weights"] == "conf/model/reg.yaml"
    assert set(lists["models"]) == {"mymodel"}  # only models that say how to train them


def test_dvc_stage_lists_refuse_model_code_spread_over_packages(project: Path) -> None:
    model = project / "conf" / "model" / "mymodel.yaml"
    (project / "other.py").write_text("def eval_set():\n    return None\n")
    model.write_text(model.read_text().replace("fn: mymodel.data:eval_set", "fn: other:eval_set"))
    with pytest.raises(SpecError, match="expected the Python the model names in one package"):
        stage_lists(project)


def test_dvc_stage_lists_take_the_model_file_of_every_source_kind(project: Path) -> None:
    """An ONNX file or a model folder is the build's dependency; an MLflow model has no file
    in the project, so its spec file stands in (a project with one still gets its lists)."""
    conf = project / "conf"
    base = (conf / "model" / "mymodel.yaml").read_text()
    start, end = base.index("source:"), base.index("\ndata:")
    sources = {
        "handed": "source:\n  kind: onnx\n  path: models/handed.onnx\n",
        "registered": "source:\n  kind: mlflow\n  uri: models:/ecg@champion\n",
        "bundle": "source:\n  kind: monai_bundle\n  path: models/spleen_bundle\n",
    }
    deployment = (conf / "deployment" / "mymodel_server.yaml").read_text()
    for name, source in sources.items():
        text = base[:start] + source + base[end:]
        (conf / "model" / f"{name}.yaml").write_text(text.replace("name: mymodel", f"name: {name}"))
        (conf / "deployment" / f"{name}_server.yaml").write_text(
            deployment.replace("mymodel", name)
        )
    lists = stage_lists(project)
    weights = {n: lists["deployments"][f"{n}_server"]["weights"] for n in sources}
    assert weights == {
        "handed": "models/handed.onnx",
        "registered": "conf/model/registered.yaml",
        "bundle": "models/spleen_bundle",
    }
    assert set(lists["models"]) == {"mymodel"}  # only a model that says how to train it
