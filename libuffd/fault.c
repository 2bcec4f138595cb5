/* SPDX-License-Identifier: MIT */
/*
 * Serving a fault: where its page comes from, and what a finished read
 * means for the faults waiting on it.
 *
 * A read's completion arrives through the completion queue (see req.h),
 * never from inside the call that started it, so serving a fault never
 * recurses into serving another: a fault whose shared read failed, or
 * whose chunk could not serve it, is served again from here.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "cache.h"
#include "chunk.h"
#include "evict.h"
#include "fault.h"
#include "install.h"
#include "loop.h"
#include "policy.h"
#include "read.h"
#include "record.h"
#include "region.h"
#include "req.h"
#include "store.h"

#define F(l, i) luffd__F(&(l)->rs, (i))

/* A state that cannot happen did: fail the fault rather than the
 * process, count it, and say so. */
static void internal_error(struct luffd__loop *l, uint32_t fi,
			   const char *what)
{
	luffd__inc(l->stats.internal_errors, 1);
	pr_warn("internal error: %s (fault at %#llx): SIGBUS\n", what,
		(unsigned long long)F(l, fi)->addr);
	luffd__serve_error(&l->rs, fi, -ENOTRECOVERABLE);
}

/* Fault fi waits for a free read or cache slot (a read always completes
 * or times out, so this cannot deadlock). */
static void park(struct luffd__loop *l, uint32_t fi)
{
	if (!F(l, fi)->parked)
		luffd__inc(l->stats.waits, 1);
	F(l, fi)->parked = 1;
	luffd__flist_push(&l->rs, &l->pending, fi);
}

/* Start a read for fault fi, whose page (store offset off) is not in the
 * cache. */
static void start_read(struct luffd__loop *l, uint32_t fi, uint64_t off)
{
	struct luffd__fault *f = F(l, fi);
	struct luffd__region *r = f->region;
	struct luffd_store *s = r->store;
	unsigned int shift = l->cfg->page_shift;
	size_t ps = l->cfg->page_size;
	uint64_t pg = off >> shift, n, data_end = UINT64_MAX, base, coff;
	uint32_t got;
	bool around;

	if (off >= s->size && !(s->caps & LUFFD__CAP_LIVE_SIZE)) {
		luffd__serve_error(&l->rs, fi, -ENXIO);
		return;
	}
	/* Past the size seen at creation, the read itself decides: the file
	 * may have grown, and a read of 0 bytes means SIGBUS. */
	if ((s->caps & LUFFD__CAP_HOLES) && off < s->size &&
	    s->ops->hole(s, off, ps, &data_end) == 1) {
		luffd__serve_zero(&l->rs, fi);
		return;
	}
	/* A region being pushed reads just the faulting page: the push
	 * goes on from the next one, and the thread waits for one page's
	 * round trip, not a window's. */
	n = f->alone || r->pushj ? 1 : luffd__ra_window(l, r, pg);
	if (r->huge && !f->nochunk && l->cfg->ra_adaptive &&
	    n >= l->cfg->ra_pages && pg == r->ra_next) {
		/* A stream that fills whole windows goes on in chunks; if
		 * this page starts one, it waits for that. */
		luffd__chunk_kick(l, r);
		if (luffd__chunk_fault(l, fi))
			return;
	}
	n = luffd__chunk_clip(l, r, pg, n);
	/* Sparse files: not past the data run. */
	if (data_end != UINT64_MAX) {
		uint64_t lim = data_end > off ?
			(data_end - off + ps - 1) >> shift : 1;

		n = n < lim ? n : lim;
	}
	/* Read-around only where a read past the faulting page cannot
	 * change its answer. */
	around = n == 1 && !r->pushj && l->cfg->ra_adaptive &&
		 luffd__ra_around_pays(r) &&
		 data_end == UINT64_MAX && !f->alone &&
		 (s->caps & LUFFD__CAP_READ_AROUND);
	if (n == 1)
		luffd__ra_count_miss(r);
	/* Random misses whose neighbours keep being used read the whole
	 * 2 MiB chunk around them where the region can take chunks. */
	if (around && r->huge && !f->nochunk &&
	    luffd__chunk_of(r, f->addr, &base, &coff) &&
	    luffd__chunk_find(l, s->id, coff) == LUFFD__NIL &&
	    coff < s->size && luffd__ra_take_chunk_credit(r) &&
	    luffd__chunk_read_whole(l, r, base, coff, fi))
		return;
	if (around)
		got = luffd__ra_around(l, r, pg, fi);
	else
		got = luffd__ra_read(l, r, pg, n, fi);
	if (!got)
		park(l, fi);
}

