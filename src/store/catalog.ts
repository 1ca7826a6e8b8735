/**
 * The catalog: backups are their manifests under manifests/<id>.json. Listing reads them all;
 * names resolve to the newest live backup of that name.
 */
import { BackupExpiredError, BackupNotFoundError, DigestMismatchError, ObjectNotFoundError } from '../errors.js';
import { sha256 } from '../format/reader.js';
import { decodeManifest, encodeManifest, isExpired, type Manifest, manifestKey } from './manifest.js';
import type { ObjectStore } from './store.js';

export interface ManifestRecord {
  manifest: Manifest;
  digest: string;
  /** When the store says the manifest was written. */
  /** When the store wrote it (listings only). */
  storedAt?: Date;
}

export async function putManifest(store: ObjectStore, m: Manifest): Promise<string> {
  const buf = encodeManifest(m);
  await store.putBytes(manifestKey(m.id), buf);
  return sha256(buf);
}

/** Read and check a manifest; with expectedDigest, refuse one that does not match. */
export async function getManifest(store: ObjectStore, id: string, expectedDigest?: string): Promise<ManifestRecord> {
  let buf: Buffer;
  const key = manifestKey(id);
  try {
    buf = await store.getBytes(key);
  } catch (err) {
    if (err instanceof ObjectNotFoundError) throw new BackupNotFoundError(`no backup with id ${id} in ${store.url}`, { cause: err });
    throw err;
  }
  const digest = sha256(buf);
  if (expectedDigest && digest !== expectedDigest) {
    throw new DigestMismatchError(`manifest of backup ${id} has digest ${digest} but the handle says ${expectedDigest}; the handle or the store was tampered with`);
  }
  const manifest = decodeManifest(buf);
  if (manifest.id !== id) throw new DigestMismatchError(`manifest at ${key} names backup ${manifest.id}`);
  // No HEAD for storedAt: a restore's ready path is one GET of the manifest.
  return { manifest, digest };
}

const ID_FROM_KEY = /^manifests\/([A-Za-z0-9][A-Za-z0-9._-]{0,127})\.json$/;

/** Every readable manifest; unreadable ones are reported through onError and skipped. */
export async function listManifests(store: ObjectStore, onError?: (key: string, err: unknown) => void): Promise<ManifestRecord[]> {
  const keys: Array<{ id: string; mtime: Date }> = [];
  for await (const o of store.list('manifests/')) {
    const m = ID_FROM_KEY.exec(o.key);
    if (m) keys.push({ id: m[1]!, mtime: o.mtime });
  }
  const out: ManifestRecord[] = [];
  const limit = 16;
  for (let i = 0; i < keys.length; i += limit) {
    const batch = await Promise.all(
      keys.slice(i, i + limit).map(async (k) => {
        try {
          const buf = await store.getBytes(manifestKey(k.id));
          const manifest = decodeManifest(buf);
          return { manifest, digest: sha256(buf), storedAt: k.mtime };
        } catch (err) {
          if (!(err instanceof ObjectNotFoundError)) onError?.(manifestKey(k.id), err);
          return null;
        }
      }),
    );
    for (const r of batch) if (r) out.push(r);
  }
  out.sort((a, b) => (a.manifest.createdAt < b.manifest.createdAt ? 1 : a.manifest.createdAt > b.manifest.createdAt ? -1 : 0));
  return out;
}

/** The newest backup of that name that has not expired. */
export async function resolveName(store: ObjectStore, name: string, now = Date.now()): Promise<ManifestRecord> {
  const all = (await listManifests(store)).filter((r) => r.manifest.name === name);
  const live = all.find((r) => !isExpired(r.manifest, now));
  if (live) return live;
  if (all.length > 0) {
    throw new BackupExpiredError(`every backup named ${JSON.stringify(name)} has expired (newest expired at ${all[0]!.manifest.expiresAt})`);
  }
  throw new BackupNotFoundError(`no backup named ${JSON.stringify(name)} in ${store.url}`);
}
