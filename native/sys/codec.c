/*
 * codec.c: zstd on the libuv threadpool, for strata_sys.
 *
 *   zstdCompress(input, level)        one frame of one Buffer
 *   zstdFrame(parts, level)           one frame of several Buffers, and the
 *                                     sha256 of their concatenation
 *   zstdDecompress(frame, size)       exactly `size` bytes or an error
 *
 * Compression contexts are per threadpool thread; no N-API call runs off the
 * JS thread.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/evp.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "sys.h"
/* ------------------------------------------------------------------ */
/* zstd on the threadpool                                              */
/* ------------------------------------------------------------------ */

struct zstd_job {
	napi_async_work work;
	napi_deferred deferred;
	napi_ref input_ref;  /* keeps the input Buffer alive while we read it */
	napi_ref output_ref; /* decompress: the result Buffer we decode into */
	bool compress;
	int level;
	const uint8_t *in;
	size_t in_len;
	/* zstdFrame: the parts, in order (in/in_len unused), and their sha256 */
	const uint8_t **parts;
	size_t *part_lens;
	size_t nparts;
	bool want_digest;
	uint8_t digest[32];
	/* decompress: the sha256 the output must have (check_digest set) */
	bool check_digest;
	uint8_t expect[32];
	uint8_t *out; /* compress: malloc'ed; decompress: output Buffer data */
	size_t out_cap;
	size_t out_len;
	const char *err_code; /* NULL on success */
	char err_msg[256];
};

__attribute__((format(printf, 3, 4)))
static void job_fail(struct zstd_job *job, const char *code, const char *fmt,
		     ...)
{
	char detail[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	job->err_code = code;
	snprintf(job->err_msg, sizeof(job->err_msg), "%s: %s", code, detail);
}

/*
 * One compression context per threadpool thread, made on first use and kept
 * for the process's life (the pool's threads are): creating one per frame
 * cost more than compressing a small frame.
 */
static ZSTD_CCtx *thread_cctx(void)
{
	static __thread ZSTD_CCtx *cctx;

	if (cctx == NULL)
		cctx = ZSTD_createCCtx();
	return cctx;
}

/*
 * The parts, joined in a per-thread scratch buffer so that compression is
 * one-shot (ZSTD_compress2): mixing one-shot and streaming calls on one
 * context made zstd resize its workspace back and forth (measured: capture
 * ~15% slower). A shared frame is tens of KiB, so the copy costs little; a
 * single part is used in place.
 */
static const uint8_t *join_parts(struct zstd_job *job)
{
	static __thread uint8_t *scratch;
	static __thread size_t cap;
	size_t at = 0;

	if (job->nparts == 1)
		return job->parts[0];
	if (cap < job->in_len) {
		uint8_t *p = realloc(scratch, job->in_len);

		if (p == NULL)
			return NULL;
		scratch = p;
		cap = job->in_len;
	}
	for (size_t i = 0; i < job->nparts; i++) {
		if (job->part_lens[i] > 0)
			memcpy(scratch + at, job->parts[i], job->part_lens[i]);
		at += job->part_lens[i];
	}
	return scratch;
}

/* sha256 of the frame's content (job->in: the input, or the joined parts). */
static bool digest_input(struct zstd_job *job)
{
	unsigned int len = 0;

	return EVP_Digest(job->in_len > 0 ? job->in : (const uint8_t *)"",
			  job->in_len, job->digest, &len, EVP_sha256(),
			  NULL) == 1 && len == 32;
}

/* Runs on a threadpool thread: no N-API calls allowed here. */
static void zstd_compress_execute(napi_env env, void *data)
{
	struct zstd_job *job = data;
	ZSTD_CCtx *cctx;
	size_t r;

	(void)env;
	job->out_cap = ZSTD_compressBound(job->in_len);
	if (ZSTD_isError(job->out_cap) || job->out_cap == 0) {
		job_fail(job, "ECOMPRESS", "input of %zu bytes is too large",
			 job->in_len);
		return;
	}
	job->out = malloc(job->out_cap);
	cctx = thread_cctx();
	if (job->out == NULL || cctx == NULL) {
		job_fail(job, "ENOMEM", "out of memory compressing %zu bytes",
			 job->in_len);
		return;
	}
	/* One frame, content size in the header, no checksum (we sha256). */
	r = ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
	if (!ZSTD_isError(r))
		r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, job->level);
	if (!ZSTD_isError(r))
		r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
	if (!ZSTD_isError(r))
		r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 0);
	if (job->parts != NULL && job->in_len > 0) {
		job->in = join_parts(job);
		if (job->in == NULL) {
			job_fail(job, "ENOMEM", "out of memory joining %zu bytes",
				 job->in_len);
			return;
		}
	}
	if (!ZSTD_isError(r))
		r = ZSTD_compress2(cctx, job->out, job->out_cap,
				   job->in_len > 0 ? job->in : (const void *)"",
				   job->in_len);
	if (ZSTD_isError(r)) {
		job_fail(job, "ECOMPRESS", "%s", ZSTD_getErrorName(r));
		return;
	}
	job->out_len = r;
	if (job->want_digest && !digest_input(job))
		job_fail(job, "ENOMEM", "sha256 of %zu bytes failed", job->in_len);
}

