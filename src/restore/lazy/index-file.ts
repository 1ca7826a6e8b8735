/**
 * The lazy mount's index: the merged view serialised into the binary file strata-fuse mmaps
 * (native/fuse/sx_format.h; docs/lazy.md describes every field). Little-endian, fixed-size records,
 * each section 8-byte aligned, strings NUL-terminated so C can hand them to libfuse as they are.
 *
 * Inodes: node i has inode i + 1, the root is 1 (FUSE_ROOT_ID). Nodes are numbered breadth first,
 * so a directory's children have neighbouring inodes. A hard link is not a node of its own: its
 * dirent names the inode of the node holding the data, whose nlink counts every name.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { InvalidLayerError } from '../../errors.js';
import { displayPath } from '../../format/paths.js';
import { parseDigest, type Chunk, type TocEntry } from '../../format/toc.js';
import type { LayerDescriptor } from '../../format/reader.js';
import type { ViewNode } from '../view.js';

export const INDEX_MAGIC = 'STRATAIX';
export const INDEX_VERSION = 1;
export const HEADER_SIZE = 104;
export const NODE_SIZE = 88;
export const DIRENT_SIZE = 16;
export const CHUNK_SIZE = 64;
export const XATTR_SIZE = 24;
export const LAYER_SIZE = 32;

const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFDIR = 0o040000;
const S_IFBLK = 0o060000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

function typeBits(e: TocEntry): number {
  switch (e.type) {
    case 'dir':
      return S_IFDIR;
    case 'file':
      return S_IFREG;
    case 'symlink':
      return S_IFLNK;
    case 'char':
      return S_IFCHR;
    case 'block':
      return S_IFBLK;
    case 'fifo':
      return S_IFIFO;
    default:
      throw new InvalidLayerError(`cannot serve ${e.type} entry ${displayPath(e.path)} in a lazy mount`);
  }
}

const byteOrder = (a: [string, ViewNode], b: [string, ViewNode]): number => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

/** A chunk of the view with the layer its bytes live in. */
export interface ViewChunk {
  layer: number;
  chunk: Chunk;
}

