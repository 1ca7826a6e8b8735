/**
 * The restore index for a backup's chain: the one its backup wrote (inline in the manifest or one
 * GET, verified), else, for backups made before indexes existed, built from the layers' TOCs.
 */
import { readFile } from 'node:fs/promises';
import { InvalidLayerError } from '../errors.js';
import { blobKey, type LayerDescriptor } from '../format/reader.js';
import { decodeHead, encodeIndex, encodeSeed, type IndexDescriptor, type IndexHead, indexedLayers, indexMatchesLayers, RestoreIndex, warmPages } from '../format/restore-index.js';
import type { Toc } from '../format/toc.js';
import { buildView } from '../format/view.js';
import { fetchIndex, fetchToc } from '../store/blobs.js';
import type { ObjectStore } from '../store/store.js';

export interface LoadedIndex {
  raw: Buffer;
  index: RestoreIndex;
  /** 'manifest': the backup's own index; 'tocs': built here from the TOCs. */
  from: 'manifest' | 'tocs';
  /** Chain layers it covers (bottom first); the layers above are the chain's tail. */
  layers: number;
}

/** Encode the index of a chain from its TOCs (bottom first). */
export function indexFromTocs(tocs: Toc[], layers: LayerDescriptor[]): Buffer {
  return encodeIndex(
    buildView(tocs),
    layers.map((l, i) => ({ digest: l.digest, prefetch: tocs[i]?.prefetch })),
  );
}

/**
 * A paged index as a lazy restore takes it: the head the manifest carries, checked against the
 * manifest's chain; nothing fetched (strata-fuse loads the pages).
 */
export function pagedIndex(chain: { layers: LayerDescriptor[]; index?: IndexDescriptor | undefined }): { raw: undefined; index: undefined; head: IndexHead; layers: number; from: 'manifest' } {
  const desc = chain.index;
  if (desc?.head === undefined) throw new InvalidLayerError('this backup has no paged restore index');
  const head = decodeHead(Buffer.from(desc.head, 'base64'), desc);
  const k = indexedLayers(desc, chain.layers.length);
  if (!indexMatchesLayers(head, chain.layers.slice(0, k))) throw new InvalidLayerError('the restore index names other layers than its manifest; the store holds a damaged or tampered backup');
  return { raw: undefined, index: undefined, head, layers: k, from: 'manifest' };
}

/** A workspace's local copy of its view's whole index (mount.index), if it describes these layers. */
export async function readIndexFile(path: string, layers: Array<{ digest: string }>): Promise<RestoreIndex | undefined> {
  try {
    const ix = RestoreIndex.parse(await readFile(path));
    return indexMatchesLayers(ix, layers) ? ix : undefined;
  } catch {
    return undefined; // missing, torn (written unsynced) or of an older strata
  }
}

/** A workspace's copy of its view's paged index head (mount.head), if it describes these layers. */
export async function readHeadFile(path: string, layers: Array<{ digest: string }>): Promise<IndexHead | undefined> {
  try {
    const head = decodeHead(await readFile(path));
    return indexMatchesLayers(head, layers) ? head : undefined;
  } catch {
    return undefined;
  }
}

export async function loadIndex(store: ObjectStore, chain: { layers: LayerDescriptor[]; index?: IndexDescriptor | undefined }, tocs?: Toc[]): Promise<LoadedIndex> {
  if (chain.index) {
    const raw = await fetchIndex(store, chain.index);
    const index = RestoreIndex.parse(raw);
    // The index is named by its manifest's digest, but it must also describe that manifest's
    // chain: a copied-in index of another backup would serve another tree.
    const k = indexedLayers(chain.index, chain.layers.length);
    if (!indexMatchesLayers(index, chain.layers.slice(0, k))) throw new InvalidLayerError('the restore index names other layers than its manifest; the store holds a damaged or tampered backup');
    return { raw, index, from: 'manifest', layers: k };
  }
  const all = tocs ?? (await Promise.all(chain.layers.map((l) => fetchToc(store, l))));
  const raw = indexFromTocs(all, chain.layers);
  return { raw, index: RestoreIndex.parse(raw), from: 'tocs', layers: chain.layers.length };
}

/**
 * The seed of a paged index (strata-fuse --index-seed): the pages its mount needs, fetched here
 * with the store this process already holds, one ranged GET per run of neighbouring pages, all
 * at once. strata-fuse verifies each page as it would a fetched one, so it mounts without a
 * fetch of its own (which waits for libcurl to load: ~20-40 ms of 30 libraries on a cold exec).
 */
export async function fetchIndexSeed(store: ObjectStore, head: IndexHead): Promise<Buffer> {
  const runs: Array<[number, number]> = [];
  for (const p of warmPages(head)) {
    const last = runs[runs.length - 1];
    if (last && last[1] + 1 === p) last[1] = p;
    else runs.push([p, p]);
  }
  const key = blobKey(head.blobDigest);
  const frames = new Map<number, Buffer>();
  await Promise.all(
    runs.map(async ([p0, p1]) => {
      const start = head.pages[p0]!.blobOffset;
      const end = head.pages[p1]!.blobOffset + head.pages[p1]!.blobLength;
      const bytes = await store.getBytes(key, { start, end });
      if (bytes.length !== end - start) throw new InvalidLayerError(`restore index ${key}: ${bytes.length} bytes at ${start}, expected ${end - start}: truncated in the store`);
      for (let p = p0; p <= p1; p++) frames.set(p, bytes.subarray(head.pages[p]!.blobOffset - start, head.pages[p]!.blobOffset - start + head.pages[p]!.blobLength));
    }),
  );
  return encodeSeed(head, frames);
}
