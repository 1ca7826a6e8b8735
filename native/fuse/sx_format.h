/*
 * On-disk index format and fetcher wire format shared by strata-fuse and the
 * TypeScript side (src/restore/lazy/index-file.ts, src/restore/lazy/fetcher.ts).
 * Everything is little-endian with natural alignment; docs/lazy.md describes
 * the same layout field by field. Change the version when a record changes.
 */
#ifndef SX_FORMAT_H
#define SX_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "strata-fuse maps little-endian records directly; big-endian hosts are not supported"
#endif

/* ---- index file -------------------------------------------------------- */

#define SX_INDEX_MAGIC "STRATAIX" /* 8 bytes, no NUL */
#define SX_INDEX_VERSION 2u
#define SX_MAX_FRAME (64u << 20) /* largest uncompressed frame: the size of one cache entry */

struct sx_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;   /* sizeof(struct sx_header) */
	uint32_t node_count;    /* inode = index + 1; node 0 is the root */
	uint32_t dirent_count;
	uint32_t chunk_count;
	uint32_t xattr_count;
	uint32_t layer_count;
	uint32_t digest_count;
	uint64_t nodes_off;     /* every section offset is 8-byte aligned */
	uint64_t dirents_off;
	uint64_t chunks_off;
	uint64_t xattrs_off;
	uint64_t layers_off;
	uint64_t digests_off;
	uint64_t strings_off;
	uint64_t strings_size;
	uint64_t total_size;    /* the file's length */
};

/*
 * Nodes are numbered breadth first: every node but the root has a parent with
 * a lower inode, which is what lets validation rule out directory loops.
 */
