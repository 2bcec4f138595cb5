/* SPDX-License-Identifier: MIT */
/*
 * Memory events under live regions: madvise(MADV_DONTNEED), munmap() of the
 * middle of a region while other threads fault, mremap() of (part of) a
 * region, a mapping grown by mremap(), and fork().
 */
#include "hard_util.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* A thread reading pages [first, first+count) of base over and over,
 * checking each against the store, and (dontneed) dropping each page after
 * reading it so that it faults again. */
struct toucher {
	pthread_t t;
	char *base;
	uint64_t off0;   /* store offset of base */
	uint64_t size;   /* store size */
	uint64_t seed;
	size_t first, count;
	int dontneed;
	atomic_int *stop;
	unsigned long bad, sigs;
	struct h_progress prog; /* count: rounds done */
	struct h_sig sig;
};

static void *toucher_main(void *arg)
{
	struct toucher *w = arg;
	char *buf = malloc(h_ps);

	while (!atomic_load(w->stop)) {
		for (size_t i = w->first; i < w->first + w->count; i++) {
			char *p = w->base + i * h_ps;

			if (h_read(p, h_ps, buf, &w->sig)) {
				w->sigs++;
				goto out;
			}
			if (h_page_diff(buf, w->off0 + i * h_ps, w->size,
					w->seed) >= 0)
				w->bad++;
			if (w->dontneed && (i & 1))
				madvise(p, h_ps, MADV_DONTNEED);
		}
		atomic_fetch_add(&w->prog.count, 1);
	}
out:
	atomic_store(&w->prog.ended, 1);
	free(buf);
	return NULL;
}

static void start_toucher(struct toucher *w)
{
	ck_assert_int_eq(h_thread(&w->t, toucher_main, w), 0);
}

/* Wait until every toucher has done `more` rounds from now on, or ended:
 * on a loaded machine a fixed sleep may pass before a thread ran at all. */
static void wait_rounds(struct toucher *w, int nw, unsigned long more)
{
	H_WAIT(w, nw, prog, more);
}

static void join_toucher(struct toucher *w)
{
	ck_assert_msg(h_join(w->t, 20, NULL) == 0,
		      "a faulting thread is still blocked after 20 s");
	ck_assert_msg(w->bad == 0, "%lu wrong pages", w->bad);
	ck_assert_msg(w->sigs == 0, "signal %d (code %d) at %p", w->sig.signo,
		      w->sig.code, w->sig.addr);
	ck_assert_uint_gt(atomic_load(&w->prog.count), 0);
}

static void *map_store(struct luffd_ctx *ctx, struct luffd_store *s,
		       size_t len)
{
	void *a = NULL;

	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ | PROT_WRITE, 0,
				   &a), 0);
	return a;
}

static void check_pages(const char *base, size_t first, size_t count,
			uint64_t off0, uint64_t size, uint64_t seed)
{
	struct h_sig sig;
	char *buf = malloc(h_ps);

	for (size_t i = first; i < first + count; i++) {
		int s = h_read(base + i * h_ps, h_ps, buf, &sig);

		ck_assert_msg(s == 0, "page %zu: signal %d code %d", i, s,
			      sig.code);
		h_assert_page(buf, off0 + i * h_ps, size, seed);
	}
	free(buf);
}

static void expect_signal(void *p, int signo, int code)
{
	struct h_sig sig;
	int s = h_read(p, 8, NULL, &sig);

	ck_assert_msg(s == signo, "%p: got signal %d (code %d), want %d", p,
		      s, sig.code, signo);
	if (code)
		ck_assert_int_eq(sig.code, code);
}

/* ---- MADV_DONTNEED ------------------------------------------------- */

