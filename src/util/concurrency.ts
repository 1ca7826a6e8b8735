/** Run fn over items with at most `limit` calls in flight; rejects with the first failure. */
export async function forEachLimit<T>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const it = items[Symbol.iterator]();
  let failed: unknown;
  const worker = async (): Promise<void> => {
    for (let next = it.next(); !next.done && failed === undefined; next = it.next()) {
      try {
        await fn(next.value);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
  if (failed !== undefined) throw failed;
}
