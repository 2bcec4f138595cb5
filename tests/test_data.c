/* SPDX-License-Identifier: MIT */
/*
 * Data: every page served by libuffd holds exactly what the store holds,
 * under sequential, random and multi-threaded access, through luffd_map()
 * and luffd_register(), for file, memory and callback stores, with offsets,
 * sizes that are not a page multiple, sparse files, write faults, several
 * regions and several contexts.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NTHREADS 4

static size_t file_size(void)
{
	return t_size(32u << 20, 4u << 20);
}

/* ---- verification over a set of regions ----------------------------- */

struct rgn {
	char *base;
	size_t npg;     /* pages to check */
	uint64_t off;   /* store offset of base */
	uint64_t fsize; /* store size */
	uint64_t seed;
};

enum order { SEQ, RANDOM };

struct vjob {
	const struct rgn *r;
	size_t nr;
	enum order order;
	uint64_t rng;
	/* result */
	long bad_rgn, bad_page, bad_byte;
};

static void *verify_job(void *arg)
{
	struct vjob *j = arg;
	size_t total = 0, *idx;

	j->bad_rgn = -1;
	for (size_t k = 0; k < j->nr; k++)
		total += j->r[k].npg;
	idx = malloc(total * sizeof(*idx));
	if (!idx) {
		j->bad_rgn = -2;
		return NULL;
	}
	if (j->order == RANDOM)
		t_perm(idx, total, &j->rng);
	else
		for (size_t i = 0; i < total; i++)
			idx[i] = i;
	for (size_t n = 0; n < total; n++) {
		size_t i = idx[n], k = 0;
		long d;

		while (i >= j->r[k].npg)
			i -= j->r[k++].npg;
		d = t_page_diff(j->r[k].base + i * t_ps,
				j->r[k].off + i * t_ps, j->r[k].fsize,
				j->r[k].seed);
		if (d >= 0) {
			j->bad_rgn = (long)k;
			j->bad_page = (long)i;
			j->bad_byte = d;
			break;
		}
	}
	free(idx);
	return NULL;
}

static void check_job(const struct vjob *j, const char *what)
{
	ck_assert_msg(j->bad_rgn != -2, "out of memory");
	ck_assert_msg(j->bad_rgn < 0,
		      "%s: region %ld page %ld differs at byte %ld", what,
		      j->bad_rgn, j->bad_page, j->bad_byte);
}

/* Verify the regions in order, in random order, or from NTHREADS threads
 * at once (each its own random permutation). */
static void verify(const struct rgn *r, size_t nr, int how, uint64_t rng)
{
	if (how < 2) {
		struct vjob j = { r, nr, how ? RANDOM : SEQ, rng, -1, 0, 0 };

		verify_job(&j);
		check_job(&j, how ? "random" : "sequential");
	} else {
		pthread_t th[NTHREADS];
		struct vjob j[NTHREADS];

		for (int t = 0; t < NTHREADS; t++) {
			j[t] = (struct vjob){ r, nr, RANDOM, rng + 1000 * t,
					      -1, 0, 0 };
			ck_assert_int_eq(pthread_create(&th[t], NULL,
							verify_job, &j[t]), 0);
		}
		for (int t = 0; t < NTHREADS; t++)
			pthread_join(th[t], NULL);
		for (int t = 0; t < NTHREADS; t++)
			check_job(&j[t], "threaded");
	}
}

static const char *how_name[] = { "sequential", "random", "threads" };

static void check_no_errors(struct luffd_ctx *ctx)
{
	struct luffd_stats st;

	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
}

/* ---- stores ----------------------------------------------------------- */

struct cbstore {
	uint64_t seed;
	uint64_t size;
};

static ssize_t cb_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct cbstore *c = arg;
	size_t n = len;

	if (off >= c->size)
		return -ENXIO;
	if (c->size - off < n)
		n = (size_t)(c->size - off);
	t_pattern(buf, off, (n + 7) & ~(size_t)7, c->seed);
	/* The partial word at the end: keep only the bytes inside. */
	if (n % 8)
		memset((char *)buf + n, 0, 8 - n % 8);
	return (ssize_t)n;
}

