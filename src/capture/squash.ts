/**
 * Squash adjacent layers into one: the layer that, applied over the layers below them, shows
 * exactly what they show. Used when a workspace's chain grows past its limit. Whiteouts that
 * still hide something below survive; a directory re-created over a whiteout becomes opaque; data
 * is copied chunk by chunk from the source blobs, each chunk verified on the way.
 */
import { codecFor } from '../format/codec.js';
import { type BytePath, baseOf, compareBytes, parentOf } from '../format/paths.js';
import { layerKey, decodeChunk, decodeFrame, type LayerDescriptor, sha256 } from '../format/reader.js';
import type { Extent } from '../format/tar.js';
import type { Toc, TocEntry } from '../format/toc.js';
import type { LayerWriter } from '../format/writer.js';
import type { ObjectStore } from '../store/store.js';

interface SquashNode {
  /** Undefined for a directory that only holds changes (it exists below). */
  entry?: TocEntry;
  layer: number;
  children: Map<BytePath, SquashNode>;
}

/**
 * `below` finds an entry in the merged view of the whole chain: a directory the squashed layers
 * only pass through gets its metadata from there, so the new layer stands alone.
 */
export async function squashLayers(
  store: ObjectStore,
  layers: LayerDescriptor[],
  tocs: Toc[],
  writer: LayerWriter,
  below: (path: BytePath) => TocEntry | undefined,
): Promise<number> {
  const root: SquashNode = { layer: -1, children: new Map() };
  const nodeAt = (p: BytePath, create: boolean): SquashNode | undefined => {
    if (p === '.') return root;
    let n = root;
    for (const part of p.split('/')) {
      let c = n.children.get(part);
      if (!c) {
        if (!create) return undefined;
        c = { layer: -1, children: new Map() };
        n.children.set(part, c);
      }
      n = c;
    }
    return n;
  };

  tocs.forEach((toc, layer) => {
    for (const e of toc.entries) {
      if (e.type === 'whiteout') {
        nodeAt(parentOf(e.path), true)!.children.set(baseOf(e.path), { entry: e, layer, children: new Map() });
      } else if (e.type === 'dir' && e.opaque) {
        const n = nodeAt(e.path, false);
        if (n) n.children = new Map();
      }
    }
    for (const e of toc.entries) {
      if (e.type === 'whiteout') continue;
      if (e.path === '.') {
        root.entry = e;
        root.layer = layer;
        continue;
      }
      const parent = nodeAt(parentOf(e.path), true)!;
      const old = parent.children.get(baseOf(e.path));
      let entry = e;
      // Over a whiteout, a directory must hide what lies below it, as the whiteout did.
      if (e.type === 'dir' && old?.entry?.type === 'whiteout') entry = { ...e, opaque: true };
      // Over an opaque directory of a lower squashed layer, a plain directory stays opaque.
      if (e.type === 'dir' && old?.entry?.opaque) entry = { ...e, opaque: true };
      const keepKids = e.type === 'dir' && !e.opaque && old !== undefined && (old.entry === undefined || old.entry.type === 'dir');
      parent.children.set(baseOf(e.path), { entry, layer, children: keepKids ? old!.children : new Map() });
    }
  });

  let count = 0;
  // Hard links go last: their targets may sort after them, and must be in the layer first.
  const links: TocEntry[] = [];
  let lastFrame: { layer: number; blobOffset: number; bytes: Buffer } | undefined;
  const emit = async (path: BytePath, n: SquashNode): Promise<void> => {
    const e = n.entry;
    if (e?.type === 'hardlink') links.push({ ...e, path });
    else if (!e && path !== '.') {
      const d = below(path);
      if (d?.type === 'dir') {
        const { headerOffset: _h, chunks: _c, opaque: _o, ...meta } = d;
        await writer.addEntry({ ...meta, path });
        count++;
      }
    } else if (e) {
      count++;
      const { headerOffset: _h, chunks, ...meta } = e;
      if (e.type !== 'file') {
        await writer.addEntry({ ...meta, path });
      } else {
        const extents: Extent[] = (chunks ?? []).map((c) => ({ offset: c.offset, size: c.size }));
        const out = await writer.addEntry({ ...meta, path }, e.sparse ? extents : undefined);
        const d = layers[n.layer]!;
        const codec = codecFor(d.codec);
        let stored = 0;
        for (const c of chunks ?? []) {
          let data: Buffer;
          if (c.frameSize === undefined) {
            const frame = await store.getBytes(layerKey(d), { start: c.blobOffset, end: c.blobOffset + c.blobLength });
            data = await decodeChunk(codec, frame, c, layerKey(d));
          } else {
            // Consecutive files of a shared frame: fetch and verify it once.
            if (lastFrame?.layer !== n.layer || lastFrame.blobOffset !== c.blobOffset) {
              const frame = await store.getBytes(layerKey(d), { start: c.blobOffset, end: c.blobOffset + c.blobLength });
              lastFrame = { layer: n.layer, blobOffset: c.blobOffset, bytes: await decodeFrame(codec, frame, c, layerKey(d)) };
            }
            data = lastFrame.bytes.subarray(c.frameOffset!, c.frameOffset! + c.size);
          }
          // A shared frame's digest covers the whole frame; the chunk's own is its content's.
          await writer.addChunk(out, c.offset, data, c.frameSize === undefined ? c.digest : sha256(data));
          stored += c.size;
        }
        writer.endFile(stored);
      }
    }
    const names = [...n.children.keys()].sort(compareBytes);
    for (const name of names) await emit(path === '.' ? name : `${path}/${name}`, n.children.get(name)!);
  };
  await emit('.', root);
  for (const l of links) {
    const { headerOffset: _h, ...meta } = l;
    await writer.addEntry(meta);
    count++;
  }
  return count;
}
