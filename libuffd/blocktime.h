/* SPDX-License-Identifier: MIT */
/*
 * Blocktime (blocktime.c): how long each faulting thread was blocked, how
 * long at least one was, and how long all were, across a context's handler
 * threads, as QEMU's post-copy reports it for its vCPUs.
 */
#ifndef LUFFD_BLOCKTIME_H
#define LUFFD_BLOCKTIME_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* A fault's place in the accounting (struct luffd__fault.bt): not counted,
 * counted without a thread id, or thread index + 1. */
#define LUFFD__BT_NONE 0
#define LUFFD__BT_ANON UINT16_MAX
/* Open addressing over thread ids: twice the threads, a power of two. */
#define LUFFD__BT_SLOTS (2 * LUFFD_BLOCKTIME_MAX_THREADS)

struct luffd__bt_thread {
	uint32_t tid;
	uint32_t depth;      /* its faults open now (normally 0 or 1) */
	bool library;        /* a libuffd worker caught faulting: left out */
	uint64_t since;      /* start of the stretch it is blocked in now */
	uint64_t last_end;   /* end of its last stretch */
	uint64_t blocked_ns; /* stretches ended so far */
	uint64_t faults;
};

struct luffd__bt {
	/* Held for one counter update at a fault's start (once per batch
	 * of messages) and end, and by the snapshots. */
	pthread_mutex_t lock;
	bool tids;         /* faults carry thread ids */
	uint32_t want;     /* luffd_ctx_opts.blocktime_threads (0: all seen) */
	uint32_t n;        /* entries of thr[] used, in order of first fault */
	uint32_t counted;  /* of them, application threads */
	uint32_t blocked;  /* threads blocked now (faults, without tids) */
	uint64_t clock;    /* the latest event time, so any/all never run
			      backwards when events come late */
	bool any_on, all_on;
	uint64_t any_since, all_since, any_ns, all_ns;
	uint64_t untracked; /* faults of threads that found the table full */
	uint16_t hash[LUFFD__BT_SLOTS]; /* thread index + 1, 0: empty */
	struct luffd__bt_thread thr[LUFFD_BLOCKTIME_MAX_THREADS];
};

/* Allocate the table (at context creation: nothing is allocated later).
 * want: luffd_ctx_opts.blocktime_threads; tids: faults carry thread ids.
 * Free with luffd__bt_free().  NULL when memory is short. */
struct luffd__bt *luffd__bt_new(uint32_t want, bool tids);
void luffd__bt_free(struct luffd__bt *b);

/*
 * n faults of threads tids[] start being blocked at time t (each gets its
 * place in slots[], to hand to luffd__bt_end()).  One lock for the batch.
 * t is when the fault's blocked interval starts: today the time libuffd
 * read the message; an earlier time (the thread's own fault entry) is
 * taken as it is for the thread's total, and from the latest event seen
 * for the any/all totals.
 */
void luffd__bt_start(struct luffd__bt *b, const uint32_t *tids,
		     uint16_t *slots, size_t n, uint64_t t);
/* The fault in slot stopped blocking its thread at time t (the wake-up).
 * LUFFD__BT_NONE is ignored. */
void luffd__bt_end(struct luffd__bt *b, uint16_t slot, uint64_t t);
/* The same for a fault of one of libuffd's own threads (a callback worker
 * caught touching the context's memory): that thread is no longer counted
 * as a faulting thread. */
void luffd__bt_forget(struct luffd__bt *b, uint16_t slot, uint64_t t);

/* The totals into the blocktime fields of *st, open intervals counted up
 * to now. */
void luffd__bt_snapshot(struct luffd__bt *b, struct luffd_stats *st);
/* luffd_blocktime_threads(). */
int luffd__bt_threads(struct luffd__bt *b, struct luffd_thread_blocktime *out,
		      size_t n);

#endif /* LUFFD_BLOCKTIME_H */
