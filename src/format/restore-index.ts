/**
 * The restore index: the merged view of a backup's whole layer chain in the binary form strata-fuse
 * mmaps (native/fuse/sx_format.h; docs/format.md specifies every byte). A backup writes it once,
 * compressed, as a content-addressed blob its manifest names, so a lazy restore reads one object
 * instead of every layer's TOC and builds nothing.
 *
 * Little-endian, fixed-size records, each section 8-byte aligned. Names, symlink targets and xattrs
 * are stored once in a string table (NUL-terminated, so C hands them to libfuse as they are); chunk
 * digests are stored once in a digest table. A chunk record says where in its frame a file's bytes
 * start (`frameOffset`), so frames shared by several small files need no new version.
 *
 * Inodes: node i has inode i + 1, the root is 1 (FUSE_ROOT_ID). Nodes are numbered breadth first,
 * so a directory's children have neighbouring inodes and every node's parent has a lower number.
 * A hard link is not a node of its own: its dirent names the inode of the node holding the data,
 * whose nlink counts every name.
 *
 * Bytes only: no I/O here (the store and the daemon read and write the files).
 */
import { createHash } from 'node:crypto';
import { DigestMismatchError, InvalidLayerError } from '../errors.js';
import { codecFor } from './codec.js';
import { packSmall } from './packed.js';
import { displayPath } from './paths.js';
import { type Chunk, type EntryType, parseDigest, type TocEntry } from './toc.js';
import type { ViewNode } from './view.js';

export const INDEX_MAGIC = 'STRATAIX';
export const INDEX_VERSION = 2;
export const HEADER_SIZE = 112;
export const NODE_SIZE = 88;
export const DIRENT_SIZE = 16;
export const CHUNK_SIZE = 40;
export const XATTR_SIZE = 24;
export const LAYER_SIZE = 48;
export const DIGEST_SIZE = 32;
/** Largest uncompressed index strata reads (a bound against hostile descriptors). */
export const MAX_INDEX_SIZE = 1024 ** 3;
/** Largest frame a chunk record may name (native/fuse/sx_format.h SX_MAX_FRAME). */
export const MAX_FRAME_SIZE = 64 * 1024 * 1024;
/** Indexes up to this many compressed bytes ride inside the manifest: no extra round trip. */
export const INLINE_INDEX_MAX = 16 * 1024;
/**
 * Larger ones are stored paged (docs/format.md "Paged index"): pages of this many raw bytes, each
 * its own zstd frame, and a head in the manifest that lets strata-fuse mount before any page is
 * fetched. 256 KiB: about 1,200 entries and 60-80 kB over the wire per page; the head costs 48
 * bytes per page (4 KiB for 100k entries). Measured in docs/format.md.
 */
export const INDEX_PAGE_SIZE = 256 * 1024;
/** A page size to test or tune with: a power of two from 4 KiB to 16 MiB. */
export function validPageSize(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 4096 && n <= 16 * 1024 * 1024 && (n & (n - 1)) === 0;
}
export const HEAD_MAGIC = 'STRATAPG';
export const HEAD_VERSION = 1;
export const HEAD_SIZE = 280;
export const PAGE_SIZE = 48;
/** The largest head a manifest may carry (base64 aside): ~1.3M pages, a 340 GB index. */
export const MAX_HEAD_SIZE = 64 * 1024 * 1024;

/**
 * Field offsets of every record, as the C side must have them: test/format.test.ts compares this
 * table with `strata-fuse --print-layout` (offsetof of the C structs).
 */
export const LAYOUT = {
  header: {
    size: HEADER_SIZE,
    offsets: {
      magic: 0, version: 8, header_size: 12, node_count: 16, dirent_count: 20, chunk_count: 24, xattr_count: 28, layer_count: 32, digest_count: 36,
      nodes_off: 40, dirents_off: 48, chunks_off: 56, xattrs_off: 64, layers_off: 72, digests_off: 80, strings_off: 88, strings_size: 96, total_size: 104,
    },
  },
  node: {
    size: NODE_SIZE,
    offsets: {
      mode: 0, uid: 4, gid: 8, nlink: 12, size: 16, mtime_sec: 24, mtime_nsec: 32, parent: 36, rdev_major: 40, rdev_minor: 44, blocks: 48,
      target_off: 56, target_len: 64, xattr_first: 68, xattr_count: 72, first: 76, count: 80, reserved: 84,
    },
  },
  dirent: { size: DIRENT_SIZE, offsets: { name_off: 0, name_len: 8, ino: 12 } },
  chunk: { size: CHUNK_SIZE, offsets: { file_off: 0, blob_off: 8, blob_len: 16, size: 20, frame_off: 24, frame_size: 28, digest: 32, layer: 36 } },
  xattr: { size: XATTR_SIZE, offsets: { name_off: 0, value_off: 8, name_len: 16, value_len: 20 } },
  layer: { size: LAYER_SIZE, offsets: { digest: 0, prefetch_off: 32, prefetch_len: 40 } },
  digest: { size: DIGEST_SIZE, offsets: { digest: 0 } },
  head: {
    size: HEAD_SIZE,
    offsets: { magic: 0, version: 8, head_size: 12, page_size: 16, page_count: 20, blob_size: 24, stored_bytes: 32, blob_digest: 40, root_xattrs: 72, root_xattr_bytes: 76, index: 80, root: 192 },
  },
  page: { size: PAGE_SIZE, offsets: { digest: 0, blob_off: 32, blob_len: 40, reserved: 44 } },
  /** A record of an index seed (--index-seed): then blob_len bytes of that page's frame. */
  seed: { size: 8, offsets: { page: 0, blob_len: 4 } },
} as const;

