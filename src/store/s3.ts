/**
 * s3://BUCKET/PREFIX: an object store on S3 or an S3-compatible service (Cloudflare R2, MinIO, ...).
 * Key "a/b" is the object PREFIX/a/b. Credentials come from the SDK's default chain unless given.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { isIP } from 'node:net';
import { finished, Readable, Transform } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCopyCommand,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { InvalidBackupConfigError, ObjectNotFoundError, StoreError } from '../errors.js';
import { emptyStream, validateKey, validatePrefix, validateRange } from './keys.js';
import { parseS3Url } from './s3url.js';
import type { ByteRange, IncompleteWrite, ObjectInfo, ObjectStore, PutFileOptions } from './store.js';

export interface S3StoreOptions {
  /** Custom endpoint, e.g. https://ACCOUNT.r2.cloudflarestorage.com. Default: STRATA_S3_ENDPOINT, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL. */
  endpoint?: string;
  /** Default: AWS_REGION, AWS_DEFAULT_REGION, else 'auto' with a custom endpoint, else 'us-east-1'. */
  region?: string;
  /** Default: STRATA_S3_FORCE_PATH_STYLE=1/0, else true for an IP/localhost endpoint, else false. */
  forcePathStyle?: boolean;
  /** Default: the SDK's credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...). */
  credentials?: S3ClientConfig['credentials'];
  /** Attempts per request, SDK retries and getBytes' whole-body retries alike. Default 5. */
  maxAttempts?: number;
  /** SDK retry strategy. Default 'standard' (exponential backoff with jitter). */
  retryMode?: 'standard' | 'adaptive';
  /** Multipart part size for putFile, >= 5 MiB. Default 16 MiB. */
  partSize?: number;
  /** Parts uploaded in parallel by putFile (memory: partSize * queueSize). Default 4. */
  queueSize?: number;
  /** TCP connect timeout, ms. Default 5000. */
  connectionTimeout?: number;
  /** Socket inactivity timeout, ms (also applies while a get() stream is not being read). Default 60000. */
  socketTimeout?: number;
  /** Base delay of getBytes' whole-body retries, ms (doubles each attempt). Default 100. */
  retryBaseDelayMs?: number;
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** CopyObject's size limit; larger objects are copied in parts. */
const MAX_SINGLE_COPY = 5 * GiB;
const COPY_PART_SIZE = 1 * GiB;

export { parseS3Url } from './s3url.js';

function env(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : v;
}

