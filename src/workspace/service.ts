/**
 * The workspace service: the lifecycle of restored directories, with the containerd snapshotter's
 * verbs. prepare (a workspace of a backup at a directory: lowers, upper, overlay), commit (record
 * the backup just taken of it), mounts (bring a workspace's mounts back), remove (take it down, and
 * drop it), status. What lies below the upper comes from a Lowers implementation: extract (layer
 * directories) or lazy (the restore daemon); nothing else here knows the difference.
 */
import type { EarlyBodies } from '../restore/early-body.js';
import { link, lstat, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TargetNotEmptyError, UnsavedChangesError, WorkspaceNotFoundError } from '../errors.js';
import type { Captured } from '../capture/upper.js';
import type { LayerDescriptor } from '../format/reader.js';
import type { PrefetchDescriptor } from '../format/prefetch.js';
import type { IndexDescriptor, IndexHead } from '../format/restore-index.js';
import type { Toc, TocEntry } from '../format/toc.js';
import { daemonRequest, ensureDaemon, listening } from '../restore/lazy/client.js';
import type { FetcherStats } from '../restore/lazy/fetcher.js';
import { writeIndexFile } from '../restore/lazy/mount.js';
import { mountAt, mountOverlay, unmount } from '../restore/overlay.js';
import { checkTarget, swapInto } from '../restore/target.js';
import type { ObjectStore } from '../store/store.js';
import { span } from '../util/trace.js';
import { ExtractLowers, LazyLowers, type Lowers } from './lowers.js';
import { chainIndexPath, findWorkspace, listWorkspaces, mountHeadPath, mountIndexPath, prefetchPath, Workspace, type WorkspaceMode } from './workspace.js';

export interface WorkspaceStatus {
  /** Lazy workspaces: what the restore daemon reports. */
  lazy?: {
    served: boolean;
    chunks: number;
    /** Chunks of this workspace in the host cache: hydration progress. */
    cached: number;
    hydrating: boolean;
    errors: string[];
    /** Host-wide fetch counters (bytes fetched, hits, misses...). */
    fetcher?: FetcherStats;
  };
  dir: string;
  workspace: string;
  backupId: string;
  mode: string;
  layers: number;
  mounted: boolean;
  unsavedEntries: number;
  unsavedBytes: number;
  store: string;
}

/** What prepare needs of the backup: its id and chain, and where its lowers come from. */
export interface PrepareSpec {
  backupId: string;
  layers: LayerDescriptor[];
  store: ObjectStore;
  dir: string;
  mode: WorkspaceMode;
  force: boolean;
  /**
   * The chain's restore index (bytes) and its descriptor, when the manifest has one, and how many
   * layers of the chain it covers (the rest is the chain's tail).
   */
  index: { raw?: Buffer | undefined; head?: IndexHead | undefined; root: TocEntry; desc?: IndexDescriptor | undefined; layers: number };
  /** Extract: the layers' TOCs (layer directories are unpacked from them). */
  tocs?: Toc[];
  /** Extract from a remote store: the layers' data GETs, started early (restore/early-body.ts). */
  bodies?: EarlyBodies;
  /** Lazy from a remote store and a paged index: its seed, fetched since the manifest came. */
  seed?: Promise<Buffer | undefined>;
  /** The backup's prefetch record: its descriptor, and (lazy) its verified bytes. */
  prefetch?: { desc: PrefetchDescriptor; raw?: Buffer };
}

/**
 * The view's index as the restore has it: the whole index (mount.index), or a paged index's head
 * (mount.head), whose strata-fuse writes mount.index once it has every page.
 */
async function writeIndex(ws: Workspace, ix: PrepareSpec['index']): Promise<void> {
  if (ix.raw) {
    await rm(mountHeadPath(ws), { force: true });
    await writeIndexFile(ix.raw, mountIndexPath(ws), { sync: false });
  } else if (ix.head) {
    await rm(mountIndexPath(ws), { force: true });
    await writeIndexFile(ix.head.raw, mountHeadPath(ws), { sync: false });
  } else throw new Error('a restore needs the index or its head');
}

const sameLayers = (a: LayerDescriptor[], b: LayerDescriptor[]): boolean => a.length === b.length && a.every((l, i) => l.digest === b[i]!.digest);

export class WorkspaceService {
  private readonly lowers: Record<WorkspaceMode, Lowers>;

  constructor(
    readonly home: string,
    opts: { hydrate?: boolean; cacheSize?: number | undefined; onWarning?: (msg: string) => void } = {},
  ) {
    const warn = opts.onWarning ?? (() => undefined);
    this.lowers = { extract: new ExtractLowers(home, warn), lazy: new LazyLowers(home, { hydrate: opts.hydrate !== false, cacheSize: opts.cacheSize }, warn) };
  }

  /** The lazy seam's daemon environment (a cold restore starts the daemon early with it). */
  get daemonEnv(): Record<string, string> {
    return (this.lowers.lazy as LazyLowers).daemonEnv;
  }

