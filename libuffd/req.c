/* SPDX-License-Identifier: MIT */
/*
 * Requests and completion queues: see req.h for the contract and the
 * states a request goes through.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "req.h"
#include "store.h"

/* Registry: entries in pages of 1024, never freed, so an id can always be
 * looked up.  id = generation << IDX_BITS | index. */
#define IDX_BITS 22
#define PAGE_BITS 10
#define NPAGES (1u << (IDX_BITS - PAGE_BITS))
#define GEN_MASK ((1ull << (64 - IDX_BITS)) - 1)
#define ST(gen, st) ((gen) << 3 | (st))

static struct luffd__req *_Atomic pages[NPAGES];
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct luffd__req *reg_free; /* through ->next */
static uint32_t reg_used;           /* entries ever handed out */

/* The handler's marker (see luffd__req_complete()). */
_Thread_local struct luffd__cq *luffd__tls_cq;

/* A queue that takes no more completions: its handler is gone. */
#define CQ_CLOSED ((struct luffd__req *)(uintptr_t)8)

static struct luffd__req *entry(uint32_t idx)
{
	struct luffd__req *p = atomic_load_explicit(&pages[idx >> PAGE_BITS],
						    memory_order_acquire);

	return p ? &p[idx & ((1u << PAGE_BITS) - 1)] : NULL;
}

int luffd__req_alloc(struct luffd__req **rp)
{
	struct luffd__req *r = NULL;

	pthread_mutex_lock(&reg_lock);
	if (reg_free) {
		r = reg_free;
		reg_free = r->next;
		r->next = NULL;
	} else if (reg_used < 1u << IDX_BITS) {
		uint32_t pg = reg_used >> PAGE_BITS;
		struct luffd__req *p = atomic_load(&pages[pg]);

		if (!p) {
			p = calloc(1u << PAGE_BITS, sizeof(*p));
			if (p) {
				for (uint32_t i = 0; i < 1u << PAGE_BITS; i++)
					p[i].idx = (pg << PAGE_BITS) | i;
				atomic_store_explicit(&pages[pg], p,
						      memory_order_release);
			}
		}
		if (p)
			r = &p[reg_used++ & ((1u << PAGE_BITS) - 1)];
	}
	pthread_mutex_unlock(&reg_lock);
	*rp = r;
	return r ? 0 : -ENOMEM;
}

void luffd__req_release(struct luffd__req *r)
{
	pthread_mutex_lock(&reg_lock);
	r->next = reg_free;
	reg_free = r;
	pthread_mutex_unlock(&reg_lock);
}

void luffd__req_issue(struct luffd__req *r, struct luffd__cq *cq,
		      struct luffd_store *s)
{
	uint64_t gen = ((atomic_load_explicit(&r->state, memory_order_relaxed)
			 >> 3) + 1) & GEN_MASK;

	if (!gen)
		gen = 1;
	r->store = luffd__store_get(s);
	atomic_store_explicit(&r->a_store, s, memory_order_relaxed);
	atomic_store_explicit(&r->a_len, r->pub.len, memory_order_relaxed);
	r->cq = cq;
	r->res = 0;
	r->done = 0;
	r->priv = NULL;
	r->next = NULL;
	atomic_store_explicit(&r->misuse, false, memory_order_relaxed);
	r->pub.id = gen << IDX_BITS | r->idx;
	/* Release: a completer that sees ISSUED sees the fields above. */
	atomic_store_explicit(&r->state, ST(gen, LUFFD__REQ_ISSUED),
			      memory_order_release);
}

bool luffd__req_cancel(struct luffd__req *r)
{
	uint64_t s = atomic_load_explicit(&r->state, memory_order_acquire);

	if ((s & 7) != LUFFD__REQ_ISSUED)
		return false;
	return atomic_compare_exchange_strong_explicit(
		&r->state, &s, (s & ~7ull) | LUFFD__REQ_CANCELLED,
		memory_order_acq_rel, memory_order_acquire);
}

static void cq_free(struct luffd__cq *cq)
{
	for (int i = 0; i < 2; i++)
		if (cq->keep[i].p)
			munmap(cq->keep[i].p, cq->keep[i].len);
	free(cq->keep_mem);
	if (cq->evfd >= 0)
		close(cq->evfd);
	pthread_mutex_destroy(&cq->lock);
	free(cq);
}

/* A completion for a queue whose handler is gone (see luffd__cq_close()):
 * its data has nowhere to go; give the entry back, and with the last one
 * the memory the queue kept for it. */
