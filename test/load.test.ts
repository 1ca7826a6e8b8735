/**
 * Load and scale (issue 6):
 *
 *   - 8 forks of one backup (extract-mode workspaces, sharing the host's layer directories) read
 *     at once, 8 copy restores of it at once, and 8 backups of 8 other, modified forks at once,
 *     all concurrently: every byte read matches the source, every new backup restores to exactly
 *     its fork.
 *   - A workspace (and a plain directory) under a steady mix of stat, read and write from several
 *     processes during repeated backups: no process sees an error or a wrong byte, every backup
 *     succeeds, no backup holds a torn file, and the last one equals the final tree.
 *   - Scale of hostile or huge input: a TOC of a million tiny entries parses within bounded time
 *     and memory (measured in a child process); TOCs past the limit are refused before anything
 *     is decompressed; 1000-deep trees round-trip; 2000-deep trees and crafted 20000-deep layers
 *     fail cleanly.
 *
 * Reproduce: npx vitest run test/load.test.ts
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { StrataError, Strata, type BackupHandle } from '../src/index.js';
import { MAX_TOC_SIZE } from '../src/format/reader.js';
import { FileStore } from '../src/store/file.js';
import { assertBuilt } from './helpers/built.js';
import { IS_ROOT, need } from './helpers/caps.js';
import { type CraftEntry, craftLayer, publish } from './helpers/craft.js';
import { prng } from './helpers/fidelity.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { unmountUnder } from './helpers/workspace.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const REPO = resolve(import.meta.dirname, '..');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let work: string;
let storeDir: string;
let src: string;
const notes: string[] = [];

/** A project-like tree: 300 small files in nested directories, 4 larger ones, links. */
async function makeProject(root: string, seed: number): Promise<void> {
  for (let d = 0; d < 10; d++) {
    await mkdir(join(root, `pkg${d}/lib/sub`), { recursive: true });
    for (let f = 0; f < 30; f++) await writeFile(join(root, `pkg${d}/lib${f % 2 ? '/sub' : ''}/f${f}.js`), `// ${seed}:${d}:${f}\n` + 'x'.repeat((f * 97 + d * 13) % 3000));
  }
  for (let i = 0; i < 4; i++) await writeFile(join(root, `blob${i}.bin`), prng(seed * 10 + i, (i + 1) * 1.5 * MiB));
  await symlink('blob0.bin', join(root, 'link'));
  await mkdir(join(root, 'empty'));
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-load-'));
  storeDir = join(work, 'store');
  src = join(work, 'src');
  await makeProject(src, 1);
});

afterEach(() => {
  if (work && IS_ROOT) unmountUnder(work);
});

afterAll(async () => {
  if (notes.length) console.log('load notes:\n' + notes.join('\n'));
  if (work && IS_ROOT) unmountUnder(work);
  if (work) await rm(work, { recursive: true, force: true });
});

/** Every regular file under root: relative path -> sha256. */
async function hashes(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) out.set(r, sha(await readFile(join(root, r))));
    }
  };
  await walk('');
  return out;
}

