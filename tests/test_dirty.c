/* SPDX-License-Identifier: MIT */
/*
 * Dirty tracking (luffd_dirty()) over write-tracked regions: exactly the
 * pages written since the last call, as ranges in order, protected again
 * so the next write is seen; the rest left for the next call when out is
 * short; LUFFD_DIRTY_KEEP reports without protecting; no write is ever
 * missed while a thread keeps writing; bad arguments refused.
 */
#define _GNU_SOURCE
#include "common.h"
#include "dirty.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SEED 0xd1e7

/* LUFFD_WP_ASYNC for the "async" tests (set in their forked child). */
static enum luffd_wp_mode wp_mode;

struct fixture {
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	char *mem;  /* the store's bytes */
	char *m;    /* the region */
	size_t npg, len;
};

/* A write-tracked luffd_map() region of npg pages over a memory store,
 * every page read once (installed, protected, clean).  False when the
 * kernel cannot write-protect (the test then skips its checks). */
static bool setup(struct fixture *fx, size_t npg)
{
	volatile char c;
	int err;

	LUFFD_OPTS(luffd_ctx_opts, o, .wp_mode = wp_mode);
	LUFFD_OPTS(luffd_features, f);

	fx->npg = npg;
	fx->len = npg * t_ps;
	fx->m = NULL;
	fx->ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_ctx_features(fx->ctx, &f), 0);
	if (wp_mode == LUFFD_WP_ASYNC && !f.has_wp_async)
		printf("no UFFD_FEATURE_WP_ASYNC: the async tests run sync\n");
	fx->mem = malloc(fx->len);
	ck_assert_ptr_nonnull(fx->mem);
	t_pattern(fx->mem, 0, fx->len, SEED);
	ck_assert_int_eq(luffd_store_memory(fx->mem, fx->len, &fx->st), 0);
	err = luffd_map(fx->ctx, fx->st, 0, fx->len, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WP, (void **)&fx->m);
	if (err == -EOPNOTSUPP) {
		printf("no write-protect here: not tested\n");
		fx->m = NULL;
		return false;
	}
	ck_assert_int_eq(err, 0);
	for (size_t i = 0; i < npg; i++)
		c = fx->m[i * t_ps];
	(void)c;
	return true;
}

static void teardown(struct fixture *fx)
{
	if (fx->m)
		ck_assert_int_eq(luffd_unmap(fx->ctx, fx->m, fx->len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(fx->ctx), 0);
	luffd_store_put(fx->st);
	free(fx->mem);
}

/* The pages the ranges cover, as flags per page of the region. */
static size_t mark_ranges(const struct fixture *fx,
			  const struct luffd_range *r, ssize_t n,
			  unsigned char *seen)
{
	size_t pages = 0;
	uint64_t last = 0;

	for (ssize_t i = 0; i < n; i++) {
		uint64_t a = r[i].addr - (uint64_t)(uintptr_t)fx->m;

		ck_assert_uint_eq(r[i].addr % t_ps, 0);
		ck_assert_uint_eq(r[i].len % t_ps, 0);
		ck_assert_uint_gt(r[i].len, 0);
		ck_assert_uint_le(a + r[i].len, fx->len);
		/* In order, and not touching: touching ranges are one. */
		ck_assert(i == 0 || r[i].addr > last);
		last = r[i].addr + r[i].len;
		for (uint64_t p = a / t_ps; p < (a + r[i].len) / t_ps; p++) {
			ck_assert(!seen[p]);
			seen[p] = 1;
			pages++;
		}
	}
	return pages;
}

/* Exactly the pages written, each round. */
START_TEST(dirty_exact_rounds)
{
	struct fixture fx;
	const size_t npg = 512;
	struct luffd_range r[512];
	unsigned char want[512], seen[512];
	uint64_t rs = 7;

	if (!setup(&fx, npg)) {
		teardown(&fx);
		return;
	}
	/* Nothing written yet. */
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 512, 0), 0);
	for (int round = 0; round < 4; round++) {
		size_t nw = 0, got;
		ssize_t n;

		memset(want, 0, sizeof(want));
		memset(seen, 0, sizeof(seen));
		for (int k = 0; k < 60; k++) {
			size_t p = (size_t)(t_rand(&rs) % npg);

			fx.m[p * t_ps + 100] = (char)(round + 1);
			nw += !want[p];
			want[p] = 1;
		}
		/* Two adjacent pages make one range. */
		fx.m[10 * t_ps + 100] = (char)(round + 1);
		fx.m[11 * t_ps + 100] = (char)(round + 1);
		nw += !want[10] + !want[11];
		want[10] = want[11] = 1;
		n = luffd_dirty(fx.ctx, fx.m, fx.len, r, 512, 0);
		ck_assert_int_gt(n, 0);
		got = mark_ranges(&fx, r, n, seen);
		ck_assert_uint_eq(got, nw);
		ck_assert_int_eq(memcmp(seen, want, npg), 0);
		/* Protected again: nothing until the next write. */
		ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 512, 0),
				 0);
		/* The data: the store's, with the writes. */
		for (size_t p = 0; p < npg; p++)
			if (want[p])
				ck_assert_int_eq(fx.m[p * t_ps + 100],
						 (char)(round + 1));
	}
	/* A sub-range reports only its own pages. */
	fx.m[3 * t_ps] = 9;
	fx.m[300 * t_ps] = 9;
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m + 256 * t_ps, 256 * t_ps, r,
				     512, 0), 1);
	ck_assert_uint_eq(r[0].addr, (uint64_t)(uintptr_t)(fx.m + 300 * t_ps));
	ck_assert_uint_eq(r[0].len, t_ps);
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 512, 0), 1);
	ck_assert_uint_eq(r[0].addr, (uint64_t)(uintptr_t)(fx.m + 3 * t_ps));
	teardown(&fx);
}
END_TEST

