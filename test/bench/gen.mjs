#!/usr/bin/env node
// Deterministic workspace generator for the benchmarks (docs/benchmarks.md): a tree shaped like a
// JavaScript repository after `npm install`. Many small files in deep node_modules trees (scoped
// packages, nested node_modules up to three levels), a few large files (native binaries, bundled
// JS, source maps, a git pack), symlinks in node_modules/.bin, a .git directory, and an app whose
// `node app.js` loads a realistic subset of the packages: package.json, index.js and some lib/
// modules of every package in the require closure, as Node's resolver reads them.
//
//   node test/bench/gen.mjs DIR [--size small|medium|large|FILES:MB] [--only node_modules]
//
// The same preset always yields the same bytes (content, names, modes, link targets), so a tree
// can be regenerated in place (the "delete node_modules and npm install again" figure). Plan and
// content are split: plan() is cheap and complete; write() materialises all or part of it.
import { createCipheriv, createHash } from 'node:crypto';
import { chmodSync, closeSync, mkdirSync, openSync, rmSync, symlinkSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';

export const GENERATOR_VERSION = 3;

export const PRESETS = {
  small: { files: 5_000, bytes: 100e6 },
  medium: { files: 20_000, bytes: 500e6 },
  large: { files: 100_000, bytes: 2_000e6 },
};

/** 'small' | 'medium' | 'large' | 'FILES:MB' (e.g. 2000:40) to { name, files, bytes }. */
export function parseSize(s) {
  if (PRESETS[s]) return { name: s, ...PRESETS[s] };
  const m = /^(\d+):(\d+(?:\.\d+)?)$/.exec(s);
  if (!m) throw new Error(`unknown size ${JSON.stringify(s)}: small, medium, large or FILES:MB`);
  return { name: s, files: Number(m[1]), bytes: Number(m[2]) * 1e6 };
}

// ---- deterministic randomness -------------------------------------------------------------

function seedOf(str) {
  const h = createHash('sha256').update(String(str)).digest();
  return [h.readUInt32LE(0), h.readUInt32LE(4), h.readUInt32LE(8), h.readUInt32LE(12)];
}

/** sfc32: small, fast, good enough for shaping data. */
export function rng(seed) {
  let [a, b, c, d] = seedOf(seed);
  const next = () => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
    const t = (a + b) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    d = (d + 1) | 0;
    const r = (t + d) | 0;
    c = (c + r) | 0;
    return (r >>> 0) / 4294967296;
  };
  for (let i = 0; i < 12; i++) next();
  const r = {
    next,
    int: (n) => Math.floor(next() * n),
    range: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (arr) => arr[Math.floor(next() * arr.length)],
    chance: (p) => next() < p,
    normal: () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next()),
    logNormal: (median, sigma) => median * Math.exp(sigma * r.normal()),
  };
  return r;
}

