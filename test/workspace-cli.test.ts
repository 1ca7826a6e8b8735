/**
 * Workspaces through the CLI: restore makes a workspace (as root), backup of it is incremental,
 * status shows it, restore refuses to drop unsaved changes, unmount keeps them, restore of the
 * same backup brings them back, unmount --discard drops the workspace.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertBuilt } from './helpers/built.js';
import { need } from './helpers/caps.js';
import { unmountUnder } from './helpers/workspace.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const BIN = join(ROOT, 'bin', 'strata.js');
let work: string;

function strata(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, STRATA_HOME: join(work, 'home') };
    delete env.STRATA_STORE;
    const child = spawn(process.execPath, [BIN, ...args], { cwd: work, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
async function ok(args: string[]): Promise<string> {
  const r = await strata(args);
  expect(r.code, `strata ${args.join(' ')}\n${r.stdout}\n${r.stderr}`).toBe(0);
  return r.stdout;
}

beforeAll(async () => {
  assertBuilt(); // the CLI runs from dist/ (make build)
  work = await mkdtemp(join(tmpdir(), 'strata-wscli-'));
});
afterAll(async () => {
  if (work) {
    unmountUnder(work);
    // The lazy daemon (the default mode as root) may still write into its home for a few seconds
    // after the last unmount: retry the removal (ENOTEMPTY) for up to ~10 s.
    await rm(work, { recursive: true, force: true, maxRetries: 8, retryDelay: 250 });
  }
});

describe.runIf(need('root'))('workspace commands', () => {
  it('restore, status, incremental backup, refusal, unmount, recover, discard', async () => {
    const src = join(work, 'src');
    await mkdir(join(src, 'pkg'), { recursive: true });
    await writeFile(join(src, 'pkg/index.js'), 'module.exports = 1;\n');
    const h0 = JSON.parse(await ok(['backup', src, '--name', 'app'])) as { id: string };
    const ws = join(work, 'ws');
    expect(await ok(['restore', 'app', ws])).toMatch(/\((lazy|extract) workspace, 1 layer\(s\)\)/);
    let st = JSON.parse(await ok(['status', ws, '--json'])) as Array<Record<string, unknown>>;
    expect(st[0]).toMatchObject({ dir: ws, backupId: h0.id, mounted: true, unsavedEntries: 0, layers: 1 });

    await writeFile(join(ws, 'pkg/new.js'), 'new\n');
    const h1 = JSON.parse(await ok(['backup', ws])) as { id: string };
    const info = JSON.parse(await ok(['inspect', h1.id, '--json'])) as { layers: unknown[]; parent: string };
    expect(info.layers).toHaveLength(2);
    expect(info.parent).toBe(h0.id);
    expect(await ok(['status'])).toMatch(/yes\s+\S+.*\s0 entries/);

    await writeFile(join(ws, 'unsaved.txt'), 'not backed up');
    const refused = await strata(['restore', h0.id, ws]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/UNSAVED_CHANGES/);
    expect(await readFile(join(ws, 'unsaved.txt'), 'utf8')).toBe('not backed up');

    expect(await ok(['unmount', ws])).toMatch(/unsaved changes kept/);
    st = JSON.parse(await ok(['status', ws, '--json'])) as Array<Record<string, unknown>>;
    expect(st[0]).toMatchObject({ mounted: false });
    expect(await ok(['restore', h1.id, ws])).toMatch(/^recovered workspace/);
    expect(await readFile(join(ws, 'unsaved.txt'), 'utf8')).toBe('not backed up');

    expect(await ok(['unmount', ws, '--discard'])).toMatch(/discarded/);
    const gone = await strata(['status', ws]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/WORKSPACE_NOT_FOUND/);
    expect((await strata(['unmount', '--help'])).code).toBe(0);
    expect((await strata(['status', '--help'])).code).toBe(0);
  });
});
