#!/usr/bin/env node
// strata against what sandboxes use today, side by side in one run (docs/benchmarks.md).
//
//   node test/bench/run.mjs [--quick] [--sizes small,medium,large] [--profiles local,r2]
//                           [--runs N] [--phases backup,restore,steady] [--contenders ID,...]
//                           [--work DIR] [--out FILE.md] [--no-doc] [--save RESULTS.json]
//                           [--merge RESULTS.json,...] [--backup-runs N] [--steady-runs N]
//
// Needs root (drop_caches, mounts), /dev/fuse, dist/ (npx tsc -p tsconfig.json) and the Debian
// packages squashfs-tools squashfuse fuse-overlayfs zstd (make bench-deps). Default: small and
// medium, both profiles, 3 runs, written to docs/benchmarks.md, docs/benchmarks-restore.svg and
// test/bench/results.json. --quick: small only, both profiles, 3 runs, written under the work
// directory (the committed doc is left alone) and printed.
import { existsSync, readFileSync } from 'node:fs';
import { appendFile, mkdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { arch, cpus, release, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { squashfsBackup, tarBackup, strataBackup, squashfsRestore, squashfuseLl, tarRestore, strataRestore, loadStrata } from './contenders.mjs';
import { GENERATOR_VERSION, parseSize, plan, write } from './gen.mjs';
import { mergeResults, writeReport } from './report.mjs';
import { dropCaches, deletePrefix, loadavg, now, prober, q, run, sh, shaperCall, startServer } from './util.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const BUCKET = 'bench';

// ---- arguments ----------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const flag = (name) => argv.includes(name);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const quick = flag('--quick');
const sizes = opt('--sizes', quick ? 'small' : 'small,medium,large').split(',').map(parseSize);
const profiles = opt('--profiles', 'local,r2').split(',');
const runs = Number(opt('--runs', '3'));
// --quick keeps 3 restore runs but runs the backup and steady-state figures once, to stay under 3 minutes.
const backupRuns = Number(opt('--backup-runs', quick ? '1' : String(runs)));
const steadyRuns = Number(opt('--steady-runs', quick ? '1' : String(runs)));
const phases = new Set(opt('--phases', 'backup,restore,steady').split(','));
const only = opt('--contenders') ? new Set(opt('--contenders').split(',')) : undefined;
const workRoot = resolve(opt('--work', '/var/tmp/strata-bench'));
const writeDoc = !flag('--no-doc') && !quick;
const outMd = resolve(opt('--out', writeDoc ? join(repo, 'docs', 'benchmarks.md') : join(workRoot, 'report.md')));
const command = `node test/bench/run.mjs ${argv.join(' ')}`.trim();
if (phases.has('restore') || phases.has('steady')) phases.add('backup'); // restores need artifacts
// The large workspace (~2 GB, 100k files) takes most of a run: it gets --large-runs (default 1)
// of each figure, the other sizes their full count.
const largeRuns = Number(opt('--large-runs', '1'));
if (!(runs >= 1 && backupRuns >= 1 && steadyRuns >= 1 && largeRuns >= 1)) throw new Error('--runs, --backup-runs, --steady-runs and --large-runs must be at least 1');
const runsFor = (sizeName, n) => (sizeName === 'large' ? Math.min(n, largeRuns) : n);

const log = (...a) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...a);

// ---- preflight -----------------------------------------------------------------------------------

async function preflight() {
  const problems = [];
  if (process.getuid?.() !== 0) problems.push('run as root (drop_caches, mounts)');
  if (!existsSync('/dev/fuse')) problems.push('/dev/fuse is missing');
  if (!existsSync(join(repo, 'dist', 'index.js'))) problems.push('dist/ is not built: npx tsc -p tsconfig.json (or make build)');
  for (const tool of ['mksquashfs', 'squashfuse', 'squashfuse_ll', 'fuse-overlayfs', 'zstd', 'tar']) {
    const r = await run('sh', ['-c', `command -v ${tool}`], { allowFail: true });
    if (r.code !== 0) problems.push(`${tool} is missing: make bench-deps (apt-get install squashfs-tools squashfuse fuse-overlayfs zstd)`);
  }
  if (problems.length) {
    console.error('bench: cannot run:\n  ' + problems.join('\n  '));
    process.exit(1);
  }
}

/** Unmount anything a crashed run left under dir, deepest first. */
async function unmountUnder(dir) {
  const mi = await readFile('/proc/self/mountinfo', 'utf8');
  const mps = mi
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m) => m && (m === dir || m.startsWith(dir + '/')))
    .sort((a, b) => b.length - a.length);
  for (const m of mps) await run('umount', ['-l', m], { allowFail: true });
}

