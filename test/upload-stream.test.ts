/**
 * A backup to a remote store uploads the layer while it is captured (multipart parts in flight
 * before the capture ends), under a staging key where it stays: the manifest names it, and a
 * locator under its digest lets the next backup of the same content keep the first copy. Nothing
 * is copied server side. A failed backup leaves no staging object, no blob and no upload behind.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListMultipartUploadsCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Strata, type ProgressEvent } from '../src/index.js';
import { decodeManifest } from '../src/store/manifest.js';
import { type FaultProxy, startFaultProxy } from './helpers/faultproxy.js';
import { startBusyWriter } from './helpers/busy.js';
import { prng } from './helpers/fidelity.js';
import { S3RVER_CREDENTIALS, s3StoreFor, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { diffTrees, summarize } from './helpers/tree.js';

const MiB = 1024 * 1024;
let s3: S3TestServer;
let proxy: FaultProxy;
let work: string;

beforeAll(async () => {
  s3 = await startS3Server();
  // In front of s3rver: it logs every request and answers ListMultipartUploads, which s3rver lacks.
  proxy = await startFaultProxy({ upstream: s3.endpoint, s3rverDir: s3.dir });
  work = await mkdtemp(join(tmpdir(), 'strata-upload-stream-'));
});
afterAll(async () => {
  await proxy?.close();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

async function keys(prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of s3StoreFor(s3).list(prefix)) out.push(o.key);
  return out;
}

async function uploadsInFlight(): Promise<number> {
  const client = new S3Client({ endpoint: proxy.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: S3RVER_CREDENTIALS });
  try {
    const res = await client.send(new ListMultipartUploadsCommand({ Bucket: s3.bucket }));
    return res.Uploads?.length ?? 0;
  } finally {
    client.destroy();
  }
}

it('uploads parts while capturing, keeps the layer where it was uploaded (no server-side copy), and stores identical content once', async () => {
  const src = join(work, 'src');
  await mkdir(src);
  // Incompressible files in capture order: 96 MiB of blob, six 5 MiB parts before the last file.
  for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}.bin`), prng(1000 + i, 16 * MiB));
  await writeFile(join(src, 'small.txt'), 'the last file\n');
  const events: Array<ProgressEvent['phase']> = [];
  const store = s3StoreFor(s3, { endpoint: proxy.endpoint, partSize: 5 * MiB, queueSize: 2 });
  const strata = new Strata({ home: join(work, 'home'), store, mode: 'copy', onProgress: (e) => events.push(e.phase) });
  proxy.reset();
  const h = await strata.createBackup({ dir: src });
  // Part uploads finished before the capture did: the upload ran alongside it.
  const lastCapture = events.lastIndexOf('capture');
  expect(events.indexOf('upload')).toBeGreaterThanOrEqual(0);
  expect(events.indexOf('upload')).toBeLessThan(lastCapture);
  expect(proxy.log.filter((e) => e.op === 'CopyObject')).toEqual([]);
  const layer = (await strata.getBackup(h.id)).layers[0]!;
  expect(layer.key).toMatch(/^blobs\/staging\//);
  expect(await keys('blobs/staging/')).toEqual([layer.key]);
  expect((await s3StoreFor(s3).getBytes(`blobs/at/${layer.digest.slice(7)}`)).toString()).toBe(layer.key);
  expect(await uploadsInFlight()).toBe(0);
  const out = join(work, 'out');
  await strata.restoreBackup(h, { dir: out });
  expect(diffTrees(await summarize(src), await summarize(out))).toEqual([]);
  // A second full backup of the same tree: its upload is dropped for the first copy.
  const h2 = await strata.createBackup({ dir: src });
  expect((await strata.getBackup(h2.id)).layers[0]!.key).toBe(layer.key);
  expect(await keys('blobs/staging/')).toEqual([layer.key]);
  // gc keeps the layer and its locator while a backup names them.
  const report = await strata.gc({ graceMs: 0 });
  expect(report.deletedBlobs.map((b) => b.key)).toEqual([]);
  await strata.deleteBackup(h.id);
  await strata.deleteBackup(h2.id);
  const after = await strata.gc({ graceMs: 0 });
  expect(after.deletedBlobs.map((b) => b.key).sort()).toEqual(expect.arrayContaining([layer.key, `blobs/at/${layer.digest.slice(7)}`]));
}, 120_000);

it('a backup that fails mid-capture leaves no staging object, blob or upload', async () => {
  const src = join(work, 'src-fail');
  await mkdir(src);
  // Parts of these are uploaded by the time capture reaches the last file, which never holds
  // still: the backup fails (BACKUP_CREATE_FAILED, "kept changing") with its upload under way.
  for (let i = 0; i < 3; i++) await writeFile(join(src, `a${i}.bin`), prng(2000 + i, 8 * MiB));
  const stopWriter = await startBusyWriter(join(src, 'z-busy.log'));
  try {
    const before = await keys('blobs/');
    const listed = await keys('manifests/');
    proxy.reset();
    const events: Array<ProgressEvent['phase']> = [];
    const store = s3StoreFor(s3, { endpoint: proxy.endpoint, partSize: 5 * MiB, queueSize: 2 });
    const strata = new Strata({ home: join(work, 'home-fail'), store, mode: 'copy', onProgress: (e) => events.push(e.phase) });
    await expect(strata.createBackup({ dir: src })).rejects.toMatchObject({ code: 'BACKUP_CREATE_FAILED', message: expect.stringMatching(/kept changing/) });
    expect(events, 'the upload was under way when the capture failed').toContain('upload');
    expect(proxy.log.some((e) => e.op === 'AbortMultipartUpload')).toBe(true);
    expect(proxy.log.some((e) => e.op === 'CompleteMultipartUpload')).toBe(false);
    expect(await keys('blobs/')).toEqual(before);
    expect(await uploadsInFlight()).toBe(0);
    expect(await keys('manifests/')).toEqual(listed);
  } finally {
    stopWriter();
  }
}, 120_000);

it('a manifest may point a layer only at a staging name', async () => {
  const h = await new Strata({ home: join(work, 'home-keys'), store: s3StoreFor(s3), mode: 'copy' }).createBackup({ dir: join(work, 'src') });
  const raw = await s3StoreFor(s3).getBytes(`manifests/${h.id}.json`);
  const m = JSON.parse(raw.toString()) as { layers: Array<Record<string, unknown>> };
  expect(decodeManifest(raw).layers[0]!.key).toMatch(/^blobs\/staging\/\d+-[0-9a-f]{24}$/);
  for (const key of ['manifests/other.json', `blobs/sha256/${'0'.repeat(64)}`, 'blobs/staging/../../manifests/x', 'blobs/staging/1-abc', 42]) {
    m.layers[0]!.key = key;
    expect(() => decodeManifest(Buffer.from(JSON.stringify(m))), String(key)).toThrow(/layer 0 key/);
  }
}, 120_000);

it('a locator that cannot be stored costs a later backup an upload, never this backup', async () => {
  const src = join(work, 'src-noloc');
  await mkdir(src);
  await writeFile(join(src, 'a.bin'), prng(3000, 12 * MiB));
  await writeFile(join(src, 'b.txt'), 'beside it\n');
  const base = s3StoreFor(s3, { endpoint: proxy.endpoint, partSize: 5 * MiB, queueSize: 2 });
  let refused = 0;
  const store = new Proxy(base, {
    get(target, prop) {
      if (prop === 'putBytes')
        return async (key: string, body: Buffer) => {
          if (key.startsWith('blobs/at/')) {
            refused++;
            throw new Error('locator write refused');
          }
          return target.putBytes(key, body);
        };
      const v = Reflect.get(target, prop) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  const warnings: string[] = [];
  const strata = new Strata({ home: join(work, 'home-noloc'), store, mode: 'copy', onWarning: (w) => warnings.push(w) });
  const h = await strata.createBackup({ dir: src });
  expect(refused).toBe(1);
  expect(warnings.some((w) => w.includes('locator') && w.includes('locator write refused'))).toBe(true);
  const layer = (await strata.getBackup(h.id)).layers[0]!;
  expect(layer.key).toMatch(/^blobs\/staging\//);
  expect(await keys(`blobs/at/${layer.digest.slice(7)}`)).toEqual([]);
  // Without the locator the next backup of the same tree keeps its own upload; both restore.
  const h2 = await strata.createBackup({ dir: src });
  const layer2 = (await strata.getBackup(h2.id)).layers[0]!;
  expect(layer2.digest).toBe(layer.digest);
  expect(layer2.key).not.toBe(layer.key);
  for (const [i, hh] of [h, h2].entries()) {
    const out = join(work, `out-noloc-${i}`);
    await strata.restoreBackup(hh, { dir: out });
    expect(diffTrees(await summarize(src), await summarize(out))).toEqual([]);
  }
  base.close();
}, 120_000);
