/**
 * Host-wide layer directories for extract-mode workspaces: each layer is unpacked once per host
 * into STRATA_HOME/layers/<hex>/fs, with its whiteouts in overlay form, and shared read-only by
 * every workspace whose chain holds it. A short link STRATA_HOME/l/<12 hex> names it in overlay
 * options (see overlay.ts).
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DigestMismatchError } from '../errors.js';
import { layerKey, decodeTocFrame, type LayerDescriptor } from '../format/reader.js';
import { FileStore } from '../store/file.js';
import { fetchToc } from '../store/blobs.js';
import { parseDigest, type Toc } from '../format/toc.js';
import type { ObjectStore } from '../store/store.js';
import { extractView } from './extract.js';
import { buildView } from '../format/view.js';
import type { EarlyBodies, EarlyBody } from './early-body.js';

export interface LayerDirs {
  /** Short relative names for overlay options, TOP FIRST, relative to `home`. */
  lowers: string[];
  /** `whole` only: each layer's TOC (bottom first), from the unpack or the frame kept beside it. */
  tocs?: Toc[];
}

export function layerDir(home: string, digest: string): string {
  return join(home, 'layers', parseDigest(digest), 'fs');
}

/** This host holds the layer's directory already (unpacked by an earlier restore). */
export function hasLayerDir(home: string, digest: string): Promise<boolean> {
  return exists(layerDir(home, digest));
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
 *
 * `whole`: fetch each missing layer's blob in one GET (verified whole before anything is
 * unpacked) instead of its TOC and then its chunks: two round trips fewer, for the small tail
 * layers a lazy restore unpacks over its index. Layers are unpacked in parallel.
 */
export async function ensureLayerDirs(
  store: ObjectStore,
  home: string,
  layers: LayerDescriptor[],
  opts: { tocs?: Toc[]; whole?: boolean; bodies?: EarlyBodies; onWarning?: (m: string) => void } = {},
): Promise<LayerDirs> {
  if (opts.whole) {
    const done = await Promise.all(
      layers.map(async (d) => {
        const toc = await ensureWhole(store, home, d, opts.onWarning);
        return { toc, name: await shortLink(home, d.digest) };
      }),
    );
    return { lowers: done.map((x) => x.name).reverse(), tocs: done.map((x) => x.toc) };
  }
  const lowers: string[] = [];
  for (let i = 0; i < layers.length; i++) {
    const d = layers[i]!;
    const dir = layerDir(home, d.digest);
    if (!(await exists(dir))) {
      await mkdir(join(dir, '..'), { recursive: true });
      const body = opts.bodies?.take(d.digest);
      await unpackOnce(dir, async () => unpackFrom(store, d, opts.tocs?.[i] ?? (await fetchToc(store, d)), dir, opts.onWarning, body));
    }
    lowers.unshift(await shortLink(home, d.digest));
  }
  return { lowers };
}

/** Run an unpack; another process that unpacked the same layer first is as good as ours. */
async function unpackOnce(dir: string, unpack: () => Promise<unknown>): Promise<void> {
  try {
    await unpack();
  } catch (err) {
    if (!(await exists(dir))) throw err;
  }
}

function unpackFrom(store: ObjectStore, d: LayerDescriptor, toc: Toc, dir: string, onWarning?: (m: string) => void, body?: EarlyBody): Promise<unknown> {
  return extractView(store, [d], buildView([toc], { keepWhiteouts: true }), dir, { overlayMarkers: true, ...(onWarning ? { onWarning } : {}), ...(body ? { body } : {}) });
}

/** Where a whole-unpacked layer keeps its TOC frame (verified again by its digest when read). */
const tocFramePath = (home: string, digest: string): string => join(home, 'layers', parseDigest(digest), 'toc.frame');

/**
 * A layer directory unpacked from one GET of the whole blob (verified whole before anything is
 * unpacked), and its TOC. A layer already on this host costs its kept TOC frame, or (unpacked by
 * an extract restore, which keeps none) one TOC range read.
 */
async function ensureWhole(store: ObjectStore, home: string, d: LayerDescriptor, onWarning?: (m: string) => void): Promise<Toc> {
  const key = layerKey(d);
  const dir = layerDir(home, d.digest);
  if (await exists(dir)) {
    const frame = await readFile(tocFramePath(home, d.digest)).catch(() => undefined);
    if (frame) {
      try {
        return await decodeTocFrame(frame, d, tocFramePath(home, d.digest));
      } catch {
        // A damaged copy: read it from the store.
      }
    }
    return fetchToc(store, d);
  }
  await mkdir(join(dir, '..'), { recursive: true });
  // Named with the pid so a later backup sweeps the copy of a killed restore (strata.ts).
  await mkdir(join(home, 'tmp'), { recursive: true, mode: 0o700 });
  const copy = await mkdtemp(join(home, 'tmp', `whole-${process.pid}-`));
  try {
    const file = join(copy, ...key.split('/'));
    await mkdir(join(file, '..'), { recursive: true });
    const hash = createHash('sha256');
    let size = 0;
    await pipeline(
      await store.get(key),
      new Transform({
        transform(piece: Buffer, _enc, cb) {
          hash.update(piece);
          size += piece.length;
          cb(null, piece);
        },
      }),
      createWriteStream(file, { mode: 0o600 }),
    );
    const got = 'sha256:' + hash.digest('hex');
    if (size !== d.size || got !== d.digest) {
      throw new DigestMismatchError(`layer ${key} read back as ${size} bytes with digest ${got}, expected ${d.size} bytes, ${d.digest}; the store holds a damaged or tampered layer`);
    }
    const local = new FileStore(copy);
    const frame = await local.getBytes(key, { start: d.tocOffset, end: d.tocOffset + d.tocLength });
    const toc = await decodeTocFrame(frame, d, key);
    const keep = join(copy, 'toc.frame');
    await writeFile(keep, frame, { mode: 0o600 });
    await unpackOnce(dir, () => unpackFrom(local, d, toc, dir, onWarning));
    await rename(keep, tocFramePath(home, d.digest));
    return toc;
  } finally {
    await rm(copy, { recursive: true, force: true });
  }
}

/** Remove a layer directory (gc of the host's layer cache). */
export async function removeLayerDir(home: string, digest: string): Promise<void> {
  await rm(join(home, 'layers', parseDigest(digest)), { recursive: true, force: true });
  await rm(join(home, 'l', parseDigest(digest).slice(0, 12)), { force: true });
}
