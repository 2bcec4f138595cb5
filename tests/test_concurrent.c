/* SPDX-License-Identifier: MIT */
/*
 * Concurrency: many threads faulting the same page at once (one read,
 * coalesced), many threads on random pages (each page read once), two
 * contexts in parallel or in turn, several handler threads.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NSAME 8

struct same {
	pthread_barrier_t bar;
	char *a;
	size_t rounds;
	uint64_t seed, fsize;
	atomic_int bad;
};

static void *same_thread(void *arg)
{
	struct same *s = arg;

	for (size_t r = 0; r < s->rounds; r++) {
		pthread_barrier_wait(&s->bar);
		if (t_page_diff(s->a + r * t_ps, r * t_ps, s->fsize, s->seed) >=
		    0)
			atomic_fetch_add(&s->bad, 1);
	}
	return NULL;
}

/* NSAME threads touch page r at the same moment, for r = 0..rounds-1. */
START_TEST(same_page)
{
	struct same s = { .rounds = t_size(64, 16), .seed = 0x5a3e };
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *st;
	struct luffd_stats stats;
	pthread_t th[NSAME];
	char *path;
	uint64_t total;

	s.fsize = s.rounds * t_ps;
	path = t_make_file(s.fsize, s.seed);
	pthread_barrier_init(&s.bar, NULL, NSAME);
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, s.fsize, PROT_READ, 0,
				   (void **)&s.a), 0);
	for (int t = 0; t < NSAME; t++)
		ck_assert_int_eq(pthread_create(&th[t], NULL, same_thread, &s),
				 0);
	for (int t = 0; t < NSAME; t++)
		pthread_join(th[t], NULL);
	ck_assert_int_eq(atomic_load(&s.bad), 0);
	t_stats(ctx, &stats);
	total = t_total_faults(&stats);
	/* Every page faulted at least once and at most once per thread,
	 * and was read exactly once. */
	ck_assert_uint_ge(total, s.rounds);
	ck_assert_uint_le(total, NSAME * s.rounds);
	ck_assert_uint_eq(stats.reads, s.rounds);
	ck_assert_uint_eq(stats.bytes_read, s.fsize);
	ck_assert_uint_eq(stats.faults[LUFFD_ZERO], 0);
	ck_assert_uint_eq(stats.faults[LUFFD_ERROR], 0);
	ck_assert_uint_ge(stats.faults[LUFFD_MAJOR], s.rounds);
	/* A fault that joined a read in flight is major, and counted. */
	ck_assert_uint_le(stats.coalesced, stats.faults[LUFFD_MAJOR] - s.rounds);
	ck_assert_uint_eq(stats.faults[LUFFD_MAJOR], s.rounds + stats.coalesced);
	printf("same_page: %llu faults for %zu pages (%llu coalesced, %llu "
	       "minor, %llu eexist)\n", (unsigned long long)total, s.rounds,
	       (unsigned long long)stats.coalesced,
	       (unsigned long long)stats.faults[LUFFD_MINOR],
	       (unsigned long long)stats.eexist);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	pthread_barrier_destroy(&s.bar);
	free(path);
}
END_TEST

struct rnd {
	char *a;
	size_t npg;
	uint64_t seed, fsize, rng;
	long bad;
};

static void *rnd_thread(void *arg)
{
	struct rnd *r = arg;
	size_t *perm = malloc(r->npg * sizeof(*perm));

	r->bad = -1;
	if (!perm) {
		r->bad = -2;
		return NULL;
	}
	t_perm(perm, r->npg, &r->rng);
	for (size_t i = 0; i < r->npg; i++)
		if (t_page_diff(r->a + perm[i] * t_ps, perm[i] * t_ps, r->fsize,
				r->seed) >= 0) {
			r->bad = (long)perm[i];
			break;
		}
	free(perm);
	return NULL;
}

