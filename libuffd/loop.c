/* SPDX-License-Identifier: MIT */
/*
 * The fault loop: one per handler thread, with its own userfaultfd, io_uring,
 * cache and counters, so nothing on the hot path is shared between handler
 * threads.
 *
 * One iteration: wait on the ring (a multishot poll on the userfaultfd, a
 * poll on the wake-up eventfd, and the store reads in flight), then
 *  - complete finished reads: mark their pages ready and install every fault
 *    waiting on them (MAJOR);
 *  - read fault messages in batches of 64 and serve each: from the cache
 *    (MINOR), by joining a read in flight (MAJOR, coalesced), or by starting
 *    a read of a read-ahead window (MAJOR);
 *  - retry installs that met -EAGAIN, and faults that waited for a cache or
 *    read slot.
 * A slow read never delays a fault on another page: reads complete in any
 * order and nothing in the loop waits for one.  The loop never touches
 * registered memory itself (it would fault on it and deadlock).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/*
 * liburing maps and unmaps a ring with raw syscalls, which ThreadSanitizer
 * does not see, so its shadow memory outlives the ring. A new handler's
 * ring is often mapped where an old one was, and if nothing else orders
 * the two handlers TSan reports the new ring's first write as a race with
 * the old ring's last access. The kernel does order them (the old unmap
 * precedes the new map); say so with a release after every ring exit and
 * an acquire after every ring setup, on one shared address.
 */
#if defined(__SANITIZE_THREAD__)
#define LUFFD__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LUFFD__TSAN 1
#endif
#endif
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

/* user_data of the ring's own requests; ops are pointers, never this small */
#define TAG_UFFD ((uint64_t)1)
#define TAG_EVFD ((uint64_t)2)
/* The completion of a cancel request (expire_reads()): nothing to do. */
#define TAG_CANCEL ((uint64_t)3)
/* Populating staging chunk i: TAG_POPULATE + i (see chunk_populate()) */
#define TAG_POPULATE ((uint64_t)16)
#define FAULTS_INIT 256
#define ORPHAN_NS (100 * 1000000ull) /* see resolve() */
/* Read-around stops once random misses outnumber the pages the cache
 * served around them by this many (the kernel's MMAP_LOTSAMISS), and
 * starts again as hits pay the misses back. */
#define RA_LOTSAMISS 100
#define RA_MISS_MAX (10 * RA_LOTSAMISS)
/* Pages served from the cache around random misses beyond paying them
 * back; a random miss in a region that can take chunks spends
 * RA_CREDIT_CHUNK of them to read its whole 2 MiB chunk. */
#define RA_CREDIT_MAX 4096
#define RA_CREDIT_CHUNK 64
#define IA_MIN 16 /* the kernel's fault-around, in pages */

/* ------------------------------------------------------------------------
 * Fault records and lists
 * ---------------------------------------------------------------------- */

static inline struct luffd__fault *F(struct luffd__loop *l, uint32_t i)
{
	return &l->faults[i];
}

static int grow_faults(struct luffd__loop *l)
{
	uint32_t n = l->nfaults ? l->nfaults * 2 : FAULTS_INIT;
	struct luffd__fault *p;

	if (n > UINT32_MAX / 2)
		return -ENOMEM;
	p = realloc(l->faults, (size_t)n * sizeof(*p));
	if (!p)
		return -ENOMEM;
	l->faults = p;
	for (uint32_t i = l->nfaults; i < n; i++)
		p[i].next = i + 1 < n ? i + 1 : l->free_fault;
	l->free_fault = l->nfaults;
	l->nfaults = n;
	return 0;
}

/* One record per blocked thread: the pool only grows when more threads are
 * blocked at once than ever before, so steady state allocates nothing. */
static uint32_t fault_alloc(struct luffd__loop *l)
{
	uint32_t i;

	if (l->free_fault == LUFFD__NIL && grow_faults(l))
		return LUFFD__NIL;
	i = l->free_fault;
	l->free_fault = F(l, i)->next;
	F(l, i)->next = LUFFD__NIL;
	return i;
}

static void fault_free(struct luffd__loop *l, uint32_t i)
{
	F(l, i)->next = l->free_fault;
	l->free_fault = i;
}

static void flist_push(struct luffd__loop *l, struct luffd__flist *q,
		       uint32_t i)
{
	F(l, i)->next = LUFFD__NIL;
	if (q->head == LUFFD__NIL)
		q->head = i;
	else
		F(l, q->tail)->next = i;
	q->tail = i;
}

/* ------------------------------------------------------------------------
 * Installing pages
 * ---------------------------------------------------------------------- */

static int uffd_copy(struct luffd__loop *l, uint64_t addr, const void *src)
{
	struct uffdio_copy c = {
		.dst = addr,
		.src = (uint64_t)(uintptr_t)src,
		.len = l->ctx->page_size,
	};

	if (ioctl(l->uffd, UFFDIO_COPY, &c) == 0)
		return 0;
	return c.copy < 0 ? (int)c.copy : -errno;
}

static int uffd_zeropage(struct luffd__loop *l, uint64_t addr)
{
	struct uffdio_zeropage z = {
		.range = { .start = addr, .len = l->ctx->page_size },
	};

	if (ioctl(l->uffd, UFFDIO_ZEROPAGE, &z) == 0)
		return 0;
	return z.zeropage < 0 ? (int)z.zeropage : -errno;
}

static int uffd_poison(struct luffd__loop *l, uint64_t addr)
{
	struct uffdio_poison p = {
		.range = { .start = addr, .len = l->ctx->page_size },
	};

	if (ioctl(l->uffd, UFFDIO_POISON, &p) == 0)
		return 0;
	return p.updated < 0 ? (int)p.updated : -errno;
}

static void uffd_wake(struct luffd__loop *l, uint64_t addr)
{
	struct uffdio_range r = { .start = addr, .len = l->ctx->page_size };

	ioctl(l->uffd, UFFDIO_WAKE, &r);
}

static void record(struct luffd__loop *l, uint32_t fi, enum luffd_class cls,
		   int err)
{
	struct luffd__fault *f = F(l, fi);
	uint64_t lat = luffd__now_ns() - f->t0;

	luffd__stats_record(&l->stats, cls, lat);
	if (l->ctx->trace_fn || l->trace.buf) {
		struct luffd_fault rec = {
			.time_ns = f->t0,
			.latency_ns = lat,
			.addr = f->addr,
			.tid = f->tid,
			.write = f->write,
			.cls = (uint8_t)cls,
			.error = err,
		};

		luffd__trace_emit(l, &rec);
	}
	luffd__region_put(f->region);
	fault_free(l, fi);
}

/* A fault whose region is going away: its thread is woken by the
 * unregister that follows, nothing is installed and nothing counted. */
static bool drop_if_dead(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);

	if (likely(!atomic_load_explicit(&f->region->dead,
					 memory_order_acquire)))
		return false;
	luffd__region_put(f->region);
	fault_free(l, fi);
	return true;
}

/*
 * Act on an install's result.  -EEXIST means another fault (or an earlier
 * message for the same page) installed it: success, but the page may have
 * been installed by a racing fault whose wake-up this thread missed, so
 * wake it explicitly.  -EAGAIN means the address space is changing under
 * us: try again on the next turn.  Any other error (the range was unmapped
 * behind libuffd's back) still wakes the thread so it never hangs.
 */
static void finish(struct luffd__loop *l, uint32_t fi, int ret,
		   enum luffd_class cls, int err)
{
	struct luffd__fault *f = F(l, fi);

	if (ret == -EEXIST) {
		luffd__inc(l->stats.eexist, 1);
		uffd_wake(l, f->addr);
		ret = 0;
	}
	if (ret == -EAGAIN) {
		luffd__inc(l->stats.eagain, 1);
		flist_push(l, &l->retry, fi);
		return;
	}
	if (ret) {
		uffd_wake(l, f->addr);
		cls = LUFFD_ERROR;
		err = ret;
	}
	record(l, fi, cls, err);
}

static void serve_copy(struct luffd__loop *l, uint32_t fi, const void *src,
		       enum luffd_class cls)
{
	if (drop_if_dead(l, fi))
		return;
	if (F(l, fi)->waited)
		cls = LUFFD_MAJOR;
	finish(l, fi, uffd_copy(l, F(l, fi)->addr, src), cls, 0);
}

static void serve_zero(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);
	int ret;

	if (drop_if_dead(l, fi))
		return;
	/* A write would fault again on the shared zero page to copy it:
	 * install a private zeroed page for writes in one go. */
	if (f->write)
		ret = uffd_copy(l, f->addr, l->zero_page);
	else
		ret = uffd_zeropage(l, f->addr);
	finish(l, fi, ret, LUFFD_ZERO, 0);
}

/*
 * The page cannot be served: SIGBUS in the faulting thread, as mmap does
 * past the end of a file.  UFFDIO_POISON makes the retried access raise
 * SIGBUS (BUS_ADRERR) and keeps doing so until the page is zapped.  Without
 * it, a SIGBUS sent to the thread interrupts its wait (si_code SI_TKILL);
 * without a thread id either, zeroes are the only way to unblock it.
 */
static void serve_error(struct luffd__loop *l, uint32_t fi, int err)
{
	struct luffd__fault *f = F(l, fi);
	int ret;

	if (drop_if_dead(l, fi))
		return;
	if (l->ctx->has_poison) {
		ret = uffd_poison(l, f->addr);
	} else if (f->tid) {
		ret = (int)syscall(SYS_tgkill, getpid(), (pid_t)f->tid, SIGBUS);
		ret = ret < 0 ? -errno : 0;
	} else {
		ret = uffd_zeropage(l, f->addr);
	}
	if (ret == -EAGAIN) {
		luffd__inc(l->stats.eagain, 1);
		flist_push(l, &l->retry, fi);
		return;
	}
	if (ret)
		uffd_wake(l, f->addr);
	record(l, fi, LUFFD_ERROR, err);
}

