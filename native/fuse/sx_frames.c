/*
 * Direct frames from local layer blobs: see sx_frames.h.
 *
 * One mutex guards the table and the LRU; loads run outside it, so a slow
 * pread or a 4 MiB decompression holds up only the readers of that frame.
 * Entries are indexed by the frame's digest index (the index's digest table),
 * so lookups are an array access, and chunks of several files sharing a frame
 * share its entry.
 */
#include "sx_frames.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zstd.h>

#include "sx_http.h"

enum { SX_LOADING = 1, SX_READY = 2, SX_FAILED = 3 };

struct sx_entry {
	struct sx_frame frame;
	uint32_t digest;
	int state;
	unsigned refs;
	/* A failed load is the answer of every read that waited for it (not one deadline each). */
	unsigned waiters;
	int rc;
	char *why;
	struct sx_entry *prev, *next; /* LRU, most recent first; only READY entries */
	bool in_lru;
};

struct sx_dctx_pool {
	ZSTD_DCtx **free;
	size_t n, cap;
};

struct sx_span {
	uint64_t off, end;
	uint32_t layer;
	uint32_t first; /* the earliest ref in it, by reading order */
};

struct sx_remote {
	char *url;           /* under url_lock: renewed while reads use it */
	bool remote;
};

#define SX_RA_SLOTS 64
#define SX_RA_WORKERS 2
#define SX_INFLIGHT 128

struct sx_frames {
	const struct sx_index *idx;
	int *fds;            /* per layer: the blob or its mirror, or -1 (not served here) */
	uint64_t *sizes;     /* per layer: the blob's size */
	struct sx_remote *remote; /* per layer */
	struct sx_http *http;
	size_t readahead;
	pthread_mutex_t url_lock;
	void (*renew)(void *user);
	void *renew_user;
	atomic_bool stop;
	atomic_bool hydrated; /* the hydration thread has returned */
	struct sx_span *spans; /* the prefetch record, coalesced, in first-read order */
	size_t nspans;
	atomic_size_t next_span;
	pthread_t hydrator;
	bool hydrating;
	/*
	 * Readahead after a read's fetch: the next bytes of the blob (files of the same directory,
	 * in capture order), fetched by worker threads so the read does not wait for them.
	 */
	pthread_mutex_t ra_lock;
	pthread_cond_t ra_cond;
	struct sx_ra { uint32_t layer; uint64_t off, len; bool demand; } raq[SX_RA_SLOTS];
	unsigned ra_head, ra_count;
	size_t ra_span;
	atomic_uint ra_running; /* workers still alive */
	/*
	 * Ranges this process is fetching, by class (reads, background): a fetch waits for an
	 * overlapping one of its own class in flight, then fetches only what is still missing. A
	 * read never waits for a background fetch (it GETs its own few hundred kB instead), and the
	 * threads of one process are not excluded by the OFD locks below (they share the file).
	 */
	pthread_mutex_t fl_lock;
	pthread_cond_t fl_done;
	struct sx_ra inflight[SX_INFLIGHT];
	bool inflight_used[SX_INFLIGHT];
	struct sx_entry **table; /* per digest index */
	struct sx_entry *head, *tail;
	size_t bytes, budget;
	struct sx_dctx_pool dctx;
	pthread_mutex_t lock;
	pthread_cond_t loaded;
	uint64_t loads, hits, read_bytes;
	/*
	 * Hydration's streams hold back until the first read's fetch is answered (or
	 * SX_HYDRATE_HOLD_MS pass): right after a restore, that read shares the link and the store
	 * with nothing but the prefetch record.
	 */
	pthread_mutex_t first_lock;
	pthread_cond_t first_cond; /* CLOCK_MONOTONIC */
	atomic_bool first_done;
	atomic_uint background; /* background fetches in flight (fetch_absent) */
};

#define SX_HYDRATE_HOLD_MS 200

struct sx_frames *sx_frames_new(const struct sx_index *idx, size_t budget, char *err, size_t errlen)
{
	struct sx_frames *f = calloc(1, sizeof(*f));
	/* One slot past the layers: a paged index's own blob (SX_INDEX_SLOT). */
	uint32_t layers = idx->hdr->layer_count + 1, digests = idx->hdr->digest_count;
	if (!f)
		goto nomem;
	f->idx = idx;
	f->budget = budget;
	f->fds = malloc(layers * sizeof(*f->fds));
	f->sizes = calloc(layers, sizeof(*f->sizes));
	f->table = calloc(digests ? digests : 1, sizeof(*f->table));
	f->remote = calloc(layers, sizeof(*f->remote));
	if (!f->fds || !f->sizes || !f->table || !f->remote)
		goto nomem;
	pthread_mutex_init(&f->url_lock, NULL);
	pthread_mutex_init(&f->ra_lock, NULL);
	pthread_cond_init(&f->ra_cond, NULL);
	pthread_mutex_init(&f->fl_lock, NULL);
	pthread_cond_init(&f->fl_done, NULL);
	pthread_mutex_init(&f->first_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&f->first_cond, &ca);
	pthread_condattr_destroy(&ca);
	for (uint32_t i = 0; i < layers; i++)
		f->fds[i] = -1;
	if (pthread_mutex_init(&f->lock, NULL) != 0)
		goto nomem;
	if (pthread_cond_init(&f->loaded, NULL) != 0) {
		pthread_mutex_destroy(&f->lock);
		goto nomem;
	}
	return f;
nomem:
	snprintf(err, errlen, "out of memory for the frame table");
	if (f) {
		free(f->fds);
		free(f->sizes);
		free(f->table);
		free(f->remote);
		free(f);
	}
	return NULL;
}

/* A layer, or (paged index) SX_INDEX_SLOT: the index's blob. */
static bool slot_ok(const struct sx_frames *f, uint32_t layer)
{
	return layer < f->idx->hdr->layer_count || (layer == SX_INDEX_SLOT(f->idx) && f->idx->pager);
}

