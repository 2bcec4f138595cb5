/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

size_t t_ps;
struct luffd_features t_feat;
const char *t_dir;

static char t_dir_buf[256];
static pid_t t_main_pid;

int t_small(void)
{
	const char *s = getenv("LUFFD_TEST_SMALL");

	return s && *s && strcmp(s, "0") != 0;
}

size_t t_size(size_t normal, size_t small)
{
	return t_small() ? small : normal;
}

void t_pattern(void *buf, uint64_t off, size_t len, uint64_t seed)
{
	uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = t_word(off + 8 * i, seed);
}

long t_page_diff(const void *page, uint64_t file_off, uint64_t file_size,
		 uint64_t seed)
{
	const volatile uint64_t *w = page;
	const unsigned char *b = page;
	size_t n = t_ps / 8;

	for (size_t i = 0; i < n; i++) {
		uint64_t off = file_off + 8 * i;
		uint64_t want;

		if (off + 8 <= file_size) {
			want = t_word(off, seed);
		} else if (off >= file_size) {
			want = 0;
		} else {
			/* The word straddling EOF: pattern bytes, then 0. */
			uint64_t full = t_word(off, seed);
			unsigned char wb[8];

			memcpy(wb, &full, 8);
			memset(wb + (file_size - off), 0, 8 - (file_size - off));
			memcpy(&want, wb, 8);
		}
		if (w[i] != want) {
			for (size_t j = 0; j < 8; j++) {
				unsigned char e;

				memcpy(&e, (unsigned char *)&want + j, 1);
				if (b[8 * i + j] != e)
					return (long)(8 * i + j);
			}
			return (long)(8 * i);
		}
	}
	return -1;
}

char *t_make_file(uint64_t size, uint64_t seed)
{
	char *path = malloc(strlen(t_dir) + 32);
	size_t chunk = 1 << 20;
	void *buf = malloc(chunk);
	int fd;

	ck_assert_ptr_nonnull(path);
	ck_assert_ptr_nonnull(buf);
	sprintf(path, "%s/f-XXXXXX", t_dir);
	fd = mkstemp(path);
	ck_assert_msg(fd >= 0, "mkstemp: %s", strerror(errno));
	for (uint64_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? (size_t)(size - off) : chunk;

		t_pattern(buf, off, (n + 7) & ~(size_t)7, seed);
		ck_assert_int_eq(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
	}
	ck_assert_int_eq(fsync(fd), 0);
	close(fd);
	free(buf);
	return path;
}

uint64_t t_rand(uint64_t *s)
{
	/* splitmix64: deterministic for a given seed. */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void t_perm(size_t *a, size_t n, uint64_t *state)
{
	for (size_t i = 0; i < n; i++)
		a[i] = i;
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(t_rand(state) % i);
		size_t t = a[i - 1];

		a[i - 1] = a[j];
		a[j] = t;
	}
}

static int count_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - (strcmp(path, "/proc/self/fd") == 0); /* opendir's fd */
}

int t_count_fds(void)
{
	return count_dir("/proc/self/fd");
}

int t_count_threads(void)
{
	return count_dir("/proc/self/task");
}

int t_threads_settle(int want)
{
	/* A joined thread (or an io_uring worker) leaves /proc/self/task a
	 * moment after it is gone for pthread_join(): give it 2 s. */
	int n = t_count_threads();

	for (int i = 0; i < 200 && n > want; i++) {
		usleep(10000);
		n = t_count_threads();
	}
	return n;
}

long t_rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, rss = 0;

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &rss) != 2)
		rss = -1;
	fclose(f);
	return rss < 0 ? -1 : rss * (long)(t_ps / 1024);
}

pid_t t_gettid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

struct luffd_ctx *t_ctx(const struct luffd_ctx_opts *opts)
{
	struct luffd_ctx *ctx = NULL;
	int err = luffd_ctx_create(opts, &ctx);

	ck_assert_msg(err == 0, "luffd_ctx_create: %d (%s)", err,
		      luffd_strerror(err));
	ck_assert_ptr_nonnull(ctx);
	return ctx;
}

void t_stats(struct luffd_ctx *ctx, struct luffd_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->sz = sizeof(*st);
	ck_assert_int_eq(luffd_ctx_sync(ctx), 0);
	ck_assert_int_eq(luffd_stats_get(ctx, st), 0);
}

uint64_t t_total_faults(const struct luffd_stats *st)
{
	uint64_t n = 0;

	for (int c = 0; c < LUFFD_NR_CLASSES; c++)
		n += st->faults[c];
	return n;
}

void t_rec_init(struct t_rec *r, size_t cap)
{
	pthread_mutex_init(&r->lock, NULL);
	r->n = 0;
	r->cap = cap;
	r->f = calloc(cap, sizeof(*r->f));
	ck_assert_ptr_nonnull(r->f);
}

void t_rec_free(struct t_rec *r)
{
	free(r->f);
	r->f = NULL;
	pthread_mutex_destroy(&r->lock);
}

