/**
 * One conformance suite for every ObjectStore: what strata relies on, asserted against the file store
 * and against the S3 store on s3rver.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStore } from '../src/store/file.js';
import { DeferredStore, openStore, type ObjectStore } from '../src/store/index.js';
import { S3Store } from '../src/store/s3.js';
import { s3StoreFor, startS3Server, type S3TestServer } from './helpers/s3server.js';

const MiB = 1024 * 1024;
const PART = 5 * MiB;

/** ObjectStore plus touch(), which strata.ts and gc.ts use (not yet in store.ts's interface). */
type TouchableStore = ObjectStore & { touch(key: string): Promise<void> };

interface Harness {
  store: TouchableStore;
  /** s3rver serves Last-Modified from its file's mtime, which a copy onto itself does not change. */
  touchUpdatesMtime: boolean;
  close(): Promise<void>;
}

async function fileHarness(): Promise<Harness> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-filestore-'));
  return { store: new FileStore(join(dir, 'store')), touchUpdatesMtime: true, close: () => rm(dir, { recursive: true, force: true }) };
}

async function s3Harness(): Promise<Harness> {
  const server: S3TestServer = await startS3Server();
  const store = s3StoreFor(server, { partSize: PART, queueSize: 2 });
  return {
    store,
    touchUpdatesMtime: false,
    async close() {
      store.close();
      await server.close();
    },
  };
}

async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** toEqual on multi-MiB Buffers is very slow (per-element compare); compare lengths and bytes. */
function expectSameBytes(actual: Buffer, want: Buffer, what: string): void {
  expect(actual.length, `${what}: length`).toBe(want.length);
  expect(actual.equals(want), `${what}: bytes`).toBe(true);
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function keysOf(store: ObjectStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of store.list(prefix)) out.push(o.key);
  return out.sort();
}

