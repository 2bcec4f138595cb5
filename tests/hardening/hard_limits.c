/* SPDX-License-Identifier: MIT */
/*
 * Limits: 5000 regions in one context, 200 threads faulting at once, and a
 * cache of exactly two read-ahead windows with many threads faulting
 * distinct windows (faults must wait for slots, never deadlock).
 */
#include "hard_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct reg {
	char *addr;
	size_t pages;
	uint64_t off;
};

struct span_worker {
	pthread_t t;
	struct reg *regs;
	size_t first, count;
	uint64_t size, seed;
	unsigned long bad, sigs, pages;
	pthread_barrier_t *bar;
	char *hot;        /* a page every thread reads first, or NULL */
	uint64_t hot_off;
};

static void *span_main(void *arg)
{
	struct span_worker *w = arg;
	char *buf = malloc(h_ps);

	if (w->bar)
		pthread_barrier_wait(w->bar);
	if (w->hot) {
		if (h_read(w->hot, h_ps, buf, NULL))
			w->sigs++;
		else if (h_page_diff(buf, w->hot_off, w->size, w->seed) >= 0)
			w->bad++;
	}
	for (size_t r = w->first; r < w->first + w->count; r++) {
		for (size_t i = 0; i < w->regs[r].pages; i++) {
			if (h_read(w->regs[r].addr + i * h_ps, h_ps, buf,
				   NULL)) {
				w->sigs++;
				continue;
			}
			w->pages++;
			if (h_page_diff(buf, w->regs[r].off + i * h_ps,
					w->size, w->seed) >= 0)
				w->bad++;
		}
	}
	free(buf);
	return NULL;
}

/* Touch every page of regs[0..nregs) from nthreads threads; returns the
 * number of pages. */
static size_t touch_all(struct reg *regs, size_t nregs, int nthreads,
			uint64_t size, uint64_t seed, char *hot,
			uint64_t hot_off, double deadline)
{
	struct span_worker *w = calloc((size_t)nthreads, sizeof(*w));
	pthread_barrier_t bar;
	size_t pages = 0;

	pthread_barrier_init(&bar, NULL, (unsigned int)nthreads);
	for (int i = 0; i < nthreads; i++) {
		size_t a = nregs * (size_t)i / (size_t)nthreads;
		size_t b = nregs * (size_t)(i + 1) / (size_t)nthreads;

		w[i] = (struct span_worker){
			.regs = regs, .first = a, .count = b - a,
			.size = size, .seed = seed, .bar = &bar,
			.hot = hot, .hot_off = hot_off,
		};
		ck_assert_int_eq(h_thread(&w[i].t, span_main, &w[i]), 0);
	}
	for (int i = 0; i < nthreads; i++) {
		ck_assert_msg(h_join(w[i].t, deadline, NULL) == 0,
			      "thread %d blocked", i);
		ck_assert_msg(w[i].bad == 0 && w[i].sigs == 0,
			      "thread %d: %lu wrong pages, %lu signals", i,
			      w[i].bad, w[i].sigs);
		pages += w[i].pages;
	}
	pthread_barrier_destroy(&bar);
	free(w);
	return pages;
}

static struct luffd_store *file_store(size_t size, uint64_t seed,
				      unsigned int flags)
{
	struct luffd_store *s = NULL;
	int fd = h_tmpfile(size, seed), err;

	fsync(fd);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	err = luffd_store_file(fd, flags, &s);
	if (err && flags)
		err = luffd_store_file(fd, 0, &s); /* no O_DIRECT here */
	ck_assert_int_eq(err, 0);
	close(fd);
	return s;
}

/* ---- 5000 regions -------------------------------------------------- */

