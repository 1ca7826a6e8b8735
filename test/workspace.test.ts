/**
 * Overlay workspaces, incremental backups and forks (issue 3). Each operation is done inside a
 * restored workspace, backed up, restored into a fresh workspace (and as a plain copy), and the
 * result compared with the original merged view, contents and metadata.
 */
import { appendFile, chmod, lchown, link, mkdir, mkdtemp, readdir, rename, rm, symlink, truncate, unlink, writeFile, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Strata, type BackupHandle } from '../src/index.js';
import { nativeCaptures } from '../src/capture/native-tree.js';
import { sys } from '../src/sys/native.js';
import { assertBuilt } from './helpers/built.js';
import { need } from './helpers/caps.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { makeBaseTree, unmountUnder } from './helpers/workspace.js';

const RUN = need('root');
let work: string;
let n = 0;

beforeAll(async () => {
  assertBuilt(); // restores default to lazy workspaces, served by the daemon from dist/ (make build)
  work = await mkdtemp(join(tmpdir(), 'strata-ws-'));
});
afterEach(() => {
  if (work) unmountUnder(work);
});
afterAll(async () => {
  if (work) {
    unmountUnder(work);
    // A lazy daemon may still write into its home for a few seconds after its last unmount (its
    // log, a cache file in flight): retry the removal (ENOTEMPTY) for up to ~10 s.
    await rm(work, { recursive: true, force: true, maxRetries: 8, retryDelay: 250 });
  }
});

interface Ctx {
  strata: Strata;
  base: BackupHandle;
  dir: (name: string) => string;
}

async function setup(opts: { maxChain?: number } = {}): Promise<Ctx> {
  const root = join(work, `case-${++n}`);
  const strata = new Strata({ home: join(root, 'home'), ...opts });
  await makeBaseTree(join(root, 'src'));
  const base = await strata.createBackup({ dir: join(root, 'src') });
  return { strata, base, dir: (name) => join(root, name) };
}

/** Back up the workspace, restore the backup into a fresh workspace and a copy, compare both. */
async function roundTrip(c: Ctx, ws: string, label: string): Promise<BackupHandle> {
  const h = await c.strata.createBackup({ dir: ws });
  const want = await summarize(ws);
  const fresh = c.dir(`${label}-ws`);
  await c.strata.restoreBackup(h, { dir: fresh, mode: 'extract' });
  expect(diffTrees(want, await summarize(fresh)), `${label}: workspace restore`).toEqual([]);
  const copy = c.dir(`${label}-copy`);
  await c.strata.restoreBackup(h, { dir: copy, mode: 'copy' });
  expect(diffTrees(want, await summarize(copy)), `${label}: copy restore`).toEqual([]);
  await c.strata.unmount(fresh, { discard: true });
  return h;
}

const OPS: Array<[string, (w: string) => Promise<void>]> = [
  ['create', async (w) => {
    await writeFile(join(w, 'new.txt'), 'new');
    await mkdir(join(w, 'newdir/inner'), { recursive: true });
    await writeFile(join(w, 'newdir/inner/f'), 'f');
  }],
  ['overwrite', (w) => writeFile(join(w, 'a.txt'), 'overwritten\n')],
  ['append', (w) => appendFile(join(w, 'b.txt'), 'more\n')],
  ['truncate', (w) => truncate(join(w, 'big.bin'), 1000)],
  ['chmod and chown only', async (w) => {
    await chmod(join(w, 'a.txt'), 0o600);
    await lchown(join(w, 'b.txt'), 1000, 1001);
    await chmod(join(w, 'dir2'), 0o700);
  }],
  ['xattr change', async (w) => {
    sys.lsetxattr(Buffer.from(join(w, 'attrs')), 'user.one', Buffer.from('changed'));
    sys.lsetxattr(Buffer.from(join(w, 'attrs')), 'user.two', Buffer.from('2'));
  }],
  ['delete a file', (w) => unlink(join(w, 'a.txt'))],
  ['delete a directory tree', (w) => rm(join(w, 'dir1'), { recursive: true })],
  ['replace a directory by a file', async (w) => {
    await rm(join(w, 'dir1'), { recursive: true });
    await writeFile(join(w, 'dir1'), 'now a file');
  }],
  ['replace a file by a directory', async (w) => {
    await unlink(join(w, 'a.txt'));
    await mkdir(join(w, 'a.txt'));
    await writeFile(join(w, 'a.txt/inside'), 'in');
  }],
  ['rename a file', (w) => rename(join(w, 'a.txt'), join(w, 'dir2/renamed.txt'))],
  ['rename a directory across levels', async (w) => {
    // A lower directory moved up and down the tree: EXDEV on fuse-overlayfs, works here.
    await rename(join(w, 'dir1/sub'), join(w, 'dir2/moved'));
    await rename(join(w, 'dir2'), join(w, 'empty/dir2-now-deeper'));
  }],
  ['hard link a lower file', (w) => link(join(w, 'a.txt'), join(w, 'dir2/a-link'))],
  ['symlink retarget', async (w) => {
    await unlink(join(w, 'link'));
    await symlink('b.txt', join(w, 'link'));
  }],
  ['delete then re-create the same name', async (w) => {
    await unlink(join(w, 'b.txt'));
    await writeFile(join(w, 'b.txt'), 'reborn\n');
    await rm(join(w, 'dir1'), { recursive: true });
    await mkdir(join(w, 'dir1'));
    await writeFile(join(w, 'dir1/only'), 'only this');
  }],
];