async function machine() {
  const osr = await readFile('/etc/os-release', 'utf8').catch(() => '');
  const ver = async (cmd) => (await sh(cmd, { allowFail: true })).stdout.trim().split('\n')[0];
  const disk = (await sh(`df -hT ${q(workRoot)} | tail -1`, { allowFail: true })).stdout.trim().split(/\s+/);
  return {
    cpu: `${cpus()[0]?.model ?? '?'} × ${cpus().length}`,
    memGiB: Math.round(totalmem() / 2 ** 30),
    kernel: `${release()} ${arch()}`,
    os: /PRETTY_NAME="([^"]+)"/.exec(osr)?.[1] ?? '?',
    node: process.version,
    disk: `${disk[1] ?? '?'} on ${disk[0] ?? '?'} (${workRoot})`,
    tools: {
      mksquashfs: await ver('mksquashfs -version 2>&1 | head -1'),
      squashfuse: await ver("dpkg-query -W -f='${Version}' squashfuse"),
      'fuse-overlayfs': await ver("dpkg-query -W -f='${Version}' fuse-overlayfs"),
      zstd: await ver("dpkg-query -W -f='${Version}' zstd"),
      tar: await ver("dpkg-query -W -f='${Version}' tar"),
      s3rver: JSON.parse(await readFile(join(repo, 'node_modules', 's3rver', 'package.json'), 'utf8')).version,
    },
  };
}

// ---- cold runs -----------------------------------------------------------------------------------

let toolFiles = [];
/** The binaries and libraries the contenders run, so that "cold" means the data, not the programs. */
async function findToolFiles() {
  const bins = ['ls', 'cat', 'find', 'xargs', 'zstd', 'tar', 'bash', 'mksquashfs', 'squashfuse', 'squashfuse_ll', 'fuse-overlayfs', 'umount', 'mount', 'sync'];
  const paths = [];
  for (const b of bins) {
    const r = await run('sh', ['-c', `command -v ${b}`], { allowFail: true });
    if (r.code === 0) paths.push(r.stdout.trim());
  }
  paths.push(process.execPath);
  const fuse = join(repo, 'build', 'strata-fuse');
  if (existsSync(fuse)) paths.push(fuse);
  const libs = new Set();
  for (const p of paths) {
    const r = await run('ldd', [p], { allowFail: true });
    for (const m of r.stdout.matchAll(/=> (\/\S+)/g)) libs.add(m[1]);
  }
  toolFiles = [...paths, ...libs];
}

/** Drop the page cache; then read back the store's objects (the server is not this host) and the tools. */
async function coldStart(warmPaths = []) {
  await dropCaches();
  const files = [...toolFiles, ...warmPaths.filter((p) => existsSync(p))];
  await sh(`cat ${files.map(q).join(' ')} > /dev/null; ${warmPaths.length ? `find ${warmPaths.map(q).join(' ')} -type f -print0 2>/dev/null | xargs -0 -r cat > /dev/null` : 'true'}`);
  await run(process.execPath, ['-e', '0']);
}

// ---- the store -------------------------------------------------------------------------------------

let s3dir;
let shaper;
let s3srv;
const stats = async () => (await shaperCall(shaper.port, 'stats')).stats;
// CPU ms the emulated store (S3 server + shaper) has used: on this 2-core host it competes with
// whatever runs at the same time as a transfer (BENCH_DEBUG shows it per restore).
const serverCpuMs = () =>
  [s3srv, shaper].reduce((ms, p) => {
    try {
      const f = readFileSync(`/proc/${p.child.pid}/stat`, 'utf8').split(') ')[1].split(' ');
      return ms + ((Number(f[11]) + Number(f[12])) * 1000) / 100;
    } catch {
      return ms;
    }
  }, 0);
