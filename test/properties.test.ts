/**
 * Property-based tests (fast-check) of the parsers that read untrusted bytes and of path
 * handling (issue 6). Every property runs a fixed number of cases from a fixed seed, so CI time
 * is bounded (a few seconds each) and a failure reproduces; FC_SEED / FC_RUNS override them for
 * a longer local hunt, e.g. FC_RUNS=20000 npx vitest run test/properties.test.ts.
 *
 *   - decodeToc, on arbitrary bytes, arbitrary JSON and mutated valid TOCs, either returns a TOC
 *     that satisfies every documented invariant (clean paths, no duplicates, chunks in bounds and
 *     in order...) or throws a StrataError; never anything else. buildView over accepted TOCs
 *     likewise, and every node it builds has a clean path under a directory.
 *   - encodeToc -> decodeToc round-trips arbitrary valid TOCs (names with any bytes).
 *   - decodeFooter, on arbitrary and on damaged footers, returns a self-consistent footer or
 *     throws a StrataError; encodeFooter -> decodeFooter round-trips.
 *   - checkLayerPath accepts exactly the clean relative paths (an independent oracle).
 *   - tar headers: names and link targets with any bytes survive GNU tar.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StrataError, UnsafePathError } from '../src/errors.js';
import { decodeFooter, encodeFooter, type Footer, footerSize } from '../src/format/footer.js';
import { baseOf, checkLayerPath, decodeUtf8, displayPath, encodeUtf8, joinPath, parentOf } from '../src/format/paths.js';
import { type Chunk, decodeToc, encodeToc, type EntryType, MAX_CHUNK_SIZE, type Toc, type TocEntry } from '../src/format/toc.js';
import { buildView, walkView } from '../src/format/view.js';
import { type CraftEntry, craftLayer } from './helpers/craft.js';

const run = promisify(execFile);
const SEED = Number(process.env.FC_SEED ?? 20261128);
const RUNS = process.env.FC_RUNS ? Number(process.env.FC_RUNS) : undefined;
const params = (numRuns: number): fc.Parameters<unknown> => ({ seed: SEED, numRuns: RUNS ?? numRuns, endOnFailure: true });

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-props-'));
});
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

// ---- oracles ----------------------------------------------------------------------------------

/** Clean relative path, by the letter of docs/format.md, written independently of paths.ts. */
function isClean(p: string): boolean {
  if (p === '.') return true;
  if (p.length === 0 || p.length > 65535 || p.includes('\0') || p.startsWith('/')) return false;
  return p.split('/').every((c) => c !== '' && c !== '.' && c !== '..');
}

/** Call f; a StrataError is an acceptable refusal (returned), anything else fails the property. */
function refusedOr<T>(f: () => T): T | StrataError {
  try {
    return f();
  } catch (err) {
    if (err instanceof StrataError) return err;
    throw new Error(`threw a non-StrataError: ${(err as Error)?.stack ?? String(err)}`);
  }
}

const isInt = (v: number, min: number, max: number) => Number.isSafeInteger(v) && v >= min && v <= max;

