/*
 * strata-fuse: a read-only FUSE view of a backup's merged layers.
 *
 *   strata-fuse --index FILE --cache DIR --socket PATH [--timeout-ms N]
 *               [--threads N] [--spin-us N] [--ready-fd FD] [--foreground]
 *               [--die-with-parent] [--debug] MOUNTPOINT   (usage() lists all)
 *   strata-fuse --print-layout
 *
 * Metadata comes from the mmapped index (sx_index.c), file data from the
 * host-wide frame cache (CACHE/ab/abcdef..., named by the sha256 of a
 * frame's uncompressed content; a file's chunk is a range of one frame). Only a cache miss involves the TypeScript fetcher, over a
 * unix socket (sx_fetch.c); a read waiting for it blocks its own worker thread
 * and nothing else. Layers are immutable, so every reply may be cached by the
 * kernel for a long time.
 */
#define FUSE_USE_VERSION 312 /* 3.12 for fuse_loop_cfg_set_max_threads: 3.14 otherwise caps workers at 10 */

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>

#include "sx_awake.h"
#include "sx_fetch.h"
#include "sx_frames.h"
#include "sx_http.h"
#include "sx_index.h"

#define SX_TTL 86400.0          /* seconds the kernel may cache entries and attributes */
#define SX_FETCH_ROUNDS 3       /* a frame evicted between fetch and open is asked for again */
#define SX_TOUCH_INTERVAL 60    /* seconds between LRU touches of one frame */
#define SX_FD_DIRECT (-2)       /* open_chunks: this chunk's layer is read directly (sx_frames) */
#define SX_MAX_BLOBS 1024

struct sx_ctx {
	struct sx_index idx;
	int cache_fd;               /* the cache directory */
	struct sx_fetch *fetch;
	struct sx_frames *frames;   /* layers read straight from local blobs or fetched here; others go to the fetcher */
	struct sx_http *http;
	const char *sources;        /* --sources FILE: remote layers and their URLs, re-read to renew them */
	pthread_mutex_t sources_lock;
	_Atomic uint32_t *touched;  /* per digest (cache entry): monotonic second of its last touch, 0 = never */
	atomic_bool noatime;        /* O_NOATIME still allowed (it needs ownership or CAP_FOWNER) */
	atomic_bool no_open;        /* the kernel can skip OPEN/RELEASE (FUSE_CAP_NO_OPEN_SUPPORT) */
	atomic_bool no_opendir;     /* ... and OPENDIR/RELEASEDIR */
	bool debug;
	const char *index_out;      /* --index-out: where a paged index is written whole once loaded */
	atomic_bool loader_done;    /* the paged index's background loader has returned */
	struct sx_awake *awake;     /* spinners through a burst of requests (--spin-us), or NULL */
};

/* Every operation starts here: it also tells the spinners a request is being served. */
static struct sx_ctx *ctx_of(fuse_req_t req)
{
	struct sx_ctx *c = fuse_req_userdata(req);
	sx_awake_poke(c->awake);
	return c;
}

/*
 * The node a request names, validated (a paged index loads its pages first);
 * NULL once the request is answered with the error.
 */
static const struct sx_node *get_node(struct sx_ctx *c, fuse_req_t req, fuse_ino_t ino)
{
	const struct sx_node *n;
	char why[256];
	int rc = sx_index_get(&c->idx, ino, &n, why, sizeof(why));
	if (rc == 0)
		return n;
	if (rc == -EIO)
		fprintf(stderr, "strata-fuse: inode %llu: %s\n", (unsigned long long)ino, why);
	fuse_reply_err(req, -rc);
	return NULL;
}

static void fill_stat(const struct sx_ctx *c, fuse_ino_t ino, const struct sx_node *n, struct stat *st)
{
	(void)c;
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = n->mode;
	st->st_nlink = n->nlink;
	st->st_uid = n->uid;
	st->st_gid = n->gid;
	st->st_size = (off_t)n->size;
	st->st_blocks = (blkcnt_t)n->blocks;
	st->st_blksize = 65536; /* larger I/O per syscall means fewer FUSE round trips */
	st->st_mtim.tv_sec = n->mtime_sec;
	st->st_mtim.tv_nsec = n->mtime_nsec;
	st->st_atim = st->st_mtim;
	st->st_ctim = st->st_mtim;
	st->st_rdev = makedev(n->rdev_major, n->rdev_minor);
}

static void fill_entry(const struct sx_ctx *c, uint32_t ino, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = ino;
	e->generation = 1;
	e->attr_timeout = SX_TTL;
	e->entry_timeout = SX_TTL;
	fill_stat(c, ino, sx_index_node(&c->idx, ino), &e->attr);
}

static void sx_init(void *userdata, struct fuse_conn_info *conn)
{
	struct sx_ctx *c = userdata;
	/*
	 * Opens carry no state here, so let the kernel stop sending them: answering ENOSYS
	 * once makes it open every file with FOPEN_KEEP_CACHE (and directories with
	 * FOPEN_CACHE_DIR) by itself, saving two round trips per open of a cached file.
	 */
	atomic_store(&c->no_open, (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) != 0);
	atomic_store(&c->no_opendir, (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0);
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	/* Content never changes: no need to drop the page cache when mtimes are re-read. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* Readahead requests are "background": let many wait on misses at once. */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
}

static void sx_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *dir = get_node(c, req, parent);
	if (!dir)
		return;
	if ((dir->mode & S_IFMT) != S_IFDIR) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	struct fuse_entry_param e;
	uint32_t ino = sx_index_lookup(&c->idx, dir, name, strlen(name));
	if (ino == 0) {
		/* ino 0 with a timeout: the kernel caches the miss, as the view never changes. */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = SX_TTL;
		fuse_reply_entry(req, &e);
		return;
	}
	fill_entry(c, ino, &e);
	fuse_reply_entry(req, &e);
}

/* Inodes are static and live as long as the index: nothing to release. */
static void sx_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	(void)ino;
	(void)nlookup;
	fuse_reply_none(req);
}

static void sx_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	(void)count;
	(void)forgets;
	fuse_reply_none(req);
}

static void sx_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *n = get_node(c, req, ino);
	if (!n)
		return;
	struct stat st;
	fill_stat(c, ino, n, &st);
	fuse_reply_attr(req, &st, SX_TTL);
}

