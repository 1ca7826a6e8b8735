/*
 * spawnDetached: start a long-lived program outside this process's session,
 * on the threadpool, without forking this process.
 *
 * Why: Node's child_process forks the caller, and a fork copies the page
 * tables of its whole address space: 10-30 ms from a 1 GB process, on the
 * ready path of every lazy restore (strata-fuse, the restore daemon). glibc's
 * posix_spawn runs the child on the caller's memory until it execs (vfork
 * semantics), whatever the caller's size. The program is started through
 * `setsid --fork` (util-linux, essential in Debian), which forks (a small
 * process) and exits at once: reaped here, so the program is never this
 * process's child, leaves no zombie, and is adopted by init like a daemon.
 *
 * The child gets /dev/null on stdin and stdout, stderr on the given fd, the
 * write end of a pipe on fd 3 (its readiness channel; the read end is
 * returned), default signal dispositions and an empty signal mask.
 */
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SPAWN_MAX_ARGS 4096

struct spawn_job {
	napi_async_work work;
	napi_deferred deferred;
	char **argv; /* "setsid", "--fork", file, args..., NULL */
	char **envp; /* NULL: this process's environment */
	size_t argc, envc;
	int stdout_fd, stderr_fd; /* -1: /dev/null */
	bool ready_pipe;
	/* Result */
	int err;
	const char *syscall;
	int ready_fd;
	int status; /* setsid's wait status */
};

