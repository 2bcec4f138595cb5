/* SPDX-License-Identifier: MIT */
/*
 * nbdkit-delayus-filter.so under nbdkit (the file plugin), through libnbd:
 * every read waits at least the delay asked for, in microseconds (and not
 * a thousand times that), writes and zeroes likewise when asked, requests
 * in flight sleep side by side (the plugin's parallel thread model kept),
 * the data is the file's byte for byte, nbdkit stops at once while a
 * request sleeps, and bad values are refused.
 * Usage: test_delayus PATH/TO/nbdkit-delayus-filter.so.  Exit 77 without
 * nbdkit.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FILE_SIZE (1048576 + 1234) /* odd: the last request is short */
#define CHUNK 65536

static const char *filter;
static char dir[] = "/tmp/delayus-test.XXXXXX";

struct server {
	pid_t pid;
	char sock[128], pidf[128];
	struct nbd_handle *h;
};

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static uint8_t byte_at(uint64_t off)
{
	uint64_t x = (off >> 3) * 0x9e3779b97f4a7c15ull;

	x ^= x >> 29;
	return (uint8_t)(x >> (8 * (off & 7)));
}

/* A fresh file of FILE_SIZE bytes of byte_at(); its path, to free. */
static char *make_file(const char *name)
{
	static uint8_t buf[FILE_SIZE];
	char *path;
	int fd;

	ck_assert_int_gt(asprintf(&path, "%s/%s", dir, name), 0);
	for (uint64_t i = 0; i < FILE_SIZE; i++)
		buf[i] = byte_at(i);
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, buf, FILE_SIZE), FILE_SIZE);
	close(fd);
	return path;
}

/* nbdkit [-r] --filter=FILTER file PATH ARGS... on a Unix socket.  Returns
 * 0 once it listens (sv->pid set), or nbdkit's exit status if it exited
 * first. */
