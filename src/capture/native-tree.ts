/**
 * A whole tree captured by C threads (native/sys/capture.c): the walk, reads, hashes, tar
 * headers and zstd frames happen there; this loop appends the finished frames to the layer in
 * order, turns their records into TOC entries, and captures in JavaScript (TreeCapture, with its
 * retries) the few entries the engine hands back: sparse files, entries it could not read, and
 * large files that changed under the read. JavaScript runs a few steps per 4 MiB of frames, not
 * several per file.
 *
 * The items (capture.c's header comment says what each means) count offsets in the engine's own
 * bytes; the blob also holds what JavaScript wrote for handed-back entries, so a blob offset is
 * the engine offset plus `delta`, the bytes JavaScript added so far.
 */
import { availableParallelism } from 'node:os';
import { BackupCreateError } from '../errors.js';
import { type BytePath, displayPath, joinPath, toFsPath } from '../format/paths.js';
import { MAX_CHUNK_SIZE, type Chunk, type EntryType, type TocEntry } from '../format/toc.js';
import type { LayerWriter, Mark } from '../format/writer.js';
import { ZstdCodec } from '../format/codec.js';
import { sys } from '../sys/native.js';
import { TornFileError, type TreeCapture } from './tree.js';

const TYPES: Record<string, EntryType> = { d: 'dir', f: 'file', l: 'symlink', h: 'hardlink', c: 'char', b: 'block', p: 'fifo' };

/** [offset, size, blobOffset, blobLength, digestHex, frameOffset?, frameSize?] */
type RawChunk = [number, number, number, number, string, number?, number?];
/** [path, type, mode, uid, gid, sec, nsec, size, digestHex, headerOffset, chunks, link, [major, minor], xattrs, signature (upper only)] */
type RawEntry = [string, string, number, number, number, number, number, number, string | null, number, RawChunk[] | null, string | null, [number, number] | null, Array<[string, string]> | null, string?];
type Item = ['t', number] | ['w', number] | ['e', RawEntry[]] | ['f' | 's' | 'x', string] | ['L'] | ['C'];

/** Engine threads: the reads of a cold tree overlap when there are more of them than CPUs. */
export function captureWorkers(): number {
  const env = Number(process.env.STRATA_CAPTURE_THREADS);
  if (Number.isInteger(env) && env >= 1 && env <= 16) return env;
  return Math.min(16, Math.max(4, 2 * availableParallelism()));
}

/** Whether the native engine can write this writer's layers (zstd with shared frames). */
export function nativeCaptureFor(writer: LayerWriter): boolean {
  return process.env.STRATA_CAPTURE !== 'js' && writer.codec instanceof ZstdCodec && writer.sharedFileMax > 0;
}

function toEntry(r: RawEntry, at: number): TocEntry {
  const type = TYPES[r[1]];
  if (type === undefined) throw new Error(`internal: native capture gave entry type ${r[1]}`);
  const e: TocEntry = { path: r[0], type, mode: r[2], uid: r[3], gid: r[4], mtime: [r[5], r[6]], size: r[7], headerOffset: r[9] + at };
  if (r[13]) e.xattrs = r[13].map(([n, v]) => [n, Buffer.from(v, 'base64')]);
  if (r[8] !== null) e.digest = 'sha256:' + r[8];
  if (r[11] !== null) e.linkTarget = r[11];
  if (r[12]) [e.devMajor, e.devMinor] = r[12];
  if (r[10]) {
    e.chunks = r[10].map((c): Chunk => {
      const chunk: Chunk = { offset: c[0], size: c[1], blobOffset: c[2] + at, blobLength: c[3], digest: 'sha256:' + c[4] };
      if (c[6] !== undefined) {
        chunk.frameOffset = c[5]!;
        chunk.frameSize = c[6];
      }
      return chunk;
    });
  }
  return e;
}

/** What JavaScript did besides appending frames. */
export interface NativeCaptureStats {
  /** Entries captured by TreeCapture instead (sparse, unreadable, or moved under the read). */
  handedBack: number;
  /** Large files whose frames were rolled back because they moved under the read. */
  rolledBack: number;
}

