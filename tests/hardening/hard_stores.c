/* SPDX-License-Identifier: MIT */
/*
 * Failing stores: a callback returning -EIO for some offsets, short and
 * empty callback answers, a file truncated under a live mapping.
 */
#include "hard_util.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- -EIO for some offsets ----------------------------------------- */

#define NPG 64
static int bad_page(uint64_t pg)
{
	return pg % 7 == 3;
}

static ssize_t eio_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	uint64_t seed = *(uint64_t *)arg, pg = off / h_ps;
	size_t n = 0;

	if (bad_page(pg))
		return -EIO;
	/* Deliver the window up to the first bad page (a short answer). */
	while (n < len && !bad_page(pg + n / h_ps))
		n += h_ps;
	h_fill(buf, off, n, seed);
	return (ssize_t)n;
}

static struct {
	_Atomic uintptr_t base; /* set before the faults; atomic for TSan */
	_Atomic int cls[NPG];
	_Atomic int err[NPG];
} tr;

static void eio_trace(void *arg, const struct luffd_fault *f)
{
	uint64_t pg = (f->addr - tr.base) / h_ps;

	(void)arg;
	if (pg < NPG) {
		atomic_store(&tr.cls[pg], f->cls);
		atomic_store(&tr.err[pg], f->error);
	}
}

START_TEST(eio_sigbus)
{
	const size_t len = NPG * h_ps;
	uint64_t seed = 0xf0;
	size_t nbad = 0;
	struct luffd_stats st;
	LUFFD_OPTS(luffd_ctx_opts, o, .trace_fn = eio_trace,
		   .readahead_bytes = 8 * h_ps);
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = eio_fill, .size = len);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = NULL;
	char *buf = malloc(h_ps), *addr = NULL;

	for (int i = 0; i < NPG; i++)
		atomic_store(&tr.cls[i], -1);
	ck_assert_int_eq(luffd_store_callback(&ops, &seed, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0,
				   (void **)&addr), 0);
	tr.base = (uintptr_t)addr;
	luffd_store_put(s);
	/* Backwards, so that windows start on good pages too. */
	for (int i = NPG - 1; i >= 0; i--) {
		char *p = addr + (size_t)i * h_ps;
		struct h_sig sig;
		int r = h_read(p + 64, 8, NULL, &sig);

		if (bad_page((uint64_t)i)) {
			nbad++;
			ck_assert_msg(r == SIGBUS, "page %d: signal %d", i, r);
			if (h_feat.has_poison) {
				ck_assert_int_eq(sig.code, BUS_ADRERR);
				ck_assert_ptr_eq(sig.addr, p + 64);
			}
			/* And again on the next touch. */
			ck_assert_int_eq(h_read(p, 8, NULL, &sig), SIGBUS);
		} else {
			ck_assert_msg(r == 0, "page %d: signal %d", i, r);
			ck_assert_int_eq(h_read(p, h_ps, buf, NULL), 0);
			h_assert_page(buf, (uint64_t)i * h_ps, len, seed);
		}
	}
	h_stats(ctx, &st);
	if (h_feat.has_poison)
		ck_assert_uint_eq(st.faults[LUFFD_ERROR], nbad);
	else
		ck_assert_uint_ge(st.faults[LUFFD_ERROR], nbad);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR] + st.faults[LUFFD_MINOR],
			  NPG - nbad);
	for (int i = 0; i < NPG; i++) {
		if (bad_page((uint64_t)i)) {
			ck_assert_int_eq(atomic_load(&tr.cls[i]), LUFFD_ERROR);
			ck_assert_int_eq(atomic_load(&tr.err[i]), -EIO);
		} else {
			ck_assert_int_ne(atomic_load(&tr.cls[i]), LUFFD_ERROR);
		}
	}
	ck_assert_int_eq(luffd_unmap(ctx, addr, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(buf);
}
END_TEST

/* ---- short and empty answers --------------------------------------- */

struct shortcb {
	uint64_t seed;
	_Atomic unsigned int calls;
	/* Bytes of each page the last answer covering it delivered. */
	_Atomic uint32_t deliv[16];
};

/*
 * A window may come in several calls (one per run of adjacent cache
 * slots), so the answers are decided by offset and length, and the test
 * checks each page against what was delivered for it.
 */
static ssize_t short_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct shortcb *c = arg;
	ssize_t r;

	atomic_fetch_add(&c->calls, 1);
	h_fill(buf, off, len, c->seed); /* more than it admits to */
	if (off == 0)
		r = 100;
	else if (off == 11 * h_ps)
		r = (ssize_t)len * 4; /* too much: clipped to len */
	else if (len >= 2 * h_ps)
		r = (ssize_t)(h_ps + h_ps / 2);
	else
		r = (ssize_t)len;
	for (size_t q = 0; q < len / h_ps; q++) {
		size_t given = r > (ssize_t)len ? len : (size_t)r;
		size_t at = q * h_ps, pg = (size_t)(off / h_ps) + q;

		if (given > at && pg < 16)
			atomic_store(&c->deliv[pg],
				     (uint32_t)(given - at < h_ps ? given - at :
						h_ps));
	}
	return r;
}

