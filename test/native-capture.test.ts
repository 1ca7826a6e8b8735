// Native capture (native/sys/capture.c and tar.c, driven by src/capture/native-tree.ts) against
// the JavaScript capture (src/capture/tree.ts) of the same tree: the tar stream, byte for byte,
// and the TOC, entry by entry, must be the same; every chunk it records must decode, verify and
// hold the file's bytes; what it hands back (sparse files, large files that moved) must be
// captured by JavaScript, and a file that never holds still must fail the capture.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, open, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { captureTreeNative, type NativeCaptureStats } from '../src/capture/native-tree.js';
import { TreeCapture, TornFileError } from '../src/capture/tree.js';
import { codecFor } from '../src/format/codec.js';
import type { TocEntry } from '../src/format/toc.js';
import { LayerWriter, type LayerResult } from '../src/format/writer.js';
import { sys } from '../src/sys/native.js';
import { startBusyWriter } from './helpers/busy.js';
import { makeFidelityTree, prng } from './helpers/fidelity.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
let work: string;
let src: string;

/** Files around every bound the engine cuts at, and enough of them to span several tasks. */
async function addEngineCases(root: string): Promise<void> {
  await mkdir(join(root, 'bounds'));
  for (const [name, size] of [
    ['frame-minus-1', 64 * KiB - 1],
    ['frame', 64 * KiB],
    ['frame-plus-1', 64 * KiB + 1],
    ['chunk', 4 * MiB],
    ['chunk-plus-1', 4 * MiB + 1],
    ['two-chunks', 8 * MiB],
  ] as const) {
    await writeFile(join(root, 'bounds', name), prng(size, size));
  }
  // 1,300 small files in one directory and 300 small directories: several 512-entry tasks.
  await mkdir(join(root, 'many'));
  for (let i = 0; i < 1300; i++) await writeFile(join(root, 'many', `f${String(i).padStart(4, '0')}.js`), `module.exports = ${i};\n`.repeat(1 + (i % 40)));
  for (let i = 0; i < 300; i++) {
    await mkdir(join(root, 'pkgs', `p${i}`), { recursive: true });
    await writeFile(join(root, 'pkgs', `p${i}`, 'package.json'), JSON.stringify({ name: `p${i}`, version: '1.0.0' }));
  }
  // A name and a target past ustar's 100 bytes, a mtime before the epoch.
  await writeFile(join(root, 'n'.repeat(150)), 'long name');
  await utimes(join(root, 'n'.repeat(150)), -12345.5, -12345.5);
}

async function listen(path: string): Promise<() => void> {
  const server = createServer();
  await new Promise<void>((res) => server.listen(path, res));
  return () => server.close();
}

interface Captured {
  blob: string;
  layer: LayerResult;
  warnings: string[];
  stats?: NativeCaptureStats;
}

async function capture(root: string, native: boolean, name: string): Promise<Captured> {
  const blob = join(work, name + '.blob');
  const w = await LayerWriter.create(blob, codecFor('zstd'));
  const warnings: string[] = [];
  const tree = new TreeCapture(w, { onWarning: (m) => warnings.push(m) });
  let stats: NativeCaptureStats | undefined;
  await tree.captureAll(
    root,
    native ? async (r, t) => (stats = await captureTreeNative(r, t, w, { onWarning: (m) => warnings.push(m) })) : undefined,
  );
  return { blob, layer: await w.finish(), warnings, ...(stats ? { stats } : {}) };
}

/** The blob's tar stream: every frame before the TOC, decompressed and concatenated. */
async function tarStream(c: Captured): Promise<Buffer> {
  const prefix = c.blob + '.tar.zst';
  const fh = await open(c.blob, 'r');
  const head = Buffer.alloc(c.layer.tocOffset);
  await fh.read(head, 0, head.length, 0);
  await fh.close();
  await writeFile(prefix, head);
  const { stdout } = await run('zstd', ['-dcq', prefix], { encoding: 'buffer', maxBuffer: 1 << 30 });
  return stdout;
}

