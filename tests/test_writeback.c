/* SPDX-License-Identifier: MIT */
/*
 * Write-back (LUFFD_MAP_WRITEBACK, luffd_msync()): written pages reach the
 * file or the callback store, exactly and only them; unmap and destroy
 * write back first; the last page stops at the store's end; a failed write
 * (a callback's error, a full tmpfs) is returned and counted and its pages
 * stay dirty until a later write-back succeeds; writers racing with
 * write-back lose nothing; a page dropped after write-back faults in with
 * the written bytes, not an older cached copy; bad arguments refused.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEED 0x3b17

/* LUFFD_WP_ASYNC for the "async" tests (set in their forked child). */
static enum luffd_wp_mode wp_mode;

struct fixture {
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	char *path;
	int fd;     /* the file, read back with pread() */
	char *m;    /* the region */
	size_t len; /* the region's length */
	uint64_t fsize;
};

/* A write-back mapping of a new file of fsize bytes (the mapping rounds
 * up to whole pages).  False when the kernel cannot write-protect. */
static bool setup(struct fixture *fx, uint64_t fsize)
{
	LUFFD_OPTS(luffd_ctx_opts, o, .wp_mode = wp_mode);
	int err;

	fx->fsize = fsize;
	fx->len = (fsize + t_ps - 1) / t_ps * t_ps;
	fx->ctx = t_ctx(&o);
	fx->path = t_make_file(fsize, SEED);
	fx->fd = open(fx->path, O_RDONLY);
	ck_assert_int_ge(fx->fd, 0);
	ck_assert_int_eq(luffd_store_open(fx->path, LUFFD_FILE_WRITE, &fx->st),
			 0);
	err = luffd_map(fx->ctx, fx->st, 0, fx->len, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WRITEBACK, (void **)&fx->m);
	if (err == -EOPNOTSUPP) {
		printf("no write-protect here: not tested\n");
		fx->m = NULL;
		return false;
	}
	ck_assert_int_eq(err, 0);
	return true;
}

