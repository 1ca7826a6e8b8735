/**
 * The manifest of a backup: its layers bottom to top and the fields of its handle. It is the last
 * object a backup writes: a backup exists exactly when its manifest does.
 */
import { InvalidBackupConfigError, InvalidLayerError } from '../errors.js';
import { blobKey, layerKey, type LayerDescriptor, locatorKey, STAGED_KEY_RE } from '../format/reader.js';
import type { PrefetchDescriptor } from '../format/prefetch.js';
import type { IndexDescriptor } from '../format/restore-index.js';

export const MANIFEST_KIND = 'strata.backup.manifest';
export const MANIFEST_VERSION = 1;

export interface Manifest {
  kind: typeof MANIFEST_KIND;
  version: number;
  id: string;
  name?: string;
  /** The directory that was backed up: the default restore target. */
  dir: string;
  createdAt: string;
  /** ISO time after which the backup is refused and collected; null never expires. */
  expiresAt: string | null;
  /** Id of the backup this one stacks on, when incremental. */
  parent?: string;
  layers: LayerDescriptor[];
  /**
   * The restore index of the whole chain (a blob, or inline when small): what a lazy restore
   * mounts without reading any TOC. Absent in backups made before it existed; they restore by
   * building it from the TOCs.
   */
  index?: IndexDescriptor;
  /**
   * The prefetch record: the frames a lazy workspace of this chain read first (a blob, or inline
   * when small). A lazy restore fetches them first. Absent when nothing was recorded.
   */
  prefetch?: PrefetchDescriptor;
}

/** What createBackup returns: a superset of Cloudflare's { id, dir }. JSON-serialisable. */
export interface BackupHandle {
  id: string;
  dir: string;
  /** 'sha256:<hex>' of the manifest bytes: restore refuses a manifest that does not match. */
  manifestDigest: string;
  name?: string;
  createdAt: string;
  expiresAt: string | null;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function checkId(id: unknown): string {
  if (typeof id !== 'string' || !ID_RE.test(id)) throw new InvalidBackupConfigError(`invalid backup id ${JSON.stringify(id)}`);
  return id;
}

export function manifestKey(id: string): string {
  return `manifests/${checkId(id)}.json`;
}

export function checkName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.length > 256) {
    throw new InvalidBackupConfigError('backup name must be 1 to 256 characters');
  }
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) throw new InvalidBackupConfigError('backup name must not contain control characters');
  return name;
}

export function checkDir(dir: unknown, what = 'dir'): string {
  if (typeof dir !== 'string' || dir.length === 0) throw new InvalidBackupConfigError(`${what} must be a non-empty string`);
  if (!dir.startsWith('/')) throw new InvalidBackupConfigError(`${what} must be an absolute path, got ${JSON.stringify(dir)}`);
  if (dir.includes('\0')) throw new InvalidBackupConfigError(`${what} must not contain NUL`);
  if (dir.split('/').includes('..')) throw new InvalidBackupConfigError(`${what} must not contain '..'`);
  return dir;
}

function bad(msg: string): never {
  throw new InvalidLayerError(`invalid manifest: ${msg}`);
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
function nat(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) bad(`${what} is not a non-negative integer`);
  return v;
}
function time(v: unknown, what: string): string {
  if (typeof v !== 'string' || Number.isNaN(Date.parse(v))) bad(`${what} is not a time`);
  return v;
}

export function encodeManifest(m: Manifest): Buffer {
  return Buffer.from(JSON.stringify(m, null, 2) + '\n');
}

