/**
 * A tree holding every case a restore must keep (issue 2, section 6): contents; modes with setuid,
 * setgid and sticky; owners; nanosecond mtimes; symlinks (dangling too); hard links; xattrs; empty
 * directories; fifos; device nodes; sparse files; names with any bytes; long paths; files over
 * 8 GiB; empty files.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile, symlink, link, chmod, lchown, open, truncate } from 'node:fs/promises';
import { constants as C } from 'node:fs';
import { sys } from '../../src/sys/native.js';
import { IS_ROOT } from './caps.js';

const b = (root: string, rel: string | Buffer): Buffer => Buffer.concat([Buffer.from(root + '/'), Buffer.isBuffer(rel) ? rel : Buffer.from(rel)]);

/** Deterministic pseudo-random bytes (xorshift), so trees are reproducible without storing them. */
export function prng(seed: number, n: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  let x = seed | 0 || 1;
  for (let i = 0; i < n; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x, i <= n - 4 ? i : n - 4);
  }
  return out;
}

export interface FidelityOptions {
  /** Size of the dense big file; past 8 GiB to cross tar's size field. 0 leaves it out. */
  bigFileSize?: number;
}

export async function makeFidelityTree(root: string, opts: FidelityOptions = {}): Promise<void> {
  await mkdir(root, { recursive: true });
  // Contents: text, multi-chunk binary (crosses the 4 MiB chunk size), empty file.
  await writeFile(b(root, 'hello.txt'), 'hello, world\n');
  await writeFile(b(root, 'empty'), '');
  await mkdir(b(root, 'data'));
  await writeFile(b(root, 'data/random.bin'), randomBytes(9 * 1024 * 1024 + 123));
  await writeFile(b(root, 'data/pattern.bin'), prng(7, 4 * 1024 * 1024));

  // Modes.
  await writeFile(b(root, 'setuid'), '#!/bin/sh\n');
  await chmod(b(root, 'setuid'), 0o4755);
  await writeFile(b(root, 'setgid-file'), 'x');
  await chmod(b(root, 'setgid-file'), 0o2711);
  await mkdir(b(root, 'setgid-dir'));
  await chmod(b(root, 'setgid-dir'), 0o2775);
  await mkdir(b(root, 'sticky'));
  await chmod(b(root, 'sticky'), 0o1777);
  await writeFile(b(root, 'private'), 'secret');
  await chmod(b(root, 'private'), 0o600);
  await writeFile(b(root, 'no-perms'), 'locked');
  await chmod(b(root, 'no-perms'), 0o000);
  await mkdir(b(root, 'locked-dir'));
  await writeFile(b(root, 'locked-dir/inside'), 'in a dir with mode 0500');
  await chmod(b(root, 'locked-dir'), 0o500);

  // Owners (root only: others cannot give files away).
  if (IS_ROOT) {
    await writeFile(b(root, 'owned'), 'owned by 1234:5678');
    await lchown(b(root, 'owned'), 1234, 5678);
    await writeFile(b(root, 'owned-setuid'), 'chown clears setuid; restore must set mode after owner');
    await lchown(b(root, 'owned-setuid'), 4242, 4243);
    await chmod(b(root, 'owned-setuid'), 0o6755);
    await writeFile(b(root, 'big-ids'), 'ids past ustar octal fields');
    await lchown(b(root, 'big-ids'), 3000000, 3000001);
  }

  // Symlinks: relative, absolute, dangling, to a directory, long target.
  await symlink('hello.txt', b(root, 'link-rel'));
  await symlink('/etc/hostname', b(root, 'link-abs'));
  await symlink('does/not/exist', b(root, 'link-dangling'));
  await symlink('data', b(root, 'link-dir'));
  await symlink('x'.repeat(300), b(root, 'link-long-target'));

  // Hard links, across directories.
  await mkdir(b(root, 'links'));
  await writeFile(b(root, 'links/original'), 'linked content\n');
  await link(b(root, 'links/original'), b(root, 'links/second'));
  await link(b(root, 'links/original'), b(root, 'hardlink-at-top'));

  // Xattrs: user.* (binary value too), trusted.* as root, on a directory too.
  await writeFile(b(root, 'xattrs'), 'with xattrs');
  sys.lsetxattr(b(root, 'xattrs'), 'user.comment', Buffer.from('a comment'));
  sys.lsetxattr(b(root, 'xattrs'), 'user.binary', Buffer.from([0, 1, 2, 255, 10, 0]));
  sys.lsetxattr(b(root, 'xattrs'), 'user.empty', Buffer.alloc(0));
  sys.lsetxattr(b(root, 'data'), 'user.dir-attr', Buffer.from('on a directory'));
  if (IS_ROOT) sys.lsetxattr(b(root, 'xattrs'), 'trusted.secret', Buffer.from('root only'));

  // Empty directories, nested.
  await mkdir(b(root, 'empty-dir/inner/deeper'), { recursive: true });

  // Fifo and device nodes.
  sys.mknod(b(root, 'fifo'), C.S_IFIFO | 0o644, 0, 0);
  if (IS_ROOT) {
    sys.mknod(b(root, 'null-dev'), C.S_IFCHR | 0o666, 1, 3);
    sys.mknod(b(root, 'block-dev'), C.S_IFBLK | 0o600, 7, 200);
    sys.mknod(b(root, 'big-dev'), C.S_IFCHR | 0o600, 4000, 300000);
  }

  // Sparse files: holes at the start, middle and end; and a 9 GiB sparse file.
  {
    const fh = await open(b(root, 'sparse'), 'w');
    await fh.write(Buffer.from('middle'), 0, 6, 10 * 1024 * 1024);
    await fh.write(prng(3, 5 * 1024 * 1024), 0, 5 * 1024 * 1024, 20 * 1024 * 1024);
    await fh.truncate(64 * 1024 * 1024);
    await fh.close();
    const big = await open(b(root, 'sparse-9g'), 'w');
    await big.write(Buffer.from('start'), 0, 5, 0);
    await big.write(Buffer.from('end'), 0, 3, 9 * 1024 ** 3 - 3);
    await big.close();
    await writeFile(b(root, 'all-hole'), '');
    await truncate(b(root, 'all-hole'), 1024 * 1024);
  }

  // Names: invalid UTF-8, UTF-8, control characters, spaces, leading dash, backslash.
  await writeFile(b(root, Buffer.from([0x62, 0x61, 0x64, 0xff, 0xfe, 0x2e, 0x74])), 'invalid utf-8 name');
  await mkdir(b(root, Buffer.from([0xc3, 0x28, 0x2d, 0x64, 0x69, 0x72])));
  await writeFile(b(root, Buffer.concat([Buffer.from([0xc3, 0x28, 0x2d, 0x64, 0x69, 0x72, 0x2f]), Buffer.from([0x80])])), 'inside');
  await writeFile(b(root, 'café ☕ 日本'), 'utf-8');
  await writeFile(b(root, 'new\nline\ttab'), 'control characters');
  await writeFile(b(root, ' spaced name '), 'spaces');
  await writeFile(b(root, '-dash'), 'leading dash');
  await writeFile(b(root, 'back\\slash'), 'backslash');
  await symlink(Buffer.from([0xff, 0x2f, 0x80]), b(root, 'link-to-invalid-utf8'));

  // Long paths: a 255-byte name; a path past 255 bytes; a long hard link name.
  await writeFile(b(root, 'n'.repeat(255)), 'max name');
  const deep = ['a'.repeat(100), 'b'.repeat(100), 'c'.repeat(100), 'd'.repeat(100)].join('/');
  await mkdir(b(root, deep), { recursive: true });
  await writeFile(b(root, deep + '/' + 'e'.repeat(200)), 'a path of more than 600 bytes');
  await link(b(root, deep + '/' + 'e'.repeat(200)), b(root, deep + '/hardlink-' + 'f'.repeat(150)));

  // A dense file past 8 GiB: tar's 12-byte size field ends at 8 GiB - 1.
  if (opts.bigFileSize) {
    const fh = await open(b(root, 'huge.bin'), 'w');
    const block = Buffer.alloc(16 * 1024 * 1024);
    for (let off = 0; off < opts.bigFileSize; off += block.length) {
      const n = Math.min(block.length, opts.bigFileSize - off);
      // Mostly zeros (they compress), with a distinct stamp per block so misplaced chunks show.
      block.fill(0);
      block.write(`block at ${off}`, 0);
      await fh.write(block, 0, n, off);
    }
    await fh.close();
  }

  // Nanosecond mtimes on a file, a symlink and a directory; set last, deepest first.
  sys.lutimens(b(root, 'hello.txt'), 1_700_000_000, 123_456_789, 1_700_000_000, 123_456_789);
  sys.lutimens(b(root, 'link-rel'), 1_600_000_000, 987_654_321, 1_600_000_000, 987_654_321);
  sys.lutimens(b(root, 'empty-dir/inner'), 1_500_000_000, 1, 1_500_000_000, 1);
  sys.lutimens(b(root, 'empty-dir'), 1_400_000_000, 999_999_999, 1_400_000_000, 999_999_999);
  sys.lutimens(b(root, 'empty'), -86400, 5, -86400, 5);
}
