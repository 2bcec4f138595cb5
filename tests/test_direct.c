/* SPDX-License-Identifier: MIT */
/*
 * O_DIRECT file stores (LUFFD_FILE_DIRECT).  Skipped (77) when the file
 * system of the test directory refuses O_DIRECT.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The new descriptors a store opened have O_DIRECT set. */
static int count_direct_fds(void)
{
	int n = 0;

	for (int fd = 0; fd < 1024; fd++) {
		char p[64], line[128];
		FILE *f;

		snprintf(p, sizeof(p), "/proc/self/fdinfo/%d", fd);
		f = fopen(p, "r");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f)) {
			unsigned long flags;

			if (sscanf(line, "flags: %lo", &flags) == 1 &&
			    (flags & O_DIRECT))
				n++;
		}
		fclose(f);
	}
	return n;
}

static void direct_case(uint64_t size, uint64_t off, size_t ra, int by_fd)
{
	uint64_t seed = 0xd1 + size;
	char *path = t_make_file(size, seed);
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = ra);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_store *st;
	struct luffd_stats s;
	int direct0 = count_direct_fds();
	size_t npg = (size_t)((size - off + t_ps - 1) / t_ps);
	size_t *perm = malloc(npg * sizeof(*perm));
	uint64_t rng = size;
	char *a;

	if (by_fd) {
		/* 2: the caller's fd has O_DIRECT already, no flag: read
		 * the same way, through one descriptor. */
		int fd = open(path, O_RDONLY | (by_fd == 2 ? O_DIRECT : 0));

		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(luffd_store_file(fd, by_fd == 2 ? 0 :
						  LUFFD_FILE_DIRECT, &st), 0);
		close(fd);
	} else {
		ck_assert_int_eq(luffd_store_open(path, LUFFD_FILE_DIRECT,
						  &st), 0);
	}
	ck_assert_int_eq(count_direct_fds(), direct0 + 1);
	ck_assert_uint_eq(luffd_store_size(st), size);
	ck_assert_int_eq(luffd_map(ctx, st, off, npg * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	t_perm(perm, npg, &rng);
	for (size_t i = 0; i < npg; i++)
		t_assert_page(a, perm[i], off, size, seed);
	t_stats(ctx, &s);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 0);
	ck_assert_uint_ge(s.faults[LUFFD_MAJOR], 1);
	ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);
	/* Sequential, second mapping. */
	ck_assert_int_eq(luffd_map(ctx, st, off, npg * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	for (size_t i = 0; i < npg; i++)
		t_assert_page(a, i, off, size, seed);
	ck_assert_int_eq(luffd_unmap(ctx, a, npg * t_ps), 0);
	luffd_store_put(st);
	ck_assert_int_eq(count_direct_fds(), direct0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(perm);
	free(path);
}

START_TEST(direct_basic)
{
	size_t size = t_size(16u << 20, 2u << 20);

	direct_case(size, 0, 0, 0);
	direct_case(size, 0, LUFFD_NO_READAHEAD, 1);
	direct_case(size, 0, 0, 2);
}
END_TEST

START_TEST(direct_offset_and_tail)
{
	direct_case(300 * t_ps + 1234, 7 * t_ps, 0, 0);
	direct_case(5 * t_ps + 1, 0, 64 * 1024, 1);
	direct_case(100, 0, 0, 0);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("direct");
	TCase *tc = t_tcase(s, "direct");

	tcase_add_test(tc, direct_basic);
	tcase_add_test(tc, direct_offset_and_tail);
	return s;
}

int main(void)
{
	const char *base = getenv("LUFFD_TEST_TMPDIR");
	char dir[256], path[300];
	int fd;

	/* Probe O_DIRECT where the test files will live. */
	snprintf(dir, sizeof(dir), "%s/luffd-direct-XXXXXX",
		 base && *base ? base : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(path, sizeof(path), "%s/probe", dir);
	fd = open(path, O_RDWR | O_CREAT | O_DIRECT, 0600);
	if (fd < 0) {
		int e = errno;

		rmdir(dir);
		if (e == EINVAL) {
			printf("skipped: O_DIRECT not supported under %s\n",
			       base && *base ? base : "/tmp");
			return T_SKIP;
		}
		printf("open(O_DIRECT): %s\n", strerror(e));
		return 1;
	}
	close(fd);
	unlink(path);
	rmdir(dir);
	return t_main(make, 0);
}
