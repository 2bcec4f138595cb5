/* SPDX-License-Identifier: MIT */
/*
 * The page cache on its own (cache.c, no handler): lookups, the order in
 * which pages are evicted, the store table (growth, entries freed with
 * their last page, no page found through a reused index, a full table),
 * the limits, and the bookkeeping per page.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <stdlib.h>

#include "cache.h"

static struct luffd__cache c;

static void setup(uint32_t nslots)
{
	ck_assert_int_eq(luffd__cache_init(&c, nslots, 12), 0);
}

/* A READY page (store id, pg) in a fresh slot. */
static uint32_t put(uint64_t id, uint64_t pg)
{
	uint32_t i = luffd__cache_alloc(&c, id, pg);

	ck_assert_uint_ne(i, LUFFD__NIL);
	ck_assert_uint_eq(luffd__cache_state(&c, i), LUFFD__SLOT_INFLIGHT);
	luffd__cache_ready(&c, i);
	return i;
}

START_TEST(find_and_states)
{
	uint32_t a, b;

	setup(64);
	ck_assert_uint_eq(luffd__cache_find(&c, 1, 0), LUFFD__NIL);
	a = luffd__cache_alloc(&c, 1, 5);
	ck_assert_uint_eq(luffd__cache_find(&c, 1, 5), a);
	ck_assert_uint_eq(luffd__cache_available(&c), 63);
	luffd__cache_ready(&c, a);
	ck_assert_uint_eq(luffd__cache_state(&c, a), LUFFD__SLOT_READY);
	ck_assert(!luffd__cache_is_used(&c, a));
	luffd__cache_used(&c, a);
	ck_assert(luffd__cache_is_used(&c, a));
	ck_assert_uint_eq(luffd__cache_available(&c), 64);
	/* Same page of another store, another page of the same store. */
	b = put(2, 5);
	ck_assert_uint_ne(a, b);
	ck_assert_uint_eq(luffd__cache_find(&c, 2, 5), b);
	ck_assert_uint_eq(luffd__cache_find(&c, 1, 6), LUFFD__NIL);
	/* Pages far apart, and the largest page index there is. */
	put(1, 1ull << 39);
	put(1, (1ull << 40) - 1);
	ck_assert_uint_ne(luffd__cache_find(&c, 1, (1ull << 40) - 1),
			  LUFFD__NIL);
	ck_assert_uint_eq(luffd__cache_find(&c, 1, 1ull << 40), LUFFD__NIL);
	ck_assert_uint_eq(luffd__cache_alloc(&c, 1, 1ull << 40), LUFFD__NIL);
	luffd__cache_release(&c, a);
	ck_assert_uint_eq(luffd__cache_find(&c, 1, 5), LUFFD__NIL);
	ck_assert_uint_eq(luffd__cache_find(&c, 2, 5), b);
	ck_assert_uint_eq(luffd__cache_state(&c, a), LUFFD__SLOT_FREE);
	luffd__cache_fini(&c);
}
END_TEST

/* Installed pages go before read-ahead nobody used; pages in flight never
 * go; read pages that go unused count as evictions. */
START_TEST(eviction_order)
{
	enum { N = 16 };
	uint32_t s[N], i;

	setup(N);
	for (uint64_t p = 0; p < N; p++)
		s[p] = put(7, p);
	luffd__cache_used(&c, s[9]);
	luffd__cache_used(&c, s[3]);
	/* Both used pages go first (in slot order from the hand), with no
	 * eviction counted. */
	i = luffd__cache_alloc(&c, 7, 100);
	ck_assert_uint_eq(i, s[3]);
	ck_assert_uint_eq(luffd__cache_find(&c, 7, 3), LUFFD__NIL);
	i = luffd__cache_alloc(&c, 7, 101);
	ck_assert_uint_eq(i, s[9]);
	ck_assert_uint_eq(c.evictions, 0);
	/* Then unused pages, from the hand on: 10, 11, ... */
	i = luffd__cache_alloc(&c, 7, 102);
	ck_assert_uint_eq(i, s[10]);
	ck_assert_uint_eq(c.evictions, 1);
	/* In flight: 3, 9, 10.  Make the rest in flight too, except 5. */
	for (uint64_t p = 0; p < N - 3; p++) {
		i = luffd__cache_alloc(&c, 8, p);
		ck_assert_uint_ne(i, LUFFD__NIL);
		if (i == s[5]) {
			luffd__cache_release(&c, i);
			put(9, 0);
		}
	}
	/* One READY page left (store 9's, in slot s[5]); then none. */
	ck_assert_uint_eq(luffd__cache_available(&c), 1);
	ck_assert_uint_eq(luffd__cache_alloc(&c, 8, 1000), s[5]);
	ck_assert_uint_eq(luffd__cache_available(&c), 0);
	ck_assert_uint_eq(luffd__cache_alloc(&c, 8, 1001), LUFFD__NIL);
	/* Store 9 lost its only page: its entry went with it. */
	ck_assert_uint_eq(luffd__cache_find(&c, 9, 0), LUFFD__NIL);
	luffd__cache_fini(&c);
}
END_TEST

