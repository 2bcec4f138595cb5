/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the hardening tests (tests/hardening/hard_*.c): a
 * deterministic backing pattern, temporary files, page checks, a per-thread
 * SIGSEGV/SIGBUS catcher, joins with a deadline, resource counters, and the
 * common main() that skips (exit 77) when the kernel lacks userfaultfd or
 * io_uring.
 */
#ifndef LUFFD_HARD_UTIL_H
#define LUFFD_HARD_UTIL_H

/* Sanitizer builds: shadow memory and quarantine inflate RSS. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define H_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define H_SANITIZED 1
#endif
#endif
#ifndef H_SANITIZED
#define H_SANITIZED 0
#endif

#include "../common.h"
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <libuffd.h>

#define H_SKIP 77
/* Per-test timeout for check (CK_TIMEOUT_MULTIPLIER scales it). */
#define H_TIMEOUT 60

extern size_t h_ps; /* page size */
extern struct luffd_features h_feat; /* features of a default context */

/* Non-zero when LUFFD_TEST_SMALL is set (sanitizer builds). */
/* The helpers both suites need live in tests/common.c. */
#define h_small t_small
static inline size_t h_size(size_t normal, size_t small)
{
	return h_small() ? small : normal;
}
double h_now(void); /* CLOCK_MONOTONIC seconds */

/* How far a thread the test waits on has got: it bumps count as it works
 * and sets ended when it returns. */
struct h_progress {
	atomic_ulong count;
	atomic_int ended;
};

/* Wait until each of n threads has counted `more` from now on (0: until
 * each has ended), or ended; the test fails after 10 s.  p is the member
 * in the first of n structs stride bytes apart (see H_WAIT). */
void h_wait_progress(struct h_progress *p, size_t stride, int n,
		     unsigned long more);
#define H_WAIT(arr, n, member, more)                                       \
	h_wait_progress(&(arr)[0].member, sizeof((arr)[0]), (n), (more))

/* ---- backing pattern ------------------------------------------------ */

/* The 8-byte word at byte offset off (a multiple of 8) of a test store. */
static inline uint64_t h_word(uint64_t off, uint64_t seed)
{
	uint64_t x = (off + 1) * 0x9e3779b97f4a7c15ull ^ seed;

	x ^= x >> 31;
	return x * 0xbf58476d1ce4e5b9ull;
}

/* Fill buf with the pattern of [off, off+len) (off, len multiples of 8). */
void h_fill(void *buf, uint64_t off, size_t len, uint64_t seed);

/* -1 when the page at `page` holds the pattern of store offset off (zero
 * past store_size), else the index of the first wrong byte. */
long h_page_diff(const void *page, uint64_t off, uint64_t store_size,
		 uint64_t seed);
/* 1 when every byte of the page is zero. */
int h_page_zero(const void *page);

#define h_assert_page(p, off, size, seed)                                     \
	do {                                                                  \
		long d_ = h_page_diff((p), (off), (size), (seed));            \
		ck_assert_msg(d_ < 0,                                          \
			      "page at %p (store offset %llu, seed %llx) "     \
			      "differs at byte %ld",                           \
			      (const void *)(p), (unsigned long long)(off),   \
			      (unsigned long long)(seed), d_);                \
	} while (0)

/* An unlinked temporary file (O_RDWR) of size bytes holding the pattern. */
int h_tmpfile(uint64_t size, uint64_t seed);
/* The same, with a name (mode 0644, in /tmp): the caller unlinks it. */
char *h_tmppath(uint64_t size, uint64_t seed);

/* ---- catching SIGSEGV / SIGBUS in the touching thread -------------- */

struct h_sig {
	int signo;
	int code;
	void *addr;
};

/* Install the process-wide handlers (idempotent).  A signal outside an
 * h_read()/h_write() is fatal as usual. */
void h_sig_init(void);
/* Copy len bytes (a multiple of 8) from p to out (may be NULL) with user-
 * space loads; returns 0, or the signal number (with *sig filled) if the
 * access raised SIGSEGV or SIGBUS. */
int h_read(const void *p, size_t len, void *out, struct h_sig *sig);
/* Store the 8-byte value v at p (aligned); 0 or the signal number. */
int h_write(void *p, uint64_t v, struct h_sig *sig);

/* ---- threads, contexts, resources ---------------------------------- */

/* Join t within secs seconds: 0, or ETIMEDOUT (the thread is leaked). */
int h_join(pthread_t t, double secs, void **ret);
/* Start a thread with a small stack. */
int h_thread(pthread_t *t, void *(*fn)(void *), void *arg);

/* luffd_ctx_create() asserting success. */
#define h_ctx t_ctx
/* luffd_ctx_sync() + luffd_stats_get(), asserting both succeed. */
#define h_stats t_stats
#define h_faults t_total_faults /* every class */
#define h_fd_count t_count_fds
long h_rss_pages(void);

/* Run suite s in fork mode; exits 77 when a default context cannot be
 * created (no userfaultfd / io_uring / privilege). */
int h_main(Suite *s);
/* Add a test with the standard timeout. */
TCase *h_tcase(Suite *s, const char *name, int timeout);

/* A file store over a fresh temporary file of the test pattern (the
 * store holds the only descriptor). */
struct luffd_store *h_file_store(size_t size, uint64_t seed);

#endif
