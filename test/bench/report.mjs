#!/usr/bin/env node
// Renders benchmark results (run.mjs) as docs/benchmarks.md and the restore-time chart (SVG).
// Ratios are strata over a contender, computed run by run (run i of both) and then the median.
//
//   node test/bench/report.mjs [RESULTS.json] [--out docs/benchmarks.md]   (re-render, no re-run)
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { median, spread } from './util.mjs';

const here = dirname(fileURLToPath(import.meta.url));

// ---- formatting -----------------------------------------------------------------------------------

export function fmtMs(ms) {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return '–';
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${ms.toFixed(0)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(2)} s`;
  return `${(ms / 1000).toFixed(1)} s`;
}
export function fmtBytes(b) {
  if (b === undefined || b === null || !Number.isFinite(b)) return '–';
  if (b < 1e3) return `${b} B`;
  if (b < 1e6) return `${(b / 1e3).toFixed(1)} kB`;
  if (b < 1e9) return `${(b / 1e6).toFixed(1)} MB`;
  return `${(b / 1e9).toFixed(2)} GB`;
}
const fmtSpread = (s) => (s === undefined ? '' : ` ±${(s * 100).toFixed(0)}%`);
function fmtRatio(r) {
  if (r === undefined || !Number.isFinite(r)) return '–';
  const s = r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r >= 0.1 ? r.toFixed(2) : r.toFixed(3);
  return r > 1.05 ? `**${s}×**` : `${s}×`;
}

/** "median ±spread" of one metric over runs. */
function cell(runs, key, fmt = fmtMs) {
  const xs = runs.map((r) => (typeof key === 'function' ? key(r) : r[key]));
  const m = median(xs);
  if (m === undefined) return '–';
  return fmt(m) + (fmt === fmtMs ? fmtSpread(spread(xs)) : '');
}

/** Median over runs of a[i]/b[i] (runs paired by index). */
export function pairedRatio(aRuns, bRuns, key) {
  const n = Math.min(aRuns?.length ?? 0, bRuns?.length ?? 0);
  const rs = [];
  for (let i = 0; i < n; i++) {
    const a = typeof key === 'function' ? key(aRuns[i]) : aRuns[i][key];
    const b = typeof key === 'function' ? key(bRuns[i]) : bRuns[i][key];
    if (Number.isFinite(a) && Number.isFinite(b) && b > 0) rs.push(a / b);
  }
  return median(rs);
}

/** A markdown table: the first `left` columns left-aligned (text), the rest right-aligned (numbers). */
const table = (head, rows, left = 1) => [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i < left ? '---' : '---:')).join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');

// ---- the sections ------------------------------------------------------------------------------------

const BACKUP_KINDS = [
  ['full', 'full backup'],
  ['edit', 'after editing one file'],
  ['regen', 'after reinstalling node_modules'],
];
const SDK = [
  ['squashfs', 'SDK 0.x'],
  ['tarzstd', 'SDK 1.0'],
];

function backupSection(sz, profile, losses, sizeName) {
  const b = sz.profiles[profile]?.backup;
  if (!b) return '';
  const ids = Object.keys(b);
  const head = ['method', ...BACKUP_KINDS.flatMap(([, l]) => [`${l}: time`, 'uploaded'])];
  const rows = ids.map((id) => [b[id].label, ...BACKUP_KINDS.flatMap(([k]) => [cell(b[id][k], 'ms'), cell(b[id][k], 'bytesUp', fmtBytes)])]);
  for (const [sid, sl] of SDK) {
    if (!b[sid] || !b.strata) continue;
    rows.push([
      `strata ÷ ${sl}`,
      ...BACKUP_KINDS.flatMap(([k]) => {
        const rt = pairedRatio(b.strata[k], b[sid][k], 'ms');
        const rb = pairedRatio(b.strata[k], b[sid][k], 'bytesUp');
        losses.push({ figure: 'backup', who: 'strata', what: `${BACKUP_KINDS.find((x) => x[0] === k)[1]}: time`, vs: sl, ratio: rt, size: sizeName, profile });
        losses.push({ figure: 'backup', who: 'strata', what: `${BACKUP_KINDS.find((x) => x[0] === k)[1]}: bytes uploaded`, vs: sl, ratio: rb, size: sizeName, profile });
        return [fmtRatio(rt), fmtRatio(rb)];
      }),
    ]);
  }
  return table(head, rows);
}

const RESTORE_COLS = [
  ['ready', '`ls` of the root works'],
  ['first', 'first file read'],
  ['work', 'workload done'],
  ['workBytes', 'fetched by then', fmtBytes],
  ['full', 'fully local'],
  ['fullBytes', 'fetched in all', fmtBytes],
];
const STRATA_RESTORES = ['strata-extract', 'strata-extract-fork', 'strata-lazy', 'strata-lazy-daemon', 'strata-lazy-nohydrate', 'strata-lazy-fork', 'strata-lazy-recorded'];

function restoreSection(sz, profile, losses, sizeName) {
  const rs = sz.profiles[profile]?.restore;
  if (!rs) return '';
  const head = ['contender', ...RESTORE_COLS.map((c) => c[1])];
  const rows = [];
  for (const [id, c] of Object.entries(rs)) {
    if (c.unavailable) rows.push([c.label, ...RESTORE_COLS.map((_, i) => (i === 0 ? c.unavailable.replace(/\|/g, '/') : ''))]);
    else rows.push([c.label, ...RESTORE_COLS.map(([k, , f]) => cell(c.runs, k, f ?? fmtMs))]);
  }
  const ratioRows = [];
  for (const s of STRATA_RESTORES) {
    if (!rs[s] || rs[s].unavailable) continue;
    for (const [sid, sl] of SDK) {
      if (!rs[sid] || rs[sid].unavailable) continue;
      ratioRows.push([
        `${rs[s].short} ÷ ${sl}`,
        ...RESTORE_COLS.map(([k]) => {
          const r = pairedRatio(rs[s].runs, rs[sid].runs, k);
          losses.push({ figure: 'restore', what: RESTORE_COLS.find((x) => x[0] === k)[1], who: rs[s].short, vs: sl, ratio: r, size: sizeName, profile });
          return fmtRatio(r);
        }),
      ]);
    }
  }
  return table(head, rows) + '\n\nRatios (strata ÷ contender, paired run by run; **bold**: strata slower or larger):\n\n' + table(['', ...RESTORE_COLS.map((c) => c[1])], ratioRows);
}

const STEADY_COLS = [
  ['findCold', '`find`, cold'],
  ['findWarm', '`find`, warm'],
  ['readCold', 'read every file, cold'],
  ['readWarm', 'read every file, warm'],
];

function steadySection(sz, losses, sizeName) {
  const st = sz.steady;
  if (!st) return '';
  const head = ['file system (restored by)', ...STEADY_COLS.map((c) => c[1])];
  const rows = Object.entries(st).map(([id, c]) => [
    `${c.label} (${c.contender})`,
    ...STEADY_COLS.map(([k], i) => (c.unavailable ? (i === 0 ? c.unavailable.replace(/\|/g, '/') : '') : cell(c.runs, k))),
  ]);
  const ratioRows = [];
  for (const s of ['strata-extract', 'strata-lazy']) {
    if (!st[s] || st[s].unavailable) continue;
    for (const [oid, ol] of [['tarzstd', 'ext4'], ['squashfuse_ll', 'squashfuse_ll'], ['squashfs', 'fuse-overlayfs (SDK 0.x)']]) {
      if (!st[oid] || st[oid].unavailable) continue;
      ratioRows.push([
        `${s.replace('-', ' ')} ÷ ${ol}`,
        ...STEADY_COLS.map(([k]) => {
          const r = pairedRatio(st[s].runs, st[oid].runs, k);
          losses.push({ figure: 'steady state', what: STEADY_COLS.find((x) => x[0] === k)[1], who: s.replace('-', ' '), vs: ol, ratio: r, size: sizeName });
          return fmtRatio(r);
        }),
      ]);
    }
  }
  return table(head, rows) + '\n\n' + table(['ratio', ...STEADY_COLS.map((c) => c[1])], ratioRows);
}

function growthSection(results) {
  const sizes = Object.keys(results.sizes);
  const out = [];
  for (const profile of results.meta.profiles) {
    const ids = new Set();
    for (const s of sizes) for (const id of Object.keys(results.sizes[s].profiles[profile]?.restore ?? {})) ids.add(id);
    const head = ['contender', ...sizes.map((s) => `${s} (${fmtBytes(results.sizes[s].stats.bytes)}): ready / workload done`)];
    const rows = [...ids].map((id) => {
      let label;
      const cells = sizes.map((s) => {
        const c = results.sizes[s].profiles[profile]?.restore?.[id];
        if (!c) return '–';
        label = c.label;
        if (c.unavailable) return 'n/a';
        return `${fmtMs(median(c.runs.map((r) => r.ready)))} / ${fmtMs(median(c.runs.map((r) => r.work)))}`;
      });
      return [label, ...cells];
    });
    out.push(`**${profile}**\n\n` + table(head, rows));
  }
  return out.join('\n\n');
}

/**
 * The lazy ready path against its targets (issue 9): `ls` of the root ≤ 0.3 s over r2 and ≤ 0.15 s
 * local, on a cold host and on one whose daemon runs; large ÷ small ≤ 1.3×; first file read at most
 * 60 ms after ready over r2.
 */
function readySection(results) {
  const sizes = Object.keys(results.sizes);
  const out = [];
  const med = (xs) => median(xs.filter((x) => x !== undefined));
  for (const profile of results.meta.profiles) {
    const limit = profile === 'r2' ? 300 : 150;
    const rows = [];
    for (const id of ['strata-lazy', 'strata-lazy-daemon']) {
      let label;
      const ready = {};
      const cells = sizes.map((sn) => {
        const c = results.sizes[sn].profiles[profile]?.restore?.[id];
        if (!c || c.unavailable) return '–';
        label = c.short;
        const r = med(c.runs.map((x) => x.ready));
        const f = med(c.runs.map((x) => x.first - x.ready));
        ready[sn] = r;
        return `${r > limit ? `**${fmtMs(r)}**` : fmtMs(r)} / +${fmtMs(f)}`;
      });
      if (!label) continue;
      const growth = ready.large && ready.small ? ready.large / ready.small : undefined;
      rows.push([label, ...cells, growth === undefined ? '–' : growth > 1.3 ? `**${growth.toFixed(2)}×**` : `${growth.toFixed(2)}×`]);
    }
    if (rows.length) out.push(`**${profile}** (target: \`ls\` ≤ ${limit} ms${profile === 'r2' ? ', first read ≤ ready + 60 ms' : ''}; **bold**: target missed)\n\n` + table(['contender', ...sizes.map((sn) => `${sn}: \`ls\` works / first read after it`), 'large ÷ small'], rows));
  }
  return out.join('\n\n');
}

