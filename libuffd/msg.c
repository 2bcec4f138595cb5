/* SPDX-License-Identifier: MIT */
/*
 * Messages: the userfaultfd read in batches, in order, each fault given a
 * record and handed to fault.c, each event applied to the region table.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "blocktime.h"
#include "fault.h"
#include "guard.h"
#include "install.h"
#include "loop.h"
#include "msg.h"
#include "pool.h"
#include "record.h"
#include "region.h"
#include "writeback.h"

#define F(l, i) luffd__F(&(l)->rs, (i))
#define ORPHAN_NS (100 * 1000000ull)

/* A callback worker faulted on memory of this context (the pool now holds
 * the region for it): let it go on reading zeroes; the pool fails its
 * work and drops the zero page (see pool.c). */
static void caught(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);
	size_t ps = l->cfg->page_size;
	int err = luffd__pt_zero(l->uffd, f->addr, ps, 0);

	if (err && err != -EEXIST)
		luffd__pt_wake(l->uffd, f->addr, ps);
	/* Released at once: its interval ends where the blocktime's clock
	 * stands. */
	luffd__bt_forget(l->rs.bt, f->bt, f->t0);
	luffd__fault_free(&l->rs, fi);
}

/* A write-protect fault outside every region: its page is present, so
 * SIGBUS cannot be installed and a wake alone would have it fault again;
 * lift the protection (which wakes the writer). */
static void unexpected_wp(struct luffd__loop *l, uint32_t fi, uint64_t now)
{
	struct luffd__fault *f = F(l, fi);
	size_t ps = l->cfg->page_size;

	luffd__inc(l->stats.wp_unexpected, 1);
	pr_warn("write-protect fault at %#llx outside every region: "
		"un-protected\n", (unsigned long long)f->addr);
	if (luffd__pt_protect(l->uffd, f->addr, ps, false, 0))
		luffd__pt_wake(l->uffd, f->addr, ps);
	luffd__fault_drop_at(&l->rs, fi, now);
}

/* Serve fault fi, whose region may not be known yet. */
static void resolve(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);
	size_t ps = l->cfg->page_size;
	enum luffd__lookup how;
	uint64_t now;

	f->region = luffd__region_hold(&l->rtab, f->addr, &how);
	if (f->region) {
		/* A write-protect fault needs nothing from a store: even a
		 * callback worker's is served at once. */
		if (unlikely(!f->wp &&
			     luffd__pool_caught(l->cq->pool, f->tid, f->addr,
						f->region))) {
			caught(l, fi);
			return;
		}
		luffd__fault_serve(l, fi);
		return;
	}
	if (how == LUFFD__DYING) {
		/* Its unregister is under way and wakes the thread. */
		luffd__fault_drop(&l->rs, fi);
		return;
	}
	/*
	 * No region: the kernel hands fault messages out before events, so
	 * a fault in a range just moved by mremap() can arrive before the
	 * REMAP event that says where the range went.  Wait for the event a
	 * while; a fault that stays unknown (a mapping grown by mremap()
	 * past its region) gets SIGBUS rather than an endless wait.
	 */
	now = luffd__now_ns();
	if (now - f->t0 < ORPHAN_NS) {
		luffd__flist_push(&l->rs, &l->orphans, fi);
		return;
	}
	luffd__inc(l->stats.orphans, 1);
	if (f->wp) {
		unexpected_wp(l, fi, now);
		return;
	}
	if (!l->cfg->has_poison || luffd__pt_poison(l->uffd, f->addr, ps, 0))
		luffd__pt_wake(l->uffd, f->addr, ps);
	luffd__fault_drop_at(&l->rs, fi, now);
}

