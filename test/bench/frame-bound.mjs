#!/usr/bin/env node
// Shared-frame bound measurement for docs/codecs.md.
//
//   make build && node test/bench/frame-bound.mjs DIR [--bounds 0,16384,...] [--runs N]
//
// For each bound: a full `strata backup` of DIR into a fresh local store (page cache dropped
// first), then from the layer's TOC: blob bytes, frames, and what a lazy read of one small file
// costs (the compressed frame it fetches and the bytes it decodes, averaged over the files that
// share frames); then a cold extract restore. `tar -cf - . | zstd -3 -T0` over DIR is the
// reference for time and bytes. Medians of N runs (default 2).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Strata } from '../../dist/index.js';
import { getManifest } from '../../dist/store/catalog.js';
import { fetchToc } from '../../dist/store/blobs.js';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const bounds = opt('--bounds', '0,16384,32768,65536,131072,262144').split(',').map(Number);
const runs = Number(opt('--runs', '2'));
const dir = resolve(args[0] ?? '.');
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const drop = () => {
  execFileSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3');
};
const now = () => performance.now();

function tarZstd() {
  const t = [];
  let bytes = 0;
  for (let r = 0; r < runs; r++) {
    drop();
    const t0 = now();
    bytes = Number(execFileSync('sh', ['-c', `tar -C ${JSON.stringify(dir)} -cf - . | zstd -3 -T0 -q -c | wc -c`]).toString().trim());
    t.push(now() - t0);
  }
  return { ms: median(t), bytes };
}

async function one(bound) {
  const backupMs = [];
  const extractMs = [];
  let row;
  for (let r = 0; r < runs; r++) {
    const work = mkdtempSync(join(tmpdir(), 'frame-bound-'));
    try {
      const strata = new Strata({ store: `file://${work}/store`, home: join(work, 'home'), frameBound: bound, onWarning: () => undefined });
      drop();
      let t0 = now();
      const h = await strata.createBackup({ dir });
      backupMs.push(now() - t0);
      const { manifest } = await getManifest(strata.store, h.id);
      const d = manifest.layers[manifest.layers.length - 1];
      const toc = await fetchToc(strata.store, d);
      const frames = new Map();
      let shared = 0;
      let fetched = 0;
      let decoded = 0;
      let small = 0;
      for (const e of toc.entries) {
        for (const c of e.chunks ?? []) frames.set(c.blobOffset, c.blobLength);
        const c = e.chunks?.[0];
        // "One small file read": files of at most 32 KiB (a fixed population, whatever the bound).
        if (e.type === 'file' && e.size > 0 && e.size <= 32 * 1024 && e.chunks.length === 1) {
          small++;
          if (c.frameSize !== undefined) shared++;
          fetched += c.blobLength;
          decoded += c.frameSize ?? c.size;
        }
      }
      const lens = [...frames.values()].sort((a, b) => a - b);
      row = {
        bound,
        blobBytes: d.size,
        frames: frames.size,
        medianFrame: lens[Math.floor(lens.length / 2)] ?? 0,
        smallFiles: small,
        sharedFiles: shared,
        fetchPerSmallRead: Math.round(fetched / Math.max(small, 1)),
        decodePerSmallRead: Math.round(decoded / Math.max(small, 1)),
      };
      drop();
      t0 = now();
      await strata.restoreBackup(h, { dir: join(work, 'out'), mode: 'extract' });
      extractMs.push(now() - t0);
      await strata.unmount(join(work, 'out'), { discard: true });
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }
  return { ...row, backupMs: Math.round(median(backupMs)), extractMs: Math.round(median(extractMs)) };
}

const ref = tarZstd();
console.log(`# ${dir}: tar | zstd -3 -T0 ${Math.round(ref.ms)} ms, ${ref.bytes} bytes (median of ${runs})`);
console.log('| bound | backup ms | × tar+zstd | blob bytes | × tar+zstd | frames | median frame | small files shared | fetched per small read | decoded per small read | extract ms |');
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const b of bounds) {
  const r = await one(b);
  console.log(
    `| ${b === 0 ? 'none' : `${b / 1024} KiB`} | ${r.backupMs} | ${(r.backupMs / ref.ms).toFixed(2)} | ${r.blobBytes} | ${(r.blobBytes / ref.bytes).toFixed(3)} | ${r.frames} | ${r.medianFrame} | ${r.sharedFiles}/${r.smallFiles} | ${r.fetchPerSmallRead} | ${r.decodePerSmallRead} | ${r.extractMs} |`,
  );
}
