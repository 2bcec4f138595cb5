/* SPDX-License-Identifier: MIT */
/*
 * --workload ooc: out of core.  A generated file several times larger than
 * a memory limit is touched in random order by --threads threads, a
 * --write-ratio of the touches writing, by libuffd (a LUFFD_MAP_WRITEBACK
 * mapping whose context has resident_bytes = --resident) and by the
 * kernel's own write-back (a read-write mmap(MAP_SHARED)).  Each run is a
 * child process of its own in a memory cgroup of its own (cgroup.c) with
 * the limit, which the parent samples for its peak RSS; once the child has
 * written everything back and gone, the parent reads the file with pread()
 * and checks it against a model of every write.
 *
 * The model.  Thread t owns the pages of the t-th slice of the rand
 * permutation (cut as the touch workload cuts it) and no other thread
 * touches them: pass 1 touches them in that order, every later pass in a
 * fresh shuffle of the slice.  Whether a touch writes is drawn from a
 * generator seeded by (seed, t), one draw per touch, so the run (which
 * pages are written, in what order within each thread) depends on the
 * settings alone, and the parent replays it without running anything.  A
 * write stores a stamp (run, thread, write number) in the page's first 8
 * bytes.  One thread writes a page, so its program order is the page's
 * write order, and the stamp of its last write in the replay is what the
 * file must hold; the rest of every page must still be the generated
 * contents, and the first word of a page this run did not write what it
 * was before (the generated word, or a stamp of an earlier run: run numbers
 * keep them apart).  The threads check their reads the same way as they
 * go: each keeps the model of its own pages, and a read that does not see
 * the last write (a dirty page dropped without write-back and read back
 * from the file, say) is counted and fails the run.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define SAMPLE_US 5000 /* the parent's RSS and cgroup sampling period */

static struct {
	uint64_t *base;       /* word 0 of every page before the next run */
	unsigned int next_run; /* stamps' run numbers, from 1 */
} g_ooc;

/* ------------------------------------------------------------------------
 * The model: stamps, each thread's touches and writes
 * ---------------------------------------------------------------------- */

/* 11 bits of run (repeat <= 1000, two engines), 11 of thread + 1
 * (threads <= 1024), 42 of write number. */
static uint64_t stamp(unsigned int run, unsigned int t, uint64_t seq)
{
	return (uint64_t)run << 53 | (uint64_t)(t + 1) << 42 | seq;
}

/* What a first word holds, for messages: "thread 3's write 17 of run 2". */
static void describe(char *buf, size_t n, uint64_t w, uint64_t pg,
		     const struct config *cfg)
{
	unsigned int run = (unsigned int)(w >> 53);
	unsigned int t1 = (unsigned int)(w >> 42) & 0x7ff;

	if (w == expected_word(pg * cfg->page))
		snprintf(buf, n, "the generated contents");
	else if (run && run < g_ooc.next_run && t1 && t1 <= cfg->threads)
		snprintf(buf, n, "thread %u's write %" PRIu64 " of run %u",
			 t1 - 1, (uint64_t)(w & ((1ull << 42) - 1)), run);
	else
		snprintf(buf, n, "0x%016" PRIx64 " (no stamp)", w);
}

static uint64_t write_seed(const struct config *cfg, unsigned int t)
{
	return cfg->seed * 0xbf58476d1ce4e5b9ull ^ (t + 1) * 0x94d049bb133111ebull;
}

/* The next touch of a thread whose generator is *st: a write? */
static inline bool draw_write(uint64_t *st, double ratio)
{
	return (double)(splitmix64(st) >> 11) * 0x1p-53 < ratio;
}

/* Thread t's pages in touch order (malloc'd, *np of them): its slice of
 * order, then a fresh shuffle of that slice per later pass. */
static uint32_t *thread_touches(const struct config *cfg,
				const uint32_t *order, uint64_t n,
				unsigned int t, uint64_t *np)
{
	uint64_t lo = n * t / cfg->threads, hi = n * (t + 1) / cfg->threads;
	uint64_t len = hi - lo;
	uint32_t *out = malloc((len ? len : 1) * cfg->passes * sizeof(*out));

	if (!out)
		return NULL;
	for (unsigned int p = 0; p < cfg->passes; p++) {
		uint32_t *o = out + p * len;
		uint64_t st = cfg->seed ^ (t + 1) * 0x9e3779b97f4a7c15ull ^
			      (uint64_t)p << 32;

		memcpy(o, order + lo, len * sizeof(*o));
		for (uint64_t i = len; p && i > 1; i--) {
			uint64_t j = rand_below(&st, i);
			uint32_t x = o[i - 1];

			o[i - 1] = o[j];
			o[j] = x;
		}
	}
	*np = len * cfg->passes;
	return out;
}

