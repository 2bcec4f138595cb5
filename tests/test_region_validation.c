/* SPDX-License-Identifier: MIT */
/*
 * Argument validation: every documented error of luffd_map / luffd_register /
 * luffd_unmap / luffd_unregister / the store constructors / luffd_ctx_create
 * / the getters, provoked on purpose, each checked to leave nothing mapped,
 * registered or open.  Also: the library prints nothing unless asked.
 */
#define _GNU_SOURCE
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPG 16

static char *maps_snapshot(void)
{
	int fd = open("/proc/self/maps", O_RDONLY);
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	ssize_t n;

	ck_assert_int_ge(fd, 0);
	ck_assert_ptr_nonnull(buf);
	while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
		len += (size_t)n;
		if (cap - len < 4096) {
			cap *= 2;
			buf = realloc(buf, cap);
			ck_assert_ptr_nonnull(buf);
		}
	}
	buf[len] = 0;
	close(fd);
	/* Drop [heap] lines: malloc (ours included) may grow the heap. */
	for (char *l = buf, *nl; *l; l = nl) {
		nl = strchr(l, '\n');
		nl = nl ? nl + 1 : l + strlen(l);
		if (memmem(l, (size_t)(nl - l), "[heap]", 6)) {
			memmove(l, nl, strlen(nl) + 1);
			nl = l;
		}
	}
	return buf;
}

