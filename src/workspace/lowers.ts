/**
 * The seam below a workspace: what provides its read-only lower directories. Extract unpacks each
 * layer once per host into a layer directory; lazy asks the restore daemon to serve the workspace's
 * restore index with strata-fuse. The workspace service calls only this interface.
 */
import { headDescriptor, type IndexHead } from '../format/restore-index.js';
import { fetchIndexSeed, loadIndex, readHeadFile, readIndexFile } from '../restore/index-source.js';
import { relative } from 'node:path';
import { BackupRestoreError } from '../errors.js';
import type { Toc, TocEntry } from '../format/toc.js';
import { topRoot } from '../format/view.js';
import { span } from '../util/trace.js';
import { ensureLayerDirs } from '../restore/layers.js';
import type { EarlyBodies } from '../restore/early-body.js';
import { access, mkdir, rm, writeFile } from 'node:fs/promises';
import { daemonRequest, ensureDaemon, listening } from '../restore/lazy/client.js';
import { hydratedPath, isServerOf, readServerRecord, serveDetached, serverRecordPath } from '../restore/lazy/detached.js';
import { type IndexBlob, indexRemote, presignSources, servesAlone, type PresignedSource, serverFetchOptions, unmountPath, writeIndexFile } from '../restore/lazy/mount.js';
import { daemonLog, fetchSocket, hostCacheDir, runDir } from '../restore/lazy/protocol.js';
import { mountAt } from '../restore/overlay.js';
import { fetchIndex } from '../store/blobs.js';
import type { ObjectStore } from '../store/store.js';
import { lowerDir, mountHeadPath, mountIndexPath, mountSeedPath, prefetchPath, type Workspace, type WorkspaceMode } from './workspace.js';

/** What mounting a workspace's lowers gives the overlay. */
export interface MountedLowers {
  /** Overlay lowerdir entries, top first, relative to home. */
  lowers: string[];
  /** The chain's root entry when a layer of its tail (above the index) has one. */
  tailRoot?: TocEntry | undefined;
}

export interface Lowers {
  readonly mode: WorkspaceMode;
  /**
   * Make the workspace's lowers available. `fresh`: its index was written just now from a
   * verified blob (no need to check it).
   */
  mount(ws: Workspace, store: ObjectStore, opts?: { tocs?: Toc[] | undefined; bodies?: EarlyBodies | undefined; seed?: Promise<Buffer | undefined> | undefined; fresh?: boolean }): Promise<MountedLowers>;
  /** Take down what mount made for this workspace (a dead FUSE mount too). */
  unmount(ws: Workspace): Promise<void>;
}

/** Layer directories, unpacked once per host and shared by every workspace using the layer. */
export class ExtractLowers implements Lowers {
  readonly mode = 'extract' as const;
  constructor(
    private readonly home: string,
    private readonly warn: (msg: string) => void,
  ) {}

  async mount(ws: Workspace, store: ObjectStore, opts: { tocs?: Toc[] | undefined; bodies?: EarlyBodies | undefined } = {}): Promise<MountedLowers> {
    const { lowers } = await ensureLayerDirs(store, this.home, ws.state.mounted, { ...(opts.tocs ? { tocs: opts.tocs } : {}), ...(opts.bodies ? { bodies: opts.bodies } : {}), onWarning: this.warn });
    return { lowers, tailRoot: opts.tocs ? topRoot(opts.tocs.slice(ws.viewed.length)) : undefined };
  }

  async unmount(): Promise<void> {
    // Layer directories are shared; gc removes the unused ones.
  }
}

/**
 * One FUSE view of the chain its index covers, served by the host's restore daemon from
 * mount.index; the chain's tail (small layers above the index) unpacked whole into layer
 * directories over it, fetched while the view mounts.
 */
/** How long a cold host's daemon waits before it boots, after a restore mounted a view. */
const DAEMON_DEFER_MS = 250;

export class LazyLowers implements Lowers {
  readonly mode = 'lazy' as const;
  constructor(
    private readonly home: string,
    private readonly opts: { hydrate: boolean; cacheSize?: number | undefined },
    private readonly warn: (msg: string) => void = () => undefined,
  ) {}

  get daemonEnv(): Record<string, string> {
    return this.opts.cacheSize ? { STRATA_CACHE_SIZE: String(this.opts.cacheSize) } : {};
  }