let scratch: string;
beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'strata-store-test-'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe.each([
  { name: 'file', make: fileHarness },
  { name: 's3 (s3rver)', make: s3Harness },
])('ObjectStore conformance: $name', ({ make }) => {
  let h: Harness;
  let store: TouchableStore;
  beforeAll(async () => {
    h = await make();
    store = h.store;
  });
  afterAll(async () => {
    await h?.close();
  });

  it('putBytes/getBytes round trip, head reports size and mtime', async () => {
    const body = Buffer.from('{"hello":"world"}\n');
    const before = Date.now();
    await store.putBytes('rt/manifest.json', body);
    expect(await store.getBytes('rt/manifest.json')).toEqual(body);
    expect(await readAll(await store.get('rt/manifest.json'))).toEqual(body);
    const info = await store.head('rt/manifest.json');
    expect(info).not.toBeNull();
    expect(info!.key).toBe('rt/manifest.json');
    expect(info!.size).toBe(body.length);
    expect(info!.mtime).toBeInstanceOf(Date);
    // Second-resolution stores (S3's Last-Modified) round down.
    expect(info!.mtime.getTime()).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000 - 2000);
    expect(info!.mtime.getTime()).toBeLessThanOrEqual(Date.now() + 2000);
  });

  it('putBytes and putFile of an empty object', async () => {
    const src = join(scratch, `empty-${Math.random().toString(36).slice(2)}`);
    await writeFile(src, '');
    await store.putFile('rt/empty-file', src);
    expect((await store.head('rt/empty-file'))?.size).toBe(0);
    expect((await store.getBytes('rt/empty-file')).length).toBe(0);
    await store.putBytes('rt/empty', Buffer.alloc(0));
    expect((await store.getBytes('rt/empty')).length).toBe(0);
    expect((await readAll(await store.get('rt/empty'))).length).toBe(0);
    expect((await store.head('rt/empty'))?.size).toBe(0);
  });

  it('putFile of a file larger than the part size round trips byte-identical', { timeout: 60_000 }, async () => {
    const data = randomBytes(12 * MiB + 12345);
    const src = join(scratch, `big-${Math.random().toString(36).slice(2)}`);
    await writeFile(src, data);
    const progress: number[] = [];
    await store.putFile('blobs/sha256/big', src, { onProgress: (n) => progress.push(n) });
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.at(-1)).toBe(data.length);
    for (let i = 1; i < progress.length; i++) expect(progress[i]!).toBeGreaterThanOrEqual(progress[i - 1]!);
    expect((await store.head('blobs/sha256/big'))?.size).toBe(data.length);
    expect(sha256(await readAll(await store.get('blobs/sha256/big')))).toBe(sha256(data));
    expect(sha256(await store.getBytes('blobs/sha256/big'))).toBe(sha256(data));

    // Ranged reads: inside, across a part boundary, at the very end, and empty.
    const ranges: [number, number][] = [
      [0, 1],
      [100, 4196],
      [PART - 10, PART + 10],
      [data.length - 777, data.length],
      [data.length - 1, data.length],
      [0, data.length],
    ];
    for (const [start, end] of ranges) {
      const want = data.subarray(start, end);
      expectSameBytes(await store.getBytes('blobs/sha256/big', { start, end }), want, `getBytes [${start},${end})`);
      expectSameBytes(await readAll(await store.get('blobs/sha256/big', { start, end })), want, `get [${start},${end})`);
    }
    for (const at of [0, 5000, data.length]) {
      expect((await store.getBytes('blobs/sha256/big', { start: at, end: at })).length).toBe(0);
      expect((await readAll(await store.get('blobs/sha256/big', { start: at, end: at }))).length).toBe(0);
    }
  });

  it('a range past the end of the object or with start > end is rejected', async () => {
    await store.putBytes('range/ten', Buffer.from('0123456789'));
    await expect(store.getBytes('range/ten', { start: 5, end: 11 })).rejects.toMatchObject({ code: 'STORE_ERROR' });
    await expect(store.get('range/ten', { start: 5, end: 11 })).rejects.toMatchObject({ code: 'STORE_ERROR' });
    await expect(store.getBytes('range/ten', { start: 20, end: 30 })).rejects.toMatchObject({ code: 'STORE_ERROR' });
    await expect(store.getBytes('range/ten', { start: 6, end: 5 })).rejects.toMatchObject({ code: 'STORE_ERROR' });
    expect((await store.getBytes('range/ten', { start: 5, end: 10 })).toString()).toBe('56789');
  });

  it('a missing key: head is null, get/getBytes reject with OBJECT_NOT_FOUND', async () => {
    expect(await store.head('missing/nope')).toBeNull();
    await expect(store.get('missing/nope')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    await expect(store.getBytes('missing/nope')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    await expect(store.get('missing/nope', { start: 0, end: 4 })).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    await expect(store.getBytes('missing/nope', { start: 0, end: 4 })).rejects.toMatchObject({
      code: 'OBJECT_NOT_FOUND',
    });
  });

  it('list returns exactly the keys under a prefix, including a partial-name prefix', async () => {
    const keys = [
      'ls/manifests/ab01.json',
      'ls/manifests/ab02.json',
      'ls/manifests/ac01.json',
      'ls/manifests/sub/ab99.json',
      'ls/blobs/sha256/ab',
      'ls/abc',
    ];
    for (const k of keys) await store.putBytes(k, Buffer.from(k));
    expect(await keysOf(store, 'ls/')).toEqual([...keys].sort());
    expect(await keysOf(store, 'ls/manifests/')).toEqual([
      'ls/manifests/ab01.json',
      'ls/manifests/ab02.json',
      'ls/manifests/ac01.json',
      'ls/manifests/sub/ab99.json',
    ]);
    expect(await keysOf(store, 'ls/manifests/ab')).toEqual(['ls/manifests/ab01.json', 'ls/manifests/ab02.json']);
    expect(await keysOf(store, 'ls/manifests/ab01.json')).toEqual(['ls/manifests/ab01.json']);
    expect(await keysOf(store, 'ls/manifests/s')).toEqual(['ls/manifests/sub/ab99.json']);
    expect(await keysOf(store, 'ls/a')).toEqual(['ls/abc']);
    expect(await keysOf(store, 'ls/nothing')).toEqual([]);
    expect(await keysOf(store, 'nowhere/')).toEqual([]);
    const all = await keysOf(store, '');
    for (const k of keys) expect(all).toContain(k);
    for await (const o of store.list('ls/manifests/ab01')) {
      expect(o.size).toBe('ls/manifests/ab01.json'.length);
      expect(o.mtime).toBeInstanceOf(Date);
    }
  });

  it('delete removes the key; deleting a missing key is fine', async () => {
    await store.putBytes('del/a/b/c', Buffer.from('x'));
    await store.putBytes('del/a/keep', Buffer.from('y'));
    await store.delete('del/a/b/c');
    expect(await store.head('del/a/b/c')).toBeNull();
    await expect(store.getBytes('del/a/b/c')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    expect(await keysOf(store, 'del/')).toEqual(['del/a/keep']);
    await store.delete('del/a/b/c');
    await store.delete('del/never/existed');
    await store.delete('del/a/keep');
    expect(await keysOf(store, 'del/')).toEqual([]);
  });

  it('overwriting a key replaces it whole', async () => {
    await store.putBytes('ow/k', Buffer.from('a much longer first version of the object'));
    await store.putBytes('ow/k', Buffer.from('short'));
    expect((await store.getBytes('ow/k')).toString()).toBe('short');
    expect((await store.head('ow/k'))?.size).toBe(5);
    const src = join(scratch, `ow-${Math.random().toString(36).slice(2)}`);
    await writeFile(src, 'from a file');
    await store.putFile('ow/k', src);
    expect((await store.getBytes('ow/k')).toString()).toBe('from a file');
    expect(await keysOf(store, 'ow/')).toEqual(['ow/k']);
  });

  it('touch moves mtime forward and keeps the bytes; touching a missing key is OBJECT_NOT_FOUND', async () => {
    const body = randomBytes(3000);
    await store.putBytes('touch/k', body);
    const before = (await store.head('touch/k'))!.mtime.getTime();
    // S3's Last-Modified has one-second resolution.
    await new Promise((r) => setTimeout(r, 1100));
    await store.touch('touch/k');
    const after = await store.head('touch/k');
    if (h.touchUpdatesMtime) expect(after!.mtime.getTime()).toBeGreaterThan(before);
    expect(after!.size).toBe(body.length);
    expectSameBytes(await store.getBytes('touch/k'), body, 'after touch');
    await expect(store.touch('touch/missing')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
  });

  it('rejects invalid keys', async () => {
    for (const bad of ['../x', 'a/../x', '/abs', 'a//b', '', 'a/./b', 'nul\0byte']) {
      await expect(store.putBytes(bad, Buffer.from('x')), JSON.stringify(bad)).rejects.toMatchObject({
        code: 'STORE_ERROR',
      });
      await expect(store.head(bad), JSON.stringify(bad)).rejects.toMatchObject({ code: 'STORE_ERROR' });
    }
  });

  it('putFile from a path that does not exist rejects and leaves no object', async () => {
    await expect(store.putFile('nofile/k', join(scratch, 'does-not-exist'))).rejects.toMatchObject({
      code: 'STORE_ERROR',
    });
    expect(await store.head('nofile/k')).toBeNull();
    expect(await keysOf(store, 'nofile/')).toEqual([]);
  });
});

describe('FileStore specifics', () => {
  let dir: string;
  let root: string;
  let store: FileStore;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'strata-filestore-x-'));
    root = join(dir, 'store');
    store = new FileStore(`file://${root}`);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function filesUnderRoot(): Promise<string[]> {
    const out: string[] = [];
    async function walk(d: string): Promise<void> {
      for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
        const p = join(d, e.name);
        if (e.isDirectory()) await walk(p);
        else out.push(relative(root, p));
      }
    }
    await walk(root);
    return out.sort();
  }

  it('a failed write leaves no visible object and no stray file outside .tmp', async () => {
    await store.putBytes('ok/one', Buffer.from('1'));
    await expect(store.putFile('bad/one', join(dir, 'missing-source'))).rejects.toMatchObject({ code: 'STORE_ERROR' });
    // A directory in the way of the destination makes the rename fail after the copy.
    await store.putBytes('clash/x/y', Buffer.from('y'));
    const src = join(dir, 'src');
    await writeFile(src, randomBytes(1000));
    await expect(store.putFile('clash/x', src)).rejects.toMatchObject({ code: 'STORE_ERROR' });
    await expect(store.putBytes('clash/x', Buffer.from('z'))).rejects.toMatchObject({ code: 'STORE_ERROR' });
    expect(await store.head('bad/one')).toBeNull();
    expect(await store.head('clash/x')).toBeNull();
    const files = await filesUnderRoot();
    expect(files.filter((f) => !f.startsWith('.tmp/'))).toEqual(['clash/x/y', 'ok/one']);
    // Failed writes clean their temp files up too.
    expect(files.filter((f) => f.startsWith('.tmp/'))).toEqual([]);
    expect(await keysOf(store, '')).toEqual(['clash/x/y', 'ok/one']);
  });

  it('keys map to files under the root; .tmp is reserved and never listed', async () => {
    await store.putBytes('m/a/b', Buffer.from('ab'));
    expect(await filesUnderRoot()).toContain(join('m', 'a', 'b'));
    await expect(store.putBytes('.tmp/x', Buffer.from('x'))).rejects.toMatchObject({ code: 'STORE_ERROR' });
    await expect(store.getBytes('../x')).rejects.toMatchObject({ code: 'STORE_ERROR' });
    await expect(keysOf(store, '../')).rejects.toMatchObject({ code: 'STORE_ERROR' });
    expect(await keysOf(store, '.tmp')).toEqual([]);
    expect(await keysOf(store, '.tmp/')).toEqual([]);
  });

  it('delete prunes directories it left empty, up to the root', async () => {
    await store.putBytes('prune/deep/er/k', Buffer.from('k'));
    await store.delete('prune/deep/er/k');
    const top = await readdir(root);
    expect(top).not.toContain('prune');
    expect(top).toContain('.tmp');
  });

  it('a store whose root does not exist yet reads as empty', async () => {
    const s = new FileStore(join(dir, 'not-yet'));
    expect(await s.head('a')).toBeNull();
    expect(await keysOf(s, '')).toEqual([]);
    await expect(s.getBytes('a')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
  });
});

describe('openStore', () => {
  it('chooses the store by scheme', async () => {
    expect(openStore('file:///var/tmp/strata-x')).toBeInstanceOf(FileStore);
    expect(openStore('/var/tmp/strata-x').url).toBe('file:///var/tmp/strata-x');
    const s3 = openStore('s3://my-bucket/some/prefix/', { s3: { region: 'us-east-1', endpoint: 'http://127.0.0.1:9' } });
    // An S3 store whose SDK loads on first use.
    expect(s3).toBeInstanceOf(DeferredStore);
    expect(s3.url).toBe('s3://my-bucket/some/prefix');
    await (s3 as DeferredStore).close();
  });

  it('rejects unknown schemes and malformed URLs with INVALID_BACKUP_CONFIG', () => {
    for (const bad of ['gs://b/p', 'relative/path', '', 'file://host/x', 's3://', 's3://UPPER/x', 's3://b/../x', 'http://x']) {
      expect(() => openStore(bad), bad).toThrow(expect.objectContaining({ code: 'INVALID_BACKUP_CONFIG' }));
    }
  });
});
