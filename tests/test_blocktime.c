/* SPDX-License-Identifier: MIT */
/*
 * Blocktime and the latency distribution: the accounting itself on made-up
 * timestamps (exact figures), then real faults served by a callback store
 * whose fill() sleeps a known time: per-thread totals, any and all across
 * threads and handler threads, open intervals counted up to now, no thread
 * ids, a full thread table, QEMU's latency buckets, bad arguments, and
 * callers built with the structs' older sizes.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "blocktime.h"
#include "stats.h"

#define SEED 0xb7
#define MS 1000000ull

/* ------------------------------------------------------------------------
 * The accounting on made-up times
 * ---------------------------------------------------------------------- */

static uint16_t bt_start1(struct luffd__bt *b, uint32_t tid, uint64_t t)
{
	uint16_t s;

	luffd__bt_start(b, &tid, &s, 1, t);
	return s;
}

static void bt_snap(struct luffd__bt *b, struct luffd_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->sz = sizeof(*st);
	luffd__bt_snapshot(b, st);
}

/* Two threads overlapping: each its own interval, any the union; all the
 * overlap with blocktime_threads = 2, and by default also the time the
 * first thread was the only one seen. */
static void two_threads(unsigned int want, uint64_t all)
{
	struct luffd__bt *b = luffd__bt_new(want, true);
	struct luffd_thread_blocktime t[3];
	struct luffd_stats st;
	uint16_t sa, sc;

	ck_assert_ptr_nonnull(b);
	sa = bt_start1(b, 11, 100);
	sc = bt_start1(b, 22, 150);
	luffd__bt_end(b, sa, 300);
	luffd__bt_end(b, sc, 400);
	bt_snap(b, &st);
	ck_assert_uint_eq(st.blocktime_threads_seen, 2);
	ck_assert_uint_eq(st.blocktime_all_threads, 2);
	ck_assert_uint_eq(st.blocktime_sum_ns, 450);
	ck_assert_uint_eq(st.blocktime_max_ns, 250);
	ck_assert_uint_eq(st.blocktime_any_ns, 300);
	ck_assert_uint_eq(st.blocktime_all_ns, all);
	ck_assert_uint_eq(st.blocktime_blocked_now, 0);
	ck_assert_int_eq(luffd__bt_threads(b, t, 3), 2);
	ck_assert_uint_eq(t[0].tid, 11);
	ck_assert_uint_eq(t[0].blocked_ns, 200);
	ck_assert_uint_eq(t[0].faults, 1);
	ck_assert_uint_eq(t[1].tid, 22);
	ck_assert_uint_eq(t[1].blocked_ns, 250);
	luffd__bt_free(b);
}

START_TEST(unit_two_threads)
{
	two_threads(2, 150);
	two_threads(0, 200);
}
END_TEST

/* The three-vCPU picture in QEMU's mark_postcopy_blocktime_end() comment:
 * S1 S2 E1 S3 S1 E2 E3 E1; all three are blocked only from the second S1
 * to E2. */
START_TEST(unit_qemu_example)
{
	struct luffd__bt *b = luffd__bt_new(3, true);
	struct luffd_stats st;
	uint16_t s1, s2, s3;

	s1 = bt_start1(b, 1, 0);
	s2 = bt_start1(b, 2, 10);
	luffd__bt_end(b, s1, 20);
	s3 = bt_start1(b, 3, 30);
	s1 = bt_start1(b, 1, 40);
	luffd__bt_end(b, s2, 50);
	luffd__bt_end(b, s3, 60);
	luffd__bt_end(b, s1, 70);
	bt_snap(b, &st);
	ck_assert_uint_eq(st.blocktime_all_ns, 10);
	ck_assert_uint_eq(st.blocktime_any_ns, 70);
	ck_assert_uint_eq(st.blocktime_sum_ns, 50 + 40 + 30);
	ck_assert_uint_eq(st.blocktime_max_ns, 50);
	ck_assert_uint_eq(st.blocktime_all_threads, 3);
	luffd__bt_free(b);
}
END_TEST

/* A thread with two faults open at once counts their union; a start
 * stamped before the last event counts in full for its thread and from
 * that event for any/all; blocktime_threads above the threads seen keeps
 * all at 0. */
