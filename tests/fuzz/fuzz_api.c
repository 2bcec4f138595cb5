/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: decode the input into a sequence of libuffd calls with
 * arbitrary arguments (context options, stores over arbitrary fds, sizes
 * and flags, map/register/unmap/unregister with arbitrary offsets, lengths,
 * protections, flags and addresses, touches, stats and percentiles) and
 * check that every call returns 0 (or a count) or a negative errno /
 * LUFFD_E_* code, and never crashes.  After every iteration nothing the
 * iteration created may be left mapped or registered, and no fd may leak.
 *
 * Creating a context per input is affordable but not free: most inputs use
 * one long-lived default context (checked empty after each iteration), the
 * rest create their own from fuzzed options.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <libuffd.h>

#define MAXS 8
#define MAXR 16
#define ARENA_PAGES 256
#define MEM_PAGES 16

static size_t ps;
static struct luffd_ctx *g_ctx;
static int g_fds[8];
static char g_path[64];
static char *g_arena;
static unsigned char *g_mem;
static int g_base_fds = -1;

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "fuzz_api: %s:%d: check failed: %s\n", \
				__FILE__, __LINE__, #cond);                  \
			abort();                                             \
		}                                                            \
	} while (0)

/* 0 or a negative errno / LUFFD_E_* code, and a description for it. */
static int rc_ok(int rc)
{
	const char *s = luffd_strerror(rc);

	CHECK(s && *s);
	if (rc == 0)
		return 1;
	CHECK(rc < 0);
	CHECK(-rc < 4096 || (-rc > LUFFD_E_BASE && -rc < LUFFD_E_MAX));
	return 0;
}

/* ---- input decoding ------------------------------------------------ */

struct in {
	const uint8_t *p;
	size_t n;
};

static uint64_t take(struct in *in, size_t bytes)
{
	uint64_t v = 0;

	for (size_t i = 0; i < bytes && in->n; i++, in->p++, in->n--)
		v |= (uint64_t)*in->p << (8 * i);
	return v;
}
#define U8(in) ((uint8_t)take(in, 1))
#define U16(in) ((uint16_t)take(in, 2))
#define U32(in) ((uint32_t)take(in, 4))
#define U64(in) take(in, 8)

/* A size or offset: mostly small page multiples, sometimes anything. */
static uint64_t size_arg(struct in *in)
{
	uint8_t k = U8(in);

	switch (k & 3) {
	case 0: return (uint64_t)(k >> 2) * ps;
	case 1: return (uint64_t)U8(in) * ps;
	case 2: return U16(in);
	default: return U64(in);
	}
}

/* ---- touching memory ----------------------------------------------- */

static __thread sigjmp_buf *volatile jb;
static struct sigaction old_segv, old_bus;

static void on_sig(int sig, siginfo_t *si, void *uc)
{
	sigjmp_buf *j = jb;
	struct sigaction *old = sig == SIGSEGV ? &old_segv : &old_bus;

	if (j) {
		jb = NULL;
		siglongjmp(*j, 1);
	}
	/* Not ours: let libFuzzer / the sanitizer report it.  With no
	 * handler to pass it to, say where it hit and abort(), which
	 * libFuzzer reports (and saves the input for); re-raising it with
	 * the default action would kill the process without a word. */
	if (old->sa_flags & SA_SIGINFO) {
		old->sa_sigaction(sig, si, uc);
	} else if (old->sa_handler != SIG_IGN && old->sa_handler != SIG_DFL) {
		old->sa_handler(sig);
	} else {
		char msg[128];
		int n = snprintf(msg, sizeof(msg), "fuzz_api: stray signal %d "
				 "at %p (code %d)\n", sig, si->si_addr,
				 si->si_code);

		if (write(2, msg, n > 0 ? (size_t)n : 0) < 0)
			n = 0;
		abort();
	}
}

static int touch(const void *p)
{
	sigjmp_buf j;

	if (sigsetjmp(j, 1))
		return 1;
	jb = &j;
	(void)*(const volatile uint64_t *)p;
	jb = NULL;
	return 0;
}

