/**
 * Prediction events from the app, through the same contract as the device agent
 * (`orchestrator/device/agent/events.py`, `docs/events.md`): one event per inference with
 * the fields the bundle's `runtime.json` `events` section names, a UUID each (delivery is
 * at-least-once; the collector stores an id once), raw inputs only when the spec says so.
 *
 * Events wait in an outbox kept through the storage adapter (one JSON file, replaced
 * atomically on every change), so they survive the app being killed and the network
 * dropping; it is bounded, the oldest events are dropped first and counted. `HttpEventSender`
 * posts them, oldest first, to the collector's `POST /v1/events` with the phone's token
 * (`edgeship events token`), and deletes each one only once the collector's answer names it
 * stored (or already stored).
 */
import type { Output, RuntimeJson } from "./runner.js";
import { readText, writeAtomic, type StorageAdapter } from "./storage.js";

export interface EventsSpec {
  enabled?: boolean;
  fields?: string[];
  include_inputs?: boolean;
  outbox_max?: number;
  multi_label?: boolean;
  threshold?: number;
}

export type RuntimeWithEvents = RuntimeJson & {
  task?: string;
  events?: EventsSpec;
  model: { file: string; sha256?: string };
};

export type EventJson = { id: string; [field: string]: unknown };

/** Who answered: the installed version and its signed manifest's digest, this phone, its fleet. */
export interface EventContext {
  version: number;
  bundle_digest: string | null;
  device: string;
  fleet: string;
}

export const MAX_VALUES = 64;
const round6 = (x: number) => Math.round(x * 1e6) / 1e6;