/**
 * Pages strata-fuse loads before it mounts (sx_index_warm, SX_WARM_PAGES): an index of at most
 * this many pages whole, a larger one the first two pages of each section (the encoder writes
 * the root and its children first in every section). The control plane seeds these pages.
 */
export const WARM_PAGES = 12;
const HD = LAYOUT.head.offsets;
const H = LAYOUT.header.offsets;
const N = LAYOUT.node.offsets;
const C = LAYOUT.chunk.offsets;

const S_IFMT = 0o170000;
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFDIR = 0o040000;
const S_IFBLK = 0o060000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const TYPE_BITS: Partial<Record<EntryType, number>> = { dir: S_IFDIR, file: S_IFREG, symlink: S_IFLNK, char: S_IFCHR, block: S_IFBLK, fifo: S_IFIFO };
const TYPE_OF = new Map<number, EntryType>(Object.entries(TYPE_BITS).map(([k, v]) => [v, k as EntryType]));

function typeBits(e: TocEntry): number {
  const t = TYPE_BITS[e.type];
  if (t === undefined) throw new InvalidLayerError(`cannot serve ${e.type} entry ${displayPath(e.path)} in a lazy mount`);
  return t;
}

/** A layer as the index names it: the blob's digest and its prioritized region (TOC landmark). */
export interface IndexLayer {
  digest: string;
  prefetch?: { blobOffset: number; blobLength: number } | undefined;
}

/**
 * A chunk of the view with the layer its frame lives in. `chunk.size` is the whole frame's
 * uncompressed size (what the cache holds and the fetcher verifies).
 */
export interface ViewChunk {
  layer: number;
  chunk: Chunk;
}

const byteOrder = (a: [string, ViewNode], b: [string, ViewNode]): number => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

/** Numbering of the view: each distinct node (hard links folded into their data node) once. */
interface Numbered {
  nodes: ViewNode[];
  inoOf: Map<ViewNode, number>;
  nlink: number[];
  parent: number[];
  /** Per directory node index: its children, sorted bytewise. */
  kids: Map<number, Array<[string, ViewNode]>>;
}

function holderOf(n: ViewNode): ViewNode {
  if (n.entry.type === 'hardlink') {
    if (!n.linkTo) throw new InvalidLayerError(`hard link ${displayPath(n.path)} has no target in the view`);
    return n.linkTo;
  }
  return n;
}

function number(root: ViewNode): Numbered {
  const nodes: ViewNode[] = [];
  const inoOf = new Map<ViewNode, number>();
  const nlink: number[] = [];
  const parent: number[] = [];
  const kids = new Map<number, Array<[string, ViewNode]>>();
  const assign = (n: ViewNode, par: number): number => {
    let ino = inoOf.get(n);
    if (ino === undefined) {
      ino = nodes.length + 1;
      inoOf.set(n, ino);
      nodes.push(n);
      nlink.push(n.entry.type === 'dir' ? 2 : 0);
      parent.push(par);
    }
    return ino;
  };
  assign(root, 1);
  for (let i = 0; i < nodes.length; i++) {
    const n = nodes[i]!;
    if (!n.children) continue;
    const sorted = [...n.children.entries()].sort(byteOrder);
    kids.set(i, sorted);
    for (const [, child] of sorted) {
      const holder = holderOf(child);
      const ino = assign(holder, i + 1);
      if (holder.entry.type === 'dir') nlink[i]!++;
      else nlink[ino - 1]!++;
    }
  }
  return { nodes, inoOf, nlink, parent, kids };
}

/** Every distinct file-data chunk the view can read, in view order (hard links counted once). */
export function viewChunks(root: ViewNode): ViewChunk[] {
  const out: ViewChunk[] = [];
  for (const n of number(root).nodes) {
    if (n.entry.type !== 'file') continue;
    for (const chunk of n.entry.chunks ?? []) out.push({ layer: n.layer, chunk: frameChunk(chunk) });
  }
  return out;
}

/** The frame a chunk lives in, as the cache and fetcher see it. */
function frameChunk(c: Chunk): Chunk {
  return c.frameSize === undefined ? c : { offset: c.offset, size: c.frameSize, blobOffset: c.blobOffset, blobLength: c.blobLength, digest: c.digest };
}

/** Collects NUL-terminated strings, each stored once. */
class Strings {
  private readonly parts: Buffer[] = [];
  private readonly seen = new Map<string, number>();
  size = 0;
  add(bytes: Buffer, key = 's' + bytes.toString('latin1')): number {
    const known = this.seen.get(key);
    if (known !== undefined) return known;
    const off = this.size;
    this.parts.push(bytes, Buffer.alloc(1));
    this.size += bytes.length + 1;
    this.seen.set(key, off);
    return off;
  }
  buffer(): Buffer {
    return Buffer.concat(this.parts, this.size);
  }
}

const align8 = (n: number): number => (n + 7) & ~7;