/* ---- callback stores ----------------------------------------------- */

struct cbmode {
	int how;
};

static struct cbmode cb_modes[8] = { { 0 }, { 1 }, { 2 }, { 3 }, { 4 },
				     { 5 }, { 6 }, { 7 } };

static ssize_t cb_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct cbmode *m = arg;

	memset(buf, (int)(off / ps) & 0xff, len);
	switch (m->how) {
	case 0: return (ssize_t)len;
	case 1: return 0;
	case 2: return -EIO;
	case 3: return (ssize_t)(len / 2);
	case 4: return (ssize_t)len * 3;
	case 5: return 1;
	case 6: return -(1 << 30); /* not an errno */
	default: return off % (2 * ps) ? -ENOSPC : (ssize_t)ps;
	}
}

static ssize_t cb_write(void *arg, uint64_t off, const void *buf,
			size_t len)
{
	struct cbmode *m = arg;

	(void)off;
	(void)buf;
	return m->how & 1 ? -EIO : (ssize_t)len;
}

static void cb_destroy(void *arg)
{
	CHECK(arg >= (void *)cb_modes && arg < (void *)(cb_modes + 8));
}

/* ---- set-up -------------------------------------------------------- */

/* Descriptors the library could leak: anonymous inodes (userfaultfd,
 * io_uring, eventfd) and the data file (stores dup or reopen it).  Pipes
 * and the like come and go with libFuzzer's symbolizer: not counted. */
static int fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	char l[64], t[256];
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		ssize_t k;

		snprintf(l, sizeof(l), "/proc/self/fd/%s", e->d_name);
		k = readlink(l, t, sizeof(t) - 1);
		if (k <= 0)
			continue;
		t[k] = 0;
		if (strncmp(t, "anon_inode:", 11) == 0 ||
		    strcmp(t, g_path) == 0)
			n++;
	}
	closedir(d);
	return n;
}