describe('concurrent forks, restores and backups', () => {
  it('8 forks read at once + 8 copy restores + 8 backups of other modified forks: every byte matches', async () => {
    if (!need('root')) return;
    const home = join(work, 'home-forks');
    const strata = new Strata({ home, store: new FileStore(storeDir), mode: 'extract' });
    const base = await strata.createBackup({ dir: src });
    const want = await hashes(src);
    const wantTree = await summarize(src);

    // 16 workspaces restored at once: they race to unpack the one layer (one wins, all share it).
    const readers = Array.from({ length: 8 }, (_, i) => join(work, `fork-r${i}`));
    const writers = Array.from({ length: 8 }, (_, i) => join(work, `fork-w${i}`));
    const t0 = Date.now();
    await Promise.all([...readers, ...writers].map((d) => strata.restoreBackup(base, { dir: d })));
    notes.push(`16 concurrent workspace restores: ${Date.now() - t0} ms`);
    expect(await readdir(join(home, 'layers'))).toHaveLength(1);

    // Modify the writer forks, each differently.
    for (const [i, d] of writers.entries()) {
      await writeFile(join(d, `pkg${i}/lib/f0.js`), `// fork ${i} changed this\n`);
      await writeFile(join(d, `fork-${i}.bin`), prng(1000 + i, 300_000 + i));
      await rm(join(d, `pkg${(i + 1) % 10}/lib/sub/f1.js`));
      await writeFile(join(d, 'blob1.bin'), prng(2000 + i, 2 * MiB), { flag: 'r+' });
    }

    // At once: read every file of the 8 reader forks (twice), 8 copy restores, 8 backups.
    const t1 = Date.now();
    const mismatches: string[] = [];
    const readAll = async (d: string) => {
      for (let pass = 0; pass < 2; pass++) {
        const got = await hashes(d);
        for (const [p, h] of want) if (got.get(p) !== h) mismatches.push(`${d}/${p}`);
        if (got.size !== want.size) mismatches.push(`${d}: ${got.size} files, want ${want.size}`);
      }
    };
    const copies = Array.from({ length: 8 }, (_, i) => join(work, `copy-${i}`));
    const [, , handles] = await Promise.all([
      Promise.all(readers.map(readAll)),
      Promise.all(copies.map((d) => strata.restoreBackup(base, { dir: d, mode: 'copy' }))),
      Promise.all(writers.map((d) => strata.createBackup({ dir: d }))),
    ]);
    notes.push(`8 fork reads x2 + 8 copy restores + 8 incremental backups, at once: ${Date.now() - t1} ms`);
    expect(mismatches).toEqual([]);
    for (const d of copies) expect(diffTrees(wantTree, await summarize(d))).toEqual([]);

    // Each new backup is its own fork's tree, byte for byte (restored as a copy elsewhere).
    const backups = handles as BackupHandle[];
    expect(new Set(backups.map((h) => h.id)).size).toBe(8);
    for (const [i, h] of backups.entries()) {
      const info = await strata.getBackup(h.id);
      expect(info.layers).toHaveLength(2);
      const dest = join(work, `check-${i}`);
      await strata.restoreBackup(h, { dir: dest, mode: 'copy' });
      expect(diffTrees(await summarize(writers[i]!), await summarize(dest))).toEqual([]);
    }
    // The reader forks are untouched and have nothing unsaved.
    for (const s of await strata.status()) {
      if (readers.includes(s.dir)) expect(s.unsavedEntries).toBe(0);
    }
  });
});

// ---- steady mixed load during backups -------------------------------------------------------------

/**
 * Workers, one process each, until the file `stopFile` exists (at most `ms` milliseconds, a
 * safety net for a test that dies without stopping them):
 *   stat   lstat every entry, over and over
 *   read   read the stable files and check them against their hashes
 *   write  rewrite its own hot files in place (same size, one pwrite each, up to 5 MiB), plus
 *          atomic replaces (temp + rename), creates (temp + rename) and deletes of its own files,
 *          then pause 30-70 ms: every state between two of its syscalls is a whole file, but for
 *          its temp files (created empty, then written)
 * Every file a writer writes verifies itself: its last 32 bytes are the sha256 of the rest.
 * Each prints "ready" once it runs, and {ops, errors, mismatches} as JSON when done.
 */
const WORKER = `
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
const [role, dir, ms, id, hashesFile, stopFile] = process.argv.slice(2);
const end = Date.now() + Number(ms);
const stats = { role, id, ops: 0, errors: [], mismatches: [] };
const sha = (b) => createHash('sha256').update(b).digest();
function content(version, size) {
  const body = Buffer.alloc(size - 32);
  let x = (version * 2654435761) >>> 0 || 1;
  for (let i = 0; i < body.length; i += 4) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; body.writeUInt32LE(x, Math.min(i, body.length - 4)); }
  body.write('v' + version + ' ', 0);
  return Buffer.concat([body, sha(body)]);
}
function walk(d, out) {
  for (const e of fs.readdirSync(d, { withFileTypes: true })) { const p = join(d, e.name); out.push(p); if (e.isDirectory()) walk(p, out); }
  return out;
}
const tick = () => new Promise((r) => setImmediate(r));
let v = Number(id) * 1000000;
let cycle = 0;
process.stdout.write('ready\\n');
while (Date.now() < end && !fs.existsSync(stopFile)) {
  try {
    if (role === 'stat') {
      for (const p of walk(dir, [])) { try { fs.lstatSync(p); } catch (e) { if (e.code !== 'ENOENT') throw e; } stats.ops++; }
    } else if (role === 'read') {
      const want = JSON.parse(fs.readFileSync(hashesFile, 'utf8'));
      for (const [rel, h] of Object.entries(want)) {
        const got = sha(fs.readFileSync(join(dir, rel))).toString('hex');
        if (got !== h) stats.mismatches.push(rel);
        stats.ops++;
      }
    } else {
      const hot = join(dir, 'hot-' + id);
      fs.mkdirSync(hot, { recursive: true });
      const sizes = [4096, 65536, 300000, 5 * 1024 * 1024 + 17];
      cycle++;
      for (let k = 0; k < sizes.length; k++) {
        // The 5 MiB file every 5th cycle (~0.4 s): a file rewritten faster than it can be read
        // twice fails the backup by design ("kept changing").
        if (k === sizes.length - 1 && cycle % 5 !== 1) continue;
        const p = join(hot, 'inplace-' + k);
        const buf = content(++v, sizes[k]);
        const fd = fs.openSync(p, fs.existsSync(p) ? 'r+' : 'w');
        fs.writeSync(fd, buf, 0, buf.length, 0);
        fs.closeSync(fd);
        stats.ops++;
      }
      const tmp = join(hot, '.tmp-' + v);
      fs.writeFileSync(tmp, content(++v, 20000 + (v % 5000)));
      fs.renameSync(tmp, join(hot, 'replaced'));
      const made = join(hot, 'new-' + (v % 7));
      if (fs.existsSync(made)) fs.unlinkSync(made);
      else { fs.writeFileSync(tmp, content(++v, 1000 + (v % 900))); fs.renameSync(tmp, made); }
      stats.ops += 2;
    }
  } catch (e) { stats.errors.push(String(e && e.stack || e)); }
  // A steady mix, not a tight loop: a writer that never pauses makes every read of its file
  // race a write, and the backup rightly gives up on it ("kept changing").
  if (role === 'write') await new Promise((r) => setTimeout(r, 30 + Math.random() * 40));
  else await tick();
}
process.stdout.write(JSON.stringify(stats) + '\\n');
`;

