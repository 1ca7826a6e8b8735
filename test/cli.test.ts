/**
 * The `strata` command as a user runs it: the real bin/strata.js (over the compiled dist/) as a child
 * process, with STRATA_HOME in a temp dir. Exit codes: 0 ok, 1 failure, 2 usage error.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupHandle, BackupInfo, GcReport, RestoreResult } from '../src/index.js';
import { assertBuilt } from './helpers/built.js';
import { diffTrees, summarize } from './helpers/tree.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const BIN = join(ROOT, 'bin', 'strata.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let work: string;
let home: string;
let src: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Environment for the CLI: STRATA_HOME set, no STRATA_STORE unless given. */
function cliEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, STRATA_HOME: home, ...extra };
  if (!('STRATA_STORE' in extra)) delete env.STRATA_STORE;
  return env;
}

/** Run `node bin/strata.js ARGS` to completion; stdin gets `input` (or nothing, closed). */
function strata(args: string[], opts: { input?: string; env?: Record<string, string>; cwd?: string } = {}): Promise<Run> {
  // These tests are about the catalog: restores write plain copies (workspaces: workspace-cli.test.ts).
  if (args[0] === 'restore' && !args.includes('--mode') && !args.includes('--help')) args = [...args, '--mode', 'copy'];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? work, env: cliEnv(opts.env), stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(opts.input ?? '');
  });
}

