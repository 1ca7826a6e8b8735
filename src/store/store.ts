import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';

/** One object as a listing reports it. */
export interface ObjectInfo {
  key: string;
  size: number;
  /** Last-modified time as the store reports it; gc's grace period is measured against it. */
  mtime: Date;
}

/** A write a crash or a failure left unfinished: an incomplete multipart upload, a temp file. */
export interface IncompleteWrite {
  /** The key it was writing. For the file store, its temp file under .tmp/. */
  key: string;
  /** S3: the upload id; file store: the temp file's name. */
  id: string;
  /** When it started (S3: initiated; file store: the temp file's mtime). */
  started: Date;
}

/** A byte range, both ends inclusive of start and exclusive of end: [start, end). */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * The one interface every object store implements (file://, s3://).
 *
 * Keys are '/'-separated relative names ("blobs/sha256/ab..", "manifests/x.json"). Every write is
 * atomic: a reader sees either no object or the whole object, never a part. Objects are treated as
 * immutable by strata: a key is written once (content-addressed blobs) or replaced whole.
 */
export interface PutFileOptions {
  onProgress?: (sentBytes: number) => void;
  move?: boolean;
}

export interface ObjectStore {
  /** The URL that names this store, e.g. file:///var/lib/strata/store or s3://bucket/prefix. */
  readonly url: string;
  /**
   * Upload a local file under key, atomically. Large files go in parts where the store supports
   * it. `move`: the caller is done with the file, so a store on the same filesystem may take it
   * (rename) rather than copy it.
   */
  putFile(key: string, path: string, opts?: PutFileOptions): Promise<void>;
  /**
   * Remote stores: uploads are worth streaming while the data is produced (putStream), landing
   * under a staging key that copy() then gives its content-addressed name.
   */
  readonly streamsUploads?: boolean;
  /** Upload a stream of unknown length under key, atomically (multipart; parts removed on failure). */
  putStream?(key: string, body: Readable, opts?: { onProgress?: (sentBytes: number) => void }): Promise<void>;
  /** Copy an object to another key inside the store (server side), atomically. */
  copy?(from: string, to: string): Promise<void>;
  /** Store a small object (manifests) atomically. */
  putBytes(key: string, body: Buffer): Promise<void>;
  /** A stream of the object's bytes, or of the range [start, end). Throws ObjectNotFoundError. */
  get(key: string, range?: ByteRange): Promise<Readable>;
  /** The object's bytes (or a range) in memory; for small objects and bounded ranges only. */
  getBytes(key: string, range?: ByteRange): Promise<Buffer>;
  /**
   * Local stores: the object as an open file and its size (the caller closes it), so a reader of
   * a whole layer reads it into its own buffers, or lets native jobs pread it, instead of moving
   * a stream's pieces through JavaScript. Throws ObjectNotFoundError. Optional.
   */
  openFile?(key: string): Promise<{ fh: FileHandle; size: number }>;
  /** Size and mtime, or null when the key does not exist. */
  head(key: string): Promise<ObjectInfo | null>;
  /** Set the object's mtime to now, so gc's grace period protects a blob a new backup reuses.
   *  Throws ObjectNotFoundError when the key is missing. */
  touch(key: string): Promise<void>;
  /** Remove the key; removing a missing key is not an error. */
  delete(key: string): Promise<void>;
  /** Every object whose key starts with prefix, in no particular order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /**
   * Unfinished writes started before `before` (incomplete multipart uploads of blobs, temp files a
   * killed process left), removed unless dryRun; gc calls it. Optional.
   */
  cleanupIncomplete?(before: Date, opts?: { dryRun?: boolean }): Promise<IncompleteWrite[]>;
  /**
   * A URL anyone holding it can GET the object with (ranges too), for `seconds`: strata-fuse
   * fetches layer blobs with it, without credentials of its own. Optional (s3:// only).
   */
  presignGet?(key: string, seconds: number): Promise<string>;
  /**
   * Start loading what presignGet needs, without waiting: a lazy restore calls it first, so the
   * URLs it hands the restore daemon cost nothing once the index is in. Optional.
   */
  warmPresign?(): void;
}