const delta = (a, b) => ({ requests: b.requests - a.requests, bytesIn: b.bytesIn - a.bytesIn, bytesOut: b.bytesOut - a.bytesOut });
const setProfile = (p) => shaperCall(shaper.port, `profile/${p}`, 'POST');
/** Where s3rver keeps the objects under a prefix. */
const objectDir = (prefix) => join(s3dir, BUCKET, prefix);

// ---- trees -------------------------------------------------------------------------------------------

async function ensureTree(spec) {
  const dir = join(workRoot, 'trees', `${spec.name.replace(/[^\w.-]/g, '_')}-v${GENERATOR_VERSION}`);
  const p = plan(spec);
  if (existsSync(join(dir, '.bench-complete'))) return { dir, plan: p };
  await rm(dir, { recursive: true, force: true });
  await rm(dir + '.tmp', { recursive: true, force: true });
  log(`generating ${spec.name} (${spec.files} files, ${(spec.bytes / 1e6).toFixed(0)} MB) ...`);
  const t = now();
  write(p, dir + '.tmp');
  await rename(dir + '.tmp', dir);
  await writeFile(join(dir, '.bench-complete'), JSON.stringify(p.stats));
  log(`  generated in ${((now() - t) / 1000).toFixed(1)} s`);
  return { dir, plan: p };
}

/** `npm install` again: node_modules deleted, then the same packages written anew (new inodes). */
async function reinstall(from, dir) {
  await sh(`rm -rf ${q(join(dir, 'node_modules'))} && cp -a ${q(join(from, 'node_modules'))} ${q(join(dir, 'node_modules'))}`);
}

const rotate = (xs, k) => xs.map((_, i) => xs[(i + k) % xs.length]);

// ---- phase 1: backups ---------------------------------------------------------------------------------

async function runBackups(ctx, lib, tree, sizeName, profile) {
  // Every method runs whatever --contenders says: the restores need their artifacts.
  const methods = [squashfsBackup(ctx), tarBackup(ctx), strataBackup(ctx, lib)];
  const out = Object.fromEntries(methods.map((m) => [m.id, { label: m.label, full: [], edit: [], regen: [] }]));
  const ws = join(ctx.tmp, 'ws');
  const editRel = tree.plan.entries.find((e) => e.type === 'file' && e.path.startsWith('src/') && e.path.endsWith('.js')).path;
  const editPath = join(tree.dir, editRel);
  const original = await readFile(editPath);
  const originalStat = await stat(editPath);
  let keep;
  const nRuns = runsFor(sizeName, backupRuns);
  for (let r = 0; r < nRuns; r++) {
    const order = rotate(methods, r);
    const arts = {};
    const tagOf = (m, kind) => `${sizeName}-${profile}-r${r}-${m.id}${m.id === 'strata' ? '' : `-${kind}`}`;
    const trees = { src: tree.dir, ws };
    const measure = async (m, kind) => {
      await coldStart();
      const s0 = await stats();
      const t0 = now();
      const art = await m.backup(kind === 'full' ? trees.src : m.target(trees), tagOf(m, kind), kind);
      const ms = now() - t0;
      const d = delta(s0, await stats());
      const index = art.measureIndex ? await art.measureIndex() : undefined;
      delete art.measureIndex;
      out[m.id][kind].push({ ms, bytesUp: d.bytesIn, requests: d.requests, artifactBytes: art.size, ...(art.trace ? { trace: art.trace } : {}), ...(index ? { index } : {}) });
      log(`  backup ${kind.padEnd(5)} ${m.id.padEnd(8)} run ${r + 1}: ${(ms / 1000).toFixed(2)} s, ${(d.bytesIn / 1e6).toFixed(1)} MB up, ${d.requests} requests`);
      return art;
    };
    for (const m of order) arts[m.id] = await measure(m, 'full');
    const strata = methods.find((m) => m.id === 'strata');
    await strata.prepareWorkspace(arts.strata, ws);
    try {
      // One file edited (the same edit in the plain tree and in the workspace).
      const edit = `\n// edited in run ${r + 1}\n`;
      await appendFile(editPath, edit);
      await appendFile(join(ws, editRel), edit);
      for (const m of order) await measure(m, 'edit');
      // node_modules deleted and installed again (the same bytes, new inodes) in the workspace.
      // SDK 0.x and 1.0 pack the whole tree whatever changed, and the reinstalled tree holds the
      // same bytes: they back up the plain tree again (cold, like every run).
      await reinstall(tree.dir, ws);
      for (const m of order) await measure(m, 'regen');
    } finally {
      await writeFile(editPath, original);
      await utimes(editPath, originalStat.atime, originalStat.mtime);
      await strata.teardown(ws);
    }
    // Keep the last run's full backups for the restores; drop everything else.
    for (const m of methods) {
      for (const kind of ['edit', 'regen']) if (m.id !== 'strata') await deletePrefix(ctx.direct, BUCKET, tagOf(m, kind) + '/');
    }
    if (r < nRuns - 1) {
      for (const m of methods) await deletePrefix(ctx.direct, BUCKET, tagOf(m, 'full') + '/');
    } else {
      // strata's prefix also holds the incremental backups: keep only the full backup's objects.
      const s = arts.strata;
      await deleteExcept(ctx, s.tag + '/', [`manifests/${s.handle.id}.json`, ...(await layerKeys(lib, s))]);
      keep = Object.fromEntries(methods.map((m) => [m.id, { ...arts[m.id], prefix: m.id === 'strata' ? arts[m.id].tag : tagOf(m, 'full') }]));
    }
  }
  return { results: out, artifacts: keep };
}

