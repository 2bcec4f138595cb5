/* SPDX-License-Identifier: MIT */
/*
 * One file, several views: two stores opened on the same file share
 * cached pages; one store mapped twice is not read page by page in its
 * second mapping; read-ahead settings hold in writable maps (no 2 MiB
 * chunks behind LUFFD_NO_READAHEAD); a map of any length.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SEED 0x5e

static void touch_all(const char *m, size_t npg, uint64_t fsize)
{
	for (size_t i = 0; i < npg; i++)
		t_assert_page(m, i, 0, fsize, SEED);
}

/* The second store on the file finds the first one's pages: all its
 * faults are minor and nothing more is read. */
START_TEST(two_stores_one_file_share_pages)
{
	const size_t npg = 512, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *a, *b;
	uint64_t read_a, faults_a, major_a;
	void *ma, *mb;
	int fd;

	ck_assert_int_eq(luffd_store_open(path, 0, &a), 0);
	fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(luffd_store_file(fd, LUFFD_FILE_CACHED, &b), 0);
	close(fd);
	ck_assert_int_eq(luffd_map(ctx, a, 0, len, PROT_READ, 0, &ma), 0);
	ck_assert_int_eq(luffd_map(ctx, b, 0, len, PROT_READ, 0, &mb), 0);
	touch_all(ma, npg, len);
	t_stats(ctx, &st);
	read_a = st.bytes_read;
	faults_a = t_total_faults(&st);
	major_a = st.faults[LUFFD_MAJOR];
	ck_assert_uint_ge(read_a, len);
	touch_all(mb, npg, len);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.bytes_read, read_a);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR], major_a);
	/* The second mapping's faults were all minor, and few: the pages
	 * around each went in with it. */
	ck_assert_uint_gt(t_total_faults(&st), faults_a);
	ck_assert_uint_le(t_total_faults(&st) - faults_a, npg / 8);
	ck_assert_int_eq(luffd_unmap(ctx, ma, len), 0);
	ck_assert_int_eq(luffd_unmap(ctx, mb, len), 0);
	luffd_store_put(a);
	luffd_store_put(b);
	/* A store on another file does not share. */
	{
		char *p2 = t_make_file(len, SEED + 1);
		struct luffd_store *c;
		void *mc;

		ck_assert_int_eq(luffd_store_open(p2, 0, &c), 0);
		ck_assert_int_eq(luffd_map(ctx, c, 0, len, PROT_READ, 0, &mc),
				 0);
		t_stats(ctx, &st);
		read_a = st.bytes_read;
		for (size_t i = 0; i < npg; i++)
			t_assert_page(mc, i, 0, len, SEED + 1);
		t_stats(ctx, &st);
		ck_assert_uint_ge(st.bytes_read - read_a, len);
		ck_assert_int_eq(luffd_unmap(ctx, mc, len), 0);
		luffd_store_put(c);
		free(p2);
	}
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

/* One store, two read-only mappings in one context: the second is served
 * from the cache with the pages around each hit (as the kernel's
 * fault-around, 16 pages), not one fault per page: install-ahead must not
 * take "installed in the first" for "installed here". */
START_TEST(one_store_mapped_twice)
{
	const size_t npg = 1024, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *s;
	uint64_t first;
	void *m1, *m2;

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0, &m1), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0, &m2), 0);
	touch_all(m1, npg, len);
	t_stats(ctx, &st);
	first = t_total_faults(&st);
	touch_all(m2, npg, len);
	t_stats(ctx, &st);
	ck_assert_msg(t_total_faults(&st) - first <= npg / 16,
		      "second mapping: %llu faults, first %llu",
		      (unsigned long long)(t_total_faults(&st) - first),
		      (unsigned long long)first);
	ck_assert_int_eq(luffd_unmap(ctx, m1, len), 0);
	ck_assert_int_eq(luffd_unmap(ctx, m2, len), 0);
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

/* LUFFD_NO_READAHEAD in a writable map: one page per read, no chunk. */
START_TEST(no_readahead_in_writable_map)
{
	const size_t npg = 1024, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *s;
	void *m;

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ | PROT_WRITE, 0,
				   &m), 0);
	for (size_t i = 0; i < 64; i++)
		t_assert_page(m, i, 0, len, SEED);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.moved_pages, 0);
	ck_assert_uint_eq(st.bytes_read, 64 * t_ps);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR], 64);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

/* Like mmap(): any length, rounded up; the tail past the file reads as
 * zeroes; unmap takes the same length. */
START_TEST(map_any_length)
{
	const size_t flen = 3 * t_ps + 100, mlen = 3 * t_ps + 1;
	char *path = t_make_file(flen, SEED);
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *s;
	char *m;
	void *v;

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, mlen, PROT_READ, 0, &v), 0);
	m = v;
	for (size_t i = 0; i < 4; i++)
		t_assert_page(m, i, 0, flen, SEED);
	ck_assert_int_eq(m[3 * t_ps + 100], 0);
	ck_assert_int_eq(luffd_unmap(ctx, m, mlen), 0);
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("sharing");
	TCase *tc = t_tcase(s, "views");

	tcase_add_test(tc, two_stores_one_file_share_pages);
	tcase_add_test(tc, one_store_mapped_twice);
	tcase_add_test(tc, no_readahead_in_writable_map);
	tcase_add_test(tc, map_any_length);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
