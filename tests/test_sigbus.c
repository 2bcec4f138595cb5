/* SPDX-License-Identifier: MIT */
/*
 * SIGBUS: a page wholly past the end of the store, or a store error, gets
 * SIGBUS (BUS_ADRERR) in the faulting thread; the process survives, the
 * fault counts as ERROR with its errno, and other pages still serve right.
 * si_code is BUS_ADRERR through UFFDIO_POISON; where the kernel lacks it
 * (before 6.6) the signal comes from tgkill() (SI_TKILL) and only its
 * number and thread are checked.  The tgkill() fallback is also forced
 * with disable_features on kernels that have both.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

struct touch_job {
	volatile char *p;
	int write;
	int sig, code;
	void *addr;
	pid_t tid, sigtid;
};

static void *touch_thread(void *arg)
{
	struct touch_job *j = arg;

	j->tid = t_gettid();
	j->sig = t_touch_sig(j->p, j->write, &j->code, &j->addr, &j->sigtid);
	return NULL;
}

/* Touch p from a new thread; the signal must arrive in that thread. */
static void touch_in_thread(volatile char *p, int write, int expect_code)
{
	struct touch_job j = { .p = p, .write = write };
	pthread_t th;

	ck_assert_int_eq(pthread_create(&th, NULL, touch_thread, &j), 0);
	pthread_join(th, NULL);
	ck_assert_int_eq(j.sig, SIGBUS);
	ck_assert_int_eq(j.sigtid, j.tid);
	if (expect_code && t_feat.has_poison) {
		ck_assert_int_eq(j.code, BUS_ADRERR);
		ck_assert_ptr_eq(j.addr, (void *)p);
	}
}

static void expect_sigbus(volatile char *p, int write)
{
	int code;
	void *addr;

	ck_assert_int_eq(t_touch_sig(p, write, &code, &addr, NULL), SIGBUS);
	if (t_feat.has_poison) {
		ck_assert_int_eq(code, BUS_ADRERR);
		ck_assert_ptr_eq(addr, (void *)p);
	}
}

/* Error records: class ERROR, the given errno, at the given pages. */
static void check_errors(const struct t_rec *r, const char *base,
			 const size_t *pages, size_t n, int err, size_t count)
{
	size_t found = 0;

	for (size_t k = 0; k < r->n && k < r->cap; k++) {
		const struct luffd_fault *f = &r->f[k];
		size_t pg = (size_t)((f->addr - (uintptr_t)base) / t_ps);
		int want = 0;

		for (size_t i = 0; i < n; i++)
			want |= pages[i] == pg;
		ck_assert_msg((f->cls == LUFFD_ERROR) == want,
			      "page %zu: class %s", pg, luffd_class_name(f->cls));
		if (want) {
			ck_assert_int_eq(f->error, err);
			found++;
		} else {
			ck_assert_int_eq(f->error, 0);
		}
	}
	ck_assert_uint_eq(found, count);
}

START_TEST(past_eof_in_process)
{
	size_t fpg = 8, mpg = 16;
	uint64_t fsize = fpg * t_ps + 100, seed = 0xb05;
	char *path = t_make_file(fsize, seed);
	struct t_rec rec;
	LUFFD_OPTS(luffd_ctx_opts, o, .trace_fn = t_rec_fn, .trace_arg = &rec);
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	struct luffd_stats s;
	size_t bad[] = { 9, 12, 13 };
	char *a;

	t_rec_init(&rec, 256);
	ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, mpg * t_ps,
				   PROT_READ | PROT_WRITE, 0, (void **)&a), 0);
	/* The partial last page: data then zeroes. */
	t_assert_page(a, fpg, 0, fsize, seed);
	/* Wholly past EOF: SIGBUS in the touching thread. */
	touch_in_thread(a + 9 * t_ps + 123, 0, 1);
	expect_sigbus(a + 12 * t_ps, 0);
	expect_sigbus(a + 13 * t_ps + 8, 1);
	/* Still SIGBUS when touched again. */
	expect_sigbus(a + 9 * t_ps, 0);
	/* The rest serves right afterwards. */
	for (size_t i = 0; i < fpg + 1; i++)
		t_assert_page(a, i, 0, fsize, seed);
	t_stats(ctx, &s);
	ck_assert_uint_ge(s.faults[LUFFD_ERROR], 3);
	ck_assert_uint_le(s.faults[LUFFD_ERROR], 4);
	ck_assert_uint_eq(s.latency[LUFFD_ERROR].count, s.faults[LUFFD_ERROR]);
	ck_assert_uint_eq(rec.n, t_total_faults(&s));
	check_errors(&rec, a, bad, 3, -ENXIO, s.faults[LUFFD_ERROR]);
	ck_assert_int_eq(luffd_unmap(ctx, a, mpg * t_ps), 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	t_rec_free(&rec);
	free(path);
}
END_TEST

