"""Device runners: load a bundle's model with one runtime and run it; one set of checks for all.

One runner per runtime that ``runtime.json`` can name (``target.runtime``):

- ``onnxruntime``: an ONNX model in ONNX Runtime (execution provider, threads and graph
  optimisation level of ``settings``);
- ``onnxruntime_mobile``: an ``.ort`` model in ONNX Runtime, with the phone app's session
  options (execution providers in order, session config entries, threads);
- ``openvino``: OpenVINO IR or ONNX, compiled for ``settings.device`` with the rest of
  ``settings`` as its configuration;
- ``coreml``: a Core ML package (``.mlpackage``) predicted by coremltools on macOS (elsewhere
  :class:`RunnerUnavailable`);
- ``tvm``: an Apache TVM Relax executable (``.so``) in the Relax virtual machine, with
  ``settings.num_threads`` threads;
- ``tensorrt``: the shipped ONNX and ``settings.engine``; on first use the engine is built
  with :mod:`.tensorrt_engine` (cached by ONNX hash, TensorRT version, GPU and settings
  hash) and its hash, TensorRT version and GPU are reported (:attr:`Runner.details`).
  Where TensorRT is missing, :func:`load` raises :class:`RunnerUnavailable` saying so:
  the engine is not built and nothing passes.

The interface is small: ``load(folder, runtime) -> runner`` and
``runner.run(inputs) -> list of arrays`` (runtime.json's output order). The agent's
health check, its ``measure`` command and the phone client all run models through it
and judge outputs with the one :func:`check_outputs` (tolerances and argmax agreement).

Standard library and Python 3.8+, like the rest of the agent; numpy and the runtime
are imported only when a model is run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

from .files import read_json

DEFAULT_ATOL = 1e-3
ORT_PROVIDERS = {  # runtime.json's short provider names (phones) -> ONNX Runtime's
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "XNNPACK": "XnnpackExecutionProvider",
    "NNAPI": "NnapiExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "COREML": "CoreMLExecutionProvider",
}


class RunnerError(Exception):
    """The bundle cannot be run as its runtime.json says (a bad setting, a missing file)."""


class RunnerUnavailable(RunnerError):
    """The runtime the bundle needs cannot run here; ``details`` says what was found."""

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


RUNNERS: dict = {}  # runtime name -> Runner subclass


def register(cls: type) -> type:
    RUNNERS[cls.runtime] = cls  # type: ignore[attr-defined]
    return cls


class Runner:
    """A bundle's model, loaded: ``run(inputs)`` gives its outputs in runtime.json's order."""

    runtime = ""  # the name runtime.json's target.runtime gives

    def __init__(self, folder: str, runtime: dict, cache: str | None = None) -> None:
        self.folder = folder
        self.spec = runtime
        self.settings = dict(runtime.get("settings") or {})
        try:
            self.model_path = os.path.join(folder, str(runtime["model"]["file"]))
            self.input_names = [str(t["name"]) for t in runtime["inputs"]]
            self.output_names = [str(t["name"]) for t in runtime["outputs"]]
        except (KeyError, TypeError) as exc:
            raise RunnerError(f"runtime.json: missing or malformed key {exc}") from exc
        if not os.path.exists(self.model_path):  # a file, or a package folder (.mlpackage)
            raise RunnerError(f"runtime.json names model {runtime['model']['file']}; not found")
        self.cache = cache
        self.version = "unknown"
        self.details: dict = {}  # what a report should say besides the version (providers, engine)

    def run(self, inputs: dict) -> list:
        raise NotImplementedError

    def describe(self) -> dict:
        """The runtime that ran the model, for reports: name, version and the runner's details."""
        return dict({"name": self.runtime, "version": str(self.version)}, **self.details)


def runner_names() -> list:
    return sorted(RUNNERS)


def load(folder: str, runtime: dict | None = None, cache: str | None = None) -> Runner:
    """The runner for a bundle folder (``runtime``: its runtime.json, read when not given).

    ``cache`` is where runners that build something on first use keep it (TensorRT engines).
    """
    if runtime is None:
        runtime = read_json(os.path.join(folder, "runtime.json"))
    name = str((runtime.get("target") or {}).get("runtime"))
    cls = RUNNERS.get(name)
    if cls is None:
        raise RunnerUnavailable(
            f"no device runner for runtime '{name}'; this agent has: {', '.join(runner_names())}"
        )
    runner: Runner = cls(folder, runtime, cache)
    return runner


# -- the runners ----------------------------------------------------------------------------------


