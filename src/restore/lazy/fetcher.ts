/**
 * The fetcher: brings chunks into the cache when strata-fuse misses them. It listens on a unix
 * socket (wire format in native/fuse/sx_format.h and docs/lazy.md) and may serve any number of
 * mounts of any backups, keyed by layer digest; a chunk several mounts ask for is fetched once.
 *
 * Misses are queued by priority (on-demand reads, then readahead, then background hydration), and
 * each GET covers a span of the layer blob: the chunk asked for plus queued neighbours whose frames
 * lie within maxGap bytes, up to maxSpan. Every chunk is verified (decodeChunk: size and sha256)
 * before it reaches the cache; a mismatch answers EIO and nothing is written. A GET that stalls,
 * fails or returns short is retried with exponential backoff; a request still unanswered at its
 * deadline gets EIO, and the failure is logged with the blob and range.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { chmod, rm } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { DigestMismatchError, InvalidLayerError } from '../../errors.js';
import { codecFor, type Codec } from '../../format/codec.js';
import { layerKey, decodeChunk, type LayerDescriptor } from '../../format/reader.js';
import { span } from '../../util/trace.js';
import { type Chunk, MAX_CHUNK_SIZE, parseDigest } from '../../format/toc.js';
import type { ObjectStore } from '../../store/store.js';
import { ChunkCache, type ChunkCacheStats } from './cache.js';
import type { ViewChunk } from '../../format/restore-index.js';

export const MSG_MAGIC = 0x31465853; // "SXF1"
export const RESP_MAGIC = 0x31525853; // "SXR1"
export const MSG_FETCH = 1;
export const MSG_TOUCH = 2;
export const MSG_HEADER_SIZE = 24;
export const REF_SIZE = 80;
export const RESP_SIZE = 16;
export const MAX_REFS = 1024;
const EIO = 5;

/** Priorities: lower runs first. */
const DEMAND = 0;
const READAHEAD = 1;
const HYDRATE = 2;
type Priority = typeof DEMAND | typeof READAHEAD | typeof HYDRATE;

export interface FetcherOptions {
  /** GETs in flight at once (default 8). */
  concurrency?: number;
  /** GET slots background work (readahead, hydration) leaves free for on-demand reads (default 1). */
  reservedSlots?: number;
  /**
   * GETs background hydration may have in flight (default 3). Three spans of maxSpan keep a
   * 100 MB/s link with a 40 ms round trip full; more only take bandwidth and CPU from reads
   * that block a process.
   */
  hydrateSlots?: number;
  /** Frames this close in the blob are fetched in one GET (default 256 KiB). */
  maxGap?: number;
  /** Largest GET (default 8 MiB). */
  maxSpan?: number;
  /** Bytes of the following chunks in the layer fetched along with an on-demand miss (default 4 MiB; 0 = off). */
  readahead?: number;
  /**
   * Most bytes past the seed that the GET a blocked reader waits for may carry (default 256 KiB):
   * the rest of its readahead goes in GETs of its own, at once, in other slots. Over a 100 MB/s
   * link 4 MiB more in the reader's GET would cost it 40 ms.
   */
  demandSpan?: number;
  /** A request not answered by then gets EIO (default 30 s). */
  deadlineMs?: number;
  /** A GET that delivers no byte for this long is abandoned and retried (default 10 s). */
  stallTimeoutMs?: number;
  /** Attempts per chunk (default 4). */
  attempts?: number;
  /** First retry delay, doubled each time (default 100 ms). */
  backoffMs?: number;
  /** Where failures are reported (default: stderr). */
  log?: (msg: string) => void;
}

export interface FetcherStartOptions extends FetcherOptions {
  socketPath: string;
  /** A cache to use, or where to open one. */
  cache?: ChunkCache;
  cacheDir?: string;
  /** Budget when opening the cache here (default 4 GiB). */
  cacheBytes?: number;
}

export interface FetcherStats {
  /** FETCH messages answered. */
  requests: number;
  /** Chunks they asked for that were already cached (a race with another reader). */
  hits: number;
  /** Chunks they asked for that had to be fetched. */
  misses: number;
  /** Chunks answered EIO (failed fetch, bad digest, deadline). */
  errors: number;
  /** Bytes received from the store. */
  bytesFetched: number;
  /** Ranged GETs issued. */
  gets: number;
  /** Chunks strata-fuse served from the cache and reported. */
  touches: number;
  /** Chunks written to the cache. */
  chunksFetched: number;
  inflight: number;
  cache: ChunkCacheStats;
}