/** Every invariant docs/format.md promises of a TOC decodeToc accepted. */
function checkTocInvariants(toc: Toc, dataEnd: number): void {
  const seen = new Set<string>();
  let lastBlobEnd = 0;
  for (const e of toc.entries) {
    expect(isClean(e.path), `unclean path ${JSON.stringify(e.path)}`).toBe(true);
    expect(seen.has(e.path), `duplicate ${JSON.stringify(e.path)}`).toBe(false);
    seen.add(e.path);
    if (e.path === '.') expect(e.type).toBe('dir');
    expect(['dir', 'file', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'whiteout']).toContain(e.type);
    expect(isInt(e.mode, 0, 0o7777) && isInt(e.uid, 0, 2 ** 32 - 1) && isInt(e.gid, 0, 2 ** 32 - 1)).toBe(true);
    expect(isInt(e.mtime[1], 0, 999_999_999) && Number.isSafeInteger(e.mtime[0])).toBe(true);
    expect(isInt(e.headerOffset, 0, dataEnd)).toBe(true);
    if (e.type === 'hardlink') expect(isClean(e.linkTarget!) && e.linkTarget !== '.').toBe(true);
    if (e.type === 'symlink') expect(e.linkTarget!.length > 0 && !e.linkTarget!.includes('\0')).toBe(true);
    if (e.type !== 'symlink' && e.type !== 'hardlink') expect(e.linkTarget).toBeUndefined();
    if (e.type !== 'file') {
      expect(e.chunks).toBeUndefined();
      expect(e.size).toBe(0);
      continue;
    }
    let fileEnd = 0;
    let stored = 0;
    for (const c of e.chunks!) {
      expect(isInt(c.size, 1, MAX_CHUNK_SIZE) && c.offset >= fileEnd && c.offset + c.size <= e.size).toBe(true);
      expect(c.blobOffset >= lastBlobEnd && c.blobOffset >= e.headerOffset && c.blobOffset + c.blobLength <= dataEnd && c.blobLength >= 1).toBe(true);
      expect(c.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
      fileEnd = c.offset + c.size;
      lastBlobEnd = c.blobOffset + c.blobLength;
      stored += c.size;
    }
    if (!e.sparse) expect(stored).toBe(e.size);
  }
  if (toc.prefetch) expect(toc.prefetch.blobOffset + toc.prefetch.blobLength <= dataEnd).toBe(true);
}

// ---- generators --------------------------------------------------------------------------------

/** An integer in [min, max], past fc.integer's 32-bit range. */
const big = (min: number, max: number) => fc.bigInt({ min: BigInt(min), max: BigInt(max) }).map(Number);

/** One name component: any bytes but '/' and NUL, not '.' or '..' (a byte string, latin1). */
const component = fc
  .uint8Array({ minLength: 1, maxLength: 24 })
  .map((b) => Buffer.from(b.map((x) => (x === 0 || x === 0x2f ? 0x5f : x))).toString('latin1'))
  .filter((s) => s !== '.' && s !== '..');
const cleanPath = fc.array(component, { minLength: 1, maxLength: 4 }).map((cs) => cs.join('/'));
const digestArb = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => 'sha256:' + Buffer.from(b).toString('hex'));
const mtimeArb = fc.tuple(big(-(2 ** 40), 2 ** 40), fc.integer({ min: 0, max: 999_999_999 }));
const idArb = fc.oneof(fc.constantFrom(0, 1000, 65534, 2 ** 32 - 1), big(0, 2 ** 32 - 1));
const xattrsArb = fc.option(
  fc
    .uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 30 }), fc.uint8Array({ maxLength: 40 })), { minLength: 1, maxLength: 3, selector: (x) => x[0] })
    .map((xs) => xs.map(([n, v]) => [n, Buffer.from(v)] as [string, Buffer])),
  { nil: undefined },
);

interface EntrySpec {
  path: string;
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  mtime: [number, number];
  xattrs: Array<[string, Buffer]> | undefined;
  /** type-specific */
  target: string;
  dev: [number, number];
  opaque: boolean;
  sparse: boolean;
  withDigest: boolean;
  digest: string;
  /** Chunks as [gap before, size, frame length]. */
  chunks: Array<[number, number, number]>;
  tail: number;
  headerLen: number;
}

const entrySpec = (path: fc.Arbitrary<string>) =>
  fc.record({
    path,
    type: fc.constantFrom<EntryType>('dir', 'file', 'file', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'whiteout'),
    mode: fc.integer({ min: 0, max: 0o7777 }),
    uid: idArb,
    gid: idArb,
    mtime: mtimeArb,
    xattrs: xattrsArb,
    target: fc.oneof(cleanPath, fc.uint8Array({ minLength: 1, maxLength: 60 }).map((b) => Buffer.from(b.map((x) => x || 1)).toString('latin1'))),
    dev: fc.tuple(idArb, idArb),
    opaque: fc.boolean(),
    sparse: fc.boolean(),
    withDigest: fc.boolean(),
    digest: digestArb,
    chunks: fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }).map((g) => (g === 3 ? 1 << 20 : g * 100)), fc.integer({ min: 1, max: MAX_CHUNK_SIZE }), fc.integer({ min: 1, max: MAX_CHUNK_SIZE * 2 })), { maxLength: 3 }),
    tail: fc.integer({ min: 0, max: 5000 }),
    headerLen: fc.integer({ min: 1, max: 3000 }),
  });

