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

