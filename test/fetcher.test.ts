/**
 * The lazy fetcher's scheduling, without FUSE: background hydration through a real file store
 * (wrapped to record and slow down every GET), and an on-demand miss sent over the fetcher's
 * socket the way strata-fuse sends one.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Strata } from '../src/index.js';
import type { LayerDescriptor } from '../src/format/reader.js';
import { fetchToc } from '../src/store/blobs.js';
import { parseDigest } from '../src/format/toc.js';
import { Fetcher, type FetcherStartOptions, MSG_FETCH, MSG_HEADER_SIZE, MSG_MAGIC, REF_SIZE, RESP_MAGIC, RESP_SIZE } from '../src/restore/lazy/fetcher.js';
import { viewChunks, type ViewChunk } from '../src/format/restore-index.js';
import { buildView } from '../src/format/view.js';
import { FileStore } from '../src/store/file.js';
import { FRAME_BOUND } from '../src/format/writer.js';
import { ProbeStore } from './helpers/probe-store.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let work: string;
let storeDir: string;
let layers: LayerDescriptor[];
let chunks: ViewChunk[];
let uniqueChunks: number;
let n = 0;
const fetchers: Fetcher[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-fetcher-'));
  const src = join(work, 'src');
  // ~2400 small incompressible files (a source tree's shape) and two large ones: ~20 MB of blob.
  for (let d = 0; d < 24; d++) {
    const dir = join(src, `pkg-${String(d).padStart(2, '0')}`);
    await mkdir(dir, { recursive: true });
    for (let f = 0; f < 100; f++) await writeFile(join(dir, `f${String(f).padStart(3, '0')}.js`), randomBytes(1000 + ((d * 100 + f) * 37) % 9000));
  }
  await writeFile(join(src, 'big-a.bin'), randomBytes(3 * MiB));
  await writeFile(join(src, 'big-b.bin'), randomBytes(5 * MiB + 123));
  storeDir = join(work, 'store');
  const strata = new Strata({ home: join(work, 'home'), store: 'file://' + storeDir });
  const handle = await strata.createBackup({ dir: src });
  const { manifest } = await strata.resolve(handle);
  layers = manifest.layers;
  const tocs = await Promise.all(layers.map((l) => fetchToc(strata.store, l)));
  chunks = viewChunks(buildView(tocs));
  uniqueChunks = new Set(chunks.map((c) => c.chunk.digest)).size;
}, 300_000);

afterEach(async () => {
  for (const f of fetchers.splice(0)) await f.close();
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function start(opts: Partial<FetcherStartOptions> = {}): Promise<{ f: Fetcher; store: ProbeStore }> {
  const dir = join(work, `case-${++n}`);
  await mkdir(dir, { recursive: true });
  const f = await Fetcher.start({ socketPath: join(dir, 'fetch.sock'), cacheDir: join(dir, 'cache'), cacheBytes: 1024 * MiB, log: () => undefined, ...opts });
  fetchers.push(f);
  const store = new ProbeStore(new FileStore(storeDir));
  f.register(store, layers, chunks);
  return { f, store };
}

/** Every chunk covered by exactly one GET: nothing fetched twice. */
function coverage(store: ProbeStore): number[] {
  return chunks.map((c) => store.gets.filter((g) => g.start <= c.chunk.blobOffset && c.chunk.blobOffset + c.chunk.blobLength <= g.end).length);
}

