/*
 * strata_sys: the few syscalls Node's fs module lacks, plus zstd (codec.c)
 * and capture's directory scan (scan.c). This file is the syscalls and the
 * module table.
 *
 *   llistxattrs, lsetxattr     extended attributes, never following symlinks
 *   mknod                      fifos and device nodes
 *   lutimens                   nanosecond timestamps on the link itself
 *   dataExtents                SEEK_DATA / SEEK_HOLE so sparse files stay sparse
 *   renameNoReplace            renameat2(RENAME_NOREPLACE)
 *   zstdCompress/Frame/Decompress  zstd frames on the libuv threadpool (codec.c)
 *   scanDir                    a directory's entries for capture (scan.c)
 *   writeFiles                 extract restore's small files, a frame at a time (extract.c)
 *   extractFrames              the same for many compressed frames, decoded and verified there
 *   fsBatch                    extract restore's mkdirs and metadata, in order, one job
 *   captureStart/Next/Stop     a whole tree into layer frames on C threads (capture.c, tar.c)
 *
 * Paths arrive as Buffers of raw bytes because file names need not be UTF-8.
 * Strings that carry bytes (xattr names, the `path` of an error) are latin1:
 * one char per byte, so they round-trip exactly through Buffer.from(s, 'latin1').
 *
 * Build: make native  (needs libzstd-dev and the Node headers).
 */
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>


#include "sys.h"


/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

/*
 * Turns a failed napi_status into a pending JS exception (unless one is
 * already pending) so every caller can simply return NULL.
 */
bool napi_failed(napi_env env, napi_status st)
{
	const napi_extended_error_info *info = NULL;
	const char *msg = "N-API call failed";
	bool pending = false;

	if (st == napi_ok)
		return false;
	/* Read the info first: napi_is_exception_pending clears it. */
	if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL &&
	    info->error_message != NULL)
		msg = info->error_message;
	if (napi_is_exception_pending(env, &pending) == napi_ok && pending)
		return true;
	/* If even throwing fails there is nobody left to tell. */
	(void)napi_throw_error(env, "ENAPI", msg);
	return true;
}

__attribute__((format(printf, 4, 5)))
void throw_fmt(napi_env env, enum throw_kind kind, const char *code,
		      const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	napi_status st;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	switch (kind) {
	case THROW_TYPE:
		st = napi_throw_type_error(env, code, msg);
		break;
	case THROW_RANGE:
		st = napi_throw_range_error(env, code, msg);
		break;
	default:
		st = napi_throw_error(env, code, msg);
		break;
	}
	(void)st; /* nothing more can be done if throwing fails */
}

/* Node spells errno 95 'ENOTSUP' (libuv); glibc calls it EOPNOTSUPP. */
const char *errno_code(int err)
{
	const char *name;

	if (err == ENOTSUP)
		return "ENOTSUP";
	name = strerrorname_np(err);
	return name != NULL ? name : "UNKNOWN";
}

/* Node's (libuv's) messages are glibc's with a lower-case first letter. */
static void errno_desc(int err, char *buf, size_t size)
{
	const char *desc = strerrordesc_np(err);

	snprintf(buf, size, "%s", desc != NULL ? desc : "unknown error");
	if (buf[0] >= 'A' && buf[0] <= 'Z')
		buf[0] = (char)(buf[0] - 'A' + 'a');
}

static napi_status set_str(napi_env env, napi_value obj, const char *key,
			   const char *val)
{
	napi_value v;
	napi_status st;

	st = napi_create_string_latin1(env, val, NAPI_AUTO_LENGTH, &v);
	if (st != napi_ok)
		return st;
	return napi_set_named_property(env, obj, key, v);
}

/* Error(msg) with .code; both are bytes, shown one char per byte. */
napi_status make_error(napi_env env, const char *code, const char *msg,
			      napi_value *out)
{
	napi_value jcode, jmsg;
	napi_status st;

	st = napi_create_string_latin1(env, code, NAPI_AUTO_LENGTH, &jcode);
	if (st != napi_ok)
		return st;
	st = napi_create_string_latin1(env, msg, NAPI_AUTO_LENGTH, &jmsg);
	if (st != napi_ok)
		return st;
	return napi_create_error(env, jcode, jmsg, out);
}