int sx_frames_add_blob(struct sx_frames *f, uint32_t layer, const char *path, char *err, size_t errlen)
{
	if (!slot_ok(f, layer)) {
		snprintf(err, errlen, "--blob %u=%s: the index has %u layers", layer, path, f->idx->hdr->layer_count);
		return -1;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		if (layer == SX_INDEX_SLOT(f->idx))
			snprintf(err, errlen, "the index blob %s: %s", path, strerror(errno));
		else
			snprintf(err, errlen, "layer %u blob %s: %s", layer, path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (f->fds[layer] >= 0)
		close(f->fds[layer]);
	f->fds[layer] = fd;
	f->sizes[layer] = (uint64_t)st.st_size;
	return 0;
}

uint64_t sx_frames_blob_size(const struct sx_frames *f, uint32_t slot)
{
	return f && slot_ok(f, slot) && f->fds[slot] >= 0 ? f->sizes[slot] : 0;
}

bool sx_frames_remote(const struct sx_frames *f, uint32_t slot)
{
	return f && slot_ok(f, slot) && f->remote[slot].remote;
}

bool sx_frames_direct_slot(const struct sx_frames *f, uint32_t slot)
{
	return f && slot_ok(f, slot) && f->fds[slot] >= 0;
}

int sx_frames_direct(const struct sx_frames *f, uint32_t layer)
{
	return f && layer < f->idx->hdr->layer_count && f->fds[layer] >= 0;
}

void sx_frames_set_http(struct sx_frames *f, struct sx_http *http, size_t readahead, size_t async_readahead)
{
	f->http = http;
	f->readahead = readahead;
	f->ra_span = async_readahead;
}

/* Queue [off, off+len) of a remote layer for the readahead workers; the oldest request gives way. */
static void readahead_push(struct sx_frames *f, uint32_t layer, uint64_t off, uint64_t len)
{
	if (len == 0 || f->ra_span == 0)
		return;
	pthread_mutex_lock(&f->ra_lock);
	if (f->ra_count == SX_RA_SLOTS) {
		f->ra_head = (f->ra_head + 1) % SX_RA_SLOTS;
		f->ra_count--;
	}
	f->raq[(f->ra_head + f->ra_count) % SX_RA_SLOTS] = (struct sx_ra){ .layer = layer, .off = off, .len = len, .demand = false };
	f->ra_count++;
	pthread_cond_signal(&f->ra_cond);
	pthread_mutex_unlock(&f->ra_lock);
}

void sx_frames_on_refused(struct sx_frames *f, void (*renew)(void *user), void *user)
{
	f->renew = renew;
	f->renew_user = user;
}

int sx_frames_add_remote(struct sx_frames *f, uint32_t layer, int dirfd, const char *mirror, uint64_t size, const char *url,
			 char *err, size_t errlen)
{
	if (!slot_ok(f, layer)) {
		snprintf(err, errlen, "remote layer %u: the index has %u layers", layer, f->idx->hdr->layer_count);
		return -1;
	}
	char *u = strdup(url);
	if (!u) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (f->remote[layer].remote) {
		/* A renewal: same mirror, new URL. */
		pthread_mutex_lock(&f->url_lock);
		free(f->remote[layer].url);
		f->remote[layer].url = u;
		pthread_mutex_unlock(&f->url_lock);
		return 0;
	}
	int fd = openat(dirfd, mirror, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		snprintf(err, errlen, "layer %u mirror %s: %s", layer, mirror, strerror(errno));
		if (fd >= 0)
			close(fd);
		free(u);
		return -1;
	}
	/* Sparse, at the blob's size: holes are what is not fetched yet. */
	if ((uint64_t)st.st_size != size && ftruncate(fd, (off_t)size) != 0) {
		snprintf(err, errlen, "layer %u mirror %s: %s", layer, mirror, strerror(errno));
		close(fd);
		free(u);
		return -1;
	}
	if (f->fds[layer] >= 0)
		close(f->fds[layer]);
	f->fds[layer] = fd;
	f->sizes[layer] = size;
	pthread_mutex_lock(&f->url_lock);
	f->remote[layer].url = u;
	f->remote[layer].remote = true;
	pthread_mutex_unlock(&f->url_lock);
	return 0;
}

/* The mirror holds [off, off+len) as data (it may still be torn: the frame check decides). */
static bool present(int fd, uint64_t off, uint64_t len)
{
	off_t h = lseek(fd, (off_t)off, SEEK_HOLE);
	return h >= 0 && (uint64_t)h >= off + len;
}

#define SX_BLOCK 4096u /* the mirror's unit: a block is a hole or all real bytes, never part of each */

/*
 * GET [off, off+len) of a remote layer into its mirror, rounded out to whole blocks: a block
 * written in part would read as held (SEEK_DATA) with zeros in the rest, so hydration would
 * skip it and every frame crossing it would fail its check and cost a read another round trip.
 * Renews the URL once if refused.
 */
static int fetch_into_mirror(struct sx_frames *f, uint32_t layer, uint64_t off, uint64_t len, char *why, size_t whylen)
{
	uint64_t end = off + len, size = f->sizes[layer];
	off -= off % SX_BLOCK;
	end = end % SX_BLOCK == 0 ? end : end + (SX_BLOCK - end % SX_BLOCK);
	if (end > size)
		end = size;
	len = end > off ? end - off : 0;
	if (!f->http) {
		snprintf(why, whylen, "no HTTP client");
		return -EIO;
	}
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf) {
		snprintf(why, whylen, "out of memory for a %llu-byte span", (unsigned long long)len);
		return -ENOMEM;
	}
	int rc = -EIO;
	for (int round = 0; round < 2; round++) {
		pthread_mutex_lock(&f->url_lock);
		char *url = strdup(f->remote[layer].url);
		pthread_mutex_unlock(&f->url_lock);
		if (!url) {
			rc = -ENOMEM;
			break;
		}
		rc = sx_http_get(f->http, url, off, (size_t)len, buf, why, whylen);
		free(url);
		if (rc != -EACCES || round == 1 || !f->renew)
			break;
		f->renew(f->renew_user);
	}
	if (rc == 0) {
		size_t put = 0;
		while (put < len) {
			ssize_t w = pwrite(f->fds[layer], buf + put, (size_t)len - put, (off_t)(off + put));
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				/* The bytes are good but not kept: this read still fails rather than serve unverified data. */
				snprintf(why, whylen, "writing the cache mirror: %s", w < 0 ? strerror(errno) : "no progress");
				rc = -EIO;
				break;
			}
			put += (size_t)w;
		}
	} else if (rc != -ENOMEM)
		rc = -EIO;
	free(buf);
	return rc;
}

/* Claim [off, off+len) of a layer for this thread's fetch, after any overlapping one of its class ends. */
static int inflight_begin(struct sx_frames *f, uint32_t layer, uint64_t off, uint64_t len, bool demand)
{
	pthread_mutex_lock(&f->fl_lock);
	for (;;) {
		int free_slot = -1;
		bool overlap = false;
		for (int i = 0; i < SX_INFLIGHT; i++) {
			if (!f->inflight_used[i]) {
				if (free_slot < 0)
					free_slot = i;
				continue;
			}
			const struct sx_ra *r = &f->inflight[i];
			if (r->demand == demand && r->layer == layer && r->off < off + len && off < r->off + r->len)
				overlap = true;
		}
		if (!overlap && free_slot >= 0) {
			f->inflight[free_slot] = (struct sx_ra){ .layer = layer, .off = off, .len = len, .demand = demand };
			f->inflight_used[free_slot] = true;
			pthread_mutex_unlock(&f->fl_lock);
			return free_slot;
		}
		pthread_cond_wait(&f->fl_done, &f->fl_lock);
	}
}

