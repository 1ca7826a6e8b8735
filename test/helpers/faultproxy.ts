/**
 * A fault-injecting HTTP proxy on loopback, in front of an S3 server (s3rver in tests). Point an
 * S3Store's endpoint at `proxy.endpoint`; every request is forwarded unchanged (the SigV4
 * signature covers the Host header, which is forwarded as the client sent it) unless a rule
 * fires. Faults:
 *
 *   status    answer 500 / 503 (or any status) with an S3 error body, without forwarding
 *   reset     RST the client connection: before forwarding, after N bytes of the request body
 *             (phase 'request'), or after N bytes of the response body (phase 'response')
 *   truncate  forward the response headers (with the real Content-Length), then N bytes of the
 *             body (or a fraction of it), then close the connection: a body cut short
 *   stall     hold the request (or the response after N body bytes) for ms, or forever
 *   throttle  pace this request's bytes, both directions, to bytesPerSec
 *   corrupt   flip one byte of the request or response body in transit
 *   ignoreRange / shiftRange  a server that answers a ranged GET with the whole object (200), or
 *             with another range than asked (the request goes upstream unsigned, which s3rver
 *             accepts, since its Range header is covered by the signature)
 *
 * A rule fires at chosen requests (`at`: the Nth request the rule matches, 1-based), at a rate
 * (`rate`, from a seeded PRNG, so a run is reproducible), or on every match; `times` caps it.
 * `throttle()` paces all traffic through the proxy (a shared token bucket), for slow uploads.
 *
 * s3rver implements neither ListMultipartUploads nor AbortMultipartUpload; given `s3rverDir`, the
 * proxy answers those two from s3rver's own upload directory, so clean-up of incomplete
 * multipart uploads can be tested end to end (faults apply to them like to any request).
 */
import { once } from 'node:events';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';

export type S3Op =
  | 'GetObject'
  | 'HeadObject'
  | 'PutObject'
  | 'CopyObject'
  | 'UploadPart'
  | 'CreateMultipartUpload'
  | 'CompleteMultipartUpload'
  | 'AbortMultipartUpload'
  | 'ListMultipartUploads'
  | 'ListObjectsV2'
  | 'DeleteObject'
  | 'Other';

export interface RequestInfo {
  /** 1-based number of the request through this proxy. */
  n: number;
  op: S3Op;
  method: string;
  bucket: string;
  /** Object key inside the bucket (decoded), '' for bucket requests. */
  key: string;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
}

export type Fault =
  | { kind: 'status'; status: number; code?: string }
  | { kind: 'reset'; phase?: 'before' | 'request' | 'response'; afterBytes?: number }
  | { kind: 'truncate'; afterBytes?: number; fraction?: number }
  | { kind: 'stall'; ms?: number; afterBytes?: number }
  | { kind: 'throttle'; bytesPerSec: number }
  | { kind: 'corrupt'; phase?: 'request' | 'response'; at?: number }
  | { kind: 'ignoreRange' }
  | { kind: 'shiftRange'; by: number };

export interface FaultRule {
  fault: Fault;
  op?: S3Op | S3Op[];
  key?: RegExp;
  when?: (r: RequestInfo) => boolean;
  /** Fire at the Nth request(s) this rule matches (1-based). */
  at?: number | number[];
  /** Fire with this probability per matching request (seeded PRNG). */
  rate?: number;
  /** Fire at most this many times. */
  times?: number;
}

export interface LogEntry {
  n: number;
  op: S3Op;
  method: string;
  key: string;
  /** Status sent to the client, when a status line was sent. */
  status?: number;
  /** The request's Range header, if any. */
  range?: string;
  /** Signed in its query string (a presigned URL, as strata-fuse fetches), not by an SDK's header. */
  presigned?: true;
  fault?: Fault['kind'];
  bytesIn: number;
  bytesOut: number;
}