static void sx_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *n = get_node(c, req, ino);
	if (!n)
		return;
	if ((n->mode & S_IFMT) != S_IFLNK) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	fuse_reply_readlink(req, sx_index_str(&c->idx, n->target_off));
}

static void sx_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *n = get_node(c, req, ino);
	if (!n)
		return;
	if ((n->mode & S_IFMT) != S_IFDIR) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (atomic_load(&c->no_opendir)) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	fi->fh = 0;
	fi->cache_readdir = 1; /* listings never change */
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

/*
 * Directory offsets: 0 starts, entry k (0 = ".", 1 = "..", 2.. = dirents) has
 * next-offset k + 1, so a listing resumes anywhere without per-handle state.
 */
static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *dir = get_node(c, req, ino);
	if (!dir)
		return;
	if ((dir->mode & S_IFMT) != S_IFDIR) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t pos = 0;
	uint64_t total = (uint64_t)dir->count + 2;
	for (uint64_t k = (uint64_t)off; k < total; k++) {
		const char *name;
		uint32_t child;
		if (k == 0) {
			name = ".";
			child = (uint32_t)ino;
		} else if (k == 1) {
			name = "..";
			child = dir->parent;
		} else {
			const struct sx_dirent *d = &c->idx.dirents[dir->first + (k - 2)];
			name = sx_index_str(&c->idx, d->name_off);
			child = d->ino;
		}
		size_t n;
		if (plus) {
			struct fuse_entry_param e;
			fill_entry(c, child, &e);
			n = fuse_add_direntry_plus(req, buf + pos, size - pos, name, &e, (off_t)(k + 1));
		} else {
			struct stat st;
			fill_stat(c, child, sx_index_node(&c->idx, child), &st);
			n = fuse_add_direntry(req, buf + pos, size - pos, name, &st, (off_t)(k + 1));
		}
		if (n > size - pos)
			break;
		pos += n;
	}
	fuse_reply_buf(req, buf, pos);
	free(buf);
}

static void sx_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, false);
}

static void sx_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, true);
}

static void sx_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void sx_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *n = get_node(c, req, ino);
	if (!n)
		return;
	if ((n->mode & S_IFMT) == S_IFDIR) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (atomic_load(&c->no_open)) {
		fuse_reply_err(req, ENOSYS); /* see sx_init; the kernel treats it as success */
		return;
	}
	fi->fh = 0;
	fi->keep_cache = 1; /* the page cache stays valid across opens: data never changes */
	fi->direct_io = 0;
	fi->noflush = 1;    /* nothing to flush on close: skip that round trip */
	fuse_reply_open(req, fi);
}

static void hex32(const uint8_t d[32], char out[65])
{
	static const char digits[] = "0123456789abcdef";
	for (int i = 0; i < 32; i++) {
		out[2 * i] = digits[d[i] >> 4];
		out[2 * i + 1] = digits[d[i] & 15];
	}
	out[64] = '\0';
}

/* Open the cache file of a chunk's frame; -1 with errno set (ENOENT = not cached). */
static int open_chunk(struct sx_ctx *c, const struct sx_chunk *ch)
{
	char name[3 + 65];
	hex32(c->idx.digests[ch->digest].digest, name + 3);
	name[0] = name[3];
	name[1] = name[4];
	name[2] = '/';
	if (atomic_load_explicit(&c->noatime, memory_order_relaxed)) {
		/* The LRU is kept by touch messages, so atime updates are pure cost. */
		int fd = openat(c->cache_fd, name, O_RDONLY | O_CLOEXEC | O_NOATIME);
		if (fd >= 0 || errno != EPERM)
			return fd;
		atomic_store(&c->noatime, false);
	}
	return openat(c->cache_fd, name, O_RDONLY | O_CLOEXEC);
}

static void chunk_ref(const struct sx_ctx *c, const struct sx_chunk *ch, struct sx_chunk_ref *r)
{
	memcpy(r->layer, c->idx.layers[ch->layer].digest, 32);
	memcpy(r->digest, c->idx.digests[ch->digest].digest, 32);
	r->blob_off = ch->blob_off;
	r->blob_len = ch->blob_len;
	r->size = ch->frame_size; /* the fetcher caches whole frames */
}

static uint32_t now_sec(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint32_t)t.tv_sec + 1; /* never 0, which means "never touched" */
}

static void maybe_touch(struct sx_ctx *c, uint32_t ci)
{
	/* Rate-limited per frame: chunks of files sharing one frame share one cache entry. */
	_Atomic uint32_t *t = &c->touched[c->idx.chunks[ci].digest];
	uint32_t now = now_sec();
	uint32_t last = atomic_load_explicit(t, memory_order_relaxed);
	if (last != 0 && now - last < SX_TOUCH_INTERVAL)
		return;
	if (!atomic_compare_exchange_strong(t, &last, now))
		return; /* another thread is touching it */
	struct sx_chunk_ref r;
	chunk_ref(c, &c->idx.chunks[ci], &r);
	sx_fetch_touch(c->fetch, &r);
}

static void log_failure(const struct sx_ctx *c, fuse_ino_t ino, const struct sx_chunk *ch, const char *why)
{
	char d[65], l[65];
	hex32(c->idx.digests[ch->digest].digest, d);
	hex32(c->idx.layers[ch->layer].digest, l);
	fprintf(stderr,
		"strata-fuse: read of inode %lu: frame sha256:%s (%u bytes, file bytes at %u+%u; layer sha256:%s bytes "
		"%llu+%u): %s\n",
		(unsigned long)ino, d, ch->frame_size, ch->frame_off, ch->size, l, (unsigned long long)ch->blob_off,
		ch->blob_len, why);
}

/*
 * Open every chunk overlapping the read, asking the fetcher for the missing
 * ones in one message per round. fds[i] >= 0 for all on success, else -errno.
 */
