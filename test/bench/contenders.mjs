// The contenders of the benchmark, pluggable: a backup method makes an artifact in the store and
// says which directory its incremental backups read; a restore contender turns an artifact into a
// directory whose root answers `ls`. The harness (run.mjs) times them; nothing here measures.
//
// Every store transfer goes through the shaping proxy (ctx.endpoint), each operation with a
// fresh S3 client (no warm sockets carried from one run to the next).
import { spawn } from 'node:child_process';
import { mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createReadStream, existsSync } from 'node:fs';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { CREDENTIALS, q, run, s3Client, sh } from './util.mjs';

const MiB = 1024 * 1024;

/** The compiled library, imported once the harness knows dist/ is built. */
export async function loadStrata(repo) {
  const lib = await import(join(repo, 'dist', 'index.js'));
  const { S3Store } = await import(join(repo, 'dist', 'store', 's3.js'));
  const index = await import(join(repo, 'dist', 'format', 'restore-index.js'));
  const { buildView } = await import(join(repo, 'dist', 'format', 'view.js'));
  const { fetchToc } = await import(join(repo, 'dist', 'store', 'blobs.js'));
  return { Strata: lib.Strata, S3Store, blobsOf: lib.blobsOf, encodeIndex: index.encodeIndex, packIndex: index.packIndex, buildView, fetchToc };
}

async function upload(ctx, key, body) {
  const client = s3Client(ctx.endpoint);
  try {
    // Same part size and parallelism as strata's S3Store (16 MiB parts, 4 in flight).
    await new Upload({ client, params: { Bucket: ctx.bucket, Key: key, Body: body }, partSize: 16 * MiB, queueSize: 4 }).done();
  } finally {
    client.destroy();
  }
}

/** Wait for a child; reject with its stderr on failure. */
function exited(child, what) {
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (b) => (err += b));
    child.on('error', reject);
    child.on('close', (code, sig) => (code === 0 ? resolve() : reject(new Error(`${what} exited ${sig ?? code}: ${err.trim().slice(-1000)}`))));
  });
}

/**
 * After its last workspace is unmounted, a home's restore daemon exits on its own after a grace
 * period; the bench is done with the home, so it asks the daemon (started on its behalf) to stop
 * now (SIGTERM: a clean shutdown) and waits for it before the home is removed.
 */
async function daemonGone(home) {
  const pid = Number(await readFile(join(home, 'run', 'daemon.pid'), 'utf8').catch(() => '0'));
  if (!(pid > 0)) return;
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (alive()) process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 400 && alive(); i++) await new Promise((r) => setTimeout(r, 25));
  if (alive()) process.kill(pid, 'SIGKILL');
}

async function rmHome(home) {
  await daemonGone(home);
  await rm(home, { recursive: true, force: true, maxRetries: 5 });
}

async function unmountQuiet(dir) {
  await run('umount', [dir], { allowFail: true });
  await run('umount', ['-l', dir], { allowFail: true });
}

/**
 * A store that records when each of its calls starts and ends (ms since mark()), so a strata
 * backup or restore can be split into its phases (capture, upload; metadata, data, the rest).
 */