/** A valid TOC (as decodeToc returns it) and its dataEnd, from specs laid out in blob order. */
function buildToc(root: EntrySpec, specs: EntrySpec[], codec: 'gzip' | 'zstd', prefetch: boolean): { toc: Toc; dataEnd: number } {
  let cursor = 0;
  const entries: TocEntry[] = [];
  const all = [{ ...root, path: '.', type: 'dir' as EntryType }, ...specs];
  const paths = new Set<string>();
  for (const s of all) {
    if (paths.has(s.path)) continue;
    paths.add(s.path);
    const e: TocEntry = { path: s.path, type: s.type, mode: s.mode, uid: s.uid, gid: s.gid, mtime: s.mtime, size: 0, headerOffset: cursor };
    cursor += s.headerLen;
    if (s.xattrs) e.xattrs = s.xattrs;
    if (s.type === 'symlink') e.linkTarget = s.target;
    if (s.type === 'hardlink') e.linkTarget = isClean(s.target) && s.target !== '.' ? s.target : 'x';
    if (s.type === 'char' || s.type === 'block') [e.devMajor, e.devMinor] = s.dev;
    if (s.type === 'dir' && s.opaque) e.opaque = true;
    if (s.type === 'file') {
      const chunks: Chunk[] = [];
      let off = 0;
      for (const [gap, size, len] of s.chunks) {
        off += s.sparse ? gap : 0;
        chunks.push({ offset: off, size, blobOffset: cursor, blobLength: len, digest: s.digest });
        off += size;
        cursor += len;
      }
      e.size = off + (s.sparse ? s.tail : 0);
      if (s.sparse) e.sparse = true;
      if (!s.sparse || s.withDigest) e.digest = s.digest;
      e.chunks = chunks;
    }
    entries.push(e);
  }
  const dataEnd = cursor + 17;
  const toc: Toc = { version: 1, codec, entries };
  if (prefetch) toc.prefetch = { blobOffset: Math.floor(dataEnd / 3), blobLength: Math.floor(dataEnd / 3) };
  return { toc, dataEnd };
}

const validToc = fc
  .record({
    root: entrySpec(fc.constant('.')),
    specs: fc.array(entrySpec(cleanPath), { maxLength: 12 }),
    codec: fc.constantFrom<'gzip' | 'zstd'>('gzip', 'zstd'),
    prefetch: fc.boolean(),
  })
  .map(({ root, specs, codec, prefetch }) => buildToc(root, specs, codec, prefetch));

/** Values that break things: wrong types, out-of-range numbers, hostile paths. */
const nasty = fc.oneof(
  fc.constantFrom<unknown>(
    -1, 0, 1, 1.5, 2 ** 53, -(2 ** 53), 1e300, 0o7777 + 1, 4 * 1024 * 1024 + 1, 2 ** 32,
    null, true, false, '', '.', '..', '/', '/etc/passwd', '../x', 'a/../b', 'a//b', 'a/', './a', 'x\0y',
    'sha256:' + '0'.repeat(64), 'sha256:xyz', [], {}, [0], [[0, 1, 0, 1, 'sha256:' + '0'.repeat(64)]], ['a', 'b'],
    'dir', 'file', 'symlink', 'hardlink', 'whiteout', 'socket', 'x'.repeat(70000),
  ),
  fc.integer(),
  fc.double(),
  fc.string(),
  fc.jsonValue({ maxDepth: 2 }),
);
const KEYS = ['path', 'pathBytes', 'type', 'mode', 'uid', 'gid', 'mtime', 'size', 'linkTarget', 'linkTargetBytes', 'devMajor', 'devMinor', 'xattrs', 'opaque', 'sparse', 'digest', 'headerOffset', 'chunks'];

type Json = Record<string, unknown> & { entries: Array<Record<string, unknown>> };

/** Mutations of a valid TOC's JSON: set or delete a field, poke a chunk, duplicate or hostile-name an entry. */
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), key: fc.constantFrom(...KEYS), value: nasty }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), key: fc.constantFrom(...KEYS) }),
  fc.record({ kind: fc.constant('chunk' as const), at: fc.nat(), field: fc.integer({ min: 0, max: 5 }), value: nasty }),
  fc.record({ kind: fc.constant('dup' as const), at: fc.nat(), to: fc.nat() }),
  fc.record({ kind: fc.constant('bytes' as const), at: fc.nat(), bytes: fc.uint8Array({ maxLength: 12 }) }),
  fc.record({ kind: fc.constant('top' as const), key: fc.constantFrom('version', 'codec', 'entries', 'prefetch'), value: nasty }),
);