/* More stores than the table starts with; entries go with their last
 * page; a store entered later under a reused index never sees an old
 * store's pages. */
START_TEST(store_table)
{
	enum { STORES = 300, N = 1024 };

	setup(N);
	for (uint64_t id = 1; id <= STORES; id++)
		for (uint64_t p = 0; p < 3; p++)
			put(id, p);
	ck_assert_uint_ge(c.nstores_cap, STORES);
	for (uint64_t id = 1; id <= STORES; id++)
		for (uint64_t p = 0; p < 3; p++) {
			uint32_t i = luffd__cache_find(&c, id, p);

			ck_assert_uint_ne(i, LUFFD__NIL);
			luffd__cache_used(&c, i);
		}
	/* Store 5 goes away page by page; its index is then free. */
	for (uint64_t p = 0; p < 3; p++)
		luffd__cache_release(&c, luffd__cache_find(&c, 5, p));
	ck_assert_uint_eq(luffd__cache_find(&c, 5, 0), LUFFD__NIL);
	/* A new store takes the free index: it sees none of store 5's
	 * pages (gone) nor anyone else's. */
	put(1000, 7);
	for (uint64_t p = 0; p < 3; p++)
		ck_assert_uint_eq(luffd__cache_find(&c, 1000, p), LUFFD__NIL);
	ck_assert_uint_ne(luffd__cache_find(&c, 1000, 7), LUFFD__NIL);
	ck_assert_uint_ne(luffd__cache_find(&c, 6, 2), LUFFD__NIL);
	/* Fill the cache with one store: the other stores' pages, all
	 * installed, go first, and their entries with them. */
	for (uint64_t p = 0; p < N; p++)
		put(2000, p);
	for (uint64_t id = 1; id <= STORES; id++)
		for (uint64_t p = 0; p < 3; p++)
			ck_assert_uint_eq(luffd__cache_find(&c, id, p),
					  LUFFD__NIL);
	for (uint32_t i = 0; i < c.nstores_cap; i++)
		if (c.stores[i].pages)
			ck_assert(c.stores[i].id == 2000 ||
				  c.stores[i].id == 1000);
	ck_assert_uint_eq(c.stores[c.memo_sidx].id, 2000);
	luffd__cache_fini(&c);
}
END_TEST

/* The store table full and not allowed to grow (as when memory is short):
 * a new store takes the entry of a store whose pages are all dropped; with
 * every entry held by pages in flight, nothing can be allocated. */
START_TEST(store_table_full)
{
	enum { N = 256 };
	uint32_t n0 = 0, first[64];

	setup(N);
	c.nstores_max = 64;
	for (uint64_t id = 1; id <= 64; id++)
		for (uint64_t p = 0; p < 2; p++)
			put(id, p);
	ck_assert_uint_eq(c.nstores_cap, 64);
	/* Store 65 needs an entry: one store loses both its pages. */
	put(65, 0);
	ck_assert_uint_eq(c.nstores_cap, 64);
	ck_assert_uint_ne(luffd__cache_find(&c, 65, 0), LUFFD__NIL);
	for (uint64_t id = 1; id <= 64; id++) {
		int have = (luffd__cache_find(&c, id, 0) != LUFFD__NIL) +
			   (luffd__cache_find(&c, id, 1) != LUFFD__NIL);

		ck_assert_int_ne(have, 1); /* all of a store, or none */
		n0 += have == 0;
	}
	ck_assert_uint_eq(n0, 1);
	ck_assert_uint_eq(c.nfree, N - 127); /* 2 dropped, 1 taken */
	luffd__cache_fini(&c);

	/* Every entry held by a page in flight: no entry for a new store,
	 * and no page dropped for nothing. */
	setup(N);
	c.nstores_max = 64;
	for (uint64_t id = 1; id <= 64; id++) {
		first[id - 1] = luffd__cache_alloc(&c, id, 0);
		ck_assert_uint_ne(first[id - 1], LUFFD__NIL);
		put(id, 1);
	}
	ck_assert_uint_eq(luffd__cache_alloc(&c, 65, 0), LUFFD__NIL);
	ck_assert_uint_eq(c.ninflight, 64);
	for (uint64_t id = 1; id <= 64; id++) {
		ck_assert_uint_eq(luffd__cache_find(&c, id, 0), first[id - 1]);
		ck_assert_uint_ne(luffd__cache_find(&c, id, 1), LUFFD__NIL);
	}
	/* One read completes and its store's pages can go: room again. */
	luffd__cache_ready(&c, first[9]);
	ck_assert_uint_ne(luffd__cache_alloc(&c, 65, 0), LUFFD__NIL);
	ck_assert_uint_eq(luffd__cache_find(&c, 10, 0), LUFFD__NIL);
	ck_assert_uint_eq(luffd__cache_find(&c, 10, 1), LUFFD__NIL);
	ck_assert_uint_ne(luffd__cache_find(&c, 9, 1), LUFFD__NIL);
	ck_assert_uint_ne(luffd__cache_find(&c, 11, 1), LUFFD__NIL);
	luffd__cache_fini(&c);
}
END_TEST

