/**
 * Lazy workspaces end to end (issue 4): restore returns before any file data is fetched; forks
 * share one fetcher and cache and fetch each chunk once; background hydration makes a workspace
 * fully local; a dead server or daemon gives errors, not hangs, and unmount + restore bring the
 * workspace back with its unsaved changes.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Strata, type BackupHandle } from '../src/index.js';
import { assertBuilt } from './helpers/built.js';
import { need } from './helpers/caps.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { makeBaseTree, unmountUnder } from './helpers/workspace.js';

const RUN = need('root') && need('fuse');
let work: string;
let n = 0;

beforeAll(async () => {
  assertBuilt(); // the daemon runs from dist/ (make build)
  work = await mkdtemp(join(tmpdir(), 'strata-lazyws-'));
});
afterEach(() => {
  if (work) unmountUnder(work);
});
afterAll(async () => {
  if (work) {
    unmountUnder(work);
    // A lazy daemon may still write into its home for a few seconds after its last unmount (its
    // log, a cache file in flight): retry the removal (ENOTEMPTY) for up to ~10 s.
    await rm(work, { recursive: true, force: true, maxRetries: 8, retryDelay: 250 });
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
/** The status once the host's daemon answers it (on a cold host, status answers from files first). */
async function daemonLazyOf(s: Strata, dir: string): Promise<Awaited<ReturnType<typeof lazyOf>>> {
  for (let i = 0; ; i++) {
    const st = await lazyOf(s, dir);
    if (st.fetcher || i >= 200) return st;
    await new Promise((r) => setTimeout(r, 50));
  }
}

