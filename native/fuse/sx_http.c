/*
 * libcurl ranged GETs: see sx_http.h.
 *
 * Easy handles are pooled (one per concurrent request, made on demand) and
 * share connections, DNS and TLS sessions through one share handle, so every
 * FUSE worker and the hydration thread reuse the same warm connections.
 *
 * libcurl is loaded with dlopen on a thread of its own when the context is
 * made, not linked: with its ~30 dependencies (TLS, Kerberos, LDAP, ...) it
 * costs ~30 ms of a cold exec, which would sit on a restore's ready path; a
 * strata-fuse serving only local blobs never loads it. A GET waits for the
 * load to finish (normally long done by the first read).
 */
#include "sx_http.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dlfcn.h>

/* The function names are called through the table below, never as macros. */
#define CURL_DISABLE_TYPECHECK
#include <curl/curl.h>

/* The part of libcurl's ABI (soname libcurl.so.4) used here. */
struct sx_curl_api {
	void *dl;
	CURLcode (*global_init)(long flags);
	CURL *(*easy_init)(void);
	void (*easy_cleanup)(CURL *c);
	void (*easy_reset)(CURL *c);
	CURLcode (*easy_setopt)(CURL *c, CURLoption opt, ...);
	CURLcode (*easy_perform)(CURL *c);
	CURLcode (*easy_getinfo)(CURL *c, CURLINFO info, ...);
	const char *(*easy_strerror)(CURLcode code);
	CURLSH *(*share_init)(void);
	CURLSHcode (*share_setopt)(CURLSH *sh, CURLSHoption opt, ...);
	CURLSHcode (*share_cleanup)(CURLSH *sh);
};

struct sx_http {
	struct sx_http_opts o;
	struct sx_curl_api api;
	pthread_t loader;
	bool loader_started;
	pthread_mutex_t load_mu;
	pthread_cond_t load_cv;
	int load_state; /* 0 loading, 1 ready, -1 failed (load_err says why) */
	char load_err[256];
	CURLSH *share;
	pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
	pthread_mutex_t lock; /* the pool and the counters */
	CURL **pool;
	size_t npool, cappool;
	uint64_t gets, bytes;
};

static void share_lock(CURL *c, curl_lock_data data, curl_lock_access access, void *user)
{
	(void)c;
	(void)access;
	struct sx_http *h = user;
	pthread_mutex_lock(&h->share_locks[data]);
}

static void share_unlock(CURL *c, curl_lock_data data, void *user)
{
	(void)c;
	struct sx_http *h = user;
	pthread_mutex_unlock(&h->share_locks[data]);
}

/* Resolve one symbol of the table, or say which is missing. */
#define SX_SYM(field, name)                                                                        \
	do {                                                                                       \
		*(void **)&a->field = dlsym(a->dl, name);                                          \
		if (!a->field) {                                                                   \
			snprintf(err, errlen, "libcurl.so.4 lacks %s", name);                       \
			return -1;                                                                 \
		}                                                                                  \
	} while (0)

static int load_api(struct sx_curl_api *a, char *err, size_t errlen)
{
	a->dl = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
	if (!a->dl) {
		snprintf(err, errlen, "cannot load libcurl (apt-get install libcurl4): %s", dlerror());
		return -1;
	}
	SX_SYM(global_init, "curl_global_init");
	SX_SYM(easy_init, "curl_easy_init");
	SX_SYM(easy_cleanup, "curl_easy_cleanup");
	SX_SYM(easy_reset, "curl_easy_reset");
	SX_SYM(easy_setopt, "curl_easy_setopt");
	SX_SYM(easy_perform, "curl_easy_perform");
	SX_SYM(easy_getinfo, "curl_easy_getinfo");
	SX_SYM(easy_strerror, "curl_easy_strerror");
	SX_SYM(share_init, "curl_share_init");
	SX_SYM(share_setopt, "curl_share_setopt");
	SX_SYM(share_cleanup, "curl_share_cleanup");
	return 0;
}