  async mount(ws: Workspace, store: ObjectStore, opts: { fresh?: boolean; seed?: Promise<Buffer | undefined> | undefined } = {}): Promise<MountedLowers> {
    const tail = ws.tail.length ? ensureLayerDirs(store, this.home, ws.tail, { whole: true, onWarning: this.warn }) : undefined;
    // Awaited below; a failure must not surface as an unhandled rejection meanwhile.
    tail?.catch(() => undefined);
    // The URLs strata-fuse fetches remote layers with, made here with the store this process has
    // loaded: the daemon need not load the AWS SDK before it can mount.
    const tr = span('lazy lowers');
    const head = await this.viewIndex(ws, store, !!opts.fresh);
    tr.step('index head');
    const indexBlob = head ? { digest: head.blobDigest, size: head.blobSize } : undefined;
    // A remote paged index: its first pages, fetched now with this process's store while the
    // rest is prepared, so strata-fuse mounts without a fetch of its own.
    const seed = head && indexRemote(store) ? this.writeSeed(ws, opts.seed ?? fetchIndexSeed(store, head)).finally(() => tr.step('index seed written')) : undefined;
    const presigned = await presignSources(store, ws.viewed, undefined, indexBlob).catch((err: Error) => {
      this.warn(`cannot presign the layers of ${ws.state.dir} here (the restore daemon will): ${err.message}`);
      return undefined;
    });
    tr.step('presigned');
    if (presigned && this.servesAlone(store, ws, presigned, indexBlob)) {
      try {
        await this.serveHere(ws, store, presigned, head, await seed);
      } finally {
        if (seed) await rm(mountSeedPath(ws), { force: true });
      }
    } else {
      void seed?.then(() => rm(mountSeedPath(ws), { force: true }).catch(() => undefined));
      // The daemon's strata-fuse serves from the whole index: a paged one is fetched whole first.
      if (head) await this.wholeIndex(ws, store, head);
      // The layers' URLs only: the daemon's strata-fuse reads the whole index from its file.
      const layerUrls = presigned?.filter((p) => p.layer < ws.viewed.length);
      const r = await daemonRequest(this.home, { op: 'mount', workspace: ws.state.id, hydrate: this.opts.hydrate, ...(layerUrls?.length ? { sources: layerUrls } : {}) }, { start: true, env: this.daemonEnv });
      if (!r?.ok) throw new BackupRestoreError(`lazy mount of ${ws.state.dir} failed: ${r ? r.error : 'no daemon'} (daemon log: ${daemonLog(this.home)})`);
    }
    const view = relative(this.home, lowerDir(ws));
    if (!tail) return { lowers: [view] };
    const t = await tail;
    return { lowers: [...t.lowers, view], tailRoot: topRoot(t.tocs ?? []) };
  }

  /** strata-fuse serves the view alone (servesAlone); STRATA_DETACHED=0 keeps the daemon mounting it. */
  private servesAlone(store: ObjectStore, ws: Workspace, presigned: PresignedSource[], indexBlob?: IndexBlob): boolean {
    return process.env.STRATA_DETACHED !== '0' && servesAlone(store, ws.viewed, presigned, undefined, indexBlob);
  }

  /**
   * Mount the view with a strata-fuse started here, detached (restore/lazy/detached.ts): the
   * workspace is usable before a cold host's daemon has booted. The daemon adopts it: at once
   * when it listens, else from its start-up scan.
   */
  /** The seed file of a paged index (fetchIndexSeed); undefined when it cannot be had (strata-fuse fetches the pages). */
  private async writeSeed(ws: Workspace, seed: Promise<Buffer | undefined>): Promise<string | undefined> {
    try {
      const bytes = await seed;
      if (!bytes) return undefined;
      const path = mountSeedPath(ws);
      await writeFile(path, bytes, { mode: 0o600 });
      return path;
    } catch {
      return undefined;
    }
  }

