"""The schema of every spec under ``conf/``: one dataclass per config node.

These are Hydra structured configs. They are registered in Hydra's ConfigStore
(group ``schema``) and are the single source of truth for what a key means, its
type and its default; :mod:`orchestrator.config.validate` checks composed YAML
against them and reports every problem at once.

Field metadata ``choices`` restricts a string to a fixed set of values.
"""

# OmegaConf resolves typing.List/Dict/Optional; keep them here.
# ruff: noqa: UP006, UP035, UP045

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

TASKS = (
    "classification",
    "segmentation",
    "regression",
    "custom",
    "text-generation",
    "speech-recognition",
)
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8_bf16", "int4")
# int8_bf16: float layers in bf16; int4: 4-bit weights, float activations (weight-only)


def choices(*values: str) -> dict[str, tuple[str, ...]]:
    """Field metadata restricting a string field to ``values``."""
    return {"choices": values}


@dataclass
class CallableRef:
    """A Python callable named as ``package.module:function`` plus keyword arguments."""

    fn: str = MISSING  # "package.module:function"
    args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments passed to fn


@dataclass
class DynamicDim:
    """The range a named dynamic dimension takes: every size from min to max runs."""

    min: int = MISSING  # smallest size the artifact serves (1 or more)
    opt: int = MISSING  # the size it is tuned for (TensorRT profile, export example, eval)
    max: int = MISSING  # largest size it serves


@dataclass
class TensorSpec:
    """One input or output tensor of the model graph."""

    name: str = MISSING  # tensor name in the exported graph
    shape: List[Any] = MISSING  # dims, batch first: a positive int, or a name declared in dynamic
    dtype: str = field(default="float32", metadata=choices(*DTYPES))  # element type
    dynamic: Dict[str, DynamicDim] = field(default_factory=dict)  # inputs: name -> its range


@dataclass
class MetricRef:
    """A user metric: ``fn(outputs, labels)`` returning ``{name: value}``."""

    fn: str = MISSING  # "package.module:function"
    args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments passed to fn
    names: List[str] = field(default_factory=list)  # the values it returns (default: fn's name)


SOURCE_KINDS = ("pytorch", "onnx", "mlflow", "huggingface", "monai_bundle")


@dataclass
class SourceConfig:
    """Where the reference model comes from (see docs/model-sources.md)."""

    kind: str = field(default="pytorch", metadata=choices(*SOURCE_KINDS))  # reference kind
    factory: Optional[CallableRef] = None  # builds the torch.nn.Module (kind=pytorch)
    weights: Optional[str] = None  # state_dict file for the factory's module, project-relative
    train: Optional[CallableRef] = None  # what `edgeship train` runs to write `weights`
    path: Optional[str] = None  # .onnx, TorchScript .pt or .pt2, a folder (huggingface, monai)
    auto_class: Optional[str] = None  # huggingface: transformers class (default: config's)
    uri: Optional[str] = None  # MLflow model: models:/name/version, models:/name@alias, runs:/
    opset: int = 18  # ONNX opset used by the exporter


@dataclass
class DataConfig:
    """The data used to evaluate and to calibrate the model."""

    eval: CallableRef = MISSING  # returns (inputs [N, ...], labels [N, ...] or None)
    calibration: Optional[CallableRef] = None  # returns (inputs [N, ...], labels or None)
    train: Optional[CallableRef] = None  # the training set (named and hashed in provenance)
    eval_samples: int = 0  # use only the first N eval samples (0 = all)


@dataclass
class ClipNormalizeOptions:
    """Intensity window and standardisation: ``(clip(x, low, high) - mean) / std``."""

    low: float = -1000.0  # lower end of the intensity window (input units, e.g. HU)
    high: float = 1000.0  # upper end of the window
    mean: float = 0.0  # subtracted after clipping
    std: float = 1.0  # divides after subtracting the mean (non-zero)


@dataclass
class ResampleOptions:
    """Resampling to the model's voxel spacing (linear); labels go back to the input grid."""

    spacing: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # mm, [D, H, W]


