/**
 * The library: createBackup / restoreBackup mirror Cloudflare's Sandbox SDK; list, get, delete and
 * gc manage the catalog. One Strata instance talks to one store.
 */
import { randomBytes } from 'node:crypto';
import { access, lstat, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { storeUrl, strataHome } from './config.js';
import { keptIndex, parentChainView, stackLayer, type ChainView } from './capture/chain-index.js';
import { captureDiff } from './capture/diff.js';
import { squashLayers } from './capture/squash.js';
import { captureTreeNative, nativeCaptureFor } from './capture/native-tree.js';
import { TreeCapture } from './capture/tree.js';
import { type Captured, captureUpper } from './capture/upper.js';
import {
  BackupCreateError,
  BackupExpiredError,
  BackupNotFoundError,
  BackupRestoreError,
  InvalidBackupConfigError,
  ObjectNotFoundError,
  StrataError,
} from './errors.js';
import { codecFor, DEFAULT_CODEC } from './format/codec.js';
import { blobKey, type LayerDescriptor, locatorKey, STAGED_KEY_RE } from './format/reader.js';
import { encodePrefetch, packPrefetch, type PrefetchDescriptor, prefetchRefCount, type PrefetchRef } from './format/prefetch.js';
import { encodeIndex, type IndexDescriptor, packIndex, validPageSize } from './format/restore-index.js';
import type { CodecName, Toc, TocEntry } from './format/toc.js';
import { buildView, type ViewNode } from './format/view.js';
import { LayerWriter } from './format/writer.js';
import { extractView, type ExtractStats } from './restore/extract.js';
import { EarlyBodies } from './restore/early-body.js';
import { fetchIndexSeed, loadIndex, pagedIndex } from './restore/index-source.js';
import { defaultFuseBinary, indexRemote } from './restore/lazy/mount.js';
import { removeLayerDir } from './restore/layers.js';
import { fetchPrefetch, fetchToc } from './store/blobs.js';
import { getManifest, listManifests, putManifest, resolveName, type ManifestRecord } from './store/catalog.js';
import { DEFAULT_GRACE_MS, gc, type GcOptions, type GcReport } from './store/gc.js';
import { openStore } from './store/index.js';
import { type BackupHandle, checkDir, checkId, checkName, handleOf, isExpired, type Manifest, manifestKey, parseHandle } from './store/manifest.js';
import type { ObjectStore } from './store/store.js';
import { pidAlive } from './util/process.js';
import { span } from './util/trace.js';
import { envCount } from './util/env.js';
import { WorkspaceService, type WorkspaceStatus } from './workspace/service.js';
import { chainIndexPath, mountIndexPath, type Workspace } from './workspace/workspace.js';

export type { WorkspaceStatus } from './workspace/service.js';

export const DEFAULT_TTL_SECONDS = 3 * 24 * 3600;
const MAX_TTL_SECONDS = 1000 * 365 * 24 * 3600;
/**
 * Longest layer chain a backup leaves (see docs/design.md): overlay lookups measured flat up to
 * 64 lowers; each layer still costs a TOC request per restore, so chains are kept well short.
 */
export const DEFAULT_MAX_CHAIN = 32;

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
  /** Uncompressed bytes small files share a frame up to (default FRAME_BOUND; 0: a frame per file). */
  frameBound?: number;
  onProgress?: (e: ProgressEvent) => void;
  onWarning?: (msg: string) => void;
  /** Longest layer chain before a backup merges the top layers. */
  maxChain?: number;
  /** Restore mode when a call names none (default: lazy where FUSE works, else extract as root, else copy). */
  mode?: RestoreMode;
  /** Lazy workspaces: fetch the rest of the data in the background (default true). */
  hydrate?: boolean;
  /** Byte budget of the host-wide chunk cache, taken by the restore daemon when it starts. */
  cacheSize?: number;
}

export interface CreateBackupOptions {
  /** Absolute path of the directory to back up. */
  dir: string;
  name?: string;
  /** Seconds until the backup expires (default 3 days); null or Infinity: never. */
  ttl?: number | null;
  /** For a plain directory: store only the differences from this backup. */
  parent?: BackupRef;
}

