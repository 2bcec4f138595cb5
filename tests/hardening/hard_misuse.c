/* SPDX-License-Identifier: MIT */
/*
 * Callback misuse: a fill() that touches a missing page served by its own
 * handler thread (a deadlock the library detects: SIGBUS with -EDEADLK,
 * stats.callback_misuse), and library calls made from callbacks
 * (-EDEADLK).  Each scenario runs in a forked child with a deadline, so a
 * hang fails the test instead of stalling the suite.
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

/* Set before the faults that make fill() read them: the kernel orders the
 * two, but ThreadSanitizer cannot see that, hence atomics. */
static struct luffd_ctx *_Atomic g_ctx;
static char *_Atomic g_a;          /* registered range the bad fill() reads */
static _Atomic size_t g_alen;
static _Atomic uint64_t g_seen;
static _Atomic int g_err_deadlk, g_err_other;

static ssize_t bad_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	/* Reads a page of g_a: missing on the first call (the deadlock),
	 * present later (harmless). */
	atomic_store(&g_seen, *(volatile uint64_t *)(g_a + 2 * h_ps));
	h_fill(buf, off, len, *(uint64_t *)arg);
	return (ssize_t)len;
}

static void misuse_trace(void *arg, const struct luffd_fault *f)
{
	(void)arg;
	if (f->cls == LUFFD_ERROR) {
		if (f->error == -EDEADLK)
			atomic_fetch_add(&g_err_deadlk, 1);
		else
			atomic_fetch_add(&g_err_other, 1);
	}
}

/* Run fn in a child; fail if it hangs past secs or does not exit 0. */
static void in_child(void (*fn)(void), double secs)
{
	int status = 0;
	pid_t pid = fork();
	double t0 = h_now();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		alarm((unsigned int)secs + 5);
		fn();
		_exit(0);
	}
	while (waitpid(pid, &status, WNOHANG) == 0) {
		if (h_now() - t0 > secs) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			ck_abort_msg("the child hung (more than %.0f s)", secs);
		}
		usleep(5000);
	}
	ck_assert_msg(WIFEXITED(status), "the child died of signal %d",
		      WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	ck_assert_msg(WEXITSTATUS(status) == 0, "the child failed: code %d",
		      WEXITSTATUS(status));
}

#define CHILD_CHECK(cond, code)                                              \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "child: %s:%d: %s\n", __FILE__,     \
				__LINE__, #cond);                            \
			_exit(code);                                         \
		}                                                            \
	} while (0)

static void fill_touches_own_region(void)
{
	const size_t n = 8, len = n * h_ps;
	uint64_t sa = 0x71, sb = 0x72;
	LUFFD_OPTS(luffd_ctx_opts, o, .trace_fn = misuse_trace);
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = bad_fill, .size = len);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *ms = NULL, *cs = NULL;
	char *back = malloc(len), *b = NULL, *buf = malloc(h_ps);
	struct h_sig sig;
	double t0;
	int r;

	{
		struct luffd_ctx *c = NULL;

		CHILD_CHECK(luffd_ctx_create(&o, &c) == 0, 2);
		g_ctx = c;
	}
	g_alen = len;
	g_a = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHILD_CHECK(g_a != MAP_FAILED, 3);
	h_fill(back, 0, len, sa);
	CHILD_CHECK(luffd_store_memory(back, len, &ms) == 0, 4);
	CHILD_CHECK(luffd_register(g_ctx, g_a, len, ms, 0, 0) == 0, 5);
	CHILD_CHECK(luffd_store_callback(&ops, &sb, &cs) == 0, 6);
	CHILD_CHECK(luffd_map(g_ctx, cs, 0, len, PROT_READ, 0,
			      (void **)&b) == 0, 7);
	luffd_store_put(ms);
	luffd_store_put(cs);

	/* fill() for b faults on g_a, served by the same (only) handler. */
	t0 = h_now();
	r = h_read(b, 8, NULL, &sig);
	fprintf(stderr, "misuse: signal %d code %d after %.3f s\n", r,
		sig.code, h_now() - t0);
	CHILD_CHECK(r == SIGBUS, 10);
	CHILD_CHECK(!h_feat.has_poison || sig.code == BUS_ADRERR, 11);
	CHILD_CHECK(h_now() - t0 < 2.0, 12);
	/* The callback read zeroes there. */
	CHILD_CHECK(atomic_load(&g_seen) == 0, 13);
	CHILD_CHECK(luffd_ctx_sync(g_ctx) == 0, 14);
	CHILD_CHECK(luffd_stats_get(g_ctx, &st) == 0, 15);
	CHILD_CHECK(st.callback_misuse >= 1, 16);
	CHILD_CHECK(st.faults[LUFFD_ERROR] >= 1, 17);
	CHILD_CHECK(atomic_load(&g_err_deadlk) >= 1, 18);
	CHILD_CHECK(atomic_load(&g_err_other) == 0, 19);

	/* The page fill() read is served normally afterwards. */
	for (size_t i = 0; i < n; i++) {
		CHILD_CHECK(h_read(g_a + i * h_ps, h_ps, buf, NULL) == 0, 20);
		CHILD_CHECK(h_page_diff(buf, i * h_ps, len, sa) < 0, 21);
	}
	/* Dropped, the failed page of b is served afresh; fill() now reads
	 * a present page and succeeds. */
	CHILD_CHECK(madvise(b, h_ps, MADV_DONTNEED) == 0, 22);
	CHILD_CHECK(h_read(b, h_ps, buf, NULL) == 0, 23);
	CHILD_CHECK(h_page_diff(buf, 0, len, sb) < 0, 24);
	CHILD_CHECK(atomic_load(&g_seen) == h_word(2 * h_ps, sa), 25);
	for (size_t i = 1; i < n; i++) {
		CHILD_CHECK(h_read(b + i * h_ps, h_ps, buf, NULL) == 0, 26);
		CHILD_CHECK(h_page_diff(buf, i * h_ps, len, sb) < 0, 27);
	}
	CHILD_CHECK(luffd_unmap(g_ctx, b, len) == 0, 28);
	CHILD_CHECK(luffd_unregister(g_ctx, g_a, len) == 0, 29);
	CHILD_CHECK(luffd_ctx_destroy(g_ctx) == 0, 30);
}

