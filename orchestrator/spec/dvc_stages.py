"""The stage lists of a project's ``dvc.yaml``, written from ``conf/`` by ``edgeship dvc``.

``dvc.yaml`` reads ``dvc-stages.yaml`` (``vars:``) and runs its stage families ``foreach``
entry of it, so adding ``conf/deployment/foo.yaml`` needs no edit of ``dvc.yaml``::

    deployments:   # one spec@ and one build@ stage each
      foo: {model: mymodel, code: mymodel, weights: models/mymodel.pt,
            reference: models/mymodel.pt}
    models:        # one train@ stage each (the models that say how to train them)
      mymodel: {code: mymodel, weights: models/mymodel.pt}
    references:    # one reference@ stage each (text-generation, speech-recognition models)
      mychat: {code: mychat, weights: models/mychat}

``weights`` is the file the reference model comes from (``model.source.weights``, or the
whole-model or ONNX file at ``model.source.path``), or the model's spec when the reference
has no file in the project (an MLflow model, a factory without weights).
``reference`` is what a build compares its artifact with: ``references/<model>`` (the
reference outputs ``edgeship reference`` keeps, the output of the ``reference@`` stage)
for a generative model, whose reference is expensive to run; for the others the
reference runs inside the build, and ``reference`` repeats ``weights``.
``code`` is the project folder (or file) holding the Python a model's spec names
(factory, training, data loaders, preprocessing): the package of those modules, so a
model keeps its code and the data files it reads in one package folder. ``weights`` is
the file or folder holding the model (``model.source.weights`` or ``model.source.path``);
an MLflow model lives outside the project, so its spec file stands in and DVC does not
see a new version registered under the same alias (``dvc repro --force`` rebuilds).

DVC reads the lists when ``dvc repro`` starts. Each ``spec@`` stage first runs
``edgeship dvc --fail-if-changed``: when ``conf/`` gained or lost a deployment or a
model since the lists were written, it refreshes them and stops the run, so the next
``dvc repro`` builds exactly what ``conf/`` says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import Problem, SpecError
from orchestrator.project import conf_dir
from orchestrator.spec.files import list_options, option_file, option_label, read_yaml

STAGES_FILE = "dvc-stages.yaml"
REFERENCES = "references"  # kept_reference.STORE: the reference@ stages' outputs
GENERATIVE_TASKS = ("text-generation", "speech-recognition")
HEADER = (
    "# Written by `edgeship dvc` from conf/deployment/ and conf/model/; dvc.yaml runs its\n"
    "# stages for each entry. Do not edit: `edgeship dvc` rewrites it (`edgeship init`,\n"
    "# `edgeship build` and every spec@ stage of `dvc repro` refresh it when conf/ changed).\n"
)


def stages_path(root: Path) -> Path:
    """The project's ``dvc-stages.yaml``."""
    return root / STAGES_FILE