START_TEST(unit_overlap_late_want)
{
	struct luffd__bt *b = luffd__bt_new(0, true);
	struct luffd_thread_blocktime t[2];
	struct luffd_stats st;
	uint16_t x, y;

	x = bt_start1(b, 7, 0);
	y = bt_start1(b, 7, 5);
	luffd__bt_end(b, x, 10);
	luffd__bt_end(b, y, 30);
	ck_assert_int_eq(luffd__bt_threads(b, t, 2), 1);
	ck_assert_uint_eq(t[0].blocked_ns, 30);
	ck_assert_uint_eq(t[0].faults, 2);
	/* Thread 8 starts at 20, learnt after the event at 30. */
	x = bt_start1(b, 8, 20);
	luffd__bt_end(b, x, 50);
	bt_snap(b, &st);
	ck_assert_uint_eq(st.blocktime_sum_ns, 30 + 30);
	ck_assert_uint_eq(st.blocktime_any_ns, 30 + 20);
	/* 7 alone was all there was; 8 alone is not all of two. */
	ck_assert_uint_eq(st.blocktime_all_ns, 30);
	luffd__bt_free(b);

	b = luffd__bt_new(2, true);
	x = bt_start1(b, 1, 0);
	luffd__bt_end(b, x, 100);
	bt_snap(b, &st);
	ck_assert_uint_eq(st.blocktime_any_ns, 100);
	ck_assert_uint_eq(st.blocktime_all_ns, 0);
	ck_assert_uint_eq(st.blocktime_all_threads, 2);
	luffd__bt_free(b);
}
END_TEST

/* A thread blocked now counts up to now, in both views. */
START_TEST(unit_open_interval)
{
	struct luffd__bt *b = luffd__bt_new(0, true);
	struct luffd_thread_blocktime t;
	struct luffd_stats st;
	uint64_t t0 = luffd__now_ns() - 50 * MS;
	uint16_t x = bt_start1(b, 3, t0);

	bt_snap(b, &st);
	ck_assert_uint_eq(st.blocktime_blocked_now, 1);
	ck_assert_uint_ge(st.blocktime_any_ns, 50 * MS);
	ck_assert_uint_ge(st.blocktime_all_ns, 50 * MS);
	ck_assert_uint_ge(st.blocktime_sum_ns, 50 * MS);
	ck_assert_int_eq(luffd__bt_threads(b, &t, 1), 1);
	ck_assert_uint_eq(t.blocked_now, 1);
	ck_assert_uint_ge(t.blocked_ns, 50 * MS);
	luffd__bt_end(b, x, t0 + 60 * MS);
	ck_assert_int_eq(luffd__bt_threads(b, &t, 1), 1);
	ck_assert_uint_eq(t.blocked_now, 0);
	ck_assert_uint_eq(t.blocked_ns, 60 * MS);
	luffd__bt_free(b);
}
END_TEST

/* A full table: the rest are counted as untracked and take no part. */
START_TEST(unit_table_full)
{
	struct luffd__bt *b = luffd__bt_new(0, true);
	struct luffd_stats st;
	uint16_t s[LUFFD_BLOCKTIME_MAX_THREADS + 3];
	uint32_t tid[LUFFD_BLOCKTIME_MAX_THREADS + 3];
	size_t n = LUFFD_BLOCKTIME_MAX_THREADS + 3;

	for (size_t i = 0; i < n; i++)
		tid[i] = (uint32_t)(1000 + 7 * i);
	luffd__bt_start(b, tid, s, n, 10);
	for (size_t i = 0; i < n; i++) {
		if (i < LUFFD_BLOCKTIME_MAX_THREADS)
			ck_assert_uint_ne(s[i], LUFFD__BT_NONE);
		else
			ck_assert_uint_eq(s[i], LUFFD__BT_NONE);
		luffd__bt_end(b, s[i], 20);
	}
	bt_snap(b, &st);
	ck_assert_uint_eq(st.blocktime_threads_seen,
			  LUFFD_BLOCKTIME_MAX_THREADS);
	ck_assert_uint_eq(st.blocktime_untracked, 3);
	ck_assert_uint_eq(st.blocktime_sum_ns,
			  10 * LUFFD_BLOCKTIME_MAX_THREADS);
	ck_assert_uint_eq(st.blocktime_all_ns, 10);
	ck_assert_int_eq(luffd__bt_threads(b, NULL, 0),
			 LUFFD_BLOCKTIME_MAX_THREADS);
	/* Known threads are still found. */
	ck_assert_uint_eq(bt_start1(b, tid[5], 30), 6);
	luffd__bt_free(b);
}
END_TEST

/* No thread ids: any counts faults, nothing per thread, all stays 0.  A
 * worker caught faulting is no faulting thread. */
