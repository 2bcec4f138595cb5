/* SPDX-License-Identifier: MIT */
/*
 * libuffd: serve page faults in user space.
 *
 * An application hands libuffd a range of memory and a backing store.  The
 * first touch of each page traps into the kernel, which queues a message on a
 * userfaultfd; a handler thread owned by libuffd fetches the data (through
 * io_uring for file stores) and installs it with UFFDIO_COPY.  Every fault is
 * classified (minor, major, zero, error) and timed.
 *
 * Conventions (the same everywhere in this header):
 *  - Functions that can fail return 0 (or a count) on success and a negative
 *    errno, or a negative LUFFD_E_* code, on failure.  luffd_strerror()
 *    describes both.  Nothing is ever printed unless the application installs
 *    a print callback with luffd_set_print(), and the library never calls
 *    exit() or abort().
 *  - Option structs start with `size_t sz`: set it to sizeof(the struct) (the
 *    LUFFD_OPTS() macro does it) so the struct can grow without breaking the
 *    ABI.  A NULL options pointer means "all defaults"; a zero field means
 *    "the default" for that field.
 *  - Every constructor names its destructor.
 */
#ifndef LIBUFFD_H
#define LIBUFFD_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <libuffd/version.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef LUFFD_API
#define LUFFD_API __attribute__((visibility("default")))
#endif

/* Zero-initialise an options struct and set its size field. */
#define LUFFD_OPTS(type, name, ...) \
	struct type name = { .sz = sizeof(struct type), __VA_ARGS__ }

/* ------------------------------------------------------------------------
 * Errors and logging
 * ---------------------------------------------------------------------- */

/* Library-specific error codes, returned negated like errno values. */
enum luffd_errno {
	LUFFD_E_BASE = 4000,
	/* The kernel has no userfaultfd (CONFIG_USERFAULTFD=n, or seccomp). */
	LUFFD_E_NOUFFD = 4001,
	/* Every way of opening a userfaultfd was refused for lack of
	 * privilege: see luffd_strerror() for the fixes. */
	LUFFD_E_UFFD_PERM = 4002,
	/* The kernel's UFFDIO_API handshake failed or lacks a required
	 * feature (missing-mode faults on anonymous memory). */
	LUFFD_E_UFFD_API = 4003,
	/* io_uring is unavailable (kernel.io_uring_disabled, seccomp, old
	 * kernel). */
	LUFFD_E_NOURING = 4004,
	LUFFD_E_MAX
};

/*
 * Return a static, human-readable description of err, which may be negative
 * or positive, an errno value or an LUFFD_E_* code.  Thread-safe.
 */
LUFFD_API const char *luffd_strerror(int err);

enum luffd_print_level {
	LUFFD_WARN,
	LUFFD_INFO,
	LUFFD_DEBUG,
};

typedef int (*luffd_print_fn)(enum luffd_print_level level, const char *fmt,
			      va_list ap);

/*
 * Install the process-wide print callback (NULL, the default, silences the
 * library).  Returns the previous callback.  The callback may be called from
 * any thread, including handler threads, but never on the fault hot path.
 */
LUFFD_API luffd_print_fn luffd_set_print(luffd_print_fn fn);

/* ------------------------------------------------------------------------
 * Fault records: classification, trace
 * ---------------------------------------------------------------------- */

/*
 * How a fault was served.  The rules, in the order they are applied:
 *  - ERROR: the page could not be served (past the end of the store, a store
 *    or I/O error).  The faulting thread gets SIGBUS (BUS_ADRERR) through
 *    UFFDIO_POISON, or through tgkill() on kernels without it.
 *  - ZERO: the store said the page holds no data (a hole in a sparse file, a
 *    callback returning 0) and it was installed as zeroes without a read.
 *  - MINOR: the data was already in memory when the fault was read: in
 *    libuffd's cache (read-ahead, or a page installed earlier and faulted
 *    again) or in a memory store.  The faulting thread waited for no read.
 *  - MAJOR: the faulting thread waited for a store read: it started the
 *    read, or its page was part of a read already in flight (coalesced).
 *    Callback stores count as major: the thread waited for the callback.
 * A write-protect fault is a kind of its own, not a missing page:
 *  - WP: the first write to a page of a LUFFD_REGISTER_WP region since it
 *    was installed (write-protected).  The page was present; libuffd lifts
 *    the protection (which wakes the writer) and records the write.
 *
 * ABI: faults[] and latency[] of struct luffd_stats are sized by
 * LUFFD_NR_CLASSES, which stays 4 so that binaries built against older
 * headers keep reading the right fields.  LUFFD_WP therefore lies past it
 * (5: LUFFD_NR_CLASSES itself means "all classes" to
 * luffd_latency_percentile()), and its count and latency are the
 * wp_faults and wp_latency fields at the end of struct luffd_stats.
 */
enum luffd_class {
	LUFFD_MINOR = 0,
	LUFFD_MAJOR = 1,
	LUFFD_ZERO = 2,
	LUFFD_ERROR = 3,
	LUFFD_NR_CLASSES, /* 4: the classes with a slot in faults[] */
	LUFFD_WP = 5,
};

/* Returns "minor", "major", "zero", "error", "wp" or "?". */
LUFFD_API const char *luffd_class_name(enum luffd_class c);

/* One served fault. */
struct luffd_fault {
	uint64_t time_ns;    /* CLOCK_MONOTONIC when libuffd read the message */
	uint64_t latency_ns; /* from reading the message to the page installed */
	uint64_t addr;       /* faulting page (page-aligned) */
	uint32_t tid;        /* faulting thread, 0 without UFFD_FEATURE_THREAD_ID */
	uint8_t write;       /* 1 for a write fault */
	uint8_t cls;         /* enum luffd_class (LUFFD_WP: write is 1) */
	uint16_t reserved;
	int32_t error;       /* for LUFFD_ERROR: the negative errno (-ENXIO past
				the end of the store) */
};

/*
 * Trace callback.  Runs on the handler thread that served the fault, once per
 * fault, synchronously: it delays every fault behind it, must not block, and
 * must not touch memory registered with libuffd (that would deadlock the
 * handler on its own fault).
 */
typedef void (*luffd_trace_fn)(void *arg, const struct luffd_fault *f);

enum luffd_trace_format {
	/*
	 * systemtap pfaults.stp lines:
	 *   <us since start>:<tid>:<addr>:<r|w>:<minor|major>:<latency us>
	 * addr in decimal.  Like the script, every class other than major
	 * prints "minor" (zero, error and wp faults are not major faults:
	 * a wp fault prints as a "w" minor fault).
	 * "start" is the context's creation time.
	 */
	LUFFD_TRACE_PFAULTS = 1,
	/*
	 * CSV with a header line:
	 *   time_ns,tid,addr,rw,class,latency_ns,error
	 * time_ns since the context's creation, addr in hex (0x...), class one
	 * of minor|major|zero|error|wp.
	 */
	LUFFD_TRACE_CSV = 2,
};

/* ------------------------------------------------------------------------
 * Contexts
 * ---------------------------------------------------------------------- */

struct luffd_ctx;

/* How to obtain the userfaultfd. */
enum luffd_open_mode {
	/* Try /dev/userfaultfd, then userfaultfd(2), then userfaultfd(2) with
	 * UFFD_USER_MODE_ONLY.  The first that works wins. */
	LUFFD_OPEN_AUTO = 0,
	LUFFD_OPEN_DEV = 1,        /* /dev/userfaultfd only */
	LUFFD_OPEN_SYSCALL = 2,    /* userfaultfd(2) without user-mode-only */
	LUFFD_OPEN_USER_ONLY = 3,  /* userfaultfd(2) with UFFD_USER_MODE_ONLY */
};

enum luffd_readahead {
	/* Default.  Like the kernel's on-demand read-ahead: the first miss in
	 * a region reads 4 pages; a miss that continues the region's stream
	 * (or follows 4+ cached pages) doubles the window up to
	 * readahead_bytes.  Any other miss is random access: on a file it
	 * reads the aligned readahead_bytes block around the page (the
	 * kernel's mmap read-around) for as long as that pays.
	 * Each such miss counts one against the region, each page served from
	 * the cache (a minor hit, or installed around one) one for it; while
	 * misses lead by 100 (the kernel's MMAP_LOTSAMISS), a miss reads its
	 * page alone.  While a stream is
	 * being read, touching the second page of a window (or the first of
	 * a background window) reads the next window in the background, so a
	 * sequential reader mostly sees minor faults.  A read of several
	 * pages that fails is retried for the faulting page alone before it
	 * gets SIGBUS. */
	LUFFD_RA_ADAPTIVE = 0,
	/* Every miss reads readahead_bytes from the faulting page on, and
	 * nothing is read in the background: the classification of a
	 * workload is easy to predict (N sequential pages with a window of
	 * W pages: N/W major faults, the rest minor). */
	LUFFD_RA_FIXED = 1,
};