/** True when the file's last 32 bytes are the sha256 of the rest. */
function verifies(b: Buffer): boolean {
  return b.length >= 32 && sha(b.subarray(0, b.length - 32)) === b.subarray(b.length - 32).toString('hex');
}

async function underLoad(dir: string, strata: Strata, label: string): Promise<void> {
  const worker = join(work, 'worker.mjs');
  if (!existsSync(worker)) await writeFile(worker, WORKER);
  const stable = Object.fromEntries(await hashes(dir));
  const hashesFile = join(work, `stable-${label}.json`);
  await writeFile(hashesFile, JSON.stringify(stable));
  // Backups run for at least LOAD_MS and until at least two are done (one backup can take
  // seconds on a loaded machine); the workers run until the test tells them to stop.
  const LOAD_MS = 5000;
  const stopFile = join(work, `stop-${label.replace(/\W/g, '')}`);
  const roles: Array<[string, number]> = [
    ['stat', 0],
    ['read', 0],
    ['write', 1],
    ['write', 2],
    ['write', 3],
  ];
  const outs = roles.map(() => '');
  const exited = roles.map(() => false);
  const procs = roles.map(([role, id], i) => {
    const p = spawn(process.execPath, [worker, role, dir, String(600_000), String(id), hashesFile, stopFile], { stdio: ['ignore', 'pipe', 'inherit'] });
    p.stdout.on('data', (b: Buffer) => (outs[i] += b.toString()));
    return new Promise<{ role: string; ops: number; errors: string[]; mismatches: string[] }>((res, rej) =>
      p.on('exit', (code) => {
        exited[i] = true;
        if (code === 0) res(JSON.parse(outs[i]!.trim().split('\n').pop()!));
        else rej(new Error(`${role} worker exited ${code}: ${outs[i]}`));
      }),
    );
  });
  procs.forEach((p) => p.catch(() => undefined)); // awaited below; a worker that dies early must not go unhandled meanwhile
  // Back up over and over while the workers run; every backup must succeed.
  const handles: BackupHandle[] = [];
  try {
    // Every worker at work before the first backup (a process start can take a while under load).
    for (let i = 0; !outs.every((o, k) => o.startsWith('ready') || exited[k]); i++) {
      if (i > 3000) throw new Error('the workers did not start within 60 s');
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 300));
    const t0 = Date.now();
    while (handles.length < 2 || Date.now() - t0 < LOAD_MS) handles.push(await strata.createBackup({ dir }));
  } finally {
    await writeFile(stopFile, '');
    await Promise.allSettled(procs);
  }
  const stats = await Promise.all(procs);
  for (const s of stats) {
    expect(s.errors, `${s.role} worker errors`).toEqual([]);
    expect(s.mismatches, `${s.role} worker read wrong bytes`).toEqual([]);
    expect(s.ops).toBeGreaterThan(0);
  }
  // The last backup, taken at rest, is exactly the tree.
  const last = await strata.createBackup({ dir });
  const check = join(work, `check-${label}-last`);
  await strata.restoreBackup(last, { dir: check, mode: 'copy' });
  expect(diffTrees(await summarize(dir), await summarize(check))).toEqual([]);
  // Every backup taken under load: stable files exact, every written file whole (never torn).
  let files = 0;
  for (const [i, h] of handles.entries()) {
    const dest = join(work, `check-${label}-${i}`);
    await strata.restoreBackup(h, { dir: dest, mode: 'copy' });
    const got = await hashes(dest);
    for (const [p, want] of Object.entries(stable)) expect(got.get(p), p).toBe(want);
    for (const p of got.keys()) {
      // A writer's temp file is partial by nature at most instants (writeFileSync creates it empty
      // first); whatever a backup holds of it is that instant. Renamed files must be whole.
      if (!p.startsWith('hot-') || /\/\.tmp-/.test(p)) continue;
      files++;
      expect(verifies(await readFile(join(dest, p))), `torn file ${p} in backup ${i}`).toBe(true);
    }
    await rm(dest, { recursive: true, force: true });
  }
  notes.push(`${label}: ${handles.length} backups under load (${stats.map((s) => `${s.role} ${s.ops} ops`).join(', ')}), ${files} written files checked whole`);
  expect(handles.length).toBeGreaterThan(1);
}