/* Run expr, expect ret, and check that the address space did not change. */
#define EXPECT_NOCHANGE(expr, ret)                                          \
	do {                                                                \
		char *before_ = maps_snapshot();                            \
		int fds_ = t_count_fds();                                   \
		int r_ = (expr);                                            \
		char *after_ = maps_snapshot();                             \
		ck_assert_msg(r_ == (ret), "%s returned %d (%s), want %d",  \
			      #expr, r_, luffd_strerror(r_), (ret));         \
		ck_assert_msg(T_SANITIZED || strcmp(before_, after_) == 0,  \
			      "%s changed the address space", #expr);       \
		ck_assert_int_eq(t_count_fds(), fds_);                      \
		free(before_);                                              \
		free(after_);                                               \
	} while (0)

static uint64_t seed = 0xfeedULL;
static char *path;

static struct luffd_store *file_store(void)
{
	struct luffd_store *st;

	if (!path)
		path = t_make_file(NPG * t_ps, seed);
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	return st;
}

START_TEST(map_bad_args)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st = file_store();
	size_t len = NPG * t_ps;
	void *a = NULL;

	/* Warm up (malloc arenas, cache) so the snapshots compare the
	 * failing calls only. */
	ck_assert_int_eq(luffd_map(ctx, st, 0, len, PROT_READ, 0, &a), 0);
	t_assert_page(a, 0, 0, len, seed);
	ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);

	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, 0, PROT_READ, 0, &a), -EINVAL);
	/* Any length, as mmap() takes it: whole pages, rounded up; unmap
	 * takes the same length. */
	ck_assert_int_eq(luffd_map(ctx, st, 0, t_ps + 1, PROT_READ, 0, &a), 0);
	t_assert_page(a, 0, 0, len, seed);
	t_assert_page(a, 1, 0, len, seed);
	ck_assert_int_eq(luffd_unmap(ctx, a, t_ps + 1), 0);
	ck_assert_int_eq(luffd_map(ctx, st, t_ps, t_ps / 2, PROT_READ, 0, &a),
			 0);
	t_assert_page(a, 0, t_ps, len, seed);
	ck_assert_int_eq(luffd_unmap(ctx, a, t_ps / 2 + 1), 0);
	/* Not past the address space. */
	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, SIZE_MAX - 1, PROT_READ, 0, &a),
			-EINVAL);
	EXPECT_NOCHANGE(luffd_map(ctx, st, 100, t_ps, PROT_READ, 0, &a),
			-EINVAL);
	EXPECT_NOCHANGE(luffd_map(ctx, st, t_ps + 8, t_ps, PROT_READ, 0, &a),
			-EINVAL);
	/* offset must lie inside the store. */
	EXPECT_NOCHANGE(luffd_map(ctx, st, len, t_ps, PROT_READ, 0, &a),
			-ENXIO);
	EXPECT_NOCHANGE(luffd_map(ctx, st, 2 * len, t_ps, PROT_READ, 0, &a),
			-ENXIO);
	/* Page indexes reach 2^40 at most (the cache's key). */
	EXPECT_NOCHANGE(luffd_map(ctx, st, ((uint64_t)1 << 40) * t_ps - t_ps,
				  2 * t_ps, PROT_READ, 0, &a), -EOVERFLOW);
	EXPECT_NOCHANGE(luffd_map(ctx, st, UINT64_MAX - t_ps + 1, 2 * t_ps,
				  PROT_READ, 0, &a), -EOVERFLOW);
	/* prot: PROT_READ required, only READ/WRITE/EXEC. */
	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, len, 0, 0, &a), -EINVAL);
	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, len, PROT_WRITE, 0, &a),
			-EINVAL);
	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, len, PROT_READ | 0x100, 0, &a),
			-EINVAL);
	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, len, PROT_READ | 0x8 /* PROT_SEM */, 0,
				  &a), -EINVAL);
	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, len,
				  PROT_READ | PROT_GROWSDOWN, 0, &a), -EINVAL);
	/* flags: 0 or LUFFD_MAP_PUSH. */
	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, len, PROT_READ, 1, &a), -EINVAL);
	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, len, PROT_READ, 0x80000000u,
				  &a), -EINVAL);
	/* NULL pointers. */
	EXPECT_NOCHANGE(luffd_map(NULL, st, 0, len, PROT_READ, 0, &a), -EINVAL);
	EXPECT_NOCHANGE(luffd_map(ctx, NULL, 0, len, PROT_READ, 0, &a),
			-EINVAL);
	EXPECT_NOCHANGE(luffd_map(ctx, st, 0, len, PROT_READ, 0, NULL),
			-EINVAL);

	/* Every valid prot works. */
	{
		static const int prots[] = {
			PROT_READ, PROT_READ | PROT_WRITE,
			PROT_READ | PROT_EXEC,
			PROT_READ | PROT_WRITE | PROT_EXEC,
		};
		for (size_t i = 0; i < 4; i++) {
			ck_assert_int_eq(luffd_map(ctx, st, t_ps, len - t_ps,
						   prots[i], 0, &a), 0);
			ck_assert_uint_eq((uintptr_t)a % t_ps, 0);
			t_assert_page(a, 2, t_ps, len, seed);
			ck_assert_int_eq(luffd_unmap(ctx, a, len - t_ps), 0);
		}
	}
	/* Mapping past the end of the store is allowed (like mmap). */
	ck_assert_int_eq(luffd_map(ctx, st, len - t_ps, 4 * len, PROT_READ, 0,
				   &a), 0);
	t_assert_page(a, 0, len - t_ps, len, seed);
	ck_assert_int_eq(luffd_unmap(ctx, a, 4 * len), 0);

	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

