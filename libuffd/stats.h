/* SPDX-License-Identifier: MIT */
/* Counters, latency histograms and the trace writer (stats.c). */
#ifndef LUFFD_STATS_H
#define LUFFD_STATS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define LUFFD__HIST_BUCKETS 976 /* 16 linear + 60 octaves x 16 sub-buckets */
#define LUFFD__TRACE_BUF (64 * 1024)

/* Classes counted inside the library: the public ones with a slot in
 * struct luffd_stats's arrays, then LUFFD_WP (which has none: see enum
 * luffd_class). */
#define LUFFD__NCLS (LUFFD_NR_CLASSES + 1)
static inline unsigned int luffd__cls_slot(enum luffd_class c)
{
	return c == LUFFD_WP ? LUFFD_NR_CLASSES : (unsigned int)c;
}

struct luffd__stats {
	/* Single writer (the handler thread), any number of readers: plain
	 * relaxed loads and stores, never a locked instruction. */
	_Atomic uint64_t faults[LUFFD__NCLS]; /* by luffd__cls_slot() */
	_Atomic uint64_t lat_sum[LUFFD__NCLS];
	_Atomic uint64_t lat_min[LUFFD__NCLS];
	_Atomic uint64_t lat_max[LUFFD__NCLS];
	_Atomic uint64_t hist[LUFFD__NCLS][LUFFD__HIST_BUCKETS];
	_Atomic uint64_t dist[LUFFD_LATENCY_DIST_BUCKETS]; /* QEMU's buckets */
	_Atomic uint64_t bytes_read, reads, readahead_pages, coalesced;
	_Atomic uint64_t evictions, eexist, eagain, waits, trace_errors;
	_Atomic uint64_t ev_remove, ev_unmap, ev_remap, orphans, timeouts;
	_Atomic uint64_t misuse, installed_ahead, moved_pages;
	_Atomic uint64_t cancels, late, internal_errors, prefetched;
	_Atomic uint64_t pushed, wp_unexpected, wp_joined, refaults;
	/* Written by application threads (luffd_install(), write-back):
	 * atomic adds. */
	_Atomic uint64_t app_installed;
	_Atomic uint64_t wb_pages, wb_writes, wb_errors, wb_flushes;
	/* Written by the evictor (evict.c), in the first handler's only. */
	_Atomic uint64_t evicted, resident, resident_peak;
};

#define luffd__inc(field, n)                                                 \
	atomic_store_explicit(&(field),                                      \
			      atomic_load_explicit(&(field),                 \
						   memory_order_relaxed) + (n), \
			      memory_order_relaxed)

void luffd__stats_init(struct luffd__stats *s);
void luffd__stats_record(struct luffd__stats *s, enum luffd_class c,
			 uint64_t lat_ns);
unsigned int luffd__hist_index(uint64_t v);
/* The LUFFD_LATENCY_DIST_BUCKETS bucket of a latency of ns. */
unsigned int luffd__dist_bucket(uint64_t ns);
uint64_t luffd__hist_value(unsigned int idx);

/* A handler thread's trace: the context's settings and, with a writer,
 * its line buffer. */
struct luffd__trace {
	luffd_trace_fn fn;
	void *arg;
	enum luffd_trace_format format;
	int fd;
	uint64_t t_start;
	pthread_mutex_t lock; /* the writer's buffer: handler vs. flush() */
	char *buf;            /* NULL: no writer */
	size_t len;
};

static inline bool luffd__trace_on(const struct luffd__trace *t)
{
	return t->fn || t->buf;
}
/* Hand f to the callback and/or the writer; a failed write counts in
 * s->trace_errors. */
void luffd__trace_emit(struct luffd__trace *t, struct luffd__stats *s,
		       const struct luffd_fault *f);
int luffd__trace_flush(struct luffd__trace *t, struct luffd__stats *s);
/* The CSV header line, written once at context creation. */
int luffd__trace_header(enum luffd_trace_format format, int fd);

#endif /* LUFFD_STATS_H */
