/**
 * Capture a plain directory as the differences from a parent backup's merged view: entries whose
 * type, mode, owner, mtime, size, link target or xattrs differ are stored; entries the parent
 * has and the directory lacks become whiteouts. A regular file whose metadata all match is
 * unchanged, unless its ctime is newer than the parent backup: then its content may have been
 * rewritten with the mtime put back (cp -p, touch -r, a build tool), and its content digest
 * decides.
 */
import { createHash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { type BytePath, compareBytes, fromFsPath, joinPath, toFsPath } from '../format/paths.js';
import type { TocEntry } from '../format/toc.js';
import type { LayerWriter } from '../format/writer.js';
import type { ViewNode } from '../format/view.js';
import { sys } from '../sys/native.js';
import { ParentDirs, splitNs, TreeCapture } from './tree.js';

function sameType(e: TocEntry, st: BigIntStats): boolean {
  switch (e.type) {
    case 'dir':
      return st.isDirectory();
    case 'file':
    case 'hardlink':
      return st.isFile();
    case 'symlink':
      return st.isSymbolicLink();
    case 'fifo':
      return st.isFIFO();
    case 'char':
      return st.isCharacterDevice();
    case 'block':
      return st.isBlockDevice();
    default:
      return false;
  }
}

function sameXattrs(e: TocEntry, fsPath: Buffer): boolean {
  const now = sys.llistxattrs(fsPath);
  const was = e.xattrs ?? [];
  return now.length === was.length && now.every(([n, v], i) => was[i]![0] === n && was[i]![1].equals(v));
}

async function digestOf(fsPath: Buffer): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(fsPath)) h.update(b as Buffer);
  return 'sha256:' + h.digest('hex');
}

/** Is the entry at fsPath the same as the parent's node (so it need not be stored)? */
async function unchanged(node: ViewNode, st: BigIntStats, fsPath: Buffer, parentTimeNs: bigint): Promise<boolean> {
  const e = node.linkTo ? node.linkTo.entry : node.entry;
  if (!sameType(node.entry, st)) return false;
  // A hard link in the parent must still be one: the data node decides for both.
  if (node.entry.type === 'hardlink' || st.nlink > 1n) return false;
  if (Number(st.mode & 0o7777n) !== e.mode || Number(st.uid) !== e.uid || Number(st.gid) !== e.gid) return false;
  if (!sameXattrs(e, fsPath)) return false;
  const [sec, nsec] = splitNs(st.mtimeNs);
  const sameTime = sec === e.mtime[0] && nsec === e.mtime[1];
  if (e.type === 'symlink') return sameTime && fromFsPath(await readlink(fsPath, { encoding: 'buffer' })) === e.linkTarget;
  if (e.type === 'char' || e.type === 'block') return sameTime && st.rdev !== undefined;
  if (e.type === 'file') {
    if (Number(st.size) !== e.size) return false;
    if (!sameTime) return false;
    if (st.ctimeNs < parentTimeNs) return true;
    return e.digest !== undefined && (await digestOf(fsPath)) === e.digest;
  }
  return sameTime;
}

/** Write the differences of `dir` from `parent` (a merged view) into the writer. */
export async function captureDiff(
  dir: string,
  parent: ViewNode,
  parentCreatedAt: Date,
  writer: LayerWriter,
  opts: { onWarning?: (m: string) => void } = {},
): Promise<number> {
  const parentTimeNs = BigInt(parentCreatedAt.getTime()) * 1_000_000n;
  const tree = new TreeCapture(writer, opts.onWarning ? { onWarning: opts.onWarning } : {});
  const rootB = fromFsPath(Buffer.from(dir));
  let changed = 0;
  // Parent directories go into the layer before anything under them (see upper.ts).
  const parents = new ParentDirs(tree, rootB);
  const emitted = parents.emitted;
  const ensureParents = (path: BytePath): Promise<void> => parents.ensure(path);
  const visit = async (path: BytePath, node: ViewNode | undefined, st: BigIntStats): Promise<void> => {
    const fsPath = joinPath(rootB, path);
    const fsb = toFsPath(fsPath);
    if (node && (await unchanged(node, st, fsb, parentTimeNs))) {
      if (!st.isDirectory()) return;
    } else if (!st.isDirectory()) {
      changed++;
      await ensureParents(path);
      return tree.addEntry(fsPath, path, st);
    } else if (!node || node.entry.type !== 'dir') {
      // New directory, or something else replaced by one: all of it is new.
      changed++;
      await ensureParents(path);
      emitted.add(path);
      return tree.captureDir(fsPath, path, st);
    } else {
      changed++;
      await ensureParents(path);
      await tree.addEntry(fsPath, path, st);
      emitted.add(path);
    }
    // A directory present on both sides: recurse, and white out what the parent had.
    const names = (await readdir(fsb, { encoding: 'buffer' })).map(fromFsPath).sort(compareBytes);
    const present = new Set(names);
    for (const [name] of node?.children ?? []) {
      if (present.has(name)) continue;
      changed++;
      await ensureParents(path === '.' ? name : `${path}/${name}`);
      const [sec, nsec] = splitNs(st.mtimeNs);
      await writer.addEntry({ path: path === '.' ? name : `${path}/${name}`, type: 'whiteout', mode: 0, uid: 0, gid: 0, mtime: [sec, nsec], size: 0 });
    }
    for (const name of names) {
      const child = path === '.' ? name : `${path}/${name}`;
      let cst: BigIntStats;
      try {
        cst = await lstat(toFsPath(joinPath(rootB, child)), { bigint: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      await visit(child, node?.children?.get(name), cst);
    }
  };
  await visit('.', parent, await lstat(toFsPath(rootB), { bigint: true }));
  return changed;
}
