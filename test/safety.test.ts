/**
 * Restore safety: whatever a layer, TOC, footer, manifest or handle holds, restore never writes
 * outside its target, never uses bytes whose digest does not match, and leaves no partial target
 * or staging directory behind. Every case is a real crafted blob or a real tampered store object,
 * restored through Strata.restoreBackup() from a file store.
 */
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ErrorCode, StrataError } from '../src/errors.js';
import { codecFor } from '../src/format/codec.js';
import { encodeFooter } from '../src/format/footer.js';
import { blobKey } from '../src/format/reader.js';
import { fetchToc, readFooter } from '../src/store/blobs.js';
import type { CodecName } from '../src/format/toc.js';
import { Strata } from '../src/index.js';
import type { BackupHandle } from '../src/store/manifest.js';
import {
  type CraftEntry,
  type CraftedLayer,
  craftLayer,
  craftRawLayer,
  digestOf,
  frame,
  publish,
  readTocJson,
  rewriteToc,
  sha256hex,
  tocJson,
} from './helpers/craft.js';

let base: string;
let storeDir: string;
let craftDir: string;
let strata: Strata;
let labNo = 0;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'strata-safety-'));
  storeDir = join(base, 'store');
  craftDir = join(base, 'craft');
  await mkdir(craftDir);
  // Made up front, so the first publish does not change base's own listing.
  await mkdir(storeDir);
  await mkdir(join(base, 'home'));
  await mkdir(join(base, 'sources'));
  strata = new Strata({ home: join(base, 'home'), store: 'file://' + storeDir, mode: MODE });
});

afterAll(async () => {
  if (base) await rm(base, { recursive: true, force: true });
});

// ---- the lab: a work dir with a sentinel tree outside the restore target -------------------

interface Lab {
  work: string;
  /** Sentinel directory beside the target: must never change. */
  outside: string;
  target: string;
}

async function newLab(): Promise<Lab> {
  const work = join(base, 'lab', `case-${++labNo}`);
  const outside = join(work, 'outside');
  await mkdir(join(outside, 'sub'), { recursive: true });
  await writeFile(join(outside, 'file'), 'sentinel: must never change\n');
  await chmod(join(outside, 'file'), 0o640);
  await writeFile(join(outside, 'sub', 'inner'), 'inner sentinel\n');
  return { work, outside, target: join(work, 'target') };
}

const MODE = (process.env.STRATA_TEST_RESTORE_MODE ?? 'copy') as 'copy' | 'extract';
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * Every entry under `base` except the store, home and craft dirs: type, mode, owner, size, inode,
 * link count, mtime, content hash, symlink target. `volatileDir`'s own mtime is left out (staging
 * is created and removed in the target's parent).
 */
async function snapshot(volatileDir: string): Promise<Map<string, string>> {
  const skip = new Set([storeDir, craftDir, join(base, 'home')]);
  const out = new Map<string, string>();
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p, { bigint: true });
    const rec: Record<string, string> = {
      mode: st.mode.toString(8),
      owner: `${st.uid}:${st.gid}`,
      size: st.size.toString(),
      ino: st.ino.toString(),
      nlink: st.nlink.toString(),
    };
    if (p !== volatileDir) rec.mtime = st.mtimeNs.toString();
    if (st.isFile()) rec.sha = sha(await readFile(p));
    if (st.isSymbolicLink()) rec.target = await readlink(p);
    out.set(relative(base, p) || '.', JSON.stringify(rec));
    if (st.isDirectory()) {
      for (const n of (await readdir(p)).sort()) if (!skip.has(join(p, n))) await walk(join(p, n));
    }
  };
  await walk(base);
  // Hard links and writes aimed at a system file.
  const pw = await lstat('/etc/passwd', { bigint: true });
  out.set('/etc/passwd', JSON.stringify({ ino: pw.ino.toString(), nlink: pw.nlink.toString(), mtime: pw.mtimeNs.toString(), sha: sha(await readFile('/etc/passwd')) }));
  // The absolute paths the hostile layers name outside base.
  out.set('/tmp/x', String(await exists('/tmp/x')));
  return out;
}

function diff(a: Map<string, string>, b: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [k, v] of a) if (b.get(k) !== v) out.push(`${k}: ${v} -> ${b.get(k) ?? '(gone)'}`);
  for (const [k, v] of b) if (!a.has(k)) out.push(`${k}: new ${v}`);
  return out;
}

/** Changes a successful restore into lab.target may make: the target itself and its parent's link count and mtime. */
function diffOutsideTarget(lab: Lab, before: Map<string, string>, after: Map<string, string>): string[] {
  const t = relative(base, lab.target);
  const parent = relative(base, lab.work);
  return diff(before, after).filter((l) => !(l.startsWith(t + ':') || l.startsWith(t + '/') || l.startsWith(parent + ':')));
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch {
    return false;
  }
}

async function stagingLeft(lab: Lab): Promise<string[]> {
  return (await readdir(lab.work)).filter((n) => n.startsWith('.target.strata-'));
}

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 100));

/**
 * Run `attempt` (a restore into lab.target) and check that it failed with `code` and left no trace:
 * nothing outside the target changed, no target appeared (or an existing one is as it was), no
 * staging directory is left, and nothing changes afterwards either (no write still in flight).
 */