static void inflight_end(struct sx_frames *f, int slot)
{
	pthread_mutex_lock(&f->fl_lock);
	f->inflight_used[slot] = false;
	pthread_cond_broadcast(&f->fl_done);
	pthread_mutex_unlock(&f->fl_lock);
}

/*
 * Every strata-fuse on the host shares a mirror: a read's fetch holds an OFD
 * write lock on its range of the file, so a fork reading the same bytes waits
 * for them instead of fetching them again, and the holder's death releases it.
 * Background fetches take no lock: a read must not wait for their megabytes.
 */
static int lock_range(int fd, uint64_t off, uint64_t len, short type)
{
	struct flock l = { .l_type = type, .l_whence = SEEK_SET, .l_start = (off_t)off, .l_len = (off_t)len };
	int rc;
	while ((rc = fcntl(fd, F_OFD_SETLKW, &l)) != 0 && errno == EINTR)
		;
	return rc;
}

/*
 * A read's claim on [off, off+len) of a mirror: first this process's table of reads in flight,
 * then the range's OFD lock (forks). Returns the table slot for release_read, or -EIO.
 */
static int claim_read(struct sx_frames *f, uint32_t layer, uint64_t off, uint64_t len, char *why, size_t whylen)
{
	int slot = inflight_begin(f, layer, off, len, true);
	if (lock_range(f->fds[layer], off, len, F_WRLCK) != 0) {
		snprintf(why, whylen, "locking the cache mirror: %s", strerror(errno));
		inflight_end(f, slot);
		return -EIO;
	}
	return slot;
}

static void release_read(struct sx_frames *f, uint32_t layer, uint64_t off, uint64_t len, int slot)
{
	lock_range(f->fds[layer], off, len, F_UNLCK);
	inflight_end(f, slot);
}

/* Narrow [*off, *end) to its first hole's start and its last hole's end; false if it has none. */
static bool trim_to_holes(int fd, uint64_t *off, uint64_t *end)
{
	off_t h = lseek(fd, (off_t)*off, SEEK_HOLE);
	if (h < 0 || (uint64_t)h >= *end)
		return false;
	uint64_t last = (uint64_t)h;
	for (off_t at = h;;) {
		off_t d = lseek(fd, at, SEEK_DATA);
		if (d < 0 || (uint64_t)d >= *end) {
			last = *end;
			break;
		}
		last = (uint64_t)d;
		at = lseek(fd, d, SEEK_HOLE);
		if (at < 0 || (uint64_t)at >= *end)
			break;
	}
	*off = (uint64_t)h;
	*end = last;
	return true;
}

/*
 * A background fetch of what [off, off+len) lacks, once no other background fetch of it is in
 * flight: one that was (a read's readahead) has usually brought most of it, which is not fetched again.
 */
static int fetch_absent(struct sx_frames *f, uint32_t layer, uint64_t off, uint64_t len, char *why, size_t whylen)
{
	int slot = inflight_begin(f, layer, off, len, false);
	uint64_t a = off, b = off + len;
	int rc = 0;
	if (trim_to_holes(f->fds[layer], &a, &b)) {
		atomic_fetch_add(&f->background, 1);
		rc = fetch_into_mirror(f, layer, a, b - a, why, whylen);
		atomic_fetch_sub(&f->background, 1);
	}
	inflight_end(f, slot);
	return rc;
}

static int decode(struct sx_frames *f, const struct sx_chunk *ch, uint8_t **out, char *why, size_t whylen);
static void first_fetch_done(struct sx_frames *f);

/*
 * Where a read's GET starts: up to readahead bytes before its frame, from the start of the hole
 * the frame lies in. Readers go backwards too: node reads a package's package.json, then its
 * main file, which sorts (and so was captured) before it; each such step was a round trip.
 */
static uint64_t look_behind(const struct sx_frames *f, int fd, uint64_t off)
{
	uint64_t lo = off > f->readahead ? off - f->readahead : 0, from = off;
	for (uint64_t at = lo; at < off;) {
		off_t h = lseek(fd, (off_t)at, SEEK_HOLE);
		if (h < 0 || (uint64_t)h >= off)
			break;
		off_t d = lseek(fd, h, SEEK_DATA);
		if (d < 0 || (uint64_t)d >= off) {
			from = (uint64_t)h; /* this hole runs up to the frame */
			break;
		}
		at = (uint64_t)d;
	}
	return from;
}

/*
 * A read's fetch: its frame and up to readahead bytes on each side of it,
 * stopping at the ranges the mirror already holds; under the range's lock. Once the
 * lock is ours, a frame another process fetched meanwhile is not fetched
 * again; `unless_good`: the mirror held the frame but it did not verify (torn,
 * or read while another process wrote it), so it is fetched again unless it
 * verifies now.
 */
static int fetch_demand(struct sx_frames *f, const struct sx_chunk *ch, bool unless_good, char *why, size_t whylen)
{
	int fd = f->fds[ch->layer];
	uint64_t size = f->sizes[ch->layer], off = look_behind(f, fd, ch->blob_off), end = ch->blob_off + ch->blob_len;
	uint64_t ra = ch->blob_off + f->readahead > end ? ch->blob_off + f->readahead : end;
	if (ra > size)
		ra = size;
	off_t d = lseek(fd, (off_t)end, SEEK_DATA);
	if (d >= 0 && (uint64_t)d < ra)
		ra = (uint64_t)d > end ? (uint64_t)d : end;
	int slot = claim_read(f, ch->layer, off, ra - off, why, whylen);
	if (slot < 0)
		return slot;
	int rc = 0;
	bool fetch = !present(fd, ch->blob_off, ch->blob_len), bad = false;
	if (!fetch && unless_good) {
		uint8_t *tmp = NULL;
		fetch = bad = decode(f, ch, &tmp, why, whylen) != 0;
		free(tmp);
	}
	if (fetch) {
		/*
		 * Only the holes: what another read brought while this one waited for its claim is not
		 * fetched again. A frame held but bad is fetched whole, with the holes around it.
		 */
		uint64_t a = off, b = ra;
		if (!trim_to_holes(fd, &a, &b))
			a = b = ch->blob_off;
		if (bad && a > ch->blob_off)
			a = ch->blob_off;
		if (bad && b < end)
			b = end;
		rc = fetch_into_mirror(f, ch->layer, a, b - a, why, whylen);
	}
	release_read(f, ch->layer, off, ra - off, slot);
	if (fetch && rc == 0 && ra < size)
		readahead_push(f, ch->layer, ra, size - ra < f->ra_span ? size - ra : f->ra_span);
	first_fetch_done(f);
	return rc;
}