function pidsOf(pattern: string): number[] {
  try {
    return execFileSync('pgrep', ['-f', pattern], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

/** Wait until every pid has exited (gone, or a zombie nobody reaped): bounded, then an error. */
async function untilGone(pids: number[], ms = 30_000): Promise<void> {
  const alive = (pid: number): boolean => {
    try {
      // The state is the field after the parenthesised command name.
      return !/\)\s+Z\s/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  const t0 = Date.now();
  while (pids.some(alive)) {
    if (Date.now() - t0 > ms) throw new Error(`processes ${pids.filter(alive).join(', ')} still running ${ms} ms after SIGKILL`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Run with the given environment for the daemons started meanwhile (they inherit ours).
 * STRATA_DIRECT=0: layers of a local store go through the fetcher and its cache, as an s3://
 * store's do, so these tests see the fetcher's behaviour on a file:// store.
 */
async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(old)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}
const viaFetcher = { STRATA_DIRECT: '0' };

describe.runIf(RUN)('lazy workspaces', () => {
  it('reads a local store\'s layers in strata-fuse itself: fully local at once, nothing fetched or cached', async () => {
    const c = await setup({ hydrate: true });
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    expect(diffTrees(await summarize(c.src), await summarize(ws))).toEqual([]);
    // Before its daemon answers, and once it does: all local.
    const early = await lazyOf(c.strata, ws);
    expect(early.cached).toBe(early.chunks);
    const st = await daemonLazyOf(c.strata, ws);
    expect(st.chunks).toBeGreaterThan(0);
    expect(st.cached).toBe(st.chunks);
    expect(st.fetcher!.bytesFetched).toBe(0);
    expect(st.fetcher!.misses).toBe(0);
    expect(st.fetcher!.cache.entries).toBe(0);
    expect(st.errors).toEqual([]);
  });

  it('returns before fetching any file data, then fetches only what is read', () => withEnv(viaFetcher, async () => {
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
  }));

  it('forks share one cache: each chunk is fetched once', () => withEnv(viaFetcher, async () => {
    const c = await setup({ hydrate: false });
    const forks = [c.dir('f1'), c.dir('f2'), c.dir('f3')];
    for (const f of forks) await c.strata.restoreBackup(c.base, { dir: f });
    for (const f of forks) await readAll(f);
    const st = await lazyOf(c.strata, forks[0]!);
    expect(st.cached).toBe(st.chunks);
    expect(st.fetcher!.chunksFetched).toBe(st.chunks);
    await writeFile(join(forks[1]!, 'own.txt'), 'fork two only');
    await expect(readFile(join(forks[0]!, 'own.txt'))).rejects.toMatchObject({ code: 'ENOENT' });
  }));

  it('hydrates in the background until the workspace is fully local', () => withEnv(viaFetcher, async () => {
    const c = await setup({ hydrate: true });
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    let st = await lazyOf(c.strata, ws);
    // The budget is for a slow, loaded machine (a few seconds here); the loop ends once local.
    for (let i = 0; i < 600 && st.cached < st.chunks; i++) {
      await new Promise((r) => setTimeout(r, 100));
      st = await lazyOf(c.strata, ws);
    }
    expect(st.chunks).toBeGreaterThan(0);
    expect(st.cached).toBe(st.chunks);
    expect(st.errors).toEqual([]);
    expect(st.fetcher!.bytesFetched).toBeGreaterThan(0);
  }));

  it('records the frames read first; the next backup stores them as its prefetch record (no data moved); a restore fetches them first', async () => {
    // The window must hold both reads below on a slow machine.
    process.env.STRATA_PRIORITY_WINDOW_MS = '3000';
    try {
      const c = await setup({ hydrate: false });
      const ws = c.dir('ws');
      await c.strata.restoreBackup(c.base, { dir: ws });
      // The startup workload: two files, read in this order.
      expect(await readFile(join(ws, 'dir1/sub/z'), 'utf8')).toBe('z');
      expect((await readFile(join(ws, 'big.bin'))).length).toBe(6 * 1024 * 1024);
      const rec = join(c.strata.home, 'workspaces');
      const [id] = await readdir(rec);
      // first-reads.json is written when the window closes.
      let reads: { layers: string[]; refs: Array<[number, number, number]> } | undefined;
      for (let i = 0; i < 300 && !reads; i++) {
        await new Promise((r) => setTimeout(r, 100));
        reads = JSON.parse(await readFile(join(rec, id!, 'first-reads.json'), 'utf8').catch(() => 'null')) ?? undefined;
      }
      const baseInfo = await c.strata.getBackup(c.base.id);
      const { fetchToc } = await import('../src/store/blobs.js');
      const baseToc = await fetchToc(c.strata.store, baseInfo.layers[0]!);
      const framesOf = (p: string) => baseToc.entries.find((e) => e.path === p)!.chunks!.map((k) => [0, k.blobOffset, k.blobLength]);
      // In reading order: z's frame, then big.bin's.
      expect(reads!.layers).toEqual([baseInfo.layers[0]!.digest]);
      expect(reads!.refs).toEqual([...framesOf('dir1/sub/z'), ...framesOf('big.bin')]);

      await writeFile(join(ws, 'b.txt'), 'changed\n');
      const h = await c.strata.createBackup({ dir: ws });
      const info = await c.strata.getBackup(h.id);
      const { manifest } = await c.strata.resolve(h);
      expect(manifest.prefetch, 'the backup names a prefetch record').toBeDefined();
      // No data moved: the new layer holds the change only (a few kB), not the files read.
      const toc = await fetchToc(c.strata.store, info.layers[1]!);
      expect(toc.entries.filter((e) => e.type === 'file').map((e) => e.path)).toEqual(['b.txt']);
      expect(info.layers[1]!.size).toBeLessThan(16 * 1024);
      const { fetchPrefetch } = await import('../src/store/blobs.js');
      const { decodePrefetch } = await import('../src/format/prefetch.js');
      const refs = decodePrefetch(await fetchPrefetch(c.strata.store, manifest.prefetch!, manifest.layers), manifest.layers.map((l) => l.size));
      expect(refs.map((r) => [r.layer, r.blobOffset, r.blobLength])).toEqual(reads!.refs);
      // A backup that read nothing new keeps the record.
      await writeFile(join(ws, 'c.txt'), 'more\n');
      const h2 = await c.strata.createBackup({ dir: ws });
      expect((await c.strata.resolve(h2)).manifest.prefetch).toEqual(manifest.prefetch);

      // A lazy restore of it on another host (its own home, daemon and empty cache), fetching
      // through the fetcher as from a remote store, takes those frames before anything is read,
      // in few requests, and nothing else.
      const other = new Strata({ home: c.dir('other-home'), store: c.strata.store, mode: 'lazy', hydrate: false });
      const again = c.dir('again');
      await withEnv(viaFetcher, () => other.restoreBackup(h2, { dir: again }));
      const want = 6 * 1024 * 1024;
      let st = await lazyOf(other, again);
      for (let i = 0; i < 400 && st.fetcher!.bytesFetched < want; i++) {
        await new Promise((r) => setTimeout(r, 50));
        st = await lazyOf(other, again);
      }
      expect(st.fetcher!.bytesFetched).toBeGreaterThanOrEqual(want);
      expect(st.fetcher!.bytesFetched).toBeLessThan(want + 256 * 1024);
      expect(st.fetcher!.misses).toBe(0);
      expect(diffTrees(await summarize(ws), await summarize(again))).toEqual([]);
      await other.unmount(again, { discard: true });
    } finally {
      delete process.env.STRATA_PRIORITY_WINDOW_MS;
    }
  });

  it('a daemon started for a restore that never mounts exits on its own', async () => {
    const home = join(work, `idle-home-${++n}`);
    const { ensureDaemon } = await import('../src/restore/lazy/client.js');
    await ensureDaemon(home, { STRATA_DAEMON_IDLE_MS: '300' });
    // A restore that fails before mounting (a bad reference, say) after starting the daemon early.
    await expect(new Strata({ home, mode: 'lazy' }).restoreBackup('no-such-backup', { dir: join(work, `idle-ws-${n}`) })).rejects.toMatchObject({ code: 'BACKUP_NOT_FOUND' });
    const pids = pidsOf(`daemon.js ${home}`);
    expect(pids.length).toBe(1);
    await untilGone(pids, 15_000);
    expect(await readFile(join(home, 'run', 'daemon.log'), 'utf8')).toMatch(/no mount within 300 ms/);
  });

  it('one daemon per home, however many start at once; a new one starts once it is gone', async () => {
    const home = join(work, `race-home-${++n}`);
    const script = fileURLToPath(new URL('../dist/restore/lazy/daemon.js', import.meta.url));
    const env = { ...process.env, STRATA_DAEMON_IDLE_MS: '4000' };
    await mkdir(join(home, 'run'), { recursive: true });
    const start = () => {
      const log = openSync(join(home, 'run', 'daemon.log'), 'a');
      const k = spawn(process.execPath, [script, home], { stdio: ['ignore', log, log], env });
      closeSync(log);
      return k;
    };
    // Started together, twice: exactly one may stay, the one its pid file names.
    for (let round = 0; round < 2; round++) {
      const kids = Array.from({ length: 6 }, start);
      const exited = kids.map((k) => new Promise<void>((res) => k.once('exit', () => res())));
      const alive = () => kids.filter((k) => k.exitCode === null && k.signalCode === null);
      for (let i = 0; i < 200 && alive().length > 1; i++) await new Promise((r) => setTimeout(r, 25));
      expect(alive().length).toBe(1);
      const pid = alive()[0]!.pid;
      expect(Number(await readFile(join(home, 'run', 'daemon.pid'), 'utf8'))).toBe(pid);
      // "pid ?": a loser that read the pid file before the winner had written it (round one).
      expect((await readFile(join(home, 'run', 'daemon.log'), 'utf8')).match(/another daemon \(pid (\d+|\?)\) serves/g)!.length).toBe(5 * (round + 1));
      // It serves, then leaves on its own (nothing mounted); the lock goes with it.
      const { daemonRequest } = await import('../src/restore/lazy/client.js');
      expect(await daemonRequest(home, { op: 'status' })).toMatchObject({ ok: true });
      await Promise.all(exited);
    }
  });

  it('a daemon whose only mount and adoption failed exits on its own too', async () => {
    const home = join(work, `idle-home-${++n}`);
    const { daemonRequest } = await import('../src/restore/lazy/client.js');
    const env = { STRATA_DAEMON_IDLE_MS: '300' };
    // Workspaces that do not exist: both requests are answered with an error.
    expect(await daemonRequest(home, { op: 'adopt', workspace: 'aaaaaaaaaaaa' }, { start: true, env })).toMatchObject({ ok: false });
    expect(await daemonRequest(home, { op: 'mount', workspace: 'bbbbbbbbbbbb', hydrate: false }, { start: true, env })).toMatchObject({ ok: false });
    const pids = pidsOf(`daemon.js ${home}`);
    expect(pids.length).toBe(1);
    await untilGone(pids, 15_000);
    expect(await readFile(join(home, 'run', 'daemon.log'), 'utf8')).toMatch(/no mount within 300 ms/);
  });

  it.each(['strata-fuse', 'daemon'])('when the %s process is killed: errors, not hangs; unmount and restore recover the upper', (victim) => withEnv(victim === 'daemon' ? viaFetcher : {}, async () => {
    // The daemon is killed while it hydrates, so cache writes are cut off midway: nothing it
    // left may be served with wrong bytes afterwards. (Through the fetcher: a view strata-fuse
    // serves alone outlives its daemon, below.)
    const c = await setup({ hydrate: victim === 'daemon' });
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    await writeFile(join(ws, 'unsaved.txt'), 'keep me');
    const pattern = victim === 'daemon' ? `daemon.js ${c.strata.home}` : `strata-fuse.*${c.strata.home}`;
    const pids = pidsOf(pattern);
    expect(pids.length, `no process matches ${pattern}`).toBeGreaterThan(0);
    execFileSync('pkill', ['-9', '-f', pattern]);
    await untilGone(pids);
    // A read of data never fetched fails at once instead of hanging.
    const t0 = Date.now();
    await expect(readFile(join(ws, 'big.bin'))).rejects.toThrow();
    expect(Date.now() - t0).toBeLessThan(10_000);
    await c.strata.unmount(ws);
    const r = await c.strata.restoreBackup(c.base, { dir: ws });
    expect(r.recovered).toBe(true);
    expect(await readFile(join(ws, 'unsaved.txt'), 'utf8')).toBe('keep me');
    expect((await readFile(join(ws, 'big.bin'))).length).toBe(6 * 1024 * 1024);
    // Every byte served after the crash matches the source.
    const want = await summarize(c.src);
    const got = await summarize(ws, { skip: (p) => p === 'unsaved.txt' });
    expect(diffTrees(want, got).filter((d) => !d.startsWith('"."'))).toEqual([]);
    await c.strata.unmount(ws, { discard: true });
  }));

  it('a view strata-fuse serves alone is mounted by the restore itself and outlives its daemon, which a new one adopts', async () => {
    const c = await setup({ hydrate: false });
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    // Not the daemon's child: started by this process, detached, recorded for adoption.
    const fuse = pidsOf(`strata-fuse.*${c.strata.home}`);
    expect(fuse).toHaveLength(1);
    const daemons = pidsOf(`daemon.js ${c.strata.home}`);
    expect(daemons).toHaveLength(1);
    expect(readFileSync(`/proc/${fuse[0]}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]).not.toBe(String(daemons[0]));
    expect((await lazyOf(c.strata, ws)).served).toBe(true);
    const mountId = (): string | undefined => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4]?.endsWith('/lower') && l.includes(c.strata.home))?.split(' ')[0];
    const before = mountId();
    expect(before).toBeDefined();
    // A reader holds a file open across the daemon's death.
    const fh = await open(join(ws, 'big.bin'), 'r');
    try {
      execFileSync('pkill', ['-9', '-f', `daemon.js ${c.strata.home}`]);
      await untilGone(daemons);
      const buf = Buffer.alloc(1024 * 1024);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 2 * 1024 * 1024);
      expect(bytesRead).toBe(buf.length);
      expect(buf).toEqual((await readFile(join(c.src, 'big.bin'))).subarray(2 * 1024 * 1024, 3 * 1024 * 1024));
    } finally {
      await fh.close();
    }
    // Asking for status starts a daemon, which adopts the view: same mount, same server.
    const st = await lazyOf(c.strata, ws);
    expect(st.served).toBe(true);
    expect(st.errors).toEqual([]);
    expect(pidsOf(`daemon.js ${c.strata.home}`).filter((p) => !daemons.includes(p))).toHaveLength(1);
    expect(pidsOf(`strata-fuse.*${c.strata.home}`)).toEqual(fuse);
    expect(mountId()).toBe(before);
    const want = await summarize(c.src);
    expect(diffTrees(want, await summarize(ws)).filter((d) => !d.startsWith('"."'))).toEqual([]);
    // The new daemon takes it down on unmount: server gone, record gone.
    await c.strata.unmount(ws, { discard: true });
    await untilGone(fuse, 10_000);
    expect(mountId()).toBeUndefined();
  });
});
