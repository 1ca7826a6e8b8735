/**
 * Workspaces: a restored directory is a kernel overlay mount of the backup's layers (read-only)
 * under a writable upper of its own. Lifecycle names follow containerd's snapshotter: prepare
 * (make the upper and mount), commit (a backup of the changes: see strata.ts), unmount, remove.
 *
 * State lives in STRATA_HOME/workspaces/<id>/: state.json, captured.json (the baseline of the
 * next incremental backup), upper/, work/, and a lock serialising backups of the workspace.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, writeFile, lstat, chmod, lchown } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { LayerDescriptor } from '../format/reader.js';
import type { PrefetchDescriptor } from '../format/prefetch.js';
import type { IndexDescriptor } from '../format/restore-index.js';
import type { TocEntry } from '../format/toc.js';
import { type Captured, signature } from '../capture/signature.js';
import { mountAt } from '../restore/overlay.js';
import { pidAlive } from '../util/process.js';

export type WorkspaceMode = 'extract' | 'lazy';

export interface WorkspaceState {
  version: 1;
  id: string;
  /** The mounted directory. */
  dir: string;
  store: string;
  mode: WorkspaceMode;
  /** The backup this workspace was restored from or last backed up to. */
  backupId: string;
  /** That backup's layers: what the next backup stacks on. */
  layers: LayerDescriptor[];
  /** The layers mounted below the upper, bottom first (the chain at restore time). */
  mounted: LayerDescriptor[];
  /** The restore index of `layers` as its manifest names it (chain.index holds its bytes). */
  index?: IndexDescriptor;
  /** The prefetch record of `layers` as its manifest names it: a backup that read nothing new keeps it. */
  prefetch?: PrefetchDescriptor;
  /**
   * How many of `mounted` (bottom first) mount.index covers; absent: all. In a lazy workspace the
   * rest (the chain's tail) are layer directories over the index's view.
   */
  viewLayers?: number;
  createdAt: string;
  updatedAt: string;
}

export class Workspace {
  private constructor(
    readonly home: string,
    public state: WorkspaceState,
  ) {}

  get root(): string {
    return join(this.home, 'workspaces', this.state.id);
  }
  /** The mounted layers its index covers (a lazy workspace's FUSE view serves these). */
  get viewed(): LayerDescriptor[] {
    return this.state.mounted.slice(0, this.state.viewLayers ?? this.state.mounted.length);
  }
  /** The mounted layers above the index: unpacked whole into layer directories. */
  get tail(): LayerDescriptor[] {
    return this.state.mounted.slice(this.viewed.length);
  }
  get upper(): string {
    return join(this.root, 'upper');
  }
  get work(): string {
    return join(this.root, 'work');
  }

  static async create(home: string, init: Omit<WorkspaceState, 'version' | 'id' | 'createdAt' | 'updatedAt'>): Promise<Workspace> {
    const now = new Date().toISOString();
    const ws = new Workspace(home, { version: 1, id: randomBytes(6).toString('hex'), createdAt: now, updatedAt: now, ...init });
    await mkdir(ws.upper, { recursive: true, mode: 0o755 });
    await mkdir(ws.work, { recursive: true, mode: 0o700 });
    await ws.save();
    return ws;
  }

  static async load(home: string, id: string): Promise<Workspace> {
    const state = JSON.parse(await readFile(join(home, 'workspaces', id, 'state.json'), 'utf8')) as WorkspaceState;
    return new Workspace(home, state);
  }

  async save(): Promise<void> {
    this.state.updatedAt = new Date().toISOString();
    const tmp = join(this.root, `state.json.${randomBytes(4).toString('hex')}`);
    await writeFile(tmp, JSON.stringify(this.state, null, 2) + '\n');
    await rename(tmp, join(this.root, 'state.json'));
  }

  async loadCaptured(): Promise<Captured> {
    try {
      const obj = JSON.parse(await readFile(join(this.root, 'captured.json'), 'utf8')) as Record<string, string>;
      // Keys are byte strings stored as latin1 code points, which JSON keeps exactly.
      return new Map(Object.entries(obj));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
      throw err;
    }
  }

  async saveCaptured(c: Captured): Promise<void> {
    const tmp = join(this.root, `captured.json.${randomBytes(4).toString('hex')}`);
    await writeFile(tmp, JSON.stringify(Object.fromEntries(c)));
    await rename(tmp, join(this.root, 'captured.json'));
  }

  /**
   * The frames a lazy workspace read first after its restore (recorded by the restore daemon), as
   * refs into the chain `layers` names; undefined when none were recorded or the file is damaged.
   */
  async loadFirstReads(): Promise<FirstReads | undefined> {
    try {
      const v = JSON.parse(await readFile(firstReadsPath(this), 'utf8')) as FirstReads;
      const ok =
        v.version === 1 &&
        Array.isArray(v.layers) &&
        v.layers.every((d) => typeof d === 'string') &&
        Array.isArray(v.refs) &&
        v.refs.every((r) => Array.isArray(r) && r.length === 3 && r.every((x) => Number.isSafeInteger(x) && x >= 0) && r[0] < v.layers.length);
      return ok ? v : undefined;
    } catch {
      return undefined;
    }
  }


