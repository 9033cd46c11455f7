"""Cross-field rules of a composed deployment spec (run after the type check).

Each rule reports problems through ``report(key, message)``; every rule runs, so
one pass over a spec shows everything wrong with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.core.schema import EVENT_FIELDS, PIPELINE_STEPS, TASKS
from orchestrator.core.typecheck import check_dataclass, closest, unknown_name_message
from orchestrator.passes.base import (
    HF_FOLDER,
    TORCH_PROGRAM,
    export_format,
    registered_passes,
)
from orchestrator.spec.files import list_options, read_option
from orchestrator.spec.gates import GateSyntaxError, measured_metrics, metric_names, parse_gate
from orchestrator.spec.shapes import (
    check_latency_batches,
    check_servable,
    check_shapes,
    gate_batches,
)
from targets.base import registered_targets

Report = Callable[[str, str], None]
# tasks whose recipe starts from the Hugging Face folder -> an export pass that does so
FOLDER_EXPORTS = {
    "text-generation": "optimum_export_onnx, ortgenai_build, optimum_intel_export_openvino",
    "speech-recognition": "optimum_export_openvino_speech",
}
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_METRIC_NAME = re.compile(r"^[A-Za-z_]\w*$")


def _get(data: Mapping[str, Any], *path: str) -> Any:
    node: Any = data
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


def check_model(model: Mapping[str, Any], report: Report) -> None:
    source = _get(model, "source")
    if isinstance(source, Mapping):
        check_model_source(source, report)
    for group in ("inputs", "outputs"):
        tensors = model.get(group)
        if isinstance(tensors, list) and not tensors:
            report(f"model.{group}", "expected at least one tensor, found an empty list")
    check_shapes(model, report)
    task = model.get("task")
    labels = model.get("labels")
    outputs = model.get("outputs")
    if (
        task in ("classification", "segmentation")
        and isinstance(labels, list)
        and isinstance(outputs, list)
        and outputs
        and isinstance(outputs[0], Mapping)
    ):
        shape = outputs[0].get("shape")
        axis = -1 if task == "classification" else 1
        if isinstance(shape, list) and len(shape) >= 2 and isinstance(shape[axis], int):
            classes = shape[axis]
            if labels and len(labels) != classes:
                report(
                    "model.labels",
                    f"expected {classes} labels (outputs[0].shape{[axis]} = {classes}), "
                    f"found {len(labels)}",
                )
    if model.get("multi_label") is True and task != "classification":
        report(
            "model.multi_label",
            f"expected false for a {task} model; multi_label is a kind of classification",
        )
    threshold = model.get("threshold")
    if (
        isinstance(threshold, int | float)
        and not isinstance(threshold, bool)
        and not 0 < threshold < 1
    ):
        report(
            "model.threshold",
            "expected a probability between 0 and 1, both excluded (a class is predicted "
            f"when its sigmoid reaches it), found {threshold}",
        )
    metrics = model.get("metrics")
    seen: dict[str, int] = {}
    builtin = measured_metrics(str(task), [], multi_label=model.get("multi_label") is True)
    for i, m in enumerate(metrics if isinstance(metrics, list) else []):
        if not isinstance(m, Mapping):
            continue
        fn = m.get("fn")
        if isinstance(fn, str) and not _CALLABLE.match(fn):
            report(f"model.metrics[{i}].fn", f"expected 'package.module:function', found '{fn}'")
            continue
        for name in metric_names(m):
            if not _METRIC_NAME.match(name):
                report(
                    f"model.metrics[{i}].names",
                    f"expected metric names of letters, digits and _ (usable in gates), "
                    f"found '{name}'",
                )
            elif set(derived(name)) & set(builtin):
                clash = sorted(set(derived(name)) & set(builtin))[0]
                report(
                    f"model.metrics[{i}].names",
                    f"'{name}' would report '{clash}', which edgeship measures itself for a "
                    f"{task} model; choose another name",
                )
            elif name in seen:
                report(
                    f"model.metrics[{i}].names",
                    f"'{name}' is already reported by model.metrics[{seen[name]}]",
                )
            else:
                seen[name] = i
    if task == "segmentation" and isinstance(labels, list) and not labels:
        report("model.labels", "expected the class names of a segmentation model, found none")
    pipeline = model.get("pipeline")
    if isinstance(pipeline, Mapping):
        check_pipeline(model, pipeline, report)
    check_generation(model, report)
    check_speech(model, report)


# Whisper's language tokens (<|en|> ...), openai-whisper's order; large-v3 adds yue
WHISPER_LANGUAGES = (  # noqa: SIM905
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su yue"
).split()
WHISPER_DECODER_POSITIONS = 448  # Whisper's decoder context (max_target_positions)
WHISPER_PROMPT_TOKENS = 4  # start of transcript, language, task, no timestamps


def check_speech(model: Mapping[str, Any], report: Report) -> None:
    """A speech-recognition model: a Hugging Face folder (Whisper), Whisper's feature
    settings, a decoder prompt of a known language, tokens that fit the decoder's context;
    speech settings only on such a model."""
    task = model.get("task")
    speech = model.get("speech")
    if task != "speech-recognition":
        if isinstance(speech, Mapping):
            report(
                "model.speech",
                f"expected no speech settings for a {task} model; they belong to a "
                "speech-recognition model",
            )
        return
    if isinstance(model.get("generation"), Mapping):
        report(
            "model.generation",
            "expected no generation settings for a speech-recognition model; its decoding is "
            "set under model.speech (language, task, max_new_tokens)",
        )
    kind = _get(model, "source", "kind")
    if kind != "huggingface":
        report(
            "model.source.kind",
            "expected huggingface for a speech-recognition model (a Whisper folder with its "
            f"tokenizer and feature extractor), found {kind}",
        )
    if not isinstance(speech, Mapping):
        report(
            "model.speech",
            "expected the speech settings of a speech-recognition model (sampling_rate, "
            "language, max_new_tokens, ...), found none",
        )
        return

    def number(key: str) -> int | None:
        value = speech.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    rate = number("sampling_rate")
    if rate is not None and rate != 16000:
        report(
            "model.speech.sampling_rate",
            f"expected 16000 (Whisper's feature extractor takes 16 kHz samples), found {rate}",
        )
    bins = number("feature_size")
    if bins is not None and bins not in (80, 128):
        report(
            "model.speech.feature_size",
            f"expected 80 or 128 log-mel bins (Whisper's), found {bins}",
        )
    chunk = number("chunk_seconds")
    if chunk is not None and not 1 <= chunk <= 30:
        report("model.speech.chunk_seconds", f"expected 1 to 30 seconds, found {chunk}")
    for key in ("hop_length", "n_fft"):
        value = number(key)
        if value is not None and value < 1:
            report(f"model.speech.{key}", f"expected 1 or more, found {value}")
    hop, fft = number("hop_length"), number("n_fft")
    if hop and fft and hop > fft:
        report(
            "model.speech.hop_length",
            f"expected at most n_fft ({fft}): frames would skip samples; found {hop}",
        )
    language = speech.get("language")
    if isinstance(language, str):
        code = language[2:-2] if language.startswith("<|") and language.endswith("|>") else language
        if code not in WHISPER_LANGUAGES:
            report(
                "model.speech.language",
                unknown_name_message("language", language, WHISPER_LANGUAGES),
            )
    new = number("max_new_tokens")
    room = WHISPER_DECODER_POSITIONS - WHISPER_PROMPT_TOKENS
    if new is not None and not 1 <= new <= room:
        report(
            "model.speech.max_new_tokens",
            f"expected 1 to {room} (Whisper's decoder holds {WHISPER_DECODER_POSITIONS} tokens, "
            f"{WHISPER_PROMPT_TOKENS} of them the prompt), found {new}",
        )
    clip = number("health_clip")
    if clip is not None and clip < 0:
        report("model.speech.health_clip", f"expected 0 or more, found {clip}")


def check_generation(model: Mapping[str, Any], report: Report) -> None:
    """A text-generation model: a Hugging Face folder, generation settings that fit its
    context; generation settings only on such a model."""
    task = model.get("task")
    generation = model.get("generation")
    if task != "text-generation":
        if isinstance(generation, Mapping):
            report(
                "model.generation",
                f"expected no generation settings for a {task} model; they belong to a "
                "text-generation model",
            )
        return
    kind = _get(model, "source", "kind")
    if kind != "huggingface":
        report(
            "model.source.kind",
            f"expected huggingface for a text-generation model (a folder with the tokenizer), "
            f"found {kind}",
        )
    if not isinstance(generation, Mapping):
        report(
            "model.generation",
            "expected the generation settings of a text-generation model (max_new_tokens, "
            "max_context, ...), found none",
        )
        return
    ints = {}
    for key, low in (
        ("max_new_tokens", 1),
        ("max_context", 2),
        ("prompt_tokens", 0),
        ("health_tokens", 1),
    ):
        value = generation.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            ints[key] = value
            if value < low:
                report(f"model.generation.{key}", f"expected {low} or more, found {value}")
    new, context = ints.get("max_new_tokens", 0), ints.get("max_context", 0)
    if new >= 1 and context >= 2 and ints.get("prompt_tokens", 0) + new > context:
        report(
            "model.generation.prompt_tokens",
            f"prompt_tokens + max_new_tokens = {ints['prompt_tokens'] + new} exceeds "
            f"max_context {context}",
        )
    if new >= 1 and ints.get("health_tokens", 0) > new:
        report(
            "model.generation.health_tokens",
            f"expected at most max_new_tokens ({new}), found {ints['health_tokens']}",
        )


def check_pipeline(model: Mapping[str, Any], pipeline: Mapping[str, Any], report: Report) -> None:
    """Step names and options, their order (pre, one sliding_window, post), the model's patch."""
    task = model.get("task")
    if task != "segmentation":
        report("model.pipeline", f"expected a segmentation model for a pipeline, found task {task}")
    inputs = model.get("inputs")
    first = inputs[0] if isinstance(inputs, list) and inputs else None
    shape = first.get("shape") if isinstance(first, Mapping) else None
    if isinstance(shape, list) and (
        len(shape) != 5
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape[2:])
    ):
        report(
            "model.pipeline",
            "expected model.inputs[0] of shape [N, 1, D, H, W] with a static patch (D, H, W), "
            f"found {shape}",
        )
    steps = pipeline.get("steps")
    if not isinstance(steps, list):
        return
    roles: list[tuple[int, str, str]] = []
    for i, step in enumerate(steps):
        key = f"model.pipeline.steps[{i}]"
        if not isinstance(step, Mapping) or not isinstance(step.get("name"), str):
            continue
        name = step["name"]
        if name not in PIPELINE_STEPS:
            report(f"{key}.name", unknown_name_message("pipeline step", name, PIPELINE_STEPS))
            continue
        role, options_schema = PIPELINE_STEPS[name]
        roles.append((i, name, role))
        options = step.get("options") or {}
        if isinstance(options, Mapping):
            check_dataclass(options, options_schema, f"{key}.options", report)
            _check_step_options(options, f"{key}.options", report)
    infer = [i for i, _, role in roles if role == "infer"]
    if len(infer) != 1:
        report(
            "model.pipeline.steps",
            f"expected exactly one sliding_window step (the model's inference), found {len(infer)}",
        )
        return
    for i, name, role in roles:
        if (role == "pre" and i > infer[0]) or (role == "post" and i < infer[0]):
            where = "before" if role == "pre" else "after"
            report(
                f"model.pipeline.steps[{i}].name",
                f"expected '{name}' ({role}-processing) {where} sliding_window, found it "
                f"{'after' if role == 'pre' else 'before'}",
            )


