/**
 * An in-process S3 server (s3rver) on 127.0.0.1:<random port> with a fresh temp directory and one
 * bucket, for tests. s3rver ships no type declarations; the little we use is typed here.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { S3Store, type S3StoreOptions } from '../../src/store/s3.js';

interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
}
type S3rverCtor = new (options: {
  address: string;
  port: number;
  directory: string;
  silent: boolean;
  resetOnClose?: boolean;
  configureBuckets?: { name: string; configs?: unknown[] }[];
}) => S3rverInstance;

const S3rver = createRequire(import.meta.url)('s3rver') as S3rverCtor;

/** s3rver's default (and only accepted) credentials. */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export interface S3TestServer {
  /** http://127.0.0.1:PORT */
  endpoint: string;
  bucket: string;
  /** s3://BUCKET/PREFIX for a store on this server. */
  url: string;
  /** Where s3rver keeps its files. */
  dir: string;
  close(): Promise<void>;
}

export async function startS3Server(opts: { bucket?: string; prefix?: string } = {}): Promise<S3TestServer> {
  const bucket = opts.bucket ?? 'strata-test';
  const prefix = opts.prefix ?? 'store';
  const dir = await mkdtemp(join(tmpdir(), 'strata-s3rver-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    directory: dir,
    silent: true,
    configureBuckets: [{ name: bucket }],
  });
  let addr: AddressInfo;
  try {
    addr = await server.run();
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  let closed = false;
  return {
    endpoint: `http://127.0.0.1:${addr.port}`,
    bucket,
    url: prefix ? `s3://${bucket}/${prefix}` : `s3://${bucket}`,
    dir,
    async close() {
      if (closed) return;
      closed = true;
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** An S3Store pointed at the server, with explicit endpoint, region and credentials (no env needed). */
export function s3StoreFor(server: S3TestServer, options: S3StoreOptions & { url?: string } = {}): S3Store {
  const { url, ...rest } = options;
  return new S3Store(url ?? server.url, {
    endpoint: server.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: S3RVER_CREDENTIALS,
    ...rest,
  });
}