/* Without a handler the child dies of SIGBUS.  (The child sets up its own
 * context: a forked child's memory is not registered with the parent's
 * userfaultfd.) */
/*
 * A random miss near the end of a file reads the block around it
 * (read-around).  The block runs past EOF, so the read covers the faulting
 * page but brings nothing for it: the page is read again on its own before
 * SIGBUS, and the block's good pages are served from the cache afterwards.
 */
START_TEST(read_around_past_eof)
{
	size_t fpg = 10, mpg = 64;
	uint64_t fsize = fpg * t_ps, seed = 0xb07;
	char *path = t_make_file(fsize, seed);
	struct luffd_ctx *ctx = t_ctx(NULL); /* adaptive read-ahead */
	struct luffd_store *st;
	struct luffd_stats s;
	char *a;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, mpg * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	luffd_store_put(st);
	t_assert_page(a, 0, 0, fsize, seed); /* first miss: pages 0-3 */
	expect_sigbus(a + 20 * t_ps, 0);     /* random: the block 4-20 */
	for (size_t i = 4; i < fpg; i++)
		t_assert_page(a, i, 0, fsize, seed);
	t_stats(ctx, &s);
	/* Window at 0, the block around 20, page 20 alone. */
	ck_assert_uint_eq(s.reads, 3);
	ck_assert_uint_eq(s.bytes_read, fsize);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 1);
	/* Pages 4-9 came with the block: no read waited for them. */
	ck_assert_uint_eq(s.faults[LUFFD_MAJOR], 1);
	ck_assert_uint_ge(s.faults[LUFFD_MINOR], 1);
	ck_assert_int_eq(luffd_unmap(ctx, a, mpg * t_ps), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

START_TEST(past_eof_kills_child)
{
	uint64_t fsize = 4 * t_ps;
	char *path = t_make_file(fsize, 3);
	int status;
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct luffd_ctx *ctx = NULL;
		struct luffd_store *st = NULL;
		char *a;

		alarm(10); /* a hang ends the child (SIGALRM, not SIGBUS) */
		signal(SIGBUS, SIG_DFL);
		if (luffd_ctx_create(NULL, &ctx) ||
		    luffd_store_open(path, 0, &st) ||
		    luffd_map(ctx, st, 0, 8 * t_ps, PROT_READ, 0,
			      (void **)&a))
			_exit(10);
		if (t_page_diff(a + 3 * t_ps, 3 * t_ps, fsize, 3) >= 0)
			_exit(11);
		(void)((volatile char *)a)[6 * t_ps];
		_exit(12);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFSIGNALED(status), "child exited with %d",
		      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	ck_assert_int_eq(WTERMSIG(status), SIGBUS);
	free(path);
}
END_TEST

/* A callback store whose fill() fails with -EIO for some pages.  fill()
 * stops short of a bad page inside a window, so it is asked alone. */
static const size_t eio_pages[] = { 5, 7, 40 };

static int is_bad(uint64_t pg)
{
	for (size_t i = 0; i < 3; i++)
		if (eio_pages[i] == pg)
			return 1;
	return 0;
}

static ssize_t eio_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	uint64_t seed = *(uint64_t *)arg;
	size_t n = 0;

	while (n < len && !is_bad((off + n) / t_ps)) {
		t_pattern((char *)buf + n, off + n, t_ps, seed);
		n += t_ps;
	}
	return n ? (ssize_t)n : -EIO;
}

static void callback_eio_case(int use_register)
{
	size_t npg = 64;
	uint64_t seed = 0xe10;
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = eio_fill,
		   .size = npg * t_ps);
	struct t_rec rec;
	LUFFD_OPTS(luffd_ctx_opts, o, .trace_fn = t_rec_fn, .trace_arg = &rec);
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	struct luffd_stats s;
	char *a;

	t_rec_init(&rec, 256);
	ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_store_callback(&ops, &seed, &st), 0);
	if (use_register) {
		a = mmap(NULL, npg * t_ps, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ck_assert_ptr_ne(a, MAP_FAILED);
		ck_assert_int_eq(luffd_register(ctx, a, npg * t_ps, st, 0, 0),
				 0);
	} else {
		ck_assert_int_eq(luffd_map(ctx, st, 0, npg * t_ps, PROT_READ, 0,
					   (void **)&a), 0);
	}
	for (size_t i = 0; i < npg; i++) {
		if (is_bad(i)) {
			if (i == 40)
				touch_in_thread(a + i * t_ps, 0, 1);
			else
				expect_sigbus(a + i * t_ps + 64, 0);
		} else {
			t_assert_page(a, i, 0, npg * t_ps, seed);
		}
	}
	/* Good pages next to bad ones still right. */
	t_assert_page(a, 6, 0, npg * t_ps, seed);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 3);
	check_errors(&rec, a, eio_pages, 3, -EIO, 3);
	if (use_register) {
		ck_assert_int_eq(luffd_unregister(ctx, a, npg * t_ps), 0);
		munmap(a, npg * t_ps);
	} else {
		ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);
	}
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	t_rec_free(&rec);
}