enum luffd_install {
	/* Default.  Pages are copied into place (UFFDIO_COPY), except in
	 * regions that can take chunks: there, once a sequential stream fills
	 * whole read-ahead windows, it is read in 2 MiB chunks into
	 * transparent-huge-page staging buffers and each chunk is moved into
	 * place (UFFDIO_MOVE: one page-table update for 2 MiB, no copy, one
	 * fault per 2 MiB); and random access whose read-around pages keep
	 * being used (more pages served around misses than misses) reads the
	 * 2 MiB chunk around a miss and moves it in whole.  A region can take
	 * chunks when it comes from luffd_map() with PROT_READ | PROT_WRITE
	 * over a file store, with 4 KiB pages and a kernel with UFFDIO_MOVE
	 * (6.8+); such mappings are 2 MiB-aligned and marked MADV_HUGEPAGE.
	 * A chunk is a 2 MiB read, so there are none when readahead_bytes is
	 * set below 2 MiB (LUFFD_NO_READAHEAD included): the window asked for
	 * holds in every mapping.
	 * Up to 16 chunks per handler thread are taken out of cache_bytes (a
	 * quarter of it, none if that is less than 2 chunks); all but two
	 * (one, with fewer than four) are read ahead of a stream.  Cold chunks are read with O_DIRECT (see
	 * LUFFD_FILE_CACHED).  A chunk's pages are moved, not kept: a page
	 * faulting again later (after MADV_DONTNEED) is read again.
	 * Everything else (read-only mappings, luffd_register() ranges,
	 * memory and callback stores, LUFFD_RA_FIXED, sparse random access)
	 * is copied. */
	LUFFD_INSTALL_AUTO = 0,
	/* Always copy (for comparison, and for workloads that want every
	 * page kept in the cache). */
	LUFFD_INSTALL_COPY = 1,
};

/* luffd_ctx_opts.wp_mode: how writes to LUFFD_REGISTER_WP regions are
 * recorded (see there and luffd_dirty()). */
enum luffd_wp_mode {
	LUFFD_WP_SYNC = 0,  /* a WP fault per first write, served by libuffd */
	LUFFD_WP_ASYNC = 1, /* recorded by the kernel (UFFD_FEATURE_WP_ASYNC) */
};

struct luffd_ctx_opts {
	size_t sz;
	/* Handler threads, each with its own userfaultfd, io_uring, cache
	 * share and region set; regions are spread over them.  Default 1,
	 * at most 64. */
	unsigned int handler_threads;
	/* io_uring submission queue entries, and the most reads in flight,
	 * per handler thread.  Default 64, at most 4096. */
	unsigned int queue_depth;
	/* Page cache size in bytes for the whole context (split evenly over
	 * the handler threads).  Memory use never grows beyond it, apart
	 * from its bookkeeping: 13-15 bytes per page (under 0.4% with 4 KiB
	 * pages), and 28 bytes per store with pages cached, allocated when
	 * more stores than ever before (over 64) have pages cached at once.
	 * Default 64 MiB; at least 2 read-ahead windows per handler thread
	 * (the default window shrinks to fit a smaller cache). */
	size_t cache_bytes;
	/* Read-ahead window in bytes, the most a cache miss reads from the
	 * faulting page on (clipped to the region and the store's size; see
	 * readahead_mode).
	 * 0 means the default, 512 KiB (four times the kernel's
	 * read_ahead_kb: a user-space fault costs tens of microseconds, so
	 * each must bring in more); use LUFFD_NO_READAHEAD for single-page
	 * reads.  A multiple of the page size, at most 1024 pages (4 MiB
	 * with 4 KiB pages). */
	size_t readahead_bytes;
	/* Busy-poll the userfaultfd for this long after serving a fault
	 * before sleeping (microseconds), unless reads or other io_uring
	 * work are in flight (their workers need the CPU, and their
	 * completions wake the handler anyway).  A sleeping handler must be
	 * woken for the next fault, which on a VM costs tens of
	 * microseconds: with 50 us, random faults served from memory took a
	 * third of the time (see the README).  Costs at most that much CPU
	 * after each burst of faults.  0 means the default, 50 us;
	 * LUFFD_NO_SPIN never spins.  At most 1000000. */
	unsigned int spin_us;
	enum luffd_open_mode open_mode;
	/* UFFD_FEATURE_* bits the context must not use even when the kernel
	 * offers them (for testing fallbacks).  Default 0. */
	uint64_t disable_features;
	/* Trace callback (see luffd_trace_fn), NULL for none. */
	luffd_trace_fn trace_fn;
	void *trace_arg;
	/* Trace writer: when trace_format is not 0, the context writes one
	 * line per fault to trace_fd in that format.  The fd stays owned by
	 * the caller and must stay open until luffd_ctx_destroy() returns.
	 * Lines are buffered per handler thread (64 KiB) and written whole;
	 * luffd_trace_flush() or luffd_ctx_destroy() flushes.  With several
	 * handler threads, lines are ordered per thread, not globally. */
	enum luffd_trace_format trace_format;
	int trace_fd;
	/* A store request (a file read, a callback's fill(), an asynchronous
	 * store's read) that has not completed after this long is cancelled
	 * (the store is told) and its faults get SIGBUS (ERROR,
	 * -ETIMEDOUT), so a dead NFS server, a hung FUSE file system or a
	 * source that stops answering never freezes the faulting threads,
	 * and luffd_unregister(), luffd_unmap() and luffd_ctx_destroy()
	 * return.  Faults that could not even start a read (every request in
	 * flight) fail the same way.  Reads of local regular files cannot be
	 * interrupted once under way and finish on their own.  0 means the
	 * default, 30000 ms; LUFFD_NO_TIMEOUT waits forever. */
	unsigned int read_timeout_ms;
	/* How big a read a cache miss starts (see enum luffd_readahead). */
	enum luffd_readahead readahead_mode;
	/* Install-ahead, like the kernel's fault-around: after serving a
	 * fault, install the following pages of the region that are ready
	 * in the cache, up to this many bytes from the faulting page, so a
	 * sequential reader takes one fault per chunk.  With adaptive
	 * read-ahead the chunk follows the stream: the region's last window,
	 * at least 16 pages (the kernel's fault-around), at most this; outside
	 * a stream, the other pages of the faulting page's aligned 16-page
	 * block that are cached and were never installed go in instead, as
	 * the kernel maps a fault's neighbours.  Those pages never fault
	 * (stats.installed_ahead counts them).  0 means the default: 256 KiB
	 * with adaptive read-ahead, off with LUFFD_RA_FIXED;
	 * LUFFD_NO_INSTALL_AHEAD turns it off.  A multiple of the page size,
	 * at most 1024 pages. */
	size_t install_ahead_bytes;
	/* How pages go into place (see enum luffd_install). */
	enum luffd_install install_mode;
	/* CPUs the handler threads may run on: bit n is CPU n (CPUs 0-63).
	 * 0 means no pinning (the default).  A handler on the faulting
	 * thread's CPU serves a fault without waking another CPU, which on a
	 * VM saves most of a fault's cost when one thread faults at a time
	 * (see the README's latency section); several faulting threads want
	 * the handler on a CPU of its own.  -EINVAL if no CPU in the mask
	 * exists. */
	uint64_t handler_cpus;
	/* With several handler threads: split each luffd_map() or
	 * luffd_register() range longer than this into stripes of this many
	 * bytes, dealt out round-robin over the handler threads, so that the
	 * faults of one range spread over all of them.  0 (the default): a
	 * range goes to one handler thread, ranges round-robin.  A multiple
	 * of the page size; 2 MiB multiples keep chunks whole.  Each stripe
	 * is a VMA of its own (vm.max_map_count), and a sequential stream
	 * starts its read-ahead afresh at each stripe, so make stripes large
	 * (tens of MiB).  mremap() cannot move a striped range whole (it
	 * spans several VMAs), only stripe by stripe.  A striped range is
	 * released with luffd_unmap() / luffd_unregister() on the whole range
	 * (-EINVAL for a part of it). */
	size_t stripe_bytes;
	/* Worker threads that run callback stores' fill() calls, at most
	 * (created as fills wait for one).  0 means the default, 16: enough
	 * for 16 faulting threads to wait on a slow store at once.  At most
	 * 1024. */
	unsigned int callback_threads;
	/* Unused: padding before blocktime_threads came, so a caller built
	 * against an older header (whose sz ends here) is read right whatever
	 * its padding bytes hold. */
	unsigned int reserved0;
	/* Blocktime (see struct luffd_stats): how many threads "all threads
	 * blocked" counts, for instance a VM's vCPUs.  0 (the default): every
	 * distinct thread that has faulted in the context so far.  With N set
	 * and more threads faulting, it is the time at least N were blocked
	 * at once.  At most LUFFD_BLOCKTIME_MAX_THREADS (-EINVAL). */
	unsigned int blocktime_threads;
	/* How writes to LUFFD_REGISTER_WP regions are recorded (see
	 * luffd_dirty()).  LUFFD_WP_SYNC (0, the default): each first write
	 * to a page is a WP fault that libuffd serves, counts and traces.
	 * LUFFD_WP_ASYNC: the kernel records the write itself
	 * (UFFD_FEATURE_WP_ASYNC, Linux 6.7): no fault per write, so no wp
	 * faults are counted or traced, and luffd_dirty() reads and
	 * protects again in one PAGEMAP_SCAN.  Where the kernel lacks it,
	 * LUFFD_WP_SYNC is used (luffd_features.has_wp_async says which). */
	enum luffd_wp_mode wp_mode;
	unsigned int reserved1; /* 0 */
	/* Resident limit (bytes, a multiple of the page size; 0, the
	 * default: none): the most memory that the pages installed in the
	 * context's evictable regions may hold, summed over them.  Evictable:
	 * luffd_map() regions with LUFFD_MAP_WRITEBACK (a written page is
	 * written back before it is dropped) or without PROT_WRITE (which
	 * must not be made writable with mprotect()); not luffd_register()
	 * ranges (the memory is the caller's: shmem, say, keeps its pages
	 * when they are dropped from the page tables);
	 * other regions are neither counted nor evicted (a page written
	 * there holds the only copy of that write; libuffd's cache and
	 * staging buffers, cache_bytes, come on top).  Past 95% of the
	 * limit, the context's evictor thread drops pages down to 85%:
	 * CLOCK (second chance), a page faulted on since the hand last
	 * passed stays one more round; clean pages first, then dirty ones,
	 * written back first (a write to a page while the evictor decides
	 * about it waits a moment).  A dropped page faults in again when
	 * touched, from libuffd's cache if it holds the page (minor) or
	 * from the store, and counts in stats.refaults.  The drops are
	 * madvise(MADV_DONTNEED) calls (stats.events_remove counts them
	 * too).  Needs LUFFD_WP_SYNC
	 * (-EINVAL with LUFFD_WP_ASYNC: a write the kernel records by itself
	 * could land between the check that a page is clean and its drop).
	 * See "Resident limit" in README.md. */
	size_t resident_bytes;
};