def _check_step_options(options: Mapping[str, Any], key: str, report: Report) -> None:
    """Ranges of the options whose type is right (the schema reports the others)."""
    overlap = options.get("overlap")
    if isinstance(overlap, int | float) and not isinstance(overlap, bool) and not 0 <= overlap < 1:
        report(f"{key}.overlap", f"expected a fraction in [0, 1), found {overlap}")
    for field_name in ("batch",):
        value = options.get(field_name)
        if isinstance(value, int) and value < 1:
            report(f"{key}.{field_name}", f"expected 1 or more, found {value}")
    for field_name in ("std", "sigma_scale"):
        value = options.get(field_name)
        if isinstance(value, int | float) and value <= 0:
            report(f"{key}.{field_name}", f"expected a positive number, found {value}")
    spacing = options.get("spacing")
    if isinstance(spacing, list) and (
        len(spacing) != 3 or any(not isinstance(v, int | float) or v <= 0 for v in spacing)
    ):
        report(f"{key}.spacing", f"expected three positive sizes in mm [D, H, W], found {spacing}")
    classes = options.get("classes")
    if isinstance(classes, list) and any(isinstance(c, int) and c < 1 for c in classes):
        report(f"{key}.classes", f"expected foreground class indices (1 or more), found {classes}")


_SOURCE_KEYS = {
    # kind -> (keys it may set besides kind and opset, what it needs)
    "pytorch": ("factory", "weights", "train", "path"),
    "onnx": ("path",),
    "mlflow": ("uri",),
    "huggingface": ("path", "auto_class", "train"),
    "monai_bundle": ("path",),
}
_FOLDER_KINDS = {
    # kind -> what its path names
    "huggingface": "a Hugging Face model folder (config.json and the weights)",
    "monai_bundle": "a MONAI bundle folder (configs/ and models/)",
}
_MLFLOW_URI = re.compile(
    r"(models:/[^/@\s]+(/[^/\s]+|@[^/\s]+)|models:/m-[0-9a-f]+|runs:/[^/\s]+/\S+)"
)


