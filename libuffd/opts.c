/* SPDX-License-Identifier: MIT */
/*
 * Settings: luffd_ctx_opts resolved into a context's struct luffd__cfg.
 * Every refusal says which field and why through the print callback.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "opts.h"

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
#define DEF_TIMEOUT_MS 30000
/* Callback workers: a latency-bound store (a network round trip per
 * fill()) needs as many fills in flight as threads fault at once. */
#define DEF_WORKERS 16
#define MAX_WORKERS 1024
/* Staging chunks per handler thread, at most (see luffd_install). */
#define MAX_HP_CHUNKS 16

#define bad(field, why, ...)                                                 \
	(pr_warn("luffd_ctx_opts." field ": " why "\n", ##__VA_ARGS__),      \
	 -EINVAL)

int luffd__opts_copy(void *dst, size_t dst_sz, const void *src, size_t src_sz,
		     size_t min, const char *what)
{
	memset(dst, 0, dst_sz);
	if (src_sz < min) {
		pr_warn("%s: sz %zu is smaller than the %zu bytes it must "
			"hold\n", what, src_sz, min);
		return -EINVAL;
	}
	for (size_t i = dst_sz; i < src_sz; i++)
		if (((const unsigned char *)src)[i]) {
			pr_warn("%s: sz %zu is larger than this libuffd's "
				"%zu and byte %zu is set: an option this "
				"version does not have\n",
				what, src_sz, dst_sz, i);
			return -EINVAL;
		}
	memcpy(dst, src, src_sz < dst_sz ? src_sz : dst_sz);
	return 0;
}

/* A byte count that must be whole pages, at most max_pages of them. */
static bool pages_ok(const struct luffd__cfg *c, size_t v, size_t max_pages)
{
	return !(v % c->page_size) && v / c->page_size <= max_pages;
}

static int resolve_sizes(struct luffd__cfg *c, const struct luffd_ctx_opts *d)
{
	size_t ra, per_loop, ia;

	ra = d->readahead_bytes ? d->readahead_bytes : DEF_READAHEAD;
	c->ra_default = !d->readahead_bytes;
	if (d->readahead_bytes == LUFFD_NO_READAHEAD)
		ra = c->page_size;
	/* A window is one readv: at most UIO_MAXIOV (1024) pages. */
	if (!pages_ok(c, ra, 1024))
		return bad("readahead_bytes", "%zu is not a multiple of the "
			   "page size (%zu) up to 1024 pages", ra,
			   c->page_size);
	c->ra_pages = (uint32_t)(ra / c->page_size);
	if ((unsigned int)d->readahead_mode > LUFFD_RA_FIXED)
		return bad("readahead_mode", "%u is not a luffd_readahead",
			   (unsigned int)d->readahead_mode);
	c->ra_adaptive = d->readahead_mode == LUFFD_RA_ADAPTIVE;
	if (d->install_ahead_bytes == LUFFD_NO_INSTALL_AHEAD)
		ia = c->page_size;
	else if (d->install_ahead_bytes)
		ia = d->install_ahead_bytes;
	else
		ia = c->ra_adaptive ? DEF_INSTALL_AHEAD : c->page_size;
	if (!pages_ok(c, ia, 1024))
		return bad("install_ahead_bytes", "%zu is not a multiple of "
			   "the page size (%zu) up to 1024 pages", ia,
			   c->page_size);
	c->ia_pages = (uint32_t)(ia / c->page_size);
	per_loop = c->cache_bytes / c->nloops;
	/* Room for two windows per handler: one being read while the other
	 * is consumed.  The default window shrinks to fit a small cache; a
	 * window asked for explicitly does not. */
	if (!d->readahead_bytes && per_loop < 2 * ra) {
		ra = (per_loop / 2) & ~(c->page_size - 1);
		c->ra_pages = (uint32_t)(ra / c->page_size);
	}
	if (!ra || per_loop < 2 * ra)
		return bad("cache_bytes", "%zu leaves %zu per handler thread, "
			   "less than two read-ahead windows of %zu",
			   c->cache_bytes, per_loop, ra);
	if ((per_loop >> c->page_shift) > UINT32_MAX / 4)
		return bad("cache_bytes", "%zu is too large", c->cache_bytes);
	if ((unsigned int)d->install_mode > LUFFD_INSTALL_COPY)
		return bad("install_mode", "%u is not a luffd_install",
			   (unsigned int)d->install_mode);
	/* Staging chunks: a quarter of the handler's cache, taken out of
	 * it; with 4 KiB pages only (a chunk is one PMD), and not with fixed
	 * read-ahead, whose classification they would change.  A chunk is a
	 * 2 MiB read: only where the window allows that much (the default,
	 * or an explicit window of 2 MiB or more).  Confirmed against the
	 * kernel's UFFDIO_MOVE in create. */
	c->hp_chunks = 0;
	if (d->install_mode == LUFFD_INSTALL_AUTO && c->ra_adaptive &&
	    c->page_size == 4096 &&
	    (c->ra_default || ra >= LUFFD__HP_SIZE)) {
		size_t n = per_loop / 4 / LUFFD__HP_SIZE;

		n = n < MAX_HP_CHUNKS ? n : MAX_HP_CHUNKS;
		if (n >= 2 && per_loop - n * LUFFD__HP_SIZE >= 2 * ra)
			c->hp_chunks = (uint32_t)n;
	}
	return 0;
}

static int resolve_threads(struct luffd__cfg *c, const struct luffd_ctx_opts *d)
{
	if (d->spin_us > 1000000 && d->spin_us != LUFFD_NO_SPIN)
		return bad("spin_us", "%u is more than 1000000",
			   d->spin_us);
	c->spin_us = d->spin_us ? d->spin_us : DEF_SPIN_US;
	if (d->spin_us == LUFFD_NO_SPIN)
		c->spin_us = 0;
	c->handler_cpus = d->handler_cpus;
	if (d->handler_cpus) {
		long ncpu = sysconf(_SC_NPROCESSORS_CONF);

		if (ncpu > 0 && ncpu < 64 &&
		    !(d->handler_cpus & ((1ull << ncpu) - 1)))
			return bad("handler_cpus", "%#llx names none of the "
				   "%ld CPUs", (unsigned long long)
				   d->handler_cpus, ncpu);
	}
	if (d->stripe_bytes % c->page_size)
		return bad("stripe_bytes", "%zu is not a multiple of the "
			   "page size (%zu)", d->stripe_bytes, c->page_size);
	c->stripe_bytes = d->stripe_bytes;
	if (d->callback_threads > MAX_WORKERS)
		return bad("callback_threads", "%u is more than %u",
			   d->callback_threads, MAX_WORKERS);
	c->workers = d->callback_threads ? d->callback_threads : DEF_WORKERS;
	/* More could never all be blocked: only that many are kept. */
	if (d->blocktime_threads > LUFFD_BLOCKTIME_MAX_THREADS)
		return bad("blocktime_threads", "%u is more than %u",
			   d->blocktime_threads, LUFFD_BLOCKTIME_MAX_THREADS);
	c->bt_threads = d->blocktime_threads;
	if ((unsigned int)d->wp_mode > LUFFD_WP_ASYNC)
		return bad("wp_mode", "%u is not a luffd_wp_mode",
			   (unsigned int)d->wp_mode);
	c->wp_async = d->wp_mode == LUFFD_WP_ASYNC;
	if (d->resident_bytes % c->page_size)
		return bad("resident_bytes", "%zu is not a multiple of the "
			   "page size (%zu)", d->resident_bytes, c->page_size);
	if (d->resident_bytes && c->wp_async)
		return bad("resident_bytes", "needs LUFFD_WP_SYNC (a write the "
			   "kernel records by itself could land between the "
			   "check that a page is clean and its drop)");
	c->resident_pages = d->resident_bytes / c->page_size;
	return 0;
}

int luffd__opts_resolve(struct luffd__cfg *c, const struct luffd_ctx_opts *o)
{
	struct luffd_ctx_opts d = { .sz = sizeof(d) };
	long ps = sysconf(_SC_PAGESIZE);
	int err;

	if (o) {
		err = luffd__opts_copy(&d, sizeof(d), o, o->sz,
				       sizeof(size_t), "luffd_ctx_opts");
		if (err)
			return err;
	}
	if (ps <= 0 || (ps & (ps - 1)))
		return -EINVAL;
	c->page_size = (size_t)ps;
	c->page_shift = (unsigned int)__builtin_ctzl((unsigned long)ps);

	c->nloops = d.handler_threads ? d.handler_threads : 1;
	if (c->nloops > 64)
		return bad("handler_threads", "%u is more than 64", c->nloops);
	c->queue_depth = d.queue_depth ? d.queue_depth : DEF_QUEUE_DEPTH;
	if (c->queue_depth > 4096)
		return bad("queue_depth", "%u is more than 4096",
			   c->queue_depth);
	c->cache_bytes = d.cache_bytes ? d.cache_bytes : DEF_CACHE_BYTES;
	err = resolve_sizes(c, &d);
	if (!err)
		err = resolve_threads(c, &d);
	if (err)
		return err;
	if ((unsigned int)d.open_mode > LUFFD_OPEN_USER_ONLY)
		return bad("open_mode", "%u is not a luffd_open_mode",
			   (unsigned int)d.open_mode);
	if (d.trace_format != 0 && d.trace_format != LUFFD_TRACE_PFAULTS &&
	    d.trace_format != LUFFD_TRACE_CSV)
		return bad("trace_format", "%u is not a luffd_trace_format",
			   (unsigned int)d.trace_format);
	if (d.trace_format && d.trace_fd < 0) {
		pr_warn("luffd_ctx_opts.trace_fd: %d is not a descriptor\n",
			d.trace_fd);
		return -EBADF;
	}
	c->read_timeout_ms = d.read_timeout_ms ? d.read_timeout_ms
					       : DEF_TIMEOUT_MS;
	if (d.read_timeout_ms == LUFFD_NO_TIMEOUT)
		c->read_timeout_ms = 0;
	c->open_mode = d.open_mode;
	c->trace_fn = d.trace_fn;
	c->trace_arg = d.trace_arg;
	c->trace_format = d.trace_format;
	c->trace_fd = d.trace_fd;
	c->disable = d.disable_features;
	return 0;
}