async function layerKeys(lib, art) {
  const store = new lib.S3Store(art.url, { endpoint: ctxGlobal.direct, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
  try {
    const info = await new lib.Strata({ home: join(ctxGlobal.tmp, 'home-info'), store }).getBackup(art.handle.id);
    return lib.blobsOf(info); // the layers and the restore index
  } finally {
    store.close();
  }
}

async function deleteExcept(ctx, prefix, keepRel) {
  const { S3Client, ListObjectsV2Command, DeleteObjectCommand } = await import('@aws-sdk/client-s3');
  const c = new S3Client({ endpoint: ctx.direct, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
  try {
    const l = await c.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }));
    for (const o of l.Contents ?? []) {
      if (!keepRel.includes(o.Key.slice(prefix.length))) await c.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: o.Key }));
    }
  } finally {
    c.destroy();
  }
}

// ---- phase 2: restores --------------------------------------------------------------------------------

function restoreContenders(ctx, lib) {
  const all = [
    squashfsRestore(ctx),
    tarRestore(ctx),
    strataRestore(ctx, lib, { mode: 'extract' }),
    strataRestore(ctx, lib, { mode: 'extract', warm: true }),
    strataRestore(ctx, lib, { mode: 'lazy' }),
    strataRestore(ctx, lib, { mode: 'lazy', daemonUp: true }),
    strataRestore(ctx, lib, { mode: 'lazy', hydrate: false }),
    strataRestore(ctx, lib, { mode: 'lazy', warm: true }),
    strataRestore(ctx, lib, { mode: 'lazy', recorded: true }),
  ];
  // Beyond the five contenders: an extract-mode fork, lazy without background hydration (what the
  // workload alone fetches) and lazy from a backup with recorded first reads. --quick leaves
  // those out (time).
  const extras = new Set(['strata-extract-fork', 'strata-lazy-nohydrate', 'strata-lazy-recorded']);
  return all.filter((c) => (only ? only.has(c.id) : !(quick && extras.has(c.id))));
}