/** Serialise a merged view over its layer stack (bottom first). */
export function encodeIndex(root: ViewNode, layers: IndexLayer[]): Buffer {
  if (root.entry.type !== 'dir') throw new InvalidLayerError('the root of the view is not a directory');
  const { nodes, inoOf, nlink, parent, kids } = number(root);
  if (nodes.length > 0xffffffff) throw new InvalidLayerError('too many entries for one index');
  const strings = new Strings();
  strings.add(Buffer.alloc(0)); // offset 0: the empty string, for "no target"
  const digestIdx = new Map<string, number>();

  let direntCount = 0;
  let chunkCount = 0;
  let xattrCount = 0;
  for (let i = 0; i < nodes.length; i++) {
    const e = nodes[i]!.entry;
    direntCount += kids.get(i)?.length ?? 0;
    if (e.type === 'file') {
      chunkCount += e.chunks?.length ?? 0;
      for (const c of e.chunks ?? []) if (!digestIdx.has(c.digest)) digestIdx.set(c.digest, digestIdx.size);
    }
    xattrCount += e.xattrs?.length ?? 0;
  }

  const nodesOff = HEADER_SIZE;
  const direntsOff = align8(nodesOff + nodes.length * NODE_SIZE);
  const chunksOff = align8(direntsOff + direntCount * DIRENT_SIZE);
  const xattrsOff = align8(chunksOff + chunkCount * CHUNK_SIZE);
  const layersOff = align8(xattrsOff + xattrCount * XATTR_SIZE);
  const digestsOff = align8(layersOff + layers.length * LAYER_SIZE);
  const stringsOff = align8(digestsOff + digestIdx.size * DIGEST_SIZE);
  const fixed = Buffer.alloc(stringsOff);

  let dirent = 0;
  let chunkIdx = 0;
  let xattr = 0;
  for (let i = 0; i < nodes.length; i++) {
    const n = nodes[i]!;
    const e = n.entry;
    const o = nodesOff + i * NODE_SIZE;
    let size = 0;
    let stored = 0;
    let targetOff = 0;
    let targetLen = 0;
    let first = 0;
    let count = 0;
    if (e.type === 'dir') {
      first = dirent;
      for (const [name, child] of kids.get(i) ?? []) {
        const d = direntsOff + dirent * DIRENT_SIZE;
        const nameBytes = Buffer.from(name, 'latin1');
        fixed.writeBigUInt64LE(BigInt(strings.add(nameBytes)), d);
        fixed.writeUInt32LE(nameBytes.length, d + 8);
        fixed.writeUInt32LE(inoOf.get(holderOf(child))!, d + 12);
        dirent++;
      }
      count = dirent - first;
    } else if (e.type === 'file') {
      size = e.size;
      first = chunkIdx;
      if (n.layer < 0 || n.layer >= layers.length) throw new InvalidLayerError(`file ${displayPath(e.path)} names layer ${n.layer}, not in the stack`);
      for (const c of e.chunks ?? []) {
        const r = chunksOff + chunkIdx * CHUNK_SIZE;
        fixed.writeBigUInt64LE(BigInt(c.offset), r + C.file_off);
        fixed.writeBigUInt64LE(BigInt(c.blobOffset), r + C.blob_off);
        fixed.writeUInt32LE(c.blobLength, r + C.blob_len);
        fixed.writeUInt32LE(c.size, r + C.size);
        fixed.writeUInt32LE(c.frameOffset ?? 0, r + C.frame_off);
        fixed.writeUInt32LE(c.frameSize ?? c.size, r + C.frame_size);
        fixed.writeUInt32LE(digestIdx.get(c.digest)!, r + C.digest);
        fixed.writeUInt32LE(n.layer, r + C.layer);
        stored += c.size;
        chunkIdx++;
      }
      count = chunkIdx - first;
    } else if (e.type === 'symlink') {
      const t = Buffer.from(e.linkTarget ?? '', 'latin1');
      size = t.length;
      targetOff = strings.add(t);
      targetLen = t.length;
    }
    const xFirst = xattr;
    for (const [name, value] of e.xattrs ?? []) {
      const x = xattrsOff + xattr * XATTR_SIZE;
      const nameBytes = Buffer.from(name, 'latin1');
      fixed.writeBigUInt64LE(BigInt(strings.add(nameBytes)), x);
      fixed.writeBigUInt64LE(BigInt(strings.add(value, 'v' + value.toString('latin1'))), x + 8);
      fixed.writeUInt32LE(nameBytes.length, x + 16);
      fixed.writeUInt32LE(value.length, x + 20);
      xattr++;
    }
    fixed.writeUInt32LE((typeBits(e) | (e.mode & 0o7777)) >>> 0, o + N.mode);
    fixed.writeUInt32LE(e.uid >>> 0, o + N.uid);
    fixed.writeUInt32LE(e.gid >>> 0, o + N.gid);
    fixed.writeUInt32LE(Math.max(1, nlink[i]!), o + N.nlink);
    fixed.writeBigUInt64LE(BigInt(size), o + N.size);
    fixed.writeBigInt64LE(BigInt(e.mtime[0]), o + N.mtime_sec);
    fixed.writeUInt32LE(e.mtime[1], o + N.mtime_nsec);
    fixed.writeUInt32LE(parent[i]!, o + N.parent);
    fixed.writeUInt32LE(e.devMajor ?? 0, o + N.rdev_major);
    fixed.writeUInt32LE(e.devMinor ?? 0, o + N.rdev_minor);
    fixed.writeBigUInt64LE(BigInt(Math.ceil(stored / 512)), o + N.blocks);
    fixed.writeBigUInt64LE(BigInt(targetOff), o + N.target_off);
    fixed.writeUInt32LE(targetLen, o + N.target_len);
    fixed.writeUInt32LE(xFirst, o + N.xattr_first);
    fixed.writeUInt32LE(xattr - xFirst, o + N.xattr_count);
    fixed.writeUInt32LE(first, o + N.first);
    fixed.writeUInt32LE(count, o + N.count);
  }
  layers.forEach((l, i) => {
    const r = layersOff + i * LAYER_SIZE;
    Buffer.from(parseDigest(l.digest), 'hex').copy(fixed, r);
    fixed.writeBigUInt64LE(BigInt(l.prefetch?.blobOffset ?? 0), r + 32);
    fixed.writeBigUInt64LE(BigInt(l.prefetch?.blobLength ?? 0), r + 40);
  });
  for (const [d, k] of digestIdx) Buffer.from(parseDigest(d), 'hex').copy(fixed, digestsOff + k * DIGEST_SIZE);

  const str = strings.buffer();
  const total = stringsOff + str.length;
  fixed.write(INDEX_MAGIC, 0, 'latin1');
  fixed.writeUInt32LE(INDEX_VERSION, H.version);
  fixed.writeUInt32LE(HEADER_SIZE, H.header_size);
  [nodes.length, direntCount, chunkCount, xattrCount, layers.length, digestIdx.size].forEach((v, k) => fixed.writeUInt32LE(v, H.node_count + 4 * k));
  [nodesOff, direntsOff, chunksOff, xattrsOff, layersOff, digestsOff, stringsOff, str.length, total].forEach((v, k) => fixed.writeBigUInt64LE(BigInt(v), H.nodes_off + 8 * k));
  return Buffer.concat([fixed, str], total);
}

