/* SPDX-License-Identifier: MIT */
/*
 * Lifecycle: create/destroy and map/unmap loops leak no descriptor, thread
 * or memory; destroy with live regions; store references; calls from a
 * callback that must fail with -EDEADLK.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct snap {
	int fds, threads;
	long rss;
};

static void snap(struct snap *s)
{
	s->fds = t_count_fds();
	s->threads = t_count_threads();
	s->rss = t_rss_kib();
}

static void check_snap(const struct snap *before, long rss_slack_kib)
{
	struct snap now;

	snap(&now);
	now.threads = t_threads_settle(before->threads);
	ck_assert_int_eq(now.fds, before->fds);
	ck_assert_int_eq(now.threads, before->threads);
	/* ASan's quarantine holds on to freed memory. */
	if (T_SANITIZED)
		rss_slack_kib += 256 * 1024;
	ck_assert_msg(now.rss - before->rss <= rss_slack_kib,
		      "RSS grew by %ld KiB (from %ld)", now.rss - before->rss,
		      before->rss);
}

START_TEST(create_destroy_loop)
{
	int iters = (int)t_size(200, 50);
	struct snap s;
	char *path = t_make_file(16 * t_ps, 1);

	/* Warm up lazy library and libc state first. */
	for (int i = 0; i < 3; i++)
		luffd_ctx_destroy(t_ctx(NULL));
	snap(&s);
	for (int i = 0; i < iters; i++) {
		LUFFD_OPTS(luffd_ctx_opts, o, .handler_threads = 1 + i % 3,
			   .trace_fn = i % 2 ? t_rec_fn : NULL);
		struct luffd_ctx *ctx = t_ctx(i % 4 ? &o : NULL);

		if (i % 10 == 0) {
			/* Some with a served fault too. */
			struct luffd_store *st;
			struct t_rec rec;
			void *a;

			t_rec_init(&rec, 16);
			luffd_ctx_destroy(ctx);
			o.trace_fn = t_rec_fn;
			o.trace_arg = &rec;
			ctx = t_ctx(&o);
			ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
			ck_assert_int_eq(luffd_map(ctx, st, 0, 16 * t_ps,
						   PROT_READ, 0, &a), 0);
			luffd_store_put(st);
			t_assert_page(a, 5, 0, 16 * t_ps, 1);
			ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
			t_rec_free(&rec);
			continue;
		}
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	}
	check_snap(&s, 8 * 1024);
	free(path);
}
END_TEST

START_TEST(map_unmap_loop)
{
	int iters = (int)t_size(500, 100);
	size_t npg = 64;
	LUFFD_OPTS(luffd_ctx_opts, o, .cache_bytes = 1u << 20);
	struct luffd_ctx *ctx = t_ctx(&o);
	char *path = t_make_file(npg * t_ps, 2);
	struct luffd_store *st;
	struct luffd_stats stats;
	struct snap s;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 1)
			snap(&s);
		for (int i = 0; i < (pass ? iters : 5); i++) {
			void *a;
			size_t pg = (size_t)(i * 7) % npg;

			switch (i % 3) {
			case 0: /* the long-lived store */
				ck_assert_int_eq(luffd_map(ctx, st, 0,
							   npg * t_ps,
							   PROT_READ, 0, &a),
						 0);
				break;
			case 1: { /* a store per mapping */
				struct luffd_store *s2;

				ck_assert_int_eq(luffd_store_open(path, 0, &s2),
						 0);
				ck_assert_int_eq(luffd_map(ctx, s2, 0,
							   npg * t_ps,
							   PROT_READ, 0, &a),
						 0);
				luffd_store_put(s2);
				break;
			}
			default: /* registered anonymous memory */
				a = mmap(NULL, npg * t_ps, PROT_READ,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				ck_assert_ptr_ne(a, MAP_FAILED);
				ck_assert_int_eq(luffd_register(ctx, a,
								npg * t_ps, st,
								0, 0), 0);
				break;
			}
			t_assert_page(a, pg, 0, npg * t_ps, 2);
			t_assert_page(a, npg - 1, 0, npg * t_ps, 2);
			if (i % 3 == 2) {
				ck_assert_int_eq(luffd_unregister(ctx, a,
								  npg * t_ps),
						 0);
				munmap(a, npg * t_ps);
			} else {
				ck_assert_int_eq(luffd_unmap(ctx, a,
							     npg * t_ps), 0);
			}
		}
	}
	check_snap(&s, 4 * 1024);
	t_stats(ctx, &stats);
	ck_assert_uint_eq(stats.faults[LUFFD_ERROR], 0);
	ck_assert_uint_ge(t_total_faults(&stats), (uint64_t)iters + 5);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

/* Destroying a context with live regions unregisters (and unmaps) them:
 * a luffd_map() region is gone (SIGSEGV), a registered range is ordinary
 * memory again (served pages keep their data, the rest reads zero). */
