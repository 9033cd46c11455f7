import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { EventOutbox, EventsUnreachable, HttpEventSender, isoSeconds, makeEvent, summarise, type RuntimeWithEvents } from "../src/events.js";
import { NodeFsStorage } from "../src/node.js";

const out = (data: number[], shape: number[]) => ({ data: Float64Array.from(data), shape });
const runtime = (extra: object = {}): RuntimeWithEvents => ({
  deployment: "posture_phone",
  model: { file: "model/model.ort", sha256: "ab".repeat(32) },
  inputs: [],
  outputs: [],
  task: "classification",
  labels: ["sit", "stand", "walk"],
  events: { enabled: true, fields: ["prediction", "score", "latency_ms", "version", "device", "fleet", "time"] },
  ...extra,
});

test("predictions are summarised as the device agent does (orchestrator/device/agent/events.py)", () => {
  // the agent's summarise() on the same outputs gives these values
  assert.deepEqual(summarise(runtime(), [out([1, 3, 0.5], [1, 3])]), { prediction: "stand", score: 0.821409 });
  const seg = out([0, 0, 0, 0, 5, 0, 0, 3], [1, 2, 2, 2]);
  assert.deepEqual(summarise(runtime({ task: "segmentation", labels: ["bg", "liver"] }), [seg]), {
    prediction: { voxels: { bg: 2, liver: 2 }, total: 4, fraction: { bg: 0.5, liver: 0.5 } },
    score: null,
  });
  const multi = runtime({ labels: ["a", "b"], events: { multi_label: true } });
  assert.deepEqual(summarise(multi, [out([2, -2], [1, 2])]), { prediction: ["a"], score: 0.880797 });
});

test("an event carries only the fields the spec names, a UUID, and no inputs unless asked", () => {
  const context = { version: 3, bundle_digest: "cd".repeat(32), device: "phone-1", fleet: "ward" };
  const inputs = new Map([["imu", { data: [1, 2] }]]);
  const e = makeEvent(runtime(), [out([1, 3, 0.5], [1, 3])], 0.12345, context, inputs);
  assert.match(e.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.deepEqual(Object.keys(e).sort(), ["device", "fleet", "id", "latency_ms", "prediction", "score", "time", "version"]);
  assert.equal(e.latency_ms, 0.123);
  assert.match(String(e.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  const withInputs = makeEvent(runtime({ events: { fields: ["prediction"], include_inputs: true } }), [out([1, 3, 0.5], [1, 3])], 1, context, inputs);
  assert.deepEqual(withInputs.inputs, { imu: [1, 2] });
  assert.equal(isoSeconds(new Date(Date.UTC(2026, 10, 30, 1, 2, 3, 456))), "2026-11-30T01:02:03Z");
});

test("the outbox survives a restart, is bounded (oldest dropped and counted) and forgets by id", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "outbox-"));
  const first = new EventOutbox(new NodeFsStorage(dir), 3);
  await first.add({ id: "a" }, { id: "b" });
  await Promise.all([first.add({ id: "c" }), first.add({ id: "d" })]); // concurrent records
  const again = new EventOutbox(new NodeFsStorage(dir), 3); // the app was killed and restarted
  assert.deepEqual((await again.pending()).map((e) => e.id), ["b", "c", "d"]);
  assert.deepEqual(await again.stats(), { pending: 3, dropped: 1, limit: 3 });
  await again.remove(["c"]);
  assert.deepEqual((await again.pending()).map((e) => e.id), ["b", "d"]);
  assert.throws(() => new EventOutbox(new NodeFsStorage(dir), 0));
});

test("sending keeps the outbox when the collector is away and removes what it acknowledged", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "outbox-"));
  const outbox = new EventOutbox(new NodeFsStorage(dir));
  await outbox.add({ id: "a" }, { id: "b" }, { id: "c" });
  const down = (async () => { throw new TypeError("fetch failed"); }) as unknown as typeof fetch;
  await assert.rejects(new HttpEventSender("http://collector", "t", down).send(outbox), EventsUnreachable);
  assert.equal((await outbox.stats()).pending, 3);
  const seen: string[] = [];
  const up = (async (url: string, init: { headers: { [k: string]: string }; body: string }) => {
    assert.equal(url, "http://collector/v1/events");
    assert.equal(init.headers.Authorization, "Bearer t");
    const ids = (JSON.parse(init.body) as { events: { id: string }[] }).events.map((e) => e.id);
    seen.push(...ids);
    const status = (id: string) => (id === "b" ? "duplicate" : id === "c" ? "refused: claims device x" : "stored");
    return new Response(JSON.stringify({ results: ids.map((id) => ({ id, status: status(id) })) }), { status: 200 });
  }) as unknown as typeof fetch;
  const report = await new HttpEventSender("http://collector/", "t", up, 2).send(outbox);
  assert.deepEqual(seen, ["a", "b", "c"]);
  assert.deepEqual(report, { sent: 1, duplicates: 1, refused: ["c: refused: claims device x"], pending: 0 });
  const refusing = (async () => new Response(JSON.stringify({ error: "a device token is required" }), { status: 401 })) as unknown as typeof fetch;
  await outbox.add({ id: "d" });
  await assert.rejects(new HttpEventSender("http://collector", "bad", refusing).send(outbox), /HTTP 401 a device token is required/);
  assert.equal((await outbox.stats()).pending, 1);
});
