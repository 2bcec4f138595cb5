/* SPDX-License-Identifier: MIT */
/*
 * Dirty tracking (dirty.c): luffd_dirty() reads which pages of
 * write-tracked regions were written from the page tables.
 */
#ifndef LUFFD_DIRTY_H
#define LUFFD_DIRTY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct luffd_ctx;
struct luffd_range;

/* The written pages of [a, end) (page-aligned, every page in
 * LUFFD_REGISTER_WP regions of ctx) into out[0..n), protected again
 * unless keep: the ranges found, or -errno (see luffd_dirty()). */
ssize_t luffd__dirty_scan(struct luffd_ctx *ctx, uint64_t a, uint64_t end,
			  struct luffd_range *out, size_t n, bool keep);

/* Tests only: take the pagemap read(2) path even where the kernel has
 * PAGEMAP_SCAN. */
extern bool luffd__dirty_no_scan;

#endif /* LUFFD_DIRTY_H */
