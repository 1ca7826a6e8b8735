/**
 * strata-fuse fetching an s3:// store's layers itself (issue 10): ranged GETs of presigned URLs
 * with libcurl into sparse mirrors in the cache directory, verified, with no fetcher and no
 * JavaScript on the path of a read. Against a real S3 server (s3rver) behind the fault proxy.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type BackupHandle, Strata } from '../src/index.js';
import { blobKey, layerKey } from '../src/format/reader.js';
import { encodePrefetch, type PrefetchRef } from '../src/format/prefetch.js';
import type { Toc } from '../src/format/toc.js';
import { buildView, findNode } from '../src/format/view.js';
import type { LayerDescriptor } from '../src/format/reader.js';
import { defaultFuseBinary, type LazyMount, mirrorPath, mountLazy, type MountLazyOptions, unmountPath } from '../src/restore/lazy/mount.js';
import { fetchIndex, fetchToc } from '../src/store/blobs.js';
import { decodeHead, type IndexDescriptor, type IndexHead, packIndex, WARM_PAGES, warmPages } from '../src/format/restore-index.js';
import { putManifest } from '../src/store/catalog.js';
import type { S3Store } from '../src/store/s3.js';
import { sys } from '../src/sys/native.js';
import { need } from './helpers/caps.js';
import { type Fault, type FaultProxy, type LogEntry, startFaultProxy } from './helpers/faultproxy.js';
import { prng } from './helpers/fidelity.js';
import { s3StoreFor, type S3TestServer, startS3Server } from './helpers/s3server.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { damagingPageOffset } from './helpers/tamper.js';
/** A GET of a blob: a layer (under its digest, or its staging key on S3) or an index. */
const isBlobKey = (k: string): boolean => /\/blobs\/(sha256|staging)\//.test(k);

const run = promisify(execFile);
const RUN = need('fuse') && need('root') && need('fuse', existsSync(defaultFuseBinary()));
const MiB = 1024 * 1024;

let work: string;
let s3: S3TestServer;
let proxy: FaultProxy;
let src: string;
let layers: LayerDescriptor[];
let tocs: Toc[];
let caseDir: string;
let caseNo = 0;
let mounts: LazyMount[] = [];

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
async function catFile(p: string): Promise<Buffer> {
  return (await run('cat', [p], { encoding: 'buffer', maxBuffer: 64 * MiB })).stdout as unknown as Buffer;
}
async function tryCat(p: string): Promise<{ ok: boolean; err?: string; ms: number }> {
  const t0 = performance.now();
  try {
    await catFile(p);
    return { ok: true, ms: performance.now() - t0 };
  } catch (err) {
    return { ok: false, err: String((err as { stderr?: Buffer }).stderr ?? err), ms: performance.now() - t0 };
  }
}
const store = (): S3Store => s3StoreFor(s3, { url: `${s3.url}/native`, endpoint: proxy.endpoint });

/** The GETs of layer blobs the proxy saw (strata-fuse's, since nothing else reads blobs here). */
const blobGets = (): number => proxy.log.filter((e) => e.op === 'GetObject' && isBlobKey(e.key)).length;

async function mount(o: Partial<MountLazyOptions> = {}, name = 'mnt', logs: string[] = []): Promise<LazyMount> {
  const mountpoint = join(caseDir, name);
  await mkdir(mountpoint, { recursive: true });
  const m = await mountLazy({
    store: store(),
    layers,
    tocs,
    mountpoint,
    runDir: join(caseDir, `run-${name}`),
    cacheDir: join(caseDir, 'cache'),
    // No readahead past a read's own GET unless a test asks: what is fetched is what is read.
    fetcherOptions: { deadlineMs: 3000, stallTimeoutMs: 1000, readahead: 0 },
    onLog: (l) => logs.push(l),
    ...o,
  });
  mounts.push(m);
  return m;
}

/** The data extents of the layer's mirror: what strata-fuse has fetched into it. */
async function extentsOf(mirror: string): Promise<Array<[number, number]>> {
  const fh = await open(mirror, 'r');
  try {
    return sys.dataExtents(fh.fd, layers[0]!.size);
  } finally {
    await fh.close();
  }
}

function frameOf(path: string): { blobOffset: number; blobLength: number; digest: string } {
  const n = findNode(buildView(tocs), path)!;
  return n.entry!.chunks![0]!;
}