const hexAt = (b: Buffer, off: number): string => b.toString('hex', off, off + 32);

/**
 * Reading an index in TypeScript: the control plane needs its layers, its chunks (to register them
 * with the fetcher and hydrate) and, off the ready path, its paths (to record first reads). Checks
 * the header and section bounds; the full validation of every reference is strata-fuse's, which
 * refuses to mount a hostile index (native/fuse/sx_index.c).
 */
export class RestoreIndex {
  readonly nodeCount: number;
  readonly direntCount: number;
  readonly chunkCount: number;
  readonly xattrCount: number;
  readonly layerCount: number;
  readonly digestCount: number;
  readonly off: { nodes: number; dirents: number; chunks: number; xattrs: number; layers: number; digests: number; strings: number; stringsSize: number };

  private constructor(readonly buf: Buffer) {
    const b = buf;
    if (b.length < HEADER_SIZE || b.toString('latin1', 0, 8) !== INDEX_MAGIC) throw new InvalidLayerError('not a strata restore index');
    const version = b.readUInt32LE(H.version);
    if (version !== INDEX_VERSION || b.readUInt32LE(H.header_size) !== HEADER_SIZE) throw new InvalidLayerError(`restore index version ${version}, expected ${INDEX_VERSION}`);
    const u32 = (o: number): number => b.readUInt32LE(o);
    const u64 = (o: number): number => Number(b.readBigUInt64LE(o));
    this.nodeCount = u32(H.node_count);
    this.direntCount = u32(H.dirent_count);
    this.chunkCount = u32(H.chunk_count);
    this.xattrCount = u32(H.xattr_count);
    this.layerCount = u32(H.layer_count);
    this.digestCount = u32(H.digest_count);
    this.off = {
      nodes: u64(H.nodes_off),
      dirents: u64(H.dirents_off),
      chunks: u64(H.chunks_off),
      xattrs: u64(H.xattrs_off),
      layers: u64(H.layers_off),
      digests: u64(H.digests_off),
      strings: u64(H.strings_off),
      stringsSize: u64(H.strings_size),
    };
    const sections: Array<[number, number, number]> = [
      [this.off.nodes, this.nodeCount, NODE_SIZE],
      [this.off.dirents, this.direntCount, DIRENT_SIZE],
      [this.off.chunks, this.chunkCount, CHUNK_SIZE],
      [this.off.xattrs, this.xattrCount, XATTR_SIZE],
      [this.off.layers, this.layerCount, LAYER_SIZE],
      [this.off.digests, this.digestCount, DIGEST_SIZE],
      [this.off.strings, this.off.stringsSize, 1],
    ];
    if (u64(H.total_size) !== b.length || this.nodeCount === 0 || sections.some(([o, n, r]) => o % 8 !== 0 || o + n * r > b.length)) {
      throw new InvalidLayerError('restore index is truncated or inconsistent');
    }
  }

  static parse(buf: Buffer): RestoreIndex {
    return new RestoreIndex(buf);
  }

  layers(): IndexLayer[] {
    const out: IndexLayer[] = [];
    for (let i = 0; i < this.layerCount; i++) {
      const r = this.off.layers + i * LAYER_SIZE;
      const blobLength = Number(this.buf.readBigUInt64LE(r + 40));
      out.push({ digest: 'sha256:' + hexAt(this.buf, r), ...(blobLength > 0 ? { prefetch: { blobOffset: Number(this.buf.readBigUInt64LE(r + 32)), blobLength } } : {}) });
    }
    return out;
  }

  private digestAt(k: number): string {
    if (k >= this.digestCount) throw new InvalidLayerError(`restore index: digest ${k} out of range`);
    return 'sha256:' + hexAt(this.buf, this.off.digests + k * DIGEST_SIZE);
  }

  private str(off: number, len: number): Buffer {
    if (off + len > this.off.stringsSize) throw new InvalidLayerError('restore index: string out of range');
    return this.buf.subarray(this.off.strings + off, this.off.strings + off + len);
  }

  /** Chunk record k as the file sees it (frameOffset/frameSize set when the frame holds more). */
  private chunkAt(k: number): { layer: number; chunk: Chunk } {
    const r = this.off.chunks + k * CHUNK_SIZE;
    const b = this.buf;
    const size = b.readUInt32LE(r + C.size);
    const frameOffset = b.readUInt32LE(r + C.frame_off);
    const frameSize = b.readUInt32LE(r + C.frame_size);
    const chunk: Chunk = {
      offset: Number(b.readBigUInt64LE(r + C.file_off)),
      size,
      blobOffset: Number(b.readBigUInt64LE(r + C.blob_off)),
      blobLength: b.readUInt32LE(r + C.blob_len),
      digest: this.digestAt(b.readUInt32LE(r + C.digest)),
    };
    if (frameOffset !== 0 || frameSize !== size) {
      chunk.frameOffset = frameOffset;
      chunk.frameSize = frameSize;
    }
    return { layer: b.readUInt32LE(r + C.layer), chunk };
  }