/* Memory holding the pattern of [0, len), at base + shift (8-aligned). */
static char *pattern_mem(size_t len, uint64_t seed, size_t shift,
			 char **to_free)
{
	size_t alloc = len + shift + t_ps;
	char *m = mmap(NULL, alloc, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(m, MAP_FAILED);
	t_pattern(m + shift, 0, (len + 7) & ~(size_t)7, seed);
	memset(m + shift + len, 0, alloc - shift - len);
	*to_free = m;
	return m + shift;
}

enum skind { S_FILE, S_MEM, S_CB };

struct store_fix {
	struct luffd_store *st;
	char *path;
	char *mem;
	struct cbstore cb;
	uint64_t size, seed;
};

static void store_make(struct store_fix *f, enum skind k, uint64_t size,
		       uint64_t seed)
{
	memset(f, 0, sizeof(*f));
	f->size = size;
	f->seed = seed;
	switch (k) {
	case S_FILE:
		f->path = t_make_file(size, seed);
		ck_assert_int_eq(luffd_store_open(f->path, 0, &f->st), 0);
		break;
	case S_MEM: {
		char *m = pattern_mem(size, seed, 0, &f->mem);

		ck_assert_int_eq(luffd_store_memory(m, size, &f->st), 0);
		break;
	}
	case S_CB: {
		LUFFD_OPTS(luffd_callback_ops, ops, .fill = cb_fill,
			   .size = size);
		f->cb.seed = seed;
		f->cb.size = size;
		ck_assert_int_eq(luffd_store_callback(&ops, &f->cb, &f->st), 0);
		break;
	}
	}
	ck_assert_uint_eq(luffd_store_size(f->st), size);
}

static void store_drop(struct store_fix *f)
{
	luffd_store_put(f->st);
	if (f->mem)
		munmap(f->mem, f->size + t_ps);
	free(f->path);
}

static size_t pages(uint64_t bytes)
{
	return (size_t)((bytes + t_ps - 1) / t_ps);
}

/* Map (or register) fresh memory over the store for each access order and
 * verify all of it. */
static void run_orders(enum skind k, int use_register, uint64_t size,
		       uint64_t off)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct store_fix f;
	uint64_t seed = 0x5eed0000ull + k * 16 + use_register;
	size_t npg = pages(size - off);

	store_make(&f, k, size, seed);
	for (int how = 0; how < 3; how++) {
		struct rgn r = { NULL, npg, off, size, seed };
		void *a;

		if (use_register) {
			a = mmap(NULL, npg * t_ps, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			ck_assert_ptr_ne(a, MAP_FAILED);
			ck_assert_int_eq(luffd_register(ctx, a, npg * t_ps,
							f.st, off, 0), 0);
		} else {
			ck_assert_int_eq(luffd_map(ctx, f.st, off, npg * t_ps,
						   PROT_READ, 0, &a), 0);
		}
		r.base = a;
		verify(&r, 1, how, seed + how);
		if (use_register) {
			ck_assert_int_eq(luffd_unregister(ctx, a, npg * t_ps),
					 0);
			/* The data stays: the pages are the caller's. */
			t_assert_page(a, npg / 2, off, size, seed);
			munmap(a, npg * t_ps);
		} else {
			ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);
		}
		printf("kind %d register %d %s: ok\n", k, use_register,
		       how_name[how]);
	}
	check_no_errors(ctx);
	store_drop(&f);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}

START_TEST(file_map)
{
	run_orders(S_FILE, 0, file_size(), 0);
}
END_TEST

START_TEST(file_register)
{
	run_orders(S_FILE, 1, file_size(), 0);
}
END_TEST

