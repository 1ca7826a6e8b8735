/**
 * A small object stored as one zstd frame, content-addressed by the sha256 of the compressed
 * bytes, and carried inline in its manifest (base64) when it is small enough: the restore index
 * and the prefetch record. Bytes only: no I/O here.
 */
import { createHash } from 'node:crypto';
import { codecFor } from './codec.js';

export interface PackedDescriptor {
  /** 'sha256:<hex>' of the compressed blob (its key under blobs/sha256/). */
  digest: string;
  size: number;
  /** Bytes once decompressed. */
  rawSize: number;
  /** The compressed blob itself (base64), when at most the inline limit. */
  inline?: string;
}

export async function packSmall(raw: Buffer, inlineMax: number): Promise<{ blob: Buffer; desc: PackedDescriptor }> {
  const blob = await codecFor('zstd', 3).compress(raw);
  const desc: PackedDescriptor = { digest: 'sha256:' + createHash('sha256').update(blob).digest('hex'), size: blob.length, rawSize: raw.length };
  if (blob.length <= inlineMax) desc.inline = blob.toString('base64');
  return { blob, desc };
}
