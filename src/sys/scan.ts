/**
 * A directory scanned for capture in one native call (native/sys/scan.c): every entry's lstat,
 * symlink target and xattrs, and the bytes and sha256 of each small file that held still while
 * it was read. Field and flag numbers are defined here and in scan.c (enum scan_field/scan_flag);
 * test/native-scan.test.ts checks them against lstat and the file contents.
 */
import { type BigIntStats, constants as C } from 'node:fs';
import { type RawScan, sys } from './native.js';

const enum F {
  FLAGS,
  ERRNO,
  MODE,
  UID,
  GID,
  SIZE,
  BLOCKS,
  NLINK,
  INO,
  DEV,
  RDEV,
  MTIME_S,
  MTIME_NS,
  CTIME_S,
  CTIME_NS,
  DATA_OFF,
  DATA_LEN,
}
export const SCAN_FIELDS = 17;

export const enum ScanFlag {
  /** lstat found it; without it the entry is gone (not part of this point in time). */
  EXISTS = 1,
  /** A small file read whole that held still: data() and digest() are its contents. */
  DATA = 2,
  /** A symlink whose target is data(). */
  LINK = 4,
  /** xattrs() is the entry's xattrs (else ask llistxattrs). */
  XATTRS = 8,
  /** A small file left unread: over the scan's budget; scan the rest again. */
  BUDGET = 16,
  /** With DATA: changed just before the read, so read twice; both reads agreed. */
  TWICE = 32,
}

/** What capture reads of an lstat: BigIntStats and ScanStat both have it. */
export type EntryStat = Pick<
  BigIntStats,
  'mode' | 'uid' | 'gid' | 'size' | 'blocks' | 'nlink' | 'ino' | 'dev' | 'rdev' | 'mtimeNs' | 'ctimeNs'
  | 'isFile' | 'isDirectory' | 'isSymbolicLink' | 'isFIFO' | 'isCharacterDevice' | 'isBlockDevice' | 'isSocket'
>;

/** One entry's lstat from a scan, read lazily from the shared field array. */
export class ScanStat implements EntryStat {
  constructor(
    private readonly f: BigInt64Array,
    private readonly at: number,
  ) {}
  get mode(): bigint {
    return this.f[this.at + F.MODE]!;
  }
  get uid(): bigint {
    return this.f[this.at + F.UID]!;
  }
  get gid(): bigint {
    return this.f[this.at + F.GID]!;
  }
  get size(): bigint {
    return this.f[this.at + F.SIZE]!;
  }
  get blocks(): bigint {
    return this.f[this.at + F.BLOCKS]!;
  }
  get nlink(): bigint {
    return this.f[this.at + F.NLINK]!;
  }
  get ino(): bigint {
    return BigInt.asUintN(64, this.f[this.at + F.INO]!);
  }
  get dev(): bigint {
    return BigInt.asUintN(64, this.f[this.at + F.DEV]!);
  }
  get rdev(): bigint {
    return BigInt.asUintN(64, this.f[this.at + F.RDEV]!);
  }
  get mtimeNs(): bigint {
    return this.f[this.at + F.MTIME_S]! * 1_000_000_000n + this.f[this.at + F.MTIME_NS]!;
  }
  get ctimeNs(): bigint {
    return this.f[this.at + F.CTIME_S]! * 1_000_000_000n + this.f[this.at + F.CTIME_NS]!;
  }
  private type(): number {
    return Number(this.f[this.at + F.MODE]!) & C.S_IFMT;
  }
  isFile(): boolean {
    return this.type() === C.S_IFREG;
  }
  isDirectory(): boolean {
    return this.type() === C.S_IFDIR;
  }
  isSymbolicLink(): boolean {
    return this.type() === C.S_IFLNK;
  }
  isFIFO(): boolean {
    return this.type() === C.S_IFIFO;
  }
  isCharacterDevice(): boolean {
    return this.type() === C.S_IFCHR;
  }
  isBlockDevice(): boolean {
    return this.type() === C.S_IFBLK;
  }
  isSocket(): boolean {
    return this.type() === C.S_IFSOCK;
  }
}

export class DirScan {
  readonly count: number;
  constructor(private readonly raw: RawScan) {
    this.count = raw.nameEnds.length;
  }
  /** The entry's name as bytes (a view into the scan). */
  name(i: number): Buffer {
    return this.raw.names.subarray(i > 0 ? this.raw.nameEnds[i - 1] : 0, this.raw.nameEnds[i]);
  }
  flags(i: number): number {
    return Number(this.raw.fields[i * SCAN_FIELDS + F.FLAGS]);
  }
  /** The errno of a failed lstat other than ENOENT/ENOTDIR (0 if none). */
  errno(i: number): number {
    return Number(this.raw.fields[i * SCAN_FIELDS + F.ERRNO]);
  }
  stat(i: number): ScanStat {
    return new ScanStat(this.raw.fields, i * SCAN_FIELDS);
  }
  /** DATA: the file's bytes; LINK: the target (views into the scan). */
  data(i: number): Buffer {
    const off = Number(this.raw.fields[i * SCAN_FIELDS + F.DATA_OFF]);
    return this.raw.data.subarray(off, off + Number(this.raw.fields[i * SCAN_FIELDS + F.DATA_LEN]));
  }
  /** DATA: 'sha256:<hex>' of data(). */
  digest(i: number): string {
    return 'sha256:' + this.raw.digests.toString('hex', i * 32, i * 32 + 32);
  }
  /** XATTRS: the entry's xattrs sorted by name ([] when none). */
  xattrs(i: number): Array<[string, Buffer]> {
    return this.raw.xattrs?.[i] ?? [];
  }
}

/**
 * Scan `dir` (names null: list it) reading small files (≤ smallMax bytes) whole while their total
 * stays within budget bytes.
 */
export async function scanDir(dir: Buffer, names: Buffer[] | null, smallMax: number, budget: number): Promise<DirScan> {
  return new DirScan(await sys.scanDir(dir, names, smallMax, budget));
}
