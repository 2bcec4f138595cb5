/* SPDX-License-Identifier: MIT */
/*
 * The worker pool: synchronous store work (a callback's fill()) on threads
 * of its own, answered through the issuing handler's completion queue like
 * any asynchronous store.
 *
 * Work waits in three queues, one per priority, and a worker always takes
 * the most urgent first: a demand fault never waits behind read-ahead or
 * prefetch that no worker has started.  Threads start as work waits for
 * one (up to the setting), and stay.
 *
 * A fill() that touches memory registered with the context would wait on
 * its own fault, which may wait on its own read: a deadlock.  The handler
 * that reads such a fault knows the thread by its id (see
 * luffd__pool_caught()), lets it go on with a zero page, and the worker
 * fails the work with -EDEADLK and drops the page again afterwards.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pool.h"
#include "region.h"
#include "req.h"

#define MAX_WORKERS 1024
#define MISUSE_MAX 32 /* pages noted per work item; the rest keep zeroes */

struct worker {
	struct luffd__pool *p;
	pthread_t t;
	_Atomic uint32_t tid;
	bool busy;         /* inside work (pool lock) */
	/* Pages its work faulted on (pool lock). */
	unsigned int nmisuse;
	struct { uint64_t addr; struct luffd__region *r; } misuse[MISUSE_MAX];
};

struct luffd__pool {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	struct luffd__req *head[3], *tail[3]; /* by enum luffd_priority */
	unsigned int n, idle, max;
	bool stop;
	atomic_uint refs;  /* the context's, and one per thread */
	const void *ctx;
	/* Every worker ever started, for luffd__pool_caught() (read without
	 * the lock: entries are written before nw is raised). */
	_Atomic unsigned int nw;
	struct worker *_Atomic w[MAX_WORKERS];
};

struct luffd__pool *luffd__pool_new(const void *ctx, unsigned int max)
{
	struct luffd__pool *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->max = max < MAX_WORKERS ? max : MAX_WORKERS;
	p->ctx = ctx;
	atomic_init(&p->refs, 1);
	return p;
}

static void pool_put(struct luffd__pool *p)
{
	if (atomic_fetch_sub(&p->refs, 1) != 1)
		return;
	for (unsigned int i = 0; i < atomic_load(&p->nw); i++)
		free(atomic_load(&p->w[i]));
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cv);
	free(p);
}

/* The most urgent work queued, or NULL (pool lock). */
static struct luffd__req *dequeue(struct luffd__pool *p)
{
	for (int q = 0; q < 3; q++) {
		struct luffd__req *r = p->head[q];

		if (!r)
			continue;
		p->head[q] = r->next;
		if (!p->head[q])
			p->tail[q] = NULL;
		r->next = NULL;
		r->queued = false;
		return r;
	}
	return NULL;
}

/* After the work: drop the zero pages it was given, fail it. */
static int64_t undo_misuse(struct worker *w, int64_t res,
			   struct luffd__req *r)
{
	struct luffd__pool *p = w->p;
	unsigned int n;
	size_t ps = (size_t)getpagesize();

	pthread_mutex_lock(&p->lock);
	n = w->nmisuse;
	pthread_mutex_unlock(&p->lock);
	if (!n)
		return res;
	/* The pages are held: nobody can have unmapped and reused them.
	 * madvise() waits for its REMOVE event to be read by the region's
	 * handler, which is free to. */
	for (unsigned int i = 0; i < n && i < MISUSE_MAX; i++) {
		madvise((void *)(uintptr_t)w->misuse[i].addr, ps, MADV_DONTNEED);
		luffd__region_put(w->misuse[i].r);
	}
	pthread_mutex_lock(&p->lock);
	w->nmisuse = 0;
	pthread_mutex_unlock(&p->lock);
	atomic_store(&r->misuse, true);
	return -EDEADLK;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct luffd__pool *p = w->p;

	atomic_store(&w->tid, (uint32_t)syscall(SYS_gettid));
	/* Library calls from a fill() that would wait on this very work
	 * (destroying its context, unmapping its region) refuse. */
	luffd__tls_ctx = p->ctx;
	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		struct luffd__req *r = dequeue(p);
		int64_t res;

		if (!r) {
			p->idle++;
			pthread_cond_wait(&p->cv, &p->lock);
			p->idle--;
			continue;
		}
		w->busy = true;
		pthread_mutex_unlock(&p->lock);
		if (luffd__req_state(r) == LUFFD__REQ_CANCELLED) {
			res = -ECANCELED;
		} else {
			res = r->work(r);
			res = undo_misuse(w, res, r);
		}
		luffd__req_complete(r, res);
		pthread_mutex_lock(&p->lock);
		w->busy = false;
	}
	p->n--;
	pthread_mutex_unlock(&p->lock);
	atomic_store(&w->tid, 0);
	pool_put(p);
	return NULL;
}