/* The loader thread: libcurl, its global state, the share handle. */
static void *load_main(void *arg)
{
	struct sx_http *h = arg;
	char err[sizeof(h->load_err)] = "";
	int state = -1;
	if (load_api(&h->api, err, sizeof(err)) == 0) {
		if (h->api.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
			snprintf(err, sizeof(err), "curl_global_init failed");
		} else if (!(h->share = h->api.share_init())) {
			snprintf(err, sizeof(err), "curl_share_init failed");
		} else {
			h->api.share_setopt(h->share, CURLSHOPT_LOCKFUNC, share_lock);
			h->api.share_setopt(h->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
			h->api.share_setopt(h->share, CURLSHOPT_USERDATA, h);
			h->api.share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
			h->api.share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
			h->api.share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
			state = 1;
		}
	}
	pthread_mutex_lock(&h->load_mu);
	if (state < 0) {
		snprintf(h->load_err, sizeof(h->load_err), "%s", err);
		fprintf(stderr, "strata-fuse: %s; reads of remote layers fail with EIO\n", err);
	}
	h->load_state = state;
	pthread_cond_broadcast(&h->load_cv);
	pthread_mutex_unlock(&h->load_mu);
	return NULL;
}

/* Wait for the loader: true once libcurl is usable, else why in `why`. */
static bool loaded(struct sx_http *h, char *why, size_t whylen)
{
	pthread_mutex_lock(&h->load_mu);
	while (h->load_state == 0)
		pthread_cond_wait(&h->load_cv, &h->load_mu);
	bool ok = h->load_state > 0;
	if (!ok && why)
		snprintf(why, whylen, "%s", h->load_err);
	pthread_mutex_unlock(&h->load_mu);
	return ok;
}

struct sx_http *sx_http_new(const struct sx_http_opts *o, char *err, size_t errlen)
{
	struct sx_http *h = calloc(1, sizeof(*h));
	if (!h) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	h->o = *o;
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&h->share_locks[i], NULL);
	pthread_mutex_init(&h->lock, NULL);
	pthread_mutex_init(&h->load_mu, NULL);
	pthread_cond_init(&h->load_cv, NULL);
	int rc = pthread_create(&h->loader, NULL, load_main, h);
	if (rc != 0) {
		snprintf(err, errlen, "cannot start the libcurl loader: %s", strerror(rc));
		h->load_state = -1;
		sx_http_free(h);
		return NULL;
	}
	h->loader_started = true;
	return h;
}

static CURL *take(struct sx_http *h)
{
	pthread_mutex_lock(&h->lock);
	CURL *c = h->npool ? h->pool[--h->npool] : NULL;
	pthread_mutex_unlock(&h->lock);
	return c ? c : h->api.easy_init();
}

static void give(struct sx_http *h, CURL *c)
{
	pthread_mutex_lock(&h->lock);
	if (h->npool == h->cappool) {
		size_t cap = h->cappool ? h->cappool * 2 : 8;
		CURL **p = realloc(h->pool, cap * sizeof(*p));
		if (!p) {
			pthread_mutex_unlock(&h->lock);
			h->api.easy_cleanup(c);
			return;
		}
		h->pool = p;
		h->cappool = cap;
	}
	h->pool[h->npool++] = c;
	pthread_mutex_unlock(&h->lock);
}

struct sink {
	uint8_t *buf;
	size_t len, got;
	bool overflow;
};

static size_t on_body(char *p, size_t size, size_t n, void *user)
{
	struct sink *s = user;
	size_t k = size * n;
	if (k > s->len - s->got) {
		s->overflow = true;
		return 0; /* abort: more than asked for */
	}
	memcpy(s->buf + s->got, p, k);
	s->got += k;
	return k;
}

static uint64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
	struct timespec t = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&t, &t) != 0 && errno == EINTR)
		;
}

