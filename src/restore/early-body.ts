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
 * The least read ahead once the unpack reads. Socket chunks that wait longer than a few young-
 * generation collections are promoted, and only a full collection frees their memory: with 32
 * MiB queued all along, a cold extract of a 100k-entry tree from the unshaped S3 server (where the
 * unpack, not the link, is the bottleneck) ran 24–30 full collections of its ~110 MB heap (TOC
 * and plan) and took 7.8–8.6 s; with 1 MiB, 3 and 6.9 s. Over a 100 MB/s link 1 MiB all along
 * lost 10–16% instead: the unpack's stalls (directories, a collection) idled the link.
 */
export const STEADY_BYTES = 1024 * 1024;

/**
 * A stream that reads `src` ahead of its consumer. Until reading() it reads up to `early`
 * bytes ahead; from then on its limit adapts between `low` and `early`: halved each time the
 * queue fills up to it (the consumer is the bottleneck, and a queue that stays full only ages its
 * chunks), doubled each time the consumer finds the queue empty (the link is, and the next stall
 * of the consumer needs room). Bytes, order, end and errors are src's.
 */
export class ReadAhead extends Readable {
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private wanted = false;
  private ended = false;
  private adapting = false;
  private current: number;

  constructor(
    private readonly src: Readable,
    private readonly early: number,
    private readonly low: number = STEADY_BYTES,
  ) {
    // A small buffer of its own: what waits, waits in the queue, where the limit sees it.
    super({ highWaterMark: 64 * 1024 });
    this.current = early;
    src.on('data', (b: Buffer) => {
      this.queue.push(b);
      this.queued += b.length;
      if (this.queued >= this.current) {
        if (this.adapting) this.current = Math.max(this.low, this.current / 2);
        src.pause();
      }
      this.flush();
    });
    src.on('end', () => {
      this.ended = true;
      this.flush();
    });
    src.on('error', (err) => this.destroy(err));
  }

  /** The consumer reads from now on: the limit adapts (above). */
  reading(): void {
    this.adapting = true;
  }

  /** Bytes read from src and not yet taken by the consumer. */
  get buffered(): number {
    return this.queued + this.readableLength;
  }

  /** How far ahead it reads now. */
  get limit(): number {
    return this.current;
  }

  override _read(): void {
    this.wanted = true;
    // Nothing held at all: the consumer waits for the source.
    if (this.adapting && this.queue.length === 0 && this.readableLength === 0 && !this.ended) this.current = Math.min(this.early, this.current * 2);
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
    if (this.queued < this.current && this.src.isPaused()) this.src.resume();
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
      r.reading();
      return r;
    });
  }

  /** Drop the bodies nobody took (a layer another process unpacked first, a failed restore). */
  close(): void {
    for (const b of this.bodies.values()) void b.then((s) => s.destroy(), () => undefined);
    this.bodies.clear();
  }
}
