/**
 * Host-wide layer directories for extract-mode workspaces: each layer is unpacked once per host
 * into STRATA_HOME/layers/<hex>/fs, with its whiteouts in overlay form, and shared read-only by
 * every workspace whose chain holds it. A short link STRATA_HOME/l/<12 hex> names it in overlay
 * options (see overlay.ts).
 */
import { lstat, mkdir, readlink, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { LayerDescriptor } from '../format/reader.js';
import { fetchToc } from '../store/blobs.js';
import { parseDigest, type Toc } from '../format/toc.js';
import type { ObjectStore } from '../store/store.js';
import { extractView } from './extract.js';
import { buildView } from '../format/view.js';

export interface LayerDirs {
  /** Short relative names for overlay options, TOP FIRST, relative to `home`. */
  lowers: string[];
}

export function layerDir(home: string, digest: string): string {
  return join(home, 'layers', parseDigest(digest), 'fs');
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch {
    return false;
  }
}

/** Make sure the short link l/<12 hex> points at the layer directory; returns its relative name. */
async function shortLink(home: string, digest: string): Promise<string> {
  const hex = parseDigest(digest);
  const name = join('l', hex.slice(0, 12));
  const want = join('..', 'layers', hex, 'fs');
  await mkdir(join(home, 'l'), { recursive: true });
  try {
    await symlink(want, join(home, name));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const have = await readlink(join(home, name));
    // 48 bits of a sha256 colliding is not expected; if it happens, fall back to the full name.
    if (have !== want) return join('layers', hex, 'fs');
  }
  return name;
}

/**
 * Unpack (once) every layer of a chain and return the overlay lower list. Concurrent callers for
 * one layer each unpack into their own staging directory; the first rename wins, the others find
 * the directory in place.
 */
export async function ensureLayerDirs(
  store: ObjectStore,
  home: string,
  layers: LayerDescriptor[],
  opts: { tocs?: Toc[]; onWarning?: (m: string) => void } = {},
): Promise<LayerDirs> {
  const lowers: string[] = [];
  for (let i = 0; i < layers.length; i++) {
    const d = layers[i]!;
    const dir = layerDir(home, d.digest);
    if (!(await exists(dir))) {
      const toc = opts.tocs?.[i] ?? (await fetchToc(store, d));
      await mkdir(join(dir, '..'), { recursive: true });
      try {
        await extractView(store, [d], buildView([toc], { keepWhiteouts: true }), dir, {
          overlayMarkers: true,
          ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
        });
      } catch (err) {
        // Another process unpacked it first: theirs is as good as ours.
        if (!(await exists(dir))) throw err;
      }
    }
    lowers.unshift(await shortLink(home, d.digest));
  }
  return { lowers };
}

/** Remove a layer directory (gc of the host's layer cache). */
export async function removeLayerDir(home: string, digest: string): Promise<void> {
  await rm(join(home, 'layers', parseDigest(digest)), { recursive: true, force: true });
  await rm(join(home, 'l', parseDigest(digest).slice(0, 12)), { force: true });
}
