/*
 * Index loading and validation. The index is written by our own TypeScript,
 * but it is still checked in full: a truncated or stale file must give a clear
 * error, never a wild pointer inside a FUSE callback. A flat index is checked
 * whole at open; a paged one node by node, each the first time it is asked
 * for, once the pages it refers to are loaded and verified (sx_index.h).
 */
#include "sx_index.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zstd.h>

#define SX_MAX_INDEX (1ull << 30)   /* largest index strata builds (src/format/restore-index.ts) */
#define SX_MAX_HEAD (64u << 20)
#define SX_RUN_PAGES 32u            /* pages loaded with one read */
#define SX_RUN_THREADS 8u           /* runs of one request loaded at once */

enum { PG_ABSENT = 0, PG_LOADING = 1, PG_READY = 2 };
enum { ND_UNKNOWN = 0, ND_VALID = 1, ND_BAD = 2 };

struct sx_pager {
	void *head; /* the head file, whole */
	const struct sx_head *h;
	const struct sx_page *pages;
	uint32_t page_size, page_count;
	_Atomic uint8_t *pstate; /* per page; changes under plock */
	_Atomic uint8_t *nstate; /* per node; changes under vlock */
	uint8_t *named;          /* under vlock: see check_node */
	pthread_mutex_t plock;
	pthread_cond_t pcond;
	pthread_mutex_t vlock;
	sx_index_read_fn read;
	void *user;
	atomic_uint loaded;
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

/* A section of count records of rec bytes at off must lie inside the file. */
static bool section_ok(uint64_t off, uint64_t count, uint64_t rec, uint64_t total)
{
	if (off % 8 != 0 || off > total)
		return false;
	if (count != 0 && rec > (total - off) / count)
		return false;
	return true;
}

/* A string reference must lie inside the strings section and end with NUL. */
static bool string_ok(const struct sx_index *idx, uint64_t off, uint64_t len)
{
	uint64_t n = idx->hdr->strings_size;
	if (off > n || len >= n - off)
		return false;
	return idx->strings[off + len] == '\0';
}

/*
 * named: one bit per node, set once a dirent names that directory. With the
 * parent rules below it makes the directory graph a tree rooted at inode 1, so
 * nothing walking the view (find, du, our own "..") can loop.
 */
static int check_node(struct sx_index *idx, uint32_t i, uint8_t *named, char *err, size_t errlen)
{
	const struct sx_header *h = idx->hdr;
	const struct sx_node *n = &idx->nodes[i];
	uint32_t type = n->mode & S_IFMT;

	/* Breadth-first numbering: a parent always comes earlier, so parent chains end at the root. */
	if (i == 0 ? n->parent != 1 : (n->parent == 0 || n->parent > i))
		return fail(err, errlen, "node %u: parent %u is not an earlier node", i + 1, n->parent);
	if ((idx->nodes[n->parent - 1].mode & S_IFMT) != S_IFDIR)
		return fail(err, errlen, "node %u: parent is not a directory", i + 1);
	/* The control plane gave the workspace's upper the head's copy of the root. */
	if (i == 0 && idx->pager && memcmp(n, &idx->pager->h->root, sizeof(*n)) != 0)
		return fail(err, errlen, "node 1 differs from the root in the index head");
	if (n->nlink == 0 || n->mtime_nsec > 999999999u)
		return fail(err, errlen, "node %u: bad nlink or mtime", i + 1);
	if ((uint64_t)n->xattr_first + n->xattr_count > h->xattr_count)
		return fail(err, errlen, "node %u: xattrs out of range", i + 1);
	for (uint32_t k = 0; k < n->xattr_count; k++) {
		const struct sx_xattr *x = &idx->xattrs[n->xattr_first + k];
		if (x->name_len == 0 || x->name_len > 255 || !string_ok(idx, x->name_off, x->name_len) ||
		    !string_ok(idx, x->value_off, x->value_len))
			return fail(err, errlen, "node %u: bad xattr", i + 1);
	}
	switch (type) {
	case S_IFDIR: {
		if ((uint64_t)n->first + n->count > h->dirent_count)
			return fail(err, errlen, "node %u: dirents out of range", i + 1);
		const struct sx_dirent *prev = NULL;
		for (uint32_t k = 0; k < n->count; k++) {
			const struct sx_dirent *d = &idx->dirents[n->first + k];
			if (d->ino == 0 || d->ino > h->node_count)
				return fail(err, errlen, "node %u: dirent with bad inode", i + 1);
			if (d->ino == 1)
				return fail(err, errlen, "node %u: dirent names the root", i + 1);
			if ((idx->nodes[d->ino - 1].mode & S_IFMT) == S_IFDIR) {
				/* A directory lives in exactly one place: its parent, once. */
				uint32_t p = idx->nodes[d->ino - 1].parent;
				if (p != i + 1)
					return fail(err, errlen, "node %u: dirent names directory %u, whose parent is %u",
						    i + 1, d->ino, p);
				uint32_t b = d->ino - 1;
				if (named[b / 8] & (1u << (b % 8)))
					return fail(err, errlen, "node %u: directory %u is named by more than one dirent",
						    i + 1, d->ino);
				named[b / 8] |= (uint8_t)(1u << (b % 8));
			}
			if (d->name_len == 0 || d->name_len > 255 || !string_ok(idx, d->name_off, d->name_len))
				return fail(err, errlen, "node %u: dirent with bad name", i + 1);
			const char *name = sx_index_str(idx, d->name_off);
			if (memchr(name, '/', d->name_len) || memchr(name, '\0', d->name_len) ||
			    (d->name_len == 1 && name[0] == '.') || (d->name_len == 2 && name[0] == '.' && name[1] == '.'))
				return fail(err, errlen, "node %u: dirent with bad name", i + 1);
			if (prev) {
				/* Sorted and unique, so lookup can bisect. */
				size_t m = prev->name_len < d->name_len ? prev->name_len : d->name_len;
				int c = memcmp(sx_index_str(idx, prev->name_off), name, m);
				if (c > 0 || (c == 0 && prev->name_len >= d->name_len))
					return fail(err, errlen, "node %u: dirents not sorted", i + 1);
			}
			prev = d;
		}
		break;
	}
	case S_IFREG: {
		if ((uint64_t)n->first + n->count > h->chunk_count)
			return fail(err, errlen, "node %u: chunks out of range", i + 1);
		uint64_t end = 0;
		for (uint32_t k = 0; k < n->count; k++) {
			const struct sx_chunk *c = &idx->chunks[n->first + k];
			if (c->size == 0 || c->blob_len == 0 || c->layer >= h->layer_count || c->file_off < end ||
			    c->file_off > n->size || c->size > n->size - c->file_off ||
			    c->blob_len > UINT64_MAX - c->blob_off)
				return fail(err, errlen, "node %u: bad chunk %u", i + 1, k);
			if (c->digest >= h->digest_count)
				return fail(err, errlen, "node %u: chunk %u: digest %u out of range (%u digests)", i + 1, k,
					    c->digest, h->digest_count);
			/* The cache entry is the whole frame: it must hold this file's bytes and stay bounded. */
			if (c->frame_size > SX_MAX_FRAME)
				return fail(err, errlen, "node %u: chunk %u: frame of %u bytes exceeds %u", i + 1, k,
					    c->frame_size, SX_MAX_FRAME);
			if ((uint64_t)c->frame_off + c->size > c->frame_size)
				return fail(err, errlen, "node %u: chunk %u: bytes %u+%u lie outside its %u-byte frame",
					    i + 1, k, c->frame_off, c->size, c->frame_size);
			end = c->file_off + c->size;
			if (!idx->pager) /* a paged index's head carries the sum */
				idx->stored_bytes += c->size;
		}
		break;
	}
	case S_IFLNK:
		if (n->target_len == 0 || !string_ok(idx, n->target_off, n->target_len) ||
		    memchr(sx_index_str(idx, n->target_off), '\0', n->target_len))
			return fail(err, errlen, "node %u: bad symlink target", i + 1);
		break;
	case S_IFCHR:
	case S_IFBLK:
	case S_IFIFO:
	case S_IFSOCK:
		break;
	default:
		return fail(err, errlen, "node %u: unknown type %o", i + 1, type);
	}
	return 0;
}


/* Header fields every index must have right, flat or paged: sections inside total bytes. */
static int check_header(const struct sx_header *h, uint64_t total, const char *where, char *err, size_t errlen)
{
	if (memcmp(h->magic, SX_INDEX_MAGIC, 8) != 0)
		return fail(err, errlen, "%s: not a strata index", where);
	if (h->version != SX_INDEX_VERSION)
		return fail(err, errlen, "%s: index version %u, expected %u", where, h->version, SX_INDEX_VERSION);
	if (h->header_size != sizeof(*h))
		return fail(err, errlen, "%s: index header of %u bytes, expected %zu", where, h->header_size, sizeof(*h));
	if (total < sizeof(*h))
		return fail(err, errlen, "%s: too short for an index", where);
	if (h->total_size != total || h->node_count == 0 ||
	    !section_ok(h->nodes_off, h->node_count, sizeof(struct sx_node), total) ||
	    !section_ok(h->dirents_off, h->dirent_count, sizeof(struct sx_dirent), total) ||
	    !section_ok(h->chunks_off, h->chunk_count, sizeof(struct sx_chunk), total) ||
	    !section_ok(h->xattrs_off, h->xattr_count, sizeof(struct sx_xattr), total) ||
	    !section_ok(h->layers_off, h->layer_count, sizeof(struct sx_layer), total) ||
	    !section_ok(h->digests_off, h->digest_count, sizeof(struct sx_digest), total) ||
	    !section_ok(h->strings_off, h->strings_size, 1, total) || h->strings_size == 0)
		return fail(err, errlen, "%s: truncated or inconsistent index", where);
	return 0;
}

static int check_layers(const struct sx_layer *layers, uint32_t n, const char *where, char *err, size_t errlen)
{
	for (uint32_t i = 0; i < n; i++)
		if (layers[i].prefetch_len > UINT64_MAX - layers[i].prefetch_off)
			return fail(err, errlen, "%s: layer %u: prefetch region overflows", where, i);
	return 0;
}

static void point_sections(struct sx_index *idx, const struct sx_header *h)
{
	const char *base = idx->map;
	idx->hdr = h;
	idx->nodes = (const void *)(base + h->nodes_off);
	idx->dirents = (const void *)(base + h->dirents_off);
	idx->chunks = (const void *)(base + h->chunks_off);
	idx->xattrs = (const void *)(base + h->xattrs_off);
	idx->layers = (const void *)(base + h->layers_off);
	idx->digests = (const void *)(base + h->digests_off);
	idx->strings = base + h->strings_off;
}

int sx_index_open(struct sx_index *idx, const char *path, char *err, size_t errlen)
{
	memset(idx, 0, sizeof(*idx));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, errlen, "open %s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return fail(err, errlen, "stat %s: %s", path, strerror(e));
	}
	/* Magic, version and header_size (16 bytes) are all that is read before the version is known. */
	if ((uint64_t)st.st_size < offsetof(struct sx_header, node_count)) {
		close(fd);
		return fail(err, errlen, "%s: too short for an index", path);
	}
	void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	int e = errno;
	close(fd); /* the mapping keeps the file */
	if (map == MAP_FAILED)
		return fail(err, errlen, "mmap %s: %s", path, strerror(e));
	idx->map = map;
	idx->map_size = (size_t)st.st_size;