static ssize_t empty_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	(void)off;
	atomic_fetch_add((_Atomic unsigned int *)arg, 1);
	memset(buf, 0x5a, len); /* must not show: the answer is 0 */
	return 0;
}

START_TEST(short_answers)
{
	const size_t n = 16, len = n * h_ps;
	struct shortcb c = { .seed = 0xf1 };
	_Atomic unsigned int ecalls = 0;
	struct luffd_stats st;
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = short_fill, .size = len);
	LUFFD_OPTS(luffd_callback_ops, eops, .fill = empty_fill,
		   .size = UINT64_MAX);
	/* Fixed 32-page windows (clipped to the 16-page region). */
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = NULL, *e = NULL;
	char *buf = malloc(h_ps), *addr = NULL, *z = NULL;

	ck_assert_int_eq(luffd_store_callback(&ops, &c, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0,
				   (void **)&addr), 0);
	luffd_store_put(s);
	for (size_t i = 0; i < n; i++) {
		uint64_t off = i * h_ps;
		uint32_t d;

		ck_assert_int_eq(h_read(addr + off, h_ps, buf, NULL), 0);
		d = atomic_load(&c.deliv[i]);
		ck_assert_uint_gt(d, 0);
		/* The delivered bytes, then zeroes. */
		h_assert_page(buf, off, off + d, c.seed);
		if (i == 0)
			ck_assert_uint_eq(d, 100);
	}
	h_stats(ctx, &st);
	/* Pages not covered by an answer were asked for again: more calls
	 * than the one a full answer would need, and every page served. */
	ck_assert_uint_ge(atomic_load(&c.calls), 2);
	ck_assert_uint_ge(st.faults[LUFFD_MAJOR], 2);
	ck_assert_uint_le(st.faults[LUFFD_MAJOR], atomic_load(&c.calls));
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR] + st.faults[LUFFD_MINOR], n);
	ck_assert_uint_eq(st.faults[LUFFD_ZERO] + st.faults[LUFFD_ERROR], 0);

	/* An unbounded store that never has data: zero pages, and a write
	 * to one gets a private page. */
	ck_assert_int_eq(luffd_store_callback(&eops, &ecalls, &e), 0);
	ck_assert_int_eq(luffd_map(ctx, e, 1ull << 40, 8 * h_ps,
				   PROT_READ | PROT_WRITE, 0, (void **)&z), 0);
	luffd_store_put(e);
	for (size_t i = 0; i < 8; i++) {
		ck_assert_int_eq(h_read(z + i * h_ps, h_ps, buf, NULL), 0);
		ck_assert(h_page_zero(buf));
	}
	ck_assert_int_eq(h_write(z + 3 * h_ps, 42, NULL), 0);
	ck_assert_int_eq(h_write(z + 12 * h_ps - 8 - 4 * h_ps, 43, NULL), 0);
	ck_assert_uint_eq(*(uint64_t *)(z + 3 * h_ps), 42);
	ck_assert_uint_eq(*(uint64_t *)(z + 8 * h_ps - 8), 43);
	ck_assert_uint_eq(atomic_load(&ecalls), 8);
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ZERO], 8);
	ck_assert_int_eq(luffd_unmap(ctx, z, 8 * h_ps), 0);
	ck_assert_int_eq(luffd_unmap(ctx, addr, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(buf);
}
END_TEST

/* ---- ftruncate() under a live mapping ------------------------------ */

START_TEST(truncate_single_page_reads)
{
	const size_t n = 64, len = n * h_ps;
	const uint64_t seed = 0xf2, newsize = 16 * h_ps + 1000;
	struct luffd_stats st;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD,
		   .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = NULL;
	int fd = h_tmpfile(len, seed);
	char *buf = malloc(h_ps), *addr = NULL;

	ck_assert_int_eq(luffd_store_file(fd, 0, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0,
				   (void **)&addr), 0);
	luffd_store_put(s);
	for (size_t i = 0; i < 4; i++) {
		ck_assert_int_eq(h_read(addr + i * h_ps, h_ps, buf, NULL), 0);
		h_assert_page(buf, i * h_ps, len, seed);
	}
	ck_assert_int_eq(ftruncate(fd, (off_t)newsize), 0);
	for (size_t i = 0; i < n; i++) {
		struct h_sig sig;
		int r = h_read(addr + i * h_ps, h_ps, buf, &sig);

		if (i <= 16) {
			ck_assert_msg(r == 0, "page %zu: signal %d", i, r);
			/* Page 16: 1000 bytes, then zeroes. */
			h_assert_page(buf, i * h_ps, i < 4 ? len : newsize,
				      seed);
		} else {
			ck_assert_msg(r == SIGBUS, "page %zu past the new end: "
				      "signal %d", i, r);
			if (h_feat.has_poison)
				ck_assert_int_eq(sig.code, BUS_ADRERR);
		}
	}
	h_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], n - 17);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR], 17);
	ck_assert_int_eq(luffd_unmap(ctx, addr, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	close(fd);
	free(buf);
}
END_TEST

/*
 * With read-ahead, pages read into the cache before the truncate may still
 * be served afterwards (the original bytes: libuffd's cache is not
 * invalidated by a truncate, unlike the kernel's page cache).  What must
 * never happen: other bytes, or a hang; pages never read get SIGBUS.
 */
START_TEST(truncate_readahead)
{
	const size_t n = 64, len = n * h_ps;
	const uint64_t seed = 0xf3;
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_mode = LUFFD_RA_FIXED,
		   .readahead_bytes = 32 * h_ps);
	struct luffd_ctx *ctx = h_ctx(&o); /* 32-page windows */
	struct luffd_store *s = NULL;
	int fd = h_tmpfile(len, seed), stale = 0;
	char *buf = malloc(h_ps), *addr = NULL;

	ck_assert_int_eq(luffd_store_file(fd, 0, &s), 0);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0,
				   (void **)&addr), 0);
	luffd_store_put(s);
	ck_assert_int_eq(h_read(addr, h_ps, buf, NULL), 0); /* reads 0..31 */
	ck_assert_int_eq(ftruncate(fd, 8 * (off_t)h_ps), 0);
	for (size_t i = 1; i < n; i++) {
		int r = h_read(addr + i * h_ps, h_ps, buf, NULL);

		if (i < 8 || (i < 32 && r == 0)) {
			ck_assert_int_eq(r, 0);
			h_assert_page(buf, i * h_ps, len, seed);
			stale += i >= 8;
		} else {
			ck_assert_msg(r == SIGBUS, "page %zu: signal %d", i, r);
		}
	}
	printf("truncate_readahead: %d of 24 read-ahead pages past the new "
	       "end served with their old bytes\n", stale);
	ck_assert_int_eq(luffd_unmap(ctx, addr, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	close(fd);
	free(buf);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hard_stores");
	TCase *tc = h_tcase(s, "stores", H_TIMEOUT);

	tcase_add_test(tc, eio_sigbus);
	tcase_add_test(tc, short_answers);
	tcase_add_test(tc, truncate_single_page_reads);
	tcase_add_test(tc, truncate_readahead);
	return h_main(s);
}
