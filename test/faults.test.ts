/**
 * Store faults (issue 6): backups and restores through a fault-injecting proxy
 * (test/helpers/faultproxy.ts) in front of a real S3 server (s3rver). Every case ends one of two
 * ways, and the test checks which:
 *
 *   - the operation completes: the backup is listed and restores identical to the source; the
 *     restore is identical to the source;
 *   - it fails with a clear code: a failed backup (BACKUP_CREATE_FAILED) leaves nothing that lists
 *     or restores, no local temp file, and `gc` (grace 0) removes every blob and incomplete
 *     multipart upload it left; a failed restore leaves the target exactly as it was (absent, or
 *     the old content of a forced restore), no staging directory, no mount, no workspace.
 *
 * The outcomes are printed at the end (docs/reliability.md tabulates them).
 * Reproduce: npx vitest run test/faults.test.ts
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { StrataError, Strata, type BackupHandle } from '../src/index.js';
import { FileStore } from '../src/store/file.js';
import type { S3Store, S3StoreOptions } from '../src/store/s3.js';
import type { ByteRange, ObjectStore } from '../src/store/store.js';
import { IS_ROOT, need } from './helpers/caps.js';
import { layerKeysOf } from './helpers/keys.js';
import { type FaultProxy, type FaultRule, startFaultProxy } from './helpers/faultproxy.js';
import { prng } from './helpers/fidelity.js';
import { s3StoreFor, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { unmountUnder } from './helpers/workspace.js';

const MiB = 1024 * 1024;
/** The stores' socket (inactivity) timeout; see ctx(). */
const SOCKET_TIMEOUT_MS = 5000;

let work: string;
let s3: S3TestServer;
let proxy: FaultProxy;
let src: string;
let seq = 0;
const outcomes: string[] = [];

/** A small project: a 6 MiB incompressible file (a two-part multipart upload), 40 modules, a link. */
async function makeSource(root: string): Promise<void> {
  await mkdir(join(root, 'pkg/lib'), { recursive: true });
  await mkdir(join(root, 'empty'));
  await writeFile(join(root, 'big.bin'), prng(42, 6 * MiB + 4321));
  for (let i = 0; i < 40; i++) await writeFile(join(root, 'pkg/lib', `m${i}.js`), `export const m${i} = ${i};\n`.repeat(100 + i));
  await writeFile(join(root, 'pkg/package.json'), '{"name":"pkg"}\n');
  await symlink('big.bin', join(root, 'link'));
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-faults-'));
  s3 = await startS3Server();
  proxy = await startFaultProxy({ upstream: s3.endpoint, s3rverDir: s3.dir });
  src = join(work, 'src');
  await makeSource(src);
});

afterEach(() => {
  proxy.reset();
  if (work && IS_ROOT) unmountUnder(work);
});