/*
 * Throws an Error shaped like Node's fs errors:
 *   "ENOENT: no such file or directory, lsetxattr '/path'"
 * with code, errno (negative), syscall, path and dest (latin1) set.
 */
void throw_errno(napi_env env, int err, const char *syscall,
			const char *path, const char *dest)
{
	const char *code = errno_code(err);
	char desc[128];
	char *msg = NULL;
	napi_value e, v;
	int n;

	errno_desc(err, desc, sizeof(desc));
	if (path != NULL && dest != NULL)
		n = asprintf(&msg, "%s: %s, %s '%s' -> '%s'", code, desc,
			     syscall, path, dest);
	else if (path != NULL)
		n = asprintf(&msg, "%s: %s, %s '%s'", code, desc, syscall,
			     path);
	else
		n = asprintf(&msg, "%s: %s, %s", code, desc, syscall);
	if (n < 0) {
		throw_fmt(env, THROW_ERROR, code, "%s: %s, %s", code, desc,
			  syscall);
		return;
	}

	if (napi_failed(env, make_error(env, code, msg, &e)))
		goto out;
	if (napi_failed(env, napi_create_int32(env, -err, &v)) ||
	    napi_failed(env, napi_set_named_property(env, e, "errno", v)) ||
	    napi_failed(env, set_str(env, e, "syscall", syscall)))
		goto out;
	if (path != NULL && napi_failed(env, set_str(env, e, "path", path)))
		goto out;
	if (dest != NULL && napi_failed(env, set_str(env, e, "dest", dest)))
		goto out;
	(void)napi_failed(env, napi_throw(env, e));
out:
	free(msg);
}

/* ------------------------------------------------------------------ */
/* Arguments                                                           */
/* ------------------------------------------------------------------ */

bool get_args(napi_env env, napi_callback_info info, size_t want,
		     napi_value *argv)
{
	size_t argc = want;

	if (napi_failed(env, napi_get_cb_info(env, info, &argc, argv, NULL,
					      NULL)))
		return false;
	if (argc < want) {
		throw_fmt(env, THROW_TYPE, "ERR_MISSING_ARGS",
			  "expected %zu arguments, got %zu", want, argc);
		return false;
	}
	return true;
}

bool get_buffer(napi_env env, napi_value v, const char *what,
		       void **data, size_t *len)
{
	bool is_buf = false;

	if (napi_failed(env, napi_is_buffer(env, v, &is_buf)))
		return false;
	if (!is_buf) {
		throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_TYPE",
			  "The \"%s\" argument must be a Buffer", what);
		return false;
	}
	if (napi_failed(env, napi_get_buffer_info(env, v, data, len)))
		return false;
	return true;
}

/*
 * Copies a path Buffer into a NUL-terminated string (caller frees).
 * An embedded NUL would silently truncate the path, so it is refused.
 */
char *get_path(napi_env env, napi_value v, const char *what)
{
	void *data = NULL;
	size_t len = 0;
	char *s;

	if (!get_buffer(env, v, what, &data, &len))
		return NULL;
	if (len > 0 && memchr(data, 0, len) != NULL) {
		throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_VALUE",
			  "The \"%s\" argument must not contain null bytes",
			  what);
		return NULL;
	}
	s = malloc(len + 1);
	if (s == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	if (len > 0)
		memcpy(s, data, len);
	s[len] = '\0';
	return s;
}

