/**
 * The restore index (issue 9): one blob per backup holding the merged view of its whole chain.
 * Its layout is the same on both sides (TS encoder, strata-fuse); a backup's index equals the one
 * its TOCs give; a lazy restore reads the manifest and the index and nothing else (no TOC, in the
 * library nor in the daemon); a damaged, truncated or hostile index mounts nothing.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Strata, type BackupHandle } from '../src/index.js';
import { blobKey } from '../src/format/reader.js';
import { PREFETCH_LAYOUT } from '../src/format/prefetch.js';
import { decodeHead, DIRENT_SIZE, encodeIndex, HEADER_SIZE, LAYOUT, NODE_SIZE, packIndex, RestoreIndex, WARM_PAGES } from '../src/format/restore-index.js';
import { packSmall } from '../src/format/packed.js';
import { MSG_HEADER_SIZE, REF_SIZE } from '../src/restore/lazy/fetcher.js';
import { defaultFuseBinary } from '../src/restore/lazy/mount.js';
import { indexFromTocs } from '../src/restore/index-source.js';
import { fetchIndex, fetchToc } from '../src/store/blobs.js';
import { getManifest, putManifest } from '../src/store/catalog.js';
import { FileStore } from '../src/store/file.js';
import type { Manifest } from '../src/store/manifest.js';
import { assertBuilt } from './helpers/built.js';
import { need } from './helpers/caps.js';
import { makeFidelityTree, prng } from './helpers/fidelity.js';
import { ProbeStore } from './helpers/probe-store.js';
import { damagingPageOffset } from './helpers/tamper.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { makeBaseTree, unmountUnder } from './helpers/workspace.js';

const run = promisify(execFile);
const ROOT = need('root');
const LAZY = ROOT && need('fuse');
let work: string;
let n = 0;

beforeAll(async () => {
  assertBuilt();
  work = await mkdtemp(join(tmpdir(), 'strata-rix-'));
});
afterEach(() => {
  if (work) unmountUnder(work);
});
afterAll(async () => {
  if (work) {
    unmountUnder(work);
    await rm(work, { recursive: true, force: true, maxRetries: 8, retryDelay: 250 });
  }
});

interface Case {
  root: string;
  storeDir: string;
  store: FileStore;
  strata: (opts?: { mode?: 'lazy' | 'extract' | 'copy'; probe?: ProbeStore; hydrate?: boolean }) => Strata;
  at: (s: string) => string;
}

async function newCase(): Promise<Case> {
  const root = join(work, `case-${++n}`);
  const storeDir = join(root, 'store');
  await mkdir(storeDir, { recursive: true });
  const store = new FileStore(storeDir);
  return {
    root,
    storeDir,
    store,
    strata: (o = {}) => new Strata({ home: join(root, 'home'), store: o.probe ?? store, ...(o.mode ? { mode: o.mode } : {}), hydrate: o.hydrate ?? false }),
    at: (s) => join(root, s),
  };
}

/** A tree whose compressed index is too big to ride inline in the manifest. */
async function manyFiles(dir: string, count = 1500): Promise<void> {
  for (let d = 0; d < 30; d++) await mkdir(join(dir, `pkg-${d}`, 'lib'), { recursive: true });
  for (let i = 0; i < count; i++) await writeFile(join(dir, `pkg-${i % 30}`, 'lib', `module-${i.toString(36)}-${(i * 7919).toString(16)}.js`), `module.exports = ${i};\n` + prng(i, 4 + (i % 200)).toString('hex'));
}

/** Backups made inside fn write their restore indexes in pages of kb KiB (STRATA_INDEX_PAGE_KB). */
async function withPageKb<T>(kb: number, fn: () => Promise<T>): Promise<T> {
  process.env.STRATA_INDEX_PAGE_KB = String(kb);
  try {
    return await fn();
  } finally {
    delete process.env.STRATA_INDEX_PAGE_KB;
  }
}

async function manifestOf(c: Case, h: BackupHandle): Promise<Manifest> {
  return (await getManifest(c.store, h.id)).manifest;
}

/** The index a backup's manifest names, and the one its TOCs give: they must be the same bytes. */
async function expectIndexMatchesTocs(c: Case, h: BackupHandle): Promise<Buffer> {
  const m = await manifestOf(c, h);
  expect(m.index, 'the manifest names a restore index').toBeDefined();
  const raw = await fetchIndex(c.store, m.index!);
  // It covers the chain's prefix it says it does (all of it unless a tail rides above it).
  const covered = m.layers.slice(0, m.index!.layers ?? m.layers.length);
  const tocs = await Promise.all(covered.map((l) => fetchToc(c.store, l)));
  expect(raw.equals(indexFromTocs(tocs, covered))).toBe(true);
  return raw;
}

