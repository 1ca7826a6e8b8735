/*
 * capture.c: a whole directory tree into layer frames, on C threads.
 *
 *   captureStart(root: Buffer, level, frameBound, chunkSize, workers,
 *                start: Buffer | null, upper: boolean): handle
 *   captureNext(handle): Promise<{ data: Buffer, meta: string } | null>
 *   captureStop(handle): stops the threads and frees everything
 *
 * One walker thread lists directories (sorted bytewise), lstats every entry,
 * reads symlink targets and xattrs, resolves hard links, and cuts the entries,
 * in layer order, into tasks of about CAP_TASK_BYTES of file data (a file over
 * chunkSize is a task of its own). Worker threads take tasks in order and
 * read, hash, build tar headers and compress them into frames, each with its
 * own zstd context; the frames are what src/format/writer.ts would write for
 * the same entries (docs/format.md, "Frame boundaries"), except that a shared
 * frame that ends a task ends with its last file's padding. captureNext hands
 * JavaScript the finished tasks in order: the frames' bytes, which it appends
 * to the blob, and `meta`, a JSON array of items (src/capture/native-tree.ts
 * reads them):
 *
 *   ["t", E]        a task starts at offset E of the engine's own bytes
 *   ["w", n]        the next n bytes of data are frames: append them
 *   ["e", [rec..]]  TOC entries; their offsets count from the task's start
 *                   (with upper, each record ends with the entry's signature,
 *                   "type:ino:size:mtime_ns:ctime_ns", src/capture/signature.ts)
 *   ["f", path]     capture this entry in JavaScript (sparse, unreadable...)
 *   ["s", path]     a socket: warn and skip
 *   ["L"]           a large file's frames follow: mark the blob here
 *   ["C"]           the large file held still: keep what follows the mark
 *   ["x", path]     it changed under the read: roll back to the mark and
 *                   capture it in JavaScript (which retries it)
 *
 * Point in time, as in src/capture/tree.ts: a file is kept only if its size,
 * mtime, ctime and inode are the same before and after its read; one changed
 * within RACY_NS before the read is read twice and must match; a small file
 * that moves is read again with a jittered backoff until it holds still, and
 * one that never does (CAP_RETRIES tries and CAP_RETRY_MS) fails the capture
 * with ETORN. An entry gone before its read is not part of this point in time.
 *
 * Memory stays bounded: at most CAP_MAX_TASKS tasks in flight; a worker whose
 * task is not the oldest waits while CAP_BUFFERED_MAX bytes of finished frames
 * wait for JavaScript, and the oldest (a large file streams) while
 * CAP_HEAD_MAX of its own do.
 */
#include "sys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zstd.h>

#define CAP_TASK_BYTES (1u << 20)
#define CAP_TASK_ENTRIES 512
#define CAP_MAX_TASKS 64
#define CAP_BUFFERED_MAX (64u << 20)
#define CAP_BATCH_BYTES (4u << 20)
#define CAP_HEAD_MAX (16u << 20)
#define CAP_WORKERS_MAX 16
/* What a header costs a task's budget, so that tasks of empty files end too. */
#define TAR_HEADER_COST 512
#define RACY_NS 2000000000LL
#define SETTLE_FROM (256 * 1024)
#define SETTLE_MS 30
#define CAP_RETRIES 5
#define CAP_RETRY_MS 3000

enum cap_kind {
	CK_DIR, CK_FILE, CK_LARGE, CK_SYMLINK, CK_HARDLINK, CK_CHAR, CK_BLOCK,
	CK_FIFO, CK_FALLBACK, CK_SOCKET,
};

struct cap_entry {
	char *path; /* layer path ('.' for the root), owned */
	size_t path_len;
	const char *name; /* its last component, inside path */
	struct stat st;
	enum cap_kind kind;
	char *link; /* symlink target or hard link's first name, owned */
	size_t link_len;
	size_t nx;
	char **xnames;
	uint8_t **xvals;
	size_t *xlens;
};

/* A piece of a task's output: frames and the items describing them. */
struct cap_seg {
	struct sbuf data;
	struct sbuf json; /* items, comma-separated, no brackets */
	bool torn; /* the task's bytes are rolled back: E returns to its start */
	struct cap_seg *next;
};

struct cap_task {
	struct cap_entry *ents;
	size_t n, cap;
	size_t bytes;
	struct cap_seg *segs, *segs_tail;
	bool done, started;
	size_t buffered; /* bytes of its segments not yet taken */
	uint64_t base; /* E at its start (consumer only) */
	struct cap_task *next;
};

struct link_slot {
	dev_t dev;
	ino_t ino;
	char *path; /* borrowed from the first entry's copy below */
};

struct capture {
	char *root;
	size_t root_len;
	/*
	 * A workspace's upper (upper): the walk starts at start (a layer path below root, whose own
	 * entry JavaScript has written), overlay's xattrs are not stored, and what only JavaScript's
	 * upper walk knows how to capture is handed back: whiteouts (0/0 character devices),
	 * directories overlay marked opaque or renamed, and files with other names (its hard-link
	 * map spans the whole upper). Each record then carries the entry's baseline signature.
	 */
	char *start;
	bool upper;
	int level;
	size_t bound, chunk;
	int nworkers;
	pthread_t walker, workers[CAP_WORKERS_MAX];
	bool walker_started;
	int workers_started;

	pthread_mutex_t mu;
	pthread_cond_t cv; /* every state change: few threads, one condition */
	struct cap_task *head, *tail, *todo;
	size_t ntasks, buffered;
	bool walk_done, stop;
	/* The first failure: ETORN, an errno (with syscall), or a message. */
	int err;
	char err_code[16];
	char err_syscall[16];
	char *err_path; /* layer path, owned */
	int err_tries;
	long err_ms;
	char err_msg[200];

	/* consumer only */
	uint64_t E;
	/* walker only */
	struct cap_task *building;
	struct link_slot *links;
	size_t links_n, links_cap;
	dev_t no_xattr_dev;
	bool no_xattr;
	unsigned int seed;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static int64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	return ns_of(&t);
}

static int64_t mono_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec t = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&t, &t) != 0 && errno == EINTR)
		;
}

static bool is_sparse(const struct stat *st)
{
	return st->st_size > 0 && (int64_t)st->st_blocks * 512 < (int64_t)st->st_size;
}

static void entry_free(struct cap_entry *e)
{
	size_t i;

	for (i = 0; i < e->nx; i++) {
		free(e->xnames[i]);
		free(e->xvals[i]);
	}
	free(e->xnames);
	free(e->xvals);
	free(e->xlens);
	free(e->link);
	free(e->path);
}

static void seg_free(struct cap_seg *s)
{
	sbuf_free(&s->data);
	sbuf_free(&s->json);
	free(s);
}

static void task_free(struct cap_task *t)
{
	struct cap_seg *s, *n;
	size_t i;

	for (i = 0; i < t->n; i++)
		entry_free(&t->ents[i]);
	free(t->ents);
	for (s = t->segs; s != NULL; s = n) {
		n = s->next;
		seg_free(s);
	}
	free(t);
}

/* Record the first failure and stop everything; the caller holds no lock. */
static void fail(struct capture *cap, int err, const char *code,
		 const char *syscall, const char *path, const char *msg)
{
	pthread_mutex_lock(&cap->mu);
	if (cap->err == 0 && cap->err_code[0] == '\0') {
		cap->err = err;
		snprintf(cap->err_code, sizeof(cap->err_code), "%s", code ? code : "");
		snprintf(cap->err_syscall, sizeof(cap->err_syscall), "%s", syscall ? syscall : "");
		cap->err_path = path ? strdup(path) : NULL;
		snprintf(cap->err_msg, sizeof(cap->err_msg), "%s", msg ? msg : "");
	}
	cap->stop = true;
	pthread_cond_broadcast(&cap->cv);
	pthread_mutex_unlock(&cap->mu);
}

static void fail_errno(struct capture *cap, int err, const char *syscall,
		       const char *path)
{
	fail(cap, err, NULL, syscall, path, NULL);
}

static void fail_nomem(struct capture *cap)
{
	fail(cap, ENOMEM, "ENOMEM", NULL, NULL, "out of memory capturing the tree");
}

static bool stopped(struct capture *cap)
{
	bool s;

	pthread_mutex_lock(&cap->mu);
	s = cap->stop;
	pthread_mutex_unlock(&cap->mu);
	return s;
}

