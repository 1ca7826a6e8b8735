/**
 * Extract restores from a remote store: each layer's data GET starts with the TOC's, before the
 * TOC is fetched, verified and decoded and the directories made (half a second at 100k entries),
 * and its first EARLY_BYTES are buffered meanwhile, so the download (what bounds a restore over a
 * network) runs from the first round trip, as a single archive GET would. Local stores read the
 * layer file itself (ObjectStore.openFile) and need none of this.
 */
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { layerKey, type LayerDescriptor } from '../format/reader.js';
import type { ObjectStore } from '../store/store.js';
import { hasLayerDir } from './layers.js';

/** Bytes read ahead of the unpack: ~0.3 s of a 100 MB/s link, and the most it holds in memory. */
export const EARLY_BYTES = 32 * 1024 * 1024;

/** A layer's data region, [0, tocOffset), as a stream being read ahead. */
export type EarlyBody = Promise<Readable>;

/** Data GETs of the layers this host has no directory of yet, keyed by layer digest. */
export class EarlyBodies {
  private readonly bodies = new Map<string, EarlyBody>();

  static async start(store: ObjectStore, home: string, layers: LayerDescriptor[]): Promise<EarlyBodies> {
    const out = new EarlyBodies();
    if (store.openFile) return out;
    for (const d of layers) {
      if (d.tocOffset === 0 || out.bodies.has(d.digest)) continue;
      if (await hasLayerDir(home, d.digest)) continue;
      const body = store.get(layerKey(d), { start: 0, end: d.tocOffset }).then((src) => {
        // The writable side holds the read-ahead; the readable side only what one read takes.
        const buffered = new PassThrough({ writableHighWaterMark: EARLY_BYTES, readableHighWaterMark: 1024 * 1024 });
        // Errors reach the reader through `buffered`; pipeline destroys both on either's end.
        pipeline(src, buffered).catch((err: Error) => buffered.destroy(err));
        return buffered as Readable;
      });
      body.catch(() => undefined); // taken (and awaited) by the unpack, or dropped by close()
      out.bodies.set(d.digest, body);
    }
    return out;
  }

  /** The layer's body, once: the unpack that takes it owns it. */
  take(digest: string): EarlyBody | undefined {
    const b = this.bodies.get(digest);
    this.bodies.delete(digest);
    return b;
  }

  /** Drop the bodies nobody took (a layer another process unpacked first, a failed restore). */
  close(): void {
    for (const b of this.bodies.values()) void b.then((s) => s.destroy(), () => undefined);
    this.bodies.clear();
  }
}
