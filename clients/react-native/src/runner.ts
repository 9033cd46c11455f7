/**
 * The bundle's model in ONNX Runtime (`onnxruntime-react-native` in the app; `onnxruntime-node`
 * has the same API and stands in for it in tests): the session options of `runtime.json`, its
 * inputs and preprocessing constants, its labels; and the smoke test judged by the same checks
 * as the device agent (`orchestrator/device/agent/runners.py`: `check_outputs`, `smoke_check`).
 */
import { parseNpz, type NdArray } from "./npz.js";
import { readText, type StorageAdapter } from "./storage.js";

export const DEFAULT_ATOL = 1e-3;

/** The part of ONNX Runtime's JavaScript API the runner uses (`import * as ort from ...`). */
export interface OrtTensor {
  readonly data: ArrayLike<number | bigint>;
  readonly dims: readonly number[];
}
export interface OrtSession {
  run(feeds: { [name: string]: OrtTensor }): Promise<{ [name: string]: OrtTensor }>;
}
export interface OrtModule {
  InferenceSession: { create(path: string, options?: object): Promise<OrtSession> };
  Tensor: new (type: string, data: NdArray["data"], dims: readonly number[]) => OrtTensor;
  listSupportedBackends?: () => { name: string }[];
  env?: { versions?: { common?: string } };
}

/** runtime.json's provider names -> ONNX Runtime JavaScript's. */
export const ORT_PROVIDERS: { [name: string]: string } = {
  CPU: "cpu", XNNPACK: "xnnpack", NNAPI: "nnapi", CoreML: "coreml", COREML: "coreml", CUDA: "cuda",
};

export interface TensorSpec { name: string; shape?: number[]; dtype?: string }
export interface RuntimeJson {
  deployment?: string;
  target?: { runtime?: string; family?: string };
  model: { file: string };
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  labels?: string[];
  preprocessing?: { type?: string; mean?: number[]; std?: number[] };
  settings?: {
    execution_providers?: string[];
    intra_op_num_threads?: number;
    session_config_entries?: { [key: string]: string };
  };
}

export class RunnerError extends Error {}

export interface Output { data: Float64Array; shape: number[] }

function toFloat64(data: ArrayLike<number | bigint>): Float64Array {
  const out = new Float64Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = Number(data[i]);
  return out;
}

function cast(array: NdArray, dtype: string): NdArray["data"] {
  const n = array.data.length;
  const values = Array.from(array.data as ArrayLike<number | bigint>, Number);
  switch (dtype) {
    case "float32": return Float32Array.from(values);
    case "float64": return Float64Array.from(values);
    case "int32": return Int32Array.from(values);
    case "int64": return BigInt64Array.from(values, (v) => BigInt(Math.trunc(v)));
    case "uint8": return Uint8Array.from(values);
    case "int8": return Int8Array.from(values);
    default: throw new RunnerError(`runtime.json: dtype ${dtype} is not supported here (${n} values)`);
  }
}

/** A bundle's model, loaded: `run(inputs)` gives its outputs in runtime.json's order. */
export class OrtMobileRunner {
  readonly runtimeName = "onnxruntime_mobile";
  private constructor(
    readonly spec: RuntimeJson,
    private readonly ort: OrtModule,
    private readonly session: OrtSession,
    readonly providers: string[],
  ) {}

  get inputNames(): string[] { return this.spec.inputs.map((t) => t.name); }
  get outputNames(): string[] { return this.spec.outputs.map((t) => t.name); }
  get labels(): string[] { return this.spec.labels ?? []; }

  /** Load `folder` (a path of `store`) with the session options its runtime.json gives. */
  static async load(store: StorageAdapter, folder: string, ort: OrtModule): Promise<OrtMobileRunner> {
    const text = await readText(store, `${folder}/runtime.json`);
    if (text === null) throw new RunnerError(`${folder}/runtime.json: not found`);
    const spec = JSON.parse(text) as RuntimeJson;
    const runtime = spec.target?.runtime;
    if (runtime !== "onnxruntime_mobile") {
      throw new RunnerError(`runtime.json names runtime '${runtime}'; this runner is onnxruntime_mobile`);
    }
    if (!spec.model?.file || !Array.isArray(spec.inputs) || !Array.isArray(spec.outputs)) {
      throw new RunnerError("runtime.json: expected model.file, inputs and outputs");
    }
    const modelPath = `${folder}/${spec.model.file}`;
    if (!(await store.exists(modelPath))) throw new RunnerError(`runtime.json names model ${spec.model.file}; not found`);
    const settings = spec.settings ?? {};
    const wanted = (settings.execution_providers ?? ["CPU"]).map((p) => ORT_PROVIDERS[p] ?? p.toLowerCase());
    const available = ort.listSupportedBackends ? new Set(ort.listSupportedBackends().map((b) => b.name)) : null;
    const usable = wanted.filter((p) => available === null || available.has(p));
    const providers = usable.length ? usable : ["cpu"];
    const session = await ort.InferenceSession.create(store.resolve(modelPath), {
      executionProviders: providers,
      intraOpNumThreads: Number(settings.intra_op_num_threads ?? 1),
      extra: { ...(settings.session_config_entries ?? {}) },
    });
    return new OrtMobileRunner(spec, ort, session, providers);
  }