/* The absolute path of a layer path, for syscalls without an *at form. */
static char *fs_path(struct capture *cap, const char *lpath, size_t len)
{
	char *p;

	if (len == 1 && lpath[0] == '.')
		return strdup(cap->root);
	p = malloc(cap->root_len + 1 + len + 1);
	if (p == NULL)
		return NULL;
	memcpy(p, cap->root, cap->root_len);
	p[cap->root_len] = '/';
	memcpy(p + cap->root_len + 1, lpath, len);
	p[cap->root_len + 1 + len] = '\0';
	return p;
}

/* ------------------------------------------------------------------ */
/* JSON                                                                */
/* ------------------------------------------------------------------ */

/* A byte string as a JSON string whose chars are the bytes (latin1). */
static bool json_bytes(struct sbuf *j, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	if (!sbuf_reserve(j, len * 6 + 2))
		return false;
	j->p[j->len++] = '"';
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\') {
			j->p[j->len++] = '\\';
			j->p[j->len++] = c;
		} else if (c < 0x20 || c >= 0x80) {
			memcpy(j->p + j->len, "\\u00", 4);
			j->p[j->len + 4] = (uint8_t)hex[c >> 4];
			j->p[j->len + 5] = (uint8_t)hex[c & 15];
			j->len += 6;
		} else {
			j->p[j->len++] = c;
		}
	}
	j->p[j->len++] = '"';
	return true;
}

static bool json_str(struct sbuf *j, const char *s)
{
	return sbuf_put(j, s, strlen(s));
}

static bool json_num(struct sbuf *j, long long v)
{
	char num[24];
	int n = snprintf(num, sizeof(num), "%lld", v);

	return sbuf_put(j, num, (size_t)n);
}

static bool json_hex(struct sbuf *j, const uint8_t d[32])
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	if (!sbuf_reserve(j, 66))
		return false;
	j->p[j->len++] = '"';
	for (i = 0; i < 32; i++) {
		j->p[j->len++] = (uint8_t)hex[d[i] >> 4];
		j->p[j->len++] = (uint8_t)hex[d[i] & 15];
	}
	j->p[j->len++] = '"';
	return true;
}

static bool json_base64(struct sbuf *j, const uint8_t *v, size_t len)
{
	size_t out = 4 * ((len + 2) / 3);

	if (!sbuf_reserve(j, out + 3))
		return false;
	j->p[j->len++] = '"';
	if (len > 0)
		EVP_EncodeBlock(j->p + j->len, v, (int)len);
	j->len += out;
	j->p[j->len++] = '"';
	return true;
}

/* Start an item in a segment's item list. */
static bool json_item(struct sbuf *j, const char *open)
{
	return (j->len == 0 || sbuf_put(j, ",", 1)) && json_str(j, open);
}

/* ------------------------------------------------------------------ */
/* The walker                                                          */
/* ------------------------------------------------------------------ */

/* Hand a task to the workers; waits while too many are in flight. */
static bool push_task(struct capture *cap, struct cap_task *t)
{
	pthread_mutex_lock(&cap->mu);
	while (cap->ntasks >= CAP_MAX_TASKS && !cap->stop)
		pthread_cond_wait(&cap->cv, &cap->mu);
	if (cap->stop) {
		pthread_mutex_unlock(&cap->mu);
		task_free(t);
		return false;
	}
	if (cap->tail != NULL)
		cap->tail->next = t;
	else
		cap->head = t;
	cap->tail = t;
	if (cap->todo == NULL)
		cap->todo = t;
	cap->ntasks++;
	pthread_cond_broadcast(&cap->cv);
	pthread_mutex_unlock(&cap->mu);
	return true;
}

static bool flush_building(struct capture *cap)
{
	struct cap_task *t = cap->building;

	cap->building = NULL;
	if (t == NULL || t->n == 0) {
		if (t != NULL)
			task_free(t);
		return true;
	}
	return push_task(cap, t);
}

static struct cap_task *new_task(void)
{
	return calloc(1, sizeof(struct cap_task));
}

/* Add an entry (ownership moves) to the task being built. */
static bool add_entry(struct capture *cap, struct cap_entry *e)
{
	struct cap_task *t;

	if (e->kind == CK_LARGE) {
		if (!flush_building(cap))
			goto drop;
		t = new_task();
		if (t == NULL || (t->ents = malloc(sizeof(*t->ents))) == NULL) {
			free(t);
			fail_nomem(cap);
			goto drop;
		}
		t->ents[0] = *e;
		t->n = t->cap = 1;
		return push_task(cap, t);
	}
	if (cap->building == NULL && (cap->building = new_task()) == NULL) {
		fail_nomem(cap);
		goto drop;
	}
	t = cap->building;
	if (t->n == t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 64;
		struct cap_entry *p = realloc(t->ents, nc * sizeof(*p));

		if (p == NULL) {
			fail_nomem(cap);
			goto drop;
		}
		t->ents = p;
		t->cap = nc;
	}
	t->ents[t->n++] = *e;
	t->bytes += TAR_HEADER_COST + (e->kind == CK_FILE ? (size_t)e->st.st_size : 0);
	if (t->bytes >= CAP_TASK_BYTES || t->n >= CAP_TASK_ENTRIES)
		return flush_building(cap);
	return true;
drop:
	entry_free(e);
	return false;
}

/* Xattrs of the entry, sorted by name; false when it vanished (ENOENT). */
static int read_entry_xattrs(struct capture *cap, struct cap_entry *e)
{
	char *path, *list = NULL, *p;
	size_t len = 0, n = 0;
	int err;

	if (cap->no_xattr && cap->no_xattr_dev == e->st.st_dev)
		return 0;
	path = fs_path(cap, e->path, e->path_len);
	if (path == NULL)
		return ENOMEM;
	err = read_xattr_list(path, &list, &len);
	if (err == ENOTSUP) {
		/* This filesystem has none: do not ask again. */
		cap->no_xattr = true;
		cap->no_xattr_dev = e->st.st_dev;
		err = 0;
		goto out;
	}
	if (err != 0 || len == 0)
		goto out;
	for (p = list; p < list + len; p += strlen(p) + 1)
		if (*p != '\0')
			n++;
	e->xnames = calloc(n ? n : 1, sizeof(*e->xnames));
	e->xvals = calloc(n ? n : 1, sizeof(*e->xvals));
	e->xlens = calloc(n ? n : 1, sizeof(*e->xlens));
	if (e->xnames == NULL || e->xvals == NULL || e->xlens == NULL) {
		err = ENOMEM;
		goto out;
	}
	for (p = list; p < list + len; p += strlen(p) + 1) {
		if (*p == '\0')
			continue;
		err = read_xattr(path, p, &e->xvals[e->nx], &e->xlens[e->nx]);
		if (err == ENODATA) {
			err = 0;
			continue; /* removed since the listing */
		}
		if (err != 0)
			goto out;
		e->xnames[e->nx] = strdup(p);
		if (e->xnames[e->nx] == NULL) {
			free(e->xvals[e->nx]);
			err = ENOMEM;
			goto out;
		}
		e->nx++;
	}
	sort_xattrs(e->xnames, e->xvals, e->xlens, e->nx);
out:
	free(list);
	free(path);
	return err;
}

/* The first name captured of a multiply linked inode, or NULL (and remember this one). */
static const char *link_first(struct capture *cap, const struct cap_entry *e, bool *nomem)
{
	size_t i, mask;

	*nomem = false;
	if (cap->links_n * 2 >= cap->links_cap) {
		size_t nc = cap->links_cap ? cap->links_cap * 2 : 1024;
		struct link_slot *n = calloc(nc, sizeof(*n));

		if (n == NULL) {
			*nomem = true;
			return NULL;
		}
		for (i = 0; i < cap->links_cap; i++) {
			struct link_slot *s = &cap->links[i];
			size_t h;

			if (s->path == NULL)
				continue;
			h = ((size_t)s->ino * 0x9e3779b97f4a7c15ULL ^ (size_t)s->dev) & (nc - 1);
			while (n[h].path != NULL)
				h = (h + 1) & (nc - 1);
			n[h] = *s;
		}
		free(cap->links);
		cap->links = n;
		cap->links_cap = nc;
	}
	mask = cap->links_cap - 1;
	for (i = ((size_t)e->st.st_ino * 0x9e3779b97f4a7c15ULL ^ (size_t)e->st.st_dev) & mask;
	     cap->links[i].path != NULL; i = (i + 1) & mask)
		if (cap->links[i].ino == e->st.st_ino && cap->links[i].dev == e->st.st_dev)
			return cap->links[i].path;
	cap->links[i].path = strdup(e->path);
	if (cap->links[i].path == NULL) {
		*nomem = true;
		return NULL;
	}
	cap->links[i].dev = e->st.st_dev;
	cap->links[i].ino = e->st.st_ino;
	cap->links_n++;
	return NULL;
}

