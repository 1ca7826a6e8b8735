/** Talking to the restore daemon from the CLI or library: start it if needed, send one request. */
import { spawn } from 'node:child_process';
import { mkdir, open } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BackupRestoreError } from '../../errors.js';
import { controlSocket, runDir } from './daemon.js';

function request(home: string, msg: Record<string, unknown>, timeoutMs: number): Promise<Record<string, unknown>> {
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
        resolveReq(JSON.parse(buf) as Record<string, unknown>);
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
async function startDaemon(home: string, env: Record<string, string>): Promise<void> {
  await mkdir(runDir(home), { recursive: true, mode: 0o700 });
  const logFile = await open(join(runDir(home), 'daemon.log'), 'a');
  // Always the compiled daemon (dist/ and src/ sit at the same depth below the repo root).
  const script = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'dist', 'restore', 'lazy', 'daemon.js');
  // STRATA_DAEMON_PROF=DIR: a CPU profile of the daemon, written to DIR when it exits.
  const prof = process.env.STRATA_DAEMON_PROF;
  const nodeArgs = prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : [];
  const child = spawn(process.execPath, [...nodeArgs, script, home], { detached: true, stdio: ['ignore', logFile.fd, logFile.fd], env: { ...process.env, ...env } });
  child.unref();
  await logFile.close();
}

/** Send a request, starting the daemon first when `start` and nothing answers. */
export async function daemonRequest(
  home: string,
  msg: Record<string, unknown>,
  opts: { start?: boolean; timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<Record<string, unknown> | null> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const until = Date.now() + 15_000;
  let startedAt = 0;
  for (;;) {
    let answer: Record<string, unknown> | undefined;
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
      if (Date.now() - startedAt > 1000) {
        await startDaemon(home, opts.env ?? {});
        startedAt = Date.now();
      }
    }
    if (answer && answer.code !== 'EXITING') return answer;
    // A daemon on its way out answered: once it is gone, start (or reach) the next one.
    if (answer && !opts.start) return null;
    await new Promise((r) => setTimeout(r, 50));
  }
}
