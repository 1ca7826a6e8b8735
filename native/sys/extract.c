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
 *           36 u32 flags: WF_OWNER = set uid/gid; WF_CHUNK = one chunk
 *              of a larger file: opened without O_EXCL (its first chunk or
 *              the structure pass created it), written at the offset held
 *              in the mtime-seconds field, no metadata (set once it is whole)
 * Each file is created O_EXCL|O_NOFOLLOW (only our own directories lie above
 * it: symlinks are made after all data), written whole, fchown'ed (chown
 * before chmod: it clears setuid bits), fchmod'ed, futimens'ed, closed.
 * Rejects like fs with the first failure (errno, syscall, path); the caller
 * removes the staging directory. Records are checked here, on the JS thread,
 * before the job is queued: the worker trusts them.
 *
 * extractFrames(root, blob, frames, files, paths, fd, at): Promise<void>
 *   The same for many frames at once, still compressed: each is decoded (zstd),
 *   its sha256 checked against the TOC's before any byte is used, and its whole
 *   files written as above. One job per few MiB of blob instead of two per
 *   frame (decode, then write) with a JS hop between.
 *   blob    consecutive bytes of the layer blob holding the frames; when fd is
 *           not -1, the job first fills it with pread(fd) from blob offset
 *           `at` (a local store: the read is part of the job, not another
 *           threadpool job queued behind the decodes)
 *   frames  FX_REC_SIZE bytes per frame, little-endian:
 *            0 u32 offset of the frame in `blob`
 *            4 u32 its compressed length
 *            8 u32 its uncompressed size
 *           12 u32 index of its first record in `files`
 *           16 u32 how many records follow
 *           24 u64 its offset in the layer blob (for messages)
 *           32 32 bytes: the sha256 of its uncompressed bytes
 *   files   writeFiles records; the content offset counts in the decoded frame
 * A frame that does not decode to exactly its size, or whose digest differs,
 * rejects with code EDIGEST and nothing of it is written.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zstd.h>

#include "sys.h"

#define WF_REC_SIZE 40
#define WF_OWNER 1u
#define WF_CHUNK 2u
#define FX_REC_SIZE 64
/* The largest frame a TOC may name (src/format/toc.ts MAX_FRAME_SIZE). */
#define FX_FRAME_MAX (4u << 20)

struct wf_job {
	napi_async_work work;
	napi_deferred deferred;
	napi_ref refs[4]; /* its Buffers: alive until the job settles */
	char *root;
	const uint8_t *data;
	const uint8_t *recs;
	const char *paths;
	size_t count;
	int err;
	const char *syscall;
	char where[4096];
	/* extractFrames */
	const uint8_t *blob;
	size_t blob_len;
	int fd; /* -1, or the layer file to fill blob from, at fd_at */
	uint64_t fd_at;
	const uint8_t *frames;
	size_t nframes;
	char digest_msg[256]; /* set when a frame failed its check */
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

/* Write all of buf at offset `at` of fd. */
static int write_all(int fd, const uint8_t *buf, size_t len, off_t at)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, buf + done, len - done, at + (off_t)done);

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

/*
 * A path under root longer than the kernel takes whole: refused as an
 * absolute open would be, so nothing is made that rm -r could not remove.
 */
static bool too_long(const struct wf_job *job, const char *rel)
{
	return strlen(job->root) + 1 + strlen(rel) >= PATH_MAX;
}