/* ------------------------------------------------------------------------
 * Reads
 * ---------------------------------------------------------------------- */

static void handle_fault(struct luffd__loop *l, uint32_t fi);

static struct luffd__op *op_alloc(struct luffd__loop *l)
{
	struct luffd__op *op;

	if (l->free_op == LUFFD__NIL)
		return NULL;
	op = &l->ops[l->free_op];
	l->free_op = op->next_free;
	l->ops_busy++;
	return op;
}

struct io_uring_sqe *luffd__get_sqe(struct luffd__loop *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);

	if (!sqe) {
		/* The ring has room for every read in flight, the polls
		 * and the populates: a full ring only means that what is
		 * queued has not been submitted yet. */
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
	}
	return sqe;
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

static void inflight_unlink(struct luffd__loop *l, struct luffd__op *op)
{
	op_unlink(&l->inflight_head, &l->inflight_tail, op);
}

static void op_free(struct luffd__loop *l, struct luffd__op *op)
{
	if (!op->expired)
		inflight_unlink(l, op);
	else
		op_unlink(&l->expired_head, NULL, op);
	luffd_store_put(op->store);
	op->store = NULL;
	if (op->region) /* an expired read let it go already */
		luffd__region_put(op->region);
	op->region = NULL;
	op->next_free = l->free_op;
	l->free_op = (uint32_t)(op - l->ops);
	l->ops_busy--;
}

static void complete_op(struct luffd__loop *l, struct luffd__op *op,
			int64_t res);

/*
 * The guard gave a misbehaving callback zero pages to read (see guard.c):
 * drop them before anyone else reads zeroes there.  madvise() waits until
 * the REMOVE event it raises is read; the guard reads it for us while
 * `zapping` is set (and stashes it with anything else it reads).
 */
static void drop_zero_pages(struct luffd__loop *l)
{
	unsigned int n = atomic_load(&l->misuse_n);
	enum luffd__lookup how;

	atomic_store(&l->zapping, true);
	luffd__guard_kick(l->ctx);
	for (unsigned int i = 0; i < n; i++) {
		struct luffd__region *r = luffd__region_hold(l, l->misuse_addr[i],
							     &how);

		if (!r)
			continue;
		madvise((void *)(uintptr_t)l->misuse_addr[i], l->ctx->page_size,
			MADV_DONTNEED);
		luffd__region_put(r);
	}
	atomic_store(&l->misuse_n, 0);
	atomic_store(&l->zapping, false);
}

static void submit_op(struct luffd__loop *l, struct luffd__op *op)
{
	int rc;

	if (!(op->store->caps & LUFFD__CAP_APP_CODE)) {
		rc = op->store->ops->read(op->store, l, op);
	} else {
		/* Application code: if it touches a region of this handler
		 * it faults on itself; the guard notices (see guard.c),
		 * lets it go on with zeroes and flags the result. */
		atomic_store(&l->cb_since, luffd__now_ns());
		rc = op->store->ops->read(op->store, l, op);
		atomic_store(&l->cb_since, 0);
		if (atomic_exchange(&l->cb_misuse, false)) {
			luffd__inc(l->stats.misuse, 1);
			pr_warn("a store callback touched memory served by its "
				"own handler thread: its faults get SIGBUS\n");
			drop_zero_pages(l);
			rc = LUFFD__READ_DONE;
			op->res = -EDEADLK;
		}
	}

	if (rc == LUFFD__READ_DONE)
		complete_op(l, op, op->res);
	else if (rc < 0)
		complete_op(l, op, rc);
}

/* Skip the first n bytes of the op's iovecs (short-read continuation). */
static void iov_advance(struct luffd__op *op, uint64_t n)
{
	while (n && op->niov) {
		if (n >= op->iov->iov_len) {
			n -= op->iov->iov_len;
			op->iov++;
			op->niov--;
		} else {
			op->iov->iov_base = (char *)op->iov->iov_base + n;
			op->iov->iov_len -= n;
			n = 0;
		}
	}
}

/* One UFFDIO_COPY of a run of pages, without waking anyone; pages already
 * present are stepped over.  Returns the pages installed. */
static uint64_t copy_run(struct luffd__loop *l, uint64_t dst, uint64_t src,
			 uint64_t len)
{
	size_t ps = l->ctx->page_size;
	uint64_t done = 0;

	while (len) {
		struct uffdio_copy c = {
			.dst = dst, .src = src, .len = len,
			.mode = UFFDIO_COPY_MODE_DONTWAKE,
		};
		uint64_t step;

		if (ioctl(l->uffd, UFFDIO_COPY, &c) == 0) {
			done += len;
			break;
		}
		if (c.copy > 0) {
			step = (uint64_t)c.copy;
			done += step;
		} else if (c.copy == -EEXIST || errno == EEXIST) {
			step = ps; /* touched meanwhile: skip it */
		} else {
			break; /* -EAGAIN, or gone: it is only ahead */
		}
		dst += step;
		src += step;
		len -= step;
	}
	return done / ps;
}

/* ------------------------------------------------------------------------
 * Chunks: sequential streams moved into place 2 MiB at a time
 *
 * Once a stream through a region that can take them (r->huge) fills whole
 * read-ahead windows, it is read ahead in chunks: the aligned 2 MiB blocks
 * of the mapping, each read whole into a staging chunk (a transparent huge
 * page) and moved into place with UFFDIO_MOVE when a fault touches it.  A
 * move of a whole chunk into an empty page-middle directory is one
 * page-table update: no copy, and the chunk's other 511 pages never fault.
 * A move from page i takes pages [i, avail) and leaves [0, i) staged, so a
 * fault below i still finds its page there.  Whatever a chunk cannot serve
 * (a page past its data, a refused move, a failed read) takes the page
 * path, which reads and copies it as usual.
 * ---------------------------------------------------------------------- */

static inline unsigned char *chunk_data(struct luffd__loop *l, uint32_t i)
{
	return l->hp_data + ((size_t)i << LUFFD__HP_SHIFT);
}

/* At most 16 chunks: a scan is cheaper than a hash. */
static uint32_t chunk_find(struct luffd__loop *l, uint64_t id, uint64_t off)
{
	for (uint32_t i = 0; i < l->ctx->hp_chunks; i++) {
		const struct luffd__chunk *ch = &l->chunks[i];

		if (ch->state != LUFFD__CHUNK_FREE && ch->off == off &&
		    ch->store_id == id)
			return i;
	}
	return LUFFD__NIL;
}

/* The 2 MiB block of r's mapping around addr: its address and store
 * offset; false when the block starts before r. */
static bool chunk_of(const struct luffd__region *r, uint64_t addr,
		     uint64_t *base, uint64_t *off)
{
	uint64_t b = addr & ~(LUFFD__HP_SIZE - 1);

	if (b < r->start)
		return false;
	*base = b;
	*off = r->off + (b - r->start);
	return true;
}

/* Pages of r the page path may read or install from store page pg on
 * without running into the stream's chunks. */
static uint64_t chunk_clip(struct luffd__loop *l, struct luffd__region *r,
			   uint64_t pg, uint64_t n)
{
	uint64_t addr, lim;

	if (!r->hp_on)
		return n;
	addr = r->start + ((pg << l->ctx->page_shift) - r->off);
	lim = (LUFFD__HP_SIZE - (addr & (LUFFD__HP_SIZE - 1))) >>
	      l->ctx->page_shift;
	return n < lim ? n : lim;
}

/*
 * Install-ahead, the kernel's fault-around: after serving store page pg of
 * r, copy pages around it straight into place if they are ready in the
 * cache, so that a reader takes one fault per chunk instead of one per
 * page.  In a stream, the pages that follow pg, up to the stream's window;
 * elsewhere (random access), the other pages of pg's aligned 16-page block
 * that were never installed, as the kernel maps a fault's neighbours.
 * Adjacent cache pages go in one call.  Nobody is woken: a thread faulting
 * on one of them meanwhile finds it present (-EEXIST) and is woken then.
 * Returns the pages installed.
 */
static uint64_t install_ahead(struct luffd__loop *l, struct luffd__region *r,
			      uint64_t pg)
{
	struct luffd__cache *c = &l->cache;
	unsigned int shift = l->ctx->page_shift;
	size_t ps = l->ctx->page_size;
	uint64_t end = (r->off + r->len) >> shift, n = l->ctx->ia_pages;
	uint64_t first = pg + 1, run_dst = 0, run_src = 0, run_len = 0;
	uint64_t installed = 0;
	bool around = false;

	/* Adaptive: as far as the stream has earned (its last window), at
	 * least the kernel's fault-around (16 pages), at most the setting. */
	if (l->ctx->ra_adaptive && r->ra_win > IA_MIN && r->ra_win < n) {
		n = r->ra_win;
	} else if (l->ctx->ra_adaptive && r->ra_win <= IA_MIN &&
		   n >= IA_MIN) {
		around = true;
		first = pg & ~(uint64_t)(IA_MIN - 1);
		if (first < r->off >> shift)
			first = r->off >> shift;
		n = IA_MIN - (pg - first);
	}
	if (n <= 1 || atomic_load_explicit(&r->dead, memory_order_relaxed))
		return 0;
	for (uint64_t p = first; p < pg + n && p < end; p++) {
		uint32_t slot;
		uint64_t dst, src;

		if (p == pg)
			continue;
		slot = luffd__cache_find(c, r->store->id, p);
		/* Like the kernel's fault-around, not the read-ahead mark:
		 * a real touch of it is what starts the next window. */
		if (slot == LUFFD__NIL ||
		    luffd__cache_state(c, slot) != LUFFD__SLOT_READY ||
		    p == r->ra_mark ||
		    (around && luffd__cache_is_used(c, slot))) {
			if (around)
				continue;
			break;
		}
		dst = r->start + (p << shift) - r->off;
		/* Not into the stream's chunks: they go in whole. */
		if (r->hp_on && !(dst & (LUFFD__HP_SIZE - 1)) &&
		    chunk_find(l, r->store->id, p << shift) != LUFFD__NIL)
			break;
		src = (uint64_t)(uintptr_t)luffd__cache_data(c, slot);
		if (run_len && run_dst + run_len == dst &&
		    run_src + run_len == src) {
			run_len += ps;
		} else {
			if (run_len)
				installed += copy_run(l, run_dst, run_src,
						      run_len);
			run_dst = dst;
			run_src = src;
			run_len = ps;
		}
		luffd__cache_used(c, slot);
	}
	if (run_len)
		installed += copy_run(l, run_dst, run_src, run_len);
	luffd__inc(l->stats.installed_ahead, installed);
	return installed;
}

