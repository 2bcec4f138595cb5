/* SPDX-License-Identifier: MIT */
/* Contexts: settings, handler threads, teardown. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define DEF_QUEUE_DEPTH 64
#define DEF_CACHE_BYTES (64u << 20)
/* Larger than the kernel's 128 KiB read_ahead_kb and 64 KiB
 * fault_around_bytes: a user-space fault costs tens of microseconds, not
 * one, so it must bring in more per fault (see bench/README.md). */
#define DEF_READAHEAD (512u << 10)
#define DEF_INSTALL_AHEAD (256u << 10)
/* Long enough to catch the next fault of a thread faulting in a loop
 * (a fault costs 10-20 us when nobody sleeps), short enough that an idle
 * handler goes to sleep at once (see bench/README.md). */
#define DEF_SPIN_US 50

/* Features asked for when the kernel offers them.  FORK is not: a child
 * would need a handler of its own (see luffd_map()). */
#define WANTED_FEATURES (UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_POISON | \
			 UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | \
			 UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MOVE)
/* Staging chunks per handler thread, at most (see luffd_install). */
#define MAX_HP_CHUNKS 16


static int resolve_opts(struct luffd_ctx *ctx, const struct luffd_ctx_opts *o)
{
	struct luffd_ctx_opts d = { .sz = sizeof(d) };
	long ps = sysconf(_SC_PAGESIZE);
	size_t ra, per_loop, ia;

	if (o) {
		if (o->sz < sizeof(size_t) || o->sz > sizeof(d))
			return -EINVAL;
		memcpy(&d, o, o->sz);
	}
	if (ps <= 0 || (ps & (ps - 1)))
		return -EINVAL;
	ctx->page_size = (size_t)ps;
	ctx->page_shift = (unsigned int)__builtin_ctzl((unsigned long)ps);

	ctx->nloops = d.handler_threads ? d.handler_threads : 1;
	ctx->queue_depth = d.queue_depth ? d.queue_depth : DEF_QUEUE_DEPTH;
	ctx->cache_bytes = d.cache_bytes ? d.cache_bytes : DEF_CACHE_BYTES;
	ra = d.readahead_bytes ? d.readahead_bytes : DEF_READAHEAD;
	if (d.readahead_bytes == LUFFD_NO_READAHEAD)
		ra = ctx->page_size;
	if (ctx->nloops > 64 || ctx->queue_depth > LUFFD__MAX_QUEUE_DEPTH)
		return -EINVAL;
	/* A window is one readv: at most UIO_MAXIOV (1024) pages. */
	if (ra % ctx->page_size || ra / ctx->page_size > 1024)
		return -EINVAL;
	ctx->ra_pages = (uint32_t)(ra / ctx->page_size);
	if ((unsigned int)d.readahead_mode > LUFFD_RA_FIXED)
		return -EINVAL;
	ctx->ra_adaptive = d.readahead_mode == LUFFD_RA_ADAPTIVE;
	if (d.install_ahead_bytes == LUFFD_NO_INSTALL_AHEAD)
		ia = ctx->page_size;
	else if (d.install_ahead_bytes)
		ia = d.install_ahead_bytes;
	else
		ia = ctx->ra_adaptive ? DEF_INSTALL_AHEAD : ctx->page_size;
	if (ia % ctx->page_size || ia / ctx->page_size > 1024)
		return -EINVAL;
	ctx->ia_pages = (uint32_t)(ia / ctx->page_size);
	per_loop = ctx->cache_bytes / ctx->nloops;
	/* Room for two windows per handler: one being read while the other
	 * is consumed.  The default window shrinks to fit a small cache; a
	 * window asked for explicitly does not. */
	if (!d.readahead_bytes && per_loop < 2 * ra) {
		ra = (per_loop / 2) & ~(ctx->page_size - 1);
		ctx->ra_pages = (uint32_t)(ra / ctx->page_size);
	}
	if (!ra || per_loop < 2 * ra ||
	    (per_loop >> ctx->page_shift) > UINT32_MAX / 4)
		return -EINVAL;
	if ((unsigned int)d.install_mode > LUFFD_INSTALL_COPY)
		return -EINVAL;
	/* Staging chunks: a quarter of the handler's cache, taken out of
	 * it; with 4 KiB pages only (a chunk is one PMD), and not with fixed
	 * read-ahead, whose classification they would change.  Confirmed
	 * against the kernel's UFFDIO_MOVE in create. */
	ctx->hp_chunks = 0;
	if (d.install_mode == LUFFD_INSTALL_AUTO && ctx->ra_adaptive &&
	    ctx->page_size == 4096) {
		size_t n = per_loop / 4 / LUFFD__HP_SIZE;

		n = n < MAX_HP_CHUNKS ? n : MAX_HP_CHUNKS;
		if (n >= 2 && per_loop - n * LUFFD__HP_SIZE >= 2 * ra)
			ctx->hp_chunks = (uint32_t)n;
	}
	if ((unsigned int)d.open_mode > LUFFD_OPEN_USER_ONLY)
		return -EINVAL;
	if (d.trace_format != 0 && d.trace_format != LUFFD_TRACE_PFAULTS &&
	    d.trace_format != LUFFD_TRACE_CSV)
		return -EINVAL;
	if (d.trace_format && d.trace_fd < 0)
		return -EBADF;
	if (d.spin_us > 1000000 && d.spin_us != LUFFD_NO_SPIN)
		return -EINVAL;
	ctx->spin_us = d.spin_us ? d.spin_us : DEF_SPIN_US;
	if (d.spin_us == LUFFD_NO_SPIN)
		ctx->spin_us = 0;
	ctx->handler_cpus = d.handler_cpus;
	if (d.stripe_bytes % ctx->page_size)
		return -EINVAL;
	ctx->stripe_bytes = d.stripe_bytes;
	if (d.handler_cpus) {
		long ncpu = sysconf(_SC_NPROCESSORS_CONF);

		if (ncpu > 0 && ncpu < 64 &&
		    !(d.handler_cpus & ((1ull << ncpu) - 1)))
			return -EINVAL;
	}
	ctx->read_timeout_ms = d.read_timeout_ms ? d.read_timeout_ms : 30000;
	if (d.read_timeout_ms == LUFFD_NO_TIMEOUT)
		ctx->read_timeout_ms = 0;
	ctx->open_mode = d.open_mode;
	ctx->trace_fn = d.trace_fn;
	ctx->trace_arg = d.trace_arg;
	ctx->trace_format = d.trace_format;
	ctx->trace_fd = d.trace_fd;
	ctx->features = d.disable_features; /* resolved in create */
	return 0;
}

