/**
 * Garbage collection: delete expired manifests, then every blob no manifest still needs.
 *
 * Grace period: a blob younger than `graceMs` is never collected, so an upload whose manifest is
 * not written yet survives; a manifest that expired less than `graceMs` ago still protects its
 * blobs, so a backup stacking on it while it expired finds them. Backups refresh the mtime of a
 * blob they reuse (ObjectStore.touch) for the same reason.
 */
import { StoreError } from '../errors.js';
import { blobsOf, isExpired } from './manifest.js';
import { listManifests } from './catalog.js';
import type { ObjectStore } from './store.js';

export interface GcOptions {
  dryRun?: boolean;
  /** Default one hour. */
  graceMs?: number;
  now?: number;
  onError?: (key: string, err: unknown) => void;
}

export interface GcReport {
  dryRun: boolean;
  expiredManifests: string[];
  deletedBlobs: Array<{ key: string; size: number }>;
  keptBlobs: number;
  freedBytes: number;
  /** Unfinished writes older than the grace period (incomplete multipart uploads, temp files) removed. */
  incompleteWrites: Array<{ key: string; id: string; started: string }>;
}

export const DEFAULT_GRACE_MS = 60 * 60 * 1000;

export async function gc(store: ObjectStore, opts: GcOptions = {}): Promise<GcReport> {
  const now = opts.now ?? Date.now();
  const grace = opts.graceMs ?? DEFAULT_GRACE_MS;
  const report: GcReport = { dryRun: !!opts.dryRun, expiredManifests: [], deletedBlobs: [], keptBlobs: 0, freedBytes: 0, incompleteWrites: [] };
  const live = new Set<string>();
  const unreadable: string[] = [];
  const records = await listManifests(store, (key, err) => {
    unreadable.push(key);
    opts.onError?.(key, err);
  });
  // A manifest we could not read may reference any blob: collecting now could destroy a backup.
  if (unreadable.length > 0) {
    throw new StoreError(`gc stopped before deleting anything: could not read ${unreadable.join(', ')}; fix or delete those manifests and run gc again`);
  }
  for (const r of records) {
    const m = r.manifest;
    const protects = !isExpired(m, now) || Date.parse(m.expiresAt!) > now - grace;
    if (protects) {
      for (const key of blobsOf(m)) live.add(key);
    }
    if (isExpired(m, now)) report.expiredManifests.push(m.id);
  }
  if (!opts.dryRun) for (const id of report.expiredManifests) await store.delete(`manifests/${id}.json`);
  for await (const o of store.list('blobs/')) {
    if (live.has(o.key) || o.mtime.getTime() > now - grace) {
      report.keptBlobs++;
      continue;
    }
    report.deletedBlobs.push({ key: o.key, size: o.size });
    report.freedBytes += o.size;
    if (!opts.dryRun) await store.delete(o.key);
  }
  // What a killed backup left half-written; an upload in progress is younger than the grace period.
  if (store.cleanupIncomplete) {
    try {
      const left = await store.cleanupIncomplete(new Date(now - grace), { dryRun: !!opts.dryRun });
      report.incompleteWrites = left.map((w) => ({ key: w.key, id: w.id, started: w.started.toISOString() }));
    } catch (err) {
      // Not fatal: a store may refuse the listing (permissions) and the blobs are collected anyway.
      opts.onError?.('(incomplete uploads)', err);
    }
  }
  return report;
}