static int list_names(int dfd, char ***names_out, size_t *count_out)
{
	size_t cap = 64, count = 0;
	char **names = malloc(cap * sizeof(*names));
	struct dirent *d;
	DIR *dir;
	int fd = dup(dfd), err = 0;

	if (names == NULL || fd < 0) {
		err = names == NULL ? ENOMEM : errno;
		if (fd >= 0)
			close(fd);
		free(names);
		return err;
	}
	dir = fdopendir(fd);
	if (dir == NULL) {
		err = errno;
		close(fd);
		free(names);
		return err;
	}
	for (;;) {
		errno = 0;
		d = readdir(dir);
		if (d == NULL) {
			err = errno;
			break;
		}
		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		if (count == cap) {
			char **p = realloc(names, 2 * cap * sizeof(*p));

			if (p == NULL) {
				err = ENOMEM;
				break;
			}
			names = p;
			cap *= 2;
		}
		names[count] = strdup(d->d_name);
		if (names[count] == NULL) {
			err = ENOMEM;
			break;
		}
		count++;
	}
	closedir(dir);
	if (err != 0) {
		while (count > 0)
			free(names[--count]);
		free(names);
		return err;
	}
	qsort(names, count, sizeof(*names), cmp_names);
	*names_out = names;
	*count_out = count;
	return 0;
}

static bool walk_dir(struct capture *cap, int dfd, const char *lpath,
		     size_t lpath_len);

#define OVERLAY_XATTR "trusted.overlay."

/*
 * An upper entry's xattrs without overlay's own (never stored); true when the entry is a
 * directory overlay marked opaque or renamed (trusted.overlay.opaque / .redirect).
 */
static bool upper_xattrs(struct cap_entry *e)
{
	bool marked = false;
	size_t k = 0;

	for (size_t i = 0; i < e->nx; i++) {
		if (strncmp(e->xnames[i], OVERLAY_XATTR, sizeof(OVERLAY_XATTR) - 1) != 0) {
			e->xnames[k] = e->xnames[i];
			e->xvals[k] = e->xvals[i];
			e->xlens[k] = e->xlens[i];
			k++;
			continue;
		}
		if (e->kind == CK_DIR && (strcmp(e->xnames[i], OVERLAY_XATTR "redirect") == 0 ||
					  (strcmp(e->xnames[i], OVERLAY_XATTR "opaque") == 0 && e->xlens[i] == 1 &&
					   e->xvals[i][0] == 'y')))
			marked = true;
		free(e->xnames[i]);
		free(e->xvals[i]);
	}
	e->nx = k;
	return marked;
}

/* One name of directory d: stat it, describe it, queue it, and descend. */
static bool walk_entry(struct capture *cap, int dfd, const char *lpath,
		       size_t lpath_len, const char *name)
{
	struct cap_entry e = { 0 };
	size_t nl = strlen(name);
	bool root = lpath_len == 1 && lpath[0] == '.';
	int err;

	e.path_len = root ? nl : lpath_len + 1 + nl;
	e.path = malloc(e.path_len + 1);
	if (e.path == NULL) {
		fail_nomem(cap);
		return false;
	}
	if (root) {
		memcpy(e.path, name, nl + 1);
	} else {
		memcpy(e.path, lpath, lpath_len);
		e.path[lpath_len] = '/';
		memcpy(e.path + lpath_len + 1, name, nl + 1);
	}
	e.name = e.path + e.path_len - nl;
	if (fstatat(dfd, name, &e.st, AT_SYMLINK_NOFOLLOW) != 0) {
		err = errno;
		if (err == ENOENT || err == ENOTDIR) {
			free(e.path);
			return true; /* gone: not part of this point in time */
		}
		e.kind = CK_FALLBACK; /* JavaScript's lstat says why */
		goto queue;
	}
	switch (e.st.st_mode & S_IFMT) {
	case S_IFDIR: e.kind = CK_DIR; break;
	case S_IFREG:
		e.kind = is_sparse(&e.st) ? CK_FALLBACK :
			 (uint64_t)e.st.st_size > cap->chunk ? CK_LARGE : CK_FILE;
		break;
	case S_IFLNK: e.kind = CK_SYMLINK; break;
	case S_IFCHR: e.kind = CK_CHAR; break;
	case S_IFBLK: e.kind = CK_BLOCK; break;
	case S_IFIFO: e.kind = CK_FIFO; break;
	default: e.kind = CK_SOCKET; goto queue;
	}
	if (cap->upper && ((e.kind != CK_DIR && e.st.st_nlink > 1) || (e.kind == CK_CHAR && e.st.st_rdev == 0))) {
		e.kind = CK_FALLBACK; /* another name elsewhere in the upper, or a whiteout */
		goto queue;
	}
	if (e.kind != CK_DIR && e.st.st_nlink > 1) {
		bool nomem;
		const char *first = link_first(cap, &e, &nomem);

		if (nomem) {
			free(e.path);
			fail_nomem(cap);
			return false;
		}
		if (first != NULL) {
			e.kind = CK_HARDLINK;
			e.link_len = strlen(first);
			e.link = strdup(first);
			if (e.link == NULL) {
				free(e.path);
				fail_nomem(cap);
				return false;
			}
		}
	}
	if (e.kind == CK_SYMLINK) {
		size_t lcap = e.st.st_size > 0 ? (size_t)e.st.st_size + 1 : 256;

		for (int attempt = 0; attempt < 8; attempt++, lcap *= 2) {
			ssize_t n;

			free(e.link);
			e.link = malloc(lcap);
			if (e.link == NULL) {
				free(e.path);
				fail_nomem(cap);
				return false;
			}
			n = readlinkat(dfd, name, e.link, lcap);
			if (n < 0) {
				err = errno;
				free(e.link);
				e.link = NULL;
				if (err == ENOENT || err == ENOTDIR) {
					free(e.path);
					return true;
				}
				e.kind = CK_FALLBACK;
				break;
			}
			if ((size_t)n < lcap) {
				e.link_len = (size_t)n;
				break;
			}
		}
		if (e.kind == CK_SYMLINK && e.link == NULL)
			e.kind = CK_FALLBACK;
	}
	if (e.kind != CK_FALLBACK) {
		err = read_entry_xattrs(cap, &e);
		if (err == ENOENT || err == ENOTDIR) {
			entry_free(&e);
			return true;
		}
		if (err == ENOMEM) {
			entry_free(&e);
			fail_nomem(cap);
			return false;
		}
		if (err != 0) {
			/* JavaScript asks again and reports it. */
			for (size_t i = 0; i < e.nx; i++) {
				free(e.xnames[i]);
				free(e.xvals[i]);
			}
			e.nx = 0;
			e.kind = CK_FALLBACK;
		} else if (cap->upper && upper_xattrs(&e)) {
			e.kind = CK_FALLBACK; /* opaque or renamed: JavaScript walks it */
		}
	}
queue:
	if (e.kind != CK_DIR) {
		return add_entry(cap, &e);
	} else {
		char *sub_path = strdup(e.path);
		size_t sub_len = e.path_len;
		int fd;
		bool ok;

		if (sub_path == NULL) {
			entry_free(&e);
			fail_nomem(cap);
			return false;
		}
		if (!add_entry(cap, &e)) {
			free(sub_path);
			return false;
		}
		fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			err = errno;
			if (err == ENOENT || err == ENOTDIR || err == ELOOP) {
				free(sub_path);
				return true; /* removed after its lstat: empty now */
			}
			fail_errno(cap, err, "scandir", sub_path);
			free(sub_path);
			return false;
		}
		ok = walk_dir(cap, fd, sub_path, sub_len);
		close(fd);
		free(sub_path);
		return ok;
	}
}

static bool walk_dir(struct capture *cap, int dfd, const char *lpath,
		     size_t lpath_len)
{
	char **names = NULL;
	size_t count = 0, i;
	bool ok = true;
	int err = list_names(dfd, &names, &count);

	if (err != 0) {
		if (err == ENOENT)
			return true; /* removed while we listed it */
		if (err == ENOMEM)
			fail_nomem(cap);
		else
			fail_errno(cap, err, "scandir", lpath);
		return false;
	}
	for (i = 0; i < count && ok; i++) {
		ok = walk_entry(cap, dfd, lpath, lpath_len, names[i]) && !stopped(cap);
	}
	for (i = 0; i < count; i++)
		free(names[i]);
	free(names);
	return ok;
}