export interface FaultProxyOptions {
  /** The S3 server, e.g. http://127.0.0.1:PORT. */
  upstream: string;
  /** Seed of the PRNG behind `rate`. */
  seed?: number;
  /** s3rver's directory: emulate ListMultipartUploads / AbortMultipartUpload from it. */
  s3rverDir?: string;
}

export interface FaultProxy {
  endpoint: string;
  /** Every request so far, in arrival order. */
  readonly log: LogEntry[];
  /** Replace the rules (and reset their counters); a seed restarts the PRNG behind `rate`. */
  setRules(rules: FaultRule[], seed?: number): void;
  /** Pace all traffic (both directions share one budget); null: full speed. */
  throttle(bytesPerSec: number | null): void;
  /** Injections so far. */
  readonly fired: number;
  /** Forget rules, throttle and log. */
  reset(): void;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** mulberry32: small, seedable, good enough to pick requests. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A shared byte budget: take(n) resolves when n more bytes may pass. */
class Pacer {
  private next = 0;
  constructor(readonly bytesPerSec: number) {}
  async take(n: number): Promise<void> {
    const now = Date.now();
    const start = Math.max(now, this.next);
    this.next = start + (n / this.bytesPerSec) * 1000;
    if (start > now) await sleep(start - now);
  }
}

function classify(method: string, key: string, q: URLSearchParams, headers: http.IncomingHttpHeaders): S3Op {
  if (key === '') {
    if (method === 'GET' && q.has('uploads')) return 'ListMultipartUploads';
    if (method === 'GET') return 'ListObjectsV2';
    return 'Other';
  }
  switch (method) {
    case 'GET':
      return 'GetObject';
    case 'HEAD':
      return 'HeadObject';
    case 'PUT':
      if (q.has('uploadId')) return 'UploadPart';
      return 'x-amz-copy-source' in headers ? 'CopyObject' : 'PutObject';
    case 'POST':
      if (q.has('uploads')) return 'CreateMultipartUpload';
      if (q.has('uploadId')) return 'CompleteMultipartUpload';
      return 'Other';
    case 'DELETE':
      return q.has('uploadId') ? 'AbortMultipartUpload' : 'DeleteObject';
    default:
      return 'Other';
  }
}

const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

interface RuleState {
  rule: FaultRule;
  seen: number;
  fired: number;
}

/** Slice size for paced and byte-counted copies. */
const SLICE = 16 * 1024;

export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  const up = new URL(opts.upstream);
  let rand = prng(opts.seed ?? 1);
  let rules: RuleState[] = [];
  let pacer: Pacer | null = null;
  let fired = 0;
  let n = 0;
  const log: LogEntry[] = [];
  const sockets = new Set<Socket>();
  const upstreamReqs = new Set<http.ClientRequest>();
  let closing = false;
  const agent = new http.Agent({ keepAlive: true });

  const pick = (info: RequestInfo): Fault | undefined => {
    // Every matching rule counts the request, so `at` means the Nth match whatever fired before.
    let chosen: Fault | undefined;
    for (const st of rules) {
      const r = st.rule;
      if (r.op !== undefined && !(Array.isArray(r.op) ? r.op : [r.op]).includes(info.op)) continue;
      if (r.key && !r.key.test(info.key)) continue;
      if (r.when && !r.when(info)) continue;
      st.seen++;
      if (chosen || (r.times !== undefined && st.fired >= r.times)) continue;
      let fire: boolean;
      if (r.at !== undefined) fire = (Array.isArray(r.at) ? r.at : [r.at]).includes(st.seen);
      else if (r.rate !== undefined) fire = rand() < r.rate;
      else fire = true;
      if (!fire) continue;
      st.fired++;
      fired++;
      chosen = r.fault;
    }
    return chosen;
  };

  /** Wait for 'drain' or 'close', removing both listeners after. */
  const drained = (dst: Writable): Promise<void> =>
    new Promise((resolve) => {
      const done = () => {
        dst.off('drain', done);
        dst.off('close', done);
        resolve();
      };
      dst.on('drain', done);
      dst.on('close', done);
    });

