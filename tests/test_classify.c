/* SPDX-License-Identifier: MIT */
/*
 * Classification known in advance: one thread touching N pages once each
 * with a fixed read-ahead window gives exactly N/W major faults and the rest
 * minor; single-page reads are all major; memory stores minor; callback
 * stores major; a callback returning 0 gives zero faults.  Stats (reads,
 * bytes, latency histograms) and the trace callback must agree with that.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define RA (64 * 1024)

static size_t npages(void)
{
	return t_size(1024, 256); /* a multiple of RA / page size */
}

/* Check the latency summaries against the fault counts. */
static void check_latency(struct luffd_ctx *ctx, const struct luffd_stats *s)
{
	for (int c = 0; c < LUFFD_NR_CLASSES; c++) {
		const struct luffd_latency *l = &s->latency[c];
		uint64_t ns;

		ck_assert_msg(l->count == s->faults[c],
			      "class %s: latency count %llu, faults %llu",
			      luffd_class_name(c),
			      (unsigned long long)l->count,
			      (unsigned long long)s->faults[c]);
		if (!l->count) {
			ck_assert_int_eq(luffd_latency_percentile(ctx, c, 50,
								  &ns),
					 -ENODATA);
			continue;
		}
		ck_assert_uint_gt(l->max_ns, 0);
		ck_assert_uint_le(l->min_ns, l->mean_ns);
		ck_assert_uint_le(l->mean_ns, l->max_ns);
		ck_assert_uint_le(l->p50_ns, l->p90_ns);
		ck_assert_uint_le(l->p90_ns, l->p99_ns);
		ck_assert_uint_le(l->p99_ns, l->p999_ns);
		ck_assert_msg(l->p99_ns <= l->max_ns,
			      "class %s: p99 %llu > max %llu",
			      luffd_class_name(c),
			      (unsigned long long)l->p99_ns,
			      (unsigned long long)l->max_ns);
		ck_assert_msg(l->p50_ns >= l->min_ns - l->min_ns / 16,
			      "class %s: p50 %llu < min %llu",
			      luffd_class_name(c),
			      (unsigned long long)l->p50_ns,
			      (unsigned long long)l->min_ns);
		ck_assert_int_eq(luffd_latency_percentile(ctx, c, 50, &ns), 0);
		ck_assert_uint_le(ns, l->max_ns + l->max_ns / 16);
		ck_assert_uint_ge(ns, l->min_ns - l->min_ns / 16);
		ck_assert_int_eq(luffd_latency_percentile(ctx, c, 100, &ns), 0);
		ck_assert_uint_le(ns, l->max_ns + l->max_ns / 16);
		ck_assert_uint_ge(ns, l->max_ns - l->max_ns / 16);
	}
	{
		uint64_t ns;

		if (t_total_faults(s))
			ck_assert_int_eq(luffd_latency_percentile(
						 ctx, LUFFD_NR_CLASSES, 99.9,
						 &ns), 0);
	}
}

/* Per-fault records: one per touched page, in touch order (one thread, one
 * handler), with the expected class per page. */
static void check_records(const struct t_rec *r, const char *base, size_t n,
			  const uint8_t *cls, pid_t tid, int has_tid)
{
	ck_assert_uint_eq(r->n, n);
	for (size_t i = 0; i < n; i++) {
		const struct luffd_fault *f = &r->f[i];

		ck_assert_msg(f->addr == (uintptr_t)(base + i * t_ps),
			      "record %zu: addr %#llx, want %p", i,
			      (unsigned long long)f->addr,
			      (void *)(base + i * t_ps));
		ck_assert_msg(f->cls == cls[i], "page %zu: class %s, want %s",
			      i, luffd_class_name(f->cls),
			      luffd_class_name(cls[i]));
		ck_assert_int_eq(f->write, 0);
		ck_assert_int_eq(f->error, 0);
		if (has_tid)
			ck_assert_int_eq(f->tid, tid);
		else
			ck_assert_int_eq(f->tid, 0);
		if (i)
			ck_assert_uint_ge(f->time_ns, r->f[i - 1].time_ns);
		ck_assert_uint_lt(f->latency_ns, 10ull * 1000000000);
	}
}

