/* SPDX-License-Identifier: MIT */
/*
 * The resident limit: a thread per context (the evictor) keeps the pages
 * installed in its evictable regions under resident_bytes.
 *
 * Evictable regions are those whose pages can be dropped without losing a
 * write: write-back regions (a written page is written back first) and
 * luffd_map() regions without PROT_WRITE.  Which pages are present, and in
 * a write-back region which are clean (write-protected), the page tables
 * say (/proc/self/pagemap); each region keeps one byte per page for the
 * rest (evict.h: LUFFD__PS_*).
 *
 * When.  Each handler adds the pages it installed to an estimate once per
 * turn and wakes the evictor when the estimate passes the high mark (95%
 * of the limit); the evictor also wakes every 100 ms.  It then counts the
 * present pages (one pagemap read per 4096 pages) and, above the high
 * mark, drops pages down to the low mark (85%).
 *
 * Which: CLOCK (second chance).  The hand goes round the evictable
 * regions in address order, 2 MiB at a time.  A page the handler served a
 * fault on since the hand last passed (LUFFD__PS_REF) has its bit cleared
 * and stays; the others go, clean ones on the first round, and on a
 * second round, if that was not enough, dirty ones of write-back regions
 * (written back first).  UMap evicts in FIFO order of first touch, which
 * drops a page that is used all the time as readily as one used once.
 * libuffd sees no accesses after a page is installed (no access bit from
 * user space), so its "used" is "faulted on", including the write fault
 * that a first write to a clean page raises.
 *
 * How, without losing a write.  For each window the evictor:
 *  1. marks the candidates EVICTING; a write fault on such a page waits
 *     (the handler retries it) instead of lifting the protection, and a
 *     page whose protection the handler is lifting right now (WPING) is
 *     left alone.  The two flags are set with atomic read-modify-writes
 *     on the same byte, so exactly one side sees the other;
 *  2. writes back the dirty candidates (writeback.c), which protects them
 *     again; a write that fails leaves them dirty;
 *  3. reads the page tables again and drops, with madvise(MADV_DONTNEED),
 *     only the candidates still present and protected: no write can have
 *     reached them since their bytes were written back (step 1);
 *  4. clears EVICTING: the waiting writers fault the page in again.
 * The whole window runs under the context's write-back lock, so a
 * luffd_msync() cannot un-protect a page (a failed write) in between.
 *
 * Not covered: an application that munmap()s a region itself and maps
 * something else at the same address between the evictor's last look at
 * the page tables and its madvise() would lose those new pages
 * (madvise(), unlike the userfaultfd ioctls, does not check whose range it
 * is).  luffd_unmap() waits for the evictor.
 *
 * The drop is an madvise() from this thread, not from a handler: the
 * kernel holds madvise() until the handler has read the REMOVE event it
 * raises, and a handler doing it would wait for itself.  (Through
 * io_uring it would be the same call, made by an io_uring worker.)
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "context.h"
#include "evict.h"
#include "install.h"
#include "loop.h"
#include "prefetch.h"
#include "region.h"
#include "writeback.h"

/* Pages the hand looks at per window (2 MiB with 4 KiB pages), pagemap
 * entries read per call when counting. */
#define EV_WINDOW 512
#define EV_COUNT 4096
/* The evictor's own look, without a wake-up. */
#define EV_PERIOD_MS 100
/* A fault waits at most this long for the evictor to make room (past it,
 * it is served over the limit: the evictor may be unable to drop
 * anything, every dirty page failing to write back, say). */
#define EV_HOLD_MS 100

struct luffd__evictor {
	struct luffd_ctx *ctx;
	pthread_t th;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	atomic_bool stop;       /* no more runs: faults no longer wait */
	atomic_bool kick;
	_Atomic uint64_t est;   /* pages resident, estimated */
	uint64_t high, low;     /* pages */
	uint64_t hand;          /* the clock hand (an address) */
	int pm;                 /* /proc/self/pagemap */
	int pidfd;              /* this process, for process_madvise(), or
				   -1 */
	struct { uint64_t start, len; } *rg; /* evictable regions, by start */
	struct luffd__wbatch *wb; /* for dirty pages (its ring kept) */
	size_t nrg, caprg;
	struct luffd__stats *st;  /* its counters: the first handler's */
};

/* ------------------------------------------------------------------------
 * The handlers' side
 * ---------------------------------------------------------------------- */

