/* SPDX-License-Identifier: MIT */
/*
 * Unprivileged use (vm.unprivileged_userfaultfd=0, uid 65534 without
 * capabilities): LUFFD_OPEN_AUTO falls back to UFFD_USER_MODE_ONLY and
 * serves pages; kernel-mode accesses to missing pages fail with EFAULT;
 * LUFFD_OPEN_SYSCALL and LUFFD_OPEN_DEV fail with -LUFFD_E_UFFD_PERM.
 * Each scenario runs in a forked child that drops its privileges.
 */
#include "hard_util.h"

#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOBODY 65534

#define CHILD_CHECK(cond, code)                                              \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "child: %s:%d: %s (errno %d)\n",     \
				__FILE__, __LINE__, #cond, errno);           \
			_exit(code);                                         \
		}                                                            \
	} while (0)

static const char *g_path;

static void drop_privileges(void)
{
	CHILD_CHECK(setgroups(0, NULL) == 0, 90);
	CHILD_CHECK(setgid(NOBODY) == 0, 91);
	CHILD_CHECK(setuid(NOBODY) == 0, 92);
	CHILD_CHECK(geteuid() == NOBODY && getegid() == NOBODY, 93);
}

static void as_nobody(void (*fn)(void))
{
	int status = 0;
	pid_t pid = fork();
	double t0 = h_now();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		alarm(30);
		drop_privileges();
		fn();
		_exit(0);
	}
	while (waitpid(pid, &status, WNOHANG) == 0) {
		if (h_now() - t0 > 25) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			ck_abort_msg("the unprivileged child hung");
		}
		usleep(5000);
	}
	ck_assert_msg(WIFEXITED(status), "the child died of signal %d",
		      WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	ck_assert_msg(WEXITSTATUS(status) == 0, "the child failed: code %d",
		      WEXITSTATUS(status));
}

static void auto_mode(void)
{
	const size_t n = 32, len = n * h_ps;
	const uint64_t seed = 0xb0;
	LUFFD_OPTS(luffd_features, f);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_ctx *ctx = NULL;
	struct luffd_store *s = NULL;
	char *addr = NULL, *mem, *buf = malloc(h_ps);
	char msg[100];
	int p[2], err;

	err = luffd_ctx_create(NULL, &ctx);
	if (err)
		fprintf(stderr, "child: create: %s\n", luffd_strerror(err));
	CHILD_CHECK(err == 0, 2);
	CHILD_CHECK(luffd_ctx_features(ctx, &f) == 0, 3);
	CHILD_CHECK(f.user_mode_only == 1, 4);
	CHILD_CHECK(f.opened_by == LUFFD_OPEN_USER_ONLY, 5);
	CHILD_CHECK(luffd_store_open(g_path, 0, &s) == 0, 6);

	/* Served from user space. */
	CHILD_CHECK(luffd_map(ctx, s, 0, len, PROT_READ, 0,
			      (void **)&addr) == 0, 7);
	for (size_t i = 0; i < n; i++) {
		CHILD_CHECK(h_read(addr + i * h_ps, h_ps, buf, NULL) == 0, 8);
		CHILD_CHECK(h_page_diff(buf, i * h_ps, len, seed) < 0, 9);
	}

	/* Kernel-mode accesses to a missing page: EFAULT, not a fault
	 * delivered to the handler. */
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHILD_CHECK(mem != MAP_FAILED, 10);
	CHILD_CHECK(luffd_register(ctx, mem, len, s, 0, 0) == 0, 11);
	CHILD_CHECK(pipe(p) == 0, 12);
	memset(msg, 'x', sizeof(msg));
	CHILD_CHECK(write(p[1], msg, sizeof(msg)) == sizeof(msg), 13);
	errno = 0;
	CHILD_CHECK(read(p[0], mem + 3 * h_ps, sizeof(msg)) == -1, 14);
	CHILD_CHECK(errno == EFAULT, 15);
	errno = 0;
	CHILD_CHECK(write(p[1], mem + 5 * h_ps, 16) == -1, 16);
	CHILD_CHECK(errno == EFAULT, 17);
	/* Touched from user space first, the same calls work. */
	CHILD_CHECK(h_read(mem + 3 * h_ps, h_ps, buf, NULL) == 0, 18);
	CHILD_CHECK(h_page_diff(buf, 3 * h_ps, len, seed) < 0, 19);
	CHILD_CHECK(read(p[0], mem + 3 * h_ps, sizeof(msg)) == sizeof(msg),
		    20);
	CHILD_CHECK(memcmp(mem + 3 * h_ps, msg, sizeof(msg)) == 0, 21);
	h_fill(buf, 3 * h_ps, h_ps, seed);
	memcpy(buf, msg, sizeof(msg));
	CHILD_CHECK(memcmp(mem + 3 * h_ps, buf, h_ps) == 0, 22);
	CHILD_CHECK(luffd_ctx_sync(ctx) == 0, 23);
	CHILD_CHECK(luffd_stats_get(ctx, &st) == 0, 24);
	CHILD_CHECK(st.faults[LUFFD_ERROR] == 0, 25);
	CHILD_CHECK(h_faults(&st) + st.installed_ahead >= n + 1, 26);
	luffd_store_put(s);
	CHILD_CHECK(luffd_unregister(ctx, mem, len) == 0, 27);
	CHILD_CHECK(luffd_unmap(ctx, addr, len) == 0, 28);
	CHILD_CHECK(luffd_ctx_destroy(ctx) == 0, 29);
}