export function decodeManifest(buf: Buffer): Manifest {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(buf.toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new InvalidLayerError('invalid manifest: not JSON', { cause: err });
  }
  if (typeof r !== 'object' || r === null) bad('not an object');
  if (r.kind !== MANIFEST_KIND) bad(`kind is ${String(r.kind)}`);
  if (r.version !== MANIFEST_VERSION) bad(`unsupported version ${String(r.version)}`);
  if (!Array.isArray(r.layers)) bad('layers is not an array');
  const m: Manifest = {
    kind: MANIFEST_KIND,
    version: MANIFEST_VERSION,
    id: checkId(r.id),
    dir: checkDir(r.dir),
    createdAt: time(r.createdAt, 'createdAt'),
    expiresAt: r.expiresAt === null ? null : time(r.expiresAt, 'expiresAt'),
    layers: r.layers.map((l: unknown, i: number): LayerDescriptor => {
      if (typeof l !== 'object' || l === null) bad(`layer ${i}`);
      const o = l as Record<string, unknown>;
      if (typeof o.digest !== 'string' || !DIGEST_RE.test(o.digest)) bad(`layer ${i} digest`);
      if (typeof o.tocDigest !== 'string' || !DIGEST_RE.test(o.tocDigest)) bad(`layer ${i} tocDigest`);
      if (o.codec !== 'gzip' && o.codec !== 'zstd') bad(`layer ${i} codec`);
      const d: LayerDescriptor = {
        digest: o.digest,
        size: nat(o.size, 'size'),
        codec: o.codec,
        tocOffset: nat(o.tocOffset, 'tocOffset'),
        tocLength: nat(o.tocLength, 'tocLength'),
        tocSize: nat(o.tocSize, 'tocSize'),
        tocDigest: o.tocDigest,
        entries: nat(o.entries, 'entries'),
        dataBytes: nat(o.dataBytes, 'dataBytes'),
      };
      if (d.tocOffset + d.tocLength > d.size) bad(`layer ${i} TOC lies past the blob's end`);
      if (o.key !== undefined) {
        // Only a staging name: a manifest must not point a layer at any other object.
        if (typeof o.key !== 'string' || !STAGED_KEY_RE.test(o.key)) bad(`layer ${i} key`);
        d.key = o.key;
      }
      return d;
    }),
  };
  if (m.layers.length === 0) bad('no layers');
  if (r.name !== undefined) m.name = checkName(r.name);
  if (r.parent !== undefined) m.parent = checkId(r.parent);
  if (r.index !== undefined) {
    m.index = indexDescriptor(r.index);
    if (m.index.layers !== undefined && (m.index.layers < 1 || m.index.layers > m.layers.length)) bad(`index covers ${m.index.layers} layers of a chain of ${m.layers.length}`);
  }
  if (r.prefetch !== undefined) {
    const { layers: _l, head: _h, ...d } = indexDescriptor(r.prefetch);
    m.prefetch = d;
  }
  return m;
}

function indexDescriptor(v: unknown): IndexDescriptor {
  if (typeof v !== 'object' || v === null) bad('index is not an object');
  const o = v as Record<string, unknown>;
  if (typeof o.digest !== 'string' || !DIGEST_RE.test(o.digest)) bad('index digest');
  const d: IndexDescriptor = { digest: o.digest, size: nat(o.size, 'index size'), rawSize: nat(o.rawSize, 'index rawSize') };
  if (o.inline !== undefined) {
    if (typeof o.inline !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(o.inline) || Buffer.from(o.inline, 'base64').length !== d.size) bad('index inline is not the base64 of size bytes');
    d.inline = o.inline;
  }
  if (o.head !== undefined) {
    // Decoded and checked where it is used (decodeHead); here only its shape.
    if (typeof o.head !== 'string' || o.head.length === 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(o.head)) bad('index head is not base64');
    if (d.inline !== undefined) bad('an index is inline or paged, not both');
    d.head = o.head;
  }
  if (o.layers !== undefined) d.layers = nat(o.layers, 'index layers');
  return d;
}

export function handleOf(m: Manifest, manifestDigest: string): BackupHandle {
  const h: BackupHandle = { id: m.id, dir: m.dir, manifestDigest, createdAt: m.createdAt, expiresAt: m.expiresAt };
  if (m.name !== undefined) h.name = m.name;
  return h;
}

export function isExpired(m: Pick<Manifest, 'expiresAt'>, now = Date.now()): boolean {
  return m.expiresAt !== null && Date.parse(m.expiresAt) <= now;
}

/** A handle from JSON (a file, stdin, a caller): check its shape before trusting any field. */
export function parseHandle(v: unknown): BackupHandle {
  if (typeof v !== 'object' || v === null) throw new InvalidBackupConfigError('a backup handle must be a JSON object');
  const o = v as Record<string, unknown>;
  const h: BackupHandle = {
    id: checkId(o.id),
    dir: checkDir(o.dir, 'handle dir'),
    manifestDigest: '',
    createdAt: typeof o.createdAt === 'string' ? o.createdAt : '',
    expiresAt: typeof o.expiresAt === 'string' ? o.expiresAt : null,
  };
  if (o.manifestDigest !== undefined) {
    if (typeof o.manifestDigest !== 'string' || !DIGEST_RE.test(o.manifestDigest)) {
      throw new InvalidBackupConfigError('handle manifestDigest must be sha256:<64 hex>');
    }
    h.manifestDigest = o.manifestDigest;
  }
  if (o.name !== undefined) h.name = checkName(o.name);
  return h;
}

/**
 * Every blob key a backup needs (what gc keeps for it): its layers (and the locator of a layer
 * that stays under its staging key) and, unless inline, its restore index and its prefetch record.
 */
export function blobsOf(b: {
  layers: Array<{ digest: string; key?: string | undefined }>;
  index?: { digest: string; inline?: string | boolean | undefined } | undefined;
  prefetch?: { digest: string; inline?: string | boolean | undefined } | undefined;
}): string[] {
  return [
    ...b.layers.flatMap((l) => (l.key ? [l.key, locatorKey(l.digest)] : [layerKey(l)])),
    ...(b.index && !b.index.inline ? [blobKey(b.index.digest)] : []),
    ...(b.prefetch && !b.prefetch.inline ? [blobKey(b.prefetch.digest)] : []),
  ];
}
