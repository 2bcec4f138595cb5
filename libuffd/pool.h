/* SPDX-License-Identifier: MIT */
/*
 * The worker pool (pool.c): threads that run synchronous store work (a
 * callback store's fill()) off the handler threads, so those fetches
 * overlap and the handlers keep serving other faults meanwhile.  One pool
 * per context; threads start as work waits for one, up to a setting.
 */
#ifndef LUFFD_POOL_H
#define LUFFD_POOL_H

#include <stdbool.h>
#include <stdint.h>

struct luffd__pool;
struct luffd__region;
struct luffd__req;

/* Does r's work, returning its result (bytes, 0, -errno). */
typedef int64_t (*luffd__work_fn)(struct luffd__req *r);

/* A pool of at most max threads, none started yet; NULL. */
struct luffd__pool *luffd__pool_new(const void *ctx, unsigned int max);
/* Stop: work still queued is answered -ECANCELED; threads inside work
 * (a fill() that does not return) are left to finish it on their own and
 * free what they hold then.  Returns once the others have exited. */
void luffd__pool_stop(struct luffd__pool *p);

/* Queue r (its priority decides the order) for a worker to run fn(r) and
 * complete r with the result.  Handler thread. */
void luffd__pool_submit(struct luffd__pool *p, struct luffd__req *r,
			luffd__work_fn fn);
/* r was cancelled: if no worker has taken it yet, answer it now. */
void luffd__pool_cancel(struct luffd__pool *p, struct luffd__req *r);

/*
 * A fault of thread tid at addr: if tid is one of p's workers, running
 * store work that touched registered memory (a deadlock, as the work's own
 * read may wait on this very fault), note it: the work's result becomes
 * -EDEADLK, and once it returns the worker drops the page again (r is held
 * until then).  The caller lets the worker go on with a zero page there.
 * True if tid was a worker.
 */
bool luffd__pool_caught(struct luffd__pool *p, uint32_t tid, uint64_t addr,
			struct luffd__region *r);

#endif /* LUFFD_POOL_H */