/* Out too short: the first ranges now, the rest next call; KEEP reports
 * without protecting. */
START_TEST(dirty_short_out_and_keep)
{
	struct fixture fx;
	struct luffd_range r[8];
	unsigned char seen[64];
	size_t total = 0;
	ssize_t n;

	if (!setup(&fx, 64)) {
		teardown(&fx);
		return;
	}
	for (size_t p = 0; p < 64; p += 2) /* 32 ranges of one page */
		fx.m[p * t_ps] = 1;
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 8,
				     LUFFD_DIRTY_KEEP), 8);
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 8,
				     LUFFD_DIRTY_KEEP), 8);
	ck_assert_uint_eq(r[0].addr, (uint64_t)(uintptr_t)fx.m);
	memset(seen, 0, sizeof(seen));
	for (int k = 0; k < 4; k++) {
		n = luffd_dirty(fx.ctx, fx.m, fx.len, r, 8, 0);
		ck_assert_int_eq(n, 8);
		total += mark_ranges(&fx, r, n, seen);
	}
	ck_assert_uint_eq(total, 32);
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 8, 0), 0);
	for (size_t p = 0; p < 64; p++)
		ck_assert_int_eq(seen[p], p % 2 == 0);
	teardown(&fx);
}
END_TEST

struct writer {
	pthread_t t;
	char *m;
	size_t npg;
	atomic_bool stop;
	unsigned char written[4096]; /* pages written (the writer's) */
	uint64_t gen[4096];          /* last value written per page */
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint64_t rs = 99, g = 0;

	while (!atomic_load(&w->stop)) {
		size_t p = (size_t)(t_rand(&rs) % w->npg);

		++g;
		__atomic_store_n((uint64_t *)(w->m + p * t_ps + 64), g,
				 __ATOMIC_RELEASE);
		w->gen[p] = g;
		w->written[p] = 1;
	}
	return NULL;
}

/* One pre-copy round: the dirty pages reported, marked seen, their word
 * copied out (as a round would send them).  The ranges reported. */
static ssize_t copy_round(struct fixture *fx, struct luffd_range *r,
			  unsigned char *seen, uint64_t *copy)
{
	ssize_t n = luffd_dirty(fx->ctx, fx->m, fx->len, r, 1024, 0);

	ck_assert_int_ge(n, 0);
	for (ssize_t i = 0; i < n; i++)
		for (uint64_t a = r[i].addr; a < r[i].addr + r[i].len;
		     a += t_ps) {
			size_t p = (a - (uint64_t)(uintptr_t)fx->m) / t_ps;

			seen[p] = 1;
			copy[p] = __atomic_load_n(
				(uint64_t *)(fx->m + p * t_ps + 64),
				__ATOMIC_ACQUIRE);
		}
	return n;
}

/* A thread keeps writing while rounds are taken: every page written is
 * reported at least once, and after the writer stops and a last round is
 * taken, the value each round copied out matches the page's last write
 * (what a pre-copy round would send). */
START_TEST(dirty_concurrent_writer)
{
	struct fixture fx;
	const size_t npg = 1024;
	struct luffd_range *r = malloc(1024 * sizeof(*r));
	unsigned char *seen = calloc(npg, 1);
	uint64_t *copy = calloc(npg, sizeof(uint64_t));
	struct writer *w = calloc(1, sizeof(*w));

	if (!setup(&fx, npg)) {
		teardown(&fx);
		free(r);
		free(seen);
		free(copy);
		free(w);
		return;
	}
	w->m = fx.m;
	w->npg = npg;
	ck_assert_int_eq(pthread_create(&w->t, NULL, writer_main, w), 0);
	for (int round = 0; round < 200; round++) {
		copy_round(&fx, r, seen, copy);
		usleep(200);
	}
	atomic_store(&w->stop, true);
	pthread_join(w->t, NULL);
	/* The last rounds: whatever was written since. */
	while (copy_round(&fx, r, seen, copy))
		;
	for (size_t p = 0; p < npg; p++) {
		if (!w->written[p])
			continue;
		ck_assert_msg(seen[p], "page %zu written, never reported", p);
		ck_assert_msg(copy[p] == w->gen[p],
			      "page %zu: copied %llu, last write %llu", p,
			      (unsigned long long)copy[p],
			      (unsigned long long)w->gen[p]);
	}
	teardown(&fx);
	free(r);
	free(seen);
	free(copy);
	free(w);
}
END_TEST

