/* SPDX-License-Identifier: MIT */
/*
 * Counters, latency histograms and the trace.
 *
 * Each handler thread owns its counters and is their only writer, so an
 * update is a relaxed load and store (no locked instruction); readers sum
 * the threads' counters.  Latencies go into a log-linear histogram: values
 * below 16 ns exactly, then 16 sub-buckets per power of two, so any
 * percentile read back is within 1/16 of the true value; and into the
 * 24 log2-microsecond buckets of QEMU's postcopy-latency-dist, which
 * tools built around QEMU read as they are.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "blocktime.h"
#include "context.h"
#include "loop.h"
#include "stats.h"

#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)

unsigned int luffd__hist_index(uint64_t v)
{
	unsigned int msb;

	if (v < 16)
		return (unsigned int)v;
	msb = 63u - (unsigned int)__builtin_clzll(v);
	return (msb - 3) * 16 + (unsigned int)((v >> (msb - 4)) & 15);
}

/* The middle of bucket idx. */
uint64_t luffd__hist_value(unsigned int idx)
{
	unsigned int msb, sub;
	uint64_t lo, width;

	if (idx < 16)
		return idx;
	msb = idx / 16 + 3;
	sub = idx % 16;
	lo = (1ull << msb) | ((uint64_t)sub << (msb - 4));
	width = 1ull << (msb - 4);
	return lo + width / 2;
}

/*
 * QEMU's blocktime_latency_account(): the latency in whole microseconds,
 * bucket floor(log2(us)), 0 for under 1 us, the last bucket for anything
 * past it.
 */
unsigned int luffd__dist_bucket(uint64_t ns)
{
	uint64_t us = ns / 1000;
	unsigned int b = us ? 63u - (unsigned int)__builtin_clzll(us) : 0;

	return b < LUFFD_LATENCY_DIST_BUCKETS ? b
					      : LUFFD_LATENCY_DIST_BUCKETS - 1;
}

void luffd__stats_init(struct luffd__stats *s)
{
	memset(s, 0, sizeof(*s));
	for (int c = 0; c < LUFFD__NCLS; c++)
		atomic_init(&s->lat_min[c], UINT64_MAX);
}

void luffd__stats_record(struct luffd__stats *s, enum luffd_class cls,
			 uint64_t lat)
{
	unsigned int c = luffd__cls_slot(cls);

	luffd__inc(s->faults[c], 1);
	luffd__inc(s->lat_sum[c], lat);
	luffd__inc(s->hist[c][luffd__hist_index(lat)], 1);
	luffd__inc(s->dist[luffd__dist_bucket(lat)], 1);
	if (lat < LD(s->lat_min[c]))
		atomic_store_explicit(&s->lat_min[c], lat,
				      memory_order_relaxed);
	if (lat > LD(s->lat_max[c]))
		atomic_store_explicit(&s->lat_max[c], lat,
				      memory_order_relaxed);
}

/* Sum the histograms of class slots [c0, c1) over every loop into h. */
static uint64_t sum_hist(const struct luffd_ctx *ctx, int c0, int c1,
			 uint64_t *h)
{
	uint64_t total = 0;

	memset(h, 0, sizeof(uint64_t) * LUFFD__HIST_BUCKETS);
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__stats *s = &ctx->loops[i].stats;

		for (int c = c0; c < c1; c++)
			for (unsigned int b = 0; b < LUFFD__HIST_BUCKETS; b++) {
				uint64_t n = LD(s->hist[c][b]);

				h[b] += n;
				total += n;
			}
	}
	return total;
}

static uint64_t hist_pct(const uint64_t *h, uint64_t total, double p,
			 uint64_t lo, uint64_t hi)
{
	uint64_t rank, seen = 0, v;

	/* The smallest value with at least p% of the samples at or below. */
	rank = (uint64_t)((p / 100.0) * (double)total + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > total)
		rank = total;
	for (unsigned int b = 0; b < LUFFD__HIST_BUCKETS; b++) {
		seen += h[b];
		if (seen >= rank) {
			v = luffd__hist_value(b);
			if (v < lo)
				v = lo;
			if (v > hi)
				v = hi;
			return v;
		}
	}
	return hi;
}