static void teardown(struct fixture *fx)
{
	if (fx->m)
		ck_assert_int_eq(luffd_unmap(fx->ctx, fx->m, fx->len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(fx->ctx), 0);
	luffd_store_put(fx->st);
	close(fx->fd);
	free(fx->path);
}

/* Does the file hold exactly the region's bytes (up to its size)? */
static void assert_file_is_region(const struct fixture *fx)
{
	char *buf = malloc(t_ps);
	struct stat sb;

	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(fstat(fx->fd, &sb), 0);
	ck_assert_uint_eq((uint64_t)sb.st_size, fx->fsize);
	for (uint64_t off = 0; off < fx->fsize; off += t_ps) {
		size_t n = fx->fsize - off < t_ps ? fx->fsize - off : t_ps;

		ck_assert_int_eq(pread(fx->fd, buf, n, (off_t)off),
				 (ssize_t)n);
		ck_assert_msg(!memcmp(buf, fx->m + off, n),
			      "file page at %llu is not the region's",
			      (unsigned long long)off);
	}
	free(buf);
}

/* A stamp for page p, round k. */
static void stamp(char *page, size_t p, unsigned int k)
{
	uint64_t v = (uint64_t)p << 20 | k;

	memcpy(page + (p * 40 + k * 8) % (t_ps - 8), &v, sizeof(v));
}

/* Written pages go back, only them, in rounds; nothing dirty: no write. */
static void exact(void)
{
	struct fixture fx;
	LUFFD_OPTS(luffd_stats, st);
	uint64_t rng = 7, before;
	size_t npg = 256;
	bool *w = calloc(npg, 1);

	if (!setup(&fx, npg * t_ps)) {
		teardown(&fx);
		return;
	}
	for (unsigned int k = 0; k < 4; k++) {
		size_t nw = 0;

		memset(w, 0, npg);
		for (int i = 0; i < 40; i++) {
			size_t p = t_rand(&rng) % npg;

			stamp(fx.m + p * t_ps, p, k);
			nw += !w[p];
			w[p] = true;
		}
		/* Reads of other pages install them clean. */
		for (size_t p = 0; p < npg; p += 3)
			(void)*(volatile char *)(fx.m + p * t_ps);
		t_stats(fx.ctx, &st);
		before = st.written_back;
		ck_assert_int_eq(luffd_msync(fx.ctx, fx.m, fx.len, 0), 0);
		t_stats(fx.ctx, &st);
		ck_assert_uint_eq(st.written_back - before, nw);
		assert_file_is_region(&fx);
	}
	/* Nothing written since: nothing to write. */
	before = st.writeback_writes;
	ck_assert_int_eq(luffd_msync(fx.ctx, fx.m, fx.len,
				     LUFFD_MSYNC_DURABLE), 0);
	t_stats(fx.ctx, &st);
	ck_assert_uint_eq(st.writeback_writes, before);
	ck_assert_uint_ge(st.writeback_flushes, 1);
	ck_assert_uint_eq(st.writeback_errors, 0);
	/* Synchronous tracking: a fault per page written, each round. */
	if (wp_mode == LUFFD_WP_SYNC)
		ck_assert_uint_ge(st.wp_faults, 40);
	teardown(&fx);
	free(w);
}

START_TEST(wb_exact)
{
	exact();
}
END_TEST

START_TEST(wb_exact_async)
{
	wp_mode = LUFFD_WP_ASYNC;
	exact();
}
END_TEST

/* The last page ends where the file does: the tail is not written and the
 * file does not grow; unmap and destroy write back first. */
START_TEST(wb_tail_unmap_destroy)
{
	struct fixture fx;
	uint64_t fsize = 5 * t_ps + 123;
	char *m2;

	if (!setup(&fx, fsize)) {
		teardown(&fx);
		return;
	}
	memset(fx.m + 5 * t_ps, 0xab, t_ps); /* tail included */
	fx.m[0] = 1;
	ck_assert_int_eq(luffd_msync(fx.ctx, fx.m, t_ps * 6, 0), 0);
	assert_file_is_region(&fx);
	/* Unmap writes back. */
	fx.m[t_ps] = 2;
	ck_assert_int_eq(luffd_unmap(fx.ctx, fx.m, fx.len), 0);
	fx.m = NULL;
	{
		char c;

		ck_assert_int_eq(pread(fx.fd, &c, 1, (off_t)t_ps), 1);
		ck_assert_int_eq(c, 2);
	}
	/* So does destroy. */
	ck_assert_int_eq(luffd_map(fx.ctx, fx.st, 0, fx.len,
				   PROT_READ | PROT_WRITE, LUFFD_MAP_WRITEBACK,
				   (void **)&m2), 0);
	ck_assert_int_eq(m2[t_ps], 2); /* read back from the file */
	m2[2 * t_ps] = 3;
	ck_assert_int_eq(luffd_ctx_destroy(fx.ctx), 0);
	{
		char c;
		struct stat sb;

		ck_assert_int_eq(pread(fx.fd, &c, 1, (off_t)(2 * t_ps)), 1);
		ck_assert_int_eq(c, 3);
		ck_assert_int_eq(fstat(fx.fd, &sb), 0);
		ck_assert_uint_eq((uint64_t)sb.st_size, fsize);
	}
	fx.ctx = t_ctx(NULL);
	teardown(&fx);
}
END_TEST

/* A page written back, dropped and touched again has the written bytes,
 * not the copy the cache read before the write. */
START_TEST(wb_refault_after_writeback)
{
	struct fixture fx;
	char want[64];

	if (!setup(&fx, 256 * t_ps)) {
		teardown(&fx);
		return;
	}
	/* Page 0 reads a window around it into the cache; page 5 comes from
	 * there. */
	(void)*(volatile char *)fx.m;
	memset(want, 0x5a, sizeof(want));
	memcpy(fx.m + 5 * t_ps, want, sizeof(want));
	ck_assert_int_eq(luffd_msync(fx.ctx, fx.m, fx.len, 0), 0);
	ck_assert_int_eq(madvise(fx.m + 5 * t_ps, t_ps, MADV_DONTNEED), 0);
	ck_assert_mem_eq(fx.m + 5 * t_ps, want, sizeof(want));
	teardown(&fx);
}
END_TEST

/* Writers on every page while write-backs run: after the last one, the
 * file is what the threads wrote (no write lost in between). */
struct writer {
	char *m;
	size_t npg, t, nt;
	atomic_bool *stop;
	pthread_t th;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	unsigned int k = 0;

	while (!atomic_load(w->stop)) {
		for (size_t p = w->t; p < w->npg; p += w->nt)
			stamp(w->m + p * t_ps, p, k & 63);
		k++;
	}
	return NULL;
}

static void concurrent(void)
{
	struct fixture fx;
	struct writer w[8];
	atomic_bool stop = false;
	size_t npg = t_size(2048, 512);

	if (!setup(&fx, npg * t_ps)) {
		teardown(&fx);
		return;
	}
	for (size_t t = 0; t < 8; t++) {
		w[t] = (struct writer){ fx.m, npg, t, 8, &stop, 0 };
		ck_assert_int_eq(pthread_create(&w[t].th, NULL, writer_main,
						&w[t]), 0);
	}
	for (int i = 0; i < 20; i++)
		ck_assert_int_eq(luffd_msync(fx.ctx, fx.m, fx.len, 0), 0);
	atomic_store(&stop, true);
	for (size_t t = 0; t < 8; t++)
		pthread_join(w[t].th, NULL);
	ck_assert_int_eq(luffd_msync(fx.ctx, fx.m, fx.len, 0), 0);
	assert_file_is_region(&fx);
	teardown(&fx);
}

START_TEST(wb_concurrent_writers)
{
	concurrent();
}
END_TEST

START_TEST(wb_concurrent_writers_async)
{
	wp_mode = LUFFD_WP_ASYNC;
	concurrent();
}
END_TEST

/* A callback store that fails writes on request. */
struct cbs {
	char *mem;
	size_t len;
	atomic_int fail;  /* errno to fail writes with, 0: none */
	atomic_int writes, flushes;
};

static ssize_t cbs_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct cbs *c = arg;

	memcpy(buf, c->mem + off, len);
	return (ssize_t)len;
}

