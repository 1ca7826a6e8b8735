/**
 * Crashes (issue 6): a backup or restore process killed with SIGKILL at the worst moments, and
 * what is left afterwards. The process under test is a child running the compiled library
 * (dist/, from make build), so the kill is a real kill -9:
 *
 *   - mid-upload to S3 (a multipart upload slowed by a throttling proxy): no backup is listed, a
 *     rerun succeeds, gc (grace 0) aborts the incomplete upload and removes any orphan blob, and
 *     the next backup removes the dead process's temp layer from STRATA_HOME/tmp;
 *   - at random moments of a backup to a file store: the store always lists only complete
 *     backups, each restoring identical; gc removes orphan blobs and the store's temp files;
 *   - mid copy restore and mid workspace restore: the target is as it was (the staging
 *     directory beside it is the only trace); a rerun succeeds.
 *
 * Reproduce: npx vitest run test/crash.test.ts
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { blobsOf, Strata, type BackupHandle } from '../src/index.js';
import { FileStore } from '../src/store/file.js';
import type { ObjectStore } from '../src/store/store.js';
import { assertBuilt } from './helpers/built.js';
import { IS_ROOT, need } from './helpers/caps.js';
import { type FaultProxy, startFaultProxy } from './helpers/faultproxy.js';
import { prng } from './helpers/fidelity.js';
import { S3RVER_CREDENTIALS, s3StoreFor, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { unmountUnder } from './helpers/workspace.js';

const MiB = 1024 * 1024;
const REPO = resolve(import.meta.dirname, '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let work: string;
let s3: S3TestServer;
let proxy: FaultProxy;
let src: string;
let child: string;
let seq = 0;
const findings: string[] = [];

/**
 * The child: `node child.mjs backup STORE HOME DIR` prints "handle <json>";
 * `node child.mjs restore STORE HOME HANDLEFILE TARGET MODE [force]` prints "restored".
 * STORE is a file:// URL, or s3://... followed by the endpoint as its own argument.
 */
const CHILD = `
import { readFileSync } from 'node:fs';
import { Strata } from ${JSON.stringify(join(REPO, 'dist/index.js'))};
import { S3Store } from ${JSON.stringify(join(REPO, 'dist/store/s3.js'))};
const args = process.argv.slice(2);
const cmd = args.shift();
let store = args.shift();
if (store.startsWith('s3://')) {
  const endpoint = args.shift();
  store = new S3Store(store, { endpoint, region: 'us-east-1', forcePathStyle: true,
    credentials: ${JSON.stringify(S3RVER_CREDENTIALS)}, partSize: 5 * 1024 * 1024, queueSize: 2 });
}
const home = args.shift();
let uploaded = 0;
const s = new Strata({ home, store, onProgress: (e) => {
  if (e.phase === 'upload' && e.bytes > uploaded) { uploaded = e.bytes; process.stdout.write('upload ' + e.bytes + '\\n'); }
} });
process.stdout.write('start ' + process.pid + '\\n');
if (cmd === 'backup') {
  const h = await s.createBackup({ dir: args[0], name: 'crash' });
  process.stdout.write('handle ' + JSON.stringify(h) + '\\n');
} else {
  const h = JSON.parse(readFileSync(args[0], 'utf8'));
  await s.restoreBackup(h, { dir: args[1], mode: args[2], force: args[3] === 'force' });
  process.stdout.write('restored\\n');
}
`;

