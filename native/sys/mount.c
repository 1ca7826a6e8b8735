/*
 * mountFs: one mount through the kernel's mount API (fsopen, fsconfig,
 * fsmount, move_mount), on the threadpool.
 *
 * Why not mount(8): spawning it forks the calling process, which costs in
 * proportion to that process's memory (10-30 ms from a 1 GB one), and its
 * option string is one page, which a long overlay chain outgrows. fsconfig
 * takes each parameter on its own ("lowerdir+" once per layer, kernel 6.8+),
 * and the filesystem's own words on a failure come back in the context's log.
 */
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#define MOUNT_MAX_PARAMS 1024
#define MOUNT_LOG_MAX 1024

struct mount_param {
	char *key;
	char *value; /* NULL: a flag */
};

struct mount_job {
	napi_async_work work;
	napi_deferred deferred;
	char *fstype, *source, *target;
	struct mount_param *params;
	uint32_t nparams;
	/* Result */
	int err;
	const char *syscall;
	const char *failed_key; /* the parameter refused, if one was */
	char log[MOUNT_LOG_MAX];
};

static void mount_job_free(napi_env env, struct mount_job *job)
{
	if (job->work != NULL)
		(void)napi_delete_async_work(env, job->work);
	for (uint32_t i = 0; i < job->nparams; i++) {
		free(job->params[i].key);
		free(job->params[i].value);
	}
	free(job->params);
	free(job->fstype);
	free(job->source);
	free(job->target);
	free(job);
}

/* What the filesystem said while the context was configured ("e ...", "w ..."). */
static void drain_log(int fd, char *out, size_t cap)
{
	size_t used = strlen(out);
	char line[512];
	ssize_t n;

	while ((n = read(fd, line, sizeof(line) - 1)) > 0) {
		while (n > 0 && line[n - 1] == '\n')
			n--;
		line[n] = '\0';
		int w = snprintf(out + used, cap - used, "%s%s",
				 used ? "; " : "", line + (n > 2 && line[1] == ' ' ? 2 : 0));
		if (w < 0 || (size_t)w >= cap - used)
			break;
		used += (size_t)w;
	}
}

