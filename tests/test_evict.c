/* SPDX-License-Identifier: MIT */
/*
 * The resident limit (luffd_ctx_opts.resident_bytes): a write-back
 * mapping of a file 4 times the limit, written and read at random by 8
 * threads, stays under the limit (plus a stated slack) while every write
 * survives eviction and refaults and reaches the file; a read-only mapping
 * is evicted and refaulted with the right data; teardown while the
 * evictor works loses nothing; bad settings refused.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SEED 0xe71c

/* Resident memory may pass the limit by this much while the evictor
 * catches up with 8 writers (2 vCPUs here). */
#define SLACK_PCT 10

/* Pages of [m, m+len) present (mincore). */
static size_t present(const char *m, size_t len)
{
	size_t n = len / t_ps, got = 0;
	unsigned char *v = malloc(n);

	ck_assert_ptr_nonnull(v);
	ck_assert_int_eq(mincore((void *)m, len, v), 0);
	for (size_t i = 0; i < n; i++)
		got += v[i] & 1;
	free(v);
	return got;
}

struct sampler {
	const char *m;
	size_t len;
	atomic_bool stop;
	size_t peak;
	pthread_t th;
};

static void *sampler_main(void *arg)
{
	struct sampler *s = arg;

	while (!atomic_load(&s->stop)) {
		size_t p = present(s->m, s->len);

		if (p > s->peak)
			s->peak = p;
		usleep(1000);
	}
	return NULL;
}

/* Thread t owns the pages p with p % nt == t, so the last stamp written
 * to each page is known: stamps[p]. */
struct worker {
	char *m;
	size_t npg, t, nt, touches;
	uint64_t *stamps; /* per page, the last stamp written (owner only) */
	uint64_t rng;
	int bad;          /* a read that did not find the last write */
	pthread_t th;
};

static uint64_t get_stamp(const char *page)
{
	uint64_t v;

	memcpy(&v, page + 64, sizeof(v));
	return v;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	size_t mine = (w->npg - w->t + w->nt - 1) / w->nt;

	for (size_t k = 0; k < w->touches; k++) {
		size_t p = w->t + (t_rand(&w->rng) % mine) * w->nt;
		char *page = w->m + p * t_ps;

		if (t_rand(&w->rng) & 1) {
			uint64_t v = (uint64_t)p << 24 | (k + 1);

			memcpy(page + 64, &v, sizeof(v));
			w->stamps[p] = v;
		} else if (w->stamps[p] && get_stamp(page) != w->stamps[p]) {
			w->bad++;
		}
	}
	return NULL;
}

/* The file's pages against the model: written pages hold their last
 * stamp, the others the pattern. */
static void check_file(int fd, size_t npg, const uint64_t *stamps)
{
	char *buf = malloc(t_ps);

	for (size_t p = 0; p < npg; p++) {
		ck_assert_int_eq(pread(fd, buf, t_ps, (off_t)(p * t_ps)),
				 (ssize_t)t_ps);
		if (stamps[p])
			ck_assert_msg(get_stamp(buf) == stamps[p],
				      "page %zu lost its last write", p);
		else
			ck_assert_int_lt(t_page_diff(buf, p * t_ps,
						     npg * t_ps, SEED), 0);
	}
	free(buf);
}

START_TEST(evict_writeback_4x)
{
	size_t limit = t_size(8, 4) << 20, len = 4 * limit;
	size_t npg = len / t_ps, nt = 8;
	LUFFD_OPTS(luffd_ctx_opts, o, .resident_bytes = limit,
		   .cache_bytes = 4 << 20);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *s;
	struct worker w[8];
	struct sampler sm = { 0 };
	uint64_t *stamps = calloc(npg, sizeof(*stamps));
	char *path = t_make_file(len, SEED), *m;
	int fd = open(path, O_RDONLY), err;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(luffd_store_open(path, LUFFD_FILE_WRITE, &s), 0);
	err = luffd_map(ctx, s, 0, len, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WRITEBACK, (void **)&m);
	if (err == -EOPNOTSUPP) {
		printf("no write-protect here: not tested\n");
		goto out;
	}
	ck_assert_int_eq(err, 0);
	sm.m = m;
	sm.len = len;
	ck_assert_int_eq(pthread_create(&sm.th, NULL, sampler_main, &sm), 0);
	for (size_t t = 0; t < nt; t++) {
		w[t] = (struct worker){ .m = m, .npg = npg, .t = t, .nt = nt,
					.touches = npg / 2, .stamps = stamps,
					.rng = t + 1 };
		ck_assert_int_eq(pthread_create(&w[t].th, NULL, worker_main,
						&w[t]), 0);
	}
	for (size_t t = 0; t < nt; t++) {
		pthread_join(w[t].th, NULL);
		ck_assert_int_eq(w[t].bad, 0);
	}
	atomic_store(&sm.stop, true);
	pthread_join(sm.th, NULL);
	t_stats(ctx, &st);
	printf("evict_writeback_4x: limit %zu pages, peak %zu present "
	       "(evictor's count %llu), evicted %llu, refaults %llu, "
	       "written back %llu\n",
	       limit / t_ps, sm.peak,
	       (unsigned long long)(st.resident_peak_bytes / t_ps),
	       (unsigned long long)st.evicted,
	       (unsigned long long)st.refaults,
	       (unsigned long long)st.written_back);
	ck_assert_uint_gt(st.evicted, 0);
	ck_assert_uint_gt(st.refaults, 0);
	ck_assert_uint_gt(st.written_back, 0);
	ck_assert_uint_le(sm.peak, limit / t_ps * (100 + SLACK_PCT) / 100);
	/* Every write is in the file after msync, and after unmap. */
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), 0);
	check_file(fd, npg, stamps);
	for (size_t p = 0; p < npg; p += 7)
		if (stamps[p])
			ck_assert_uint_eq(get_stamp(m + p * t_ps), stamps[p]);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	check_file(fd, npg, stamps);
