/* SPDX-License-Identifier: MIT */
/*
 * Post-copy migration of a process's memory over NBD, with libuffd.
 *
 * The source is a child process whose memory (a shared mapping of a tmpfs
 * file in /dev/shm, as a guest's RAM in a memory backend file) holds a
 * pattern that it keeps rewriting, one generation after another, as a
 * running guest dirties its RAM.  nbdkit's file plugin exports that file
 * on a
 * Unix socket (behind a delay filter when --delay-us is given, for a
 * round trip per request); no home-made protocol is involved.
 *
 * At the switch-over the source stops changing its memory (it writes one
 * last generation to every page and pauses, as a migrated guest's vCPUs
 * do) and says which generation that is.  From then on the clock runs:
 * the destination registers anonymous memory over an NBD store of the
 * export with LUFFD_REGISTER_PUSH, and its worker threads start at once,
 * touching random pages (served on demand) while the rest is pushed.  It
 * ends when luffd_push_wait() says every page is present.  Then every
 * page is checked against the last generation, and the program prints
 * the migration time, the demand faults' latency, blocktime and the
 * log2-µs latency distribution.  With --nbdcopy it also times nbdcopy of
 * the same export to null: (libnbd's own copy tool: the one-copy ceiling
 * over NBD) and prints the ratio.
 *
 *   postcopy [--size 256M] [--threads 4] [--delay-us 200] [--no-push]
 *            [--touches N] [--nbdcopy] [--filter PATH] [--trace CSV]
 *
 * Exit status 0 when every page is right, 1 otherwise, 77 when nbdkit or
 * the NBD store is not available.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libuffd.h>

#ifndef POSTCOPY_DELAYUS_FILTER
#define POSTCOPY_DELAYUS_FILTER ""
#endif

/* The 8-byte word at offset off in generation g. */
static inline uint64_t word(uint64_t off, uint64_t g)
{
	return (off ^ (g * 0x9e3779b97f4a7c15ull)) + g;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "postcopy: %s: %s\n", what, strerror(err));
	exit(1);
}

/* ---- the source ----------------------------------------------------- */

static volatile sig_atomic_t switch_over;

static void on_usr1(int sig)
{
	(void)sig;
	switch_over = 1;
}

static void write_gen(uint64_t *mem, size_t size, uint64_t g)
{
	for (size_t i = 0; i < size / 8; i++)
		mem[i] = word((uint64_t)i * 8, g);
}

/*
 * The source process: its memory changes generation by generation until
 * SIGUSR1; then the last generation goes in whole, its number is written
 * to out, and it waits (its memory still exported) until killed.
 */
static void source_main(int memfd, size_t size, int out)
{
	uint64_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED,
			     memfd, 0);
	uint64_t g = 1;

	if (mem == MAP_FAILED)
		_exit(2);
	write_gen(mem, size, g);
	/* Running: a pass over a slice per round, as a guest dirties a
	 * part of its memory at a time. */
	for (size_t at = 0; !switch_over; at = (at + size / 8) % size) {
		size_t n = size / 8 < size - at ? size / 8 : size - at;

		write_gen(mem + at / 8, n, ++g);
	}
	/* Stopped: one last generation, every page the same. */
	write_gen(mem, size, ++g);
	msync(mem, size, MS_SYNC);
	if (write(out, &g, sizeof(g)) != sizeof(g))
		_exit(2);
	for (;;)
		pause();
}

/* ---- nbdkit ---------------------------------------------------------- */

struct server {
	pid_t pid;
	char dir[64], sock[128], pidf[128], uri[200];
};

/* nbdkit -r file FILE on a Unix socket, behind the delay filter
 * (delay_us > 0); ready once its pid file is written.  0 or -1. */
