/* SPDX-License-Identifier: MIT */
/*
 * Write-protected regions (LUFFD_REGISTER_WP / LUFFD_MAP_WP): every page
 * libuffd installs goes in protected, whatever path installs it (demand
 * faults, zero pages, install-ahead, luffd_install(), luffd_prefetch(), the
 * push), and the first write to each page raises exactly one WP fault,
 * counted, timed and traced, with the data kept and the write visible.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SEED 0x3b17e

static size_t npages(void)
{
	return t_size(256, 64);
}

/* The word each test writes into a page (byte offset 8 of page i). */
static uint64_t mark(size_t i)
{
	return 0x5757000000000000ull | i;
}

static void write_page(char *a, size_t i)
{
	*(volatile uint64_t *)(a + i * t_ps + 8) = mark(i);
}

/* Page i of a: the file's data, with word 1 the mark if written. */
static void check_page(const char *a, size_t i, uint64_t off, uint64_t fsize,
		       int written)
{
	char want[65536];
	const char *p = a + i * t_ps;

	ck_assert_uint_le(t_ps, sizeof(want));
	memset(want, 0, t_ps);
	if (off + i * t_ps < fsize) {
		uint64_t n = fsize - (off + i * t_ps);

		t_pattern(want, off + i * t_ps, n < t_ps ? n : t_ps, SEED);
	}
	if (written)
		memcpy(want + 8, &(uint64_t){ mark(i) }, 8);
	ck_assert_msg(memcmp(p, want, t_ps) == 0, "page %zu differs", i);
}

/* A WP region must be refused cleanly where the kernel cannot have it. */
static int wp_map(struct luffd_ctx *ctx, struct luffd_store *st, size_t len,
		  unsigned int flags, char **ap)
{
	int err = luffd_map(ctx, st, 0, len, PROT_READ | PROT_WRITE,
			    LUFFD_MAP_WP | flags, (void **)ap);

	if (err == -EOPNOTSUPP)
		return err;
	ck_assert_int_eq(err, 0);
	return 0;
}

static uint64_t wp_faults(struct luffd_ctx *ctx)
{
	struct luffd_stats s;

	t_stats(ctx, &s);
	return s.wp_faults;
}

static size_t count_csv(const char *path, const char *needle)
{
	FILE *f = fopen(path, "r");
	char line[256];
	size_t n = 0;

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		n += strstr(line, needle) != NULL;
	fclose(f);
	return n;
}

/* ---- demand faults over a file ---------------------------------------- */

/* Read every page (installed protected), then write each: one WP fault per
 * page, traced as w/wp, none for a second write. */
