/** NumPy `.npz` (a zip of `.npy` arrays, as `np.savez` writes it: stored, not compressed). */
export interface NdArray {
  dtype: string; // numpy's name: float32, float64, int64, int32, uint8, ...
  shape: number[];
  data: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array;
}

const DTYPES: { [descr: string]: string } = {
  "<f4": "float32", "<f8": "float64", "<i4": "int32", "<i8": "int64", "|u1": "uint8", "|i1": "int8",
};

function typed(dtype: string, buf: ArrayBuffer): NdArray["data"] {
  switch (dtype) {
    case "float32": return new Float32Array(buf);
    case "float64": return new Float64Array(buf);
    case "int32": return new Int32Array(buf);
    case "int64": return new BigInt64Array(buf);
    case "uint8": return new Uint8Array(buf);
    default: return new Int8Array(buf);
  }
}

/** One `.npy` file (version 1-3, little-endian, C order). */
export function parseNpy(bytes: Uint8Array, name = "array"): NdArray {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (!magic.every((b, i) => bytes[i] === b)) throw new Error(`${name}: not a .npy array`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1] ?? "";
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  const dtype = DTYPES[descr];
  if (!dtype || fortran !== "False" || shapeText === undefined) {
    throw new Error(`${name}: expected a little-endian C-order array of ${Object.keys(DTYPES).join(", ")}, found ${header.trim()}`);
  }
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLen;
  const size = count * typed(dtype, new ArrayBuffer(0)).BYTES_PER_ELEMENT;
  if (bytes.length - offset < size) throw new Error(`${name}: ${bytes.length - offset} bytes of data; ${size} expected`);
  const copy = bytes.slice(offset, offset + size);
  return { dtype, shape, data: typed(dtype, copy.buffer) };
}

/** The arrays of an `.npz` file by name (without `.npy`). */
export function parseNpz(bytes: Uint8Array, source = "npz"): Map<string, NdArray> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 65558); i--) {
    if (view.getUint32(i, true) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) throw new Error(`${source}: not a zip (.npz) file`);
  let entries = view.getUint16(eocd + 10, true);
  let pos = view.getUint32(eocd + 16, true);
  const out = new Map<string, NdArray>();
  while (entries-- > 0) {
    if (view.getUint32(pos, true) !== 0x02014b50) throw new Error(`${source}: damaged zip directory`);
    const method = view.getUint16(pos + 10, true);
    let compSize = view.getUint32(pos + 20, true);
    const nameLen = view.getUint16(pos + 28, true);
    const extraLen = view.getUint16(pos + 30, true);
    const commentLen = view.getUint16(pos + 32, true);
    let local = view.getUint32(pos + 42, true);
    const name = new TextDecoder().decode(bytes.subarray(pos + 46, pos + 46 + nameLen));
    // zip64: sizes and offset in the extra field
    let x = pos + 46 + nameLen;
    const xEnd = x + extraLen;
    while (x + 4 <= xEnd) {
      const id = view.getUint16(x, true);
      const len = view.getUint16(x + 2, true);
      if (id === 0x0001) {
        let f = x + 4;
        if (view.getUint32(pos + 24, true) === 0xffffffff) f += 8;
        if (compSize === 0xffffffff) { compSize = Number(view.getBigUint64(f, true)); f += 8; }
        if (local === 0xffffffff) local = Number(view.getBigUint64(f, true));
      }
      x += 4 + len;
    }
    if (method !== 0) throw new Error(`${source}: ${name} is compressed (method ${method}); expected np.savez's stored arrays`);
    const dataStart = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    out.set(name.replace(/\.npy$/, ""), parseNpy(bytes.subarray(dataStart, dataStart + compSize), `${source}:${name}`));
    pos += 46 + nameLen + extraLen + commentLen;
  }
  return out;
}
