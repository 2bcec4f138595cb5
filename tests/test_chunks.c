/* SPDX-License-Identifier: MIT */
/*
 * Chunks (LUFFD_INSTALL_AUTO): a sequential stream through a writable
 * luffd_map() region is read in 2 MiB chunks and moved into place with
 * UFFDIO_MOVE.  Data, counts, the store's end, refaults, writes, out-of-order
 * touches, several threads and teardown with chunk reads in flight.
 * Kernels without UFFDIO_MOVE copy instead: the data checks still run, the
 * moved_pages checks are skipped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "compat.h" /* UFFD_FEATURE_MOVE */

#define MIB (1024 * 1024ull)
#define SEED 0xc4u

static size_t t_npages(uint64_t bytes)
{
	return (size_t)((bytes + t_ps - 1) / t_ps);
}

static struct luffd_ctx *ctx_mode(enum luffd_install mode)
{
	LUFFD_OPTS(luffd_ctx_opts, o);

	o.install_mode = mode;
	return t_ctx(&o);
}

static int has_move(void)
{
	return t_feat.has_move && t_ps == 4096;
}

/* Map fsize bytes of a fresh file (plus extra bytes past it) read-write. */
static char *map_file(struct luffd_ctx *ctx, uint64_t fsize, size_t extra,
		      size_t *lenp)
{
	char *path = t_make_file(fsize, SEED);
	struct luffd_store *st;
	size_t len = t_npages(fsize) * t_ps + extra;
	void *m;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	free(path);
	ck_assert_int_eq(luffd_map(ctx, st, 0, len, PROT_READ | PROT_WRITE, 0,
				   &m), 0);
	luffd_store_put(st);
	*lenp = len;
	return m;
}

/* Every page of the mapping m of a SEED file of fsize bytes is right. */
static void check_all(const char *m, uint64_t fsize)
{
	for (size_t i = 0; i < t_npages(fsize); i++)
		t_assert_page(m, i, 0, fsize, SEED);
}

/* Stats into *st (no fault failed), then unmap and destroy. */
static void finish(struct luffd_ctx *ctx, void *m, size_t len,
		   struct luffd_stats *st)
{
	t_stats(ctx, st);
	ck_assert_uint_eq(st->faults[LUFFD_ERROR], 0);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}

/* Read the whole file in order, checking every page; then the stats. */
static void seq_read(enum luffd_install mode, uint64_t fsize)
{
	struct luffd_ctx *ctx = ctx_mode(mode);
	struct luffd_stats st;
	size_t len, n = t_npages(fsize);
	char *m = map_file(ctx, fsize, 0, &len);

	ck_assert_uint_eq((uintptr_t)m % (2 * MIB),
			  mode == LUFFD_INSTALL_AUTO && has_move() ? 0 :
			  (uintptr_t)m % (2 * MIB));
	check_all(m, fsize);
	finish(ctx, m, len, &st);
	ck_assert_uint_eq(st.bytes_read >= fsize, 1);
	/* Read once: chunks read ahead are never dropped unused for new
	 * ones while others are free. */
	ck_assert_msg(st.bytes_read <= fsize + fsize / 32,
		      "read %llu bytes of a %llu-byte file",
		      (unsigned long long)st.bytes_read,
		      (unsigned long long)fsize);
	if (mode == LUFFD_INSTALL_COPY || !has_move()) {
		ck_assert_uint_eq(st.moved_pages, 0);
	} else {
		/* All but the first few windows moved, one fault each. */
		ck_assert_msg(st.moved_pages >= n - n / 8,
			      "moved %llu of %zu pages",
			      (unsigned long long)st.moved_pages, n);
		ck_assert_msg(t_total_faults(&st) < n / 64,
			      "%llu faults for %zu pages",
			      (unsigned long long)t_total_faults(&st), n);
	}
}

START_TEST(seq_moved)
{
	seq_read(LUFFD_INSTALL_AUTO, t_size(48, 16) * MIB);
}
END_TEST

START_TEST(seq_copied)
{
	seq_read(LUFFD_INSTALL_COPY, t_size(48, 16) * MIB);
}
END_TEST

/* UFFDIO_MOVE turned off with disable_features: the context says so and
 * copies everything. */
