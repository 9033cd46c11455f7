/**
 * The update client of a phone app: poll the signed feed, verify, install, smoke-test, switch.
 * A port of the Python reference client (`orchestrator/device/phone_client.py`): the same
 * roles, thresholds, freshness and version rules, size limits, staged-rollout buckets and
 * refusal codes; the shared conformance fixtures (`tests/conformance/`) hold both to that.
 *
 * One poll: follow newer root versions (`trust/<N+1>.root.json`); take `index/timestamp.json`
 * (timestamp role; refused when expired or naming an index older than one seen before), the
 * index it names (its SHA-256, targets role, serial, expiry); pick the channel's release by
 * this installation's bucket; download the manifest (digest named by the index, targets
 * signature, deployment, version, family, expiry) and every file (size and SHA-256, streamed);
 * install side by side, switch `current` atomically (keeping `previous`), run the smoke test
 * and switch back when it fails. A refused update changes nothing that was installed.
 */
import { UpdateRefused } from "./errors.js";
import { sha256Hex, sha256Stream, hex } from "./crypto.js";
import { strictLoads, type Json } from "./json.js";
import * as rootmeta from "./rootmeta.js";
import { RootError } from "./errors.js";
import { smokeCheck, type OrtModule, type SmokeReport } from "./runner.js";
import { readText, writeAtomic, type StorageAdapter } from "./storage.js";
import { fetchTransport, type Transport } from "./transport.js";
import { verifyEd25519 } from "./crypto.js";

export const FEED_KIND = "edgeship.feed";
export const TIMESTAMP_KIND = "edgeship.feed-timestamp";
export const MAX_DOCUMENT = 4 * 1024 * 1024; // an index, timestamp or manifest larger than this is refused
export const MAX_SIGNATURE = 1024;
const SAFE_PATH = /^[A-Za-z0-9_][A-Za-z0-9._+-]*(\/[A-Za-z0-9_][A-Za-z0-9._+-]*)*$/;

type Obj = { [key: string]: any };

export interface ClientOptions {
  /** The feed's base URL (`feed.base_url` of the fleet). */
  feedUrl: string;
  channel: string;
  /** This installation's folder (the adapter is rooted there). */
  storage: StorageAdapter;
  /** This app's target family (`android_phone`, ...): bundles for others are refused. */
  family: string;
  /** The TUF root shipped with the app (`<N>.root.json` of the key store); first run only. */
  trust?: Uint8Array;
  /** Fix the install id (default: a random one, kept). */
  installId?: string;
  /** ONNX Runtime (`import * as ort from "onnxruntime-react-native"`). */
  ort: OrtModule;
  transport?: Transport;
  /** The clock (milliseconds since the epoch); Date.now by default. */
  now?: () => number;
}

export interface Report {
  install_id: string;
  channel: string;
  time: string;
  current_before: { deployment: string; version: number } | null;
  result?: "activated" | "rolled_back" | "unchanged" | "waiting" | "unhealthy" | "refused";
  refusal?: string;
  message?: string;
  version?: number | null;
  feed_serial?: number;
  bucket?: number;
  rollout_fraction?: number;
  in_rollout?: boolean;
  target?: { deployment: string; version: number };
  health?: SmokeReport;
}

interface Pointer { deployment: string; version: number }

/** This installation's place in [0, 1) for a release (the feed's staged rollout). */
export function bucket(salt: string, installId: string): number {
  const digest = sha256Hex(new TextEncoder().encode(`${salt}:${installId}`));
  return parseInt(digest.slice(0, 8), 16) / 0x100000000;
}

function iso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function parseTime(text: unknown, what: string): number {
  try {
    return rootmeta.parseTime(text, what);
  } catch (exc) {
    throw new UpdateRefused("malformed", (exc as Error).message);
  }
}

function strictDoc(data: Uint8Array, source: string): Obj {
  let doc: Json;
  try {
    doc = strictLoads(data, source, MAX_DOCUMENT, 64, true);
  } catch (exc) {
    const e = exc as RootError;
    throw new UpdateRefused(e.code === "malformed_trust" ? "malformed" : e.code, e.message);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw new UpdateRefused("malformed", `${source}: expected a JSON object`);
  }
  return doc;
}

function randomId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return hex(bytes);
}

export class PhoneClient {
  readonly feed: string;
  private constructor(
    private readonly opts: ClientOptions,
    readonly installId: string,
    private readonly store: StorageAdapter,
    private readonly transport: Transport,
    private readonly now: () => number,
  ) {
    this.feed = opts.feedUrl.replace(/\/+$/, "") + "/";
  }

