#!/usr/bin/env node
// The benchmark's S3-compatible server: s3rver on 127.0.0.1 in a process of its own (so its CPU
// use never stalls the process being measured). Prints {"port":N} on stdout once listening.
//
//   node test/bench/s3server.mjs DIR BUCKET
import { createRequire } from 'node:module';

const [dir, bucket] = process.argv.slice(2);
if (!dir || !bucket) {
  console.error('usage: s3server.mjs DIR BUCKET');
  process.exit(2);
}
const S3rver = createRequire(import.meta.url)('s3rver');
const server = new S3rver({ address: '127.0.0.1', port: 0, directory: dir, silent: true, configureBuckets: [{ name: bucket }] });
const addr = await server.run();
process.stdout.write(JSON.stringify({ port: addr.port }) + '\n');
const stop = async () => {
  await server.close().catch(() => undefined);
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop); // the parent went away
process.stdin.resume();
