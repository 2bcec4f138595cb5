/* SPDX-License-Identifier: MIT */
/*
 * uffd-bench: map a file, touch it with an access pattern, and report what
 * the page faults cost, for libuffd, the kernel's own mmap and a textbook
 * userfaultfd handler side by side.  See bench/README.md.
 */
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "bench.h"

#define DEFAULT_SIZE (256ull << 20)

static void usage(FILE *f)
{
	fprintf(f,
"Usage: uffd-bench [OPTIONS]\n"
"Map a file, touch its pages in a chosen order, and report what the page\n"
"faults cost for libuffd, the kernel's mmap and a textbook userfaultfd\n"
"handler, side by side.\n"
"\n"
"Workload:\n"
"  --file PATH            map this file (read-only; verified against its\n"
"                         own contents)\n"
"  --size BYTES           generate a file of this size instead (suffixes\n"
"                         K, M, G, T; default 256M) in $TMPDIR or /tmp,\n"
"                         removed at exit\n"
"  --pattern LIST         comma list of seq, rand, stride:N (N pages),\n"
"                         zipf or zipf:S (exponent, default 0.99);\n"
"                         default seq,rand\n"
"  --seed N               seed for rand and zipf (default 1)\n"
"  --threads N            faulting threads, pages split between them\n"
"                         (default 1)\n"
"  --engine LIST          comma list of libuffd, mmap, naive, pread,\n"
"                         fill, bare, prefetch (libuffd with a prefetch\n"
"                         of the whole mapping started first), or all\n"
"                         (the first three; default); with --workload\n"
"                         ooc: libuffd, mmap-shared or all (both)\n"
"  --warm                 page cache warm only (file read first)\n"
"  --cold                 page cache cold only (file dropped before each\n"
"                         engine)\n"
"  --warm-and-cold        both (default)\n"
"  --repeat N             repeat every run N times (default 1)\n"
"  --no-memory-warm       do not touch and free the run's size of memory\n"
"                         before each run (see bench/README.md)\n"
"  --workload W           touch (default: every page touched once, read)\n"
"                         or ooc: out of core, random reads and writes\n"
"                         of a generated file larger than a memory limit\n"
"\n"
"Out of core (--workload ooc; any of these flags implies it):\n"
"  --resident BYTES       the limit: libuffd's resident_bytes, and each\n"
"                         run's memory cgroup (default a quarter of --size)\n"
"  --write-ratio R        fraction of the touches that write (default 0.5)\n"
"  --passes N             touches per page, each pass in a new random order\n"
"                         (default 1)\n"
"  --memory-limit BYTES   the cgroup's limit, if not --resident (0: no\n"
"                         cgroup, the RSS only)\n"
"  --mmap-advice A        random (default: madvise(MADV_RANDOM), no\n"
"                         read-around) or normal (the kernel's default)\n"
"                         for mmap-shared\n"
"  Engines libuffd (LUFFD_MAP_WRITEBACK) and mmap-shared (the kernel's\n"
"  mmap(MAP_SHARED)), the default; each run in a child process in a memory\n"
"  cgroup of its own, always cold, its peak RSS sampled; the file is then\n"
"  checked against a model of every write.  libuffd's --cache-size defaults\n"
"  to a 32nd of the limit here (see bench/README.md).\n"
"\n"
"libuffd settings (absent = the library's default):\n"
"  --handler-threads N    handler threads\n"
"  --cache-size BYTES     libuffd page cache size\n"
"  --readahead BYTES      largest read-ahead window (0 = single-page reads)\n"
"  --readahead-mode M     adaptive (default) or fixed\n"
"  --install-ahead BYTES  install the cached pages after a fault (0 = off)\n"
"  --direct               read the file with O_DIRECT\n"
"  --store S              file (default) or memory: libuffd serves a copy\n"
"                         of the file read into memory (minor faults);\n"
"                         async or callback: that copy served after\n"
"                         --store-latency-us by another thread (an\n"
"                         asynchronous store) or by a fill() that sleeps\n"
"                         (a callback store on libuffd's workers), as a\n"
"                         remote source would; naive then sleeps as long\n"
"                         per fault; nbd: the file exported by an nbdkit\n"
"                         the bench starts (its reads delayed by\n"
"                         nbdkit-delayus-filter.so, found next to\n"
"                         uffd-bench; without it, whole ms only)\n"
"  --store-latency-us N   the delay of each request (default 0); with a\n"
"                         non-zero N libuffd also runs once at 0 and the\n"
"                         report gives its faults/s against the ideal,\n"
"                         min(threads / N, that zero-latency rate)\n"
"  --install M            auto (default: sequential streams move in 2 MiB\n"
"                         chunks where the mapping allows) or copy\n"
"  --spin-us N            busy-poll the userfaultfd N us before sleeping\n"
"                         (0 = never)\n"
"  --handler-cpus MASK    pin the handler threads (libuffd, naive, bare) to\n"
"                         these CPUs (bit n = CPU n, decimal)\n"
"  --thread-cpus MASK     pin the faulting threads likewise\n"
"  --stripe-bytes BYTES   with several handler threads, stripe the mapping\n"
"                         over them (0 = one handler per mapping)\n"
"  --queue-depth N        io_uring entries per handler thread\n"
"  --open-mode MODE       auto, dev, syscall or user (how to get the uffd)\n"
"  --prot P               rw (default) or r: protection of the libuffd and\n"
"                         mmap mappings (chunks need rw)\n"
"\n"
"Output:\n"
"  --trace FILE           libuffd fault trace (one file per libuffd run:\n"
"                         FILE, or FILE.<pattern>-<warm|cold>-<rep> when\n"
"                         there are several)\n"
"  --trace-format F       pfaults (default) or csv\n"
"  --json FILE            machine-readable report (see bench/README.md)\n"
"  --plot FILE.png        latency CDF per engine with gnuplot\n"
"  --quiet                no progress or informational messages\n"
"  --help                 this text\n"
"\n"
"Testing:\n"
"  --timeout SEC          fail a run that takes longer (default 300, 0 off)\n"
"  --corrupt-page N       libuffd serves page N with one byte flipped (the\n"
"                         run must then fail verification)\n"
"  --check-uffd           exit 0 if a userfaultfd can be opened, else 77\n"
"  --check-cgroup         exit 0 if a memory cgroup can be made for a run\n"
"                         (--workload ooc), else 77\n"
"  --lose-write           ooc: undo one write of each run (the run must\n"
"                         then fail verification)\n"
"\n"
"Exit status: 0 all runs verified, 1 a run failed, 2 bad arguments.\n");
}

