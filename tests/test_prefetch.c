/* SPDX-License-Identifier: MIT */
/*
 * Pages the application pushes in: luffd_install() fills missing pages
 * and wakes their threads, never overwrites present ones; luffd_prefetch()
 * installs whole ranges in the background, demand faults go first, and a
 * region removed under it ends it without waiting for its store.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SEED 0x71
#define MAXLOG 4096

/* A callback store whose fill() can be held at one offset, and that logs
 * the offsets it is asked for, in order. */
struct cb {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	uint64_t hold_off;  /* a fill() of this offset waits for release */
	bool release, holding;
	uint64_t log[MAXLOG];
	int nlog;
	struct luffd_ctx *ctx; /* for calls from inside fill() */
	void *m;
	atomic_int active;     /* fill() calls under way */
	_Atomic int inner_rc;  /* what luffd_prefetch(WAIT) said there */
};

static ssize_t fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct cb *c = arg;
	struct luffd_ctx *ctx;

	atomic_fetch_add(&c->active, 1);
	pthread_mutex_lock(&c->lock);
	if (c->nlog < MAXLOG)
		c->log[c->nlog++] = off;
	if (off == c->hold_off) {
		c->holding = true;
		pthread_cond_broadcast(&c->cv);
		while (!c->release)
			pthread_cond_wait(&c->cv, &c->lock);
	}
	ctx = c->ctx;
	pthread_mutex_unlock(&c->lock);
	if (ctx)
		atomic_store(&c->inner_rc,
			     luffd_prefetch(ctx, c->m, t_ps,
					    LUFFD_PREFETCH_WAIT));
	t_pattern(buf, off, len, SEED);
	atomic_fetch_sub(&c->active, 1);
	return (ssize_t)len;
}


static struct luffd_store *cb_store(struct cb *c)
{
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = fill, .size = UINT64_MAX);
	struct luffd_store *s;

	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cv, NULL);
	c->hold_off = UINT64_MAX;
	ck_assert_int_eq(luffd_store_callback(&ops, c, &s), 0);
	return s;
}

static void wait_holding(struct cb *c)
{
	pthread_mutex_lock(&c->lock);
	for (int i = 0; !c->holding && i < 1000; i++) {
		pthread_mutex_unlock(&c->lock);
		usleep(10000);
		pthread_mutex_lock(&c->lock);
	}
	ck_assert_msg(c->holding, "fill() never reached the held offset");
	pthread_mutex_unlock(&c->lock);
}

static void do_release(struct cb *c)
{
	pthread_mutex_lock(&c->lock);
	c->release = true;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->lock);
}

/* Let a held fill() go and wait until no fill() runs: c lives on the
 * test's stack, and a worker left inside fill() must be out of it before
 * the test returns. */
static void release_and_drain(struct cb *c)
{
	do_release(c);
	for (int i = 0; i < 1000 && atomic_load(&c->active); i++)
		usleep(10000);
	ck_assert_int_eq(atomic_load(&c->active), 0);
}

static int resident(const char *m, size_t npg)
{
	unsigned char *v = malloc(npg);
	int n = 0;

	ck_assert_int_eq(mincore((void *)m, npg * t_ps, v), 0);
	for (size_t i = 0; i < npg; i++)
		n += v[i] & 1;
	free(v);
	return n;
}

/* ---- luffd_install() ------------------------------------------------ */

/* A thread blocked on a page whose read hangs is woken by an install, and
 * reads the installed data; present pages are never overwritten. */