/** The restore index of each size's full backup: bytes per entry, compressed, time to build. */
function indexSection(results) {
  const rows = [];
  for (const [sn, sz] of Object.entries(results.sizes)) {
    const ix = Object.values(sz.profiles).flatMap((p) => p.backup?.strata?.full ?? []).map((r) => r.index).find(Boolean);
    if (!ix) continue;
    rows.push([sn, ix.entries.toLocaleString('en-US'), fmtBytes(ix.rawSize), `${(ix.rawSize / ix.entries).toFixed(0)} B`, `${fmtBytes(ix.size)}${ix.inline ? ' (inline)' : ''}`, `${(ix.size / ix.entries).toFixed(0)} B`, fmtMs(ix.encodeMs), fmtMs(ix.packMs)]);
  }
  if (!rows.length) return '';
  return table(['workspace', 'entries', 'index', 'per entry', 'compressed blob', 'per entry', 'build (view + encode)', 'compress + digest'], rows);
}

/** strata's backup and extract restore split into phases, from the store call traces. */
function phaseSection(results) {
  const rows = [];
  const med = (xs) => median(xs.filter((x) => x !== undefined));
  for (const [sname, sz] of Object.entries(results.sizes)) {
    for (const [pname, pr] of Object.entries(sz.profiles)) {
      for (const kind of ['full', 'regen']) {
        const runs = pr.backup?.strata?.[kind] ?? [];
        const parts = runs.map((r) => {
          const put = r.trace?.find((e) => e.op === 'putFile');
          if (!put) return undefined;
          return { total: r.ms, before: put.t, upload: put.d, after: r.ms - put.t - put.d };
        }).filter(Boolean);
        if (!parts.length) continue;
        rows.push([`${sname}, ${pname}`, `backup: ${BACKUP_KINDS.find((k) => k[0] === kind)[1]}`, fmtMs(med(parts.map((p) => p.total))),
          `capture into a local layer file: ${fmtMs(med(parts.map((p) => p.before)))}; upload: ${fmtMs(med(parts.map((p) => p.upload)))}; manifest and the rest: ${fmtMs(med(parts.map((p) => p.after)))}`]);
      }
      const ex = pr.restore?.['strata-extract'];
      if (ex && !ex.unavailable) {
        const parts = ex.runs.map((r) => {
          const meta = (r.trace ?? []).filter((e) => e.op === 'getBytes' || e.op === 'head');
          const data = (r.trace ?? []).filter((e) => e.op === 'get');
          if (!data.length) return undefined;
          const metaEnd = Math.max(0, ...meta.map((e) => e.t + e.d));
          const dStart = Math.min(...data.map((e) => e.t));
          const dEnd = Math.max(...data.map((e) => e.t + e.d));
          return { total: r.returned, meta: metaEnd, structure: dStart - metaEnd, data: dEnd - dStart, after: r.returned - dEnd, gets: data.length };
        }).filter(Boolean);
        if (parts.length) {
          rows.push([`${sname}, ${pname}`, 'restore: strata extract (cold host), until it returns', fmtMs(med(parts.map((p) => p.total))),
            `manifest + TOC: ${fmtMs(med(parts.map((p) => p.meta)))}; directories and empty files before the first data GET: ${fmtMs(med(parts.map((p) => p.structure)))}; data GET streamed into files (${med(parts.map((p) => p.gets))} GET): ${fmtMs(med(parts.map((p) => p.data)))}; metadata, rename, overlay mount: ${fmtMs(med(parts.map((p) => p.after)))}`]);
        }
      }
    }
  }
  if (!rows.length) return '';
  return table(['workspace, profile', 'operation', 'total', 'phases (medians; from the times of strata\'s store calls)'], rows, 2).replace(/\|---:\|$/m, '|---|');
}