async function expectRefused(lab: Lab, attempt: () => Promise<unknown>, code: ErrorCode): Promise<StrataError> {
  const targetExisted = await exists(lab.target);
  const before = await snapshot(lab.work);
  let err: unknown;
  try {
    await attempt();
  } catch (e) {
    err = e;
  }
  expect(err, 'restore must refuse this input').toBeInstanceOf(StrataError);
  const e = err as StrataError;
  expect(e.code, `${e.code}: ${e.message}`).toBe(code);
  expect(diff(before, await snapshot(lab.work))).toEqual([]);
  if (!targetExisted) expect(await exists(lab.target), 'no target after a failed restore').toBe(false);
  expect(await stagingLeft(lab)).toEqual([]);
  await settle();
  expect(diff(before, await snapshot(lab.work)), 'nothing changes after the restore returned').toEqual([]);
  expect(await stagingLeft(lab)).toEqual([]);
  return e;
}

const restoreInto = (lab: Lab, h: BackupHandle | string, force = false) => () => strata.restoreBackup(h, { dir: lab.target, force });

/** Publish `layers` (bottom first) and check that restoring them into a fresh lab fails with `code`. */
async function refusedLayers(lab: Lab, layers: CraftedLayer[], code: ErrorCode): Promise<StrataError> {
  const h = await publish(strata.store, layers);
  return expectRefused(lab, restoreInto(lab, h), code);
}

const layer = (entries: CraftEntry[], codec?: CodecName): Promise<CraftedLayer> => craftLayer(entries, { dir: craftDir, ...(codec ? { codec } : {}) });

/** A plausible tree the hostile entries are added to, so restore has real work to do first. */
const benign: CraftEntry[] = [
  { path: '.', type: 'dir' },
  { path: 'a', type: 'dir' },
  { path: 'a/ok.txt', type: 'file', data: 'fine\n' },
];

// ---- controls: the crafting helpers make layers restore accepts --------------------------------

describe('controls: crafted layers are otherwise valid', () => {
  it('a crafted layer of benign entries restores, with symlinks kept as links and nothing written through them', async () => {
    const lab = await newLab();
    const l = await layer([
      ...benign,
      { path: 'a/hl', type: 'hardlink', linkTarget: 'a/ok.txt' },
      { path: 'out', type: 'symlink', linkTarget: lab.outside },
      { path: 'up', type: 'symlink', linkTarget: '..' },
    ]);
    const before = await snapshot(lab.work);
    await strata.restoreBackup(await publish(strata.store, [l]), { dir: lab.target });
    expect(await readFile(join(lab.target, 'a/hl'), 'utf8')).toBe('fine\n');
    expect((await lstat(join(lab.target, 'a/hl'))).ino).toBe((await lstat(join(lab.target, 'a/ok.txt'))).ino);
    expect(await readlink(join(lab.target, 'out'))).toBe(lab.outside);
    expect(await readlink(join(lab.target, 'up'))).toBe('..');
    const after = await snapshot(lab.work);
    expect(diffOutsideTarget(lab, before, after)).toEqual([]);
  });

  it('a layer with its TOC rewritten unchanged restores (rewriteToc keeps layers valid)', async () => {
    const lab = await newLab();
    const l = await rewriteToc(await layer(benign), () => undefined, { dir: craftDir });
    await strata.restoreBackup(await publish(strata.store, [l]), { dir: lab.target });
    expect(await readFile(join(lab.target, 'a/ok.txt'), 'utf8')).toBe('fine\n');
  });

  it.each(['zstd', 'gzip'] as const)('a hand-written %s TOC around a raw frame restores (craftRawLayer makes valid layers)', async (codec) => {
    const lab = await newLab();
    const data = Buffer.from('raw\n');
    const l = await craftRawLayer({
      dir: craftDir,
      codec,
      frames: [await frame(codec, data)],
      toc: ({ frames: [f] }) =>
        tocJson(codec, [
          { path: '.', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [0, 0], headerOffset: 0 },
          { path: 'r', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: [0, 0], size: 4, digest: digestOf(data), headerOffset: 0, chunks: [[0, 4, f!.blobOffset, f!.blobLength, digestOf(data)]] },
        ]),
    });
    await strata.restoreBackup(await publish(strata.store, [l]), { dir: lab.target });
    expect(await readFile(join(lab.target, 'r'), 'utf8')).toBe('raw\n');
  });
});

// ---- a. paths that name a place outside the target ----------------------------------------------

describe('restore refuses layer paths that leave the target (UNSAFE_PATH)', () => {
  const cases: Array<[string, (lab: Lab) => CraftEntry]> = [
    ['..', () => ({ path: '..', type: 'dir' })],
    ['../x', () => ({ path: '../x', type: 'file', data: 'pwned\n' })],
    ['../outside/file', () => ({ path: '../outside/file', type: 'file', data: 'pwned\n' })],
    ['a/../../x', () => ({ path: 'a/../../x', type: 'file', data: 'pwned\n' })],
    ['an absolute path into the outside dir', (lab) => ({ path: join(lab.outside, 'abs'), type: 'file', data: 'pwned\n' })],
    ['/tmp/x', () => ({ path: '/tmp/x', type: 'file', data: 'pwned\n' })],
    ['an empty component a//b', () => ({ path: 'a//b', type: 'file', data: 'pwned\n' })],
    ['a trailing slash a/b/', () => ({ path: 'a/b/', type: 'file', data: 'pwned\n' })],
    ['a . component ./x', () => ({ path: './x', type: 'file', data: 'pwned\n' })],
    ['a . component a/./b', () => ({ path: 'a/./b', type: 'file', data: 'pwned\n' })],
    ['a NUL byte', () => ({ path: 'a/x\0/../../y', type: 'file', data: 'pwned\n' })],
    ['an empty path', () => ({ path: '', type: 'file', data: 'pwned\n' })],
    ['a symlink named ../link', (lab) => ({ path: '../link', type: 'symlink', linkTarget: lab.outside })],
    ['a hard link named ../hl', () => ({ path: '../hl', type: 'hardlink', linkTarget: 'a/ok.txt' })],
    ['a whiteout of ../outside/file', () => ({ path: '../outside/file', type: 'whiteout' })],
  ];
  it.each(cases)('path %s', async (_name, make) => {
    const lab = await newLab();
    await refusedLayers(lab, [await layer([...benign, make(lab)])], 'UNSAFE_PATH');
  });
});