/* A latin1 JS string back to bytes; chars above U+00FF are not bytes. */
static char *get_latin1(napi_env env, napi_value v, const char *what)
{
	napi_valuetype t;
	char16_t *u = NULL;
	char *s = NULL;
	size_t len = 0, i;

	if (napi_failed(env, napi_typeof(env, v, &t)))
		return NULL;
	if (t != napi_string) {
		throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_TYPE",
			  "The \"%s\" argument must be of type string", what);
		return NULL;
	}
	if (napi_failed(env, napi_get_value_string_utf16(env, v, NULL, 0,
							 &len)))
		return NULL;
	u = malloc((len + 1) * sizeof(*u));
	s = malloc(len + 1);
	if (u == NULL || s == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		goto fail;
	}
	if (napi_failed(env, napi_get_value_string_utf16(env, v, u, len + 1,
							 &len)))
		goto fail;
	for (i = 0; i < len; i++) {
		if (u[i] == 0 || u[i] > 0xff) {
			throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_VALUE",
				  "The \"%s\" argument must be latin1 (one char "
				  "per byte, no NUL)", what);
			goto fail;
		}
		s[i] = (char)u[i];
	}
	s[len] = '\0';
	free(u);
	return s;
fail:
	free(u);
	free(s);
	return NULL;
}

/* An integral JS number within [min, max] (both within +-2^53). */
bool get_int(napi_env env, napi_value v, const char *what, double min,
		    double max, int64_t *out)
{
	napi_valuetype t;
	double d;

	if (napi_failed(env, napi_typeof(env, v, &t)))
		return false;
	if (t != napi_number) {
		throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_TYPE",
			  "The \"%s\" argument must be of type number", what);
		return false;
	}
	if (napi_failed(env, napi_get_value_double(env, v, &d)))
		return false;
	/* The range test also rejects NaN; it makes the cast defined. */
	if (!(d >= min && d <= max) || (double)(int64_t)d != d) {
		throw_fmt(env, THROW_RANGE, "ERR_OUT_OF_RANGE",
			  "The value of \"%s\" is out of range. It must be an "
			  "integer >= %.0f and <= %.0f. Received %g",
			  what, min, max, d);
		return false;
	}
	*out = (int64_t)d;
	return true;
}

/* ------------------------------------------------------------------ */
/* Extended attributes                                                 */
/* ------------------------------------------------------------------ */

/*
 * Reads the NUL-separated name list; *list gets one extra NUL so the last
 * entry is terminated even if the kernel's is not. Returns 0 or an errno.
 */
int read_xattr_list(const char *path, char **list, size_t *len)
{
	int attempt;

	*list = NULL;
	*len = 0;
	for (attempt = 0; attempt < XATTR_MAX_RETRIES; attempt++) {
		ssize_t want, got;
		char *buf;

		want = llistxattr(path, NULL, 0);
		if (want < 0)
			return errno;
		if (want == 0)
			return 0;
		buf = malloc((size_t)want + 1);
		if (buf == NULL)
			return ENOMEM;
		got = llistxattr(path, buf, (size_t)want);
		if (got < 0) {
			int err = errno;

			free(buf);
			if (err == ERANGE)
				continue; /* an attribute was added meanwhile */
			return err;
		}
		buf[got] = '\0';
		*list = buf;
		*len = (size_t)got;
		return 0;
	}
	return ERANGE;
}

/* Reads one value (caller frees *val). Returns 0 or an errno. */
int read_xattr(const char *path, const char *name, uint8_t **val,
		      size_t *len)
{
	int attempt;

	*val = NULL;
	*len = 0;
	for (attempt = 0; attempt < XATTR_MAX_RETRIES; attempt++) {
		ssize_t want, got;
		uint8_t *buf;

		want = lgetxattr(path, name, NULL, 0);
		if (want < 0)
			return errno;
		/* malloc(0) may return NULL; keep one byte so NULL means OOM. */
		buf = malloc(want > 0 ? (size_t)want : 1);
		if (buf == NULL)
			return ENOMEM;
		if (want == 0) {
			*val = buf;
			return 0;
		}
		got = lgetxattr(path, name, buf, (size_t)want);
		if (got < 0) {
			int err = errno;

			free(buf);
			if (err == ERANGE)
				continue; /* the value grew meanwhile */
			return err;
		}
		*val = buf;
		*len = (size_t)got;
		return 0;
	}
	return ERANGE;
}