START_TEST(dirty_validation)
{
	struct fixture fx;
	struct luffd_range r[4];
	struct luffd_ctx *ctx2;
	char *plain;

	if (!setup(&fx, 16)) {
		teardown(&fx);
		return;
	}
	ck_assert_int_eq(luffd_dirty(NULL, fx.m, fx.len, r, 4, 0), -EINVAL);
	ck_assert_int_eq(luffd_dirty(fx.ctx, NULL, fx.len, r, 4, 0), -EINVAL);
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m + 1, fx.len, r, 4, 0),
			 -EINVAL);
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, 0, r, 4, 0), -EINVAL);
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, NULL, 4, 0),
			 -EINVAL);
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 0, 0), -EINVAL);
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 4, 1u << 7),
			 -EINVAL);
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len + t_ps, r, 4, 0),
			 -ENOENT);
	/* A region without write tracking. */
	ctx2 = t_ctx(NULL);
	ck_assert_int_eq(luffd_map(ctx2, fx.st, 0, fx.len, PROT_READ, 0,
				   (void **)&plain), 0);
	ck_assert_int_eq(luffd_dirty(ctx2, plain, fx.len, r, 4, 0), -EINVAL);
	ck_assert_int_eq(luffd_unmap(ctx2, plain, fx.len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx2), 0);
	teardown(&fx);
}
END_TEST

/* The same through plain reads of /proc/self/pagemap (kernels before
 * PAGEMAP_SCAN). */
static void read_path(void)
{
	luffd__dirty_no_scan = true;
}

START_TEST(dirty_exact_rounds_read)
{
	read_path();
	dirty_exact_rounds_fn(_i);
}
END_TEST

START_TEST(dirty_short_out_and_keep_read)
{
	read_path();
	dirty_short_out_and_keep_fn(_i);
}
END_TEST

START_TEST(dirty_concurrent_writer_read)
{
	read_path();
	dirty_concurrent_writer_fn(_i);
}
END_TEST

/* The same with the kernel recording the writes (LUFFD_WP_ASYNC). */
START_TEST(dirty_exact_rounds_async)
{
	wp_mode = LUFFD_WP_ASYNC;
	dirty_exact_rounds_fn(_i);
}
END_TEST

START_TEST(dirty_short_out_and_keep_async)
{
	wp_mode = LUFFD_WP_ASYNC;
	dirty_short_out_and_keep_fn(_i);
}
END_TEST

START_TEST(dirty_concurrent_writer_async)
{
	wp_mode = LUFFD_WP_ASYNC;
	dirty_concurrent_writer_fn(_i);
}
END_TEST

/* Asynchronous: no fault per write, so no wp fault counted; a bad mode is
 * refused. */
START_TEST(dirty_async_no_faults)
{
	struct fixture fx;
	struct luffd_range r[4];
	LUFFD_OPTS(luffd_stats, st);
	LUFFD_OPTS(luffd_features, f);
	LUFFD_OPTS(luffd_ctx_opts, bad, .wp_mode = (enum luffd_wp_mode)7);
	struct luffd_ctx *c2 = (void *)1;

	ck_assert_int_eq(luffd_ctx_create(&bad, &c2), -EINVAL);
	ck_assert_ptr_null(c2);
	wp_mode = LUFFD_WP_ASYNC;
	if (!setup(&fx, 32)) {
		teardown(&fx);
		return;
	}
	ck_assert_int_eq(luffd_ctx_features(fx.ctx, &f), 0);
	for (size_t p = 0; p < 32; p++)
		fx.m[p * t_ps] = 5;
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 4, 0), 1);
	ck_assert_uint_eq(r[0].len, fx.len);
	t_stats(fx.ctx, &st);
	if (f.has_wp_async)
		ck_assert_uint_eq(st.wp_faults, 0);
	else
		ck_assert_uint_eq(st.wp_faults, 32);
	teardown(&fx);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("dirty");
	TCase *tc = t_tcase(s, "scan");

	tcase_add_test(tc, dirty_exact_rounds);
	tcase_add_test(tc, dirty_short_out_and_keep);
	tcase_add_test(tc, dirty_concurrent_writer);
	tcase_add_test(tc, dirty_validation);
	tc = t_tcase(s, "read");
	tcase_add_test(tc, dirty_exact_rounds_read);
	tcase_add_test(tc, dirty_short_out_and_keep_read);
	tcase_add_test(tc, dirty_concurrent_writer_read);
	tc = t_tcase(s, "async");
	tcase_add_test(tc, dirty_exact_rounds_async);
	tcase_add_test(tc, dirty_short_out_and_keep_async);
	tcase_add_test(tc, dirty_concurrent_writer_async);
	tcase_add_test(tc, dirty_async_no_faults);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
