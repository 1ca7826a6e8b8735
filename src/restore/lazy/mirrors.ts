/**
 * The blob mirrors strata-fuse fetches s3:// layers into (CACHE/blobs/<layer sha256>, sparse, at
 * the blob's size): what they hold, and keeping them within the host's cache budget. The control
 * plane does this; strata-fuse never deletes. Emptying a mirror (truncate to 0, then back to its
 * size) is always safe, even under a live mount: strata-fuse sees holes, fetches again and
 * verifies every frame it reads, so nothing wrong is ever served.
 */
import type { Stats } from 'node:fs';
import { readdir, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';

export interface MirrorFile {
  hex: string;
  path: string;
  size: number;
  /** Bytes on disk (allocated blocks). */
  held: number;
  /** Last use: the later of its last write (a fetch) and last read, as the filesystem keeps them. */
  used: number;
}

export async function listMirrors(cacheDir: string): Promise<MirrorFile[]> {
  const dir = join(cacheDir, 'blobs');
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: MirrorFile[] = [];
  for (const hex of names) {
    if (!/^[0-9a-f]{64}$/.test(hex)) continue;
    const path = join(dir, hex);
    const st: Stats | undefined = await stat(path).catch(() => undefined);
    if (!st?.isFile()) continue;
    out.push({ hex, path, size: st.size, held: st.blocks * 512, used: Math.max(st.atimeMs, st.mtimeMs) });
  }
  return out;
}

/**
 * Empty mirrors, least recently used first, until they hold at most `budget` bytes: mirrors no
 * mount uses before any that one does. Returns what was emptied.
 */
export async function trimMirrors(cacheDir: string, budget: number, inUse: ReadonlySet<string>): Promise<MirrorFile[]> {
  const all = await listMirrors(cacheDir);
  let held = all.reduce((n, m) => n + m.held, 0);
  if (held <= budget) return [];
  const order = [...all].filter((m) => m.held > 0).sort((a, b) => Number(inUse.has(a.hex)) - Number(inUse.has(b.hex)) || a.used - b.used);
  const emptied: MirrorFile[] = [];
  for (const m of order) {
    if (held <= budget) break;
    await truncate(m.path, 0);
    await truncate(m.path, m.size);
    held -= m.held;
    emptied.push(m);
  }
  return emptied;
}
