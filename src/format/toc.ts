/**
 * The table of contents (TOC) of a layer: every entry's metadata and, per chunk of file data, where
 * its frame lies in the blob and the sha256 of its uncompressed bytes. Serialised as JSON (see
 * docs/format.md); parsing validates every field, since a TOC may come from a hostile store.
 */
import { InvalidLayerError, UnsafePathError } from '../errors.js';
import { type BytePath, checkLayerPath, decodeUtf8, displayPath, encodeUtf8 } from './paths.js';

/**
 * Version 2 adds shared frames (a chunk's frameOffset/frameSize); a layer without any is written
 * as version 1, byte for byte what earlier writers produced. Both are read.
 */
export const TOC_VERSION = 2;
export const TOC_VERSION_UNSHARED = 1;
/** Largest uncompressed chunk of file data in one frame. */
export const MAX_CHUNK_SIZE = 4 * 1024 * 1024;
/** Largest uncompressed shared frame (the writer's bound is far below: see docs/codecs.md). */
export const MAX_FRAME_SIZE = MAX_CHUNK_SIZE;

export type EntryType = 'dir' | 'file' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo' | 'whiteout';
const ENTRY_TYPES: ReadonlySet<string> = new Set(['dir', 'file', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'whiteout']);

export type CodecName = 'gzip' | 'zstd';

export interface Chunk {
  /** Offset of these bytes in the file. */
  offset: number;
  /** Uncompressed length. */
  size: number;
  /** Where the compressed frame starts in the blob, and its length. */
  blobOffset: number;
  blobLength: number;
  /** 'sha256:<hex>' of the uncompressed bytes. */
  digest: string;
  /**
   * Set only when the frame holds more than this file's bytes (a shared frame, TOC v2): where in
   * the frame's uncompressed bytes this chunk starts, and the frame's whole size. `digest` then
   * covers the whole frame (tar headers and the other files' bytes included), so one check
   * verifies every file in it.
   */
  frameOffset?: number;
  frameSize?: number;
}

export interface TocEntry {
  path: BytePath;
  type: EntryType;
  /** Permission bits including setuid, setgid and sticky (mask 07777). */
  mode: number;
  uid: number;
  gid: number;
  /** Seconds and nanoseconds since the epoch. */
  mtime: [number, number];
  /** Logical size of a regular file (holes included); 0 otherwise. */
  size: number;
  /** Symlink: the target as stored. Hardlink: the layer path of the file it links to. */
  linkTarget?: BytePath;
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes, names as byte strings, sorted. */
  xattrs?: Array<[string, Buffer]>;
  /** Directory: hides whatever lower layers hold beneath it. */
  opaque?: boolean;
  /** Regular file stored with holes. */
  sparse?: boolean;
  /** Regular file: 'sha256:<hex>' of its whole content (holes read as zeros). */
  digest?: string;
  /** Blob offset of the frame holding this entry's tar header. */
  headerOffset: number;
  /** Regular file: its data, in file order, not overlapping; holes are the gaps. */
  chunks?: Chunk[];
}

export interface Toc {
  version: number;
  codec: CodecName;
  entries: TocEntry[];
  /** Paths read first by the last workload (prioritised files), stored first in the blob. */
  prefetch?: { blobOffset: number; blobLength: number };
}

// ---- serialisation ---------------------------------------------------------------------------

function putPath(obj: Record<string, unknown>, key: string, p: BytePath): void {
  const s = decodeUtf8(p);
  if (s !== null) obj[key] = s;
  else obj[key + 'Bytes'] = Buffer.from(p, 'latin1').toString('base64');
}

export function encodeToc(toc: Toc): Buffer {
  const entries = toc.entries.map((e) => {
    const o: Record<string, unknown> = {};
    putPath(o, 'path', e.path);
    o.type = e.type;
    o.mode = e.mode;
    o.uid = e.uid;
    o.gid = e.gid;
    o.mtime = e.mtime;
    if (e.type === 'file') o.size = e.size;
    if (e.linkTarget !== undefined) putPath(o, 'linkTarget', e.linkTarget);
    if (e.devMajor !== undefined) o.devMajor = e.devMajor;
    if (e.devMinor !== undefined) o.devMinor = e.devMinor;
    if (e.xattrs && e.xattrs.length > 0) o.xattrs = e.xattrs.map(([n, v]) => [n, v.toString('base64')]);
    if (e.opaque) o.opaque = true;
    if (e.sparse) o.sparse = true;
    if (e.digest !== undefined) o.digest = e.digest;
    o.headerOffset = e.headerOffset;
    if (e.chunks) o.chunks = e.chunks.map((c) => (c.frameSize === undefined ? [c.offset, c.size, c.blobOffset, c.blobLength, c.digest] : [c.offset, c.size, c.blobOffset, c.blobLength, c.digest, c.frameOffset ?? 0, c.frameSize]));
    return o;
  });
  const shared = toc.entries.some((e) => e.chunks?.some((c) => c.frameSize !== undefined));
  const out: Record<string, unknown> = { version: shared ? TOC_VERSION : TOC_VERSION_UNSHARED, codec: toc.codec };
  if (toc.prefetch) out.prefetch = toc.prefetch;
  out.entries = entries;
  return Buffer.from(JSON.stringify(out));
}