  /** The client of the installation in `options.storage`; on first use it takes the root of
   * trust (`options.trust`), which must carry its own root threshold. */
  static async open(options: ClientOptions): Promise<PhoneClient> {
    const store = options.storage;
    await store.mkdirs("trust");
    if (options.installId) await writeAtomic(store, "install_id", options.installId + "\n");
    else if ((await store.read("install_id")) === null) await writeAtomic(store, "install_id", randomId() + "\n");
    const installId = ((await readText(store, "install_id")) ?? "").trim();
    if ((await store.read("trust/root.json")) === null) {
      if (!options.trust) throw new UpdateRefused("no_trust", "no root of trust in trust/root.json; pass `trust`");
      rootmeta.checkFirstRoot(rootmeta.parseRoot(options.trust, "the app's root of trust"), "the app's root of trust");
      await writeAtomic(store, "trust/root.json", options.trust);
    }
    return new PhoneClient(options, installId, store, options.transport ?? fetchTransport(), options.now ?? Date.now);
  }

  // -- http ---------------------------------------------------------------------------------

  private async open(rel: string): Promise<AsyncIterable<Uint8Array>> {
    const url = new URL(rel, this.feed).toString();
    let res;
    try {
      res = await this.transport.get(url);
    } catch (exc) {
      throw new UpdateRefused("unavailable", `${url}: ${(exc as Error).message}`);
    }
    if (res.status !== 200) {
      await res.body[Symbol.asyncIterator]().return?.();
      throw new UpdateRefused("unavailable", `${url}: HTTP ${res.status}`);
    }
    return res.body;
  }

  /** A small document, refused (before reading the rest) when larger than `limit`. */
  private async get(rel: string, limit = MAX_DOCUMENT): Promise<Uint8Array> {
    const chunks: Uint8Array[] = [];
    let count = 0;
    for await (const chunk of await this.open(rel)) {
      chunks.push(chunk);
      count += chunk.length;
      if (count > limit) throw new UpdateRefused("too_large", `${rel}: larger than ${limit} bytes; refused`);
    }
    const out = new Uint8Array(count);
    let at = 0;
    for (const c of chunks) { out.set(c, at); at += c.length; }
    return out;
  }

  /** Stream one bundle file to `dest`: at most `size` bytes, hashed on the way. */
  private async fetchFile(rel: string, dest: string, size: number, sha256: string): Promise<void> {
    const digest = sha256Stream();
    let count = 0;
    const out = await this.store.create(dest);
    try {
      for await (const chunk of await this.open(rel)) {
        count += chunk.length;
        if (count > size) throw new UpdateRefused("hash_mismatch", `${rel} is larger than the manifest says`);
        digest.update(chunk);
        await out.write(chunk);
      }
    } finally {
      await out.close();
    }
    if (count !== size || digest.hexdigest() !== sha256) throw new UpdateRefused("hash_mismatch", `${rel} differs from the manifest`);
  }

  // -- trust --------------------------------------------------------------------------------

  private async root(): Promise<rootmeta.RootDoc> {
    const data = await this.store.read("trust/root.json");
    if (data === null) throw new UpdateRefused("no_trust", "trust/root.json is missing");
    return rootmeta.parseRoot(data, "trust/root.json");
  }

  /** The root of trust's `signed` part (`version` is the trust serial). */
  async trust(): Promise<rootmeta.RootSigned> {
    return (await this.root()).signed;
  }

  private async signedBy(role: string, data: Uint8Array, signature: Uint8Array): Promise<boolean> {
    const signed = await this.trust();
    if (rootmeta.expired(signed, this.now())) {
      throw new UpdateRefused("trust_expired", `the root of trust (version ${signed.version}) expired at ${signed.expires}`);
    }
    for (const key of rootmeta.roleKeys(signed, role).values()) {
      if (verifyEd25519(key, data, signature)) return true;
    }
    return false;
  }

  /** Take newer root versions from the feed, each signed by the thresholds it needs. */
  async followTrust(): Promise<number> {
    let current = await this.root();
    for (;;) {
      const version = current.signed.version + 1;
      const name = `trust/${version}.root.json`;
      let data: Uint8Array;
      try {
        data = await this.get(name, rootmeta.MAX_ROOT_BYTES);
      } catch (exc) {
        if (exc instanceof UpdateRefused && exc.code === "unavailable") return version - 1;
        throw exc;
      }
      const doc = rootmeta.parseRoot(data, name);
      rootmeta.checkRootUpdate(current, doc, name);
      await writeAtomic(this.store, "trust/root.json", data);
      current = doc;
    }
  }

  // -- the index ----------------------------------------------------------------------------

