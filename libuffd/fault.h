/* SPDX-License-Identifier: MIT */
/*
 * Serving a fault (fault.c): from the cache (MINOR), by joining a read in
 * flight (MAJOR, coalesced), or by starting one (MAJOR); and what a
 * finished read means for the faults waiting on it.
 */
#ifndef LUFFD_FAULT_H
#define LUFFD_FAULT_H

#include <stdbool.h>
#include <stdint.h>

struct luffd__loop;

/* Serve fault fi (its region held). */
void luffd__fault_serve(struct luffd__loop *l, uint32_t fi);
/* Act on every completion queued for l (handler thread). */
void luffd__fault_completions(struct luffd__loop *l);
/* The same, stopping after `background` prefetch or push reads: true if
 * it stopped there (more may be queued). */
bool luffd__fault_completions_some(struct luffd__loop *l,
				   unsigned int background);
/* Give the faults waiting for a free read or slot, or to retry an install
 * that met -EAGAIN, another try; those past read_timeout_ms get SIGBUS. */
void luffd__faults_rerun(struct luffd__loop *l);
/* When the oldest fault waiting for a free read times out (ns from now),
 * or UINT64_MAX. */
uint64_t luffd__faults_next_deadline(struct luffd__loop *l, uint64_t now);

#endif /* LUFFD_FAULT_H */