export interface RestoreOptions {
  /** Where to restore; the backup's own dir by default. */
  dir?: string;
  /**
   * lazy: an overlay workspace over a FUSE view of the layers, data fetched on first read (the
   * default where FUSE works); extract: an overlay workspace over layer directories unpacked
   * once per host; copy: a plain directory tree (the default when not root).
   */
  mode?: RestoreMode;
  /** Replace a non-empty target. */
  force?: boolean;
}

export interface RestoreResult {
  success: true;
  dir: string;
  id: string;
  mode: RestoreMode;
  /** A workspace brought back with its upper (unsaved changes) intact. */
  recovered?: boolean;
  stats: ExtractStats & { layers: number; ms: number };
}

export type RestoreMode = 'lazy' | 'extract' | 'copy';

/**
 * Workspaces need root and overlayfs; lazy ones also FUSE and the strata-fuse binary. Where
 * something is missing, the next mode down is the default.
 */
export async function defaultMode(): Promise<RestoreMode> {
  if (process.getuid?.() !== 0) return 'copy';
  const fs = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  if (!/\toverlay$/m.test(fs)) return 'copy';
  const fuse = /\tfuse$/m.test(fs) && (await access('/dev/fuse').then(() => true, () => false)) && (await access(defaultFuseBinary()).then(() => true, () => false));
  return fuse ? 'lazy' : 'extract';
}

export interface BackupInfo extends BackupHandle {
  expired: boolean;
  layers: LayerDescriptor[];
  /** The restore index of the chain (absent in backups made before it existed). */
  index?: { digest: string; size: number; rawSize: number; inline: boolean };
  /** The prefetch record (the frames a workspace of this chain read first), when there is one. */
  prefetch?: { digest: string; size: number; refs: number; inline: boolean };
  /** Bytes stored in the layer blobs, the index blob and the prefetch record blob. */
  size: number;
  parent?: string;
}


/** A layer just written: its descriptor and the TOC it holds. */
interface Written {
  desc: LayerDescriptor;
  toc: Toc;
  /** The locator of a new staged layer, still being written (a hint: never fails the backup). */
  located?: Promise<void>;
}

/** A new chain's restore index: a new one, or the parent's kept with the new layer in its tail. */
interface StackedIndex {
  index?: { raw: Buffer; desc: IndexDescriptor };
  kept?: IndexDescriptor;
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


/** Remove temp layers whose backup process died (kill -9, OOM): a blob-sized file each. */
async function sweepDeadTemps(tmpDir: string): Promise<void> {
  for (const name of await readdir(tmpDir).catch(() => [] as string[])) {
    // Layer temp files of backups, whole-blob copies of restores (restore/layers.ts).
    const m = /^(?:layer-(\d+)-[0-9a-f]+\.tmp|whole-(\d+)-\w+)$/.exec(name);
    const pid = Number(m?.[1] ?? m?.[2]);
    if (!m || pid === process.pid || pidAlive(pid)) continue;
    await rm(join(tmpDir, name), { recursive: true, force: true }).catch(() => undefined);
  }
}

function infoOf(r: ManifestRecord, now = Date.now()): BackupInfo {
  const m = r.manifest;
  const info: BackupInfo = {
    ...handleOf(m, r.digest),
    expired: isExpired(m, now),
    layers: m.layers,
    size: m.layers.reduce((n, l) => n + l.size, 0) + (m.index && m.index.inline === undefined ? m.index.size : 0) + (m.prefetch && m.prefetch.inline === undefined ? m.prefetch.size : 0),
  };
  if (m.index) info.index = { digest: m.index.digest, size: m.index.size, rawSize: m.index.rawSize, inline: m.index.inline !== undefined };
  if (m.prefetch) info.prefetch = { digest: m.prefetch.digest, size: m.prefetch.size, refs: prefetchRefCount(m.prefetch.rawSize), inline: m.prefetch.inline !== undefined };
  if (m.parent) info.parent = m.parent;
  return info;
}

/** STRATA_INDEX_PAGE_KB: the page size of the restore indexes backups write (tests make it small). */
function indexPageSize(): number | undefined {
  const kb = envCount('STRATA_INDEX_PAGE_KB', 4);
  if (kb === undefined) return undefined;
  if (validPageSize(kb * 1024)) return kb * 1024;
  process.stderr.write(`strata: ignoring STRATA_INDEX_PAGE_KB=${kb}: not a power of two from 4 to 16384; using the default\n`);
  return undefined;
}

export class Strata {
  readonly store: ObjectStore;
  readonly home: string;
  /** The lifecycle of restored directories (prepare, commit, mounts, remove, status). */
  readonly workspaces: WorkspaceService;
  private readonly opts: StrataOptions;

