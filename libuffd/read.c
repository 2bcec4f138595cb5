/* SPDX-License-Identifier: MIT */
/*
 * Reads: a handler's requests to its stores, the faults waiting on them,
 * and their deadlines.
 *
 * A read is handed to its store and the handler goes on: whatever the
 * store does (an inline copy, an io_uring read, a worker thread, another
 * machine), its answer comes back through the completion queue.  A slow
 * read never delays a fault on another page.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cache.h"
#include "guard.h"
#include "loop.h"
#include "read.h"
#include "record.h"
#include "region.h"
#include "req.h"
#include "store.h"

#define F(l, i) luffd__F(&(l)->rs, (i))

int luffd__reads_init(struct luffd__loop *l, void **iov_block)
{
	struct luffd__reads *rd = &l->rd;
	uint32_t qd = l->cfg->queue_depth, ra = l->cfg->ra_pages;
	struct iovec *iov;
	int err;

	*iov_block = NULL;
	rd->ops = calloc(qd, sizeof(*rd->ops));
	rd->reqs = calloc(qd, sizeof(*rd->reqs));
	rd->slots = calloc((size_t)qd * ra, sizeof(*rd->slots));
	rd->waiters = calloc((size_t)qd * ra, sizeof(*rd->waiters));
	/* The iovecs a store reads into belong to the completion queue: a
	 * store that answers after the handler is gone still reads them. */
	iov = calloc((size_t)qd * ra, sizeof(*iov));
	*iov_block = iov;
	if (!rd->ops || !rd->reqs || !rd->slots || !rd->waiters || !iov)
		return -ENOMEM;
	rd->free = LUFFD__NIL;
	for (uint32_t i = qd; i-- > 0;) {
		struct luffd__op *op = &rd->ops[i];

		err = luffd__req_alloc(&rd->reqs[i]);
		if (err)
			return err;
		op->req = rd->reqs[i];
		op->req->owner = op;
		op->slot = &rd->slots[(size_t)i * ra];
		op->iov_mem = &iov[(size_t)i * ra];
		op->waiters = &rd->waiters[(size_t)i * ra];
		op->next_free = rd->free;
		rd->free = i;
	}
	rd->nops = qd;
	return 0;
}

void luffd__reads_fini(struct luffd__loop *l)
{
	struct luffd__reads *rd = &l->rd;

	free(rd->ops);
	free(rd->reqs);
	free(rd->slots);
	free(rd->waiters);
	memset(rd, 0, sizeof(*rd));
}

/* Take op off a list of reads (tail: NULL for a list without one). */
static void op_unlink(struct luffd__op **head, struct luffd__op **tail,
		      struct luffd__op *op)
{
	if (op->prev)
		op->prev->next = op->next;
	else
		*head = op->next;
	if (op->next)
		op->next->prev = op->prev;
	else if (tail)
		*tail = op->prev;
	op->prev = op->next = NULL;
}

/* op leaves the in-flight list for the expired one, letting its region
 * go: it installs nothing any more, so the region's removal must not
 * wait for a read that may never end (a dead pipe or server). */
static void op_let_go(struct luffd__loop *l, struct luffd__op *op)
{
	struct luffd__reads *rd = &l->rd;

	op_unlink(&rd->inflight_head, &rd->inflight_tail, op);
	op->expired = true;
	op->next = rd->expired_head;
	if (op->next)
		op->next->prev = op;
	rd->expired_head = op;
	if (op->region)
		luffd__region_put(op->region);
	op->region = NULL;
}

struct luffd__op *luffd__op_begin(struct luffd__loop *l,
				  struct luffd__region *r, uint64_t off,
				  uint32_t npages)
{
	struct luffd__reads *rd = &l->rd;
	struct luffd__op *op;

	if (rd->free == LUFFD__NIL)
		return NULL;
	op = &rd->ops[rd->free];
	rd->free = op->next_free;
	rd->busy++;
	/* The read holds its region: removal waits for it (or lets it go:
	 * see luffd__reads_sweep()). */
	op->region = r;
	luffd__region_hold_again(r);
	op->store_id = r->store->id;
	op->expired = false;
	op->deadline = luffd__deadline(l->cfg, luffd__now_ns());
	op->next = NULL;
	op->prev = rd->inflight_tail;
	if (op->prev)
		op->prev->next = op;
	else
		rd->inflight_head = op;
	rd->inflight_tail = op;
	op->off = off;
	op->npages = npages;
	op->len = (uint64_t)npages << l->cfg->page_shift;
	op->niov = 0;
	op->widx = 0;
	op->chunk = LUFFD__NIL;
	op->job = NULL;
	op->waiters[0] = LUFFD__NIL;
	return op;
}

