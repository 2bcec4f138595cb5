/* SPDX-License-Identifier: MIT */
/*
 * Pages the application pushes in (prefetch.c): luffd_install() copies
 * the caller's data into missing pages on the caller's thread, and
 * luffd_prefetch() queues a range for the handler to read and install
 * in the background, behind every demand fault.
 */
#ifndef LUFFD_PREFETCH_H
#define LUFFD_PREFETCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct luffd_ctx;
struct luffd__loop;
struct luffd__op;
struct luffd__pjob;
struct luffd__region;

/* One handler's prefetch jobs. */
struct luffd__prefetch {
	/* Queued by application threads, taken by the handler. */
	pthread_mutex_t lock;
	struct luffd__pjob *in_head, *in_tail;
	unsigned int njobs;        /* queued or running (lock) */
	atomic_bool queued;        /* in_head is not empty */
	/* The handler's, in order: the first one is being read. */
	struct luffd__pjob *head, *tail;
	bool again;                /* more to do at once (handler) */
};

void luffd__prefetch_init(struct luffd__prefetch *p);
/* Handler: take new jobs and start their reads while no demand fault
 * waits and fewer than a few prefetch reads are in flight. */
void luffd__prefetch_run(struct luffd__loop *l);
/* Handler: prefetch read op finished (its pages are in the cache now, or
 * err): install what it read and account for it in its job. */
void luffd__prefetch_done(struct luffd__loop *l, struct luffd__op *op,
			  int err, uint64_t total);
/* Handler: a demand fault at store page pg of a LUFFD_REGISTER_PUSH
 * region: the region's push starts (the first one) or moves there. */
void luffd__push_fault(struct luffd__loop *l, struct luffd__region *r,
		       uint64_t pg);
/* Handler, after an UNMAP or REMAP event: the pieces of regions that were
 * being pushed start their own push. */
void luffd__push_pieces(struct luffd__loop *l);
/* Handler: a demand fault at store page pg joined prefetch read op. */
void luffd__prefetch_joined(struct luffd__loop *l, struct luffd__op *op,
			    uint64_t pg);
/* Handler: regions died; their jobs end (-ECANCELED). */
void luffd__prefetch_sweep(struct luffd__loop *l);
/* The application's calls (prefetch.c, dirty.c): the live region of ctx
 * holding addr, held, and its handler (NULL: none). */
struct luffd__region *luffd__hold_at(struct luffd_ctx *ctx, uint64_t addr,
				     struct luffd__loop **lp);
/* addr page-aligned, len non-zero (-EINVAL), every page of it in regions of
 * ctx (-ENOENT); *endp: the end, len rounded up to whole pages. */
int luffd__check_range(struct luffd_ctx *ctx, const void *addr, size_t len,
		       uint64_t *endp);
/* The handler is gone: end every job (-ECANCELED). */
void luffd__prefetch_fini(struct luffd__loop *l);

#endif /* LUFFD_PREFETCH_H */
