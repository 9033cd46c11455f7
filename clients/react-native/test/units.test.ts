import { test } from "node:test";
import assert from "node:assert/strict";
import { checkOutputs } from "../src/runner.js";
import { strictLoads, canonical } from "../src/json.js";
import { bucket } from "../src/client.js";
import { RootError } from "../src/errors.js";

const enc = (s: string) => new TextEncoder().encode(s);

test("strict JSON refuses duplicate keys, floats in canonical documents and deep nesting", () => {
  assert.throws(() => strictLoads(enc('{"a":1,"a":2}'), "doc", 1000), (e: RootError) => e.code === "duplicate_key");
  assert.throws(() => strictLoads(enc('{"a":1.5}'), "doc", 1000), (e: RootError) => e.code === "malformed_trust");
  assert.deepEqual(strictLoads(enc('{"a":1.5}'), "doc", 1000, 16, true), { a: 1.5 });
  assert.throws(() => strictLoads(enc("[".repeat(20) + "]".repeat(20)), "doc", 1000), (e: RootError) => e.code === "too_deep");
  assert.throws(() => strictLoads(enc("{} x"), "doc", 1000), (e: RootError) => e.code === "malformed_trust");
  assert.throws(() => strictLoads(enc('{"a":NaN}'), "doc", 1000), (e: RootError) => e.code === "malformed_trust");
  assert.throws(() => strictLoads(enc("{}   "), "doc", 3), (e: RootError) => e.code === "too_large");
});

test("canonical JSON sorts keys and escapes only backslash and quote", () => {
  const text = new TextDecoder().decode(canonical({ b: [1, true, null], a: 'x"\\\n' }));
  assert.equal(text, '{"a":"x\\"\\\\\n","b":[1,true,null]}');
});

test("bucket is the feed's: the SHA-256 of salt:install-id, first 32 bits", () => {
  // orchestrator.ship.feed.bucket("salt", "id")
  assert.equal(bucket("salt", "id"), 0.30660236603580415);
});

test("checkOutputs names the output, the difference and the tolerance; argmax agreement counted", () => {
  const expected = new Map([["logits", { data: Float64Array.from([1, 2, 3, 0]), shape: [1, 4] }]]);
  const near = checkOutputs(expected, [{ data: Float64Array.from([1.05, 2, 3, 0]), shape: [1, 4] }], ["logits"], { atol: 0.1 });
  assert.equal(near.passed, true);
  assert.equal(near.argmax_agreement, 1);
  const far = checkOutputs(expected, [{ data: Float64Array.from([1, 2, 1, 4]), shape: [1, 4] }], ["logits"], { atol: 0.1 });
  assert.equal(far.passed, false);
  assert.deepEqual(far.failures, ["logits: max |diff| 4 > atol 0.1 (rtol 0)", "logits: argmax agreement 0.0000 < 1.0000"]);
  const shape = checkOutputs(expected, [{ data: Float64Array.from([1, 2]), shape: [1, 2] }], ["logits"], {});
  assert.deepEqual(shape.failures, ["logits: shape [1, 2], expected [1, 4]"]);
});
