/* SPDX-License-Identifier: MIT */
/*
 * Write-back: the dirty pages of LUFFD_MAP_WRITEBACK regions go back to
 * their store, on the thread that asks (luffd_msync(), luffd_unmap(),
 * luffd_ctx_destroy()).  The handlers are not involved and go on serving
 * faults.
 *
 * A write-back region is write-tracked (LUFFD_REGISTER_WP), so its dirty
 * pages are those present and not write-protected (dirty.c).  For each run
 * of them, in address order:
 *  1. the scan protects the run again (with LUFFD_WP_ASYNC in the same
 *     page-table walk that found it);
 *  2. its bytes are written to the store from the region itself (a store
 *     whose writes always complete: a file, a callback) or from a copy
 *     taken after the protection (others, which may time out);
 *  3. a write that fails lifts the protection again: the pages stay dirty
 *     and the next write-back tries them again.
 * A write to a page after step 1 raises a write-protect fault (or, with
 * LUFFD_WP_ASYNC, just lifts the protection): the page is dirty again, and
 * the next write-back writes it whatever this one copied, so no write is
 * lost, however the two interleave.
 *
 * A write that can time out (from a copy) is given up read_timeout_ms
 * after it started, each on its own as each read is, so a long write-back
 * over a slow store that answers goes on; the call then returns
 * -ETIMEDOUT, the pages of every write still out stay dirty and the batch
 * is left to their late completions.
 *
 * Up to WB_INFLIGHT writes of up to WB_PIECE bytes are in flight per
 * call.  A store that writes through io_uring (the file store) gets an
 * entry of the calling thread's own ring, set up at the first write of the
 * call (luffd__wreq_sqe()); the others complete from any thread through
 * luffd__wreq_done().  Calls are serialised per context (wb_lock): two
 * write-backs of one page at once could otherwise see it clean and return
 * while the other's write is still in flight.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "context.h"
#include "dirty.h"
#include "install.h"
#include "loop.h"
#include "prefetch.h"
#include "region.h"
#include "store.h"
#include "writeback.h"

/* Bytes per store write at most, and writes in flight per call: 4 MiB in
 * flight, enough to keep a local disk or an NBD connection busy. */
#define WB_PIECE (256 * 1024)
#define WB_INFLIGHT 16
/* Dirty runs taken from one page-table scan. */
#define WB_RANGES 64

struct luffd__wbatch {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	struct luffd__wreq *done; /* completed, not yet settled (lock) */
	bool abandoned;           /* the writer left (a timeout): late
				     completions free what they hold
				     (lock) */
	atomic_uint refs;         /* the writer's, and one per write out */
	/* The writer's own. */
	struct luffd_ctx *ctx;
	struct luffd__loop *l;    /* the region's handler (its stats) */
	struct luffd__region *r;  /* the region being written back (held) */
	struct io_uring ring;
	bool ring_ok, ring_tried;
	unsigned int ring_out;    /* entries in the ring not yet reaped */
	unsigned int out;         /* writes not yet settled */
	uint32_t free_mask;       /* of reqs[] */
	int err;                  /* the first error */
	struct luffd__wreq reqs[WB_INFLIGHT];
};

static void batch_put(struct luffd__wbatch *b)
{
	if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (unsigned int i = 0; i < WB_INFLIGHT; i++)
		free(b->reqs[i].copy);
	if (b->ring_ok)
		io_uring_queue_exit(&b->ring);
	pthread_mutex_destroy(&b->lock);
	pthread_cond_destroy(&b->cv);
	free(b);
}

void luffd__wreq_done(struct luffd__wreq *w, int64_t res)
{
	struct luffd__wbatch *b = w->b;
	bool gone;

	pthread_mutex_lock(&b->lock);
	gone = b->abandoned;
	if (!gone) {
		w->res = res;
		w->next = b->done;
		b->done = w;
		pthread_cond_signal(&b->cv);
	}
	pthread_mutex_unlock(&b->lock);
	/* A late completion (the writer timed out): the copy it wrote from
	 * is freed with the batch, by the last one. */
	if (gone)
		batch_put(b);
}