  find(dir: string): Promise<Workspace | undefined> {
    return findWorkspace(this.home, dir);
  }

  /** A copy restore must not land on a mounted workspace. */
  async refuseMountedWorkspace(dir: string): Promise<void> {
    const ws = await this.find(dir);
    if (ws && (await ws.isMounted())) {
      throw new TargetNotEmptyError(`${dir} is a mounted workspace; run 'strata unmount ${dir}' before restoring a copy there`);
    }
  }

  /**
   * Make dir a workspace of the backup. A workspace of the same backup that went down (unmount,
   * crash, reboot) comes back with its upper (`recovered`); one with unsaved changes is refused
   * unless force; a non-empty plain directory is replaced only with force, once the new workspace
   * is mounted.
   */
  async prepare(spec: PrepareSpec): Promise<{ recovered: boolean; mode: WorkspaceMode }> {
    const { dir } = spec;
    const tr = span('prepare');
    let old = await this.find(dir);
    if (old && !(await lstat(join(old.root, 'captured.json')).then(() => true, () => false))) {
      // A restore killed before it finished (no baseline yet): its workspace never held anything
      // and its upper was never set up. Drop it rather than "recover" it.
      await this.takeDown(old).catch(() => undefined);
      await old.remove();
      old = undefined;
    }
    if (old) {
      if (!(await old.isMounted()) && old.state.backupId === spec.backupId) {
        // The index just fetched and verified replaces the local copy (unsynced, so a crash may
        // have torn it) when it describes the mounted chain; after a backup of the workspace the
        // mounted chain is the one it was restored from, and the lazy seam checks its copy.
        if (sameLayers(old.state.mounted, spec.layers)) await writeIndex(old, spec.index);
        await this.mounts(old, spec.store);
        return { recovered: true, mode: old.state.mode };
      }
      const unsaved = await old.unsavedChanges();
      if (unsaved.entries > 0 && !spec.force) {
        throw new UnsavedChangesError(
          `${dir} is a workspace with ${unsaved.entries} unsaved change(s) (${unsaved.bytes} bytes) since backup ${old.state.backupId}; ` +
            `back it up first, or pass --force to discard them`,
        );
      }
      await this.remove(old);
    } else {
      const mi = await mountAt(dir);
      if (mi) throw new TargetNotEmptyError(`${dir} is a mount point (${mi.fstype}) that strata does not manage; restore elsewhere`);
    }
    const state = await checkTarget(dir, spec.force);
    tr.step('target checked');
    const ws = await Workspace.create(this.home, {
      dir,
      store: spec.store.url,
      mode: spec.mode,
      backupId: spec.backupId,
      layers: spec.layers,
      mounted: spec.layers,
      ...(spec.index.desc ? { index: spec.index.desc } : {}),
      ...(spec.index.layers < spec.layers.length ? { viewLayers: spec.index.layers } : {}),
      ...(spec.prefetch ? { prefetch: spec.prefetch.desc } : {}),
    });
    try {
      // One file, two names: mount.index is what the view serves, chain.index the base of the
      // next backup (replaced by rename when a backup moves the chain on).
      // Not synced: a torn copy after a crash is refused by strata-fuse and rewritten by the
      // restore that recovers the workspace; a torn chain.index makes the next backup read the
      // parent's index from the store instead.
      await writeIndex(ws, spec.index);
      if (spec.index.raw) await link(mountIndexPath(ws), chainIndexPath(ws));
      // Verified by the caller; strata-fuse and the daemon fetch its frames first.
      if (spec.prefetch?.raw) await writeFile(prefetchPath(ws), spec.prefetch.raw);
      tr.step('workspace created, index written');
      const { lowers, tailRoot } = await this.lowers[spec.mode].mount(ws, spec.store, { tocs: spec.tocs, bodies: spec.bodies, seed: spec.seed, fresh: true });
      tr.step('lowers mounted');
      await ws.initUpperRoot(tailRoot ?? spec.index.root);
      await swapInto(dir, state === 'replace' ? 'replace' : 'absent', async () => {
        await mkdir(dir, { recursive: true });
        await mountOverlay({ lowers, upper: ws.upper, work: ws.work, target: dir, cwd: this.home });
      });
      tr.step('overlay mounted');
      await ws.resetBaseline();
      tr.step('baseline');
    } catch (err) {
      await this.takeDown(ws).catch(() => undefined);
      await ws.remove();
      throw err;
    }
    return { recovered: false, mode: spec.mode };
  }

  /** Bring a workspace's mounts back (its lowers, then the overlay) after they went down. */
  async mounts(ws: Workspace, store: ObjectStore): Promise<void> {
    await this.takeDown(ws);
    const { lowers } = await this.lowers[ws.state.mode].mount(ws, store);
    await mkdir(ws.state.dir, { recursive: true });
    await mountOverlay({ lowers, upper: ws.upper, work: ws.work, target: ws.state.dir, cwd: this.home });
  }

