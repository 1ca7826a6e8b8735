// ScanAhead (src/capture/scan-ahead.ts): a depth-first walk gets every directory's scan, each
// scanned once, the next ones started before the walk asks, never more than the window ahead.
import { describe, expect, it } from 'vitest';
import { ScanAhead } from '../src/capture/scan-ahead.js';
import type { DirScan } from '../src/sys/scan.js';
import { ScanFlag } from '../src/sys/scan.js';

/** A tree of directories: path -> child names ('/' at the end: a directory). */
const TREE: Record<string, string[]> = {
  '.': ['a/', 'b/', 'f', 'c/'],
  a: ['x/', 'y/', 'g'],
  'a/x': ['h'],
  'a/y': ['z/'],
  'a/y/z': [],
  b: [],
  c: ['d/'],
  'c/d': [],
};

function fakeScan(path: string): DirScan {
  const kids = TREE[path] ?? [];
  return {
    count: kids.length,
    name: (i: number) => Buffer.from(kids[i]!.replace(/\/$/, '')),
    flags: () => ScanFlag.EXISTS,
    stat: (i: number) => ({ isDirectory: () => kids[i]!.endsWith('/') }),
  } as unknown as DirScan;
}

describe('ScanAhead', () => {
  it('scans each directory once, in the walk order, up to the window ahead of it', async () => {
    const started: string[] = [];
    const pending = new Map<string, () => void>();
    const ahead = new ScanAhead((path) => {
      started.push(path);
      return new Promise<DirScan>((r) => pending.set(path, () => r(fakeScan(path))));
    }, 2, 3);
    const order: string[] = [];
    const maxAhead: number[] = [];
    const walk = async (path: string): Promise<void> => {
      order.push(path);
      const p = ahead.take(path);
      pending.get(path)!();
      const scan = await p;
      ahead.children(path, scan);
      // Scans started for directories the walk has not reached yet.
      maxAhead.push(started.filter((s) => !order.includes(s)).length);
      for (let i = 0; i < scan.count; i++) {
        if (!scan.stat(i).isDirectory()) continue;
        const name = scan.name(i).toString();
        await walk(path === '.' ? name : `${path}/${name}`);
      }
    };
    await walk('.');
    expect(order).toEqual(['.', 'a', 'a/x', 'a/y', 'a/y/z', 'b', 'c', 'c/d']);
    expect([...started].sort()).toEqual([...order].sort()); // each once
    expect(Math.max(...maxAhead), 'never more than `most` held').toBeLessThanOrEqual(3);
    expect(maxAhead.slice(0, 3).every((n) => n >= 2), 'scans ran ahead of the walk').toBe(true);
    // a's children come before its later siblings once a's scan is known.
    expect(started.indexOf('a/x')).toBeLessThan(started.indexOf('c/d'));
  });

  it('drops predictions the walk skips, and scans what it did not predict', async () => {
    const started: string[] = [];
    const ahead = new ScanAhead(async (path) => {
      started.push(path);
      if (path === 'b') throw Object.assign(new Error('gone'), { code: 'ENOENT' });
      return fakeScan(path);
    }, 8);
    ahead.children('.', await ahead.take('.'));
    // The walk skips a (captured whole elsewhere) and b (its scan failed: never taken).
    await expect(ahead.take('c')).resolves.toBeDefined();
    await expect(ahead.take('new-dir')).resolves.toBeDefined();
    expect(started.filter((s) => s === 'c')).toHaveLength(1);
    expect(started).toContain('new-dir');
    await new Promise((r) => setTimeout(r, 10)); // a skipped failure is no unhandled rejection
  });
});