/** What an entry says about the tree, without where its bytes lie in the blob. */
function meaning(e: TocEntry): unknown {
  const { headerOffset: _h, chunks, ...rest } = e;
  return { ...rest, chunks: chunks?.map((c) => [c.offset, c.size]) };
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-ncap-'));
  src = join(work, 'src');
  await makeFidelityTree(src);
  await addEngineCases(src);
}, 300_000);
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('native capture', () => {
  it('writes the tar stream and the TOC the JavaScript capture writes, and every chunk verifies', async () => {
    const close = await listen(join(src, 'a.sock'));
    try {
      // Just written: every file is within the racy window (read twice; large ones handed back).
      const js = await capture(src, false, 'js');
      // Large files changed just now: the engine must hand them back (JavaScript reads them twice).
      for (const name of ['chunk-plus-1', 'two-chunks']) await chmod(join(src, 'bounds', name), 0o644);
      const nat = await capture(src, true, 'native');
      expect((await tarStream(nat)).equals(await tarStream(js)), 'the same tar stream').toBe(true);
      expect(nat.layer.toc.entries.map(meaning)).toEqual(js.layer.toc.entries.map(meaning));
      expect(nat.layer.dataBytes).toBe(js.layer.dataBytes);
      expect(nat.warnings).toEqual(js.warnings);
      expect(nat.warnings.some((m) => m.includes('a.sock'))).toBe(true);
      // The sparse files and the fresh large files were JavaScript's.
      expect(nat.layer.toc.entries.filter((e) => e.sparse).length).toBeGreaterThan(0);
      expect(nat.stats!.rolledBack).toBeGreaterThanOrEqual(2);
      expect(nat.stats!.handedBack).toBeGreaterThan(nat.stats!.rolledBack);

      // Every chunk: its frame decodes to frameSize (or size) bytes with its digest, and holds the
      // file's bytes at its offset.
      const blob = await readFile(nat.blob);
      let shared = 0;
      for (const e of nat.layer.toc.entries) {
        if (e.type !== 'file' || e.sparse) continue;
        const content = await readFile(Buffer.concat([Buffer.from(src + '/'), Buffer.from(e.path, 'latin1')]));
        expect(e.digest).toBe('sha256:' + createHash('sha256').update(content).digest('hex'));
        for (const c of e.chunks!) {
          const frame = blob.subarray(c.blobOffset, c.blobOffset + c.blobLength);
          const out = await sys.zstdDecompress(frame, c.frameSize ?? c.size, Buffer.from(c.digest.slice(7), 'hex'));
          const at = c.frameOffset ?? 0;
          if (c.frameSize !== undefined) shared++;
          expect(out.subarray(at, at + c.size).equals(content.subarray(c.offset, c.offset + c.size)), e.path).toBe(true);
        }
      }
      expect(shared).toBeGreaterThan(1000);
    } finally {
      close();
    }
  }, 300_000);

  it('keeps files that hold still without handing them back, and GNU tar extracts its blob', async () => {
    // Out of the racy window now: only the sparse files go back to JavaScript.
    await new Promise((r) => setTimeout(r, 2100));
    const nat = await capture(src, true, 'native-quiet');
    expect(nat.stats!.rolledBack).toBe(0);
    expect(nat.stats!.handedBack).toBe(nat.layer.toc.entries.filter((e) => e.sparse).length);
    const out = join(work, 'tar-out');
    await mkdir(out);
    const { stderr } = await run('tar', ['-x', '--zstd', '-f', nat.blob, '-C', out, '--xattrs', '--xattrs-include=*', '--numeric-owner', '--same-permissions'], { maxBuffer: 1 << 26 });
    // The one thing tar may say: the tree holds deliberately pre-1970 mtimes.
    expect(stderr.split('\n').filter((l) => l && !l.includes('implausibly old time stamp'))).toEqual([]);
    for (const name of ['bounds/chunk-plus-1', 'bounds/frame', 'many/f1299.js', 'pkgs/p299/package.json', 'n'.repeat(150)]) {
      expect((await readFile(join(out, name))).equals(await readFile(join(src, name))), name).toBe(true);
    }
  }, 300_000);

  it('fails with TornFileError on a file that never holds still, and leaves no thread behind', async () => {
    const dir = join(work, 'busy');
    await mkdir(dir);
    for (let i = 0; i < 50; i++) await writeFile(join(dir, `a${i}`), 'still');
    const stop = await startBusyWriter(join(dir, 'z-busy.log'));
    try {
      const err = await capture(dir, true, 'busy').catch((e: unknown) => e);
      expect(err, String(err)).toBeInstanceOf(TornFileError);
      expect((err as Error).message).toMatch(/z-busy\.log kept changing/);
    } finally {
      stop();
    }
    // The engine's threads are joined: the process has no more threads than before it started.
    const threads = async (): Promise<number> => Number(/Threads:\s+(\d+)/.exec(await readFile('/proc/self/status', 'utf8'))![1]);
    const before = await threads();
    await capture(join(src, 'pkgs'), true, 'again');
    expect(await threads()).toBe(before);
  }, 120_000);
});