  /** Give the upper's root the view root's metadata: the overlay root shows the upper's. */
  async initUpperRoot(root: TocEntry): Promise<void> {
    // Loaded here: the restore daemon loads this module and never needs the addon for it.
    const { sys } = await import('../sys/native.js');
    const p = Buffer.from(this.upper);
    if (process.getuid?.() === 0) await lchown(p, root.uid, root.gid);
    await chmod(p, root.mode);
    for (const [n, v] of root.xattrs ?? []) sys.lsetxattr(p, n, v);
    sys.lutimens(p, root.mtime[0], root.mtime[1], root.mtime[0], root.mtime[1]);
  }

  /**
   * Take the upper as it is now as the baseline: nothing in it is unsaved. Called once the
   * overlay is mounted, since mounting itself touches the upper's root (overlay's own xattrs).
   */
  async resetBaseline(): Promise<void> {
    await this.saveCaptured(new Map([['.', signature(await lstat(Buffer.from(this.upper), { bigint: true }))]]));
  }

  /** Re-read state.json (another process may have backed the workspace up). */
  async reload(): Promise<void> {
    this.state = (await Workspace.load(this.home, this.state.id)).state;
  }

  async isMounted(): Promise<boolean> {
    const m = await mountAt(this.state.dir);
    return m !== undefined && m.fstype === 'overlay' && m.options.includes(`upperdir=${this.upper}`);
  }

  /**
   * Changes no backup holds yet: entries of the upper whose signature moved since the last
   * capture, and entries captured then that are gone.
   */
  async unsavedChanges(): Promise<{ entries: number; bytes: number }> {
    const prev = await this.loadCaptured();
    const seen = new Set<string>();
    let entries = 0;
    let bytes = 0;
    const fsp = (rel: string): Buffer => (rel === '.' ? Buffer.from(this.upper) : Buffer.concat([Buffer.from(this.upper + '/'), Buffer.from(rel, 'latin1')]));
    const walk = async (rel: string): Promise<void> => {
      const st = await lstat(fsp(rel), { bigint: true });
      seen.add(rel);
      const was = prev.get(rel);
      // A directory captured whole carries ':o'; its own signature is the part before.
      if (was === undefined || was.replace(/:o$/, '') !== signature(st)) {
        entries++;
        if (st.isFile()) bytes += Number(st.size);
      }
      if (st.isDirectory()) {
        for (const n of await readdir(fsp(rel), { encoding: 'buffer' })) await walk(rel === '.' ? n.toString('latin1') : `${rel}/${n.toString('latin1')}`);
      }
    };
    await walk('.');
    for (const k of prev.keys()) if (!seen.has(k)) entries++;
    return { entries, bytes };
  }

  /** Serialise backups of one workspace: a lock file holding the owner's pid. */
  async lock(): Promise<() => Promise<void>> {
    const path = join(this.root, 'lock');
    for (;;) {
      try {
        const fh = await open(path, 'wx');
        await fh.writeFile(String(process.pid));
        await fh.close();
        return () => rm(path, { force: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const pid = Number(await readFile(path, 'utf8').catch(() => ''));
        if (pid > 0 && !pidAlive(pid)) {
          await rm(path, { force: true }); // its owner died: the lock is stale
          continue;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  async remove(): Promise<void> {
    await rm(this.root, { recursive: true, force: true });
  }
}


export async function listWorkspaces(home: string): Promise<Workspace[]> {
  let ids: string[];
  try {
    ids = await readdir(join(home, 'workspaces'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: Workspace[] = [];
  for (const id of ids) {
    try {
      out.push(await Workspace.load(home, id));
    } catch {
      // a workspace being created or removed right now
    }
  }
  return out;
}

export async function findWorkspace(home: string, dir: string): Promise<Workspace | undefined> {
  const abs = resolve(dir);
  return (await listWorkspaces(home)).find((w) => w.state.dir === abs);
}

/** Where a lazy workspace's read-only view is mounted (its overlay's lower directory). */
export function lowerDir(ws: Workspace): string {
  return join(ws.root, 'lower');
}

/** What the restore daemon recorded of a lazy workspace's first reads: [layer, blob offset, length] in reading order. */
export interface FirstReads {
  version: 1;
  /** The chain the refs index (the mounted view's layers, bottom first). */
  layers: string[];
  refs: Array<[number, number, number]>;
}

export function firstReadsPath(ws: Workspace): string {
  return join(ws.root, 'first-reads.json');
}

/** The prefetch record of the mounted chain, as the restore fetched and verified it. */
export function prefetchPath(ws: Workspace): string {
  return join(ws.root, 'prefetch.bin');
}

/** The restore index a lazy workspace's view serves (the chain mounted at restore). */
export function mountIndexPath(ws: Workspace): string {
  return join(ws.root, 'mount.index');
}

/**
 * The head of the view's paged restore index (sx_format.h struct sx_head), when the view was
 * restored from one: strata-fuse serves with it alone and writes mount.index once it has loaded
 * every page.
 */
export function mountHeadPath(ws: Workspace): string {
  return join(ws.root, 'mount.head');
}

/** The first pages of a paged index, fetched by the restore for strata-fuse (removed once it is up). */
export function mountSeedPath(ws: Workspace): string {
  return join(ws.root, 'mount.seed');
}

/**
 * The restore index of the workspace's current chain (state.layers): the base its next backup
 * stacks the new layer on, so an incremental backup fetches no TOC of its parents.
 */
export function chainIndexPath(ws: Workspace): string {
  return join(ws.root, 'chain.index');
}
