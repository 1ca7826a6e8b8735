/**
 * A real store wrapped for tests of what the lazy fetcher asks of it: every get() recorded, the
 * GETs whose body is still open counted, and a hook that can delay, fail or hold each one.
 */
import type { Readable } from 'node:stream';
import type { ByteRange, ObjectInfo, ObjectStore } from '../../src/store/store.js';

export class ProbeStore implements ObjectStore {
  readonly url: string;
  /** Every get(), in call order (end -1: no range). */
  gets: Array<{ key: string; start: number; end: number }> = [];
  /** Every getBytes() (manifests, TOCs, indexes: whole small reads), in call order. */
  byteReads: Array<{ key: string; start: number; end: number }> = [];
  /** GETs asked for whose body has not closed yet, and the most there ever were at once. */
  active = 0;
  maxActive = 0;
  /** Runs before each get() reaches the store: delay it, fail it (throw) or hold it. */
  hook?: (key: string, range?: ByteRange) => Promise<void> | void;

  constructor(private readonly inner: ObjectStore) {
    this.url = inner.url;
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    this.gets.push({ key, start: range?.start ?? 0, end: range?.end ?? -1 });
    this.maxActive = Math.max(this.maxActive, ++this.active);
    let s: Readable;
    try {
      await this.hook?.(key, range);
      s = await this.inner.get(key, range);
    } catch (err) {
      this.active--;
      throw err;
    }
    // 'close' follows 'end', an error and destroy() alike.
    s.once('close', () => this.active--);
    return s;
  }
  getBytes(key: string, range?: ByteRange): Promise<Buffer> {
    this.byteReads.push({ key, start: range?.start ?? 0, end: range?.end ?? -1 });
    return this.inner.getBytes(key, range);
  }
  putFile(key: string, path: string): Promise<void> {
    return this.inner.putFile(key, path);
  }
  putBytes(key: string, body: Buffer): Promise<void> {
    return this.inner.putBytes(key, body);
  }
  head(key: string): Promise<ObjectInfo | null> {
    return this.inner.head(key);
  }
  touch(key: string): Promise<void> {
    return this.inner.touch(key);
  }
  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }
  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }
}