// ---- chart -----------------------------------------------------------------------------------------------

const COLORS = { squashfs: '#d62728', tarzstd: '#ff7f0e', 'strata-extract': '#1f77b4', 'strata-extract-fork': '#17becf', 'strata-lazy': '#2ca02c', 'strata-lazy-nohydrate': '#bcbd22', 'strata-lazy-fork': '#9467bd', 'strata-lazy-recorded': '#8c564b', 'strata-lazy-daemon': '#e377c2' };

export function chart(results) {
  const sizes = Object.keys(results.sizes);
  const profiles = results.meta.profiles;
  const metrics = [
    ['ready', 'restore until `ls` works'],
    ['work', 'restore + workload (node app.js)'],
  ];
  const width = 820;
  const W = (width - 20) / profiles.length;
  const H = 270;
  const M = { l: 58, r: 16, t: 28, b: 40 };
  const idsAll = new Set();
  for (const s of sizes) for (const p of profiles) for (const [id, c] of Object.entries(results.sizes[s].profiles[p]?.restore ?? {})) if (!c.unavailable) idsAll.add(id);
  const legendH = 18 * idsAll.size + 10;
  const height = 30 + H * metrics.length + legendH;
  const xs = sizes.map((s) => results.sizes[s].stats.bytes);
  const ids = idsAll;
  let all = [];
  for (const s of sizes) for (const p of profiles) for (const c of Object.values(results.sizes[s].profiles[p]?.restore ?? {})) for (const r of c.runs ?? []) all.push(r.ready, r.work);
  all = all.filter((v) => v > 0);
  const yMin = Math.pow(10, Math.floor(Math.log10(Math.min(...all) / 1000)));
  const yMax = Math.pow(10, Math.ceil(Math.log10(Math.max(...all) / 1000)));
  const xMin = Math.min(...xs) / 1.6;
  const xMax = Math.max(...xs) * 1.6;
  const esc = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/`/g, '');
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`, `<rect width="100%" height="100%" fill="white"/>`];
  parts.push(`<text x="${width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">Restore time against workspace size (medians; log scales)</text>`);
  metrics.forEach(([mk, mlabel], mi) => {
    profiles.forEach((p, pi) => {
      const ox = 10 + pi * W;
      const oy = 26 + mi * H;
      const px = (b) => ox + M.l + ((Math.log(b) - Math.log(xMin)) / (Math.log(xMax) - Math.log(xMin))) * (W - M.l - M.r);
      const py = (sec) => oy + H - M.b - ((Math.log(sec) - Math.log(yMin)) / (Math.log(yMax) - Math.log(yMin))) * (H - M.t - M.b);
      parts.push(`<text x="${ox + W / 2}" y="${oy + 18}" text-anchor="middle" font-weight="bold">${esc(mlabel)} — profile ${esc(p)}</text>`);
      parts.push(`<rect x="${ox + M.l}" y="${oy + M.t}" width="${W - M.l - M.r}" height="${H - M.t - M.b}" fill="none" stroke="#888"/>`);
      for (let d = yMin; d <= yMax * 1.0001; d *= 10) {
        for (const k of [1, 2, 5]) {
          const v = d * k;
          if (v > yMax * 1.0001) continue;
          const y = py(v);
          parts.push(`<line x1="${ox + M.l}" x2="${ox + W - M.r}" y1="${y}" y2="${y}" stroke="#eee"/>`);
          parts.push(`<text x="${ox + M.l - 4}" y="${y + 3}" text-anchor="end">${v >= 1 ? v : v.toPrecision(1)} s</text>`);
        }
      }
      sizes.forEach((s, i) => {
        const x = px(xs[i]);
        parts.push(`<line x1="${x}" x2="${x}" y1="${oy + M.t}" y2="${oy + H - M.b}" stroke="#eee"/>`);
        parts.push(`<text x="${x}" y="${oy + H - M.b + 14}" text-anchor="middle">${esc(s)}</text>`);
        parts.push(`<text x="${x}" y="${oy + H - M.b + 26}" text-anchor="middle" fill="#666">${esc(fmtBytes(xs[i]))}, ${(results.sizes[s].stats.files / 1000).toFixed(0)}k files</text>`);
      });
      for (const id of ids) {
        const pts = [];
        sizes.forEach((s, i) => {
          const c = results.sizes[s].profiles[p]?.restore?.[id];
          const m = c && !c.unavailable ? median(c.runs.map((r) => r[mk])) : undefined;
          if (m) pts.push([px(xs[i]), py(m / 1000)]);
        });
        if (pts.length > 1) parts.push(`<polyline fill="none" stroke="${COLORS[id] ?? '#000'}" stroke-width="2" points="${pts.map((q) => q.map((v) => v.toFixed(1)).join(',')).join(' ')}"/>`);
        for (const [x, y] of pts) parts.push(`<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3.5" fill="${COLORS[id] ?? '#000'}"/>`);
      }
    });
  });
  // Legend, one contender a line.
  const ly = 30 + metrics.length * H + 4;
  let i = 0;
  for (const id of ids) {
    const label = Object.values(results.sizes)
      .flatMap((s) => Object.values(s.profiles).map((p) => p.restore?.[id]?.label))
      .find(Boolean);
    const y = ly + i * 18;
    parts.push(`<line x1="${M.l}" x2="${M.l + 22}" y1="${y}" y2="${y}" stroke="${COLORS[id] ?? '#000'}" stroke-width="3"/><circle cx="${M.l + 11}" cy="${y}" r="3.5" fill="${COLORS[id] ?? '#000'}"/><text x="${M.l + 30}" y="${y + 4}">${esc(label ?? id)}</text>`);
    i++;
  }
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