def _ort_session(ort, path: str, options, providers: list):
    return ort.InferenceSession(path, options, providers=providers)


@register
class OnnxRuntimeRunner(Runner):
    """ONNX Runtime with the session settings of a server or NUC bundle."""

    runtime = "onnxruntime"

    def __init__(self, folder: str, runtime: dict, cache: str | None = None) -> None:
        super().__init__(folder, runtime, cache)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.settings.get("intra_op_num_threads", 0))
        so.inter_op_num_threads = int(self.settings.get("inter_op_num_threads", 0))
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = str(self.settings.get("graph_optimization_level", "ORT_ENABLE_ALL"))
        if not hasattr(ort.GraphOptimizationLevel, level):
            raise RunnerError(f"runtime.json: settings.graph_optimization_level {level!r} unknown")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        provider = str(self.settings.get("execution_provider", "CPUExecutionProvider"))
        provider = ORT_PROVIDERS.get(provider, provider)
        self.session = _ort_session(ort, self.model_path, so, [provider])
        self.version = ort.__version__
        self.details = {"providers": list(self.session.get_providers())}

    def run(self, inputs: dict) -> list:
        return list(self.session.run(self.output_names, inputs))


@register
class OrtMobileRunner(Runner):
    """ONNX Runtime Mobile's ``.ort`` model with the session options a phone app sets."""

    runtime = "onnxruntime_mobile"

    def __init__(self, folder: str, runtime: dict, cache: str | None = None) -> None:
        super().__init__(folder, runtime, cache)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.settings.get("intra_op_num_threads", 1))
        for key, value in (self.settings.get("session_config_entries") or {}).items():
            so.add_session_config_entry(str(key), str(value))
        available = set(ort.get_available_providers())
        wanted = self.settings.get("execution_providers") or ["CPU"]
        providers = [ORT_PROVIDERS.get(p, p) for p in wanted]
        usable = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self.session = _ort_session(ort, self.model_path, so, usable)
        self.version = ort.__version__
        self.details = {"providers": usable}

    def run(self, inputs: dict) -> list:
        return list(self.session.run(self.output_names, inputs))


@register
class OpenVinoRunner(Runner):
    """OpenVINO, compiled for ``settings.device`` with the rest of ``settings`` as config."""

    runtime = "openvino"

    def __init__(self, folder: str, runtime: dict, cache: str | None = None) -> None:
        super().__init__(folder, runtime, cache)
        import numpy as np
        import openvino as ov

        core = ov.Core()
        device = str(
            self.settings.get("device", (runtime.get("target") or {}).get("device", "CPU"))
        )
        config = {k: v for k, v in self.settings.items() if k != "device"}
        self.compiled = core.compile_model(core.read_model(self.model_path), device, config)
        self.request = self.compiled.create_infer_request()
        self.outputs = list(self.compiled.outputs)
        self.version = ov.get_version()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        # the precision the device runs at, as OpenVINO reports it (bf16 asked, f32 without it)
        precision = str(getattr(hint, "get_type_name", lambda: hint)())
        self.details = {"device": device, "execution_precision": precision}
        self._np = np

    def run(self, inputs: dict) -> list:
        result = self.request.infer(inputs)
        return [self._np.array(result[o]) for o in self.outputs]


