/**
 * Capture a directory tree into a layer: walk it in byte order, record every entry's metadata as
 * rsync -aHAX would keep it, and stream file data in chunks into the LayerWriter.
 *
 * Point in time: a file whose size, mtime or ctime moves while it is read is read again, with a
 * jittered backoff, until it holds still for one read; a file that never does within `retryWindowMs`
 * (and at least `maxRetries` tries) fails the capture rather than be stored torn.
 */
import { createHash } from 'node:crypto';
import { constants as C } from 'node:fs';
import { lstat, open, readlink, type FileHandle } from 'node:fs/promises';
import { BackupCreateError } from '../errors.js';
import { type BytePath, displayPath, fromFsPath, joinPath, parentOf, toFsPath } from '../format/paths.js';
import type { Extent } from '../format/tar.js';
import { MAX_CHUNK_SIZE, type TocEntry } from '../format/toc.js';
import type { LayerWriter } from '../format/writer.js';
import { sys } from '../sys/native.js';
import { type DirScan, type EntryStat, ScanFlag, scanDir } from '../sys/scan.js';

export interface CaptureOptions {
  /** Skip entries for which this returns true (layer paths, byte strings). */
  exclude?: (path: BytePath, st: EntryStat) => boolean;
  /** Drop xattrs whose name this returns true for (e.g. overlay's own trusted.overlay.*). */
  skipXattr?: (name: string) => boolean;
  /** Fewest tries at a file that changes under the read before giving up (default 5). */
  maxRetries?: number;
  /**
   * How long to keep trying a file that changes under the read (default 3000 ms). A writer that
   * pauses between writes, even briefly, leaves a quiet spell inside this window; only one that
   * never holds still fails the backup.
   */
  retryWindowMs?: number;
  onProgress?: (p: CaptureProgress) => void;
  onWarning?: (msg: string) => void;
}

export interface CaptureProgress {
  entries: number;
  bytes: number;
}

export class TornFileError extends BackupCreateError {
  constructor(path: BytePath, tries: number, ms: number) {
    super(`file ${displayPath(path)} kept changing while it was read (${tries} tries over ${ms} ms); stop the writer or retry the backup`);
  }
}

export function splitNs(ns: bigint): [number, number] {
  let sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  if (nsec < 0n) {
    nsec += 1_000_000_000n;
    sec -= 1n;
  }
  return [Number(sec), Number(nsec)];
}

export function devMajor(rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
}
export function devMinor(rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
}

/** Metadata common to every entry type, from an lstat. */
export function baseMeta(path: BytePath, st: EntryStat, fsPath: Buffer, skipXattr?: (n: string) => boolean, known?: Array<[string, Buffer]>): Omit<TocEntry, 'type' | 'headerOffset'> {
  let xattrs = known ?? sys.llistxattrs(fsPath);
  if (skipXattr) xattrs = xattrs.filter(([n]) => !skipXattr(n));
  const meta: Omit<TocEntry, 'type' | 'headerOffset'> = {
    path,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtime: splitNs(st.mtimeNs),
    size: 0,
  };
  if (xattrs.length > 0) meta.xattrs = xattrs;
  return meta;
}

function sameFile(a: EntryStat, b: EntryStat): boolean {
  return a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs && a.ino === b.ino;
}

/**
 * A write moves a file's mtime and ctime when it begins, not when its data is all in: a read that
 * starts while a write is still copying sees a torn file with stats that do not move. A file
 * changed this recently before its read is therefore read twice (racy-git style).
 */
const RACY_WINDOW_MS = 2000;

/**
 * Before the second read of a large recently-changed file, give a write in flight time to land:
 * one write() of megabytes copies page by page and can be stalled midway (dirty-page
 * throttling), and two reads inside one stall would agree on a torn file. Small files, whose
 * writes are over in microseconds, are re-read at once (a tree just written may hold thousands).
 */
const SETTLE_FROM = 256 * 1024;
const SETTLE_MS = 30;
function settle(size: number): Promise<void> {
  return size >= SETTLE_FROM ? new Promise((r) => setTimeout(r, SETTLE_MS)) : Promise.resolve();
}
/**
 * The wait before try `attempt` (2, 3, ...): doubling from 10 ms to at most 200 ms, each scaled by
 * a random 0.5-1.5 so that retries do not fall into step with a writer that rewrites on a timer.
 */
function retryDelay(attempt: number): number {
  const base = Math.min(200, 10 * 2 ** (attempt - 2));
  return Math.round(base * (0.5 + Math.random()));
}
function racy(st: EntryStat, readStartMs: number): boolean {
  return st.ctimeNs >= BigInt(readStartMs - RACY_WINDOW_MS) * 1_000_000n;
}

