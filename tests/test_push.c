/* SPDX-License-Identifier: MIT */
/*
 * Background push (LUFFD_REGISTER_PUSH): after a region's first demand
 * fault the rest streams in until every page is present, luffd_push_wait()
 * says so, the stream moves to each demand fault and its window grows
 * while nobody faults; a store error or a removed region ends it, and a
 * complete region costs nothing more.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SEED 0x93
#define MAXLOG 8192

/* A callback store that logs what it is asked for, can hold the fill()
 * of one offset, and fails the fill() of another. */
struct cb {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	uint64_t hold_off, fail_off;
	int hold_nth;       /* or hold the fill() call of this index */
	bool release, holding;
	uint64_t off[MAXLOG], len[MAXLOG];
	int nlog;
	atomic_int active;
};

static ssize_t fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct cb *c = arg;
	bool fail;

	atomic_fetch_add(&c->active, 1);
	pthread_mutex_lock(&c->lock);
	if (c->nlog < MAXLOG) {
		c->off[c->nlog] = off;
		c->len[c->nlog] = len;
		c->nlog++;
	}
	if (off == c->hold_off || c->nlog - 1 == c->hold_nth) {
		c->holding = true;
		pthread_cond_broadcast(&c->cv);
		while (!c->release)
			pthread_cond_wait(&c->cv, &c->lock);
	}
	fail = c->fail_off >= off && c->fail_off < off + len;
	pthread_mutex_unlock(&c->lock);
	if (!fail)
		t_pattern(buf, off, len, SEED);
	atomic_fetch_sub(&c->active, 1);
	return fail ? -EIO : (ssize_t)len;
}

static struct luffd_store *cb_store(struct cb *c, uint64_t size)
{
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = fill, .size = size);
	struct luffd_store *s;

	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cv, NULL);
	c->hold_off = c->fail_off = UINT64_MAX;
	c->hold_nth = -1;
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

/* Let a held fill() go and wait until none runs (c is on the stack). */
static void release_and_drain(struct cb *c)
{
	pthread_mutex_lock(&c->lock);
	c->release = true;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->lock);
	for (int i = 0; i < 1000 && atomic_load(&c->active); i++)
		usleep(10000);
	ck_assert_int_eq(atomic_load(&c->active), 0);
}

/* Where offset off was first asked for in c's log (MAXLOG: never). */
static int log_index(struct cb *c, uint64_t off)
{
	int i, n;

	pthread_mutex_lock(&c->lock);
	n = c->nlog;
	for (i = 0; i < n; i++)
		if (off >= c->off[i] && off < c->off[i] + c->len[i])
			break;
	pthread_mutex_unlock(&c->lock);
	return i < n ? i : MAXLOG;
}

static size_t resident(const char *m, size_t npg)
{
	unsigned char *v = malloc(npg);
	size_t n = 0;

	ck_assert_int_eq(mincore((void *)m, npg * t_ps, v), 0);
	for (size_t i = 0; i < npg; i++)
		n += v[i] & 1;
	free(v);
	return n;
}

/* A file region: nothing moves before a fault; after one, the whole
 * region streams in, right, and luffd_push_wait() says it is complete. */
START_TEST(push_completes)
{
	const size_t npg = t_size(4096, 512), len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *s;
	char *m = t_anon(len);
	volatile char c;

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	/* No demand fault yet: no push. */
	usleep(20000);
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 0), -ETIMEDOUT);
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 30), -ETIMEDOUT);
	ck_assert_uint_eq(resident(m, npg), 0);
	c = m[(npg / 2) * t_ps];
	(void)c;
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 20000), 0);
	ck_assert_uint_eq(resident(m, npg), npg);
	t_stats(ctx, &st);
	ck_assert_uint_gt(st.pushed, 0);
	/* Every page came from the fault or its read-around, or the push:
	 * nothing else installs. */
	ck_assert_uint_eq(st.pushed + t_total_faults(&st) +
				  st.installed_ahead + st.readahead_pages >=
			  npg, 1);
	ck_assert_uint_le(st.pushed, npg);
	for (size_t i = 0; i < npg; i++)
		t_assert_page(m, i, 0, len, SEED);
	/* Complete: a second wait is immediate; luffd_map() takes the flag
	 * too. */
	ck_assert_int_eq(luffd_push_wait(ctx, m + t_ps, t_ps, 0), 0);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
	free(path);
}
END_TEST