// ---- b. symlinks --------------------------------------------------------------------------------

describe('restore never writes through a symlink from the layers', () => {
  it('symlink evil -> outside, then evil/pwned in the same layer (INVALID_LAYER)', async () => {
    const lab = await newLab();
    await refusedLayers(
      lab,
      [await layer([...benign, { path: 'evil', type: 'symlink', linkTarget: lab.outside }, { path: 'evil/pwned', type: 'file', data: 'pwned\n' }])],
      'INVALID_LAYER',
    );
  });

  it('symlink evil -> outside in one layer, evil/pwned in the layer stacked above (INVALID_LAYER)', async () => {
    const lab = await newLab();
    const lower = await layer([...benign, { path: 'evil', type: 'symlink', linkTarget: lab.outside }]);
    const upper = await layer([{ path: 'evil/pwned', type: 'file', data: 'pwned\n' }]);
    await refusedLayers(lab, [lower, upper], 'INVALID_LAYER');
  });

  it('a directory replaced by a symlink in a middle layer, then written into from the top layer (INVALID_LAYER)', async () => {
    const lab = await newLab();
    const l0 = await layer([...benign, { path: 'd', type: 'dir' }, { path: 'd/keep', type: 'file', data: 'keep\n' }]);
    const l1 = await layer([{ path: 'd', type: 'symlink', linkTarget: lab.outside }]);
    const l2 = await layer([{ path: 'd/sub', type: 'dir' }, { path: 'd/sub/pwned', type: 'file', data: 'pwned\n' }]);
    await refusedLayers(lab, [l0, l1, l2], 'INVALID_LAYER');
  });

  it('symlink up -> .., then up/pwned, in one layer and across two (INVALID_LAYER)', async () => {
    const lab = await newLab();
    await refusedLayers(lab, [await layer([...benign, { path: 'up', type: 'symlink', linkTarget: '..' }, { path: 'up/pwned', type: 'file', data: 'pwned\n' }])], 'INVALID_LAYER');
    const lab2 = await newLab();
    const lower = await layer([...benign, { path: 'up', type: 'symlink', linkTarget: '..' }]);
    const upper = await layer([{ path: 'up/outside', type: 'dir' }, { path: 'up/outside/file', type: 'file', data: 'pwned\n' }]);
    await refusedLayers(lab2, [lower, upper], 'INVALID_LAYER');
  });

  it('the root entry as a symlink to the outside dir (INVALID_LAYER)', async () => {
    const lab = await newLab();
    await refusedLayers(lab, [await layer([{ path: '.', type: 'symlink', linkTarget: lab.outside }, { path: 'pwned', type: 'file', data: 'pwned\n' }])], 'INVALID_LAYER');
  });

  it('a whiteout under a symlink deletes nothing outside, and a directory replacing the symlink is a real directory', async () => {
    const lab = await newLab();
    const l0 = await layer([...benign, { path: 'evil', type: 'symlink', linkTarget: lab.outside }, { path: 'evil2', type: 'symlink', linkTarget: lab.outside }]);
    const l1 = await layer([
      { path: 'evil/file', type: 'whiteout' },
      { path: 'evil2', type: 'dir', opaque: true },
      { path: 'evil2/mine', type: 'file', data: 'mine\n' },
    ]);
    const before = await snapshot(lab.work);
    await strata.restoreBackup(await publish(strata.store, [l0, l1]), { dir: lab.target });
    expect(await readlink(join(lab.target, 'evil'))).toBe(lab.outside);
    expect((await lstat(join(lab.target, 'evil2'))).isDirectory()).toBe(true);
    expect(await readFile(join(lab.target, 'evil2/mine'), 'utf8')).toBe('mine\n');
    const after = await snapshot(lab.work);
    expect(diffOutsideTarget(lab, before, after)).toEqual([]);
  });
});

// ---- c. hard links -------------------------------------------------------------------------------

describe('restore links only to files it created itself', () => {
  const cases: Array<[string, ErrorCode, (lab: Lab) => CraftEntry[]]> = [
    ['to ../outside/file', 'UNSAFE_PATH', () => [{ path: 'hl', type: 'hardlink', linkTarget: '../outside/file' }]],
    ['to /etc/passwd', 'UNSAFE_PATH', () => [{ path: 'hl', type: 'hardlink', linkTarget: '/etc/passwd' }]],
    ['to the outside file by absolute path', 'UNSAFE_PATH', (lab) => [{ path: 'hl', type: 'hardlink', linkTarget: join(lab.outside, 'file') }]],
    ['to a/../a/ok.txt', 'UNSAFE_PATH', () => [{ path: 'hl', type: 'hardlink', linkTarget: 'a/../a/ok.txt' }]],
    ['to a path that does not exist', 'INVALID_LAYER', () => [{ path: 'hl', type: 'hardlink', linkTarget: 'nope' }]],
    ['to a directory', 'INVALID_LAYER', () => [{ path: 'hl', type: 'hardlink', linkTarget: 'a' }]],
    ['to the root', 'INVALID_LAYER', () => [{ path: 'hl', type: 'hardlink', linkTarget: '.' }]],
    ['to itself', 'INVALID_LAYER', () => [{ path: 'hl', type: 'hardlink', linkTarget: 'hl' }]],
    ['to a symlink that points outside', 'INVALID_LAYER', (lab) => [
      { path: 's', type: 'symlink', linkTarget: join(lab.outside, 'file') },
      { path: 'hl', type: 'hardlink', linkTarget: 's' },
    ]],
    ['to a file beneath a symlink to the outside dir', 'INVALID_LAYER', (lab) => [
      { path: 's', type: 'symlink', linkTarget: lab.outside },
      { path: 'hl', type: 'hardlink', linkTarget: 's/file' },
    ]],
  ];
  it.each(cases)('hard link %s (%s)', async (_name, code, make) => {
    const lab = await newLab();
    await refusedLayers(lab, [await layer([...benign, ...make(lab)])], code);
  });

  it('hard link to itself across layers (INVALID_LAYER)', async () => {
    const lab = await newLab();
    const lower = await layer([...benign, { path: 'hl', type: 'file', data: 'x' }]);
    const upper = await layer([{ path: 'hl', type: 'hardlink', linkTarget: 'hl' }]);
    await refusedLayers(lab, [lower, upper], 'INVALID_LAYER');
  });
});