def check_model_source(source: Mapping[str, Any], report: Report) -> None:
    """What each source kind needs, and keys that belong to another kind."""
    kind = source.get("kind", "pytorch")
    if kind not in _SOURCE_KEYS:
        return  # the type check reports an unknown kind
    for key in ("factory", "weights", "train", "path", "uri", "auto_class"):
        if source.get(key) is not None and key not in _SOURCE_KEYS[kind]:
            report(f"model.source.{key}", f"not used when model.source.kind is {kind}; remove it")
    factory, path = source.get("factory"), source.get("path")
    if kind == "pytorch":
        if not factory and not path:
            report(
                "model.source.factory",
                "missing; a pytorch source needs a factory (fn: module:func) or a path "
                "(a TorchScript .pt or torch.export .pt2 file)",
            )
        elif factory and path:
            report(
                "model.source.path",
                "a pytorch source takes a factory (+ weights) or a whole-model file, not both",
            )
        if path and (source.get("weights") or source.get("train")):
            key = "model.source.weights" if source.get("weights") else "model.source.train"
            report(key, "a whole-model file (model.source.path) carries its weights; remove it")
    if kind == "onnx":
        if not path:
            report("model.source.path", "missing; an onnx source needs the path of the ONNX file")
        elif isinstance(path, str) and not path.endswith(".onnx"):
            report("model.source.path", f"expected a .onnx file, found '{path}'")
    if kind in _FOLDER_KINDS:
        if not path:
            report("model.source.path", f"missing; expected the path of {_FOLDER_KINDS[kind]}")
        elif isinstance(path, str) and path.endswith((".onnx", ".pt", ".pt2", ".pth", ".ts")):
            report("model.source.path", f"expected {_FOLDER_KINDS[kind]}, found the file '{path}'")
    auto_class = source.get("auto_class")
    if (
        kind == "huggingface"
        and isinstance(auto_class, str)
        and not re.fullmatch(r"[A-Z][A-Za-z0-9_]*", auto_class)
    ):
        report(
            "model.source.auto_class",
            "expected a transformers class name such as AutoModelForSequenceClassification, "
            f"found '{auto_class}'",
        )
    if kind == "mlflow":
        uri = source.get("uri")
        if not uri:
            report("model.source.uri", "missing; an mlflow source needs a model URI")
        elif isinstance(uri, str) and not _MLFLOW_URI.fullmatch(uri):
            report(
                "model.source.uri",
                "expected models:/NAME/VERSION, models:/NAME@ALIAS, models:/MODEL_ID or "
                "runs:/RUN_ID/PATH, "
                f"found '{uri}'",
            )


