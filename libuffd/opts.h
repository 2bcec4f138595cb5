/* SPDX-License-Identifier: MIT */
/* A context's settings, resolved from luffd_ctx_opts (opts.c). */
#ifndef LUFFD_OPTS_H
#define LUFFD_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uffd.h"
#include "util.h"

/* Read by every layer; written only while the context is created. */
struct luffd__cfg {
	unsigned int nloops;
	unsigned int queue_depth;
	size_t cache_bytes;
	uint32_t ra_pages;
	bool ra_adaptive;
	bool ra_default;      /* readahead_bytes left at its default */
	uint32_t ia_pages;    /* install-ahead chunk, pages (1: off) */
	uint32_t hp_chunks;   /* staging chunks per handler (0: copy only) */
	unsigned int spin_us;
	uint64_t handler_cpus; /* affinity mask, 0: none */
	uint64_t stripe_bytes; /* 0: a range goes to one handler */
	unsigned int read_timeout_ms; /* 0: none */
	unsigned int workers;  /* callback worker threads, at most */
	unsigned int bt_threads; /* blocktime's "all" (0: every thread) */
	bool wp_async;           /* LUFFD_WP_ASYNC asked for */
	uint64_t resident_pages; /* the resident limit, 0: none */
	enum luffd_open_mode open_mode;
	uint64_t disable;      /* UFFD_FEATURE_* never to use */
	luffd_trace_fn trace_fn;
	void *trace_arg;
	enum luffd_trace_format trace_format;
	int trace_fd;

	size_t page_size;
	unsigned int page_shift;
	uint64_t t_start;

	/* From the kernel, at creation. */
	struct luffd__kernel kernel;
	uint64_t features;     /* enabled UFFD_FEATURE_* */
	bool has_poison;
};

/* Fill c from o (NULL: every default).  -EINVAL names the field and the
 * reason through the print callback. */
int luffd__opts_resolve(struct luffd__cfg *c, const struct luffd_ctx_opts *o);
/* A read_timeout_ms deadline from now, UINT64_MAX without one. */
static inline uint64_t luffd__deadline(const struct luffd__cfg *c,
				       uint64_t now)
{
	return c->read_timeout_ms ?
		now + (uint64_t)c->read_timeout_ms * 1000000ull : UINT64_MAX;
}

/*
 * Options structs from newer callers: accept a larger sz when the bytes
 * past the struct this library knows are all zero (libbpf's rule).  Copies
 * what is known into *dst (zeroed first).  -EINVAL for a sz too small to
 * hold `min` bytes, or non-zero unknown bytes.
 */
int luffd__opts_copy(void *dst, size_t dst_sz, const void *src, size_t src_sz,
		     size_t min, const char *what);

#endif /* LUFFD_OPTS_H */
