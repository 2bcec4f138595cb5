/* SPDX-License-Identifier: MIT */
/*
 * Regions as the application sees them: luffd_map() and luffd_register()
 * add a range to one handler's table (or, striped, to all of them),
 * luffd_unmap() and luffd_unregister() take exactly that range away.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "context.h"
#include "guard.h"
#include "loop.h"
#include "map.h"
#include "region.h"
#include "store.h"
#include "writeback.h"

static struct luffd__rtab *tab(struct luffd_ctx *ctx, unsigned int i)
{
	return &ctx->loops[i].rtab;
}

static void reap(struct luffd_ctx *ctx)
{
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++)
		luffd__rtab_reap(tab(ctx, i));
}

static int check_range(struct luffd_ctx *ctx, struct luffd_store *store,
		       uint64_t offset, uint64_t length)
{
	uint64_t mask = ctx->cfg.page_size - 1;

	if (!store || !length || (offset & mask))
		return -EINVAL;
	/* The cache keys pages by a 40-bit index. */
	if (offset + length < offset ||
	    (offset + length - 1) >> ctx->cfg.page_shift >>
		    LUFFD__CACHE_PG_BITS)
		return -EOVERFLOW;
	if (offset >= store->size)
		return -ENXIO;
	return 0;
}

/* Remove every region of group gid (ctx->lock held); unmap: also unmap
 * luffd_map() ranges (false: the caller will). */
static void remove_group(struct luffd_ctx *ctx, uint64_t gid, bool unmap)
{
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__rtab *t = tab(ctx, i);

		pthread_mutex_lock(&t->lock);
		for (size_t j = 0; j < t->n;) {
			if (t->regions[j]->gid != gid) {
				j++;
				continue;
			}
			if (!unmap)
				t->regions[j]->mapped = false;
			/* Unlocks t->lock. */
			luffd__region_remove(t, t->regions[j]);
			pthread_mutex_lock(&t->lock);
			j = 0;
		}
		pthread_mutex_unlock(&t->lock);
	}
}

static bool overlaps(struct luffd_ctx *ctx, uint64_t start, uint64_t len)
{
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++)
		if (luffd__rtab_overlaps(tab(ctx, i), start, len))
			return true;
	return false;
}

/*
 * Add [start, start+len) of store at off: one region on the next handler
 * thread, or, with stripe_bytes and several handler threads, one region
 * per stripe, dealt out round-robin, all with one group id.
 */
static int add_region(struct luffd_ctx *ctx, uint64_t start, uint64_t len,
		      struct luffd_store *store, uint64_t off, bool mapped,
		      bool huge, unsigned int flags)
{
	uint64_t stripe = ctx->cfg.stripe_bytes, gid = 0, done = 0;
	unsigned int first, n = ctx->cfg.nloops;
	int err = 0;

	if (start + len < start)
		return -EOVERFLOW;
	if (n < 2 || !stripe || len <= stripe)
		stripe = len;
	pthread_mutex_lock(&ctx->lock);
	reap(ctx);
	if (overlaps(ctx, start, len)) {
		err = -EEXIST;
		goto out;
	}
	if (store->caps & LUFFD__CAP_APP_CODE) {
		err = luffd__guard_start(ctx);
		if (err)
			goto out;
	}
	if (flags & LUFFD_REGISTER_WRITEBACK) {
		err = luffd__store_unshare(store);
		if (err)
			goto out;
	}
	if (stripe < len)
		gid = ++ctx->next_gid;
	first = atomic_fetch_add(&ctx->next_loop, 1);
	for (unsigned int k = 0; done < len; k++) {
		uint64_t sz = len - done < stripe ? len - done : stripe;

		err = luffd__region_add(tab(ctx, (first + k) % n), start + done,
					sz, store, off + done, mapped, huge,
					gid, flags);
		if (err)
			break;
		done += sz;
	}
	if (err && done) {
		/* Take back the stripes already added (gid is this call's
		 * alone).  Nobody can have faulted in a luffd_map() range
		 * yet; a luffd_register() one is woken and sees its own
		 * memory again.  The caller unmaps. */
		remove_group(ctx, gid, false);
	}
out:
	pthread_mutex_unlock(&ctx->lock);
	return err;
}

/* Does group gid cover exactly [start, start+len), every stripe of it
 * created the way `mapped` says?  (ctx->lock held.) */