interface Run {
  proc: ChildProcess;
  out: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function runChild(args: string[]): Run {
  const proc = spawn(process.execPath, [child, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => proc.on('exit', (code, signal) => r({ code, signal })));
  return { proc, out: () => out, exited };
}

async function until(cond: () => boolean, what: string, ms = 60_000, everyMs = 20): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

async function kill9(r: Run): Promise<void> {
  r.proc.kill('SIGKILL');
  const { signal } = await r.exited;
  expect(signal, `the child finished before the kill: ${r.out()}`).toBe('SIGKILL');
}

async function keysOf(store: ObjectStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of store.list(prefix)) out.push(o.key);
  return out.sort();
}

function uploadsUnder(prefix: string): string[] {
  const dir = join(s3.dir, s3.bucket, '._S3rver_uploads');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((id) => join(dir, id, 'key'))
    .filter((f) => existsSync(f))
    .map((f) => readFileSync(f, 'utf8'))
    .filter((k) => k.startsWith(prefix + '/'));
}

beforeAll(async () => {
  // The child runs the compiled library (make build).
  assertBuilt();
  work = await mkdtemp(join(tmpdir(), 'strata-crash-'));
  child = join(work, 'child.mjs');
  await writeFile(child, CHILD);
  s3 = await startS3Server();
  proxy = await startFaultProxy({ upstream: s3.endpoint, s3rverDir: s3.dir });
  // 40 MiB that does not compress (8 parts of 5 MiB), 1500 small files, a link.
  src = join(work, 'src');
  await mkdir(join(src, 'many'), { recursive: true });
  for (let i = 0; i < 4; i++) await writeFile(join(src, `big-${i}.bin`), prng(100 + i, 10 * MiB));
  for (let i = 0; i < 1500; i++) await writeFile(join(src, 'many', `f${i}.txt`), `file ${i}\n`.repeat(1 + (i % 50)));
  await symlink('big-0.bin', join(src, 'link'));
});

afterEach(() => {
  proxy.reset();
  if (work && IS_ROOT) unmountUnder(work);
});

afterAll(async () => {
  if (findings.length) console.log('crash findings:\n' + findings.join('\n'));
  if (work && IS_ROOT) unmountUnder(work);
  await proxy?.close();
  await s3?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('kill -9 of a backup', () => {
  it('mid multipart upload to S3: nothing listed, rerun succeeds, gc aborts the upload, the temp layer is swept', async () => {
    const n = ++seq;
    const url = `${s3.url}/crash-${n}`;
    const prefix = url.replace(/^s3:\/\/[^/]+\//, '');
    const home = join(work, `home-${n}`);
    proxy.throttle(8_000_000);
    const r = runChild(['backup', url, proxy.endpoint, home, src]);
    // Mid-upload: parts have started going up, the upload is not complete.
    await until(() => proxy.log.filter((e) => e.op === 'UploadPart').length >= 3 || r.proc.exitCode !== null, 'the multipart upload to start');
    await sleep(300);
    await kill9(r);
    proxy.throttle(null);
    expect(proxy.log.some((e) => e.op === 'CreateMultipartUpload')).toBe(true);
    expect(proxy.log.some((e) => e.op === 'CompleteMultipartUpload')).toBe(false);

    const store = s3StoreFor(s3, { url, endpoint: proxy.endpoint });
    try {
      const strata = new Strata({ home, store, mode: 'copy' });
      // Consistent: no manifest, one incomplete upload; the dead child's temp layer. The restore
      // index goes up while the layer's last parts do, so it may have landed: a blob that no
      // manifest names (gc's to remove), and the one the rerun below stores again.
      expect(await strata.listBackups()).toEqual([]);
      const left = await keysOf(store, '');
      expect(left.filter((k) => !k.startsWith('blobs/sha256/'))).toEqual([]);
      expect(left.length).toBeLessThanOrEqual(1);
      expect(uploadsUnder(prefix)).toHaveLength(1);
      const temps = await readdir(join(home, 'tmp'));
      expect(temps).toEqual([expect.stringMatching(new RegExp(`^layer-${r.proc.pid}-[0-9a-f]+\\.tmp$`))]);

      // gc within the grace period keeps the upload (it could be a live backup).
      expect((await strata.gc()).incompleteWrites).toEqual([]);
      expect(uploadsUnder(prefix)).toHaveLength(1);

      // The rerun succeeds (and removes the dead process's temp layer).
      const h = await strata.createBackup({ dir: src, name: 'crash' });
      expect(await readdir(join(home, 'tmp'))).toEqual([]);
      expect((await strata.listBackups()).map((b) => b.id)).toEqual([h.id]);
      const dest = join(work, `restore-${n}`);
      await strata.restoreBackup(h, { dir: dest });
      expect(diffTrees(await summarize(src), await summarize(dest))).toEqual([]);

      // gc collects the leftover upload and keeps the live blob.
      const report = await strata.gc({ graceMs: 0, now: Date.now() + 2000 });
      expect(report.incompleteWrites).toHaveLength(1);
      expect(report.deletedBlobs).toEqual([]);
      expect(uploadsUnder(prefix)).toEqual([]);
      expect(await keysOf(store, 'blobs/')).toEqual(blobsOf(await strata.getBackup(h.id)).sort());
      // What the killed backup left is what the rerun stores (its index): nothing else.
      expect(blobsOf(await strata.getBackup(h.id))).toEqual(expect.arrayContaining(left));
    } finally {
      store.close();
    }
  });

  it('at random moments of a backup to a file store: only complete backups are ever listed; gc removes the rest', async () => {
    const n = ++seq;
    const storeDir = join(work, `fstore-${n}`);
    const home = join(work, `home-${n}`);
    const store = new FileStore(storeDir);
    const strata = new Strata({ home, store, mode: 'copy' });
    const want = await summarize(src);
    const outcomes: string[] = [];
    // Kill points spread over capture, upload (a reflink/copy) and the manifest write.
    for (const delay of [150, 400, 700, 1000, 1400, 1900, 2600]) {
      const r = runChild(['backup', store.url, home, src]);
      await until(() => r.out().includes('start') || r.proc.exitCode !== null, 'the child to start');
      await sleep(delay);
      r.proc.kill('SIGKILL');
      const { signal, code } = await r.exited;
      const finished = r.out().includes('handle ');
      // Killed, or finished with a backup: a child that failed on its own is a test error.
      expect(signal === 'SIGKILL' || (code === 0 && finished), r.out()).toBe(true);
      outcomes.push(`${delay} ms: ${signal === 'SIGKILL' && !finished ? 'killed' : 'finished'}`);
      // Whatever the moment, the store lists only complete backups, and each restores identical.
      for (const b of await strata.listBackups()) {
        const dest = join(work, `restore-${n}-${b.id}`);
        if (existsSync(dest)) continue;
        await strata.restoreBackup(b.id, { dir: dest });
        expect(diffTrees(want, await summarize(dest))).toEqual([]);
        await rm(dest, { recursive: true, force: true });
      }
    }
    findings.push(`file-store backup kill points: ${outcomes.join(', ')}`);
    expect(outcomes.filter((o) => o.endsWith('killed')).length).toBeGreaterThan(0);

    // The rerun succeeds; gc leaves exactly the listed backups' blobs and no store temp files.
    const h = await strata.createBackup({ dir: src });
    expect(await readdir(join(home, 'tmp'))).toEqual([]);
    const report = await strata.gc({ graceMs: 0, now: Date.now() + 2000 });
    const live = new Set((await strata.listBackups()).flatMap((b) => blobsOf(b)));
    expect(await keysOf(store, 'blobs/')).toEqual([...live].sort());
    expect(existsSync(join(storeDir, '.tmp')) ? await readdir(join(storeDir, '.tmp')) : []).toEqual([]);
    findings.push(`file-store gc after the kills: ${report.deletedBlobs.length} orphan blob(s), ${report.incompleteWrites.length} temp file(s)`);
    const dest = join(work, `restore-${n}-final`);
    await strata.restoreBackup(h, { dir: dest });
    expect(diffTrees(want, await summarize(dest))).toEqual([]);
  });

  it('a store temp file left by a killed write is removed by gc only after the grace period', async () => {
    const storeDir = join(work, `fstore-${++seq}`);
    const store = new FileStore(storeDir);
    const strata = new Strata({ home: join(work, `home-${seq}`), store, mode: 'copy' });
    await mkdir(join(storeDir, '.tmp'), { recursive: true });
    await writeFile(join(storeDir, '.tmp', 'deadbeef'), 'half a blob');
    expect((await strata.gc()).incompleteWrites).toEqual([]);
    expect((await strata.gc({ graceMs: 0, now: Date.now() + 2000, dryRun: true })).incompleteWrites.map((w) => w.key)).toEqual(['.tmp/deadbeef']);
    expect(existsSync(join(storeDir, '.tmp', 'deadbeef'))).toBe(true);
    expect((await strata.gc({ graceMs: 0, now: Date.now() + 2000 })).incompleteWrites.map((w) => w.key)).toEqual(['.tmp/deadbeef']);
    expect(await readdir(join(storeDir, '.tmp'))).toEqual([]);
  });
});

describe('kill -9 of a restore', () => {
  let storeDir: string;
  let handleFile: string;
  let handle: BackupHandle;

  beforeAll(async () => {
    storeDir = join(work, 'restore-store');
    const strata = new Strata({ home: join(work, 'restore-home'), store: new FileStore(storeDir), mode: 'copy' });
    handle = await strata.createBackup({ dir: src });
    handleFile = join(work, 'handle.json');
    await writeFile(handleFile, JSON.stringify(handle));
  });

  async function killRestore(mode: 'copy' | 'extract', existing: boolean): Promise<void> {
    const n = ++seq;
    const home = join(work, `home-${n}`);
    const lab = join(work, `lab-${n}`);
    const target = join(lab, 'target');
    await mkdir(lab);
    if (existing) {
      await mkdir(target);
      await writeFile(join(target, 'mine.txt'), 'user data\n');
    }
    const skipRoot = { skip: (rel: string) => rel === '.' };
    const before = await summarize(lab, skipRoot);
    const store = new FileStore(storeDir);
    const r = runChild(['restore', store.url, home, handleFile, target, mode, existing ? 'force' : '']);
    await until(() => r.out().includes('start') || r.proc.exitCode !== null, 'the child to start');
    // Mid-restore: the staging directory has data in it.
    const stagingDirs = (): Array<[path: string, shown: string]> => {
      if (mode === 'copy') return readdirSync(lab).filter((x) => x.includes('.strata-')).map((x) => [join(lab, x), x]);
      const layers = join(home, 'layers');
      if (!existsSync(layers)) return [];
      return readdirSync(layers).flatMap((hex) =>
        readdirSync(join(layers, hex))
          .filter((x) => x.includes('.strata-'))
          .map((x): [string, string] => [join(layers, hex, x), `STRATA_HOME/layers/${hex.slice(0, 8)}…/${x}`]),
      );
    };
    const staged = (): boolean =>
      stagingDirs().some(([p]) => {
        try {
          return readdirSync(p).length > 0;
        } catch {
          return false; // renamed into place meanwhile: the child is finishing (kill9 reports it)
        }
      });
    // Freeze the child as soon as its staging holds data (the restore goes on for ~0.5 s after
    // that here; a fixed delay could let it finish first on a busy machine), then kill -9 it: still
    // a real kill mid-restore, and SIGKILL ends a stopped process.
    await until(() => staged() || r.proc.exitCode !== null, 'the restore to start writing', 60_000, 2);
    r.proc.kill('SIGSTOP');
    await kill9(r);
    const left = stagingDirs().map(([, shown]) => shown);
    // The target is as it was; the staging directory (hidden, named .NAME.strata-XXXX) is the only trace.
    const after = await summarize(lab, { skip: (rel) => rel === '.' || rel.split('/')[0]!.includes('.strata-') });
    expect(diffTrees(before, after)).toEqual([]);
    if (IS_ROOT) expect(readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${target} `)).toBe(false);
    findings.push(`kill -9 mid ${mode} restore${existing ? ' over an existing target' : ''}: target as it was; left behind: ${left.join(', ') || 'nothing'}`);

    // The rerun succeeds.
    const strata = new Strata({ home, store, mode });
    await strata.restoreBackup(handle, { dir: target, force: existing });
    expect(diffTrees(await summarize(src), await summarize(target))).toEqual([]);
    if (mode === 'extract') {
      // A fresh workspace: nothing unsaved (the killed restore's half-made workspace was dropped).
      expect((await strata.status(target)).map((w) => w.unsavedEntries)).toEqual([0]);
      await strata.unmount(target, { discard: true });
    }
  }

  it('mid copy restore into a new target: no target, a rerun succeeds', async () => {
    await killRestore('copy', false);
  });

  it('mid forced copy restore over an existing target: the old content is untouched, a rerun succeeds', async () => {
    await killRestore('copy', true);
  });

  it('mid workspace restore (unpacking a layer): nothing mounted, target as it was, a rerun succeeds', async () => {
    if (!need('root')) return;
    await killRestore('extract', true);
  });
});