static void chunk_complete(struct luffd__loop *l, struct luffd__op *op,
			   uint64_t total, int err);

enum page_fate { PAGE_READY, PAGE_ZERO, PAGE_ERROR, PAGE_ABSENT };

/* Page k of op: into the cache or out of it, and its waiters served. */
static void settle_page(struct luffd__loop *l, struct luffd__op *op,
			uint32_t k, enum page_fate fate, int err, bool shared)
{
	struct luffd__cache *c = &l->cache;
	uint32_t slot = op->slot[k], w = op->waiters[k], next;

	/* The page is no longer this read's: the waiters served below may
	 * read it again into the same slot (re-read alone after an error),
	 * and page_op() must then find that read, not this one. */
	op->slot[k] = LUFFD__NIL;
	op->waiters[k] = LUFFD__NIL;
	if (fate == PAGE_READY) {
		luffd__cache_ready(c, slot);
		if (w != LUFFD__NIL)
			luffd__cache_used(c, slot);
	} else {
		luffd__cache_release(c, slot);
	}
	for (; w != LUFFD__NIL; w = next) {
		next = F(l, w)->next;
		switch (fate) {
		case PAGE_READY:
			serve_copy(l, w, luffd__cache_data(c, slot),
				   LUFFD_MAJOR);
			break;
		case PAGE_ZERO:
			serve_zero(l, w);
			break;
		case PAGE_ERROR:
			/* A read of several pages failed: the fault's own
			 * page may be fine, so it is read again alone before
			 * anyone gets SIGBUS for it. */
			if (shared && !F(l, w)->alone) {
				F(l, w)->alone = 1;
				handle_fault(l, w);
			} else {
				serve_error(l, w, err);
			}
			break;
		case PAGE_ABSENT:
			/* Not delivered by a short callback answer: ask
			 * again. */
			handle_fault(l, w);
			break;
		}
	}
}

static void complete_op(struct luffd__loop *l, struct luffd__op *op,
			int64_t res)
{
	struct luffd_store *s = op->store;
	size_t ps = l->ctx->page_size;
	uint64_t total;
	bool shared;
	int err = 0;

	if ((res == -EAGAIN || res == -EINTR) && s->ops->read) {
		submit_op(l, op);
		return;
	}
	if (res > 0) {
		luffd__inc(l->stats.bytes_read, (uint64_t)res);
		op->done += (uint64_t)res;
		/* Regular files only come up short at their end, and an
		 * O_DIRECT read may not resume at an unaligned offset: keep
		 * reading only after a page-aligned short read. */
		if ((s->caps & LUFFD__CAP_SHORT_EOF) && op->done < op->len &&
		    !(op->done & (ps - 1))) {
			iov_advance(op, (uint64_t)res);
			submit_op(l, op);
			return;
		}
	} else if (res < 0) {
		err = (int)res;
	}
	total = op->done;
	if (op->chunk != LUFFD__NIL) {
		chunk_complete(l, op, total, err);
		op_free(l, op);
		return;
	}
	shared = op->npages > 1;

	/* The window's other pages first, and install-ahead, so that the
	 * faulting page's thread is woken last (see handle_fault()). */
	for (uint32_t j = 1; j <= op->npages; j++) {
		uint32_t k = (op->widx + j) % op->npages;
		uint64_t at = (uint64_t)k * ps;
		uint64_t have = total > at ? total - at : 0;
		uint32_t slot = op->slot[k];

		if (have >= ps) {
			settle_page(l, op, k, PAGE_READY, 0, shared);
		} else if (have > 0 && !err) {
			/* The store's last page: zeroes after its end, as
			 * mmap shows them. */
			memset((char *)luffd__cache_data(&l->cache, slot) + have,
			       0, ps - have);
			settle_page(l, op, k, PAGE_READY, 0, shared);
		} else if (err) {
			settle_page(l, op, k, PAGE_ERROR, err, shared);
		} else if (s->caps & LUFFD__CAP_EMPTY_ZERO) {
			settle_page(l, op, k,
				    k == op->widx ? PAGE_ZERO : PAGE_ABSENT, 0,
				    shared);
		} else {
			/* Past the end of the store. */
			settle_page(l, op, k, PAGE_ERROR, -ENXIO, shared);
		}
		if (j == op->npages - 1 && op->had_waiter && total >= ps &&
		    !err && op->region)
			install_ahead(l, op->region,
				      (op->off >> l->ctx->page_shift) + op->widx);
	}
	op_free(l, op);
}

enum stream { STREAM_FAULT, STREAM_BACKGROUND, STREAM_AROUND };

/* Remember a window read, for the next miss and the next mark. */
static void stream_update(struct luffd__region *r, uint64_t pg, uint32_t n,
			  enum stream how)
{
	r->ra_win = n;
	r->ra_next = pg + n;
	switch (how) {
	case STREAM_FAULT:
		/* Touching its second page starts the next window. */
		r->ra_mark = n > 1 ? pg + 1 : UINT64_MAX;
		break;
	case STREAM_BACKGROUND:
		r->ra_mark = pg;
		break;
	case STREAM_AROUND:
		/* As the kernel's read-around: the last quarter starts the
		 * next window, should a stream come through; random
		 * touches rarely land on that one page. */
		r->ra_mark = n >= 4 ? pg + n - n / 4 : UINT64_MAX;
		r->ra_win = 1;
		break;
	}
}

/* A read of npages of r's store at off, held and on the in-flight list,
 * its buffers still to be set (op->iov_mem, op->niov); NULL when every
 * read is in flight. */
static struct luffd__op *op_begin(struct luffd__loop *l,
				  struct luffd__region *r, uint64_t off,
				  uint32_t npages)
{
	struct luffd__op *op = op_alloc(l);

	if (!op)
		return NULL;
	op->store = luffd__store_get(r->store);
	/* The read holds its region: removal waits for it. */
	op->region = r;
	atomic_fetch_add(&r->inflight, 1);
	op->expired = false;
	op->deadline = l->ctx->read_timeout_ms ?
		luffd__now_ns() + l->ctx->read_timeout_ms * 1000000ull :
		UINT64_MAX;
	op->next = NULL;
	op->prev = l->inflight_tail;
	if (op->prev)
		op->prev->next = op;
	else
		l->inflight_head = op;
	l->inflight_tail = op;
	op->off = off;
	op->npages = npages;
	op->len = (uint64_t)npages << l->ctx->page_shift;
	op->done = 0;
	op->res = 0;
	op->iov = op->iov_mem;
	op->niov = 0;
	op->widx = 0;
	op->chunk = LUFFD__NIL;
	op->async = false;
	op->direct = false;
	return op;
}

/*
 * Queue a read of up to n pages of r's store from page pg into the cache,
 * with fault fi (or LUFFD__NIL for read-ahead nobody waits for yet)
 * waiting on page pg + widx (the pages before it are known not to be
 * cached).  The window stops early at the end of the region, at a page
 * already cached, or when the cache cannot hold it.  Returns the pages
 * queued, 0 when no read or cache slot is free.
 */
static uint32_t issue_read(struct luffd__loop *l, struct luffd__region *r,
			   uint64_t pg, uint64_t n, uint32_t fi,
			   uint32_t widx, enum stream how)
{
	struct luffd_store *s = r->store;
	struct luffd__cache *c = &l->cache;
	unsigned int shift = l->ctx->page_shift;
	size_t ps = l->ctx->page_size;
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
	if (l->free_op == LUFFD__NIL)
		return 0;
	/* The first page's slot before the read: it enters the store in the
	 * cache's table, which only fails when memory is short (then the
	 * fault waits for a read to finish, as when every slot is busy).
	 * The other pages then cannot fail (avail, and the store is in). */
	first = luffd__cache_alloc(c, s->id, pg);
	if (first == LUFFD__NIL)
		return 0;
	op = op_begin(l, r, pg << shift, (uint32_t)n);
	op->widx = widx;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t slot = k ? luffd__cache_alloc(c, s->id, pg + k) : first;
		char *data = luffd__cache_data(c, slot);
		struct iovec *last = op->niov ? &op->iov[op->niov - 1] : NULL;

		op->slot[k] = slot;
		op->waiters[k] = LUFFD__NIL;
		/* Slots handed out in order are often adjacent: one iovec
		 * for each run keeps requests large (O_DIRECT likes that). */
		if (last && (char *)last->iov_base + last->iov_len == data) {
			last->iov_len += ps;
		} else {
			op->iov[op->niov].iov_base = data;
			op->iov[op->niov].iov_len = ps;
			op->niov++;
		}
	}
	luffd__inc(l->stats.evictions, c->evictions);
	c->evictions = 0;
	op->had_waiter = fi != LUFFD__NIL;
	if (fi != LUFFD__NIL) {
		F(l, fi)->waited = 1;
		F(l, fi)->next = LUFFD__NIL;
		op->waiters[widx] = fi;
	}
	luffd__inc(l->stats.reads, 1);
	luffd__inc(l->stats.readahead_pages, fi == LUFFD__NIL ? n : n - 1);
	/* Before the read can complete: its completion may move the stream
	 * on. */
	stream_update(r, pg, (uint32_t)n, how);
	submit_op(l, op);
	return (uint32_t)n;
}