def check_target(target: Mapping[str, Any], report: Report) -> None:
    family = target.get("family")
    known = registered_targets()
    if isinstance(family, str) and family not in known:
        report("target.family", unknown_name_message("target family", family, known))
    threads = target.get("threads")
    if isinstance(threads, int) and not isinstance(threads, bool) and threads < 0:
        report("target.threads", f"expected 0 (runtime default) or more, found {threads}")
    if target.get("runtime_version"):
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            SpecifierSet(str(target["runtime_version"]))
        except InvalidSpecifier:
            report(
                "target.runtime_version",
                "expected a version specifier such as '>=1.20', "
                f"found '{target['runtime_version']}'",
            )


def check_recipe(spec: Mapping[str, Any], report: Report, model_file: str, root: Path) -> None:
    """Pass names and options, the format chain, runtime and precision compatibility.

    A selecting recipe (``select: true``) has no passes of its own: each of its
    candidates is checked against the target instead.
    """
    recipe = _get(spec, "recipe")
    if not isinstance(recipe, Mapping):
        return
    if recipe.get("select") is True:
        _check_selection(spec, recipe, report, model_file, root)
        return
    if recipe.get("candidates"):
        report(
            "recipe.candidates",
            "only a selecting recipe (select: true) has candidates; this recipe runs its passes",
        )
    passes = recipe.get("passes")
    if isinstance(passes, list):
        check_passes(spec, passes, report, model_file)


