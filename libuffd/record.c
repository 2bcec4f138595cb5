/* SPDX-License-Identifier: MIT */
/* Fault records, their lists, and a fault's outcome. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "blocktime.h"
#include "install.h"
#include "opts.h"
#include "record.h"
#include "region.h"

#define FAULTS_INIT 256

static int grow(struct luffd__records *rs)
{
	uint32_t n = rs->n ? rs->n * 2 : FAULTS_INIT;
	struct luffd__fault *p;

	if (n > UINT32_MAX / 2)
		return -ENOMEM;
	p = realloc(rs->f, (size_t)n * sizeof(*p));
	if (!p)
		return -ENOMEM;
	rs->f = p;
	for (uint32_t i = rs->n; i < n; i++)
		p[i].next = i + 1 < n ? i + 1 : rs->free;
	rs->free = rs->n;
	rs->n = n;
	return 0;
}

int luffd__records_init(struct luffd__records *rs, int uffd,
			const struct luffd__cfg *cfg, struct luffd__stats *st,
			struct luffd__trace *tr, struct luffd__bt *bt)
{
	rs->bt = bt;
	rs->f = NULL;
	rs->n = 0;
	rs->free = LUFFD__NIL;
	luffd__flist_init(&rs->retry);
	rs->uffd = uffd;
	rs->cfg = cfg;
	rs->stats = st;
	rs->trace = tr;
	/* Tells a write-protect fault on a page still protected from one
	 * whose page another thread's write un-protected first (see
	 * luffd__serve_unprotect()); without it, both count. */
	rs->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	rs->wp_recent = calloc(LUFFD__WP_RECENT, sizeof(*rs->wp_recent));
	if (!rs->wp_recent)
		return -ENOMEM;
	return grow(rs);
}

void luffd__records_fini(struct luffd__records *rs)
{
	free(rs->f);
	rs->f = NULL;
	free(rs->wp_recent);
	rs->wp_recent = NULL;
	if (rs->pagemap >= 0)
		close(rs->pagemap);
	rs->pagemap = -1;
}

uint32_t luffd__fault_alloc(struct luffd__records *rs)
{
	uint32_t i;

	if (rs->free == LUFFD__NIL && grow(rs))
		return LUFFD__NIL;
	i = rs->free;
	rs->free = rs->f[i].next;
	rs->f[i].next = LUFFD__NIL;
	return i;
}

void luffd__fault_free(struct luffd__records *rs, uint32_t i)
{
	rs->f[i].next = rs->free;
	rs->free = i;
}

void luffd__fault_drop_at(struct luffd__records *rs, uint32_t i,
			  uint64_t now)
{
	luffd__bt_end(rs->bt, rs->f[i].bt, now);
	if (rs->f[i].region)
		luffd__region_put(rs->f[i].region);
	luffd__fault_free(rs, i);
}

void luffd__fault_drop(struct luffd__records *rs, uint32_t i)
{
	/* Faults are dropped when their region goes: no time is at hand
	 * on that path, and it is not the fault path. */
	luffd__fault_drop_at(rs, i, rs->f[i].bt != LUFFD__BT_NONE ?
					    luffd__now_ns() : 0);
}

void luffd__fault_record(struct luffd__records *rs, uint32_t i,
			 enum luffd_class cls, int err)
{
	struct luffd__fault *f = &rs->f[i];
	uint64_t now = luffd__now_ns(), lat = now - f->t0;

	luffd__stats_record(rs->stats, cls, lat);
	if (luffd__trace_on(rs->trace)) {
		struct luffd_fault rec = {
			.time_ns = f->t0,
			.latency_ns = lat,
			.addr = f->addr,
			.tid = f->tid,
			.write = f->write,
			.cls = (uint8_t)cls,
			.error = err,
		};

		luffd__trace_emit(rs->trace, rs->stats, &rec);
	}
	luffd__fault_drop_at(rs, i, now);
}

void luffd__flist_push(struct luffd__records *rs, struct luffd__flist *q,
		       uint32_t i)
{
	rs->f[i].next = LUFFD__NIL;
	if (q->head == LUFFD__NIL)
		q->head = i;
	else
		rs->f[q->tail].next = i;
	q->tail = i;
}

/* ------------------------------------------------------------------------
 * Outcomes
 * ---------------------------------------------------------------------- */