function isLocalHost(endpoint: string): boolean {
  try {
    const host = new URL(endpoint).hostname.replace(/^\[|\]$/g, '');
    return host === 'localhost' || host.endsWith('.localhost') || isIP(host) !== 0;
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $fault?: string;
}

const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

/** True for errors worth retrying a whole body read for: socket errors, timeouts, short bodies. */
function isTransient(err: unknown): boolean {
  if (err instanceof ShortBodyError) return true;
  const e = err as SdkError | null;
  if (!e) return false;
  if (e.code && NETWORK_CODES.has(e.code)) return true;
  if (e.name === 'TimeoutError') return true;
  return /aborted|socket hang up|premature close/i.test(e.message ?? '');
}

/** A GetObject body: it must deliver `expected` bytes (-1: unknown); the caller's are [skip, skip+take) (take -1: all). */
interface BodySlice {
  body: Readable;
  expected: number;
  skip: number;
  take: number;
}

class ShortBodyError extends Error {
  constructor(
    readonly received: number,
    readonly expected: number,
  ) {
    super(`body ended after ${received} of ${expected} bytes`);
  }
}

export class S3Store implements ObjectStore {
  readonly url: string;
  readonly bucket: string;
  /** Key prefix inside the bucket, without trailing '/'; '' for the whole bucket. */
  readonly prefix: string;
  readonly endpoint: string | undefined;
  readonly region: string;
  readonly client: S3Client;
  private readonly maxAttempts: number;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly retryBaseDelayMs: number;

  constructor(url: string, options: S3StoreOptions = {}) {
    const { bucket, prefix } = parseS3Url(url);
    this.bucket = bucket;
    this.prefix = prefix;
    this.url = prefix === '' ? `s3://${bucket}` : `s3://${bucket}/${prefix}`;

    const endpoint =
      options.endpoint ?? env('STRATA_S3_ENDPOINT') ?? env('AWS_ENDPOINT_URL_S3') ?? env('AWS_ENDPOINT_URL');
    if (endpoint !== undefined) {
      let ok = false;
      try {
        ok = /^https?:$/.test(new URL(endpoint).protocol);
      } catch {
        /* reported below */
      }
      if (!ok) throw new InvalidBackupConfigError(`invalid S3 endpoint ${JSON.stringify(endpoint)}: expected http(s)://HOST[:PORT]`);
    }
    this.endpoint = endpoint;
    this.region = options.region ?? env('AWS_REGION') ?? env('AWS_DEFAULT_REGION') ?? (endpoint ? 'auto' : 'us-east-1');
    const envPathStyle = env('STRATA_S3_FORCE_PATH_STYLE');
    const forcePathStyle =
      options.forcePathStyle ??
      (envPathStyle !== undefined ? /^(1|true|yes)$/i.test(envPathStyle) : endpoint !== undefined && isLocalHost(endpoint));

    this.maxAttempts = Math.max(1, options.maxAttempts ?? 5);
    this.partSize = options.partSize ?? 16 * MiB;
    if (this.partSize < 5 * MiB) throw new InvalidBackupConfigError(`S3 partSize must be at least 5 MiB, got ${this.partSize}`);
    this.queueSize = Math.max(1, options.queueSize ?? 4);
    this.retryBaseDelayMs = options.retryBaseDelayMs ?? 100;

    const config: S3ClientConfig = {
      region: this.region,
      forcePathStyle,
      maxAttempts: this.maxAttempts,
      retryMode: options.retryMode ?? 'standard',
      // Options for the SDK's default Node handler; socketTimeout is inactivity, not total duration,
      // so large transfers on slow links are not cut off.
      requestHandler: {
        connectionTimeout: options.connectionTimeout ?? 5000,
        socketTimeout: options.socketTimeout ?? 60_000,
      },
    };
    if (endpoint !== undefined) {
      config.endpoint = endpoint;
      // S3-compatible services vary in their support of the SDK's default CRC trailers
      // (aws-chunked uploads); send checksums only where the operation requires them.
      config.requestChecksumCalculation = 'WHEN_REQUIRED';
      config.responseChecksumValidation = 'WHEN_REQUIRED';
    } else {
      config.followRegionRedirects = true;
    }
    if (options.credentials !== undefined) config.credentials = options.credentials;
    this.client = new S3Client(config);
  }

  /** Release the client's sockets. The store must not be used afterwards. */
  close(): void {
    this.client.destroy();
  }

  private fullKey(key: string): string {
    validateKey(key);
    return this.prefix === '' ? key : `${this.prefix}/${key}`;
  }

  private describe(fullKey: string): string {
    return `s3://${this.bucket}/${fullKey}`;
  }

  /** Maps an SDK/network error to ObjectNotFoundError or a StoreError that says what to check. */
  private mapError(err: unknown, op: string, fullKey: string | undefined): Error {
    if (err instanceof StoreError || err instanceof ObjectNotFoundError || err instanceof InvalidBackupConfigError) return err;
    const e = (err ?? {}) as SdkError;
    const name = e.name ?? 'Error';
    const status = e.$metadata?.httpStatusCode;
    const where = fullKey === undefined ? `s3://${this.bucket}/${this.prefix}` : this.describe(fullKey);
    if (name === 'NoSuchKey' || ((name === 'NotFound' || status === 404) && name !== 'NoSuchBucket')) {
      return new ObjectNotFoundError(`object ${where} not found`, { cause: err });
    }
    let hint: string;
    if (name === 'NoSuchBucket') {
      hint = `bucket ${JSON.stringify(this.bucket)} does not exist at ${this.endpoint ?? 'AWS S3'}; create it or fix the store URL`;
    } else if (
      status === 401 ||
      status === 403 ||
      /AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|InvalidToken|CredentialsProviderError/.test(name)
    ) {
      hint =
        'check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE), their permissions on the bucket, and the region';
    } else if (name === 'PermanentRedirect' || name === 'AuthorizationHeaderMalformed' || status === 301) {
      hint = `the bucket lives in another region than ${JSON.stringify(this.region)}; set AWS_REGION`;
    } else if (isTransient(err)) {
      hint = `could not reach ${this.endpoint ?? 'AWS S3'}; check the endpoint (STRATA_S3_ENDPOINT), network and proxy settings`;
    } else {
      hint = `check the endpoint (${this.endpoint ?? 'AWS S3'}), region (${this.region}) and credentials`;
    }
    const statusText = status !== undefined ? ` (HTTP ${status})` : '';
    return new StoreError(`S3 ${op} ${where} failed: ${name}${statusText}: ${e.message ?? String(err)}; ${hint}`, {
      cause: err,
    });
  }

  async putFile(key: string, path: string, opts?: PutFileOptions): Promise<void> {
    const fullKey = this.fullKey(key);
    let size: number;
    try {
      const st = await fsp.stat(path);
      if (!st.isFile()) throw new Error('not a regular file');
      size = st.size;
    } catch (err) {
      throw new StoreError(`cannot upload ${JSON.stringify(path)} to ${this.describe(fullKey)}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const body = fs.createReadStream(path);
    try {
      await this.upload(key, body, size, opts?.onProgress);
    } finally {
      body.destroy();
    }
  }

  readonly streamsUploads = true;

  async putStream(key: string, body: Readable, opts?: { onProgress?: (sentBytes: number) => void }): Promise<void> {
    try {
      await this.upload(key, body, undefined, opts?.onProgress);
    } finally {
      body.destroy();
    }
  }

  /**
   * Small bodies go in a single PutObject; larger ones as a multipart upload that becomes visible
   * only when completed, and is aborted (parts removed) on failure.
   */
  private async upload(key: string, body: Readable, size: number | undefined, onProgress?: (sentBytes: number) => void): Promise<void> {
    const fullKey = this.fullKey(key);
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key: fullKey, Body: body },
      partSize: this.partSize,
      queueSize: this.queueSize,
      leavePartsOnError: false,
    });
    if (onProgress) {
      upload.on('httpUploadProgress', (p) => {
        if (typeof p.loaded === 'number') onProgress(p.loaded);
      });
    }
    const started = Date.now();
    try {
      await upload.done();
    } catch (err) {
      // CompleteMultipartUpload applied but its answer lost (a reset): the SDK's retry then finds
      // no such upload. An object of our size written since we started is this upload, landed.
      // (A stream's size is not known here: its caller checks what landed.)
      const landed = size === undefined ? null : await this.head(key).catch(() => null);
      if (landed && landed.size === size && landed.mtime.getTime() >= Math.floor(started / 1000) * 1000) return;
      throw this.mapError(err, 'upload', fullKey);
    }
  }

  async putBytes(key: string, body: Buffer): Promise<void> {
    const fullKey = this.fullKey(key);
    try {
      await this.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: fullKey, Body: body, ContentLength: body.length }),
      );
    } catch (err) {
      throw this.mapError(err, 'PutObject', fullKey);
    }
  }

  /**
   * One GetObject. Returns the body, how many bytes it must deliver (-1: unknown), and which slice of
   * them is the caller's: HTTP lets a server ignore or widen a Range, so a response that covers the
   * requested range is accepted and cut down to it.
   */
  private async getObject(fullKey: string, range: ByteRange | undefined): Promise<BodySlice> {
    let res;
    try {
      res = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: fullKey,
          ...(range ? { Range: `bytes=${range.start}-${range.end - 1}` } : {}),
        }),
      );
    } catch (err) {
      const e = err as SdkError;
      if (range && (e.name === 'InvalidRange' || e.$metadata?.httpStatusCode === 416)) {
        throw new StoreError(`byte range [${range.start}, ${range.end}) runs past the end of ${this.describe(fullKey)}`, {
          cause: err,
        });
      }
      throw this.mapError(err, 'GetObject', fullKey);
    }
    const body = res.Body as Readable | undefined;
    if (!body) throw new StoreError(`S3 GetObject ${this.describe(fullKey)} returned no body`);
    const contentLength = res.ContentLength;
    if (!range) return { body, expected: contentLength ?? -1, skip: 0, take: -1 };

    // Which bytes of the object did we get? Content-Range "bytes A-B/TOTAL", or (200) all of them.
    const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.ContentRange ?? '');
    let got: { start: number; end: number } | undefined;
    let total: number | undefined;
    if (cr) {
      got = { start: Number(cr[1]), end: Number(cr[2]) + 1 };
      total = cr[3] === '*' ? undefined : Number(cr[3]);
    } else if (contentLength !== undefined) {
      got = { start: 0, end: contentLength };
      total = contentLength;
    }
    const fail = (msg: string) => {
      body.destroy();
      return new StoreError(msg);
    };
    if (total !== undefined && total < range.end) {
      throw fail(`byte range [${range.start}, ${range.end}) runs past the end of ${this.describe(fullKey)} (${total} bytes)`);
    }
    if (!got || got.start > range.start || got.end < range.end || (contentLength !== undefined && contentLength !== got.end - got.start)) {
      throw fail(
        `S3 GetObject ${this.describe(fullKey)} answered range [${range.start}, ${range.end}) with ${contentLength ?? 'an unknown number of'} bytes (Content-Range ${res.ContentRange ?? 'missing'}); the endpoint does not honour Range requests`,
      );
    }
    return { body, expected: got.end - got.start, skip: range.start - got.start, take: range.end - range.start };
  }

  private presigner?: Promise<typeof import('@aws-sdk/s3-request-presigner')>;

  warmPresign(): void {
    // Loaded on first use: only lazy restores (and the daemon renewing their URLs) need it.
    this.presigner ??= import('@aws-sdk/s3-request-presigner');
    this.presigner.catch(() => undefined); // surfaced by presignGet
  }

  async presignGet(key: string, seconds: number): Promise<string> {
    this.warmPresign();
    const { getSignedUrl } = await this.presigner!;
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key) }), { expiresIn: seconds });
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const fullKey = this.fullKey(key);
    if (range) {
      validateRange(key, range);
      if (range.start === range.end) return emptyStream();
    }
    const first = await this.getObject(fullKey, range);
    return Readable.from(this.resumingBody(fullKey, range, first), { objectMode: false });
  }

  /**
   * The body of one GET; when it breaks off (a reset, a stall past the socket timeout, a body cut
   * short) the rest is requested again from where it stopped, up to maxAttempts reads in all. The
   * SDK retries failed requests, but not a body that breaks off mid-stream.
   */
  private async *resumingBody(fullKey: string, range: ByteRange | undefined, first: BodySlice): AsyncGenerator<Buffer> {
    const start = range?.start ?? 0;
    // A whole-object read can resume only when its length is known.
    const end = range?.end ?? (first.expected >= 0 ? first.expected : undefined);
    let delivered = 0;
    let slice = first;
    for (let attempt = 1; ; attempt++) {
      try {
        for await (const piece of this.checkedStream(slice, fullKey) as AsyncIterable<Buffer>) {
          delivered += piece.length;
          yield piece;
        }
        return;
      } catch (err) {
        if (!(err instanceof StoreError) || end === undefined || attempt >= this.maxAttempts) throw err;
        if (start + delivered >= end) return; // every byte arrived; only the close failed
      }
      const delay = this.retryBaseDelayMs * 2 ** (attempt - 1);
      await sleep(delay / 2 + Math.random() * (delay / 2));
      slice = await this.getObject(fullKey, { start: start + delivered, end });
    }
  }

  /**
   * Pass the body's slice through, failing with StoreError if the body errors or ends before
   * `expected` bytes: the SDK would otherwise hand a cut-short body over as a silent short stream.
   */
  private checkedStream({ body, expected, skip, take }: BodySlice, fullKey: string): Readable {
    let received = 0;
    const where = this.describe(fullKey);
    const sliceEnd = take < 0 ? Infinity : skip + take;
    const out = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        const pos = received;
        received += chunk.length;
        if (skip === 0 && received <= sliceEnd) return cb(null, chunk);
        const lo = Math.max(0, skip - pos);
        const hi = Math.min(chunk.length, sliceEnd - pos);
        cb(null, hi > lo ? chunk.subarray(lo, hi) : undefined);
      },
      flush(cb) {
        if (expected >= 0 && received !== expected) {
          cb(new StoreError(`S3 GetObject ${where}: body ended after ${received} of ${expected} bytes (connection cut short); retry`));
        } else cb();
      },
    });
    finished(body, (err) => {
      if (err && !out.destroyed) {
        out.destroy(
          new StoreError(
            `S3 GetObject ${where}: reading the body failed after ${received}${expected >= 0 ? ` of ${expected}` : ''} bytes: ${err.message}; retry`,
            { cause: err },
          ),
        );
      }
    });
    // The consumer gave up early: release the socket.
    out.on('close', () => {
      if (!body.destroyed && !body.readableEnded) body.destroy();
    });
    body.pipe(out);
    return out;
  }

  async getBytes(key: string, range?: ByteRange): Promise<Buffer> {
    const fullKey = this.fullKey(key);
    if (range) {
      validateRange(key, range);
      if (range.start === range.end) return Buffer.alloc(0);
    }
    // The SDK retries failed requests, but not a body that breaks off mid-stream: retry those here.
    for (let attempt = 1; ; attempt++) {
      const { body, expected, skip, take } = await this.getObject(fullKey, range);
      try {
        const chunks: Buffer[] = [];
        let received = 0;
        for await (const chunk of body) {
          chunks.push(chunk as Buffer);
          received += (chunk as Buffer).length;
        }
        if (expected >= 0 && received !== expected) throw new ShortBodyError(received, expected);
        const all = Buffer.concat(chunks, received);
        return take < 0 || (skip === 0 && take === received) ? all : Buffer.from(all.subarray(skip, skip + take));
      } catch (err) {
        body.destroy();
        if (!isTransient(err) || attempt >= this.maxAttempts) {
          const e = err as Error;
          throw new StoreError(
            `S3 GetObject ${this.describe(fullKey)}: reading the body failed after ${attempt} attempt(s): ${e.message}; check the network and endpoint`,
            { cause: err },
          );
        }
        const delay = this.retryBaseDelayMs * 2 ** (attempt - 1);
        await sleep(delay / 2 + Math.random() * (delay / 2));
      }
    }
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const fullKey = this.fullKey(key);
    try {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: fullKey }));
      return { key, size: res.ContentLength ?? 0, mtime: res.LastModified ?? new Date(0) };
    } catch (err) {
      const mapped = this.mapError(err, 'HeadObject', fullKey);
      if (mapped instanceof ObjectNotFoundError) return null;
      throw mapped;
    }
  }

  /**
   * Set the object's Last-Modified to now (gc's grace period counts from it) by copying it onto
   * itself; objects over 5 GiB are copied in parts. Throws ObjectNotFoundError.
   */
  async touch(key: string): Promise<void> {
    await this.copyObject(key, key, 'touch');
  }

  /** Copy `from` to `to` inside the bucket (server side; in parts over 5 GiB). Throws ObjectNotFoundError. */
  async copy(from: string, to: string): Promise<void> {
    await this.copyObject(from, to, 'copy');
  }

  private async copyObject(from: string, to: string, what: string): Promise<void> {
    const fullKey = this.fullKey(to);
    const srcKey = this.fullKey(from);
    const copySource = `${this.bucket}/${srcKey.split('/').map(encodeURIComponent).join('/')}`;
    let size: number | undefined;
    try {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: srcKey }));
      size = res.ContentLength;
    } catch (err) {
      throw this.mapError(err, 'HeadObject', srcKey);
    }
    if (size === undefined || size <= MAX_SINGLE_COPY) {
      try {
        await this.client.send(
          new CopyObjectCommand({
            Bucket: this.bucket,
            Key: fullKey,
            CopySource: copySource,
            MetadataDirective: 'REPLACE',
          }),
        );
      } catch (err) {
        throw this.mapError(err, `CopyObject (${what})`, fullKey);
      }
      return;
    }
    let uploadId: string | undefined;
    try {
      const created = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: fullKey }));
      uploadId = created.UploadId;
      if (!uploadId) throw new StoreError(`S3 CreateMultipartUpload ${this.describe(fullKey)} returned no UploadId`);
      const parts: { ETag: string; PartNumber: number }[] = [];
      for (let start = 0, n = 1; start < size; start += COPY_PART_SIZE, n++) {
        const end = Math.min(size, start + COPY_PART_SIZE) - 1;
        const res = await this.client.send(
          new UploadPartCopyCommand({
            Bucket: this.bucket,
            Key: fullKey,
            UploadId: uploadId,
            PartNumber: n,
            CopySource: copySource,
            CopySourceRange: `bytes=${start}-${end}`,
          }),
        );
        const etag = res.CopyPartResult?.ETag;
        if (!etag) throw new StoreError(`S3 UploadPartCopy ${this.describe(fullKey)} part ${n} returned no ETag`);
        parts.push({ ETag: etag, PartNumber: n });
      }
      await this.client.send(
        new CompleteMultipartUploadCommand({
          Bucket: this.bucket,
          Key: fullKey,
          UploadId: uploadId,
          MultipartUpload: { Parts: parts },
        }),
      );
    } catch (err) {
      if (uploadId) {
        await this.client
          .send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: fullKey, UploadId: uploadId }))
          .catch(() => {});
      }
      throw this.mapError(err, `multipart copy (${what})`, fullKey);
    }
  }

  async delete(key: string): Promise<void> {
    const fullKey = this.fullKey(key);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: fullKey }));
    } catch (err) {
      const mapped = this.mapError(err, 'DeleteObject', fullKey);
      if (mapped instanceof ObjectNotFoundError) return;
      throw mapped;
    }
  }

  /**
   * Abort multipart uploads of blobs initiated before `before`: a backup killed mid-upload leaves
   * its parts stored (and billed) until the upload is completed or aborted. A server that does
   * not implement ListMultipartUploads has nothing to report.
   */
  async cleanupIncomplete(before: Date, opts: { dryRun?: boolean } = {}): Promise<IncompleteWrite[]> {
    const base = this.prefix === '' ? '' : this.prefix + '/';
    const out: IncompleteWrite[] = [];
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      let res;
      try {
        res = await this.client.send(
          new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: base + 'blobs/', KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }),
        );
      } catch (err) {
        const e = err as SdkError;
        if (e.name === 'NotImplemented' || e.$metadata?.httpStatusCode === 501) return out;
        throw this.mapError(err, 'ListMultipartUploads', base + 'blobs/');
      }
      for (const u of res.Uploads ?? []) {
        if (u.Key === undefined || !u.Key.startsWith(base) || !u.UploadId || !u.Initiated) continue;
        if (u.Initiated.getTime() >= before.getTime()) continue;
        if (!opts.dryRun) {
          try {
            await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }));
          } catch (err) {
            // NoSuchUpload: completed or aborted meanwhile.
            const mapped = this.mapError(err, 'AbortMultipartUpload', u.Key);
            if (!(mapped instanceof ObjectNotFoundError)) throw mapped;
          }
        }
        out.push({ key: u.Key.slice(base.length), id: u.UploadId, started: u.Initiated });
      }
      if (!res.IsTruncated || (res.NextKeyMarker === undefined && res.NextUploadIdMarker === undefined)) return out;
      keyMarker = res.NextKeyMarker;
      uploadIdMarker = res.NextUploadIdMarker;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    validatePrefix(prefix);
    const base = this.prefix === '' ? '' : this.prefix + '/';
    let token: string | undefined;
    do {
      let res;
      try {
        res = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: base + prefix, ContinuationToken: token }),
        );
      } catch (err) {
        throw this.mapError(err, 'ListObjectsV2', base + prefix);
      }
      for (const obj of res.Contents ?? []) {
        if (obj.Key === undefined || !obj.Key.startsWith(base)) continue;
        yield { key: obj.Key.slice(base.length), size: obj.Size ?? 0, mtime: obj.LastModified ?? new Date(0) };
      }
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
  }
}