static bool group_is(struct luffd_ctx *ctx, uint64_t gid, uint64_t start,
		     uint64_t len, bool mapped)
{
	uint64_t lo = UINT64_MAX, hi = 0, total = 0;
	bool ok = true;

	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__rtab *t = tab(ctx, i);

		pthread_mutex_lock(&t->lock);
		for (size_t j = 0; j < t->n; j++) {
			struct luffd__region *r = t->regions[j];

			if (r->gid != gid)
				continue;
			lo = r->start < lo ? r->start : lo;
			hi = r->start + r->len > hi ? r->start + r->len : hi;
			total += r->len;
			ok = ok && r->mapped == mapped;
		}
		pthread_mutex_unlock(&t->lock);
	}
	return ok && lo == start && hi == start + len && total == len;
}

static int remove_exact(struct luffd_ctx *ctx, void *addr, size_t length,
			bool mapped)
{
	uint64_t start = (uint64_t)(uintptr_t)addr;
	int err = -ENOENT;

	if (!ctx || !addr)
		return -EINVAL;
	if (luffd__on_library_thread(ctx))
		return -EDEADLK;
	/* Write-back regions in the range go back to the store first; on
	 * an error nothing is removed (the pages not written stay dirty).
	 * A write-back racing with this one is serialised by wb_lock; a
	 * page written after this returns is the caller's race. */
	if (length && start + length > start) {
		err = luffd__writeback(ctx, start, start + length, false,
				       false);
		if (err)
			return err;
		err = -ENOENT;
	}
	pthread_mutex_lock(&ctx->lock);
	reap(ctx);
	for (unsigned int i = 0; i < ctx->cfg.nloops && err == -ENOENT; i++) {
		struct luffd__rtab *t = tab(ctx, i);
		struct luffd__region *r;
		uint64_t gid;

		pthread_mutex_lock(&t->lock);
		r = luffd__rtab_at(t, start);
		if (!r) {
			pthread_mutex_unlock(&t->lock);
			continue;
		}
		if (r->gid) {
			/* A stripe: the range is the whole group's. */
			gid = r->gid;
			pthread_mutex_unlock(&t->lock);
			if (!group_is(ctx, gid, start, length, mapped)) {
				err = -EINVAL;
				break;
			}
			remove_group(ctx, gid, true);
			err = 0;
			break;
		}
		if (r->len != length || r->mapped != mapped) {
			pthread_mutex_unlock(&t->lock);
			err = -EINVAL;
			break;
		}
		luffd__region_remove(t, r); /* unlocks t->lock */
		err = 0;
	}
	pthread_mutex_unlock(&ctx->lock);
	return err;
}

void luffd__map_remove_all(struct luffd_ctx *ctx)
{
	pthread_mutex_lock(&ctx->lock);
	for (unsigned int i = 0; i < ctx->cfg.nloops; i++) {
		struct luffd__rtab *t = tab(ctx, i);

		pthread_mutex_lock(&t->lock);
		while (t->n) {
			luffd__region_remove(t, t->regions[t->n - 1]);
			pthread_mutex_lock(&t->lock);
		}
		pthread_mutex_unlock(&t->lock);
	}
	pthread_mutex_unlock(&ctx->lock);
}

/* Private anonymous memory: the kernel hands every missing page to the
 * handler, writes stay private as with mmap(MAP_PRIVATE).  NULL and errno
 * on failure. */
