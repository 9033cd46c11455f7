/**
 * TUF root metadata as the app checks it (a port of `orchestrator/device/agent/rootmeta.py`):
 * canonical JSON, key ids, the four roles and their thresholds. A new root version is taken
 * only when it is exactly one version newer and signed by the root threshold of the root
 * already trusted AND by its own (TUF specification, section 5.3).
 */
import { canonical, strictLoads, type Json } from "./json.js";
import { fromHex, sha256Hex, verifyEd25519 } from "./crypto.js";
import { RootError } from "./errors.js";

export const ROLES = ["root", "targets", "snapshot", "timestamp"] as const;
export const MAX_ROOT_BYTES = 1024 * 1024;
const HEX64 = /^[0-9a-f]{64}$/;
const HEX128 = /^[0-9a-f]{128}$/;
const TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$/;

type Obj = { [key: string]: Json };
export interface RootKey {
  keytype: string;
  scheme: string;
  keyval: { public: string };
}
export interface RootSigned {
  _type: "root";
  version: number;
  expires: string;
  keys: { [keyid: string]: RootKey };
  roles: { [role: string]: { keyids: string[]; threshold: number } };
}
export interface RootDoc {
  signed: RootSigned;
  signatures: { keyid: string; sig: string }[];
}

/** A `%Y-%m-%dT%H:%M:%SZ` time (UTC) as milliseconds since the epoch. */
export function parseTime(text: unknown, what = "time"): number {
  const m = typeof text === "string" ? TIME.exec(text) : null;
  const ms = m ? Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) : NaN;
  if (!m || Number.isNaN(ms) || new Date(ms).getUTCDate() !== +m[3]) {
    throw new Error(`${what}: expected a time like 2030-01-31T12:00:00Z, found ${JSON.stringify(text)}`);
  }
  return ms;
}

function isObject(value: unknown): value is Obj {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value);
}

/** The raw 32-byte Ed25519 public key of a TUF key. */
export function keyBytes(key: RootKey): Uint8Array {
  const raw = fromHex(String(key.keyval.public));
  if (raw.length !== 32) throw new Error("an ed25519 public key is 32 bytes");
  return raw;
}

/** TUF's key id: the SHA-256 of the canonical JSON of keytype, scheme and keyval. */
export function defaultKeyid(key: RootKey): string {
  return sha256Hex(canonical({ keytype: key.keytype, scheme: key.scheme, keyval: key.keyval as Json }));
}

/** A root document `{signed, signatures}`, its structure checked (`rootmeta.parse_root`). */
export function parseRoot(data: Uint8Array, source: string): RootDoc {
  const doc = strictLoads(data, source, MAX_ROOT_BYTES);
  try {
    if (!isObject(doc) || Object.keys(doc).sort().join(",") !== "signatures,signed") {
      throw new Error("expected an object with exactly 'signed' and 'signatures'");
    }
    const signed = doc.signed;
    if (!isObject(signed)) throw new Error("signed: expected an object");
    if (signed._type !== "root") throw new Error(`_type: expected 'root', found ${JSON.stringify(signed._type)}`);
    if (!isInteger(signed.version) || signed.version < 1) {
      throw new Error(`version: expected a positive integer, found ${JSON.stringify(signed.version)}`);
    }
    parseTime(signed.expires, "expires");
    if (!isObject(signed.keys)) throw new Error("keys: expected an object");
    for (const [kid, key] of Object.entries(signed.keys)) {
      if (!isObject(key) || key.keytype !== "ed25519" || key.scheme !== "ed25519" || !isObject(key.keyval)) {
        throw new Error(`keys.${kid}: only ed25519 keys are accepted`);
      }
      keyBytes(key as unknown as RootKey);
      const id = defaultKeyid(key as unknown as RootKey);
      if (id !== kid) throw new Error(`keys.${kid}: the key's id is ${id}`);
    }
    if (!isObject(signed.roles)) throw new Error("roles: expected an object");
    for (const role of ROLES) {
      const entry = signed.roles[role];
      if (!isObject(entry)) throw new Error(`roles.${role}: missing`);
      const threshold = entry.threshold;
      if (!isInteger(threshold) || threshold < 1) {
        throw new Error(`roles.${role}.threshold: expected 1 or more, found ${JSON.stringify(threshold)}`);
      }
      const ids = entry.keyids;
      if (!Array.isArray(ids)) throw new Error(`roles.${role}.keyids: expected a list`);
      if (new Set(ids).size !== ids.length || ids.some((k) => typeof k !== "string" || !(k in (signed.keys as Obj)))) {
        throw new Error(`roles.${role}.keyids: duplicate or unknown key ids`);
      }
      if (ids.length < threshold) throw new Error(`roles.${role}: ${ids.length} keys cannot meet threshold ${threshold}`);
    }
    if (!Array.isArray(doc.signatures)) throw new Error("signatures: expected a list");
    for (const sig of doc.signatures) {
      if (!isObject(sig) || !HEX64.test(String(sig.keyid)) || !HEX128.test(String(sig.sig))) {
        throw new Error("signatures: expected a key id and a 64-byte hex signature");
      }
    }
  } catch (exc) {
    if (exc instanceof RootError) throw exc;
    throw new RootError("malformed_trust", `${source}: not a TUF root (${(exc as Error).message})`);
  }
  return doc as unknown as RootDoc;
}