@dataclass
class SlidingWindowOptions:
    """The model over the volume in windows of its patch, Gaussian-blended."""

    overlap: float = 0.5  # fraction of the patch neighbouring windows share, in [0, 1)
    sigma_scale: float = 0.125  # Gaussian blending's sigma as a fraction of the patch
    batch: int = 1  # windows per model call (a static batch of 1: calls grouped)
    skip_outside_body: bool = False  # windows without a voxel above body_threshold: background
    body_threshold: float = -500.0  # the body mask's threshold, in input units (HU for CT)
    overlap_io: bool = False  # extract and blend windows in a worker while the model runs


@dataclass
class LargestComponentOptions:
    """Per class, only the largest 6-connected component is kept."""

    classes: List[int] = field(default_factory=list)  # class indices (empty: every foreground)


@dataclass
class LabelMapOptions:
    """The labels on the input grid, as integers."""

    dtype: str = field(default="uint8", metadata=choices("uint8", "int16", "int32"))


@dataclass
class NoStepOptions:
    """A step without options."""


# pipeline step -> (role, schema of its options); the device's implementation of each is in
# orchestrator/device/agent/pipeline.py under the same name
PIPELINE_STEPS: dict[str, tuple[str, type]] = {
    "clip_normalize": ("pre", ClipNormalizeOptions),
    "resample": ("pre", ResampleOptions),
    "sliding_window": ("infer", SlidingWindowOptions),
    "argmax": ("post", NoStepOptions),
    "largest_component": ("post", LargestComponentOptions),
    "label_map": ("post", LabelMapOptions),
}


@dataclass
class StepConfig:
    """One step of a whole-volume pipeline: a step of the library and its options."""

    name: str = MISSING  # one of PIPELINE_STEPS
    options: Dict[str, Any] = field(default_factory=dict)  # checked against the step's schema


@dataclass
class PipelineConfig:
    """Pre-processing, sliding-window inference and post-processing of whole volumes: run
    by validation, shipped in the bundle and run by the device runner."""

    steps: List[StepConfig] = MISSING  # in order; exactly one sliding_window
    data: CallableRef = MISSING  # whole volumes: returns (volumes [N, D, H, W], labels or None)


@dataclass
class GenerationConfig:
    """Text generation (task text-generation): tokenizer, decoding, context and prompts.

    The prompt set is ``model.data.eval``: a loader returning a list of prompt strings. Each
    prompt is the user's turn of a chat (the tokenizer's chat template wraps it, after the
    system prompt when one is set) or, with ``chat: false``, the raw text. ``heldout`` names
    the text perplexity is measured on (the reference's and the artifact's).
    """

    tokenizer: str = ""  # folder with tokenizer.json (default: model.source.path)
    chat: bool = True  # wrap prompts in the tokenizer's chat template
    system: str = ""  # the system turn before each prompt (chat only; empty: none)
    decoding: str = field(default="greedy", metadata=choices("greedy"))  # parity is greedy
    max_new_tokens: int = 32  # tokens generated per prompt (fewer when end-of-sequence comes)
    stop_at_eos: bool = True  # end a generation at the tokenizer's end-of-sequence token
    max_context: int = 512  # prompt + generated tokens the artifact serves
    prompt_tokens: int = 0  # prompt length time-to-first-token is stated at (0: the prompts')
    health_tokens: int = 8  # tokens a device's health check generates and compares
    heldout: Optional[CallableRef] = None
    # held-out text for perplexity: a loader returning strings, or [user, assistant] pairs
    # (rendered with the chat template and the system turn); None: no perplexity


@dataclass
class SpeechConfig:
    """Speech recognition (task speech-recognition): Whisper's feature extractor, decoder
    prompt and greedy transcription.

    The evaluation set is ``model.data.eval``: a loader returning ``(clips, transcripts)``,
    a list of 1-D float arrays of 16 kHz samples in [-1, 1] and their reference texts. The
    feature settings must equal the model folder's ``preprocessor_config.json`` (the build
    checks them), so that the spec states what the device's pipeline computes.
    """

    sampling_rate: int = 16000  # Hz of the samples (Whisper's feature extractor: 16000)
    feature_size: int = 80  # log-mel bins (Whisper: 80; large-v3: 128)
    chunk_seconds: int = 30  # audio window the encoder sees (Whisper: 30 s)
    hop_length: int = 160  # samples between feature frames (10 ms)
    n_fft: int = 400  # samples per FFT window (25 ms)
    language: str = "en"  # the decoder prompt's language token (<|en|>)
    task: str = field(default="transcribe", metadata=choices("transcribe", "translate"))
    decoding: str = field(default="greedy", metadata=choices("greedy"))  # parity is greedy
    max_new_tokens: int = 64  # tokens generated per clip (fewer when end-of-text comes)
    health_clip: int = 0  # the evaluation clip a device's health check transcribes