#define LUFFD_NO_INSTALL_AHEAD ((size_t)-1)

#define LUFFD_NO_TIMEOUT ((unsigned int)-1)

#define LUFFD_NO_SPIN ((unsigned int)-1)

#define LUFFD_NO_READAHEAD ((size_t)-1)

/*
 * Create a context: open its userfaultfd(s), negotiate features, set up the
 * io_uring(s) and cache, and start the handler thread(s).  On success *ctxp
 * is set and must be released with luffd_ctx_destroy().  On failure nothing
 * is left open and the return value says why (LUFFD_E_UFFD_PERM names the
 * fixes; a print callback, if installed, gets each refusal in detail).
 *
 * Thread-safe: several contexts may exist in one process.
 */
LUFFD_API int luffd_ctx_create(const struct luffd_ctx_opts *opts,
			       struct luffd_ctx **ctxp);

/*
 * Destroy a context.  Regions still registered are unregistered (and, for
 * luffd_map() regions, unmapped) first, as by luffd_unmap() /
 * luffd_unregister(): reads in flight for them are cancelled, not waited
 * for, and every thread blocked on a fault in them is woken.  Callback
 * workers and asynchronous stores still busy with a request may finish it
 * later: its buffer stays valid until then, and the answer is dropped.  A thread that
 * touches an unmapped luffd_map() region afterwards gets SIGSEGV; one that
 * touches a luffd_register() range gets the kernel's ordinary behaviour for
 * that memory (zero-filled pages for anonymous memory).  Trace output is
 * flushed, handler threads are joined, every fd and buffer is released.
 * ctx may be NULL.  Must not run concurrently with any other call on ctx.
 * Must not be called from a callback running on ctx's handler thread
 * (returns -EDEADLK).  Write-back regions (LUFFD_MAP_WRITEBACK) are written
 * back first, as by luffd_msync() without LUFFD_MSYNC_DURABLE; should a
 * write fail, the context is destroyed all the same, the pages that could
 * not be written are lost, the print callback is told, and the first
 * error is returned (call luffd_msync() first to handle write errors).
 * Otherwise returns 0.
 */
LUFFD_API int luffd_ctx_destroy(struct luffd_ctx *ctx);

/* What the kernel offers and what the context uses. */
struct luffd_features {
	size_t sz;
	uint64_t api;            /* UFFD_API */
	uint64_t kernel;         /* UFFD_FEATURE_* bits the kernel offers */
	uint64_t enabled;        /* the bits this context enabled */
	uint64_t ioctls;         /* _UFFDIO_* bits reported by UFFDIO_API */
	enum luffd_open_mode opened_by; /* how the userfaultfd was obtained */
	int has_poison;          /* UFFDIO_POISON used for SIGBUS */
	int has_move;            /* UFFDIO_MOVE enabled (chunks can move) */
	int has_thread_id;       /* faults carry the thread id */
	int user_mode_only;      /* kernel-mode accesses fail with EFAULT */
	int has_wp_async;        /* writes to LUFFD_REGISTER_WP regions are
				    recorded by the kernel (LUFFD_WP_ASYNC) */
};

/* Fill *f (f->sz must be set).  Thread-safe. */
LUFFD_API int luffd_ctx_features(const struct luffd_ctx *ctx,
				 struct luffd_features *f);

/*
 * Wait until every fault whose page is installed by now has been counted,
 * timed and traced.  A handler records a fault right after the install
 * that wakes its thread, so a thread that reads the stats straight after
 * its own touch may otherwise miss its last fault.  Costs one round trip to
 * each handler thread.  Thread-safe; -EDEADLK from a callback.
 */
LUFFD_API int luffd_ctx_sync(struct luffd_ctx *ctx);

/* Write out buffered trace lines now.  Thread-safe.  Returns 0 or -errno of
 * the first failed write (a failed write also counts in trace_errors). */
LUFFD_API int luffd_trace_flush(struct luffd_ctx *ctx);

/* ------------------------------------------------------------------------
 * Stores
 * ---------------------------------------------------------------------- */

struct luffd_store;

/* Flags for luffd_store_file() / luffd_store_open(). */
#define LUFFD_FILE_DIRECT (1u << 0) /* read with O_DIRECT (bypasses the page
				       cache; the file system must support it) */
/* Read every chunk (see enum luffd_install) through the page cache.  By
 * default a 2 MiB chunk that the page cache holds less than half of is read
 * with O_DIRECT where the file system supports it: straight from the device
 * into the staging buffer, at the device's speed, without a second copy of
 * the data in the page cache (a later run reads it from the device again).
 * Dirty cached pages are written back first, as for any O_DIRECT read. */
#define LUFFD_FILE_CACHED (1u << 1)
/* luffd_store_open(): open the file for reading and writing (O_RDWR), so
 * write-back regions (LUFFD_MAP_WRITEBACK) can write to it.  For
 * luffd_store_file() the descriptor's own access mode decides: a store over
 * a descriptor open O_RDWR can be written, with or without this flag, and
 * the flag over a read-only descriptor is -EBADF. */
#define LUFFD_FILE_WRITE (1u << 2)

/*
 * File store over fd, read through io_uring.  The store keeps its own
 * descriptor (a dup, or with LUFFD_FILE_DIRECT a reopen of /proc/self/fd/N
 * with O_DIRECT; an fd already opened with O_DIRECT is read that way, as
 * if LUFFD_FILE_DIRECT were given), and for a regular file read through
 * the page cache, without LUFFD_FILE_CACHED, a second, O_DIRECT reopen for
 * cold chunks where the file system allows it; so the caller may close fd
 * at once.  fd must be a regular file or block device open for reading
 * (-EBADF, -EACCES, -EINVAL otherwise).  Over an fd open O_RDWR the store
 * can be written back to (LUFFD_MAP_WRITEBACK): through io_uring writes
 * from the calling thread's own ring, buffered (through the page cache,
 * also when the store reads with O_DIRECT), and LUFFD_MSYNC_DURABLE adds
 * fdatasync().  Release with luffd_store_put().
 */
LUFFD_API int luffd_store_file(int fd, unsigned int flags,
			       struct luffd_store **storep);

/* The same, opening path itself: read-only, or O_RDWR with
 * LUFFD_FILE_WRITE. */
LUFFD_API int luffd_store_open(const char *path, unsigned int flags,
			       struct luffd_store **storep);

/*
 * Memory store over [base, base+len).  The memory stays owned by the caller
 * and must stay valid and unchanged while any region uses the store.  Faults
 * are served straight from it (no cache) and count as minor.  base must not
 * lie in memory registered with libuffd.  Release with luffd_store_put().
 */
LUFFD_API int luffd_store_memory(const void *base, size_t len,
				 struct luffd_store **storep);