  /**
   * Every distinct frame the view reads, in node order (what hydration fetches, what the fetcher
   * registers). `from`/`to` and a shared `seen` let a caller decode it in slices between other work.
   */
  chunks(from = 0, to = this.chunkCount, seen: Uint8Array = new Uint8Array(this.digestCount)): ViewChunk[] {
    const out: ViewChunk[] = [];
    const b = this.buf;
    const end = Math.min(to, this.chunkCount);
    for (let k = from; k < end; k++) {
      const r = this.off.chunks + k * CHUNK_SIZE;
      const d = b.readUInt32LE(r + C.digest);
      if (d >= this.digestCount) throw new InvalidLayerError(`restore index: digest ${d} out of range`);
      // One frame, one digest: a frame named by several chunk records is fetched once.
      if (seen[d]) continue;
      seen[d] = 1;
      const size = b.readUInt32LE(r + C.size);
      const frameSize = b.readUInt32LE(r + C.frame_size);
      out.push({
        layer: b.readUInt32LE(r + C.layer),
        chunk: {
          offset: Number(b.readBigUInt64LE(r + C.file_off)),
          size: frameSize === 0 ? size : frameSize,
          blobOffset: Number(b.readBigUInt64LE(r + C.blob_off)),
          blobLength: b.readUInt32LE(r + C.blob_len),
          digest: 'sha256:' + b.toString('hex', this.off.digests + d * DIGEST_SIZE, this.off.digests + (d + 1) * DIGEST_SIZE),
        },
      });
    }
    return out;
  }

  private node(i: number): Omit<TocEntry, 'path' | 'headerOffset'> & { parent: number; first: number; count: number; typeBits: number } {
    if (i < 0 || i >= this.nodeCount) throw new InvalidLayerError(`restore index: node ${i + 1} out of range`);
    const o = this.off.nodes + i * NODE_SIZE;
    const b = this.buf;
    const modeBits = b.readUInt32LE(o + N.mode);
    const type = TYPE_OF.get(modeBits & S_IFMT);
    if (!type) throw new InvalidLayerError(`restore index: node ${i + 1} has an unknown type`);
    const xattrs: Array<[string, Buffer]> = [];
    const xFirst = b.readUInt32LE(o + N.xattr_first);
    const xCount = b.readUInt32LE(o + N.xattr_count);
    if (xFirst + xCount > this.xattrCount) throw new InvalidLayerError(`restore index: node ${i + 1} xattrs out of range`);
    for (let k = 0; k < xCount; k++) {
      const x = this.off.xattrs + (xFirst + k) * XATTR_SIZE;
      const name = this.str(Number(b.readBigUInt64LE(x)), b.readUInt32LE(x + 16)).toString('latin1');
      xattrs.push([name, Buffer.from(this.str(Number(b.readBigUInt64LE(x + 8)), b.readUInt32LE(x + 20)))]);
    }
    const e: ReturnType<RestoreIndex['node']> = {
      type,
      mode: modeBits & 0o7777,
      uid: b.readUInt32LE(o + N.uid),
      gid: b.readUInt32LE(o + N.gid),
      mtime: [Number(b.readBigInt64LE(o + N.mtime_sec)), b.readUInt32LE(o + N.mtime_nsec)],
      size: type === 'file' ? Number(b.readBigUInt64LE(o + N.size)) : 0,
      parent: b.readUInt32LE(o + N.parent),
      first: b.readUInt32LE(o + N.first),
      count: b.readUInt32LE(o + N.count),
      typeBits: modeBits & S_IFMT,
    };
    if (xattrs.length > 0) e.xattrs = xattrs;
    if (type === 'symlink') e.linkTarget = this.str(Number(b.readBigUInt64LE(o + N.target_off)), b.readUInt32LE(o + N.target_len)).toString('latin1');
    if (type === 'char' || type === 'block') {
      e.devMajor = b.readUInt32LE(o + N.rdev_major);
      e.devMinor = b.readUInt32LE(o + N.rdev_minor);
    }
    return e;
  }

  /** Bytes of file data the chunks hold (what statfs reports as used). */
  storedBytes(): number {
    let n = 0;
    for (let k = 0; k < this.chunkCount; k++) n += this.buf.readUInt32LE(this.off.chunks + k * CHUNK_SIZE + C.size);
    return n;
  }

  /** The root directory's metadata (the workspace's upper root takes it). */
  rootEntry(): TocEntry {
    const { parent: _p, first: _f, count: _c, typeBits: _t, ...e } = this.node(0);
    return { ...e, path: '.', headerOffset: 0 };
  }

