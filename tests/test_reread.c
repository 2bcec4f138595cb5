/* SPDX-License-Identifier: MIT */
/*
 * A read shared by several faults fails: each waiting fault is read again
 * alone.  The first re-read takes the very slot the failed read had (the
 * free list is last in, first out) and goes on in the background; the next
 * fault must wait for that re-read, not for the failed read, which is still
 * on the in-flight list until it is freed.  (Before the fix the second
 * fault was parked on the failed read: its thread was woken by the
 * re-read's copy, but its record and its hold on the region stayed, and
 * luffd_unregister() then waited forever.)
 *
 * And a read that never completes: past read_timeout_ms its fault gets
 * SIGBUS, and luffd_unregister() and luffd_ctx_destroy() return rather
 * than wait for it (the read is cancelled).
 *
 * White box: a store whose reads come from two pipes the test controls,
 * the window's read from one and single-page re-reads from the other.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "req.h"
#include "store.h"

static int window_pipe[2], page_pipe[2];

static int pipe_read(struct luffd_store *s, struct luffd__req *r)
{
	struct io_uring_sqe *sqe = luffd__req_sqe(r);
	int fd = r->pub.len > t_ps ? window_pipe[0] : page_pipe[0];

	(void)s;
	if (!sqe)
		return -EBUSY;
	io_uring_prep_readv(sqe, fd, r->pub.iov, (unsigned int)r->pub.iovcnt,
			    (uint64_t)-1);
	return 0;
}

static void pipe_done(struct luffd_store *s, struct luffd__req *r, int res)
{
	(void)s;
	luffd__req_complete(r, res);
}

static void pipe_cancel(struct luffd_store *s, struct luffd__req *r)
{
	struct io_uring_sqe *sqe = luffd__sqe(r->cq->ring);

	(void)s;
	if (!sqe)
		return;
	io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)r | LUFFD__TAG_REQ, 0);
	io_uring_sqe_set_data64(sqe, LUFFD__TAG_CANCEL);
}

static const struct luffd__store_ops pipe_ops = {
	.read = pipe_read, .ring_done = pipe_done, .cancel = pipe_cancel,
};

struct toucher {
	pthread_t t;
	volatile char *p;
	char got;
};

static void *touch(void *arg)
{
	struct toucher *w = arg;

	w->got = w->p[0];
	return NULL;
}

/* Wait (at most 5 s) until the stats field at offset `field` reaches n. */
static void wait_stat(struct luffd_ctx *ctx, size_t field, uint64_t n)
{
	LUFFD_OPTS(luffd_stats, st);

	for (int i = 0; i < 5000; i++) {
		ck_assert_int_eq(luffd_stats_get(ctx, &st), 0);
		if (*(uint64_t *)((char *)&st + field) >= n)
			return;
		usleep(1000);
	}
	ck_abort_msg("stats field at %zu never reached %llu", field,
		     (unsigned long long)n);
}

START_TEST(shared_read_fails_then_reread)
{
	const size_t len = 16 * t_ps;
	struct luffd_store *s = luffd__store_new(&pipe_ops, 0, len, NULL);
	struct luffd_ctx *ctx = t_ctx(NULL);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct toucher w[2] = { { .p = mem }, { .p = mem } };
	char *page = malloc(t_ps);
	struct timespec dl;

	ck_assert_ptr_ne(mem, MAP_FAILED);
	ck_assert_int_eq(pipe(window_pipe), 0);
	ck_assert_int_eq(pipe(page_pipe), 0);
	ck_assert_int_eq(luffd_register(ctx, mem, len, s, 0, 0), 0);
	luffd_store_put(s);

	/* Both threads wait on the window's read of page 0. */
	ck_assert_int_eq(pthread_create(&w[0].t, NULL, touch, &w[0]), 0);
	wait_stat(ctx, offsetof(struct luffd_stats, reads), 1);
	ck_assert_int_eq(pthread_create(&w[1].t, NULL, touch, &w[1]), 0);
	wait_stat(ctx, offsetof(struct luffd_stats, coalesced), 1);
	/* The window's read ends with nothing (past the store's end for
	 * it): each waiter is read again alone, from the page pipe. */
	close(window_pipe[1]);
	wait_stat(ctx, offsetof(struct luffd_stats, reads), 2);
	memset(page, 'x', t_ps);
	ck_assert_int_eq(write(page_pipe[1], page, t_ps), (ssize_t)t_ps);
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 10;
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(pthread_timedjoin_np(w[i].t, NULL, &dl), 0);
		ck_assert_int_eq(w[i].got, 'x');
	}
	/* Nothing holds the region any more: this returns (a hang here is
	 * the test's timeout). */
	ck_assert_int_eq(luffd_unregister(ctx, mem, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	close(window_pipe[0]);
	close(page_pipe[0]);
	close(page_pipe[1]);
	munmap(mem, len);
	free(page);
}
END_TEST

START_TEST(stuck_read_does_not_block_teardown)
{
	const size_t len = 16 * t_ps;
	struct luffd_store *s = luffd__store_new(&pipe_ops, 0, len, NULL);
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 200);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_ctx *ctx = t_ctx(&o);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int code;

	ck_assert_ptr_ne(mem, MAP_FAILED);
	ck_assert_int_eq(pipe(window_pipe), 0);
	ck_assert_int_eq(pipe(page_pipe), 0);
	ck_assert_int_eq(luffd_register(ctx, mem, len, s, 0, 0), 0);
	luffd_store_put(s);
	/* Nothing is ever written to the pipes. */
	ck_assert_int_eq(t_touch_sig(mem, 0, &code, NULL, NULL), SIGBUS);
	/* The fault is counted after the signal is on its way. */
	ck_assert_int_eq(luffd_ctx_sync(ctx), 0);
	ck_assert_int_eq(luffd_stats_get(ctx, &st), 0);
	ck_assert_uint_ge(st.read_timeouts, 1);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 1);
	/* These return (a hang is the test's timeout). */
	ck_assert_int_eq(luffd_unregister(ctx, mem, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	for (int i = 0; i < 2; i++) {
		close(window_pipe[i]);
		close(page_pipe[i]);
	}
	munmap(mem, len);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("reread");
	TCase *tc = t_tcase(s, "reread");

	tcase_add_test(tc, shared_read_fails_then_reread);
	tcase_add_test(tc, stuck_read_does_not_block_teardown);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
