/* SPDX-License-Identifier: MIT */
/*
 * uffd-bench internals: shared between main.c (arguments, orchestration,
 * table), data.c (backing file, access patterns, page cache control,
 * verification), engines.c (libuffd, mmap, naive, pread, fill, bare),
 * ooc.c (--workload ooc: write-back under a memory limit), cgroup.c (its
 * memory cgroups), util.c (helpers shared with uring-reg-bench) and
 * report.c (statistics, JSON, plot).
 */
#ifndef UFFD_BENCH_H
#define UFFD_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <libuffd.h>

#include "util.h"

/* Exit codes. */
#define EXIT_RUN_FAILED 1 /* an engine failed or data did not verify */
#define EXIT_USAGE 2      /* bad arguments */
#define EXIT_SKIP 77      /* --check-uffd: no userfaultfd here */

enum engine {
	ENG_LIBUFFD = 0,
	ENG_MMAP = 1,
	ENG_NAIVE = 2,
	/* Not a fault engine: sequential pread(2) of 1 MiB chunks into one
	 * reused buffer, the one-copy ceiling a handler is measured against.
	 * Only on request (--engine ...,pread); "all" means the three above. */
	ENG_PREAD = 3,
	/* Not a fault engine either: the same preads into a fresh private
	 * anonymous mapping of the whole file (2 MiB-aligned, MADV_HUGEPAGE),
	 * the one-copy ceiling for any loader that fills new memory, as a
	 * user-space handler must.  Only on request (--engine ...,fill). */
	ENG_FILL = 4,
	/* The bare uffd round trip: naive's handler, serving every fault
	 * with one UFFDIO_COPY from a copy of the file read into memory
	 * beforehand (untimed), so no read at all.  Faults count as minor.
	 * Only on request (--engine ...,bare). */
	ENG_BARE = 5,
	/* libuffd with luffd_prefetch() of the whole mapping started before
	 * the first touch: what prefetch costs demand faults.  Only on
	 * request (--engine ...,prefetch). */
	ENG_PREFETCH = 6,
	/* Not a fault engine: nbdcopy of the export to null: (--store nbd),
	 * libnbd's own copy tool, the ceiling over NBD.  Only on request. */
	ENG_NBDCOPY = 7,
	/* --workload ooc only: the kernel's own write-back, a read-write
	 * mmap(MAP_SHARED) of the file, written back by msync(MS_SYNC). */
	ENG_MMAP_SHARED = 8,
	NR_ENGINES
};

/* --workload */
enum workload {
	WL_TOUCH, /* every page touched once, read (the default) */
	WL_OOC,   /* ooc.c: random reads and writes under a memory limit */
};

/* cgroup.c: which memory controller a run's cgroup uses. */
enum cg_version {
	CG_NONE = 0,
	CG_V1 = 1, /* memory.limit_in_bytes */
	CG_V2 = 2, /* memory.max */
};

/* Is e one of the engines that run libuffd? */
static inline bool is_luffd(enum engine e)
{
	return e == ENG_LIBUFFD || e == ENG_PREFETCH;
}

/* --store */
enum store_kind {
	STORE_FILE,     /* luffd_store_file() */
	STORE_MEM,      /* luffd_store_memory() over a copy */
	STORE_ASYNC,    /* latstore.c: answered by another thread after
			   --store-latency-us */
	STORE_CALLBACK, /* latstore.c: a fill() that sleeps that long */
	STORE_NBD,      /* nbd.c: luffd_store_nbd() to an nbdkit of ours */
};
#define NR_FAULT_ENGINES 3

enum pat_kind {
	PAT_SEQ,
	PAT_RAND,
	PAT_STRIDE,
	PAT_ZIPF,
};

struct pattern {
	enum pat_kind kind;
	uint64_t stride;   /* PAT_STRIDE: in pages */
	double zipf_s;     /* PAT_ZIPF: exponent */
	char name[40];
};

#define MAX_PATTERNS 16

/* Fault classes as the table reports them; the first four are
 * enum luffd_class, NOFAULT is a touched page that never faulted in the
 * handler (installed along with another page's fault). */
#define CLS_NOFAULT LUFFD_NR_CLASSES
#define NR_TCLASSES (LUFFD_NR_CLASSES + 1)

struct config {
	/* Backing file. */
	const char *file;     /* --file, NULL when generated */
	bool generated;
	uint64_t size;        /* bytes of the file used */
	char path[4096];      /* the file actually mapped */
	size_t page;
	uint64_t npages;      /* pages of the mapping (size rounded up) */