  constructor(opts: StrataOptions = {}) {
    this.opts = opts;
    this.home = opts.home ? resolve(opts.home) : strataHome();
    this.store = typeof opts.store === 'object' ? opts.store : openStore(storeUrl(opts.store, this.home));
    this.workspaces = new WorkspaceService(this.home, { hydrate: opts.hydrate !== false, cacheSize: opts.cacheSize, onWarning: (m) => this.warn(m) });
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
    // Checked before any upload: an expiry past what a date can hold would fail only at the end.
    if (ttl !== null && ttl !== Infinity && !(ttl <= MAX_TTL_SECONDS)) {
      throw new InvalidBackupConfigError(`ttl must be at most ${MAX_TTL_SECONDS} seconds (1000 years); use null for no expiry`);
    }
    let st;
    try {
      st = await lstat(dir);
    } catch (err) {
      throw new InvalidBackupConfigError(`cannot back up ${dir}: ${(err as Error).message}`, { cause: err });
    }
    if (!st.isDirectory()) throw new InvalidBackupConfigError(`cannot back up ${dir}: not a directory`);

    const ws = await this.workspaces.find(dir);
    const incremental = ws && ws.state.store === this.store.url && (await ws.isMounted()) ? ws : undefined;
    const release = await incremental?.lock();
    const tr = span('backup');
    try {
      // Under the lock: a backup that ran while we waited moved the workspace's chain on.
      await incremental?.reload();
      let parent: { id: string; layers: LayerDescriptor[]; index?: IndexDescriptor | undefined; prefetch?: PrefetchDescriptor | undefined } | undefined;
      let captured: Captured | undefined;
      let layer: Written | null;
      /** The parent chain's view, for the new restore index (incremental and diff backups). */
      let base: (() => Promise<ChainView>) | undefined;
      /**
       * The new chain's index, built and stored as soon as the layer's content is final: alongside
       * the upload's last parts and the store's checks, not after them (a chain about to be merged
       * waits for the merge instead).
       */
      let indexing: Promise<StackedIndex> | undefined;
      const onFinished = (l: Written): void => {
        if ((parent?.layers.length ?? 0) + 1 > this.maxChain) return;
        indexing = this.stackedIndex(parent, base, l);
        indexing.catch(() => undefined); // awaited below, unless the upload fails first
      };
      if (incremental) {
        // A workspace: only what changed since its last backup or restore, over its chain.
        const previous = await incremental.loadCaptured();
        parent = { id: incremental.state.backupId, layers: incremental.state.layers, index: incremental.state.index, prefetch: incremental.state.prefetch };
        const p = parent;
        base = () => parentChainView(this.store, p, [chainIndexPath(incremental), mountIndexPath(incremental)]);
        layer = await this.writeLayer(dir, async (w) => {
          const r = await captureUpper({ upper: incremental.upper, merged: dir }, previous, w, { onWarning: (m) => this.warn(m) });
          captured = r.captured;
          return r.changed;
        }, onFinished);
      } else if (options.parent !== undefined) {
        // A plain directory against a parent backup: only the differences from its merged view.
        const rec = await this.resolve(options.parent);
        const tocs = await Promise.all(rec.manifest.layers.map((l) => fetchToc(this.store, l)));
        const view = buildView(tocs);
        parent = { id: rec.manifest.id, layers: rec.manifest.layers, index: rec.manifest.index, prefetch: rec.manifest.prefetch };
        const layers = rec.manifest.layers;
        // The diff only reads the view; the index stacks the new layer on it afterwards.
        base = async () => ({ view, layers: layers.map((l, i) => ({ digest: l.digest, prefetch: tocs[i]?.prefetch })) });
        layer = await this.writeLayer(dir, (w) =>
          captureDiff(dir, view, new Date(rec.manifest.createdAt), w, { onWarning: (m) => this.warn(m) }),
          onFinished,
        );
      } else {
        layer = await this.writeLayer(dir, async (w) => {
          const onProgress = (p: { entries: number; bytes: number }): void => this.opts.onProgress?.({ phase: 'capture', ...p });
          const capture = new TreeCapture(w, { onWarning: (m) => this.warn(m), onProgress });
          // The walk, reads, hashes and frames on C threads where the layer's codec allows it.
          await capture.captureAll(
            dir,
            nativeCaptureFor(w) ? (root, tree) => captureTreeNative(root, tree, w, { onWarning: (m) => this.warn(m), onProgress: (entries, bytes) => onProgress({ entries, bytes }) }) : undefined,
          );
          return 1;
        }, onFinished);
      }
      tr.step('layer written and uploaded');
      let layers = [...(parent?.layers ?? []), ...(layer ? [layer.desc] : [])];
      // The restore index of the new chain: what a lazy restore mounts without reading a TOC.
      let index: { raw: Buffer; desc: IndexDescriptor } | undefined;
      let kept: IndexDescriptor | undefined;
      if (layers.length > this.maxChain) {
        const merged = await this.mergeChain(layers, layer);
        layers = merged.layers;
        index = await this.putIndex(merged.index);
      } else if (layer) ({ index, kept } = await (indexing ?? this.stackedIndex(parent, base, layer)));
      // Nothing changed (no layer, no merge): the chain, and so its index, is the parent's (below);
      // the workspace keeps its chain.index.
      tr.step(`restore index built and stored (${index ? `${index.raw.length} bytes, ${index.desc.size} compressed` : kept ? "the parent's, with a tail" : 'none'})`);
      const prefetch = await this.prefetchOf(layers, incremental, parent);
      const createdAt = new Date();
      const manifest: Manifest = {
        kind: 'strata.backup.manifest',
        version: 1,
        id: uuidv7(),
        dir,
        createdAt: createdAt.toISOString(),
        expiresAt: ttl === null || ttl === Infinity ? null : new Date(createdAt.getTime() + ttl * 1000).toISOString(),
        layers,
      };
      if (name !== undefined) manifest.name = name;
      if (parent) manifest.parent = parent.id;
      if (prefetch) manifest.prefetch = prefetch;
      if (index) manifest.index = index.desc;
      else if (kept) manifest.index = kept;
      else if (parent?.index && !layer) manifest.index = parent.index;
      // Written last: the backup exists once this lands, and not before.
      const [digest] = await Promise.all([putManifest(this.store, manifest), layer?.located]);
      if (incremental && captured) await this.workspaces.commit(incremental, { backupId: manifest.id, layers, captured, index, prefetch, ...(kept ? { kept } : {}) });
      return handleOf(manifest, digest);
    } catch (err) {
      // A failed backup is BACKUP_CREATE_FAILED whatever failed (a store write, a read); the
      // underlying error (e.g. STORE_ERROR) stays reachable as the cause.
      if (err instanceof BackupCreateError || err instanceof InvalidBackupConfigError || err instanceof BackupNotFoundError || err instanceof BackupExpiredError) throw err;
      throw new BackupCreateError(`backup of ${dir} failed: ${(err as Error).message}`, { cause: err });
    } finally {
      await release?.();
    }
  }