/* luffd_map() with LUFFD_MAP_PUSH, a region longer than its store (pages
 * past the end are left alone) and a memory store (installed straight
 * from its bytes). */
START_TEST(push_map_and_store_end)
{
	const size_t npg = 64, len = npg * t_ps;
	const size_t ssz = 40 * t_ps + 100; /* a partial last page */
	char *mem = malloc(ssz);
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *s;
	void *p;
	char *m;
	volatile char c;

	t_pattern(mem, 0, ssz & ~7ul, SEED);
	memset(mem + (ssz & ~7ul), 0x5a, ssz - (ssz & ~7ul));
	ck_assert_int_eq(luffd_store_memory(mem, ssz, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 1u << 7, &p),
			 -EINVAL);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, LUFFD_MAP_PUSH,
				   &p), 0);
	m = p;
	c = m[0];
	(void)c;
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 20000), 0);
	/* Pages 0..39 whole, and the partial 40th is left to its fault. */
	ck_assert_uint_ge(resident(m, npg), 40);
	ck_assert_uint_le(resident(m, npg), 41);
	for (size_t i = 0; i < 40; i++)
		t_assert_page(m, i, 0, UINT64_MAX, SEED);
	ck_assert_int_eq((unsigned char)m[40 * t_ps + 99], 0x5a);
	ck_assert_int_eq(m[40 * t_ps + 100], 0);
	t_stats(ctx, &st);
	ck_assert_uint_ge(st.pushed, 38);
	ck_assert_int_eq(luffd_unmap(ctx, p, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	free(mem);
}
END_TEST

/* The stream moves to just past a demand fault, and its reads grow from
 * 64 KiB to readahead_bytes while nobody faults. */
START_TEST(push_follows_faults_and_grows)
{
	const size_t npg = 2048, len = npg * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .callback_threads = 4,
		   .readahead_bytes = 128 * 4096,
		   .install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD);
	struct luffd_ctx *ctx;
	struct cb c;
	struct luffd_store *s = cb_store(&c, len);
	char *m = t_anon(len);
	volatile char v;
	int i_jump, i_mid;
	uint64_t first_push = 0, biggest = 0;

	if (t_ps != 4096)
		return;
	ctx = t_ctx(&o);
	/* The push's first read (just past page 0's read-around) is held. */
	c.hold_nth = 1;
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	v = m[0];
	wait_holding(&c);
	/* A demand fault far ahead while the push is held. */
	v = m[1500 * t_ps];
	(void)v;
	release_and_drain(&c);
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 20000), 0);
	for (size_t i = 0; i < npg; i += 7)
		t_assert_page(m, i, 0, len, SEED);
	/* After the fault at page 1500 (and its read-around) the push went
	 * on from there, and reached the pages between only after. */
	i_jump = log_index(&c, 1900 * t_ps);
	i_mid = log_index(&c, 700 * t_ps);
	ck_assert_int_lt(i_jump, MAXLOG);
	ck_assert_int_lt(i_mid, MAXLOG);
	ck_assert_int_lt(i_jump, i_mid);
	pthread_mutex_lock(&c.lock);
	first_push = c.len[1];
	for (int i = 0; i < c.nlog; i++) {
		biggest = c.len[i] > biggest ? c.len[i] : biggest;
	}
	pthread_mutex_unlock(&c.lock);
	ck_assert_uint_eq(first_push, 16 * t_ps);
	ck_assert_uint_eq(biggest, 128 * t_ps);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
}
END_TEST