/* A chunk to read into: a free one, preferably with its memory in place
 * (populated, or being populated), else the one ready longest (evicting
 * it); LUFFD__NIL when every chunk is being read.  A ready chunk is data
 * read ahead that a fault has not reached yet: it goes only when nothing
 * is free. */
static uint32_t chunk_alloc(struct luffd__loop *l)
{
	uint32_t oldest = LUFFD__NIL, free_best = LUFFD__NIL;

	for (uint32_t i = 0; i < l->ctx->hp_chunks; i++) {
		const struct luffd__chunk *ch = &l->chunks[i];

		if (ch->state == LUFFD__CHUNK_FREE) {
			if (ch->mem == LUFFD__CHUNK_MEM_READY)
				return i;
			if (free_best == LUFFD__NIL ||
			    ch->mem > l->chunks[free_best].mem)
				free_best = i;
		} else if (ch->state == LUFFD__CHUNK_READY &&
			   (oldest == LUFFD__NIL ||
			    ch->tick < l->chunks[oldest].tick)) {
			oldest = i;
		}
	}
	return free_best != LUFFD__NIL ? free_best : oldest;
}

/* Read the chunk of r at mapping address base (store offset off), with
 * fault fi (or LUFFD__NIL) waiting for it.  False when no chunk or read
 * is free.  As with issue_read(), neither r nor fi may be touched after
 * a true return unless the caller holds r: the read can complete inside. */
static bool chunk_read(struct luffd__loop *l, struct luffd__region *r,
		       uint64_t base, uint64_t off, uint32_t fi, bool whole)
{
	struct luffd_store *s = r->store;
	unsigned int shift = l->ctx->page_shift;
	size_t ps = l->ctx->page_size;
	uint64_t n = (r->start + r->len - base) >> shift, lim;
	struct luffd__chunk *ch;
	struct luffd__op *op;
	uint32_t hc;

	n = n < (LUFFD__HP_SIZE >> shift) ? n : LUFFD__HP_SIZE >> shift;
	/* Not past the store's size (but always the faulting page's block:
	 * the file may have grown). */
	lim = s->size > off ? (s->size - off + ps - 1) >> shift : 1;
	n = n < lim ? n : lim;
	hc = chunk_alloc(l);
	if (hc == LUFFD__NIL)
		return false;
	op = op_begin(l, r, off, (uint32_t)n);
	if (!op)
		return false;
	ch = &l->chunks[hc];
	ch->store_id = s->id;
	ch->off = off;
	ch->state = LUFFD__CHUNK_INFLIGHT;
	ch->whole = whole;
	ch->avail = 0;
	ch->waiters = LUFFD__NIL;
	ch->op = (uint32_t)(op - l->ops);
	op->chunk = hc;
	op->iov_mem[0].iov_base = chunk_data(l, hc);
	op->iov_mem[0].iov_len = n << shift;
	op->niov = 1;
	op->had_waiter = fi != LUFFD__NIL;
	/* Read-ahead goes to an io_uring worker, even when cached: its
	 * 2 MiB copy then runs beside the handler, which stays free to
	 * serve faults (a cold read would also start its I/O, and may
	 * block, on whichever thread tries it first). */
	op->async = fi == LUFFD__NIL;
	/* Cold data: straight from the device (see LUFFD_FILE_CACHED).
	 * One cachestat() syscall per 2 MiB read, which it turns into
	 * either a memory copy or one device request. */
	op->direct = luffd__store_cold(s, off, n << shift);
	if (fi != LUFFD__NIL) {
		F(l, fi)->waited = 1;
		F(l, fi)->next = LUFFD__NIL;
		ch->waiters = fi;
	}
	luffd__inc(l->stats.reads, 1);
	luffd__inc(l->stats.readahead_pages, fi == LUFFD__NIL ? n : n - 1);
	submit_op(l, op);
	return true;
}

/*
 * A move took chunk hc's huge page away; the next read into it needs a new
 * one, which the kernel must allocate and zero, and on a VM whose free
 * memory went back to the host, fault in from the host: the largest cost
 * of a chunk by far.  An io_uring madvise runs on an io_uring worker, so
 * that cost is paid on another CPU while this one reads and moves the
 * stream's other chunks.  Best effort: a read into a chunk still being
 * populated just faults its pages in itself.
 */
static void chunk_populate(struct luffd__loop *l, uint32_t hc)
{
#ifdef MADV_POPULATE_WRITE
	struct io_uring_sqe *sqe;

	if (l->chunks[hc].mem != LUFFD__CHUNK_MEM_NONE)
		return;
	sqe = luffd__get_sqe(l);
	if (!sqe)
		return;
	io_uring_prep_madvise(sqe, chunk_data(l, hc), LUFFD__HP_SIZE,
			      MADV_POPULATE_WRITE);
	io_uring_sqe_set_data64(sqe, TAG_POPULATE + hc);
	l->chunks[hc].mem = LUFFD__CHUNK_MEM_FILLING;
	l->populating++;
#else
	(void)l;
	(void)hc;
#endif
}

static void chunk_populated(struct luffd__loop *l, uint32_t hc, int res)
{
	l->populating--;
	/* A read may have filled it meanwhile, and a move emptied it. */
	if (l->chunks[hc].mem == LUFFD__CHUNK_MEM_FILLING)
		l->chunks[hc].mem = res < 0 ? LUFFD__CHUNK_MEM_NONE
					    : LUFFD__CHUNK_MEM_READY;
}

/*
 * Move pages [idx, avail) of chunk hc to the block at base, waking the
 * threads waiting there.  Pages present already are stepped over (and
 * their threads woken).  *done: the pages from idx on that are in place
 * now (moved or present) before any error.  The chunk keeps [0, idx), or
 * nothing after an error.
 */
static int chunk_move(struct luffd__loop *l, uint32_t hc, uint64_t base,
		      uint32_t idx, uint64_t *done)
{
	struct luffd__chunk *ch = &l->chunks[hc];
	unsigned int shift = l->ctx->page_shift;
	uint64_t dst = base + ((uint64_t)idx << shift);
	uint64_t src = (uint64_t)(uintptr_t)chunk_data(l, hc) +
		       ((uint64_t)idx << shift);
	uint64_t len = (uint64_t)(ch->avail - idx) << shift, moved = 0;
	uint64_t wake_from = dst, wake_len = len;
	bool present = false;
	int err = 0;

	*done = 0;
	while (len) {
		struct uffdio_move m = {
			.dst = dst, .src = src, .len = len, .mode = 0,
		};
		uint64_t step;

		if (ioctl(l->uffd, UFFDIO_MOVE, &m) == 0) {
			moved += len;
			*done += len;
			break;
		}
		if (m.move > 0) {
			step = (uint64_t)m.move;
			moved += step;
		} else if (m.move == -EEXIST || errno == EEXIST) {
			/* Pages installed meanwhile (by the page path, or a
			 * racing fault): one mincore() finds how many in a
			 * row, rather than one failed move per page. */
			unsigned char vec[LUFFD__HP_SIZE / 4096];
			uint64_t n = len >> shift, k = 1;

			luffd__inc(l->stats.eexist, 1);
			present = true;
			if (n <= sizeof(vec) &&
			    !mincore((void *)(uintptr_t)dst, len, vec))
				while (k < n && (vec[k] & 1))
					k++;
			step = k << shift;
		} else {
			err = m.move < 0 ? (int)m.move : -errno;
			break;
		}
		*done += step;
		dst += step;
		src += step;
		len -= step;
	}
	/* A thread may wait on a page someone else installed. */
	if (present) {
		struct uffdio_range rg = { .start = wake_from,
					   .len = wake_len };

		ioctl(l->uffd, UFFDIO_WAKE, &rg);
	}
	*done >>= shift;
	moved >>= shift;
	luffd__inc(l->stats.moved_pages, moved);
	luffd__inc(l->stats.installed_ahead, moved > 1 ? moved - 1 : 0);
	ch->avail = err ? 0 : (uint16_t)idx;
	if (moved)
		ch->mem = LUFFD__CHUNK_MEM_NONE; /* holes now */
	if (!ch->avail) {
		ch->state = LUFFD__CHUNK_FREE;
		chunk_populate(l, hc);
		/* Now, not at the loop's next turn: the point is to
		 * overlap. */
		io_uring_submit(&l->ring);
	}
	return err;
}

/* Serve fault fi from chunk hc (ready) at base: move the pages from fi's
 * on (from the chunk's first, if it was read for a random miss) and say
 * which are in place now, [*lo, *hi).  False when fi's page is not among
 * them: the caller takes the page path. */
