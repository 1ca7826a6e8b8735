/** Helpers for workspace tests: a small base tree and clean-up of mounts. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, link, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sys } from '../../src/sys/native.js';
import { prng } from './fidelity.js';

export async function makeBaseTree(root: string): Promise<void> {
  await mkdir(join(root, 'dir1/sub/deep'), { recursive: true });
  await mkdir(join(root, 'dir2'), { recursive: true });
  await mkdir(join(root, 'empty'), { recursive: true });
  await writeFile(join(root, 'a.txt'), 'alpha\n');
  await writeFile(join(root, 'b.txt'), 'bravo\n');
  await writeFile(join(root, 'big.bin'), prng(11, 6 * 1024 * 1024));
  await writeFile(join(root, 'dir1/x'), 'x');
  await writeFile(join(root, 'dir1/y'), 'y');
  await writeFile(join(root, 'dir1/sub/z'), 'z');
  await writeFile(join(root, 'dir1/sub/deep/w'), 'w');
  await writeFile(join(root, 'dir2/k'), 'k');
  await symlink('a.txt', join(root, 'link'));
  await writeFile(join(root, 'hl1'), 'hard');
  await link(join(root, 'hl1'), join(root, 'hl2'));
  await writeFile(join(root, 'attrs'), 'xattrs');
  sys.lsetxattr(Buffer.from(join(root, 'attrs')), 'user.one', Buffer.from('1'));
  await writeFile(join(root, 'exec.sh'), '#!/bin/sh\n');
  await chmod(join(root, 'exec.sh'), 0o755);
}

/** Unmount every mount under a directory (deepest first); lazily if busy. */
export function unmountUnder(dir: string): void {
  const mps = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && (m === dir || m.startsWith(dir + '/')))
    .sort((a, b) => b.length - a.length);
  for (const m of mps) {
    try {
      execFileSync('umount', [m]);
    } catch {
      execFileSync('umount', ['-l', m]);
    }
  }
}