@register
class TensorRtRunner(Runner):
    """The shipped ONNX as a TensorRT engine built (or taken from the cache) on this device.

    The engine is run with TensorRT's Python API (buffers held by torch's CUDA tensors)
    where both are installed, else with ``trtexec`` (inputs and outputs through files).
    """

    runtime = "tensorrt"

    def __init__(self, folder: str, runtime: dict, cache: str | None = None) -> None:
        super().__init__(folder, runtime, cache)
        from pathlib import Path

        from . import tensorrt_engine as trt_engine

        engine = self.settings.get("engine")
        if not isinstance(engine, dict):
            raise RunnerError("runtime.json: settings.engine (the engine build settings) missing")
        try:
            settings = trt_engine.EngineSettings.from_json(engine)
        except (trt_engine.EngineBuildError, TypeError) as exc:
            raise RunnerError(f"runtime.json: settings.engine: {exc}") from exc
        self.engine_settings = settings
        self.details = {
            "engine": {
                "built": False,
                "onnx_sha256": trt_engine.sha256_file(Path(self.model_path)),
                "settings_sha256": settings.digest(),
            }
        }
        version = trt_engine.tensorrt_version()
        if version is None:
            raise RunnerUnavailable(
                f"TensorRT is not installed on this device: {trt_engine.missing_reason()}; "
                "the engine was not built and the model was not run",
                self.details,
            )
        self.version = version
        where = Path(cache) if cache else trt_engine.DEFAULT_CACHE
        try:
            built = trt_engine.build_engine(Path(self.model_path), settings, where)
        except trt_engine.EngineBuildError as exc:
            raise RunnerError(f"TensorRT {version} could not build the engine: {exc}") from exc
        key = built["key"]
        self.details["engine"].update(
            built=True,
            sha256=built["engine_sha256"],
            tensorrt_version=key["tensorrt_version"],
            gpu=key["gpu"],
            cache_key=key["digest"],
            cache_hit=built["cache_hit"],
            builder=built["builder"],
            seconds=built["seconds"],
        )
        self.engine_path = str(built["engine"])
        self._run = self._executor(trt_engine)

    def _executor(self, trt_engine):
        trt = trt_engine._tensorrt()
        if trt is not None:
            try:
                import torch
            except ImportError:
                cuda = False
            else:
                cuda = bool(torch.cuda.is_available())
            if cuda:
                self.details["engine"]["executor"] = "tensorrt-python"
                return _python_engine(trt, torch, self.engine_path, self.output_names)
        exe = trt_engine.trtexec_path()
        if exe is not None:
            self.details["engine"]["executor"] = "trtexec"
            return _trtexec_engine(exe, self.engine_path, self.engine_settings, self.output_names)
        raise RunnerUnavailable(
            "TensorRT built the engine, but nothing here can run it: torch with CUDA "
            "(for TensorRT's Python API) and trtexec are both missing",
            self.details,
        )

    def run(self, inputs: dict) -> list:
        return self._run(inputs)


def _python_engine(trt, torch, engine_path: str, output_names: list):
    """Run an engine with TensorRT's Python API; torch's CUDA tensors hold the buffers."""
    import numpy as np

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    with open(engine_path, "rb") as fh:
        engine = runtime.deserialize_cuda_engine(fh.read())
    if engine is None:
        raise RunnerError(f"TensorRT could not load the engine {engine_path}")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    stream = torch.cuda.Stream()

    def run(inputs: dict) -> list:
        keep = []
        for name in ins:
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name])).cuda()
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        outs = {}
        for name in output_names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = tuple(context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype).cuda()
            context.set_tensor_address(name, tensor.data_ptr())
            outs[name] = tensor
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return [outs[n].cpu().numpy() for n in output_names]

    return run


def trtexec_run_command(
    exe: str, engine_path: str, files: dict, shapes: dict, out: str, profiled: bool
) -> list:
    """``trtexec`` running an engine once on input files and writing its outputs as JSON."""
    cmd = [
        exe,
        f"--loadEngine={engine_path}",
        "--loadInputs=" + ",".join(f"'{n}':{p}" for n, p in sorted(files.items())),
        f"--exportOutput={out}",
        "--iterations=1",
        "--warmUp=0",
        "--duration=0",
        "--avgRuns=1",
    ]
    if profiled:  # engines with dynamic dimensions need the shapes of this run
        spec = ",".join(f"'{n}':{'x'.join(str(d) for d in s)}" for n, s in sorted(shapes.items()))
        cmd.append(f"--shapes={spec}")
    return cmd


def parse_trtexec_outputs(text: str, output_names: list) -> list:
    """The arrays of trtexec's ``--exportOutput`` JSON, in ``output_names`` order."""
    import numpy as np

    found = {}
    for entry in json.loads(text):
        dims = [int(d) for d in str(entry["dimensions"]).split("x") if d]
        found[str(entry["name"])] = np.asarray(entry["values"], dtype=np.float32).reshape(dims)
    missing = [n for n in output_names if n not in found]
    if missing:
        raise RunnerError(f"trtexec wrote no output named {', '.join(missing)}")
    return [found[n] for n in output_names]


def _trtexec_engine(exe: str, engine_path: str, settings, output_names: list):
    """Run an engine with ``trtexec``: inputs as raw files, outputs from its JSON export."""

    def run(inputs: dict) -> list:
        scratch = tempfile.mkdtemp(prefix="edgeship-trtexec-")
        try:
            files: dict = {}
            shapes: dict = {}
            for name, value in inputs.items():
                path = os.path.join(scratch, f"input{len(files)}.bin")
                value.tofile(path)
                files[name], shapes[name] = path, list(value.shape)
            out = os.path.join(scratch, "outputs.json")
            cmd = trtexec_run_command(exe, engine_path, files, shapes, out, bool(settings.profiles))
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not os.path.isfile(out):
                tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
                raise RunnerError(f"trtexec could not run the engine ({proc.returncode}): {tail}")
            with open(out) as fh:
                return parse_trtexec_outputs(fh.read(), output_names)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return run


