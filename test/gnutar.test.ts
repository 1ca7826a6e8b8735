/**
 * A layer blob is still a plain .tar.zst / .tar.gz: GNU tar extracts it to the same tree strata
 * restores (the TOC and footer after the end-of-archive marker are ignored by tar).
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Strata } from '../src/index.js';
import { blobKey } from '../src/format/reader.js';
import { makeFidelityTree } from './helpers/fidelity.js';
import { diffTrees, summarize, type EntrySummary } from './helpers/tree.js';

const run = promisify(execFile);
let work: string;
let before: Map<string, EntrySummary>;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-gnutar-'));
  await makeFidelityTree(join(work, 'src'));
  before = await summarize(join(work, 'src'));
});
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe.each(['zstd', 'gzip'] as const)('GNU tar reads a %s layer', (codec) => {
  it('extracts the same tree', async () => {
    const home = join(work, 'home-' + codec);
    const strata = new Strata({ home, codec });
    const h = await strata.createBackup({ dir: join(work, 'src') });
    const info = await strata.getBackup(h.id);
    const blob = join(home, 'store', blobKey(info.layers[0]!.digest));
    const out = join(work, 'tar-' + codec);
    await mkdir(out);
    const { stderr } = await run('tar', [
      '-x', codec === 'zstd' ? '--zstd' : '--gzip', '-f', blob, '-C', out,
      '--xattrs', '--xattrs-include=*', '--same-owner', '--numeric-owner', '--same-permissions',
    ]);
    expect(diffTrees(before, await summarize(out))).toEqual([]);
    // The one thing tar may say: the fidelity tree holds a deliberately pre-1970 mtime.
    expect(stderr.split('\n').filter((l) => l && !l.includes('implausibly old time stamp'))).toEqual([]);
  });
});