START_TEST(register_bad_args)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_ctx *ctx2 = t_ctx(NULL);
	struct luffd_store *st = file_store();
	size_t npg = 32, len = npg * t_ps;
	char *base = mmap(NULL, len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *b4 = base + 4 * t_ps;

	ck_assert_ptr_ne(base, MAP_FAILED);
	EXPECT_NOCHANGE(luffd_register(ctx, base + 1, t_ps, st, 0, 0), -EINVAL);
	EXPECT_NOCHANGE(luffd_register(ctx, base + t_ps / 2, t_ps, st, 0, 0),
			-EINVAL);
	EXPECT_NOCHANGE(luffd_register(ctx, base, 0, st, 0, 0), -EINVAL);
	EXPECT_NOCHANGE(luffd_register(ctx, base, t_ps - 1, st, 0, 0), -EINVAL);
	EXPECT_NOCHANGE(luffd_register(ctx, base, 2 * t_ps + 8, st, 0, 0),
			-EINVAL);
	EXPECT_NOCHANGE(luffd_register(ctx, base, t_ps, st, 8, 0), -EINVAL);
	EXPECT_NOCHANGE(luffd_register(ctx, base, t_ps, st, NPG * t_ps, 0),
			-ENXIO);
	EXPECT_NOCHANGE(luffd_register(ctx, base, t_ps, st, 3 * NPG * t_ps, 0),
			-ENXIO);
	EXPECT_NOCHANGE(luffd_register(ctx, base, t_ps, st,
				       ((uint64_t)1 << 40) * t_ps, 0),
			-EOVERFLOW);
	EXPECT_NOCHANGE(luffd_register(ctx, base, t_ps, st, 0, 1u << 6), -EINVAL);
	EXPECT_NOCHANGE(luffd_register(ctx, base, t_ps, st, 0, 1u << 31),
			-EINVAL);
	EXPECT_NOCHANGE(luffd_register(NULL, base, t_ps, st, 0, 0), -EINVAL);
	EXPECT_NOCHANGE(luffd_register(ctx, base, t_ps, NULL, 0, 0), -EINVAL);

	/* Overlap: [4, 12) registered; every overlapping range is -EEXIST,
	 * an adjacent one is fine. */
	ck_assert_int_eq(luffd_register(ctx, b4, 8 * t_ps, st, 0, 0), 0);
	EXPECT_NOCHANGE(luffd_register(ctx, base, 5 * t_ps, st, 0, 0), -EEXIST);
	EXPECT_NOCHANGE(luffd_register(ctx, base + 11 * t_ps, 4 * t_ps, st, 0,
				       0), -EEXIST);
	EXPECT_NOCHANGE(luffd_register(ctx, base + 6 * t_ps, t_ps, st, 0, 0),
			-EEXIST);
	EXPECT_NOCHANGE(luffd_register(ctx, b4, 8 * t_ps, st, 0, 0), -EEXIST);
	EXPECT_NOCHANGE(luffd_register(ctx, base, len, st, 0, 0), -EEXIST);
	/* Registered with another userfaultfd: -EBUSY. */
	EXPECT_NOCHANGE(luffd_register(ctx2, base + 2 * t_ps, 4 * t_ps, st, 0,
				       0), -EBUSY);
	EXPECT_NOCHANGE(luffd_register(ctx2, b4, 8 * t_ps, st, 0, 0), -EBUSY);
	/* Adjacent ranges are fine, in either context. */
	ck_assert_int_eq(luffd_register(ctx, base + 12 * t_ps, 4 * t_ps, st,
					4 * t_ps, 0), 0);
	ck_assert_int_eq(luffd_register(ctx2, base + 16 * t_ps, 4 * t_ps, st,
					8 * t_ps, 0), 0);

	/* Pages 0..3 were never registered: ordinary zero-filled memory,
	 * not served from the store. */
	for (int i = 0; i < 4; i++)
		for (size_t j = 0; j < t_ps; j += 512)
			ck_assert_int_eq(base[i * t_ps + j], 0);
	/* Registered pages are served from the store at their offsets. */
	t_assert_page(b4, 3, 0, NPG * t_ps, seed);
	t_assert_page(base + 12 * t_ps, 1, 4 * t_ps, NPG * t_ps, seed);
	t_assert_page(base + 16 * t_ps, 2, 8 * t_ps, NPG * t_ps, seed);

	/* Unregister: exact ranges only. */
	ck_assert_int_eq(luffd_unregister(ctx, b4, 4 * t_ps), -EINVAL);
	ck_assert_int_eq(luffd_unregister(ctx, b4, 9 * t_ps), -EINVAL);
	{
		int r = luffd_unregister(ctx, b4 + t_ps, 7 * t_ps);
		ck_assert_msg(r == -EINVAL || r == -ENOENT, "got %d", r);
	}
	ck_assert_int_eq(luffd_unregister(ctx, base + 24 * t_ps, t_ps),
			 -ENOENT);
	ck_assert_int_eq(luffd_unregister(NULL, b4, 8 * t_ps), -EINVAL);
	/* ctx2 does not own ctx's range. */
	ck_assert_int_eq(luffd_unregister(ctx2, b4, 8 * t_ps), -ENOENT);
	ck_assert_int_eq(luffd_unregister(ctx, b4, 8 * t_ps), 0);
	ck_assert_int_eq(luffd_unregister(ctx, b4, 8 * t_ps), -ENOENT);
	ck_assert_int_eq(luffd_unregister(ctx, base + 12 * t_ps, 4 * t_ps), 0);
	ck_assert_int_eq(luffd_unregister(ctx2, base + 16 * t_ps, 4 * t_ps),
			 0);

	/* The whole range registers again cleanly now, with ctx2 too. */
	ck_assert_int_eq(munmap(base, len), 0);
	base = mmap(NULL, len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(base, MAP_FAILED);
	ck_assert_int_eq(luffd_register(ctx2, base, NPG * t_ps, st, 0, 0), 0);
	for (int i = 0; i < NPG; i++)
		t_assert_page(base, i, 0, NPG * t_ps, seed);
	ck_assert_int_eq(luffd_unregister(ctx2, base, NPG * t_ps), 0);

	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx2), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	munmap(base, len);
}
END_TEST