struct io_uring_sqe *luffd__wreq_sqe(struct luffd__wreq *w)
{
	struct luffd__wbatch *b = w->b;
	struct io_uring_sqe *sqe;

	if (!b->ring_tried) {
		b->ring_tried = true;
		/* One ring per write-back call that writes through one: its
		 * set-up costs tens of microseconds, against milliseconds
		 * of writes. */
		b->ring_ok = io_uring_queue_init(2 * WB_INFLIGHT, &b->ring,
						 0) == 0;
	}
	if (!b->ring_ok)
		return NULL;
	sqe = luffd__sqe(&b->ring);
	if (!sqe)
		return NULL;
	io_uring_sqe_set_data(sqe, w);
	b->ring_out++;
	return sqe;
}

/* The pages of w stay dirty: lift the protection the scan put back. */
static void keep_dirty(struct luffd__wbatch *b, struct luffd__wreq *w)
{
	luffd__pt_protect(b->r->tab->uffd, w->addr, w->plen, false, 0);
}

static void req_free(struct luffd__wbatch *b, struct luffd__wreq *w)
{
	unsigned int i = (unsigned int)(w - b->reqs);

	free(w->copy);
	w->copy = NULL;
	b->free_mask |= 1u << i;
	b->out--;
	atomic_fetch_sub_explicit(&b->refs, 1, memory_order_relaxed);
}

static int start(struct luffd__wbatch *b, struct luffd__wreq *w)
{
	struct luffd_store *s = b->r->store;

	w->priv = NULL;
	return s->ops->write(s, w);
}

static void invalidate(struct luffd_ctx *ctx, const struct luffd_store *s,
		       uint64_t pg, uint64_t npg);

#ifdef LUFFD__TSAN
/*
 * The copy of pages that the application may be writing meanwhile: a race
 * by design (a write after the scan's protection makes the page dirty
 * again, and the next write-back writes it whatever this copy saw), which
 * ThreadSanitizer cannot know.  Word by word through volatile, so that the
 * compiler makes no memcpy() of it, which TSan would check.
 */
__attribute__((no_sanitize("thread")))
static void copy_pages(void *dst, const void *src, size_t n)
{
	const volatile unsigned char *s = src;
	unsigned char *d = dst;

	for (; n >= 8; n -= 8, s += 8, d += 8) {
		uint64_t v = *(const volatile uint64_t *)s;

		__builtin_memcpy(d, &v, 8);
	}
	for (; n; n--)
		*d++ = *s++;
}
#else
#define copy_pages memcpy
#endif

/* Act on a completed write: done, continued (short), or failed. */
static void settle(struct luffd__wbatch *b, struct luffd__wreq *w)
{
	struct luffd__stats *st = &b->l->stats;
	int64_t res = w->res;

	if (res > 0 && (uint64_t)res < w->len) {
		/* A short write: ask for the rest. */
		w->off += (uint64_t)res;
		w->buf = (const char *)w->buf + res;
		w->len -= (uint64_t)res;
		w->done += (uint64_t)res;
		if (w->copy)
			w->deadline = luffd__deadline(&b->ctx->cfg,
						      luffd__now_ns());
		res = start(b, w);
		if (res == 0)
			return;
	}
	if (res == 0)
		res = -EIO; /* no progress */
	if (res < 0) {
		keep_dirty(b, w);
		atomic_fetch_add_explicit(&st->wb_errors, 1,
					  memory_order_relaxed);
		if (!b->err)
			b->err = (int)res;
	} else {
		unsigned int shift = b->ctx->cfg.page_shift;
		uint64_t off0 = b->r->off + (w->addr - b->r->start);

		atomic_fetch_add_explicit(&st->wb_pages, w->plen >> shift,
					  memory_order_relaxed);
		invalidate(b->ctx, b->r->store, off0 >> shift,
			   w->plen >> shift);
	}
	req_free(b, w);
}

