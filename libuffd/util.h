/* SPDX-License-Identifier: MIT */
/*
 * What every source file of the library shares: logging, time, the
 * library's own threads, and a few macros.  Non-static names shared between
 * files start with luffd__; everything is hidden from the shared library's
 * ABI (-fvisibility=hidden + libuffd.map).
 */
#ifndef LUFFD_UTIL_H
#define LUFFD_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "libuffd.h"

#define LUFFD__NIL UINT32_MAX

#define LUFFD__UNUSED __attribute__((unused))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* A ThreadSanitizer build (GCC says so one way, clang another). */
#if defined(__SANITIZE_THREAD__)
#define LUFFD__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LUFFD__TSAN 1
#endif
#endif

/* 2 MiB: the size of a staging chunk, and the alignment of luffd_map()
 * ranges that can take chunks. */
#define LUFFD__HP_SHIFT 21
#define LUFFD__HP_SIZE (1ull << LUFFD__HP_SHIFT)

/* Logging (never on the hot path): through the print callback only. */
void luffd__print(enum luffd_print_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
#define pr_warn(fmt, ...) luffd__print(LUFFD_WARN, "libuffd: " fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...) luffd__print(LUFFD_INFO, "libuffd: " fmt, ##__VA_ARGS__)
#define pr_debug(fmt, ...) luffd__print(LUFFD_DEBUG, "libuffd: " fmt, ##__VA_ARGS__)

/* CLOCK_MONOTONIC in ns. */
uint64_t luffd__now_ns(void);

/* pthread_create() with every signal blocked in the new thread: the
 * library's threads take no signals, they belong to the application's. */
int luffd__thread_create(pthread_t *t, void *(*fn)(void *), void *arg);

/*
 * The context a library thread (a handler or a callback worker) works
 * for, NULL on application threads.  A call that would wait for that
 * thread's own work (destroying its context, unmapping a region it serves)
 * returns -EDEADLK instead.
 */
extern _Thread_local const void *luffd__tls_ctx;
static inline bool luffd__on_library_thread(const void *ctx)
{
	return luffd__tls_ctx == ctx;
}

#endif /* LUFFD_UTIL_H */
