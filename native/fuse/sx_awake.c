/*
 * Spinners that keep a burst of FUSE requests off halted vCPUs: see sx_awake.h.
 */
#include "sx_awake.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

struct spinner {
	struct sx_awake *a;
	int cpu;
	pthread_t thread;
	bool started;
};

struct sx_awake {
	uint64_t window_ns;
	bool (*busy)(void *arg);
	void *busy_arg;
	_Atomic uint64_t until_ns; /* spin while the clock is before this */
	atomic_uint sleeping;      /* spinners waiting on cond */
	atomic_bool stop;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct spinner spin[SX_AWAKE_MAX];
	unsigned n;
};

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void *spinner_main(void *p)
{
	struct spinner *s = p;
	struct sx_awake *a = s->a;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(s->cpu, &set);
	/* Both best effort: an unpinned or normal-priority spinner still spins, only less usefully. */
	(void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	struct sched_param sp = { .sched_priority = 0 };
	(void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
	while (!atomic_load(&a->stop)) {
		if (now_ns() < atomic_load(&a->until_ns)) {
			if (a->busy && a->busy(a->busy_arg)) {
				/* Background work keeps the CPUs busy: no spinning, look again soon. */
				struct timespec t = { 0, 2000000 };
				nanosleep(&t, NULL);
				continue;
			}
			for (int i = 0; i < 64; i++)
				__builtin_ia32_pause();
			continue;
		}
		pthread_mutex_lock(&a->lock);
		atomic_fetch_add(&a->sleeping, 1);
		/* Re-checked under the lock: a poke between the check and the wait signals it. */
		while (!atomic_load(&a->stop) && now_ns() >= atomic_load(&a->until_ns))
			pthread_cond_wait(&a->cond, &a->lock);
		atomic_fetch_sub(&a->sleeping, 1);
		pthread_mutex_unlock(&a->lock);
	}
	return NULL;
}

struct sx_awake *sx_awake_new(unsigned window_us, bool (*busy)(void *arg), void *arg)
{
	if (window_us == 0)
		return NULL;
	struct sx_awake *a = calloc(1, sizeof(*a));
	if (!a)
		return NULL;
	a->window_ns = (uint64_t)window_us * 1000u;
	a->busy = busy;
	a->busy_arg = arg;
	if (pthread_mutex_init(&a->lock, NULL) != 0 || pthread_cond_init(&a->cond, NULL) != 0) {
		free(a);
		return NULL;
	}
	cpu_set_t set;
	CPU_ZERO(&set);
	if (sched_getaffinity(0, sizeof(set), &set) != 0) {
		pthread_cond_destroy(&a->cond);
		pthread_mutex_destroy(&a->lock);
		free(a);
		return NULL;
	}
	for (int cpu = 0; cpu < CPU_SETSIZE && a->n < SX_AWAKE_MAX; cpu++) {
		if (!CPU_ISSET(cpu, &set))
			continue;
		struct spinner *s = &a->spin[a->n];
		s->a = a;
		s->cpu = cpu;
		s->started = pthread_create(&s->thread, NULL, spinner_main, s) == 0;
		if (s->started)
			a->n++;
	}
	return a;
}

void sx_awake_poke(struct sx_awake *a)
{
	if (!a)
		return;
	uint64_t until = now_ns() + a->window_ns;
	atomic_store(&a->until_ns, until);
	if (atomic_load(&a->sleeping) > 0) {
		pthread_mutex_lock(&a->lock);
		pthread_cond_broadcast(&a->cond);
		pthread_mutex_unlock(&a->lock);
	}
}

unsigned sx_awake_threads(const struct sx_awake *a)
{
	return a ? a->n : 0;
}

void sx_awake_free(struct sx_awake *a)
{
	if (!a)
		return;
	atomic_store(&a->stop, true);
	pthread_mutex_lock(&a->lock);
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	for (unsigned i = 0; i < a->n; i++)
		pthread_join(a->spin[i].thread, NULL);
	pthread_cond_destroy(&a->cond);
	pthread_mutex_destroy(&a->lock);
	free(a);
}