type Mutation = typeof mutation extends fc.Arbitrary<infer T> ? T : never;

function mutate(json: Json, muts: Mutation[]): Json {
  for (const m of muts) {
    const es = json.entries;
    if (m.kind === 'top') {
      (json as Record<string, unknown>)[m.key] = m.value;
      continue;
    }
    if (!Array.isArray(es) || es.length === 0) continue;
    const e = es[m.at % es.length]!;
    if (typeof e !== 'object' || e === null) continue;
    switch (m.kind) {
      case 'set':
        e[m.key] = m.value;
        break;
      case 'delete':
        delete e[m.key];
        break;
      case 'chunk': {
        const cs = e.chunks;
        if (Array.isArray(cs) && cs.length > 0 && Array.isArray(cs[0])) (cs[m.at % cs.length] as unknown[])[m.field] = m.value;
        break;
      }
      case 'dup':
        es.splice(m.to % (es.length + 1), 0, JSON.parse(JSON.stringify(e)) as Record<string, unknown>);
        break;
      case 'bytes':
        delete e.path;
        e.pathBytes = Buffer.from(m.bytes).toString('base64');
        break;
    }
  }
  return json;
}

// ---- properties ----------------------------------------------------------------------------------

describe('decodeToc', () => {
  it('arbitrary bytes: a StrataError or a TOC that keeps every invariant', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.nat(), (bytes, dataEnd) => {
        const r = refusedOr(() => decodeToc(Buffer.from(bytes), dataEnd));
        if (!(r instanceof StrataError)) checkTocInvariants(r, dataEnd);
      }),
      params(3000),
    );
  });

  it('arbitrary JSON: a StrataError or a TOC that keeps every invariant', () => {
    const tocish = fc.oneof(
      fc.jsonValue(),
      fc.record({ version: fc.constantFrom<unknown>(1, 2, '1'), codec: fc.constantFrom<unknown>('zstd', 'gzip', 'lz4'), entries: fc.array(fc.dictionary(fc.constantFrom(...KEYS), nasty)) }),
    );
    fc.assert(
      fc.property(tocish, big(0, 2 ** 40), (json, dataEnd) => {
        const r = refusedOr(() => decodeToc(Buffer.from(JSON.stringify(json) ?? 'null'), dataEnd));
        if (!(r instanceof StrataError)) checkTocInvariants(r, dataEnd);
      }),
      params(3000),
    );
  });

  it('valid TOCs with hostile mutations: a StrataError or a TOC that keeps every invariant; buildView likewise', () => {
    let accepted = 0;
    fc.assert(
      fc.property(validToc, fc.array(mutation, { minLength: 1, maxLength: 3 }), ({ toc, dataEnd }, muts) => {
        const json = mutate(JSON.parse(encodeToc(toc).toString('utf8')) as Json, muts);
        const r = refusedOr(() => decodeToc(Buffer.from(JSON.stringify(json)), dataEnd));
        if (r instanceof StrataError) {
          expect(['INVALID_LAYER', 'UNSAFE_PATH']).toContain(r.code);
          return;
        }
        accepted++;
        checkTocInvariants(r, dataEnd);
        const view = refusedOr(() => buildView([r]));
        if (view instanceof StrataError) return;
        for (const n of walkView(view)) {
          expect(isClean(n.path)).toBe(true);
          if (n.path !== '.') {
            // Every node hangs under a directory of the view: nothing is reached through a link.
            let p = view;
            for (const part of parentOf(n.path) === '.' ? [] : parentOf(n.path).split('/')) p = p.children!.get(part)!;
            expect(p.entry.type).toBe('dir');
            expect(p.children!.get(baseOf(n.path))).toBe(n);
          }
          if (n.linkTo) expect(n.linkTo.entry.type).toBe('file');
        }
      }),
      params(2000),
    );
    // The mutations are not all fatal: the accepting paths are exercised too.
    expect(accepted).toBeGreaterThan(0);
  });

  it('encodeToc -> decodeToc round-trips arbitrary valid TOCs (names with any bytes)', () => {
    fc.assert(
      fc.property(validToc, ({ toc, dataEnd }) => {
        const back = decodeToc(encodeToc(toc), dataEnd);
        expect(back).toEqual(toc);
      }),
      params(500),
    );
  });
});

