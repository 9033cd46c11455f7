/**
 * Where the client keeps its state: an adapter over the app's file system, paths relative to
 * the installation's folder ("/"-separated). A Node `fs` adapter is in `./node.js`;
 * `docs/phone-app.md` shows `react-native-fs` and Expo FileSystem versions.
 *
 * `rename` must replace `to` atomically when it is a file (POSIX rename(2), which both
 * react-native-fs' `moveFile` after `unlink` and Expo's `moveAsync` come down to on a phone's
 * own storage): the `current` and `previous` pointers are switched that way.
 */
export interface FileWriter {
  write(chunk: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

export interface StorageAdapter {
  /** The file's bytes, or null when there is none. */
  read(path: string): Promise<Uint8Array | null>;
  /** Write a whole file (its folder exists). */
  write(path: string, data: Uint8Array): Promise<void>;
  /** A new file written chunk by chunk (downloads). */
  create(path: string): Promise<FileWriter>;
  mkdirs(path: string): Promise<void>;
  exists(path: string): Promise<boolean>;
  /** Move a file or folder; a file at `to` is replaced atomically. */
  rename(from: string, to: string): Promise<void>;
  /** Remove a file or a folder and all it holds; nothing when absent. */
  remove(path: string): Promise<void>;
  /** The absolute path (or URI) of `path`, for the runtime that opens the model. */
  resolve(path: string): string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export async function readText(store: StorageAdapter, path: string): Promise<string | null> {
  const data = await store.read(path);
  return data === null ? null : decoder.decode(data);
}

/** Write `text` to `path` through a temporary file and an atomic rename. */
export async function writeAtomic(store: StorageAdapter, path: string, data: Uint8Array | string): Promise<void> {
  const slash = path.lastIndexOf("/");
  const tmp = `${path.slice(0, slash + 1)}.${path.slice(slash + 1)}.tmp`;
  await store.write(tmp, typeof data === "string" ? encoder.encode(data) : data);
  await store.rename(tmp, path);
}