async function probeAll(ctx, contenders, arts) {
  // Lazy mode is the one a build may lack: one probe decides for every lazy contender.
  const unavailable = {};
  const lazy = contenders.filter((c) => c.lazy && c.probe);
  if (!lazy.length) return unavailable;
  let why = null;
  try {
    why = await lazy[0].probe(arts[lazy[0].method], join(ctx.tmp, 'probe'));
  } catch (err) {
    why = `failed: ${err.message.split('\n')[0]}`;
  }
  if (why) {
    for (const c of lazy) unavailable[c.id] = why;
    log(`  lazy mode: ${why}`);
  }
  return unavailable;
}

async function runRestores(ctx, lib, tree, arts, unavailable, sizeName) {
  const contenders = restoreContenders(ctx, lib);
  const out = {};
  for (const c of contenders) out[c.id] = { label: c.label, short: c.short, runs: [], ...(unavailable[c.id] ? { unavailable: unavailable[c.id] } : {}) };
  const live = contenders.filter((c) => !unavailable[c.id]);
  for (const c of live) {
    await c.setup?.(arts[c.method]);
    const d = c.describe?.();
    if (d) out[c.id].setup = d;
  }
  const expect = `loaded ${tree.plan.workload.appDeps} packages`;
  try {
    for (let r = 0; r < runsFor(sizeName, runs); r++) {
      for (const c of rotate(live, r)) {
        const target = join(ctx.tmp, `restore-${c.id}`);
        await rm(target, { recursive: true, force: true });
        await c.before?.(arts[c.method], target); // untimed: e.g. a host whose daemon already runs
        const tcs = now();
        await coldStart([objectDir(arts[c.method].prefix)]);
        if (process.env.BENCH_DEBUG) log(`    cold start ${(now() - tcs).toFixed(0)} ms`);
        const probes = prober();
        await probes.probe('true'); // started before the clock, as the sandbox's shell would be
        const s0 = await stats();
        const cpu0 = serverCpuMs();
        const t0 = now();
        const h = await c.restore(arts[c.method], target);
        const returned = now() - t0;
        try {
          await probes.probe(`ls ${q(target)}`);
          const ready = now() - t0;
          await probes.probe(`cat ${q(join(target, 'package.json'))}`);
          const first = now() - t0;
          const w = await run(process.execPath, ['app.js'], { cwd: target });
          const work = now() - t0;
          const cpuWork = serverCpuMs() - cpu0;
          if (!w.stdout.includes(expect)) throw new Error(`${c.id}: the workload printed ${JSON.stringify(w.stdout)}, expected "${expect}"`);
          const s1 = await stats();
          let full = ready;
          let hydratedBy = 'local at return';
          let s2 = s1;
          if (h.local) {
            // Watched since the restore returned: the moment everything was cached, even if
            // that was before the workload ended.
            const l = await h.local;
            hydratedBy = l.via;
            full = Math.max(l.at - t0, returned);
            s2 = await stats();
          }
          const dw = delta(s0, s1);
          const df = delta(s0, s2);
          const rec = { returned, ready, first, work, workOnly: work - first, workBytes: dw.bytesOut, workRequests: dw.requests, full, fullBytes: df.bytesOut, fullRequests: df.requests, hydratedBy };
          if (h.neverLocal) {
            rec.full = rec.fullBytes = rec.fullRequests = undefined;
            rec.hydratedBy = 'not measured (no background hydration)';
          }
          if (h.result?.stats) rec.strataStats = h.result.stats;
          if (h.trace) rec.trace = h.trace;
          if (process.env.BENCH_DEBUG) log(`    ${c.id} epoch ms: start ${Math.round(performance.timeOrigin + t0)}, ready +${ready.toFixed(0)}, first read +${first.toFixed(0)}, workload done +${work.toFixed(0)}; store CPU by then ${cpuWork.toFixed(0)} ms`);
          out[c.id].runs.push(rec);
          log(`  restore ${c.id.padEnd(21)} run ${r + 1}: ready ${(ready / 1000).toFixed(2)} s, workload done ${(work / 1000).toFixed(2)} s (${(dw.bytesOut / 1e6).toFixed(1)} MB, ${dw.requests} requests), fully local ${rec.full === undefined ? '–' : `${(full / 1000).toFixed(2)} s`}`);
        } finally {
          probes.close();
          const tc = now();
          await h.cleanup();
          if (process.env.BENCH_DEBUG) log(`    cleanup ${c.id} ${(now() - tc).toFixed(0)} ms`);
        }
      }
    }
  } finally {
    for (const c of live) await c.teardown?.();
  }
  return out;
}

