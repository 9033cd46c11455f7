export { PhoneClient, bucket, FEED_KIND, TIMESTAMP_KIND, MAX_DOCUMENT, type ClientOptions, type Report } from "./client.js";
export { UpdateRefused, RootError } from "./errors.js";
export { OrtMobileRunner, smokeCheck, checkOutputs, RunnerError, ORT_PROVIDERS, type OrtModule, type SmokeReport } from "./runner.js";
export { parseNpz, parseNpy, type NdArray } from "./npz.js";
export { type StorageAdapter, type FileWriter, writeAtomic, readText } from "./storage.js";
export { fetchTransport, type Transport, type Response } from "./transport.js";
export * as rootmeta from "./rootmeta.js";
export {
  EventOutbox, HttpEventSender, EventsUnreachable, makeEvent, summarise, isoSeconds,
  type EventJson, type EventContext, type EventsSpec, type RuntimeWithEvents, type SendReport,
} from "./events.js";