int luffd_ctx_create(const struct luffd_ctx_opts *opts, struct luffd_ctx **ctxp)
{
	struct luffd_ctx *ctx;
	uint64_t disable;
	uint32_t cache_pages;
	unsigned int i;
	int err;

	if (!ctxp)
		return -EINVAL;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	err = resolve_opts(ctx, opts);
	if (err)
		goto fail_free;
	disable = ctx->features;

	err = luffd__probe(ctx->open_mode, &ctx->kernel);
	if (err)
		goto fail_free;
	ctx->features = ctx->kernel.features & WANTED_FEATURES & ~disable;
	ctx->has_poison = ctx->features & UFFD_FEATURE_POISON;
	/* UFFDIO_MOVE shows in a registration's ioctls, not UFFDIO_API's:
	 * the feature bit is the promise.  A move refused all the same
	 * turns chunks off for that region (see loop.c). */
	if (!(ctx->features & UFFD_FEATURE_MOVE))
		ctx->hp_chunks = 0;
	if (ctx->trace_format) {
		err = luffd__trace_header(ctx);
		if (err)
			goto fail_free;
	}

	pthread_mutex_init(&ctx->lock, NULL);
	pthread_mutex_init(&ctx->guard_lock, NULL);
	pthread_cond_init(&ctx->guard_cv, NULL);
	ctx->t_start = luffd__now_ns();
	ctx->loops = calloc(ctx->nloops, sizeof(*ctx->loops));
	if (!ctx->loops) {
		err = -ENOMEM;
		goto fail_lock;
	}
	cache_pages = (uint32_t)(((ctx->cache_bytes / ctx->nloops) -
				  ctx->hp_chunks * LUFFD__HP_SIZE) >>
				 ctx->page_shift);
	for (i = 0; i < ctx->nloops; i++) {
		/* A loop that fails half-way is torn down with the rest. */
		err = luffd__loop_init(&ctx->loops[i], ctx, cache_pages);
		if (err) {
			i++;
			goto fail_loops;
		}
	}
	for (unsigned int j = 0; j < ctx->nloops; j++) {
		err = luffd__loop_start(&ctx->loops[j]);
		if (err)
			goto fail_loops;
	}
	*ctxp = ctx;
	return 0;

fail_loops:
	for (unsigned int j = 0; j < i; j++)
		luffd__loop_stop(&ctx->loops[j]);
	for (unsigned int j = 0; j < i; j++)
		luffd__loop_fini(&ctx->loops[j]);
	free(ctx->loops);
fail_lock:
	pthread_mutex_destroy(&ctx->lock);
	pthread_mutex_destroy(&ctx->guard_lock);
	pthread_cond_destroy(&ctx->guard_cv);
fail_free:
	free(ctx);
	return err;
}