/* When the oldest write out stops being waited for (CLOCK_MONOTONIC ns,
 * UINT64_MAX for never): each write has read_timeout_ms of its own, as
 * each read has, so a long write-back over a slow but answering store
 * does not time out. */
static uint64_t next_deadline(const struct luffd__wbatch *b)
{
	uint64_t d = UINT64_MAX;

	for (unsigned int i = 0; i < WB_INFLIGHT; i++)
		if (!(b->free_mask & 1u << i) && b->reqs[i].deadline < d)
			d = b->reqs[i].deadline;
	return d;
}

/* Reap what completed; block: wait for at least one, until the oldest
 * write's deadline.  False on timeout. */
static bool reap(struct luffd__wbatch *b, bool block)
{
	struct luffd__wreq *w, *next;
	uint64_t deadline = block ? next_deadline(b) : UINT64_MAX;

	if (b->ring_out) {
		struct io_uring_cqe *cqe;
		unsigned int head, n = 0;

		io_uring_submit(&b->ring);
		/* Ring writes (a local file) always complete: no deadline. */
		if (block && !b->done)
			io_uring_wait_cqe(&b->ring, &cqe);
		io_uring_for_each_cqe(&b->ring, head, cqe) {
			w = io_uring_cqe_get_data(cqe);
			n++;
			b->ring_out--;
			luffd__wreq_done(w, cqe->res);
		}
		io_uring_cq_advance(&b->ring, n);
		block = false;
	}
	pthread_mutex_lock(&b->lock);
	while (block && !b->done) {
		struct timespec ts;

		if (deadline == UINT64_MAX) {
			pthread_cond_wait(&b->cv, &b->lock);
			continue;
		}
		if (luffd__now_ns() >= deadline)
			break;
		/* The condition variable's clock is CLOCK_MONOTONIC. */
		ts.tv_sec = (time_t)(deadline / 1000000000ull);
		ts.tv_nsec = (long)(deadline % 1000000000ull);
		pthread_cond_timedwait(&b->cv, &b->lock, &ts);
	}
	w = b->done;
	b->done = NULL;
	pthread_mutex_unlock(&b->lock);
	if (block && !w)
		return false;
	for (; w; w = next) {
		next = w->next;
		settle(b, w);
	}
	return true;
}

/* The writer gives up on the writes still out (their pages stay dirty);
 * their late completions free the batch. */
static void abandon(struct luffd__wbatch *b)
{
	reap(b, false);
	pthread_mutex_lock(&b->lock);
	b->abandoned = true;
	for (struct luffd__wreq *w = b->done; w; w = w->next)
		atomic_fetch_sub_explicit(&b->refs, 1, memory_order_relaxed);
	b->done = NULL;
	pthread_mutex_unlock(&b->lock);
	for (unsigned int i = 0; i < WB_INFLIGHT; i++)
		if (!(b->free_mask & 1u << i)) {
			keep_dirty(b, &b->reqs[i]);
			/* A write given up on counts as failed. */
			atomic_fetch_add_explicit(&b->l->stats.wb_errors, 1,
						  memory_order_relaxed);
		}
}

/* Wait for every write out; false on timeout. */
static bool drain(struct luffd__wbatch *b)
{
	while (b->out)
		if (!reap(b, true))
			return false;
	return true;
}