/*
 * The guard gave a misbehaving callback zero pages to read (see guard.c):
 * drop them before anyone else reads zeroes there.  madvise() waits until
 * the REMOVE event it raises is read; the guard reads it for us while
 * `zapping` is set (and stashes it with anything else it reads).
 */
static void drop_zero_pages(struct luffd__loop *l);

void luffd__op_submit(struct luffd__loop *l, struct luffd__op *op,
		      enum luffd_priority prio, unsigned int flags)
{
	struct luffd__req *r = op->req;
	struct luffd_store *s = op->region->store;
	int rc;

	r->iov = op->iov_mem;
	r->pub.iov = op->iov_mem;
	r->pub.iovcnt = op->niov;
	r->pub.offset = op->off;
	r->pub.len = op->len;
	r->pub.deadline_ns = op->deadline == UINT64_MAX ? 0 : op->deadline;
	r->pub.priority = prio;
	r->flags = flags;
	luffd__req_issue(r, l->cq, s);
	if (!(s->caps & LUFFD__CAP_APP_CODE)) {
		rc = s->ops->read(s, r);
	} else {
		/* Application code: if it touches a region of this handler
		 * it faults on itself; the guard notices (see guard.c),
		 * lets it go on with zeroes and flags the result. */
		atomic_store(&l->cb_since, luffd__now_ns());
		rc = s->ops->read(s, r);
		atomic_store(&l->cb_since, 0);
		if (atomic_exchange(&l->cb_misuse, false)) {
			atomic_store(&r->misuse, true);
			drop_zero_pages(l);
		}
	}
	/* Failed at once: the same way back as any answer. */
	if (rc < 0)
		luffd__req_complete(r, rc);
}

static void rd_prefetching(struct luffd__loop *l, int d)
{
	l->rd.prefetching = (uint32_t)((int)l->rd.prefetching + d);
}

void luffd__op_free(struct luffd__loop *l, struct luffd__op *op)
{
	struct luffd__reads *rd = &l->rd;

	if (op->job)
		rd_prefetching(l, -1);
	op->job = NULL;

	if (!op->expired)
		op_unlink(&rd->inflight_head, &rd->inflight_tail, op);
	else
		op_unlink(&rd->expired_head, NULL, op);
	if (op->region)
		luffd__region_put(op->region);
	op->region = NULL;
	op->next_free = rd->free;
	rd->free = (uint32_t)(op - rd->ops);
	rd->busy--;
}

void luffd__op_release_pages(struct luffd__loop *l, struct luffd__op *op)
{
	for (uint32_t k = 0; k < op->npages; k++) {
		if (op->slot[k] != LUFFD__NIL)
			luffd__cache_release(&l->cache, op->slot[k]);
		op->slot[k] = LUFFD__NIL;
	}
}