START_TEST(install_wakes_and_skips_present)
{
	const size_t npg = 16, len = npg * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD,
		   .install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct t_reader r;
	struct cb c;
	struct luffd_store *s = cb_store(&c);
	char *m = t_anon(len), *src = malloc(4 * t_ps);

	memset(src, 0xab, 4 * t_ps);
	c.hold_off = 3 * t_ps;
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	t_reader_start(&r, m + 3 * t_ps);
	wait_holding(&c);
	ck_assert_int_eq(luffd_install(ctx, m + 3 * t_ps, src, t_ps, 0),
			 (ssize_t)t_ps);
	t_reader_join(&r);
	ck_assert_int_eq(r.sig, 0);
	ck_assert_int_eq((unsigned char)m[3 * t_ps], 0xab);
	/* Page 5 is faulted in from the store first; an install over pages
	 * 2..5 then puts in only 2 and 4 and leaves 3 and 5 alone. */
	t_assert_page(m, 5, 0, UINT64_MAX, SEED);
	memset(src, 0xcd, 4 * t_ps);
	ck_assert_int_eq(luffd_install(ctx, m + 2 * t_ps, src, 4 * t_ps, 0),
			 (ssize_t)(2 * t_ps));
	ck_assert_int_eq((unsigned char)m[2 * t_ps], 0xcd);
	ck_assert_int_eq((unsigned char)m[3 * t_ps], 0xab);
	ck_assert_int_eq((unsigned char)m[4 * t_ps + 100], 0xcd);
	t_assert_page(m, 5, 0, UINT64_MAX, SEED);
	/* All present now: nothing to do. */
	ck_assert_int_eq(luffd_install(ctx, m + 2 * t_ps, src, 4 * t_ps, 0),
			 0);
	/* The held read answers late: its install finds the page present
	 * and the installed data stays. */
	release_and_drain(&c);
	t_stats(ctx, &st);
	for (int i = 0; i < 500 && st.faults[LUFFD_MAJOR] < 2; i++) {
		usleep(10000);
		t_stats(ctx, &st);
	}
	ck_assert_int_eq((unsigned char)m[3 * t_ps], 0xab);
	ck_assert_uint_eq(st.app_installed, 3);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR], 2);
	/* A page dropped after an install is served from the store again. */
	ck_assert_int_eq(madvise(m + 2 * t_ps, t_ps, MADV_DONTNEED), 0);
	t_assert_page(m, 2, 0, UINT64_MAX, SEED);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	free(src);
	munmap(m, len);
}
END_TEST

/* Two regions side by side: one call installs across both. */
START_TEST(install_across_regions)
{
	const size_t len = 8 * t_ps;
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct cb c;
	struct luffd_store *s = cb_store(&c);
	char *m = t_anon(2 * len), *src = malloc(2 * len);

	memset(src, 0x3c, 2 * len);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	ck_assert_int_eq(luffd_register(ctx, m + len, len, s, len, 0), 0);
	ck_assert_int_eq(luffd_install(ctx, m + 4 * t_ps, src, len, 0),
			 (ssize_t)len);
	ck_assert_int_eq(resident(m, 16), 8);
	for (size_t i = 4; i < 12; i++)
		ck_assert_int_eq((unsigned char)m[i * t_ps + 7], 0x3c);
	t_assert_page(m, 0, 0, UINT64_MAX, SEED);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.app_installed, 8);
	ck_assert_int_eq(c.nlog > 0, 1); /* page 0 came from the store */
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	free(src);
	munmap(m, 2 * len);
}
END_TEST

START_TEST(install_validation)
{
	const size_t len = 8 * t_ps;
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct cb c;
	struct luffd_store *s = cb_store(&c);
	char *m = t_anon(len + t_ps), *src = malloc(len);

	memset(src, 1, len);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	ck_assert_int_eq(luffd_install(NULL, m, src, t_ps, 0), -EINVAL);
	ck_assert_int_eq(luffd_install(ctx, NULL, src, t_ps, 0), -EINVAL);
	ck_assert_int_eq(luffd_install(ctx, m, NULL, t_ps, 0), -EINVAL);
	ck_assert_int_eq(luffd_install(ctx, m, src, 0, 0), -EINVAL);
	ck_assert_int_eq(luffd_install(ctx, m + 1, src, t_ps, 0), -EINVAL);
	ck_assert_int_eq(luffd_install(ctx, m, src, t_ps + 1, 0), -EINVAL);
	ck_assert_int_eq(luffd_install(ctx, m, src, t_ps, 1), -EINVAL);
	ck_assert_int_eq(luffd_install(ctx, (void *)(uintptr_t)-t_ps, src,
				       2 * t_ps, 0), -EINVAL);
	/* Past the region: refused whole, nothing installed. */
	ck_assert_int_eq(luffd_install(ctx, m + len - t_ps, src, 2 * t_ps, 0),
			 -ENOENT);
	ck_assert_int_eq(luffd_install(ctx, m + len, src, t_ps, 0), -ENOENT);
	ck_assert_int_eq(resident(m, 8), 0);
	t_assert_page(m, 7, 0, UINT64_MAX, SEED);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	free(src);
	munmap(m, len + t_ps);
}
END_TEST

/* ---- luffd_prefetch() ----------------------------------------------- */

/* The whole of a file region goes in: afterwards no page faults, and every
 * page holds the file's data. */
