/**
 * LayerWriter: builds one layer blob in a local file, frame by frame, and hashes it as it goes.
 *
 * Frames of small files are compressed in parallel (a bounded window on the threadpool) and written
 * in order. A caller streaming a large file takes a mark() first and can rollback() to it when the
 * file turned out to change under the read (see capture/): the blob and its running hash return to
 * the mark as if the entry had never been written.
 */
import { createHash, type Hash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { BackupCreateError } from '../errors.js';
import type { Codec } from './codec.js';
import { encodeFooter } from './footer.js';
import { MAX_TOC_SIZE } from './reader.js';
import { END_OF_ARCHIVE, entryHeader, type Extent, padLength } from './tar.js';
import { type Chunk, encodeToc, type Toc, TOC_VERSION, type TocEntry } from './toc.js';

export interface LayerResult {
  /** 'sha256:<hex>' of the whole blob: its store key. */
  digest: string;
  size: number;
  tocOffset: number;
  tocLength: number;
  tocSize: number;
  /** 'sha256:<hex>' of the compressed TOC frame. */
  tocDigest: string;
  entries: number;
  /** Uncompressed file bytes stored. */
  dataBytes: number;
  /** The TOC as written (the backup builds its restore index from it). */
  toc: Toc;
}

export interface Mark {
  offset: number;
  hash: Hash;
  entries: number;
  pad: number;
  dataBytes: number;
}

interface PendingFrame {
  data: Promise<Buffer>;
  /** Called with the frame's position once it is written. */
  placed?: (blobOffset: number, blobLength: number) => void;
}

const WINDOW = 16;

/**
 * Bound on a shared frame's uncompressed bytes; a file up to that size joins one. Chosen by
 * measurement (docs/codecs.md): bigger frames compress better but a lazy read of one small file
 * fetches and decodes its whole frame.
 */
export const FRAME_BOUND = 256 * 1024;

export interface WriterOptions {
  /** Shared-frame bound in bytes; 0 writes one frame per header and per chunk (TOC v1). */
  frameBound?: number;
}

const ZEROS = Buffer.alloc(512);

/** The frame being filled: its parts, and the entries and chunks that learn its place. */
interface OpenFrame {
  parts: Buffer[];
  size: number;
  headers: TocEntry[];
  chunks: Chunk[];
}

export class LayerWriter {
  private offset = 0;
  private hash = createHash('sha256');
  private readonly entries: TocEntry[] = [];
  /** Zero padding owed after the last file's data; it opens the next frame. */
  private pad = 0;
  private dataBytes = 0;
  private queue: PendingFrame[] = [];
  private failed: unknown;
  private prefetch: Toc['prefetch'];
  private frame: OpenFrame = { parts: [], size: 0, headers: [], chunks: [] };
  private readonly frameBound: number;
  /** The last entry whose header went into the open frame (its data may follow it there). */
  private lastHeader: TocEntry | undefined;
  /** Offset of an open mark: bytes past it may still be rolled back, so tail() waits there. */
  private hold: number | undefined;
  private ended: 'finished' | 'aborted' | undefined;
  private waiters: Array<() => void> = [];

  private constructor(
    private readonly path: string,
    private readonly fh: FileHandle,
    readonly codec: Codec,
    opts: WriterOptions,
  ) {
    this.frameBound = opts.frameBound ?? FRAME_BOUND;
  }

  static async create(path: string, codec: Codec, opts: WriterOptions = {}): Promise<LayerWriter> {
    return new LayerWriter(path, await open(path, 'w', 0o600), codec, opts);
  }

  private notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /**
   * The blob as it is written, for an upload that runs while the capture does. Bytes are read
   * back from the file once nothing can take them back (never past an open mark), so memory stays
   * flat however far the upload falls behind: the file is the buffer. Ends once finish() has
   * written the footer; fails when the writer is aborted.
   */
  tail(piece = 1 << 20): Readable {
    const gen = async function* (this: LayerWriter): AsyncGenerator<Buffer> {
      const fh = await open(this.path, 'r');
      try {
        let sent = 0;
        for (;;) {
          if (this.ended === 'aborted') throw new BackupCreateError('the layer was abandoned before its upload finished');
          const safe = this.hold ?? this.offset;
          if (sent < safe) {
            const n = Math.min(piece, safe - sent);
            const buf = Buffer.allocUnsafe(n);
            const { bytesRead } = await fh.read(buf, 0, n, sent);
            if (bytesRead !== n) throw new BackupCreateError(`short read of the layer file at ${sent}: it was changed under the upload`);
            sent += n;
            yield buf;
            continue;
          }
          if (this.ended === 'finished') return;
          await new Promise<void>((r) => this.waiters.push(r));
        }
      } finally {
        await fh.close();
      }
    };
    return Readable.from(gen.call(this), { objectMode: false, highWaterMark: piece });
  }

  get size(): number {
    return this.offset;
  }

  /** The largest file that can share a frame (0: none do). */
  get sharedFileMax(): number {
    return this.frameBound;
  }

  /** Queue a frame; frames are written in the order they are queued. */
  private async enqueue(frame: PendingFrame): Promise<void> {
    if (this.failed) throw this.failed;
    frame.data.catch(() => undefined); // surfaced when written
    this.queue.push(frame);
    if (this.queue.length >= WINDOW) await this.flushOne();
  }

  private async flushOne(): Promise<void> {
    const f = this.queue.shift();
    if (!f) return;
    try {
      const buf = await f.data;
      const at = this.offset;
      await this.fh.write(buf, 0, buf.length, at);
      this.hash.update(buf);
      this.offset += buf.length;
      f.placed?.(at, buf.length);
      this.notify();
    } catch (err) {
      this.failed ??= err;
      throw err;
    }
  }

  /** Write every queued frame. */
  async drain(): Promise<void> {
    while (this.queue.length > 0) await this.flushOne();
    if (this.failed) throw this.failed;
  }

  private takePad(): Buffer {
    const p = ZEROS.subarray(0, this.pad);
    this.pad = 0;
    return p;
  }

  /** Compress the open frame (if it holds anything) and queue it. */
  private async closeFrame(): Promise<void> {
    const f = this.frame;
    this.lastHeader = undefined;
    if (f.parts.length === 0) return;
    this.frame = { parts: [], size: 0, headers: [], chunks: [] };
    const job = this.codec.compressParts(f.parts);
    let digest = '';
    await this.enqueue({
      data: job.then((r) => ((digest = r.digest), r.frame)),
      placed: (at, len) => {
        for (const e of f.headers) e.headerOffset = at;
        for (const c of f.chunks) {
          c.blobOffset = at;
          c.blobLength = len;
          c.frameSize = f.size;
          c.digest = digest;
        }
      },
    });
  }

  private append(buf: Buffer): void {
    if (buf.length === 0) return;
    this.frame.parts.push(buf);
    this.frame.size += buf.length;
  }

  /**
   * Add an entry with no data, or the header of a regular file whose data follows through
   * addChunk() / endFile(). Returns the entry object that lands in the TOC.
   */
  async addEntry(meta: Omit<TocEntry, 'headerOffset' | 'chunks'>, extents?: Extent[]): Promise<TocEntry> {
    const e: TocEntry = { ...meta, headerOffset: -1 };
    if (e.type === 'file') e.chunks = [];
    const { header } = entryHeader(e, extents);
    this.entries.push(e);
    if (this.frameBound === 0) {
      const raw = Buffer.concat([this.takePad(), header]);
      await this.enqueue({ data: this.codec.compress(raw), placed: (at) => (e.headerOffset = at) });
      return e;
    }
    this.append(this.takePad());
    this.append(header);
    this.frame.headers.push(e);
    this.lastHeader = e;
    // A file's data may still join this frame; anything else closes a full one now.
    if (this.frame.size >= this.frameBound && (e.type !== 'file' || e.size === 0)) await this.closeFrame();
    return e;
  }

  /**
   * Add one chunk of a file's data (at most MAX_CHUNK_SIZE bytes). `digest`, when the caller has
   * it, is the sha256 of `data`; else the compress job computes it, and a chunk that is the whole
   * file gives the entry its digest too. A file shares a frame only when its entry has a digest
   * already (the frame's digest is not the file's).
   */
  async addChunk(e: TocEntry, fileOffset: number, data: Buffer, digest?: string): Promise<void> {
    const c: Chunk = { offset: fileOffset, size: data.length, blobOffset: -1, blobLength: -1, digest: digest ?? '' };
    e.chunks!.push(c);
    this.dataBytes += data.length;
    if (this.frameBound > 0) {
      // The whole of a small dense file, right after its own header: it shares the frame.
      if (e === this.lastHeader && fileOffset === 0 && data.length === e.size && !e.sparse && data.length <= this.frameBound && e.digest !== undefined) {
        c.frameOffset = this.frame.size;
        this.append(data);
        this.frame.chunks.push(c);
        this.lastHeader = undefined;
        if (this.frame.size >= this.frameBound) await this.closeFrame();
        return;
      }
      await this.closeFrame();
    }
    if (digest !== undefined) {
      await this.enqueue({
        data: this.codec.compress(data),
        placed: (at, len) => {
          c.blobOffset = at;
          c.blobLength = len;
        },
      });
      return;
    }
    const job = this.codec.compressParts([data]);
    let got = '';
    await this.enqueue({
      data: job.then((r) => ((got = r.digest), r.frame)),
      placed: (at, len) => {
        c.blobOffset = at;
        c.blobLength = len;
        c.digest = got;
        if (e.digest === undefined && !e.sparse && fileOffset === 0 && data.length === e.size) e.digest = got;
      },
    });
  }

  /** Close a regular file whose tar data area held `storedBytes` bytes (sparse map excluded). */
  endFile(storedBytes: number): void {
    this.pad = padLength(storedBytes);
    if (this.hold !== undefined) {
      this.hold = undefined; // the file holds: what was written for it stays
      this.notify();
    }
  }

  /** A point to return to. Drains first so that the blob on disk is exactly what was queued. */
  async mark(): Promise<Mark> {
    await this.closeFrame();
    await this.drain();
    this.hold = this.offset;
    return { offset: this.offset, hash: this.hash.copy(), entries: this.entries.length, pad: this.pad, dataBytes: this.dataBytes };
  }

  async rollback(m: Mark): Promise<void> {
    await this.drain();
    // mark() closed the open frame: what it holds now came after the mark.
    this.frame = { parts: [], size: 0, headers: [], chunks: [] };
    this.lastHeader = undefined;
    await this.fh.truncate(m.offset);
    this.offset = m.offset;
    this.hash = m.hash.copy();
    this.entries.length = m.entries;
    this.pad = m.pad;
    this.dataBytes = m.dataBytes;
    this.hold = undefined;
    this.notify();
  }

  // ---- frames made elsewhere (native capture: src/capture/native-tree.ts) ----

  /**
   * Close the open frame and write any padding owed as a frame of its own, then drain: the blob
   * then ends on a member boundary with nothing owed, where frames made elsewhere can follow.
   */
  async settle(): Promise<void> {
    if (this.frameBound === 0) {
      if (this.pad > 0) await this.enqueue({ data: this.codec.compress(Buffer.from(this.takePad())) });
    } else {
      await this.closeFrame();
      if (this.pad > 0) await this.enqueue({ data: this.codec.compress(Buffer.from(this.takePad())) });
    }
    await this.drain();
  }

  /**
   * Append whole frames of this writer's codec, made elsewhere, that end on a member boundary
   * with nothing owed. Call settle() first when entries were added through addEntry().
   */
  async writeFrames(frames: Buffer): Promise<void> {
    if (this.frame.parts.length > 0 || this.pad > 0 || this.queue.length > 0) throw new Error('internal: writeFrames on an unsettled writer');
    if (this.failed) throw this.failed;
    if (frames.length === 0) return;
    try {
      await this.fh.write(frames, 0, frames.length, this.offset);
    } catch (err) {
      this.failed ??= err;
      throw err;
    }
    this.hash.update(frames);
    this.offset += frames.length;
    this.notify();
  }

  /** Entries whose headers and data are in frames given to writeFrames(), offsets final. */
  addWritten(entries: TocEntry[]): void {
    for (const e of entries) {
      this.entries.push(e);
      if (e.chunks) for (const c of e.chunks) this.dataBytes += c.size;
    }
  }

  /** What follows the open mark is kept (a large file held still): the upload may take it. */
  release(): void {
    this.hold = undefined;
    this.notify();
  }

  /** Mark [blobOffset, blobOffset + blobLength) as the prioritized region (the TOC's landmark). */
  setPrefetch(region: NonNullable<Toc['prefetch']>): void {
    this.prefetch = region;
  }

  /** Write the end of the archive, the TOC and the footer; fsync; close. */
  async finish(extra?: Partial<Pick<Toc, 'prefetch'>>): Promise<LayerResult> {
    if (this.frameBound === 0) {
      await this.enqueue({ data: this.codec.compress(Buffer.concat([this.takePad(), END_OF_ARCHIVE])) });
    } else {
      this.append(this.takePad());
      this.append(END_OF_ARCHIVE);
      await this.closeFrame();
    }
    await this.drain();
    const toc: Toc = { version: TOC_VERSION, codec: this.codec.name, entries: this.entries, ...(this.prefetch ? { prefetch: this.prefetch } : {}), ...extra };
    let tocRaw: Buffer | undefined;
    try {
      tocRaw = encodeToc(toc);
    } catch (err) {
      if (!(err instanceof RangeError)) throw err; // longer than V8's longest string
    }
    // A layer restore would refuse: fail the backup instead, saying why.
    if (tocRaw === undefined || tocRaw.length > MAX_TOC_SIZE) {
      throw new BackupCreateError(
        `the layer has ${this.entries.length} entries: its table of contents is over the ${Math.floor(MAX_TOC_SIZE / 2 ** 20)} MiB limit; back up fewer files at once`,
      );
    }
    const tocFrame = await this.codec.compress(tocRaw);
    const tocOffset = this.offset;
    await this.fh.write(tocFrame, 0, tocFrame.length, tocOffset);
    this.hash.update(tocFrame);
    this.offset += tocFrame.length;
    const tocDigest = createHash('sha256').update(tocFrame).digest('hex');
    const footer = encodeFooter({ codec: this.codec.name, tocOffset, tocLength: tocFrame.length, tocSize: tocRaw.length, tocDigest });
    await this.fh.write(footer, 0, footer.length, this.offset);
    this.hash.update(footer);
    this.offset += footer.length;
    // No fsync: this file is a staging buffer (the file store syncs its own copy when it commits,
    // an upload reads it back from the page cache); a crash loses only an unfinished backup.
    await this.fh.close();
    this.hold = undefined;
    this.ended = 'finished';
    this.notify();
    return {
      digest: 'sha256:' + this.hash.digest('hex'),
      size: this.offset,
      tocOffset,
      tocLength: tocFrame.length,
      tocSize: tocRaw.length,
      tocDigest: 'sha256:' + tocDigest,
      entries: this.entries.length,
      dataBytes: this.dataBytes,
      toc,
    };
  }

  /** Give up: close the file (the caller removes it). */
  async abort(): Promise<void> {
    this.ended = 'aborted';
    this.notify();
    await this.fh.close().catch(() => undefined);
  }
}
