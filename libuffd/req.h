/* SPDX-License-Identifier: MIT */
/*
 * Requests and completion queues (req.c): the handler's side of the store
 * contract.
 *
 * A request is one fetch from a store: a range of store bytes and the
 * buffers to read them into.  A handler issues it (store->ops->read()
 * returns at once) and the store completes it exactly once, later, from
 * any thread, with bytes read, 0 or -errno.  A completion never calls back
 * into the fault path: it goes onto the issuing handler's completion queue,
 * which the handler drains at the top of its loop.  That queue is what
 * keeps the fault path's call graph one-way (fault -> read -> store; the
 * answer comes back through the loop, never by recursion).
 *
 * Requests live in a process-wide registry that never frees its entries,
 * so a completion names its request by id (index + generation) and a late,
 * repeated or made-up id is refused (-EINVAL) instead of touching memory
 * that was reused.  A request's state, one atomic word:
 *
 *   FREE --issue--> ISSUED --complete--> DONE --handler--> FREE (gen + 1)
 *                     |
 *                     +--cancel--> CANCELLED --complete--> LATE --> FREE
 *
 * Completing a cancelled request drops its data (the call says -EINVAL)
 * but gives its buffers back.  When the handler goes away with requests
 * outstanding (a store that hangs), the queue stays behind with the
 * mappings those requests write into; the last late completion frees them.
 */
#ifndef LUFFD_REQ_H
#define LUFFD_REQ_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util.h"

struct luffd_store;
struct luffd__cq;
struct luffd__pool;

enum {
	LUFFD__REQ_FREE = 0,
	LUFFD__REQ_ISSUED,
	LUFFD__REQ_CANCELLED,
	LUFFD__REQ_DONE,
	LUFFD__REQ_LATE,
};

/* Hints to the store, in luffd__req.flags. */
#define LUFFD__REQ_OFFLOAD (1u << 0) /* nobody waits: keep it off the
					handler thread (io_uring worker) */
#define LUFFD__REQ_BULK (1u << 1)    /* a staging chunk or a prefetch:
					cold data may bypass the page
					cache */
/* Set by luffd__req_sqe(): the request reads through the handler's ring
 * (and is never answered once the ring is gone). */
#define LUFFD__REQ_RING (1u << 8)

struct luffd__req {
	_Atomic uint64_t state;     /* gen << 3 | LUFFD__REQ_* */
	struct luffd_request pub;   /* what the store is told */
	struct luffd_store *store;  /* held while issued */
	/* Copies for luffd__req_complete_id(), which may read them while
	 * the handler reissues the entry (a misused id). */
	_Atomic(struct luffd_store *) a_store;
	_Atomic uint64_t a_len;
	struct luffd__cq *cq;       /* the issuing handler's queue */
	void *owner;                /* the handler's read */
	struct iovec *iov;          /* pub.iov, writable (the store may
				       advance it on a short read) */
	int64_t res;
	uint32_t idx;               /* in the registry */
	uint32_t flags;             /* LUFFD__REQ_* hints */
	atomic_bool misuse;         /* a callback touched registered memory */
	struct luffd__req *next;    /* completion queue link */
	/* The store's own, while it works on the request. */
	uint64_t done;
	void *priv;
	/* A request a store splits into parts answered on any thread
	 * (store_nbd.c): parts still out, bytes of data, the first error. */
	atomic_uint parts;
	_Atomic uint64_t part_data;
	atomic_int part_err;
	int64_t (*work)(struct luffd__req *r); /* the worker pool's */
	bool queued;                           /* in the pool's queue */
};

/* A request entry for a handler's read (setup time: takes a lock, may
 * allocate); -ENOMEM.  Entries go back with luffd__req_release(). */
int luffd__req_alloc(struct luffd__req **rp);
/* Back to the registry: FREE entries only (others are given back by their
 * late completion, see luffd__cq_close()). */
void luffd__req_release(struct luffd__req *r);

/* Handler thread: start r for store s (a reference is taken) on queue cq;
 * the caller fills pub.offset, pub.len, pub.iov/iovcnt, pub.deadline_ns,
 * pub.priority and flags first. */
void luffd__req_issue(struct luffd__req *r, struct luffd__cq *cq,
		      struct luffd_store *s);
/* Handler thread: ISSUED -> CANCELLED; false if it completed meanwhile
 * (its completion is on the queue). */
bool luffd__req_cancel(struct luffd__req *r);
static inline unsigned int luffd__req_state(struct luffd__req *r)
{
	return (unsigned int)(atomic_load_explicit(&r->state,
						   memory_order_acquire) & 7);
}

/*
 * Complete r with res (bytes read, 0, -errno), from any thread.  Returns 0,
 * or -EINVAL when r was not waiting for a completion (done already, or
 * cancelled: then its data is dropped and its buffers go back).  On the
 * handler thread that issued it this costs no atomic read-modify-write
 * beyond the state's, and wakes nothing.
 */
int luffd__req_complete(struct luffd__req *r, int64_t res);
/* The same by public id; -EINVAL for an id that is not a request of store
 * s waiting for its completion, or res above the request's length. */
int luffd__req_complete_id(struct luffd_store *s, uint64_t id, int64_t res);

