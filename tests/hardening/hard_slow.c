/* SPDX-License-Identifier: MIT */
/*
 * A slow store: a FUSE file system (libfuse3, high-level API) with one
 * file whose reads sleep 3 s in a chosen range, mounted in a helper
 * process.  With read_timeout_ms = 500, a fault on a slow page gets SIGBUS
 * within about half a second, read_timeouts counts it, faults on the
 * read's other pages fail at once, and fast pages of the same file are
 * served meanwhile and later.
 *
 * The server runs multi-threaded (fuse_main with -f, without -s): a
 * single-threaded server would queue the fast reads behind the sleeping
 * one.  Skips (77) when /dev/fuse or mounting is unavailable.
 */
#define FUSE_USE_VERSION 31
#include "hard_util.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NPAGES 256
#define SLOW_LO 64 /* pages [SLOW_LO, SLOW_HI) are slow */
#define SLOW_HI 96
#define SLOW_SECS 3
#define SEED 0x5105

static char g_mnt[64];
static char g_file[96];
static size_t g_size;

/* ---- the file system (helper process) ------------------------------ */

static int fs_getattr(const char *path, struct stat *st,
		      struct fuse_file_info *fi)
{
	(void)fi;
	memset(st, 0, sizeof(*st));
	if (strcmp(path, "/") == 0) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		return 0;
	}
	if (strcmp(path, "/data") == 0) {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)g_size;
		return 0;
	}
	return -ENOENT;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill,
		      off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	(void)off;
	(void)fi;
	(void)flags;
	if (strcmp(path, "/") != 0)
		return -ENOENT;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	fill(buf, "data", NULL, 0, 0);
	return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi)
{
	if (strcmp(path, "/data") != 0)
		return -ENOENT;
	/* Every read reaches the server, at the offset asked for: no page
	 * cache, no kernel read-ahead pulling in slow pages. */
	fi->direct_io = 1;
	return 0;
}

static int fs_read(const char *path, char *buf, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	uint64_t o = (uint64_t)off, end;

	(void)path;
	(void)fi;
	if (o >= g_size)
		return 0;
	end = o + size < g_size ? o + size : g_size;
	if (o < SLOW_HI * h_ps && end > SLOW_LO * h_ps)
		sleep(SLOW_SECS);
	for (uint64_t x = o; x < end; x++) {
		uint64_t w = h_word(x & ~7ull, SEED);

		buf[x - o] = (char)((unsigned char *)&w)[x & 7];
	}
	return (int)(end - o);
}

static const struct fuse_operations fs_ops = {
	.getattr = fs_getattr,
	.readdir = fs_readdir,
	.open = fs_open,
	.read = fs_read,
};

static pid_t start_fs(void)
{
	pid_t pid = fork();

	if (pid == 0) {
		char *argv[] = { "hard_slow_fs", "-f", g_mnt, "-o",
				 "fsname=luffdslow", NULL };
		int devnull = open("/dev/null", O_RDWR);

		dup2(devnull, 0);
		_exit(fuse_main(5, argv, &fs_ops, NULL) ? 3 : 0);
	}
	return pid;
}

static void stop_fs(pid_t pid)
{
	int status;
	double t0 = h_now();

	if (umount2(g_mnt, 0) != 0 && umount2(g_mnt, MNT_DETACH) != 0) {
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "fusermount3 -u -z %s", g_mnt);
		if (system(cmd) != 0)
			fprintf(stderr, "cannot unmount %s\n", g_mnt);
	}
	while (waitpid(pid, &status, WNOHANG) == 0) {
		if (h_now() - t0 > 5) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			break;
		}
		usleep(10000);
	}
	rmdir(g_mnt);
}

/* ---- the test ------------------------------------------------------ */

static struct {
	_Atomic uintptr_t addr; /* atomic: see hard_misuse.c's g_ctx */
	_Atomic int err;
} g_tr;

static void trace(void *arg, const struct luffd_fault *f)
{
	(void)arg;
	if (f->addr == g_tr.addr && f->cls == LUFFD_ERROR)
		atomic_store(&g_tr.err, f->error);
}

struct slow_touch {
	pthread_t t;
	char *p;
	int sig;
	struct h_sig si;
	double secs;
};

static void *slow_main(void *arg)
{
	struct slow_touch *s = arg;
	double t0 = h_now();

	s->sig = h_read(s->p, 8, NULL, &s->si);
	s->secs = h_now() - t0;
	return NULL;
}

