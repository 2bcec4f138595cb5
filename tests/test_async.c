/* SPDX-License-Identifier: MIT */
/*
 * Asynchronous stores: requests answered later by other threads, out of
 * order, as holes or errors, never (a hung store), twice, or after a
 * cancel; many in flight at once; every misuse of luffd_request_complete()
 * refused without effect.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAXQ 256

enum mode {
	M_HOLD,    /* keep requests until the test answers them */
	M_DELAY,   /* a server thread answers each after delay_us */
	M_INLINE,  /* answered inside read() */
};

struct held {
	uint64_t id, off, len;
	const struct iovec *iov;
	int iovcnt;
	uint64_t due;
};

struct srv {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	_Atomic enum mode mode;
	uint64_t seed, delay_us;
	struct luffd_store *store;
	struct held q[MAXQ];
	int n;
	bool stop;
	pthread_t thread;
	/* Answers: data, except these. */
	uint64_t hole_off, err_off;
	/* Counts. */
	_Atomic int reads, cancels, destroyed, outstanding, max_outstanding;
	_Atomic int bad_answers; /* complete() refused a valid answer */
};

/* Write the answer to h into its buffers; returns the result to send. */
static ssize_t fill(struct srv *s, const struct held *h)
{
	uint64_t off = h->off;

	if (h->off == s->err_off)
		return -EIO;
	if (h->off == s->hole_off)
		return 0;
	for (int i = 0; i < h->iovcnt; i++) {
		t_pattern(h->iov[i].iov_base, off, h->iov[i].iov_len, s->seed);
		off += h->iov[i].iov_len;
	}
	return (ssize_t)h->len;
}

static void answer(struct srv *s, const struct held *h)
{
	ssize_t res = fill(s, h);

	atomic_fetch_sub(&s->outstanding, 1);
	if (luffd_request_complete(s->store, h->id, res) != 0)
		atomic_fetch_add(&s->bad_answers, 1);
}