static void *walker_main(void *arg)
{
	struct capture *cap = arg;
	struct cap_entry e = { 0 };
	int fd, err;

	if (cap->start != NULL) {
		/* A subtree: its own entry is JavaScript's; the walk lists what is below it. */
		char *at = fs_path(cap, cap->start, strlen(cap->start));

		fd = at == NULL ? -1 : open(at, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		err = at == NULL ? ENOMEM : errno;
		free(at);
		if (fd < 0) {
			/* Removed since JavaScript's lstat: empty at this point in time. */
			if (err != ENOENT && err != ENOTDIR)
				fail_errno(cap, err, "scandir", cap->start);
			goto done;
		}
		if (walk_dir(cap, fd, cap->start, strlen(cap->start)))
			flush_building(cap);
		close(fd);
		goto done;
	}
	fd = open(cap->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		fail_errno(cap, errno, "scandir", ".");
		goto done;
	}
	e.path = strdup(".");
	e.path_len = 1;
	if (e.path == NULL || fstat(fd, &e.st) != 0) {
		err = e.path == NULL ? ENOMEM : errno;
		free(e.path);
		close(fd);
		fail_errno(cap, err, "lstat", ".");
		goto done;
	}
	e.name = e.path;
	e.kind = CK_DIR;
	err = read_entry_xattrs(cap, &e);
	if (err != 0) {
		entry_free(&e);
		close(fd);
		fail_errno(cap, err, "llistxattr", ".");
		goto done;
	}
	if (add_entry(cap, &e) && walk_dir(cap, fd, ".", 1))
		flush_building(cap);
	close(fd);
done:
	pthread_mutex_lock(&cap->mu);
	cap->walk_done = true;
	pthread_cond_broadcast(&cap->cv);
	pthread_mutex_unlock(&cap->mu);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Workers                                                             */
/* ------------------------------------------------------------------ */

struct cap_chunk {
	uint64_t offset, size, blob_off, blob_len;
	uint8_t digest[32];
	int64_t frame_off; /* -1: a frame of its own */
	uint64_t frame_size;
};

/* A TOC entry the task has written, waiting for its frame's place. */
struct cap_rec {
	const struct cap_entry *e;
	struct stat st; /* metadata as recorded (the read's fstat for files) */
	uint64_t header_frame;
	bool header_open; /* its header is in the open frame */
	bool has_digest;
	uint8_t digest[32];
	struct cap_chunk *chunks;
	size_t nchunks;
	bool chunk_open; /* its chunk shares the open frame */
};

struct worker {
	struct capture *cap;
	ZSTD_CCtx *cctx;
	struct sbuf frame; /* the open shared frame, uncompressed */
	struct cap_seg *seg; /* the segment being filled */
	uint64_t rel; /* bytes of this task output before seg */
	struct cap_rec *recs;
	size_t nrecs, recs_cap;
	size_t pad; /* owed after the last data: opens the next frame */
	uint8_t *buf, *buf2; /* file reads, chunk bytes each */
	unsigned int seed;
};

static uint64_t here(struct worker *w)
{
	return w->rel + w->seg->data.len;
}

/* Compress src into the segment's data; sets *at and *len. */
static bool compress_into(struct worker *w, const uint8_t *src, size_t n,
			  uint64_t *at, uint64_t *len)
{
	size_t bound = ZSTD_compressBound(n), r;
	struct sbuf *d = &w->seg->data;

	if (!sbuf_reserve(d, bound)) {
		fail_nomem(w->cap);
		return false;
	}
	r = ZSTD_compress2(w->cctx, d->p + d->len, bound, n > 0 ? src : (const void *)"", n);
	if (ZSTD_isError(r)) {
		fail(w->cap, 0, "ECOMPRESS", NULL, NULL, ZSTD_getErrorName(r));
		return false;
	}
	*at = here(w);
	*len = r;
	d->len += r;
	return true;
}

static bool sha256(const uint8_t *p, size_t n, uint8_t out[32])
{
	unsigned int len = 0;

	return EVP_Digest(n > 0 ? p : (const uint8_t *)"", n, out, &len, EVP_sha256(), NULL) == 1 &&
	       len == 32;
}

/* Close the open shared frame: compress it and give its records their place. */
static bool close_frame(struct worker *w)
{
	uint64_t at, len;
	uint8_t digest[32];
	size_t i;

	if (w->frame.len == 0)
		return true;
	if (!sha256(w->frame.p, w->frame.len, digest) ||
	    !compress_into(w, w->frame.p, w->frame.len, &at, &len))
		return false;
	for (i = 0; i < w->nrecs; i++) {
		struct cap_rec *r = &w->recs[i];

		if (r->header_open) {
			r->header_frame = at;
			r->header_open = false;
		}
		if (r->chunk_open) {
			struct cap_chunk *c = &r->chunks[r->nchunks - 1];

			c->blob_off = at;
			c->blob_len = len;
			c->frame_size = w->frame.len;
			memcpy(c->digest, digest, 32);
			r->chunk_open = false;
		}
	}
	w->frame.len = 0;
	return true;
}

/* The padding owed, as a frame of its own (before a fallback or after a large file). */
static bool pad_frame(struct worker *w)
{
	static const uint8_t zeros[512];
	uint64_t at, len;

	if (w->pad == 0)
		return true;
	if (!compress_into(w, zeros, w->pad, &at, &len))
		return false;
	w->pad = 0;
	return true;
}

static struct cap_rec *new_rec(struct worker *w, const struct cap_entry *e,
			       const struct stat *st)
{
	struct cap_rec *r;

	if (w->nrecs == w->recs_cap) {
		size_t nc = w->recs_cap ? w->recs_cap * 2 : 64;
		struct cap_rec *p = realloc(w->recs, nc * sizeof(*p));

		if (p == NULL) {
			fail_nomem(w->cap);
			return NULL;
		}
		w->recs = p;
		w->recs_cap = nc;
	}
	r = &w->recs[w->nrecs++];
	memset(r, 0, sizeof(*r));
	r->e = e;
	r->st = *st;
	return r;
}

static struct cap_chunk *add_chunk(struct worker *w, struct cap_rec *r)
{
	struct cap_chunk *p = realloc(r->chunks, (r->nchunks + 1) * sizeof(*p));

	if (p == NULL) {
		fail_nomem(w->cap);
		return NULL;
	}
	r->chunks = p;
	memset(&p[r->nchunks], 0, sizeof(*p));
	p[r->nchunks].frame_off = -1;
	return &p[r->nchunks++];
}

static char type_char(const struct cap_entry *e)
{
	switch (e->kind) {
	case CK_DIR: return 'd';
	case CK_HARDLINK: return 'h';
	case CK_SYMLINK: return 'l';
	case CK_CHAR: return 'c';
	case CK_BLOCK: return 'b';
	case CK_FIFO: return 'p';
	default: return 'f';
	}
}

/* The entry's header, appended to the open frame after the padding owed. */
static bool frame_header(struct worker *w, struct cap_rec *r, uint64_t size)
{
	const struct cap_entry *e = r->e;
	struct tar_member m = { 0 };
	char *dname = NULL;
	bool ok;

	if (!sbuf_zeros(&w->frame, w->pad)) {
		fail_nomem(w->cap);
		return false;
	}
	w->pad = 0;
	m.name = e->path;
	m.name_len = e->path_len;
	if (e->kind == CK_DIR) {
		bool root = e->path_len == 1 && e->path[0] == '.';

		dname = malloc(e->path_len + 2);
		if (dname == NULL) {
			fail_nomem(w->cap);
			return false;
		}
		memcpy(dname, e->path, e->path_len);
		if (root) {
			dname[1] = '/';
			m.name_len = 2;
		} else {
			dname[e->path_len] = '/';
			m.name_len = e->path_len + 1;
		}
		m.name = dname;
	}
	switch (e->kind) {
	case CK_DIR: m.type = '5'; break;
	case CK_HARDLINK: m.type = '1'; break;
	case CK_SYMLINK: m.type = '2'; break;
	case CK_CHAR: m.type = '3'; break;
	case CK_BLOCK: m.type = '4'; break;
	case CK_FIFO: m.type = '6'; break;
	default: m.type = '0'; break;
	}
	m.mode = r->st.st_mode & 07777;
	m.uid = r->st.st_uid;
	m.gid = r->st.st_gid;
	m.size = size;
	m.mtime_sec = r->st.st_mtim.tv_sec;
	m.mtime_nsec = r->st.st_mtim.tv_nsec;
	if (e->kind == CK_SYMLINK || e->kind == CK_HARDLINK) {
		m.link = e->link;
		m.link_len = e->link_len;
	}
	if (e->kind == CK_CHAR || e->kind == CK_BLOCK) {
		m.dev_major = major(r->st.st_rdev);
		m.dev_minor = minor(r->st.st_rdev);
	}
	m.nxattrs = e->nx;
	m.xnames = e->xnames;
	m.xvals = e->xvals;
	m.xlens = e->xlens;
	ok = tar_member(&w->frame, &m);
	free(dname);
	if (!ok) {
		fail_nomem(w->cap);
		return false;
	}
	r->header_open = true;
	return true;
}

/* The records so far as one ["e", [...]] item; they are then forgotten. */
static bool render_recs(struct worker *w)
{
	struct sbuf *j = &w->seg->json;
	size_t i, k;

	if (w->nrecs == 0)
		return true;
	if (!json_item(j, "[\"e\",["))
		goto nomem;
	for (i = 0; i < w->nrecs; i++) {
		struct cap_rec *r = &w->recs[i];
		const struct cap_entry *e = r->e;
		char t[2] = { type_char(e), 0 };

		if ((i > 0 && !json_str(j, ",")) || !json_str(j, "[") ||
		    !json_bytes(j, e->path, e->path_len) || !json_str(j, ",\"") ||
		    !json_str(j, t) || !json_str(j, "\",") ||
		    !json_num(j, r->st.st_mode & 07777) || !json_str(j, ",") ||
		    !json_num(j, r->st.st_uid) || !json_str(j, ",") ||
		    !json_num(j, r->st.st_gid) || !json_str(j, ",") ||
		    !json_num(j, r->st.st_mtim.tv_sec) || !json_str(j, ",") ||
		    !json_num(j, r->st.st_mtim.tv_nsec) || !json_str(j, ",") ||
		    !json_num(j, e->kind == CK_FILE || e->kind == CK_LARGE ? r->st.st_size : 0) ||
		    !json_str(j, ",") || !(r->has_digest ? json_hex(j, r->digest) : json_str(j, "null")) ||
		    !json_str(j, ",") || !json_num(j, (long long)r->header_frame) || !json_str(j, ","))
			goto nomem;
		if (e->kind == CK_FILE || e->kind == CK_LARGE) {
			if (!json_str(j, "["))
				goto nomem;
			for (k = 0; k < r->nchunks; k++) {
				struct cap_chunk *c = &r->chunks[k];

				if ((k > 0 && !json_str(j, ",")) || !json_str(j, "[") ||
				    !json_num(j, (long long)c->offset) || !json_str(j, ",") ||
				    !json_num(j, (long long)c->size) || !json_str(j, ",") ||
				    !json_num(j, (long long)c->blob_off) || !json_str(j, ",") ||
				    !json_num(j, (long long)c->blob_len) || !json_str(j, ",") ||
				    !json_hex(j, c->digest))
					goto nomem;
				if (c->frame_off >= 0 &&
				    (!json_str(j, ",") || !json_num(j, c->frame_off) || !json_str(j, ",") ||
				     !json_num(j, (long long)c->frame_size)))
					goto nomem;
				if (!json_str(j, "]"))
					goto nomem;
			}
			if (!json_str(j, "]"))
				goto nomem;
		} else if (!json_str(j, "null")) {
			goto nomem;
		}
		if (!json_str(j, ","))
			goto nomem;
		if (e->kind == CK_SYMLINK || e->kind == CK_HARDLINK) {
			if (!json_bytes(j, e->link, e->link_len))
				goto nomem;
		} else if (!json_str(j, "null")) {
			goto nomem;
		}
		if (!json_str(j, ","))
			goto nomem;
		if (e->kind == CK_CHAR || e->kind == CK_BLOCK) {
			if (!json_str(j, "[") || !json_num(j, major(r->st.st_rdev)) || !json_str(j, ",") ||
			    !json_num(j, minor(r->st.st_rdev)) || !json_str(j, "]"))
				goto nomem;
		} else if (!json_str(j, "null")) {
			goto nomem;
		}
		if (!json_str(j, ","))
			goto nomem;
		if (e->nx > 0) {
			if (!json_str(j, "["))
				goto nomem;
			for (k = 0; k < e->nx; k++)
				if ((k > 0 && !json_str(j, ",")) || !json_str(j, "[") ||
				    !json_bytes(j, e->xnames[k], strlen(e->xnames[k])) || !json_str(j, ",") ||
				    !json_base64(j, e->xvals[k], e->xlens[k]) || !json_str(j, "]"))
					goto nomem;
			if (!json_str(j, "]"))
				goto nomem;
		} else if (!json_str(j, "null")) {
			goto nomem;
		}
		if (w->cap->upper) {
			/* The baseline's signature (src/capture/signature.ts): type:ino:size:mtime:ctime. */
			char sig[128];

			snprintf(sig, sizeof(sig), ",\"%c:%llu:%lld:%lld:%lld\"", e->kind == CK_DIR ? 'd' : t[0],
				 (unsigned long long)r->st.st_ino, (long long)r->st.st_size,
				 (long long)ns_of(&r->st.st_mtim), (long long)ns_of(&r->st.st_ctim));
			if (!json_str(j, sig))
				goto nomem;
		}
		if (!json_str(j, "]"))
			goto nomem;
	}
	if (!json_str(j, "]]"))
		goto nomem;
	for (i = 0; i < w->nrecs; i++)
		free(w->recs[i].chunks);
	w->nrecs = 0;
	return true;
nomem:
	fail_nomem(w->cap);
	return false;
}

/* The frames since the last "w" item, announced. */
static bool render_write(struct worker *w, size_t *announced)
{
	struct sbuf *j = &w->seg->json;
	size_t n = w->seg->data.len - *announced;

	if (n == 0)
		return true;
	if (!json_item(j, "[\"w\",") || !json_num(j, (long long)n) || !json_str(j, "]")) {
		fail_nomem(w->cap);
		return false;
	}
	*announced = w->seg->data.len;
	return true;
}

static bool json_path_item(struct worker *w, const char *kind, const struct cap_entry *e)
{
	struct sbuf *j = &w->seg->json;

	if (!json_item(j, "[\"") || !json_str(j, kind) || !json_str(j, "\",") ||
	    !json_bytes(j, e->path, e->path_len) || !json_str(j, "]")) {
		fail_nomem(w->cap);
		return false;
	}
	return true;
}

/* Hand the segment to the consumer; wait while too much is buffered. */
static bool publish(struct worker *w, struct cap_task *t, bool last)
{
	struct capture *cap = w->cap;
	struct cap_seg *s = w->seg;

	w->rel += s->data.len;
	w->seg = NULL;
	pthread_mutex_lock(&cap->mu);
	if (t->segs_tail != NULL)
		t->segs_tail->next = s;
	else
		t->segs = s;
	t->segs_tail = s;
	cap->buffered += s->data.len;
	t->buffered += s->data.len;
	if (last)
		t->done = true;
	pthread_cond_broadcast(&cap->cv);
	/*
	 * The oldest task waits only for its own bytes to be taken (the consumer
	 * takes nothing else), later ones while too much is waiting in all.
	 */
	while (!last && !cap->stop &&
	       (t == cap->head ? t->buffered > CAP_HEAD_MAX : cap->buffered > CAP_BUFFERED_MAX))
		pthread_cond_wait(&cap->cv, &cap->mu);
	pthread_mutex_unlock(&cap->mu);
	if (!last) {
		w->seg = calloc(1, sizeof(*w->seg));
		if (w->seg == NULL) {
			fail_nomem(cap);
			return false;
		}
	}
	return !stopped(cap);
}

static int64_t retry_delay(struct worker *w, int attempt)
{
	long base = 10L << (attempt - 2 < 5 ? attempt - 2 : 5);

	if (base > 200)
		base = 200;
	return (int64_t)(base * (0.5 + (double)rand_r(&w->seed) / RAND_MAX));
}

static int read_all(int fd, uint8_t *buf, size_t size, uint64_t off, size_t *got)
{
	*got = 0;
	while (*got < size) {
		ssize_t n = pread(fd, buf + *got, size - *got, (off_t)(off + *got));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno;
		if (n == 0)
			break;
		*got += (size_t)n;
	}
	return 0;
}

/*
 * Open a file to read by its whole path: entries keep no directory fd (a task
 * spans hundreds of directories), and the walker's lstat left every dentry
 * on the way in the cache. -1 with errno on failure.
 */
static int open_entry(struct capture *cap, const struct cap_entry *e)
{
	char *p = fs_path(cap, e->path, e->path_len);
	int fd, err;

	if (p == NULL) {
		errno = ENOMEM;
		return -1;
	}
	fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	err = errno;
	free(p);
	errno = err;
	return fd;
}

enum read_result { RD_OK, RD_GONE, RD_FALLBACK, RD_FAILED };

/*
 * Read a file of at most chunk bytes that holds still, into w->buf; *st gets
 * the fstat the capture records. Retries a file that moves, as tree.ts does.
 */
static enum read_result read_small_file(struct worker *w, const struct cap_entry *e,
					struct stat *st, size_t *size)
{
	struct capture *cap = w->cap;
	int64_t start = mono_ms();
	int attempt;

	for (attempt = 1;; attempt++) {
		struct stat after, again;
		int64_t t0;
		size_t got = 0;
		int fd, err;

		if (attempt > 1) {
			if (attempt > CAP_RETRIES && mono_ms() - start >= CAP_RETRY_MS) {
				pthread_mutex_lock(&cap->mu);
				if (cap->err_code[0] == '\0' && cap->err == 0) {
					cap->err_tries = attempt - 1;
					cap->err_ms = (long)(mono_ms() - start);
				}
				pthread_mutex_unlock(&cap->mu);
				fail(cap, 0, "ETORN", NULL, e->path, NULL);
				return RD_FAILED;
			}
			sleep_ms((long)retry_delay(w, attempt));
			if (stopped(cap))
				return RD_FAILED;
		}
		fd = open_entry(cap, e);
		if (fd < 0) {
			err = errno;
			if (err == ENOENT)
				return RD_GONE;
			fail_errno(cap, err, "open", e->path);
			return RD_FAILED;
		}
		t0 = now_ns();
		if (fstat(fd, st) != 0) {
			fail_errno(cap, errno, "fstat", e->path);
			close(fd);
			return RD_FAILED;
		}
		if (!S_ISREG(st->st_mode) || is_sparse(st) || (uint64_t)st->st_size > cap->chunk) {
			close(fd);
			return RD_FALLBACK; /* changed kind or size: the careful path */
		}
		*size = (size_t)st->st_size;
		err = read_all(fd, w->buf, *size, 0, &got);
		if (err == 0 && fstat(fd, &after) != 0)
			err = errno;
		if (err != 0) {
			fail_errno(cap, err, "read", e->path);
			close(fd);
			return RD_FAILED;
		}
		if (got != *size || !same_file(st, &after)) {
			close(fd);
			continue;
		}
		if (ns_of(&after.st_ctim) >= t0 - RACY_NS) {
			/* Changed just before the read: a second read must agree. */
			if (*size >= SETTLE_FROM)
				sleep_ms(SETTLE_MS);
			err = read_all(fd, w->buf2, *size, 0, &got);
			if (err == 0 && fstat(fd, &again) != 0)
				err = errno;
			if (err != 0) {
				fail_errno(cap, err, "read", e->path);
				close(fd);
				return RD_FAILED;
			}
			if (got != *size || memcmp(w->buf, w->buf2, *size) != 0 || !same_file(st, &again)) {
				close(fd);
				continue;
			}
		}
		close(fd);
		return RD_OK;
	}
}

/* Before an entry captured in JavaScript: nothing owed, everything announced. */
static bool before_fallback(struct worker *w, size_t *announced)
{
	return close_frame(w) && pad_frame(w) && render_write(w, announced) && render_recs(w);
}

static bool do_file(struct worker *w, const struct cap_entry *e, size_t *announced)
{
	struct capture *cap = w->cap;
	struct cap_rec *r;
	struct cap_chunk *c;
	struct stat st;
	size_t size = 0;

	switch (read_small_file(w, e, &st, &size)) {
	case RD_GONE:
		if (e->st.st_nlink > 1) {
			/* Later names may already be recorded as links to this one. */
			fail(cap, 0, "ELINKGONE", NULL, e->path, NULL);
			return false;
		}
		return true;
	case RD_FALLBACK:
		return before_fallback(w, announced) && json_path_item(w, "f", e);
	case RD_FAILED:
		return false;
	case RD_OK:
		break;
	}
	r = new_rec(w, e, &st);
	if (r == NULL || !sha256(w->buf, size, r->digest))
		return false;
	if (size > 0 && size <= cap->bound)
		r->has_digest = true;
	if (size == 0) {
		r->has_digest = true;
		if (!frame_header(w, r, 0))
			return false;
		return w->frame.len < cap->bound || close_frame(w);
	}
	if (!frame_header(w, r, size) || (c = add_chunk(w, r)) == NULL)
		return false;
	c->offset = 0;
	c->size = size;
	if (size <= cap->bound) {
		/* Shares the frame, right after its own header. */
		c->frame_off = (int64_t)w->frame.len;
		r->chunk_open = true;
		if (!sbuf_put(&w->frame, w->buf, size)) {
			fail_nomem(cap);
			return false;
		}
		w->pad = tar_pad(size);
		return w->frame.len < cap->bound || close_frame(w);
	}
	/* Its header closes the shared frame; its data is a frame of its own. */
	if (!close_frame(w) || !compress_into(w, w->buf, size, &c->blob_off, &c->blob_len))
		return false;
	memcpy(c->digest, r->digest, 32);
	r->has_digest = true;
	w->pad = tar_pad(size);
	return true;
}

static bool do_entry(struct worker *w, const struct cap_entry *e, size_t *announced)
{
	struct cap_rec *r;

	switch (e->kind) {
	case CK_FILE:
		return do_file(w, e, announced);
	case CK_FALLBACK:
		return before_fallback(w, announced) && json_path_item(w, "f", e);
	case CK_SOCKET:
		return json_path_item(w, "s", e);
	default:
		r = new_rec(w, e, &e->st);
		if (r == NULL || !frame_header(w, r, 0))
			return false;
		return w->frame.len < w->cap->bound || close_frame(w);
	}
}

static bool run_task(struct worker *w, struct cap_task *t)
{
	size_t announced = 0, i;

	for (i = 0; i < t->n; i++)
		if (!do_entry(w, &t->ents[i], &announced))
			return false;
	/* The last file's padding ends its frame (or is a frame when none is open). */
	if (w->frame.len > 0) {
		if (!sbuf_zeros(&w->frame, w->pad)) {
			fail_nomem(w->cap);
			return false;
		}
		w->pad = 0;
	}
	return close_frame(w) && pad_frame(w) && render_write(w, &announced) && render_recs(w) &&
	       publish(w, t, true);
}

/*
 * A file over chunkSize: its header frame and chunk frames go out as they are
 * made (after ["L"]), and are kept (["C"]) only if the file held still.
 */
static bool run_large(struct worker *w, struct cap_task *t)
{
	struct capture *cap = w->cap;
	const struct cap_entry *e = &t->ents[0];
	struct stat st, after;
	struct cap_rec *r;
	EVP_MD_CTX *md = NULL;
	uint64_t off = 0, size;
	size_t announced = 0;
	unsigned int mdlen = 0;
	bool torn = false, ok = false;
	int64_t t0;
	int fd, err;

	fd = open_entry(cap, e);
	if (fd < 0) {
		err = errno;
		if (err != ENOENT) {
			fail_errno(cap, err, "open", e->path);
			return false;
		}
		if (e->st.st_nlink > 1) {
			fail(cap, 0, "ELINKGONE", NULL, e->path, NULL);
			return false;
		}
		return publish(w, t, true);
	}
	t0 = now_ns();
	if (fstat(fd, &st) != 0) {
		fail_errno(cap, errno, "fstat", e->path);
		close(fd);
		return false;
	}
	if (!S_ISREG(st.st_mode) || is_sparse(&st)) {
		close(fd);
		return json_path_item(w, "f", e) && publish(w, t, true);
	}
	size = (uint64_t)st.st_size;
	if (!json_item(&w->seg->json, "[\"L\"]")) {
		fail_nomem(cap);
		goto out;
	}
	r = new_rec(w, e, &st);
	md = EVP_MD_CTX_new();
	if (r == NULL || md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		if (md == NULL)
			fail_nomem(cap);
		goto out;
	}
	if (!frame_header(w, r, size) || !close_frame(w))
		goto out;
	while (off < size) {
		size_t want = size - off < cap->chunk ? (size_t)(size - off) : cap->chunk, got = 0;
		struct cap_chunk *c;

		err = read_all(fd, w->buf, want, off, &got);
		if (err != 0) {
			fail_errno(cap, err, "read", e->path);
			goto out;
		}
		if (got != want) {
			torn = true;
			break;
		}
		r = &w->recs[0];
		if ((c = add_chunk(w, r)) == NULL || EVP_DigestUpdate(md, w->buf, got) != 1 ||
		    !sha256(w->buf, got, c->digest) || !compress_into(w, w->buf, got, &c->blob_off, &c->blob_len))
			goto out;
		c->offset = off;
		c->size = got;
		off += got;
		if (!render_write(w, &announced) || !publish(w, t, false))
			goto out;
		announced = 0;
	}
	if (!torn) {
		if (fstat(fd, &after) != 0) {
			fail_errno(cap, errno, "fstat", e->path);
			goto out;
		}
		/* Changed during the read, or just before it: JavaScript reads it carefully. */
		torn = !same_file(&st, &after) || ns_of(&after.st_ctim) >= t0 - RACY_NS;
	}
	r = &w->recs[0];
	if (torn) {
		for (size_t i = 0; i < w->nrecs; i++)
			free(w->recs[i].chunks);
		w->nrecs = 0;
		w->seg->data.len = 0; /* unannounced: never written */
		w->seg->torn = true;
		ok = json_path_item(w, "x", e) && publish(w, t, true);
		goto out;
	}
	if (EVP_DigestFinal_ex(md, r->digest, &mdlen) != 1 || mdlen != 32)
		goto out;
	r->has_digest = true;
	w->pad = tar_pad(size);
	ok = pad_frame(w) && render_write(w, &announced) && render_recs(w) &&
	     json_item(&w->seg->json, "[\"C\"]") && publish(w, t, true);
out:
	EVP_MD_CTX_free(md);
	close(fd);
	return ok;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct capture *cap = w->cap;

	for (;;) {
		struct cap_task *t;
		bool ok;

		pthread_mutex_lock(&cap->mu);
		while (cap->todo == NULL && !cap->walk_done && !cap->stop)
			pthread_cond_wait(&cap->cv, &cap->mu);
		t = cap->stop ? NULL : cap->todo;
		if (t != NULL)
			cap->todo = t->next;
		pthread_mutex_unlock(&cap->mu);
		if (t == NULL)
			break;
		w->seg = calloc(1, sizeof(*w->seg));
		w->rel = 0;
		w->pad = 0;
		w->frame.len = 0;
		w->nrecs = 0;
		if (w->seg == NULL) {
			fail_nomem(cap);
			break;
		}
		ok = t->ents[0].kind == CK_LARGE && t->n == 1 ? run_large(w, t) : run_task(w, t);
		for (size_t i = 0; i < w->nrecs; i++)
			free(w->recs[i].chunks);
		w->nrecs = 0;
		if (w->seg != NULL) {
			seg_free(w->seg);
			w->seg = NULL;
		}
		if (!ok) {
			fail(cap, 0, "ESTOP", NULL, NULL, "stopped"); /* no-op if a reason is set */
			break;
		}
	}
	return NULL;
}

/* ------------------------------------------------------------------ */
/* N-API                                                               */
/* ------------------------------------------------------------------ */

struct cap_handle {
	struct capture *cap;
	struct worker workers[CAP_WORKERS_MAX];
	bool stopped;
	bool busy; /* a captureNext is running */
};

static void capture_free(struct cap_handle *h)
{
	struct capture *cap = h->cap;
	struct cap_task *t, *n;
	int i;

	if (cap == NULL)
		return;
	pthread_mutex_lock(&cap->mu);
	cap->stop = true;
	pthread_cond_broadcast(&cap->cv);
	pthread_mutex_unlock(&cap->mu);
	if (cap->walker_started)
		pthread_join(cap->walker, NULL);
	for (i = 0; i < cap->workers_started; i++)
		pthread_join(cap->workers[i], NULL);
	for (i = 0; i < cap->nworkers; i++) {
		ZSTD_freeCCtx(h->workers[i].cctx);
		sbuf_free(&h->workers[i].frame);
		free(h->workers[i].recs);
		free(h->workers[i].buf);
		free(h->workers[i].buf2);
	}
	if (cap->building != NULL)
		task_free(cap->building);
	for (t = cap->head; t != NULL; t = n) {
		n = t->next;
		task_free(t);
	}
	for (size_t k = 0; k < cap->links_cap; k++)
		free(cap->links[k].path);
	free(cap->links);
	free(cap->err_path);
	free(cap->root);
	free(cap->start);
	pthread_mutex_destroy(&cap->mu);
	pthread_cond_destroy(&cap->cv);
	free(cap);
	h->cap = NULL;
}

static void handle_finalize(napi_env env, void *data, void *hint)
{
	(void)env;
	(void)hint;
	capture_free(data);
	free(data);
}

static bool get_handle(napi_env env, napi_value v, struct cap_handle **out)
{
	void *p = NULL;

	if (napi_failed(env, napi_get_value_external(env, v, &p)))
		return false;
	*out = p;
	if (*out == NULL || (*out)->cap == NULL) {
		throw_fmt(env, THROW_ERROR, "ESTOPPED", "the capture was stopped");
		return false;
	}
	return true;
}

/* captureStart(root: Buffer, level, frameBound, chunkSize, workers): handle */
napi_value js_capture_start(napi_env env, napi_callback_info info)
{
	napi_value argv[7], out;
	struct cap_handle *h;
	struct capture *cap;
	int64_t level, bound, chunk, nworkers;
	char *root, *start = NULL;
	napi_valuetype st;
	bool upper = false;
	int i;

	if (!get_args(env, info, 7, argv))
		return NULL;
	root = get_path(env, argv[0], "root");
	if (root == NULL)
		return NULL;
	if (!get_int(env, argv[1], "level", -7, 22, &level) ||
	    !get_int(env, argv[2], "frameBound", 1, 4 << 20, &bound) ||
	    !get_int(env, argv[3], "chunkSize", 4096, 64 << 20, &chunk) ||
	    !get_int(env, argv[4], "workers", 1, CAP_WORKERS_MAX, &nworkers) ||
	    napi_failed(env, napi_typeof(env, argv[5], &st)) ||
	    (st != napi_null && (start = get_path(env, argv[5], "start")) == NULL) ||
	    napi_failed(env, napi_get_value_bool(env, argv[6], &upper))) {
		free(root);
		return NULL;
	}
	/* A layer path below root: relative, no empty, '.' or '..' component. */
	if (start != NULL) {
		bool ok = start[0] != '\0' && start[0] != '/';
		for (const char *c = start; ok && *c != '\0';) {
			size_t n = strcspn(c, "/");
			ok = n > 0 && !(n == 1 && c[0] == '.') && !(n == 2 && c[0] == '.' && c[1] == '.');
			c += n;
			if (*c == '/')
				c++, ok = ok && *c != '\0';
		}
		if (!ok) {
			free(root);
			free(start);
			throw_fmt(env, THROW_TYPE, "EINVAL", "start must be a relative layer path below root");
			return NULL;
		}
	}
	h = calloc(1, sizeof(*h));
	cap = calloc(1, sizeof(*cap));
	if (h == NULL || cap == NULL) {
		free(h);
		free(cap);
		free(root);
		free(start);
		throw_fmt(env, THROW_ERROR, "ENOMEM", "out of memory starting a capture");
		return NULL;
	}
	h->cap = cap;
	cap->root = root;
	cap->root_len = strlen(root);
	cap->start = start;
	cap->upper = upper;
	cap->level = (int)level;
	cap->bound = (size_t)bound;
	cap->chunk = (size_t)chunk;
	cap->nworkers = (int)nworkers;
	pthread_mutex_init(&cap->mu, NULL);
	pthread_cond_init(&cap->cv, NULL);
	for (i = 0; i < cap->nworkers; i++) {
		struct worker *w = &h->workers[i];
		size_t r;

		w->cap = cap;
		w->seed = (unsigned int)(now_ns() ^ (i * 7919));
		w->cctx = ZSTD_createCCtx();
		w->buf = malloc(cap->chunk);
		w->buf2 = malloc(cap->chunk);
		if (w->cctx == NULL || w->buf == NULL || w->buf2 == NULL) {
			cap->nworkers = i + 1;
			capture_free(h);
			free(h);
			throw_fmt(env, THROW_ERROR, "ENOMEM", "out of memory starting a capture");
			return NULL;
		}
		/* One frame each, content size in the header, no checksum (we sha256): as codec.c. */
		r = ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, cap->level);
		if (!ZSTD_isError(r))
			r = ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_contentSizeFlag, 1);
		if (!ZSTD_isError(r))
			r = ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 0);
		if (ZSTD_isError(r)) {
			cap->nworkers = i + 1;
			capture_free(h);
			free(h);
			throw_fmt(env, THROW_ERROR, "ECOMPRESS", "zstd: %s", ZSTD_getErrorName(r));
			return NULL;
		}
	}
	if (pthread_create(&cap->walker, NULL, walker_main, cap) != 0) {
		capture_free(h);
		free(h);
		throw_fmt(env, THROW_ERROR, "EAGAIN", "could not start the capture's walker thread");
		return NULL;
	}
	cap->walker_started = true;
	for (i = 0; i < cap->nworkers; i++) {
		if (pthread_create(&cap->workers[i], NULL, worker_main, &h->workers[i]) != 0)
			break;
		cap->workers_started++;
	}
	if (cap->workers_started == 0) {
		capture_free(h);
		free(h);
		throw_fmt(env, THROW_ERROR, "EAGAIN", "could not start the capture's worker threads");
		return NULL;
	}
	if (napi_failed(env, napi_create_external(env, h, handle_finalize, NULL, &out))) {
		capture_free(h);
		free(h);
		return NULL;
	}
	return out;
}