export function traced(store) {
  let t0 = performance.now();
  const events = [];
  const rec = (op, key, start) => {
    const e = { op, key: key.replace(/^blobs\/sha256\/(.{12}).*/, 'blob $1…').replace(/^manifests\//, 'manifest '), t: Math.round(start - t0), d: 0 };
    events.push(e);
    return () => (e.d = Math.round(performance.now() - start));
  };
  const wrap = {
    async get(key, range) {
      const done = rec('get', key, performance.now());
      const s = await store.get(key, range);
      s.once('end', done);
      s.once('error', done);
      return s;
    },
  };
  for (const op of ['putFile', 'putBytes', 'getBytes', 'head', 'touch']) {
    wrap[op] = async (key, ...rest) => {
      const done = rec(op, key, performance.now());
      try {
        return await store[op](key, ...rest);
      } finally {
        done();
      }
    };
  }
  const proxy = new Proxy(store, {
    get(target, prop) {
      if (Object.hasOwn(wrap, prop)) return wrap[prop];
      const v = target[prop];
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return {
    store: proxy,
    events,
    mark() {
      t0 = performance.now();
      events.length = 0;
    },
  };
}

// ---- backup methods -------------------------------------------------------------------------

/** Cloudflare Sandbox SDK 0.x: mksquashfs -comp lz4, upload the image. */
export function squashfsBackup(ctx) {
  return {
    id: 'squashfs',
    label: 'SDK 0.x: squashfs (lz4)',
    target: (trees) => trees.src,
    async backup(dir, tag) {
      const img = join(ctx.tmp, `${tag.replace(/\//g, '_')}.sqfs`);
      try {
        await run('mksquashfs', [dir, img, '-comp', 'lz4', '-noappend', '-quiet', '-no-progress']);
        const fh = await open(img);
        const size = (await fh.stat()).size;
        await fh.close();
        const key = `${tag}/image.sqfs`;
        await upload(ctx, key, createReadStream(img));
        return { key, size };
      } finally {
        await rm(img, { force: true });
      }
    },
  };
}

/** Cloudflare Sandbox SDK 1.0: tar + zstd, streamed into the upload. */
export function tarBackup(ctx) {
  return {
    id: 'tarzstd',
    label: 'SDK 1.0: tar + zstd',
    target: (trees) => trees.src,
    async backup(dir, tag) {
      const key = `${tag}/archive.tar.zst`;
      const child = spawn('bash', ['-o', 'pipefail', '-c', `tar -C ${q(dir)} -cf - . | zstd -3 -T0 -q -c`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let size = 0;
      child.stdout.on('data', (b) => (size += b.length));
      const done = exited(child, 'tar | zstd');
      await Promise.all([upload(ctx, key, child.stdout), done]);
      return { key, size };
    },
  };
}

/**
 * strata: a full backup of the plain tree; incremental backups from a workspace (an extract-mode
 * restore of the full backup), which is where the edit and the reinstall happen.
 */
export function strataBackup(ctx, lib) {
  const storeFor = (tag) =>
    traced(new lib.S3Store(`s3://${ctx.bucket}/${tag}`, { endpoint: ctx.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: CREDENTIALS }));
  let state;
  return {
    id: 'strata',
    label: 'strata',
    target: (trees) => trees.ws,
    async backup(dir, tag, kind) {
      if (kind === 'full') {
        const home = join(ctx.tmp, `home-${tag.replace(/\//g, '_')}`);
        await rm(home, { recursive: true, force: true });
        const t = storeFor(tag);
        const strata = new lib.Strata({ home, store: t.store, mode: 'extract' });
        state = { home, t, strata, tag };
      }
      try {
        state.t.mark();
        const handle = await state.strata.createBackup({ dir });
        const trace = [...state.t.events];
        const info = await state.strata.getBackup(handle.id);
        const top = info.layers[info.layers.length - 1];
        const art = { handle, tag, size: kind === 'full' ? info.size : top.size, layers: info.layers.length, url: state.t.store.url, trace };
        // Called by the harness after the timing, with the store still open.
        const store = state.t.store;
        if (kind === 'full' && info.index) art.measureIndex = async () => ({ ...(await indexBuildTime(lib, store, info)), rawSize: info.index.rawSize, size: info.index.size, inline: info.index.inline, entries: info.layers.reduce((n, l) => n + l.entries, 0) });
        return art;
      } finally {
        // Each measured operation starts with fresh sockets (the old store stays usable for measureIndex).
        const old = state.t.store;
        setTimeout(() => old.close(), 60_000).unref();
        state.t = storeFor(state.tag);
        state.strata = new lib.Strata({ home: state.home, store: state.t.store, mode: 'extract' });
      }
    },
    /** After the full backup (untimed): restore it as the workspace the incremental backups read. */
    async prepareWorkspace(artifact, ws) {
      await state.strata.restoreBackup(artifact.handle, { dir: ws, mode: 'extract' });
    },
    async teardown(ws) {
      if (!state) return;
      await state.strata.unmount(ws, { discard: true }).catch(() => unmountQuiet(ws));
      state.t.store.close();
      await rm(state.home, { recursive: true, force: true });
      state = undefined;
    },
  };
}

/**
 * What building a backup's restore index costs (untimed in the backup figures, measured here on
 * its own): the merged view from the TOC, the encoding, the compression. Median of 3.
 */
async function indexBuildTime(lib, store, info) {
  const tocs = await Promise.all(info.layers.map((l) => lib.fetchToc(store, l)));
  const times = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    const raw = lib.encodeIndex(lib.buildView(tocs), info.layers.map((l, k) => ({ digest: l.digest, prefetch: tocs[k]?.prefetch })));
    const t1 = performance.now();
    await lib.packIndex(raw);
    times.push({ encodeMs: t1 - t0, packMs: performance.now() - t1 });
  }
  times.sort((a, b) => a.encodeMs + a.packMs - (b.encodeMs + b.packMs));
  return times[1];
}

// ---- restore contenders -----------------------------------------------------------------------

/** Contender 1's download: 16 parallel ranged GETs of the whole image into a local file. */
async function rangedDownload(ctx, key, size, file, parallel = 16) {
  const client = s3Client(ctx.endpoint);
  const fh = await open(file, 'w');
  try {
    await fh.truncate(size);
    const part = Math.max(MiB, Math.ceil(size / parallel / MiB) * MiB);
    const ranges = [];
    for (let s = 0; s < size; s += part) ranges.push([s, Math.min(size, s + part)]);
    let next = 0;
    const worker = async () => {
      while (next < ranges.length) {
        const [s, e] = ranges[next++];
        const res = await client.send(new GetObjectCommand({ Bucket: ctx.bucket, Key: key, Range: `bytes=${s}-${e - 1}` }));
        let pos = s;
        for await (const b of res.Body) {
          await fh.write(b, 0, b.length, pos);
          pos += b.length;
        }
        if (pos !== e) throw new Error(`short range ${s}-${e}: got ${pos - s}`);
      }
    };
    await Promise.all(Array.from({ length: Math.min(parallel, ranges.length) }, worker));
  } finally {
    await fh.close();
    client.destroy();
  }
}

/** Contender 1: ranged parallel download, squashfuse, fuse-overlayfs (a writable workspace). */
export function squashfsRestore(ctx) {
  return {
    id: 'squashfs',
    method: 'squashfs',
    label: 'SDK 0.x: squashfs + squashfuse + fuse-overlayfs',
    short: 'SDK 0.x',
    fs: 'fuse-overlayfs over squashfuse',
    async restore(artifact, target) {
      const img = `${target}.sqfs`;
      const lower = `${target}.lower`;
      const upper = `${target}.upper`;
      const work = `${target}.work`;
      await rangedDownload(ctx, artifact.key, artifact.size, img);
      await Promise.all([lower, upper, work, target].map((d) => mkdir(d, { recursive: true })));
      await run('squashfuse', [img, lower]);
      await run('fuse-overlayfs', ['-o', `lowerdir=${lower},upperdir=${upper},workdir=${work}`, target]);
      return {
        async cleanup() {
          await unmountQuiet(target);
          await unmountQuiet(lower);
          await Promise.all([img, lower, upper, work, target].map((d) => rm(d, { recursive: true, force: true })));
        },
      };
    },
  };
}

/** Steady state only: the squashfs image mounted with squashfuse_ll, no overlay. */
export function squashfuseLl(ctx) {
  return {
    id: 'squashfuse_ll',
    method: 'squashfs',
    label: 'squashfuse_ll (image alone, read-only)',
    short: 'the SDK 0.x image alone',
    fs: 'squashfuse_ll',
    steadyOnly: true,
    async restore(artifact, target) {
      const img = `${target}.sqfs`;
      await rangedDownload(ctx, artifact.key, artifact.size, img);
      await mkdir(target, { recursive: true });
      await run('squashfuse_ll', [img, target]);
      return {
        async cleanup() {
          await unmountQuiet(target);
          await Promise.all([img, target].map((d) => rm(d, { recursive: true, force: true })));
        },
      };
    },
  };
}

/** Contender 2: download and extract, streamed (zstd -d | tar -x while the body arrives). */
export function tarRestore(ctx) {
  return {
    id: 'tarzstd',
    method: 'tarzstd',
    label: 'SDK 1.0: tar + zstd, download and extract',
    short: 'SDK 1.0',
    fs: 'ext4 (plain directory)',
    async restore(artifact, target) {
      await mkdir(target, { recursive: true });
      const client = s3Client(ctx.endpoint);
      try {
        const res = await client.send(new GetObjectCommand({ Bucket: ctx.bucket, Key: artifact.key }));
        const child = spawn('bash', ['-o', 'pipefail', '-c', `zstd -d -q -c | tar -C ${q(target)} -xf -`], { stdio: ['pipe', 'ignore', 'pipe'] });
        const done = exited(child, 'zstd -d | tar -x');
        await Promise.all([pipeline(res.Body, child.stdin), done]);
      } finally {
        client.destroy();
      }
      return {
        async cleanup() {
          await rm(target, { recursive: true, force: true });
        },
      };
    },
  };
}

/**
 * strata restore in `mode` ('extract' or 'lazy'). cold: a fresh STRATA_HOME per run (nothing on
 * the host). fork: one STRATA_HOME for all runs, which already restored the backup once (into a
 * base workspace that stays mounted; lazy: fully hydrated): a fork on the same host.
 * hydrate: lazy mode's background hydration (the library's default is on).
 *
 * Lazy workspaces are served by the restore daemon, a process of its own per STRATA_HOME that
 * opens the store from its URL and the environment (run.mjs points STRATA_S3_ENDPOINT at the
 * shaping proxy).
 */
export function strataRestore(ctx, lib, { mode, warm = false, hydrate = true, recorded = false, daemonUp = false }) {
  const storeFor = (url) => new lib.S3Store(url, { endpoint: ctx.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: CREDENTIALS });
  const id = `strata-${mode}${warm ? '-fork' : ''}${daemonUp ? '-daemon' : ''}${hydrate ? '' : '-nohydrate'}${recorded ? '-recorded' : ''}`;
  let shared; // { home, strata, store, base }
  let pre; // daemonUp: this run's host, whose restore daemon already serves another workspace
  let derived; // recorded: the second-generation backup's artifact
  const names = {
    'strata-extract': ['strata extract (cold host)', 'strata extract', 'overlayfs over ext4 layer dirs'],
    'strata-extract-fork': ['strata extract, fork on the same host (layers already unpacked)', 'strata extract fork', 'overlayfs over ext4 layer dirs'],
    'strata-lazy': ['strata lazy (cold host cache)', 'strata lazy cold', 'overlayfs over FUSE (strata-fuse)'],
    'strata-lazy-nohydrate': ['strata lazy (cold host cache), background hydration off', 'strata lazy cold, no hydration', 'overlayfs over FUSE (strata-fuse)'],
    'strata-lazy-fork': ['strata lazy, fork on the same host (warm host cache)', 'strata lazy warm', 'overlayfs over FUSE (strata-fuse)'],
    'strata-lazy-daemon': ['strata lazy, host whose restore daemon already runs (cold host cache)', 'strata lazy cold, daemon up', 'overlayfs over FUSE (strata-fuse)'],
    'strata-lazy-recorded': ['strata lazy (cold host cache), next-generation backup (a lazy workspace ran the app, wrote a file, was backed up: its first reads recorded for prefetch)', 'strata lazy cold, recorded reads', 'overlayfs over FUSE (strata-fuse)'],
  }[id];

  const lazyStatus = async (strata, dir) => (await strata.status(dir))[0]?.lazy;

  /**
   * Watch, from the moment the restore returns, for every chunk of the workspace to be in the host
   * cache (background hydration). Resolves with the time it first was, so the moment does not
   * depend on when the harness asks (after the workload). The moment is when strata-fuse writes
   * the workspace's hydrated marker (workspaces/<id>/hydrated, a stat every 5 ms), confirmed by a
   * status that counts every chunk cached; a status every 100 ms (each one makes the daemon count
   * the view's chunks) measured the moment up to 100 ms late, half of the small tree's hydration.
   */
  function watchLocal(strata, dir, home) {
    return (async () => {
      let marker;
      for (;;) {
        const st = (await strata.status(dir))[0];
        const l = st?.lazy;
        if (!l) throw new Error(`strata status ${dir} reports no lazy state`);
        if (l.errors?.length) throw new Error(`lazy workspace ${dir}: ${l.errors.join('; ')}`);
        if (l.cached >= l.chunks) return { at: marker ?? performance.now(), via: 'background hydration' };
        if (!l.hydrating) {
          // Hydration ended short of everything: fetch the rest by reading every file.
          await sh(`find ${q(dir)} -type f -print0 | xargs -0 -r -P 8 -n 64 cat > /dev/null`);
          return { at: performance.now(), via: 'background hydration, then every file read' };
        }
        if (marker === undefined && home && st.workspace) {
          const path = join(home, 'workspaces', st.workspace, 'hydrated');
          const until = performance.now() + 100;
          while (performance.now() < until) {
            if (existsSync(path)) {
              marker = performance.now();
              break;
            }
            await new Promise((r) => setTimeout(r, 5));
          }
          if (marker !== undefined) continue; // confirm with a status at once
        } else {
          marker = undefined; // the status disagreed with the marker: count from the status
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    })();
  }

  const open = (home, url) => {
    const t = traced(storeFor(url));
    return { home, store: t.store, t, strata: new lib.Strata({ home, store: t.store, mode, hydrate }) };
  };
  const close = async (o, dirs) => {
    for (const d of dirs) await o.strata.unmount(d, { discard: true }).catch(() => unmountQuiet(d));
    o.store.close();
  };

  return {
    id,
    method: 'strata',
    label: names[0],
    short: names[1],
    fs: names[2],
    lazy: mode === 'lazy',
    warm,
    /**
     * null when this build accepts `mode`, else why not. restoreBackup checks the mode before it
     * looks for the backup, so asking for a backup that does not exist tells which: an unknown
     * mode is INVALID_BACKUP_CONFIG, a known one gets as far as BACKUP_NOT_FOUND.
     */
    async probe(artifact, dir) {
      const home = join(ctx.tmp, `probe-${id}`);
      await rm(home, { recursive: true, force: true });
      const o = open(home, artifact.url);
      try {
        await o.strata.restoreBackup('strata-bench-no-such-backup', { dir, mode });
        return null;
      } catch (err) {
        if (err?.code === 'INVALID_BACKUP_CONFIG') return `not available in this build (${err.message})`;
        if (err?.code === 'BACKUP_NOT_FOUND') return null;
        throw err;
      } finally {
        o.store.close();
        await rm(home, { recursive: true, force: true });
      }
    },
    /** Untimed, once before the runs: the host that forks come from, or the recorded backup. */
    async setup(artifact) {
      if (recorded) {
        // A lazy workspace of the full backup runs the app; the restore daemon records the frames
        // it reads first (first-reads.json, after its window closes) and the workspace's next
        // backup stores them as its prefetch record, fetched first by a restore.
        const home = join(ctx.tmp, `home-${id}`);
        await rm(home, { recursive: true, force: true });
        const o = open(home, artifact.url);
        const ws = join(ctx.tmp, `ws-${id}`);
        await rm(ws, { recursive: true, force: true });
        try {
          await o.strata.restoreBackup(artifact.handle, { dir: ws, mode });
          await run(process.execPath, ['app.js'], { cwd: ws });
          const st = (await o.strata.status(ws))[0];
          const file = join(home, 'workspaces', st.workspace, 'first-reads.json');
          for (let i = 0; i < 1200; i++) {
            if (await readFile(file).then(() => true, () => false)) break;
            await new Promise((r) => setTimeout(r, 50));
          }
          // A session changes something: the backup of a one-file edit, as in the field.
          await writeFile(join(ws, 'session-notes.txt'), 'the app ran once\n');
          const handle = await o.strata.createBackup({ dir: ws });
          const info = await o.strata.getBackup(handle.id);
          derived = { ...artifact, handle, layers: info.layers.length, prioritized: (JSON.parse(await readFile(file, 'utf8').catch(() => '{"refs":[]}')).refs ?? []).length };
        } finally {
          await close(o, [ws]);
          await rmHome(home);
          await rm(ws, { recursive: true, force: true });
        }
        return;
      }
      if (!warm) return;
      const home = join(ctx.tmp, `home-${id}`);
      await rm(home, { recursive: true, force: true });
      shared = open(home, artifact.url);
      shared.base = join(ctx.tmp, `base-${id}`);
      await rm(shared.base, { recursive: true, force: true });
      await shared.strata.restoreBackup(artifact.handle, { dir: shared.base, mode });
      if (mode === 'lazy') {
        if (hydrate) await watchLocal(shared.strata, shared.base, shared.home);
        else await sh(`find ${q(shared.base)} -type f -print0 | xargs -0 -r -P 8 -n 64 cat > /dev/null`);
      }
    },
    /** Untimed, before each run: a fresh host whose daemon serves a tiny unrelated workspace. */
    async before(artifact, target) {
      if (!daemonUp) return;
      const home = `${target}.home`;
      await rm(home, { recursive: true, force: true });
      const o = open(home, artifact.url);
      const src = `${target}.tiny-src`;
      await rm(src, { recursive: true, force: true });
      await mkdir(src, { recursive: true });
      await writeFile(join(src, 'note.txt'), 'another workspace on this host\n');
      const h = await o.strata.createBackup({ dir: src });
      await o.strata.restoreBackup(h, { dir: `${target}.tiny`, mode: 'lazy' });
      o.store.close();
      pre = { home, tiny: `${target}.tiny`, src };
    },
    async restore(artifact, target) {
      let o;
      if (daemonUp) {
        o = open(pre.home, artifact.url);
      } else if (warm) {
        // Fresh sockets for every run; the host (home, unpacked layers or chunk cache) is shared.
        shared.store.close();
        shared.t = traced(storeFor(artifact.url));
        shared.store = shared.t.store;
        shared.strata = new lib.Strata({ home: shared.home, store: shared.store, mode, hydrate });
        o = shared;
      } else {
        const home = `${target}.home`;
        await rm(home, { recursive: true, force: true });
        o = open(home, artifact.url);
      }
      o.t.mark();
      const result = await o.strata.restoreBackup((derived ?? artifact).handle, { dir: target, mode });
      // Without background hydration "fully local" is not a state it reaches by itself: not timed.
      const local = mode === 'lazy' && hydrate ? watchLocal(o.strata, target, o.home) : undefined;
      local?.catch(() => undefined); // awaited by the harness
      return {
        result,
        trace: [...o.t.events],
        local,
        neverLocal: mode === 'lazy' && !hydrate,
        async cleanup() {
          await o.strata.unmount(target, { discard: true }).catch(() => unmountQuiet(target));
          if (pre) {
            await o.strata.unmount(pre.tiny, { discard: true }).catch(() => unmountQuiet(pre.tiny));
            await rm(pre.src, { recursive: true, force: true });
            await rm(pre.tiny, { recursive: true, force: true });
            pre = undefined;
          }
          if (!warm) {
            o.store.close();
            await rmHome(o.home);
          }
          await rm(target, { recursive: true, force: true });
        },
      };
    },
    /** What setup made (for the report). */
    describe: () => (derived ? { layers: derived.layers, recordedFrames: derived.prioritized } : undefined),
    async teardown() {
      if (!shared) return;
      await close(shared, [shared.base]);
      await rmHome(shared.home);
      await rm(shared.base, { recursive: true, force: true });
      shared = undefined;
    },
  };
}

export { writeFile };
