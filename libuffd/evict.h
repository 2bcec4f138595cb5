/* SPDX-License-Identifier: MIT */
/*
 * The resident limit (evict.c): an evictor thread per context keeps the
 * pages installed in its evictable regions under luffd_ctx_opts'
 * resident_bytes, and the handlers tell it what they see (faults,
 * installs) through each region's per-page state.
 */
#ifndef LUFFD_EVICT_H
#define LUFFD_EVICT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct luffd_ctx;
struct luffd__loop;
struct luffd__region;

/* Per-page state (luffd__region.pst). */
#define LUFFD__PS_REF 1u      /* faulted since the clock hand passed */
#define LUFFD__PS_EVICTING 2u /* the evictor is deciding: a write fault
				 waits (the handler retries it) */
#define LUFFD__PS_WPING 4u    /* the handler is lifting the protection:
				 the evictor leaves the page */
#define LUFFD__PS_EVICTED 8u  /* dropped by the evictor: a fault on it is
				 a refault */

/* Context set-up and teardown: the evictor runs while cfg.resident_pages
 * is not 0.  Stop it (the thread: faults stop waiting for it) before the
 * regions go, free it once the handlers are gone (they look at it). */
int luffd__evict_start(struct luffd_ctx *ctx);
void luffd__evict_stop(struct luffd_ctx *ctx);
void luffd__evict_free(struct luffd_ctx *ctx);

/* Handler, once per turn: publish the pages this thread installed since
 * (luffd__tls_installed) and wake the evictor past the high mark. */
void luffd__evict_note(struct luffd__loop *l);

/* Handler: pages that may still go in before the high mark (UINT64_MAX
 * without a limit), or for install-ahead (ahead) before the low one:
 * pages nobody asked for would only be dropped again at once. */
uint64_t luffd__evict_room(struct luffd__loop *l, bool ahead);
/* Handler: should a missing fault that came at t0 wait for the evictor
 * (no room, and it has not waited long)?  Wakes the evictor if so. */
bool luffd__evict_hold(struct luffd__loop *l, uint64_t t0);
/* Handler: a missing fault at addr of region r (r->pst set): mark it used,
 * count a refault. */
void luffd__evict_touch(struct luffd__loop *l, struct luffd__region *r,
			uint64_t addr);
/* Handler: may a write fault at addr lift the protection now?  False
 * while the evictor decides about the page (the fault is retried); when
 * true, luffd__evict_wp_done() follows the un-protect. */
bool luffd__evict_wp_begin(struct luffd__region *r, uint64_t addr);
void luffd__evict_wp_done(struct luffd__region *r, uint64_t addr);

#endif /* LUFFD_EVICT_H */