	/* Workload. */
	struct pattern pats[MAX_PATTERNS];
	int npats;
	enum engine engines[NR_ENGINES];
	int nengines;
	unsigned int threads;
	unsigned int repeat;
	uint64_t seed;
	bool do_warm, do_cold;

	/* libuffd settings (0 = library default). */
	unsigned int handler_threads;
	unsigned int queue_depth;
	unsigned int spin_us;
	uint64_t cache_bytes;
	size_t readahead_bytes;
	enum luffd_readahead readahead_mode;
	size_t install_ahead_bytes; /* 0: default */
	bool direct;
	enum luffd_open_mode open_mode;
	enum luffd_install install_mode;
	int prot;             /* of the libuffd and mmap mappings */
	bool no_memory_warm;  /* --no-memory-warm */
	bool store_mem;       /* --store memory */
	enum store_kind store;
	uint64_t store_lat_us; /* --store-latency-us (async, callback, nbd) */
	char nbd_uri[4300];    /* --store nbd: the export (behind the delay
				  filter with a latency) */
	char nbd_uri0[4300];   /* the same without delay (calibration) */
	uint64_t handler_cpus; /* --handler-cpus: libuffd, naive, bare */
	uint64_t thread_cpus;  /* --thread-cpus: the faulting threads */
	uint64_t stripe_bytes; /* --stripe-bytes */

	/* Outputs. */
	const char *trace_path;
	enum luffd_trace_format trace_fmt;
	const char *json_path;
	const char *plot_path;
	bool quiet;
	bool progress_tty;

	/* --workload ooc (ooc.c). */
	enum workload workload;
	uint64_t resident_bytes; /* --resident: libuffd's resident_bytes */
	double write_ratio;      /* --write-ratio: fraction of touches that
				    write */
	unsigned int passes;     /* --passes: touches per page */
	bool mmap_random;        /* --mmap-advice random: MADV_RANDOM */
	uint64_t memory_limit;   /* --memory-limit: each run's cgroup limit
				    (default resident_bytes; 0: none) */
	enum cg_version cg_ver;  /* the cgroups the runs get (CG_NONE: no
				    limit but libuffd's own) */
	const char *cg_why;      /* CG_NONE: why */
	bool resident_effective; /* does this libuffd honour resident_bytes
				    (ooc_setup()'s probe)? */
	char resident_why[256];  /* what the probe saw */

	/* Testing hooks. */
	int64_t corrupt_page; /* -1: none */
	bool lose_write;      /* --lose-write: undo one write (ooc) */
	unsigned int timeout_s;
};

/* Summary of a set of latency samples (ns), exact (nearest rank). */
struct latsum {
	uint64_t count;
	uint64_t min, max, mean;
	uint64_t p50, p90, p99, p999;
};

/* A latency CDF downsampled for the plot. */
struct cdf {
	size_t n;
	float *x_us;
	float *y;
};

/* What an ooc run adds to struct run (ooc.c). */
struct ooc_run {
	uint64_t touches, writes;
	uint64_t read_mismatches; /* reads that did not see the last write */
	uint64_t lost_writes;     /* pages whose last write the file lacks */
	uint64_t touch_ns, sync_ns; /* wall_ns is their sum */
	double touches_per_s;       /* over wall_ns */
	uint64_t limit;             /* the cgroup's limit (0: none) */
	bool cgroup;                /* the run had a cgroup */
	uint64_t peak_rss;          /* VmRSS, the most of the samples */
	uint64_t rss_hwm;           /* the child's VmHWM at its end */
	uint64_t samples;
	uint64_t cg_peak;           /* the cgroup's own peak usage */
	uint64_t cg_peak_sampled;   /* the most of the sampled usage */
	uint64_t cg_failcnt, cg_oom_kills;
	uint64_t dev_read, dev_write; /* the child's /proc/self/io */
	bool finished;              /* the child got to its end */
};

/* One engine, one pattern, one cache state, one repetition. */
struct run {
	enum engine eng;
	int pat;
	bool cold;
	unsigned int rep;
	char label[96];

	bool ok;              /* the run completed and verified */
	bool verified;
	char err[512];        /* first error, when !ok */
	uint64_t bad_pages;   /* pages that failed verification */

	uint64_t pages;       /* distinct pages touched */
	uint64_t bytes;       /* pages * page size */
	/* Read amplification: what the engine read to serve the run, over
	 * bytes.  libuffd: its store's bytes (stats.bytes_read, page-cache
	 * hits included); naive: a page per fault; mmap: what the kernel read
	 * from the device (/proc/self/io read_bytes, so 0 when warm).  NaN
	 * where it means nothing (pread, fill, bare, nbdcopy). */
	uint64_t bytes_read;
	double read_amp;
	uint64_t wall_ns;
	double gbps;          /* bytes / wall, GB = 1e9 bytes */
	double faults_per_s;

