/**
 * Reading a layer from a store: its TOC (verified against the digest the manifest gives) and its
 * chunks (each verified against the TOC before a byte of it is used).
 */
import { constants as bufferConstants } from 'node:buffer';
import { createHash } from 'node:crypto';
import { DigestMismatchError, InvalidLayerError } from '../errors.js';
import type { ObjectStore } from '../store/store.js';
import { codecFor, type Codec } from './codec.js';
import { decodeFooter, FOOTER_READ_SIZE, type Footer } from './footer.js';
import { type Chunk, type CodecName, decodeToc, parseDigest, type Toc } from './toc.js';

/**
 * Largest TOC strata will parse or write (uncompressed); a bound against hostile footers. It is
 * the longest string V8 makes (~512 MiB): past it JSON.parse cannot run at all. A million tiny
 * entries take ~315 MiB and parse in ~13 s with ~1.8 GB peak RSS (test/load.test.ts).
 */
export const MAX_TOC_SIZE = Math.min(512 * 1024 * 1024, bufferConstants.MAX_STRING_LENGTH);

/** What a manifest says of a layer: enough to fetch and verify its TOC with one range request. */
export interface LayerDescriptor {
  digest: string;
  size: number;
  codec: CodecName;
  tocOffset: number;
  tocLength: number;
  tocSize: number;
  tocDigest: string;
  entries: number;
  dataBytes: number;
}

export function blobKey(digest: string): string {
  return `blobs/sha256/${parseDigest(digest)}`;
}

export function sha256(buf: Buffer): string {
  return 'sha256:' + createHash('sha256').update(buf).digest('hex');
}

/** Decode a TOC frame already in memory, checking its digest first: untrusted bytes never reach the decompressor. */
export async function decodeTocFrame(frame: Buffer, d: Pick<LayerDescriptor, 'codec' | 'tocOffset' | 'tocSize' | 'tocDigest'>, where: string): Promise<Toc> {
  const got = sha256(frame);
  if (got !== d.tocDigest) throw new DigestMismatchError(`TOC of ${where} has digest ${got}, expected ${d.tocDigest}; the store holds a damaged or tampered layer`);
  if (d.tocSize > MAX_TOC_SIZE) throw new InvalidLayerError(`TOC of ${where} claims ${d.tocSize} bytes, more than the ${MAX_TOC_SIZE} limit`);
  const raw = await codecFor(d.codec).decompress(frame, d.tocSize);
  const toc = decodeToc(raw, d.tocOffset);
  if (toc.codec !== d.codec) throw new InvalidLayerError(`TOC of ${where} names codec ${toc.codec}, its footer ${d.codec}`);
  return toc;
}

/** Fetch and verify a layer's TOC with one range request. */
export async function fetchToc(store: ObjectStore, d: LayerDescriptor): Promise<Toc> {
  const key = blobKey(d.digest);
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

/** Decompress one chunk frame and check it against the TOC; throws rather than return bad bytes. */
export async function decodeChunk(codec: Codec, frame: Buffer, chunk: Chunk, where: string): Promise<Buffer> {
  if (frame.length !== chunk.blobLength) throw new InvalidLayerError(`chunk frame of ${where} is ${frame.length} bytes, expected ${chunk.blobLength}`);
  let data: Buffer;
  try {
    data = await codec.decompress(frame, chunk.size);
  } catch (err) {
    throw new DigestMismatchError(`chunk at blob offset ${chunk.blobOffset} of ${where} does not decompress: damaged or tampered data`, { cause: err });
  }
  const got = sha256(data);
  if (got !== chunk.digest) {
    throw new DigestMismatchError(`chunk at blob offset ${chunk.blobOffset} of ${where} has digest ${got}, expected ${chunk.digest}; not used`);
  }
  return data;
}