struct next_job {
	napi_async_work work;
	napi_deferred deferred;
	napi_ref handle_ref;
	struct cap_handle *h;
	struct sbuf data, json;
	bool end;
	bool failed;
};

/* Runs on a threadpool thread: the next finished tasks, in order. */
static void next_execute(napi_env env, void *data)
{
	struct next_job *job = data;
	struct capture *cap = job->h->cap;
	bool ok = true;

	(void)env;
	ok = sbuf_put(&job->json, "[", 1);
	pthread_mutex_lock(&cap->mu);
	while (ok) {
		struct cap_task *t = cap->head;

		if (cap->err != 0 || cap->err_code[0] != '\0') {
			job->failed = true;
			break;
		}
		if (t == NULL) {
			if (cap->walk_done && cap->building == NULL) {
				job->end = job->data.len == 0 && job->json.len == 1;
				break;
			}
			if (job->data.len > 0 || job->json.len > 1)
				break;
			pthread_cond_wait(&cap->cv, &cap->mu);
			continue;
		}
		if (!t->started) {
			char item[48];
			int n;

			t->started = true;
			t->base = cap->E;
			n = snprintf(item, sizeof(item), "%s[\"t\",%llu]", job->json.len > 1 ? "," : "",
				     (unsigned long long)cap->E);
			ok = sbuf_put(&job->json, item, (size_t)n);
			continue;
		}
		if (t->segs != NULL) {
			struct cap_seg *s = t->segs;

			t->segs = s->next;
			if (t->segs == NULL)
				t->segs_tail = NULL;
			pthread_mutex_unlock(&cap->mu);
			ok = sbuf_put(&job->data, s->data.p, s->data.len) &&
			     (s->json.len == 0 || ((job->json.len == 1 || sbuf_put(&job->json, ",", 1)) &&
						   sbuf_put(&job->json, s->json.p, s->json.len)));
			pthread_mutex_lock(&cap->mu);
			cap->E = s->torn ? t->base : cap->E + s->data.len;
			cap->buffered -= s->data.len;
			t->buffered -= s->data.len;
			pthread_cond_broadcast(&cap->cv);
			seg_free(s);
			if (job->data.len >= CAP_BATCH_BYTES)
				break;
			continue;
		}
		if (t->done) {
			cap->head = t->next;
			if (cap->head == NULL)
				cap->tail = NULL;
			cap->ntasks--;
			pthread_cond_broadcast(&cap->cv);
			pthread_mutex_unlock(&cap->mu);
			task_free(t);
			pthread_mutex_lock(&cap->mu);
			continue;
		}
		if (job->data.len > 0 || job->json.len > 1)
			break;
		pthread_cond_wait(&cap->cv, &cap->mu);
	}
	pthread_mutex_unlock(&cap->mu);
	if (ok)
		ok = sbuf_put(&job->json, "]", 1);
	if (!ok && !job->failed) {
		fail_nomem(cap);
		job->failed = true;
	}
}

