/* SPDX-License-Identifier: MIT */
/*
 * The three engines (libuffd, the kernel's mmap, a textbook userfaultfd
 * handler) and the timed touch loop they share.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* ------------------------------------------------------------------------
 * Signals: a fault the engine could not serve, a hang, an interrupt.  The
 * handlers only use async-signal-safe calls.
 * ---------------------------------------------------------------------- */

static char g_label[128] = "setup";
static char g_file[4096];
static char g_dir[4096];
static unsigned int g_timeout;
static volatile pid_t g_child;
static char g_cgdir[4096];

void set_run_label(const char *label)
{
	snprintf(g_label, sizeof(g_label), "%s", label);
}

void set_cleanup_paths(const char *file, const char *dir)
{
	snprintf(g_file, sizeof(g_file), "%s", file ? file : "");
	snprintf(g_dir, sizeof(g_dir), "%s", dir ? dir : "");
}

void set_cleanup_child(pid_t pid, const char *cgdir)
{
	g_child = 0;
	snprintf(g_cgdir, sizeof(g_cgdir), "%s", cgdir ? cgdir : "");
	g_child = pid;
}

void bench_child_init(void)
{
	g_file[0] = g_dir[0] = g_cgdir[0] = 0;
	g_child = 0;
}

/* Also from signal handlers: only async-signal-safe calls.  A run's child
 * goes first, so its cgroup can be removed and the file it maps unlinked. */
static void cleanup_files(void)
{
	if (g_child > 0) {
		kill(g_child, SIGKILL);
		waitpid(g_child, NULL, 0);
		g_child = 0;
	}
	if (g_cgdir[0])
		rmdir(g_cgdir);
	g_cgdir[0] = 0;
	if (g_file[0])
		unlink(g_file);
	if (g_dir[0])
		rmdir(g_dir);
	g_file[0] = g_dir[0] = 0;
}

static void put(const char *s)
{
	ssize_t r = write(2, s, strlen(s));

	(void)r;
}

