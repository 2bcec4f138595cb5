/* SPDX-License-Identifier: MIT */
/*
 * wp-bench: what a write-protect fault costs next to a minor fault, in the
 * same run (a design measurement, not installed).
 *
 * A LUFFD_MAP_WP region over a memory store: every page is first read in
 * random order (a minor fault each: one UFFDIO_COPY, write-protected, no
 * read), then written in another random order (a WP fault each: one
 * UFFDIO_WRITEPROTECT that lifts the protection).  Both kinds are served
 * by the same handler, with the same spinning, one thread faulting at a
 * time.  Prints libuffd's service latency (luffd_stats: from reading the
 * message to the wake) of each kind, the faulting thread's view, and the
 * ratio of the p50s.
 *
 *   wp-bench [--size MIB] [--repeat N] [--spin-us US]
 *   wp-bench --dirty PCT [--async] [--size MIB] [--repeat N]
 *
 * With --dirty: the cost of dirty tracking instead.  Every page of the
 * region is read (installed, protected), PCT percent of its pages are
 * written at random, and luffd_dirty() over the whole region is timed (the
 * page-table scan plus one UFFDIO_WRITEPROTECT per range), then once more
 * with nothing written (the scan alone).  --async: the context records
 * writes in the kernel (LUFFD_WP_ASYNC), and the scan protects as it goes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <libuffd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void perm(size_t *a, size_t n, uint64_t *s)
{
	for (size_t i = 0; i < n; i++)
		a[i] = i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)(rnd(s) % (i + 1)), t = a[i];

		a[i] = a[j];
		a[j] = t;
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	return v[n / 2];
}

static int round_once(struct luffd_ctx *ctx, struct luffd_store *st,
		      size_t n, size_t ps, uint64_t *seed, size_t *order,
		      uint64_t *t_read, uint64_t *t_write)
{
	volatile char *a;
	uint64_t sum = 0;
	int err;

	err = luffd_map(ctx, st, 0, n * ps, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WP, (void **)&a);
	if (err)
		return err;
	perm(order, n, seed);
	for (size_t k = 0; k < n; k++) {
		uint64_t t = now_ns();

		sum += a[order[k] * ps];
		t_read[k] = now_ns() - t;
	}
	perm(order, n, seed);
	for (size_t k = 0; k < n; k++) {
		uint64_t t = now_ns();

		a[order[k] * ps + 1] = (char)k;
		t_write[k] = now_ns() - t;
	}
	(void)sum;
	luffd_ctx_sync(ctx);
	luffd_unmap(ctx, (void *)a, n * ps);
	return 0;
}

/* --dirty: luffd_dirty() over n pages with pct% of them written. */
static int dirty_bench(struct luffd_store *st, size_t n, size_t ps,
		       size_t mib, double pct, unsigned int repeat,
		       uint64_t *seed, enum luffd_wp_mode wp_mode)
{
	size_t cap = n + 1;
	struct luffd_range *out = malloc(cap * sizeof(*out));

	if (!out)
		return 1;
	printf("luffd_dirty() over %zu MiB (%zu pages), %.2f%% of the pages "
	       "written at random, %s\n", mib, n, pct,
	       wp_mode == LUFFD_WP_ASYNC ? "LUFFD_WP_ASYNC" : "LUFFD_WP_SYNC");
	printf("round  pages written  ranges  scan+protect ms  "
	       "scan alone ms\n");
	for (unsigned int r = 0; r < repeat; r++) {
		struct luffd_ctx *ctx;
		uint64_t t0, t1, t2;
		volatile char c;
		size_t nw = (size_t)((double)n * pct / 100.0);
		ssize_t k, k2;
		char *m;
		int err;

		LUFFD_OPTS(luffd_ctx_opts, o, .wp_mode = wp_mode);

		if (luffd_ctx_create(&o, &ctx))
			return 1;
		err = luffd_map(ctx, st, 0, n * ps, PROT_READ | PROT_WRITE,
				LUFFD_MAP_WP, (void **)&m);
		if (err) {
			fprintf(stderr, "luffd_map: %s\n", luffd_strerror(err));
			return err == -EOPNOTSUPP ? 77 : 1;
		}
		for (size_t i = 0; i < n; i++)
			c = m[i * ps];
		(void)c;
		for (size_t i = 0; i < nw; i++) {
			*seed ^= *seed << 13;
			*seed ^= *seed >> 7;
			*seed ^= *seed << 17;
			m[(*seed % n) * ps] = 1;
		}
		t0 = now_ns();
		k = luffd_dirty(ctx, m, n * ps, out, cap, 0);
		t1 = now_ns();
		k2 = luffd_dirty(ctx, m, n * ps, out, cap, 0);
		t2 = now_ns();
		if (k < 0 || k2 != 0) {
			fprintf(stderr, "luffd_dirty: %zd then %zd\n", k, k2);
			return 1;
		}
		printf("%5u  %13zu  %6zd  %15.2f  %13.2f\n", r, nw, k,
		       (double)(t1 - t0) / 1e6, (double)(t2 - t1) / 1e6);
		luffd_unmap(ctx, m, n * ps);
		luffd_ctx_destroy(ctx);
	}
	free(out);
	return 0;
}