describe.runIf(RUN)('strata-fuse fetching s3:// layers itself', () => {
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'strata-native-'));
    s3 = await startS3Server();
    proxy = await startFaultProxy({ upstream: s3.endpoint, s3rverDir: s3.dir });
    src = join(work, 'src');
    await mkdir(join(src, 'lib'), { recursive: true });
    await writeFile(join(src, 'big.bin'), prng(7, 9 * MiB + 123)); // three chunks
    for (let i = 0; i < 200; i++) await writeFile(join(src, 'lib', `m${i}.js`), `export const v${i} = ${i};\n`.repeat(20 + i));
    await writeFile(join(src, 'hello.txt'), 'hello, world\n');
    const strata = new Strata({ home: join(work, 'home'), store: s3StoreFor(s3, { url: `${s3.url}/native` }) });
    const h = await strata.createBackup({ dir: src });
    layers = (await strata.resolve(h)).manifest.layers;
    tocs = await Promise.all(layers.map((l) => fetchToc(strata.store, l)));
  });

  afterAll(async () => {
    await proxy?.close();
    await s3?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  beforeEach(async () => {
    caseDir = join(work, `case-${++caseNo}`);
    await mkdir(caseDir, { recursive: true });
    proxy.reset();
  });

  afterEach(async () => {
    for (const m of mounts) await m.unmount().catch(() => unmountPath(m.mountpoint));
    mounts = [];
  });

  it('serves the tree exactly, with its own ranged GETs of presigned URLs into a sparse mirror', async () => {
    const m = await mount();
    expect([...m.remote]).toEqual([0]);
    // Mounting fetched nothing.
    expect(blobGets()).toBe(0);
    expect((await catFile(join(m.mountpoint, 'hello.txt'))).toString()).toBe('hello, world\n');
    const gets = proxy.log.filter((e) => e.op === 'GetObject');
    expect(gets.length).toBeGreaterThan(0);
    // A partial mirror: far less than the 9 MiB file it did not read.
    const mirror = mirrorPath(join(caseDir, 'cache'), layers[0]!.digest);
    expect((await stat(mirror)).size).toBe(layers[0]!.size);
    expect((await stat(mirror)).blocks * 512).toBeLessThan(2 * MiB);
    expect(diffTrees(await summarize(src), await summarize(m.mountpoint))).toEqual([]);
    // No JavaScript on the path of any of those reads: the fetcher was never asked.
    expect(m.stats().requests).toBe(0);
    expect(m.stats().bytesFetched).toBe(0);
    // A second mount on the same host shares the mirror: nothing fetched again.
    const before = blobGets();
    const m2 = await mount({}, 'two');
    expect(sha(await catFile(join(m2.mountpoint, 'big.bin')))).toBe(sha(await readFile(join(src, 'big.bin'))));
    expect(blobGets()).toBe(before);
  });

  it('loads libcurl only to fetch: where it cannot be loaded, reads of remote layers are EIO with the reason, never a hang', async () => {
    // A libcurl.so.4 that is not a library, first on the loader's path for this strata-fuse.
    const libs = join(caseDir, 'libs');
    await mkdir(libs);
    await writeFile(join(libs, 'libcurl.so.4'), 'not an ELF object\n');
    const old = process.env.LD_LIBRARY_PATH;
    process.env.LD_LIBRARY_PATH = libs;
    const logs: string[] = [];
    let m: LazyMount;
    try {
      // It mounts (libcurl is not needed for that), and the metadata is all there.
      m = await mount({}, 'mnt', logs);
    } finally {
      if (old === undefined) delete process.env.LD_LIBRARY_PATH;
      else process.env.LD_LIBRARY_PATH = old;
    }
    expect((await stat(join(m.mountpoint, 'big.bin'))).size).toBe(9 * MiB + 123);
    const r = await tryCat(join(m.mountpoint, 'hello.txt'));
    if (process.env.DEBUG_GETS) console.log(JSON.stringify({ f, getStart, log: proxy.log.filter((e) => e.op === 'GetObject').map((e) => [e.key.slice(-20), e.range, e.bytesOut]) }));
    expect(r.ok).toBe(false);
    expect(r.err).toMatch(/Input\/output error/);
    expect(r.ms).toBeLessThan(3000);
    expect(blobGets()).toBe(0);
    expect(logs.join('\n')).toMatch(/cannot load libcurl/);
  });

  it('never serves corrupted bytes: a frame damaged in transit is EIO, then read right once the store is sound', async () => {
    const logs: string[] = [];
    const m = await mount({}, 'mnt', logs);
    const f = frameOf('hello.txt');
    // Every GET is damaged inside the frame: wherever it starts (the read's first GET up to 256 KiB
    // before the frame, its refetch at the frame's own 4 KiB block), one byte of the frame flips.
    const inFrame = (r: { headers: { range?: string } }): number | undefined => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(r.headers.range ?? '');
      return m && Number(m[1]) <= f.blobOffset && Number(m[2]) >= f.blobOffset + f.blobLength - 1 ? f.blobOffset - Number(m[1]) + 5 : undefined;
    };
    const starts = [Math.max(0, f.blobOffset - 256 * 1024), f.blobOffset].map((o) => o - (o % 4096));
    proxy.setRules(
      starts.map((s) => ({
        op: 'GetObject' as const,
        when: (r: { headers: { range?: string } }) => r.headers.range?.startsWith(`bytes=${s}-`) === true && inFrame(r) !== undefined,
        fault: { kind: 'corrupt' as const, phase: 'response' as const, at: f.blobOffset - s + 5 },
        times: 100,
      })),
    );
    const r = await tryCat(join(m.mountpoint, 'hello.txt'));
    expect(r.ok).toBe(false);
    expect(r.err).toMatch(/Input\/output error/);
    expect(proxy.fired).toBeGreaterThan(0);
    expect(logs.join('\n')).toMatch(/sha256 does not match|does not decompress/);
    expect(logs.join('\n')).toContain(f.digest.slice(7));
    proxy.setRules([]);
    expect((await catFile(join(m.mountpoint, 'hello.txt'))).toString()).toBe('hello, world\n');
  });

  it('a mirror torn by a crash is fetched again, never served', async () => {
    const m = await mount();
    expect((await catFile(join(m.mountpoint, 'lib/m3.js'))).length).toBeGreaterThan(0);
    await m.unmount();
    // Garbage over a frame the mirror holds, as a crash mid-write could leave it.
    const f = frameOf('lib/m3.js');
    const mirror = mirrorPath(join(caseDir, 'cache'), layers[0]!.digest);
    const fh = await open(mirror, 'r+');
    await fh.write(Buffer.alloc(f.blobLength, 0x5a), 0, f.blobLength, f.blobOffset);
    await fh.close();
    const again = await mount({}, 'again');
    const before = blobGets();
    expect(await readFile(join(again.mountpoint, 'lib/m3.js'))).toEqual(await readFile(join(src, 'lib/m3.js')));
    expect(blobGets()).toBeGreaterThan(before);
  });

  it('turns a store outage into EIO within the deadline, and recovers without a remount', async () => {
    const logs: string[] = [];
    const m = await mount({}, 'mnt', logs);
    proxy.setRules([{ op: 'GetObject', fault: { kind: 'status', status: 503, code: 'SlowDown' } }]);
    const r = await tryCat(join(m.mountpoint, 'lib/m9.js'));
    expect(r.ok).toBe(false);
    expect(r.err).toMatch(/Input\/output error/);
    // The 3 s deadline, not the 30 s default nor a hang; retried more than once meanwhile.
    expect(r.ms).toBeLessThan(10_000);
    expect(r.ms).toBeGreaterThan(2_000);
    expect(proxy.fired).toBeGreaterThan(1);
    expect(logs.join('\n')).toMatch(/HTTP 503.*gave up/);
    proxy.setRules([]);
    expect(await readFile(join(m.mountpoint, 'lib/m9.js'))).toEqual(await readFile(join(src, 'lib/m9.js')));
  });

  it.each([
    ['stalls', { kind: 'stall', ms: 60_000 }],
    ['resets', { kind: 'reset', phase: 'response', afterBytes: 100 }],
    ['returns short bodies', { kind: 'truncate', fraction: 0.5 }],
  ] as Array<[string, Fault]>)('a store that %s: retried, then EIO within the deadline; a passing fault is ridden out', async (_what, fault) => {
    const logs: string[] = [];
    const m = await mount({}, 'mnt', logs);
    proxy.setRules([{ op: 'GetObject', fault }]);
    const r = await tryCat(join(m.mountpoint, 'lib/m21.js'));
    expect(r.ok).toBe(false);
    expect(r.err).toMatch(/Input\/output error/);
    expect(r.ms).toBeLessThan(10_000);
    expect(proxy.fired).toBeGreaterThan(1);
    expect(logs.join('\n')).toMatch(/gave up after/);
    // The same fault on two GETs only: the read succeeds, retried.
    const fired = proxy.fired;
    proxy.setRules([{ op: 'GetObject', fault, times: 2 }]);
    expect(await readFile(join(m.mountpoint, 'lib/m23.js'))).toEqual(await readFile(join(src, 'lib/m23.js')));
    expect(proxy.fired - fired).toBe(2);
  });

  it('a kill -9 during hydration leaves nothing that can be served wrong', async () => {
    // Slow the link so the kill lands mid-hydration.
    proxy.throttle(2 * MiB);
    const m = await mount({ hydrate: true });
    const mirror = mirrorPath(join(caseDir, 'cache'), layers[0]!.digest);
    for (let i = 0; i < 200 && (await stat(mirror)).blocks * 512 < MiB; i++) await new Promise((r) => setTimeout(r, 20));
    m.child.kill('SIGKILL');
    await new Promise((r) => m.child.once('exit', r));
    proxy.throttle(null);
    const held = (await stat(mirror)).blocks * 512;
    expect(held).toBeGreaterThan(0);
    expect(held).toBeLessThan(layers[0]!.size);
    await m.unmount();
    const again = await mount({}, 'again');
    expect(diffTrees(await summarize(src), await summarize(again.mountpoint))).toEqual([]);
  });

  it('16 concurrent readers on 4 forks sharing the host cache fetch every byte once', async () => {
    // The default 30 s deadline: s3rver and the proxy share this test's event loop with 16 readers.
    const forks = await Promise.all(['f1', 'f2', 'f3', 'f4'].map((n) => mount({ fetcherOptions: { readahead: 0 } }, n)));
    const files = ['big.bin', 'hello.txt', ...Array.from({ length: 200 }, (_, i) => `lib/m${i}.js`)];
    const want = new Map(await Promise.all(files.map(async (f) => [f, sha(await readFile(join(src, f)))] as const)));
    // 4 readers per fork, each reading every file, in different orders. Readers are processes
    // (sha256sum): reads through this process's thread pool would starve s3rver and the proxy,
    // which serve the GETs from the same pool.
    await Promise.all(
      forks.flatMap((m, fi) =>
        [0, 1, 2, 3].map(async (k) => {
          const order = k % 2 ? [...files].reverse() : files;
          const at = ((fi + k) * 37) % files.length;
          const mine = [...order.slice(at), ...order.slice(0, at)];
          const { stdout } = await run('sha256sum', mine, { cwd: m.mountpoint, maxBuffer: 16 * MiB });
          const got = new Map(stdout.trim().split('\n').map((l) => [l.slice(66), l.slice(0, 64)] as [string, string]));
          for (const f of files) expect(got.get(f), f).toBe(want.get(f));
        }),
      ),
    );
    const fetched = proxy.log.filter((e) => e.op === 'GetObject' && isBlobKey(e.key)).reduce((n, e) => n + e.bytesOut, 0);
    // Everything was read, each byte fetched once (readahead past the files' frames: the TOC's few kB).
    expect(fetched).toBeGreaterThan(layers[0]!.size * 0.9);
    expect(fetched).toBeLessThanOrEqual(layers[0]!.size * 1.02);
  });

  it('readers waiting on one frame during an outage all get EIO within one deadline, not one each', async () => {
    const m = await mount();
    proxy.setRules([{ op: 'GetObject', fault: { kind: 'status', status: 503, code: 'SlowDown' } }]);
    // 8 readers of different pieces of big.bin's first 4 MiB frame (different pages, so the
    // kernel sends 8 requests that meet in strata-fuse on the same frame).
    const t0 = performance.now();
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        run('dd', [`if=${join(m.mountpoint, 'big.bin')}`, 'of=/dev/null', 'bs=128k', 'count=1', `skip=${i * 3}`, 'iflag=direct'], { encoding: 'utf8' }).then(
          () => 'ok',
          (e: { stderr?: string }) => String(e.stderr),
        ),
      ),
    );
    const ms = performance.now() - t0;
    expect(results.every((r) => /Input\/output error/.test(r))).toBe(true);
    // One 3 s deadline for all of them (they would take 8 x 3 s one after another).
    expect(ms).toBeLessThan(9_000);
  });

  it('a lazy workspace of an s3:// backup, through the restore daemon: URLs presigned by the restoring process, read and hydrated by strata-fuse', async () => {
    // The daemon opens the store from its URL and the environment, as in the field; here its
    // credentials are ones the store refuses (403), so every blob GET that works used a URL the
    // restore made with its own store: the daemon loads no AWS SDK before it mounts.
    const env = {
      STRATA_S3_ENDPOINT: proxy.endpoint,
      STRATA_S3_FORCE_PATH_STYLE: '1',
      AWS_ACCESS_KEY_ID: 'NOT-A-KEY-THE-STORE-KNOWS',
      AWS_SECRET_ACCESS_KEY: 'S3RVER',
      AWS_REGION: 'us-east-1',
    };
    const old = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
    Object.assign(process.env, env);
    const home = join(caseDir, 'home');
    const ws = join(caseDir, 'ws');
    const s = new Strata({ home, store: store(), mode: 'lazy', hydrate: true });
    try {
      const h = (await s.listBackups())[0]!;
      await s.restoreBackup(h, { dir: ws });
      expect(diffTrees(await summarize(src), await summarize(ws))).toEqual([]);
      let st = (await s.status(ws))[0]!.lazy!;
      for (let i = 0; i < 300 && st.cached < st.chunks; i++) {
        await new Promise((r) => setTimeout(r, 50));
        st = (await s.status(ws))[0]!.lazy!;
      }
      expect(st.chunks).toBeGreaterThan(0);
      expect(st.cached).toBe(st.chunks);
      expect(st.errors).toEqual([]);
      // Not one read went through the daemon's fetcher (asked once the daemon answers); the blob
      // GETs were presigned URLs, and none was refused (a URL signed with the daemon's key would have been).
      for (let i = 0; i < 100 && !st.fetcher; i++) {
        await new Promise((r) => setTimeout(r, 50));
        st = (await s.status(ws))[0]!.lazy!;
      }
      expect(st.fetcher!.requests).toBe(0);
      expect(blobGets()).toBeGreaterThan(0);
      expect(proxy.log.filter((e) => e.op === 'GetObject' && isBlobKey(e.key) && e.status === 403)).toEqual([]);
      expect((await stat(mirrorPath(join(home, 'cache', 'chunks'), layers[0]!.digest))).blocks * 512).toBeGreaterThanOrEqual(layers[0]!.size - 4096);
    } finally {
      await s.unmount(ws, { discard: true }).catch(() => undefined);
      for (const [k, v] of Object.entries(old)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('on a host whose daemon cannot start, status answers from the detached server: the view is served, and local once strata-fuse has hydrated it', async () => {
    const home = join(caseDir, 'home');
    const ws = join(caseDir, 'ws');
    // Every daemon this test would start fails to boot: status has only what strata-fuse left.
    const old = process.env.NODE_OPTIONS;
    process.env.NODE_OPTIONS = `--require ${join(caseDir, 'no-such-module.cjs')}`;
    const s = new Strata({ home, store: store(), mode: 'lazy', hydrate: true });
    try {
      const h = (await s.listBackups())[0]!;
      await s.restoreBackup(h, { dir: ws });
      const wsId = (await s.status(ws))[0]!.workspace;
      let st = (await s.status(ws))[0]!.lazy!;
      expect(st.served).toBe(true);
      expect(st.errors).toEqual([]);
      expect(st.fetcher, 'no daemon answered').toBeUndefined();
      expect(st.chunks).toBeGreaterThan(0);
      for (let i = 0; i < 300 && st.cached < st.chunks; i++) {
        await new Promise((r) => setTimeout(r, 50));
        st = (await s.status(ws))[0]!.lazy!;
      }
      expect(st).toMatchObject({ served: true, cached: st.chunks, hydrating: false });
      // It said so because every remote layer is whole in the host cache.
      expect(readFileSync(join(home, 'workspaces', wsId, 'hydrated'), 'utf8')).toBe('hydrated\n');
      expect((await stat(mirrorPath(join(home, 'cache', 'chunks'), layers[0]!.digest))).blocks * 512).toBeGreaterThanOrEqual(layers[0]!.size - 4096);
      expect(diffTrees(await summarize(src), await summarize(ws))).toEqual([]);
      // Taken down, kept (the workspace stays on the host): its marker goes with the view.
      await s.unmount(ws);
      expect(existsSync(join(home, 'workspaces', wsId, 'state.json'))).toBe(true);
      expect(existsSync(join(home, 'workspaces', wsId, 'hydrated')), 'the marker goes with the view').toBe(false);
    } finally {
      if (old === undefined) delete process.env.NODE_OPTIONS;
      else process.env.NODE_OPTIONS = old;
      await s.unmount(ws, { discard: true }).catch(() => undefined);
    }
  });

  /**
   * A backup of `many` (the suite's tree and 1,500 small modules more, so that its index spans
   * more pages than strata-fuse loads before the mount), its index paged in 4 KiB pages (never
   * inline), under a new id.
   */
  let many: { dir: string; handle: BackupHandle } | undefined;
  async function pagedCopy(st0: S3Store, s: Strata): Promise<{ id: string; dir: string; raw: Buffer; blob: Buffer; desc: IndexDescriptor; head: IndexHead; pages: IndexHead['pages'] }> {
    if (!many) {
      const dir = join(work, 'many');
      await cp(src, dir, { recursive: true });
      for (let d = 0; d < 30; d++) await mkdir(join(dir, 'pkgs', `p${d}`), { recursive: true });
      for (let i = 0; i < 1500; i++) await writeFile(join(dir, 'pkgs', `p${i % 30}`, `module-${i.toString(36)}.js`), `module.exports = ${i};\n`);
      many = { dir, handle: await new Strata({ home: join(work, 'home-many'), store: s3StoreFor(s3, { url: `${s3.url}/native` }) }).createBackup({ dir }) };
    }
    const { manifest: m } = await s.resolve(many.handle);
    const raw = await fetchIndex(st0, m.index!);
    const { blob, desc } = await packIndex(raw, 4096, 0);
    await st0.putBytes(blobKey(desc.digest), blob);
    const id = m.id.slice(0, -4) + 'cccc';
    await putManifest(st0, { ...m, id, index: desc });
    const head = decodeHead(Buffer.from(desc.head!, 'base64'), desc);
    return { id, dir: many.dir, raw, blob, desc, head, pages: head.pages };
  }

  /** [first, last] byte of a GET's Range header. */
  const rangeOf = (e: { range?: string }): [number, number] => {
    const m = /bytes=(\d+)-(\d+)/.exec(e.range ?? '')!;
    return [Number(m[1]), Number(m[2])];
  };

  it('a mirror the cache budget empties takes its view\'s hydrated marker with it: status stops reporting it local, and its files are fetched again, right', async () => {
    const home = join(caseDir, 'home');
    const wsA = join(caseDir, 'ws-a');
    const wsB = join(caseDir, 'ws-b');
    const small = join(caseDir, 'small-src');
    await mkdir(small);
    for (let i = 0; i < 3; i++) await writeFile(join(small, `f${i}.txt`), `small file ${i}\n`);
    const trimStore = (): S3Store => s3StoreFor(s3, { url: `${s3.url}/trim`, endpoint: proxy.endpoint });
    const maker = new Strata({ home: join(caseDir, 'maker-home'), store: trimStore() });
    const hA = await maker.createBackup({ dir: src });
    const hB = await maker.createBackup({ dir: small });
    const layerA = (await maker.resolve(hA)).manifest.layers[0]!;
    const mirrorA = mirrorPath(join(home, 'cache', 'chunks'), layerA.digest);
    const old = { NODE_OPTIONS: process.env.NODE_OPTIONS, STRATA_CACHE_SIZE: process.env.STRATA_CACHE_SIZE };
    const s = new Strata({ home, store: trimStore(), mode: 'lazy', hydrate: true });
    try {
      // A hydrates with no daemon (none can boot): strata-fuse marks it hydrated, nothing trims.
      process.env.NODE_OPTIONS = `--require ${join(caseDir, 'no-such-module.cjs')}`;
      const startedA = Date.now();
      await s.restoreBackup(hA, { dir: wsA });
      const idA = (await s.status(wsA))[0]!.workspace;
      const markerA = join(home, 'workspaces', idA, 'hydrated');
      for (let i = 0; i < 300 && !existsSync(markerA); i++) await new Promise((r) => setTimeout(r, 50));
      expect(existsSync(markerA), 'A hydrated').toBe(true);
      expect((await stat(mirrorA)).blocks * 512).toBeGreaterThanOrEqual(layerA.size - 4096);
      // B's restore starts a daemon whose budget (8 MiB, the least it takes) A's mirror (over
      // 9 MiB) alone is over: it adopts A, mounts B, and empties A's mirror, the least recently used.
      delete process.env.NODE_OPTIONS;
      expect(layerA.size).toBeGreaterThan(9 * MiB);
      process.env.STRATA_CACHE_SIZE = String(8 * MiB);
      // A restore starts a daemon at most once a second (plus its 250 ms deferral) per home:
      // B's must not fall in the window A's failed start opened.
      await new Promise((r) => setTimeout(r, Math.max(0, startedA + 1500 - Date.now())));
      await s.restoreBackup(hB, { dir: wsB });
      const log = join(home, 'run', 'daemon.log');
      const emptied = new RegExp(`emptied the mirror of layer ${layerA.digest}`);
      for (let i = 0; i < 300 && !emptied.test(readFileSync(log, 'utf8')); i++) await new Promise((r) => setTimeout(r, 50));
      expect(readFileSync(log, 'utf8'), 'the budget emptied A\'s mirror').toMatch(emptied);
      expect((await stat(mirrorA)).blocks, 'A\'s mirror is empty').toBe(0);
      let st = (await s.status(wsA))[0]!.lazy!;
      for (let i = 0; i < 100 && (existsSync(markerA) || !st.fetcher); i++) {
        await new Promise((r) => setTimeout(r, 50));
        st = (await s.status(wsA))[0]!.lazy!;
      }
      expect(existsSync(markerA), 'the marker went with the mirror').toBe(false);
      expect(st.fetcher, 'the daemon answers').toBeDefined();
      expect(st.chunks).toBeGreaterThan(0);
      expect(st.cached, 'A is not reported local').toBeLessThan(st.chunks);
      // Its files are fetched again, right.
      expect(diffTrees(await summarize(src), await summarize(wsA))).toEqual([]);
      expect(diffTrees(await summarize(small), await summarize(wsB))).toEqual([]);
    } finally {
      for (const [k, v] of Object.entries(old)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      await s.unmount(wsB, { discard: true }).catch(() => undefined);
      await s.unmount(wsA, { discard: true }).catch(() => undefined);
    }
  });

  it('a paged index over s3://: the restore seeds the pages the mount needs, so strata-fuse mounts without fetching them; a seed page that lies is refused and fetched', async () => {
    const home = join(caseDir, 'home');
    const st0 = store();
    const s = new Strata({ home, store: st0, mode: 'lazy', hydrate: false });
    const { id, dir, blob, desc, head, pages } = await pagedCopy(st0, s);
    const warm = warmPages(head);
    expect(pages.length).toBeGreaterThan(WARM_PAGES);
    const indexGets = (): LogEntry[] => proxy.log.filter((e) => e.op === 'GetObject' && e.key.endsWith(blobKey(desc.digest)));
    const overlaps = (e: LogEntry, p: number): boolean => {
      const [a, b] = rangeOf(e);
      return a < pages[p]!.blobOffset + pages[p]!.blobLength && b >= pages[p]!.blobOffset;
    };
    proxy.reset();
    // strata-fuse's own GETs of the index blob (presigned URLs) all fail: the mount must not
    // need one. Files whose pages were not seeded fail to read until the store is sound again.
    proxy.setRules([{ op: 'GetObject', key: new RegExp(`${blobKey(desc.digest)}$`), when: (r) => r.query.has('X-Amz-Signature'), fault: { kind: 'status', status: 500, code: 'InternalError' } }]);
    const ws = join(caseDir, 'ws');
    try {
      await s.restoreBackup(id, { dir: ws });
      // The root and a file at the top, from the seeded pages alone.
      expect((await readdir(ws)).sort()).toEqual((await readdir(dir)).sort());
      expect(await readFile(join(ws, 'hello.txt'), 'utf8')).toBe('hello, world\n');
      // The restoring process's GETs (signed by the SDK) are the warm pages, every one of them.
      const seeded = indexGets().filter((e) => !e.presigned);
      expect(warm.every((p) => seeded.some((e) => overlaps(e, p)))).toBe(true);
      const wsId = (await s.status(ws))[0]!.workspace;
      expect(existsSync(join(home, 'workspaces', wsId, 'mount.seed')), 'the seed is removed once strata-fuse is up').toBe(false);
      // The guard was on: strata-fuse's background loader asked for the other pages and was refused.
      for (let i = 0; i < 100 && !indexGets().some((e) => e.presigned && e.status === 500); i++) await new Promise((r) => setTimeout(r, 50));
      expect(indexGets().some((e) => e.presigned && e.status === 500)).toBe(true);
      proxy.setRules([]);
      // Sound again: the whole tree reads right (refused pages are fetched anew).
      expect(diffTrees(await summarize(dir), await summarize(ws))).toEqual([]);
    } finally {
      proxy.setRules([]);
      await s.unmount(ws, { discard: true }).catch(() => undefined);
    }

    // A store client that lies about one warm page: strata-fuse refuses it and fetches the page.
    const lie = warm[warm.length - 1]!;
    const lieAt = await damagingPageOffset(blob, head, lie);
    const liar = new Proxy(st0, {
      get(t, p) {
        if (p === 'getBytes')
          return async (key: string, range?: { start: number; end: number }) => {
            const b = Buffer.from(await t.getBytes(key, range));
            const at = lieAt - (range?.start ?? 0);
            if (key === blobKey(desc.digest) && at >= 0 && at < b.length) b[at]! ^= 0x01;
            return b;
          };
        const v = Reflect.get(t, p) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
    const home2 = join(caseDir, 'home2');
    const ws2 = join(caseDir, 'ws2');
    const s2 = new Strata({ home: home2, store: liar, mode: 'lazy', hydrate: false });
    proxy.reset();
    await s2.restoreBackup(id, { dir: ws2 });
    try {
      expect(diffTrees(await summarize(dir), await summarize(ws2))).toEqual([]);
      expect(indexGets().some((e) => e.presigned && overlaps(e, lie)), 'the lying page fetched by strata-fuse').toBe(true);
      expect(await readFile(join(home2, 'run', 'daemon.log'), 'utf8')).toMatch(new RegExp(`page ${lie} of the index (does not match its digest|does not decompress)[^\n]*; it is fetched instead`));
    } finally {
      await s2.unmount(ws2, { discard: true }).catch(() => undefined);
    }
  });

  it('a paged index over s3://: strata-fuse GETs its pages with a presigned URL into the host cache, a torn page there is fetched again, and the whole index is written out', async () => {
    const home = join(caseDir, 'home');
    const ws = join(caseDir, 'ws');
    const st0 = store();
    const s = new Strata({ home, store: st0, mode: 'lazy', hydrate: false });
    const { id, dir, raw, blob, desc, head, pages } = await pagedCopy(st0, s);
    // A page strata-fuse does not load before the mount (sx_index_warm: two at each section's
    // start), already in the host cache's mirror but torn: it must be fetched again.
    const warm = new Set(warmPages(head));
    const torn = [...pages.keys()].find((p) => !warm.has(p))!;
    expect(torn).toBeDefined();
    const mirror = mirrorPath(join(home, 'cache', 'chunks'), desc.digest);
    await mkdir(dirname(mirror), { recursive: true });
    const fh = await open(mirror, 'w');
    await fh.truncate(desc.size);
    await fh.write(Buffer.alloc(pages[torn]!.blobLength, 0x5a), 0, pages[torn]!.blobLength, pages[torn]!.blobOffset);
    await fh.close();
    proxy.reset();
    try {
      await s.restoreBackup(id, { dir: ws });
      expect(diffTrees(await summarize(dir), await summarize(ws))).toEqual([]);
      const indexGets = proxy.log.filter((e) => e.op === 'GetObject' && e.key.endsWith(blobKey(desc.digest)) && e.presigned);
      // Every one a ranged GET, none refused: strata-fuse's, with the URL the restore presigned.
      expect(indexGets.length).toBeGreaterThan(0);
      expect(indexGets.every((e) => e.range !== undefined && e.status === 206)).toBe(true);
      const start = pages[torn]!.blobOffset;
      expect(indexGets.some((e) => Number(/bytes=(\d+)-(\d+)/.exec(e.range!)![1]) <= start && Number(/bytes=(\d+)-(\d+)/.exec(e.range!)![2]) >= start), 'the torn page fetched again').toBe(true);
      const wsId = (await s.status(ws))[0]!.workspace;
      let whole: Buffer | undefined;
      for (let i = 0; i < 200 && !whole; i++) {
        whole = await readFile(join(home, 'workspaces', wsId, 'mount.index')).catch(() => undefined);
        if (!whole) await new Promise((r) => setTimeout(r, 50));
      }
      expect(whole?.equals(raw), 'strata-fuse wrote the whole index, verified').toBe(true);
      expect((await readFile(mirror)).equals(blob), 'the mirror holds the blob').toBe(true);
    } finally {
      await s.unmount(ws, { discard: true }).catch(() => undefined);
    }
  });

  it('re-reads its sources when the store refuses a URL (an expired one), and carries on', async () => {
    const m = await mount();
    proxy.setRules([{ op: 'GetObject', fault: { kind: 'status', status: 403, code: 'AccessDenied' }, times: 1 }]);
    expect(await readFile(join(m.mountpoint, 'lib/m11.js'))).toEqual(await readFile(join(src, 'lib/m11.js')));
    expect(proxy.fired).toBe(1);
  });

  it('fetches the frames of a prefetch record first, coalesced into few GETs, before any read', async () => {
    // The record: every module's frame, in a reading order unlike the blob's.
    const view = buildView(tocs);
    const refs: PrefetchRef[] = [];
    for (let i = 199; i >= 0; i -= 2) {
      const k = findNode(view, `lib/m${i}.js`)!.entry!.chunks![0]!;
      refs.push({ layer: 0, blobOffset: k.blobOffset, blobLength: k.blobLength });
    }
    const recordPath = join(caseDir, 'prefetch.bin');
    await writeFile(recordPath, encodePrefetch(refs));
    const m = await mount({ prefetchPath: recordPath });
    const mirror = mirrorPath(join(caseDir, 'cache'), layers[0]!.digest);
    const holds = async (): Promise<boolean> => {
      const ext = await extentsOf(mirror);
      return refs.every((r) => ext.some(([o, l]) => o <= r.blobOffset && r.blobOffset + r.blobLength <= o + l));
    };
    for (let i = 0; i < 200 && !(await holds()); i++) await new Promise((r) => setTimeout(r, 25));
    expect(await holds()).toBe(true);
    // 100 frames of small files lie close together: a handful of GETs, not one each.
    expect(blobGets()).toBeGreaterThan(0);
    expect(blobGets()).toBeLessThanOrEqual(8);
    // Reading them needs nothing more.
    const before = blobGets();
    for (let i = 199; i >= 0; i -= 2) expect(await readFile(join(m.mountpoint, `lib/m${i}.js`))).toEqual(await readFile(join(src, `lib/m${i}.js`)));
    expect(blobGets()).toBe(before);
    // The rest of the layer was not fetched (no hydration asked): big.bin's 9 MiB are not there.
    expect((await stat(mirror)).blocks * 512).toBeLessThan(2 * MiB);
  });

  it('a read fetches whole 4 KiB blocks: every byte the mirror holds is the blob\'s, none is a zero tail', async () => {
    // No readahead: each read's GET is its frame alone, which starts and ends mid-block. A block
    // written in part would read as held (SEEK_DATA) with zeros after the frame's end: hydration
    // would skip it and the next frame crossing it would fail its check.
    const m = await mount({ fetcherOptions: { deadlineMs: 3000, stallTimeoutMs: 1000, demandSpan: 0, readahead: 0 } });
    const mirror = mirrorPath(join(caseDir, 'cache'), layers[0]!.digest);
    for (const i of [3, 50, 51, 120]) expect(await readFile(join(m.mountpoint, `lib/m${i}.js`))).toEqual(await readFile(join(src, `lib/m${i}.js`)));
    const blob = await store().getBytes(layerKey(layers[0]!));
    const held = await readFile(mirror);
    const ext = await extentsOf(mirror);
    expect(ext.length).toBeGreaterThan(0);
    for (const [o, l] of ext) {
      expect(o % 4096, `extent ${o}+${l}`).toBe(0);
      expect(held.subarray(o, o + l).equals(blob.subarray(o, o + l)), `extent ${o}+${l} differs from the blob`).toBe(true);
    }
  });

  it('a read fetches the bytes before its frame too: a file captured just before it reads with no GET', async () => {
    // node reads a package's package.json, then its main file, which sorts before it.
    const m = await mount({ fetcherOptions: { deadlineMs: 3000, stallTimeoutMs: 1000, readahead: 0 } });
    const last = frameOf('lib/m199.js');
    const first = frameOf('lib/m0.js');
    expect(first.digest).not.toBe(last.digest); // different frames
    expect(last.blobOffset - first.blobOffset).toBeLessThan(200 * 1024); // within the look-behind
    expect(await readFile(join(m.mountpoint, 'lib/m199.js'))).toEqual(await readFile(join(src, 'lib/m199.js')));
    const before = blobGets();
    expect(before).toBe(1);
    expect(await readFile(join(m.mountpoint, 'lib/m0.js'))).toEqual(await readFile(join(src, 'lib/m0.js')));
    expect(blobGets()).toBe(before);
  });

  it('keeps the CPUs awake through a burst of reads, and idles when reads stop: spinners at SCHED_IDLE that sleep', async () => {
    const m = await mount();
    const pid = m.child.pid!;
    // /proc/PID/task/TID/stat: field 14 utime, 15 stime (ticks), 41 policy (5 = SCHED_IDLE).
    const tasks = async (): Promise<Array<{ ticks: number; policy: number }>> => {
      const out: Array<{ ticks: number; policy: number }> = [];
      for (const tid of await readdir(`/proc/${pid}/task`)) {
        const f = (await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '')).split(') ')[1]?.split(' ');
        if (f) out.push({ ticks: Number(f[11]) + Number(f[12]), policy: Number(f[38]) });
      }
      return out;
    };
    const spinners = (await tasks()).filter((t) => t.policy === 5);
    expect(spinners.length).toBe(Math.min(8, availableParallelism()));
    // A burst of reads, then quiet: within a second the spinners have stopped burning CPU.
    for (let i = 0; i < 200; i += 7) expect(await readFile(join(m.mountpoint, `lib/m${i}.js`))).toEqual(await readFile(join(src, `lib/m${i}.js`)));
    await new Promise((r) => setTimeout(r, 100));
    const spin = async (): Promise<number> => (await tasks()).filter((t) => t.policy === 5).reduce((n, t) => n + t.ticks, 0);
    const a = await spin();
    await new Promise((r) => setTimeout(r, 1000));
    expect((await spin()) - a).toBeLessThanOrEqual(2); // ticks are 10 ms: at most a couple of wakeups' worth
  });

  it('serves with the spinners off (--spin-us 0 via STRATA_FUSE_SPIN_US=0)', async () => {
    process.env.STRATA_FUSE_SPIN_US = '0';
    try {
      const m = await mount();
      const policies = await Promise.all(
        // A thread may end between the listing and the read (the index loader): skipped.
        (await readdir(`/proc/${m.child.pid}/task`)).map(async (tid) => Number((await readFile(`/proc/${m.child.pid}/task/${tid}/stat`, 'utf8').catch(() => ') ')).split(') ')[1]!.split(' ')[38])),
      );
      expect(policies.filter((p) => p === 5)).toEqual([]);
      expect(await readFile(join(m.mountpoint, 'lib/m7.js'))).toEqual(await readFile(join(src, 'lib/m7.js')));
    } finally {
      delete process.env.STRATA_FUSE_SPIN_US;
    }
  });

  it('reads ahead after a miss, in the background: the next bytes of the blob arrive while the read returns', async () => {
    const m = await mount({ fetcherOptions: { deadlineMs: 3000, stallTimeoutMs: 1000, readahead: 2 * MiB } });
    const mirror = mirrorPath(join(caseDir, 'cache'), layers[0]!.digest);
    // The modules were captured after big.bin: m0's frame, then its neighbours'.
    const first = frameOf('lib/m0.js');
    expect(await readFile(join(m.mountpoint, 'lib/m0.js'))).toEqual(await readFile(join(src, 'lib/m0.js')));
    const span = [first.blobOffset, Math.min(layers[0]!.size, first.blobOffset + first.blobLength + 256 * 1024 + 2 * MiB)];
    const covered = async (): Promise<boolean> => (await extentsOf(mirror)).some(([o, l]) => o <= span[0]! && span[1]! <= o + l);
    for (let i = 0; i < 200 && !(await covered()); i++) await new Promise((r) => setTimeout(r, 25));
    expect(await covered()).toBe(true);
    // Then the neighbours read with no GET of their own.
    const before = blobGets();
    for (let i = 1; i < 20; i++) expect(await readFile(join(m.mountpoint, `lib/m${i}.js`))).toEqual(await readFile(join(src, `lib/m${i}.js`)));
    expect(blobGets()).toBe(before);
  });

  it('a read right after the mount goes first: hydration holds its streams until that read is answered', async () => {
    const m = await mount({ hydrate: true });
    const k = findNode(buildView(tocs), 'hello.txt')!.entry!.chunks![0]!;
    expect((await catFile(join(m.mountpoint, 'hello.txt'))).toString()).toBe('hello, world\n');
    const gets = proxy.log.filter((e) => e.op === 'GetObject' && isBlobKey(e.key));
    // The first blob GET is the read's own range (its frame, look-behind and readahead), not hydration's.
    expect(gets.length).toBeGreaterThan(0);
    const first = /^bytes=(\d+)-(\d+)$/.exec(gets[0]!.range ?? '');
    expect(first, `first GET ${JSON.stringify(gets[0])}`).not.toBeNull();
    expect(Number(first![1])).toBeLessThanOrEqual(k.blobOffset);
    expect(Number(first![2])).toBeGreaterThanOrEqual(k.blobOffset + k.blobLength - 1);
  });

  it('hydrates small files before large ones: every module is local before a GET of big.bin', async () => {
    // One stream: the order of the queue is the order of the GETs (8 streams take its jobs at once).
    process.env.STRATA_HYDRATE_STREAMS = '1';
    const m = await mount({ hydrate: true }).finally(() => delete process.env.STRATA_HYDRATE_STREAMS);
    const view = buildView(tocs);
    const big = findNode(view, 'big.bin')!.entry!.chunks!.map((k) => [k.blobOffset, k.blobOffset + k.blobLength] as const);
    const modules = Array.from({ length: 200 }, (_, i) => findNode(view, `lib/m${i}.js`)!.entry!.chunks![0]!);
    // big.bin was captured first: blob order would fetch its 9 MiB before any module.
    expect(Math.max(...big.map(([, e]) => e))).toBeLessThanOrEqual(Math.min(...modules.map((k) => k.blobOffset)) + 4096);
    const mirror = mirrorPath(join(caseDir, 'cache'), layers[0]!.digest);
    const whole = async (): Promise<boolean> => (await stat(mirror)).blocks * 512 >= layers[0]!.size - 4096;
    for (let i = 0; i < 300 && !(await whole()); i++) await new Promise((r) => setTimeout(r, 50));
    const gets = proxy.log
      .filter((e) => e.op === 'GetObject' && isBlobKey(e.key))
      .map((e) => /^bytes=(\d+)-(\d+)$/.exec(e.range ?? '')!)
      .map((r) => [Number(r[1]), Number(r[2]) + 1] as const);
    // A GET "of big.bin" holds more than the 4 KiB a block-aligned run may take of its edge.
    const ofBig = (g: readonly [number, number]) => big.some(([a, b]) => Math.min(b, g[1]) - Math.max(a, g[0]) > 4096);
    const firstBig = gets.findIndex(ofBig);
    expect(firstBig).toBeGreaterThan(0);
    const before = gets.slice(0, firstBig);
    for (const k of modules) expect(before.some(([a, b]) => a <= k.blobOffset && k.blobOffset + k.blobLength <= b)).toBe(true);
    // And the layer still ends up whole, every file exact.
    expect(diffTrees(await summarize(src), await summarize(m.mountpoint))).toEqual([]);
  });

  it('hydrates the whole layer in the background when asked, without any read', async () => {
    const m = await mount({ hydrate: true });
    const mirror = mirrorPath(join(caseDir, 'cache'), layers[0]!.digest);
    const whole = async (): Promise<boolean> => {
      const ext = await extentsOf(mirror);
      return ext.length === 1 && ext[0]![0] === 0 && ext[0]![1] === layers[0]!.size;
    };
    for (let i = 0; i < 300 && !(await whole()); i++) await new Promise((r) => setTimeout(r, 50));
    expect(await whole()).toBe(true);
    // Then reads need nothing more from the store.
    const before = blobGets();
    expect(diffTrees(await summarize(src), await summarize(m.mountpoint))).toEqual([]);
    expect(blobGets()).toBe(before);
    expect((await readFile(mirror)).equals(await store().getBytes(layerKey(layers[0]!)))).toBe(true);
  });
});