// ---- d. TOC structure, numbers and types that lie ------------------------------------------------

type TocEdit = (toc: { entries: Array<Record<string, unknown>> }, where: { tocOffset: number }) => void;
const fileEntry = (toc: { entries: Array<Record<string, unknown>> }, path: string): Record<string, unknown> & { chunks: unknown[][] } => {
  const e = toc.entries.find((x) => x.path === path);
  if (!e) throw new Error(`no ${path} in the TOC`);
  return e as Record<string, unknown> & { chunks: unknown[][] };
};

describe('restore refuses a TOC that lies about structure or numbers', () => {
  it('duplicate entries for the same path (INVALID_LAYER)', async () => {
    const lab = await newLab();
    await refusedLayers(lab, [await layer([...benign, { path: 'a/ok.txt', type: 'file', data: 'again\n' }])], 'INVALID_LAYER');
    const lab2 = await newLab();
    await refusedLayers(lab2, [await layer([...benign, { path: 'd', type: 'dir' }, { path: 'd', type: 'symlink', linkTarget: lab2.outside }, { path: 'd/x', type: 'file', data: 'x' }])], 'INVALID_LAYER');
  });

  it('a file whose parent is a regular file (INVALID_LAYER)', async () => {
    const lab = await newLab();
    await refusedLayers(lab, [await layer([...benign, { path: 'a/ok.txt/x', type: 'file', data: 'x' }])], 'INVALID_LAYER');
  });

  it('an entry listed before its directory (INVALID_LAYER)', async () => {
    const lab = await newLab();
    await refusedLayers(lab, [await layer([{ path: '.', type: 'dir' }, { path: 'z/x', type: 'file', data: 'x' }, { path: 'z', type: 'dir' }])], 'INVALID_LAYER');
  });

  const twoFiles: CraftEntry[] = [
    ...benign,
    { path: 'f1', type: 'file', data: 'first file, its own bytes\n' },
    { path: 'f2', type: 'file', data: 'second file, other bytes!\n' },
  ];
  const edits: Array<[string, TocEdit]> = [
    ['a chunk reusing another entry\'s frame', (toc) => {
      const f1 = fileEntry(toc, 'f1');
      const f2 = fileEntry(toc, 'f2');
      f2.chunks = [[...f1.chunks[0]!]];
      f2.size = f1.size;
      f2.digest = f1.digest;
    }],
    ['a chunk overlapping the previous file\'s frame', (toc) => {
      const f1 = fileEntry(toc, 'f1');
      const f2 = fileEntry(toc, 'f2');
      f2.chunks[0]![2] = (f1.chunks[0]![2] as number) + 1;
      f2.headerOffset = 0;
    }],
    ['a chunk past the TOC offset', (toc, { tocOffset }) => {
      fileEntry(toc, 'f2').chunks[0]![2] = tocOffset;
    }],
    ['a chunk running into the TOC', (toc, { tocOffset }) => {
      const c = fileEntry(toc, 'f2').chunks[0]!;
      c[3] = tocOffset - (c[2] as number) + 1;
    }],
    ['a chunk before its own header', (toc) => {
      const f2 = fileEntry(toc, 'f2');
      f2.headerOffset = (f2.chunks[0]![2] as number) + 1;
    }],
    ['a file size smaller than its chunks', (toc) => void (fileEntry(toc, 'f1').size = 3)],
    ['a dense file size larger than its chunks', (toc) => void (fileEntry(toc, 'f1').size = 4096)],
    ['a chunk offset past the file size', (toc) => void (fileEntry(toc, 'f1').chunks[0]![0] = 1)],
    ['a negative size', (toc) => void (fileEntry(toc, 'f1').size = -5)],
    ['a negative chunk offset', (toc) => void (fileEntry(toc, 'f1').chunks[0]![0] = -1)],
    ['a negative blob offset', (toc) => void (fileEntry(toc, 'f1').chunks[0]![2] = -100)],
    ['a negative mode', (toc) => void (fileEntry(toc, 'f1').mode = -1)],
    ['a mode with more than 07777', (toc) => void (fileEntry(toc, 'f1').mode = 0o100644)],
    ['a negative uid', (toc) => void (fileEntry(toc, 'f1').uid = -1)],
    ['a huge uid', (toc) => void (fileEntry(toc, 'f1').uid = 2 ** 40)],
    ['a size past 2^53', (toc) => void (fileEntry(toc, 'f1').size = 2 ** 60)],
    ['a fractional size', (toc) => void (fileEntry(toc, 'f1').size = 26.5)],
    ['a size given as a string', (toc) => void (fileEntry(toc, 'f1').size = '26')],
    ['a chunk bigger than MAX_CHUNK_SIZE', (toc) => void (fileEntry(toc, 'f1').chunks[0]![1] = 4 * 1024 * 1024 + 1)],
    ['a huge blob length', (toc) => void (fileEntry(toc, 'f1').chunks[0]![3] = 2 ** 52)],
    ['an mtime nanosecond field of 1e9', (toc) => void (fileEntry(toc, 'f1').mtime = [0, 1_000_000_000])],
    ['a negative header offset', (toc) => void (fileEntry(toc, 'f1').headerOffset = -1)],
    ['an unknown entry type', (toc) => void (fileEntry(toc, 'f1').type = 'socket')],
    ['an entry without a type', (toc) => void delete fileEntry(toc, 'f1').type],
    ['a malformed chunk digest', (toc) => void (fileEntry(toc, 'f1').chunks[0]![4] = 'sha256:xyz')],
    ['a chunk of the wrong arity', (toc) => void fileEntry(toc, 'f1').chunks[0]!.pop()],
    ['a directory with data', (toc) => void (toc.entries.find((e) => e.path === 'a')!.chunks = fileEntry(toc, 'f1').chunks)],
    ['a directory with a link target', (toc) => void (toc.entries.find((e) => e.path === 'a')!.linkTarget = '/etc')],
    ['a TOC in another codec than its footer', (toc) => void ((toc as Record<string, unknown>).codec = 'gzip')],
    ['an unsupported TOC version', (toc) => void ((toc as Record<string, unknown>).version = 3)],
    ['a shared-frame chunk in a version 1 TOC', (toc) => void fileEntry(toc, 'f1').chunks[0]!.push(0, 26)],
    ['a prefetch range past the data', (toc, { tocOffset }) => void ((toc as Record<string, unknown>).prefetch = { blobOffset: 0, blobLength: tocOffset + 1 })],
  ];
  it.each(edits)('%s (INVALID_LAYER)', async (_name, edit) => {
    const lab = await newLab();
    const l = await rewriteToc(await layer(twoFiles), edit, { dir: craftDir });
    await refusedLayers(lab, [l], 'INVALID_LAYER');
  });

  it('a chunk shifted one byte into its header frame: read, then refused by its digest (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const l = await rewriteToc(await layer(twoFiles), (toc) => {
      const c = fileEntry(toc, 'f2').chunks[0]!;
      c[2] = (c[2] as number) - 1;
    }, { dir: craftDir });
    await refusedLayers(lab, [l], 'DIGEST_MISMATCH');
  });

  it('a TOC that is not JSON, or not an object (INVALID_LAYER)', async () => {
    for (const raw of [Buffer.from('{"version":1,'), Buffer.from('null'), Buffer.from('[1,2]')]) {
      const lab = await newLab();
      await refusedLayers(lab, [await craftRawLayer({ dir: craftDir, toc: raw })], 'INVALID_LAYER');
    }
  });

  it('a chunk whose bytes do not match the digest the TOC gives (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    await refusedLayers(lab, [await layer([...benign, { path: 'f', type: 'file', data: 'real bytes\n', chunkDigest: digestOf('other bytes\n') }])], 'DIGEST_MISMATCH');
  });

  it('many damaged chunks: restore fails once, cleanly, with nothing left in flight (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const many: CraftEntry[] = [...benign];
    for (let i = 0; i < 40; i++) many.push({ path: `f${String(i).padStart(2, '0')}`, type: 'file', data: `file ${i}\n`.repeat(50), chunkDigest: digestOf('nope') });
    await refusedLayers(lab, [await layer(many)], 'DIGEST_MISMATCH');
  });

  // Shared frames (TOC v2): small files' headers and bytes in one frame, one digest for it all.
  const sharedLayer = (): Promise<CraftedLayer> => craftLayer(twoFiles, { dir: craftDir, frameBound: 64 * 1024 });
  it('control: small files share one frame (TOC v2) and restore byte for byte', async () => {
    const lab = await newLab();
    const l = await sharedLayer();
    const toc = await readTocJson(l);
    expect(toc.version).toBe(2);
    const [c1, c2] = [fileEntry(toc, 'f1').chunks[0]!, fileEntry(toc, 'f2').chunks[0]!];
    expect(c1.length).toBe(7);
    expect([c2[2], c2[3], c2[4], c2[6]]).toEqual([c1[2], c1[3], c1[4], c1[6]]); // one frame
    expect(c2[5] as number).toBeGreaterThan((c1[5] as number) + (c1[1] as number)); // f2's header between
    await strata.restoreBackup(await publish(strata.store, [l]), { dir: lab.target });
    expect(await readFile(join(lab.target, 'f1'), 'utf8')).toBe('first file, its own bytes\n');
    expect(await readFile(join(lab.target, 'f2'), 'utf8')).toBe('second file, other bytes!\n');
  });
  const sharedEdits: Array<[string, TocEdit]> = [
    ['a frame offset past the frame', (toc) => void (fileEntry(toc, 'f2').chunks[0]![5] = (fileEntry(toc, 'f2').chunks[0]![6] as number) - 1)],
    ['a frame size past the limit', (toc) => {
      for (const f of ['a/ok.txt', 'f1', 'f2']) fileEntry(toc, f).chunks[0]![6] = 4 * 1024 * 1024 + 1;
    }],
    ['a second file naming the frame with another digest', (toc) => void (fileEntry(toc, 'f2').chunks[0]![4] = digestOf('other'))],
    ['a second file naming the frame with another size', (toc) => void (fileEntry(toc, 'f2').chunks[0]![6] = (fileEntry(toc, 'f2').chunks[0]![6] as number) + 1)],
    ['a second file reaching back over the first one\'s bytes', (toc) => void (fileEntry(toc, 'f2').chunks[0]![5] = fileEntry(toc, 'f1').chunks[0]![5])],
    ['a negative frame offset', (toc) => void (fileEntry(toc, 'f1').chunks[0]![5] = -1)],
  ];
  it.each(sharedEdits)('a shared frame with %s (INVALID_LAYER)', async (_name, edit) => {
    const lab = await newLab();
    await refusedLayers(lab, [await rewriteToc(await sharedLayer(), edit, { dir: craftDir })], 'INVALID_LAYER');
  });
  it('a shared frame whose digest every file names consistently, but wrongly (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const l = await rewriteToc(await sharedLayer(), (toc) => {
      for (const f of ['a/ok.txt', 'f1', 'f2']) fileEntry(toc, f).chunks[0]![4] = digestOf('not this frame');
    }, { dir: craftDir });
    await refusedLayers(lab, [l], 'DIGEST_MISMATCH');
  });

  it('a TOC whose digest does not match the manifest (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const l = await layer(benign);
    const h = await publish(strata.store, [l], { descriptor: (d) => ({ ...d, tocDigest: digestOf('some other TOC') }) });
    await expectRefused(lab, restoreInto(lab, h), 'DIGEST_MISMATCH');
  });

  it('a TOC frame that decompresses to more than the size the manifest gives (INVALID_LAYER)', async () => {
    const lab = await newLab();
    const real = tocJson('zstd', [{ path: '.', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [0, 0], headerOffset: 0 }]);
    const json = Buffer.from(JSON.stringify(real));
    // Valid JSON either way (trailing spaces), 8 MiB of it, but the footer and manifest say only the JSON's length.
    const l = await craftRawLayer({ dir: craftDir, toc: Buffer.concat([json, Buffer.alloc(8 << 20, 0x20)]), footer: { tocSize: json.length }, lieInResult: true });
    await refusedLayers(lab, [l], 'INVALID_LAYER');
  });

  const manifestLies: Array<[string, ErrorCode, (d: Record<string, unknown>) => Record<string, unknown>]> = [
    ['a TOC size past the limit', 'INVALID_LAYER', (d) => ({ ...d, tocSize: 2 ** 40 })],
    ['a TOC offset at the blob end', 'INVALID_LAYER', (d) => ({ ...d, tocOffset: d.size })],
    ['a negative TOC offset', 'INVALID_LAYER', (d) => ({ ...d, tocOffset: -1 })],
    ['a blob size past 2^53', 'INVALID_LAYER', (d) => ({ ...d, size: 2 ** 60 })],
    ['an unknown codec', 'INVALID_LAYER', (d) => ({ ...d, codec: 'lz4' })],
    ['a blob digest that is a path', 'INVALID_LAYER', (d) => ({ ...d, digest: 'sha256:../../../etc' })],
    ['a TOC length one byte too long', 'DIGEST_MISMATCH', (d) => ({ ...d, tocLength: (d.tocLength as number) + 1 })],
    ['a TOC offset one byte early', 'DIGEST_MISMATCH', (d) => ({ ...d, tocOffset: (d.tocOffset as number) - 1 })],
  ];
  it.each(manifestLies)('a manifest giving %s (%s)', async (_name, code, edit) => {
    const lab = await newLab();
    const l = await layer(benign);
    const h = await publish(strata.store, [l], { descriptor: (d) => edit({ ...d }) as unknown as typeof d });
    await expectRefused(lab, restoreInto(lab, h), code);
  });

  it('a manifest whose codec does not match the layer (INVALID_LAYER)', async () => {
    const lab = await newLab();
    const l = await layer(benign, 'zstd');
    const h = await publish(strata.store, [l], { descriptor: (d) => ({ ...d, codec: 'gzip' }) });
    await expectRefused(lab, restoreInto(lab, h), 'INVALID_LAYER');
  });

  it('a footer pointing outside the blob, or no footer at all: readFooter rejects (INVALID_LAYER)', async () => {
    const good = await layer(benign);
    const r = good.result;
    const bare = async (blob: Buffer): Promise<unknown> => {
      const key = `bare/${sha256hex(blob)}`;
      await strata.store.putBytes(key, blob);
      return readFooter(strata.store, key, blob.length).then(
        () => null,
        (e: unknown) => e,
      );
    };
    // The untouched blob's footer reads back (so the failures below are the lies, not the helper).
    const ok = await readFooter(strata.store, blobKey(r.digest), r.size).catch((e: unknown) => e);
    expect(ok).toMatchObject({ tocOffset: r.tocOffset, tocLength: r.tocLength });
    const body = (await readFile(good.file)).subarray(0, r.tocOffset + r.tocLength);
    const tocDigest = r.tocDigest.slice(7);
    const footers = [
      { tocOffset: r.size * 10, tocLength: r.tocLength, tocSize: r.tocSize },
      { tocOffset: r.tocOffset, tocLength: r.tocLength + 1_000_000, tocSize: r.tocSize },
      { tocOffset: 0, tocLength: r.tocOffset + r.tocLength + 1, tocSize: r.tocSize },
      { tocOffset: r.tocOffset, tocLength: r.tocLength, tocSize: 0 },
      { tocOffset: Number.MAX_SAFE_INTEGER, tocLength: 1, tocSize: 1 },
    ];
    for (const f of footers) {
      const e = await bare(Buffer.concat([body, encodeFooter({ codec: 'zstd', tocDigest, ...f })]));
      expect(e, JSON.stringify(f)).toBeInstanceOf(StrataError);
      expect((e as StrataError).code).toBe('INVALID_LAYER');
    }
    // A footer field past 2^53, and blobs with no footer.
    const big = encodeFooter({ codec: 'zstd', tocOffset: 0, tocLength: 1, tocSize: 1, tocDigest });
    big.writeBigUInt64LE(2n ** 63n, 8 + 8);
    for (const blob of [Buffer.concat([body, big]), body, Buffer.from('tiny'), Buffer.alloc(0)]) {
      const e = await bare(blob);
      expect(e).toBeInstanceOf(StrataError);
      expect((e as StrataError).code).toBe('INVALID_LAYER');
    }
  });
});

