/* SPDX-License-Identifier: MIT */
/*
 * Callback stores on the worker pool: fill() calls overlap up to
 * callback_threads (and one at a time with 1), a fill() that never
 * returns times out and does not block teardown, and destroy() waits for
 * the last fill() to return.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SEED 0x6c

struct cb {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	int started, inflight, max_inflight;
	int gate;          /* a fill() waits until started >= gate ... */
	double gate_s;     /* ... or this long */
	uint64_t block_off; /* a fill() of this offset waits for release */
	bool release;
	_Atomic int fills, destroyed, block_returned;
	_Atomic int wrote_late; /* the blocked fill() wrote its buffer */
};

static void cb_init(struct cb *c, int gate, double gate_s)
{
	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cv, NULL);
	c->gate = gate;
	c->gate_s = gate_s;
	c->block_off = UINT64_MAX;
}

static void deadline(struct timespec *ts, double s)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += (time_t)s;
	ts->tv_nsec += (long)((s - (double)(time_t)s) * 1e9);
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static ssize_t fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct cb *c = arg;
	struct timespec dl;

	atomic_fetch_add(&c->fills, 1);
	pthread_mutex_lock(&c->lock);
	c->started++;
	if (++c->inflight > c->max_inflight)
		c->max_inflight = c->inflight;
	pthread_cond_broadcast(&c->cv);
	deadline(&dl, c->gate_s);
	while (c->started < c->gate &&
	       pthread_cond_timedwait(&c->cv, &c->lock, &dl) == 0)
		;
	if (off == c->block_off) {
		while (!c->release)
			pthread_cond_wait(&c->cv, &c->lock);
	}
	pthread_mutex_unlock(&c->lock);
	/* After a timeout the buffer is still libuffd's to give: writing
	 * it must be safe (ASan checks). */
	t_pattern(buf, off, len, SEED);
	if (off == c->block_off)
		atomic_store(&c->wrote_late, 1);
	pthread_mutex_lock(&c->lock);
	c->inflight--;
	pthread_mutex_unlock(&c->lock);
	if (off == c->block_off)
		atomic_store(&c->block_returned, 1);
	return (ssize_t)len;
}

static void destroy(void *arg)
{
	struct cb *c = arg;

	/* Never before the blocked fill() has returned. */
	ck_assert_int_eq(c->block_off == UINT64_MAX ||
			 atomic_load(&c->block_returned), 1);
	atomic_fetch_add(&c->destroyed, 1);
}

static struct luffd_store *cb_store(struct cb *c)
{
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = fill, .destroy = destroy,
		   .size = UINT64_MAX);
	struct luffd_store *s;

	ck_assert_int_eq(luffd_store_callback(&ops, c, &s), 0);
	return s;
}

static void wait_started(struct cb *c, int n)
{
	struct timespec dl;

	deadline(&dl, 10);
	pthread_mutex_lock(&c->lock);
	while (c->started < n)
		ck_assert_int_eq(pthread_cond_timedwait(&c->cv, &c->lock, &dl),
				 0);
	pthread_mutex_unlock(&c->lock);
}

static void do_release(struct cb *c)
{
	pthread_mutex_lock(&c->lock);
	c->release = true;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->lock);
}

/* n threads fault on n different pages at once, one page per fill(). */
static int run_readers(unsigned int workers, int n, int gate, double gate_s)
{
	const size_t len = (size_t)n * 4 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .callback_threads = workers,
		   .readahead_bytes = LUFFD_NO_READAHEAD,
		   .install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct t_reader r[16];
	LUFFD_OPTS(luffd_stats, st);
	struct cb c;
	struct luffd_store *s;
	char *m = t_anon(len);

	ck_assert_int_le(n, 16);
	cb_init(&c, gate, gate_s);
	s = cb_store(&c);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	for (int i = 0; i < n; i++)
		t_reader_start(&r[i], m + (size_t)i * 4 * t_ps);
	for (int i = 0; i < n; i++) {
		t_reader_join(&r[i]);
		ck_assert_int_eq(r[i].sig, 0);
		t_assert_page(m, (size_t)i * 4, 0, UINT64_MAX, SEED);
	}
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR], (uint64_t)n);
	ck_assert_int_eq(atomic_load(&c.fills), n);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	ck_assert_int_eq(atomic_load(&c.destroyed), 1);
	munmap(m, len);
	return c.max_inflight;
}

/* Every fill() waits until all n have started: only a pool that runs n at
 * once lets them through before the 10 s gate. */
START_TEST(fills_overlap)
{
	const int n = t_small() ? 4 : 8;

	ck_assert_int_eq(run_readers((unsigned int)n, n, n, 10.0), n);
}
END_TEST

/* callback_threads = 1: one fill() at a time, whatever the faults. */
START_TEST(one_worker_serializes)
{
	ck_assert_int_eq(run_readers(1, 4, 2, 0.1), 1);
}
END_TEST

/* A fill() that never returns: its fault gets SIGBUS after the timeout,
 * other pages are served meanwhile, teardown returns while it is still
 * inside, and destroy() runs once it has returned. */
