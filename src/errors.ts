/**
 * Errors with stable codes. The first five mirror Cloudflare's Sandbox SDK so callers that
 * switch on `code` keep working; the rest are strata's own.
 */
export type ErrorCode =
  | 'INVALID_BACKUP_CONFIG'
  | 'BACKUP_NOT_FOUND'
  | 'BACKUP_EXPIRED'
  | 'BACKUP_CREATE_FAILED'
  | 'BACKUP_RESTORE_FAILED'
  | 'DIGEST_MISMATCH'
  | 'INVALID_LAYER'
  | 'UNSAFE_PATH'
  | 'STORE_ERROR'
  | 'OBJECT_NOT_FOUND'
  | 'TARGET_NOT_EMPTY'
  | 'UNSAVED_CHANGES'
  | 'MOUNT_FAILED'
  | 'WORKSPACE_NOT_FOUND'
  | 'USAGE';

export class StrataError extends Error {
  readonly code: ErrorCode;
  /** HTTP-style status, as Cloudflare's SDK reports it. */
  readonly httpStatus: number;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; httpStatus?: number }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = new.target.name;
    this.code = code;
    this.httpStatus = options?.httpStatus ?? 500;
  }
}

export class InvalidBackupConfigError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_BACKUP_CONFIG', message, { ...options, httpStatus: 400 });
  }
}
export class BackupNotFoundError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BACKUP_NOT_FOUND', message, { ...options, httpStatus: 404 });
  }
}
export class BackupExpiredError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BACKUP_EXPIRED', message, { ...options, httpStatus: 400 });
  }
}
export class BackupCreateError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BACKUP_CREATE_FAILED', message, { ...options, httpStatus: 500 });
  }
}
export class BackupRestoreError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BACKUP_RESTORE_FAILED', message, { ...options, httpStatus: 500 });
  }
}
/** Bytes from a store did not hash to the digest that names them. Never used, never served. */
export class DigestMismatchError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DIGEST_MISMATCH', message, options);
  }
}
/** A layer blob, TOC or footer is malformed or lies about itself. */
export class InvalidLayerError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_LAYER', message, options);
  }
}
/** A path in a layer would land outside the restore target. */
export class UnsafePathError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('UNSAFE_PATH', message, options);
  }
}
export class StoreError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('STORE_ERROR', message, { ...options, httpStatus: 502 });
  }
}
export class ObjectNotFoundError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('OBJECT_NOT_FOUND', message, { ...options, httpStatus: 404 });
  }
}
export class TargetNotEmptyError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TARGET_NOT_EMPTY', message, { ...options, httpStatus: 409 });
  }
}
/** A restore would replace a workspace holding changes no backup has captured. */
export class UnsavedChangesError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('UNSAVED_CHANGES', message, { ...options, httpStatus: 409 });
  }
}
export class WorkspaceNotFoundError extends StrataError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WORKSPACE_NOT_FOUND', message, { ...options, httpStatus: 404 });
  }
}
export class UsageError extends StrataError {
  constructor(message: string) {
    super('USAGE', message, { httpStatus: 400 });
  }
}