static void mount_execute(napi_env env, void *data)
{
	struct mount_job *job = data;
	int fd, mfd = -1;
	(void)env;

	job->log[0] = '\0';
	fd = fsopen(job->fstype, FSOPEN_CLOEXEC);
	if (fd < 0) {
		job->err = errno;
		job->syscall = "fsopen";
		return;
	}
	if (fsconfig(fd, FSCONFIG_SET_STRING, "source", job->source, 0) < 0) {
		job->err = errno;
		job->syscall = "fsconfig";
		job->failed_key = "source";
		goto out;
	}
	for (uint32_t i = 0; i < job->nparams; i++) {
		const struct mount_param *p = &job->params[i];
		int rc = p->value ? fsconfig(fd, FSCONFIG_SET_STRING, p->key, p->value, 0)
				  : fsconfig(fd, FSCONFIG_SET_FLAG, p->key, NULL, 0);
		if (rc < 0) {
			job->err = errno;
			job->syscall = "fsconfig";
			job->failed_key = p->key;
			goto out;
		}
	}
	if (fsconfig(fd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
		job->err = errno;
		job->syscall = "fsconfig(create)";
		goto out;
	}
	mfd = fsmount(fd, FSMOUNT_CLOEXEC, 0);
	if (mfd < 0) {
		job->err = errno;
		job->syscall = "fsmount";
		goto out;
	}
	if (move_mount(mfd, "", AT_FDCWD, job->target, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
		job->err = errno;
		job->syscall = "move_mount";
	}
out:
	if (job->err)
		drain_log(fd, job->log, sizeof(job->log));
	if (mfd >= 0)
		close(mfd);
	close(fd);
}

/* The Error a failed syscall rejects with: code, message, errno (negative) and syscall, as fs does. */
static napi_status syscall_error(napi_env env, const char *code, const char *msg, int err, const char *syscall,
				 napi_value *out)
{
	napi_value v;
	napi_status st = make_error(env, code, msg, out);

	if (st == napi_ok && (st = napi_create_int32(env, -err, &v)) == napi_ok)
		st = napi_set_named_property(env, *out, "errno", v);
	if (st == napi_ok && (st = napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v)) == napi_ok)
		st = napi_set_named_property(env, *out, "syscall", v);
	return st;
}

static void mount_complete(napi_env env, napi_status status, void *data)
{
	struct mount_job *job = data;
	napi_value value = NULL, s;
	napi_status st = status;
	bool ok = status == napi_ok && job->err == 0;

	if (st == napi_ok && ok) {
		st = napi_get_undefined(env, &value);
	} else if (st == napi_ok) {
		char msg[MOUNT_LOG_MAX + 512];
		const char *code = errno_code(job->err);
		snprintf(msg, sizeof(msg), "%s: %s, %s%s%s%s%s", code, strerror(job->err), job->syscall,
			 job->failed_key ? " " : "", job->failed_key ? job->failed_key : "",
			 job->log[0] ? ": " : "", job->log);
		st = syscall_error(env, code, msg, job->err, job->syscall, &value);
		if (st == napi_ok && job->failed_key &&
		    napi_create_string_utf8(env, job->failed_key, NAPI_AUTO_LENGTH, &s) == napi_ok)
			st = napi_set_named_property(env, value, "parameter", s);
	}
	settle_work(env, job->deferred, st, ok, value, "cannot settle a mount promise");
	mount_job_free(env, job);
}

/* A string argument as a malloc'ed NUL-terminated copy (Buffer or string). */
static char *get_text(napi_env env, napi_value v, const char *what)
{
	napi_valuetype t;
	size_t len;
	char *s;

	if (napi_failed(env, napi_typeof(env, v, &t)))
		return NULL;
	if (t != napi_string)
		return get_path(env, v, what);
	if (napi_failed(env, napi_get_value_string_utf8(env, v, NULL, 0, &len)))
		return NULL;
	s = malloc(len + 1);
	if (s == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	if (napi_failed(env, napi_get_value_string_utf8(env, v, s, len + 1, &len))) {
		free(s);
		return NULL;
	}
	if (strlen(s) != len) {
		free(s);
		throw_fmt(env, THROW_TYPE, "EINVAL", "%s holds a NUL byte", what);
		return NULL;
	}
	return s;
}

/*
 * mountFs(fstype: string, source: string, target: Buffer,
 *         params: Array<[key: string, value?: string | Buffer]>): Promise<void>
 * Rejects with code/errno/syscall (and `parameter`, the key fsconfig refused).
 */
napi_value js_mount_fs(napi_env env, napi_callback_info info)
{
	napi_value argv[4], promise = NULL;
	struct mount_job *job;
	uint32_t n;
	bool is_array = false, queued = false;

	if (!get_args(env, info, 4, argv))
		return NULL;
	if (napi_failed(env, napi_is_array(env, argv[3], &is_array)))
		return NULL;
	if (!is_array) {
		throw_fmt(env, THROW_TYPE, "EINVAL", "params must be an array");
		return NULL;
	}
	if (napi_failed(env, napi_get_array_length(env, argv[3], &n)))
		return NULL;
	if (n > MOUNT_MAX_PARAMS) {
		throw_fmt(env, THROW_RANGE, "EINVAL", "%u mount parameters, at most %u", n, MOUNT_MAX_PARAMS);
		return NULL;
	}
	job = calloc(1, sizeof(*job));
	if (job == NULL || (n && (job->params = calloc(n, sizeof(*job->params))) == NULL)) {
		free(job);
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	if ((job->fstype = get_text(env, argv[0], "fstype")) == NULL ||
	    (job->source = get_text(env, argv[1], "source")) == NULL ||
	    (job->target = get_path(env, argv[2], "target")) == NULL)
		goto fail;
	for (uint32_t i = 0; i < n; i++) {
		napi_value pair, k, v;
		uint32_t plen = 0;
		bool pa = false;
		napi_valuetype vt = napi_undefined;

		if (napi_failed(env, napi_get_element(env, argv[3], i, &pair)) ||
		    napi_failed(env, napi_is_array(env, pair, &pa)))
			goto fail;
		if (pa && napi_failed(env, napi_get_array_length(env, pair, &plen)))
			goto fail;
		if (!pa || plen < 1 || plen > 2) {
			throw_fmt(env, THROW_TYPE, "EINVAL", "params[%u] must be [key] or [key, value]", i);
			goto fail;
		}
		if (napi_failed(env, napi_get_element(env, pair, 0, &k)))
			goto fail;
		job->params[i].key = get_text(env, k, "parameter key");
		job->nparams = i + 1;
		if (job->params[i].key == NULL)
			goto fail;
		if (plen == 2) {
			if (napi_failed(env, napi_get_element(env, pair, 1, &v)) ||
			    napi_failed(env, napi_typeof(env, v, &vt)))
				goto fail;
			if (vt != napi_undefined && (job->params[i].value = get_text(env, v, job->params[i].key)) == NULL)
				goto fail;
		}
	}
	promise = queue_work(env, "strata.mountFs", mount_execute, mount_complete, job, &job->work,
			     &job->deferred, &queued);
	if (queued)
		return promise;
fail:
	mount_job_free(env, job);
	return promise;
}

/*
 * unmountFs(target: Buffer, lazy: boolean): Promise<void>
 * umount2 on the threadpool (an overlay's unmount syncs its upper layer), for
 * the same reason as mountFs: umount(8) would fork this process. UMOUNT_NOFOLLOW:
 * a symlink planted at the target is not followed. lazy = MNT_DETACH. Rejects
 * with code EBUSY (in use), EINVAL (not a mount point), ENOENT, EPERM, ...
 */
struct unmount_job {
	napi_async_work work;
	napi_deferred deferred;
	char *target;
	int flags;
	int err;
};

static void unmount_execute(napi_env env, void *data)
{
	struct unmount_job *job = data;
	(void)env;

	job->err = umount2(job->target, job->flags | UMOUNT_NOFOLLOW) == 0 ? 0 : errno;
}

static void unmount_complete(napi_env env, napi_status status, void *data)
{
	struct unmount_job *job = data;
	napi_value value = NULL;
	napi_status st = status;
	bool ok = status == napi_ok && job->err == 0;

	if (st == napi_ok && ok) {
		st = napi_get_undefined(env, &value);
	} else if (st == napi_ok) {
		char msg[PATH_MAX + 128];
		const char *code = errno_code(job->err);
		snprintf(msg, sizeof(msg), "%s: %s, umount2 %s", code, strerror(job->err), job->target);
		st = syscall_error(env, code, msg, job->err, "umount2", &value);
	}
	settle_work(env, job->deferred, st, ok, value, "cannot settle an unmount promise");
	if (job->work != NULL)
		(void)napi_delete_async_work(env, job->work);
	free(job->target);
	free(job);
}

napi_value js_unmount_fs(napi_env env, napi_callback_info info)
{
	napi_value argv[2], promise = NULL;
	struct unmount_job *job;
	bool lazy = false, queued = false;

	if (!get_args(env, info, 2, argv))
		return NULL;
	if (napi_failed(env, napi_get_value_bool(env, argv[1], &lazy))) {
		throw_fmt(env, THROW_TYPE, "EINVAL", "lazy must be a boolean");
		return NULL;
	}
	job = calloc(1, sizeof(*job));
	if (job == NULL) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	job->flags = lazy ? MNT_DETACH : 0;
	if ((job->target = get_path(env, argv[0], "target")) == NULL) {
		free(job);
		return NULL;
	}
	promise = queue_work(env, "strata.unmountFs", unmount_execute, unmount_complete, job, &job->work,
			     &job->deferred, &queued);
	if (queued)
		return promise;
	free(job->target);
	free(job);
	return promise;
}