def _callables(model: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, "package.module:function")`` of every callable a model spec names."""
    out = []
    source = model.get("source") or {}
    data = model.get("data") or {}
    for key, node in (
        ("source.factory", source.get("factory")),
        ("source.train", source.get("train")),
        ("preprocessing", model.get("preprocessing")),
        ("data.eval", data.get("eval")),
        ("data.calibration", data.get("calibration")),
        ("data.train", data.get("train")),
    ):
        if isinstance(node, dict) and isinstance(node.get("fn"), str):
            out.append((f"{key}.fn", node["fn"]))
    return out


def _module_home(root: Path, module: str) -> Path | None:
    """The package folder (or top-level file) of ``module`` in the project; None outside it."""
    parts = module.split(".")
    base = root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base
    if base.with_suffix(".py").is_file():
        return base.parent if len(parts) > 1 else base.with_suffix(".py")
    return None


def _model_entry(root: Path, name: str, problems: list[Problem]) -> dict[str, str] | None:
    label = option_label(root, "model", name)
    data = read_yaml(option_file(root, "model", name), label)
    if not isinstance(data, dict):
        problems.append(Problem(label, "", "expected a mapping at the top"))
        return None
    homes = set()
    for _key, ref in _callables(data):
        home = _module_home(root, ref.partition(":")[0])
        if home is not None:
            homes.add(home)
    raw = data.get("source")
    source: dict[str, Any] = raw if isinstance(raw, dict) else {}
    # the file the reference comes from; the model's spec when it has none in the project
    # (an MLflow model, a factory without weights)
    weights = source.get("weights") or source.get("path") or source.get("onnx") or label
    if not isinstance(weights, str):
        key = next(k for k in ("weights", "path", "onnx") if source.get(k))
        problems.append(
            Problem(label, f"model.source.{key}", f"expected a file path, found {weights!r}")
        )
        return None
    entry = {"weights": weights}
    if homes:
        common = Path(os.path.commonpath([str(h) for h in homes]))
        if common == root:
            problems.append(
                Problem(
                    label,
                    "model",
                    "expected the Python the model names in one package folder, found it in "
                    + ", ".join(sorted(str(h.relative_to(root)) for h in homes)),
                )
            )
            return None
        entry["code"] = str(common.relative_to(root))
    else:
        entry["code"] = label  # no Python of the project: the spec itself
    if isinstance(source.get("train"), dict):
        entry["train"] = "yes"
    if data.get("task") in GENERATIVE_TASKS:
        entry["reference"] = f"{REFERENCES}/{name}"
    return entry


def _deployment_model(root: Path, name: str, problems: list[Problem]) -> str | None:
    rel = f"conf/deployment/{name}.yaml"
    data = read_yaml(conf_dir(root) / "deployment" / f"{name}.yaml", rel)
    defaults = data.get("defaults", []) if isinstance(data, dict) else []
    for entry in defaults if isinstance(defaults, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("override /model"), str):
            return str(entry["override /model"])
    problems.append(Problem(rel, "defaults", "expected 'override /model: NAME', found none"))
    return None


def stage_lists(root: Path) -> dict[str, Any]:
    """What ``dvc-stages.yaml`` should hold for the project's ``conf/`` now."""
    problems: list[Problem] = []
    models: dict[str, dict[str, str]] = {}
    for name in list_options(root, "model"):
        entry = _model_entry(root, name, problems)
        if entry is not None:
            models[name] = entry
    deployments: dict[str, dict[str, str]] = {}
    for name in list_options(root, "deployment"):
        model = _deployment_model(root, name, problems)
        if model is None:
            continue
        if model not in models:
            if model not in list_options(root, "model"):
                problems.append(
                    Problem(
                        f"conf/deployment/{name}.yaml",
                        "defaults",
                        f"unknown model '{model}'; expected one of: "
                        + (", ".join(list_options(root, "model")) or "(none)"),
                    )
                )
            continue
        deployments[name] = {
            "model": model,
            "code": models[model]["code"],
            "weights": models[model]["weights"],
            "reference": models[model].get("reference") or models[model]["weights"],
        }
    if problems:
        raise SpecError(problems, title=f"cannot write {STAGES_FILE}")
    trained = {
        name: {"code": e["code"], "weights": e["weights"]}
        for name, e in models.items()
        if e.get("train")
    }
    references = {
        name: {"code": e["code"], "weights": e["weights"]}
        for name, e in models.items()
        if e.get("reference")
    }
    return {"deployments": deployments, "models": trained, "references": references}


def read_stage_lists(root: Path) -> dict[str, Any] | None:
    """The lists ``dvc-stages.yaml`` holds now (None when the project has none)."""
    path = stages_path(root)
    if not path.is_file():
        return None
    data = read_yaml(path, STAGES_FILE)
    return data if isinstance(data, dict) else {}


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs, one line each: ``added deployment foo``, ``changed model bar``."""
    old = old or {}
    out = []
    for section, noun in (
        ("deployments", "deployment"),
        ("models", "model"),
        ("references", "reference"),
    ):
        before, after = old.get(section) or {}, new.get(section) or {}
        out += [f"added {noun} {n}" for n in sorted(set(after) - set(before))]
        out += [f"removed {noun} {n}" for n in sorted(set(before) - set(after))]
        out += [
            f"changed {noun} {n}" for n in sorted(set(before) & set(after)) if before[n] != after[n]
        ]
    return out


def write_stage_lists(root: Path) -> list[str]:
    """Rewrite ``dvc-stages.yaml`` when it differs from ``conf/``; returns what changed."""
    from orchestrator.core.fsutil import write_text

    new = stage_lists(root)
    old = read_stage_lists(root)
    diff = changes(old, new)
    if old is None or diff:
        write_text(stages_path(root), HEADER + yaml.safe_dump(new, sort_keys=True))
    if old is None:
        return [
            f"new: {len(new['deployments'])} deployment(s), {len(new['models'])} model(s) to train"
        ]
    return diff


def refresh_stage_lists(root: Path) -> list[str]:
    """Refresh ``dvc-stages.yaml`` of a project that has one, outside DVC (inside a DVC stage
    the ``spec@`` stages do it); returns notes for the user on what changed or why not."""
    if "DVC_STAGE" in os.environ or not stages_path(root).is_file():
        return []
    try:
        return [f"{STAGES_FILE}: {line}" for line in write_stage_lists(root)]
    except SpecError as exc:
        return [f"{STAGES_FILE} not refreshed: {exc}"]