describe('restore cleans up when the filesystem refuses an entry', () => {
  it('a name longer than the filesystem allows (BACKUP_RESTORE_FAILED), no staging left', async () => {
    const lab = await newLab();
    await refusedLayers(lab, [await layer([...benign, { path: 'a/' + 'n'.repeat(300), type: 'file', data: 'x' }])], 'BACKUP_RESTORE_FAILED');
  });

  it('a damaged backup restored below directories that do not exist yet leaves no target (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const h = await publish(strata.store, [await layer([...benign, { path: 'f', type: 'file', data: 'real\n', chunkDigest: digestOf('fake\n') }])]);
    const deep = join(lab.work, 'new', 'parents', 'target');
    const before = await snapshot(lab.work);
    await expect(strata.restoreBackup(h, { dir: deep })).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
    expect(await exists(deep)).toBe(false);
    expect(await readdir(join(lab.work, 'new', 'parents'))).toEqual([]);
    // The missing parents were created (mkdir -p) and are left, empty: the only trace a failed restore leaves.
    const changed = diff(before, await snapshot(lab.work)).map((l) => l.split(':')[0]);
    expect(changed).toEqual([relative(base, lab.work), relative(base, join(lab.work, 'new')), relative(base, join(lab.work, 'new', 'parents'))]);
  });
});