describe('a steady mix of stat, read and write during backups', () => {
  it('a workspace (extract mode): no error, no wrong byte, no torn file in any backup', async () => {
    if (!need('root')) return;
    const strata = new Strata({ home: join(work, 'home-mix'), store: new FileStore(storeDir), mode: 'extract' });
    const base = await strata.createBackup({ dir: src });
    const ws = join(work, 'ws-mix');
    await strata.restoreBackup(base, { dir: ws });
    await underLoad(ws, strata, 'workspace');
  });

  it('a plain directory (full backups): no error, no wrong byte, no torn file in any backup', async () => {
    const dir = join(work, 'plain-mix');
    await makeProject(dir, 2);
    const strata = new Strata({ home: join(work, 'home-plain'), store: new FileStore(storeDir), mode: 'copy' });
    await underLoad(dir, strata, 'plain dir');
  });
});

// ---- scale of huge and hostile input -----------------------------------------------------------------

const TOC_PROBE = `
import { encodeToc, decodeToc } from ${JSON.stringify(join(REPO, 'dist/format/toc.js'))};
import { buildView } from ${JSON.stringify(join(REPO, 'dist/format/view.js'))};
const n = Number(process.argv[2]);
const d = 'sha256:' + 'ab'.repeat(32);
const entries = [{ path: '.', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [1700000000, 0], size: 0, headerOffset: 0 }];
let off = 0;
const dirs = Math.ceil(n / 1000);
for (let i = 0; i < dirs; i++) entries.push({ path: 'd' + i, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [1700000000, 0], size: 0, headerOffset: (off += 100) });
for (let i = 0; entries.length < n; i++) {
  const h = (off += 100); const b = off; off += 30;
  entries.push({ path: 'd' + (i % dirs) + '/f' + i, type: 'file', mode: 0o644, uid: 1000, gid: 1000, mtime: [1700000000, 1], size: 5, digest: d, headerOffset: h,
    chunks: [{ offset: 0, size: 5, blobOffset: b, blobLength: 30, digest: d }] });
}
const buf = encodeToc({ version: 1, codec: 'zstd', entries });
entries.length = 0;
const t0 = performance.now();
const toc = decodeToc(buf, off + 10);
const t1 = performance.now();
buildView([toc]);
const t2 = performance.now();
process.stdout.write(JSON.stringify({ n: toc.entries.length, tocBytes: buf.length, decodeMs: Math.round(t1 - t0), viewMs: Math.round(t2 - t1), maxRssMB: Math.round(process.resourceUsage().maxRSS / 1024) }));
`;

/** `depth` nested directories d/d/d/... and a file at the bottom, made with relative mkdir and chdir (paths past PATH_MAX work that way). */
async function makeDeep(root: string, depth: number): Promise<void> {
  await run(process.execPath, ['-e', `const fs = require('fs'); process.chdir(process.argv[1]); for (let i = 0; i < ${depth}; i++) { fs.mkdirSync('d'); process.chdir('d'); } fs.writeFileSync('leaf', 'leaf\\n');`, root]);
}