static ssize_t cbs_write(void *arg, uint64_t off, const void *buf,
			 size_t len)
{
	struct cbs *c = arg;
	int f = atomic_load(&c->fail);

	atomic_fetch_add(&c->writes, 1);
	if (f)
		return -f;
	/* Short writes are continued. */
	if (len > t_ps)
		len -= t_ps;
	memcpy(c->mem + off, buf, len);
	return (ssize_t)len;
}

static int cbs_flush(void *arg)
{
	struct cbs *c = arg;

	atomic_fetch_add(&c->flushes, 1);
	return -atomic_load(&c->fail);
}

START_TEST(wb_callback_errors)
{
	struct cbs c = { .len = 64 * t_ps };
	struct luffd_callback_ops ops = { .sz = sizeof(ops), .fill = cbs_fill,
					  .write = cbs_write,
					  .flush = cbs_flush,
					  .size = 64 * t_ps };
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	LUFFD_OPTS(luffd_stats, s);
	char *m;
	int err;

	c.mem = malloc(c.len);
	ck_assert_ptr_nonnull(c.mem);
	t_pattern(c.mem, 0, c.len, SEED);
	ck_assert_int_eq(luffd_store_callback(&ops, &c, &st), 0);
	err = luffd_map(ctx, st, 0, c.len, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WRITEBACK, (void **)&m);
	if (err == -EOPNOTSUPP)
		goto out;
	ck_assert_int_eq(err, 0);
	memset(m, 0x11, 20 * t_ps);
	atomic_store(&c.fail, ENOSPC);
	ck_assert_int_eq(luffd_msync(ctx, m, c.len, 0), -ENOSPC);
	t_stats(ctx, &s);
	ck_assert_uint_ge(s.writeback_errors, 1);
	ck_assert_uint_eq(s.written_back, 0);
	ck_assert_int_ne(c.mem[0], 0x11);
	/* Still dirty: a later write-back writes them. */
	ck_assert_int_eq(luffd_unmap(ctx, m, c.len), -ENOSPC);
	atomic_store(&c.fail, 0);
	ck_assert_int_eq(luffd_msync(ctx, m, c.len, LUFFD_MSYNC_DURABLE), 0);
	ck_assert_int_ge(atomic_load(&c.flushes), 1);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.written_back, 20);
	for (size_t i = 0; i < 20 * t_ps; i++)
		ck_assert_int_eq(c.mem[i], 0x11);
	{
		long d = t_page_diff(c.mem + 20 * t_ps, 20 * t_ps, c.len, SEED);

		ck_assert_int_lt(d, 0);
	}
	/* The durability flush's error is returned too. */
	m[0] = 0x22;
	atomic_store(&c.fail, EIO);
	ck_assert_int_eq(luffd_msync(ctx, m, t_ps, LUFFD_MSYNC_DURABLE),
			 -EIO);
	atomic_store(&c.fail, 0);
	ck_assert_int_eq(luffd_unmap(ctx, m, c.len), 0);
	ck_assert_int_eq(c.mem[0], 0x22);