/** Incompressible but deterministic bytes (AES-CTR keystream). */
function randomBytesOf(seed, n) {
  const key = createHash('sha256').update(`key:${seed}`).digest().subarray(0, 16);
  const iv = createHash('sha256').update(`iv:${seed}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, iv).update(Buffer.alloc(n));
}

// ---- vocabulary -----------------------------------------------------------------------------

const RESERVED = new Set(
  ('break case catch class const continue debugger default delete do else enum export extends false finally for function if ' +
    'import in instanceof new null return super switch this throw true try typeof var void while with yield let static ' +
    'implements interface package private protected public await async of arguments eval undefined require module exports')
    .split(' '),
);
const SYL = ['ka', 'lo', 'mi', 'ren', 'tor', 'ex', 'al', 'ver', 'pro', 'ject', 'get', 'set', 'val', 'num', 'str', 'buf', 'node',
  'path', 'file', 'read', 'write', 'parse', 'emit', 'load', 'cache', 'map', 'list', 'item', 'key', 'opt', 'conf', 'res', 'req',
  'tok', 'lex', 'ast', 'walk', 'visit', 'scope', 'bind', 'call', 'wrap', 'hook', 'plug', 'sync', 'flag', 'mode', 'size', 'byte',
  'char', 'code', 'line', 'col', 'pos', 'span', 'err', 'warn', 'log', 'debug', 'trace', 'meta', 'data', 'json', 'yaml', 'http'];
const WORDS = ('the a of to and in is it for that on with as this by be are from or an at which not have has was can will ' +
  'module function value option returns object string number array default config file path when if use see also note ' +
  'package install version license source build test run error warning support api type interface method class ' +
  'property event stream buffer callback promise async sync parse format output input plugin loader resolve cache')
  .split(' ');

function makeIdents() {
  const r = rng('idents');
  const out = new Set();
  while (out.size < 3000) {
    const n = r.range(2, 3);
    let s = '';
    for (let i = 0; i < n; i++) {
      const y = r.pick(SYL);
      s += i === 0 ? y : y[0].toUpperCase() + y.slice(1);
    }
    if (!RESERVED.has(s)) out.add(s);
  }
  return [...out];
}
const IDENTS = makeIdents();
const OPS = ['===', '!==', '<', '>', '<=', '>='];

/** Syntactically valid JS (function declarations whose bodies never run), about `size` bytes. */
function jsBody(r, size, prefix = '') {
  const parts = [];
  let len = 0;
  let fn = 0;
  const id = () => IDENTS[r.int(IDENTS.length)];
  while (len < size) {
    const name = `${id()}${prefix}${fn++}`;
    const head = `function ${name}(${id()}, ${id()}) {\n`;
    parts.push(head);
    len += head.length;
    const lines = r.range(4, 24);
    for (let i = 0; i < lines && len < size; i++) {
      let l;
      switch (r.int(7)) {
        case 0: l = `  var ${id()} = ${id()}(${id()}, ${r.int(1000)});\n`; break;
        case 1: l = `  if (${id()} ${r.pick(OPS)} ${r.int(256)}) { ${id()} = ${id()} + ${r.int(64)}; }\n`; break;
        case 2: l = `  // ${r.pick(WORDS)} ${r.pick(WORDS)} ${r.pick(WORDS)} ${r.pick(WORDS)} ${id()} ${r.pick(WORDS)}\n`; break;
        case 3: l = `  ${id()}.${id()}('${r.pick(WORDS)} ${r.pick(WORDS)}', ${id()});\n`; break;
        case 4: l = `  for (var i = 0; i < ${id()}.length; i++) ${id()}.push(${id()}[i]);\n`; break;
        case 5: l = `  var ${id()} = { ${id()}: ${r.int(100)}, ${id()}: '${id()}', ${id()}: ${id()} };\n`; break;
        default: l = `  return ${id()}.${id()}(${id()});\n`;
      }
      parts.push(l);
      len += l.length;
    }
    parts.push('}\n');
    len += 2;
  }
  return parts.join('');
}

function prose(r, size) {
  const parts = [];
  let len = 0;
  while (len < size) {
    let l;
    if (r.chance(0.1)) l = `\n## ${r.pick(WORDS)} ${r.pick(WORDS)}\n\n`;
    else if (r.chance(0.1)) l = `\`\`\`js\nconst ${IDENTS[r.int(IDENTS.length)]} = require('${IDENTS[r.int(IDENTS.length)]}');\n\`\`\`\n`;
    else {
      const n = r.range(6, 18);
      const w = [];
      for (let i = 0; i < n; i++) w.push(r.chance(0.15) ? `\`${IDENTS[r.int(IDENTS.length)]}\`` : r.pick(WORDS));
      l = w.join(' ') + '.\n';
    }
    parts.push(l);
    len += l.length;
  }
  return parts.join('');
}