static void first_fetch_done(struct sx_frames *f)
{
	if (!atomic_load(&f->first_done)) {
		pthread_mutex_lock(&f->first_lock);
		atomic_store(&f->first_done, true);
		pthread_cond_broadcast(&f->first_cond);
		pthread_mutex_unlock(&f->first_lock);
	}
}

int sx_frames_read(struct sx_frames *f, uint32_t layer, uint64_t off, uint64_t len, void *buf, bool demand, bool refetch,
		   char *why, size_t whylen)
{
	if (!slot_ok(f, layer) || f->fds[layer] < 0) {
		snprintf(why, whylen, "no blob for slot %u", layer);
		return -EIO;
	}
	int fd = f->fds[layer];
	if (len > f->sizes[layer] || off > f->sizes[layer] - len) {
		snprintf(why, whylen, "bytes %llu+%llu lie past the end of the %llu-byte blob", (unsigned long long)off,
			 (unsigned long long)len, (unsigned long long)f->sizes[layer]);
		return -EIO;
	}
	if (f->remote[layer].remote) {
		int rc = 0;
		if (demand) {
			/* Like a read's frame: under the range's claim, so forks fetch it once. */
			int slot = claim_read(f, layer, off, len, why, whylen);
			if (slot < 0)
				return slot;
			if (refetch || !present(fd, off, len))
				rc = fetch_into_mirror(f, layer, off, len, why, whylen);
			release_read(f, layer, off, len, slot);
		} else
			rc = refetch ? fetch_into_mirror(f, layer, off, len, why, whylen) : fetch_absent(f, layer, off, len, why, whylen);
		if (rc < 0)
			return rc;
	}
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(fd, (char *)buf + got, (size_t)(len - got), (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			snprintf(why, whylen, "reading the blob: %s", r < 0 ? strerror(errno) : "shorter than it should be");
			return -EIO;
		}
		got += (size_t)r;
	}
	return 0;
}

/* Until the first read's fetch is answered, or SX_HYDRATE_HOLD_MS, or shutdown. */
void sx_frames_hold_for_first_read(struct sx_frames *f)
{
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += (long)SX_HYDRATE_HOLD_MS * 1000000L;
	until.tv_sec += until.tv_nsec / 1000000000L;
	until.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&f->first_lock);
	while (!atomic_load(&f->first_done) && !atomic_load(&f->stop))
		if (pthread_cond_timedwait(&f->first_cond, &f->first_lock, &until) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&f->first_lock);
}

static void lru_unlink(struct sx_frames *f, struct sx_entry *e)
{
	if (!e->in_lru)
		return;
	if (e->prev)
		e->prev->next = e->next;
	else
		f->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		f->tail = e->prev;
	e->prev = e->next = NULL;
	e->in_lru = false;
}

static void lru_push(struct sx_frames *f, struct sx_entry *e)
{
	e->prev = NULL;
	e->next = f->head;
	if (f->head)
		f->head->prev = e;
	f->head = e;
	if (!f->tail)
		f->tail = e;
	e->in_lru = true;
}

static void entry_free(struct sx_entry *e)
{
	free((void *)e->frame.data);
	free(e);
}

/* Drop unreferenced frames from the cold end until the budget holds. Lock held. */
static void evict(struct sx_frames *f)
{
	struct sx_entry *e = f->tail;
	while (f->bytes > f->budget && e) {
		struct sx_entry *prev = e->prev;
		if (e->refs == 0 && e->waiters == 0) {
			lru_unlink(f, e);
			f->table[e->digest] = NULL;
			f->bytes -= e->frame.size;
			entry_free(e);
		}
		e = prev;
	}
}

static ZSTD_DCtx *dctx_take(struct sx_frames *f)
{
	pthread_mutex_lock(&f->lock);
	ZSTD_DCtx *d = f->dctx.n ? f->dctx.free[--f->dctx.n] : NULL;
	pthread_mutex_unlock(&f->lock);
	return d ? d : ZSTD_createDCtx();
}

static void dctx_give(struct sx_frames *f, ZSTD_DCtx *d)
{
	if (!d)
		return;
	pthread_mutex_lock(&f->lock);
	if (f->dctx.n == f->dctx.cap) {
		size_t cap = f->dctx.cap ? f->dctx.cap * 2 : 8;
		ZSTD_DCtx **p = realloc(f->dctx.free, cap * sizeof(*p));
		if (!p) {
			pthread_mutex_unlock(&f->lock);
			ZSTD_freeDCtx(d);
			return;
		}
		f->dctx.free = p;
		f->dctx.cap = cap;
	}
	f->dctx.free[f->dctx.n++] = d;
	pthread_mutex_unlock(&f->lock);
}

