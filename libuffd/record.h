/* SPDX-License-Identifier: MIT */
/*
 * Fault records (record.c): one per fault being served, from its message
 * until its page is installed; the lists they wait on; and a fault's
 * outcome: its page installed (copy, zeroes) or SIGBUS, through the
 * install layer, then recorded (counters, histogram, trace).
 */
#ifndef LUFFD_RECORD_H
#define LUFFD_RECORD_H

#include <stdint.h>

#include "stats.h"
#include "util.h"

struct luffd__bt;
struct luffd__cfg;
struct luffd__region;

struct luffd__fault {
	uint64_t addr;
	/* When libuffd read the message: the start of the fault's latency
	 * and of its blocked interval (blocktime.h). */
	uint64_t t0;
	struct luffd__region *region; /* held (NULL while an orphan) */
	uint32_t tid;
	uint32_t next;  /* waiter / pending / retry list */
	uint16_t bt;    /* its place in the blocktime (LUFFD__BT_*) */
	uint8_t write;
	uint8_t waited; /* waited for a read: MAJOR whatever comes next */
	uint8_t parked; /* has waited for a free slot (counted once) */
	uint8_t alone;  /* a shared read failed: read its page alone */
	uint8_t nochunk; /* a chunk could not serve it: page path only */
	uint8_t wp;     /* a write-protect fault (the page is present) */
};

struct luffd__flist { uint32_t head, tail; };

/* A handler thread's records: grown when every one is in use (there is
 * one per blocked thread), never shrunk, so steady state allocates
 * nothing. */
struct luffd__records {
	struct luffd__fault *f;
	uint32_t n, free;
	struct luffd__flist retry;   /* install returned -EAGAIN */
	int uffd;
	const struct luffd__cfg *cfg;
	struct luffd__stats *stats;
	struct luffd__trace *trace;
	struct luffd__bt *bt;        /* the context's blocktime */
	unsigned char *zero_page;    /* a page of zeroes (write faults in
					holes) */
	int pagemap;                 /* /proc/self/pagemap, or -1 */
	/* The page last un-protected in each slot (by page number), to
	 * tell a second writer's WP fault (luffd__serve_unprotect()). */
	uint64_t *wp_recent;
};
#define LUFFD__WP_RECENT 4096

int luffd__records_init(struct luffd__records *rs, int uffd,
			const struct luffd__cfg *cfg, struct luffd__stats *st,
			struct luffd__trace *tr, struct luffd__bt *bt);
void luffd__records_fini(struct luffd__records *rs);

static inline struct luffd__fault *luffd__F(struct luffd__records *rs,
					    uint32_t i)
{
	return &rs->f[i];
}
/* A record, or LUFFD__NIL when memory is short. */
uint32_t luffd__fault_alloc(struct luffd__records *rs);
void luffd__fault_free(struct luffd__records *rs, uint32_t i);
/* Let fault i go without recording it (its region's hold too); whoever
 * lets it go wakes its thread, so its blocked interval ends now
 * (luffd__fault_drop_at(): at now, a time the caller has at hand). */
void luffd__fault_drop(struct luffd__records *rs, uint32_t i);
void luffd__fault_drop_at(struct luffd__records *rs, uint32_t i,
			  uint64_t now);
/* Served: count, time and trace fault i as cls (err: the negative errno
 * of an ERROR), then let it go. */
void luffd__fault_record(struct luffd__records *rs, uint32_t i,
			 enum luffd_class cls, int err);

static inline void luffd__flist_init(struct luffd__flist *q)
{
	q->head = q->tail = LUFFD__NIL;
}
void luffd__flist_push(struct luffd__records *rs, struct luffd__flist *q,
		       uint32_t i);
/* Take the whole list (to run it again). */
static inline uint32_t luffd__flist_take(struct luffd__flist *q)
{
	uint32_t h = q->head;

	q->head = q->tail = LUFFD__NIL;
	return h;
}

/*
 * Outcomes.  Each installs fault i's page (waking its thread) and records
 * it, or, when its region is going away, drops it (the unregister wakes
 * the thread).  -EEXIST is success: the page is there (a racing fault or
 * an earlier message installed it).  -EAGAIN (the address space is
 * changing) puts the fault on the retry list.
 */
/* The page from src (cls, or MAJOR for a fault that waited). */
void luffd__serve_copy(struct luffd__records *rs, uint32_t i, const void *src,
		       enum luffd_class cls);
/* Zeroes (ZERO). */
void luffd__serve_zero(struct luffd__records *rs, uint32_t i);
/* SIGBUS (ERROR, err). */
void luffd__serve_error(struct luffd__records *rs, uint32_t i, int err);
/* A write-protect fault: lift the protection, which wakes the writer,
 * and record it as LUFFD_WP; a second writer of a page already
 * un-protected is only woken (wp_joined). */
void luffd__serve_unprotect(struct luffd__records *rs, uint32_t i);
/* Dropped if its region is going away (true). */
bool luffd__fault_drop_if_dead(struct luffd__records *rs, uint32_t i);

#endif /* LUFFD_RECORD_H */