START_TEST(regions_5000_register)
{
	size_t nregs = h_size(5000, 1000), total = 0, span = 0;
	const uint64_t seed = 0xa0, ssize = 64 * h_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = file_store(ssize, seed, 0);
	struct reg *regs = calloc(nregs, sizeof(*regs));
	struct luffd_stats st;
	char *mem, *p, *buf = malloc(h_ps);

	for (size_t i = 0; i < nregs; i++)
		span += (i % 4 + 1) + 1; /* a one-page gap after each */
	mem = mmap(NULL, span * h_ps, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(mem, MAP_FAILED);
	p = mem;
	for (size_t i = 0; i < nregs; i++) {
		int err;

		regs[i] = (struct reg){ .addr = p, .pages = i % 4 + 1,
					.off = (i * 5 % 60) * h_ps };
		err = luffd_register(ctx, p, regs[i].pages * h_ps, s,
				     regs[i].off, 0);
		ck_assert_msg(err == 0, "region %zu: %s", i,
			      luffd_strerror(err));
		total += regs[i].pages;
		p += (regs[i].pages + 1) * h_ps;
	}
	luffd_store_put(s);
	ck_assert_uint_eq(touch_all(regs, nregs, 4, ssize, seed, NULL, 0, 60),
			  total);
	/* The gaps are not served: plain zero pages. */
	for (size_t i = 0; i < nregs; i += 97) {
		char *gap = regs[i].addr + regs[i].pages * h_ps;

		ck_assert_int_eq(h_read(gap, h_ps, buf, NULL), 0);
		ck_assert(h_page_zero(buf));
	}
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_uint_eq(h_faults(&st), total);
	/* Overlap and exact-bounds errors still right with many regions. */
	ck_assert_int_eq(luffd_register(ctx, regs[17].addr, h_ps, s, 0, 0),
			 -EEXIST);
	for (size_t i = 0; i < nregs; i++)
		ck_assert_int_eq(luffd_unregister(ctx, regs[i].addr,
						  regs[i].pages * h_ps), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(mem, span * h_ps);
	free(regs);
	free(buf);
}
END_TEST

START_TEST(regions_5000_map)
{
	size_t nregs = h_size(5000, 1000), total = 0;
	const uint64_t seed = 0xa1, ssize = 64 * h_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_mode = LUFFD_RA_FIXED,
		   .handler_threads = 2);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = file_store(ssize, seed, 0);
	struct reg *regs = calloc(nregs, sizeof(*regs));
	struct luffd_stats st;
	int fds = h_fd_count();

	for (size_t i = 0; i < nregs; i++) {
		int err;

		regs[i] = (struct reg){ .pages = (i * 7) % 4 + 1,
					.off = (i * 3 % 60) * h_ps };
		err = luffd_map(ctx, s, regs[i].off, regs[i].pages * h_ps,
				PROT_READ, 0, (void **)&regs[i].addr);
		ck_assert_msg(err == 0, "region %zu: %s", i,
			      luffd_strerror(err));
		total += regs[i].pages;
	}
	luffd_store_put(s);
	ck_assert_int_eq(h_fd_count(), fds);
	ck_assert_uint_eq(touch_all(regs, nregs, 4, ssize, seed, NULL, 0, 60),
			  total);
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_uint_eq(h_faults(&st), total);
	/* Half by hand, the rest by destroy. */
	for (size_t i = 0; i < nregs; i += 2)
		ck_assert_int_eq(luffd_unmap(ctx, regs[i].addr,
					     regs[i].pages * h_ps), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	for (size_t i = 0; i < nregs; i += 251)
		ck_assert_int_eq(h_read(regs[i].addr, 8, NULL, NULL), SIGSEGV);
	free(regs);
}
END_TEST

/* ---- 200 threads at once ------------------------------------------- */

START_TEST(threads_200)
{
	int nthreads = (int)h_size(200, 50);
	const size_t per = 4, n = (size_t)nthreads * per;
	const uint64_t seed = 0xa2, size = n * h_ps;
	struct luffd_ctx *ctx = h_ctx(NULL);
	struct luffd_store *s = file_store(size, seed, 0);
	struct reg *regs = calloc((size_t)nthreads, sizeof(*regs));
	struct luffd_stats st;
	char *addr = NULL;

	/* The hot page is page 0; thread i then reads pages 4i..4i+3 of
	 * the same region, in reverse thread order so windows collide. */
	ck_assert_int_eq(luffd_map(ctx, s, 0, size, PROT_READ, 0,
				   (void **)&addr), 0);
	luffd_store_put(s);
	for (int i = 0; i < nthreads; i++)
		regs[i] = (struct reg){
			.addr = addr + (size_t)(nthreads - 1 - i) * per * h_ps,
			.pages = per,
			.off = (size_t)(nthreads - 1 - i) * per * h_ps,
		};
	ck_assert_uint_eq(touch_all(regs, (size_t)nthreads, nthreads, size,
				    seed, addr, 0, 60), n);
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_uint_ge(h_faults(&st) + st.installed_ahead, n);
	ck_assert_int_eq(luffd_unmap(ctx, addr, size), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(regs);
}
END_TEST

/* ---- a cache of exactly two windows -------------------------------- */

/* _i: 0 the default queue depth, 1 a queue depth of 1 */
START_TEST(cache_two_windows)
{
	const size_t ra = 16, nthreads = 16, per = 64;
	const size_t n = nthreads * per;
	const uint64_t seed = 0xa3 + (uint64_t)_i, size = n * h_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = ra * h_ps,
		   .cache_bytes = 2 * ra * h_ps,
		   .queue_depth = _i ? 1 : 0,
		   .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = file_store(size, seed, LUFFD_FILE_DIRECT);
	struct reg *regs = calloc(nthreads, sizeof(*regs));
	struct luffd_stats st;
	char *addr = NULL;

	ck_assert_int_eq(luffd_map(ctx, s, 0, size, PROT_READ, 0,
				   (void **)&addr), 0);
	luffd_store_put(s);
	for (size_t i = 0; i < nthreads; i++)
		regs[i] = (struct reg){ .addr = addr + i * per * h_ps,
					.pages = per, .off = i * per * h_ps };
	ck_assert_uint_eq(touch_all(regs, nthreads, (int)nthreads, size, seed,
				    NULL, 0, 60), n);
	h_stats(ctx, &st);
	printf("cache_two_windows(qd %s): %llu faults, %llu reads, %llu "
	       "waits, %llu evictions\n", _i ? "1" : "64",
	       (unsigned long long)h_faults(&st),
	       (unsigned long long)st.reads, (unsigned long long)st.waits,
	       (unsigned long long)st.evictions);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_uint_eq(h_faults(&st), n);
	ck_assert_uint_ge(st.reads, n / ra);
	ck_assert_uint_ge(st.bytes_read, size);
	ck_assert_int_eq(luffd_unmap(ctx, addr, size), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(regs);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hard_limits");
	TCase *tc = h_tcase(s, "limits", H_TIMEOUT);

	tcase_add_test(tc, regions_5000_register);
	tcase_add_test(tc, regions_5000_map);
	tcase_add_test(tc, threads_200);
	tcase_add_loop_test(tc, cache_two_windows, 0, 2);
	return h_main(s);
}