static int srv_read(void *arg, const struct luffd_request *req)
{
	struct srv *s = arg;
	struct held h = { req->id, req->offset, req->len, req->iov,
			  req->iovcnt, 0 };
	int o;

	atomic_fetch_add(&s->reads, 1);
	o = atomic_fetch_add(&s->outstanding, 1) + 1;
	if (o > atomic_load(&s->max_outstanding))
		atomic_store(&s->max_outstanding, o);
	if (s->mode == M_INLINE) {
		answer(s, &h);
		return 0;
	}
	pthread_mutex_lock(&s->lock);
	if (s->n == MAXQ) {
		pthread_mutex_unlock(&s->lock);
		atomic_fetch_sub(&s->outstanding, 1);
		return -ENOBUFS;
	}
	h.due = (uint64_t)(t_now_s() * 1e6) + s->delay_us;
	s->q[s->n++] = h;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static void srv_cancel(void *arg, const struct luffd_request *req)
{
	struct srv *s = arg;

	(void)req;
	atomic_fetch_add(&s->cancels, 1);
}

static void srv_destroy(void *arg)
{
	atomic_fetch_add(&((struct srv *)arg)->destroyed, 1);
}

/* M_DELAY: answer the oldest request once it is due. */
static void *srv_main(void *arg)
{
	struct srv *s = arg;

	pthread_mutex_lock(&s->lock);
	while (!s->stop) {
		struct held h;
		uint64_t t;

		if (!s->n) {
			pthread_cond_wait(&s->cv, &s->lock);
			continue;
		}
		t = (uint64_t)(t_now_s() * 1e6);
		if (t < s->q[0].due) {
			pthread_mutex_unlock(&s->lock);
			usleep((useconds_t)(s->q[0].due - t));
			pthread_mutex_lock(&s->lock);
			continue;
		}
		h = s->q[0];
		memmove(s->q, s->q + 1, (size_t)--s->n * sizeof(h));
		pthread_mutex_unlock(&s->lock);
		answer(s, &h);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static const struct luffd_async_ops srv_ops = {
	.sz = sizeof(struct luffd_async_ops),
	.read = srv_read,
	.cancel = srv_cancel,
	.destroy = srv_destroy,
};

static struct srv *srv_new(enum mode mode, uint64_t size, uint64_t seed)
{
	struct srv *s = calloc(1, sizeof(*s));
	struct luffd_async_ops ops = srv_ops;

	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->mode = mode;
	s->seed = seed;
	s->hole_off = s->err_off = UINT64_MAX;
	ops.size = size;
	ck_assert_int_eq(luffd_store_async(&ops, s, &s->store), 0);
	if (mode == M_DELAY)
		ck_assert_int_eq(pthread_create(&s->thread, NULL, srv_main, s),
				 0);
	return s;
}

static void srv_free(struct srv *s)
{
	if (s->mode == M_DELAY) {
		pthread_mutex_lock(&s->lock);
		s->stop = true;
		pthread_cond_broadcast(&s->cv);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->thread, NULL);
	}
	free(s);
}

/* Wait (at most 10 s) until s holds n requests. */
static void wait_held(struct srv *s, int n)
{
	for (int i = 0; i < 10000; i++) {
		pthread_mutex_lock(&s->lock);
		if (s->n >= n) {
			pthread_mutex_unlock(&s->lock);
			return;
		}
		pthread_mutex_unlock(&s->lock);
		usleep(1000);
	}
	ck_abort_msg("the store never held %d requests", n);
}

/* Take held request i (M_HOLD). */
static struct held take(struct srv *s, int i)
{
	struct held h;

	pthread_mutex_lock(&s->lock);
	ck_assert_int_lt(i, s->n);
	h = s->q[i];
	memmove(s->q + i, s->q + i + 1, (size_t)(s->n - i - 1) * sizeof(h));
	s->n--;
	pthread_mutex_unlock(&s->lock);
	return h;
}

struct answerer {
	struct srv *s;
	struct held h;
};

static void *answer_main(void *arg)
{
	struct answerer *a = arg;

	answer(a->s, &a->h);
	return NULL;
}

/* Answer h from a new thread, and wait for it. */
static void answer_in_thread(struct srv *s, const struct held *h)
{
	struct answerer a = { s, *h };
	pthread_t t;

	ck_assert_int_eq(pthread_create(&t, NULL, answer_main, &a), 0);
	pthread_join(t, NULL);
}

/* ---- answers from other threads, out of order ----------------------- */

START_TEST(out_of_order_from_other_threads)
{
	const int n = 8;
	const size_t len = (size_t)n * 16 * t_ps; /* 16-page windows apart */
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct srv *s = srv_new(M_HOLD, len, 0x51);
	struct t_reader r[8];
	LUFFD_OPTS(luffd_stats, st);
	char *m = t_anon(len);

	ck_assert_int_eq(luffd_register(ctx, m, len, s->store, 0, 0), 0);
	for (int i = 0; i < n; i++)
		t_reader_start(&r[i], m + (size_t)i * 16 * t_ps);
	/* Every fault has its own request in flight at once. */
	wait_held(s, n);
	ck_assert_int_eq(atomic_load(&s->max_outstanding), n);
	/* Answered newest first, each from a thread of its own. */
	for (int i = n - 1; i >= 0; i--) {
		struct held h = take(s, i);

		ck_assert_uint_eq(h.len, t_ps);
		answer_in_thread(s, &h);
	}
	for (int i = 0; i < n; i++) {
		t_reader_join(&r[i]);
		ck_assert_int_eq(r[i].sig, 0);
		t_assert_page(m, (size_t)i * 16, 0, len, 0x51);
	}
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR], n);
	ck_assert_uint_eq(st.reads, n);
	ck_assert_int_eq(atomic_load(&s->bad_answers), 0);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	luffd_store_put(s->store);
	ck_assert_int_eq(atomic_load(&s->destroyed), 1);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	srv_free(s);
	munmap(m, len);
}
END_TEST

/* ---- many in flight, answered by a server after a delay ------------- */