static int server_start(struct server *sv, const char *path,
			unsigned int delay_us, const char *filter)
{
	char file[4200], delay[64], filt[4200];
	const char *argv[16];
	int k = 0;

	snprintf(sv->dir, sizeof(sv->dir), "/tmp/postcopy-XXXXXX");
	if (!mkdtemp(sv->dir))
		return -1;
	snprintf(sv->sock, sizeof(sv->sock), "%s/sock", sv->dir);
	snprintf(sv->pidf, sizeof(sv->pidf), "%s/pid", sv->dir);
	snprintf(sv->uri, sizeof(sv->uri), "nbd+unix:///?socket=%s", sv->sock);
	snprintf(file, sizeof(file), "file=%s", path);
	argv[k++] = "nbdkit";
	argv[k++] = "-r";
	argv[k++] = "-f";
	argv[k++] = "--exit-with-parent";
	argv[k++] = "-U";
	argv[k++] = sv->sock;
	argv[k++] = "-P";
	argv[k++] = sv->pidf;
	if (delay_us) {
		snprintf(filt, sizeof(filt), "--filter=%s", filter);
		snprintf(delay, sizeof(delay), "delay-read-us=%u", delay_us);
		argv[k++] = filt;
	}
	argv[k++] = "file";
	argv[k++] = file;
	if (delay_us)
		argv[k++] = delay;
	argv[k] = NULL;
	sv->pid = fork();
	if (sv->pid < 0)
		return -1;
	if (!sv->pid) {
		execvp("nbdkit", (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 1000; i++) {
		struct stat st;
		int status;

		if (!stat(sv->pidf, &st) && st.st_size > 0)
			return 0;
		if (waitpid(sv->pid, &status, WNOHANG) == sv->pid) {
			sv->pid = 0;
			return -1;
		}
		usleep(10000);
	}
	return -1;
}

static void server_stop(struct server *sv)
{
	if (sv->pid > 0) {
		kill(sv->pid, SIGTERM);
		waitpid(sv->pid, NULL, 0);
	}
	unlink(sv->sock);
	unlink(sv->pidf);
	rmdir(sv->dir);
}

/* nbdcopy URI null: (-1 if it failed), in ns. */
static int64_t time_nbdcopy(const char *uri)
{
	uint64_t t0 = now_ns();
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (!pid) {
		execlp("nbdcopy", "nbdcopy", uri, "null:", (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return -1;
	return (int64_t)(now_ns() - t0);
}

/* ---- the destination ------------------------------------------------- */

struct worker {
	pthread_t t;
	const char *mem;
	size_t npg, ps;
	uint64_t gen, seed, touches;
	uint64_t bad;
};

/* Touch `touches` random pages, checking every word of each, as a
 * migrated guest's vCPUs take up their work at once.  A worker that
 * spun over present pages would take a CPU from the handler and the
 * server on a small machine; a real guest's work would too, but that is
 * its business, not the migration's. */
static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t x = w->seed;

	for (uint64_t k = 0; k < w->touches; k++) {
		size_t pg;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		pg = (size_t)(x % w->npg);
		for (size_t i = 0; i < w->ps; i += 8) {
			uint64_t v;

			memcpy(&v, w->mem + pg * w->ps + i, 8);
			if (v != word(pg * w->ps + i, w->gen)) {
				w->bad++;
				break;
			}
		}
	}
	return NULL;
}

/* Time on a CPU and time waiting for one (runnable), per thread of this
 * process that ran during the migration (the workers are gone): on a
 * small machine the wait says how much the CPUs were the limit. */
static void cpu_report(uint64_t wall)
{
	char path[300], line[128];
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;

	printf("  threads on CPU      ms ran/ms waited for a CPU, over %.0f ms:",
	       (double)wall / 1e6);
	while (d && (e = readdir(d))) {
		unsigned long long run, wait;
		FILE *f;

		if (e->d_name[0] == '.' || atoi(e->d_name) == (int)getpid())
			continue; /* the main thread: it checks the pages */
		snprintf(path, sizeof(path), "/proc/self/task/%s/schedstat",
			 e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(line, sizeof(line), f) &&
		    sscanf(line, "%llu %llu", &run, &wait) == 2 &&
		    run > 10000000)
			printf(" %.0f/%.0f", (double)run / 1e6,
			       (double)wait / 1e6);
		fclose(f);
	}
	if (d)
		closedir(d);
	printf(" (handler, NBD store thread)\n");
}

static size_t parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 0);

	switch (*end) {
	case 'G': case 'g': v <<= 30; break;
	case 'M': case 'm': v <<= 20; break;
	case 'K': case 'k': v <<= 10; break;
	default: break;
	}
	return (size_t)v;
}

int main(int argc, char **argv)
{
	size_t size = 256u << 20, ps = (size_t)sysconf(_SC_PAGESIZE);
	unsigned int threads = 4, delay_us = 200, touches = 1024;
	bool push = true, nbdcopy = false;
	const char *filter = POSTCOPY_DELAYUS_FILTER, *trace = NULL;
	static const struct option lo[] = {
		{ "size", required_argument, NULL, 's' },
		{ "threads", required_argument, NULL, 't' },
		{ "delay-us", required_argument, NULL, 'd' },
		{ "no-push", no_argument, NULL, 'n' },
		{ "nbdcopy", no_argument, NULL, 'c' },
		{ "filter", required_argument, NULL, 'f' },
		{ "touches", required_argument, NULL, 'k' },
		{ "trace", required_argument, NULL, 'r' },
		{ 0 }
	};
	LUFFD_OPTS(luffd_ctx_opts, opts, .read_timeout_ms = 30000,
		   .blocktime_threads = 0 /* all that fault */);
	if (trace) {
		opts.trace_format = LUFFD_TRACE_CSV;
		opts.trace_fd = open(trace, O_WRONLY | O_CREAT | O_TRUNC |
					    O_CLOEXEC, 0644);
		if (opts.trace_fd < 0)
			die(trace, errno);
	}
	LUFFD_OPTS(luffd_stats, st);
	struct worker *w;
	struct server sv = { 0 };
	struct luffd_store *store;
	struct luffd_ctx *ctx;
	uint64_t gen, t0, t_done, t_workers = 0, bad = 0, p50 = 0, p99 = 0;
	char path[64];
	int memfd, pfd[2], err, c;
	unsigned char *vec;
	pid_t src;
	char *mem;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': size = parse_size(optarg); break;
		case 't': threads = (unsigned int)atoi(optarg); break;
		case 'd': delay_us = (unsigned int)atoi(optarg); break;
		case 'n': push = false; break;
		case 'c': nbdcopy = true; break;
		case 'f': filter = optarg; break;
		case 'k': touches = (unsigned int)atoi(optarg); break;
		case 'r': trace = optarg; break;
		default:
			fprintf(stderr, "usage: %s [--size N] [--threads N] "
				"[--delay-us N] [--no-push] [--nbdcopy] "
				"[--touches N] [--filter PATH] [--trace CSV]\n", argv[0]);
			return 2;
		}
	}
	size = (size + ps - 1) & ~(ps - 1);
	if (!size || !threads || threads > 256) {
		fprintf(stderr, "postcopy: bad --size or --threads\n");
		return 2;
	}
	if (delay_us && (!*filter || access(filter, R_OK))) {
		fprintf(stderr, "postcopy: --delay-us needs the delay filter "
			"(--filter PATH: bench/nbdkit-delayus-filter.so)\n");
		return 77;
	}

	/* The source, running. */
	snprintf(path, sizeof(path), "/dev/shm/postcopy-%d", (int)getpid());
	memfd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (memfd < 0 || ftruncate(memfd, (off_t)size))
		die(path, errno);
	if (pipe(pfd))
		die("pipe", errno);
	signal(SIGUSR1, on_usr1);
	src = fork();
	if (src < 0)
		die("fork", errno);
	if (!src) {
		close(pfd[0]);
		source_main(memfd, size, pfd[1]);
	}
	signal(SIGUSR1, SIG_DFL);
	close(pfd[1]);
	if (server_start(&sv, path, delay_us, filter)) {
		fprintf(stderr, "postcopy: nbdkit did not start\n");
		kill(src, SIGKILL);
		unlink(path);
		return 77;
	}
	usleep(300000); /* let it run and dirty its memory a while */

	/* Switch-over: the source stops; the destination runs from now. */
	kill(src, SIGUSR1);
	if (read(pfd[0], &gen, sizeof(gen)) != sizeof(gen))
		die("source", EPIPE);
	t0 = now_ns();
	err = luffd_ctx_create(&opts, &ctx);
	if (err)
		die("luffd_ctx_create", -err);
	err = luffd_store_nbd(sv.uri, 0, &store);
	if (err == -EOPNOTSUPP) {
		fprintf(stderr, "postcopy: libuffd was built without NBD\n");
		return 77;
	}
	if (err)
		die("luffd_store_nbd", -err);
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap", errno);
	err = luffd_register(ctx, mem, size, store, 0,
			     push ? LUFFD_REGISTER_PUSH : 0);
	if (err)
		die("luffd_register", -err);
	luffd_store_put(store);
	w = calloc(threads, sizeof(*w));
	for (unsigned int i = 0; i < threads; i++) {
		w[i] = (struct worker){ .mem = mem, .npg = size / ps, .ps = ps,
					.gen = gen, .touches = touches,
					.seed = 0x9e3779b97f4a7c15ull * (i + 1) };
		if (pthread_create(&w[i].t, NULL, worker_main, &w[i]))
			die("pthread_create", errno);
	}
	if (push) {
		err = luffd_push_wait(ctx, mem, size, -1);
		if (err)
			die("luffd_push_wait", -err);
	} else {
		/* Without push the workers alone bring pages in: the whole
		 * region only once they have touched it all, so here the
		 * destination reads what is left itself. */
		err = luffd_prefetch(ctx, mem, size, LUFFD_PREFETCH_WAIT);
		if (err)
			die("luffd_prefetch", -err);
	}
	t_done = now_ns();
	for (unsigned int i = 0; i < threads; i++) {
		pthread_join(w[i].t, NULL);
		bad += w[i].bad;
	}
	t_workers = now_ns();
	luffd_ctx_sync(ctx);
	luffd_stats_get(ctx, &st);
	luffd_latency_percentile(ctx, LUFFD_MAJOR, 50, &p50);
	luffd_latency_percentile(ctx, LUFFD_MAJOR, 99, &p99);

	/* Every page present, and right. */
	vec = malloc(size / ps);
	if (mincore(mem, size, vec))
		die("mincore", errno);
	for (size_t pg = 0; pg < size / ps; pg++) {
		const uint64_t *p = (const uint64_t *)(mem + pg * ps);

		if (!(vec[pg] & 1)) {
			fprintf(stderr, "page %zu was never installed\n", pg);
			bad++;
		}
		for (size_t i = 0; i < ps / 8; i++)
			if (p[i] != word(pg * ps + i * 8, gen)) {
				if (bad < 10)
					fprintf(stderr, "page %zu word %zu "
						"differs\n", pg, i);
				bad++;
				break;
			}
	}
	printf("postcopy: %zu MiB, %u worker threads, %u us per request, "
	       "%s\n", size >> 20, threads, delay_us,
	       push ? "background push" : "no push (prefetch after)");
	printf("  migration time      %.1f ms (%.0f MiB/s), generation %llu\n",
	       (double)(t_done - t0) / 1e6,
	       (double)size / 1048576.0 / ((double)(t_done - t0) / 1e9),
	       (unsigned long long)gen);
	printf("  pages               %zu: %llu by demand faults, %llu pushed, "
	       "%llu prefetched, %llu read around\n", size / ps,
	       (unsigned long long)(st.faults[LUFFD_MAJOR] +
				    st.faults[LUFFD_MINOR]),
	       (unsigned long long)st.pushed,
	       (unsigned long long)st.prefetched,
	       (unsigned long long)(st.readahead_pages + st.installed_ahead));
	printf("  demand faults that  joined a read in flight %llu, waited for "
	       "a read or cache slot %llu\n",
	       (unsigned long long)st.coalesced, (unsigned long long)st.waits);
	printf("  demand faults       major p50 %.1f us, p99 %.1f us "
	       "(%.1fx the delay); workers done %.1f ms after the start, "
	       "%u random pages each\n",
	       (double)p50 / 1e3, (double)p99 / 1e3,
	       delay_us ? (double)p99 / 1e3 / delay_us : 0.0,
	       (double)(t_workers - t0) / 1e6, touches);
	if (nbdcopy) {
		int64_t tc = time_nbdcopy(sv.uri);

		if (tc > 0)
			printf("  nbdcopy             %.1f ms: migration / "
			       "nbdcopy = %.2f\n", (double)tc / 1e6,
			       (double)(t_done - t0) / (double)tc);
		else
			printf("  nbdcopy             failed\n");
	}
	/* Blocktime as QEMU reports it: per thread, and across them. */
	printf("  blocktime           %llu threads: %.1f ms in all (most "
	       "%.1f ms in one), >=1 blocked %.1f ms, all %llu blocked "
	       "%.1f ms\n",
	       (unsigned long long)st.blocktime_threads_seen,
	       (double)st.blocktime_sum_ns / 1e6,
	       (double)st.blocktime_max_ns / 1e6,
	       (double)st.blocktime_any_ns / 1e6,
	       (unsigned long long)st.blocktime_all_threads,
	       (double)st.blocktime_all_ns / 1e6);
	printf("  latency dist        faults per [2^N us, 2^N+1 us):");
	for (int b = 0; b < LUFFD_LATENCY_DIST_BUCKETS; b++)
		if (st.latency_dist[b])
			printf(" %d:%llu", b,
			       (unsigned long long)st.latency_dist[b]);
	printf("\n");
	cpu_report(t_done - t0);
	printf("  pages checked       %s\n", bad ? "WRONG" : "all right");
	luffd_unregister(ctx, mem, size);
	luffd_ctx_destroy(ctx);
	munmap(mem, size);
	free(vec);
	free(w);
	server_stop(&sv);
	kill(src, SIGKILL);
	waitpid(src, NULL, 0);
	unlink(path);
	return bad ? 1 : 0;
}