  private async serveHere(ws: Workspace, store: ObjectStore, presigned: PresignedSource[], head?: IndexHead, seedPath?: string): Promise<void> {
    const mountpoint = lowerDir(ws);
    if (await mountAt(mountpoint)) await unmountPath(mountpoint); // a dead mount left by a crashed server
    await mkdir(mountpoint, { recursive: true });
    await mkdir(runDir(this.home), { recursive: true, mode: 0o700 });
    await mkdir(hostCacheDir(this.home), { recursive: true, mode: 0o700 });
    const record = await access(prefetchPath(ws)).then(() => true, () => false);
    await serveDetached({
      store,
      layers: ws.viewed,
      indexPath: mountIndexPath(ws),
      ...(head ? { headPath: mountHeadPath(ws), indexBlob: { digest: head.blobDigest, size: head.blobSize }, seedPath } : {}),
      mountpoint,
      cacheDir: hostCacheDir(this.home),
      socketPath: fetchSocket(this.home),
      dir: ws.root,
      logPath: daemonLog(this.home),
      hydrate: this.opts.hydrate,
      presigned,
      ...(record ? { prefetchPath: prefetchPath(ws) } : {}),
      fetcherOptions: serverFetchOptions(),
    });
    // No daemon yet (a cold host): start one after the mount, its boot (~0.1 s of CPU and disk)
    // deferred past the first reads; its start-up scan adopts the view.
    if (!(await listening(this.home))) {
      await ensureDaemon(this.home, this.daemonEnv, { deferMs: DAEMON_DEFER_MS }).catch((err: Error) => this.warn(`cannot start the restore daemon (the view is served, but not renewed nor reported until one runs): ${err.message}`));
      return;
    }
    const r = await daemonRequest(this.home, { op: 'adopt', workspace: ws.state.id }, { start: true, env: this.daemonEnv });
    if (!r?.ok) this.warn(`the restore daemon did not take over ${ws.state.dir} (it is served, but not renewed nor reported): ${r ? r.error : 'no daemon'} (daemon log: ${daemonLog(this.home)})`);
  }

  /**
   * The index the view is served from: the whole one (mount.index; undefined is returned), or the
   * head of a paged one (mount.head), whose strata-fuse loads the pages. A fresh workspace has the
   * one its restore wrote. Otherwise mount.index wins when it describes the mounted chain (a
   * strata-fuse wrote it once it had every page); a copy that is missing, torn (it is written
   * unsynced) or from an older strata, with no usable head, is rebuilt from the chain's TOCs.
   */
  private async viewIndex(ws: Workspace, store: ObjectStore, fresh: boolean): Promise<IndexHead | undefined> {
    const head = (): Promise<IndexHead | undefined> => readHeadFile(mountHeadPath(ws), ws.viewed);
    if (fresh) return head();
    if (await readIndexFile(mountIndexPath(ws), ws.viewed)) return undefined;
    const h = await head();
    if (h) return h;
    const { raw } = await loadIndex(store, { layers: ws.viewed });
    await writeIndexFile(raw, mountIndexPath(ws), { sync: false });
    return undefined;
  }

  /** A paged index fetched whole (verified) into mount.index, for a view the daemon serves. */
  private async wholeIndex(ws: Workspace, store: ObjectStore, head: IndexHead): Promise<void> {
    const raw = await fetchIndex(store, headDescriptor(head));
    await writeIndexFile(raw, mountIndexPath(ws), { sync: false });
  }

  async unmount(ws: Workspace): Promise<void> {
    const r = await daemonRequest(this.home, { op: 'unmount', workspace: ws.state.id }).catch(() => null);
    // No daemon: unmount by hand (a detached strata-fuse leaves once its mount is gone).
    if (!r) await unmountPath(lowerDir(ws));
    await rm(serverRecordPath(ws.root), { force: true });
    await rm(hydratedPath(ws.root), { force: true });
  }

  /**
   * What a view its detached strata-fuse serves shows without asking a daemon (a cold host's,
   * still booting): its chunk count from the index, all of them local once strata-fuse wrote its
   * hydrated marker (or when no layer is remote), none before. Undefined: no live server.
   */
  async detachedStatus(ws: Workspace): Promise<{ chunks: number; cached: number; hydrating: boolean } | undefined> {
    const rec = await readServerRecord(ws.root);
    if (!rec || !(await isServerOf(rec.pid, rec.mountpoint))) return undefined;
    const chunks = (await readHeadFile(mountHeadPath(ws), ws.viewed))?.chunkCount ?? (await readIndexFile(mountIndexPath(ws), ws.viewed))?.chunkCount;
    if (chunks === undefined) return undefined;
    const whole = rec.remote.length === 0 || (await access(hydratedPath(ws.root)).then(() => true, () => false));
    return { chunks, cached: whole ? chunks : 0, hydrating: !whole && rec.hydrate };
  }
}
