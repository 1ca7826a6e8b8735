/**
 * Key, prefix and range checks shared by every store, so a key that works on one store works on all.
 */
import { Readable } from 'node:stream';
import { StoreError } from '../errors.js';
import type { ByteRange } from './store.js';

/** Throws StoreError unless key is a relative '/'-separated name with no '', '.', '..' parts or NUL. */
export function validateKey(key: string): string {
  if (typeof key !== 'string' || key.length === 0) throw new StoreError('invalid object key: empty key');
  if (key.includes('\0')) throw new StoreError(`invalid object key ${JSON.stringify(key)}: contains NUL`);
  if (key.startsWith('/')) throw new StoreError(`invalid object key ${JSON.stringify(key)}: must be relative, not start with '/'`);
  for (const part of key.split('/')) {
    if (part === '') throw new StoreError(`invalid object key ${JSON.stringify(key)}: empty path component`);
    if (part === '.' || part === '..') {
      throw new StoreError(`invalid object key ${JSON.stringify(key)}: '${part}' path component is not allowed`);
    }
  }
  return key;
}

/**
 * A listing prefix may end mid-name ("manifests/ab") or be ''. Everything before its last '/' must be
 * valid key components, so a prefix can never point outside the store.
 */
export function validatePrefix(prefix: string): string {
  if (typeof prefix !== 'string') throw new StoreError('invalid list prefix: not a string');
  if (prefix.includes('\0')) throw new StoreError(`invalid list prefix ${JSON.stringify(prefix)}: contains NUL`);
  const slash = prefix.lastIndexOf('/');
  if (slash >= 0) {
    const dir = prefix.slice(0, slash);
    try {
      validateKey(dir);
    } catch {
      throw new StoreError(`invalid list prefix ${JSON.stringify(prefix)}: directory part is not a valid key`);
    }
  }
  return prefix;
}

/** Checks 0 <= start <= end (integers) and, when size is known, end <= size. */
export function validateRange(key: string, range: ByteRange, size?: number): void {
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || start > end) {
    throw new StoreError(`invalid byte range [${start}, ${end}) for ${JSON.stringify(key)}: need 0 <= start <= end`);
  }
  if (size !== undefined && end > size) {
    throw new StoreError(
      `byte range [${start}, ${end}) for ${JSON.stringify(key)} runs past the end of the object (${size} bytes)`,
    );
  }
}

/** A byte stream (not object mode) that ends at once. */
export function emptyStream(): Readable {
  return new Readable({
    read() {
      this.push(null);
    },
  });
}
