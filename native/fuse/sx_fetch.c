/*
 * The fetcher connection. Ownership rules, all state under f->mu:
 *  - a link (one connected socket) is owned by its reader thread, which frees
 *    it when it exits; each sender holds an extra reference while it writes;
 *  - f->link is a borrowed pointer to the link new requests use, cleared when
 *    that link dies, so a later miss connects afresh (a restarted fetcher is
 *    picked up without remounting);
 *  - a pending request lives on its waiting thread's stack and is in f->pending
 *    only while someone may still complete it.
 */
#include "sx_fetch.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TOUCH_CAP 512
#define TOUCH_FLUSH_MS 1000

struct sx_link {
	int fd;
	unsigned refs;
	bool dead;
	pthread_mutex_t wmu; /* whole messages on the stream: writers never interleave */
};

struct sx_pending {
	uint64_t id;
	struct sx_link *link;
	pthread_cond_t cond;
	bool done;
	int status; /* errno, 0 = ok */
	struct sx_pending *prev, *next;
};

struct sx_fetch {
	pthread_mutex_t mu;
	char *path;
	unsigned timeout_ms;
	struct sx_link *link;
	uint64_t next_id;
	struct sx_pending *pending;
	unsigned readers;
	pthread_cond_t readers_cv;
	bool stopping;
	struct sx_chunk_ref *touches;
	uint32_t ntouches;
	pthread_cond_t touch_cv;
	pthread_t flusher;
};

struct reader_arg {
	struct sx_fetch *f;
	struct sx_link *link;
};

static void pending_add(struct sx_fetch *f, struct sx_pending *p)
{
	p->prev = NULL;
	p->next = f->pending;
	if (f->pending)
		f->pending->prev = p;
	f->pending = p;
}

static void pending_del(struct sx_fetch *f, struct sx_pending *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		f->pending = p->next;
	if (p->next)
		p->next->prev = p->prev;
	p->prev = p->next = NULL;
}

/* Under f->mu. */
static void link_put(struct sx_link *l)
{
	if (--l->refs > 0)
		return;
	close(l->fd);
	pthread_mutex_destroy(&l->wmu);
	free(l);
}

/* Under f->mu: make the link unusable; its reader wakes up, fails its requests and frees it. */
static void link_kill(struct sx_fetch *f, struct sx_link *l)
{
	if (!l->dead) {
		l->dead = true;
		shutdown(l->fd, SHUT_RDWR);
	}
	if (f->link == l)
		f->link = NULL;
}