static void put_hex(uint64_t v)
{
	char b[19] = "0x", t[16];
	int n = 0, i = 2;

	do {
		t[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	while (n)
		b[i++] = t[--n];
	b[i] = 0;
	put(b);
}

static void put_dec(uint64_t v)
{
	char t[24];
	int n = 23;

	t[n] = 0;
	do {
		t[--n] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(t + n);
}

static void on_fatal(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	put("uffd-bench: fatal ");
	put(sig == SIGBUS ? "SIGBUS" : "SIGSEGV");
	put(" (si_code ");
	put_dec((uint64_t)si->si_code);
	put(") at address ");
	put_hex((uint64_t)(uintptr_t)si->si_addr);
	put(" during ");
	put(g_label);
	put(": the engine did not serve a fault\n");
	cleanup_files();
	_exit(EXIT_RUN_FAILED);
}

static void on_alarm(int sig)
{
	(void)sig;
	put("uffd-bench: ");
	put(g_label);
	put(": no result after ");
	put_dec(g_timeout);
	put(" s (hang?); giving up (--timeout)\n");
	cleanup_files();
	_exit(EXIT_RUN_FAILED);
}

static void on_interrupt(int sig)
{
	cleanup_files();
	_exit(128 + sig);
}

void install_signal_handlers(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fatal;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = on_interrupt;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	atexit(cleanup_files);
}

/* ------------------------------------------------------------------------
 * The touch loop
 * ---------------------------------------------------------------------- */

struct touch;

struct worker {
	pthread_t th;
	struct touch *t;
	uint64_t lo, hi;
	uint64_t t0, t1;
	uint64_t minflt, majflt;
	_Atomic uint64_t done;
	uint64_t sink;
};

struct touch {
	struct bench_ctx *b;
	const char *base;
	pthread_barrier_t bar;
	struct worker *w;
};

/* Pin the calling thread to the CPUs in mask (0: leave it). */
static void pin_self(uint64_t mask)
{
	cpu_set_t set;

	if (!mask)
		return;
	CPU_ZERO(&set);
	for (int i = 0; i < 64; i++)
		if (mask & (1ull << i))
			CPU_SET(i, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
		fprintf(stderr, "uffd-bench: cannot pin a thread to 0x%llx\n",
			(unsigned long long)mask);
}

static void *touch_worker(void *arg)
{
	struct worker *w = arg;
	struct touch *t = w->t;
	const uint32_t *order = t->b->order;
	uint32_t *lat = t->b->lat;
	size_t page = t->b->cfg->page;
	struct rusage ru0, ru1;
	uint64_t i, sink = 0;

	pin_self(t->b->cfg->thread_cpus);
	getrusage(RUSAGE_THREAD, &ru0);
	pthread_barrier_wait(&t->bar);
	w->t0 = now_ns();
	for (i = w->lo; i < w->hi; i++) {
		const volatile uint64_t *p = (const volatile uint64_t *)
			(t->base + (size_t)order[i] * page);
		uint64_t a, z;

		a = now_ns();
		sink += *p;
		z = now_ns();
		lat[i] = z - a > UINT32_MAX ? UINT32_MAX : (uint32_t)(z - a);
		atomic_store_explicit(&w->done, i + 1 - w->lo,
				      memory_order_relaxed);
	}
	w->t1 = now_ns();
	getrusage(RUSAGE_THREAD, &ru1);
	w->minflt = (uint64_t)(ru1.ru_minflt - ru0.ru_minflt);
	w->majflt = (uint64_t)(ru1.ru_majflt - ru0.ru_majflt);
	w->sink = sink;
	return NULL;
}

static void progress(const struct config *cfg, const struct run *r,
		     uint64_t done, uint64_t total, uint64_t elapsed,
		     uint64_t *last)
{
	if (cfg->quiet || elapsed < 1000000000u)
		return;
	if (cfg->progress_tty) {
		fprintf(stderr, "\r%s: %" PRIu64 "/%" PRIu64
			" pages (%.0f%%), %.1f s\033[K", r->label, done, total,
			total ? 100.0 * (double)done / (double)total : 100.0,
			(double)elapsed / 1e9);
		*last = elapsed;
	} else if (elapsed - *last >= 1000000000u) {
		fprintf(stderr, "%s: %" PRIu64 "/%" PRIu64
			" pages (%.0f%%), %.1f s\n", r->label, done, total,
			total ? 100.0 * (double)done / (double)total : 100.0,
			(double)elapsed / 1e9);
		*last = elapsed;
	}
}

/* Touch every page of b->order once, nthreads at a time; fill b->lat,
 * r->wall_ns and the rusage counters. */
static int touch_all(struct bench_ctx *b, const char *base, struct run *r)
{
	unsigned int nt = b->cfg->threads, i, started = 0;
	struct touch t = { .b = b, .base = base };
	uint64_t start = now_ns(), last = 0, t0 = UINT64_MAX, t1 = 0;
	int err = 0;

	t.w = calloc(nt, sizeof(*t.w));
	if (!t.w)
		return -ENOMEM;
	pthread_barrier_init(&t.bar, NULL, nt);
	for (i = 0; i < nt; i++) {
		t.w[i].t = &t;
		t.w[i].lo = b->n * i / nt;
		t.w[i].hi = b->n * (i + 1) / nt;
	}
	for (i = 0; i < nt; i++) {
		err = pthread_create(&t.w[i].th, NULL, touch_worker, &t.w[i]);
		if (err) {
			/* The barrier would never open: no way back. */
			fprintf(stderr, "uffd-bench: pthread_create: %s\n",
				strerror(err));
			exit(EXIT_RUN_FAILED);
		}
		started++;
	}
	for (i = 0; i < started; i++) {
		for (;;) {
			struct timespec ts;
			uint64_t done = 0;
			unsigned int j;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 200000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			if (pthread_timedjoin_np(t.w[i].th, NULL, &ts) == 0)
				break;
			for (j = 0; j < nt; j++)
				done += atomic_load_explicit(&t.w[j].done,
						memory_order_relaxed);
			progress(b->cfg, r, done, b->n, now_ns() - start, &last);
		}
	}
	if (last && b->cfg->progress_tty)
		fprintf(stderr, "\r\033[K");
	r->ru_minflt = r->ru_majflt = 0;
	for (i = 0; i < nt; i++) {
		if (t.w[i].lo == t.w[i].hi)
			continue;
		if (t.w[i].t0 < t0)
			t0 = t.w[i].t0;
		if (t.w[i].t1 > t1)
			t1 = t.w[i].t1;
		r->ru_minflt += t.w[i].minflt;
		r->ru_majflt += t.w[i].majflt;
	}
	r->wall_ns = t1 > t0 ? t1 - t0 : 0;
	pthread_barrier_destroy(&t.bar);
	free(t.w);
	return 0;
}

static size_t map_len(const struct config *cfg)
{
	return (size_t)(cfg->npages * cfg->page);
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

static void verify(struct bench_ctx *b, const char *base, struct run *r)
{
	int err = verify_pages(b->cfg, b->fd, base, b->order, b->n, r);

	if (err)
		set_err(r, "verification could not run: %s", strerror(-err));
	else if (!r->verified)
		r->ok = false;
}

/* ------------------------------------------------------------------------
 * mmap: the kernel's own MAP_PRIVATE mapping of the file
 * ---------------------------------------------------------------------- */

static int run_mmap(struct bench_ctx *b, struct run *r)
{
	void *m = mmap(NULL, map_len(b->cfg), b->cfg->prot, MAP_PRIVATE, b->fd,
		       0);
	int err;

	if (m == MAP_FAILED) {
		set_err(r, "mmap: %s", strerror(errno));
		return -1;
	}
	err = touch_all(b, m, r);
	if (err) {
		munmap(m, map_len(b->cfg));
		set_err(r, "touch: %s", strerror(-err));
		return -1;
	}
	/* The kernel only counts minor and major faults. */
	r->faults[LUFFD_MINOR] = r->ru_minflt;
	r->faults[LUFFD_MAJOR] = r->ru_majflt;
	verify(b, m, r);
	munmap(m, map_len(b->cfg));
	return 0;
}

/* ------------------------------------------------------------------------
 * naive: the textbook handler.  One thread, blocking read() of one uffd_msg,
 * pread() of one page, one UFFDIO_COPY.  A page past the end of the file
 * would be installed as zeroes (no SIGBUS); the bench never touches one.
 * ---------------------------------------------------------------------- */

static int open_uffd(int *how)
{
	int fd, dev;

	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	*how = 0;
	if (fd < 0) {
		fd = (int)syscall(SYS_userfaultfd,
				  O_CLOEXEC | UFFD_USER_MODE_ONLY);
		*how = 1;
	}
	if (fd < 0) {
		dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		*how = 2;
		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
			close(dev);
		}
	}
	if (fd < 0)
		return -errno;
	return fd;
}

static int uffd_api(int fd)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };

	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return -errno;
	if (!(api.ioctls & (1ull << _UFFDIO_REGISTER)))
		return -ENOTSUP;
	return 0;
}

int uffd_available(char *why, size_t len)
{
	int how, fd = open_uffd(&how), err;

	if (fd < 0) {
		snprintf(why, len, "no userfaultfd: %s (syscall, "
			 "UFFD_USER_MODE_ONLY and /dev/userfaultfd all failed)",
			 strerror(-fd));
		return 0;
	}
	err = uffd_api(fd);
	close(fd);
	if (err) {
		snprintf(why, len, "UFFDIO_API failed: %s", strerror(-err));
		return 0;
	}
	return 1;
}

struct naive {
	int uffd;
	int fd;
	uintptr_t base;
	uintptr_t sentinel;   /* one page past the file's pages: stop */
	_Atomic bool exited;
	size_t page;
	uint64_t size;
	char *buf;
	const char *mem;      /* bare, slow: the file's bytes */
	uint64_t lat_ns;      /* slow: each fault waits this long first (the
				 textbook handler on a remote source) */
	void *nbd;            /* --store nbd: fetch with nbd_pread() */
	uint64_t cpus;        /* --handler-cpus */
	uint32_t *svc;        /* service latency per fault */
	uint64_t nsvc, cap;
	uint64_t faults[LUFFD_NR_CLASSES];
	int err;              /* first error (negative errno) */
};

static void *naive_handler(void *arg)
{
	struct naive *n = arg;

	pin_self(n->cpus);

	for (;;) {
		struct uffd_msg msg;
		struct uffdio_copy copy;
		const char *src;
		uint64_t t0, addr, off;
		ssize_t got;
		size_t done = 0;

		got = read(n->uffd, &msg, sizeof(msg));
		if (got < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (got != (ssize_t)sizeof(msg)) {
			if (!n->err)
				n->err = got < 0 ? -errno : -EIO;
			atomic_store(&n->exited, true);
			return NULL;
		}
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		t0 = now_ns();
		addr = msg.arg.pagefault.address & ~(uint64_t)(n->page - 1);
		if (addr == n->sentinel) {
			struct uffdio_zeropage z = {
				.range = { addr, n->page } };

			ioctl(n->uffd, UFFDIO_ZEROPAGE, &z);
			atomic_store(&n->exited, true);
			return NULL;
		}
		off = addr - n->base;
		if (n->mem) {
			/* bare: no read, just the install; slow: a request
			 * to a source that answers after lat_ns. */
			if (n->lat_ns) {
				struct timespec ts = {
					.tv_sec = (time_t)(n->lat_ns /
							   1000000000ull),
					.tv_nsec = (long)(n->lat_ns %
							  1000000000ull) };

				while (nanosleep(&ts, &ts) && errno == EINTR)
					;
				n->faults[LUFFD_MAJOR]++;
			} else {
				n->faults[LUFFD_MINOR]++;
			}
			if (off + n->page <= n->size) {
				src = n->mem + off;
			} else {
				done = off < n->size ? (size_t)(n->size - off)
						     : 0;
				memcpy(n->buf, n->mem + off, done);
				memset(n->buf + done, 0, n->page - done);
				src = n->buf;
			}
			goto install;
		}
		if (n->nbd) {
			/* One synchronous NBD request per fault, up to the
			 * export's end. */
			size_t want = off >= n->size ? 0 :
				      n->size - off < n->page ?
					      (size_t)(n->size - off) : n->page;

			got = want ? nbd_sync_pread(n->nbd, n->buf, want, off)
				   : 0;
			if (got < 0)
				errno = (int)-got;
			done = got > 0 ? (size_t)got : 0;
		}
		while (!n->nbd && done < n->page) {
			got = pread(n->fd, n->buf + done, n->page - done,
				    (off_t)(off + done));
			if (got < 0 && errno == EINTR)
				continue;
			if (got <= 0)
				break;
			done += (size_t)got;
		}
		if (got < 0) {
			if (!n->err)
				n->err = -errno;
			n->faults[LUFFD_ERROR]++;
		} else if (done == 0) {
			n->faults[LUFFD_ZERO]++;
		} else {
			n->faults[LUFFD_MAJOR]++;
		}
		if (off + n->page > n->size) {
			/* Past the end of the file: zeroes, as mmap shows
			 * the tail of the last page. */
			size_t keep = off < n->size ? (size_t)(n->size - off) : 0;

			if (done > keep)
				done = keep;
		}
		memset(n->buf + done, 0, n->page - done);
		src = n->buf;
install:
		copy.dst = addr;
		copy.src = (uintptr_t)src;
		copy.len = n->page;
		copy.mode = 0;
		copy.copy = 0;
		if (ioctl(n->uffd, UFFDIO_COPY, &copy) < 0) {
			if (errno == EEXIST) {
				/* Another thread's fault on the same page
				 * installed it: just wake this one. */
				struct uffdio_range rg = { addr, n->page };

				ioctl(n->uffd, UFFDIO_WAKE, &rg);
			} else if (!n->err) {
				n->err = -errno;
			}
		}
		if (n->nsvc < n->cap) {
			uint64_t d = now_ns() - t0;

			n->svc[n->nsvc++] = d > UINT32_MAX ? UINT32_MAX
							   : (uint32_t)d;
		}
	}
}

/* The file's cfg->size bytes in memory (untimed), page-aligned; NULL
 * with r's error set on failure.  free() it. */
static char *load_file(struct bench_ctx *b, struct run *r)
{
	const struct config *cfg = b->cfg;
	size_t len = (size_t)cfg->npages * cfg->page, done = 0;
	char *m = aligned_alloc(cfg->page, len ? len : cfg->page);

	if (!m) {
		set_err(r, "out of memory for a copy of the file");
		return NULL;
	}
	while (done < cfg->size) {
		ssize_t got = pread(b->fd, m + done, cfg->size - done,
				    (off_t)done);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			set_err(r, "reading the file into memory: %s",
				got < 0 ? strerror(errno) : "short file");
			free(m);
			return NULL;
		}
		done += (size_t)got;
	}
	return m;
}

static int run_naive(struct bench_ctx *b, struct run *r, bool bare)
{
	const struct config *cfg = b->cfg;
	struct naive n = { .fd = b->fd, .page = cfg->page, .size = cfg->size };
	char *mem = NULL;
	struct uffdio_register reg;
	pthread_t th;
	void *m = MAP_FAILED;
	int how, err, ret = -1;

	n.uffd = open_uffd(&how);
	if (n.uffd < 0) {
		set_err(r, "naive: no userfaultfd: %s", strerror(-n.uffd));
		return -1;
	}
	err = uffd_api(n.uffd);
	if (err) {
		set_err(r, "naive: UFFDIO_API: %s", strerror(-err));
		goto out;
	}
	n.cpus = cfg->handler_cpus;
	/* Against a slow store (--store async|callback), naive asks the
	 * same copy with the same delay, one fault at a time. */
	if (!bare && (cfg->store == STORE_ASYNC ||
		      cfg->store == STORE_CALLBACK))
		n.lat_ns = cfg->store_lat_us * 1000;
	if (!bare && cfg->store == STORE_NBD) {
		n.nbd = nbd_sync_open(cfg->nbd_uri);
		if (!n.nbd) {
			set_err(r, "naive: cannot connect to %s", cfg->nbd_uri);
			goto out;
		}
	}
	if (bare || n.lat_ns) {
		mem = load_file(b, r);
		if (!mem)
			goto out;
		n.mem = mem;
	}
	n.cap = b->n + 16;
	n.svc = malloc(n.cap * sizeof(*n.svc));
	n.buf = aligned_alloc(cfg->page, cfg->page);
	if (!n.svc || !n.buf) {
		set_err(r, "naive: out of memory");
		goto out;
	}
	/* One more page than the file: the main thread's touch of it tells
	 * the handler, blocked in read(), to stop. */
	m = mmap(NULL, map_len(cfg) + cfg->page, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		set_err(r, "naive: mmap: %s", strerror(errno));
		goto out;
	}
	/* 4 KiB pages, as the handler installs them. */
	madvise(m, map_len(cfg) + cfg->page, MADV_NOHUGEPAGE);
	n.base = (uintptr_t)m;
	n.sentinel = n.base + map_len(cfg);
	reg.range.start = n.base;
	reg.range.len = map_len(cfg) + cfg->page;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(n.uffd, UFFDIO_REGISTER, &reg) < 0) {
		set_err(r, "naive: UFFDIO_REGISTER: %s", strerror(errno));
		goto out;
	}
	err = pthread_create(&th, NULL, naive_handler, &n);
	if (err) {
		set_err(r, "naive: pthread_create: %s", strerror(err));
		goto out;
	}
	err = touch_all(b, m, r);
	if (!atomic_load(&n.exited))
		(void)*(volatile char *)n.sentinel;
	pthread_join(th, NULL);
	if (err) {
		set_err(r, "touch: %s", strerror(-err));
		goto out;
	}
	memcpy(r->faults, n.faults, sizeof(n.faults));
	r->has_naive = true;
	latsum_from(n.svc, n.nsvc, &r->naive_svc);
	if (n.err)
		set_err(r, "naive handler: %s", strerror(-n.err));
	verify(b, m, r);
	ret = 0;
out:
	if (m != MAP_FAILED)
		munmap(m, map_len(cfg) + cfg->page);
	close(n.uffd);
	nbd_sync_close(n.nbd);
	free(n.svc);
	free(n.buf);
	free(mem);
	return ret;
}

/* ------------------------------------------------------------------------
 * libuffd
 * ---------------------------------------------------------------------- */

/* The trace callback records the class of each page's fault, so the
 * faulting threads' latencies can be split by class. */
struct cls_rec {
	_Atomic uintptr_t base;
	size_t page;
	uint64_t npages;
	uint8_t *cls;
	_Atomic uint64_t count;
};

static void trace_cb(void *arg, const struct luffd_fault *f)
{
	struct cls_rec *c = arg;
	uintptr_t base = atomic_load_explicit(&c->base, memory_order_acquire);
	uint64_t pg;

	atomic_fetch_add_explicit(&c->count, 1, memory_order_relaxed);
	if (!base || f->addr < base)
		return;
	pg = (f->addr - base) / c->page;
	if (pg < c->npages)
		c->cls[pg] = f->cls;
}

/* Wait (at most 200 ms) until every touched page has a record, or the
 * count stops moving (a page installed along with another never faults). */
static void settle_records(struct cls_rec *rec, uint64_t pages)
{
	uint64_t last = UINT64_MAX, stable_since = now_ns(), t0 = now_ns();

	for (;;) {
		uint64_t n = atomic_load(&rec->count), t = now_ns();

		if (n >= pages || t - t0 > 200000000u)
			return;
		if (n != last) {
			last = n;
			stable_since = t;
		} else if (t - stable_since > 5000000u) {
			return;
		}
		usleep(200);
	}
}

/* --corrupt-page: a callback store over the file that flips one byte of one
 * page, so a test can prove that verification catches wrong data. */
struct corrupt {
	int fd;
	uint64_t size;
	uint64_t bad_off;
};

static ssize_t corrupt_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct corrupt *c = arg;
	size_t done = 0;

	if (off >= c->size)
		return -ENXIO;
	while (done < len) {
		ssize_t got = pread(c->fd, (char *)buf + done, len - done,
				    (off_t)(off + done));

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0)
			break;
		done += (size_t)got;
	}
	if (c->bad_off >= off && c->bad_off < off + done)
		((unsigned char *)buf)[c->bad_off - off] ^= 0x5a;
	return (ssize_t)done;
}