/* Replay run_no: last[pg] = the stamp of the last write to pg, or 0. */
static int replay(const struct config *cfg, const uint32_t *order,
		  uint64_t n, unsigned int run_no, uint64_t *last,
		  uint64_t *writes)
{
	memset(last, 0, cfg->npages * sizeof(*last));
	*writes = 0;
	for (unsigned int t = 0; t < cfg->threads; t++) {
		uint64_t k, st = write_seed(cfg, t), seq = 0;
		uint32_t *pages = thread_touches(cfg, order, n, t, &k);

		if (!pages)
			return -ENOMEM;
		for (uint64_t i = 0; i < k; i++)
			if (draw_write(&st, cfg->write_ratio))
				last[pages[i]] = stamp(run_no, t, ++seq);
		*writes += seq;
		free(pages);
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * The child: map, touch, write back
 * ---------------------------------------------------------------------- */

struct job;

struct worker {
	pthread_t th;
	struct job *job;
	unsigned int t;
	uint32_t *pages;
	uint64_t n;
	uint32_t *lat;
	uint64_t t0, t1, writes, mismatches, minflt, majflt;
	uint64_t bad_pg, bad_got, bad_want; /* the first mismatch */
	uint64_t last_pg, last_prev;        /* the last write, and what the
					       page held before it */
};

struct job {
	const struct config *cfg;
	char *base;
	/* Word 0 of every page as the model has it now.  Each entry is only
	 * ever read and written by the thread that owns the page, so the
	 * threads share the array without a lock. */
	uint64_t *cur;
	unsigned int run_no;
	pthread_barrier_t bar;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct job *j = w->job;
	const struct config *cfg = j->cfg;
	uint64_t st = write_seed(cfg, w->t), seq = 0;
	struct rusage ru0, ru1;

	getrusage(RUSAGE_THREAD, &ru0);
	pthread_barrier_wait(&j->bar);
	w->t0 = now_ns();
	for (uint64_t i = 0; i < w->n; i++) {
		uint64_t pg = w->pages[i], a, z, v = 0;
		volatile uint64_t *p = (volatile uint64_t *)(j->base +
							     pg * cfg->page);
		bool wr = draw_write(&st, cfg->write_ratio);
		uint64_t s = wr ? stamp(j->run_no, w->t, seq + 1) : 0;

		a = now_ns();
		if (wr)
			*p = s;
		else
			v = *p;
		z = now_ns();
		w->lat[i] = z - a > UINT32_MAX ? UINT32_MAX : (uint32_t)(z - a);
		if (wr) {
			seq++;
			w->last_pg = pg;
			w->last_prev = j->cur[pg];
			j->cur[pg] = s;
		} else if (v != j->cur[pg] && w->mismatches++ == 0) {
			w->bad_pg = pg;
			w->bad_got = v;
			w->bad_want = j->cur[pg];
		}
	}
	w->t1 = now_ns();
	w->writes = seq;
	getrusage(RUSAGE_THREAD, &ru1);
	w->minflt = (uint64_t)(ru1.ru_minflt - ru0.ru_minflt);
	w->majflt = (uint64_t)(ru1.ru_majflt - ru0.ru_majflt);
	return NULL;
}

static void set_err(struct run *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void set_err(struct run *r, const char *fmt, ...)
{
	va_list ap;

	r->ok = false;
	if (r->err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
}

/* The engine's side of a child: its mapping of the file. */
struct emap {
	char *base;
	size_t len;
	struct luffd_ctx *ctx; /* libuffd */
	int fd;                /* mmap-shared */
};

static int map_shared(const struct config *cfg, struct emap *m,
		      struct run *r)
{
	void *p;

	m->fd = open(cfg->path, O_RDWR | O_CLOEXEC);
	if (m->fd < 0) {
		set_err(r, "open %s: %s", cfg->path, strerror(errno));
		return -1;
	}
	p = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	if (p == MAP_FAILED) {
		set_err(r, "mmap(MAP_SHARED): %s", strerror(errno));
		return -1;
	}
	m->base = p;
	/* The kernel's default read-around reads read_ahead_kb around every
	 * miss (8 MiB on this disk: in a 16 MiB cgroup it read 90 GiB for
	 * 32 MiB of random touches); a program that knows it reads at
	 * random says so. */
	if (cfg->mmap_random && madvise(p, m->len, MADV_RANDOM) < 0) {
		set_err(r, "madvise(MADV_RANDOM): %s", strerror(errno));
		return -1;
	}
	return 0;
}

static int map_libuffd(const struct config *cfg, struct emap *m,
		       struct run *r)
{
	LUFFD_OPTS(luffd_ctx_opts, opts);
	struct luffd_store *st;
	void *p;
	int err;

	libuffd_opts(cfg, &opts);
	opts.resident_bytes = (size_t)cfg->resident_bytes;
	err = luffd_ctx_create(&opts, &m->ctx);
	if (err) {
		m->ctx = NULL;
		set_err(r, "luffd_ctx_create: %s", luffd_strerror(err));
		return -1;
	}
	err = luffd_store_open(cfg->path, LUFFD_FILE_WRITE |
			       (cfg->direct ? LUFFD_FILE_DIRECT : 0), &st);
	if (err) {
		set_err(r, "luffd_store_open: %s", luffd_strerror(err));
		return -1;
	}
	err = luffd_map(m->ctx, st, 0, m->len, PROT_READ | PROT_WRITE,
			LUFFD_MAP_WRITEBACK, &p);
	luffd_store_put(st);
	if (err) {
		set_err(r, "luffd_map(LUFFD_MAP_WRITEBACK): %s",
			luffd_strerror(err));
		return -1;
	}
	m->base = p;
	return 0;
}

/* Every write durable in the file: msync(MS_SYNC) writes a shared
 * mapping's dirty pages and waits for the device, so libuffd is asked for
 * the same (LUFFD_MSYNC_DURABLE: its writes, then fdatasync()). */
static int emap_sync(struct emap *m, struct run *r)
{
	int err;

	if (!m->ctx) {
		if (msync(m->base, m->len, MS_SYNC) < 0) {
			set_err(r, "msync(MS_SYNC): %s", strerror(errno));
			return -1;
		}
		return 0;
	}
	err = luffd_msync(m->ctx, m->base, m->len, LUFFD_MSYNC_DURABLE);
	if (err) {
		set_err(r, "luffd_msync: %s", luffd_strerror(err));
		return -1;
	}
	return 0;
}

static void emap_close(struct emap *m, struct run *r)
{
	int err;

	if (m->ctx) {
		if (m->base) {
			err = luffd_unmap(m->ctx, m->base, m->len);
			if (err)
				set_err(r, "luffd_unmap: %s",
					luffd_strerror(err));
		}
		err = luffd_ctx_destroy(m->ctx);
		if (err)
			set_err(r, "luffd_ctx_destroy: %s", luffd_strerror(err));
	} else if (m->base) {
		munmap(m->base, m->len);
	}
	if (m->fd >= 0)
		close(m->fd);
}

/* --lose-write: undo the last write of the first thread that wrote, the
 * way each engine can lose one.  libuffd, before the write-back: drop the
 * page (MADV_DONTNEED loses what was not written back, see
 * LUFFD_MAP_WRITEBACK); after it (mmap-shared, whose page cache keeps a
 * dropped page, or a page libuffd had already written back and evicted):
 * put the old word back into the file.  Returns whether it is done. */
static bool lose_write(const struct config *cfg, struct emap *m,
		       const struct worker *w, bool before_sync)
{
	unsigned int t;
	unsigned char in = 0;
	int fd;

	for (t = 0; t < cfg->threads && !w[t].writes; t++)
		;
	if (t == cfg->threads)
		return true;
	if (before_sync) {
		char *p = m->base + w[t].last_pg * cfg->page;

		if (!m->ctx || mincore(p, cfg->page, &in) < 0 || !(in & 1))
			return false;
		madvise(p, cfg->page, MADV_DONTNEED);
		return true;
	}
	fd = open(cfg->path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || pwrite(fd, &w[t].last_prev, 8,
			     (off_t)(w[t].last_pg * cfg->page)) != 8)
		fprintf(stderr, "uffd-bench: --lose-write: %s\n",
			strerror(errno));
	if (fd >= 0)
		close(fd);
	return true;
}

/* Two counters of /proc/self/io (every thread, io_uring's included). */
static void self_io(uint64_t *rd, uint64_t *wr)
{
	char line[128];
	unsigned long long v;
	FILE *f = fopen("/proc/self/io", "r");

	*rd = *wr = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "read_bytes: %llu", &v) == 1)
			*rd = v;
		else if (sscanf(line, "write_bytes: %llu", &v) == 1)
			*wr = v;
	}
	fclose(f);
}

static uint64_t self_hwm(void)
{
	char line[128];
	unsigned long long kb = 0;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return (uint64_t)kb << 10;
}

/* The touches, in threads that start together: fills r's times, counts
 * and latencies.  w[] is the caller's (the lose-write hook reads it). */
static int touch(struct job *j, struct worker *w, const uint32_t *order,
		 uint64_t n, struct run *r, uint32_t **latp)
{
	const struct config *cfg = j->cfg;
	uint64_t total = n * cfg->passes, off = 0, t0 = UINT64_MAX, t1 = 0;
	uint32_t *lat = malloc((total ? total : 1) * sizeof(*lat));
	unsigned int t;

	*latp = lat;
	if (!lat)
		return -ENOMEM;
	for (t = 0; t < cfg->threads; t++) {
		w[t].job = j;
		w[t].t = t;
		w[t].pages = thread_touches(cfg, order, n, t, &w[t].n);
		if (!w[t].pages)
			return -ENOMEM;
		w[t].lat = lat + off;
		off += w[t].n;
	}
	pthread_barrier_init(&j->bar, NULL, cfg->threads);
	for (t = 0; t < cfg->threads; t++)
		if (pthread_create(&w[t].th, NULL, worker_main, &w[t])) {
			/* The barrier would never open. */
			fprintf(stderr, "uffd-bench: pthread_create failed\n");
			_exit(EXIT_RUN_FAILED);
		}
	for (t = 0; t < cfg->threads; t++) {
		pthread_join(w[t].th, NULL);
		free(w[t].pages);
		if (w[t].n) {
			t0 = w[t].t0 < t0 ? w[t].t0 : t0;
			t1 = w[t].t1 > t1 ? w[t].t1 : t1;
		}
		r->ooc.writes += w[t].writes;
		r->ooc.read_mismatches += w[t].mismatches;
		r->ru_minflt += w[t].minflt;
		r->ru_majflt += w[t].majflt;
	}
	pthread_barrier_destroy(&j->bar);
	r->ooc.touches = total;
	r->ooc.touch_ns = t1 > t0 ? t1 - t0 : 0;
	latsum_from(lat, total, &r->lat);
	return 0;
}

static void report_mismatch(const struct config *cfg, const struct worker *w,
			    struct run *r)
{
	char got[96], want[96];

	for (unsigned int t = 0; t < cfg->threads; t++) {
		if (!w[t].mismatches)
			continue;
		describe(got, sizeof(got), w[t].bad_got, w[t].bad_pg, cfg);
		describe(want, sizeof(want), w[t].bad_want, w[t].bad_pg, cfg);
		set_err(r, "engine %s (repetition %u): %" PRIu64 " read(s) "
			"did not see the last write: the first, thread %u at "
			"page %" PRIu64 ", read %s, the last write was %s",
			engine_name(r->eng), r->rep + 1, r->ooc.read_mismatches,
			t, w[t].bad_pg, got, want);
		return;
	}
}

static void child_main(struct bench_ctx *b, struct run *r,
		       unsigned int run_no)
{
	const struct config *cfg = b->cfg;
	struct job j = { .cfg = cfg, .cur = g_ooc.base, .run_no = run_no };
	struct worker *w = calloc(cfg->threads, sizeof(*w));
	struct emap m = { .fd = -1 };
	uint32_t *lat = NULL;
	uint64_t s0;
	bool lost;
	int err;

	/* The parent times the run out (and first says what its threads
	 * were doing); should the parent die, so does the run. */
	bench_child_init();
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (!w) {
		set_err(r, "out of memory");
		return;
	}
	m.len = (size_t)(cfg->npages * cfg->page);
	if (r->eng == ENG_MMAP_SHARED ? map_shared(cfg, &m, r)
				      : map_libuffd(cfg, &m, r))
		goto out;
	j.base = m.base;
	err = touch(&j, w, b->order, b->n, r, &lat);
	if (err) {
		set_err(r, "touch: %s", strerror(-err));
		goto out;
	}
	lost = !cfg->lose_write || lose_write(cfg, &m, w, true);
	s0 = now_ns();
	if (emap_sync(&m, r))
		goto out;
	r->ooc.sync_ns = now_ns() - s0;
	if (!lost)
		lose_write(cfg, &m, w, false);
	if (m.ctx) {
		r->st.sz = sizeof(r->st);
		luffd_ctx_sync(m.ctx);
		if (!luffd_stats_get(m.ctx, &r->st)) {
			r->has_luffd = true;
			memcpy(r->faults, r->st.faults, sizeof(r->faults));
		}
	} else {
		/* The kernel only counts minor and major faults. */
		r->faults[LUFFD_MINOR] = r->ru_minflt;
		r->faults[LUFFD_MAJOR] = r->ru_majflt;
	}
	report_mismatch(cfg, w, r);
	r->ooc.finished = true;
out:
	emap_close(&m, r);
	self_io(&r->ooc.dev_read, &r->ooc.dev_write);
	r->ooc.rss_hwm = self_hwm();
	free(lat);
	free(w);
}

/* ------------------------------------------------------------------------
 * The parent: a cgroup, the child, its samples, the file's check
 * ---------------------------------------------------------------------- */

/* Resident pages (/proc/PID/statm's second field, the counter VmRSS
 * shows) of the process whose statm fd is open; 0 once it is gone. */
static uint64_t statm_rss(int fd, size_t page)
{
	char buf[256];
	unsigned long long size, res;
	ssize_t n = fd < 0 ? -1 : pread(fd, buf, sizeof(buf) - 1, 0);

	if (n <= 0)
		return 0;
	buf[n] = 0;
	if (sscanf(buf, "%llu %llu", &size, &res) != 2)
		return 0;
	return (uint64_t)res * page;
}

/* Up to n bytes of a small /proc file, without its last newline; "?" if
 * it cannot be read. */
static void proc_read(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t got = fd < 0 ? -1 : read(fd, buf, n - 1);

	if (fd >= 0)
		close(fd);
	if (got <= 0) {
		snprintf(buf, n, "?");
		return;
	}
	buf[got] = 0;
	while (got > 0 && buf[got - 1] == '\n')
		buf[--got] = 0;
}

/* A run past its timeout: what each of its threads is doing (state, wait
 * channel, the top of its kernel stack), for the report of a hang. */
static void dump_threads(pid_t pid)
{
	char dir[64], path[128], comm[64], st[512], wchan[128], stack[1024];
	DIR *d;
	struct dirent *e;

	snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
	d = opendir(dir);
	if (!d)
		return;
	fprintf(stderr, "uffd-bench: the run's threads at the timeout (tid, "
		"name, state, wait channel: kernel stack):\n");
	while ((e = readdir(d))) {
		char *p, state = '?';

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%.20s/comm", dir, e->d_name);
		proc_read(path, comm, sizeof(comm));
		snprintf(path, sizeof(path), "%s/%.20s/stat", dir, e->d_name);
		proc_read(path, st, sizeof(st));
		if ((p = strrchr(st, ')')) && p[1] == ' ')
			state = p[2];
		snprintf(path, sizeof(path), "%s/%.20s/wchan", dir, e->d_name);
		proc_read(path, wchan, sizeof(wchan));
		snprintf(path, sizeof(path), "%s/%.20s/stack", dir, e->d_name);
		proc_read(path, stack, sizeof(stack));
		for (p = stack; (p = strchr(p, '\n')); )
			*p = ' ';
		fprintf(stderr, "  %s %s %c %s: %.300s\n", e->d_name, comm,
			state, wchan, stack);
	}
	closedir(d);
}

/* Sample the child every SAMPLE_US until it exits (or the timeout kills
 * it); its wait status in *status. */
static void watch(const struct config *cfg, pid_t pid, const struct cgroup *cg,
		  struct run *r, int *status, bool *timed_out)
{
	char path[64];
	uint64_t start = now_ns();
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	*timed_out = false;
	for (;;) {
		struct timespec ts = { 0, SAMPLE_US * 1000 };
		uint64_t v;
		pid_t got = waitpid(pid, status, WNOHANG);

		if (got == pid || (got < 0 && errno != EINTR))
			break;
		v = statm_rss(fd, cfg->page);
		if (v > r->ooc.peak_rss)
			r->ooc.peak_rss = v;
		if (cg->dir[0]) {
			v = cg_usage(cg);
			if (v > r->ooc.cg_peak_sampled)
				r->ooc.cg_peak_sampled = v;
		}
		r->ooc.samples++;
		if (cfg->timeout_s && !*timed_out &&
		    now_ns() - start > (uint64_t)cfg->timeout_s * 1000000000u) {
			dump_threads(pid);
			kill(pid, SIGKILL);
			*timed_out = true;
		}
		nanosleep(&ts, NULL);
	}
	if (fd >= 0)
		close(fd);
}

/* Read the file back and compare every page with the model; count what
 * differs into r.  0, or -errno when it could not be read. */
static int verify_file(const struct config *cfg, const uint64_t *last,
		       struct run *r)
{
	const size_t chunk = 1u << 20;
	char *buf = aligned_alloc(cfg->page, chunk);
	int fd = open(cfg->path, O_RDONLY | O_CLOEXEC), err = 0;

	if (!buf || fd < 0) {
		err = !buf ? -ENOMEM : -errno;
		goto out;
	}
	r->bad_pages = r->ooc.lost_writes = 0;
	for (uint64_t off = 0; off < cfg->size && !err; off += chunk) {
		size_t len = cfg->size - off < chunk ? (size_t)(cfg->size - off)
						     : chunk;
		ssize_t got = pread(fd, buf, len, (off_t)off);

		if (got != (ssize_t)len) {
			err = got < 0 ? -errno : -EIO;
			break;
		}
		for (size_t p = 0; p < len; p += cfg->page) {
			uint64_t pg = (off + p) / cfg->page, *wd =
				(uint64_t *)(buf + p), want0 =
				last[pg] ? last[pg] : g_ooc.base[pg];
			size_t i = 1, nw = cfg->page / 8;
			char a[96], b[96];

			while (i < nw && wd[i] == expected_word(pg * cfg->page +
								i * 8))
				i++;
			if (wd[0] == want0 && i == nw)
				continue;
			r->bad_pages++;
			if (wd[0] != want0 && last[pg])
				r->ooc.lost_writes++;
			if (r->bad_pages > 1 || r->err[0])
				continue;
			describe(a, sizeof(a), wd[0], pg, cfg);
			describe(b, sizeof(b), want0, pg, cfg);
			if (wd[0] != want0)
				snprintf(r->err, sizeof(r->err), "verification "
					 "failed: engine %s (repetition %u): "
					 "page %" PRIu64 " (file offset 0x%"
					 PRIx64 "): %s: the file holds %s, the "
					 "last write was %s", engine_name(r->eng),
					 r->rep + 1, pg, pg * cfg->page,
					 last[pg] ? "lost write"
						  : "a write that never was",
					 a, last[pg] ? b : "none this run");
			else
				snprintf(r->err, sizeof(r->err), "verification "
					 "failed: engine %s (repetition %u): "
					 "page %" PRIu64 " (file offset 0x%"
					 PRIx64 "): byte %zu: not the generated "
					 "contents", engine_name(r->eng),
					 r->rep + 1, pg, pg * cfg->page, i * 8);
		}
	}
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return err;
}

static void reset_model(const struct config *cfg)
{
	for (uint64_t pg = 0; pg < cfg->npages; pg++)
		g_ooc.base[pg] = expected_word(pg * cfg->page);
}

/* The child's end, in words. */
static void child_status(struct run *r, int status, bool timed_out,
			 const struct config *cfg)
{
	if (timed_out)
		set_err(r, "engine %s: no result after %u s (--timeout): "
			"killed", engine_name(r->eng), cfg->timeout_s);
	else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL &&
		 r->ooc.cg_oom_kills)
		set_err(r, "engine %s: killed by the cgroup's OOM killer "
			"(limit %.1f MiB, peak usage %.1f MiB, %" PRIu64
			" kill(s))%s", engine_name(r->eng),
			(double)r->ooc.limit / 1048576.0,
			(double)r->ooc.cg_peak / 1048576.0, r->ooc.cg_oom_kills,
			r->eng == ENG_LIBUFFD ? ": libuffd's resident pages, "
			"its cache (--cache-size) and the bench's own memory "
			"did not fit" : "");
	else if (WIFSIGNALED(status))
		set_err(r, "engine %s: the run's process was killed by signal "
			"%d (%s)", engine_name(r->eng), WTERMSIG(status),
			strsignal(WTERMSIG(status)));
	else if (WIFEXITED(status) && WEXITSTATUS(status))
		set_err(r, "engine %s: the run's process exited with status "
			"%d (see its message above)", engine_name(r->eng),
			WEXITSTATUS(status));
	else if (!r->ooc.finished)
		set_err(r, "engine %s: the run did not finish", engine_name(r->eng));
}

