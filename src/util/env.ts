/** Settings read from the environment. */

/** A whole number >= min from env `name`, or undefined (unset, or not one: said on stderr). */
export function envCount(name: string, min: number): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) {
    process.stderr.write(`strata: ignoring ${name}=${JSON.stringify(v)}: not a whole number >= ${min}; using the default\n`);
    return undefined;
  }
  return n;
}

/** STRATA_INDEX_PAGE_KB: the page size of the restore indexes backups write (tests make it small). */
export function indexPageSize(): number | undefined {
  const kb = envCount('STRATA_INDEX_PAGE_KB', 4);
  if (kb === undefined) return undefined;
  if (kb > 16384 || (kb & (kb - 1)) !== 0) {
    process.stderr.write(`strata: ignoring STRATA_INDEX_PAGE_KB=${kb}: not a power of two from 4 to 16384; using the default\n`);
    return undefined;
  }
  return kb * 1024;
}
