/**
 * What an app does with events, from the command line (Node, `onnxruntime-node` standing in
 * for `onnxruntime-react-native`):
 *
 *   node dist/examples/events-app.js record BUNDLE STATE N FLEET DEVICE VERSION DIGEST
 *       run the bundle's smoke input N times, one event each into STATE's outbox
 *   node dist/examples/events-app.js send STATE URL TOKEN
 *       send the outbox to the collector (exit 3 when it cannot be reached)
 *   node dist/examples/events-app.js stats STATE
 *
 * Each prints one JSON line. The same calls in a React Native screen: docs/phone-app.md.
 */
import * as ort from "onnxruntime-node";
import { OrtMobileRunner, parseNpz, type OrtModule } from "../src/index.js";
import { EventOutbox, EventsUnreachable, HttpEventSender, makeEvent, type RuntimeWithEvents } from "../src/events.js";
import { NodeFsStorage } from "../src/node.js";

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === "record") {
    const [bundle, state, n, fleet, device, version, digest] = rest;
    const runner = await OrtMobileRunner.load(new NodeFsStorage(bundle), ".", ort as unknown as OrtModule);
    const runtime = runner.spec as RuntimeWithEvents;
    const inputs = parseNpz(await new NodeFsStorage(bundle).read("smoke/input.npz") as Uint8Array);
    const outbox = EventOutbox.forRuntime(new NodeFsStorage(state), runtime);
    for (let i = 0; i < Number(n); i++) {
      const t0 = performance.now();
      const outputs = await runner.run(inputs);
      const latency = performance.now() - t0;
      const context = { version: Number(version), bundle_digest: digest, device, fleet };
      await outbox.add(makeEvent(runtime, outputs, latency, context));
    }
    console.log(JSON.stringify(await outbox.stats()));
    return 0;
  }
  if (command === "send") {
    const [state, url, token] = rest;
    const outbox = new EventOutbox(new NodeFsStorage(state));
    try {
      console.log(JSON.stringify(await new HttpEventSender(url, token).send(outbox)));
      return 0;
    } catch (err) {
      if (!(err instanceof EventsUnreachable)) throw err;
      console.log(JSON.stringify({ error: err.message, ...(await outbox.stats()) }));
      return 3;
    }
  }
  if (command === "stats") {
    console.log(JSON.stringify(await new EventOutbox(new NodeFsStorage(rest[0])).stats()));
    return 0;
  }
  console.error("usage: events-app.js record|send|stats ...");
  return 2;
}

main(process.argv.slice(2)).then((code) => process.exit(code), (err) => {
  console.error(err);
  process.exit(1);
});
