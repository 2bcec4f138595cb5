/* SPDX-License-Identifier: MIT */
/* Error strings, the print callback, time, the library's threads. */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "util.h"

static _Atomic(luffd_print_fn) print_fn;

luffd_print_fn luffd_set_print(luffd_print_fn fn)
{
	return atomic_exchange(&print_fn, fn);
}

void luffd__print(enum luffd_print_level level, const char *fmt, ...)
{
	luffd_print_fn fn = atomic_load(&print_fn);
	va_list ap;

	if (!fn)
		return;
	va_start(ap, fmt);
	fn(level, fmt, ap);
	va_end(ap);
}

const char *luffd_strerror(int err)
{
	if (err < 0)
		err = err == INT_MIN ? INT_MAX : -err;
	switch (err) {
	case LUFFD_E_NOUFFD:
		return "userfaultfd is not available in this kernel "
		       "(CONFIG_USERFAULTFD, or blocked by seccomp)";
	case LUFFD_E_UFFD_PERM:
		return "userfaultfd refused for lack of privilege: run with "
		       "CAP_SYS_PTRACE, or set sysctl "
		       "vm.unprivileged_userfaultfd=1, or give this user "
		       "read/write access to /dev/userfaultfd (kernel >= 6.1), "
		       "or use a kernel >= 5.11 that allows "
		       "UFFD_USER_MODE_ONLY";
	case LUFFD_E_UFFD_API:
		return "userfaultfd API handshake failed or lacks missing-mode "
		       "faults on anonymous memory";
	case LUFFD_E_NOURING:
		return "io_uring is not available (kernel too old, "
		       "kernel.io_uring_disabled set, or blocked by seccomp)";
	default:
		if (err > LUFFD_E_BASE && err < LUFFD_E_MAX)
			return "unknown libuffd error";
		/* Not strerror(): for an unknown value it formats into a
		 * buffer that the next call frees. */
		{
			const char *d = strerrordesc_np(err);

			return d ? d : "unknown error";
		}
	}
}

const char *luffd_class_name(enum luffd_class c)
{
	static const char *const names[LUFFD_WP + 1] = {
		[LUFFD_MINOR] = "minor",
		[LUFFD_MAJOR] = "major",
		[LUFFD_ZERO] = "zero",
		[LUFFD_ERROR] = "error",
		[LUFFD_WP] = "wp",
	};

	if ((unsigned int)c > LUFFD_WP || !names[c])
		return "?";
	return names[c];
}

uint64_t luffd__now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

_Thread_local const void *luffd__tls_ctx;

int luffd__thread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	int err;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -err;
}
