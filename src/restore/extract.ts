/**
 * Extract mode: materialise the merged view of a layer stack into a directory.
 *
 * Safety: the tree is built in a fresh staging directory beside the target, so nothing but our own
 * entries exists there; paths were validated when the TOCs were parsed; data goes only into files
 * we created with O_EXCL|O_NOFOLLOW; hard links name files we created; symlinks are made last, so
 * no write ever passes through one. The staging directory replaces the target only once everything
 * is in place and verified: a failed restore leaves the target as it was.
 */
import { constants as C } from 'node:fs';
import { chmod, lchown, link, mkdir, open, rm, rmdir, symlink, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { BackupRestoreError, DigestMismatchError, StrataError } from '../errors.js';
import { besideTarget, checkTarget, swapInto } from './target.js';
import { codecFor } from '../format/codec.js';
import { type BytePath, displayPath, joinPath, toFsPath, fromFsPath } from '../format/paths.js';
import { layerKey, decodeFrame, type LayerDescriptor } from '../format/reader.js';
import type { Chunk, TocEntry } from '../format/toc.js';
import type { ObjectStore } from '../store/store.js';
import { sys } from '../sys/native.js';
import { forEachLimit } from '../util/concurrency.js';
import { span } from '../util/trace.js';
import { type ViewNode, walkView } from '../format/view.js';

export interface ExtractOptions {
  /** Replace a non-empty target (its old content is removed only after the new tree is complete). */
  force?: boolean;
  onWarning?: (msg: string) => void;
  onProgress?: (p: { bytes: number; totalBytes: number }) => void;
  /** Coalesce ranged reads whose gap is at most this many bytes. */
  maxGap?: number;
  /**
   * Write whiteouts and opaque directories the way kernel overlayfs reads them in a lower
   * directory (a 0/0 character device; trusted.overlay.opaque=y), for a layer directory.
   */
  overlayMarkers?: boolean;
  /** A one-layer unpack: that layer's data region, [0, tocOffset), already being read (early-body.ts). */
  body?: Promise<NodeJS.ReadableStream>;
}

export interface ExtractStats {
  entries: number;
  bytes: number;
  requests: number;
}

interface ChunkJob {
  chunk: Chunk;
  file: BytePath;
  /** Set when the chunk is the whole file: the native batch creates it with this metadata. */
  meta?: TocEntry;
}

/** writeFiles' record (native/sys/extract.c): offsets of its little-endian fields. */
export const WRITE_FILE_RECORD = { size: 40, path: 0, dataOff: 4, len: 8, mode: 12, uid: 16, gid: 20, mtimeS: 24, mtimeNs: 32, flags: 36 } as const;
const WF_OWNER = 1;
/** A chunk written at the offset the mtimeS field holds, no metadata (extract.c). */
const WF_CHUNK = 2;

const IS_ROOT = process.getuid?.() === 0;
/** File operations in flight at once: restore is bound by syscall latency, not CPU. */
const PARALLEL = 32;
const DEFAULT_MAX_GAP = 1024 * 1024;

/** Apply ownership, mode, xattrs and times, in the order that keeps setuid bits and mtimes. */
function applyMeta(fsPath: Buffer, e: TocEntry, warn: (m: string) => void): Promise<void> {
  return (async () => {
    if (IS_ROOT || e.uid !== process.getuid?.() || e.gid !== process.getgid?.()) {
      try {
        await lchown(fsPath, e.uid, e.gid);
      } catch (err) {
        if (IS_ROOT) throw err;
        warn(`cannot set owner ${e.uid}:${e.gid} on ${displayPath(fromFsPath(fsPath))} (not root)`);
      }
    }
    if (e.type !== 'symlink') await chmod(fsPath, e.mode);
    for (const [name, value] of e.xattrs ?? []) {
      try {
        sys.lsetxattr(fsPath, name, value);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (IS_ROOT && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw err;
        warn(`cannot set xattr ${name} on ${displayPath(fromFsPath(fsPath))}: ${code}`);
      }
    }
    sys.lutimens(fsPath, e.mtime[0], e.mtime[1], e.mtime[0], e.mtime[1]);
  })();
}

/** The chunks that lie in one frame (several for a shared frame), decoded once. */
interface FrameJob {
  chunk: Chunk;
  jobs: ChunkJob[];
}

/** Group wanted chunks by frame, and frames into spans of the blob fetched with one ranged GET each. */
function spans(jobs: ChunkJob[], maxGap: number): Array<{ start: number; end: number; frames: FrameJob[] }> {
  jobs.sort((a, b) => a.chunk.blobOffset - b.chunk.blobOffset);
  const out: Array<{ start: number; end: number; frames: FrameJob[] }> = [];
  for (const j of jobs) {
    const last = out[out.length - 1];
    const lastFrame = last?.frames[last.frames.length - 1];
    const s = j.chunk.blobOffset;
    const e = s + j.chunk.blobLength;
    const c = lastFrame?.chunk;
    // Decoded once and checked against one digest, so every field naming the frame must agree.
    if (c && c.frameSize !== undefined && c.blobOffset === s && c.blobLength === j.chunk.blobLength && c.frameSize === j.chunk.frameSize && c.digest === j.chunk.digest) {
      lastFrame.jobs.push(j);
    } else if (last && s - last.end <= maxGap && s >= last.end) {
      last.end = e;
      last.frames.push({ chunk: j.chunk, jobs: [j] });
    } else out.push({ start: s, end: e, frames: [{ chunk: j.chunk, jobs: [j] }] });
  }
  return out;
}

/** fsBatch's record (native/sys/extract.c): offsets of its little-endian fields. */
export const FS_BATCH_RECORD = { size: 40, path: 0, op: 4, mode: 8, uid: 12, gid: 16, flags: 20, mtimeS: 24, mtimeNs: 32 } as const;
const FB_MKDIR = 1;
const FB_META = 2;
const FB_OWNER = 1;
const FB_NOCHMOD = 2;

/** mkdir (no entry) or apply an entry's metadata, for each path under staging, in one job. */
async function fsBatch(staging: string, stagingB: BytePath, ops: Array<{ p: BytePath; e?: TocEntry }>): Promise<void> {
  if (ops.length === 0) return;
  const R = FS_BATCH_RECORD;
  const recs = Buffer.alloc(ops.length * R.size);
  const names: Buffer[] = [];
  let pathsLen = 0;
  ops.forEach(({ p, e }, i) => {
    const rel = Buffer.from(p.slice(stagingB.length + 1), 'latin1');
    const r = i * R.size;
    recs.writeUInt32LE(pathsLen, r + R.path);
    recs.writeUInt32LE(e ? FB_META : FB_MKDIR, r + R.op);
    if (e) {
      recs.writeUInt32LE(e.mode, r + R.mode);
      recs.writeUInt32LE(e.uid, r + R.uid);
      recs.writeUInt32LE(e.gid, r + R.gid);
      recs.writeUInt32LE(FB_OWNER | (e.type === 'symlink' ? FB_NOCHMOD : 0), r + R.flags);
      recs.writeBigInt64LE(BigInt(e.mtime[0]), r + R.mtimeS);
      recs.writeUInt32LE(e.mtime[1], r + R.mtimeNs);
    }
    names.push(rel, Buffer.alloc(1));
    pathsLen += rel.length + 1;
  });
  await sys.fsBatch(Buffer.from(staging), recs, Buffer.concat(names, pathsLen));
}

/** Native writes need root (owners) and the addon; elsewhere every file takes the fs path. */
const NATIVE_WRITES = IS_ROOT;

/**
 * Write the writeFiles record of one chunk job at `r` of `recs`: a whole file with its metadata,
 * or (no meta) one chunk of a file finished later, written at its offset.
 */
function putFileRecord(recs: Buffer, r: number, pathOff: number, j: ChunkJob): void {
  const R = WRITE_FILE_RECORD;
  const e = j.meta;
  recs.writeUInt32LE(pathOff, r + R.path);
  recs.writeUInt32LE(j.chunk.frameOffset ?? 0, r + R.dataOff);
  recs.writeUInt32LE(j.chunk.size, r + R.len);
  if (e) {
    recs.writeUInt32LE(e.mode, r + R.mode);
    recs.writeUInt32LE(e.uid, r + R.uid);
    recs.writeUInt32LE(e.gid, r + R.gid);
    recs.writeBigInt64LE(BigInt(e.mtime[0]), r + R.mtimeS);
    recs.writeUInt32LE(e.mtime[1], r + R.mtimeNs);
    recs.writeUInt32LE(WF_OWNER, r + R.flags);
  } else {
    recs.writeBigInt64LE(BigInt(j.chunk.offset), r + R.mtimeS);
    recs.writeUInt32LE(WF_CHUNK, r + R.flags);
  }
}

/** The NUL-terminated paths of jobs' files, relative to staging, and each one's offset. */
function relPaths(stagingB: BytePath, jobs: ChunkJob[]): { paths: Buffer; offsets: number[] } {
  const names: Buffer[] = [];
  const offsets: number[] = [];
  let len = 0;
  for (const j of jobs) {
    const rel = Buffer.from(j.file.slice(stagingB.length + 1), 'latin1');
    offsets.push(len);
    names.push(rel, Buffer.alloc(1));
    len += rel.length + 1;
  }
  return { paths: Buffer.concat(names, len), offsets };
}

/** The whole files of one decoded frame, written by one native job. */
function writeWholeFiles(staging: string, stagingB: BytePath, frame: Buffer, jobs: ChunkJob[]): Promise<void> {
  const recs = Buffer.alloc(jobs.length * WRITE_FILE_RECORD.size);
  const { paths, offsets } = relPaths(stagingB, jobs);
  jobs.forEach((j, i) => putFileRecord(recs, i * WRITE_FILE_RECORD.size, offsets[i]!, j));
  return sys.writeFiles(Buffer.from(staging), frame, recs, paths);
}

/** Blob bytes read in one piece and handed to one native job (several frames). */
const GROUP_BYTES = 4 * 1024 * 1024;
/** Groups being decoded and written at once (the threadpool has 4 threads). */
const GROUPS_IN_FLIGHT = 4;
/** A pooled group buffer: a group is at most GROUP_BYTES unless one frame alone is larger. */
const POOLED_BYTES = GROUP_BYTES + 64 * 1024;

/** extractFrames' frame record (native/sys/extract.c): offsets of its little-endian fields. */
export const EXTRACT_FRAME_RECORD = { size: 64, offset: 0, length: 4, frameSize: 8, firstFile: 12, files: 16, blobOffset: 24, digest: 32 } as const;

/** A ranged GET's body, read forward: the bytes of [from, to) as one Buffer, one copy. */
class SpanReader {
  private pieces: Buffer[] = [];
  private len = 0;
  private readonly it: AsyncIterator<Buffer>;
  constructor(
    private readonly stream: NodeJS.ReadableStream,
    /** Blob offset of the first byte not yet taken. */
    private pos: number,
    private readonly key: string,
  ) {
    this.it = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }

  /**
   * The bytes of [from, to). Into `into` when given and large enough (a pooled buffer: no
   * allocation, which at a gigabyte of layer is what kept V8 collecting), else one new Buffer.
   */
  async take(from: number, to: number, into?: Buffer): Promise<Buffer> {
    while (this.pos + this.len < to) {
      const r = await this.it.next();
      if (r.done) throw new BackupRestoreError(`short read of ${this.key} at offset ${this.pos + this.len}: the store returned less than asked`);
      this.pieces.push(r.value);
      this.len += r.value.length;
    }
    const want = to - this.pos;
    let out: Buffer;
    let rest: Buffer;
    if (this.pieces.length === 1 || !into || into.length < want) {
      const all = this.pieces.length === 1 ? this.pieces[0]! : Buffer.concat(this.pieces, this.len);
      out = all.subarray(from - this.pos, want);
      rest = all.subarray(want);
    } else {
      let n = 0;
      rest = Buffer.alloc(0);
      for (const piece of this.pieces) {
        const use = Math.min(piece.length, want - n);
        if (use > 0) n += piece.copy(into, n, 0, use);
        if (use < piece.length) rest = piece.subarray(use);
      }
      out = into.subarray(from - this.pos, want);
    }
    this.pieces = rest.length > 0 ? [rest] : [];
    this.len = rest.length;
    this.pos = to;
    return out;
  }

  close(): void {
    (this.stream as unknown as { destroy?: () => void }).destroy?.();
  }
}

/**
 * Frames decoded, verified and written (whole files, or chunks at their offsets) by one native
 * job. `fd` not -1: the job fills `buf` from that layer file at blob offset `base` first.
 */
async function extractNative(staging: string, stagingB: BytePath, buf: Buffer, base: number, frames: FrameJob[], key: string, fd = -1): Promise<void> {
  const F = EXTRACT_FRAME_RECORD;
  const fileJobs = frames.flatMap((fj) => fj.jobs);
  const recs = Buffer.alloc(frames.length * F.size);
  const files = Buffer.alloc(fileJobs.length * WRITE_FILE_RECORD.size);
  const { paths, offsets } = relPaths(stagingB, fileJobs);
  fileJobs.forEach((j, i) => putFileRecord(files, i * WRITE_FILE_RECORD.size, offsets[i]!, j));
  let n = 0;
  frames.forEach((fj, f) => {
    const c = fj.chunk;
    const r = f * F.size;
    recs.writeUInt32LE(c.blobOffset - base, r + F.offset);
    recs.writeUInt32LE(c.blobLength, r + F.length);
    recs.writeUInt32LE(c.frameSize ?? c.size, r + F.frameSize);
    recs.writeUInt32LE(n, r + F.firstFile);
    recs.writeUInt32LE(fj.jobs.length, r + F.files);
    recs.writeBigUInt64LE(BigInt(c.blobOffset), r + F.blobOffset);
    Buffer.from(c.digest.slice(7), 'hex').copy(recs, r + F.digest);
    n += fj.jobs.length;
  });
  try {
    await sys.extractFrames(Buffer.from(staging), buf, recs, files, paths, fd, base);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EDIGEST') throw new DigestMismatchError(`${(err as Error).message} (${key})`);
    throw err;
  }
}

export async function extractView(
  store: ObjectStore,
  layers: LayerDescriptor[],
  root: ViewNode,
  targetDir: string,
  opts: ExtractOptions = {},
): Promise<ExtractStats> {
  const warn = opts.onWarning ?? (() => undefined);
  const target = resolve(targetDir);
  const mode = await checkTarget(target, !!opts.force);
  await mkdir(dirname(target), { recursive: true });
  const staging = besideTarget(target, '');
  await mkdir(staging, { mode: 0o700 });
  const stagingB = fromFsPath(Buffer.from(staging));
  const stats: ExtractStats = { entries: 0, bytes: 0, requests: 0 };
  const tr = span('extract');
  try {
    // 1. Structure: directories, empty files sized to their length (holes), special files.
    const perLayer = new Map<number, ChunkJob[]>();
    const dataNode = new Map<ViewNode, BytePath>(); // file data holder -> first path created
    const links: Array<[BytePath, BytePath]> = [];
    const symlinks: ViewNode[] = [];
    const metaLater: Array<[BytePath, TocEntry]> = [];
    const dirs: Array<[BytePath, TocEntry]> = [];
    const created: Array<[BytePath, number]> = [];
    const mkdirs: BytePath[] = [];
    const nodes: Array<() => void> = [];
    let totalBytes = 0;
    for (const n of walkView(root)) {
      stats.entries++;
      const p = joinPath(stagingB, n.path);
      const e = n.entry;
      if (n === root) {
        dirs.push([p, e]);
        continue;
      }
      switch (e.type) {
        case 'dir':
          mkdirs.push(p);
          dirs.push([p, e]);
          break;
        case 'file':
        case 'hardlink': {
          const holder = n.linkTo ?? n;
          const first = dataNode.get(holder);
          if (first !== undefined) {
            links.push([first, p]);
            break;
          }
          dataNode.set(holder, p);
          const he = holder.entry;
          // A dense file is created by its first chunk write; empty and sparse ones here, at
          // their full size (the holes).
          const chunks = he.chunks ?? [];
          const last = chunks[chunks.length - 1];
          if (!last || last.offset + last.size < he.size) created.push([p, he.size]);
          const jobs = perLayer.get(holder.layer) ?? [];
          // A dense file in one chunk, without xattrs: created whole, metadata and all, by the
          // native batch of its frame (as root: owners are then always settable).
          const whole = NATIVE_WRITES && chunks.length === 1 && !he.sparse && chunks[0]!.offset === 0 && chunks[0]!.size === he.size && !he.xattrs?.length;
          for (const chunk of chunks) {
            jobs.push({ chunk, file: p, ...(whole ? { meta: he } : {}) });
            totalBytes += chunk.size;
          }
          perLayer.set(holder.layer, jobs);
          if (!whole) metaLater.push([p, he]);
          break;
        }
        case 'symlink':
          symlinks.push(n);
          break;
        case 'fifo':
          nodes.push(() => sys.mknod(toFsPath(p), C.S_IFIFO | 0o600, 0, 0));
          metaLater.push([p, e]);
          break;
        case 'char':
        case 'block':
          nodes.push(() => sys.mknod(toFsPath(p), (e.type === 'char' ? C.S_IFCHR : C.S_IFBLK) | 0o600, e.devMajor!, e.devMinor!));
          metaLater.push([p, e]);
          break;
        case 'whiteout':
          if (opts.overlayMarkers) nodes.push(() => sys.mknod(toFsPath(p), C.S_IFCHR, 0, 0));
          break;
      }
    }

    // Every directory in one job (parents first: the walk's order), then the special files.
    if (IS_ROOT) await fsBatch(staging, stagingB, mkdirs.map((p) => ({ p })));
    else for (const p of mkdirs) await mkdir(toFsPath(p), { mode: 0o700 });
    for (const make of nodes) make();
    tr.step(`structure: ${dirs.length} directories`);
    await forEachLimit(created, PARALLEL, async ([p, size]) => {
      const fh = await open(toFsPath(p), C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
      try {
        if (size > 0) await fh.truncate(size);
      } finally {
        await fh.close();
      }
    });

    // 2. Data: per layer, coalesced ranged reads; every chunk verified before it is written.
    for (const [layer, jobs] of perLayer) {
      const d = layers[layer]!;
      const codec = codecFor(d.codec);
      const key = layerKey(d);
      /** zstd frames are decoded, checked and written by native jobs, several frames each. */
      const native = d.codec === 'zstd';
      const writeFrame = async (fj: FrameJob, frame: Buffer): Promise<void> => {
        const where = `${key} (${displayPath(fj.jobs[0]!.file.slice(stagingB.length + 1))})`;
        // One decode and one digest check for every file of a shared frame.
        const all = await decodeFrame(codec, frame, fj.chunk, where);
        const batch = fj.jobs.filter((j) => j.meta !== undefined);
        if (batch.length > 0) {
          await writeWholeFiles(staging, stagingB, all, batch);
          for (const j of batch) stats.bytes += j.chunk.size;
        }
        await Promise.all(
          fj.jobs.filter((j) => j.meta === undefined).map(async (job) => {
            const at = job.chunk.frameOffset ?? 0;
            const data = job.chunk.frameSize === undefined ? all : all.subarray(at, at + job.chunk.size);
            let fh: FileHandle | undefined;
            try {
              // Only our own files are under staging, and no symlink exists there yet.
              fh = await open(toFsPath(job.file), C.O_WRONLY | C.O_CREAT | C.O_NOFOLLOW, 0o600);
              await fh.write(data, 0, data.length, job.chunk.offset);
            } finally {
              await fh?.close();
            }
            stats.bytes += data.length;
          }),
        );
      };
      /** A group of consecutive frames, `buf` holding the blob from `base`: written, verified. */
      const writeGroup = async (buf: Buffer, base: number, group: FrameJob[], fd: number): Promise<void> => {
        const nat = native ? group : [];
        const rest = native ? [] : group;
        await Promise.all([
          nat.length > 0 ? extractNative(staging, stagingB, buf, base, nat, key, fd) : undefined,
          ...rest.map((fj) => writeFrame(fj, buf.subarray(fj.chunk.blobOffset - base, fj.chunk.blobOffset - base + fj.chunk.blobLength))),
        ]);
        for (const fj of nat) for (const j of fj.jobs) stats.bytes += j.chunk.size;
        opts.onProgress?.({ bytes: stats.bytes, totalBytes });
      };
      // Reused across groups: GROUPS_IN_FLIGHT in jobs plus the one being read.
      const pool: Buffer[] = [];
      // A local store's zstd layer is one open file: native jobs pread their groups themselves.
      const local = native && store.openFile ? await store.openFile(key) : undefined;
      // One stream for every span: read through the gaps, from offset 0.
      const early = opts.body && layers.length === 1 ? new SpanReader(await opts.body, 0, key) : undefined;
      try {
        for (const span of spans(jobs, opts.maxGap ?? DEFAULT_MAX_GAP)) {
          stats.requests++;
          // No reader for a local layer: its native jobs pread their own groups.
          const reader = local ? undefined : (early ?? new SpanReader(await store.get(key, { start: span.start, end: span.end }), span.start, key));
          const pending: Promise<void>[] = [];
          try {
            for (let i = 0; i < span.frames.length; ) {
              // Frames up to GROUP_BYTES of blob go together: one read, one native job.
              const first = span.frames[i]!.chunk.blobOffset;
              let j = i + 1;
              while (j < span.frames.length && span.frames[j]!.chunk.blobOffset + span.frames[j]!.chunk.blobLength - first <= GROUP_BYTES) j++;
              const last = span.frames[j - 1]!.chunk;
              const end = last.blobOffset + last.blobLength;
              const pooled = pool.pop() ?? Buffer.allocUnsafe(POOLED_BYTES);
              const buf = reader ? await reader.take(first, end, pooled) : end - first <= pooled.length ? pooled.subarray(0, end - first) : Buffer.allocUnsafe(end - first);
              const w = writeGroup(buf, first, span.frames.slice(i, j), reader ? -1 : local!.fh.fd).finally(() => pool.push(pooled));
              // Awaited below; until then a failure must not surface as an unhandled rejection
              // (which kills the process before staging is cleaned up).
              w.catch(() => undefined);
              pending.push(w);
              if (pending.length >= GROUPS_IN_FLIGHT) await pending.shift();
              i = j;
            }
            await Promise.all(pending);
          } catch (err) {
            // Let writes in flight finish before the caller removes the staging directory.
            await Promise.allSettled(pending);
            reader?.close();
            throw err;
          }
        }
      } finally {
        early?.close();
        await local?.fh.close();
      }
    }

    tr.step('data written');
    // 3. Hard links, symlinks (last: nothing is written through them), then metadata.
    for (const [from, to] of links) await link(toFsPath(from), toFsPath(to));
    for (const n of symlinks) {
      const p = toFsPath(joinPath(stagingB, n.path));
      await symlink(toFsPath(n.entry.linkTarget!), p);
      metaLater.push([fromFsPath(p), n.entry]);
    }
    // Every entry exists by now, and setting a child's metadata does not touch its directory's
    // mtime, so directories can take theirs in any order. As root, entries without xattrs take
    // theirs in one native job (the same calls applyMeta makes); the rest here.
    const all = [...metaLater, ...dirs];
    const batch = IS_ROOT ? all.filter(([p, e]) => p !== stagingB && !e.xattrs?.length && !(opts.overlayMarkers && e.opaque)) : [];
    const inBatch = new Set(batch);
    await fsBatch(staging, stagingB, batch.map(([p, e]) => ({ p, e })));
    await forEachLimit(all.filter((x) => !inBatch.has(x)), PARALLEL, async ([p, e]) => {
      if (opts.overlayMarkers && e.type === 'dir' && e.opaque) sys.lsetxattr(toFsPath(p), 'trusted.overlay.opaque', Buffer.from('y'));
      await applyMeta(toFsPath(p), e, warn);
    });

    tr.step('links, symlinks, metadata');
    // 4. Swap in.
    await swapInto(target, mode, async () => {
      if (mode === 'empty') await rmdir(target);
      sys.renameNoReplace(Buffer.from(staging), Buffer.from(target));
    });
    return stats;
  } catch (err) {
    await rm(staging, { recursive: true, force: true }).catch(() => undefined);
    if (err instanceof StrataError) throw err;
    throw new BackupRestoreError(`restore into ${target} failed: ${(err as Error).message}`, { cause: err });
  }
}