void luffd__evict_note(struct luffd__loop *l)
{
	struct luffd__evictor *ev = l->ctx->ev;
	uint64_t n = luffd__tls_installed >> l->cfg->page_shift;

	if (!n)
		return;
	luffd__tls_installed = 0;
	if (!ev)
		return;
	/* One atomic add per turn that installed something; the lock only
	 * when the estimate passes the mark and nobody woke the evictor
	 * yet. */
	if (atomic_fetch_add_explicit(&ev->est, n, memory_order_relaxed) + n >
		    ev->high &&
	    !atomic_exchange_explicit(&ev->kick, true, memory_order_acq_rel)) {
		pthread_mutex_lock(&ev->lock);
		pthread_cond_signal(&ev->cv);
		pthread_mutex_unlock(&ev->lock);
	}
}

uint64_t luffd__evict_room(struct luffd__loop *l, bool ahead)
{
	struct luffd__evictor *ev = l->ctx->ev;
	uint64_t est, mark;

	if (!ev)
		return UINT64_MAX;
	est = atomic_load_explicit(&ev->est, memory_order_relaxed) +
	      (luffd__tls_installed >> l->cfg->page_shift);
	mark = ahead ? ev->low : ev->high;
	return est < mark ? mark - est : 0;
}

bool luffd__evict_hold(struct luffd__loop *l, uint64_t t0)
{
	struct luffd__evictor *ev = l->ctx->ev;
	uint64_t hold = EV_HOLD_MS * 1000000ull;

	/* Well inside read_timeout_ms, which fails a fault that waited
	 * that long (see luffd__faults_rerun()). */
	if (l->cfg->read_timeout_ms &&
	    hold > (uint64_t)l->cfg->read_timeout_ms * 500000ull)
		hold = (uint64_t)l->cfg->read_timeout_ms * 500000ull;
	if (luffd__evict_room(l, false) ||
	    atomic_load_explicit(&ev->stop, memory_order_relaxed) ||
	    luffd__now_ns() - t0 > hold)
		return false;
	if (!atomic_exchange_explicit(&ev->kick, true, memory_order_acq_rel)) {
		pthread_mutex_lock(&ev->lock);
		pthread_cond_signal(&ev->cv);
		pthread_mutex_unlock(&ev->lock);
	}
	return true;
}

static _Atomic uint8_t *pst_of(struct luffd__region *r, uint64_t addr)
{
	return &r->pst[(addr - r->start) >> r->tab->page_shift];
}

void luffd__evict_touch(struct luffd__loop *l, struct luffd__region *r,
			uint64_t addr)
{
	_Atomic uint8_t *p = pst_of(r, addr);
	uint8_t old = atomic_load_explicit(p, memory_order_relaxed);

	/* The common case (marked already) costs a load; the set is a
	 * locked instruction, uncontended but for the evictor's hand. */
	if ((old & (LUFFD__PS_REF | LUFFD__PS_EVICTED)) == LUFFD__PS_REF)
		return;
	old = atomic_fetch_or_explicit(p, LUFFD__PS_REF, memory_order_relaxed);
	if (old & LUFFD__PS_EVICTED) {
		atomic_fetch_and_explicit(p, (uint8_t)~LUFFD__PS_EVICTED,
					  memory_order_relaxed);
		luffd__inc(l->stats.refaults, 1);
	}
}

bool luffd__evict_wp_begin(struct luffd__region *r, uint64_t addr)
{
	_Atomic uint8_t *p = pst_of(r, addr);
	uint8_t old = atomic_fetch_or(p, LUFFD__PS_WPING | LUFFD__PS_REF);

	if (old & LUFFD__PS_EVICTING) {
		atomic_fetch_and(p, (uint8_t)~LUFFD__PS_WPING);
		return false;
	}
	return true;
}

void luffd__evict_wp_done(struct luffd__region *r, uint64_t addr)
{
	atomic_fetch_and(pst_of(r, addr), (uint8_t)~LUFFD__PS_WPING);
}

/* ------------------------------------------------------------------------
 * The evictor
 * ---------------------------------------------------------------------- */

