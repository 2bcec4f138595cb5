/* SPDX-License-Identifier: MIT */
/*
 * Read-ahead, read-around and install-ahead, after the kernel's own:
 * on-demand read-ahead with a mark that starts the next window, mmap
 * read-around paid for by the pages it brings in (mmap_miss), and
 * fault-around.
 */
#include <stdatomic.h>

#include "cache.h"
#include "evict.h"
#include "chunk.h"
#include "install.h"
#include "loop.h"
#include "policy.h"
#include "read.h"
#include "region.h"
#include "store.h"

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

/*
 * Fixed mode: always the setting.  Adaptive (the default), after the
 * kernel's on-demand read-ahead: a miss that continues the region's stream
 * doubles the last window, up to the setting; the first miss of a region
 * reads 4 pages; a miss right after 4 or more cached pages (another stream
 * in the same region) reads twice that run; any other miss is random
 * access and reads just its page.
 */
uint64_t luffd__ra_window(struct luffd__loop *l, struct luffd__region *r,
			  uint64_t pg)
{
	uint64_t max = l->cfg->ra_pages, w, hist = 0;

	if (!l->cfg->ra_adaptive)
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

uint32_t luffd__ra_read(struct luffd__loop *l, struct luffd__region *r,
			uint64_t pg, uint64_t n, uint32_t fi)
{
	uint32_t got = luffd__read_pages(l, r, pg, n, fi, 0);

	if (got)
		stream_update(r, pg, got, STREAM_FAULT);
	return got;
}

bool luffd__ra_at_mark(const struct luffd__loop *l,
		       const struct luffd__region *r, uint64_t pg)
{
	return pg == r->ra_mark && l->cfg->ra_adaptive;
}

/* A minor hit on the stream's mark: read the next window before the
 * stream needs it, so a sequential reader waits for no read. */
void luffd__ra_next_window(struct luffd__loop *l, struct luffd__region *r)
{
	uint64_t max = l->cfg->ra_pages, pg = r->ra_next;
	uint64_t w = 2 * (uint64_t)r->ra_win;
	uint32_t got;

	r->ra_mark = UINT64_MAX;
	if (pg >= (r->off + r->len) >> l->cfg->page_shift)
		return;
	w = luffd__chunk_clip(l, r, pg, w < max ? w : max);
	if (r->hp_on && w == 0)
		return;
	got = luffd__read_pages(l, r, pg, w, LUFFD__NIL, 0);
	if (got)
		stream_update(r, pg, got, STREAM_BACKGROUND);
}

/*
 * Every random miss counts one against the region (ra_miss), every page
 * served from the cache (a minor hit, or installed around one) one for
 * it, and past RA_LOTSAMISS a random miss reads its page alone.  Cached
 * pages bound the block.
 */
uint32_t luffd__ra_around(struct luffd__loop *l, struct luffd__region *r,
			  uint64_t pg, uint32_t fi)
{
	uint64_t w = l->cfg->ra_pages, first = r->off >> l->cfg->page_shift;
	uint64_t lo = pg & ~(w - 1), id = r->store->id, start = pg;
	uint32_t got;

	if (w & (w - 1)) /* not a power of two: no alignment */
		lo = pg - pg % w;
	if (lo < first)
		lo = first;
	while (start > lo &&
	       luffd__cache_find(&l->cache, id, start - 1) == LUFFD__NIL)
		start--;
	got = luffd__read_pages(l, r, start, lo + w - start, fi,
				(uint32_t)(pg - start));
	if (got)
		stream_update(r, start, got, STREAM_AROUND);
	return got;
}

bool luffd__ra_around_pays(const struct luffd__region *r)
{
	return r->ra_miss < RA_LOTSAMISS;
}

void luffd__ra_count_miss(struct luffd__region *r)
{
	if (r->ra_miss < RA_MISS_MAX)
		r->ra_miss++;
}

bool luffd__ra_take_chunk_credit(struct luffd__region *r)
{
	if (r->ra_credit < RA_CREDIT_CHUNK)
		return false;
	r->ra_credit -= RA_CREDIT_CHUNK;
	return true;
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
uint64_t luffd__install_ahead(struct luffd__loop *l, struct luffd__region *r,
			      uint64_t pg)
{
	struct luffd__cache *c = &l->cache;
	unsigned int shift = l->cfg->page_shift;
	size_t ps = l->cfg->page_size;
	uint64_t end = (r->off + r->len) >> shift, n = l->cfg->ia_pages;
	uint64_t first = pg + 1;
	struct luffd__run run = LUFFD__RUN(l->uffd, LUFFD__PT_DONTWAKE |
						 luffd__pt_mode(r->flags));
	bool around = false, trust_used;

	/* Adaptive: as far as the stream has earned (its last window), at
	 * least the kernel's fault-around (16 pages), at most the setting. */
	if (l->cfg->ra_adaptive && r->ra_win > IA_MIN && r->ra_win < n) {
		n = r->ra_win;
	} else if (l->cfg->ra_adaptive && r->ra_win <= IA_MIN &&
		   n >= IA_MIN) {
		around = true;
		first = pg & ~(uint64_t)(IA_MIN - 1);
		if (first < r->off >> shift)
			first = r->off >> shift;
		n = IA_MIN - (pg - first);
	}
	/* Under the resident limit, no further than the room left. */
	if (r->pst) {
		uint64_t room = luffd__evict_room(l, true);

		n = n < room ? n : room;
	}
	if (n <= 1 || luffd__region_dead(r))
		return 0;
	/* A cache page's "installed" bit says where it went only while the
	 * store has one mapping: with two, a page installed in one is still
	 * missing in the other. */
	trust_used = atomic_load_explicit(r->store->nregions,
					  memory_order_relaxed) <= 1;
	for (uint64_t p = first; p < pg + n && p < end; p++) {
		uint32_t slot;
		uint64_t dst;

		if (p == pg)
			continue;
		slot = luffd__cache_find(c, r->store->id, p);
		/* Like the kernel's fault-around, not the read-ahead mark:
		 * a real touch of it is what starts the next window. */
		if (slot == LUFFD__NIL ||
		    luffd__cache_state(c, slot) != LUFFD__SLOT_READY ||
		    p == r->ra_mark ||
		    (around && trust_used && luffd__cache_is_used(c, slot))) {
			if (around)
				continue;
			break;
		}
		dst = r->start + (p << shift) - r->off;
		/* Not into the stream's chunks: they go in whole. */
		if (r->hp_on && !(dst & (LUFFD__HP_SIZE - 1)) &&
		    luffd__chunk_find(l, r->store->id, p << shift) != LUFFD__NIL)
			break;
		luffd__run_add(&run, dst, luffd__cache_data(c, slot), ps);
		luffd__cache_used(c, slot);
	}
	luffd__run_flush(&run);
	luffd__inc(l->stats.installed_ahead, run.installed);
	return run.installed;
}

uint64_t luffd__ra_hit(struct luffd__loop *l, struct luffd__region *r,
		       uint64_t pg)
{
	uint64_t n;

	if (r->ra_miss)
		r->ra_miss--;
	else if (r->ra_credit < RA_CREDIT_MAX)
		r->ra_credit++;
	/* The pages ahead go in before the faulting one wakes its thread,
	 * or the thread races them to the next page.  Like the hit itself,
	 * each pays a random miss back (the kernel's fault-around does the
	 * same for mmap_miss). */
	n = luffd__install_ahead(l, r, pg);
	if (r->ra_miss >= n) {
		r->ra_miss -= (uint32_t)n;
	} else {
		uint64_t left = n - r->ra_miss;

		r->ra_miss = 0;
		r->ra_credit = r->ra_credit + left < RA_CREDIT_MAX ?
			r->ra_credit + (uint32_t)left : RA_CREDIT_MAX;
	}
	return n;
}
