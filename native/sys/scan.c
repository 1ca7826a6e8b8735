/*
 * scanDir: what capture needs of one directory, in one threadpool job.
 *
 *   scanDir(dir: Buffer, names: Buffer[] | null, smallMax, budget): Promise<Scan>
 *
 * With names null the directory is listed and its names sorted bytewise (the
 * layer's order); otherwise the given names are scanned, in that order. For
 * each name: lstat; a symlink's target; xattrs with their values; and for a
 * dense regular file of at most smallMax bytes, its bytes and their sha256,
 * kept only if the file held still (the point-in-time rule of
 * src/capture/tree.ts: size, mtime, ctime and inode the same before and after
 * the read; one changed within RACY_NS before it, but at least SETTLED_NS
 * before, is read a second time, which must agree: SCAN_TWICE). A file that
 * did not, or changed just now, is left for the careful path in JavaScript,
 * which reads it again with retries.
 * Small files are read while their total stays within budget; later ones are
 * flagged SCAN_BUDGET and JavaScript asks again for the rest.
 *
 * One job per directory, not several calls per file: the per-call cost (a
 * libuv request, promise, callback) was most of capture's time.
 *
 * Result: { names: Buffer, nameEnds: Uint32Array, fields: BigInt64Array
 * (SCAN_FIELDS per entry, enum scan_field), data: Buffer, digests: Buffer
 * (32 bytes per entry), xattrs: Array<Array<[string, Buffer]> | undefined> |
 * null }. src/sys/scan.ts decodes it; test/native-scan.test.ts checks both.
 */
#include "sys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

/* Keep in step with src/sys/scan.ts. */
enum scan_field {
	F_FLAGS,
	F_ERRNO,     /* lstat failed (not ENOENT/ENOTDIR): JavaScript rethrows */
	F_MODE,
	F_UID,
	F_GID,
	F_SIZE,
	F_BLOCKS,
	F_NLINK,
	F_INO,
	F_DEV,
	F_RDEV,
	F_MTIME_S,
	F_MTIME_NS,
	F_CTIME_S,
	F_CTIME_NS,
	F_DATA_OFF,  /* SCAN_DATA: file bytes, SCAN_LINK: target, in data */
	F_DATA_LEN,
	SCAN_FIELDS
};

enum scan_flag {
	SCAN_EXISTS = 1,  /* lstat found it (else: gone, not in this point in time) */
	SCAN_DATA = 2,    /* a small file read whole and held still: data, digest */
	SCAN_LINK = 4,    /* a symlink whose target is in data */
	SCAN_XATTRS = 8,  /* xattrs read (entry in xattrs, or none) */
	SCAN_BUDGET = 16, /* a small file not read: over this job's budget */
	SCAN_TWICE = 32,  /* with SCAN_DATA: changed just before the read, read twice, both agree */
};

/* A write changes ctime as it begins: a file changed this recently is read twice. */
#define RACY_NS 2000000000LL
/* From this size the second read waits for a write in flight (tree.ts SETTLE_FROM): JavaScript's. */
#define SETTLE_FROM (256 * 1024)
/*
 * A file changed less than this before the read may have a write still copying into it: two
 * quick reads inside one stalled write agree on a torn file (test/native-scan.test.ts makes
 * them). Older changes are read twice here; newer ones go to the careful path, which retries.
 */
#define SETTLED_NS 30000000LL

struct xattr_set {
	size_t n;
	char **names;
	uint8_t **vals;
	size_t *lens;
};

struct scan_job {
	napi_async_work work;
	napi_deferred deferred;
	char *dir;
	size_t dir_len;
	char **names;
	size_t count;
	int64_t small_max;
	int64_t budget;
	int64_t *fields;
	uint8_t *data;
	size_t data_len, data_cap;
	uint8_t *digests;
	struct xattr_set **xattrs;
	bool any_xattrs;
	int err;             /* the job failed: errno, in syscall on dir */
	const char *syscall;
};

static void xattr_set_free(struct xattr_set *x)
{
	size_t i;

	if (x == NULL)
		return;
	for (i = 0; i < x->n; i++) {
		free(x->names[i]);
		free(x->vals[i]);
	}
	free(x->names);
	free(x->vals);
	free(x->lens);
	free(x);
}