static int cmp_rg(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The evictable regions now, by address. */
static int collect(struct luffd__evictor *ev)
{
	struct luffd_ctx *ctx = ev->ctx;

	ev->nrg = 0;
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__rtab *t = &ctx->loops[i].rtab;

		pthread_mutex_lock(&t->lock);
		for (size_t j = 0; j < t->n; j++) {
			struct luffd__region *r = t->regions[j];

			if (!(r->flags & LUFFD__REGION_EVICT))
				continue;
			if (ev->nrg == ev->caprg) {
				size_t cap = ev->caprg ? 2 * ev->caprg : 16;
				void *n = realloc(ev->rg, cap * sizeof(*ev->rg));

				if (!n) {
					pthread_mutex_unlock(&t->lock);
					return -ENOMEM;
				}
				ev->rg = n;
				ev->caprg = cap;
			}
			ev->rg[ev->nrg].start = r->start;
			ev->rg[ev->nrg].len = r->len;
			ev->nrg++;
		}
		pthread_mutex_unlock(&t->lock);
	}
	qsort(ev->rg, ev->nrg, sizeof(*ev->rg), cmp_rg);
	return 0;
}

/* pagemap entries of [a, a + n pages) into e; the count read. */
static size_t entries(struct luffd__evictor *ev, uint64_t a, size_t n,
		      uint64_t *e)
{
	unsigned int shift = ev->ctx->cfg.page_shift;
	ssize_t got = pread(ev->pm, e, n * sizeof(*e),
			    (off_t)((a >> shift) * sizeof(*e)));

	return got <= 0 ? 0 : (size_t)got / sizeof(*e);
}

#define PM_PRESENT(e) ((e) >> 63 & 1)
#define PM_UFFD_WP(e) ((e) >> 57 & 1)

static uint64_t count_present(struct luffd__evictor *ev)
{
	unsigned int shift = ev->ctx->cfg.page_shift;
	uint64_t e[EV_COUNT], total = 0;

	for (size_t i = 0; i < ev->nrg; i++)
		for (uint64_t a = ev->rg[i].start;
		     a < ev->rg[i].start + ev->rg[i].len;) {
			uint64_t left = (ev->rg[i].start + ev->rg[i].len - a) >>
					shift;
			size_t n = entries(ev, a, left < EV_COUNT ? left :
								   EV_COUNT, e);

			if (!n)
				break;
			for (size_t k = 0; k < n; k++)
				total += PM_PRESENT(e[k]);
			a += (uint64_t)n << shift;
		}
	return total;
}

/*
 * Drop the runs v[0..n) of r (present, clean, EVICTING): the pages
 * dropped.  One process_madvise() for all of them where the kernel takes
 * MADV_DONTNEED there (6.14 for the calling process itself): one system
 * call, and one TLB flush, instead of one per run (random access leaves
 * runs of a page or two); madvise() per run otherwise.
 */
static uint64_t drop(struct luffd__evictor *ev, struct luffd__region *r,
		     struct iovec *v, size_t n)
{
	unsigned int shift = ev->ctx->cfg.page_shift;
	uint64_t dropped = 0;
	size_t done = 0;

	if (ev->pidfd >= 0 && n > 1) {
		long got = syscall(SYS_process_madvise, ev->pidfd, v, n,
				   MADV_DONTNEED, 0);

		if (got < 0 && (errno == EINVAL || errno == ENOSYS ||
				errno == EPERM)) {
			close(ev->pidfd); /* not here: madvise() from now */
			ev->pidfd = -1;
		}
		/* Whole iovecs, in order. */
		for (uint64_t left = got > 0 ? (uint64_t)got : 0;
		     done < n && left >= v[done].iov_len; done++)
			left -= v[done].iov_len;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t a = (uint64_t)(uintptr_t)v[i].iov_base;

		if (i >= done &&
		    madvise(v[i].iov_base, v[i].iov_len, MADV_DONTNEED) < 0)
			continue;
		for (uint64_t p = 0; p < v[i].iov_len >> shift; p++)
			atomic_fetch_or(pst_of(r, a + (p << shift)),
					LUFFD__PS_EVICTED);
		dropped += v[i].iov_len >> shift;
	}
	return dropped;
}

/*
 * One window [a, e) of one region: the pages it drops (at most need).
 * dirty: dirty pages of a write-back region may go too (written back).
 * wb_lock held.
 */