// ---- the document ---------------------------------------------------------------------------------------

/**
 * Every comparison where strata came out slower or larger (median paired ratio above 1.05), one
 * row per figure, strata variant and metric: the range of the losing ratios and in how many of
 * the measured workspace sizes and profiles strata lost.
 */
function lossesSection(comparisons) {
  const groups = new Map();
  for (const c of comparisons) {
    if (c.ratio === undefined || !Number.isFinite(c.ratio)) continue;
    const k = `${c.figure}\u0000${c.who}\u0000${c.what}`;
    if (!groups.has(k)) groups.set(k, { figure: c.figure, who: c.who, what: c.what, vs: {} });
    const g = groups.get(k);
    (g.vs[c.vs] ??= []).push(c);
  }
  const rows = [];
  for (const g of groups.values()) {
    for (const [v, all] of Object.entries(g.vs)) {
      const lost = all.filter((c) => c.ratio > 1.05);
      if (!lost.length) continue;
      const lo = Math.min(...lost.map((c) => c.ratio));
      const hi = Math.max(...lost.map((c) => c.ratio));
      const plain = (r) => fmtRatio(r).replace(/\*/g, '');
      const range = lo === hi ? plain(lo) : `${plain(lo)} – ${plain(hi)}`;
      const where = lost.map((c) => `${c.size}${c.profile ? ` ${c.profile}` : ''}`).join(', ');
      rows.push([g.figure, g.who, g.what, v, `**${range}**`, `${lost.length} of ${all.length}: ${where}`]);
    }
  }
  if (!rows.length) return 'In this run strata was not slower or larger than a contender on any figure (paired ratio above 1.05).';
  return table(['figure', 'strata', 'metric', 'against', 'strata ÷ it', 'lost in (size, profile)'], rows, 4);
}

