/**
 * Tar headers (POSIX pax over ustar), written so that GNU tar extracts a layer exactly: pax records
 * carry long or non-UTF-8 names, sizes past 8 GiB, nanosecond mtimes, large ids, xattrs
 * (SCHILY.xattr.*) and sparse maps (GNU sparse format 1.0).
 */
import type { BytePath } from './paths.js';
import { baseOf, parentOf } from './paths.js';
import type { TocEntry } from './toc.js';

export const BLOCK = 512;

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';

export function padLength(n: number): number {
  return (BLOCK - (n % BLOCK)) % BLOCK;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  // The length prefix counts itself: find the fixed point.
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len), 'latin1'), body]);
}

function octal(buf: Buffer, off: number, width: number, value: number): void {
  // width includes the terminating NUL; values that do not fit are carried by pax records.
  const max = 8 ** (width - 1) - 1;
  const s = Math.min(Math.max(value, 0), max).toString(8).padStart(width - 1, '0');
  buf.write(s, off, width - 1, 'latin1');
  buf[off + width - 1] = 0;
}

function field(buf: Buffer, off: number, width: number, value: BytePath): void {
  buf.write(value.slice(0, width), off, width, 'latin1');
}

function needsPax(p: BytePath, width: number): boolean {
  if (p.length > width) return true;
  for (let i = 0; i < p.length; i++) if (p.charCodeAt(i) >= 0x80) return true;
  return false;
}

interface HeaderFields {
  name: BytePath;
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: [number, number];
  linkname?: BytePath;
  devMajor?: number;
  devMinor?: number;
  extra?: Array<[string, Buffer]>;
}

function ustar(f: HeaderFields): Buffer {
  const h = Buffer.alloc(BLOCK);
  field(h, 0, 100, f.name);
  octal(h, 100, 8, f.mode);
  octal(h, 108, 8, f.uid);
  octal(h, 116, 8, f.gid);
  octal(h, 124, 12, f.size);
  octal(h, 136, 12, f.mtime[0]);
  h.fill(0x20, 148, 156);
  h.write(f.typeflag, 156, 1, 'latin1');
  if (f.linkname) field(h, 157, 100, f.linkname);
  h.write('ustar\x0000', 257, 8, 'latin1');
  octal(h, 329, 8, f.devMajor ?? 0);
  octal(h, 337, 8, f.devMinor ?? 0);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return h;
}

/** Pax extended header ('x') plus ustar header for one member. */
function member(f: HeaderFields): Buffer {
  const recs: Buffer[] = [];
  const name = f.name;
  // Names go as raw bytes. POSIX would flag non-UTF-8 ones with hdrcharset=BINARY, but GNU tar
  // warns on that keyword and keeps raw bytes anyway, so it is left out.
  if (needsPax(name, 100)) recs.push(paxRecord('path', Buffer.from(name, 'latin1')));
  if (f.linkname !== undefined && needsPax(f.linkname, 100)) recs.push(paxRecord('linkpath', Buffer.from(f.linkname, 'latin1')));
  if (f.size > 0o77777777777) recs.push(paxRecord('size', Buffer.from(String(f.size))));
  if (f.uid > 0o7777777) recs.push(paxRecord('uid', Buffer.from(String(f.uid))));
  if (f.gid > 0o7777777) recs.push(paxRecord('gid', Buffer.from(String(f.gid))));
  const [sec, nsec] = f.mtime;
  if (nsec !== 0 || sec < 0 || sec > 0o77777777777) {
    // pax time: a decimal with the fraction; for negative times the fraction still counts up.
    const neg = sec < 0 && nsec > 0;
    const whole = neg ? sec + 1 : sec;
    const frac = neg ? 1_000_000_000 - nsec : nsec;
    const txt = (neg && whole === 0 ? '-' : '') + String(whole) + (frac ? '.' + String(frac).padStart(9, '0') : '');
    recs.push(paxRecord('mtime', Buffer.from(txt)));
  }
  for (const [k, v] of f.extra ?? []) recs.push(paxRecord(k, v));
  const out: Buffer[] = [];
  if (recs.length > 0) {
    const data = Buffer.concat(recs);
    const xname = ('PaxHeaders/' + baseOf(name)).slice(0, 99);
    out.push(ustar({ name: xname, typeflag: 'x', mode: 0o644, uid: 0, gid: 0, size: data.length, mtime: [Math.max(sec, 0), 0] }));
    out.push(data, Buffer.alloc(padLength(data.length)));
  }
  out.push(ustar(f));
  return Buffer.concat(out);
}