/** Numbering of the view: each distinct node (hard links folded into their data node) once. */
interface Numbered {
  nodes: ViewNode[];
  inoOf: Map<ViewNode, number>;
  nlink: number[];
  parent: number[];
  /** Per directory node index: its children, sorted bytewise. */
  kids: Map<number, Array<[string, ViewNode]>>;
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

function holderOf(n: ViewNode): ViewNode {
  if (n.entry.type === 'hardlink') {
    if (!n.linkTo) throw new InvalidLayerError(`hard link ${displayPath(n.path)} has no target in the view`);
    return n.linkTo;
  }
  return n;
}

/** Every distinct file-data chunk the view can read, in view order (hard links counted once). */
export function viewChunks(root: ViewNode): ViewChunk[] {
  const out: ViewChunk[] = [];
  for (const n of number(root).nodes) {
    if (n.entry.type !== 'file') continue;
    for (const chunk of n.entry.chunks ?? []) out.push({ layer: n.layer, chunk });
  }
  return out;
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

/** Serialise the view; returns the bytes (writeIndex puts them in a file). */
export function encodeIndex(root: ViewNode, layers: LayerDescriptor[]): Buffer {
  if (root.entry.type !== 'dir') throw new InvalidLayerError('the root of the view is not a directory');
  const { nodes, inoOf, nlink, parent, kids } = number(root);
  if (nodes.length > 0xffffffff) throw new InvalidLayerError('too many entries for one lazy mount');
  const strings = new Strings();
  strings.add(Buffer.alloc(0)); // offset 0: the empty string, for "no target"

  let direntCount = 0;
  let chunkCount = 0;
  let xattrCount = 0;
  for (let i = 0; i < nodes.length; i++) {
    const e = nodes[i]!.entry;
    direntCount += kids.get(i)?.length ?? 0;
    if (e.type === 'file') chunkCount += e.chunks?.length ?? 0;
    xattrCount += e.xattrs?.length ?? 0;
  }

  const nodesOff = HEADER_SIZE;
  const direntsOff = align8(nodesOff + nodes.length * NODE_SIZE);
  const chunksOff = align8(direntsOff + direntCount * DIRENT_SIZE);
  const xattrsOff = align8(chunksOff + chunkCount * CHUNK_SIZE);
  const layersOff = align8(xattrsOff + xattrCount * XATTR_SIZE);
  const stringsOff = align8(layersOff + layers.length * LAYER_SIZE);
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
        fixed.writeBigUInt64LE(BigInt(c.offset), r);
        fixed.writeUInt32LE(c.size, r + 8);
        fixed.writeUInt32LE(n.layer, r + 12);
        fixed.writeBigUInt64LE(BigInt(c.blobOffset), r + 16);
        fixed.writeUInt32LE(c.blobLength, r + 24);
        Buffer.from(parseDigest(c.digest), 'hex').copy(fixed, r + 32);
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
    fixed.writeUInt32LE((typeBits(e) | (e.mode & 0o7777)) >>> 0, o);
    fixed.writeUInt32LE(e.uid >>> 0, o + 4);
    fixed.writeUInt32LE(e.gid >>> 0, o + 8);
    fixed.writeUInt32LE(Math.max(1, nlink[i]!), o + 12);
    fixed.writeBigUInt64LE(BigInt(size), o + 16);
    fixed.writeBigInt64LE(BigInt(e.mtime[0]), o + 24);
    fixed.writeUInt32LE(e.mtime[1], o + 32);
    fixed.writeUInt32LE(parent[i]!, o + 36);
    fixed.writeUInt32LE(e.devMajor ?? 0, o + 40);
    fixed.writeUInt32LE(e.devMinor ?? 0, o + 44);
    fixed.writeBigUInt64LE(BigInt(Math.ceil(stored / 512)), o + 48);
    fixed.writeBigUInt64LE(BigInt(targetOff), o + 56);
    fixed.writeUInt32LE(targetLen, o + 64);
    fixed.writeUInt32LE(xFirst, o + 68);
    fixed.writeUInt32LE(xattr - xFirst, o + 72);
    fixed.writeUInt32LE(first, o + 76);
    fixed.writeUInt32LE(count, o + 80);
  }
  layers.forEach((l, i) => Buffer.from(parseDigest(l.digest), 'hex').copy(fixed, layersOff + i * LAYER_SIZE));

  const str = strings.buffer();
  const total = stringsOff + str.length;
  fixed.write(INDEX_MAGIC, 0, 'latin1');
  fixed.writeUInt32LE(INDEX_VERSION, 8);
  fixed.writeUInt32LE(HEADER_SIZE, 12);
  fixed.writeUInt32LE(nodes.length, 16);
  fixed.writeUInt32LE(direntCount, 20);
  fixed.writeUInt32LE(chunkCount, 24);
  fixed.writeUInt32LE(xattrCount, 28);
  fixed.writeUInt32LE(layers.length, 32);
  fixed.writeUInt32LE(0, 36);
  [nodesOff, direntsOff, chunksOff, xattrsOff, layersOff, stringsOff, str.length, total].forEach((v, k) => fixed.writeBigUInt64LE(BigInt(v), 40 + 8 * k));
  return Buffer.concat([fixed, str], total);
}

/** Write the index of a view to path, atomically (temp file in the same directory, then rename). */
export async function writeIndex(root: ViewNode, layers: LayerDescriptor[], path: string): Promise<void> {
  const bytes = encodeIndex(root, layers);
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** What a test or a debugging session may want to see of an index: its header counts. */
export function readIndexHeader(buf: Buffer): { version: number; nodes: number; dirents: number; chunks: number; xattrs: number; layers: number } {
  if (buf.length < HEADER_SIZE || buf.toString('latin1', 0, 8) !== INDEX_MAGIC) throw new InvalidLayerError('not a strata index');
  return {
    version: buf.readUInt32LE(8),
    nodes: buf.readUInt32LE(16),
    dirents: buf.readUInt32LE(20),
    chunks: buf.readUInt32LE(24),
    xattrs: buf.readUInt32LE(28),
    layers: buf.readUInt32LE(32),
  };
}