export async function render(results, { svgName = 'benchmarks-restore.svg' } = {}) {
  const m = results.meta;
  const mc = m.machine;
  const sizes = Object.keys(results.sizes);
  const losses = [];
  const L = [];
  L.push('# Benchmarks: strata against the Sandbox SDK\'s backup methods');
  L.push('');
  L.push('<!-- Generated by test/bench/run.mjs (tables, chart, the list of losses) with the reading from test/bench/reading.md. Re-render without re-running: node test/bench/report.mjs test/bench/results.json -->');
  L.push('');
  L.push('Five ways to back up a sandbox workspace and bring it back, measured side by side in one run on one machine:');
  L.push('');
  L.push('1. **SDK 0.x** — Cloudflare Sandbox SDK 0.x\'s method rebuilt from Debian tools: `mksquashfs -comp lz4`, upload (multipart, 16 MiB parts, 4 in flight); restore = 16 parallel ranged GETs of the whole image, then `squashfuse` and `fuse-overlayfs` (a writable upper) over it.');
  L.push('2. **SDK 1.0** — Cloudflare\'s 1.0 method: `tar | zstd -3 -T0` streamed into a multipart upload; restore = one GET streamed into `zstd -d | tar -x`.');
  L.push('3. **strata extract** — `restoreBackup(handle, { mode: \'extract\' })` with an empty host (fresh `STRATA_HOME`): layers downloaded and unpacked into host layer directories, then a kernel overlay mount. Also shown: the same restore as a **fork** on a host that already holds the layers (another workspace of the same backup is mounted).');
  L.push('4. **strata lazy, cold host cache** — `mode: \'lazy\'`, fresh `STRATA_HOME`: a FUSE view, file data fetched on first read.');
  L.push('5. **strata lazy, warm host cache** — `mode: \'lazy\'` as a fork on a host whose chunk cache already holds the backup (another lazy workspace of it is mounted, fully hydrated).');
  L.push('');
  L.push('Also measured, to explain the lazy numbers (not with `--quick`): lazy with background hydration off (`new Strata({ hydrate: false })`: what the workload alone fetches), and lazy from a **next-generation backup**: a lazy workspace of the full backup ran the app, wrote one file and was backed up, so the restore daemon\'s record of the frames read first became the new backup\'s prefetch record, which strata-fuse fetches first on restore.');
  L.push('');
  L.push('## Machine and command');
  L.push('');
  L.push(table(['', ''], [
    ['machine', `${mc.cpu}, ${mc.memGiB} GiB RAM, ${mc.os}, kernel ${mc.kernel}`],
    ['disk', mc.disk],
    ['software', `Node ${mc.node}; ${Object.entries(mc.tools).map(([k, v]) => `${k} ${String(v).replace(/^mksquashfs version /, '')}`).join('; ')}`],
    ['store', `s3rver ${mc.tools.s3rver} on 127.0.0.1 (its own process) behind the shaping proxy test/bench/shaper.mjs (its own process)`],
    ['command', `\`${m.command}\` (as root), started ${m.started.replace('T', ' ').slice(0, 16)} UTC, took ${m.minutes?.toFixed(1)} min`],
    ['load average', `${m.loadBefore.join(' ')} before, ${m.loadAfter?.join(' ')} after (1/5/15 min)${m.loadDuring ? `; during the run (1 min, every 15 s): mean ${m.loadDuring.mean.toFixed(2)}, max ${m.loadDuring.max.toFixed(2)} (the bench alone runs at about 2)` : ''}`],
    ['runs', `per contender: ${m.backupRuns ?? m.runs} of each backup, ${m.runs} of each restore, ${m.steadyRuns ?? m.runs} of each steady-state figure; median shown, ±: half the range over the median`],
    ...(m.others ?? []).map((o) => [
      `also: ${o.sizes.join(', ')}`,
      `\`${o.command}\`, started ${o.started.replace('T', ' ').slice(0, 16)} UTC, took ${o.minutes?.toFixed(1)} min; ${o.backupRuns ?? o.runs}/${o.runs}/${o.steadyRuns ?? o.runs} runs (backup/restore/steady); load ${o.loadBefore.join(' ')} before${o.loadDuring ? `, mean ${o.loadDuring.mean.toFixed(2)} and max ${o.loadDuring.max.toFixed(2)} during` : ''}`,
    ]),
  ], 2));
  L.push('');
  L.push(`\`make bench\` runs \`node test/bench/run.mjs\` (small, medium and large, profiles local and r2, 3 runs of each figure, 1 of the large workspace's: \`--large-runs\`; writes this file); \`make bench-quick\` runs \`--quick\` (small only, both profiles; prints the report and leaves this file alone). \`--sizes\` picks the workspaces; the ~2 GB one is${sizes.includes('large') ? '' : ' not'} in this run. Other flags: \`--profiles\`, \`--runs\`, \`--phases backup,restore,steady\`, \`--contenders\`, \`--work DIR\`.`);
  L.push('');
  L.push('### Workspaces');
  L.push('');
  L.push('Generated by `test/bench/gen.mjs`, deterministically: a JavaScript repository after `npm install`: packages (some scoped) in node_modules with nested node_modules up to three levels deep, `lib/*.js`, `.d.ts`, source maps, READMEs, `.bin` symlinks; a `.git` directory with loose objects and a pack; a few large files (native binaries, bundles, source maps, the pack). `app.js` `require()`s packages whose `index.js` files require some of their `lib/` modules and dependencies: the **workload** is `node app.js` in the restored directory (real reads through the mount), and the files it reads are known from the generator (checked against `require.cache`).');
  L.push('');
  L.push(table(['size', 'files', 'directories', 'symlinks', 'bytes', 'large files', 'packages', 'deepest path', 'workload reads'], sizes.map((s) => {
    const z = results.sizes[s];
    return [s, z.stats.files.toLocaleString('en'), z.stats.dirs.toLocaleString('en'), z.stats.symlinks, fmtBytes(z.stats.bytes), z.stats.largeFiles, z.stats.packages, `${z.stats.maxDepth} levels`, `${z.workload.files} files, ${fmtBytes(z.workload.bytes)} (${z.workload.packages} packages)`];
  })));
  L.push('');
  L.push('### How it is measured');
  L.push('');
  L.push('* **The link.** Profile `local` adds nothing (s3rver\'s own speed on this machine); profile `r2` delays the start of every response by 40 ms (one round trip per request) and paces request and response bodies through two token buckets shared by all connections, 100 MB/s each way. Uploaded and fetched bytes are counted by the proxy (request and response bodies, every request included).');
  L.push('* **Cold runs.** Before every backup and every restore: `sync; echo 3 > /proc/sys/vm/drop_caches`, then the store\'s objects of the contender and the programs (node, tar, zstd, squashfuse, fuse-overlayfs, strata-fuse and their libraries) are read back in, so "cold" means this host\'s copy of the workspace, not the server\'s disk or the binaries. Every operation gets a fresh S3 client (no warm connections).');
  L.push('* **Restore timeline**, all from the moment restore starts: `ls` of the root works (the restore call returned, then `ls` ran); `cat package.json` done; `node app.js` done; fully local: for lazy mode, when `strata status` reports every chunk of the workspace in the host cache (background hydration; not timed for the variant without it), for the others when the restore returned. All reads run in child processes: `ls` and `cat` in a shell started before the clock (a fork of the harness, a large Node process, costs several ms more), `node app.js` spawned by the harness. "Fetched" counts response bodies through the proxy, TOCs and manifests included.');
  L.push('* **Backups.** Full: each method backs up the generated tree. After editing one file: SDK 0.x and 1.0 back up the whole tree again (they have no incremental backup); strata backs up a workspace (an extract-mode restore of the full backup) where the same file was edited. After reinstalling node_modules: in the workspace, node_modules deleted and copied back (the same bytes, new inodes), then backed up; SDK 0.x and 1.0 pack the whole tree whatever changed, and the reinstalled tree holds the same bytes, so they back up the plain tree again.');
  L.push('* **Steady state.** Each contender\'s restored tree (lazy: after fetching everything), `find` over it and `cat` of every file (one reader), each cold (page cache dropped) and then warm. Plain ext4 is SDK 1.0\'s restored tree; `squashfuse_ll` is the SDK 0.x image mounted alone. Every restored tree is checked against the source with `diff -r` first (not with `--quick`).');
  L.push('* **Pairing.** Within a run every contender goes once, in an order rotated from run to run; a ratio is strata\'s value over the contender\'s in the same run, and the table shows the median ratio.');
  L.push('');
  L.push('## Backup');
  L.push('');
  for (const s of sizes) {
    for (const p of m.profiles) {
      const t = backupSection(results.sizes[s], p, losses, s);
      if (t) L.push(`### ${s}, profile ${p}`, '', t, '');
    }
  }
  L.push('## Restore');
  L.push('');
  for (const s of sizes) {
    for (const p of m.profiles) {
      const t = restoreSection(results.sizes[s], p, losses, s);
      if (t) L.push(`### ${s}, profile ${p}`, '', t, '');
    }
  }
  L.push('## Steady state on a restored workspace');
  L.push('');
  for (const s of sizes) {
    const t = steadySection(results.sizes[s], losses, s);
    if (t) L.push(`### ${s}`, '', t, '');
  }
  const phases = phaseSection(results);
  if (phases) {
    L.push('## Where strata spends its time');
    L.push('');
    L.push(phases);
    L.push('');
  }
  const ready = readySection(results);
  if (ready) {
    L.push('## Lazy restore: ready in one round trip, at any size');
    L.push('');
    L.push('Medians. Cold host: fresh `STRATA_HOME`, no restore daemon running (the restore starts it). Daemon up: a fresh `STRATA_HOME` whose daemon already serves another (tiny) workspace, so the chunk cache holds nothing of this backup.');
    L.push('');
    L.push(ready);
    L.push('');
  }
  const ix = indexSection(results);
  if (ix) {
    L.push('### The restore index of each full backup');
    L.push('');
    L.push(ix);
    L.push('');
  }
  L.push('## Restore time against workspace size');
  L.push('');
  L.push(`![restore time against workspace size](${svgName})`);
  L.push('');
  L.push(growthSection(results));
  L.push('');
  L.push('## Where strata loses (ratio above 1.05, from the tables above)');
  L.push('');
  L.push(lossesSection(losses));
  L.push('');
  const readingPath = join(here, 'reading.md');
  if (existsSync(readingPath)) {
    L.push((await readFile(readingPath, 'utf8')).trim());
    L.push('');
  }
  return { md: L.join('\n'), svg: chart(results), losses };
}