	/* check_header reads past the first 16 bytes only once it knows the file holds a header. */
	const struct sx_header *h = map;
	if (check_header(h, (uint64_t)st.st_size, path, err, errlen) < 0)
		goto out;
	point_sections(idx, h);
	if ((idx->nodes[0].mode & S_IFMT) != S_IFDIR || idx->nodes[0].parent != 1) {
		fail(err, errlen, "%s: node 1 is not the root directory", path);
		goto out;
	}
	if (check_layers(idx->layers, h->layer_count, path, err, errlen) < 0)
		goto out;
	uint8_t *named = calloc((size_t)h->node_count / 8 + 1, 1);
	if (!named) {
		fail(err, errlen, "%s: out of memory", path);
		goto out;
	}
	/* Node messages follow "PATH: ", like every other refusal. */
	int pre = snprintf(err, errlen, "%s: ", path);
	size_t skip = pre > 0 && (size_t)pre < errlen ? (size_t)pre : 0;
	for (uint32_t i = 0; i < h->node_count; i++) {
		if (check_node(idx, i, named, err + skip, errlen - skip) < 0) {
			free(named);
			goto out;
		}
	}
	free(named);
	return 0;
out:
	munmap(map, idx->map_size);
	memset(idx, 0, sizeof(*idx));
	return -1;
}