/* Read, decompress and verify one frame from the layer's file into a fresh buffer. Runs unlocked. */
static int decode(struct sx_frames *f, const struct sx_chunk *ch, uint8_t **out, char *why, size_t whylen)
{
	int fd = f->fds[ch->layer];
	if (ch->blob_off > f->sizes[ch->layer] || ch->blob_len > f->sizes[ch->layer] - ch->blob_off) {
		snprintf(why, whylen, "the layer blob is %llu bytes, shorter than the index says",
			 (unsigned long long)f->sizes[ch->layer]);
		return -EIO;
	}
	if (ch->blob_len > ZSTD_COMPRESSBOUND(SX_MAX_FRAME)) {
		snprintf(why, whylen, "compressed frame of %u bytes is larger than any frame can be", ch->blob_len);
		return -EIO;
	}
	uint8_t *src = malloc(ch->blob_len);
	uint8_t *dst = malloc(ch->frame_size ? ch->frame_size : 1);
	ZSTD_DCtx *d = NULL;
	int rc = -EIO;
	if (!src || !dst) {
		snprintf(why, whylen, "out of memory for a %u-byte frame", ch->frame_size);
		rc = -ENOMEM;
		goto out;
	}
	size_t got = 0;
	while (got < ch->blob_len) {
		ssize_t r = pread(fd, src + got, ch->blob_len - got, (off_t)(ch->blob_off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			snprintf(why, whylen, "reading the layer blob: %s", r < 0 ? strerror(errno) : "unexpected end of file");
			goto out;
		}
		got += (size_t)r;
	}
	__atomic_add_fetch(&f->read_bytes, ch->blob_len, __ATOMIC_RELAXED);
	d = dctx_take(f);
	if (!d) {
		snprintf(why, whylen, "out of memory for a zstd context");
		rc = -ENOMEM;
		goto out;
	}
	size_t n = ZSTD_decompressDCtx(d, dst, ch->frame_size, src, ch->blob_len);
	if (ZSTD_isError(n) || n != ch->frame_size) {
		snprintf(why, whylen, "the frame does not decompress to %u bytes (%s): damaged or tampered data, not used",
			 ch->frame_size, ZSTD_isError(n) ? ZSTD_getErrorName(n) : "wrong size");
		goto out;
	}
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	if (EVP_Digest(dst, ch->frame_size, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
		snprintf(why, whylen, "sha256 failed");
		goto out;
	}
	if (memcmp(md, f->idx->digests[ch->digest].digest, 32) != 0) {
		snprintf(why, whylen, "the frame's sha256 does not match the index: damaged or tampered data, not used");
		goto out;
	}
	*out = dst;
	dst = NULL;
	rc = 0;
out:
	dctx_give(f, d);
	free(src);
	free(dst);
	return rc;
}

/*
 * A remote layer's frame: from the mirror when it holds the range and the
 * bytes check out, else fetched (again) and checked. A frame that fails after
 * a fresh fetch is the store's fault: EIO.
 */
static int load(struct sx_frames *f, const struct sx_chunk *ch, uint8_t **out, char *why, size_t whylen)
{
	if (!f->remote[ch->layer].remote)
		return decode(f, ch, out, why, whylen);
	if (!present(f->fds[ch->layer], ch->blob_off, ch->blob_len)) {
		int rc = fetch_demand(f, ch, false, why, whylen);
		if (rc < 0)
			return rc;
	}
	int rc = decode(f, ch, out, why, whylen);
	if (rc == 0 || rc == -ENOMEM)
		return rc;
	/* Torn by a crash, a partial block of a neighbour's span, a fetch still being written: again. */
	rc = fetch_demand(f, ch, true, why, whylen);
	return rc < 0 ? rc : decode(f, ch, out, why, whylen);
}

int sx_frames_get(struct sx_frames *f, uint32_t ci, const struct sx_frame **out, char *why, size_t whylen)
{
	const struct sx_chunk *ch = &f->idx->chunks[ci];
	pthread_mutex_lock(&f->lock);
	for (;;) {
		struct sx_entry *e = f->table[ch->digest];
		if (!e)
			break;
		if (e->state == SX_READY) {
			e->refs++;
			lru_unlink(f, e);
			lru_push(f, e);
			f->hits++;
			pthread_mutex_unlock(&f->lock);
			*out = &e->frame;
			return 0;
		}
		/* Another thread loads it: its result, or its failure, is ours too. */
		e->waiters++;
		while (e->state == SX_LOADING)
			pthread_cond_wait(&f->loaded, &f->lock);
		e->waiters--;
		if (e->state == SX_FAILED) {
			int rc = e->rc;
			snprintf(why, whylen, "%s", e->why ? e->why : "the frame could not be loaded");
			if (e->waiters == 0) {
				free(e->why);
				free(e);
			}
			pthread_mutex_unlock(&f->lock);
			return rc;
		}
	}
	struct sx_entry *e = calloc(1, sizeof(*e));
	if (!e) {
		pthread_mutex_unlock(&f->lock);
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	e->digest = ch->digest;
	e->state = SX_LOADING;
	f->table[ch->digest] = e;
	f->loads++;
	pthread_mutex_unlock(&f->lock);

	uint8_t *data = NULL;
	int rc = load(f, ch, &data, why, whylen);

	pthread_mutex_lock(&f->lock);
	if (rc < 0) {
		/* Out of the table: the next read tries again; the ones waiting now get this answer. */
		f->table[ch->digest] = NULL;
		if (e->waiters == 0)
			free(e);
		else {
			e->state = SX_FAILED;
			e->rc = rc;
			e->why = strdup(why);
		}
	} else {
		e->frame.data = data;
		e->frame.size = ch->frame_size;
		e->state = SX_READY;
		e->refs = 1;
		lru_push(f, e);
		f->bytes += e->frame.size;
		evict(f);
		*out = &e->frame;
	}
	pthread_cond_broadcast(&f->loaded);
	pthread_mutex_unlock(&f->lock);
	return rc;
}

void sx_frames_put(struct sx_frames *f, const struct sx_frame *fr)
{
	struct sx_entry *e = (struct sx_entry *)((char *)fr - offsetof(struct sx_entry, frame));
	pthread_mutex_lock(&f->lock);
	e->refs--;
	if (e->refs == 0 && f->bytes > f->budget)
		evict(f);
	pthread_mutex_unlock(&f->lock);
}

unsigned sx_frames_background(struct sx_frames *f)
{
	return atomic_load(&f->background);
}

void sx_frames_stats(struct sx_frames *f, uint64_t *loads, uint64_t *hits, uint64_t *bytes)
{
	pthread_mutex_lock(&f->lock);
	*loads = f->loads;
	*hits = f->hits;
	*bytes = __atomic_load_n(&f->read_bytes, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&f->lock);
}

/*
 * Present bytes between two holes shorter than this are fetched again rather than split into two
 * GETs: the slivers between small-file runs and reads' fetches (a few blocks) are not worth a
 * round trip, and larger ones are not worth their bytes (the streams' round trips overlap).
 */
#define SX_BRIDGE (32u << 10)

/* Fetch the holes of [a, b) of a remote layer in GETs of at most span bytes, bridging short data. */
static bool hydrate_range(struct sx_frames *f, uint32_t layer, uint64_t a, uint64_t b, size_t span)
{
	int fd = f->fds[layer];
	uint64_t pos = a;
	while (pos < b && !atomic_load(&f->stop)) {
		off_t h = lseek(fd, (off_t)pos, SEEK_HOLE);
		if (h < 0 || (uint64_t)h >= b)
			return true;
		uint64_t limit = (uint64_t)h + span < b ? (uint64_t)h + span : b, end = limit;
		for (uint64_t at = (uint64_t)h;;) {
			off_t d = lseek(fd, (off_t)at, SEEK_DATA);
			if (d < 0 || (uint64_t)d >= limit)
				break; /* a hole up to the limit */
			off_t next = lseek(fd, d, SEEK_HOLE);
			if (next < 0 || (uint64_t)next >= limit || (uint64_t)(next - d) > SX_BRIDGE) {
				end = (uint64_t)d; /* stop before the data */
				break;
			}
			at = (uint64_t)next; /* short data: fetched again with the holes around it */
		}
		char why[256];
		if (fetch_absent(f, layer, (uint64_t)h, end - (uint64_t)h, why, sizeof(why)) < 0) {
			/* Reads fetch what they need themselves; hydration just stops for this layer. */
			fprintf(stderr, "strata-fuse: hydration of layer %u bytes %llu+%llu stopped: %s\n", layer,
				(unsigned long long)h, (unsigned long long)(end - (uint64_t)h), why);
			return false;
		}
		pos = end;
	}
	return true;
}

/*
 * Small files first. A workload starting on a fresh workspace (node's require, a build's
 * sources, git's index and loose objects) mostly reads small files, while most of a tree's
 * bytes sit in a few large ones (binaries, bundles, source maps, packs: 60% of the bench trees,
 * and the bulk of a real node_modules). So hydration first fetches the frames of small files,
 * in runs that skip the large frames between them, and only then the rest: the workload's data
 * is local in about half the time, and a read that wants a large frame still fetches it itself.
 */
/* A frame this size (uncompressed) or less holds small files: a shared frame closes once it
 * reaches the writer's bound (256 KiB, src/format/writer.ts), so it can hold up to twice that. */
#define SX_SMALL_FRAME (528u << 10)
#define SX_SMALL_GAP (64u << 10)    /* bridged rather than split: a GET costs ~4 MB of transfer */

struct sx_run {
	uint64_t off, end;
	uint32_t layer;
};

static int by_layer_off(const void *a, const void *b)
{
	const struct sx_run *x = a, *y = b;
	if (x->layer != y->layer)
		return x->layer > y->layer ? -1 : 1; /* top layer first */
	return x->off < y->off ? -1 : x->off > y->off;
}

/* A paged index's chunk table can be walked once every page is in (the loader's background pass). */
static bool index_whole(struct sx_frames *f, int wait_ms)
{
	for (int waited = 0;; waited += 5) {
		uint32_t loaded, total;
		sx_index_pages(f->idx, &loaded, &total);
		if (loaded >= total)
			return true;
		if (waited >= wait_ms || atomic_load(&f->stop))
			return false;
		usleep(5000);
	}
}

/* The runs of small frames of the remote layers, top layer first, each at most span bytes. */
static struct sx_run *small_runs(struct sx_frames *f, size_t span, size_t *count)
{
	const struct sx_index *idx = f->idx;
	uint32_t n = idx->hdr->chunk_count, layers = idx->hdr->layer_count;
	struct sx_run *r = malloc((n ? n : 1) * sizeof(*r));
	*count = 0;
	if (!r)
		return NULL;
	size_t k = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct sx_chunk *ch = &idx->chunks[i];
		if (ch->layer >= layers || !f->remote[ch->layer].remote || ch->frame_size > SX_SMALL_FRAME ||
		    ch->blob_len == 0 || ch->blob_off > f->sizes[ch->layer] || ch->blob_len > f->sizes[ch->layer] - ch->blob_off)
			continue;
		r[k++] = (struct sx_run){ .off = ch->blob_off, .end = ch->blob_off + ch->blob_len, .layer = ch->layer };
	}
	qsort(r, k, sizeof(*r), by_layer_off);
	size_t m = 0;
	for (size_t i = 0; i < k; i++) {
		struct sx_run *last = m ? &r[m - 1] : NULL;
		if (last && last->layer == r[i].layer && r[i].off <= last->end + SX_SMALL_GAP && r[i].end - last->off <= span) {
			if (r[i].end > last->end)
				last->end = r[i].end;
			continue;
		}
		r[m++] = r[i];
	}
	for (size_t i = 0; i < m; i++) {
		uint64_t size = f->sizes[r[i].layer];
		r[i].off -= r[i].off % SX_BLOCK;
		r[i].end = r[i].end > size - (size % SX_BLOCK) ? size : r[i].end + (SX_BLOCK - r[i].end % SX_BLOCK) % SX_BLOCK;
		/* Rounded out, neighbours can share a block: a run that overlapped one in flight would wait for it. */
		if (i > 0 && r[i - 1].layer == r[i].layer && r[i].off < r[i - 1].end)
			r[i].off = r[i - 1].end;
	}
	*count = m;
	return r;
}

/*
 * Hydration's GETs: `streams` at a time (8 by default) from one queue (the small-file runs, then
 * every remote layer in blocks), so a stream that finishes takes the next job at once: no phase
 * waits for the slowest GET of the one before, and over a 40 ms link the streams' round trips
 * overlap each other's transfers. Every stream waits until the first read's fetch is answered
 * (or SX_HYDRATE_HOLD_MS pass): that read has the link to itself (issue 9's first-read figure).
 */
/* Small-file runs are at most this long, so that every stream fetches them before any block. */
#define SX_SMALL_RUN (2u << 20)

struct hydrate_queue {
	struct sx_frames *f;
	const struct sx_run *jobs;
	size_t count;
	size_t span;
	_Atomic size_t next;
	_Atomic bool *failed; /* per layer: a failed job stops that layer's hydration */
};

/*
 * Background threads run niced: on a small host the workload, and the threads serving its
 * reads, get the CPU first, and hydration's copies take what is left. (Linux: per thread.)
 */
#define SX_BACKGROUND_NICE 10
static void background_priority(void)
{
	/* Best effort: refused, hydration just competes at the same priority. */
	(void)setpriority(PRIO_PROCESS, (id_t)gettid(), SX_BACKGROUND_NICE);
}

static void *hydrate_stream(void *p)
{
	struct hydrate_queue *q = p;
	background_priority();
	sx_frames_hold_for_first_read(q->f);
	for (;;) {
		size_t i = atomic_fetch_add(&q->next, 1);
		if (i >= q->count || atomic_load(&q->f->stop))
			return NULL;
		const struct sx_run *r = &q->jobs[i];
		if (!atomic_load(&q->failed[r->layer]) && !hydrate_range(q->f, r->layer, r->off, r->end, q->span))
			atomic_store(&q->failed[r->layer], true);
	}
}

/* The small-file runs (if the index can be walked), then every remote layer in span blocks, top layer first. */
static struct sx_run *hydrate_jobs(struct sx_frames *f, size_t span, bool small_first, size_t *count)
{
	size_t nruns = 0;
	struct sx_run *runs = small_first ? small_runs(f, SX_SMALL_RUN, &nruns) : NULL;
	size_t blocks = 0;
	for (uint32_t l = 0; l < f->idx->hdr->layer_count; l++)
		if (f->remote[l].remote)
			blocks += (size_t)((f->sizes[l] + span - 1) / span);
	struct sx_run *jobs = realloc(runs, (nruns + blocks ? nruns + blocks : 1) * sizeof(*jobs));
	if (!jobs) {
		free(runs);
		*count = 0;
		return NULL;
	}
	size_t k = nruns;
	for (uint32_t l = f->idx->hdr->layer_count; l-- > 0;)
		for (uint64_t b = 0; f->remote[l].remote && b < f->sizes[l]; b += span)
			jobs[k++] = (struct sx_run){ .off = b, .end = b + span < f->sizes[l] ? b + span : f->sizes[l], .layer = l };
	*count = k;
	return jobs;
}

/* True when every remote layer is now whole in its mirror (no job failed, none was skipped). */
static bool hydrate_whole(struct sx_frames *f, size_t span, unsigned streams)
{
	uint32_t n = f->idx->hdr->layer_count;
	_Atomic bool *failed = calloc(n ? n : 1, sizeof(*failed));
	size_t count = 0;
	struct sx_run *jobs = failed ? hydrate_jobs(f, span, index_whole(f, 3000), &count) : NULL;
	if (!jobs) {
		free(failed);
		return false; /* out of memory: reads still fetch what they need */
	}
	struct hydrate_queue q = { .f = f, .jobs = jobs, .count = count, .span = span, .failed = failed };
	atomic_init(&q.next, 0);
	pthread_t t[SX_HYDRATE_STREAMS_MAX];
	bool ok[SX_HYDRATE_STREAMS_MAX] = { false };
	if (streams < 1 || streams > SX_HYDRATE_STREAMS_MAX)
		streams = SX_HYDRATE_STREAMS_MAX;
	/* A stream that cannot start leaves its share to the others: one queue. */
	for (unsigned k = 1; k < streams; k++)
		ok[k] = pthread_create(&t[k], NULL, hydrate_stream, &q) == 0;
	hydrate_stream(&q);
	for (unsigned k = 1; k < streams; k++)
		if (ok[k])
			pthread_join(t[k], NULL);
	bool whole = !atomic_load(&f->stop) && atomic_load(&q.next) >= count;
	for (uint32_t l = 0; l < n; l++)
		whole = whole && !atomic_load(&failed[l]);
	free(jobs);
	free(failed);
	return whole;
}

/*
 * Every remote layer's mirror without a hole. Hydration's own account (every job done) is not
 * enough: the daemon may empty a mirror (the cache budget) while hydration runs, and a marker
 * written after that would report local a view whose bytes are gone.
 */
static bool mirrors_whole(const struct sx_frames *f)
{
	for (uint32_t l = 0; l < f->idx->hdr->layer_count; l++) {
		if (!f->remote[l].remote || f->sizes[l] == 0)
			continue;
		off_t h = lseek(f->fds[l], 0, SEEK_HOLE);
		if (h < 0 || (uint64_t)h < f->sizes[l])
			return false;
	}
	return true;
}

/*
 * The --hydrated-file: every remote layer is in its mirror (written atomically). Checked before
 * and again after it is written: a mirror emptied in between (the daemon truncates first, then
 * removes the marker) takes the marker away again, whichever side goes last.
 */
static void mark_hydrated(const struct sx_frames *f, const char *path)
{
	char tmp[PATH_MAX];
	int fd;
	if (!mirrors_whole(f)) {
		fprintf(stderr, "strata-fuse: hydration ended with holes in a mirror (emptied meanwhile?): not marked hydrated\n");
		return;
	}
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		fprintf(stderr, "strata-fuse: cannot write %s: %s (status learns of the hydration later)\n", tmp, strerror(errno));
		return;
	}
	bool ok = write(fd, "hydrated\n", 9) == 9;
	ok = close(fd) == 0 && ok;
	if (!ok || rename(tmp, path) != 0) {
		fprintf(stderr, "strata-fuse: cannot write %s: %s (status learns of the hydration later)\n", path, strerror(errno));
		unlink(tmp);
		return;
	}
	if (!mirrors_whole(f))
		unlink(path);
}

/*
 * Coalescing: over a 40 ms, 100 MB/s link a separate GET costs what 4 MB of transfer does, so
 * gaps up to 1 MiB are fetched rather than paid for with another round trip.
 */
#define SX_PREFETCH_GAP (1u << 20)
#define SX_PREFETCH_SPAN (8u << 20)
#define SX_PREFETCH_PARALLEL 4

struct ref_at {
	struct sx_prefetch_ref r;
	uint32_t order;
};

static int by_place(const void *a, const void *b)
{
	const struct ref_at *x = a, *y = b;
	if (x->r.layer != y->r.layer)
		return x->r.layer < y->r.layer ? -1 : 1;
	return x->r.blob_off < y->r.blob_off ? -1 : x->r.blob_off > y->r.blob_off;
}

static int by_first(const void *a, const void *b)
{
	const struct sx_span *x = a, *y = b;
	return x->first < y->first ? -1 : x->first > y->first;
}

int sx_frames_set_prefetch(struct sx_frames *f, const char *path, char *err, size_t errlen)
{
	FILE *in = fopen(path, "re");
	struct sx_prefetch_header h;
	struct ref_at *refs = NULL;
	int rc = -1;
	if (!in) {
		snprintf(err, errlen, "prefetch record %s: %s", path, strerror(errno));
		return -1;
	}
	if (fread(&h, sizeof(h), 1, in) != 1 || h.magic != SX_PREFETCH_MAGIC || h.version != SX_PREFETCH_VERSION ||
	    h.count > SX_PREFETCH_MAX_REFS) {
		snprintf(err, errlen, "prefetch record %s: not a version %u record", path, SX_PREFETCH_VERSION);
		goto out;
	}
	refs = malloc((h.count ? h.count : 1) * sizeof(*refs));
	if (!refs) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	uint32_t n = 0;
	for (uint32_t i = 0; i < h.count; i++) {
		struct sx_prefetch_ref r;
		if (fread(&r, sizeof(r), 1, in) != 1) {
			snprintf(err, errlen, "prefetch record %s: shorter than its %u refs", path, h.count);
			goto out;
		}
		/* Only frames this process fetches, inside their blob. */
		if (r.layer >= f->idx->hdr->layer_count || !f->remote[r.layer].remote || r.blob_len == 0 ||
		    r.blob_off > f->sizes[r.layer] || r.blob_len > f->sizes[r.layer] - r.blob_off)
			continue;
		refs[n].r = r;
		refs[n].order = i;
		n++;
	}
	qsort(refs, n, sizeof(*refs), by_place);
	struct sx_span *spans = malloc((n ? n : 1) * sizeof(*spans));
	if (!spans) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	size_t ns = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct ref_at *a = &refs[i];
		uint64_t end = a->r.blob_off + a->r.blob_len;
		struct sx_span *s = ns ? &spans[ns - 1] : NULL;
		if (s && s->layer == a->r.layer && a->r.blob_off <= s->end + SX_PREFETCH_GAP && end - s->off <= SX_PREFETCH_SPAN) {
			if (end > s->end)
				s->end = end;
			if (a->order < s->first)
				s->first = a->order;
			continue;
		}
		spans[ns++] = (struct sx_span){ .off = a->r.blob_off, .end = end, .layer = a->r.layer, .first = a->order };
	}
	qsort(spans, ns, sizeof(*spans), by_first);
	free(f->spans);
	f->spans = spans;
	f->nspans = ns;
	rc = 0;
out:
	free(refs);
	fclose(in);
	return rc;
}