START_TEST(unmap_bad_args)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_store *st = file_store();
	size_t len = NPG * t_ps;
	void *a, *other;
	int r;

	ck_assert_int_eq(luffd_map(ctx, st, 0, len, PROT_READ, 0, &a), 0);
	t_assert_page(a, 1, 0, len, seed);
	ck_assert_int_eq(luffd_unmap(ctx, a, len - t_ps), -EINVAL);
	ck_assert_int_eq(luffd_unmap(ctx, a, len + t_ps), -EINVAL);
	ck_assert_int_eq(luffd_unmap(ctx, a, 0), -EINVAL);
	r = luffd_unmap(ctx, (char *)a + t_ps, len - t_ps);
	ck_assert_msg(r == -EINVAL || r == -ENOENT, "got %d", r);
	other = mmap(NULL, t_ps, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(other, MAP_FAILED);
	ck_assert_int_eq(luffd_unmap(ctx, other, t_ps), -ENOENT);
	ck_assert_int_eq(luffd_unmap(NULL, a, len), -EINVAL);
	/* The region is intact after the failed calls. */
	for (int i = 0; i < NPG; i++)
		t_assert_page(a, i, 0, len, seed);
	ck_assert_int_eq(luffd_unmap(ctx, a, len), 0);
	ck_assert_int_eq(luffd_unmap(ctx, a, len), -ENOENT);
	munmap(other, t_ps);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

START_TEST(store_bad_args)
{
	struct luffd_store *st = NULL;
	char dummy[64];
	int fds0, fd, pfd[2];
	char *p;

	if (!path)
		path = t_make_file(NPG * t_ps, seed);
	fds0 = t_count_fds();

	ck_assert_int_eq(luffd_store_file(-1, 0, &st), -EBADF);
	fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_int_eq(luffd_store_file(fd, 0, &st), -EBADF);
	fd = open(path, O_RDONLY);
	ck_assert_int_eq(luffd_store_file(fd, 0, NULL), -EINVAL);
	ck_assert_int_eq(luffd_store_file(fd, 1u << 7, &st), -EINVAL);
	ck_assert_int_eq(luffd_store_file(fd, ~0u, &st), -EINVAL);
	ck_assert_int_eq(luffd_store_file(fd, LUFFD_FILE_CACHED | (1u << 3),
					  &st), -EINVAL);
	ck_assert_int_eq(luffd_store_file(fd, LUFFD_FILE_CACHED, &st), 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_store_file(fd, 0, &st), 0);
	luffd_store_put(st);
	close(fd);
	/* Not a regular file. */
	fd = open(t_dir, O_RDONLY | O_DIRECTORY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(luffd_store_file(fd, 0, &st), -EINVAL);
	close(fd);
	ck_assert_int_eq(pipe(pfd), 0);
	ck_assert_int_eq(luffd_store_file(pfd[0], 0, &st), -EINVAL);
	close(pfd[0]);
	close(pfd[1]);
	/* Not open for reading. */
	fd = open(path, O_WRONLY);
	ck_assert_int_ge(fd, 0);
	{
		int r = luffd_store_file(fd, 0, &st);
		ck_assert_msg(r == -EBADF || r == -EACCES, "got %d", r);
	}
	close(fd);

	ck_assert_int_eq(luffd_store_open(NULL, 0, &st), -EINVAL);
	ck_assert_int_eq(luffd_store_open(path, 0, NULL), -EINVAL);
	ck_assert_int_eq(luffd_store_open(path, 1u << 9, &st), -EINVAL);
	p = malloc(strlen(t_dir) + 32);
	sprintf(p, "%s/does-not-exist", t_dir);
	ck_assert_int_eq(luffd_store_open(p, 0, &st), -ENOENT);
	free(p);
	{
		int r = luffd_store_open(t_dir, 0, &st);
		ck_assert_msg(r == -EINVAL || r == -EISDIR, "got %d", r);
	}

	ck_assert_int_eq(luffd_store_memory(NULL, t_ps, &st), -EINVAL);
	ck_assert_int_eq(luffd_store_memory(dummy, 0, &st), -EINVAL);
	ck_assert_int_eq(luffd_store_memory(dummy, sizeof(dummy), NULL),
			 -EINVAL);

	ck_assert_int_eq(luffd_store_callback(NULL, NULL, &st), -EINVAL);
	{
		LUFFD_OPTS(luffd_callback_ops, ops, .size = t_ps);
		ck_assert_int_eq(luffd_store_callback(&ops, NULL, &st),
				 -EINVAL); /* fill NULL */
		ops.sz = 0;
		ck_assert_int_eq(luffd_store_callback(&ops, NULL, &st),
				 -EINVAL);
	}
	ck_assert_int_eq(t_count_fds(), fds0);

	/* luffd_store_size reports the sizes given. */
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_uint_eq(luffd_store_size(st), NPG * t_ps);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_store_memory(dummy, sizeof(dummy), &st), 0);
	ck_assert_uint_eq(luffd_store_size(st), sizeof(dummy));
	luffd_store_put(st);
	luffd_store_put(NULL);
	ck_assert_int_eq(t_count_fds(), fds0);
}
END_TEST

static int try_create(const struct luffd_ctx_opts *o)
{
	struct luffd_ctx *ctx = NULL;
	int fds = t_count_fds(), thr = t_count_threads();
	int r = luffd_ctx_create(o, &ctx);

	if (r == 0) {
		ck_assert_ptr_nonnull(ctx);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	}
	/* Failure or not, nothing is left behind. */
	ck_assert_int_eq(t_count_fds(), fds);
	ck_assert_int_eq(t_threads_settle(thr), thr);
	return r;
}

/* Threads of this process whose allowed CPUs are exactly list. */
static int tasks_pinned_to(const char *list)
{
	char fn[320], line[256];
	int n = 0;
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d))) {
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(fn, sizeof(fn), "/proc/self/task/%s/status",
			 e->d_name);
		f = fopen(fn, "r");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f))
			if (!strncmp(line, "Cpus_allowed_list:", 18)) {
				char *v = line + 18;

				v += strspn(v, " \t");
				v[strcspn(v, "\n")] = 0;
				n += !strcmp(v, list);
			}
		fclose(f);
	}
	closedir(d);
	return n;
}