afterAll(async () => {
  if (outcomes.length) console.log('fault outcomes:\n' + outcomes.join('\n'));
  if (work && IS_ROOT) unmountUnder(work);
  await proxy?.close();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

interface Ctx {
  n: number;
  url: string;
  /** Key prefix of the store inside the bucket. */
  prefix: string;
  home: string;
  store: S3Store;
  strata: Strata;
}

/**
 * A store through the proxy with short timeouts, so a stall costs seconds, not minutes. Not
 * shorter: s3rver and the proxy run on this test's event loop, which a loaded machine can hold
 * for a second or more, and an answer that late must not count as a stall (the stall faults
 * below hold for longer than this, or forever). Each
 * context gets its own client (the SDK's retry quota is per client) and, unless given, its own
 * key prefix (so a blob is really uploaded, not deduplicated against another case's).
 */
function ctx(opts: { url?: string; store?: S3StoreOptions; mode?: 'copy' | 'extract' } = {}): Ctx {
  const n = ++seq;
  const url = opts.url ?? `${s3.url}/case-${n}`;
  const home = join(work, `home-${n}`);
  const store = s3StoreFor(s3, {
    url,
    endpoint: proxy.endpoint,
    partSize: 5 * MiB,
    queueSize: 2,
    connectionTimeout: 1000,
    socketTimeout: SOCKET_TIMEOUT_MS,
    retryBaseDelayMs: 20,
    ...opts.store,
  });
  return { n, url, prefix: url.replace(/^s3:\/\/[^/]+\//, ''), home, store, strata: new Strata({ home, store, mode: opts.mode ?? 'copy' }) };
}

/** Incomplete multipart uploads s3rver holds for keys under prefix. */
function uploadsUnder(prefix: string): string[] {
  const dir = join(s3.dir, s3.bucket, '._S3rver_uploads');
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const id of readdirSync(dir)) {
    const keyFile = join(dir, id, 'key');
    if (!existsSync(keyFile)) continue;
    const key = readFileSync(keyFile, 'utf8');
    if (key.startsWith(prefix + '/')) out.push(key);
  }
  return out;
}

async function keysOf(c: Ctx, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of c.store.list(prefix)) out.push(o.key);
  return out.sort();
}

interface Outcome {
  ok: boolean;
  code?: string;
  ms: number;
  fired: number;
}

function record(kind: string, what: string, o: Outcome, extra = ''): void {
  outcomes.push(`${kind.padEnd(8)} | ${what.padEnd(58)} | ${o.ok ? 'completed' : `failed ${o.code}`} | ${o.fired} fault(s) | ${o.ms} ms${extra ? ' | ' + extra : ''}`);
}

/**
 * Back up `src` with `rules` active, then (faults off) check the outcome as the file's header
 * says. Returns what happened.
 */
async function backupUnder(what: string, rules: FaultRule[], opts: { seed?: number; store?: S3StoreOptions; expect?: 'ok' | 'fail' } = {}): Promise<Outcome> {
  const c = ctx(opts.store ? { store: opts.store } : {});
  proxy.setRules(rules, opts.seed);
  const t0 = Date.now();
  let handle: BackupHandle | undefined;
  let err: unknown;
  try {
    handle = await c.strata.createBackup({ dir: src, name: `faulty-${c.n}` });
  } catch (e) {
    err = e;
  }
  const o: Outcome = { ok: !!handle, ms: Date.now() - t0, fired: proxy.fired };
  proxy.reset();
  try {
    if (handle) {
      expect((await c.strata.listBackups()).map((b) => b.id)).toEqual([handle.id]);
      const dest = join(work, `restore-${c.n}`);
      await c.strata.restoreBackup(handle, { dir: dest, mode: 'copy' });
      expect(diffTrees(await summarize(src), await summarize(dest))).toEqual([]);
      await rm(dest, { recursive: true, force: true });
    } else {
      expect(err, String(err)).toBeInstanceOf(StrataError);
      o.code = (err as StrataError).code;
      expect(o.code, (err as Error).message).toBe('BACKUP_CREATE_FAILED');
      expect(await c.strata.listBackups()).toEqual([]);
      expect(await keysOf(c, 'manifests/')).toEqual([]);
      await expect(c.strata.restoreBackup(`faulty-${c.n}`, { dir: join(work, `nope-${c.n}`) })).rejects.toMatchObject({ code: 'BACKUP_NOT_FOUND' });
    }
    // The local temp blob is gone either way.
    expect(await readdir(join(c.home, 'tmp'))).toEqual([]);
    // gc (grace 0; `now` a little ahead, as s3rver's times have one-second resolution) leaves
    // exactly the valid backup's blob, and no incomplete upload.
    const before = { blobs: await keysOf(c, 'blobs/'), uploads: uploadsUnder(c.prefix) };
    const report = await c.strata.gc({ graceMs: 0, now: Date.now() + 2000 });
    const blobs = await keysOf(c, 'blobs/');
    if (handle) {
      expect(blobs).toEqual(layerKeysOf(await c.strata.getBackup(handle.id)));
    } else expect(blobs).toEqual([]);
    expect(uploadsUnder(c.prefix)).toEqual([]);
    const left = before.blobs.length - blobs.length + before.uploads.length;
    record('backup', what, o, left ? `gc removed ${before.blobs.length - blobs.length} blob(s), ${report.incompleteWrites.length} upload(s)` : '');
    if (opts.expect === 'ok') expect(o.ok, `expected the backup to complete: ${String(err)}`).toBe(true);
    if (opts.expect === 'fail') expect(o.ok).toBe(false);
  } finally {
    c.store.close();
  }
  return o;
}

describe('backup to S3 under store faults', () => {
  // Each fault at one chosen request: the SDK's retries (or getBytes' re-request) absorb it.
  const once: Array<[string, FaultRule]> = [
    ['500 on HeadObject of the blob', { op: 'HeadObject', at: 1, fault: { kind: 'status', status: 500 } }],
    ['503 SlowDown on CreateMultipartUpload', { op: 'CreateMultipartUpload', at: 1, fault: { kind: 'status', status: 503 } }],
    ['503 SlowDown on UploadPart #2', { op: 'UploadPart', at: 2, fault: { kind: 'status', status: 503 } }],
    ['500 on every UploadPart, twice each', { op: 'UploadPart', at: [1, 2, 3, 4], fault: { kind: 'status', status: 500 } }],
    ['500 on CompleteMultipartUpload', { op: 'CompleteMultipartUpload', at: 1, fault: { kind: 'status', status: 500 } }],
    ['500 on PutObject of the manifest', { op: 'PutObject', key: /manifests\//, at: 1, fault: { kind: 'status', status: 500 } }],
    ['connection reset before UploadPart #1', { op: 'UploadPart', at: 1, fault: { kind: 'reset' } }],
    ['connection reset after 1 MiB of UploadPart #2 body', { op: 'UploadPart', at: 2, fault: { kind: 'reset', phase: 'request', afterBytes: MiB } }],
    ['connection reset before the manifest PutObject', { op: 'PutObject', at: 1, fault: { kind: 'reset' } }],
    ['UploadPart #1 stalled (no answer; socket timeout 5 s)', { op: 'UploadPart', at: 1, fault: { kind: 'stall' } }],
    // Three times the socket timeout: the client gives up on it and retries.
    ['manifest PutObject stalled for 15 s', { op: 'PutObject', at: 1, fault: { kind: 'stall', ms: 3 * SOCKET_TIMEOUT_MS } }],
    ['HeadObject answer cut short', { op: 'HeadObject', at: 1, fault: { kind: 'truncate', afterBytes: 0 } }],
  ];
  it.each(once)('%s: completes after retries', async (what, rule) => {
    await backupUnder(what, [rule], { expect: 'ok' });
  });

  it('throttled to 4 MB/s: completes, slower', async () => {
    proxy.throttle(4_000_000);
    const o = await backupUnder('all traffic throttled to 4 MB/s', [], { expect: 'ok' });
    expect(o.ms).toBeGreaterThan(1000);
  });

  it('CompleteMultipartUpload applied but its answer lost (reset): completes (the landed object is recognised)', async () => {
    // s3rver completes the upload, then the client never hears; the SDK's retry of Complete finds
    // no such upload. putFile then finds the object, of its size, written since it started.
    await backupUnder(
      'CompleteMultipartUpload applied, answer lost (RST)',
      [{ op: 'CompleteMultipartUpload', at: 1, fault: { kind: 'reset', phase: 'response', afterBytes: 0 } }],
      { expect: 'ok' },
    );
  });

  it('the single PutObject of a small layer applied but its answer lost: completes', async () => {
    await backupUnder(
      'PutObject (small blob) applied, answer lost (RST)',
      [{ op: 'PutObject', key: /\/blobs\//, at: 1, fault: { kind: 'reset', phase: 'response', afterBytes: 0 } }],
      { expect: 'ok', store: { partSize: 16 * MiB } },
    );
  });

  it('a persistent 503 outage: BACKUP_CREATE_FAILED within a bounded time, nothing visible', async () => {
    const o = await backupUnder('every request 503 (outage)', [{ fault: { kind: 'status', status: 503 } }], { expect: 'fail' });
    expect(o.ms).toBeLessThan(60_000);
  });

  it('a persistent outage by connection resets: BACKUP_CREATE_FAILED, nothing visible', async () => {
    const o = await backupUnder('every connection reset (outage)', [{ fault: { kind: 'reset' } }], { expect: 'fail' });
    expect(o.ms).toBeLessThan(60_000);
  });

  it('uploads fail for good after the first part landed: the parts are aborted or collected by gc', async () => {
    await backupUnder('every UploadPart after the first 500', [{ op: 'UploadPart', when: (r) => r.query.get('partNumber') !== '1', fault: { kind: 'status', status: 500 } }], {
      expect: 'fail',
    });
  });

  it('the manifest write fails for good after the blob landed: fails, the blob is an orphan gc removes', async () => {
    await backupUnder('every manifest PutObject 500', [{ op: 'PutObject', key: /manifests\//, fault: { kind: 'status', status: 500 } }], { expect: 'fail' });
  });

  it.each([1, 2, 3, 4, 5, 6])('random faults at ~25 percent of requests, seed %i: completes or fails cleanly', async (seed) => {
    const rules: FaultRule[] = [
      { rate: 0.06, fault: { kind: 'status', status: 500 } },
      { rate: 0.06, fault: { kind: 'status', status: 503 } },
      { rate: 0.05, fault: { kind: 'reset' } },
      { op: ['UploadPart', 'PutObject'], rate: 0.05, fault: { kind: 'reset', phase: 'request', afterBytes: 256 * 1024 } },
      { rate: 0.03, fault: { kind: 'reset', phase: 'response', afterBytes: 0 } },
      // Longer than the socket timeout (as 2.5 s was against 1.5 s): a stall the client must time out.
      { rate: 0.02, fault: { kind: 'stall', ms: 8000 } },
    ];
    await backupUnder(`random faults ~25%, seed ${seed}`, rules, { seed });
  });
});

// ---- restores ---------------------------------------------------------------------------------

interface RestoreCase {
  mode?: 'copy' | 'extract';
  /** Restore over an existing non-empty target with force. */
  existing?: boolean;
  seed?: number;
  expect?: 'ok' | 'fail';
  /** Codes a failure may carry (default STORE_ERROR, BACKUP_RESTORE_FAILED). */
  codes?: string[];
}

let good: { url: string; handle: BackupHandle } | undefined;

async function goodBackup(): Promise<{ url: string; handle: BackupHandle }> {
  if (good) return good;
  const c = ctx();
  try {
    good = { url: c.url, handle: await c.strata.createBackup({ dir: src }) };
  } finally {
    c.store.close();
  }
  return good;
}

const isBlobGet = (r: { op: string; key: string }) => r.op === 'GetObject' && r.key.includes('/blobs/');

function mountedAt(dir: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === dir);
}

async function restoreUnder(what: string, rules: FaultRule[], rc: RestoreCase = {}): Promise<Outcome> {
  const mode = rc.mode ?? 'copy';
  const { url, handle } = await goodBackup();
  const c = ctx({ url, mode });
  const lab = join(work, `lab-${c.n}`);
  const target = join(lab, 'target');
  await mkdir(lab);
  if (rc.existing) {
    await mkdir(join(target, 'sub'), { recursive: true });
    await writeFile(join(target, 'mine.txt'), 'user data, must survive a failed restore\n');
    await writeFile(join(target, 'sub', 'more.bin'), prng(7, 100_000));
  }
  const skipRoot = { skip: (rel: string) => rel === '.' };
  const before = await summarize(lab, skipRoot);
  proxy.setRules(rules, rc.seed);
  const t0 = Date.now();
  let err: unknown;
  let ok = false;
  try {
    await c.strata.restoreBackup(handle, { dir: target, mode, force: !!rc.existing });
    ok = true;
  } catch (e) {
    err = e;
  }
  const o: Outcome = { ok, ms: Date.now() - t0, fired: proxy.fired };
  proxy.reset();
  try {
    if (ok) {
      expect(diffTrees(await summarize(src), await summarize(target))).toEqual([]);
      if (mode === 'extract') {
        expect(mountedAt(target)).toBe(true);
        await c.strata.unmount(target, { discard: true });
      }
    } else {
      expect(err, String(err)).toBeInstanceOf(StrataError);
      o.code = (err as StrataError).code;
      expect(rc.codes ?? ['STORE_ERROR', 'BACKUP_RESTORE_FAILED'], `${o.code}: ${(err as Error).message}`).toContain(o.code);
      // The target is as it was: absent, or the old content; nothing else beside it.
      expect(diffTrees(before, await summarize(lab, skipRoot))).toEqual([]);
      expect((await readdir(lab)).filter((x) => x !== 'target')).toEqual([]);
      if (mode === 'extract') {
        expect(mountedAt(target)).toBe(false);
        expect(await c.strata.status()).toEqual([]);
        // No half-unpacked layer directory or staging left in the host's layer cache.
        const layers = join(c.home, 'layers');
        for (const hex of existsSync(layers) ? await readdir(layers) : []) {
          expect((await readdir(join(layers, hex))).filter((x) => x !== 'fs')).toEqual([]);
        }
      }
      // With the store back, the same restore succeeds.
      await c.strata.restoreBackup(handle, { dir: target, mode, force: !!rc.existing });
      expect(diffTrees(await summarize(src), await summarize(target))).toEqual([]);
      if (mode === 'extract') await c.strata.unmount(target, { discard: true });
    }
    record(`restore${mode === 'extract' ? '/ws' : ''}`, what + (rc.existing ? ' (over existing, force)' : ''), o);
    if (rc.expect === 'ok') expect(o.ok, `expected the restore to complete: ${String(err)}`).toBe(true);
    if (rc.expect === 'fail') expect(o.ok).toBe(false);
  } finally {
    c.store.close();
  }
  return o;
}

describe('copy restore from S3 under store faults', () => {
  const once: Array<[string, FaultRule]> = [
    ['500 on the manifest GetObject', { op: 'GetObject', key: /manifests\//, at: 1, fault: { kind: 'status', status: 500 } }],
    ['503 on the TOC range GET', { when: isBlobGet, at: 1, fault: { kind: 'status', status: 503 } }],
    ['TOC body cut short (half)', { when: isBlobGet, at: 1, fault: { kind: 'truncate', fraction: 0.5 } }],
    ['TOC GET reset mid-body', { when: isBlobGet, at: 1, fault: { kind: 'reset', phase: 'response', afterBytes: 100 } }],
    ['data GET: 503', { when: isBlobGet, at: 2, fault: { kind: 'status', status: 503 } }],
    ['data GET: connection reset before the answer', { when: isBlobGet, at: 2, fault: { kind: 'reset' } }],
    ['data GET stalled before the answer (socket timeout)', { when: isBlobGet, at: 2, fault: { kind: 'stall' } }],
    ['data GET body cut short (half)', { when: isBlobGet, at: 2, fault: { kind: 'truncate', fraction: 0.5 } }],
    ['data GET reset after 1 MiB of body', { when: isBlobGet, at: 2, fault: { kind: 'reset', phase: 'response', afterBytes: MiB } }],
    ['data GET stalls after 1 MiB of body (socket timeout)', { when: isBlobGet, at: 2, fault: { kind: 'stall', afterBytes: MiB } }],
  ];
  it.each(once)('%s: completes identical', async (what, rule) => {
    await restoreUnder(what, [rule], { expect: 'ok' });
  });

  it('throttled to 4 MB/s: completes identical', async () => {
    proxy.throttle(4_000_000);
    await restoreUnder('all traffic throttled to 4 MB/s', [], { expect: 'ok' });
  });

  it('the data GET cut short at every attempt: fails cleanly, target absent', async () => {
    await restoreUnder('every data GET cut short', [{ when: isBlobGet, fault: { kind: 'truncate', fraction: 0.5 } }], { expect: 'fail' });
  });

  it.each([false, true])('an outage after the TOC was read (existing target: %s): fails within a bounded time, target as it was', async (existing) => {
    const o = await restoreUnder('every GET after the TOC 503 (outage)', [{ when: (r) => isBlobGet(r), at: Array.from({ length: 200 }, (_, i) => i + 2), fault: { kind: 'status', status: 503 } }], {
      existing,
      expect: 'fail',
    });
    expect(o.ms).toBeLessThan(60_000);
  });

  it('every connection reset, over an existing target: fails, target as it was', async () => {
    await restoreUnder('every connection reset (outage)', [{ fault: { kind: 'reset' } }], { existing: true, expect: 'fail' });
  });

  it.each([1, 2, 3, 4, 5, 6])('random faults at ~35 percent of requests over an existing target, seed %i: identical or as it was', async (seed) => {
    const rules: FaultRule[] = [
      { rate: 0.08, fault: { kind: 'status', status: 500 } },
      { rate: 0.08, fault: { kind: 'status', status: 503 } },
      { rate: 0.06, fault: { kind: 'reset' } },
      { op: 'GetObject', rate: 0.08, fault: { kind: 'truncate', fraction: 0.3 } },
      { op: 'GetObject', rate: 0.05, fault: { kind: 'reset', phase: 'response', afterBytes: 64 * 1024 } },
    ];
    await restoreUnder(`random faults ~35%, seed ${seed}`, rules, { seed, existing: true });
  });
});

describe('a server that lies about ranges or corrupts bytes in transit', () => {
  it('ranged GETs answered 200 with the whole object: completes identical (the store cuts the range out)', async () => {
    await restoreUnder('every ranged GET answered 200 with the whole object', [{ when: isBlobGet, fault: { kind: 'ignoreRange' } }], { expect: 'ok' });
  });

  it.each([1, -1])('a GET answered with a range shifted by %i byte: fails cleanly (STORE_ERROR), target as it was', async (by) => {
    await restoreUnder(`data GET answered with the range shifted by ${by}`, [{ when: isBlobGet, at: 2, fault: { kind: 'shiftRange', by } }], { existing: true, expect: 'fail' });
    await restoreUnder(`TOC GET answered with the range shifted by ${by}`, [{ when: isBlobGet, at: 1, fault: { kind: 'shiftRange', by } }], { expect: 'fail' });
  });

  it.each([
    ['the manifest', (r: { op: string; key: string }) => r.op === 'GetObject' && r.key.includes('/manifests/')],
    ['the TOC', (r: { op: string; key: string }) => isBlobGet(r)],
  ])('one byte of %s flipped in transit: DIGEST_MISMATCH, target as it was', async (what, when) => {
    await restoreUnder(`one byte of ${what} flipped in transit`, [{ when, at: 1, fault: { kind: 'corrupt' } }], { existing: true, expect: 'fail', codes: ['DIGEST_MISMATCH'] });
  });

  it('one byte of the file data flipped in transit: DIGEST_MISMATCH, target as it was', async () => {
    await restoreUnder('one byte of the data flipped in transit', [{ when: isBlobGet, at: 2, fault: { kind: 'corrupt', at: 3 * MiB } }], { expect: 'fail', codes: ['DIGEST_MISMATCH'] });
  });

  it('KNOWN GAP: one byte of an upload flipped in transit is stored; only restore notices (DIGEST_MISMATCH)', async () => {
    // Uploads carry no checksum the server verifies (requestChecksumCalculation WHEN_REQUIRED, no
    // Content-MD5), and nothing re-reads the blob: the backup is published and cannot be restored.
    // Real networks rarely do this past TCP's checksum, but a proxy or a bad NIC can. When uploads
    // are checksummed, this test fails: turn it into "the backup fails cleanly".
    const c = ctx();
    try {
      proxy.setRules([{ op: 'UploadPart', at: 2, fault: { kind: 'corrupt', phase: 'request' } }]);
      const h = await c.strata.createBackup({ dir: src });
      expect(proxy.fired).toBe(1);
      proxy.reset();
      const dest = join(work, `restore-${c.n}`);
      await expect(c.strata.restoreBackup(h, { dir: dest })).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
      expect(existsSync(dest)).toBe(false);
      record('backup', 'one byte of an UploadPart flipped in transit', { ok: true, ms: 0, fired: 1 }, 'DATA LOSS: published, restore fails DIGEST_MISMATCH');
    } finally {
      c.store.close();
    }
  });
});

describe('a store whose streams lie about sizes', () => {
  /** A FileStore whose reads of blobs lie as `lie` says. */
  type Lie = { get?: (b: Buffer) => Buffer; getBytes?: (b: Buffer) => Buffer; file?: (b: Buffer) => Buffer; head?: boolean };
  /** A store whose answers `lie` alters; `fired` counts the altered answers. */
  function lyingStore(inner: FileStore, lie: Lie, fired: { n: number }): ObjectStore {
    return new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'get' && lie.get) {
          return async (key: string, range?: ByteRange) => {
            const s = await target.get(key, range);
            const chunks: Buffer[] = [];
            for await (const c of s) chunks.push(c as Buffer);
            fired.n++;
            return Readable.from([lie.get!(Buffer.concat(chunks))], { objectMode: false });
          };
        }
        // A store lying on GETs is a remote one: no local file to read beside them.
        if (prop === 'openFile' && lie.get) return undefined;
        if (prop === 'openFile' && lie.file) {
          // The layer file as the lie has it: a copy, opened in its place.
          return async (key: string) => {
            const copy = join(work, `lied-file-${++seq}`);
            await writeFile(copy, lie.file!(await target.getBytes(key)));
            fired.n++;
            const fh = await open(copy, 'r');
            return { fh, size: (await fh.stat()).size };
          };
        }
        if (prop === 'getBytes' && lie.getBytes) {
          return async (key: string, range?: ByteRange) => {
            fired.n++;
            return lie.getBytes!(await target.getBytes(key, range));
          };
        }
        if (prop === 'head' && lie.head) {
          return async (key: string) => {
            fired.n++;
            return { key, size: 1, mtime: new Date() };
          };
        }
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  let fileStore: FileStore;
  let handle: BackupHandle;
  beforeAll(async () => {
    fileStore = new FileStore(join(work, 'lying-store'));
    handle = await new Strata({ home: join(work, 'lying-home'), store: fileStore, mode: 'copy' }).createBackup({ dir: src });
  });

  const cases: Array<[string, Parameters<typeof lyingStore>[1], string | null]> = [
    ['a data stream that ends early', { get: (b) => b.subarray(0, b.length - 1000) }, 'BACKUP_RESTORE_FAILED'],
    ['a data stream with 1000 bytes too many', { get: (b) => Buffer.concat([b, Buffer.alloc(1000, 7)]) }, null],
    ['a data stream shifted by one byte', { get: (b) => Buffer.concat([Buffer.alloc(1), b.subarray(0, b.length - 1)]) }, 'DIGEST_MISMATCH'],
    ['an empty data stream', { get: () => Buffer.alloc(0) }, 'BACKUP_RESTORE_FAILED'],
    ['TOC/manifest reads one byte short', { getBytes: (b) => b.subarray(0, b.length - 1) }, 'DIGEST_MISMATCH'],
    ['TOC/manifest reads one byte long', { getBytes: (b) => Buffer.concat([b, Buffer.from(' ')]) }, 'DIGEST_MISMATCH'],
    // A local store's layer is read as a file (ObjectStore.openFile), by native jobs.
    ['a local layer file cut to half its size', { file: (b) => b.subarray(0, b.length >> 1) }, 'BACKUP_RESTORE_FAILED'],
    ['a local layer file shifted by one byte', { file: (b) => Buffer.concat([Buffer.alloc(1), b.subarray(0, b.length - 1)]) }, 'DIGEST_MISMATCH'],
    ['a local layer file of zeros', { file: (b) => Buffer.alloc(b.length) }, 'DIGEST_MISMATCH'],
  ];
  it.each(cases)('%s: completes identical or fails cleanly', async (what, lie, code) => {
    const lab = join(work, `lie-${++seq}`);
    await mkdir(lab);
    const target = join(lab, 'target');
    const fired = { n: 0 };
    const s = new Strata({ home: join(work, `home-${seq}`), store: lyingStore(fileStore, lie, fired), mode: 'copy' });
    const t0 = Date.now();
    const err = await s.restoreBackup(handle, { dir: target }).then(
      () => null,
      (e: unknown) => e,
    );
    if (code === null) {
      expect(err).toBeNull();
      expect(diffTrees(await summarize(src), await summarize(target))).toEqual([]);
    } else {
      expect(err).toBeInstanceOf(StrataError);
      expect((err as StrataError).code, (err as Error).message).toBe(code);
      expect(await readdir(lab)).toEqual([]);
    }
    expect(fired.n, 'the lie was told').toBeGreaterThan(0);
    record('restore', `store lies: ${what}`, { ok: code === null, ...(code ? { code } : {}), ms: Date.now() - t0, fired: fired.n });
  });

  it('a store that says a blob exists when it does not: the backup fails cleanly (touch finds nothing)', async () => {
    const store = new FileStore(join(work, `lying-head-${++seq}`));
    const fired = { n: 0 };
    const s = new Strata({ home: join(work, `home-${seq}`), store: lyingStore(store, { head: true }, fired), mode: 'copy' });
    await expect(s.createBackup({ dir: src })).rejects.toMatchObject({ code: 'BACKUP_CREATE_FAILED' });
    expect(fired.n, 'the lie was told').toBeGreaterThan(0);
    expect(await new Strata({ home: join(work, `home-${seq}`), store, mode: 'copy' }).listBackups()).toEqual([]);
    record('backup', 'store lies: HEAD says the blob exists', { ok: false, code: 'BACKUP_CREATE_FAILED', ms: 0, fired: fired.n });
  });
});

describe('workspace (extract mode) restore from S3 under store faults', () => {
  const ok = () => need('root');

  it('a data GET cut short while unpacking a layer: completes identical', async () => {
    if (!ok()) return;
    await restoreUnder('data GET body cut short (half)', [{ when: isBlobGet, at: 2, fault: { kind: 'truncate', fraction: 0.5 } }], { mode: 'extract', expect: 'ok' });
  });

  it.each([false, true])('an outage while unpacking (existing target: %s): fails, nothing mounted, target as it was, then restores', async (existing) => {
    if (!ok()) return;
    await restoreUnder('every GET after the TOC 503 (outage)', [{ when: isBlobGet, at: Array.from({ length: 200 }, (_, i) => i + 2), fault: { kind: 'status', status: 503 } }], {
      mode: 'extract',
      existing,
      expect: 'fail',
    });
  });

  it.each([1, 2, 3])('random faults at ~35 percent, seed %i: identical or as it was', async (seed) => {
    if (!ok()) return;
    const rules: FaultRule[] = [
      { rate: 0.1, fault: { kind: 'status', status: 500 } },
      { rate: 0.1, fault: { kind: 'reset' } },
      { op: 'GetObject', rate: 0.15, fault: { kind: 'truncate', fraction: 0.3 } },
    ];
    await restoreUnder(`random faults ~35%, seed ${seed}`, rules, { mode: 'extract', seed, existing: true });
  });
});

describe('gc through a store that refuses to list uploads', () => {
  it('gc still collects blobs; the listing failure is reported through onError, not thrown', async () => {
    const c = ctx();
    try {
      await c.store.putBytes(`blobs/sha256/${'ef'.repeat(32)}`, Buffer.from('orphan'));
      proxy.setRules([{ op: 'ListMultipartUploads', fault: { kind: 'status', status: 403, code: 'AccessDenied' } }]);
      const errors: string[] = [];
      const r = await c.strata.gc({ graceMs: 0, now: Date.now() + 2000, onError: (k) => errors.push(k) });
      expect(r.deletedBlobs.map((b) => b.key)).toEqual([`blobs/sha256/${'ef'.repeat(32)}`]);
      expect(errors).toEqual(['(incomplete uploads)']);
    } finally {
      c.store.close();
    }
  });

  it('gc --dry-run lists a stale incomplete upload without aborting it; gc aborts it; a fresh one is kept', async () => {
    const c = ctx();
    try {
      // A backup that dies after its first part: leave the upload behind by failing its abort too.
      proxy.setRules([
        { op: 'UploadPart', when: (r) => r.query.get('partNumber') !== '1', fault: { kind: 'status', status: 500 } },
        { op: 'AbortMultipartUpload', fault: { kind: 'status', status: 500 } },
      ]);
      await expect(c.strata.createBackup({ dir: src })).rejects.toMatchObject({ code: 'BACKUP_CREATE_FAILED' });
      proxy.reset();
      expect(uploadsUnder(c.prefix)).toHaveLength(1);
      // Within the grace period: kept.
      expect((await c.strata.gc({ graceMs: 3_600_000 })).incompleteWrites).toEqual([]);
      expect(uploadsUnder(c.prefix)).toHaveLength(1);
      const dry = await c.strata.gc({ graceMs: 0, now: Date.now() + 2000, dryRun: true });
      // A layer streams to a staging key while it is captured (its digest is known only at the end).
      expect(dry.incompleteWrites.map((w) => w.key)).toEqual([expect.stringMatching(/^blobs\/staging\/\d+-[0-9a-f]{24}$/)]);
      expect(uploadsUnder(c.prefix)).toHaveLength(1);
      const real = await c.strata.gc({ graceMs: 0, now: Date.now() + 2000 });
      expect(real.incompleteWrites).toHaveLength(1);
      expect(uploadsUnder(c.prefix)).toEqual([]);
    } finally {
      c.store.close();
    }
  });
});