/* ---- paged ----------------------------------------------------------------- */

static void pager_free(struct sx_pager *pg)
{
	if (!pg)
		return;
	free(pg->head);
	free((void *)pg->pstate);
	free((void *)pg->nstate);
	free(pg->named);
	pthread_mutex_destroy(&pg->plock);
	pthread_cond_destroy(&pg->pcond);
	pthread_mutex_destroy(&pg->vlock);
	free(pg);
}

/* The head file, whole (it is small: a few dozen bytes per page and per layer). */
static void *read_head(const char *path, size_t *len, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		fail(err, errlen, "index head %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	if (st.st_size < (off_t)sizeof(struct sx_head) || st.st_size > (off_t)SX_MAX_HEAD) {
		close(fd);
		fail(err, errlen, "index head %s: %lld bytes is not the size of an index head", path, (long long)st.st_size);
		return NULL;
	}
	void *buf = malloc((size_t)st.st_size);
	size_t got = 0;
	while (buf && got < (size_t)st.st_size) {
		ssize_t r = pread(fd, (char *)buf + got, (size_t)st.st_size - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			fail(err, errlen, "index head %s: %s", path, r < 0 ? strerror(errno) : "shorter than it was");
			free(buf);
			close(fd);
			return NULL;
		}
		got += (size_t)r;
	}
	close(fd);
	if (!buf)
		fail(err, errlen, "index head %s: out of memory", path);
	*len = (size_t)st.st_size;
	return buf;
}

