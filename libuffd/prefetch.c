/* SPDX-License-Identifier: MIT */
/*
 * Pages the application pushes in.
 *
 * luffd_install() runs on the caller's thread: one UFFDIO_COPY per run of
 * missing pages (the install layer steps over present ones), which wakes
 * any thread blocked on them.  The handler is not involved.
 *
 * luffd_prefetch() queues a job per region it covers on that region's
 * handler.  The handler starts a job's reads only when no demand fault
 * waits for a read or cache slot, a few small ones at a time (PF_*), at
 * LUFFD_PRIO_PREFETCH: a store with queues serves demand and read-ahead
 * first, the file store reads cold data with O_DIRECT at the idle I/O
 * priority and its copies off the handler thread.  Pages already present
 * are skipped (mincore(), one call per window), pages in the cache go in
 * at once, the rest are read and installed when the read returns.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include "cache.h"
#include "context.h"
#include "install.h"
#include "loop.h"
#include "prefetch.h"
#include "read.h"
#include "region.h"
#include "req.h"
#include "store.h"

/* Prefetch reads in flight per handler, and pages per read, at most
 * (and at most readahead_bytes).  While demand reads are in flight,
 * prefetch shrinks to one small read: a demand read queued behind
 * prefetch reads at the device waits for them, and the handler installs
 * each prefetch window before it goes on with faults.  Measured on a
 * cold file (bench/README.md): two 512 KiB prefetch reads in flight made
 * demand faults' p50 9x slower, these sizes about 3x. */
#define PF_READS 2
#define PF_WINDOW 32
#define PF_READS_DEMAND 1
#define PF_WINDOW_DEMAND 16
/* A demand stream that caught up with prefetch reads the next
 * PF_HANDOFF pages itself (in 2 MiB chunks where the mapping allows, much
 * faster than prefetch's small reads), and prefetch goes on past them. */
#define PF_HANDOFF 8192
/* Windows a turn may skip (present or cached) before it lets the loop
 * read its faults again. */
#define PF_STEPS 64
/* Jobs queued per handler, at most (-EAGAIN past it). */
#define PF_MAX_JOBS 4096
/* Background push (LUFFD_REGISTER_PUSH): the pages it may have in
 * flight, from 64 KiB (CRIU's lazy-pages start) up to 16 MiB, in reads of
 * at most readahead_bytes, and at most half the handler's read slots.
 * CRIU stops at 4 MiB; over NBD with a 200 us round trip (nbdkit on this
 * 2-vCPU machine, examples/postcopy, bench/README.md) a push alone moved
 * 256 MiB at 0.6 GB/s with 4 MiB in flight and 1.0 GB/s with 16 MiB.  It doubles each time a push read ends with no
 * demand fault in the region since the last one, and halves on a demand
 * fault, which also moves the stream to just past the faulting page
 * (QEMU's post-copy does the same): what a thread touched, its neighbours
 * soon want. */
#define PUSH_MIN 16
#define PUSH_MAX 4096

struct luffd__pjob {
	uint64_t first;            /* its first store page */
	uint64_t joined;           /* the page a demand fault last joined one
				      of its reads at, or UINT64_MAX */
	bool jumped;               /* it left pages to a demand stream: one
				      more pass when it reaches its end */
	bool second;               /* on that pass (it leaves nothing) */
	struct luffd__pjob *next;  /* in the handler's list */
	struct luffd__pjob *wnext; /* the caller's list (LUFFD_PREFETCH_WAIT) */
	struct luffd__loop *l;
	struct luffd__region *r;   /* held while pages are left to start */
	uint64_t pg, end;          /* store pages not yet started: [pg, end) */
	uint32_t out;              /* its reads in flight */
	int err;                   /* the first error */
	/* A region's background push: [first, end) is the whole region,
	 * streamed from pg on, wrapping round, until a pass finds every page
	 * present (clean counts the pages found present in a row). */
	bool push;
	bool hit;                  /* a demand fault since a push read ended */
	uint32_t win, out_pages;   /* push: its window, its pages in flight */
	uint64_t clean;
	bool done;                 /* ended (l->lock) */
	atomic_uint refs;          /* the handler's, and a waiting caller's */
};

static void job_put(struct luffd__pjob *j)
{
	if (atomic_fetch_sub(&j->refs, 1) == 1)
		free(j);
}