static int open_chunks(struct sx_ctx *c, fuse_ino_t ino, uint32_t first, uint32_t n, int *fds, struct sx_chunk_ref *refs,
		       uint32_t *miss)
{
	for (int round = 0;; round++) {
		uint32_t nmiss = 0;
		for (uint32_t i = 0; i < n; i++) {
			if (fds[i] >= 0 || fds[i] == SX_FD_DIRECT)
				continue;
			const struct sx_chunk *ch = &c->idx.chunks[first + i];
			fds[i] = open_chunk(c, ch);
			if (fds[i] >= 0) {
				if (round == 0)
					maybe_touch(c, first + i);
				continue;
			}
			if (errno != ENOENT) {
				int e = errno;
				log_failure(c, ino, ch, strerror(e));
				return -EIO;
			}
			/* Consecutive chunks of one frame: ask for it once. */
			if (nmiss > 0 && c->idx.chunks[miss[nmiss - 1]].digest == ch->digest)
				continue;
			chunk_ref(c, ch, &refs[nmiss]);
			miss[nmiss++] = first + i;
		}
		if (nmiss == 0)
			return 0;
		const struct sx_chunk *ch0 = &c->idx.chunks[miss[0]];
		if (round >= SX_FETCH_ROUNDS) {
			log_failure(c, ino, ch0, "still missing from the cache after it was fetched (cache too small?)");
			return -EIO;
		}
		int rc = 0;
		/* One message per SX_MSG_MAX_REFS: only a read over very many tiny chunks needs several. */
		for (uint32_t k = 0; k < nmiss && rc == 0; k += SX_MSG_MAX_REFS)
			rc = sx_fetch_request(c->fetch, refs + k, nmiss - k < SX_MSG_MAX_REFS ? nmiss - k : SX_MSG_MAX_REFS);
		if (rc == -ENOTCONN) {
			log_failure(c, ino, ch0, "not cached and no fetcher is listening");
			return -EIO;
		}
		if (rc == -ETIMEDOUT) {
			log_failure(c, ino, ch0, "the fetcher did not answer in time");
			return -EIO;
		}
		if (rc < 0) {
			if (c->debug)
				log_failure(c, ino, ch0, "the fetcher could not provide it");
			return -EIO;
		}
	}
}

/*
 * Copy len bytes of chunk ci, from offset `at` in the chunk, out of its frame
 * read straight from the local layer blob (verified there). The first read of
 * a frame is reported to the fetcher (the access record), as hits are.
 */
static int direct_copy(struct sx_ctx *c, fuse_ino_t ino, uint32_t ci, char *dst, uint64_t at, size_t len)
{
	const struct sx_chunk *ch = &c->idx.chunks[ci];
	const struct sx_frame *fr;
	char why[256];
	if (sx_frames_get(c->frames, ci, &fr, why, sizeof(why)) < 0) {
		log_failure(c, ino, ch, why);
		return -1;
	}
	int rc = 0;
	/* One frame, several chunk records: each must fit the frame actually loaded. */
	if ((uint64_t)ch->frame_off + at + len > fr->size) {
		log_failure(c, ino, ch, "the chunk lies past the end of its frame (the index disagrees with itself)");
		rc = -1;
	} else
		memcpy(dst, fr->data + ch->frame_off + at, len);
	sx_frames_put(c->frames, fr);
	maybe_touch(c, ci);
	return rc;
}

static void sx_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *n = get_node(c, req, ino);
	if (!n)
		return;
	if ((n->mode & S_IFMT) != S_IFREG) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	uint64_t start = (uint64_t)off;
	if (start >= n->size || size == 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	uint64_t end = n->size - start < size ? n->size : start + size;
	size_t len = (size_t)(end - start);

	uint32_t first = sx_index_chunk_at(&c->idx, n, start);
	uint32_t last = first; /* one past the last chunk that starts before end */
	while (last < n->first + n->count && c->idx.chunks[last].file_off < end)
		last++;
	uint32_t nch = last - first;

	char *buf = malloc(len);
	int *fds = nch ? malloc(nch * sizeof(*fds)) : NULL;
	struct sx_chunk_ref *refs = nch ? malloc(nch * sizeof(*refs)) : NULL;
	uint32_t *miss = nch ? malloc(nch * sizeof(*miss)) : NULL;
	int err = 0;
	if (!buf || (nch && (!fds || !refs || !miss))) {
		err = ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < nch; i++)
		fds[i] = sx_frames_direct(c->frames, c->idx.chunks[first + i].layer) ? SX_FD_DIRECT : -1;
	int rc = open_chunks(c, ino, first, nch, fds, refs, miss);
	if (rc < 0) {
		err = -rc;
		goto out;
	}
	/* Holes read as zeros: fill the gaps between chunks as we go. */
	uint64_t pos = start;
	for (uint32_t i = 0; i < nch; i++) {
		const struct sx_chunk *ch = &c->idx.chunks[first + i];
		uint64_t cs = ch->file_off > start ? ch->file_off : start;
		uint64_t ce = ch->file_off + ch->size < end ? ch->file_off + ch->size : end;
		if (cs > pos)
			memset(buf + (pos - start), 0, (size_t)(cs - pos));
		size_t want = (size_t)(ce - cs);
		size_t got = 0;
		if (fds[i] == SX_FD_DIRECT) {
			if (direct_copy(c, ino, first + i, buf + (cs - start), cs - ch->file_off, want) < 0) {
				err = EIO;
				goto out;
			}
			got = want;
		}
		while (got < want) {
			/* The cache file is the whole frame; this file's bytes start at frame_off. */
			ssize_t r = pread(fds[i], buf + (cs - start) + got, want - got,
					  (off_t)(cs - ch->file_off + ch->frame_off + got));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				/* Cache files are written whole and renamed: short means damaged. */
				log_failure(c, ino, ch, r < 0 ? strerror(errno) : "cache file is shorter than the frame");
				err = EIO;
				goto out;
			}
			got += (size_t)r;
		}
		pos = ce;
	}
	if (pos < end)
		memset(buf + (pos - start), 0, (size_t)(end - pos));
out:
	for (uint32_t i = 0; fds && i < nch; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, len);
	free(buf);
	free(fds);
	free(refs);
	free(miss);
}

