/* SPDX-License-Identifier: MIT */
/*
 * Dirty tracking (dirty.c): luffd_dirty() reads which pages of
 * write-tracked regions were written from the page tables.
 */
#ifndef LUFFD_DIRTY_H
#define LUFFD_DIRTY_H

#include <stdbool.h>

/* Tests only: take the pagemap read(2) path even where the kernel has
 * PAGEMAP_SCAN. */
extern bool luffd__dirty_no_scan;

#endif /* LUFFD_DIRTY_H */