START_TEST(unit_anon_and_forget)
{
	struct luffd__bt *b = luffd__bt_new(0, false);
	struct luffd_stats st;
	uint16_t x, y;

	x = bt_start1(b, 0, 0);
	y = bt_start1(b, 0, 5);
	luffd__bt_end(b, x, 10);
	luffd__bt_end(b, y, 20);
	bt_snap(b, &st);
	ck_assert_uint_eq(st.blocktime_any_ns, 20);
	ck_assert_uint_eq(st.blocktime_all_ns, 0);
	ck_assert_uint_eq(st.blocktime_threads_seen, 0);
	ck_assert_int_eq(luffd__bt_threads(b, NULL, 0), 0);
	luffd__bt_free(b);

	b = luffd__bt_new(0, true);
	/* Caught at once: the handler forgets it at its start time. */
	x = bt_start1(b, 99, 0);
	luffd__bt_forget(b, x, 0);
	x = bt_start1(b, 1, 10);
	luffd__bt_end(b, x, 20);
	ck_assert_uint_eq(bt_start1(b, 99, 30), LUFFD__BT_NONE);
	bt_snap(b, &st);
	ck_assert_uint_eq(st.blocktime_threads_seen, 1);
	ck_assert_uint_eq(st.blocktime_all_ns, 10);
	ck_assert_uint_eq(st.blocktime_any_ns, 10);
	ck_assert_int_eq(luffd__bt_threads(b, NULL, 0), 1);
	luffd__bt_free(b);
}
END_TEST

/* QEMU's blocktime_latency_account(): whole microseconds, floor(log2). */
START_TEST(unit_dist_buckets)
{
	static const struct { uint64_t ns; unsigned int b; } c[] = {
		{ 0, 0 }, { 999, 0 }, { 1000, 0 }, { 1999, 0 }, { 2000, 1 },
		{ 3999, 1 }, { 4000, 2 }, { 1023999, 9 }, { 1024000, 10 },
		{ 2000000, 10 }, { 2047999, 10 }, { 2048000, 11 },
		{ 4095999, 11 }, { 4096000, 12 },
		{ (1ull << 23) * 1000 - 1, 22 }, { (1ull << 23) * 1000, 23 },
		{ (1ull << 24) * 1000, 23 }, { UINT64_MAX, 23 },
	};

	ck_assert_int_eq(LUFFD_LATENCY_DIST_BUCKETS, 24);
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		ck_assert_msg(luffd__dist_bucket(c[i].ns) == c[i].b,
			      "%llu ns: bucket %u, want %u",
			      (unsigned long long)c[i].ns,
			      luffd__dist_bucket(c[i].ns), c[i].b);
}
END_TEST

/* ------------------------------------------------------------------------
 * Real faults
 * ---------------------------------------------------------------------- */

/* A callback store whose fill() sleeps delay_us, after waiting (at most
 * 10 s) until `gate` fills have started, and while `hold` is set. */
struct slow {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	unsigned int delay_us;
	int gate, started;
	bool hold;
};

static void slow_init(struct slow *s, unsigned int delay_us, int gate)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->delay_us = delay_us;
	s->gate = gate;
}

static void in_s(struct timespec *ts, int s)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += s;
}

static ssize_t slow_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct slow *s = arg;
	struct timespec dl, d = { .tv_sec = s->delay_us / 1000000,
				  .tv_nsec = (long)(s->delay_us % 1000000) *
					     1000 };

	pthread_mutex_lock(&s->lock);
	s->started++;
	pthread_cond_broadcast(&s->cv);
	in_s(&dl, 10);
	while ((s->started < s->gate || s->hold) &&
	       pthread_cond_timedwait(&s->cv, &s->lock, &dl) == 0)
		;
	pthread_mutex_unlock(&s->lock);
	while (nanosleep(&d, &d) != 0)
		;
	t_pattern(buf, off, len, SEED);
	return (ssize_t)len;
}

static struct luffd_store *slow_store(struct slow *s)
{
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = slow_fill,
		   .size = UINT64_MAX);
	struct luffd_store *st;

	ck_assert_int_eq(luffd_store_callback(&ops, s, &st), 0);
	return st;
}

static void slow_wait_started(struct slow *s, int n)
{
	struct timespec dl;

	in_s(&dl, 10);
	pthread_mutex_lock(&s->lock);
	while (s->started < n)
		ck_assert_int_eq(pthread_cond_timedwait(&s->cv, &s->lock, &dl),
				 0);
	pthread_mutex_unlock(&s->lock);
}

static void slow_release(struct slow *s)
{
	pthread_mutex_lock(&s->lock);
	s->hold = false;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->lock);
}

/* A thread touching pages first, first + step, ... (n of them). */
struct toucher {
	pthread_t t;
	char *base;
	size_t first, n, step;
	_Atomic pid_t tid;
	uint64_t sum;
};