int luffd_latency_percentile(const struct luffd_ctx *ctx,
			     enum luffd_class cls, double p, uint64_t *ns)
{
	uint64_t h[LUFFD__HIST_BUCKETS], total, lo = UINT64_MAX, hi = 0;
	int c0 = (int)luffd__cls_slot(cls), c1 = c0 + 1;

	if (!ctx || !ns ||
	    ((unsigned int)cls > LUFFD_NR_CLASSES && cls != LUFFD_WP) ||
	    !(p > 0.0 && p <= 100.0))
		return -EINVAL;
	if (cls == LUFFD_NR_CLASSES) {
		c0 = 0;
		c1 = LUFFD__NCLS;
	}
	total = sum_hist(ctx, c0, c1, h);
	if (!total)
		return -ENODATA;
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++)
		for (int c = c0; c < c1; c++) {
			uint64_t mn = LD(ctx->loops[i].stats.lat_min[c]);
			uint64_t mx = LD(ctx->loops[i].stats.lat_max[c]);

			lo = mn < lo ? mn : lo;
			hi = mx > hi ? mx : hi;
		}
	*ns = hist_pct(h, total, p, lo, hi);
	return 0;
}

/* The latency summary of class slot c, over every loop. */
static void latency_of(const struct luffd_ctx *ctx, int c,
		       struct luffd_latency *lat)
{
	uint64_t h[LUFFD__HIST_BUCKETS];
	uint64_t total, sum = 0, lo = UINT64_MAX, hi = 0;

	total = sum_hist(ctx, c, c + 1, h);
	if (!total)
		return;
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__stats *s = &ctx->loops[i].stats;
		uint64_t mn = LD(s->lat_min[c]), mx = LD(s->lat_max[c]);

		sum += LD(s->lat_sum[c]);
		lo = mn < lo ? mn : lo;
		hi = mx > hi ? mx : hi;
	}
	lat->count = total;
	lat->min_ns = lo;
	lat->max_ns = hi;
	lat->mean_ns = sum / total;
	lat->p50_ns = hist_pct(h, total, 50, lo, hi);
	lat->p90_ns = hist_pct(h, total, 90, lo, hi);
	lat->p99_ns = hist_pct(h, total, 99, lo, hi);
	lat->p999_ns = hist_pct(h, total, 99.9, lo, hi);
}

int luffd_stats_get(const struct luffd_ctx *ctx, struct luffd_stats *out)
{
	if (!ctx || !out || out->sz < offsetof(struct luffd_stats, latency))
		return -EINVAL;
	/* Complete: the faults served so far are counted (see the header);
	 * the wait changes only the handlers' sync counters. */
	if (!luffd__on_library_thread(ctx))
		luffd_ctx_sync((struct luffd_ctx *)(uintptr_t)ctx);
	return luffd_stats_peek(ctx, out);
}

int luffd_stats_peek(const struct luffd_ctx *ctx, struct luffd_stats *out)
{
	struct luffd_stats st;

	if (!ctx || !out || out->sz < offsetof(struct luffd_stats, latency))
		return -EINVAL;
	memset(&st, 0, sizeof(st));
	st.sz = sizeof(st);
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__stats *s = &ctx->loops[i].stats;

		for (int c = 0; c < LUFFD_NR_CLASSES; c++)
			st.faults[c] += LD(s->faults[c]);
		st.bytes_read += LD(s->bytes_read);
		st.reads += LD(s->reads);
		st.readahead_pages += LD(s->readahead_pages);
		st.coalesced += LD(s->coalesced);
		st.evictions += LD(s->evictions);
		st.eexist += LD(s->eexist);
		st.eagain += LD(s->eagain);
		st.waits += LD(s->waits);
		st.trace_errors += LD(s->trace_errors);
		st.events_remove += LD(s->ev_remove);
		st.events_unmap += LD(s->ev_unmap);
		st.events_remap += LD(s->ev_remap);
		st.orphan_faults += LD(s->orphans);
		st.read_timeouts += LD(s->timeouts);
		st.callback_misuse += LD(s->misuse);
		st.installed_ahead += LD(s->installed_ahead);
		st.moved_pages += LD(s->moved_pages);
		st.requests_cancelled += LD(s->cancels);
		st.late_completions += LD(s->late);
		st.internal_errors += LD(s->internal_errors);
		st.prefetched += LD(s->prefetched);
		st.app_installed += LD(s->app_installed);
		st.pushed += LD(s->pushed);
		st.wp_faults += LD(s->faults[LUFFD_NR_CLASSES]);
		st.wp_unexpected += LD(s->wp_unexpected);
		st.wp_joined += LD(s->wp_joined);
		st.written_back += LD(s->wb_pages);
		st.writeback_writes += LD(s->wb_writes);
		st.writeback_errors += LD(s->wb_errors);
		st.writeback_flushes += LD(s->wb_flushes);
		st.refaults += LD(s->refaults);
		st.evicted += LD(s->evicted);
		st.resident_bytes += LD(s->resident);
		st.resident_peak_bytes += LD(s->resident_peak);
		for (int b = 0; b < LUFFD_LATENCY_DIST_BUCKETS; b++)
			st.latency_dist[b] += LD(s->dist[b]);
	}
	for (int c = 0; c < LUFFD_NR_CLASSES; c++)
		latency_of(ctx, c, &st.latency[c]);
	latency_of(ctx, LUFFD_NR_CLASSES, &st.wp_latency);
	luffd__bt_snapshot(ctx->bt, &st);
	st.resident_bytes <<= ctx->cfg.page_shift;
	st.resident_peak_bytes <<= ctx->cfg.page_shift;
	/* Copy what the caller's struct has room for. */
	memcpy((char *)out + sizeof(out->sz), (char *)&st + sizeof(st.sz),
	       (out->sz < sizeof(st) ? out->sz : sizeof(st)) - sizeof(st.sz));
	return 0;
}

