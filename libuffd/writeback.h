/* SPDX-License-Identifier: MIT */
/*
 * Write-back (writeback.c): the dirty pages of LUFFD_MAP_WRITEBACK regions
 * written to their store by luffd_msync(), luffd_unmap() and
 * luffd_ctx_destroy(), on the calling thread.  This is the store side of
 * the contract: a store with LUFFD__CAP_WRITE takes writes (store.h) and
 * completes each through luffd__wreq_done().
 */
#ifndef LUFFD_WRITEBACK_H
#define LUFFD_WRITEBACK_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct luffd_ctx;
struct luffd__loop;
struct luffd__region;
struct luffd_store;
struct luffd__wbatch;

/*
 * Cache pages made stale by write-back, per handler: the writer queues the
 * store ranges it wrote before it returns, and the handler drops their
 * cache pages before it serves any fault it reads after that.  When more
 * ranges wait than fit, the handler drops every page of the stores named
 * (`all`).
 */
#define LUFFD__INVAL_MAX 32
struct luffd__inval {
	pthread_mutex_t lock;
	atomic_bool pending;
	uint32_t n;
	struct { uint64_t id, pg, npg; } r[LUFFD__INVAL_MAX];
	uint64_t all[4];   /* store ids whose every page goes */
	uint32_t nall;
	bool everything;   /* more than that: the whole cache */
};
void luffd__inval_init(struct luffd__inval *v);
void luffd__inval_fini(struct luffd__inval *v);
/* Handler: drop what write-backs queued (cheap when nothing is). */
void luffd__wb_inval_run(struct luffd__loop *l);
#define luffd__wb_inval_take(l)                                               \
	do {                                                                  \
		if (atomic_load_explicit(&(l)->inval.pending,                 \
					 memory_order_acquire))               \
			luffd__wb_inval_run(l);                               \
	} while (0)

/* One write asked of a store. */
struct luffd__wreq {
	uint64_t off;        /* store offset */
	uint64_t len;        /* bytes: whole pages, except up to the store's
				end */
	const void *buf;     /* the bytes, valid until the completion: in the
				region itself (LUFFD__CAP_WRITE_INPLACE) or a
				copy of the batch's */
	uint64_t addr;       /* the first page's address in the region */
	uint64_t plen;       /* the pages' length there */
	uint64_t done;       /* bytes written by earlier parts (a short
				write is continued) */
	int64_t res;
	uint64_t deadline;   /* given up at (CLOCK_MONOTONIC ns): started
				plus read_timeout_ms for a store whose writes
				can time out, else UINT64_MAX */
	void *copy;          /* the batch's copy of the bytes, or NULL */
	struct luffd__wbatch *b;
	void *priv;          /* the store's */
	struct luffd__wreq *next; /* completed, for the batch */
};

/* The completion of w, from any thread, once: res the bytes written
 * (fewer than w->len: the rest is asked for again) or -errno. */
void luffd__wreq_done(struct luffd__wreq *w, int64_t res);
/* A submission entry of the writing thread's own ring for w (user_data
 * set), for a store that writes through io_uring; NULL when the ring
 * cannot be had (the store then writes some other way). */
struct io_uring_sqe *luffd__wreq_sqe(struct luffd__wreq *w);

/* Write back the dirty pages of the write-back regions of ctx in
 * [start, end) (strict: every page must lie in write-back regions,
 * -ENOENT / -EINVAL as luffd_msync() says; else others are skipped).
 * durable: flush the stores after.  0 or the first error; pages whose
 * write failed stay dirty. */
int luffd__writeback(struct luffd_ctx *ctx, uint64_t start, uint64_t end,
		     bool durable, bool strict);
/*
 * The evictor's: a batch kept for many write-backs (its ring set up once).
 * luffd__wbatch_run() protects [a, a+len) of region r (held, of handler
 * l; the caller knows the run is dirty and that no write can lift the
 * protection meanwhile) and starts writing it; a run that could not be
 * started is left dirty.  luffd__wbatch_drain() waits for every write
 * started and returns the first error (failed runs are left dirty).
 * wb_lock held throughout.
 */
struct luffd__wbatch *luffd__wbatch_new(struct luffd_ctx *ctx);
void luffd__wbatch_free(struct luffd__wbatch *b);
int luffd__wbatch_run(struct luffd__wbatch *b, struct luffd__loop *l,
		      struct luffd__region *r, uint64_t a, uint64_t len);
/* -ETIMEDOUT: the store did not answer in time; *bp is then a new batch
 * (NULL if memory ran out), the old one left to the late answers. */
int luffd__wbatch_drain(struct luffd__wbatch **bp);
/* Every write-back region of ctx (luffd_ctx_destroy()). */
int luffd__writeback_all(struct luffd_ctx *ctx);

#endif /* LUFFD_WRITEBACK_H */
