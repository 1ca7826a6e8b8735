/**
 * Kernel overlay mounts: the workspace's writable upper over read-only layer directories.
 *
 * Mounted with the kernel's mount API from the addon (sys.mountFs: one `lowerdir+` parameter per
 * layer, kernel 6.8+): no process is spawned, so the mount costs well under a millisecond
 * whatever the caller's size (forking mount(8) from a 1 GB process costs 10-30 ms).
 *
 * Older kernels get mount(8), whose option string is limited to one page (4096 bytes). Lower
 * directories are therefore named by short relative links (`l/<12 hex>` under STRATA_HOME, as
 * Docker's overlay2 does) and the mount runs with STRATA_HOME as its working directory; with ~15
 * bytes a layer, a chain of MAX_CHAIN layers fits with room to spare (chains longer than that
 * are merged at backup time).
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { StrataError } from '../errors.js';
import { sys } from '../sys/native.js';

const run = promisify(execFile);

export class MountError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MOUNT_FAILED', message, options);
  }
}

export interface MountInfo {
  mountpoint: string;
  fstype: string;
  source: string;
  options: string;
}

/** Undo /proc/self/mountinfo's octal escapes (\040 for space, ...). */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export async function mounts(): Promise<MountInfo[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const l = left.split(' ');
    const r = right.split(' ');
    out.push({ mountpoint: unescape(l[4]!), fstype: r[0]!, source: unescape(r[1] ?? ''), options: r[2] ?? '' });
  }
  return out;
}

/** The topmost mount at exactly this path, if any. */
export async function mountAt(path: string): Promise<MountInfo | undefined> {
  const all = (await mounts()).filter((m) => m.mountpoint === path);
  return all[all.length - 1];
}

export interface OverlaySpec {
  /** Lower directories, TOP FIRST, as paths relative to cwd (short links) or absolute. */
  lowers: string[];
  upper: string;
  work: string;
  target: string;
  /** Directory the relative lower paths resolve against. */
  cwd: string;
}

export function overlayOptions(spec: OverlaySpec): string {
  // redirect_dir=on: renaming a directory that comes from a lower layer works (no EXDEV); the
  // upper records it as trusted.overlay.redirect, which backup turns into the directory's content.
  // index=off, metacopy=off: copy-up is a full copy, so the upper always holds whole files.
  const opts = `lowerdir=${spec.lowers.join(':')},upperdir=${spec.upper},workdir=${spec.work},redirect_dir=on,index=off,metacopy=off`;
  if (opts.length > 4000) throw new MountError(`overlay options are ${opts.length} bytes, over the 4 KiB page limit; the layer chain is too long`);
  return opts;
}

/** The overlay's parameters for the mount API: each lower on its own, absolute. */
export function overlayParams(spec: OverlaySpec): Array<[string, string]> {
  return [
    ...spec.lowers.map((l): [string, string] => ['lowerdir+', resolve(spec.cwd, l)]),
    ['upperdir', resolve(spec.cwd, spec.upper)],
    ['workdir', resolve(spec.cwd, spec.work)],
    ['redirect_dir', 'on'],
    ['index', 'off'],
    ['metacopy', 'off'],
  ];
}

/** Set STRATA_MOUNT_API=0 to mount with mount(8) only (as on a kernel without the mount API). */
const useMountApi = (): boolean => process.env.STRATA_MOUNT_API !== '0';

export async function mountOverlay(spec: OverlaySpec): Promise<void> {
  if (useMountApi()) {
    try {
      await sys.mountFs('overlay', 'strata', Buffer.from(resolve(spec.cwd, spec.target)), overlayParams(spec));
      return;
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { parameter?: string };
      // No mount API (before 5.2), or an overlay without `lowerdir+` (before 6.8): mount(8).
      const older = e.code === 'ENOSYS' || (e.code === 'EINVAL' && e.parameter === 'lowerdir+');
      if (!older) throw new MountError(`cannot mount the workspace overlay on ${spec.target}: ${e.message} (overlay needs root and a kernel with overlayfs)`, { cause: err });
    }
  }
  const opts = overlayOptions(spec);
  try {
    await run('mount', ['-t', 'overlay', 'strata', '-o', opts, spec.target], { cwd: spec.cwd });
  } catch (err) {
    const msg = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
    throw new MountError(`cannot mount the workspace overlay on ${spec.target}: ${msg} (overlay needs root and a kernel with overlayfs)`, { cause: err });
  }
}

export async function unmount(target: string, opts: { lazy?: boolean } = {}): Promise<void> {
  try {
    // umount2 as root (no fork of this process, as with mountFs); umount(8) otherwise or with
    // STRATA_MOUNT_API=0.
    if (useMountApi() && process.getuid?.() === 0) await sys.unmountFs(Buffer.from(resolve(target)), !!opts.lazy);
    else await run('umount', opts.lazy ? ['-l', target] : [target]);
  } catch (err) {
    const msg = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
    throw new MountError(`cannot unmount ${target}: ${msg}${opts.lazy ? '' : ' (is a process using it? stop it, or unmount lazily)'}`, { cause: err });
  }
}
