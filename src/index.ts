export * from './errors.js';
export { Strata, DEFAULT_TTL_SECONDS } from './strata.js';
export { blobsOf } from './store/manifest.js';
export type { StrataOptions, CreateBackupOptions, RestoreOptions, RestoreResult, BackupInfo, BackupRef, ProgressEvent } from './strata.js';
export type { BackupHandle, Manifest } from './store/manifest.js';
export type { ObjectStore, ObjectInfo, ByteRange } from './store/store.js';
export { openStore } from './store/index.js';
export type { GcOptions, GcReport } from './store/gc.js';

import { Strata, type BackupRef, type CreateBackupOptions, type RestoreOptions } from './strata.js';

let shared: Strata | undefined;
/** The default instance: STRATA_STORE / STRATA_HOME from the environment. */
function instance(): Strata {
  shared ??= new Strata();
  return shared;
}

export const createBackup = (o: CreateBackupOptions) => instance().createBackup(o);
export const restoreBackup = (ref: BackupRef, o?: RestoreOptions) => instance().restoreBackup(ref, o);
export const listBackups = (o?: { name?: string }) => instance().listBackups(o);
export const getBackup = (id: string) => instance().getBackup(id);
export const deleteBackup = (id: string) => instance().deleteBackup(id);