/* SEEK_DATA / SEEK_HOLE from the chunk map, so sparse files stay sparse to cp, tar and rsync. */
static void sx_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
	(void)fi;
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *n = get_node(c, req, ino);
	if (!n)
		return;
	if ((n->mode & S_IFMT) != S_IFREG) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (off < 0 || (whence != SEEK_DATA && whence != SEEK_HOLE)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	uint64_t o = (uint64_t)off;
	if (o >= n->size) {
		fuse_reply_err(req, ENXIO);
		return;
	}
	uint32_t end = n->first + n->count;
	uint32_t i = sx_index_chunk_at(&c->idx, n, o); /* first chunk ending after o */
	if (whence == SEEK_DATA) {
		if (i == end) {
			fuse_reply_err(req, ENXIO);
			return;
		}
		uint64_t s = c->idx.chunks[i].file_off;
		fuse_reply_lseek(req, (off_t)(s > o ? s : o));
		return;
	}
	if (i == end || c->idx.chunks[i].file_off > o) {
		fuse_reply_lseek(req, off); /* already in a hole */
		return;
	}
	/* Adjacent chunks form one data region. */
	uint64_t e = c->idx.chunks[i].file_off + c->idx.chunks[i].size;
	for (i++; i < end && c->idx.chunks[i].file_off == e; i++)
		e += c->idx.chunks[i].size;
	fuse_reply_lseek(req, (off_t)(e < n->size ? e : n->size));
}

static void sx_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct sx_ctx *c = ctx_of(req);
	struct statvfs sv;
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_blocks = (c->idx.stored_bytes + 4095) / 4096;
	sv.f_files = c->idx.hdr->node_count;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static void sx_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *n = get_node(c, req, ino);
	if (!n)
		return;
	/*
	 * A view without a single xattr (most npm trees and checkouts): ENOSYS makes the kernel
	 * answer every later getxattr on this mount itself (EOPNOTSUPP, which overlayfs takes as
	 * "absent"), so its per-file probes (trusted.overlay.metacopy, .origin) cost no round
	 * trip. listxattr still answers, with an empty list.
	 */
	if (c->idx.hdr->xattr_count == 0) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	size_t len = strlen(name);
	for (uint32_t k = 0; k < n->xattr_count; k++) {
		const struct sx_xattr *x = &c->idx.xattrs[n->xattr_first + k];
		if (x->name_len != len || memcmp(sx_index_str(&c->idx, x->name_off), name, len) != 0)
			continue;
		if (size == 0)
			fuse_reply_xattr(req, x->value_len); /* the size probe */
		else if (size < x->value_len)
			fuse_reply_err(req, ERANGE);
		else
			fuse_reply_buf(req, sx_index_str(&c->idx, x->value_off), x->value_len);
		return;
	}
	fuse_reply_err(req, ENODATA);
}

static void sx_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct sx_ctx *c = ctx_of(req);
	const struct sx_node *n = get_node(c, req, ino);
	if (!n)
		return;
	size_t total = 0;
	for (uint32_t k = 0; k < n->xattr_count; k++)
		total += c->idx.xattrs[n->xattr_first + k].name_len + 1;
	if (size == 0) {
		fuse_reply_xattr(req, total);
		return;
	}
	if (size < total) {
		fuse_reply_err(req, ERANGE);
		return;
	}
	char *buf = malloc(total ? total : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t pos = 0;
	for (uint32_t k = 0; k < n->xattr_count; k++) {
		const struct sx_xattr *x = &c->idx.xattrs[n->xattr_first + k];
		memcpy(buf + pos, sx_index_str(&c->idx, x->name_off), x->name_len + 1); /* with its NUL */
		pos += x->name_len + 1;
	}
	fuse_reply_buf(req, buf, total);
	free(buf);
}

static void sx_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct sx_ctx *c = ctx_of(req);
	if (!get_node(c, req, ino))
		return;
	/* Permission bits are checked by the kernel (default_permissions); only writes are ours to refuse. */
	fuse_reply_err(req, (mask & W_OK) ? EROFS : 0);
}

static const struct fuse_lowlevel_ops sx_ops = {
	.init = sx_init,
	.lookup = sx_lookup,
	.forget = sx_forget,
	.forget_multi = sx_forget_multi,
	.getattr = sx_getattr,
	.readlink = sx_readlink,
	.open = sx_open,
	.read = sx_read,
	.release = sx_release,
	.opendir = sx_opendir,
	.readdir = sx_readdir,
	.readdirplus = sx_readdirplus,
	.releasedir = sx_release,
	.statfs = sx_statfs,
	.getxattr = sx_getxattr,
	.listxattr = sx_listxattr,
	.access = sx_access,
	.lseek = sx_lseek,
};

/*
 * --sources FILE: one line per layer fetched here, "LAYER SIZE URL". The
 * control plane writes it (mode 0600: the URLs are credentials) and rewrites
 * it with fresh URLs before they expire; a refused URL makes us read it again.
 * Layers are mirrored in CACHE/blobs/<layer sha256>.
 */
static bool parse_uint(const char *s, unsigned long max, unsigned long *out);

