/**
 * The restore daemon: one per STRATA_HOME, detached from the CLI that started it. It holds the
 * lazy mounts of every workspace on the host, one fetcher and one chunk cache for all of them
 * (forks fetch nothing twice), and hydrates each workspace in the background.
 *
 * Control: the typed request/reply union of protocol.ts, one JSON line each way per connection on
 * STRATA_HOME/run/daemon.sock. A mount serves the restore index the caller wrote into the
 * workspace (mount.index): the daemon parses no TOC and builds no view. The daemon exits when its
 * last mount goes. Run as: node daemon.js STRATA_HOME
 */
import { access, open as openFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { decodePrefetch, MAX_PREFETCH_REFS, type PrefetchRef } from '../../format/prefetch.js';
import { headDescriptor, indexMatchesLayers, RestoreIndex, type ViewChunk } from '../../format/restore-index.js';
import { readHeadFile, readIndexFile } from '../index-source.js';
import { DeferredStore } from '../../store/deferred.js';
import { openStore } from '../../store/index.js';
import type { ObjectStore } from '../../store/store.js';
import { fetchIndex } from '../../store/blobs.js';
import { type FirstReads, firstReadsPath, listWorkspaces, lowerDir, mountHeadPath, mountIndexPath, prefetchPath, Workspace } from '../../workspace/workspace.js';
import { Fetcher } from './fetcher.js';
import { type LazyMount, mirrorPath, mountLazy, type PresignedSource, RENEW_MS, renewSources, serverFetchOptions, unmountPath, writeIndexFile } from './mount.js';
import { hydratedPath, isServerOf, readServerRecord, serverRecordPath } from './detached.js';
import { trimMirrors } from './mirrors.js';
import type { LayerDescriptor } from '../../format/reader.js';
import { mountAt } from '../overlay.js';
import { controlSocket, type DaemonRequest, type DaemonStatus, fetchSocket, hostCacheDir, parseRequest, runDir } from './protocol.js';
import { pidAlive } from '../../util/process.js';
import { envCount } from '../../util/env.js';
import { span } from '../../util/trace.js';

/** A view the daemon supervises: one it mounted (its child) or one it adopted (a detached strata-fuse). */
interface Served {
  readonly mountpoint: string;
  readonly direct: ReadonlySet<number>;
  readonly remote: ReadonlySet<number>;
  /** Call fn once if the server dies while served. */
  onExit(fn: (why: string) => void): void;
  unmount(): Promise<void>;
}

function servedBy(m: LazyMount): Served {
  return {
    mountpoint: m.mountpoint,
    direct: m.direct,
    remote: m.remote,
    onExit: (fn) => m.child.once('exit', (code, sig) => fn(String(sig ?? code))),
    unmount: () => m.unmount(),
  };
}

interface Held {
  mount: Served;
  /** The view's frame digests of fetched layers, once decoded (just after the mount answers). */
  digests: string[] | undefined;
  /** Chunks of layers strata-fuse reads straight from local blobs: always local. */
  local: number;
  /** Layers of the view (all of them in mount.direct: nothing to fetch at all). */
  layers: number;
  /** Frames strata-fuse fetches itself into mirrors: cached once their bytes are in the mirror. */
  mirrored: ViewChunk[];
  /** strata-fuse hydrates those itself. */
  nativeHydrate: boolean;
  /** The view's layers (index positions → blobs). */
  viewed: LayerDescriptor[];
  /** Chunk records of the index: what status reports until digests are known. */
  pending: number;
  /** The workspace's directory (its hydrated marker, detached.ts hydratedPath). */
  root: string;
  hydrating: boolean;
  errors: string[];
  abort: AbortController;
}

const log = (msg: string): void => {
  process.stderr.write(`${new Date().toISOString()} strata daemon[${process.pid}]: ${msg}\n`);
};

async function main(home: string): Promise<void> {
  const boot = span('daemon');
  boot.step(`main() after ${performance.now().toFixed(0)} ms of process life`);
  const run = runDir(home);
  await mkdir(run, { recursive: true, mode: 0o700 });
  // One daemon per home: an OFD lock on run/daemon.lock, held for the daemon's life and dropped
  // by the kernel when it dies. (A pid file taken with O_EXCL let two start: one read the file
  // between another's create and write, or removed the file another had just made for a stale one.)
  const { sys } = await import('../../sys/native.js');
  const lock = await openFile(join(run, 'daemon.lock'), 'a', 0o600);
  if (!sys.lockFile(lock.fd)) {
    await lock.close();
    const other = await readFile(join(run, 'daemon.pid'), 'utf8').catch(() => '?');
    log(`another daemon (pid ${other.trim() || '?'}) serves ${home}; exiting`);
    return;
  }
  // Which process holds it, for people and tools; written whole (a reader never sees it empty).
  const pidFile = join(run, 'daemon.pid');
  await writeFile(`${pidFile}.${process.pid}`, String(process.pid));
  await rename(`${pidFile}.${process.pid}`, pidFile);
  boot.step('lock taken');
  // The same settings as a strata-fuse a restore starts itself (mount.ts).
  const fetchOptions = serverFetchOptions();
  const cacheBytes = envCount('STRATA_CACHE_SIZE', 1) ?? 4 * 1024 ** 3;
  const fetcher = await Fetcher.start({
    socketPath: fetchSocket(home),
    cacheDir: hostCacheDir(home),
    cacheBytes,
    log,
    ...fetchOptions,
  });
  boot.step('fetcher listening');
  const stores = new Map<string, ObjectStore>();
  const held = new Map<string, Held>();
  let exiting = false;

  const storeFor = (url: string): ObjectStore => {
    let s = stores.get(url);
    if (!s) {
      s = openStore(url);
      stores.set(url, s);
    }
    return s;
  };

  const shutdown = async (why: string): Promise<void> => {
    if (exiting) return;
    exiting = true;
    log(`stopping: ${why}`);
    for (const h of held.values()) {
      h.abort.abort();
      await h.mount.unmount().catch((err: Error) => log(`unmount ${h.mount.mountpoint}: ${err.message}`));
    }
    server.close();
    await fetcher.close().catch(() => undefined);
    await rm(controlSocket(home), { force: true });
    await rm(pidFile, { force: true });
    await lock.close(); // last: the next daemon may start from here on
    process.exit(0);
  };

  /** A view was served since start; `starting`: mounts and adoptions under way. */
  let everMounted = false;
  let starting = 0;
  /** Count fn as a mount under way; the view it brings up marks the daemon as used. */
  const bringingUp = async (fn: () => Promise<void>): Promise<void> => {
    starting++;
    try {
      await fn();
      everMounted = true;
    } finally {
      starting--;
    }
  };
  const neverMountedMs = envCount('STRATA_DAEMON_IDLE_MS', 1) ?? 60_000;
  /** Keep the blob mirrors within the cache budget (set below, once the helpers exist). */
  let trimNow = (): void => undefined;

  const mount = (id: string, hydrate: boolean, sources?: PresignedSource[]): Promise<void> => bringingUp(async () => {
    if (held.has(id)) return;
    const tr = span(`daemon mount ${id}`);
    const ws = await Workspace.load(home, id);
    const store = storeFor(ws.state.store);
    // The ready path: the index the caller fetched and verified, straight to strata-fuse.
    const indexPath = mountIndexPath(ws);
    const ix = RestoreIndex.parse(await readFile(indexPath));
    if (!indexMatchesLayers(ix, ws.viewed)) throw new Error(`${indexPath} does not describe the layers of workspace ${id}; restore it again`);
    tr.step('index read');
    const mountpoint = lowerDir(ws);
    if (await mountAt(mountpoint)) await unmountPath(mountpoint); // a dead mount left by a crashed server
    await mkdir(mountpoint, { recursive: true });
    // Mounted before the chunk list is decoded: strata-fuse needs only the index file, and the
    // fetcher only the layers until readahead and hydration want the chunks (below).
    // The prefetch record the restore wrote (verified), if the backup has one.
    const record = await readFile(prefetchPath(ws)).catch(() => undefined);
    const m = await mountLazy({
      store,
      layers: ws.viewed,
      hydrate,
      ...(sources ? { presigned: sources } : {}),
      ...(record ? { prefetchPath: prefetchPath(ws) } : {}),
      indexPath,
      chunks: [],
      mountpoint,
      runDir: join(ws.root, 'run'),
      fetcher,
      // strata-fuse's own fetches keep the daemon's settings (deadline, readahead).
      fetcherOptions: fetchOptions,
      onLog: (l) => log(`strata-fuse ${id}: ${l}`),
    });
    tr.step('strata-fuse ready');
    supervise(id, ws, ix, servedBy(m), hydrate, record, store);
  });

  /**
   * Take over a view a restoring process mounted with a detached strata-fuse (detached.ts): it
   * serves every layer itself; the daemon renews its URLs, reports it, records its first reads
   * and takes it down on unmount.
   */
  const adopt = (id: string): Promise<void> => bringingUp(async () => {
    if (held.has(id)) return;
    const ws = await Workspace.load(home, id);
    const rec = await readServerRecord(ws.root);
    const mountpoint = lowerDir(ws);
    if (!rec) throw new Error(`workspace ${id} has no record of a detached strata-fuse (${serverRecordPath(ws.root)})`);
    if (rec.mountpoint !== mountpoint || !(await isServerOf(rec.pid, mountpoint)) || !(await mountAt(mountpoint))) {
      throw new Error(`the strata-fuse that served workspace ${id} (pid ${rec.pid}) is gone; run 'strata unmount ${ws.state.dir}' then 'strata restore' to bring it back`);
    }
    const store = storeFor(ws.state.store);
    const ix = await adoptedIndex(ws, store);
    const record = await readFile(prefetchPath(ws)).catch(() => undefined);
    let stopped = false;
    // The URLs the restore made live a day: renewed hourly here (this loads the AWS SDK then).
    const renew =
      rec.sources && (rec.remote.length || rec.indexBlob)
        ? setInterval(() => {
            renewSources(store, ws.viewed, rec.remote, rec.sources!, rec.indexBlob).catch((err: Error) => log(`renewing the presigned URLs of workspace ${id}: ${err.message}`));
          }, RENEW_MS).unref()
        : undefined;
    const gone = async (ms: number): Promise<boolean> => {
      for (const until = Date.now() + ms; Date.now() < until; ) {
        if (!pidAlive(rec.pid)) return true;
        await new Promise((r) => setTimeout(r, 20));
      }
      return !pidAlive(rec.pid);
    };
    let unmounted: Promise<void> | undefined;
    const served: Served = {
      mountpoint,
      direct: new Set(ws.viewed.map((_, i) => i)),
      remote: new Set(rec.remote),
      onExit: (fn) => {
        const t = setInterval(() => {
          if (stopped) clearInterval(t);
          else if (!pidAlive(rec.pid)) {
            clearInterval(t);
            fn('exited');
          }
        }, 1000);
        t.unref();
      },
      unmount: () =>
        (unmounted ??= (async () => {
          stopped = true;
          clearInterval(renew);
          // Unmounted, strata-fuse leaves by itself; one that does not is stopped.
          await unmountPath(mountpoint);
          if (!(await gone(5000)) && (await isServerOf(rec.pid, mountpoint))) {
            process.kill(rec.pid, 'SIGTERM');
            if (!(await gone(2000))) process.kill(rec.pid, 'SIGKILL');
          }
          await unmountPath(mountpoint);
          await rm(serverRecordPath(ws.root), { force: true });
          await rm(hydratedPath(ws.root), { force: true });
          if (rec.sources) await rm(rec.sources, { force: true });
        })()),
    };
    log(`adopted workspace ${id}: strata-fuse pid ${rec.pid} serves ${mountpoint}`);
    supervise(id, ws, ix, served, rec.hydrate, record, store);
  });

  /** What follows a view coming up, whoever mounted it: status, hydration, the access record. */
  const supervise = (id: string, ws: Workspace, index: RestoreIndex | LoadingIndex, m: Served, hydrate: boolean, record: Buffer | undefined, store: ObjectStore): void => {
    const ixReady = index instanceof RestoreIndex ? Promise.resolve(index) : index.ready;
    const tr = span(`daemon serve ${id}`);
    // An s3:// store loads the AWS SDK on first use (~0.2 s of this event loop). Layers the
    // fetcher serves need it for their first read: start it once the mount has been answered, not
    // while the mount comes up. Layers strata-fuse fetches itself need it only to renew their
    // URLs (hourly), which loads it then.
    if (store instanceof DeferredStore && m.direct.size < ws.viewed.length) setTimeout(() => (store as DeferredStore).preload(), 0);
    const h: Held = { mount: m, root: ws.root, layers: ws.viewed.length, mirrored: [], viewed: ws.viewed, nativeHydrate: hydrate && m.remote.size > 0, digests: undefined, local: 0, pending: index.chunkCount, hydrating: hydrate, errors: [], abort: new AbortController() };
    held.set(id, h);
    m.onExit((why) => {
      if (held.get(id) === h && !exiting) {
        h.errors.push(`strata-fuse exited (${why}); run 'strata unmount' then 'strata restore' to bring the workspace back`);
        log(`strata-fuse for ${id} exited (${why})`);
      }
    });
    // After the answer: the chunk list (readahead order, prefetch, hydration, status).
    // Decoded in slices with the event loop free between them, so a first read's miss is answered
    // without waiting behind this work (a 100k-file index is ~100 ms of it).
    void (async () => {
      // Not before the first read is answered (or 250 ms pass): a first read waits for its own
      // fetch only, not for this work on the same event loop. Until then misses carry no readahead.
      const firstRead = new Promise<void>((r) => {
        const off = fetcher.onAccess(() => {
          off();
          r();
        });
        setTimeout(() => {
          off();
          r();
        }, 250).unref();
      });
      await firstRead;
      const ix = await ixReady;
      await new Promise((r) => setTimeout(r, 5));
      await fetcher.whenNoDemand();
      const chunks: ViewChunk[] = [];
      const seen = new Uint8Array(ix.digestCount);
      for (let k = 0; k < ix.chunkCount; k += 2048) {
        await new Promise((r) => setImmediate(r));
        if (held.get(id) !== h || h.abort.signal.aborted) return;
        // Layers strata-fuse reads itself need no readahead, prefetch nor hydration.
        const part: ViewChunk[] = [];
        for (const c of ix.chunks(k, k + 2048, seen)) {
          if (m.remote.has(c.layer)) h.mirrored.push(c);
          else if (m.direct.has(c.layer)) h.local++;
          else part.push(c);
        }
        fetcher.addChunks(ws.viewed, part);
        for (const c of part) chunks.push(c);
      }
      h.digests = chunks.map((c) => c.chunk.digest);
      tr.step(`${chunks.length} chunks registered`);
      // What strata-fuse does not fetch itself: the frames of the prefetch record in its order,
      // then (older backups) each layer's landmark region of prioritized files, ahead of hydration.
      const regions = ix.layers().map((l) => l.prefetch);
      const landmark = [
        ...recordedChunks(record, ws.state.mounted, chunks),
        ...chunks.filter(({ layer, chunk }) => {
          const p = regions[layer];
          return p !== undefined && chunk.blobOffset >= p.blobOffset && chunk.blobOffset + chunk.blobLength <= p.blobOffset + p.blobLength;
        }),
      ];
      if (landmark.length > 0) {
        fetcher.hydrate(ws.viewed, landmark, { priority: 'normal', signal: h.abort.signal }).catch((err: Error) => h.errors.push(`prefetch: ${err.message}`));
      }
      if (hydrate) {
        fetcher
          .hydrate(ws.viewed, chunks, { priority: 'low', signal: h.abort.signal })
          .then((r) => {
            if (r.failed > 0) h.errors.push(`hydration: ${r.failed} chunk(s) failed; they are fetched on demand`);
          })
          .catch((err: Error) => h.errors.push(`hydration: ${err.message}`))
          .finally(() => (h.hydrating = false));
      } else h.hydrating = false;
    })().catch((err: Error) => {
      h.errors.push(`chunk list: ${err.message}`);
      h.hydrating = false;
    });
    recordFirstReads(ws, ixReady, fetcher);
    trimNow();
  };

  const unmount = async (id: string): Promise<void> => {
    const h = held.get(id);
    if (!h) return;
    h.abort.abort();
    held.delete(id);
    await h.mount.unmount();
  };

  const status = async (): Promise<DaemonStatus> => ({
    pid: process.pid,
    fetcher: fetcher.stats(),
    mounts: await Promise.all(
      [...held].map(async ([id, h]) => {
        const chunks = h.digests ? h.digests.length + h.local + h.mirrored.length : h.pending;
        // strata-fuse serves it all and said every remote layer is whole: nothing to count.
        if (h.mount.direct.size === h.layers && (await access(hydratedPath(h.root)).then(() => true, () => false))) {
          return { workspace: id, mountpoint: h.mount.mountpoint, chunks, cached: chunks, hydrating: false, errors: h.errors };
        }
        const mirrored = h.digests ? await mirroredFrames(fetcher.cache.dir, h.viewed, h.mirrored) : 0;
        return {
          workspace: id,
          mountpoint: h.mount.mountpoint,
          chunks,
          // Until the chunk list is decoded, a view read wholly from local blobs is still all local.
          cached: h.digests ? h.local + mirrored + h.digests.filter((d) => fetcher.cache.has(d)).length : h.mount.direct.size === h.layers && h.mount.remote.size === 0 ? h.pending : 0,
          hydrating: h.hydrating || (h.nativeHydrate && (!h.digests || mirrored < h.mirrored.length)),
          errors: h.errors,
        };
      }),
    ),
  });

  // With no mounts left the daemon exits, after a grace period: a restore that takes a workspace
  // down and mounts the next one (restore --force) must not race the exit.
  let idleTimer: NodeJS.Timeout | undefined;
  const idleExit = (): void => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      if (held.size === 0) void shutdown('no mounts left');
    }, 3000);
  };

  /** Requests wait for the start-up scan: a status must see the views it adopts. */
  let scanned: Promise<void> = Promise.resolve();
  const handle = async (req: DaemonRequest): Promise<unknown> => {
    await scanned;
    if (exiting) return { ok: false, code: 'EXITING', error: 'the daemon is stopping' };
    switch (req.op) {
      case 'mount':
        clearTimeout(idleTimer);
        await mount(req.workspace, req.hydrate, req.sources);
        return { ok: true };
      case 'adopt':
        clearTimeout(idleTimer);
        await adopt(req.workspace);
        return { ok: true };
      case 'unmount':
        await unmount(req.workspace);
        if (held.size === 0) idleExit();
        return { ok: true };
      case 'status':
        return { ok: true, ...(await status()) };
    }
  };

  const serve = (sock: Socket): void => {
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      let req: DaemonRequest;
      try {
        req = parseRequest(buf.slice(0, nl));
      } catch (err) {
        sock.end(JSON.stringify({ ok: false, error: `bad request: ${(err as Error).message}` }) + '\n');
        return;
      }
      handle(req).then(
        (res) => sock.end(JSON.stringify(res) + '\n'),
        (err: Error & { code?: string }) => {
          log(`${req.op} ${'workspace' in req ? req.workspace : ''} failed: ${err.message}`);
          sock.end(JSON.stringify({ ok: false, error: err.message, code: err.code }) + '\n');
        },
      );
    });
    sock.on('error', () => undefined);
  };

  await rm(controlSocket(home), { force: true });
  const server = createServer(serve);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(controlSocket(home), () => resolve());
  });
  boot.step('control socket listening');
  // Views a restore mounted with a detached strata-fuse before this daemon listened (a cold
  // host), or that a daemon before this one served (it died or was restarted): adopted now.
  // Scanned after listening, so a restore that found no daemon listening has written its
  // record before this looks.
  scanned = (async () => {
    for (const ws of await listWorkspaces(home)) {
      if (ws.state.mode !== 'lazy' || !(await readServerRecord(ws.root))) continue;
      await adopt(ws.state.id).catch((err: Error) => log(`not adopting workspace ${ws.state.id}: ${err.message}`));
    }
  })().catch((err: Error) => log(`scanning for views to adopt: ${err.message}`));
  await scanned;
  boot.step('views adopted');
  await writeFile(join(run, 'daemon.ready'), String(process.pid));
  log(`serving ${home}`);
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  // The host's cache budget covers the chunk cache and the blob mirrors strata-fuse fetches into.
  const trim = (): void => {
    const inUse = new Set([...held.values()].flatMap((h) => h.viewed.map((l) => l.digest.slice(7))));
    trimMirrors(fetcher.cache.dir, Math.max(0, cacheBytes - fetcher.stats().cache.bytes), inUse)
      .then(async (gone) => {
        // A view whose mirror was emptied is no longer hydrated.
        for (const h of held.values()) if (gone.some((m) => h.viewed.some((l) => l.digest.slice(7) === m.hex))) await rm(hydratedPath(h.root), { force: true });
        for (const m of gone) log(`cache over its ${cacheBytes}-byte budget: emptied the mirror of layer sha256:${m.hex} (${m.held} bytes${inUse.has(m.hex) ? ', in use: it is fetched again as read' : ''})`);
      })
      .catch((err: Error) => log(`trimming the blob mirrors: ${err.message}`));
  };
  setInterval(trim, 30_000).unref();
  trimNow = trim;
  // The views the start-up scan adopted came up before trimNow was set: the budget holds from now.
  trim();
  // Mounts taken down behind our back (umount by hand) no longer hold the daemon.
  setInterval(() => {
    void (async () => {
      const before = held.size;
      for (const [id, h] of held) if (!(await mountAt(h.mount.mountpoint))) await unmount(id).catch(() => undefined);
      if (before > 0 && held.size === 0 && !exiting) idleExit();
    })();
  }, 5000).unref();
  // A daemon started for a restore that never mounted (it failed, or was refused) does not stay.
  // (A mount or adoption still under way when the time comes is waited for: checked again.)
  const unused = (): void => {
    if (everMounted || held.size > 0 || exiting) return;
    if (starting > 0) setTimeout(unused, 1000).unref();
    else void shutdown(`no mount within ${neverMountedMs} ms of starting`);
  };
  setTimeout(unused, neverMountedMs).unref();
}