/* One prefetch worker: spans in order until none are left. */
static void *prefetch_worker(void *p)
{
	struct sx_frames *f = p;
	for (;;) {
		size_t i = atomic_fetch_add(&f->next_span, 1);
		if (i >= f->nspans || atomic_load(&f->stop))
			return NULL;
		const struct sx_span *s = &f->spans[i];
		if (present(f->fds[s->layer], s->off, s->end - s->off))
			continue;
		char why[256];
		if (fetch_absent(f, s->layer, s->off, s->end - s->off, why, sizeof(why)) < 0)
			fprintf(stderr, "strata-fuse: prefetch of layer %u bytes %llu+%llu: %s (read on demand instead)\n", s->layer,
				(unsigned long long)s->off, (unsigned long long)(s->end - s->off), why);
	}
}

struct hydrate_args {
	struct sx_frames *f;
	size_t span;
	bool whole;
	unsigned streams;
	const char *done_path; /* written once every remote layer is whole, or NULL */
};

static void *hydrate_main(void *p)
{
	struct hydrate_args a = *(struct hydrate_args *)p;
	free(p);
	struct sx_frames *f = a.f;
	uint32_t n = f->idx->hdr->layer_count;
	/*
	 * The record of first reads, several GETs at a time, alongside hydration (not before it: its
	 * many small GETs are bound by round trips, hydration's by the link).
	 */
	pthread_t helpers[SX_PREFETCH_PARALLEL];
	int started = 0;
	for (int i = 0; i < SX_PREFETCH_PARALLEL && (size_t)i < f->nspans; i++)
		if (pthread_create(&helpers[i], NULL, prefetch_worker, f) == 0)
			started++;
	if (started == 0)
		prefetch_worker(f);
	/* The prioritized files of every layer first, then each layer whole, top layer first. */
	for (uint32_t l = 0; l < n; l++) {
		const struct sx_layer *ly = &f->idx->layers[l];
		if (f->remote[l].remote && ly->prefetch_len > 0 && ly->prefetch_off < f->sizes[l]) {
			uint64_t e = ly->prefetch_off + ly->prefetch_len;
			hydrate_range(f, l, ly->prefetch_off, e < f->sizes[l] ? e : f->sizes[l], a.span);
		}
	}
	if (a.whole && hydrate_whole(f, a.span, a.streams) && a.done_path)
		mark_hydrated(f, a.done_path);
	for (int i = 0; i < started; i++)
		pthread_join(helpers[i], NULL);
	atomic_store(&f->hydrated, true);
	return NULL;
}

