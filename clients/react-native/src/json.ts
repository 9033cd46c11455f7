/**
 * Strict JSON for signed documents: size and nesting checked on the raw bytes first, then a
 * parse that refuses duplicate keys, NaN/Infinity and invalid UTF-8, and (for canonical JSON,
 * where `floats` is false) any floating-point number. Mirrors `rootmeta.strict_loads` and
 * `rules.strict_json` of the Python side.
 */
import { RootError } from "./errors.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Why `data` nests deeper than `maxDepth` (objects and arrays), or null; strings skipped. */
export function depthProblem(data: Uint8Array, maxDepth: number): string | null {
  let depth = 0;
  let inString = false;
  let escaped = false;
  for (let i = 0; i < data.length; i++) {
    const b = data[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (b === 0x5c) escaped = true;
      else if (b === 0x22) inString = false;
    } else if (b === 0x22) inString = true;
    else if (b === 0x7b || b === 0x5b) {
      depth += 1;
      if (depth > maxDepth) return `nested deeper than ${maxDepth} levels (at byte ${i})`;
    } else if (b === 0x7d || b === 0x5d) depth -= 1;
  }
  return null;
}

class Parser {
  pos = 0;
  sawFloat = false;
  constructor(readonly text: string) {}

  fail(what: string): never {
    throw new SyntaxError(`${what} at character ${this.pos}`);
  }

  ws(): void {
    while (this.pos < this.text.length && " \t\n\r".includes(this.text[this.pos])) this.pos++;
  }

  value(): Json {
    this.ws();
    const c = this.text[this.pos];
    if (c === "{") return this.object();
    if (c === "[") return this.array();
    if (c === '"') return this.string();
    if (c === "t" && this.text.startsWith("true", this.pos)) return (this.pos += 4), true;
    if (c === "f" && this.text.startsWith("false", this.pos)) return (this.pos += 5), false;
    if (c === "n" && this.text.startsWith("null", this.pos)) return (this.pos += 4), null;
    if (c === "-" || (c >= "0" && c <= "9")) return this.number();
    return this.fail(c === undefined ? "unexpected end of document" : `unexpected ${JSON.stringify(c)}`);
  }

  object(): Json {
    this.pos++;
    const out: { [key: string]: Json } = {};
    const seen = new Set<string>();
    this.ws();
    if (this.text[this.pos] === "}") return this.pos++, out;
    for (;;) {
      this.ws();
      if (this.text[this.pos] !== '"') this.fail("expected a key");
      const key = this.string();
      if (seen.has(key)) throw new DuplicateKey(`key '${key}' appears twice in one object`);
      seen.add(key);
      this.ws();
      if (this.text[this.pos] !== ":") this.fail("expected ':'");
      this.pos++;
      Object.defineProperty(out, key, { value: this.value(), enumerable: true, writable: true, configurable: true });
      this.ws();
      const c = this.text[this.pos++];
      if (c === "}") return out;
      if (c !== ",") this.fail("expected ',' or '}'");
    }
  }

  array(): Json {
    this.pos++;
    const out: Json[] = [];
    this.ws();
    if (this.text[this.pos] === "]") return this.pos++, out;
    for (;;) {
      out.push(this.value());
      this.ws();
      const c = this.text[this.pos++];
      if (c === "]") return out;
      if (c !== ",") this.fail("expected ',' or ']'");
    }
  }

  string(): string {
    const start = this.pos;
    this.pos++;
    for (;;) {
      const c = this.text[this.pos];
      if (c === undefined) this.fail("unterminated string");
      if (c === '"') break;
      if (c === "\\") this.pos += 2;
      else if (c.charCodeAt(0) < 0x20) this.fail("control character in a string");
      else this.pos++;
    }
    this.pos++;
    return JSON.parse(this.text.slice(start, this.pos)) as string;
  }

  number(): number {
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(this.text.slice(this.pos, this.pos + 400));
    if (!m) return this.fail("malformed number");
    if (m[2] !== undefined || m[3] !== undefined) this.sawFloat = true;
    this.pos += m[0].length;
    return Number(m[0]);
  }
}

export class DuplicateKey extends Error {}

/** Parse UTF-8 JSON; throws DuplicateKey or SyntaxError. `sawFloat`: a number had a fraction
 * or an exponent (a float in Python's reading). */
export function strictJson(data: Uint8Array): { doc: Json; sawFloat: boolean } {
  const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(data);
  const p = new Parser(text);
  const doc = p.value();
  p.ws();
  if (p.pos !== text.length) p.fail("extra data");
  return { doc, sawFloat: p.sawFloat };
}

/** JSON no larger than `limit` nor nested deeper than `maxDepth` (`rootmeta.strict_loads`). */
export function strictLoads(
  data: Uint8Array,
  source: string,
  limit: number,
  maxDepth = 16,
  floats = false,
): Json {
  if (data.length > limit) {
    throw new RootError("too_large", `${source}: ${data.length} bytes; at most ${limit} accepted`);
  }
  const deep = depthProblem(data, maxDepth);
  if (deep !== null) throw new RootError("too_deep", `${source}: ${deep}`);
  let parsed: { doc: Json; sawFloat: boolean };
  try {
    parsed = strictJson(data);
  } catch (exc) {
    if (exc instanceof DuplicateKey) throw new RootError("duplicate_key", `${source}: ${exc.message}`);
    throw new RootError("malformed_trust", `${source}: invalid JSON (${(exc as Error).message})`);
  }
  if (!floats && parsed.sawFloat) {
    throw new RootError("malformed_trust", `${source}: a floating-point number (canonical JSON has none)`);
  }
  return parsed.doc;
}

function quote(text: string): string {
  return '"' + text.replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"';
}

function codePointCompare(a: string, b: string): number {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0)! - y[i].codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/** OLPC canonical JSON (what TUF signs): sorted keys, no spaces, only \\ and " escaped. */
export function canonical(value: Json): Uint8Array {
  const out: string[] = [];
  const emit = (item: Json): void => {
    if (typeof item === "string") out.push(quote(item));
    else if (item === true) out.push("true");
    else if (item === false) out.push("false");
    else if (item === null) out.push("null");
    else if (typeof item === "number") {
      if (!Number.isSafeInteger(item)) throw new Error(`cannot encode ${item} in canonical JSON`);
      out.push(String(item));
    } else if (Array.isArray(item)) {
      out.push("[");
      item.forEach((e, i) => {
        if (i) out.push(",");
        emit(e);
      });
      out.push("]");
    } else {
      out.push("{");
      Object.keys(item)
        .sort(codePointCompare)
        .forEach((k, i) => {
          if (i) out.push(",");
          out.push(quote(k) + ":");
          emit(item[k]);
        });
      out.push("}");
    }
  };
  emit(value);
  return new TextEncoder().encode(out.join(""));
}