// ---- phase 3: steady state -------------------------------------------------------------------------

async function runSteady(ctx, lib, tree, arts, unavailable, sizeName) {
  const contenders = [tarRestore(ctx), squashfuseLl(ctx), squashfsRestore(ctx), strataRestore(ctx, lib, { mode: 'extract' }), strataRestore(ctx, lib, { mode: 'lazy' })].filter(
    (c) => !only || only.has(c.id) || c.id === 'squashfuse_ll' || c.id === 'tarzstd',
  );
  const out = {};
  const mounted = [];
  try {
    for (const c of contenders) {
      out[c.id] = { label: c.fs, contender: c.short, runs: [] };
      if (unavailable[c.id]) {
        out[c.id].unavailable = unavailable[c.id];
        continue;
      }
      const target = join(ctx.tmp, `steady-${c.id}`);
      await rm(target, { recursive: true, force: true });
      const h = await c.restore(arts[c.method], target);
      mounted.push(h);
      if (h.local) await h.local;
      // The restored tree must be the backed-up tree, every byte (diff -r). --quick skips this
      // (time); its restores ran the workload, which reads the code through every contender.
      if (!quick) {
        const d = await run('diff', ['-rq', '--no-dereference', tree.dir, target], { allowFail: true });
        const diffs = d.stdout.split('\n').filter((l) => l && !l.includes('.bench-complete'));
        if (diffs.length) throw new Error(`${c.id}: the restored tree differs from the source:\n${diffs.slice(0, 10).join('\n')}`);
      }
      out[c.id].target = target;
    }
    const live = contenders.filter((c) => out[c.id].target);
    const timed = async (script) => {
      const t = now();
      await sh(script);
      return now() - t;
    };
    for (let r = 0; r < runsFor(sizeName, steadyRuns); r++) {
      for (const c of rotate(live, r)) {
        const t = q(out[c.id].target);
        await coldStart();
        const findCold = await timed(`find ${t} > /dev/null`);
        const findWarm = await timed(`find ${t} > /dev/null`);
        await coldStart();
        const readCold = await timed(`find ${t} -type f -print0 | xargs -0 -r cat > /dev/null`);
        const readWarm = await timed(`find ${t} -type f -print0 | xargs -0 -r cat > /dev/null`);
        out[c.id].runs.push({ findCold, findWarm, readCold, readWarm });
        log(`  steady ${c.id.padEnd(15)} run ${r + 1}: find ${findCold.toFixed(0)}/${findWarm.toFixed(0)} ms, read all ${readCold.toFixed(0)}/${readWarm.toFixed(0)} ms (cold/warm)`);
      }
    }
  } finally {
    for (const h of mounted) await h.cleanup();
    for (const c of Object.values(out)) delete c.target;
  }
  return out;
}

// ---- main ---------------------------------------------------------------------------------------------

let ctxGlobal;