static uint32_t read_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

/*
 * Runs on a threadpool thread. The output Buffer is exactly out_cap bytes
 * and zstd is told so, so a lying frame can never write past it.
 */
/*
 * A large output (a restore index: tens of MB) is written into fresh pages:
 * each 4 KiB page fault costs microseconds in a VM, ~25 ms for 22 MB here.
 * Ask for transparent huge pages over the aligned middle of the buffer (a
 * hint: refused or unsupported, nothing changes).
 */
static void hugepages(void *p, size_t len)
{
	const uintptr_t huge = 2u << 20;
	if (len < 4 * huge)
		return;
	uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
	uintptr_t b = ((uintptr_t)p + len) & ~(huge - 1);
	if (b > a)
		(void)madvise((void *)a, b - a, MADV_HUGEPAGE);
}

static void zstd_decompress_execute(napi_env env, void *data)
{
	struct zstd_job *job = data;
	unsigned long long fcs;
	ZSTD_DCtx *dctx;
	uint8_t dummy = 0;
	size_t r;

	(void)env;
	/* Only a real zstd frame: a lone skippable frame is not our data. */
	if (job->in_len < 4 || read_le32(job->in) != ZSTD_MAGICNUMBER) {
		job_fail(job, "EDECOMPRESS", "input is not a zstd frame");
		return;
	}
	r = ZSTD_findFrameCompressedSize(job->in, job->in_len);
	if (ZSTD_isError(r)) {
		job_fail(job, "EDECOMPRESS", "corrupt zstd frame: %s",
			 ZSTD_getErrorName(r));
		return;
	}
	if (r != job->in_len) {
		job_fail(job, "EDECOMPRESS",
			 "%zu trailing bytes after the zstd frame",
			 job->in_len - r);
		return;
	}
	fcs = ZSTD_getFrameContentSize(job->in, job->in_len);
	if (fcs == ZSTD_CONTENTSIZE_ERROR) {
		job_fail(job, "EDECOMPRESS", "corrupt zstd frame header");
		return;
	}
	/* Fail fast on the header; the decode below still enforces it. */
	if (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs != job->out_cap) {
		job_fail(job, "EDECOMPRESS",
			 "frame holds %llu bytes, expected %zu", fcs,
			 job->out_cap);
		return;
	}
	dctx = ZSTD_createDCtx();
	if (dctx == NULL) {
		job_fail(job, "ENOMEM", "out of memory creating a zstd context");
		return;
	}
	hugepages(job->out, job->out_cap);
	r = ZSTD_decompressDCtx(dctx, job->out_cap > 0 ? job->out : &dummy,
				job->out_cap, job->in, job->in_len);
	ZSTD_freeDCtx(dctx);
	if (ZSTD_isError(r)) {
		if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
			job_fail(job, "EDECOMPRESS",
				 "input decodes to more than the expected "
				 "%zu bytes", job->out_cap);
		else
			job_fail(job, "EDECOMPRESS", "corrupt zstd frame: %s",
				 ZSTD_getErrorName(r));
		return;
	}
	if (r != job->out_cap) {
		job_fail(job, "EDECOMPRESS",
			 "input decodes to %zu bytes, expected %zu", r,
			 job->out_cap);
		return;
	}
	job->out_len = r;
	if (job->check_digest) {
		uint8_t md[32];
		unsigned int len = 0;

		if (EVP_Digest(job->out_cap > 0 ? job->out : &dummy, job->out_cap,
			       md, &len, EVP_sha256(), NULL) != 1 || len != 32) {
			job_fail(job, "ENOMEM", "sha256 of %zu bytes failed",
				 job->out_cap);
			return;
		}
		if (memcmp(md, job->expect, 32) != 0) {
			char hex[65];

			for (int i = 0; i < 32; i++)
				snprintf(hex + 2 * i, 3, "%02x", md[i]);
			job_fail(job, "EDIGEST", "decoded bytes have sha256 %s", hex);
		}
	}
}

