/**
 * Tests that run the compiled library (dist/: the CLI, child processes, the lazy restore daemon)
 * check that it is there and current; they do not build it. `make test` builds once before
 * vitest, and a tsc run inside a test file rewrites dist/*.js while the other vitest worker may be
 * loading them in a child process or the daemon (a truncated module, a SyntaxError in an
 * unrelated test), besides costing a CPU-heavy compile per file.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..', '..');

function tsFiles(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) tsFiles(p, out);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** Throws unless every .ts under src/ has its .js under dist/, written no earlier than the source. */
export function assertBuilt(): void {
  const src = join(ROOT, 'src');
  const dist = join(ROOT, 'dist');
  const stale: string[] = [];
  for (const ts of tsFiles(src)) {
    const js = join(dist, relative(src, ts)).replace(/\.ts$/, '.js');
    if (!existsSync(js)) stale.push(`${relative(ROOT, js)} missing`);
    else if (statSync(js).mtimeMs < statSync(ts).mtimeMs) stale.push(`${relative(ROOT, js)} older than ${relative(ROOT, ts)}`);
  }
  if (stale.length > 0) {
    throw new Error(`dist/ is not built from the current src/ (${stale.slice(0, 5).join('; ')}${stale.length > 5 ? `; and ${stale.length - 5} more` : ''}): run make build before these tests (make test does)`);
  }
}
