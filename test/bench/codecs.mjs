#!/usr/bin/env node
// Codec benchmark for docs/codecs.md.
//
//   make native && node test/bench/codecs.mjs [DIR] [--runs N]
//
// Compresses every regular file under DIR (default: this repo's node_modules)
// the way a layer is written: each file on its own, cut into chunks of at most
// 4 MiB, one compressed frame per chunk, 8 frames in flight on the libuv
// threadpool. Then decompresses every frame. Files are read into memory first,
// so the timings are codec + threadpool only, no disk I/O. Empty files are
// skipped (they have no frame). Reports the median of N runs (default 3).
// Also times `tar | zstd -3` and `tar | gzip -6` over the whole tree as one
// stream for reference (those include tar reading from the page cache).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import zlib from 'node:zlib';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const sys = createRequire(import.meta.url)(path.join(repo, 'build', 'strata_sys.node'));

const args = process.argv.slice(2);
let runs = 3;
const runsAt = args.indexOf('--runs');
if (runsAt >= 0) {
  runs = Number(args[runsAt + 1]);
  args.splice(runsAt, 2);
}
const root = path.resolve(args[0] ?? path.join(repo, 'node_modules'));

const CHUNK = 4 << 20;
const WINDOW = 8;
const MB = 1e6;

function walk(dir, out) {
  for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) walk(p, out);
    else if (ent.isFile()) out.push(p); // never follows symlinks
  }
  return out;
}

// At most `window` calls of fn in flight, results in input order.
async function pool(items, window, fn) {
  const results = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(window, items.length) }, worker));
  return results;
}

const gzip = promisify(zlib.gzip);
const gunzip = promisify(zlib.gunzip);
const codecs = [
  { name: 'gzip -1', compress: (c) => gzip(c, { level: 1 }), decompress: (f) => gunzip(f) },
  { name: 'gzip -6', compress: (c) => gzip(c, { level: 6 }), decompress: (f) => gunzip(f) },
  ...[1, 3, 6].map((level) => ({
    name: `zstd -${level}`,
    compress: (c) => sys.zstdCompress(c, level),
    decompress: (f, c) => sys.zstdDecompress(f, c.length),
  })),
];

// CPU seconds of the whole process (JS thread + threadpool), less sensitive
// than wall time to other load on the machine.
const cpuSeconds = (u) => (u.user + u.system) / 1e6;

async function measure(codec, chunks) {
  let t = performance.now();
  let cpu = process.cpuUsage();
  const frames = await pool(chunks, WINDOW, (c) => codec.compress(c));
  const compressS = (performance.now() - t) / 1000;
  const compressCpu = cpuSeconds(process.cpuUsage(cpu));
  t = performance.now();
  cpu = process.cpuUsage();
  const back = await pool(frames, WINDOW, (f, i) => codec.decompress(f, chunks[i]));
  const decompressS = (performance.now() - t) / 1000;
  const decompressCpu = cpuSeconds(process.cpuUsage(cpu));
  for (let i = 0; i < chunks.length; i++) {
    if (back[i].length !== chunks[i].length) throw new Error(`${codec.name}: chunk ${i} did not round-trip`);
  }
  return { output: frames.reduce((n, f) => n + f.length, 0), compressS, compressCpu, decompressS, decompressCpu };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const medians = (s) =>
  Object.fromEntries(
    ['output', 'compressS', 'compressCpu', 'decompressS', 'decompressCpu'].map((k) => [k, median(s.map((x) => x[k]))]),
  );

// Runs a pipeline; `cpu` is the user+sys time of all its processes (bash `times`).
function sh(cmd) {
  const t = performance.now();
  const r = spawnSync('bash', ['-o', 'pipefail', '-c', `${cmd}; times >&2`], { stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status !== 0) throw new Error(`${cmd} failed (${r.status}): ${r.stderr}`);
  const seconds = (performance.now() - t) / 1000;
  const m = r.stderr.toString().trim().split('\n').at(-1).match(/^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/);
  if (!m) throw new Error(`cannot parse times: ${r.stderr}`);
  const cpu = 60 * Number(m[1]) + Number(m[2]) + 60 * Number(m[3]) + Number(m[4]);
  return { seconds, cpu, stdout: r.stdout.toString().trim() };
}

const q = (s) => `'${s.replace(/'/g, `'\\''`)}'`;

// ---- per-file frames --------------------------------------------------------
const files = walk(root, []);
const chunks = [];
for (const f of files) {
  const data = fs.readFileSync(f);
  for (let off = 0; off < data.length; off += CHUNK) chunks.push(data.subarray(off, off + CHUNK));
}
const input = chunks.reduce((n, c) => n + c.length, 0);
console.log(
  `${root}: ${files.length} files, ${chunks.length} frames, ${(input / MB).toFixed(1)} MB; ` +
    `${os.cpus().length} cores, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? 4}, ${runs} runs, median`,
);

const samples = new Map(codecs.map((c) => [c.name, []]));
for (let r = 0; r < runs; r++) {
  for (const codec of codecs) samples.get(codec.name).push(await measure(codec, chunks)); // interleaved runs
}

const rows = [];
for (const codec of codecs) {
  const s = samples.get(codec.name);
  rows.push({
    name: `${codec.name} per file`,
    input,
    ...medians(s),
  });
}

// ---- whole tree as one stream (reference) -----------------------------------
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-codecs-'));
try {
  const tar = `tar cf - -C ${q(path.dirname(root))} ${q(path.basename(root))}`;
  const tarBytes = Number(sh(`${tar} | wc -c`).stdout);
  for (const [name, comp, decomp] of [
    ['tar | zstd -3 -T1', 'zstd -3 -T1 -q -c', 'zstd -d -q -c'],
    ['tar | gzip -6', 'gzip -6 -c', 'gzip -d -c'],
  ]) {
    const out = path.join(tmp, 'stream');
    const s = [];
    for (let r = 0; r < runs; r++) {
      const c = sh(`${tar} | ${comp} > ${q(out)}`);
      const d = sh(`${decomp} < ${q(out)} > /dev/null`);
      s.push({
        output: fs.statSync(out).size,
        compressS: c.seconds,
        compressCpu: c.cpu,
        decompressS: d.seconds,
        decompressCpu: d.cpu,
      });
    }
    rows.push({
      name,
      input: tarBytes,
        ...medians(s),
    });
  }
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}

// ---- report -------------------------------------------------------------------
console.log(
  '\n| codec | input MB | output MB | ratio | compress s | compress MB/s | compress CPU s | decompress s | decompress MB/s | decompress CPU s |',
);
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  console.log(
    `| ${r.name.replaceAll('|', '\\|')} | ${(r.input / MB).toFixed(1)} | ${(r.output / MB).toFixed(1)} | ${(r.input / r.output).toFixed(2)} | ` +
      `${r.compressS.toFixed(2)} | ${(r.input / MB / r.compressS).toFixed(0)} | ${r.compressCpu.toFixed(2)} | ` +
      `${r.decompressS.toFixed(2)} | ${(r.input / MB / r.decompressS).toFixed(0)} | ${r.decompressCpu.toFixed(2)} |`,
  );
}