/*
 * Drops everything the job holds. Failures here can only leak, and on the
 * completion path there is no caller left to report them to.
 */
static void zstd_job_free(napi_env env, struct zstd_job *job)
{
	if (job->input_ref != NULL)
		(void)napi_delete_reference(env, job->input_ref);
	if (job->output_ref != NULL)
		(void)napi_delete_reference(env, job->output_ref);
	if (job->work != NULL)
		(void)napi_delete_async_work(env, job->work);
	if (job->compress)
		free(job->out);
	free(job->parts);
	free(job->part_lens);
	free(job);
}

/* Builds the settled value: the result Buffer, or an Error to reject with. */
static napi_status zstd_settle_value(napi_env env, struct zstd_job *job,
				     napi_status status, bool *ok,
				     napi_value *value)
{
	*ok = false;
	if (status == napi_cancelled)
		return make_error(env, "ECANCELED", "ECANCELED: zstd job cancelled",
				  value);
	if (job->err_code != NULL)
		return make_error(env, job->err_code, job->err_msg, value);
	*ok = true;
	if (job->compress && job->want_digest) {
		napi_value frame, digest;
		napi_status st;

		st = napi_create_object(env, value);
		if (st == napi_ok)
			st = napi_create_buffer_copy(env, job->out_len, job->out,
						     NULL, &frame);
		if (st == napi_ok)
			st = napi_create_buffer_copy(env, 32, job->digest, NULL,
						     &digest);
		if (st == napi_ok)
			st = napi_set_named_property(env, *value, "frame", frame);
		if (st == napi_ok)
			st = napi_set_named_property(env, *value, "digest",
						     digest);
		return st;
	}
	if (job->compress)
		return napi_create_buffer_copy(env, job->out_len, job->out,
					       NULL, value);
	return napi_get_reference_value(env, job->output_ref, value);
}

/* Back on the JS thread: settle the promise, then free the job. */
static void zstd_complete(napi_env env, napi_status status, void *data)
{
	struct zstd_job *job = data;
	napi_value value;
	napi_status st;
	bool ok;

	st = zstd_settle_value(env, job, status, &ok, &value);
	settle_work(env, job->deferred, st, ok, value, "cannot settle a zstd promise");
	zstd_job_free(env, job);
}

/* Shared tail of zstdCompress/zstdDecompress: queue the job, return a promise. */
static napi_value zstd_start(napi_env env, struct zstd_job *job,
			     napi_value input, const char *name)
{
	napi_value promise = NULL;
	bool queued = false;
	void *in = NULL;
	size_t in_len = 0;
	napi_async_execute_callback execute = job->compress ?
		zstd_compress_execute : zstd_decompress_execute;

	if (job->parts == NULL) {
		if (!get_buffer(env, input, "input", &in, &in_len))
			goto fail;
		job->in = in;
		job->in_len = in_len;
	}
	if (napi_failed(env, napi_create_reference(env, input, 1,
						   &job->input_ref)))
		goto fail;
	promise = queue_work(env, name, execute, zstd_complete, job, &job->work,
			     &job->deferred, &queued);
	if (queued)
		return promise;
fail:
	zstd_job_free(env, job);
	return promise;
}