	/* Faults as the engine counts them: libuffd from luffd_stats_get, naive
	 * from its handler, mmap from getrusage (minor/major only). */
	uint64_t faults[LUFFD_NR_CLASSES];
	uint64_t faults_total;
	/* getrusage(RUSAGE_THREAD) deltas summed over the faulting threads,
	 * for every engine. */
	uint64_t ru_minflt, ru_majflt;

	/* Page cache state of the file just before the run. */
	uint64_t resident_before;
	bool cache_state_ok;  /* the file was as warm / cold as asked */

	/* Latency of a page's first touch, as the faulting thread saw it. */
	struct latsum lat;
	struct cdf cdf;

	/* libuffd: handler-side stats and the faulting-thread latency split
	 * by the class the handler gave each page (from the trace callback). */
	bool has_luffd;
	struct luffd_stats st;
	struct latsum lat_cls[NR_TCLASSES];
	struct cdf cdf_cls[NR_TCLASSES];
	uint64_t trace_cb_faults;
	char trace_file[4200];

	/* naive: handler-side service latency (read of the message to the
	 * end of UFFDIO_COPY). */
	uint64_t store_delay_p50; /* --store-latency-us: as served, ns */
	double store_delay_mean;
	bool calib;           /* the zero-latency run behind the overlap
				 ideal (--store-latency-us), not a row of
				 the comparison */
	bool has_naive;
	struct latsum naive_svc;

	bool has_ooc;
	struct ooc_run ooc;
};

/* ---- data.c (now_ns() and parse_size() are in util.c) ---- */
struct latstore;
/* A store of kind STORE_ASYNC or STORE_CALLBACK over mem (size bytes,
 * kept by the caller until latstore_free()) answering after lat_us;
 * *storep is the caller's reference. */
int latstore_new(enum store_kind kind, const char *mem, uint64_t size,
		 uint64_t lat_us, struct latstore **sp,
		 struct luffd_store **storep);
/* The delays it served requests with so far (arrival to answer):
 * median and mean.  Sorts its samples: call it once all are in. */
void latstore_delay(struct latstore *s, uint64_t *p50_ns, double *mean_ns);
/* After the context that used it is destroyed. */
void latstore_free(struct latstore *s);

/* nbd.c: start the nbdkit servers (sockets in dir) and fill in
 * cfg->nbd_uri*; stopped at exit.  0 or -errno. */
int nbd_servers_start(struct config *cfg, const char *dir);
/* The absolute path of nbdkit-delayus-filter.so (next to this program or
 * installed relative to it), or NULL: not built (no nbdkit-filter.h) or
 * not found, so delays are whole milliseconds through nbdkit's delay
 * filter.  Looked up once. */
const char *nbd_delayus_filter(void);
/* A synchronous libnbd connection (naive's), NULL on failure (said). */
void *nbd_sync_open(const char *uri);
ssize_t nbd_sync_pread(void *h, void *buf, size_t len, uint64_t off);
void nbd_sync_close(void *h);
/* The server's median round for depth 4 KiB reads in flight (libnbd
 * alone), ns; 0 when unknown. */
uint64_t nbd_served_delay(const char *uri, unsigned int depth, uint64_t size);
int run_nbdcopy(const struct config *cfg, struct run *r);

uint64_t splitmix64(uint64_t *state);
uint64_t rand_below(uint64_t *st, uint64_t n);
uint64_t expected_word(uint64_t off);
void expected_page(const struct config *cfg, uint64_t pg, void *buf);
int generate_file(struct config *cfg, char *dir, size_t dirlen);
/* Write the generated contents over the file again (and fsync it). */
int rewrite_file(const struct config *cfg);
int build_order(const struct config *cfg, const struct pattern *pat,
		uint32_t **orderp, uint64_t *np);
int make_cold(const struct config *cfg, int fd, uint64_t *resident);
int make_warm(const struct config *cfg, int fd, uint64_t *resident);
int verify_pages(const struct config *cfg, int fd, const char *base,
		 const uint32_t *order, uint64_t n, struct run *r);

/* ---- engines.c ---- */
struct bench_ctx {
	const struct config *cfg;
	int fd;                 /* the backing file, read-only */
	const uint32_t *order;  /* pages in touch order */
	uint64_t n;             /* number of entries in order */
	uint32_t *lat;          /* latency of order[i]'s touch, ns */
	uint8_t *cls;           /* libuffd: class per page */
};

