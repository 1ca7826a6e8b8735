/**
 * Lazy restore: mount a backup's merged view read-only with strata-fuse, file data fetched on first
 * read. mountLazy writes the index, starts (or joins) a fetcher, spawns build/strata-fuse, and
 * returns once the mountpoint answers. Nothing here assumes a CLI: a daemon can hold many mounts
 * sharing one fetcher and one cache.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { BackupRestoreError } from '../../errors.js';
import { span } from '../../util/trace.js';
import { envCount } from '../../util/env.js';
import { blobKey, layerKey, type LayerDescriptor } from '../../format/reader.js';
import { FileStore } from '../../store/file.js';
import { parseDigest, type Toc } from '../../format/toc.js';
import type { ObjectStore } from '../../store/store.js';
import { encodeIndex, RestoreIndex, type ViewChunk, viewChunks } from '../../format/restore-index.js';
import { buildView, type ViewNode } from '../../format/view.js';
import { sys } from '../../sys/native.js';
import { Fetcher, type FetcherOptions, type FetcherStats, type HydrateResult } from './fetcher.js';

const run = promisify(execFile);
const IS_ROOT = process.getuid?.() === 0;

/** build/strata-fuse beside this module's package (src/ and dist/ both sit one level below the root). */
export function defaultFuseBinary(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'build', 'strata-fuse');
}

export interface MountLazyOptions {
  store: ObjectStore;
  layers: LayerDescriptor[];
  /**
   * What to serve: a restore index already in a file (the ready path: nothing is built), with the
   * chunks it reads when the caller has them; else the merged view or the layers' TOCs, encoded here.
   */
  indexPath?: string;
  chunks?: ViewChunk[];
  view?: ViewNode;
  tocs?: Toc[];
  mountpoint: string;
  /** Where the index (and, with a fetcher of our own, its socket) go. */
  runDir: string;
  /** Share a running fetcher (and its cache); otherwise one is started for this mount. */
  fetcher?: Fetcher;
  /** For a fetcher of our own: the cache directory and its budget (default 4 GiB). */
  cacheDir?: string;
  cacheBytes?: number;
  fetcherOptions?: FetcherOptions;
  /** strata-fuse's own bound on waiting for the fetcher (default: the fetcher deadline + 5 s). */
  timeoutMs?: number;
  /** FUSE worker threads at most (default 64): each read waiting on a miss holds one. */
  threads?: number;
  /** Path of strata-fuse (default build/strata-fuse). */
  binary?: string;
  /** Give up if the mount is not live by then (default 10 s). */
  readyTimeoutMs?: number;
  /**
   * Keep the mount when this process exits (a daemon restarting: cached data stays readable and a
   * fetcher started again on the same socket serves misses). Default: strata-fuse gets SIGTERM when
   * we die and unmounts, so a crash never leaves a mount behind.
   */
  detach?: boolean;
  /** Each line strata-fuse writes to stderr (default: to our stderr). */
  onLog?: (line: string) => void;
  /**
   * Let strata-fuse serve the layers itself (default true; env STRATA_DIRECT=0 turns it off): a
   * local (file://) store's straight from their blob files, an s3:// store's with ranged GETs of
   * presigned URLs into sparse mirrors in the cache directory. No fetcher and no JavaScript on the
   * path of those reads. gzip layers, and stores that cannot presign, go through the fetcher.
   */
  direct?: boolean;
  /** strata-fuse hydrates the layers it fetches itself in the background (default false). */
  hydrate?: boolean;
  /** A verified prefetch record (format/prefetch.ts): strata-fuse fetches its frames first. */
  prefetchPath?: string;
  /**
   * URLs for the layers strata-fuse fetches itself, made by the caller (presignSources): the
   * first sources file is written from them instead of presigning here. A restore makes them
   * with the store it already has loaded, so a cold daemon does not load the AWS SDK on the
   * mount's path (~0.2 s); renewals presign with this mount's store. Ignored unless they cover
   * exactly the layers fetched over HTTP.
   */
  presigned?: PresignedSource[];
}

/**
 * A presigned GET URL of one layer blob (index position in the view's layers), or of a paged
 * index's blob (position: the view's layer count, the slot after its last layer).
 */
export interface PresignedSource {
  layer: number;
  url: string;
}

/** A paged restore index's blob: strata-fuse reads the pages from it (slot: the layer count). */
export interface IndexBlob {
  digest: string;
  size: number;
}

