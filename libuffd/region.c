/* SPDX-License-Identifier: MIT */
/*
 * Regions: address ranges registered with a context, each served by one
 * handler thread from a store at an offset.
 *
 * Lifetime: a region is created by an application thread, looked up by its
 * handler thread for every fault, and removed by an application thread.
 * Removal marks it dead (the handler serves nothing more in it), waits until
 * no fault holds it (reads in flight finish and their data is dropped), and
 * only then unregisters the range, which wakes every thread still blocked
 * on a fault there.  So no install can land in memory that has been
 * unregistered, unmapped or reused.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "internal.h"

/* Index of the first region whose start is > addr. */
static size_t upper(struct luffd__loop *l, uint64_t addr)
{
	size_t lo = 0, hi = l->nregions;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (l->regions[mid]->start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct luffd__region *find(struct luffd__loop *l, uint64_t addr)
{
	size_t i = upper(l, addr);
	struct luffd__region *r;

	if (i == 0)
		return NULL;
	r = l->regions[i - 1];
	return addr - r->start < r->len ? r : NULL;
}

static bool in_list(struct luffd__region *r, uint64_t addr)
{
	for (; r; r = r->next)
		if (addr - r->start < r->len)
			return true;
	return false;
}

struct luffd__region *luffd__region_hold(struct luffd__loop *l, uint64_t addr,
					 enum luffd__lookup *how)
{
	struct luffd__region *r;

	/* Uncontended except while a region of this handler is being added
	 * or removed. */
	pthread_mutex_lock(&l->lock);
	r = find(l, addr);
	if (r) {
		atomic_fetch_add(&r->inflight, 1);
		*how = LUFFD__FOUND;
	} else {
		*how = in_list(l->dying, addr) ? LUFFD__DYING : LUFFD__UNKNOWN;
	}
	pthread_mutex_unlock(&l->lock);
	return r;
}


void luffd__region_put(struct luffd__region *r)
{
	struct luffd__loop *l = r->loop;

	/* r may be freed the moment its count reaches 0: after that only
	 * the loop is looked at.  A remover announces itself in
	 * l->removing before it reads the count, so if it saw a hold, this
	 * sees it (sequentially consistent atomics) and wakes it. */
	if (atomic_fetch_sub(&r->inflight, 1) == 1 &&
	    atomic_load(&l->removing)) {
		pthread_mutex_lock(&l->lock);
		pthread_cond_broadcast(&l->cv);
		pthread_mutex_unlock(&l->lock);
	}
}

static bool overlaps(struct luffd_ctx *ctx, uint64_t start, uint64_t len)
{
	bool hit = false;

	for (unsigned int i = 0; i < ctx->nloops && !hit; i++) {
		struct luffd__loop *l = &ctx->loops[i];
		size_t j;

		/* The handler may split regions (UNMAP, REMAP events). */
		pthread_mutex_lock(&l->lock);
		j = upper(l, start + len - 1);
		if (j > 0) {
			struct luffd__region *r = l->regions[j - 1];

			hit = r->start + r->len > start;
		}
		pthread_mutex_unlock(&l->lock);
	}
	return hit;
}

static int table_insert(struct luffd__loop *l, struct luffd__region *r)
{
	size_t i;

	if (l->nregions == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		void *p = realloc(l->regions, cap * sizeof(*l->regions));

		if (!p)
			return -ENOMEM;
		l->regions = p;
		l->cap = cap;
	}
	i = upper(l, r->start);
	memmove(&l->regions[i + 1], &l->regions[i],
		(l->nregions - i) * sizeof(*l->regions));
	l->regions[i] = r;
	l->nregions++;
	return 0;
}

static void table_remove(struct luffd__loop *l, struct luffd__region *r)
{
	size_t i = upper(l, r->start) - 1;

	memmove(&l->regions[i], &l->regions[i + 1],
		(l->nregions - i - 1) * sizeof(*l->regions));
	l->nregions--;
}

static int check_range(struct luffd_ctx *ctx, struct luffd_store *store,
		       uint64_t offset, uint64_t length)
{
	uint64_t mask = ctx->page_size - 1;

	if (!store || !length || (length & mask) || (offset & mask))
		return -EINVAL;
	/* The cache keys pages by a 40-bit index. */
	if (offset + length < offset ||
	    (offset + length - 1) >> ctx->page_shift >>
		    LUFFD__CACHE_PG_BITS)
		return -EOVERFLOW;
	if (offset >= store->size)
		return -ENXIO;
	return 0;
}

/* A new region of loop l, with a fresh stream state (not in the table). */
static struct luffd__region *region_new(struct luffd__loop *l, uint64_t start,
					uint64_t len, struct luffd_store *store,
					uint64_t off, bool mapped, bool huge,
					uint64_t gid)
{
	struct luffd__region *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->start = start;
	r->len = len;
	r->off = off;
	r->mapped = mapped;
	atomic_init(&r->dead, false);
	atomic_init(&r->inflight, 0);
	r->ra_mark = UINT64_MAX;
	r->huge = huge;
	r->hp_last = UINT64_MAX;
	r->gid = gid;
	r->loop = l;
	r->store = luffd__store_get(store);
	return r;
}

/*
 * Add one region [start, start+len) served by loop l (ctx->lock held):
 * in l's table first, then registered with l's userfaultfd.
 */
static int add_one(struct luffd__loop *l, uint64_t start, uint64_t len,
		   struct luffd_store *store, uint64_t off, bool mapped,
		   bool huge, uint64_t gid)
{
	struct uffdio_register reg;
	struct luffd__region *r = region_new(l, start, len, store, off, mapped,
					     huge, gid);
	int err;

	if (!r)
		return -ENOMEM;

	/* In the table before the kernel can deliver a fault for it. */
	pthread_mutex_lock(&l->lock);
	r->born = luffd__now_ns();
	err = table_insert(l, r);
	pthread_mutex_unlock(&l->lock);
	if (err)
		goto fail_store;

	memset(&reg, 0, sizeof(reg));
	reg.range.start = start;
	reg.range.len = len;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(l->uffd, UFFDIO_REGISTER, &reg) < 0) {
		err = -errno;
		goto fail_table;
	}
	if (!(reg.ioctls & (1ull << _UFFDIO_COPY))) {
		struct uffdio_range rg = { .start = start, .len = len };

		ioctl(l->uffd, UFFDIO_UNREGISTER, &rg);
		err = -EOPNOTSUPP;
		goto fail_table;
	}
	return 0;

fail_table:
	pthread_mutex_lock(&l->lock);
	table_remove(l, r);
	pthread_mutex_unlock(&l->lock);
fail_store:
	luffd_store_put(r->store);
	free(r);
	return err;
}

static void remove_region(struct luffd__region *r);

static void remove_group(struct luffd_ctx *ctx, uint64_t gid, bool unmap);

/*
 * Add [start, start+len) of store at off: one region on the next handler
 * thread, or, with stripe_bytes and several handler threads, one region
 * per stripe, dealt out round-robin, all with one group id.
 */
static int add_region(struct luffd_ctx *ctx, uint64_t start, uint64_t len,
		      struct luffd_store *store, uint64_t off, bool mapped,
		      bool huge)
{
	uint64_t stripe = ctx->stripe_bytes, gid = 0, done = 0;
	unsigned int first;
	int err = 0;

	if (start + len < start)
		return -EOVERFLOW;
	if (ctx->nloops < 2 || !stripe || len <= stripe)
		stripe = len;
	pthread_mutex_lock(&ctx->lock);
	luffd__region_reap(ctx);
	if (overlaps(ctx, start, len)) {
		err = -EEXIST;
		goto out;
	}
	if (store->caps & LUFFD__CAP_APP_CODE) {
		err = luffd__guard_start(ctx);
		if (err)
			goto out;
	}
	if (stripe < len)
		gid = ++ctx->next_gid;
	first = atomic_fetch_add(&ctx->next_loop, 1);
	for (unsigned int k = 0; done < len; k++) {
		uint64_t n = len - done < stripe ? len - done : stripe;
		struct luffd__loop *l = &ctx->loops[(first + k) % ctx->nloops];

		err = add_one(l, start + done, n, store, off + done, mapped,
			      huge, gid);
		if (err)
			break;
		done += n;
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

static void unlink_from(struct luffd__region **head, struct luffd__region *r)
{
	while (*head != r)
		head = &(*head)->next;
	*head = r->next;
	r->next = NULL;
}

/*
 * Called with ctx->lock and l->lock held, r in l's table.  Returns with
 * l->lock released and r freed.
 */
static void remove_region(struct luffd__region *r)
{
	struct luffd__loop *l = r->loop;
	struct uffdio_range rg = { .start = r->start, .len = r->len };
	bool mapped;

	table_remove(l, r);
	atomic_store(&r->dead, true);
	r->next = l->dying;
	l->dying = r;
	/* Faults parked on the pending or retry lists hold the region: let
	 * the handler drop them now rather than when a slot frees up. */
	luffd__loop_kick(l);
	atomic_fetch_add(&l->removing, 1);
	while (atomic_load(&r->inflight))
		pthread_cond_wait(&l->cv, &l->lock);
	atomic_fetch_sub(&l->removing, 1);
	/* Cleared if the application unmapped the range itself meanwhile:
	 * the address may already belong to someone else. */
	mapped = r->mapped;
	pthread_mutex_unlock(&l->lock);
	/* A thread woken while a luffd_map() range is still mapped but
	 * unregistered would be handed a zero page instead of SIGSEGV: make
	 * it inaccessible first.  Unregistering before the munmap keeps our
	 * own unmap from raising an UNMAP event. */
	if (mapped)
		mprotect((void *)(uintptr_t)r->start, r->len, PROT_NONE);
	/*
	 * UNREGISTER wakes the threads blocked on a fault in the range, but
	 * it does so before it takes each VMA away, and a fault running
	 * under the per-VMA lock can queue itself in between and sleep with
	 * nobody left to wake it (seen on 6.18).  By the time UNREGISTER
	 * returns such a fault is queued: wake the range once more.
	 */
	ioctl(l->uffd, UFFDIO_UNREGISTER, &rg);
	ioctl(l->uffd, UFFDIO_WAKE, &rg);
	if (mapped)
		munmap((void *)(uintptr_t)r->start, r->len);

	pthread_mutex_lock(&l->lock);
	unlink_from(&l->dying, r);
	pthread_mutex_unlock(&l->lock);
	luffd_store_put(r->store);
	free(r);
}

/* Remove every region of group gid (ctx->lock held); unmap: also unmap
 * luffd_map() ranges (false: the caller will). */
static void remove_group(struct luffd_ctx *ctx, uint64_t gid, bool unmap)
{
	for (unsigned int i = 0; i < ctx->nloops; i++) {
		struct luffd__loop *l = &ctx->loops[i];

		pthread_mutex_lock(&l->lock);
		for (size_t j = 0; j < l->nregions;) {
			if (l->regions[j]->gid != gid) {
				j++;
				continue;
			}
			if (!unmap)
				l->regions[j]->mapped = false;
			remove_region(l->regions[j]); /* unlocks l->lock */
			pthread_mutex_lock(&l->lock);
			j = 0;
		}
		pthread_mutex_unlock(&l->lock);
	}
}

/* Does group gid cover exactly [start, start+len), every stripe of it
 * created the way `mapped` says?  (ctx->lock held.) */
static bool group_is(struct luffd_ctx *ctx, uint64_t gid, uint64_t start,
		     uint64_t len, bool mapped)
{
	uint64_t lo = UINT64_MAX, hi = 0, total = 0;
	bool ok = true;

	for (unsigned int i = 0; i < ctx->nloops; i++) {
		struct luffd__loop *l = &ctx->loops[i];

		pthread_mutex_lock(&l->lock);
		for (size_t j = 0; j < l->nregions; j++) {
			struct luffd__region *r = l->regions[j];

			if (r->gid != gid)
				continue;
			lo = r->start < lo ? r->start : lo;
			hi = r->start + r->len > hi ? r->start + r->len : hi;
			total += r->len;
			ok = ok && r->mapped == mapped;
		}
		pthread_mutex_unlock(&l->lock);
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
	if (luffd__on_handler_thread(ctx))
		return -EDEADLK;
	pthread_mutex_lock(&ctx->lock);
	luffd__region_reap(ctx);
	for (unsigned int i = 0; i < ctx->nloops && err == -ENOENT; i++) {
		struct luffd__loop *l = &ctx->loops[i];
		struct luffd__region *r = NULL;
		uint64_t gid;
		size_t j;

		pthread_mutex_lock(&l->lock);
		j = upper(l, start);
		if (j > 0 && l->regions[j - 1]->start == start)
			r = l->regions[j - 1];
		if (!r) {
			pthread_mutex_unlock(&l->lock);
			continue;
		}
		if (r->gid) {
			/* A stripe: the range is the whole group's. */
			gid = r->gid;
			pthread_mutex_unlock(&l->lock);
			if (!group_is(ctx, gid, start, length, mapped)) {
				err = -EINVAL;
				break;
			}
			remove_group(ctx, gid, true);
			err = 0;
			break;
		}
		if (r->len != length || r->mapped != mapped) {
			pthread_mutex_unlock(&l->lock);
			err = -EINVAL;
			break;
		}
		remove_region(r); /* unlocks l->lock */
		err = 0;
	}
	pthread_mutex_unlock(&ctx->lock);
	return err;
}

void luffd__region_reap(struct luffd_ctx *ctx)
{
	for (unsigned int i = 0; i < ctx->nloops; i++) {
		struct luffd__loop *l = &ctx->loops[i];
		struct luffd__region **pp, *r;

		pthread_mutex_lock(&l->lock);
		for (pp = &l->zombies; (r = *pp);) {
			if (atomic_load(&r->inflight)) {
				pp = &r->next;
				continue;
			}
			*pp = r->next;
			luffd_store_put(r->store);
			free(r);
		}
		pthread_mutex_unlock(&l->lock);
	}
}

void luffd__region_remove_all(struct luffd_ctx *ctx)
{
	pthread_mutex_lock(&ctx->lock);
	for (unsigned int i = 0; i < ctx->nloops; i++) {
		struct luffd__loop *l = &ctx->loops[i];

		pthread_mutex_lock(&l->lock);
		while (l->nregions) {
			remove_region(l->regions[l->nregions - 1]);
			pthread_mutex_lock(&l->lock);
		}
		pthread_mutex_unlock(&l->lock);
	}
	pthread_mutex_unlock(&ctx->lock);
}

/* ------------------------------------------------------------------------
 * Events: the application changed the address space under the regions
 * ---------------------------------------------------------------------- */

static struct luffd__region *piece(struct luffd__region *r, uint64_t start,
				   uint64_t len, uint64_t new_start)
{
	struct luffd__region *p = region_new(r->loop, new_start, len, r->store,
					     r->off + (start - r->start),
					     r->mapped, r->huge, r->gid);

	/* born: the replaced region's, so events read since still apply. */
	if (p)
		p->born = r->born;
	return p;
}

static void insert_piece(struct luffd__loop *l, struct luffd__region *p)
{
	if (p && table_insert(l, p)) {
		luffd_store_put(p->store);
		free(p);
	}
}

/*
 * Replace the regions overlapping [start, end) by what is left of them
 * outside it, and, when `to` is not 0, add the part inside it moved to
 * `to` (REMAP).  Handler thread, l->lock held.  The replaced region becomes
 * a zombie: faults holding it finish (an install into the unmapped part
 * fails and wakes the thread).  If a piece cannot be allocated, the range
 * it covers is left without a region and its faults get SIGBUS: the
 * address space change itself cannot be refused.
 */
static void reshape(struct luffd__loop *l, uint64_t start, uint64_t end,
		    uint64_t to, uint64_t t_read)
{
	struct luffd__region *dead;

	for (dead = l->dying; dead; dead = dead->next)
		if (dead->start < end && start < dead->start + dead->len &&
		    dead->born <= t_read)
			dead->mapped = false;
	for (;;) {
		size_t j = upper(l, end - 1);
		struct luffd__region *r;
		uint64_t a, b, rend;

		if (j == 0)
			break;
		r = l->regions[j - 1];
		rend = r->start + r->len;
		if (rend <= start)
			break;
		/*
		 * The kernel lets munmap() return once its event is read, so
		 * a new region can take the address before the handler acts
		 * on the event: it is not the one the event is about (t_read
		 * is taken before the read, so one born after it is new).
		 * Not covered: a region another thread registers in the
		 * moment between the kernel removing the old mapping and the
		 * handler's read.  Regions sit in address order and never
		 * overlap, so the ones before it are looked at by shrinking
		 * the range.
		 */
		if (r->born > t_read) {
			if (r->start <= start)
				break;
			end = r->start;
			continue;
		}
		a = r->start > start ? r->start : start;
		b = rend < end ? rend : end;
		table_remove(l, r);
		if (r->start < a)
			insert_piece(l, piece(r, r->start, a - r->start,
					      r->start));
		if (b < rend)
			insert_piece(l, piece(r, b, rend - b, b));
		if (to)
			insert_piece(l, piece(r, a, b - a, to + (a - start)));
		r->next = l->zombies;
		l->zombies = r;
	}
}

void luffd__region_unmapped(struct luffd__loop *l, uint64_t start,
			    uint64_t end, uint64_t t_read)
{
	pthread_mutex_lock(&l->lock);
	reshape(l, start, end, 0, t_read);
	pthread_mutex_unlock(&l->lock);
}

void luffd__region_moved(struct luffd__loop *l, uint64_t from, uint64_t to,
			 uint64_t len, uint64_t t_read)
{
	pthread_mutex_lock(&l->lock);
	reshape(l, from, from + len, to, t_read);
	pthread_mutex_unlock(&l->lock);
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

int luffd_map(struct luffd_ctx *ctx, struct luffd_store *store,
	      uint64_t offset, size_t length, int prot, unsigned int flags,
	      void **addrp)
{
	void *addr;
	bool huge;
	int err;

	if (!ctx || !addrp || flags)
		return -EINVAL;
	if (!(prot & PROT_READ) ||
	    (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)))
		return -EINVAL;
	err = check_range(ctx, store, offset, length);
	if (err)
		return err;
	/* Chunks (see enum luffd_install) move 2 MiB at a time, which needs
	 * a writable mapping like the staging buffers, 2 MiB-aligned, where
	 * a fault leaves the page-middle directory empty (MADV_HUGEPAGE). */
	huge = ctx->hp_chunks && (store->caps & LUFFD__CAP_SHORT_EOF) &&
	       prot == (PROT_READ | PROT_WRITE);
	addr = map_range(length, prot, huge);
	if (!addr)
		return -errno;
	/* A child process would inherit the range unregistered and see
	 * zeroes where the store has data; without it, a child that touches
	 * the range gets SIGSEGV instead of wrong data. */
	madvise(addr, length, MADV_DONTFORK);
	err = add_region(ctx, (uint64_t)(uintptr_t)addr, length, store, offset,
			 true, huge);
	if (err) {
		munmap(addr, length);
		return err;
	}
	*addrp = addr;
	return 0;
}

int luffd_unmap(struct luffd_ctx *ctx, void *addr, size_t length)
{
	return remove_exact(ctx, addr, length, true);
}

int luffd_register(struct luffd_ctx *ctx, void *addr, size_t length,
		   struct luffd_store *store, uint64_t offset,
		   unsigned int flags)
{
	int err;

	if (!ctx || !addr || flags)
		return -EINVAL;
	if ((uintptr_t)addr & (ctx->page_size - 1))
		return -EINVAL;
	err = check_range(ctx, store, offset, length);
	if (err)
		return err;
	return add_region(ctx, (uint64_t)(uintptr_t)addr, length, store,
			  offset, false, false);
}

int luffd_unregister(struct luffd_ctx *ctx, void *addr, size_t length)
{
	return remove_exact(ctx, addr, length, false);
}