void luffd__prefetch_init(struct luffd__prefetch *p)
{
	pthread_mutex_init(&p->lock, NULL);
	p->in_head = p->in_tail = NULL;
	p->head = p->tail = NULL;
	p->njobs = 0;
	atomic_init(&p->queued, false);
}

/* Move the jobs application threads queued onto the handler's list. */
static void take(struct luffd__loop *l)
{
	struct luffd__prefetch *p = &l->pf;
	struct luffd__pjob *h;

	if (!atomic_load_explicit(&p->queued, memory_order_acquire))
		return;
	pthread_mutex_lock(&p->lock);
	h = p->in_head;
	p->in_head = p->in_tail = NULL;
	atomic_store_explicit(&p->queued, false, memory_order_relaxed);
	pthread_mutex_unlock(&p->lock);
	if (!h)
		return;
	if (p->tail)
		p->tail->next = h;
	else
		p->head = h;
	while (h->next)
		h = h->next;
	p->tail = h;
}

static void let_go(struct luffd__pjob *j, int err)
{
	if (j->push && j->r) {
		struct luffd__region *r = j->r;

		r->pushj = NULL; /* from now on the region costs nothing */
		if (atomic_load_explicit(&r->push_state,
					 memory_order_relaxed) ==
		    LUFFD__PUSH_RUNNING) {
			r->push_err = err;
			atomic_store_explicit(&r->push_state,
					      err ? LUFFD__PUSH_FAILED
						  : LUFFD__PUSH_DONE,
					      memory_order_release);
		}
	}
	if (j->r)
		luffd__region_put(j->r);
	j->r = NULL;
	j->pg = j->end;
	if (!j->err)
		j->err = err;
}

/* j has nothing left to start and nothing in flight: end it. */
static void finish(struct luffd__loop *l, struct luffd__pjob *j)
{
	struct luffd__prefetch *p = &l->pf;
	struct luffd__pjob **pp, *prev = NULL;

	for (pp = &p->head; *pp && *pp != j; prev = *pp, pp = &(*pp)->next)
		;
	if (*pp) {
		*pp = j->next;
		if (p->tail == j)
			p->tail = prev;
	}
	j->next = NULL;
	let_go(j, 0);
	pthread_mutex_lock(&p->lock);
	p->njobs--;
	pthread_mutex_unlock(&p->lock);
	pthread_mutex_lock(&l->lock);
	j->done = true;
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->lock);
	job_put(j);
}

/* Install the ready cache pages of r among store pages [pg, pg+n), in
 * runs, waking whoever waits on them; the pages installed. */
static uint64_t install_cached(struct luffd__loop *l, struct luffd__region *r,
			       uint64_t pg, uint64_t n, bool push)
{
	struct luffd__cache *c = &l->cache;
	unsigned int shift = l->cfg->page_shift;
	size_t ps = l->cfg->page_size;
	struct luffd__run run = LUFFD__RUN(l->uffd, luffd__pt_mode(r->flags));

	for (uint64_t p = pg; p < pg + n; p++) {
		uint32_t slot = luffd__cache_find(c, r->store->id, p);

		if (slot == LUFFD__NIL ||
		    luffd__cache_state(c, slot) != LUFFD__SLOT_READY)
			continue;
		luffd__run_add(&run, r->start + (p << shift) - r->off,
			       luffd__cache_data(c, slot), ps);
		luffd__cache_used(c, slot);
	}
	luffd__run_flush(&run);
	if (push)
		luffd__inc(l->stats.pushed, run.installed);
	else
		luffd__inc(l->stats.prefetched, run.installed);
	return run.installed;
}

/* A store whose bytes are in memory (CAP_DIRECT) has no reads: its m
 * missing pages from j->pg go in straight from it.  A last page the store
 * only partly covers is left to its fault (which pads it). */
