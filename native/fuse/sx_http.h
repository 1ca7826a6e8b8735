/*
 * Ranged GETs of layer blobs over HTTP(S) with libcurl: presigned URLs that
 * the control plane makes and renews, keep-alive connections shared by every
 * thread (a curl share handle), a stall timeout and an overall deadline per
 * read. Transient failures (5xx, 429, resets, stalls) are retried with
 * backoff until the deadline; the answer is then EIO, never a hang.
 */
#ifndef SX_HTTP_H
#define SX_HTTP_H

#include <stddef.h>
#include <stdint.h>

struct sx_http;

struct sx_http_opts {
	unsigned deadline_ms; /* one sx_http_get, retries included */
	unsigned stall_ms;    /* no byte for this long: the attempt is dropped and retried */
	unsigned connect_ms;
};

/* curl_global_init must have run (main does it before any thread starts). */
struct sx_http *sx_http_new(const struct sx_http_opts *o, char *err, size_t errlen);

/*
 * Bytes [off, off + len) of url into buf. 0 on success; -EACCES when the store
 * refuses the URL (expired or wrong: the caller renews it and asks again);
 * -ENOENT when the object does not exist; -EIO otherwise (deadline passed,
 * short or oversized body, a server that ignores ranges). why says which.
 */
int sx_http_get(struct sx_http *h, const char *url, uint64_t off, size_t len, uint8_t *buf, char *why, size_t whylen);

/* GETs issued (attempts included) and bytes received, for the exit log line. */
void sx_http_stats(struct sx_http *h, uint64_t *gets, uint64_t *bytes);

void sx_http_free(struct sx_http *h);

#endif