/** ENOENT/ENOTDIR: the entry (or a parent) was removed or replaced under the capture. */
function isVanished(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Files up to this size are read ahead whole. */
export const PREFETCH_MAX = 256 * 1024;
/** Bytes of small files one directory scan reads before it returns (the rest: another scan). */
export const SCAN_BUDGET = 8 * 2 ** 20;
/** Directory scans started ahead of the writer (each holds up to SCAN_BUDGET bytes). */
const SCANS_AHEAD = 4;

/**
 * An entry's lstat, and for a small dense regular file its bytes and the fstat after reading
 * them; from a native scan also their digest, the entry's xattrs and a symlink's target.
 */
export interface Prefetched {
  st: EntryStat;
  data?: Buffer;
  after?: EntryStat;
  digest?: string;
  /** data was read twice (the file changed just before the first read) and both agreed. */
  twice?: boolean;
  xattrs?: Array<[string, Buffer]>;
  linkTarget?: Buffer;
}

/** One scanned entry as a Prefetched. */
export function fromScan(scan: DirScan, i: number, flags: number): Prefetched {
  const st = scan.stat(i);
  const pre: Prefetched = { st };
  if (flags & ScanFlag.XATTRS) pre.xattrs = scan.xattrs(i);
  if (flags & ScanFlag.DATA) {
    pre.data = scan.data(i);
    pre.after = st;
    pre.digest = scan.digest(i);
    if (flags & ScanFlag.TWICE) pre.twice = true;
  } else if (flags & ScanFlag.LINK) pre.linkTarget = scan.data(i);
  return pre;
}

/**
 * The entries of a directory scan, in order, each as a Prefetched: entries past the scan's read
 * budget are scanned again (the rest of the names, one more job), an entry the scan could not
 * stat is lstat'ed from JS (which says why, or finds it gone), and entries gone since the listing
 * are skipped: not part of this point in time. Shared by full and workspace capture.
 */
export async function* scanEntries(fsPath: BytePath, scan: DirScan): AsyncGenerator<{ name: BytePath; entry: Prefetched }> {
  for (let i = 0; i < scan.count; i++) {
    let flags = scan.flags(i);
    if (flags & ScanFlag.BUDGET) {
      const rest: Buffer[] = [];
      for (let j = i; j < scan.count; j++) rest.push(scan.name(j));
      scan = await scanDir(toFsPath(fsPath), rest, PREFETCH_MAX, SCAN_BUDGET);
      i = 0;
      flags = scan.flags(i);
    }
    const name = fromFsPath(scan.name(i));
    const entry = scan.errno(i) !== 0 ? await prefetch(joinPath(fsPath, name)) : flags & ScanFlag.EXISTS ? fromScan(scan, i, flags) : null;
    if (entry) yield { name, entry };
  }
}

/**
 * Directory scans started ahead of the capture that will need them, at most SCANS_AHEAD at once:
 * a scan runs on the threadpool while the capture writes the directory before it.
 */
class ScanAhead {
  private readonly started = new Map<BytePath, Promise<DirScan>>();

  /** Start scanning fsPath if there is room. */
  start(fsPath: BytePath): void {
    if (this.started.size >= SCANS_AHEAD || this.started.has(fsPath)) return;
    const p = scanDir(toFsPath(fsPath), null, PREFETCH_MAX, SCAN_BUDGET);
    p.catch(() => undefined); // surfaced when taken
    this.started.set(fsPath, p);
  }

  /** Forget scans started ahead and not taken. */
  drop(fsPaths: BytePath[]): void {
    for (const p of fsPaths) this.started.delete(p);
  }

  /** The scan of fsPath: the one started ahead, else a new one. */
  take(fsPath: BytePath): Promise<DirScan> {
    const p = this.started.get(fsPath);
    if (!p) return scanDir(toFsPath(fsPath), null, PREFETCH_MAX, SCAN_BUDGET);
    this.started.delete(fsPath);
    return p;
  }
}

/** lstat an entry and read it if it is a small dense file; null when it no longer exists. */
async function prefetch(fsPath: BytePath): Promise<Prefetched | null> {
  let st: EntryStat;
  try {
    st = await lstat(toFsPath(fsPath), { bigint: true });
  } catch (err) {
    if (isVanished(err)) return null;
    throw err;
  }
  // Possibly sparse files (fewer blocks than bytes) take the careful path.
  if (!st.isFile() || st.size > BigInt(PREFETCH_MAX) || st.blocks * 512n < st.size) return { st };
  let fh: FileHandle;
  try {
    fh = await open(toFsPath(fsPath), C.O_RDONLY | C.O_NOFOLLOW);
  } catch {
    return { st }; // gone or replaced: the careful path decides
  }
  try {
    const size = Number(st.size);
    const data = Buffer.allocUnsafe(size);
    const got = await readFully(fh, data, size);
    return { st, data: data.subarray(0, got), after: await fh.stat({ bigint: true }) };
  } finally {
    await fh.close();
  }
}

/**
 * Writes each entry's missing parent directories before it, so every layer stands alone as an
 * overlay lower directory (a parent missing from a layer would appear with made-up metadata and
 * hide the real one's). `emitted` is every directory already in the layer.
 */
export class ParentDirs {
  readonly emitted = new Set<BytePath>(['.']);
  constructor(
    private readonly tree: TreeCapture,
    private readonly base: BytePath,
  ) {}

  /** Add path's missing ancestors, read from `base` (or the given root) in top-down order. */
  async ensure(path: BytePath, base = this.base): Promise<void> {
    const missing: BytePath[] = [];
    for (let a = parentOf(path); !this.emitted.has(a); a = parentOf(a)) missing.unshift(a);
    for (const a of missing) {
      const fsA = joinPath(base, a);
      await this.tree.addEntry(fsA, a, await lstat(toFsPath(fsA), { bigint: true }));
      this.emitted.add(a);
    }
  }
}

/** Read up to size bytes from the start of a file; fewer when it shrank under the read. */
async function readFully(fh: FileHandle, buf: Buffer, size: number, position = 0): Promise<number> {
  let got = 0;
  while (got < size) {
    const { bytesRead } = await fh.read(buf, got, size - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

export class TreeCapture {
  private readonly links = new Map<string, BytePath>();
  private entries = 0;
  private bytes = 0;
  private readonly maxRetries: number;
  private readonly retryWindowMs: number;
  private readonly scans = new ScanAhead();

  constructor(
    private readonly writer: LayerWriter,
    private readonly opts: CaptureOptions = {},
  ) {
    this.maxRetries = opts.maxRetries ?? 5;
    this.retryWindowMs = opts.retryWindowMs ?? 3000;
  }

  /**
   * Capture `root` (a real directory) as the whole layer, its own metadata as entry '.'. With
   * `engine` (the native capture, src/capture/native-tree.ts) the walk runs there, and this
   * object captures only the entries it hands back.
   */
  async captureAll(root: string, engine?: (root: BytePath, tree: TreeCapture) => Promise<unknown>): Promise<void> {
    const rootB = fromFsPath(Buffer.from(root));
    const st = await lstat(toFsPath(rootB), { bigint: true });
    if (!st.isDirectory()) throw new BackupCreateError(`${root} is not a directory`);
    if (engine && !this.opts.exclude && !this.opts.skipXattr) {
      await engine(rootB, this);
      return;
    }
    await this.captureDir(rootB, '.', st);
  }

  /** Capture the directory at fsPath as layer path `path`, then everything beneath it. */
  async captureDir(fsPath: BytePath, path: BytePath, st: EntryStat, extra?: Partial<TocEntry>, pre?: Prefetched): Promise<void> {
    await this.addEntry(fsPath, path, st, extra, pre);
    // One native scan per directory (lstat, xattrs, link targets, small files read and hashed):
    // a few calls per directory instead of several per file.
    let scan: DirScan;
    try {
      scan = await this.scans.take(fsPath);
    } catch (err) {
      // Deleted after it was recorded: empty at this point in time.
      if (path !== '.' && isVanished(err)) return;
      throw err;
    }
    // Its first subdirectories are scanned while its files are written.
    const ahead: BytePath[] = [];
    for (let i = 0; i < scan.count && ahead.length < SCANS_AHEAD; i++) {
      if (!(scan.flags(i) & ScanFlag.EXISTS) || !scan.stat(i).isDirectory()) continue;
      const name = fromFsPath(scan.name(i));
      if (this.opts.exclude?.(path === '.' ? name : path + '/' + name, scan.stat(i))) continue;
      ahead.push(joinPath(fsPath, name));
      this.scans.start(ahead[ahead.length - 1]!);
    }
    try {
      await this.captureEntries(fsPath, path, scan);
    } finally {
      // A subdirectory that vanished or changed type was never taken: free its slot.
      this.scans.drop(ahead);
    }
  }

  private async captureEntries(fsPath: BytePath, path: BytePath, scan: DirScan): Promise<void> {
    for await (const { name, entry } of scanEntries(fsPath, scan)) {
      const childFs = joinPath(fsPath, name);
      const child = path === '.' ? name : path + '/' + name;
      if (this.opts.exclude?.(child, entry.st)) continue;
      try {
        if (entry.st.isDirectory()) await this.captureDir(childFs, child, entry.st, undefined, entry);
        else await this.addEntry(childFs, child, entry.st, undefined, entry);
      } catch (err) {
        // Deleted between its lstat and its read (xattrs, link target): nothing of it was written
        // yet, so it is simply not part of this point in time, like an entry gone before the lstat.
        if (!isVanished(err)) throw err;
      }
    }
  }

  /** Capture one entry (recursively for directories). */
  async captureEntry(fsPath: BytePath, path: BytePath): Promise<void> {
    const pre = await prefetch(fsPath);
    if (!pre) return;
    if (this.opts.exclude?.(path, pre.st)) return;
    if (pre.st.isDirectory()) return this.captureDir(fsPath, path, pre.st);
    await this.addEntry(fsPath, path, pre.st, undefined, pre);
  }

  /** Add a single entry (no recursion). */
  async addEntry(fsPath: BytePath, path: BytePath, st: EntryStat, extra?: Partial<TocEntry>, pre?: Prefetched): Promise<void> {
    const xattrs = pre?.xattrs;
    const fsb = toFsPath(fsPath);
    const w = this.writer;
    this.entries++;
    if (!st.isDirectory() && st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const first = this.links.get(key);
      if (first !== undefined) {
        await w.addEntry({ ...baseMeta(path, st, fsb, this.opts.skipXattr, xattrs), type: 'hardlink', linkTarget: first });
        return this.progress();
      }
    }
    if (st.isDirectory()) {
      await w.addEntry({ ...baseMeta(path, st, fsb, this.opts.skipXattr, xattrs), type: 'dir', ...extra });
    } else if (st.isFile()) {
      if (!(pre && (await this.addPrefetched(fsPath, path, pre))) && !(await this.addFile(fsPath, path))) {
        this.entries--;
        return;
      }
    } else if (st.isSymbolicLink()) {
      const target = fromFsPath(pre?.linkTarget ?? (await readlink(fsb, { encoding: 'buffer' })));
      await w.addEntry({ ...baseMeta(path, st, fsb, this.opts.skipXattr, xattrs), type: 'symlink', linkTarget: target });
    } else if (st.isFIFO()) {
      await w.addEntry({ ...baseMeta(path, st, fsb, this.opts.skipXattr, xattrs), type: 'fifo' });
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      await w.addEntry({
        ...baseMeta(path, st, fsb, this.opts.skipXattr, xattrs),
        type: st.isCharacterDevice() ? 'char' : 'block',
        devMajor: devMajor(st.rdev),
        devMinor: devMinor(st.rdev),
      });
    } else {
      this.entries--;
      this.opts.onWarning?.(`skipping socket ${displayPath(path)}: sockets cannot be stored`);
      return;
    }
    // Later names of this inode become hard links to the first one captured.
    if (!st.isDirectory() && st.nlink > 1n) this.links.set(`${st.dev}:${st.ino}`, path);
    this.progress();
  }

  private progress(): void {
    this.opts.onProgress?.({ entries: this.entries, bytes: this.bytes });
  }

  /** A small file read ahead: kept when nothing moved between the lstat and the end of the read. */
  private async addPrefetched(fsPath: BytePath, path: BytePath, pre: Prefetched): Promise<boolean> {
    if (!pre.data || !pre.after || !sameFile(pre.st, pre.after) || pre.data.length !== Number(pre.st.size)) return false;
    // Changed just before it was read: read twice by the scan, or by the careful path.
    if (racy(pre.after, Date.now()) && !pre.twice) return false;
    const w = this.writer;
    const size = pre.data.length;
    const digest = pre.digest ?? 'sha256:' + createHash('sha256').update(pre.data).digest('hex');
    const e = await w.addEntry({ ...baseMeta(path, pre.after, toFsPath(fsPath), this.opts.skipXattr, pre.xattrs), type: 'file', size, digest });
    if (size > 0) await w.addChunk(e, 0, pre.data, digest);
    w.endFile(size);
    this.bytes += size;
    return true;
  }

  /** False when the file vanished before it could be read. */
  private async addFile(fsPath: BytePath, path: BytePath): Promise<boolean> {
    const start = Date.now();
    for (let attempt = 1; ; attempt++) {
      if (attempt > 1) {
        if (attempt > this.maxRetries && Date.now() - start >= this.retryWindowMs) {
          throw new TornFileError(path, attempt - 1, Date.now() - start);
        }
        await new Promise((r) => setTimeout(r, retryDelay(attempt)));
      }
      let fh: FileHandle;
      try {
        fh = await open(toFsPath(fsPath), C.O_RDONLY | C.O_NOFOLLOW);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false; // gone: not in this point in time
        throw err;
      }
      try {
        if (await this.tryFile(fh, fsPath, path)) return true;
      } finally {
        await fh.close();
      }
    }
  }

  /** One attempt at a file; false when it changed during the read (nothing of it is kept). */
  private async tryFile(fh: FileHandle, fsPath: BytePath, path: BytePath): Promise<boolean> {
    const w = this.writer;
    const startMs = Date.now();
    const before = await fh.stat({ bigint: true });
    const size = Number(before.size);
    const meta = baseMeta(path, before, toFsPath(fsPath), this.opts.skipXattr);
    let extents: Extent[] = [{ offset: 0, size }];
    let sparse = false;
    if (size > 0 && before.blocks * 512n < before.size) {
      extents = sys.dataExtents(fh.fd, size).map(([offset, len]) => ({ offset, size: len }));
      sparse = extents.reduce((n, x) => n + x.size, 0) < size;
      if (!sparse) extents = [{ offset: 0, size }];
    }
    if (size === 0) extents = [];

    // Small files: read whole, check, then queue (keeps the writer's pipeline full).
    if (!sparse && size <= MAX_CHUNK_SIZE) {
      const buf = Buffer.allocUnsafe(size);
      const got = await readFully(fh, buf, size);
      const after = await fh.stat({ bigint: true });
      if (got !== size || !sameFile(before, after)) return false;
      // Changed just before the read: a write may still have been copying data (its timestamps
      // moved when it began). A second read must find the same bytes.
      if (racy(after, startMs)) {
        await settle(size);
        const again = Buffer.allocUnsafe(size);
        if ((await readFully(fh, again, size)) !== size || !again.equals(buf) || !sameFile(before, await fh.stat({ bigint: true }))) return false;
      }
      // A file that may share a frame needs its own digest now; a larger one gets it from its
      // frame's compress job (off this thread).
      const digest = size === 0 || size <= w.sharedFileMax ? 'sha256:' + createHash('sha256').update(buf).digest('hex') : undefined;
      const e = await w.addEntry({ ...meta, type: 'file', size, ...(digest ? { digest } : {}) });
      if (size > 0) await w.addChunk(e, 0, buf, digest);
      w.endFile(size);
      this.bytes += size;
      return true;
    }

    // Large or sparse files: stream chunk by chunk, roll back if the file moved.
    const mark = await w.mark();
    const whole = sparse ? null : createHash('sha256');
    const e = await w.addEntry({ ...meta, type: 'file', size, ...(sparse ? { sparse: true } : {}) }, sparse ? extents : undefined);
    let stored = 0;
    const buf = Buffer.allocUnsafe(MAX_CHUNK_SIZE);
    for (const x of extents) {
      for (let off = x.offset; off < x.offset + x.size; ) {
        const want = Math.min(MAX_CHUNK_SIZE, x.offset + x.size - off);
        const got = await readFully(fh, buf, want, off);
        if (got !== want) {
          await w.rollback(mark);
          return false;
        }
        // The writer compresses asynchronously: hand it a copy, reuse buf.
        const data = Buffer.from(buf.subarray(0, got));
        whole?.update(data);
        await w.addChunk(e, off, data); // its digest: from the compress job
        off += got;
        stored += got;
      }
    }
    const after = await fh.stat({ bigint: true });
    if (racy(after, startMs)) await w.drain(); // the chunks' digests are known once written
    if (!sameFile(before, after) || (racy(after, startMs) && !(await this.rereadMatches(fh, e.chunks!, before)))) {
      await w.rollback(mark);
      return false;
    }
    if (whole) e.digest = 'sha256:' + whole.digest('hex');
    w.endFile(stored);
    this.bytes += stored;
    return true;
  }

  /** Read the chunks again: true when every one has the digest the first read gave. */
  private async rereadMatches(fh: FileHandle, chunks: Array<{ offset: number; size: number; digest: string }>, before: EntryStat): Promise<boolean> {
    await settle(Number(before.size));
    const buf = Buffer.allocUnsafe(MAX_CHUNK_SIZE);
    for (const c of chunks) {
      if ((await readFully(fh, buf, c.size, c.offset)) !== c.size) return false;
      if ('sha256:' + createHash('sha256').update(buf.subarray(0, c.size)).digest('hex') !== c.digest) return false;
    }
    return sameFile(before, await fh.stat({ bigint: true }));
  }
}