static bool step_direct(struct luffd__loop *l, struct luffd__pjob *j,
			uint64_t m)
{
	struct luffd__region *r = j->r;
	struct luffd_store *st = r->store;
	unsigned int shift = l->cfg->page_shift;
	uint64_t off = j->pg << shift, whole = 0, got;
	const void *src = st->ops->direct(st, off);

	if (st->size > off)
		whole = (st->size - off) >> shift;
	m = m < whole ? m : whole;
	if (j->push && src && !m) {
		/* Only the store's partial last page is left: its fault
		 * pads it; the push is done with it. */
		j->clean += j->end - j->pg;
		j->pg = j->end;
		return true;
	}
	if (!src || !m) {
		let_go(j, j->push ? -EIO : 0);
		return true;
	}
	got = luffd__pt_copy_missing(l->uffd, r->start + off - r->off, src,
				     m << shift, luffd__pt_mode(r->flags),
				     NULL);
	if (j->push) {
		luffd__inc(l->stats.pushed, got);
		j->clean = 0; /* the next pass looks (see step()) */
	} else {
		luffd__inc(l->stats.prefetched, got);
	}
	j->pg += m;
	return true;
}

/* Start (or skip) one window of j, of at most w pages.  False when no
 * read can start now. */
static bool step(struct luffd__loop *l, struct luffd__pjob *j, uint64_t w)
{
	struct luffd__region *r = j->r;
	unsigned int shift = l->cfg->page_shift;
	uint64_t n = j->end - j->pg, m, got, addr;
	unsigned char vec[1024];
	struct luffd__cache *c = &l->cache;
	uint32_t slot, k;

	/* Up to 1024 pages are looked at (present ones are skipped that
	 * many at a time), at most a window read. */
	if (n > sizeof(vec))
		n = sizeof(vec);
	if (w > l->cfg->ra_pages)
		w = l->cfg->ra_pages;
	if ((j->pg << shift) >= r->store->size) {
		/* The store ends before the region does: the pages past it
		 * fault (SIGBUS), and a push is done with them. */
		if (j->push) {
			j->clean += j->end - j->pg;
			j->pg = j->end;
		} else {
			let_go(j, 0);
		}
		return true;
	}
	addr = r->start + (j->pg << shift) - r->off;
	/* One syscall per window, off the fault path: it spares a read of
	 * pages that are there already. */
	if (mincore((void *)(uintptr_t)addr, n << shift, vec)) {
		/* Unmapped under us.  A push ends without an outcome: the
		 * UNMAP event that follows leaves pieces of the region,
		 * which take it up (luffd__push_pieces()). */
		if (j->push && errno == ENOMEM)
			atomic_store_explicit(&r->push_state,
					      LUFFD__PUSH_PENDING,
					      memory_order_release);
		let_go(j, -errno);
		return true;
	}
	for (m = 0; m < n && (vec[m] & 1); m++)
		;
	if (m) {
		j->pg += m;
		j->clean += m;
		return true;
	}
	n = n < w ? n : w;
	slot = luffd__cache_find(c, r->store->id, j->pg);
	if (slot != LUFFD__NIL &&
	    luffd__cache_state(c, slot) != LUFFD__SLOT_READY) {
		struct luffd__op *op = luffd__page_op(l, r->store->id, j->pg,
						      slot, &k);

		/* Being read by someone else: wait for that read (its
		 * completion runs the loop again), unless it timed out and
		 * may never end. */
		if (op && !op->expired)
			return false;
		j->pg++;
		j->clean = 0;
		return true;
	}
	if (slot != LUFFD__NIL) {
		/* Ready in the cache: in it goes, with the ready pages after
		 * it. */
		for (m = 1; m < n && !(vec[m] & 1); m++) {
			uint32_t s2 = luffd__cache_find(c, r->store->id,
							j->pg + m);

			if (s2 == LUFFD__NIL ||
			    luffd__cache_state(c, s2) != LUFFD__SLOT_READY)
				break;
		}
		/* Not counted clean: an install can fail (-EAGAIN while
		 * the address space changes), and only mincore() says what
		 * is present; the next pass looks. */
		install_cached(l, r, j->pg, m, j->push);
		j->pg += m;
		j->clean = 0;
		return true;
	}
	for (m = 1; m < n && !(vec[m] & 1); m++)
		;
	if (r->store->caps & LUFFD__CAP_DIRECT)
		return step_direct(l, j, m);
	got = luffd__read_prefetch(l, r, j->pg, m, j);
	if (!got)
		return false;
	j->out++;
	j->out_pages += got;
	j->pg += got;
	j->clean = 0;
	return true;
}

