/*
 * Keeping the CPUs awake through a burst of FUSE requests.
 *
 * A FUSE request is two wakeups: the kernel wakes a serving thread, the reply
 * wakes the reader. In a VM whose idle vCPUs halt at once (no guest halt
 * polling: guest_halt_poll_ns = 0, as on this project's Firecracker sandbox),
 * each wakeup of an idle vCPU is a VM exit and a host reschedule: `node app.js`
 * on a fresh lazy view of the medium bench tree took 1.7 s instead of 0.74 s
 * with reader and server on one CPU, 0.83 s with halt polling on.
 *
 * So while requests keep coming, one thread per CPU of the process's affinity
 * mask (at most SX_AWAKE_MAX), pinned to it and at SCHED_IDLE, spins: a
 * spinning vCPU is not halted, and the scheduler still counts it idle (a
 * reader or a serving thread takes it at once; any other task preempts the
 * spinner). A spinner stops `window_us` after the last request and sleeps
 * until the next one: an idle mount costs nothing. Nor does it spin while
 * `busy` says background work (hydration) keeps the CPUs from idling anyway:
 * measured, spinners then only slowed the workload (medium tree over r2,
 * `node app.js` 3.4 s without, 4.1 s with).
 */
#ifndef SX_AWAKE_H
#define SX_AWAKE_H

#include <stdbool.h>
#include <stdint.h>

#define SX_AWAKE_MAX 8

struct sx_awake;

/*
 * window_us 0: none (NULL is returned and every call below accepts NULL).
 * busy(arg), if given, is asked while spinning (cheaply: an atomic load).
 */
struct sx_awake *sx_awake_new(unsigned window_us, bool (*busy)(void *arg), void *arg);
/* A request arrived: spin (again) until window_us after now. Cheap while spinning. */
void sx_awake_poke(struct sx_awake *a);
/* Spinners started (0 if none could be). */
unsigned sx_awake_threads(const struct sx_awake *a);
void sx_awake_free(struct sx_awake *a);

#endif