static uint32_t read_window(struct luffd__loop *l, struct luffd__region *r,
			    uint64_t pg, uint64_t n, uint32_t fi,
			    uint32_t widx, struct luffd__pjob *job,
			    uint64_t id)
{
	struct luffd_store *s = r->store;
	struct luffd__cache *c = &l->cache;
	unsigned int shift = l->cfg->page_shift;
	size_t ps = l->cfg->page_size;
	uint64_t lim = ((r->off + r->len) >> shift) - pg;
	struct luffd__op *op;
	uint32_t avail, first;

	n = n < lim ? n : lim;
	/* Not past the store's size (but always up to the faulting page: a
	 * file may have grown since). */
	lim = s->size > (pg << shift) ?
		(s->size - (pg << shift) + ps - 1) >> shift : 1;
	n = n < lim ? n : lim;
	if (n < (uint64_t)widx + 1)
		n = (uint64_t)widx + 1;
	for (uint64_t k = fi == LUFFD__NIL ? 0 : widx + 1; k < n; k++)
		if (luffd__cache_find(c, s->id, pg + k) != LUFFD__NIL) {
			n = k;
			break;
		}
	avail = luffd__cache_available(c);
	if (!n || avail <= widx)
		return 0;
	if (n > avail)
		n = avail;
	if (l->rd.free == LUFFD__NIL)
		return 0;
	/* The first page's slot before the read: it enters the store in the
	 * cache's table, which only fails when memory is short (then the
	 * fault waits for a read to finish, as when every slot is busy).
	 * The other pages then cannot fail (avail, and the store is in). */
	first = luffd__cache_alloc(c, id, pg);
	if (first == LUFFD__NIL)
		return 0;
	op = luffd__op_begin(l, r, pg << shift, (uint32_t)n);
	op->store_id = id;
	op->widx = widx;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t slot = k ? luffd__cache_alloc(c, id, pg + k) : first;
		char *data = luffd__cache_data(c, slot);
		struct iovec *last = op->niov ? &op->iov_mem[op->niov - 1]
					      : NULL;

		op->slot[k] = slot;
		op->waiters[k] = LUFFD__NIL;
		/* Slots handed out in order are often adjacent: one iovec
		 * for each run keeps requests large (O_DIRECT likes that). */
		if (last && (char *)last->iov_base + last->iov_len == data) {
			last->iov_len += ps;
		} else {
			op->iov_mem[op->niov].iov_base = data;
			op->iov_mem[op->niov].iov_len = ps;
			op->niov++;
		}
	}
	luffd__inc(l->stats.evictions, c->evictions);
	c->evictions = 0;
	op->had_waiter = fi != LUFFD__NIL;
	op->job = job;
	if (job)
		rd_prefetching(l, 1);
	if (fi != LUFFD__NIL) {
		F(l, fi)->waited = 1;
		F(l, fi)->next = LUFFD__NIL;
		op->waiters[widx] = fi;
	}
	luffd__inc(l->stats.reads, 1);
	if (!job)
		luffd__inc(l->stats.readahead_pages,
			   fi == LUFFD__NIL ? n : n - 1);
	/* Prefetch: nobody waits, so its copy runs off the handler thread,
	 * and cold data may skip the page cache (whose read-ahead would
	 * otherwise grow it into megabytes that demand reads queue
	 * behind).  Under a resident limit cold data skips it too: libuffd
	 * keeps the pages itself, and a second copy in the page cache is
	 * memory a memory cgroup charges and must reclaim.  256 MiB file,
	 * 48 MiB limit in a 64 MiB cgroup, 8 threads, half writes: 0.60-0.65x
	 * mmap(MAP_SHARED)'s throughput with buffered reads, 0.73-0.75x with
	 * this (bench/README.md). */
	luffd__op_submit(l, op, job ? LUFFD_PRIO_PREFETCH :
				fi == LUFFD__NIL ? LUFFD_PRIO_READAHEAD :
				LUFFD_PRIO_DEMAND,
			 job ? LUFFD__REQ_OFFLOAD | LUFFD__REQ_BULK :
			 r->pst ? LUFFD__REQ_BULK : 0);
	return (uint32_t)n;
}

void luffd__reads_forget_job(struct luffd__loop *l,
			     const struct luffd__pjob *j)
{
	struct luffd__op *lists[2] = { l->rd.inflight_head,
				       l->rd.expired_head };

	for (int i = 0; i < 2; i++)
		for (struct luffd__op *op = lists[i]; op; op = op->next)
			if (op->job == j) {
				op->job = NULL;
				rd_prefetching(l, -1);
			}
}

uint32_t luffd__read_pages(struct luffd__loop *l, struct luffd__region *r,
			   uint64_t pg, uint64_t n, uint32_t fi,
			   uint32_t widx)
{
	return read_window(l, r, pg, n, fi, widx, NULL, r->store->id);
}

uint32_t luffd__read_prefetch(struct luffd__loop *l, struct luffd__region *r,
			      uint64_t pg, uint64_t n, struct luffd__pjob *job)
{
	return read_window(l, r, pg, n, LUFFD__NIL, 0, job, r->store->id);
}

uint32_t luffd__read_overtake(struct luffd__loop *l, struct luffd__region *r,
			      uint64_t pg, uint32_t fi)
{
	return read_window(l, r, pg, 1, fi, 0, NULL,
			   r->store->id | LUFFD__ID_OVERTAKE);
}

/*
 * A walk over the reads in flight (at most queue_depth, expired ones
 * included) instead of a read index in every cache slot: it is taken only
 * by a fault on a page being read, and keeps the cache at 12 bytes a slot.
 */
struct luffd__op *luffd__page_op(struct luffd__loop *l, uint64_t id,
				 uint64_t pg, uint32_t slot, uint32_t *k)
{
	struct luffd__op *lists[2] = { l->rd.inflight_head,
				       l->rd.expired_head };
	unsigned int shift = l->cfg->page_shift;

	for (int i = 0; i < 2; i++)
		for (struct luffd__op *op = lists[i]; op; op = op->next) {
			uint64_t at = pg - (op->off >> shift);

			if (op->chunk == LUFFD__NIL && op->store_id == id &&
			    at < op->npages && op->slot[at] == slot) {
				*k = (uint32_t)at;
				return op;
			}
		}
	return NULL;
}

/* A thread interrupted by a signal faults again and sends a second
 * message for the same fault; the kernel counts a retried fault once, and
 * so does libuffd. */
static bool dup_waiter(struct luffd__loop *l, uint32_t w,
		       const struct luffd__fault *f)
{
	if (!f->tid)
		return false;
	for (; w != LUFFD__NIL; w = F(l, w)->next)
		if (F(l, w)->tid == f->tid && F(l, w)->addr == f->addr)
			return true;
	return false;
}