/* zstdCompress(input: Buffer, level: number): Promise<Buffer> */
napi_value js_zstd_compress(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	struct zstd_job *job;
	int64_t level;

	if (!get_args(env, info, 2, argv))
		return NULL;
	if (!get_int(env, argv[1], "level", ZSTD_minCLevel(), ZSTD_maxCLevel(),
		     &level))
		return NULL;
	job = calloc(1, sizeof(*job));
	if (job == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	job->compress = true;
	job->level = (int)level;
	return zstd_start(env, job, argv[0], "strata.zstdCompress");
}

/*
 * zstdDecompress(input: Buffer, expectedSize: number, digest?: Buffer):
 *   Promise<Buffer>
 * With a digest (32 bytes), the output's sha256 must match it, checked here on
 * the threadpool (code 'EDIGEST' otherwise): the caller never sees bad bytes.
 * The result Buffer is allocated here, on the JS thread, at exactly
 * expectedSize bytes: that is the decompression-bomb bound.
 */
napi_value js_zstd_decompress(napi_env env, napi_callback_info info)
{
	napi_value argv[3], out;
	struct zstd_job *job;
	int64_t expected;
	void *out_data = NULL;

	size_t argc = 3;
	napi_valuetype t = napi_undefined;

	if (napi_failed(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL)))
		return NULL;
	if (argc < 2) {
		throw_fmt(env, THROW_TYPE, "ERR_MISSING_ARGS",
			  "expected at least 2 arguments");
		return NULL;
	}
	if (!get_int(env, argv[1], "expectedSize", 0, MAX_SAFE_INT, &expected))
		return NULL;
	if (argc >= 3 && napi_failed(env, napi_typeof(env, argv[2], &t)))
		return NULL;
	job = calloc(1, sizeof(*job));
	if (job == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	job->compress = false;
	if (t != napi_undefined && t != napi_null) {
		void *d = NULL;
		size_t dlen = 0;

		if (!get_buffer(env, argv[2], "digest", &d, &dlen)) {
			zstd_job_free(env, job);
			return NULL;
		}
		if (dlen != 32) {
			throw_fmt(env, THROW_RANGE, "ERR_OUT_OF_RANGE",
				  "digest must be 32 bytes, got %zu", dlen);
			zstd_job_free(env, job);
			return NULL;
		}
		memcpy(job->expect, d, 32);
		job->check_digest = true;
	}
	if (napi_failed(env, napi_create_buffer(env, (size_t)expected,
						&out_data, &out)) ||
	    napi_failed(env, napi_create_reference(env, out, 1,
						   &job->output_ref))) {
		zstd_job_free(env, job);
		return NULL;
	}
	job->out = out_data;
	job->out_cap = (size_t)expected;
	return zstd_start(env, job, argv[0], "strata.zstdDecompress");
}


/*
 * zstdFrame(parts: Buffer[], level: number):
 *   Promise<{ frame: Buffer, digest: Buffer }>
 * One frame of the parts' concatenation and its sha256, without joining them
 * in JS. The reference to the array keeps the parts alive; the caller must not
 * change the array until the promise settles.
 */
napi_value js_zstd_frame(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	struct zstd_job *job;
	int64_t level;
	uint32_t n = 0;
	bool is_array = false;

	if (!get_args(env, info, 2, argv))
		return NULL;
	if (napi_failed(env, napi_is_array(env, argv[0], &is_array)))
		return NULL;
	if (!is_array) {
		throw_fmt(env, THROW_TYPE, "ERR_INVALID_ARG_TYPE",
			  "parts must be an array of Buffers");
		return NULL;
	}
	if (!get_int(env, argv[1], "level", ZSTD_minCLevel(), ZSTD_maxCLevel(),
		     &level))
		return NULL;
	if (napi_failed(env, napi_get_array_length(env, argv[0], &n)))
		return NULL;
	job = calloc(1, sizeof(*job));
	if (job != NULL) {
		job->parts = calloc(n ? n : 1, sizeof(*job->parts));
		job->part_lens = calloc(n ? n : 1, sizeof(*job->part_lens));
	}
	if (job == NULL || job->parts == NULL || job->part_lens == NULL) {
		if (job != NULL) {
			free(job->parts);
			free(job->part_lens);
		}
		free(job);
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	job->compress = true;
	job->want_digest = true;
	job->level = (int)level;
	job->nparts = n;
	for (uint32_t i = 0; i < n; i++) {
		napi_value el;
		void *data = NULL;
		size_t len = 0;

		if (napi_failed(env, napi_get_element(env, argv[0], i, &el)) ||
		    !get_buffer(env, el, "part", &data, &len)) {
			zstd_job_free(env, job);
			return NULL;
		}
		job->parts[i] = data;
		job->part_lens[i] = len;
		job->in_len += len;
	}
	return zstd_start(env, job, argv[0], "strata.zstdFrame");
}