static void random_pages(unsigned handlers, size_t ra, int nthreads)
{
	size_t npg = t_size(4096, 512);
	uint64_t seed = 0x7a9d + handlers;
	char *path = t_make_file(npg * t_ps, seed);
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = ra,
		   .handler_threads = handlers,
		   .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *st;
	struct luffd_stats stats;
	struct rnd r[16];
	pthread_t th[16];
	char *a[2];

	/* Two regions over the same store, so several handlers serve. */
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	for (int k = 0; k < 2; k++)
		ck_assert_int_eq(luffd_map(ctx, st, 0, npg * t_ps, PROT_READ, 0,
					   (void **)&a[k]), 0);
	for (int t = 0; t < nthreads; t++) {
		r[t] = (struct rnd){ a[t % 2], npg, seed, npg * t_ps,
				     (uint64_t)t * 7919 + 1, 0 };
		ck_assert_int_eq(pthread_create(&th[t], NULL, rnd_thread,
						&r[t]), 0);
	}
	for (int t = 0; t < nthreads; t++)
		pthread_join(th[t], NULL);
	for (int t = 0; t < nthreads; t++)
		ck_assert_msg(r[t].bad == -1, "thread %d: page %ld wrong", t,
			      r[t].bad);
	t_stats(ctx, &stats);
	ck_assert_uint_eq(stats.faults[LUFFD_ERROR], 0);
	ck_assert_uint_eq(stats.faults[LUFFD_ZERO], 0);
	ck_assert_uint_ge(t_total_faults(&stats), 2);
	ck_assert_uint_le(t_total_faults(&stats), (uint64_t)nthreads * npg);
	ck_assert_uint_ge(stats.bytes_read, npg * t_ps);
	if (ra == LUFFD_NO_READAHEAD && handlers == 1) {
		/* One cache, big enough: each page read once, however many
		 * threads and regions fault on it. */
		ck_assert_uint_eq(stats.reads, npg);
		ck_assert_uint_eq(stats.bytes_read, npg * t_ps);
	}
	printf("random h=%u ra=%zd: %llu faults (%llu major, %llu minor), "
	       "%llu reads, %llu coalesced\n", handlers, (ssize_t)ra,
	       (unsigned long long)t_total_faults(&stats),
	       (unsigned long long)stats.faults[LUFFD_MAJOR],
	       (unsigned long long)stats.faults[LUFFD_MINOR],
	       (unsigned long long)stats.reads,
	       (unsigned long long)stats.coalesced);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}

START_TEST(random_no_readahead)
{
	random_pages(1, LUFFD_NO_READAHEAD, 8);
}
END_TEST

START_TEST(random_readahead)
{
	random_pages(1, 64 * 1024, 8);
}
END_TEST

START_TEST(random_two_handlers)
{
	random_pages(2, 0, 8);
}
END_TEST

/* VMAs of /proc/self/maps that lie inside [a, a+len). */
static int vmas_in(const char *a, size_t len)
{
	FILE *f = fopen("/proc/self/maps", "r");
	unsigned long lo, hi;
	char line[512];
	int n = 0;

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 &&
		    lo >= (uintptr_t)a && hi <= (uintptr_t)a + len)
			n++;
	fclose(f);
	return n;
}

/*
 * stripe_bytes: one range split into 2 MiB stripes over two handler
 * threads (each stripe registered with its handler's userfaultfd: a VMA of
 * its own).  Eight threads fault at random, every page right; the range
 * unmaps only whole.
 */
