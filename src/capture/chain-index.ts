/**
 * The restore index a backup writes for its whole chain. A full backup has one layer; an
 * incremental one stacks its new layer over its parent chain's view, taken from the workspace's
 * own copy of that chain's index, else the parent's index blob, else (older parents) its TOCs.
 */
import { readFile } from 'node:fs/promises';
import type { LayerDescriptor } from '../format/reader.js';
import { encodeIndex, type IndexDescriptor, type IndexLayer, indexMatchesLayers, RestoreIndex } from '../format/restore-index.js';
import type { Toc } from '../format/toc.js';
import { applyToc, type ViewNode } from '../format/view.js';
import { loadIndex } from '../restore/index-source.js';
import type { ObjectStore } from '../store/store.js';

/** A chain's merged view and the index's layer records, ready to stack a layer on. */
export interface ChainView {
  view: ViewNode;
  layers: IndexLayer[];
}

/** The parent chain's view for an incremental backup, by the cheapest way that is still exact. */
export async function parentChainView(store: ObjectStore, parent: { layers: LayerDescriptor[]; index?: IndexDescriptor | undefined }, localIndex?: string): Promise<ChainView> {
  if (localIndex) {
    const raw = await readFile(localIndex).catch(() => undefined);
    if (raw) {
      try {
        const ix = RestoreIndex.parse(raw);
        if (indexMatchesLayers(ix, parent.layers)) return { view: ix.toView(), layers: ix.layers() };
      } catch {
        // A damaged local copy: fall back to the store's.
      }
    }
  }
  const { index } = await loadIndex(store, parent);
  return { view: index.toView(), layers: index.layers() };
}

/** Stack one new layer over a chain view (in place) and encode the index of the result. */
export function stackLayer(base: ChainView, layer: LayerDescriptor, toc: Toc): Buffer {
  applyToc(base.view, toc, base.layers.length);
  base.layers.push({ digest: layer.digest, prefetch: toc.prefetch });
  return encodeIndex(base.view, base.layers);
}
