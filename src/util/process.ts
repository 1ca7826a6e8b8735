import { Socket } from 'node:net';

/** True when a process with this pid exists (EPERM: it exists, owned by someone else). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** An environment as sys.spawnDetached takes it: NAME=value entries. */
export function envList(env: NodeJS.ProcessEnv): string[] {
  return Object.entries(env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
}

/**
 * A program started by sys.spawnDetached that reports on its readiness pipe (fd 3): "pid N" when
 * it starts, "ready" once it serves. Resolves with its pid once ready, or with why not (the pipe
 * closed first: it died; or the time ran out), and the pid if it said one.
 */
export function readyReport(readyFd: number, timeoutMs: number): Promise<{ pid?: number; error?: string }> {
  return new Promise((resolveReady) => {
    const pipe = new Socket({ fd: readyFd, readable: true, writable: false });
    let got = '';
    let pid: number | undefined;
    const done = (error?: string): void => {
      clearTimeout(t);
      pipe.destroy();
      resolveReady({ ...(pid !== undefined ? { pid } : {}), ...(error !== undefined ? { error } : {}) });
    };
    const t = setTimeout(() => done(`not ready after ${timeoutMs} ms`), timeoutMs);
    pipe.on('data', (b: Buffer) => {
      got += b.toString('latin1');
      const m = /^pid (\d+)$/m.exec(got);
      if (m) pid = Number(m[1]);
      if (/^ready$/m.test(got)) done(pid === undefined ? 'it said ready but not its pid' : undefined);
    });
    pipe.on('end', () => done('it exited before it was ready'));
    pipe.on('error', (err) => done(err.message));
  });
}
