/**
 * The restore daemon's control protocol: one JSON line each way per connection on
 * STRATA_HOME/run/daemon.sock. Requests and replies are a typed union, defined here once for the
 * daemon (server) and the client; nothing here loads the daemon's own modules.
 */
import { join } from 'node:path';
import type { FetcherStats } from './fetcher.js';
import type { PresignedSource } from './mount.js';

export interface MountStatus {
  workspace: string;
  mountpoint: string;
  chunks: number;
  /** Chunks of this view in the host cache. */
  cached: number;
  hydrating: boolean;
  errors: string[];
}

export interface DaemonStatus {
  pid: number;
  mounts: MountStatus[];
  fetcher: FetcherStats;
}

/**
 * mount: serve the workspace's restore index (STRATA_HOME/workspaces/<id>/mount.index, written
 * by the caller) at its lower directory; answered once the mount answers. `sources`: presigned
 * URLs of the layers strata-fuse fetches itself, made by the caller with the store it has loaded
 * (the daemon presigns only to renew them). adopt: take over the view a restore mounted with a
 * detached strata-fuse (server.json in the workspace).
 */
export type DaemonRequest =
  | { op: 'mount'; workspace: string; hydrate: boolean; sources?: PresignedSource[] }
  | { op: 'adopt'; workspace: string }
  | { op: 'unmount'; workspace: string }
  | { op: 'status' };

export interface OkReply {
  ok: true;
}
export type StatusReply = OkReply & DaemonStatus;
export interface ErrorReply {
  ok: false;
  /** EXITING: the daemon is on its way out (start or reach the next one). */
  code?: string;
  error: string;
}
export type ReplyTo<R extends DaemonRequest> = (R extends { op: 'status' } ? StatusReply : OkReply) | ErrorReply;

export function runDir(home: string): string {
  return join(home, 'run');
}
export function controlSocket(home: string): string {
  return join(runDir(home), 'daemon.sock');
}
export function daemonLog(home: string): string {
  return join(runDir(home), 'daemon.log');
}
/** The daemon's fetcher socket: every strata-fuse of the host connects to it (misses, access notes). */
export function fetchSocket(home: string): string {
  return join(runDir(home), 'fetch.sock');
}
/** The host cache: the fetcher's chunk files and strata-fuse's blob mirrors (blobs/). */
export function hostCacheDir(home: string): string {
  return join(home, 'cache', 'chunks');
}

const OPS = new Set(['mount', 'adopt', 'unmount', 'status']);
/** A request off the wire, checked: anything else is answered with an error. */
export function parseRequest(line: string): DaemonRequest {
  const v = JSON.parse(line) as Record<string, unknown>;
  if (typeof v !== 'object' || v === null || !OPS.has(v.op as string)) throw new Error(`unknown op ${String((v as { op?: unknown })?.op)}`);
  if (v.op === 'status') return { op: 'status' };
  if (typeof v.workspace !== 'string' || !/^[0-9a-f]{12}$/.test(v.workspace)) throw new Error(`bad workspace id ${JSON.stringify(v.workspace)}`);
  if (v.op === 'unmount') return { op: 'unmount', workspace: v.workspace };
  if (v.op === 'adopt') return { op: 'adopt', workspace: v.workspace };
  const req: Extract<DaemonRequest, { op: 'mount' }> = { op: 'mount', workspace: v.workspace, hydrate: v.hydrate !== false };
  if (v.sources !== undefined) req.sources = parseSources(v.sources);
  return req;
}

const MAX_SOURCES = 4096;
function parseSources(v: unknown): PresignedSource[] {
  if (!Array.isArray(v) || v.length > MAX_SOURCES) throw new Error(`sources must be an array of at most ${MAX_SOURCES} entries`);
  return v.map((s: unknown) => {
    const o = s as { layer?: unknown; url?: unknown };
    if (typeof o !== 'object' || o === null || !Number.isInteger(o.layer) || (o.layer as number) < 0 || (o.layer as number) >= MAX_SOURCES) throw new Error('a source needs a layer index');
    if (typeof o.url !== 'string' || o.url.length > 16384 || !/^https?:\/\/[^\s]+$/.test(o.url)) throw new Error(`source of layer ${String(o.layer)}: not an http(s) URL`);
    return { layer: o.layer as number, url: o.url };
  });
}