/* A store error ends the push with it; the pages it pushed are right,
 * and a fault on a page it left is served (or fails) on its own. */
START_TEST(push_error_ends_it)
{
	const size_t npg = 512, len = npg * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .callback_threads = 1);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct cb c;
	struct luffd_store *s = cb_store(&c, len);
	char *m = t_anon(len);
	volatile char v;

	c.fail_off = 300 * t_ps;
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	v = m[0];
	(void)v;
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 20000), -EIO);
	ck_assert_uint_lt(resident(m, npg), npg);
	for (size_t i = 0; i < 200; i++)
		t_assert_page(m, i, 0, len, SEED);
	/* The store is well again: a page the push left is served. */
	pthread_mutex_lock(&c.lock);
	c.fail_off = UINT64_MAX;
	pthread_mutex_unlock(&c.lock);
	t_assert_page(m, 300, 0, len, SEED);
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 0), -EIO);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
}
END_TEST

struct waiter {
	struct luffd_ctx *ctx;
	void *m;
	size_t len;
	int rc;
	pthread_t t;
};

static void *wait_main(void *arg)
{
	struct waiter *w = arg;

	w->rc = luffd_push_wait(w->ctx, w->m, w->len, 20000);
	return NULL;
}

/* A region removed while a push read hangs: luffd_unregister() returns
 * at once, and so do the waiters (-ECANCELED), whether the push had
 * started or not. */
START_TEST(push_region_removed)
{
	const size_t npg = 256, len = npg * t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct cb c;
	struct luffd_store *s = cb_store(&c, len);
	char *m = t_anon(2 * len);
	struct waiter w1 = { ctx, m, len, 1, 0 },
		      w2 = { ctx, m + len, len, 1, 0 };
	volatile char v;

	c.hold_off = t_ps; /* the push's first read */
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	ck_assert_int_eq(luffd_register(ctx, m + len, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	v = m[0];
	(void)v;
	wait_holding(&c);
	pthread_create(&w1.t, NULL, wait_main, &w1);
	pthread_create(&w2.t, NULL, wait_main, &w2);
	usleep(50000);
	ck_assert_int_eq(w1.rc, 1); /* still waiting */
	ck_assert_int_eq(w2.rc, 1);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_unregister(ctx, m + len, len), 0);
	pthread_join(w1.t, NULL);
	pthread_join(w2.t, NULL);
	ck_assert_int_eq(w1.rc, -ECANCELED);
	ck_assert_int_eq(w2.rc, -ECANCELED);
	release_and_drain(&c);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, 2 * len);
}
END_TEST

/* Complete means costing nothing: no read, no install, and a dropped
 * page is served from the store as an ordinary fault. */
START_TEST(push_complete_costs_nothing)
{
	const size_t npg = 256, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, a);
	LUFFD_OPTS(luffd_stats, b);
	struct luffd_store *s;
	char *m = t_anon(len);
	volatile char v;

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	v = m[0];
	(void)v;
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 20000), 0);
	t_stats(ctx, &a);
	usleep(50000);
	t_stats(ctx, &b);
	ck_assert_uint_eq(a.reads, b.reads);
	ck_assert_uint_eq(a.pushed, b.pushed);
	ck_assert_int_eq(madvise(m + 10 * t_ps, t_ps, MADV_DONTNEED), 0);
	t_assert_page(m, 10, 0, len, SEED);
	usleep(20000);
	t_stats(ctx, &b);
	ck_assert_uint_eq(t_total_faults(&b), t_total_faults(&a) + 1);
	ck_assert_uint_eq(a.pushed, b.pushed);
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 0), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, len);
	free(path);
}
END_TEST

/* A pushed region split by munmap() of its middle: each piece pushes from
 * its own next fault and completes, data right; the old push ends. */