  /** Longest layer chain a backup leaves; longer chains are merged (see docs/design.md). */
  get maxChain(): number {
    return this.opts.maxChain ?? DEFAULT_MAX_CHAIN;
  }

  /**
   * The new chain's prefetch record: what the workspace read first since its restore (its refs
   * mapped onto the new chain by layer digest; a ref into a layer merged away is dropped), else
   * the parent's when the chain under it is unchanged (a backup that read nothing new keeps it).
   */
  private async prefetchOf(
    layers: LayerDescriptor[],
    ws: Workspace | undefined,
    parent: { layers: LayerDescriptor[]; prefetch?: PrefetchDescriptor | undefined } | undefined,
  ): Promise<PrefetchDescriptor | undefined> {
    const rec = await ws?.loadFirstReads();
    if (rec) {
      const pos = new Map(layers.map((l, i) => [l.digest, i]));
      const refs: PrefetchRef[] = [];
      for (const [li, blobOffset, blobLength] of rec.refs) {
        const layer = pos.get(rec.layers[li]!);
        if (layer !== undefined && blobOffset + blobLength <= layers[layer]!.size) refs.push({ layer, blobOffset, blobLength });
      }
      if (refs.length > 0) {
        const { blob, desc } = await packPrefetch(encodePrefetch(refs));
        if (desc.inline === undefined) await this.putBlob(blobKey(desc.digest), blob);
        return desc;
      }
    }
    const same = parent && parent.layers.every((l, i) => layers[i]?.digest === l.digest);
    return same ? parent.prefetch : undefined;
  }

