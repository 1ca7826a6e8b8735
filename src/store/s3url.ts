/** s3:// URLs, parsed without loading the AWS SDK (the CLI starts faster for file stores). */
import { InvalidBackupConfigError } from '../errors.js';
import { validateKey } from './keys.js';

/** Parses s3://BUCKET[/PREFIX]; throws InvalidBackupConfigError. */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/?#]+)(?:\/([^?#]*))?$/.exec(url);
  if (!m) {
    throw new InvalidBackupConfigError(`invalid S3 store URL ${JSON.stringify(url)}: expected s3://BUCKET or s3://BUCKET/PREFIX`);
  }
  const bucket = m[1]!;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new InvalidBackupConfigError(
      `invalid S3 bucket name ${JSON.stringify(bucket)} in ${JSON.stringify(url)}: 3-63 characters of a-z, 0-9, '.', '-'`,
    );
  }
  let prefix: string;
  try {
    prefix = decodeURIComponent(m[2] ?? '').replace(/\/+$/, '');
  } catch (err) {
    throw new InvalidBackupConfigError(`invalid S3 store URL ${JSON.stringify(url)}: bad percent-encoding`, { cause: err });
  }
  if (prefix !== '') {
    try {
      validateKey(prefix);
    } catch {
      throw new InvalidBackupConfigError(
        `invalid S3 store URL ${JSON.stringify(url)}: prefix must be '/'-separated names without '', '.', '..' or NUL`,
      );
    }
  }
  return { bucket, prefix };
}

/** The canonical form of an s3:// URL, as S3Store.url spells it. */
export function canonicalS3Url(url: string): string {
  const { bucket, prefix } = parseS3Url(url);
  return prefix === '' ? `s3://${bucket}` : `s3://${bucket}/${prefix}`;
}