async function main() {
  await preflight();
  const started = new Date();
  const tStart = now();
  const loadBefore = await loadavg();
  await mkdir(workRoot, { recursive: true });
  const tmp = join(workRoot, 'run');
  await unmountUnder(tmp);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  s3dir = join(workRoot, 's3');
  await rm(s3dir, { recursive: true, force: true });
  await mkdir(s3dir, { recursive: true });
  await findToolFiles();

  s3srv = await startServer(join(here, 's3server.mjs'), [s3dir, BUCKET]);
  shaper = await startServer(join(here, 'shaper.mjs'), [String(s3srv.port), 'local']);
  const ctx = { endpoint: `http://127.0.0.1:${shaper.port}`, direct: `http://127.0.0.1:${s3srv.port}`, bucket: BUCKET, tmp };
  // strata's restore daemon (lazy mode) opens the store from its URL and the environment.
  Object.assign(process.env, {
    STRATA_S3_ENDPOINT: ctx.endpoint,
    STRATA_S3_FORCE_PATH_STYLE: '1',
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
  });
  delete process.env.AWS_PROFILE;
  delete process.env.STRATA_STORE;
  delete process.env.STRATA_HOME;
  ctxGlobal = ctx;
  const lib = await loadStrata(repo);
  // The 1-minute load average every 15 s: other work on the machine shows up here.
  const loadSamples = [];
  const sampler = setInterval(() => void loadavg().then((l) => loadSamples.push([Math.round((now() - tStart) / 1000), l[0]])), 15_000);
  sampler.unref();
  const results = { meta: { started: started.toISOString(), command, quick, runs, backupRuns, steadyRuns, largeRuns, profiles, sizes: sizes.map((s) => s.name), machine: await machine(), loadBefore }, sizes: {} };
  log(`work directory ${workRoot}; load ${loadBefore.join(' ')}`);
  try {
    for (const spec of sizes) {
      const tree = await ensureTree(spec);
      const du = await sh(`du -sb ${q(tree.dir)} | cut -f1`);
      const sz = (results.sizes[spec.name] = {
        spec,
        stats: { ...tree.plan.stats, diskBytes: Number(du.stdout.trim()) },
        workload: { files: tree.plan.workload.files.length, bytes: tree.plan.workload.bytes, packages: tree.plan.workload.packages },
        profiles: {},
      });
      let unavailable;
      for (const [pi, profile] of profiles.entries()) {
        log(`${spec.name} / ${profile} (${((now() - tStart) / 1000).toFixed(0)} s in)`);
        await setProfile(profile);
        const pr = (sz.profiles[profile] = {});
        const b = await runBackups(ctx, lib, tree, spec.name, profile);
        pr.backup = b.results;
        if (phases.has('restore') || phases.has('steady')) {
          unavailable ??= await probeAll(ctx, restoreContenders(ctx, lib), b.artifacts);
        }
        log(`  restores (${((now() - tStart) / 1000).toFixed(0)} s in)`);
        if (phases.has('restore')) pr.restore = await runRestores(ctx, lib, tree, b.artifacts, unavailable, spec.name);
        if (pi === 0 && phases.has('steady')) {
          // Everything is local once restored: the link does not matter here.
          log(`  steady state (${((now() - tStart) / 1000).toFixed(0)} s in)`);
          await setProfile('local');
          sz.steady = await runSteady(ctx, lib, tree, b.artifacts, unavailable, spec.name);
          await setProfile(profile);
        }
        for (const a of Object.values(b.artifacts)) await deletePrefix(ctx.direct, BUCKET, a.prefix + '/');
      }
    }
  } finally {
    shaper.child.kill('SIGTERM');
    s3srv.child.kill('SIGTERM');
    await unmountUnder(tmp);
  }
  clearInterval(sampler);
  results.meta.loadAfter = await loadavg();
  const loads = loadSamples.map((x) => x[1]);
  results.meta.loadDuring = loads.length ? { mean: loads.reduce((a, b) => a + b, 0) / loads.length, max: Math.max(...loads), samples: loadSamples } : undefined;
  results.meta.minutes = (now() - tStart) / 60000;
  const json = JSON.stringify(results, null, 1);
  await writeFile(join(workRoot, `results-${started.toISOString().replace(/[:.]/g, '-')}.json`), json);
  const save = opt('--save', writeDoc ? join(here, 'results.json') : undefined);
  if (save) await writeFile(resolve(save), json);
  // --merge FILE,...: earlier results (e.g. the large workspace, run on its own) in the same report.
  const merged = opt('--merge') ? mergeResults([results, ...(await Promise.all(opt('--merge').split(',').map(async (f) => JSON.parse(await readFile(resolve(f), 'utf8')))))]) : results;
  const md = await writeReport(merged, outMd);
  if (!writeDoc) process.stdout.write(md);
  log(`done in ${results.meta.minutes.toFixed(1)} min; report: ${outMd}`);
}

main().catch(async (err) => {
  console.error(err);
  shaper?.child.kill('SIGTERM');
  s3srv?.child.kill('SIGTERM');
  process.exit(1);
});