/* handler_cpus pins every handler thread, and only them. */
START_TEST(handler_pinned)
{
	cpu_set_t all;
	int last = -1;
	char list[16];

	ck_assert_int_eq(sched_getaffinity(0, sizeof(all), &all), 0);
	for (int i = 0; i < 64; i++)
		if (CPU_ISSET(i, &all))
			last = i;
	if (last < 1 || CPU_COUNT(&all) < 2)
		return; /* one CPU: nothing to tell apart */
	snprintf(list, sizeof(list), "%d", last);
	{
		int thr = t_count_threads(); /* sanitizers add their own */
		LUFFD_OPTS(luffd_ctx_opts, o, .handler_cpus = 1ull << last,
			   .handler_threads = 2);
		struct luffd_ctx *ctx = t_ctx(&o);

		ck_assert_int_eq(tasks_pinned_to(list), 2);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
		ck_assert_int_eq(t_threads_settle(thr), thr);
		ck_assert_int_eq(tasks_pinned_to(list), 0);
	}
}
END_TEST

START_TEST(ctx_opts_bad)
{
	size_t ra = 128 * 1024;

	ck_assert_int_eq(luffd_ctx_create(NULL, NULL), -EINVAL);
	{
		LUFFD_OPTS(luffd_ctx_opts, o);
		ck_assert_int_eq(luffd_ctx_create(&o, NULL), -EINVAL);
	}
	{
		LUFFD_OPTS(luffd_ctx_opts, o, .queue_depth = 4097);
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.queue_depth = ~0u;
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.queue_depth = 4096;
		ck_assert_int_eq(try_create(&o), 0);
		o.queue_depth = 1;
		ck_assert_int_eq(try_create(&o), 0);
	}
	{
		/* An explicit window needs 2 windows of cache per handler
		 * thread; the default window shrinks to fit instead. */
		LUFFD_OPTS(luffd_ctx_opts, o, .cache_bytes = 2 * ra - t_ps,
			   .readahead_bytes = ra);
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.readahead_bytes = 0;
		ck_assert_int_eq(try_create(&o), 0);
		o.readahead_bytes = ra;
		o.cache_bytes = 1;
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.readahead_bytes = 0; /* not even one page per window */
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.readahead_bytes = ra;
		o.cache_bytes = 2 * ra;
		ck_assert_int_eq(try_create(&o), 0);
		o.handler_threads = 2;
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.cache_bytes = 4 * ra;
		ck_assert_int_eq(try_create(&o), 0);
		o.handler_threads = 1;
		o.readahead_bytes = 64 * 1024;
		o.cache_bytes = 128 * 1024 - t_ps;
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.cache_bytes = 128 * 1024;
		ck_assert_int_eq(try_create(&o), 0);
		/* readahead_bytes: a page multiple, at most 1024 pages. */
		o.cache_bytes = 0;
		o.readahead_bytes = t_ps + 1;
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.readahead_bytes = 1025 * t_ps;
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.readahead_bytes = 1024 * t_ps;
		o.cache_bytes = 2048 * t_ps;
		ck_assert_int_eq(try_create(&o), 0);
		o.readahead_mode = 7;
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.readahead_mode = LUFFD_RA_FIXED;
		ck_assert_int_eq(try_create(&o), 0);
		o.readahead_bytes = LUFFD_NO_READAHEAD;
		o.cache_bytes = t_ps;
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.cache_bytes = 2 * t_ps;
		ck_assert_int_eq(try_create(&o), 0);
	}
	{
		/* install_ahead_bytes: a page multiple, at most 1024
		 * pages; LUFFD_NO_INSTALL_AHEAD is off. */
		LUFFD_OPTS(luffd_ctx_opts, o, .install_ahead_bytes = t_ps + 1);
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.install_ahead_bytes = 1025 * t_ps;
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.install_ahead_bytes = 1024 * t_ps;
		ck_assert_int_eq(try_create(&o), 0);
		o.install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD;
		ck_assert_int_eq(try_create(&o), 0);
	}
	{
		LUFFD_OPTS(luffd_ctx_opts, o, .spin_us = 1000001);
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.spin_us = LUFFD_NO_SPIN;
		ck_assert_int_eq(try_create(&o), 0);
		o.spin_us = 1000000;
		ck_assert_int_eq(try_create(&o), 0);
	}
	{
		LUFFD_OPTS(luffd_ctx_opts, o, .stripe_bytes = t_ps + 1);
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.stripe_bytes = t_ps;
		ck_assert_int_eq(try_create(&o), 0);
	}
	{
		LUFFD_OPTS(luffd_ctx_opts, o, .install_mode = 7);
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.install_mode = LUFFD_INSTALL_COPY;
		ck_assert_int_eq(try_create(&o), 0);
	}
	{
		/* handler_cpus: a mask naming no CPU of this machine. */
		long n = sysconf(_SC_NPROCESSORS_CONF);
		LUFFD_OPTS(luffd_ctx_opts, o, .handler_cpus = 1);

		ck_assert_int_eq(try_create(&o), 0);
		if (n > 0 && n < 64) {
			o.handler_cpus = 1ull << 63;
			ck_assert_int_eq(try_create(&o), -EINVAL);
		}
	}
	{
		LUFFD_OPTS(luffd_ctx_opts, o, .open_mode = 99);
		ck_assert_int_eq(try_create(&o), -EINVAL);
		o.open_mode = (enum luffd_open_mode)-1;
		ck_assert_int_eq(try_create(&o), -EINVAL);
	}
	{
		LUFFD_OPTS(luffd_ctx_opts, o, .trace_format = 99, .trace_fd = 1);
		ck_assert_int_eq(try_create(&o), -EINVAL);
	}
	{
		/* sz: too small to hold sz itself, or larger than the
		 * library knows with non-zero bytes it cannot interpret. */
		struct {
			struct luffd_ctx_opts o;
			uint64_t extra;
		} big;

		memset(&big, 0, sizeof(big));
		big.o.sz = 0;
		ck_assert_int_eq(try_create(&big.o), -EINVAL);
		big.o.sz = 3;
		ck_assert_int_eq(try_create(&big.o), -EINVAL);
		big.o.sz = sizeof(big);
		big.extra = 1;
		ck_assert_int_eq(try_create(&big.o), -EINVAL);
		/* An older, shorter struct: fields past sz are ignored. */
		big.o.sz = offsetof(struct luffd_ctx_opts, trace_fn);
		big.o.trace_format = 99;
		ck_assert_int_eq(try_create(&big.o), 0);
	}
}
END_TEST