static bool hydrate_range(struct sx_frames *f, uint32_t layer, uint64_t a, uint64_t b, size_t span);

static void background_priority(void);

static void *readahead_worker(void *p)
{
	struct sx_frames *f = p;
	background_priority();
	pthread_mutex_lock(&f->ra_lock);
	while (!atomic_load(&f->stop)) {
		if (f->ra_count == 0) {
			pthread_cond_wait(&f->ra_cond, &f->ra_lock);
			continue;
		}
		/* Newest first: the read that just missed is where the workload is now. */
		struct sx_ra r = f->raq[(f->ra_head + f->ra_count - 1) % SX_RA_SLOTS];
		f->ra_count--;
		pthread_mutex_unlock(&f->ra_lock);
		hydrate_range(f, r.layer, r.off, r.off + r.len, r.len ? r.len : 1);
		pthread_mutex_lock(&f->ra_lock);
	}
	pthread_mutex_unlock(&f->ra_lock);
	atomic_fetch_sub(&f->ra_running, 1);
	return NULL;
}

int sx_frames_hydrate(struct sx_frames *f, size_t span, bool whole, unsigned streams, const char *done_path, char *err,
		      size_t errlen)
{
	for (int i = 0; f->ra_span > 0 && i < SX_RA_WORKERS; i++) {
		pthread_t t;
		atomic_fetch_add(&f->ra_running, 1);
		if (pthread_create(&t, NULL, readahead_worker, f) != 0) {
			atomic_fetch_sub(&f->ra_running, 1);
			break; /* fewer workers: reads still fetch what they need */
		}
		pthread_detach(t);
	}
	struct hydrate_args *a = malloc(sizeof(*a));
	if (!a) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	a->f = f;
	a->span = span;
	a->whole = whole;
	a->streams = streams;
	a->done_path = done_path;
	int rc = pthread_create(&f->hydrator, NULL, hydrate_main, a);
	if (rc != 0) {
		free(a);
		snprintf(err, errlen, "cannot start the hydration thread: %s", strerror(rc));
		return -1;
	}
	f->hydrating = true;
	return 0;
}