/* Create, write and finish records [from, from + n) whose content lies in data. */
static void write_records(struct wf_job *job, int root, const uint8_t *data,
			  size_t from, size_t n)
{
	for (size_t i = from; i < from + n; i++) {
		const uint8_t *r = job->recs + i * WF_REC_SIZE;
		const char *rel = job->paths + le32(r);
		uint32_t mode = le32(r + 12), flags = le32(r + 36);
		struct timespec ts[2];
		int fd, e;

		if (too_long(job, rel)) {
			wf_fail(job, ENAMETOOLONG, "open", rel);
			break;
		}
		if (flags & WF_CHUNK) {
			/* Only our own files are under root, and no symlink exists there yet. */
			fd = openat(root, rel, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
			if (fd < 0) {
				wf_fail(job, errno, "open", rel);
				break;
			}
			e = write_all(fd, data + le32(r + 4), le32(r + 8), (off_t)le64s(r + 24));
			if (e != 0)
				wf_fail(job, e, "write", rel);
			if (close(fd) != 0 && job->err == 0)
				wf_fail(job, errno, "close", rel);
			if (job->err != 0)
				break;
			continue;
		}
		fd = openat(root, rel, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0) {
			wf_fail(job, errno, "open", rel);
			break;
		}
		e = write_all(fd, data + le32(r + 4), le32(r + 8), 0);
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
}

static int open_root(struct wf_job *job)
{
	int root = open(job->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (root < 0) {
		job->err = errno;
		job->syscall = "open";
		snprintf(job->where, sizeof(job->where), "%s", job->root);
	}
	return root;
}

/* Runs on a threadpool thread: no N-API calls. */
static void wf_execute(napi_env env, void *data)
{
	struct wf_job *job = data;
	int root;

	(void)env;
	root = open_root(job);
	if (root < 0)
		return;
	write_records(job, root, job->data, 0, job->count);
	close(root);
}

/*
 * Per threadpool thread, kept for the process's life (as codec.c's contexts):
 * a decompression context and the buffer one frame decodes into.
 */
static ZSTD_DCtx *thread_dctx(void)
{
	static __thread ZSTD_DCtx *dctx;

	if (dctx == NULL)
		dctx = ZSTD_createDCtx();
	return dctx;
}

static uint8_t *thread_scratch(void)
{
	static __thread uint8_t *scratch;

	if (scratch == NULL)
		scratch = malloc(FX_FRAME_MAX);
	return scratch;
}

/* Fill the job's blob buffer from its layer file; a short file is damage. The
 * buffer is the caller's pooled one, lent to this job alone. */
static bool read_blob(struct wf_job *job)
{
	uint8_t *buf = (uint8_t *)job->blob;
	size_t got = 0;

	while (got < job->blob_len) {
		ssize_t n = pread(job->fd, buf + got, job->blob_len - got, (off_t)(job->fd_at + got));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			job->err = n < 0 ? errno : EIO;
			job->syscall = "pread";
			snprintf(job->where, sizeof(job->where), "layer file at offset %llu%s",
				 (unsigned long long)(job->fd_at + got), n == 0 ? " (shorter than its TOC says)" : "");
			return false;
		}
		got += (size_t)n;
	}
	return true;
}

/* Runs on a threadpool thread: decode, check and write every frame in turn. */
static void fx_execute(napi_env env, void *data)
{
	struct wf_job *job = data;
	ZSTD_DCtx *dctx = thread_dctx();
	uint8_t *out = thread_scratch();
	int root;

	(void)env;
	if (dctx == NULL || out == NULL) {
		job->err = ENOMEM;
		job->syscall = "malloc";
		snprintf(job->where, sizeof(job->where), "%s", job->root);
		return;
	}
	if (job->fd >= 0 && !read_blob(job))
		return;
	root = open_root(job);
	if (root < 0)
		return;
	for (size_t f = 0; f < job->nframes && job->err == 0; f++) {
		const uint8_t *r = job->frames + f * FX_REC_SIZE;
		uint32_t off = le32(r), len = le32(r + 4), size = le32(r + 8);
		uint64_t at = (uint64_t)le32(r + 24) | (uint64_t)le32(r + 28) << 32;
		uint8_t got[32];
		unsigned int md_len = 0;
		size_t n;

		/* Exactly one frame, exactly its size: anything else is damage. */
		n = ZSTD_findFrameCompressedSize(job->blob + off, len);
		if (!ZSTD_isError(n) && n == len)
			n = ZSTD_decompressDCtx(dctx, out, size, job->blob + off, len);
		if (ZSTD_isError(n) || n != size) {
			snprintf(job->digest_msg, sizeof(job->digest_msg),
				 "frame at blob offset %llu does not decompress to %u bytes: damaged or tampered data",
				 (unsigned long long)at, size);
			job->err = EILSEQ;
			break;
		}
		if (EVP_Digest(size > 0 ? out : (const uint8_t *)"", size, got, &md_len,
			       EVP_sha256(), NULL) != 1 || md_len != 32 ||
		    memcmp(got, r + 32, 32) != 0) {
			static const char hex[] = "0123456789abcdef";
			char h[65];

			for (int i = 0; i < 32; i++) {
				h[2 * i] = hex[got[i] >> 4];
				h[2 * i + 1] = hex[got[i] & 15];
			}
			h[64] = '\0';
			snprintf(job->digest_msg, sizeof(job->digest_msg),
				 "frame at blob offset %llu has digest sha256:%s, not the TOC's; not used",
				 (unsigned long long)at, md_len == 32 ? h : "?");
			job->err = EILSEQ;
			break;
		}
		write_records(job, root, out, le32(r + 12), le32(r + 16));
	}
	close(root);
}

static void wf_free(napi_env env, struct wf_job *job)
{
	for (int i = 0; i < 4; i++)
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
	else if (job->digest_msg[0] != '\0')
		st = make_error(env, "EDIGEST", job->digest_msg, &value);
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
		    le32(r + 32) > 999999999u ||
		    ((le32(r + 36) & WF_CHUNK) && le64s(r + 24) < 0)) {
			throw_fmt(env, THROW_RANGE, "ERR_OUT_OF_RANGE",
				  "writeFiles: record %zu lies outside its buffers or is out of range", i);
			return false;
		}
	}
	return true;
}

