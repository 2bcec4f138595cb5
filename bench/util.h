/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the bench tools (uffd-bench, uring-reg-bench).
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stdint.h>

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns(void);
/* A byte count: digits with an optional K, M, G or T (binary), optionally
 * followed by B or iB.  -EINVAL if malformed, -ERANGE on overflow. */
int parse_size(const char *s, uint64_t *out);

#endif
