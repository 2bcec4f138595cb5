/* SPDX-License-Identifier: MIT */
/*
 * Internal declarations shared by the library's source files.  Non-static
 * names shared between files start with luffd__; everything here is hidden
 * from the shared library's ABI (-fvisibility=hidden + libuffd.map).
 */
#ifndef LUFFD_INTERNAL_H
#define LUFFD_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "compat.h"
#include "libuffd.h"

#define LUFFD__NIL UINT32_MAX
#define LUFFD__MSG_BATCH 64
#define LUFFD__MAX_QUEUE_DEPTH 4096
#define LUFFD__HIST_BUCKETS 976 /* 16 linear + 60 octaves x 16 sub-buckets */
#define LUFFD__TRACE_BUF (64 * 1024)

#define LUFFD__UNUSED __attribute__((unused))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

struct luffd__loop;
struct luffd__op;

/* ------------------------------------------------------------------------
 * Logging (never on the hot path)
 * ---------------------------------------------------------------------- */
void luffd__print(enum luffd_print_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
#define pr_warn(fmt, ...) luffd__print(LUFFD_WARN, "libuffd: " fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...) luffd__print(LUFFD_INFO, "libuffd: " fmt, ##__VA_ARGS__)
#define pr_debug(fmt, ...) luffd__print(LUFFD_DEBUG, "libuffd: " fmt, ##__VA_ARGS__)

uint64_t luffd__now_ns(void);

/* ------------------------------------------------------------------------
 * Opening userfaultfd (open.c)
 * ---------------------------------------------------------------------- */
struct luffd__kernel {
	uint64_t api;
	uint64_t features; /* offered by the kernel */
	uint64_t ioctls;
};

/* Learn once per process what the kernel offers (a probe descriptor). */
int luffd__probe(enum luffd_open_mode mode, struct luffd__kernel *k);
/* Open a non-blocking, close-on-exec userfaultfd and enable features
 * (a subset of what luffd__probe reported).  *how says which way worked. */
int luffd__uffd_open(enum luffd_open_mode mode, uint64_t features, int *fdp,
		     enum luffd_open_mode *how, uint64_t *ioctls);

/* ------------------------------------------------------------------------
 * Stores (store.c)
 * ---------------------------------------------------------------------- */
/* Capabilities the fault loop acts on; it never asks which kind a store is. */
#define LUFFD__CAP_DIRECT (1u << 0)     /* bytes addressable in memory: install
					   straight from them, no cache */
#define LUFFD__CAP_SHORT_EOF (1u << 1)  /* a short read continues; a read of 0
					   bytes is the end of the store */
#define LUFFD__CAP_EMPTY_ZERO (1u << 2) /* a read of 0 bytes means "zero page" */
#define LUFFD__CAP_HOLES (1u << 3)      /* ask hole() before reading */
#define LUFFD__CAP_APP_CODE (1u << 4)   /* read() runs application code on
					   the handler thread: guard it */

/* luffd__store_ops.read return: the read completed synchronously. */
#define LUFFD__READ_DONE 1

struct luffd__store_ops {
	/* Queue a read of op->len bytes at op->off into op->iov (return 0)
	 * or perform it now and set op->res (return LUFFD__READ_DONE), or
	 * fail (-errno, nothing queued). */
	int (*read)(struct luffd_store *s, struct luffd__loop *l,
		    struct luffd__op *op);
	/* CAP_DIRECT: the address of offset, NULL past the end. */
	const void *(*direct)(struct luffd_store *s, uint64_t off);
	/* CAP_HOLES: 1 when [off, off+len) holds no data; else 0 and
	 * *data_end = where the data run starting at off ends. */
	int (*hole)(struct luffd_store *s, uint64_t off, uint64_t len,
		    uint64_t *data_end);
	void (*destroy)(struct luffd_store *s);
};

struct luffd_store {
	atomic_uint refs;
	unsigned int caps;
	uint64_t id;   /* unique in the process, never reused: the cache key */
	uint64_t size; /* bytes, as seen at creation */
	const struct luffd__store_ops *ops;
	int fd;        /* file stores */
	int dfd;       /* file stores: O_DIRECT reopen for cold chunks, or -1 */
	atomic_bool dfd_refused; /* an O_DIRECT read failed with -EINVAL */
	bool direct_io;
	const unsigned char *mem; /* memory stores */
	struct luffd_callback_ops cb; /* callback stores */
	void *cb_arg;
};

struct luffd_store *luffd__store_get(struct luffd_store *s);
/* Does the page cache hold less than half of [off, off+len) of file store
 * s, which can read it with O_DIRECT (s->dfd)?  One cachestat() call. */
bool luffd__store_cold(struct luffd_store *s, uint64_t off, uint64_t len);

/* ------------------------------------------------------------------------
 * Cache (cache.c): a bounded set of page slots keyed by (store id, page).
 * Owned by one handler thread; no locking.  13-15 bytes of bookkeeping
 * per page slot: a 12-byte slot, a 4-byte hash bucket per two to four
 * slots, two bits of replacement state, and a table of the stores with
 * pages cached (see cache.c).
 * ---------------------------------------------------------------------- */
enum {
	LUFFD__SLOT_FREE = 0,
	LUFFD__SLOT_INFLIGHT,
	LUFFD__SLOT_READY,
};

/* Page indexes in a store must be below this (4 PiB with 4 KiB pages). */
#define LUFFD__CACHE_PG_BITS 40
#define LUFFD__CACHE_SIDX_BITS 22

struct luffd__slot {
	/* page index << 24 | store table index << 2 | state */
	uint64_t key;
	uint32_t hnext; /* hash chain (hashed), free list (free) */
} __attribute__((packed, aligned(4)));

/* A store with pages in the cache: slots refer to it by its index. */
struct luffd__cache_store {
	uint64_t id;
	uint32_t pages; /* slots holding its pages; the entry goes at 0 */
	uint32_t inflight; /* of those, slots being read */
	uint32_t hnext; /* id hash chain (in use), free list (free) */
};

struct luffd__cache {
	struct luffd__slot *slots;
	uint32_t nslots;
	uint32_t *buckets;
	uint32_t nbuckets; /* power of two */
	uint32_t free_head;
	uint32_t nfree;
	uint32_t ninflight;
	/* Replacement: one bit per slot in each map, READY slots only.
	 * Installed pages go first, then read-ahead pages nobody has used,
	 * each in slot order from a rotating hand. */
	uint64_t *unused_map, *used_map;
	uint32_t nused;
	uint32_t hand;
	/* Store table: index -> store id, and an id hash. */
	struct luffd__cache_store *stores;
	uint32_t nstores_cap;
	uint32_t nstores_max; /* 1 << LUFFD__CACHE_SIDX_BITS (tests lower it) */
	uint32_t *store_buckets; /* nstores_cap of them */
	uint32_t store_free;
	uint64_t memo_id;  /* the last store looked up, and its index */
	uint32_t memo_sidx;
	unsigned char *data;
	size_t data_len;
	unsigned int page_shift;
	uint64_t evictions;
};

int luffd__cache_init(struct luffd__cache *c, uint32_t nslots,
		      unsigned int page_shift);
void luffd__cache_fini(struct luffd__cache *c);
uint32_t luffd__cache_find(struct luffd__cache *c, uint64_t store_id,
			   uint64_t pg);
/* A slot for (store_id, pg) in state INFLIGHT, evicting a READY page if
 * needed (installed ones first); LUFFD__NIL when every slot is in flight
 * or, memory being short, the store cannot be entered in the table. */
uint32_t luffd__cache_alloc(struct luffd__cache *c, uint64_t store_id,
			    uint64_t pg);
void luffd__cache_ready(struct luffd__cache *c, uint32_t i);
/* The page was installed: keep it (a second fault on it is minor) but
 * make it one of the first to go. */
void luffd__cache_used(struct luffd__cache *c, uint32_t i);
void luffd__cache_release(struct luffd__cache *c, uint32_t i);
static inline void *luffd__cache_data(struct luffd__cache *c, uint32_t i)
{
	return c->data + ((size_t)i << c->page_shift);
}
static inline unsigned int luffd__cache_state(const struct luffd__cache *c,
					      uint32_t i)
{
	return (unsigned int)(c->slots[i].key & 3);
}
static inline bool luffd__cache_is_used(const struct luffd__cache *c,
					uint32_t i)
{
	return c->used_map[i >> 6] >> (i & 63) & 1;
}
/* Slots that could be handed out now (free or evictable). */
uint32_t luffd__cache_available(const struct luffd__cache *c);
/* Bytes of bookkeeping (everything but the page data). */
size_t luffd__cache_overhead(const struct luffd__cache *c);

/* ------------------------------------------------------------------------
 * Regions (region.c)
 * ---------------------------------------------------------------------- */
struct luffd__region {
	uint64_t start, len;
	uint64_t off;          /* store offset of start */
	struct luffd_store *store;
	struct luffd__loop *loop;
	bool mapped;           /* created by luffd_map(): we munmap it (guarded
				  by loop->lock once in the table) */
	atomic_bool dead;      /* being removed: serve nothing more */
	atomic_uint inflight;  /* faults and reads holding the region */
	uint64_t born;         /* when it entered the table (ns): events read
				  before that are about an older mapping */
	uint64_t gid;          /* a stripe of a striped range (stripe_bytes):
				  the range's group id; 0 otherwise */
	/* Read-ahead stream state, handler thread only (see window()). */
	uint64_t ra_next;      /* store page after the last window */
	uint64_t ra_mark;      /* a minor hit here reads the next window */
	uint32_t ra_win;       /* last window, pages */
	uint32_t ra_miss;      /* random misses not paid back by hits */
	uint32_t ra_credit;    /* hits beyond that (see start_read()) */
	/* Chunk streams (see loop.c), handler thread only.  huge: the
	 * mapping can take 2 MiB moves (luffd_map(), PROT_READ|PROT_WRITE,
	 * a file store, the kernel has UFFDIO_MOVE), set before the region
	 * is published; cleared by the handler if a move is refused. */
	bool huge;
	bool hp_on;            /* a sequential stream moved to chunks */
	uint64_t hp_next;      /* store offset of the next chunk to read */
	uint64_t hp_last;      /* store offset of the last chunk faulted */
	struct luffd__region *next; /* on loop->dying or loop->zombies */
};

/*
 * Where a region can be, all guarded by loop->lock:
 *  - the table: live, found by faults;
 *  - loop->dying: being removed by luffd_unmap()/luffd_unregister(); faults
 *    in it are left blocked until the unregister wakes them;
 *  - loop->zombies: replaced after the application unmapped or moved part
 *    of it (UNMAP/REMAP events); faults already holding it finish normally,
 *    and it is freed by an application thread once none holds it.
 */
enum luffd__lookup { LUFFD__FOUND, LUFFD__DYING, LUFFD__UNKNOWN };

/* 2 MiB: the size of a staging chunk, and the alignment of luffd_map()
 * ranges that can take chunks. */
#define LUFFD__HP_SHIFT 21
#define LUFFD__HP_SIZE (1ull << LUFFD__HP_SHIFT)

/* Find the live region containing addr (handler thread) and take a hold on
 * it (inflight) that luffd__region_put() drops. */
struct luffd__region *luffd__region_hold(struct luffd__loop *l, uint64_t addr,
					 enum luffd__lookup *how);
void luffd__region_put(struct luffd__region *r);
/* Remove every region of ctx, as luffd_unmap()/luffd_unregister() do. */
void luffd__region_remove_all(struct luffd_ctx *ctx);
/* Handler thread: the application unmapped [start, end) or moved
 * [from, from+len) to `to`; regions are split and moved to match. */
void luffd__region_unmapped(struct luffd__loop *l, uint64_t start,
			    uint64_t end, uint64_t t_read);
void luffd__region_moved(struct luffd__loop *l, uint64_t from, uint64_t to,
			 uint64_t len, uint64_t t_read);
/* Free zombies nobody holds (application threads, under ctx->lock). */
void luffd__region_reap(struct luffd_ctx *ctx);

/* ------------------------------------------------------------------------
 * Statistics and trace (stats.c)
 * ---------------------------------------------------------------------- */
struct luffd__stats {
	/* Single writer (the handler thread), any number of readers: plain
	 * relaxed loads and stores, never a locked instruction. */
	_Atomic uint64_t faults[LUFFD_NR_CLASSES];
	_Atomic uint64_t lat_sum[LUFFD_NR_CLASSES];
	_Atomic uint64_t lat_min[LUFFD_NR_CLASSES];
	_Atomic uint64_t lat_max[LUFFD_NR_CLASSES];
	_Atomic uint64_t hist[LUFFD_NR_CLASSES][LUFFD__HIST_BUCKETS];
	_Atomic uint64_t bytes_read, reads, readahead_pages, coalesced;
	_Atomic uint64_t evictions, eexist, eagain, waits, trace_errors;
	_Atomic uint64_t ev_remove, ev_unmap, ev_remap, orphans, timeouts;
	_Atomic uint64_t misuse, installed_ahead, moved_pages;
};

#define luffd__inc(field, n)                                                 \
	atomic_store_explicit(&(field),                                      \
			      atomic_load_explicit(&(field),                 \
						   memory_order_relaxed) + (n), \
			      memory_order_relaxed)

void luffd__stats_init(struct luffd__stats *s);
void luffd__stats_record(struct luffd__stats *s, enum luffd_class c,
			 uint64_t lat_ns);
unsigned int luffd__hist_index(uint64_t v);
uint64_t luffd__hist_value(unsigned int idx);

struct luffd__trace {
	pthread_mutex_t lock; /* the writer's buffer: handler vs. flush() */
	char *buf;
	size_t len;
};

void luffd__trace_emit(struct luffd__loop *l, const struct luffd_fault *f);
int luffd__trace_flush_loop(struct luffd__loop *l);
int luffd__trace_header(struct luffd_ctx *ctx);

/* ------------------------------------------------------------------------
 * The fault loop (loop.c)
 * ---------------------------------------------------------------------- */
/* A fault being served: from its message until its page is installed. */
struct luffd__fault {
	uint64_t addr;
	uint64_t t0;
	struct luffd__region *region; /* held (NULL while an orphan) */
	uint32_t tid;
	uint32_t next;  /* waiter / pending / retry list */
	uint8_t write;
	uint8_t waited; /* waited for a read: MAJOR whatever comes next */
	uint8_t parked; /* has waited for a free slot (counted once) */
	uint8_t alone;  /* a shared read failed: read its page alone */
	uint8_t nochunk; /* a chunk could not serve it: page path only */
};

/* A store read in flight: one window of consecutive store pages. */
struct luffd__op {
	struct luffd_store *store; /* held */
	struct luffd__region *region; /* held */
	uint64_t off;     /* store offset of the first page */
	uint64_t len;     /* bytes requested */
	uint64_t done;    /* bytes already read (short-read continuation) */
	int64_t res;      /* synchronous stores: the result */
	uint32_t npages;
	uint32_t next_free;
	bool expired;     /* read_timeout_ms passed: its faults got SIGBUS */
	bool had_waiter;  /* a fault started it (not background read-ahead) */
	bool async;       /* off the handler thread from the start */
	bool direct;      /* a cold chunk: read through store->dfd */
	uint32_t widx;    /* the waiting fault's page in the window */
	uint32_t chunk;   /* the chunk it fills, or LUFFD__NIL (pages) */
	uint64_t deadline;
	struct luffd__op *prev, *next; /* loop->inflight, oldest first */
	uint32_t *slot;   /* npages cache slots */
	uint32_t *waiters; /* per page: faults waiting for it (LUFFD__NIL) */
	struct iovec *iov; /* npages iovecs (advanced on continuation) */
	struct iovec *iov_mem;
	uint32_t niov;
};

struct luffd__flist { uint32_t head, tail; };

/* A staging chunk (loop.c): 2 MiB of a store read into a transparent
 * huge page, moved into place with UFFDIO_MOVE. */
enum { LUFFD__CHUNK_FREE = 0, LUFFD__CHUNK_INFLIGHT, LUFFD__CHUNK_READY };

struct luffd__chunk {
	uint64_t store_id;
	uint64_t off;     /* store offset of its first page */
	uint64_t tick;    /* when it became ready: the oldest goes first */
	uint32_t waiters; /* faults waiting for it (INFLIGHT) */
	uint32_t op;      /* INFLIGHT: the read filling it */
	uint16_t avail;   /* READY: pages [0, avail) still here; the rest
			     were moved into place */
	uint8_t state;
	uint8_t mem;      /* its memory: LUFFD__CHUNK_MEM_* */
	uint8_t whole;    /* read for a random miss: moved whole at once */
};

enum {
	LUFFD__CHUNK_MEM_NONE = 0,  /* no page: a read must fault one in */
	LUFFD__CHUNK_MEM_FILLING,   /* being populated on an io_uring worker */
	LUFFD__CHUNK_MEM_READY,     /* populated or read into */
};

struct luffd__loop {
	struct luffd_ctx *ctx;
	int uffd;
	int evfd;
	uint64_t ioctls;
	enum luffd_open_mode opened_by;
	struct io_uring ring;
	bool ring_ok;
	pthread_t thread;
	bool started;
	bool init_done; /* the thread's ring set-up finished, with init_err */
	int init_err;
	atomic_bool stop;

	/* Region table: sorted by start, guarded by lock (the handler takes
	 * it for a lookup, application threads to add or remove). */
	pthread_mutex_t lock;
	pthread_cond_t cv; /* inflight of a dead region reached 0 */
	atomic_uint removing; /* threads waiting for a region's holds */
	struct luffd__region **regions;
	size_t nregions, cap;
	struct luffd__region *dying, *zombies;

	struct luffd__cache cache;

	/* Staging chunks: ctx->hp_chunks of them, 2 MiB each, in one
	 * 2 MiB-aligned THP mapping (hp_data). */
	struct luffd__chunk *chunks;
	unsigned char *hp_data, *hp_map;
	size_t hp_map_len;
	uint64_t hp_tick;
	uint32_t populating; /* populates in flight */

	struct luffd__op *ops;
	uint32_t nops, free_op, ops_busy;
	uint32_t *op_slots;
	uint32_t *op_waiters;
	struct iovec *op_iov;

	/* Fault records: grown in chunks when every one is in use (there is
	 * one per blocked thread), never shrunk. */
	struct luffd__fault *faults;
	uint32_t nfaults, free_fault;
	struct luffd__flist pending; /* waiting for a cache or read slot */
	struct luffd__flist retry;   /* install returned -EAGAIN */
	struct luffd__flist orphans; /* no region yet (see resolve()) */
	/* Reads in flight and not yet expired, oldest (first to expire)
	 * first: every read has the same timeout. */
	struct luffd__op *inflight_head, *inflight_tail;
	/* Reads past read_timeout_ms still running (their pages stay in
	 * flight until they complete). */
	struct luffd__op *expired_head;

	/* Callback guard (guard.c).  cb_since: when the callback running on
	 * this handler started (0: none).  The guard stashes the messages it
	 * had to read to find the handler's own fault; the handler serves
	 * them before reading more. */
	pid_t tid;
	_Atomic uint64_t cb_since;
	atomic_bool cb_misuse;
	atomic_bool zapping;          /* handler dropping the zero pages */
	uint64_t misuse_addr[32];     /* pages given a zero page, written by
					 the guard before cb_misuse is set */
	atomic_uint misuse_n;
	atomic_size_t stash_n;
	struct luffd__stashed { struct uffd_msg m; uint64_t t; } *stash;
	size_t stash_cap;

	/* luffd_ctx_sync(): requests seen by the handler so far. */
	atomic_uint_fast64_t sync_req, sync_done;

	unsigned char *zero_page;
	unsigned char *bounce;  /* tail page of a memory store */

	struct uffd_msg msgs[LUFFD__MSG_BATCH];
	struct luffd__stats stats;
	struct luffd__trace trace;
};

int luffd__loop_init(struct luffd__loop *l, struct luffd_ctx *ctx,
		     uint32_t cache_pages);
int luffd__loop_start(struct luffd__loop *l);
void luffd__loop_stop(struct luffd__loop *l);
void luffd__loop_fini(struct luffd__loop *l);
void luffd__loop_kick(struct luffd__loop *l);
/* A submission entry of l's ring (submitting what is queued if it is
 * full), or NULL.  Handler thread only. */
struct io_uring_sqe *luffd__get_sqe(struct luffd__loop *l);
bool luffd__on_handler_thread(const struct luffd_ctx *ctx);
/* pthread_create() with every signal blocked in the new thread. */
int luffd__thread_create(pthread_t *t, void *(*fn)(void *), void *arg);

/* ------------------------------------------------------------------------
 * Context (context.c)
 * ---------------------------------------------------------------------- */
struct luffd_ctx {
	/* Settings, resolved from luffd_ctx_opts. */
	unsigned int nloops;
	unsigned int queue_depth;
	size_t cache_bytes;
	uint32_t ra_pages;
	bool ra_adaptive;
	uint32_t ia_pages; /* install-ahead chunk, pages (1: off) */
	uint32_t hp_chunks; /* staging chunks per handler (0: copy only) */
	unsigned int spin_us;
	uint64_t handler_cpus; /* affinity mask, 0: none */
	uint64_t stripe_bytes; /* 0: a range goes to one handler */
	uint64_t next_gid;     /* striped ranges made so far (ctx->lock) */
	unsigned int read_timeout_ms; /* 0: none */
	enum luffd_open_mode open_mode;
	uint64_t features; /* enabled UFFD_FEATURE_* */
	struct luffd__kernel kernel;
	luffd_trace_fn trace_fn;
	void *trace_arg;
	enum luffd_trace_format trace_format;
	int trace_fd;

	size_t page_size;
	unsigned int page_shift;
	uint64_t t_start;
	bool has_poison;

	pthread_mutex_t lock; /* serialises region creation and removal */

	/* The callback guard thread, started with the first region over a
	 * store that runs application code (guard.c). */
	pthread_t guard;
	bool guard_started;
	atomic_bool guard_stop;
	pthread_mutex_t guard_lock;
	pthread_cond_t guard_cv;
	atomic_uint next_loop;
	struct luffd__loop *loops;
};

/* ------------------------------------------------------------------------
 * Callback guard (guard.c)
 * ---------------------------------------------------------------------- */
int luffd__guard_start(struct luffd_ctx *ctx);
void luffd__guard_stop(struct luffd_ctx *ctx);
void luffd__guard_kick(struct luffd_ctx *ctx);
/* Handler thread: serve what the guard stashed. */
void luffd__loop_unstash(struct luffd__loop *l);

#endif /* LUFFD_INTERNAL_H */