// ---- e. tampered store objects and handles ---------------------------------------------------------

async function flipByte(file: string, offset: number): Promise<void> {
  const buf = await readFile(file);
  buf[offset] = buf[offset]! ^ 0x5a;
  await writeFile(file, buf);
}

const blobFile = (digest: string): string => join(storeDir, ...blobKey(digest).split('/'));
const manifestFile = (id: string): string => join(storeDir, 'manifests', `${id}.json`);

/** A real backup of a small real directory; contents unique per call, so no blob is shared. */
async function realBackup(codec: CodecName): Promise<{ handle: BackupHandle; src: string; s: Strata }> {
  const src = join(base, 'sources', `src-${++labNo}`);
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'hello.txt'), `hello from backup ${labNo}\n`);
  await writeFile(join(src, 'sub', 'data.bin'), Buffer.alloc(20_000, labNo));
  await symlink('hello.txt', join(src, 'link'));
  const s = new Strata({ home: join(base, 'home'), store: 'file://' + storeDir, codec, mode: MODE });
  return { handle: await s.createBackup({ dir: src }), src, s };
}

describe.each(['zstd', 'gzip'] as const)('restore uses only bytes that match their digests (%s backups)', (codec) => {
  it('an untampered backup restores (control)', async () => {
    const lab = await newLab();
    const { handle, s } = await realBackup(codec);
    await s.restoreBackup(handle, { dir: lab.target });
    expect(await readFile(join(lab.target, 'sub/data.bin'))).toHaveLength(20_000);
  });

  it('one flipped byte inside a chunk frame of the stored blob (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const { handle, s } = await realBackup(codec);
    const layerDesc = (await s.getBackup(handle.id)).layers[0]!;
    const toc = await fetchToc(s.store, layerDesc);
    const c = toc.entries.find((e) => e.path === 'sub/data.bin')!.chunks![0]!;
    await flipByte(blobFile(layerDesc.digest), c.blobOffset + Math.floor(c.blobLength / 2));
    await expectRefused(lab, () => s.restoreBackup(handle, { dir: lab.target }), 'DIGEST_MISMATCH');
    // Also by plain id (no manifest digest to check): the chunk digest still guards the bytes.
    await expectRefused(lab, () => s.restoreBackup(handle.id, { dir: lab.target }), 'DIGEST_MISMATCH');
  });

  it('one flipped byte in the first byte of a chunk frame (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const { handle, s } = await realBackup(codec);
    const layerDesc = (await s.getBackup(handle.id)).layers[0]!;
    const toc = await fetchToc(s.store, layerDesc);
    const c = toc.entries.find((e) => e.path === 'hello.txt')!.chunks![0]!;
    await flipByte(blobFile(layerDesc.digest), c.blobOffset);
    await expectRefused(lab, () => s.restoreBackup(handle, { dir: lab.target }), 'DIGEST_MISMATCH');
  });

  it('one flipped byte in the TOC frame (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const { handle, s } = await realBackup(codec);
    const d = (await s.getBackup(handle.id)).layers[0]!;
    await flipByte(blobFile(d.digest), d.tocOffset + Math.floor(d.tocLength / 2));
    await expectRefused(lab, () => s.restoreBackup(handle, { dir: lab.target }), 'DIGEST_MISMATCH');
  });

  it('a manifest edited on disk (dir pointed outside) restored with the original handle (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const { handle, s } = await realBackup(codec);
    const hijack = join(lab.outside, 'hijack');
    const m = JSON.parse(await readFile(manifestFile(handle.id), 'utf8'));
    m.dir = hijack;
    await writeFile(manifestFile(handle.id), JSON.stringify(m, null, 2) + '\n');
    // No dir option: the default target would come from the (tampered) manifest.
    await expectRefused(lab, () => s.restoreBackup(handle), 'DIGEST_MISMATCH');
    expect(await exists(hijack)).toBe(false);
  });

  it('a handle whose manifestDigest is wrong (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const { handle, s } = await realBackup(codec);
    const forged = { ...handle, manifestDigest: digestOf('not this manifest') };
    await expectRefused(lab, () => s.restoreBackup(forged, { dir: lab.target }), 'DIGEST_MISMATCH');
  });

  it('another backup\'s manifest copied under this id (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const a = await realBackup(codec);
    const b = await realBackup(codec);
    await writeFile(manifestFile(b.handle.id), await readFile(manifestFile(a.handle.id)));
    await expectRefused(lab, () => b.s.restoreBackup(b.handle.id, { dir: lab.target }), 'DIGEST_MISMATCH');
  });

  it('a handle with an unknown id (BACKUP_NOT_FOUND)', async () => {
    const lab = await newLab();
    const { handle, s } = await realBackup(codec);
    await expectRefused(lab, () => s.restoreBackup({ ...handle, id: 'no-such-backup' }, { dir: lab.target }), 'BACKUP_NOT_FOUND');
  });

  it('a handle with id ../../x (INVALID_BACKUP_CONFIG)', async () => {
    const lab = await newLab();
    const { handle, s } = await realBackup(codec);
    await expectRefused(lab, () => s.restoreBackup({ ...handle, id: '../../x' }, { dir: lab.target }), 'INVALID_BACKUP_CONFIG');
    await expectRefused(lab, () => s.restoreBackup('../../x', { dir: lab.target }), 'BACKUP_NOT_FOUND');
  });
});