/* Fork the child, in cg if it has one; wait for it, sampling.  Returns
 * with r holding what the child wrote, or -1 (r's error set). */
static int run_child(struct bench_ctx *b, struct run *r, struct cgroup *cg,
		     unsigned int run_no)
{
	const struct config *cfg = b->cfg;
	struct run *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
			      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int go[2], status = 0, e;
	bool timed_out;
	pid_t pid;
	char c = 1;

	if (sh == MAP_FAILED) {
		set_err(r, "mmap: %s", strerror(errno));
		return -1;
	}
	memcpy(sh, r, sizeof(*sh));
	if (pipe2(go, O_CLOEXEC) < 0) {
		set_err(r, "pipe: %s", strerror(errno));
		munmap(sh, sizeof(*sh));
		return -1;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid == 0) {
		/* Start only once in the cgroup: everything it allocates is
		 * charged there. */
		close(go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(EXIT_RUN_FAILED);
		child_main(b, sh, run_no);
		_exit(0);
	}
	close(go[0]);
	if (pid < 0) {
		set_err(r, "fork: %s", strerror(errno));
		close(go[1]);
		munmap(sh, sizeof(*sh));
		return -1;
	}
	set_cleanup_child(pid, cg->dir);
	if (cg->dir[0] && (e = cg_enter(cg, pid))) {
		set_err(r, "cannot move the run's process into %s: %s",
			cg->dir, strerror(-e));
		kill(pid, SIGKILL);
	} else if (write(go[1], &c, 1) != 1) {
		kill(pid, SIGKILL);
	}
	close(go[1]);
	watch(cfg, pid, cg, r, &status, &timed_out);
	set_cleanup_child(0, cg->dir);
	{
		/* The parent's samples and error, the child's results. */
		struct ooc_run keep = r->ooc;
		char err[sizeof(r->err)];

		memcpy(err, r->err, sizeof(err));
		memcpy(r, sh, sizeof(*r));
		r->ooc.peak_rss = keep.peak_rss;
		r->ooc.cg_peak_sampled = keep.cg_peak_sampled;
		r->ooc.samples = keep.samples;
		if (err[0] && !r->err[0])
			memcpy(r->err, err, sizeof(err));
		if (err[0])
			r->ok = false;
	}
	munmap(sh, sizeof(*sh));
	if (cg->dir[0]) {
		r->ooc.cg_peak = cg_peak(cg);
		r->ooc.cg_failcnt = cg_failcnt(cg);
		r->ooc.cg_oom_kills = cg_oom_kills(cg);
	}
	child_status(r, status, timed_out, cfg);
	return r->ok ? 0 : -1;
}

int run_ooc(struct bench_ctx *b, struct run *r)
{
	const struct config *cfg = b->cfg;
	unsigned int run_no = g_ooc.next_run++;
	uint64_t *last = malloc(cfg->npages * sizeof(*last)), writes = 0;
	bool limited = cfg->cg_ver != CG_NONE && cfg->memory_limit &&
		       (r->eng != ENG_LIBUFFD || cfg->resident_effective);
	struct cgroup cg = { 0 };
	int err, ret = -1;

	r->has_ooc = true;
	r->ooc.limit = limited ? cfg->memory_limit : 0;
	r->ooc.cgroup = limited;
	if (!last) {
		set_err(r, "out of memory");
		return -1;
	}
	if (!cfg->no_memory_warm)
		warm_memory(cfg);
	if (limited) {
		char name[64];

		snprintf(name, sizeof(name), "uffd-bench.%d.%u", (int)getpid(),
			 run_no);
		err = cg_create(&cg, name, cfg->memory_limit);
		if (err) {
			set_err(r, "cannot create a memory cgroup under %s: %s",
				cg_base_dir(), strerror(-err));
			goto out;
		}
	}
	err = run_child(b, r, &cg, run_no);
	if (cg.dir[0]) {
		int e = cg_destroy(&cg);

		if (e)
			fprintf(stderr, "uffd-bench: %s: cannot remove its "
				"cgroup: %s\n", r->label, strerror(-e));
	}
	r->pages = cfg->npages;
	r->bytes = r->ooc.touches * cfg->page;
	r->wall_ns = r->ooc.touch_ns + r->ooc.sync_ns;
	if (r->wall_ns)
		r->ooc.touches_per_s = (double)r->ooc.touches * 1e9 /
				       (double)r->wall_ns;
	r->bytes_read = r->has_luffd ? r->st.bytes_read : r->ooc.dev_read;
	r->read_amp = r->bytes ? (double)r->bytes_read / (double)r->bytes : 0;
	if (err && !r->ooc.finished)
		goto out;
	/* The child is gone: what it wrote back is all there is. */
	err = replay(cfg, b->order, b->n, run_no, last, &writes);
	if (!err && writes != r->ooc.writes)
		set_err(r, "engine %s: the run made %" PRIu64 " writes, the "
			"model %" PRIu64, engine_name(r->eng), r->ooc.writes,
			writes);
	/* Checked also after a read saw the wrong data: what reached the
	 * file says more. */
	if (!err)
		err = verify_file(cfg, last, r);
	if (err) {
		set_err(r, "verification could not run: %s", strerror(-err));
		goto out;
	}
	r->verified = r->bad_pages == 0;
	if (!r->verified || !r->ok) {
		r->ok = false;
		goto out;
	}
	for (uint64_t pg = 0; pg < cfg->npages; pg++)
		if (last[pg])
			g_ooc.base[pg] = last[pg];
	ret = 0;
out:
	if (ret) {
		/* The file is not what the model says any more: start the
		 * next run from the generated contents again. */
		err = rewrite_file(cfg);
		if (err)
			fprintf(stderr, "uffd-bench: cannot restore %s: %s\n",
				cfg->path, strerror(-err));
		reset_model(cfg);
	}
	free(last);
	return ret;
}

/* ------------------------------------------------------------------------
 * Setup: cgroups, the resident-limit probe, the model
 * ---------------------------------------------------------------------- */

/*
 * Does this libuffd keep a write-back mapping under resident_bytes?  Read
 * 8 MiB of one (a sparse file next to the bench's) with a 2 MiB limit and
 * see, with mincore(), whether the pages go within a second.  A library
 * that ignores the setting (before the evictor) keeps them all.
 */
static bool resident_probe(struct config *cfg)
{
	const size_t len = 8u << 20, lim = 2u << 20;
	LUFFD_OPTS(luffd_ctx_opts, opts);
	struct luffd_ctx *ctx = NULL;
	struct luffd_store *st = NULL;
	unsigned char *vec = malloc(len / cfg->page);
	char path[4200], *slash;
	uint64_t res = 0, t0;
	void *m = NULL;
	bool ok = false;
	int fd, err;

	snprintf(path, sizeof(path), "%s", cfg->path);
	slash = strrchr(path, '/');
	snprintf(slash ? slash + 1 : path,
		 sizeof(path) - (size_t)(slash ? slash + 1 - path : 0),
		 "resident-probe");
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)len) < 0 || !vec) {
		snprintf(cfg->resident_why, sizeof(cfg->resident_why),
			 "probe: its file next to the bench's: %s",
			 strerror(errno));
		goto out;
	}
	libuffd_opts(cfg, &opts);
	opts.resident_bytes = lim;
	err = luffd_ctx_create(&opts, &ctx);
	if (!err)
		err = luffd_store_open(path, LUFFD_FILE_WRITE, &st);
	if (!err)
		err = luffd_map(ctx, st, 0, len, PROT_READ | PROT_WRITE,
				LUFFD_MAP_WRITEBACK, &m);
	if (err) {
		snprintf(cfg->resident_why, sizeof(cfg->resident_why),
			 "probe: a write-back mapping with resident_bytes: %s",
			 luffd_strerror(err));
		m = NULL;
		goto out;
	}
	for (size_t off = 0; off < len; off += cfg->page)
		(void)*(volatile char *)((char *)m + off);
	t0 = now_ns();
	do {
		res = 0;
		if (mincore(m, len, vec) == 0)
			for (size_t i = 0; i < len / cfg->page; i++)
				res += vec[i] & 1;
		ok = res * cfg->page <= lim;
		if (!ok)
			usleep(10000);
	} while (!ok && now_ns() - t0 < 1000000000u);
	snprintf(cfg->resident_why, sizeof(cfg->resident_why),
		 "probe: %.1f MiB of an 8 MiB write-back mapping stayed "
		 "resident %s its 2 MiB resident_bytes", (double)res *
		 (double)cfg->page / 1048576.0, ok ? "under" : "a second past");
out:
	if (m)
		luffd_unmap(ctx, m, len);
	luffd_store_put(st);
	luffd_ctx_destroy(ctx);
	if (fd >= 0) {
		close(fd);
		unlink(path);
	}
	free(vec);
	return ok;
}

int ooc_setup(struct config *cfg)
{
	bool luffd = false;

	for (int e = 0; e < cfg->nengines; e++)
		luffd |= cfg->engines[e] == ENG_LIBUFFD;
	cfg->cg_ver = cfg->memory_limit ? cg_detect(&cfg->cg_why) : CG_NONE;
	if (!cfg->memory_limit)
		cfg->cg_why = "--memory-limit 0";
	if (luffd)
		cfg->resident_effective = resident_probe(cfg);
	g_ooc.next_run = 1;
	g_ooc.base = malloc(cfg->npages * sizeof(*g_ooc.base));
	if (!g_ooc.base)
		return -ENOMEM;
	reset_model(cfg);
	return 0;
}