static int load_sources(struct sx_ctx *c, char *err, size_t errlen)
{
	pthread_mutex_lock(&c->sources_lock);
	int rc = -1;
	FILE *in = fopen(c->sources, "re");
	char *line = NULL;
	size_t cap = 0;
	unsigned lineno = 0;
	if (!in) {
		snprintf(err, errlen, "sources %s: %s", c->sources, strerror(errno));
		goto out;
	}
	if (mkdirat(c->cache_fd, "blobs", 0700) != 0 && errno != EEXIST) {
		snprintf(err, errlen, "cache blobs directory: %s", strerror(errno));
		goto out;
	}
	ssize_t n;
	while ((n = getline(&line, &cap, in)) > 0) {
		lineno++;
		if (line[n - 1] == '\n')
			line[--n] = '\0';
		if (n == 0)
			continue;
		char *sp1 = strchr(line, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
		unsigned long layer, size;
		if (!sp1 || !sp2) {
			snprintf(err, errlen, "sources %s line %u: want LAYER SIZE URL", c->sources, lineno);
			goto out;
		}
		*sp1 = *sp2 = '\0';
		/* LAYER may be the slot after the last layer: a paged index's own blob. */
		bool index_blob = c->idx.pager && parse_uint(line, UINT32_MAX, &layer) && layer == SX_INDEX_SLOT(&c->idx);
		if (!parse_uint(line, UINT32_MAX, &layer) || !parse_uint(sp1 + 1, ULONG_MAX, &size) ||
		    (layer >= c->idx.hdr->layer_count && !index_blob) || (index_blob && size != sx_index_blob_size(&c->idx))) {
			snprintf(err, errlen, "sources %s line %u: bad layer or size", c->sources, lineno);
			goto out;
		}
		char name[6 + 65];
		memcpy(name, "blobs/", 6);
		hex32(index_blob ? sx_index_blob_digest(&c->idx) : c->idx.layers[layer].digest, name + 6);
		if (sx_frames_add_remote(c->frames, (uint32_t)layer, c->cache_fd, name, size, sp2 + 1, err, errlen) < 0)
			goto out;
	}
	rc = 0;
out:
	free(line);
	if (in)
		fclose(in);
	pthread_mutex_unlock(&c->sources_lock);
	return rc;
}

static void renew_sources(void *user)
{
	struct sx_ctx *c = user;
	char err[512];
	if (load_sources(c, err, sizeof(err)) < 0)
		fprintf(stderr, "strata-fuse: renewing store URLs: %s\n", err);
}

/* The paged index's pages come from its blob, like a layer's frames (sx_frames_read). */
static int read_index(void *user, uint64_t off, uint64_t len, void *buf, int flags, char *why, size_t whylen)
{
	struct sx_ctx *c = user;
	return sx_frames_read(c->frames, SX_INDEX_SLOT(&c->idx), off, len, buf, (flags & SX_READ_DEMAND) != 0,
			      (flags & SX_READ_REFETCH) != 0, why, whylen);
}

/*
 * The paged index's background loader (the root's pages are loaded before the
 * mount, sx_index_warm): every page in order; once all are
 * loaded and valid, the whole index goes to --index-out for the control plane.
 * Requests never wait for it: each loads the pages it needs itself.
 */
static void *load_index(void *arg)
{
	struct sx_ctx *c = arg;
	char err[512];
	bool remote = sx_frames_remote(c->frames, SX_INDEX_SLOT(&c->idx));
	/*
	 * Not while the restore finishes and the first reads run: over a link the first read's
	 * fetch goes alone, and on two cores ~80 ms of decompressing, hashing and writing a large
	 * index would compete with them (what a request needs, it loads itself meanwhile).
	 */
	sx_frames_hold_for_first_read(c->frames);
	if (sx_index_load_all(&c->idx, c->index_out, remote, err, sizeof(err)) < 0)
		fprintf(stderr, "strata-fuse: loading the whole index: %s (pages still load as requests need them)\n", err);
	atomic_store(&c->loader_done, true);
	return NULL;
}

/* The spinners' question (sx_awake.h): is hydration or readahead keeping the CPUs busy? */
static bool background_busy(void *arg)
{
	return sx_frames_background(arg) > 0;
}

static void usage(FILE *to)
{
	fprintf(to, "usage: strata-fuse (--index FILE | --index-head FILE [--index-out FILE] [--index-seed FILE]) --cache DIR --socket PATH\n"
		    "                   [--timeout-ms N] [--threads N]\n"
		    "                   [--blob LAYER=PATH]... [--sources FILE] [--hydrate [--hydrated-file FILE]] [--deadline-ms N]\n"
		    "                   [--stall-ms N] [--readahead-kb N] [--async-readahead-kb N] [--prefetch FILE]\n"
		    "                   [--frame-cache-mb N] [--spin-us N] [--hydrate-streams N]\n"
		    "                   [--ready-fd FD] [--foreground] [--die-with-parent] [--debug] MOUNTPOINT\n"
		    "       strata-fuse --print-layout\n");
}

/*
 * --print-layout: the record layouts as this binary was compiled, as one JSON
 * object, so a test can hold the TypeScript encoder's constants against them.
 */
struct sx_field {
	const char *name;
	size_t off;
};

#define SX_F(type, field) { #field, offsetof(struct type, field) }

static void print_record(const char *name, size_t size, const struct sx_field *f, size_t n, bool last)
{
	printf("\"%s\":{\"size\":%zu,\"offsets\":{", name, size);
	for (size_t i = 0; i < n; i++)
		printf("%s\"%s\":%zu", i ? "," : "", f[i].name, f[i].off);
	printf("}}%s", last ? "" : ",");
}

#define SX_RECORD(name, type, last, ...)                                                                   \
	do {                                                                                               \
		static const struct sx_field f_[] = { __VA_ARGS__ };                                       \
		print_record(name, sizeof(struct type), f_, sizeof(f_) / sizeof(f_[0]), last);             \
	} while (0)

static int print_layout(void)
{
	printf("{\"version\":%u,\"warm_pages\":%u,", SX_INDEX_VERSION, SX_WARM_PAGES);
	SX_RECORD("header", sx_header, false, SX_F(sx_header, magic), SX_F(sx_header, version),
		  SX_F(sx_header, header_size), SX_F(sx_header, node_count), SX_F(sx_header, dirent_count),
		  SX_F(sx_header, chunk_count), SX_F(sx_header, xattr_count), SX_F(sx_header, layer_count),
		  SX_F(sx_header, digest_count), SX_F(sx_header, nodes_off), SX_F(sx_header, dirents_off),
		  SX_F(sx_header, chunks_off), SX_F(sx_header, xattrs_off), SX_F(sx_header, layers_off),
		  SX_F(sx_header, digests_off), SX_F(sx_header, strings_off), SX_F(sx_header, strings_size),
		  SX_F(sx_header, total_size));
	SX_RECORD("node", sx_node, false, SX_F(sx_node, mode), SX_F(sx_node, uid), SX_F(sx_node, gid),
		  SX_F(sx_node, nlink), SX_F(sx_node, size), SX_F(sx_node, mtime_sec), SX_F(sx_node, mtime_nsec),
		  SX_F(sx_node, parent), SX_F(sx_node, rdev_major), SX_F(sx_node, rdev_minor), SX_F(sx_node, blocks),
		  SX_F(sx_node, target_off), SX_F(sx_node, target_len), SX_F(sx_node, xattr_first),
		  SX_F(sx_node, xattr_count), SX_F(sx_node, first), SX_F(sx_node, count), SX_F(sx_node, reserved));
	SX_RECORD("dirent", sx_dirent, false, SX_F(sx_dirent, name_off), SX_F(sx_dirent, name_len),
		  SX_F(sx_dirent, ino));
	SX_RECORD("chunk", sx_chunk, false, SX_F(sx_chunk, file_off), SX_F(sx_chunk, blob_off),
		  SX_F(sx_chunk, blob_len), SX_F(sx_chunk, size), SX_F(sx_chunk, frame_off), SX_F(sx_chunk, frame_size),
		  SX_F(sx_chunk, digest), SX_F(sx_chunk, layer));
	SX_RECORD("xattr", sx_xattr, false, SX_F(sx_xattr, name_off), SX_F(sx_xattr, value_off),
		  SX_F(sx_xattr, name_len), SX_F(sx_xattr, value_len));
	SX_RECORD("layer", sx_layer, false, SX_F(sx_layer, digest), SX_F(sx_layer, prefetch_off),
		  SX_F(sx_layer, prefetch_len));
	SX_RECORD("digest", sx_digest, false, SX_F(sx_digest, digest));
	SX_RECORD("head", sx_head, false, SX_F(sx_head, magic), SX_F(sx_head, version), SX_F(sx_head, head_size),
		  SX_F(sx_head, page_size), SX_F(sx_head, page_count), SX_F(sx_head, blob_size),
		  SX_F(sx_head, stored_bytes), SX_F(sx_head, blob_digest), SX_F(sx_head, root_xattrs),
		  SX_F(sx_head, root_xattr_bytes), SX_F(sx_head, index), SX_F(sx_head, root));
	SX_RECORD("page", sx_page, false, SX_F(sx_page, digest), SX_F(sx_page, blob_off), SX_F(sx_page, blob_len),
		  SX_F(sx_page, reserved));
	SX_RECORD("seed", sx_seed, false, SX_F(sx_seed, page), SX_F(sx_seed, blob_len));
	SX_RECORD("msg", sx_msg, false, SX_F(sx_msg, magic), SX_F(sx_msg, type), SX_F(sx_msg, id),
		  SX_F(sx_msg, count), SX_F(sx_msg, flags));
	SX_RECORD("chunk_ref", sx_chunk_ref, false, SX_F(sx_chunk_ref, layer), SX_F(sx_chunk_ref, digest),
		  SX_F(sx_chunk_ref, blob_off), SX_F(sx_chunk_ref, blob_len), SX_F(sx_chunk_ref, size));
	SX_RECORD("resp", sx_resp, false, SX_F(sx_resp, magic), SX_F(sx_resp, status), SX_F(sx_resp, id));
	SX_RECORD("prefetch_header", sx_prefetch_header, false, SX_F(sx_prefetch_header, magic),
		  SX_F(sx_prefetch_header, version), SX_F(sx_prefetch_header, reserved), SX_F(sx_prefetch_header, count),
		  SX_F(sx_prefetch_header, reserved2));
	SX_RECORD("prefetch_ref", sx_prefetch_ref, true, SX_F(sx_prefetch_ref, blob_off), SX_F(sx_prefetch_ref, blob_len),
		  SX_F(sx_prefetch_ref, layer));
	printf("}\n");
	/* A test reads stdout through a pipe: a failed write must not look like success. */
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "strata-fuse: cannot write the layout: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || *s == '\0' || *end != '\0' || v > max)
		return false;
	*out = v;
	return true;
}

/* Socket paths are kept absolute: after daemonizing the working directory is "/". */
static char *absolute(const char *p)
{
	if (p[0] == '/')
		return strdup(p);
	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof(cwd)))
		return NULL;
	char *out = malloc(strlen(cwd) + strlen(p) + 2);
	if (out)
		sprintf(out, "%s/%s", cwd, p);
	return out;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "index", required_argument, NULL, 'i' },     { "cache", required_argument, NULL, 'c' },
		{ "socket", required_argument, NULL, 's' },    { "timeout-ms", required_argument, NULL, 't' },
		{ "threads", required_argument, NULL, 'T' },   { "ready-fd", required_argument, NULL, 'r' },
		{ "foreground", no_argument, NULL, 'f' },      { "debug", no_argument, NULL, 'd' },
		{ "die-with-parent", no_argument, NULL, 'P' }, { "help", no_argument, NULL, 'h' },
		{ "print-layout", no_argument, NULL, 'L' },    { "blob", required_argument, NULL, 'b' },
		{ "frame-cache-mb", required_argument, NULL, 'M' }, { "sources", required_argument, NULL, 'S' },
		{ "hydrate", no_argument, NULL, 'H' },          { "deadline-ms", required_argument, NULL, 'D' },
		{ "stall-ms", required_argument, NULL, 'W' },   { "readahead-kb", required_argument, NULL, 'R' },
		{ "prefetch", required_argument, NULL, 'p' },  { "async-readahead-kb", required_argument, NULL, 'A' },
		{ "index-head", required_argument, NULL, 'I' }, { "index-out", required_argument, NULL, 'O' },
		{ "spin-us", required_argument, NULL, 'U' },  { "hydrate-streams", required_argument, NULL, 'N' },
		{ "index-seed", required_argument, NULL, 'E' }, { "hydrated-file", required_argument, NULL, 'F' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sources = NULL, *prefetch = NULL;
	bool hydrate = false;
	unsigned long deadline_ms = 30000, stall_ms = 10000, readahead_kb = 256, async_readahead_kb = 4096;
	/* 1 ms: node's gap between two requests while it requires modules is mostly less (sx_awake.h). */
	unsigned long spin_us = 1000;
	/* 8: over a 40 ms, 100 MB/s link, 4 (with a barrier between phases) kept it at ~70 MB/s (docs/lazy.md). */
	unsigned long hydrate_streams = 8;
	/* --blob N=PATH: layer N of the index is read straight from that local file. */
	unsigned long blob_layer[SX_MAX_BLOBS];
	const char *blob_path[SX_MAX_BLOBS];
	unsigned nblobs = 0;
	unsigned long frame_cache_mb = 64;
	const char *index_path = NULL, *head_path = NULL, *index_out = NULL, *cache_dir = NULL, *socket_arg = NULL;
	const char *seed_path = NULL, *hydrated_path = NULL;
	unsigned long timeout_ms = 60000, threads = 64, ready_fd = ULONG_MAX;
	bool foreground = false, debug = false, die_with_parent = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'i': index_path = optarg; break;
		case 'I': head_path = optarg; break;
		case 'O': index_out = optarg; break;
		case 'E': seed_path = optarg; break;
		case 'F': hydrated_path = optarg; break;
		case 'c': cache_dir = optarg; break;
		case 's': socket_arg = optarg; break;
		case 't':
			if (!parse_uint(optarg, 24UL * 3600 * 1000, &timeout_ms) || timeout_ms == 0) {
				fprintf(stderr, "strata-fuse: bad --timeout-ms %s\n", optarg);
				return 2;
			}
			break;
		case 'T':
			if (!parse_uint(optarg, 1024, &threads) || threads < 2) {
				fprintf(stderr, "strata-fuse: bad --threads %s (2..1024)\n", optarg);
				return 2;
			}
			break;
		case 'r':
			if (!parse_uint(optarg, INT_MAX, &ready_fd)) {
				fprintf(stderr, "strata-fuse: bad --ready-fd %s\n", optarg);
				return 2;
			}
			break;
		case 'b': {
			char *eq = strchr(optarg, '=');
			char num[16];
			size_t nl = eq ? (size_t)(eq - optarg) : 0;
			if (!eq || nl == 0 || nl >= sizeof(num) || eq[1] == '\0' || nblobs == SX_MAX_BLOBS) {
				fprintf(stderr, "strata-fuse: bad --blob %s (want LAYER=PATH)\n", optarg);
				return 2;
			}
			memcpy(num, optarg, nl);
			num[nl] = '\0';
			if (!parse_uint(num, UINT32_MAX, &blob_layer[nblobs])) {
				fprintf(stderr, "strata-fuse: bad --blob %s (want LAYER=PATH)\n", optarg);
				return 2;
			}
			blob_path[nblobs++] = eq + 1;
			break;
		}
		case 'M':
			if (!parse_uint(optarg, 1UL << 20, &frame_cache_mb)) {
				fprintf(stderr, "strata-fuse: bad --frame-cache-mb %s\n", optarg);
				return 2;
			}
			break;
		case 'S': sources = optarg; break;
		case 'p': prefetch = optarg; break;
		case 'H': hydrate = true; break;
		case 'D':
		case 'W':
		case 'R':
		case 'A': {
			unsigned long *into = opt == 'D' ? &deadline_ms : opt == 'W' ? &stall_ms : opt == 'R' ? &readahead_kb : &async_readahead_kb;
			if (!parse_uint(optarg, 24UL * 3600 * 1000, into) || ((opt == 'D' || opt == 'W') && *into == 0)) {
				fprintf(stderr, "strata-fuse: bad value %s for --%s\n", optarg,
					opt == 'D' ? "deadline-ms" : opt == 'W' ? "stall-ms" : opt == 'R' ? "readahead-kb" : "async-readahead-kb");
				return 2;
			}
			break;
		}
		case 'N':
			if (!parse_uint(optarg, SX_HYDRATE_STREAMS_MAX, &hydrate_streams) || hydrate_streams == 0) {
				fprintf(stderr, "strata-fuse: bad --hydrate-streams %s (1..%d)\n", optarg, SX_HYDRATE_STREAMS_MAX);
				return 2;
			}
			break;
		case 'U':
			if (!parse_uint(optarg, 1000000, &spin_us)) {
				fprintf(stderr, "strata-fuse: bad --spin-us %s (0..1000000)\n", optarg);
				return 2;
			}
			break;
		case 'f': foreground = true; break;
		case 'd': debug = true; break;
		case 'P': die_with_parent = true; break;
		case 'h': usage(stdout); return 0;
		case 'L': return print_layout(); /* needs nothing else */
		default: usage(stderr); return 2;
		}
	}
	if (!index_path == !head_path || !cache_dir || !socket_arg || optind != argc - 1 || ((index_out || seed_path) && !head_path)) {
		usage(stderr);
		return 2;
	}
	const char *mountpoint = argv[optind];
	if (die_with_parent) {
		/* SIGTERM takes the normal exit path (fuse_set_signal_handlers), so the mount goes too. */
		pid_t parent = getppid();
		if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) {
			fprintf(stderr, "strata-fuse: parent gone or PR_SET_PDEATHSIG failed\n");
			return 1;
		}
	}

	/* Who serves, first on the readiness channel: a caller that started us through a fork of
	 * our own (setsid --fork) knows no pid otherwise. */
	if (ready_fd != ULONG_MAX && foreground && dprintf((int)ready_fd, "pid %ld\n", (long)getpid()) < 0)
		fprintf(stderr, "strata-fuse: cannot write to --ready-fd %lu: %s\n", ready_fd, strerror(errno));

	int status = 1;
	char err[512];
	struct sx_ctx ctx;
	memset(&ctx, 0, sizeof(ctx));
	ctx.cache_fd = -1;
	ctx.debug = debug;
	atomic_init(&ctx.noatime, true);
	pthread_mutex_init(&ctx.sources_lock, NULL);
	struct fuse_session *se = NULL;
	struct fuse_loop_config *cfg = NULL;
	char *socket_path = NULL;
	bool mounted = false, handlers = false;

	/* Each waiting read holds one fd per chunk it spans: allow what the hard limit allows. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			fprintf(stderr, "strata-fuse: cannot raise the open file limit: %s\n", strerror(errno));
	}
	if ((index_path ? sx_index_open(&ctx.idx, index_path, err, sizeof(err))
			: sx_index_open_paged(&ctx.idx, head_path, err, sizeof(err))) < 0) {
		fprintf(stderr, "strata-fuse: %s\n", err);
		return 1;
	}
	ctx.index_out = index_out;
	atomic_init(&ctx.loader_done, true);
	ctx.touched = calloc(ctx.idx.hdr->digest_count ? ctx.idx.hdr->digest_count : 1, sizeof(*ctx.touched));
	socket_path = absolute(socket_arg);
	if (!ctx.touched || !socket_path) {
		fprintf(stderr, "strata-fuse: out of memory\n");
		goto out;
	}
	ctx.cache_fd = open(cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ctx.cache_fd < 0) {
		fprintf(stderr, "strata-fuse: cache directory %s: %s\n", cache_dir, strerror(errno));
		goto out;
	}
	ctx.fetch = sx_fetch_new(socket_path, (unsigned)timeout_ms, err, sizeof(err));
	if (!ctx.fetch) {
		fprintf(stderr, "strata-fuse: %s\n", err);
		goto out;
	}
	if (nblobs > 0 || sources) {
		ctx.frames = sx_frames_new(&ctx.idx, (size_t)frame_cache_mb << 20, err, sizeof(err));
		if (!ctx.frames) {
			fprintf(stderr, "strata-fuse: %s\n", err);
			goto out;
		}
		/* A blob that cannot be opened is refused now: its layer would only fail later. */
		for (unsigned i = 0; i < nblobs; i++) {
			if (sx_frames_add_blob(ctx.frames, (uint32_t)blob_layer[i], blob_path[i], err, sizeof(err)) < 0) {
				fprintf(stderr, "strata-fuse: %s\n", err);
				goto out;
			}
		}
	}
	if (sources) {
		struct sx_http_opts ho = { .deadline_ms = (unsigned)deadline_ms, .stall_ms = (unsigned)stall_ms, .connect_ms = 5000 };
		ctx.http = sx_http_new(&ho, err, sizeof(err));
		if (!ctx.http) {
			fprintf(stderr, "strata-fuse: %s\n", err);
			goto out;
		}
		sx_frames_set_http(ctx.frames, ctx.http, (size_t)readahead_kb << 10, (size_t)async_readahead_kb << 10);
		sx_frames_on_refused(ctx.frames, renew_sources, &ctx);
		ctx.sources = sources;
		if (load_sources(&ctx, err, sizeof(err)) < 0) {
			fprintf(stderr, "strata-fuse: %s\n", err);
			goto out;
		}
		/* A bad record costs its prefetch only: reads fetch on demand. */
		if (prefetch && sx_frames_set_prefetch(ctx.frames, prefetch, err, sizeof(err)) < 0)
			fprintf(stderr, "strata-fuse: %s; no prefetch\n", err);
	}

	if (ctx.idx.pager) {
		if (!ctx.frames || !sx_frames_direct_slot(ctx.frames, SX_INDEX_SLOT(&ctx.idx))) {
			fprintf(stderr, "strata-fuse: a paged index needs its blob: --blob %u=PATH or a sources line for slot %u\n",
				SX_INDEX_SLOT(&ctx.idx), SX_INDEX_SLOT(&ctx.idx));
			goto out;
		}
		sx_index_set_reader(&ctx.idx, read_index, &ctx);
		uint32_t slot = SX_INDEX_SLOT(&ctx.idx);
		if (sx_frames_blob_size(ctx.frames, slot) != sx_index_blob_size(&ctx.idx)) {
			fprintf(stderr, "strata-fuse: the index blob is %llu bytes, its head says %llu: truncated or replaced\n",
				(unsigned long long)sx_frames_blob_size(ctx.frames, slot),
				(unsigned long long)sx_index_blob_size(&ctx.idx));
			goto out;
		}
		/* Pages the control plane fetched alongside the manifest: no wait here for libcurl's load. */
		if (seed_path && sx_index_seed(&ctx.idx, seed_path, err, sizeof(err)) < 0)
			fprintf(stderr, "strata-fuse: index seed: %s; its pages are fetched\n", err);
		if (sx_index_warm(&ctx.idx, err, sizeof(err)) < 0) {
			fprintf(stderr, "strata-fuse: loading the index: %s\n", err);
			goto out;
		}
	}

	char opts[256];
	snprintf(opts, sizeof(opts), "ro,default_permissions,fsname=strata,subtype=strata%s",
		 geteuid() == 0 ? ",allow_other" : "");
	char *fargv[] = { argv[0], "-o", opts, debug ? "-d" : NULL, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(debug ? 4 : 3, fargv);
	se = fuse_session_new(&args, &sx_ops, sizeof(sx_ops), &ctx);
	fuse_opt_free_args(&args);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) != 0)
		goto out;
	handlers = true;
	if (fuse_session_mount(se, mountpoint) != 0)
		goto out;
	mounted = true;
	if (!foreground && fuse_daemonize(0) != 0)
		goto out;
	if (ready_fd != ULONG_MAX) {
		/* The parent waits for this line: the mount is live from here on. */
		static const char ready[] = "ready\n";
		if (write((int)ready_fd, ready, sizeof(ready) - 1) != (ssize_t)(sizeof(ready) - 1))
			fprintf(stderr, "strata-fuse: cannot signal readiness on fd %lu: %s\n", ready_fd, strerror(errno));
		close((int)ready_fd);
	}

	/* After daemonizing: a thread started before fork would not exist in the child. */
	pthread_t loader;
	if (ctx.idx.pager) {
		atomic_store(&ctx.loader_done, false);
		if (pthread_create(&loader, NULL, load_index, &ctx) != 0) {
			atomic_store(&ctx.loader_done, true);
			fprintf(stderr, "strata-fuse: cannot start the index loader: pages load on demand only\n");
		} else
			pthread_detach(loader);
	}
	if (ctx.http && sx_frames_hydrate(ctx.frames, 4u << 20, hydrate, (unsigned)hydrate_streams, hydrated_path, err, sizeof(err)) < 0) {
		fprintf(stderr, "strata-fuse: %s\n", err);
		goto out;
	}
	cfg = fuse_loop_cfg_create();
	if (!cfg)
		goto out;
	/* Each read waiting on a miss holds a worker; the rest must keep serving. */
	fuse_loop_cfg_set_max_threads(cfg, (unsigned)threads);
	fuse_loop_cfg_set_idle_threads(cfg, 8);
	fuse_loop_cfg_set_clone_fd(cfg, 0);
	/* None if it cannot start: requests are served the same. */
	ctx.awake = sx_awake_new((unsigned)spin_us, ctx.frames ? background_busy : NULL, ctx.frames);
	int rc = fuse_session_loop_mt(se, cfg);
	/* 0 = unmounted, >0 = the signal that stopped us; both are clean exits. */
	status = rc < 0 ? 1 : 0;
out:
	if (cfg)
		fuse_loop_cfg_destroy(cfg);
	if (mounted)
		fuse_session_unmount(se);
	if (handlers)
		fuse_remove_signal_handlers(se);
	if (se)
		fuse_session_destroy(se);
	sx_awake_free(ctx.awake);
	sx_fetch_free(ctx.fetch);
	if (ctx.frames) {
		uint64_t loads, hits, bytes;
		sx_frames_stats(ctx.frames, &loads, &hits, &bytes);
		fprintf(stderr, "strata-fuse: %llu frames decoded, %llu reads served from decoded frames, %llu bytes read from blobs\n",
			(unsigned long long)loads, (unsigned long long)hits, (unsigned long long)bytes);
	}
	if (!atomic_load(&ctx.loader_done))
		return status; /* the loader still reads through frames and the index: both go with the process */
	sx_frames_free(ctx.frames);
	sx_http_free(ctx.http);
	if (ctx.cache_fd >= 0)
		close(ctx.cache_fd);
	free(ctx.touched);
	free(socket_path);
	sx_index_close(&ctx.idx);
	return status;
}