  /**
   * The merged view back as a tree: a backup stacks its new layer over it (applyToc) instead of
   * fetching the parent's TOCs. A node named twice is a file and its hard links. Entries carry
   * what the index keeps (no whole-file digest, no header offsets).
   */
  toView(): ViewNode {
    const made: Array<ViewNode | undefined> = new Array(this.nodeCount);
    const rootNode: ViewNode = { path: '.', entry: this.rootEntry(), layer: -1, children: new Map() };
    if (rootNode.entry.type !== 'dir') throw new InvalidLayerError('restore index: the root is not a directory');
    made[0] = rootNode;
    const queue: number[] = [0];
    for (let q = 0; q < queue.length; q++) {
      const di = queue[q]!;
      const dirNode = made[di]!;
      const d = this.node(di);
      if (d.first + d.count > this.direntCount) throw new InvalidLayerError(`restore index: node ${di + 1} dirents out of range`);
      for (let k = 0; k < d.count; k++) {
        const r = this.off.dirents + (d.first + k) * DIRENT_SIZE;
        const name = this.str(Number(this.buf.readBigUInt64LE(r)), this.buf.readUInt32LE(r + 8)).toString('latin1');
        if (name.length === 0 || name.includes('/') || name === '.' || name === '..') throw new InvalidLayerError(`restore index: bad name in node ${di + 1}`);
        const ino = this.buf.readUInt32LE(r + 12);
        if (ino <= 1 || ino > this.nodeCount) throw new InvalidLayerError(`restore index: dirent names inode ${ino}`);
        const path = dirNode.path === '.' ? name : `${dirNode.path}/${name}`;
        const known = made[ino - 1];
        if (known) {
          if (known.entry.type === 'dir') throw new InvalidLayerError(`restore index: directory inode ${ino} is named twice`);
          dirNode.children!.set(name, { path, entry: { path, type: 'hardlink', mode: known.entry.mode, uid: known.entry.uid, gid: known.entry.gid, mtime: known.entry.mtime, size: 0, linkTarget: known.path, headerOffset: 0 }, layer: known.layer, linkTo: known });
          continue;
        }
        const { parent: _p, first, count, typeBits: _t, ...meta } = this.node(ino - 1);
        const entry: TocEntry = { ...meta, path, headerOffset: 0 };
        let layer = 0;
        if (entry.type === 'file') {
          if (first + count > this.chunkCount) throw new InvalidLayerError(`restore index: node ${ino} chunks out of range`);
          const chunks: Chunk[] = [];
          for (let c = 0; c < count; c++) {
            const x = this.chunkAt(first + c);
            layer = x.layer;
            chunks.push(x.chunk);
          }
          entry.chunks = chunks;
        }
        const n: ViewNode = { path, entry, layer };
        if (entry.type === 'dir') {
          n.children = new Map();
          queue.push(ino - 1);
        }
        made[ino - 1] = n;
        dirNode.children!.set(name, n);
      }
    }
    return rootNode;
  }


}

/** What a manifest says of its restore index: the compressed blob, and the raw size it unpacks to. */
export interface IndexDescriptor {
  /** 'sha256:<hex>' of the compressed blob (its key under blobs/sha256/). */
  digest: string;
  size: number;
  /** Bytes of the index once decompressed. */
  rawSize: number;
  /** The compressed blob itself (base64), for small indexes: no extra round trip. */
  inline?: string;
  /**
   * A paged blob's head (base64; sx_format.h struct sx_head and what follows it): where each page
   * lies and its digest. A lazy restore mounts with it and fetches no page first.
   */
  head?: string;
  /**
   * How many layers of the chain (bottom first) the index covers; absent: all. The layers above
   * (the tail: small incremental layers) are not in it; a lazy restore unpacks them whole.
   */
  layers?: number;
}

/** The number of chain layers an index covers (its prefix); the rest of the chain is its tail. */
export function indexedLayers(desc: IndexDescriptor | undefined, chainLength: number): number {
  return desc?.layers ?? chainLength;
}

/**
 * Compress an encoded index into its blob: one zstd frame inline in the manifest when that small,
 * else paged (pages of INDEX_PAGE_SIZE raw bytes, a frame each, back to back) with its head.
 */
export async function packIndex(raw: Buffer, pageSize = INDEX_PAGE_SIZE, inlineMax = INLINE_INDEX_MAX): Promise<{ blob: Buffer; desc: IndexDescriptor }> {
  if (!validPageSize(pageSize)) throw new InvalidLayerError(`index page size ${pageSize} is not a power of two from 4 KiB to 16 MiB`);
  // Past 1 MiB raw nothing compresses to the inline limit: do not try.
  if (raw.length <= 1024 * 1024 && inlineMax > 0) {
    const small = await packSmall(raw, inlineMax);
    if (small.desc.inline !== undefined) return small;
  }
  const zstd = codecFor('zstd', 3);
  const frames: Buffer[] = [];
  for (let off = 0; off < raw.length; off += pageSize) frames.push(await zstd.compress(raw.subarray(off, Math.min(raw.length, off + pageSize))));
  const blob = Buffer.concat(frames);
  const digest = createHash('sha256').update(blob).digest();
  const ix = RestoreIndex.parse(raw);
  const layerBytes = raw.subarray(ix.off.layers, ix.off.layers + ix.layerCount * LAYER_SIZE);
  const root = ix.rootEntry();
  const xattrs = (root.xattrs ?? []).map(([name, value]) => {
    const n = Buffer.from(name, 'latin1');
    const r = Buffer.alloc(align8(8 + n.length + value.length));
    r.writeUInt32LE(n.length, 0);
    r.writeUInt32LE(value.length, 4);
    n.copy(r, 8);
    value.copy(r, 8 + n.length);
    return r;
  });
  const xattrBytes = xattrs.reduce((a, r) => a + r.length, 0);
  const head = Buffer.alloc(HEAD_SIZE + layerBytes.length + frames.length * PAGE_SIZE + xattrBytes);
  head.write(HEAD_MAGIC, 0, 'latin1');
  head.writeUInt32LE(HEAD_VERSION, HD.version);
  head.writeUInt32LE(HEAD_SIZE, HD.head_size);
  head.writeUInt32LE(pageSize, HD.page_size);
  head.writeUInt32LE(frames.length, HD.page_count);
  head.writeBigUInt64LE(BigInt(blob.length), HD.blob_size);
  head.writeBigUInt64LE(BigInt(ix.storedBytes()), HD.stored_bytes);
  digest.copy(head, HD.blob_digest);
  head.writeUInt32LE(xattrs.length, HD.root_xattrs);
  head.writeUInt32LE(xattrBytes, HD.root_xattr_bytes);
  raw.copy(head, HD.index, 0, HEADER_SIZE);
  raw.copy(head, HD.root, ix.off.nodes, ix.off.nodes + NODE_SIZE);
  let at = HEAD_SIZE;
  layerBytes.copy(head, at);
  at += layerBytes.length;
  let blobOff = 0;
  frames.forEach((f, p) => {
    createHash('sha256').update(raw.subarray(p * pageSize, Math.min(raw.length, (p + 1) * pageSize))).digest().copy(head, at);
    head.writeBigUInt64LE(BigInt(blobOff), at + 32);
    head.writeUInt32LE(f.length, at + 40);
    at += PAGE_SIZE;
    blobOff += f.length;
  });
  for (const r of xattrs) {
    r.copy(head, at);
    at += r.length;
  }
  return { blob, desc: { digest: 'sha256:' + digest.toString('hex'), size: blob.length, rawSize: raw.length, head: head.toString('base64') } };
}

