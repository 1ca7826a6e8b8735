/**
 * Capabilities some tests need (root, FUSE, overlay). A test may skip only where the capability is
 * missing AND CI is unset; under CI a missing capability fails the run instead of hiding it.
 */
import { existsSync } from 'node:fs';

export const IS_ROOT = process.getuid?.() === 0;
export const IN_CI = !!process.env.CI;

/** True when the test should run; under CI, throws when the capability is missing. */
export function need(capability: 'root' | 'fuse', present = capability === 'root' ? IS_ROOT : existsSync('/dev/fuse')): boolean {
  if (present) return true;
  if (IN_CI) throw new Error(`CI=true but this machine lacks ${capability}; the test cannot be skipped under CI`);
  return false;
}