START_TEST(getters_bad_args)
{
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct luffd_stats st;
	struct luffd_features f;
	uint64_t ns = 0;

	memset(&st, 0, sizeof(st));
	st.sz = sizeof(st);
	ck_assert_int_eq(luffd_stats_get(NULL, &st), -EINVAL);
	ck_assert_int_eq(luffd_stats_get(ctx, NULL), -EINVAL);
	st.sz = 0;
	ck_assert_int_eq(luffd_stats_get(ctx, &st), -EINVAL);
	memset(&f, 0, sizeof(f));
	f.sz = sizeof(f);
	ck_assert_int_eq(luffd_ctx_features(NULL, &f), -EINVAL);
	ck_assert_int_eq(luffd_ctx_features(ctx, NULL), -EINVAL);
	f.sz = 0;
	ck_assert_int_eq(luffd_ctx_features(ctx, &f), -EINVAL);

	/* An older, shorter stats struct: nothing written past sz. */
	memset(&st, 0xab, sizeof(st));
	st.sz = offsetof(struct luffd_stats, latency);
	ck_assert_int_eq(luffd_stats_get(ctx, &st), 0);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR], 0);
	for (size_t i = offsetof(struct luffd_stats, latency); i < sizeof(st);
	     i++)
		ck_assert_msg(((unsigned char *)&st)[i] == 0xab,
			      "byte %zu past sz written", i);

	/* Percentiles: no data yet, and bad arguments. */
	for (int c = 0; c <= LUFFD_NR_CLASSES; c++)
		ck_assert_int_eq(luffd_latency_percentile(ctx, c, 50, &ns),
				 -ENODATA);
	ck_assert_int_eq(luffd_latency_percentile(ctx, LUFFD_MAJOR, 0, &ns),
			 -EINVAL);
	ck_assert_int_eq(luffd_latency_percentile(ctx, LUFFD_MAJOR, -1, &ns),
			 -EINVAL);
	ck_assert_int_eq(luffd_latency_percentile(ctx, LUFFD_MAJOR, 100.5,
						  &ns), -EINVAL);
	ck_assert_int_eq(luffd_latency_percentile(ctx, LUFFD_MAJOR, NAN, &ns),
			 -EINVAL);
	ck_assert_int_eq(luffd_latency_percentile(ctx, 7, 50, &ns), -EINVAL);
	ck_assert_int_eq(luffd_latency_percentile(ctx, LUFFD_MAJOR, 50, NULL),
			 -EINVAL);
	ck_assert_int_eq(luffd_latency_percentile(NULL, LUFFD_MAJOR, 50, &ns),
			 -EINVAL);
	ck_assert_int_eq(luffd_trace_flush(NULL), -EINVAL);
	ck_assert_int_eq(luffd_ctx_sync(NULL), -EINVAL);
	ck_assert_int_eq(luffd_ctx_sync(ctx), 0);
	/* Flushing a context without a trace writer is a no-op. */
	ck_assert_int_eq(luffd_trace_flush(ctx), 0);
	ck_assert_int_eq(luffd_ctx_destroy(NULL), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* The library never prints unless a print callback is installed: run error
 * paths and ordinary faults with stdout/stderr captured. */
START_TEST(silent_without_print_callback)
{
	char *out = malloc(strlen(t_dir) + 32);
	int fd, save1, save2;
	struct stat sb;

	sprintf(out, "%s/out-XXXXXX", t_dir);
	fd = mkstemp(out);
	ck_assert_int_ge(fd, 0);
	fflush(stdout);
	fflush(stderr);
	save1 = dup(1);
	save2 = dup(2);
	dup2(fd, 1);
	dup2(fd, 2);
	{
		LUFFD_OPTS(luffd_ctx_opts, o, .queue_depth = 5000);
		struct luffd_ctx *ctx = NULL;
		struct luffd_store *st = NULL;
		void *a;

		(void)luffd_ctx_create(&o, &ctx);
		o.queue_depth = 0;
		o.open_mode = LUFFD_OPEN_USER_ONLY;
		(void)luffd_ctx_create(&o, &ctx);
		(void)luffd_store_file(-1, 0, &st);
		(void)luffd_store_open("/nonexistent/x", 0, &st);
		if (!path)
			path = t_make_file(NPG * t_ps, seed);
		(void)luffd_store_open(path, 0, &st);
		(void)luffd_map(ctx, st, 0, 0, PROT_READ, 0, &a);
		(void)luffd_map(ctx, st, 1 << 30, t_ps, PROT_READ, 0, &a);
		if (luffd_map(ctx, st, 0, NPG * t_ps, PROT_READ, 0, &a) == 0) {
			for (int i = 0; i < NPG; i++)
				(void)((volatile char *)a)[i * t_ps];
			(void)luffd_unmap(ctx, a, t_ps);
			(void)luffd_unmap(ctx, a, NPG * t_ps);
		}
		luffd_store_put(st);
		(void)luffd_ctx_destroy(ctx);
	}
	fflush(stdout);
	fflush(stderr);
	dup2(save1, 1);
	dup2(save2, 2);
	close(save1);
	close(save2);
	ck_assert_int_eq(fstat(fd, &sb), 0);
	ck_assert_msg(sb.st_size == 0, "library printed %lld bytes",
		      (long long)sb.st_size);
	close(fd);
	free(out);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("region_validation");
	TCase *tc = t_tcase(s, "validation");

	tcase_add_test(tc, map_bad_args);
	tcase_add_test(tc, register_bad_args);
	tcase_add_test(tc, unmap_bad_args);
	tcase_add_test(tc, store_bad_args);
	tcase_add_test(tc, ctx_opts_bad);
	tcase_add_test(tc, handler_pinned);
	tcase_add_test(tc, getters_bad_args);
	tcase_add_test(tc, silent_without_print_callback);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