# -- the checks every caller applies ---------------------------------------------------------------


def check_outputs(expected: dict, got: list, output_names: list, smoke: dict) -> dict:
    """Compare a run's outputs with the expected ones: per-output tolerance, argmax agreement.

    ``smoke`` (smoke.json) gives ``atol``, ``rtol``, ``argmax_axis`` and
    ``min_argmax_agreement``. Returns ``{"passed", "failures", "outputs",
    "argmax_agreement"}``; every failure names the output, how far off it is and the bound.
    """
    import numpy as np

    atol = float(smoke.get("atol", DEFAULT_ATOL))
    rtol = float(smoke.get("rtol", 0.0))
    failures = []
    report: dict = {}
    if len(got) != len(output_names):
        failures.append(
            f"the model gave {len(got)} output(s); runtime.json names {len(output_names)}"
        )
    for name, value in zip(output_names, got):
        value = np.asarray(value)
        want = np.asarray(expected[name])
        if value.shape != want.shape:
            failures.append(f"{name}: shape {list(value.shape)}, expected {list(want.shape)}")
            report[name] = {"shape": list(value.shape), "expected_shape": list(want.shape)}
            continue
        diff = (
            float(np.max(np.abs(value.astype(np.float64) - want.astype(np.float64))))
            if value.size
            else 0.0
        )
        ok = bool(np.allclose(value, want, atol=atol, rtol=rtol))
        report[name] = {"max_abs_diff": diff, "atol": atol, "rtol": rtol, "passed": ok}
        if not ok:
            failures.append(f"{name}: max |diff| {diff:.6g} > atol {atol:.6g} (rtol {rtol:.6g})")
    agreement = None
    first = output_names[0] if output_names else None
    if got and first is not None and np.asarray(got[0]).shape == np.asarray(expected[first]).shape:
        axis = int(smoke.get("argmax_axis", -1))
        agreement = float(
            np.mean(
                np.argmax(np.asarray(got[0]), axis=axis)
                == np.argmax(np.asarray(expected[first]), axis=axis)
            )
        )
        needed = float(smoke.get("min_argmax_agreement", 1.0))
        if agreement < needed:
            failures.append(f"{first}: argmax agreement {agreement:.4f} < {needed:.4f}")
    return {
        "passed": not failures,
        "failures": failures,
        "outputs": report,
        "argmax_agreement": agreement,
    }


def smoke_data(folder: str, runtime: dict) -> tuple:
    """(inputs, expected outputs, smoke.json) of a bundle's smoke test, typed as runtime.json
    says."""
    import numpy as np

    smoke_dir = os.path.join(folder, "smoke")
    smoke = read_json(os.path.join(smoke_dir, "smoke.json"))
    with np.load(os.path.join(smoke_dir, smoke.get("input", "input.npz"))) as npz:
        inputs = {
            str(t["name"]): np.asarray(npz[t["name"]]).astype(t.get("dtype", "float32"))
            for t in runtime["inputs"]
        }
    with np.load(os.path.join(smoke_dir, smoke.get("expected", "expected.npz"))) as npz:
        expected = {str(t["name"]): np.asarray(npz[t["name"]]) for t in runtime["outputs"]}
    return inputs, expected, smoke


def smoke_check(folder: str, cache: str | None = None, then=None) -> dict:
    """Run a bundle's smoke test through its runner and judge it with :func:`check_outputs`.

    A runtime that cannot run here is a failure whose reason says why (never a pass).
    ``then(folder, runner, runtime, smoke)`` runs more checks with the loaded runner (the
    whole-volume pipeline's, :func:`.segment.pipeline_smoke`): a dict with ``passed``,
    ``failure`` and its figures, kept as ``pipeline``; None when it has nothing to check.
    """
    runtime = read_json(os.path.join(folder, "runtime.json"))
    name = str((runtime.get("target") or {}).get("runtime"))
    base = {"deployment": runtime.get("deployment"), "runner": name}
    if runtime.get("task") == "text-generation":
        return generation_check(folder, runtime, base, cache)
    if runtime.get("task") == "speech-recognition":
        return speech_check(folder, runtime, base)
    inputs, expected, smoke = smoke_data(folder, runtime)
    try:
        runner = load(folder, runtime, cache)
    except RunnerUnavailable as exc:
        return dict(
            base,
            result="fail",
            reason=str(exc),
            unavailable=True,
            runtime=dict({"name": name, "version": None}, **exc.details),
        )
    runner.run(inputs)  # warm-up (and, for engines, the first run after the build)
    start = time.perf_counter()
    got = runner.run(inputs)
    latency_ms = (time.perf_counter() - start) * 1000.0
    checked = check_outputs(expected, got, runner.output_names, smoke)
    extra = then(folder, runner, runtime, smoke) if then is not None else None
    if extra is not None:
        checked["passed"] = checked["passed"] and bool(extra["passed"])
        if extra.get("failure"):
            checked["failures"].append(str(extra["failure"]))
        base["pipeline"] = extra
    return dict(
        base,
        result="pass" if checked["passed"] else "fail",
        reason="; ".join(checked["failures"]) or None,
        latency_ms=round(latency_ms, 3),
        runtime=runner.describe(),
        outputs=checked["outputs"],
        argmax_agreement=checked["argmax_agreement"],
    )