/* A cache hit on slot `slot` (store page pg of fault fi's region). */
static void serve_hit(struct luffd__loop *l, uint32_t fi, uint64_t pg,
		      uint32_t slot)
{
	struct luffd__region *r = F(l, fi)->region;
	bool ra = luffd__ra_at_mark(l, r, pg);

	/* A stream that fills whole windows goes on in chunks where the
	 * region can take them. */
	if (ra && r->huge && r->ra_win >= l->cfg->ra_pages)
		luffd__chunk_kick(l, r);
	luffd__ra_hit(l, r, pg);
	if (ra) /* r is used after the fault is served */
		luffd__region_hold_again(r);
	luffd__serve_copy(&l->rs, fi, luffd__cache_data(&l->cache, slot),
			  LUFFD_MINOR);
	luffd__cache_used(&l->cache, slot);
	/* The next window only now: a read the page cache (or a callback)
	 * answers at once fills cache slots on the spot, and could evict
	 * this page's before it was copied. */
	if (ra) {
		luffd__ra_next_window(l, r);
		luffd__region_put(r);
	}
}

/* A store whose bytes are in memory: straight from them. */
static void serve_direct(struct luffd__loop *l, uint32_t fi, uint64_t off)
{
	struct luffd_store *s = F(l, fi)->region->store;
	size_t ps = l->cfg->page_size;
	const void *src = s->ops->direct(s, off);

	if (!src) {
		luffd__serve_error(&l->rs, fi, -ENXIO);
		return;
	}
	if (off + ps > s->size) {
		memcpy(l->bounce, src, s->size - off);
		memset(l->bounce + (s->size - off), 0, ps - (s->size - off));
		src = l->bounce;
	}
	luffd__serve_copy(&l->rs, fi, src, LUFFD_MINOR);
}

/* Fault fi's page is in a background read, which may wait behind
 * megabytes of others: where the store has a lane for demand, read the
 * page alone on it (or join such a read).  False: join the background
 * read after all (no slot free). */
static bool overtake(struct luffd__loop *l, uint32_t fi, uint64_t pg)
{
	struct luffd__region *r = F(l, fi)->region;
	uint64_t id = r->store->id | LUFFD__ID_OVERTAKE;
	uint32_t slot = luffd__cache_find(&l->cache, id, pg), k;
	struct luffd__op *op;

	if (slot == LUFFD__NIL)
		return luffd__read_overtake(l, r, pg, fi) != 0;
	op = luffd__page_op(l, id, pg, slot, &k);
	if (!op || op->expired)
		return false;
	luffd__read_join(l, fi, op, &op->waiters[k]);
	return true;
}

/*
 * A write-protect fault: a kind of its own, whose page is present.  Only
 * a LUFFD_REGISTER_WP region installs pages protected; one elsewhere (a
 * region registered without WP mode cannot raise one, so this is a bug)
 * is un-protected all the same, so its writer cannot fault forever, and
 * counted apart.
 */
static void serve_wp(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);
	size_t ps = l->cfg->page_size;

	if (likely(f->region->flags & LUFFD_REGISTER_WP)) {
		struct luffd__region *r = f->region;
		uint64_t addr;

		/* The evictor is deciding whether to drop the page: the
		 * write waits (retried, as after -EAGAIN). */
		if (r->pst && !luffd__evict_wp_begin(r, f->addr)) {
			luffd__flist_push(&l->rs, &l->rs.retry, fi);
			return;
		}
		if (!r->pst) {
			luffd__serve_unprotect(&l->rs, fi);
			return;
		}
		/* The fault lets go of r when served: r stays held until
		 * its page's flag is cleared. */
		luffd__region_hold_again(r);
		addr = f->addr;
		luffd__serve_unprotect(&l->rs, fi);
		luffd__evict_wp_done(r, addr);
		luffd__region_put(r);
		return;
	}
	luffd__inc(l->stats.wp_unexpected, 1);
	pr_warn("write-protect fault at %#llx in a region without "
		"LUFFD_REGISTER_WP: un-protected\n",
		(unsigned long long)f->addr);
	if (luffd__pt_protect(l->uffd, f->addr, ps, false, 0))
		luffd__pt_wake(l->uffd, f->addr, ps);
	luffd__fault_drop(&l->rs, fi);
}

