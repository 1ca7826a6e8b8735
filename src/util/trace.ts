/**
 * Step timings for profiling a path (STRATA_TRACE=1): one stderr line per step, milliseconds since
 * the span began. Off by default; costs one branch when off. How docs/benchmarks.md's breakdown of
 * the lazy ready path was measured.
 */
const ON = !!process.env.STRATA_TRACE;

export interface Span {
  step(label: string): void;
}

const OFF: Span = { step: () => undefined };

export function span(name: string): Span {
  if (!ON) return OFF;
  const t0 = performance.now();
  let last = t0;
  return {
    step(label: string): void {
      const now = performance.now();
      process.stderr.write(`strata trace [${process.pid}] ${name}: ${label} at ${(now - t0).toFixed(1)} ms (+${(now - last).toFixed(1)})\n`);
      last = now;
    },
  };
}