static void free_strings(char **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void spawn_job_free(napi_env env, struct spawn_job *job)
{
	if (job->work != NULL)
		(void)napi_delete_async_work(env, job->work);
	free_strings(job->argv, job->argc);
	free_strings(job->envp, job->envc);
	free(job);
}

extern char **environ;

static void spawn_execute(napi_env env, void *data)
{
	struct spawn_job *job = data;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t all, none;
	int p[2] = { -1, -1 }, w = -1, rc;
	pid_t pid;
	(void)env;

	job->ready_fd = -1;
	if (job->ready_pipe) {
		if (pipe2(p, O_CLOEXEC) != 0) {
			job->err = errno;
			job->syscall = "pipe2";
			return;
		}
		/* Above 3, so the dup2 onto fd 3 is a real one (it clears close-on-exec there only). */
		w = fcntl(p[1], F_DUPFD_CLOEXEC, 10);
		close(p[1]);
		if (w < 0) {
			job->err = errno;
			job->syscall = "fcntl";
			close(p[0]);
			return;
		}
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	sigfillset(&all);
	sigemptyset(&none);
	rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (!rc)
		rc = job->stdout_fd >= 0 ? posix_spawn_file_actions_adddup2(&fa, job->stdout_fd, 1)
					 : posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	if (!rc)
		rc = job->stderr_fd >= 0 ? posix_spawn_file_actions_adddup2(&fa, job->stderr_fd, 2)
					 : posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	if (!rc && w >= 0)
		rc = posix_spawn_file_actions_adddup2(&fa, w, 3);
	if (!rc)
		rc = posix_spawnattr_setsigdefault(&attr, &all);
	if (!rc)
		rc = posix_spawnattr_setsigmask(&attr, &none);
	if (!rc)
		rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
	if (!rc) {
		rc = posix_spawnp(&pid, job->argv[0], &fa, &attr, job->argv, job->envp ? job->envp : environ);
		if (rc)
			job->syscall = "posix_spawn";
	} else
		job->syscall = "posix_spawn_file_actions";
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (w >= 0)
		close(w);
	if (rc) {
		job->err = rc;
		if (p[0] >= 0)
			close(p[0]);
		return;
	}
	/* setsid forks the program and exits: reap it (it never outlives the fork by much). */
	while (waitpid(pid, &job->status, 0) < 0) {
		if (errno != EINTR) {
			job->err = errno;
			job->syscall = "waitpid";
			if (p[0] >= 0)
				close(p[0]);
			return;
		}
	}
	if (!WIFEXITED(job->status) || WEXITSTATUS(job->status) != 0) {
		job->err = ECHILD;
		job->syscall = "setsid --fork";
		if (p[0] >= 0)
			close(p[0]);
		return;
	}
	job->ready_fd = p[0];
}

static void spawn_complete(napi_env env, napi_status status, void *data)
{
	struct spawn_job *job = data;
	napi_value value = NULL, fd;
	napi_status st = status;
	bool ok = status == napi_ok && job->err == 0;

	if (st == napi_ok && ok) {
		st = napi_create_object(env, &value);
		if (st == napi_ok)
			st = napi_create_int32(env, job->ready_fd, &fd);
		if (st == napi_ok)
			st = napi_set_named_property(env, value, "readyFd", fd);
		if (st != napi_ok && job->ready_fd >= 0)
			close(job->ready_fd);
	} else if (st == napi_ok) {
		char msg[512];
		if (job->err == ECHILD)
			snprintf(msg, sizeof(msg), "ECHILD: setsid --fork %s failed (wait status %d)", job->argv[2],
				 job->status);
		else
			snprintf(msg, sizeof(msg), "%s: %s, %s %s", job->err == ENOENT ? "ENOENT" : "EIO",
				 strerror(job->err), job->syscall, job->argv[0]);
		st = make_error(env, job->err == ENOENT ? "ENOENT" : job->err == ECHILD ? "ECHILD" : "EIO", msg,
				&value);
	}
	settle_work(env, job->deferred, st, ok, value, "cannot settle a spawn promise");
	spawn_job_free(env, job);
}

/* A JS array of strings as a NULL-terminated malloc'ed vector, `pre` strings first. */
static char **get_strings(napi_env env, napi_value arr, const char *what, const char *const *pre,
			  size_t npre, size_t *count)
{
	uint32_t n = 0;
	bool is_array = false;
	char **v;

	if (napi_failed(env, napi_is_array(env, arr, &is_array)))
		return NULL;
	if (!is_array) {
		throw_fmt(env, THROW_TYPE, "EINVAL", "%s must be an array of strings", what);
		return NULL;
	}
	if (napi_failed(env, napi_get_array_length(env, arr, &n)))
		return NULL;
	if (n > SPAWN_MAX_ARGS) {
		throw_fmt(env, THROW_RANGE, "EINVAL", "%s has %u entries, at most %u", what, n, SPAWN_MAX_ARGS);
		return NULL;
	}
	v = calloc(npre + n + 1, sizeof(*v));
	if (!v) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	*count = 0;
	for (size_t i = 0; i < npre; i++) {
		v[i] = strdup(pre[i]);
		*count = i + 1;
		if (!v[i]) {
			free_strings(v, *count);
			throw_errno(env, ENOMEM, "malloc", NULL, NULL);
			return NULL;
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		napi_value e;
		size_t len;
		napi_valuetype t;
		if (napi_failed(env, napi_get_element(env, arr, i, &e)) || napi_failed(env, napi_typeof(env, e, &t)))
			goto fail;
		if (t != napi_string) {
			throw_fmt(env, THROW_TYPE, "EINVAL", "%s[%u] is not a string", what, i);
			goto fail;
		}
		if (napi_failed(env, napi_get_value_string_utf8(env, e, NULL, 0, &len)))
			goto fail;
		char *s = malloc(len + 1);
		if (!s) {
			throw_errno(env, ENOMEM, "malloc", NULL, NULL);
			goto fail;
		}
		v[npre + i] = s;
		*count = npre + i + 1;
		if (napi_failed(env, napi_get_value_string_utf8(env, e, s, len + 1, &len)))
			goto fail;
		if (strlen(s) != len) {
			throw_fmt(env, THROW_TYPE, "EINVAL", "%s[%u] holds a NUL byte", what, i);
			goto fail;
		}
	}
	return v;
fail:
	free_strings(v, *count);
	return NULL;
}

/* opts.name as an fd (-1 when absent or null). */
static bool get_fd_opt(napi_env env, napi_value opts, const char *name, int *out)
{
	bool has = false;
	napi_value v;
	napi_valuetype t;
	int64_t fd;

	*out = -1;
	if (napi_failed(env, napi_has_named_property(env, opts, name, &has)))
		return false;
	if (!has)
		return true;
	if (napi_failed(env, napi_get_named_property(env, opts, name, &v)) || napi_failed(env, napi_typeof(env, v, &t)))
		return false;
	if (t == napi_undefined || t == napi_null)
		return true;
	if (!get_int(env, v, name, -1, INT32_MAX, &fd))
		return false;
	*out = (int)fd;
	return true;
}

/*
 * spawnDetached(file: string, args: string[],
 *               opts: { stdoutFd?: number; stderrFd?: number; readyPipe?: boolean },
 *               env: string[] | null): Promise<{ readyFd: number }>
 * file is found on PATH as execvp finds it; env entries are "NAME=value".
 * Resolves once the program runs in a session of its own (readyFd -1 without
 * readyPipe). A program that cannot be executed closes the pipe without a
 * word (setsid prints why on its stderr).
 */
napi_value js_spawn_detached(napi_env env, napi_callback_info info)
{
	napi_value argv[4], promise = NULL, rp;
	struct spawn_job *job;
	char *file;
	napi_valuetype et, ot;
	bool queued = false, has_rp = false;

	if (!get_args(env, info, 4, argv))
		return NULL;
	if (napi_failed(env, napi_typeof(env, argv[2], &ot)) || napi_failed(env, napi_typeof(env, argv[3], &et)))
		return NULL;
	if (ot != napi_object) {
		throw_fmt(env, THROW_TYPE, "EINVAL", "opts must be an object");
		return NULL;
	}
	size_t flen = 0;
	if (napi_failed(env, napi_get_value_string_utf8(env, argv[0], NULL, 0, &flen)))
		return NULL;
	file = malloc(flen + 1);
	if (!file) {
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	if (napi_failed(env, napi_get_value_string_utf8(env, argv[0], file, flen + 1, &flen)) || strlen(file) != flen || flen == 0) {
		free(file);
		throw_fmt(env, THROW_TYPE, "EINVAL", "file must be a non-empty string without NUL bytes");
		return NULL;
	}
	job = calloc(1, sizeof(*job));
	if (!job) {
		free(file);
		throw_errno(env, ENOMEM, "malloc", NULL, NULL);
		return NULL;
	}
	const char *pre[] = { "setsid", "--fork", file };
	job->argv = get_strings(env, argv[1], "args", pre, 3, &job->argc);
	free(file);
	if (!job->argv || !get_fd_opt(env, argv[2], "stdoutFd", &job->stdout_fd) ||
	    !get_fd_opt(env, argv[2], "stderrFd", &job->stderr_fd))
		goto fail;
	if (napi_failed(env, napi_has_named_property(env, argv[2], "readyPipe", &has_rp)))
		goto fail;
	if (has_rp && (napi_failed(env, napi_get_named_property(env, argv[2], "readyPipe", &rp)) ||
		       napi_failed(env, napi_coerce_to_bool(env, rp, &rp)) ||
		       napi_failed(env, napi_get_value_bool(env, rp, &job->ready_pipe))))
		goto fail;
	if (et != napi_null && et != napi_undefined) {
		job->envp = get_strings(env, argv[3], "env", NULL, 0, &job->envc);
		if (!job->envp)
			goto fail;
	}
	promise = queue_work(env, "strata.spawnDetached", spawn_execute, spawn_complete, job, &job->work,
			     &job->deferred, &queued);
	if (queued)
		return promise;
fail:
	spawn_job_free(env, job);
	return promise;
}