describe('decodeFooter', () => {
  const footerArb = fc.record({
    codec: fc.constantFrom<'gzip' | 'zstd'>('gzip', 'zstd'),
    tocOffset: fc.oneof(fc.nat(), big(0, Math.floor(Number.MAX_SAFE_INTEGER / 4))),
    tocLength: big(1, 2 ** 40),
    tocSize: big(1, 2 ** 40),
    tocDigest: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex')),
  });

  function checkFooter(f: Footer, blobSize: number): void {
    expect(f.tocOffset + f.tocLength).toBe(blobSize - footerSize(f.codec));
    expect(f.tocLength > 0 && f.tocSize > 0).toBe(true);
    for (const v of [f.tocOffset, f.tocLength, f.tocSize]) expect(Number.isSafeInteger(v) && v >= 0).toBe(true);
    expect(f.tocDigest).toMatch(/^[0-9a-f]{64}$/);
  }

  it('arbitrary tails: a StrataError or a self-consistent footer', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 120 }), big(0, Number.MAX_SAFE_INTEGER), (tail, size) => {
        const r = refusedOr(() => decodeFooter(Buffer.from(tail), size));
        if (!(r instanceof StrataError)) checkFooter(r, size);
      }),
      params(5000),
    );
  });

  it('damaged footers (random byte changes, lying sizes): a StrataError or a self-consistent footer', () => {
    fc.assert(
      fc.property(
        footerArb,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        fc.integer({ min: -100, max: 100 }),
        (f, pokes, skew) => {
          const buf = encodeFooter(f);
          for (const [i, v] of pokes) buf[i % buf.length] = v;
          const size = Math.max(0, f.tocOffset + f.tocLength + footerSize(f.codec) + skew);
          const r = refusedOr(() => decodeFooter(buf, size));
          if (!(r instanceof StrataError)) checkFooter(r, size);
        },
      ),
      params(5000),
    );
  });

  it('encodeFooter -> decodeFooter round-trips (behind any blob bytes)', () => {
    fc.assert(
      fc.property(footerArb, fc.uint8Array({ maxLength: 40 }), (f, before) => {
        const blob = Buffer.concat([Buffer.from(before), encodeFooter(f)]);
        const size = f.tocOffset + f.tocLength + footerSize(f.codec);
        expect(decodeFooter(blob.subarray(Math.max(0, blob.length - 90)), size)).toEqual(f);
      }),
      params(2000),
    );
  });
});

describe('path handling', () => {
  const piece = fc.oneof(
    fc.constantFrom('', '.', '..', '...', 'a', 'b.c', ' ', '\\', '\0', 'a\0b', '\xff\xfe', 'é', '.hidden', '..x', 'x..'),
    fc.string({ maxLength: 6 }),
  );
  const pathish = fc.oneof(
    fc.tuple(fc.boolean(), fc.array(piece, { minLength: 1, maxLength: 6 })).map(([abs, ps]) => (abs ? '/' : '') + ps.join('/')),
    fc.string(),
    fc.uint8Array({ maxLength: 30 }).map((b) => Buffer.from(b).toString('latin1')),
  );

  it('checkLayerPath accepts exactly the clean relative paths; refusals are UNSAFE_PATH', () => {
    fc.assert(
      fc.property(pathish, (p) => {
        const r = refusedOr(() => checkLayerPath(p));
        if (r instanceof StrataError) {
          expect(r).toBeInstanceOf(UnsafePathError);
          expect(isClean(p), `refused clean path ${JSON.stringify(p)}`).toBe(false);
        } else {
          expect(isClean(p), `accepted ${JSON.stringify(p)}`).toBe(true);
          expect(r).toBe(p);
        }
      }),
      params(20000),
    );
    // The length limit, at the edge.
    expect(checkLayerPath('a/'.repeat(32767) + 'b')).toHaveLength(65535);
    expect(() => checkLayerPath('a/'.repeat(32768))).toThrow(UnsafePathError);
  });

  it('parentOf / baseOf / joinPath split and rebuild clean paths; displayPath never throws', () => {
    fc.assert(
      fc.property(cleanPath, fc.constantFrom('/tmp/r', '/tmp/r/', '/'), (p, root) => {
        const parent = parentOf(p);
        expect(isClean(parent)).toBe(true);
        expect(parent === '.' ? baseOf(p) : `${parent}/${baseOf(p)}`).toBe(p);
        expect(joinPath(root, p)).toBe((root.endsWith('/') ? root : root + '/') + p);
        expect(joinPath(root, '.')).toBe(root);
        const shown = displayPath(p);
        expect(typeof shown).toBe('string');
        // UTF-8 names show as themselves; others as printable escapes.
        if (decodeUtf8(p) !== null) expect(encodeUtf8(shown)).toBe(p);
        else expect(shown).toMatch(/^[\x20-\x7e]*$/);
      }),
      params(5000),
    );
  });
});