  /**
   * Copy src to dst in slices, counting bytes; pace them; at `cutAt` bytes stop (returns false:
   * the caller breaks the connection); at `stallAt` bytes pause for stallMs.
   */
  const pump = async (
    src: Readable,
    dst: Writable,
    count: (k: number) => void,
    ctl: { cutAt?: number; stallAt?: number; stallMs?: number; pacer?: Pacer | null; flipAt?: number } = {},
  ): Promise<boolean> => {
    let done = 0;
    let stalled = false;
    for await (const chunk of src as AsyncIterable<Buffer>) {
      for (let off = 0; off < chunk.length; ) {
        let len = Math.min(SLICE, chunk.length - off);
        if (ctl.cutAt !== undefined) len = Math.min(len, ctl.cutAt - done);
        if (ctl.stallAt !== undefined && !stalled) len = Math.min(len, Math.max(0, ctl.stallAt - done));
        if (len > 0) {
          let slice = chunk.subarray(off, off + len);
          if (ctl.flipAt !== undefined && ctl.flipAt >= done && ctl.flipAt < done + len) {
            slice = Buffer.from(slice);
            slice[ctl.flipAt - done] ^= 0x5a;
          }
          const p = ctl.pacer ?? pacer;
          if (p) await p.take(len);
          if (dst.destroyed) return false;
          const ok = dst.write(slice);
          count(len);
          done += len;
          off += len;
          if (!ok) await drained(dst);
        }
        if (ctl.cutAt !== undefined && done >= ctl.cutAt) {
          // Let what was written reach the client before the connection goes.
          await new Promise<void>((r) => dst.write(Buffer.alloc(0), () => r()));
          return false;
        }
        if (ctl.stallAt !== undefined && !stalled && done >= ctl.stallAt) {
          stalled = true;
          await stallFor(ctl.stallMs);
        }
      }
    }
    if (ctl.stallAt !== undefined && !stalled) {
      stalled = true;
      await stallFor(ctl.stallMs);
    }
    return true;
  };

  /** Sleep ms (forever when undefined), waking early when the proxy closes. */
  const stallFor = async (ms: number | undefined): Promise<void> => {
    const until = ms === undefined ? Infinity : Date.now() + ms;
    while (!closing && Date.now() < until) await sleep(Math.min(100, until - Date.now()));
  };

  const errorBody = (status: number, code: string, info: RequestInfo): string =>
    `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>injected by faultproxy (request ${info.n})</Message>` +
    `<Key>${xmlEscape(info.key)}</Key><RequestId>fault-${info.n}</RequestId></Error>`;

  const defaultCode = (status: number): string =>
    status === 503 ? 'SlowDown' : status === 500 ? 'InternalError' : status === 502 ? 'BadGateway' : status === 504 ? 'GatewayTimeout' : 'InjectedError';

  const drain = async (req: http.IncomingMessage, entry: LogEntry): Promise<void> => {
    for await (const c of req as AsyncIterable<Buffer>) entry.bytesIn += c.length;
  };

  /** s3rver's upload directories: <dir>/<bucket>/._S3rver_uploads/<uploadId>/{key,1,2,...}. */
  const uploadsDir = (bucket: string): string => join(opts.s3rverDir!, bucket, '._S3rver_uploads');