static void orphan_release(struct luffd__cq *cq, struct luffd__req *r)
{
	struct luffd_store *s = r->store;
	bool last;

	pthread_mutex_lock(&cq->lock);
	atomic_store_explicit(&r->state,
			      atomic_load(&r->state) & ~7ull,
			      memory_order_release);
	r->store = NULL;
	luffd__req_release(r);
	last = --cq->pending == 0;
	pthread_mutex_unlock(&cq->lock);
	if (last)
		cq_free(cq);
	/* Last: a store's destroy() may run here, on the completer. */
	luffd_store_put(s);
}

static void push(struct luffd__req *r)
{
	struct luffd__cq *cq = r->cq;
	struct luffd__req *old;

	if (cq == luffd__tls_cq) {
		/* The handler itself (an answer inside read(), or a ring
		 * completion): no atomics, no wake-up. */
		r->next = NULL;
		if (cq->local_tail)
			cq->local_tail->next = r;
		else
			cq->local_head = r;
		cq->local_tail = r;
		return;
	}
	/* kickers: the handler may not close the eventfd between our push
	 * and our kick. */
	atomic_fetch_add(&cq->kickers, 1);
	old = atomic_load_explicit(&cq->remote, memory_order_relaxed);
	do {
		if (old == CQ_CLOSED) {
			atomic_fetch_sub(&cq->kickers, 1);
			orphan_release(cq, r);
			return;
		}
		r->next = old;
	} while (!atomic_compare_exchange_weak_explicit(
		&cq->remote, &old, r, memory_order_release,
		memory_order_relaxed));
	/* Only onto an empty stack: whoever pushed the others kicked. */
	if (!old)
		luffd__cq_kick(cq);
	atomic_fetch_sub(&cq->kickers, 1);
}

/* DONE (or LATE, for a cancelled request) if r is still generation gen
 * and waiting for its completion: 0, 1 for LATE, or -EINVAL. */
static int complete_gen(struct luffd__req *r, uint64_t gen, int64_t res)
{
	uint64_t s = atomic_load_explicit(&r->state, memory_order_acquire);
	unsigned int st;

	for (;;) {
		uint64_t ns;

		st = (unsigned int)(s & 7);
		if ((s >> 3) != gen || (st != LUFFD__REQ_ISSUED &&
					st != LUFFD__REQ_CANCELLED))
			return -EINVAL;
		ns = ST(gen, st == LUFFD__REQ_ISSUED ? LUFFD__REQ_DONE
						     : LUFFD__REQ_LATE);
		if (atomic_compare_exchange_weak_explicit(
			    &r->state, &s, ns, memory_order_acq_rel,
			    memory_order_acquire))
			break;
	}
	/* Ours now: nobody else writes r until the handler pops it. */
	r->res = res;
	push(r);
	return st == LUFFD__REQ_ISSUED ? 0 : 1;
}

int luffd__req_complete(struct luffd__req *r, int64_t res)
{
	uint64_t gen = atomic_load_explicit(&r->state,
					    memory_order_relaxed) >> 3;

	return complete_gen(r, gen, res) == 0 ? 0 : -EINVAL;
}

int luffd__req_complete_id(struct luffd_store *s, uint64_t id, int64_t res)
{
	struct luffd__req *r = entry((uint32_t)(id & ((1u << IDX_BITS) - 1)));
	uint64_t gen = id >> IDX_BITS, st;

	if (!r || !gen)
		return -EINVAL;
	st = atomic_load_explicit(&r->state, memory_order_acquire);
	if ((st >> 3) != gen)
		return -EINVAL;
	/* Seen after the state that issued this generation: its values. */
	if (atomic_load_explicit(&r->a_store, memory_order_relaxed) != s ||
	    res > (int64_t)atomic_load_explicit(&r->a_len,
						memory_order_relaxed))
		return -EINVAL;
	return complete_gen(r, gen, res) == 0 ? 0 : -EINVAL;
}

struct io_uring_sqe *luffd__req_sqe(struct luffd__req *r)
{
	struct io_uring_sqe *sqe = luffd__sqe(r->cq->ring);

	r->flags |= LUFFD__REQ_RING;
	if (sqe)
		io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)r |
					     LUFFD__TAG_REQ);
	return sqe;
}

bool luffd__cq_poll(struct luffd__poller *p, unsigned int events)
{
	struct luffd__cq *cq = p->cq;
	struct io_uring_sqe *sqe;

	if (p->armed || !cq->ring)
		return false;
	sqe = luffd__sqe(cq->ring);
	if (!sqe)
		return false;
	io_uring_prep_poll_add(sqe, p->fd, events);
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)p | LUFFD__TAG_POLL);
	luffd__store_get(p->store);
	p->armed = true;
	p->next = cq->polls;
	cq->polls = p;
	return true;
}