START_TEST(memory_map)
{
	run_orders(S_MEM, 0, file_size(), 0);
}
END_TEST

START_TEST(memory_register)
{
	run_orders(S_MEM, 1, file_size(), 0);
}
END_TEST

START_TEST(callback_map)
{
	run_orders(S_CB, 0, file_size(), 0);
}
END_TEST

START_TEST(callback_register)
{
	run_orders(S_CB, 1, file_size(), 0);
}
END_TEST

/* Offsets > 0 into the store, for every store kind. */
START_TEST(offsets)
{
	static const enum skind kinds[] = { S_FILE, S_MEM, S_CB };
	size_t size = 256 * t_ps;
	uint64_t offs[] = { t_ps, 5 * t_ps, 100 * t_ps, size - t_ps };

	for (int ki = 0; ki < 3; ki++) {
		struct luffd_ctx *ctx = t_ctx(NULL);
		struct store_fix f;

		store_make(&f, kinds[ki], size, 0xabc0 + ki);
		for (size_t i = 0; i < 4; i++) {
			size_t npg = pages(size - offs[i]);
			struct rgn r = { NULL, npg, offs[i], size, f.seed };
			void *a;

			ck_assert_int_eq(luffd_map(ctx, f.st, offs[i],
						   npg * t_ps, PROT_READ, 0,
						   &a), 0);
			r.base = a;
			verify(&r, 1, (int)i % 2, i);
			ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);

			a = mmap(NULL, npg * t_ps, PROT_READ,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			ck_assert_ptr_ne(a, MAP_FAILED);
			ck_assert_int_eq(luffd_register(ctx, a, npg * t_ps,
							f.st, offs[i], 0), 0);
			r.base = a;
			verify(&r, 1, 1 - (int)i % 2, i);
			ck_assert_int_eq(luffd_unregister(ctx, a, npg * t_ps),
					 0);
			munmap(a, npg * t_ps);
		}
		check_no_errors(ctx);
		store_drop(&f);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	}
}
END_TEST

/* Store sizes that are not a page multiple: the tail of the last page reads
 * as zero.  Map exactly the pages that hold data. */
START_TEST(unaligned_sizes)
{
	static const enum skind kinds[] = { S_FILE, S_MEM, S_CB };
	uint64_t sizes[] = { 1, 8, t_ps - 1, t_ps + 1, 10 * t_ps + 123,
			     10 * t_ps + 8, 77 * t_ps + 4000 };

	for (int ki = 0; ki < 3; ki++) {
		struct luffd_ctx *ctx = t_ctx(NULL);

		for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			struct store_fix f;
			size_t npg = pages(sizes[i]);
			void *a;

			store_make(&f, kinds[ki], sizes[i], 0x77 + i);
			struct rgn r = { NULL, npg, 0, sizes[i], f.seed };

			ck_assert_int_eq(luffd_map(ctx, f.st, 0, npg * t_ps,
						   PROT_READ, 0, &a), 0);
			r.base = a;
			verify(&r, 1, SEQ, 0);
			ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);
			/* The last page alone, at an offset. */
			if (npg > 1) {
				uint64_t off = (npg - 1) * t_ps;

				ck_assert_int_eq(luffd_map(ctx, f.st, off, t_ps,
							   PROT_READ, 0, &a),
						 0);
				t_assert_page(a, 0, off, sizes[i], f.seed);
				ck_assert_int_eq(luffd_unmap(ctx, a, t_ps), 0);
			}
			store_drop(&f);
		}
		check_no_errors(ctx);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	}
}
END_TEST

/* A memory store whose base is not page-aligned. */
START_TEST(memory_unaligned_base)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	size_t size = 64 * t_ps + 200;
	size_t npg = pages(size);
	char *mem, *base = pattern_mem(size, 0x99, 8, &mem);
	struct luffd_store *st;
	void *a;

	ck_assert_int_eq(luffd_store_memory(base, size, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, npg * t_ps, PROT_READ, 0, &a),
			 0);
	struct rgn r = { a, npg, 0, size, 0x99 };
	verify(&r, 1, RANDOM, 3);
	ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(mem, size + 8 + t_ps);
}
END_TEST