START_TEST(read_then_write)
{
	size_t n = npages(), len = n * t_ps;
	char *path = t_make_file(len, SEED);
	char tpath[512];
	int tfd;
	struct t_rec rec;
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	struct luffd_stats s;
	uint64_t missing, ns;
	size_t wp = 0;
	char *a;

	snprintf(tpath, sizeof(tpath), "%s/wp.csv", t_dir);
	tfd = open(tpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(tfd, 0);
	t_rec_init(&rec, 4 * n + 16);
	{
		LUFFD_OPTS(luffd_ctx_opts, o, .readahead_mode = LUFFD_RA_FIXED,
			   .readahead_bytes = 64 * 1024, .trace_fn = t_rec_fn,
			   .trace_arg = &rec, .trace_format = LUFFD_TRACE_CSV,
			   .trace_fd = tfd);
		ctx = t_ctx(&o);
	}
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	if (wp_map(ctx, st, len, 0, &a)) {
		luffd_store_put(st);
		luffd_ctx_destroy(ctx);
		return; /* no WP on this kernel: refused cleanly */
	}
	ck_assert_int_eq(luffd_latency_percentile(ctx, LUFFD_WP, 50, &ns),
			 -ENODATA);
	for (size_t i = 0; i < n; i++)
		check_page(a, i, 0, len, 0);
	t_stats(ctx, &s);
	missing = t_total_faults(&s);
	ck_assert_uint_eq(missing, n); /* install-ahead is off (fixed) */
	ck_assert_uint_eq(s.wp_faults, 0);
	for (size_t i = 0; i < n; i++)
		write_page(a, i);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.wp_faults, n);
	ck_assert_uint_eq(s.wp_latency.count, n);
	ck_assert_uint_gt(s.wp_latency.max_ns, 0);
	ck_assert_uint_le(s.wp_latency.p50_ns, s.wp_latency.p99_ns);
	ck_assert_uint_eq(s.wp_unexpected, 0);
	ck_assert_uint_eq(t_total_faults(&s), missing);
	ck_assert_int_eq(luffd_latency_percentile(ctx, LUFFD_WP, 50, &ns), 0);
	ck_assert_uint_le(ns, s.wp_latency.max_ns + s.wp_latency.max_ns / 16);
	{
		uint64_t sum = 0;

		for (int b = 0; b < LUFFD_LATENCY_DIST_BUCKETS; b++)
			sum += s.latency_dist[b];
		ck_assert_uint_eq(sum, missing + n);
	}
	/* Blocktime counts WP faults like any fault: this thread's are
	 * its n reads and n writes. */
	if (t_feat.has_thread_id) {
		struct luffd_thread_blocktime bt[4];

		ck_assert_int_eq(luffd_blocktime_threads(ctx, bt, 4), 1);
		ck_assert_int_eq(bt[0].tid, t_gettid());
		ck_assert_uint_eq(bt[0].faults, 2 * n);
		ck_assert_uint_gt(bt[0].blocked_ns, 0);
	}
	/* Written again: no fault. */
	for (size_t i = 0; i < n; i++)
		write_page(a, i);
	ck_assert_uint_eq(wp_faults(ctx), n);
	for (size_t i = 0; i < n; i++)
		check_page(a, i, 0, len, 1);
	/* The records: n reads, then n writes of class wp, page by page. */
	pthread_mutex_lock(&rec.lock);
	ck_assert_uint_eq(rec.n, 2 * n);
	for (size_t i = 0; i < rec.n; i++) {
		const struct luffd_fault *f = &rec.f[i];

		if (f->cls != LUFFD_WP) {
			ck_assert_int_eq(f->write, 0);
			continue;
		}
		ck_assert_int_eq(f->write, 1);
		ck_assert_uint_eq(f->addr,
				  (uintptr_t)(a + (i - n) * t_ps));
		wp++;
	}
	pthread_mutex_unlock(&rec.lock);
	ck_assert_uint_eq(wp, n);
	ck_assert_int_eq(luffd_trace_flush(ctx), 0);
	ck_assert_uint_eq(count_csv(tpath, ",w,wp,"), n);
	ck_assert_uint_eq(count_csv(tpath, ",r,"), n);
	ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	close(tfd);
	t_rec_free(&rec);
	free(path);
}
END_TEST

