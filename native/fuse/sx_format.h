/*
 * On-disk index format and fetcher wire format shared by strata-fuse and the
 * TypeScript side (src/restore/lazy/index-file.ts, src/restore/lazy/fetcher.ts).
 * Everything is little-endian with natural alignment; docs/lazy.md describes
 * the same layout field by field. Change the version when a record changes.
 */
#ifndef SX_FORMAT_H
#define SX_FORMAT_H

#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "strata-fuse maps little-endian records directly; big-endian hosts are not supported"
#endif

/* ---- index file -------------------------------------------------------- */

#define SX_INDEX_MAGIC "STRATAIX" /* 8 bytes, no NUL */
#define SX_INDEX_VERSION 1u

struct sx_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;   /* sizeof(struct sx_header) */
	uint32_t node_count;    /* inode = index + 1; node 0 is the root */
	uint32_t dirent_count;
	uint32_t chunk_count;
	uint32_t xattr_count;
	uint32_t layer_count;
	uint32_t flags;         /* 0 */
	uint64_t nodes_off;     /* every section offset is 8-byte aligned */
	uint64_t dirents_off;
	uint64_t chunks_off;
	uint64_t xattrs_off;
	uint64_t layers_off;
	uint64_t strings_off;
	uint64_t strings_size;
	uint64_t total_size;    /* the file's length */
};

struct sx_node {
	uint32_t mode;          /* st_mode: type bits and 07777 */
	uint32_t uid;
	uint32_t gid;
	uint32_t nlink;
	uint64_t size;          /* files: logical size; symlinks: target length */
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	uint32_t parent;        /* inode of the directory first naming it */
	uint32_t rdev_major;
	uint32_t rdev_minor;
	uint64_t blocks;        /* 512-byte units of stored (non-hole) data */
	uint64_t target_off;    /* symlink target in strings (NUL-terminated) */
	uint32_t target_len;
	uint32_t xattr_first;
	uint32_t xattr_count;
	uint32_t first;         /* dir: first dirent; file: first chunk */
	uint32_t count;         /* dir: dirents; file: chunks */
	uint32_t reserved;
};

/* A directory's dirents are contiguous and sorted bytewise by name. */
struct sx_dirent {
	uint64_t name_off;      /* in strings, NUL-terminated */
	uint32_t name_len;
	uint32_t ino;
};

/* A file's chunks are contiguous, in file order, never overlapping. */
struct sx_chunk {
	uint64_t file_off;
	uint32_t size;          /* uncompressed bytes */
	uint32_t layer;         /* index into the layer table */
	uint64_t blob_off;      /* the compressed frame in the layer blob */
	uint32_t blob_len;
	uint32_t reserved;
	uint8_t digest[32];     /* sha256 of the uncompressed bytes: the cache key */
};

struct sx_xattr {
	uint64_t name_off;
	uint64_t value_off;
	uint32_t name_len;
	uint32_t value_len;
};

struct sx_layer {
	uint8_t digest[32];     /* sha256 of the layer blob */
};

_Static_assert(sizeof(struct sx_header) == 104, "header layout");
_Static_assert(sizeof(struct sx_node) == 88, "node layout");
_Static_assert(sizeof(struct sx_dirent) == 16, "dirent layout");
_Static_assert(sizeof(struct sx_chunk) == 64, "chunk layout");
_Static_assert(sizeof(struct sx_xattr) == 24, "xattr layout");
_Static_assert(sizeof(struct sx_layer) == 32, "layer layout");

/* ---- fetcher socket ---------------------------------------------------- */

#define SX_MSG_MAGIC 0x31465853u  /* "SXF1" */
#define SX_RESP_MAGIC 0x31525853u /* "SXR1" */
#define SX_MSG_FETCH 1u           /* answer with one sx_resp once all are cached */
#define SX_MSG_TOUCH 2u           /* no answer: these chunks were read from the cache */
#define SX_MSG_MAX_REFS 1024u

struct sx_msg {
	uint32_t magic;
	uint32_t type;
	uint64_t id;            /* FETCH: echoed in the answer; TOUCH: 0 */
	uint32_t count;         /* sx_chunk_ref records that follow */
	uint32_t flags;         /* 0 */
};

struct sx_chunk_ref {
	uint8_t layer[32];      /* sha256 of the layer blob */
	uint8_t digest[32];     /* sha256 of the chunk's uncompressed bytes */
	uint64_t blob_off;
	uint32_t blob_len;
	uint32_t size;
};

struct sx_resp {
	uint32_t magic;
	int32_t status;         /* 0: every chunk asked for is in the cache; else an errno */
	uint64_t id;
};

_Static_assert(sizeof(struct sx_msg) == 24, "msg layout");
_Static_assert(sizeof(struct sx_chunk_ref) == 80, "chunk ref layout");
_Static_assert(sizeof(struct sx_resp) == 16, "resp layout");

#endif