/** A chunk as the socket names it: layer and chunk by digest (hex), plus where its frame is. */
export interface ChunkRef {
  layer: string;
  digest: string;
  blobOffset: number;
  blobLength: number;
  size: number;
}

export interface HydrateResult {
  chunks: number;
  alreadyCached: number;
  fetched: number;
  failed: number;
}

interface LayerState {
  store: ObjectStore;
  desc: LayerDescriptor;
  codec: Codec;
  key: string;
  /** Chunks of the layer the registered views read, by blob offset: readahead follows it. */
  order: ChunkRef[];
  /** False when chunks were appended since order was last sorted. */
  sorted: boolean;
  refs: number;
}

interface Job {
  ref: ChunkRef;
  layer: LayerState;
  prio: Priority;
  state: 'queued' | 'fetching' | 'backoff' | 'done';
  waiters: number;
  attempts: number;
  lastError?: unknown;
  /** False once settled or given up on: a late result is still cached, but nobody waits for it. */
  attached: boolean;
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

function refOf(layerHex: string, c: Chunk): ChunkRef {
  // The fetcher and cache deal in whole frames: a shared frame is one cache entry.
  return { layer: layerHex, digest: parseDigest(c.digest), blobOffset: c.blobOffset, blobLength: c.blobLength, size: c.frameSize ?? c.size };
}

const range = (r: ChunkRef): string => `bytes ${r.blobOffset}-${r.blobOffset + r.blobLength - 1}`;

class StallError extends Error {}

export class Fetcher {
  readonly socketPath: string;
  readonly cache: ChunkCache;
  private readonly opts: Required<Omit<FetcherOptions, 'log'>>;
  private readonly log: (msg: string) => void;
  private readonly layers = new Map<string, LayerState>();
  private readonly inflight = new Map<string, Job>();
  /** Per priority, jobs in arrival order (lazy deletion: entries no longer queued are skipped). */
  private readonly fifo: Job[][] = [[], [], []];
  private readonly fifoHead = [0, 0, 0];
  /** Per layer, queued jobs by blob offset, for building spans. */
  private readonly queued = new Map<string, Job[]>();
  private active = 0;
  /** GETs in flight per priority of the job that seeded them. */
  private readonly activeBy = [0, 0, 0];
  private closed = false;
  private server?: Server;
  private readonly sockets = new Set<Socket>();
  private readonly accessListeners = new Set<(digestHex: string) => void>();
  private readonly counters = { requests: 0, hits: 0, misses: 0, errors: 0, bytesFetched: 0, gets: 0, touches: 0, chunksFetched: 0 };

  private constructor(socketPath: string, cache: ChunkCache, opts: FetcherOptions) {
    this.socketPath = socketPath;
    this.cache = cache;
    this.log = opts.log ?? ((m) => process.stderr.write(`strata fetcher: ${m}\n`));
    this.opts = {
      concurrency: opts.concurrency ?? 8,
      reservedSlots: opts.reservedSlots ?? 1,
      hydrateSlots: Math.max(1, opts.hydrateSlots ?? 3),
      maxGap: opts.maxGap ?? 256 * 1024,
      maxSpan: opts.maxSpan ?? 8 * 1024 * 1024,
      readahead: opts.readahead ?? 4 * 1024 * 1024,
      demandSpan: opts.demandSpan ?? 256 * 1024,
      deadlineMs: opts.deadlineMs ?? 30_000,
      stallTimeoutMs: opts.stallTimeoutMs ?? 10_000,
      attempts: opts.attempts ?? 4,
      backoffMs: opts.backoffMs ?? 100,
    };
    if (this.opts.concurrency < 1) throw new Error('fetcher concurrency must be at least 1');
    this.opts.reservedSlots = Math.min(this.opts.reservedSlots, this.opts.concurrency - 1);
  }

