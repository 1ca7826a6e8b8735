/*
 * Index loading and validation. The index is written by our own TypeScript,
 * but it is still checked in full: a truncated or stale file must give a clear
 * error at start, never a wild pointer inside a FUSE callback.
 */
#include "sx_index.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

	const struct sx_header *h = map;
	uint64_t total = (uint64_t)st.st_size;
	idx->hdr = h;
	if (memcmp(h->magic, SX_INDEX_MAGIC, 8) != 0)
		goto bad_magic;
	if (h->version != SX_INDEX_VERSION) {
		fail(err, errlen, "%s: index version %u, expected %u", path, h->version, SX_INDEX_VERSION);
		goto out;
	}
	if (h->header_size != sizeof(*h)) {
		fail(err, errlen, "%s: index header of %u bytes, expected %zu", path, h->header_size, sizeof(*h));
		goto out;
	}
	if (total < sizeof(*h)) {
		fail(err, errlen, "%s: too short for an index", path);
		goto out;
	}
	if (h->total_size != total || h->node_count == 0 ||
	    !section_ok(h->nodes_off, h->node_count, sizeof(struct sx_node), total) ||
	    !section_ok(h->dirents_off, h->dirent_count, sizeof(struct sx_dirent), total) ||
	    !section_ok(h->chunks_off, h->chunk_count, sizeof(struct sx_chunk), total) ||
	    !section_ok(h->xattrs_off, h->xattr_count, sizeof(struct sx_xattr), total) ||
	    !section_ok(h->layers_off, h->layer_count, sizeof(struct sx_layer), total) ||
	    !section_ok(h->digests_off, h->digest_count, sizeof(struct sx_digest), total) ||
	    !section_ok(h->strings_off, h->strings_size, 1, total) || h->strings_size == 0) {
		fail(err, errlen, "%s: truncated or inconsistent index", path);
		goto out;
	}
	const char *base = map;
	idx->nodes = (const void *)(base + h->nodes_off);
	idx->dirents = (const void *)(base + h->dirents_off);
	idx->chunks = (const void *)(base + h->chunks_off);
	idx->xattrs = (const void *)(base + h->xattrs_off);
	idx->layers = (const void *)(base + h->layers_off);
	idx->digests = (const void *)(base + h->digests_off);
	idx->strings = base + h->strings_off;
	if ((idx->nodes[0].mode & S_IFMT) != S_IFDIR || idx->nodes[0].parent != 1) {
		fail(err, errlen, "%s: node 1 is not the root directory", path);
		goto out;
	}
	for (uint32_t i = 0; i < h->layer_count; i++) {
		const struct sx_layer *l = &idx->layers[i];
		if (l->prefetch_len > UINT64_MAX - l->prefetch_off) {
			fail(err, errlen, "%s: layer %u: prefetch region overflows", path, i);
			goto out;
		}
	}
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
bad_magic:
	fail(err, errlen, "%s: not a strata index", path);
out:
	munmap(map, idx->map_size);
	memset(idx, 0, sizeof(*idx));
	return -1;
}

void sx_index_close(struct sx_index *idx)
{
	if (idx->map)
		munmap(idx->map, idx->map_size);
	memset(idx, 0, sizeof(*idx));
}

const struct sx_node *sx_index_node(const struct sx_index *idx, uint64_t ino)
{
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
