/* SPDX-License-Identifier: MIT */
/*
 * Dirty tracking (luffd_dirty()): which pages of LUFFD_REGISTER_WP regions
 * were written, read from the page tables.  Every page libuffd installs in
 * such a region goes in write-protected, and a write lifts the protection
 * (the kernel's uffd-wp bit, through a WP fault the handler serves), so
 * "written since protected" is exactly "present and not write-protected":
 * PAGE_IS_PRESENT and PAGE_IS_WRITTEN to PAGEMAP_SCAN (Linux 6.7), or bits
 * 63 and 57 of each /proc/self/pagemap entry before it.  The ranges found
 * are protected again with UFFDIO_WRITEPROTECT.
 *
 * No lock against the handlers is needed.  A page found written and
 * protected again: a write before the protection is in its bytes (read
 * after the call), one after faults and leaves it written for the next
 * call.  A page found protected and written just after: its WP fault lifts
 * the protection, and the next call finds it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "compat.h"
#include "dirty.h"
#include "context.h"
#include "install.h"
#include "loop.h"
#include "prefetch.h"
#include "region.h"

/* Tests set it to take the read(2) path on a kernel with PAGEMAP_SCAN. */
bool luffd__dirty_no_scan;

/* Output entries per scan. */
#define DIRTY_VEC 256
/* pagemap entries read at a time (the fallback). */
#define DIRTY_PM 4096

struct scan {
	struct luffd_ctx *ctx;
	struct luffd_range *out;
	size_t n, got;
	bool keep;
	int err;
};

/* Report [start, end) (written pages) and protect them again, region by
 * region (each on its handler's userfaultfd).  False when out is full. */
static bool report(struct scan *sc, uint64_t start, uint64_t end)
{
	struct luffd_range *last = sc->got ? &sc->out[sc->got - 1] : NULL;

	if (last && last->addr + last->len == start) {
		last->len += end - start;
	} else {
		if (sc->got == sc->n)
			return false;
		sc->out[sc->got++] = (struct luffd_range){ start, end - start };
	}
	if (sc->keep)
		return true;
	while (start < end) {
		struct luffd__loop *l;
		struct luffd__region *r = luffd__hold_at(sc->ctx, start, &l);
		uint64_t stop;
		int err;

		if (!r) {
			start += sc->ctx->cfg.page_size; /* removed meanwhile */
			continue;
		}
		stop = r->start + r->len < end ? r->start + r->len : end;
		err = luffd__pt_protect(r->tab->uffd, start, stop - start,
					true, 0);
		luffd__region_put(r);
		if (err && !sc->err)
			sc->err = err;
		start = stop;
	}
	return true;
}

/* PAGEMAP_SCAN over [a, end): 0, 1 when out filled, or -errno (-ENOTTY,
 * -EINVAL: no such ioctl here).  wp: the kernel protects what it reports
 * (LUFFD_WP_ASYNC regions only), in the same walk. */
static int scan_ioctl(struct scan *sc, int pm, uint64_t a, uint64_t end,
		      bool wp)
{
	struct page_region vec[DIRTY_VEC];

	while (a < end) {
		/* No more than out can take: what the kernel protects must
		 * all be reported (one more when not: it may merge). */
		size_t room = sc->n - sc->got + (!wp && sc->got ? 1 : 0);

		if (!room)
			return 1;
		struct pm_scan_arg arg = {
			.size = sizeof(arg),
			.flags = wp ? PM_SCAN_WP_MATCHING |
					      PM_SCAN_CHECK_WPASYNC : 0,
			.start = a,
			.end = end,
			.vec = (uint64_t)(uintptr_t)vec,
			.vec_len = room < DIRTY_VEC ? room : DIRTY_VEC,
			.category_mask = PAGE_IS_PRESENT | PAGE_IS_WRITTEN,
			.return_mask = PAGE_IS_WRITTEN,
		};
		long k = ioctl(pm, PAGEMAP_SCAN, &arg);

		if (k < 0)
			return -errno;
		for (long i = 0; i < k; i++)
			if (!report(sc, vec[i].start, vec[i].end))
				return 1;
		if (arg.walk_end <= a)
			break; /* no progress: should not be */
		a = arg.walk_end;
	}
	return 0;
}

