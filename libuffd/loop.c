/* SPDX-License-Identifier: MIT */
/*
 * The handler thread: one per handler, with its own userfaultfd, io_uring,
 * completion queue, cache and counters, so nothing on the hot path is
 * shared between handler threads.
 *
 * One turn: expire reads past their deadline, spin or wait on the ring (a
 * multishot poll on the userfaultfd, a poll on the queue's eventfd, the
 * stores' io_uring reads), then
 *  - hand io_uring completions to the stores they belong to;
 *  - act on the completion queue: finished reads serve their faults;
 *  - let go of what died (regions removed by the application);
 *  - read fault messages in batches of 64 and serve each (msg.c);
 *  - retry installs that met -EAGAIN, faults that waited for a read or
 *    cache slot, and faults that had no region yet.
 * Nothing in the loop waits for a read, and it never touches registered
 * memory itself (it would fault on it and deadlock).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fault.h"
#include "context.h"
#include "evict.h"
#include "loop.h"
#include "msg.h"
#include "prefetch.h"
#include "store.h"

/*
 * liburing maps and unmaps a ring with raw syscalls, which ThreadSanitizer
 * does not see, so its shadow memory outlives the ring. A new handler's
 * ring is often mapped where an old one was, and if nothing else orders
 * the two handlers TSan reports the new ring's first write as a race with
 * the old ring's last access. The kernel does order them (the old unmap
 * precedes the new map); say so with a release after every ring exit and
 * an acquire after every ring setup, on one shared address.
 */
#ifdef LUFFD__TSAN
#include <sanitizer/tsan_interface.h>
static char ring_reuse;
#define ring_mapped() __tsan_acquire(&ring_reuse)
#define ring_unmapped() __tsan_release(&ring_reuse)
#else
#define ring_mapped() ((void)0)
#define ring_unmapped() ((void)0)
#endif

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

static int arm_poll(struct luffd__loop *l, int fd, uint64_t tag)
{
	struct io_uring_sqe *sqe = luffd__sqe(&l->ring);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_multishot(sqe, fd, POLLIN);
	io_uring_sqe_set_data64(sqe, tag);
	return 0;
}

/* One io_uring completion: a store's, or the loop's own. */
static void ring_done(struct luffd__loop *l, uint64_t tag, int res,
		      uint32_t flags, bool *uffd_ready)
{
	uint64_t v;

	if (tag & LUFFD__TAG_REQ) {
		struct luffd__req *r = (struct luffd__req *)(uintptr_t)
			(tag & ~LUFFD__TAG_REQ);

		r->store->ops->ring_done(r->store, r, res);
		return;
	}
	if (luffd__tag_poller(tag)) {
		luffd__cq_poll_done(luffd__tag_poller(tag), res);
		return;
	}
	if (tag >= LUFFD__TAG_POPULATE) {
		luffd__chunk_populated(l, (uint32_t)((tag - LUFFD__TAG_POPULATE)
						     / 2), res);
		return;
	}
	if (tag == LUFFD__TAG_CANCEL)
		return;
	if (tag == LUFFD__TAG_UFFD) {
		*uffd_ready = true;
	} else if (tag == LUFFD__TAG_EVFD) {
		/* Only wakes the loop; the count is moot. */
		if (read(l->cq->evfd, &v, sizeof(v)) < 0)
			v = 0;
	}
	if (!(flags & IORING_CQE_F_MORE))
		arm_poll(l, tag == LUFFD__TAG_UFFD ? l->uffd : l->cq->evfd, tag);
}

static void process_cqes(struct luffd__loop *l, bool *uffd_ready)
{
	struct io_uring_cqe *cqes[64];
	struct {
		uint64_t tag;
		int32_t res;
		uint32_t flags;
	} done[64];
	unsigned int n;

	do {
		n = io_uring_peek_batch_cqe(&l->ring, cqes, 64);
		/* Copy out and consume before acting: acting queues reads,
		 * whose completions must find room in the CQ ring. */
		for (unsigned int i = 0; i < n; i++) {
			done[i].tag = io_uring_cqe_get_data64(cqes[i]);
			done[i].res = cqes[i]->res;
			done[i].flags = cqes[i]->flags;
		}
		io_uring_cq_advance(&l->ring, n);
		for (unsigned int i = 0; i < n; i++)
			ring_done(l, done[i].tag, done[i].res, done[i].flags,
				  uffd_ready);
	} while (n == 64);
}

/* Anything that needs the loop's timed wait rather than its poll? */
static bool busy(struct luffd__loop *l)
{
	return l->rd.busy || l->ch.populating ||
	       l->rs.retry.head != LUFFD__NIL ||
	       l->orphans.head != LUFFD__NIL || l->pending.head != LUFFD__NIL;
}