  /** Open the cache (unless given) and listen on the socket (a stale socket file is replaced). */
  static async start(o: FetcherStartOptions): Promise<Fetcher> {
    let cache = o.cache;
    if (!cache) {
      if (!o.cacheDir) throw new Error('Fetcher.start needs a cache or a cacheDir');
      cache = await ChunkCache.open(o.cacheDir, { maxBytes: o.cacheBytes ?? 4 * 1024 ** 3 });
    }
    const f = new Fetcher(o.socketPath, cache, o);
    await f.listen();
    return f;
  }

  private async listen(): Promise<void> {
    await rm(this.socketPath, { force: true });
    const server = createServer((s) => this.serve(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log(`socket ${this.socketPath}: ${err.message}`));
    // Chunks of any mounted backup can be asked for through it: owner only.
    await chmod(this.socketPath, 0o600);
    this.server = server;
  }

  /**
   * Call fn with the digest (hex) of every chunk strata-fuse reads, cached or not: what a workload
   * reads first after a restore (prioritized files). Returns the matching unsubscribe.
   */
  onAccess(fn: (digestHex: string) => void): () => void {
    this.accessListeners.add(fn);
    return () => this.accessListeners.delete(fn);
  }

  private readonly demandIdle: Array<() => void> = [];

  /** Resolves once no GET a blocked reader waits for is in flight (at once if none is). */
  whenNoDemand(): Promise<void> {
    if (this.activeBy[DEMAND] === 0) return Promise.resolve();
    return new Promise((r) => this.demandIdle.push(r));
  }

  /** Make layers fetchable; chunks (the view's) guide readahead. Returns the matching unregister. */
  register(store: ObjectStore, layers: LayerDescriptor[], chunks: ViewChunk[] = []): () => void {
    const hexes = layers.map((d) => parseDigest(d.digest));
    hexes.forEach((hex, i) => {
      let st = this.layers.get(hex);
      if (!st) {
        const desc = layers[i]!;
        st = { store, desc, codec: codecFor(desc.codec), key: layerKey(desc), order: [], sorted: true, refs: 0 };
        this.layers.set(hex, st);
      }
      st.refs++;
    });
    this.addChunks(layers, chunks);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      for (const hex of hexes) {
        const st = this.layers.get(hex);
        if (st && --st.refs === 0) this.layers.delete(hex);
      }
    };
  }

  /**
   * The chunks of a registered view, in blob order per layer: readahead follows them. Separate
   * from register so a mount can answer before its chunk list is decoded.
   */
  addChunks(layers: LayerDescriptor[], chunks: ViewChunk[]): void {
    const hexes = layers.map((d) => parseDigest(d.digest));
    const add = new Map<string, ChunkRef[]>();
    for (const { layer, chunk } of chunks) {
      const hex = hexes[layer];
      if (hex === undefined) continue;
      const list = add.get(hex) ?? [];
      list.push(refOf(hex, chunk));
      add.set(hex, list);
    }
    for (const [hex, list] of add) {
      const st = this.layers.get(hex);
      if (!st) continue; // unregistered meanwhile
      // Appended now, sorted (and deduplicated) when readahead next needs the order: a mount
      // adding its chunks in slices costs one sort, not one per slice.
      for (const r of list) st.order.push(r);
      st.sorted = false;
    }
  }

  stats(): FetcherStats {
    return { ...this.counters, inflight: this.inflight.size, cache: this.cache.stats() };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    await rm(this.socketPath, { force: true });
    for (const job of this.inflight.values()) this.settle(job, new Error('fetcher closed'));
  }

  // ---- socket -------------------------------------------------------------------------------