/** Blob keys in the store (layers and index blobs). */
async function blobsIn(c: Case): Promise<Set<string>> {
  const out = new Set<string>();
  for await (const o of c.store.list('blobs/')) out.add(o.key);
  return out;
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && (m === dir || m.startsWith(dir + '/')));
}

/**
 * Overwrite every layer's TOC frame in the store: anything that reads a TOC from now on fails.
 * Returns what puts the blobs back.
 */
async function spoilTocs(c: Case, m: Manifest): Promise<() => Promise<void>> {
  const undo: Array<[string, Buffer]> = [];
  for (const l of m.layers) {
    const p = join(c.storeDir, ...blobKey(l.digest).split('/'));
    const buf = await readFile(p);
    undo.push([p, Buffer.from(buf)]);
    buf.fill(0x5a, l.tocOffset, l.tocOffset + l.tocLength);
    await writeFile(p, buf);
  }
  return async () => {
    for (const [p, buf] of undo) await writeFile(p, buf);
  };
}

describe('restore index layout', () => {
  it('the TypeScript encoder and strata-fuse agree on every record and field', async () => {
    const { stdout } = await run(defaultFuseBinary(), ['--print-layout']);
    const c = JSON.parse(stdout) as Record<string, { size: number; offsets: Record<string, number> }> & { version: number; warm_pages: number };
    expect(c.version).toBe(2);
    // The pages the mount needs: strata-fuse loads them, the restore seeds them (warmPages).
    expect(c.warm_pages).toBe(WARM_PAGES);
    for (const [rec, want] of Object.entries({ ...LAYOUT, ...PREFETCH_LAYOUT })) {
      expect(c[rec], rec).toEqual(want);
    }
    // The fetcher socket's records, as src/restore/lazy/fetcher.ts reads them.
    expect(c.msg!.size).toBe(MSG_HEADER_SIZE);
    expect(c.chunk_ref!.size).toBe(REF_SIZE);
    expect(c.chunk_ref!.offsets).toEqual({ layer: 0, digest: 32, blob_off: 64, blob_len: 72, size: 76 });
    expect(c.msg!.offsets).toEqual({ magic: 0, type: 4, id: 8, count: 16, flags: 20 });
    expect(c.resp).toEqual({ size: 16, offsets: { magic: 0, status: 4, id: 8 } });
  });
});

describe('restore index of a backup', () => {
  it('a full backup writes the index its TOC gives; a small one rides inline, a large one is a blob', async () => {
    const c = await newCase();
    await makeFidelityTree(c.at('small'));
    const small = await c.strata().createBackup({ dir: c.at('small') });
    await expectIndexMatchesTocs(c, small);
    expect((await manifestOf(c, small)).index!.inline).toBeDefined();

    await manyFiles(c.at('large'));
    const large = await c.strata().createBackup({ dir: c.at('large') });
    const raw = await expectIndexMatchesTocs(c, large);
    const m = await manifestOf(c, large);
    expect(m.index!.inline).toBeUndefined();
    expect(m.index!.rawSize).toBe(raw.length);
    expect((await stat(join(c.storeDir, ...blobKey(m.index!.digest).split('/')))).size).toBe(m.index!.size);
    // Decoding and encoding again gives the same bytes (what an incremental backup stacks on).
    const ix = RestoreIndex.parse(raw);
    expect(encodeIndex(ix.toView(), ix.layers()).equals(raw)).toBe(true);
  });

  it('a --parent backup stacks its layer over the parent view: the index of the two-layer chain', async () => {
    const c = await newCase();
    await makeBaseTree(c.at('src'));
    const s = c.strata();
    const base = await s.createBackup({ dir: c.at('src') });
    await writeFile(c.at('src/a.txt'), 'changed\n');
    await rm(c.at('src/dir2'), { recursive: true });
    await writeFile(c.at('src/new.txt'), 'new\n');
    const child = await s.createBackup({ dir: c.at('src'), parent: base });
    expect((await manifestOf(c, child)).layers).toHaveLength(2);
    await expectIndexMatchesTocs(c, child);
  });

  it.runIf(ROOT)('incremental workspace backups and merged chains carry the index of their whole chain', async () => {
    const c = await newCase();
    await makeBaseTree(c.at('src'));
    const s = new Strata({ home: join(c.root, 'home'), store: c.store, mode: 'extract', maxChain: 4 });
    let h = await s.createBackup({ dir: c.at('src') });
    await s.restoreBackup(h, { dir: c.at('ws') });
    for (let i = 0; i < 6; i++) {
      await writeFile(c.at(`ws/gen-${i}.txt`), `generation ${i}\n`);
      if (i === 2) await rm(c.at('ws/dir1/sub'), { recursive: true });
      if (i === 3) await writeFile(c.at('ws/dir1/sub-again'), 'x');
      h = await s.createBackup({ dir: c.at('ws') });
      await expectIndexMatchesTocs(c, h); // past 4 layers the chain is merged: still the same index
    }
    expect((await manifestOf(c, h)).layers.length).toBeLessThanOrEqual(4);
    // A backup of an unchanged workspace reuses its parent's chain and index.
    const same = await s.createBackup({ dir: c.at('ws') });
    expect((await manifestOf(c, same)).index).toEqual((await manifestOf(c, h)).index);
  });
});

