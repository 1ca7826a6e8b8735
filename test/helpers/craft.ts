/**
 * Hostile inputs for restore's safety tests: layer blobs with hand-made TOC entries (written by the
 * real LayerWriter, which puts TocEntry objects into the TOC unchecked), blobs around a raw TOC of
 * any JSON, and manifests that publish them as backups in a store. Nothing here is a mock: every
 * blob is bytes in a file, uploaded under its real key, reached through Strata.restoreBackup().
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { codecFor } from '../../src/format/codec.js';
import { encodeFooter, type Footer } from '../../src/format/footer.js';
import { blobKey, type LayerDescriptor } from '../../src/format/reader.js';
import { MAX_CHUNK_SIZE, TOC_VERSION, type CodecName, type EntryType, type TocEntry } from '../../src/format/toc.js';
import { LayerWriter, type LayerResult } from '../../src/format/writer.js';
import { putManifest } from '../../src/store/catalog.js';
import { type BackupHandle, handleOf, type Manifest } from '../../src/store/manifest.js';
import type { ObjectStore } from '../../src/store/store.js';

export function sha256hex(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

export function digestOf(buf: Buffer | string): string {
  return 'sha256:' + sha256hex(Buffer.isBuffer(buf) ? buf : Buffer.from(buf));
}

/** A layer blob on local disk, ready to publish. */
export interface CraftedLayer {
  /** Local file holding the blob. */
  file: string;
  codec: CodecName;
  result: LayerResult;
}

/**
 * One entry as the TOC will hold it. Paths and link targets are byte strings (one char per byte);
 * ASCII strings work as they are. Anything not given gets a plausible default; anything given is
 * written as is, however hostile.
 */
export interface CraftEntry {
  path: string;
  type: EntryType;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: [number, number];
  linkTarget?: string;
  devMajor?: number;
  devMinor?: number;
  opaque?: boolean;
  sparse?: boolean;
  /** File content; stored as chunks of at most `chunkSize` bytes. */
  data?: Buffer | string;
  chunkSize?: number;
  /** Logical size in the TOC (default: the data's length). */
  size?: number;
  /** Whole-file digest in the TOC (default: the data's). */
  digest?: string;
  /** Digest written for every chunk instead of the right one. */
  chunkDigest?: string;
}

export interface CraftOptions {
  /** Directory the blob file is written to. */
  dir: string;
  codec?: CodecName;
  /** Shared-frame bound (default 0: a frame per header and per chunk, what the edits expect). */
  frameBound?: number;
}

function tmpBlob(dir: string): string {
  return join(dir, `crafted-${randomBytes(8).toString('hex')}.layer`);
}

/** Write a layer with the real LayerWriter, taking each entry's metadata from the caller verbatim. */
export async function craftLayer(entries: CraftEntry[], opts: CraftOptions): Promise<CraftedLayer> {
  const codec = codecFor(opts.codec ?? 'zstd');
  const file = tmpBlob(opts.dir);
  const w = await LayerWriter.create(file, codec, { frameBound: opts.frameBound ?? 0 });
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  try {
    for (const c of entries) {
      const meta: Omit<TocEntry, 'headerOffset' | 'chunks'> = {
        path: c.path,
        type: c.type,
        mode: c.mode ?? (c.type === 'dir' ? 0o755 : c.type === 'symlink' ? 0o777 : 0o644),
        uid: c.uid ?? uid,
        gid: c.gid ?? gid,
        mtime: c.mtime ?? [1_700_000_000, 0],
        size: 0,
      };
      if (c.linkTarget !== undefined) meta.linkTarget = c.linkTarget;
      if (c.devMajor !== undefined) meta.devMajor = c.devMajor;
      if (c.devMinor !== undefined) meta.devMinor = c.devMinor;
      if (c.opaque) meta.opaque = true;
      if (c.sparse) meta.sparse = true;
      if (c.type !== 'file') {
        await w.addEntry(meta);
        continue;
      }
      const data = c.data === undefined ? Buffer.alloc(0) : Buffer.isBuffer(c.data) ? c.data : Buffer.from(c.data);
      meta.size = c.size ?? data.length;
      meta.digest = c.digest ?? digestOf(data);
      const e = await w.addEntry(meta);
      const step = c.chunkSize ?? MAX_CHUNK_SIZE;
      for (let off = 0; off < data.length; off += step) {
        const piece = data.subarray(off, off + step);
        await w.addChunk(e, off, piece, c.chunkDigest ?? digestOf(piece));
      }
      w.endFile(data.length);
    }
    return { file, codec: codec.name, result: await w.finish() };
  } catch (err) {
    await w.abort();
    throw err;
  }
}

/** A frame of the codec holding `data` (what a chunk or a TOC frame is). */
export function frame(codec: CodecName, data: Buffer | string): Promise<Buffer> {
  return codecFor(codec).compress(Buffer.isBuffer(data) ? data : Buffer.from(data));
}

export interface PlacedFrame {
  blobOffset: number;
  blobLength: number;
}