void sort_xattrs(char **names, uint8_t **vals, size_t *lens, size_t n)
{
	/* Few per entry: an insertion sort, bytewise by name. */
	for (size_t a = 1; a < n; a++)
		for (size_t b = a; b > 0 && strcmp(names[b - 1], names[b]) > 0; b--) {
			char *tn = names[b];
			uint8_t *tv = vals[b];
			size_t tl = lens[b];

			names[b] = names[b - 1];
			vals[b] = vals[b - 1];
			lens[b] = lens[b - 1];
			names[b - 1] = tn;
			vals[b - 1] = tv;
			lens[b - 1] = tl;
		}
}

int cmp_names(const void *a, const void *b)
{
	/* strcmp compares as unsigned char: byte order, as documented. */
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* llistxattrs(path: Buffer): Array<[name: string (latin1), value: Buffer]> */
static napi_value js_llistxattrs(napi_env env, napi_callback_info info)
{
	napi_value argv[1], arr, result = NULL;
	char *path = NULL, *list = NULL, *p;
	char **names = NULL;
	uint8_t *val = NULL;
	size_t list_len = 0, count = 0, i;
	uint32_t idx = 0;
	int err;

	if (!get_args(env, info, 1, argv))
		return NULL;
	path = get_path(env, argv[0], "path");
	if (path == NULL)
		return NULL;

	err = read_xattr_list(path, &list, &list_len);
	/* No xattr support on this filesystem means "no xattrs". */
	if (err == ENOTSUP || err == ENODATA) {
		err = 0;
		list_len = 0;
	}
	if (err != 0) {
		throw_errno(env, err, "llistxattr", path, NULL);
		goto out;
	}

	for (p = list; p < list + list_len; p += strlen(p) + 1)
		if (*p != '\0')
			count++;
	names = calloc(count > 0 ? count : 1, sizeof(*names));
	if (names == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		goto out;
	}
	count = 0;
	for (p = list; p < list + list_len; p += strlen(p) + 1)
		if (*p != '\0')
			names[count++] = p;
	qsort(names, count, sizeof(*names), cmp_names);

	if (napi_failed(env, napi_create_array(env, &arr)))
		goto out;
	for (i = 0; i < count; i++) {
		napi_value pair, jname, jval;
		size_t vlen;

		err = read_xattr(path, names[i], &val, &vlen);
		if (err == ENODATA)
			continue; /* removed since the listing */
		if (err != 0) {
			throw_errno(env, err, "lgetxattr", path, NULL);
			goto out;
		}
		if (napi_failed(env, napi_create_string_latin1(
					     env, names[i], NAPI_AUTO_LENGTH,
					     &jname)) ||
		    napi_failed(env, napi_create_buffer_copy(env, vlen, val,
							     NULL, &jval)) ||
		    napi_failed(env, napi_create_array_with_length(env, 2,
								   &pair)) ||
		    napi_failed(env, napi_set_element(env, pair, 0, jname)) ||
		    napi_failed(env, napi_set_element(env, pair, 1, jval)) ||
		    napi_failed(env, napi_set_element(env, arr, idx, pair)))
			goto out;
		idx++;
		free(val);
		val = NULL;
	}
	result = arr;
out:
	free(val);
	free(names);
	free(list);
	free(path);
	return result;
}

/* lsetxattr(path: Buffer, name: string (latin1), value: Buffer): void */
static napi_value js_lsetxattr(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	char *path = NULL, *name = NULL;
	void *data = NULL;
	size_t len = 0;

	if (!get_args(env, info, 3, argv))
		return NULL;
	path = get_path(env, argv[0], "path");
	if (path == NULL)
		return NULL;
	name = get_latin1(env, argv[1], "name");
	if (name == NULL)
		goto out;
	if (!get_buffer(env, argv[2], "value", &data, &len))
		goto out;
	/* An empty Buffer may have no storage; the kernel still wants a pointer. */
	if (lsetxattr(path, name, data != NULL ? data : "", len, 0) < 0)
		throw_errno(env, errno, "lsetxattr", path, NULL);
out:
	free(name);
	free(path);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Nodes, times, renames                                               */
/* ------------------------------------------------------------------ */

/* mknod(path: Buffer, mode: number, major: number, minor: number): void */
static napi_value js_mknod(napi_env env, napi_callback_info info)
{
	napi_value argv[4];
	int64_t mode, major, minor;
	char *path;

	if (!get_args(env, info, 4, argv))
		return NULL;
	if (!get_int(env, argv[1], "mode", 0, UINT32_MAX, &mode) ||
	    !get_int(env, argv[2], "major", 0, UINT32_MAX, &major) ||
	    !get_int(env, argv[3], "minor", 0, UINT32_MAX, &minor))
		return NULL;
	path = get_path(env, argv[0], "path");
	if (path == NULL)
		return NULL;
	if (mknod(path, (mode_t)mode,
		  makedev((unsigned int)major, (unsigned int)minor)) < 0)
		throw_errno(env, errno, "mknod", path, NULL);
	free(path);
	return NULL;
}

/*
 * lutimens(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec): void
 * Seconds are JS numbers (exact up to 2^53, may be negative), so no
 * precision is lost the way fs.lutimes' float seconds lose it.
 */
static napi_value js_lutimens(napi_env env, napi_callback_info info)
{
	napi_value argv[5];
	struct timespec ts[2];
	int64_t as, ans, ms, mns;
	char *path;

	if (!get_args(env, info, 5, argv))
		return NULL;
	if (!get_int(env, argv[1], "atimeSec", -MAX_SAFE_INT, MAX_SAFE_INT,
		     &as) ||
	    !get_int(env, argv[2], "atimeNsec", 0, 999999999, &ans) ||
	    !get_int(env, argv[3], "mtimeSec", -MAX_SAFE_INT, MAX_SAFE_INT,
		     &ms) ||
	    !get_int(env, argv[4], "mtimeNsec", 0, 999999999, &mns))
		return NULL;
	path = get_path(env, argv[0], "path");
	if (path == NULL)
		return NULL;
	ts[0].tv_sec = (time_t)as;
	ts[0].tv_nsec = (long)ans;
	ts[1].tv_sec = (time_t)ms;
	ts[1].tv_nsec = (long)mns;
	if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) < 0)
		throw_errno(env, errno, "utimensat", path, NULL);
	free(path);
	return NULL;
}