static void scan_job_free(napi_env env, struct scan_job *job)
{
	size_t i;

	if (job->work != NULL)
		(void)napi_delete_async_work(env, job->work);
	for (i = 0; i < job->count; i++) {
		free(job->names[i]);
		if (job->xattrs != NULL)
			xattr_set_free(job->xattrs[i]);
	}
	free(job->names);
	free(job->xattrs);
	/* fields, data and digests belong to JS once handed over (set NULL). */
	free(job->fields);
	free(job->data);
	free(job->digests);
	free(job->dir);
	free(job);
}

/* Room for `more` bytes in data; false when out of memory. */
static bool data_reserve(struct scan_job *job, size_t more)
{
	size_t cap = job->data_cap > 0 ? job->data_cap : 64 * 1024;
	uint8_t *p;

	if (job->data_len + more <= job->data_cap)
		return true;
	while (cap < job->data_len + more)
		cap *= 2;
	p = realloc(job->data, cap);
	if (p == NULL)
		return false;
	job->data = p;
	job->data_cap = cap;
	return true;
}

static void put_stat(int64_t *f, const struct stat *st)
{
	f[F_MODE] = st->st_mode;
	f[F_UID] = st->st_uid;
	f[F_GID] = st->st_gid;
	f[F_SIZE] = st->st_size;
	f[F_BLOCKS] = st->st_blocks;
	f[F_NLINK] = (int64_t)st->st_nlink;
	f[F_INO] = (int64_t)st->st_ino;
	f[F_DEV] = (int64_t)st->st_dev;
	f[F_RDEV] = (int64_t)st->st_rdev;
	f[F_MTIME_S] = st->st_mtim.tv_sec;
	f[F_MTIME_NS] = st->st_mtim.tv_nsec;
	f[F_CTIME_S] = st->st_ctim.tv_sec;
	f[F_CTIME_NS] = st->st_ctim.tv_nsec;
}

