/**
 * Capture what changed in a workspace since its last backup or restore, from the overlay upper.
 *
 * The upper of a kernel overlay holds every entry created or modified in the workspace (whole
 * files: metacopy is off), a 0/0 character device for each deleted lower entry, a
 * trusted.overlay.opaque=y directory for each directory replaced wholesale, and a
 * trusted.overlay.redirect directory for each directory renamed from a lower layer.
 *
 * The upper keeps accumulating after a backup (the workspace stays mounted), so each entry's
 * signature (type, inode, size, mtime, ctime) at the last capture is recorded; the next capture
 * takes only entries whose signature moved, plus whiteouts for entries that vanished since.
 */
import { lstat, readdir } from 'node:fs/promises';
import { type BytePath, compareBytes, fromFsPath, joinPath, parentOf, toFsPath } from '../format/paths.js';
import type { LayerWriter } from '../format/writer.js';
import { sys } from '../sys/native.js';
import { ParentDirs, PREFETCH_MAX, type Prefetched, SCAN_BUDGET, scanEntries, splitNs, TreeCapture } from './tree.js';
import { type DirScan, type EntryStat, scanDir } from '../sys/scan.js';
import { ScanAhead } from './scan-ahead.js';
import { captureTreeNative, nativeCaptureFor } from './native-tree.js';

import { type Captured, signature, typeChar } from './signature.js';
export { type Captured, type Signature, signature } from './signature.js';

const OVERLAY_XATTR = 'trusted.overlay.';
export const skipOverlayXattr = (name: string): boolean => name.startsWith(OVERLAY_XATTR);

/** An upper entry's xattrs: its scan's when it has them, else read (one listing for both asks). */
function xattrsOf(fsPath: BytePath, pre?: Prefetched): Array<[string, Buffer]> {
  return pre?.xattrs ?? sys.llistxattrs(toFsPath(fsPath));
}
const xattr = (xs: Array<[string, Buffer]>, name: string): Buffer | undefined => xs.find(([n]) => n === name)?.[1];

export interface UpperCaptureResult {
  /** Signatures of every upper entry now: the next capture's baseline. */
  captured: Captured;
  /** Entries written to the layer (whiteouts included). */
  changed: number;
}

export interface UpperPaths {
  upper: string;
  /** The mounted workspace: renamed directories are read from here, whole. */
  merged: string;
}