describe('tar headers through GNU tar', () => {
  it('names and symlink targets with any bytes (invalid UTF-8, long, control characters) extract byte-exact', async () => {
    // Names that fit a filesystem: components of at most 255 bytes.
    const fsComponent = fc
      .uint8Array({ minLength: 1, maxLength: 120 })
      .map((b) => Buffer.from(b.map((x) => (x === 0 || x === 0x2f ? 0x2d : x))).toString('latin1'))
      .filter((s) => s !== '.' && s !== '..' && !s.startsWith('.wh.') && s !== 'GNUSparseFile.0' && s !== 'PaxHeaders');
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fc.tuple(fc.array(fsComponent, { minLength: 1, maxLength: 3 }), fc.uint8Array({ minLength: 1, maxLength: 200 })), {
          minLength: 1,
          maxLength: 4,
          selector: ([cs]) => cs[0],
        }),
        async (files) => {
          const dir = join(work, `tar-${++n}`);
          await mkdir(dir);
          const entries: CraftEntry[] = [{ path: '.', type: 'dir' }];
          const want = new Map<string, { data?: string; target?: string }>();
          for (const [cs, data] of files) {
            for (let i = 1; i < cs.length; i++) {
              const d = cs.slice(0, i).join('/');
              if (!want.has(d)) {
                entries.push({ path: d, type: 'dir' });
                want.set(d, {});
              }
            }
            const p = cs.join('/');
            if (want.has(p)) continue;
            const content = Buffer.from(data).toString('latin1');
            entries.push({ path: p, type: 'file', data: Buffer.from(data) });
            want.set(p, { data: content });
            const link = p + '.link';
            const target = Buffer.from(data.map((x) => x || 1).subarray(0, 100)).toString('latin1');
            entries.push({ path: link, type: 'symlink', linkTarget: target });
            want.set(link, { target });
          }
          const layer = await craftLayer(entries, { dir });
          const out = join(dir, 'out');
          await mkdir(out);
          await run('tar', ['-x', '--zstd', '-f', layer.file, '-C', out]);
          const got = new Map<string, { data?: string; target?: string }>();
          const walk = async (rel: Buffer): Promise<void> => {
            const abs = Buffer.concat([Buffer.from(out + '/'), rel]);
            for (const name of await readdir(abs, { encoding: 'buffer', withFileTypes: true })) {
              const r = rel.length ? Buffer.concat([rel, Buffer.from('/'), name.name]) : name.name;
              const full = Buffer.concat([Buffer.from(out + '/'), r]);
              const key = r.toString('latin1');
              if (name.isDirectory()) {
                got.set(key, {});
                await walk(r);
              } else if (name.isSymbolicLink()) got.set(key, { target: (await readlink(full, { encoding: 'buffer' })).toString('latin1') });
              else got.set(key, { data: (await readFile(full)).toString('latin1') });
            }
          };
          await walk(Buffer.alloc(0));
          expect(got).toEqual(want);
          await rm(dir, { recursive: true, force: true });
        },
      ),
      params(12),
    );
  });
});

