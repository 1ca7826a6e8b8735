/**
 * Damage that is sure to be damage. A flipped bit in a zstd frame does not always change what it
 * decodes to (about 1% of positions are bits the decoder never looks at: measured on the suite's
 * paged indexes, where the middle byte of page 0 was one in roughly 1 run of 50). A fault case
 * that flipped such a bit would test nothing, and fail as if the code had accepted bad bytes.
 */
import { createHash } from 'node:crypto';
import { ZstdCodec } from '../../src/format/codec.js';
import type { IndexHead } from '../../src/format/restore-index.js';

const zstd = new ZstdCodec(3);

/**
 * The offset (in the frame) of the first byte from its middle on whose low bit, flipped, makes the
 * frame refuse to decode to `rawLength` bytes or decode to other bytes than it does now.
 */
export async function damagingOffset(frame: Buffer, rawLength: number): Promise<number> {
  const want = createHash('sha256').update(await zstd.decompress(frame, rawLength)).digest('hex');
  for (let k = 0; k < frame.length; k++) {
    const at = ((frame.length >> 1) + k) % frame.length;
    const b = Buffer.from(frame);
    b[at]! ^= 0x01;
    const got = await zstd.decompress(b, rawLength).then((d) => createHash('sha256').update(d).digest('hex'), () => undefined);
    if (got !== want) return at;
  }
  throw new Error('no byte of this frame changes what it decodes to');
}

/** Offset in the index blob of a byte whose low bit, flipped, damages page p (damagingOffset). */
export async function damagingPageOffset(blob: Buffer, head: IndexHead, p: number): Promise<number> {
  const pg = head.pages[p]!;
  const rawLength = Math.min(head.pageSize, head.rawSize - p * head.pageSize);
  return pg.blobOffset + (await damagingOffset(blob.subarray(pg.blobOffset, pg.blobOffset + pg.blobLength), rawLength));
}
