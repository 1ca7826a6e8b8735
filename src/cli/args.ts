/** A small argument parser: --flag, --opt value, --opt=value, positionals, `--` ends options. */
import { UsageError } from '../errors.js';

export interface ArgSpec {
  /** Options that take a value. */
  values?: string[];
  /** Options that are boolean flags. */
  flags?: string[];
  /** Positional arity. */
  min?: number;
  max?: number;
}

export interface Parsed {
  positionals: string[];
  values: Map<string, string>;
  flags: Set<string>;
}

export function parseArgs(argv: string[], spec: ArgSpec, command: string): Parsed {
  const values = new Set(spec.values ?? []);
  const flags = new Set(spec.flags ?? []);
  const out: Parsed = { positionals: [], values: new Map(), flags: new Set() };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      out.positionals.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      if (values.has(name)) {
        const v = eq >= 0 ? a.slice(eq + 1) : argv[++i];
        if (v === undefined || v === '') throw new UsageError(`${command}: --${name} needs a value`);
        out.values.set(name, v);
      } else if (flags.has(name)) {
        if (eq >= 0) throw new UsageError(`${command}: --${name} takes no value`);
        out.flags.add(name);
      } else throw new UsageError(`${command}: unknown option --${name} (see strata ${command} --help)`);
    } else if (a.startsWith('-') && a !== '-') {
      if (a === '-h') out.flags.add('help');
      else throw new UsageError(`${command}: unknown option ${a} (see strata ${command} --help)`);
    } else out.positionals.push(a);
  }
  if (out.flags.has('help')) return out;
  // An empty argument is a script's unset variable ("$DIR"), not the current directory.
  if (out.positionals.includes('')) throw new UsageError(`${command}: empty argument (an unset variable?) (see strata ${command} --help)`);
  const min = spec.min ?? 0;
  const max = spec.max ?? min;
  if (out.positionals.length < min || out.positionals.length > max) {
    throw new UsageError(`${command}: expected ${min === max ? min : `${min} to ${max}`} argument(s), got ${out.positionals.length} (see strata ${command} --help)`);
  }
  return out;
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

/** '90', '90s', '15m', '12h', '3d', '2w' → seconds; 'never' → null. */
export function parseDuration(s: string, what: string, allowZero = false): number | null {
  if (s === 'never') return null;
  const m = /^(\d+(?:\.\d+)?)([smhdw]?)$/.exec(s);
  if (!m) throw new UsageError(`${what} must be a duration like 90s, 15m, 12h, 3d, 2w or 'never', got ${JSON.stringify(s)}`);
  const v = Number(m[1]) * UNITS[m[2] || 's']!;
  if (!(v > 0) && !(allowZero && v === 0)) throw new UsageError(`${what} must be greater than zero`);
  return v;
}

export function formatBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${u[i]}`;
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** '4G', '500M', '123456' (bytes; K, M, G, T are powers of 1024) → bytes. */
export function parseSize(s: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)(i?B)?$/i.exec(s);
  if (!m) throw new UsageError(`${what} must be a size like 500M or 4G, got ${JSON.stringify(s)}`);
  const v = Math.floor(Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!);
  if (!(v > 0)) throw new UsageError(`${what} must be greater than zero`);
  return v;
}