/* At most 16 bytes of bookkeeping per page, at the default size (48 MiB of
 * 4 KiB pages per handler) and at a small and a large one. */
START_TEST(bytes_per_page)
{
	static const uint32_t sizes[] = { 12288, 1000, 1u << 20 };

	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		double per;

		setup(sizes[k]);
		per = (double)luffd__cache_overhead(&c) / sizes[k];
		ck_assert_msg(per <= 16.0, "%u slots: %.2f bytes a page",
			      sizes[k], per);
		luffd__cache_fini(&c);
	}
}
END_TEST

/* Random traffic against a model: every page found is the page put there,
 * and the counts agree. */
START_TEST(random_against_model)
{
	enum { N = 256, STORES = 40, PAGES = 64, OPS = 200000 };
	static uint32_t model[STORES][PAGES]; /* slot + 1, 0 = absent */
	uint64_t rng = 0x5eed;
	uint32_t inflight = 0;

	setup(N);
	for (int op = 0; op < OPS; op++) {
		uint64_t r = t_rand(&rng);
		uint64_t id = r % STORES, pg = (r >> 8) % PAGES;
		uint32_t i = luffd__cache_find(&c, id + 1, pg);

		ck_assert_uint_eq(i + 1 ? i + 1 : 0, model[id][pg]);
		if (i == LUFFD__NIL) {
			i = luffd__cache_alloc(&c, id + 1, pg);
			if (i == LUFFD__NIL) {
				ck_assert_uint_eq(inflight, N);
			} else {
				/* Whatever it evicted is gone from the model. */
				for (int s = 0; s < STORES; s++)
					for (int p = 0; p < PAGES; p++)
						if (model[s][p] == i + 1)
							model[s][p] = 0;
				model[id][pg] = i + 1;
				inflight++;
			}
		} else if (luffd__cache_state(&c, i) == LUFFD__SLOT_INFLIGHT) {
			if (r >> 40 & 1) {
				luffd__cache_ready(&c, i);
			} else {
				luffd__cache_release(&c, i);
				model[id][pg] = 0;
			}
			inflight--;
		} else if (r >> 41 & 1) {
			luffd__cache_used(&c, i);
		} else if ((r >> 42 & 7) == 0) {
			luffd__cache_release(&c, i);
			model[id][pg] = 0;
		}
		ck_assert_uint_eq(c.ninflight, inflight);
		ck_assert_uint_eq(luffd__cache_available(&c), N - inflight);
		if (op % 64 == 0) {
			/* The store table's counts agree with the slots. */
			uint32_t pages = 0, busy = 0;

			for (uint32_t e = 0; e < c.nstores_cap; e++) {
				pages += c.stores[e].pages;
				busy += c.stores[e].inflight;
			}
			ck_assert_uint_eq(pages, N - c.nfree);
			ck_assert_uint_eq(busy, inflight);
		}
	}
	luffd__cache_fini(&c);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("cache");
	TCase *tc = t_tcase(s, "cache");

	tcase_add_test(tc, find_and_states);
	tcase_add_test(tc, eviction_order);
	tcase_add_test(tc, store_table);
	tcase_add_test(tc, store_table_full);
	tcase_add_test(tc, bytes_per_page);
	tcase_add_test(tc, random_against_model);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
