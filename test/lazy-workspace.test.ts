/**
 * Lazy workspaces end to end (issue 4): restore returns before any file data is fetched; forks
 * share one fetcher and cache and fetch each chunk once; background hydration makes a workspace
 * fully local; a dead server or daemon gives errors, not hangs, and unmount + restore bring the
 * workspace back with its unsaved changes.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Strata, type BackupHandle } from '../src/index.js';
import { need } from './helpers/caps.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { makeBaseTree, unmountUnder } from './helpers/workspace.js';

const RUN = need('root') && need('fuse');
let work: string;
let n = 0;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-lazyws-'));
  execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: join(__dirname, '..') }); // the daemon runs from dist/
});
afterEach(() => {
  if (work) unmountUnder(work);
});
afterAll(async () => {
  if (work) {
    unmountUnder(work);
    await rm(work, { recursive: true, force: true });
  }
});

async function setup(opts: { hydrate?: boolean } = {}): Promise<{ strata: Strata; base: BackupHandle; dir: (s: string) => string; src: string }> {
  const root = join(work, `case-${++n}`);
  const strata = new Strata({ home: join(root, 'home'), mode: 'lazy', ...opts });
  const src = join(root, 'src');
  await makeBaseTree(src);
  const base = await strata.createBackup({ dir: src });
  return { strata, base, dir: (s) => join(root, s), src };
}

async function readAll(dir: string): Promise<number> {
  let bytes = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) bytes += (await readFile(join(e.parentPath, e.name))).length;
  }
  return bytes;
}

const lazyOf = async (s: Strata, dir: string) => (await s.status(dir))[0]!.lazy!;

describe.runIf(RUN)('lazy workspaces', () => {
  it('returns before fetching any file data, then fetches only what is read', async () => {
    const c = await setup({ hydrate: false });
    const ws = c.dir('ws');
    const r = await c.strata.restoreBackup(c.base, { dir: ws });
    expect(r.mode).toBe('lazy');
    expect((await lazyOf(c.strata, ws)).fetcher!.bytesFetched).toBe(0);
    // Metadata answers without data.
    expect((await readdir(ws)).sort()).toContain('big.bin');
    expect((await lazyOf(c.strata, ws)).fetcher!.bytesFetched).toBe(0);
    expect(await readFile(join(ws, 'a.txt'), 'utf8')).toBe('alpha\n');
    const after = (await lazyOf(c.strata, ws)).fetcher!;
    expect(after.bytesFetched).toBeGreaterThan(0);
    // Far less than the 6 MiB file it did not read.
    expect(after.bytesFetched).toBeLessThan(3 * 1024 * 1024);
    expect(diffTrees(await summarize(c.src), await summarize(ws))).toEqual([]);
  });

  it('forks share one cache: each chunk is fetched once', async () => {
    const c = await setup({ hydrate: false });
    const forks = [c.dir('f1'), c.dir('f2'), c.dir('f3')];
    for (const f of forks) await c.strata.restoreBackup(c.base, { dir: f });
    for (const f of forks) await readAll(f);
    const st = await lazyOf(c.strata, forks[0]!);
    expect(st.cached).toBe(st.chunks);
    expect(st.fetcher!.chunksFetched).toBe(st.chunks);
    await writeFile(join(forks[1]!, 'own.txt'), 'fork two only');
    await expect(readFile(join(forks[0]!, 'own.txt'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('hydrates in the background until the workspace is fully local', async () => {
    const c = await setup({ hydrate: true });
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    let st = await lazyOf(c.strata, ws);
    for (let i = 0; i < 200 && st.cached < st.chunks; i++) {
      await new Promise((r) => setTimeout(r, 100));
      st = await lazyOf(c.strata, ws);
    }
    expect(st.chunks).toBeGreaterThan(0);
    expect(st.cached).toBe(st.chunks);
    expect(st.errors).toEqual([]);
  });

  it.each(['strata-fuse', 'daemon'])('when the %s process is killed: errors, not hangs; unmount and restore recover the upper', async (victim) => {
    const c = await setup({ hydrate: false });
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    await writeFile(join(ws, 'unsaved.txt'), 'keep me');
    const pattern = victim === 'daemon' ? `daemon.js ${c.strata.home}` : `strata-fuse.*${c.strata.home}`;
    execFileSync('pkill', ['-9', '-f', pattern]);
    await new Promise((r) => setTimeout(r, 300));
    // A read of data never fetched fails at once instead of hanging.
    const t0 = Date.now();
    await expect(readFile(join(ws, 'big.bin'))).rejects.toThrow();
    expect(Date.now() - t0).toBeLessThan(10_000);
    await c.strata.unmount(ws);
    const r = await c.strata.restoreBackup(c.base, { dir: ws });
    expect(r.recovered).toBe(true);
    expect(await readFile(join(ws, 'unsaved.txt'), 'utf8')).toBe('keep me');
    expect((await readFile(join(ws, 'big.bin'))).length).toBe(6 * 1024 * 1024);
    await c.strata.unmount(ws, { discard: true });
  });
});
