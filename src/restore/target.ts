/**
 * Replacing a restore target, the one place it is done (copy restores and workspaces both): the
 * target must be absent or empty unless forced; a forced target's old content is moved aside
 * first, put back if the new content fails to land, and deleted only once it has.
 */
import { randomBytes } from 'node:crypto';
import { lstat, readdir, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { TargetNotEmptyError } from '../errors.js';
import { sys } from '../sys/native.js';

export type TargetState = 'absent' | 'empty' | 'replace';

/** What is at the target now; refuses a non-empty one (or a non-directory) unless force. */
export async function checkTarget(target: string, force: boolean): Promise<TargetState> {
  let st;
  try {
    st = await lstat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
    throw err;
  }
  if (!st.isDirectory()) {
    if (!force) throw new TargetNotEmptyError(`restore target ${target} exists and is not a directory; remove it or pass --force`);
    return 'replace';
  }
  if ((await readdir(target)).length === 0) return 'empty';
  if (!force) throw new TargetNotEmptyError(`restore target ${target} is not empty; restore elsewhere, empty it, or pass --force to replace it`);
  return 'replace';
}

/** A hidden name beside the target, for staging or for the old content. */
export function besideTarget(target: string, tag: string): string {
  return join(dirname(target), `.${basename(target)}.strata-${tag}${randomBytes(6).toString('hex')}`);
}

/**
 * Put new content at target with `install` (a rename into place, or a mount on it). With state
 * 'replace' the old content is moved aside before and removed after; if install throws, it must
 * leave nothing mounted at target: the target is cleared and the old content put back.
 */
export async function swapInto(target: string, state: TargetState, install: () => Promise<void>): Promise<void> {
  let aside: string | undefined;
  if (state === 'replace') {
    aside = besideTarget(target, 'old-');
    sys.renameNoReplace(Buffer.from(target), Buffer.from(aside));
  }
  try {
    await install();
  } catch (err) {
    if (aside) {
      await rm(target, { recursive: true, force: true }).catch(() => undefined);
      sys.renameNoReplace(Buffer.from(aside), Buffer.from(target));
    }
    throw err;
  }
  if (aside) await rm(aside, { recursive: true, force: true });
}