int sx_index_open_paged(struct sx_index *idx, const char *head_path, char *err, size_t errlen)
{
	memset(idx, 0, sizeof(*idx));
	size_t len = 0;
	void *buf = read_head(head_path, &len, err, errlen);
	if (!buf)
		return -1;
	struct sx_pager *pg = calloc(1, sizeof(*pg));
	if (!pg) {
		free(buf);
		return fail(err, errlen, "out of memory");
	}
	pg->head = buf;
	pthread_mutex_init(&pg->plock, NULL);
	pthread_cond_init(&pg->pcond, NULL);
	pthread_mutex_init(&pg->vlock, NULL);
	const struct sx_head *h = buf;
	const struct sx_header *ih = &h->index;
	pg->h = h;
	if (memcmp(h->magic, SX_HEAD_MAGIC, 8) != 0) {
		fail(err, errlen, "%s: not a strata index head", head_path);
		goto out;
	}
	if (h->version != SX_HEAD_VERSION || h->head_size != sizeof(*h)) {
		fail(err, errlen, "%s: index head version %u (%u bytes), expected %u (%zu)", head_path, h->version, h->head_size,
		     SX_HEAD_VERSION, sizeof(*h));
		goto out;
	}
	if (h->page_size < SX_PAGE_MIN || h->page_size > SX_PAGE_MAX || (h->page_size & (h->page_size - 1)) != 0) {
		fail(err, errlen, "%s: page size %u is not a power of two in [%u, %u]", head_path, h->page_size, SX_PAGE_MIN, SX_PAGE_MAX);
		goto out;
	}
	if (ih->total_size > SX_MAX_INDEX || check_header(ih, ih->total_size, head_path, err, errlen) < 0) {
		if (ih->total_size > SX_MAX_INDEX)
			fail(err, errlen, "%s: an index of %llu bytes is more than strata reads", head_path, (unsigned long long)ih->total_size);
		goto out;
	}
	uint64_t total = ih->total_size;
	uint64_t pages = (total + h->page_size - 1) / h->page_size;
	uint64_t want = sizeof(*h) + (uint64_t)ih->layer_count * sizeof(struct sx_layer) + pages * sizeof(struct sx_page) +
			h->root_xattr_bytes;
	if (h->page_count != pages || len != want) {
		fail(err, errlen, "%s: %u pages of %u bytes in a %zu-byte head do not cover a %llu-byte index", head_path, h->page_count,
		     h->page_size, len, (unsigned long long)total);
		goto out;
	}
	const struct sx_layer *layers = (const void *)((const char *)buf + sizeof(*h));
	pg->pages = (const void *)(layers + ih->layer_count);
	pg->page_size = h->page_size;
	pg->page_count = h->page_count;
	uint64_t at = 0;
	for (uint32_t p = 0; p < pg->page_count; p++) {
		const struct sx_page *e = &pg->pages[p];
		if (e->blob_off != at || e->blob_len == 0 || e->blob_len > ZSTD_compressBound(pg->page_size)) {
			fail(err, errlen, "%s: page %u lies at %llu+%u of the blob, not after the page before it", head_path, p,
			     (unsigned long long)e->blob_off, e->blob_len);
			goto out;
		}
		at += e->blob_len;
	}
	if (at != h->blob_size) {
		fail(err, errlen, "%s: pages add up to %llu bytes, the blob has %llu", head_path, (unsigned long long)at,
		     (unsigned long long)h->blob_size);
		goto out;
	}
	if ((h->root.mode & S_IFMT) != S_IFDIR || h->root.parent != 1) {
		fail(err, errlen, "%s: the head's root is not a directory", head_path);
		goto out;
	}
	if (check_layers(layers, ih->layer_count, head_path, err, errlen) < 0)
		goto out;
	pg->pstate = calloc(pg->page_count, 1);
	pg->nstate = calloc(ih->node_count, 1);
	pg->named = calloc((size_t)ih->node_count / 8 + 1, 1);
	if (!pg->pstate || !pg->nstate || !pg->named) {
		fail(err, errlen, "out of memory");
		goto out;
	}
	/* Untouched pages of the mapping cost nothing: only loaded pages take memory. */
	void *map = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED) {
		fail(err, errlen, "mapping a %llu-byte index: %s", (unsigned long long)total, strerror(errno));
		goto out;
	}
	idx->map = map;
	idx->map_size = (size_t)total;
	idx->pager = pg;
	point_sections(idx, ih);
	idx->layers = layers; /* the head's copy: needed before any page is */
	idx->stored_bytes = h->stored_bytes;
	return 0;
out:
	pager_free(pg);
	memset(idx, 0, sizeof(*idx));
	return -1;
}

void sx_index_set_reader(struct sx_index *idx, sx_index_read_fn read, void *user)
{
	if (idx->pager) {
		idx->pager->read = read;
		idx->pager->user = user;
	}
}

const uint8_t *sx_index_blob_digest(const struct sx_index *idx)
{
	return idx->pager ? idx->pager->h->blob_digest : NULL;
}

uint64_t sx_index_blob_size(const struct sx_index *idx)
{
	return idx->pager ? idx->pager->h->blob_size : 0;
}

void sx_index_close(struct sx_index *idx)
{
	if (idx->map)
		munmap(idx->map, idx->map_size);
	pager_free(idx->pager);
	memset(idx, 0, sizeof(*idx));
}

static uint64_t page_len(const struct sx_index *idx, uint32_t p)
{
	const struct sx_pager *pg = idx->pager;
	uint64_t start = (uint64_t)p * pg->page_size;
	uint64_t end = start + pg->page_size;
	return (end > idx->map_size ? idx->map_size : end) - start;
}