def check_passes(
    spec: Mapping[str, Any],
    passes: list[Any],
    report: Report,
    model_file: str,
    key_prefix: str = "recipe.passes",
) -> None:
    """Check one list of passes against the spec's target and model (see check_recipe)."""
    target = _get(spec, "target") or {}
    target_cls = registered_targets().get(str(target.get("family")))
    known = registered_passes()
    first = passes[0] if passes and isinstance(passes[0], Mapping) else {}
    fmt, precision = export_format(known.get(str(first.get("name")))), "fp32"
    chain_ok = True
    source = _get(spec, "model", "source") or {}
    if fmt == TORCH_PROGRAM and source.get("kind") == "onnx":
        report(
            f"{key_prefix}[0].name",
            f"pass '{first.get('name')}' takes a torch program (pt2), but model.source.kind is "
            f"onnx in {model_file}: an ONNX model cannot become a torch program; use a "
            "PyTorch source or a recipe that starts from ONNX",
        )
        chain_ok = False
    if fmt == HF_FOLDER and source.get("kind") != "huggingface":
        report(
            f"{key_prefix}[0].name",
            f"pass '{first.get('name')}' takes a Hugging Face folder, but model.source.kind is "
            f"{source.get('kind')} in {model_file}",
        )
        chain_ok = False
    task = _get(spec, "model", "task")
    if task in FOLDER_EXPORTS and fmt != HF_FOLDER:
        report(
            f"{key_prefix}[0].name",
            f"a {task} model is exported with its KV cache by a first pass that takes "
            f"its Hugging Face folder ({FOLDER_EXPORTS[task]}); found "
            + (f"'{first.get('name')}'" if passes else "a recipe without passes"),
        )
        chain_ok = False
    for i, p in enumerate(passes):
        key = f"{key_prefix}[{i}]"
        if not isinstance(p, Mapping) or not isinstance(p.get("name"), str):
            chain_ok = False
            continue
        name = p["name"]
        cls = known.get(name)
        if cls is None:
            report(f"{key}.name", unknown_name_message("pass", name, known))
            chain_ok = False
            continue
        options = p.get("options") or {}
        if isinstance(options, Mapping):
            before = _Counter(report)
            check_dataclass(options, cls.Options, f"{key}.options", before)
            opts = cls.Options(**options) if not before.count else None
            if opts is not None:
                for option, problem in cls.option_problems(options):
                    report(f"{key}.options.{option}", problem)
        else:
            opts = None
        if fmt not in cls.input_formats and chain_ok:
            report(
                f"{key}.name",
                f"pass '{name}' takes {' or '.join(cls.input_formats)}, but the model is {fmt} "
                "at this point of the recipe",
            )
            chain_ok = False
        if target_cls is not None and target_cls.runtime not in cls.runtimes:
            report(
                f"{key}.name",
                f"pass '{name}' makes a model for {', '.join(cls.runtimes)}; target family "
                f"'{target_cls.family}' runs {target_cls.runtime}",
            )
        if cls.needs_calibration and not _get(spec, "model", "data", "calibration"):
            report(
                f"{key}.name",
                f"pass '{name}' needs calibration data; set model.data.calibration in {model_file}",
            )
        fmt = cls.output_format
        if opts is not None:
            precision = cls().output_precision(opts, precision)
    if target_cls is not None and chain_ok and fmt not in target_cls.formats:
        report(
            key_prefix,
            f"the recipe ends with a model in {fmt} format; target family "
            f"'{target_cls.family}' loads {' or '.join(target_cls.formats)}",
        )
    precisions = target.get("precisions")
    if chain_ok and isinstance(precisions, list) and precision not in precisions:
        report(
            key_prefix,
            f"the recipe makes a {precision} model; target '{target.get('name')}' runs "
            f"{', '.join(map(str, precisions))} (target.precisions)",
        )