static int make_store(struct bench_ctx *b, struct corrupt *c,
		      struct luffd_store **storep)
{
	const struct config *cfg = b->cfg;

	if (cfg->corrupt_page >= 0) {
		struct luffd_callback_ops ops = {
			.sz = sizeof(ops),
			.fill = corrupt_fill,
			.size = cfg->size,
		};

		c->fd = b->fd;
		c->size = cfg->size;
		c->bad_off = (uint64_t)cfg->corrupt_page * cfg->page +
			     (123 % cfg->page);
		if (c->bad_off >= cfg->size)
			c->bad_off = cfg->size - 1;
		return luffd_store_callback(&ops, c, storep);
	}
	return luffd_store_file(b->fd, cfg->direct ? LUFFD_FILE_DIRECT : 0,
				storep);
}

static void split_by_class(struct bench_ctx *b, struct run *r, bool want_cdf)
{
	uint64_t cnt[NR_TCLASSES] = { 0 }, i;
	uint32_t *s[NR_TCLASSES];
	int c;

	for (i = 0; i < b->n; i++) {
		uint8_t k = b->cls[b->order[i]];

		cnt[k < LUFFD_NR_CLASSES ? k : CLS_NOFAULT]++;
	}
	for (c = 0; c < NR_TCLASSES; c++)
		s[c] = malloc((cnt[c] ? cnt[c] : 1) * sizeof(uint32_t));
	memset(cnt, 0, sizeof(cnt));
	for (i = 0; i < b->n; i++) {
		uint8_t k = b->cls[b->order[i]];

		k = k < LUFFD_NR_CLASSES ? k : CLS_NOFAULT;
		if (s[k])
			s[k][cnt[k]++] = b->lat[i];
	}
	for (c = 0; c < NR_TCLASSES; c++) {
		if (!s[c])
			continue;
		latsum_from(s[c], cnt[c], &r->lat_cls[c]);
		if (want_cdf && cnt[c])
			cdf_from_sorted(s[c], cnt[c], &r->cdf_cls[c]);
		free(s[c]);
	}
}

