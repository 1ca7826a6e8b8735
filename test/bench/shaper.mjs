#!/usr/bin/env node
// A shaping HTTP proxy in front of the benchmark's S3 server (this kernel has no netem, so the
// link is shaped in userspace). Every request and response passes through; per profile:
//
//   local  nothing added
//   r2     the response starts 40 ms after the upstream answered (one round trip per request),
//          and bodies are paced by two token buckets shared by all connections, one per direction
//          (uploads and downloads each capped at 100 MB/s; 256 KiB burst)
//
// Counters (requests by method, request and response body bytes) are served at
// GET /__shaper/stats; POST /__shaper/profile/NAME switches the profile. Neither is shaped.
// SHAPER_LOG=FILE appends one line per request (start and end, epoch ms,
// method, path, range, body bytes): the timeline of a lazy restore's GETs.
//
//   node test/bench/shaper.mjs UPSTREAM_PORT [PROFILE]     prints {"port":N} once listening
import http from 'node:http';
import { Transform } from 'node:stream';
import { appendFileSync } from 'node:fs';

export const PROFILES = {
  local: { rttMs: 0, bytesPerSec: 0 },
  r2: { rttMs: 40, bytesPerSec: 100e6 },
};

/** A virtual-clock token bucket: reserve(n) says how long to wait before sending n bytes. */
class Bucket {
  constructor() {
    this.rate = 0;
    this.burst = 256 * 1024;
    this.t = 0;
  }
  reserve(n) {
    if (!this.rate) return 0;
    const now = performance.now();
    this.t = Math.max(this.t, now - (this.burst / this.rate) * 1000);
    this.t += (n / this.rate) * 1000;
    return this.t - now;
  }
}

const up = new Bucket();
const down = new Bucket();
let profile = { name: 'local', ...PROFILES.local };
const stats = { requests: 0, byMethod: {}, bytesIn: 0, bytesOut: 0, errors: 0 };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const PIECE = 64 * 1024;

function pace(bucket, count) {
  return new Transform({
    async transform(chunk, _enc, cb) {
      try {
        for (let off = 0; off < chunk.length; off += PIECE) {
          const piece = chunk.subarray(off, off + PIECE);
          const wait = bucket.reserve(piece.length);
          if (wait >= 1) await sleep(wait);
          count(piece.length);
          this.push(piece);
        }
        cb();
      } catch (err) {
        cb(err);
      }
    },
  });
}

function setProfile(name) {
  const p = PROFILES[name];
  if (!p) throw new Error(`unknown profile ${name}`);
  profile = { name, ...p };
  up.rate = down.rate = p.bytesPerSec;
  up.t = down.t = 0;
}

const upstreamPort = Number(process.argv[2]);
setProfile(process.argv[3] ?? 'local');
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/__shaper/')) {
    const m = /^\/__shaper\/profile\/(\w+)$/.exec(req.url);
    try {
      if (m && req.method === 'POST') setProfile(m[1]);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ profile, stats }));
    } catch (err) {
      res.statusCode = 400;
      res.end(String(err));
    }
    return;
  }
  stats.requests++;
  const t0 = Date.now();
  let sent = 0;
  if (process.env.SHAPER_LOG)
    res.on('close', () => appendFileSync(process.env.SHAPER_LOG, `${t0} ${Date.now()} ${req.method} ${req.url.split('?')[0]} ${req.headers.range ?? '-'} ${sent}\n`));
  stats.byMethod[req.method] = (stats.byMethod[req.method] ?? 0) + 1;
  const { rttMs } = profile;
  const fwd = http.request(
    { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers, agent },
    async (ures) => {
      if (rttMs) await sleep(rttMs);
      res.writeHead(ures.statusCode, ures.statusMessage, ures.rawHeaders);
      ures.pipe(pace(down, (n) => ((stats.bytesOut += n), (sent += n)))).pipe(res);
    },
  );
  const fail = (err) => {
    stats.errors++;
    if (!res.headersSent) {
      res.statusCode = 502;
      res.end(String(err));
    } else res.destroy(err);
  };
  fwd.on('error', fail);
  req.on('error', () => fwd.destroy());
  res.on('close', () => {
    if (!res.writableFinished) fwd.destroy();
  });
  req.pipe(pace(up, (n) => (stats.bytesIn += n))).pipe(fwd);
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
const stop = () => {
  server.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