/* A submission entry of the handler's ring for r (user_data set), for
 * stores that read through it; NULL if the ring is full.  Handler thread,
 * inside store->ops->read() or ring_done(). */
struct io_uring_sqe *luffd__req_sqe(struct luffd__req *r);

/* ------------------------------------------------------------------------
 * Store polls: a store that talks over a socket of its own (store_nbd.c)
 * has its descriptor polled from the handler's ring, one poll per store
 * and handler at a time.  The poller lives in the store; an armed poll
 * holds a reference to the store, given back when its completion comes
 * (the store's poll_done()) or when the handler goes away.
 * ---------------------------------------------------------------------- */
struct luffd__poller {
	struct luffd_store *store;
	struct luffd__cq *cq;      /* the handler it polls from */
	int fd;
	bool armed;                /* a poll is in that ring (handler) */
	struct luffd__poller *next; /* armed on cq (handler) */
};

/* Handler thread of p->cq: poll p->fd for events (POLLIN, POLLOUT) once;
 * the result goes to p->store->ops->poll_done().  False if p is armed
 * already (its completion comes first) or the ring is full. */
bool luffd__cq_poll(struct luffd__poller *p, unsigned int events);
/* The loop's: the completion of p's poll (armed no more). */
void luffd__cq_poll_done(struct luffd__poller *p, int res);
/* The loop's, its ring gone: polls still armed never complete. */
void luffd__cq_drop_polls(struct luffd__cq *cq);
/* A poll's user_data: p | LUFFD__TAG_POLL (p is 8-aligned, above every
 * small tag). */
#define LUFFD__TAG_POLL 2ull
static inline struct luffd__poller *luffd__tag_poller(uint64_t tag)
{
	return tag > 4096 && (tag & 7) == LUFFD__TAG_POLL ?
		       (struct luffd__poller *)(uintptr_t)(tag & ~7ull) :
		       NULL;
}

/* ------------------------------------------------------------------------
 * Completion queues: one per handler thread.
 * ---------------------------------------------------------------------- */
struct luffd__cq {
	/* Completions from other threads: a lock-free stack, drained whole;
	 * CQ_CLOSED once the handler is gone. */
	_Atomic(struct luffd__req *) remote;
	atomic_uint kickers;     /* completers between push and kick */
	int evfd;                /* wakes the handler (polled by its ring) */
	/* Completions on the handler thread itself: a plain FIFO. */
	struct luffd__req *local_head, *local_tail;
	struct io_uring *ring;
	struct luffd__pool *pool; /* the context's workers */
	struct luffd__poller *polls; /* armed store polls (handler) */
	/* After the handler has gone (see luffd__cq_close()). */
	pthread_mutex_t lock;
	uint32_t pending;
	bool closed;
	struct { void *p; size_t len; } keep[2]; /* mappings to unmap */
	void *keep_mem;          /* memory to free */
};

int luffd__cq_new(struct luffd__cq **cqp);
/* Wake the handler (write its eventfd).  Any thread. */
void luffd__cq_kick(struct luffd__cq *cq);
/* Handler thread: the next completion, local ones first, or NULL. */
struct luffd__req *luffd__cq_pop(struct luffd__cq *cq);
/* Are completions waiting?  (Cheap: for the handler's hot path.) */
static inline bool luffd__cq_ready(struct luffd__cq *cq)
{
	return cq->local_head ||
	       atomic_load_explicit(&cq->remote, memory_order_relaxed);
}
/* Handler thread, after acting on r: FREE again, its store let go. */
void luffd__req_finish(struct luffd__req *r);
/*
 * The handler is going.  reqs[0..n) are its request entries (NULL ones
 * are skipped); completions still queued are dropped.  The queue owns the
 * mappings in keep[] and keep_mem from this call on.  Entries still
 * outstanding (a store that never answered) keep the queue and that memory
 * alive until their late completion, which frees them; the rest go back to
 * the registry now, and with none outstanding the queue is freed at once.
 * Returns how many were outstanding.
 */
unsigned int luffd__cq_close(struct luffd__cq *cq, struct luffd__req **reqs,
			     unsigned int n);

/* Handler thread marker: completions made on this thread for this queue
 * skip the wake-up. */
extern _Thread_local struct luffd__cq *luffd__tls_cq;

/* ------------------------------------------------------------------------
 * The handler's ring, shared by the loop and the stores that read through
 * it.  user_data: a struct luffd__req * with bit 0 set, or one of the
 * loop's own small even tags.
 * ---------------------------------------------------------------------- */
#define LUFFD__TAG_REQ 1ull
#define LUFFD__TAG_UFFD 2ull
#define LUFFD__TAG_EVFD 4ull
#define LUFFD__TAG_CANCEL 6ull   /* a cancel's own completion: nothing */
#define LUFFD__TAG_POPULATE 64ull /* + 2 * staging chunk index */

static inline struct io_uring_sqe *luffd__sqe(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

	if (!sqe) {
		/* The ring has room for every read in flight, the polls
		 * and the populates: a full ring only means that what is
		 * queued has not been submitted yet. */
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	return sqe;
}

#endif /* LUFFD_REQ_H */