static void bad_arg(const char *fmt, ...) __attribute__((format(printf, 1, 2),
							 noreturn));

static void bad_arg(const char *fmt, ...)
{
	va_list ap;

	fputs("uffd-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'uffd-bench --help'.\n", stderr);
	exit(EXIT_USAGE);
}

static uint64_t parse_uint(const char *opt, const char *s, uint64_t min,
			   uint64_t max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (!s || !*s || *s == '-' || *s == '+')
		bad_arg("%s: '%s' is not a number", opt, s ? s : "");
	v = strtoull(s, &end, 10);
	if (errno || *end)
		bad_arg("%s: '%s' is not a number", opt, s);
	if (v < min || v > max)
		bad_arg("%s: %llu is out of range [%" PRIu64 ", %" PRIu64 "]",
			opt, v, min, max);
	return v;
}

static uint64_t parse_bytes(const char *opt, const char *s, uint64_t min,
			    uint64_t max)
{
	uint64_t v;

	if (parse_size(s, &v))
		bad_arg("%s: '%s' is not a size (a number with an optional "
			"K, M, G or T suffix)", opt, s);
	if (v < min || v > max)
		bad_arg("%s: %s is out of range [%" PRIu64 ", %" PRIu64 "]",
			opt, s, min, max);
	return v;
}

