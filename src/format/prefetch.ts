/**
 * The prefetch record: what a lazy workspace read first after its restore, as an ordered list of
 * frame references into its backup's layer chain. A backup stores it as its own small
 * content-addressed object (compressed, inline in the manifest when small) instead of moving the
 * files into its new layer; a lazy restore hands it to strata-fuse, which fetches those frames
 * first, coalesced, while the workload starts. native/fuse/sx_format.h reads the same records;
 * docs/format.md specifies them.
 *
 * Bytes only: no I/O here.
 */
import { createHash } from 'node:crypto';
import { DigestMismatchError, InvalidLayerError } from '../errors.js';
import { codecFor } from './codec.js';
import { packSmall, type PackedDescriptor } from './packed.js';

export const PREFETCH_MAGIC = 0x46505853; // "SXPF" little-endian
export const PREFETCH_VERSION = 1;
export const PREFETCH_HEADER_SIZE = 16;
export const PREFETCH_REF_SIZE = 16;
/** Refs kept at most (the first reads of a workload, not its whole life). */
export const MAX_PREFETCH_REFS = 65_536;
/** Records up to this many compressed bytes ride inside the manifest. */
export const INLINE_PREFETCH_MAX = 8 * 1024;

export const PREFETCH_LAYOUT = {
  prefetch_header: { size: PREFETCH_HEADER_SIZE, offsets: { magic: 0, version: 4, reserved: 6, count: 8, reserved2: 12 } },
  prefetch_ref: { size: PREFETCH_REF_SIZE, offsets: { blob_off: 0, blob_len: 8, layer: 12 } },
} as const;

/** One frame to fetch: `layer` indexes the manifest's chain (bottom first). */
export interface PrefetchRef {
  layer: number;
  blobOffset: number;
  blobLength: number;
}

/** What a manifest says of its prefetch record. */
export type PrefetchDescriptor = PackedDescriptor;

/** Refs in a record of rawSize bytes. */
export function prefetchRefCount(rawSize: number): number {
  return Math.max(0, Math.floor((rawSize - PREFETCH_HEADER_SIZE) / PREFETCH_REF_SIZE));
}

export function encodePrefetch(refs: PrefetchRef[]): Buffer {
  const n = Math.min(refs.length, MAX_PREFETCH_REFS);
  const b = Buffer.alloc(PREFETCH_HEADER_SIZE + n * PREFETCH_REF_SIZE);
  const H = PREFETCH_LAYOUT.prefetch_header.offsets;
  const R = PREFETCH_LAYOUT.prefetch_ref.offsets;
  b.writeUInt32LE(PREFETCH_MAGIC, H.magic);
  b.writeUInt16LE(PREFETCH_VERSION, H.version);
  b.writeUInt32LE(n, H.count);
  for (let i = 0; i < n; i++) {
    const r = refs[i]!;
    const o = PREFETCH_HEADER_SIZE + i * PREFETCH_REF_SIZE;
    b.writeBigUInt64LE(BigInt(r.blobOffset), o + R.blob_off);
    b.writeUInt32LE(r.blobLength, o + R.blob_len);
    b.writeUInt32LE(r.layer, o + R.layer);
  }
  return b;
}

/** Refs of a record, checked against a chain of `layers` blobs of these sizes. */
export function decodePrefetch(b: Buffer, layerSizes: number[]): PrefetchRef[] {
  const H = PREFETCH_LAYOUT.prefetch_header.offsets;
  const R = PREFETCH_LAYOUT.prefetch_ref.offsets;
  if (b.length < PREFETCH_HEADER_SIZE || b.readUInt32LE(H.magic) !== PREFETCH_MAGIC) throw new InvalidLayerError('prefetch record: bad magic');
  if (b.readUInt16LE(H.version) !== PREFETCH_VERSION) throw new InvalidLayerError(`prefetch record: version ${b.readUInt16LE(H.version)}, this strata reads ${PREFETCH_VERSION}`);
  const n = b.readUInt32LE(H.count);
  if (n > MAX_PREFETCH_REFS || b.length !== PREFETCH_HEADER_SIZE + n * PREFETCH_REF_SIZE) throw new InvalidLayerError('prefetch record: size does not match its count');
  const out: PrefetchRef[] = [];
  for (let i = 0; i < n; i++) {
    const o = PREFETCH_HEADER_SIZE + i * PREFETCH_REF_SIZE;
    const r = { blobOffset: Number(b.readBigUInt64LE(o + R.blob_off)), blobLength: b.readUInt32LE(o + R.blob_len), layer: b.readUInt32LE(o + R.layer) };
    const size = layerSizes[r.layer];
    if (size === undefined || r.blobLength === 0 || r.blobOffset + r.blobLength > size) throw new InvalidLayerError(`prefetch record: ref ${i} lies outside its chain`);
    out.push(r);
  }
  return out;
}

export function packPrefetch(raw: Buffer): Promise<{ blob: Buffer; desc: PrefetchDescriptor }> {
  return packSmall(raw, INLINE_PREFETCH_MAX);
}

/** The record a blob holds, verified (digest and size first, then a bounded decompression). */
export async function unpackPrefetch(blob: Buffer, desc: PrefetchDescriptor, where: string): Promise<Buffer> {
  const got = 'sha256:' + createHash('sha256').update(blob).digest('hex');
  if (blob.length !== desc.size || got !== desc.digest) throw new DigestMismatchError(`prefetch record ${where} does not match its manifest (${blob.length} bytes, ${got}); damaged or tampered`);
  if (desc.rawSize > PREFETCH_HEADER_SIZE + MAX_PREFETCH_REFS * PREFETCH_REF_SIZE) throw new InvalidLayerError(`prefetch record ${where} claims ${desc.rawSize} bytes`);
  return codecFor('zstd').decompress(blob, desc.rawSize);
}
