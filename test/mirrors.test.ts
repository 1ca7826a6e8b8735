/**
 * The blob mirrors' share of the cache budget (src/restore/lazy/mirrors.ts): emptied least
 * recently used first, mirrors in use last, back to sparse files of their blob's size.
 */
import { mkdir, mkdtemp, open, rm, stat, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listMirrors, trimMirrors } from '../src/restore/lazy/mirrors.js';

const MiB = 1024 * 1024;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-mirrors-'));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A mirror of a `size`-byte blob holding `held` bytes at its start, last used `ago` seconds back. */
async function mirror(cache: string, n: number, size: number, held: number, ago: number): Promise<string> {
  const hex = n.toString(16).padStart(64, '0');
  const p = join(cache, 'blobs', hex);
  const fh = await open(p, 'w');
  await fh.truncate(size);
  await fh.write(Buffer.alloc(held, 1), 0, held, 0);
  await fh.close();
  const t = new Date(Date.now() - ago * 1000);
  await utimes(p, t, t);
  return hex;
}

describe('blob mirrors within the cache budget', () => {
  it('empties unused mirrors oldest first, then the ones in use, and keeps them sparse at their size', async () => {
    const cache = join(dir, 'c1');
    await mkdir(join(cache, 'blobs'), { recursive: true });
    const old = await mirror(cache, 1, 8 * MiB, 2 * MiB, 300);
    const inUse = await mirror(cache, 2, 8 * MiB, 2 * MiB, 400); // oldest, but a mount uses it
    const recent = await mirror(cache, 3, 8 * MiB, 2 * MiB, 10);
    expect((await listMirrors(cache)).reduce((n, m) => n + m.held, 0)).toBeGreaterThanOrEqual(6 * MiB);
    // Within budget: nothing happens.
    expect(await trimMirrors(cache, 64 * MiB, new Set([inUse]))).toEqual([]);
    // 4.5 MiB: one mirror must go, the oldest unused one.
    let gone = await trimMirrors(cache, 4.5 * MiB, new Set([inUse]));
    expect(gone.map((m) => m.hex)).toEqual([old]);
    const st = await stat(join(cache, 'blobs', old));
    expect(st.size).toBe(8 * MiB);
    expect(st.blocks).toBe(0);
    // 1 MiB: the other unused one, then the one in use.
    gone = await trimMirrors(cache, 1 * MiB, new Set([inUse]));
    expect(gone.map((m) => m.hex)).toEqual([recent, inUse]);
    expect((await listMirrors(cache)).every((m) => m.held === 0 && m.size === 8 * MiB)).toBe(true);
  });
});