static bool chunk_serve(struct luffd__loop *l, uint32_t fi, uint32_t hc,
			uint64_t base, enum luffd_class cls, uint64_t *lo,
			uint64_t *hi)
{
	struct luffd__fault *f = F(l, fi);
	struct luffd__chunk *ch = &l->chunks[hc];
	uint32_t idx = (uint32_t)((f->addr - base) >> l->ctx->page_shift);
	uint32_t from = ch->whole ? 0 : idx;
	uint64_t done;
	int err;

	*lo = *hi = 0;
	if (idx >= ch->avail)
		return false;
	/* Staged for another, longer mapping of the store: a move would run
	 * past this one's end (or into the mapping after it). */
	if (base < f->region->start ||
	    base + ((uint64_t)ch->avail << l->ctx->page_shift) >
		    f->region->start + f->region->len)
		return false;
	err = chunk_move(l, hc, base, from, &done);
	if (err == -EINVAL) {
		/* The kernel will not move into this mapping after all
		 * (its protection or type changed): copy from now on. */
		f->region->huge = false;
	}
	*lo = from;
	*hi = from + done;
	if (idx >= *hi)
		return false;
	record(l, fi, f->waited ? LUFFD_MAJOR : cls, 0);
	return true;
}

/* Keep the stream's read-ahead depth: chunks after the one at off (at
 * mapping address base), all but two of the staging chunks ahead of it
 * (one being consumed, one being repopulated).  Cold data needs the
 * depth: with 4 chunks ahead a cold stream caught up with its reads. */
static void chunk_ahead(struct luffd__loop *l, struct luffd__region *r,
			uint64_t base, uint64_t off)
{
	uint64_t depth = l->ctx->hp_chunks > 3 ? l->ctx->hp_chunks - 2 : 1;
	uint64_t end = r->start + r->len;

	if (r->hp_next <= off || r->hp_next > off + (depth + 1) * LUFFD__HP_SIZE)
		r->hp_next = off + LUFFD__HP_SIZE;
	while (r->hp_next <= off + depth * LUFFD__HP_SIZE) {
		uint64_t b = base + (r->hp_next - off);

		if (b >= end || r->hp_next >= r->store->size)
			break;
		if (chunk_find(l, r->store->id, r->hp_next) == LUFFD__NIL &&
		    !chunk_read(l, r, b, r->hp_next, LUFFD__NIL, false))
			break;
		r->hp_next += LUFFD__HP_SIZE;
	}
}

/* A stream in r has filled a whole window up to store page r->ra_next:
 * from the next 2 MiB boundary of the mapping on, read it in chunks. */
static void chunk_kick(struct luffd__loop *l, struct luffd__region *r)
{
	uint64_t next = r->ra_next << l->ctx->page_shift;
	uint64_t base = (r->start + (next - r->off) + LUFFD__HP_SIZE - 1) &
			~(LUFFD__HP_SIZE - 1);
	uint64_t off = r->off + (base - r->start);

	if (base >= r->start + r->len || off >= r->store->size)
		return;
	for (uint32_t i = 0; i < l->ctx->hp_chunks; i++)
		if (l->chunks[i].state == LUFFD__CHUNK_FREE)
			chunk_populate(l, i);
	io_uring_submit(&l->ring); /* all of them in one call, now */
	r->hp_on = true;
	r->hp_last = off - LUFFD__HP_SIZE; /* a fault at off reads it */
	r->hp_next = off;
	/* The chunk at off and depth - 1 after it. */
	chunk_ahead(l, r, base - LUFFD__HP_SIZE, off - LUFFD__HP_SIZE);
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

/* Fault fi needs the data of read op, in flight: wait on list *w with
 * the others (once: see dup_waiter()), or, if the read is stuck past
 * read_timeout_ms, fail at once. */
static void join_read(struct luffd__loop *l, uint32_t fi,
		      const struct luffd__op *op, uint32_t *w)
{
	struct luffd__fault *f = F(l, fi);

	if (op->expired) {
		serve_error(l, fi, -ETIMEDOUT);
		return;
	}
	if (dup_waiter(l, *w, f)) {
		luffd__region_put(f->region);
		fault_free(l, fi);
		return;
	}
	luffd__inc(l->stats.coalesced, 1);
	f->waited = 1;
	f->next = *w;
	*w = fi;
}

/* Serve fault fi (its region held, r->huge) from the chunks if its
 * block is staged or is the stream's next.  False: take the page path. */
static bool chunk_fault(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);
	struct luffd__region *r = f->region;
	struct luffd__chunk *ch;
	uint64_t base, off, lo, hi;
	uint32_t hc;
	bool ok;

	if (!chunk_of(r, f->addr, &base, &off))
		return false;
	hc = chunk_find(l, r->store->id, off);
	if (hc == LUFFD__NIL) {
		/* The stream's next chunk was not read ahead (every chunk
		 * was busy): read it now. */
		if (!r->hp_on || off != r->hp_last + LUFFD__HP_SIZE ||
		    off >= r->store->size)
			return false;
		atomic_fetch_add(&r->inflight, 1);
		r->hp_last = off;
		ok = chunk_read(l, r, base, off, fi, false);
		if (ok)
			chunk_ahead(l, r, base, off);
		luffd__region_put(r);
		return ok;
	}
	ch = &l->chunks[hc];
	if (ch->state == LUFFD__CHUNK_INFLIGHT) {
		join_read(l, fi, &l->ops[ch->op], &ch->waiters);
		return true;
	}
	/* Ready.  The thread is woken by the move, before the read-ahead
	 * (which may read synchronously); the extra hold keeps r. */
	atomic_fetch_add(&r->inflight, 1);
	ok = chunk_serve(l, fi, hc, base, LUFFD_MINOR, &lo, &hi);
	if (ok && r->hp_on && r->huge) {
		r->hp_last = off;
		chunk_ahead(l, r, base, off);
	}
	luffd__region_put(r);
	return ok;
}

/* Take the waiter with the lowest page off list *w. */
static uint32_t pop_lowest(struct luffd__loop *l, uint32_t *w)
{
	uint32_t *best = w;

	for (uint32_t *p = w; *p != LUFFD__NIL; p = &F(l, *p)->next)
		if (F(l, *p)->addr < F(l, *best)->addr)
			best = p;
	uint32_t i = *best;

	*best = F(l, i)->next;
	F(l, i)->next = LUFFD__NIL;
	return i;
}

/* The read of a chunk finished: total bytes, or err.  Its waiters are
 * served lowest page first, so one move usually wakes them all. */
static void chunk_complete(struct luffd__loop *l, struct luffd__op *op,
			   uint64_t total, int err)
{
	uint32_t hc = op->chunk, w;
	struct luffd__chunk *ch = &l->chunks[hc];
	unsigned int shift = l->ctx->page_shift;
	size_t ps = l->ctx->page_size;
	uint64_t last_base = 0, lo = 0, hi = 0;

	/* A file system that opened O_DIRECT but refuses its reads (an
	 * alignment it wants bigger than a page): buffered from now on; the
	 * waiters take the page path below. */
	if (err == -EINVAL && op->direct)
		atomic_store(&op->store->dfd_refused, true);
	ch->avail = 0;
	if (!err && total) {
		ch->avail = (uint16_t)((total + ps - 1) >> shift);
		/* The store's last page: zeroes after its end. */
		if (total & (ps - 1))
			memset(chunk_data(l, hc) + total, 0,
			       ps - (total & (ps - 1)));
	}
	ch->state = ch->avail ? LUFFD__CHUNK_READY : LUFFD__CHUNK_FREE;
	ch->mem = LUFFD__CHUNK_MEM_READY;
	ch->tick = ++l->hp_tick;
	w = ch->waiters;
	ch->waiters = LUFFD__NIL;
	while (w != LUFFD__NIL) {
		uint32_t fi = pop_lowest(l, &w);
		struct luffd__fault *f = F(l, fi);
		uint64_t base, off;

		if (drop_if_dead(l, fi))
			continue;
		if (chunk_of(f->region, f->addr, &base, &off) &&
		    off == ch->off) {
			uint64_t idx = (f->addr - base) >> shift;

			if (base == last_base && idx >= lo && idx < hi) {
				/* Moved in (and woken) with a lower
				 * waiter's page. */
				record(l, fi, LUFFD_MAJOR, 0);
				continue;
			}
			if (ch->state == LUFFD__CHUNK_READY &&
			    idx < ch->avail) {
				bool ok = chunk_serve(l, fi, hc, base,
						      LUFFD_MAJOR, &lo, &hi);

				last_base = base;
				if (ok)
					continue;
			}
		}
		/* Past the chunk's data, or its read or move failed: the
		 * page path, which reads the page alone after a failed
		 * read (and gives SIGBUS if that fails too). */
		f->nochunk = 1;
		if (err)
			f->alone = 1;
		handle_fault(l, fi);
	}
}

/*
 * The window for a cache miss at store page pg of r.  Fixed mode: always
 * the setting.  Adaptive (the default), after the kernel's on-demand
 * read-ahead: a miss that continues the region's stream doubles the last
 * window, up to the setting; the first miss of a region reads 4 pages; a
 * miss right after 4 or more cached pages (another stream in the same
 * region) reads twice that run; any other miss is random access and reads
 * just its page.
 */
static uint64_t window(struct luffd__loop *l, struct luffd__region *r,
		       uint64_t pg)
{
	uint64_t max = l->ctx->ra_pages, w;

	uint64_t hist = 0;

	if (!l->ctx->ra_adaptive)
		return max;
	if (pg == r->ra_next)
		w = r->ra_win ? 2 * (uint64_t)r->ra_win : 4;
	else if (!r->ra_win)
		w = 4;
	else
		w = 1;
	if (w == 1) {
		/* Another stream: the pages just before pg are cached.
		 * Four in a row, so scattered random hits do not count. */
		while (hist < 8 && hist < pg &&
		       luffd__cache_find(&l->cache, r->store->id,
					 pg - hist - 1) != LUFFD__NIL)
			hist++;
		if (hist >= 4)
			w = 2 * hist;
	}
	return w < max ? w : max;
}

/* A minor hit on the stream's mark: read the next window before the
 * stream needs it, so a sequential reader waits for no read. */