static int spawn(struct server *sv, bool readonly, const char *path,
		 const char *const *args)
{
	static int n;
	char farg[4200];
	const char *argv[32] = { "nbdkit", "-f", "--exit-with-parent" };
	int k = 3;

	snprintf(sv->sock, sizeof(sv->sock), "%s/s%d-%d.sock", dir,
		 (int)getpid(), n);
	snprintf(sv->pidf, sizeof(sv->pidf), "%s/s%d-%d.pid", dir,
		 (int)getpid(), n++);
	snprintf(farg, sizeof(farg), "--filter=%s", filter);
	if (readonly)
		argv[k++] = "-r";
	argv[k++] = "-U";
	argv[k++] = sv->sock;
	argv[k++] = "-P"; /* written once it accepts connections */
	argv[k++] = sv->pidf;
	argv[k++] = farg;
	argv[k++] = "file";
	argv[k++] = path;
	for (int i = 0; args[i] && k < 31; i++)
		argv[k++] = args[i];
	argv[k] = NULL;
	sv->h = NULL;
	sv->pid = fork();
	ck_assert_int_ge(sv->pid, 0);
	if (!sv->pid) {
		int null = open("/dev/null", O_WRONLY);

		if (null >= 0) {
			dup2(null, 1);
			dup2(null, 2); /* refusals are expected in bad_values */
		}
		execvp("nbdkit", (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 1000; i++) {
		struct stat st;
		int status;

		if (!stat(sv->pidf, &st) && st.st_size > 0)
			return 0;
		if (waitpid(sv->pid, &status, WNOHANG) == sv->pid) {
			sv->pid = 0;
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
		}
		usleep(5000);
	}
	ck_abort_msg("nbdkit did not start listening in 5 s");
	return -1;
}

static void start(struct server *sv, bool readonly, const char *path,
		  const char *const *args)
{
	ck_assert_int_eq(spawn(sv, readonly, path, args), 0);
	sv->h = nbd_create();
	ck_assert_ptr_nonnull(sv->h);
	ck_assert_msg(nbd_connect_unix(sv->h, sv->sock) == 0, "%s",
		      nbd_get_error());
}

static void stop(struct server *sv)
{
	if (sv->h)
		nbd_close(sv->h);
	if (sv->pid > 0) {
		kill(sv->pid, SIGTERM);
		waitpid(sv->pid, NULL, 0);
	}
	sv->pid = 0;
	unlink(sv->sock);
	unlink(sv->pidf);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void check_bytes(const uint8_t *buf, size_t len, uint64_t off)
{
	for (size_t i = 0; i < len; i++)
		ck_assert_msg(buf[i] == byte_at(off + i),
			      "byte %llu: 0x%02x, want 0x%02x",
			      (unsigned long long)(off + i), buf[i],
			      byte_at(off + i));
}

/* 20 sequential reads at 2000 us: none quicker than 2 ms, and the median
 * well under 2 s (a filter that took the number for milliseconds). */
START_TEST(read_delay)
{
	const char *args[] = { "delay-read-us=2000", NULL };
	char *path = make_file("r.img");
	static uint8_t buf[4096];
	uint64_t t[20], total = 0;
	struct server sv;

	start(&sv, true, path, args);
	for (int i = 0; i < 20; i++) {
		uint64_t off = (uint64_t)i * 49157, t0 = now_us();

		ck_assert_int_eq(nbd_pread(sv.h, buf, sizeof(buf), off, 0), 0);
		t[i] = now_us() - t0;
		total += t[i];
		check_bytes(buf, sizeof(buf), off);
	}
	qsort(t, 20, sizeof(t[0]), cmp_u64);
	printf("read_delay: 20 reads at 2000 us: min %llu us, median %llu us, "
	       "total %llu us\n", (unsigned long long)t[0],
	       (unsigned long long)t[10], (unsigned long long)total);
	ck_assert_msg(t[0] >= 2000, "a read took %llu us, want >= 2000",
		      (unsigned long long)t[0]);
	ck_assert_uint_ge(total, 40000);
	ck_assert_msg(t[10] < 200000, "median read %llu us",
		      (unsigned long long)t[10]);
	stop(&sv);
	free(path);
}
END_TEST

/* Through the filter the export is the file: its size, every byte. */
START_TEST(data_identical)
{
	const char *args[] = { "delay-read-us=300", NULL };
	char *path = make_file("d.img");
	static uint8_t buf[CHUNK];
	struct server sv;

	start(&sv, true, path, args);
	ck_assert_int_eq(nbd_get_size(sv.h), FILE_SIZE);
	for (uint64_t off = 0; off < FILE_SIZE; off += CHUNK) {
		size_t len = FILE_SIZE - off < CHUNK ? FILE_SIZE - off : CHUNK;

		ck_assert_int_eq(nbd_pread(sv.h, buf, len, off, 0), 0);
		check_bytes(buf, len, off);
	}
	stop(&sv);
	free(path);
}
END_TEST

/* delay-write-us and delay-zero-us on a writable export; reads, not
 * asked to wait, do not (a median well under 2 ms). */
START_TEST(write_zero_delay)
{
	const char *args[] = { "delay-write-us=2000", "delay-zero-us=2000",
			       NULL };
	char *path = make_file("w.img");
	static uint8_t buf[4096];
	uint64_t t[20];
	struct server sv;
	int fd;

	start(&sv, false, path, args);
	memset(buf, 0xa5, sizeof(buf));
	for (int i = 0; i < 5; i++) {
		uint64_t t0 = now_us();

		ck_assert_int_eq(nbd_pwrite(sv.h, buf, sizeof(buf),
					    (uint64_t)i * 8192, 0), 0);
		t[0] = now_us() - t0;
		ck_assert_msg(t[0] >= 2000, "a write took %llu us",
			      (unsigned long long)t[0]);
		t0 = now_us();
		ck_assert_int_eq(nbd_zero(sv.h, 4096,
					  (uint64_t)i * 8192 + 4096, 0), 0);
		t[0] = now_us() - t0;
		ck_assert_msg(t[0] >= 2000, "a zero took %llu us",
			      (unsigned long long)t[0]);
	}
	for (int i = 0; i < 20; i++) {
		uint64_t t0 = now_us();

		ck_assert_int_eq(nbd_pread(sv.h, buf, sizeof(buf), 65536, 0),
				 0);
		t[i] = now_us() - t0;
	}
	qsort(t, 20, sizeof(t[0]), cmp_u64);
	ck_assert_msg(t[10] < 2000, "undelayed reads: median %llu us",
		      (unsigned long long)t[10]);
	stop(&sv);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	for (int i = 0; i < 5; i++) {
		ck_assert_int_eq(pread(fd, buf, sizeof(buf), i * 8192),
				 sizeof(buf));
		for (size_t j = 0; j < sizeof(buf); j++)
			ck_assert_uint_eq(buf[j], 0xa5);
		ck_assert_int_eq(pread(fd, buf, sizeof(buf), i * 8192 + 4096),
				 sizeof(buf));
		for (size_t j = 0; j < sizeof(buf); j++)
			ck_assert_uint_eq(buf[j], 0);
	}
	close(fd);
	free(path);
}
END_TEST

/* 8 reads of 100 ms in flight together end in far less than the 800 ms
 * they would take one after another. */
START_TEST(parallel)
{
	const char *args[] = { "delay-read-us=100000", NULL };
	char *path = make_file("p.img");
	static uint8_t buf[8][4096];
	int64_t cookie[8];
	struct server sv;
	uint64_t t0, dt;

	start(&sv, true, path, args);
	t0 = now_us();
	for (int i = 0; i < 8; i++) {
		cookie[i] = nbd_aio_pread(sv.h, buf[i], sizeof(buf[i]),
					  (uint64_t)i * 4096,
					  NBD_NULL_COMPLETION, 0);
		ck_assert_int_gt(cookie[i], 0);
	}
	while (nbd_aio_in_flight(sv.h) > 0)
		ck_assert_int_ge(nbd_poll(sv.h, -1), 0);
	dt = now_us() - t0;
	for (int i = 0; i < 8; i++) {
		ck_assert_int_eq(nbd_aio_command_completed(sv.h, cookie[i]), 1);
		check_bytes(buf[i], sizeof(buf[i]), (uint64_t)i * 4096);
	}
	printf("parallel: 8 reads of 100 ms in flight: %llu us\n",
	       (unsigned long long)dt);
	ck_assert_msg(dt >= 100000 && dt < 600000, "8 reads took %llu us",
		      (unsigned long long)dt);
	stop(&sv);
	free(path);
}
END_TEST

/* A read asleep for 10 s does not hold nbdkit up: after SIGTERM the read
 * fails at once with ESHUTDOWN (nbdkit_nanosleep() wakes at shutdown),
 * and nbdkit is gone once the client has closed (it waits for that). */
START_TEST(shutdown_while_sleeping)
{
	const char *args[] = { "delay-read-us=10000000", NULL };
	char *path = make_file("s.img");
	static uint8_t buf[4096];
	struct server sv;
	uint64_t t0, t_read;
	int64_t cookie;
	int status;

	start(&sv, true, path, args);
	cookie = nbd_aio_pread(sv.h, buf, sizeof(buf), 0, NBD_NULL_COMPLETION,
			       0);
	ck_assert_int_gt(cookie, 0);
	/* Let the request reach the filter's sleep. */
	for (int i = 0; i < 20; i++)
		nbd_poll(sv.h, 10);
	ck_assert_int_eq(nbd_aio_in_flight(sv.h), 1);
	t0 = now_us();
	kill(sv.pid, SIGTERM);
	while (nbd_aio_in_flight(sv.h) > 0) {
		ck_assert_msg(now_us() - t0 < 3000000,
			      "the read still asleep 3 s after SIGTERM");
		ck_assert_int_ge(nbd_poll(sv.h, 100), 0);
	}
	t_read = now_us() - t0;
	ck_assert_int_eq(nbd_aio_command_completed(sv.h, cookie), -1);
	ck_assert_int_eq(nbd_get_errno(), ESHUTDOWN);
	nbd_close(sv.h);
	sv.h = NULL;
	for (;;) {
		pid_t w = waitpid(sv.pid, &status, WNOHANG);

		ck_assert_int_ge(w, 0);
		if (w == sv.pid)
			break;
		ck_assert_msg(now_us() - t0 < 3000000,
			      "nbdkit still running 3 s after SIGTERM");
		usleep(5000);
	}
	printf("shutdown_while_sleeping: read failed %llu us and nbdkit gone "
	       "%llu us after SIGTERM\n", (unsigned long long)t_read,
	       (unsigned long long)(now_us() - t0));
	sv.pid = 0;
	stop(&sv);
	free(path);
}
END_TEST

START_TEST(bad_values)
{
	const char *bad[] = { "delay-read-us=abc", "delay-read-us=-1",
			      "delay-write-us=1.5", "delay-zero-us=",
			      "delay-read-us=99999999999" };
	char *path = make_file("b.img");
	struct server sv;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *args[] = { bad[i], NULL };
		int rc = spawn(&sv, true, path, args);

		if (!rc)
			stop(&sv);
		ck_assert_msg(rc != 0, "nbdkit took %s", bad[i]);
		ck_assert_msg(rc != 127, "nbdkit did not run");
	}
	free(path);
}
END_TEST

/* The scratch directory and what the tests left in it. */
static void remove_dir(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	while (d && (e = readdir(d)))
		if (e->d_name[0] != '.')
			unlinkat(dirfd(d), e->d_name, 0);
	if (d)
		closedir(d);
	rmdir(dir);
}

int main(int argc, char **argv)
{
	Suite *s = suite_create("delayus");
	TCase *tc = tcase_create("delayus");
	SRunner *sr;
	int failed;

	if (argc != 2) {
		fprintf(stderr, "usage: %s PATH/TO/nbdkit-delayus-filter.so\n",
			argv[0]);
		return 2;
	}
	filter = argv[1];
	if (system("nbdkit --version >/dev/null 2>&1")) {
		printf("skipped: nbdkit cannot be run\n");
		return 77;
	}
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, read_delay);
	tcase_add_test(tc, data_identical);
	tcase_add_test(tc, write_zero_delay);
	tcase_add_test(tc, parallel);
	tcase_add_test(tc, shutdown_while_sleeping);
	tcase_add_test(tc, bad_values);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	remove_dir();
	return failed ? 1 : 0;
}
