// Child process for the streaming test: back up DIR, restore it to OUT, print peak RSS (VmHWM).
// Runs the compiled library (dist/) under a small heap so that buffering a file would fail.
import { readFileSync } from 'node:fs';
import { Strata } from '../../dist/index.js';

const [home, dir, out] = process.argv.slice(2);
// A plain copy: this measures the streaming data path, not a mount.
const s = new Strata({ home, mode: 'copy' });
const h = await s.createBackup({ dir });
const afterBackup = peak();
await s.restoreBackup(h, { dir: out });
console.log(JSON.stringify({ afterBackup, afterRestore: peak() }));

function peak() {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return Number(m[1]) * 1024;
}