def _check_selection(
    spec: Mapping[str, Any],
    recipe: Mapping[str, Any],
    report: Report,
    model_file: str,
    root: Path,
) -> None:
    """A selecting recipe: no passes of its own; every named candidate exists and fits."""
    passes = recipe.get("passes")
    if isinstance(passes, list) and passes:
        report(
            "recipe.passes",
            f"a selecting recipe (select: true) names candidate recipes, not passes; "
            f"found {len(passes)} pass(es)",
        )
    candidates = recipe.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return
    options = list_options(root, "recipe")
    target = _get(spec, "target") or {}
    for i, name in enumerate(candidates):
        key = f"recipe.candidates[{i}]"
        if not isinstance(name, str):
            continue
        if name not in options:
            report(key, unknown_name_message("recipe", name, options))
            continue
        data = read_option(root, "recipe", name)
        if not isinstance(data, Mapping):
            continue  # composing the candidate reports what is wrong with its file
        if data.get("select") is True:
            report(key, f"recipe '{name}' selects among recipes itself; name recipes with passes")
            continue
        found = recipe_problems(spec, data, model_file)
        if found:
            report(
                key,
                f"recipe '{name}' cannot run on target '{target.get('name')}': " + "; ".join(found),
            )


def recipe_problems(
    spec: Mapping[str, Any], recipe: Mapping[str, Any], model_file: str
) -> list[str]:
    """Why another recipe's passes cannot run for this spec's model and target (empty: they can)."""
    found: list[str] = []
    passes = recipe.get("passes")
    if isinstance(passes, list):
        check_passes(spec, passes, _Collect(found), model_file, "passes")
    return found


class _Collect:
    """A report that keeps only the messages."""

    def __init__(self, into: list[str]) -> None:
        self.into = into

    def __call__(self, key: str, message: str) -> None:
        self.into.append(message)