/** The frames of a prefetch record among these chunks, in the record's order (a bad record: none). */
function recordedChunks(record: Buffer | undefined, chain: LayerDescriptor[], chunks: ViewChunk[]): ViewChunk[] {
  if (!record) return [];
  let refs: PrefetchRef[];
  try {
    refs = decodePrefetch(record, chain.map((l) => l.size));
  } catch {
    return [];
  }
  const at = new Map(chunks.map((c) => [`${c.layer}:${c.chunk.blobOffset}`, c]));
  return refs.flatMap((r) => at.get(`${r.layer}:${r.blobOffset}`) ?? []);
}

/**
 * How many of these frames the mirrors strata-fuse fetches into hold (by their data extents: a
 * torn frame counts until strata-fuse reads and refetches it). For status only.
 */
async function mirroredFrames(cacheDir: string, layers: LayerDescriptor[], frames: ViewChunk[]): Promise<number> {
  if (frames.length === 0) return 0;
  const { sys } = await import('../../sys/native.js');
  const byLayer = new Map<number, ViewChunk[]>();
  for (const f of frames) {
    const list = byLayer.get(f.layer);
    if (list) list.push(f);
    else byLayer.set(f.layer, [f]);
  }
  let n = 0;
  for (const [layer, list] of byLayer) {
    const l = layers[layer]!;
    const fh = await openFile(mirrorPath(cacheDir, l.digest), 'r').catch(() => undefined);
    if (!fh) continue;
    let extents: Array<[number, number]>;
    try {
      extents = sys.dataExtents(fh.fd, l.size);
    } finally {
      await fh.close();
    }
    for (const { chunk } of list) {
      // Extents are sorted and disjoint: binary search for the last one starting at or before.
      let lo = 0;
      let hi = extents.length - 1;
      let at = -1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if (extents[mid]![0] <= chunk.blobOffset) {
          at = mid;
          lo = mid + 1;
        } else hi = mid - 1;
      }
      if (at >= 0 && extents[at]![0] + extents[at]![1] >= chunk.blobOffset + chunk.blobLength) n++;
    }
  }
  return n;
}

