#!/usr/bin/env node
// Lazy mount benchmark for docs/lazy.md: `find` and reading every file of a ~20k-file tree on the
// strata-fuse mount (chunk cache warm: hydrated first) against the same tree on the local disk.
//
//   make build && node test/bench/lazy.mjs [--files N] [--runs N]      (root, /dev/fuse)
//
// The tree is deterministic: 200 directories of N/200 files, sizes 64 B .. 8 KiB from a xorshift
// generator, incompressible content. Each command runs in a shell (`find DIR | wc -l`, and
// `find DIR -type f -print0 | xargs -0 cat > /dev/null`), "cold" after `echo 3 >
// /proc/sys/vm/drop_caches` (page cache, dentries and inodes; the chunk cache files are on the
// same disk, so they are cold too), "hot" right after. Median of N runs (default 5). Last, the
// lazy path itself: read-all on fresh mounts with an empty chunk cache (file:// store, default
// fetcher settings).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, '..', '..', 'dist');
const { Strata } = await import(path.join(dist, 'index.js'));
const { fetchToc } = await import(path.join(dist, 'store', 'blobs.js'));
const { mountLazy } = await import(path.join(dist, 'restore', 'lazy', 'mount.js'));

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const FILES = opt('--files', 20000);
const RUNS = opt('--runs', 5);
const DIRS = 200;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-lazybench-'));
const src = path.join(work, 'src');
let mount;
try {
  // 1. The tree.
  let x = 12345;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  let bytes = 0;
  for (let d = 0; d < DIRS; d++) {
    const dir = path.join(src, `d${String(d).padStart(3, '0')}`);
    fs.mkdirSync(dir, { recursive: true });
    for (let f = 0; f < FILES / DIRS; f++) {
      const size = 64 + (next() % 8129);
      const buf = Buffer.allocUnsafe(size);
      for (let i = 0; i < size; i += 4) buf.writeUInt32LE(next(), Math.min(i, size - 4));
      fs.writeFileSync(path.join(dir, `f${f}.txt`), buf);
      bytes += size;
    }
  }
  console.log(`tree: ${FILES} files in ${DIRS} dirs, ${(bytes / 1048576).toFixed(1)} MiB`);

  // 2. Backup, mount, hydrate.
  const strata = new Strata({ home: path.join(work, 'home'), store: 'file://' + path.join(work, 'store') });
  let t = performance.now();
  const handle = await strata.createBackup({ dir: src });
  console.log(`backup: ${(performance.now() - t).toFixed(0)} ms`);
  const { manifest } = await strata.resolve(handle);
  t = performance.now();
  const tocs = await Promise.all(manifest.layers.map((l) => fetchToc(strata.store, l)));
  const mnt = path.join(work, 'mnt');
  fs.mkdirSync(mnt);
  mount = await mountLazy({ store: strata.store, layers: manifest.layers, tocs, mountpoint: mnt, runDir: path.join(work, 'run'), cacheDir: path.join(work, 'cache') });
  console.log(`mount (TOC fetch + index + strata-fuse ready): ${(performance.now() - t).toFixed(0)} ms`);
  t = performance.now();
  const h = await mount.hydrate({ priority: 'normal' });
  console.log(`hydrate: ${h.fetched} chunks in ${(performance.now() - t).toFixed(0)} ms, ${mount.stats().gets} GETs`);
  const missesBefore = mount.stats().misses;

  // 3. The commands.
  const sh = (cmd) => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
    return [Number(process.hrtime.bigint() - t0) / 1e6, r.stdout.trim()];
  };
  const drop = () => sh('sync; echo 3 > /proc/sys/vm/drop_caches');
  const median = (a) => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)];
  const rows = [];
  for (const [label, dir] of [
    ['local ext4', src],
    ['strata-fuse', mnt],
  ]) {
    const res = { findCold: [], findHot: [], readCold: [], readHot: [] };
    for (let i = 0; i < RUNS; i++) {
      drop();
      const [fc, n] = sh(`find ${dir} | wc -l`);
      const [fh] = sh(`find ${dir} | wc -l`);
      drop();
      const [rc] = sh(`find ${dir} -type f -print0 | xargs -0 cat > /dev/null`);
      const [rh] = sh(`find ${dir} -type f -print0 | xargs -0 cat > /dev/null`);
      if (Number(n) !== FILES + DIRS + 1) throw new Error(`find saw ${n} entries in ${dir}`);
      res.findCold.push(fc);
      res.findHot.push(fh);
      res.readCold.push(rc);
      res.readHot.push(rh);
    }
    rows.push([label, ...Object.values(res).map(median)]);
  }
  if (mount.stats().misses !== missesBefore) throw new Error('a read missed the warm cache');

  // 4. The lazy path itself: a fresh mount with an empty chunk cache, every file fetched on read.
  const cold = [];
  for (let i = 0; i < RUNS; i++) {
    const mp = path.join(work, `cold${i}`);
    fs.mkdirSync(mp);
    const m2 = await mountLazy({ store: strata.store, layers: manifest.layers, tocs, mountpoint: mp, runDir: path.join(work, 'run'), cacheDir: path.join(work, `cache-cold${i}`) });
    try {
      drop();
      const t0 = performance.now();
      // Async: the fetcher runs in this process and must keep answering while the shell reads.
      await new Promise((resolve, reject) =>
        spawn('bash', ['-c', `find ${mp} -type f -print0 | xargs -0 cat > /dev/null`], { stdio: 'inherit' }).on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`exit ${c}`)))),
      );
      cold.push(performance.now() - t0);
      const st = m2.stats();
      if (i === 0) console.log(`empty cache: ${st.gets} GETs, ${(st.bytesFetched / 1048576).toFixed(1)} MiB fetched, ${st.chunksFetched} chunks`);
    } finally {
      await m2.unmount();
    }
  }
  rows.push(['strata-fuse, empty chunk cache', NaN, NaN, median(cold), NaN]);
  console.log(`\nmedian of ${RUNS} runs, ms          find cold   find hot   read-all cold   read-all hot`);
  for (const [label, ...v] of rows) console.log(`${label.padEnd(34)} ${v.map((n, i) => (Number.isNaN(n) ? '-' : n.toFixed(0)).padStart([9, 10, 15, 14][i])).join(' ')}`);
  console.log(`(${os.cpus().length} cores, ${os.cpus()[0].model}, kernel ${os.release()})`);
} finally {
  await mount?.unmount();
  fs.rmSync(work, { recursive: true, force: true });
}