/** Assert exit 0 and return stdout. */
async function ok(args: string[], opts?: Parameters<typeof strata>[1]): Promise<string> {
  const r = await strata(args, opts);
  expect(r.code, `strata ${args.join(' ')}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(0);
  return r.stdout;
}

async function makeTree(root: string, seed: string): Promise<string> {
  await mkdir(join(root, 'sub'), { recursive: true });
  await writeFile(join(root, 'hello.txt'), `hello from ${seed}\n`);
  await writeFile(join(root, 'sub/data.txt'), `data ${seed}\n`.repeat(1000));
  await symlink('hello.txt', join(root, 'link'));
  return root;
}

const NO_SUCH_ID = '0190aaaa-0000-7000-8000-000000000000';

beforeAll(async () => {
  // The CLI runs from dist/, which make build (and make test) compiles: check it is current.
  assertBuilt();
  work = await mkdtemp(join(tmpdir(), 'strata-cli-'));
  home = join(work, 'home');
  src = await makeTree(join(work, 'src'), 'cli');
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('strata CLI', () => {
  let handle: BackupHandle;

  it('backup prints the handle as JSON and exits 0', async () => {
    const out = await ok(['backup', src, '--name', 'proj']);
    handle = JSON.parse(out) as BackupHandle;
    expect(handle.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(handle.dir).toBe(src);
    expect(handle.name).toBe('proj');
    expect(handle.manifestDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(Date.parse(handle.expiresAt!) - Date.parse(handle.createdAt)).toBe(3 * 86400 * 1000);
    // The default store lives under STRATA_HOME.
    expect(existsSync(join(home, 'store', 'manifests', `${handle.id}.json`))).toBe(true);

    // A relative DIR is resolved against the working directory; --ttl never / --ttl 2h.
    const rel = JSON.parse(await ok(['backup', 'src', '--ttl', 'never'])) as BackupHandle;
    expect(rel.dir).toBe(src);
    expect(rel.expiresAt).toBeNull();
    const two = JSON.parse(await ok(['backup', src, '--ttl=2h'])) as BackupHandle;
    expect(Date.parse(two.expiresAt!) - Date.parse(two.createdAt)).toBe(2 * 3600 * 1000);
  });

  it('restores from a handle file, from stdin, by id and by name', async () => {
    const before = await summarize(src);
    const handleFile = join(work, 'handle.json');
    await writeFile(handleFile, JSON.stringify(handle, null, 2));

    const d1 = join(work, 'r-file');
    expect(await ok(['restore', handleFile, d1])).toMatch(new RegExp(`^restored ${handle.id} into ${d1}: `));
    expect(diffTrees(before, await summarize(d1))).toEqual([]);

    const d2 = join(work, 'r-stdin');
    await ok(['restore', '-', d2], { input: JSON.stringify(handle) });
    expect(diffTrees(before, await summarize(d2))).toEqual([]);

    const d3 = join(work, 'r-id');
    const r3 = JSON.parse(await ok(['restore', handle.id, d3, '--json'])) as RestoreResult;
    expect(r3).toMatchObject({ success: true, id: handle.id, dir: d3 });
    expect(diffTrees(before, await summarize(d3))).toEqual([]);

    const d4 = join(work, 'r-name');
    const r4 = JSON.parse(await ok(['restore', 'proj', d4, '--json'])) as RestoreResult;
    expect(r4.id).toBe(handle.id);
    expect(await readFile(join(d4, 'hello.txt'), 'utf8')).toBe('hello from cli\n');

    // A relative target resolves against the working directory.
    await ok(['restore', handle.id, 'r-rel']);
    expect(diffTrees(before, await summarize(join(work, 'r-rel')))).toEqual([]);

    // Garbage on stdin is a usage error, not a crash.
    const bad = await strata(['restore', '-', join(work, 'r-bad')], { input: 'not json' });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('usage');
  });

  it('list prints a table, --json parses, --name filters', async () => {
    const table = await ok(['list']);
    const lines = table.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID\s+NAME\s+CREATED\s+EXPIRES\s+LAYERS\s+SIZE\s+DIR$/);
    expect(lines).toHaveLength(4); // header + three backups
    expect(table).toContain(handle.id);
    expect(lines.find((l) => l.startsWith(handle.id))).toMatch(/\sproj\s/);

    const rows = JSON.parse(await ok(['list', '--json'])) as BackupInfo[];
    expect(rows).toHaveLength(3);
    expect(rows[rows.length - 1]!.id).toBe(handle.id); // newest first: the first backup is last
    for (let i = 1; i < rows.length; i++) expect(rows[i - 1]!.createdAt >= rows[i]!.createdAt).toBe(true);
    const named = JSON.parse(await ok(['list', '--name', 'proj', '--json'])) as BackupInfo[];
    expect(named.map((r) => r.id)).toEqual([handle.id]);
    expect(await ok(['list', '--name', 'nothing-by-this-name'])).toBe('no backups\n');
  });

  it('inspect shows a backup; --json parses', async () => {
    const text = await ok(['inspect', handle.id]);
    expect(text).toContain(`id:        ${handle.id}`);
    expect(text).toContain('name:      proj');
    expect(text).toContain(`manifest:  ${handle.manifestDigest}`);
    expect(text).toMatch(/layers:\s+1, /);
    const info = JSON.parse(await ok(['inspect', handle.id, '--json'])) as BackupInfo;
    expect(info).toMatchObject({ ...handle, expired: false });
    expect(info.layers).toHaveLength(1);
    expect(info.size).toBeGreaterThan(0);
    // The restore index: named with its digest and sizes, never dumped (inline ones are base64).
    expect(info.index).toMatchObject({ digest: expect.stringMatching(/^sha256:[0-9a-f]{64}$/), inline: expect.any(Boolean) });
    expect(info.index!.rawSize).toBeGreaterThan(info.index!.size);
    expect(text).toContain(`index:     ${info.index!.digest} `);
  });

  it('delete removes a backup; a missing id exits 1 with BACKUP_NOT_FOUND', async () => {
    const victim = JSON.parse(await ok(['backup', src])) as BackupHandle;
    expect(await ok(['delete', victim.id])).toBe(`deleted ${victim.id}\n`);
    for (const args of [
      ['inspect', victim.id],
      ['delete', victim.id],
      ['inspect', NO_SUCH_ID],
      ['restore', NO_SUCH_ID, join(work, 'r-missing')],
      ['restore', 'no-such-name', join(work, 'r-missing')],
    ]) {
      const r = await strata(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toContain('BACKUP_NOT_FOUND');
      expect(r.stdout).toBe('');
    }
    expect(existsSync(join(work, 'r-missing'))).toBe(false);
  });

  it('restoring into a non-empty directory exits 1 with TARGET_NOT_EMPTY and leaves it alone', async () => {
    const d = join(work, 'occupied');
    await mkdir(d);
    await writeFile(join(d, 'keep.txt'), 'mine');
    const r = await strata(['restore', handle.id, d]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('TARGET_NOT_EMPTY');
    expect(await readdir(d)).toEqual(['keep.txt']);
    expect(await readFile(join(d, 'keep.txt'), 'utf8')).toBe('mine');
    // --force replaces it.
    await ok(['restore', handle.id, d, '--force']);
    expect(diffTrees(await summarize(src), await summarize(d))).toEqual([]);
  });

  it('gc --dry-run reports without deleting; gc --json collects', async () => {
    const gsrc = await makeTree(join(work, 'gc-src'), 'gc');
    const doomed = JSON.parse(await ok(['backup', gsrc, '--ttl', '1s'])) as BackupHandle;
    const blob = `blobs/sha256/${(JSON.parse(await ok(['inspect', doomed.id, '--json'])) as BackupInfo).layers[0]!.digest.slice(7)}`;
    // Past its expiry and past a one-second grace (gc --grace takes whole durations, the least is 1s).
    await sleep(Math.max(0, Date.parse(doomed.expiresAt!) - Date.now()) + 1300);

    const dry = await ok(['gc', '--dry-run', '--grace', '1s']);
    expect(dry).toContain(`would delete expired backup ${doomed.id}`);
    expect(dry).toContain(`would delete ${blob}`);
    expect(dry).toMatch(/would delete 1 backup\(s\) and 1 blob\(s\)/);
    expect(existsSync(join(home, 'store', ...blob.split('/')))).toBe(true);
    expect((JSON.parse(await ok(['inspect', doomed.id, '--json'])) as BackupInfo).expired).toBe(true);
    // The default grace (1h) protects the fresh blob.
    const graced = JSON.parse(await ok(['gc', '--dry-run', '--json'])) as GcReport;
    expect(graced).toMatchObject({ dryRun: true, expiredManifests: [doomed.id], deletedBlobs: [] });

    const report = JSON.parse(await ok(['gc', '--json', '--grace', '1s'])) as GcReport;
    expect(report.dryRun).toBe(false);
    expect(report.expiredManifests).toEqual([doomed.id]);
    expect(report.deletedBlobs.map((b) => b.key)).toEqual([blob]);
    expect(report.freedBytes).toBeGreaterThan(0);
    expect(report.keptBlobs).toBe(1); // the src blob, shared by every other backup
    expect(existsSync(join(home, 'store', ...blob.split('/')))).toBe(false);
    const gone = await strata(['inspect', doomed.id]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain('BACKUP_NOT_FOUND');
    // The live backups still restore.
    await ok(['restore', handle.id, join(work, 'r-after-gc')]);
    expect(await ok(['gc'])).toMatch(/^deleted 0 backup\(s\) and 0 blob\(s\), 0 B; kept 1 blob\(s\)\n$/);
  });

  it('--help on every command exits 0 and prints usage', async () => {
    const main = await ok(['--help']);
    expect(main).toContain('Usage: strata <command>');
    for (const c of ['backup', 'restore', 'list', 'inspect', 'delete', 'gc']) expect(main).toContain(`  ${c}`);
    expect(await ok(['-h'])).toBe(main);
    for (const c of ['backup', 'restore', 'list', 'inspect', 'delete', 'gc']) {
      const out = await ok([c, '--help']);
      expect(out, c).toMatch(new RegExp(`^Usage: strata ${c}\\b`));
      // --help wins over missing or extra arguments.
      expect(await ok([c, 'x', 'y', 'z', '-h'])).toBe(out);
      expect(await ok(['help', c])).toBe(out);
    }
    expect(await ok(['--version'])).toMatch(/^strata \d+\.\d+\.\d+\n$/);
  });

  it('usage errors exit 2 with usage on stderr', async () => {
    const cases: string[][] = [
      [], // no command: prints help, exit 2
      ['frobnicate'],
      ['main'],
      ['list', '--bogus'],
      ['list', '-x'],
      ['list', 'extra'],
      ['backup'],
      ['inspect'],
      ['delete'],
      ['restore'],
      ['restore', 'a', 'b', 'c'],
      ['backup', src, '--ttl'],
      ['backup', src, '--ttl', '0'],
      ['backup', src, '--ttl', 'abc'],
      ['backup', src, '--ttl', '-5s'],
      ['backup', src, '--ttl', '3y'],
      ['gc', '--grace', 'soon'],
      ['gc', '--dry-run=yes'],
      ['restore', handle.id, join(work, 'r-mode'), '--mode', 'mount'],
      ['restore', join(work, 'no-such-handle.json'), join(work, 'r-nofile')],
    ];
    for (const args of cases) {
      const r = await strata(args);
      expect(r.code, `strata ${args.join(' ')}: ${r.stderr}`).toBe(2);
      if (args.length === 0) expect(r.stdout).toContain('Usage');
      else expect(r.stderr, args.join(' ')).toMatch(/usage/i);
    }
    expect(existsSync(join(work, 'r-mode'))).toBe(false);
    // Nothing was backed up by the failed backups.
    expect((JSON.parse(await ok(['list', '--json'])) as BackupInfo[]).every((b) => b.dir === src)).toBe(true);
  });

  it('other failures exit 1 with the error code on stderr', async () => {
    const r = await strata(['backup', join(work, 'no-such-dir')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('INVALID_BACKUP_CONFIG');
    const s = await strata(['list', '--store', 'ftp://nowhere/x']);
    expect(s.code).toBe(1);
    expect(s.stderr).toContain('INVALID_BACKUP_CONFIG');
  });

  it('--store overrides STRATA_STORE, which overrides the store under STRATA_HOME', async () => {
    const storeA = join(work, 'store-a');
    const storeB = join(work, 'store-b');
    const env = { STRATA_STORE: pathToFileURL(storeA).href };
    const inB = JSON.parse(await ok(['backup', src, '--store', pathToFileURL(storeB).href], { env })) as BackupHandle;
    expect(existsSync(join(storeB, 'manifests', `${inB.id}.json`))).toBe(true);
    expect(existsSync(join(storeA, 'manifests'))).toBe(false);
    expect(existsSync(join(home, 'store', 'manifests', `${inB.id}.json`))).toBe(false);

    const inA = JSON.parse(await ok(['backup', src], { env })) as BackupHandle;
    expect(existsSync(join(storeA, 'manifests', `${inA.id}.json`))).toBe(true);

    const ids = async (args: string[], e?: Record<string, string>) =>
      (JSON.parse(await ok(['list', '--json', ...args], e ? { env: e } : {})) as BackupInfo[]).map((b) => b.id);
    expect(await ids([], env)).toEqual([inA.id]);
    expect(await ids(['--store', pathToFileURL(storeB).href], env)).toEqual([inB.id]);
    expect(await ids([`--store=${storeB}`], env)).toEqual([inB.id]); // a bare absolute path works too
    expect(await ids([])).not.toContain(inA.id);
    expect(await ids([])).not.toContain(inB.id);
    // Restore by id from the overriding store.
    await ok(['restore', inB.id, join(work, 'r-store-b'), '--store', pathToFileURL(storeB).href], { env });
    const miss = await strata(['restore', inB.id, join(work, 'r-store-a')], { env });
    expect(miss.code).toBe(1);
    expect(miss.stderr).toContain('BACKUP_NOT_FOUND');
  });

  it('`npx strata --help` from the repo root runs the package’s own bin', async () => {
    // npm_config_yes=false: if npx did not resolve the local bin it must fail, never fetch a registry package.
    const r = await promisify(execFile)('npx', ['strata', '--help'], {
      cwd: ROOT,
      env: { ...cliEnv(), npm_config_yes: 'false' },
      timeout: 120_000,
    });
    expect(r.stdout).toContain('strata: point-in-time backups');
    expect(r.stdout).toContain('Usage: strata <command>');
    const b = await promisify(execFile)('npx', ['strata', 'backup', '--help'], { cwd: ROOT, env: { ...cliEnv(), npm_config_yes: 'false' }, timeout: 120_000 });
    expect(b.stdout).toMatch(/^Usage: strata backup/);
  });
});