void libuffd_opts(const struct config *cfg, struct luffd_ctx_opts *o)
{
	o->handler_threads = cfg->handler_threads;
	o->queue_depth = cfg->queue_depth;
	o->cache_bytes = cfg->cache_bytes;
	o->readahead_bytes = cfg->readahead_bytes;
	o->readahead_mode = cfg->readahead_mode;
	o->install_ahead_bytes = cfg->install_ahead_bytes;
	o->spin_us = cfg->spin_us;
	o->open_mode = cfg->open_mode;
	o->install_mode = cfg->install_mode;
	o->handler_cpus = cfg->handler_cpus;
	o->stripe_bytes = cfg->stripe_bytes;
}

int libuffd_settings_check(const struct config *cfg)
{
	LUFFD_OPTS(luffd_ctx_opts, opts);
	struct luffd_ctx *ctx;
	int err;

	libuffd_opts(cfg, &opts);
	err = luffd_ctx_create(&opts, &ctx);
	if (!err)
		luffd_ctx_destroy(ctx);
	return err;
}

static int run_libuffd(struct bench_ctx *b, struct run *r)
{
	const struct config *cfg = b->cfg;
	LUFFD_OPTS(luffd_ctx_opts, opts);
	struct cls_rec rec = { .page = cfg->page, .npages = cfg->npages,
			       .cls = b->cls };
	struct corrupt cor;
	struct luffd_ctx *ctx = NULL;
	struct luffd_store *store = NULL;
	struct latstore *ls = NULL;
	void *m = NULL;
	char *mem = NULL;
	int tfd = -1, err, ret = -1, i;
	int c;

	memset(b->cls, 0xff, cfg->npages);
	libuffd_opts(cfg, &opts);
	opts.trace_fn = trace_cb;
	opts.trace_arg = &rec;
	if (r->trace_file[0]) {
		tfd = open(r->trace_file, O_WRONLY | O_CREAT | O_TRUNC |
			   O_CLOEXEC, 0644);
		if (tfd < 0) {
			set_err(r, "--trace %s: %s", r->trace_file,
				strerror(errno));
			return -1;
		}
		opts.trace_format = cfg->trace_fmt;
		opts.trace_fd = tfd;
	}
	err = luffd_ctx_create(&opts, &ctx);
	if (err) {
		set_err(r, "luffd_ctx_create: %s", luffd_strerror(err));
		goto out;
	}
	if (cfg->store == STORE_NBD) {
		err = luffd_store_nbd(r->calib ? cfg->nbd_uri0 : cfg->nbd_uri,
				      0, &store);
	} else if (cfg->store != STORE_FILE && cfg->corrupt_page < 0) {
		/* Freed after the context: it serves from these bytes. */
		mem = load_file(b, r);
		if (!mem)
			goto out;
		if (cfg->store == STORE_MEM)
			err = luffd_store_memory(mem, cfg->size, &store);
		else
			err = latstore_new(cfg->store, mem, cfg->size,
					   r->calib ? 0 : cfg->store_lat_us,
					   &ls, &store);
	} else {
		err = make_store(b, &cor, &store);
	}
	if (err) {
		set_err(r, "libuffd store: %s", luffd_strerror(err));
		goto out;
	}
	err = luffd_map(ctx, store, 0, map_len(cfg), cfg->prot, 0, &m);
	luffd_store_put(store);
	if (err) {
		m = NULL;
		set_err(r, "luffd_map: %s", luffd_strerror(err));
		goto out;
	}
	atomic_store_explicit(&rec.base, (uintptr_t)m, memory_order_release);
	/* prefetch: the whole mapping, in the background, from the start;
	 * the touches then race it (untimed: it returns once queued). */
	if (r->eng == ENG_PREFETCH) {
		err = luffd_prefetch(ctx, m, map_len(cfg), 0);
		if (err) {
			set_err(r, "luffd_prefetch: %s", luffd_strerror(err));
			goto out;
		}
	}
	err = touch_all(b, m, r);
	if (err) {
		set_err(r, "touch: %s", strerror(-err));
		goto out;
	}
	/* The handler wakes a faulting thread by installing its page and only
	 * then records the fault, so the last touch can return before its
	 * record exists: let the records settle before the snapshot. */
	settle_records(&rec, b->n);
	for (i = 0; i < 100; i++) {
		uint64_t tot = 0;

		r->st.sz = sizeof(r->st);
		err = luffd_stats_get(ctx, &r->st);
		if (err) {
			set_err(r, "luffd_stats_get: %s", luffd_strerror(err));
			goto out;
		}
		for (c = 0; c < LUFFD_NR_CLASSES; c++)
			tot += r->st.faults[c];
		if (tot >= atomic_load(&rec.count))
			break;
		usleep(1000);
	}
	r->has_luffd = true;
	for (c = 0; c < LUFFD_NR_CLASSES; c++)
		r->faults[c] = r->st.faults[c];
	r->trace_cb_faults = atomic_load(&rec.count);
	split_by_class(b, r, cfg->plot_path != NULL);
	verify(b, m, r);
	ret = 0;
out:
	if (m) {
		err = luffd_unmap(ctx, m, map_len(cfg));
		if (err)
			set_err(r, "luffd_unmap: %s", luffd_strerror(err));
	}
	if (ctx) {
		err = luffd_ctx_destroy(ctx);
		if (err)
			set_err(r, "luffd_ctx_destroy: %s", luffd_strerror(err));
	}
	if (tfd >= 0)
		close(tfd);
	if (ls)
		latstore_delay(ls, &r->store_delay_p50, &r->store_delay_mean);
	/* NBD: what the delayed server serves to as many requests in flight
	 * as there are faulting threads, measured alone right after. */
	if (cfg->store == STORE_NBD && cfg->store_lat_us && !r->calib)
		r->store_delay_p50 = nbd_served_delay(cfg->nbd_uri,
						      cfg->threads, cfg->size);
	latstore_free(ls);
	free(mem);
	return ret;
}