  /** Put a small content-addressed blob, or only refresh it (gc's grace) when the store has it. */
  private async putBlob(key: string, blob: Buffer): Promise<void> {
    if (await this.store.head(key)) await this.store.touch(key);
    else await this.store.putBytes(key, blob);
  }

  /**
   * The restore index of `layer` stacked on the parent chain (`base`: its view), uploaded; none
   * when a small layer over an indexed chain joins that index's tail (kept). Reads only the
   * layer's digest and TOC, so it may run while the layer is still being uploaded.
   */
  private async stackedIndex(parent: { layers: LayerDescriptor[]; index?: IndexDescriptor | undefined } | undefined, base: (() => Promise<ChainView>) | undefined, layer: Written): Promise<StackedIndex> {
    const kept = parent ? keptIndex(parent, layer.desc) : undefined;
    if (kept) return { kept };
    const view = base ? await base() : { view: buildView([]), layers: [] };
    return { index: await this.putIndex(stackLayer(view, layer.desc, layer.toc)) };
  }

  /**
   * Compress an encoded index and put its blob (content-addressed: an index already stored is only
   * refreshed for gc's grace). A small one rides inline in the manifest and is not uploaded.
   */
  private async putIndex(raw: Buffer): Promise<{ raw: Buffer; desc: IndexDescriptor }> {
    const { blob, desc } = await packIndex(raw, indexPageSize());
    if (desc.inline === undefined) await this.putBlob(blobKey(desc.digest), blob);
    return { raw, desc };
  }