describe('background hydration', () => {
  it('fetches every chunk once, in spans, with at most hydrateSlots GETs at a time', async () => {
    const { f, store } = await start({ hydrateSlots: 2, maxSpan: 1 * MiB, concurrency: 8 });
    store.hook = () => sleep(20); // a round trip, so GETs overlap when the fetcher lets them
    const r = await f.hydrate(layers, chunks, { priority: 'low' });
    expect(r).toEqual({ chunks: uniqueChunks, alreadyCached: 0, fetched: uniqueChunks, failed: 0 });
    for (const c of chunks) expect(f.cache.has(c.chunk.digest), c.chunk.digest).toBe(true);
    expect(new Set(coverage(store))).toEqual(new Set([1]));
    // Both hydration slots were used, never more.
    expect(store.maxActive).toBe(2);
    // Spans, not chunks: ~20 MB in 1 MiB spans is a few dozen GETs for ~2400 chunks.
    const blobBytes = layers.reduce((s, l) => s + l.size, 0);
    expect(store.gets.length).toBeLessThanOrEqual(2 * Math.ceil(blobBytes / MiB) + 4);
    expect(f.stats().bytesFetched).toBeLessThanOrEqual(blobBytes);
    // A second pass finds everything cached and fetches nothing.
    const again = await f.hydrate(layers, chunks, { priority: 'low' });
    expect(again).toEqual({ chunks: uniqueChunks, alreadyCached: uniqueChunks, fetched: 0, failed: 0 });
    expect(store.gets.length).toBeLessThanOrEqual(2 * Math.ceil(blobBytes / MiB) + 4);
  });

  it('stops soon after an abort, with most of the work not done', async () => {
    const { f, store } = await start({ hydrateSlots: 1, maxSpan: 256 * KiB });
    store.hook = () => sleep(30);
    const ac = new AbortController();
    const p = f.hydrate(layers, chunks, { priority: 'low', signal: ac.signal });
    while (store.gets.length < 2) await sleep(5);
    ac.abort();
    const r = await p;
    const getsAtEnd = store.gets.length;
    expect(r.fetched + r.alreadyCached + r.failed).toBeLessThan(uniqueChunks / 2);
    await sleep(200);
    // Nothing queued keeps fetching once hydrate() has returned.
    expect(store.gets.length).toBe(getsAtEnd);
  });
});

describe('an on-demand miss during hydration', () => {
  /** Send one FETCH for `c` over the socket, as strata-fuse does; resolves with its status. */
  function fetchOverSocket(socketPath: string, c: ViewChunk): Promise<number> {
    const msg = Buffer.alloc(MSG_HEADER_SIZE + REF_SIZE);
    msg.writeUInt32LE(MSG_MAGIC, 0);
    msg.writeUInt32LE(MSG_FETCH, 4);
    msg.writeBigUInt64LE(77n, 8);
    msg.writeUInt32LE(1, 16);
    const o = MSG_HEADER_SIZE;
    Buffer.from(parseDigest(layers[c.layer]!.digest), 'hex').copy(msg, o);
    Buffer.from(parseDigest(c.chunk.digest), 'hex').copy(msg, o + 32);
    msg.writeBigUInt64LE(BigInt(c.chunk.blobOffset), o + 64);
    msg.writeUInt32LE(c.chunk.blobLength, o + 72);
    msg.writeUInt32LE(c.chunk.size, o + 76);
    return new Promise((resolve, reject) => {
      const s = connect(socketPath);
      let buf = Buffer.alloc(0);
      s.on('error', reject);
      s.on('data', (b: Buffer) => {
        buf = Buffer.concat([buf, b]);
        if (buf.length < RESP_SIZE) return;
        s.destroy();
        if (buf.readUInt32LE(0) !== RESP_MAGIC || buf.readBigUInt64LE(8) !== 77n) reject(new Error('bad response'));
        else resolve(buf.readInt32LE(4));
      });
      s.write(msg);
    });
  }

  it('is answered ahead of queued hydration, in a GET of itself plus readahead only', async () => {
    const readahead = 256 * KiB;
    const { f, store } = await start({ hydrateSlots: 1, maxSpan: 4 * MiB, readahead, concurrency: 4, reservedSlots: 1 });
    store.hook = () => sleep(50);
    let hydrated = false;
    const h = f.hydrate(layers, chunks, { priority: 'low' }).then(() => (hydrated = true));
    while (store.gets.length < 1) await sleep(5);
    // A small-file frame in the middle of the blob: queued for hydration (with its neighbours all
    // around it) but far from what hydration, in blob order, is fetching now.
    const blobEnd = layers[0]!.size;
    const target = chunks.find((c) => c.chunk.blobOffset > blobEnd * 0.6 && c.chunk.size <= 2 * FRAME_BOUND && !f.cache.has(c.chunk.digest))!;
    expect(target, 'a small-file frame past 60% of the blob').toBeDefined();
    const before = store.gets.length;
    const status = await fetchOverSocket(f.socketPath, target);
    expect(status).toBe(0);
    expect(f.cache.has(target.chunk.digest)).toBe(true);
    expect(hydrated).toBe(false);
    const covering = store.gets.slice(before).filter((g) => g.start <= target.chunk.blobOffset && target.chunk.blobOffset + target.chunk.blobLength <= g.end);
    expect(covering.length).toBe(1);
    // The blocked reader did not wait for a maxSpan GET of queued hydration work.
    expect(covering[0]!.end - covering[0]!.start).toBeLessThanOrEqual(target.chunk.blobLength + readahead);
    await h;
    expect(new Set(coverage(store))).toEqual(new Set([1]));
  });
});
