/* SPDX-License-Identifier: MIT */
/*
 * Reads (read.c): a handler's reads in flight, one request each, with the
 * faults waiting on their pages; starting them, joining them, their
 * timeouts, and letting go of the ones whose region went away.  What a
 * finished read means for its faults is fault.c's.
 */
#ifndef LUFFD_READ_H
#define LUFFD_READ_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util.h"

struct luffd__loop;
struct luffd__pjob;
struct luffd__region;
struct luffd__req;

/* A read in flight: one window of consecutive store pages into cache
 * slots, or one staging chunk. */
struct luffd__op {
	struct luffd__req *req;       /* its request (the same entry for the
					 op's whole life) */
	struct luffd__region *region; /* held; NULL once let go (expired,
					 or its region died) */
	uint64_t store_id;            /* the cache key of its pages */
	uint64_t off;     /* store offset of the first page */
	uint64_t len;     /* bytes requested */
	uint64_t deadline;
	uint32_t npages;
	uint32_t widx;    /* the waiting fault's page in the window */
	uint32_t chunk;   /* the chunk it fills, or LUFFD__NIL (pages) */
	uint32_t next_free;
	bool expired;     /* read_timeout_ms passed: its faults got SIGBUS */
	bool had_waiter;  /* a fault started it (not background read-ahead) */
	struct luffd__pjob *job; /* the luffd_prefetch() it reads for, or
				    NULL (prefetch.c) */
	struct luffd__op *prev, *next; /* in flight (oldest first) or expired */
	uint32_t *slot;   /* npages cache slots (pages) */
	/* Per page: faults waiting for it (LUFFD__NIL); a chunk's waiters
	 * are all on waiters[0]. */
	uint32_t *waiters;
	struct iovec *iov_mem;
	int niov;
};

struct luffd__reads {
	struct luffd__op *ops;
	uint32_t nops, free, busy;
	uint32_t *slots, *waiters;
	struct luffd__req **reqs;   /* nops of them, for luffd__cq_close() */
	/* Reads in flight and not yet expired, oldest (first to expire)
	 * first: every read has the same timeout. */
	struct luffd__op *inflight_head, *inflight_tail;
	/* Reads past read_timeout_ms or let go on teardown, waiting for
	 * their store's (late) completion. */
	struct luffd__op *expired_head;
	uint32_t prefetching; /* reads for luffd_prefetch() in flight */
};

/* Handler set-up: qd reads of up to ra_pages pages each; their iovecs go
 * in *iov_block (owned by the completion queue from then on). */
int luffd__reads_init(struct luffd__loop *l, void **iov_block);
void luffd__reads_fini(struct luffd__loop *l);

/* A read of npages of r's store at off, holding r, on the in-flight list;
 * the caller sets its buffers (op->iov_mem, op->niov) and, for pages, its
 * slots.  NULL when every read is in flight. */
struct luffd__op *luffd__op_begin(struct luffd__loop *l,
				  struct luffd__region *r, uint64_t off,
				  uint32_t npages);
/* Hand op to its store (priority and LUFFD__REQ_* hints).  Its completion
 * comes back through the completion queue, never from inside this call. */
void luffd__op_submit(struct luffd__loop *l, struct luffd__op *op,
		      enum luffd_priority prio, unsigned int flags);
void luffd__op_free(struct luffd__loop *l, struct luffd__op *op);
/* A late completion (the read was cancelled or let go): its cache pages
 * were never delivered; release them. */
void luffd__op_release_pages(struct luffd__loop *l, struct luffd__op *op);

/*
 * Queue a read of up to n pages of r's store from page pg into the cache,
 * with fault fi (or LUFFD__NIL for read-ahead nobody waits for yet)
 * waiting on page pg + widx (the pages before it are known not to be
 * cached).  The window stops early at the end of the region, at the
 * store's size, at a page already cached, or when the cache cannot hold
 * it.  Returns the pages queued, 0 when no read or cache slot is free.
 */
uint32_t luffd__read_pages(struct luffd__loop *l, struct luffd__region *r,
			   uint64_t pg, uint64_t n, uint32_t fi,
			   uint32_t widx);

/* Demand read of page pg alone for fault fi, whose page a background
 * read is bringing in already, under the key LUFFD__ID_OVERTAKE: its
 * page is handed to its waiters and dropped.  0 when no slot is free. */
uint32_t luffd__read_overtake(struct luffd__loop *l, struct luffd__region *r,
			      uint64_t pg, uint32_t fi);
/* The same for prefetch job (fault fi none), at LUFFD_PRIO_PREFETCH. */
uint32_t luffd__read_prefetch(struct luffd__loop *l, struct luffd__region *r,
			      uint64_t pg, uint64_t n, struct luffd__pjob *job);
/* Job j ends before its reads do: they no longer report to it. */
void luffd__reads_forget_job(struct luffd__loop *l,
			     const struct luffd__pjob *j);
/* The read filling cache slot `slot` (in flight, page pg of store id), and
 * the page's index in it; NULL if no read has it (an internal error). */
struct luffd__op *luffd__page_op(struct luffd__loop *l, uint64_t id,
				 uint64_t pg, uint32_t slot, uint32_t *k);
/* Fault fi needs the data of read op, in flight: wait on list *w with the
 * others (once: a retried fault's second message is dropped), or, if the
 * read is past read_timeout_ms, fail at once. */
void luffd__read_join(struct luffd__loop *l, uint32_t fi,
		      const struct luffd__op *op, uint32_t *w);

/*
 * Reads past their deadline: cancelled (the store is told), their faults
 * get SIGBUS now.  The read may still complete later (a local file read
 * cannot be stopped); its slots stay reserved until then, and faults on
 * them meanwhile fail at once.  Returns the time until the next deadline,
 * or UINT64_MAX.
 */
uint64_t luffd__reads_expire(struct luffd__loop *l);
/* Regions died: drop the faults of dead regions waiting on reads, and let
 * go of (cancelling, when no live fault waits) the reads of dead regions. */
void luffd__reads_sweep(struct luffd__loop *l);

#endif /* LUFFD_READ_H */