START_TEST(overlapping_fetches)
{
	const int nthr = 16, per = 8;
	const size_t len = (size_t)nthr * per * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct srv *s = srv_new(M_DELAY, len, 0x52);
	struct t_reader r[16];
	LUFFD_OPTS(luffd_stats, st);
	char *m = t_anon(len);
	double t0;

	s->delay_us = 20000;
	ck_assert_int_eq(luffd_register(ctx, m, len, s->store, 0, 0), 0);
	t0 = t_now_s();
	/* Each thread reads its pages in turn: 8 round trips each. */
	for (int k = 0; k < per; k++) {
		for (int i = 0; i < nthr; i++)
			t_reader_start(&r[i], m + ((size_t)i * per + k) * t_ps);
		for (int i = 0; i < nthr; i++) {
			t_reader_join(&r[i]);
			ck_assert_int_eq(r[i].sig, 0);
		}
	}
	/* One fetch at a time would take 128 x 20 ms = 2.6 s. */
	ck_assert_msg(atomic_load(&s->max_outstanding) >= nthr / 2,
		      "at most %d requests were in flight at once",
		      atomic_load(&s->max_outstanding));
	ck_assert_msg(t_now_s() - t0 < 1.5, "took %.2f s", t_now_s() - t0);
	for (size_t p = 0; p < len / t_ps; p++)
		t_assert_page(m, p, 0, len, 0x52);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR], (uint64_t)nthr * per);
	ck_assert_int_eq(atomic_load(&s->bad_answers), 0);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	luffd_store_put(s->store);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	srv_free(s);
	munmap(m, len);
}
END_TEST

/* ---- answered inside read(), read-ahead windows, holes, errors ------ */

START_TEST(inline_answers_windows_holes_errors)
{
	const size_t len = 64 * t_ps;
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct srv *s = srv_new(M_INLINE, len, 0x53);
	LUFFD_OPTS(luffd_stats, st);
	char *m = t_anon(len);
	int code;

	s->hole_off = 40 * t_ps;
	s->err_off = 50 * t_ps;
	ck_assert_int_eq(luffd_register(ctx, m, len, s->store, 0, 0), 0);
	/* A hole reads as zeroes, without an error: the first miss asks for
	 * a window of 4 pages at 40, answered 0 (the first page holds no
	 * data); its other pages are asked for again when touched. */
	ck_assert_int_eq(t_touch_sig(m + 40 * t_ps, 0, NULL, NULL, NULL), 0);
	for (size_t i = 0; i < t_ps; i++)
		ck_assert_int_eq(m[40 * t_ps + i], 0);
	t_assert_page(m, 41, 0, len, 0x53);
	/* An error is SIGBUS for that page (a random miss: alone). */
	ck_assert_int_eq(t_touch_sig(m + 50 * t_ps, 0, &code, NULL, NULL),
			 SIGBUS);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ZERO], 1);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 1);
	/* A sequential pass: windows grow, read ahead in the background. */
	for (size_t p = 0; p < 32; p++)
		t_assert_page(m, p, 0, len, 0x53);
	t_stats(ctx, &st);
	ck_assert_uint_lt(st.reads, 16);
	ck_assert_uint_gt(st.readahead_pages, 0);
	t_assert_page(m, 51, 0, len, 0x53);
	ck_assert_int_eq(atomic_load(&s->bad_answers), 0);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	luffd_store_put(s->store);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	srv_free(s);
	munmap(m, len);
}
END_TEST

/* ---- a store that never answers ------------------------------------- */

