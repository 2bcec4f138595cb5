/* SPDX-License-Identifier: MIT */
#ifndef LUFFD_CACHE_H
#define LUFFD_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* ------------------------------------------------------------------------
 * Cache (cache.c): a bounded set of page slots keyed by (store id, page).
 * Owned by one handler thread; no locking.  13-15 bytes of bookkeeping
 * per page slot: a 12-byte slot, a 4-byte hash bucket per two to four
 * slots, two bits of replacement state, and a table of the stores with
 * pages cached (see cache.c).
 * ---------------------------------------------------------------------- */
enum {
	LUFFD__SLOT_FREE = 0,
	LUFFD__SLOT_INFLIGHT,
	LUFFD__SLOT_READY,
};

/* Page indexes in a store must be below this (4 PiB with 4 KiB pages). */
#define LUFFD__CACHE_PG_BITS 40
#define LUFFD__CACHE_SIDX_BITS 22

struct luffd__slot {
	/* page index << 24 | store table index << 2 | state */
	uint64_t key;
	uint32_t hnext; /* hash chain (hashed), free list (free) */
} __attribute__((packed, aligned(4)));

/* A store with pages in the cache: slots refer to it by its index. */
struct luffd__cache_store {
	uint64_t id;
	uint32_t pages; /* slots holding its pages; the entry goes at 0 */
	uint32_t inflight; /* of those, slots being read */
	uint32_t hnext; /* id hash chain (in use), free list (free) */
};

struct luffd__cache {
	struct luffd__slot *slots;
	uint32_t nslots;
	uint32_t *buckets;
	uint32_t nbuckets; /* power of two */
	uint32_t free_head;
	uint32_t nfree;
	uint32_t ninflight;
	/* Replacement: one bit per slot in each map, READY slots only.
	 * Installed pages go first, then read-ahead pages nobody has used,
	 * each in slot order from a rotating hand. */
	uint64_t *unused_map, *used_map;
	uint32_t nused;
	uint32_t hand;
	/* Store table: index -> store id, and an id hash. */
	struct luffd__cache_store *stores;
	uint32_t nstores_cap;
	uint32_t nstores_max; /* 1 << LUFFD__CACHE_SIDX_BITS (tests lower it) */
	uint32_t *store_buckets; /* nstores_cap of them */
	uint32_t store_free;
	uint64_t memo_id;  /* the last store looked up, and its index */
	uint32_t memo_sidx;
	unsigned char *data;
	size_t data_len;
	unsigned int page_shift;
	uint64_t evictions;
};

int luffd__cache_init(struct luffd__cache *c, uint32_t nslots,
		      unsigned int page_shift);
void luffd__cache_fini(struct luffd__cache *c);
uint32_t luffd__cache_find(struct luffd__cache *c, uint64_t store_id,
			   uint64_t pg);
/* A slot for (store_id, pg) in state INFLIGHT, evicting a READY page if
 * needed (installed ones first); LUFFD__NIL when every slot is in flight
 * or, memory being short, the store cannot be entered in the table. */
uint32_t luffd__cache_alloc(struct luffd__cache *c, uint64_t store_id,
			    uint64_t pg);
void luffd__cache_ready(struct luffd__cache *c, uint32_t i);
/* The page was installed: keep it (a second fault on it is minor) but
 * make it one of the first to go. */
void luffd__cache_used(struct luffd__cache *c, uint32_t i);
void luffd__cache_release(struct luffd__cache *c, uint32_t i);
static inline void *luffd__cache_data(struct luffd__cache *c, uint32_t i)
{
	return c->data + ((size_t)i << c->page_shift);
}
static inline unsigned int luffd__cache_state(const struct luffd__cache *c,
					      uint32_t i)
{
	return (unsigned int)(c->slots[i].key & 3);
}
static inline bool luffd__cache_is_used(const struct luffd__cache *c,
					uint32_t i)
{
	return c->used_map[i >> 6] >> (i & 63) & 1;
}
/* Drop the READY pages of store_id in [pg, pg+npg) (pages being read are
 * left). */
void luffd__cache_drop_pages(struct luffd__cache *c, uint64_t store_id,
			     uint64_t pg, uint64_t npg);
/* Slots that could be handed out now (free or evictable). */
uint32_t luffd__cache_available(const struct luffd__cache *c);
/* Bytes of bookkeeping (everything but the page data). */
size_t luffd__cache_overhead(const struct luffd__cache *c);

#endif /* LUFFD_CACHE_H */