static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int writev_full(int fd, struct iovec *iov, int iovcnt)
{
	while (iovcnt > 0) {
		ssize_t n = writev(fd, iov, iovcnt);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

static void *reader_main(void *arg)
{
	struct reader_arg a = *(struct reader_arg *)arg;
	free(arg);
	struct sx_fetch *f = a.f;
	struct sx_link *l = a.link;
	struct sx_resp r;

	while (read_full(l->fd, &r, sizeof(r)) == 0) {
		if (r.magic != SX_RESP_MAGIC) {
			fprintf(stderr, "strata-fuse: fetcher sent a malformed answer; dropping the connection\n");
			break;
		}
		pthread_mutex_lock(&f->mu);
		for (struct sx_pending *p = f->pending; p; p = p->next) {
			if (p->id == r.id && p->link == l) {
				p->done = true;
				/* Anything but success or a plausible errno reads as EIO. */
				p->status = r.status == 0 ? 0 : (r.status > 0 && r.status < 4096 ? r.status : EIO);
				pending_del(f, p);
				pthread_cond_signal(&p->cond);
				break;
			}
		}
		pthread_mutex_unlock(&f->mu);
	}

	pthread_mutex_lock(&f->mu);
	link_kill(f, l);
	/* Nobody will answer these now: fail them at once rather than at their timeout. */
	for (struct sx_pending *p = f->pending, *next; p; p = next) {
		next = p->next;
		if (p->link == l) {
			p->done = true;
			p->status = EIO;
			pending_del(f, p);
			pthread_cond_signal(&p->cond);
		}
	}
	link_put(l);
	f->readers--;
	pthread_cond_broadcast(&f->readers_cv);
	pthread_mutex_unlock(&f->mu);
	return NULL;
}

/* Under f->mu. Connects and starts the reader; leaves f->link NULL when nobody listens. */
static void link_connect(struct sx_fetch *f)
{
	if (f->stopping)
		return;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(f->path) >= sizeof(sa.sun_path))
		return;
	strcpy(sa.sun_path, f->path);
	/* Non-blocking connect: a wedged fetcher with a full backlog must not stall us. */
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return;
	}
	int fl = fcntl(fd, F_GETFL);
	struct timeval tv = { .tv_sec = f->timeout_ms / 1000, .tv_usec = (f->timeout_ms % 1000) * 1000 };
	/* A bounded send: a fetcher that stops reading costs a timeout, not a hung thread. */
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
		close(fd);
		return;
	}
	struct sx_link *l = calloc(1, sizeof(*l));
	struct reader_arg *a = malloc(sizeof(*a));
	if (!l || !a || pthread_mutex_init(&l->wmu, NULL) != 0) {
		free(l);
		free(a);
		close(fd);
		return;
	}
	l->fd = fd;
	l->refs = 1; /* the reader's */
	a->f = f;
	a->link = l;
	pthread_attr_t attr;
	pthread_t t;
	int rc = pthread_attr_init(&attr);
	if (rc == 0) {
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		rc = pthread_create(&t, &attr, reader_main, a);
		pthread_attr_destroy(&attr);
	}
	if (rc != 0) {
		pthread_mutex_destroy(&l->wmu);
		free(l);
		free(a);
		close(fd);
		return;
	}
	f->readers++;
	f->link = l;
}

static int send_msg(struct sx_link *l, uint32_t type, uint64_t id, const struct sx_chunk_ref *refs, uint32_t n)
{
	struct sx_msg m = { .magic = SX_MSG_MAGIC, .type = type, .id = id, .count = n, .flags = 0 };
	struct iovec iov[2] = {
		{ .iov_base = &m, .iov_len = sizeof(m) },
		{ .iov_base = (void *)refs, .iov_len = (size_t)n * sizeof(*refs) },
	};
	pthread_mutex_lock(&l->wmu);
	int rc = writev_full(l->fd, iov, n ? 2 : 1);
	pthread_mutex_unlock(&l->wmu);
	return rc;
}

int sx_fetch_request(struct sx_fetch *f, const struct sx_chunk_ref *refs, uint32_t n)
{
	if (n == 0)
		return 0;
	if (n > SX_MSG_MAX_REFS)
		return -EINVAL;
	struct sx_pending p;
	memset(&p, 0, sizeof(p));
	pthread_condattr_t ca;
	if (pthread_condattr_init(&ca) != 0)
		return -ENOMEM;
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int rc = pthread_cond_init(&p.cond, &ca);
	pthread_condattr_destroy(&ca);
	if (rc != 0)
		return -rc;

	pthread_mutex_lock(&f->mu);
	if (!f->link)
		link_connect(f);
	struct sx_link *l = f->link;
	if (!l) {
		pthread_mutex_unlock(&f->mu);
		pthread_cond_destroy(&p.cond);
		return -ENOTCONN;
	}
	l->refs++;
	p.id = ++f->next_id;
	p.link = l;
	pending_add(f, &p);
	pthread_mutex_unlock(&f->mu);

	int wrc = send_msg(l, SX_MSG_FETCH, p.id, refs, n);

	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += f->timeout_ms / 1000;
	deadline.tv_nsec += (long)(f->timeout_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}

	pthread_mutex_lock(&f->mu);
	if (wrc < 0) {
		/* A partial message breaks the stream's framing: the link must go. */
		link_kill(f, l);
	} else {
		while (!p.done) {
			if (pthread_cond_timedwait(&p.cond, &f->mu, &deadline) == ETIMEDOUT)
				break;
		}
	}
	int result;
	if (p.done) {
		result = -p.status;
	} else {
		pending_del(f, &p);
		result = wrc < 0 ? -EIO : -ETIMEDOUT;
	}
	link_put(l);
	pthread_mutex_unlock(&f->mu);
	pthread_cond_destroy(&p.cond);
	return result;
}