static void *touch_main(void *arg)
{
	struct toucher *w = arg;

	atomic_store(&w->tid, t_gettid());
	for (size_t i = 0; i < w->n; i++)
		w->sum += *(volatile char *)(w->base +
					     (w->first + i * w->step) * t_ps);
	return NULL;
}

static void touch_start(struct toucher *w, char *base, size_t first,
			size_t n, size_t step)
{
	w->base = base;
	w->first = first;
	w->n = n;
	w->step = step;
	w->sum = 0;
	atomic_store(&w->tid, 0);
	ck_assert_int_eq(pthread_create(&w->t, NULL, touch_main, w), 0);
}

static void touch_join(struct toucher *w)
{
	struct timespec dl;

	in_s(&dl, 20);
	ck_assert_msg(pthread_timedjoin_np(w->t, NULL, &dl) == 0,
		      "a faulting thread is still blocked after 20 s");
}

static uint64_t dist_sum(const struct luffd_stats *st)
{
	uint64_t n = 0;

	for (int b = 0; b < LUFFD_LATENCY_DIST_BUCKETS; b++)
		n += st->latency_dist[b];
	return n;
}

/* The distribution is exactly the traced latencies, bucketed. */
static void dist_matches_trace(const struct luffd_stats *st,
			       const struct t_rec *rec)
{
	uint64_t want[LUFFD_LATENCY_DIST_BUCKETS] = { 0 };

	ck_assert_uint_le(rec->n, rec->cap);
	for (size_t i = 0; i < rec->n; i++)
		want[luffd__dist_bucket(rec->f[i].latency_ns)]++;
	for (int b = 0; b < LUFFD_LATENCY_DIST_BUCKETS; b++)
		ck_assert_msg(st->latency_dist[b] == want[b],
			      "bucket %d: %llu faults, the trace says %llu", b,
			      (unsigned long long)st->latency_dist[b],
			      (unsigned long long)want[b]);
	ck_assert_uint_eq(dist_sum(st), t_total_faults(st));
}

/* Thread ids come from UFFD_FEATURE_THREAD_ID (4.14+): the tests that
 * tell threads apart pass without checking on a kernel without it. */
#define NEED_TIDS()                                                       \
	do {                                                              \
		if (!t_feat.has_thread_id) {                              \
			fprintf(stderr, "%s: no thread ids here\n",      \
				__func__);                                \
			return;                                           \
		}                                                         \
	} while (0)

#define ONE_PAGE_OPTS                                     \
	.readahead_bytes = LUFFD_NO_READAHEAD,            \
	.install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD

/* One thread, 10 faults each served after >= 2 ms: its blocked time is at
 * least 20 ms and within the wall time, any is its total, all equals any
 * with blocktime_threads = 1, and every latency lands in the bucket QEMU
 * would put it in (10 or 11 for 2-4 ms). */
START_TEST(one_thread_slow_faults)
{
	const size_t len = 16 * t_ps;
	struct t_rec rec;
	LUFFD_OPTS(luffd_ctx_opts, o, ONE_PAGE_OPTS, .blocktime_threads = 1,
		   .trace_fn = t_rec_fn, .trace_arg = &rec);
	struct luffd_thread_blocktime t[4];
	struct luffd_stats st;
	struct luffd_ctx *ctx;
	struct luffd_store *s;
	struct toucher w;
	struct slow sl;
	char *m = t_anon(len);
	uint64_t wall, sum, any, low = 0;
	double t0;

	NEED_TIDS();
	t_rec_init(&rec, 64);
	ctx = t_ctx(&o);
	slow_init(&sl, 2000, 0);
	s = slow_store(&sl);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	t0 = t_now_s();
	touch_start(&w, m, 0, 10, 1);
	touch_join(&w);
	t_stats(ctx, &st);
	wall = (uint64_t)((t_now_s() - t0) * 1e9);
	for (size_t i = 0; i < 10; i++)
		t_assert_page(m, i, 0, UINT64_MAX, SEED);

	ck_assert_uint_eq(t_total_faults(&st), 10);
	ck_assert_int_eq(luffd_blocktime_threads(ctx, t, 4), 1);
	ck_assert_uint_eq(t[0].tid, (uint32_t)atomic_load(&w.tid));
	ck_assert_uint_eq(t[0].faults, 10);
	ck_assert_uint_eq(t[0].blocked_now, 0);
	ck_assert_uint_ge(t[0].blocked_ns, 20 * MS);
	ck_assert_uint_le(t[0].blocked_ns, wall);

	sum = st.blocktime_sum_ns;
	any = st.blocktime_any_ns;
	ck_assert_uint_eq(sum, t[0].blocked_ns);
	ck_assert_uint_eq(st.blocktime_max_ns, sum);
	ck_assert_uint_eq(st.blocktime_threads_seen, 1);
	ck_assert_uint_eq(st.blocktime_all_threads, 1);
	ck_assert_msg(any + sum / 100 + 100000 >= sum &&
		      any <= sum + sum / 100 + 100000,
		      "any %llu ns, the thread's total %llu ns",
		      (unsigned long long)any, (unsigned long long)sum);
	ck_assert_uint_eq(st.blocktime_all_ns, any);
	ck_assert_uint_eq(st.blocktime_blocked_now, 0);
	ck_assert_uint_eq(st.blocktime_untracked, 0);

	dist_matches_trace(&st, &rec);
	for (int b = 0; b < 10; b++)
		low += st.latency_dist[b];
	ck_assert_uint_eq(low, 0); /* each took >= 2 ms: bucket 10 and up */
	ck_assert_uint_ge(st.latency_dist[10] + st.latency_dist[11], 1);

	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	t_rec_free(&rec);
	munmap(m, len);
}
END_TEST