/* renameNoReplace(from: Buffer, to: Buffer): void; EEXIST if `to` exists. */
static napi_value js_rename_noreplace(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	char *from, *to;

	if (!get_args(env, info, 2, argv))
		return NULL;
	from = get_path(env, argv[0], "from");
	if (from == NULL)
		return NULL;
	to = get_path(env, argv[1], "to");
	if (to == NULL) {
		free(from);
		return NULL;
	}
	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) < 0)
		throw_errno(env, errno, "rename", from, to);
	free(to);
	free(from);
	return NULL;
}

/*
 * lockFile(fd: number): boolean
 * An exclusive OFD lock on the whole file, without waiting: true when taken,
 * false when another open file description holds one. It lasts as long as
 * this description, and the kernel drops it when the process dies, so there
 * is never a stale lock to judge or clean up. fd must be open for writing.
 */
static napi_value js_lock_file(napi_env env, napi_callback_info info)
{
	napi_value argv[1], result;
	int64_t fd64;
	struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	int rc;

	if (!get_args(env, info, 1, argv))
		return NULL;
	if (!get_int(env, argv[0], "fd", 0, INT_MAX, &fd64))
		return NULL;
	while ((rc = fcntl((int)fd64, F_OFD_SETLK, &l)) < 0 && errno == EINTR)
		;
	if (rc < 0 && errno != EAGAIN && errno != EACCES) {
		throw_errno(env, errno, "fcntl(F_OFD_SETLK)", NULL, NULL);
		return NULL;
	}
	if (napi_failed(env, napi_get_boolean(env, rc == 0, &result)))
		return NULL;
	return result;
}