/*
 * NBD store: the export at uri, read through libnbd.  uri is an NBD URI
 * (`nbd://host[:port]/export`, `nbd+unix:///export?socket=PATH`, and the
 * other forms libnbd takes); flags must be 0.  Connects at once, blocking
 * for the handshake on the calling thread.  Returns 0, -EINVAL (NULL
 * arguments, flags, a malformed URI), the errno of a failed connection
 * (-ECONNREFUSED, -ENOENT for a missing socket, ...) or of a refused
 * handshake, with libnbd's message through the print callback; and
 * -EOPNOTSUPP when libuffd was built without libnbd.
 *
 * Reads are asynchronous: each fetch is sent at once from the handler
 * thread, which polls the connection's socket from its own io_uring, so
 * any number are in flight on the one connection and no thread waits per
 * request.  Where the server offers multi-conn the store makes up to three
 * more connections, for prefetch and the push, driven by a thread of its
 * own.
 * Holes in structured replies read as zeroes (a fetch that was hole end to
 * end gives a ZERO fault); a server error fails that fetch's pages only
 * (SIGBUS, each page retried alone first); pages past the export's size
 * give SIGBUS.  A server that stops answering is covered by
 * read_timeout_ms (SIGBUS, teardown returns); NBD cannot cancel a
 * command, so its buffers stay the connection's until the reply.  A server
 * that dies fails everything in flight, and every later fetch, with
 * SIGBUS.
 *
 * Write-back (LUFFD_MAP_WRITEBACK; -EACCES when the export is read-only):
 * the writing thread hands the writes (copies of the pages, up to 16 of
 * 256 KiB at a time) to the store's thread, which sends them on the
 * multi-conn connections round-robin, or on the only one (that thread is
 * then started at the first write-back).  luffd_msync() returns once the
 * server has answered every write: with -errno for a write the server
 * failed (-EIO, -ENOSPC, ... : its pages stay dirty), at once with
 * -ENOTCONN for a server that died, and with -ETIMEDOUT when a write was
 * not answered within read_timeout_ms of its start (its pages stay dirty;
 * the write may still land, and a later write of the same pages is sent
 * only after it was answered, so the stale bytes never land last).
 * LUFFD_MSYNC_DURABLE then sends NBD_CMD_FLUSH on every connection that
 * carried writes, waiting at most read_timeout_ms (-ETIMEDOUT); over a
 * server that cannot flush, every write carries FUA where the server
 * takes it (durable once answered), and where it takes neither, it has no
 * volatile cache to flush and DURABLE adds nothing.  Data cached by
 * another store over the same export is not updated.  Release with
 * luffd_store_put(); the connections close with the last reference (writes
 * still out then are dropped: their write-backs returned -ETIMEDOUT).
 */
LUFFD_API int luffd_store_nbd(const char *uri, unsigned int flags,
			      struct luffd_store **storep);

/*
 * Callback store: fill() is asked for the data.
 *
 * fill(arg, offset, buf, len) is called with a page-aligned offset into the
 * store, a page-aligned buffer and len a multiple of the page size.  A
 * read-ahead window whose cache pages are not adjacent arrives as several
 * calls, one per run of adjacent pages, in offset order; the first short
 * answer ends the window.  It returns:
 *   > 0   the number of bytes written at buf (the rest of len is zeroed; a
 *         short count means the rest of the window is not needed, pages it
 *         does not cover at all are asked for again when touched);
 *   0     the first page holds no data: it is installed as zeroes (ZERO);
 *   < 0   a negative errno: the faulting thread gets SIGBUS (ERROR); a
 *         value below -4095 is not an errno and counts as -EIO.
 *
 * Threads.  fill() runs on the context's worker threads, never on a handler
 * thread: up to luffd_ctx_opts.callback_threads (default 16) calls run at
 * once, for different pages of one or several regions, so a store whose
 * fill() waits on a network round trip serves that many faults per round
 * trip.  fill() must therefore be thread-safe; set callback_threads to 1
 * to have calls made one at a time.  Demand faults are handed to workers
 * before read-ahead and luffd_prefetch() work that no worker has started.
 *
 * Timeouts and teardown.  A fill() that has not returned after
 * read_timeout_ms fails its faults with SIGBUS (-ETIMEDOUT) and is not
 * interrupted: buf stays valid and owned by libuffd until it returns, and
 * what it writes then is dropped.  luffd_unregister(), luffd_unmap() and
 * luffd_ctx_destroy() do not wait for such a call either: they wake its
 * faulting threads (as they describe), leave the worker to finish, and
 * destroy(arg) runs only after every fill() has returned and the last
 * reference to the store is dropped.
 *
 * fill() must not touch memory registered with the context.  Such a touch
 * would wait on a fault that waits on this very fill(); libuffd sees the
 * fault come from its own worker, lets fill() go on reading zeroes there,
 * then fails that read: its faults get SIGBUS with error -EDEADLK,
 * stats.callback_misuse counts it, and the pages fill() read are served
 * normally again afterwards.  (Detection needs UFFD_FEATURE_THREAD_ID;
 * without it the fill() times out after read_timeout_ms instead.)  Calls
 * into libuffd from fill() that would wait on it (destroying its context,
 * unregistering its region) return -EDEADLK.
 *
 * size is the store's size in bytes (faults past it get SIGBUS), or
 * UINT64_MAX for unbounded.  destroy(arg), if not NULL, runs when the last
 * reference to the store is dropped, on whichever thread drops it.
 *
 * Writing (optional: write-back regions, LUFFD_MAP_WRITEBACK, need it).
 * write(arg, offset, buf, len) stores len bytes at offset: offset is
 * page-aligned, len a multiple of the page size except for a last page
 * that ends at size, at most 256 KiB.  It runs on the thread that writes
 * back (luffd_msync(), luffd_unmap(), luffd_ctx_destroy()), one call at a
 * time per write-back, in address order, and may block as long as it
 * needs: no timeout applies.  buf points into the region itself, which is
 * write-protected while write() runs (a thread writing to the same page
 * waits for a moment, and the page is then dirty again and written by the
 * next write-back).  It returns the bytes stored (fewer than len: write()
 * is called again for the rest) or a negative errno: the write-back
 * returns that error and the pages stay dirty.  flush(arg), if not NULL,
 * makes every write so far durable (LUFFD_MSYNC_DURABLE): 0 or a negative
 * errno.  write() and flush() must not touch memory registered with the
 * context other than buf.
 * Release with luffd_store_put().
 */
struct luffd_callback_ops {
	size_t sz;
	ssize_t (*fill)(void *arg, uint64_t offset, void *buf, size_t len);
	void (*destroy)(void *arg);
	uint64_t size;
	ssize_t (*write)(void *arg, uint64_t offset, const void *buf,
			 size_t len);
	int (*flush)(void *arg);
};

LUFFD_API int luffd_store_callback(const struct luffd_callback_ops *ops,
				   void *arg, struct luffd_store **storep);

/* What a store is asked for first (struct luffd_request.priority). */
enum luffd_priority {
	LUFFD_PRIO_DEMAND = 0,    /* a thread is blocked on it */
	LUFFD_PRIO_READAHEAD = 1, /* read ahead of a stream */
	LUFFD_PRIO_PREFETCH = 2,  /* luffd_prefetch() and background work */
};

/* One fetch asked of an asynchronous store (see luffd_store_async()). */
struct luffd_request {
	uint64_t id;          /* names it to luffd_request_complete() */
	uint64_t offset;      /* store offset, page-aligned */
	uint64_t len;         /* bytes wanted: the sum of the iovecs, whole
				 pages */
	const struct iovec *iov; /* where they go, in order */
	int iovcnt;
	enum luffd_priority priority;
	uint64_t deadline_ns; /* CLOCK_MONOTONIC time at which it is
				 cancelled (read_timeout_ms), 0 for none */
};

/*
 * Asynchronous store: read() starts a fetch and returns at once; any thread
 * answers it later with luffd_request_complete().  Many requests of one
 * handler are in flight at once (up to queue_depth), with coalescing and
 * read-ahead windows as for files, so a store whose answers take a network
 * round trip serves as many faults per round trip as threads wait.
 *
 * read(arg, req) runs on a handler thread.  It must not block or touch
 * memory registered with libuffd (as a trace callback), and returns 0 when
 * it will complete req (or already has, from inside read()), or a negative
 * errno to fail it at once (its faults get SIGBUS; it must then not be
 * completed).  req and its iovecs stay valid, and the buffers they point
 * at stay the store's to write, until req is completed: even after a
 * cancel, even after the context is destroyed.
 * The answer, luffd_request_complete(store, req->id, res), from any
 * thread:
 *   > 0   bytes written at req->iov (at most req->len; the rest of a page
 *         is zeroed; pages a short answer does not reach are asked for
 *         again when touched);
 *   0     the first page holds no data: it is installed as zeroes (ZERO);
 *   < 0   a negative errno: the faulting threads get SIGBUS (ERROR).
 * cancel(arg, req), if not NULL, runs on the handler thread when req passed
 * its deadline (read_timeout_ms: its faults got SIGBUS) or nothing waits
 * for it any more (its region was removed): stop if possible.  req must be
 * completed all the same; that call returns -EINVAL and the data is
 * dropped.  A request never completed keeps its buffers and a reference to
 * the store for good.
 * Faults at offsets past size get SIGBUS without a request (UINT64_MAX for
 * unbounded).  destroy(arg), if not NULL, runs when the last reference to
 * the store is dropped: luffd_store_put(), a region going away, or the
 * completion of the store's last request, on whichever thread that is.
 * Release with luffd_store_put().  On failure *storep is NULL.
 */
