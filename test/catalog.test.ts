/**
 * The catalog through the library API: handles, config validation, names, TTLs, list/get/delete,
 * dedup and gc, against the file store and a real S3 server (s3rver on loopback).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TTL_SECONDS, StoreError, Strata, type BackupHandle, type ObjectStore } from '../src/index.js';
import { FileStore } from '../src/store/file.js';
import { putManifest } from '../src/store/catalog.js';
import { encodePrefetch, packPrefetch } from '../src/format/prefetch.js';
import { s3StoreFor, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { layerKeysOf } from './helpers/keys.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let work: string;
let s3: S3TestServer;
let seq = 0;

/** A small real tree: files, a subdirectory, an empty file, a symlink. `seed` makes its content distinct. */
async function makeTree(root: string, seed: string): Promise<string> {
  await mkdir(join(root, 'sub/deeper'), { recursive: true });
  await writeFile(join(root, 'hello.txt'), `hello from ${seed}\n`);
  await writeFile(join(root, 'sub/data.bin'), Buffer.concat([Buffer.from(seed), randomBytes(64 * 1024)]));
  await writeFile(join(root, 'sub/deeper/empty'), '');
  await symlink('hello.txt', join(root, 'link'));
  return root;
}

async function keysOf(store: ObjectStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of store.list(prefix)) out.push(o.key);
  return out.sort();
}

/** Wait until the handle's expiry has passed (plus a margin). */
async function untilExpired(...handles: BackupHandle[]): Promise<void> {
  const last = Math.max(...handles.map((h) => Date.parse(h.expiresAt!)));
  await sleep(Math.max(0, last - Date.now()) + 150);
}

async function expectCode(p: Promise<unknown>, code: string): Promise<unknown> {
  const err = await p.then(
    () => {
      throw new Error(`expected a rejection with ${code}, got success`);
    },
    (e: unknown) => e,
  );
  expect((err as { code?: string }).code, String((err as Error)?.message)).toBe(code);
  return err;
}

interface Env {
  strata: Strata;
  store: ObjectStore;
  home: string;
  close(): Promise<void>;
}

type Maker = () => Promise<Env>;

/** A fresh, empty store for each call, so tests do not see each other's backups. */
const fileEnv: Maker = async () => {
  const home = join(work, `home-${++seq}`);
  const store = new FileStore(join(home, 'store'));
  return { strata: new Strata({ home, store, mode: 'copy' }), store, home, close: async () => {} };
};
const s3Env: Maker = async () => {
  const home = join(work, `home-${++seq}`);
  const store = s3StoreFor(s3, { url: `${s3.url}-${seq}` });
  return { strata: new Strata({ home, store, mode: 'copy' }), store, home, close: async () => store.close() };
};

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-catalog-'));
  s3 = await startS3Server();
});