/* One turn of a push: false when nothing more may start now. */
static bool push_turn(struct luffd__loop *l, struct luffd__pjob *j,
		      unsigned int *steps)
{
	uint64_t total = j->end - j->first;

	while (j->r && j->clean < total) {
		uint64_t w;

		if (l->pending.head != LUFFD__NIL || l->rd.free == LUFFD__NIL)
			return false;
		if (j->pg >= j->end) {
			j->pg = j->first; /* round again */
			continue;
		}
		/* Its window full, or half the read slots its: jobs behind
		 * it may go, and demand faults always find a slot. */
		if (j->out_pages >= j->win ||
		    j->out >= l->cfg->queue_depth / 2)
			return true;
		if (++*steps > PF_STEPS) {
			l->pf.again = true;
			return false;
		}
		w = j->win - j->out_pages;
		if (!step(l, j, w))
			return false;
	}
	if (!j->out) {
		let_go(j, 0); /* a clean pass: every page is present */
		finish(l, j);
	}
	return true;
}

void luffd__prefetch_run(struct luffd__loop *l)
{
	struct luffd__prefetch *p = &l->pf;
	struct luffd__pjob *j, *next;
	unsigned int steps = 0;

	p->again = false;
	take(l);
	for (j = p->head; j; j = next) {
		next = j->next;
		if (j->r && luffd__region_dead(j->r))
			let_go(j, -ECANCELED);
		if (j->push) {
			if (!push_turn(l, j, &steps))
				return;
			continue;
		}
		while (j->pg < j->end) {
			/* Demand first: a fault waiting for a read or a cache
			 * slot gets it before prefetch does. */
			if (l->rd.prefetching >=
				    (l->rd.busy > l->rd.prefetching ?
					     PF_READS_DEMAND : PF_READS) ||
			    l->pending.head != LUFFD__NIL ||
			    l->rd.free == LUFFD__NIL)
				return;
			if (++steps > PF_STEPS) {
				p->again = true;
				return;
			}
			if (!step(l, j, l->rd.busy > l->rd.prefetching
						? PF_WINDOW_DEMAND
						: PF_WINDOW))
				return;
		}
		/* What it left to a demand stream and the stream did not
		 * take is read now (present pages cost a mincore()). */
		if (j->jumped && j->r) {
			j->jumped = false;
			j->second = true;
			j->pg = j->first;
			next = j;
			continue;
		}
		if (!j->out)
			finish(l, j);
	}
}

void luffd__prefetch_joined(struct luffd__loop *l, struct luffd__op *op,
			    uint64_t pg)
{
	struct luffd__pjob *j = op->job;

	(void)l;
	if (j->push)
		return; /* luffd__push_fault() moved it already */
	/* Two joins in a row a window or so apart, going up: a sequential
	 * reader at prefetch's heels, whose every fault would wait for a
	 * small prefetch read.  Leave it the next stretch. */
	if (!j->second && j->joined != UINT64_MAX && pg > j->joined &&
	    pg - j->joined <= 4 * PF_WINDOW && j->pg < j->end &&
	    j->pg < pg + PF_HANDOFF) {
		j->pg = pg + PF_HANDOFF < j->end ? pg + PF_HANDOFF : j->end;
		j->jumped = true;
	}
	j->joined = pg;
}

/* A push read of op's range answered "hole": zero pages there (a push
 * leaves no page to fault).  One page at a time past a present one. */
static void push_zero(struct luffd__loop *l, struct luffd__op *op)
{
	struct luffd__region *r = op->region;
	size_t ps = l->cfg->page_size;
	uint64_t dst = r->start + op->off - r->off;
	uint64_t len = (uint64_t)op->npages * ps;
	unsigned int mode = luffd__pt_mode(r->flags);

	if (luffd__pt_zero(l->uffd, dst, len, mode) != -EEXIST)
		return;
	for (uint64_t at = 0; at < len; at += ps)
		luffd__pt_zero(l->uffd, dst + at, ps, mode);
}