/* Two threads, only one of which faults: with blocktime_threads = 2 they
 * are never all blocked; by default "all" is every thread that faulted,
 * here the one. */
static void one_of_two(unsigned int want)
{
	const size_t len = 16 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, ONE_PAGE_OPTS,
		   .blocktime_threads = want);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_stats st;
	struct luffd_store *s;
	struct toucher a, idle;
	struct slow sl;
	char *m = t_anon(len), *plain = t_anon(len);

	NEED_TIDS();
	slow_init(&sl, 1000, 0);
	s = slow_store(&sl);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	/* The other thread runs meanwhile, on memory libuffd does not
	 * serve. */
	touch_start(&idle, plain, 0, 16, 1);
	touch_start(&a, m, 0, 5, 2);
	touch_join(&a);
	touch_join(&idle);
	t_stats(ctx, &st);
	ck_assert_uint_eq(t_total_faults(&st), 5);
	ck_assert_uint_eq(st.blocktime_threads_seen, 1);
	ck_assert_uint_ge(st.blocktime_any_ns, 5 * MS);
	ck_assert_uint_eq(st.blocktime_sum_ns, st.blocktime_max_ns);
	if (want) {
		ck_assert_uint_eq(st.blocktime_all_threads, want);
		ck_assert_uint_eq(st.blocktime_all_ns, 0);
	} else {
		ck_assert_uint_eq(st.blocktime_all_threads, 1);
		ck_assert_uint_eq(st.blocktime_all_ns, st.blocktime_any_ns);
	}
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
	munmap(plain, len);
}

START_TEST(only_one_of_two_faults)
{
	one_of_two(2);
	one_of_two(0);
}
END_TEST

/* Two threads blocked at once for >= 20 ms (each fill() waits for the
 * other to start, then sleeps 20 ms), on one handler thread or on two
 * (stripes of one page put their pages on different handlers): all
 * blocked >= 20 ms, and all <= any <= sum <= 2 x wall. */
static void both_blocked(unsigned int handlers)
{
	const size_t len = 16 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, ONE_PAGE_OPTS,
		   .handler_threads = handlers,
		   .stripe_bytes = handlers > 1 ? t_ps : 0);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_thread_blocktime t[4];
	struct luffd_stats st;
	struct luffd_store *s;
	struct toucher a, b;
	struct slow sl;
	char *m = t_anon(len);
	uint64_t wall;
	double t0;

	NEED_TIDS();
	slow_init(&sl, 20000, 2);
	s = slow_store(&sl);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	t0 = t_now_s();
	touch_start(&a, m, 4, 1, 1);
	touch_start(&b, m, 5, 1, 1);
	touch_join(&a);
	touch_join(&b);
	t_stats(ctx, &st);
	wall = (uint64_t)((t_now_s() - t0) * 1e9);
	t_assert_page(m, 4, 0, UINT64_MAX, SEED);
	t_assert_page(m, 5, 0, UINT64_MAX, SEED);
	ck_assert_int_eq(luffd_blocktime_threads(ctx, t, 4), 2);
	ck_assert_uint_ne(t[0].tid, t[1].tid);
	ck_assert_uint_eq(t[0].faults + t[1].faults, 2);
	ck_assert_uint_eq(st.blocktime_threads_seen, 2);
	ck_assert_uint_eq(st.blocktime_all_threads, 2);
	ck_assert_uint_ge(st.blocktime_all_ns, 20 * MS);
	ck_assert_uint_le(st.blocktime_all_ns, st.blocktime_any_ns);
	ck_assert_uint_le(st.blocktime_any_ns, st.blocktime_sum_ns);
	ck_assert_uint_le(st.blocktime_any_ns, wall);
	ck_assert_uint_le(st.blocktime_sum_ns, 2 * wall);
	ck_assert_uint_eq(st.blocktime_sum_ns, t[0].blocked_ns + t[1].blocked_ns);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
}