static void init(void)
{
	struct sigaction sa;
	char tmpl[] = "/tmp/luffd-fuzz-XXXXXX";
	int fd, rc;

	ps = (size_t)sysconf(_SC_PAGESIZE);
	fd = mkstemp(tmpl);
	CHECK(fd >= 0);
	strcpy(g_path, tmpl);
	for (size_t i = 0; i < 20 * ps; i += 8) {
		uint64_t w = i * 0x9e3779b97f4a7c15ull;

		CHECK(pwrite(fd, &w, 8, (off_t)i) == 8);
	}
	CHECK(ftruncate(fd, 20 * (off_t)ps + 123) == 0);
	g_fds[0] = fd;                                  /* regular file */
	g_fds[1] = open("/dev/null", O_RDWR | O_CLOEXEC); /* char device */
	CHECK(pipe2(&g_fds[2], O_CLOEXEC) == 0);          /* 2, 3: pipe */
	g_fds[4] = open(g_path, O_WRONLY | O_CLOEXEC);    /* write-only */
	g_fds[5] = open(g_path, O_PATH | O_CLOEXEC);      /* O_PATH */
	g_fds[6] = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	g_fds[7] = 1000000;                               /* not open */
	g_arena = mmap(NULL, ARENA_PAGES * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	CHECK(g_arena != MAP_FAILED);
	g_mem = mmap(NULL, MEM_PAGES * ps, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(g_mem != MAP_FAILED);
	memset(g_mem, 0x3c, MEM_PAGES * ps);
	rc = luffd_ctx_create(NULL, &g_ctx);
	if (rc) {
		fprintf(stderr, "fuzz_api: cannot create a context: %s\n",
			luffd_strerror(rc));
		exit(77);
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sig;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigaction(SIGSEGV, &sa, &old_segv);
	sigaction(SIGBUS, &sa, &old_bus);
	g_base_fds = fd_count();
}

/* ---- one input ----------------------------------------------------- */

struct region {
	char *addr;
	size_t len;
	int mapped; /* luffd_map(), else luffd_register() */
};

/*
 * Is [addr, addr+len), a luffd_map() range, gone?  Nothing mapped there,
 * or something else: a library thread (a callback worker's stack, the
 * allocator of an evictor or a handler) may map memory at any moment,
 * and may get the address just freed; the mapping was ours only if a
 * mapping spans exactly the range.
 */
static int unmapped(const void *addr, size_t len)
{
	unsigned char vec[64];
	size_t n = len / ps < 64 ? len : 64 * ps;
	unsigned long lo, hi, a = (unsigned long)(uintptr_t)addr;
	char line[512];
	int ours = 0;
	FILE *f;

	if (mincore((void *)addr, n, vec) != 0 && errno == ENOMEM)
		return 1;
	f = fopen("/proc/self/maps", "r");
	if (!f)
		return 0;
	while (!ours && fgets(line, sizeof(line), f))
		ours = sscanf(line, "%lx-%lx", &lo, &hi) == 2 && lo == a &&
		       hi == a + len;
	fclose(f);
	return !ours;
}

static int fuzz_ctx(struct in *in, struct luffd_ctx **ctxp)
{
	/* A caller that passes sz past sizeof(o) owns that many bytes: the
	 * tail is zero (a newer caller's unset options) or, now and then,
	 * has one byte set (an option this version lacks: -EINVAL). */
	union {
		struct luffd_ctx_opts o;
		unsigned char b[sizeof(struct luffd_ctx_opts) + 64];
	} u;
	struct luffd_ctx_opts o = { .sz = sizeof(o) };
	uint8_t sel = U8(in);
	int rc;

	memset(&u, 0, sizeof(u));
	o.sz = (sel & 3) == 0 ? sizeof(o) : (sel & 3) == 1 ?
	       (size_t)U16(in) % sizeof(u) :
	       sizeof(size_t) + (size_t)(U8(in) % 120);
	if ((sel & 3) == 3)
		u.b[sizeof(o) + U8(in) % 64] = 1;
	o.handler_threads = U8(in) % 5;
	if (sel & 4)
		o.handler_threads = U32(in);
	o.queue_depth = U16(in) % 5000;
	/* Bounded: a context allocates metadata for its whole cache up
	 * front, and libFuzzer's malloc limit would call a legitimate
	 * multi-GiB cache a crash. */
	o.cache_bytes = (size_t)(U32(in) % (256u << 20));
	switch (U8(in) % 4) {
	case 0: o.readahead_bytes = 0; break;
	case 1: o.readahead_bytes = LUFFD_NO_READAHEAD; break;
	case 2: o.readahead_bytes = (size_t)(U8(in) % 40) * ps; break;
	default: o.readahead_bytes = (size_t)U32(in); break;
	}
	o.spin_us = sel & 8 ? U32(in) : U8(in) % 50;
	o.open_mode = (enum luffd_open_mode)(U8(in) % 6);
	o.disable_features = U64(in);
	o.trace_format = (enum luffd_trace_format)(U8(in) % 4);
	o.trace_fd = (sel & 16) ? g_fds[1] : (sel & 32) ? -1 : g_fds[7];
	o.read_timeout_ms = U32(in);
	o.readahead_mode = (enum luffd_readahead)(U8(in) % 3);
	o.install_mode = (enum luffd_install)(U8(in) % 3);
	o.handler_cpus = sel & 64 ? U64(in) : 0;
	switch (U8(in) % 4) {
	case 0: o.stripe_bytes = 0; break;
	case 1: o.stripe_bytes = (size_t)(U8(in) % 8) * ps; break;
	case 2: o.stripe_bytes = (size_t)U8(in) << 21; break;
	default: o.stripe_bytes = (size_t)U32(in); break;
	}
	o.resident_bytes = sel & 128 ? (size_t)U32(in) :
			   (size_t)(U8(in) % 16) * 64 * ps;
	u.o = o;
	rc = luffd_ctx_create(&u.o, ctxp);
	rc_ok(rc);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size };
	struct luffd_store *st[MAXS] = { 0 };
	struct region rg[MAXR];
	struct region gone[64];
	int nrg = 0, ngone = 0, own = 0, nops = 0;
	struct luffd_ctx *ctx;
	uint8_t mode;

	if (!g_ctx)
		init();
	mode = U8(&in);
	ctx = g_ctx;
	if ((mode & 7) == 7) {
		struct luffd_ctx *c = NULL;

		if (fuzz_ctx(&in, &c) == 0) {
			ctx = c;
			own = 1;
		}
	}

	while (in.n && nops++ < 64) {
		uint8_t op = U8(&in) % 22;
		uint8_t a = U8(&in);

		if (getenv("FUZZ_VERBOSE"))
			fprintf(stderr, "op %d a %#x (nrg %d)\n", op, a, nrg);
		struct luffd_store **sp = &st[a % MAXS];
		struct luffd_store *s = st[(a >> 3) % MAXS];
		int rc;

		switch (op) {
		case 0: { /* file store over an fd */
			int fd = a & 0x80 ? (int)U16(&in) - 2 : g_fds[a % 8];
			unsigned int fl = U8(&in) & 0x10 ? U32(&in) : U8(&in) & 3;

			luffd_store_put(*sp);
			*sp = NULL;
			rc = luffd_store_file(fd, fl, sp);
			rc_ok(rc);
			CHECK(rc == 0 ? *sp != NULL : 1);
			if (rc)
				*sp = NULL;
			break;
		}
		case 1: { /* file store by path */
			const char *paths[] = { g_path, "/dev/null", "/tmp",
						"/nonexistent", "", NULL };
			unsigned int fl = U8(&in) % 8; /* with FILE_WRITE */

			luffd_store_put(*sp);
			*sp = NULL;
			rc = luffd_store_open(paths[(a >> 3) % 6], fl, sp);
			rc_ok(rc);
			if (rc)
				*sp = NULL;
			break;
		}
		case 2: { /* memory store inside g_mem (or NULL) */
			uint64_t off = size_arg(&in) % (MEM_PAGES * ps + 1);
			uint64_t len = size_arg(&in) % (MEM_PAGES * ps - off + 1);

			luffd_store_put(*sp);
			*sp = NULL;
			rc = luffd_store_memory(a & 0x80 ? NULL : g_mem + off,
						len, sp);
			rc_ok(rc);
			if (rc)
				*sp = NULL;
			break;
		}
		case 3: { /* callback store */
			union {
				struct luffd_callback_ops o;
				unsigned char b[sizeof(struct luffd_callback_ops)
						+ 64];
			} ops;
			uint8_t k = U8(&in);

			memset(&ops, 0, sizeof(ops));
			ops.o.sz = sizeof(ops.o);
			ops.o.fill = cb_fill;
			ops.o.destroy = a & 0x40 ? cb_destroy : NULL;
			ops.o.write = a & 0x10 ? cb_write : NULL;
			ops.o.size = k & 0x80 ? UINT64_MAX : size_arg(&in);
			if (k & 0x40)
				ops.o.sz = U8(&in) % sizeof(ops);
			if ((k & 0x60) == 0x60)
				ops.b[sizeof(ops.o) + U8(&in) % 64] = 1;
			else if (k & 0x20)
				ops.o.fill = NULL;
			luffd_store_put(*sp);
			*sp = NULL;
			rc = luffd_store_callback(&ops.o, &cb_modes[k % 8], sp);
			rc_ok(rc);
			if (rc)
				*sp = NULL;
			break;
		}
		case 4:
			luffd_store_put(*sp);
			*sp = NULL;
			break;
		case 5: { /* map */
			uint64_t off = size_arg(&in), len = size_arg(&in);
			int prot = U8(&in) & 0x80 ? (int)U32(&in) :
				   (int)(U8(&in) & 7);
			uint8_t f8 = U8(&in);
			unsigned int fl = f8 & 0x80 ? U32(&in) :
					  (f8 & 0x40 ? LUFFD_MAP_PUSH : 0) |
					  (f8 & 0x20 ? LUFFD_MAP_WP : 0) |
					  (f8 & 0x10 ? LUFFD_MAP_WRITEBACK : 0);
			void *addr = NULL;

			rc = luffd_map(ctx, a & 0x80 ? NULL : s, off,
				       (size_t)len, prot, fl, &addr);
			rc_ok(rc);
			if (rc == 0) {
				CHECK(addr && ((uintptr_t)addr % ps) == 0);
				if (nrg < MAXR) {
					/* luffd_map() rounds len up to
					 * whole pages. */
					rg[nrg++] = (struct region){
						addr,
						((size_t)len + ps - 1) & ~(ps - 1),
						1 };
				} else {
					CHECK(luffd_unmap(ctx, addr, len) == 0);
				}
			}
			break;
		}
		case 6: { /* register inside the arena */
			uint64_t at = size_arg(&in) % (ARENA_PAGES * ps);
			uint64_t len = size_arg(&in), off = size_arg(&in);
			uint8_t f8 = U8(&in);
			unsigned int fl = f8 & 0x80 ? U32(&in) :
					  f8 & 0x40 ? LUFFD_REGISTER_PUSH : 0;

			if (at + len > ARENA_PAGES * ps)
				len = ARENA_PAGES * ps - at;
			rc = luffd_register(ctx, g_arena + at, (size_t)len,
					    a & 0x80 ? NULL : s, off, fl);
			rc_ok(rc);
			if (rc == 0) {
				if (nrg < MAXR)
					rg[nrg++] = (struct region){
						g_arena + at, (size_t)len, 0 };
				else
					CHECK(luffd_unregister(ctx, g_arena + at,
							       len) == 0);
			}
			break;
		}
		case 7: /* unmap / unregister a region, exactly or not */
		case 8: {
			uint8_t k = U8(&in);

			if (nrg && !(k & 0x80)) {
				int i = k % nrg;
				struct region r = rg[i];
				size_t len = r.len;

				if (k & 0x40)
					len += ps; /* wrong length */
				rc = r.mapped ? luffd_unmap(ctx, r.addr, len) :
						luffd_unregister(ctx, r.addr,
								 len);
				rc_ok(rc);
				if (k & 0x40) {
					CHECK(rc == -EINVAL);
					break;
				}
				/* The other kind of call does not remove it. */
				CHECK(rc == 0);
				if (r.mapped) {
					CHECK(unmapped(r.addr, r.len));
				}
				rg[i] = rg[--nrg];
			} else {
				void *addr = (void *)(uintptr_t)U64(&in);

				rc = op == 7 ? luffd_unmap(ctx, addr,
							   (size_t)size_arg(&in)) :
					       luffd_unregister(ctx, addr,
							(size_t)size_arg(&in));
				rc_ok(rc);
				CHECK(rc != 0);
			}
			break;
		}
		case 9: /* touch a page of a region */
			if (nrg) {
				struct region *r = &rg[a % nrg];
				size_t pg;

				CHECK(r->len >= ps);
				pg = U16(&in) % (r->len / ps);
				touch(r->addr + pg * ps);
			}
			break;
		case 10: { /* drop pages */
			if (nrg) {
				struct region *r = &rg[a % nrg];

				CHECK(madvise(r->addr, r->len,
					      MADV_DONTNEED) == 0);
			}
			break;
		}
		case 11: { /* stats with an arbitrary struct size */
			union {
				struct luffd_stats s;
				char pad[sizeof(struct luffd_stats) + 64];
			} u;

			memset(&u, 0xa5, sizeof(u));
			u.s.sz = a & 0x80 ? sizeof(u.s) : (size_t)U16(&in) %
							   sizeof(u);
			rc_ok(luffd_stats_get(a & 0x40 ? NULL : ctx, &u.s));
			{
				struct luffd_thread_blocktime t[4];
				size_t n = U8(&in) % 6;

				rc = luffd_blocktime_threads(
					a & 0x20 ? NULL : ctx,
					a & 0x10 ? NULL : t,
					n < 5 ? n : 4);
				/* A count of threads, or an error. */
				if (rc > 0)
					CHECK(rc <= LUFFD_BLOCKTIME_MAX_THREADS);
				else
					rc_ok(rc);
			}
			break;
		}
		case 12: { /* percentiles */
			double p;
			uint64_t ns = 0, bits = U64(&in);

			if (a & 0x80)
				memcpy(&p, &bits, sizeof(p)); /* NaN, inf, ... */
			else
				p = (double)(bits % 20000) / 100.0 - 50.0;
			rc = luffd_latency_percentile(ctx,
						      (enum luffd_class)(a % 6),
						      p, &ns);
			rc_ok(rc);
			if (rc == 0)
				CHECK(p > 0 && p <= 100 && (a % 6) <= 4);
			break;
		}
		case 13: { /* features */
			union {
				struct luffd_features f;
				char pad[sizeof(struct luffd_features) + 64];
			} u;

			memset(&u, 0, sizeof(u));
			u.f.sz = a & 0x80 ? sizeof(u.f) : (size_t)U8(&in) %
							  sizeof(u);
			rc_ok(luffd_ctx_features(ctx, &u.f));
			break;
		}
		case 14:
			/* FUZZ_NO_SYNC=1 leaves the sync round trips out
			 * (more inputs a second). */
			if (!getenv("FUZZ_NO_SYNC"))
				rc_ok(luffd_ctx_sync(ctx));
			rc_ok(luffd_trace_flush(ctx));
			break;
		case 15: { /* pure functions */
			int err = (int)U32(&in);

			CHECK(luffd_strerror(err) != NULL);
			CHECK(luffd_class_name((enum luffd_class)a) != NULL);
			if (s)
				(void)luffd_store_size(s);
			CHECK(luffd_store_size(NULL) == 0);
			break;
		}
		case 17: { /* install into (or around) a region */
			static char src[8 * 4096];
			char *at = nrg ? rg[a % nrg].addr +
					 (U16(&in) % 16) * ps :
					 (char *)(uintptr_t)U64(&in);
			size_t len = a & 0x80 ? (size_t)U32(&in) :
				     (size_t)(U8(&in) % 9) * ps;
			unsigned int fl = U8(&in) & 0x80 ? U32(&in) : 0;
			ssize_t n;

			if (len > sizeof(src) && !(a & 0x40))
				len = sizeof(src);
			n = luffd_install(a & 0x20 ? NULL : ctx, at,
					  a & 0x10 ? NULL : src, len, fl);
			rc_ok(n < 0 ? (int)n : 0);
			if (n >= 0)
				CHECK((size_t)n <= len && n % (ssize_t)ps == 0);
			break;
		}
		case 21: { /* write back a region (or garbage) */
			char *at = nrg ? rg[a % nrg].addr +
					 (U16(&in) % 16) * ps :
					 (char *)(uintptr_t)U64(&in);
			size_t len = a & 0x80 ? (size_t)U64(&in) :
				     (size_t)U16(&in) * 64;

			rc_ok(luffd_msync(a & 0x20 ? NULL : ctx, at, len,
					  U8(&in) & 3));
			break;
		}
		case 20: { /* dirty ranges of a region (or garbage) */
			char *at = nrg ? rg[a % nrg].addr +
					 (U16(&in) % 16) * ps :
					 (char *)(uintptr_t)U64(&in);
			size_t len = a & 0x80 ? (size_t)U64(&in) :
				     (size_t)U16(&in) * 64;
			struct luffd_range out[8];
			size_t n = U8(&in) % 9;
			unsigned int fl = U8(&in) & 3;
			ssize_t k = luffd_dirty(a & 0x20 ? NULL : ctx, at, len,
						a & 0x10 ? NULL : out, n, fl);

			rc_ok(k < 0 ? (int)k : 0);
			if (k >= 0)
				CHECK((size_t)k <= n);
			break;
		}
		case 19: { /* wait for a push (or garbage), never long */
			char *at = nrg ? rg[a % nrg].addr +
					 (U16(&in) % 16) * ps :
					 (char *)(uintptr_t)U64(&in);
			size_t len = a & 0x80 ? (size_t)U64(&in) :
				     (size_t)U16(&in) * 64;
			/* Never -1: a push that never starts (no fault
			 * comes) would be waited for for ever. */
			static const int tmos[] = { 0, 1, 2, -2 };
			int tmo = a & 0x40 ? tmos[U8(&in) % 4] : 0;

			rc_ok(luffd_push_wait(a & 0x20 ? NULL : ctx, at, len,
					      tmo));
			break;
		}
		case 18: { /* prefetch a region (or garbage) */
			char *at = nrg ? rg[a % nrg].addr +
					 (U16(&in) % 16) * ps :
					 (char *)(uintptr_t)U64(&in);
			size_t len = a & 0x80 ? (size_t)U64(&in) :
				     (size_t)U16(&in) * 64;
			unsigned int fl = U8(&in);

			fl = fl & 0x80 ? U32(&in) : fl & 1;
			rc_ok(luffd_prefetch(a & 0x20 ? NULL : ctx, at, len,
					     fl));
			break;
		}
		default: /* bad contexts */
			rc_ok(luffd_ctx_destroy(NULL));
			CHECK(luffd_ctx_sync(NULL) == -EINVAL);
			CHECK(luffd_map(NULL, s, 0, ps, PROT_READ, 0,
					&(void *){ 0 }) < 0);
			CHECK(luffd_register(ctx, g_arena, ps, s, 0, 0) == 0 ?
			      luffd_unregister(ctx, g_arena, ps) == 0 : 1);
			break;
		}
	}

	/* Clean up: some regions by hand, the rest by destroy when the
	 * context is ours. */
	for (int i = 0; i < nrg; i++) {
		if (own && (mode & 8)) {
			if (rg[i].mapped && ngone < 64)
				gone[ngone++] = rg[i];
			continue;
		}
		CHECK((rg[i].mapped ? luffd_unmap(ctx, rg[i].addr, rg[i].len) :
		       luffd_unregister(ctx, rg[i].addr, rg[i].len)) == 0);
		if (rg[i].mapped)
			CHECK(unmapped(rg[i].addr, rg[i].len));
	}
	for (int i = 0; i < MAXS; i++)
		luffd_store_put(st[i]);
	if (own)
		CHECK(luffd_ctx_destroy(ctx) == 0);
	for (int i = 0; i < ngone; i++)
		CHECK(unmapped(gone[i].addr, gone[i].len));
	/* Nothing of this input stays registered in the shared context:
	 * the whole arena can be registered again. */
	{
		struct luffd_store *s = NULL;

		CHECK(luffd_store_memory(g_mem, ps, &s) == 0);
		CHECK(luffd_register(g_ctx, g_arena, ARENA_PAGES * ps, s, 0,
				     0) == 0);
		CHECK(luffd_unregister(g_ctx, g_arena, ARENA_PAGES * ps) == 0);
		luffd_store_put(s);
	}
	CHECK(madvise(g_arena, ARENA_PAGES * ps, MADV_DONTNEED) == 0);
	/* A read still in flight when its region went is cancelled, not
	 * waited for: its request holds the store (and the store its
	 * descriptor) until the read comes back, a moment later. */
	for (int i = 0; i < 200 && fd_count() != g_base_fds; i++) {
		rc_ok(luffd_ctx_sync(g_ctx));
		usleep(10000);
	}
	if (fd_count() != g_base_fds) {
		DIR *d = opendir("/proc/self/fd");
		struct dirent *e;
		char l[256], t[512];

		while (d && (e = readdir(d))) {
			ssize_t k;

			snprintf(l, sizeof(l), "/proc/self/fd/%s", e->d_name);
			k = readlink(l, t, sizeof(t) - 1);
			t[k > 0 ? k : 0] = 0;
			fprintf(stderr, "fd %s -> %s\n", e->d_name, t);
		}
		if (d)
			closedir(d);
	}
	CHECK(fd_count() == g_base_fds);
	return 0;
}