  private serve(s: Socket): void {
    this.sockets.add(s);
    let buf: Buffer = Buffer.alloc(0);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
    s.on('data', (piece: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, piece]) : piece;
      while (buf.length >= MSG_HEADER_SIZE) {
        const magic = buf.readUInt32LE(0);
        const type = buf.readUInt32LE(4);
        const count = buf.readUInt32LE(16);
        if (magic !== MSG_MAGIC || (type !== MSG_FETCH && type !== MSG_TOUCH) || count > MAX_REFS) {
          this.log('malformed message on the socket; closing that connection');
          s.destroy();
          return;
        }
        const len = MSG_HEADER_SIZE + count * REF_SIZE;
        if (buf.length < len) break;
        const id = buf.readBigUInt64LE(8);
        const refs: ChunkRef[] = [];
        for (let k = 0; k < count; k++) {
          const o = MSG_HEADER_SIZE + k * REF_SIZE;
          refs.push({
            layer: buf.toString('hex', o, o + 32),
            digest: buf.toString('hex', o + 32, o + 64),
            blobOffset: Number(buf.readBigUInt64LE(o + 64)),
            blobLength: buf.readUInt32LE(o + 72),
            size: buf.readUInt32LE(o + 76),
          });
        }
        buf = buf.subarray(len);
        for (const fn of this.accessListeners) for (const r of refs) fn(r.digest);
        if (type === MSG_TOUCH) {
          for (const r of refs) this.cache.touch(r.digest);
          this.counters.touches += refs.length;
          continue;
        }
        void this.answer(refs).then((status) => {
          if (s.destroyed) return;
          const out = Buffer.alloc(RESP_SIZE);
          out.writeUInt32LE(RESP_MAGIC, 0);
          out.writeInt32LE(status, 4);
          out.writeBigUInt64LE(id, 8);
          s.write(out);
        });
      }
    });
  }

  /** 0 once every chunk is in the cache, EIO otherwise; never rejects. */
  private async answer(refs: ChunkRef[]): Promise<number> {
    this.counters.requests++;
    try {
      await this.fetchRefs(refs, DEMAND, this.opts.deadlineMs);
      return 0;
    } catch {
      return EIO;
    }
  }

  // ---- scheduling -----------------------------------------------------------------------------

  /**
   * Bring refs into the cache at a priority, waiting at most deadlineMs (Infinity: no deadline).
   * Rejects with the first failure; failures are counted and logged here.
   */
  private async fetchRefs(refs: ChunkRef[], prio: Priority, deadlineMs: number): Promise<{ cached: number; fetched: number }> {
    const tr = prio === DEMAND ? span(`fetch ${refs.length} ref(s)`) : undefined;
    const jobs: Job[] = [];
    let cached = 0;
    let firstError: unknown;
    await Promise.all(
      refs.map(async (r) => {
        // A read that missed checks the disk (the file may have gone); background work trusts
        // the cache's own account and saves a stat per chunk.
        if (prio === DEMAND ? await this.cache.present(r.digest) : this.cache.has(r.digest)) {
          cached++;
          if (prio === DEMAND) this.counters.hits++;
          return;
        }
        if (prio === DEMAND) this.counters.misses++;
        const err = this.check(r);
        if (err) {
          firstError ??= err;
          this.fail(r, err);
          return;
        }
        jobs.push(this.want(r, prio));
        if (prio === DEMAND) this.readaheadAfter(r);
      }),
    );
    tr?.step(`checked, ${jobs.length} to fetch`);
    this.pump();
    if (firstError) {
      for (const j of jobs) this.unwait(j);
      throw firstError;
    }
    let timer: NodeJS.Timeout | undefined;
    const deadline =
      deadlineMs === Infinity
        ? null
        : new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new DeadlineError()), deadlineMs);
          });
    const results = Promise.allSettled(jobs.map((j) => j.promise));
    try {
      const settled = deadline ? await Promise.race([results, deadline]) : await results;
      const bad = settled.find((s) => s.status === 'rejected');
      if (bad) throw (bad as PromiseRejectedResult).reason;
      tr?.step('answered');
      return { cached, fetched: jobs.length };
    } catch (err) {
      if (err instanceof DeadlineError) {
        for (const j of jobs) {
          if (j.state !== 'done') this.fail(j.ref, new Error(`no answer within ${deadlineMs} ms${j.lastError ? ` (last error: ${(j.lastError as Error).message})` : ''}`), j.layer);
        }
      }
      throw err;
    } finally {
      clearTimeout(timer);
      for (const j of jobs) this.unwait(j);
    }
  }

  /** A reference strata-fuse sent must name a registered layer and a plausible frame. */
  private check(r: ChunkRef): Error | undefined {
    const st = this.layers.get(r.layer);
    if (!st) return new Error(`layer sha256:${r.layer} is not registered with this fetcher`);
    if (r.size < 1 || r.size > MAX_CHUNK_SIZE || r.blobLength < 1 || r.blobLength > 2 * MAX_CHUNK_SIZE || r.blobOffset + r.blobLength > st.desc.size) {
      return new InvalidLayerError(`chunk sha256:${r.digest} claims ${range(r)} of ${st.key}, outside the blob`);
    }
    return undefined;
  }

  private fail(r: ChunkRef, err: unknown, layer = this.layers.get(r.layer)): void {
    this.counters.errors++;
    this.log(`chunk sha256:${r.digest} (${layer ? layer.key : `layer ${r.layer}`} ${range(r)}) failed: ${(err as Error).message}`);
  }

  private want(r: ChunkRef, prio: Priority): Job {
    let job = this.inflight.get(r.digest);
    if (!job) {
      let resolve!: () => void;
      let reject!: (err: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      promise.catch(() => undefined); // readahead jobs may have no waiter
      job = { ref: r, layer: this.layers.get(r.layer)!, prio, state: 'queued', waiters: 0, attempts: 0, attached: true, promise, resolve, reject };
      this.inflight.set(r.digest, job);
      this.enqueue(job);
    } else if (prio < job.prio) {
      job.prio = prio;
      // Jump the queue: the older, lower-priority FIFO entry is skipped once this one runs.
      if (job.state === 'queued') this.fifo[prio]!.push(job);
    }
    job.waiters++;
    return job;
  }

  /** A waiter leaves; an on-demand job nobody waits for any more is dropped if it has not started. */
  private unwait(job: Job): void {
    job.waiters--;
    if (job.waiters > 0 || job.state === 'done' || job.prio !== DEMAND) return;
    if (job.state === 'queued') this.dequeue(job);
    if (job.state !== 'fetching') this.settle(job, new Error('abandoned'));
    else {
      // Let the GET finish into the cache, but a new request starts afresh.
      if (this.inflight.get(job.ref.digest) === job) this.inflight.delete(job.ref.digest);
      job.attached = false;
    }
  }

  private readaheadAfter(r: ChunkRef): void {
    if (this.opts.readahead <= 0) return;
    const st = this.layers.get(r.layer);
    if (!st || st.order.length === 0) return;
    if (!st.sorted) {
      const byOffset = new Map(st.order.map((x) => [x.blobOffset, x]));
      st.order = [...byOffset.values()].sort((a, b) => a.blobOffset - b.blobOffset);
      st.sorted = true;
    }
    const order = st.order;
    let lo = 0;
    let hi = order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (order[mid]!.blobOffset <= r.blobOffset) lo = mid + 1;
      else hi = mid;
    }
    let budget = this.opts.readahead;
    for (let i = lo; i < order.length && budget > 0; i++) {
      const next = order[i]!;
      // Small neighbours are what readahead is for; a chunk larger than what is left of the
      // budget ends it (reading a 6-byte file must not pull in a 4 MiB chunk of the next one).
      if (next.size > budget) break;
      budget -= next.size;
      if (this.inflight.has(next.digest) || this.cache.has(next.digest)) continue;
      const job = this.want(next, READAHEAD);
      job.waiters--; // nobody waits on readahead
    }
  }

  private enqueue(job: Job): void {
    job.state = 'queued';
    this.fifo[job.prio]!.push(job);
    const list = this.queued.get(job.ref.layer) ?? [];
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid]!.ref.blobOffset < job.ref.blobOffset) lo = mid + 1;
      else hi = mid;
    }
    list.splice(lo, 0, job);
    this.queued.set(job.ref.layer, list);
  }

  private dequeue(job: Job): void {
    const list = this.queued.get(job.ref.layer);
    const i = list ? list.indexOf(job) : -1;
    if (list && i >= 0) {
      list.splice(i, 1);
      if (list.length === 0) this.queued.delete(job.ref.layer);
    }
    job.state = 'backoff';
  }

  private nextSeed(): Job | undefined {
    for (let p = 0; p < 3; p++) {
      // Background work leaves reservedSlots free for reads that block a process.
      if (p > DEMAND && this.active >= this.opts.concurrency - this.opts.reservedSlots) return undefined;
      if (p === HYDRATE && this.activeBy[HYDRATE]! >= this.opts.hydrateSlots) return undefined;
      const q = this.fifo[p]!;
      while (this.fifoHead[p]! < q.length) {
        const job = q[this.fifoHead[p]!++]!;
        if (job.state === 'queued' && job.prio === p) return job;
      }
      q.length = 0;
      this.fifoHead[p] = 0;
    }
    return undefined;
  }

  private pump(): void {
    while (!this.closed && this.active < this.opts.concurrency) {
      const seed = this.nextSeed();
      if (!seed) return;
      const list = this.queued.get(seed.ref.layer)!;
      let i = list.indexOf(seed);
      let j = i;
      let start = seed.ref.blobOffset;
      let end = start + seed.ref.blobLength;
      const { maxGap } = this.opts;
      // A read that blocks a process waits for its whole GET: it takes its readahead along, not
      // maxSpan of queued background neighbours (those are a hydration slot's work).
      const maxSpan = seed.prio === DEMAND ? Math.min(this.opts.maxSpan, seed.ref.blobLength + Math.min(this.opts.readahead, this.opts.demandSpan)) : this.opts.maxSpan;
      while (j + 1 < list.length) {
        const n = list[j + 1]!.ref;
        if (n.blobOffset < end || n.blobOffset - end > maxGap || n.blobOffset + n.blobLength - start > maxSpan) break;
        end = n.blobOffset + n.blobLength;
        j++;
      }
      while (i > 0) {
        const p = list[i - 1]!.ref;
        if (p.blobOffset + p.blobLength > start || start - (p.blobOffset + p.blobLength) > maxGap || end - p.blobOffset > maxSpan) break;
        start = p.blobOffset;
        i--;
      }
      const jobs = list.splice(i, j - i + 1);
      if (list.length === 0) this.queued.delete(seed.ref.layer);
      for (const job of jobs) job.state = 'fetching';
      const prio = seed.prio;
      this.active++;
      this.activeBy[prio]!++;
      void this.runSpan(seed.layer, start, end, jobs).finally(() => {
        this.active--;
        this.activeBy[prio]!--;
        this.pump();
        if (this.activeBy[DEMAND] === 0) for (const fn of this.demandIdle.splice(0)) fn();
      });
    }
  }

  // ---- fetching -------------------------------------------------------------------------------

  private async runSpan(layer: LayerState, start: number, end: number, jobs: Job[]): Promise<void> {
    this.counters.gets++;
    const tr = jobs.some((j) => j.prio === DEMAND) ? span(`GET ${end - start} bytes, ${jobs.length} chunks`) : undefined;
    let data: Buffer;
    try {
      data = await this.getRange(layer, start, end);
      tr?.step('body read');
    } catch (err) {
      for (const job of jobs) this.retryOrFail(job, err);
      return;
    }
    const one = async (job: Job): Promise<void> => {
        const r = job.ref;
        const frame = data.subarray(r.blobOffset - start, r.blobOffset - start + r.blobLength);
        const chunk: Chunk = { offset: 0, size: r.size, blobOffset: r.blobOffset, blobLength: r.blobLength, digest: `sha256:${r.digest}` };
        try {
          const bytes = await decodeChunk(layer.codec, frame, chunk, layer.key);
          await this.cache.put(r.digest, bytes);
          this.counters.chunksFetched++;
          this.settle(job);
        } catch (err) {
          // Damaged bytes are not retried here: they would be the same bytes again. Never cached.
          if (job.attached) this.fail(r, err, layer);
          this.settle(job, err);
        }
    };
    // The chunks a blocked reader waits for first, alone: their decode and cache writes must not
    // queue in the thread pool behind the span's readahead (measured: a first read answered
    // ~100 ms late on a 4 MiB readahead span of small files).
    await Promise.all(jobs.filter((j) => j.prio === DEMAND).map(one));
    tr?.step('demanded chunks cached');
    await Promise.all(jobs.filter((j) => j.prio !== DEMAND).map(one));
    tr?.step('span cached');
  }

  /** One ranged GET read whole, abandoned when no byte arrives for stallTimeoutMs. */
  private getRange(layer: LayerState, start: number, end: number): Promise<Buffer> {
    const stall = this.opts.stallTimeoutMs;
    return new Promise<Buffer>((resolve, reject) => {
      let stream: Readable | undefined;
      let finished = false;
      let timer: NodeJS.Timeout;
      const parts: Buffer[] = [];
      let got = 0;
      const finish = (err: unknown, buf?: Buffer): void => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        if (err) {
          stream?.destroy();
          reject(err);
        } else resolve(buf!);
      };
      const arm = (): void => {
        clearTimeout(timer);
        timer = setTimeout(() => finish(new StallError(`no data for ${stall} ms`)), stall);
      };
      arm();
      layer.store.get(layer.key, { start, end }).then(
        (s) => {
          stream = s;
          if (finished) {
            s.destroy();
            return;
          }
          arm();
          s.on('data', (b: Buffer) => {
            parts.push(b);
            got += b.length;
            this.counters.bytesFetched += b.length;
            arm();
          });
          s.on('error', (err) => finish(err));
          s.on('end', () => {
            if (got !== end - start) finish(new Error(`short read: ${got} of ${end - start} bytes`));
            else finish(undefined, Buffer.concat(parts, got));
          });
        },
        (err) => finish(err),
      );
    });
  }

  private retryOrFail(job: Job, err: unknown): void {
    job.attempts++;
    job.lastError = err;
    if (!job.attached || this.closed) {
      this.settle(job, err);
      return;
    }
    if (err instanceof DigestMismatchError || job.attempts >= this.opts.attempts) {
      this.fail(job.ref, err, job.layer);
      this.settle(job, err);
      return;
    }
    job.state = 'backoff';
    const delay = this.opts.backoffMs * 2 ** (job.attempts - 1);
    setTimeout(() => {
      if (job.state !== 'backoff' || this.closed) return;
      if (!job.attached) return this.settle(job, err);
      this.enqueue(job);
      this.pump();
    }, delay).unref();
  }

  private settle(job: Job, err?: unknown): void {
    if (job.state === 'done') return;
    job.state = 'done';
    if (this.inflight.get(job.ref.digest) === job) this.inflight.delete(job.ref.digest);
    job.attached = false;
    if (err === undefined) job.resolve();
    else job.reject(err);
  }

  // ---- background hydration --------------------------------------------------------------------

  /**
   * Fetch every chunk of chunks not cached yet at background priority: on-demand misses are always
   * served first and keep reservedSlots GET slots to themselves. Resolves when all are attempted.
   */
  async hydrate(layers: LayerDescriptor[], chunks: ViewChunk[], opts: { priority?: 'low' | 'normal'; signal?: AbortSignal } = {}): Promise<HydrateResult> {
    const prio: Priority = opts.priority === 'normal' ? READAHEAD : HYDRATE;
    const hexes = layers.map((d) => parseDigest(d.digest));
    const seen = new Set<string>();
    const refs: ChunkRef[] = [];
    for (const { layer, chunk } of chunks) {
      const r = refOf(hexes[layer]!, chunk);
      if (seen.has(r.digest)) continue;
      seen.add(r.digest);
      refs.push(r);
    }
    // Blob order within each layer: neighbours queue together and are fetched in one GET.
    const layerIndex = new Map(hexes.map((h, i) => [h, i]));
    refs.sort((a, b) => layerIndex.get(a.layer)! - layerIndex.get(b.layer)! || a.blobOffset - b.blobOffset);
    const result: HydrateResult = { chunks: refs.length, alreadyCached: 0, fetched: 0, failed: 0 };
    // A sliding window over the sorted chunks: enough queued at
    // once that the scheduler can cut maxSpan-sized GETs and keep every background slot busy, few
    // enough that an abort stops soon and the queue stays small. (Batches with a barrier between
    // them left the link idle while each batch's last GET finished.)
    const WINDOW_REFS = 4096;
    const WINDOW_BYTES = 4 * this.opts.maxSpan * this.opts.hydrateSlots;
    let next = 0;
    let refsOut = 0;
    let bytesOut = 0;
    await new Promise<void>((resolve) => {
      const fill = (): void => {
        while (next < refs.length && refsOut < WINDOW_REFS && (bytesOut < WINDOW_BYTES || refsOut === 0) && !opts.signal?.aborted && !this.closed) {
          const r = refs[next++]!;
          refsOut++;
          bytesOut += r.blobLength;
          this.fetchRefs([r], prio, Infinity).then(
            ({ cached, fetched }) => {
              result.alreadyCached += cached;
              result.fetched += fetched;
            },
            () => void result.failed++,
          ).finally(() => {
            refsOut--;
            bytesOut -= r.blobLength;
            fill();
          });
        }
        if (refsOut === 0) resolve();
      };
      fill();
    });
    return result;
  }
}

class DeadlineError extends Error {}
