// Typed access to build/strata_sys.node (native/sys/strata_sys.c): the syscalls
// Node's fs lacks, and zstd on the libuv threadpool.
//
// Paths are Buffers of raw bytes (file names need not be UTF-8). Strings that
// carry bytes — xattr names and an error's `path`/`dest` — are latin1, one char
// per byte: convert with Buffer.from(name, 'latin1') / buf.toString('latin1').
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Syscall failures are thrown like Node's fs errors:
 * message "ENOENT: no such file or directory, lsetxattr '/p'", plus these fields.
 * zstd failures carry only `code` ('EDECOMPRESS', 'ECOMPRESS', 'ENOMEM').
 */
export interface NativeSysError extends Error {
  code: string;
  /** Negative errno, as in Node. */
  errno?: number;
  syscall?: string;
  /** latin1 string of the path bytes. */
  path?: string;
  /** renameNoReplace only: latin1 string of the target path. */
  dest?: string;
}

export interface NativeSys {
  /** Every xattr of `path` itself (symlinks not followed), sorted by name bytes.
   *  Names are latin1 strings. A filesystem without xattr support yields []. */
  llistxattrs(path: Buffer): Array<[string, Buffer]>;
  /** Create or replace one xattr; `name` is latin1 (one char per byte). */
  lsetxattr(path: Buffer, name: string, value: Buffer): void;
  /** `mode` includes the type (S_IFCHR, S_IFBLK, S_IFIFO, ...) and permission bits. */
  mknod(path: Buffer, mode: number, major: number, minor: number): void;
  /** utimensat(AT_SYMLINK_NOFOLLOW). Seconds are integers (may be negative),
   *  nanoseconds 0..999_999_999. */
  lutimens(path: Buffer, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void;
  /** [offset, length] data regions of an open regular file, clipped to `size`,
   *  via SEEK_DATA/SEEK_HOLE. [[0, size]] if the fs lacks SEEK_DATA; [] if all hole.
   *  The fd's file offset is restored before returning. */
  dataExtents(fd: number, size: number): Array<[number, number]>;
  /** renameat2(RENAME_NOREPLACE): throws EEXIST if `to` exists. */
  renameNoReplace(from: Buffer, to: Buffer): void;
  /** An exclusive OFD lock on the whole file (fd open for writing), not waiting: true when
   *  taken, false when another open file description holds it. The kernel drops it when the
   *  description closes or the process dies. */
  lockFile(fd: number): boolean;
  /** One zstd frame, content size in the header, no checksum. Runs on the threadpool;
   *  do not modify `input` until the promise settles. */
  zstdCompress(input: Buffer, level: number): Promise<Buffer>;
  /** One zstd frame of the parts' concatenation and its sha256 (32 bytes), without joining
   *  them in JS. Do not modify `parts` or its Buffers until the promise settles. */
  zstdFrame(parts: Buffer[], level: number): Promise<{ frame: Buffer; digest: Buffer }>;
  /** Decodes one zstd frame into a Buffer of exactly `expectedSize` bytes. Rejects
   *  with code 'EDECOMPRESS' on a size mismatch (either way), trailing bytes, or
   *  corruption; never allocates or writes more than `expectedSize`. With `digest` (32 bytes)
   *  the output's sha256 is checked on the threadpool too: code 'EDIGEST' on a mismatch. */
  zstdDecompress(input: Buffer, expectedSize: number, digest?: Buffer): Promise<Buffer>;
  /** Create, write and set the metadata of whole files from one verified frame, on the
   *  threadpool (native/sys/extract.c; records: WRITE_FILE_RECORD in src/restore/extract.ts).
   *  Rejects like fs with the first failure. */
  writeFiles(root: Buffer, data: Buffer, recs: Buffer, paths: Buffer): Promise<void>;
  /** writeFiles for many zstd frames of one blob, still compressed (`blob`: the bytes holding
   *  them): each is decoded, checked against its sha256 and its whole files written, on the
   *  threadpool (native/sys/extract.c; frame records: EXTRACT_FRAME_RECORD in
   *  src/restore/extract.ts). `fd` not -1: the job first fills `blob` by pread from that file at
   *  offset `at` (a local store's layer). Rejects with code 'EDIGEST' when a frame is damaged
   *  (nothing of it is written), else like fs. */
  extractFrames(root: Buffer, blob: Buffer, frames: Buffer, files: Buffer, paths: Buffer, fd: number, at: number): Promise<void>;
  /** mkdir (0700) and metadata (lchown, chmod, utimensat, never following symlinks) of many
   *  entries under `root`, in order, on the threadpool (native/sys/extract.c; records:
   *  FS_BATCH_RECORD in src/restore/extract.ts). Rejects like fs with the first failure. */
  fsBatch(root: Buffer, recs: Buffer, paths: Buffer): Promise<void>;
  /** One directory's entries for capture, on the threadpool (native/sys/scan.c); decoded by
   *  src/sys/scan.ts. `names` null lists the directory (sorted bytewise). Rejects like fs
   *  (syscall 'scandir') when the directory cannot be opened or listed. */
  scanDir(dir: Buffer, names: Buffer[] | null, smallMax: number, budget: number): Promise<RawScan>;
  /** Start capturing the tree at `root` on C threads (native/sys/capture.c): one walker and
   *  `workers` readers/compressors. Frames are zstd at `level`; shared frames close at
   *  `frameBound` bytes, files are chunked at `chunkSize`. src/capture/native-tree.ts drives it. */
  /** start: a layer path below root to capture (its own entry left out), or null for all of root; upper: root is an overlay upper. */
  captureStart(root: Buffer, level: number, frameBound: number, chunkSize: number, workers: number, start: Buffer | null, upper: boolean): CaptureHandle;
  /** The next finished frames, in layer order, and the JSON items that describe them; null at
   *  the end. Rejects with the capture's first failure (an fs-shaped error, or code 'ETORN' /
   *  'ELINKGONE' with `layerPath`, `tries`, `ms`). One call at a time per handle. */
  captureNext(h: CaptureHandle): Promise<{ data: Buffer; meta: string } | null>;
  /** Stop the capture's threads and free it; idempotent. Not while captureNext runs. */
  captureStop(h: CaptureHandle): void;
  /** Mount `fstype` at target with the kernel's mount API (fsopen, one fsconfig per parameter,
   *  fsmount, move_mount) on the threadpool: no process is spawned. Rejects with `code` (ENOSYS
   *  where the kernel lacks the API), `errno`, `syscall`, and `parameter` when fsconfig refused
   *  one; the message carries what the filesystem logged. */
  mountFs(fstype: string, source: string, target: Buffer, params: Array<[string] | [string, string | Buffer]>): Promise<void>;
  /** umount2(target, UMOUNT_NOFOLLOW, MNT_DETACH when lazy) on the threadpool: no umount(8), so no
   *  fork of this process. Rejects with code EBUSY (in use), EINVAL (not a mount point), ENOENT,
   *  EPERM, and `errno`, `syscall`. */
  unmountFs(target: Buffer, lazy: boolean): Promise<void>;
  /** Start `file` (found on PATH) in a session of its own through `setsid --fork`, with posix_spawn
   *  on the threadpool (no fork of this process, whatever its size): stdin /dev/null, stdout and
   *  stderr on the fds given (else /dev/null), with readyPipe fd 3 the write end of a pipe whose
   *  read end resolves (else -1); env as NAME=value entries. Never this process's child. */
  spawnDetached(file: string, args: string[], opts: { stdoutFd?: number; stderrFd?: number; readyPipe?: boolean }, env: string[] | null): Promise<{ readyFd: number }>;
}

/** An opaque native capture. */
export type CaptureHandle = { readonly __capture: unique symbol };

/** What scanDir resolves to: see src/sys/scan.ts. */
export interface RawScan {
  names: Buffer;
  nameEnds: Uint32Array;
  fields: BigInt64Array;
  data: Buffer;
  digests: Buffer;
  xattrs: Array<Array<[string, Buffer]> | undefined> | null;
}

const FUNCTIONS = [
  'llistxattrs',
  'lsetxattr',
  'mknod',
  'lutimens',
  'dataExtents',
  'renameNoReplace',
  'lockFile',
  'zstdCompress',
  'zstdFrame',
  'zstdDecompress',
  'writeFiles',
  'extractFrames',
  'fsBatch',
  'scanDir',
  'captureStart',
  'captureNext',
  'captureStop',
  'mountFs',
  'unmountFs',
  'spawnDetached',
] as const satisfies ReadonlyArray<keyof NativeSys>;

function load(): NativeSys {
  // src/sys/native.ts and dist/sys/native.js both sit two levels below the repo root.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const addonPath = path.resolve(here, '..', '..', 'build', 'strata_sys.node');
  let addon: Record<string, unknown>;
  try {
    addon = createRequire(import.meta.url)(addonPath) as Record<string, unknown>;
  } catch (cause) {
    throw new Error(
      `cannot load the native addon ${addonPath}: run \`make native\` (the build needs libzstd-dev)`,
      { cause },
    );
  }
  const missing = FUNCTIONS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new Error(
      `native addon ${addonPath} is stale (missing ${missing.join(', ')}): run \`make native\``,
    );
  }
  return addon as unknown as NativeSys;
}

export const sys: NativeSys = load();