void luffd__prefetch_done(struct luffd__loop *l, struct luffd__op *op,
			  int err, uint64_t total)
{
	struct luffd__pjob *j = op->job;
	unsigned int shift = l->cfg->page_shift;
	bool live = op->region && !luffd__region_dead(op->region);

	j->out--;
	if (err && !j->err)
		j->err = err;
	if (!err && live)
		install_cached(l, op->region, op->off >> shift, op->npages,
			       j->push);
	if (j->push) {
		j->out_pages -= op->npages;
		if (!err && !total && live &&
		    (op->region->store->caps & LUFFD__CAP_EMPTY_ZERO))
			push_zero(l, op);
		/* A store error ends the push: its pages are left to their
		 * faults (which get SIGBUS if the store still fails). */
		if (err && j->r)
			let_go(j, err);
		if (!j->hit && j->win < PUSH_MAX)
			j->win *= 2;
		j->hit = false;
		if (!j->r && !j->out)
			finish(l, j);
		else
			l->pf.again = true;
		return;
	}
	if (j->pg >= j->end && !j->out && !j->jumped)
		finish(l, j);
	else
		l->pf.again = true; /* a read may start: no sleep before */
}

void luffd__push_fault(struct luffd__loop *l, struct luffd__region *r,
		       uint64_t pg)
{
	struct luffd__prefetch *p = &l->pf;
	struct luffd__pjob *j = r->pushj;

	if (!j) {
		int st = atomic_load_explicit(&r->push_state,
					      memory_order_relaxed);

		if (st != LUFFD__PUSH_IDLE && st != LUFFD__PUSH_PENDING)
			return;
		/* The region's first demand fault starts its push: one
		 * allocation per region, here rather than at registration
		 * so that a region nobody touches costs nothing. */
		j = calloc(1, sizeof(*j));
		if (!j) {
			r->push_err = -ENOMEM;
			atomic_store_explicit(&r->push_state,
					      LUFFD__PUSH_FAILED,
					      memory_order_release);
			pthread_mutex_lock(&l->lock);
			pthread_cond_broadcast(&l->cv);
			pthread_mutex_unlock(&l->lock);
			return;
		}
		luffd__region_hold_again(r);
		j->l = l;
		j->r = r;
		j->push = true;
		j->first = r->off >> l->cfg->page_shift;
		j->end = j->first + (r->len >> l->cfg->page_shift);
		j->joined = UINT64_MAX;
		j->win = PUSH_MIN;
		atomic_init(&j->refs, 1u);
		pthread_mutex_lock(&p->lock);
		p->njobs++;
		pthread_mutex_unlock(&p->lock);
		if (p->tail)
			p->tail->next = j;
		else
			p->head = j;
		p->tail = j;
		r->pushj = j;
		atomic_store_explicit(&r->push_state, LUFFD__PUSH_RUNNING,
				      memory_order_release);
	} else if (j->win > PUSH_MIN) {
		j->win /= 2;
	}
	j->pg = pg + 1 < j->end ? pg + 1 : j->first;
	j->clean = 0;
	j->hit = true;
	p->again = true;
}

void luffd__push_pieces(struct luffd__loop *l)
{
	struct luffd__rtab *t = &l->rtab;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n; i++) {
		struct luffd__region *r = t->regions[i];

		if (atomic_load_explicit(&r->push_state,
					 memory_order_relaxed) ==
		    LUFFD__PUSH_PENDING && !r->pushj)
			luffd__push_fault(l, r, r->off >> l->cfg->page_shift);
	}
	pthread_mutex_unlock(&t->lock);
}

void luffd__prefetch_sweep(struct luffd__loop *l)
{
	struct luffd__pjob *j, *next;

	take(l);
	for (j = l->pf.head; j; j = next) {
		next = j->next;
		/* The region's removal waits for every hold: let go now,
		 * even if a read of the job never comes back. */
		if (!j->r || !luffd__region_dead(j->r))
			continue;
		let_go(j, -ECANCELED);
		/* Nor does it wait for its reads: they were cancelled, and
		 * a store that stopped answering may never end them. */
		if (j->out)
			luffd__reads_forget_job(l, j);
		j->out = 0;
		finish(l, j);
	}
	/* luffd_push_wait() callers on a region whose push never started
	 * look again (and find it gone). */
	pthread_mutex_lock(&l->lock);
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->lock);
}

void luffd__prefetch_fini(struct luffd__loop *l)
{
	struct luffd__pjob *j;

	atomic_store(&l->pf.queued, true);
	take(l);
	while ((j = l->pf.head)) {
		let_go(j, -ECANCELED);
		j->out = 0;
		finish(l, j);
	}
	pthread_mutex_destroy(&l->pf.lock);
}