static void parse_patterns(struct config *cfg, const char *arg)
{
	char *dup = strdup(arg), *save = NULL, *tok;

	cfg->npats = 0;
	for (tok = strtok_r(dup, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		struct pattern *p;

		if (cfg->npats == MAX_PATTERNS)
			bad_arg("--pattern: at most %d patterns", MAX_PATTERNS);
		p = &cfg->pats[cfg->npats++];
		memset(p, 0, sizeof(*p));
		snprintf(p->name, sizeof(p->name), "%s", tok);
		if (!strcmp(tok, "seq")) {
			p->kind = PAT_SEQ;
		} else if (!strcmp(tok, "rand")) {
			p->kind = PAT_RAND;
		} else if (!strncmp(tok, "stride:", 7)) {
			p->kind = PAT_STRIDE;
			p->stride = parse_uint("--pattern stride:N", tok + 7,
					       1, UINT32_MAX);
		} else if (!strcmp(tok, "zipf")) {
			p->kind = PAT_ZIPF;
			p->zipf_s = 0.99;
		} else if (!strncmp(tok, "zipf:", 5)) {
			char *end;

			p->kind = PAT_ZIPF;
			errno = 0;
			p->zipf_s = strtod(tok + 5, &end);
			if (errno || end == tok + 5 || *end ||
			    !(p->zipf_s > 0 && p->zipf_s <= 10))
				bad_arg("--pattern: zipf exponent '%s' must be "
					"a number in (0, 10]", tok + 5);
		} else {
			bad_arg("--pattern: unknown pattern '%s' (seq, rand, "
				"stride:N, zipf[:S])", tok);
		}
	}
	free(dup);
	if (!cfg->npats)
		bad_arg("--pattern: empty list");
}

static void parse_engines(struct config *cfg, const char *arg)
{
	char *dup = strdup(arg), *save = NULL, *tok;
	bool seen[NR_ENGINES] = { false };
	int e;

	cfg->nengines = 0;
	for (tok = strtok_r(dup, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		if (!strcmp(tok, "all") && cfg->workload == WL_OOC) {
			for (e = 0; e < 2; e++) {
				enum engine x = e ? ENG_MMAP_SHARED
						  : ENG_LIBUFFD;

				if (!seen[x]) {
					seen[x] = true;
					cfg->engines[cfg->nengines++] = x;
				}
			}
			continue;
		}
		if (!strcmp(tok, "all")) {
			for (e = 0; e < NR_FAULT_ENGINES; e++)
				if (!seen[e]) {
					seen[e] = true;
					cfg->engines[cfg->nengines++] =
						(enum engine)e;
				}
			continue;
		}
		for (e = 0; e < NR_ENGINES; e++)
			if (!strcmp(tok, engine_name((enum engine)e)))
				break;
		if (e == NR_ENGINES)
			bad_arg("--engine: unknown engine '%s' (libuffd, "
				"mmap, naive, pread, fill, bare, prefetch, "
				"nbdcopy, mmap-shared, all)", tok);
		if (!seen[e]) {
			seen[e] = true;
			cfg->engines[cfg->nengines++] = (enum engine)e;
		}
	}
	free(dup);
	if (!cfg->nengines)
		bad_arg("--engine: empty list");
}

enum {
	OPT_FILE = 256, OPT_SIZE, OPT_PATTERN, OPT_SEED, OPT_THREADS,
	OPT_ENGINE, OPT_WARM, OPT_COLD, OPT_BOTH, OPT_REPEAT, OPT_HTHREADS,
	OPT_CACHE, OPT_RA, OPT_DIRECT, OPT_SPIN, OPT_QD, OPT_OPEN, OPT_TRACE,
	OPT_TFMT, OPT_JSON, OPT_PLOT, OPT_QUIET, OPT_HELP, OPT_TIMEOUT,
	OPT_CORRUPT, OPT_CHECK, OPT_RAMODE, OPT_IA, OPT_INSTALL, OPT_PROT,
	OPT_NOMEMWARM, OPT_STORE, OPT_HCPUS, OPT_TCPUS, OPT_STRIPE,
	OPT_STORELAT, OPT_WORKLOAD, OPT_RESIDENT, OPT_WRATIO, OPT_PASSES,
	OPT_MEMLIMIT, OPT_LOSEWRITE, OPT_CHECKCG, OPT_MADV,
};

static const struct option long_opts[] = {
	{ "file", required_argument, NULL, OPT_FILE },
	{ "size", required_argument, NULL, OPT_SIZE },
	{ "pattern", required_argument, NULL, OPT_PATTERN },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "engine", required_argument, NULL, OPT_ENGINE },
	{ "engines", required_argument, NULL, OPT_ENGINE },
	{ "warm", no_argument, NULL, OPT_WARM },
	{ "cold", no_argument, NULL, OPT_COLD },
	{ "warm-and-cold", no_argument, NULL, OPT_BOTH },
	{ "repeat", required_argument, NULL, OPT_REPEAT },
	{ "handler-threads", required_argument, NULL, OPT_HTHREADS },
	{ "cache-size", required_argument, NULL, OPT_CACHE },
	{ "readahead", required_argument, NULL, OPT_RA },
	{ "direct", no_argument, NULL, OPT_DIRECT },
	{ "spin-us", required_argument, NULL, OPT_SPIN },
	{ "queue-depth", required_argument, NULL, OPT_QD },
	{ "open-mode", required_argument, NULL, OPT_OPEN },
	{ "trace", required_argument, NULL, OPT_TRACE },
	{ "trace-format", required_argument, NULL, OPT_TFMT },
	{ "json", required_argument, NULL, OPT_JSON },
	{ "plot", required_argument, NULL, OPT_PLOT },
	{ "quiet", no_argument, NULL, OPT_QUIET },
	{ "help", no_argument, NULL, OPT_HELP },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "corrupt-page", required_argument, NULL, OPT_CORRUPT },
	{ "check-uffd", no_argument, NULL, OPT_CHECK },
	{ "readahead-mode", required_argument, NULL, OPT_RAMODE },
	{ "install-ahead", required_argument, NULL, OPT_IA },
	{ "install", required_argument, NULL, OPT_INSTALL },
	{ "prot", required_argument, NULL, OPT_PROT },
	{ "no-memory-warm", no_argument, NULL, OPT_NOMEMWARM },
	{ "store", required_argument, NULL, OPT_STORE },
	{ "store-latency-us", required_argument, NULL, OPT_STORELAT },
	{ "handler-cpus", required_argument, NULL, OPT_HCPUS },
	{ "thread-cpus", required_argument, NULL, OPT_TCPUS },
	{ "stripe-bytes", required_argument, NULL, OPT_STRIPE },
	{ "workload", required_argument, NULL, OPT_WORKLOAD },
	{ "resident", required_argument, NULL, OPT_RESIDENT },
	{ "write-ratio", required_argument, NULL, OPT_WRATIO },
	{ "passes", required_argument, NULL, OPT_PASSES },
	{ "memory-limit", required_argument, NULL, OPT_MEMLIMIT },
	{ "lose-write", no_argument, NULL, OPT_LOSEWRITE },
	{ "mmap-advice", required_argument, NULL, OPT_MADV },
	{ "check-cgroup", no_argument, NULL, OPT_CHECKCG },
	{ NULL, 0, NULL, 0 },
};

static bool has_engine(const struct config *cfg, enum engine e)
{
	int i;

	for (i = 0; i < cfg->nengines; i++)
		if (cfg->engines[i] == e)
			return true;
	return false;
}

/* What the command line said, where the ooc workload needs to know. */
struct given {
	bool warm, warm_and_cold, size, pattern, prot, store, cache;
	bool resident, memory_limit;
	int workload;           /* -1: not given */
	const char *ooc_flag;   /* an ooc flag given (it implies ooc) */
	const char *engines;    /* --engine, parsed once the workload is
				   known */
};

static double parse_ratio(const char *opt, const char *s)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= 0 && v <= 1))
		bad_arg("%s: '%s' is not a number in [0, 1]", opt, s);
	return v;
}

