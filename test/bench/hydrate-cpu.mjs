#!/usr/bin/env node
// CPU the lazy data plane spends per MB hydrated, before (the TypeScript fetcher and its chunk
// cache: STRATA_DIRECT=0) and after (strata-fuse's own GETs into a blob mirror), on one tree
// backed up to s3rver on loopback (no shaping: the CPU, not the link, is measured).
//
//   node test/bench/hydrate-cpu.mjs [TREE_DIR] [--runs N]
//
// For each run: a fresh STRATA_HOME, a lazy restore with hydration on, then status polled until
// every chunk is local. CPU = user + system time of the restore daemon and of strata-fuse, from
// /proc/<pid>/stat, between the restore returning and the workspace being fully local.
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CREDENTIALS, startServer } from './util.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const args = process.argv.slice(2);
const runsAt = args.indexOf('--runs');
const runs = runsAt >= 0 ? Number(args[runsAt + 1]) : 3;
const tree = resolve(args.find((a, i) => !a.startsWith('--') && args[i - 1] !== '--runs') ?? '/var/tmp/strata-bench/trees/medium-v3');
const { Strata } = await import(join(repo, 'dist', 'index.js'));
const { S3Store } = await import(join(repo, 'dist', 'store', 's3.js'));

const TICK = 100; // clock ticks per second (getconf CLK_TCK on Linux x86-64)
const cpuOf = (pid) => {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(f[11]) + Number(f[12])) / TICK) * 1000; // utime + stime, ms
  } catch {
    return 0;
  }
};
const pidsOf = async (home) => {
  const out = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    let cmd = '';
    try {
      cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ');
    } catch {
      continue;
    }
    if ((cmd.includes('daemon.js') && cmd.includes(home)) || (cmd.includes('strata-fuse') && cmd.includes(home))) out.push(Number(p));
  }
  return out;
};

const work = await mkdtemp(join(tmpdir(), 'strata-hcpu-'));
const srv = await startServer(join(here, 's3server.mjs'), [join(work, 's3'), 'bench']);
const endpoint = `http://127.0.0.1:${srv.port}`;
process.env.STRATA_S3_ENDPOINT = endpoint;
process.env.STRATA_S3_FORCE_PATH_STYLE = '1';
process.env.AWS_ACCESS_KEY_ID = CREDENTIALS.accessKeyId;
process.env.AWS_SECRET_ACCESS_KEY = CREDENTIALS.secretAccessKey;
process.env.AWS_REGION = 'us-east-1';
const url = 's3://bench/hcpu';
const store = () => new S3Store(url, { endpoint, forcePathStyle: true, region: 'us-east-1', credentials: CREDENTIALS });
try {
  const backup = new Strata({ home: join(work, 'home-backup'), store: store() });
  const h = await backup.createBackup({ dir: tree });
  const info = await backup.getBackup(h.id);
  const mb = info.layers.reduce((n, l) => n + l.size, 0) / 1e6;
  console.log(`tree ${tree}: ${info.layers[0].entries} entries, layer ${mb.toFixed(1)} MB`);
  for (const [label, direct] of [
    ['before: TypeScript fetcher + chunk cache (STRATA_DIRECT=0)', '0'],
    ['after: strata-fuse GETs into a blob mirror', '1'],
  ]) {
    const cpu = [];
    const wall = [];
    for (let r = 0; r < runs; r++) {
      process.env.STRATA_DIRECT = direct;
      const home = join(work, `home-${direct}-${r}`);
      const ws = join(work, `ws-${direct}-${r}`);
      const s = new Strata({ home, store: store(), mode: 'lazy', hydrate: true });
      await s.restoreBackup(h, { dir: ws });
      const t0 = performance.now();
      const pids = await pidsOf(home);
      const c0 = pids.reduce((n, p) => n + cpuOf(p), 0);
      let st = (await s.status(ws))[0].lazy;
      while (st.cached < st.chunks || st.chunks === 0) {
        await new Promise((res) => setTimeout(res, 200)); // few status calls: they cost the daemon CPU too
        st = (await s.status(ws))[0].lazy;
      }
      const c1 = pids.reduce((n, p) => n + cpuOf(p), 0);
      wall.push(performance.now() - t0);
      cpu.push(c1 - c0);
      await s.unmount(ws, { discard: true });
      await rm(home, { recursive: true, force: true, maxRetries: 5 });
    }
    const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    console.log(`${label}: CPU ${(med(cpu) / mb).toFixed(1)} ms/MB (${cpu.map((c) => c.toFixed(0)).join(', ')} ms), hydrated in ${wall.map((w) => (w / 1000).toFixed(2)).join(', ')} s = ${(mb / (med(wall) / 1000)).toFixed(0)} MB/s`);
  }
} finally {
  srv.child.kill('SIGTERM');
  await rm(work, { recursive: true, force: true, maxRetries: 5 }).catch(() => undefined);
}
