/* SPDX-License-Identifier: MIT */
/*
 * Read-ahead, read-around and install-ahead (policy.c): how much a cache
 * miss reads, when the next window starts, and which cached pages go in
 * with a fault.  The per-region state lives in struct luffd__region (ra_*).
 */
#ifndef LUFFD_POLICY_H
#define LUFFD_POLICY_H

#include <stdbool.h>
#include <stdint.h>

struct luffd__loop;
struct luffd__region;

/* The window for a cache miss at store page pg of r, in pages. */
uint64_t luffd__ra_window(struct luffd__loop *l, struct luffd__region *r,
			  uint64_t pg);
/* Read n pages of r from pg for fault fi (waiting on pg) and remember the
 * stream; the pages read, 0 when no read or slot is free. */
uint32_t luffd__ra_read(struct luffd__loop *l, struct luffd__region *r,
			uint64_t pg, uint64_t n, uint32_t fi);
/* A random miss at pg: read the aligned readahead_bytes block around it
 * for fault fi (the kernel's mmap read-around); as luffd__ra_read(). */
uint32_t luffd__ra_around(struct luffd__loop *l, struct luffd__region *r,
			  uint64_t pg, uint32_t fi);
/* Does read-around pay in r (misses do not lead by RA_LOTSAMISS)? */
bool luffd__ra_around_pays(const struct luffd__region *r);
/* A miss that reads its page alone counts against read-around. */
void luffd__ra_count_miss(struct luffd__region *r);
/* Have pages around random misses been used enough that a random miss
 * in r reads its whole 2 MiB chunk?  Spends the credit when true. */
bool luffd__ra_take_chunk_credit(struct luffd__region *r);
/* A cache hit at store page pg of r: it pays a random miss back, and the
 * pages around it that are ready go in first (install-ahead, which pays
 * back too).  Returns the pages installed ahead. */
uint64_t luffd__ra_hit(struct luffd__loop *l, struct luffd__region *r,
		       uint64_t pg);
/* Is pg r's read-ahead mark (a hit there starts the next window)? */
bool luffd__ra_at_mark(const struct luffd__loop *l,
		       const struct luffd__region *r, uint64_t pg);
/* A hit on the mark: read the next window in the background. */
void luffd__ra_next_window(struct luffd__loop *l, struct luffd__region *r);
/* Install-ahead after a read for a fault at store page pg finished. */
uint64_t luffd__install_ahead(struct luffd__loop *l, struct luffd__region *r,
			      uint64_t pg);

#endif /* LUFFD_POLICY_H */