// ---- f. decompression bombs ------------------------------------------------------------------------

describe.each(['zstd', 'gzip'] as const)('restore refuses a %s chunk that decompresses to more than its TOC size', (codec) => {
  it('100 MB of zeros in a frame whose TOC size is 10 (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    const zeros = Buffer.alloc(100 * 1024 * 1024);
    const bomb = codec === 'gzip' ? gzipSync(zeros, { level: 9 }) : await codecFor('zstd', 19).compress(zeros);
    expect(bomb.length).toBeLessThan(200 * 1024);
    const ten = Buffer.alloc(10);
    const l = await craftRawLayer({
      dir: craftDir,
      codec,
      frames: [bomb],
      toc: ({ frames: [f] }) =>
        tocJson(codec, [
          { path: '.', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [0, 0], headerOffset: 0 },
          { path: 'bomb', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: [0, 0], size: 10, digest: digestOf(ten), headerOffset: 0, chunks: [[0, 10, f!.blobOffset, f!.blobLength, digestOf(ten)]] },
        ]),
    });
    const rssBefore = process.memoryUsage().rss;
    const e = await refusedLayers(lab, [l], 'DIGEST_MISMATCH');
    expect(e.message).toMatch(/does not decompress/);
    // The frame was never inflated past its TOC size (100 MB would show; allow generous slack).
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(64 * 1024 * 1024);
  });
});