  /**
   * Record a backup of the workspace: its chain moves on, the captured baseline and the chain's
   * index with it. Called once the backup's manifest is written.
   */
  async commit(
    ws: Workspace,
    c: { backupId: string; layers: LayerDescriptor[]; captured: Captured; index?: { raw: Buffer; desc: IndexDescriptor } | undefined; kept?: IndexDescriptor; prefetch?: PrefetchDescriptor | undefined },
  ): Promise<void> {
    ws.state.backupId = c.backupId;
    ws.state.layers = c.layers;
    if (c.prefetch) ws.state.prefetch = c.prefetch;
    else delete ws.state.prefetch;
    if (c.index) {
      await writeIndexFile(c.index.raw, chainIndexPath(ws));
      ws.state.index = c.index.desc;
    } else if (c.kept) {
      // The chain grew a tail over the same index: chain.index stays as it is.
      ws.state.index = c.kept;
    }
    await ws.saveCaptured(c.captured);
    await ws.save();
  }

  /** Unmount a workspace's overlay and its lowers (even dead ones); the upper stays. */
  async takeDown(ws: Workspace): Promise<void> {
    if (await ws.isMounted()) {
      try {
        await unmount(ws.state.dir);
      } catch {
        // Busy, or its lower is a dead FUSE mount: detach it.
        await unmount(ws.state.dir, { lazy: true });
      }
    }
    await this.lowers[ws.state.mode].unmount(ws);
  }

  /** Take a workspace down and drop it with its upper. */
  async remove(ws: Workspace): Promise<void> {
    await this.takeDown(ws);
    await ws.remove();
  }

  /** Take the workspace at dir down; its unsaved changes are kept (restore brings them back) unless discard. */
  async unmount(dir: string, options: { discard?: boolean } = {}): Promise<{ dir: string; kept: boolean }> {
    const ws = await this.find(dir);
    if (!ws) throw new WorkspaceNotFoundError(`${dir} is not a strata workspace`);
    if (options.discard) {
      await this.remove(ws);
      return { dir, kept: false };
    }
    await this.takeDown(ws);
    return { dir, kept: true };
  }

  /** Workspaces on this host (or the one at dir): what they came from and what is unsaved. */
  async status(dir?: string): Promise<WorkspaceStatus[]> {
    const all = dir ? [await this.find(dir)].filter((w): w is Workspace => !!w) : await listWorkspaces(this.home);
    if (dir && all.length === 0) throw new WorkspaceNotFoundError(`${dir} is not a strata workspace`);
    const out: WorkspaceStatus[] = [];
    const mountedNow = await Promise.all(all.map((w) => w.isMounted()));
    // A mounted lazy workspace and no daemon: one is starting (a restore on a cold host mounts
    // before its daemon listens), or died; either way the daemon started now adopts the view.
    const anyLazy = all.some((w) => w.state.mode === 'lazy');
    const start = all.some((w, i) => w.state.mode === 'lazy' && mountedNow[i]);
    // No daemon listening: start one (not waited for) and answer from what the views' detached
    // servers left on disk; a daemon that listens answers for every view it holds.
    const up = anyLazy && (await listening(this.home));
    if (anyLazy && !up && start) await ensureDaemon(this.home, this.daemonEnv).catch(() => undefined);
    const reply = up ? await daemonRequest(this.home, { op: 'status' }, { start, env: this.daemonEnv }).catch(() => null) : null;
    const daemon = reply?.ok ? reply : null;
    const lazyLowers = this.lowers.lazy as LazyLowers;
    for (const [i, w] of all.entries()) {
      const unsaved = await w.unsavedChanges();
      const lazy = daemon?.mounts.find((x) => x.workspace === w.state.id);
      const mounted = mountedNow[i]!;
      const alone = w.state.mode === 'lazy' && mounted && !lazy ? await lazyLowers.detachedStatus(w) : undefined;
      out.push({
        ...(w.state.mode === 'lazy' && (mounted || lazy)
          ? {
              lazy: lazy
                ? { served: true, chunks: lazy.chunks, cached: lazy.cached, hydrating: lazy.hydrating, errors: lazy.errors, fetcher: daemon!.fetcher }
                : alone
                  ? { served: true, ...alone, errors: [] }
                  : { served: false, chunks: 0, cached: 0, hydrating: false, errors: ['no restore daemon serves this workspace: strata unmount, then strata restore'] },
            }
          : {}),
        dir: w.state.dir,
        workspace: w.state.id,
        backupId: w.state.backupId,
        mode: w.state.mode,
        layers: w.state.mounted.length,
        mounted,
        unsavedEntries: unsaved.entries,
        unsavedBytes: unsaved.bytes,
        store: w.state.store,
      });
    }
    return out;
  }

  /** Layer digests some workspace on this host mounts (gc keeps their layer directories). */
  async mountedLayers(): Promise<Set<string>> {
    const used = new Set<string>();
    for (const w of await listWorkspaces(this.home)) for (const l of w.state.mounted) used.add(l.digest.slice(7));
    return used;
  }
}