@dataclass
class ModelConfig:
    """A reference model: source, signature, task and data."""

    name: str = MISSING  # model identifier
    task: str = field(default=MISSING, metadata=choices(*TASKS))  # what the outputs mean
    description: str = ""  # one line for people
    source: SourceConfig = field(default_factory=SourceConfig)  # the reference model
    inputs: List[TensorSpec] = MISSING  # graph inputs, in order
    outputs: List[TensorSpec] = MISSING  # graph outputs, in order (first = logits)
    labels: List[str] = field(default_factory=list)  # class names, index order
    multi_label: bool = False  # classification: independent classes (sigmoid), not one of k
    threshold: float = 0.5  # multi_label: a class is predicted when its sigmoid >= threshold
    metrics: List[MetricRef] = field(default_factory=list)  # user metrics, usable in gates
    preprocessing: Optional[CallableRef] = None  # returns the constants an app applies first
    data: DataConfig = field(default_factory=DataConfig)  # evaluation and calibration data
    pipeline: Optional[PipelineConfig] = None  # segmentation: whole volumes in, label maps out
    generation: Optional[GenerationConfig] = None  # text-generation: tokenizer, decoding, prompts
    speech: Optional[SpeechConfig] = None  # speech-recognition: features, prompt, decoding


@dataclass
class PassConfig:
    """One step of a recipe: a registered pass and its options."""

    name: str = MISSING  # registered pass name (see `edgeship list`)
    options: Dict[str, Any] = field(default_factory=dict)  # checked against the pass's schema


@dataclass
class RecipeConfig:
    """An ordered list of optimisation passes applied after export."""

    name: str = MISSING  # recipe identifier
    description: str = ""  # one line for people
    passes: List[PassConfig] = field(default_factory=list)  # applied in order
    select: bool = False  # build every candidate recipe, keep the fastest passing artifact
    candidates: List[str] = field(default_factory=list)  # with select: recipes to try (empty = all)
    select_by: str = field(  # with select: the latency metric that ranks passing candidates
        default="p50_ms", metadata=choices("p50_ms", "p95_ms", "p99_ms", "mean_ms")
    )


@dataclass
class TargetConfig:
    """A device family and how the artifact runs there."""

    name: str = MISSING  # target identifier
    family: str = MISSING  # registered target family (see `edgeship list`)
    description: str = ""  # one line for people
    device: str = "CPU"  # runtime device / execution provider selector
    threads: int = 0  # intra-op threads for inference (0 = runtime default)
    precisions: List[str] = field(default_factory=lambda: ["fp32"])  # what the device runs
    runtime_version: str = ""  # PEP 440 specifier the devices' runtime satisfies, e.g. ">=1.20"


@dataclass
class ValidationConfig:
    """How an artifact is measured."""

    latency_warmup: int = 5  # untimed runs before measuring
    latency_runs: int = 50  # timed runs per batch size
    latency_batches: List[int] = field(default_factory=list)
    # batch sizes measured (empty: a static batch's size; a dynamic batch's min, opt and max)


@dataclass
class ValidateOnConfig:
    """Where candidates are measured: on the build machine, or on a fleet's lab device."""

    where: str = field(default="build", metadata=choices("build", "lab"))  # build | lab
    fleet: str = ""  # with lab: the fleet (default: the one fleet with a lab device of the family)
    device: str = ""  # with lab: the lab device by name (default: the fleet's first of the family)
    timeout: float = 1800.0  # with lab: seconds the device may take for one candidate