/* Write [addr, addr+len) of b->r (dirty, protected again) to its store. */
static int piece(struct luffd__wbatch *b, uint64_t addr, uint64_t len)
{
	struct luffd__region *r = b->r;
	struct luffd_store *s = r->store;
	uint64_t off = r->off + (addr - r->start), bytes = len;
	struct luffd__wreq *w;
	unsigned int i;
	int e;

	if (off >= s->size)
		return 0; /* wholly past the store: nothing to write */
	if (off + bytes > s->size)
		bytes = s->size - off; /* the tail of the last page: as a
					  shared mapping of a file */
	while (!b->free_mask)
		if (!reap(b, true))
			return -ETIMEDOUT;
	i = (unsigned int)__builtin_ctz(b->free_mask);
	b->free_mask &= ~(1u << i);
	w = &b->reqs[i];
	*w = (struct luffd__wreq){ .off = off, .len = bytes, .addr = addr,
				   .plen = len, .b = b,
				   .deadline = UINT64_MAX };
	if (s->caps & LUFFD__CAP_WRITE_INPLACE) {
		w->buf = (const void *)(uintptr_t)addr;
	} else {
		/* A copy: the store may still hold it after a timeout,
		 * when the region may be gone. */
		void *copy = malloc(bytes);

		if (!copy) {
			b->free_mask |= 1u << i;
			return -ENOMEM;
		}
		copy_pages(copy, (const void *)(uintptr_t)addr, bytes);
		w->buf = w->copy = copy;
		w->deadline = luffd__deadline(&b->ctx->cfg, luffd__now_ns());
	}
	b->out++;
	atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&b->l->stats.wb_writes, 1,
				  memory_order_relaxed);
	/* Not w->res: a completion may already have set it. */
	e = start(b, w);
	if (e < 0) {
		w->res = e; /* refused at once: its errno */
		settle(b, w);
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * For the evictor: runs it knows are dirty, one batch for all of them
 * ---------------------------------------------------------------------- */

void luffd__wbatch_free(struct luffd__wbatch *b)
{
	if (b)
		batch_put(b);
}

int luffd__wbatch_run(struct luffd__wbatch *b, struct luffd__loop *l,
		      struct luffd__region *r, uint64_t a, uint64_t len)
{
	int err;

	b->r = r;
	b->l = l;
	/* Protected first: a write from now on faults (and waits while the
	 * evictor decides), so the bytes written are the page's. */
	err = luffd__pt_protect(r->tab->uffd, a, len, true, 0);
	for (uint64_t at = a; !err && at < a + len; at += WB_PIECE) {
		uint64_t n = a + len - at;

		err = piece(b, at, n < WB_PIECE ? n : WB_PIECE);
		reap(b, false);
	}
	if (err)
		luffd__pt_protect(r->tab->uffd, a, len, false, 0);
	return err;
}

int luffd__wbatch_drain(struct luffd__wbatch **bp)
{
	struct luffd__wbatch *b = *bp;
	struct luffd_ctx *ctx = b->ctx;
	int err;

	if (!drain(b)) {
		/* A store that does not answer: the writes out stay with
		 * it (their pages dirty), a new batch goes on. */
		abandon(b);
		batch_put(b);
		*bp = luffd__wbatch_new(ctx);
		return -ETIMEDOUT;
	}
	err = b->err;
	b->err = 0;
	return err;
}

/* Write back the dirty pages of region b->r in [lo, hi). */
static int region_writeback(struct luffd__wbatch *b, uint64_t lo,
			    uint64_t hi)
{
	struct luffd_range rg[WB_RANGES];
	uint64_t pos = lo, next = lo;
	int err = 0;

	while (pos < hi && !err) {
		ssize_t k = luffd__dirty_scan(b->ctx, pos, hi, rg, WB_RANGES,
					      false);

		if (k <= 0) {
			err = (int)k;
			break;
		}
		for (ssize_t j = 0; j < k && !err; j++)
			for (uint64_t a = rg[j].addr;
			     a < rg[j].addr + rg[j].len && !err; a += WB_PIECE) {
				uint64_t n = rg[j].addr + rg[j].len - a;

				n = n < WB_PIECE ? n : WB_PIECE;
				err = piece(b, a, n);
				if (!err)
					next = a + n;
				reap(b, false);
			}
		if (err) {
			/* The runs not started stay dirty. */
			for (ssize_t j = 0; j < k; j++) {
				uint64_t a = rg[j].addr > next ? rg[j].addr
							       : next;
				uint64_t e = rg[j].addr + rg[j].len;

				if (a < e)
					luffd__pt_protect(b->r->tab->uffd, a,
							  e - a, false, 0);
			}
		}
		pos = rg[k - 1].addr + rg[k - 1].len;
		if (k < WB_RANGES)
			break;
	}
	if (!drain(b))
		err = -ETIMEDOUT;
	return err ? err : b->err;
}

struct luffd__wbatch *luffd__wbatch_new(struct luffd_ctx *ctx)
{
	struct luffd__wbatch *b = calloc(1, sizeof(*b));
	pthread_condattr_t ca;

	if (!b)
		return NULL;
	pthread_mutex_init(&b->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&b->cv, &ca);
	pthread_condattr_destroy(&ca);
	atomic_init(&b->refs, 1);
	b->ctx = ctx;
	b->free_mask = (1u << WB_INFLIGHT) - 1;
	return b;
}

static int writeback_range(struct luffd_ctx *ctx, uint64_t start,
			   uint64_t end, bool durable);

int luffd__writeback(struct luffd_ctx *ctx, uint64_t start, uint64_t end,
		     bool durable, bool strict)
{
	int err;

	if (strict) {
		for (uint64_t at = start; at < end;) {
			struct luffd__loop *l;
			struct luffd__region *r = luffd__hold_at(ctx, at, &l);
			bool wb;

			if (!r)
				return -ENOENT;
			wb = r->flags & LUFFD_MAP_WRITEBACK;
			at = r->start + r->len;
			luffd__region_put(r);
			if (!wb)
				return -EINVAL;
		}
	}
	pthread_mutex_lock(&ctx->wb_lock);
	err = writeback_range(ctx, start, end, durable);
	pthread_mutex_unlock(&ctx->wb_lock);
	return err;
}

/* The start of the first region of ctx above addr, or UINT64_MAX: a
 * range with holes is walked region by region, not page by page. */
static uint64_t next_region(struct luffd_ctx *ctx, uint64_t addr)
{
	uint64_t best = UINT64_MAX;

	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__rtab *t = &ctx->loops[i].rtab;

		pthread_mutex_lock(&t->lock);
		for (size_t j = 0; j < t->n; j++)
			if (t->regions[j]->start > addr &&
			    t->regions[j]->start < best) {
				best = t->regions[j]->start;
				break; /* sorted by start */
			}
		pthread_mutex_unlock(&t->lock);
	}
	return best;
}

