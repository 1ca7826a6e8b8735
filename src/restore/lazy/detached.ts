/**
 * A strata-fuse the restoring process starts itself, detached, for a view whose every layer
 * strata-fuse serves on its own (local blobs, or presigned URLs): the mount is live before the
 * restore daemon has booted (~0.1 s of Node start-up on a cold host), and it outlives both the
 * process that started it and any daemon. The daemon adopts it from the record written here
 * (server.json in the workspace): it renews the URLs, reports status, keeps the access record,
 * and takes the mount down on unmount.
 */
import { open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { BackupRestoreError } from '../../errors.js';
import type { LayerDescriptor } from '../../format/reader.js';
import type { ObjectStore } from '../../store/store.js';
import { sys } from '../../sys/native.js';
import { envList, pidAlive, readyReport } from '../../util/process.js';
import { span } from '../../util/trace.js';
import type { FetcherOptions } from './fetcher.js';
import { commonArgs, defaultFuseBinary, type IndexBlob, type PresignedSource, serverArgs, unmountPath } from './mount.js';

/** What a workspace's server.json says of the strata-fuse serving its view. */
export interface ServerRecord {
  version: 1;
  pid: number;
  mountpoint: string;
  /** The sources file strata-fuse re-reads on 401/403, when some layer is fetched over HTTP. */
  sources?: string;
  /** Index positions of the layers fetched over HTTP. */
  remote: number[];
  hydrate: boolean;
  startedAt: string;
  /** A paged index's blob, when strata-fuse loads the index's pages from it (renewed with the layers). */
  indexBlob?: IndexBlob;
}

export interface ServeDetachedOptions {
  store: ObjectStore;
  layers: LayerDescriptor[];
  /** Where the whole index is (flat), or, with headPath, where strata-fuse writes it once loaded. */
  indexPath: string;
  /** A paged index: its head, and the blob its pages come from. */
  headPath?: string | undefined;
  indexBlob?: IndexBlob | undefined;
  /** A paged index's first pages, fetched by the caller (format: LAYOUT.seed). */
  seedPath?: string | undefined;
  mountpoint: string;
  /** The host cache (mirrors) and the daemon's fetcher socket, which may not listen yet. */
  cacheDir: string;
  socketPath: string;
  /** Where server.json and the sources file go (the workspace's directory). */
  dir: string;
  /** strata-fuse's stderr is appended here (the daemon's log). */
  logPath: string;
  hydrate: boolean;
  prefetchPath?: string | undefined;
  presigned?: PresignedSource[] | undefined;
  fetcherOptions?: FetcherOptions | undefined;
  binary?: string;
  readyTimeoutMs?: number;
}

export function serverRecordPath(dir: string): string {
  return join(dir, 'server.json');
}

/**
 * Written by strata-fuse (--hydrated-file) once every remote layer of the view is whole in its
 * mirror: status needs no count of the mirrors then (nor a daemon). Removed before a server
 * starts, when the view goes down, and by the daemon when it empties a mirror the view uses.
 */
export function hydratedPath(dir: string): string {
  return join(dir, 'hydrated');
}

/** The record, if there is a well-formed one. */
export async function readServerRecord(dir: string): Promise<ServerRecord | undefined> {
  let v: ServerRecord;
  try {
    v = JSON.parse(await readFile(serverRecordPath(dir), 'utf8')) as ServerRecord;
  } catch {
    return undefined;
  }
  if (v?.version !== 1 || !Number.isSafeInteger(v.pid) || v.pid <= 1 || typeof v.mountpoint !== 'string' || !Array.isArray(v.remote) || !v.remote.every((n) => Number.isSafeInteger(n) && n >= 0)) return undefined;
  if (v.sources !== undefined && typeof v.sources !== 'string') return undefined;
  if (v.indexBlob !== undefined && (typeof v.indexBlob?.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(v.indexBlob.digest) || !Number.isSafeInteger(v.indexBlob.size))) return undefined;
  return v;
}

/**
 * Is this pid the strata-fuse serving that mountpoint? (A pid in a stale record may have been
 * reused by anything since.)
 */
export async function isServerOf(pid: number, mountpoint: string): Promise<boolean> {
  if (!pidAlive(pid)) return false;
  try {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    return argv.some((a) => a.endsWith('strata-fuse')) && argv.includes(mountpoint);
  } catch {
    return false;
  }
}

/** Start strata-fuse detached at mountpoint; resolves once the mount answers, with its record written. */
export async function serveDetached(o: ServeDetachedOptions): Promise<ServerRecord> {
  const tr = span('serve detached');
  const mountpoint = resolve(o.mountpoint);
  const sourcesPath = join(o.dir, 'sources');
  const served = await serverArgs({ store: o.store, layers: o.layers, sourcesPath, hydrate: o.hydrate, prefetchPath: o.prefetchPath, presigned: o.presigned, fetcherOptions: o.fetcherOptions, indexBlob: o.indexBlob });
  if (served.direct.size !== o.layers.length) {
    await rm(sourcesPath, { force: true });
    throw new BackupRestoreError(`a detached strata-fuse cannot serve ${mountpoint}: some of its layers need the restore daemon's fetcher`);
  }
  const timeoutMs = (o.fetcherOptions?.deadlineMs ?? 30_000) + 5_000;
  await rm(hydratedPath(o.dir), { force: true });
  const marks = o.hydrate && served.remote.length > 0 ? ['--hydrated-file', hydratedPath(o.dir)] : [];
  const args = [...served.args, ...marks, ...commonArgs({ indexPath: o.indexPath, headPath: o.headPath, seedPath: o.seedPath, cacheDir: o.cacheDir, socketPath: o.socketPath, timeoutMs, dieWithParent: false, mountpoint })];
  const log = await open(o.logPath, 'a', 0o600);
  // The log is shared: this strata-fuse's last words are what it writes after this offset.
  const logFrom = (await log.stat()).size;
  // Started without a fork of this process (sys.spawnDetached): its cost would grow with the
  // caller's memory. It runs in a session of its own, never this process's child.
  let readyFd: number;
  try {
    ({ readyFd } = await sys.spawnDetached(o.binary ?? defaultFuseBinary(), args, { stderrFd: log.fd, readyPipe: true }, envList(process.env)));
  } catch (err) {
    await rm(sourcesPath, { force: true });
    throw new BackupRestoreError(`cannot start strata-fuse: ${(err as Error).message}`, { cause: err });
  } finally {
    await log.close();
  }
  tr.step('strata-fuse spawned');
  const { pid, error } = await readyReport(readyFd, o.readyTimeoutMs ?? 10_000);
  tr.step('strata-fuse ready');
  const fail = async (why: string): Promise<never> => {
    if (pid !== undefined && pidAlive(pid)) process.kill(pid, 'SIGKILL');
    await unmountPath(mountpoint);
    await rm(sourcesPath, { force: true });
    // Its last words: what strata-fuse processes wrote to the (shared) log since it started.
    const said = (await readFile(o.logPath).catch(() => Buffer.alloc(0))).subarray(logFrom).toString('utf8').split('\n').filter((l) => l.startsWith('strata-fuse')).slice(-6);
    throw new BackupRestoreError(`strata-fuse could not mount ${mountpoint}: ${why}${said.length ? `\n${said.join('\n')}` : ''} (log: ${o.logPath})`);
  };
  if (error !== undefined || pid === undefined) return fail(error ?? 'no pid');
  const record: ServerRecord = {
    version: 1,
    pid,
    mountpoint,
    ...(served.remote.length ? { sources: sourcesPath } : {}),
    remote: served.remote,
    hydrate: o.hydrate,
    startedAt: new Date().toISOString(),
    ...(o.indexBlob ? { indexBlob: o.indexBlob } : {}),
  };
  try {
    const tmp = `${serverRecordPath(o.dir)}.tmp-${randomBytes(6).toString('hex')}`;
    await writeFile(tmp, JSON.stringify(record), { mode: 0o600, flag: 'wx' });
    await rename(tmp, serverRecordPath(o.dir));
  } catch (err) {
    return fail(`cannot record it: ${(err as Error).message}`);
  }
  return record;
}