START_TEST(destroy_with_live_regions)
{
	size_t npg = 32;
	char *path = t_make_file(npg * t_ps, 3);
	struct snap s;
	char *m, *r;
	int code;

	snap(&s);
	{
		struct luffd_ctx *ctx = t_ctx(NULL);
		struct luffd_store *st;

		ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
		ck_assert_int_eq(luffd_map(ctx, st, 0, npg * t_ps, PROT_READ,
					   0, (void **)&m), 0);
		r = mmap(NULL, npg * t_ps, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ck_assert_ptr_ne(r, MAP_FAILED);
		ck_assert_int_eq(luffd_register(ctx, r, npg * t_ps, st, 0, 0),
				 0);
		luffd_store_put(st);
		t_assert_page(m, 0, 0, npg * t_ps, 3);
		t_assert_page(r, 0, 0, npg * t_ps, 3);
		t_assert_page(r, 1, 0, npg * t_ps, 3);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	}
	ck_assert_int_eq(t_touch_sig(m, 0, &code, NULL, NULL), SIGSEGV);
	ck_assert_int_eq(t_touch_sig(m + 5 * t_ps, 0, NULL, NULL, NULL),
			 SIGSEGV);
	t_assert_page(r, 0, 0, npg * t_ps, 3);
	t_assert_page(r, 1, 0, npg * t_ps, 3);
	/* Untouched pages: zero, or the store's data if libuffd installed
	 * them ahead (adaptive read-ahead may install whole chunks). */
	for (size_t i = 2; i < npg; i++) {
		int zero = 1;

		for (size_t j = 0; j < t_ps && zero; j++)
			zero = r[i * t_ps + j] == 0;
		if (!zero)
			t_assert_page(r, i, 0, npg * t_ps, 3);
	}
	/* The memory is the caller's again: it can be registered anew. */
	{
		struct luffd_ctx *ctx = t_ctx(NULL);
		struct luffd_store *st;

		ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
		ck_assert_int_eq(madvise(r, npg * t_ps, MADV_DONTNEED), 0);
		ck_assert_int_eq(luffd_register(ctx, r, npg * t_ps, st, 0, 0),
				 0);
		t_assert_page(r, 7, 0, npg * t_ps, 3);
		luffd_store_put(st);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	}
	munmap(r, npg * t_ps);
	check_snap(&s, 8 * 1024);
	ck_assert_int_eq(luffd_ctx_destroy(NULL), 0);
	free(path);
}
END_TEST

/* A store lives as long as its last reference: the caller's, or a
 * region's; destroy() runs exactly once, at the end. */
static int destroyed;

static ssize_t fill(void *arg, uint64_t off, void *buf, size_t len)
{
	(void)arg;
	t_pattern(buf, off, len, 5);
	return (ssize_t)len;
}

static void on_destroy(void *arg)
{
	ck_assert_ptr_eq(arg, &destroyed);
	destroyed++;
}

START_TEST(store_references)
{
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = fill, .destroy = on_destroy,
		   .size = 16 * t_ps);
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	void *a, *b;

	destroyed = 0;
	ck_assert_int_eq(luffd_store_callback(&ops, &destroyed, &st), 0);
	luffd_store_put(st);
	ck_assert_int_eq(destroyed, 1);

	ck_assert_int_eq(luffd_store_callback(&ops, &destroyed, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, 16 * t_ps, PROT_READ, 0, &a), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 4 * t_ps, 4 * t_ps, PROT_READ, 0,
				   &b), 0);
	luffd_store_put(st);
	ck_assert_int_eq(destroyed, 1);
	t_assert_page(a, 3, 0, 16 * t_ps, 5);
	ck_assert_int_eq(luffd_unmap(ctx, a, 16 * t_ps), 0);
	ck_assert_int_eq(destroyed, 1);
	t_assert_page(b, 2, 4 * t_ps, 16 * t_ps, 5);
	/* The last region goes with the context. */
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	ck_assert_int_eq(destroyed, 2);
}
END_TEST

/* From a callback on the handler thread, destroy and sync fail with
 * -EDEADLK and the context keeps working. */
static struct luffd_ctx *cb_ctx;
static int cb_destroy_ret = 1, cb_sync_ret = 1, tr_destroy_ret = 1;

static ssize_t fill_calls_destroy(void *arg, uint64_t off, void *buf,
				  size_t len)
{
	(void)arg;
	if (cb_destroy_ret == 1) {
		cb_destroy_ret = luffd_ctx_destroy(cb_ctx);
		cb_sync_ret = luffd_ctx_sync(cb_ctx);
	}
	t_pattern(buf, off, len, 6);
	return (ssize_t)len;
}

static void trace_calls_destroy(void *arg, const struct luffd_fault *f)
{
	(void)arg;
	(void)f;
	if (tr_destroy_ret == 1)
		tr_destroy_ret = luffd_ctx_destroy(cb_ctx);
}

START_TEST(destroy_from_callback)
{
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = fill_calls_destroy,
		   .size = 16 * t_ps);
	LUFFD_OPTS(luffd_ctx_opts, o, .trace_fn = trace_calls_destroy);
	struct luffd_store *st;
	void *a;

	cb_ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_store_callback(&ops, NULL, &st), 0);
	ck_assert_int_eq(luffd_map(cb_ctx, st, 0, 16 * t_ps, PROT_READ, 0, &a),
			 0);
	luffd_store_put(st);
	t_assert_page(a, 0, 0, 16 * t_ps, 6);
	ck_assert_int_eq(luffd_ctx_sync(cb_ctx), 0);
	ck_assert_int_eq(cb_destroy_ret, -EDEADLK);
	ck_assert_int_eq(cb_sync_ret, -EDEADLK);
	ck_assert_int_eq(tr_destroy_ret, -EDEADLK);
	for (size_t i = 0; i < 16; i++)
		t_assert_page(a, i, 0, 16 * t_ps, 6);
	ck_assert_int_eq(luffd_ctx_destroy(cb_ctx), 0);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("lifecycle");
	TCase *tc = t_tcase(s, "lifecycle");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, create_destroy_loop);
	tcase_add_test(tc, map_unmap_loop);
	tcase_add_test(tc, destroy_with_live_regions);
	tcase_add_test(tc, store_references);
	tcase_add_test(tc, destroy_from_callback);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