START_TEST(hung_store_times_out)
{
	const size_t len = 16 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 200,
		   .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct srv *s = srv_new(M_HOLD, len, 0x54);
	struct t_reader r[4];
	LUFFD_OPTS(luffd_stats, st);
	char *m = t_anon(len);
	struct held h;
	double t0;

	ck_assert_int_eq(luffd_register(ctx, m, len, s->store, 0, 0), 0);
	t0 = t_now_s();
	/* Two threads on one page (one request), two on others. */
	t_reader_start(&r[0], m);
	t_reader_start(&r[1], m);
	t_reader_start(&r[2], m + t_ps);
	t_reader_start(&r[3], m + 2 * t_ps);
	for (int i = 0; i < 4; i++) {
		t_reader_join(&r[i]);
		ck_assert_int_eq(r[i].sig, SIGBUS);
	}
	ck_assert_msg(t_now_s() - t0 < 2.0, "SIGBUS after %.2f s", t_now_s() - t0);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 4);
	ck_assert_uint_eq(st.read_timeouts, 3);
	ck_assert_uint_eq(st.requests_cancelled, 3);
	ck_assert_int_eq(atomic_load(&s->cancels), 3);
	/* A late answer is refused and changes nothing: the page stays
	 * poisoned until dropped... */
	h = take(s, 0);
	ck_assert_int_eq(luffd_request_complete(s->store, h.id, (ssize_t)h.len),
			 -EINVAL);
	ck_assert_int_eq(luffd_request_complete(s->store, h.id, (ssize_t)h.len),
			 -EINVAL);
	ck_assert_int_eq(t_touch_sig(m + h.off, 0, NULL, NULL, NULL), SIGBUS);
	/* ...and then served afresh by a store that answers now. */
	s->mode = M_INLINE;
	ck_assert_int_eq(madvise(m + h.off, t_ps, MADV_DONTNEED), 0);
	t_assert_page(m, h.off / t_ps, 0, len, 0x54);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.late_completions, 1);
	/* The other two are still out: these return all the same. */
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s->store);
	/* Their requests keep the store until they are answered. */
	ck_assert_int_eq(atomic_load(&s->destroyed), 0);
	for (int i = 0; i < 2; i++) {
		h = take(s, 0);
		/* The buffers are still there to write into. */
		memset(h.iov[0].iov_base, 0x5a, h.iov[0].iov_len);
		ck_assert_int_eq(luffd_request_complete(s->store, h.id, 0),
				 -EINVAL);
	}
	ck_assert_int_eq(atomic_load(&s->destroyed), 1);
	srv_free(s);
	munmap(m, len);
}
END_TEST

/* A request nobody waits for any more is cancelled at once: removing its
 * region does not wait for read_timeout_ms. */
START_TEST(teardown_cancels)
{
	const size_t len = 16 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 60000);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct srv *s = srv_new(M_HOLD, len, 0x55);
	struct t_reader r;
	char *m = t_anon(len);
	struct held h;
	double t0;

	ck_assert_int_eq(luffd_register(ctx, m, len, s->store, 0, 0), 0);
	t_reader_start(&r, m + 3 * t_ps);
	wait_held(s, 1);
	t0 = t_now_s();
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_msg(t_now_s() - t0 < 2.0, "unregister took %.2f s",
		      t_now_s() - t0);
	t_reader_join(&r);
	ck_assert_int_eq(r.sig, 0); /* ordinary memory now: zeroes */
	ck_assert_int_eq(atomic_load(&s->cancels), 1);
	h = take(s, 0);
	ck_assert_int_eq(luffd_request_complete(s->store, h.id, (ssize_t)h.len),
			 -EINVAL);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s->store);
	ck_assert_int_eq(atomic_load(&s->destroyed), 1);
	srv_free(s);
	munmap(m, len);
}
END_TEST

/* ---- misuse ---------------------------------------------------------- */

static int noop_read(void *arg, const struct luffd_request *req)
{
	(void)arg;
	(void)req;
	return 0;
}