START_TEST(push_region_split)
{
	const size_t npg = 96, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *s;
	char *m = t_anon(len);

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	t_assert_page(m, 0, 0, len, SEED);
	ck_assert_int_eq(munmap(m + 32 * t_ps, 32 * t_ps), 0);
	/* The pieces: [0, 32) and [64, 96). */
	t_assert_page(m, 1, 0, len, SEED);
	t_assert_page(m, 70, 0, len, SEED);
	ck_assert_int_eq(luffd_push_wait(ctx, m, 32 * t_ps, 20000), 0);
	ck_assert_int_eq(luffd_push_wait(ctx, m + 64 * t_ps, 32 * t_ps,
					 20000), 0);
	ck_assert_uint_eq(resident(m, 32), 32);
	ck_assert_uint_eq(resident(m + 64 * t_ps, 32), 32);
	for (size_t i = 0; i < 32; i++) {
		t_assert_page(m, i, 0, len, SEED);
		t_assert_page(m, 64 + i, 0, len, SEED);
	}
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, 32 * t_ps);
	munmap(m + 64 * t_ps, 32 * t_ps);
	free(path);
}
END_TEST

/* A pushed region moved by mremap(): the moved range is pushed at its new
 * address and completes there, data right. */
START_TEST(push_region_moved)
{
	const size_t npg = 64, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *s;
	char *m = t_anon(len), *to = t_anon(len), *n;

	ck_assert_int_eq(luffd_store_open(path, 0, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	t_assert_page(m, 0, 0, len, SEED);
	n = mremap(m, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	ck_assert_ptr_eq(n, to);
	t_assert_page(n, 33, 0, len, SEED);
	ck_assert_int_eq(luffd_push_wait(ctx, n, len, 20000), 0);
	ck_assert_uint_eq(resident(n, npg), npg);
	for (size_t i = 0; i < npg; i++)
		t_assert_page(n, i, 0, len, SEED);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(n, len);
	free(path);
}
END_TEST

START_TEST(push_validation)
{
	const size_t len = 16 * t_ps;
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct cb c;
	struct luffd_store *s = cb_store(&c, UINT64_MAX);
	char *m = t_anon(3 * len);

	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 1u << 5),
			 -EINVAL);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH |
						LUFFD_REGISTER_SEAL_UNSERVED),
			 0);
	ck_assert_int_eq(luffd_register(ctx, m + len, len, s, 0, 0), 0);
	ck_assert_int_eq(luffd_push_wait(NULL, m, len, 0), -EINVAL);
	ck_assert_int_eq(luffd_push_wait(ctx, NULL, len, 0), -EINVAL);
	ck_assert_int_eq(luffd_push_wait(ctx, m, 0, 0), -EINVAL);
	ck_assert_int_eq(luffd_push_wait(ctx, m + 1, len, 0), -EINVAL);
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, -2), -EINVAL);
	/* A region without the flag, alone or within the range. */
	ck_assert_int_eq(luffd_push_wait(ctx, m + len, len, 0), -EINVAL);
	ck_assert_int_eq(luffd_push_wait(ctx, m, 2 * len, 0), -EINVAL);
	ck_assert_int_eq(luffd_push_wait(ctx, m + 2 * len, len, 0), -ENOENT);
	ck_assert_int_eq(luffd_push_wait(ctx, m, 3 * len, 0), -ENOENT);
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 0), -ETIMEDOUT);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(s);
	munmap(m, 3 * len);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("push");
	TCase *tc = t_tcase(s, "push");

	tcase_add_test(tc, push_completes);
	tcase_add_test(tc, push_map_and_store_end);
	tcase_add_test(tc, push_follows_faults_and_grows);
	tcase_add_test(tc, push_error_ends_it);
	tcase_add_test(tc, push_region_removed);
	tcase_add_test(tc, push_complete_costs_nothing);
	tcase_add_test(tc, push_region_split);
	tcase_add_test(tc, push_region_moved);
	tcase_add_test(tc, push_validation);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
