/* SPDX-License-Identifier: MIT */
/*
 * Bounce stress test, after the kernel's uffd-stress: threads pick pages
 * at random, check and increment a per-page counter under a per-page lock
 * (each page's whole content is a function of its index and counter), and
 * now and then drop a page with MADV_DONTNEED, which makes it fault again
 * and come back from the store with its initial counter.  At the end every
 * page must be consistent, events_remove must equal the number of drops
 * and the faults the number of touches of missing pages.
 *
 * Small in CI (2 s).  LUFFD_SOAK_SECONDS=N runs N seconds and prints the
 * faults served and the RSS growth, which must stay under a bound.
 */
#include "hard_util.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NPAGES 256

static uint64_t base_count(size_t p)
{
	return (uint64_t)p * 1000;
}

/* Page p with counter c: word 0 the counter, word 1 the index, the rest a
 * pattern seeded by both. */
static void make_page(uint64_t *w, size_t p, uint64_t c)
{
	w[0] = c;
	w[1] = p;
	for (size_t j = 2; j < h_ps / 8; j++)
		w[j] = h_word(j * 8, c * 0x10001 + p);
}

struct shared {
	char *region;
	pthread_mutex_t lock[NPAGES];
	uint64_t expect[NPAGES];
	int present[NPAGES];
	atomic_ulong faults, drops, ops, bad;
	atomic_int stop;
};

struct bthread {
	pthread_t t;
	struct shared *sh;
	unsigned int seed;
};

static void *bounce_main(void *arg)
{
	struct bthread *b = arg;
	struct shared *sh = b->sh;
	uint64_t *buf = malloc(h_ps), *want = malloc(h_ps);
	unsigned int r = b->seed;
	unsigned long k = 0;

	while (!atomic_load_explicit(&sh->stop, memory_order_relaxed)) {
		size_t p;
		char *pg;

		r = r * 1103515245u + 12345u;
		p = (r >> 8) % NPAGES;
		pg = sh->region + p * h_ps;
		pthread_mutex_lock(&sh->lock[p]);
		if (!sh->present[p]) {
			atomic_fetch_add(&sh->faults, 1);
			sh->present[p] = 1;
		}
		if (h_read(pg, h_ps, buf, NULL)) {
			atomic_fetch_add(&sh->bad, 1);
			pthread_mutex_unlock(&sh->lock[p]);
			break;
		}
		make_page(want, p, sh->expect[p]);
		if (memcmp(buf, want, h_ps) != 0)
			atomic_fetch_add(&sh->bad, 1);
		sh->expect[p]++;
		make_page(want, p, sh->expect[p]);
		memcpy(pg, want, h_ps);
		if (++k % 32 == 0) {
			madvise(pg, h_ps, MADV_DONTNEED);
			sh->expect[p] = base_count(p);
			sh->present[p] = 0;
			atomic_fetch_add(&sh->drops, 1);
		}
		pthread_mutex_unlock(&sh->lock[p]);
		atomic_fetch_add_explicit(&sh->ops, 1, memory_order_relaxed);
	}
	free(buf);
	free(want);
	return NULL;
}

