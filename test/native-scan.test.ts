// scanDir (native/sys/scan.c, decoded by src/sys/scan.ts): what capture takes from one call per
// directory must be what lstat, readlink, llistxattrs and a read of the file say.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sys, type NativeSysError } from '../src/sys/native.js';
import { ScanFlag, scanDir } from '../src/sys/scan.js';

let dir: string;
const p = (name: string | Buffer): Buffer => Buffer.concat([Buffer.from(dir + '/'), Buffer.from(name)]);
const sha = (b: Buffer): string => 'sha256:' + createHash('sha256').update(b).digest('hex');
const small = Buffer.from('small file\n'.repeat(50));
const medium = Buffer.alloc(3000, 7);
const latin = Buffer.from([0x66, 0xe9, 0xff]); // not UTF-8

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-scan-'));
  fs.writeFileSync(p('b.txt'), small);
  fs.writeFileSync(p('a.bin'), medium);
  fs.writeFileSync(p('big'), Buffer.alloc(20_000, 1));
  fs.writeFileSync(p('empty'), '');
  fs.writeFileSync(p(latin), 'bytes name');
  fs.mkdirSync(p('sub'));
  fs.symlinkSync('b.txt', p('link'));
  fs.symlinkSync('x'.repeat(300), p('longlink'));
  sys.mknod(p('fifo'), fs.constants.S_IFIFO | 0o644, 0, 0);
  sys.lsetxattr(p('b.txt'), 'user.zeta', Buffer.from('z'));
  sys.lsetxattr(p('b.txt'), 'user.alpha', Buffer.from([0, 1, 2]));
  const fd = fs.openSync(p('sparse'), 'w');
  fs.ftruncateSync(fd, 1 << 20);
  fs.writeSync(fd, Buffer.from('tail'), 0, 4, (1 << 20) - 4);
  fs.closeSync(fd);
  // Files changed within 2 s of their read are read twice (ScanFlag.TWICE): only 'fresh' here.
  await new Promise((r) => setTimeout(r, 2100));
  fs.writeFileSync(p('fresh'), 'just written');
  // ...once the write is 30 ms old (SETTLED_NS): one changed just now may still be copying.
  await new Promise((r) => setTimeout(r, 60));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('scanDir', () => {
  it('lists bytewise, and says what lstat, readlink, llistxattrs and a read say', async () => {
    const s = await scanDir(Buffer.from(dir), null, 16_384, 1 << 20);
    const names = Array.from({ length: s.count }, (_, i) => s.name(i));
    const want = fs.readdirSync(dir, { encoding: 'buffer' }).sort(Buffer.compare);
    expect(names).toEqual(want);
    for (let i = 0; i < s.count; i++) {
      const name = s.name(i);
      const st = fs.lstatSync(p(name), { bigint: true });
      const got = s.stat(i);
      const f = s.flags(i);
      expect(f & ScanFlag.EXISTS).toBeTruthy();
      expect(s.errno(i)).toBe(0);
      for (const k of ['mode', 'uid', 'gid', 'size', 'blocks', 'nlink', 'ino', 'dev', 'rdev', 'mtimeNs', 'ctimeNs'] as const) expect([name.toString('latin1'), k, got[k]]).toEqual([name.toString('latin1'), k, st[k]]);
      for (const k of ['isFile', 'isDirectory', 'isSymbolicLink', 'isFIFO', 'isCharacterDevice', 'isBlockDevice', 'isSocket'] as const) expect(got[k]()).toBe(st[k]());
      expect(f & ScanFlag.XATTRS).toBeTruthy();
      expect(s.xattrs(i)).toEqual(sys.llistxattrs(p(name)));
      const fresh = name.toString() === 'fresh';
      expect([name.toString('latin1'), f & ScanFlag.TWICE]).toEqual([name.toString('latin1'), fresh ? ScanFlag.TWICE : 0]);
      if (st.isFile() && st.size <= 16_384n && st.blocks * 512n >= st.size) {
        expect([name.toString('latin1'), f & ScanFlag.DATA]).toEqual([name.toString('latin1'), ScanFlag.DATA]);
        expect(s.data(i)).toEqual(fs.readFileSync(p(name)));
        expect(s.digest(i)).toBe(sha(fs.readFileSync(p(name))));
      } else expect([name.toString('latin1'), f & ScanFlag.DATA]).toEqual([name.toString('latin1'), 0]);
      if (st.isSymbolicLink()) {
        expect(f & ScanFlag.LINK).toBeTruthy();
        expect(s.data(i)).toEqual(fs.readlinkSync(p(name), { encoding: 'buffer' }));
      }
    }
    const byName = (n: string): number => names.findIndex((x) => x.equals(Buffer.from(n)));
    expect(s.xattrs(byName('b.txt')).map(([n]) => n)).toEqual(['user.alpha', 'user.zeta']);
    expect(s.flags(byName('big')) & ScanFlag.DATA).toBe(0); // over smallMax
    expect(s.flags(byName('sparse')) & ScanFlag.DATA).toBe(0); // holes: the careful path keeps them
    expect(s.data(byName('fresh')).toString()).toBe('just written'); // changed just now: read twice, both agree
    expect(s.data(byName('longlink')).toString()).toBe('x'.repeat(300));
  });

  it('a file rewritten in place while it is scanned is kept only as one whole version, never torn', async () => {
    // Two versions of the same size, written over each other at once, again and again: a read
    // can see half of each with the same size and (coarse) timestamps; the second read of a
    // file changed just before must disagree with such a read, and the file is left unread.
    const sub = fs.mkdtempSync(path.join(dir, 'torn-'));
    const file = path.join(sub, 'hot.bin');
    const size = 128 * 1024;
    fs.writeFileSync(file, Buffer.alloc(size, 0x61));
    const writer = spawn(process.execPath, ['-e', `
      const fs = require('fs'); const fd = fs.openSync(${JSON.stringify(file)}, 'r+');
      const v = [Buffer.alloc(${size}, 0x61), Buffer.alloc(${size}, 0x62)];
      process.stdout.write('go\\n');
      for (let i = 0; ; i++) fs.writeSync(fd, v[i & 1], 0, ${size}, 0);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise((r) => writer.stdout!.once('data', r));
      let kept = 0;
      let left = 0;
      for (let i = 0; i < 300; i++) {
        const s = await scanDir(Buffer.from(sub), null, 256 * 1024 - 1, 1 << 20);
        expect(s.count).toBe(1);
        if (s.flags(0) & ScanFlag.DATA) {
          const d = s.data(0);
          expect(d.length).toBe(size);
          expect(d[0] === 0x61 || d[0] === 0x62).toBe(true);
          expect(d.equals(Buffer.alloc(size, d[0]!)), 'a whole version').toBe(true);
          expect(s.flags(0) & ScanFlag.TWICE).toBe(ScanFlag.TWICE);
          kept++;
        } else left++;
      }
      expect(kept + left).toBe(300);
    } finally {
      writer.kill('SIGKILL');
      fs.rmSync(sub, { recursive: true, force: true });
    }
  });

  it('stops reading at its budget, and scans the names it is given', async () => {
    const s = await scanDir(Buffer.from(dir), null, 16_384, 1000);
    const names = Array.from({ length: s.count }, (_, i) => s.name(i).toString('latin1'));
    // a.bin (3000 bytes) is first: always read, it alone is over the budget; the rest wait.
    expect(names[0]).toBe('a.bin');
    expect(s.flags(0) & ScanFlag.DATA).toBeTruthy();
    expect(s.flags(names.indexOf('b.txt')) & ScanFlag.BUDGET).toBeTruthy();
    expect(s.flags(names.indexOf('sub')) & ScanFlag.BUDGET).toBe(0);
    const again = await scanDir(Buffer.from(dir), [Buffer.from('b.txt'), Buffer.from('gone'), Buffer.from('sub')], 16_384, 1000);
    expect(again.count).toBe(3);
    expect(again.flags(0) & ScanFlag.DATA).toBeTruthy();
    expect(again.data(0)).toEqual(small);
    expect(again.flags(1)).toBe(0); // no such entry: not part of this point in time
    expect(again.stat(2).isDirectory()).toBe(true);
  });

  it('rejects like fs when the directory cannot be listed, and refuses names with a slash', async () => {
    const missing = (await scanDir(p('nope'), null, 0, 0).catch((e: unknown) => e)) as NativeSysError;
    expect(missing).toMatchObject({ code: 'ENOENT', syscall: 'scandir', errno: -2 });
    expect(missing.message).toContain('no such file or directory');
    const notDir = (await scanDir(p('b.txt'), null, 0, 0).catch((e: unknown) => e)) as NativeSysError;
    expect(notDir.code).toBe('ENOTDIR');
    expect(() => sys.scanDir(Buffer.from(dir), [Buffer.from('a/b')], 0, 0)).toThrow(/single path components/);
  });
});
