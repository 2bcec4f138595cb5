/* SPDX-License-Identifier: MIT */
#include "hard_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

size_t h_ps;
struct luffd_features h_feat = { .sz = sizeof(struct luffd_features) };

double h_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void h_wait_progress(struct h_progress *p, size_t stride, int n,
		     unsigned long more)
{
	unsigned long base[64];
	double t0 = h_now();

#define P(i) ((struct h_progress *)((char *)p + (size_t)(i) * stride))
	ck_assert_int_le(n, 64);
	for (int i = 0; i < n; i++)
		base[i] = atomic_load(&P(i)->count);
	for (;;) {
		int ok = 1;

		for (int i = 0; i < n; i++)
			if (!atomic_load(&P(i)->ended) &&
			    (!more || atomic_load(&P(i)->count) < base[i] + more))
				ok = 0;
		if (ok)
			return;
		ck_assert_msg(h_now() - t0 < 10, "threads made no progress "
			      "(or did not end) in 10 s");
		usleep(1000);
	}
#undef P
}

void h_fill(void *buf, uint64_t off, size_t len, uint64_t seed)
{
	uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = h_word(off + i * 8, seed);
}

long h_page_diff(const void *page, uint64_t off, uint64_t store_size,
		 uint64_t seed)
{
	const unsigned char *p = page;

	for (size_t i = 0; i < h_ps; i += 8) {
		uint64_t want = 0, got;

		if (off + i < store_size)
			want = h_word(off + i, seed);
		if (off + i < store_size && store_size - (off + i) < 8) {
			/* The word straddling the end: zeroes after it. */
			size_t keep = (size_t)(store_size - (off + i));

			memset((unsigned char *)&want + keep, 0, 8 - keep);
		}
		memcpy(&got, p + i, 8);
		if (got != want) {
			for (size_t b = 0; b < 8; b++)
				if (((unsigned char *)&got)[b] !=
				    ((unsigned char *)&want)[b])
					return (long)(i + b);
		}
	}
	return -1;
}

int h_page_zero(const void *page)
{
	const uint64_t *w = page;

	for (size_t i = 0; i < h_ps / 8; i++)
		if (w[i])
			return 0;
	return 1;
}

static void write_pattern(int fd, uint64_t size, uint64_t seed)
{
	size_t chunk = 1 << 20;
	char *buf = malloc(chunk);

	ck_assert_ptr_nonnull(buf);
	for (uint64_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? (size_t)(size - off) : chunk;

		h_fill(buf, off, (n + 7) & ~(size_t)7, seed);
		ck_assert_int_eq(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
	}
	free(buf);
}

int h_tmpfile(uint64_t size, uint64_t seed)
{
	int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd < 0) {
		char path[] = "/tmp/luffd-hard-XXXXXX";

		fd = mkostemp(path, O_CLOEXEC);
		ck_assert_int_ge(fd, 0);
		unlink(path);
	}
	write_pattern(fd, size, seed);
	return fd;
}

char *h_tmppath(uint64_t size, uint64_t seed)
{
	char *path = strdup("/tmp/luffd-hard-XXXXXX");
	int fd;

	ck_assert_ptr_nonnull(path);
	fd = mkostemp(path, O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fchmod(fd, 0644), 0);
	write_pattern(fd, size, seed);
	close(fd);
	return path;
}

/* ---- signals ------------------------------------------------------- */

static __thread sigjmp_buf *volatile h_jb;
static __thread struct h_sig h_last;

static void on_signal(int sig, siginfo_t *si, void *uc)
{
	sigjmp_buf *jb = h_jb;

	(void)uc;
	if (!jb) {
		/* Not expected here: die of it as usual (the access is
		 * retried with the default action). */
		signal(sig, SIG_DFL);
		return;
	}
	h_last.signo = sig;
	h_last.code = si->si_code;
	h_last.addr = si->si_addr;
	h_jb = NULL;
	siglongjmp(*jb, 1);
}

void h_sig_init(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
}

int h_read(const void *p, size_t len, void *out, struct h_sig *sig)
{
	sigjmp_buf jb;
	const volatile uint64_t *src = p;
	uint64_t *dst = out;
	uint64_t sink = 0;

	if (sigsetjmp(jb, 1)) {
		if (sig)
			*sig = h_last;
		return h_last.signo;
	}
	h_jb = &jb;
	for (size_t i = 0; i < len / 8; i++) {
		uint64_t v = src[i];

		if (dst)
			dst[i] = v;
		sink ^= v;
	}
	h_jb = NULL;
	__asm__ volatile("" : : "r"(sink) : "memory");
	if (sig)
		memset(sig, 0, sizeof(*sig));
	return 0;
}

int h_write(void *p, uint64_t v, struct h_sig *sig)
{
	sigjmp_buf jb;

	if (sigsetjmp(jb, 1)) {
		if (sig)
			*sig = h_last;
		return h_last.signo;
	}
	h_jb = &jb;
	*(volatile uint64_t *)p = v;
	h_jb = NULL;
	if (sig)
		memset(sig, 0, sizeof(*sig));
	return 0;
}

/* ---- threads, contexts, resources ---------------------------------- */

int h_join(pthread_t t, double secs, void **ret)
{
	struct timespec ts;
	double end;

	clock_gettime(CLOCK_REALTIME, &ts);
	end = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + secs;
	ts.tv_sec = (time_t)end;
	ts.tv_nsec = (long)((end - (double)ts.tv_sec) * 1e9);
	return pthread_timedjoin_np(t, ret, &ts);
}

int h_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
	pthread_attr_t a;
	int err;

	pthread_attr_init(&a);
	/* Sanitizers need more than the bare minimum. */
	pthread_attr_setstacksize(&a, 256 << 10);
	err = pthread_create(t, &a, fn, arg);
	pthread_attr_destroy(&a);
	return err;
}

long h_rss_pages(void)
{
	FILE *f = fopen("/proc/self/statm", "re");
	long size = 0, rss = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &rss) != 2)
		rss = -1;
	fclose(f);
	return rss;
}

TCase *h_tcase(Suite *s, const char *name, int timeout)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, timeout);
	suite_add_tcase(s, tc);
	return tc;
}

int h_main(Suite *s)
{
	SRunner *sr;
	int err, failed;

	h_ps = (size_t)sysconf(_SC_PAGESIZE);
	h_sig_init();
	err = t_probe(&h_feat);
	if (err)
		return err;

	sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

struct luffd_store *h_file_store(size_t size, uint64_t seed)
{
	struct luffd_store *s = NULL;
	int fd = h_tmpfile(size, seed);

	ck_assert_int_eq(luffd_store_file(fd, 0, &s), 0);
	close(fd);
	return s;
}
