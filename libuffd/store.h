/* SPDX-License-Identifier: MIT */
/*
 * Stores: where a region's bytes come from (store.c, and one store_*.c per
 * kind).  Each kind fills in luffd__store_ops and capability bits; the
 * fault path acts on those and never asks which kind a store is.
 *
 * read() starts a request and returns at once: the store completes it
 * later (luffd__req_complete(), from any thread, or inside read() itself)
 * with the bytes read, 0 or -errno.  A short count ends the request: pages
 * it did not reach are not delivered (see LUFFD__CAP_EMPTY_ZERO for what 0
 * means).
 */
#ifndef LUFFD_STORE_H
#define LUFFD_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "util.h"

struct luffd__req;
struct luffd__pool;
struct luffd__poller;

/* Capabilities the fault path acts on. */
#define LUFFD__CAP_DIRECT (1u << 0)      /* bytes addressable in memory
					    (direct()): installed straight
					    from them, no cache, no reads */
#define LUFFD__CAP_EMPTY_ZERO (1u << 1)  /* a result of 0: the first page
					    holds no data (ZERO); without it,
					    0 means past the end (SIGBUS) */
#define LUFFD__CAP_HOLES (1u << 2)       /* ask hole() before reading */
#define LUFFD__CAP_LIVE_SIZE (1u << 3)   /* the store may grow: a page past
					    the size seen at creation is read,
					    and the result decides */
#define LUFFD__CAP_READ_AROUND (1u << 4) /* a read that starts before the
					    faulting page gives that page the
					    same answer (read-around pays) */
#define LUFFD__CAP_CHUNKS (1u << 5)      /* reads of whole 2 MiB staging
					    chunks pay (see chunk.c) */
#define LUFFD__CAP_APP_CODE (1u << 6)    /* read() runs application code
					    on the handler thread: guard it */
#define LUFFD__CAP_DEMAND_LANE (1u << 7) /* demand reads have a way of
					    their own, past background
					    ones: a fault overtakes a
					    prefetch read of its page */
#define LUFFD__CAP_WRITE (1u << 8)       /* write() can change the store's
					    bytes (write-back regions) */
#define LUFFD__CAP_WRITE_INPLACE (1u << 9) /* write() is done with the
					    bytes by its completion, which
					    always comes (a local file, a
					    callback run on the caller's
					    thread): written straight from
					    the region, no copy, no
					    timeout */
/* Cache key of a read that overtakes a background one (its page is the
 * background read's under the store's own key). */
#define LUFFD__ID_OVERTAKE (1ull << 63)

struct luffd_store;
struct luffd__wreq;

struct luffd__store_ops {
	/* Start request r (0: it completes later, possibly already has), or
	 * fail at once (-errno: it never completes). */
	int (*read)(struct luffd_store *s, struct luffd__req *r);
	/* The completion of an io_uring entry the store took for r with
	 * luffd__req_sqe() (handler thread). */
	void (*ring_done)(struct luffd_store *s, struct luffd__req *r, int res);
	/* r was cancelled (read_timeout_ms, or its region went away): stop
	 * if possible.  r may still be completed (its data is dropped). */
	void (*cancel)(struct luffd_store *s, struct luffd__req *r);
	/* CAP_DIRECT: the address of offset, NULL past the end. */
	const void *(*direct)(struct luffd_store *s, uint64_t off);
	/* CAP_HOLES: 1 when [off, off+len) holds no data; else 0 and
	 * *data_end = where the data run starting at off ends. */
	int (*hole)(struct luffd_store *s, uint64_t off, uint64_t len,
		    uint64_t *data_end);
	/* The completion of a poll the store armed with luffd__cq_poll()
	 * (handler thread of p->cq): res is the poll's revents or -errno. */
	void (*poll_done)(struct luffd_store *s, struct luffd__poller *p,
			  int res);
	/* CAP_WRITE: start writing w->len bytes at w->buf to store offset
	 * w->off (0: it completes later through luffd__wreq_done(), from
	 * any thread or inside this call), or fail at once (-errno: it never
	 * completes).  Runs on the application thread that writes back
	 * (writeback.c).  Without CAP_WRITE_INPLACE the writer may give w
	 * up while the store still writes it: a later write of the same
	 * bytes must not land before it (store_nbd.c holds it back). */
	int (*write)(struct luffd_store *s, struct luffd__wreq *w);
	/* CAP_WRITE: make every write completed so far durable (fsync, NBD
	 * flush).  Blocks; 0 or -errno.  A store without CAP_WRITE_INPLACE
	 * gives up at deadline (CLOCK_MONOTONIC ns, read_timeout_ms from
	 * the call; UINT64_MAX for none) with -ETIMEDOUT, and the flush's
	 * late answer is then harmless.  NULL: nothing to do. */
	int (*flush)(struct luffd_store *s, uint64_t deadline);
	/* The store is about to be written: later stores over the same
	 * data must not share its cache key (NULL: they never do). */
	void (*unshare)(struct luffd_store *s);
	/* The last reference went (any thread). */
	void (*destroy)(struct luffd_store *s);
};

struct luffd_store {
	atomic_uint refs;
	unsigned int caps;
	/* The cache key: unique in the process and never reused, except
	 * that file stores over the same file share one (store_file.c). */
	uint64_t id;
	uint64_t size; /* bytes, as seen at creation */
	const struct luffd__store_ops *ops;
	void *priv;    /* the kind's own state */
	/* Regions over this store's cache key (id) in all contexts:
	 * install-ahead trusts a cache page's "installed" bit only while
	 * there is one.  Points at own_regions, or at the count the stores
	 * sharing the id share. */
	atomic_uint *nregions;
	atomic_uint own_regions;
	atomic_bool written;   /* unshared: write-back may change its bytes */
};

/* A store of the given kind with one reference (the caller's); NULL. */
struct luffd_store *luffd__store_new(const struct luffd__store_ops *ops,
				     unsigned int caps, uint64_t size,
				     void *priv);
/* A new cache key (store ids are never reused). */
uint64_t luffd__store_new_id(void);
struct luffd_store *luffd__store_get(struct luffd_store *s);
/*
 * Before the first write-back region over s: give s a cache key of its
 * own, so no cache holds its pages under a key that other stores (or
 * other mappings of this one made earlier) share, and pages cached before
 * a write are never served after it.  Once per store; later calls do
 * nothing.  -EBUSY while regions (of any store sharing its key) exist:
 * their handlers read the key.  Thread-safe.
 */
int luffd__store_unshare(struct luffd_store *s);

#endif /* LUFFD_STORE_H */