void t_rec_fn(void *arg, const struct luffd_fault *f)
{
	struct t_rec *r = arg;

	pthread_mutex_lock(&r->lock);
	if (r->n < r->cap)
		r->f[r->n] = *f;
	r->n++; /* counts past cap too: the test sees the overflow */
	pthread_mutex_unlock(&r->lock);
}

/* ---- signals -------------------------------------------------------- */

static _Thread_local sigjmp_buf t_jmp;
static _Thread_local volatile sig_atomic_t t_armed;
static _Thread_local volatile int t_sig, t_code;
static _Thread_local void *volatile t_addr;
static _Thread_local volatile pid_t t_sigtid;

static void t_sig_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (!t_armed) {
		/* Not expected here: die of it as if there were no handler. */
		signal(sig, SIG_DFL);
		return;
	}
	t_armed = 0;
	t_sig = sig;
	t_code = si->si_code;
	t_addr = si->si_addr;
	t_sigtid = t_gettid();
	siglongjmp(t_jmp, 1);
}

int t_touch_sig(volatile char *p, int write, int *code, void **addr,
		pid_t *tid)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = t_sig_handler;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);

	t_sig = 0;
	t_code = 0;
	t_addr = NULL;
	t_sigtid = 0;
	if (sigsetjmp(t_jmp, 1) == 0) {
		t_armed = 1;
		if (write)
			*p = (char)0x5a;
		else
			(void)*p;
		t_armed = 0;
	}
	if (code)
		*code = t_code;
	if (addr)
		*addr = t_addr;
	if (tid)
		*tid = t_sigtid;
	return t_sig;
}

/* ---- main ----------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *sb, int flag,
		  struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void t_cleanup(void)
{
	if (t_dir && getpid() == t_main_pid)
		nftw(t_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

TCase *t_tcase(Suite *s, const char *name)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, T_TIMEOUT);
	suite_add_tcase(s, tc);
	return tc;
}

int t_probe(struct luffd_features *feat)
{
	struct luffd_ctx *ctx = NULL;
	int err = luffd_ctx_create(NULL, &ctx);

	/* Only what the machine lacks is a skip; any other failure of a
	 * default context is a failure of the library. */
	if (err == -LUFFD_E_NOUFFD || err == -LUFFD_E_UFFD_PERM ||
	    err == -LUFFD_E_UFFD_API || err == -LUFFD_E_NOURING ||
	    err == -ENOSYS || err == -EPERM) {
		printf("skipped: %s\n", luffd_strerror(err));
		return T_SKIP;
	}
	if (err) {
		printf("luffd_ctx_create(NULL) failed: %d (%s)\n", err,
		       luffd_strerror(err));
		return 1;
	}
	memset(feat, 0, sizeof(*feat));
	feat->sz = sizeof(*feat);
	err = luffd_ctx_features(ctx, feat);
	luffd_ctx_destroy(ctx);
	if (err) {
		printf("luffd_ctx_features failed: %d\n", err);
		return 1;
	}
	return 0;
}

int t_main(Suite *(*make)(void), int need_poison)
{
	const char *base = getenv("LUFFD_TEST_TMPDIR");
	SRunner *sr;
	int err, nfail;

	t_ps = (size_t)sysconf(_SC_PAGESIZE);
	t_main_pid = getpid();
	setvbuf(stdout, NULL, _IOLBF, 0);

	err = t_probe(&t_feat);
	if (err)
		return err;
	if (need_poison && !t_feat.has_poison) {
		printf("skipped: kernel lacks UFFDIO_POISON (has_poison == 0)\n");
		return T_SKIP;
	}

	snprintf(t_dir_buf, sizeof(t_dir_buf), "%s/luffd-test-XXXXXX",
		 base && *base ? base : "/tmp");
	if (!mkdtemp(t_dir_buf)) {
		printf("mkdtemp(%s): %s\n", t_dir_buf, strerror(errno));
		return 1;
	}
	t_dir = t_dir_buf;
	atexit(t_cleanup);

	sr = srunner_create(make());
	if (!getenv("CK_FORK")) /* CK_FORK=no for debugging */
		srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	nfail = srunner_ntests_failed(sr);
	srunner_free(sr);
	return nfail ? 1 : 0;
}

static void *reader_main(void *arg)
{
	struct t_reader *r = arg;

	r->sig = t_touch_sig(r->p, 0, &r->code, NULL, NULL);
	atomic_store(&r->done, 1);
	return NULL;
}

void t_reader_start(struct t_reader *r, void *p)
{
	r->p = p;
	r->sig = r->code = 0;
	atomic_store(&r->done, 0);
	ck_assert_int_eq(pthread_create(&r->t, NULL, reader_main, r), 0);
}

void t_reader_join(struct t_reader *r)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 10;
	ck_assert_msg(pthread_timedjoin_np(r->t, NULL, &dl) == 0,
		      "a faulting thread is still blocked after 10 s");
}

double t_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

char *t_anon(size_t len)
{
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(m, MAP_FAILED);
	return m;
}