describe('scale: huge and hostile input', () => {
  beforeAll(() => {
    // The probe runs the compiled library (make build) in its own process, to measure its peak memory alone.
    assertBuilt();
  });

  it('a TOC of a million tiny entries parses (and its view builds) within bounded time and memory', async () => {
    const probe = join(work, 'toc-probe.mjs');
    await writeFile(probe, TOC_PROBE);
    const { stdout } = await run(process.execPath, [probe, '1000000'], { maxBuffer: 1 << 20 });
    const r = JSON.parse(stdout) as { n: number; tocBytes: number; decodeMs: number; viewMs: number; maxRssMB: number };
    notes.push(`1M-entry TOC: ${(r.tocBytes / MiB).toFixed(0)} MiB JSON, decode ${r.decodeMs} ms, view ${r.viewMs} ms, peak RSS ${r.maxRssMB} MB (whole probe, building included)`);
    expect(r.n).toBe(1_000_000);
    expect(r.tocBytes).toBeLessThan(MAX_TOC_SIZE);
    // Bounds with a wide margin for a loaded 2-core machine: ~13 s and ~1.8 GB measured.
    expect(r.decodeMs + r.viewMs).toBeLessThan(90_000);
    expect(r.maxRssMB).toBeLessThan(4096);
  });

  it('a TOC claiming more than the limit is refused before anything is fetched or decompressed', async () => {
    const store = new FileStore(join(work, 'hostile-store'));
    const strata = new Strata({ home: join(work, 'home-hostile'), store, mode: 'copy' });
    const l = await craftLayer([{ path: '.', type: 'dir' }], { dir: work });
    for (const tocSize of [MAX_TOC_SIZE + 1, 2 ** 31, 2 ** 40]) {
      const h = await publish(store, [l], { descriptor: (d) => ({ ...d, tocSize }) });
      const rss = process.memoryUsage().rss;
      const t0 = Date.now();
      await expect(strata.restoreBackup(h, { dir: join(work, 'never') })).rejects.toMatchObject({ code: 'INVALID_LAYER' });
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(process.memoryUsage().rss - rss).toBeLessThan(64 * MiB);
    }
    expect(existsSync(join(work, 'never'))).toBe(false);
    notes.push(`TOC size limit: ${MAX_TOC_SIZE} bytes (V8's longest string: a bigger TOC could not be parsed anyway)`);
  });

  it('a 1000-deep tree (a 2000-byte path) backs up and restores identical', async () => {
    const root = join(work, 'deep-1000');
    await mkdir(root);
    await makeDeep(root, 1000);
    const strata = new Strata({ home: join(work, 'home-deep'), store: new FileStore(join(work, 'deep-store')), mode: 'copy' });
    const h = await strata.createBackup({ dir: root });
    const dest = join(work, 'deep-1000-r');
    await strata.restoreBackup(h, { dir: dest });
    expect(diffTrees(await summarize(root), await summarize(dest))).toEqual([]);
  });

  it('a tree whose paths pass PATH_MAX (2100 deep): the backup fails cleanly, nothing is published', async () => {
    const root = join(work, 'deep-2100');
    await mkdir(root);
    await makeDeep(root, 2100);
    const store = new FileStore(join(work, 'deep2-store'));
    const strata = new Strata({ home: join(work, 'home-deep2'), store, mode: 'copy' });
    const err = await strata.createBackup({ dir: root }).then(
      () => null,
      (e: unknown) => e,
    );
    // A known limit (paths are used whole, so the kernel's PATH_MAX of 4096 bytes applies).
    expect(err).toBeInstanceOf(StrataError);
    expect((err as StrataError).code).toBe('BACKUP_CREATE_FAILED');
    expect((err as Error).message).toMatch(/ENAMETOOLONG/);
    expect(await strata.listBackups()).toEqual([]);
    expect(await readdir(join(work, 'home-deep2', 'tmp'))).toEqual([]);
    await run('rm', ['-rf', join(root, 'd')]);
  });

  it.each([2100, 5000])('a crafted layer %i directories deep: refused or failed cleanly, no staging left', async (depth) => {
    const store = new FileStore(join(work, `craft-deep-store-${depth}`));
    const strata = new Strata({ home: join(work, `home-craft-${depth}`), store, mode: 'copy' });
    const entries: CraftEntry[] = [{ path: '.', type: 'dir' }];
    let p = '';
    for (let i = 0; i < depth; i++) {
      p = p ? `${p}/d` : 'd';
      entries.push({ path: p, type: 'dir' });
    }
    entries.push({ path: `${p}/leaf`, type: 'file', data: 'leaf\n' });
    const h = await publish(store, [await craftLayer(entries, { dir: work })]);
    const lab = join(work, `craft-lab-${depth}`);
    await mkdir(lab);
    const err = await strata.restoreBackup(h, { dir: join(lab, 'target') }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(StrataError);
    notes.push(`crafted ${depth}-deep layer: ${(err as StrataError).code}: ${(err as Error).message.slice(0, 100)}…`);
    expect(await readdir(lab)).toEqual([]);
  });
});