/* One more thread (pool lock held).  A thread's creation costs an
 * allocation and a clone() on the handler thread, once per thread the
 * pool ever has. */
static int spawn(struct luffd__pool *p)
{
	unsigned int i = atomic_load(&p->nw);
	struct worker *w;
	int err;

	if (i >= MAX_WORKERS)
		return -EAGAIN;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->p = p;
	atomic_fetch_add(&p->refs, 1);
	err = luffd__thread_create(&w->t, worker_main, w);
	if (err) {
		atomic_fetch_sub(&p->refs, 1);
		free(w);
		pr_warn("starting a callback worker: %s\n", luffd_strerror(err));
		return err;
	}
	atomic_store(&p->w[i], w);
	atomic_store(&p->nw, i + 1);
	p->n++;
	return 0;
}

void luffd__pool_submit(struct luffd__pool *p, struct luffd__req *r,
			luffd__work_fn fn)
{
	unsigned int q = (unsigned int)r->pub.priority;
	int err = 0;

	if (q > LUFFD_PRIO_PREFETCH)
		q = LUFFD_PRIO_PREFETCH;
	r->work = fn;
	r->next = NULL;
	/* One lock per callback request, on the handler's fault path: the
	 * queues are shared with the workers, and a fill() that waits on a
	 * round trip dwarfs it.  Contended only by workers taking work. */
	pthread_mutex_lock(&p->lock);
	if (p->stop) {
		pthread_mutex_unlock(&p->lock);
		luffd__req_complete(r, -ECANCELED);
		return;
	}
	r->queued = true;
	if (p->tail[q])
		p->tail[q]->next = r;
	else
		p->head[q] = r;
	p->tail[q] = r;
	if (p->idle)
		pthread_cond_signal(&p->cv);
	else if (p->n < p->max)
		err = spawn(p);
	/* No thread at all to run it: fail it rather than wait forever. */
	if (err && !p->n) {
		struct luffd__req *x = dequeue(p);

		pthread_mutex_unlock(&p->lock);
		luffd__req_complete(x, err);
		return;
	}
	pthread_mutex_unlock(&p->lock);
}

void luffd__pool_cancel(struct luffd__pool *p, struct luffd__req *r)
{
	bool found = false;

	pthread_mutex_lock(&p->lock);
	if (r->queued) {
		for (int q = 0; q < 3 && !found; q++) {
			struct luffd__req **pp = &p->head[q], *prev = NULL;

			for (; *pp; prev = *pp, pp = &(*pp)->next) {
				if (*pp != r)
					continue;
				*pp = r->next;
				if (p->tail[q] == r)
					p->tail[q] = prev;
				r->next = NULL;
				r->queued = false;
				found = true;
				break;
			}
		}
	}
	pthread_mutex_unlock(&p->lock);
	if (found)
		luffd__req_complete(r, -ECANCELED);
}

bool luffd__pool_caught(struct luffd__pool *p, uint32_t tid, uint64_t addr,
			struct luffd__region *r)
{
	unsigned int n = atomic_load_explicit(&p->nw, memory_order_acquire);
	struct worker *w = NULL;

	if (!tid)
		return false;
	for (unsigned int i = 0; i < n && !w; i++) {
		struct worker *c = atomic_load_explicit(&p->w[i],
							memory_order_relaxed);

		if (atomic_load_explicit(&c->tid, memory_order_relaxed) == tid)
			w = c;
	}
	if (!w)
		return false;
	pthread_mutex_lock(&p->lock);
	if (w->nmisuse < MISUSE_MAX) {
		w->misuse[w->nmisuse].addr = addr;
		w->misuse[w->nmisuse].r = r;
		r = NULL;
	}
	/* Past the first MISUSE_MAX pages, the rest keep their zero page
	 * until dropped; the work fails all the same. */
	if (w->nmisuse < MISUSE_MAX + 1)
		w->nmisuse++;
	pthread_mutex_unlock(&p->lock);
	if (r)
		luffd__region_put(r);
	return true;
}

void luffd__pool_stop(struct luffd__pool *p)
{
	struct luffd__req *left = NULL, *r;
	struct worker *join[MAX_WORKERS];
	unsigned int nj = 0;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	while ((r = dequeue(p))) {
		r->next = left;
		left = r;
	}
	for (unsigned int i = 0; i < atomic_load(&p->nw); i++) {
		struct worker *w = atomic_load(&p->w[i]);

		/* A worker inside a fill() that may never return is left to
		 * finish it; it frees what it holds then. */
		if (w->busy)
			pthread_detach(w->t);
		else
			join[nj++] = w;
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->lock);
	while ((r = left)) {
		left = r->next;
		r->next = NULL;
		luffd__req_complete(r, -ECANCELED);
	}
	for (unsigned int i = 0; i < nj; i++)
		pthread_join(join[i]->t, NULL);
	pool_put(p);
}
