"""Build (or fetch from a cache) the TensorRT engine of an edgeship Jetson artifact.

Standalone on purpose: it needs only Python's standard library and TensorRT's
Python package (``tensorrt``), or the ``trtexec`` tool where the Python package is
missing, so a device agent can copy this one file to a Jetson and build the
engine there at activation time. edgeship uses the same code when a build machine
has a GPU and TensorRT.

    python3 tensorrt_engine.py build ARTIFACT_DIR [--cache DIR]
    python3 tensorrt_engine.py build MODEL.onnx --settings SETTINGS.json [--cache DIR]
    python3 tensorrt_engine.py key ARTIFACT_DIR       # the cache key, without building

``ARTIFACT_DIR`` is an edgeship artifact (or bundle) folder: its ``runtime.json``
names the ONNX file and holds the engine settings under ``settings.engine``.
Engines are cached by (ONNX sha256, TensorRT version, GPU name, settings hash): an
engine is only valid for the exact TensorRT version and GPU it was built with.
Both commands print one JSON object on stdout; errors go to stderr, exit code 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SETTINGS_SCHEMA = 1
DEFAULT_CACHE = Path(os.environ.get("EDGESHIP_TRT_CACHE", "~/.cache/edgeship/tensorrt"))


class EngineBuildError(RuntimeError):
    """The engine could not be built; the message says why."""


@dataclass(frozen=True)
class EngineSettings:
    """How to build the engine. Written by edgeship into runtime.json (``settings.engine``)."""

    precision: str  # what the ONNX holds: fp32 | fp16 | int8 (explicit Q/DQ)
    strongly_typed: bool = True  # take every tensor's type from the ONNX (FP16 weights, Q/DQ)
    precision_flags: tuple[str, ...] = ()  # BuilderFlag names for weakly typed builds (DLA)
    workspace_mb: int = 1024  # scratch memory TensorRT may use while building and running
    builder_optimization_level: int = 3  # 0..5; higher searches more tactics, builds slower
    profiles: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # input name -> {"min", "opt", "max"} shapes, for inputs with dynamic dimensions
    dla_core: int | None = None  # run on this DLA core (Jetson AGX Orin: 0 or 1), else GPU
    gpu_fallback: bool = True  # with a DLA core: layers DLA cannot run go to the GPU
    schema: int = SETTINGS_SCHEMA

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineSettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EngineBuildError(f"unknown engine settings: {', '.join(unknown)}")
        values = dict(data)
        values["precision_flags"] = tuple(values.get("precision_flags", ()))
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["precision_flags"] = list(self.precision_flags)
        return data

    def digest(self) -> str:
        """SHA-256 of the settings in canonical JSON."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def load_request(source: Path, settings_file: Path | None = None) -> tuple[Path, EngineSettings]:
    """The ONNX file and engine settings named by an artifact folder or a file pair."""
    if source.is_dir():
        runtime = json.loads((source / "runtime.json").read_text())
        engine = runtime.get("settings", {}).get("engine")
        if not isinstance(engine, dict):
            raise EngineBuildError(f"{source / 'runtime.json'} has no settings.engine")
        return source / runtime["model"]["file"], EngineSettings.from_json(engine)
    if settings_file is None:
        raise EngineBuildError("an ONNX file needs --settings (engine settings JSON)")
    data = json.loads(settings_file.read_text())
    if "settings" in data and isinstance(data["settings"], dict) and "engine" in data["settings"]:
        data = data["settings"]["engine"]  # a runtime.json
    return source, EngineSettings.from_json(data)


# -- what this machine has -------------------------------------------------------------------


def _tensorrt() -> Any | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


def trtexec_path() -> str | None:
    """``trtexec`` on PATH, or where JetPack installs it."""
    found = shutil.which("trtexec")
    if found:
        return found
    jetpack = Path("/usr/src/tensorrt/bin/trtexec")
    return str(jetpack) if jetpack.is_file() else None


def trtexec_version(exe: str | None = None) -> str | None:
    """The TensorRT version ``trtexec`` reports (its banner), None without a trtexec."""
    exe = exe or trtexec_path()
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # the banner reads "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] ..."
    match = re.search(r"TensorRT v(\d+)", proc.stdout + proc.stderr)
    if not match:
        return None
    number = int(match.group(1))  # e.g. 100300 -> 10.3.0
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def tensorrt_version() -> str | None:
    """The TensorRT version of the Python package, else of ``trtexec``; None without either."""
    trt = _tensorrt()
    if trt is not None:
        return str(trt.__version__)
    return trtexec_version()


