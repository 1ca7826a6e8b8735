/**
 * A writer that never lets a file hold still: it rewrites a `size`-byte file in 64 KiB blocks,
 * each with new bytes, as fast as it can, so that no read of the whole file (which takes far
 * longer than one block's write) sees the same bytes twice. Appending a line at a time is not
 * enough: a native read of a small file fits between two appends, and rightly keeps that state.
 */
import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';

const SCRIPT = `
const fs = require('fs');
const [path, size] = [process.argv[1], Number(process.argv[2])];
const fd = fs.openSync(path, 'w');
const block = Buffer.alloc(65536);
const blocks = Math.max(1, Math.ceil(size / block.length));
for (let i = 0; ; i++) {
  block.fill(i & 255);
  block.writeUInt32LE(i, 0);
  const at = (i % blocks) * block.length;
  fs.writeSync(fd, block, 0, Math.min(block.length, size - at), at);
}`;

/** Start the writer; resolves once the file has its size. Returns the function that stops it. */
export async function startBusyWriter(path: string, size = 2 * 1024 * 1024): Promise<() => void> {
  const child = spawn(process.execPath, ['-e', SCRIPT, path, String(size)], { stdio: 'ignore' });
  const stop = (): void => {
    child.kill('SIGKILL');
  };
  try {
    for (let i = 0; ; i++) {
      const st = await stat(path).catch(() => null);
      if (st && st.size >= size) return stop;
      if (child.exitCode !== null || i > 1000) throw new Error(`the busy writer did not start on ${path}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  } catch (err) {
    stop();
    throw err;
  }
}
