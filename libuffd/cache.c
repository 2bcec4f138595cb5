/* SPDX-License-Identifier: MIT */
/*
 * The page cache: a fixed number of page slots, allocated once, keyed by
 * (store id, page index).
 *
 * Bookkeeping is kept to 13-15 bytes a page (it was 50):
 * - A slot is 12 bytes: one 64-bit key (page index, store table index,
 *   state) and a 32-bit hash link, which threads the free list when the
 *   slot is free.  What a read in flight needs (its waiting faults, the
 *   read itself) lives with the read (loop.c), not in every slot.
 * - Hash buckets: a power of two between a half and a quarter of the
 *   slots, so 1-2 bytes a slot and chains of 2-4 when full.
 * - Replacement is two bitmaps over the slots: READY pages already
 *   installed (which go first) and READY pages nobody has used yet (read
 *   ahead: they outlive the others).  Each is searched in slot order from
 *   a rotating hand, which, since slots are handed out from the hand too,
 *   is close to the order they were filled in.
 * - Slots name their store by an index into a small table of the stores
 *   with pages here, which grows as needed.  Store ids are never reused
 *   and an entry goes only when its last page does, so a freed store's
 *   pages can never be found by another store, even one given the same
 *   index later.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cache.h"

#define KEY_STATE 3ull
#define SIDX_SHIFT 2
#define PG_SHIFT (SIDX_SHIFT + LUFFD__CACHE_SIDX_BITS)
#define SIDX_MAX (1u << LUFFD__CACHE_SIDX_BITS)
#define STORES_MIN 64

_Static_assert(sizeof(struct luffd__slot) == 12, "12-byte slots");
_Static_assert(PG_SHIFT + LUFFD__CACHE_PG_BITS == 64, "key layout");

static uint64_t mkkey(uint32_t sidx, uint64_t pg)
{
	return pg << PG_SHIFT | (uint64_t)sidx << SIDX_SHIFT;
}

static uint32_t key_sidx(uint64_t key)
{
	return (uint32_t)(key >> SIDX_SHIFT) & (SIDX_MAX - 1);
}

/* Fibonacci hashing: the top bits of the product. */
static uint32_t hash_bits(uint64_t v, uint32_t n)
{
	return (uint32_t)((v * 0x9e3779b97f4a7c15ull) >> 32) & (n - 1);
}

static uint32_t slot_bucket(const struct luffd__cache *c, uint64_t key)
{
	return hash_bits((key & ~KEY_STATE) ^ (key >> 40), c->nbuckets);
}

static uint32_t store_bucket(const struct luffd__cache *c, uint64_t id)
{
	return hash_bits(id, c->nstores_cap);
}

static void set_state(struct luffd__slot *s, unsigned int st)
{
	s->key = (s->key & ~KEY_STATE) | st;
}

static void bit_set(uint64_t *map, uint32_t i)
{
	map[i >> 6] |= 1ull << (i & 63);
}

static void bit_clear(uint64_t *map, uint32_t i)
{
	map[i >> 6] &= ~(1ull << (i & 63));
}

/* The first set bit at or after `from`, wrapping; LUFFD__NIL if none. */
static uint32_t bit_next(const uint64_t *map, uint32_t nbits, uint32_t from)
{
	uint32_t nwords = (nbits + 63) / 64, w = from >> 6;
	uint64_t word = map[w] & (~0ull << (from & 63));

	for (uint32_t k = 0; k <= nwords; k++) {
		if (word)
			return w * 64 + (uint32_t)__builtin_ctzll(word);
		w = w + 1 < nwords ? w + 1 : 0;
		word = map[w];
	}
	return LUFFD__NIL;
}

static uint32_t store_find(struct luffd__cache *c, uint64_t id)
{
	uint32_t i;

	if (c->memo_sidx != LUFFD__NIL && c->memo_id == id)
		return c->memo_sidx;
	for (i = c->store_buckets[store_bucket(c, id)]; i != LUFFD__NIL;
	     i = c->stores[i].hnext)
		if (c->stores[i].id == id) {
			c->memo_id = id;
			c->memo_sidx = i;
			return i;
		}
	return LUFFD__NIL;
}

