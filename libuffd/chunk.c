/* SPDX-License-Identifier: MIT */
/*
 * Chunks: sequential streams moved into place 2 MiB at a time.
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
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "chunk.h"
#include "install.h"
#include "loop.h"
#include "read.h"
#include "record.h"
#include "store.h"

#define F(l, i) luffd__F(&(l)->rs, (i))

static inline unsigned char *chunk_data(struct luffd__loop *l, uint32_t i)
{
	return l->ch.data + ((size_t)i << LUFFD__HP_SHIFT);
}

/* The staging chunks: one 2 MiB-aligned mapping where the kernel puts a
 * transparent huge page under each chunk on its first write, and again
 * after each move takes it away.  Touched lazily, like the cache. */
int luffd__chunks_init(struct luffd__loop *l)
{
	size_t n = l->cfg->hp_chunks;
	uintptr_t a;

	if (!n)
		return 0;
	l->ch.c = calloc(n, sizeof(*l->ch.c));
	if (!l->ch.c)
		return -ENOMEM;
	l->ch.map_len = (n + 1) * LUFFD__HP_SIZE;
	l->ch.map = mmap(NULL, l->ch.map_len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (l->ch.map == MAP_FAILED) {
		l->ch.map = NULL;
		return -ENOMEM;
	}
	a = ((uintptr_t)l->ch.map + LUFFD__HP_SIZE - 1) &
	    ~(uintptr_t)(LUFFD__HP_SIZE - 1);
	l->ch.data = (unsigned char *)a;
	madvise(l->ch.data, n * LUFFD__HP_SIZE, MADV_HUGEPAGE);
	/* A move needs pages this process alone maps. */
	madvise(l->ch.map, l->ch.map_len, MADV_DONTFORK);
	return 0;
}

void luffd__chunks_fini(struct luffd__loop *l)
{
	if (l->ch.map)
		munmap(l->ch.map, l->ch.map_len);
	free(l->ch.c);
	l->ch.c = NULL;
	l->ch.map = NULL;
}

/* At most 16 chunks: a scan is cheaper than a hash. */
uint32_t luffd__chunk_find(struct luffd__loop *l, uint64_t id, uint64_t off)
{
	for (uint32_t i = 0; i < l->cfg->hp_chunks; i++) {
		const struct luffd__chunk *ch = &l->ch.c[i];

		if (ch->state != LUFFD__CHUNK_FREE && ch->off == off &&
		    ch->store_id == id)
			return i;
	}
	return LUFFD__NIL;
}

bool luffd__chunk_of(const struct luffd__region *r, uint64_t addr,
		     uint64_t *base, uint64_t *off)
{
	uint64_t b = addr & ~(LUFFD__HP_SIZE - 1);

	if (b < r->start)
		return false;
	*base = b;
	*off = r->off + (b - r->start);
	return true;
}

uint64_t luffd__chunk_clip(struct luffd__loop *l, struct luffd__region *r,
			   uint64_t pg, uint64_t n)
{
	uint64_t addr, lim;

	if (!r->hp_on)
		return n;
	addr = r->start + ((pg << l->cfg->page_shift) - r->off);
	lim = (LUFFD__HP_SIZE - (addr & (LUFFD__HP_SIZE - 1))) >>
	      l->cfg->page_shift;
	return n < lim ? n : lim;
}

/* A chunk to read into: a free one, preferably with its memory in place
 * (populated, or being populated), else the one ready longest (evicting
 * it); LUFFD__NIL when every chunk is being read.  A ready chunk is data
 * read ahead that a fault has not reached yet: it goes only when nothing
 * is free. */
static uint32_t chunk_alloc(struct luffd__loop *l)
{
	uint32_t oldest = LUFFD__NIL, free_best = LUFFD__NIL;

	for (uint32_t i = 0; i < l->cfg->hp_chunks; i++) {
		const struct luffd__chunk *ch = &l->ch.c[i];

		if (ch->state == LUFFD__CHUNK_FREE) {
			if (ch->mem == LUFFD__CHUNK_MEM_READY)
				return i;
			if (free_best == LUFFD__NIL ||
			    ch->mem > l->ch.c[free_best].mem)
				free_best = i;
		} else if (ch->state == LUFFD__CHUNK_READY &&
			   (oldest == LUFFD__NIL ||
			    ch->tick < l->ch.c[oldest].tick)) {
			oldest = i;
		}
	}
	return free_best != LUFFD__NIL ? free_best : oldest;
}

/* Read the chunk of r at mapping address base (store offset off), with
 * fault fi (or LUFFD__NIL) waiting for it.  False when no chunk or read
 * is free. */
static bool chunk_read(struct luffd__loop *l, struct luffd__region *r,
		       uint64_t base, uint64_t off, uint32_t fi, bool whole)
{
	struct luffd_store *s = r->store;
	unsigned int shift = l->cfg->page_shift;
	size_t ps = l->cfg->page_size;
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
	op = luffd__op_begin(l, r, off, (uint32_t)n);
	if (!op)
		return false;
	ch = &l->ch.c[hc];
	ch->store_id = s->id;
	ch->off = off;
	ch->state = LUFFD__CHUNK_INFLIGHT;
	ch->whole = whole;
	ch->avail = 0;
	ch->op = (uint32_t)(op - l->rd.ops);
	op->chunk = hc;
	op->iov_mem[0].iov_base = chunk_data(l, hc);
	op->iov_mem[0].iov_len = n << shift;
	op->niov = 1;
	op->had_waiter = fi != LUFFD__NIL;
	if (fi != LUFFD__NIL) {
		F(l, fi)->waited = 1;
		F(l, fi)->next = LUFFD__NIL;
		op->waiters[0] = fi;
	}
	luffd__inc(l->stats.reads, 1);
	luffd__inc(l->stats.readahead_pages, fi == LUFFD__NIL ? n : n - 1);
	/* Read-ahead goes to an io_uring worker, even when cached: its
	 * 2 MiB copy then runs beside the handler, which stays free to
	 * serve faults (a cold read would also start its I/O, and may
	 * block, on whichever thread tries it first).  Cold data may come
	 * straight from the device (see LUFFD_FILE_CACHED). */
	luffd__op_submit(l, op, fi == LUFFD__NIL ? LUFFD_PRIO_READAHEAD
						 : LUFFD_PRIO_DEMAND,
			 LUFFD__REQ_BULK |
			 (fi == LUFFD__NIL ? LUFFD__REQ_OFFLOAD : 0));
	return true;
}

bool luffd__chunk_read_whole(struct luffd__loop *l, struct luffd__region *r,
			     uint64_t base, uint64_t off, uint32_t fi)
{
	return chunk_read(l, r, base, off, fi, true);
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

	if (l->ch.c[hc].mem != LUFFD__CHUNK_MEM_NONE)
		return;
	sqe = luffd__sqe(&l->ring);
	if (!sqe)
		return;
	io_uring_prep_madvise(sqe, chunk_data(l, hc), LUFFD__HP_SIZE,
			      MADV_POPULATE_WRITE);
	io_uring_sqe_set_data64(sqe, LUFFD__TAG_POPULATE + 2 * (uint64_t)hc);
	l->ch.c[hc].mem = LUFFD__CHUNK_MEM_FILLING;
	l->ch.populating++;
#else
	(void)l;
	(void)hc;
#endif
}

void luffd__chunk_populated(struct luffd__loop *l, uint32_t hc, int res)
{
	l->ch.populating--;
	/* A read may have filled it meanwhile, and a move emptied it. */
	if (l->ch.c[hc].mem == LUFFD__CHUNK_MEM_FILLING)
		l->ch.c[hc].mem = res < 0 ? LUFFD__CHUNK_MEM_NONE
					  : LUFFD__CHUNK_MEM_READY;
}

/* Chunk hc holds nothing more: free, and its memory repopulated. */
static void chunk_empty(struct luffd__loop *l, uint32_t hc)
{
	l->ch.c[hc].state = LUFFD__CHUNK_FREE;
	l->ch.c[hc].avail = 0;
	chunk_populate(l, hc);
	/* Now, not at the loop's next turn: the point is to overlap. */
	io_uring_submit(&l->ring);
}

/*
 * Move pages [idx, avail) of chunk hc to the block at base, waking the
 * threads waiting there.  *done: the pages from idx on that are in place
 * now (moved or present) before any error.  The chunk keeps [0, idx), or
 * nothing after an error.
 */
static int chunk_move(struct luffd__loop *l, uint32_t hc, uint64_t base,
		      uint32_t idx, uint64_t *done)
{
	struct luffd__chunk *ch = &l->ch.c[hc];
	unsigned int shift = l->cfg->page_shift;
	uint64_t dst = base + ((uint64_t)idx << shift);
	uint64_t src = (uint64_t)(uintptr_t)chunk_data(l, hc) +
		       ((uint64_t)idx << shift);
	struct luffd__moved mv;
	int err;

	err = luffd__pt_move(l->uffd, dst, src,
			     (uint64_t)(ch->avail - idx) << shift, shift, &mv);
	*done = mv.done;
	if (mv.present)
		luffd__inc(l->stats.eexist, 1);
	luffd__inc(l->stats.moved_pages, mv.moved);
	luffd__inc(l->stats.installed_ahead, mv.moved > 1 ? mv.moved - 1 : 0);
	ch->avail = err ? 0 : (uint16_t)idx;
	if (mv.moved)
		ch->mem = LUFFD__CHUNK_MEM_NONE; /* holes now */
	if (!ch->avail)
		chunk_empty(l, hc);
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
	struct luffd__chunk *ch = &l->ch.c[hc];
	uint32_t idx = (uint32_t)((f->addr - base) >> l->cfg->page_shift);
	uint32_t from = ch->whole ? 0 : idx;
	uint64_t done;
	int err;

	*lo = *hi = 0;
	if (idx >= ch->avail)
		return false;
	/* Staged for another, longer mapping of the store: a move would run
	 * past this one's end (or into the mapping after it). */
	if (base < f->region->start ||
	    base + ((uint64_t)ch->avail << l->cfg->page_shift) >
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
	luffd__fault_record(&l->rs, fi, f->waited ? LUFFD_MAJOR : cls, 0);
	return true;
}

/* Keep the stream's read-ahead depth: chunks after the one at off (at
 * mapping address base), all but two of the staging chunks ahead of it
 * (one being consumed, one being repopulated).  Cold data needs the
 * depth: with 4 chunks ahead a cold stream caught up with its reads. */
static void chunk_ahead(struct luffd__loop *l, struct luffd__region *r,
			uint64_t base, uint64_t off)
{
	uint64_t nch = l->cfg->hp_chunks;
	uint64_t depth = nch > 3 ? nch - 2 : 1;
	uint64_t end = r->start + r->len;

	if (r->hp_next <= off || r->hp_next > off + (depth + 1) * LUFFD__HP_SIZE)
		r->hp_next = off + LUFFD__HP_SIZE;
	while (r->hp_next <= off + depth * LUFFD__HP_SIZE) {
		uint64_t b = base + (r->hp_next - off);

		if (b >= end || r->hp_next >= r->store->size)
			break;
		if (luffd__chunk_find(l, r->store->id, r->hp_next) ==
			    LUFFD__NIL &&
		    !chunk_read(l, r, b, r->hp_next, LUFFD__NIL, false))
			break;
		r->hp_next += LUFFD__HP_SIZE;
	}
}

void luffd__chunk_kick(struct luffd__loop *l, struct luffd__region *r)
{
	uint64_t next = r->ra_next << l->cfg->page_shift;
	uint64_t base = (r->start + (next - r->off) + LUFFD__HP_SIZE - 1) &
			~(LUFFD__HP_SIZE - 1);
	uint64_t off = r->off + (base - r->start);

	if (base >= r->start + r->len || off >= r->store->size)
		return;
	for (uint32_t i = 0; i < l->cfg->hp_chunks; i++)
		if (l->ch.c[i].state == LUFFD__CHUNK_FREE)
			chunk_populate(l, i);
	io_uring_submit(&l->ring); /* all of them in one call, now */
	r->hp_on = true;
	r->hp_last = off - LUFFD__HP_SIZE; /* a fault at off reads it */
	r->hp_next = off;
	/* The chunk at off and depth - 1 after it. */
	chunk_ahead(l, r, base - LUFFD__HP_SIZE, off - LUFFD__HP_SIZE);
}

bool luffd__chunk_fault(struct luffd__loop *l, uint32_t fi)
{
	struct luffd__fault *f = F(l, fi);
	struct luffd__region *r = f->region;
	struct luffd__op *op;
	uint64_t base, off, lo, hi;
	uint32_t hc;
	bool ok;

	if (!luffd__chunk_of(r, f->addr, &base, &off))
		return false;
	hc = luffd__chunk_find(l, r->store->id, off);
	if (hc == LUFFD__NIL) {
		/* The stream's next chunk was not read ahead (every chunk
		 * was busy): read it now. */
		if (!r->hp_on || off != r->hp_last + LUFFD__HP_SIZE ||
		    off >= r->store->size)
			return false;
		r->hp_last = off;
		ok = chunk_read(l, r, base, off, fi, false);
		if (ok)
			chunk_ahead(l, r, base, off);
		return ok;
	}
	if (l->ch.c[hc].state == LUFFD__CHUNK_INFLIGHT) {
		op = &l->rd.ops[l->ch.c[hc].op];
		luffd__read_join(l, fi, op, &op->waiters[0]);
		return true;
	}
	/* Ready.  The thread is woken by the move, before the read-ahead;
	 * the extra hold keeps r once the fault (and its hold) is gone. */
	luffd__region_hold_again(r);
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
	uint32_t *best = w, i;

	for (uint32_t *p = w; *p != LUFFD__NIL; p = &F(l, *p)->next)
		if (F(l, *p)->addr < F(l, *best)->addr)
			best = p;
	i = *best;
	*best = F(l, i)->next;
	F(l, i)->next = LUFFD__NIL;
	return i;
}

/* The waiters are served lowest page first, so one move usually wakes
 * them all. */
void luffd__chunk_complete(struct luffd__loop *l, struct luffd__op *op,
			   uint64_t total, int err, uint32_t *rest)
{
	uint32_t hc = op->chunk, w;
	struct luffd__chunk *ch = &l->ch.c[hc];
	unsigned int shift = l->cfg->page_shift;
	size_t ps = l->cfg->page_size;
	uint64_t last_base = 0, lo = 0, hi = 0;

	*rest = LUFFD__NIL;
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
	ch->tick = ++l->ch.tick;
	w = op->waiters[0];
	op->waiters[0] = LUFFD__NIL;
	while (w != LUFFD__NIL) {
		uint32_t fi = pop_lowest(l, &w);
		struct luffd__fault *f = F(l, fi);
		uint64_t base, off;

		if (luffd__fault_drop_if_dead(&l->rs, fi))
			continue;
		if (luffd__chunk_of(f->region, f->addr, &base, &off) &&
		    off == ch->off) {
			uint64_t idx = (f->addr - base) >> shift;

			if (base == last_base && idx >= lo && idx < hi) {
				/* Moved in (and woken) with a lower
				 * waiter's page. */
				luffd__fault_record(&l->rs, fi, LUFFD_MAJOR, 0);
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
		f->next = *rest;
		*rest = fi;
	}
}

void luffd__chunk_late(struct luffd__loop *l, struct luffd__op *op)
{
	struct luffd__chunk *ch = &l->ch.c[op->chunk];

	/* Whatever the read wrote there is dropped; the memory is in. */
	ch->state = LUFFD__CHUNK_FREE;
	ch->avail = 0;
	ch->mem = LUFFD__CHUNK_MEM_READY;
}