static void readahead_async(struct luffd__loop *l, struct luffd__region *r)
{
	uint64_t max = l->ctx->ra_pages, pg = r->ra_next;
	uint64_t w = 2 * (uint64_t)r->ra_win;

	r->ra_mark = UINT64_MAX;
	if (pg >= (r->off + r->len) >> l->ctx->page_shift)
		return;
	w = chunk_clip(l, r, pg, w < max ? w : max);
	if (r->hp_on && w == 0)
		return;
	issue_read(l, r, pg, w, LUFFD__NIL, 0, STREAM_BACKGROUND);
}

/*
 * A random miss reads the aligned readahead_bytes block around it, as
 * the kernel's mmap read-around does, for as long as that pays: every
 * random miss counts one against the region (ra_miss), every page served
 * from the cache (a minor hit, or installed around one) one for it, and
 * past RA_LOTSAMISS a random miss reads its page alone.
 * Cached pages bound the block.
 */
static uint32_t read_around(struct luffd__loop *l, struct luffd__region *r,
			    uint64_t pg, uint32_t fi)
{
	uint64_t w = l->ctx->ra_pages, first = r->off >> l->ctx->page_shift;
	uint64_t lo = pg & ~(w - 1), id = r->store->id, start = pg;

	if (w & (w - 1)) /* not a power of two: no alignment */
		lo = pg - pg % w;
	if (lo < first)
		lo = first;
	while (start > lo &&
	       luffd__cache_find(&l->cache, id, start - 1) == LUFFD__NIL)
		start--;
	return issue_read(l, r, start, lo + w - start, fi,
			  (uint32_t)(pg - start), STREAM_AROUND);
}

/* Start a read for fault fi, whose page is not in the cache. */
static void start_read(struct luffd__loop *l, uint32_t fi, uint64_t off)
{
	struct luffd__region *r = F(l, fi)->region;
	struct luffd_store *s = r->store;
	unsigned int shift = l->ctx->page_shift;
	size_t ps = l->ctx->page_size;
	uint64_t pg = off >> shift, n, data_end = UINT64_MAX;
	uint32_t got;
	bool around;

	if (off >= s->size && !(s->caps & LUFFD__CAP_SHORT_EOF)) {
		serve_error(l, fi, -ENXIO);
		return;
	}
	/* Past the size seen at creation, the read itself decides: the file
	 * may have grown, and a read of 0 bytes means SIGBUS. */
	if ((s->caps & LUFFD__CAP_HOLES) && off < s->size) {
		if (s->ops->hole(s, off, ps, &data_end) == 1) {
			serve_zero(l, fi);
			return;
		}
	}
	n = F(l, fi)->alone ? 1 : window(l, r, pg);
	if (r->huge && !F(l, fi)->nochunk && l->ctx->ra_adaptive &&
	    n >= l->ctx->ra_pages && pg == r->ra_next) {
		/* A stream that fills whole windows goes on in chunks; if
		 * this page starts one, it waits for that. */
		chunk_kick(l, r);
		if (chunk_fault(l, fi))
			return;
	}
	n = chunk_clip(l, r, pg, n);
	/* Sparse files: not past the data run. */
	if (data_end != UINT64_MAX) {
		uint64_t lim = data_end > off ?
			(data_end - off + ps - 1) >> shift : 1;

		n = n < lim ? n : lim;
	}
	/* Read-around only where a read past the faulting page cannot
	 * change its answer: files, not callbacks. */
	around = n == 1 && l->ctx->ra_adaptive &&
		 r->ra_miss < RA_LOTSAMISS &&
		 data_end == UINT64_MAX && !F(l, fi)->alone &&
		 (s->caps & LUFFD__CAP_SHORT_EOF);
	if (n == 1 && r->ra_miss < RA_MISS_MAX)
		r->ra_miss++;
	/* Random misses whose neighbours keep being used (more pages served
	 * around misses than misses: ra_credit) read the whole 2 MiB chunk
	 * around them where the region can take chunks. */
	if (around && r->huge && !F(l, fi)->nochunk &&
	    r->ra_credit >= RA_CREDIT_CHUNK) {
		uint64_t base, coff;

		if (chunk_of(r, F(l, fi)->addr, &base, &coff) &&
		    chunk_find(l, s->id, coff) == LUFFD__NIL &&
		    coff < s->size) {
			r->ra_credit -= RA_CREDIT_CHUNK;
			if (chunk_read(l, r, base, coff, fi, true))
				return;
		}
	}
	/* Neither r nor the fault may be touched once the read is issued:
	 * it can complete inside, serve the fault and let the region go. */
	if (around)
		got = read_around(l, r, pg, fi);
	else
		got = issue_read(l, r, pg, n, fi, 0, STREAM_FAULT);
	if (!got) {
		/* Every slot or read is in flight: wait for one to finish
		 * (a read always completes, so this cannot deadlock). */
		if (!F(l, fi)->parked)
			luffd__inc(l->stats.waits, 1);
		F(l, fi)->parked = 1;
		flist_push(l, &l->pending, fi);
	}
}

/*
 * The read filling cache slot `slot` (in flight, page pg of store id), and
 * the page's index in it.  A walk over the reads in flight (at most
 * queue_depth, expired ones included) instead of a read index in every
 * cache slot: it is taken only by a fault on a page being read, and keeps
 * the cache at 12 bytes a slot.
 */
static struct luffd__op *page_op(struct luffd__loop *l, uint64_t id,
				 uint64_t pg, uint32_t slot, uint32_t *k)
{
	struct luffd__op *lists[2] = { l->inflight_head, l->expired_head };
	unsigned int shift = l->ctx->page_shift;

	for (int i = 0; i < 2; i++)
		for (struct luffd__op *op = lists[i]; op; op = op->next) {
			uint64_t at = pg - (op->off >> shift);

			if (op->chunk == LUFFD__NIL && op->store->id == id &&
			    at < op->npages && op->slot[at] == slot) {
				*k = (uint32_t)at;
				return op;
			}
		}
	abort(); /* an in-flight slot always has its read: a bug */
}

/* Serve fault fi (its region held). */
static void handle_fault(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);
	struct luffd__region *r = f->region;
	struct luffd_store *s = r->store;
	size_t ps = l->ctx->page_size;
	uint64_t off = r->off + (f->addr - r->start);
	struct luffd__op *op;
	uint32_t slot, k;

	if (drop_if_dead(l, fi))
		return;
	if (s->caps & LUFFD__CAP_DIRECT) {
		const void *src = s->ops->direct(s, off);

		if (!src) {
			serve_error(l, fi, -ENXIO);
			return;
		}
		if (off + ps > s->size) {
			memcpy(l->bounce, src, s->size - off);
			memset(l->bounce + (s->size - off), 0,
			       ps - (s->size - off));
			src = l->bounce;
		}
		serve_copy(l, fi, src, LUFFD_MINOR);
		return;
	}

	if (r->huge && !f->nochunk && chunk_fault(l, fi))
		return;
	slot = luffd__cache_find(&l->cache, s->id, off >> l->ctx->page_shift);
	if (slot == LUFFD__NIL) {
		start_read(l, fi, off);
		return;
	}
	if (luffd__cache_state(&l->cache, slot) == LUFFD__SLOT_READY) {
		uint64_t pg = off >> l->ctx->page_shift, n;
		bool ra = pg == r->ra_mark && l->ctx->ra_adaptive;

		if (r->ra_miss)
			r->ra_miss--;
		else if (r->ra_credit < RA_CREDIT_MAX)
			r->ra_credit++;
		/* A stream that fills whole windows goes on in chunks where
		 * the region can take them. */
		if (ra && r->huge && r->ra_win >= l->ctx->ra_pages)
			chunk_kick(l, r);
		/* The pages ahead go in before the faulting one wakes its
		 * thread, or the thread races them to the next page.  Like
		 * the hit itself, each pays a random miss back (the kernel's
		 * fault-around does the same for mmap_miss). */
		n = install_ahead(l, r, pg);
		if (r->ra_miss >= n) {
			r->ra_miss -= (uint32_t)n;
		} else {
			n -= r->ra_miss;
			r->ra_miss = 0;
			r->ra_credit = r->ra_credit + n < RA_CREDIT_MAX ?
				r->ra_credit + (uint32_t)n : RA_CREDIT_MAX;
		}
		if (ra) /* r is used after the fault is served */
			atomic_fetch_add(&r->inflight, 1);
		serve_copy(l, fi, luffd__cache_data(&l->cache, slot),
			   LUFFD_MINOR);
		luffd__cache_used(&l->cache, slot);
		/* The next window only now: a read the page cache (or a
		 * callback) answers at once fills cache slots on the spot,
		 * and could evict this page's before it was copied. */
		if (ra) {
			readahead_async(l, r);
			luffd__region_put(r);
		}
		return;
	}
	op = page_op(l, s->id, off >> l->ctx->page_shift, slot, &k);
	join_read(l, fi, op, &op->waiters[k]);
}

/* ------------------------------------------------------------------------
 * Messages and the loop
 * ---------------------------------------------------------------------- */

/* Serve fault fi, whose region may not be known yet. */
static void resolve(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);
	enum luffd__lookup how;

	f->region = luffd__region_hold(l, f->addr, &how);
	if (f->region) {
		handle_fault(l, fi);
		return;
	}
	if (how == LUFFD__DYING) {
		/* Its unregister is under way and wakes the thread. */
		fault_free(l, fi);
		return;
	}
	/*
	 * No region: the kernel hands fault messages out before events, so
	 * a fault in a range just moved by mremap() can arrive before the
	 * REMAP event that says where the range went.  Wait for the event a
	 * while; a fault that stays unknown (a mapping grown by mremap()
	 * past its region) gets SIGBUS rather than an endless wait.
	 */
	if (luffd__now_ns() - f->t0 < ORPHAN_NS) {
		flist_push(l, &l->orphans, fi);
		return;
	}
	luffd__inc(l->stats.orphans, 1);
	if (!l->ctx->has_poison || uffd_poison(l, f->addr))
		uffd_wake(l, f->addr);
	fault_free(l, fi);
}