START_TEST(complete_misuse)
{
	const size_t len = 16 * t_ps;
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct srv *s = srv_new(M_HOLD, len, 0x56), *s2 = srv_new(M_HOLD, len, 1);
	struct luffd_store *fs = NULL;
	struct t_reader r;
	char *m = t_anon(len);
	struct held h;

	ck_assert_int_eq(luffd_register(ctx, m, len, s->store, 0, 0), 0);
	t_reader_start(&r, m);
	wait_held(s, 1);
	h = take(s, 0);
	/* Refused, changing nothing. */
	ck_assert_int_eq(luffd_request_complete(NULL, h.id, 0), -EINVAL);
	ck_assert_int_eq(luffd_request_complete(s2->store, h.id, 0), -EINVAL);
	ck_assert_int_eq(luffd_request_complete(s->store, h.id,
						(ssize_t)h.len + 1), -EINVAL);
	ck_assert_int_eq(luffd_request_complete(s->store, h.id, -5000),
			 -EINVAL);
	ck_assert_int_eq(luffd_request_complete(s->store, h.id + (1ull << 22),
						0), -EINVAL);
	ck_assert_int_eq(luffd_request_complete(s->store, 0, 0), -EINVAL);
	ck_assert_int_eq(luffd_request_complete(s->store, UINT64_MAX, 0),
			 -EINVAL);
	ck_assert_int_eq(luffd_request_complete(s->store, 12345, 0), -EINVAL);
	ck_assert_int_eq(luffd_store_memory(m, len, &fs), 0);
	ck_assert_int_eq(luffd_request_complete(fs, h.id, 0), -EINVAL);
	luffd_store_put(fs);
	ck_assert_int_eq(atomic_load(&r.done), 0); /* still waiting */
	/* The real answer works; a second one is refused. */
	ck_assert_int_eq(fill(s, &h), (ssize_t)h.len);
	ck_assert_int_eq(luffd_request_complete(s->store, h.id, (ssize_t)h.len),
			 0);
	ck_assert_int_eq(luffd_request_complete(s->store, h.id, (ssize_t)h.len),
			 -EINVAL);
	t_reader_join(&r);
	ck_assert_int_eq(r.sig, 0);
	t_assert_page(m, 0, 0, len, 0x56);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	luffd_store_put(s->store);
	luffd_store_put(s2->store);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	srv_free(s);
	srv_free(s2);
	munmap(m, len);
}
END_TEST

START_TEST(create_validation)
{
	struct luffd_store *st = (struct luffd_store *)&st;
	struct {
		struct luffd_async_ops ops;
		uint64_t extra;
	} big = { .ops = { .sz = sizeof(big), .read = noop_read, .size = 1 } };
	LUFFD_OPTS(luffd_async_ops, ops, .read = noop_read, .size = t_ps);

	ck_assert_int_eq(luffd_store_async(NULL, NULL, &st), -EINVAL);
	ck_assert_ptr_null(st);
	ck_assert_int_eq(luffd_store_async(&ops, NULL, NULL), -EINVAL);
	ops.read = NULL;
	st = (struct luffd_store *)&st;
	ck_assert_int_eq(luffd_store_async(&ops, NULL, &st), -EINVAL);
	ck_assert_ptr_null(st);
	ops.read = noop_read;
	ops.size = 0;
	ck_assert_int_eq(luffd_store_async(&ops, NULL, &st), -EINVAL);
	ops.size = t_ps;
	ops.sz = offsetof(struct luffd_async_ops, size);
	ck_assert_int_eq(luffd_store_async(&ops, NULL, &st), -EINVAL);
	/* A larger struct from a newer caller: fine while its tail is 0. */
	ck_assert_int_eq(luffd_store_async(&big.ops, NULL, &st), 0);
	ck_assert_uint_eq(luffd_store_size(st), 1);
	luffd_store_put(st);
	big.extra = 1;
	ck_assert_int_eq(luffd_store_async(&big.ops, NULL, &st), -EINVAL);
	ck_assert_ptr_null(st);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("async");
	TCase *tc = t_tcase(s, "async");

	tcase_add_test(tc, out_of_order_from_other_threads);
	tcase_add_test(tc, overlapping_fetches);
	tcase_add_test(tc, inline_answers_windows_holes_errors);
	tcase_add_test(tc, hung_store_times_out);
	tcase_add_test(tc, teardown_cancels);
	tcase_add_test(tc, complete_misuse);
	tcase_add_test(tc, create_validation);
	return s;
}

int main(void)
{
	return t_main(make, 1);
}
