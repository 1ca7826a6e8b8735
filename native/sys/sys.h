/*
 * What the addon's source files share: N-API argument and error helpers
 * (strata_sys.c) and the xattr readers. Each file registers its own
 * functions through the props table in strata_sys.c.
 */
#ifndef STRATA_SYS_H
#define STRATA_SYS_H

#define NAPI_VERSION 8
#include <node_api.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

/* Retries when an xattr grows between the size query and the read. */
#define XATTR_MAX_RETRIES 16
/* Number.MAX_SAFE_INTEGER: larger JS numbers are not exact integers. */
#define MAX_SAFE_INT 9007199254740991.0

enum throw_kind { THROW_ERROR, THROW_TYPE, THROW_RANGE };

/* A failed napi_status becomes a pending JS exception; true when it failed. */
bool napi_failed(napi_env env, napi_status st);
__attribute__((format(printf, 4, 5)))
void throw_fmt(napi_env env, enum throw_kind kind, const char *code,
	       const char *fmt, ...);
napi_status make_error(napi_env env, const char *code, const char *msg,
		       napi_value *out);
/* An Error shaped like Node's fs errors (code, errno, syscall, path). */
/* errno's name as Node spells it ('ENOENT', 'ENOTSUP'), for an Error's code. */
const char *errno_code(int err);
void throw_errno(napi_env env, int err, const char *syscall, const char *path,
		 const char *dest);
bool get_args(napi_env env, napi_callback_info info, size_t want,
	      napi_value *argv);
bool get_buffer(napi_env env, napi_value v, const char *what, void **data,
		size_t *len);
/* A path Buffer as a NUL-terminated malloc'ed string; embedded NULs refused. */
char *get_path(napi_env env, napi_value v, const char *what);
bool get_int(napi_env env, napi_value v, const char *what, double min,
	     double max, int64_t *out);

/* Return 0 or an errno; the caller frees what they return. */
int read_xattr_list(const char *path, char **list, size_t *len);
int read_xattr(const char *path, const char *name, uint8_t **val, size_t *len);
/* Sort xattr names (and their values) bytewise, as llistxattrs returns them. */
void sort_xattrs(char **names, uint8_t **vals, size_t *lens, size_t n);
/* qsort comparator for char * names, bytewise. */
int cmp_names(const void *a, const void *b);

/* The point-in-time test of capture: nothing of the file moved between two stats. */
static inline bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_size == b->st_size && a->st_ino == b->st_ino &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
	       a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static inline int64_t ns_of(const struct timespec *t)
{
	return (int64_t)t->tv_sec * 1000000000LL + t->tv_nsec;
}

/* mount.c */
napi_value js_mount_fs(napi_env env, napi_callback_info info);
napi_value js_unmount_fs(napi_env env, napi_callback_info info);

/* spawn.c */
napi_value js_spawn_detached(napi_env env, napi_callback_info info);

/* codec.c */
napi_value js_zstd_compress(napi_env env, napi_callback_info info);
napi_value js_zstd_frame(napi_env env, napi_callback_info info);
napi_value js_zstd_decompress(napi_env env, napi_callback_info info);

napi_value queue_work(napi_env env, const char *name,
		      napi_async_execute_callback execute,
		      napi_async_complete_callback complete, void *job,
		      napi_async_work *work, napi_deferred *deferred,
		      bool *queued);

void settle_work(napi_env env, napi_deferred deferred, napi_status st, bool ok,
		 napi_value value, const char *what);

/* An Error value shaped like fs's (code, errno, syscall, path), to reject with. */
napi_status errno_value(napi_env env, int err, const char *syscall,
			const char *path, napi_value *out);

/* extract.c */
napi_value js_write_files(napi_env env, napi_callback_info info);
napi_value js_extract_frames(napi_env env, napi_callback_info info);
napi_value js_fs_batch(napi_env env, napi_callback_info info);

/* scan.c */
napi_value js_scan_dir(napi_env env, napi_callback_info info);

/* tar.c: a growable byte buffer, and tar member headers */
struct sbuf {
	uint8_t *p;
	size_t len, cap;
};
bool sbuf_reserve(struct sbuf *b, size_t more);
bool sbuf_put(struct sbuf *b, const void *data, size_t len);
bool sbuf_zeros(struct sbuf *b, size_t len);
void sbuf_free(struct sbuf *b);

struct tar_member {
	const char *name; /* raw bytes: a directory's ends in '/' */
	size_t name_len;
	char type;        /* ustar typeflag: '0' '1' '2' '3' '4' '5' '6' */
	uint32_t mode;    /* permission bits (07777) */
	uint64_t uid, gid, size;
	int64_t mtime_sec;
	long mtime_nsec;
	const char *link; /* symlink target or hard link's first name; NULL */
	size_t link_len;
	uint32_t dev_major, dev_minor;
	size_t nxattrs;   /* SCHILY.xattr.<name> records, in this order */
	char *const *xnames;
	uint8_t *const *xvals;
	const size_t *xlens;
};
/* Zero bytes after n bytes of data up to the next 512-byte block. */
size_t tar_pad(uint64_t n);
/* Append the member's header (pax 'x' header first when needed); false: ENOMEM. */
bool tar_member(struct sbuf *out, const struct tar_member *m);

/* capture.c */
napi_value js_capture_start(napi_env env, napi_callback_info info);
napi_value js_capture_next(napi_env env, napi_callback_info info);
napi_value js_capture_stop(napi_env env, napi_callback_info info);

#endif