class _Counter:
    """Forwards problems and counts them."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.count = 0

    def __call__(self, key: str, message: str) -> None:
        self.count += 1
        self.report(key, message)


def check_gates(spec: Mapping[str, Any], report: Report) -> None:
    gates = _get(spec, "deployment", "gates")
    task = _get(spec, "model", "task")
    labels = _get(spec, "model", "labels") or []
    if not isinstance(gates, list) or task not in TASKS:
        return
    measured = measured_metrics(
        task,
        labels if isinstance(labels, list) else [],
        multi_label=_get(spec, "model", "multi_label") is True,
        outputs=_names(_get(spec, "model", "outputs")),
        pipeline=isinstance(_get(spec, "model", "pipeline"), Mapping),
        user=[n for m in _list(_get(spec, "model", "metrics")) for n in metric_names(m)],
        batches=gate_batches(spec),
    )
    for i, text in enumerate(gates):
        if not isinstance(text, str):
            continue
        key = f"deployment.gates[{i}]"
        try:
            gate = parse_gate(text)
        except GateSyntaxError as exc:
            report(key, str(exc))
            continue
        if gate.metric not in measured:
            msg = f"gate on '{gate.metric}', which is never measured for a {task} model"
            near = closest(gate.metric, measured)
            msg += f" (did you mean '{near}'?)" if near else f"; measured: {', '.join(measured)}"
            report(key, msg)


def derived(name: str) -> list[str]:
    """The metrics a user metric ``name`` reports: itself, ``reference_`` and ``_drop``."""
    return [name, f"reference_{name}", f"{name}_drop"]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _names(tensors: Any) -> list[str]:
    return [str(t["name"]) for t in _list(tensors) if isinstance(t, Mapping) and "name" in t]


def check_deployment(spec: Mapping[str, Any], report: Report, option: str) -> None:
    name = _get(spec, "deployment", "name")
    if isinstance(name, str) and name != option:
        report(
            "deployment.name",
            f"expected '{option}' (the file name, which names artifacts/{option}/), found '{name}'",
        )
    validation = _get(spec, "deployment", "validation") or {}
    runs = validation.get("latency_runs") if isinstance(validation, Mapping) else None
    if isinstance(runs, int) and not isinstance(runs, bool) and runs < 1:
        report("deployment.validation.latency_runs", f"expected 1 or more, found {runs}")


def check_events(spec: Mapping[str, Any], report: Report) -> None:
    """``deployment.events``: known fields, once each, and an outbox of at least one event."""
    events = _get(spec, "deployment", "events")
    if not isinstance(events, Mapping):
        return
    fields = events.get("fields")
    seen: set[str] = set()
    for i, name in enumerate(fields if isinstance(fields, list) else []):
        key = f"deployment.events.fields[{i}]"
        if not isinstance(name, str):
            continue  # the schema check reports the type
        if name not in EVENT_FIELDS:
            report(key, unknown_name_message("event field", name, EVENT_FIELDS))
        elif name in seen:
            report(key, f"expected each field once, found '{name}' again")
        seen.add(name)
    size = events.get("outbox_max")
    if isinstance(size, int) and not isinstance(size, bool) and size < 1:
        report("deployment.events.outbox_max", f"expected 1 or more, found {size}")
    if events.get("include_inputs") is True and events.get("enabled") is not True:
        report(
            "deployment.events.include_inputs",
            "expected false while events are not enabled (enabled: false), found true",
        )


def check_validate_on(spec: Mapping[str, Any], report: Report, root: Path) -> None:
    """With ``deployment.validate_on.where: lab``, the fleet must have a lab device of the
    target's family (checked before any work)."""
    from orchestrator.errors import SpecError
    from orchestrator.spec.fleet import find_lab_device

    place = _get(spec, "deployment", "validate_on")
    family = _get(spec, "target", "family")
    if not isinstance(place, Mapping) or place.get("where") != "lab" or not isinstance(family, str):
        return
    fleet, device = place.get("fleet", ""), place.get("device", "")
    if not isinstance(fleet, str) or not isinstance(device, str):
        return  # the schema check reports the types
    try:
        find_lab_device(root, family, fleet, device)
    except SpecError as exc:
        for problem in exc.problems:
            if problem.key.endswith(".fleet") and not fleet:  # no fleet named: where=lab asked
                report("deployment.validate_on.where", problem.message)
            elif problem.key.startswith("deployment.validate_on"):
                report(problem.key, problem.message)
            else:  # the fleet file itself
                report("deployment.validate_on.fleet", str(problem))


def check_change_plan(spec: Mapping[str, Any], report: Report) -> None:
    """``deployment.change_plan``: known change kinds; its gates are gates of the deployment."""
    from orchestrator.core.schema import CHANGE_KINDS

    plan = _get(spec, "deployment", "change_plan")
    if not isinstance(plan, Mapping):
        return
    for i, kind in enumerate(plan.get("covers") or []):
        if kind not in CHANGE_KINDS:
            report(
                f"deployment.change_plan.covers[{i}]",
                f"expected one of {', '.join(CHANGE_KINDS)}, found '{kind}'",
            )
    gates = list(_get(spec, "deployment", "gates") or [])
    for i, gate in enumerate(plan.get("gates") or []):
        if gate not in gates:
            report(
                f"deployment.change_plan.gates[{i}]",
                f"expected one of the deployment's gates ({'; '.join(gates) or 'none'}), "
                f"found '{gate}'",
            )


def check_spec(
    spec: Mapping[str, Any], report: Report, choices: Mapping[str, str], root: Path
) -> None:
    """Run every cross-field rule on a composed spec of the project at ``root``.

    Pure: everything a rule looks at is its arguments or a file under ``root``.
    """
    model = spec.get("model")
    if isinstance(model, Mapping):
        check_model(model, report)
    target = spec.get("target")
    if isinstance(target, Mapping):
        check_target(target, report)
    check_recipe(spec, report, f"conf/model/{choices.get('model')}.yaml", root)
    check_servable(spec, report)
    check_gates(spec, report)
    check_deployment(spec, report, choices.get("deployment", ""))
    check_latency_batches(spec, report)
    check_validate_on(spec, report, root)
    check_events(spec, report)
    check_change_plan(spec, report)