// ---- parsing and validation -----------------------------------------------------------------

function bad(msg: string): never {
  throw new InvalidLayerError(`invalid TOC: ${msg}`);
}

function int(v: unknown, what: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) bad(`${what} is not an integer in [${min}, ${max}]`);
  return v;
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
function digest(v: unknown, what: string): string {
  if (typeof v !== 'string' || !DIGEST_RE.test(v)) bad(`${what} is not a sha256 digest`);
  return v;
}

function getPath(o: Record<string, unknown>, key: string): BytePath | undefined {
  const s = o[key];
  const b = o[key + 'Bytes'];
  if (s !== undefined && b !== undefined) bad(`both ${key} and ${key}Bytes given`);
  if (typeof s === 'string') return encodeUtf8(s);
  if (typeof b === 'string') return Buffer.from(b, 'base64').toString('latin1');
  if (s !== undefined || b !== undefined) bad(`${key} is not a string`);
  return undefined;
}

/**
 * Parse and validate a TOC. `dataEnd` is the blob offset where file data must end (the TOC's own
 * offset): every chunk must lie before it. Throws InvalidLayerError or UnsafePathError.
 */
export function decodeToc(buf: Buffer, dataEnd: number): Toc {
  let raw: unknown;
  try {
    raw = JSON.parse(buf.toString('utf8'));
  } catch (err) {
    throw new InvalidLayerError('invalid TOC: not JSON', { cause: err });
  }
  if (typeof raw !== 'object' || raw === null) bad('not an object');
  const r = raw as Record<string, unknown>;
  if (r.version !== TOC_VERSION && r.version !== TOC_VERSION_UNSHARED) bad(`unsupported version ${String(r.version)}`);
  const sharing = r.version === TOC_VERSION;
  if (r.codec !== 'gzip' && r.codec !== 'zstd') bad(`unknown codec ${String(r.codec)}`);
  if (!Array.isArray(r.entries)) bad('entries is not an array');
  const seen = new Set<string>();
  let lastDataEnd = 0;
  let lastShared: Chunk | undefined; // the shared frame the previous chunk lay in
  let lastSharedEnd = 0; // where in that frame the previous chunk ended
  const entries: TocEntry[] = r.entries.map((x: unknown, i: number): TocEntry => {
    if (typeof x !== 'object' || x === null) bad(`entry ${i} is not an object`);
    const o = x as Record<string, unknown>;
    const path = getPath(o, 'path');
    if (path === undefined) bad(`entry ${i} has no path`);
    checkLayerPath(path);
    if (seen.has(path)) bad(`duplicate entry ${displayPath(path)}`);
    seen.add(path);
    if (typeof o.type !== 'string' || !ENTRY_TYPES.has(o.type)) bad(`entry ${displayPath(path)} has unknown type`);
    const type = o.type as EntryType;
    if (path === '.' && type !== 'dir') bad('the root entry is not a directory');
    if (!Array.isArray(o.mtime) || o.mtime.length !== 2) bad(`entry ${displayPath(path)} mtime`);
    const e: TocEntry = {
      path,
      type,
      mode: int(o.mode, 'mode', 0, 0o7777),
      uid: int(o.uid, 'uid', 0, 0xffffffff),
      gid: int(o.gid, 'gid', 0, 0xffffffff),
      mtime: [int(o.mtime[0], 'mtime', -(2 ** 40), 2 ** 40), int(o.mtime[1], 'mtime nsec', 0, 999_999_999)],
      size: type === 'file' ? int(o.size, 'size') : 0,
      headerOffset: int(o.headerOffset, 'headerOffset', 0, dataEnd),
    };
    const target = getPath(o, 'linkTarget');
    if (type === 'symlink' || type === 'hardlink') {
      if (target === undefined || target.length === 0) bad(`${type} ${displayPath(path)} has no target`);
      if (target.includes('\0') || target.length > 65535) bad(`${type} ${displayPath(path)} has a bad target`);
      if (type === 'hardlink') {
        try {
          checkLayerPath(target, 'hard link target');
        } catch (err) {
          throw new UnsafePathError(`hard link ${displayPath(path)} points outside the layer: ${displayPath(target)}`, { cause: err });
        }
        if (target === '.') bad(`hard link ${displayPath(path)} to the root`);
      }
      e.linkTarget = target;
    } else if (target !== undefined) bad(`${type} ${displayPath(path)} has a link target`);
    if (type === 'char' || type === 'block') {
      e.devMajor = int(o.devMajor, 'devMajor', 0, 0xffffffff);
      e.devMinor = int(o.devMinor, 'devMinor', 0, 0xffffffff);
    }
    if (o.xattrs !== undefined) {
      if (!Array.isArray(o.xattrs)) bad('xattrs is not an array');
      e.xattrs = o.xattrs.map((p: unknown) => {
        if (!Array.isArray(p) || p.length !== 2 || typeof p[0] !== 'string' || typeof p[1] !== 'string' || p[0].length === 0 || p[0].length > 255) {
          bad(`xattr of ${displayPath(path)}`);
        }
        return [p[0], Buffer.from(p[1], 'base64')] as [string, Buffer];
      });
    }
    if (o.opaque === true) {
      if (type !== 'dir') bad(`opaque ${type} ${displayPath(path)}`);
      e.opaque = true;
    }
    if (type === 'file') {
      if (o.sparse === true) e.sparse = true;
      // Whole-file digests are kept for dense files; a sparse file's would cost a pass over its holes.
      if (o.digest !== undefined || !e.sparse) e.digest = digest(o.digest, `digest of ${displayPath(path)}`);
      if (!Array.isArray(o.chunks)) bad(`file ${displayPath(path)} has no chunks`);
      let fileEnd = 0;
      e.chunks = o.chunks.map((c: unknown): Chunk => {
        if (!Array.isArray(c) || !(c.length === 5 || (sharing && c.length === 7))) bad(`chunk of ${displayPath(path)}`);
        const ch: Chunk = {
          offset: int(c[0], 'chunk offset'),
          size: int(c[1], 'chunk size', 1, MAX_CHUNK_SIZE),
          blobOffset: int(c[2], 'chunk blobOffset'),
          blobLength: int(c[3], 'chunk blobLength', 1, MAX_CHUNK_SIZE * 2),
          // The files of a shared frame name its digest alike: checked once.
          digest: lastShared !== undefined && c[4] === lastShared.digest ? lastShared.digest : digest(c[4], 'chunk digest'),
        };
        if (c.length === 7) {
          ch.frameSize = int(c[6], 'chunk frameSize', 1, MAX_FRAME_SIZE);
          ch.frameOffset = int(c[5], 'chunk frameOffset', 0, ch.frameSize - ch.size);
        }
        // Chunks in file order, not overlapping, inside the file; frames in blob order, inside
        // the data region, never overlapping another frame. Chunks of one shared frame name
        // the same frame identically and lie in it in order.
        if (ch.offset < fileEnd || ch.offset + ch.size > e.size) bad(`chunks of ${displayPath(path)} overlap or exceed its size`);
        const sameFrame =
          lastShared !== undefined &&
          ch.frameSize !== undefined &&
          ch.blobOffset === lastShared.blobOffset &&
          ch.blobLength === lastShared.blobLength &&
          ch.frameSize === lastShared.frameSize &&
          ch.digest === lastShared.digest &&
          ch.frameOffset! >= lastSharedEnd;
        if ((!sameFrame && ch.blobOffset < lastDataEnd) || ch.blobOffset < e.headerOffset || ch.blobOffset + ch.blobLength > dataEnd) {
          bad(`chunk of ${displayPath(path)} lies outside the data region or overlaps another`);
        }
        fileEnd = ch.offset + ch.size;
        lastDataEnd = ch.blobOffset + ch.blobLength;
        lastShared = ch.frameSize !== undefined ? ch : undefined;
        lastSharedEnd = ch.frameSize !== undefined ? ch.frameOffset! + ch.size : 0;
        return ch;
      });
      const stored = e.chunks.reduce((n, c) => n + c.size, 0);
      if (!e.sparse && stored !== e.size) bad(`file ${displayPath(path)} is not sparse but its chunks do not cover its size`);
    } else if (o.chunks !== undefined || o.digest !== undefined) bad(`${type} ${displayPath(path)} has data`);
    return e;
  });
  const toc: Toc = { version: r.version, codec: r.codec, entries };
  if (r.prefetch !== undefined) {
    const p = r.prefetch as Record<string, unknown>;
    if (typeof p !== 'object' || p === null) bad('prefetch');
    const blobOffset = int(p.blobOffset, 'prefetch offset', 0, dataEnd);
    toc.prefetch = { blobOffset, blobLength: int(p.blobLength, 'prefetch length', 0, dataEnd - blobOffset) };
  }
  return toc;
}

export function parseDigest(d: string): string {
  if (!DIGEST_RE.test(d)) throw new InvalidLayerError(`not a sha256 digest: ${d}`);
  return d.slice(7);
}