static void new_fault(struct luffd__loop *l, const struct uffd_msg *m,
		      uint64_t t0)
{
	uint64_t addr = m->arg.pagefault.address & ~(uint64_t)(l->ctx->page_size - 1);
	uint32_t fi;

	fi = fault_alloc(l);
	if (fi == LUFFD__NIL) {
		/* Out of memory for bookkeeping: the thread is woken and
		 * faults again, by which time memory may have been freed. */
		uffd_wake(l, addr);
		return;
	}
	*F(l, fi) = (struct luffd__fault){
		.addr = addr,
		.t0 = t0,
		.tid = m->arg.pagefault.feat.ptid,
		.next = LUFFD__NIL,
		.write = (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0,
	};
	resolve(l, fi);
}

static void event(struct luffd__loop *l, const struct uffd_msg *m,
		  uint64_t t_read)
{
	switch (m->event) {
	case UFFD_EVENT_REMOVE:
		/* madvise(DONTNEED/REMOVE): the pages are gone and fault
		 * again, served from the store as before. */
		luffd__inc(l->stats.ev_remove, 1);
		break;
	case UFFD_EVENT_UNMAP:
		luffd__inc(l->stats.ev_unmap, 1);
		luffd__region_unmapped(l, m->arg.remove.start, m->arg.remove.end,
				       t_read);
		break;
	case UFFD_EVENT_REMAP:
		luffd__inc(l->stats.ev_remap, 1);
		luffd__region_moved(l, m->arg.remap.from, m->arg.remap.to,
				    m->arg.remap.len, t_read);
		break;
	default:
		break;
	}
}

void luffd__loop_unstash(struct luffd__loop *l)
{
	struct luffd__stashed e;

	for (;;) {
		size_t n;

		/* One at a time: serving a message may run a callback that
		 * makes the guard stash more. */
		pthread_mutex_lock(&l->lock);
		n = atomic_load(&l->stash_n);
		if (n) {
			e = l->stash[0];
			memmove(l->stash, l->stash + 1, (n - 1) * sizeof(e));
			atomic_store(&l->stash_n, n - 1);
		}
		pthread_mutex_unlock(&l->lock);
		if (!n)
			return;
		if (e.m.event == UFFD_EVENT_PAGEFAULT)
			new_fault(l, &e.m, e.t);
		else
			event(l, &e.m, e.t);
	}
}

/* Read and serve every queued message; returns how many were read. */
static int drain_uffd(struct luffd__loop *l)
{
	int total = 0;

	for (;;) {
		ssize_t n;
		uint64_t t0;
		size_t cnt;

		/* Older than anything still queued in the kernel. */
		if (unlikely(atomic_load_explicit(&l->stash_n,
						  memory_order_acquire)))
			luffd__loop_unstash(l);
		/* Before the read: munmap() can return, and a new region
		 * take the range, as soon as the kernel has handed out the
		 * UNMAP message (see reshape()). */
		t0 = luffd__now_ns();
		n = read(l->uffd, l->msgs, sizeof(l->msgs));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break; /* EAGAIN: drained */
		}
		cnt = (size_t)n / sizeof(l->msgs[0]);
		/* In order: an event changes how the faults after it
		 * resolve. */
		for (size_t i = 0; i < cnt; i++)
			if (l->msgs[i].event == UFFD_EVENT_PAGEFAULT)
				new_fault(l, &l->msgs[i], t0);
			else
				event(l, &l->msgs[i], t0);
		total += (int)cnt;
		/* A short batch emptied the queue; a message queued since
		 * re-arms the poll. */
		if (cnt < LUFFD__MSG_BATCH)
			break;
	}
	return total;
}

/* Give the pending, retry or orphan list one more try. */
static void rerun(struct luffd__loop *l, struct luffd__flist *q)
{
	uint32_t i = q->head, next;
	bool orphans = q == &l->orphans;

	q->head = q->tail = LUFFD__NIL;
	for (; i != LUFFD__NIL; i = next) {
		next = F(l, i)->next;
		F(l, i)->next = LUFFD__NIL;
		if (orphans)
			resolve(l, i);
		else
			handle_fault(l, i);
	}
}

static int arm_poll(struct luffd__loop *l, int fd, uint64_t tag)
{
	struct io_uring_sqe *sqe = luffd__get_sqe(l);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_multishot(sqe, fd, POLLIN);
	io_uring_sqe_set_data64(sqe, tag);
	return 0;
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
		for (unsigned int i = 0; i < n; i++) {
			uint64_t tag = done[i].tag, v;

			if (tag == TAG_UFFD) {
				*uffd_ready = true;
			} else if (tag >= TAG_POPULATE &&
				   tag < TAG_POPULATE + l->ctx->hp_chunks) {
				chunk_populated(l, (uint32_t)(tag - TAG_POPULATE),
						done[i].res);
				continue;
			} else if (tag == TAG_CANCEL) {
				continue;
			} else if (tag == TAG_EVFD) {
				/* Only wakes the loop; the count is moot. */
				if (read(l->evfd, &v, sizeof(v)) < 0)
					v = 0;
			} else {
				complete_op(l, (struct luffd__op *)(uintptr_t)tag,
					    done[i].res);
				continue;
			}
			if (!(done[i].flags & IORING_CQE_F_MORE))
				arm_poll(l, tag == TAG_UFFD ? l->uffd : l->evfd,
					 tag);
		}
	} while (n == 64);
}

/* SIGBUS (-ETIMEDOUT) for every fault on wait list *w, which empties. */
static void fail_waiters(struct luffd__loop *l, uint32_t *w)
{
	uint32_t fi = *w, next;

	*w = LUFFD__NIL;
	for (; fi != LUFFD__NIL; fi = next) {
		next = F(l, fi)->next;
		serve_error(l, fi, -ETIMEDOUT);
	}
}

/*
 * Reads past their deadline: their faults get SIGBUS now.  The read itself
 * may not be cancellable (a local file read in progress is not), so its
 * slots stay reserved until it completes, and faults on them meanwhile fail
 * at once.  Returns the time until the next deadline, or UINT64_MAX.
 */
static uint64_t expire_reads(struct luffd__loop *l)
{
	struct luffd__op *op;
	uint64_t now;

	if (!l->inflight_head || l->inflight_head->deadline == UINT64_MAX)
		return UINT64_MAX;
	now = luffd__now_ns();
	while ((op = l->inflight_head) && op->deadline <= now) {
		struct io_uring_sqe *sqe;

		inflight_unlink(l, op);
		op->expired = true;
		/* Its faults fail below and it installs nothing any more, so
		 * its region need not wait for it: unregister and destroy
		 * must not block on a read that may never end (a dead pipe
		 * or server).  And it is cancelled where the kernel can (not
		 * a local file read under way); either way its slots stay
		 * reserved until it completes. */
		luffd__region_put(op->region);
		op->region = NULL;
		sqe = luffd__get_sqe(l);
		if (sqe) {
			io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op,
					       0);
			io_uring_sqe_set_data64(sqe, TAG_CANCEL);
		}
		op->next = l->expired_head;
		if (op->next)
			op->next->prev = op;
		l->expired_head = op;
		luffd__inc(l->stats.timeouts, 1);
		if (op->chunk != LUFFD__NIL) {
			fail_waiters(l, &l->chunks[op->chunk].waiters);
			continue;
		}
		for (uint32_t k = 0; k < op->npages; k++)
			fail_waiters(l, &op->waiters[k]);
	}
	return op ? op->deadline - now : UINT64_MAX;
}

/* Busy-poll for up to spin_us before sleeping: a handler that sleeps must
 * be woken by an IPI, which on a VM costs tens of microseconds. */