out:
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(st);
	free(c.mem);
}
END_TEST

/* A full file system: -ENOSPC, nothing lost, written once there is room. */
START_TEST(wb_enospc)
{
	char dir[512], path[600];
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	size_t len = 64 * t_ps;
	char *m, *buf;
	int fd, err;

	snprintf(dir, sizeof(dir), "%s/full", t_dir);
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	if (mount("tmpfs", dir, "tmpfs", 0, "size=128k") < 0) {
		printf("cannot mount a tmpfs (%s): not tested\n",
		       strerror(errno));
		return;
	}
	snprintf(path, sizeof(path), "%s/f", dir);
	fd = open(path, O_RDWR | O_CREAT, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)len), 0); /* sparse */
	ctx = t_ctx(NULL);
	ck_assert_int_eq(luffd_store_file(fd, 0, &st), 0);
	err = luffd_map(ctx, st, 0, len, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WRITEBACK, (void **)&m);
	if (err == -EOPNOTSUPP)
		goto out;
	ck_assert_int_eq(err, 0);
	for (size_t i = 0; i < len; i += t_ps)
		memset(m + i, (int)(i / t_ps) + 1, t_ps);
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), -ENOSPC);
	/* Make room: the pages not written are still dirty. */
	ck_assert_int_eq(mount("tmpfs", dir, "tmpfs", MS_REMOUNT, "size=1m"),
			 0);
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), 0);
	buf = malloc(len);
	ck_assert_int_eq(pread(fd, buf, len, 0), (ssize_t)len);
	ck_assert_mem_eq(buf, m, len);
	free(buf);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
out:
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(st);
	close(fd);
	umount2(dir, MNT_DETACH);
}
END_TEST

/* An asynchronous store: reads answered inside read(), writes queued and
 * answered by a thread of the test's (or left unanswered on request). */
struct ast {
	char *mem;
	size_t len;
	struct luffd_store *st;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	struct luffd_write q[64];
	int nq;
	bool hold;       /* leave writes unanswered */
	bool stop;
	bool shorten;    /* answer a page short once per write */
	atomic_int flushes;
	pthread_t th;
};

static int ast_read(void *arg, const struct luffd_request *r)
{
	struct ast *a = arg;
	uint64_t off = r->offset;

	for (int i = 0; i < r->iovcnt; i++) {
		memcpy(r->iov[i].iov_base, a->mem + off, r->iov[i].iov_len);
		off += r->iov[i].iov_len;
	}
	ck_assert_int_eq(luffd_request_complete(a->st, r->id,
						(ssize_t)r->len), 0);
	return 0;
}

static int ast_write(void *arg, const struct luffd_write *w)
{
	struct ast *a = arg;

	pthread_mutex_lock(&a->lock);
	ck_assert_int_lt(a->nq, 64);
	a->q[a->nq++] = *w;
	pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->lock);
	return 0;
}

static int ast_flush(void *arg)
{
	struct ast *a = arg;

	atomic_fetch_add(&a->flushes, 1);
	return 0;
}

