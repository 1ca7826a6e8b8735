/**
 * A store whose implementation is loaded on first use. The S3 store pulls in the AWS SDK, which
 * takes ~0.2 s to load: every CLI call and restore daemon start would pay it even for a file store.
 */
import type { Readable } from 'node:stream';
import type { ByteRange, IncompleteWrite, ObjectInfo, ObjectStore, PutFileOptions } from './store.js';

export class DeferredStore implements ObjectStore {
  private real?: Promise<ObjectStore>;

  constructor(
    readonly url: string,
    private readonly load: () => Promise<ObjectStore>,
  ) {}

  private store(): Promise<ObjectStore> {
    this.real ??= this.load();
    return this.real;
  }

  /** Start loading now (e.g. while an index downloads), so the first real call does not wait. */
  preload(): void {
    this.store().catch(() => undefined); // surfaced by the first real call
  }

  async putFile(key: string, path: string, opts?: PutFileOptions): Promise<void> {
    return (await this.store()).putFile(key, path, opts);
  }
  get streamsUploads(): boolean {
    return this.url.startsWith('s3://');
  }
  async putStream(key: string, body: Readable, opts?: { onProgress?: (sentBytes: number) => void }): Promise<void> {
    const s = await this.store();
    if (!s.putStream) throw new Error(`${this.url} cannot upload a stream`);
    return s.putStream(key, body, opts);
  }
  async copy(from: string, to: string): Promise<void> {
    const s = await this.store();
    if (!s.copy) throw new Error(`${this.url} cannot copy objects`);
    return s.copy(from, to);
  }
  async putBytes(key: string, body: Buffer): Promise<void> {
    return (await this.store()).putBytes(key, body);
  }
  async get(key: string, range?: ByteRange): Promise<Readable> {
    return (await this.store()).get(key, range);
  }
  async getBytes(key: string, range?: ByteRange): Promise<Buffer> {
    return (await this.store()).getBytes(key, range);
  }
  async head(key: string): Promise<ObjectInfo | null> {
    return (await this.store()).head(key);
  }
  async touch(key: string): Promise<void> {
    return (await this.store()).touch(key);
  }
  async delete(key: string): Promise<void> {
    return (await this.store()).delete(key);
  }
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    yield* (await this.store()).list(prefix);
  }
  async cleanupIncomplete(before: Date, opts?: { dryRun?: boolean }): Promise<IncompleteWrite[]> {
    const s = await this.store();
    return s.cleanupIncomplete ? s.cleanupIncomplete(before, opts) : [];
  }
  async presignGet(key: string, seconds: number): Promise<string> {
    const s = await this.store();
    if (!s.presignGet) throw new Error(`${this.url} cannot make presigned URLs`);
    return s.presignGet(key, seconds);
  }
  warmPresign(): void {
    this.store().then((s) => s.warmPresign?.(), () => undefined);
  }
  /** Release the loaded store's connections, if it has any. */
  async close(): Promise<void> {
    if (!this.real) return;
    const s = (await this.real) as ObjectStore & { close?: () => void };
    s.close?.();
  }
}