/* One write asked of an asynchronous store (luffd_async_ops.write). */
struct luffd_write {
	uint64_t id;      /* names it to luffd_write_complete() */
	uint64_t offset;  /* store offset, page-aligned */
	uint64_t len;     /* bytes: whole pages, except for a last page that
			     ends at the store's size; at most 256 KiB */
	const void *buf;  /* the bytes: libuffd's copy, valid until the write
			     is answered */
};

/*
 * Writing (optional; write-back regions, LUFFD_MAP_WRITEBACK, need it).
 * write(arg, w) runs on the thread that writes back (luffd_msync(),
 * luffd_unmap(), luffd_ctx_destroy(), the resident limit's evictor), starts
 * storing w->len bytes of w->buf at w->offset and returns at once: 0 when
 * it will answer, or a negative errno to refuse it now (that write-back
 * fails with it; the pages stay dirty).  Up to 16 writes are outstanding
 * per write-back.  Any thread answers with luffd_write_complete(store,
 * w->id, res): res the bytes stored (fewer than w->len: the rest is asked
 * for again), or a negative errno (the pages stay dirty).  w and its
 * buffer stay valid until answered.  A write-back waits read_timeout_ms
 * for its answers, then returns -ETIMEDOUT with the pages still dirty; an
 * answer that comes later is taken and dropped, and a write never answered
 * keeps its copy and a reference to the store for good.  flush(arg), if
 * not NULL, makes every write answered so far durable
 * (LUFFD_MSYNC_DURABLE); it runs on the writing thread and may block: 0
 * or a negative errno.  Neither may touch memory registered with libuffd.
 */
struct luffd_async_ops {
	size_t sz;
	int (*read)(void *arg, const struct luffd_request *req);
	void (*cancel)(void *arg, const struct luffd_request *req);
	void (*destroy)(void *arg);
	uint64_t size;
	int (*write)(void *arg, const struct luffd_write *w);
	int (*flush)(void *arg);
};

LUFFD_API int luffd_store_async(const struct luffd_async_ops *ops, void *arg,
				struct luffd_store **storep);

/*
 * Answer request id of store (see luffd_async_ops) with res.  Any thread,
 * lock-free: it never waits for the handler, which it wakes only when it
 * was not already awake for an earlier answer.  Returns 0, or -EINVAL,
 * changing nothing, for an id that is not a request of store waiting for
 * its answer (answered already, made up, another store's) or a res above
 * the request's length or below -4095; and -EINVAL, giving the buffers
 * back, for a request that was cancelled (its data is dropped).
 */
LUFFD_API int luffd_request_complete(struct luffd_store *store, uint64_t id,
				     ssize_t res);

/*
 * Answer write id of store (see luffd_async_ops.write) with res.  Any
 * thread.  Returns 0, or -EINVAL, changing nothing, for an id that is not a
 * write of store waiting for its answer (answered already, made up,
 * another store's), or a res above the write's length or below -4095.
 */
LUFFD_API int luffd_write_complete(struct luffd_store *store, uint64_t id,
				   ssize_t res);

/* Size in bytes the store reported when it was created. */
LUFFD_API uint64_t luffd_store_size(const struct luffd_store *store);

/*
 * Drop the caller's reference.  Regions hold their own references, so a
 * store may be put right after the regions over it are created.  NULL is
 * ignored.  Thread-safe.
 */
LUFFD_API void luffd_store_put(struct luffd_store *store);

/* ------------------------------------------------------------------------
 * Regions
 * ---------------------------------------------------------------------- */

/*
 * Map length bytes of store, starting at offset, lazily, like
 * mmap(MAP_PRIVATE) of a file: writes stay private, nothing is written back
 * (unless LUFFD_MAP_WRITEBACK).
 * prot is PROT_READ, optionally with PROT_WRITE and PROT_EXEC.  flags is 0
 * or any of LUFFD_MAP_PUSH, LUFFD_MAP_WP and LUFFD_MAP_WRITEBACK (-EINVAL
 * otherwise; see LUFFD_MAP_WRITEBACK for its errors).  offset must be a multiple of the page size and length
 * non-zero (-EINVAL); like mmap(), any length is taken and rounded up to
 * whole pages (luffd_unmap() takes the same length, or the rounded one).
 * offset must lie inside the store (-ENXIO), and
 * offset + length must not pass page 2^40 of the store (4 PiB with 4 KiB
 * pages; -EOVERFLOW).  Like mmap, the mapping may extend past the end of
 * the store: touching a page wholly past it raises SIGBUS; the tail of the
 * last page reads as zero.
 * On success *addrp is the mapping's address; release it with luffd_unmap().
 * With PROT_READ | PROT_WRITE over a file store (and chunks available: see
 * enum luffd_install) the mapping is 2 MiB-aligned and MADV_HUGEPAGE, and
 * sequential (or densely random) access moves 2 MiB at a time into it.
 * On failure nothing is mapped or registered.  Thread-safe.
 */
LUFFD_API int luffd_map(struct luffd_ctx *ctx, struct luffd_store *store,
			uint64_t offset, size_t length, int prot,
			unsigned int flags, void **addrp);

/*
 * Unmap a region created by luffd_map(); addr and length must be exactly
 * those of the region (-EINVAL otherwise, -ENOENT if there is no such
 * region).  Reads in flight for the region are cancelled, not waited for
 * (the store's cancel is asked for; an answer that comes later is dropped,
 * and its buffer stays valid until then), unless a fault of another region
 * over the same store waits for the same read; such a read keeps a
 * reference to its store (its descriptor, its connection) until it comes
 * back.  Threads blocked on its faults are woken (they then fault on
 * unmapped memory: SIGSEGV).  So it
 * returns promptly even over a store that has stopped answering.  Thread-safe;
 * from a callback on the context's handler thread it returns -EDEADLK.
 */
LUFFD_API int luffd_unmap(struct luffd_ctx *ctx, void *addr, size_t length);
/* (luffd_unmap() of a LUFFD_MAP_WRITEBACK region writes its dirty pages back
 * first, as luffd_msync() without LUFFD_MSYNC_DURABLE.  Should that fail,
 * it returns the error and the region stays mapped and registered, its
 * unwritten pages dirty: retry, or munmap() the range yourself to drop
 * them.) */

/* luffd_register(): when the range is unregistered (luffd_unregister(),
 * luffd_ctx_destroy()), make its pages that were never served inaccessible
 * first (PROT_NONE), so that a thread touching one afterwards, or woken
 * from a fault that was still waiting, gets SIGSEGV rather than a page of
 * zeroes. */
#define LUFFD_REGISTER_SEAL_UNSERVED (1u << 0)

/*
 * luffd_register() and luffd_map(): push the whole region in the
 * background once its first demand fault comes (post-copy: pull what is
 * touched, push the rest).  From that fault on, the region's handler
 * streams the region from its store in order, at LUFFD_PRIO_PREFETCH and
 * behind every demand fault (as luffd_prefetch() does), installing each
 * page that is still missing:
 *  - every demand fault in the region moves the stream to just past the
 *    faulting page (as QEMU's post-copy does) and halves its window;
 *  - the window (the push's pages in flight) starts at 64 KiB and doubles
 *    each time a push read ends with no demand fault since, up to 16 MiB,
 *    in reads of at most readahead_bytes, using at most half of
 *    queue_depth's read slots (demand faults always find one);
 *  - a demand fault reads its page alone (the push goes on from the next
 *    one), and where the store has a lane for demand (NBD with several
 *    connections) a fault on a page that a push read is bringing in reads
 *    it alone on that lane rather than wait behind the push;
 *  - holes are installed as zero pages, pages past the store's end are
 *    left (they raise SIGBUS when touched);
 *  - it goes round until one pass finds every page present, and then it
 *    ends: luffd_push_wait() returns 0, and from then on the region costs
 *    nothing (no job, no scan; a page dropped later with MADV_DONTNEED
 *    faults and is served from the store as before);
 *  - a store error or read timeout ends it early (luffd_push_wait()
 *    returns the error; the pages not pushed are left to their faults).
 * Pages the push installs are counted in stats.pushed.  With stripe_bytes,
 * each stripe has its own push on its own handler.  When munmap() or
 * mremap() takes part of a region being pushed, each piece left (or moved)
 * goes on with a push of its own, and luffd_push_wait() over a piece waits
 * for that one.
 */
#define LUFFD_REGISTER_PUSH (1u << 1)
/* luffd_map(): the same, for a mapped region. */
#define LUFFD_MAP_PUSH LUFFD_REGISTER_PUSH

