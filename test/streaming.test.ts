/**
 * Backup and restore stream: peak memory does not grow with file size, and a file far larger than
 * the process's heap limit goes through. Runs the compiled library in a child process with a
 * 64 MiB old-space heap and reads its peak RSS (VmHWM) from /proc.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { assertBuilt } from './helpers/built.js';
import { diffTrees, summarize } from './helpers/tree.js';
import { prng } from './helpers/fidelity.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
let work: string;

async function makeFile(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  // Incompressible-ish data, so the blob is as large as the file.
  const block = prng(size, 8 * MiB);
  for (let off = 0; off < size; off += block.length) {
    block.writeUInt32LE(off / block.length, 0);
    await fh.write(block, 0, Math.min(block.length, size - off), off);
  }
  await fh.close();
}

async function peakFor(size: number): Promise<{ afterBackup: number; afterRestore: number }> {
  const dir = join(work, `src-${size}`);
  await mkdir(dir);
  await makeFile(join(dir, 'big.bin'), size);
  const out = join(work, `out-${size}`);
  const { stdout } = await run(process.execPath, [
    '--max-old-space-size=64',
    join(__dirname, 'helpers', 'peak-rss.mjs'),
    join(work, `home-${size}`),
    dir,
    out,
  ]);
  console.log(`peak RSS for ${size} bytes: ${stdout.trim()}`);
  expect(diffTrees(await summarize(dir), await summarize(out))).toEqual([]);
  await rm(dir, { recursive: true });
  await rm(out, { recursive: true });
  await rm(join(work, `home-${size}`), { recursive: true });
  return JSON.parse(stdout) as { afterBackup: number; afterRestore: number };
}

beforeAll(async () => {
  assertBuilt(); // the child runs dist/ (make build)
  work = await mkdtemp(join(tmpdir(), 'strata-stream-'));
});
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

it('keeps memory flat as files grow, and moves files far larger than its heap', async () => {
  const small = await peakFor(64 * MiB);
  const large = await peakFor(3 * 1024 * MiB);
  // 3 GiB through a process whose heap is capped at 64 MiB, with peak RSS bounded and within
  // a margin of the 64 MiB run: nothing is buffered whole. The backup's margin is the native
  // engine's own bound (native/sys/capture.c): up to 64 MiB of finished frames waiting for
  // JavaScript and 16 MiB of a large file's frames, which a loaded machine fills (98 MiB over the
  // small run was measured in CI, against 96 MiB allowed before); 3 GiB held would be far past it.
  expect(large.afterRestore).toBeLessThan(400 * MiB);
  expect(large.afterBackup - small.afterBackup).toBeLessThan(128 * MiB);
  expect(large.afterRestore - small.afterRestore).toBeLessThan(96 * MiB);
  // 3 GiB written, backed up, restored and compared: minutes on a slow disk or a loaded 2-core
  // machine, past the suite-wide 300 s; 20 min still ends a hang.
}, 1_200_000);