/** A paged index's head, decoded and checked (strata-fuse checks it again, in C). */
export interface IndexHead {
  pageSize: number;
  /** Per page: its frame in the blob and the sha256 of its raw bytes. */
  pages: Array<{ blobOffset: number; blobLength: number; digest: Buffer }>;
  blobSize: number;
  blobDigest: string;
  rawSize: number;
  nodeCount: number;
  /** Chunk records of the index (what the daemon's status counts). */
  chunkCount: number;
  layers: IndexLayer[];
  /** The root directory's metadata (the workspace's upper root takes it). */
  root: TocEntry;
  /** The head as strata-fuse reads it (--index-head). */
  raw: Buffer;
}

/** The pages of a paged index strata-fuse needs before its mount (WARM_PAGES), ascending. */
export function warmPages(head: IndexHead): number[] {
  const n = head.pages.length;
  if (n <= WARM_PAGES) return [...Array(n).keys()];
  const at = (f: number): number => Number(head.raw.readBigUInt64LE(HD.index + f));
  const starts = [0, at(H.dirents_off), at(H.chunks_off), at(H.xattrs_off), at(H.digests_off), at(H.strings_off)];
  const out = new Set<number>();
  for (const s of starts) {
    const p = Math.floor(s / head.pageSize);
    for (const q of [p, p + 1]) if (q < n) out.add(q);
  }
  return [...out].sort((a, b) => a - b);
}

/** An index seed: each page's record (LAYOUT.seed) and its frame as the blob holds it. */
export function encodeSeed(head: IndexHead, frames: Map<number, Buffer>): Buffer {
  const parts: Buffer[] = [];
  for (const [p, frame] of [...frames].sort((a, b) => a[0] - b[0])) {
    if (frame.length !== head.pages[p]?.blobLength) throw new RangeError(`page ${p}'s frame is ${frame.length} bytes, the head says ${head.pages[p]?.blobLength}`);
    const r = Buffer.alloc(LAYOUT.seed.size);
    r.writeUInt32LE(p, LAYOUT.seed.offsets.page);
    r.writeUInt32LE(frame.length, LAYOUT.seed.offsets.blob_len);
    parts.push(r, frame);
  }
  return Buffer.concat(parts);
}