/* Decompress page p's frame into its place in the mapping and check it; it is not READY yet. */
static int decode_page(struct sx_index *idx, uint32_t p, const uint8_t *src, char *why, size_t whylen)
{
	struct sx_pager *pg = idx->pager;
	uint8_t *dst = (uint8_t *)idx->map + (uint64_t)p * pg->page_size;
	uint64_t n = page_len(idx, p);
	size_t got = ZSTD_decompress(dst, (size_t)n, src, pg->pages[p].blob_len);
	if (ZSTD_isError(got) || got != n)
		return fail(why, whylen, "page %u of the index does not decompress to its %llu bytes (%s)", p,
			    (unsigned long long)n, ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong size");
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	if (EVP_Digest(dst, (size_t)n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32 ||
	    memcmp(md, pg->pages[p].digest, 32) != 0)
		return fail(why, whylen, "page %u of the index does not match its digest: the store holds a damaged or tampered index", p);
	if (p == 0 && memcmp(dst, &pg->h->index, sizeof(pg->h->index)) != 0)
		return fail(why, whylen, "page 0 of the index disagrees with the index head");
	return 0;
}

/* Load pages [p0, p1], which this thread has claimed (LOADING), with one read; publish them. */
static int load_run(struct sx_index *idx, uint32_t p0, uint32_t p1, int flags, char *why, size_t whylen)
{
	struct sx_pager *pg = idx->pager;
	uint64_t off = pg->pages[p0].blob_off, end = pg->pages[p1].blob_off + pg->pages[p1].blob_len;
	uint8_t *buf = malloc((size_t)(end - off));
	int rc = 0;
	bool ok[SX_RUN_PAGES] = { false };
	if (!buf) {
		rc = -ENOMEM;
		fail(why, whylen, "out of memory for %llu bytes of the index", (unsigned long long)(end - off));
	} else if (!pg->read) {
		rc = -EIO;
		fail(why, whylen, "no source for the index's pages");
	} else
		rc = pg->read(pg->user, off, end - off, buf, flags, why, whylen);
	for (uint32_t p = p0; rc == 0 && p <= p1; p++) {
		const struct sx_page *e = &pg->pages[p];
		if (decode_page(idx, p, buf + (e->blob_off - off), why, whylen) == 0) {
			ok[p - p0] = true;
			continue;
		}
		/* A torn mirror (or a store that changed a byte): the bytes once more, from the store. */
		if (!(flags & SX_READ_REFETCH) && pg->read(pg->user, e->blob_off, e->blob_len, buf + (e->blob_off - off),
							   flags | SX_READ_REFETCH, why, whylen) == 0 &&
		    decode_page(idx, p, buf + (e->blob_off - off), why, whylen) == 0) {
			ok[p - p0] = true;
			continue;
		}
		rc = -EIO;
	}
	free(buf);
	pthread_mutex_lock(&pg->plock);
	for (uint32_t p = p0; p <= p1; p++) {
		atomic_store(&pg->pstate[p], ok[p - p0] ? PG_READY : PG_ABSENT);
		if (ok[p - p0])
			atomic_fetch_add(&pg->loaded, 1);
	}
	pthread_cond_broadcast(&pg->pcond);
	pthread_mutex_unlock(&pg->plock);
	return rc < 0 ? rc : 0;
}

struct run_job {
	struct sx_index *idx;
	uint32_t p0, p1;
	int flags, rc;
	char why[256];
};

static void *run_thread(void *arg)
{
	struct run_job *j = arg;
	j->rc = load_run(j->idx, j->p0, j->p1, j->flags, j->why, sizeof(j->why));
	return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/*
 * Every page in list (n entries, any order, repeats allowed) READY: absent ones
 * are claimed and loaded (neighbours in one read; for a request, separate runs
 * at once, in the background one after the other), ones
 * another thread is loading are waited for. A load that fails fails every
 * request that waited for it (the next request tries again).
 */
static int ensure_pages(struct sx_index *idx, uint32_t *list, size_t n, int flags, char *why, size_t whylen)
{
	struct sx_pager *pg = idx->pager;
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (atomic_load(&pg->pstate[list[i]]) != PG_READY)
			list[m++] = list[i];
	if (m == 0)
		return 0;
	qsort(list, m, sizeof(*list), cmp_u32);
	struct run_job jobs[SX_RUN_THREADS];
	int rc = 0;
	size_t i = 0;
	while (i < m && rc == 0) {
		unsigned njobs = 0;
		pthread_mutex_lock(&pg->plock);
		for (; i < m && njobs < SX_RUN_THREADS; i++) {
			uint32_t p = list[i];
			if (atomic_load(&pg->pstate[p]) != PG_ABSENT)
				continue;
			if (njobs > 0 && jobs[njobs - 1].p1 + 1 == p && p - jobs[njobs - 1].p0 < SX_RUN_PAGES) {
				jobs[njobs - 1].p1 = p;
			} else {
				jobs[njobs] = (struct run_job){ .idx = idx, .p0 = p, .p1 = p, .flags = flags };
				njobs++;
			}
			atomic_store(&pg->pstate[p], PG_LOADING);
		}
		pthread_mutex_unlock(&pg->plock);
		pthread_t tids[SX_RUN_THREADS];
		bool started[SX_RUN_THREADS] = { false };
		/* The first run on this thread, the others on threads of their own: one round trip for all. */
		for (unsigned k = 1; k < njobs && (flags & (SX_READ_DEMAND | SX_READ_PARALLEL)); k++)
			started[k] = pthread_create(&tids[k], NULL, run_thread, &jobs[k]) == 0;
		if (njobs > 0)
			run_thread(&jobs[0]);
		for (unsigned k = 1; k < njobs; k++) {
			if (started[k])
				pthread_join(tids[k], NULL);
			else
				run_thread(&jobs[k]);
		}
		for (unsigned k = 0; k < njobs && rc == 0; k++)
			if (jobs[k].rc < 0) {
				rc = jobs[k].rc;
				snprintf(why, whylen, "%s", jobs[k].why);
			}
	}
	if (rc < 0)
		return rc;
	/* Pages other threads were loading. */
	pthread_mutex_lock(&pg->plock);
	for (size_t k = 0; k < m && rc == 0; k++) {
		while (atomic_load(&pg->pstate[list[k]]) == PG_LOADING)
			pthread_cond_wait(&pg->pcond, &pg->plock);
		if (atomic_load(&pg->pstate[list[k]]) != PG_READY) {
			rc = -EIO;
			fail(why, whylen, "page %u of the index could not be loaded (see the log)", list[k]);
		}
	}
	pthread_mutex_unlock(&pg->plock);
	return rc;
}

/* The pages a node's validation and use read, gathered before they are loaded together. */
struct need {
	uint32_t *pages;
	size_t n, cap;
	bool oom;
};

/* [off, off+len) of the index file, clamped to it (out-of-range references are check_node's to refuse). */
static void need_bytes(struct need *nd, const struct sx_index *idx, uint64_t off, uint64_t len)
{
	if (len == 0 || off >= idx->map_size)
		return;
	if (len > idx->map_size - off)
		len = idx->map_size - off;
	uint32_t shift = (uint32_t)__builtin_ctz(idx->pager->page_size);
	for (uint64_t p = off >> shift; p <= (off + len - 1) >> shift; p++) {
		if (nd->n > 0 && nd->pages[nd->n - 1] == (uint32_t)p)
			continue;
		if (nd->n == nd->cap) {
			size_t cap = nd->cap ? nd->cap * 2 : 16;
			uint32_t *np = realloc(nd->pages, cap * sizeof(*np));
			if (!np) {
				nd->oom = true;
				return;
			}
			nd->pages = np;
			nd->cap = cap;
		}
		nd->pages[nd->n++] = (uint32_t)p;
	}
}

static void need_string(struct need *nd, const struct sx_index *idx, uint64_t off, uint64_t len)
{
	uint64_t n = idx->hdr->strings_size;
	if (off < n && len < n - off)
		need_bytes(nd, idx, idx->hdr->strings_off + off, len + 1);
}

static void need_node(struct need *nd, const struct sx_index *idx, uint64_t ino)
{
	if (ino >= 1 && ino <= idx->hdr->node_count)
		need_bytes(nd, idx, idx->hdr->nodes_off + (ino - 1) * sizeof(struct sx_node), sizeof(struct sx_node));
}

/* present_only: load nothing; 1 if a page is missing (the caller gives up), else 0. */
static int flush_need(struct sx_index *idx, struct need *nd, bool present_only, char *why, size_t whylen)
{
	if (nd->oom) {
		nd->oom = false;
		nd->n = 0;
		return fail(why, whylen, "out of memory");
	}
	int rc = 0;
	if (present_only) {
		for (size_t k = 0; k < nd->n && rc == 0; k++)
			if (atomic_load(&idx->pager->pstate[nd->pages[k]]) != PG_READY)
				rc = 1;
	} else
		rc = ensure_pages(idx, nd->pages, nd->n, SX_READ_DEMAND, why, whylen);
	nd->n = 0;
	return rc;
}

/*
 * Load what node i refers to, in three rounds (each one read per run of pages,
 * runs at once): the node; its parent and its xattr, dirent or chunk records;
 * the names, children and digests those records point to.
 */
static int load_node(struct sx_index *idx, uint32_t i, bool present_only, char *why, size_t whylen)
{
	const struct sx_header *h = idx->hdr;
	struct need nd = { 0 };
	int rc;
	need_node(&nd, idx, (uint64_t)i + 1);
	if ((rc = flush_need(idx, &nd, present_only, why, whylen)) != 0)
		goto out;
	const struct sx_node *n = &idx->nodes[i];
	uint32_t type = n->mode & S_IFMT;
	need_node(&nd, idx, n->parent);
	bool xa = (uint64_t)n->xattr_first + n->xattr_count <= h->xattr_count;
	bool recs = (uint64_t)n->first + n->count <= (type == S_IFDIR ? h->dirent_count : h->chunk_count);
	if (xa)
		need_bytes(&nd, idx, h->xattrs_off + (uint64_t)n->xattr_first * sizeof(struct sx_xattr),
			   (uint64_t)n->xattr_count * sizeof(struct sx_xattr));
	if (type == S_IFDIR && recs)
		need_bytes(&nd, idx, h->dirents_off + (uint64_t)n->first * sizeof(struct sx_dirent),
			   (uint64_t)n->count * sizeof(struct sx_dirent));
	else if (type == S_IFREG && recs)
		need_bytes(&nd, idx, h->chunks_off + (uint64_t)n->first * sizeof(struct sx_chunk),
			   (uint64_t)n->count * sizeof(struct sx_chunk));
	else if (type == S_IFLNK)
		need_string(&nd, idx, n->target_off, n->target_len);
	if ((rc = flush_need(idx, &nd, present_only, why, whylen)) != 0)
		goto out;
	for (uint32_t k = 0; xa && k < n->xattr_count; k++) {
		const struct sx_xattr *x = &idx->xattrs[n->xattr_first + k];
		need_string(&nd, idx, x->name_off, x->name_len);
		need_string(&nd, idx, x->value_off, x->value_len);
	}
	for (uint32_t k = 0; type == S_IFDIR && recs && k < n->count; k++) {
		const struct sx_dirent *d = &idx->dirents[n->first + k];
		need_node(&nd, idx, d->ino);
		need_string(&nd, idx, d->name_off, d->name_len);
	}
	for (uint32_t k = 0; type == S_IFREG && recs && k < n->count; k++) {
		uint32_t dg = idx->chunks[n->first + k].digest;
		if (dg < h->digest_count)
			need_bytes(&nd, idx, h->digests_off + (uint64_t)dg * sizeof(struct sx_digest), sizeof(struct sx_digest));
	}
	rc = flush_need(idx, &nd, present_only, why, whylen);
out:
	free(nd.pages);
	return rc;
}

/* sx_index_get; present_only: validate only if every page the node needs is loaded (1 if not). */
static int get_node(struct sx_index *idx, uint64_t ino, bool present_only, const struct sx_node **out, char *why, size_t whylen)
{
	if (ino == 0 || ino > idx->hdr->node_count)
		return -ENOENT;
	uint32_t i = (uint32_t)(ino - 1);
	struct sx_pager *pg = idx->pager;
	if (!pg || atomic_load(&pg->nstate[i]) == ND_VALID) {
		*out = &idx->nodes[i];
		return 0;
	}
	if (atomic_load(&pg->nstate[i]) == ND_BAD) {
		fail(why, whylen, "node %u of the index breaks its rules (logged when first found)", i + 1);
		return -EIO;
	}
	int rc = load_node(idx, i, present_only, why, whylen);
	if (rc != 0)
		return rc > 0 ? 1 : -EIO;
	pthread_mutex_lock(&pg->vlock);
	if (atomic_load(&pg->nstate[i]) == ND_UNKNOWN) {
		rc = check_node(idx, i, pg->named, why, whylen);
		atomic_store(&pg->nstate[i], rc == 0 ? ND_VALID : ND_BAD);
		if (rc < 0)
			fprintf(stderr, "strata-fuse: the index is refused at %s\n", why);
	}
	int st = atomic_load(&pg->nstate[i]);
	pthread_mutex_unlock(&pg->vlock);
	if (st != ND_VALID) {
		if (rc == 0)
			fail(why, whylen, "node %u of the index breaks its rules (logged when first found)", i + 1);
		return -EIO;
	}
	*out = &idx->nodes[i];
	return 0;
}

int sx_index_seed(struct sx_index *idx, const char *path, char *err, size_t errlen)
{
	struct sx_pager *pg = idx->pager;
	if (!pg)
		return fail(err, errlen, "%s: only a paged index takes a seed", path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, errlen, "%s: %s", path, strerror(errno));
	struct stat st;
	/* At most every page once: the blob and a record header per page. */
	uint64_t cap = sx_index_blob_size(idx) + (uint64_t)pg->page_count * sizeof(struct sx_seed);
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > cap) {
		close(fd);
		return fail(err, errlen, "%s: not a regular file of at most %llu bytes", path, (unsigned long long)cap);
	}
	size_t len = (size_t)st.st_size, got = 0;
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf) {
		close(fd);
		return fail(err, errlen, "%s: out of memory", path);
	}
	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	int seeded = 0;
	char why[256];
	for (size_t at = 0; at + sizeof(struct sx_seed) <= got;) {
		struct sx_seed r;
		memcpy(&r, buf + at, sizeof(r));
		at += sizeof(r);
		if (r.page >= pg->page_count || r.blob_len != pg->pages[r.page].blob_len || r.blob_len > got - at) {
			fprintf(stderr, "strata-fuse: %s: the record at byte %zu names no page of this index; the rest of the seed is ignored\n",
				path, at - sizeof(r));
			break;
		}
		if (atomic_load(&pg->pstate[r.page]) == PG_ABSENT) {
			if (decode_page(idx, r.page, buf + at, why, sizeof(why)) == 0) {
				atomic_store(&pg->pstate[r.page], PG_READY);
				atomic_fetch_add(&pg->loaded, 1);
				seeded++;
			} else
				fprintf(stderr, "strata-fuse: %s: %s; it is fetched instead\n", path, why);
		}
		at += r.blob_len;
	}
	free(buf);
	return seeded;
}

int sx_index_warm(struct sx_index *idx, char *err, size_t errlen)
{
	struct sx_pager *pg = idx->pager;
	if (!pg)
		return 0;
	const struct sx_header *h = idx->hdr;
	uint32_t list[SX_WARM_PAGES + 8];
	size_t n = 0;
	if (pg->page_count <= SX_WARM_PAGES) {
		for (uint32_t p = 0; p < pg->page_count; p++)
			list[n++] = p;
	} else {
		/*
		 * The encoder writes the root and its children first in every section (nodes come
		 * breadth first, records in node order, names and digests as first met): two pages
		 * at each section's start hold the root, its children and theirs.
		 */
		uint32_t shift = (uint32_t)__builtin_ctz(pg->page_size);
		uint64_t starts[] = { 0, h->dirents_off, h->chunks_off, h->xattrs_off, h->digests_off, h->strings_off };
		for (size_t k = 0; k < sizeof(starts) / sizeof(starts[0]); k++)
			for (uint64_t p = starts[k] >> shift; p < pg->page_count && p <= (starts[k] >> shift) + 1; p++)
				list[n++] = (uint32_t)p;
	}
	if (ensure_pages(idx, list, n, SX_READ_DEMAND, err, errlen) < 0)
		return -1;
	const struct sx_node *root;
	if (sx_index_get(idx, 1, &root, err, errlen) < 0)
		return -1;
	/*
	 * The root's children too, where the pages above hold all they need (nothing more is
	 * loaded for them here): a first read of a file at the top waits for its data only.
	 */
	for (uint32_t k = 0; k < root->count; k++) {
		const struct sx_node *n;
		char why[256];
		if (get_node(idx, idx->dirents[root->first + k].ino, true, &n, why, sizeof(why)) < 0)
			fprintf(stderr, "strata-fuse: the index is refused below the root: %s\n", why);
	}
	return 0;
}

int sx_index_get(struct sx_index *idx, uint64_t ino, const struct sx_node **out, char *why, size_t whylen)
{
	return get_node(idx, ino, false, out, why, whylen);
}

static int write_all(int fd, const void *buf, size_t len)
{
	size_t put = 0;
	while (put < len) {
		ssize_t w = write(fd, (const char *)buf + put, len - put);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		put += (size_t)w;
	}
	return 0;
}

int sx_index_load_all(struct sx_index *idx, const char *out, bool parallel, char *err, size_t errlen)
{
	struct sx_pager *pg = idx->pager;
	if (!pg)
		return 0;
	uint32_t list[SX_RUN_PAGES * SX_RUN_THREADS];
	for (uint32_t p = 0; p < pg->page_count;) {
		size_t n = 0;
		for (; p < pg->page_count && n < sizeof(list) / sizeof(list[0]); p++)
			list[n++] = p;
		if (ensure_pages(idx, list, n, parallel ? SX_READ_PARALLEL : 0, err, errlen) < 0)
			return -1;
	}
	for (uint64_t ino = 1; ino <= idx->hdr->node_count; ino++) {
		const struct sx_node *n;
		if (sx_index_get(idx, ino, &n, err, errlen) < 0)
			return -1;
	}
	if (!out)
		return 0;
	size_t tl = strlen(out) + 32;
	char *tmp = malloc(tl);
	if (!tmp)
		return fail(err, errlen, "out of memory");
	snprintf(tmp, tl, "%s.tmp-%ld", out, (long)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	int rc = 0;
	if (fd < 0 || write_all(fd, idx->map, idx->map_size) != 0 || close(fd) != 0 || rename(tmp, out) != 0) {
		rc = fail(err, errlen, "writing %s: %s", out, strerror(errno));
		if (fd >= 0)
			close(fd);
		unlink(tmp);
	}
	free(tmp);
	return rc;
}

void sx_index_pages(const struct sx_index *idx, uint32_t *loaded, uint32_t *total)
{
	*loaded = idx->pager ? atomic_load(&idx->pager->loaded) : 0;
	*total = idx->pager ? idx->pager->page_count : 0;
}

const struct sx_node *sx_index_node(const struct sx_index *idx, uint64_t ino)
{
	/* Paged: callers only name nodes whose page a validated neighbour loaded (sx_index.h). */
	if (ino == 0 || ino > idx->hdr->node_count)
		return NULL;
	return &idx->nodes[ino - 1];
}

uint32_t sx_index_lookup(const struct sx_index *idx, const struct sx_node *dir, const char *name, size_t len)
{
	uint32_t lo = dir->first, hi = dir->first + dir->count;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct sx_dirent *d = &idx->dirents[mid];
		size_t m = d->name_len < len ? d->name_len : len;
		int c = memcmp(sx_index_str(idx, d->name_off), name, m);
		if (c == 0)
			c = d->name_len < len ? -1 : d->name_len > len ? 1 : 0;
		if (c == 0)
			return d->ino;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return 0;
}

uint32_t sx_index_chunk_at(const struct sx_index *idx, const struct sx_node *file, uint64_t off)
{
	uint32_t lo = file->first, hi = file->first + file->count;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct sx_chunk *c = &idx->chunks[mid];
		if (c->file_off + c->size <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}