/* ------------------------------------------------------------------------
 * pread and fill: no faults at all.  The whole file in order, 1 MiB per
 * pread(2).  pread reads into one buffer touched beforehand: the bandwidth
 * of the one copy any user-space handler has to make.  fill reads into a
 * fresh private anonymous mapping of the whole file, as a handler must
 * fill new memory: that copy plus the kernel allocating and zeroing the
 * pages (and, on a VM, the host backing them).  Both on the same file in
 * the same run.
 * ---------------------------------------------------------------------- */

static int run_pread(struct bench_ctx *b, struct run *r, bool fill)
{
	const struct config *cfg = b->cfg;
	const size_t chunk = 1u << 20, hp = 2u << 20;
	uint64_t size = cfg->npages * cfg->page, total = 0, per_page;
	size_t maplen = fill ? (size_t)size + hp : 0;
	char *map = NULL, *buf;
	char *exp = aligned_alloc(cfg->page, cfg->page);

	if (fill) {
		map = mmap(NULL, maplen, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (map == MAP_FAILED)
			map = NULL;
		buf = map ? (char *)(((uintptr_t)map + hp - 1) &
				     ~(uintptr_t)(hp - 1)) : NULL;
		if (buf)
			madvise(buf, (size_t)size, MADV_HUGEPAGE);
	} else {
		buf = aligned_alloc(cfg->page, chunk);
		if (buf)
			memset(buf, 0, chunk);
	}
	if (!buf || !exp) {
		if (map)
			munmap(map, maplen);
		else
			free(buf);
		free(exp);
		set_err(r, "out of memory");
		return -1;
	}
	r->bad_pages = 0;
	for (uint64_t off = 0; off < size; off += chunk) {
		size_t want = size - off < chunk ? (size_t)(size - off) : chunk;
		char *at = fill ? buf + off : buf;
		uint64_t t0 = now_ns();
		ssize_t n = pread(b->fd, at, want, (off_t)off);

		total += now_ns() - t0;
		if (n < 0) {
			set_err(r, "pread: %s", strerror(errno));
			break;
		}
		/* Outside the timed part: a generated file is checked page
		 * by page (a --file can only be compared with itself). */
		for (size_t p = 0; cfg->generated && p < (size_t)n;
		     p += cfg->page) {
			expected_page(cfg, (off + p) / cfg->page, exp);
			if (memcmp(at + p, exp, cfg->page) &&
			    r->bad_pages++ == 0)
				snprintf(r->err, sizeof(r->err),
					 "verification failed: engine %s: "
					 "page %" PRIu64, engine_name(r->eng),
					 (off + p) / cfg->page);
		}
	}
	if (map)
		munmap(map, maplen);
	else
		free(buf);
	free(exp);
	if (r->err[0] && !r->bad_pages)
		return -1;
	/* Only a generated file has something to compare with. */
	r->verified = cfg->generated && !r->bad_pages;
	if (r->bad_pages)
		r->ok = false;
	r->wall_ns = total;
	r->pages = cfg->npages;
	r->bytes = size;
	/* No faults: every touched page is charged its share of the time. */
	per_page = cfg->npages ? total / cfg->npages : 0;
	for (uint64_t i = 0; i < b->n; i++)
		b->lat[i] = (uint32_t)(per_page > UINT32_MAX ? UINT32_MAX
							      : per_page);
	return 0;
}

/*
 * Touch and free as much anonymous memory (in huge pages) as the run may
 * fill.  On a VM that hands free memory back to its host (virtio-balloon
 * free page reporting, as here), the first touch of guest memory costs a
 * host fault per page, several times the cost of the copy: without this,
 * whichever engine first runs after memory went back to the host pays for
 * it and the others do not.  Freed just before the run, the memory is
 * still backed when the run allocates it.
 */
void warm_memory(const struct config *cfg)
{
	const size_t hp = 2u << 20;
	size_t len = (size_t)(cfg->npages * cfg->page) + 2 * hp;
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (m == MAP_FAILED)
		return;
	madvise(m, len, MADV_HUGEPAGE);
	for (size_t i = 0; i < len; i += cfg->page)
		m[i] = 1;
	munmap(m, len);
}

/* Faults in all, GB/s and faults/s of a finished run. */
static void rates(struct run *r)
{
	r->faults_total = 0;
	for (int c = 0; c < LUFFD_NR_CLASSES; c++)
		r->faults_total += r->faults[c];
	if (r->wall_ns) {
		r->gbps = (double)r->bytes / (double)r->wall_ns;
		r->faults_per_s = (double)r->faults_total * 1e9 /
				  (double)r->wall_ns;
	}
}

int run_engine(struct bench_ctx *b, struct run *r)
{
	const struct config *cfg = b->cfg;
	int ret;

	r->ok = true;
	r->pages = b->n;
	r->bytes = b->n * cfg->page;
	set_run_label(r->label);
	if (cfg->workload == WL_OOC) {
		/* In a child process, timed out by the parent. */
		ret = run_ooc(b, r);
		set_run_label("between runs");
		if (ret < 0)
			r->ok = false;
		rates(r);
		return ret;
	}
	if (!cfg->no_memory_warm)
		warm_memory(cfg);
	if (cfg->timeout_s)
		alarm(cfg->timeout_s);
	g_timeout = cfg->timeout_s;
	switch (r->eng) {
	case ENG_MMAP:
		ret = run_mmap(b, r);
		break;
	case ENG_NAIVE:
	case ENG_BARE:
		ret = run_naive(b, r, r->eng == ENG_BARE);
		break;
	case ENG_PREAD:
	case ENG_FILL:
		ret = run_pread(b, r, r->eng == ENG_FILL);
		break;
	case ENG_NBDCOPY:
		r->bytes = cfg->size;
		memset(b->lat, 0, b->n * sizeof(*b->lat)); /* no touches */
		ret = run_nbdcopy(cfg, r);
		if (ret)
			set_err(r, "nbdcopy %s: %s", cfg->nbd_uri,
				strerror(-ret));
		break;
	default:
		ret = run_libuffd(b, r);
		break;
	}
	alarm(0);
	set_run_label("between runs");
	if (ret < 0) {
		r->ok = false;
		return ret;
	}
	rates(r);
	latsum_from(b->lat, b->n, &r->lat);
	if (cfg->plot_path)
		cdf_from_sorted(b->lat, b->n, &r->cdf);
	return 0;
}
