/*
 * The mmapped, read-only index of a merged view. sx_index_open() validates
 * every reference once, so lookups on the hot path need no bounds checks.
 */
#ifndef SX_INDEX_H
#define SX_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "sx_format.h"

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
};

/* 0 on success; on failure -1 with a message in err (errno-style text). */
int sx_index_open(struct sx_index *idx, const char *path, char *err, size_t errlen);
void sx_index_close(struct sx_index *idx);

/* NULL when ino is out of range. */
const struct sx_node *sx_index_node(const struct sx_index *idx, uint64_t ino);
/* Child inode of dir named name (len bytes), or 0. */
uint32_t sx_index_lookup(const struct sx_index *idx, const struct sx_node *dir, const char *name, size_t len);
/* Index of the first chunk of file that ends after off (may be first+count). */
uint32_t sx_index_chunk_at(const struct sx_index *idx, const struct sx_node *file, uint64_t off);

static inline const char *sx_index_str(const struct sx_index *idx, uint64_t off)
{
	return idx->strings + off;
}

#endif