int luffd_ctx_destroy(struct luffd_ctx *ctx)
{
	if (!ctx)
		return 0;
	if (luffd__on_handler_thread(ctx))
		return -EDEADLK;
	luffd__region_remove_all(ctx);
	luffd__guard_stop(ctx);
	for (unsigned int i = 0; i < ctx->nloops; i++)
		luffd__loop_stop(&ctx->loops[i]);
	for (unsigned int i = 0; i < ctx->nloops; i++) {
		luffd__trace_flush_loop(&ctx->loops[i]);
		luffd__loop_fini(&ctx->loops[i]);
	}
	free(ctx->loops);
	pthread_mutex_destroy(&ctx->lock);
	pthread_mutex_destroy(&ctx->guard_lock);
	pthread_cond_destroy(&ctx->guard_cv);
	free(ctx);
	return 0;
}

int luffd_ctx_features(const struct luffd_ctx *ctx, struct luffd_features *f)
{
	struct luffd_features o;

	if (!ctx || !f || f->sz < sizeof(size_t))
		return -EINVAL;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.api = ctx->kernel.api;
	o.kernel = ctx->kernel.features;
	o.enabled = ctx->features;
	o.ioctls = ctx->loops[0].ioctls;
	o.opened_by = ctx->loops[0].opened_by;
	o.has_poison = ctx->has_poison;
	o.has_move = (ctx->features & UFFD_FEATURE_MOVE) != 0;
	o.has_thread_id = (ctx->features & UFFD_FEATURE_THREAD_ID) != 0;
	o.user_mode_only = o.opened_by == LUFFD_OPEN_USER_ONLY;
	memcpy((char *)f + sizeof(f->sz), (char *)&o + sizeof(o.sz),
	       (f->sz < sizeof(o) ? f->sz : sizeof(o)) - sizeof(o.sz));
	return 0;
}

int luffd_ctx_sync(struct luffd_ctx *ctx)
{
	if (!ctx)
		return -EINVAL;
	if (luffd__on_handler_thread(ctx))
		return -EDEADLK;
	for (unsigned int i = 0; i < ctx->nloops; i++) {
		struct luffd__loop *l = &ctx->loops[i];
		uint64_t target;

		pthread_mutex_lock(&l->lock);
		target = atomic_fetch_add(&l->sync_req, 1) + 1;
		luffd__loop_kick(l);
		while (atomic_load(&l->sync_done) < target)
			pthread_cond_wait(&l->cv, &l->lock);
		pthread_mutex_unlock(&l->lock);
	}
	return 0;
}
