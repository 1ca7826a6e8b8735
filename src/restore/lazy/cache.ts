/**
 * The host-wide chunk cache: one file per chunk, named by the sha256 of its uncompressed bytes
 * (DIR/ab/abcdef...), so identical chunks of any layer or backup are stored once. strata-fuse reads
 * these files directly; only this module writes or removes them.
 *
 * Bounded by a byte budget with LRU eviction (lru-cache). Recency comes from fetches and from the
 * touch notes strata-fuse sends when it serves a chunk from the cache; it is persisted in the
 * files' mtimes, so a restart rebuilds the LRU in the same order. A file is written under a temp
 * name in DIR/tmp and renamed into place: a crash never leaves a partial chunk under its final name.
 * Evicting a file a reader holds open is safe (unlink keeps the open fd valid); a reader that then
 * misses asks for it again.
 *
 * One fetcher process should own a cache directory: two processes would each enforce the budget on
 * their own view of it.
 */
import { randomBytes } from 'node:crypto';
import { unlinkSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { LRUCache } from 'lru-cache';
import { MAX_CHUNK_SIZE } from '../../format/toc.js';

const HEX64 = /^[0-9a-f]{64}$/;
const FANOUT = /^[0-9a-f]{2}$/;
/** Temp files older than this at start are leftovers of a crash (younger ones may be another writer's). */
const STALE_TMP_MS = 3600_000;

export interface ChunkCacheOptions {
  /** Byte budget of the chunk files; at least two of the largest chunks. */
  maxBytes: number;
  /** fsync each chunk before renaming it into place (a cache can refetch, so off by default). */
  fsync?: boolean;
}

export interface ChunkCacheStats {
  entries: number;
  bytes: number;
  maxBytes: number;
  puts: number;
  evictions: number;
}

/** 'sha256:<hex>' or '<hex>' to '<hex>'. */
function hexOf(digest: string): string {
  const h = digest.startsWith('sha256:') ? digest.slice(7) : digest;
  if (!HEX64.test(h)) throw new Error(`not a sha256 digest: ${digest}`);
  return h;
}

export class ChunkCache {
  readonly dir: string;
  readonly maxBytes: number;
  private readonly tmpDir: string;
  private readonly fsync: boolean;
  private readonly lru: LRUCache<string, number>;
  private puts = 0;
  private evictions = 0;
  /** Digests accounted for in the LRU whose file is still being renamed into place. */
  private readonly writing = new Set<string>();
  /** Of those, the ones evicted meanwhile: their file goes as soon as it lands. */
  private readonly evictedWhileWriting = new Set<string>();
  /** Fan-out directories known to exist (made at most once per process). */
  private readonly fans = new Set<string>();
  /** Temp names: a random per-process prefix and a counter (no random bytes per chunk). */
  private readonly tmpPrefix = randomBytes(6).toString('hex');
  private tmpSeq = 0;

  private constructor(dir: string, opts: ChunkCacheOptions) {
    if (!Number.isSafeInteger(opts.maxBytes) || opts.maxBytes < 2 * MAX_CHUNK_SIZE) {
      throw new Error(`chunk cache budget must be at least ${2 * MAX_CHUNK_SIZE} bytes (two of the largest chunks), got ${opts.maxBytes}`);
    }
    this.dir = dir;
    this.maxBytes = opts.maxBytes;
    this.tmpDir = join(dir, 'tmp');
    this.fsync = !!opts.fsync;
    this.lru = new LRUCache<string, number>({
      maxSize: opts.maxBytes,
      sizeCalculation: (size) => Math.max(1, size),
      dispose: (_size, hex, reason) => {
        // 'set' is a re-put of the same chunk: the file now there is the new one, keep it.
        if (reason !== 'evict' && reason !== 'delete') return;
        if (reason === 'evict') this.evictions++;
        if (this.writing.has(hex)) {
          this.evictedWhileWriting.add(hex);
          return;
        }
        // Synchronous, so a put of the same digest right after cannot be unlinked by a late unlink.
        try {
          unlinkSync(this.path(hex));
        } catch {
          // Already gone: nothing to free.
        }
      },
    });
  }

  /** Open (creating) the cache directory and rebuild the LRU from the files in it, oldest first. */
  static async open(dir: string, opts: ChunkCacheOptions): Promise<ChunkCache> {
    const cache = new ChunkCache(dir, opts);
    await mkdir(cache.tmpDir, { recursive: true, mode: 0o700 });
    await cache.scan();
    return cache;
  }

  private async scan(): Promise<void> {
    const found: Array<{ hex: string; size: number; t: number }> = [];
    for (const fan of await readdir(this.dir)) {
      if (!FANOUT.test(fan)) continue;
      let names: string[];
      try {
        names = await readdir(join(this.dir, fan));
      } catch {
        continue;
      }
      await Promise.all(
        names.map(async (name) => {
          if (!HEX64.test(name) || !name.startsWith(fan)) return;
          try {
            const st = await stat(join(this.dir, fan, name));
            if (st.isFile()) found.push({ hex: name, size: st.size, t: Math.max(st.mtimeMs, st.atimeMs) });
          } catch {
            // Removed meanwhile.
          }
        }),
      );
    }
    found.sort((a, b) => a.t - b.t);
    // Oldest first, so the newest end up most recent; past the budget the oldest go.
    for (const f of found) this.lru.set(f.hex, f.size);
    const now = Date.now();
    for (const name of await readdir(this.tmpDir)) {
      const p = join(this.tmpDir, name);
      try {
        if (now - (await stat(p)).mtimeMs > STALE_TMP_MS) await rm(p, { force: true });
      } catch {
        // Gone already.
      }
    }
  }

  path(digest: string): string {
    const h = hexOf(digest);
    return join(this.dir, h.slice(0, 2), h);
  }

  /** In the cache as far as this process knows (no filesystem access; does not touch recency). */
  has(digest: string): boolean {
    const h = hexOf(digest);
    return this.lru.has(h) && !this.writing.has(h);
  }

  /** In the cache and really on disk; forgets an entry whose file vanished. */
  async present(digest: string): Promise<boolean> {
    const h = hexOf(digest);
    if (!this.lru.has(h) || this.writing.has(h)) return false;
    try {
      await stat(this.path(h));
      return true;
    } catch {
      this.lru.delete(h);
      return false;
    }
  }

  /**
   * Store a chunk's verified bytes under its digest (the caller has checked them). Room is made in
   * the LRU before the file lands, so the chunk files never exceed the budget, even for a moment.
   */
  async put(digest: string, data: Buffer): Promise<void> {
    const h = hexOf(digest);
    const fan = h.slice(0, 2);
    const tmp = join(this.tmpDir, `${h.slice(0, 16)}-${this.tmpPrefix}-${(this.tmpSeq++).toString(36)}`);
    try {
      if (!this.fans.has(fan)) {
        await mkdir(join(this.dir, fan), { recursive: true, mode: 0o700 });
        this.fans.add(fan);
      }
      const fh = await open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(data);
        if (this.fsync) await fh.sync();
      } finally {
        await fh.close();
      }
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    if (this.writing.has(h)) {
      // The same chunk is landing from another fetch: this copy is redundant.
      await rm(tmp, { force: true });
      return;
    }
    this.writing.add(h);
    try {
      this.lru.set(h, data.length);
      await rename(tmp, this.path(h));
    } catch (err) {
      this.writing.delete(h);
      this.lru.delete(h);
      // The fan-out directory may have been removed under us (cache wiped by hand): remade next time.
      this.fans.delete(fan);
      await rm(tmp, { force: true });
      throw err;
    }
    this.writing.delete(h);
    if (this.evictedWhileWriting.delete(h)) {
      try {
        unlinkSync(this.path(h));
      } catch {
        // Gone already.
      }
      return;
    }
    this.puts++;
  }

  /** Mark a chunk as just used (a read served from the cache); persisted in its mtime. */
  touch(digest: string): void {
    const h = hexOf(digest);
    if (this.lru.get(h) === undefined) return;
    const now = new Date();
    utimes(this.path(h), now, now).catch(() => undefined);
  }

  stats(): ChunkCacheStats {
    return { entries: this.lru.size, bytes: this.lru.calculatedSize, maxBytes: this.maxBytes, puts: this.puts, evictions: this.evictions };
  }
}
