/**
 * The shared phone conformance fixtures (tests/conformance/make_phone_fixtures.py): real signed
 * feeds served over HTTP on loopback, each case's polls made by this client with
 * onnxruntime-node as the runtime, each report compared with the verdict the Python reference
 * client gives. Set EDGESHIP_PHONE_FIXTURES to the fixtures folder (pytest does).
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as http from "node:http";
import { promises as fs } from "node:fs";
import * as path from "node:path";
import * as os from "node:os";
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-node";
import { PhoneClient, UpdateRefused, smokeCheck, OrtMobileRunner, parseNpz, type OrtModule } from "../src/index.js";
import { NodeFsStorage } from "../src/node.js";
import { sha256Hex } from "../src/crypto.js";

const FIXTURES = process.env.EDGESHIP_PHONE_FIXTURES;
const skip = FIXTURES ? false : "EDGESHIP_PHONE_FIXTURES is not set: generate the fixtures with tests/conformance/make_phone_fixtures.py";

interface Expect { result: string; version: number | null; refusal: string | null }
interface Case {
  name: string; trust: string; family: string; channel: string; install_id: string;
  polls: { feed: string; expect: Expect }[];
}

const cases: Case[] = FIXTURES ? JSON.parse(readFileSync(path.join(FIXTURES, "cases.json"), "utf8")).cases : [];
let server: http.Server;
let url = "";
let work = "";

before(async () => {
  if (!FIXTURES) return;
  work = await fs.mkdtemp(path.join(os.tmpdir(), "edgeship-rn-"));
  server = http.createServer(async (req, res) => {
    const rel = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const file = path.join(FIXTURES, path.normalize(rel));
    try {
      const data = await fs.readFile(file);
      res.writeHead(200, { "content-length": data.length });
      res.end(data);
    } catch {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const address = server.address() as { port: number };
  url = `http://127.0.0.1:${address.port}/`;
});

after(async () => {
  if (server) await new Promise((ok) => server.close(ok));
  if (work) await fs.rm(work, { recursive: true, force: true });
});

for (const c of cases) {
  test(`conformance: ${c.name}`, async () => {
    const storage = new NodeFsStorage(path.join(work, c.name));
    await fs.mkdir(storage.root, { recursive: true });
    const trust = new Uint8Array(readFileSync(path.join(FIXTURES!, c.trust)));
    const got: Expect[] = [];
    for (const poll of c.polls) {
      let client: PhoneClient;
      try {
        client = await PhoneClient.open({
          feedUrl: url + poll.feed, channel: c.channel, storage, family: c.family, trust,
          installId: c.install_id, ort: ort as unknown as OrtModule,
        });
      } catch (exc) {
        if (!(exc instanceof UpdateRefused)) throw exc;
        got.push({ result: "refused", version: null, refusal: exc.code });
        continue;
      }
      const report = await client.poll();
      if (report.result === "activated" || report.result === "rolled_back") {
        assert.equal(report.health?.result, "pass", JSON.stringify(report.health));
      }
      got.push({ result: report.result!, version: report.version ?? null, refusal: report.refusal ?? null });
      // what runs afterwards is the version reported, installed and complete
      const current = await client.pointer("current");
      assert.equal(current ? current.version : null, report.version ?? null, `${c.name}: current pointer`);
      if (current) {
        const manifest = await storage.read(`versions/${current.deployment}/${current.version}/manifest.json`);
        assert.ok(manifest, `${c.name}: the running version's manifest is installed`);
        // what events name as the running bundle: its version and signed manifest's digest
        assert.deepEqual(await client.installed(), { ...current, manifest_sha256: sha256Hex(manifest) });
      } else {
        assert.equal(await client.installed(), null);
      }
    }
    assert.deepEqual(got, c.polls.map((p) => p.expect), `${c.name}: ${JSON.stringify(got)}`);
  });
}

test("the posture_phone .ort bundle runs in onnxruntime-node and passes its smoke test", { skip }, async () => {
  const storage = new NodeFsStorage(path.join(FIXTURES!, "feeds", "v1"));
  const folder = "bundles/posture_phone/1";
  const report = await smokeCheck(storage, folder, ort as unknown as OrtModule);
  assert.equal(report.result, "pass", report.reason ?? "");
  assert.equal(report.argmax_agreement, 1);
  assert.deepEqual(report.providers, ["cpu"]); // XNNPACK is not in the CPU build; CPU follows
  const logits = report.outputs?.logits as { max_abs_diff: number; atol: number; passed: boolean };
  assert.ok(logits.passed && logits.max_abs_diff <= logits.atol);

  // the app's path: a raw IMU window, standardised with runtime.json's constants, labelled
  const runner = await OrtMobileRunner.load(storage, folder, ort as unknown as OrtModule);
  assert.deepEqual(runner.labels, ["Standing", "Running", "Walking", "Badminton"]);
  const input = parseNpz((await storage.read(`${folder}/smoke/input.npz`))!).get("imu")!;
  const expected = parseNpz((await storage.read(`${folder}/smoke/expected.npz`))!).get("logits")!;
  const spec = runner.spec.preprocessing!;
  const [, channels, samples] = input.shape;
  const raw = Array.from({ length: channels }, (_, c) =>
    Array.from({ length: samples }, (_, s) => Number(input.data[c * samples + s]) * spec.std![c] + spec.mean![c]),
  );
  const result = await runner.classify(raw);
  const want = Array.from(expected.data as Float32Array);
  assert.equal(result.index, want.indexOf(Math.max(...want)));
  assert.equal(result.label, runner.labels[result.index]);
  assert.throws(() => runner.preprocess(raw.slice(1)), /expected 6 channels of 100 samples, found 5/);
});