static void prefetch_file(bool wait)
{
	const size_t npg = t_small() ? 1024 : 8192, len = npg * t_ps;
	char *path = t_make_file(len - 100, SEED); /* a partial last page */
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *s;
	void *addr;
	char *m;

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0, &addr), 0);
	m = addr;
	ck_assert_int_eq(luffd_prefetch(ctx, m, len,
					wait ? LUFFD_PREFETCH_WAIT : 0), 0);
	t_stats(ctx, &st);
	for (int i = 0; !wait && i < 1000 && st.prefetched < npg; i++) {
		usleep(10000);
		t_stats(ctx, &st);
	}
	ck_assert_uint_eq(st.prefetched, npg);
	ck_assert_uint_eq(t_total_faults(&st), 0);
	ck_assert_int_eq(resident(m, npg), (int)npg);
	for (size_t i = 0; i < npg; i++)
		t_assert_page(m, i, 0, len - 100, SEED);
	t_stats(ctx, &st);
	ck_assert_uint_eq(t_total_faults(&st), 0);
	/* Again: everything is present, nothing is read. */
	ck_assert_int_eq(luffd_prefetch(ctx, m, len, LUFFD_PREFETCH_WAIT), 0);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.prefetched, npg);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	free(path);
}

START_TEST(prefetch_wait_installs_all)
{
	prefetch_file(true);
}
END_TEST

START_TEST(prefetch_in_background)
{
	prefetch_file(false);
}
END_TEST

/* One worker: while a prefetch window is held, a demand fault is queued
 * behind it; once the window returns, the demand fault is served before
 * the next prefetch window. */
START_TEST(prefetch_demand_first)
{
	const size_t npg = 1024, len = npg * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .callback_threads = 1,
		   .readahead_bytes = 64 * t_ps,
		   .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct t_reader r;
	struct cb c;
	struct luffd_store *s = cb_store(&c);
	char *m = t_anon(len);
	const uint64_t far = 900 * t_ps;
	int at = -1;

	c.hold_off = 0;
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	ck_assert_int_eq(luffd_prefetch(ctx, m, len, 0), 0);
	wait_holding(&c);
	t_reader_start(&r, m + far);
	/* Let the fault reach the worker's queue. */
	usleep(100000);
	do_release(&c);
	t_reader_join(&r);
	ck_assert_int_eq(r.sig, 0);
	t_assert_page(m, 900, 0, UINT64_MAX, SEED);
	pthread_mutex_lock(&c.lock);
	for (int i = 0; i < c.nlog; i++)
		if (c.log[i] == far - far % (64 * t_ps) || c.log[i] == far)
			at = at < 0 ? i : at;
	ck_assert_uint_eq(c.log[0], 0);
	/* Right after the held window: not behind the second one, which
	 * was already queued. */
	ck_assert_msg(at == 1, "the demand read was the %d-th fill", at);
	pthread_mutex_unlock(&c.lock);
	ck_assert_int_eq(luffd_prefetch(ctx, m, len, LUFFD_PREFETCH_WAIT), 0);
	ck_assert_int_eq(resident(m, npg), (int)npg);
	t_stats(ctx, &st);
	ck_assert_uint_eq(t_total_faults(&st), 1);
	for (size_t i = 0; i < npg; i += 37)
		t_assert_page(m, i, 0, UINT64_MAX, SEED);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
}
END_TEST

struct waiter {
	struct luffd_ctx *ctx;
	void *m;
	size_t len;
	_Atomic int rc, done;
};

static void *wait_main(void *arg)
{
	struct waiter *w = arg;

	atomic_store(&w->rc, luffd_prefetch(w->ctx, w->m, w->len,
					    LUFFD_PREFETCH_WAIT));
	atomic_store(&w->done, 1);
	return NULL;
}

/* A store that stopped answering: unregistering the region returns, and
 * so does a caller waiting for its prefetch (-ECANCELED). */
START_TEST(prefetch_unregister_hung_store)
{
	const size_t len = 256 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = LUFFD_NO_TIMEOUT);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct waiter w = { .ctx = ctx, .len = len };
	struct timespec dl;
	pthread_t t;
	struct cb c;
	struct luffd_store *s = cb_store(&c);
	char *m = t_anon(len);

	c.hold_off = 0;
	w.m = m;
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	ck_assert_int_eq(pthread_create(&t, NULL, wait_main, &w), 0);
	wait_holding(&c);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 10;
	ck_assert_msg(pthread_timedjoin_np(t, NULL, &dl) == 0,
		      "luffd_prefetch(WAIT) still waits 10 s after the "
		      "unregister");
	ck_assert_int_eq(atomic_load(&w.rc), -ECANCELED);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	release_and_drain(&c);
	luffd_store_put(s);
	munmap(m, len);
}
END_TEST

/* A sequential reader at prefetch's heels takes stretches over (and
 * prefetch goes on past them, then back for what is left): every page
 * right, and the waiting prefetch returns with every page in. */