START_TEST(striped_range)
{
	size_t stripe = 2u << 20, len = t_size(16, 8) << 20, npg = len / t_ps;
	uint64_t seed = 0x57e;
	char *path = t_make_file(len - 1000, seed);
	LUFFD_OPTS(luffd_ctx_opts, o, .handler_threads = 2,
		   .stripe_bytes = stripe);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *st;
	struct luffd_stats stats;
	struct rnd r[8];
	pthread_t th[8];
	char *a;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, len, PROT_READ | PROT_WRITE,
				   0, (void **)&a), 0);
	luffd_store_put(st);
	ck_assert_int_eq(vmas_in(a, len), (int)(len / stripe));
	for (int t = 0; t < 8; t++) {
		r[t] = (struct rnd){ a, npg, seed, len - 1000,
				     (uint64_t)t * 7919 + 1, 0 };
		ck_assert_int_eq(pthread_create(&th[t], NULL, rnd_thread,
						&r[t]), 0);
	}
	for (int t = 0; t < 8; t++)
		pthread_join(th[t], NULL);
	for (int t = 0; t < 8; t++)
		ck_assert_msg(r[t].bad == -1, "thread %d: page %ld wrong", t,
			      r[t].bad);
	t_stats(ctx, &stats);
	ck_assert_uint_eq(stats.faults[LUFFD_ERROR], 0);
	/* Only the whole range: not one stripe, not a longer range. */
	ck_assert_int_eq(luffd_unmap(ctx, a, stripe), -EINVAL);
	ck_assert_int_eq(luffd_unmap(ctx, a, len + t_ps), -EINVAL);
	ck_assert_int_eq(luffd_unmap(ctx, a + stripe, stripe), -EINVAL);
	/* Each stripe is a VMA: mremap() cannot take the range whole. */
	ck_assert_ptr_eq(mremap(a, len, 2 * len, MREMAP_MAYMOVE), MAP_FAILED);
	ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	ck_assert_int_eq(luffd_unmap(ctx, a, len), -ENOENT);
	ck_assert_int_eq(vmas_in(a, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

/* A striped luffd_register() whose third stripe is taken (registered
 * with another context's userfaultfd): -EBUSY, and the two stripes added
 * before it are taken back (the range registers again, in part). */
START_TEST(striped_rollback)
{
	size_t stripe = 2u << 20, len = 4 * stripe;
	char *path = t_make_file(len, 0x5e);
	LUFFD_OPTS(luffd_ctx_opts, o, .handler_threads = 2,
		   .stripe_bytes = stripe);
	struct luffd_ctx *ctx = t_ctx(&o), *other = t_ctx(NULL);
	struct luffd_store *st;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int fds = t_count_fds();

	ck_assert_ptr_ne(mem, MAP_FAILED);
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_register(other, mem + 2 * stripe, stripe, st,
					0, 0), 0);
	ck_assert_int_eq(luffd_register(ctx, mem, len, st, 0, 0), -EBUSY);
	ck_assert_int_eq(luffd_register(ctx, mem, 2 * stripe, st, 0, 0), 0);
	ck_assert_int_lt(t_page_diff(mem + stripe + 5 * t_ps,
				     5 * t_ps + stripe, len, 0x5e), 0);
	ck_assert_int_eq(luffd_unregister(ctx, mem, 2 * stripe), 0);
	ck_assert_int_eq(luffd_unregister(other, mem + 2 * stripe, stripe),
			 0);
	luffd_store_put(st);
	ck_assert_int_eq(t_count_fds(), fds);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	ck_assert_int_eq(luffd_ctx_destroy(other), 0);
	munmap(mem, len);
	free(path);
}
END_TEST

/* Two contexts, each served by its own handler, faulted in parallel. */
struct ctxjob {
	char *path;
	uint64_t seed;
	size_t npg;
	long bad;
	uint64_t faults, errors;
	int err;
};

static void *ctx_thread(void *arg)
{
	struct ctxjob *j = arg;
	struct luffd_ctx *ctx = NULL;
	struct luffd_store *st = NULL;
	LUFFD_OPTS(luffd_stats, s);
	uint64_t rng = j->seed;
	size_t *perm = malloc(j->npg * sizeof(*perm));
	char *a;

	j->bad = -1;
	if ((j->err = luffd_ctx_create(NULL, &ctx)) ||
	    (j->err = luffd_store_open(j->path, 0, &st)) ||
	    (j->err = luffd_map(ctx, st, 0, j->npg * t_ps, PROT_READ, 0,
				(void **)&a)))
		goto out;
	t_perm(perm, j->npg, &rng);
	for (size_t i = 0; i < j->npg; i++)
		if (t_page_diff(a + perm[i] * t_ps, perm[i] * t_ps,
				j->npg * t_ps, j->seed) >= 0) {
			j->bad = (long)perm[i];
			break;
		}
	luffd_ctx_sync(ctx);
	luffd_stats_get(ctx, &s);
	j->faults = t_total_faults(&s);
	j->errors = s.faults[LUFFD_ERROR];
	j->err = luffd_unmap(ctx, a, j->npg * t_ps);
out:
	luffd_store_put(st);
	if (ctx)
		luffd_ctx_destroy(ctx);
	free(perm);
	return NULL;
}

START_TEST(two_contexts_parallel)
{
	struct ctxjob j[2];
	pthread_t th[2];
	size_t npg = t_size(4096, 512);

	for (int k = 0; k < 2; k++) {
		j[k] = (struct ctxjob){ .seed = 0x100 + k, .npg = npg };
		j[k].path = t_make_file(npg * t_ps, j[k].seed);
	}
	for (int k = 0; k < 2; k++)
		ck_assert_int_eq(pthread_create(&th[k], NULL, ctx_thread,
						&j[k]), 0);
	for (int k = 0; k < 2; k++)
		pthread_join(th[k], NULL);
	for (int k = 0; k < 2; k++) {
		ck_assert_msg(j[k].err == 0, "context %d: %d (%s)", k,
			      j[k].err, luffd_strerror(j[k].err));
		ck_assert_msg(j[k].bad == -1, "context %d: page %ld wrong", k,
			      j[k].bad);
		/* Each context counted only its own faults. */
		ck_assert_uint_ge(j[k].faults, 1);
		ck_assert_uint_le(j[k].faults, npg);
		ck_assert_uint_eq(j[k].errors, 0);
		free(j[k].path);
	}
}
END_TEST

/*
 * Contexts created and destroyed one after another by threads that do not
 * synchronise with each other: a new handler's io_uring rings are often
 * mapped where the last one's were. liburing maps them with raw syscalls
 * that ThreadSanitizer does not see, so without the library's annotation
 * TSan reports the new handler's first ring write as a race with the old
 * handler's last ring read (a CI failure). Data and counts are checked in
 * every build.
 */
struct relay {
	char *path;
	uint64_t seed;
	size_t npg;
	int rounds;
	/* Whose round it is (-1: stop). Relaxed only, so that TSan sees no
	 * happens-before between the threads. */
	atomic_int turn;
	int err[2];
	long bad[2];
};

static void *relay_thread(void *arg, int me)
{
	struct relay *r = arg;

	for (int i = 0; i < r->rounds; i++) {
		struct luffd_ctx *ctx = NULL;
		struct luffd_store *st = NULL;
		char *a;

		int t;

		while ((t = atomic_load_explicit(&r->turn,
						 memory_order_relaxed)) !=
		       2 * i + me) {
			if (t < 0)
				return NULL; /* the other thread failed */
			usleep(100);
		}
		if ((r->err[me] = luffd_ctx_create(NULL, &ctx)) ||
		    (r->err[me] = luffd_store_open(r->path, 0, &st)) ||
		    (r->err[me] = luffd_map(ctx, st, 0, r->npg * t_ps,
					    PROT_READ, 0, (void **)&a)))
			goto out;
		for (size_t pg = 0; pg < r->npg && r->bad[me] < 0; pg += 3)
			if (t_page_diff(a + pg * t_ps, pg * t_ps,
					r->npg * t_ps, r->seed) >= 0)
				r->bad[me] = (long)pg;
		r->err[me] = luffd_unmap(ctx, a, r->npg * t_ps);
out:
		luffd_store_put(st);
		if (ctx)
			luffd_ctx_destroy(ctx);
		atomic_store_explicit(&r->turn,
				      r->err[me] || r->bad[me] >= 0 ?
					      -1 : 2 * i + me + 1,
				      memory_order_relaxed);
		if (r->err[me] || r->bad[me] >= 0)
			break;
	}
	return NULL;
}

static void *relay_even(void *arg)
{
	return relay_thread(arg, 0);
}

static void *relay_odd(void *arg)
{
	return relay_thread(arg, 1);
}

START_TEST(contexts_in_turn)
{
	struct relay r = { .seed = 0x7e1a, .npg = 64, .rounds = 4,
			   .bad = { -1, -1 } };
	pthread_t th[2];

	r.path = t_make_file(r.npg * t_ps, r.seed);
	ck_assert_int_eq(pthread_create(&th[0], NULL, relay_even, &r), 0);
	ck_assert_int_eq(pthread_create(&th[1], NULL, relay_odd, &r), 0);
	for (int k = 0; k < 2; k++)
		pthread_join(th[k], NULL);
	for (int k = 0; k < 2; k++) {
		ck_assert_msg(r.err[k] == 0, "thread %d: %d (%s)", k,
			      r.err[k], luffd_strerror(r.err[k]));
		ck_assert_msg(r.bad[k] == -1, "thread %d: page %ld wrong", k,
			      r.bad[k]);
	}
	free(r.path);
}
END_TEST

/* Threads map, touch and unmap their own regions on one context while
 * others fault. */
struct churn {
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	size_t npg;
	int iters;
	long bad;
	int err;
};

static void *churn_thread(void *arg)
{
	struct churn *c = arg;

	c->bad = -1;
	for (int i = 0; i < c->iters; i++) {
		char *a;
		size_t pg = (size_t)(i * 13) % c->npg;

		if ((c->err = luffd_map(c->ctx, c->st, 0, c->npg * t_ps,
					PROT_READ, 0, (void **)&a)))
			return NULL;
		if (t_page_diff(a + pg * t_ps, pg * t_ps, c->npg * t_ps, 0xc4) >=
		    0) {
			c->bad = (long)pg;
			return NULL;
		}
		if ((c->err = luffd_unmap(c->ctx, a, c->npg * t_ps)))
			return NULL;
	}
	return NULL;
}

START_TEST(map_unmap_concurrent)
{
	size_t npg = 64;
	char *path = t_make_file(npg * t_ps, 0xc4);
	LUFFD_OPTS(luffd_ctx_opts, o, .handler_threads = 2);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *st;
	struct churn c[4];
	pthread_t th[4];

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	for (int t = 0; t < 4; t++) {
		c[t] = (struct churn){ ctx, st, npg, (int)t_size(200, 40), -1,
				       0 };
		ck_assert_int_eq(pthread_create(&th[t], NULL, churn_thread,
						&c[t]), 0);
	}
	for (int t = 0; t < 4; t++)
		pthread_join(th[t], NULL);
	for (int t = 0; t < 4; t++) {
		ck_assert_msg(c[t].err == 0, "thread %d: %d", t, c[t].err);
		ck_assert_msg(c[t].bad == -1, "thread %d: page %ld", t,
			      c[t].bad);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("concurrent");
	TCase *tc = t_tcase(s, "concurrent");

	tcase_add_test(tc, same_page);
	tcase_add_test(tc, random_no_readahead);
	tcase_add_test(tc, random_readahead);
	tcase_add_test(tc, random_two_handlers);
	tcase_add_test(tc, striped_range);
	tcase_add_test(tc, striped_rollback);
	tcase_add_test(tc, two_contexts_parallel);
	tcase_add_test(tc, contexts_in_turn);
	tcase_add_test(tc, map_unmap_concurrent);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