/* The store keeps its own descriptor: the caller may close fd at once. */
START_TEST(close_fd_after_store)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	size_t npg = 128;
	char *path = t_make_file(npg * t_ps, 0x42);
	int fd = open(path, O_RDONLY);
	struct luffd_store *st;
	void *a;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(luffd_store_file(fd, 0, &st), 0);
	ck_assert_int_eq(close(fd), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, npg * t_ps, PROT_READ, 0, &a),
			 0);
	/* The region holds its own reference too. */
	luffd_store_put(st);
	struct rgn r = { a, npg, 0, npg * t_ps, 0x42 };
	verify(&r, 1, RANDOM, 1);
	ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(path);
}
END_TEST

/* A sparse file: holes read as zero, and a fault in a hole (with nothing
 * cached around it) is classified ZERO. */
START_TEST(sparse_file)
{
	size_t npg = 64;
	uint64_t seed = 0x5a5a;
	char *path = t_make_file(npg * t_ps, seed);
	char *buf = malloc(8 * t_ps);
	int fd;
	/* data: [0,8) and [40,48); holes: [8,40) and [48,64). */
	const size_t d0 = 0, d1 = 40, dn = 8;

	/* Re-create the file sparse. */
	fd = open(path, O_RDWR | O_TRUNC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)(npg * t_ps)), 0);
	t_pattern(buf, d0 * t_ps, dn * t_ps, seed);
	ck_assert_int_eq(pwrite(fd, buf, dn * t_ps, (off_t)(d0 * t_ps)),
			 (ssize_t)(dn * t_ps));
	t_pattern(buf, d1 * t_ps, dn * t_ps, seed);
	ck_assert_int_eq(pwrite(fd, buf, dn * t_ps, (off_t)(d1 * t_ps)),
			 (ssize_t)(dn * t_ps));
	ck_assert_int_eq(fsync(fd), 0);
	if (lseek(fd, (off_t)(8 * t_ps), SEEK_DATA) != (off_t)(d1 * t_ps)) {
		printf("skipped sparse_file: file system makes no holes\n");
		close(fd);
		return;
	}

	for (int ra = 0; ra < 2; ra++) {
		struct t_rec rec;
		LUFFD_OPTS(luffd_ctx_opts, o, .trace_fn = t_rec_fn,
			   .trace_arg = &rec,
			   .readahead_bytes = ra ? 0 : LUFFD_NO_READAHEAD);
		struct luffd_ctx *ctx;
		struct luffd_store *st;
		struct luffd_stats s;
		char *a;
		size_t nholes = 0;

		t_rec_init(&rec, 4 * npg);
		ctx = t_ctx(&o);
		ck_assert_int_eq(luffd_store_file(fd, 0, &st), 0);
		ck_assert_int_eq(luffd_map(ctx, st, 0, npg * t_ps, PROT_READ,
					   0, (void **)&a), 0);
		/* Holes first, so no read-ahead covers them. */
		for (size_t i = 0; i < npg; i++) {
			int hole = !((i >= d0 && i < d0 + dn) ||
				     (i >= d1 && i < d1 + dn));
			if (!hole)
				continue;
			nholes++;
			for (size_t j = 0; j < t_ps; j += 8)
				ck_assert_uint_eq(*(uint64_t *)(a + i * t_ps +
								j), 0);
		}
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.faults[LUFFD_ZERO], nholes);
		ck_assert_uint_eq(s.faults[LUFFD_MAJOR], 0);
		ck_assert_uint_eq(s.bytes_read, 0);
		for (size_t i = 0; i < npg; i++) {
			int hole = !((i >= d0 && i < d0 + dn) ||
				     (i >= d1 && i < d1 + dn));
			if (!hole)
				t_assert_page(a, i, 0, npg * t_ps, seed);
		}
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.faults[LUFFD_ZERO], nholes);
		ck_assert_uint_eq(s.faults[LUFFD_ERROR], 0);
		/* Adaptive read-ahead may bring the second data run in the
		 * background (then its faults are minor). */
		ck_assert_uint_ge(s.faults[LUFFD_MAJOR], ra ? 1 : 2 * dn);
		/* Per-fault records agree: every hole page faulted once, as
		 * ZERO; no data page is ZERO. */
		ck_assert_uint_eq(rec.n, t_total_faults(&s));
		for (size_t k = 0; k < rec.n && k < rec.cap; k++) {
			size_t i = (size_t)((rec.f[k].addr - (uintptr_t)a) /
					    t_ps);
			int hole = !((i >= d0 && i < d0 + dn) ||
				     (i >= d1 && i < d1 + dn));

			ck_assert_uint_lt(i, npg);
			ck_assert_int_eq(rec.f[k].cls == LUFFD_ZERO, hole);
		}
		ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);
		luffd_store_put(st);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
		t_rec_free(&rec);
	}

	/* Data first (read-ahead may cover hole pages): data still right. */
	{
		struct luffd_ctx *ctx = t_ctx(NULL);
		struct luffd_store *st;
		void *a;

		ck_assert_int_eq(luffd_store_file(fd, 0, &st), 0);
		ck_assert_int_eq(luffd_map(ctx, st, 0, npg * t_ps, PROT_READ,
					   0, &a), 0);
		for (size_t i = 0; i < npg; i++) {
			int hole = !((i >= d0 && i < d0 + dn) ||
				     (i >= d1 && i < d1 + dn));
			long d = t_page_diff((char *)a + i * t_ps, i * t_ps,
					     hole ? 0 : npg * t_ps, seed);
			ck_assert_msg(d < 0, "page %zu byte %ld", i, d);
		}
		check_no_errors(ctx);
		luffd_store_put(st);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	}
	close(fd);
	free(buf);
	free(path);
}
END_TEST