/* pfaults.stp has no wp class: a WP fault prints as a "w" minor fault. */
START_TEST(pfaults_minor)
{
	size_t n = 8, len = n * t_ps;
	char *path = t_make_file(len, SEED);
	char tpath[512];
	int tfd;
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	char *a;

	snprintf(tpath, sizeof(tpath), "%s/wp.pf", t_dir);
	tfd = open(tpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(tfd, 0);
	{
		LUFFD_OPTS(luffd_ctx_opts, o, .readahead_mode = LUFFD_RA_FIXED,
			   .trace_format = LUFFD_TRACE_PFAULTS,
			   .trace_fd = tfd);
		ctx = t_ctx(&o);
	}
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	if (wp_map(ctx, st, len, 0, &a) == 0) {
		for (size_t i = 0; i < n; i++)
			(void)((volatile char *)a)[i * t_ps];
		for (size_t i = 0; i < n; i++)
			write_page(a, i);
		ck_assert_int_eq(luffd_ctx_sync(ctx), 0);
		ck_assert_int_eq(luffd_trace_flush(ctx), 0);
		ck_assert_uint_eq(count_csv(tpath, ":w:minor:"), n);
		ck_assert_uint_eq(count_csv(tpath, "wp"), 0);
		ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	close(tfd);
	free(path);
}
END_TEST

/* The first touch of each page is a write: the page goes in protected, the
 * write then faults as WP, and the thread gets the data. */
START_TEST(write_first)
{
	size_t n = npages(), len = n * t_ps;
	char *path = t_make_file(len, SEED);
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	struct luffd_stats s;
	char *a;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	if (wp_map(ctx, st, len, 0, &a) == 0) {
		for (size_t i = 0; i < n; i++)
			write_page(a, i);
		for (size_t i = 0; i < n; i++)
			check_page(a, i, 0, len, 1);
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.wp_faults, n);
		ck_assert_uint_le(t_total_faults(&s), n);
		ck_assert_uint_ge(t_total_faults(&s), 1);
		ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

/* ---- zero pages ------------------------------------------------------- */

static ssize_t zero_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	(void)arg;
	(void)off;
	(void)buf;
	(void)len;
	return 0; /* a hole: ZERO */
}

START_TEST(zero_pages)
{
	size_t n = npages(), len = n * t_ps;
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = zero_fill,
		   .size = UINT64_MAX);
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	struct luffd_stats s;
	char *a;

	ck_assert_int_eq(luffd_store_callback(&ops, NULL, &st), 0);
	if (wp_map(ctx, st, len, 0, &a) == 0) {
		for (size_t i = 0; i < n; i++)
			ck_assert_int_eq(((volatile char *)a)[i * t_ps], 0);
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.faults[LUFFD_ZERO], n);
		ck_assert_uint_eq(s.wp_faults, 0);
		for (size_t i = 0; i < n; i++)
			write_page(a, i);
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.wp_faults, n);
		ck_assert_uint_eq(s.faults[LUFFD_ZERO], n);
		for (size_t i = 0; i < n; i++)
			check_page(a, i, 0, 0, 1);
		ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* ---- pages installed before any fault --------------------------------- */

/* Adaptive read-ahead with install-ahead (the defaults): pages installed
 * around a fault, never faulted, are protected too. */
START_TEST(install_ahead)
{
	size_t n = npages(), len = n * t_ps, ahead = 0;
	char *path = t_make_file(len, SEED);
	struct t_rec rec;
	LUFFD_OPTS(luffd_ctx_opts, o, .trace_fn = t_rec_fn, .trace_arg = &rec);
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	struct luffd_stats s;
	unsigned char *vec = calloc(n, 1), *faulted = calloc(n, 1);
	uint64_t missing;
	char *a;

	t_rec_init(&rec, 4 * n + 16);
	ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	if (wp_map(ctx, st, len, 0, &a) == 0) {
		/* A short sequential read starts a stream. */
		for (size_t i = 0; i < 8; i++)
			(void)((volatile char *)a)[i * t_ps];
		t_stats(ctx, &s);
		ck_assert_uint_gt(s.installed_ahead, 0);
		missing = t_total_faults(&s);
		pthread_mutex_lock(&rec.lock);
		for (size_t i = 0; i < rec.n; i++)
			faulted[(rec.f[i].addr - (uintptr_t)a) / t_ps] = 1;
		pthread_mutex_unlock(&rec.lock);
		ck_assert_int_eq(mincore(a, len, vec), 0);
		for (size_t i = 0; i < n; i++) {
			if (!(vec[i] & 1) || faulted[i])
				continue;
			write_page(a, i);
			ahead++;
			ck_assert_uint_eq(wp_faults(ctx), ahead);
		}
		ck_assert_uint_gt(ahead, 0);
		ck_assert_uint_eq(ahead + 0, ahead);
		t_stats(ctx, &s);
		ck_assert_uint_eq(t_total_faults(&s), missing);
		for (size_t i = 0; i < n; i++)
			if ((vec[i] & 1) && !faulted[i])
				check_page(a, i, 0, len, 1);
		ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	t_rec_free(&rec);
	free(vec);
	free(faulted);
	free(path);
}
END_TEST

/* luffd_install() into a registered WP range: protected. */
START_TEST(app_install)
{
	size_t n = npages(), len = n * t_ps;
	char *src = malloc(len), *a = t_anon(len);
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	struct luffd_stats s;
	int err;

	t_pattern(src, 0, len, SEED);
	ck_assert_int_eq(luffd_store_memory(src, len, &st), 0);
	err = luffd_register(ctx, a, len, st, 0, LUFFD_REGISTER_WP);
	if (err != -EOPNOTSUPP) {
		ck_assert_int_eq(err, 0);
		ck_assert_int_eq(luffd_install(ctx, a, src, len, 0),
				 (ssize_t)len);
		for (size_t i = 0; i < n; i++)
			write_page(a, i);
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.app_installed, n);
		ck_assert_uint_eq(s.wp_faults, n);
		ck_assert_uint_eq(t_total_faults(&s), 0);
		for (size_t i = 0; i < n; i++)
			check_page(a, i, 0, len, 1);
		ck_assert_int_eq(luffd_unregister(ctx, a, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(a, len);
	free(src);
}
END_TEST

/* shmem: write-protected where the kernel allows it (pte markers), else
 * refused with nothing registered. */
START_TEST(shmem)
{
	size_t n = 16, len = n * t_ps;
	char *src = malloc(len), *a;
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	struct luffd_stats s;
	int fd = memfd_create("luffd-wp", MFD_CLOEXEC), err;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)len), 0);
	a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(a, MAP_FAILED);
	t_pattern(src, 0, len, SEED);
	ck_assert_int_eq(luffd_store_memory(src, len, &st), 0);
	err = luffd_register(ctx, a, len, st, 0, LUFFD_REGISTER_WP);
	ck_assert_msg(err == 0 || err == -EOPNOTSUPP, "register: %d", err);
	if (err == -EOPNOTSUPP) {
		/* Nothing was left registered. */
		ck_assert_int_eq(luffd_register(ctx, a, len, st, 0, 0), 0);
		ck_assert_int_eq(luffd_unregister(ctx, a, len), 0);
	} else {
		for (size_t i = 0; i < n; i++)
			check_page(a, i, 0, len, 0);
		for (size_t i = 0; i < n; i++)
			write_page(a, i);
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.faults[LUFFD_MINOR], n);
		ck_assert_uint_eq(s.wp_faults, n);
		for (size_t i = 0; i < n; i++)
			check_page(a, i, 0, len, 1);
		ck_assert_int_eq(luffd_unregister(ctx, a, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(a, len);
	close(fd);
	free(src);
}
END_TEST

/* luffd_prefetch() and the background push: protected. */
START_TEST(prefetch_and_push)
{
	size_t n = npages(), len = n * t_ps;
	char *path = t_make_file(len, SEED);
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	struct luffd_stats s;
	char *a, *b;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	if (wp_map(ctx, st, len, 0, &a) == 0) {
		ck_assert_int_eq(luffd_prefetch(ctx, a, len,
						LUFFD_PREFETCH_WAIT), 0);
		for (size_t i = 0; i < n; i++)
			write_page(a, i);
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.prefetched, n);
		ck_assert_uint_eq(t_total_faults(&s), 0);
		ck_assert_uint_eq(s.wp_faults, n);
		for (size_t i = 0; i < n; i++)
			check_page(a, i, 0, len, 1);
		ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);

		ck_assert_int_eq(wp_map(ctx, st, len, LUFFD_MAP_PUSH, &b), 0);
		(void)((volatile char *)b)[0];
		ck_assert_int_eq(luffd_push_wait(ctx, b, len, 20000), 0);
		for (size_t i = 0; i < n; i++)
			write_page(b, i);
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.wp_faults, 2 * n);
		ck_assert_uint_eq(s.pushed, n - 1);
		for (size_t i = 0; i < n; i++)
			check_page(b, i, 0, len, 1);
		ck_assert_int_eq(luffd_unmap(ctx, b, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

/* ---- flags and the ABI ------------------------------------------------ */

START_TEST(flags)
{
	size_t len = 4 * t_ps;
	char *src = calloc(1, len), *a = t_anon(len), *m;
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	uint64_t ns;
	int err;

	ck_assert_str_eq(luffd_class_name(LUFFD_WP), "wp");
	ck_assert_str_eq(luffd_class_name(LUFFD_NR_CLASSES), "?");
	ck_assert_str_eq(luffd_class_name(LUFFD_WP + 1), "?");
	ck_assert_int_eq(luffd_latency_percentile(ctx, LUFFD_WP + 1, 50, &ns),
			 -EINVAL);
	ck_assert_int_eq(luffd_latency_percentile(ctx, LUFFD_WP, 50, &ns),
			 -ENODATA);
	ck_assert_int_eq(luffd_store_memory(src, len, &st), 0);
	ck_assert_int_eq(luffd_register(ctx, a, len, st, 0, 1u << 4),
			 -EINVAL);
	ck_assert_int_eq(luffd_register(ctx, a, len, st, 0,
					LUFFD_REGISTER_WP | (1u << 4)),
			 -EINVAL);
	ck_assert_int_eq(luffd_map(ctx, st, 0, len, PROT_READ, 1u << 4,
				   (void **)&m), -EINVAL);
	err = luffd_register(ctx, a, len, st, 0,
			     LUFFD_REGISTER_WP | LUFFD_REGISTER_PUSH |
				     LUFFD_REGISTER_SEAL_UNSERVED);
	ck_assert_msg(err == 0 || err == -EOPNOTSUPP, "register: %d", err);
	if (!err)
		ck_assert_int_eq(luffd_unregister(ctx, a, len), 0);
	err = luffd_map(ctx, st, 0, len, PROT_READ, LUFFD_MAP_WP,
			(void **)&m);
	ck_assert_msg(err == 0 || err == -EOPNOTSUPP, "map: %d", err);
	if (!err) {
		/* A read-only mapping: reads are served, nothing writes. */
		ck_assert_int_eq(((volatile char *)m)[t_ps], 0);
		ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(a, len);
	free(src);
}
END_TEST

/* A caller built against the header before the WP fields (its sz ends at
 * latency_dist) reads every field it knows, and nothing is written past
 * its struct. */
START_TEST(old_stats)
{
	size_t n = 16, len = n * t_ps;
	size_t old = offsetof(struct luffd_stats, wp_faults);
	char *path = t_make_file(len, SEED);
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_mode = LUFFD_RA_FIXED,
		   .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *st;
	struct luffd_stats full;
	unsigned char *buf = malloc(sizeof(full) + 64);
	struct luffd_stats *s = (struct luffd_stats *)buf;
	char *a;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	if (wp_map(ctx, st, len, 0, &a) == 0) {
		for (size_t i = 0; i < n; i++)
			write_page(a, i);
		ck_assert_int_eq(luffd_ctx_sync(ctx), 0);
		memset(buf, 0xa5, sizeof(full) + 64);
		s->sz = old;
		ck_assert_int_eq(luffd_stats_get(ctx, s), 0);
		for (size_t k = old; k < sizeof(full) + 64; k++)
			ck_assert_msg(buf[k] == 0xa5, "byte %zu written", k);
		ck_assert_uint_eq(s->faults[LUFFD_MAJOR], n);
		ck_assert_uint_eq(s->faults[LUFFD_MINOR], 0);
		ck_assert_uint_eq(s->latency[LUFFD_MAJOR].count, n);
		ck_assert_uint_eq(s->latency[LUFFD_ZERO].count, 0);
		ck_assert_uint_eq(s->reads, n);
		memset(&full, 0, sizeof(full));
		full.sz = sizeof(full);
		ck_assert_int_eq(luffd_stats_get(ctx, &full), 0);
		ck_assert_uint_eq(full.wp_faults, n);
		ck_assert_int_eq(memcmp(buf + sizeof(size_t),
					(char *)&full + sizeof(size_t),
					offsetof(struct luffd_stats,
						 blocktime_threads_seen) -
						sizeof(size_t)), 0);
		ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(buf);
	free(path);
}
END_TEST

/* ---- threads ---------------------------------------------------------- */

#define NTHREADS 8

struct writer {
	pthread_t t;
	char *a;
	size_t n, writes;
	uint64_t rng;
	_Atomic unsigned char *written;
	unsigned int id;
};

/* Each thread writes its own word (16 + 8 * id) of random pages. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;

	for (size_t k = 0; k < w->writes; k++) {
		size_t i = (size_t)(t_rand(&w->rng) % w->n);

		*(volatile uint64_t *)(w->a + i * t_ps + 16 + 8 * w->id) =
			mark(i) ^ w->id;
		atomic_fetch_or(&w->written[i], (unsigned char)(1u << w->id));
	}
	return NULL;
}

START_TEST(threads)
{
	size_t n = t_size(1024, 256), len = n * t_ps, distinct = 0;
	char *path = t_make_file(len, SEED);
	struct luffd_ctx *ctx = t_ctx(NULL);
	_Atomic unsigned char *written = calloc(n, 1);
	struct writer w[NTHREADS];
	struct luffd_store *st;
	struct luffd_stats s;
	char *a, *want = malloc(t_ps);

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	if (wp_map(ctx, st, len, 0, &a) == 0) {
		/* Half the pages read first, the rest first touched by a
		 * write. */
		for (size_t i = 0; i < n; i += 2)
			(void)((volatile char *)a)[i * t_ps];
		for (unsigned int k = 0; k < NTHREADS; k++) {
			w[k] = (struct writer){ .a = a, .n = n,
						.writes = n / 2,
						.rng = 0x1234 + k,
						.written = written, .id = k };
			ck_assert_int_eq(pthread_create(&w[k].t, NULL,
							writer_main, &w[k]),
					 0);
		}
		for (unsigned int k = 0; k < NTHREADS; k++)
			pthread_join(w[k].t, NULL);
		for (size_t i = 0; i < n; i++) {
			unsigned char m = atomic_load(&written[i]);

			distinct += m != 0;
			t_pattern(want, i * t_ps, t_ps, SEED);
			for (unsigned int k = 0; k < NTHREADS; k++)
				if (m & (1u << k)) {
					uint64_t v = mark(i) ^ k;

					memcpy(want + 16 + 8 * k, &v, 8);
				}
			ck_assert_msg(memcmp(a + i * t_ps, want, t_ps) == 0,
				      "page %zu differs", i);
		}
		t_stats(ctx, &s);
		ck_assert_uint_gt(distinct, n / 4);
		ck_assert_uint_eq(s.wp_faults, distinct);
		ck_assert_uint_eq(s.wp_unexpected, 0);
		ck_assert_uint_eq(s.internal_errors, 0);
		ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free((void *)written);
	free(want);
	free(path);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("wp");
	TCase *tc = t_tcase(s, "wp");

	tcase_add_test(tc, read_then_write);
	tcase_add_test(tc, pfaults_minor);
	tcase_add_test(tc, write_first);
	tcase_add_test(tc, zero_pages);
	tcase_add_test(tc, install_ahead);
	tcase_add_test(tc, app_install);
	tcase_add_test(tc, prefetch_and_push);
	tcase_add_test(tc, shmem);
	tcase_add_test(tc, flags);
	tcase_add_test(tc, old_stats);
	tcase_add_test(tc, threads);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