  const emulate = async (info: RequestInfo, res: http.ServerResponse, entry: LogEntry): Promise<void> => {
    if (info.op === 'ListMultipartUploads') {
      const prefix = info.query.get('prefix') ?? '';
      const items: string[] = [];
      let ids: string[] = [];
      try {
        ids = await readdir(uploadsDir(info.bucket));
      } catch {
        /* none */
      }
      for (const id of ids.sort()) {
        try {
          const key = await readFile(join(uploadsDir(info.bucket), id, 'key'), 'utf8');
          const st = await stat(join(uploadsDir(info.bucket), id, 'key'));
          if (!key.startsWith(prefix)) continue;
          items.push(
            `<Upload><Key>${xmlEscape(key)}</Key><UploadId>${xmlEscape(id)}</UploadId><Initiated>${st.mtime.toISOString()}</Initiated><StorageClass>STANDARD</StorageClass></Upload>`,
          );
        } catch {
          /* completed meanwhile */
        }
      }
      const body =
        `<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
        `<Bucket>${xmlEscape(info.bucket)}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>` +
        `<Prefix>${xmlEscape(prefix)}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>${items.join('')}</ListMultipartUploadsResult>`;
      entry.status = 200;
      res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      entry.bytesOut += Buffer.byteLength(body);
      return;
    }
    // AbortMultipartUpload
    const id = info.query.get('uploadId') ?? '';
    const dir = join(uploadsDir(info.bucket), id);
    let key: string | undefined;
    try {
      key = await readFile(join(dir, 'key'), 'utf8');
    } catch {
      /* unknown */
    }
    if (!/^[A-Za-z0-9_-]+$/.test(id) || key !== info.key) {
      const body = errorBody(404, 'NoSuchUpload', info);
      entry.status = 404;
      res.writeHead(404, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    await rm(dir, { recursive: true, force: true });
    entry.status = 204;
    res.writeHead(204);
    res.end();
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://proxy');
    const parts = url.pathname.split('/').slice(1);
    const bucket = decodeURIComponent(parts[0] ?? '');
    const key = parts.slice(1).map(decodeURIComponent).join('/');
    const method = req.method ?? 'GET';
    const info: RequestInfo = { n: ++n, op: classify(method, key, url.searchParams, req.headers), method, bucket, key, query: url.searchParams, headers: req.headers };
    const entry: LogEntry = { n: info.n, op: info.op, method, key, bytesIn: 0, bytesOut: 0, ...(req.headers.range ? { range: String(req.headers.range) } : {}), ...(url.searchParams.has('X-Amz-Signature') ? { presigned: true as const } : {}) };
    log.push(entry);
    const fault = pick(info);
    if (fault) entry.fault = fault.kind;
    const sock = req.socket;

    if (fault?.kind === 'status') {
      await drain(req, entry);
      const body = method === 'HEAD' ? '' : errorBody(fault.status, fault.code ?? defaultCode(fault.status), info);
      entry.status = fault.status;
      res.writeHead(fault.status, {
        'content-type': 'application/xml',
        'content-length': Buffer.byteLength(body),
        'x-amz-request-id': `fault-${info.n}`,
        ...(fault.status === 503 ? { 'retry-after': '0' } : {}),
      });
      res.end(body);
      return;
    }
    if (fault?.kind === 'reset' && (fault.phase ?? 'before') === 'before') {
      sock.resetAndDestroy();
      return;
    }
    if (fault?.kind === 'stall' && fault.afterBytes === undefined) {
      // Hold the request before forwarding it (the client sees no answer).
      await stallFor(fault.ms);
      if (closing || sock.destroyed) return;
    }

    if (opts.s3rverDir && (info.op === 'ListMultipartUploads' || info.op === 'AbortMultipartUpload')) {
      await drain(req, entry);
      await emulate(info, res, entry);
      return;
    }

    const headers = { ...req.headers };
    if (fault?.kind === 'ignoreRange' || fault?.kind === 'shiftRange') {
      delete headers['authorization'];
      if (fault.kind === 'ignoreRange') delete headers['range'];
      else {
        const m = /^bytes=(\d+)-(\d+)$/.exec(String(headers['range'] ?? ''));
        if (m) headers['range'] = `bytes=${Math.max(0, Number(m[1]) + fault.by)}-${Math.max(0, Number(m[2]) + fault.by)}`;
      }
    }
    delete headers['expect'];
    delete headers['connection'];
    delete headers['keep-alive'];
    const upReq = http.request({ host: up.hostname, port: up.port, method, path: req.url, headers, agent });
    upstreamReqs.add(upReq);
    upReq.on('close', () => upstreamReqs.delete(upReq));
    const kill = (rst: boolean) => {
      upReq.destroy();
      if (rst) sock.resetAndDestroy();
      else sock.destroy();
    };
    // Per request, on a kept-alive client socket: taken off again when the request ends, or a
    // socket serving many requests collects one listener each.
    const onSockClose = () => upReq.destroy();
    sock.once('close', onSockClose);
    upReq.once('close', () => sock.off('close', onSockClose));
    const resP = new Promise<http.IncomingMessage>((resolve, reject) => {
      upReq.once('response', resolve);
      upReq.once('error', reject);
    });
    resP.catch(() => undefined);
    const own = fault?.kind === 'throttle' ? new Pacer(fault.bytesPerSec) : null;
    // Request body upstream.
    const cutUp = fault?.kind === 'reset' && fault.phase === 'request' ? (fault.afterBytes ?? 0) : undefined;
    const flipUp = fault?.kind === 'corrupt' && fault.phase === 'request' ? (fault.at ?? Math.floor(Number(req.headers['content-length'] ?? 0) / 2)) : undefined;
    const sent = await pump(req, upReq, (k) => (entry.bytesIn += k), {
      ...(cutUp !== undefined ? { cutAt: cutUp } : {}),
      ...(flipUp !== undefined ? { flipAt: flipUp } : {}),
      pacer: own,
    }).catch(() => false);
    if (!sent) {
      kill(true);
      return;
    }
    upReq.end();
    let upRes: http.IncomingMessage;
    try {
      upRes = await resP;
    } catch {
      if (!sock.destroyed) kill(true);
      return;
    }
    const length = Number(upRes.headers['content-length'] ?? NaN);
    entry.status = upRes.statusCode ?? 502;
    res.writeHead(entry.status, upRes.headers);
    const ctl: Parameters<typeof pump>[3] = { pacer: own };
    let rst = false;
    if (fault?.kind === 'truncate') {
      ctl.cutAt = fault.afterBytes ?? Math.floor((Number.isFinite(length) ? length : 0) * (fault.fraction ?? 0.5));
    } else if (fault?.kind === 'reset' && fault.phase === 'response') {
      ctl.cutAt = fault.afterBytes ?? 0;
      rst = true;
    } else if (fault?.kind === 'corrupt' && fault.phase !== 'request') {
      ctl.flipAt = fault.at ?? Math.floor((Number.isFinite(length) ? length : 0) / 2);
    } else if (fault?.kind === 'stall' && fault.afterBytes !== undefined) {
      ctl.stallAt = fault.afterBytes;
      if (fault.ms !== undefined) ctl.stallMs = fault.ms;
    }
    if (ctl.cutAt !== undefined) res.flushHeaders();
    const complete = await pump(upRes, res, (k) => (entry.bytesOut += k), ctl).catch(() => false);
    if (!complete) {
      kill(rst);
      return;
    }
    res.end();
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => {
      req.socket.destroy();
    });
  });
  server.keepAliveTimeout = 30_000;
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  // Clients that sent Expect: 100-continue get it at once.
  server.on('checkContinue', (req, res) => {
    res.writeContinue();
    server.emit('request', req, res);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;

  return {
    endpoint: `http://127.0.0.1:${port}`,
    log,
    get fired() {
      return fired;
    },
    setRules(rs: FaultRule[], seed?: number) {
      rules = rs.map((rule) => ({ rule, seen: 0, fired: 0 }));
      if (seed !== undefined) rand = prng(seed);
    },
    throttle(bps: number | null) {
      pacer = bps === null ? null : new Pacer(bps);
    },
    reset() {
      rules = [];
      pacer = null;
      fired = 0;
      log.length = 0;
    },
    async close() {
      closing = true;
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const r of upstreamReqs) r.destroy();
      for (const s of sockets) s.destroy();
      agent.destroy();
      await closed;
    },
  };
}