/** Several runs (e.g. small and medium, then large on its own) as one: sizes side by side. */
export function mergeResults(list) {
  const [first, ...rest] = list;
  const out = { meta: { ...first.meta, others: [] }, sizes: { ...first.sizes } };
  for (const r of rest) {
    for (const [k, v] of Object.entries(r.sizes)) {
      // A later run of a size replaces the profiles (and steady state) it measured, keeps the rest.
      const old = out.sizes[k];
      out.sizes[k] = old ? { ...old, ...v, profiles: { ...old.profiles, ...v.profiles }, steady: v.steady ?? old.steady } : v;
    }
    out.meta.profiles = [...new Set([...out.meta.profiles, ...r.meta.profiles])];
    out.meta.others.push(r.meta);
  }
  return out;
}

/**
 * The report at `out` and its figure beside it, named after it (docs/benchmarks.md's is
 * benchmarks-restore.svg): a report written elsewhere leaves that one as it was. Returns the md.
 */
export async function writeReport(results, out) {
  const svgName = `${basename(out, '.md')}-restore.svg`;
  const { md, svg } = await render(results, { svgName });
  await writeFile(out, md);
  await writeFile(join(dirname(out), svgName), svg);
  return md;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const outAt = args.indexOf('--out');
  const files = args.filter((a, i) => !a.startsWith('--') && i !== outAt + 1);
  if (!files.length) files.push(join(here, 'results.json'));
  const out = resolve(outAt >= 0 ? args[outAt + 1] : join(here, '..', '..', 'docs', 'benchmarks.md'));
  const results = mergeResults(await Promise.all(files.map(async (f) => JSON.parse(await readFile(resolve(f), 'utf8')))));
  await writeReport(results, out);
  console.error(`wrote ${out} and its figure`);
}