static void *ast_main(void *arg)
{
	struct ast *a = arg;

	pthread_mutex_lock(&a->lock);
	while (!a->stop) {
		if (!a->nq || a->hold) {
			pthread_cond_wait(&a->cv, &a->lock);
			continue;
		}
		struct luffd_write w = a->q[--a->nq];
		size_t n = w.len;

		pthread_mutex_unlock(&a->lock);
		if (a->shorten && n > t_ps)
			n -= t_ps;
		memcpy(a->mem + w.offset, w.buf, n);
		ck_assert_int_eq(luffd_write_complete(a->st, w.id, (ssize_t)n),
				 0);
		/* Twice: refused, nothing changes. */
		ck_assert_int_eq(luffd_write_complete(a->st, w.id, (ssize_t)n),
				 -EINVAL);
		pthread_mutex_lock(&a->lock);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

static void ast_set(struct ast *a, bool hold)
{
	pthread_mutex_lock(&a->lock);
	a->hold = hold;
	pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->lock);
}

START_TEST(wb_async_store)
{
	struct ast a = { .len = 64 * t_ps, .shorten = true };
	struct luffd_async_ops ops = { .sz = sizeof(ops), .read = ast_read,
				       .write = ast_write, .flush = ast_flush,
				       .size = 64 * t_ps };
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 300);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, s);
	char *m;
	double t0;
	int err;

	a.mem = malloc(a.len);
	t_pattern(a.mem, 0, a.len, SEED);
	pthread_mutex_init(&a.lock, NULL);
	pthread_cond_init(&a.cv, NULL);
	ck_assert_int_eq(luffd_store_async(&ops, &a, &a.st), 0);
	ck_assert_int_eq(pthread_create(&a.th, NULL, ast_main, &a), 0);
	err = luffd_map(ctx, a.st, 0, a.len, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WRITEBACK, (void **)&m);
	if (err == -EOPNOTSUPP)
		goto out;
	ck_assert_int_eq(err, 0);
	memset(m, 0x44, 40 * t_ps);
	ck_assert_int_eq(luffd_msync(ctx, m, a.len, LUFFD_MSYNC_DURABLE), 0);
	ck_assert_int_ge(atomic_load(&a.flushes), 1);
	for (size_t i = 0; i < 40 * t_ps; i++)
		ck_assert_int_eq(a.mem[i], 0x44);
	ck_assert_int_lt(t_page_diff(a.mem + 40 * t_ps, 40 * t_ps, a.len,
				     SEED), 0);
	/* A store that stops answering: -ETIMEDOUT after read_timeout_ms,
	 * the pages still dirty; late answers are taken and dropped. */
	ast_set(&a, true);
	memset(m, 0x55, 8 * t_ps);
	t0 = t_now_s();
	ck_assert_int_eq(luffd_msync(ctx, m, a.len, 0), -ETIMEDOUT);
	ck_assert(t_now_s() - t0 < 5);
	ck_assert_int_ne(a.mem[0], 0x55);
	ck_assert_int_eq(luffd_write_complete(a.st, 1u << 30, 0), -EINVAL);
	ast_set(&a, false);
	ck_assert_int_eq(luffd_msync(ctx, m, a.len, 0), 0);
	for (size_t i = 0; i < 8 * t_ps; i++)
		ck_assert_int_eq(a.mem[i], 0x55);
	t_stats(ctx, &s);
	ck_assert_uint_ge(s.writeback_errors, 1);
	ck_assert_int_eq(luffd_unmap(ctx, m, a.len), 0);
out:
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	pthread_mutex_lock(&a.lock);
	a.stop = true;
	pthread_cond_signal(&a.cv);
	pthread_mutex_unlock(&a.lock);
	pthread_join(a.th, NULL);
	luffd_store_put(a.st);
	free(a.mem);
}
END_TEST

/* luffd_unmap() while another thread writes back through a slow store:
 * both finish, nothing is lost. */
struct slow {
	char *mem;
	atomic_int writes;
};

static ssize_t slow_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	memcpy(buf, ((struct slow *)arg)->mem + off, len);
	return (ssize_t)len;
}

static ssize_t slow_write(void *arg, uint64_t off, const void *buf,
			  size_t len)
{
	struct slow *s = arg;

	usleep(2000);
	memcpy(s->mem + off, buf, len);
	atomic_fetch_add(&s->writes, 1);
	return (ssize_t)len;
}

struct syncer {
	struct luffd_ctx *ctx;
	char *m;
	size_t len;
	int err;
};

static void *syncer_main(void *arg)
{
	struct syncer *y = arg;

	y->err = luffd_msync(y->ctx, y->m, y->len, 0);
	return NULL;
}