void luffd__read_join(struct luffd__loop *l, uint32_t fi,
		      const struct luffd__op *op, uint32_t *w)
{
	struct luffd__fault *f = F(l, fi);

	if (op->expired) {
		luffd__serve_error(&l->rs, fi, -ETIMEDOUT);
		return;
	}
	if (dup_waiter(l, *w, f)) {
		luffd__fault_drop(&l->rs, fi);
		return;
	}
	luffd__inc(l->stats.coalesced, 1);
	f->waited = 1;
	f->next = *w;
	*w = fi;
}

/* SIGBUS (err) for every fault on wait list *w, which empties. */
static void fail_waiters(struct luffd__loop *l, uint32_t *w, int err)
{
	uint32_t fi = *w, next;

	*w = LUFFD__NIL;
	for (; fi != LUFFD__NIL; fi = next) {
		next = F(l, fi)->next;
		luffd__serve_error(&l->rs, fi, err);
	}
}

/* Tell op's store it is cancelled (if it had not answered yet). */
static void op_cancel(struct luffd__loop *l, struct luffd__op *op)
{
	struct luffd__req *r = op->req;

	if (luffd__req_cancel(r)) {
		luffd__inc(l->stats.cancels, 1);
		if (r->store->ops->cancel)
			r->store->ops->cancel(r->store, r);
	}
}

uint64_t luffd__reads_expire(struct luffd__loop *l)
{
	struct luffd__op *op;
	uint64_t now;

	if (!l->rd.inflight_head || l->rd.inflight_head->deadline == UINT64_MAX)
		return UINT64_MAX;
	now = luffd__now_ns();
	while ((op = l->rd.inflight_head) && op->deadline <= now) {
		uint32_t n = op->chunk == LUFFD__NIL ? op->npages : 1;

		/* Answered meanwhile: its completion is queued, and wins;
		 * the loop acts on it before it waits again. */
		if (luffd__req_state(op->req) != LUFFD__REQ_ISSUED)
			return 0;
		op_cancel(l, op); /* before the region is let go, as below */
		op_let_go(l, op);
		luffd__inc(l->stats.timeouts, 1);
		for (uint32_t k = 0; k < n; k++)
			fail_waiters(l, &op->waiters[k], -ETIMEDOUT);
	}
	op = l->rd.inflight_head;
	return op && op->deadline != UINT64_MAX ? op->deadline - now
						: UINT64_MAX;
}

/* Drop the faults of dead regions from wait list *w; true if any live
 * fault is left on it. */
static bool drop_dead(struct luffd__loop *l, uint32_t *w)
{
	bool live = false;

	while (*w != LUFFD__NIL) {
		uint32_t fi = *w;

		if (luffd__region_dead(F(l, fi)->region)) {
			*w = F(l, fi)->next;
			luffd__fault_drop(&l->rs, fi);
		} else {
			live = true;
			w = &F(l, fi)->next;
		}
	}
	return live;
}

void luffd__reads_sweep(struct luffd__loop *l)
{
	struct luffd__op *op, *next;

	for (op = l->rd.inflight_head; op; op = next) {
		uint32_t n = op->chunk == LUFFD__NIL ? op->npages : 1;
		bool live = false;

		next = op->next;
		for (uint32_t k = 0; k < n; k++)
			live |= drop_dead(l, &op->waiters[k]);
		if (!op->region || !luffd__region_dead(op->region))
			continue;
		/* Its region is going: the removal must not wait for a
		 * store that may never answer.  A read that live faults of
		 * another mapping of the store still wait for goes on
		 * without the region; one nobody waits for is cancelled. */
		if (live) {
			luffd__region_put(op->region);
			op->region = NULL;
			continue;
		}
		/* The store is told before the region is let go: once its
		 * last hold goes, the removal returns, and its caller may
		 * count on the cancel having been delivered. */
		op_cancel(l, op);
		op_let_go(l, op);
	}
}

static void drop_zero_pages(struct luffd__loop *l)
{
	unsigned int n = atomic_load(&l->misuse_n);
	enum luffd__lookup how;

	atomic_store(&l->zapping, true);
	luffd__guard_kick(l->ctx);
	for (unsigned int i = 0; i < n; i++) {
		struct luffd__region *r = luffd__region_hold(&l->rtab,
							     l->misuse_addr[i],
							     &how);

		if (!r)
			continue;
		madvise((void *)(uintptr_t)l->misuse_addr[i],
			l->cfg->page_size, MADV_DONTNEED);
		luffd__region_put(r);
	}
	atomic_store(&l->misuse_n, 0);
	atomic_store(&l->zapping, false);
}