int main(int argc, char **argv)
{
	size_t mib = 64, ps = (size_t)getpagesize(), n;
	unsigned int repeat = 3, spin = 0;
	double dirty_pct = -1;
	int async = 0;
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	uint64_t *t_read, *t_write;
	size_t *order;
	uint64_t ratios[64];
	unsigned int nr = 0;
	char *mem;
	int err;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--size") && i + 1 < argc)
			mib = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
			repeat = (unsigned int)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--spin-us") && i + 1 < argc)
			spin = (unsigned int)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--dirty") && i + 1 < argc)
			dirty_pct = strtod(argv[++i], NULL);
		else if (!strcmp(argv[i], "--async"))
			async = 1;
		else {
			fprintf(stderr, "usage: %s [--size MIB] [--repeat N] "
				"[--spin-us US] [--dirty PCT [--async]]\n", argv[0]);
			return 2;
		}
	}
	n = (mib << 20) / ps;
	if (!n || !repeat)
		return 2;
	mem = malloc(n * ps);
	order = malloc(n * sizeof(*order));
	t_read = malloc(n * sizeof(*t_read));
	t_write = malloc(n * sizeof(*t_write));
	if (!mem || !order || !t_read || !t_write)
		return 1;
	for (size_t i = 0; i < n * ps; i += 8)
		*(uint64_t *)(mem + i) = i * 0x9e3779b1u;
	err = luffd_store_memory(mem, n * ps, &st);
	if (err)
		return 1;
	if (dirty_pct >= 0)
		return dirty_bench(st, n, ps, mib, dirty_pct, repeat, &seed,
				   async ? LUFFD_WP_ASYNC : LUFFD_WP_SYNC);
	printf("%zu pages (%zu MiB), memory store, random order, "
	       "spin_us %u (0: the default)\n", n, mib, spin);
	printf("round  minor p50  wp p50  ratio  minor p99  wp p99  "
	       "thread read p50  thread write p50\n");
	for (unsigned int r = 0; r < repeat; r++) {
		LUFFD_OPTS(luffd_ctx_opts, o, .spin_us = spin);
		LUFFD_OPTS(luffd_stats, b);
		uint64_t minor50, wp50, minor99, wp99;

		/* A context per round: its histograms hold this round's
		 * faults alone. */
		err = luffd_ctx_create(&o, &ctx);
		if (err) {
			fprintf(stderr, "luffd_ctx_create: %s\n",
				luffd_strerror(err));
			return 1;
		}
		err = round_once(ctx, st, n, ps, &seed, order, t_read,
				 t_write);
		if (err) {
			fprintf(stderr, "luffd_map: %s\n",
				luffd_strerror(err));
			return err == -EOPNOTSUPP ? 77 : 1;
		}
		luffd_stats_get(ctx, &b);
		luffd_ctx_destroy(ctx);
		minor50 = b.latency[LUFFD_MINOR].p50_ns;
		wp50 = b.wp_latency.p50_ns;
		minor99 = b.latency[LUFFD_MINOR].p99_ns;
		wp99 = b.wp_latency.p99_ns;
		printf("%5u  %6.2f us  %5.2f us  %5.2f  %6.2f us  %5.2f us  "
		       "%10.2f us  %11.2f us   (minor %llu, wp %llu)\n",
		       r, minor50 / 1e3, wp50 / 1e3,
		       minor50 ? (double)wp50 / (double)minor50 : 0.0,
		       minor99 / 1e3, wp99 / 1e3,
		       median(t_read, n) / 1e3, median(t_write, n) / 1e3,
		       (unsigned long long)b.faults[LUFFD_MINOR],
		       (unsigned long long)b.wp_faults);
		if (minor50 && nr < 64)
			ratios[nr++] = wp50 * 1000 / minor50;
	}
	if (nr)
		printf("wp/minor service p50 ratio, median of %u rounds: "
		       "%.2f (target <= 1.5)\n", nr,
		       median(ratios, nr) / 1e3);
	luffd_store_put(st);
	free(mem);
	free(order);
	free(t_read);
	free(t_write);
	return 0;
}
