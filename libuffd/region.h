/* SPDX-License-Identifier: MIT */
/*
 * Regions and each handler's region table (region.c).
 *
 * Where a region can be, all guarded by the table's lock:
 *  - the table: live, found by faults;
 *  - dying: being removed by luffd_unmap()/luffd_unregister(); faults in
 *    it are left blocked until the unregister wakes them;
 *  - zombies: replaced after the application unmapped or moved part of it
 *    (UNMAP/REMAP events); faults already holding it finish normally, and
 *    it is freed by an application thread once none holds it.
 */
#ifndef LUFFD_REGION_H
#define LUFFD_REGION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct luffd_store;
struct luffd__cq;
struct luffd__rtab;

struct luffd__region {
	uint64_t start, len;
	uint64_t off;          /* store offset of start */
	struct luffd_store *store;
	struct luffd__rtab *tab;
	bool mapped;           /* created by luffd_map(): we munmap it (guarded
				  by tab->lock once in the table) */
	atomic_bool dead;      /* being removed: serve nothing more */
	atomic_uint inflight;  /* faults and reads holding the region */
	uint64_t born;         /* when it entered the table (ns): events read
				  before that are about an older mapping */
	uint64_t gid;          /* a stripe of a striped range (stripe_bytes):
				  the range's group id; 0 otherwise */
	unsigned int flags;    /* LUFFD_REGISTER_*, LUFFD__REGION_* */
	/* The resident limit's per-page state (evict.c), one byte per page
	 * (LUFFD__PS_*), for regions with LUFFD__REGION_EVICT; NULL
	 * otherwise.  Whether a page is present, dirty or protected the
	 * page tables say (pagemap): this keeps only what they do not. */
	_Atomic uint8_t *pst;
	/* Read-ahead stream state, handler thread only (policy.c). */
	uint64_t ra_next;      /* store page after the last window */
	uint64_t ra_mark;      /* a minor hit here reads the next window */
	uint32_t ra_win;       /* last window, pages */
	uint32_t ra_miss;      /* random misses not paid back by hits */
	uint32_t ra_credit;    /* hits beyond that (see fault.c) */
	/* Chunk streams (chunk.c), handler thread only.  huge: the mapping
	 * can take 2 MiB moves (luffd_map(), PROT_READ|PROT_WRITE, a store
	 * whose chunks pay, the kernel has UFFDIO_MOVE), set before the
	 * region is published; cleared by the handler if a move is
	 * refused. */
	bool huge;
	bool hp_on;            /* a sequential stream moved to chunks */
	uint64_t hp_next;      /* store offset of the next chunk to read */
	uint64_t hp_last;      /* store offset of the last chunk faulted */
	/* Background push (LUFFD_REGISTER_PUSH, prefetch.c): the job that
	 * streams the region in (handler thread only), and how it stands,
	 * for luffd_push_wait() (LUFFD__PUSH_*; push_err is written before
	 * push_state turns FAILED, with release). */
	struct luffd__pjob *pushj;
	_Atomic int push_state;
	int push_err;
	struct luffd__region *next; /* on dying or zombies */
};

/* One handler thread's regions, sorted by start. */
struct luffd__rtab {
	/* The handler takes it for a lookup, application threads to add or
	 * remove. */
	pthread_mutex_t lock;
	pthread_cond_t cv;     /* inflight of a dead region reached 0 */
	atomic_uint removing;  /* threads waiting for a region's holds */
	struct luffd__region **regions;
	size_t n, cap;
	struct luffd__region *dying, *zombies;
	int uffd;              /* the handler's userfaultfd */
	unsigned int page_shift;
	struct luffd__cq *cq;  /* wakes the handler */
	/* Regions died since the handler last looked (it then lets go of
	 * what it holds in them: see read.c). */
	atomic_bool died;
};

enum luffd__push_state {
	LUFFD__PUSH_IDLE,    /* no demand fault yet */
	LUFFD__PUSH_RUNNING,
	LUFFD__PUSH_DONE,    /* every page was found present */
	LUFFD__PUSH_FAILED,  /* ended early: push_err */
	LUFFD__PUSH_PENDING, /* a piece of a region being pushed (munmap()
				or mremap() of part of it): starts at once */
};

/* Region flags of libuffd's own, above the LUFFD_REGISTER_* bits. */
#define LUFFD__REGION_EVICT (1u << 16) /* under the resident limit */
#define LUFFD__REGION_RO (1u << 17)    /* luffd_map() without PROT_WRITE */

enum luffd__lookup { LUFFD__FOUND, LUFFD__DYING, LUFFD__UNKNOWN };

void luffd__rtab_init(struct luffd__rtab *t, int uffd, struct luffd__cq *cq,
		      unsigned int page_shift);
/* Frees the table and the zombies left (handler gone, every region
 * removed). */
void luffd__rtab_fini(struct luffd__rtab *t);

/* Find the live region containing addr and take a hold on it (inflight)
 * that luffd__region_put() drops. */
struct luffd__region *luffd__region_hold(struct luffd__rtab *t, uint64_t addr,
					 enum luffd__lookup *how);
/* Another hold on a region already held. */
static inline void luffd__region_hold_again(struct luffd__region *r)
{
	atomic_fetch_add(&r->inflight, 1);
}
void luffd__region_put(struct luffd__region *r);
static inline bool luffd__region_dead(const struct luffd__region *r)
{
	return atomic_load_explicit(&r->dead, memory_order_acquire);
}

/* Does [start, start+len) overlap a region of t? */
bool luffd__rtab_overlaps(struct luffd__rtab *t, uint64_t start, uint64_t len);
/* Add [start, start+len) of store at off to t, registered with t's
 * userfaultfd.  0 or -errno (nothing added). */
int luffd__region_add(struct luffd__rtab *t, uint64_t start, uint64_t len,
		      struct luffd_store *store, uint64_t off, bool mapped,
		      bool huge, uint64_t gid, unsigned int flags);
/* The region of t that starts at start, or NULL (t->lock held). */
struct luffd__region *luffd__rtab_at(struct luffd__rtab *t, uint64_t start);
/*
 * Remove r (t->lock held, r in t): mark it dead, wait until nothing holds
 * it, unregister (and for luffd_map() regions unmap) the range, free r.
 * Returns with t->lock released.
 */
void luffd__region_remove(struct luffd__rtab *t, struct luffd__region *r);
/* Free zombies nobody holds (application threads). */
void luffd__rtab_reap(struct luffd__rtab *t);

/* Handler thread: the application unmapped [start, end) or moved
 * [from, from+len) to `to`; regions are split and moved to match. */
void luffd__region_unmapped(struct luffd__rtab *t, uint64_t start,
			    uint64_t end, uint64_t t_read);
void luffd__region_moved(struct luffd__rtab *t, uint64_t from, uint64_t to,
			 uint64_t len, uint64_t t_read);

#endif /* LUFFD_REGION_H */
