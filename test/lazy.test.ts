/**
 * Lazy restore: a backup mounted read-only through build/strata-fuse, file data fetched on first
 * read into a content-addressed chunk cache. Needs root and /dev/fuse.
 *
 * Reads that may wait on the fetcher run in child processes (cat): the fetcher lives in this
 * process, and a read blocking here would hold a libuv threadpool thread the fetcher needs.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { cp, lstat, mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Strata } from '../src/index.js';
import { blobKey, type LayerDescriptor } from '../src/format/reader.js';
import { fetchToc } from '../src/store/blobs.js';
import { parseDigest, type Chunk, type Toc } from '../src/format/toc.js';
import { Fetcher } from '../src/restore/lazy/fetcher.js';
import { encodeIndex, viewChunks } from '../src/format/restore-index.js';
import { defaultFuseBinary, mountLazy, unmountPath, type LazyMount, type MountLazyOptions } from '../src/restore/lazy/mount.js';
import { buildView, type ViewNode } from '../src/format/view.js';
import { FileStore } from '../src/store/file.js';
import { IS_ROOT, need } from './helpers/caps.js';
import { ProbeStore } from './helpers/probe-store.js';
import { makeFidelityTree } from './helpers/fidelity.js';
import { diffTrees, summarize, type EntrySummary } from './helpers/tree.js';

const run = promisify(execFile);
// Under CI a missing strata-fuse binary fails the run rather than skipping it.
const RUN = need('fuse') && need('root') && need('fuse', existsSync(defaultFuseBinary()));
const MiB = 1024 * 1024;
const MANY = 40;

interface Backup {
  storeDir: string;
  layers: LayerDescriptor[];
  tocs: Toc[];
}

let work: string;
let src: string;
let upperSrc: string;
let before: Map<string, EntrySummary>;
let base: Backup;
let upper: Backup;

async function backup(dir: string, name: string): Promise<Backup> {
  const storeDir = join(work, `store-${name}`);
  const strata = new Strata({ home: join(work, `home-${name}`), store: 'file://' + storeDir });
  const handle = await strata.createBackup({ dir, name });
  const { manifest } = await strata.resolve(handle);
  const tocs = await Promise.all(manifest.layers.map((l) => fetchToc(strata.store, l)));
  return { storeDir, layers: manifest.layers, tocs };
}

/** A copy of a backup's store, for tests that damage it. */
async function copyStore(b: Backup, name: string): Promise<string> {
  const dir = join(work, `store-copy-${name}`);
  await cp(b.storeDir, dir, { recursive: true });
  return dir;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Flip one byte in the middle of a chunk's frame inside a file store's layer blob. */
async function flipByte(storeDir: string, layerDigest: string, c: { blobOffset: number; blobLength: number }): Promise<void> {
  const fh = await open(join(storeDir, 'blobs', 'sha256', parseDigest(layerDigest)), 'r+');
  try {
    const b = Buffer.alloc(1);
    const at = c.blobOffset + Math.floor(c.blobLength / 2);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0x5a;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

/** Mounts at or under dir, from /proc/self/mountinfo. */
function mountsOf(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && (m === dir || m.startsWith(dir + '/')));
}

async function catFile(p: string): Promise<Buffer> {
  const { stdout } = await run('cat', [p], { encoding: 'buffer', maxBuffer: 256 * MiB });
  return stdout;
}

/** Like catFile, but resolves with the error text instead of throwing. */
async function tryCat(p: string): Promise<{ ok: boolean; data?: Buffer; err?: string; ms: number }> {
  const t0 = performance.now();
  try {
    const data = await catFile(p);
    return { ok: true, data, ms: performance.now() - t0 };
  } catch (err) {
    return { ok: false, err: String((err as { stderr?: Buffer }).stderr ?? err), ms: performance.now() - t0 };
  }
}

function nodeAt(root: ViewNode, p: string): ViewNode {
  let n = root;
  for (const part of p.split('/')) n = n.children!.get(part)!;
  return n.linkTo ?? n;
}

function* walkFiles(n: ViewNode, prefix = ''): Generator<string> {
  for (const [name, child] of n.children ?? []) {
    const p = prefix ? `${prefix}/${name}` : name;
    if (child.entry.type === 'file') yield p;
    if (child.children) yield* walkFiles(child, p);
  }
}

function chunksOf(root: ViewNode, p: string): Chunk[] {
  return nodeAt(root, p).entry.chunks ?? [];
}

async function cacheFiles(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const fan of await readdir(dir)) {
    if (!/^[0-9a-f]{2}$/.test(fan)) continue;
    for (const name of await readdir(join(dir, fan))) {
      // Background readahead may evict while we look.
      const st = await stat(join(dir, fan, name)).catch(() => null);
      if (st) out.set(name, st.size);
    }
  }
  return out;
}

/**
 * Drop these files' pages from the page cache (fadvise DONTNEED through dd), so that their next
 * read reaches strata-fuse (it opens files with keep_cache). Only these: a global drop_caches
 * would slow whatever else runs on the machine (the other vitest worker) and is not needed, since
 * none of these tests needs dentries or inodes cold (each mount is new).
 */
async function dropPages(...paths: string[]): Promise<void> {
  for (const p of paths) await run('dd', [`if=${p}`, 'iflag=nocache', 'count=0', 'status=none']);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let mounts: LazyMount[] = [];
let fetchers: Fetcher[] = [];
let caseDir: string;
let caseNo = 0;

async function mount(o: Partial<MountLazyOptions> & Pick<MountLazyOptions, 'store' | 'layers'>, name = 'mnt'): Promise<LazyMount> {
  const mountpoint = join(caseDir, name);
  await mkdir(mountpoint, { recursive: true });
  const logs: string[] = [];
  const m = await mountLazy({
    mountpoint,
    runDir: join(caseDir, 'run'),
    cacheDir: join(caseDir, 'cache'),
    onLog: (l) => logs.push(l),
    ...o,
  });
  mounts.push(m);
  return m;
}

describe.skipIf(!RUN)('lazy restore through strata-fuse', () => {
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'strata-lazy-'));
    src = join(work, 'src');
    await makeFidelityTree(src);
    before = await summarize(src);
    base = await backup(src, 'base');
    upperSrc = join(work, 'upper');
    await mkdir(upperSrc);
    await writeFile(join(upperSrc, 'upper-a.txt'), 'from the upper layer\n');
    await writeFile(join(upperSrc, 'upper-b.bin'), Buffer.alloc(300 * 1024, 7));
    await mkdir(join(upperSrc, 'many'));
    for (let i = 0; i < MANY; i++) await writeFile(join(upperSrc, 'many', `f${i}`), `small file ${i}\n`.repeat(i + 1));
    upper = await backup(upperSrc, 'upper');
  });

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  beforeEach(async () => {
    caseDir = join(work, `case-${++caseNo}`);
    await mkdir(caseDir, { recursive: true });
  });

  afterEach(async () => {
    // Unmount whatever happened in the test, lazily if need be: never leave a stale mount.
    for (const m of mounts) {
      try {
        await m.unmount();
      } catch {
        await unmountPath(m.mountpoint);
      }
    }
    mounts = [];
    for (const f of fetchers) await f.close();
    fetchers = [];
  });

  it('serves the backup identical to the source, fetching only what is read', async () => {
    const store = new ProbeStore(new FileStore(base.storeDir));
    const view = buildView(base.tocs);
    const m = await mount({ store, layers: base.layers, view, fetcherOptions: { readahead: 0 } });
    // Mounting fetches no file data (the TOCs were read before, by the caller).
    expect(m.stats().bytesFetched).toBe(0);
    expect(store.gets).toEqual([]);
    await readdir(m.mountpoint);
    await lstat(join(m.mountpoint, 'data/random.bin'));
    expect(m.stats().bytesFetched).toBe(0);

    // Reading one file fetches exactly its chunks (one GET each: the kernel reads in order and
    // readahead is off here).
    const want = chunksOf(view, 'data/random.bin');
    expect(want.length).toBe(3);
    const data = await readFile(join(m.mountpoint, 'data/random.bin'));
    expect(sha(data)).toBe(sha(await readFile(join(src, 'data/random.bin'))));
    expect(m.stats().bytesFetched).toBe(want.reduce((n, c) => n + c.blobLength, 0));
    expect(new Set((await cacheFiles(join(caseDir, 'cache'))).keys())).toEqual(new Set(want.map((c) => parseDigest(c.digest))));
    expect(store.gets.length).toBe(want.length);

    // Then the whole tree, entry by entry.
    const after = await summarize(m.mountpoint);
    expect(diffTrees(before, after)).toEqual([]);
    // Not vacuous: holes, hard links, devices, xattrs and odd names are all in what was compared.
    expect(after.size).toBe(before.size);
    const entries = [...after.values()];
    expect(entries.filter((e) => e.extents !== undefined).length).toBeGreaterThanOrEqual(3);
    expect(entries.filter((e) => e.linkGroup !== undefined).length).toBeGreaterThanOrEqual(5);
    expect(new Set(entries.map((e) => e.type))).toEqual(new Set(['dir', 'file', 'symlink', 'fifo', 'char', 'block']));
    expect(after.get('xattrs')!.xattrs).toHaveProperty(['trusted.secret']);
    const st = await stat(m.mountpoint);
    expect(st.mode & 0o777).toBe((await stat(src)).mode & 0o777);
    // Every chunk fetched exactly once, none of them twice.
    const all = viewChunks(view);
    const s = m.stats();
    expect(s.chunksFetched).toBe(new Set(all.map((c) => c.chunk.digest)).size);
    // Read-only: writes are refused.
    await expect(writeFile(join(m.mountpoint, 'hello.txt'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    await expect(writeFile(join(m.mountpoint, 'new-file'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
  });

  describe('layers of a local store, read by strata-fuse itself', () => {
    it('serves the backup identical to the source without the fetcher: nothing fetched, nothing cached', async () => {
      // Two layers, both direct: the base and an upper stacked over it.
      const storeDir = await copyStore(base, 'direct');
      await cp(join(upper.storeDir, 'blobs'), join(storeDir, 'blobs'), { recursive: true });
      const layers = [...base.layers, ...upper.layers];
      const view = buildView([...base.tocs, ...upper.tocs]);
      const m = await mount({ store: new FileStore(storeDir), layers, view });
      expect([...m.direct].sort()).toEqual([0, 1]);
      const want = new Map(before);
      // The upper's entries (its root too: the topmost layer's root is the view's) over the base's.
      for (const [p, e] of await summarize(upperSrc)) want.set(p, e);
      const got = await summarize(m.mountpoint);
      for (const [p, e] of want) expect(got.get(p), p).toEqual(e);
      // Many readers of one multi-chunk file at once: one frame load each, every copy exact.
      await dropPages(join(m.mountpoint, 'data/random.bin'));
      const sums = await Promise.all(Array.from({ length: 8 }, () => catFile(join(m.mountpoint, 'data/random.bin')).then(sha)));
      expect(new Set(sums)).toEqual(new Set([sha(await readFile(join(src, 'data/random.bin')))]));
      const s = m.stats();
      expect(s.requests).toBe(0);
      expect(s.bytesFetched).toBe(0);
      expect((await cacheFiles(join(caseDir, 'cache'))).size).toBe(0);
    });

    it('answers xattrs from the index, and a view without any as a filesystem without xattrs', async () => {
      const getfattr = (path: string, name: string) =>
        run('getfattr', ['--only-values', '-n', name, path]).then(
          (r) => ({ value: r.stdout, error: '' }),
          (e: { stderr?: string }) => ({ value: '', error: e.stderr ?? String(e) }),
        );
      // A view with xattrs: values served, an absent name is ENODATA.
      const withX = await mount({ store: new FileStore(base.storeDir), layers: base.layers, view: buildView(base.tocs) }, 'with');
      expect(await getfattr(join(withX.mountpoint, 'xattrs'), 'user.comment')).toEqual({ value: 'a comment', error: '' });
      expect((await getfattr(join(withX.mountpoint, 'xattrs'), 'user.absent')).error).toMatch(/No such attribute/);
      // The upper tree holds none: every getxattr is refused by the kernel itself from the first
      // one on (no round trip per overlayfs probe), and listing shows none.
      const noX = await mount({ store: new FileStore(upper.storeDir), layers: upper.layers, view: buildView(upper.tocs) }, 'without');
      for (const f of ['upper-a.txt', 'many/f1', 'many'])
        expect((await getfattr(join(noX.mountpoint, f), 'user.absent')).error).toMatch(/Operation not supported/);
      expect((await run('getfattr', ['-d', '-m', '-', join(noX.mountpoint, 'upper-a.txt')])).stdout).toBe('');
      expect(await readFile(join(noX.mountpoint, 'upper-a.txt'), 'utf8')).toBe('from the upper layer\n');
    });

    it('fails a read of a corrupted frame with EIO, every time, and names the frame; the rest still reads', async () => {
      const storeDir = await copyStore(base, 'direct-corrupt');
      const view = buildView(base.tocs);
      const c = chunksOf(view, 'data/pattern.bin')[0]!;
      await flipByte(storeDir, base.layers[0]!.digest, c);
      const logs: string[] = [];
      const m = await mount({ store: new FileStore(storeDir), layers: base.layers, view, onLog: (l) => logs.push(l) });
      expect(m.direct.has(0)).toBe(true);
      for (let i = 0; i < 2; i++) {
        const r = await tryCat(join(m.mountpoint, 'data/pattern.bin'));
        expect(r.ok).toBe(false);
        expect(r.err).toMatch(/Input\/output error/);
      }
      expect(logs.join('\n')).toContain(parseDigest(c.digest));
      expect(logs.join('\n')).toMatch(/sha256 does not match|does not decompress/);
      expect((await catFile(join(m.mountpoint, 'hello.txt'))).toString()).toBe('hello, world\n');
      expect(m.stats().requests).toBe(0);
    });

    it('refuses to mount when a layer blob is missing, naming it', async () => {
      const storeDir = await copyStore(base, 'direct-missing');
      await rm(join(storeDir, 'blobs', 'sha256', parseDigest(base.layers[0]!.digest)));
      const err = await mount({ store: new FileStore(storeDir), layers: base.layers, view: buildView(base.tocs) }).then(
        () => null,
        (e: Error) => e,
      );
      expect(err?.message).toMatch(new RegExp(`layer 0 blob .*${parseDigest(base.layers[0]!.digest)}: No such file`));
      expect(mountsOf(join(caseDir, 'mnt'))).toEqual([]);
    });
  });

  it('answers other files while one read waits on a slow fetch', async () => {
    const store = new ProbeStore(new FileStore(base.storeDir));
    // One stack over two stores' layers: copy the upper blob into the base store's namespace.
    await cp(join(upper.storeDir, 'blobs'), join(base.storeDir, 'blobs'), { recursive: true });
    const layers = [...base.layers, ...upper.layers];
    const view = buildView([...base.tocs, ...upper.tocs]);
    const slow = chunksOf(view, 'data/random.bin')[0]!;
    const key0 = blobKey(base.layers[0]!.digest);
    // The slow fetch waits on a gate the test opens, not on a timer: the other reads below must
    // finish while it is still held, however slow the machine.
    let slowStarted = false;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    store.hook = async (key, r) => {
      if (key === key0 && r && r.start <= slow.blobOffset && slow.blobOffset < r.end) {
        slowStarted = true;
        await gate;
      }
    };
    const m = await mount({ store, layers, view, fetcherOptions: { readahead: 0 } });
    const mp = m.mountpoint;
    // Warm the chunk cache for two files, then drop their pages so that their reads reach FUSE.
    await catFile(join(mp, 'hello.txt'));
    await catFile(join(mp, 'links/original'));
    await dropPages(join(mp, 'hello.txt'), join(mp, 'links/original'));

    let slowDone = false;
    const slowRead = tryCat(join(mp, 'data/random.bin')).then((r) => {
      slowDone = true;
      return r;
    });
    try {
      for (let i = 0; i < 1500 && !slowStarted; i++) await sleep(20);
      expect(slowStarted).toBe(true);

      const timed = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
        const t0 = performance.now();
        const v = await f();
        return [v, performance.now() - t0];
      };
      const fresh = ['sticky', 'setgid-dir', 'empty-dir/inner/deeper', 'fifo', 'link-abs', 'xattrs', 'upper-a.txt'];
      const [, statMs] = await timed(() => Promise.all(fresh.map((p) => lstat(join(mp, p)))));
      const [hello, cachedMs] = await timed(() => catFile(join(mp, 'hello.txt')));
      const [links, linksMs] = await timed(() => catFile(join(mp, 'links/original')));
      const [upperA, otherLayerMs] = await timed(() => catFile(join(mp, 'upper-a.txt')));
      const [pattern, otherFileMs] = await timed(() => catFile(join(mp, 'data/pattern.bin')));
      expect(hello.toString()).toBe('hello, world\n');
      expect(sha(links)).toBe(sha(await readFile(join(src, 'links/original'))));
      expect(upperA.toString()).toBe('from the upper layer\n');
      expect(sha(pattern)).toBe(sha(await readFile(join(src, 'data/pattern.bin'))));
      // All of them answered while the slow read still waits: none queued behind it. The bound
      // only catches a read stuck on something (a few ms each here, a cat spawn included; 10 s
      // allows for a slow, loaded machine); the gate stays shut until after these checks.
      expect(slowDone).toBe(false);
      expect({ statMs: statMs < 10_000, cachedMs: cachedMs < 10_000, linksMs: linksMs < 10_000, otherLayerMs: otherLayerMs < 10_000, otherFileMs: otherFileMs < 10_000 }).toEqual({
        statMs: true,
        cachedMs: true,
        linksMs: true,
        otherLayerMs: true,
        otherFileMs: true,
      });
    } finally {
      release();
    }

    const r = await slowRead;
    expect(r.ok).toBe(true);
    expect(sha(r.data!)).toBe(sha(await readFile(join(src, 'data/random.bin'))));
  });

  it('fails a read of a corrupted chunk with EIO, never with wrong bytes', async () => {
    const storeDir = await copyStore(base, 'corrupt');
    const view = buildView(base.tocs);
    const c = chunksOf(view, 'data/pattern.bin')[0]!;
    await flipByte(storeDir, base.layers[0]!.digest, c);
    const logs: string[] = [];
    const m = await mount({ store: new FileStore(storeDir), direct: false, layers: base.layers, view, fetcherOptions: { readahead: 0, log: (l) => logs.push(l) } });
    const r = await tryCat(join(m.mountpoint, 'data/pattern.bin'));
    expect(r.ok).toBe(false);
    expect(r.err).toMatch(/Input\/output error/);
    expect(existsSync(m.fetcher.cache.path(c.digest))).toBe(false);
    expect(logs.join('\n')).toMatch(/digest|decompress/);
    expect(m.stats().errors).toBeGreaterThan(0);
    // The rest of the backup is still readable.
    expect((await catFile(join(m.mountpoint, 'hello.txt'))).toString()).toBe('hello, world\n');
  });

  it('turns a store outage into EIO after the deadline, and recovers without a remount', async () => {
    const store = new ProbeStore(new FileStore(base.storeDir));
    const view = buildView(base.tocs);
    const logs: string[] = [];
    // A deadline far below the 30 s default, so that the test tells them apart, yet long enough
    // (as is the stall timeout) for the recovery reads below to fetch on a slow, loaded machine.
    const m = await mount({
      store,
      layers: base.layers,
      view,
      fetcherOptions: { readahead: 0, deadlineMs: 3000, stallTimeoutMs: 1000, backoffMs: 50, attempts: 3, log: (l) => logs.push(l) },
    });
    const mp = m.mountpoint;
    // Failing outright.
    store.hook = () => {
      throw new Error('store unreachable');
    };
    const a = await tryCat(join(mp, 'hello.txt'));
    expect(a.ok).toBe(false);
    expect(a.err).toMatch(/Input\/output error/);
    // Within the 3 s deadline plus slack for a loaded machine; the 30 s default would not be.
    expect(a.ms).toBeLessThan(10_000);
    // Hanging.
    store.hook = () => new Promise<void>(() => undefined);
    const b = await tryCat(join(mp, 'data/pattern.bin'));
    expect(b.ok).toBe(false);
    expect(b.err).toMatch(/Input\/output error/);
    expect(b.ms).toBeGreaterThan(2900);
    expect(b.ms).toBeLessThan(10_000);
    expect(logs.join('\n')).toMatch(new RegExp(`${blobKey(base.layers[0]!.digest)} bytes \\d+-\\d+`));
    // Back again: the same mount reads.
    store.hook = undefined;
    expect((await catFile(join(mp, 'hello.txt'))).toString()).toBe('hello, world\n');
    expect(sha(await catFile(join(mp, 'data/pattern.bin')))).toBe(sha(await readFile(join(src, 'data/pattern.bin'))));
  });

  it('keeps the cache within its budget across reads of more data than it holds', async () => {
    const budget = 10 * MiB;
    const view = buildView(base.tocs);
    const m = await mount({ store: new FileStore(base.storeDir), direct: false, layers: base.layers, view, cacheBytes: budget });
    const files = ['data/random.bin', 'data/pattern.bin', 'sparse', 'hello.txt'];
    const sums = new Map<string, string>();
    for (const f of files) sums.set(f, sha(await readFile(join(src, f))));
    for (let round = 0; round < 3; round++) {
      for (const f of files) {
        expect(sha(await catFile(join(m.mountpoint, f)))).toBe(sums.get(f));
        const onDisk = [...(await cacheFiles(join(caseDir, 'cache'))).values()].reduce((n, s) => n + s, 0);
        expect(onDisk).toBeLessThanOrEqual(budget);
        expect(m.stats().cache.bytes).toBeLessThanOrEqual(budget);
      }
      await dropPages(...files.map((f) => join(m.mountpoint, f)));
    }
    expect(m.stats().cache.evictions).toBeGreaterThan(0);
    // Reads served straight from the cache reach the LRU as touch notes (flushed once a second;
    // up to 10 s allowed for a loaded machine, the loop ends at the first one).
    for (let i = 0; i < 100 && m.stats().touches === 0; i++) await sleep(100);
    expect(m.stats().touches).toBeGreaterThan(0);
  });

  it('two mounts sharing one cache and fetcher fetch each chunk once', async () => {
    const store = new ProbeStore(new FileStore(base.storeDir));
    const view = buildView(base.tocs);
    const f = await Fetcher.start({ socketPath: join(caseDir, 'fetch.sock'), cacheDir: join(caseDir, 'cache'), cacheBytes: 256 * MiB, readahead: 0 });
    fetchers.push(f);
    const m1 = await mount({ store, layers: base.layers, view, fetcher: f }, 'one');
    const m2 = await mount({ store, layers: base.layers, tocs: base.tocs, fetcher: f }, 'two');
    const files = ['data/random.bin', 'data/pattern.bin', 'hello.txt', 'links/second', 'sparse'];
    // Both mounts read the same files at the same time.
    const reads = await Promise.all(files.flatMap((p) => [catFile(join(m1.mountpoint, p)), catFile(join(m2.mountpoint, p))]));
    for (let i = 0; i < files.length; i++) {
      const want = sha(await readFile(join(src, files[i]!)));
      expect(sha(reads[2 * i]!)).toBe(want);
      expect(sha(reads[2 * i + 1]!)).toBe(want);
    }
    const chunks = files.flatMap((p) => chunksOf(view, p));
    for (const c of chunks) {
      const covering = store.gets.filter((g) => g.start <= c.blobOffset && c.blobOffset + c.blobLength <= g.end);
      expect(covering.length).toBe(1);
    }
    expect(f.stats().chunksFetched).toBe(new Set(chunks.map((c) => c.digest)).size);
  });

  describe('the fetcher and the worker threads', () => {
    it('keeps serving cached data when the fetcher dies, and picks up a restarted one', async () => {
      const store = new FileStore(base.storeDir);
      const view = buildView(base.tocs);
      const m = await mount({ store, direct: false, layers: base.layers, view, fetcherOptions: { readahead: 0 } });
      const mp = m.mountpoint;
      await catFile(join(mp, 'hello.txt'));
      await dropPages(join(mp, 'hello.txt'));
      await m.fetcher.close();
      // Cached: still served. Not cached: EIO at once, no waiting for a timeout.
      expect((await catFile(join(mp, 'hello.txt'))).toString()).toBe('hello, world\n');
      const r = await tryCat(join(mp, 'data/pattern.bin'));
      expect(r.ok).toBe(false);
      expect(r.err).toMatch(/Input\/output error/);
      // Waiting on the dead fetcher would cost the 30 s deadline plus a reconnect (~35 s); an
      // immediate EIO takes milliseconds. 10 s leaves room for a slow, loaded machine.
      expect(r.ms).toBeLessThan(10_000);
      // A new fetcher on the same socket and cache: the next miss reconnects.
      const f2 = await Fetcher.start({ socketPath: m.fetcher.socketPath, cacheDir: m.fetcher.cache.dir, cacheBytes: 256 * MiB });
      fetchers.push(f2);
      f2.register(store, base.layers, viewChunks(view));
      expect(f2.stats().cache.entries).toBe(1); // hello.txt's chunk, found by the scan
      expect(sha(await catFile(join(mp, 'data/pattern.bin')))).toBe(sha(await readFile(join(src, 'data/pattern.bin'))));
    });

    it('serves metadata while more reads than libfuse\'s default thread cap wait on misses', async () => {
      const store = new ProbeStore(new FileStore(upper.storeDir));
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      store.hook = () => gate;
      // The reads are held on the gate for as long as the test needs: no deadline may answer them
      // EIO first (the default 30 s could pass on a slow machine before all 40 are in).
      const m = await mount({ store, layers: upper.layers, tocs: upper.tocs, fetcherOptions: { readahead: 0, maxGap: 0, deadlineMs: 600_000 } });
      const mp = m.mountpoint;
      const names = Array.from({ length: MANY }, (_, i) => `many/f${i}`);
      await Promise.all(names.map((n) => lstat(join(mp, n))));
      const reads = names.map((n) => tryCat(join(mp, n)));
      try {
        // Every read is blocked in its own worker thread once the fetcher has heard of all of them
        // (40 cat processes to start: up to 30 s on a loaded machine).
        for (let i = 0; i < 1500 && m.stats().misses < MANY; i++) await sleep(20);
        expect(m.stats().misses).toBe(MANY);
        // Metadata answers while every data read is still held: a lookup blocked behind them
        // would wait for the gate, which opens only after this check. Milliseconds here; the
        // bound leaves room for a loaded machine (and a blocked lookup fails it, not the suite).
        const meta = (async () => {
          await lstat(join(mp, 'upper-b.bin'));
          await readdir(mp);
          return true;
        })();
        expect(await Promise.race([meta, sleep(10_000).then(() => false)]), 'metadata waited on the held data reads').toBe(true);
      } finally {
        release();
      }
      const done = await Promise.all(reads);
      done.forEach((r, i) => expect(r.data?.toString()).toBe(`small file ${i}\n`.repeat(i + 1)));
    });

    it('hydrates every chunk in the background, behind on-demand reads', async () => {
      const store = new ProbeStore(new FileStore(base.storeDir));
      // Every GET takes 600 ms: the hydration (10 GETs through its one slot) lasts ~6 s, longer
      // than the read below may take on a loaded machine (5 s), so "not hydrated yet when the
      // read is done" tells a read that jumped the queue from one that waited its turn.
      store.hook = () => sleep(600);
      const view = buildView(base.tocs);
      const m = await mount({ store, layers: base.layers, view, fetcherOptions: { readahead: 0, concurrency: 2, reservedSlots: 1, maxSpan: 16 * 1024 } });
      const all = viewChunks(view);
      let hydrated = false;
      const hydrating = m.hydrate({ priority: 'low' }).then((r) => {
        hydrated = true;
        return r;
      });
      await sleep(200);
      // A one-chunk file hydration has not reached yet: read now, it must not wait its turn.
      const files = [...walkFiles(view)].filter((p) => chunksOf(view, p).length === 1 && /^[\x20-\x7e]+$/.test(p));
      const path = files.reverse().find((p) => !m.fetcher.cache.has(chunksOf(view, p)[0]!.digest))!;
      expect(path).toBeDefined();
      const chunk = chunksOf(view, path)[0]!;
      // GETs issued before the fetcher heard of the read (hydration goes on meanwhile, one GET
      // at a time, however long the cat takes to start).
      let getsBefore = -1;
      const off = m.fetcher.onAccess((hex) => {
        if (getsBefore < 0 && hex === parseDigest(chunk.digest)) getsBefore = store.gets.length;
      });
      const t0 = performance.now();
      const data = await catFile(join(m.mountpoint, path));
      const readMs = performance.now() - t0;
      off();
      expect(sha(data)).toBe(sha(await readFile(join(src, path))));
      // It jumped the queue: the GET that brought its chunk is the one issued as the request
      // arrived (the reserved slot is free), give or take one hydration GET issued or in flight
      // around that moment; waiting its turn would put the rest of the hydration before it (the
      // file is the last one-chunk file, near the end of the blob, which hydration follows).
      expect(getsBefore).toBeGreaterThanOrEqual(0);
      const covering = store.gets.findIndex((g) => g.start <= chunk.blobOffset && chunk.blobOffset + chunk.blobLength <= g.end);
      expect(covering, `GET #${covering} brought the chunk, ${getsBefore} GETs were issued before the request`).toBeGreaterThanOrEqual(getsBefore - 1);
      expect(covering).toBeLessThanOrEqual(getsBefore + 1);
      // Time: one 600 ms GET plus a cat spawn; 5 s leaves room for a loaded machine.
      expect(readMs).toBeLessThan(5000);
      expect(hydrated).toBe(false);
      const h = await hydrating;
      expect(h.failed).toBe(0);
      expect(h.chunks).toBe(new Set(all.map((c) => c.chunk.digest)).size);
      for (const c of all) expect(m.fetcher.cache.has(c.chunk.digest)).toBe(true);
      // Everything is local now: a full walk fetches nothing more.
      const fetched = m.stats().bytesFetched;
      expect(diffTrees(before, await summarize(m.mountpoint))).toEqual([]);
      expect(m.stats().bytesFetched).toBe(fetched);
    });

    it('unmounts cleanly on SIGTERM', async () => {
      const m = await mount({ store: new FileStore(base.storeDir), layers: base.layers, tocs: base.tocs });
      const parentDev = (await stat(caseDir)).dev;
      expect((await stat(m.mountpoint)).dev).not.toBe(parentDev);
      const exited = new Promise<number | null>((r) => m.child.once('exit', (code) => r(code)));
      m.child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect((await stat(m.mountpoint)).dev).toBe(parentDev);
      expect((await run('grep', ['-c', m.mountpoint, '/proc/self/mounts']).catch((e: { stdout: string }) => e)).stdout.trim()).toBe('0');
    });

    it('refuses a damaged index with a clear message and mounts nothing', async () => {
      const idx = join(caseDir, 'bad.index');
      const mp = join(caseDir, 'mnt');
      await mkdir(mp);
      const cache = join(caseDir, 'cache');
      await mkdir(cache);
      for (const [bytes, msg] of [
        [Buffer.from('not an index at all, but long enough to hold a header: '.repeat(3)), /not a strata index/],
        [Buffer.alloc(10), /too short/],
      ] as Array<[Buffer, RegExp]>) {
        await writeFile(idx, bytes);
        const r = await run(defaultFuseBinary(), ['--index', idx, '--cache', cache, '--socket', join(caseDir, 's'), '--foreground', mp]).catch((e: { code: number; stderr: string }) => e);
        expect((r as { code: number }).code).toBe(1);
        expect((r as { stderr: string }).stderr).toMatch(msg);
      }
      // A truncated real index.
      const good = buildView(base.tocs);
      const full = encodeIndex(good, base.layers);
      await writeFile(idx, full.subarray(0, full.length - 100));
      const r = await run(defaultFuseBinary(), ['--index', idx, '--cache', cache, '--socket', join(caseDir, 's'), '--foreground', mp]).catch((e: { code: number; stderr: string }) => e);
      expect((r as { stderr: string }).stderr).toMatch(/truncated or inconsistent/);
      expect((await stat(mp)).dev).toBe((await stat(caseDir)).dev);
    });
  });
});

if (!RUN && IS_ROOT) {
  describe('lazy restore', () => {
    it.skip('needs build/strata-fuse (make build/strata-fuse)', () => undefined);
  });
}