void luffd__fault_serve(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);
	struct luffd__region *r = f->region;
	struct luffd_store *s = r->store;
	uint64_t off = r->off + (f->addr - r->start);
	uint64_t pg = off >> l->cfg->page_shift;
	struct luffd__op *op;
	uint32_t slot, k;

	if (luffd__fault_drop_if_dead(&l->rs, fi))
		return;
	if (f->wp) {
		serve_wp(l, fi);
		return;
	}
	if (r->pst) {
		/* Over the resident limit: the fault waits for the evictor
		 * (retried every 50 us), as a thread in the kernel's direct
		 * reclaim does, so memory stays bounded however fast the
		 * faults come. */
		if (luffd__evict_hold(l, f->t0)) {
			luffd__flist_push(&l->rs, &l->rs.retry, fi);
			return;
		}
		luffd__evict_touch(l, r, f->addr);
	}
	if (r->flags & LUFFD_REGISTER_PUSH)
		luffd__push_fault(l, r, pg);
	if (s->caps & LUFFD__CAP_DIRECT) {
		serve_direct(l, fi, off);
		return;
	}
	if (r->huge && !f->nochunk && luffd__chunk_fault(l, fi))
		return;
	slot = luffd__cache_find(&l->cache, s->id, pg);
	if (slot == LUFFD__NIL) {
		start_read(l, fi, off);
		return;
	}
	if (luffd__cache_state(&l->cache, slot) == LUFFD__SLOT_READY) {
		serve_hit(l, fi, pg, slot);
		return;
	}
	op = luffd__page_op(l, s->id, pg, slot, &k);
	if (!op) {
		internal_error(l, fi, "a page in flight has no read");
		return;
	}
	if (op->job)
		luffd__prefetch_joined(l, op, pg);
	if (op->job && !op->expired && (s->caps & LUFFD__CAP_DEMAND_LANE) &&
	    overtake(l, fi, pg))
		return;
	luffd__read_join(l, fi, op, &op->waiters[k]);
}

/* ------------------------------------------------------------------------
 * Completions
 * ---------------------------------------------------------------------- */

enum page_fate { PAGE_READY, PAGE_ZERO, PAGE_ERROR, PAGE_ABSENT };

/* Page k of op: into the cache or out of it, and its waiters served. */
static void settle_page(struct luffd__loop *l, struct luffd__op *op,
			uint32_t k, enum page_fate fate, int err, bool shared)
{
	struct luffd__cache *c = &l->cache;
	uint32_t slot = op->slot[k], w = op->waiters[k], next;
	bool once = op->store_id & LUFFD__ID_OVERTAKE;

	/* The page is no longer this read's: the waiters served below may
	 * read it again into the same slot (re-read alone after an error),
	 * and luffd__page_op() must then find that read, not this one. */
	op->slot[k] = LUFFD__NIL;
	op->waiters[k] = LUFFD__NIL;
	if (fate == PAGE_READY && !once) {
		luffd__cache_ready(c, slot);
		if (w != LUFFD__NIL)
			luffd__cache_used(c, slot);
	} else if (fate != PAGE_READY) {
		luffd__cache_release(c, slot);
	}
	for (; w != LUFFD__NIL; w = next) {
		next = F(l, w)->next;
		switch (fate) {
		case PAGE_READY:
			luffd__serve_copy(&l->rs, w, luffd__cache_data(c, slot),
					  LUFFD_MAJOR);
			break;
		case PAGE_ZERO:
			luffd__serve_zero(&l->rs, w);
			break;
		case PAGE_ERROR:
			/* A read of several pages failed: the fault's own
			 * page may be fine, so it is read again alone before
			 * anyone gets SIGBUS for it. */
			if (shared && !F(l, w)->alone) {
				F(l, w)->alone = 1;
				luffd__fault_serve(l, w);
			} else {
				luffd__serve_error(&l->rs, w, err);
			}
			break;
		case PAGE_ABSENT:
			/* Not delivered by a short answer: ask again. */
			luffd__fault_serve(l, w);
			break;
		}
	}
	/* An overtaking read's page is its waiters' alone: the background
	 * read brings the page to the cache under the store's key. */
	if (fate == PAGE_READY && once)
		luffd__cache_release(c, slot);
}

/* The pages of op, total bytes read (or err). */
static void settle_pages(struct luffd__loop *l, struct luffd__op *op,
			 unsigned int caps, uint64_t total, int err)
{
	size_t ps = l->cfg->page_size;
	bool shared = op->npages > 1;

	/* The window's other pages first, and install-ahead, so that the
	 * faulting page's thread is woken last. */
	for (uint32_t j = 1; j <= op->npages; j++) {
		uint32_t k = (op->widx + j) % op->npages;
		uint64_t at = (uint64_t)k * ps;
		uint64_t have = total > at ? total - at : 0;
		uint32_t slot = op->slot[k];

		if (have >= ps) {
			settle_page(l, op, k, PAGE_READY, 0, shared);
		} else if (have > 0 && !err) {
			/* The store's last page: zeroes after its end, as
			 * mmap shows them. */
			memset((char *)luffd__cache_data(&l->cache, slot) + have,
			       0, ps - have);
			settle_page(l, op, k, PAGE_READY, 0, shared);
		} else if (err) {
			settle_page(l, op, k, PAGE_ERROR, err, shared);
		} else if (caps & LUFFD__CAP_EMPTY_ZERO) {
			settle_page(l, op, k,
				    k == op->widx ? PAGE_ZERO : PAGE_ABSENT, 0,
				    shared);
		} else {
			/* Past the end of the store. */
			settle_page(l, op, k, PAGE_ERROR, -ENXIO, shared);
		}
		if (j == op->npages - 1 && op->had_waiter && total >= ps &&
		    !err && op->region)
			luffd__install_ahead(l, op->region,
					     (op->off >> l->cfg->page_shift) +
						     op->widx);
	}
}