static uint64_t window(struct luffd__evictor *ev, uint64_t a, uint64_t e,
		       uint64_t need, bool dirty)
{
	struct luffd_ctx *ctx = ev->ctx;
	unsigned int shift = ctx->cfg.page_shift;
	uint64_t ent[EV_WINDOW], dropped = 0, run = 0, run_a = 0;
	uint8_t cand[EV_WINDOW]; /* 0: no, 1: clean, 2: dirty */
	struct iovec iov[EV_WINDOW / 2 + 1];
	size_t niov = 0;
	struct luffd__region *r;
	struct luffd__loop *l;
	size_t n, n2, ncand = 0, ndirty = 0;
	bool ro;

	r = luffd__hold_at(ctx, a, &l);
	if (!r)
		return 0;
	if (!(r->flags & LUFFD__REGION_EVICT) || !r->pst)
		goto out;
	if (e > r->start + r->len)
		e = r->start + r->len;
	ro = r->flags & LUFFD__REGION_RO;
	n = entries(ev, a, (e - a) >> shift, ent);
	memset(cand, 0, sizeof(cand));
	for (size_t i = 0; i < n && ncand < need; i++) {
		uint64_t at = a + ((uint64_t)i << shift);
		_Atomic uint8_t *p = pst_of(r, at);
		bool clean = ro || PM_UFFD_WP(ent[i]);
		uint8_t old;

		if (!PM_PRESENT(ent[i]))
			continue;
		if (atomic_load_explicit(p, memory_order_relaxed) &
		    LUFFD__PS_REF) {
			/* Second chance. */
			atomic_fetch_and(p, (uint8_t)~LUFFD__PS_REF);
			continue;
		}
		if (!clean && !dirty)
			continue;
		old = atomic_fetch_or(p, LUFFD__PS_EVICTING);
		if (old & (LUFFD__PS_WPING | LUFFD__PS_REF)) {
			atomic_fetch_and(p, (uint8_t)~LUFFD__PS_EVICTING);
			continue;
		}
		cand[i] = clean ? 1 : 2;
		ncand++;
		ndirty += !clean;
	}
	if (!ncand)
		goto out;
	/* Dirty candidates are written back (and protected again) first,
	 * all the window's runs in flight at once. */
	for (size_t i = 0; ndirty && i <= n; i++) {
		if (i < n && cand[i] == 2) {
			if (!run++)
				run_a = a + ((uint64_t)i << shift);
			continue;
		}
		if (run && ev->wb)
			luffd__wbatch_run(ev->wb, l, r, run_a, run << shift);
		run = 0;
	}
	if (ndirty && ev->wb)
		luffd__wbatch_drain(&ev->wb);
	/* Only what is still present and protected goes (a failed write
	 * left its pages dirty). */
	n2 = entries(ev, a, n, ent); /* n2 < n: the rest is left */
	run = 0;
	for (size_t i = 0; i <= n2; i++) {
		bool go = i < n2 && cand[i] && PM_PRESENT(ent[i]) &&
			  (ro || PM_UFFD_WP(ent[i]));

		if (go) {
			if (!run++)
				run_a = a + ((uint64_t)i << shift);
			continue;
		}
		if (run) {
			iov[niov].iov_base = (void *)(uintptr_t)run_a;
			iov[niov++].iov_len = run << shift;
		}
		run = 0;
	}
	if (niov)
		dropped = drop(ev, r, iov, niov);
	/* Every candidate of the first look, whatever the second read. */
	for (size_t i = 0; i < n; i++)
		if (cand[i])
			atomic_fetch_and(pst_of(r, a + ((uint64_t)i << shift)),
					 (uint8_t)~LUFFD__PS_EVICTING);
out:
	luffd__region_put(r);
	return dropped;
}

/* The hand goes round once (at most) dropping up to need pages. */
static uint64_t sweep(struct luffd__evictor *ev, uint64_t need, bool dirty)
{
	size_t ps = ev->ctx->cfg.page_size;
	uint64_t total = 0, seen = 0, dropped = 0;
	size_t i;

	for (i = 0; i < ev->nrg; i++)
		total += ev->rg[i].len;
	/* The region holding the hand, or the next one. */
	for (i = 0; i < ev->nrg &&
		    ev->rg[i].start + ev->rg[i].len <= ev->hand;
	     i++)
		;
	if (i == ev->nrg)
		i = 0;
	if (ev->hand < ev->rg[i].start ||
	    ev->hand >= ev->rg[i].start + ev->rg[i].len)
		ev->hand = ev->rg[i].start;
	while (dropped < need && seen < total) {
		uint64_t end = ev->rg[i].start + ev->rg[i].len;
		uint64_t e = ev->hand + EV_WINDOW * ps;

		e = e < end ? e : end;
		dropped += window(ev, ev->hand, e, need - dropped, dirty);
		seen += e - ev->hand;
		ev->hand = e;
		if (e == end) {
			i = (i + 1) % ev->nrg;
			ev->hand = ev->rg[i].start;
		}
	}
	return dropped;
}