START_TEST(unpriv_auto)
{
	as_nobody(auto_mode);
}
END_TEST

/* What the library printed, through the print callback. */
static int info_lines;
static char last_line[256];

static int record_print(enum luffd_print_level level, const char *fmt,
			va_list ap)
{
	if (level == LUFFD_INFO)
		info_lines++;
	return vsnprintf(last_line, sizeof(last_line), fmt, ap);
}

static void forced_mode(enum luffd_open_mode m)
{
	LUFFD_OPTS(luffd_ctx_opts, o, .open_mode = m);
	struct luffd_ctx *ctx = NULL;
	int err;

	/* The refusal is explained through the print callback. */
	luffd_set_print(record_print);
	err = luffd_ctx_create(&o, &ctx);
	luffd_set_print(NULL);
	CHILD_CHECK(info_lines >= 1, 7);
	CHILD_CHECK(strstr(last_line, m == LUFFD_OPEN_DEV ? "/dev/userfaultfd" :
							 "userfaultfd(2)"), 8);

	CHILD_CHECK(err == -LUFFD_E_UFFD_PERM, 2);
	CHILD_CHECK(ctx == NULL, 3);
	CHILD_CHECK(strstr(luffd_strerror(err), "vm.unprivileged_userfaultfd"),
		    4);
	CHILD_CHECK(strstr(luffd_strerror(err), "/dev/userfaultfd"), 5);
}

static void syscall_mode(void)
{
	forced_mode(LUFFD_OPEN_SYSCALL);
}

static void dev_mode(void)
{
	/* The device node is root's, mode 0600: EACCES. */
	CHILD_CHECK(access("/dev/userfaultfd", R_OK | W_OK) != 0, 6);
	forced_mode(LUFFD_OPEN_DEV);
}

static void user_only_mode(void)
{
	LUFFD_OPTS(luffd_ctx_opts, o, .open_mode = LUFFD_OPEN_USER_ONLY);
	LUFFD_OPTS(luffd_features, f);
	struct luffd_ctx *ctx = NULL;

	CHILD_CHECK(luffd_ctx_create(&o, &ctx) == 0, 2);
	CHILD_CHECK(luffd_ctx_features(ctx, &f) == 0, 3);
	CHILD_CHECK(f.user_mode_only == 1, 4);
	CHILD_CHECK(luffd_ctx_destroy(ctx) == 0, 5);
}

START_TEST(unpriv_forced_modes)
{
	as_nobody(syscall_mode);
	if (access("/dev/userfaultfd", F_OK) == 0)
		as_nobody(dev_mode);
	as_nobody(user_only_mode);
}
END_TEST

static int read_int(const char *path)
{
	FILE *f = fopen(path, "re");
	int v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%d", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

int main(void)
{
	Suite *s = suite_create("hard_unpriv");
	TCase *tc = h_tcase(s, "unpriv", H_TIMEOUT);
	int v = read_int("/proc/sys/vm/unprivileged_userfaultfd");
	int ret;

	if (geteuid() != 0) {
		printf("skipped: needs root to drop to uid %d\n", NOBODY);
		return H_SKIP;
	}
	if (v != 0) {
		printf("skipped: vm.unprivileged_userfaultfd is %d, not 0\n", v);
		return H_SKIP;
	}
	if (read_int("/proc/sys/kernel/io_uring_disabled") > 0) {
		printf("skipped: io_uring is disabled for unprivileged users\n");
		return H_SKIP;
	}
	h_ps = (size_t)sysconf(_SC_PAGESIZE);
	{
		static char path[] = "/tmp/luffd-unpriv-XXXXXX";
		char *buf = malloc(32 * h_ps);
		int fd = mkstemp(path);

		if (fd < 0 || !buf || fchmod(fd, 0644) ||
		    write(fd, buf, 0) != 0) {
			printf("skipped: cannot create a file in /tmp\n");
			return H_SKIP;
		}
		h_fill(buf, 0, 32 * h_ps, 0xb0);
		if (write(fd, buf, 32 * h_ps) != (ssize_t)(32 * h_ps))
			return 1;
		close(fd);
		free(buf);
		g_path = path;
	}
	tcase_add_test(tc, unpriv_auto);
	tcase_add_test(tc, unpriv_forced_modes);
	ret = h_main(s);
	unlink(g_path);
	return ret;
}
