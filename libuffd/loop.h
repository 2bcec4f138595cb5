/* SPDX-License-Identifier: MIT */
/*
 * A handler thread (loop.c): its userfaultfd, io_uring, completion queue,
 * cache, staging chunks, reads, fault records and counters.  Nothing in
 * here is shared with another handler, so nothing on the hot path is.
 */
#ifndef LUFFD_LOOP_H
#define LUFFD_LOOP_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cache.h"
#include "chunk.h"
#include "compat.h"
#include "opts.h"
#include "prefetch.h"
#include "read.h"
#include "record.h"
#include "region.h"
#include "req.h"
#include "stats.h"
#include "writeback.h"

#define LUFFD__MSG_BATCH 64

struct luffd_ctx;

struct luffd__loop {
	struct luffd_ctx *ctx;
	const struct luffd__cfg *cfg;
	int uffd;
	uint64_t ioctls;
	enum luffd_open_mode opened_by;
	struct luffd__cq *cq;
	struct io_uring ring;
	bool ring_ok;
	pthread_t thread;
	bool started;
	bool init_done; /* the thread's ring set-up finished, with init_err */
	int init_err;
	atomic_bool stop;
	/* The start handshake, luffd_ctx_sync() and the guard's stash. */
	pthread_mutex_t lock;
	pthread_cond_t cv;
	/* luffd_ctx_sync(): requests seen by the handler so far. */
	atomic_uint_fast64_t sync_req, sync_done;

	struct luffd__rtab rtab;
	struct luffd__cache cache;
	struct luffd__chunks ch;
	struct luffd__reads rd;
	struct luffd__records rs;
	struct luffd__flist pending; /* waiting for a cache or read slot */
	struct luffd__flist orphans; /* no region yet (see msg.c) */
	struct luffd__prefetch pf;   /* luffd_prefetch() jobs */
	struct luffd__inval inval;   /* cache pages write-back made stale */
	unsigned char *bounce;       /* tail page of a memory store */

	/* Callback guard (guard.c).  cb_since: when the callback running on
	 * this handler started (0: none).  The guard stashes the messages it
	 * had to read to find the handler's own fault; the handler serves
	 * them before reading more. */
	pid_t tid;
	_Atomic uint64_t cb_since;
	atomic_bool cb_misuse;
	atomic_bool zapping;          /* handler dropping the zero pages */
	uint64_t misuse_addr[32];     /* pages given a zero page, written by
					 the guard before cb_misuse is set */
	atomic_uint misuse_n;
	atomic_size_t stash_n;
	struct luffd__stashed { struct uffd_msg m; uint64_t t; } *stash;
	size_t stash_cap;

	struct uffd_msg msgs[LUFFD__MSG_BATCH];
	struct luffd__stats stats;
	struct luffd__trace trace;
};

int luffd__loop_init(struct luffd__loop *l, struct luffd_ctx *ctx,
		     const struct luffd__cfg *cfg, uint32_t cache_pages);
int luffd__loop_start(struct luffd__loop *l);
void luffd__loop_stop(struct luffd__loop *l);
void luffd__loop_fini(struct luffd__loop *l);
/* Wait until every fault installed by now has been counted (ctx_sync). */
void luffd__loop_sync(struct luffd__loop *l);

#endif /* LUFFD_LOOP_H */