/* ------------------------------------------------------------------------
 * The application's calls
 * ---------------------------------------------------------------------- */

struct luffd__region *luffd__hold_at(struct luffd_ctx *ctx, uint64_t addr,
				     struct luffd__loop **lp)
{
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		enum luffd__lookup how;
		struct luffd__region *r =
			luffd__region_hold(&ctx->loops[i].rtab, addr, &how);

		if (r) {
			*lp = &ctx->loops[i];
			return r;
		}
	}
	return NULL;
}

/* Is every page of [addr, end) in a region of ctx? */
static bool covered(struct luffd_ctx *ctx, uint64_t addr, uint64_t end)
{
	while (addr < end) {
		struct luffd__loop *l;
		struct luffd__region *r = luffd__hold_at(ctx, addr, &l);

		if (!r)
			return false;
		addr = r->start + r->len;
		luffd__region_put(r);
	}
	return true;
}

int luffd__check_range(struct luffd_ctx *ctx, const void *addr, size_t len,
		       uint64_t *endp)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;

	if (!ctx || !addr || !len || a % ctx->cfg.page_size ||
	    len > UINT64_MAX - a ||
	    a + len > UINT64_MAX - ctx->cfg.page_size)
		return -EINVAL;
	*endp = a + ((len + ctx->cfg.page_size - 1) &
		     ~(uint64_t)(ctx->cfg.page_size - 1));
	return covered(ctx, a, *endp) ? 0 : -ENOENT;
}

ssize_t luffd_install(struct luffd_ctx *ctx, void *addr,
				const void *src, size_t len,
				unsigned int flags)
{
	uint64_t cur = (uint64_t)(uintptr_t)addr, end, done = 0;
	int err;

	if (!src || flags || (ctx && len % ctx->cfg.page_size))
		return -EINVAL;
	err = luffd__check_range(ctx, addr, len, &end);
	if (err)
		return err;
	while (cur < end) {
		struct luffd__loop *l;
		struct luffd__region *r = luffd__hold_at(ctx, cur, &l);
		const char *from = (const char *)src +
				   (cur - (uint64_t)(uintptr_t)addr);
		uint64_t n, got = 0;

		if (!r) /* removed since the check */
			return done ? (ssize_t)(done << ctx->cfg.page_shift)
				    : -ENOENT;
		n = (r->start + r->len < end ? r->start + r->len : end) - cur;
		/* -EAGAIN: the address space is changing (a fork, an
		 * mremap()); present pages are stepped over on the retry. */
		for (int tries = 0; tries < 1000; tries++) {
			got += luffd__pt_copy_missing(
				r->tab->uffd, cur, from, n,
				luffd__pt_mode(r->flags), &err);
			if (err != -EAGAIN)
				break;
			sched_yield();
		}
		atomic_fetch_add_explicit(&l->stats.app_installed, got,
					  memory_order_relaxed);
		luffd__region_put(r);
		done += got;
		if (err)
			return err;
		cur += n;
	}
	return (ssize_t)(done << ctx->cfg.page_shift);
}

/* Wait for the jobs on list w; the first error. */
static int wait_jobs(struct luffd__pjob *w)
{
	int err = 0;

	while (w) {
		struct luffd__pjob *next = w->wnext;
		struct luffd__loop *l = w->l;

		pthread_mutex_lock(&l->lock);
		while (!w->done)
			pthread_cond_wait(&l->cv, &l->lock);
		pthread_mutex_unlock(&l->lock);
		if (!err)
			err = w->err;
		job_put(w);
		w = next;
	}
	return err;
}