/*
 * luffd_register() and luffd_map(): write tracking.  Every page libuffd
 * installs in the region goes in write-protected (demand faults,
 * read-around and install-ahead, luffd_install(), luffd_prefetch(), the
 * background push, zero pages), so the first write to each page raises a
 * write-protect fault: libuffd lifts the protection, which wakes the
 * writer, and records the fault as LUFFD_WP (stats.wp_faults,
 * stats.wp_latency, the trace: "w", class "wp").  A later write to the same
 * page costs nothing more.  The cost: one more fault per page written, a
 * user-space round trip like a minor fault.  A first touch that is a write
 * takes two faults: the missing page goes in protected like any other and
 * the write then faults as WP, so the WP faults are every page written,
 * whatever touched it first.  Two threads writing one clean page at once
 * raise a fault each: the one served second finds the page un-protected
 * (/proc/self/pagemap), is only woken, and counts in stats.wp_joined.
 * (pagemap is asked only about a page the handler un-protected before,
 * remembered in one of 4096 slots by page number: a second writer is
 * missed, and counted twice, only if a page of its slot was un-protected
 * in between.)
 *  - Zero pages (holes, a callback's 0) go in as a private page of zeroes
 *    copied in protected (UFFDIO_COPY_MODE_WP), not as the shared zero
 *    page: a zero page write-protected only after it is mapped would let a
 *    write in between go untracked.
 *  - Such a region never takes chunks (enum luffd_install): UFFDIO_MOVE
 *    cannot move pages in write-protected, and a page moved in and
 *    protected afterwards could be written in between unseen.  Its pages
 *    are copied.
 *  - Anonymous private memory (what luffd_map() creates), and for
 *    luffd_register() shmem where the kernel can write-protect it (pte
 *    markers, CONFIG_PTE_MARKER_UFFD_WP: it can on 6.18 here).
 * Returns -EOPNOTSUPP, with nothing registered, when the kernel cannot
 * write-protect the range (no UFFDIO_REGISTER_MODE_WP, or
 * UFFDIO_WRITEPROTECT missing from the ioctls it reports for it).
 * luffd_unregister() and luffd_unmap() lift every protection left (the
 * kernel does it as the range is unregistered).
 */
#define LUFFD_REGISTER_WP (1u << 2)
/* luffd_map(): the same, for a mapped region. */
#define LUFFD_MAP_WP LUFFD_REGISTER_WP

/*
 * luffd_map() and luffd_register(): write-back, the part of
 * mmap(MAP_SHARED) that libuffd can give (README.md, "Write-back", sets the
 * two side by side).  The region is write-tracked (it implies
 * LUFFD_REGISTER_WP, with its costs: a WP fault on the first write to each
 * page since it was installed or last written back; but a write that finds
 * its page missing gets it writable at once, one fault instead of two, so
 * here stats.wp_faults counts only writes to pages already present), and
 * its written
 * pages go back to the store on luffd_msync(), luffd_unmap() and
 * luffd_ctx_destroy().  luffd_dirty() over such a region takes only
 * LUFFD_DIRTY_KEEP (-EINVAL without it: protecting the pages it reports
 * would take them away from write-back).
 *
 * The store must be one that can be written (-EACCES otherwise): a file
 * store over a descriptor open O_RDWR (LUFFD_FILE_WRITE), a callback or
 * asynchronous store with write(), an NBD store over a writable export.
 * The first write-back region over a store gives the store a cache key of
 * its own (-EBUSY while another region uses the store or, for file
 * stores, the same file through another store), so pages cached before a
 * write are never served after it; other stores over the same file opened
 * later do not share it either.  Data that libuffd installed or cached for
 * other, read-only mappings of the same file is not updated by a
 * write-back (a kernel MAP_PRIVATE mapping would see the write until its
 * own first write to the page).
 *
 * What is written: whole pages, except that the last page of the store is
 * written only up to the store's size (the tail beyond it is dropped, as
 * for a shared mapping of a file); the store never grows.  A page dropped
 * with madvise(MADV_DONTNEED) before it was written back loses what was
 * written to it (it faults in again from the store), unlike
 * mmap(MAP_SHARED), whose page cache keeps it; munmap() of the range
 * without luffd_unmap() also drops what was not written back.
 */
#define LUFFD_REGISTER_WRITEBACK (1u << 3)
/* luffd_map(): the same, for a mapped region. */
#define LUFFD_MAP_WRITEBACK LUFFD_REGISTER_WRITEBACK

/* luffd_msync(): make the writes durable once done (fdatasync() for a file
 * store, the callback store's flush(), NBD_CMD_FLUSH for an NBD store). */
#define LUFFD_MSYNC_DURABLE (1u << 0)

/*
 * Write back the dirty pages of [addr, addr+len), as msync(MS_SYNC) does
 * for a shared mapping: every page written before the call is in the store
 * when it returns 0.  Each run of dirty pages is write-protected again
 * (so a write from now on is seen), then written to the store from the
 * region itself (or, for a store whose writes can time out, an NBD store,
 * from a copy taken after the protection), up to 16 writes of 256 KiB in
 * flight.  A thread that writes to a page meanwhile is not stopped for
 * long and its write is never lost: the page is dirty again, for the next
 * call.
 *
 * Returns 0 (also when nothing was dirty), or the first error: a store
 * write's (-EIO, -ENOSPC, the callback's errno; -ETIMEDOUT when a store
 * whose writes can time out did not answer one within read_timeout_ms of
 * its start: each write has its own, so a long write-back that the store
 * keeps answering goes on), or LUFFD_MSYNC_DURABLE's flush (-ETIMEDOUT
 * after read_timeout_ms for such a store).  The pages of a write that
 * failed stay dirty (the next call tries them again); the other pages were
 * written.
 * stats.written_back, writeback_writes, writeback_errors and
 * writeback_flushes count them.
 *
 * addr page-aligned and len non-zero (-EINVAL), every page in regions of
 * ctx (-ENOENT) created with LUFFD_MAP_WRITEBACK (-EINVAL); flags 0 or
 * LUFFD_MSYNC_DURABLE (-EINVAL).  Runs on the calling thread (the handler
 * threads go on serving faults).  Thread-safe: write-backs of one context
 * run one at a time, so each returns only once the pages it found are in
 * the store.  -EDEADLK from one of ctx's own threads (a callback).
 */
LUFFD_API int luffd_msync(struct luffd_ctx *ctx, void *addr, size_t len,
			  unsigned int flags);

/* A range of pages (luffd_dirty()). */
struct luffd_range {
	uint64_t addr; /* page-aligned */
	uint64_t len;  /* bytes, whole pages */
};

/* luffd_dirty(): report the pages written without protecting them again
 * (the next call reports them again). */
#define LUFFD_DIRTY_KEEP (1u << 0)

/*
 * Dirty tracking for pre-copy: the pages of [addr, addr+len) written since
 * they were installed or since the last luffd_dirty() that reported them,
 * as ranges of adjacent pages into out[0..n), in address order; each range
 * reported is write-protected again (unless LUFFD_DIRTY_KEEP), so the next
 * write to one of its pages is seen by the next call.  Returns the ranges
 * written to out, 0 when nothing was written; when n is not enough, the
 * first n ranges are reported (and protected) and the rest stay dirty for
 * the next call, which reports them.
 *
 * Every page of the range must lie in LUFFD_REGISTER_WP regions of ctx
 * (-EINVAL for a region without it, -ENOENT outside every region); addr
 * page-aligned, len non-zero, out not NULL, n non-zero, flags 0 or
 * LUFFD_DIRTY_KEEP (-EINVAL).  Thread-safe, and safe while other threads
 * write: a page is reported at least once for every write to it, either
 * now (its bytes, read after the call returns, hold every write made before
 * it was protected again) or by a later call.  It reads the page tables
 * (the PAGEMAP_SCAN ioctl of /proc/self/pagemap, Linux 6.7; before that,
 * one read of 8 bytes per page of /proc/self/pagemap) and takes one
 * UFFDIO_WRITEPROTECT per range reported; no fault is involved, and the
 * handler threads go on serving faults.  Cost on this 2-vCPU machine, 1 GiB
 * with 1% of its pages written at random (bench/README.md): see "Write
 * tracking" in README.md.
 */
LUFFD_API ssize_t luffd_dirty(struct luffd_ctx *ctx, void *addr, size_t len,
			      struct luffd_range *out, size_t n,
			      unsigned int flags);

