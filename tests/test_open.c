/* SPDX-License-Identifier: MIT */
/*
 * Contexts: creation with each open mode, feature reporting, option
 * defaults, handler threads, luffd_strerror / luffd_class_name / print
 * callback, and the user-mode-only EFAULT rule.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void get_features(struct luffd_ctx *ctx, struct luffd_features *f)
{
	memset(f, 0, sizeof(*f));
	f->sz = sizeof(*f);
	ck_assert_int_eq(luffd_ctx_features(ctx, f), 0);
}

START_TEST(create_default)
{
	struct luffd_ctx *ctx = NULL;
	struct luffd_features f;
	struct luffd_stats st;

	ck_assert_int_eq(luffd_ctx_create(NULL, &ctx), 0);
	ck_assert_ptr_nonnull(ctx);
	get_features(ctx, &f);
	ck_assert_uint_eq(f.api, 0xAA);
	ck_assert_msg((f.enabled & ~f.kernel) == 0,
		      "enabled %#llx not a subset of kernel %#llx",
		      (unsigned long long)f.enabled,
		      (unsigned long long)f.kernel);
	ck_assert_int_ge(f.opened_by, LUFFD_OPEN_DEV);
	ck_assert_int_le(f.opened_by, LUFFD_OPEN_USER_ONLY);
	ck_assert_int_eq(f.user_mode_only, f.opened_by == LUFFD_OPEN_USER_ONLY);
	if (f.has_thread_id)
		ck_assert(f.enabled & UFFD_FEATURE_THREAD_ID);
	if (f.has_poison)
		ck_assert(f.kernel & UFFD_FEATURE_POISON);
	/* A fresh context has served nothing. */
	t_stats(ctx, &st);
	ck_assert_uint_eq(t_total_faults(&st), 0);
	ck_assert_uint_eq(st.reads, 0);
	ck_assert_uint_eq(st.bytes_read, 0);
	for (int c = 0; c < LUFFD_NR_CLASSES; c++)
		ck_assert_uint_eq(st.latency[c].count, 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

START_TEST(create_opts_zero_is_default)
{
	LUFFD_OPTS(luffd_ctx_opts, o);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_features f;

	get_features(ctx, &f);
	ck_assert_uint_eq(f.api, 0xAA);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
}
END_TEST

/* Each open mode either works and is reported as used, or is refused with
 * a permission / availability code.  As root, every mode must work. */
START_TEST(open_modes)
{
	static const enum luffd_open_mode modes[] = {
		LUFFD_OPEN_DEV, LUFFD_OPEN_SYSCALL, LUFFD_OPEN_USER_ONLY,
	};
	int dev_ok = 0;

	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		LUFFD_OPTS(luffd_ctx_opts, o, .open_mode = modes[i]);
		struct luffd_ctx *ctx = NULL;
		struct luffd_features f;
		int err = luffd_ctx_create(&o, &ctx);

		if (err == -LUFFD_E_UFFD_PERM || err == -LUFFD_E_NOUFFD) {
			ck_assert_msg(geteuid() != 0,
				      "mode %d refused as root: %s", modes[i],
				      luffd_strerror(err));
			printf("open mode %d unavailable: %s\n", modes[i],
			       luffd_strerror(err));
			ck_assert_ptr_null(ctx);
			continue;
		}
		ck_assert_msg(err == 0, "mode %d: %d (%s)", modes[i], err,
			      luffd_strerror(err));
		get_features(ctx, &f);
		ck_assert_int_eq(f.opened_by, modes[i]);
		ck_assert_int_eq(f.user_mode_only,
				 modes[i] == LUFFD_OPEN_USER_ONLY);
		if (modes[i] == LUFFD_OPEN_DEV)
			dev_ok = 1;
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	}
	/* AUTO tries /dev/userfaultfd first. */
	if (dev_ok) {
		LUFFD_OPTS(luffd_ctx_opts, o, .open_mode = LUFFD_OPEN_AUTO);
		struct luffd_ctx *ctx = t_ctx(&o);
		struct luffd_features f;

		get_features(ctx, &f);
		ck_assert_int_eq(f.opened_by, LUFFD_OPEN_DEV);
		luffd_ctx_destroy(ctx);
	}
}
END_TEST

START_TEST(disable_features)
{
	LUFFD_OPTS(luffd_ctx_opts, o,
		   .disable_features = UFFD_FEATURE_THREAD_ID |
				       UFFD_FEATURE_POISON);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct luffd_features f;

	get_features(ctx, &f);
	ck_assert_uint_eq(f.enabled & (UFFD_FEATURE_THREAD_ID |
				       UFFD_FEATURE_POISON), 0);
	ck_assert_int_eq(f.has_thread_id, 0);
	ck_assert_int_eq(f.has_poison, 0);
	/* The kernel still offers them. */
	ck_assert_uint_eq(f.kernel, t_feat.kernel);
	luffd_ctx_destroy(ctx);
}
END_TEST

/* Several handler threads serve regions spread over them. */
START_TEST(handler_threads)
{
	const unsigned nthr[] = { 1, 2, 4 };
	uint64_t seed = 0x1234;
	size_t npg = 64;
	char *path = t_make_file(npg * t_ps, seed);

	for (size_t k = 0; k < 3; k++) {
		int before = t_count_threads();
		LUFFD_OPTS(luffd_ctx_opts, o, .handler_threads = nthr[k]);
		struct luffd_ctx *ctx = t_ctx(&o);
		struct luffd_store *st;
		void *addr[8];
		struct luffd_stats s;

		ck_assert_int_ge(t_count_threads(), before + (int)nthr[k]);
		ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
		for (int r = 0; r < 8; r++)
			ck_assert_int_eq(luffd_map(ctx, st, 0, npg * t_ps,
						   PROT_READ, 0, &addr[r]), 0);
		for (int r = 0; r < 8; r++)
			for (size_t i = 0; i < npg; i++)
				t_assert_page(addr[r], i, 0, npg * t_ps, seed);
		t_stats(ctx, &s);
		ck_assert_uint_eq(s.faults[LUFFD_ERROR], 0);
		ck_assert_uint_ge(t_total_faults(&s), 8);
		luffd_store_put(st);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
		ck_assert_int_eq(t_threads_settle(before), before);
	}
	free(path);
}
END_TEST