static void touch_all(const char *a, size_t n)
{
	for (size_t i = 0; i < n; i++)
		(void)((const volatile char *)a)[i * t_ps];
}

/* ---- file stores ------------------------------------------------------ */

static void file_case(size_t ra, int mode, uint64_t disable)
{
	size_t n = npages(), w = ra == LUFFD_NO_READAHEAD ? 1 : ra / t_ps;
	uint64_t seed = 0xc1a55;
	char *path = t_make_file(n * t_ps, seed);
	struct t_rec rec;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = ra,
		   .readahead_mode = mode, .trace_fn = t_rec_fn,
		   .trace_arg = &rec, .disable_features = disable);
	struct luffd_ctx *ctx;
	struct luffd_features f;
	struct luffd_store *st;
	struct luffd_stats s;
	uint8_t *cls = calloc(n, 1);
	char *a;

	t_rec_init(&rec, n + 16);
	ctx = t_ctx(&o);
	memset(&f, 0, sizeof(f));
	f.sz = sizeof(f);
	ck_assert_int_eq(luffd_ctx_features(ctx, &f), 0);
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	touch_all(a, n);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.faults[LUFFD_MAJOR], n / w);
	ck_assert_uint_eq(s.faults[LUFFD_MINOR], n - n / w);
	ck_assert_uint_eq(s.faults[LUFFD_ZERO], 0);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 0);
	ck_assert_uint_eq(s.reads, n / w);
	ck_assert_uint_eq(s.bytes_read, n * t_ps);
	ck_assert_uint_eq(s.readahead_pages, n - n / w);
	ck_assert_uint_eq(s.coalesced, 0);
	ck_assert_uint_eq(s.evictions, 0);
	check_latency(ctx, &s);
	for (size_t i = 0; i < n; i++)
		cls[i] = i % w ? LUFFD_MINOR : LUFFD_MAJOR;
	check_records(&rec, a, n, cls, t_gettid(), f.has_thread_id);
	/* The data is right, and checking it faults nothing more. */
	for (size_t i = 0; i < n; i++)
		t_assert_page(a, i, 0, n * t_ps, seed);
	t_stats(ctx, &s);
	ck_assert_uint_eq(t_total_faults(&s), n);
	ck_assert_int_eq(luffd_unmap(ctx, a, n * t_ps), 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	t_rec_free(&rec);
	free(cls);
	free(path);
}

START_TEST(file_fixed_64k)
{
	file_case(RA, LUFFD_RA_FIXED, 0);
}
END_TEST

START_TEST(file_fixed_128k)
{
	file_case(128 * 1024, LUFFD_RA_FIXED, 0);
}
END_TEST

START_TEST(file_no_readahead)
{
	file_case(LUFFD_NO_READAHEAD, LUFFD_RA_FIXED, 0);
	file_case(LUFFD_NO_READAHEAD, LUFFD_RA_ADAPTIVE, 0);
}
END_TEST

/* Without UFFD_FEATURE_THREAD_ID the records carry tid 0. */
START_TEST(file_no_thread_id)
{
	file_case(RA, LUFFD_RA_FIXED, UFFD_FEATURE_THREAD_ID);
}
END_TEST

/* The default (adaptive) read-ahead: a sequential reader mostly sees minor
 * faults; a random reader mostly major ones. */
