/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers for the libuffd test programs: a deterministic backing
 * pattern, temporary files, page verification, resource counters, and the
 * common main() that skips (exit 77) when the kernel lacks userfaultfd or
 * io_uring.
 */
#ifndef LUFFD_TEST_COMMON_H
#define LUFFD_TEST_COMMON_H

/* Sanitizer builds: their allocators map memory and keep freed memory
 * in quarantine, so address-space and RSS comparisons are relaxed. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define T_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define T_SANITIZED 1
#endif
#endif
#ifndef T_SANITIZED
#define T_SANITIZED 0
#endif

#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <libuffd.h>

#ifndef UFFD_FEATURE_THREAD_ID
#define UFFD_FEATURE_THREAD_ID (1u << 8)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1u << 14)
#endif

/* Exit code CTest treats as "skipped" (SKIP_RETURN_CODE). */
#define T_SKIP 77
/* Per-test timeout (seconds) for check; CK_TIMEOUT_MULTIPLIER scales it. */
#define T_TIMEOUT 30

extern size_t t_ps;                  /* page size */
extern struct luffd_features t_feat; /* features of a default context */
extern const char *t_dir;            /* per-run temporary directory */

/* ---- sizes ---------------------------------------------------------- */

/* Non-zero when LUFFD_TEST_SMALL is set (sanitizer builds). */
int t_small(void);
/* normal, or small when LUFFD_TEST_SMALL is set. */
size_t t_size(size_t normal, size_t small);

/* ---- backing pattern ------------------------------------------------ */

/* The 8-byte word at byte offset off (a multiple of 8) of a test file. */
static inline uint64_t t_word(uint64_t off, uint64_t seed)
{
	return off ^ seed;
}

/* Fill buf with the pattern of [off, off+len) (off, len multiples of 8). */
void t_pattern(void *buf, uint64_t off, size_t len, uint64_t seed);

/*
 * Check one page of memory against the file contents at file_off of a file
 * of file_size bytes (bytes past file_size must be zero).  Returns -1 when
 * the page is right, else the byte index of the first difference.
 */
long t_page_diff(const void *page, uint64_t file_off, uint64_t file_size,
		 uint64_t seed);

/* Assert (check) that page i of a mapping of the file at off is right. */
#define t_assert_page(base, i, off, fsize, seed)                              \
	do {                                                                  \
		const char *p_ = (const char *)(base) + (size_t)(i) * t_ps;   \
		long d_ = t_page_diff(p_, (off) + (uint64_t)(i) * t_ps,        \
				      (fsize), (seed));                       \
		ck_assert_msg(d_ < 0,                                          \
			      "page %zu (file offset %llu) differs at byte "   \
			      "%ld",                                           \
			      (size_t)(i),                                     \
			      (unsigned long long)((off) +                      \
						   (uint64_t)(i) * t_ps),      \
			      d_);                                            \
	} while (0)

/* Create a file of size bytes holding the pattern; returns its path
 * (malloc'd).  The file lives in t_dir and is removed at exit. */
char *t_make_file(uint64_t size, uint64_t seed);

/* ---- randomness ----------------------------------------------------- */

uint64_t t_rand(uint64_t *state);
/* Fill a[0..n) with a random permutation of 0..n-1. */
void t_perm(size_t *a, size_t n, uint64_t *state);

/* ---- resources ------------------------------------------------------ */

int t_count_fds(void);
int t_count_threads(void);
/* The thread count once it has dropped to want (or after 2 s). */
int t_threads_settle(int want);
long t_rss_kib(void);
pid_t t_gettid(void);

/* ---- contexts ------------------------------------------------------- */

/* luffd_ctx_create() that fails the test on error. */
struct luffd_ctx *t_ctx(const struct luffd_ctx_opts *opts);
/* luffd_ctx_sync() then luffd_stats_get() into *st (sets sz); fails the
 * test on error. */
void t_stats(struct luffd_ctx *ctx, struct luffd_stats *st);
uint64_t t_total_faults(const struct luffd_stats *st);

/* ---- trace recording (callback; no allocation, no registered memory) */

struct t_rec {
	pthread_mutex_t lock;
	size_t n, cap;
	struct luffd_fault *f;
};
void t_rec_init(struct t_rec *r, size_t cap);
void t_rec_free(struct t_rec *r);
void t_rec_fn(void *arg, const struct luffd_fault *f);

/* ---- signals -------------------------------------------------------- */

/*
 * Touch (read, or write when write != 0) the byte at p and report the signal
 * it raised: 0 for none, else the signal number, with si_code and si_addr in
 * *code / *addr and the receiving thread's tid in *tid (any may be NULL).
 * Handles SIGBUS and SIGSEGV in the calling thread only.
 */
int t_touch_sig(volatile char *p, int write, int *code, void **addr,
		pid_t *tid);

/* A thread that reads one byte of a page, and the signal it got
 * (t_touch_sig()). */
struct t_reader {
	pthread_t t;
	volatile char *p;
	int sig, code;
	_Atomic int done;
};
void t_reader_start(struct t_reader *r, void *p);
/* Join it; fails the test if it is still blocked after 10 s. */
void t_reader_join(struct t_reader *r);

/* ---- misc ----------------------------------------------------------- */

double t_now_s(void);       /* CLOCK_MONOTONIC, in seconds */
char *t_anon(size_t len);   /* private anonymous read-write memory */

/* ---- main ----------------------------------------------------------- */

/*
 * Run suite s in fork mode.  Before running: set up t_ps and t_dir, probe a
 * default context (print "skipped: <reason>" and return 77 if the kernel has
 * no userfaultfd / io_uring), and, if need_poison, skip unless the kernel
 * offers UFFDIO_POISON.  Removes t_dir afterwards.
 */
/* Create and destroy a default context, filling *feat: 0, T_SKIP (with a
 * "skipped:" line) when the machine lacks userfaultfd or io_uring, or 1
 * on any other failure. */
int t_probe(struct luffd_features *feat);
int t_main(Suite *(*make)(void), int need_poison);

/* Add a test case with the standard timeout. */
TCase *t_tcase(Suite *s, const char *name);

#endif