def generation_check(folder: str, runtime: dict, base: dict, cache: str | None = None) -> dict:
    """The smoke test of a text-generation bundle: a short greedy generation from the shipped
    prompt's token ids (with the KV cache, :mod:`.generate`), compared token by token with
    the tokens the build's validation got from the same artifact.

    Where ONNX Runtime GenAI is installed and the model folder has a ``genai_config.json``,
    its generator decodes; otherwise ONNX Runtime with :mod:`.generate`'s KV-cache loop.
    An OpenVINO bundle (a stateful IR) decodes with OpenVINO GenAI's ``LLMPipeline`` where
    ``openvino_genai`` is installed, else with plain OpenVINO and the same loop, compiled
    with the bundle's settings either way (its inference precision among them)."""
    from .generate import KvDecoder, cache_dims, genai_greedy, greedy

    smoke = read_json(os.path.join(folder, "smoke", "smoke.json"))
    check = smoke.get("generation") or {}
    expected = [int(t) for t in check.get("expected_tokens") or []]
    prompt = [int(t) for t in check.get("prompt_ids") or []]
    if not expected or not prompt:
        raise RunnerError("smoke/smoke.json: generation.prompt_ids and expected_tokens needed")
    model_dir = os.path.dirname(os.path.join(folder, str(runtime["model"]["file"])))
    genai = (
        _genai_version() if os.path.isfile(os.path.join(model_dir, "genai_config.json")) else None
    )
    if genai is not None:
        got = genai_greedy(model_dir, prompt, len(expected))
        described = {"name": "onnxruntime-genai", "version": genai}
        return _generation_result(base, got, expected, check, described)
    if base["runner"] == "openvino":
        return _ov_generation_check(folder, runtime, base, check, prompt, expected, model_dir)
    try:
        runner = load(folder, runtime, cache)
    except RunnerUnavailable as exc:
        name = base["runner"]
        return dict(
            base,
            result="fail",
            reason=str(exc),
            unavailable=True,
            runtime=dict({"name": name, "version": None}, **exc.details),
        )
    session = getattr(runner, "session", None)
    if session is None:
        raise RunnerError(f"runner {base['runner']} cannot decode a text-generation model")
    try:
        decoder = KvDecoder(session, cache_dims(model_dir))
    except ValueError as exc:
        raise RunnerError(f"text-generation bundle: {exc}") from exc
    got = greedy(decoder, prompt, len(expected))
    return _generation_result(base, got, expected, check, runner.describe())


def _ov_generation_check(
    folder: str,
    runtime: dict,
    base: dict,
    check: dict,
    prompt: list,
    expected: list,
    model_dir: str,
) -> dict:
    """The health check of an OpenVINO text-generation bundle: ``LLMPipeline`` where
    openvino_genai is installed, else the stateful IR in OpenVINO with the KV-cache loop."""
    from .generate import (
        OvStatefulDecoder,
        greedy,
        ov_compile,
        ov_genai_greedy,
        ov_genai_pipeline,
        ov_properties,
    )

    settings = dict(runtime.get("settings") or {})
    settings.setdefault("device", (runtime.get("target") or {}).get("device", "CPU"))
    model_path = os.path.join(folder, str(runtime["model"]["file"]))
    if not os.path.isfile(model_path):
        raise RunnerError(f"runtime.json names model {runtime['model']['file']}; not found")
    try:
        import openvino as ov
    except ImportError as exc:
        return dict(
            base,
            result="fail",
            reason=f"OpenVINO is not installed on this device ({exc}); the model was not run",
            unavailable=True,
            runtime={"name": "openvino", "version": None},
        )
    try:
        import openvino_genai
    except ImportError:
        openvino_genai = None
    asked = {k: settings[k] for k in sorted(settings)}
    if openvino_genai is not None:
        pipe = ov_genai_pipeline(model_dir, settings)
        got = ov_genai_greedy(pipe, prompt, len(expected))
        described = {
            "name": "openvino-genai",
            "version": str(openvino_genai.__version__),
            "openvino": str(ov.get_version()),
            "settings": asked,
        }
        return _generation_result(base, got, expected, check, described)
    try:
        compiled = ov_compile(model_path, settings)
        decoder = OvStatefulDecoder(compiled)
    except ValueError as exc:
        raise RunnerError(f"text-generation bundle: {exc}") from exc
    got = greedy(decoder, prompt, len(expected))
    described = {
        "name": "openvino",
        "version": str(ov.get_version()),
        "execution": ov_properties(compiled),
        "settings": asked,
    }
    return _generation_result(base, got, expected, check, described)