START_TEST(file_adaptive)
{
	size_t n = npages();
	uint64_t seed = 0xada;
	char *path = t_make_file(n * t_ps, seed);
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	struct luffd_stats s;
	size_t *perm = malloc(n * sizeof(*perm));
	uint64_t rng = 5;
	char *a;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	for (size_t i = 0; i < n; i++)
		t_assert_page(a, i, 0, n * t_ps, seed);
	t_stats(ctx, &s);
	/* Whole chunks may be installed per fault: at most n faults. */
	ck_assert_uint_le(s.faults[LUFFD_MAJOR] + s.faults[LUFFD_MINOR], n);
	ck_assert_uint_eq(s.faults[LUFFD_ZERO] + s.faults[LUFFD_ERROR], 0);
	ck_assert_msg(s.faults[LUFFD_MINOR] >= s.faults[LUFFD_MAJOR],
		      "sequential: %llu minor, %llu major",
		      (unsigned long long)s.faults[LUFFD_MINOR],
		      (unsigned long long)s.faults[LUFFD_MAJOR]);
	printf("adaptive sequential: %llu minor %llu major\n",
	       (unsigned long long)s.faults[LUFFD_MINOR],
	       (unsigned long long)s.faults[LUFFD_MAJOR]);
	ck_assert_uint_eq(s.bytes_read, n * t_ps);
	ck_assert_uint_gt(s.installed_ahead, 0);
	ck_assert_int_eq(luffd_unmap(ctx, a, n * t_ps), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);

	/* The same with install-ahead off: one fault per page, and the
	 * pages read ahead are minor faults instead. */
	{
		LUFFD_OPTS(luffd_ctx_opts, o,
			   .install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD);

		ctx = t_ctx(&o);
	}
	ck_assert_int_eq(luffd_map(ctx, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	for (size_t i = 0; i < n; i++)
		t_assert_page(a, i, 0, n * t_ps, seed);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.installed_ahead, 0);
	ck_assert_uint_eq(s.faults[LUFFD_MAJOR] + s.faults[LUFFD_MINOR], n);
	ck_assert_uint_eq(s.bytes_read, n * t_ps);
	ck_assert_int_eq(luffd_unmap(ctx, a, n * t_ps), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);

	/* Random order in a fresh context (cold cache). */
	ctx = t_ctx(NULL);
	ck_assert_int_eq(luffd_map(ctx, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	t_perm(perm, n, &rng);
	for (size_t i = 0; i < n; i++)
		t_assert_page(a, perm[i], 0, n * t_ps, seed);
	t_stats(ctx, &s);
	ck_assert_uint_le(s.faults[LUFFD_MAJOR] + s.faults[LUFFD_MINOR], n);
	/* Random misses read the aligned block around them (read-around)
	 * while that pays off, as it does here: the file fits in the cache,
	 * so every page is read exactly once and many faults are minor. */
	ck_assert_uint_eq(s.bytes_read, n * t_ps);
	ck_assert_msg(s.faults[LUFFD_MINOR] > 0,
		      "random: %llu minor, %llu major",
		      (unsigned long long)s.faults[LUFFD_MINOR],
		      (unsigned long long)s.faults[LUFFD_MAJOR]);
	/* And a minor hit installs its cached 16-page block: far fewer
	 * faults than pages. */
	ck_assert_msg(t_total_faults(&s) <= n / 4,
		      "random: %llu faults for %zu pages",
		      (unsigned long long)t_total_faults(&s), n);
	ck_assert_uint_ge(s.installed_ahead, n / 2);
	printf("adaptive random: %llu minor %llu major\n",
	       (unsigned long long)s.faults[LUFFD_MINOR],
	       (unsigned long long)s.faults[LUFFD_MAJOR]);
	ck_assert_int_eq(luffd_unmap(ctx, a, n * t_ps), 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(perm);
	free(path);
}
END_TEST

/*
 * Read-around stops paying when the cache cannot keep what it reads: here
 * a 256 KiB cache against scattered touches of a 64 MiB file.  After about
 * 100 misses more than hits (the kernel's MMAP_LOTSAMISS), each miss reads
 * only its page.
 */
START_TEST(read_around_stops)
{
	size_t n = 16384, touches = 600, blk = 128 * 1024 / t_ps;
	uint64_t seed = 0x5ca, rng = 11;
	char *path = t_make_file(n * t_ps, seed);
	LUFFD_OPTS(luffd_ctx_opts, o, .cache_bytes = 256 * 1024);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *st;
	struct luffd_stats s;
	size_t *perm = malloc(n * sizeof(*perm));
	char *a;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	luffd_store_put(st);
	t_perm(perm, n, &rng);
	for (size_t i = 0; i < touches; i++)
		t_assert_page(a, perm[i], 0, n * t_ps, seed);
	t_stats(ctx, &s);
	printf("read-around: %llu reads, %llu pages read ahead, %llu minor\n",
	       (unsigned long long)s.reads,
	       (unsigned long long)s.readahead_pages,
	       (unsigned long long)s.faults[LUFFD_MINOR]);
	/* About 100 blocks read around, then single pages. */
	ck_assert_uint_ge(s.readahead_pages, 80 * (blk - 1));
	ck_assert_uint_le(s.readahead_pages, 130 * (blk - 1));
	/* Nearly every touch is a miss of its own. */
	ck_assert_uint_ge(s.reads, touches * 3 / 4);
	ck_assert_int_eq(luffd_unmap(ctx, a, n * t_ps), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(perm);
	free(path);
}
END_TEST

/* ---- memory stores ---------------------------------------------------- */

START_TEST(memory_minor)
{
	size_t n = npages();
	char *mem = mmap(NULL, n * t_ps, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct t_rec rec;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = RA,
		   .readahead_mode = LUFFD_RA_FIXED, .trace_fn = t_rec_fn,
		   .trace_arg = &rec);
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	struct luffd_stats s;
	uint8_t *cls = calloc(n, 1);
	char *a;

	ck_assert_ptr_ne(mem, MAP_FAILED);
	t_pattern(mem, 0, n * t_ps, 3);
	t_rec_init(&rec, n + 16);
	ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_store_memory(mem, n * t_ps, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	touch_all(a, n);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.faults[LUFFD_MINOR], n);
	ck_assert_uint_eq(s.faults[LUFFD_MAJOR], 0);
	ck_assert_uint_eq(s.faults[LUFFD_ZERO], 0);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 0);
	check_latency(ctx, &s);
	memset(cls, LUFFD_MINOR, n);
	check_records(&rec, a, n, cls, t_gettid(), t_feat.has_thread_id);
	for (size_t i = 0; i < n; i++)
		t_assert_page(a, i, 0, n * t_ps, 3);
	ck_assert_int_eq(luffd_unmap(ctx, a, n * t_ps), 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	t_rec_free(&rec);
	free(cls);
	munmap(mem, n * t_ps);
}
END_TEST

/* ---- callback stores -------------------------------------------------- */

enum cb_mode { CB_FULL, CB_ONE_PAGE, CB_EMPTY };

struct cb {
	enum cb_mode mode;
	uint64_t seed;
	pthread_mutex_t lock;
	size_t calls, cap;
	uint64_t *off;
	size_t *len;
	ssize_t *ret;
	int destroyed;
};

static ssize_t cb_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct cb *c = arg;
	ssize_t r = 0;

	switch (c->mode) {
	case CB_FULL:
		t_pattern(buf, off, len, c->seed);
		r = (ssize_t)len;
		break;
	case CB_ONE_PAGE:
		t_pattern(buf, off, t_ps, c->seed);
		r = (ssize_t)t_ps;
		break;
	case CB_EMPTY:
		r = 0;
		break;
	}
	pthread_mutex_lock(&c->lock);
	if (c->calls < c->cap) {
		c->off[c->calls] = off;
		c->len[c->calls] = len;
		c->ret[c->calls] = r;
	}
	c->calls++;
	pthread_mutex_unlock(&c->lock);
	return r;
}

static void cb_destroy(void *arg)
{
	((struct cb *)arg)->destroyed++;
}

static void callback_case(enum cb_mode mode, size_t ra)
{
	size_t n = npages();
	size_t w = ra == LUFFD_NO_READAHEAD ? 1 : ra / t_ps;
	struct cb c = { .mode = mode, .seed = 0xcb + mode, .cap = 2 * n };
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = cb_fill,
		   .destroy = cb_destroy, .size = n * t_ps);
	struct t_rec rec;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = ra,
		   .readahead_mode = LUFFD_RA_FIXED, .trace_fn = t_rec_fn,
		   .trace_arg = &rec);
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	struct luffd_stats s;
	uint8_t *cls = calloc(n, 1);
	size_t majors, calls;
	char *a;

	pthread_mutex_init(&c.lock, NULL);
	c.off = calloc(c.cap, sizeof(*c.off));
	c.len = calloc(c.cap, sizeof(*c.len));
	c.ret = calloc(c.cap, sizeof(*c.ret));
	t_rec_init(&rec, n + 16);
	ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_store_callback(&ops, &c, &st), 0);
	ck_assert_uint_eq(luffd_store_size(st), n * t_ps);
	ck_assert_int_eq(luffd_map(ctx, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	luffd_store_put(st);
	ck_assert_int_eq(c.destroyed, 0);
	touch_all(a, n);
	t_stats(ctx, &s);
	switch (mode) {
	case CB_FULL:
		/* One call per window, each a major fault. */
		majors = n / w;
		calls = n / w;
		for (size_t i = 0; i < n; i++)
			cls[i] = i % w ? LUFFD_MINOR : LUFFD_MAJOR;
		break;
	case CB_ONE_PAGE:
		majors = 0; /* checked below */
		calls = 0;
		break;
	default:
		/* 0 is "the first page holds no data": one call per page. */
		majors = 0;
		calls = n;
		memset(cls, LUFFD_ZERO, n);
		break;
	}
	if (calls)
		ck_assert_uint_eq(c.calls, calls);
	ck_assert_uint_le(c.calls, c.cap);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 0);
	if (mode == CB_EMPTY) {
		ck_assert_uint_eq(s.faults[LUFFD_ZERO], n);
		ck_assert_uint_eq(s.faults[LUFFD_MINOR], 0);
		ck_assert_uint_eq(s.faults[LUFFD_MAJOR], 0);
		ck_assert_uint_eq(s.bytes_read, 0);
	} else if (mode == CB_FULL) {
		ck_assert_uint_eq(s.faults[LUFFD_MAJOR], majors);
		ck_assert_uint_eq(s.faults[LUFFD_ZERO], 0);
		ck_assert_uint_eq(s.faults[LUFFD_MINOR], n - majors);
		ck_assert_uint_eq(s.bytes_read, n * t_ps);
	} else {
		/* Short counts: every page's data comes from exactly one
		 * fill() (uncovered pages are asked again, none twice), and
		 * a fault is major exactly when its page was not cached. */
		uint8_t *got = calloc(n, 1);

		for (size_t k = 0; k < c.calls; k++) {
			size_t pg = (size_t)(c.off[k] / t_ps);

			ck_assert_int_eq(c.ret[k], (ssize_t)t_ps);
			ck_assert_uint_lt(pg, n);
			ck_assert_msg(!got[pg], "page %zu asked twice", pg);
			got[pg] = 1;
		}
		for (size_t i = 0; i < n; i++)
			ck_assert_msg(got[i], "page %zu never asked", i);
		free(got);
		ck_assert_uint_eq(s.faults[LUFFD_ZERO], 0);
		ck_assert_uint_eq(s.faults[LUFFD_MAJOR] + s.faults[LUFFD_MINOR],
				  n);
		ck_assert_uint_ge(s.faults[LUFFD_MAJOR], n / w);
		ck_assert_uint_eq(s.bytes_read, n * t_ps);
		/* Which faults were major depends on timing; the records
		 * must agree with the counts. */
		uint64_t nmaj = 0, nmin = 0;

		for (size_t i = 0; i < n; i++) {
			cls[i] = rec.f[i].cls;
			nmaj += cls[i] == LUFFD_MAJOR;
			nmin += cls[i] == LUFFD_MINOR;
		}
		ck_assert_uint_eq(nmaj, s.faults[LUFFD_MAJOR]);
		ck_assert_uint_eq(nmin, s.faults[LUFFD_MINOR]);
	}
	/* fill() is asked page-aligned, one page or a window, never past
	 * the store's size. */
	for (size_t k = 0; k < c.calls && k < c.cap; k++) {
		size_t pg = (size_t)(c.off[k] / t_ps);
		size_t want = n - pg < w ? n - pg : w;

		ck_assert_uint_eq(c.off[k] % t_ps, 0);
		ck_assert_msg(c.len[k] == t_ps || c.len[k] == want * t_ps,
			      "fill(%llu, %zu): not a page or a window",
			      (unsigned long long)c.off[k], c.len[k]);
		ck_assert_uint_le(c.off[k] + c.len[k], n * t_ps);
		if (mode == CB_FULL) {
			ck_assert_uint_eq(c.off[k], k * w * t_ps);
			ck_assert_uint_eq(c.len[k], w * t_ps);
		} else if (mode == CB_EMPTY) {
			ck_assert_uint_eq(c.off[k], k * t_ps);
		}
	}
	check_latency(ctx, &s);
	check_records(&rec, a, n, cls, t_gettid(), t_feat.has_thread_id);
	for (size_t i = 0; i < n; i++)
		t_assert_page(a, i, 0, mode == CB_EMPTY ? 0 : n * t_ps, c.seed);
	ck_assert_int_eq(luffd_unmap(ctx, a, n * t_ps), 0);
	/* The region held the last reference. */
	ck_assert_int_eq(c.destroyed, 1);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	ck_assert_int_eq(c.destroyed, 1);
	t_rec_free(&rec);
	free(c.off);
	free(c.len);
	free(c.ret);
	free(cls);
}

START_TEST(callback_major)
{
	callback_case(CB_FULL, LUFFD_NO_READAHEAD);
	callback_case(CB_FULL, RA);
}
END_TEST

START_TEST(callback_short_count)
{
	callback_case(CB_ONE_PAGE, RA);
}
END_TEST

START_TEST(callback_zero)
{
	callback_case(CB_EMPTY, LUFFD_NO_READAHEAD);
	callback_case(CB_EMPTY, RA);
}
END_TEST

/* ---- several threads: tid in the records ---------------------------- */

struct toucher {
	const char *a;
	size_t first, n;
	pid_t tid;
};

static void *touch_thread(void *arg)
{
	struct toucher *t = arg;

	t->tid = t_gettid();
	for (size_t i = t->first; i < t->first + t->n; i++)
		(void)((const volatile char *)t->a)[i * t_ps];
	return NULL;
}

START_TEST(thread_ids)
{
	size_t n = 4 * 64;
	char *path = t_make_file(n * t_ps, 8);
	struct t_rec rec;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD,
		   .trace_fn = t_rec_fn, .trace_arg = &rec);
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	struct toucher tt[4];
	pthread_t th[4];
	struct luffd_stats s;
	char *a;

	if (!t_feat.has_thread_id) {
		printf("skipped thread_ids: no UFFD_FEATURE_THREAD_ID\n");
		return;
	}
	t_rec_init(&rec, n + 16);
	ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	for (int k = 0; k < 4; k++) {
		tt[k] = (struct toucher){ a, (size_t)k * 64, 64, 0 };
		ck_assert_int_eq(pthread_create(&th[k], NULL, touch_thread,
						&tt[k]), 0);
	}
	for (int k = 0; k < 4; k++)
		pthread_join(th[k], NULL);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.faults[LUFFD_MAJOR], n);
	ck_assert_uint_eq(rec.n, n);
	for (size_t r = 0; r < rec.n; r++) {
		size_t i = (size_t)((rec.f[r].addr - (uintptr_t)a) / t_ps);

		ck_assert_uint_lt(i, n);
		ck_assert_int_eq(rec.f[r].tid, tt[i / 64].tid);
	}
	ck_assert_int_eq(luffd_unmap(ctx, a, n * t_ps), 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	t_rec_free(&rec);
	free(path);
}
END_TEST

/* Stats are per context and only grow. */
START_TEST(stats_per_context)
{
	size_t n = 64;
	char *path = t_make_file(n * t_ps, 9);
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *c1 = t_ctx(&o), *c2 = t_ctx(&o);
	struct luffd_store *st;
	struct luffd_stats s1, s2;
	char *a1, *a2;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(c1, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a1), 0);
	ck_assert_int_eq(luffd_map(c2, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a2), 0);
	touch_all(a1, n);
	touch_all(a2, n / 2);
	t_stats(c1, &s1);
	t_stats(c2, &s2);
	ck_assert_uint_eq(t_total_faults(&s1), n);
	ck_assert_uint_eq(t_total_faults(&s2), n / 2);
	ck_assert_uint_eq(s1.reads, n);
	ck_assert_uint_eq(s2.reads, n / 2);
	touch_all(a2, n);
	t_stats(c2, &s2);
	ck_assert_uint_eq(t_total_faults(&s2), n);
	t_stats(c1, &s1);
	ck_assert_uint_eq(t_total_faults(&s1), n);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(c1), 0);
	ck_assert_int_eq(luffd_ctx_destroy(c2), 0);
	free(path);
}
END_TEST

