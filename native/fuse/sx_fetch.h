/*
 * Client side of the fetcher socket: FUSE worker threads ask for missing
 * chunks and block (bounded by a timeout) while one reader thread per
 * connection hands answers back by request id.
 */
#ifndef SX_FETCH_H
#define SX_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "sx_format.h"

struct sx_fetch;

/* Never fails for an absent fetcher: connecting is retried on each miss. NULL only on ENOMEM/thread errors. */
struct sx_fetch *sx_fetch_new(const char *socket_path, unsigned timeout_ms, char *err, size_t errlen);

/*
 * Ask the fetcher to put these chunks into the cache, as one message so it can
 * coalesce them. Blocks until it answers or timeout_ms passes.
 * Returns 0 when it says all are cached; -ENOTCONN when no fetcher listens;
 * -ETIMEDOUT; or -errno it answered with (normally -EIO).
 */
int sx_fetch_request(struct sx_fetch *f, const struct sx_chunk_ref *refs, uint32_t n);

/* Note a cache hit so the fetcher's LRU sees reads that bypass it. Never blocks; may drop. */
void sx_fetch_touch(struct sx_fetch *f, const struct sx_chunk_ref *ref);

/* Stops the helper threads and closes the connection. */
void sx_fetch_free(struct sx_fetch *f);

#endif