/** Walk the upper; write changed entries to the writer; return the new baseline. */
export async function captureUpper(
  paths: UpperPaths,
  previous: Captured,
  writer: LayerWriter,
  opts: { onWarning?: (m: string) => void } = {},
): Promise<UpperCaptureResult> {
  const upperB = fromFsPath(Buffer.from(paths.upper));
  const mergedB = fromFsPath(Buffer.from(paths.merged));
  const tree = new TreeCapture(writer, { skipXattr: skipOverlayXattr, ...(opts.onWarning ? { onWarning: opts.onWarning } : {}) });
  const captured: Captured = new Map();
  let changed = 0;
  /** Paths whose whole subtree this layer states (opaque or renamed directories). */
  const whole: BytePath[] = [];
  /** Every path this layer whites out. */
  const whiteouts = new Set<BytePath>();
  /**
   * Every entry's parent directories go into the layer before it (see ParentDirs).
   */
  const parents = new ParentDirs(tree, upperB);
  const native = nativeCaptureFor(writer);
  /** Inside a native capture's hand-back: nested subtrees are walked here. */
  let inNative = false;
  // The next directories' scans run while this one's entries are written (with less data each:
  // up to 16 may wait at once; the rest of a large one is scanned again when the walk gets there).
  const ahead = new ScanAhead((path, early) => scanDir(toFsPath(joinPath(upperB, path)), null, PREFETCH_MAX, early ? SCAN_BUDGET / 4 : SCAN_BUDGET));
  const emitted = parents.emitted;
  const ensureParents = (path: BytePath, base = upperB): Promise<void> => parents.ensure(path, base);
  const visit = async (path: BytePath, st: EntryStat, forceAll: boolean, pre?: Prefetched): Promise<void> => {
    const fsPath = joinPath(upperB, path);
    const t = typeChar(st);
    if (t === 'd') {
      const xs = path === '.' ? [] : xattrsOf(fsPath, pre);
      const redirect = xattr(xs, 'trusted.overlay.redirect') !== undefined;
      const opaque = xattr(xs, 'trusted.overlay.opaque')?.toString() === 'y';
      const sig = signature(st, opaque || redirect);
      captured.set(path, sig);
      const changedHere = forceAll || previous.get(path) !== sig;
      if (redirect && changedHere) {
        await ensureParents(path);
        emitted.add(path);
        // A directory renamed from a lower layer: its content lives partly under its old name
        // below, so the layer gets the whole directory as the workspace shows it, as opaque.
        const mergedPath = joinPath(mergedB, path);
        const mst = await lstat(toFsPath(mergedPath), { bigint: true });
        await tree.captureDir(mergedPath, path, mst, { opaque: true });
        whole.push(path);
        changed++;
        // Record the upper subtree as captured so later backups diff against it.
        await recordSubtree(path);
        return;
      }
      // An opaque directory hides everything below it: state its whole content, unless a
      // previous layer already did and the directory itself has not changed since.
      const full = forceAll || (opaque && changedHere);
      if (changedHere) {
        // A directory already in the layer as a parent of an earlier entry is not written again
        // ('.' is never written as a parent, so it is always written here).
        const already = path !== '.' && emitted.has(path);
        if (!already || (full && opaque)) {
          await ensureParents(path);
          if (already) throw new Error(`internal: ${path} written twice`);
          await tree.addEntry(fsPath, path, st, full && opaque ? { opaque: true } : {});
          emitted.add(path);
        }
        changed++;
      }
      if (full && opaque) whole.push(path);
      // A directory replaced wholesale (a reinstalled node_modules): its subtree is all new, so
      // the native engine captures it, as it does a full backup, handing back what only this walk
      // knows how to capture (whiteouts, marked directories, files with other names).
      if (full && opaque && native && !inNative) {
        inNative = true;
        try {
          await captureTreeNative(upperB, tree, writer, {
            ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
            upper: {
              start: path,
              handBack: async (p) => {
                const pst = await lstat(toFsPath(joinPath(upperB, p)), { bigint: true }).catch((err: NodeJS.ErrnoException) => {
                  if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined; // gone: not in this point in time
                  throw err;
                });
                if (pst) await visit(p, pst, true);
              },
              onCaptured: (e, sig) => {
                captured.set(e.path, sig);
                if (e.type === 'dir') emitted.add(e.path);
                changed++;
              },
            },
          });
        } finally {
          inNative = false;
        }
        return;
      }
      // One native scan of the directory: names in byte order, stats, xattrs, small files' data
      // (a reinstalled node_modules is a whole new subtree: this is most of its capture).
      let scan: DirScan;
      try {
        scan = await ahead.take(path);
      } catch (err) {
        // Removed since its lstat: empty at this point in time.
        if (path !== '.' && (err as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw err;
      }
      ahead.children(path, scan);
      for await (const { name, entry } of scanEntries(fsPath, scan)) {
        await visit(path === '.' ? name : path + '/' + name, entry.st, full, entry);
      }
      return;
    }
    const sig = signature(st);
    captured.set(path, sig);
    if (!forceAll && previous.get(path) === sig) return;
    changed++;
    await ensureParents(path);
    if (t === 'w') {
      // Overlay's whiteout: the lower entry at this path is deleted.
      whiteouts.add(path);
      const [sec, nsec] = splitNs(st.mtimeNs);
      await writer.addEntry({ path, type: 'whiteout', mode: 0, uid: 0, gid: 0, mtime: [sec, nsec], size: 0 });
      return;
    }
    try {
      await tree.addEntry(fsPath, path, st, undefined, pre);
    } catch (err) {
      // Deleted between the walk's lstat and its read (nothing of it was written): gone at this
      // point in time, and whited out below if an earlier capture had it.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
      captured.delete(path);
      changed--;
    }
  };

  const recordSubtree = async (path: BytePath): Promise<void> => {
    const names = (await readdir(toFsPath(joinPath(upperB, path)), { encoding: 'buffer' })).map(fromFsPath);
    for (const name of names) {
      const child = path + '/' + name;
      const st = await lstat(toFsPath(joinPath(upperB, child)), { bigint: true });
      captured.set(child, signature(st));
      if (st.isDirectory()) await recordSubtree(child);
    }
  };

  const rootSt = await lstat(toFsPath(upperB), { bigint: true });
  await visit('.', rootSt, false);

  // Entries captured before that are gone from the upper now: deleted (or moved) since. Each
  // gets a whiteout unless an ancestor's whiteout or a whole-directory entry already covers it,
  // or the workspace still shows something there (then the upper holds it and it was captured).
  const gone = [...previous.keys()].filter((p) => !captured.has(p)).sort(compareBytes);
  const covered = (p: BytePath, set: Set<BytePath>): boolean => {
    for (let a = parentOf(p); a !== '.'; a = parentOf(a)) if (set.has(a)) return true;
    return false;
  };
  const wholeSet = new Set(whole);
  for (const p of gone) {
    if (p === '.' || whiteouts.has(p) || covered(p, whiteouts) || covered(p, wholeSet) || wholeSet.has(p)) continue;
    // Under something that is no longer a directory in the upper: that entry replaced it all.
    const parent = parentOf(p);
    if (parent !== '.' && !captured.get(parent)?.startsWith('d:')) continue;
    try {
      await lstat(toFsPath(joinPath(mergedB, p)));
      continue;
    } catch {
      // absent from the workspace: a real deletion
    }
    whiteouts.add(p);
    await ensureParents(p);
    await writer.addEntry({ path: p, type: 'whiteout', mode: 0, uid: 0, gid: 0, mtime: [0, 0], size: 0 });
    changed++;
  }
  return { captured, changed };
}