/** Key id -> raw public key of the keys of `role` in a root's `signed` part. */
export function roleKeys(signed: RootSigned, role: string): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  for (const kid of signed.roles[role].keyids) out.set(kid, keyBytes(signed.keys[kid]));
  return out;
}

/** [valid distinct signatures by keys of `role` in `trusted`, that role's threshold]. */
export function countSignatures(doc: RootDoc, trusted: RootSigned, role: string): [number, number] {
  const payload = canonical(doc.signed as unknown as Json);
  const keys = roleKeys(trusted, role);
  const valid = new Set<string>();
  for (const sig of doc.signatures) {
    const key = keys.get(sig.keyid);
    if (key && !valid.has(sig.keyid) && verifyEd25519(key, payload, fromHex(sig.sig))) valid.add(sig.keyid);
  }
  return [valid.size, trusted.roles[role].threshold];
}

/** A root taken on first use (shipped with the app): signed by its own root threshold. */
export function checkFirstRoot(doc: RootDoc, source: string): void {
  const [count, threshold] = countSignatures(doc, doc.signed, "root");
  if (count < threshold) {
    throw new RootError("bad_signature", `${source}: signed by ${count} of its root keys; its threshold is ${threshold}`);
  }
}

/** `doc` may replace the trusted root `current`: exactly one version newer, signed by the
 * threshold of the trusted root's root keys and by its own. */
export function checkRootUpdate(current: RootDoc, doc: RootDoc, source: string): void {
  const have = current.signed.version;
  const next = doc.signed.version;
  if (next !== have + 1) {
    throw new RootError(
      next <= have ? "stale_trust" : "trust_gap",
      `${source}: root version ${next} does not follow the trusted version ${have} (expected ${have + 1})`,
    );
  }
  const checks: [RootSigned, string][] = [
    [current.signed, `of the trusted root keys; the trusted root (version ${have}) requires`],
    [doc.signed, "of its own root keys; it requires"],
  ];
  for (const [signers, needs] of checks) {
    const [count, threshold] = countSignatures(doc, signers, "root");
    if (count < threshold) {
      throw new RootError("untrusted_root", `${source}: root version ${next} is signed by ${count} ${needs} ${threshold}`);
    }
  }
}

/** Whether a root (or any TUF `signed` part) has expired at `now` (ms since the epoch). */
export function expired(signed: { expires: string }, now: number): boolean {
  return parseTime(signed.expires, "expires") <= now;
}
