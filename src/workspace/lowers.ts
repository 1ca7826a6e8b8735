/**
 * The seam below a workspace: what provides its read-only lower directories. Extract unpacks each
 * layer once per host into a layer directory; lazy asks the restore daemon to serve the workspace's
 * restore index with strata-fuse. The workspace service calls only this interface.
 */
import { access } from 'node:fs/promises';
import { relative } from 'node:path';
import { BackupRestoreError } from '../errors.js';
import type { Toc } from '../format/toc.js';
import { ensureLayerDirs } from '../restore/layers.js';
import { daemonRequest } from '../restore/lazy/client.js';
import { unmountPath } from '../restore/lazy/mount.js';
import { daemonLog } from '../restore/lazy/protocol.js';
import type { ObjectStore } from '../store/store.js';
import { lowerDir, mountIndexPath, type Workspace, type WorkspaceMode } from './workspace.js';

export interface Lowers {
  readonly mode: WorkspaceMode;
  /** Make the workspace's lowers available; returns overlay lowerdir entries (top first, relative to home). */
  mount(ws: Workspace, store: ObjectStore, tocs?: Toc[]): Promise<string[]>;
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

  async mount(ws: Workspace, store: ObjectStore, tocs?: Toc[]): Promise<string[]> {
    return (await ensureLayerDirs(store, this.home, ws.state.mounted, { ...(tocs ? { tocs } : {}), onWarning: this.warn })).lowers;
  }

  async unmount(): Promise<void> {
    // Layer directories are shared; gc removes the unused ones.
  }
}

/** One FUSE view of the whole chain, served by the host's restore daemon from mount.index. */
export class LazyLowers implements Lowers {
  readonly mode = 'lazy' as const;
  constructor(
    private readonly home: string,
    private readonly opts: { hydrate: boolean; cacheSize?: number | undefined },
  ) {}

  get daemonEnv(): Record<string, string> {
    return this.opts.cacheSize ? { STRATA_CACHE_SIZE: String(this.opts.cacheSize) } : {};
  }

  async mount(ws: Workspace): Promise<string[]> {
    await access(mountIndexPath(ws)).catch((err: Error) => {
      throw new BackupRestoreError(`lazy workspace ${ws.state.dir} has no restore index (${err.message}); restore it again`, { cause: err });
    });
    const r = await daemonRequest(this.home, { op: 'mount', workspace: ws.state.id, hydrate: this.opts.hydrate }, { start: true, env: this.daemonEnv });
    if (!r?.ok) throw new BackupRestoreError(`lazy mount of ${ws.state.dir} failed: ${r ? r.error : 'no daemon'} (daemon log: ${daemonLog(this.home)})`);
    return [relative(this.home, lowerDir(ws))];
  }

  async unmount(ws: Workspace): Promise<void> {
    const r = await daemonRequest(this.home, { op: 'unmount', workspace: ws.state.id }).catch(() => null);
    if (!r) await unmountPath(lowerDir(ws)); // no daemon: clean a dead mount by hand
  }
}