/* Busy-poll for up to spin_us before sleeping: a handler that sleeps must
 * be woken by an IPI, which on a VM costs tens of microseconds. */
static void spin(struct luffd__loop *l)
{
	uint64_t budget = (uint64_t)l->cfg->spin_us * 1000;
	uint64_t deadline = luffd__now_ns() + budget;

	io_uring_submit(&l->ring);
	while (!atomic_load_explicit(&l->stop, memory_order_relaxed)) {
		/* Work in flight runs on io_uring workers, which need the
		 * CPU this would burn (2 vCPUs: spinning through a chunk
		 * stream's reads and populates cost it a third of its
		 * speed); its completion wakes the loop anyway.  A fault
		 * that met -EAGAIN (retry) or has no region yet (orphans)
		 * needs the loop's timed wait: it has nothing to wake it. */
		if (io_uring_cq_ready(&l->ring) || luffd__cq_ready(l->cq) ||
		    busy(l))
			return;
		if (luffd__msg_drain(l) > 0) {
			io_uring_submit(&l->ring);
			deadline = luffd__now_ns() + budget;
			continue;
		}
		if (luffd__now_ns() >= deadline)
			return;
		cpu_relax();
	}
}

/*
 * Runs on the handler thread: io_uring delivers a request's task work (poll
 * wake-ups among them) to the task that submitted it.  Were that an
 * application thread, each wake-up would interrupt its wait in the fault
 * and make it fault again, once per message, for as long as a read is in
 * flight.  So the handler creates its ring and is its only submitter.
 */
static int ring_setup(struct luffd__loop *l)
{
	static const unsigned int flag_sets[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN, /* 6.0 */
		IORING_SETUP_COOP_TASKRUN,                              /* 5.19 */
		0,
	};
	uint32_t qd = l->cfg->queue_depth;
	struct io_uring_params p;
	int err = -EINVAL;

	for (unsigned int i = 0; i < 3 && err == -EINVAL; i++) {
		memset(&p, 0, sizeof(p));
		p.flags = flag_sets[i];
		/* Room for every read in flight (and its cancel), the two
		 * polls, a populate per staging chunk and a few stores'
		 * polls. */
		err = io_uring_queue_init_params(2 * qd + 12 +
							 l->cfg->hp_chunks,
						 &l->ring, &p);
	}
	if (err) {
		pr_warn("io_uring_queue_init: %s\n", luffd_strerror(err));
		return err == -ENOSYS || err == -EPERM ? -LUFFD_E_NOURING : err;
	}
	l->ring_ok = true;
	ring_mapped();
	l->cq->ring = &l->ring;
	if (arm_poll(l, l->uffd, LUFFD__TAG_UFFD) ||
	    arm_poll(l, l->cq->evfd, LUFFD__TAG_EVFD))
		return -EBUSY;
	err = io_uring_submit(&l->ring);
	return err < 0 ? err : 0;
}

/* handler_cpus: pin this handler thread (before its ring exists, so the
 * ring's workers start out where it runs). */
static int pin(struct luffd__loop *l)
{
	uint64_t mask = l->cfg->handler_cpus;
	cpu_set_t set;
	int err;

	if (!mask)
		return 0;
	CPU_ZERO(&set);
	for (int i = 0; i < 64; i++)
		if (mask & (1ull << i))
			CPU_SET(i, &set);
	err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	if (err)
		pr_warn("pinning a handler thread: %s\n", luffd_strerror(-err));
	return -err;
}

/* Answer luffd_ctx_sync() callers: every fault installed before this point
 * has been counted.  After the eventfd was read: a request made later
 * kicks it again. */
static void answer_sync(struct luffd__loop *l)
{
	if (atomic_load(&l->sync_done) == atomic_load(&l->sync_req))
		return;
	pthread_mutex_lock(&l->lock);
	atomic_store(&l->sync_done, atomic_load(&l->sync_req));
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->lock);
}

static void wait_ring(struct luffd__loop *l, uint64_t wait)
{
	struct io_uring_cqe *cqe;

	if (wait != UINT64_MAX) {
		struct __kernel_timespec ts = {
			.tv_sec = (long long)(wait / 1000000000ull),
			.tv_nsec = (long long)(wait % 1000000000ull),
		};

		io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
	} else {
		io_uring_submit_and_wait(&l->ring, 1);
	}
}