/* _i: 0 memory store, 1 file store through a small cache */
START_TEST(bounce)
{
	const size_t len = NPAGES * h_ps;
	const char *soak = getenv("LUFFD_SOAK_SECONDS");
	double secs = soak ? atof(soak) : (h_small() ? 1 : 2);
	int nthreads = (int)h_size(6, 3);
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = 4 * h_ps,
		   .cache_bytes = 64 * h_ps, .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct shared *sh = calloc(1, sizeof(*sh));
	struct bthread *bt = calloc((size_t)nthreads, sizeof(*bt));
	struct luffd_store *s = NULL;
	char *back = malloc(len), *buf = malloc(h_ps);
	struct luffd_stats st;
	long rss0, rss1;
	double t0;

	for (size_t p = 0; p < NPAGES; p++) {
		make_page((uint64_t *)(back + p * h_ps), p, base_count(p));
		pthread_mutex_init(&sh->lock[p], NULL);
		sh->expect[p] = base_count(p);
	}
	if (_i == 0) {
		ck_assert_int_eq(luffd_store_memory(back, len, &s), 0);
	} else {
		int fd = h_tmpfile(0, 0);

		ck_assert_int_eq(pwrite(fd, back, len, 0), (ssize_t)len);
		ck_assert_int_eq(luffd_store_file(fd, 0, &s), 0);
		close(fd);
	}
	sh->region = mmap(NULL, len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(sh->region, MAP_FAILED);
	ck_assert_int_eq(luffd_register(ctx, sh->region, len, s, 0, 0), 0);
	luffd_store_put(s);

	/* Warm up: every page present once, then drop them all, so that
	 * the RSS baseline includes the region and the library's buffers. */
	for (size_t p = 0; p < NPAGES; p++)
		ck_assert_int_eq(h_read(sh->region + p * h_ps, h_ps, buf, NULL),
				 0);
	ck_assert_int_eq(madvise(sh->region, len, MADV_DONTNEED), 0);
	rss0 = h_rss_pages();

	for (int i = 0; i < nthreads; i++) {
		bt[i] = (struct bthread){ .sh = sh,
					  .seed = 7919u * (unsigned)i + 1 };
		ck_assert_int_eq(h_thread(&bt[i].t, bounce_main, &bt[i]), 0);
	}
	t0 = h_now();
	while (h_now() - t0 < secs && !atomic_load(&sh->bad))
		usleep(20000);
	atomic_store(&sh->stop, 1);
	for (int i = 0; i < nthreads; i++)
		ck_assert_msg(h_join(bt[i].t, 20, NULL) == 0,
			      "thread %d blocked", i);
	ck_assert_uint_eq(atomic_load(&sh->bad), 0);

	/* Every page consistent with its counter. */
	for (size_t p = 0; p < NPAGES; p++) {
		uint64_t *want = malloc(h_ps);

		if (!sh->present[p])
			atomic_fetch_add(&sh->faults, 1);
		sh->present[p] = 1;
		ck_assert_int_eq(h_read(sh->region + p * h_ps, h_ps, buf, NULL),
				 0);
		make_page(want, p, sh->expect[p]);
		ck_assert_msg(memcmp(buf, want, h_ps) == 0,
			      "page %zu: counter %llu, want %llu", p,
			      (unsigned long long)((uint64_t *)buf)[0],
			      (unsigned long long)sh->expect[p]);
		free(want);
	}
	rss1 = h_rss_pages();
	h_stats(ctx, &st);
	printf("bounce(%s): %.1f s, %d threads, %lu ops, %lu drops, %llu "
	       "faults served (%llu minor, %llu major), RSS %+ld KiB\n",
	       _i ? "file" : "memory", h_now() - t0, nthreads,
	       atomic_load(&sh->ops), atomic_load(&sh->drops),
	       (unsigned long long)h_faults(&st),
	       (unsigned long long)st.faults[LUFFD_MINOR],
	       (unsigned long long)st.faults[LUFFD_MAJOR],
	       (rss1 - rss0) * (long)h_ps / 1024);
	ck_assert_uint_gt(atomic_load(&sh->drops), 0);
	/* One madvise() per drop, one REMOVE event each (plus the warm-up
	 * drop). */
	ck_assert_uint_eq(st.events_remove, atomic_load(&sh->drops) + 1);
	/* The warm-up faulted every page once. */
	ck_assert_uint_eq(h_faults(&st), atomic_load(&sh->faults) + NPAGES);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR] + st.faults[LUFFD_ZERO], 0);
	/* The region is at most NPAGES pages; the library itself must not
	 * grow. */
	ck_assert_msg((rss1 - rss0) * (long)h_ps <=
			      (H_SANITIZED ? 64l << 20 : 8l << 20),
		      "RSS grew by %ld KiB", (rss1 - rss0) * (long)h_ps / 1024);
	ck_assert_int_eq(luffd_unregister(ctx, sh->region, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(sh->region, len);
	free(back);
	free(buf);
	free(bt);
	free(sh);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hard_bounce");
	const char *soak = getenv("LUFFD_SOAK_SECONDS");
	/* A soak run gets its duration plus a margin. */
	TCase *tc = h_tcase(s, "bounce",
			    soak ? 2 * atoi(soak) + 60 : H_TIMEOUT);

	tcase_add_loop_test(tc, bounce, 0, 2);
	return h_main(s);
}