  /** Outputs in runtime.json's order; inputs cast to the dtypes it names. */
  async run(inputs: Map<string, NdArray>): Promise<Output[]> {
    const feeds: { [name: string]: OrtTensor } = {};
    for (const t of this.spec.inputs) {
      const array = inputs.get(t.name);
      if (!array) throw new RunnerError(`input ${t.name}: missing (runtime.json names ${this.inputNames.join(", ")})`);
      feeds[t.name] = new this.ort.Tensor(t.dtype ?? "float32", cast(array, t.dtype ?? "float32"), array.shape);
    }
    const result = await this.session.run(feeds);
    return this.outputNames.map((name) => {
      const t = result[name];
      if (!t) throw new RunnerError(`the model gave no output ${name}`);
      return { data: toFloat64(t.data), shape: [...t.dims] };
    });
  }

  /** runtime.json's preprocessing on a raw sensor window (`[channels][samples]`, or the model
   * input's layout flattened): per-channel standardisation with its mean and std. */
  preprocess(window: number[][]): NdArray {
    const pre = this.spec.preprocessing ?? {};
    const input = this.spec.inputs[0];
    const shape = input.shape ?? [1, window.length, window[0]?.length ?? 0];
    const channels = shape[shape.length - 2];
    const samples = shape[shape.length - 1];
    if (window.length !== channels || window.some((row) => row.length !== samples)) {
      throw new RunnerError(
        `input ${input.name}: expected ${channels} channels of ${samples} samples, found ${window.length} of ${window.map((r) => r.length).join("/")}`,
      );
    }
    const data = new Float32Array(channels * samples);
    for (let c = 0; c < channels; c++) {
      const mean = pre.type === "per_channel_standardize" ? pre.mean?.[c] ?? 0 : 0;
      const std = pre.type === "per_channel_standardize" ? pre.std?.[c] ?? 1 : 1;
      for (let s = 0; s < samples; s++) data[c * samples + s] = (window[c][s] - mean) / std;
    }
    return { dtype: "float32", shape, data };
  }

  /** Preprocess a raw window, run it, and name the top class with runtime.json's labels. */
  async classify(window: number[][]): Promise<{ label: string; index: number; scores: number[] }> {
    const [first] = await this.run(new Map([[this.inputNames[0], this.preprocess(window)]]));
    const scores = Array.from(first.data);
    const index = scores.indexOf(Math.max(...scores));
    return { label: this.labels[index] ?? String(index), index, scores };
  }
}

export interface SmokeJson {
  atol?: number; rtol?: number; argmax_axis?: number; min_argmax_agreement?: number;
  input?: string; expected?: string;
}

export interface CheckResult {
  passed: boolean;
  failures: string[];
  outputs: { [name: string]: object };
  argmax_agreement: number | null;
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function argmax(data: Float64Array, shape: number[], axisIn: number): number[] {
  const axis = axisIn < 0 ? shape.length + axisIn : axisIn;
  const n = shape[axis] ?? 1;
  const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const out: number[] = [];
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      let best = 0;
      let bestValue = -Infinity;
      for (let k = 0; k < n; k++) {
        const v = data[o * n * inner + k * inner + i];
        if (v > bestValue || (Number.isNaN(v) && !Number.isNaN(bestValue))) { best = k; bestValue = v; if (Number.isNaN(v)) break; }
      }
      out.push(best);
    }
  }
  return out;
}

function fmt(x: number): string {
  return Number(x.toPrecision(6)).toString();
}

/** Compare a run's outputs with the expected ones: per-output tolerance (numpy's allclose:
 * |got - want| <= atol + rtol * |want|), then argmax agreement of the first output. */