/* Entries [from, cap) onto the free list, lowest first. */
static void stores_free_range(struct luffd__cache *c, uint32_t from)
{
	for (uint32_t i = c->nstores_cap; i-- > from;) {
		c->stores[i].pages = 0;
		c->stores[i].inflight = 0;
		c->stores[i].hnext = c->store_free;
		c->store_free = i;
	}
}

/*
 * Double the store table.  It grows only when more stores than ever
 * before have pages here at once, so this allocation is paid once per
 * doubling, not per fault.
 */
static int stores_grow(struct luffd__cache *c)
{
	uint32_t cap = c->nstores_cap * 2, old = c->nstores_cap;
	struct luffd__cache_store *st;
	uint32_t *b;

	if (cap > c->nstores_max)
		return -ENOSPC;
	st = realloc(c->stores, sizeof(*st) * cap);
	if (!st)
		return -ENOMEM;
	c->stores = st;
	b = malloc(sizeof(*b) * cap);
	if (!b)
		return -ENOMEM; /* the larger array stays; harmless */
	free(c->store_buckets);
	c->store_buckets = b;
	memset(b, 0xff, sizeof(*b) * cap);
	c->nstores_cap = cap;
	/* Entries keep their index (slots refer to it); rehash them.  The
	 * table grows only when full: every old entry is in use. */
	for (uint32_t i = 0; i < old; i++) {
		uint32_t h = store_bucket(c, st[i].id);

		st[i].hnext = b[h];
		b[h] = i;
	}
	stores_free_range(c, old);
	return 0;
}

static void store_put(struct luffd__cache *c, uint32_t sidx)
{
	struct luffd__cache_store *e = &c->stores[sidx];
	uint32_t *p;

	if (--e->pages)
		return;
	p = &c->store_buckets[store_bucket(c, e->id)];
	while (*p != sidx)
		p = &c->stores[*p].hnext;
	*p = e->hnext;
	e->hnext = c->store_free;
	c->store_free = sidx;
	if (c->memo_sidx == sidx)
		c->memo_sidx = LUFFD__NIL;
}

static void unhash(struct luffd__cache *c, uint32_t i)
{
	struct luffd__slot *s = &c->slots[i];
	uint32_t *p = &c->buckets[slot_bucket(c, s->key)];

	while (*p != i)
		p = &c->slots[*p].hnext;
	*p = s->hnext;
	s->hnext = LUFFD__NIL;
}

/* Drop READY slot i (its page is gone from the cache); was it used? */
static bool drop_ready(struct luffd__cache *c, uint32_t i)
{
	bool used = luffd__cache_is_used(c, i);

	if (used) {
		bit_clear(c->used_map, i);
		c->nused--;
	} else {
		bit_clear(c->unused_map, i);
	}
	unhash(c, i);
	store_put(c, key_sidx(c->slots[i].key));
	set_state(&c->slots[i], LUFFD__SLOT_FREE);
	return used;
}

/* The next READY slot to evict: installed pages first. */
static uint32_t victim(struct luffd__cache *c)
{
	uint32_t i = LUFFD__NIL;

	if (c->nused)
		i = bit_next(c->used_map, c->nslots, c->hand);
	if (i == LUFFD__NIL)
		i = bit_next(c->unused_map, c->nslots, c->hand);
	if (i != LUFFD__NIL)
		c->hand = i + 1 < c->nslots ? i + 1 : 0;
	return i;
}

/*
 * No room in the store table and no memory to grow it (or 4M stores with
 * pages here): drop every page of one store with no page being read, from
 * the hand on, to free its entry.  One pass over the slots to find it and
 * one to drop its pages; only ever taken when memory is short.
 */