START_TEST(wb_unmap_during_writeback)
{
	size_t len = 64 * t_ps;
	struct slow sl = { .mem = malloc(len) };
	struct luffd_callback_ops ops = { .sz = sizeof(ops), .fill = slow_fill,
					  .write = slow_write, .size = len };
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st;
	struct syncer y;
	pthread_t th;
	char *m;
	int err;

	memset(sl.mem, 0, len);
	ck_assert_int_eq(luffd_store_callback(&ops, &sl, &st), 0);
	err = luffd_map(ctx, st, 0, len, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WRITEBACK, (void **)&m);
	if (err == -EOPNOTSUPP)
		goto out;
	ck_assert_int_eq(err, 0);
	/* Every other page: 32 runs, 32 slow writes. */
	for (size_t p = 0; p < 64; p += 2)
		memset(m + p * t_ps, (int)p + 1, t_ps);
	y = (struct syncer){ ctx, m, len, 1 };
	ck_assert_int_eq(pthread_create(&th, NULL, syncer_main, &y), 0);
	usleep(5000); /* the write-back is under way */
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	pthread_join(th, NULL);
	/* It ran before the unmap's write-back, or found the region gone. */
	ck_assert(y.err == 0 || y.err == -ENOENT);
	ck_assert_int_eq(atomic_load(&sl.writes), 32);
	for (size_t p = 0; p < 64; p++)
		ck_assert_int_eq(sl.mem[p * t_ps + t_ps - 1],
				 p % 2 ? 0 : (int)p + 1);
out:
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	luffd_store_put(st);
	free(sl.mem);
}
END_TEST

START_TEST(wb_validation)
{
	struct fixture fx;
	struct luffd_store *ro, *other;
	struct luffd_range r[2];
	char *m2, *m3;

	if (!setup(&fx, 16 * t_ps)) {
		teardown(&fx);
		return;
	}
	ck_assert_int_eq(luffd_msync(NULL, fx.m, t_ps, 0), -EINVAL);
	ck_assert_int_eq(luffd_msync(fx.ctx, fx.m + 1, t_ps, 0), -EINVAL);
	ck_assert_int_eq(luffd_msync(fx.ctx, fx.m, 0, 0), -EINVAL);
	ck_assert_int_eq(luffd_msync(fx.ctx, fx.m, t_ps, 2), -EINVAL);
	ck_assert_int_eq(luffd_msync(fx.ctx, fx.m, fx.len + t_ps, 0),
			 -ENOENT);
	/* luffd_dirty() would take pages from write-back. */
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 2, 0), -EINVAL);
	fx.m[0] = 1;
	ck_assert_int_eq(luffd_dirty(fx.ctx, fx.m, fx.len, r, 2,
				     LUFFD_DIRTY_KEEP), 1);
	/* A read-only store cannot be written. */
	ck_assert_int_eq(luffd_store_open(fx.path, 0, &ro), 0);
	ck_assert_int_eq(luffd_map(fx.ctx, ro, 0, t_ps, PROT_READ,
				   LUFFD_MAP_WRITEBACK, (void **)&m2), -EACCES);
	ck_assert_ptr_null(m2);
	/* A region that is not write-back: msync refuses it. */
	ck_assert_int_eq(luffd_map(fx.ctx, ro, 0, t_ps, PROT_READ, 0,
				   (void **)&m2), 0);
	ck_assert_int_eq(luffd_msync(fx.ctx, m2, t_ps, 0), -EINVAL);
	/* A second store over the file while it has a region: busy. */
	ck_assert_int_eq(luffd_store_open(fx.path, LUFFD_FILE_WRITE, &other),
			 0);
	ck_assert_int_eq(luffd_map(fx.ctx, other, 0, t_ps,
				   PROT_READ | PROT_WRITE, LUFFD_MAP_WRITEBACK,
				   (void **)&m3), -EBUSY);
	ck_assert_int_eq(luffd_unmap(fx.ctx, m2, t_ps), 0);
	luffd_store_put(ro);
	luffd_store_put(other);
	/* Through a descriptor: its access mode decides. */
	{
		int fd = open(fx.path, O_RDONLY);

		ck_assert_int_eq(luffd_store_file(fd, LUFFD_FILE_WRITE, &ro),
				 -EBADF);
		close(fd);
	}
	teardown(&fx);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("writeback");
	TCase *tc = t_tcase(s, "sync");

	tcase_add_test(tc, wb_exact);
	tcase_add_test(tc, wb_tail_unmap_destroy);
	tcase_add_test(tc, wb_refault_after_writeback);
	tcase_add_test(tc, wb_concurrent_writers);
	tcase_add_test(tc, wb_callback_errors);
	tcase_add_test(tc, wb_enospc);
	tcase_add_test(tc, wb_validation);
	tcase_add_test(tc, wb_async_store);
	tcase_add_test(tc, wb_unmap_during_writeback);
	tc = t_tcase(s, "async");
	tcase_add_test(tc, wb_exact_async);
	tcase_add_test(tc, wb_concurrent_writers_async);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