describe('CLI arguments', () => {
  it('an empty DIR or HANDLE ("$UNSET") is a usage error, not the current directory', async () => {
    const { run: cli } = await import('../src/cli/main.js');
    const { Writable } = await import('node:stream');
    let err = '';
    const io = { stdout: new Writable({ write: (_c, _e, cb) => cb() }), stderr: new Writable({ write: (c, _e, cb) => ((err += String(c)), cb()) }), stdin: process.stdin };
    for (const argv of [['backup', ''], ['restore', 'x', ''], ['restore', '', '/tmp/x'], ['unmount', ''], ['backup', '/nonexistent', '--store', ''], ['backup', '/nonexistent', '--name=']]) {
      err = '';
      expect(await cli(argv, io), JSON.stringify(argv)).toBe(2);
      expect(err).toMatch(/usage/);
    }
  });

  it('any argv: exit 0, 1 with "strata: error CODE: ..." or 2 with usage; never a stack trace, never a throw', async () => {
    const { run: cli } = await import('../src/cli/main.js');
    const { Readable, Writable } = await import('node:stream');
    const home = join(work, 'cli-home');
    const garbage = join(work, 'garbage.json');
    await mkdir(home, { recursive: true });
    const { writeFile } = await import('node:fs/promises');
    await writeFile(garbage, '{"id": "../../etc", "dir": 5');
    // No backup ever exists in this store and no real directory is named: nothing is written
    // anywhere but the temporary home, whatever the arguments.
    const saved = { home: process.env.STRATA_HOME, store: process.env.STRATA_STORE, cwd: process.cwd() };
    // Relative names resolve in an empty directory.
    const cwd = join(work, 'cli-cwd');
    await mkdir(cwd, { recursive: true });
    process.chdir(cwd);
    process.env.STRATA_HOME = home;
    process.env.STRATA_STORE = 'file://' + join(home, 'store');
    const word = fc.oneof(
      fc.constantFrom(
        'backup', 'restore', 'status', 'unmount', 'list', 'inspect', 'delete', 'gc', 'help', 'frobnicate', '--version', '-h',
        '--store', '--name', '--ttl', '--codec', '--parent', '--mode', '--cache-size', '--force', '--json', '--no-hydrate',
        '--dry-run', '--grace', '--discard', '--help', '-x', '--', '-', '', ' ', '--store=ftp://x', '--ttl=3d',
        'never', '3d', '0', '-5s', '1.5h', 'abc', '99999999999999999999d', 'zstd', 'gzip', 'lz4', 'copy', 'extract', 'mount', '1G', '-1',
        'ftp://x', 's3://', 's3://A_B/x', 'file://relative', 'file:///nonexistent/strata-store', '/nonexistent/handle.json', garbage,
        'no-such-backup', '0192a4b0-0000-7000-8000-000000000000', 'n'.repeat(300), 'bad\nname', 'é',
      ),
      fc.string({ maxLength: 12 }).filter((s) => !s.includes('\0') && !s.includes('/') && !s.includes('..')),
    );
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(word, { maxLength: 6 }), fc.string({ maxLength: 40 }), async (argv, stdin) => {
          let out = '';
          let err = '';
          const sink = (f: (s: string) => void) => new Writable({ write: (c, _e, cb) => (f(String(c)), cb()) });
          const code = await cli(argv, { stdout: sink((s) => (out += s)), stderr: sink((s) => (err += s)), stdin: Readable.from([Buffer.from(stdin)]) });
          expect([0, 1, 2], `${JSON.stringify(argv)} -> ${code}: ${err}`).toContain(code);
          expect(err, JSON.stringify(argv)).not.toMatch(/\n\s+at /);
          if (code === 1) expect(err, JSON.stringify(argv)).toMatch(/^strata: error [A-Z_]+: /m);
          if (code === 2) expect(argv.length === 0 ? out : err, JSON.stringify(argv)).toMatch(/usage/i);
        }),
        params(400),
      );
    } finally {
      process.chdir(saved.cwd);
      process.env.STRATA_HOME = saved.home;
      process.env.STRATA_STORE = saved.store;
      if (saved.home === undefined) delete process.env.STRATA_HOME;
      if (saved.store === undefined) delete process.env.STRATA_STORE;
    }
    // Nothing was backed up or restored (an empty DIR once meant the current directory).
    expect(existsSync(join(home, 'store', 'manifests'))).toBe(false);
    expect(await readdir(cwd)).toEqual([]);
  });
});