static napi_status next_error(napi_env env, struct capture *cap, napi_value *out)
{
	napi_status st;
	napi_value v;

	if (strcmp(cap->err_code, "ETORN") == 0 || strcmp(cap->err_code, "ELINKGONE") == 0) {
		st = make_error(env, cap->err_code, cap->err_code, out);
		if (st == napi_ok && cap->err_path != NULL)
			st = napi_create_string_latin1(env, cap->err_path, NAPI_AUTO_LENGTH, &v);
		if (st == napi_ok && cap->err_path != NULL)
			st = napi_set_named_property(env, *out, "layerPath", v);
		if (st == napi_ok)
			st = napi_create_int32(env, cap->err_tries, &v);
		if (st == napi_ok)
			st = napi_set_named_property(env, *out, "tries", v);
		if (st == napi_ok)
			st = napi_create_int64(env, cap->err_ms, &v);
		if (st == napi_ok)
			st = napi_set_named_property(env, *out, "ms", v);
		return st;
	}
	if (cap->err != 0 && cap->err_code[0] == '\0') {
		char *p = cap->err_path ? fs_path(cap, cap->err_path, strlen(cap->err_path)) : NULL;

		st = errno_value(env, cap->err, cap->err_syscall[0] ? cap->err_syscall : "capture",
				 p ? p : cap->root, out);
		free(p);
		return st;
	}
	return make_error(env, cap->err_code[0] ? cap->err_code : "EIO",
			  cap->err_msg[0] ? cap->err_msg : "capture failed", out);
}

