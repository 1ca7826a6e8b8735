/*
 * Frames read straight from local layer blobs (a file:// store): pread of the
 * compressed frame, zstd decompression, sha256 of the result against the
 * index's digest, kept in a bounded in-memory LRU so a large file read in
 * 128 KiB pieces decompresses each frame once. No other process is involved:
 * a read of a local layer never leaves strata-fuse.
 *
 * Ownership: sx_frames_get hands out a counted reference that the caller
 * returns with sx_frames_put; a frame is freed only when it is out of the LRU
 * and unreferenced. Concurrent misses of one frame load it once (the others
 * wait for that load).
 */
#ifndef SX_FRAMES_H
#define SX_FRAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sx_index.h"

struct sx_frames;

struct sx_frame {
	const uint8_t *data; /* frame_size bytes, verified */
	uint32_t size;
};

/* idx outlives the result; budget: bytes of decompressed frames kept for reuse. */
struct sx_frames *sx_frames_new(const struct sx_index *idx, size_t budget, char *err, size_t errlen);

/*
 * Serve layer `layer` of the index from the blob file at path (opened now;
 * an error is returned and nothing is registered if it cannot be opened).
 * Layers not registered are not direct: sx_frames_direct says which.
 */
int sx_frames_add_blob(struct sx_frames *f, uint32_t layer, const char *path, char *err, size_t errlen);
int sx_frames_direct(const struct sx_frames *f, uint32_t layer);
/* The size of a slot's blob (a local file's, or the remote size given), 0 if none. */
uint64_t sx_frames_blob_size(const struct sx_frames *f, uint32_t slot);
/* Is a slot's blob fetched over HTTP (a mirror), rather than a local file? */
bool sx_frames_remote(const struct sx_frames *f, uint32_t slot);
/* Like sx_frames_direct, for any slot (a layer or SX_INDEX_SLOT). */
bool sx_frames_direct_slot(const struct sx_frames *f, uint32_t slot);

/*
 * Serve layer `layer` from a remote blob of `size` bytes, fetched with ranged
 * GETs of url (sx_http) into a sparse local mirror, file `mirror` under dirfd (created if
 * need be, shared by every strata-fuse on the host). Which ranges the mirror
 * holds is the file's own extent map (SEEK_DATA/SEEK_HOLE): nothing to keep
 * consistent after a crash, because every frame is verified when it is read
 * from the mirror, and one that fails is fetched again. Call again with a new
 * url to renew it.
 */
struct sx_http;
/* readahead: bytes after a missed frame in the read's own GET; async_readahead: the next bytes after
 * those, fetched by readahead workers while the read goes on (0: none). */
void sx_frames_set_http(struct sx_frames *f, struct sx_http *http, size_t readahead, size_t async_readahead);
int sx_frames_add_remote(struct sx_frames *f, uint32_t layer, int dirfd, const char *mirror, uint64_t size, const char *url,
			 char *err, size_t errlen);
/* Called (at most once per failing read) when the store refused a URL: re-read the sources. */
void sx_frames_on_refused(struct sx_frames *f, void (*renew)(void *user), void *user);

/*
 * The prefetch record at path (sx_format.h): its frames of remote layers are
 * fetched first by the background thread, coalesced into spans across gaps up
 * to 1 MiB (spans up to 8 MiB), 4 GETs at a time alongside hydration, in the order the workspace first read them.
 * Refs to other layers or outside a blob are skipped; a file that is not a
 * record is refused.
 */
int sx_frames_set_prefetch(struct sx_frames *f, const char *path, char *err, size_t errlen);

/*
 * Background fetching: the prefetch record (4 GETs at a time), each remote
 * layer's TOC landmark region, then, if whole, the small files' frames and
 * every remote layer whole in blocks of `span` bytes, from one queue, `streams`
 * GETs at a time (1..SX_HYDRATE_STREAMS_MAX; docs/lazy.md). Reads never queue behind these:
 * each read that misses issues its own GET at once, on its own connection.
 * sx_frames_free stops it.
 */
#define SX_HYDRATE_STREAMS_MAX 32
int sx_frames_hydrate(struct sx_frames *f, size_t span, bool whole, unsigned streams, const char *done_path, char *err,
		      size_t errlen);

/*
 * The verified frame chunk `ci` lies in. 0 and *out on success; -EIO with a
 * reason in why (the blob's bytes do not decompress, or not to the digest;
 * a short blob; a read error) otherwise. Nothing unverified is ever returned.
 */
int sx_frames_get(struct sx_frames *f, uint32_t ci, const struct sx_frame **out, char *why, size_t whylen);
void sx_frames_put(struct sx_frames *f, const struct sx_frame *fr);

/*
 * A paged index's blob takes the slot after the last layer: sx_frames_add_blob
 * or sx_frames_add_remote with SX_INDEX_SLOT(idx), read with sx_frames_read.
 */
#define SX_INDEX_SLOT(idx) ((idx)->hdr->layer_count)
/*
 * Bytes [off, off+len) of a blob (a layer or SX_INDEX_SLOT) into buf, fetched
 * into the mirror first if it is remote and does not hold them (`refetch`:
 * fetched even if it does, as what it holds did not verify). `demand`: a
 * request waits for it (a read's class; else the background's). Unverified:
 * the caller checks what it reads. 0, or -errno with a reason in why.
 */
int sx_frames_read(struct sx_frames *f, uint32_t layer, uint64_t off, uint64_t len, void *buf, bool demand, bool refetch,
		   char *why, size_t whylen);

/*
 * Wait until the first read's fetch is answered (or SX_HYDRATE_HOLD_MS pass,
 * or the frames stop): background transfers that would share the link with it
 * (hydration, a paged index's background load) start after it.
 */
void sx_frames_hold_for_first_read(struct sx_frames *f);

/* Background fetches (prefetch, hydration, readahead) in flight now. */
unsigned sx_frames_background(struct sx_frames *f);

/* Counters for the log line at exit: frames loaded, hits, bytes read from blobs. */
void sx_frames_stats(struct sx_frames *f, uint64_t *loads, uint64_t *hits, uint64_t *bytes);

void sx_frames_free(struct sx_frames *f);

#endif