int luffd_prefetch(struct luffd_ctx *ctx, void *addr, size_t len,
			     unsigned int flags)
{
	struct luffd__pjob *w = NULL, **wt = &w;
	uint64_t cur = (uint64_t)(uintptr_t)addr, end;
	bool wait = flags & LUFFD_PREFETCH_WAIT;
	int err;

	if (flags & ~(unsigned int)LUFFD_PREFETCH_WAIT)
		return -EINVAL;
	err = luffd__check_range(ctx, addr, len, &end);
	if (err)
		return err;
	/* A handler or a worker would wait for its own work. */
	if (wait && luffd__on_library_thread(ctx))
		return -EDEADLK;
	while (cur < end) {
		struct luffd__loop *l;
		struct luffd__region *r = luffd__hold_at(ctx, cur, &l);
		struct luffd__prefetch *p;
		struct luffd__pjob *j;
		uint64_t n;

		if (!r) {
			err = -ENOENT; /* removed since the check */
			break;
		}
		n = (r->start + r->len < end ? r->start + r->len : end) - cur;
		j = calloc(1, sizeof(*j));
		if (!j) {
			luffd__region_put(r);
			err = -ENOMEM;
			break;
		}
		j->l = l;
		j->r = r;
		j->pg = (r->off + cur - r->start) >> ctx->cfg.page_shift;
		j->end = j->pg + (n >> ctx->cfg.page_shift);
		j->first = j->pg;
		j->joined = UINT64_MAX;
		atomic_init(&j->refs, wait ? 2u : 1u);
		p = &l->pf;
		pthread_mutex_lock(&p->lock);
		if (p->njobs >= PF_MAX_JOBS) {
			pthread_mutex_unlock(&p->lock);
			luffd__region_put(r);
			free(j);
			err = -EAGAIN;
			break;
		}
		p->njobs++;
		if (p->in_tail)
			p->in_tail->next = j;
		else
			p->in_head = j;
		p->in_tail = j;
		atomic_store_explicit(&p->queued, true, memory_order_release);
		pthread_mutex_unlock(&p->lock);
		luffd__cq_kick(l->cq);
		if (wait) {
			*wt = j;
			wt = &j->wnext;
		}
		cur += n;
	}
	if (wait) {
		int werr = wait_jobs(w);

		if (!err)
			err = werr;
	}
	return err;
}

/* Wait on l->cv (l->lock held) until the deadline (NULL: none); false
 * once it has passed. */
static bool wait_until(struct luffd__loop *l, const struct timespec *dl)
{
	if (!dl) {
		pthread_cond_wait(&l->cv, &l->lock);
		return true;
	}
	return pthread_cond_timedwait(&l->cv, &l->lock, dl) != ETIMEDOUT;
}

int luffd_push_wait(struct luffd_ctx *ctx, void *addr, size_t len,
		    int timeout_ms)
{
	uint64_t cur = (uint64_t)(uintptr_t)addr, end;
	struct timespec dl, *dlp = NULL;
	int err;

	if (timeout_ms < -1)
		return -EINVAL;
	err = luffd__check_range(ctx, addr, len, &end);
	if (err)
		return err;
	if (timeout_ms && luffd__on_library_thread(ctx))
		return -EDEADLK; /* its handler would wait for itself */
	if (timeout_ms > 0) {
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += timeout_ms / 1000;
		dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
		dlp = &dl;
	}
	/* Every region pushes, or none is waited for. */
	for (uint64_t a = cur; a < end;) {
		struct luffd__loop *l;
		struct luffd__region *r = luffd__hold_at(ctx, a, &l);
		bool push;

		if (!r)
			return -ECANCELED; /* removed since the check */
		push = r->flags & LUFFD_REGISTER_PUSH;
		a = r->start + r->len;
		luffd__region_put(r);
		if (!push)
			return -EINVAL;
	}
	while (cur < end) {
		struct luffd__loop *l;
		struct luffd__region *r = luffd__hold_at(ctx, cur, &l);
		uint64_t next;
		int state;

		if (!r)
			return -ECANCELED; /* removed since the check */
		next = r->start + r->len;
		luffd__region_put(r);
		/* The state is read under l->lock, which the handler takes to
		 * broadcast after it changes it: no wake-up is lost. */
		pthread_mutex_lock(&l->lock);
		for (;;) {
			r = luffd__hold_at(ctx, cur, &l);
			if (!r) {
				err = -ECANCELED;
				break;
			}
			state = atomic_load_explicit(&r->push_state,
						     memory_order_acquire);
			err = state == LUFFD__PUSH_FAILED ? r->push_err : 0;
			luffd__region_put(r);
			if (state == LUFFD__PUSH_DONE ||
			    state == LUFFD__PUSH_FAILED)
				break;
			if (!timeout_ms || !wait_until(l, dlp)) {
				err = -ETIMEDOUT;
				break;
			}
		}
		pthread_mutex_unlock(&l->lock);
		if (err)
			return err;
		cur = next;
	}
	return 0;
}
