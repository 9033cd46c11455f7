/** The storage adapter over Node's `fs` (tests, and Node-based tools). Not for the app bundle. */
import { promises as fs } from "node:fs";
import * as nodePath from "node:path";
import type { FileWriter, StorageAdapter } from "./storage.js";

export class NodeFsStorage implements StorageAdapter {
  constructor(readonly root: string) {}

  resolve(path: string): string {
    return nodePath.join(this.root, ...path.split("/"));
  }

  async read(path: string): Promise<Uint8Array | null> {
    try {
      return new Uint8Array(await fs.readFile(this.resolve(path)));
    } catch (exc) {
      if ((exc as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw exc;
    }
  }

  async write(path: string, data: Uint8Array): Promise<void> {
    await fs.writeFile(this.resolve(path), data);
  }

  async create(path: string): Promise<FileWriter> {
    const handle = await fs.open(this.resolve(path), "w");
    return {
      write: async (chunk) => void (await handle.write(chunk)),
      close: () => handle.close(),
    };
  }

  async mkdirs(path: string): Promise<void> {
    await fs.mkdir(this.resolve(path), { recursive: true });
  }

  async exists(path: string): Promise<boolean> {
    try {
      await fs.stat(this.resolve(path));
      return true;
    } catch {
      return false;
    }
  }

  async rename(from: string, to: string): Promise<void> {
    await fs.rename(this.resolve(from), this.resolve(to));
  }

  async remove(path: string): Promise<void> {
    await fs.rm(this.resolve(path), { recursive: true, force: true });
  }
}
