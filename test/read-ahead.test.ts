/**
 * The read-ahead of an extract's early data GET (src/restore/early-body.ts): it holds at most its
 * limit while nobody reads; once the unpack reads, its limit follows the bottleneck (down to its
 * low limit behind a slow unpack, back up behind a slow link); it hands on src's bytes, end and
 * errors unchanged.
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

  it('once read from, falls to its low limit when the consumer is the bottleneck', async () => {
    const src = source(400, 16 * KiB); // a source far faster than the reader below
    const ra = new ReadAhead(src, 512 * KiB, 32 * KiB);
    await sleep(20);
    ra.reading();
    const held: number[] = [];
    let read = 0;
    for await (const b of ra) {
      read += (b as Buffer).length;
      if (read > 1024 * KiB) held.push(ra.buffered);
      await sleep(1); // a slow unpack
    }
    expect(read).toBe(400 * 16 * KiB);
    expect(ra.limit).toBe(32 * KiB);
    expect(Math.max(...held)).toBeLessThanOrEqual(64 * KiB + 16 * KiB);
  });

  it('once read from, climbs back to its early limit when the source is the bottleneck', async () => {
    // A slow source (a link): a chunk every 2 ms, read at once.
    let i = 0;
    const src = new Readable({
      read() {
        if (i === 60) return void this.push(null);
        setTimeout(() => this.push(Buffer.alloc(16 * KiB, i++)), 2);
      },
    });
    const ra = new ReadAhead(src, 256 * KiB, 32 * KiB);
    ra.reading();
    let read = 0;
    let stalled = false;
    let least = ra.limit;
    for await (const b of ra) {
      read += (b as Buffer).length;
      least = Math.min(least, ra.limit);
      // One stall of the unpack: the queue fills and the limit halves, then recovers.
      if (!stalled && read >= 8 * 16 * KiB) {
        stalled = true;
        await sleep(100);
      }
    }
    expect(read).toBe(60 * 16 * KiB);
    expect(least).toBeLessThan(256 * KiB); // the stall filled the queue
    expect(ra.limit).toBe(256 * KiB);
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