/**
 * Record which frames the workspace reads in its first seconds (STRATA_PRIORITY_WINDOW_MS, default
 * 10 s), in order, into first-reads.json; the workspace's next backup stores them as its prefetch
 * record (format/prefetch.ts), and a restore of it fetches them first.
 */
/** The index of a view whose strata-fuse is still loading it (a paged index): known in size only. */
interface LoadingIndex {
  chunkCount: number;
  ready: Promise<RestoreIndex>;
}

/** How long an adoption waits for strata-fuse to write the whole index before fetching it itself. */
const INDEX_WAIT_MS = 15_000;

/**
 * The index of a view being adopted: mount.index when it describes the view; else (a paged index
 * whose strata-fuse has not loaded every page yet) the head's counts at once and the index once
 * strata-fuse writes it, or, if it does not within INDEX_WAIT_MS, as fetched from the store.
 * Answered without waiting: the restore that asked for the adoption is not held up by it.
 */
async function adoptedIndex(ws: Workspace, store: ObjectStore): Promise<RestoreIndex | LoadingIndex> {
  const flat = (): Promise<RestoreIndex | undefined> => readIndexFile(mountIndexPath(ws), ws.viewed);
  const now = await flat();
  if (now) return now;
  const head = await readHeadFile(mountHeadPath(ws), ws.viewed);
  if (!head) throw new Error(`neither ${mountIndexPath(ws)} nor ${mountHeadPath(ws)} describes the layers of workspace ${ws.state.id}`);
  const ready = (async () => {
    for (const until = Date.now() + INDEX_WAIT_MS; Date.now() < until; ) {
      await new Promise((r) => setTimeout(r, 50));
      const ix = await flat();
      if (ix) return ix;
    }
    const whole = await fetchIndex(store, headDescriptor(head));
    await writeIndexFile(whole, mountIndexPath(ws), { sync: false });
    return RestoreIndex.parse(whole);
  })();
  ready.catch(() => undefined);
  return { chunkCount: head.chunkCount, ready };
}