/* A job for `root` (an absolute path Buffer), or NULL with an exception pending. */
static struct wf_job *wf_new(napi_env env, napi_value root)
{
	struct wf_job *job = calloc(1, sizeof(*job));

	if (job == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	job->root = get_path(env, root, "root");
	if (job->root == NULL) {
		free(job);
		return NULL;
	}
	return job;
}

/*
 * Keep the job's Buffers alive and queue it; on failure free it. Returns the
 * promise (NULL with an exception pending when even that could not be made).
 */
static napi_value queue_wf(napi_env env, struct wf_job *job, napi_value *bufs,
			   int n, const char *name, napi_async_execute_callback execute)
{
	napi_value promise = NULL;
	bool queued = false;

	for (int i = 0; i < n; i++)
		if (napi_failed(env, napi_create_reference(env, bufs[i], 1, &job->refs[i])))
			goto fail;
	promise = queue_work(env, name, execute, wf_complete, job, &job->work,
			     &job->deferred, &queued);
	if (queued)
		return promise;
fail:
	wf_free(env, job);
	return promise;
}

napi_value js_write_files(napi_env env, napi_callback_info info)
{
	napi_value argv[4], promise = NULL;
	struct wf_job *job;
	void *data = NULL, *recs = NULL, *paths = NULL;
	size_t data_len = 0, recs_len = 0, paths_len = 0;

	if (!get_args(env, info, 4, argv))
		return NULL;
	job = wf_new(env, argv[0]);
	if (job == NULL)
		return NULL;
	if (!get_buffer(env, argv[1], "data", &data, &data_len) ||
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
	return queue_wf(env, job, argv + 1, 3, "strata.writeFiles", wf_execute);
fail:
	wf_free(env, job);
	return promise;
}

/* Every frame inside the blob, its records inside `files` and its frame. */
static bool check_frames(napi_env env, struct wf_job *job, size_t blob_len)
{
	for (size_t f = 0; f < job->nframes; f++) {
		const uint8_t *r = job->frames + f * FX_REC_SIZE;
		uint32_t off = le32(r), len = le32(r + 4), size = le32(r + 8);
		uint32_t first = le32(r + 12), n = le32(r + 16);

		if ((uint64_t)off + len > blob_len || size > FX_FRAME_MAX ||
		    (uint64_t)first + n > job->count)
			goto bad;
		for (uint32_t i = first; i < first + n; i++) {
			const uint8_t *w = job->recs + (size_t)i * WF_REC_SIZE;

			if ((uint64_t)le32(w + 4) + le32(w + 8) > size)
				goto bad;
		}
		continue;
bad:
		throw_fmt(env, THROW_RANGE, "ERR_OUT_OF_RANGE",
			  "extractFrames: frame record %zu lies outside its buffers or is out of range", f);
		return false;
	}
	return true;
}

napi_value js_extract_frames(napi_env env, napi_callback_info info)
{
	napi_value argv[7], promise = NULL;
	struct wf_job *job;
	void *blob = NULL, *frames = NULL, *recs = NULL, *paths = NULL;
	size_t blob_len = 0, frames_len = 0, recs_len = 0, paths_len = 0;
	int64_t fd, at;

	if (!get_args(env, info, 7, argv))
		return NULL;
	job = wf_new(env, argv[0]);
	if (job == NULL)
		return NULL;
	if (!get_buffer(env, argv[1], "blob", &blob, &blob_len) ||
	    !get_buffer(env, argv[2], "frames", &frames, &frames_len) ||
	    !get_buffer(env, argv[3], "files", &recs, &recs_len) ||
	    !get_buffer(env, argv[4], "paths", &paths, &paths_len) ||
	    !get_int(env, argv[5], "fd", -1, INT32_MAX, &fd) ||
	    !get_int(env, argv[6], "at", 0, 9007199254740991.0, &at))
		goto fail;
	if (job->root[0] != '/' || recs_len % WF_REC_SIZE != 0 || frames_len % FX_REC_SIZE != 0) {
		throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_VALUE",
			  "extractFrames: root must be absolute and the records whole");
		goto fail;
	}
	job->blob = blob;
	job->blob_len = blob_len;
	job->fd = (int)fd;
	job->fd_at = (uint64_t)at;
	job->frames = frames;
	job->nframes = frames_len / FX_REC_SIZE;
	job->recs = recs;
	job->paths = paths;
	job->count = recs_len / WF_REC_SIZE;
	/* Contents are checked against their frame below, not against the blob. */
	if (!check_records(env, job, SIZE_MAX, paths_len) || !check_frames(env, job, blob_len))
		goto fail;
	return queue_wf(env, job, argv + 1, 4, "strata.extractFrames", fx_execute);
fail:
	wf_free(env, job);
	return promise;
}

/*
 * fsBatch(root, recs, paths): Promise<void>, the structure and metadata
 * passes of extract restore in one threadpool job: FB_REC_SIZE bytes per
 * entry, little-endian, done in order (a directory before what is in it):
 *    0 u32 offset of the path in `paths` (relative to root)
 *    4 u32 op: FB_MKDIR (mode 0700, for now) or FB_META
 *    8 u32 mode (07777)        12 u32 uid        16 u32 gid
 *   20 u32 flags: FB_OWNER = lchown first; FB_NOCHMOD = a symlink
 *   24 i64 mtime, seconds     32 u32 mtime, nanoseconds
 * FB_META: lchown (before chmod: it clears setuid bits), chmod, then the
 * times, never following a symlink. Rejects like fs with the first failure.
 */
#define FB_REC_SIZE 40
#define FB_MKDIR 1u
#define FB_META 2u
#define FB_OWNER 1u
#define FB_NOCHMOD 2u

static void fb_execute(napi_env env, void *data)
{
	struct wf_job *job = data;
	int root;

	(void)env;
	root = open_root(job);
	if (root < 0)
		return;
	for (size_t i = 0; i < job->count; i++) {
		const uint8_t *r = job->recs + i * FB_REC_SIZE;
		const char *rel = job->paths + le32(r);
		uint32_t op = le32(r + 4), flags = le32(r + 20);
		struct timespec ts[2];

		if (too_long(job, rel)) {
			wf_fail(job, ENAMETOOLONG, op == FB_MKDIR ? "mkdir" : "lchown", rel);
			break;
		}
		if (op == FB_MKDIR) {
			if (mkdirat(root, rel, 0700) != 0) {
				wf_fail(job, errno, "mkdir", rel);
				break;
			}
			continue;
		}
		if ((flags & FB_OWNER) &&
		    fchownat(root, rel, le32(r + 12), le32(r + 16), AT_SYMLINK_NOFOLLOW) != 0) {
			wf_fail(job, errno, "lchown", rel);
			break;
		}
		if (!(flags & FB_NOCHMOD) && fchmodat(root, rel, le32(r + 8), 0) != 0) {
			wf_fail(job, errno, "chmod", rel);
			break;
		}
		ts[0].tv_sec = ts[1].tv_sec = (time_t)le64s(r + 24);
		ts[0].tv_nsec = ts[1].tv_nsec = le32(r + 32);
		if (utimensat(root, rel, ts, AT_SYMLINK_NOFOLLOW) != 0) {
			wf_fail(job, errno, "utimensat", rel);
			break;
		}
	}
	close(root);
}

napi_value js_fs_batch(napi_env env, napi_callback_info info)
{
	napi_value argv[3], promise = NULL;
	struct wf_job *job;
	void *recs = NULL, *paths = NULL;
	size_t recs_len = 0, paths_len = 0;

	if (!get_args(env, info, 3, argv))
		return NULL;
	job = wf_new(env, argv[0]);
	if (job == NULL)
		return NULL;
	if (!get_buffer(env, argv[1], "recs", &recs, &recs_len) ||
	    !get_buffer(env, argv[2], "paths", &paths, &paths_len))
		goto fail;
	if (job->root[0] != '/' || recs_len % FB_REC_SIZE != 0) {
		throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_VALUE",
			  "fsBatch: root must be absolute and recs a whole number of records");
		goto fail;
	}
	job->recs = recs;
	job->paths = paths;
	job->count = recs_len / FB_REC_SIZE;
	for (size_t i = 0; i < job->count; i++) {
		const uint8_t *r = job->recs + i * FB_REC_SIZE;
		uint32_t po = le32(r), op = le32(r + 4);

		if (po >= paths_len || memchr(job->paths + po, '\0', paths_len - po) == NULL ||
		    job->paths[po] == '\0' || job->paths[po] == '/' ||
		    (op != FB_MKDIR && op != FB_META) || le32(r + 8) > 07777 ||
		    le32(r + 32) > 999999999u) {
			throw_fmt(env, THROW_RANGE, "ERR_OUT_OF_RANGE",
				  "fsBatch: record %zu lies outside its buffers or is out of range", i);
			goto fail;
		}
	}
	return queue_wf(env, job, argv + 1, 2, "strata.fsBatch", fb_execute);
fail:
	wf_free(env, job);
	return promise;
}