/* A fault message read at t0, its blocktime started in slot bt. */
static void new_fault(struct luffd__loop *l, const struct uffd_msg *m,
		      uint64_t t0, uint16_t bt)
{
	uint64_t addr = m->arg.pagefault.address &
			~(uint64_t)(l->cfg->page_size - 1);
	uint32_t fi = luffd__fault_alloc(&l->rs);

	if (fi == LUFFD__NIL) {
		/* Out of memory for bookkeeping: the thread is woken and
		 * faults again, by which time memory may have been freed.
		 * The retry is a fault of its own: this one ends here. */
		luffd__pt_wake(l->uffd, addr, l->cfg->page_size);
		luffd__bt_end(l->rs.bt, bt, t0);
		return;
	}
	*F(l, fi) = (struct luffd__fault){
		.addr = addr,
		.t0 = t0,
		.tid = m->arg.pagefault.feat.ptid,
		.next = LUFFD__NIL,
		.bt = bt,
		.write = (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0,
		.wp = (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) != 0,
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
		luffd__region_unmapped(&l->rtab, m->arg.remove.start,
				       m->arg.remove.end, t_read);
		luffd__push_pieces(l);
		break;
	case UFFD_EVENT_REMAP:
		luffd__inc(l->stats.ev_remap, 1);
		luffd__region_moved(&l->rtab, m->arg.remap.from,
				    m->arg.remap.to, m->arg.remap.len, t_read);
		luffd__push_pieces(l);
		break;
	default:
		break;
	}
}

static void one(struct luffd__loop *l, const struct uffd_msg *m, uint64_t t,
		uint16_t bt)
{
	if (m->event == UFFD_EVENT_PAGEFAULT)
		new_fault(l, m, t, bt);
	else
		event(l, m, t);
	/* Reads answered at once (the page cache, a callback) are served
	 * now, before the next message. */
	if (luffd__cq_ready(l->cq))
		luffd__fault_completions(l);
}

/*
 * The faults among messages m[0..n), read at t, start blocking their
 * threads: all of them before any is served, so that a fault served at
 * once (from memory, the cache) cannot end before the others of its
 * batch have started, which would hide the time they were all blocked.
 * bt[i] gets message i's place in the blocktime.
 */
static void start_faults(struct luffd__loop *l, const struct uffd_msg *m,
			 size_t n, uint64_t t, uint16_t *bt)
{
	uint32_t tids[LUFFD__MSG_BATCH];
	uint16_t slots[LUFFD__MSG_BATCH];
	size_t k = 0;

	if (!n)
		return; /* (and gcc -O2 with ASan cannot tell tids is set) */
	for (size_t i = 0; i < n; i++)
		if (m[i].event == UFFD_EVENT_PAGEFAULT)
			tids[k++] = m[i].arg.pagefault.feat.ptid;
	luffd__bt_start(l->rs.bt, tids, slots, k, t);
	k = 0;
	for (size_t i = 0; i < n; i++)
		bt[i] = m[i].event == UFFD_EVENT_PAGEFAULT ? slots[k++]
							   : LUFFD__BT_NONE;
}

/* Serve what the guard stashed (older than anything still queued in the
 * kernel). */
static void unstash(struct luffd__loop *l)
{
	struct luffd__stashed e;

	for (;;) {
		uint16_t bt;
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
		start_faults(l, &e.m, 1, e.t, &bt);
		one(l, &e.m, e.t, bt);
	}
}

int luffd__msg_drain(struct luffd__loop *l)
{
	uint16_t bt[LUFFD__MSG_BATCH];
	int total = 0;

	for (;;) {
		ssize_t n;
		uint64_t t0;
		size_t cnt;

		if (unlikely(atomic_load_explicit(&l->stash_n,
						  memory_order_acquire)))
			unstash(l);
		/* Before the read: munmap() can return, and a new region
		 * take the range, as soon as the kernel has handed out the
		 * UNMAP message (see region.c). */
		t0 = luffd__now_ns();
		n = read(l->uffd, l->msgs, sizeof(l->msgs));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break; /* EAGAIN: drained */
		}
		cnt = (size_t)n / sizeof(l->msgs[0]);
		/* Cache pages that a write-back made stale go before any
		 * fault read after it is served (writeback.c). */
		luffd__wb_inval_take(l);
		start_faults(l, l->msgs, cnt, t0, bt);
		/* In order: an event changes how the faults after it
		 * resolve. */
		for (size_t i = 0; i < cnt; i++)
			one(l, &l->msgs[i], t0, bt[i]);
		total += (int)cnt;
		/* A short batch emptied the queue; a message queued since
		 * re-arms the poll. */
		if (cnt < LUFFD__MSG_BATCH)
			break;
	}
	return total;
}

void luffd__msg_orphans(struct luffd__loop *l)
{
	uint32_t i = luffd__flist_take(&l->orphans), next;

	for (; i != LUFFD__NIL; i = next) {
		next = F(l, i)->next;
		F(l, i)->next = LUFFD__NIL;
		resolve(l, i);
	}
}