static void turn(struct luffd__loop *l)
{
	bool uffd_ready = false;
	uint64_t wait = luffd__reads_expire(l), w2;

	/* Before prefetch and install-ahead take pages from the cache. */
	luffd__wb_inval_take(l);
	w2 = luffd__faults_next_deadline(l, luffd__now_ns());
	wait = w2 < wait ? w2 : wait;
	/* Nothing in flight and nothing to retry: spin a while.  The faults
	 * served meanwhile can start reads (with deadlines) or meet -EAGAIN,
	 * so the wait is worked out again after. */
	if (wait == UINT64_MAX && l->cfg->spin_us && !busy(l)) {
		spin(l);
		wait = luffd__reads_expire(l);
		w2 = luffd__faults_next_deadline(l, luffd__now_ns());
		wait = w2 < wait ? w2 : wait;
	}
	/* -EAGAIN: the address space is changing; give the change 50 us
	 * before trying again (orphans: give the REMAP event time to
	 * arrive). */
	if ((l->rs.retry.head != LUFFD__NIL ||
	     l->orphans.head != LUFFD__NIL) && wait > 50000)
		wait = 50000;
	/* Completions queued already (by the spin's faults), or prefetch
	 * that stopped only to let faults in, need no wait. */
	if (luffd__cq_ready(l->cq) || l->pf.again)
		wait = 0;
	wait_ring(l, wait);
	process_cqes(l, &uffd_ready);
	/* A background window's install takes about 100 us per 512 KiB:
	 * the faults that came meanwhile are read (and their reads sent)
	 * after every two, not after all of them.  One read() of the
	 * userfaultfd per two windows. */
	while (luffd__fault_completions_some(l, 2))
		luffd__msg_drain(l);
	answer_sync(l);
	if (atomic_exchange(&l->rtab.died, false)) {
		luffd__reads_sweep(l);
		luffd__prefetch_sweep(l);
	}
	if (uffd_ready || atomic_load_explicit(&l->stash_n,
					       memory_order_relaxed))
		luffd__msg_drain(l);
	luffd__faults_rerun(l);
	if (l->orphans.head != LUFFD__NIL)
		luffd__msg_orphans(l);
	/* Background work last: it starts only what demand leaves free. */
	luffd__prefetch_run(l);
	/* The resident limit's estimate: one add per turn (evict.c). */
	luffd__evict_note(l);
	/* What the retries started and the stores answered at once. */
	luffd__fault_completions(l);
}

static void *loop_main(void *arg)
{
	struct luffd__loop *l = arg;
	int err;

	l->tid = (pid_t)syscall(SYS_gettid);
	luffd__tls_ctx = l->ctx;
	luffd__tls_cq = l->cq;
	err = pin(l);
	if (!err)
		err = ring_setup(l);

	pthread_mutex_lock(&l->lock);
	l->init_err = err;
	l->init_done = true;
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->lock);
	if (err)
		return NULL;

	while (!atomic_load_explicit(&l->stop, memory_order_acquire))
		turn(l);
	/* A populate still running on an io_uring worker writes into the
	 * staging mapping, which fini unmaps: closing the ring does not
	 * wait for it.  They take milliseconds; give them a second. */
	for (int i = 0; l->ch.populating && i < 100; i++) {
		bool unused = false;

		wait_ring(l, 10000000);
		process_cqes(l, &unused);
	}
	return NULL;
}

int luffd__loop_init(struct luffd__loop *l, struct luffd_ctx *ctx,
		     const struct luffd__cfg *cfg, uint32_t cache_pages)
{
	void *iov_block;
	int err;

	l->ctx = ctx;
	l->cfg = cfg;
	l->uffd = -1;
	l->rs.pagemap = -1;
	luffd__flist_init(&l->pending);
	luffd__flist_init(&l->orphans);
	atomic_init(&l->stop, false);
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cv, NULL);
	luffd__prefetch_init(&l->pf);
	luffd__inval_init(&l->inval);
	luffd__stats_init(&l->stats);
	l->trace = (struct luffd__trace){
		.fn = cfg->trace_fn, .arg = cfg->trace_arg,
		.format = cfg->trace_format, .fd = cfg->trace_fd,
		.t_start = cfg->t_start,
	};
	pthread_mutex_init(&l->trace.lock, NULL);
	err = luffd__cq_new(&l->cq);
	if (err)
		return err;
	l->cq->pool = ctx->pool;
	err = luffd__uffd_open(cfg->open_mode, cfg->features, &l->uffd,
			       &l->opened_by, &l->ioctls);
	luffd__rtab_init(&l->rtab, l->uffd, l->cq, cfg->page_shift);
	if (err)
		return err;
	err = luffd__cache_init(&l->cache, cache_pages, cfg->page_shift);
	if (err)
		return err;
	err = luffd__reads_init(l, &iov_block);
	l->cq->keep_mem = iov_block;
	if (err)
		return err;
	err = luffd__records_init(&l->rs, l->uffd, cfg, &l->stats, &l->trace,
				  ctx->bt);
	if (err)
		return err;
	/* One page of zeroes (write faults in holes) and one bounce page
	 * (the tail of a memory store). */
	l->rs.zero_page = mmap(NULL, 2 * cfg->page_size, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (l->rs.zero_page == MAP_FAILED) {
		l->rs.zero_page = NULL;
		return -ENOMEM;
	}
	l->bounce = l->rs.zero_page + cfg->page_size;
	err = luffd__chunks_init(l);
	if (err)
		return err;
	if (cfg->trace_format) {
		l->trace.buf = malloc(LUFFD__TRACE_BUF);
		if (!l->trace.buf)
			return -ENOMEM;
	}
	return 0;
}