START_TEST(strerror_all)
{
	static const int codes[] = {
		EINVAL, ENOENT, EEXIST, EBUSY, ENXIO, EBADF, EACCES, ENOMEM,
		EDEADLK, ENODATA, EIO, EFAULT, EPERM, 0,
		LUFFD_E_NOUFFD, LUFFD_E_UFFD_PERM, LUFFD_E_UFFD_API,
		LUFFD_E_NOURING, 99999, LUFFD_E_BASE, LUFFD_E_MAX,
	};

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		const char *a = luffd_strerror(codes[i]);
		const char *b = luffd_strerror(-codes[i]);

		ck_assert_ptr_nonnull(a);
		ck_assert_ptr_nonnull(b);
		ck_assert_msg(*a && *b, "empty string for %d", codes[i]);
		/* Sign does not matter. */
		ck_assert_str_eq(a, b);
	}
	ck_assert_ptr_nonnull(luffd_strerror(INT32_MIN));
	ck_assert_ptr_nonnull(luffd_strerror(INT32_MAX));
	/* The library codes have their own messages, distinct from each
	 * other and from an unknown code. */
	ck_assert_str_ne(luffd_strerror(LUFFD_E_NOUFFD),
			 luffd_strerror(LUFFD_E_UFFD_PERM));
	ck_assert_str_ne(luffd_strerror(LUFFD_E_NOURING),
			 luffd_strerror(LUFFD_E_UFFD_API));
	ck_assert_str_ne(luffd_strerror(EINVAL), luffd_strerror(ENOENT));
}
END_TEST

START_TEST(class_names)
{
	ck_assert_str_eq(luffd_class_name(LUFFD_MINOR), "minor");
	ck_assert_str_eq(luffd_class_name(LUFFD_MAJOR), "major");
	ck_assert_str_eq(luffd_class_name(LUFFD_ZERO), "zero");
	ck_assert_str_eq(luffd_class_name(LUFFD_ERROR), "error");
	ck_assert_str_eq(luffd_class_name(LUFFD_NR_CLASSES), "?");
	ck_assert_str_eq(luffd_class_name((enum luffd_class)99), "?");
	ck_assert_str_eq(luffd_class_name((enum luffd_class)-1), "?");
}
END_TEST

static int print_calls;
static int test_print(enum luffd_print_level level, const char *fmt,
		      va_list ap)
{
	(void)level;
	(void)fmt;
	(void)ap;
	print_calls++;
	return 0;
}

START_TEST(print_callback)
{
	ck_assert_ptr_null(luffd_set_print(test_print));
	ck_assert_ptr_eq(luffd_set_print(NULL), test_print);
	ck_assert_ptr_null(luffd_set_print(NULL));
}
END_TEST

/*
 * A kernel-mode access (read(2) into a missing page) is served as a fault
 * normally, but fails with EFAULT when the userfaultfd is user-mode-only.
 */
START_TEST(user_mode_only_efault)
{
	uint64_t seed = 77;
	char *path = t_make_file(16 * t_ps, seed);
	int fd = open(path, O_RDONLY);

	ck_assert_int_ge(fd, 0);
	for (int um = 0; um < 2; um++) {
		LUFFD_OPTS(luffd_ctx_opts, o,
			   .open_mode = um ? LUFFD_OPEN_USER_ONLY
					   : LUFFD_OPEN_DEV);
		struct luffd_ctx *ctx = NULL;
		struct luffd_store *st;
		void *a;
		ssize_t n;
		int err = luffd_ctx_create(&o, &ctx);

		if (err) {
			printf("skipped mode %d: %s\n", o.open_mode,
			       luffd_strerror(err));
			continue;
		}
		ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
		ck_assert_int_eq(luffd_map(ctx, st, 0, 16 * t_ps,
					   PROT_READ | PROT_WRITE, 0, &a), 0);
		/* read(2) writes into page 3 from kernel mode. */
		n = pread(fd, (char *)a + 3 * t_ps, t_ps, 5 * t_ps);
		if (um) {
			ck_assert_int_eq(n, -1);
			ck_assert_int_eq(errno, EFAULT);
		} else {
			ck_assert_int_eq(n, (ssize_t)t_ps);
			ck_assert_int_lt(t_page_diff((char *)a + 3 * t_ps,
						     5 * t_ps, 16 * t_ps, seed),
					 0);
		}
		/* User-mode touches work in both. */
		t_assert_page(a, 7, 0, 16 * t_ps, seed);
		ck_assert_int_eq(luffd_unmap(ctx, a, 16 * t_ps), 0);
		luffd_store_put(st);
		ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	}
	close(fd);
	free(path);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("open");
	TCase *tc = t_tcase(s, "open");

	tcase_add_test(tc, create_default);
	tcase_add_test(tc, create_opts_zero_is_default);
	tcase_add_test(tc, open_modes);
	tcase_add_test(tc, disable_features);
	tcase_add_test(tc, handler_threads);
	tcase_add_test(tc, strerror_all);
	tcase_add_test(tc, class_names);
	tcase_add_test(tc, print_callback);
	tcase_add_test(tc, user_mode_only_efault);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
