/** Where strata keeps local state, and which store it talks to. */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/** STRATA_HOME, else $XDG_DATA_HOME/strata, else ~/.local/share/strata. */
export function strataHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.STRATA_HOME) return resolve(env.STRATA_HOME);
  const data = env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(data, 'strata');
}

/** --store, else STRATA_STORE, else the embedded local store under the home directory. */
export function storeUrl(explicit: string | undefined, home: string, env: NodeJS.ProcessEnv = process.env): string {
  return explicit || env.STRATA_STORE || 'file://' + join(home, 'store');
}