def speech_check(folder: str, runtime: dict, base: dict) -> dict:
    """The smoke test of a speech-recognition bundle: OpenVINO GenAI's ``WhisperPipeline``
    transcribes the shipped clip (``smoke/clip.npy``, 16 kHz samples) greedily, and the
    generated token ids and text are compared with those the build's validation got from
    the same artifact (:mod:`.speech`). Without OpenVINO GenAI the check fails and says so
    (``unavailable``): the model was not run."""
    import numpy as np

    from . import speech

    smoke_dir = os.path.join(folder, "smoke")
    check = read_json(os.path.join(smoke_dir, "smoke.json")).get("speech") or {}
    expected = [int(t) for t in check.get("expected_tokens") or []]
    if not expected or not check.get("clip"):
        raise RunnerError("smoke/smoke.json: speech.clip and speech.expected_tokens needed")
    samples = np.load(os.path.join(smoke_dir, str(check["clip"])))
    model_dir = os.path.dirname(os.path.join(folder, str(runtime["model"]["file"])))
    settings = runtime.get("speech") or {}
    threads = int((runtime.get("target") or {}).get("threads") or 0)
    try:
        pipe = speech.load_pipeline(
            model_dir, threads, str(settings.get("inference_precision") or "f32")
        )
    except speech.SpeechUnavailable as exc:
        return dict(
            base,
            result="fail",
            reason=str(exc),
            unavailable=True,
            runtime={"name": "openvino-genai", "version": None},
        )
    got = speech.transcribe(
        pipe,
        samples,
        str(check.get("language") or settings.get("language") or "<|en|>"),
        str(check.get("task") or settings.get("task") or "transcribe"),
        int(check.get("max_new_tokens") or settings.get("max_new_tokens") or 64),
    )
    from .generate import agreement

    share, first = agreement(got["tokens"], expected)
    if first < 0 and len(got["tokens"]) != len(expected):
        first = min(len(got["tokens"]), len(expected))
    failures = []
    if got["tokens"] != expected:
        failures.append(
            f"transcribed tokens differ from the expected ones: {len(got['tokens'])} tokens "
            f"for {len(expected)} expected, first difference at step {first}"
        )
    if check.get("expected_text") is not None and got["text"] != check["expected_text"]:
        failures.append(
            f"transcript {got['text']!r} differs from the expected {check['expected_text']!r}"
        )
    audio_s = len(samples) / float(settings.get("sampling_rate") or 16000)
    return dict(
        base,
        result="pass" if not failures else "fail",
        reason="; ".join(failures) or None,
        latency_ms=round(1000.0 * got["seconds"], 3),
        runtime={"name": "openvino-genai", "version": speech.genai_version()},
        speech={
            "text": got["text"],
            "tokens": got["tokens"],
            "expected": expected,
            "agreement": share,
            "first_divergence": first,
            "audio_seconds": round(audio_s, 3),
            "real_time_factor": round(got["seconds"] / audio_s, 4) if audio_s else None,
        },
    )