export interface RawLayerOptions extends CraftOptions {
  /** Compressed frames laid down first, from blob offset 0 (file data, or anything else). */
  frames?: Buffer[];
  /**
   * The TOC: any JSON value, or a function of where the frames landed and where the TOC starts.
   * A Buffer is used as the uncompressed TOC bytes verbatim.
   */
  toc: ((where: { frames: PlacedFrame[]; tocOffset: number }) => unknown) | Buffer | object | string | number | boolean | null;
  /** The compressed TOC frame verbatim, instead of compressing `toc`. */
  tocFrame?: Buffer;
  /** Footer fields to lie with (the LayerResult keeps the true values unless `lieInResult`). */
  footer?: Partial<Omit<Footer, 'codec'>>;
  /** Report the footer's lies in the returned LayerResult too (so a manifest repeats them). */
  lieInResult?: boolean;
}

/**
 * A blob around a TOC you write yourself: [frames][TOC frame][footer], the same layout
 * LayerWriter.finish() produces, for cases LayerWriter cannot express.
 */
export async function craftRawLayer(opts: RawLayerOptions): Promise<CraftedLayer> {
  const codec = opts.codec ?? 'zstd';
  const frames = opts.frames ?? [];
  const placed: PlacedFrame[] = [];
  let off = 0;
  for (const f of frames) {
    placed.push({ blobOffset: off, blobLength: f.length });
    off += f.length;
  }
  const tocOffset = off;
  const tocValue = typeof opts.toc === 'function' ? opts.toc({ frames: placed, tocOffset }) : opts.toc;
  const tocRaw = Buffer.isBuffer(tocValue) ? tocValue : Buffer.from(JSON.stringify(tocValue));
  const tocFrame = opts.tocFrame ?? (await frame(codec, tocRaw));
  const truth: Footer = { codec, tocOffset, tocLength: tocFrame.length, tocSize: tocRaw.length, tocDigest: sha256hex(tocFrame) };
  const told: Footer = { ...truth, ...opts.footer };
  const blob = Buffer.concat([...frames, tocFrame, encodeFooter(told)]);
  const file = tmpBlob(opts.dir);
  await writeFile(file, blob);
  const r = opts.lieInResult ? told : truth;
  return {
    file,
    codec,
    result: {
      digest: digestOf(blob),
      size: blob.length,
      tocOffset: r.tocOffset,
      tocLength: r.tocLength,
      tocSize: r.tocSize,
      tocDigest: 'sha256:' + r.tocDigest,
      entries: 0,
      dataBytes: 0,
    },
  };
}

/** The TOC of a crafted layer as plain JSON (what decodeToc will parse). */
export async function readTocJson(layer: CraftedLayer): Promise<Record<string, unknown> & { entries: Array<Record<string, unknown>> }> {
  const blob = await readFile(layer.file);
  const f = blob.subarray(layer.result.tocOffset, layer.result.tocOffset + layer.result.tocLength);
  const raw = await codecFor(layer.codec).decompress(f, layer.result.tocSize);
  return JSON.parse(raw.toString('utf8'));
}

/**
 * A copy of `layer` whose TOC is replaced by `edit(json)` (edited in place or returned), data
 * frames untouched: to make a valid layer lie about its chunks, sizes, types, digests.
 */
export async function rewriteToc(
  layer: CraftedLayer,
  edit: (toc: Record<string, unknown> & { entries: Array<Record<string, unknown>> }, where: { tocOffset: number }) => unknown,
  opts: Omit<RawLayerOptions, 'frames' | 'toc' | 'codec'>,
): Promise<CraftedLayer> {
  const blob = await readFile(layer.file);
  const toc = await readTocJson(layer);
  const tocOffset = layer.result.tocOffset;
  const edited = edit(toc, { tocOffset }) ?? toc;
  return craftRawLayer({ ...opts, codec: layer.codec, frames: [blob.subarray(0, tocOffset)], toc: edited });
}

/** The plain JSON of a TOC, for craftRawLayer. */
export function tocJson(codec: CodecName, entries: unknown[]): Record<string, unknown> {
  return { version: TOC_VERSION, codec, entries };
}

export function descriptorOf(l: CraftedLayer): LayerDescriptor {
  const r = l.result;
  return {
    digest: r.digest,
    size: r.size,
    codec: l.codec,
    tocOffset: r.tocOffset,
    tocLength: r.tocLength,
    tocSize: r.tocSize,
    tocDigest: r.tocDigest,
    entries: r.entries,
    dataBytes: r.dataBytes,
  };
}

export interface PublishFields extends Partial<Omit<Manifest, 'layers'>> {
  /** Edit each layer's descriptor before it goes into the manifest (to make the manifest lie). */
  descriptor?: (d: LayerDescriptor, index: number) => LayerDescriptor;
}

/**
 * Upload the blobs under their content keys and write a manifest that stacks them (first = bottom),
 * so Strata.restoreBackup(handle) reaches them. Returns the backup's handle.
 */
export async function publish(store: ObjectStore, layers: CraftedLayer[], fields: PublishFields = {}): Promise<BackupHandle> {
  const { descriptor, ...rest } = fields;
  for (const l of layers) {
    const key = blobKey(l.result.digest);
    if (!(await store.head(key))) await store.putFile(key, l.file);
  }
  const manifest: Manifest = {
    kind: 'strata.backup.manifest',
    version: 1,
    id: `crafted-${randomBytes(8).toString('hex')}`,
    dir: '/nonexistent/strata-crafted',
    createdAt: new Date().toISOString(),
    expiresAt: null,
    ...rest,
    layers: layers.map((l, i) => (descriptor ? descriptor(descriptorOf(l), i) : descriptorOf(l))),
  };
  const digest = await putManifest(store, manifest);
  return handleOf(manifest, digest);
}