  /** The index the feed's fresh, signed timestamp names; signature, digest and age checked. */
  async fetchIndex(): Promise<Obj> {
    await this.followTrust();
    const tsData = await this.get("index/timestamp.json");
    const tsSig = await this.get("index/timestamp.json.sig", MAX_SIGNATURE);
    if (!(await this.signedBy("timestamp", tsData, tsSig))) {
      throw new UpdateRefused("bad_signature", "index/timestamp.json is not signed by a timestamp key");
    }
    const stamp = strictDoc(tsData, "index/timestamp.json");
    if (stamp.kind !== TIMESTAMP_KIND) throw new UpdateRefused("malformed", "index/timestamp.json is not a feed timestamp");
    if (parseTime(stamp.expires_at, "index/timestamp.json expires_at") <= this.now()) {
      throw new UpdateRefused(
        "stale_feed",
        `the feed's timestamp expired at ${stamp.expires_at}: the feed stopped moving or is being replayed; keeping the installed version`,
      );
    }
    const latest = Number(stamp.index_serial);
    if (!Number.isSafeInteger(latest)) throw new UpdateRefused("malformed", `index_serial: expected a whole number, found ${JSON.stringify(stamp.index_serial)}`);
    const seenText = await readText(this.store, "feed.json");
    const seen = seenText === null ? 0 : Number(JSON.parse(seenText).serial);
    if (latest < seen) throw new UpdateRefused("stale_index", `the feed offers index ${latest}; this app has seen ${seen}`);
    const data = await this.get(`index/${latest}.json`);
    const sig = await this.get(`index/${latest}.json.sig`, MAX_SIGNATURE);
    if (sha256Hex(data) !== stamp.index_sha256) {
      throw new UpdateRefused("hash_mismatch", `index ${latest} is not the one the feed's timestamp names`);
    }
    if (!(await this.signedBy("targets", data, sig))) throw new UpdateRefused("bad_signature", `index ${latest}: the signature does not verify`);
    const doc = strictDoc(data, `index/${latest}.json`);
    if (doc.kind !== FEED_KIND || Number(doc.serial ?? -1) !== latest) {
      throw new UpdateRefused("malformed", `index ${latest} names serial ${doc.serial}`);
    }
    if (parseTime(doc.expires_at, `index ${latest} expires_at`) <= this.now()) {
      throw new UpdateRefused("expired", `index ${latest} expired at ${doc.expires_at}`);
    }
    await writeAtomic(this.store, "feed.json", JSON.stringify({ serial: latest }) + "\n");
    return doc;
  }

  // -- installing ---------------------------------------------------------------------------

  /** The version a pointer (`current`, `previous`) names, or null. */
  async pointer(name: "current" | "previous"): Promise<Pointer | null> {
    const text = await readText(this.store, name);
    if (text === null) return null;
    const p = JSON.parse(text) as Pointer;
    return { deployment: String(p.deployment), version: Number(p.version) };
  }

  /** The folder (a storage path) of the version that runs, or null. */
  async currentFolder(): Promise<string | null> {
    const p = await this.pointer("current");
    return p ? `versions/${p.deployment}/${p.version}` : null;
  }

  /** What runs, for events: the deployment, version and its signed manifest's SHA-256. */
  async installed(): Promise<{ deployment: string; version: number; manifest_sha256: string } | null> {
    const p = await this.pointer("current");
    if (p === null) return null;
    const manifest = await this.store.read(`versions/${p.deployment}/${p.version}/manifest.json`);
    if (manifest === null) return null;
    return { deployment: p.deployment, version: p.version, manifest_sha256: sha256Hex(manifest) };
  }

  private async switchTo(name: "current" | "previous", to: Pointer | null): Promise<void> {
    if (to === null) await this.store.remove(name);
    else await writeAtomic(this.store, name, JSON.stringify(to) + "\n");
  }