START_TEST(hung_fill_times_out)
{
	const size_t len = 16 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 200,
		   .readahead_bytes = LUFFD_NO_READAHEAD,
		   .install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct t_reader r;
	struct luffd_store *s;
	struct cb c;
	char *m = t_anon(len);
	double t0;

	cb_init(&c, 0, 0);
	c.block_off = 5 * t_ps;
	s = cb_store(&c);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	t0 = t_now_s();
	t_reader_start(&r, m + 5 * t_ps);
	wait_started(&c, 1);
	/* The stuck worker holds no one else up. */
	t_assert_page(m, 7, 0, UINT64_MAX, SEED);
	t_reader_join(&r);
	ck_assert_int_eq(r.sig, SIGBUS);
	ck_assert_msg(t_now_s() - t0 < 5.0, "SIGBUS after %.2f s",
		      t_now_s() - t0);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 1);
	ck_assert_uint_eq(st.read_timeouts, 1);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	ck_assert_int_eq(atomic_load(&c.block_returned), 0);
	ck_assert_int_eq(atomic_load(&c.destroyed), 0);
	do_release(&c);
	for (int i = 0; i < 1000 && !atomic_load(&c.destroyed); i++)
		usleep(10000);
	ck_assert_int_eq(atomic_load(&c.wrote_late), 1);
	ck_assert_int_eq(atomic_load(&c.destroyed), 1);
	munmap(m, len);
}
END_TEST

/* No timeout at all: destroying the context wakes the faulting thread
 * (ordinary memory again: zeroes) without waiting for the fill(). */
START_TEST(destroy_with_fill_inside)
{
	const size_t len = 16 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = LUFFD_NO_TIMEOUT,
		   .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct t_reader r;
	struct luffd_store *s;
	struct cb c;
	char *m = t_anon(len);

	cb_init(&c, 0, 0);
	c.block_off = 2 * t_ps;
	s = cb_store(&c);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	t_reader_start(&r, m + 2 * t_ps);
	wait_started(&c, 1);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	t_reader_join(&r);
	ck_assert_int_eq(r.sig, 0);
	ck_assert_int_eq(m[2 * t_ps], 0);
	luffd_store_put(s);
	ck_assert_int_eq(atomic_load(&c.destroyed), 0);
	do_release(&c);
	for (int i = 0; i < 1000 && !atomic_load(&c.destroyed); i++)
		usleep(10000);
	ck_assert_int_eq(atomic_load(&c.destroyed), 1);
	munmap(m, len);
}
END_TEST

/* LUFFD_REGISTER_SEAL_UNSERVED: after the unregister, pages never served
 * are inaccessible (a blocked thread and a later touch get SIGSEGV),
 * served ones keep their data; without it they read as zeroes. */
static void unregister_with(unsigned int flags)
{
	const size_t len = 16 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = LUFFD_NO_TIMEOUT,
		   .readahead_bytes = LUFFD_NO_READAHEAD,
		   .install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	bool seal = flags & LUFFD_REGISTER_SEAL_UNSERVED;
	struct t_reader r;
	struct luffd_store *s;
	struct cb c;
	char *m = t_anon(len);

	cb_init(&c, 0, 0);
	c.block_off = 9 * t_ps;
	s = cb_store(&c);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, flags), 0);
	t_assert_page(m, 2, 0, UINT64_MAX, SEED);
	t_reader_start(&r, m + 9 * t_ps);
	wait_started(&c, 2);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	t_reader_join(&r);
	ck_assert_int_eq(r.sig, seal ? SIGSEGV : 0);
	t_assert_page(m, 2, 0, UINT64_MAX, SEED);
	m[2 * t_ps] = 1; /* still writable */
	ck_assert_int_eq(t_touch_sig(m + 5 * t_ps, 0, NULL, NULL, NULL),
			 seal ? SIGSEGV : 0);
	if (!seal)
		ck_assert_int_eq(m[5 * t_ps], 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	do_release(&c);
	for (int i = 0; i < 1000 && !atomic_load(&c.destroyed); i++)
		usleep(10000);
	ck_assert_int_eq(atomic_load(&c.destroyed), 1);
	munmap(m, len);
}

START_TEST(unregister_seals_unserved)
{
	unregister_with(LUFFD_REGISTER_SEAL_UNSERVED);
}
END_TEST

START_TEST(unregister_default_zeroes)
{
	unregister_with(0);
}
END_TEST

START_TEST(register_flags_validated)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *s;
	struct cb c;
	char *m = t_anon(4 * t_ps);

	cb_init(&c, 0, 0);
	s = cb_store(&c);
	ck_assert_int_eq(luffd_register(ctx, m, 4 * t_ps, s, 0, 1u << 6), -EINVAL);
	ck_assert_int_eq(luffd_register(ctx, m, 4 * t_ps, s, 0, ~0u), -EINVAL);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, 4 * t_ps);
}
END_TEST

START_TEST(callback_threads_validated)
{
	LUFFD_OPTS(luffd_ctx_opts, o, .callback_threads = 1025);
	struct luffd_ctx *ctx = (void *)1;

	ck_assert_int_eq(luffd_ctx_create(&o, &ctx), -EINVAL);
	ck_assert_ptr_null(ctx);
	o.callback_threads = 1024;
	ck_assert_int_eq(luffd_ctx_create(&o, &ctx), 0);
	luffd_ctx_destroy(ctx);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("callback");
	TCase *tc = t_tcase(s, "pool");

	tcase_add_test(tc, fills_overlap);
	tcase_add_test(tc, one_worker_serializes);
	tcase_add_test(tc, hung_fill_times_out);
	tcase_add_test(tc, destroy_with_fill_inside);
	tcase_add_test(tc, callback_threads_validated);
	tcase_add_test(tc, unregister_seals_unserved);
	tcase_add_test(tc, unregister_default_zeroes);
	tcase_add_test(tc, register_flags_validated);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