static uint32_t store_reclaim(struct luffd__cache *c)
{
	for (uint32_t k = 0; k < c->nslots; k++) {
		uint32_t v = c->hand + k < c->nslots ? c->hand + k :
						       c->hand + k - c->nslots;
		uint32_t sidx;

		if (luffd__cache_state(c, v) != LUFFD__SLOT_READY)
			continue;
		sidx = key_sidx(c->slots[v].key);
		if (c->stores[sidx].inflight)
			continue;
		for (uint32_t i = 0; i < c->nslots; i++)
			if (luffd__cache_state(c, i) == LUFFD__SLOT_READY &&
			    key_sidx(c->slots[i].key) == sidx) {
				if (!drop_ready(c, i))
					c->evictions++;
				c->slots[i].hnext = c->free_head;
				c->free_head = i;
				c->nfree++;
			}
		return c->store_free; /* all its pages were ready: it went */
	}
	return LUFFD__NIL;
}

/* The table index of store id, entering it if it has no pages here. */
static uint32_t store_enter(struct luffd__cache *c, uint64_t id)
{
	uint32_t i = store_find(c, id), h;

	if (i != LUFFD__NIL)
		return i;
	if (c->store_free == LUFFD__NIL && stores_grow(c) &&
	    store_reclaim(c) == LUFFD__NIL)
		return LUFFD__NIL;
	i = c->store_free;
	c->store_free = c->stores[i].hnext;
	c->stores[i].id = id;
	c->stores[i].pages = 0;
	c->stores[i].inflight = 0;
	h = store_bucket(c, id);
	c->stores[i].hnext = c->store_buckets[h];
	c->store_buckets[h] = i;
	c->memo_id = id;
	c->memo_sidx = i;
	return i;
}

int luffd__cache_init(struct luffd__cache *c, uint32_t nslots,
		      unsigned int page_shift)
{
	size_t words = (nslots + 63) / 64;

	memset(c, 0, sizeof(*c));
	c->nslots = nslots;
	c->page_shift = page_shift;
	c->nbuckets = 2;
	while (c->nbuckets * 2 <= nslots / 2)
		c->nbuckets <<= 1;
	c->nstores_cap = STORES_MIN;
	c->nstores_max = SIDX_MAX;
	c->memo_sidx = LUFFD__NIL;
	c->store_free = LUFFD__NIL;
	c->slots = calloc(nslots, sizeof(*c->slots));
	c->buckets = malloc(sizeof(*c->buckets) * c->nbuckets);
	c->unused_map = calloc(words, sizeof(uint64_t));
	c->used_map = calloc(words, sizeof(uint64_t));
	c->stores = malloc(sizeof(*c->stores) * c->nstores_cap);
	c->store_buckets = malloc(sizeof(*c->store_buckets) * c->nstores_cap);
	if (!c->slots || !c->buckets || !c->unused_map || !c->used_map ||
	    !c->stores || !c->store_buckets)
		goto fail;
	memset(c->buckets, 0xff, sizeof(*c->buckets) * c->nbuckets);
	memset(c->store_buckets, 0xff,
	       sizeof(*c->store_buckets) * c->nstores_cap);
	stores_free_range(c, 0);
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
	for (uint32_t i = 0; i < nslots; i++)
		c->slots[i].hnext = i + 1 < nslots ? i + 1 : LUFFD__NIL;
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
	free(c->unused_map);
	free(c->used_map);
	free(c->stores);
	free(c->store_buckets);
	memset(c, 0, sizeof(*c));
}

uint32_t luffd__cache_find(struct luffd__cache *c, uint64_t store_id,
			   uint64_t pg)
{
	uint32_t sidx = store_find(c, store_id), i;
	uint64_t key;

	if (sidx == LUFFD__NIL || pg >> LUFFD__CACHE_PG_BITS)
		return LUFFD__NIL;
	key = mkkey(sidx, pg);
	for (i = c->buckets[slot_bucket(c, key)]; i != LUFFD__NIL;
	     i = c->slots[i].hnext)
		if ((c->slots[i].key & ~KEY_STATE) == key)
			return i;
	return LUFFD__NIL;
}

