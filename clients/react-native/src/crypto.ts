/** Ed25519 (RFC 8032, strict as OpenSSL) and SHA-256 in plain JavaScript (`@noble`): the same
 * code on Hermes, JavaScriptCore and Node. */
import * as ed from "@noble/ed25519";
import { sha256 as nobleSha256, sha512 } from "@noble/hashes/sha2.js";

ed.hashes.sha512 = sha512;

export function hex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

export function fromHex(text: string): Uint8Array {
  if (text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) throw new Error("expected hex digits");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function sha256Hex(data: Uint8Array): string {
  return hex(nobleSha256(data));
}

/** An incremental SHA-256 (downloads are hashed as they stream). */
export function sha256Stream(): { update(data: Uint8Array): void; hexdigest(): string } {
  const h = nobleSha256.create();
  return {
    update: (data) => void h.update(data),
    hexdigest: () => hex(h.digest()),
  };
}

/** Whether `signature` is `publicKey`'s Ed25519 signature of `data` (raw 32-byte key). */
export function verifyEd25519(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  try {
    return ed.verify(signature, data, publicKey, { zip215: false });
  } catch {
    return false;
  }
}