/** desc: the manifest's descriptor the head must agree with (absent: a local copy, checked alone). */
export function decodeHead(raw: Buffer, desc?: Pick<IndexDescriptor, 'digest' | 'size' | 'rawSize'>): IndexHead {
  const bad = (why: string): never => {
    throw new InvalidLayerError(`the restore index head in this manifest is damaged: ${why}`);
  };
  if (raw.length < HEAD_SIZE || raw.length > MAX_HEAD_SIZE || raw.toString('latin1', 0, 8) !== HEAD_MAGIC) bad('not an index head');
  if (raw.readUInt32LE(HD.version) !== HEAD_VERSION || raw.readUInt32LE(HD.head_size) !== HEAD_SIZE) bad(`version ${raw.readUInt32LE(HD.version)}, expected ${HEAD_VERSION}`);
  const pageSize = raw.readUInt32LE(HD.page_size);
  const pageCount = raw.readUInt32LE(HD.page_count);
  const blobSize = Number(raw.readBigUInt64LE(HD.blob_size));
  const blobDigest = 'sha256:' + hexAt(raw, HD.blob_digest);
  if (pageSize < 4096 || pageSize > 16 * 1024 * 1024 || (pageSize & (pageSize - 1)) !== 0) bad(`page size ${pageSize}`);
  if (desc && (blobSize !== desc.size || blobDigest !== desc.digest)) bad('it names another blob than the manifest does');
  // The index header, as page 0 starts: its own checks (sections inside rawSize).
  const header = Buffer.alloc(HEADER_SIZE);
  raw.copy(header, 0, HD.index, HD.index + HEADER_SIZE);
  const rawSize = Number(header.readBigUInt64LE(H.total_size));
  if ((desc && rawSize !== desc.rawSize) || rawSize > MAX_INDEX_SIZE || pageCount !== Math.ceil(rawSize / pageSize)) bad(`${pageCount} pages of ${pageSize} bytes for an index of ${rawSize}`);
  const layerCount = header.readUInt32LE(H.layer_count);
  const nodeCount = header.readUInt32LE(H.node_count);
  const xattrCount = raw.readUInt32LE(HD.root_xattrs);
  const xattrBytes = raw.readUInt32LE(HD.root_xattr_bytes);
  const pagesAt = HEAD_SIZE + layerCount * LAYER_SIZE;
  if (raw.length !== pagesAt + pageCount * PAGE_SIZE + xattrBytes) bad(`${raw.length} bytes`);
  const layers: IndexLayer[] = [];
  for (let i = 0; i < layerCount; i++) {
    const r = HEAD_SIZE + i * LAYER_SIZE;
    const blobLength = Number(raw.readBigUInt64LE(r + 40));
    layers.push({ digest: 'sha256:' + hexAt(raw, r), ...(blobLength > 0 ? { prefetch: { blobOffset: Number(raw.readBigUInt64LE(r + 32)), blobLength } } : {}) });
  }
  const pages: IndexHead['pages'] = [];
  let off = 0;
  for (let p = 0; p < pageCount; p++) {
    const r = pagesAt + p * PAGE_SIZE;
    const blobOffset = Number(raw.readBigUInt64LE(r + 32));
    const blobLength = raw.readUInt32LE(r + 40);
    if (blobOffset !== off || blobLength === 0) bad(`page ${p} is not where the page before it ends`);
    pages.push({ blobOffset, blobLength, digest: raw.subarray(r, r + 32) });
    off += blobLength;
  }
  if (off !== blobSize) bad(`its pages add up to ${off} bytes, the blob has ${blobSize}`);
  // The root: its node (with no strings) and the xattrs the head carries for it.
  const rootNode = raw.subarray(HD.root, HD.root + NODE_SIZE);
  const mode = rootNode.readUInt32LE(N.mode);
  if ((mode & S_IFMT) !== S_IFDIR || rootNode.readUInt32LE(N.parent) !== 1) bad('its root is not a directory');
  const root: TocEntry = {
    path: '.',
    type: 'dir',
    mode: mode & 0o7777,
    uid: rootNode.readUInt32LE(N.uid),
    gid: rootNode.readUInt32LE(N.gid),
    mtime: [Number(rootNode.readBigInt64LE(N.mtime_sec)), rootNode.readUInt32LE(N.mtime_nsec)],
    size: 0,
    headerOffset: 0,
  };
  const xattrs: Array<[string, Buffer]> = [];
  let x = pagesAt + pageCount * PAGE_SIZE;
  for (let k = 0; k < xattrCount; k++) {
    if (x + 8 > raw.length) bad('its root xattrs are truncated');
    const nl = raw.readUInt32LE(x);
    const vl = raw.readUInt32LE(x + 4);
    if (x + 8 + nl + vl > raw.length || nl === 0) bad('its root xattrs are truncated');
    xattrs.push([raw.toString('latin1', x + 8, x + 8 + nl), Buffer.from(raw.subarray(x + 8 + nl, x + 8 + nl + vl))]);
    x += align8(8 + nl + vl);
  }
  if (x !== raw.length) bad('bytes after its root xattrs');
  if (xattrs.length !== rootNode.readUInt32LE(N.xattr_count)) bad('its root xattrs disagree with its root');
  if (xattrs.length > 0) root.xattrs = xattrs;
  return { pageSize, pages, blobSize, blobDigest, rawSize, nodeCount, chunkCount: header.readUInt32LE(H.chunk_count), layers, root, raw };
}

/** The whole index of a paged blob (verified page by page), for the control plane's own use. */
export async function unpackPages(blob: Buffer, head: IndexHead, where: string): Promise<Buffer> {
  const zstd = codecFor('zstd');
  const raw = Buffer.allocUnsafe(head.rawSize);
  for (const [p, pg] of head.pages.entries()) {
    const len = Math.min(head.pageSize, head.rawSize - p * head.pageSize);
    const page = await zstd.decompress(blob.subarray(pg.blobOffset, pg.blobOffset + pg.blobLength), len);
    if (!createHash('sha256').update(page).digest().equals(pg.digest)) throw new DigestMismatchError(`page ${p} of restore index ${where} does not match its digest; the store holds a damaged or tampered index`);
    page.copy(raw, p * head.pageSize);
  }
  return raw;
}

/**
 * The index a blob holds, verified: the blob's digest and size first (untrusted bytes never reach
 * the decompressor), then a bounded decompression to exactly rawSize, then the header.
 */
export async function unpackIndex(blob: Buffer, desc: IndexDescriptor, where: string): Promise<Buffer> {
  if (blob.length !== desc.size) throw new DigestMismatchError(`restore index ${where} is ${blob.length} bytes, the manifest says ${desc.size}: truncated or replaced`);
  const got = 'sha256:' + createHash('sha256').update(blob).digest('hex');
  if (got !== desc.digest) throw new DigestMismatchError(`restore index ${where} has digest ${got}, expected ${desc.digest}; the store holds a damaged or tampered index`);
  if (desc.rawSize > MAX_INDEX_SIZE) throw new InvalidLayerError(`restore index ${where} claims ${desc.rawSize} bytes, more than the ${MAX_INDEX_SIZE} limit`);
  const raw = desc.head !== undefined ? await unpackPages(blob, decodeHead(Buffer.from(desc.head, 'base64'), desc), where) : await codecFor('zstd').decompress(blob, desc.rawSize);
  RestoreIndex.parse(raw);
  return raw;
}

/** The layer table an index must carry for a manifest's chain: same blobs, same order. */
export function indexMatchesLayers(ix: RestoreIndex | IndexHead, layers: Array<{ digest: string }>): boolean {
  const have = ix instanceof RestoreIndex ? ix.layers() : ix.layers;
  return have.length === layers.length && have.every((l, i) => l.digest === layers[i]!.digest);
}

/** The manifest descriptor a paged index's head stands for (to fetch the whole index by it). */
export function headDescriptor(head: IndexHead): IndexDescriptor {
  return { digest: head.blobDigest, size: head.blobSize, rawSize: head.rawSize, head: head.raw.toString('base64') };
}
