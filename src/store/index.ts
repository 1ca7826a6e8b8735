import * as path from 'node:path';
import { InvalidBackupConfigError } from '../errors.js';
import { FileStore } from './file.js';
import { DeferredStore } from './deferred.js';
import type { S3StoreOptions } from './s3.js';
import { canonicalS3Url } from './s3url.js';
import type { ObjectStore } from './store.js';

export type { ByteRange, ObjectInfo, ObjectStore } from './store.js';
export { FileStore } from './file.js';
export type { S3StoreOptions } from './s3.js';
export { parseS3Url } from './s3url.js';
export { DeferredStore } from './deferred.js';

export interface OpenStoreOptions {
  /** Options for s3:// stores; ignored for file stores. */
  s3?: S3StoreOptions;
}

const SUPPORTED = 'supported forms: file:///absolute/path, /absolute/path, s3://BUCKET or s3://BUCKET/PREFIX';

/** The store a URL names. Throws InvalidBackupConfigError for unknown schemes and malformed URLs. */
export function openStore(url: string, opts: OpenStoreOptions = {}): ObjectStore {
  if (typeof url !== 'string' || url === '') throw new InvalidBackupConfigError(`missing store URL; ${SUPPORTED}`);
  if (url.startsWith('/')) return new FileStore(path.resolve(url));
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase();
  try {
    if (scheme === 'file') {
      if (!url.startsWith('file:///')) {
        throw new InvalidBackupConfigError(`invalid file store URL ${JSON.stringify(url)}: expected file:///absolute/path`);
      }
      return new FileStore(url);
    }
    if (scheme === 's3') {
      // The URL is checked now; the SDK is loaded (and the endpoint checked) on first use.
      const canonical = canonicalS3Url(url);
      return new DeferredStore(canonical, async () => new (await import('./s3.js')).S3Store(url, opts.s3));
    }
  } catch (err) {
    if (err instanceof InvalidBackupConfigError) {
      throw new InvalidBackupConfigError(`${err.message}; ${SUPPORTED}`, { cause: err });
    }
    throw err;
  }
  throw new InvalidBackupConfigError(
    scheme === undefined
      ? `store location ${JSON.stringify(url)} is neither an absolute path nor a URL; ${SUPPORTED}`
      : `unsupported store scheme ${JSON.stringify(scheme + ':')} in ${JSON.stringify(url)}; ${SUPPORTED}`,
  );
}
