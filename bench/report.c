/* SPDX-License-Identifier: MIT */
/*
 * Statistics over stored latency samples, the table on stdout, the JSON
 * report and the gnuplot latency CDF.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

const char *engine_name(enum engine e)
{
	static const char *const names[] = { "libuffd", "mmap", "naive",
					     "pread", "fill", "bare",
					     "prefetch", "nbdcopy",
					     "mmap-shared" };

	return (unsigned int)e < NR_ENGINES ? names[e] : "?";
}

static const char *tclass_name(int c)
{
	return c == CLS_NOFAULT ? "nofault"
				: luffd_class_name((enum luffd_class)c);
}

/* ------------------------------------------------------------------------
 * Statistics: exact percentiles (nearest rank) over sorted samples
 * ---------------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t rank(const uint32_t *s, uint64_t n, double p)
{
	double k = ceil(p / 100.0 * (double)n);
	uint64_t i = k < 1 ? 0 : (uint64_t)k - 1;

	return s[i < n ? i : n - 1];
}

/* Sorts samples in place. */
void latsum_from(uint32_t *samples, uint64_t n, struct latsum *ls)
{
	uint64_t i, sum = 0;

	memset(ls, 0, sizeof(*ls));
	if (!n)
		return;
	qsort(samples, n, sizeof(*samples), cmp_u32);
	for (i = 0; i < n; i++)
		sum += samples[i];
	ls->count = n;
	ls->min = samples[0];
	ls->max = samples[n - 1];
	ls->mean = sum / n;
	ls->p50 = rank(samples, n, 50);
	ls->p90 = rank(samples, n, 90);
	ls->p99 = rank(samples, n, 99);
	ls->p999 = rank(samples, n, 99.9);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Keep about 1200 points: evenly spaced ranks plus a dense tail. */
int cdf_from_sorted(const uint32_t *sorted, uint64_t n, struct cdf *c)
{
	uint64_t *idx, i, k = 0, m = 0;

	memset(c, 0, sizeof(*c));
	if (!n)
		return 0;
	idx = malloc(1300 * sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	if (n <= 1200) {
		for (i = 0; i < n; i++)
			idx[k++] = i;
	} else {
		for (i = 0; i <= 1000; i++)
			idx[k++] = i * (n - 1) / 1000;
		for (i = 1; i <= 200; i++) {
			double f = 0.99 + 0.01 * (double)i / 200.0;
			double r = ceil(f * (double)n);

			idx[k++] = r < 1 ? 0 : (uint64_t)r - 1 < n ?
				   (uint64_t)r - 1 : n - 1;
		}
		qsort(idx, k, sizeof(*idx), cmp_u64);
	}
	c->x_us = malloc(k * sizeof(float));
	c->y = malloc(k * sizeof(float));
	if (!c->x_us || !c->y) {
		free(idx);
		cdf_free(c);
		return -ENOMEM;
	}
	for (i = 0; i < k; i++) {
		if (m && idx[i] == idx[i - 1])
			continue;
		c->x_us[m] = (float)sorted[idx[i]] / 1000.0f;
		c->y[m] = (float)((double)(idx[i] + 1) / (double)n);
		m++;
	}
	c->n = m;
	free(idx);
	return 0;
}

void cdf_free(struct cdf *c)
{
	free(c->x_us);
	free(c->y);
	memset(c, 0, sizeof(*c));
}

/* ------------------------------------------------------------------------
 * Ratios between engines
 * ---------------------------------------------------------------------- */

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median of one metric over the repetitions of (eng, pat, cold); NAN when a
 * repetition failed or there is none. */
/* median_of() metrics past wall, GB/s, p50 and p99. */
#define M_FPS 4        /* faults/s */
#define M_MAJOR_P50 5  /* p50 of the touches served as major faults */
#define M_CALIB_FPS 6  /* faults/s of the zero-latency calibration runs */
#define M_DELAY 7      /* the store's served delay (median), ns */
#define M_READ_AMP 8   /* bytes read / bytes touched */
#define M_TPS 9        /* ooc: touches/s */
#define M_RSS 10       /* ooc: peak RSS, sampled */

static double median_of(const struct config *cfg, const struct run *runs,
			size_t nruns, enum engine eng, int pat, bool cold,
			int metric)
{
	double v[1024];
	size_t i, n = 0;

	for (i = 0; i < nruns && n < 1024; i++) {
		const struct run *r = &runs[i];

		if (r->eng != eng || r->pat != pat || r->cold != cold ||
		    r->calib != (metric == M_CALIB_FPS))
			continue;
		if (!r->ok)
			return NAN;
		v[n++] = metric == 0 ? (double)r->wall_ns :
			 metric == 1 ? r->gbps :
			 metric == 2 ? (double)r->lat.p50 :
			 metric == 3 ? (double)r->lat.p99 :
			 metric == M_MAJOR_P50 ?
				 (double)r->lat_cls[LUFFD_MAJOR].p50 :
			 metric == M_DELAY ? (double)r->store_delay_p50 :
			 metric == M_READ_AMP ? r->read_amp :
			 metric == M_TPS ? r->ooc.touches_per_s :
			 metric == M_RSS ? (double)r->ooc.peak_rss :
				 r->faults_per_s;
	}
	(void)cfg;
	if (!n)
		return NAN;
	qsort(v, n, sizeof(v[0]), cmp_dbl);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static bool has_engine(const struct config *cfg, enum engine e)
{
	int i;

	for (i = 0; i < cfg->nengines; i++)
		if (cfg->engines[i] == e)
			return true;
	return false;
}

static double div_or_nan(double a, double b)
{
	return isnan(a) || isnan(b) || b == 0 ? NAN : a / b;
}

static const enum engine dens[] = { ENG_MMAP, ENG_NAIVE, ENG_PREAD,
				    ENG_FILL, ENG_BARE, ENG_NBDCOPY,
				    ENG_MMAP_SHARED };
#define NR_DENS (sizeof(dens) / sizeof(dens[0]))
/* Room for every ratio: each pattern, warm and cold, each denominator. */
#define MAX_RATIOS (MAX_PATTERNS * 2 * NR_DENS)

size_t compute_ratios(const struct config *cfg, const struct run *runs,
		      size_t nruns, struct ratio *out, size_t max)
{
	size_t k = 0;
	int p, s, d;

	if (!has_engine(cfg, ENG_LIBUFFD))
		return 0;
	for (p = 0; p < cfg->npats; p++) {
		for (s = 0; s < 2; s++) {
			bool cold = s == 1;

			if ((cold && !cfg->do_cold) || (!cold && !cfg->do_warm))
				continue;
			for (d = 0; d < (int)NR_DENS; d++) {
				struct ratio *q;
				double m[2][4];
				int i;

				if (!has_engine(cfg, dens[d]) || k >= max)
					continue;
				for (i = 0; i < 4; i++) {
					m[0][i] = median_of(cfg, runs, nruns,
							    ENG_LIBUFFD, p,
							    cold, i);
					m[1][i] = median_of(cfg, runs, nruns,
							    dens[d], p, cold,
							    i);
				}
				q = &out[k++];
				q->pat = p;
				q->cold = cold;
				q->num = ENG_LIBUFFD;
				q->den = dens[d];
				q->time_ratio = div_or_nan(m[0][0], m[1][0]);
				q->throughput_ratio = div_or_nan(m[0][1],
								 m[1][1]);
				q->p50_ratio = div_or_nan(m[0][2], m[1][2]);
				q->p99_ratio = div_or_nan(m[0][3], m[1][3]);
			}
		}
	}
	return k;
}

size_t compute_overlap(const struct config *cfg, const struct run *runs,
		       size_t nruns, struct overlap *out, size_t max)
{
	size_t k = 0;

	if (!cfg->store_lat_us || !has_engine(cfg, ENG_LIBUFFD))
		return 0;
	for (int p = 0; p < cfg->npats && k < max; p++) {
		for (int s = 0; s < 2 && k < max; s++) {
			bool cold = s == 1;
			struct overlap *o = &out[k];

			if ((cold && !cfg->do_cold) || (!cold && !cfg->do_warm))
				continue;
			o->pat = p;
			o->cold = cold;
			o->fps = median_of(cfg, runs, nruns, ENG_LIBUFFD, p,
					   cold, M_FPS);
			o->zero_fps = median_of(cfg, runs, nruns, ENG_LIBUFFD,
						p, cold, M_CALIB_FPS);
			o->naive_fps = median_of(cfg, runs, nruns, ENG_NAIVE,
						 p, cold, M_FPS);
			o->per_rtt = (double)cfg->threads * 1e6 /
				     (double)cfg->store_lat_us;
			o->ideal = isnan(o->zero_fps) || o->zero_fps > o->per_rtt
					   ? o->per_rtt : o->zero_fps;
			o->ratio = div_or_nan(o->fps, o->ideal);
			o->delay_p50 = median_of(cfg, runs, nruns, ENG_LIBUFFD,
						 p, cold, M_DELAY);
			/* No served delay known: NaN.  (For nbd it is the
			 * server's round with `threads` reads in flight,
			 * measured through libnbd alone.) */
			if (!(o->delay_p50 > 0))
				o->delay_p50 = NAN;
			o->per_rtt_served = div_or_nan((double)cfg->threads *
						       1e9, o->delay_p50);
			o->ideal_served = isnan(o->zero_fps) ||
					  o->zero_fps > o->per_rtt_served ?
					  o->per_rtt_served : o->zero_fps;
			o->ratio_served = div_or_nan(o->fps, o->ideal_served);
			o->naive_ratio = div_or_nan(o->naive_fps, o->ideal);
			k++;
		}
	}
	return k;
}

size_t compute_prefetch(const struct config *cfg, const struct run *runs,
			size_t nruns, struct pf_cmp *out, size_t max)
{
	size_t k = 0;

	if (!has_engine(cfg, ENG_LIBUFFD) || !has_engine(cfg, ENG_PREFETCH))
		return 0;
	for (int p = 0; p < cfg->npats && k < max; p++) {
		for (int s = 0; s < 2 && k < max; s++) {
			bool cold = s == 1;
			struct pf_cmp *o = &out[k];

			if ((cold && !cfg->do_cold) || (!cold && !cfg->do_warm))
				continue;
			o->pat = p;
			o->cold = cold;
			o->p50 = median_of(cfg, runs, nruns, ENG_LIBUFFD, p, cold,
					   M_MAJOR_P50);
			o->pf_p50 = median_of(cfg, runs, nruns, ENG_PREFETCH, p,
					      cold, M_MAJOR_P50);
			o->ratio = div_or_nan(o->pf_p50, o->p50);
			o->gbps_ratio = div_or_nan(
				median_of(cfg, runs, nruns, ENG_PREFETCH, p,
					  cold, 1),
				median_of(cfg, runs, nruns, ENG_LIBUFFD, p,
					  cold, 1));
			k++;
		}
	}
	return k;
}

/* ------------------------------------------------------------------------
 * Table
 * ---------------------------------------------------------------------- */

static const char *cache_name(bool cold)
{
	return cold ? "cold" : "warm";
}

static const char *store_name(enum store_kind k)
{
	static const char *const n[] = { "file", "memory", "async",
					 "callback", "nbd" };

	return n[k];
}

static void print_extra(FILE *out, const struct config *cfg,
			const struct run *runs, size_t nruns)
{
	struct overlap ov[MAX_PATTERNS * 2];
	struct pf_cmp pf[MAX_PATTERNS * 2];
	size_t n, i;

	n = compute_overlap(cfg, runs, nruns, ov, MAX_PATTERNS * 2);
	if (n) {
		fprintf(out, "\nOverlap: --store %s, %" PRIu64 " us per request, "
			"%u faulting threads.  ideal = min(threads / latency, "
			"the same store's\nrate at zero latency in this run "
			"(luffd@0 rows)); medians, faults/s\n\n",
			store_name(cfg->store), cfg->store_lat_us,
			cfg->threads);
		fprintf(out, "%-10s %-4s %10s %11s %12s %10s %13s %11s\n",
			"pattern", "data", "libuffd", "threads/lat",
			"zero-latency", "ideal", "libuffd/ideal",
			"naive/ideal");
		for (i = 0; i < n; i++)
			fprintf(out, "%-10s %-4s %10.0f %11.0f %12.0f %10.0f "
				"%13.3f %11.3f\n", cfg->pats[ov[i].pat].name,
				cache_name(ov[i].cold), ov[i].fps,
				ov[i].per_rtt, ov[i].zero_fps, ov[i].ideal,
				ov[i].ratio, ov[i].naive_ratio);
		fprintf(out, "\nThe same against the delay the store really "
			"served (median, arrival to answer: a timer\nwakes "
			"late, on a VM by tens of us%s):\n\n",
			cfg->store == STORE_NBD ?
				"; nbd: the server's round with as many "
				"reads in flight\nas faulting threads, "
				"through libnbd alone" : "");
		fprintf(out, "%-10s %-4s %10s %14s %12s %10s %13s\n",
			"pattern", "data", "libuffd", "served delay",
			"threads/that", "ideal", "libuffd/ideal");
		for (i = 0; i < n; i++)
			fprintf(out, "%-10s %-4s %10.0f %11.1f us %12.0f "
				"%10.0f %13.3f\n", cfg->pats[ov[i].pat].name,
				cache_name(ov[i].cold), ov[i].fps,
				ov[i].delay_p50 / 1e3, ov[i].per_rtt_served,
				ov[i].ideal_served, ov[i].ratio_served);
	}
	n = compute_prefetch(cfg, runs, nruns, pf, MAX_PATTERNS * 2);
	if (n) {
		fprintf(out, "\nPrefetch: demand-fault p50 = first-touch "
			"latency of the touches served as major faults (us),\n"
			"libuffd alone and with luffd_prefetch() of the whole "
			"mapping started before the first touch\n\n");
		fprintf(out, "%-10s %-4s %12s %13s %9s %15s\n", "pattern",
			"data", "libuffd p50", "prefetch p50", "ratio",
			"GB/s pf/alone");
		for (i = 0; i < n; i++)
			fprintf(out, "%-10s %-4s %12.1f %13.1f %9.3f %15.3f\n",
				cfg->pats[pf[i].pat].name,
				cache_name(pf[i].cold), pf[i].p50 / 1e3,
				pf[i].pf_p50 / 1e3, pf[i].ratio,
				pf[i].gbps_ratio);
	}
}

/* The range of latency bucket b, in us, as QEMU's buckets hold it: bucket 0
 * takes everything under 2 us, the last everything from 2^23 us up. */
static void dist_range(char *s, size_t n, int b)
{
	if (b == LUFFD_LATENCY_DIST_BUCKETS - 1)
		snprintf(s, n, "[%llu,inf)", 1ull << b);
	else
		snprintf(s, n, "[%llu,%llu)", b ? 1ull << b : 0ull,
			 1ull << (b + 1));
}

/* Blocktime and the latency distribution of every run that used libuffd
 * (its luffd_stats snapshot, taken once every fault had ended). */
/* Bytes read / bytes touched per engine that reads (median). */
static void print_read_amp(FILE *out, const struct config *cfg,
			   const struct run *runs, size_t nruns)
{
	static const enum engine eng[] = { ENG_LIBUFFD, ENG_PREFETCH,
					   ENG_NAIVE, ENG_MMAP };
	bool head = false;

	for (int p = 0; p < cfg->npats; p++)
		for (int s = 0; s < 2; s++) {
			bool cold = s == 1;
			char line[256];
			int k;

			if ((cold && !cfg->do_cold) || (!cold && !cfg->do_warm))
				continue;
			k = snprintf(line, sizeof(line), "%-10s %-4s",
				     cfg->pats[p].name, cache_name(cold));
			for (size_t e = 0; e < sizeof(eng) / sizeof(eng[0]);
			     e++) {
				double v;

				if (!has_engine(cfg, eng[e]))
					continue;
				v = median_of(cfg, runs, nruns, eng[e], p,
					      cold, M_READ_AMP);
				k += snprintf(line + k, sizeof(line) - (size_t)k,
					      " %s %.2f", engine_name(eng[e]),
					      v);
			}
			if (!head) {
				fprintf(out, "\nRead amplification (bytes "
					"read / bytes touched, medians): "
					"libuffd and prefetch what their "
					"store read\n(page-cache hits "
					"included), naive a page per fault, "
					"mmap what the kernel read from the "
					"device\n(0 when warm)\n\n");
				head = true;
			}
			fprintf(out, "%s\n", line);
		}
}

static void print_blocktime(FILE *out, const struct config *cfg,
			    const struct run *runs, size_t nruns)
{
	fprintf(out, "\nBlocktime (libuffd, as QEMU post-copy reports it): "
		"time each faulting thread was blocked\nin faults, from the "
		"handler reading the fault message to the wake-up after the "
		"install;\nsum and max over the threads, any = at least one "
		"thread blocked, all = every faulting thread\nblocked at once; "
		"wall = the run's wall time, for scale; ms\n\n");
	fprintf(out, "%-10s %-4s %-7s %3s %7s %10s %9s %9s %9s %9s\n",
		"pattern", "data", "engine", "rep", "threads", "sum", "max",
		"any", "all", "wall");
	for (size_t i = 0; i < nruns; i++) {
		const struct run *r = &runs[i];
		const struct luffd_stats *s = &r->st;

		if (!is_luffd(r->eng) || !r->has_luffd)
			continue;
		fprintf(out, "%-10s %-4s %-7s %3u %7" PRIu64 " %10.1f %9.1f "
			"%9.1f %9.1f %9.1f\n", cfg->pats[r->pat].name,
			cache_name(r->cold),
			r->calib ? "luffd@0" : engine_name(r->eng), r->rep + 1,
			s->blocktime_threads_seen,
			(double)s->blocktime_sum_ns / 1e6,
			(double)s->blocktime_max_ns / 1e6,
			(double)s->blocktime_any_ns / 1e6,
			(double)s->blocktime_all_ns / 1e6,
			(double)r->wall_ns / 1e6);
	}
	fprintf(out, "\nService latency distribution (QEMU's postcopy-latency-"
		"dist buckets, [2^N, 2^(N+1)) us;\nnon-empty buckets only): "
		"faults per bucket\n\n");
	for (size_t i = 0; i < nruns; i++) {
		const struct run *r = &runs[i];

		if (!is_luffd(r->eng) || !r->has_luffd)
			continue;
		fprintf(out, "%-10s %-4s %-7s %3u ", cfg->pats[r->pat].name,
			cache_name(r->cold),
			r->calib ? "luffd@0" : engine_name(r->eng), r->rep + 1);
		for (int b = 0; b < LUFFD_LATENCY_DIST_BUCKETS; b++) {
			char range[48];

			if (!r->st.latency_dist[b])
				continue;
			dist_range(range, sizeof(range), b);
			fprintf(out, " %s:%" PRIu64, range,
				r->st.latency_dist[b]);
		}
		fputc('\n', out);
	}
}

/* ------------------------------------------------------------------------
 * --workload ooc
 * ---------------------------------------------------------------------- */

#define MIB(b) ((double)(b) / 1048576.0)
#define US(ns) ((double)(ns) / 1000.0)

void ooc_notes(FILE *out, const struct config *cfg)
{
	bool luffd = has_engine(cfg, ENG_LIBUFFD);

	fprintf(out, "Out of core: a %.1f MiB file, %u thread(s), write ratio "
		"%.2f, %u pass(es) in random order.\n", MIB(cfg->size),
		cfg->threads, cfg->write_ratio, cfg->passes);
	if (cfg->cg_ver != CG_NONE)
		fprintf(out, "The limit: every run is a child process in a "
			"memory cgroup of its own (cgroup %s, %s %.1f MiB: "
			"page cache and\nanonymous memory alike)%s",
			cfg->cg_ver == CG_V1 ? "v1" : "v2",
			cfg->cg_ver == CG_V1 ? "memory.limit_in_bytes"
					     : "memory.max",
			MIB(cfg->memory_limit), luffd ? "; " : ".\n");
	else
		fprintf(out, "No memory cgroup (%s): mmap-shared is not held "
			"to the limit, its peak RSS is reported beside it%s",
			cfg->cg_why ? cfg->cg_why : "?", luffd ? "; " : ".\n");
	if (luffd)
		fprintf(out, "libuffd %skeeps itself under resident_bytes "
			"= %.1f MiB (its cache: %.1f MiB).\n",
			cfg->cg_ver != CG_NONE ? "also " : "",
			MIB(cfg->resident_bytes), MIB(cfg->cache_bytes));
	if (luffd && !cfg->resident_effective)
		fprintf(out, "libuffd: resident_bytes has no effect in this "
			"build (%s): before the evictor.\nlibuffd runs without "
			"the cgroup (it would be OOM-killed); its peak RSS is "
			"reported, not held.\n", cfg->resident_why);
}

static void print_ooc(FILE *out, const struct config *cfg,
		      const struct run *runs, size_t nruns)
{
	struct ratio rat[MAX_RATIOS];
	size_t i, n;

	fputc('\n', out);
	ooc_notes(out, cfg);
	fprintf(out, "\nTimes: touch = the touches, sync = the write-back "
		"after them (libuffd: luffd_msync(LUFFD_MSYNC_DURABLE),\n"
		"mmap-shared: msync(MS_SYNC)); touches/s and GB/s (touched "
		"bytes, 1 GB = 1e9 B) over both.  Latency: of\none touch, as "
		"its thread saw it (us).  Memory (MiB): RSS = VmRSS sampled "
		"every %d ms, hwm = the run's\nVmHWM, cgroup = the cgroup's "
		"own peak usage (page cache included), limit = the cgroup's "
		"(- : none).\n\n", 5);
	fprintf(out, "%-11s %3s %9s %8s %10s %6s %7s %7s %8s %8s %8s %8s "
		"%8s %6s  %s\n", "engine", "rep", "touch ms", "sync ms",
		"touches/s", "GB/s", "p50", "p99", "max", "RSS", "hwm",
		"cgroup", "limit", "lost", "result");
	for (i = 0; i < nruns; i++) {
		const struct run *r = &runs[i];
		const struct ooc_run *o = &r->ooc;
		char cgp[16] = "-", lim[16] = "-";

		if (o->cgroup) {
			snprintf(cgp, sizeof(cgp), "%.1f", MIB(o->cg_peak));
			snprintf(lim, sizeof(lim), "%.1f", MIB(o->limit));
		}
		fprintf(out, "%-11s %3u %9.1f %8.1f %10.0f %6.3f %7.1f %7.1f "
			"%8.1f %8.1f %8.1f %8s %8s %6" PRIu64 "  %s\n",
			engine_name(r->eng), r->rep + 1,
			(double)o->touch_ns / 1e6, (double)o->sync_ns / 1e6,
			o->touches_per_s, r->gbps, US(r->lat.p50),
			US(r->lat.p99), US(r->lat.max), MIB(o->peak_rss),
			MIB(o->rss_hwm), cgp, lim, o->lost_writes,
			r->ok ? "ok" : "FAILED");
	}
	fputc('\n', out);
	for (i = 0; i < nruns; i++) {
		const struct run *r = &runs[i];
		const struct luffd_stats *s = &r->st;

		if (r->has_luffd)
			fprintf(out, "%-11s %3u touches %" PRIu64 ", writes %"
				PRIu64 "; faults minor %" PRIu64 " major %"
				PRIu64 " wp %" PRIu64 "; reads %" PRIu64
				" (%.1f MiB); written back %" PRIu64
				" pages in %" PRIu64 " writes; cache "
				"evictions %" PRIu64 "\n", engine_name(r->eng),
				r->rep + 1, r->ooc.touches, r->ooc.writes,
				s->faults[LUFFD_MINOR], s->faults[LUFFD_MAJOR],
				s->wp_faults, s->reads, MIB(s->bytes_read),
				s->written_back, s->writeback_writes,
				s->evictions);
		else
			fprintf(out, "%-11s %3u touches %" PRIu64 ", writes %"
				PRIu64 "; faults minor %" PRIu64 " major %"
				PRIu64 " (getrusage); device read %.1f MiB, "
				"written %.1f MiB\n", engine_name(r->eng),
				r->rep + 1, r->ooc.touches, r->ooc.writes,
				r->faults[LUFFD_MINOR], r->faults[LUFFD_MAJOR],
				MIB(r->ooc.dev_read), MIB(r->ooc.dev_write));
	}
	n = compute_ratios(cfg, runs, nruns, rat, MAX_RATIOS);
	for (i = 0; i < n; i++)
		if (rat[i].den == ENG_MMAP_SHARED)
			fprintf(out, "\nlibuffd/mmap-shared (medians over %u "
				"repetition(s)): throughput %.3f (touches/s, "
				"above 1: libuffd faster), p50 latency %.3f, "
				"p99 %.3f\n", cfg->repeat,
				rat[i].throughput_ratio, rat[i].p50_ratio,
				rat[i].p99_ratio);
	for (int e = 0; e < cfg->nengines; e++) {
		double rss = median_of(cfg, runs, nruns, cfg->engines[e], 0,
				       true, M_RSS);

		fprintf(out, "%s peak RSS / resident limit (median): %.3f\n",
			engine_name(cfg->engines[e]),
			div_or_nan(rss, (double)cfg->resident_bytes));
	}
}

static void fmt_ratio(char *b, size_t n, double v)
{
	if (isnan(v))
		snprintf(b, n, "-");
	else
		snprintf(b, n, v < 10 ? "%.3gx" : "%.0fx", v);
}

void print_table(FILE *out, const struct config *cfg, const struct run *runs,
		 size_t nruns)
{
	struct ratio rat[MAX_RATIOS];
	size_t i, nrat;
	bool any_luffd = false;

	if (cfg->workload == WL_OOC) {
		print_ooc(out, cfg, runs, nruns);
		return;
	}
	fprintf(out, "\nFirst-touch latency as the faulting thread saw it "
		"(exact percentiles over every touched page, us); faults as "
		"each engine counts them\n(mmap: getrusage; zero/err: n/a for "
		"mmap).  GB/s = touched bytes / wall time, 1 GB = 1e9 B.\n\n");
	fprintf(out, "%-10s %-4s %-7s %3s %9s %6s %9s %7s %7s %5s %3s "
		"%7s %7s %7s %7s %8s  %s\n", "pattern", "data", "engine", "rep",
		"wall ms", "GB/s", "faults/s", "minor", "major", "zero", "err",
		"p50", "p90", "p99", "p99.9", "max", "result");
	for (i = 0; i < nruns; i++) {
		const struct run *r = &runs[i];

		if (is_luffd(r->eng) && r->has_luffd)
			any_luffd = true;
		fprintf(out, "%-10s %-4s %-7s %3u %9.1f %6.2f %9.0f %7" PRIu64
			" %7" PRIu64 " %5" PRIu64 " %3" PRIu64
			" %7.1f %7.1f %7.1f %7.1f %8.1f  %s\n",
			cfg->pats[r->pat].name, cache_name(r->cold),
			r->calib ? "luffd@0" : engine_name(r->eng), r->rep + 1,
			(double)r->wall_ns / 1e6, r->gbps, r->faults_per_s,
			r->faults[LUFFD_MINOR], r->faults[LUFFD_MAJOR],
			r->faults[LUFFD_ZERO], r->faults[LUFFD_ERROR],
			US(r->lat.p50), US(r->lat.p90), US(r->lat.p99),
			US(r->lat.p999), US(r->lat.max),
			r->ok ? (r->cache_state_ok ? "ok" : "ok (cache?)")
			      : "FAILED");
	}

	if (any_luffd) {
		fprintf(out, "\nlibuffd by fault class: handler = service "
			"latency from luffd_stats_get (histogram, within "
			"6.25%%);\nthread = first-touch latency of the pages "
			"the handler put in that class (exact), us\n\n");
		fprintf(out, "%-10s %-4s %3s %-7s %8s %8s %8s %8s %8s | "
			"%8s %8s %8s %8s %8s\n", "pattern", "data", "rep",
			"class", "handler", "p50", "p99", "p99.9", "max",
			"thread", "p50", "p99", "p99.9", "max");
		for (i = 0; i < nruns; i++) {
			const struct run *r = &runs[i];
			int c;

			if (!is_luffd(r->eng) || !r->has_luffd || r->calib)
				continue;
			if (r->eng == ENG_PREFETCH)
				fprintf(out, "%-10s %-4s %3u (with a prefetch "
					"of the whole mapping: %" PRIu64
					" pages prefetched)\n",
					cfg->pats[r->pat].name,
					cache_name(r->cold), r->rep + 1,
					r->st.prefetched);
			for (c = 0; c < NR_TCLASSES; c++) {
				const struct luffd_latency *h =
					c < LUFFD_NR_CLASSES ?
					&r->st.latency[c] : NULL;
				const struct latsum *t = &r->lat_cls[c];

				if (!t->count && (!h || !h->count))
					continue;
				fprintf(out, "%-10s %-4s %3u %-7s ",
					cfg->pats[r->pat].name,
					cache_name(r->cold), r->rep + 1,
					tclass_name(c));
				if (h)
					fprintf(out, "%8" PRIu64 " %8.1f %8.1f"
						" %8.1f %8.1f | ", h->count,
						US(h->p50_ns), US(h->p99_ns),
						US(h->p999_ns),
						US(h->max_ns));
				else
					fprintf(out, "%8s %8s %8s %8s %8s | ",
						"-", "-", "-", "-", "-");
				fprintf(out, "%8" PRIu64 " %8.1f %8.1f %8.1f"
					" %8.1f\n", t->count, US(t->p50),
					US(t->p99), US(t->p999), US(t->max));
			}
			fprintf(out, "%-10s %-4s %3u reads %" PRIu64
				", MiB read %.1f, read-ahead pages %" PRIu64
				", coalesced %" PRIu64 ", evictions %" PRIu64
				", eexist %" PRIu64 ", eagain %" PRIu64
				", waits %" PRIu64 "\n",
				cfg->pats[r->pat].name, cache_name(r->cold),
				r->rep + 1, r->st.reads,
				(double)r->st.bytes_read / 1048576.0,
				r->st.readahead_pages, r->st.coalesced,
				r->st.evictions, r->st.eexist, r->st.eagain,
				r->st.waits);
		}
		print_blocktime(out, cfg, runs, nruns);
	}

	nrat = compute_ratios(cfg, runs, nruns, rat,
			      sizeof(rat) / sizeof(rat[0]));
	if (nrat) {
		fprintf(out, "\nRatios (medians over %u repetition(s)):\n"
			"  time = wall(libuffd) / wall(other): above 1 means "
			"libuffd took longer (worse)\n"
			"  throughput = GB/s(libuffd) / GB/s(other): above 1 "
			"means libuffd is faster (better)\n"
			"  p50, p99 = first-touch latency(libuffd) / "
			"latency(other): above 1 means libuffd is slower\n\n",
			cfg->repeat);
		fprintf(out, "%-10s %-4s %-14s %8s %11s %8s %8s\n", "pattern",
			"data", "pair", "time", "throughput", "p50", "p99");
		for (i = 0; i < nrat; i++) {
			char a[32], b[32], c[32], d[32], pair[32];

			fmt_ratio(a, sizeof(a), rat[i].time_ratio);
			fmt_ratio(b, sizeof(b), rat[i].throughput_ratio);
			fmt_ratio(c, sizeof(c), rat[i].p50_ratio);
			fmt_ratio(d, sizeof(d), rat[i].p99_ratio);
			snprintf(pair, sizeof(pair), "%s/%s",
				 engine_name(rat[i].num),
				 engine_name(rat[i].den));
			fprintf(out, "%-10s %-4s %-14s %8s %11s %8s %8s\n",
				cfg->pats[rat[i].pat].name,
				cache_name(rat[i].cold), pair, a, b, c, d);
		}
	}
	print_read_amp(out, cfg, runs, nruns);
	print_extra(out, cfg, runs, nruns);
	fflush(out);
}

/* ------------------------------------------------------------------------
 * JSON
 * ---------------------------------------------------------------------- */

struct jw {
	FILE *f;
	int depth;
	bool first[32];
};

static void j_str_raw(struct jw *j, const char *s)
{
	fputc('"', j->f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(j->f, "\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", j->f);
		else if (ch < 0x20)
			fprintf(j->f, "\\u%04x", ch);
		else
			fputc(ch, j->f);
	}
	fputc('"', j->f);
}

static void j_key(struct jw *j, const char *k)
{
	if (!j->first[j->depth])
		fputc(',', j->f);
	j->first[j->depth] = false;
	if (j->depth) {
		fputc('\n', j->f);
		fprintf(j->f, "%*s", 2 * j->depth, "");
	}
	if (k) {
		j_str_raw(j, k);
		fputs(": ", j->f);
	}
}

static void j_open(struct jw *j, const char *k, char c)
{
	j_key(j, k);
	fputc(c, j->f);
	j->first[++j->depth] = true;
}

static void j_close(struct jw *j, char c)
{
	bool empty = j->first[j->depth];

	j->depth--;
	if (!empty)
		fprintf(j->f, "\n%*s", 2 * j->depth, "");
	fputc(c, j->f);
}

static void j_u64(struct jw *j, const char *k, uint64_t v)
{
	j_key(j, k);
	fprintf(j->f, "%" PRIu64, v);
}

static void j_dbl(struct jw *j, const char *k, double v)
{
	j_key(j, k);
	if (isnan(v) || isinf(v))
		fputs("null", j->f);
	else
		fprintf(j->f, "%.6g", v);
}

static void j_str(struct jw *j, const char *k, const char *s)
{
	j_key(j, k);
	if (s)
		j_str_raw(j, s);
	else
		fputs("null", j->f);
}

static void j_bool(struct jw *j, const char *k, bool v)
{
	j_key(j, k);
	fputs(v ? "true" : "false", j->f);
}

static void j_latsum(struct jw *j, const char *k, const struct latsum *l)
{
	j_open(j, k, '{');
	j_u64(j, "count", l->count);
	j_u64(j, "min", l->min);
	j_u64(j, "mean", l->mean);
	j_u64(j, "p50", l->p50);
	j_u64(j, "p90", l->p90);
	j_u64(j, "p99", l->p99);
	j_u64(j, "p999", l->p999);
	j_u64(j, "max", l->max);
	j_close(j, '}');
}

static void j_luffd_lat(struct jw *j, const char *k,
			const struct luffd_latency *l)
{
	j_open(j, k, '{');
	j_u64(j, "count", l->count);
	j_u64(j, "min", l->min_ns);
	j_u64(j, "mean", l->mean_ns);
	j_u64(j, "p50", l->p50_ns);
	j_u64(j, "p90", l->p90_ns);
	j_u64(j, "p99", l->p99_ns);
	j_u64(j, "p999", l->p999_ns);
	j_u64(j, "max", l->max_ns);
	j_close(j, '}');
}

static const char *trace_fmt_name(enum luffd_trace_format f)
{
	return f == LUFFD_TRACE_CSV ? "csv" : "pfaults";
}

static void j_ooc(struct jw *j, const struct config *cfg, const struct run *r)
{
	const struct ooc_run *o = &r->ooc;

	j_open(j, "ooc", '{');
	j_u64(j, "file_size", cfg->size);
	j_u64(j, "threads", cfg->threads);
	j_dbl(j, "write_ratio", cfg->write_ratio);
	j_u64(j, "passes", cfg->passes);
	j_u64(j, "resident_bytes", cfg->resident_bytes);
	j_u64(j, "touches", o->touches);
	j_u64(j, "writes", o->writes);
	j_u64(j, "reads", o->touches - o->writes);
	j_u64(j, "read_mismatches", o->read_mismatches);
	j_u64(j, "lost_writes", o->lost_writes);
	j_u64(j, "touch_ns", o->touch_ns);
	j_u64(j, "sync_ns", o->sync_ns);
	j_u64(j, "wall_ns", r->wall_ns);
	j_dbl(j, "touches_per_s", o->touches_per_s);
	j_dbl(j, "gbps", r->gbps);
	j_u64(j, "peak_rss_bytes", o->peak_rss);
	j_u64(j, "rss_hwm_bytes", o->rss_hwm);
	j_u64(j, "rss_samples", o->samples);
	j_u64(j, "sample_interval_us", 5000);
	j_bool(j, "rss_within_limit",
	       (double)o->peak_rss <= 1.05 * (double)cfg->resident_bytes);
	j_u64(j, "device_read_bytes", o->dev_read);
	j_u64(j, "device_write_bytes", o->dev_write);
	if (o->cgroup) {
		j_open(j, "cgroup", '{');
		j_str(j, "version", cfg->cg_ver == CG_V1 ? "v1" : "v2");
		j_u64(j, "limit_bytes", o->limit);
		j_u64(j, "peak_bytes", o->cg_peak);
		j_u64(j, "sampled_peak_bytes", o->cg_peak_sampled);
		j_u64(j, "failcnt", o->cg_failcnt);
		j_u64(j, "oom_kills", o->cg_oom_kills);
		j_close(j, '}');
	} else {
		j_str(j, "cgroup", NULL);
	}
	j_close(j, '}');
}

static void j_run(struct jw *j, const struct config *cfg, const struct run *r)
{
	int c;

	j_open(j, NULL, '{');
	j_str(j, "engine", engine_name(r->eng));
	j_bool(j, "calibration", r->calib);
	j_str(j, "pattern", cfg->pats[r->pat].name);
	j_str(j, "cache", cache_name(r->cold));
	j_u64(j, "repeat", r->rep + 1);
	j_bool(j, "ok", r->ok);
	j_str(j, "error", r->ok ? NULL : r->err);
	j_bool(j, "verified", r->verified);
	j_u64(j, "bad_pages", r->bad_pages);
	j_u64(j, "pages", r->pages);
	j_u64(j, "bytes", r->bytes);
	j_u64(j, "bytes_read", r->bytes_read);
	j_dbl(j, "read_amp", r->read_amp);
	j_u64(j, "wall_ns", r->wall_ns);
	j_dbl(j, "gbps", r->gbps);
	j_dbl(j, "faults_per_s", r->faults_per_s);
	j_open(j, "faults", '{');
	for (c = 0; c < LUFFD_NR_CLASSES; c++) {
		if ((r->eng == ENG_MMAP || r->eng == ENG_MMAP_SHARED) &&
		    c >= LUFFD_ZERO)
			j_str(j, luffd_class_name((enum luffd_class)c), NULL);
		else
			j_u64(j, luffd_class_name((enum luffd_class)c),
			      r->faults[c]);
	}
	j_u64(j, "total", r->faults_total);
	j_close(j, '}');
	j_open(j, "rusage", '{');
	j_u64(j, "minflt", r->ru_minflt);
	j_u64(j, "majflt", r->ru_majflt);
	j_close(j, '}');
	j_open(j, "page_cache", '{');
	j_u64(j, "resident_pages_before", r->resident_before);
	j_bool(j, "as_requested", r->cache_state_ok);
	j_close(j, '}');
	j_latsum(j, "latency_ns", &r->lat);
	if (r->has_luffd) {
		const struct luffd_stats *s = &r->st;

		j_open(j, "libuffd", '{');
		j_open(j, "stats", '{');
		j_u64(j, "bytes_read", s->bytes_read);
		j_u64(j, "reads", s->reads);
		j_u64(j, "readahead_pages", s->readahead_pages);
		j_u64(j, "coalesced", s->coalesced);
		j_u64(j, "evictions", s->evictions);
		j_u64(j, "installed_ahead", s->installed_ahead);
		j_u64(j, "moved_pages", s->moved_pages);
		j_u64(j, "eexist", s->eexist);
		j_u64(j, "eagain", s->eagain);
		j_u64(j, "waits", s->waits);
		j_u64(j, "trace_errors", s->trace_errors);
		j_u64(j, "prefetched", s->prefetched);
		j_u64(j, "requests_cancelled", s->requests_cancelled);
		j_u64(j, "read_timeouts", s->read_timeouts);
		j_u64(j, "wp_faults", s->wp_faults);
		j_u64(j, "written_back", s->written_back);
		j_u64(j, "writeback_writes", s->writeback_writes);
		j_u64(j, "writeback_errors", s->writeback_errors);
		j_u64(j, "writeback_flushes", s->writeback_flushes);
		j_close(j, '}');
		j_open(j, "service_latency_ns", '{');
		for (c = 0; c < LUFFD_NR_CLASSES; c++)
			j_luffd_lat(j, luffd_class_name((enum luffd_class)c),
				    &s->latency[c]);
		j_close(j, '}');
		j_open(j, "thread_latency_by_class_ns", '{');
		for (c = 0; c < NR_TCLASSES; c++)
			j_latsum(j, tclass_name(c), &r->lat_cls[c]);
		j_close(j, '}');
		j_u64(j, "trace_callback_faults", r->trace_cb_faults);
		j_str(j, "trace_file", r->trace_file[0] ? r->trace_file : NULL);
		j_open(j, "blocktime", '{');
		j_u64(j, "threads", s->blocktime_threads_seen);
		j_u64(j, "all_threads", s->blocktime_all_threads);
		j_u64(j, "sum_ns", s->blocktime_sum_ns);
		j_u64(j, "max_ns", s->blocktime_max_ns);
		j_u64(j, "any_ns", s->blocktime_any_ns);
		j_u64(j, "all_ns", s->blocktime_all_ns);
		j_u64(j, "untracked_faults", s->blocktime_untracked);
		j_u64(j, "wall_ns", r->wall_ns);
		j_close(j, '}');
		/* All 24 buckets, as QEMU's query-migrate lists them. */
		j_open(j, "latency_dist", '[');
		for (c = 0; c < LUFFD_LATENCY_DIST_BUCKETS; c++)
			j_u64(j, NULL, s->latency_dist[c]);
		j_close(j, ']');
		j_close(j, '}');
	}
	if (r->has_ooc)
		j_ooc(j, cfg, r);
	if (r->has_naive) {
		j_open(j, "naive", '{');
		j_latsum(j, "service_latency_ns", &r->naive_svc);
		j_close(j, '}');
	}
	j_close(j, '}');
}

int write_json(const struct config *cfg, const struct run *runs, size_t nruns,
	       const char *path)
{
	struct ratio rat[MAX_RATIOS];
	struct jw j = { .first = { true } };
	struct utsname u;
	size_t i, nrat;
	bool ok = true;
	int p, err = 0;

	j.f = fopen(path, "w");
	if (!j.f)
		return -errno;
	uname(&u);
	j_open(&j, NULL, '{');
	j_str(&j, "schema", "uffd-bench/1");
	j_str(&j, "libuffd_version", LUFFD_VERSION_STRING);
	j_open(&j, "machine", '{');
	j_str(&j, "kernel", u.release);
	j_str(&j, "arch", u.machine);
	j_u64(&j, "cpus", (uint64_t)sysconf(_SC_NPROCESSORS_ONLN));
	j_u64(&j, "page_size", cfg->page);
	j_close(&j, '}');
	j_open(&j, "config", '{');
	j_str(&j, "file", cfg->path);
	j_bool(&j, "generated", cfg->generated);
	j_u64(&j, "size", cfg->size);
	j_u64(&j, "pages", cfg->npages);
	j_open(&j, "patterns", '[');
	for (p = 0; p < cfg->npats; p++)
		j_str(&j, NULL, cfg->pats[p].name);
	j_close(&j, ']');
	j_open(&j, "engines", '[');
	for (p = 0; p < cfg->nengines; p++)
		j_str(&j, NULL, engine_name(cfg->engines[p]));
	j_close(&j, ']');
	j_open(&j, "cache", '[');
	if (cfg->do_warm)
		j_str(&j, NULL, "warm");
	if (cfg->do_cold)
		j_str(&j, NULL, "cold");
	j_close(&j, ']');
	j_u64(&j, "threads", cfg->threads);
	j_bool(&j, "memory_warm", !cfg->no_memory_warm);
	j_u64(&j, "repeat", cfg->repeat);
	j_u64(&j, "seed", cfg->seed);
	j_open(&j, "libuffd", '{');
	j_u64(&j, "handler_threads", cfg->handler_threads);
	j_u64(&j, "queue_depth", cfg->queue_depth);
	j_u64(&j, "cache_bytes", cfg->cache_bytes);
	if (cfg->readahead_bytes == LUFFD_NO_READAHEAD)
		j_u64(&j, "readahead_bytes", 0);
	else if (cfg->readahead_bytes)
		j_u64(&j, "readahead_bytes", cfg->readahead_bytes);
	else
		j_str(&j, "readahead_bytes", NULL);
	j_str(&j, "readahead_mode",
	      cfg->readahead_mode == LUFFD_RA_FIXED ? "fixed" : "adaptive");
	if (cfg->install_ahead_bytes == LUFFD_NO_INSTALL_AHEAD)
		j_u64(&j, "install_ahead_bytes", 0);
	else if (cfg->install_ahead_bytes)
		j_u64(&j, "install_ahead_bytes", cfg->install_ahead_bytes);
	else
		j_str(&j, "install_ahead_bytes", NULL);
	j_bool(&j, "direct", cfg->direct);
	if (cfg->spin_us == LUFFD_NO_SPIN)
		j_u64(&j, "spin_us", 0);
	else if (cfg->spin_us)
		j_u64(&j, "spin_us", cfg->spin_us);
	else
		j_str(&j, "spin_us", NULL);
	j_str(&j, "install_mode",
	      cfg->install_mode == LUFFD_INSTALL_COPY ? "copy" : "auto");
	j_str(&j, "prot", cfg->prot & PROT_WRITE ? "rw" : "r");
	j_str(&j, "store", store_name(cfg->store));
	j_u64(&j, "store_latency_us", cfg->store_lat_us);
	j_u64(&j, "handler_cpus", cfg->handler_cpus);
	j_u64(&j, "thread_cpus", cfg->thread_cpus);
	j_u64(&j, "stripe_bytes", cfg->stripe_bytes);
	j_close(&j, '}');
	j_str(&j, "trace", cfg->trace_path);
	j_str(&j, "trace_format",
	      cfg->trace_path ? trace_fmt_name(cfg->trace_fmt) : NULL);
	if (cfg->corrupt_page >= 0)
		j_u64(&j, "corrupt_page", (uint64_t)cfg->corrupt_page);
	else
		j_str(&j, "corrupt_page", NULL);
	j_str(&j, "workload", cfg->workload == WL_OOC ? "ooc" : "touch");
	if (cfg->workload == WL_OOC) {
		j_open(&j, "ooc", '{');
		j_u64(&j, "resident_bytes", cfg->resident_bytes);
		j_dbl(&j, "write_ratio", cfg->write_ratio);
		j_u64(&j, "passes", cfg->passes);
		j_u64(&j, "memory_limit_bytes", cfg->memory_limit);
		j_str(&j, "mmap_advice", cfg->mmap_random ? "random" : "normal");
		j_str(&j, "cgroup", cfg->cg_ver == CG_V1 ? "v1" :
				   cfg->cg_ver == CG_V2 ? "v2" : NULL);
		j_str(&j, "cgroup_unavailable",
		      cfg->cg_ver == CG_NONE ? cfg->cg_why : NULL);
		j_bool(&j, "resident_limit_in_effect", cfg->resident_effective);
		j_str(&j, "resident_probe", cfg->resident_why[0] ?
					    cfg->resident_why : NULL);
		j_bool(&j, "lose_write", cfg->lose_write);
		j_close(&j, '}');
	} else {
		j_str(&j, "ooc", NULL);
	}
	j_close(&j, '}');

	j_open(&j, "runs", '[');
	for (i = 0; i < nruns; i++) {
		j_run(&j, cfg, &runs[i]);
		ok = ok && runs[i].ok;
	}
	j_close(&j, ']');

	nrat = compute_ratios(cfg, runs, nruns, rat,
			      sizeof(rat) / sizeof(rat[0]));
	j_open(&j, "ratios", '[');
	for (i = 0; i < nrat; i++) {
		j_open(&j, NULL, '{');
		j_str(&j, "pattern", cfg->pats[rat[i].pat].name);
		j_str(&j, "cache", cache_name(rat[i].cold));
		j_str(&j, "numerator", engine_name(rat[i].num));
		j_str(&j, "denominator", engine_name(rat[i].den));
		j_dbl(&j, "time_ratio", rat[i].time_ratio);
		j_dbl(&j, "throughput_ratio", rat[i].throughput_ratio);
		j_dbl(&j, "p50_latency_ratio", rat[i].p50_ratio);
		j_dbl(&j, "p99_latency_ratio", rat[i].p99_ratio);
		j_close(&j, '}');
	}
	j_close(&j, ']');
	{
		struct overlap ov[MAX_PATTERNS * 2];
		struct pf_cmp pf[MAX_PATTERNS * 2];
		size_t n = compute_overlap(cfg, runs, nruns, ov,
					   MAX_PATTERNS * 2);

		j_open(&j, "overlap", '[');
		for (i = 0; i < n; i++) {
			j_open(&j, NULL, '{');
			j_str(&j, "pattern", cfg->pats[ov[i].pat].name);
			j_str(&j, "cache", cache_name(ov[i].cold));
			j_dbl(&j, "faults_per_s", ov[i].fps);
			j_dbl(&j, "threads_over_latency", ov[i].per_rtt);
			j_dbl(&j, "zero_latency_faults_per_s", ov[i].zero_fps);
			j_dbl(&j, "ideal", ov[i].ideal);
			j_dbl(&j, "ratio", ov[i].ratio);
			j_dbl(&j, "naive_ratio", ov[i].naive_ratio);
			j_dbl(&j, "served_delay_p50_ns", ov[i].delay_p50);
			j_dbl(&j, "ideal_at_served_delay", ov[i].ideal_served);
			j_dbl(&j, "ratio_at_served_delay", ov[i].ratio_served);
			j_close(&j, '}');
		}
		j_close(&j, ']');
		n = compute_prefetch(cfg, runs, nruns, pf, MAX_PATTERNS * 2);
		j_open(&j, "prefetch", '[');
		for (i = 0; i < n; i++) {
			j_open(&j, NULL, '{');
			j_str(&j, "pattern", cfg->pats[pf[i].pat].name);
			j_str(&j, "cache", cache_name(pf[i].cold));
			j_dbl(&j, "demand_p50_ns", pf[i].p50);
			j_dbl(&j, "demand_p50_with_prefetch_ns", pf[i].pf_p50);
			j_dbl(&j, "ratio", pf[i].ratio);
			j_dbl(&j, "throughput_ratio", pf[i].gbps_ratio);
			j_close(&j, '}');
		}
		j_close(&j, ']');
	}
	j_open(&j, "failures", '[');
	for (i = 0; i < nruns; i++)
		if (!runs[i].ok)
			j_str(&j, NULL, runs[i].err[0] ? runs[i].err
						       : runs[i].label);
	j_close(&j, ']');
	j_str(&j, "result", ok ? "ok" : "failed");
	j_close(&j, '}');
	fputc('\n', j.f);
	if (ferror(j.f))
		err = -EIO;
	if (fclose(j.f) != 0 && !err)
		err = -errno;
	return err;
}

/* ------------------------------------------------------------------------
 * Plot
 * ---------------------------------------------------------------------- */

static bool in_path(const char *prog)
{
	const char *path = getenv("PATH");
	char buf[4096];

	if (!path)
		path = "/usr/bin:/bin";
	while (*path) {
		size_t n = strcspn(path, ":");

		if (n && snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path,
				  prog) < (int)sizeof(buf) &&
		    access(buf, X_OK) == 0)
			return true;
		path += n + (path[n] == ':');
	}
	return false;
}

static void plot_curve_data(FILE *g, const struct cdf *c)
{
	size_t i;

	for (i = 0; i < c->n; i++)
		fprintf(g, "%g %g\n", c->x_us[i] < 0.01f ? 0.01 :
			(double)c->x_us[i], (double)c->y[i]);
	fputs("e\n", g);
}

static void plot_escape(char *out, size_t n, const char *in)
{
	size_t k = 0;

	for (; *in && k + 2 < n; in++) {
		if (*in == '\'' || *in == '\\')
			continue;
		out[k++] = *in;
	}
	out[k] = 0;
}

int write_plot(const struct config *cfg, const struct run *runs, size_t nruns,
	       const char *path)
{
	static const char *const eng_color[NR_ENGINES] = {
		"#7b1fa2", "#e69f00", "#0072b2", "#333333", "#009e73",
		"#cc79a7", "#56b4e9", "#f0e442", "#d55e00" };
	static const char *const cls_color[NR_TCLASSES] = {
		"#009e73", "#d55e00", "#999999", "#cc0000", "#56b4e9" };
	int panels = 0, cols, rows, p, s, st;
	char esc[4096];
	FILE *g;

	if (!in_path("gnuplot")) {
		fprintf(stderr, "uffd-bench: gnuplot not found in PATH: "
			"no plot written (--plot %s)\n", path);
		return -ENOENT;
	}
	for (p = 0; p < cfg->npats; p++)
		panels += cfg->do_warm + cfg->do_cold;
	if (!panels)
		return 0;
	cols = panels > 1 ? 2 : 1;
	rows = (panels + cols - 1) / cols;
	g = popen("gnuplot", "w");
	if (!g) {
		fprintf(stderr, "uffd-bench: cannot run gnuplot: %s\n",
			strerror(errno));
		return -errno;
	}
	plot_escape(esc, sizeof(esc), path);
	fprintf(g, "set terminal pngcairo size %d,%d noenhanced font ',9'\n",
		cols * 640, rows * 420);
	fprintf(g, "set output '%s'\n", esc);
	fprintf(g, "set multiplot layout %d,%d title 'uffd-bench: "
		"first-touch latency CDF (faulting thread), %s, "
		"%u thread(s)'\n", rows, cols,
		cfg->generated ? "generated file" : "file", cfg->threads);
	fputs("set logscale x\nset grid\nset key bottom right\n"
	      "set xlabel 'latency (us, log)'\n"
	      "set ylabel 'fraction of touched pages'\nset yrange [0:1]\n", g);
	for (p = 0; p < cfg->npats; p++) {
		for (s = 0; s < 2; s++) {
			const struct run *sel[NR_ENGINES] = { NULL };
			bool cold = s == 1, first = true;
			size_t i;
			int e, c;

			if ((cold && !cfg->do_cold) || (!cold && !cfg->do_warm))
				continue;
			for (i = 0; i < nruns; i++)
				if (runs[i].pat == p && runs[i].cold == cold &&
				    runs[i].rep == 0)
					sel[runs[i].eng] = &runs[i];
			fprintf(g, "set title '%s, %s'\nplot ",
				cfg->pats[p].name, cache_name(cold));
			for (e = 0; e < NR_ENGINES; e++) {
				if (!sel[e] || !sel[e]->cdf.n)
					continue;
				fprintf(g, "%s'-' using 1:2 with steps lw 2 "
					"lc rgb '%s' title '%s (all)'",
					first ? "" : ", ", eng_color[e],
					engine_name((enum engine)e));
				first = false;
				if (e != ENG_LIBUFFD)
					continue;
				for (c = 0; c < NR_TCLASSES; c++)
					if (sel[e]->cdf_cls[c].n) {
						fprintf(g, ", '-' using 1:2 "
							"with steps dt 2 "
							"lc rgb '%s' "
							"title 'libuffd %s'",
							cls_color[c],
							tclass_name(c));
					}
			}
			if (first)
				fputs("NaN notitle", g);
			fputc('\n', g);
			for (e = 0; e < NR_ENGINES; e++) {
				if (!sel[e] || !sel[e]->cdf.n)
					continue;
				plot_curve_data(g, &sel[e]->cdf);
				if (e != ENG_LIBUFFD)
					continue;
				for (c = 0; c < NR_TCLASSES; c++)
					if (sel[e]->cdf_cls[c].n)
						plot_curve_data(g,
							&sel[e]->cdf_cls[c]);
			}
		}
	}
	fputs("unset multiplot\nset output\n", g);
	st = pclose(g);
	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "uffd-bench: gnuplot failed (status %d): "
			"plot %s may be missing or incomplete\n",
			st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128,
			path);
		return -EIO;
	}
	return 0;
}