/* wb_lock held. */
static int writeback_range(struct luffd_ctx *ctx, uint64_t start,
			   uint64_t end, bool durable)
{
	struct luffd__wbatch *b = NULL;
	int err = 0;

	for (uint64_t at = start; at < end && !err;) {
		struct luffd__loop *l;
		struct luffd__region *r = luffd__hold_at(ctx, at, &l);
		struct luffd_store *s;
		uint64_t hi;
		int e;

		if (!r) {
			at = next_region(ctx, at); /* not a region (any more) */
			continue;
		}
		hi = r->start + r->len < end ? r->start + r->len : end;
		if (!(r->flags & LUFFD_MAP_WRITEBACK)) {
			at = hi;
			luffd__region_put(r);
			continue;
		}
		if (!b)
			b = luffd__wbatch_new(ctx);
		if (!b) {
			luffd__region_put(r);
			err = -ENOMEM;
			break;
		}
		b->r = r;
		b->l = l;
		b->err = 0;
		e = region_writeback(b, at, hi);
		s = r->store;
		if (e == -ETIMEDOUT && b->out) {
			abandon(b);
			batch_put(b);
			b = NULL;
		}
		if (!e && durable && s->ops->flush) {
			uint64_t dl = UINT64_MAX;

			if (!(s->caps & LUFFD__CAP_WRITE_INPLACE))
				dl = luffd__deadline(&ctx->cfg,
						     luffd__now_ns());
			e = s->ops->flush(s, dl);
			atomic_fetch_add_explicit(&l->stats.wb_flushes, 1,
						  memory_order_relaxed);
			if (e)
				atomic_fetch_add_explicit(&l->stats.wb_errors,
							  1,
							  memory_order_relaxed);
		}
		if (e && !err)
			err = e;
		at = hi;
		luffd__region_put(r);
	}
	if (b)
		batch_put(b);
	return err;
}

