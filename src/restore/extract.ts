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
import { BackupRestoreError, StrataError } from '../errors.js';
import { besideTarget, checkTarget, swapInto } from './target.js';
import { codecFor } from '../format/codec.js';
import { type BytePath, displayPath, joinPath, toFsPath, fromFsPath } from '../format/paths.js';
import { layerKey, decodeFrame, type LayerDescriptor } from '../format/reader.js';
import type { Chunk, TocEntry } from '../format/toc.js';
import type { ObjectStore } from '../store/store.js';
import { sys } from '../sys/native.js';
import { forEachLimit } from '../util/concurrency.js';
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

/** Native writes need root (owners) and the addon; elsewhere every file takes the fs path. */
const NATIVE_WRITES = IS_ROOT;

/** The whole files of one decoded frame, written by one native job. */
function writeWholeFiles(staging: string, stagingB: BytePath, frame: Buffer, jobs: ChunkJob[]): Promise<void> {
  const R = WRITE_FILE_RECORD;
  const recs = Buffer.alloc(jobs.length * R.size);
  const names: Buffer[] = [];
  let pathsLen = 0;
  jobs.forEach((j, i) => {
    const e = j.meta!;
    const rel = Buffer.from(j.file.slice(stagingB.length + 1), 'latin1');
    const r = i * R.size;
    recs.writeUInt32LE(pathsLen, r + R.path);
    recs.writeUInt32LE(j.chunk.frameOffset ?? 0, r + R.dataOff);
    recs.writeUInt32LE(j.chunk.size, r + R.len);
    recs.writeUInt32LE(e.mode, r + R.mode);
    recs.writeUInt32LE(e.uid, r + R.uid);
    recs.writeUInt32LE(e.gid, r + R.gid);
    recs.writeBigInt64LE(BigInt(e.mtime[0]), r + R.mtimeS);
    recs.writeUInt32LE(e.mtime[1], r + R.mtimeNs);
    recs.writeUInt32LE(WF_OWNER, r + R.flags);
    names.push(rel, Buffer.alloc(1));
    pathsLen += rel.length + 1;
  });
  return sys.writeFiles(Buffer.from(staging), frame, recs, Buffer.concat(names, pathsLen));
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
  try {
    // 1. Structure: directories, empty files sized to their length (holes), special files.
    const perLayer = new Map<number, ChunkJob[]>();
    const dataNode = new Map<ViewNode, BytePath>(); // file data holder -> first path created
    const links: Array<[BytePath, BytePath]> = [];
    const symlinks: ViewNode[] = [];
    const metaLater: Array<[BytePath, TocEntry]> = [];
    const dirs: Array<[BytePath, TocEntry]> = [];
    const created: Array<[BytePath, number]> = [];
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
          await mkdir(toFsPath(p), { mode: 0o700 });
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
          sys.mknod(toFsPath(p), C.S_IFIFO | 0o600, 0, 0);
          metaLater.push([p, e]);
          break;
        case 'char':
        case 'block':
          sys.mknod(toFsPath(p), (e.type === 'char' ? C.S_IFCHR : C.S_IFBLK) | 0o600, e.devMajor!, e.devMinor!);
          metaLater.push([p, e]);
          break;
        case 'whiteout':
          if (opts.overlayMarkers) sys.mknod(toFsPath(p), C.S_IFCHR, 0, 0);
          break;
      }
    }

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
      for (const span of spans(jobs, opts.maxGap ?? DEFAULT_MAX_GAP)) {
        stats.requests++;
        const stream = await store.get(key, { start: span.start, end: span.end });
        let buffered: Buffer[] = [];
        let bufLen = 0;
        let pos = span.start; // blob offset of buffered[0][0]
        let i = 0;
        const pending: Promise<void>[] = [];
        const take = (len: number): Buffer => {
          const all = buffered.length === 1 ? buffered[0]! : Buffer.concat(buffered, bufLen);
          const out = all.subarray(0, len);
          const rest = all.subarray(len);
          buffered = rest.length ? [rest] : [];
          bufLen = rest.length;
          pos += len;
          return out;
        };
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
          opts.onProgress?.({ bytes: stats.bytes, totalBytes });
        };
        const drainReady = async (): Promise<void> => {
          while (i < span.frames.length) {
            const fj = span.frames[i]!;
            const skip = fj.chunk.blobOffset - pos;
            if (bufLen < skip + fj.chunk.blobLength) return;
            if (skip > 0) take(skip);
            const frame = Buffer.from(take(fj.chunk.blobLength));
            i++;
            const w = writeFrame(fj, frame);
            // Awaited below; until then a failure must not surface as an unhandled rejection
            // (which kills the process before staging is cleaned up).
            w.catch(() => undefined);
            pending.push(w);
            if (pending.length >= PARALLEL) await pending.shift();
          }
        };
        try {
          for await (const piece of stream as AsyncIterable<Buffer>) {
            buffered.push(piece);
            bufLen += piece.length;
            await drainReady();
          }
          await drainReady();
          await Promise.all(pending);
        } catch (err) {
          // Let writes in flight finish before the caller removes the staging directory.
          await Promise.allSettled(pending);
          throw err;
        }
        if (i !== span.frames.length) throw new BackupRestoreError(`short read of ${key} at offset ${pos}: the store returned less than asked`);
      }
    }

    // 3. Hard links, symlinks (last: nothing is written through them), then metadata.
    for (const [from, to] of links) await link(toFsPath(from), toFsPath(to));
    for (const n of symlinks) {
      const p = toFsPath(joinPath(stagingB, n.path));
      await symlink(toFsPath(n.entry.linkTarget!), p);
      metaLater.push([fromFsPath(p), n.entry]);
    }
    await forEachLimit(metaLater, PARALLEL, ([p, e]) => applyMeta(toFsPath(p), e, warn));
    // Every entry exists by now, and setting a child's metadata does not touch its directory's
    // mtime, so directories can take theirs in any order.
    await forEachLimit(dirs, PARALLEL, async ([p, e]) => {
      if (opts.overlayMarkers && e.opaque) sys.lsetxattr(toFsPath(p), 'trusted.overlay.opaque', Buffer.from('y'));
      await applyMeta(toFsPath(p), e, warn);
    });

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
