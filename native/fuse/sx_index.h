/*
 * The read-only index of a merged view. Two ways to have it:
 *
 * - flat: an index file (sx_format.h), mmapped; sx_index_open() validates
 *   every reference once, so lookups on the hot path need no bounds checks.
 * - paged: the head of a paged index blob (sx_format.h) alone. The index file
 *   is an anonymous mapping filled a page at a time, when a request first
 *   needs one, through a reader the caller provides (local blob or HTTP
 *   mirror); each page is verified against its digest in the head before it
 *   is used. A node is validated, with every page it refers to loaded, the
 *   first time it is asked for (sx_index_get), by the same rules as a flat
 *   index: what the rest of strata-fuse reads through a validated node is
 *   present and in range.
 */
#ifndef SX_INDEX_H
#define SX_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sx_format.h"

/* Reader flags: DEMAND, a request waits for it (else background); REFETCH, the bytes held did not verify. */
#define SX_READ_DEMAND 1
#define SX_READ_REFETCH 2
/* (ensure_pages only, never passed to the reader) separate runs on threads of their own. */
#define SX_READ_PARALLEL 4
/* Read [off, off+len) of the index blob into buf: 0, or -errno with a reason in why. */
typedef int (*sx_index_read_fn)(void *user, uint64_t off, uint64_t len, void *buf, int flags, char *why, size_t whylen);

struct sx_pager;

struct sx_index {
	void *map;
	size_t map_size;
	const struct sx_header *hdr;
	const struct sx_node *nodes;
	const struct sx_dirent *dirents;
	const struct sx_chunk *chunks;
	const struct sx_xattr *xattrs;
	const struct sx_layer *layers;
	const struct sx_digest *digests;
	const char *strings;
	uint64_t stored_bytes; /* sum of chunk sizes, for statfs */
	struct sx_pager *pager; /* paged only */
};

/* 0 on success; on failure -1 with a message in err (errno-style text). */
int sx_index_open(struct sx_index *idx, const char *path, char *err, size_t errlen);
/* A paged index from its head file; pages come through the reader set with sx_index_set_reader. */
/*
 * Pages loaded before the mount (sx_index_warm): an index of at most this many
 * is loaded whole; a larger one, the first two pages of each section. The
 * control plane seeds the same pages (src/format/restore-index.ts warmPages).
 */
#define SX_WARM_PAGES 12u

int sx_index_open_paged(struct sx_index *idx, const char *head_path, char *err, size_t errlen);
void sx_index_set_reader(struct sx_index *idx, sx_index_read_fn read, void *user);
/* The sha256 of the paged blob (the name of its mirror), or NULL for a flat index. */
const uint8_t *sx_index_blob_digest(const struct sx_index *idx);
uint64_t sx_index_blob_size(const struct sx_index *idx);
void sx_index_close(struct sx_index *idx);

/*
 * Node ino, validated (a paged index loads what it needs first): 0, -ENOENT
 * when ino is out of range, -EIO (reason in why) when its pages cannot be
 * loaded or it breaks a rule. Everything reached through it may be used
 * without checks.
 */
int sx_index_get(struct sx_index *idx, uint64_t ino, const struct sx_node **out, char *why, size_t whylen);
/*
 * A node whose page is known to be present (a child or the parent of a node
 * returned by sx_index_get): its own fields only, not yet validated. NULL when
 * out of range.
 */
const struct sx_node *sx_index_node(const struct sx_index *idx, uint64_t ino);
/* Child inode of dir (from sx_index_get) named name (len bytes), or 0. */
uint32_t sx_index_lookup(const struct sx_index *idx, const struct sx_node *dir, const char *name, size_t len);
/* Index of the first chunk of file that ends after off (may be first+count). */
uint32_t sx_index_chunk_at(const struct sx_index *idx, const struct sx_node *file, uint64_t off);

/*
 * Paged: load, in one round of reads, what the root needs (a small index:
 * every page) and validate the root: called before the mount, so a damaged
 * or unreachable index is refused with nothing mounted, and the first ls
 * waits for nothing. 0, or -1 with a reason.
 */
/*
 * Pages of a paged index from a seed file (sx_format.h, struct sx_seed), before
 * the mount: each verified as a fetched page is; a bad one stays absent (and is
 * fetched) with a log line. Returns the pages seeded, or -1 (err) when the file
 * cannot be read.
 */
int sx_index_seed(struct sx_index *idx, const char *path, char *err, size_t errlen);
int sx_index_warm(struct sx_index *idx, char *err, size_t errlen);
/*
 * Paged: load every page (background reads; `parallel`: runs at once, for a
 * remote blob, where round trips and not the CPU bound it) and validate every node; then,
 * when out is set, write the whole index file there (atomically: a temporary
 * file renamed into place) for the control plane. 0, or -1 with a reason.
 */
int sx_index_load_all(struct sx_index *idx, const char *out, bool parallel, char *err, size_t errlen);
/* Paged: pages loaded so far, and in all. */
void sx_index_pages(const struct sx_index *idx, uint32_t *loaded, uint32_t *total);

static inline const char *sx_index_str(const struct sx_index *idx, uint64_t off)
{
	return idx->strings + off;
}

#endif