void sx_frames_free(struct sx_frames *f)
{
	if (!f)
		return;
	atomic_store(&f->stop, true);
	pthread_mutex_lock(&f->first_lock);
	pthread_cond_broadcast(&f->first_cond);
	pthread_mutex_unlock(&f->first_lock);
	pthread_mutex_lock(&f->ra_lock);
	pthread_cond_broadcast(&f->ra_cond);
	pthread_mutex_unlock(&f->ra_lock);
	for (int i = 0; i < 50 && atomic_load(&f->ra_running) > 0; i++) {
		struct timespec t = { 0, 2000000 };
		nanosleep(&t, NULL);
	}
	if (atomic_load(&f->ra_running) > 0)
		return; /* a readahead GET in flight: left to the exit */
	if (f->hydrating) {
		/* A GET in flight may take up to its deadline: an exiting process does not wait for it. */
		for (int i = 0; i < 50 && !atomic_load(&f->hydrated); i++) {
			struct timespec t = { 0, 2000000 };
			nanosleep(&t, NULL);
		}
		if (!atomic_load(&f->hydrated))
			return; /* left to the exit */
		pthread_join(f->hydrator, NULL);
	}
	for (uint32_t i = 0; i <= f->idx->hdr->layer_count; i++)
		free(f->remote[i].url);
	free(f->remote);
	free(f->spans);
	pthread_mutex_destroy(&f->url_lock);
	pthread_cond_destroy(&f->ra_cond);
	pthread_mutex_destroy(&f->ra_lock);
	pthread_cond_destroy(&f->fl_done);
	pthread_mutex_destroy(&f->fl_lock);
	pthread_cond_destroy(&f->first_cond);
	pthread_mutex_destroy(&f->first_lock);
	for (struct sx_entry *e = f->head; e;) {
		struct sx_entry *next = e->next;
		entry_free(e);
		e = next;
	}
	for (uint32_t i = 0; i <= f->idx->hdr->layer_count; i++)
		if (f->fds[i] >= 0)
			close(f->fds[i]);
	for (size_t i = 0; i < f->dctx.n; i++)
		ZSTD_freeDCtx(f->dctx.free[i]);
	free(f->dctx.free);
	free(f->fds);
	free(f->sizes);
	free(f->table);
	pthread_cond_destroy(&f->loaded);
	pthread_mutex_destroy(&f->lock);
	free(f);
}
