/* SPDX-License-Identifier: MIT */
/*
 * Teardown with work in flight: luffd_unmap(), luffd_unregister() and
 * luffd_ctx_destroy() while threads fault in a loop.  No thread may stay
 * blocked (joins have a deadline), luffd_map() regions give SIGSEGV
 * afterwards, luffd_register() ranges read as zero (anonymous memory), and
 * no page is ever seen half-written or with the wrong data.
 */
#include "hard_util.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { NTHREADS = 6 };

/* A slow callback store: every fill takes delay_us. */
struct slow {
	uint64_t seed;
	unsigned int delay_us;
	atomic_ulong calls;
};

static ssize_t slow_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct slow *s = arg;

	atomic_fetch_add(&s->calls, 1);
	usleep(s->delay_us);
	h_fill(buf, off, len, s->seed);
	return (ssize_t)len;
}

static struct luffd_store *store_of(int kind, size_t len, uint64_t seed,
				    struct slow *sl)
{
	struct luffd_store *s = NULL;

	if (kind == 0) {
		int fd = h_tmpfile(len, seed);

		ck_assert_int_eq(luffd_store_file(fd, 0, &s), 0);
		close(fd);
	} else {
		LUFFD_OPTS(luffd_callback_ops, ops, .fill = slow_fill,
			   .size = len);

		sl->seed = seed;
		sl->delay_us = 200;
		ck_assert_int_eq(luffd_store_callback(&ops, sl, &s), 0);
	}
	return s;
}

/* Reads pages in a loop, dropping each after reading it, until stop or a
 * signal.  A page must hold the store's data, or (zero_ok, once the range
 * is no longer served) be all zeroes. */
struct worker {
	pthread_t t;
	char *base;
	size_t n, idx;
	uint64_t size, seed;
	atomic_int *stop;
	atomic_int *torn_down; /* set just before the teardown call */
	unsigned long pages, bad, zeros, early_zeros;
	struct h_progress prog; /* count: pages read */
	struct h_sig sig;
	int signo;
};

/* Every word holds the store's data or zero. */
static int right_or_zero(const char *page, uint64_t off, uint64_t seed)
{
	for (size_t k = 0; k < h_ps; k += 8) {
		uint64_t v;

		memcpy(&v, page + k, 8);
		if (v && v != h_word(off + k, seed))
			return 0;
	}
	return 1;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	char *buf = malloc(h_ps);

	for (size_t k = 0; !atomic_load(w->stop); k++) {
		size_t i = (k * NTHREADS + w->idx) * 7 % w->n;
		char *p = w->base + i * h_ps;
		int late;

		w->signo = h_read(p, h_ps, buf, &w->sig);
		if (w->signo)
			break;
		/* After the read: a zero page seen while the teardown had
		 * not begun is a bug. */
		late = atomic_load(w->torn_down);
		w->pages++;
		atomic_fetch_add(&w->prog.count, 1);
		if (h_page_diff(buf, i * h_ps, w->size, w->seed) < 0) {
			/* right */
		} else if (h_page_zero(buf) ||
			   (late && right_or_zero(buf, i * h_ps, w->seed))) {
			/* Once the teardown began, a read that another
			 * thread's MADV_DONTNEED cut in half ends in the
			 * zeroes of a page that is no longer served. */
			w->zeros++;
			if (!late)
				w->early_zeros++;
		} else {
			w->bad++;
		}
		madvise(p, h_ps, MADV_DONTNEED);
	}
	atomic_store(&w->prog.ended, 1);
	free(buf);
	return NULL;
}

/* Wait until every worker has read `more` pages from now on, or ended: a
 * loaded machine may not run them for a while, and a fixed sleep then ends
 * the test before they did anything. */
static void wait_progress(struct worker *w, int nw, unsigned long more)
{
	H_WAIT(w, nw, prog, more);
}

/* Wait until every worker has ended: threads on a luffd_map() region end
 * only with the signal of the unmapped range, and a loaded machine may not
 * run one again for a while after the teardown.  Setting stop before that
 * ends it without the signal the test checks. */
static void wait_ended(struct worker *w, int nw)
{
	H_WAIT(w, nw, prog, 0);
}

static void start_workers(struct worker *w, int nw, char *base, size_t n,
			  uint64_t seed, atomic_int *stop, atomic_int *td)
{
	for (int i = 0; i < nw; i++) {
		w[i] = (struct worker){
			.base = base, .n = n, .idx = (size_t)i,
			.size = n * h_ps, .seed = seed, .stop = stop,
			.torn_down = td,
		};
		ck_assert_int_eq(h_thread(&w[i].t, worker_main, &w[i]), 0);
	}
}

static void join_workers(struct worker *w, int nw)
{
	for (int i = 0; i < nw; i++)
		ck_assert_msg(h_join(w[i].t, 20, NULL) == 0,
			      "thread %d still blocked 20 s after teardown", i);
}

