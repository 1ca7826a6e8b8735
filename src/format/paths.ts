/**
 * Paths inside a layer are "byte strings": JS strings holding one char per byte (latin1), so names
 * that are not valid UTF-8 survive every step unchanged. Convert with toFsPath() at the fs edge.
 */
import { UnsafePathError } from '../errors.js';

export type BytePath = string;

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** Bytes of a byte string, for fs calls (Node treats string paths as UTF-8, Buffers as bytes). */
export function toFsPath(p: BytePath): Buffer {
  return Buffer.from(p, 'latin1');
}

/** A byte string from a Buffer that fs handed us. */
export function fromFsPath(b: Buffer): BytePath {
  return b.toString('latin1');
}

/** Join a root directory (byte string) and a layer path; '.' is the root itself. */
export function joinPath(root: BytePath, rel: BytePath): BytePath {
  if (rel === '.' || rel === '') return root;
  return root.endsWith('/') ? root + rel : root + '/' + rel;
}

/** Human-readable form for messages: UTF-8 when it is UTF-8, else escaped bytes. */
export function displayPath(p: BytePath): string {
  const utf8 = decodeUtf8(p);
  if (utf8 !== null) return utf8;
  let out = '';
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    out += c >= 0x20 && c < 0x7f ? p[i] : '\\x' + c.toString(16).padStart(2, '0');
  }
  return out;
}

/** The Unicode string these bytes spell, or null when they are not valid UTF-8. */
export function decodeUtf8(p: BytePath): string | null {
  try {
    return utf8Decoder.decode(Buffer.from(p, 'latin1'));
  } catch {
    return null;
  }
}

const NON_ASCII = /[^\x00-\x7f]/;

export function encodeUtf8(s: string): BytePath {
  // ASCII spells its own bytes: most names are, and a TOC holds a hundred thousand of them.
  return NON_ASCII.test(s) ? Buffer.from(s, 'utf8').toString('latin1') : s;
}

export function parentOf(p: BytePath): BytePath {
  const i = p.lastIndexOf('/');
  return i < 0 ? '.' : p.slice(0, i);
}

export function baseOf(p: BytePath): BytePath {
  const i = p.lastIndexOf('/');
  return i < 0 ? p : p.slice(i + 1);
}

/**
 * Check that a layer path is a clean relative path: '.' for the root, else '/'-separated non-empty
 * components, none of them '.' or '..', no NUL. This is the first of restore's defences against a
 * hostile layer: anything that could name a place outside the target is refused here.
 */
export function checkLayerPath(p: BytePath, what = 'path'): BytePath {
  if (p === '.') return p;
  if (p.length === 0) throw new UnsafePathError(`empty ${what} in layer`);
  if (p.length > 65535) throw new UnsafePathError(`${what} longer than 65535 bytes in layer`);
  if (p.includes('\0')) throw new UnsafePathError(`${what} contains NUL: ${displayPath(p)}`);
  if (p.startsWith('/')) throw new UnsafePathError(`absolute ${what} in layer: ${displayPath(p)}`);
  // Each '/'-separated component: not empty, not '.', not '..' (scanned, not split: no arrays).
  for (let start = 0; start <= p.length; ) {
    let end = p.indexOf('/', start);
    if (end < 0) end = p.length;
    const n = end - start;
    if (n === 0 || (p.charCodeAt(start) === 0x2e && (n === 1 || (n === 2 && p.charCodeAt(start + 1) === 0x2e)))) {
      throw new UnsafePathError(`${what} is not a clean relative path: ${displayPath(p)}`);
    }
    start = end + 1;
  }
  return p;
}

/** Byte-order comparison of byte strings: the order entries take in a layer. */
export function compareBytes(a: BytePath, b: BytePath): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
