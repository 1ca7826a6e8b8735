/**
 * The library: createBackup / restoreBackup mirror Cloudflare's Sandbox SDK; list, get, delete and
 * gc manage the catalog. One Strata instance talks to one store.
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { storeUrl, strataHome } from './config.js';
import { TreeCapture } from './capture/tree.js';
import {
  BackupCreateError,
  BackupExpiredError,
  BackupNotFoundError,
  BackupRestoreError,
  InvalidBackupConfigError,
  StrataError,
} from './errors.js';
import { codecFor, DEFAULT_CODEC } from './format/codec.js';
import { blobKey, fetchToc, type LayerDescriptor } from './format/reader.js';
import type { CodecName } from './format/toc.js';
import { LayerWriter } from './format/writer.js';
import { extractView, type ExtractStats } from './restore/extract.js';
import { buildView } from './restore/view.js';
import { getManifest, listManifests, putManifest, resolveName, type ManifestRecord } from './store/catalog.js';
import { gc, type GcOptions, type GcReport } from './store/gc.js';
import { openStore } from './store/index.js';
import { type BackupHandle, checkDir, checkId, checkName, handleOf, isExpired, type Manifest, manifestKey, parseHandle } from './store/manifest.js';
import type { ObjectStore } from './store/store.js';

export const DEFAULT_TTL_SECONDS = 3 * 24 * 3600;

export type ProgressEvent =
  | { phase: 'capture'; entries: number; bytes: number }
  | { phase: 'upload'; bytes: number; totalBytes: number }
  | { phase: 'restore'; bytes: number; totalBytes: number };

export interface StrataOptions {
  /** Store URL (file://, s3://) or an ObjectStore. Default: STRATA_STORE, else the local store. */
  store?: string | ObjectStore;
  /** Local state directory. Default: STRATA_HOME, else ~/.local/share/strata. */
  home?: string;
  codec?: CodecName;
  level?: number;
  onProgress?: (e: ProgressEvent) => void;
  onWarning?: (msg: string) => void;
}

export interface CreateBackupOptions {
  /** Absolute path of the directory to back up. */
  dir: string;
  name?: string;
  /** Seconds until the backup expires (default 3 days); null or Infinity: never. */
  ttl?: number | null;
}

export interface RestoreOptions {
  /** Where to restore; the backup's own dir by default. */
  dir?: string;
  mode?: 'extract';
  /** Replace a non-empty target. */
  force?: boolean;
}

export interface RestoreResult {
  success: true;
  dir: string;
  id: string;
  stats: ExtractStats & { layers: number; ms: number };
}

export interface BackupInfo extends BackupHandle {
  expired: boolean;
  layers: LayerDescriptor[];
  /** Bytes stored in the layer blobs. */
  size: number;
  parent?: string;
}

/** A handle, or a string naming a backup by id or by name. */
export type BackupRef = BackupHandle | string;