/* A write as the first touch of a page: the page is filled from the store,
 * then the write lands; writes stay private (the store is unchanged). */
static void write_fault_case(enum skind k, int use_register)
{
	size_t npg = 32;
	struct store_fix f;
	struct t_rec rec;
	/* Fixed read-ahead installs only the faulting page, so the first
	 * touch of each page is a fault of its own. */
	LUFFD_OPTS(luffd_ctx_opts, o, .trace_fn = t_rec_fn, .trace_arg = &rec,
		   .readahead_mode = LUFFD_RA_FIXED);
	struct luffd_ctx *ctx;
	char *a;
	size_t pg[] = { 0, 3, 17, 31 };

	t_rec_init(&rec, 1024);
	ctx = t_ctx(&o);
	store_make(&f, k, npg * t_ps, 0x3000 + k);
	if (use_register) {
		a = mmap(NULL, npg * t_ps, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ck_assert_ptr_ne(a, MAP_FAILED);
		ck_assert_int_eq(luffd_register(ctx, a, npg * t_ps, f.st, 0, 0),
				 0);
	} else {
		ck_assert_int_eq(luffd_map(ctx, f.st, 0, npg * t_ps,
					   PROT_READ | PROT_WRITE, 0,
					   (void **)&a), 0);
	}
	for (size_t n = 0; n < 4; n++)
		((volatile uint64_t *)(a + pg[n] * t_ps))[3] = 0xdeadbeefull + n;
	for (size_t n = 0; n < 4; n++) {
		uint64_t *w = (uint64_t *)(a + pg[n] * t_ps);

		for (size_t j = 0; j < t_ps / 8; j++) {
			uint64_t want = j == 3 ? 0xdeadbeefull + n
					       : t_word(pg[n] * t_ps + 8 * j,
							f.seed);
			ck_assert_msg(w[j] == want, "page %zu word %zu", pg[n],
				      j);
		}
	}
	/* Untouched pages still fault in right; the written ones stick. */
	for (size_t i = 0; i < npg; i++) {
		int written = i == 0 || i == 3 || i == 17 || i == 31;

		if (!written)
			t_assert_page(a, i, 0, npg * t_ps, f.seed);
	}
	/* The trace saw the four write faults as writes. */
	ck_assert_int_eq(luffd_ctx_sync(ctx), 0);
	{
		size_t writes = 0;

		for (size_t n = 0; n < rec.n && n < rec.cap; n++) {
			size_t i = (size_t)((rec.f[n].addr - (uintptr_t)a) /
					    t_ps);
			int written = i == 0 || i == 3 || i == 17 || i == 31;

			ck_assert_int_eq(rec.f[n].write, written);
			writes += rec.f[n].write;
		}
		ck_assert_uint_eq(writes, 4);
		ck_assert_uint_eq(rec.n, npg);
	}
	if (use_register) {
		ck_assert_int_eq(luffd_unregister(ctx, a, npg * t_ps), 0);
		munmap(a, npg * t_ps);
	} else {
		ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);
	}
	/* The store did not change. */
	if (k == S_FILE) {
		int fd = open(f.path, O_RDONLY);
		char *buf = malloc(npg * t_ps);

		ck_assert_int_eq(pread(fd, buf, npg * t_ps, 0),
				 (ssize_t)(npg * t_ps));
		for (size_t i = 0; i < npg; i++)
			t_assert_page(buf, i, 0, npg * t_ps, f.seed);
		free(buf);
		close(fd);
	} else if (k == S_MEM) {
		for (size_t i = 0; i < npg; i++)
			t_assert_page(f.mem, i, 0, npg * t_ps, f.seed);
	}
	store_drop(&f);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	t_rec_free(&rec);
}

