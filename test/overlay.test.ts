/**
 * The workspace overlay mount (src/restore/overlay.ts): through the kernel's mount API from the
 * addon (no process spawned, each lower its own `lowerdir+` parameter, so no one-page option
 * limit), with mount(8) where the kernel lacks it; a refused mount says why and mounts nothing.
 */
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mountAt, MountError, mountOverlay, overlayOptions, unmount } from '../src/restore/overlay.js';
import { unmountPath } from '../src/restore/lazy/mount.js';
import { sys } from '../src/sys/native.js';
import { need } from './helpers/caps.js';
import { unmountUnder } from './helpers/workspace.js';

const ROOT = need('root');
let work: string;
let n = 0;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-overlay-'));
});
afterEach(() => {
  if (work) unmountUnder(work);
});
afterAll(async () => {
  if (work) {
    unmountUnder(work);
    await rm(work, { recursive: true, force: true });
  }
});

/** A case: `count` lower directories under short links l/<k> (as STRATA_HOME has them), top first. */
async function lowers(count: number, name = (k: number): string => `layer-${k}`): Promise<{ cwd: string; lowers: string[]; upper: string; work: string; target: string }> {
  const cwd = join(work, `case-${++n}`);
  await mkdir(join(cwd, 'l'), { recursive: true });
  const links: string[] = [];
  for (let k = 0; k < count; k++) {
    const dir = join(cwd, name(k));
    await mkdir(dir, { recursive: true });
    // Each lower holds its own file and a shared one the topmost must win.
    await writeFile(join(dir, `only-${k}.txt`), `layer ${k}\n`);
    await writeFile(join(dir, 'shared.txt'), `from layer ${k}\n`);
    await symlink(join('..', name(k)), join(cwd, 'l', String(k)));
    links.push(join('l', String(k)));
  }
  for (const d of ['upper', 'work', 'mnt']) await mkdir(join(cwd, d));
  return { cwd, lowers: links, upper: join(cwd, 'upper'), work: join(cwd, 'work'), target: join(cwd, 'mnt') };
}

const optionsOf = (target: string): string => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === target)?.split(' - ')[1]?.split(' ')[2] ?? '';

async function withEnv<T>(name: string, value: string, fn: () => Promise<T>): Promise<T> {
  const old = process.env[name];
  process.env[name] = value;
  try {
    return await fn();
  } finally {
    if (old === undefined) delete process.env[name];
    else process.env[name] = old;
  }
}

describe.runIf(ROOT)('overlay mounts', () => {
  it('mounts through the mount API: each lower its own parameter, the topmost wins, writes go to the upper', async () => {
    const spec = await lowers(3);
    await mountOverlay(spec);
    expect((await mountAt(spec.target))?.fstype).toBe('overlay');
    // The kernel shows one lowerdir+ per layer: the mount API made it, not mount(8)'s one string.
    expect(optionsOf(spec.target).match(/lowerdir\+=/g)?.length).toBe(3);
    expect(await readFile(join(spec.target, 'shared.txt'), 'utf8')).toBe('from layer 0\n');
    for (let k = 0; k < 3; k++) expect(await readFile(join(spec.target, `only-${k}.txt`), 'utf8')).toBe(`layer ${k}\n`);
    await writeFile(join(spec.target, 'new.txt'), 'written\n');
    expect(await readFile(join(spec.upper, 'new.txt'), 'utf8')).toBe('written\n');
    await unmount(spec.target);
    expect(await mountAt(spec.target)).toBeUndefined();
  });

  it('a chain whose mount(8) options would pass the one-page limit still mounts', async () => {
    // 40 lowers named by ~170-byte absolute paths: ~7 KiB, over the 4 KiB mount(8) can pass.
    const name = (k: number): string => `layer-${k}-${'x'.repeat(110)}`;
    const spec = await lowers(40, name);
    const long = [...Array(40).keys()].map((k) => join(spec.cwd, name(k)));
    expect(() => overlayOptions({ ...spec, lowers: long })).toThrow(MountError);
    await mountOverlay({ ...spec, lowers: long });
    expect(optionsOf(spec.target).match(/lowerdir\+=/g)?.length).toBe(40);
    expect(await readFile(join(spec.target, 'only-39.txt'), 'utf8')).toBe('layer 39\n');
    expect(await readFile(join(spec.target, 'shared.txt'), 'utf8')).toBe('from layer 0\n');
  });

  it('with STRATA_MOUNT_API=0 (a kernel without it) mount(8) mounts the same, from short relative links', async () => {
    const spec = await lowers(2);
    await withEnv('STRATA_MOUNT_API', '0', () => mountOverlay(spec));
    expect(optionsOf(spec.target)).toMatch(/lowerdir=l\/0:l\/1,/);
    expect(await readFile(join(spec.target, 'shared.txt'), 'utf8')).toBe('from layer 0\n');
  });

  it('a refused mount is a MountError that says what the kernel refused, and nothing is mounted', async () => {
    const spec = await lowers(2);
    await rm(join(spec.cwd, 'layer-1'), { recursive: true });
    const err = await mountOverlay(spec).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MountError);
    expect((err as MountError).code).toBe('MOUNT_FAILED');
    expect((err as Error).message).toMatch(new RegExp(`cannot mount the workspace overlay on ${spec.target}: ENOENT.*lowerdir\\+`));
    expect(await mountAt(spec.target)).toBeUndefined();
  });

  it('unmounts with umount2 (no umount(8)): busy is a MountError that names it and leaves the mount; lazy detaches it; a mount point that is not one is refused', async () => {
    const spec = await lowers(1);
    await mountOverlay(spec);
    const held = await open(join(spec.target, 'shared.txt'), 'r');
    try {
      const err = await unmount(spec.target).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(MountError);
      expect((err as Error).message).toMatch(new RegExp(`cannot unmount ${spec.target}: EBUSY.*umount2.*is a process using it`));
      expect((await mountAt(spec.target))?.fstype, 'a busy mount stays').toBe('overlay');
      await unmount(spec.target, { lazy: true });
      expect(await mountAt(spec.target), 'detached at once, though a file is open').toBeUndefined();
      expect(await held.readFile('utf8'), 'the open file still reads').toBe('from layer 0\n');
    } finally {
      await held.close();
    }
    const notMounted = await unmount(spec.target).catch((e: unknown) => e);
    expect((notMounted as Error).message).toMatch(/EINVAL/);
    const missing = await sys.unmountFs(Buffer.from(join(spec.cwd, 'no-such-dir')), false).catch((e: NodeJS.ErrnoException) => e);
    expect((missing as NodeJS.ErrnoException).code).toBe('ENOENT');
  });

  it('umount2 does not follow a symlink planted at the target; unmountPath unmounts, lazily when busy', async () => {
    const spec = await lowers(1);
    await mountOverlay(spec);
    const link = join(spec.cwd, 'link-to-mnt');
    await symlink(spec.target, link);
    const err = await sys.unmountFs(Buffer.from(link), false).catch((e: NodeJS.ErrnoException) => e);
    expect((err as NodeJS.ErrnoException).code).toBe('EINVAL');
    expect((await mountAt(spec.target))?.fstype, 'the mount behind the link stays').toBe('overlay');
    const held = await open(join(spec.target, 'shared.txt'), 'r');
    try {
      expect(await unmountPath(spec.target)).toBe(true);
      expect(await mountAt(spec.target)).toBeUndefined();
    } finally {
      await held.close();
    }
    expect(await unmountPath(spec.target), 'nothing left to unmount').toBe(false);
  });
});