START_TEST(move_disabled)
{
	uint64_t fsize = t_size(16, 8) * MIB;
	LUFFD_OPTS(luffd_ctx_opts, o, .disable_features = UFFD_FEATURE_MOVE);
	LUFFD_OPTS(luffd_features, f);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_stats st;
	size_t len;
	char *m;

	ck_assert_int_eq(luffd_ctx_features(ctx, &f), 0);
	ck_assert_int_eq(f.has_move, 0);
	ck_assert_uint_eq(f.enabled & UFFD_FEATURE_MOVE, 0);
	m = map_file(ctx, fsize, 0, &len);
	check_all(m, fsize);
	finish(ctx, m, len, &st);
	ck_assert_uint_eq(st.moved_pages, 0);
}
END_TEST

/* Cold data: chunks the page cache does not hold are read with O_DIRECT
 * (or through the page cache with LUFFD_FILE_CACHED, or where the file
 * system has no O_DIRECT); the bytes are the same either way, including
 * the tail of a store that ends inside a chunk. */
/* Fraction of fd's first len bytes in the page cache. */
static double resident(int fd, size_t len)
{
	size_t n = t_npages(len), in = 0;
	unsigned char *v = malloc(n);
	void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_int_eq(mincore(p, len, v), 0);
	for (size_t i = 0; i < n; i++)
		in += v[i] & 1;
	munmap(p, len);
	free(v);
	return (double)in / (double)n;
}

static void seq_cold(unsigned int flags)
{
	uint64_t fsize = t_size(24, 12) * MIB + 12345;
	char *path = t_make_file(fsize, SEED);
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	struct luffd_store *st;
	struct luffd_stats sts;
	size_t len = t_npages(fsize) * t_ps;
	int fd = open(path, O_RDONLY), dfd = open(path, O_RDONLY | O_DIRECT);
	double before, after;
	void *m;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fdatasync(fd), 0);
	ck_assert_int_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	/* No kernel read-ahead on the store's (shared) file description:
	 * only what libuffd reads lands in the page cache. */
	ck_assert_int_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0);
	before = resident(fd, fsize);
	ck_assert_int_eq(luffd_store_file(fd, flags, &st), 0);
	free(path);
	ck_assert_int_eq(luffd_map(ctx, st, 0, len, PROT_READ | PROT_WRITE, 0,
				   &m), 0);
	luffd_store_put(st);
	check_all(m, fsize);
	finish(ctx, m, len, &sts);
	after = resident(fd, fsize);
	close(fd);
	if (!has_move())
		return;
	ck_assert_uint_gt(sts.moved_pages, 0);
	/* Where the file system drops cached pages and takes O_DIRECT, the
	 * page cache tells how the chunks were read: around it (only the
	 * windows before the stream went to chunks are cached), or through
	 * it with LUFFD_FILE_CACHED. */
	if (before < 0.05 && dfd >= 0) {
		if (flags & LUFFD_FILE_CACHED)
			ck_assert_msg(after > 0.9, "%.2f cached", after);
		else
			ck_assert_msg(after < 0.5, "%.2f cached", after);
	}
	if (dfd >= 0)
		close(dfd);
}

START_TEST(seq_cold_direct)
{
	seq_cold(0);
}
END_TEST

START_TEST(seq_cold_cached)
{
	seq_cold(LUFFD_FILE_CACHED);
}
END_TEST

/* A store that ends inside a chunk: the tail of its last page reads as
 * zero, the page after it gets SIGBUS. */
START_TEST(store_end_in_chunk)
{
	uint64_t fsize = t_size(12, 8) * MIB + 5000;
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	size_t len, n = t_npages(fsize);
	char *m = map_file(ctx, fsize, 4 * t_ps, &len);
	struct luffd_stats st;
	int code;
	void *addr;

	check_all(m, fsize);
	ck_assert_int_eq(t_touch_sig(m + n * t_ps, 0, &code, &addr, NULL),
			 SIGBUS);
	ck_assert_ptr_eq(addr, m + n * t_ps);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 1);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* Moved pages are the application's: writes stick, MADV_DONTNEED drops
 * them and they are read again from the store. */
START_TEST(write_and_refault)
{
	uint64_t fsize = t_size(16, 8) * MIB;
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	size_t len, n = t_npages(fsize);
	char *m = map_file(ctx, fsize, 0, &len);
	struct luffd_stats st;
	size_t mid = n / 2;

	check_all(m, fsize);
	for (size_t i = 0; i < n; i += 97)
		m[i * t_ps + 8] = (char)0xa5;
	for (size_t i = 0; i < n; i += 97)
		ck_assert_int_eq((unsigned char)m[i * t_ps + 8], 0xa5);
	/* Drop 4 MiB in the middle (two whole chunks when aligned). */
	ck_assert_int_eq(madvise(m + (mid & ~(size_t)511) * t_ps, 4 * MIB,
				 MADV_DONTNEED), 0);
	for (size_t i = 0; i < n; i++) {
		size_t lo = mid & ~(size_t)511;

		if (i >= lo && i < lo + 4 * MIB / t_ps)
			t_assert_page(m, i, 0, fsize, SEED);
	}
	finish(ctx, m, len, &st);
	ck_assert_uint_ge(st.events_remove, 1);
}
END_TEST

