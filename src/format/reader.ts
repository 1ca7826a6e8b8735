/**
 * Verifying what is read from a layer: its TOC frame (against the digest the manifest gives) and
 * its chunks (each against the TOC before a byte of it is used). Bytes only: fetching them is the
 * store's (src/store/blobs.ts).
 */
import { constants as bufferConstants } from 'node:buffer';
import { createHash } from 'node:crypto';
import { DigestMismatchError, InvalidLayerError } from '../errors.js';
import { codecFor, type Codec, FrameDigestError } from './codec.js';
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
  /**
   * Where the blob is stored when not under its digest: a layer uploaded while it was captured
   * keeps the staging name it was uploaded under (renaming it would copy it server side).
   */
  key?: string;
}

export function blobKey(digest: string): string {
  return `blobs/sha256/${parseDigest(digest)}`;
}

/** The name of a staging upload (src/strata.ts), the only other place a layer may live. */
export const STAGED_KEY_RE = /^blobs\/staging\/[0-9]{1,10}-[0-9a-f]{24}$/;

/**
 * A small object naming the staging key that holds the blob of this digest, so that a later
 * backup of the same content finds it (src/strata.ts); kept by gc as long as a layer using it is.
 */
export function locatorKey(digest: string): string {
  return `blobs/at/${parseDigest(digest)}`;
}

/** The store key of a layer's blob. */
export function layerKey(d: { digest: string; key?: string | undefined }): string {
  return d.key ?? blobKey(d.digest);
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

/**
 * Decompress one chunk's frame and check it against the TOC; throws rather than return bad bytes.
 * The result is the chunk's bytes (a slice of a shared frame's).
 */
export async function decodeChunk(codec: Codec, frame: Buffer, chunk: Chunk, where: string): Promise<Buffer> {
  const all = await decodeFrame(codec, frame, chunk, where);
  return chunk.frameSize === undefined ? all : all.subarray(chunk.frameOffset ?? 0, (chunk.frameOffset ?? 0) + chunk.size);
}

/** Decompress and verify the whole frame a chunk lies in (shared by every chunk naming it). */
export async function decodeFrame(codec: Codec, frame: Buffer, chunk: Chunk, where: string): Promise<Buffer> {
  if (frame.length !== chunk.blobLength) throw new InvalidLayerError(`chunk frame of ${where} is ${frame.length} bytes, expected ${chunk.blobLength}`);
  try {
    return await codec.decompressVerified(frame, chunk.frameSize ?? chunk.size, Buffer.from(parseDigest(chunk.digest), 'hex'));
  } catch (err) {
    if (err instanceof FrameDigestError) {
      throw new DigestMismatchError(`chunk at blob offset ${chunk.blobOffset} of ${where} has digest sha256:${err.got}, expected ${chunk.digest}; not used`);
    }
    throw new DigestMismatchError(`chunk at blob offset ${chunk.blobOffset} of ${where} does not decompress: damaged or tampered data`, { cause: err });
  }
}