// ---- g. existing targets ---------------------------------------------------------------------------

describe('restore leaves an existing target alone unless forced', () => {
  it('a non-empty target without force (TARGET_NOT_EMPTY), content unchanged', async () => {
    const lab = await newLab();
    await mkdir(join(lab.target, 'keep'), { recursive: true });
    await writeFile(join(lab.target, 'keep', 'mine.txt'), 'user data\n');
    const h = await publish(strata.store, [await layer(benign)]);
    await expectRefused(lab, restoreInto(lab, h), 'TARGET_NOT_EMPTY');
    expect(await readFile(join(lab.target, 'keep', 'mine.txt'), 'utf8')).toBe('user data\n');
  });

  it('a target that is a symlink to the outside dir, or a file, without force (TARGET_NOT_EMPTY)', async () => {
    const lab = await newLab();
    await symlink(lab.outside, lab.target);
    const h = await publish(strata.store, [await layer(benign)]);
    await expectRefused(lab, restoreInto(lab, h), 'TARGET_NOT_EMPTY');
    const lab2 = await newLab();
    await writeFile(lab2.target, 'a file\n');
    await expectRefused(lab2, restoreInto(lab2, h), 'TARGET_NOT_EMPTY');
  });

  it('a forced restore over a symlink to the outside dir replaces the link and writes nothing through it', async () => {
    const lab = await newLab();
    await symlink(lab.outside, lab.target);
    const h = await publish(strata.store, [await layer(benign)]);
    const before = await snapshot(lab.work);
    await strata.restoreBackup(h, { dir: lab.target, force: true });
    expect((await lstat(lab.target)).isDirectory()).toBe(true);
    expect(await readFile(join(lab.target, 'a/ok.txt'), 'utf8')).toBe('fine\n');
    const after = await snapshot(lab.work);
    expect(diffOutsideTarget(lab, before, after)).toEqual([]);
    expect((await readdir(lab.work)).filter((n) => n.startsWith('.target.strata-'))).toEqual([]);
  });

  it('a forced restore of a damaged backup keeps the old target as it was (DIGEST_MISMATCH)', async () => {
    const lab = await newLab();
    await mkdir(lab.target);
    await writeFile(join(lab.target, 'mine.txt'), 'user data\n');
    const l = await layer([...benign, { path: 'f', type: 'file', data: 'real\n', chunkDigest: digestOf('fake\n') }]);
    const h = await publish(strata.store, [l]);
    await expectRefused(lab, restoreInto(lab, h, true), 'DIGEST_MISMATCH');
    expect(await readFile(join(lab.target, 'mine.txt'), 'utf8')).toBe('user data\n');
  });
});