/* --workload ooc: its defaults, and what it cannot take. */
static void check_ooc(struct config *cfg, const struct given *g)
{
	uint64_t lim;

	if (cfg->file)
		bad_arg("--workload ooc writes to its file: it takes a "
			"generated one (--size), not --file");
	if (g->pattern && (cfg->npats != 1 || cfg->pats[0].kind != PAT_RAND))
		bad_arg("--workload ooc touches in random order: --pattern "
			"rand only");
	if (g->warm || g->warm_and_cold)
		bad_arg("--workload ooc runs cold only: the file leaves the "
			"page cache before each run, so that its pages are "
			"charged to the run's cgroup");
	if (cfg->store != STORE_FILE)
		bad_arg("--workload ooc: --store file only (libuffd writes "
			"back to the file)");
	if (!(cfg->prot & PROT_WRITE))
		bad_arg("--workload ooc writes: --prot rw only");
	if (cfg->trace_path || cfg->plot_path || cfg->corrupt_page >= 0)
		bad_arg("--workload ooc takes no --trace, --plot or "
			"--corrupt-page");
	for (int e = 0; e < cfg->nengines; e++)
		if (cfg->engines[e] != ENG_LIBUFFD &&
		    cfg->engines[e] != ENG_MMAP_SHARED)
			bad_arg("--workload ooc: engines libuffd and "
				"mmap-shared only, not %s",
				engine_name(cfg->engines[e]));
	if (cfg->size % cfg->page)
		bad_arg("--workload ooc: --size must be a multiple of the "
			"page size (%zu)", cfg->page);
	if (!g->resident)
		cfg->resident_bytes = cfg->size / 4 / cfg->page * cfg->page;
	if (cfg->resident_bytes % cfg->page ||
	    cfg->resident_bytes < 16 * cfg->page)
		bad_arg("--resident: a multiple of the page size (%zu), at "
			"least 16 pages", cfg->page);
	if (cfg->resident_bytes >= cfg->size)
		bad_arg("--resident %" PRIu64 " holds the whole file (--size "
			"%" PRIu64 "): out of core needs a larger file",
			cfg->resident_bytes, cfg->size);
	if (!g->memory_limit)
		cfg->memory_limit = cfg->resident_bytes;
	/* libuffd's cache is not part of resident_bytes but is in the
	 * cgroup's limit: a 32nd of it by default (the library's 64 MiB
	 * would take a quarter of a 256 MiB limit). */
	lim = cfg->memory_limit ? cfg->memory_limit : cfg->resident_bytes;
	if (!g->cache) {
		cfg->cache_bytes = lim / 32 / cfg->page * cfg->page;
		if (cfg->cache_bytes > (64ull << 20))
			cfg->cache_bytes = 64ull << 20;
		if (cfg->cache_bytes < (1ull << 20))
			cfg->cache_bytes = 1ull << 20;
	}
	cfg->pats[0] = (struct pattern){ .kind = PAT_RAND, .name = "rand" };
	cfg->npats = 1;
	cfg->do_warm = false;
	cfg->do_cold = true;
}