START_TEST(dontneed_map)
{
	const size_t n = 64, len = n * h_ps;
	const uint64_t seed = 0xd0;
	struct luffd_stats a, b, c;
	/* Fixed windows: no install-ahead, every page faults once. */
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = h_file_store(len, seed);
	char *addr = map_store(ctx, s, len);

	luffd_store_put(s);
	check_pages(addr, 0, n, 0, len, seed);
	h_stats(ctx, &a);
	ck_assert_uint_eq(a.faults[LUFFD_MINOR] + a.faults[LUFFD_MAJOR], n);
	ck_assert_uint_eq(a.faults[LUFFD_ERROR] + a.faults[LUFFD_ZERO], 0);
	ck_assert_uint_eq(a.events_remove, 0);

	/* A private write, then DONTNEED: the page is the store's again. */
	memset(addr + 20 * h_ps, 0xab, h_ps);
	ck_assert_int_eq(madvise(addr + 16 * h_ps, 16 * h_ps, MADV_DONTNEED),
			 0);
	h_stats(ctx, &b);
	ck_assert_uint_eq(b.events_remove, 1);
	ck_assert_uint_eq(h_faults(&b), n);

	check_pages(addr, 0, n, 0, len, seed);
	h_stats(ctx, &c);
	/* The 16 dropped pages fault again and come from the cache. */
	ck_assert_uint_eq(h_faults(&c), n + 16);
	ck_assert_uint_eq(c.faults[LUFFD_MAJOR], a.faults[LUFFD_MAJOR]);
	ck_assert_uint_eq(c.faults[LUFFD_MINOR], a.faults[LUFFD_MINOR] + 16);
	ck_assert_int_eq(luffd_unmap(ctx, addr, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

START_TEST(dontneed_register)
{
	const size_t n = 32, len = n * h_ps;
	const uint64_t seed = 0xd1;
	struct luffd_stats st;
	struct luffd_ctx *ctx = h_ctx(NULL);
	struct luffd_store *s = NULL;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *back = malloc(len);

	ck_assert_ptr_ne(mem, MAP_FAILED);
	h_fill(back, 0, len, seed);
	ck_assert_int_eq(luffd_store_memory(back, len, &s), 0);
	ck_assert_int_eq(luffd_register(ctx, mem, len, s, 0, 0), 0);
	luffd_store_put(s);
	for (int round = 0; round < 3; round++) {
		check_pages(mem, 0, n, 0, len, seed);
		mem[5 * h_ps] = 1; /* private change, dropped below */
		ck_assert_int_eq(madvise(mem, len, MADV_DONTNEED), 0);
	}
	check_pages(mem, 0, n, 0, len, seed);
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.events_remove, 3);
	ck_assert_uint_eq(st.faults[LUFFD_MINOR], 4 * n);
	ck_assert_uint_eq(h_faults(&st), 4 * n);
	ck_assert_int_eq(luffd_unregister(ctx, mem, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(mem, len);
	free(back);
}
END_TEST

/* ---- munmap() of the middle while other threads fault -------------- */

START_TEST(munmap_middle)
{
	const size_t S = 128, n = 3 * S, len = n * h_ps;
	const uint64_t seed = 0xd2;
	struct luffd_stats st;
	struct luffd_ctx *ctx = h_ctx(NULL);
	struct luffd_store *s = h_file_store(len, seed);
	char *addr = map_store(ctx, s, len);
	struct toucher w[4];
	atomic_int stop = 0;

	luffd_store_put(s);
	for (int i = 0; i < 4; i++) {
		w[i] = (struct toucher){
			.base = addr, .size = len, .seed = seed,
			.first = (i < 2 ? 0 : 2 * S) + (size_t)(i & 1) * S / 2,
			.count = S / 2, .dontneed = 1, .stop = &stop,
		};
		start_toucher(&w[i]);
	}
	wait_rounds(w, 4, 1);
	ck_assert_int_eq(munmap(addr + S * h_ps, S * h_ps), 0);
	wait_rounds(w, 4, 2);
	atomic_store(&stop, 1);
	for (int i = 0; i < 4; i++)
		join_toucher(&w[i]);

	h_stats(ctx, &st);
	ck_assert_uint_ge(st.events_unmap, 1);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	expect_signal(addr + S * h_ps, SIGSEGV, SEGV_MAPERR);
	/* Head and tail still served, from a fresh fault too. */
	ck_assert_int_eq(madvise(addr, S * h_ps, MADV_DONTNEED), 0);
	ck_assert_int_eq(madvise(addr + 2 * S * h_ps, S * h_ps, MADV_DONTNEED),
			 0);
	check_pages(addr, 0, S, 0, len, seed);
	check_pages(addr, 2 * S, S, 0, len, seed);

	ck_assert_int_eq(luffd_unmap(ctx, addr, len), -EINVAL);
	ck_assert_int_eq(luffd_unmap(ctx, addr + S * h_ps, S * h_ps), -ENOENT);
	ck_assert_int_eq(luffd_unmap(ctx, addr, S * h_ps), 0);
	ck_assert_int_eq(luffd_unmap(ctx, addr + 2 * S * h_ps, S * h_ps), 0);
	expect_signal(addr, SIGSEGV, SEGV_MAPERR);
	expect_signal(addr + 2 * S * h_ps, SIGSEGV, SEGV_MAPERR);
	ck_assert_int_eq(luffd_unmap(ctx, addr, S * h_ps), -ENOENT);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* ---- mremap() ------------------------------------------------------ */

static char *reserve(size_t len)
{
	char *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		       0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

START_TEST(mremap_part)
{
	const size_t n = 64, len = n * h_ps;
	const uint64_t seed = 0xd3;
	struct luffd_stats st;
	/* Single-page reads: no page of the moved part is cached before it
	 * moves, so its faults read the store at the right offset. */
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD,
		   .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = h_file_store(len, seed);
	char *addr = map_store(ctx, s, len);
	char *dst = reserve(32 * h_ps), *moved;

	luffd_store_put(s);
	/* Some pages of the moved part are installed before the move. */
	check_pages(addr, 0, 8, 0, len, seed);
	check_pages(addr, 20, 4, 0, len, seed);
	moved = mremap(addr + 16 * h_ps, 32 * h_ps, 32 * h_ps,
		       MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ck_assert_ptr_eq(moved, dst);
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.events_remap, 1);

	/* The moved part shows store offsets 16.. at its new address. */
	check_pages(moved - 16 * h_ps, 16, 32, 0, len, seed);
	check_pages(addr, 0, 16, 0, len, seed);
	check_pages(addr, 48, 16, 0, len, seed);
	expect_signal(addr + 16 * h_ps, SIGSEGV, SEGV_MAPERR);
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_uint_eq(st.orphan_faults, 0);
	ck_assert_uint_eq(h_faults(&st), n);

	ck_assert_int_eq(luffd_unmap(ctx, addr, len), -EINVAL);
	ck_assert_int_eq(luffd_unmap(ctx, moved, 32 * h_ps), 0);
	ck_assert_int_eq(luffd_unmap(ctx, addr, 16 * h_ps), 0);
	ck_assert_int_eq(luffd_unmap(ctx, addr + 48 * h_ps, 16 * h_ps), 0);
	expect_signal(moved, SIGSEGV, SEGV_MAPERR);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* A whole region moved (with readahead: cached pages keyed by store
 * offset must follow the move). */
START_TEST(mremap_whole)
{
	const size_t n = 96, len = n * h_ps;
	const uint64_t seed = 0xd4;
	struct luffd_stats st;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = h_file_store(len, seed);
	char *addr = map_store(ctx, s, len);
	char *dst = reserve(len), *moved;

	luffd_store_put(s);
	check_pages(addr, 0, 4, 0, len, seed); /* caches pages 0..31 */
	moved = mremap(addr, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ck_assert_ptr_eq(moved, dst);
	check_pages(moved, 0, n, 0, len, seed);
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.events_remap, 1);
	ck_assert_uint_eq(h_faults(&st), n);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_int_eq(luffd_unmap(ctx, addr, len), -ENOENT);
	ck_assert_int_eq(luffd_unmap(ctx, moved, len), 0);
	expect_signal(moved, SIGSEGV, SEGV_MAPERR);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* A mapping grown by mremap(): the new tail is registered with the
 * userfaultfd but belongs to no region: SIGBUS, counted as orphan. */
START_TEST(mremap_grow)
{
	const size_t n = 16, len = n * h_ps;
	const uint64_t seed = 0xd5;
	struct luffd_stats st;
	struct luffd_ctx *ctx = h_ctx(NULL);
	struct luffd_store *s = h_file_store(4 * len, seed);
	char *addr = map_store(ctx, s, len);
	char *dst = reserve(2 * len), *grown;
	double t0;

	luffd_store_put(s);
	check_pages(addr, 0, 2, 0, 4 * len, seed);
	grown = mremap(addr, len, 2 * len, MREMAP_MAYMOVE | MREMAP_FIXED,
		       dst);
	ck_assert_ptr_eq(grown, dst);
	t0 = h_now();
	expect_signal(grown + len, SIGBUS, h_feat.has_poison ? BUS_ADRERR : 0);
	ck_assert_double_lt(h_now() - t0, 5.0);
	check_pages(grown, 0, n, 0, 4 * len, seed);
	h_stats(ctx, &st);
	ck_assert_uint_ge(st.orphan_faults, 1);
	ck_assert_uint_eq(st.events_remap, 1);
	ck_assert_int_eq(luffd_unmap(ctx, grown, len), 0);
	ck_assert_int_eq(munmap(grown + len, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* ---- fork() -------------------------------------------------------- */

START_TEST(fork_child)
{
	const size_t n = 32, len = n * h_ps;
	const uint64_t sa = 0xd6, sb = 0xd7;
	struct luffd_stats st;
	struct luffd_ctx *ctx = h_ctx(NULL);
	struct luffd_store *s = h_file_store(len, sa), *m = NULL;
	char *a = map_store(ctx, s, len);
	char *b = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *back = malloc(len);
	struct toucher w[2];
	atomic_int stop = 0;
	int status = -1;
	pid_t pid;
	double t0;

	luffd_store_put(s);
	ck_assert_ptr_ne(b, MAP_FAILED);
	h_fill(back, 0, len, sb);
	ck_assert_int_eq(luffd_store_memory(back, len, &m), 0);
	ck_assert_int_eq(luffd_register(ctx, b, len, m, 0, 0), 0);
	luffd_store_put(m);
	check_pages(b, 0, n / 2, 0, len, sb);

	/* The parent keeps faulting on a (and dropping its pages) while the
	 * child runs. */
	for (int i = 0; i < 2; i++) {
		w[i] = (struct toucher){
			.base = a, .size = len, .seed = sa,
			.first = (size_t)i * n / 2, .count = n / 2,
			.dontneed = 1, .stop = &stop,
		};
		start_toucher(&w[i]);
	}
	wait_rounds(w, 2, 1);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		/* Only this thread exists here; report through the exit
		 * status, never through check. */
		struct h_sig sig;
		char *buf = malloc(h_ps);
		int r = 0;

		alarm(10);
		/* a was MADV_DONTFORK: not mapped in the child at all. */
		if (h_read(a, 8, NULL, &sig) != SIGSEGV ||
		    sig.code != SEGV_MAPERR)
			r |= 1;
		if (h_read(a + (n - 1) * h_ps, 8, NULL, &sig) != SIGSEGV)
			r |= 2;
		/* b: pages installed before fork() are copied; missing ones
		 * are ordinary anonymous memory in the child (no
		 * UFFD_FEATURE_EVENT_FORK): zero-filled. */
		for (size_t i = 0; i < n; i++) {
			if (h_read(b + i * h_ps, h_ps, buf, &sig)) {
				r |= 4;
				break;
			}
			if (i < n / 2 && h_page_diff(buf, i * h_ps, len, sb) >= 0)
				r |= 8;
			if (i >= n / 2 && !h_page_zero(buf))
				r |= 16;
		}
		_exit(r);
	}
	t0 = h_now();
	while (waitpid(pid, &status, WNOHANG) == 0 && h_now() - t0 < 15)
		usleep(10000);
	if (h_now() - t0 >= 15) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		ck_abort_msg("child hung");
	}
	wait_rounds(w, 2, 1);
	atomic_store(&stop, 1);
	for (int i = 0; i < 2; i++)
		join_toucher(&w[i]);
	ck_assert_msg(WIFEXITED(status), "child died of signal %d",
		      WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	ck_assert_msg(WEXITSTATUS(status) == 0,
		      "child saw: %s%s%s%s%s", WEXITSTATUS(status) & 1 ?
		      "no SIGSEGV on a MADV_DONTFORK region; " : "",
		      WEXITSTATUS(status) & 2 ? "no SIGSEGV at its end; " : "",
		      WEXITSTATUS(status) & 4 ? "a signal on b; " : "",
		      WEXITSTATUS(status) & 8 ? "wrong copied pages; " : "",
		      WEXITSTATUS(status) & 16 ? "non-zero missing pages" : "");

	/* The parent's registration is untouched by the child. */
	check_pages(b, 0, n, 0, len, sb);
	check_pages(a, 0, n, 0, len, sa);
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_uint_ge(h_faults(&st), 2 * n);
	ck_assert_int_eq(luffd_unregister(ctx, b, len), 0);
	ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(b, len);
	free(back);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hard_events");
	TCase *tc = h_tcase(s, "events", H_TIMEOUT);

	tcase_add_test(tc, dontneed_map);
	tcase_add_test(tc, dontneed_register);
	tcase_add_test(tc, munmap_middle);
	tcase_add_test(tc, mremap_part);
	tcase_add_test(tc, mremap_whole);
	tcase_add_test(tc, mremap_grow);
	tcase_add_test(tc, fork_child);
	return h_main(s);
}