START_TEST(callback_eio)
{
	callback_eio_case(0);
	callback_eio_case(1);
}
END_TEST

/* Memory and callback stores past their size; a registered range past the
 * end of a file. */
static ssize_t cb_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	_Atomic uint64_t *maxend = arg;
	uint64_t size = 4 * t_ps + 10;

	if (off + len > *maxend)
		*maxend = off + len;
	if (off >= size)
		return -ENXIO;
	if (len > size - off)
		len = (size_t)(size - off);
	t_pattern(buf, off, (len + 7) & ~(size_t)7, 4);
	if (len % 8)
		memset((char *)buf + len, 0, 8 - len % 8);
	return (ssize_t)len;
}

START_TEST(other_stores_past_end)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	char *mem = mmap(NULL, 4 * t_ps, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	_Atomic uint64_t maxend = 0; /* written on the handler thread */
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = cb_fill,
		   .size = 4 * t_ps + 10);
	struct luffd_store *ms, *cs, *fs;
	char *path = t_make_file(3 * t_ps, 4);
	struct luffd_stats s;
	char *a, *b, *c;

	t_pattern(mem, 0, 4 * t_ps, 4);
	ck_assert_int_eq(luffd_store_memory(mem, 4 * t_ps, &ms), 0);
	ck_assert_int_eq(luffd_store_callback(&ops, &maxend, &cs), 0);
	ck_assert_int_eq(luffd_store_open(path, 0, &fs), 0);
	ck_assert_int_eq(luffd_map(ctx, ms, 0, 8 * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	ck_assert_int_eq(luffd_map(ctx, cs, t_ps, 8 * t_ps, PROT_READ, 0,
				   (void **)&b), 0);
	c = mmap(NULL, 8 * t_ps, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(c, MAP_FAILED);
	ck_assert_int_eq(luffd_register(ctx, c, 8 * t_ps, fs, t_ps, 0), 0);

	expect_sigbus(a + 5 * t_ps, 0);
	t_assert_page(a, 3, 0, 4 * t_ps, 4);
	expect_sigbus(b + 6 * t_ps, 0);
	/* Store page 4 (mapping page 3) holds 10 bytes. */
	t_assert_page(b, 3, t_ps, 4 * t_ps + 10, 4);
	t_assert_page(b, 0, t_ps, 4 * t_ps + 10, 4);
	ck_assert_uint_le(atomic_load(&maxend), 5 * t_ps);
	expect_sigbus(c + 3 * t_ps, 1);
	t_assert_page(c, 1, t_ps, 3 * t_ps, 4);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 3);

	ck_assert_int_eq(luffd_unregister(ctx, c, 8 * t_ps), 0);
	luffd_store_put(ms);
	luffd_store_put(cs);
	luffd_store_put(fs);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(mem, 4 * t_ps);
	munmap(c, 8 * t_ps);
	free(path);
}
END_TEST

/* The tgkill() fallback, forced by disabling UFFD_FEATURE_POISON: the
 * faulting thread still gets SIGBUS, and the process survives. */
START_TEST(fallback_without_poison)
{
	LUFFD_OPTS(luffd_ctx_opts, o, .disable_features = UFFD_FEATURE_POISON);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_features f;
	struct luffd_store *st;
	struct luffd_stats s;
	char *path = t_make_file(4 * t_ps, 6);
	char *a;

	memset(&f, 0, sizeof(f));
	f.sz = sizeof(f);
	ck_assert_int_eq(luffd_ctx_features(ctx, &f), 0);
	ck_assert_int_eq(f.has_poison, 0);
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, 8 * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	touch_in_thread(a + 5 * t_ps, 0, 0);
	for (size_t i = 0; i < 4; i++)
		t_assert_page(a, i, 0, 4 * t_ps, 6);
	t_stats(ctx, &s);
	ck_assert_uint_ge(s.faults[LUFFD_ERROR], 1);
	ck_assert_int_eq(luffd_unmap(ctx, a, 8 * t_ps), 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("sigbus");
	TCase *tc = t_tcase(s, "sigbus");

	tcase_add_test(tc, past_eof_in_process);
	tcase_add_test(tc, read_around_past_eof);
	tcase_add_test(tc, past_eof_kills_child);
	tcase_add_test(tc, callback_eio);
	tcase_add_test(tc, other_stores_past_end);
	tcase_add_test(tc, fallback_without_poison);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