afterAll(async () => {
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe.each([
  ['file store', () => fileEnv()],
  ['S3 server', () => s3Env()],
])('catalog through the %s', (label, make) => {
  const tag = label.replace(/\W/g, '');
  let srcA: string;
  let srcB: string;
  let srcC: string;
  let env: Env;
  const envs: Env[] = [];
  const fresh = async (): Promise<Env> => {
    const e = await make();
    envs.push(e);
    return e;
  };
  const dest = (what: string) => join(work, `dest-${tag}-${what}-${++seq}`);

  beforeAll(async () => {
    srcA = await makeTree(join(work, `src-${tag}-a`), `${tag}-a`);
    srcB = await makeTree(join(work, `src-${tag}-b`), `${tag}-b`);
    srcC = await makeTree(join(work, `src-${tag}-c`), `${tag}-c`);
    env = await fresh();
  });
  afterAll(async () => {
    for (const e of envs) await e.close();
  });

  it('createBackup returns a full handle; default TTL is 3 days; ttl null never expires; the handle survives JSON', async () => {
    const h = await env.strata.createBackup({ dir: srcA });
    expect(Object.keys(h).sort()).toEqual(['createdAt', 'dir', 'expiresAt', 'id', 'manifestDigest']);
    expect(h.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(h.dir).toBe(srcA);
    expect(h.manifestDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(new Date(h.createdAt).toISOString()).toBe(h.createdAt);
    expect(Math.abs(Date.parse(h.createdAt) - Date.now())).toBeLessThan(60_000);
    expect(DEFAULT_TTL_SECONDS).toBe(3 * 24 * 3600);
    expect(Date.parse(h.expiresAt!) - Date.parse(h.createdAt)).toBe(3 * 24 * 3600 * 1000);

    const forever = await env.strata.createBackup({ dir: srcA, ttl: null, name: 'forever' });
    expect(forever.expiresAt).toBeNull();
    expect(forever.name).toBe('forever');
    expect((await env.strata.getBackup(forever.id)).expired).toBe(false);

    const short = await env.strata.createBackup({ dir: srcA, ttl: 90 });
    expect(Date.parse(short.expiresAt!) - Date.parse(short.createdAt)).toBe(90_000);

    // A handle that went through JSON (a file, a queue, another process) restores.
    for (const handle of [h, forever]) {
      const back = JSON.parse(JSON.stringify(handle)) as BackupHandle;
      expect(back).toEqual(handle);
      const d = dest('json');
      const r = await env.strata.restoreBackup(back, { dir: d });
      expect(r).toMatchObject({ success: true, dir: d, id: handle.id });
      expect(diffTrees(await summarize(srcA), await summarize(d))).toEqual([]);
    }
  });

  it('rejects invalid configs with INVALID_BACKUP_CONFIG and stores nothing', async () => {
    const e = await fresh();
    const aFile = join(work, `a-file-${tag}`);
    await writeFile(aFile, 'not a directory');
    const bad: Array<[string, unknown]> = [
      ['relative dir', { dir: 'relative/dir' }],
      ['dir with ..', { dir: `${srcA}/../${srcA.split('/').pop()}` }],
      ['missing dir', { dir: join(work, 'does-not-exist') }],
      ['a file', { dir: aFile }],
      ['empty dir string', { dir: '' }],
      ['no options', undefined],
      ['ttl 0', { dir: srcA, ttl: 0 }],
      ['negative ttl', { dir: srcA, ttl: -5 }],
      ['NaN ttl', { dir: srcA, ttl: NaN }],
      ['string ttl', { dir: srcA, ttl: '3d' }],
      ['257-char name', { dir: srcA, name: 'n'.repeat(257) }],
      ['empty name', { dir: srcA, name: '' }],
      ['name with a control char', { dir: srcA, name: 'bad\nname' }],
      ['name with DEL', { dir: srcA, name: 'bad\x7fname' }],
    ];
    for (const [what, opts] of bad) {
      const err = await e.strata.createBackup(opts as never).then(
        () => null,
        (x: unknown) => x,
      );
      expect(err, what).not.toBeNull();
      expect((err as { code?: string }).code, `${what}: ${String((err as Error).message)}`).toBe('INVALID_BACKUP_CONFIG');
    }
    // A 256-character name is the longest allowed.
    const ok = await e.strata.createBackup({ dir: srcA, name: 'n'.repeat(256) });
    expect(ok.name).toHaveLength(256);
    expect(await keysOf(e.store, 'manifests/')).toEqual([`manifests/${ok.id}.json`]);
  });

  it('names resolve to the newest live backup; expired names → BACKUP_EXPIRED; unknown → BACKUP_NOT_FOUND; expired restores write nothing', async () => {
    const e = await fresh();
    const older = await e.strata.createBackup({ dir: srcA, name: 'proj' });
    await sleep(5);
    // ttl 5 s: these must still be live through two more backups and two restores below (well
    // under a second here, but a slow, loaded machine can take several); then the test waits
    // for their real expiry.
    const newer = await e.strata.createBackup({ dir: srcB, name: 'proj', ttl: 5 });
    const gone1 = await e.strata.createBackup({ dir: srcC, name: 'gone', ttl: 5 });
    await sleep(5);
    const gone2 = await e.strata.createBackup({ dir: srcC, name: 'gone', ttl: 5 });
    expect(Date.parse(newer.createdAt)).toBeGreaterThan(Date.parse(older.createdAt));

    // While both live, the name restores the newer one.
    const d1 = dest('name-newer');
    const r1 = await e.strata.restoreBackup('proj', { dir: d1 });
    expect(r1.id).toBe(newer.id);
    expect(await readFile(join(d1, 'hello.txt'), 'utf8')).toBe(`hello from ${tag}-b\n`);
    expect((await e.strata.restoreBackup('gone', { dir: dest('gone-live') })).id).toBe(gone2.id);

    await untilExpired(newer, gone1, gone2);

    // The newer expired: the name falls back to the older live one.
    const d2 = dest('name-older');
    const r2 = await e.strata.restoreBackup('proj', { dir: d2 });
    expect(r2.id).toBe(older.id);
    expect(await readFile(join(d2, 'hello.txt'), 'utf8')).toBe(`hello from ${tag}-a\n`);

    // Every backup of the name expired.
    const d3 = dest('gone');
    await expectCode(e.strata.restoreBackup('gone', { dir: d3 }), 'BACKUP_EXPIRED');
    expect(existsSync(d3)).toBe(false);
    await expectCode(e.strata.restoreBackup('never-made', { dir: d3 }), 'BACKUP_NOT_FOUND');
    expect(existsSync(d3)).toBe(false);

    // An expired backup by handle, by JSON'd handle or by id: refused, nothing written.
    for (const ref of [newer, JSON.parse(JSON.stringify(newer)) as BackupHandle, newer.id]) {
      const d = dest('expired');
      await expectCode(e.strata.restoreBackup(ref, { dir: d }), 'BACKUP_EXPIRED');
      expect(existsSync(d)).toBe(false);
    }
    // Into an existing empty dir (with force, too): still nothing written.
    const empty = dest('expired-empty');
    await mkdir(empty);
    await expectCode(e.strata.restoreBackup(newer.id, { dir: empty, force: true }), 'BACKUP_EXPIRED');
    expect(await readdir(empty)).toEqual([]);
    // With no dir, the default target (the source) is not touched either.
    const before = await summarize(srcB);
    await expectCode(e.strata.restoreBackup(newer), 'BACKUP_EXPIRED');
    expect(diffTrees(before, await summarize(srcB))).toEqual([]);

    // The expired backups are still listed (until gc), flagged.
    const info = await e.strata.getBackup(newer.id);
    expect(info.expired).toBe(true);
  });

  it('listBackups is newest first and filters by name; getBackup; deleteBackup', async () => {
    const e = await fresh();
    expect(await e.strata.listBackups()).toEqual([]);
    const a = await e.strata.createBackup({ dir: srcA, name: 'x' });
    await sleep(5);
    const b = await e.strata.createBackup({ dir: srcB, name: 'y', ttl: null });
    await sleep(5);
    const c = await e.strata.createBackup({ dir: srcC, name: 'x' });
    await sleep(5);
    const d = await e.strata.createBackup({ dir: srcA });

    expect((await e.strata.listBackups()).map((i) => i.id)).toEqual([d.id, c.id, b.id, a.id]);
    expect((await e.strata.listBackups({ name: 'x' })).map((i) => i.id)).toEqual([c.id, a.id]);
    expect((await e.strata.listBackups({ name: 'y' })).map((i) => i.id)).toEqual([b.id]);
    expect(await e.strata.listBackups({ name: 'nope' })).toEqual([]);

    const info = await e.strata.getBackup(b.id);
    expect(info).toMatchObject({ ...b, expired: false });
    expect(info.layers).toHaveLength(1);
    expect(info.layers[0]!.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(info.size).toBe(info.layers[0]!.size);
    expect(info.size).toBeGreaterThan(0);
    const listed = (await e.strata.listBackups()).find((i) => i.id === b.id);
    expect(listed).toEqual(info);

    await e.strata.deleteBackup(b.id);
    await expectCode(e.strata.getBackup(b.id), 'BACKUP_NOT_FOUND');
    await expectCode(e.strata.restoreBackup(b.id, { dir: dest('deleted') }), 'BACKUP_NOT_FOUND');
    await expectCode(e.strata.restoreBackup(b, { dir: dest('deleted') }), 'BACKUP_NOT_FOUND');
    await expectCode(e.strata.deleteBackup(b.id), 'BACKUP_NOT_FOUND');
    await expectCode(e.strata.deleteBackup('0190aaaa-0000-7000-8000-000000000000'), 'BACKUP_NOT_FOUND');
    await expectCode(e.strata.getBackup('0190aaaa-0000-7000-8000-000000000000'), 'BACKUP_NOT_FOUND');
    await expectCode(e.strata.deleteBackup('../etc'), 'INVALID_BACKUP_CONFIG');
    expect((await e.strata.listBackups()).map((i) => i.id)).toEqual([d.id, c.id, a.id]);
    expect((await e.strata.listBackups({ name: 'y' })).map((i) => i.id)).toEqual([]);
  });

  it('dedup: an unchanged tree backed up twice is one blob and two manifests', async () => {
    const e = await fresh();
    const h1 = await e.strata.createBackup({ dir: srcA });
    const h2 = await e.strata.createBackup({ dir: srcA, name: 'again' });
    expect(h2.id).not.toBe(h1.id);
    expect(await keysOf(e.store, 'manifests/')).toEqual([`manifests/${h1.id}.json`, `manifests/${h2.id}.json`].sort());
    const [i1, i2] = [await e.strata.getBackup(h1.id), await e.strata.getBackup(h2.id)];
    expect(i1.layers[0]!.digest).toBe(i2.layers[0]!.digest);
    // One blob, wherever it lives: the second backup found it (under its digest, or by its locator).
    expect(layerKeysOf(i2)).toEqual(layerKeysOf(i1));
    expect(await keysOf(e.store, 'blobs/')).toEqual(layerKeysOf(i1));
    // A changed tree is a new blob.
    const h3 = await e.strata.createBackup({ dir: srcB });
    expect(await keysOf(e.store, 'blobs/')).toEqual([...layerKeysOf(i1), ...layerKeysOf(await e.strata.getBackup(h3.id))].sort());
  });

  it('gc deletes expired manifests and blobs only they used; keeps shared and live blobs; dryRun deletes nothing', async () => {
    const e = await fresh();
    const expA = await e.strata.createBackup({ dir: srcA, ttl: 1 }); // expired, sole user of blob A
    const liveB = await e.strata.createBackup({ dir: srcB }); // live, sole user of blob B
    const expC = await e.strata.createBackup({ dir: srcC, ttl: 1 }); // expired, shares blob C ...
    const liveC = await e.strata.createBackup({ dir: srcC, ttl: null }); // ... with a live one
    const blobOf = async (id: string) => layerKeysOf(await e.strata.getBackup(id));
    const [blobA, blobB, blobC] = [await blobOf(expA.id), await blobOf(liveB.id), await blobOf(liveC.id)];
    expect(await blobOf(expC.id)).toEqual(blobC);
    expect(await keysOf(e.store, 'blobs/')).toEqual([...blobA, ...blobB, ...blobC].sort());

    await untilExpired(expA, expC);
    // Within the default grace an expired manifest still protects its blobs.
    const graced = await e.strata.gc({ dryRun: true });
    expect(graced.deletedBlobs).toEqual([]);

    const manifestsBefore = await keysOf(e.store, 'manifests/');
    const blobsBefore = await keysOf(e.store, 'blobs/');
    const dry = await e.strata.gc({ dryRun: true, graceMs: 0 });
    expect(dry.dryRun).toBe(true);
    expect([...dry.expiredManifests].sort()).toEqual([expA.id, expC.id].sort());
    expect(dry.deletedBlobs.map((b) => b.key).sort()).toEqual(blobA);
    const infoA = await e.strata.getBackup(expA.id);
    expect(dry.deletedBlobs.find((b) => b.key === (infoA.layers[0]!.key ?? blobA[0]))!.size).toBe(infoA.size);
    expect(dry.freedBytes).toBe(dry.deletedBlobs.reduce((n, b) => n + b.size, 0));
    expect(dry.keptBlobs).toBe(blobB.length + blobC.length);
    expect(await keysOf(e.store, 'manifests/')).toEqual(manifestsBefore);
    expect(await keysOf(e.store, 'blobs/')).toEqual(blobsBefore);

    const real = await e.strata.gc({ graceMs: 0 });
    expect({ ...real, dryRun: true }).toEqual(dry);
    expect(real.dryRun).toBe(false);
    expect(await keysOf(e.store, 'blobs/')).toEqual([...blobB, ...blobC].sort());
    expect(await keysOf(e.store, 'manifests/')).toEqual([`manifests/${liveB.id}.json`, `manifests/${liveC.id}.json`].sort());
    await expectCode(e.strata.getBackup(expA.id), 'BACKUP_NOT_FOUND');
    await expectCode(e.strata.getBackup(expC.id), 'BACKUP_NOT_FOUND');

    // The live backups, including the one whose blob was shared, still restore.
    for (const [h, src] of [
      [liveB, srcB],
      [liveC, srcC],
    ] as const) {
      const d = dest('after-gc');
      await e.strata.restoreBackup(h, { dir: d });
      expect(diffTrees(await summarize(src), await summarize(d))).toEqual([]);
    }
    // A second gc finds nothing more.
    const again = await e.strata.gc({ graceMs: 0 });
    expect(again).toMatchObject({ expiredManifests: [], deletedBlobs: [], keptBlobs: blobB.length + blobC.length, freedBytes: 0 });
  });

  it('gc keeps a live backup\'s prefetch record blob, and collects it with its expired backup', async () => {
    const e = await fresh();
    // A layer of 4 MiB, so 4000 refs scattered over it stay apart (over a small layer they
    // overlap, merge, and the record may fit inline after all).
    const src = join(work, `src-prefetch-${++seq}`);
    await mkdir(src);
    await writeFile(join(src, 'big.bin'), randomBytes(4 * 1024 * 1024));
    const h = await e.strata.createBackup({ dir: src, ttl: 1 });
    const { manifest } = await e.strata.resolve(h);
    // A record too big to ride inline: 4000 scattered refs into the layer.
    const size = manifest.layers[0]!.size;
    const refs = Array.from({ length: 4000 }, (_, i) => ({ layer: 0, blobOffset: (i * 7919 * 13) % (size - 64), blobLength: 1 + ((i * 31) % 63) }));
    const { blob, desc } = await packPrefetch(encodePrefetch(refs));
    expect(desc.inline).toBeUndefined();
    const key = `blobs/sha256/${desc.digest.slice(7)}`;
    await e.store.putBytes(key, blob);
    const withRecord = { ...manifest, id: h.id.slice(0, -4) + 'beef', expiresAt: null, prefetch: desc };
    await putManifest(e.store, withRecord);
    expect((await e.strata.getBackup(withRecord.id)).prefetch).toMatchObject({ refs: 4000, inline: false, size: desc.size });
    await untilExpired(h);
    // Live: kept, even with no grace.
    await e.strata.gc({ graceMs: 0 });
    expect(await keysOf(e.store, 'blobs/')).toContain(key);
    // Gone with its backup.
    await e.strata.deleteBackup(withRecord.id);
    await e.strata.gc({ graceMs: 0 });
    expect(await keysOf(e.store, 'blobs/')).not.toContain(key);
  });

  it('gc keeps an orphan blob younger than the grace period and collects it with graceMs 0', async () => {
    const e = await fresh();
    const live = await e.strata.createBackup({ dir: srcA });
    const orphanFile = join(work, `orphan-${tag}`);
    await writeFile(orphanFile, randomBytes(1000));
    const orphan = `blobs/sha256/${'ab'.repeat(32)}`;
    await e.store.putFile(orphan, orphanFile);
    const liveKeys = layerKeysOf(await e.strata.getBackup(live.id));
    expect(await keysOf(e.store, 'blobs/')).toEqual([...liveKeys, orphan].sort());

    const kept = await e.strata.gc({ graceMs: 60_000 });
    expect(kept).toMatchObject({ expiredManifests: [], deletedBlobs: [], keptBlobs: liveKeys.length + 1 });
    const keptDefault = await e.strata.gc();
    expect(keptDefault.deletedBlobs).toEqual([]);
    expect(await e.store.head(orphan)).not.toBeNull();

    // s3rver's Last-Modified has one-second resolution: let the upload fall at least a second behind.
    await sleep(1100);
    const collected = await e.strata.gc({ graceMs: 0 });
    expect(collected.deletedBlobs).toEqual([{ key: orphan, size: 1000 }]);
    expect(collected.freedBytes).toBe(1000);
    expect(collected.keptBlobs).toBe(liveKeys.length);
    expect(await e.store.head(orphan)).toBeNull();
    await e.strata.restoreBackup(live, { dir: dest('orphan-live') });
  });

  it('a corrupt manifest makes gc throw STORE_ERROR and delete nothing', async () => {
    const e = await fresh();
    const h = await e.strata.createBackup({ dir: srcA });
    await e.store.putBytes(`blobs/sha256/${'cd'.repeat(32)}`, Buffer.from('orphan'));
    await e.store.putBytes('manifests/x.json', Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0x7b]));
    const all = async () => [...(await keysOf(e.store, 'manifests/')), ...(await keysOf(e.store, 'blobs/'))];
    const before = await all();
    expect(before).toHaveLength(3 + layerKeysOf(await e.strata.getBackup(h.id)).length);
    await sleep(1100);

    const seen: string[] = [];
    const err = await expectCode(e.strata.gc({ graceMs: 0, onError: (k) => seen.push(k) }), 'STORE_ERROR');
    expect((err as Error).message).toContain('manifests/x.json');
    expect(seen).toEqual(['manifests/x.json']);
    await expectCode(e.strata.gc({ graceMs: 0, dryRun: true }), 'STORE_ERROR');
    expect(await all()).toEqual(before);

    // Listing skips it with a warning instead of failing.
    const warnings: string[] = [];
    const s = new Strata({ home: e.home, store: e.store, mode: 'copy', onWarning: (w) => warnings.push(w) });
    expect(await s.listBackups()).toHaveLength(1);
    expect(warnings.join('\n')).toContain('manifests/x.json');
  });

  it('a backup whose manifest write fails is BACKUP_CREATE_FAILED, invisible, and its blob goes at gc', async () => {
    const e = await fresh();
    let failures = 0;
    const failing = new Proxy(e.store, {
      get(target, prop, receiver) {
        if (prop === 'putBytes') {
          return async (key: string, body: Buffer) => {
            if (key.startsWith('manifests/')) {
              failures++;
              // What a real store throws when a write fails.
              throw new StoreError(`injected failure writing ${key}`);
            }
            return target.putBytes(key, body);
          };
        }
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const s = new Strata({ home: e.home, store: failing });
    const err = await expectCode(s.createBackup({ dir: srcA, name: 'doomed' }), 'BACKUP_CREATE_FAILED');
    expect(failures).toBe(1);
    expect((err as Error).cause).toBeInstanceOf(StoreError);
    expect((err as Error).message).toContain('injected failure');

    // A non-strata error from the store is wrapped the same way.
    const plain = new Proxy(e.store, {
      get(target, prop) {
        if (prop === 'putBytes') return async () => Promise.reject(new Error('disk on fire'));
        const v = Reflect.get(target, prop) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const err2 = await expectCode(new Strata({ home: e.home, store: plain }).createBackup({ dir: srcA }), 'BACKUP_CREATE_FAILED');
    expect(((err2 as Error).cause as Error).message).toBe('disk on fire');

    // Not visible: no manifest, nothing listed, the name resolves to nothing.
    expect(await e.strata.listBackups()).toEqual([]);
    expect(await s.listBackups()).toEqual([]);
    expect(await keysOf(e.store, 'manifests/')).toEqual([]);
    await expectCode(e.strata.restoreBackup('doomed', { dir: dest('doomed') }), 'BACKUP_NOT_FOUND');
    // The uploaded blob (and on a remote store its locator) is an orphan: within the grace
    // period kept, with graceMs 0 collected.
    const orphans = await keysOf(e.store, 'blobs/');
    expect(orphans.filter((k) => !k.startsWith('blobs/at/'))).toHaveLength(1);
    expect((await e.strata.gc()).deletedBlobs).toEqual([]);
    await sleep(1100);
    const r = await e.strata.gc({ graceMs: 0 });
    expect(r.deletedBlobs.map((b) => b.key).sort()).toEqual(orphans);
    expect(await keysOf(e.store, 'blobs/')).toEqual([]);
    // No local temp files were left behind.
    expect(await readdir(join(e.home, 'tmp'))).toEqual([]);
  });
});
