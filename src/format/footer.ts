/**
 * The footer: a fixed-size trailing frame that locates the TOC. It is itself a valid empty frame of
 * the layer's codec (a gzip member whose header carries an extra field, or a zstd skippable frame),
 * so decompressors and tar pass over it. Layout in docs/format.md.
 */
import { InvalidLayerError } from '../errors.js';
import type { CodecName } from './toc.js';

export const FOOTER_MAGIC = Buffer.from('STRATA\x00\x01', 'latin1');
const PAYLOAD = 64;
export const GZIP_FOOTER_SIZE = 10 + 2 + 4 + PAYLOAD + 2 + 8; // 90
export const ZSTD_FOOTER_SIZE = 8 + PAYLOAD; // 72
/** Read this many trailing bytes to find either footer. */
export const FOOTER_READ_SIZE = GZIP_FOOTER_SIZE;
const ZSTD_SKIPPABLE_MAGIC = 0x184d2a5e;

export interface Footer {
  codec: CodecName;
  tocOffset: number;
  /** Length of the compressed TOC frame. */
  tocLength: number;
  /** Uncompressed TOC size: the exact output the TOC frame must decompress to. */
  tocSize: number;
  /** sha256 of the compressed TOC frame, hex. */
  tocDigest: string;
}

function payload(f: Footer): Buffer {
  const p = Buffer.alloc(PAYLOAD);
  FOOTER_MAGIC.copy(p, 0);
  p.writeBigUInt64LE(BigInt(f.tocOffset), 8);
  p.writeBigUInt64LE(BigInt(f.tocLength), 16);
  p.writeBigUInt64LE(BigInt(f.tocSize), 24);
  Buffer.from(f.tocDigest, 'hex').copy(p, 32);
  return p;
}

export function encodeFooter(f: Footer): Buffer {
  const p = payload(f);
  if (f.codec === 'zstd') {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(ZSTD_SKIPPABLE_MAGIC, 0);
    h.writeUInt32LE(PAYLOAD, 4);
    return Buffer.concat([h, p]);
  }
  // gzip member: ID1 ID2 CM=8 FLG=FEXTRA MTIME=0 XFL=0 OS=255, XLEN, subfield 'ST', then an empty
  // final deflate block (03 00), CRC32=0 and ISIZE=0 of the empty content.
  const h = Buffer.from([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, 0, 0, 0x53, 0x54, 0, 0]);
  h.writeUInt16LE(4 + PAYLOAD, 10);
  h.writeUInt16LE(PAYLOAD, 14);
  return Buffer.concat([h, p, Buffer.from([3, 0, 0, 0, 0, 0, 0, 0, 0, 0])]);
}

function readPayload(p: Buffer, codec: CodecName, blobSize: number, footerSize: number): Footer {
  if (!p.subarray(0, 8).equals(FOOTER_MAGIC)) throw new InvalidLayerError('footer magic not found: not a strata layer');
  const big = (o: number): number => {
    const v = p.readBigUInt64LE(o);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidLayerError('footer field out of range');
    return Number(v);
  };
  const f: Footer = { codec, tocOffset: big(8), tocLength: big(16), tocSize: big(24), tocDigest: p.subarray(32, 64).toString('hex') };
  if (f.tocOffset + f.tocLength !== blobSize - footerSize) throw new InvalidLayerError('footer: the TOC does not end where the footer starts');
  if (f.tocLength === 0 || f.tocSize === 0) throw new InvalidLayerError('footer: empty TOC');
  return f;
}

/** Parse the footer from the last FOOTER_READ_SIZE (or fewer, for tiny blobs) bytes of a blob. */
export function decodeFooter(tail: Buffer, blobSize: number): Footer {
  if (tail.length >= GZIP_FOOTER_SIZE) {
    const g = tail.subarray(tail.length - GZIP_FOOTER_SIZE);
    if (g[0] === 0x1f && g[1] === 0x8b && g[3] === 4 && g.readUInt16LE(10) === 4 + PAYLOAD && g[12] === 0x53 && g[13] === 0x54) {
      return readPayload(g.subarray(16, 16 + PAYLOAD), 'gzip', blobSize, GZIP_FOOTER_SIZE);
    }
  }
  if (tail.length >= ZSTD_FOOTER_SIZE) {
    const z = tail.subarray(tail.length - ZSTD_FOOTER_SIZE);
    if (z.readUInt32LE(0) === ZSTD_SKIPPABLE_MAGIC && z.readUInt32LE(4) === PAYLOAD) {
      return readPayload(z.subarray(8), 'zstd', blobSize, ZSTD_FOOTER_SIZE);
    }
  }
  throw new InvalidLayerError('no strata footer at the end of the blob: not a strata layer or truncated');
}

export function footerSize(codec: CodecName): number {
  return codec === 'zstd' ? ZSTD_FOOTER_SIZE : GZIP_FOOTER_SIZE;
}