def _genai_version() -> str | None:
    """ONNX Runtime GenAI's version where it can be imported, else None."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    return str(getattr(og, "__version__", None) or _distribution_version("onnxruntime-genai"))


def _generation_result(base: dict, got: dict, expected: list, check: dict, runtime: dict) -> dict:
    from .generate import agreement

    share, first = agreement(got["tokens"], expected)
    needed = float(check.get("min_agreement", 1.0))
    failures = []
    if share < needed:
        failures.append(
            f"generated tokens agree with the expected ones on {share:.3f} of "
            f"{len(expected)} steps (< {needed}); first difference at step {first}"
        )
    steps = got["steps_ms"]
    return dict(
        base,
        result="pass" if not failures else "fail",
        reason="; ".join(failures) or None,
        latency_ms=round(got["ttft_ms"] + sum(steps), 3),
        runtime=runtime,
        generation={
            "tokens": got["tokens"],
            "expected": expected,
            "agreement": share,
            "first_divergence": first,
            "ttft_ms": round(got["ttft_ms"], 3),
            "tokens_per_s": round(1000.0 * len(steps) / sum(steps), 1) if sum(steps) else None,
        },
    )


# -- Apache TVM ------------------------------------------------------------------------------------


@register
class TvmRunner(Runner):
    """A TVM Relax executable (``model.so``) in the Relax virtual machine on the CPU.

    ``settings.num_threads`` sets TVM's thread pool (``TVM_NUM_THREADS``) unless the
    environment already does; ``settings.entry`` names the function to call (``main``).
    ``tvm`` is imported only here: a device without it gets :class:`RunnerUnavailable`.
    """

    runtime = "tvm"

    def __init__(self, folder: str, runtime: dict, cache: str | None = None) -> None:
        super().__init__(folder, runtime, cache)
        threads = int(self.settings.get("num_threads") or 0)
        if threads and "TVM_NUM_THREADS" not in os.environ:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM starts its pool
        try:
            import tvm
            from tvm import relax
        except ImportError as exc:
            raise RunnerUnavailable(
                f"Apache TVM is not installed on this device ({exc}); the model was not run",
                {"llvm_target": self.settings.get("llvm_target")},
            ) from exc
        import numpy as np

        self._np = np
        self._tvm = tvm
        self.device = tvm.cpu()
        try:
            lib = tvm.runtime.load_module(self.model_path)
            self.vm = relax.VirtualMachine(lib, self.device)
            self.entry = self.vm[str(self.settings.get("entry", "main"))]
        except Exception as exc:  # a library built for another CPU, or a damaged file
            raise RunnerError(f"TVM could not load {runtime['model']['file']}: {exc}") from exc
        self.version = tvm.__version__
        self.details = {"llvm_target": self.settings.get("llvm_target"), "threads": threads}

    def run(self, inputs: dict) -> list:
        np = self._np
        args = [
            self._tvm.runtime.tensor(np.ascontiguousarray(inputs[n]), self.device)
            for n in self.input_names
        ]
        out = self.entry(*args)
        if hasattr(out, "numpy"):
            return [out.numpy()]
        return [o.numpy() for o in out]


# -- phone runtimes: LiteRT and ExecuTorch ---------------------------------------------------------
#
# - ``litert``: a ``.tflite`` model in the LiteRT interpreter (``ai_edge_litert``, or the older
#   ``tflite_runtime``), run through its signature (``settings.signature``), inputs fed to
#   ``settings.signature_inputs`` by position, outputs read from ``settings.signature_outputs``;
#   ``settings.num_threads``; ``settings.delegate`` ``none ...`` keeps the built-in kernels;
# - ``executorch``: a ``.pte`` program in ``executorch.runtime``, its ``settings.method``
#   (``forward``) run with the inputs in runtime.json's order (torch tensors, as the Python
#   runtime takes them).


def _distribution_version(name: str) -> str:
    try:
        from importlib import metadata

        return str(metadata.version(name))
    except Exception:  # a version is only reported
        return "unknown"


@register
class LitertRunner(Runner):
    """LiteRT's interpreter with the signature, threads and delegate choice of a phone bundle."""

    runtime = "litert"

    def __init__(self, folder: str, runtime: dict, cache: str | None = None) -> None:
        super().__init__(folder, runtime, cache)
        import numpy as np

        try:
            from ai_edge_litert import interpreter as tfl

            dist = "ai-edge-litert"
        except ImportError:
            try:
                from tflite_runtime import interpreter as tfl

                dist = "tflite-runtime"
            except ImportError as exc:
                raise RunnerUnavailable(
                    "LiteRT is not installed here (pip install ai-edge-litert)",
                    {"import_error": str(exc)},
                ) from exc
        kwargs: dict = {}
        threads = int(self.settings.get("num_threads") or 0)
        if threads:
            kwargs["num_threads"] = threads
        delegate = str(self.settings.get("delegate", "XNNPACK"))
        if delegate.startswith("none"):
            kwargs["experimental_op_resolver_type"] = (
                tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        interp = tfl.Interpreter(model_path=self.model_path, **kwargs)
        interp.allocate_tensors()
        signatures = interp.get_signature_list()
        key = str(self.settings.get("signature") or next(iter(signatures)))
        if key not in signatures:
            raise RunnerError(
                f"runtime.json: settings.signature {key!r} is not in the model "
                f"(it has: {', '.join(signatures)})"
            )
        self.args = list(self.settings.get("signature_inputs") or signatures[key]["inputs"])
        self.outs = list(self.settings.get("signature_outputs") or signatures[key]["outputs"])
        if len(self.args) != len(self.input_names) or len(self.outs) != len(self.output_names):
            raise RunnerError(
                f"runtime.json: the model's signature {key!r} has {len(self.args)} input(s) and "
                f"{len(self.outs)} output(s); runtime.json names {len(self.input_names)} and "
                f"{len(self.output_names)}"
            )
        self.runner = interp.get_signature_runner(key)
        self.version = _distribution_version(dist)
        self.details = {"signature": key, "delegate": delegate}
        self._np = np

    def run(self, inputs: dict) -> list:
        np = self._np
        feed = {
            arg: np.ascontiguousarray(inputs[name])
            for arg, name in zip(self.args, self.input_names)
        }
        out = self.runner(**feed)
        return [np.asarray(out[o]) for o in self.outs]


@register
class ExecutorchRunner(Runner):
    """ExecuTorch's runtime on a ``.pte`` program: its method, the inputs in order."""

    runtime = "executorch"

    def __init__(self, folder: str, runtime: dict, cache: str | None = None) -> None:
        super().__init__(folder, runtime, cache)
        import numpy as np

        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise RunnerUnavailable(
                "ExecuTorch is not installed here (pip install executorch)",
                {"import_error": str(exc)},
            ) from exc
        threads = int(self.settings.get("num_threads") or 0)
        if threads:
            try:
                from executorch.extension.pybindings import portable_lib

                portable_lib._unsafe_reset_threadpool(threads)
            except (ImportError, AttributeError):
                pass  # the runtime's own thread count then
        method_name = str(self.settings.get("method", "forward"))
        program = Runtime.get().load_program(self.model_path)
        if method_name not in program.method_names:
            raise RunnerError(
                f"runtime.json: settings.method {method_name!r} is not in the program "
                f"(it has: {', '.join(sorted(program.method_names))})"
            )
        self.method = program.load_method(method_name)
        self.version = _distribution_version("executorch")
        self.details = {"method": method_name, "backend": str(self.settings.get("backend", ""))}
        self._np = np
        self._torch = torch

    def run(self, inputs: dict) -> list:
        np = self._np
        args = tuple(
            self._torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.input_names
        )
        return [
            np.asarray(o.numpy() if hasattr(o, "numpy") else o) for o in self.method.execute(args)
        ]


# -- Core ML (macOS lab devices) -------------------------------------------------------------------


@register
class CoremlRunner(Runner):
    """A Core ML package (``.mlpackage``) run by ``coremltools.models.MLModel(...).predict``.

    Core ML predicts only on macOS (and iOS): elsewhere :class:`RunnerUnavailable` says so and
    nothing passes. ``settings.compute_units`` (``all``, ``cpuOnly``, ``cpuAndGPU``,
    ``cpuAndNeuralEngine``) chooses where Core ML may run the model.
    """

    runtime = "coreml"

    def __init__(self, folder: str, runtime: dict, cache: str | None = None) -> None:
        super().__init__(folder, runtime, cache)
        import platform

        units = str(self.settings.get("compute_units") or "all")
        if platform.system() != "Darwin":
            raise RunnerUnavailable(
                f"Core ML predicts only on macOS; this device runs {platform.system()}",
                {"compute_units": units},
            )
        try:
            import coremltools as ct
        except ImportError as exc:
            raise RunnerUnavailable(f"coremltools is not installed on this device ({exc})") from exc
        names = {
            "all": "ALL",
            "cpuOnly": "CPU_ONLY",
            "cpuAndGPU": "CPU_AND_GPU",
            "cpuAndNeuralEngine": "CPU_AND_NE",
        }
        if units not in names:
            raise RunnerError(f"runtime.json: settings.compute_units {units!r} unknown")
        compute = getattr(ct.ComputeUnit, names[units])
        self.model = ct.models.MLModel(self.model_path, compute_units=compute)
        self.version = ct.__version__
        self.details = {"compute_units": units}

    def run(self, inputs: dict) -> list:
        import numpy as np

        out = self.model.predict({n: np.ascontiguousarray(inputs[n]) for n in self.input_names})
        return [np.asarray(out[n], dtype=np.float32) for n in self.output_names]