export function checkOutputs(expected: Map<string, Output>, got: Output[], outputNames: string[], smoke: SmokeJson): CheckResult {
  const atol = Number(smoke.atol ?? DEFAULT_ATOL);
  const rtol = Number(smoke.rtol ?? 0);
  const failures: string[] = [];
  const report: { [name: string]: object } = {};
  if (got.length !== outputNames.length) {
    failures.push(`the model gave ${got.length} output(s); runtime.json names ${outputNames.length}`);
  }
  outputNames.slice(0, got.length).forEach((name, i) => {
    const value = got[i];
    const want = expected.get(name);
    if (!want) throw new RunnerError(`the smoke test's expected outputs have no ${name}`);
    if (!sameShape(value.shape, want.shape)) {
      failures.push(`${name}: shape [${value.shape.join(", ")}], expected [${want.shape.join(", ")}]`);
      report[name] = { shape: value.shape, expected_shape: want.shape };
      return;
    }
    let diff = 0;
    let ok = true;
    for (let k = 0; k < value.data.length; k++) {
      const d = Math.abs(value.data[k] - want.data[k]);
      if (d > diff || Number.isNaN(d)) diff = Number.isNaN(d) ? NaN : d;
      if (!(d <= atol + rtol * Math.abs(want.data[k]))) ok = false;
    }
    report[name] = { max_abs_diff: diff, atol, rtol, passed: ok };
    if (!ok) failures.push(`${name}: max |diff| ${fmt(diff)} > atol ${fmt(atol)} (rtol ${fmt(rtol)})`);
  });
  let agreement: number | null = null;
  const first = outputNames[0];
  const want = first === undefined ? undefined : expected.get(first);
  if (got.length && want && sameShape(got[0].shape, want.shape)) {
    const axis = Number(smoke.argmax_axis ?? -1);
    const a = argmax(got[0].data, got[0].shape, axis);
    const b = argmax(want.data, want.shape, axis);
    agreement = a.length ? a.filter((v, i) => v === b[i]).length / a.length : NaN;
    const needed = Number(smoke.min_argmax_agreement ?? 1.0);
    if (!(agreement >= needed)) failures.push(`${first}: argmax agreement ${agreement.toFixed(4)} < ${needed.toFixed(4)}`);
  }
  return { passed: failures.length === 0, failures, outputs: report, argmax_agreement: agreement };
}

export interface SmokeReport {
  deployment?: string;
  runner: string;
  result: "pass" | "fail";
  reason: string | null;
  latency_ms?: number;
  providers?: string[];
  outputs?: { [name: string]: object };
  argmax_agreement?: number | null;
}

/** Run a bundle's smoke test (smoke/smoke.json, its input and expected arrays) through the
 * runner and judge it with {@link checkOutputs}. Any error is a failure saying why. */
export async function smokeCheck(store: StorageAdapter, folder: string, ort: OrtModule): Promise<SmokeReport> {
  let deployment: string | undefined;
  try {
    const runner = await OrtMobileRunner.load(store, folder, ort);
    deployment = runner.spec.deployment;
    const smokeText = await readText(store, `${folder}/smoke/smoke.json`);
    if (smokeText === null) throw new RunnerError("smoke/smoke.json: not found");
    const smoke = JSON.parse(smokeText) as SmokeJson;
    const npz = async (name: string): Promise<Map<string, NdArray>> => {
      const data = await store.read(`${folder}/smoke/${name}`);
      if (data === null) throw new RunnerError(`smoke/${name}: not found`);
      return parseNpz(data, `smoke/${name}`);
    };
    const inputs = await npz(smoke.input ?? "input.npz");
    const expectedArrays = await npz(smoke.expected ?? "expected.npz");
    const expected = new Map<string, Output>();
    for (const [name, a] of expectedArrays) expected.set(name, { data: toFloat64(a.data as ArrayLike<number>), shape: a.shape });
    await runner.run(inputs); // warm-up
    const start = Date.now();
    const got = await runner.run(inputs);
    const latency = Date.now() - start;
    const checked = checkOutputs(expected, got, runner.outputNames, smoke);
    return {
      deployment,
      runner: runner.runtimeName,
      result: checked.passed ? "pass" : "fail",
      reason: checked.failures.join("; ") || null,
      latency_ms: latency,
      providers: runner.providers,
      outputs: checked.outputs,
      argmax_agreement: checked.argmax_agreement,
    };
  } catch (exc) {
    const e = exc as Error;
    return { deployment, runner: "onnxruntime_mobile", result: "fail", reason: `${e.name}: ${e.message}` };
  }
}
