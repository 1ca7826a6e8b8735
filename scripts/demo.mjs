#!/usr/bin/env node
// `make demo`: the main job on the embedded local store. Makes a sample workspace shaped like a
// JavaScript repo after `npm install`, backs it up with the strata CLI, restores it elsewhere,
// checks the restore matches, and prints the handle and the timings.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const base = join(repo, '.strata-demo');
const ws = join(base, 'workspace');
const out = join(base, 'restored');
// A previous run's workspace may still be mounted: take it down first.
for (const line of (await import('node:fs')).readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
  const mp = line.split(' ')[4];
  if (mp && mp.startsWith(base + '/')) spawnSync('umount', ['-l', mp]);
}
rmSync(base, { recursive: true, force: true });
mkdirSync(base, { recursive: true });
const env = { ...process.env, STRATA_HOME: join(base, 'home') };
delete env.STRATA_STORE;

function strata(args, opts = {}) {
  const t = performance.now();
  const r = spawnSync(process.execPath, [join(repo, 'bin', 'strata.js'), ...args], { env, encoding: 'utf8', ...opts });
  const ms = performance.now() - t;
  if (r.status !== 0) {
    process.stderr.write(r.stderr);
    throw new Error(`strata ${args.join(' ')} exited ${r.status}`);
  }
  return { stdout: r.stdout, ms };
}

// A sample workspace: source, a .git directory, node_modules with many small files and .bin links.
let files = 0;
let bytes = 0;
function put(rel, content, mode) {
  const p = join(ws, rel);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, content);
  if (mode) chmodSync(p, mode);
  files++;
  bytes += Buffer.byteLength(content);
}
put('package.json', JSON.stringify({ name: 'demo-app', version: '1.0.0', dependencies: { left: '1', right: '1' } }, null, 2));
put('src/index.js', "import { pad } from 'left';\nconsole.log(pad('hello', 10));\n");
put('README.md', '# demo app\n');
put('.git/HEAD', 'ref: refs/heads/main\n');
put('.git/config', '[core]\n\trepositoryformatversion = 0\n');
for (let i = 0; i < 64; i++) put(`.git/objects/${(i * 7).toString(16).padStart(2, '0')}/${'ab'.repeat(19)}`, 'x'.repeat(200 + i));
for (let p = 0; p < 60; p++) {
  const name = `pkg-${p}`;
  put(`node_modules/${name}/package.json`, JSON.stringify({ name, version: `1.${p}.0`, main: 'index.js', bin: { [name]: 'bin/cli.js' } }));
  put(`node_modules/${name}/bin/cli.js`, `#!/usr/bin/env node\nrequire('../index.js');\n`, 0o755);
  for (let f = 0; f < 25; f++) {
    put(`node_modules/${name}/lib/mod-${f}.js`, `// ${name} module ${f}\n` + `export const v${f} = ${JSON.stringify('v'.repeat(40 + ((p * f) % 900)))};\n`.repeat(8));
  }
  mkdirSync(join(ws, 'node_modules/.bin'), { recursive: true });
  symlinkSync(`../${name}/bin/cli.js`, join(ws, `node_modules/.bin/${name}`));
}
put('assets/logo.bin', Buffer.alloc(6 * 1024 * 1024, 1));
console.log(`sample workspace: ${ws}\n  ${files} files, ${(bytes / 1024 / 1024).toFixed(1)} MiB, plus ${60} symlinks in node_modules/.bin\n`);

console.log('$ strata backup workspace --name demo');
const backup = strata(['backup', ws, '--name', 'demo']);
const handle = JSON.parse(backup.stdout);
console.log(backup.stdout.trimEnd());
console.log(`  (${backup.ms.toFixed(0)} ms)\n`);

console.log('$ strata list');
console.log(strata(['list']).stdout.trimEnd() + '\n');

console.log('$ strata restore demo restored');
const restore = strata(['restore', 'demo', out]);
console.log(restore.stdout.trimEnd());
console.log(`  (${restore.ms.toFixed(0)} ms, whole command)\n`);
{
  const { readdirSync, readFileSync } = await import('node:fs');
  let t = performance.now();
  const names = readdirSync(out);
  const lsMs = performance.now() - t;
  t = performance.now();
  readFileSync(join(out, 'src/index.js'));
  console.log(`ls of the restored root: ${names.length} entries in ${lsMs.toFixed(1)} ms; first file read in ${(performance.now() - t).toFixed(1)} ms\n`);
}
if (/lazy workspace/.test(restore.stdout)) {
  console.log('$ strata status    # a lazy workspace: data streams in behind the reads');
  console.log(strata(['status']).stdout.trimEnd() + '\n');
}

console.log('$ diff -r --no-dereference workspace restored');
execFileSync('diff', ['-r', '--no-dereference', ws, out], { stdio: 'inherit' });
console.log('  identical\n');

const isWorkspace = /workspace/.test(restore.stdout);
if (isWorkspace) {
  console.log('# edit one file in the restored workspace, then back it up again');
  writeFileSync(join(out, 'src/index.js'), "console.log('edited after restore');\n");
  console.log('$ strata backup restored');
  const inc = strata(['backup', out]);
  const incHandle = JSON.parse(inc.stdout);
  const layers = JSON.parse(strata(['inspect', incHandle.id, '--json']).stdout).layers;
  console.log(`  ${incHandle.id}: ${layers.length} layers; the new one is ${layers[layers.length - 1].size} bytes (the parent's ${layers[0].size} bytes are not uploaded again) (${inc.ms.toFixed(0)} ms)\n`);
  console.log('$ strata unmount restored --discard');
  console.log(strata(['unmount', out, '--discard']).stdout.trimEnd() + '\n');
}
console.log(`handle id ${handle.id}; state under ${join(base, 'home')}`);
