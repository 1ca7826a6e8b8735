/**
 * Reading a backup's blobs from a store, verified: a layer's TOC (one range request), a bare
 * blob's footer, and the restore index a manifest names (inline or one GET).
 */
import { InvalidLayerError, ObjectNotFoundError } from '../errors.js';
import { decodeFooter, FOOTER_READ_SIZE, type Footer } from '../format/footer.js';
import { blobKey, decodeTocFrame, layerKey, type LayerDescriptor } from '../format/reader.js';
import { decodePrefetch, type PrefetchDescriptor, unpackPrefetch } from '../format/prefetch.js';
import { type IndexDescriptor, unpackIndex } from '../format/restore-index.js';
import type { Toc } from '../format/toc.js';
import type { ObjectStore } from './store.js';

/** Fetch and verify a layer's TOC with one range request. */
export async function fetchToc(store: ObjectStore, d: LayerDescriptor): Promise<Toc> {
  const key = layerKey(d);
  if (d.tocOffset + d.tocLength > d.size) throw new InvalidLayerError(`manifest places the TOC of ${key} past its end`);
  const frame = await store.getBytes(key, { start: d.tocOffset, end: d.tocOffset + d.tocLength });
  if (frame.length !== d.tocLength) throw new InvalidLayerError(`short read of the TOC of ${key}`);
  return decodeTocFrame(frame, d, key);
}

/** Locate the TOC of a bare blob through its footer (for blobs without a manifest entry). */
export async function readFooter(store: ObjectStore, key: string, size: number): Promise<Footer> {
  const start = Math.max(0, size - FOOTER_READ_SIZE);
  const tail = await store.getBytes(key, { start, end: size });
  return decodeFooter(tail, size);
}

/**
 * The restore index a manifest names, decompressed and verified (digest, size, header). Inline
 * indexes cost no request; others one GET of the whole blob.
 */
export async function fetchIndex(store: ObjectStore, desc: IndexDescriptor): Promise<Buffer> {
  const key = blobKey(desc.digest);
  let blob: Buffer;
  if (desc.inline !== undefined) blob = Buffer.from(desc.inline, 'base64');
  else {
    try {
      blob = await readAtMost(store, key, desc.size + 1);
    } catch (err) {
      if (err instanceof ObjectNotFoundError) throw new InvalidLayerError(`restore index ${key} of this backup is missing from the store`, { cause: err });
      throw err;
    }
  }
  return unpackIndex(blob, desc, desc.inline !== undefined ? `(inline in the manifest)` : key);
}

/**
 * The prefetch record a manifest names, verified and checked against its chain. Inline records
 * cost no request; others one GET. A record that is missing or damaged only costs its prefetch,
 * so the caller may ignore the error.
 */
export async function fetchPrefetch(store: ObjectStore, desc: PrefetchDescriptor, layers: LayerDescriptor[]): Promise<Buffer> {
  const key = blobKey(desc.digest);
  const blob = desc.inline !== undefined ? Buffer.from(desc.inline, 'base64') : await readAtMost(store, key, desc.size + 1);
  const raw = await unpackPrefetch(blob, desc, desc.inline !== undefined ? '(inline in the manifest)' : key);
  decodePrefetch(raw, layers.map((l) => l.size));
  return raw;
}

/**
 * One whole-object GET, read up to `limit` bytes and then dropped: a blob shorter or longer than
 * its descriptor says is reported by the size check that follows, not by a range error, and a
 * hostile huge object costs at most `limit` bytes of memory.
 */
async function readAtMost(store: ObjectStore, key: string, limit: number): Promise<Buffer> {
  const stream = await store.get(key);
  const parts: Buffer[] = [];
  let got = 0;
  try {
    for await (const piece of stream as AsyncIterable<Buffer>) {
      parts.push(piece);
      got += piece.length;
      if (got >= limit) break;
    }
  } finally {
    stream.destroy();
  }
  return Buffer.concat(parts, Math.min(got, limit));
}