int luffd_blocktime_threads(const struct luffd_ctx *ctx,
			    struct luffd_thread_blocktime *out, size_t n)
{
	if (!ctx || (!out && n))
		return -EINVAL;
	return luffd__bt_threads(ctx->bt, out, n);
}

/* ------------------------------------------------------------------------
 * Trace writer
 * ---------------------------------------------------------------------- */

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int flush_locked(struct luffd__trace *t, struct luffd__stats *s)
{
	int err = 0;

	if (t->len) {
		err = write_all(t->fd, t->buf, t->len);
		if (err)
			luffd__inc(s->trace_errors, 1);
		t->len = 0;
	}
	return err;
}

int luffd__trace_flush(struct luffd__trace *t, struct luffd__stats *s)
{
	int err;

	if (!t->buf)
		return 0;
	pthread_mutex_lock(&t->lock);
	err = flush_locked(t, s);
	pthread_mutex_unlock(&t->lock);
	return err;
}

int luffd__trace_header(enum luffd_trace_format format, int fd)
{
	static const char hdr[] = "time_ns,tid,addr,rw,class,latency_ns,error\n";

	if (format != LUFFD_TRACE_CSV)
		return 0;
	return write_all(fd, hdr, sizeof(hdr) - 1);
}

void luffd__trace_emit(struct luffd__trace *t, struct luffd__stats *s,
		       const struct luffd_fault *f)
{
	uint64_t since = f->time_ns - t->t_start;
	char line[160];
	int n;

	if (t->fn)
		t->fn(t->arg, f);
	if (!t->buf)
		return;
	if (t->format == LUFFD_TRACE_PFAULTS)
		n = snprintf(line, sizeof(line),
			     "%" PRIu64 ":%" PRIu32 ":%" PRIu64 ":%c:%s:%" PRIu64 "\n",
			     since / 1000, f->tid, f->addr, f->write ? 'w' : 'r',
			     f->cls == LUFFD_MAJOR ? "major" : "minor",
			     f->latency_ns / 1000);
	else
		n = snprintf(line, sizeof(line),
			     "%" PRIu64 ",%" PRIu32 ",0x%" PRIx64 ",%c,%s,%" PRIu64 ",%d\n",
			     since, f->tid, f->addr, f->write ? 'w' : 'r',
			     luffd_class_name(f->cls), f->latency_ns, f->error);
	/* Uncontended unless luffd_trace_flush() runs at this moment; the
	 * writer is opt-in, and a write(2) happens once per 64 KiB. */
	pthread_mutex_lock(&t->lock);
	if (t->len + (size_t)n > LUFFD__TRACE_BUF)
		flush_locked(t, s);
	memcpy(t->buf + t->len, line, (size_t)n);
	t->len += (size_t)n;
	pthread_mutex_unlock(&t->lock);
}