/** Does strata-fuse fetch the index blob of this store over HTTP (else it reads the local file)? */
export function indexRemote(store: ObjectStore): boolean {
  return !(store instanceof FileStore) && !!store.presignGet;
}

/** Presigned URLs live a day and are renewed every hour (R2 and S3 allow up to 7 days). */
const PRESIGN_SECONDS = 24 * 3600;
export const RENEW_MS = 3600 * 1000;

/**
 * strata-fuse's fetch settings from the environment (STRATA_FETCH_DEADLINE_MS, STRATA_READAHEAD):
 * the same for a strata-fuse the daemon starts and one a restoring process starts.
 */
export function serverFetchOptions(): FetcherOptions {
  const deadlineMs = envCount('STRATA_FETCH_DEADLINE_MS', 1);
  const readahead = envCount('STRATA_READAHEAD', 0);
  return { ...(deadlineMs !== undefined ? { deadlineMs } : {}), ...(readahead !== undefined ? { readahead } : {}) };
}

/** Where strata-fuse mirrors a fetched layer blob, under the cache directory. */
export function mirrorPath(cacheDir: string, digest: string): string {
  return join(cacheDir, 'blobs', parseDigest(digest));
}

/**
 * The layers strata-fuse fetches itself over HTTP (presigned URLs): the zstd layers of a store that
 * is not local and can presign. gzip layers, and everything when `enabled` is off, go through the
 * fetcher.
 */
export function remoteLayers(store: ObjectStore, layers: LayerDescriptor[], enabled = process.env.STRATA_DIRECT !== '0'): number[] {
  if (!enabled || store instanceof FileStore || !store.presignGet) return [];
  return layers.flatMap((l, i) => (l.codec === 'zstd' ? [i] : []));
}

/**
 * Does strata-fuse serve every layer itself (local blobs, or remote ones with URLs), so that it
 * needs no fetcher: what lets a restore start it detached (detached.ts).
 */
export function servesAlone(store: ObjectStore, layers: LayerDescriptor[], presigned: readonly PresignedSource[], enabled = process.env.STRATA_DIRECT !== '0', index?: IndexBlob): boolean {
  const remote = remoteLayers(store, layers, enabled);
  const indexServed = !index || (enabled && (store instanceof FileStore || (indexRemote(store) && presigned.some((p) => p.layer === layers.length))));
  return layers.length > 0 && indexServed && directBlobs(store, layers, enabled).length + remote.length === layers.length && remote.every((l) => presigned.some((p) => p.layer === l));
}

/** Presigned URLs (PRESIGN_SECONDS) of the layers remoteLayers names, and of a paged index's blob. */
export function presignSources(store: ObjectStore, layers: LayerDescriptor[], enabled?: boolean, index?: IndexBlob): Promise<PresignedSource[]> {
  const layerUrls = remoteLayers(store, layers, enabled).map(async (layer) => ({ layer, url: await store.presignGet!(layerKey(layers[layer]!), PRESIGN_SECONDS) }));
  const indexUrl = index && (enabled ?? process.env.STRATA_DIRECT !== '0') && indexRemote(store) ? [store.presignGet!(blobKey(index.digest), PRESIGN_SECONDS).then((url) => ({ layer: layers.length, url }))] : [];
  return Promise.all([...layerUrls, ...indexUrl]);
}

/**
 * The sources file: "LAYER SIZE URL" per layer strata-fuse fetches itself, and the paged index's
 * blob at the slot after the last layer (0600: URLs are credentials).
 */
async function writeSources(store: ObjectStore, layers: LayerDescriptor[], remote: number[], path: string, given?: PresignedSource[], index?: IndexBlob): Promise<void> {
  const urls = given ?? (await presignSources(store, layers, true, index));
  const byLayer = new Map(urls.map((u) => [u.layer, u.url]));
  const lines = remote.map((i) => `${i} ${layers[i]!.size} ${byLayer.get(i)!}\n`);
  if (index && indexRemote(store)) lines.push(`${layers.length} ${index.size} ${byLayer.get(layers.length)!}\n`);
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
  await writeFile(tmp, lines.join(''), { mode: 0o600, flag: 'wx' });
  await rename(tmp, path);
}

/** The layers strata-fuse can read straight from a local blob file: `--blob N=PATH` each. */
export function directBlobs(store: ObjectStore, layers: LayerDescriptor[], enabled = process.env.STRATA_DIRECT !== '0'): Array<{ layer: number; path: string }> {
  if (!enabled || !(store instanceof FileStore)) return [];
  return layers.flatMap((l, layer) => (l.codec === 'zstd' ? [{ layer, path: store.localPath(layerKey(l)) }] : []));
}

