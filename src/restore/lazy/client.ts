/** Talking to the restore daemon from the CLI or library: start it if needed, send one request. */
import { mkdir, open } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BackupRestoreError } from '../../errors.js';
import { sys } from '../../sys/native.js';
import { envList } from '../../util/process.js';
import { controlSocket, type DaemonRequest, type ReplyTo, runDir } from './protocol.js';

function request<R extends DaemonRequest>(home: string, msg: R, timeoutMs: number): Promise<ReplyTo<R>> {
  return new Promise((resolveReq, reject) => {
    const sock = connect(controlSocket(home));
    let buf = '';
    const t = setTimeout(() => {
      sock.destroy();
      reject(new BackupRestoreError(`the restore daemon did not answer ${String(msg.op)} within ${timeoutMs} ms (log: ${join(runDir(home), 'daemon.log')})`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify(msg) + '\n'));
    sock.on('data', (d: string) => (buf += d));
    sock.on('end', () => {
      clearTimeout(t);
      try {
        resolveReq(JSON.parse(buf) as ReplyTo<R>);
      } catch {
        reject(new BackupRestoreError(`bad answer from the restore daemon: ${buf.slice(0, 200)}`));
      }
    });
    sock.on('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
  });
}

/** Start the daemon for this home, detached (it outlives the caller), and wait for its socket. */
async function startDaemon(home: string, env: Record<string, string>, deferMs = 0): Promise<void> {
  await mkdir(runDir(home), { recursive: true, mode: 0o700 });
  const logFile = await open(join(runDir(home), 'daemon.log'), 'a');
  // Always the compiled daemon (dist/ and src/ sit at the same depth below the repo root).
  const script = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'dist', 'restore', 'lazy', 'daemon.js');
  // STRATA_DAEMON_PROF=DIR: a CPU profile of the daemon, written to DIR when it exits.
  const prof = process.env.STRATA_DAEMON_PROF;
  const nodeArgs = prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : [];
  const argv = [process.execPath, ...nodeArgs, script, home];
  // deferMs: a shell that sleeps, then becomes the daemon: its Node boot (~0.1 s of CPU and cold
  // disk) comes after the first reads of the workspace just mounted, not during them.
  const [cmd, ...args] = deferMs > 0 ? ['/bin/sh', '-c', `sleep ${(deferMs / 1000).toFixed(3)}; exec "$@"`, 'sh', ...argv] : argv;
  // Not a fork of this process (sys.spawnDetached): its cost grows with the caller's memory.
  try {
    await sys.spawnDetached(cmd!, args, { stdoutFd: logFile.fd, stderrFd: logFile.fd }, envList({ ...process.env, ...env }));
  } finally {
    await logFile.close();
  }
}

/** When this process last started a daemon for a home: a second start within a second is skipped. */
const startedAt = new Map<string, number>();

async function startOnce(home: string, env: Record<string, string>, deferMs = 0): Promise<void> {
  if (Date.now() - (startedAt.get(home) ?? 0) <= 1000 + deferMs) return;
  startedAt.set(home, Date.now());
  await startDaemon(home, env, deferMs);
}

/** Is a daemon listening on this home's control socket? (One connect, no request.) */
export function listening(home: string): Promise<boolean> {
  return new Promise((res) => {
    const sock = connect(controlSocket(home));
    sock.once('connect', () => {
      sock.destroy();
      res(true);
    });
    sock.once('error', () => res(false));
  });
}

/**
 * Start the daemon now if none runs, without waiting for it: a lazy restore calls this first, so
 * the daemon's own start-up overlaps the manifest and index downloads.
 */
export async function ensureDaemon(home: string, env: Record<string, string> = {}, opts: { deferMs?: number } = {}): Promise<void> {
  if (!(await listening(home))) await startOnce(home, env, opts.deferMs ?? 0);
}

/** Send a request, starting the daemon first when `start` and nothing answers. */
export async function daemonRequest<R extends DaemonRequest>(
  home: string,
  msg: R,
  opts: { start?: boolean; timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<ReplyTo<R> | null> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const started = Date.now();
  const until = started + 15_000;
  for (;;) {
    let answer: ReplyTo<R> | undefined;
    try {
      answer = await request(home, msg, timeoutMs);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw err;
      if (!opts.start) return null;
      if (Date.now() > until) {
        throw new BackupRestoreError(`cannot reach the restore daemon: ${(err as Error).message} (log: ${join(runDir(home), 'daemon.log')})`, { cause: err });
      }
      // Start one; again if it has not answered within a second (it may have found a daemon
      // that was on its way out still holding the pid file, and left).
      await startOnce(home, opts.env ?? {});
    }
    if (answer && (answer.ok || answer.code !== 'EXITING')) return answer;
    // A daemon on its way out answered: once it is gone, start (or reach) the next one.
    if (answer && !opts.start) return null;
    // A daemon starting up listens ~0.1 s after it was spawned: ask again soon (a connect to a
    // missing socket costs microseconds), then less often.
    await new Promise((r) => setTimeout(r, Date.now() - started < 2000 ? 5 : 50));
  }
}