function recordFirstReads(ws: Workspace, ixReady: Promise<RestoreIndex>, fetcher: Fetcher): void {
  const windowMs = envCount('STRATA_PRIORITY_WINDOW_MS', 1) ?? 10_000;
  // Digests are kept as they arrive; where they live is looked up only when the window closes, so
  // no walk of the index runs while the workload starts.
  const order: string[] = [];
  const seen = new Set<string>();
  const off = fetcher.onAccess((hex) => {
    if (!seen.has(hex) && order.length < MAX_PREFETCH_REFS) {
      seen.add(hex);
      order.push(hex);
    }
  });
  setTimeout(async () => {
    off();
    if (order.length === 0) return;
    const ix = await ixReady.catch(() => undefined);
    if (!ix) return;
    const where = new Map<string, ViewChunk>();
    for (const c of ix.chunks()) {
      const hex = c.chunk.digest.slice(7);
      if (seen.has(hex) && !where.has(hex)) where.set(hex, c);
    }
    const refs = order.flatMap((hex) => {
      const c = where.get(hex);
      return c ? [[c.layer, c.chunk.blobOffset, c.chunk.blobLength]] : [];
    });
    if (refs.length === 0) return;
    const rec: FirstReads = { version: 1, layers: ws.viewed.map((l) => l.digest), refs: refs as FirstReads['refs'] };
    writeFile(firstReadsPath(ws), JSON.stringify(rec)).catch((err: Error) => log(`first reads of ${ws.state.id}: ${err.message}`));
  }, windowMs).unref();
}


if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!) && process.argv[2]) {
  main(process.argv[2]).catch((err: Error) => {
    log(`fatal: ${err.stack ?? err.message}`);
    process.exit(1);
  });
}
