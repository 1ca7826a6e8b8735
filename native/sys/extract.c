/*
 * extract.c: writeFiles, for extract restore. The files whose whole content
 * lies in one verified frame are created, written and given their metadata
 * in one threadpool job, instead of five or six fs calls each from JS.
 *
 * writeFiles(root: Buffer, data: Buffer, recs: Buffer, paths: Buffer):
 *   Promise<void>
 *   root   the staging directory (an absolute path)
 *   data   the frame's bytes, already verified
 *   paths  NUL-terminated paths relative to root
 *   recs   WF_REC_SIZE bytes per file, little-endian:
 *            0 u32 offset of the path in `paths`
 *            4 u32 offset of the content in `data`
 *            8 u32 length of the content
 *           12 u32 mode (07777)
 *           16 u32 uid
 *           20 u32 gid
 *           24 i64 mtime, seconds
 *           32 u32 mtime, nanoseconds
 *           36 u32 flags: WF_OWNER = set uid/gid
 * Each file is created O_EXCL|O_NOFOLLOW (only our own directories lie above
 * it: symlinks are made after all data), written whole, fchown'ed (chown
 * before chmod: it clears setuid bits), fchmod'ed, futimens'ed, closed.
 * Rejects like fs with the first failure (errno, syscall, path); the caller
 * removes the staging directory. Records are checked here, on the JS thread,
 * before the job is queued: the worker trusts them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sys.h"

#define WF_REC_SIZE 40
#define WF_OWNER 1u

struct wf_job {
	napi_async_work work;
	napi_deferred deferred;
	napi_ref refs[3]; /* data, recs, paths: alive until the job settles */
	char *root;
	const uint8_t *data;
	const uint8_t *recs;
	const char *paths;
	size_t count;
	int err;
	const char *syscall;
	char where[4096];
};

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static int64_t le64s(const uint8_t *p)
{
	return (int64_t)((uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32);
}

static void wf_fail(struct wf_job *job, int err, const char *syscall,
		    const char *rel)
{
	job->err = err;
	job->syscall = syscall;
	snprintf(job->where, sizeof(job->where), "%s/%s", job->root, rel);
}

/* Write all of buf at the start of fd. */
static int write_all(int fd, const uint8_t *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, buf + done, len - done, (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno;
		if (n == 0)
			return EIO;
		done += (size_t)n;
	}
	return 0;
}

/* Runs on a threadpool thread: no N-API calls. */
static void wf_execute(napi_env env, void *data)
{
	struct wf_job *job = data;
	int root;

	(void)env;
	root = open(job->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (root < 0) {
		job->err = errno;
		job->syscall = "open";
		snprintf(job->where, sizeof(job->where), "%s", job->root);
		return;
	}
	for (size_t i = 0; i < job->count; i++) {
		const uint8_t *r = job->recs + i * WF_REC_SIZE;
		const char *rel = job->paths + le32(r);
		uint32_t mode = le32(r + 12), flags = le32(r + 36);
		struct timespec ts[2];
		int fd, e;

		fd = openat(root, rel, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0) {
			wf_fail(job, errno, "open", rel);
			break;
		}
		e = write_all(fd, job->data + le32(r + 4), le32(r + 8));
		if (e != 0) {
			wf_fail(job, e, "write", rel);
		} else if ((flags & WF_OWNER) && fchown(fd, le32(r + 16), le32(r + 20)) != 0) {
			wf_fail(job, errno, "fchown", rel);
		} else if (fchmod(fd, mode) != 0) {
			wf_fail(job, errno, "fchmod", rel);
		} else {
			ts[0].tv_sec = ts[1].tv_sec = (time_t)le64s(r + 24);
			ts[0].tv_nsec = ts[1].tv_nsec = le32(r + 32);
			if (futimens(fd, ts) != 0)
				wf_fail(job, errno, "futimens", rel);
		}
		if (close(fd) != 0 && job->err == 0)
			wf_fail(job, errno, "close", rel);
		if (job->err != 0)
			break;
	}
	close(root);
}

static void wf_free(napi_env env, struct wf_job *job)
{
	for (int i = 0; i < 3; i++)
		if (job->refs[i] != NULL)
			(void)napi_delete_reference(env, job->refs[i]);
	if (job->work != NULL)
		(void)napi_delete_async_work(env, job->work);
	free(job->root);
	free(job);
}

static void wf_complete(napi_env env, napi_status status, void *data)
{
	struct wf_job *job = data;
	napi_value value;
	napi_status st;
	bool ok = false;

	if (status == napi_cancelled)
		st = make_error(env, "ECANCELED", "ECANCELED: writeFiles cancelled", &value);
	else if (job->err != 0)
		st = errno_value(env, job->err, job->syscall, job->where, &value);
	else {
		st = napi_get_undefined(env, &value);
		ok = st == napi_ok;
	}
	settle_work(env, job->deferred, st, ok, value, "cannot settle a writeFiles promise");
	wf_free(env, job);
}

/* Every record inside its buffers: path NUL-terminated in `paths`, content in `data`. */
static bool check_records(napi_env env, struct wf_job *job, size_t data_len,
			  size_t paths_len)
{
	for (size_t i = 0; i < job->count; i++) {
		const uint8_t *r = job->recs + i * WF_REC_SIZE;
		uint32_t po = le32(r), doff = le32(r + 4), len = le32(r + 8);

		if (po >= paths_len || memchr(job->paths + po, '\0', paths_len - po) == NULL ||
		    job->paths[po] == '\0' || job->paths[po] == '/' ||
		    (uint64_t)doff + len > data_len || le32(r + 12) > 07777 ||
		    le32(r + 32) > 999999999u) {
			throw_fmt(env, THROW_RANGE, "ERR_OUT_OF_RANGE",
				  "writeFiles: record %zu lies outside its buffers or is out of range", i);
			return false;
		}
	}
	return true;
}

napi_value js_write_files(napi_env env, napi_callback_info info)
{
	napi_value argv[4], promise = NULL;
	struct wf_job *job;
	bool queued = false;
	void *data = NULL, *recs = NULL, *paths = NULL;
	size_t data_len = 0, recs_len = 0, paths_len = 0;

	if (!get_args(env, info, 4, argv))
		return NULL;
	job = calloc(1, sizeof(*job));
	if (job == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	job->root = get_path(env, argv[0], "root");
	if (job->root == NULL || !get_buffer(env, argv[1], "data", &data, &data_len) ||
	    !get_buffer(env, argv[2], "recs", &recs, &recs_len) ||
	    !get_buffer(env, argv[3], "paths", &paths, &paths_len))
		goto fail;
	if (job->root[0] != '/' || recs_len % WF_REC_SIZE != 0) {
		throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_VALUE",
			  "writeFiles: root must be absolute and recs a whole number of records");
		goto fail;
	}
	job->data = data;
	job->recs = recs;
	job->paths = paths;
	job->count = recs_len / WF_REC_SIZE;
	if (!check_records(env, job, data_len, paths_len))
		goto fail;
	for (int i = 0; i < 3; i++)
		if (napi_failed(env, napi_create_reference(env, argv[i + 1], 1, &job->refs[i])))
			goto fail;
	promise = queue_work(env, "strata.writeFiles", wf_execute, wf_complete, job,
			     &job->work, &job->deferred, &queued);
	if (queued)
		return promise;
fail:
	wf_free(env, job);
	return promise;
}