START_TEST(prefetch_with_sequential_reader)
{
	const size_t npg = t_small() ? 4096 : 16384, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct waiter w = { .ctx = ctx, .len = len };
	struct luffd_store *s;
	pthread_t t;
	void *addr;

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ | PROT_WRITE, 0,
				   &addr), 0);
	w.m = addr;
	ck_assert_int_eq(pthread_create(&t, NULL, wait_main, &w), 0);
	for (size_t i = 0; i < npg; i++)
		t_assert_page(addr, i, 0, len, SEED);
	pthread_join(t, NULL);
	ck_assert_int_eq(atomic_load(&w.rc), 0);
	ck_assert_int_eq(resident(addr, npg), (int)npg);
	t_stats(ctx, &st);
	ck_assert_uint_gt(st.prefetched, 0);
	ck_assert_int_eq(luffd_unmap(ctx, addr, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	free(path);
}
END_TEST

/* A memory store has no reads: prefetch installs straight from it, up to
 * its last whole page (the partial one is left to its fault). */
START_TEST(prefetch_memory_store)
{
	const size_t npg = 64, len = npg * t_ps;
	const size_t slen = len - t_ps + 100;
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *s;
	char *src = malloc(len), *m = t_anon(len);

	t_pattern(src, 0, len, SEED);
	ck_assert_int_eq(luffd_store_memory(src, slen, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	ck_assert_int_eq(luffd_prefetch(ctx, m, len, LUFFD_PREFETCH_WAIT), 0);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.prefetched, npg - 1);
	ck_assert_int_eq(resident(m, npg), (int)npg - 1);
	for (size_t i = 0; i < npg; i++)
		t_assert_page(m, i, 0, slen, SEED);
	t_stats(ctx, &st);
	ck_assert_uint_eq(t_total_faults(&st), 1);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(src);
	munmap(m, len);
}
END_TEST

START_TEST(prefetch_validation)
{
	const size_t len = 8 * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct cb c;
	struct luffd_store *s = cb_store(&c);
	char *m = t_anon(len + t_ps);

	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	ck_assert_int_eq(luffd_prefetch(NULL, m, t_ps, 0), -EINVAL);
	ck_assert_int_eq(luffd_prefetch(ctx, NULL, t_ps, 0), -EINVAL);
	ck_assert_int_eq(luffd_prefetch(ctx, m, 0, 0), -EINVAL);
	ck_assert_int_eq(luffd_prefetch(ctx, m + 1, t_ps, 0), -EINVAL);
	ck_assert_int_eq(luffd_prefetch(ctx, m, t_ps, 2), -EINVAL);
	ck_assert_int_eq(luffd_prefetch(ctx, m, SIZE_MAX, 0), -EINVAL);
	ck_assert_int_eq(luffd_prefetch(ctx, m + len, t_ps, 0), -ENOENT);
	ck_assert_int_eq(luffd_prefetch(ctx, m, len + 1, 0), -ENOENT);
	ck_assert_int_eq(resident(m, 8), 0);
	/* Any length: rounded up to the page. */
	ck_assert_int_eq(luffd_prefetch(ctx, m, 1, LUFFD_PREFETCH_WAIT), 0);
	ck_assert_int_eq(resident(m, 8), 1);
	/* From inside a fill(): waiting would wait for the worker itself. */
	pthread_mutex_lock(&c.lock);
	c.m = m;
	c.ctx = ctx;
	pthread_mutex_unlock(&c.lock);
	atomic_store(&c.inner_rc, 1);
	t_assert_page(m, 5, 0, UINT64_MAX, SEED);
	ck_assert_int_eq(atomic_load(&c.inner_rc), -EDEADLK);
	pthread_mutex_lock(&c.lock);
	c.ctx = NULL;
	pthread_mutex_unlock(&c.lock);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len + t_ps);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("prefetch");
	TCase *tc = t_tcase(s, "install");

	tcase_add_test(tc, install_wakes_and_skips_present);
	tcase_add_test(tc, install_across_regions);
	tcase_add_test(tc, install_validation);
	tc = t_tcase(s, "prefetch");
	tcase_add_test(tc, prefetch_wait_installs_all);
	tcase_add_test(tc, prefetch_in_background);
	tcase_add_test(tc, prefetch_demand_first);
	tcase_add_test(tc, prefetch_unregister_hung_store);
	tcase_add_test(tc, prefetch_with_sequential_reader);
	tcase_add_test(tc, prefetch_memory_store);
	tcase_add_test(tc, prefetch_validation);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