int luffd__loop_start(struct luffd__loop *l)
{
	int err = luffd__thread_create(&l->thread, loop_main, l);

	if (err)
		return err;
	pthread_mutex_lock(&l->lock);
	while (!l->init_done)
		pthread_cond_wait(&l->cv, &l->lock);
	err = l->init_err;
	pthread_mutex_unlock(&l->lock);
	if (err) {
		pthread_join(l->thread, NULL);
		return err;
	}
	l->started = true;
	return 0;
}

void luffd__loop_stop(struct luffd__loop *l)
{
	if (!l->started)
		return;
	atomic_store_explicit(&l->stop, true, memory_order_release);
	luffd__cq_kick(l->cq);
	pthread_join(l->thread, NULL);
	l->started = false;
}

void luffd__loop_sync(struct luffd__loop *l)
{
	uint64_t target;

	pthread_mutex_lock(&l->lock);
	target = atomic_fetch_add(&l->sync_req, 1) + 1;
	luffd__cq_kick(l->cq);
	while (atomic_load(&l->sync_done) < target)
		pthread_cond_wait(&l->cv, &l->lock);
	pthread_mutex_unlock(&l->lock);
}

/*
 * Requests still out when the handler goes.  One read through the ring
 * (a local file read, a pipe) will never be answered now that the ring is
 * gone, but the kernel may still be writing into its buffer: it is
 * abandoned, and its buffers stay mapped for good.  Any other (a store's
 * own thread, a worker) is answered late, and the completion queue keeps
 * its buffers until then.  Returns true if memory must be left mapped.
 */
static bool abandon_ring_reads(struct luffd__loop *l)
{
	bool leak = false;

	for (uint32_t i = 0; l->rd.reqs && i < l->rd.nops; i++) {
		struct luffd__req *r = l->rd.reqs[i];

		if (!r || luffd__req_state(r) == LUFFD__REQ_FREE ||
		    !(r->flags & LUFFD__REQ_RING))
			continue;
		leak = true;
		luffd__req_finish(r);
	}
	return leak;
}

void luffd__loop_fini(struct luffd__loop *l)
{
	bool leak;
	unsigned int out = 0;

	luffd__trace_flush(&l->trace, &l->stats);
	if (l->ring_ok) {
		io_uring_queue_exit(&l->ring);
		ring_unmapped();
	}
	l->ring_ok = false;
	if (l->cq) {
		l->cq->ring = NULL;
		luffd__cq_drop_polls(l->cq);
		leak = abandon_ring_reads(l) || l->ch.populating;
		if (leak) {
			pr_warn("destroying a context with a read stuck in "
				"flight: %zu bytes of cache left mapped\n",
				l->cache.data_len + l->ch.map_len);
		} else {
			/* Whatever is still out reads into these. */
			l->cq->keep[0].p = l->cache.data;
			l->cq->keep[0].len = l->cache.data_len;
			l->cq->keep[1].p = l->ch.map;
			l->cq->keep[1].len = l->ch.map_len;
		}
		l->cache.data = NULL;
		l->ch.map = NULL;
		out = luffd__cq_close(l->cq, l->rd.reqs, l->rd.nops);
		if (out)
			pr_info("%u store requests still out: their buffers "
				"stay until they are completed\n", out);
		l->cq = NULL;
	}
	if (l->uffd >= 0)
		close(l->uffd);
	l->uffd = -1;
	luffd__cache_fini(&l->cache);
	luffd__chunks_fini(l);
	if (l->rs.zero_page)
		munmap(l->rs.zero_page, 2 * l->cfg->page_size);
	l->rs.zero_page = NULL;
	luffd__reads_fini(l);
	luffd__records_fini(&l->rs);
	luffd__prefetch_fini(l);
	luffd__inval_fini(&l->inval);
	free(l->stash);
	l->stash = NULL;
	luffd__rtab_fini(&l->rtab);
	free(l->trace.buf);
	l->trace.buf = NULL;
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cv);
	pthread_mutex_destroy(&l->trace.lock);
}