static void free_sbuf_cb(napi_env env, void *data, void *hint)
{
	(void)env;
	(void)hint;
	free(data);
}

static void next_complete(napi_env env, napi_status status, void *data)
{
	struct next_job *job = data;
	struct capture *cap = job->h->cap;
	napi_value result = NULL, v;
	napi_status st = status;
	bool ok = !job->failed;

	job->h->busy = false;
	if (st == napi_ok && !ok)
		st = next_error(env, cap, &result);
	else if (st == napi_ok && job->end)
		st = napi_get_null(env, &result);
	else if (st == napi_ok) {
		st = napi_create_object(env, &result);
		if (st == napi_ok) {
			if (job->data.len == 0)
				st = napi_create_buffer(env, 0, NULL, &v);
			else
				st = napi_create_external_buffer(env, job->data.len, job->data.p,
								 free_sbuf_cb, NULL, &v);
			if (st == napi_ok) {
				if (job->data.len > 0)
					job->data.p = NULL;
				st = napi_set_named_property(env, result, "data", v);
			}
		}
		if (st == napi_ok)
			st = napi_create_string_latin1(env, (const char *)job->json.p, job->json.len, &v);
		if (st == napi_ok)
			st = napi_set_named_property(env, result, "meta", v);
	}
	settle_work(env, job->deferred, st, ok, result, "captureNext: could not settle its promise");
	sbuf_free(&job->data);
	sbuf_free(&job->json);
	napi_delete_reference(env, job->handle_ref);
	napi_delete_async_work(env, job->work);
	free(job);
}