/* The read op finished with res. */
static void complete(struct luffd__loop *l, struct luffd__op *op, int64_t res)
{
	struct luffd__req *r = op->req;
	unsigned int caps = r->store->caps;
	uint64_t total;
	uint32_t rest;
	int err = 0;

	if (luffd__req_state(r) == LUFFD__REQ_LATE || op->expired) {
		/* Cancelled (timed out, or its region went): its faults
		 * were failed or dropped then; drop the data. */
		luffd__inc(l->stats.late, 1);
		if (op->job)
			luffd__prefetch_done(l, op, -ECANCELED, 0);
		if (op->chunk != LUFFD__NIL)
			luffd__chunk_late(l, op);
		else
			luffd__op_release_pages(l, op);
		luffd__req_finish(r);
		luffd__op_free(l, op);
		return;
	}
	if (atomic_load(&r->misuse)) {
		luffd__inc(l->stats.misuse, 1);
		pr_warn("a store callback touched memory served by its own "
			"handler thread: its faults get SIGBUS\n");
		res = -EDEADLK;
	}
	if (res > (int64_t)op->len)
		res = (int64_t)op->len;
	if (res > 0)
		luffd__inc(l->stats.bytes_read, (uint64_t)res);
	else if (res < 0)
		err = (int)res;
	total = res > 0 ? (uint64_t)res : 0;
	if (op->chunk != LUFFD__NIL) {
		luffd__chunk_complete(l, op, total, err, &rest);
		luffd__req_finish(r);
		luffd__op_free(l, op);
		while (rest != LUFFD__NIL) {
			uint32_t fi = rest;

			rest = F(l, fi)->next;
			F(l, fi)->next = LUFFD__NIL;
			luffd__fault_serve(l, fi);
		}
		return;
	}
	settle_pages(l, op, caps, total, err);
	if (op->job)
		luffd__prefetch_done(l, op, err, total);
	luffd__req_finish(r);
	luffd__op_free(l, op);
}

bool luffd__fault_completions_some(struct luffd__loop *l,
				   unsigned int background)
{
	struct luffd__req *r;

	while ((r = luffd__cq_pop(l->cq))) {
		bool bg = ((struct luffd__op *)r->owner)->job != NULL;

		complete(l, r->owner, r->res);
		if (bg && !--background)
			return true;
	}
	return false;
}

void luffd__fault_completions(struct luffd__loop *l)
{
	luffd__fault_completions_some(l, UINT_MAX);
}

/* ------------------------------------------------------------------------
 * Faults waiting for another try
 * ---------------------------------------------------------------------- */

static void rerun(struct luffd__loop *l, struct luffd__flist *q, uint64_t now)
{
	uint32_t i = luffd__flist_take(q), next;
	uint64_t ns = (uint64_t)l->cfg->read_timeout_ms * 1000000ull;

	for (; i != LUFFD__NIL; i = next) {
		next = F(l, i)->next;
		F(l, i)->next = LUFFD__NIL;
		/* A fault that never got a read (every one stuck on a store
		 * that does not answer) fails like one whose read did.  Not
		 * a write-protect fault: it needs no read, only the evictor
		 * to be done with its page (evict.c), which it will be. */
		if (ns && !F(l, i)->wp && now - F(l, i)->t0 >= ns &&
		    !luffd__region_dead(F(l, i)->region))
			luffd__serve_error(&l->rs, i, -ETIMEDOUT);
		else
			luffd__fault_serve(l, i);
	}
}

void luffd__faults_rerun(struct luffd__loop *l)
{
	uint64_t now;

	if (l->rs.retry.head == LUFFD__NIL && l->pending.head == LUFFD__NIL)
		return;
	now = luffd__now_ns();
	if (l->rs.retry.head != LUFFD__NIL)
		rerun(l, &l->rs.retry, now);
	if (l->pending.head != LUFFD__NIL)
		rerun(l, &l->pending, now);
}

uint64_t luffd__faults_next_deadline(struct luffd__loop *l, uint64_t now)
{
	uint64_t ns = (uint64_t)l->cfg->read_timeout_ms * 1000000ull, due;

	if (!ns || l->pending.head == LUFFD__NIL)
		return UINT64_MAX;
	due = F(l, l->pending.head)->t0 + ns;
	return due > now ? due - now : 0;
}