function softmax(row: number[]): number[] {
  const top = Math.max(...row);
  const e = row.map((v) => Math.exp(v - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

function probabilities(row: number[], multiLabel: boolean): number[] {
  if (multiLabel) {
    return row.every((v) => v >= 0 && v <= 1) ? row : row.map((v) => 1 / (1 + Math.exp(-v)));
  }
  const sum = row.reduce((a, b) => a + b, 0);
  if (row.every((v) => v >= 0) && Math.abs(sum - 1) < 1e-3) return row; // already probabilities
  return softmax(row);
}

/** `prediction` and `score` of one sample's outputs (batch of one), by the model's task. */
export function summarise(runtime: RuntimeWithEvents, outputs: Output[]): { prediction: unknown; score: number | null } {
  const labels = (runtime.labels ?? []).map(String);
  const cfg = runtime.events ?? {};
  const name = (i: number) => (i < labels.length ? labels[i] : String(i));
  const first = outputs[0];
  const perSample = first ? first.shape.slice(1).reduce((a, b) => a * b, 1) : 0;
  const values = first ? Array.from(first.data.subarray(0, perSample)) : [];
  if (runtime.task === "classification") {
    const probs = probabilities(values, Boolean(cfg.multi_label));
    if (cfg.multi_label) {
      const threshold = cfg.threshold ?? 0.5;
      return {
        prediction: probs.flatMap((p, i) => (p >= threshold ? [name(i)] : [])),
        score: round6(Math.max(...probs)),
      };
    }
    const top = probs.indexOf(Math.max(...probs));
    return { prediction: name(top), score: round6(probs[top]) };
  }
  if (runtime.task === "segmentation" && first) {
    const classes = first.shape[1];
    const voxels = perSample / classes;
    const counts = new Array<number>(classes).fill(0);
    for (let v = 0; v < voxels; v++) {
      let best = 0;
      for (let c = 1; c < classes; c++) if (values[c * voxels + v] > values[best * voxels + v]) best = c;
      counts[best] += 1;
    }
    const byName = (f: (n: number) => number) => Object.fromEntries(counts.map((n, i) => [name(i), f(n)]));
    return {
      prediction: { voxels: byName((n) => n), total: voxels, fraction: byName((n) => round6(n / voxels)) },
      score: null,
    };
  }
  if (values.length <= MAX_VALUES) return { prediction: values, score: null };
  return {
    prediction: {
      size: values.length,
      mean: values.reduce((a, b) => a + b, 0) / values.length,
      max: Math.max(...values),
    },
    score: null,
  };
}

/** UTC, seconds: the agent's format (`2026-11-30T16:00:00Z`). */
export function isoSeconds(date = new Date()): string {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function uuid4(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string; getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  if (!c?.getRandomValues) throw new Error("no secure random source (install react-native-get-random-values)");
  const b = c.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** One event with the fields `runtime.events.fields` names (and always its id). */
export function makeEvent(
  runtime: RuntimeWithEvents,
  outputs: Output[],
  latencyMs: number,
  context: EventContext,
  inputs?: Map<string, { data: ArrayLike<number | bigint> }>,
): EventJson {
  const cfg = runtime.events ?? {};
  const values: { [k: string]: unknown } = {
    ...summarise(runtime, outputs),
    latency_ms: Math.round(latencyMs * 1000) / 1000,
    deployment: runtime.deployment ?? null,
    model_sha256: runtime.model.sha256 ?? null,
    time: isoSeconds(),
    ...context,
  };
  const event: EventJson = { id: uuid4() };
  for (const field of cfg.fields ?? []) event[field] = values[field] ?? null;
  if (cfg.include_inputs && inputs) {
    event.inputs = Object.fromEntries([...inputs].map(([k, v]) => [k, Array.from(v.data, Number)]));
  }
  return event;
}

interface OutboxFile { events: EventJson[]; dropped: number }

/** The outbox: events not yet acknowledged by the collector, oldest first. */
export class EventOutbox {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: StorageAdapter,
    readonly max = 10000,
    readonly path = "events/outbox.json",
  ) {
    if (!(max > 0)) throw new Error(`outbox_max: expected more than 0, found ${max}`);
  }

  /** For a bundle's events section (its `outbox_max`). */
  static forRuntime(store: StorageAdapter, runtime: RuntimeWithEvents): EventOutbox {
    return new EventOutbox(store, runtime.events?.outbox_max ?? 10000);
  }

  private async read(): Promise<OutboxFile> {
    const text = await readText(this.store, this.path);
    if (text === null) return { events: [], dropped: 0 };
    const doc = JSON.parse(text) as OutboxFile;
    return { events: Array.isArray(doc.events) ? doc.events : [], dropped: Number(doc.dropped) || 0 };
  }

  private async write(doc: OutboxFile): Promise<void> {
    const slash = this.path.lastIndexOf("/");
    if (slash > 0) await this.store.mkdirs(this.path.slice(0, slash));
    await writeAtomic(this.store, this.path, JSON.stringify(doc));
  }

  /** One change at a time (the app may record while a send is under way). */
  private locked<T>(work: () => Promise<T>): Promise<T> {
    const next = this.chain.then(work, work);
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Queue events; past `max`, the oldest are dropped and counted. */
  add(...events: EventJson[]): Promise<void> {
    return this.locked(async () => {
      const doc = await this.read();
      doc.events.push(...events);
      const over = doc.events.length - this.max;
      if (over > 0) {
        doc.events.splice(0, over);
        doc.dropped += over;
      }
      await this.write(doc);
    });
  }

  async pending(limit = Infinity): Promise<EventJson[]> {
    const doc = await this.read();
    return doc.events.slice(0, limit);
  }

  async stats(): Promise<{ pending: number; dropped: number; limit: number }> {
    const doc = await this.read();
    return { pending: doc.events.length, dropped: doc.dropped, limit: this.max };
  }

  /** Forget the events the collector has (by id). */
  remove(ids: Iterable<string>): Promise<void> {
    const gone = new Set(ids);
    return this.locked(async () => {
      const doc = await this.read();
      doc.events = doc.events.filter((e) => !gone.has(e.id));
      await this.write(doc);
    });
  }
}

export class EventsUnreachable extends Error {}

export interface SendReport { sent: number; duplicates: number; refused: string[]; pending: number }

/** Sends the outbox to the collector over HTTP(S): `POST <url>/v1/events`, a Bearer token. */
export class HttpEventSender {
  constructor(
    readonly url: string,
    private readonly token: string,
    private readonly fetchImpl: typeof fetch = fetch,
    readonly batch = 100,
  ) {}

  /** Everything pending, batch by batch; a collector that is away leaves the outbox as it was
   * (`EventsUnreachable`), and the next call carries on. */
  async send(outbox: EventOutbox): Promise<SendReport> {
    const report: SendReport = { sent: 0, duplicates: 0, refused: [], pending: 0 };
    for (;;) {
      const events = await outbox.pending(this.batch);
      if (!events.length) break;
      let res: Response;
      try {
        res = await this.fetchImpl(`${this.url.replace(/\/$/, "")}/v1/events`, {
          method: "POST",
          headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.token}` },
          body: JSON.stringify({ events }),
        });
      } catch (err) {
        report.pending = (await outbox.stats()).pending;
        throw new EventsUnreachable(`events collector ${this.url}: ${(err as Error).message}`);
      }
      const answer = (await res.json().catch(() => ({}))) as { results?: { id: string; status: string }[]; error?: string };
      if (res.status !== 200 || !Array.isArray(answer.results)) {
        report.pending = (await outbox.stats()).pending;
        throw new EventsUnreachable(`events collector ${this.url}: HTTP ${res.status} ${answer.error ?? ""}`.trim());
      }
      const done: string[] = [];
      for (const r of answer.results) {
        if (r.status === "stored") report.sent += 1;
        else if (r.status === "duplicate") report.duplicates += 1;
        else report.refused.push(`${r.id}: ${r.status}`); // never accepted: not sent again
        done.push(r.id);
      }
      await outbox.remove(done);
    }
    report.pending = (await outbox.stats()).pending;
    return report;
  }
}