void sx_fetch_touch(struct sx_fetch *f, const struct sx_chunk_ref *ref)
{
	pthread_mutex_lock(&f->mu);
	if (f->ntouches < TOUCH_CAP)
		f->touches[f->ntouches++] = *ref;
	pthread_mutex_unlock(&f->mu);
}

/* Batches touches into one message a second, off the FUSE threads. */
static void *flusher_main(void *arg)
{
	struct sx_fetch *f = arg;
	struct sx_chunk_ref *batch = malloc(TOUCH_CAP * sizeof(*batch));
	if (!batch)
		return NULL;
	pthread_mutex_lock(&f->mu);
	while (!f->stopping) {
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		t.tv_sec += TOUCH_FLUSH_MS / 1000;
		pthread_cond_timedwait(&f->touch_cv, &f->mu, &t);
		if (f->stopping || f->ntouches == 0)
			continue;
		/*
		 * A strata-fuse started before the daemon (a restore on a cold host)
		 * keeps its first reads until the fetcher listens: they are what
		 * the access record is for. Past TOUCH_CAP they are dropped (hints).
		 */
		if (!f->link)
			link_connect(f);
		struct sx_link *l = f->link;
		if (!l)
			continue;
		uint32_t n = f->ntouches;
		f->ntouches = 0;
		memcpy(batch, f->touches, n * sizeof(*batch));
		l->refs++;
		pthread_mutex_unlock(&f->mu);
		int rc = send_msg(l, SX_MSG_TOUCH, 0, batch, n);
		pthread_mutex_lock(&f->mu);
		if (rc < 0)
			link_kill(f, l);
		link_put(l);
	}
	pthread_mutex_unlock(&f->mu);
	free(batch);
	return NULL;
}

struct sx_fetch *sx_fetch_new(const char *socket_path, unsigned timeout_ms, char *err, size_t errlen)
{
	struct sx_fetch *f = calloc(1, sizeof(*f));
	if (!f) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	f->path = strdup(socket_path);
	f->touches = malloc(TOUCH_CAP * sizeof(*f->touches));
	f->timeout_ms = timeout_ms;
	pthread_condattr_t ca;
	bool ok = f->path && f->touches && pthread_condattr_init(&ca) == 0;
	if (ok) {
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		ok = pthread_mutex_init(&f->mu, NULL) == 0 && pthread_cond_init(&f->readers_cv, &ca) == 0 &&
		     pthread_cond_init(&f->touch_cv, &ca) == 0;
		pthread_condattr_destroy(&ca);
	}
	if (ok && pthread_create(&f->flusher, NULL, flusher_main, f) != 0)
		ok = false;
	if (!ok) {
		snprintf(err, errlen, "cannot set up the fetcher client");
		free(f->path);
		free(f->touches);
		free(f);
		return NULL;
	}
	/* Connect now if the fetcher is up; otherwise the first miss tries. */
	pthread_mutex_lock(&f->mu);
	link_connect(f);
	pthread_mutex_unlock(&f->mu);
	return f;
}

void sx_fetch_free(struct sx_fetch *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&f->mu);
	f->stopping = true;
	pthread_cond_broadcast(&f->touch_cv);
	if (f->link)
		link_kill(f, f->link);
	pthread_mutex_unlock(&f->mu);
	pthread_join(f->flusher, NULL);
	pthread_mutex_lock(&f->mu);
	while (f->readers > 0)
		pthread_cond_wait(&f->readers_cv, &f->mu);
	pthread_mutex_unlock(&f->mu);
	pthread_cond_destroy(&f->touch_cv);
	pthread_cond_destroy(&f->readers_cv);
	pthread_mutex_destroy(&f->mu);
	free(f->touches);
	free(f->path);
	free(f);
}