EVENT_FIELDS = (
    "prediction",  # classification: the top class; segmentation: per-class voxel counts
    "score",  # classification: the top class's probability
    "latency_ms",  # the inference's wall time on the device
    "deployment",  # the deployment's name
    "version",  # the bundle version the device runs
    "bundle_digest",  # sha256 of the bundle's manifest.json
    "model_sha256",  # sha256 of the model file
    "device",  # the device's enrolled name
    "fleet",  # the device's fleet
    "time",  # UTC time of the inference (ISO 8601)
)


@dataclass
class EventsConfig:
    """Prediction events a device emits per inference (see docs/events.md)."""

    enabled: bool = False  # emit one event per inference into the device's outbox
    fields: List[str] = field(default_factory=lambda: list(EVENT_FIELDS))  # what each carries
    include_inputs: bool = False  # also carry the raw inputs (patient data): only when asked
    outbox_max: int = 10000  # events kept on the device; the oldest are dropped (and counted)


CHANGE_KINDS = ("recipe", "data", "weights", "model", "target", "gates", "code")


@dataclass
class ChangePlanConfig:
    """The changes an approval may cover without a new plan (see docs/change-control.md)."""

    covers: List[str] = field(default_factory=list)  # of CHANGE_KINDS
    gates: List[str] = field(default_factory=list)  # gates that must have passed, as written
    approvers: List[str] = field(default_factory=list)  # people who may approve (any if empty)


@dataclass
class DeploymentConfig:
    """A model x recipe x target, and the gates its artifact must pass."""

    name: str = MISSING  # deployment identifier; artifacts/<name>/
    description: str = ""  # one line for people
    gates: List[str] = field(default_factory=list)  # e.g. "agreement >= 0.99"
    validation: ValidationConfig = field(default_factory=ValidationConfig)  # measurement
    validate_on: ValidateOnConfig = field(default_factory=ValidateOnConfig)  # build or lab device
    events: EventsConfig = field(default_factory=EventsConfig)  # prediction events from devices
    change_plan: Optional[ChangePlanConfig] = None  # what an approval may cover


@dataclass
class EdgeshipConfig:
    """The root of a composed spec."""

    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    target: TargetConfig = field(default_factory=TargetConfig)


@dataclass
class WebhookConfig:
    """An HTTP POST with a JSON body: the rule, the device and the events that matched."""

    url: str = MISSING  # http:// or https:// address
    headers: Dict[str, str] = field(default_factory=dict)  # extra request headers
    retries: int = 5  # attempts after the first one
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: float = 10.0  # seconds one request may take


@dataclass
class CommandActionConfig:
    """A program run on the collector's machine (no shell), the JSON body on its standard
    input: e.g. a paging gateway's client, or ``[tee, -a, .edgeship/alerts.jsonl]``."""

    argv: List[str] = MISSING  # the program and its arguments, run from the project folder
    timeout: float = 30.0  # seconds it may run before it is stopped (and counted as failed)
    retries: int = 0  # runs after a failed one (non-zero exit or timeout)
    backoff: float = 1.0  # seconds before the first retry; doubles each time


@dataclass
class ActionRuleConfig:
    """A rule under conf/actions/: a condition on event fields and what to do when it holds."""

    name: str = MISSING  # rule identifier (the file name)
    description: str = ""  # one line for people
    when: str = MISSING  # e.g. 'prediction == "Running" and score >= 0.9'
    consecutive: int = 1  # events of one device in a row that must match
    deployment: str = ""  # only events of this deployment (empty: all)
    webhook: Optional[WebhookConfig] = None  # the action: an HTTP POST ...
    command: Optional[CommandActionConfig] = None  # ... or a program (exactly one of the two)


# group name -> schema of one option of that group
GROUP_SCHEMAS: dict[str, type] = {
    "deployment": DeploymentConfig,
    "model": ModelConfig,
    "recipe": RecipeConfig,
    "target": TargetConfig,
}


def register_schemas() -> None:
    """Register every schema in Hydra's ConfigStore under the ``schema`` group (Hydra is
    imported here, by the commands that compose specs, not by every command)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="edgeship", node=EdgeshipConfig, group="schema")
    for group, node in GROUP_SCHEMAS.items():
        cs.store(name=group, node=node, group="schema")
