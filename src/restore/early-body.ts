/**
 * Extract restores from a remote store: each layer's data GET starts with the TOC's, before the
 * TOC is fetched, verified and decoded and the directories made (half a second at 100k entries),
 * and its first EARLY_BYTES are buffered meanwhile, so the download (what bounds a restore over a
 * network) runs from the first round trip, as a single archive GET would. Local stores read the
 * layer file itself (ObjectStore.openFile) and need none of this.
 */
import { Readable } from 'node:stream';
import { layerKey, type LayerDescriptor } from '../format/reader.js';
import type { ObjectStore } from '../store/store.js';
import { hasLayerDir } from './layers.js';

/** Bytes read ahead of the unpack: ~0.3 s of a 100 MB/s link, and the most it holds in memory. */
export const EARLY_BYTES = 32 * 1024 * 1024;
/**
 * Bytes read ahead once the unpack reads. Socket chunks that wait longer than a few young-
 * generation collections are promoted, and only a full collection frees their memory: with 32
 * MiB queued all along, a cold extract of a 100k-entry tree ran 24–30 full collections of its
 * ~110 MB heap (TOC and plan) and took 7.8–8.6 s; with 1 MiB, 3 collections and 6.9 s.
 */
export const STEADY_BYTES = 1024 * 1024;

/**
 * A stream that reads `src` ahead of its consumer, up to a limit that can be lowered once the
 * consumer is there (shrink). Bytes, order, end and errors are src's.
 */
export class ReadAhead extends Readable {
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private wanted = false;
  private ended = false;

  constructor(
    private readonly src: Readable,
    private limit: number,
  ) {
    super({ highWaterMark: STEADY_BYTES });
    src.on('data', (b: Buffer) => {
      this.queue.push(b);
      this.queued += b.length;
      if (this.queued >= this.limit) src.pause();
      this.flush();
    });
    src.on('end', () => {
      this.ended = true;
      this.flush();
    });
    src.on('error', (err) => this.destroy(err));
  }

  /** Read ahead at most `limit` bytes from now on. */
  shrink(limit: number): void {
    this.limit = Math.min(this.limit, limit);
    if (this.queued >= this.limit) this.src.pause();
  }

  /** Bytes read from src and not yet taken by the consumer. */
  get buffered(): number {
    return this.queued;
  }

  override _read(): void {
    this.wanted = true;
    this.flush();
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.src.destroy();
    cb(err);
  }

  private flush(): void {
    while (this.wanted && this.queue.length > 0) {
      const b = this.queue.shift()!;
      this.queued -= b.length;
      this.wanted = this.push(b);
    }
    if (this.ended && this.queue.length === 0) {
      this.push(null);
      return;
    }
    if (this.queued < this.limit && this.src.isPaused()) this.src.resume();
  }
}

/** A layer's data region, [0, tocOffset), as a stream being read ahead. */
export type EarlyBody = Promise<Readable>;

/** Data GETs of the layers this host has no directory of yet, keyed by layer digest. */
export class EarlyBodies {
  private readonly bodies = new Map<string, Promise<ReadAhead>>();

  static async start(store: ObjectStore, home: string, layers: LayerDescriptor[]): Promise<EarlyBodies> {
    const out = new EarlyBodies();
    if (store.openFile) return out;
    for (const d of layers) {
      if (d.tocOffset === 0 || out.bodies.has(d.digest)) continue;
      if (await hasLayerDir(home, d.digest)) continue;
      const body = store.get(layerKey(d), { start: 0, end: d.tocOffset }).then((src) => new ReadAhead(src as Readable, EARLY_BYTES));
      body.catch(() => undefined); // taken (and awaited) by the unpack, or dropped by close()
      out.bodies.set(d.digest, body);
    }
    return out;
  }

  /** The layer's body, once: the unpack that takes it owns it, and reads it from now on. */
  take(digest: string): EarlyBody | undefined {
    const b = this.bodies.get(digest);
    this.bodies.delete(digest);
    return b?.then((r) => {
      r.shrink(STEADY_BYTES);
      return r;
    });
  }

  /** Drop the bodies nobody took (a layer another process unpacked first, a failed restore). */
  close(): void {
    for (const b of this.bodies.values()) void b.then((s) => s.destroy(), () => undefined);
    this.bodies.clear();
  }
}