/* Threads on a luffd_map() region end with SIGSEGV: SEGV_MAPERR once the
 * range is unmapped, SEGV_ACCERR if woken while libuffd has made it
 * inaccessible on its way to unmapping it. */
static void check_mapped_workers(struct worker *w, int nw)
{
	for (int i = 0; i < nw; i++) {
		/* The README: after luffd_unmap() a thread faults on
		 * unmapped memory and gets SIGSEGV; a zero page means it
		 * saw the range unregistered but still mapped. */
		ck_assert_msg(w[i].bad == 0 && w[i].zeros == 0,
			      "thread %d: %lu wrong, %lu zero pages (%lu of "
			      "them before the teardown call)", i, w[i].bad,
			      w[i].zeros, w[i].early_zeros);
		ck_assert_msg(w[i].signo == SIGSEGV,
			      "thread %d ended with signal %d (code %d)", i,
			      w[i].signo, w[i].sig.code);
		ck_assert_msg(w[i].sig.code == SEGV_MAPERR ||
			      w[i].sig.code == SEGV_ACCERR,
			      "thread %d: si_code %d", i, w[i].sig.code);
		ck_assert_uint_gt(w[i].pages, 0);
	}
}

/* Threads on a luffd_register() range: never a signal, zeroes only after
 * the teardown started. */
static void check_registered_workers(struct worker *w, int nw)
{
	unsigned long zeros = 0;

	for (int i = 0; i < nw; i++) {
		ck_assert_msg(w[i].signo == 0, "thread %d: signal %d (code %d)",
			      i, w[i].signo, w[i].sig.code);
		ck_assert_msg(w[i].bad == 0, "thread %d: %lu wrong pages", i,
			      w[i].bad);
		ck_assert_msg(w[i].early_zeros == 0,
			      "thread %d: %lu zero pages while served", i,
			      w[i].early_zeros);
		zeros += w[i].zeros;
	}
	ck_assert_msg(zeros > 0, "no zero page seen after the teardown");
}

static void all_zero(char *base, size_t n)
{
	char *buf = malloc(h_ps);

	ck_assert_int_eq(madvise(base, n * h_ps, MADV_DONTNEED), 0);
	for (size_t i = 0; i < n; i++) {
		ck_assert_int_eq(h_read(base + i * h_ps, h_ps, buf, NULL), 0);
		ck_assert_msg(h_page_zero(buf), "page %zu not zero", i);
	}
	free(buf);
}

/* _i: 0 file store, 1 slow callback store, 2 file store mapped
 * read-write (chunks: moves from staging buffers in flight) */