static void spin(struct luffd__loop *l)
{
	uint64_t budget = (uint64_t)l->ctx->spin_us * 1000;
	uint64_t deadline = luffd__now_ns() + budget;

	io_uring_submit(&l->ring);
	while (!atomic_load_explicit(&l->stop, memory_order_relaxed)) {
		/* Work in flight runs on io_uring workers, which need the
		 * CPU this would burn (2 vCPUs: spinning through a chunk
		 * stream's reads and populates cost it a third of its
		 * speed); its completion wakes the loop anyway.  A fault
		 * that met -EAGAIN (retry) or has no region yet (orphans)
		 * needs the loop's timed wait: it has nothing to wake it. */
		if (io_uring_cq_ready(&l->ring) || l->ops_busy ||
		    l->populating || l->retry.head != LUFFD__NIL ||
		    l->orphans.head != LUFFD__NIL)
			return;
		if (drain_uffd(l) > 0) {
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
	uint32_t qd = l->ctx->queue_depth;
	struct io_uring_params p;
	int err = -EINVAL;

	for (unsigned int i = 0; i < 3 && err == -EINVAL; i++) {
		memset(&p, 0, sizeof(p));
		p.flags = flag_sets[i];
		/* Room for every read in flight, the two polls and a
		 * populate per staging chunk. */
		err = io_uring_queue_init_params(qd + 4 + l->ctx->hp_chunks,
						 &l->ring, &p);
	}
	if (err) {
		pr_warn("io_uring_queue_init: %s\n", luffd_strerror(err));
		return err == -ENOSYS || err == -EPERM ? -LUFFD_E_NOURING : err;
	}
	l->ring_ok = true;
	ring_mapped();
	if (arm_poll(l, l->uffd, TAG_UFFD) || arm_poll(l, l->evfd, TAG_EVFD))
		return -EBUSY;
	err = io_uring_submit(&l->ring);
	return err < 0 ? err : 0;
}

/* handler_cpus: pin this handler thread (before its ring exists, so the
 * ring's workers start out where it runs). */
static int pin(struct luffd__loop *l)
{
	uint64_t mask = l->ctx->handler_cpus;
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

static void *loop_main(void *arg)
{
	struct luffd__loop *l = arg;
	struct io_uring_cqe *cqe;
	int err;

	l->tid = (pid_t)syscall(SYS_gettid);
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

	while (!atomic_load_explicit(&l->stop, memory_order_acquire)) {
		bool uffd_ready = false;

		uint64_t wait = expire_reads(l);

		/* Nothing in flight and nothing to retry: spin a while.  The
		 * faults served meanwhile can start reads (with deadlines)
		 * or meet -EAGAIN, so the wait is worked out again after. */
		if (wait == UINT64_MAX && l->ctx->spin_us && !l->ops_busy &&
		    !l->populating && l->retry.head == LUFFD__NIL &&
		    l->orphans.head == LUFFD__NIL) {
			spin(l);
			wait = expire_reads(l);
		}
		/* -EAGAIN: the address space is changing; give the change
		 * 50 us before trying again (orphans: give the REMAP event
		 * time to arrive). */
		if ((l->retry.head != LUFFD__NIL ||
		     l->orphans.head != LUFFD__NIL) && wait > 50000)
			wait = 50000;
		if (wait != UINT64_MAX) {
			struct __kernel_timespec ts = {
				.tv_sec = (long long)(wait / 1000000000ull),
				.tv_nsec = (long long)(wait % 1000000000ull),
			};

			io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1,
							 &ts, NULL);
		} else {
			io_uring_submit_and_wait(&l->ring, 1);
		}
		process_cqes(l, &uffd_ready);
		/* Every fault installed before this point has been counted:
		 * answer luffd_ctx_sync() callers.  After the eventfd was
		 * read: a request made later kicks it again. */
		if (atomic_load(&l->sync_done) != atomic_load(&l->sync_req)) {
			pthread_mutex_lock(&l->lock);
			atomic_store(&l->sync_done, atomic_load(&l->sync_req));
			pthread_cond_broadcast(&l->cv);
			pthread_mutex_unlock(&l->lock);
		}
		if (uffd_ready || atomic_load_explicit(&l->stash_n,
						       memory_order_relaxed))
			drain_uffd(l);
		if (l->retry.head != LUFFD__NIL)
			rerun(l, &l->retry);
		if (l->pending.head != LUFFD__NIL)
			rerun(l, &l->pending);
		if (l->orphans.head != LUFFD__NIL)
			rerun(l, &l->orphans);
	}
	/* A populate still running on an io_uring worker writes into the
	 * staging mapping, which fini unmaps: closing the ring does not
	 * wait for it.  They take milliseconds; give them a second. */
	for (int i = 0; l->populating && i < 100; i++) {
		struct __kernel_timespec ts = { .tv_nsec = 10000000 };
		bool unused = false;

		io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
		process_cqes(l, &unused);
	}
	return NULL;
}

void luffd__loop_kick(struct luffd__loop *l)
{
	uint64_t one = 1;

	if (write(l->evfd, &one, sizeof(one)) < 0) {
		/* The counter is saturated: the loop is awake anyway. */
	}
}

bool luffd__on_handler_thread(const struct luffd_ctx *ctx)
{
	pthread_t self = pthread_self();

	for (unsigned int i = 0; i < ctx->nloops; i++)
		if (ctx->loops[i].started &&
		    pthread_equal(self, ctx->loops[i].thread))
			return true;
	return false;
}

/* The staging chunks: one 2 MiB-aligned mapping where the kernel puts a
 * transparent huge page under each chunk on its first write, and again
 * after each move takes it away.  Touched lazily, like the cache. */
static int chunks_init(struct luffd__loop *l)
{
	size_t n = l->ctx->hp_chunks;
	uintptr_t a;

	l->chunks = calloc(n, sizeof(*l->chunks));
	if (!l->chunks)
		return -ENOMEM;
	l->hp_map_len = (n + 1) * LUFFD__HP_SIZE;
	l->hp_map = mmap(NULL, l->hp_map_len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (l->hp_map == MAP_FAILED) {
		l->hp_map = NULL;
		return -ENOMEM;
	}
	a = ((uintptr_t)l->hp_map + LUFFD__HP_SIZE - 1) &
	    ~(uintptr_t)(LUFFD__HP_SIZE - 1);
	l->hp_data = (unsigned char *)a;
	madvise(l->hp_data, n * LUFFD__HP_SIZE, MADV_HUGEPAGE);
	/* A move needs pages this process alone maps. */
	madvise(l->hp_map, l->hp_map_len, MADV_DONTFORK);
	return 0;
}

int luffd__loop_init(struct luffd__loop *l, struct luffd_ctx *ctx,
		     uint32_t cache_pages)
{
	uint32_t qd = ctx->queue_depth, ra = ctx->ra_pages;
	int err;

	l->ctx = ctx;
	l->uffd = l->evfd = -1;
	l->free_op = l->free_fault = LUFFD__NIL;
	l->pending.head = l->pending.tail = LUFFD__NIL;
	l->retry.head = l->retry.tail = LUFFD__NIL;
	l->orphans.head = l->orphans.tail = LUFFD__NIL;
	atomic_init(&l->stop, false);
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cv, NULL);
	pthread_mutex_init(&l->trace.lock, NULL);
	luffd__stats_init(&l->stats);

	err = luffd__uffd_open(ctx->open_mode, ctx->features, &l->uffd,
			       &l->opened_by, &l->ioctls);
	if (err)
		return err;
	l->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->evfd < 0)
		return -errno;

	err = luffd__cache_init(&l->cache, cache_pages, ctx->page_shift);
	if (err)
		return err;
	l->ops = calloc(qd, sizeof(*l->ops));
	l->op_slots = calloc((size_t)qd * ra, sizeof(*l->op_slots));
	l->op_iov = calloc((size_t)qd * ra, sizeof(*l->op_iov));
	l->op_waiters = calloc((size_t)qd * ra, sizeof(*l->op_waiters));
	if (!l->ops || !l->op_slots || !l->op_iov || !l->op_waiters)
		return -ENOMEM;
	for (uint32_t i = 0; i < qd; i++) {
		l->ops[i].slot = &l->op_slots[(size_t)i * ra];
		l->ops[i].iov_mem = &l->op_iov[(size_t)i * ra];
		l->ops[i].waiters = &l->op_waiters[(size_t)i * ra];
		l->ops[i].next_free = i + 1 < qd ? i + 1 : LUFFD__NIL;
	}
	l->free_op = 0;
	l->nops = qd;
	if (grow_faults(l))
		return -ENOMEM;

	/* One page of zeroes (write faults in holes) and one bounce page
	 * (the tail of a memory store). */
	l->zero_page = mmap(NULL, 2 * ctx->page_size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (l->zero_page == MAP_FAILED) {
		l->zero_page = NULL;
		return -ENOMEM;
	}
	l->bounce = l->zero_page + ctx->page_size;
	if (ctx->hp_chunks) {
		err = chunks_init(l);
		if (err)
			return err;
	}
	if (ctx->trace_format) {
		l->trace.buf = malloc(LUFFD__TRACE_BUF);
		if (!l->trace.buf)
			return -ENOMEM;
	}
	return 0;
}

int luffd__thread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	int err;

	/* The library's threads take no signals: they belong to the
	 * application's threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -err;
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
	luffd__loop_kick(l);
	pthread_join(l->thread, NULL);
	l->started = false;
}

void luffd__loop_fini(struct luffd__loop *l)
{
	bool busy = false;

	/* Only a read stuck past its timeout can still be in flight here
	 * (every other read completes before its faults' regions go).
	 * Closing the ring does not wait for it, and it may write into its
	 * cache pages later: leave the arena mapped (leaked) rather than
	 * let that write land in memory reused by someone else. */
	for (uint32_t i = 0; l->ops && i < l->nops; i++)
		if (l->ops[i].store) {
			busy = true;
			luffd_store_put(l->ops[i].store);
		}
	if (l->populating)
		busy = true; /* see loop_main() */
	if (busy) {
		pr_warn("destroying a context with a read stuck in flight: "
			"%zu bytes of cache left mapped\n",
			l->cache.data_len + l->hp_map_len);
		l->cache.data = NULL;
		l->hp_map = NULL;
	}
	if (l->ring_ok) {
		io_uring_queue_exit(&l->ring);
		ring_unmapped();
	}
	l->ring_ok = false;
	if (l->uffd >= 0)
		close(l->uffd);
	if (l->evfd >= 0)
		close(l->evfd);
	luffd__cache_fini(&l->cache);
	if (l->zero_page)
		munmap(l->zero_page, 2 * l->ctx->page_size);
	if (l->hp_map)
		munmap(l->hp_map, l->hp_map_len);
	free(l->chunks);
	l->chunks = NULL;
	l->hp_map = NULL;
	free(l->ops);
	free(l->op_slots);
	free(l->op_iov);
	free(l->op_waiters);
	free(l->faults);
	free(l->stash);
	/* Zombies still held by faults that were in flight at destroy (their
	 * threads were woken by closing the userfaultfd). */
	while (l->zombies) {
		struct luffd__region *z = l->zombies;

		l->zombies = z->next;
		luffd_store_put(z->store);
		free(z);
	}
	free(l->regions);
	free(l->trace.buf);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cv);
	pthread_mutex_destroy(&l->trace.lock);
	l->uffd = l->evfd = -1;
	l->ops = NULL;
	l->faults = NULL;
	l->regions = NULL;
	l->trace.buf = NULL;
	l->zero_page = NULL;
}
