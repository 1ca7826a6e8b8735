/**
 * The restore index a backup writes for its chain. A full backup has one layer; an incremental one
 * stacks its new layer over its parent chain's view, taken from the workspace's own copy of that
 * chain's index, else the parent's index blob, else (older parents) its TOCs.
 *
 * A small incremental layer does not get a new index at all: the backup keeps its parent's index
 * and the layer joins the chain's tail (the layers above what the index covers), which a lazy
 * restore unpacks whole into layer directories stacked over the index's view. Re-indexing the
 * whole chain for a one-file edit would upload megabytes (52 B per entry of the tree) to record a
 * few hundred bytes. The tail is bounded so that unpacking it costs a restore about what the index
 * GET costs anyway; past the bound the backup indexes the whole chain again.
 */
import { readFile } from 'node:fs/promises';
import type { LayerDescriptor } from '../format/reader.js';
import { encodeIndex, type IndexDescriptor, indexedLayers, type IndexLayer, indexMatchesLayers, RestoreIndex } from '../format/restore-index.js';
import type { Toc } from '../format/toc.js';
import { applyToc, type ViewNode } from '../format/view.js';
import { loadIndex } from '../restore/index-source.js';
import { fetchToc } from '../store/blobs.js';
import type { ObjectStore } from '../store/store.js';

/** Bounds of a chain's tail: layers, compressed bytes, entries (all tail layers together). */
export const TAIL_MAX_LAYERS = 4;
export const TAIL_MAX_BYTES = 1 << 20;
export const TAIL_MAX_ENTRIES = 512;

/** A chain's merged view and the index's layer records, ready to stack a layer on. */
export interface ChainView {
  view: ViewNode;
  layers: IndexLayer[];
}

interface Chain {
  layers: LayerDescriptor[];
  index?: IndexDescriptor | undefined;
}

/**
 * The index descriptor a backup adding `added` over `parent` can keep: the parent's, covering the
 * same prefix, when the tail above it stays within bounds. Undefined: index the whole chain.
 * A parent whose index rides inline is indexed again: the new one most likely rides inline too.
 */
export function keptIndex(parent: Chain, added: LayerDescriptor): IndexDescriptor | undefined {
  const ix = parent.index;
  if (!ix || ix.inline !== undefined) return undefined;
  const k = indexedLayers(ix, parent.layers.length);
  const tail = [...parent.layers.slice(k), added];
  const bytes = tail.reduce((n, l) => n + l.size, 0);
  const entries = tail.reduce((n, l) => n + l.entries, 0);
  if (tail.length > TAIL_MAX_LAYERS || bytes > TAIL_MAX_BYTES || entries > TAIL_MAX_ENTRIES) return undefined;
  return { ...ix, layers: k };
}

/** The parent chain's view for an incremental backup, by the cheapest way that is still exact. */
export async function parentChainView(store: ObjectStore, parent: Chain, localIndexes: string[] = []): Promise<ChainView> {
  const k = indexedLayers(parent.index, parent.layers.length);
  let base: ChainView | undefined;
  for (const localIndex of localIndexes) {
    if (base) break;
    const raw = await readFile(localIndex).catch(() => undefined);
    if (raw) {
      try {
        const ix = RestoreIndex.parse(raw);
        if (indexMatchesLayers(ix, parent.layers.slice(0, k))) base = { view: ix.toView(), layers: ix.layers() };
      } catch {
        // A damaged local copy: fall back to the store's.
      }
    }
  }
  if (!base) {
    const { index, layers } = await loadIndex(store, parent);
    base = { view: index.toView(), layers: index.layers() };
    if (layers === parent.layers.length) return base;
  }
  // The tail: its (small) layers' TOCs, stacked in order.
  const tail = parent.layers.slice(base.layers.length);
  const tocs = await Promise.all(tail.map((l) => fetchToc(store, l)));
  tail.forEach((l, i) => stackToc(base, l, tocs[i]!));
  return base;
}

function stackToc(base: ChainView, layer: LayerDescriptor, toc: Toc): void {
  applyToc(base.view, toc, base.layers.length);
  base.layers.push({ digest: layer.digest, prefetch: toc.prefetch });
}

/** Stack one new layer over a chain view (in place) and encode the index of the result. */
export function stackLayer(base: ChainView, layer: LayerDescriptor, toc: Toc): Buffer {
  stackToc(base, layer, toc);
  return encodeIndex(base.view, base.layers);
}