START_TEST(write_fault)
{
	for (int k = S_FILE; k <= S_CB; k++)
		for (int reg = 0; reg < 2; reg++)
			write_fault_case(k, reg);
}
END_TEST

/* prot is honoured: writing a PROT_READ region is SIGSEGV (SEGV_ACCERR). */
START_TEST(prot_read_only)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct store_fix f;
	void *a;
	int code;

	store_make(&f, S_FILE, 8 * t_ps, 1);
	ck_assert_int_eq(luffd_map(ctx, f.st, 0, 8 * t_ps, PROT_READ, 0, &a),
			 0);
	t_assert_page(a, 1, 0, 8 * t_ps, 1);
	ck_assert_int_eq(t_touch_sig((char *)a + t_ps, 1, &code, NULL, NULL),
			 SIGSEGV);
	ck_assert_int_eq(code, SEGV_ACCERR);
	t_assert_page(a, 1, 0, 8 * t_ps, 1);
	ck_assert_int_eq(luffd_unmap(ctx, a, 8 * t_ps), 0);
	store_drop(&f);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* Several regions per context (over one store and several), two contexts
 * at once, one of them with two handler threads; verified interleaved and
 * from several threads. */
START_TEST(regions_and_contexts)
{
	size_t size = t_size(8u << 20, 1u << 20), npg = size / t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o2, .handler_threads = 2);
	struct luffd_ctx *c1 = t_ctx(NULL), *c2 = t_ctx(&o2);
	struct store_fix f1, f2, m;
	struct rgn r[6];
	void *a[6];

	store_make(&f1, S_FILE, size, 0x1111);
	store_make(&f2, S_FILE, size + 100, 0x2222);
	store_make(&m, S_MEM, size, 0x3333);
	for (int how = 0; how < 3; how++) {
		ck_assert_int_eq(luffd_map(c1, f1.st, 0, size, PROT_READ, 0,
					   &a[0]), 0);
		ck_assert_int_eq(luffd_map(c1, f1.st, size / 2, size / 2,
					   PROT_READ, 0, &a[1]), 0);
		ck_assert_int_eq(luffd_map(c1, f2.st, 0, size + t_ps,
					   PROT_READ, 0, &a[2]), 0);
		ck_assert_int_eq(luffd_map(c2, f2.st, t_ps, size, PROT_READ, 0,
					   &a[3]), 0);
		ck_assert_int_eq(luffd_map(c2, m.st, 0, size, PROT_READ, 0,
					   &a[4]), 0);
		ck_assert_int_eq(luffd_map(c2, f1.st, 0, size, PROT_READ, 0,
					   &a[5]), 0);
		r[0] = (struct rgn){ a[0], npg, 0, size, f1.seed };
		r[1] = (struct rgn){ a[1], npg / 2, size / 2, size, f1.seed };
		r[2] = (struct rgn){ a[2], npg + 1, 0, size + 100, f2.seed };
		r[3] = (struct rgn){ a[3], npg, t_ps, size + 100, f2.seed };
		r[4] = (struct rgn){ a[4], npg, 0, size, m.seed };
		r[5] = (struct rgn){ a[5], npg, 0, size, f1.seed };
		verify(r, 6, how, 100 + how);
		ck_assert_int_eq(luffd_unmap(c1, a[0], size), 0);
		ck_assert_int_eq(luffd_unmap(c1, a[1], size / 2), 0);
		ck_assert_int_eq(luffd_unmap(c1, a[2], size + t_ps), 0);
		/* A region belongs to its context. */
		ck_assert_int_eq(luffd_unmap(c1, a[3], size), -ENOENT);
		ck_assert_int_eq(luffd_unmap(c2, a[3], size), 0);
		ck_assert_int_eq(luffd_unmap(c2, a[4], size), 0);
		ck_assert_int_eq(luffd_unmap(c2, a[5], size), 0);
	}
	check_no_errors(c1);
	check_no_errors(c2);
	store_drop(&f1);
	store_drop(&f2);
	store_drop(&m);
	ck_assert_int_eq(luffd_ctx_destroy(c1), 0);
	ck_assert_int_eq(luffd_ctx_destroy(c2), 0);
}
END_TEST