START_TEST(fill_touches_own_memory)
{
	in_child(fill_touches_own_region, 20);
}
END_TEST

/* ---- library calls from callbacks ---------------------------------- */

static _Atomic int r_sync = 1, r_unmap = 1, r_unreg = 1, r_destroy = 1,
		   r_tsync = 1;
static void *_Atomic g_b;

static ssize_t calling_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	atomic_store(&r_sync, luffd_ctx_sync(g_ctx));
	atomic_store(&r_unmap, luffd_unmap(g_ctx, g_b, g_alen));
	atomic_store(&r_unreg, luffd_unregister(g_ctx, g_a, g_alen));
	atomic_store(&r_destroy, luffd_ctx_destroy(g_ctx));
	h_fill(buf, off, len, *(uint64_t *)arg);
	return (ssize_t)len;
}

static void calling_trace(void *arg, const struct luffd_fault *f)
{
	(void)arg;
	(void)f;
	atomic_store(&r_tsync, luffd_ctx_sync(g_ctx));
}

static void calls_from_callbacks(void)
{
	const size_t n = 4, len = n * h_ps;
	uint64_t seed = 0x73;
	LUFFD_OPTS(luffd_ctx_opts, o, .trace_fn = calling_trace);
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = calling_fill, .size = len);
	struct luffd_store *cs = NULL;
	char *buf = malloc(h_ps);

	g_alen = len;
	{
		struct luffd_ctx *c = NULL;

		CHILD_CHECK(luffd_ctx_create(&o, &c) == 0, 2);
		g_ctx = c;
	}
	g_a = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHILD_CHECK(luffd_store_callback(&ops, &seed, &cs) == 0, 3);
	CHILD_CHECK(luffd_register(g_ctx, g_a, len, cs, 0, 0) == 0, 4);
	{
		void *b = NULL;

		CHILD_CHECK(luffd_map(g_ctx, cs, 0, len, PROT_READ, 0, &b) == 0,
			    5);
		g_b = b;
	}
	luffd_store_put(cs);
	CHILD_CHECK(h_read(g_b, h_ps, buf, NULL) == 0, 6);
	CHILD_CHECK(h_page_diff(buf, 0, len, seed) < 0, 7);
	CHILD_CHECK(luffd_ctx_sync(g_ctx) == 0, 8);
	CHILD_CHECK(atomic_load(&r_sync) == -EDEADLK, 9);
	CHILD_CHECK(atomic_load(&r_unmap) == -EDEADLK, 10);
	CHILD_CHECK(atomic_load(&r_unreg) == -EDEADLK, 11);
	CHILD_CHECK(atomic_load(&r_destroy) == -EDEADLK, 12);
	CHILD_CHECK(atomic_load(&r_tsync) == -EDEADLK, 13);
	/* Everything still works. */
	for (size_t i = 0; i < n; i++) {
		CHILD_CHECK(h_read(g_a + i * h_ps, h_ps, buf, NULL) == 0, 14);
		CHILD_CHECK(h_page_diff(buf, i * h_ps, len, seed) < 0, 15);
	}
	CHILD_CHECK(luffd_unmap(g_ctx, g_b, len) == 0, 16);
	CHILD_CHECK(luffd_unregister(g_ctx, g_a, len) == 0, 17);
	CHILD_CHECK(luffd_ctx_destroy(g_ctx) == 0, 18);
}

START_TEST(library_calls_from_callbacks)
{
	in_child(calls_from_callbacks, 20);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hard_misuse");
	TCase *tc = h_tcase(s, "misuse", H_TIMEOUT);

	tcase_add_test(tc, fill_touches_own_memory);
	tcase_add_test(tc, library_calls_from_callbacks);
	return h_main(s);
}
