/* SPDX-License-Identifier: MIT */
/* A context (context.c): settings, handler threads, the callback guard. */
#ifndef LUFFD_CONTEXT_H
#define LUFFD_CONTEXT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "opts.h"

struct luffd__bt;
struct luffd__evictor;
struct luffd__loop;
struct luffd__pool;

struct luffd_ctx {
	struct luffd__cfg cfg;
	pthread_mutex_t lock;  /* serialises region creation and removal */
	uint64_t next_gid;     /* striped ranges made so far (lock) */
	atomic_uint next_loop; /* the handler the next range goes to */
	pthread_mutex_t wb_lock; /* one write-back at a time (writeback.c) */

	/* The guard thread, started with the first region over a store
	 * whose read() runs application code on the handler (guard.c). */
	pthread_t guard;
	bool guard_started;
	atomic_bool guard_stop;
	pthread_mutex_t guard_lock;
	pthread_cond_t guard_cv;
	struct luffd__loop *loops; /* cfg.nloops of them */
	struct luffd__pool *pool;  /* callback workers (pool.c) */
	struct luffd__bt *bt;      /* blocktime, shared by the handlers */
	struct luffd__evictor *ev; /* the resident limit's (evict.c), or NULL */
};

#endif /* LUFFD_CONTEXT_H */