out:
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	close(fd);
	free(stamps);
	free(path);
}
END_TEST

/* Read-only: pages dropped and read again, always right. */
START_TEST(evict_readonly_refault)
{
	size_t limit = 4 << 20, len = 4 * limit, npg = len / t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .resident_bytes = limit,
		   .cache_bytes = 2 << 20);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *s;
	char *path = t_make_file(len, SEED), *m;
	size_t peak = 0;

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0, (void **)&m),
			 0);
	for (int round = 0; round < 3; round++)
		for (size_t p = 0; p < npg; p++) {
			t_assert_page(m, p, 0, len, SEED);
			if (p % 256 == 0) {
				size_t n = present(m, len);

				peak = n > peak ? n : peak;
			}
		}
	t_stats(ctx, &st);
	ck_assert_uint_gt(st.evicted, 0);
	ck_assert_uint_gt(st.refaults, 0);
	ck_assert_uint_le(peak, limit / t_ps * (100 + SLACK_PCT) / 100);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	free(path);
}
END_TEST

/* Destroy right after the writers, the evictor possibly mid-pass:
 * everything reaches the file. */
START_TEST(evict_teardown)
{
	size_t limit = 4 << 20, len = 4 * limit, npg = len / t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .resident_bytes = limit,
		   .cache_bytes = 2 << 20);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *s;
	struct worker w[2];
	uint64_t *stamps = calloc(npg, sizeof(*stamps));
	char *path = t_make_file(len, SEED), *m;
	int fd = open(path, O_RDONLY), err;

	ck_assert_int_eq(luffd_store_open(path, LUFFD_FILE_WRITE, &s), 0);
	err = luffd_map(ctx, s, 0, len, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WRITEBACK, (void **)&m);
	if (err == -EOPNOTSUPP)
		goto out;
	ck_assert_int_eq(err, 0);
	for (size_t t = 0; t < 2; t++) {
		w[t] = (struct worker){ .m = m, .npg = npg, .t = t, .nt = 2,
					.touches = npg, .stamps = stamps,
					.rng = t + 9 };
		ck_assert_int_eq(pthread_create(&w[t].th, NULL, worker_main,
						&w[t]), 0);
	}
	for (size_t t = 0; t < 2; t++) {
		pthread_join(w[t].th, NULL);
		ck_assert_int_eq(w[t].bad, 0);
	}
out:
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	if (!err)
		check_file(fd, npg, stamps);
	luffd_store_put(s);
	close(fd);
	free(stamps);
	free(path);
}
END_TEST

START_TEST(evict_validation)
{
	LUFFD_OPTS(luffd_ctx_opts, odd, .resident_bytes = t_ps + 1);
	LUFFD_OPTS(luffd_ctx_opts, async, .resident_bytes = t_ps * 64,
		   .wp_mode = LUFFD_WP_ASYNC);
	struct luffd_ctx *ctx = (void *)1;

	ck_assert_int_eq(luffd_ctx_create(&odd, &ctx), -EINVAL);
	ck_assert_ptr_null(ctx);
	ck_assert_int_eq(luffd_ctx_create(&async, &ctx), -EINVAL);
	ck_assert_ptr_null(ctx);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("evict");
	TCase *tc = t_tcase(s, "evict");

	tcase_add_test(tc, evict_writeback_4x);
	tcase_add_test(tc, evict_readonly_refault);
	tcase_add_test(tc, evict_teardown);
	tcase_add_test(tc, evict_validation);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