function dts(r, size) {
  const parts = [];
  let len = 0;
  const id = () => IDENTS[r.int(IDENTS.length)];
  while (len < size) {
    const l = r.chance(0.3)
      ? `export interface ${id()} { ${id()}: string; ${id()}?: number; ${id()}(${id()}: ${id()}): void; }\n`
      : `export declare function ${id()}(${id()}: ${r.pick(['string', 'number', 'Buffer', 'unknown'])}, ${id()}?: ${id()}): ${r.pick(['void', 'string', 'Promise<void>', 'boolean'])};\n`;
    parts.push(l);
    len += l.length;
  }
  return parts.join('');
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
function sourceMap(r, size, file) {
  const head = `{"version":3,"file":"${file}","sources":["../src/index.ts"],"names":[],"mappings":"`;
  const n = Math.max(0, size - head.length - 2);
  const a = new Array(n);
  for (let i = 0; i < n; i++) {
    const x = r.next();
    a[i] = x < 0.08 ? ',' : x < 0.1 ? ';' : B64[(x * 4096) & 31];
  }
  return head + a.join('') + '"}';
}

/** Machine code-like: half incompressible 4 KiB blocks, half low-entropy ones. */
function binaryLike(seed, size) {
  const out = randomBytesOf(seed, size);
  const r = rng(`bin:${seed}`);
  for (let off = 0; off < size; off += 4096) {
    if (r.chance(0.5)) continue;
    const end = Math.min(size, off + 4096);
    for (let i = off; i < end; i++) out[i] &= 0x0f;
  }
  return out;
}

// ---- the plan ---------------------------------------------------------------------------------

/**
 * Plan a workspace. Entries: { type: 'dir'|'file'|'symlink', path, mode?, target?, kind?, size?,
 * seed?, text? }, sorted so parents come first. `workload` lists the files `node app.js` reads.
 */
export function plan(spec) {
  const { files: targetFiles, bytes: targetBytes } = spec;
  const r = rng(`plan:${targetFiles}:${targetBytes}`);
  const entries = [];
  const dirs = new Set(['']);
  const addDir = (p) => {
    if (dirs.has(p)) return;
    addDir(dirname(p) === '.' ? '' : dirname(p));
    dirs.add(p);
    entries.push({ type: 'dir', path: p, mode: 0o755 });
  };
  let nFiles = 0;
  const addFile = (path, f) => {
    addDir(dirname(path) === '.' ? '' : dirname(path));
    const e = { type: 'file', path, mode: 0o644, ...f };
    entries.push(e);
    nFiles++;
    return e;
  };
  const addLink = (path, target) => {
    addDir(dirname(path));
    entries.push({ type: 'symlink', path, target });
  };

  const nLarge = Math.max(6, Math.round(targetFiles / 1500));
  const smallBudget = Math.min(0.4 * targetBytes, targetFiles * 8000);
  const scaled = []; // files whose size is scaled to the small budget afterwards

  // Root of the project.
  const rootFiles = ['README.md', '.gitignore', '.editorconfig', 'tsconfig.json', '.eslintrc.json'];
  for (const f of rootFiles) scaled.push(addFile(f, { kind: f.endsWith('.md') ? 'md' : 'json', size: r.logNormal(800, 0.6), seed: f }));
  const nSrc = Math.max(10, Math.round(targetFiles * 0.01));
  for (let i = 0; i < nSrc; i++) {
    const p = `src/${r.pick(['components', 'lib', 'routes', 'util', 'models'])}/${IDENTS[r.int(IDENTS.length)]}${i}.${r.pick(['js', 'ts', 'jsx'])}`;
    scaled.push(addFile(p, { kind: 'js', size: r.logNormal(2500, 0.8), seed: p }));
  }

  // .git: hooks, refs, loose objects, index, and (among the large files) a pack.
  for (const f of ['HEAD', 'config', 'description', 'info/exclude', 'refs/heads/main', 'packed-refs', 'logs/HEAD', 'ORIG_HEAD', 'FETCH_HEAD']) {
    scaled.push(addFile(`.git/${f}`, { kind: 'md', size: r.logNormal(200, 0.5), seed: f }));
  }
  for (const h of ['applypatch-msg', 'commit-msg', 'post-update', 'pre-applypatch', 'pre-commit', 'pre-push', 'pre-rebase', 'prepare-commit-msg', 'update']) {
    scaled.push(addFile(`.git/hooks/${h}.sample`, { kind: 'md', size: r.logNormal(1500, 0.5), seed: h, mode: 0o755 }));
  }
  const nLoose = Math.round(targetFiles * 0.02);
  for (let i = 0; i < nLoose; i++) {
    const hex = createHash('sha1').update(`obj${i}`).digest('hex');
    addFile(`.git/objects/${hex.slice(0, 2)}/${hex.slice(2)}`, { kind: 'rand', size: Math.round(r.logNormal(600, 1)) + 20, seed: hex, mode: 0o444 });
  }
  addFile('.git/index', { kind: 'rand', size: 100 * nSrc + 4096, seed: 'index' });

  // node_modules: packages until the file budget is spent.
  const budgetFiles = targetFiles - nLarge - 2; // app.js, package.json, package-lock.json come last
  const packages = []; // { name, dir, deps: [pkg], eager: [pkg], libs: [path], index, pkgJson, nested }
  const topNames = new Set();
  const binLinks = [];

  const makePackage = (name, dir, depth, pr) => {
    const pkg = { name, dir, depth, libs: [], deps: [], nested: [], bin: null };
    packages.push(pkg);
    const size = r.chance(0.06) ? r.range(30, 150) : r.range(2, 12);
    const nLib = Math.max(1, size - 3);
    const libDir = r.pick(['lib', 'dist', 'build', 'lib']);
    for (let i = 0; i < nLib; i++) {
      const sub = r.chance(0.3) ? `${libDir}/${IDENTS[r.int(IDENTS.length)]}` : libDir;
      const p = `${dir}/${sub}/${IDENTS[r.int(IDENTS.length)]}-${i}.js`;
      pkg.libs.push(p);
      scaled.push(addFile(p, { kind: 'js', size: r.logNormal(2500, 1.0), seed: p }));
      if (r.chance(0.25)) scaled.push(addFile(p.replace(/\.js$/, '.d.ts'), { kind: 'dts', size: r.logNormal(900, 0.8), seed: `${p}.d` }));
      if (r.chance(0.1)) scaled.push(addFile(p + '.map', { kind: 'map', size: r.logNormal(3000, 0.8), seed: `${p}.map` }));
    }
    scaled.push(addFile(`${dir}/README.md`, { kind: 'md', size: r.logNormal(3000, 0.9), seed: `${dir}/README` }));
    scaled.push(addFile(`${dir}/LICENSE`, { kind: 'md', size: 1080, seed: 'LICENSE' }));
    if (r.chance(0.3)) scaled.push(addFile(`${dir}/CHANGELOG.md`, { kind: 'md', size: r.logNormal(6000, 1), seed: `${dir}/CHANGELOG` }));
    if (r.chance(0.12)) {
      pkg.bin = `bin/${name.replace(/^@[^/]+\//, '')}.js`;
      addFile(`${dir}/${pkg.bin}`, { kind: 'text', text: `#!/usr/bin/env node\n'use strict';\nrequire('../index.js');\n`, mode: 0o755 });
      binLinks.push(pkg);
    }
    pkg.index = addFile(`${dir}/index.js`, { kind: 'text', text: '' }); // filled in below
    pkg.pkgJson = addFile(`${dir}/package.json`, { kind: 'text', text: '' });
    // Nested node_modules: a private copy of a dependency (another version), up to three deep.
    if (depth < 3 && r.chance(depth === 0 ? 0.12 : 0.3)) {
      const n = r.range(1, 3);
      for (let i = 0; i < n; i++) {
        const nm = `${IDENTS[r.int(IDENTS.length)]}-${r.int(1000)}`;
        pkg.nested.push(makePackage(nm, `${dir}/node_modules/${nm}`, depth + 1, pr));
      }
    }
    return pkg;
  };

  const top = [];
  while (nFiles < budgetFiles) {
    let name;
    do {
      name = r.chance(0.15) ? `@${r.pick(SYL)}${r.pick(SYL)}/${IDENTS[r.int(IDENTS.length)]}` : `${IDENTS[r.int(IDENTS.length)]}-${r.pick(SYL)}`;
    } while (topNames.has(name));
    topNames.add(name);
    top.push(makePackage(name, `node_modules/${name}`, 0, r));
  }
  for (const pkg of binLinks) {
    const base = pkg.dir.slice(0, pkg.dir.lastIndexOf('node_modules/') + 'node_modules'.length);
    const rel = pkg.dir.slice(base.length + 1);
    addLink(`${base}/.bin/${pkg.name.replace(/^@[^/]+\//, '')}`, `../${rel}/${pkg.bin}`);
  }

  // Dependencies: top-level packages depend on later ones in a window (a DAG); nested packages
  // are their parent's. index.js requires some libs and one or two deps eagerly (at load time);
  // the rest lazily, inside functions that never run, as real packages do.
  top.forEach((pkg, i) => {
    const n = r.range(0, 4);
    for (let k = 0; k < n; k++) {
      const j = i + 1 + r.int(40);
      if (j < top.length && !pkg.deps.includes(top[j])) pkg.deps.push(top[j]);
    }
  });
  for (const pkg of packages) {
    pkg.deps.push(...pkg.nested);
    pkg.eager = pkg.deps.filter((d, k) => k < 2 && r.chance(0.6));
    pkg.eagerLibs = pkg.libs.filter((_, k) => k === 0 || r.chance(0.35));
    const rel = (p) => './' + p.slice(pkg.dir.length + 1);
    const lines = ["'use strict';"];
    pkg.eagerLibs.forEach((p, k) => lines.push(`var lib${k} = require('${rel(p)}');`));
    pkg.eager.forEach((d, k) => lines.push(`var dep${k} = require('${d.name}');`));
    lines.push('function later() {');
    for (const d of pkg.deps) if (!pkg.eager.includes(d)) lines.push(`  return require('${d.name}');`);
    for (const p of pkg.libs) if (!pkg.eagerLibs.includes(p)) lines.push(`  require('${rel(p)}');`);
    lines.push('}');
    lines.push(`module.exports = { name: ${JSON.stringify(pkg.name)}, later: later, libs: ${pkg.eagerLibs.length}, deps: [${pkg.eager.map((_, k) => `dep${k}`).join(', ')}] };`);
    pkg.index.text = lines.join('\n') + '\n';
    const pj = { name: pkg.name, version: `${r.range(0, 9)}.${r.range(0, 30)}.${r.range(0, 20)}`, description: `${r.pick(WORDS)} ${r.pick(WORDS)} ${r.pick(WORDS)}`, main: 'index.js', license: 'MIT', dependencies: Object.fromEntries(pkg.deps.map((d) => [d.name, `^${r.range(1, 9)}.0.0`])) };
    if (pkg.bin) pj.bin = { [pkg.name.replace(/^@[^/]+\//, '')]: pkg.bin };
    pkg.pkgJson.text = JSON.stringify(pj, null, 2) + '\n';
  }

  // The app requires top-level packages in order until its closure reads ~10% of the files.
  const loaded = new Set();
  const visit = (pkg) => {
    if (loaded.has(pkg)) return;
    loaded.add(pkg);
    for (const d of pkg.eager) visit(d);
  };
  const appDeps = [];
  const workloadTarget = 0.1 * (targetFiles);
  const countLoaded = () => [...loaded].reduce((n, p) => n + 2 + p.eagerLibs.length, 0);
  for (const pkg of top) {
    if (countLoaded() >= workloadTarget) break;
    appDeps.push(pkg);
    visit(pkg);
  }
  const app = ["'use strict';", '// The benchmark workload: load the packages the app uses, as `node app.js` would.', 'var loaded = [];'];
  for (const p of appDeps) app.push(`loaded.push(require('${p.name}'));`);
  app.push("var src = require('./src/app-config.json');");
  app.push("console.log('loaded ' + loaded.length + ' packages for ' + src.name);");
  addFile('src/app-config.json', { kind: 'text', text: JSON.stringify({ name: 'bench-app', packages: appDeps.length }) + '\n' });
  addFile('app.js', { kind: 'text', text: app.join('\n') + '\n' });
  addFile('package.json', {
    kind: 'text',
    text: JSON.stringify({ name: 'bench-app', version: '1.0.0', private: true, main: 'app.js', dependencies: Object.fromEntries(top.map((p) => [p.name, '*'])) }, null, 2) + '\n',
  });
  const lock = { name: 'bench-app', lockfileVersion: 3, packages: Object.fromEntries(packages.map((p) => [p.dir, { version: '1.0.0', resolved: `https://registry.npmjs.org/${p.name}/-/${p.name}-1.0.0.tgz`, integrity: `sha512-${createHash('sha512').update(p.dir).digest('base64')}` }])) };
  addFile('package-lock.json', { kind: 'text', text: JSON.stringify(lock, null, 2) + '\n' });

  // Scale the text files to the small-file budget.
  const fixedBytes = entries.reduce((n, e) => n + (e.type === 'file' && e.text !== undefined ? Buffer.byteLength(e.text) : 0), 0) +
    entries.reduce((n, e) => n + (e.kind === 'rand' ? e.size : 0), 0);
  const scaledSum = scaled.reduce((n, e) => n + e.size, 0);
  const k = Math.max(0.05, (smallBudget - fixedBytes) / scaledSum);
  for (const e of scaled) e.size = Math.max(64, Math.min(1 << 20, Math.round(e.size * k)));
  const smallBytes = entries.reduce((n, e) => n + (e.type === 'file' ? (e.text !== undefined ? Buffer.byteLength(e.text) : e.size) : 0), 0);

  // Large files get the rest: a git pack, native binaries, bundles, source maps.
  const largeBudget = Math.max(nLarge * 1e6, targetBytes - smallBytes);
  const kinds = [
    { share: 0.25, make: (i) => ({ path: `.git/objects/pack/pack-${createHash('sha1').update(`pack${i}`).digest('hex')}.pack`, kind: 'rand', mode: 0o444 }) },
    { share: 0.4, make: (i) => ({ path: `node_modules/@native${i}/linux-x64/bin/tool${i}`, kind: 'bin', mode: 0o755 }) },
    { share: 0.25, make: (i) => ({ path: `node_modules/bundler${i}/lib/bundle${i}.js`, kind: 'js' }) },
    { share: 0.1, make: (i) => ({ path: `node_modules/bundler${i}/lib/bundle${i}.js.map`, kind: 'map' }) },
  ];
  // Spread nLarge files over the kinds by share; each kind's files split its bytes unevenly.
  let made = 0;
  kinds.forEach((kd, ki) => {
    const n = ki === kinds.length - 1 ? Math.max(1, nLarge - made) : Math.max(1, Math.round(nLarge * kd.share));
    made += n;
    const weights = Array.from({ length: n }, () => r.logNormal(1, 0.5));
    const wsum = weights.reduce((a, b) => a + b, 0);
    for (let i = 0; i < n; i++) {
      const f = kd.make(i);
      addFile(f.path, { kind: f.kind, size: Math.round((largeBudget * kd.share * weights[i]) / wsum), seed: f.path, mode: f.mode ?? 0o644, large: true });
    }
  });

  // Parents before children; otherwise keep the plan's order (write() makes directories anyway).
  const files = entries.filter((e) => e.type === 'file');
  const workload = [];
  for (const p of loaded) {
    workload.push(p.pkgJson.path, p.index.path, ...p.eagerLibs);
  }
  workload.push('app.js', 'package.json', 'src/app-config.json');
  const sizeOf = new Map(files.map((e) => [e.path, e.text !== undefined ? Buffer.byteLength(e.text) : e.size]));
  return {
    spec,
    entries,
    stats: {
      files: files.length,
      dirs: entries.filter((e) => e.type === 'dir').length,
      symlinks: entries.filter((e) => e.type === 'symlink').length,
      bytes: [...sizeOf.values()].reduce((a, b) => a + b, 0),
      largeFiles: files.filter((e) => e.large).length,
      packages: packages.length,
      nodeModulesFiles: files.filter((e) => e.path.startsWith('node_modules/')).length,
      maxDepth: entries.reduce((m, e) => Math.max(m, e.path.split('/').length), 0),
    },
    workload: { files: workload, bytes: workload.reduce((n, p) => n + (sizeOf.get(p) ?? 0), 0), packages: loaded.size, appDeps: appDeps.length },
  };
}

function contentOf(e) {
  if (e.text !== undefined) return Buffer.from(e.text);
  switch (e.kind) {
    case 'rand':
      return randomBytesOf(e.seed, e.size);
    case 'bin':
      return binaryLike(e.seed, e.size);
    case 'map':
      return Buffer.from(sourceMap(rng(e.seed), e.size, e.path.split('/').pop()).slice(0, e.size));
    case 'dts':
      return Buffer.from(dts(rng(e.seed), e.size).slice(0, e.size));
    case 'md':
      return Buffer.from(prose(rng(e.seed), e.size).slice(0, e.size));
    case 'json':
      return Buffer.from(JSON.stringify({ note: prose(rng(e.seed), Math.max(0, e.size - 12)) }).slice(0, e.size));
    case 'js': {
      // Cut at a function boundary so every generated module parses.
      const s = jsBody(rng(e.seed), e.size);
      return Buffer.from(s);
    }
    default:
      throw new Error(`unknown kind ${e.kind}`);
  }
}

const LARGE_PIECE = 8 << 20;

/** Write a planned tree into dir (which must not hold it yet). `only`: a top-level name to write alone. */
export function write(p, dir, { only } = {}) {
  mkdirSync(dir, { recursive: true });
  const inScope = (path) => !only || path === only || path.startsWith(only + '/');
  let bytes = 0;
  for (const e of p.entries) {
    if (!inScope(e.path)) continue;
    const full = join(dir, e.path);
    if (e.type === 'dir') mkdirSync(full, { recursive: true, mode: e.mode });
    else if (e.type === 'symlink') symlinkSync(e.target, full);
    else {
      mkdirSync(dirname(full), { recursive: true });
      const fd = openSync(full, 'w', e.mode);
      try {
        if (e.large && e.kind !== 'js' && e.kind !== 'map') {
          // Large binary files in pieces, each seeded by its offset (bounded memory).
          for (let off = 0; off < e.size; off += LARGE_PIECE) {
            const n = Math.min(LARGE_PIECE, e.size - off);
            const buf = e.kind === 'rand' ? randomBytesOf(`${e.seed}@${off}`, n) : binaryLike(`${e.seed}@${off}`, n);
            writeSync(fd, buf);
          }
          bytes += e.size;
        } else {
          const buf = contentOf(e);
          writeSync(fd, buf);
          bytes += buf.length;
        }
      } finally {
        closeSync(fd);
      }
      chmodSync(full, e.mode);
    }
  }
  return bytes;
}

/** Remove a top-level part (e.g. node_modules) of a generated tree and write it again. */
export function regenerate(p, dir, only) {
  rmSync(join(dir, only), { recursive: true, force: true });
  return write(p, dir, { only });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const dir = args.find((a) => !a.startsWith('--'));
  const at = (f) => (args.indexOf(f) >= 0 ? args[args.indexOf(f) + 1] : undefined);
  if (!dir) {
    console.error('usage: gen.mjs DIR [--size small|medium|large|FILES:MB] [--only node_modules]');
    process.exit(2);
  }
  const t = performance.now();
  const p = plan(parseSize(at('--size') ?? 'small'));
  const written = write(p, dir, { only: at('--only') });
  console.log(JSON.stringify({ ...p.stats, written, workload: { files: p.workload.files.length, bytes: p.workload.bytes, packages: p.workload.packages }, ms: Math.round(performance.now() - t) }));
}