function tarName(e: TocEntry): BytePath {
  if (e.path === '.') return './';
  return e.type === 'dir' ? e.path + '/' : e.path;
}

/** Extents of stored data of a sparse file, as offset/size pairs. */
export interface Extent {
  offset: number;
  size: number;
}

/**
 * The header bytes of one entry: what precedes its data in the tar stream. For a sparse file this
 * includes the GNU 1.0 sparse map that starts its data area. `dataSize` is the number of data bytes
 * that follow (excluding the map), and the caller pads after them.
 */
export function entryHeader(e: TocEntry, extents?: Extent[]): { header: Buffer; dataSize: number } {
  const extra: Array<[string, Buffer]> = [];
  for (const [n, v] of e.xattrs ?? []) extra.push(['SCHILY.xattr.' + n, v]);
  const base = { mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime, extra };
  switch (e.type) {
    case 'dir': {
      const parts = [member({ ...base, name: tarName(e), typeflag: '5', size: 0 })];
      // OCI: an opaque directory carries a marker file inside it.
      if (e.opaque) parts.push(member({ name: (e.path === '.' ? '' : e.path + '/') + OPAQUE_MARKER, typeflag: '0', mode: 0, uid: 0, gid: 0, size: 0, mtime: e.mtime }));
      return { header: Buffer.concat(parts), dataSize: 0 };
    }
    case 'whiteout': {
      const dir = parentOf(e.path);
      const name = (dir === '.' ? '' : dir + '/') + WHITEOUT_PREFIX + baseOf(e.path);
      return { header: member({ name, typeflag: '0', mode: 0, uid: 0, gid: 0, size: 0, mtime: e.mtime }), dataSize: 0 };
    }
    case 'symlink':
      return { header: member({ ...base, name: e.path, typeflag: '2', size: 0, linkname: e.linkTarget! }), dataSize: 0 };
    case 'hardlink':
      return { header: member({ ...base, name: e.path, typeflag: '1', size: 0, linkname: e.linkTarget! }), dataSize: 0 };
    case 'char':
    case 'block':
      return {
        header: member({ ...base, name: e.path, typeflag: e.type === 'char' ? '3' : '4', size: 0, devMajor: e.devMajor!, devMinor: e.devMinor! }),
        dataSize: 0,
      };
    case 'fifo':
      return { header: member({ ...base, name: e.path, typeflag: '6', size: 0 }), dataSize: 0 };
    case 'file': {
      if (!e.sparse) return { header: member({ ...base, name: e.path, typeflag: '0', size: e.size }), dataSize: e.size };
      const ext = [...(extents ?? [])];
      // GNU tar sizes the file from the map: a trailing hole needs a closing empty segment.
      const last = ext[ext.length - 1];
      if (!last || last.offset + last.size < e.size) ext.push({ offset: e.size, size: 0 });
      const mapTxt = [String(ext.length), ...ext.flatMap((x) => [String(x.offset), String(x.size)])].join('\n') + '\n';
      const map = Buffer.concat([Buffer.from(mapTxt), Buffer.alloc(padLength(mapTxt.length))]);
      const dataSize = ext.reduce((n, x) => n + x.size, 0);
      extra.push(['GNU.sparse.major', Buffer.from('1')], ['GNU.sparse.minor', Buffer.from('0')]);
      extra.push(['GNU.sparse.name', Buffer.from(e.path, 'latin1')], ['GNU.sparse.realsize', Buffer.from(String(e.size))]);
      const dir = parentOf(e.path);
      const fake = (dir === '.' ? '' : dir + '/') + 'GNUSparseFile.0/' + baseOf(e.path);
      const h = member({ ...base, extra, name: fake, typeflag: '0', size: map.length + dataSize });
      return { header: Buffer.concat([h, map]), dataSize };
    }
  }
}

/** The end-of-archive marker: two zero blocks. */
export const END_OF_ARCHIVE = Buffer.alloc(BLOCK * 2);
