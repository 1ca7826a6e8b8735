/** The `strata` command. Exit codes: 0 ok, 1 failure, 2 usage error. */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { StrataError, UsageError } from '../errors.js';
import { Strata, type BackupInfo, type BackupRef, type ProgressEvent } from '../strata.js';
import { parseHandle } from '../store/manifest.js';
import { formatBytes, parseArgs, parseDuration, parseSize } from './args.js';

const HELP: Record<string, string> = {
  main: `strata: point-in-time backups of workspace directories

Usage: strata <command> [options]

Commands:
  backup DIR      back up a directory; prints the handle (JSON) on stdout
  restore HANDLE [DIR]
                  restore a backup (HANDLE: handle file, - for stdin, id or name)
  status [DIR]    list workspaces: their backup, layers, unsaved changes
  unmount DIR     take a workspace down (its unsaved changes are kept)
  list            list backups
  inspect ID      show one backup
  delete ID       delete a backup (its data goes at the next gc)
  gc              delete expired backups and unreferenced data

Global options:
  --store URL     file:///path or s3://bucket/prefix (default: $STRATA_STORE, else a local store
                  under $STRATA_HOME)
  --help          help for a command

Run 'strata <command> --help' for a command's options.`,
  backup: `Usage: strata backup DIR [--name NAME] [--ttl DURATION] [--codec zstd|gzip] [--parent HANDLE] [--store URL]

Back up DIR and print the backup's handle (JSON) on stdout. When DIR is a workspace, only what
changed since its last backup or restore is stored, over the backup it came from.
  --parent HANDLE  for a plain directory: store only the differences from this backup
                   (a handle file, - for stdin, an id or a name)
  --name NAME      name the backup; restore by name takes the newest live one
  --ttl DURATION   expiry: 90s, 15m, 12h, 3d (default), 2w, or 'never'
  --codec C        frame compression: zstd (default) or gzip (a .tar.gz-compatible layer)`,
  restore: `Usage: strata restore HANDLE [DIR] [--mode lazy|extract|copy] [--no-hydrate] [--force] [--json] [--store URL]

Restore a backup into DIR (default: the directory it was taken from).
HANDLE is a file holding a handle, '-' to read the handle from stdin, a backup id, or a name.
  --mode lazy      DIR becomes a workspace at once: an overlay mount over a FUSE view of the
                   backup's layers; file data is fetched on first read into a host-wide cache and
                   the rest streams in behind (default where FUSE works); later backups of DIR
                   store only what changed
  --no-hydrate     lazy: fetch only what is read, not the rest in the background
  --cache-size N   lazy: the host-wide chunk cache's budget, e.g. 4G, 500M (default 4G or
                   $STRATA_CACHE_SIZE); taken when the restore daemon starts
  --mode extract   DIR becomes a workspace over the layers unpacked once per host (shared by every
                   workspace)
  --mode copy      write a plain copy of the files into DIR (default when not root)
  --force          replace DIR if it is not empty, or discard a workspace's unsaved changes
  --json           print the result as JSON`,
  status: `Usage: strata status [DIR] [--json]

List workspaces on this host: directory, backup, layers, mounted, unsaved changes.`,
  unmount: `Usage: strata unmount DIR [--discard]

Take the workspace at DIR down. Its unsaved changes are kept: restoring the same backup into DIR
brings the workspace back with them. --discard drops them and forgets the workspace.`,
  list: `Usage: strata list [--name NAME] [--json] [--store URL]

List backups, newest first.`,
  inspect: `Usage: strata inspect ID [--json] [--store URL]

Show a backup: its handle, layers and sizes.`,
  delete: `Usage: strata delete ID [--store URL]

Delete a backup. Its layers are removed by the next 'strata gc' unless other backups use them.`,
  gc: `Usage: strata gc [--dry-run] [--grace DURATION] [--json] [--store URL]

Delete expired backups and every stored layer no live backup references; then the layer
directories on this host that no workspace uses.
  --dry-run          show what would be deleted, delete nothing
  --grace DURATION   keep data younger than this (uploads in progress); default 1h`,
};

interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  stdin: NodeJS.ReadableStream;
}

function progressPrinter(io: Io): ((e: ProgressEvent) => void) | undefined {
  if (!io.stderr.isTTY) return undefined;
  let last = 0;
  return (e) => {
    const now = Date.now();
    if (now - last < 100) return;
    last = now;
    const txt =
      e.phase === 'capture'
        ? `capturing: ${e.entries} entries, ${formatBytes(e.bytes)}`
        : `${e.phase === 'upload' ? 'uploading' : 'restoring'}: ${formatBytes(e.bytes)} of ${formatBytes(e.totalBytes)}`;
    io.stderr.write(`\r\x1b[K${txt}`);
  };
}

async function readStdin(stdin: NodeJS.ReadableStream): Promise<string> {
  const parts: Buffer[] = [];
  for await (const p of stdin as AsyncIterable<Buffer | string>) parts.push(Buffer.from(p));
  return Buffer.concat(parts).toString('utf8');
}

async function handleArg(arg: string, io: Io): Promise<BackupRef> {
  let text: string | undefined;
  if (arg === '-') text = await readStdin(io.stdin);
  else if (arg.includes('/') || arg.endsWith('.json')) {
    try {
      text = await readFile(arg, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read handle file ${arg}: ${(err as Error).message}`);
    }
  }
  if (text === undefined) return arg;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new UsageError(`${arg === '-' ? 'stdin' : arg} does not hold a JSON handle`);
  }
  return parseHandle(json);
}

function printTable(io: Io, rows: BackupInfo[]): void {
  if (rows.length === 0) {
    io.stdout.write('no backups\n');
    return;
  }
  const lines = [['ID', 'NAME', 'CREATED', 'EXPIRES', 'LAYERS', 'SIZE', 'DIR']];
  for (const b of rows) {
    lines.push([
      b.id,
      b.name ?? '-',
      b.createdAt,
      b.expired ? 'expired' : (b.expiresAt ?? 'never'),
      String(b.layers.length),
      formatBytes(b.size),
      b.dir,
    ]);
  }
  const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
  for (const l of lines) io.stdout.write(l.map((c, i) => (i === l.length - 1 ? c : c.padEnd(widths[i]!))).join('  ') + '\n');
}

export async function run(argv: string[], io: Io = process): Promise<number> {
  const [cmd, ...rest] = argv;
  const common = ['store'];
  try {
    if (cmd === undefined || cmd === 'help' || cmd === '--help' || cmd === '-h') {
      const topic = cmd === 'help' && rest[0] && HELP[rest[0]] ? rest[0] : 'main';
      io.stdout.write(HELP[topic] + '\n');
      return cmd === undefined ? 2 : 0;
    }
    if (cmd === '--version') {
      io.stdout.write('strata 0.1.0\n');
      return 0;
    }
    if (!HELP[cmd] || cmd === 'main') throw new UsageError(`unknown command ${JSON.stringify(cmd)} (see strata --help)`);
    const specs: Record<string, Parameters<typeof parseArgs>[1]> = {
      backup: { values: [...common, 'name', 'ttl', 'codec', 'parent'], flags: ['help'], min: 1 },
      restore: { values: [...common, 'mode', 'cache-size'], flags: ['help', 'force', 'json', 'no-hydrate'], min: 1, max: 2 },
      status: { values: common, flags: ['help', 'json'], min: 0, max: 1 },
      unmount: { values: common, flags: ['help', 'discard'], min: 1 },
      list: { values: [...common, 'name'], flags: ['help', 'json'] },
      inspect: { values: common, flags: ['help', 'json'], min: 1 },
      delete: { values: common, flags: ['help'], min: 1 },
      gc: { values: [...common, 'grace'], flags: ['help', 'dry-run', 'json'] },
    };
    const a = parseArgs(rest, specs[cmd]!, cmd);
    if (a.flags.has('help')) {
      io.stdout.write(HELP[cmd] + '\n');
      return 0;
    }
    const codec = a.values.get('codec');
    if (codec !== undefined && codec !== 'zstd' && codec !== 'gzip') throw new UsageError(`--codec must be zstd or gzip, got ${JSON.stringify(codec)}`);
    const strata = new Strata({
      store: a.values.get('store'),
      ...(a.flags.has('no-hydrate') ? { hydrate: false } : {}),
      ...(a.values.has('cache-size') ? { cacheSize: parseSize(a.values.get('cache-size')!, '--cache-size') } : {}),
      ...(codec !== undefined ? { codec } : {}),
      onProgress: progressPrinter(io),
      onWarning: (m) => io.stderr.write(`strata: warning: ${m}\n`),
    });
    const done = (): void => {
      if (io.stderr.isTTY) io.stderr.write('\r\x1b[K');
    };
    switch (cmd) {
      case 'backup': {
        const ttlArg = a.values.get('ttl');
        const handle = await strata.createBackup({
          dir: resolve(a.positionals[0]!),
          ...(a.values.has('name') ? { name: a.values.get('name')! } : {}),
          ...(ttlArg !== undefined ? { ttl: parseDuration(ttlArg, '--ttl') } : {}),
          ...(a.values.has('parent') ? { parent: await handleArg(a.values.get('parent')!, io) } : {}),
        });
        done();
        io.stdout.write(JSON.stringify(handle, null, 2) + '\n');
        return 0;
      }
      case 'restore': {
        const mode = a.values.get('mode');
        if (mode !== undefined && mode !== 'lazy' && mode !== 'extract' && mode !== 'copy') {
          throw new UsageError(`--mode must be lazy, extract or copy, got ${JSON.stringify(mode)}`);
        }
        const ref = await handleArg(a.positionals[0]!, io);
        const r = await strata.restoreBackup(ref, {
          ...(mode !== undefined ? { mode } : {}),
          force: a.flags.has('force'),
          ...(a.positionals[1] !== undefined ? { dir: resolve(a.positionals[1]) } : {}),
        });
        done();
        if (a.flags.has('json')) io.stdout.write(JSON.stringify(r, null, 2) + '\n');
        else {
          io.stdout.write(
            r.mode === 'copy'
              ? `restored ${r.id} into ${r.dir}: ${r.stats.entries} entries, ${formatBytes(r.stats.bytes)} in ${r.stats.ms.toFixed(0)} ms\n`
              : `${r.recovered ? 'recovered workspace' : 'restored'} ${r.id} into ${r.dir} (${r.mode} workspace, ${r.stats.layers} layer(s)) in ${r.stats.ms.toFixed(0)} ms\n`,
          );
        }
        return 0;
      }
      case 'list': {
        const rows = await strata.listBackups(a.values.has('name') ? { name: a.values.get('name')! } : {});
        if (a.flags.has('json')) io.stdout.write(JSON.stringify(rows, null, 2) + '\n');
        else printTable(io, rows);
        return 0;
      }
      case 'inspect': {
        const info = await strata.getBackup(a.positionals[0]!);
        if (a.flags.has('json')) io.stdout.write(JSON.stringify(info, null, 2) + '\n');
        else {
          io.stdout.write(
            [
              `id:        ${info.id}`,
              `name:      ${info.name ?? '-'}`,
              `dir:       ${info.dir}`,
              `created:   ${info.createdAt}`,
              `expires:   ${info.expiresAt ?? 'never'}${info.expired ? ' (expired)' : ''}`,
              `manifest:  ${info.manifestDigest}`,
              `layers:    ${info.layers.length}, ${formatBytes(info.size)}`,
              ...info.layers.map((l, i) => `  ${i}: ${l.digest} ${formatBytes(l.size)} (${l.codec}, ${l.entries} entries, ${formatBytes(l.dataBytes)} of data)`),
              `index:     ${info.index ? `${info.index.digest} ${formatBytes(info.index.size)} (${formatBytes(info.index.rawSize)} unpacked${info.index.inline ? ', inline in the manifest' : ''})` : 'none (made before restore indexes; restores build one from the TOCs)'}`,
              `prefetch:  ${info.prefetch ? `${info.prefetch.refs} frame(s) read first, ${formatBytes(info.prefetch.size)}${info.prefetch.inline ? ', inline in the manifest' : ''}` : 'none (no lazy workspace of this chain recorded its first reads)'}`,
            ].join('\n') + '\n',
          );
        }
        return 0;
      }
      case 'status': {
        const rows = await strata.status(a.positionals[0] !== undefined ? resolve(a.positionals[0]) : undefined);
        if (a.flags.has('json')) io.stdout.write(JSON.stringify(rows, null, 2) + '\n');
        else if (rows.length === 0) io.stdout.write('no workspaces\n');
        else {
          const lines = [['DIR', 'BACKUP', 'MODE', 'LAYERS', 'MOUNTED', 'LOCAL', 'UNSAVED']];
          for (const w of rows) {
            const local = !w.lazy
              ? w.mode === 'lazy' ? '-' : 'all'
              : `${w.lazy.chunks ? Math.floor((100 * w.lazy.cached) / w.lazy.chunks) : 100}%${w.lazy.hydrating ? ' (hydrating)' : ''}`;
            lines.push([w.dir, w.backupId, w.mode, String(w.layers), w.mounted ? 'yes' : 'no', local, `${w.unsavedEntries} entries, ${formatBytes(w.unsavedBytes)}`]);
          }
          const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
          for (const l of lines) io.stdout.write(l.map((c, i) => (i === l.length - 1 ? c : c.padEnd(widths[i]!))).join('  ') + '\n');
          const f = rows.find((w) => w.lazy?.fetcher)?.lazy?.fetcher;
          if (f) {
            io.stdout.write(`restore daemon: ${formatBytes(f.bytesFetched)} fetched in ${f.gets} requests; ${f.misses} misses, ${f.hits + f.touches} cache hits, ${f.errors} errors\n`);
          }
          for (const w of rows) for (const e of w.lazy?.errors ?? []) io.stdout.write(`${w.dir}: ${e}\n`);
        }
        return 0;
      }
      case 'unmount': {
        const r = await strata.unmount(resolve(a.positionals[0]!), { discard: a.flags.has('discard') });
        io.stdout.write(r.kept ? `unmounted ${r.dir}; unsaved changes kept (restore the same backup there to bring them back)\n` : `unmounted ${r.dir}; workspace discarded\n`);
        return 0;
      }
      case 'delete':
        await strata.deleteBackup(a.positionals[0]!);
        io.stdout.write(`deleted ${a.positionals[0]}\n`);
        return 0;
      case 'gc': {
        const graceArg = a.values.get('grace');
        const grace = graceArg === undefined ? undefined : parseDuration(graceArg, '--grace', true);
        const r = await strata.gc({ dryRun: a.flags.has('dry-run'), ...(grace !== undefined && grace !== null ? { graceMs: grace * 1000 } : {}) });
        if (a.flags.has('json')) io.stdout.write(JSON.stringify(r, null, 2) + '\n');
        else {
          const verb = r.dryRun ? 'would delete' : 'deleted';
          for (const id of r.expiredManifests) io.stdout.write(`${verb} expired backup ${id}\n`);
          for (const b of r.deletedBlobs) io.stdout.write(`${verb} ${b.key} (${formatBytes(b.size)})\n`);
          for (const h of r.layerDirs) io.stdout.write(`${verb} unused layer directory ${h.slice(0, 12)}\n`);
          for (const w of r.incompleteWrites) io.stdout.write(`${verb} unfinished upload of ${w.key} (started ${w.started})\n`);
          io.stdout.write(
            `${verb} ${r.expiredManifests.length} backup(s) and ${r.deletedBlobs.length} blob(s), ${formatBytes(r.freedBytes)}; kept ${r.keptBlobs} blob(s)\n`,
          );
        }
        return 0;
      }
    }
    return 2;
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`strata: usage: ${err.message}\n`);
      return 2;
    }
    if (err instanceof StrataError) {
      io.stderr.write(`strata: error ${err.code}: ${err.message}\n`);
      return 1;
    }
    io.stderr.write(`strata: error: ${(err as Error)?.stack ?? String(err)}\n`);
    return 1;
  }
}