/* ------------------------------------------------------------------ */
/* Sparse files                                                        */
/* ------------------------------------------------------------------ */

static napi_status push_extent(napi_env env, napi_value arr, uint32_t idx,
			       int64_t off, int64_t len)
{
	napi_value pair, v;
	napi_status st;

	st = napi_create_array_with_length(env, 2, &pair);
	if (st != napi_ok)
		return st;
	st = napi_create_int64(env, off, &v);
	if (st != napi_ok)
		return st;
	st = napi_set_element(env, pair, 0, v);
	if (st != napi_ok)
		return st;
	st = napi_create_int64(env, len, &v);
	if (st != napi_ok)
		return st;
	st = napi_set_element(env, pair, 1, v);
	if (st != napi_ok)
		return st;
	return napi_set_element(env, arr, idx, pair);
}

/*
 * dataExtents(fd: number, size: number): Array<[offset, length]>
 * Data regions in [0, size). The fd's file offset is restored afterwards
 * so callers that read() sequentially are not disturbed.
 */
static napi_value js_data_extents(napi_env env, napi_callback_info info)
{
	napi_value argv[2], arr, result = NULL;
	int64_t fd64, size;
	off_t saved, off = 0;
	uint32_t idx = 0;
	int err = 0;

	if (!get_args(env, info, 2, argv))
		return NULL;
	if (!get_int(env, argv[0], "fd", 0, INT_MAX, &fd64) ||
	    !get_int(env, argv[1], "size", 0, MAX_SAFE_INT, &size))
		return NULL;
	if (napi_failed(env, napi_create_array(env, &arr)))
		return NULL;

	saved = lseek((int)fd64, 0, SEEK_CUR);
	if (saved < 0) {
		throw_errno(env, errno, "lseek", NULL, NULL);
		return NULL;
	}

	while (off < size) {
		off_t data, hole;

		data = lseek((int)fd64, off, SEEK_DATA);
		if (data < 0) {
			err = errno;
			if (err == ENXIO) {
				err = 0; /* only holes from off to EOF */
				break;
			}
			if (off == 0 && (err == EINVAL || err == EOPNOTSUPP)) {
				/* No SEEK_DATA here: treat it all as data. */
				err = 0;
				if (napi_failed(env, push_extent(env, arr, 0, 0,
								 size)))
					goto restore;
				break;
			}
			break;
		}
		if (data >= size)
			break;
		hole = lseek((int)fd64, data, SEEK_HOLE);
		if (hole < 0) {
			err = errno;
			if (err != ENXIO)
				break;
			err = 0; /* truncated under us: data runs to EOF */
			hole = size;
		}
		if (hole > size)
			hole = size;
		if (hole <= data)
			hole = size; /* never loop forever on a confused fs */
		if (napi_failed(env, push_extent(env, arr, idx++, data,
						 hole - data)))
			goto restore;
		off = hole;
	}
	if (err != 0)
		throw_errno(env, err, "lseek", NULL, NULL);
	else
		result = arr;
restore:
	if (lseek((int)fd64, saved, SEEK_SET) < 0 && result != NULL) {
		throw_errno(env, errno, "lseek", NULL, NULL);
		result = NULL;
	}
	return result;
}

/*
 * Settle a job's promise with `value` (resolve when ok, else reject). When
 * building the value failed (st != napi_ok, likely out of memory), any half-
 * built exception is dropped and the promise is rejected plainly. A promise
 * that cannot be settled at all would hang its caller forever: fatal.
 */
void settle_work(napi_env env, napi_deferred deferred, napi_status st, bool ok,
		 napi_value value, const char *what)
{
	if (st != napi_ok) {
		bool pending = false;
		napi_value exc;

		if (napi_is_exception_pending(env, &pending) == napi_ok && pending)
			(void)napi_get_and_clear_last_exception(env, &exc);
		ok = false;
		st = make_error(env, "ENOMEM", "ENOMEM: could not create the result", &value);
	}
	if (st == napi_ok)
		st = ok ? napi_resolve_deferred(env, deferred, value) :
			  napi_reject_deferred(env, deferred, value);
	if (st != napi_ok)
		napi_fatal_error("strata_sys", NAPI_AUTO_LENGTH, what, NAPI_AUTO_LENGTH);
}