/* A second read of fd's size bytes equals first, and the file has not moved since st. */
static bool reread_matches(int fd, const uint8_t *first, size_t size, const struct stat *st)
{
	struct stat again;
	uint8_t *buf;
	size_t got = 0;
	bool same;

	if (size >= SETTLE_FROM)
		return false;
	buf = malloc(size > 0 ? size : 1);
	if (buf == NULL)
		return false;
	while (got < size) {
		ssize_t n = pread(fd, buf + got, size - got, (off_t)got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	same = got == size && memcmp(buf, first, size) == 0 && fstat(fd, &again) == 0 && same_file(st, &again);
	free(buf);
	return same;
}

/*
 * Read a small file whole; keep it (SCAN_DATA) only if it held still (read
 * twice when it changed just before). Any failure simply leaves it to the
 * careful path, which reports real errors.
 */
static void read_small(struct scan_job *job, int dfd, size_t i,
		       const struct stat *st)
{
	int64_t *f = job->fields + i * SCAN_FIELDS;
	size_t size = (size_t)st->st_size, got = 0;
	struct timespec t0;
	struct stat after;
	unsigned int md_len = 0;
	bool twice = false;
	int fd;

	if (clock_gettime(CLOCK_REALTIME, &t0) != 0)
		return;
	if (!data_reserve(job, size))
		return;
	fd = openat(dfd, job->names[i], O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return;
	while (got < size) {
		ssize_t n = pread(fd, job->data + job->data_len + got,
				  size - got, (off_t)got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (fstat(fd, &after) != 0 || got != size || !same_file(st, &after)) {
		close(fd);
		return;
	}
	if (ns_of(&after.st_ctim) >= ns_of(&t0) - RACY_NS) {
		if (ns_of(&after.st_ctim) >= ns_of(&t0) - SETTLED_NS) {
			close(fd);
			return;
		}
		/*
		 * Changed just before the read (a tree just written: npm install, cp -a): a write may
		 * still have been copying. A second read must find the same bytes, as tree.ts's
		 * careful path does; then the file is kept, without one job per file from JavaScript.
		 */
		if (!reread_matches(fd, job->data + job->data_len, size, st)) {
			close(fd);
			return;
		}
		twice = true;
	}
	close(fd);
	if (EVP_Digest(job->data + job->data_len, size,
		       job->digests + i * 32, &md_len, EVP_sha256(),
		       NULL) != 1 || md_len != 32)
		return;
	put_stat(f, &after);
	f[F_DATA_OFF] = (int64_t)job->data_len;
	f[F_DATA_LEN] = (int64_t)size;
	f[F_FLAGS] |= SCAN_DATA | (twice ? SCAN_TWICE : 0);
	job->data_len += size;
}

/* A symlink's target into data; false when it vanished. */
static bool read_link(struct scan_job *job, int dfd, size_t i,
		      const struct stat *st)
{
	int64_t *f = job->fields + i * SCAN_FIELDS;
	size_t cap = st->st_size > 0 ? (size_t)st->st_size + 1 : 256;
	int attempt;

	for (attempt = 0; attempt < 8; attempt++, cap *= 2) {
		ssize_t n;

		if (!data_reserve(job, cap))
			return true; /* JS reads it */
		n = readlinkat(dfd, job->names[i], (char *)job->data + job->data_len, cap);
		if (n < 0)
			return !(errno == ENOENT || errno == ENOTDIR);
		if ((size_t)n < cap) {
			f[F_DATA_OFF] = (int64_t)job->data_len;
			f[F_DATA_LEN] = n;
			f[F_FLAGS] |= SCAN_LINK;
			job->data_len += (size_t)n;
			return true;
		}
	}
	return true;
}

/*
 * Xattrs by path (there is no llistxattrat). Returns false when the entry
 * vanished. *unsupported is set when the filesystem has no xattrs at all, so
 * the rest of the directory is not asked.
 */
static bool read_xattrs(struct scan_job *job, size_t i, bool *unsupported)
{
	int64_t *f = job->fields + i * SCAN_FIELDS;
	size_t name_len = strlen(job->names[i]), list_len = 0, n = 0;
	struct xattr_set *x = NULL;
	char *path, *list = NULL, *p;
	int err;

	path = malloc(job->dir_len + 1 + name_len + 1);
	if (path == NULL)
		return true;
	memcpy(path, job->dir, job->dir_len);
	path[job->dir_len] = '/';
	memcpy(path + job->dir_len + 1, job->names[i], name_len + 1);
	err = read_xattr_list(path, &list, &list_len);
	if (err == ENOTSUP) {
		*unsupported = true;
		f[F_FLAGS] |= SCAN_XATTRS;
		goto out;
	}
	if (err == ENOENT || err == ENOTDIR) {
		free(path);
		return false;
	}
	if (err != 0)
		goto out; /* JS asks again and reports it */
	for (p = list; p < list + list_len; p += strlen(p) + 1)
		if (*p != '\0')
			n++;
	if (n == 0) {
		f[F_FLAGS] |= SCAN_XATTRS;
		goto out;
	}
	x = calloc(1, sizeof(*x));
	if (x == NULL)
		goto out;
	x->names = calloc(n, sizeof(*x->names));
	x->vals = calloc(n, sizeof(*x->vals));
	x->lens = calloc(n, sizeof(*x->lens));
	if (x->names == NULL || x->vals == NULL || x->lens == NULL)
		goto fail;
	for (p = list; p < list + list_len; p += strlen(p) + 1) {
		if (*p == '\0')
			continue;
		x->names[x->n] = strdup(p);
		if (x->names[x->n] == NULL)
			goto fail;
		err = read_xattr(path, p, &x->vals[x->n], &x->lens[x->n]);
		if (err == ENODATA) {
			free(x->names[x->n]);
			continue; /* removed since the listing */
		}
		if (err != 0) {
			free(x->names[x->n]);
			goto fail; /* JS asks again and reports it */
		}
		x->n++;
	}
	/* Sorted by name bytes, as llistxattrs returns them. */
	sort_xattrs(x->names, x->vals, x->lens, x->n);
	job->xattrs[i] = x;
	job->any_xattrs = job->any_xattrs || x->n > 0;
	f[F_FLAGS] |= SCAN_XATTRS;
	x = NULL;
	goto out;
fail:
	xattr_set_free(x);
	x = NULL;
out:
	free(list);
	free(path);
	return true;
}

static int list_dir(struct scan_job *job, int dfd)
{
	size_t cap = 64;
	struct dirent *d;
	DIR *dir;
	int fd = dup(dfd);

	if (fd < 0)
		return errno;
	dir = fdopendir(fd);
	if (dir == NULL) {
		int err = errno;

		close(fd);
		return err;
	}
	job->names = malloc(cap * sizeof(*job->names));
	if (job->names == NULL)
		goto nomem;
	for (;;) {
		errno = 0;
		d = readdir(dir);
		if (d == NULL)
			break;
		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		if (job->count == cap) {
			char **p = realloc(job->names, 2 * cap * sizeof(*p));

			if (p == NULL)
				goto nomem;
			job->names = p;
			cap *= 2;
		}
		job->names[job->count] = strdup(d->d_name);
		if (job->names[job->count] == NULL)
			goto nomem;
		job->count++;
	}
	if (errno != 0) {
		int err = errno;

		closedir(dir);
		return err;
	}
	closedir(dir);
	qsort(job->names, job->count, sizeof(*job->names), cmp_names);
	return 0;
nomem:
	closedir(dir);
	return ENOMEM;
}

/* Runs on a threadpool thread: no N-API calls here. */
static void scan_execute(napi_env env, void *data)
{
	struct scan_job *job = data;
	bool no_xattrs = false;
	int64_t used = 0;
	size_t i;
	int dfd;

	(void)env;
	dfd = open(job->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		job->err = errno;
		job->syscall = "scandir";
		return;
	}
	if (job->names == NULL) {
		job->err = list_dir(job, dfd);
		if (job->err != 0) {
			job->syscall = "scandir";
			close(dfd);
			return;
		}
	}
	job->fields = calloc(job->count > 0 ? job->count * SCAN_FIELDS : 1, sizeof(int64_t));
	job->digests = calloc(job->count > 0 ? job->count : 1, 32);
	job->xattrs = calloc(job->count > 0 ? job->count : 1, sizeof(*job->xattrs));
	if (job->fields == NULL || job->digests == NULL || job->xattrs == NULL) {
		job->err = ENOMEM;
		job->syscall = "malloc";
		close(dfd);
		return;
	}
	for (i = 0; i < job->count; i++) {
		int64_t *f = job->fields + i * SCAN_FIELDS;
		struct stat st;

		if (fstatat(dfd, job->names[i], &st, AT_SYMLINK_NOFOLLOW) != 0) {
			if (errno != ENOENT && errno != ENOTDIR)
				f[F_ERRNO] = errno;
			continue; /* gone: not part of this point in time */
		}
		put_stat(f, &st);
		f[F_FLAGS] = SCAN_EXISTS;
		if (S_ISLNK(st.st_mode)) {
			if (!read_link(job, dfd, i, &st)) {
				f[F_FLAGS] = 0;
				continue;
			}
		} else if (S_ISREG(st.st_mode) && st.st_size <= job->small_max &&
			   (int64_t)st.st_blocks * 512 >= st.st_size) {
			/* Possibly sparse files (fewer blocks than bytes) take the careful path. */
			if (used > 0 && used + st.st_size > job->budget) {
				f[F_FLAGS] |= SCAN_BUDGET;
				continue;
			}
			read_small(job, dfd, i, &st);
			if (f[F_FLAGS] & SCAN_DATA)
				used += st.st_size;
		}
		if (no_xattrs)
			f[F_FLAGS] |= SCAN_XATTRS;
		else if (!read_xattrs(job, i, &no_xattrs))
			f[F_FLAGS] = 0; /* vanished under the scan */
	}
	close(dfd);
}

static void free_cb(napi_env env, void *data, void *hint)
{
	(void)env;
	(void)hint;
	free(data);
}

napi_status errno_value(napi_env env, int err, const char *syscall,
			       const char *path, napi_value *out)
{
	const char *code = strerrorname_np(err), *desc = strerrordesc_np(err);
	char msg[512];
	napi_value v;
	napi_status st;

	if (code == NULL)
		code = "UNKNOWN";
	snprintf(msg, sizeof(msg), "%s: %s, %s '%s'", code,
		 desc != NULL ? desc : "unknown error", syscall, path);
	if (msg[strlen(code) + 2] >= 'A' && msg[strlen(code) + 2] <= 'Z')
		msg[strlen(code) + 2] = (char)(msg[strlen(code) + 2] - 'A' + 'a');
	st = make_error(env, code, msg, out);
	if (st == napi_ok)
		st = napi_create_int32(env, -err, &v);
	if (st == napi_ok)
		st = napi_set_named_property(env, *out, "errno", v);
	if (st == napi_ok)
		st = napi_create_string_latin1(env, syscall, NAPI_AUTO_LENGTH, &v);
	if (st == napi_ok)
		st = napi_set_named_property(env, *out, "syscall", v);
	if (st == napi_ok)
		st = napi_create_string_latin1(env, path, NAPI_AUTO_LENGTH, &v);
	if (st == napi_ok)
		st = napi_set_named_property(env, *out, "path", v);
	return st;
}

/* A C buffer handed to JS without a copy (freed by the GC); NULL-safe. */
static napi_status take_buffer(napi_env env, uint8_t **p, size_t len,
			       napi_value *out)
{
	napi_status st;

	if (len == 0)
		return napi_create_buffer(env, 0, NULL, out);
	st = napi_create_external_buffer(env, len, *p, free_cb, NULL, out);
	if (st == napi_ok)
		*p = NULL;
	return st;
}

static napi_status scan_result(napi_env env, struct scan_job *job,
			       napi_value *out)
{
	napi_value v, ab, arr;
	size_t total = 0, i, at = 0;
	uint32_t *ends;
	uint8_t *names;
	napi_status st;
	void *p;

	st = napi_create_object(env, out);
	if (st != napi_ok)
		return st;
	for (i = 0; i < job->count; i++)
		total += strlen(job->names[i]);
	st = napi_create_buffer(env, total, &p, &v);
	if (st != napi_ok)
		return st;
	names = p;
	st = napi_create_arraybuffer(env, (job->count > 0 ? job->count : 1) * 4, &p, &ab);
	if (st != napi_ok)
		return st;
	ends = p;
	for (i = 0; i < job->count; i++) {
		size_t n = strlen(job->names[i]);

		memcpy(names + at, job->names[i], n);
		at += n;
		ends[i] = (uint32_t)at;
	}
	st = napi_set_named_property(env, *out, "names", v);
	if (st == napi_ok)
		st = napi_create_typedarray(env, napi_uint32_array, job->count, ab, 0, &v);
	if (st == napi_ok)
		st = napi_set_named_property(env, *out, "nameEnds", v);
	if (st != napi_ok)
		return st;
	st = napi_create_external_arraybuffer(env, job->fields,
					      (job->count > 0 ? job->count * SCAN_FIELDS : 1) * sizeof(int64_t),
					      free_cb, NULL, &ab);
	if (st != napi_ok)
		return st;
	job->fields = NULL;
	st = napi_create_typedarray(env, napi_bigint64_array, job->count * SCAN_FIELDS, ab, 0, &v);
	if (st == napi_ok)
		st = napi_set_named_property(env, *out, "fields", v);
	if (st == napi_ok)
		st = take_buffer(env, &job->data, job->data_len, &v);
	if (st == napi_ok)
		st = napi_set_named_property(env, *out, "data", v);
	if (st == napi_ok)
		st = take_buffer(env, &job->digests, job->count * 32, &v);
	if (st == napi_ok)
		st = napi_set_named_property(env, *out, "digests", v);
	if (st != napi_ok)
		return st;
	if (!job->any_xattrs)
		return napi_get_null(env, &v) == napi_ok ?
			       napi_set_named_property(env, *out, "xattrs", v) : napi_generic_failure;
	st = napi_create_array_with_length(env, job->count, &arr);
	for (i = 0; st == napi_ok && i < job->count; i++) {
		struct xattr_set *x = job->xattrs[i];
		napi_value list;
		size_t k;

		if (x == NULL || x->n == 0)
			continue;
		st = napi_create_array_with_length(env, x->n, &list);
		for (k = 0; st == napi_ok && k < x->n; k++) {
			napi_value pair, jn, jv;

			st = napi_create_string_latin1(env, x->names[k], NAPI_AUTO_LENGTH, &jn);
			if (st == napi_ok)
				st = napi_create_buffer_copy(env, x->lens[k], x->vals[k], NULL, &jv);
			if (st == napi_ok)
				st = napi_create_array_with_length(env, 2, &pair);
			if (st == napi_ok)
				st = napi_set_element(env, pair, 0, jn);
			if (st == napi_ok)
				st = napi_set_element(env, pair, 1, jv);
			if (st == napi_ok)
				st = napi_set_element(env, list, (uint32_t)k, pair);
		}
		if (st == napi_ok)
			st = napi_set_element(env, arr, (uint32_t)i, list);
	}
	if (st == napi_ok)
		st = napi_set_named_property(env, *out, "xattrs", arr);
	return st;
}

static void scan_complete(napi_env env, napi_status status, void *data)
{
	struct scan_job *job = data;
	napi_value value;
	napi_status st;
	bool ok = false;

	if (status == napi_cancelled)
		st = make_error(env, "ECANCELED", "ECANCELED: scan cancelled", &value);
	else if (job->err != 0)
		st = errno_value(env, job->err, job->syscall, job->dir, &value);
	else {
		st = scan_result(env, job, &value);
		ok = st == napi_ok;
	}
	settle_work(env, job->deferred, st, ok, value, "cannot settle a scan promise");
	scan_job_free(env, job);
}

/* The names argument: null (list the directory) or an array of Buffers. */
static bool get_names(napi_env env, napi_value v, struct scan_job *job)
{
	napi_valuetype t;
	uint32_t n, i;
	bool is_arr = false;

	if (napi_failed(env, napi_typeof(env, v, &t)))
		return false;
	if (t == napi_null || t == napi_undefined)
		return true;
	if (napi_failed(env, napi_is_array(env, v, &is_arr)))
		return false;
	if (!is_arr) {
		throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_TYPE",
			  "The \"names\" argument must be null or an array of Buffers");
		return false;
	}
	if (napi_failed(env, napi_get_array_length(env, v, &n)))
		return false;
	job->names = calloc(n > 0 ? n : 1, sizeof(*job->names));
	if (job->names == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return false;
	}
	for (i = 0; i < n; i++) {
		napi_value e;
		char *name;

		if (napi_failed(env, napi_get_element(env, v, i, &e)))
			return false;
		name = get_path(env, e, "names[i]");
		if (name == NULL)
			return false;
		if (name[0] == '\0' || strchr(name, '/') != NULL) {
			free(name);
			throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_VALUE",
				  "names must be single path components");
			return false;
		}
		job->names[job->count++] = name;
	}
	return true;
}

napi_value js_scan_dir(napi_env env, napi_callback_info info)
{
	napi_value argv[4], promise = NULL;
	struct scan_job *job;
	bool queued = false;

	if (!get_args(env, info, 4, argv))
		return NULL;
	job = calloc(1, sizeof(*job));
	if (job == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	job->dir = get_path(env, argv[0], "dir");
	if (job->dir == NULL || !get_names(env, argv[1], job) ||
	    !get_int(env, argv[2], "smallMax", 0, 1 << 30, &job->small_max) ||
	    !get_int(env, argv[3], "budget", 0, MAX_SAFE_INT, &job->budget))
		goto fail;
	job->dir_len = strlen(job->dir);
	/* Listing was asked for: names NULL tells the worker. */
	promise = queue_work(env, "strata.scanDir", scan_execute, scan_complete, job,
			     &job->work, &job->deferred, &queued);
	if (queued)
		return promise;
fail:
	scan_job_free(env, job);
	return promise;
}