/*
 * Register [addr, addr+length), memory the application already owns (an
 * anonymous private mapping, or shmem, whose pages are not yet populated:
 * populated pages never fault), so its missing pages are served from store
 * at offset.  addr, length and offset must be page-aligned, length non-zero
 * (-EINVAL); the range must not overlap a region of this context (-EEXIST)
 * and must not be registered with another userfaultfd (-EBUSY); offset must
 * lie inside the store (-ENXIO) and offset + length must not pass page 2^40
 * of the store (-EOVERFLOW); flags is 0 or any of LUFFD_REGISTER_SEAL_UNSERVED,
 * LUFFD_REGISTER_PUSH and LUFFD_REGISTER_WP (-EINVAL otherwise;
 * -EOPNOTSUPP when LUFFD_REGISTER_WP cannot be had).  Release with luffd_unregister(); the memory itself
 * stays the caller's.  Thread-safe.
 *
 * After the range is unregistered its missing pages behave as the kernel
 * makes them for that memory: an anonymous page that was never served
 * reads as zeroes.  That is the default because the memory is the
 * caller's, and a caller that unregisters to take it back (to fill the rest
 * itself, say) expects ordinary memory, with its own protection.  A lazy
 * allocator whose threads may still touch the range while it is torn down
 * would read those zeroes as data: LUFFD_REGISTER_SEAL_UNSERVED makes the
 * pages never served inaccessible instead (pages present, in swap or, for
 * shmem, in its page cache keep their data and protection).  Sealing takes
 * one mprotect() per run of unserved pages; should the kernel refuse one
 * (too many mappings: vm.max_map_count), the rest of the range is made
 * inaccessible whole, and the print callback says so.
 */
LUFFD_API int luffd_register(struct luffd_ctx *ctx, void *addr, size_t length,
			     struct luffd_store *store, uint64_t offset,
			     unsigned int flags);

/*
 * Unregister a range registered by luffd_register() (exactly, as for
 * luffd_unmap(), with the same errors).  Reads in flight are cancelled (as
 * for luffd_unmap()), blocked threads are woken and fault again as on
 * ordinary memory.  Thread-safe; -EDEADLK from a callback on
 * the context's handler thread.
 */
LUFFD_API int luffd_unregister(struct luffd_ctx *ctx, void *addr,
			       size_t length);

/* ------------------------------------------------------------------------
 * Pages the application pushes in
 * ---------------------------------------------------------------------- */

/*
 * Install [src, src+len) at [addr, addr+len): every page of the range that
 * is missing gets the caller's data (UFFDIO_COPY) and the threads blocked
 * on it are woken; a page already present (faulted in, read ahead, or
 * installed before) is left as it is.  This is how a post-copy destination
 * takes pages the source pushes.  The store and libuffd's cache are not
 * changed: a page dropped later (MADV_DONTNEED) faults again and is served
 * from the store.
 *
 * addr and len must be page-aligned and len non-zero, src not NULL, flags 0
 * (-EINVAL); every page of the range must lie in regions of ctx (-ENOENT;
 * a range may span several regions).  Returns the bytes installed (0 when
 * every page was present) or -errno; on an error after part of the range,
 * the pages before it may be installed.  src must not be memory registered
 * with ctx whose pages are missing, unless called from a thread that is
 * not one of ctx's (the copy faults on it, and a handler would wait for
 * itself).  Runs on the calling thread: no handler is involved, and it may
 * run concurrently with faults and with luffd_install() on other threads.
 * A fault already read by the handler when its page is installed this way
 * is still counted (and traced) as served.  stats.app_installed counts the
 * pages.  Thread-safe.
 */
LUFFD_API ssize_t luffd_install(struct luffd_ctx *ctx, void *addr,
				const void *src, size_t len,
				unsigned int flags);

/* luffd_prefetch(): return only once the range has been dealt with. */
#define LUFFD_PREFETCH_WAIT (1u << 0)

/*
 * Read [addr, addr+len) from its store and install it in the background,
 * ahead of the faults.  addr must be page-aligned (-EINVAL), len non-zero
 * (rounded up to whole pages), every page in regions of ctx (-ENOENT);
 * flags 0 or LUFFD_PREFETCH_WAIT (-EINVAL otherwise).
 *
 * The range is queued on the handler of each region it covers, in order;
 * jobs queued earlier go first.  A handler reads a job in reads of up to
 * 128 KiB (and at most readahead_bytes), two in flight at most, one of
 * 64 KiB while demand reads are in flight, at LUFFD_PRIO_PREFETCH, and
 * starts none while a demand fault waits for a read or cache slot: a
 * demand fault waits behind at most that much prefetch (and none at all on
 * a store that serves requests by priority, such as a callback store's
 * workers; the file store reads cold data for prefetch with O_DIRECT at
 * the idle I/O priority).  Pages present are skipped, pages
 * in the cache go in at once, and pages another read is bringing in go in
 * when it returns (unless it timed out).  A sequential reader that catches
 * up with the prefetch (its faults keep joining prefetch reads) is left
 * the next 32 MiB to read itself, faster, and the prefetch goes on past
 * them; it comes back at its end for any page still missing.  Holes are not
 * installed (they fault as ZERO), nor are pages past the store's end; a
 * memory store's pages go in straight from its memory (a last page it
 * covers only in part is left to its fault).  stats.prefetched counts the
 * pages installed.
 *
 * Without LUFFD_PREFETCH_WAIT it returns once the range is queued (-EAGAIN
 * when 4096 jobs already wait on a handler).  With it, it returns when
 * every window has been read and installed or has failed: 0, or the first
 * store error (the pages of a failed window are left to fault, and get
 * SIGBUS then if the store still fails); -ECANCELED if a region was
 * removed first; -EDEADLK from one of ctx's own threads (a callback).
 * Removing a region ends its prefetch: reads in flight are cancelled as
 * for any read, and luffd_unregister() does not wait for them.
 * Thread-safe.
 */
LUFFD_API int luffd_prefetch(struct luffd_ctx *ctx, void *addr, size_t len,
			     unsigned int flags);

/*
 * Wait until the background push (LUFFD_REGISTER_PUSH) of every region in
 * [addr, addr+len) is complete: every page of them was found present.
 * addr page-aligned and len non-zero (-EINVAL), every page in regions of
 * ctx (-ENOENT), each created with LUFFD_REGISTER_PUSH / LUFFD_MAP_PUSH
 * (-EINVAL).  timeout_ms: -1 waits as long as it takes, 0 only looks,
 * otherwise at most that many milliseconds (-ETIMEDOUT when a push is not
 * complete by then, or has not started: a push starts at its region's
 * first demand fault, so -1 before any fault waits for one to come).  Returns 0, the error that ended a push early (a
 * store error, -ETIMEDOUT for a read past read_timeout_ms, -ECANCELED),
 * -ECANCELED when a region was removed while waiting, or -EDEADLK from one
 * of ctx's own threads (a callback) with a non-zero timeout.  Thread-safe;
 * any number of threads may wait.
 */
LUFFD_API int luffd_push_wait(struct luffd_ctx *ctx, void *addr, size_t len,
			      int timeout_ms);

/* ------------------------------------------------------------------------
 * Statistics
 * ---------------------------------------------------------------------- */

struct luffd_latency {
	uint64_t count;
	uint64_t min_ns, max_ns, mean_ns;
	/* Percentiles from a log-linear histogram: each is within 1/16 (6.25%)
	 * of the true value. */
	uint64_t p50_ns, p90_ns, p99_ns, p999_ns;
};

/*
 * Blocktime, as QEMU's post-copy reports it for its vCPUs (query-migrate's
 * postcopy-blocktime and postcopy-vcpu-blocktime).
 *
 * A fault blocks its thread for the interval libuffd already times, its
 * service latency: from reading the fault message to the wake-up after the
 * install (or to libuffd letting the fault go when its region is removed:
 * the removal wakes the thread).  A later version will start the interval
 * earlier, when the thread itself faulted; the fields keep their meaning.
 * A thread's blocked time is the union of its faults' intervals (normally
 * one at a time: the sum of their latencies).  "Any" is the time at least
 * one thread was blocked, "all" the time every thread was: the
 * blocktime_threads of luffd_ctx_opts if set, else every distinct thread
 * that has faulted in the context so far.  Both are counted across all the
 * context's handler threads.
 *
 * Threads are told apart by the thread id in the fault message
 * (UFFD_FEATURE_THREAD_ID: luffd_features.has_thread_id).  Without it
 * nothing is kept per thread (blocktime_threads_seen, the per-thread sum
 * and max stay 0 and luffd_blocktime_threads() returns 0) and "all" stays
 * 0, while "any" still counts (each fault as a thread of its own).
 *
 * The context keeps up to LUFFD_BLOCKTIME_MAX_THREADS threads, in a table
 * allocated when it is created (the fault path allocates nothing).  Faults
 * of further threads are left out of the per-thread, any and all totals
 * and counted in blocktime_untracked; the latency distribution still
 * counts them.  A thread id the kernel reuses for a new thread, after the
 * first one exited, counts as the same thread.  A callback store's worker
 * caught touching the context's memory (callback_misuse) is not counted as
 * a faulting thread.
 *
 * A snapshot counts a thread blocked right now up to the snapshot's time.
 * A fault ends just after its thread is woken (as it is counted):
 * luffd_stats_get() waits for that (luffd_stats_peek() does not), so its
 * totals end every fault the caller has seen served.
 */
