/* SPDX-License-Identifier: MIT */
/* Contexts: settings, handler threads, teardown. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blocktime.h"
#include "context.h"
#include "evict.h"
#include "guard.h"
#include "loop.h"
#include "map.h"
#include "pool.h"
#include "stats.h"
#include "writeback.h"

/* Features asked for when the kernel offers them.  FORK is not: a child
 * would need a handler of its own (see luffd_map()). */
#define WANTED_FEATURES (UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_POISON | \
			 UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | \
			 UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MOVE)

static void ctx_free(struct luffd_ctx *ctx)
{
	luffd__pool_stop(ctx->pool);
	free(ctx->loops);
	luffd__bt_free(ctx->bt);
	pthread_mutex_destroy(&ctx->lock);
	pthread_mutex_destroy(&ctx->wb_lock);
	pthread_mutex_destroy(&ctx->guard_lock);
	pthread_cond_destroy(&ctx->guard_cv);
	free(ctx);
}

/* What the kernel offers, what the context will use. */
static int negotiate(struct luffd__cfg *c)
{
	int err = luffd__probe(c->open_mode, &c->kernel);

	if (err)
		return err;
	c->features = c->kernel.features &
		      (WANTED_FEATURES |
		       (c->wp_async ? UFFD_FEATURE_WP_ASYNC : 0)) &
		      ~c->disable;
	/* Under a resident limit the evictor drops pages all the time:
	 * with REMOVE events each madvise() would wait for a handler to
	 * read its event, and every install meanwhile fail with -EAGAIN.
	 * libuffd only counts those events. */
	if (c->resident_pages)
		c->features &= ~(uint64_t)UFFD_FEATURE_EVENT_REMOVE;
	c->has_poison = c->features & UFFD_FEATURE_POISON;
	/* UFFDIO_MOVE shows in a registration's ioctls, not UFFDIO_API's:
	 * the feature bit is the promise.  A move refused all the same
	 * turns chunks off for that region (see chunk.c). */
	if (!(c->features & UFFD_FEATURE_MOVE))
		c->hp_chunks = 0;
	return 0;
}

int luffd_ctx_create(const struct luffd_ctx_opts *opts, struct luffd_ctx **ctxp)
{
	struct luffd_ctx *ctx;
	uint32_t cache_pages;
	unsigned int i = 0, n;
	int err;

	if (ctxp)
		*ctxp = NULL;
	if (!ctxp)
		return -EINVAL;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	pthread_mutex_init(&ctx->lock, NULL);
	pthread_mutex_init(&ctx->wb_lock, NULL);
	pthread_mutex_init(&ctx->guard_lock, NULL);
	pthread_cond_init(&ctx->guard_cv, NULL);
	err = luffd__opts_resolve(&ctx->cfg, opts);
	if (!err)
		err = negotiate(&ctx->cfg);
	if (!err && ctx->cfg.trace_format)
		err = luffd__trace_header(ctx->cfg.trace_format,
					  ctx->cfg.trace_fd);
	if (err) {
		ctx_free(ctx);
		return err;
	}
	n = ctx->cfg.nloops;
	ctx->cfg.t_start = luffd__now_ns();
	ctx->loops = calloc(n, sizeof(*ctx->loops));
	ctx->pool = luffd__pool_new(ctx, ctx->cfg.workers);
	ctx->bt = luffd__bt_new(ctx->cfg.bt_threads,
				ctx->cfg.features & UFFD_FEATURE_THREAD_ID);
	if (!ctx->loops || !ctx->pool || !ctx->bt) {
		ctx_free(ctx);
		return -ENOMEM;
	}
	cache_pages = (uint32_t)(((ctx->cfg.cache_bytes / n) -
				  ctx->cfg.hp_chunks * LUFFD__HP_SIZE) >>
				 ctx->cfg.page_shift);
	for (; i < n; i++) {
		/* A loop that fails half-way is torn down with the rest. */
		err = luffd__loop_init(&ctx->loops[i], ctx, &ctx->cfg,
				       cache_pages);
		if (err) {
			i++;
			goto fail_loops;
		}
	}
	for (unsigned int j = 0; j < n; j++) {
		err = luffd__loop_start(&ctx->loops[j]);
		if (err)
			goto fail_loops;
	}
	err = luffd__evict_start(ctx);
	if (err)
		goto fail_loops;
	*ctxp = ctx;
	return 0;

fail_loops:
	for (unsigned int j = 0; j < i; j++)
		luffd__loop_stop(&ctx->loops[j]);
	luffd__pool_stop(ctx->pool);
	ctx->pool = NULL;
	for (unsigned int j = 0; j < i; j++)
		luffd__loop_fini(&ctx->loops[j]);
	ctx_free(ctx);
	return err;
}

int luffd_ctx_destroy(struct luffd_ctx *ctx)
{
	int err;

	if (!ctx)
		return 0;
	if (luffd__on_library_thread(ctx))
		return -EDEADLK;
	/* The evictor first (it holds regions while it works); then the
	 * write-back regions go back to their stores, while the handlers
	 * still serve (a write may fault a dropped page in). */
	luffd__evict_stop(ctx);
	err = luffd__writeback_all(ctx);
	if (err)
		pr_warn("luffd_ctx_destroy: write-back failed (%d): the "
			"pages not written are lost\n", err);
	luffd__map_remove_all(ctx);
	luffd__guard_stop(ctx);
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++)
		luffd__loop_stop(&ctx->loops[i]);
	luffd__evict_free(ctx); /* the handlers looked at it */
	/* After the handlers (they look workers up), before their queues
	 * close (work still queued is answered into them). */
	luffd__pool_stop(ctx->pool);
	ctx->pool = NULL;
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++)
		luffd__loop_fini(&ctx->loops[i]);
	ctx_free(ctx);
	return err;
}

int luffd_ctx_features(const struct luffd_ctx *ctx, struct luffd_features *f)
{
	struct luffd_features o;

	if (!ctx || !f || f->sz < sizeof(size_t))
		return -EINVAL;
	memset(&o, 0, sizeof(o));
	o.sz = sizeof(o);
	o.api = ctx->cfg.kernel.api;
	o.kernel = ctx->cfg.kernel.features;
	o.enabled = ctx->cfg.features;
	o.ioctls = ctx->loops[0].ioctls;
	o.opened_by = ctx->loops[0].opened_by;
	o.has_poison = ctx->cfg.has_poison;
	o.has_move = (ctx->cfg.features & UFFD_FEATURE_MOVE) != 0;
	o.has_thread_id = (ctx->cfg.features & UFFD_FEATURE_THREAD_ID) != 0;
	o.user_mode_only = o.opened_by == LUFFD_OPEN_USER_ONLY;
	o.has_wp_async = (ctx->cfg.features & UFFD_FEATURE_WP_ASYNC) != 0;
	memcpy((char *)f + sizeof(f->sz), (char *)&o + sizeof(o.sz),
	       (f->sz < sizeof(o) ? f->sz : sizeof(o)) - sizeof(o.sz));
	return 0;
}

int luffd_ctx_sync(struct luffd_ctx *ctx)
{
	if (!ctx)
		return -EINVAL;
	if (luffd__on_library_thread(ctx))
		return -EDEADLK;
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++)
		luffd__loop_sync(&ctx->loops[i]);
	return 0;
}

int luffd_trace_flush(struct luffd_ctx *ctx)
{
	int err = 0, e;

	if (!ctx)
		return -EINVAL;
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__loop *l = &ctx->loops[i];

		e = luffd__trace_flush(&l->trace, &l->stats);
		if (e && !err)
			err = e;
	}
	return err;
}