uint32_t luffd__cache_alloc(struct luffd__cache *c, uint64_t store_id,
			    uint64_t pg)
{
	struct luffd__slot *s;
	uint32_t i, b, sidx;

	if (pg >> LUFFD__CACHE_PG_BITS)
		return LUFFD__NIL;
	/* The store's entry first, counting the new page: evicting the
	 * store's own last page below must not free it. */
	sidx = store_enter(c, store_id);
	if (sidx == LUFFD__NIL)
		return LUFFD__NIL;
	c->stores[sidx].pages++;
	c->stores[sidx].inflight++;
	if (c->free_head != LUFFD__NIL) {
		i = c->free_head;
		c->free_head = c->slots[i].hnext;
		c->nfree--;
	} else {
		i = victim(c);
		if (i == LUFFD__NIL) {
			c->stores[sidx].inflight--;
			store_put(c, sidx);
			return LUFFD__NIL;
		}
		if (!drop_ready(c, i))
			c->evictions++; /* read, never used */
	}
	s = &c->slots[i];
	s->key = mkkey(sidx, pg) | LUFFD__SLOT_INFLIGHT;
	c->ninflight++;
	b = slot_bucket(c, s->key);
	s->hnext = c->buckets[b];
	c->buckets[b] = i;
	return i;
}

void luffd__cache_ready(struct luffd__cache *c, uint32_t i)
{
	c->stores[key_sidx(c->slots[i].key)].inflight--;
	set_state(&c->slots[i], LUFFD__SLOT_READY);
	c->ninflight--;
	bit_set(c->unused_map, i);
}

void luffd__cache_used(struct luffd__cache *c, uint32_t i)
{
	if (luffd__cache_state(c, i) != LUFFD__SLOT_READY ||
	    luffd__cache_is_used(c, i))
		return;
	bit_clear(c->unused_map, i);
	bit_set(c->used_map, i);
	c->nused++;
}

void luffd__cache_release(struct luffd__cache *c, uint32_t i)
{
	struct luffd__slot *s = &c->slots[i];

	switch (luffd__cache_state(c, i)) {
	case LUFFD__SLOT_READY:
		drop_ready(c, i);
		break;
	case LUFFD__SLOT_INFLIGHT:
		c->ninflight--;
		c->stores[key_sidx(s->key)].inflight--;
		unhash(c, i);
		store_put(c, key_sidx(s->key));
		set_state(s, LUFFD__SLOT_FREE);
		break;
	default:
		return;
	}
	s->hnext = c->free_head;
	c->free_head = i;
	c->nfree++;
}

void luffd__cache_drop_pages(struct luffd__cache *c, uint64_t store_id,
			     uint64_t pg, uint64_t npg)
{
	uint32_t sidx = store_find(c, store_id);

	if (sidx == LUFFD__NIL)
		return; /* nothing of it here */
	if (npg > c->nslots) {
		/* Cheaper over the slots than over the pages. */
		for (uint32_t i = 0; i < c->nslots; i++) {
			uint64_t k = c->slots[i].key;

			if ((k & 3) == LUFFD__SLOT_READY &&
			    key_sidx(k) == sidx && k >> PG_SHIFT >= pg &&
			    (k >> PG_SHIFT) - pg < npg)
				luffd__cache_release(c, i);
		}
		return;
	}
	for (uint64_t p = pg; p < pg + npg; p++) {
		uint32_t i = luffd__cache_find(c, store_id, p);

		if (i != LUFFD__NIL &&
		    luffd__cache_state(c, i) == LUFFD__SLOT_READY)
			luffd__cache_release(c, i);
	}
}

uint32_t luffd__cache_available(const struct luffd__cache *c)
{
	/* Every slot that is not in flight is free or evictable. */
	return c->nslots - c->ninflight;
}

size_t luffd__cache_overhead(const struct luffd__cache *c)
{
	return sizeof(*c) + (size_t)c->nslots * sizeof(*c->slots) +
	       (size_t)c->nbuckets * sizeof(*c->buckets) +
	       2 * (size_t)((c->nslots + 63) / 64) * sizeof(uint64_t) +
	       (size_t)c->nstores_cap *
		       (sizeof(*c->stores) + sizeof(*c->store_buckets));
}