#define LUFFD_BLOCKTIME_MAX_THREADS 1024

/*
 * Latency distribution, in the buckets of QEMU's postcopy-latency-dist
 * (QEMU 10.1+, migration/postcopy-ram.c), copied exactly: bucket N counts
 * the faults whose latency lies in [2^N us, 2^(N+1) us).  The latency in
 * whole microseconds (truncated) picks the bucket, so latencies under 1 us
 * go into bucket 0 with [1, 2) us, and the last bucket, 23, also takes
 * everything from 2^24 us (about 16.8 s) up.  The latency is the service
 * latency above, of every fault served (any class: the buckets add up to
 * faults[] summed plus wp_faults); QEMU counts only the faults that asked the migration
 * source for a page.  The bucket count is QEMU's and stays 24.
 */
#define LUFFD_LATENCY_DIST_BUCKETS 24

struct luffd_stats {
	size_t sz;
	uint64_t faults[LUFFD_NR_CLASSES]; /* indexed by enum luffd_class */
	uint64_t bytes_read;      /* bytes returned by store reads */
	uint64_t reads;           /* store reads issued (one per window) */
	uint64_t readahead_pages; /* pages read beyond the faulting page */
	uint64_t coalesced;       /* faults that joined a read in flight */
	uint64_t evictions;       /* cache pages evicted before use */
	uint64_t eexist;          /* installs that found the page present */
	uint64_t eagain;          /* installs retried after -EAGAIN */
	uint64_t waits;           /* faults that had to wait for a free cache
				     slot or read slot (each counted once) */
	uint64_t trace_errors;    /* trace writes that failed */
	struct luffd_latency latency[LUFFD_NR_CLASSES];
	/* Address-space changes the application made under its regions: */
	uint64_t events_remove;   /* madvise(MADV_DONTNEED/REMOVE) */
	uint64_t events_unmap;    /* munmap() of (part of) a region */
	uint64_t events_remap;    /* mremap() that moved (part of) a region */
	uint64_t orphan_faults;   /* faults outside any region (a mapping
				     grown by mremap()): SIGBUS */
	uint64_t read_timeouts;   /* store reads cancelled by read_timeout_ms */
	uint64_t callback_misuse; /* fill() calls caught touching memory of
				     their own handler thread */
	uint64_t installed_ahead; /* pages installed before they faulted
				     (install_ahead_bytes, and the rest of
				     each moved chunk) */
	uint64_t moved_pages;     /* pages moved into place from staging
				     chunks (LUFFD_INSTALL_AUTO) */
	uint64_t requests_cancelled; /* store requests cancelled (timeout,
					or nothing waited for them) */
	uint64_t late_completions;   /* answers to cancelled requests,
					dropped */
	uint64_t internal_errors;    /* states that cannot happen: the fault
					got SIGBUS (-ENOTRECOVERABLE) and
					the print callback was told */
	uint64_t prefetched;      /* pages luffd_prefetch() installed */
	uint64_t app_installed;   /* pages luffd_install() installed */
	uint64_t pushed;          /* pages a background push installed
				     (LUFFD_REGISTER_PUSH) */
	/* Blocktime (see above; a caller whose sz ends before these fields
	 * gets the rest, as for every field added at the end). */
	uint64_t blocktime_threads_seen; /* distinct faulting threads kept */
	uint64_t blocktime_all_threads;  /* how many "all" meant: the
					    blocktime_threads option, or
					    blocktime_threads_seen */
	uint64_t blocktime_sum_ns;  /* per-thread blocked time, summed */
	uint64_t blocktime_max_ns;  /* the most one thread was blocked */
	uint64_t blocktime_any_ns;  /* at least one thread blocked */
	uint64_t blocktime_all_ns;  /* all of them blocked at once (QEMU's
				       postcopy-blocktime) */
	uint64_t blocktime_blocked_now; /* threads in a fault at the
					   snapshot */
	uint64_t blocktime_untracked;   /* faults of threads that found the
					   table full */
	/* Faults per latency bucket (LUFFD_LATENCY_DIST_BUCKETS, above). */
	uint64_t latency_dist[LUFFD_LATENCY_DIST_BUCKETS];
	/* Write-protect faults (LUFFD_WP, LUFFD_REGISTER_WP): the class has
	 * no slot in faults[] and latency[] (see enum luffd_class), so its
	 * count and service latency (from reading the message to the
	 * un-protect that wakes the writer) are here.  A caller whose sz
	 * ends before them gets the rest. */
	uint64_t wp_faults;
	struct luffd_latency wp_latency;
	/* Write-protect faults where none could be expected (outside every
	 * region once the orphan wait is over, or in a region without
	 * LUFFD_REGISTER_WP): the page was un-protected and the writer woken
	 * so it cannot fault forever, and the print callback was told.  Not
	 * counted in wp_faults. */
	uint64_t wp_unexpected;
	/* Write-protect faults on a page another thread's write had
	 * un-protected by the time it was served (two threads writing one
	 * clean page at once): woken and not counted in wp_faults, so
	 * wp_faults counts the pages written.  They block their threads
	 * (blocktime) but are not timed or traced. */
	uint64_t wp_joined;
	/* Write-back (LUFFD_MAP_WRITEBACK): pages written to their store,
	 * store writes issued, writes (and flushes) that failed or were
	 * given up (read_timeout_ms), and flushes (LUFFD_MSYNC_DURABLE). */
	uint64_t written_back;
	uint64_t writeback_writes;
	uint64_t writeback_errors;
	uint64_t writeback_flushes;
	/* Resident limit (luffd_ctx_opts.resident_bytes): pages the evictor
	 * dropped, faults on pages it had dropped (refaults), the memory
	 * its last count found in the evictable regions, and the most any
	 * count found (counts come at least every 100 ms, and whenever the
	 * handlers' estimate passes the high mark). */
	uint64_t evicted;
	uint64_t refaults;
	uint64_t resident_bytes;
	uint64_t resident_peak_bytes;
};

/*
 * Snapshot the counters and histograms of ctx (summed over its handler
 * threads) into *st (st->sz must be set).  Thread-safe.  Complete: every
 * fault whose thread was woken before the call is in it (a handler records
 * a fault just after the install that wakes its thread, so the call first
 * waits for each handler to finish what it served, as luffd_ctx_sync()
 * does: one round trip to each handler thread, tens of microseconds).
 * From one of ctx's own threads (a trace or store callback) it does not
 * wait, and is what luffd_stats_peek() gives.  The counters are read
 * without a lock: the snapshot is consistent per counter, not across
 * counters, while faults are being served.  The blocktime fields are read
 * together under the context's blocktime lock (held for a pass over the
 * thread table; handlers take it at each fault's start and end).
 */
LUFFD_API int luffd_stats_get(const struct luffd_ctx *ctx,
			      struct luffd_stats *st);

/*
 * The same without the wait, for callers that poll: lock-free and costs no
 * system call, but a fault whose thread was woken just before may be
 * missing (counted by the next snapshot).  Thread-safe, and safe from
 * callbacks.
 */
LUFFD_API int luffd_stats_peek(const struct luffd_ctx *ctx,
			       struct luffd_stats *st);

/*
 * Any percentile p (0 < p <= 100) of the service latency of class cls
 * (LUFFD_WP included), or of all classes (LUFFD_WP included) when cls is
 * LUFFD_NR_CLASSES, into *ns.  Thread-safe.
 * Returns -ENODATA when no fault of that class has been served.
 */
LUFFD_API int luffd_latency_percentile(const struct luffd_ctx *ctx,
				       enum luffd_class cls, double p,
				       uint64_t *ns);

/* One faulting thread's blocktime (luffd_blocktime_threads()).  Its
 * layout is fixed: it will not grow. */
struct luffd_thread_blocktime {
	uint32_t tid;         /* thread id, from the fault messages */
	uint32_t blocked_now; /* 1 while the thread is in a fault */
	uint64_t blocked_ns;  /* its blocked time, up to now */
	uint64_t faults;      /* its faults libuffd read (with those let go
				 when their region was removed) */
};

/*
 * Copy the blocktime of up to n of ctx's faulting threads into out[], in
 * the order they first faulted, and return how many threads the context
 * keeps (at most LUFFD_BLOCKTIME_MAX_THREADS; more than n means out[] was
 * too short: only n were written).  Returns 0 without thread ids (see the
 * blocktime comment above), -EINVAL for a NULL ctx or a NULL out with
 * n > 0.  out may be NULL with n == 0 to ask for the count.  A thread
 * blocked right now counts up to now.  Thread-safe: it holds the context's
 * blocktime lock for the copy, which handler threads take for a moment at
 * each fault's start and end, so it delays faults by at most the copy.
 */
LUFFD_API int luffd_blocktime_threads(const struct luffd_ctx *ctx,
				      struct luffd_thread_blocktime *out,
				      size_t n);

#ifdef __cplusplus
}
#endif

#endif /* LIBUFFD_H */