  /** Download and verify a bundle into versions/<deployment>/<version>/ (if not there). */
  async download(target: Obj): Promise<string> {
    const deployment = String(target.deployment);
    const version = Number(target.version);
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(deployment) || !Number.isSafeInteger(version)) {
      throw new UpdateRefused("malformed", `the index names deployment ${JSON.stringify(target.deployment)} version ${JSON.stringify(target.version)}`);
    }
    const dest = `versions/${deployment}/${version}`;
    const base = String(target.path);
    const manifestBytes = await this.get(base + "manifest.json");
    if (sha256Hex(manifestBytes) !== target.manifest_sha256) {
      throw new UpdateRefused("hash_mismatch", "the manifest differs from the one the index names");
    }
    const installed = await this.store.read(`${dest}/manifest.json`);
    if (installed !== null) {
      if (sha256Hex(installed) === sha256Hex(manifestBytes)) return dest;
      throw new UpdateRefused("version_conflict", `v${version} is installed with another manifest`);
    }
    const sig = await this.get(base + "manifest.json.sig", MAX_SIGNATURE);
    if (!(await this.signedBy("targets", manifestBytes, sig))) {
      throw new UpdateRefused("bad_signature", `manifest of v${version} is not signed by a targets key`);
    }
    const manifest = strictDoc(manifestBytes, `manifest of v${version}`);
    if (manifest.deployment !== deployment || Number(manifest.version) !== version) {
      throw new UpdateRefused("malformed", "the manifest names another deployment or version");
    }
    const family = (manifest.target ?? {}).family;
    if (family !== this.opts.family) {
      throw new UpdateRefused("wrong_family", `the bundle is for ${family}; this app is ${this.opts.family}`);
    }
    if (parseTime(manifest.expires_at, "manifest expires_at") <= this.now()) {
      throw new UpdateRefused("expired", `the bundle expired at ${manifest.expires_at}`);
    }
    const tmp = `versions/${deployment}/.${version}.tmp-${randomId().slice(0, 8)}`;
    await this.store.remove(tmp);
    await this.store.mkdirs(tmp);
    try {
      const seen = new Set<string>();
      if (!Array.isArray(manifest.files)) throw new UpdateRefused("malformed", "the manifest has no list of files");
      for (const entry of manifest.files as Obj[]) {
        const rel = String(entry.path);
        if (!SAFE_PATH.test(rel) || rel.split("/").includes("..")) throw new UpdateRefused("malformed", `unsafe file name '${rel}'`);
        const folded = rel.toLowerCase();
        if (seen.has(folded) || rel === "manifest.json" || rel === "manifest.json.sig") {
          throw new UpdateRefused("malformed", `file name '${rel}' listed twice`);
        }
        seen.add(folded);
        const size = Number(entry.size);
        if (!Number.isSafeInteger(size) || size < 0) throw new UpdateRefused("malformed", `${rel}: size ${JSON.stringify(entry.size)}`);
        const slash = rel.lastIndexOf("/");
        if (slash > 0) await this.store.mkdirs(`${tmp}/${rel.slice(0, slash)}`);
        await this.fetchFile(base + rel, `${tmp}/${rel}`, size, String(entry.sha256));
      }
      await this.store.write(`${tmp}/manifest.json`, manifestBytes);
      await this.store.write(`${tmp}/manifest.json.sig`, sig);
      await this.store.rename(tmp, dest);
    } catch (exc) {
      await this.store.remove(tmp);
      throw exc;
    }
    return dest;
  }

  /** One poll of the feed; returns the report (also kept in `last_report.json`). */
  async poll(): Promise<Report> {
    const current = await this.pointer("current");
    const report: Report = {
      install_id: this.installId,
      channel: this.opts.channel,
      time: iso(this.now()),
      current_before: current,
    };
    try {
      const index = await this.fetchIndex();
      report.feed_serial = index.serial;
      const entry = (index.channels ?? {})[this.opts.channel];
      if (entry === undefined || entry === null) {
        throw new UpdateRefused("no_release", `the feed has no release on channel ${this.opts.channel}`);
      }
      const place = bucket(String(entry.bucket_salt), this.installId);
      report.bucket = Math.round(place * 1e6) / 1e6;
      report.rollout_fraction = entry.rollout_fraction;
      report.in_rollout = place < Number(entry.rollout_fraction);
      const target = report.in_rollout ? entry : entry.fallback;
      if (target === undefined || target === null) {
        report.result = "waiting";
        report.version = current ? current.version : null;
        report.message = `not in the first ${Math.round(Number(entry.rollout_fraction) * 100)}% of installations and the channel has no earlier release`;
        return await this.keep(report);
      }
      const wanted: Pointer = { deployment: String(target.deployment), version: Number(target.version) };
      report.target = wanted;
      if (current && current.deployment === wanted.deployment && current.version === wanted.version) {
        const installed = await this.store.read(`versions/${current.deployment}/${current.version}/manifest.json`);
        if (installed !== null && sha256Hex(installed) === target.manifest_sha256) {
          report.result = "unchanged";
          report.version = current.version;
          return await this.keep(report);
        }
      }
      const folder = await this.download(target);
      if (current !== null) await this.switchTo("previous", current);
      await this.switchTo("current", wanted);
      const health = await smokeCheck(this.store, folder, this.opts.ort);
      report.health = health;
      if (health.result === "pass") {
        const downgrade = current !== null && wanted.version < current.version;
        report.result = downgrade ? "rolled_back" : "activated";
        report.version = wanted.version;
      } else {
        await this.switchTo("current", current);
        report.result = "unhealthy";
        report.version = current ? current.version : null;
        report.message = `smoke test failed: ${health.reason}`;
      }
    } catch (exc) {
      if (!(exc instanceof UpdateRefused)) throw exc;
      report.result = "refused";
      report.refusal = exc.code;
      report.message = exc.message;
      report.version = current ? current.version : null;
    }
    return await this.keep(report);
  }

  private async keep(report: Report): Promise<Report> {
    await writeAtomic(this.store, "last_report.json", JSON.stringify(report, null, 2) + "\n");
    return report;
  }
}