/*
 * Create an async work item for `job`, its promise, and queue it. Returns the
 * promise, or NULL with an exception pending. *queued says who owns the job:
 * true, the pool (its complete callback frees it); false, the caller, who
 * frees it now (a promise returned then is already rejected).
 */
napi_value queue_work(napi_env env, const char *name,
		      napi_async_execute_callback execute,
		      napi_async_complete_callback complete, void *job,
		      napi_async_work *work, napi_deferred *deferred,
		      bool *queued)
{
	napi_value promise, resource, exc;

	*queued = false;
	if (napi_failed(env, napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH,
						     &resource)) ||
	    napi_failed(env, napi_create_async_work(env, NULL, resource, execute,
						    complete, job, work)) ||
	    napi_failed(env, napi_create_promise(env, deferred, &promise)))
		return NULL;
	if (!napi_failed(env, napi_queue_async_work(env, *work))) {
		*queued = true;
		return promise;
	}
	/* The promise exists now: move the exception into it. */
	if (napi_get_and_clear_last_exception(env, &exc) == napi_ok &&
	    napi_reject_deferred(env, *deferred, exc) == napi_ok)
		return promise;
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Module                                                              */
/* ------------------------------------------------------------------ */

NAPI_MODULE_INIT()
{
	const napi_property_descriptor props[] = {
		{ .utf8name = "llistxattrs", .method = js_llistxattrs,
		  .attributes = napi_enumerable },
		{ .utf8name = "lsetxattr", .method = js_lsetxattr,
		  .attributes = napi_enumerable },
		{ .utf8name = "mknod", .method = js_mknod,
		  .attributes = napi_enumerable },
		{ .utf8name = "lutimens", .method = js_lutimens,
		  .attributes = napi_enumerable },
		{ .utf8name = "dataExtents", .method = js_data_extents,
		  .attributes = napi_enumerable },
		{ .utf8name = "renameNoReplace", .method = js_rename_noreplace,
		  .attributes = napi_enumerable },
		{ .utf8name = "lockFile", .method = js_lock_file,
		  .attributes = napi_enumerable },
		{ .utf8name = "zstdCompress", .method = js_zstd_compress,
		  .attributes = napi_enumerable },
		{ .utf8name = "zstdFrame", .method = js_zstd_frame,
		  .attributes = napi_enumerable },
		{ .utf8name = "zstdDecompress", .method = js_zstd_decompress,
		  .attributes = napi_enumerable },
		{ .utf8name = "writeFiles", .method = js_write_files,
		  .attributes = napi_enumerable },
		{ .utf8name = "extractFrames", .method = js_extract_frames,
		  .attributes = napi_enumerable },
		{ .utf8name = "fsBatch", .method = js_fs_batch,
		  .attributes = napi_enumerable },
		{ .utf8name = "scanDir", .method = js_scan_dir,
		  .attributes = napi_enumerable },
		{ .utf8name = "captureStart", .method = js_capture_start,
		  .attributes = napi_enumerable },
		{ .utf8name = "captureNext", .method = js_capture_next,
		  .attributes = napi_enumerable },
		{ .utf8name = "captureStop", .method = js_capture_stop,
		  .attributes = napi_enumerable },
		{ .utf8name = "mountFs", .method = js_mount_fs,
		  .attributes = napi_enumerable },
		{ .utf8name = "unmountFs", .method = js_unmount_fs,
		  .attributes = napi_enumerable },
		{ .utf8name = "spawnDetached", .method = js_spawn_detached,
		  .attributes = napi_enumerable },
	};

	if (napi_failed(env, napi_define_properties(
				     env, exports,
				     sizeof(props) / sizeof(props[0]), props)))
		return NULL;
	return exports;
}
