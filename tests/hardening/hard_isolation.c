/* SPDX-License-Identifier: MIT */
/*
 * Isolation: regions over different files with identical offsets share
 * one small cache (pages evicted, slots reused); each region must always
 * show its own file's bytes, across unmap/remap and after a store is freed
 * and another created (store ids are never reused).
 */
#include "hard_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "store.h" /* struct luffd_store: the cache key (id) */

static void check(char *base, size_t i, uint64_t size, uint64_t seed,
		  char *buf)
{
	ck_assert_int_eq(h_read(base + i * h_ps, h_ps, buf, NULL), 0);
	h_assert_page(buf, i * h_ps, size, seed);
}

/* _i: handler threads - 1 */
START_TEST(two_files_small_cache)
{
	const size_t n = 64, len = n * h_ps;
	const uint64_t sa = 0xc0, sb = 0xc1, sc = 0xc2;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = 4 * h_ps,
		   .cache_bytes = 8 * h_ps * (size_t)(_i + 1),
		   .handler_threads = (unsigned int)_i + 1,
		   .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *A = h_file_store(len, sa), *B = h_file_store(len, sb);
	struct luffd_store *C;
	struct luffd_stats st;
	char *buf = malloc(h_ps), *a = NULL, *b = NULL, *c = NULL;
	uint64_t id_a = A->id, id_b = B->id;
	unsigned int rnd = 12345;
	int rounds = (int)h_size(4, 2), iters = (int)h_size(400, 100);

	ck_assert_uint_ne(id_a, id_b);
	for (int r = 0; r < rounds; r++) {
		ck_assert_int_eq(luffd_map(ctx, A, 0, len, PROT_READ, 0,
					   (void **)&a), 0);
		ck_assert_int_eq(luffd_map(ctx, B, 0, len, PROT_READ, 0,
					   (void **)&b), 0);
		for (int k = 0; k < iters; k++) {
			size_t i;

			rnd = rnd * 1103515245u + 12345u;
			i = (rnd >> 8) % n;
			check(a, i, len, sa, buf);
			check(b, i, len, sb, buf);
			if (k % 16 == 15) {
				ck_assert_int_eq(madvise(a, len, MADV_DONTNEED),
						 0);
				ck_assert_int_eq(madvise(b, len, MADV_DONTNEED),
						 0);
			}
		}
		/* Sequential passes, interleaved page by page. */
		for (size_t i = 0; i < n; i++) {
			check(b, i, len, sb, buf);
			check(a, i, len, sa, buf);
		}
		ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
		ck_assert_int_eq(luffd_unmap(ctx, b, len), 0);
	}
	h_stats(ctx, &st);
	ck_assert_uint_gt(st.evictions, 0);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);

	/* Free A (no region holds it any more), create C: a new id, and
	 * none of A's cached pages may show through C. */
	luffd_store_put(A);
	C = h_file_store(len, sc);
	ck_assert_uint_gt(C->id, id_b);
	ck_assert_int_eq(luffd_map(ctx, C, 0, len, PROT_READ, 0, (void **)&c),
			 0);
	ck_assert_int_eq(luffd_map(ctx, B, 0, len, PROT_READ, 0, (void **)&b),
			 0);
	for (size_t i = 0; i < n; i++) {
		check(c, i, len, sc, buf);
		check(b, n - 1 - i, len, sb, buf);
	}
	ck_assert_int_eq(luffd_unmap(ctx, c, len), 0);
	ck_assert_int_eq(luffd_unmap(ctx, b, len), 0);
	luffd_store_put(B);
	luffd_store_put(C);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(buf);
}
END_TEST

/* Regions over the same offsets of two memory stores and two callback
 * stores, registered in one range each: no crossing either.  Memory stores
 * are served straight from memory; the callback stores share the cache
 * (two pages), so their pages keep evicting each other's. */
static ssize_t cb_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	h_fill(buf, off, len, *(uint64_t *)arg);
	return (ssize_t)len;
}

START_TEST(mixed_stores_same_offsets)
{
	enum { NS = 4 };
	const size_t n = 32, len = n * h_ps;
	uint64_t seeds[NS] = { 0xc3, 0xc4, 0xc5, 0xc6 };
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = 2 * h_ps,
		   .cache_bytes = 4 * h_ps);
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = cb_fill, .size = len);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s[NS] = { 0 };
	char *back[2], *mem[NS], *buf = malloc(h_ps);

	for (int k = 0; k < 2; k++) {
		back[k] = malloc(len);
		h_fill(back[k], 0, len, seeds[k]);
		ck_assert_int_eq(luffd_store_memory(back[k], len, &s[k]), 0);
	}
	for (int k = 2; k < NS; k++)
		ck_assert_int_eq(luffd_store_callback(&ops, &seeds[k], &s[k]),
				 0);
	for (int k = 0; k < NS; k++) {
		mem[k] = mmap(NULL, len, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ck_assert_ptr_ne(mem[k], MAP_FAILED);
		ck_assert_int_eq(luffd_register(ctx, mem[k], len, s[k], 0, 0),
				 0);
		luffd_store_put(s[k]);
	}
	for (int round = 0; round < NS; round++) {
		for (size_t i = 0; i < n; i++)
			for (int k = 0; k < NS; k++)
				check(mem[(k + round) % NS], i, len,
				      seeds[(k + round) % NS], buf);
		for (int k = 0; k < NS; k++)
			ck_assert_int_eq(madvise(mem[k], len, MADV_DONTNEED),
					 0);
	}
	for (int k = 0; k < NS; k++) {
		ck_assert_int_eq(luffd_unregister(ctx, mem[k], len), 0);
		munmap(mem[k], len);
	}
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(back[0]);
	free(back[1]);
	free(buf);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hard_isolation");
	TCase *tc = h_tcase(s, "isolation", H_TIMEOUT);

	tcase_add_loop_test(tc, two_files_small_cache, 0, 2);
	tcase_add_test(tc, mixed_stores_same_offsets);
	return h_main(s);
}