START_TEST(unmap_inflight)
{
	int kind = _i == 2 ? 0 : _i;
	int prot = _i == 2 ? PROT_READ | PROT_WRITE : PROT_READ;
	size_t n = kind == 0 ? h_size(4096, 1024) : 512, len = n * h_ps;
	const uint64_t seed = 0xe0 + (uint64_t)_i;
	struct slow sl = { 0 };
	struct luffd_ctx *ctx = h_ctx(NULL);
	struct luffd_store *s = store_of(kind, len, seed, &sl);
	struct worker w[NTHREADS];
	atomic_int stop = 0, td = 0;
	void *addr = NULL;
	double t0;

	ck_assert_int_eq(luffd_map(ctx, s, 0, len, prot, 0, &addr), 0);
	luffd_store_put(s);
	start_workers(w, NTHREADS, addr, n, seed, &stop, &td);
	wait_progress(w, NTHREADS, 2);
	atomic_store(&td, 1);
	t0 = h_now();
	ck_assert_int_eq(luffd_unmap(ctx, addr, len), 0);
	ck_assert_double_lt(h_now() - t0, 5.0);
	join_workers(w, NTHREADS);
	check_mapped_workers(w, NTHREADS);
	ck_assert_int_eq(luffd_unmap(ctx, addr, len), -ENOENT);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

START_TEST(unregister_inflight)
{
	size_t n = _i == 0 ? h_size(4096, 1024) : 512, len = n * h_ps;
	const uint64_t seed = 0xe2 + (uint64_t)_i;
	struct slow sl = { 0 };
	struct luffd_ctx *ctx = h_ctx(NULL);
	struct luffd_store *s = store_of(_i, len, seed, &sl);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct worker w[NTHREADS];
	atomic_int stop = 0, td = 0;

	ck_assert_ptr_ne(mem, MAP_FAILED);
	ck_assert_int_eq(luffd_register(ctx, mem, len, s, 0, 0), 0);
	luffd_store_put(s);
	start_workers(w, NTHREADS, mem, n, seed, &stop, &td);
	wait_progress(w, NTHREADS, 2);
	atomic_store(&td, 1);
	ck_assert_int_eq(luffd_unregister(ctx, mem, len), 0);
	wait_progress(w, NTHREADS, 4);
	atomic_store(&stop, 1);
	join_workers(w, NTHREADS);
	check_registered_workers(w, NTHREADS);
	all_zero(mem, n);
	ck_assert_int_eq(luffd_unregister(ctx, mem, len), -ENOENT);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(mem, len);
}
END_TEST

/* Destroy with a luffd_map() region and a luffd_register() range both
 * being faulted on. */
START_TEST(destroy_inflight)
{
	int kind = _i == 2 ? 0 : _i;
	int prot = _i == 2 ? PROT_READ | PROT_WRITE : PROT_READ;
	size_t n = kind == 0 ? h_size(2048, 512) : 256, len = n * h_ps;
	const uint64_t seed = 0xe4 + (uint64_t)_i;
	struct slow sl1 = { 0 }, sl2 = { 0 };
	/* The read-write variant also stripes both ranges over the two
	 * handlers (16-page stripes: every handler has faults in flight). */
	LUFFD_OPTS(luffd_ctx_opts, o, .handler_threads = 2,
		   .stripe_bytes = _i == 2 ? 16 * h_ps : 0);
	/* Every fd from before the context: nothing it opened may stay. */
	int fds = h_fd_count();
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s1 = store_of(kind, len, seed, &sl1);
	struct luffd_store *s2 = store_of(kind, len, seed, &sl2);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct worker wm[NTHREADS / 2], wr[NTHREADS / 2];
	atomic_int stop = 0, td = 0;
	void *addr = NULL;
	double t0;

	ck_assert_ptr_ne(mem, MAP_FAILED);
	ck_assert_int_eq(luffd_map(ctx, s1, 0, len, prot, 0, &addr), 0);
	ck_assert_int_eq(luffd_register(ctx, mem, len, s2, 0, 0), 0);
	luffd_store_put(s1);
	luffd_store_put(s2);
	start_workers(wm, NTHREADS / 2, addr, n, seed, &stop, &td);
	start_workers(wr, NTHREADS / 2, mem, n, seed, &stop, &td);
	wait_progress(wm, NTHREADS / 2, 2);
	wait_progress(wr, NTHREADS / 2, 2);
	atomic_store(&td, 1);
	t0 = h_now();
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	ck_assert_double_lt(h_now() - t0, 5.0);
	wait_progress(wr, NTHREADS / 2, 4);
	wait_ended(wm, NTHREADS / 2);
	atomic_store(&stop, 1);
	join_workers(wm, NTHREADS / 2);
	join_workers(wr, NTHREADS / 2);
	check_mapped_workers(wm, NTHREADS / 2);
	check_registered_workers(wr, NTHREADS / 2);
	all_zero(mem, n);
	/* Every userfaultfd, io_uring, eventfd and store fd is closed. */
	ck_assert_int_eq(h_fd_count(), fds);
	munmap(mem, len);
}
END_TEST

/* Many short lives: create, fault from several threads, destroy at a
 * random moment.  Nothing hangs, no fd leaks. */
START_TEST(destroy_repeat)
{
	int iters = (int)h_size(30, 8), fds0 = -1;
	const size_t n = 256, len = n * h_ps;
	const uint64_t seed = 0xe6;
	int fd = h_tmpfile(len, seed);

	for (int it = 0; it < iters; it++) {
		LUFFD_OPTS(luffd_ctx_opts, o,
			   .handler_threads = 1 + (unsigned int)(it % 2),
			   .readahead_bytes = (size_t)(1 + it % 4) * h_ps);
		struct luffd_ctx *ctx;
		struct luffd_store *s = NULL;
		struct worker w[4];
		atomic_int stop = 0, td = 0;
		void *addr = NULL;

		if (it == 1)
			fds0 = h_fd_count();
		ctx = h_ctx(&o);
		ck_assert_int_eq(luffd_store_file(fd, 0, &s), 0);
		ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0,
					   &addr), 0);
		luffd_store_put(s);
		start_workers(w, 4, addr, n, seed, &stop, &td);
		usleep((useconds_t)(1000 * (it % 7)));
		atomic_store(&td, 1);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
		join_workers(w, 4);
		/* As check_mapped_workers(), except that a worker may not
		 * have read a page before the destroy. */
		for (int i = 0; i < 4; i++) {
			ck_assert_int_eq(w[i].bad, 0);
			ck_assert_msg(w[i].zeros == 0, "thread %d: %lu zero "
				      "pages", i, w[i].zeros);
			ck_assert_int_eq(w[i].signo, SIGSEGV);
			ck_assert_msg(w[i].sig.code == SEGV_MAPERR ||
				      w[i].sig.code == SEGV_ACCERR,
				      "thread %d: si_code %d", i,
				      w[i].sig.code);
		}
		if (it >= 1)
			ck_assert_int_eq(h_fd_count(), fds0);
	}
	close(fd);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hard_teardown");
	TCase *tc = h_tcase(s, "teardown", H_TIMEOUT);

	tcase_add_loop_test(tc, unmap_inflight, 0, 3);
	tcase_add_loop_test(tc, unregister_inflight, 0, 2);
	tcase_add_loop_test(tc, destroy_inflight, 0, 3);
	tcase_add_test(tc, destroy_repeat);
	return h_main(s);
}