static void read_fast(char *addr, size_t first, size_t count, char *buf,
		      double limit)
{
	for (size_t i = first; i < first + count; i++) {
		double t0 = h_now();
		int r = h_read(addr + i * h_ps, h_ps, buf, NULL);
		double dt = h_now() - t0;

		ck_assert_msg(r == 0, "fast page %zu: signal %d", i, r);
		ck_assert_msg(dt < limit, "fast page %zu took %.3f s", i, dt);
		h_assert_page(buf, i * h_ps, g_size, SEED);
	}
}

START_TEST(slow_read_times_out)
{
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 500,
		   .readahead_bytes = 4 * h_ps,
		   .readahead_mode = LUFFD_RA_FIXED, .trace_fn = trace);
	struct luffd_ctx *ctx = h_ctx(&o);
	struct luffd_store *s = NULL;
	struct luffd_stats st;
	struct slow_touch sl;
	char *addr = NULL, *buf = malloc(h_ps);
	struct h_sig si;
	double t_slow, t0;
	int err = luffd_store_open(g_file, 0, &s);

	ck_assert_msg(err == 0, "%s: %s", g_file, luffd_strerror(err));
	ck_assert_uint_eq(luffd_store_size(s), g_size);
	ck_assert_int_eq(luffd_map(ctx, s, 0, g_size, PROT_READ, 0,
				   (void **)&addr), 0);
	luffd_store_put(s);

	read_fast(addr, 0, 8, buf, 1.0); /* the file system answers */

	sl = (struct slow_touch){ .p = addr + 70 * h_ps };
	g_tr.addr = (uintptr_t)sl.p;
	t_slow = h_now();
	ck_assert_int_eq(h_thread(&sl.t, slow_main, &sl), 0);
	usleep(50000);
	/* Fast pages of the same file while the slow read sleeps. */
	read_fast(addr, 8, 40, buf, 0.4);
	ck_assert_msg(h_join(sl.t, 10, NULL) == 0, "slow fault never ended");
	ck_assert_msg(sl.sig == SIGBUS, "slow page: signal %d", sl.sig);
	if (h_feat.has_poison)
		ck_assert_int_eq(sl.si.code, BUS_ADRERR);
	ck_assert_msg(sl.secs >= 0.4 && sl.secs < 2.0,
		      "SIGBUS after %.3f s (timeout 0.5 s, read %d s)",
		      sl.secs, SLOW_SECS);
	/* The trace record follows the SIGBUS: wait for it. */
	ck_assert_int_eq(luffd_ctx_sync(ctx), 0);
	ck_assert_int_eq(atomic_load(&g_tr.err), -ETIMEDOUT);

	/* Another page of the expired read, still in flight: at once. */
	t0 = h_now();
	ck_assert_int_eq(h_read(addr + 71 * h_ps, 8, NULL, &si), SIGBUS);
	ck_assert_double_lt(h_now() - t0, 0.3);

	read_fast(addr, 128, NPAGES - 128, buf, 0.4);
	h_stats(ctx, &st);
	ck_assert_uint_ge(st.read_timeouts, 1);
	ck_assert_uint_ge(st.faults[LUFFD_ERROR], 2);

	/* Let the stuck read finish before tearing down. */
	while (h_now() - t_slow < SLOW_SECS + 0.5)
		usleep(50000);
	read_fast(addr, 48, 16, buf, 0.4);
	ck_assert_int_eq(luffd_unmap(ctx, addr, g_size), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	free(buf);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("hard_slow");
	TCase *tc = h_tcase(s, "slow", H_TIMEOUT);
	struct stat st;
	pid_t fs;
	double t0;
	int fd, ret, status;

	h_ps = (size_t)sysconf(_SC_PAGESIZE);
	g_size = NPAGES * h_ps;
	fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		printf("skipped: /dev/fuse: %s\n", strerror(errno));
		return H_SKIP;
	}
	close(fd);
	strcpy(g_mnt, "/tmp/luffd-fuse-XXXXXX");
	if (!mkdtemp(g_mnt)) {
		printf("skipped: mkdtemp: %s\n", strerror(errno));
		return H_SKIP;
	}
	snprintf(g_file, sizeof(g_file), "%s/data", g_mnt);
	fs = start_fs();
	for (t0 = h_now(); h_now() - t0 < 5; usleep(10000)) {
		if (stat(g_file, &st) == 0 && (size_t)st.st_size == g_size)
			break;
		if (waitpid(fs, &status, WNOHANG) == fs) {
			printf("skipped: the FUSE file system did not mount\n");
			rmdir(g_mnt);
			return H_SKIP;
		}
	}
	if (stat(g_file, &st) != 0) {
		printf("skipped: the FUSE file system did not come up\n");
		stop_fs(fs);
		return H_SKIP;
	}
	tcase_add_test(tc, slow_read_times_out);
	ret = h_main(s);
	stop_fs(fs);
	return ret;
}