int run_engine(struct bench_ctx *b, struct run *r);
/* The libuffd settings the flags asked for (the trace aside). */
void libuffd_opts(const struct config *cfg, struct luffd_ctx_opts *o);
/* Touch and free the run's size of memory (see engines.c). */
void warm_memory(const struct config *cfg);
/* A run's child process (ooc): to be killed, and its cgroup removed, on
 * an interrupt (pid 0: none). */
void set_cleanup_child(pid_t pid, const char *cgdir);
/* In a child: forget the parent's cleanup (the file is the parent's). */
void bench_child_init(void);
/* Create and destroy one context with the libuffd flags: 0, or
 * luffd_ctx_create()'s error (-EINVAL: a setting the library refuses). */
int libuffd_settings_check(const struct config *cfg);
int uffd_available(char *why, size_t len);
void set_run_label(const char *label);
void install_signal_handlers(void);
void set_cleanup_paths(const char *file, const char *dir);

/* ---- ooc.c ---- */
/* Before the first ooc run: which cgroups the runs get, whether libuffd
 * honours resident_bytes (a probe), the model.  0 or -errno. */
int ooc_setup(struct config *cfg);
/* One ooc run, in a child process; fills r (its ooc part too). */
int run_ooc(struct bench_ctx *b, struct run *r);

/* ---- cgroup.c ---- */
struct cgroup {
	enum cg_version ver;
	char dir[4096]; /* empty: none */
};
/* The controller children of the bench's own cgroup can get (CG_NONE:
 * *why says why not, if why).  Looked up once. */
enum cg_version cg_detect(const char **why);
/* The bench's own memory cgroup (a directory). */
const char *cg_base_dir(void);
/* A child cgroup name of the bench's, with this memory limit; remove it
 * with cg_destroy().  0 or -errno (-ENOTSUP: no controller). */
int cg_create(struct cgroup *cg, const char *name, uint64_t limit);
int cg_enter(const struct cgroup *cg, pid_t pid);
uint64_t cg_usage(const struct cgroup *cg);
uint64_t cg_peak(const struct cgroup *cg);
uint64_t cg_failcnt(const struct cgroup *cg);
uint64_t cg_oom_kills(const struct cgroup *cg);
/* Reclaim what it holds (v1) and remove it (it must have no tasks). */
int cg_destroy(struct cgroup *cg);
/* Can a child memory cgroup be made here?  1, or 0 with why set. */
int cg_check(char *why, size_t n);

/* ---- report.c ---- */
void latsum_from(uint32_t *samples, uint64_t n, struct latsum *ls);
int cdf_from_sorted(const uint32_t *sorted, uint64_t n, struct cdf *c);
void cdf_free(struct cdf *c);
const char *engine_name(enum engine e);
int write_json(const struct config *cfg, const struct run *runs, size_t nruns,
	       const char *path);
int write_plot(const struct config *cfg, const struct run *runs, size_t nruns,
	       const char *path);
void print_table(FILE *out, const struct config *cfg, const struct run *runs,
		 size_t nruns);
/* --workload ooc: how the limit is applied, and to what. */
void ooc_notes(FILE *out, const struct config *cfg);

/* Ratios between engines for one (pattern, cache state): from the median
 * wall time over the repetitions. */
struct ratio {
	int pat;
	bool cold;
	enum engine num, den;
	double time_ratio;       /* wall(num) / wall(den): > 1, num slower */
	double throughput_ratio; /* GB/s(num) / GB/s(den): > 1, num faster */
	double p50_ratio;        /* p50 latency(num) / p50(den) */
	double p99_ratio;
};
size_t compute_ratios(const struct config *cfg, const struct run *runs,
		      size_t nruns, struct ratio *out, size_t max);

/* --store-latency-us: libuffd's faults/s against the ideal. */
struct overlap {
	int pat;
	bool cold;
	double fps, zero_fps, naive_fps; /* medians, faults/s */
	double per_rtt;                  /* threads / latency */
	double ideal, ratio, naive_ratio;
	/* The same with the delay the store really took (its median). */
	double delay_p50, per_rtt_served, ideal_served, ratio_served;
};
size_t compute_overlap(const struct config *cfg, const struct run *runs,
		       size_t nruns, struct overlap *out, size_t max);

/* --engine libuffd,prefetch: demand-fault p50 with and without. */
struct pf_cmp {
	int pat;
	bool cold;
	double p50, pf_p50, ratio, gbps_ratio;
};
size_t compute_prefetch(const struct config *cfg, const struct run *runs,
			size_t nruns, struct pf_cmp *out, size_t max);

#endif