def missing_reason() -> str:
    """Why this machine cannot build an engine (for messages when tensorrt_version() is None)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        package = f"the tensorrt Python package cannot be imported ({type(exc).__name__}: {exc})"
    else:  # pragma: no cover - importable, so tensorrt_version() was not None
        package = "the tensorrt Python package is importable"
    exe = trtexec_path()
    tool = (
        "trtexec is not on PATH nor in /usr/src/tensorrt/bin"
        if exe is None
        else (f"{exe} reports no TensorRT version")
    )
    return f"{package}, and {tool}"


def gpu_name() -> str:
    """The GPU's name: nvidia-smi on discrete GPUs, the device-tree model on Jetson."""
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            proc = subprocess.run(
                [exe, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            first = proc.stdout.strip().splitlines()
            if proc.returncode == 0 and first:
                return first[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    model = Path("/proc/device-tree/model")
    if model.is_file():
        return model.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
    return "unknown"


def _major(version: str) -> int:
    return int(version.split(".")[0])


# -- cache -----------------------------------------------------------------------------------


def cache_key(
    onnx_sha256: str, trt_version: str, gpu: str, settings: EngineSettings
) -> dict[str, str]:
    """Everything an engine depends on; its digest names the cached engine."""
    key = {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": trt_version,
        "gpu": gpu,
        "settings_sha256": settings.digest(),
    }
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    key["digest"] = hashlib.sha256(text.encode()).hexdigest()
    return key


def cached_engine(cache: Path, key: dict[str, str]) -> Path | None:
    """The cached engine for ``key`` if it is there and intact, else None."""
    engine = cache / f"{key['digest']}.engine"
    meta = cache / f"{key['digest']}.json"
    if not (engine.is_file() and meta.is_file()):
        return None
    try:
        recorded = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("key") != key or recorded.get("engine_sha256") != sha256_file(engine):
        return None
    return engine


def _store(cache: Path, key: dict[str, str], built: Path, builder: str, seconds: float) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    engine = cache / f"{key['digest']}.engine"
    tmp = engine.with_name(f".{engine.name}.{os.getpid()}.tmp")
    shutil.copyfile(built, tmp)
    os.replace(tmp, engine)
    meta = {
        "key": key,
        "engine_sha256": sha256_file(engine),
        "builder": builder,
        "build_seconds": round(seconds, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp_meta = engine.with_suffix(f".json.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_meta, engine.with_suffix(".json"))
    return engine


# -- builders --------------------------------------------------------------------------------


def _build_with_python(trt: Any, onnx_path: Path, settings: EngineSettings, out: Path) -> None:
    """Build with the TensorRT Python API (Builder, OnnxParser, BuilderConfig)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = _major(str(trt.__version__))
    creation = trt.NetworkDefinitionCreationFlag
    weakly_typed = major < 11 and (not settings.strongly_typed or settings.dla_core is not None)
    flags = 0
    if major < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # TensorRT 8.x: explicit batch is opt-in
    if 10 <= major < 11 and not weakly_typed:
        flags |= 1 << int(creation.STRONGLY_TYPED)  # TensorRT 11 is always strongly typed
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = settings.builder_optimization_level
    if weakly_typed:
        for name in settings.precision_flags:
            flag = getattr(trt.BuilderFlag, name, None)
            if flag is None:
                raise EngineBuildError(f"TensorRT {trt.__version__} has no builder flag {name}")
            config.set_flag(flag)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        if settings.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(int(d) < 0 for d in tensor.shape):
            dynamic.append(tensor.name)
    if dynamic:
        profile = builder.create_optimization_profile()
        for name in dynamic:
            shapes = settings.profiles.get(name)
            if not shapes:
                raise EngineBuildError(f"input '{name}' has dynamic dimensions but no profile")
            profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT's builder returned no engine (see its log above)")
    out.write_bytes(bytes(serialized))


def trtexec_command(
    exe: str, onnx_path: Path, settings: EngineSettings, out: Path, trt_version: str
) -> list[str]:
    """The ``trtexec`` command line equivalent to the Python API build."""
    major = _major(trt_version)
    cmd = [
        exe,
        f"--onnx={onnx_path}",
        f"--saveEngine={out}",
        "--skipInference",
        f"--memPoolSize=workspace:{settings.workspace_mb}M",
        f"--builderOptimizationLevel={settings.builder_optimization_level}",
    ]
    weakly_typed = major < 11 and (not settings.strongly_typed or settings.dla_core is not None)
    if 10 <= major < 11 and not weakly_typed:
        cmd.append("--stronglyTyped")
    if weakly_typed:
        cmd += [f"--{name.lower()}" for name in settings.precision_flags]
    if settings.dla_core is not None:
        cmd.append(f"--useDLACore={settings.dla_core}")
        if settings.gpu_fallback:
            cmd.append("--allowGPUFallback")
    for which in ("min", "opt", "max"):
        if settings.profiles:
            spec = ",".join(
                f"{name}:{'x'.join(str(d) for d in shapes[which])}"
                for name, shapes in sorted(settings.profiles.items())
            )
            cmd.append(f"--{which}Shapes={spec}")
    return cmd


def _build_with_trtexec(
    exe: str, onnx_path: Path, settings: EngineSettings, out: Path, trt_version: str
) -> None:
    cmd = trtexec_command(exe, onnx_path, settings, out, trt_version)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise EngineBuildError(f"trtexec failed ({proc.returncode}):\n{tail}")


def describe_key(onnx_path: Path, settings: EngineSettings) -> dict[str, str]:
    """The cache key of this ONNX + settings on this machine (needs TensorRT or trtexec)."""
    version = tensorrt_version()
    if version is None:
        raise EngineBuildError(
            "neither the tensorrt Python package nor trtexec is available on this machine"
        )
    return cache_key(sha256_file(onnx_path), version, gpu_name(), settings)


def build_engine(
    onnx_path: Path, settings: EngineSettings, cache: Path = DEFAULT_CACHE
) -> dict[str, Any]:
    """The engine for ``onnx_path`` and ``settings`` on this machine, from the cache or built.

    Returns ``{"engine", "engine_sha256", "cache_hit", "builder", "seconds", "key"}``.
    """
    cache = cache.expanduser()
    key = describe_key(onnx_path, settings)
    t0 = time.perf_counter()
    hit = cached_engine(cache, key)
    if hit is not None:
        meta = json.loads(hit.with_suffix(".json").read_text())
        return {
            "engine": str(hit),
            "engine_sha256": meta["engine_sha256"],
            "cache_hit": True,
            "builder": meta["builder"],
            "seconds": round(time.perf_counter() - t0, 3),
            "key": key,
        }
    cache.mkdir(parents=True, exist_ok=True)
    scratch = cache / f".build-{os.getpid()}.engine"
    trt = _tensorrt()
    try:
        if trt is not None:
            builder = "tensorrt-python"
            _build_with_python(trt, onnx_path, settings, scratch)
        else:
            exe = trtexec_path()
            assert exe is not None  # describe_key found TensorRT one way or the other
            builder = "trtexec"
            _build_with_trtexec(exe, onnx_path, settings, scratch, key["tensorrt_version"])
        seconds = time.perf_counter() - t0
        engine = _store(cache, key, scratch, builder, seconds)
    finally:
        scratch.unlink(missing_ok=True)
    meta = json.loads(engine.with_suffix(".json").read_text())
    return {
        "engine": str(engine),
        "engine_sha256": meta["engine_sha256"],
        "cache_hit": False,
        "builder": builder,
        "seconds": round(seconds, 3),
        "key": key,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a TensorRT engine for an artifact.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "key"):
        p = sub.add_parser(name)
        p.add_argument("source", type=Path, help="artifact folder, or an ONNX file")
        p.add_argument("--settings", type=Path, help="engine settings JSON (with an ONNX file)")
        p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="engine cache folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        onnx_path, settings = load_request(args.source, args.settings)
        if args.command == "key":
            result: dict[str, Any] = describe_key(onnx_path, settings)
        else:
            result = build_engine(onnx_path, settings, args.cache)
    except (EngineBuildError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