/* A small cache (evictions) and a shallow queue still serve right data. */
START_TEST(small_cache)
{
	size_t size = t_size(16u << 20, 2u << 20), npg = size / t_ps;
	LUFFD_OPTS(luffd_ctx_opts, o, .cache_bytes = 256 * 1024,
		   .queue_depth = 2);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct store_fix f;
	struct luffd_stats s;
	void *a;

	store_make(&f, S_FILE, size, 0x6666);
	ck_assert_int_eq(luffd_map(ctx, f.st, 0, size, PROT_READ, 0, &a), 0);
	struct rgn r = { a, npg, 0, size, f.seed };
	verify(&r, 1, 2, 9);
	ck_assert_int_eq(luffd_unmap(ctx, a, size), 0);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 0);
	ck_assert_uint_ge(s.bytes_read, size);
	/* Random windows into a cache 1/64 of the file: some pages read
	 * around a miss go before they are used. */
	ck_assert_uint_gt(s.evictions, 0);
	store_drop(&f);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("data");
	TCase *tc = t_tcase(s, "data");

	tcase_add_test(tc, file_map);
	tcase_add_test(tc, file_register);
	tcase_add_test(tc, memory_map);
	tcase_add_test(tc, memory_register);
	tcase_add_test(tc, callback_map);
	tcase_add_test(tc, callback_register);
	tcase_add_test(tc, offsets);
	tcase_add_test(tc, unaligned_sizes);
	tcase_add_test(tc, memory_unaligned_base);
	tcase_add_test(tc, close_fd_after_store);
	tcase_add_test(tc, sparse_file);
	tcase_add_test(tc, write_fault);
	tcase_add_test(tc, prot_read_only);
	tcase_add_test(tc, regions_and_contexts);
	tcase_add_test(tc, small_cache);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