START_TEST(all_blocked_one_handler)
{
	both_blocked(1);
}
END_TEST

START_TEST(all_blocked_two_handlers)
{
	both_blocked(2);
}
END_TEST

/* A thread blocked right now counts up to now, and goes on counting. */
START_TEST(open_interval_counts_now)
{
	const size_t len = 8 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, ONE_PAGE_OPTS);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_thread_blocktime t1, t2, t3;
	struct luffd_stats st;
	struct luffd_store *s;
	struct toucher a;
	struct slow sl;
	char *m = t_anon(len);

	NEED_TIDS();
	slow_init(&sl, 0, 0);
	sl.hold = true;
	s = slow_store(&sl);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	touch_start(&a, m, 3, 1, 1);
	slow_wait_started(&sl, 1);
	usleep(30000);
	memset(&st, 0, sizeof(st));
	st.sz = sizeof(st);
	ck_assert_int_eq(luffd_stats_get(ctx, &st), 0);
	ck_assert_int_eq(luffd_blocktime_threads(ctx, &t1, 1), 1);
	ck_assert_uint_eq(t1.blocked_now, 1);
	ck_assert_uint_ge(t1.blocked_ns, 30 * MS);
	ck_assert_uint_eq(st.blocktime_blocked_now, 1);
	ck_assert_uint_ge(st.blocktime_any_ns, 30 * MS);
	ck_assert_uint_ge(st.blocktime_all_ns, 30 * MS);
	ck_assert_uint_ge(st.blocktime_sum_ns, 30 * MS);
	usleep(20000);
	ck_assert_int_eq(luffd_blocktime_threads(ctx, &t2, 1), 1);
	ck_assert_uint_eq(t2.blocked_now, 1);
	ck_assert_uint_ge(t2.blocked_ns, t1.blocked_ns + 20 * MS);
	slow_release(&sl);
	touch_join(&a);
	t_stats(ctx, &st);
	ck_assert_int_eq(luffd_blocktime_threads(ctx, &t3, 1), 1);
	ck_assert_uint_eq(t3.blocked_now, 0);
	ck_assert_uint_ge(t3.blocked_ns, t2.blocked_ns);
	ck_assert_uint_eq(st.blocktime_blocked_now, 0);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
}
END_TEST

/* Without UFFD_FEATURE_THREAD_ID: nothing per thread, all 0, any still
 * counted, the distribution too. */
START_TEST(no_thread_ids)
{
	const size_t len = 16 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, ONE_PAGE_OPTS,
		   .disable_features = UFFD_FEATURE_THREAD_ID);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_features, f);
	struct luffd_thread_blocktime t[2];
	struct luffd_stats st;
	struct luffd_store *s;
	struct toucher a;
	struct slow sl;
	char *m = t_anon(len);

	ck_assert_int_eq(luffd_ctx_features(ctx, &f), 0);
	ck_assert_int_eq(f.has_thread_id, 0);
	slow_init(&sl, 1000, 0);
	s = slow_store(&sl);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	touch_start(&a, m, 0, 5, 1);
	touch_join(&a);
	t_stats(ctx, &st);
	ck_assert_uint_eq(t_total_faults(&st), 5);
	ck_assert_int_eq(luffd_blocktime_threads(ctx, t, 2), 0);
	ck_assert_uint_eq(st.blocktime_threads_seen, 0);
	ck_assert_uint_eq(st.blocktime_sum_ns, 0);
	ck_assert_uint_eq(st.blocktime_all_ns, 0);
	ck_assert_uint_ge(st.blocktime_any_ns, 5 * MS);
	ck_assert_uint_eq(st.blocktime_blocked_now, 0);
	ck_assert_uint_eq(dist_sum(&st), 5);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
}
END_TEST

/* Many threads on two handler threads over a memory store: every fault
 * counted once per thread, the views consistent, the distribution the
 * trace's. */