  /**
   * Write one layer with `fill`, upload it (unless the store has it) and describe it. Returns
   * null when fill reports no change: an unchanged workspace adds no layer.
   */
  private async writeLayer(dir: string, fill: (w: LayerWriter) => Promise<number>, onFinished?: (layer: Written) => void): Promise<Written | null> {
    const tmpDir = join(this.home, 'tmp');
    await mkdir(tmpDir, { recursive: true, mode: 0o700 });
    await sweepDeadTemps(tmpDir);
    // The writer's pid in the name lets a later backup remove it if this process is killed.
    const tmp = join(tmpDir, `layer-${process.pid}-${randomBytes(8).toString('hex')}.tmp`);
    const codec = codecFor(this.opts.codec ?? DEFAULT_CODEC, this.opts.level);
    const writer = await LayerWriter.create(tmp, codec, this.opts.frameBound === undefined ? {} : { frameBound: this.opts.frameBound });
    // A remote store gets the layer while it is captured, under a staging key (its digest is
    // known only at the end), and the layer stays there: the manifest names it (`key`), since a
    // rename is a server-side copy of the whole blob. gc removes a staging object or upload a
    // killed backup left (it lies under blobs/ and nothing names it).
    const streamed = this.store.streamsUploads && this.store.putStream ? this.startUpload(writer) : undefined;
    try {
      const changed = await fill(writer);
      const layer = await writer.finish();
      if (changed === 0) {
        if (streamed) {
          await this.uploaded(streamed, layer.size);
          await this.store.delete(streamed.key);
        }
        return null;
      }
      const desc: LayerDescriptor = {
        digest: layer.digest,
        size: layer.size,
        codec: codec.name,
        tocOffset: layer.tocOffset,
        tocLength: layer.tocLength,
        tocSize: layer.tocSize,
        tocDigest: layer.tocDigest,
        entries: layer.entries,
        dataBytes: layer.dataBytes,
      };
      // The content is final: what depends only on it (the restore index) starts now.
      onFinished?.({ desc, toc: layer.toc });
      const key = blobKey(layer.digest);
      let located: Promise<void> | undefined;
      if (streamed) {
        // The store's checks for an earlier copy need not wait for the upload's last parts.
        const [have, prior] = await Promise.all([this.store.head(key), this.readLocator(layer.digest), this.uploaded(streamed, layer.size)]);
        // Content-addressed: a blob already stored is kept, only refreshed for gc's grace; else
        // the upload stays where it landed (a rename would copy it server side).
        if (have) await Promise.all([this.store.touch(key), this.store.delete(streamed.key)]);
        else {
          ({ key: desc.key, located } = await this.locate(layer.digest, layer.size, streamed.key, prior));
        }
      } else if (await this.store.head(key)) await this.store.touch(key);
      else {
        await this.store.putFile(key, tmp, {
          onProgress: (bytes) => this.opts.onProgress?.({ phase: 'upload', bytes, totalBytes: layer.size }),
          move: true, // removed in finally either way
        });
      }
      return { desc, toc: layer.toc, ...(located ? { located } : {}) };
    } catch (err) {
      await writer.abort();
      if (streamed) {
        // The aborted writer fails the stream, the upload removes its parts; a staging object
        // that landed anyway is deleted (or left to gc if the store is down).
        await streamed.done.catch(() => undefined);
        await this.store.delete(streamed.key).catch(() => undefined);
      }
      if (err instanceof BackupCreateError) throw err;
      throw new BackupCreateError(`backup of ${dir} failed: ${(err as Error).message}`, { cause: err });
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /**
   * Where the blob of a streamed upload lives from now on: a staging object holding the same
   * content already (named by its locator, and still there at this size) is kept and ours
   * deleted; else ours, with a locator naming it for the next backup of the same content.
   */
  private async locate(digest: string, size: number, uploaded: string, prior: string | undefined): Promise<{ key: string; located?: Promise<void> }> {
    const loc = locatorKey(digest);
    if (prior !== undefined && prior !== uploaded && STAGED_KEY_RE.test(prior) && (await this.store.head(prior))?.size === size) {
      // Refreshed for gc's grace, as a reused digest-named blob is.
      await Promise.all([this.store.touch(prior), this.store.touch(loc), this.store.delete(uploaded)]);
      return { key: prior };
    }
    // Written alongside the manifest, not before it: a locator only saves a later backup an
    // upload, so one that does not land costs that, and the backup stands.
    const located = this.store.putBytes(loc, Buffer.from(uploaded)).catch((err: Error) => {
      this.warn(`the locator of layer ${digest} was not stored (a later backup of the same content uploads it again): ${err.message}`);
    });
    return { key: uploaded, located };
  }

  /** The staging key a locator names, if there is one. */
  private async readLocator(digest: string): Promise<string | undefined> {
    try {
      return (await this.store.getBytes(locatorKey(digest))).toString();
    } catch (err) {
      if (err instanceof ObjectNotFoundError) return undefined;
      throw err;
    }
  }

  /**
   * Wait for a streamed upload. When CompleteMultipartUpload was applied but its answer lost, the
   * SDK's retry finds no such upload and fails: an object of the layer's size under the staging
   * key (random, ours alone) is that upload, landed.
   */
  private async uploaded(streamed: { key: string; done: Promise<void> }, size: number): Promise<void> {
    try {
      await streamed.done;
    } catch (err) {
      const landed = await this.store.head(streamed.key).catch(() => null);
      if (landed?.size !== size) throw err;
    }
  }

  /** Upload the writer's blob as it grows, to a staging key. */
  private startUpload(writer: LayerWriter): { key: string; done: Promise<void> } {
    const key = `blobs/staging/${process.pid}-${randomBytes(12).toString('hex')}`;
    const done = this.store.putStream!(key, writer.tail(), {
      onProgress: (bytes) => this.opts.onProgress?.({ phase: 'upload', bytes, totalBytes: Math.max(bytes, writer.size) }),
    });
    done.catch(() => undefined); // awaited by writeLayer
    return { key, done };
  }

  /**
   * Merge the top half of a chain into one layer. Halving (rather than folding just the newest
   * layer in) means the merged data is re-uploaded once per maxChain/2 backups, not every time.
   * Returns the new chain and its restore index (built from the TOCs, which the merge reads anyway).
   */
  private async mergeChain(layers: LayerDescriptor[], newest: Written | null): Promise<{ layers: LayerDescriptor[]; index: Buffer }> {
    const split = Math.max(1, Math.floor(this.maxChain / 2));
    const keep = layers.slice(0, split);
    const top = layers.slice(split);
    const all = await Promise.all(layers.map((l) => (newest && l === newest.desc ? newest.toc : fetchToc(this.store, l))));
    const view = buildView(all);
    const find = (p: string): TocEntry | undefined => {
      let n: ViewNode | undefined = view;
      for (const part of p.split('/')) n = n?.children?.get(part);
      return n?.entry;
    };
    const merged = await this.writeLayer('(merged layers)', (w) => squashLayers(this.store, top, all.slice(split), w, find));
    await merged?.located; // the backup's own layer's locator is awaited with the manifest; this one here
    const out = merged ? [...keep, merged.desc] : keep;
    const tocs = merged ? [...all.slice(0, split), merged.toc] : all.slice(0, split);
    return { layers: out, index: encodeIndex(buildView(tocs), out.map((l, i) => ({ digest: l.digest, prefetch: tocs[i]?.prefetch }))) };
  }

  /** Find the manifest a reference names, verified against the handle's digest when there is one. */
  async resolve(ref: BackupRef): Promise<ManifestRecord> {
    if (typeof ref === 'object') {
      const h = parseHandle(ref);
      return getManifest(this.store, h.id, h.manifestDigest || undefined);
    }
    if (typeof ref !== 'string' || ref.length === 0) throw new InvalidBackupConfigError('a backup reference must be a handle, an id or a name');
    let isId = true;
    try {
      checkId(ref);
    } catch (err) {
      if (!(err instanceof InvalidBackupConfigError)) throw err;
      isId = false;
    }
    if (isId) {
      // One GET: an id that names no manifest may still be a name.
      try {
        return await getManifest(this.store, ref);
      } catch (err) {
        if (!(err instanceof BackupNotFoundError)) throw err;
      }
    }
    return resolveName(this.store, checkName(ref));
  }

  async restoreBackup(ref: BackupRef, options: RestoreOptions = {}): Promise<RestoreResult> {
    const t0 = performance.now();
    const tr = span('restore');
    const mode = options.mode ?? this.opts.mode ?? (await defaultMode());
    if (mode !== 'lazy' && mode !== 'extract' && mode !== 'copy') {
      throw new InvalidBackupConfigError(`unknown restore mode ${String(mode)}; supported: lazy, extract, copy`);
    }
    // The presigner that makes the URLs strata-fuse fetches an s3:// store's layers with loads
    // while the manifest and index download. (A cold host's restore daemon is started once the
    // view is mounted: the restore does not wait for it.)
    if (mode === 'lazy') this.store.warmPresign?.();
    const { manifest: m } = await this.resolve(ref);
    tr.step('manifest');
    if (isExpired(m)) throw new BackupExpiredError(`backup ${m.id} expired at ${m.expiresAt}`);
    // A handle's own dir is the caller's; the manifest's is the store's (unverified without a digest).
    const dir = resolve(checkDir(options.dir ?? (typeof ref === 'object' ? ref.dir : m.dir), 'restore dir'));
    const result = (extra: { recovered?: boolean; mode?: RestoreMode; entries?: number } & Partial<ExtractStats> = {}): RestoreResult => ({
      success: true,
      dir,
      id: m.id,
      mode: extra.mode ?? mode,
      ...(extra.recovered !== undefined ? { recovered: extra.recovered } : {}),
      stats: { entries: extra.entries ?? m.layers.reduce((n, l) => n + l.entries, 0), bytes: extra.bytes ?? 0, requests: extra.requests ?? 0, layers: m.layers.length, ms: performance.now() - t0 },
    });
    let bodies: EarlyBodies | undefined;
    try {
      if (mode === 'copy') {
        await this.workspaces.refuseMountedWorkspace(dir);
        const tocs = await Promise.all(m.layers.map((l) => fetchToc(this.store, l)));
        const stats = await extractView(this.store, m.layers, buildView(tocs), dir, {
          force: !!options.force,
          onWarning: (w) => this.warn(w),
          onProgress: (p) => this.opts.onProgress?.({ phase: 'restore', ...p }),
        });
        return result(stats);
      }
      // Lazy: the index alone (no TOC). Extract: the TOCs unpack the layers, the index gives the
      // workspace the base of its next backup; both are fetched at once.
      // Extract from a remote store: the layers' data downloads start now, with their TOCs.
      bodies = mode === 'extract' ? await EarlyBodies.start(this.store, this.home, m.layers) : undefined;
      const tocsP = mode === 'extract' ? Promise.all(m.layers.map((l) => fetchToc(this.store, l))) : undefined;
      // Lazy: the prefetch record too, in parallel (a bad one costs its prefetch only).
      // Lazy from a paged index: its head (in the manifest) is all the mount needs; strata-fuse
      // loads the pages.
      const paged = mode === 'lazy' && m.index?.head !== undefined ? pagedIndex(m) : undefined;
      // From a remote store, the pages its mount needs (the seed), fetched from now on.
      const seed = paged && indexRemote(this.store) ? fetchIndexSeed(this.store, paged.head).catch(() => undefined) : undefined;
      // A manifest's own index does not need the TOCs: fetched alongside them.
      const [{ raw, index, layers: indexed }, prefetch, tocs] = await Promise.all([
        paged ?? (m.index || !tocsP ? loadIndex(this.store, m) : tocsP.then((t) => loadIndex(this.store, m, t))),
        mode === 'lazy' && m.prefetch
          ? fetchPrefetch(this.store, m.prefetch, m.layers).catch((err: Error) => {
              this.warn(`the prefetch record of backup ${m.id} is not used: ${err.message}`);
              return undefined;
            })
          : undefined,
        tocsP,
      ]);
      tr.step(raw ? `index (${raw.length} bytes)` : 'index head');
      const r = await this.workspaces.prepare({
        backupId: m.id,
        layers: m.layers,
        store: this.store,
        dir,
        mode,
        force: !!options.force,
        index: { raw, head: paged?.head, root: paged?.head.root ?? index!.rootEntry(), desc: m.index, layers: indexed },
        ...(m.prefetch ? { prefetch: { desc: m.prefetch, ...(prefetch ? { raw: prefetch } : {}) } } : {}),
        ...(tocs ? { tocs } : {}),
        ...(bodies ? { bodies } : {}),
        ...(seed ? { seed } : {}),
      });
      tr.step('workspace mounted');
      return result(r);
    } catch (err) {
      if (err instanceof StrataError) throw err;
      throw new BackupRestoreError(`restore of backup ${m.id} into ${dir} failed: ${(err as Error).message}`, { cause: err });
    } finally {
      bodies?.close();
    }
  }

  /** Workspaces on this host (or the one at dir): what they came from and what is unsaved. */
  status(dir?: string): Promise<WorkspaceStatus[]> {
    return this.workspaces.status(dir === undefined ? undefined : resolve(dir));
  }

  /** Take a workspace down. Its unsaved changes are kept (restore brings them back) unless discard. */
  unmount(dir: string, options: { discard?: boolean } = {}): Promise<{ dir: string; kept: boolean }> {
    return this.workspaces.unmount(resolve(dir), options);
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

  /**
   * Collect the store (expired backups, unreferenced blobs), then this host's layer directories
   * that no workspace mounts, past the same grace period (a restore unpacking one right now has
   * not recorded its workspace yet).
   */
  async gc(options: GcOptions = {}): Promise<GcReport & { layerDirs: string[] }> {
    const report = await gc(this.store, options);
    const grace = options.graceMs ?? DEFAULT_GRACE_MS;
    const now = options.now ?? Date.now();
    const used = await this.workspaces.mountedLayers();
    const layerDirs: string[] = [];
    let hexes: string[] = [];
    try {
      hexes = await readdir(join(this.home, 'layers'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const hex of hexes) {
      // Staging directories of unpacks killed midway (.fs.strata-*): never a layer, removed
      // past the grace period, even beside a layer in use.
      for (const name of await readdir(join(this.home, 'layers', hex)).catch(() => [] as string[])) {
        if (!name.startsWith('.fs.strata-')) continue;
        const sst = await lstat(join(this.home, 'layers', hex, name)).catch(() => null);
        if (sst && sst.mtimeMs <= now - grace && !options.dryRun) await rm(join(this.home, 'layers', hex, name), { recursive: true, force: true });
      }
      if (used.has(hex)) continue;
      const st = await lstat(join(this.home, 'layers', hex)).catch(() => null);
      if (!st || st.mtimeMs > now - grace) continue;
      layerDirs.push(hex);
      if (!options.dryRun) await removeLayerDir(this.home, 'sha256:' + hex);
    }
    return { ...report, layerDirs };
  }
}
