/**
 * The read-ahead of an extract's early data GET (src/restore/early-body.ts): it holds at most its
 * limit while nobody reads, at most the lowered limit once the unpack reads, and hands on src's
 * bytes, end and errors unchanged.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { ReadAhead } from '../src/restore/early-body.js';

const KiB = 1024;

/** A source of `n` chunks of `size` bytes (chunk i filled with i), counting what was pulled. */
function source(n: number, size: number): Readable & { pulled: number } {
  let i = 0;
  const s = new Readable({
    highWaterMark: size,
    read() {
      if (i === n) return void this.push(null);
      s.pulled += size;
      this.push(Buffer.alloc(size, i++ & 0xff));
    },
  }) as Readable & { pulled: number };
  s.pulled = 0;
  return s;
}

const digestOf = async (r: AsyncIterable<Buffer>): Promise<string> => {
  const h = createHash('sha256');
  for await (const b of r) h.update(b);
  return h.digest('hex');
};

describe('ReadAhead', () => {
  it('reads ahead up to its limit while nobody reads, then only what the lowered limit allows', async () => {
    const src = source(400, 16 * KiB); // 6.4 MB
    const ra = new ReadAhead(src, 1024 * KiB);
    await sleep(50);
    // Stopped at the limit (a chunk past it at most), not the whole source.
    expect(ra.buffered).toBeGreaterThanOrEqual(1024 * KiB);
    expect(ra.buffered).toBeLessThanOrEqual(1024 * KiB + 16 * KiB);
    expect(src.pulled).toBeLessThan(2 * 1024 * KiB + 64 * KiB);
    // Everything arrives, in order, once read.
    expect(await digestOf(ra)).toBe(await digestOf(source(400, 16 * KiB)));
    expect(src.pulled).toBe(400 * 16 * KiB);
  });

  it('after a shrink, holds at most the new limit and a chunk once what was queued is read', async () => {
    const src = source(200, 16 * KiB);
    const ra = new ReadAhead(src, 512 * KiB);
    await sleep(20);
    ra.shrink(32 * KiB);
    const sizes: number[] = [];
    let read = 0;
    for await (const b of ra) {
      read += (b as Buffer).length;
      if (read > 1024 * KiB) sizes.push(ra.buffered);
      await sleep(0);
    }
    expect(read).toBe(200 * 16 * KiB);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(32 * KiB + 16 * KiB);
  });

  it("passes src's error on, and destroying it destroys src", async () => {
    const src = source(1000, 4 * KiB);
    const ra = new ReadAhead(src, 64 * KiB);
    const boom = new Error('connection reset');
    const read = (async () => {
      let n = 0;
      for await (const _ of ra) if (++n === 3) src.destroy(boom);
      return n;
    })();
    await expect(read).rejects.toThrow('connection reset');

    const src2 = source(1000, 4 * KiB);
    const ra2 = new ReadAhead(src2, 64 * KiB);
    ra2.destroy();
    await sleep(5);
    expect(src2.destroyed).toBe(true);
  });
});