function uuidv7(): string {
  // Time-ordered ids list in creation order and spread evenly over store prefixes.
  const b = randomBytes(16);
  const ms = BigInt(Date.now());
  for (let i = 0; i < 6; i++) b[i] = Number((ms >> BigInt(8 * (5 - i))) & 0xffn);
  b[6] = (b[6]! & 0x0f) | 0x70;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function infoOf(r: ManifestRecord, now = Date.now()): BackupInfo {
  const m = r.manifest;
  const info: BackupInfo = {
    ...handleOf(m, r.digest),
    expired: isExpired(m, now),
    layers: m.layers,
    size: m.layers.reduce((n, l) => n + l.size, 0),
  };
  if (m.parent) info.parent = m.parent;
  return info;
}

export class Strata {
  readonly store: ObjectStore;
  readonly home: string;
  private readonly opts: StrataOptions;

  constructor(opts: StrataOptions = {}) {
    this.opts = opts;
    this.home = opts.home ? resolve(opts.home) : strataHome();
    this.store = typeof opts.store === 'object' ? opts.store : openStore(storeUrl(opts.store, this.home));
  }

  private warn(msg: string): void {
    this.opts.onWarning?.(msg);
  }

  async createBackup(options: CreateBackupOptions): Promise<BackupHandle> {
    if (typeof options !== 'object' || options === null) throw new InvalidBackupConfigError('createBackup needs { dir }');
    const dir = checkDir(options.dir);
    const name = options.name === undefined ? undefined : checkName(options.name);
    const ttl = options.ttl === undefined ? DEFAULT_TTL_SECONDS : options.ttl;
    if (ttl !== null && (typeof ttl !== 'number' || Number.isNaN(ttl) || ttl <= 0)) {
      throw new InvalidBackupConfigError('ttl must be a positive number of seconds (or null for no expiry)');
    }
    let st;
    try {
      st = await lstat(dir);
    } catch (err) {
      throw new InvalidBackupConfigError(`cannot back up ${dir}: ${(err as Error).message}`, { cause: err });
    }
    if (!st.isDirectory()) throw new InvalidBackupConfigError(`cannot back up ${dir}: not a directory`);

    const tmpDir = join(this.home, 'tmp');
    await mkdir(tmpDir, { recursive: true, mode: 0o700 });
    const tmp = join(tmpDir, `layer-${randomBytes(8).toString('hex')}.tmp`);
    const codec = codecFor(this.opts.codec ?? DEFAULT_CODEC, this.opts.level);
    let writer: LayerWriter | undefined;
    try {
      writer = await LayerWriter.create(tmp, codec);
      const capture = new TreeCapture(writer, {
        onWarning: (m) => this.warn(m),
        onProgress: (p) => this.opts.onProgress?.({ phase: 'capture', ...p }),
      });
      await capture.captureAll(dir);
      const layer = await writer.finish();
      writer = undefined;
      const key = blobKey(layer.digest);
      // Content-addressed: a blob already stored is not sent again, only refreshed for gc's grace.
      if (await this.store.head(key)) await this.store.touch(key);
      else {
        await this.store.putFile(key, tmp, {
          onProgress: (bytes) => this.opts.onProgress?.({ phase: 'upload', bytes, totalBytes: layer.size }),
        });
      }
      const createdAt = new Date();
      const manifest: Manifest = {
        kind: 'strata.backup.manifest',
        version: 1,
        id: uuidv7(),
        dir,
        createdAt: createdAt.toISOString(),
        expiresAt: ttl === null || ttl === Infinity ? null : new Date(createdAt.getTime() + ttl * 1000).toISOString(),
        layers: [
          {
            digest: layer.digest,
            size: layer.size,
            codec: codec.name,
            tocOffset: layer.tocOffset,
            tocLength: layer.tocLength,
            tocSize: layer.tocSize,
            tocDigest: layer.tocDigest,
            entries: layer.entries,
            dataBytes: layer.dataBytes,
          },
        ],
      };
      if (name !== undefined) manifest.name = name;
      // Written last: the backup exists once this lands, and not before.
      const digest = await putManifest(this.store, manifest);
      return handleOf(manifest, digest);
    } catch (err) {
      await writer?.abort();
      // A failed backup is BACKUP_CREATE_FAILED whatever failed (a store write, a read); the
      // underlying error (e.g. STORE_ERROR) stays reachable as the cause.
      if (err instanceof BackupCreateError || err instanceof InvalidBackupConfigError) throw err;
      throw new BackupCreateError(`backup of ${dir} failed: ${(err as Error).message}`, { cause: err });
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /** Find the manifest a reference names, verified against the handle's digest when there is one. */
  async resolve(ref: BackupRef): Promise<ManifestRecord> {
    if (typeof ref === 'object') {
      const h = parseHandle(ref);
      return getManifest(this.store, h.id, h.manifestDigest || undefined);
    }
    if (typeof ref !== 'string' || ref.length === 0) throw new InvalidBackupConfigError('a backup reference must be a handle, an id or a name');
    try {
      checkId(ref);
      if (await this.store.head(manifestKey(ref))) return getManifest(this.store, ref);
    } catch (err) {
      if (!(err instanceof InvalidBackupConfigError)) throw err;
    }
    return resolveName(this.store, checkName(ref));
  }

  async restoreBackup(ref: BackupRef, options: RestoreOptions = {}): Promise<RestoreResult> {
    const t0 = performance.now();
    if (options.mode !== undefined && options.mode !== 'extract') {
      throw new InvalidBackupConfigError(`unknown restore mode ${String(options.mode)}; supported: extract`);
    }
    const { manifest: m } = await this.resolve(ref);
    if (isExpired(m)) throw new BackupExpiredError(`backup ${m.id} expired at ${m.expiresAt}`);
    const dir = checkDir(options.dir ?? m.dir, 'restore dir');
    try {
      const tocs = await Promise.all(m.layers.map((l) => fetchToc(this.store, l)));
      const view = buildView(tocs);
      const stats = await extractView(this.store, m.layers, view, dir, {
        force: !!options.force,
        onWarning: (w) => this.warn(w),
        onProgress: (p) => this.opts.onProgress?.({ phase: 'restore', ...p }),
      });
      return { success: true, dir, id: m.id, stats: { ...stats, layers: m.layers.length, ms: performance.now() - t0 } };
    } catch (err) {
      if (err instanceof StrataError) throw err;
      throw new BackupRestoreError(`restore of backup ${m.id} into ${dir} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  async listBackups(options: { name?: string } = {}): Promise<BackupInfo[]> {
    const now = Date.now();
    const all = await listManifests(this.store, (key, err) => this.warn(`skipping unreadable ${key}: ${(err as Error).message}`));
    return all.filter((r) => options.name === undefined || r.manifest.name === options.name).map((r) => infoOf(r, now));
  }

  async getBackup(id: string): Promise<BackupInfo> {
    return infoOf(await getManifest(this.store, checkId(id)));
  }

  /** Remove a backup's manifest; its blobs go at the next gc unless another backup uses them. */
  async deleteBackup(id: string): Promise<void> {
    checkId(id);
    if (!(await this.store.head(manifestKey(id)))) throw new BackupNotFoundError(`no backup with id ${id} in ${this.store.url}`);
    await this.store.delete(manifestKey(id));
  }

  gc(options: GcOptions = {}): Promise<GcReport> {
    return gc(this.store, options);
  }
}