bool luffd__fault_drop_if_dead(struct luffd__records *rs, uint32_t i)
{
	if (likely(!luffd__region_dead(rs->f[i].region)))
		return false;
	luffd__fault_drop(rs, i);
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
static void finish(struct luffd__records *rs, uint32_t i, int ret,
		   enum luffd_class cls, int err)
{
	struct luffd__fault *f = &rs->f[i];
	size_t ps = rs->cfg->page_size;

	if (ret == -EEXIST) {
		luffd__inc(rs->stats->eexist, 1);
		luffd__pt_wake(rs->uffd, f->addr, ps);
		ret = 0;
	}
	if (ret == -EAGAIN) {
		luffd__inc(rs->stats->eagain, 1);
		luffd__flist_push(rs, &rs->retry, i);
		return;
	}
	if (ret) {
		luffd__pt_wake(rs->uffd, f->addr, ps);
		cls = LUFFD_ERROR;
		err = ret;
	}
	luffd__fault_record(rs, i, cls, err);
}

/*
 * The install mode for fault f's own page.  In a write-back region a write
 * that finds the page missing gets it writable at once: the page is dirty
 * from that write on anyway, and the write fault that a protected page
 * would raise next costs as much as the first fault.  (Write-back reads
 * "written" from the page tables, so the page is written back all the
 * same.)
 */
static unsigned int fault_mode(const struct luffd__fault *f)
{
	unsigned int fl = f->region->flags;

	if (f->write && (fl & LUFFD_REGISTER_WRITEBACK))
		return 0;
	return luffd__pt_mode(fl);
}

void luffd__serve_copy(struct luffd__records *rs, uint32_t i, const void *src,
		       enum luffd_class cls)
{
	if (luffd__fault_drop_if_dead(rs, i))
		return;
	if (rs->f[i].waited)
		cls = LUFFD_MAJOR;
	finish(rs, i, luffd__pt_copy(rs->uffd, rs->f[i].addr, src,
				     rs->cfg->page_size, fault_mode(&rs->f[i])),
	       cls, 0);
}

void luffd__serve_zero(struct luffd__records *rs, uint32_t i)
{
	struct luffd__fault *f = &rs->f[i];
	size_t ps = rs->cfg->page_size;
	int ret;

	if (luffd__fault_drop_if_dead(rs, i))
		return;
	/* A write would fault again on the shared zero page to copy it:
	 * install a private zeroed page for writes in one go.  A
	 * write-tracked region gets private zeroed pages anyway (see
	 * install.h). */
	if (fault_mode(f) & LUFFD__PT_WP)
		ret = luffd__pt_zero(rs->uffd, f->addr, ps, LUFFD__PT_WP);
	else if (f->write)
		ret = luffd__pt_copy(rs->uffd, f->addr, rs->zero_page, ps, 0);
	else
		ret = luffd__pt_zero(rs->uffd, f->addr, ps, 0);
	finish(rs, i, ret, LUFFD_ZERO, 0);
}

/*
 * The page cannot be served: SIGBUS in the faulting thread, as mmap does
 * past the end of a file.  UFFDIO_POISON makes the retried access raise
 * SIGBUS (BUS_ADRERR) and keeps doing so until the page is zapped.  Without
 * it, a SIGBUS sent to the thread interrupts its wait (si_code SI_TKILL);
 * without a thread id either, zeroes are the only way to unblock it.
 */
void luffd__serve_error(struct luffd__records *rs, uint32_t i, int err)
{
	struct luffd__fault *f = &rs->f[i];
	size_t ps = rs->cfg->page_size;
	int ret;

	if (luffd__fault_drop_if_dead(rs, i))
		return;
	if (rs->cfg->has_poison) {
		ret = luffd__pt_poison(rs->uffd, f->addr, ps, 0);
	} else if (f->tid) {
		ret = (int)syscall(SYS_tgkill, getpid(), (pid_t)f->tid, SIGBUS);
		ret = ret < 0 ? -errno : 0;
	} else {
		ret = luffd__pt_zero(rs->uffd, f->addr, ps, fault_mode(f));
	}
	if (ret == -EAGAIN) {
		luffd__inc(rs->stats->eagain, 1);
		luffd__flist_push(rs, &rs->retry, i);
		return;
	}
	if (ret)
		luffd__pt_wake(rs->uffd, f->addr, ps);
	luffd__fault_record(rs, i, LUFFD_ERROR, err);
}

/*
 * The first write to a write-protected page: the page is present, so
 * lifting the protection is the whole service, and it wakes the writer.
 * Nothing else may write-protect these pages meanwhile, so an error here
 * is the range going away (as for a copy) or -EAGAIN.
 *
 * Two threads writing one clean page at once raise a fault each.  Only
 * this thread lifts protections in the region, so a page that is no
 * longer protected was un-protected for an earlier message: that write is
 * counted already, this one is only woken (wp_joined), so wp_faults stays
 * the number of pages written.  Asking pagemap costs a system call
 * (about 1 us, a fifth of the fault), so it is asked only about a page
 * un-protected before, as wp_recent remembers: a second writer comes
 * within microseconds, and is missed (counted twice) only if a page of
 * the same slot was un-protected in between.  (A page dropped meanwhile
 * is not protected either: woken, its thread faults on the missing page.)
 */
void luffd__serve_unprotect(struct luffd__records *rs, uint32_t i)
{
	struct luffd__fault *f = &rs->f[i];
	unsigned int shift = rs->cfg->page_shift;
	uint64_t *seen = &rs->wp_recent[(f->addr >> shift) &
					(LUFFD__WP_RECENT - 1)];
	int ret;

	if (luffd__fault_drop_if_dead(rs, i))
		return;
	if (*seen == f->addr && rs->pagemap >= 0 &&
	    luffd__pt_protected(rs->pagemap, f->addr, shift) == 0) {
		luffd__inc(rs->stats->wp_joined, 1);
		luffd__pt_wake(rs->uffd, f->addr, rs->cfg->page_size);
		luffd__fault_drop(rs, i);
		return;
	}
	ret = luffd__pt_protect(rs->uffd, f->addr, rs->cfg->page_size, false,
				0);
	if (!ret)
		*seen = f->addr;
	finish(rs, i, ret, LUFFD_WP, 0);
}
