// Helpers shared by the benchmark modules: child processes, page cache, statistics, S3 plumbing.
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { S3Client, ListObjectsV2Command, DeleteObjectsCommand } from '@aws-sdk/client-s3';

export const now = () => performance.now();
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Run a command without blocking this process (a lazy mount's fetcher may live here, so every
 * read of a restored tree goes through a child). Resolves { code, stdout, stderr }; rejects on a
 * non-zero exit unless opts.allowFail.
 */
export function run(cmd, args = [], opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', opts.stdout === 'ignore' ? 'ignore' : 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout?.on('data', (b) => {
      if (out.length < 1 << 20) out += b;
    });
    child.stderr.on('data', (b) => {
      if (err.length < 1 << 16) err += b;
    });
    child.on('error', reject);
    child.on('close', (code, sig) => {
      if ((code === 0 || opts.allowFail) && !sig) resolve({ code, stdout: out, stderr: err });
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${sig ?? code}: ${err.trim().slice(-2000)}`));
    });
  });
}

export const sh = (script, opts) => run('bash', ['-o', 'pipefail', '-c', script], opts);

/**
 * A shell kept running for the timed probes (`ls`, `cat` right after a restore): a fork of this
 * process, which holds the results and the S3 client, costs several ms more than a fork of a small
 * shell, and that belongs to the harness, not to the file system measured. `probe(cmd)` runs one
 * command there and resolves when it has exited (rejects if it failed).
 */
export function prober() {
  const child = spawn('bash', ['--norc', '--noprofile'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let buf = '';
  const waiting = [];
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      waiting.shift()?.(line);
    }
  });
  return {
    probe(cmd) {
      return new Promise((resolve, reject) => {
        waiting.push((line) => (line === 'rc 0' ? resolve() : reject(new Error(`${cmd} failed (${line})`))));
        child.stdin.write(`${cmd} > /dev/null 2>&1; echo "rc $?"\n`);
      });
    },
    close() {
      child.stdin.end();
    },
  };
}

/** Write back dirty pages and drop the page cache, dentries and inodes. */
export async function dropCaches() {
  await run('sync');
  await writeFile('/proc/sys/vm/drop_caches', '3\n');
}

/** Read every regular file under dir (through a child), so the server side of the store is warm. */
export const warmDir = (dir) => sh(`find ${q(dir)} -type f -print0 | xargs -0 -r cat > /dev/null`);

export const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

export function median(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return undefined;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/** Half the range as a fraction of the median: "±x%". */
export function spread(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x));
  const m = median(v);
  if (!v.length || !m) return undefined;
  return (Math.max(...v) - Math.min(...v)) / 2 / m;
}

export async function loadavg() {
  return (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).map(Number);
}

export const CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

/** A fresh S3 client for the endpoint (every measured operation gets its own: no warm sockets). */
export function s3Client(endpoint) {
  return new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: CREDENTIALS,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 3,
  });
}

/** Delete every object under prefix (straight to the server, not through the shaper). */
export async function deletePrefix(endpoint, bucket, prefix) {
  const c = s3Client(endpoint);
  try {
    let token;
    do {
      const l = await c.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
      const keys = (l.Contents ?? []).map((o) => ({ Key: o.Key }));
      if (keys.length) await c.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
      token = l.IsTruncated ? l.NextContinuationToken : undefined;
    } while (token);
  } finally {
    c.destroy();
  }
}

/** Start a node script that prints {"port":N}; resolves { child, port }. */
export function startServer(script, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
    let buf = '';
    child.stdout.on('data', (b) => {
      buf += b;
      const i = buf.indexOf('\n');
      if (i >= 0) {
        try {
          resolve({ child, port: JSON.parse(buf.slice(0, i)).port });
        } catch (err) {
          reject(err);
        }
      }
    });
    child.on('exit', (code) => reject(new Error(`${script} exited ${code}`)));
    child.on('error', reject);
  });
}

export async function shaperCall(port, path, method = 'GET') {
  const res = await fetch(`http://127.0.0.1:${port}/__shaper/${path}`, { method });
  if (!res.ok) throw new Error(`shaper ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

export { createReadStream };