/* captureNext(handle): Promise<{ data, meta } | null> */
napi_value js_capture_next(napi_env env, napi_callback_info info)
{
	napi_value argv[1], promise;
	struct cap_handle *h;
	struct next_job *job;
	bool queued;

	if (!get_args(env, info, 1, argv) || !get_handle(env, argv[0], &h))
		return NULL;
	if (h->busy) {
		throw_fmt(env, THROW_ERROR, "EBUSY", "captureNext is already running on this capture");
		return NULL;
	}
	job = calloc(1, sizeof(*job));
	if (job == NULL) {
		throw_fmt(env, THROW_ERROR, "ENOMEM", "out of memory");
		return NULL;
	}
	job->h = h;
	if (napi_failed(env, napi_create_reference(env, argv[0], 1, &job->handle_ref))) {
		free(job);
		return NULL;
	}
	promise = queue_work(env, "strata:captureNext", next_execute, next_complete, job,
			     &job->work, &job->deferred, &queued);
	if (!queued) {
		napi_delete_reference(env, job->handle_ref);
		free(job);
		return promise;
	}
	h->busy = true;
	return promise;
}

/* captureStop(handle): stop the threads and free the capture (idempotent). */
napi_value js_capture_stop(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct cap_handle *h = NULL;
	void *p = NULL;

	if (!get_args(env, info, 1, argv) ||
	    napi_failed(env, napi_get_value_external(env, argv[0], &p)))
		return NULL;
	h = p;
	if (h != NULL && h->busy) {
		throw_fmt(env, THROW_ERROR, "EBUSY", "captureStop while captureNext runs: await it first");
		return NULL;
	}
	if (h != NULL)
		capture_free(h);
	return NULL;
}