static void run(struct luffd__evictor *ev)
{
	struct luffd_ctx *ctx = ev->ctx;
	uint64_t count, need, dropped;

	if (collect(ev) || !ev->nrg)
		return;
	pthread_mutex_lock(&ctx->wb_lock);
	count = count_present(ev);
	atomic_store_explicit(&ev->est, count, memory_order_relaxed);
	/* The evictor is their only writer: plain relaxed stores. */
	atomic_store_explicit(&ev->st->resident, count, memory_order_relaxed);
	if (count > atomic_load_explicit(&ev->st->resident_peak,
					 memory_order_relaxed))
		atomic_store_explicit(&ev->st->resident_peak, count,
				      memory_order_relaxed);
	if (count >= ev->high) {
		need = count - ev->low;
		dropped = sweep(ev, need, false);
		/* Clean ones were not enough: dirty ones, written back. */
		if (dropped < need)
			dropped += sweep(ev, need - dropped, true);
		luffd__inc(ev->st->evicted, dropped);
		atomic_fetch_sub_explicit(&ev->est, dropped,
					  memory_order_relaxed);
		atomic_store_explicit(&ev->st->resident, count - dropped,
				      memory_order_relaxed);
	}
	pthread_mutex_unlock(&ctx->wb_lock);
}

static void *evict_main(void *arg)
{
	struct luffd__evictor *ev = arg;

	/* Calls that would wait for the evictor refuse (-EDEADLK). */
	luffd__tls_ctx = ev->ctx;
	pthread_mutex_lock(&ev->lock);
	while (!atomic_load(&ev->stop)) {
		if (!atomic_load(&ev->kick)) {
			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_nsec += EV_PERIOD_MS * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&ev->cv, &ev->lock, &ts);
			if (atomic_load(&ev->stop))
				break;
		}
		atomic_store(&ev->kick, false);
		pthread_mutex_unlock(&ev->lock);
		run(ev);
		pthread_mutex_lock(&ev->lock);
	}
	pthread_mutex_unlock(&ev->lock);
	return NULL;
}

int luffd__evict_start(struct luffd_ctx *ctx)
{
	struct luffd__evictor *ev;
	pthread_condattr_t ca;
	int err;

	if (!ctx->cfg.resident_pages)
		return 0;
	ev = calloc(1, sizeof(*ev));
	if (!ev)
		return -ENOMEM;
	ev->ctx = ctx;
	ev->st = &ctx->loops[0].stats;
	ev->high = ctx->cfg.resident_pages * 95 / 100;
	ev->low = ctx->cfg.resident_pages * 85 / 100;
	ev->pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
	ev->pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (ev->pm < 0) {
		err = -errno;
		if (ev->pidfd >= 0)
			close(ev->pidfd);
		free(ev);
		return err;
	}
	pthread_mutex_init(&ev->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ev->cv, &ca);
	pthread_condattr_destroy(&ca);
	/* Without it, dirty pages stay (only clean ones are dropped). */
	ev->wb = luffd__wbatch_new(ctx);
	err = luffd__thread_create(&ev->th, evict_main, ev);
	if (err) {
		luffd__wbatch_free(ev->wb);
		close(ev->pm);
		if (ev->pidfd >= 0)
			close(ev->pidfd);
		pthread_mutex_destroy(&ev->lock);
		pthread_cond_destroy(&ev->cv);
		free(ev);
		return err;
	}
	ctx->ev = ev;
	return 0;
}

void luffd__evict_stop(struct luffd_ctx *ctx)
{
	struct luffd__evictor *ev = ctx->ev;

	if (!ev || atomic_load(&ev->stop))
		return;
	pthread_mutex_lock(&ev->lock);
	atomic_store(&ev->stop, true);
	pthread_cond_signal(&ev->cv);
	pthread_mutex_unlock(&ev->lock);
	pthread_join(ev->th, NULL);
}

void luffd__evict_free(struct luffd_ctx *ctx)
{
	struct luffd__evictor *ev = ctx->ev;

	if (!ev)
		return;
	luffd__evict_stop(ctx);
	ctx->ev = NULL;
	luffd__wbatch_free(ev->wb);
	close(ev->pm);
	if (ev->pidfd >= 0)
		close(ev->pidfd);
	free(ev->rg);
	pthread_mutex_destroy(&ev->lock);
	pthread_cond_destroy(&ev->cv);
	free(ev);
}
