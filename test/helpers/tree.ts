/**
 * Compare two trees the way a user would judge a restore: every entry's type, mode (with setuid,
 * setgid, sticky), owner, mtime to the nanosecond, content, symlink target, device numbers,
 * xattrs, hard-link grouping and holes.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink, open } from 'node:fs/promises';
import { sys } from '../../src/sys/native.js';

export interface EntrySummary {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  mtimeNs: string;
  size?: string;
  sha256?: string;
  target?: string;
  rdev?: string;
  xattrs?: Record<string, string>;
  /** Index of the hard-link group, by first path in walk order. */
  linkGroup?: string;
  /** Data extents, for files with holes. */
  extents?: string;
}

async function hashFile(p: Buffer, extents?: Array<[number, number]>): Promise<string> {
  const h = createHash('sha256');
  for (const [start, len] of extents ?? [[0, Infinity]]) {
    if (len === 0) continue;
    const opts = len === Infinity ? {} : { start, end: start + len - 1 };
    for await (const b of createReadStream(p, opts)) h.update(b as Buffer);
  }
  return h.digest('hex');
}

function typeOf(st: import('node:fs').BigIntStats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  return 'other';
}

/** Map of relative path (latin1 byte string; '.' for the root) to its summary. */
export async function summarize(root: string, opts: { skip?: (rel: string) => boolean } = {}): Promise<Map<string, EntrySummary>> {
  const out = new Map<string, EntrySummary>();
  const inodes = new Map<string, string>();
  const rootB = Buffer.from(root);
  const walk = async (rel: string): Promise<void> => {
    const p = rel === '.' ? rootB : Buffer.concat([rootB, Buffer.from('/'), Buffer.from(rel, 'latin1')]);
    const st = await lstat(p, { bigint: true });
    const s: EntrySummary = {
      type: typeOf(st),
      mode: (st.mode & 0o7777n).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtimeNs: st.mtimeNs.toString(),
    };
    const xs = sys.llistxattrs(p);
    if (xs.length) s.xattrs = Object.fromEntries(xs.map(([n, v]) => [n, v.toString('base64')]));
    if (s.type === 'file') {
      s.size = st.size.toString();
      if (st.nlink > 1n) {
        const k = `${st.dev}:${st.ino}`;
        if (!inodes.has(k)) inodes.set(k, rel);
        s.linkGroup = inodes.get(k)!;
      }
      let extents: Array<[number, number]> | undefined;
      if (st.blocks * 512n < st.size) {
        const fh = await open(p, 'r');
        try {
          extents = sys.dataExtents(fh.fd, Number(st.size));
          // Fewer blocks than bytes but data everywhere: not sparse, only not allocated yet
          // (ext4's delayed allocation right after a write); compared as dense.
          if (extents.length === 1 && extents[0]![0] === 0 && extents[0]![1] === Number(st.size)) extents = undefined;
          else s.extents = JSON.stringify(extents);
        } finally {
          await fh.close();
        }
      }
      // With holes, the extents are compared and only the data is hashed (a 9 GiB hole reads slowly).
      s.sha256 = await hashFile(p, extents);
    }
    if (s.type === 'symlink') s.target = (await readlink(p, { encoding: 'buffer' })).toString('latin1');
    if (s.type === 'char' || s.type === 'block') s.rdev = st.rdev.toString();
    if (!opts.skip?.(rel)) out.set(rel, s);
    if (s.type === 'dir') {
      const names = (await readdir(p, { encoding: 'buffer' })).map((b) => b.toString('latin1')).sort();
      for (const n of names) await walk(rel === '.' ? n : `${rel}/${n}`);
    }
  };
  await walk('.');
  return out;
}

/** Differences between two summaries, as readable lines (empty when identical). */
export function diffTrees(a: Map<string, EntrySummary>, b: Map<string, EntrySummary>): string[] {
  const out: string[] = [];
  const show = (p: string): string => JSON.stringify(Buffer.from(p, 'latin1').toString('utf8'));
  for (const [p, x] of a) {
    const y = b.get(p);
    if (!y) {
      out.push(`missing in restore: ${show(p)}`);
      continue;
    }
    for (const k of new Set([...Object.keys(x), ...Object.keys(y)]) as Set<keyof EntrySummary>) {
      const vx = JSON.stringify(x[k]);
      const vy = JSON.stringify(y[k]);
      if (vx !== vy) out.push(`${show(p)}: ${k} ${vx} != ${vy}`);
    }
  }
  for (const p of b.keys()) if (!a.has(p)) out.push(`extra in restore: ${show(p)}`);
  return out;
}