/* Once the stream runs in chunks, touch a staged chunk from its end
 * backwards: each touch moves the pages from it to what is left, the
 * ones below stay staged for the next touches. */
START_TEST(backwards_in_chunk)
{
	uint64_t fsize = t_size(32, 16) * MIB;
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	size_t len, per = 2 * MIB / t_ps;
	char *m = map_file(ctx, fsize, 0, &len);
	struct luffd_stats st;

	/* 6 MiB in order starts the stream. */
	for (size_t i = 0; i < 3 * per; i++)
		t_assert_page(m, i, 0, fsize, SEED);
	/* Chunk 4, last page first, every 7th page down. */
	for (size_t i = 5 * per; i-- > 4 * per;)
		if (i % 7 == 0 || i == 5 * per - 1)
			t_assert_page(m, i, 0, fsize, SEED);
	check_all(m, fsize);
	finish(ctx, m, len, &st);
	if (has_move())
		ck_assert_uint_gt(st.moved_pages, 0);
}
END_TEST

/* Random order over the whole file: once the pages read around misses
 * keep being used, a random miss reads its whole chunk and moves it in at
 * once.  Every page right, far fewer faults than pages. */
START_TEST(random_whole_chunks)
{
	uint64_t fsize = t_size(48, 16) * MIB, rng = 7;
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	size_t len, n = t_npages(fsize);
	char *m = map_file(ctx, fsize, 0, &len);
	size_t *perm = malloc(n * sizeof(*perm));
	struct luffd_stats st;

	ck_assert_ptr_nonnull(perm);
	t_perm(perm, n, &rng);
	for (size_t i = 0; i < n; i++)
		t_assert_page(m, perm[i], 0, fsize, SEED);
	t_stats(ctx, &st);
	printf("random: %llu faults, %llu pages moved, %llu read\n",
	       (unsigned long long)t_total_faults(&st),
	       (unsigned long long)st.moved_pages,
	       (unsigned long long)(st.bytes_read / t_ps));
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	if (has_move()) {
		ck_assert_uint_ge(st.moved_pages, n / 4);
		ck_assert_msg(t_total_faults(&st) < n / 16,
			      "%llu faults for %zu pages",
			      (unsigned long long)t_total_faults(&st), n);
	}
	free(perm);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* mremap() of a region mid-stream to an address that is not 2 MiB
 * aligned: the stream goes on at the new address (chunks clipped to the
 * moved region), every page right. */
START_TEST(mremap_mid_stream)
{
	uint64_t fsize = t_size(32, 16) * MIB;
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	size_t len, n = t_npages(fsize), half = n / 2;
	char *m = map_file(ctx, fsize, 0, &len);
	char *hole, *to, *q;
	struct luffd_stats st;

	for (size_t i = 0; i < half; i++)
		t_assert_page(m, i, 0, fsize, SEED);
	/* A free range, then a target one page into it. */
	hole = mmap(NULL, len + 4 * MIB, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(hole, MAP_FAILED);
	to = (char *)(((uintptr_t)hole + 2 * MIB - 1) & ~(uintptr_t)(2 * MIB - 1)) +
	     t_ps;
	q = mremap(m, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	ck_assert_ptr_eq(q, to);
	for (size_t i = 0; i < n; i++)
		t_assert_page(q, i, 0, fsize, SEED);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_uint_ge(st.events_remap, 1);
	/* The region moved with the mapping: unmap it where it is now. */
	ck_assert_int_eq(luffd_unmap(ctx, q, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(hole, len + 4 * MIB);
}
END_TEST

/* A second, shorter mapping of the same store at the offset of a chunk
 * staged for the first: the chunk is not moved into it (it would run past
 * its end, or into whatever mapping follows), so that mapping is served
 * page by page and the chunk stays for the stream it was read for. */
START_TEST(short_view_of_staged_chunk)
{
	uint64_t fsize = t_size(48, 16) * MIB, upto = fsize / 3 & ~(2 * MIB - 1);
	uint64_t off = upto + 4 * MIB;
	char *path = t_make_file(fsize, SEED);
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	struct luffd_store *st;
	struct luffd_stats s;
	size_t n = t_npages(fsize);
	char *a, *b;

	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	free(path);
	ck_assert_int_eq(luffd_map(ctx, st, 0, fsize, PROT_READ | PROT_WRITE,
				   0, (void **)&a), 0);
	for (size_t i = 0; i < upto / t_ps; i++)
		t_assert_page(a, i, 0, fsize, SEED);
	/* Until the chunk at off has been read ahead (at most 5 s). */
	for (int k = 0; k < 5000; k++) {
		t_stats(ctx, &s);
		if (s.bytes_read >= off + 2 * MIB)
			break;
		usleep(1000);
	}
	ck_assert_int_eq(luffd_map(ctx, st, off, MIB, PROT_READ | PROT_WRITE,
				   0, (void **)&b), 0);
	luffd_store_put(st);
	for (size_t i = 0; i < MIB / t_ps; i++)
		t_assert_page(b, i, off, fsize, SEED);
	for (size_t i = upto / t_ps; i < n; i++)
		t_assert_page(a, i, 0, fsize, SEED);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 0);
	/* The file once for the stream and the short mapping's MiB once:
	 * not the staged chunk a second time. */
	ck_assert_msg(s.bytes_read <= fsize + 2 * MIB,
		      "read %llu bytes for %llu + 1 MiB",
		      (unsigned long long)s.bytes_read,
		      (unsigned long long)fsize);
	printf("short view: %llu bytes read beyond the file and the view\n",
	       (unsigned long long)(s.bytes_read - fsize - MIB));
	ck_assert_int_eq(luffd_unmap(ctx, b, MIB), 0);
	ck_assert_int_eq(luffd_unmap(ctx, a, fsize), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* fork() mid-stream: the child gets neither the region nor the staging
 * buffers (MADV_DONTFORK), so the parent's pages stay its own and keep
 * moving; the child, touching the region, gets SIGSEGV rather than data. */
START_TEST(fork_mid_stream)
{
	uint64_t fsize = t_size(32, 16) * MIB;
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	size_t len, n = t_npages(fsize);
	char *m = map_file(ctx, fsize, 0, &len);
	struct luffd_stats st;
	uint64_t moved;
	int status;
	pid_t pid;

	for (size_t i = 0; i < n / 2; i++)
		t_assert_page(m, i, 0, fsize, SEED);
	t_stats(ctx, &st);
	moved = st.moved_pages;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		alarm(10); /* a hang ends the child (SIGALRM, not SIGSEGV) */
		signal(SIGSEGV, SIG_DFL);
		(void)*(volatile char *)(m + (n - 1) * t_ps);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
	check_all(m, fsize);
	finish(ctx, m, len, &st);
	if (has_move())
		ck_assert_uint_gt(st.moved_pages, moved);
}
END_TEST

struct dropper {
	char *m;
	size_t len;
	atomic_bool stop;
	atomic_ulong drops;
};

static void *drop_blocks(void *arg)
{
	struct dropper *d = arg;
	uint64_t rng = 3;

	while (!atomic_load(&d->stop)) {
		size_t nb = d->len / (2 * MIB);
		size_t b = (size_t)(t_rand(&rng) % (nb ? nb : 1));

		madvise(d->m + b * 2 * MIB, 2 * MIB, MADV_DONTNEED);
		atomic_fetch_add(&d->drops, 1);
		usleep(200);
	}
	return NULL;
}

/* A reader streams through the region twice while another thread drops
 * random 2 MiB blocks (MADV_DONTNEED): dropped pages fault again and are
 * read again; no page is ever wrong. */
START_TEST(dontneed_while_streaming)
{
	uint64_t fsize = t_size(48, 16) * MIB;
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	size_t len, n = t_npages(fsize);
	char *m = map_file(ctx, fsize, 0, &len);
	struct dropper d = { .m = m, .len = len };
	struct luffd_stats st;
	pthread_t th;

	atomic_init(&d.stop, false);
	ck_assert_int_eq(pthread_create(&th, NULL, drop_blocks, &d), 0);
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < n; i++)
			t_assert_page(m, i, 0, fsize, SEED);
	/* A loaded machine may not have run the dropper yet. */
	for (int k = 0; k < 5000 && !atomic_load(&d.drops); k++)
		usleep(1000);
	ck_assert_uint_gt(atomic_load(&d.drops), 0);
	atomic_store(&d.stop, true);
	pthread_join(th, NULL);
	check_all(m, fsize);
	finish(ctx, m, len, &st);
	ck_assert_uint_ge(st.events_remove, 1);
}
END_TEST

struct worker {
	char *m;
	size_t first, step, n;
	uint64_t fsize;
	int bad;
	atomic_ulong pages; /* read_all(): pages read so far */
	atomic_bool ended;  /* read_all() returned */
};

static void *read_blocks(void *arg)
{
	struct worker *w = arg;
	size_t per = 2 * MIB / t_ps;

	for (size_t b = w->first; b * per < w->n; b += w->step)
		for (size_t i = b * per; i < (b + 1) * per && i < w->n; i++)
			if (t_page_diff(w->m + i * t_ps, i * t_ps, w->fsize,
					SEED) >= 0)
				w->bad++;
	return NULL;
}

/* Four threads, each reading every fourth 2 MiB block in order, then the
 * whole range once more: no page wrong, nobody stuck. */
START_TEST(threads_interleaved)
{
	uint64_t fsize = t_size(64, 16) * MIB;
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	size_t len, n = t_npages(fsize);
	char *m = map_file(ctx, fsize, 0, &len);
	struct worker w[4];
	pthread_t th[4];
	struct luffd_stats st;

	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){ .m = m, .first = (size_t)i, .step = 4,
					.n = n, .fsize = fsize };
		ck_assert_int_eq(pthread_create(&th[i], NULL, read_blocks,
						&w[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(w[i].bad, 0);
	}
	check_all(m, fsize);
	finish(ctx, m, len, &st);
}
END_TEST

static __thread sigjmp_buf segv_jb;
static __thread volatile int segv_armed;

static void on_segv(int sig)
{
	if (segv_armed)
		siglongjmp(segv_jb, 1);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void *read_all(void *arg)
{
	struct worker *w = arg;
	volatile char sink = 0;

	if (sigsetjmp(segv_jb, 1)) {
		w->bad = -1; /* the range went away under it */
		atomic_store(&w->ended, true);
		return NULL;
	}
	segv_armed = 1;
	for (size_t i = 0; i < w->n; i++) {
		sink ^= w->m[i * t_ps];
		atomic_fetch_add(&w->pages, 1);
	}
	segv_armed = 0;
	(void)sink;
	atomic_store(&w->ended, true);
	return NULL;
}

/* Unmap from another thread while a reader streams through chunks (reads
 * in flight): the reader either finishes or gets SIGSEGV, never hangs,
 * and the context goes away cleanly. */
START_TEST(unmap_while_streaming)
{
	uint64_t fsize = t_size(64, 16) * MIB;
	struct luffd_ctx *ctx = ctx_mode(LUFFD_INSTALL_AUTO);
	size_t len, n = t_npages(fsize);
	char *m = map_file(ctx, fsize, 0, &len);
	struct worker w = { .m = m, .n = n, .fsize = fsize };
	struct sigaction sa = { .sa_handler = on_segv };
	pthread_t th;

	sigemptyset(&sa.sa_mask);
	ck_assert_int_eq(sigaction(SIGSEGV, &sa, NULL), 0);
	ck_assert_int_eq(pthread_create(&th, NULL, read_all, &w), 0);
	/* Mid-stream: once an eighth of the pages are in (at most 5 s). */
	for (int k = 0; k < 5000 && !atomic_load(&w.ended) &&
			atomic_load(&w.pages) < n / 8; k++)
		usleep(1000);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	pthread_join(th, NULL);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("chunks");
	TCase *tc = t_tcase(s, "chunks");

	tcase_add_test(tc, seq_moved);
	tcase_add_test(tc, seq_copied);
	tcase_add_test(tc, move_disabled);
	tcase_add_test(tc, store_end_in_chunk);
	tcase_add_test(tc, seq_cold_direct);
	tcase_add_test(tc, seq_cold_cached);
	tcase_add_test(tc, write_and_refault);
	tcase_add_test(tc, backwards_in_chunk);
	tcase_add_test(tc, threads_interleaved);
	tcase_add_test(tc, random_whole_chunks);
	tcase_add_test(tc, mremap_mid_stream);
	tcase_add_test(tc, short_view_of_staged_chunk);
	tcase_add_test(tc, fork_mid_stream);
	tcase_add_test(tc, dontneed_while_streaming);
	tcase_add_test(tc, unmap_while_streaming);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