int luffd__writeback_all(struct luffd_ctx *ctx)
{
	int err = 0;

	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__rtab *t = &ctx->loops[i].rtab;

		for (size_t j = 0;; j++) {
			uint64_t s, e;
			int x;

			pthread_mutex_lock(&t->lock);
			while (j < t->n &&
			       !(t->regions[j]->flags & LUFFD_MAP_WRITEBACK))
				j++;
			if (j >= t->n) {
				pthread_mutex_unlock(&t->lock);
				break;
			}
			s = t->regions[j]->start;
			e = s + t->regions[j]->len;
			pthread_mutex_unlock(&t->lock);
			x = luffd__writeback(ctx, s, e, false, false);
			if (x && !err)
				err = x;
		}
	}
	return err;
}

int luffd_msync(struct luffd_ctx *ctx, void *addr, size_t len,
		unsigned int flags)
{
	uint64_t end;
	int err;

	if (!ctx || (flags & ~(unsigned int)LUFFD_MSYNC_DURABLE))
		return -EINVAL;
	err = luffd__check_range(ctx, addr, len, &end);
	if (err)
		return err;
	if (luffd__on_library_thread(ctx))
		return -EDEADLK;
	return luffd__writeback(ctx, (uint64_t)(uintptr_t)addr, end,
				flags & LUFFD_MSYNC_DURABLE, true);
}

/* ------------------------------------------------------------------------
 * Cache pages made stale
 * ---------------------------------------------------------------------- */

void luffd__inval_init(struct luffd__inval *v)
{
	pthread_mutex_init(&v->lock, NULL);
	atomic_init(&v->pending, false);
	v->n = v->nall = 0;
	v->everything = false;
}

void luffd__inval_fini(struct luffd__inval *v)
{
	pthread_mutex_destroy(&v->lock);
}

/* Writer: store pages [pg, pg+npg) of s were written; every handler of
 * ctx drops its cached copies before it serves a fault read from now on. */
static void invalidate(struct luffd_ctx *ctx, const struct luffd_store *s,
		       uint64_t pg, uint64_t npg)
{
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__inval *v = &ctx->loops[i].inval;
		uint32_t k;

		pthread_mutex_lock(&v->lock);
		/* Next to the last range: one range. */
		if (v->n && v->r[v->n - 1].id == s->id &&
		    v->r[v->n - 1].pg + v->r[v->n - 1].npg == pg) {
			v->r[v->n - 1].npg += npg;
		} else if (v->n < LUFFD__INVAL_MAX) {
			v->r[v->n].id = s->id;
			v->r[v->n].pg = pg;
			v->r[v->n].npg = npg;
			v->n++;
		} else if (!v->everything) {
			for (k = 0; k < v->nall && v->all[k] != s->id; k++)
				;
			if (k == v->nall && v->nall < 4)
				v->all[v->nall++] = s->id;
			else if (k == v->nall)
				v->everything = true;
		}
		atomic_store_explicit(&v->pending, true, memory_order_release);
		pthread_mutex_unlock(&v->lock);
	}
}

void luffd__wb_inval_run(struct luffd__loop *l)
{
	struct luffd__inval *v = &l->inval;
	struct luffd__cache *c = &l->cache;

	pthread_mutex_lock(&v->lock);
	atomic_store_explicit(&v->pending, false, memory_order_relaxed);
	for (uint32_t i = 0; i < v->n; i++)
		luffd__cache_drop_pages(c, v->r[i].id, v->r[i].pg,
					v->r[i].npg);
	for (uint32_t i = 0; i < v->nall && !v->everything; i++)
		luffd__cache_drop_pages(c, v->all[i], 0, UINT64_MAX);
	if (v->everything)
		for (uint32_t i = 0; i < c->nslots; i++)
			if (luffd__cache_state(c, i) == LUFFD__SLOT_READY)
				luffd__cache_release(c, i);
	v->n = v->nall = 0;
	v->everything = false;
	pthread_mutex_unlock(&v->lock);
}