static void parse_args(struct config *cfg, int argc, char **argv)
{
	bool warm = false, cold = false, size_set = false, lat_set = false;
	struct given g = { .workload = -1 };
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_FILE:
			if (!*optarg)
				bad_arg("--file: empty path");
			cfg->file = optarg;
			break;
		case OPT_SIZE:
			cfg->size = parse_bytes("--size", optarg, 1,
						(uint64_t)UINT32_MAX *
						cfg->page);
			size_set = true;
			break;
		case OPT_PATTERN:
			parse_patterns(cfg, optarg);
			g.pattern = true;
			break;
		case OPT_SEED:
			cfg->seed = parse_uint("--seed", optarg, 0, UINT64_MAX);
			break;
		case OPT_THREADS:
			cfg->threads = (unsigned int)parse_uint("--threads",
								optarg, 1,
								1024);
			break;
		case OPT_ENGINE:
			g.engines = optarg;
			break;
		case OPT_WARM:
			warm = g.warm = true;
			break;
		case OPT_COLD:
			cold = true;
			break;
		case OPT_BOTH:
			warm = cold = g.warm_and_cold = true;
			break;
		case OPT_WORKLOAD:
			if (!strcmp(optarg, "touch"))
				g.workload = WL_TOUCH;
			else if (!strcmp(optarg, "ooc"))
				g.workload = WL_OOC;
			else
				bad_arg("--workload: touch or ooc, not '%s'",
					optarg);
			break;
		case OPT_RESIDENT:
			cfg->resident_bytes = parse_bytes("--resident", optarg,
							  1, 1ull << 40);
			g.resident = true;
			g.ooc_flag = "--resident";
			break;
		case OPT_WRATIO:
			cfg->write_ratio = parse_ratio("--write-ratio", optarg);
			g.ooc_flag = "--write-ratio";
			break;
		case OPT_PASSES:
			cfg->passes = (unsigned int)parse_uint("--passes",
							       optarg, 1, 1000);
			g.ooc_flag = "--passes";
			break;
		case OPT_MEMLIMIT:
			cfg->memory_limit = parse_bytes("--memory-limit",
							optarg, 0, 1ull << 50);
			g.memory_limit = true;
			g.ooc_flag = "--memory-limit";
			break;
		case OPT_MADV:
			if (!strcmp(optarg, "random"))
				cfg->mmap_random = true;
			else if (!strcmp(optarg, "normal"))
				cfg->mmap_random = false;
			else
				bad_arg("--mmap-advice: random or normal, not "
					"'%s'", optarg);
			g.ooc_flag = "--mmap-advice";
			break;
		case OPT_LOSEWRITE:
			cfg->lose_write = true;
			g.ooc_flag = "--lose-write";
			break;
		case OPT_CHECKCG: {
			char why[1024];

			if (cg_check(why, sizeof(why)))
				exit(0);
			fprintf(stderr, "uffd-bench: %s\n", why);
			exit(EXIT_SKIP);
		}
		case OPT_REPEAT:
			cfg->repeat = (unsigned int)parse_uint("--repeat",
							       optarg, 1, 1000);
			break;
		case OPT_HTHREADS:
			cfg->handler_threads = (unsigned int)parse_uint(
				"--handler-threads", optarg, 1, 256);
			break;
		case OPT_CACHE:
			cfg->cache_bytes = parse_bytes("--cache-size", optarg,
						       1, UINT64_MAX);
			g.cache = true;
			break;
		case OPT_RA: {
			uint64_t v = parse_bytes("--readahead", optarg, 0,
						 1ull << 30);

			cfg->readahead_bytes = v ? (size_t)v
						 : LUFFD_NO_READAHEAD;
			break;
		}
		case OPT_DIRECT:
			cfg->direct = true;
			break;
		case OPT_RAMODE:
			if (!strcmp(optarg, "adaptive"))
				cfg->readahead_mode = LUFFD_RA_ADAPTIVE;
			else if (!strcmp(optarg, "fixed"))
				cfg->readahead_mode = LUFFD_RA_FIXED;
			else
				bad_arg("--readahead-mode: adaptive or fixed, "
					    "not '%s'", optarg);
			break;
		case OPT_IA: {
			uint64_t v = parse_bytes("--install-ahead", optarg, 0,
						 4ull << 20);

			cfg->install_ahead_bytes = v ? (size_t)v
						     : LUFFD_NO_INSTALL_AHEAD;
			break;
		}
		case OPT_INSTALL:
			if (!strcmp(optarg, "auto"))
				cfg->install_mode = LUFFD_INSTALL_AUTO;
			else if (!strcmp(optarg, "copy"))
				cfg->install_mode = LUFFD_INSTALL_COPY;
			else
				bad_arg("--install: auto or copy, not '%s'",
					optarg);
			break;
		case OPT_PROT:
			if (!strcmp(optarg, "rw"))
				cfg->prot = PROT_READ | PROT_WRITE;
			else if (!strcmp(optarg, "r"))
				cfg->prot = PROT_READ;
			else
				bad_arg("--prot: r or rw, not '%s'", optarg);
			g.prot = true;
			break;
		case OPT_HCPUS:
			cfg->handler_cpus = parse_uint("--handler-cpus",
						       optarg, 1, UINT64_MAX);
			break;
		case OPT_STRIPE:
			cfg->stripe_bytes = parse_bytes("--stripe-bytes",
							optarg, 0, 1ull << 40);
			break;
		case OPT_TCPUS:
			cfg->thread_cpus = parse_uint("--thread-cpus", optarg,
						      1, UINT64_MAX);
			break;
		case OPT_STORE:
			if (!strcmp(optarg, "file"))
				cfg->store = STORE_FILE;
			else if (!strcmp(optarg, "memory"))
				cfg->store = STORE_MEM;
			else if (!strcmp(optarg, "async"))
				cfg->store = STORE_ASYNC;
			else if (!strcmp(optarg, "callback"))
				cfg->store = STORE_CALLBACK;
			else if (!strcmp(optarg, "nbd"))
				cfg->store = STORE_NBD;
			else
				bad_arg("--store: file, memory, async, "
					"callback or nbd, not '%s'", optarg);
			cfg->store_mem = cfg->store == STORE_MEM;
			break;
		case OPT_STORELAT:
			cfg->store_lat_us = parse_uint("--store-latency-us",
						       optarg, 0, 10000000);
			lat_set = true;
			break;
		case OPT_NOMEMWARM:
			cfg->no_memory_warm = true;
			break;
		case OPT_SPIN:
			cfg->spin_us = (unsigned int)parse_uint("--spin-us",
								optarg, 0,
								1000000);
			if (!cfg->spin_us)
				cfg->spin_us = LUFFD_NO_SPIN;
			break;
		case OPT_QD:
			cfg->queue_depth = (unsigned int)parse_uint(
				"--queue-depth", optarg, 1, 4096);
			break;
		case OPT_OPEN:
			if (!strcmp(optarg, "auto"))
				cfg->open_mode = LUFFD_OPEN_AUTO;
			else if (!strcmp(optarg, "dev"))
				cfg->open_mode = LUFFD_OPEN_DEV;
			else if (!strcmp(optarg, "syscall"))
				cfg->open_mode = LUFFD_OPEN_SYSCALL;
			else if (!strcmp(optarg, "user"))
				cfg->open_mode = LUFFD_OPEN_USER_ONLY;
			else
				bad_arg("--open-mode: '%s' is not auto, dev, "
					"syscall or user", optarg);
			break;
		case OPT_TRACE:
			if (!*optarg)
				bad_arg("--trace: empty path");
			cfg->trace_path = optarg;
			break;
		case OPT_TFMT:
			if (!strcmp(optarg, "pfaults"))
				cfg->trace_fmt = LUFFD_TRACE_PFAULTS;
			else if (!strcmp(optarg, "csv"))
				cfg->trace_fmt = LUFFD_TRACE_CSV;
			else
				bad_arg("--trace-format: '%s' is not pfaults "
					"or csv", optarg);
			break;
		case OPT_JSON:
			if (!*optarg)
				bad_arg("--json: empty path");
			cfg->json_path = optarg;
			break;
		case OPT_PLOT:
			if (!*optarg)
				bad_arg("--plot: empty path");
			cfg->plot_path = optarg;
			break;
		case OPT_QUIET:
			cfg->quiet = true;
			break;
		case OPT_HELP:
			usage(stdout);
			exit(0);
		case OPT_TIMEOUT:
			cfg->timeout_s = (unsigned int)parse_uint("--timeout",
								  optarg, 0,
								  86400);
			break;
		case OPT_CORRUPT:
			cfg->corrupt_page = (int64_t)parse_uint(
				"--corrupt-page", optarg, 0, UINT32_MAX);
			break;
		case OPT_CHECK: {
			char why[256];

			if (uffd_available(why, sizeof(why)))
				exit(0);
			fprintf(stderr, "uffd-bench: %s\n", why);
			exit(EXIT_SKIP);
		}
		case ':':
			bad_arg("option '%s' needs an argument",
				argv[optind - 1]);
		default:
			bad_arg("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		bad_arg("unexpected argument '%s'", argv[optind]);
	if (cfg->file && size_set)
		bad_arg("--file and --size exclude each other");
	cfg->workload = g.workload == WL_OOC ||
			(g.workload < 0 && g.ooc_flag) ? WL_OOC : WL_TOUCH;
	if (cfg->workload == WL_OOC) {
		cfg->engines[0] = ENG_LIBUFFD;
		cfg->engines[1] = ENG_MMAP_SHARED;
		cfg->nengines = 2;
	}
	if (g.engines)
		parse_engines(cfg, g.engines);
	if (g.workload == WL_TOUCH && g.ooc_flag)
		bad_arg("%s needs --workload ooc", g.ooc_flag);
	if (cfg->workload == WL_OOC)
		check_ooc(cfg, &g);
	else if (has_engine(cfg, ENG_MMAP_SHARED))
		bad_arg("--engine mmap-shared needs --workload ooc");
	if ((warm || cold) && cfg->workload != WL_OOC) {
		cfg->do_warm = warm;
		cfg->do_cold = cold;
	}
	if (cfg->trace_path && !has_engine(cfg, ENG_LIBUFFD))
		bad_arg("--trace needs the libuffd engine");
	if (cfg->corrupt_page >= 0 && !has_engine(cfg, ENG_LIBUFFD))
		bad_arg("--corrupt-page needs the libuffd engine");
	if (cfg->corrupt_page >= 0 && cfg->store != STORE_FILE)
		bad_arg("--corrupt-page needs --store file (it is a callback "
			"store over the file)");
	if (lat_set && cfg->store != STORE_ASYNC &&
	    cfg->store != STORE_CALLBACK && cfg->store != STORE_NBD)
		bad_arg("--store-latency-us needs --store async, callback or "
			"nbd");
	if (cfg->store == STORE_NBD && cfg->store_lat_us % 1000 &&
	    !nbd_delayus_filter())
		bad_arg("--store nbd: --store-latency-us in whole "
			"milliseconds: no nbdkit-delayus-filter.so next to "
			"uffd-bench, so nbdkit's delay filter");
	if (has_engine(cfg, ENG_NBDCOPY) && cfg->store != STORE_NBD)
		bad_arg("--engine nbdcopy needs --store nbd");
	if (cfg->thread_cpus) {
		cpu_set_t set;
		uint64_t online = 0;

		if (!sched_getaffinity(0, sizeof(set), &set))
			for (int i = 0; i < 64; i++)
				if (CPU_ISSET(i, &set))
					online |= 1ull << i;
		if (online && !(cfg->thread_cpus & online))
			bad_arg("--thread-cpus: no CPU of 0x%llx is available "
				"(0x%llx are)",
				(unsigned long long)cfg->thread_cpus,
				(unsigned long long)online);
	}
	/* A setting the library refuses is a bad argument: say so now, not
	 * after generating the file and running the other engines. */
	if ((has_engine(cfg, ENG_LIBUFFD) || has_engine(cfg, ENG_PREFETCH)) &&
	    libuffd_settings_check(cfg) == -EINVAL)
		bad_arg("libuffd refuses these settings (-EINVAL): see the "
			"limits in include/libuffd.h");
}

static int print_fn(enum luffd_print_level level, const char *fmt, va_list ap)
{
	if (level > LUFFD_WARN)
		return 0;
	fputs("libuffd: ", stderr);
	return vfprintf(stderr, fmt, ap);
}

static void open_file(struct config *cfg)
{
	struct stat st;
	int fd = open(cfg->file, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		bad_arg("--file %s: %s", cfg->file, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		bad_arg("--file %s: not a regular file", cfg->file);
	if (st.st_size <= 0)
		bad_arg("--file %s: empty file", cfg->file);
	close(fd);
	cfg->size = (uint64_t)st.st_size;
	snprintf(cfg->path, sizeof(cfg->path), "%s", cfg->file);
}

static void prepare_cache(const struct config *cfg, int fd, struct run *r)
{
	uint64_t res = 0;
	int err;

	if (r->cold) {
		err = make_cold(cfg, fd, &res);
		if (err) {
			fprintf(stderr, "uffd-bench: %s: could not drop the "
				"file from the page cache: %s\n", r->label,
				strerror(-err));
			r->cache_state_ok = false;
			return;
		}
		r->cache_state_ok = res == 0;
		if (res)
			fprintf(stderr, "uffd-bench: %s: %" PRIu64 " of %"
				PRIu64 " pages still in the page cache after "
				"fsync + POSIX_FADV_DONTNEED (mapped "
				"elsewhere, dirty, or a file system that keeps "
				"them): the run is not fully cold\n",
				r->label, res, cfg->npages);
	} else {
		err = make_warm(cfg, fd, &res);
		if (err) {
			fprintf(stderr, "uffd-bench: %s: could not check the "
				"page cache: %s\n", r->label, strerror(-err));
			r->cache_state_ok = false;
			return;
		}
		r->cache_state_ok = res == cfg->npages;
		if (!r->cache_state_ok)
			fprintf(stderr, "uffd-bench: %s: only %" PRIu64 " of %"
				PRIu64 " pages in the page cache after reading "
				"the file (memory pressure?): the run is not "
				"fully warm\n", r->label, res, cfg->npages);
	}
	r->resident_before = res;
}

static void sanitize(char *dst, size_t n, const char *src)
{
	size_t i;

	for (i = 0; src[i] && i + 1 < n; i++)
		dst[i] = (src[i] == ':' || src[i] == '/') ? '_' : src[i];
	dst[i] = 0;
}

/* This process's bytes read from storage so far (/proc/self/io
 * read_bytes: every thread, io_uring's workers included); 0 if unknown. */
static uint64_t io_read_bytes(void)
{
	char line[128];
	unsigned long long v = 0;
	FILE *f = fopen("/proc/self/io", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "read_bytes: %llu", &v) == 1)
			break;
	fclose(f);
	return (uint64_t)v;
}

/* r's read amplification (see struct run); dev: the device bytes read
 * during it. */
static void read_amp(struct run *r, uint64_t dev, size_t page)
{
	switch (r->eng) {
	case ENG_LIBUFFD:
	case ENG_PREFETCH:
		r->bytes_read = r->st.bytes_read;
		break;
	case ENG_NAIVE:
		r->bytes_read = r->faults_total * page;
		break;
	case ENG_MMAP:
		r->bytes_read = dev;
		break;
	default:
		r->read_amp = NAN;
		return;
	}
	r->read_amp = r->bytes ? (double)r->bytes_read / (double)r->bytes
			       : NAN;
}

int main(int argc, char **argv)
{
	struct config cfg = {
		.size = DEFAULT_SIZE,
		.threads = 1,
		.repeat = 1,
		.seed = 1,
		.do_warm = true,
		.do_cold = true,
		.trace_fmt = LUFFD_TRACE_PFAULTS,
		.corrupt_page = -1,
		.timeout_s = 300,
		.prot = PROT_READ | PROT_WRITE,
		.write_ratio = 0.5,
		.passes = 1,
		.mmap_random = true,
	};
	uint32_t *orders[MAX_PATTERNS];
	uint64_t norders[MAX_PATTERNS];
	struct run *runs;
	size_t nruns = 0, total, idx = 0, ncalib;
	uint64_t io0;
	struct utsname u;
	char tmpdir[4096] = "";
	unsigned int rep, nstates, nluffd;
	uint32_t *lat;
	uint8_t *cls;
	bool all_ok = true;
	int fd, p, s, e, err;

	cfg.page = (size_t)sysconf(_SC_PAGESIZE);
	cfg.pats[0] = (struct pattern){ .kind = PAT_SEQ, .name = "seq" };
	cfg.pats[1] = (struct pattern){ .kind = PAT_RAND, .name = "rand" };
	cfg.npats = 2;
	for (e = 0; e < NR_FAULT_ENGINES; e++)
		cfg.engines[e] = (enum engine)e;
	cfg.nengines = NR_FAULT_ENGINES;
	install_signal_handlers();
	parse_args(&cfg, argc, argv);
	cfg.progress_tty = isatty(2);
	luffd_set_print(print_fn);

	if (cfg.file) {
		open_file(&cfg);
	} else {
		uint64_t t0 = now_ns();

		cfg.generated = true;
		if (!cfg.quiet)
			fprintf(stderr, "uffd-bench: generating a %.1f MiB "
				"file...\n", (double)cfg.size / 1048576.0);
		err = generate_file(&cfg, tmpdir, sizeof(tmpdir));
		if (err) {
			fprintf(stderr, "uffd-bench: cannot generate the file "
				"in %s: %s\n", tmpdir[0] ? tmpdir : "$TMPDIR",
				strerror(-err));
			return EXIT_RUN_FAILED;
		}
		if (!cfg.quiet)
			fprintf(stderr, "uffd-bench: %s written in %.2f s\n",
				cfg.path, (double)(now_ns() - t0) / 1e9);
	}
	cfg.npages = (cfg.size + cfg.page - 1) / cfg.page;
	if (cfg.corrupt_page >= 0 && (uint64_t)cfg.corrupt_page >= cfg.npages)
		bad_arg("--corrupt-page %" PRId64 ": the file has %" PRIu64
			" pages", cfg.corrupt_page, cfg.npages);
	fd = open(cfg.path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "uffd-bench: %s: %s\n", cfg.path,
			strerror(errno));
		return EXIT_RUN_FAILED;
	}
	if (cfg.store == STORE_NBD) {
		char sdir[] = "/tmp/uffd-bench-nbd.XXXXXX";

		/* The sockets' directory (a short path: sun_path is 108
		 * bytes), removed with the servers at exit. */
		if (!mkdtemp(sdir)) {
			fprintf(stderr, "uffd-bench: mkdtemp: %s\n",
				strerror(errno));
			return EXIT_RUN_FAILED;
		}
		err = nbd_servers_start(&cfg, sdir);
		if (err) {
			fprintf(stderr, "uffd-bench: starting nbdkit: %s\n",
				strerror(-err));
			return EXIT_RUN_FAILED;
		}
		if (!cfg.quiet)
			fprintf(stderr, "uffd-bench: serving %s over %s\n",
				cfg.path, cfg.nbd_uri);
		if (cfg.store_lat_us && nbd_delayus_filter() && !cfg.quiet)
			fprintf(stderr, "uffd-bench: %" PRIu64 " us per read "
				"by %s\n", cfg.store_lat_us,
				nbd_delayus_filter());
		else if (cfg.store_lat_us && !nbd_delayus_filter())
			fprintf(stderr, "uffd-bench: no nbdkit-delayus-filter"
				".so next to uffd-bench: %" PRIu64 " ms per "
				"read by nbdkit's delay filter\n",
				cfg.store_lat_us / 1000);
	}

	if (cfg.workload == WL_OOC) {
		err = ooc_setup(&cfg);
		if (err) {
			fprintf(stderr, "uffd-bench: --workload ooc: %s\n",
				strerror(-err));
			return EXIT_RUN_FAILED;
		}
		if (!cfg.quiet)
			ooc_notes(stderr, &cfg);
	}
	for (p = 0; p < cfg.npats; p++) {
		err = build_order(&cfg, &cfg.pats[p], &orders[p], &norders[p]);
		if (err) {
			fprintf(stderr, "uffd-bench: pattern %s: %s\n",
				cfg.pats[p].name, strerror(-err));
			return EXIT_RUN_FAILED;
		}
	}
	nstates = (unsigned int)cfg.do_warm + (unsigned int)cfg.do_cold;
	total = (size_t)cfg.repeat * (size_t)cfg.npats * nstates *
		(size_t)cfg.nengines;
	nluffd = has_engine(&cfg, ENG_LIBUFFD) ?
		 cfg.repeat * (unsigned int)cfg.npats * nstates : 0;
	/* The overlap ideal needs the same store's rate at zero latency:
	 * one more libuffd run per pattern and cache state. */
	ncalib = cfg.store_lat_us && has_engine(&cfg, ENG_LIBUFFD) ?
		 (size_t)cfg.repeat * cfg.npats * nstates : 0;
	total += ncalib;
	runs = calloc(total, sizeof(*runs));
	lat = malloc(cfg.npages * sizeof(*lat) + 1);
	cls = malloc(cfg.npages + 1);
	if (!runs || !lat || !cls) {
		fprintf(stderr, "uffd-bench: out of memory\n");
		return EXIT_RUN_FAILED;
	}
	if (cfg.trace_path && nluffd > 1 && !cfg.quiet)
		fprintf(stderr, "uffd-bench: %u libuffd runs: traces go to "
			"%s.<pattern>-<warm|cold>-<rep>\n", nluffd,
			cfg.trace_path);

	uname(&u);
	printf("uffd-bench: %s (%s%.1f MiB, %" PRIu64 " pages of %zu B), "
	       "%u faulting thread(s), seed %" PRIu64 ", kernel %s, %ld CPUs\n",
	       cfg.path, cfg.generated ? "generated, " : "",
	       (double)cfg.size / 1048576.0, cfg.npages, cfg.page, cfg.threads,
	       cfg.seed, u.release, sysconf(_SC_NPROCESSORS_ONLN));
	fflush(stdout);

	for (rep = 0; rep < cfg.repeat; rep++) {
		for (p = 0; p < cfg.npats; p++) {
			for (s = 0; s < 2; s++) {
				bool cold = s == 1;

				if ((cold && !cfg.do_cold) ||
				    (!cold && !cfg.do_warm))
					continue;
				/* e == nengines: the calibration run, in
				 * every repetition (its median is used). */
				for (e = 0; e < cfg.nengines + (ncalib != 0);
				     e++) {
					struct run *r = &runs[nruns++];
					struct bench_ctx b = {
						.cfg = &cfg, .fd = fd,
						.order = orders[p],
						.n = norders[p],
						.lat = lat, .cls = cls,
					};

					r->eng = e < cfg.nengines ?
						 cfg.engines[e] : ENG_LIBUFFD;
					r->pat = p;
					r->cold = cold;
					r->rep = rep;
					snprintf(r->label, sizeof(r->label),
						 "%s %s %s #%u",
						 engine_name(r->eng),
						 cfg.pats[p].name,
						 cold ? "cold" : "warm",
						 rep + 1);
					if (cfg.trace_path &&
					    r->eng == ENG_LIBUFFD) {
						char pn[64];

						sanitize(pn, sizeof(pn),
							 cfg.pats[p].name);
						if (nluffd == 1)
							snprintf(r->trace_file,
								 sizeof(r->trace_file),
								 "%s",
								 cfg.trace_path);
						else
							snprintf(r->trace_file,
								 sizeof(r->trace_file),
								 "%s.%s-%s-%u",
								 cfg.trace_path,
								 pn,
								 cold ? "cold" : "warm",
								 rep + 1);
					}
					r->calib = e == cfg.nengines;
					if (r->calib)
						snprintf(r->label,
							 sizeof(r->label),
							 "libuffd at 0 us %s "
							 "%s", cfg.pats[p].name,
							 cold ? "cold" : "warm");
					prepare_cache(&cfg, fd, r);
					io0 = io_read_bytes();
					run_engine(&b, r);
					/* ooc: the run's own process counts. */
					if (cfg.workload != WL_OOC)
						read_amp(r,
							 io_read_bytes() - io0,
							 cfg.page);
					idx++;
					if (!r->ok) {
						all_ok = false;
						fprintf(stderr, "uffd-bench: "
							"%s: FAILED: %s\n",
							r->label, r->err);
					} else if (!cfg.quiet) {
						fprintf(stderr, "[%zu/%zu] %s: "
							"%.1f ms, %.2f GB/s, "
							"p50 %.1f us\n", idx,
							total, r->label,
							(double)r->wall_ns / 1e6,
							r->gbps,
							(double)r->lat.p50 /
							1e3);
					}
				}
			}
		}
	}

	print_table(stdout, &cfg, runs, nruns);
	if (cfg.json_path) {
		err = write_json(&cfg, runs, nruns, cfg.json_path);
		if (err) {
			fprintf(stderr, "uffd-bench: --json %s: %s\n",
				cfg.json_path, strerror(-err));
			all_ok = false;
		}
	}
	if (cfg.plot_path) {
		err = write_plot(&cfg, runs, nruns, cfg.plot_path);
		if (!err && !cfg.quiet)
			fprintf(stderr, "uffd-bench: plot written to %s\n",
				cfg.plot_path);
	}
	if (!all_ok) {
		size_t nfail = 0;

		for (idx = 0; idx < nruns; idx++)
			nfail += !runs[idx].ok;
		fprintf(stderr, "uffd-bench: FAILED: %zu run(s) failed\n", nfail);
	}
	close(fd);
	for (p = 0; p < cfg.npats; p++)
		free(orders[p]);
	for (idx = 0; idx < nruns; idx++) {
		cdf_free(&runs[idx].cdf);
		for (e = 0; e < NR_TCLASSES; e++)
			cdf_free(&runs[idx].cdf_cls[e]);
	}
	free(runs);
	free(lat);
	free(cls);
	return all_ok ? 0 : EXIT_RUN_FAILED;
}