struct sx_node {
	uint32_t mode;          /* st_mode: type bits and 07777 */
	uint32_t uid;
	uint32_t gid;
	uint32_t nlink;
	uint64_t size;          /* files: logical size; symlinks: target length */
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	uint32_t parent;        /* inode of the directory first naming it (dirs: the only one) */
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

/*
 * A file's chunks are contiguous, in file order, never overlapping. A chunk is
 * the part of one compressed frame that holds this file's bytes; several files
 * may share a frame, each at its own frame_off.
 */
struct sx_chunk {
	uint64_t file_off;
	uint64_t blob_off;      /* the compressed frame in the layer blob */
	uint32_t blob_len;
	uint32_t size;          /* bytes of this file held in the chunk */
	uint32_t frame_off;     /* where they start in the frame's uncompressed content */
	uint32_t frame_size;    /* uncompressed size of the whole frame = its cache entry */
	uint32_t digest;        /* index into the digest table: the frame's cache key */
	uint32_t layer;         /* index into the layer table */
};

struct sx_xattr {
	uint64_t name_off;
	uint64_t value_off;
	uint32_t name_len;
	uint32_t value_len;
};

struct sx_layer {
	uint8_t digest[32];     /* sha256 of the layer blob */
	uint64_t prefetch_off;  /* the layer's prioritized region in the blob; 0,0 = none */
	uint64_t prefetch_len;
};

/* sha256 of a frame's uncompressed content, stored once however many chunks share it. */
struct sx_digest {
	uint8_t digest[32];
};

_Static_assert(sizeof(struct sx_header) == 112, "header layout");
_Static_assert(sizeof(struct sx_node) == 88, "node layout");
_Static_assert(sizeof(struct sx_dirent) == 16, "dirent layout");
_Static_assert(sizeof(struct sx_chunk) == 40, "chunk layout");
_Static_assert(sizeof(struct sx_xattr) == 24, "xattr layout");
_Static_assert(sizeof(struct sx_layer) == 48, "layer layout");
_Static_assert(sizeof(struct sx_digest) == 32, "digest layout");
_Static_assert(offsetof(struct sx_header, digest_count) == 36 && offsetof(struct sx_header, digests_off) == 80,
	       "header layout");
_Static_assert(offsetof(struct sx_chunk, size) == 20 && offsetof(struct sx_chunk, frame_size) == 28 &&
		       offsetof(struct sx_chunk, layer) == 36,
	       "chunk layout");
_Static_assert(offsetof(struct sx_layer, prefetch_off) == 32, "layer layout");

/* ---- paged index blob and its head ------------------------------------- */

/*
 * A restore index too large to ride in its manifest is stored paged: the index
 * file above, cut into pages of page_size raw bytes (the last one shorter),
 * each compressed as a zstd frame of its own, the frames back to back (so the
 * blob still decompresses, as one stream, to the whole file). The head, which
 * the manifest carries, says where each page's frame lies and what its raw
 * bytes hash to: strata-fuse mounts with the head alone and loads a page when
 * a request first needs it. Layout of the head: struct sx_head, then
 * layer_count struct sx_layer (the index's own layer table), then page_count
 * struct sx_page, then root_xattr_bytes of the root's xattrs (for the control
 * plane: u32 name_len, u32 value_len, name, value, each record padded to 8).
 */
#define SX_HEAD_MAGIC "STRATAPG" /* 8 bytes, no NUL */
#define SX_HEAD_VERSION 1u
#define SX_PAGE_MIN 4096u
#define SX_PAGE_MAX (16u << 20)

struct sx_head {
	char magic[8];
	uint32_t version;
	uint32_t head_size;        /* sizeof(struct sx_head) */
	uint32_t page_size;        /* raw bytes per page: a power of two in [SX_PAGE_MIN, SX_PAGE_MAX] */
	uint32_t page_count;
	uint64_t blob_size;        /* the paged blob: every page's frame, back to back */
	uint64_t stored_bytes;     /* sum of the chunk sizes (statfs) */
	uint8_t blob_digest[32];   /* sha256 of the blob (its name in the store and the host cache) */
	uint32_t root_xattrs;      /* records in the root xattr area */
	uint32_t root_xattr_bytes;
	struct sx_header index;    /* the index's header (the first bytes of page 0) */
	struct sx_node root;       /* its node 0 (the root directory) */
};

struct sx_page {
	uint8_t digest[32];        /* sha256 of the page's raw bytes */
	uint64_t blob_off;         /* its zstd frame in the blob */
	uint32_t blob_len;
	uint32_t reserved;
};

/*
 * A seed of a paged index (--index-seed): pages the control plane already
 * holds, so the mount needs no fetch of its own. A host-local file, never
 * stored: records of struct sx_seed followed by blob_len bytes (the page's
 * zstd frame as the blob holds it), back to back. Each page is verified like
 * a fetched one; a record that does not fit is where the seed ends.
 */
struct sx_seed {
	uint32_t page;
	uint32_t blob_len;
};

_Static_assert(sizeof(struct sx_seed) == 8, "seed layout");
_Static_assert(sizeof(struct sx_head) == 280, "head layout");
_Static_assert(sizeof(struct sx_page) == 48, "page layout");
_Static_assert(offsetof(struct sx_head, index) == 80 && offsetof(struct sx_head, root) == 192, "head layout");

/* ---- fetcher socket ---------------------------------------------------- */

#define SX_MSG_MAGIC 0x31465853u  /* "SXF1" */
#define SX_RESP_MAGIC 0x31525853u /* "SXR1" */
#define SX_MSG_FETCH 1u           /* answer with one sx_resp once all are cached */
#define SX_MSG_TOUCH 2u           /* no answer: these frames were read from the cache */
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
	uint8_t digest[32];     /* sha256 of the frame's uncompressed content (the cache key) */
	uint64_t blob_off;      /* the compressed frame in the layer blob */
	uint32_t blob_len;
	uint32_t size;          /* uncompressed size of the whole frame */
};

struct sx_resp {
	uint32_t magic;
	int32_t status;         /* 0: every frame asked for is in the cache; else an errno */
	uint64_t id;
};

_Static_assert(sizeof(struct sx_msg) == 24, "msg layout");
_Static_assert(sizeof(struct sx_chunk_ref) == 80, "chunk ref layout");
_Static_assert(sizeof(struct sx_resp) == 16, "resp layout");

/*
 * The prefetch record (src/format/prefetch.ts; docs/format.md): what a
 * workspace read first, as frames of its chain's layers, in reading order.
 */
#define SX_PREFETCH_MAGIC 0x46505853u /* "SXPF" */
#define SX_PREFETCH_VERSION 1
#define SX_PREFETCH_MAX_REFS 65536u

struct sx_prefetch_header {
	uint32_t magic;
	uint16_t version;
	uint16_t reserved;
	uint32_t count;
	uint32_t reserved2;
};

struct sx_prefetch_ref {
	uint64_t blob_off;
	uint32_t blob_len;
	uint32_t layer;         /* index into the chain (the index's layer table, then the tail) */
};

_Static_assert(sizeof(struct sx_prefetch_header) == 16, "prefetch header layout");
_Static_assert(sizeof(struct sx_prefetch_ref) == 16, "prefetch ref layout");

#endif