export interface LazyMount {
  readonly mountpoint: string;
  /** Layers (index positions) strata-fuse serves itself: the fetcher sees none of their reads. */
  readonly direct: ReadonlySet<number>;
  /** Of those, the ones it fetches over HTTP into mirrors (mirrorPath); the others are local blobs. */
  readonly remote: ReadonlySet<number>;
  readonly indexPath: string;
  readonly child: ChildProcess;
  readonly fetcher: Fetcher;
  /** The fetcher's counters (shared by every mount it serves). */
  stats(): FetcherStats;
  /** Fetch every chunk not cached yet, behind on-demand reads. */
  hydrate(opts?: { priority?: 'low' | 'normal'; signal?: AbortSignal }): Promise<HydrateResult>;
  /** Unmount (lazily if busy), stop strata-fuse, and stop the fetcher if it is this mount's own. */
  unmount(): Promise<void>;
}

/** Unmount a FUSE mountpoint: a normal unmount, else a lazy one; true when something was unmounted. */
export async function unmountPath(mountpoint: string): Promise<boolean> {
  if (IS_ROOT && process.env.STRATA_MOUNT_API !== '0') {
    // umount2, no fork of this process: a normal unmount, else a lazy one.
    const at = Buffer.from(resolve(mountpoint));
    for (const lazy of [false, true]) {
      try {
        await sys.unmountFs(at, lazy);
        return true;
      } catch {
        // Not mounted, or busy: try the next way.
      }
    }
    return false;
  }
  const tries = IS_ROOT
    ? [
        ['umount', [mountpoint]],
        ['umount', ['-l', mountpoint]],
      ]
    : [
        ['fusermount3', ['-u', mountpoint]],
        ['fusermount3', ['-uz', mountpoint]],
      ];
  for (const [cmd, args] of tries as Array<[string, string[]]>) {
    try {
      await run(cmd, args);
      return true;
    } catch {
      // Not mounted, or busy: try the next way.
    }
  }
  return false;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/**
 * Write an index file atomically (temp file in the same directory, rename). With `sync: false` it
 * is not fsynced: for copies of a verified store object that a restore rewrites anyway (a 20 MB
 * index costs tens of ms to sync on the ready path).
 */
export async function writeIndexFile(bytes: Buffer, path: string, opts: { sync?: boolean } = {}): Promise<void> {
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(bytes);
      if (opts.sync !== false) await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export interface ServerArgsOptions {
  store: ObjectStore;
  layers: LayerDescriptor[];
  /** Where the sources file goes (written when some layer is fetched over HTTP). */
  sourcesPath: string;
  direct?: boolean | undefined;
  hydrate?: boolean | undefined;
  prefetchPath?: string | undefined;
  presigned?: PresignedSource[] | undefined;
  fetcherOptions?: FetcherOptions | undefined;
  /** A paged index: strata-fuse reads its pages from this blob. */
  indexBlob?: IndexBlob | undefined;
}

export interface ServerArgs {
  /** --blob / --sources and the settings of strata-fuse's own fetches. */
  args: string[];
  /** Layers strata-fuse serves itself (local blobs and remote ones). */
  direct: Set<number>;
  /** Of those, the ones fetched over HTTP (their URLs are in the sources file). */
  remote: number[];
}

/**
 * What strata-fuse needs to serve these layers itself: `--blob` for local blobs, `--sources` (the
 * file written here, from the caller's URLs when they fit, else presigned now) for remote ones.
 */
export async function serverArgs(o: ServerArgsOptions): Promise<ServerArgs> {
  const directOn = o.direct ?? process.env.STRATA_DIRECT !== '0';
  const blobs = directBlobs(o.store, o.layers, directOn);
  const remote = remoteLayers(o.store, o.layers, directOn);
  const direct = new Set([...blobs.map((b) => b.layer), ...remote]);
  const args: string[] = blobs.flatMap((b) => ['--blob', `${b.layer}=${b.path}`]);
  const ix = o.indexBlob;
  if (ix && o.store instanceof FileStore) args.push('--blob', `${o.layers.length}=${o.store.localPath(blobKey(ix.digest))}`);
  // How long strata-fuse keeps the CPUs awake after a request (native/fuse/sx_awake.h); its default unless set.
  const spinUs = envCount('STRATA_FUSE_SPIN_US', 0);
  if (spinUs !== undefined) args.push('--spin-us', String(Math.min(spinUs, 1_000_000)));
  const remoteIndex = !!ix && indexRemote(o.store);
  if (remote.length > 0 || remoteIndex) {
    try {
      const slots = remoteIndex ? [...remote, o.layers.length] : remote;
      const given = o.presigned && o.presigned.length === slots.length && o.presigned.every((p) => slots.includes(p.layer) && /^https?:\/\/\S+$/.test(p.url)) ? o.presigned : undefined;
      await writeSources(o.store, o.layers, remote, o.sourcesPath, given, ix);
    } catch (err) {
      throw new BackupRestoreError(`cannot make presigned URLs for ${o.store.url}: ${(err as Error).message}`, { cause: err });
    }
    const deadline = o.fetcherOptions?.deadlineMs ?? 30_000;
    const readaheadKb = Math.ceil((o.fetcherOptions?.demandSpan ?? 256 * 1024) / 1024);
    const asyncKb = Math.ceil((o.fetcherOptions?.readahead ?? 4 * 1024 * 1024) / 1024);
    args.push('--sources', o.sourcesPath, '--readahead-kb', String(readaheadKb), '--async-readahead-kb', String(asyncKb), '--deadline-ms', String(deadline), '--stall-ms', String(Math.min(deadline, o.fetcherOptions?.stallTimeoutMs ?? 10_000)));
    if (o.hydrate) args.push('--hydrate');
    const streams = envCount('STRATA_HYDRATE_STREAMS', 1);
    if (o.hydrate && streams !== undefined) args.push('--hydrate-streams', String(Math.min(streams, 32)));
    if (o.prefetchPath) args.push('--prefetch', resolve(o.prefetchPath));
  }
  return { args, direct, remote };
}

/** Presign the remote layers' URLs again into their sources file (strata-fuse re-reads it on 401/403). */
export function renewSources(store: ObjectStore, layers: LayerDescriptor[], remote: number[], path: string, index?: IndexBlob): Promise<void> {
  return writeSources(store, layers, remote, path, undefined, index);
}

/** The rest of strata-fuse's command line: index, cache, fetcher socket, mountpoint. */
export function commonArgs(o: { indexPath: string; headPath?: string | undefined; seedPath?: string | undefined; cacheDir: string; socketPath: string; timeoutMs: number; threads?: number | undefined; dieWithParent: boolean; mountpoint: string }): string[] {
  // A paged index: the head, and where strata-fuse writes the whole index once it has every page.
  const index = o.headPath ? ['--index-head', o.headPath, '--index-out', o.indexPath, ...(o.seedPath ? ['--index-seed', o.seedPath] : [])] : ['--index', o.indexPath];
  return [...index, '--cache', o.cacheDir, '--socket', o.socketPath, '--timeout-ms', String(o.timeoutMs), '--threads', String(o.threads ?? 64), '--ready-fd', '3', '--foreground', ...(o.dieWithParent ? ['--die-with-parent'] : []), o.mountpoint];
}

/** Null once strata-fuse writes "ready" on fd 3 (its mount is live), else why it is not. */
export function waitReady(child: ChildProcess, timeoutMs: number): Promise<string | null> {
  return new Promise<string | null>((resolveReady) => {
    const readyPipe = child.stdio[3] as Readable;
    let got = '';
    const t = setTimeout(() => resolveReady(`not ready after ${timeoutMs} ms`), timeoutMs);
    const done = (v: string | null): void => {
      clearTimeout(t);
      resolveReady(v);
    };
    readyPipe.on('data', (b: Buffer) => {
      got += b.toString();
      if (got.includes('ready\n')) done(null);
    });
    readyPipe.on('error', () => undefined);
    child.once('error', (err) => done(err.message));
    child.once('exit', (code, sig) => done(`exited with ${sig ?? code}`));
  });
}

export async function mountLazy(o: MountLazyOptions): Promise<LazyMount> {
  const tr = span('mountLazy');
  const mountpoint = resolve(o.mountpoint);
  const runDir = resolve(o.runDir);
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  const tag = randomBytes(6).toString('hex');
  let indexPath: string;
  let ownIndex = false;
  let chunks: ViewChunk[];
  if (o.indexPath) {
    indexPath = resolve(o.indexPath);
    chunks = o.chunks ?? RestoreIndex.parse(await readFile(indexPath)).chunks();
  } else {
    const view = o.view ?? (o.tocs ? buildView(o.tocs) : undefined);
    if (!view) throw new BackupRestoreError('mountLazy needs an index, a view or the TOCs of the layers');
    indexPath = join(runDir, `mount-${tag}.index`);
    ownIndex = true;
    const layers = o.layers.map((l, i) => ({ digest: l.digest, prefetch: o.tocs?.[i]?.prefetch }));
    await writeIndexFile(encodeIndex(view, layers), indexPath);
    chunks = viewChunks(view);
  }

  const own = !o.fetcher;
  let fetcher: Fetcher;
  if (o.fetcher) fetcher = o.fetcher;
  else {
    if (!o.cacheDir) throw new BackupRestoreError('mountLazy needs a fetcher or a cacheDir');
    fetcher = await Fetcher.start({ ...o.fetcherOptions, socketPath: join(runDir, `fetch-${tag}.sock`), cacheDir: o.cacheDir, cacheBytes: o.cacheBytes ?? 4 * 1024 ** 3 });
  }
  const unregister = fetcher.register(o.store, o.layers, chunks);

  const sourcesPath = join(runDir, `sources-${tag}`);
  let renewTimer: NodeJS.Timeout | undefined;
  const cleanupStart = async (): Promise<void> => {
    if (renewTimer) clearInterval(renewTimer);
    await rm(sourcesPath, { force: true });
    unregister();
    if (own) await fetcher.close();
    if (ownIndex) await rm(indexPath, { force: true });
  };

  const timeoutMs = o.timeoutMs ?? (o.fetcherOptions?.deadlineMs ?? 30_000) + 5_000;
  let served: ServerArgs;
  try {
    served = await serverArgs({ ...o, sourcesPath });
  } catch (err) {
    await cleanupStart();
    throw err;
  }
  const { direct, remote } = served;
  if (remote.length > 0) {
    renewTimer = setInterval(() => {
      renewSources(o.store, o.layers, remote, sourcesPath).catch((err: Error) => (o.onLog ?? ((l: string) => process.stderr.write(l + '\n')))(`strata: renewing presigned URLs for ${o.store.url}: ${err.message}`));
    }, RENEW_MS).unref();
  }
  const args = [...served.args, ...commonArgs({ indexPath, cacheDir: fetcher.cache.dir, socketPath: fetcher.socketPath, timeoutMs, threads: o.threads, dieWithParent: !o.detach, mountpoint })];
  let child: ChildProcess;
  try {
    child = spawn(o.binary ?? defaultFuseBinary(), args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], detached: !!o.detach });
  } catch (err) {
    await cleanupStart();
    throw new BackupRestoreError(`cannot start strata-fuse: ${(err as Error).message}`, { cause: err });
  }
  const tail: string[] = [];
  const onLog = o.onLog ?? ((line: string) => process.stderr.write(line + '\n'));
  let pending = '';
  child.stderr!.on('data', (b: Buffer) => {
    pending += b.toString('utf8');
    let i: number;
    while ((i = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, i);
      pending = pending.slice(i + 1);
      tail.push(line);
      if (tail.length > 20) tail.shift();
      onLog(line);
    }
  });

  tr.step('strata-fuse spawned');
  const ready = await waitReady(child, o.readyTimeoutMs ?? 10_000);
  if (ready !== null) {
    child.kill('SIGKILL');
    await waitExit(child, 2000);
    await unmountPath(mountpoint);
    await cleanupStart();
    throw new BackupRestoreError(`strata-fuse could not mount ${mountpoint}: ${ready}${tail.length ? `\n${tail.join('\n')}` : ''}`);
  }
  tr.step('ready on fd 3');
  try {
    await stat(mountpoint);
  } catch (err) {
    child.kill('SIGTERM');
    await unmountPath(mountpoint);
    await cleanupStart();
    throw new BackupRestoreError(`mount of ${mountpoint} does not answer: ${(err as Error).message}`, { cause: err });
  }

  let unmounted: Promise<void> | undefined;
  return {
    mountpoint,
    direct,
    remote: new Set(remote),
    indexPath,
    child,
    fetcher,
    stats: () => fetcher.stats(),
    hydrate: (h) => fetcher.hydrate(o.layers, chunks.filter((c) => !direct.has(c.layer)), h),
    unmount: () =>
      (unmounted ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) {
          await unmountPath(mountpoint);
          if (!(await waitExit(child, 5000))) {
            child.kill('SIGTERM');
            if (!(await waitExit(child, 2000))) child.kill('SIGKILL');
            await waitExit(child, 2000);
          }
        }
        // A crashed server leaves a dead mount behind; remove it too.
        await unmountPath(mountpoint);
        await cleanupStart();
      })()),
  };
}