/* luffd_stats_get() right after pthread_join() of the faulting threads
 * counts every fault (it waits for the handler's last records), with no
 * luffd_ctx_sync() first; luffd_stats_peek() never counts more. */
struct jtoucher {
	const char *p;
	pthread_t th;
};

static void *jtoucher_main(void *arg)
{
	struct jtoucher *t = arg;

	(void)*(volatile const char *)t->p;
	return NULL;
}

START_TEST(stats_complete_after_join)
{
	size_t npg = 4 * 100;
	char *mem = malloc(npg * t_ps);
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD,
		   .install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *st;
	char *m;

	memset(mem, 1, npg * t_ps);
	ck_assert_int_eq(luffd_store_memory(mem, npg * t_ps, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, npg * t_ps, PROT_READ, 0,
				   (void **)&m), 0);
	for (size_t round = 0; round < npg / 4; round++) {
		struct jtoucher t[4];
		LUFFD_OPTS(luffd_stats, s);
		LUFFD_OPTS(luffd_stats, p);

		for (int i = 0; i < 4; i++) {
			t[i].p = m + (round * 4 + (size_t)i) * t_ps;
			ck_assert_int_eq(pthread_create(&t[i].th, NULL,
							jtoucher_main, &t[i]),
					 0);
		}
		for (int i = 0; i < 4; i++)
			pthread_join(t[i].th, NULL);
		ck_assert_int_eq(luffd_stats_get(ctx, &s), 0);
		ck_assert_uint_eq(t_total_faults(&s), round * 4 + 4);
		ck_assert_int_eq(luffd_stats_peek(ctx, &p), 0);
		ck_assert_uint_eq(t_total_faults(&p), round * 4 + 4);
	}
	ck_assert_int_eq(luffd_unmap(ctx, m, npg * t_ps), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(st);
	free(mem);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("classify");
	TCase *tc = t_tcase(s, "classify");

	tcase_add_test(tc, file_fixed_64k);
	tcase_add_test(tc, stats_complete_after_join);
	tcase_add_test(tc, file_fixed_128k);
	tcase_add_test(tc, file_no_readahead);
	tcase_add_test(tc, file_no_thread_id);
	tcase_add_test(tc, file_adaptive);
	tcase_add_test(tc, read_around_stops);
	tcase_add_test(tc, memory_minor);
	tcase_add_test(tc, callback_major);
	tcase_add_test(tc, callback_short_count);
	tcase_add_test(tc, callback_zero);
	tcase_add_test(tc, thread_ids);
	tcase_add_test(tc, stats_per_context);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