START_TEST(many_threads_two_handlers)
{
	const size_t nt = 4, per = t_size(256, 64), pages = nt * per;
	const size_t len = pages * t_ps;
	struct t_rec rec;
	LUFFD_OPTS(luffd_ctx_opts, o, ONE_PAGE_OPTS, .handler_threads = 2,
		   .stripe_bytes = 4 * t_ps, .trace_fn = t_rec_fn,
		   .trace_arg = &rec);
	struct luffd_thread_blocktime t[8];
	struct luffd_stats st;
	struct luffd_ctx *ctx;
	struct luffd_store *s;
	struct toucher w[4];
	char *src = t_anon(len), *m = t_anon(len);
	uint64_t faults = 0, sum = 0;
	int n;

	NEED_TIDS();
	t_rec_init(&rec, pages + 16);
	ctx = t_ctx(&o);
	t_pattern(src, 0, len, SEED);
	ck_assert_int_eq(luffd_store_memory(src, len, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	for (size_t i = 0; i < nt; i++)
		touch_start(&w[i], m, i, per, nt);
	for (size_t i = 0; i < nt; i++)
		touch_join(&w[i]);
	t_stats(ctx, &st);
	for (size_t i = 0; i < pages; i++)
		t_assert_page(m, i, 0, len, SEED);
	n = luffd_blocktime_threads(ctx, t, 8);
	ck_assert_int_eq(n, (int)nt);
	for (int i = 0; i < n; i++) {
		faults += t[i].faults;
		sum += t[i].blocked_ns;
		ck_assert_uint_eq(t[i].blocked_now, 0);
	}
	ck_assert_uint_eq(faults, pages);
	ck_assert_uint_eq(t_total_faults(&st), pages);
	ck_assert_uint_eq(st.blocktime_sum_ns, sum);
	ck_assert_uint_le(st.blocktime_max_ns, sum);
	ck_assert_uint_gt(st.blocktime_any_ns, 0);
	ck_assert_uint_le(st.blocktime_all_ns, st.blocktime_any_ns);
	ck_assert_uint_le(st.blocktime_any_ns, sum);
	dist_matches_trace(&st, &rec);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	t_rec_free(&rec);
	munmap(m, len);
	munmap(src, len);
}
END_TEST

/* More threads than the table holds, one after the other: the first
 * LUFFD_BLOCKTIME_MAX_THREADS are kept, the faults of the rest counted as
 * untracked, and every fault is still in the distribution. */
START_TEST(table_full)
{
	const size_t nt = LUFFD_BLOCKTIME_MAX_THREADS + 6;
	const size_t len = nt * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, ONE_PAGE_OPTS);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_thread_blocktime *t;
	struct luffd_stats st;
	struct luffd_store *s;
	struct toucher w;
	char *src = t_anon(len), *m = t_anon(len);
	uint64_t tracked = 0;
	int n;

	NEED_TIDS();
	t_pattern(src, 0, len, SEED);
	ck_assert_int_eq(luffd_store_memory(src, len, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	for (size_t i = 0; i < nt; i++) {
		touch_start(&w, m, i, 1, 1);
		touch_join(&w);
	}
	t_stats(ctx, &st);
	ck_assert_uint_eq(t_total_faults(&st), nt);
	ck_assert_uint_eq(dist_sum(&st), nt);
	ck_assert_uint_eq(st.blocktime_threads_seen,
			  LUFFD_BLOCKTIME_MAX_THREADS);
	t = calloc(nt, sizeof(*t));
	ck_assert_ptr_nonnull(t);
	n = luffd_blocktime_threads(ctx, t, nt);
	ck_assert_int_eq(n, LUFFD_BLOCKTIME_MAX_THREADS);
	for (int i = 0; i < n; i++)
		tracked += t[i].faults;
	/* A thread id reused by the kernel counts as the thread it was. */
	ck_assert_uint_eq(tracked + st.blocktime_untracked, nt);
	ck_assert_uint_ge(st.blocktime_untracked, 1);
	free(t);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
	munmap(src, len);
}
END_TEST

/* Bad arguments, the count alone, a short array. */
START_TEST(bad_args_and_short_array)
{
	const size_t len = 16 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, ONE_PAGE_OPTS);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_thread_blocktime t[2];
	struct luffd_store *s;
	struct toucher a, b;
	char *src = t_anon(len), *m = t_anon(len);

	NEED_TIDS();
	ck_assert_int_eq(luffd_blocktime_threads(NULL, t, 2), -EINVAL);
	ck_assert_int_eq(luffd_blocktime_threads(NULL, NULL, 0), -EINVAL);
	ck_assert_int_eq(luffd_blocktime_threads(ctx, NULL, 1), -EINVAL);
	ck_assert_int_eq(luffd_blocktime_threads(ctx, NULL, 0), 0);
	t_pattern(src, 0, len, SEED);
	ck_assert_int_eq(luffd_store_memory(src, len, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	touch_start(&a, m, 0, 2, 1);
	touch_join(&a);
	touch_start(&b, m, 2, 2, 1);
	touch_join(&b);
	ck_assert_int_eq(luffd_ctx_sync(ctx), 0);
	ck_assert_int_eq(luffd_blocktime_threads(ctx, NULL, 0), 2);
	memset(t, 0xa5, sizeof(t));
	ck_assert_int_eq(luffd_blocktime_threads(ctx, t, 1), 2);
	ck_assert_uint_eq(t[0].tid, (uint32_t)atomic_load(&a.tid));
	ck_assert_uint_eq(t[0].faults, 2);
	ck_assert_uint_eq(t[1].tid, 0xa5a5a5a5u); /* untouched */
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
	munmap(src, len);
}
END_TEST

/* Callers built before these fields: a luffd_stats that ends before them
 * gets what fits and nothing past its sz; a luffd_ctx_opts that ends
 * before blocktime_threads never has it read, whatever its memory holds
 * there; the option is checked. */
START_TEST(old_sizes)
{
	const size_t len = 8 * t_ps;
	union {
		struct luffd_stats s;
		unsigned char b[sizeof(struct luffd_stats)];
	} u;
	const size_t old = offsetof(struct luffd_stats, blocktime_threads_seen);
	const size_t mid = offsetof(struct luffd_stats, latency_dist);
	LUFFD_OPTS(luffd_ctx_opts, o, ONE_PAGE_OPTS, .reserved0 = 0xdead,
		   .blocktime_threads = 7);
	struct luffd_ctx *ctx = NULL;
	struct luffd_stats st;
	struct luffd_store *s;
	struct toucher a;
	char *src = t_anon(len), *m = t_anon(len);

	NEED_TIDS();
	o.sz = offsetof(struct luffd_ctx_opts, reserved0);
	ctx = t_ctx(&o);
	t_pattern(src, 0, len, SEED);
	ck_assert_int_eq(luffd_store_memory(src, len, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	touch_start(&a, m, 0, 3, 1);
	touch_join(&a);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.blocktime_all_threads, 1); /* not 7 */

	memset(&u, 0xa5, sizeof(u));
	u.s.sz = old;
	ck_assert_int_eq(luffd_stats_get(ctx, &u.s), 0);
	ck_assert_uint_eq(t_total_faults(&u.s), 3);
	for (size_t i = old; i < sizeof(u); i++)
		ck_assert_msg(u.b[i] == 0xa5, "byte %zu past sz %zu written",
			      i, old);
	memset(&u, 0xa5, sizeof(u));
	u.s.sz = mid;
	ck_assert_int_eq(luffd_stats_get(ctx, &u.s), 0);
	ck_assert_uint_eq(u.s.blocktime_threads_seen, 1);
	for (size_t i = mid; i < sizeof(u); i++)
		ck_assert_uint_eq(u.b[i], 0xa5);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
	munmap(src, len);

	/* The whole struct: the option is read, reserved0 is not. */
	o.sz = sizeof(o);
	ctx = t_ctx(&o);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.blocktime_all_threads, 7);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	o.blocktime_threads = LUFFD_BLOCKTIME_MAX_THREADS + 1;
	ctx = (void *)1;
	ck_assert_int_eq(luffd_ctx_create(&o, &ctx), -EINVAL);
	ck_assert_ptr_null(ctx);
	o.blocktime_threads = LUFFD_BLOCKTIME_MAX_THREADS;
	ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("blocktime");
	TCase *u = t_tcase(s, "accounting");
	TCase *f = t_tcase(s, "faults");

	tcase_add_test(u, unit_two_threads);
	tcase_add_test(u, unit_qemu_example);
	tcase_add_test(u, unit_overlap_late_want);
	tcase_add_test(u, unit_open_interval);
	tcase_add_test(u, unit_table_full);
	tcase_add_test(u, unit_anon_and_forget);
	tcase_add_test(u, unit_dist_buckets);
	tcase_add_test(f, one_thread_slow_faults);
	tcase_add_test(f, only_one_of_two_faults);
	tcase_add_test(f, all_blocked_one_handler);
	tcase_add_test(f, all_blocked_two_handlers);
	tcase_add_test(f, open_interval_counts_now);
	tcase_add_test(f, no_thread_ids);
	tcase_add_test(f, many_threads_two_handlers);
	tcase_add_test(f, table_full);
	tcase_add_test(f, bad_args_and_short_array);
	tcase_add_test(f, old_sizes);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
