/**
 * Frame codecs. A layer is a concatenation of independently decompressible frames (gzip members or
 * zstd frames), so the concatenation is still a valid .tar.gz / .tar.zst and any frame can be read
 * alone with one range request.
 */
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { InvalidLayerError } from '../errors.js';
import type { CodecName } from './toc.js';

const gzip = promisify(zlib.gzip);
const gunzip = promisify(zlib.gunzip);

export interface Codec {
  readonly name: CodecName;
  compress(data: Buffer): Promise<Buffer>;
  /** One frame of the parts' concatenation, and 'sha256:<hex>' of that concatenation. */
  compressParts(parts: Buffer[]): Promise<{ frame: Buffer; digest: string }>;
  /** Decompress one frame that must yield exactly expectedSize bytes (the bomb guard). */
  decompress(frame: Buffer, expectedSize: number): Promise<Buffer>;
  /**
   * decompress(), and the output's sha256 must be `digest` (32 bytes): else FrameDigestError,
   * and the bytes are never returned. zstd checks it in the decode job, off the JS thread.
   */
  decompressVerified(frame: Buffer, expectedSize: number, digest: Buffer): Promise<Buffer>;
}

/** The decoded bytes of a frame are not what its digest says. */
export class FrameDigestError extends Error {
  constructor(readonly got: string) {
    super(`decoded bytes have sha256 ${got}`);
  }
}

type Sys = typeof import('../sys/native.js');
let sysModule: Promise<Sys> | undefined;
function loadSys(): Promise<Sys> {
  sysModule ??= import('../sys/native.js');
  return sysModule;
}

class GzipCodec implements Codec {
  readonly name = 'gzip' as const;
  constructor(private readonly level: number) {}
  compress(data: Buffer): Promise<Buffer> {
    return gzip(data, { level: this.level });
  }
  async compressParts(parts: Buffer[]): Promise<{ frame: Buffer; digest: string }> {
    const h = createHash('sha256');
    for (const p of parts) h.update(p);
    return { frame: await gzip(Buffer.concat(parts), { level: this.level }), digest: 'sha256:' + h.digest('hex') };
  }
  async decompress(frame: Buffer, expectedSize: number): Promise<Buffer> {
    let out: Buffer;
    try {
      out = await gunzip(frame, { maxOutputLength: Math.max(expectedSize, 1) });
    } catch (err) {
      throw new InvalidLayerError(`gzip frame does not decompress to ${expectedSize} bytes`, { cause: err });
    }
    if (out.length !== expectedSize) throw new InvalidLayerError(`gzip frame decompressed to ${out.length} bytes, expected ${expectedSize}`);
    return out;
  }
  async decompressVerified(frame: Buffer, expectedSize: number, digest: Buffer): Promise<Buffer> {
    const out = await this.decompress(frame, expectedSize);
    const got = createHash('sha256').update(out).digest();
    if (!got.equals(digest)) throw new FrameDigestError(got.toString('hex'));
    return out;
  }
}

export class ZstdCodec implements Codec {
  readonly name = 'zstd' as const;
  constructor(readonly level: number) {}
  async compress(data: Buffer): Promise<Buffer> {
    const { sys } = await loadSys();
    return sys.zstdCompress(data, this.level);
  }
  async compressParts(parts: Buffer[]): Promise<{ frame: Buffer; digest: string }> {
    const { sys } = await loadSys();
    const r = await sys.zstdFrame(parts, this.level);
    return { frame: r.frame, digest: 'sha256:' + r.digest.toString('hex') };
  }
  async decompress(frame: Buffer, expectedSize: number): Promise<Buffer> {
    const { sys } = await loadSys();
    try {
      return await sys.zstdDecompress(frame, expectedSize);
    } catch (err) {
      throw new InvalidLayerError(`zstd frame does not decompress to ${expectedSize} bytes`, { cause: err });
    }
  }
  async decompressVerified(frame: Buffer, expectedSize: number, digest: Buffer): Promise<Buffer> {
    const { sys } = await loadSys();
    try {
      return await sys.zstdDecompress(frame, expectedSize, digest);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'EDIGEST') throw new FrameDigestError(/sha256 ([0-9a-f]{64})/.exec(e.message)?.[1] ?? 'unknown');
      throw new InvalidLayerError(`zstd frame does not decompress to ${expectedSize} bytes`, { cause: err });
    }
  }
}

export const DEFAULT_CODEC: CodecName = 'zstd';

export function codecFor(name: CodecName, level?: number): Codec {
  return name === 'gzip' ? new GzipCodec(level ?? 6) : new ZstdCodec(level ?? 3);
}