describe.runIf(LAZY)('lazy ready path', () => {
  it('restores from the manifest and index alone: no TOC is read, by the library or the daemon', async () => {
    const c = await newCase();
    await manyFiles(c.at('src'), 600);
    await makeBaseTree(c.at('src/base'));
    const h = await c.strata().createBackup({ dir: c.at('src') });
    const m = await manifestOf(c, h);
    // From here on a TOC read fails with DIGEST_MISMATCH: the restore must not need one.
    await spoilTocs(c, m);
    const probe = new ProbeStore(c.store);
    const s = c.strata({ mode: 'lazy', probe });
    const r = await s.restoreBackup(h, { dir: c.at('ws') });
    expect(r.mode).toBe('lazy');
    // One manifest read, one GET of the index blob, nothing else (no TOC range, no HEAD needed).
    expect(probe.byteReads.map((g) => g.key)).toEqual([`manifests/${h.id}.json`]);
    expect(probe.gets.map((g) => g.key)).toEqual([blobKey(m.index!.digest)]);
    // Every file reads back exactly (chunks only, from the daemon's own store).
    const src = await summarize(c.at('src'));
    expect(diffTrees(src, await summarize(c.at('ws')))).toEqual([]);
    await s.unmount(c.at('ws'), { discard: true });
  });

  it('forks and incremental chains restore from the index of the newest backup', async () => {
    const c = await newCase();
    await makeBaseTree(c.at('src'));
    const s = c.strata({ mode: 'lazy' });
    let h = await s.createBackup({ dir: c.at('src') });
    await s.restoreBackup(h, { dir: c.at('ws') });
    await writeFile(c.at('ws/a.txt'), 'edited in generation 1\n');
    await writeFile(c.at('ws/dir2/new'), 'new file\n');
    h = await s.createBackup({ dir: c.at('ws') });
    await rm(c.at('ws/dir1'), { recursive: true });
    await cp(c.at('ws/big.bin'), c.at('ws/big-copy.bin'));
    h = await s.createBackup({ dir: c.at('ws') });
    const m = await manifestOf(c, h);
    expect(m.layers).toHaveLength(3);
    await expectIndexMatchesTocs(c, h);
    const want = await summarize(c.at('ws'));
    await spoilTocs(c, m);
    for (const fork of ['fork-a', 'fork-b']) {
      const probe = new ProbeStore(c.store);
      await c.strata({ mode: 'lazy', probe }).restoreBackup(h, { dir: c.at(fork) });
      expect(probe.byteReads.map((g) => g.key)).toEqual([`manifests/${h.id}.json`]);
      expect(probe.gets.map((g) => g.key)).toEqual(m.index!.inline ? [] : [blobKey(m.index!.digest)]);
      expect(diffTrees(want, await summarize(c.at(fork)))).toEqual([]);
    }
    for (const d of ['ws', 'fork-a', 'fork-b']) await s.unmount(c.at(d), { discard: true });
  });

  it('a small incremental layer keeps its parent\'s index and rides above it as a tail; past the bound the chain is indexed again', async () => {
    const c = await newCase();
    await manyFiles(c.at('src'), 1500);
    await makeBaseTree(c.at('src/base'));
    const s = c.strata({ mode: 'lazy' });
    const full = await s.createBackup({ dir: c.at('src') });
    const fullIndex = (await manifestOf(c, full)).index!;
    expect(fullIndex.inline, 'an index too big to ride inline').toBeUndefined();
    await s.restoreBackup(full, { dir: c.at('ws') });
    // Generation 1: one edited file, a new file in the root (the root's mtime moves), a removed
    // directory (a whiteout), a chmod of the root.
    await writeFile(c.at('ws/pkg-3/lib/edited.js'), 'module.exports = "edited";\n');
    await writeFile(c.at('ws/ROOT-NEW.txt'), 'new at the root\n');
    await rm(c.at('ws/base/dir1'), { recursive: true });
    await chmod(c.at('ws'), 0o750);
    let before = await blobsIn(c);
    let h = await s.createBackup({ dir: c.at('ws') });
    let m = await manifestOf(c, h);
    expect(m.layers).toHaveLength(2);
    // No new index: only the layer blob was added to the store, and the manifest names the
    // parent's index, covering the first layer.
    expect(m.index).toEqual({ ...fullIndex, layers: 1 });
    const added = [...(await blobsIn(c))].filter((k) => !before.has(k));
    expect(added).toEqual([blobKey(m.layers[1]!.digest)]);
    await expectIndexMatchesTocs(c, h);
    // Generation 2, on the same tail.
    await writeFile(c.at('ws/pkg-4/lib/second.js'), 'second\n');
    h = await s.createBackup({ dir: c.at('ws') });
    m = await manifestOf(c, h);
    expect(m.index).toEqual({ ...fullIndex, layers: 1 });
    const want = await summarize(c.at('ws'));
    // An extract restore of the chain (on another host) takes the tail's root entry too.
    const other = new Strata({ home: join(c.root, 'home-other'), store: c.store, mode: 'extract' });
    await other.restoreBackup(h, { dir: c.at('ext') });
    expect(diffTrees(want, await summarize(c.at('ext')))).toEqual([]);
    await other.unmount(c.at('ext'), { discard: true });

    // A fork restores from the prefix's index plus the tail blobs, each in one GET (no TOC
    // range, no chunk ranges): the indexed layer's TOC is spoiled to prove it.
    const unspoil = await spoilTocs(c, { ...m, layers: m.layers.slice(0, 1) });
    const probe = new ProbeStore(c.store);
    await c.strata({ mode: 'lazy', probe }).restoreBackup(h, { dir: c.at('fork') });
    expect(probe.byteReads.map((g) => g.key)).toEqual([`manifests/${h.id}.json`]);
    expect(probe.gets.map((g) => `${g.key} ${g.end}`).sort()).toEqual([blobKey(fullIndex.digest), ...m.layers.slice(1).map((l) => blobKey(l.digest))].map((k) => `${k} -1`).sort());
    expect(diffTrees(want, await summarize(c.at('fork')))).toEqual([]);
    expect((await stat(c.at('fork'))).mode & 0o7777).toBe(0o750);
    await unspoil();

    // The fork (mounted over a tail) is backed up in turn, until the tail outgrows its bound:
    // then the whole chain is indexed again, and restores exactly from that index.
    let grew: Manifest | undefined;
    for (let i = 0; i < 6 && !grew; i++) {
      await writeFile(c.at(`fork/gen-${i}.txt`), `generation ${i}\n`);
      before = await blobsIn(c);
      h = await s.createBackup({ dir: c.at('fork') });
      m = await manifestOf(c, h);
      await expectIndexMatchesTocs(c, h);
      if (m.index!.digest !== fullIndex.digest) grew = m;
    }
    expect(grew, 'the tail outgrew its bound').toBeDefined();
    expect(grew!.index!.layers).toBeUndefined();
    expect(grew!.layers.length).toBeGreaterThan(2);
    // A manifest whose index claims to cover no layer, or more than the chain, is refused.
    for (const [k, bad] of [0, m.layers.length + 1].entries()) {
      const id = h.id.slice(0, -4) + `bad${k}`;
      await putManifest(c.store, { ...m, id, index: { ...m.index!, layers: bad } });
      await expect(c.strata({ mode: 'lazy' }).restoreBackup(id, { dir: c.at(`bad-${k}`) })).rejects.toThrow(/index covers/);
      expect(mountsUnder(c.at(`bad-${k}`))).toEqual([]);
    }
    const last = await summarize(c.at('fork'));
    await c.strata({ mode: 'lazy' }).restoreBackup(h, { dir: c.at('again') });
    expect(diffTrees(last, await summarize(c.at('again')))).toEqual([]);
    for (const d of ['ws', 'fork', 'again']) await s.unmount(c.at(d), { discard: true });
  });

  it('a lazy workspace backed up, taken down and restored comes back with its upper, even from a torn local index', async () => {
    const c = await newCase();
    await makeBaseTree(c.at('src'));
    const s = c.strata({ mode: 'lazy' });
    const a = await s.createBackup({ dir: c.at('src') });
    await s.restoreBackup(a, { dir: c.at('ws') });
    await writeFile(c.at('ws/saved.txt'), 'in backup B\n');
    const b = await s.createBackup({ dir: c.at('ws') });
    await writeFile(c.at('ws/unsaved.txt'), 'only in the upper\n');
    const want = await summarize(c.at('ws'));
    await s.unmount(c.at('ws'));
    // The local copy of the mounted chain's index (A's) is torn, as a crash could leave it.
    const st = (await s.status())[0]!;
    const local = join(c.root, 'home', 'workspaces', st.workspace, 'mount.index');
    await writeFile(local, (await readFile(local)).subarray(0, 100));
    const r = await s.restoreBackup(b, { dir: c.at('ws'), force: true });
    expect(r.recovered).toBe(true);
    expect(diffTrees(want, await summarize(c.at('ws')))).toEqual([]);
    await s.unmount(c.at('ws'), { discard: true });
  });

  it('a backup made before indexes existed still restores, from its TOCs', async () => {
    const c = await newCase();
    await makeBaseTree(c.at('src'));
    const s = c.strata({ mode: 'lazy' });
    const h = await s.createBackup({ dir: c.at('src') });
    const m = await manifestOf(c, h);
    // The same backup as an older strata wrote it: no index in the manifest.
    const old: Manifest = { ...m, id: h.id.slice(0, -4) + 'aaaa' };
    delete old.index;
    await putManifest(c.store, old);
    const probe = new ProbeStore(c.store);
    await c.strata({ mode: 'lazy', probe }).restoreBackup(old.id, { dir: c.at('ws') });
    expect(probe.byteReads.map((g) => g.key)).toContain(blobKey(m.layers[0]!.digest)); // its TOC
    expect(diffTrees(await summarize(c.at('src')), await summarize(c.at('ws')))).toEqual([]);
    await s.unmount(c.at('ws'), { discard: true });
  });

  it('a tampered, truncated or missing single-frame index blob (older backups) is refused with a clear error and nothing is mounted', async () => {
    const c = await newCase();
    await manyFiles(c.at('src'), 1500);
    const s = c.strata({ mode: 'lazy' });
    const h0 = await s.createBackup({ dir: c.at('src') });
    const m0 = await manifestOf(c, h0);
    // The index as strata wrote it before paged indexes: one zstd frame, fetched whole.
    const { blob, desc } = await packSmall(await fetchIndex(c.store, m0.index!), 0);
    expect(desc.inline).toBeUndefined();
    await c.store.putBytes(blobKey(desc.digest), blob);
    const m: Manifest = { ...m0, id: h0.id.slice(0, -4) + 'bbbb', index: desc };
    await putManifest(c.store, m);
    const blobPath = join(c.storeDir, ...blobKey(desc.digest).split('/'));
    const good = await readFile(blobPath);
    const flipped = Buffer.from(good);
    flipped[flipped.length >> 1]! ^= 0x01;
    for (const [what, bytes, msg] of [
      ['tampered', flipped, /has digest sha256:[0-9a-f]{64}, expected/],
      ['truncated', good.subarray(0, good.length - 1), /truncated or replaced/],
      ['missing', null, /missing from the store/],
    ] as Array<[string, Buffer | null, RegExp]>) {
      if (bytes) await writeFile(blobPath, bytes);
      else await rm(blobPath);
      const target = c.at(`ws-${what}`);
      const err = await s.restoreBackup(m.id, { dir: target }).catch((e: Error & { code?: string }) => e);
      expect(err, what).toBeInstanceOf(Error);
      expect((err as Error).message, what).toMatch(msg);
      expect(mountsUnder(c.root), what).toEqual([]);
      expect(await s.status(), what).toEqual([]);
    }
    await writeFile(blobPath, good);
    await s.restoreBackup(m.id, { dir: c.at('ws-good') });
    expect(diffTrees(await summarize(c.at('src')), await summarize(c.at('ws-good')))).toEqual([]);
    await s.unmount(c.at('ws-good'), { discard: true });
  });

  it('a paged index: the restore fetches no page itself; a truncated or missing blob, or a damaged page the root needs, mounts nothing; a damaged page elsewhere fails only the reads that need it, never with wrong bytes', async () => {
    const c = await newCase();
    await manyFiles(c.at('src'), 1500);
    const s = c.strata({ mode: 'lazy' });
    const h = await withPageKb(4, () => s.createBackup({ dir: c.at('src') }));
    const m = await manifestOf(c, h);
    expect(m.index!.head, 'a large index is paged').toBeDefined();
    const head = decodeHead(Buffer.from(m.index!.head!, 'base64'), m.index!);
    expect(head.pages.length).toBeGreaterThan(40);
    const blobPath = join(c.storeDir, ...blobKey(m.index!.digest).split('/'));
    const good = await readFile(blobPath);
    // A byte of the page whose flipped bit the decoder notices (helpers/tamper.ts).
    const flip = async (page: number): Promise<Buffer> => {
      const b = Buffer.from(good);
      b[await damagingPageOffset(good, head, page)]! ^= 0x01;
      return b;
    };
    // The restoring process reads no byte of the index blob: strata-fuse loads its pages.
    const probe = new ProbeStore(c.store);
    await c.strata({ mode: 'lazy', probe }).restoreBackup(h, { dir: c.at('ws-probe') });
    expect(probe.byteReads.map((g) => g.key)).not.toContain(blobKey(m.index!.digest));
    expect(diffTrees(await summarize(c.at('src')), await summarize(c.at('ws-probe')))).toEqual([]);
    await s.unmount(c.at('ws-probe'), { discard: true });

    for (const [what, bytes, msg] of [
      ['truncated', good.subarray(0, good.length - 1), /index blob is \d+ bytes, its head says \d+: truncated or replaced/],
      ['missing', null, /index blob .*No such file/],
      // A flipped byte in a frame either breaks its decompression or its digest: both refuse it.
      ['page 0 damaged', await flip(0), /page 0 of the index (does not match its digest|does not decompress)/],
    ] as Array<[string, Buffer | null, RegExp]>) {
      if (bytes) await writeFile(blobPath, bytes);
      else await rm(blobPath);
      const err = await s.restoreBackup(h, { dir: c.at(`ws-${what.replace(/\W+/g, '-')}`) }).catch((e: Error) => e);
      expect(err, what).toBeInstanceOf(Error);
      expect((err as Error).message, what).toMatch(msg);
      expect(mountsUnder(c.root), what).toEqual([]);
      expect(await s.status(), what).toEqual([]);
    }

    // A page of nodes in the middle of the tree: the root and most files still serve.
    const nodesPages = Math.ceil((HEADER_SIZE + head.nodeCount * NODE_SIZE) / head.pageSize);
    const bad = Math.floor(nodesPages / 2);
    await writeFile(blobPath, await flip(bad));
    const ws = c.at('ws-one-bad-page');
    await s.restoreBackup(h, { dir: ws });
    const src = await summarize(c.at('src'));
    let failed = 0;
    let served = 0;
    // Every file of the source, by its path: a directory whose children sit in the damaged page
    // fails its lookups too.
    for (const d of await readdir(c.at('src'))) {
      for (const f of await readdir(join(c.at('src'), d, 'lib'))) {
        const got = await readFile(join(ws, d, 'lib', f)).catch((e: NodeJS.ErrnoException) => e);
        if (got instanceof Error) {
          expect(got.code, f).toBe('EIO');
          failed++;
        } else {
          expect(createHash('sha256').update(got).digest('hex'), f).toBe(createHash('sha256').update(await readFile(join(c.at('src'), d, 'lib', f))).digest('hex'));
          served++;
        }
      }
    }
    expect(failed, 'the damaged page fails the reads that need it').toBeGreaterThan(0);
    expect(served, 'the others still serve').toBeGreaterThan(0);
    expect(served + failed).toBe([...src.keys()].filter((k) => k.includes('/lib/')).length);
    expect(await readFile(join(c.root, 'home', 'run', 'daemon.log'), 'utf8')).toMatch(new RegExp(`page ${bad} of the index (does not match its digest|does not decompress)`));
    await s.unmount(ws, { discard: true });
    await writeFile(blobPath, good);
  });

  it('a paged index: strata-fuse writes the whole index once it has every page; the daemon adopts the view and reports it; the next backup stacks on it without fetching the index', async () => {
    const c = await newCase();
    await manyFiles(c.at('src'), 1500);
    const s = c.strata({ mode: 'lazy' });
    const h = await withPageKb(4, () => s.createBackup({ dir: c.at('src') }));
    const m = await manifestOf(c, h);
    expect(m.index!.head).toBeDefined();
    const ws = c.at('ws');
    await s.restoreBackup(h, { dir: ws });
    const st = (await s.status(ws))[0]!;
    const mountIndex = join(c.root, 'home', 'workspaces', st.workspace, 'mount.index');
    let written: Buffer | undefined;
    for (let i = 0; i < 200 && !written; i++) {
      written = await readFile(mountIndex).catch(() => undefined);
      if (!written) await new Promise((r) => setTimeout(r, 50));
    }
    expect(written, 'strata-fuse wrote mount.index').toBeDefined();
    expect(written!.equals(await fetchIndex(c.store, m.index!)), 'the index its pages make').toBe(true);
    const lazy = (await s.status(ws))[0]!.lazy!;
    expect(lazy.errors ?? []).toEqual([]);
    expect(lazy.chunks).toBe(RestoreIndex.parse(written!).chunkCount);
    await writeFile(join(ws, 'pkg-1', 'lib', 'edited.js'), 'edited\n');
    const probe = new ProbeStore(c.store);
    const next = await withPageKb(4, () => c.strata({ mode: 'lazy', probe }).createBackup({ dir: ws }));
    expect(probe.gets.map((g) => g.key), 'the base came from mount.index').not.toContain(blobKey(m.index!.digest));
    await s.restoreBackup(next, { dir: c.at('fork') });
    expect(diffTrees(await summarize(ws), await summarize(c.at('fork')))).toEqual([]);
    // A view the daemon serves (STRATA_DETACHED=0): the paged index is fetched whole first.
    process.env.STRATA_DETACHED = '0';
    try {
      await s.restoreBackup(h, { dir: c.at('daemon-served') });
    } finally {
      delete process.env.STRATA_DETACHED;
    }
    expect(diffTrees(await summarize(c.at('src')), await summarize(c.at('daemon-served')))).toEqual([]);
    for (const d of [ws, c.at('fork'), c.at('daemon-served')]) await s.unmount(d, { discard: true });
  });

  it('strata-fuse validates a paged index node by node: hostile contents fail the requests that reach them and the whole index is never written out', async () => {
    const { c, raw, mp } = await hostileCase();
    const layers = RestoreIndex.parse(raw).layerCount;
    for (const [what, hostile, msg] of hostileIndexes(raw).filter(([w]) => !/header|version/.test(w))) {
      const { blob, desc } = await packIndex(hostile, 4096, 0);
      expect(desc.head, what).toBeDefined();
      await writeFile(c.at('x.blob'), blob);
      await writeFile(c.at('x.head'), Buffer.from(desc.head!, 'base64'));
      await rm(c.at('x.index'), { force: true });
      const child = spawn(defaultFuseBinary(), ['--index-head', c.at('x.head'), '--index-out', c.at('x.index'), '--blob', `${layers}=${c.at('x.blob')}`, '--cache', c.at('cache'), '--socket', c.at('none.sock'), '--ready-fd', '3', '--foreground', mp], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
      const ready = await new Promise<boolean>((res) => {
        // "pid N" comes first; "ready" once mounted.
        let said = '';
        child.stdio[3]!.on('data', (b: Buffer) => {
          said += b.toString();
          if (said.includes('ready\n')) res(true);
        });
        child.on('exit', () => res(false));
      });
      if (ready) {
        // Mounted: the root passed. Walking everything reaches the hostile node and fails there.
        const walk = await run('sh', ['-c', `find ${mp} -type f -exec cat {} + > /dev/null`]).then(() => 'ok', () => 'failed');
        expect(walk, what).toBe('failed');
        await run('umount', [mp]);
        await new Promise((res) => (child.exitCode !== null ? res(null) : child.on('exit', res)));
      }
      expect(stderr, what).toMatch(msg);
      expect(mountsUnder(mp), what).toEqual([]);
      expect(await stat(c.at('x.index')).then(() => true, () => false), `${what}: no whole index written`).toBe(false);
    }
  });

  it('an index whose digest matches but whose contents are hostile is refused by strata-fuse', async () => {
    const c = await newCase();
    await makeBaseTree(c.at('src'));
    const s = c.strata({ mode: 'lazy' });
    const h = await s.createBackup({ dir: c.at('src') });
    const m = await manifestOf(c, h);
    const raw = await fetchIndex(c.store, m.index!);
    for (const [what, hostile, msg] of hostileIndexes(raw)) {
      // A manifest of the same layers naming the hostile index, packed and digested correctly.
      const { blob, desc } = await packIndex(hostile);
      if (!desc.inline) await c.store.putBytes(blobKey(desc.digest), blob);
      const id = `hostile-${what.replace(/\W+/g, '-')}`;
      await putManifest(c.store, { ...m, id, index: desc });
      const err = await s.restoreBackup(id, { dir: c.at(id) }).catch((e: Error) => e);
      expect(err, what).toBeInstanceOf(Error);
      expect((err as Error).message, what).toMatch(msg);
      expect(mountsUnder(c.root), what).toEqual([]);
      expect(await s.status(), what).toEqual([]);
    }
  });

  it('strata-fuse refuses hostile indexes before mounting: loops, bad names, out-of-range references, bad frames', async () => {
    const { c, raw, mp } = await hostileCase();
    for (const [what, hostile, msg] of hostileIndexes(raw)) {
      await writeFile(c.at('x.index'), hostile);
      const r = await run(defaultFuseBinary(), ['--index', c.at('x.index'), '--cache', c.at('cache'), '--socket', c.at('none.sock'), '--foreground', mp]).catch((e: { code: number; stderr: string }) => e);
      expect((r as { code: number }).code, what).toBe(1);
      expect((r as { stderr: string }).stderr, what).toMatch(msg);
      expect(mountsUnder(mp), what).toEqual([]);
    }
  });
});

/** A backup's index, a mountpoint and a cache directory, for strata-fuse to be handed hostile variants. */
async function hostileCase(): Promise<{ c: Case; raw: Buffer; mp: string }> {
  const c = await newCase();
  await makeBaseTree(c.at('src'));
  const h = await c.strata().createBackup({ dir: c.at('src') });
  const raw = await fetchIndex(c.store, (await manifestOf(c, h)).index!);
  const mp = c.at('mnt');
  await mkdir(mp);
  await mkdir(c.at('cache'));
  return { c, raw, mp };
}

/** Variants of a valid index, each broken in one way a hostile store could choose. */
function hostileIndexes(raw: Buffer): Array<[string, Buffer, RegExp]> {
  const ix = RestoreIndex.parse(raw);
  const u64 = (o: number): number => Number(raw.readBigUInt64LE(o));
  const nodesOff = u64(LAYOUT.header.offsets.nodes_off);
  const direntsOff = u64(LAYOUT.header.offsets.dirents_off);
  const chunksOff = u64(LAYOUT.header.offsets.chunks_off);
  const stringsOff = u64(LAYOUT.header.offsets.strings_off);
  const node = (i: number) => nodesOff + i * NODE_SIZE;
  const isDir = (i: number): boolean => (raw.readUInt32LE(node(i)) & 0o170000) === 0o040000;
  // A subdirectory of the root that has a subdirectory itself (dir1/sub in the base tree).
  let sub = -1;
  let subsub = -1;
  for (let i = 1; i < ix.nodeCount && subsub < 0; i++) {
    if (!isDir(i) || raw.readUInt32LE(node(i) + LAYOUT.node.offsets.parent) !== 1) continue;
    const first = raw.readUInt32LE(node(i) + LAYOUT.node.offsets.first);
    const count = raw.readUInt32LE(node(i) + LAYOUT.node.offsets.count);
    for (let k = first; k < first + count; k++) {
      const ino = raw.readUInt32LE(direntsOff + k * DIRENT_SIZE + 12);
      if (isDir(ino - 1)) {
        sub = i;
        subsub = k;
        break;
      }
    }
  }
  if (subsub < 0) throw new Error('test tree has no nested directory');
  const patch = (f: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(raw);
    f(b);
    return b;
  };
  const rootFirst = raw.readUInt32LE(node(0) + LAYOUT.node.offsets.first);
  const nameOff = u64(direntsOff + rootFirst * DIRENT_SIZE);
  return [
    // dir1/sub's dirent names dir1 itself: a directory inside itself.
    ['a directory loop', patch((b) => b.writeUInt32LE(sub + 1, direntsOff + subsub * DIRENT_SIZE + 12)), /names directory|named by more than one|not an earlier node|parent/],
    ['a dirent naming an inode past the end', patch((b) => b.writeUInt32LE(ix.nodeCount + 5, direntsOff + rootFirst * DIRENT_SIZE + 12)), /bad inode|out of range|dirent/],
    ['a name with a slash', patch((b) => b.write('/', stringsOff + nameOff, 'latin1')), /bad name/],
    ['a chunk naming a digest past the table', patch((b) => b.writeUInt32LE(ix.digestCount + 1, chunksOff + LAYOUT.chunk.offsets.digest)), /digest \d+ out of range/],
    ['a chunk whose bytes lie outside its frame', patch((b) => b.writeUInt32LE(b.readUInt32LE(chunksOff + LAYOUT.chunk.offsets.frame_size), chunksOff + LAYOUT.chunk.offsets.frame_off)), /outside its .*frame/],
    ['a header that claims more nodes than the file holds', patch((b) => b.writeUInt32LE(ix.nodeCount * 1000, LAYOUT.header.offsets.node_count)), /truncated or inconsistent/],
    ['an index of the previous version', patch((b) => b.writeUInt32LE(1, 8)), /version 1, expected 2/],
  ].map(([w, b, m]) => [w as string, b as Buffer, m as RegExp]) satisfies Array<[string, Buffer, RegExp]>;
}