static void poll_unlink(struct luffd__poller *p)
{
	struct luffd__poller **pp;

	for (pp = &p->cq->polls; *pp && *pp != p; pp = &(*pp)->next)
		;
	if (*pp)
		*pp = p->next;
	p->next = NULL;
	p->armed = false;
}

void luffd__cq_poll_done(struct luffd__poller *p, int res)
{
	struct luffd_store *s = p->store;

	poll_unlink(p);
	/* The store may arm it again inside; its reference covers the call. */
	s->ops->poll_done(s, p, res);
	luffd_store_put(s);
}

void luffd__cq_drop_polls(struct luffd__cq *cq)
{
	while (cq->polls) {
		struct luffd__poller *p = cq->polls;
		struct luffd_store *s = p->store;

		poll_unlink(p);
		luffd_store_put(s);
	}
}

/* ------------------------------------------------------------------------
 * Queues
 * ---------------------------------------------------------------------- */

int luffd__cq_new(struct luffd__cq **cqp)
{
	struct luffd__cq *cq = calloc(1, sizeof(*cq));

	*cqp = NULL;
	if (!cq)
		return -ENOMEM;
	cq->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (cq->evfd < 0) {
		int err = -errno;

		free(cq);
		return err;
	}
	pthread_mutex_init(&cq->lock, NULL);
	atomic_init(&cq->remote, NULL);
	atomic_init(&cq->kickers, 0);
	*cqp = cq;
	return 0;
}

void luffd__cq_kick(struct luffd__cq *cq)
{
	uint64_t one = 1;

	if (write(cq->evfd, &one, sizeof(one)) < 0) {
		/* The counter is saturated: the handler is awake anyway. */
	}
}

struct luffd__req *luffd__cq_pop(struct luffd__cq *cq)
{
	struct luffd__req *r = cq->local_head;

	if (!r && atomic_load_explicit(&cq->remote, memory_order_relaxed)) {
		/* Take the whole stack; it is newest first. */
		struct luffd__req *list = atomic_exchange_explicit(
			&cq->remote, NULL, memory_order_acquire), *rev = NULL;

		while (list) {
			struct luffd__req *next = list->next;

			list->next = rev;
			rev = list;
			list = next;
		}
		r = rev;
		while (rev && rev->next)
			rev = rev->next;
		cq->local_head = r;
		cq->local_tail = rev;
	}
	if (r) {
		cq->local_head = r->next;
		if (!cq->local_head)
			cq->local_tail = NULL;
		r->next = NULL;
	}
	return r;
}

void luffd__req_finish(struct luffd__req *r)
{
	struct luffd_store *s = r->store;

	r->store = NULL;
	atomic_store_explicit(&r->state,
			      atomic_load_explicit(&r->state,
						   memory_order_relaxed) &
				      ~7ull,
			      memory_order_release);
	luffd_store_put(s);
}

unsigned int luffd__cq_close(struct luffd__cq *cq, struct luffd__req **reqs,
			     unsigned int n)
{
	struct luffd__req *list;
	unsigned int out = 0;

	/*
	 * Under the lock from the close to the count: a completer that finds
	 * the queue closed waits here, and then its request has been counted
	 * (it was not FREE), so the count it takes back is there.
	 */
	pthread_mutex_lock(&cq->lock);
	list = atomic_exchange(&cq->remote, CQ_CLOSED);
	while (list) {
		struct luffd__req *next = list->next;

		luffd__req_finish(list);
		list = next;
	}
	while ((list = cq->local_head)) {
		cq->local_head = list->next;
		luffd__req_finish(list);
	}
	cq->local_tail = NULL;
	for (unsigned int i = 0; i < n; i++) {
		if (!reqs[i])
			continue;
		if (luffd__req_state(reqs[i]) == LUFFD__REQ_FREE)
			luffd__req_release(reqs[i]);
		else
			out++;
	}
	cq->pending = out;
	cq->closed = true;
	/* A completer that pushed before the close may still be kicking
	 * (kickers never waits for this lock).  Once unlocked, the last late
	 * completion may free the queue. */
	while (atomic_load(&cq->kickers))
		sched_yield();
	pthread_mutex_unlock(&cq->lock);
	if (!out)
		cq_free(cq);
	return out;
}