int sx_http_get(struct sx_http *h, const char *url, uint64_t off, size_t len, uint8_t *buf, char *why, size_t whylen)
{
	why[0] = '\0';
	if (len == 0)
		return 0;
	if (!loaded(h, why, whylen))
		return -EIO;
	uint64_t t0 = now_ms(), deadline = t0 + h->o.deadline_ms;
	char range[64];
	snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)off, (unsigned long long)(off + len - 1));
	CURL *c = take(h);
	if (!c) {
		snprintf(why, whylen, "curl_easy_init failed");
		return -EIO;
	}
	int rc = -EIO;
	unsigned delay = 100;
	for (int attempt = 1;; attempt++) {
		uint64_t now = now_ms();
		if (now >= deadline) {
			/* why holds the last attempt's failure */
			size_t l = strlen(why);
			snprintf(why + l, whylen - l, "%sgave up after %d attempt(s) in %llu ms", l ? "; " : "", attempt - 1,
				 (unsigned long long)(now - t0));
			break;
		}
		struct sink s = { .buf = buf, .len = len };
		h->api.easy_reset(c);
		h->api.easy_setopt(c, CURLOPT_URL, url);
		h->api.easy_setopt(c, CURLOPT_RANGE, range);
		h->api.easy_setopt(c, CURLOPT_SHARE, h->share);
		h->api.easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
		h->api.easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
		h->api.easy_setopt(c, CURLOPT_WRITEDATA, &s);
		h->api.easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)h->o.connect_ms);
		h->api.easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(deadline - now));
		/* A stall: less than 1 byte/s for stall_ms (curl counts whole seconds). */
		h->api.easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
		h->api.easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)((h->o.stall_ms + 999) / 1000));
		h->api.easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
		h->api.easy_setopt(c, CURLOPT_ACCEPT_ENCODING, NULL); /* the bytes as stored: no transfer decoding */
		CURLcode cc = h->api.easy_perform(c);
		long status = 0;
		h->api.easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
		pthread_mutex_lock(&h->lock);
		h->gets++;
		h->bytes += s.got;
		pthread_mutex_unlock(&h->lock);
		bool retry = false;
		if (cc == CURLE_OK && status == 206 && s.got == len) {
			rc = 0;
			break;
		} else if (cc == CURLE_OK && status == 200 && off == 0 && s.got == len) {
			rc = 0; /* a range covering the whole object may come back as 200 */
			break;
		} else if (s.overflow || (cc == CURLE_OK && status == 200)) {
			snprintf(why, whylen, "the store sent more than the %zu bytes asked for (it ignores ranges)", len);
			break;
		} else if (cc == CURLE_OK && (status == 403 || status == 401)) {
			snprintf(why, whylen, "the store refused the URL (HTTP %ld): expired or not valid", status);
			rc = -EACCES;
			break;
		} else if (cc == CURLE_OK && status == 404) {
			snprintf(why, whylen, "the store has no such object (HTTP 404)");
			rc = -ENOENT;
			break;
		} else if (cc == CURLE_OK && status == 206) {
			snprintf(why, whylen, "short body: %zu of %zu bytes", s.got, len);
			retry = true;
		} else if (cc == CURLE_OK) {
			snprintf(why, whylen, "HTTP %ld", status);
			retry = status >= 500 || status == 429 || status == 408;
		} else {
			snprintf(why, whylen, "%s", h->api.easy_strerror(cc));
			retry = true;
		}
		if (!retry)
			break;
		uint64_t left = deadline > now_ms() ? deadline - now_ms() : 0;
		unsigned d = delay / 2 + (unsigned)(rand() % (int)(delay / 2 + 1)); /* jitter */
		if (d > left)
			d = (unsigned)left;
		sleep_ms(d);
		if (delay < 2000)
			delay *= 2;
	}
	give(h, c);
	return rc;
}

void sx_http_stats(struct sx_http *h, uint64_t *gets, uint64_t *bytes)
{
	pthread_mutex_lock(&h->lock);
	*gets = h->gets;
	*bytes = h->bytes;
	pthread_mutex_unlock(&h->lock);
}

void sx_http_free(struct sx_http *h)
{
	if (!h)
		return;
	if (h->loader_started)
		pthread_join(h->loader, NULL);
	for (size_t i = 0; i < h->npool; i++)
		h->api.easy_cleanup(h->pool[i]);
	free(h->pool);
	if (h->share)
		h->api.share_cleanup(h->share);
	/* libcurl stays loaded: its global state is not torn down (the process is ending). */
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&h->share_locks[i]);
	pthread_mutex_destroy(&h->lock);
	pthread_mutex_destroy(&h->load_mu);
	pthread_cond_destroy(&h->load_cv);
	free(h);
}
