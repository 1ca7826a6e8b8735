/**
 * file:///abs/path: an object store on a local (or mounted) filesystem. Key "a/b/c" is ROOT/a/b/c.
 *
 * Writes are atomic: bytes go to ROOT/.tmp/<random> (same filesystem), are fsynced, renamed into
 * place, and the parent directory is fsynced. ROOT/.tmp is never listed and never a valid key.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { InvalidBackupConfigError, ObjectNotFoundError, StoreError } from '../errors.js';
import { emptyStream, validateKey, validatePrefix, validateRange } from './keys.js';
import type { ByteRange, IncompleteWrite, ObjectInfo, ObjectStore, PutFileOptions } from './store.js';

const TMP_DIR = '.tmp';

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

function isMissing(err: unknown): boolean {
  const code = errno(err);
  return code === 'ENOENT' || code === 'ENOTDIR';
}

export class FileStore implements ObjectStore {
  readonly url: string;
  /** Absolute path of the store's root directory. */
  readonly root: string;
  private readonly tmpDir: string;

  /** @param location an absolute path or a file:///abs/path URL. */
  constructor(location: string) {
    let root: string;
    if (location.startsWith('file:')) {
      try {
        root = fileURLToPath(location);
      } catch (err) {
        throw new InvalidBackupConfigError(`invalid file store URL ${JSON.stringify(location)}: ${(err as Error).message}`, {
          cause: err,
        });
      }
    } else {
      root = location;
    }
    if (!path.isAbsolute(root)) {
      throw new InvalidBackupConfigError(`file store root must be an absolute path, got ${JSON.stringify(location)}`);
    }
    this.root = path.resolve(root);
    this.tmpDir = path.join(this.root, TMP_DIR);
    this.url = pathToFileURL(this.root).href;
  }

  /** Where an object lives on disk (strata-fuse reads layer blobs there itself). */
  localPath(key: string): string {
    return this.pathOf(key);
  }

  private pathOf(key: string): string {
    validateKey(key);
    if (key === TMP_DIR || key.startsWith(TMP_DIR + '/')) {
      throw new StoreError(`invalid object key ${JSON.stringify(key)}: '${TMP_DIR}/' is reserved by the file store`);
    }
    return path.join(this.root, ...key.split('/'));
  }

  private async newTmpPath(): Promise<string> {
    await fsp.mkdir(this.tmpDir, { recursive: true });
    return path.join(this.tmpDir, randomBytes(12).toString('hex'));
  }

  /** fsync tmp, rename it to dest (creating parents), fsync dest's directory. Removes tmp on failure. */
  private async commit(tmp: string, dest: string, key: string): Promise<void> {
    try {
      const fh = await fsp.open(tmp, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      const dir = path.dirname(dest);
      // A concurrent delete() may prune the (empty) parent between mkdir and rename: retry.
      for (let attempt = 0; ; attempt++) {
        await fsp.mkdir(dir, { recursive: true });
        try {
          await fsp.rename(tmp, dest);
          break;
        } catch (err) {
          if (errno(err) !== 'ENOENT' || attempt >= 5) throw err;
        }
      }
      await fsyncDir(dir);
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => {});
      throw wrap(err, `write ${JSON.stringify(key)} to ${this.url}`);
    }
  }

  async putFile(key: string, src: string, opts?: PutFileOptions): Promise<void> {
    const dest = this.pathOf(key);
    let size: number;
    try {
      const st = await fsp.stat(src);
      if (!st.isFile()) throw new Error('not a regular file');
      size = st.size;
    } catch (err) {
      throw new StoreError(`cannot upload ${JSON.stringify(src)} to ${JSON.stringify(key)}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const tmp = await this.newTmpPath().catch((err) => {
      throw wrap(err, `create temp directory in ${this.url}`);
    });
    try {
      let moved = false;
      if (opts?.move) {
        // Same filesystem: take the caller's file as it is (no copy of the blob).
        moved = await fsp.rename(src, tmp).then(
          () => true,
          (err: unknown) => {
            if (errno(err) === 'EXDEV') return false;
            throw err;
          },
        );
      }
      // Reflink where the filesystem supports it, otherwise an in-kernel copy.
      if (!moved) await fsp.copyFile(src, tmp, fsc.COPYFILE_FICLONE);
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => {});
      throw wrap(err, `copy ${JSON.stringify(src)} into ${this.url}`);
    }
    await this.commit(tmp, dest, key);
    opts?.onProgress?.(size);
  }

  async putBytes(key: string, body: Buffer): Promise<void> {
    const dest = this.pathOf(key);
    const tmp = await this.newTmpPath().catch((err) => {
      throw wrap(err, `create temp directory in ${this.url}`);
    });
    try {
      await fsp.writeFile(tmp, body, { flag: 'wx' });
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => {});
      throw wrap(err, `write ${JSON.stringify(key)} to ${this.url}`);
    }
    await this.commit(tmp, dest, key);
  }

  /** Opens the object, or throws ObjectNotFoundError. The caller closes the handle. */
  private async open(key: string): Promise<{ fh: fsp.FileHandle; size: number }> {
    const p = this.pathOf(key);
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(p, 'r');
    } catch (err) {
      if (isMissing(err) || errno(err) === 'EISDIR') throw notFound(key, this.url, err);
      throw wrap(err, `open ${JSON.stringify(key)} in ${this.url}`);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw notFound(key, this.url);
      return { fh, size: st.size };
    } catch (err) {
      await fh.close().catch(() => {});
      throw err instanceof StoreError || err instanceof ObjectNotFoundError ? err : wrap(err, `stat ${JSON.stringify(key)}`);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    if (range) validateRange(key, range);
    const { fh, size } = await this.open(key);
    try {
      if (range) validateRange(key, range, size);
    } catch (err) {
      await fh.close().catch(() => {});
      throw err;
    }
    const start = range?.start ?? 0;
    const end = range?.end ?? size;
    if (end === start) {
      await fh.close().catch(() => {});
      return emptyStream();
    }
    // The stream owns the handle (autoClose); a concurrent replace does not affect an open file.
    // 1 MiB pieces: readers move whole layers; 64 KiB ones cost a callback and a Buffer each.
    return fh.createReadStream({ start, end: end - 1, highWaterMark: 1 << 20 });
  }

  async getBytes(key: string, range?: ByteRange): Promise<Buffer> {
    if (range) validateRange(key, range);
    const { fh, size } = await this.open(key);
    const start = range?.start ?? 0;
    return this.readAll(key, fh, size, start, Buffer.allocUnsafe((range?.end ?? size) - start));
  }

  openFile(key: string): Promise<{ fh: fsp.FileHandle; size: number }> {
    return this.open(key);
  }

  /** Fill buf from `start` of the open file, then close it. */
  private async readAll(key: string, fh: fsp.FileHandle, size: number, start: number, buf: Buffer): Promise<Buffer> {
    try {
      validateRange(key, { start, end: start + buf.length }, size);
      const len = buf.length;
      let off = 0;
      while (off < len) {
        const { bytesRead } = await fh.read(buf, off, len - off, start + off);
        if (bytesRead === 0) {
          throw new StoreError(`${JSON.stringify(key)} in ${this.url} is shorter than expected (truncated while reading?)`);
        }
        off += bytesRead;
      }
      return buf;
    } catch (err) {
      throw err instanceof StoreError ? err : wrap(err, `read ${JSON.stringify(key)} from ${this.url}`);
    } finally {
      await fh.close().catch(() => {});
    }
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const p = this.pathOf(key);
    try {
      const st = await fsp.stat(p);
      if (!st.isFile()) return null;
      return { key, size: st.size, mtime: st.mtime };
    } catch (err) {
      if (isMissing(err)) return null;
      throw wrap(err, `stat ${JSON.stringify(key)} in ${this.url}`);
    }
  }

  /** Set the object's mtime to now (gc's grace period counts from it). Throws ObjectNotFoundError. */
  async touch(key: string): Promise<void> {
    const p = this.pathOf(key);
    try {
      const st = await fsp.stat(p);
      if (!st.isFile()) throw notFound(key, this.url);
      const now = new Date();
      await fsp.utimes(p, now, now);
    } catch (err) {
      if (err instanceof ObjectNotFoundError) throw err;
      if (isMissing(err)) throw notFound(key, this.url, err);
      throw wrap(err, `touch ${JSON.stringify(key)} in ${this.url}`);
    }
  }

  async delete(key: string): Promise<void> {
    const p = this.pathOf(key);
    try {
      await fsp.unlink(p);
    } catch (err) {
      const code = errno(err);
      // A directory at the key (only other keys below it) means there is no object here.
      if (isMissing(err) || code === 'EISDIR' || code === 'EPERM') return;
      throw wrap(err, `delete ${JSON.stringify(key)} from ${this.url}`);
    }
    // Best effort: prune directories the delete left empty, up to (not including) the root.
    let dir = path.dirname(p);
    while (dir !== this.root && dir.startsWith(this.root + path.sep)) {
      try {
        await fsp.rmdir(dir);
      } catch {
        break;
      }
      dir = path.dirname(dir);
    }
  }

  /** Temp files under .tmp/ older than `before`: writes a killed process never committed. */
  async cleanupIncomplete(before: Date, opts: { dryRun?: boolean } = {}): Promise<IncompleteWrite[]> {
    let names: string[];
    try {
      names = await fsp.readdir(this.tmpDir);
    } catch (err) {
      if (isMissing(err)) return [];
      throw wrap(err, `list ${TMP_DIR} in ${this.url}`);
    }
    const out: IncompleteWrite[] = [];
    for (const name of names) {
      const p = path.join(this.tmpDir, name);
      try {
        const st = await fsp.lstat(p);
        if (!st.isFile() || st.mtime.getTime() >= before.getTime()) continue;
        if (!opts.dryRun) await fsp.unlink(p);
        out.push({ key: `${TMP_DIR}/${name}`, id: name, started: st.mtime });
      } catch (err) {
        if (isMissing(err)) continue; // committed or removed meanwhile
        throw wrap(err, `remove ${TMP_DIR}/${name} from ${this.url}`);
      }
    }
    return out;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    validatePrefix(prefix);
    const slash = prefix.lastIndexOf('/');
    const dirKey = slash >= 0 ? prefix.slice(0, slash) : '';
    if (dirKey === TMP_DIR || dirKey.startsWith(TMP_DIR + '/')) return;
    yield* this.walk(dirKey, prefix);
  }

  private async *walk(dirKey: string, prefix: string): AsyncGenerator<ObjectInfo> {
    const dir = dirKey === '' ? this.root : path.join(this.root, ...dirKey.split('/'));
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return;
      throw wrap(err, `list ${JSON.stringify(dirKey || '/')} in ${this.url}`);
    }
    for (const ent of entries) {
      if (dirKey === '' && ent.name === TMP_DIR) continue;
      const key = dirKey === '' ? ent.name : dirKey + '/' + ent.name;
      if (ent.isDirectory()) {
        // Descend only where keys below could still match the prefix.
        const sub = key + '/';
        if (sub.startsWith(prefix) || prefix.startsWith(sub)) yield* this.walk(key, prefix);
        continue;
      }
      if (!ent.isFile() || !key.startsWith(prefix)) continue;
      try {
        const st = await fsp.stat(path.join(dir, ent.name));
        yield { key, size: st.size, mtime: st.mtime };
      } catch (err) {
        if (isMissing(err)) continue; // deleted while listing
        throw wrap(err, `stat ${JSON.stringify(key)} in ${this.url}`);
      }
    }
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } catch (err) {
    // Some filesystems refuse fsync on directories; the rename itself has happened.
    if (errno(err) !== 'EINVAL' && errno(err) !== 'ENOTSUP') throw err;
  } finally {
    await fh.close();
  }
}

function notFound(key: string, url: string, cause?: unknown): ObjectNotFoundError {
  return new ObjectNotFoundError(`object ${JSON.stringify(key)} not found in ${url}`, cause ? { cause } : undefined);
}

function wrap(err: unknown, what: string): StoreError {
  if (err instanceof StoreError) return err;
  const code = errno(err);
  const hint =
    code === 'EACCES' || code === 'EPERM'
      ? ' (check permissions on the store directory)'
      : code === 'ENOSPC' || code === 'EDQUOT'
        ? ' (the store filesystem is full)'
        : code === 'EROFS'
          ? ' (the store filesystem is read-only)'
          : '';
  return new StoreError(`file store: cannot ${what}: ${(err as Error)?.message ?? String(err)}${hint}`, { cause: err });
}