describe.runIf(RUN)('workspaces', () => {
  describe.each(OPS.flatMap(([label, op]) => (['lazy', 'extract'] as const).map((mode) => [`${label} (${mode})`, op, mode] as const)))('%s', (_label, op, mode) => {
    it('backs up only the change and restores the same view', async () => {
      const c = await setup();
      const ws = c.dir('ws');
      await c.strata.restoreBackup(c.base, { dir: ws, mode });
      expect((await c.strata.status(ws))[0]).toMatchObject({ mounted: true, unsavedEntries: 0 });
      await op(ws);
      const h = await roundTrip(c, ws, 'op');
      const info = await c.strata.getBackup(h.id);
      const baseInfo = await c.strata.getBackup(c.base.id);
      // The parent's layer is reused, not uploaded again; the new layer is small.
      expect(info.layers.length).toBe(2);
      expect(info.layers[0]!.digest).toBe(baseInfo.layers[0]!.digest);
      expect(info.parent).toBe(c.base.id);
      expect(info.layers[1]!.size).toBeLessThan(64 * 1024);
      expect((await c.strata.status(ws))[0]!.unsavedEntries).toBe(0);
    });
  });

  describe.each(['extract', 'lazy'] as const)('a directory replaced wholesale (%s)', (mode) => {
    it('is captured by the native engine, with what only the upper walk captures handed back, and baselined for the next backup', async () => {
      const c = await setup();
      const ws = c.dir('ws');
      await c.strata.restoreBackup(c.base, { dir: ws, mode });
      // A reinstall: dir1 removed and made again (overlay marks it opaque), holding all kinds.
      await rm(join(ws, 'dir1'), { recursive: true });
      const d = join(ws, 'dir1');
      await mkdir(join(d, 'pkg/lib/deep'), { recursive: true });
      for (let i = 0; i < 40; i++) await writeFile(join(d, 'pkg/lib', `m${i}.js`), `module.exports = ${i};\n`.repeat(i + 1));
      await writeFile(join(d, 'pkg/lib/deep/big.bin'), Buffer.alloc(5 * 1024 * 1024 + 7, 3)); // chunked
      await writeFile(join(d, 'pkg/mid.bin'), Buffer.alloc(300 * 1024, 9)); // its own frame
      await writeFile(join(d, 'pkg/empty'), '');
      await symlink('lib/m1.js', join(d, 'pkg/main.js'));
      sys.mknod(Buffer.from(join(d, 'pkg/fifo')), 0o010644, 0, 0);
      await writeFile(join(d, 'pkg/attrs'), 'x');
      sys.lsetxattr(Buffer.from(join(d, 'pkg/attrs')), 'user.kept', Buffer.from('yes'));
      sys.lsetxattr(Buffer.from(join(d, 'pkg/lib')), 'user.dir', Buffer.from('d'));
      await writeFile(join(d, 'pkg/setuid'), '#!/bin/sh\n');
      await chmod(join(d, 'pkg/setuid'), 0o4750);
      await lchown(join(d, 'pkg/setuid'), 1234, 5678);
      // Other names: inside the subtree, and one outside it (the hard-link map spans the upper).
      await writeFile(join(d, 'pkg/h1'), 'linked');
      await link(join(d, 'pkg/h1'), join(d, 'pkg/lib/h2'));
      await link(join(d, 'pkg/lib/m3.js'), join(ws, 'outside-link'));
      // A lower directory moved in (renamed: overlay redirects it), with a file deleted in it.
      await rename(join(ws, 'dir2'), join(d, 'moved'));
      await writeFile(join(d, 'moved/added'), 'added');
      await unlink(join(d, 'moved/k'));
      const before = nativeCaptures.upperSubtrees;
      const h = await roundTrip(c, ws, 'reinstall');
      expect(nativeCaptures.upperSubtrees - before, 'the engine captured dir1').toBe(1);
      // The baseline holds every entry the engine captured: nothing changed, no layer.
      const again = await c.strata.createBackup({ dir: ws });
      expect((await c.strata.getBackup(again.id)).layers.length).toBe((await c.strata.getBackup(h.id)).layers.length);
      // One file edited inside: the next layer is about that file.
      await appendFile(join(d, 'pkg/lib/m7.js'), '// edited\n');
      const edit = await roundTrip(c, ws, 'edit');
      const top = (await c.strata.getBackup(edit.id)).layers.at(-1)!;
      expect(top.dataBytes).toBe((await stat(join(d, 'pkg/lib/m7.js'))).size);
      expect(top.size).toBeLessThan(4096);
      await c.strata.unmount(ws, { discard: true });
    });
  });

  it('a socket in a directory replaced wholesale is skipped with a warning and kept in the baseline', async () => {
    const c = await setup();
    const warnings: string[] = [];
    const s = new Strata({ home: join(c.dir('home')), onWarning: (m) => warnings.push(m) });
    const ws = c.dir('ws');
    await s.restoreBackup(c.base, { dir: ws, mode: 'extract' });
    await rm(join(ws, 'dir1'), { recursive: true });
    await mkdir(join(ws, 'dir1/run'), { recursive: true });
    await writeFile(join(ws, 'dir1/run/pid'), '42');
    const { createServer } = await import('node:net');
    const server = createServer();
    await new Promise<void>((r) => server.listen(join(ws, 'dir1/run/app.sock'), r));
    try {
      const before = nativeCaptures.upperSubtrees;
      const h = await s.createBackup({ dir: ws });
      expect(nativeCaptures.upperSubtrees - before).toBe(1);
      expect(warnings.some((w) => /skipping socket dir1\/run\/app\.sock/.test(w)), warnings.join('\n')).toBe(true);
      // Recorded: nothing is left unsaved, and the next backup adds no layer.
      expect((await s.status(ws))[0]!.unsavedEntries).toBe(0);
      const again = await s.createBackup({ dir: ws });
      expect((await s.getBackup(again.id)).layers.length).toBe((await s.getBackup(h.id)).layers.length);
    } finally {
      await new Promise((r) => server.close(r));
    }
    await s.unmount(ws, { discard: true });
  });

  it('replaces a directory by a file and back, across two backups', async () => {
    const c = await setup();
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    // First make dir1 and its files part of the upper's baseline, so they are "gone" later.
    await writeFile(join(ws, 'dir1/x'), 'in the upper');
    await writeFile(join(ws, 'dir1/new'), 'upper only');
    await roundTrip(c, ws, 'zeroth');
    await rm(join(ws, 'dir1'), { recursive: true });
    await writeFile(join(ws, 'dir1'), 'file now');
    await roundTrip(c, ws, 'first');
    await unlink(join(ws, 'dir1'));
    await mkdir(join(ws, 'dir1'));
    await writeFile(join(ws, 'dir1/again'), 'a dir again');
    const h = await roundTrip(c, ws, 'second');
    expect((await c.strata.getBackup(h.id)).layers.length).toBe(4);
  });

  it('uploads about the edited file when one file of a large workspace changes', async () => {
    const c = await setup();
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    await writeFile(join(ws, 'a.txt'), 'x'.repeat(10_000));
    const h = await c.strata.createBackup({ dir: ws });
    const info = await c.strata.getBackup(h.id);
    const total = info.layers[0]!.size;
    expect(total).toBeGreaterThan(6 * 1024 * 1024);
    expect(info.layers[1]!.dataBytes).toBe(10_000);
    expect(info.layers[1]!.size).toBeLessThan(4096);
  });

  it('keeps a chain of ten successive backups right, merging past the chain limit', async () => {
    const c = await setup({ maxChain: 4 });
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    for (let i = 0; i < 10; i++) {
      await writeFile(join(ws, `step-${i}`), `step ${i}\n`);
      if (i % 2 === 0) await appendFile(join(ws, 'b.txt'), `${i}\n`);
      if (i === 2) await writeFile(join(ws, 'dir1/sub/deep/w'), 'content only: no directory changes');
      if (i === 3) await rm(join(ws, 'dir1/sub'), { recursive: true });
      if (i === 5) await writeFile(join(ws, 'dir1/x'), 'again, under an already copied-up directory');
      if (i === 4) await rename(join(ws, 'dir2'), join(ws, 'dir2-renamed'));
      if (i === 5) await unlink(join(ws, `step-1`));
      if (i === 6) await mkdir(join(ws, 'dir1/sub'));
      if (i === 7) await writeFile(join(ws, 'dir1/sub/back'), 'back');
      if (i === 8) await chmod(join(ws, 'exec.sh'), 0o700);
      const h = await roundTrip(c, ws, `chain-${i}`);
      const layers = (await c.strata.getBackup(h.id)).layers;
      expect(layers.length).toBeLessThanOrEqual(4);
      expect(layers[0]!.digest).toBe((await c.strata.getBackup(c.base.id)).layers[0]!.digest);
    }
  });

  it('backs up a plain directory as differences from a parent backup', async () => {
    const c = await setup();
    const src = c.dir('src');
    await writeFile(join(src, 'dir1/sub/deep/w'), 'changed deep down');
    await unlink(join(src, 'dir1/x'));
    await rm(join(src, 'dir2'), { recursive: true });
    await writeFile(join(src, 'dir2'), 'a file now');
    await chmod(join(src, 'exec.sh'), 0o700);
    await mkdir(join(src, 'brand/new'), { recursive: true });
    const h = await c.strata.createBackup({ dir: src, parent: c.base });
    const info = await c.strata.getBackup(h.id);
    expect(info.parent).toBe(c.base.id);
    expect(info.layers.length).toBe(2);
    // Only the changed file's bytes (and the small ones) are stored, not big.bin again.
    expect(info.layers[1]!.dataBytes).toBeLessThan(1024);
    const out = c.dir('diff-copy');
    await c.strata.restoreBackup(h, { dir: out, mode: 'copy' });
    expect(diffTrees(await summarize(src), await summarize(out))).toEqual([]);
    const ws = c.dir('diff-ws');
    await c.strata.restoreBackup(h, { dir: ws, mode: 'extract' });
    expect(diffTrees(await summarize(src), await summarize(ws))).toEqual([]);
  });

  it('gc removes layer directories no workspace uses, and keeps those in use', async () => {
    const c = await setup();
    const [a, b] = [c.dir('gc-a'), c.dir('gc-b')];
    await c.strata.restoreBackup(c.base, { dir: a, mode: 'extract' });
    await c.strata.restoreBackup(c.base, { dir: b, mode: 'extract' });
    const layers = join(c.strata.home, 'layers');
    expect(await readdir(layers)).toHaveLength(1);
    await c.strata.unmount(a, { discard: true });
    expect((await c.strata.gc({ graceMs: 0 })).layerDirs).toEqual([]);
    expect(await readdir(layers)).toHaveLength(1);
    await c.strata.unmount(b, { discard: true });
    const dry = await c.strata.gc({ graceMs: 0, dryRun: true });
    expect(dry.layerDirs).toHaveLength(1);
    expect(await readdir(layers)).toHaveLength(1);
    expect((await c.strata.gc({ graceMs: 0 })).layerDirs).toHaveLength(1);
    expect(await readdir(layers)).toHaveLength(0);
    // The backup itself is untouched: restoring unpacks the layer again.
    await c.strata.restoreBackup(c.base, { dir: c.dir('gc-c'), mode: 'extract' });
    expect(await readFile(join(c.dir('gc-c'), 'a.txt'), 'utf8')).toBe('alpha\n');
  });

  it('adds no layer when nothing changed', async () => {
    const c = await setup();
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    const h = await c.strata.createBackup({ dir: ws });
    expect((await c.strata.getBackup(h.id)).layers.length).toBe(1);
  });

  it('forks: one backup in many workspaces, sharing layers, each with its own changes', async () => {
    const c = await setup();
    const forks = [c.dir('f1'), c.dir('f2'), c.dir('f3')];
    await Promise.all(forks.map((f) => c.strata.restoreBackup(c.base, { dir: f, mode: 'extract' })));
    expect((await readdir(join(c.strata.home, 'layers'))).length).toBe(1);
    await writeFile(join(forks[0]!, 'a.txt'), 'fork one');
    await rm(join(forks[1]!, 'dir1'), { recursive: true });
    await rename(join(forks[2]!, 'dir2'), join(forks[2]!, 'dir3'));
    expect(await readFile(join(forks[1]!, 'a.txt'), 'utf8')).toBe('alpha\n');
    const hs = [];
    for (const [i, f] of forks.entries()) hs.push(await roundTrip(c, f, `fork-${i}`));
    for (const h of hs) {
      const layers = (await c.strata.getBackup(h.id)).layers;
      expect(layers.length).toBe(2);
      expect(layers[0]!.digest).toBe((await c.strata.getBackup(c.base.id)).layers[0]!.digest);
    }
  });

  it('refuses to restore over unsaved changes, and over a non-empty directory, unless forced', async () => {
    const c = await setup();
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    await writeFile(join(ws, 'unsaved'), 'precious');
    await expect(c.strata.restoreBackup(c.base, { dir: ws })).rejects.toMatchObject({ code: 'UNSAVED_CHANGES' });
    expect(await readFile(join(ws, 'unsaved'), 'utf8')).toBe('precious');
    await c.strata.restoreBackup(c.base, { dir: ws, force: true });
    await expect(stat(join(ws, 'unsaved'))).rejects.toMatchObject({ code: 'ENOENT' });

    const plain = c.dir('plain');
    await mkdir(plain);
    await writeFile(join(plain, 'mine'), 'mine');
    await expect(c.strata.restoreBackup(c.base, { dir: plain })).rejects.toMatchObject({ code: 'TARGET_NOT_EMPTY' });
    expect(await readFile(join(plain, 'mine'), 'utf8')).toBe('mine');
    await c.strata.restoreBackup(c.base, { dir: plain, force: true });
    expect(await readFile(join(plain, 'a.txt'), 'utf8')).toBe('alpha\n');
    await expect(stat(join(plain, 'mine'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('unmount keeps unsaved changes; restoring the same backup brings them back; discard drops them', async () => {
    const c = await setup();
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    await writeFile(join(ws, 'keep-me'), 'kept');
    await c.strata.unmount(ws);
    // The new file, and the root directory whose mtime it moved.
    expect((await c.strata.status(ws))[0]).toMatchObject({ mounted: false, unsavedEntries: 2 });
    await expect(readdir(ws)).resolves.toEqual([]);
    const r = await c.strata.restoreBackup(c.base, { dir: ws });
    expect(r.recovered).toBe(true);
    expect(await readFile(join(ws, 'keep-me'), 'utf8')).toBe('kept');
    await c.strata.unmount(ws, { discard: true });
    await expect(c.strata.status(ws)).rejects.toMatchObject({ code: 'WORKSPACE_NOT_FOUND' });
  });

  it('serialises two backups of one workspace', async () => {
    const c = await setup();
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    await writeFile(join(ws, 'one'), '1');
    const [h1, h2] = await Promise.all([c.strata.createBackup({ dir: ws }), c.strata.createBackup({ dir: ws })]);
    const [i1, i2] = [await c.strata.getBackup(h1.id), await c.strata.getBackup(h2.id)];
    // One ran after the other: the second stacks on the first (and added no layer). Told apart by
    // the parent link, not createdAt (milliseconds: two quick backups can share one).
    const [first, second] = i2.parent === i1.id ? [i1, i2] : [i2, i1];
    expect(second.parent).toBe(first.id);
    expect(second.layers.map((l) => l.digest)).toEqual(first.layers.map((l) => l.digest));
  });

  it('never stores a file torn by a concurrent writer', async () => {
    const c = await setup();
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    const target = join(ws, 'busy.bin');
    const size = 8 * 1024 * 1024;
    await writeFile(target, Buffer.alloc(size, 'a'));
    let stop = false;
    const writer = (async () => {
      const { open } = await import('node:fs/promises');
      for (let v = 0; !stop; v++) {
        const ch = 'abcdefgh'[v % 8]!;
        const fh = await open(target, 'r+');
        // Two halves with a pause between: a read in the middle sees two versions.
        await fh.write(Buffer.alloc(size / 2, ch), 0, size / 2, 0);
        await new Promise((r) => setTimeout(r, 5));
        await fh.write(Buffer.alloc(size / 2, ch), 0, size / 2, size / 2);
        await fh.close();
        // Quiet spells between versions: a backup must find one to succeed (a file that never
        // holds still fails the backup, by design), and must never store a torn version. A
        // successful try reads the 8 MiB twice (it changed within the racy window) inside one
        // spell: ~50 ms here, but several times that on a slow, loaded machine, so every fourth
        // spell is 1 s long (the capture retries for 3 s, so it always meets one); the others
        // stay short, so that many tries still overlap a write.
        await new Promise((r) => setTimeout(r, v % 4 === 3 ? 1000 : 150));
      }
    })();
    const results = [];
    for (let i = 0; i < 4; i++) {
      results.push(await c.strata.createBackup({ dir: ws }).then((h) => ({ h }), (err: { code: string; message: string }) => ({ err })));
    }
    stop = true;
    await writer;
    let checked = 0;
    for (const r of results) {
      if ('err' in r) {
        expect(r.err.code).toBe('BACKUP_CREATE_FAILED');
        expect(r.err.message).toMatch(/kept changing/);
        continue;
      }
      const out = c.dir(`torn-${checked++}`);
      await c.strata.restoreBackup(r.h, { dir: out, mode: 'copy' });
      const data = await readFile(join(out, 'busy.bin'));
      expect(data.length).toBe(size);
      expect(data.every((b) => b === data[0])).toBe(true);
    }
    expect(checked).toBeGreaterThan(0);
  });

  it('fails a backup cleanly, after its retry window, on a file that never holds still', async () => {
    const c = await setup();
    const ws = c.dir('ws');
    await c.strata.restoreBackup(c.base, { dir: ws });
    const target = join(ws, 'spinning.bin');
    await writeFile(target, Buffer.alloc(1024 * 1024, 'a'));
    const before = (await c.strata.listBackups()).map((b) => b.id).sort();
    // A separate process rewrites the file in place with no pause at all, until told to stop (not
    // for a fixed time: a slow backup could outlast it; not by a kill: SIGKILL can cut a write
    // short and leave the file torn at rest). 120 s: a cap, should the test die first.
    const stop = c.dir('stop-spinning');
    const { spawn } = await import('node:child_process');
    const code = `const fs=require('fs');const fd=fs.openSync(${JSON.stringify(target)},'r+');const b=Buffer.alloc(1024*1024);
      const end=Date.now()+120000;for(let v=0;Date.now()<end&&!fs.existsSync(${JSON.stringify(stop)});v++){b.fill(97+(v%26));fs.writeSync(fd,b,0,b.length,0);}`;
    const child = spawn(process.execPath, ['-e', code], { stdio: 'ignore' });
    const exited = new Promise((r) => child.on('exit', r));
    try {
      // Wait until the writer is at it (its first write replaced the 'a's).
      for (let i = 0; (await readFile(target)).every((b) => b === 97) || (await readFile(target)).length === 0; i++) {
        if (i > 500) throw new Error('the writer process never started writing');
        await new Promise((r) => setTimeout(r, 20));
      }
      const t0 = Date.now();
      const err = await c.strata.createBackup({ dir: ws }).then(() => null, (e: { code: string; message: string }) => e);
      const took = Date.now() - t0;
      expect(err, 'a backup of a file rewritten without pause must not succeed').not.toBeNull();
      expect(err!.code).toBe('BACKUP_CREATE_FAILED');
      expect(err!.message).toMatch(/spinning\.bin kept changing while it was read \(\d+ tries over \d+ ms\)/);
      // It kept trying for its whole retry window (3 s) before giving up.
      expect(took).toBeGreaterThanOrEqual(3000);
      // Nothing half-made is visible.
      expect((await c.strata.listBackups()).map((b) => b.id).sort()).toEqual(before);
    } finally {
      await writeFile(stop, ''); // it ends after a whole write
      await exited;
    }
    // With the writer gone the same workspace backs up, the file whole.
    const h = await c.strata.createBackup({ dir: ws });
    const out = c.dir('spin-out');
    await c.strata.restoreBackup(h, { dir: out, mode: 'copy' });
    const data = await readFile(join(out, 'spinning.bin'));
    expect(data.length).toBe(1024 * 1024);
    expect(data.every((b) => b === data[0])).toBe(true);
  });
});
