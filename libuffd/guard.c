/* SPDX-License-Identifier: MIT */
/*
 * The callback guard: catching a store callback that touches memory served
 * by its own handler thread.
 *
 * fill() runs on the handler thread.  If it reads a missing page of a region
 * served by that same handler, the thread blocks in its own page fault, and
 * nobody is left to read the fault's message: the handler and every thread
 * faulting on it would hang forever.  The guard, one thread per context
 * started with the first region over a callback store, looks every
 * GUARD_MS at the handler threads that have been inside a callback for that
 * long.  One blocked in handle_userfault (its /proc wchan) is deadlocked on
 * itself; the guard reads the userfaultfd in its place until it finds the
 * handler's own fault (stashing the messages before it for the handler,
 * in order), installs a zero page there so the callback can return, and
 * flags the callback.  The handler then fails that read with -EDEADLK (the
 * faults waiting for it get SIGBUS), counts it in callback_misuse, and drops
 * the zero page again, so the page is served properly the next time it is
 * touched.  Between the zero page's install and its removal, another thread
 * touching that page would read zeroes: the window is the rest of the bad
 * callback.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "context.h"
#include "guard.h"
#include "install.h"
#include "loop.h"

#define GUARD_MS 20

static bool stuck_in_own_fault(struct luffd__loop *l)
{
	char path[64], buf[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/wchan", (int)l->tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return strncmp(buf, "handle_userfault", 16) == 0;
}

/* Keep message m, read at time t (taken before the read: see reshape()). */
static int stash(struct luffd__loop *l, const struct uffd_msg *m, uint64_t t)
{
	size_t n;

	pthread_mutex_lock(&l->lock);
	n = atomic_load(&l->stash_n);
	if (n == l->stash_cap) {
		size_t cap = l->stash_cap ? l->stash_cap * 2 : 64;
		void *p = realloc(l->stash, cap * sizeof(*l->stash));

		if (!p) {
			pthread_mutex_unlock(&l->lock);
			return -ENOMEM;
		}
		l->stash = p;
		l->stash_cap = cap;
	}
	l->stash[n].m = *m;
	l->stash[n].t = t;
	atomic_store(&l->stash_n, n + 1);
	pthread_mutex_unlock(&l->lock);
	return 0;
}

/* Read l's userfaultfd up to the handler's own fault; returns its page,
 * or 0 if it is not (yet) there. */
static uint64_t find_own_fault(struct luffd__loop *l)
{
	uint64_t mask = ~(uint64_t)(l->cfg->page_size - 1);
	struct uffd_msg m;

	for (;;) {
		uint64_t t = luffd__now_ns();

		if (read(l->uffd, &m, sizeof(m)) != (ssize_t)sizeof(m))
			return 0;
		if (m.event == UFFD_EVENT_PAGEFAULT &&
		    m.arg.pagefault.feat.ptid == (uint32_t)l->tid)
			return m.arg.pagefault.address & mask;
		if (stash(l, &m, t)) {
			/* Out of memory: the message cannot be kept, and
			 * dropping a fault would hang its thread. */
			if (m.event == UFFD_EVENT_PAGEFAULT)
				luffd__pt_wake(l->uffd,
					       m.arg.pagefault.address & mask,
					       l->cfg->page_size);
		}
	}
}

/* Let the stuck callback go on: a zero page at addr. */
static void release(struct luffd__loop *l, uint64_t addr)
{
	unsigned int n = atomic_load(&l->misuse_n);

	/* More than 32 pages read by one bad callback: the rest keep their
	 * zero page until unmapped (the callback's result is failed all the
	 * same). */
	if (n < sizeof(l->misuse_addr) / sizeof(l->misuse_addr[0])) {
		l->misuse_addr[n] = addr;
		atomic_store(&l->misuse_n, n + 1);
	}
	atomic_store(&l->cb_misuse, true);
	int err = luffd__pt_zero(l->uffd, addr, l->cfg->page_size, 0);

	if (err && err != -EEXIST)
		luffd__pt_wake(l->uffd, addr, l->cfg->page_size);
}

/* While the handler drops zero pages, read its userfaultfd for it. */
static void read_for(struct luffd__loop *l)
{
	struct uffd_msg m;

	while (atomic_load(&l->zapping)) {
		uint64_t t = luffd__now_ns();

		if (read(l->uffd, &m, sizeof(m)) != (ssize_t)sizeof(m))
			break;
		stash(l, &m, t);
	}
}

static void *guard_main(void *arg)
{
	struct luffd_ctx *ctx = arg;
	bool fast = false;

	pthread_mutex_lock(&ctx->guard_lock);
	while (!atomic_load(&ctx->guard_stop)) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += (fast ? 1 : GUARD_MS) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&ctx->guard_cv, &ctx->guard_lock, &ts);
		pthread_mutex_unlock(&ctx->guard_lock);

		fast = false;
		for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
			struct luffd__loop *l = &ctx->loops[i];
			uint64_t since = atomic_load(&l->cb_since), addr;

			if (atomic_load(&l->zapping)) {
				read_for(l);
				fast = true;
				continue;
			}
			if (!since)
				continue;
			/* A callback that was caught once is watched
			 * closely until it returns. */
			if (atomic_load(&l->misuse_n))
				fast = true;
			else if (luffd__now_ns() - since <
				 GUARD_MS * 1000000ull)
				continue;
			if (!stuck_in_own_fault(l))
				continue;
			addr = find_own_fault(l);
			if (addr)
				release(l, addr);
			fast = true;
		}
		pthread_mutex_lock(&ctx->guard_lock);
	}
	pthread_mutex_unlock(&ctx->guard_lock);
	return NULL;
}

void luffd__guard_kick(struct luffd_ctx *ctx)
{
	pthread_mutex_lock(&ctx->guard_lock);
	pthread_cond_signal(&ctx->guard_cv);
	pthread_mutex_unlock(&ctx->guard_lock);
}

int luffd__guard_start(struct luffd_ctx *ctx)
{
	int err;

	if (ctx->guard_started)
		return 0;
	/* Detection needs the faulting thread's id. */
	if (!(ctx->cfg.features & UFFD_FEATURE_THREAD_ID))
		return 0;
	err = luffd__thread_create(&ctx->guard, guard_main, ctx);
	if (err)
		return err;
	ctx->guard_started = true;
	return 0;
}

void luffd__guard_stop(struct luffd_ctx *ctx)
{
	if (!ctx->guard_started)
		return;
	pthread_mutex_lock(&ctx->guard_lock);
	atomic_store(&ctx->guard_stop, true);
	pthread_cond_signal(&ctx->guard_cv);
	pthread_mutex_unlock(&ctx->guard_lock);
	pthread_join(ctx->guard, NULL);
	ctx->guard_started = false;
}