static void *map_range(size_t length, int prot, bool huge)
{
	const size_t hp = LUFFD__HP_SIZE;
	uintptr_t p, a;
	void *m;

	if (!huge) {
		m = mmap(NULL, length, prot, MAP_PRIVATE | MAP_ANONYMOUS |
			 MAP_NORESERVE, -1, 0);
		return m == MAP_FAILED ? NULL : m;
	}
	if (length > SIZE_MAX - hp) {
		errno = ENOMEM;
		return NULL;
	}
	m = mmap(NULL, length + hp, prot, MAP_PRIVATE | MAP_ANONYMOUS |
		 MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	p = (uintptr_t)m;
	a = (p + hp - 1) & ~(uintptr_t)(hp - 1);
	if (a > p)
		munmap(m, a - p);
	if (p + hp > a)
		munmap((void *)(a + length), p + hp - a);
	madvise((void *)a, length, MADV_HUGEPAGE);
	return (void *)a;
}

/* A length as mmap() takes it: any, rounded up to whole pages. */
static size_t round_len(const struct luffd_ctx *ctx, size_t length)
{
	size_t mask = ctx->cfg.page_size - 1;

	return length > SIZE_MAX - mask ? 0 : (length + mask) & ~mask;
}

int luffd_map(struct luffd_ctx *ctx, struct luffd_store *store,
	      uint64_t offset, size_t length, int prot, unsigned int flags,
	      void **addrp)
{
	void *addr;
	bool huge;
	int err;

	if (addrp)
		*addrp = NULL;
	if (!ctx || !addrp ||
	    (flags & ~(unsigned int)(LUFFD_MAP_PUSH | LUFFD_MAP_WP |
				     LUFFD_MAP_WRITEBACK)))
		return -EINVAL;
	if (!(prot & PROT_READ) ||
	    (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)))
		return -EINVAL;
	length = round_len(ctx, length);
	err = check_range(ctx, store, offset, length);
	if (err)
		return err;
	if (flags & LUFFD_MAP_WRITEBACK) {
		if (!(store->caps & LUFFD__CAP_WRITE))
			return -EACCES;
		flags |= LUFFD_MAP_WP; /* dirty pages are the written ones */
	}
	/* Under the resident limit: pages that can be dropped without
	 * losing a write (see evict.c). */
	if (ctx->cfg.resident_pages &&
	    ((flags & LUFFD_MAP_WRITEBACK) || !(prot & PROT_WRITE)))
		flags |= LUFFD__REGION_EVICT |
			 (prot & PROT_WRITE ? 0 : LUFFD__REGION_RO);
	/* Chunks (see enum luffd_install) move 2 MiB at a time, which needs
	 * a writable mapping like the staging buffers, 2 MiB-aligned, where
	 * a fault leaves the page-middle directory empty (MADV_HUGEPAGE).
	 * Not in a write-tracked region: a move cannot install pages
	 * write-protected (see install.h). */
	huge = ctx->cfg.hp_chunks && (store->caps & LUFFD__CAP_CHUNKS) &&
	       prot == (PROT_READ | PROT_WRITE) && !(flags & LUFFD_MAP_WP);
	addr = map_range(length, prot, huge);
	if (!addr)
		return -errno;
	/* A child process would inherit the range unregistered and see
	 * zeroes where the store has data; without it, a child that touches
	 * the range gets SIGSEGV instead of wrong data. */
	madvise(addr, length, MADV_DONTFORK);
	err = add_region(ctx, (uint64_t)(uintptr_t)addr, length, store, offset,
			 true, huge,
			 flags & (LUFFD_MAP_PUSH | LUFFD_MAP_WP |
				  LUFFD_MAP_WRITEBACK | LUFFD__REGION_EVICT |
				  LUFFD__REGION_RO));
	if (err) {
		munmap(addr, length);
		return err;
	}
	*addrp = addr;
	return 0;
}

int luffd_unmap(struct luffd_ctx *ctx, void *addr, size_t length)
{
	if (!ctx)
		return -EINVAL;
	return remove_exact(ctx, addr, round_len(ctx, length), true);
}

int luffd_register(struct luffd_ctx *ctx, void *addr, size_t length,
		   struct luffd_store *store, uint64_t offset,
		   unsigned int flags)
{
	int err;

	if (!ctx || !addr ||
	    (flags & ~(LUFFD_REGISTER_SEAL_UNSERVED | LUFFD_REGISTER_PUSH |
		       LUFFD_REGISTER_WP | LUFFD_REGISTER_WRITEBACK)))
		return -EINVAL;
	if (((uintptr_t)addr | length) & (ctx->cfg.page_size - 1))
		return -EINVAL;
	err = check_range(ctx, store, offset, length);
	if (err)
		return err;
	if (flags & LUFFD_REGISTER_WRITEBACK) {
		if (!(store->caps & LUFFD__CAP_WRITE))
			return -EACCES;
		flags |= LUFFD_REGISTER_WP;
	}
	return add_region(ctx, (uint64_t)(uintptr_t)addr, length, store,
			  offset, false, false, flags);
}

int luffd_unregister(struct luffd_ctx *ctx, void *addr, size_t length)
{
	return remove_exact(ctx, addr, length, false);
}