export interface NativeCaptureOptions {
  onProgress?: (entries: number, bytes: number) => void;
  onWarning?: (m: string) => void;
  /**
   * A workspace's upper: capture the subtree at this layer path below root (its own entry is the
   * caller's), without overlay's xattrs; whiteouts, opaque or renamed directories and files with
   * other names come back through handBack, and every entry captured gets onCaptured.
   */
  upper?: {
    start: BytePath;
    handBack: (path: BytePath) => Promise<void>;
    onCaptured: (entry: TocEntry, signature: string) => void;
  };
}

/** Captures the engine has run in this process, by kind (for tests and traces). */
export const nativeCaptures = { trees: 0, upperSubtrees: 0 };

/** Capture everything beneath `root` (whose own entry is '.') into the writer, or the upper subtree opts.upper names. */
export async function captureTreeNative(root: BytePath, tree: TreeCapture, writer: LayerWriter, opts: NativeCaptureOptions = {}): Promise<NativeCaptureStats> {
  const stats: NativeCaptureStats = { handedBack: 0, rolledBack: 0 };
  const codec = writer.codec as ZstdCodec;
  const upper = opts.upper;
  if (upper) nativeCaptures.upperSubtrees++;
  else nativeCaptures.trees++;
  await writer.settle();
  const h = sys.captureStart(toFsPath(root), codec.level, writer.sharedFileMax, MAX_CHUNK_SIZE, captureWorkers(), upper ? toFsPath(upper.start) : null, upper !== undefined);
  /** Engine offset of the current task's start, and of the next engine byte. */
  let base = 0;
  let E = 0;
  let delta = writer.size;
  let mark: Mark | undefined;
  let entries = 0;
  let bytes = 0;
  /** An entry handed back: JavaScript's careful path, then nothing owed again. */
  const handBack = async (path: BytePath): Promise<void> => {
    stats.handedBack++;
    if (upper) await upper.handBack(path);
    else await tree.captureEntry(joinPath(root, path), path);
    await writer.settle();
    delta = writer.size - E;
  };
  try {
    for (;;) {
      let batch: { data: Buffer; meta: string } | null;
      try {
        batch = await sys.captureNext(h);
      } catch (err) {
        const e = err as NodeJS.ErrnoException & { layerPath?: string; tries?: number; ms?: number };
        if (e.code === 'ETORN') throw new TornFileError(e.layerPath ?? '?', e.tries ?? 0, e.ms ?? 0);
        if (e.code === 'ELINKGONE') throw new BackupCreateError(`file ${e.layerPath ?? '?'} was removed during the backup while other names of it remain; retry the backup`);
        throw err;
      }
      if (batch === null) break;
      const items = JSON.parse(batch.meta) as Item[];
      let pos = 0;
      for (const it of items) {
        switch (it[0]) {
          case 't':
            base = E = it[1];
            break;
          case 'w':
            await writer.writeFrames(batch.data.subarray(pos, pos + it[1]));
            pos += it[1];
            E += it[1];
            break;
          case 'e': {
            const at = base + delta;
            const got = it[1].map((r) => toEntry(r, at));
            writer.addWritten(got);
            if (upper) {
              it[1].forEach((r, i) => {
                if (r[14] === undefined) throw new Error('internal: native capture of an upper gave a record without its signature');
                upper.onCaptured(got[i]!, r[14]);
              });
            }
            entries += got.length;
            for (const e of got) bytes += e.type === 'file' ? e.size : 0;
            break;
          }
          case 'L':
            mark = await writer.mark();
            break;
          case 'C':
            writer.release();
            mark = undefined;
            break;
          case 'x':
            // A large file moved under the read: what was written of it goes, JavaScript retries it.
            if (!mark) throw new Error('internal: native capture rolled back without a mark');
            await writer.rollback(mark);
            stats.rolledBack++;
            mark = undefined;
            E = base;
            await handBack(it[1]);
            break;
          case 'f':
            await handBack(it[1]);
            break;
          case 's':
            // An upper's walk records it in the baseline (and warns) itself.
            if (upper) await handBack(it[1]);
            else opts.onWarning?.(`skipping socket ${displayPath(it[1])}: sockets cannot be stored`);
            break;
        }
      }
      if (pos !== batch.data.length) throw new Error(`internal: native capture gave ${batch.data.length - pos} bytes no item describes`);
      opts.onProgress?.(entries, bytes);
    }
  } finally {
    sys.captureStop(h);
  }
  return stats;
}
