/**
 * Signatures of upper entries: what a workspace's capture baseline records per entry, so the next
 * backup (and `strata status`) can tell what moved. Its own module: the workspace state and the
 * restore daemon need it without loading the capture code.
 */
import type { EntryStat } from '../sys/scan.js';
import type { BytePath } from '../format/paths.js';

/** type, ino, size, mtime ns, ctime ns, 'o' when captured as opaque. */
export type Signature = string;
export type Captured = Map<BytePath, Signature>;

export function typeChar(st: EntryStat): string {
  if (st.isDirectory()) return 'd';
  if (st.isFile()) return 'f';
  if (st.isSymbolicLink()) return 'l';
  if (st.isCharacterDevice()) return st.rdev === 0n ? 'w' : 'c';
  if (st.isBlockDevice()) return 'b';
  if (st.isFIFO()) return 'p';
  return 's';
}

export function signature(st: EntryStat, opaque = false): Signature {
  return `${typeChar(st)}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}${opaque ? ':o' : ''}`;
}