/* The same with plain reads of pagemap entries. */
static int scan_read(struct scan *sc, int pm, uint64_t a, uint64_t end)
{
	unsigned int shift = sc->ctx->cfg.page_shift;
	uint64_t e[DIRTY_PM], run = 0;
	bool in = false;

	while (a < end) {
		uint64_t npg = (end - a) >> shift;
		ssize_t got;

		npg = npg < DIRTY_PM ? npg : DIRTY_PM;
		got = pread(pm, e, npg * sizeof(e[0]),
			    (off_t)((a >> shift) * sizeof(e[0])));
		if (got <= 0)
			return got < 0 ? -errno : -EIO;
		npg = (uint64_t)got / sizeof(e[0]);
		for (uint64_t i = 0; i < npg; i++) {
			uint64_t at = a + (i << shift);
			bool w = (e[i] >> 63 & 1) && !(e[i] >> 57 & 1);

			if (w && !in) {
				run = at;
				in = true;
			} else if (!w && in) {
				in = false;
				if (!report(sc, run, at))
					return 1;
			}
		}
		a += npg << shift;
	}
	if (in && !report(sc, run, a))
		return 1;
	return 0;
}

ssize_t luffd__dirty_scan(struct luffd_ctx *ctx, uint64_t a, uint64_t end,
			  struct luffd_range *out, size_t n, bool keep)
{
	struct scan sc = { .ctx = ctx, .out = out, .n = n, .keep = keep };
	bool async;
	int err, pm;

	/* One open per call: a few microseconds against the scan itself. */
	pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pm < 0)
		return -errno;
	/* Asynchronous write tracking: the kernel reports and protects in
	 * one walk, atomically against writers. */
	async = (ctx->cfg.features & UFFD_FEATURE_WP_ASYNC) && !sc.keep &&
		!luffd__dirty_no_scan;
	if (async)
		sc.keep = true; /* report() need not protect */
	err = luffd__dirty_no_scan ? -ENOTTY
				   : scan_ioctl(&sc, pm, a, end, async);
	sc.keep = keep;
	/* No PAGEMAP_SCAN here (its first call fails, before anything is
	 * reported). */
	if (!sc.got &&
	    (err == -ENOTTY || err == -EINVAL || err == -EOPNOTSUPP))
		err = scan_read(&sc, pm, a, end);
	close(pm);
	/* Ranges reported were protected again: they are the caller's now,
	 * whatever failed after them (the rest is found next time). */
	if (sc.got)
		return (ssize_t)sc.got;
	return err < 0 ? err : sc.err;
}

ssize_t luffd_dirty(struct luffd_ctx *ctx, void *addr, size_t len,
		    struct luffd_range *out, size_t n, unsigned int flags)
{
	uint64_t a = (uint64_t)(uintptr_t)addr, end;
	int err;

	if (!out || !n || (flags & ~(unsigned int)LUFFD_DIRTY_KEEP))
		return -EINVAL;
	err = luffd__check_range(ctx, addr, len, &end);
	if (err)
		return err;
	/* Only write-tracked regions have a meaning for "written". */
	for (uint64_t at = a; at < end;) {
		struct luffd__loop *l;
		struct luffd__region *r = luffd__hold_at(ctx, at, &l);
		bool wp;

		if (!r)
			return -ENOENT;
		wp = (r->flags & LUFFD_REGISTER_WP) &&
		     (!(r->flags & LUFFD_REGISTER_WRITEBACK) ||
		      (flags & LUFFD_DIRTY_KEEP));
		at = r->start + r->len;
		luffd__region_put(r);
		if (!wp)
			return -EINVAL;
	}
	return luffd__dirty_scan(ctx, a, end, out, n,
				 flags & LUFFD_DIRTY_KEEP);
}
