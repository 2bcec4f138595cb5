/* SPDX-License-Identifier: MIT */
/*
 * Regions: address ranges registered with a context, each served by one
 * handler thread from a store at an offset.
 *
 * Lifetime: a region is created by an application thread, looked up by its
 * handler thread for every fault, and removed by an application thread.
 * Removal marks it dead (the handler serves nothing more in it and lets go
 * of the reads it holds), waits until nothing holds it, and only then
 * unregisters the range, which wakes every thread still blocked on a fault
 * there.  So no install can land in memory that has been unregistered,
 * unmapped or reused.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "compat.h"
#include "region.h"
#include "req.h"
#include "store.h"

void luffd__rtab_init(struct luffd__rtab *t, int uffd, struct luffd__cq *cq,
		      unsigned int page_shift)
{
	t->page_shift = page_shift;
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cv, NULL);
	atomic_init(&t->removing, 0);
	atomic_init(&t->died, false);
	t->uffd = uffd;
	t->cq = cq;
}

static void region_free(struct luffd__region *r)
{
	atomic_fetch_sub(r->store->nregions, 1);
	luffd_store_put(r->store);
	free((void *)r->pst);
	free(r);
}

void luffd__rtab_fini(struct luffd__rtab *t)
{
	/* Zombies still held by faults that were in flight at destroy (their
	 * threads were woken by closing the userfaultfd). */
	while (t->zombies) {
		struct luffd__region *z = t->zombies;

		t->zombies = z->next;
		region_free(z);
	}
	free(t->regions);
	t->regions = NULL;
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cv);
}

/* Index of the first region whose start is > addr. */
static size_t upper(struct luffd__rtab *t, uint64_t addr)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (t->regions[mid]->start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct luffd__region *find(struct luffd__rtab *t, uint64_t addr)
{
	size_t i = upper(t, addr);
	struct luffd__region *r;

	if (i == 0)
		return NULL;
	r = t->regions[i - 1];
	return addr - r->start < r->len ? r : NULL;
}

static bool in_list(struct luffd__region *r, uint64_t addr)
{
	for (; r; r = r->next)
		if (addr - r->start < r->len)
			return true;
	return false;
}

struct luffd__region *luffd__region_hold(struct luffd__rtab *t, uint64_t addr,
					 enum luffd__lookup *how)
{
	struct luffd__region *r;

	/* Uncontended except while a region of this handler is being added
	 * or removed. */
	pthread_mutex_lock(&t->lock);
	r = find(t, addr);
	if (r) {
		atomic_fetch_add(&r->inflight, 1);
		*how = LUFFD__FOUND;
	} else {
		*how = in_list(t->dying, addr) ? LUFFD__DYING : LUFFD__UNKNOWN;
	}
	pthread_mutex_unlock(&t->lock);
	return r;
}

void luffd__region_put(struct luffd__region *r)
{
	struct luffd__rtab *t = r->tab;

	/* r may be freed the moment its count reaches 0: after that only
	 * the table is looked at.  A remover announces itself in
	 * t->removing before it reads the count, so if it saw a hold, this
	 * sees it (sequentially consistent atomics) and wakes it. */
	if (atomic_fetch_sub(&r->inflight, 1) == 1 &&
	    atomic_load(&t->removing)) {
		pthread_mutex_lock(&t->lock);
		pthread_cond_broadcast(&t->cv);
		pthread_mutex_unlock(&t->lock);
	}
}

bool luffd__rtab_overlaps(struct luffd__rtab *t, uint64_t start, uint64_t len)
{
	bool hit = false;
	size_t j;

	/* The handler may split regions (UNMAP, REMAP events). */
	pthread_mutex_lock(&t->lock);
	j = upper(t, start + len - 1);
	if (j > 0) {
		struct luffd__region *r = t->regions[j - 1];

		hit = r->start + r->len > start;
	}
	pthread_mutex_unlock(&t->lock);
	return hit;
}

static int table_insert(struct luffd__rtab *t, struct luffd__region *r)
{
	size_t i;

	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 16;
		void *p = realloc(t->regions, cap * sizeof(*t->regions));

		if (!p)
			return -ENOMEM;
		t->regions = p;
		t->cap = cap;
	}
	i = upper(t, r->start);
	memmove(&t->regions[i + 1], &t->regions[i],
		(t->n - i) * sizeof(*t->regions));
	t->regions[i] = r;
	t->n++;
	return 0;
}

static void table_remove(struct luffd__rtab *t, struct luffd__region *r)
{
	size_t i = upper(t, r->start) - 1;

	memmove(&t->regions[i], &t->regions[i + 1],
		(t->n - i - 1) * sizeof(*t->regions));
	t->n--;
}

struct luffd__region *luffd__rtab_at(struct luffd__rtab *t, uint64_t start)
{
	size_t j = upper(t, start);

	return j > 0 && t->regions[j - 1]->start == start ? t->regions[j - 1]
							   : NULL;
}

/* A new region of t, with a fresh stream state (not in the table). */
static struct luffd__region *region_new(struct luffd__rtab *t, uint64_t start,
					uint64_t len, struct luffd_store *store,
					uint64_t off, bool mapped, bool huge,
					uint64_t gid, unsigned int flags)
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
	atomic_init(&r->push_state, LUFFD__PUSH_IDLE);
	r->ra_mark = UINT64_MAX;
	r->huge = huge;
	r->hp_last = UINT64_MAX;
	r->gid = gid;
	r->flags = flags;
	r->tab = t;
	if (flags & LUFFD__REGION_EVICT) {
		r->pst = calloc(len >> t->page_shift, 1);
		if (!r->pst) {
			free(r);
			return NULL;
		}
	}
	r->store = luffd__store_get(store);
	atomic_fetch_add(store->nregions, 1);
	return r;
}

/*
 * UFFDIO_REGISTER [start, start+len) for missing pages, and with
 * LUFFD_REGISTER_WP for write-protect faults too.  A kernel (or a memory
 * type: shmem on a kernel without uffd-wp pte markers) that refuses WP
 * mode says -EINVAL, as for a bad range: the range is tried without it to
 * tell the two apart, and given back.
 */
static int uffd_register(int uffd, uint64_t start, uint64_t len,
			 unsigned int flags, struct uffdio_register *reg)
{
	bool wp = flags & LUFFD_REGISTER_WP;
	int err;

	memset(reg, 0, sizeof(*reg));
	reg->range.start = start;
	reg->range.len = len;
	reg->mode = UFFDIO_REGISTER_MODE_MISSING |
		    (wp ? UFFDIO_REGISTER_MODE_WP : 0);
	if (ioctl(uffd, UFFDIO_REGISTER, reg) == 0)
		return 0;
	err = -errno;
	if (!wp || err != -EINVAL)
		return err;
	reg->mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(uffd, UFFDIO_REGISTER, reg) < 0)
		return -errno;
	ioctl(uffd, UFFDIO_UNREGISTER, &reg->range);
	return -EOPNOTSUPP;
}

int luffd__region_add(struct luffd__rtab *t, uint64_t start, uint64_t len,
		      struct luffd_store *store, uint64_t off, bool mapped,
		      bool huge, uint64_t gid, unsigned int flags)
{
	struct uffdio_register reg;
	struct luffd__region *r = region_new(t, start, len, store, off, mapped,
					     huge, gid, flags);
	int err;

	if (!r)
		return -ENOMEM;

	/* In the table before the kernel can deliver a fault for it. */
	pthread_mutex_lock(&t->lock);
	r->born = luffd__now_ns();
	err = table_insert(t, r);
	pthread_mutex_unlock(&t->lock);
	if (err)
		goto fail_store;

	err = uffd_register(t->uffd, start, len, flags, &reg);
	if (err)
		goto fail_table;
	if (!(reg.ioctls & (1ull << _UFFDIO_COPY)) ||
	    ((flags & LUFFD_REGISTER_WP) &&
	     !(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT)))) {
		struct uffdio_range rg = { .start = start, .len = len };

		ioctl(t->uffd, UFFDIO_UNREGISTER, &rg);
		err = -EOPNOTSUPP;
		goto fail_table;
	}
	return 0;

fail_table:
	pthread_mutex_lock(&t->lock);
	table_remove(t, r);
	pthread_mutex_unlock(&t->lock);
fail_store:
	region_free(r);
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
 * LUFFD_REGISTER_SEAL_UNSERVED: PROT_NONE over the pages of [start,
 * start+len) that were never served.  Served means present or in swap
 * (pagemap) or, for shmem, in its page cache (mincore): what a touch after
 * the unregister would find.  Runs on the removing application thread,
 * once per region, after the handler has let go of it.
 */
static void seal_unserved(uint64_t start, uint64_t len)
{
	size_t ps = (size_t)getpagesize(), batch = 4096;
	uint64_t *pm = malloc(batch * sizeof(*pm));
	unsigned char *vec = malloc(batch);
	uint64_t run = 0, run_len = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	bool whole = !pm || !vec;

	for (uint64_t at = start; !whole && at < start + len;) {
		size_t n = (size_t)((start + len - at) / ps);

		n = n < batch ? n : batch;
		if (mincore((void *)(uintptr_t)at, n * ps, vec) ||
		    (fd >= 0 && pread(fd, pm, n * sizeof(*pm),
				      (off_t)(at / ps * sizeof(*pm))) !=
				(ssize_t)(n * sizeof(*pm)))) {
			whole = true;
			break;
		}
		for (size_t i = 0; i < n; i++, at += ps) {
			bool served = (vec[i] & 1) ||
				      (fd >= 0 && (pm[i] >> 62) != 0);

			if (!served) {
				if (!run_len)
					run = at;
				run_len += ps;
				continue;
			}
			if (run_len && mprotect((void *)(uintptr_t)run,
						run_len, PROT_NONE)) {
				whole = true;
				break;
			}
			run_len = 0;
		}
	}
	if (!whole && run_len &&
	    mprotect((void *)(uintptr_t)run, run_len, PROT_NONE))
		whole = true;
	if (whole) {
		pr_warn("sealing the unserved pages of [%#llx, +%llu): %s; "
			"the whole range is made inaccessible\n",
			(unsigned long long)start, (unsigned long long)len,
			strerror(errno ? errno : ENOMEM));
		mprotect((void *)(uintptr_t)start, len, PROT_NONE);
	}
	if (fd >= 0)
		close(fd);
	free(pm);
	free(vec);
}

void luffd__region_remove(struct luffd__rtab *t, struct luffd__region *r)
{
	struct uffdio_range rg = { .start = r->start, .len = r->len };
	bool mapped;

	table_remove(t, r);
	atomic_store(&r->dead, true);
	r->next = t->dying;
	t->dying = r;
	/* The handler lets go of what it holds in r: faults parked for a
	 * free slot, reads in flight (see read.c). */
	atomic_store(&t->died, true);
	luffd__cq_kick(t->cq);
	atomic_fetch_add(&t->removing, 1);
	while (atomic_load(&r->inflight))
		pthread_cond_wait(&t->cv, &t->lock);
	atomic_fetch_sub(&t->removing, 1);
	/* Cleared if the application unmapped the range itself meanwhile:
	 * the address may already belong to someone else. */
	mapped = r->mapped;
	pthread_mutex_unlock(&t->lock);
	/* A thread woken while a luffd_map() range is still mapped but
	 * unregistered would be handed a zero page instead of SIGSEGV: make
	 * it inaccessible first.  Unregistering before the munmap keeps our
	 * own unmap from raising an UNMAP event. */
	if (mapped)
		mprotect((void *)(uintptr_t)r->start, r->len, PROT_NONE);
	else if (r->flags & LUFFD_REGISTER_SEAL_UNSERVED)
		seal_unserved(r->start, r->len);
	/*
	 * UNREGISTER wakes the threads blocked on a fault in the range, but
	 * it does so before it takes each VMA away, and a fault running
	 * under the per-VMA lock can queue itself in between and sleep with
	 * nobody left to wake it (seen on 6.18).  By the time UNREGISTER
	 * returns such a fault is queued: wake the range once more.
	 */
	ioctl(t->uffd, UFFDIO_UNREGISTER, &rg);
	ioctl(t->uffd, UFFDIO_WAKE, &rg);
	if (mapped)
		munmap((void *)(uintptr_t)r->start, r->len);

	pthread_mutex_lock(&t->lock);
	unlink_from(&t->dying, r);
	pthread_mutex_unlock(&t->lock);
	region_free(r);
}

void luffd__rtab_reap(struct luffd__rtab *t)
{
	struct luffd__region **pp, *r;

	pthread_mutex_lock(&t->lock);
	for (pp = &t->zombies; (r = *pp);) {
		if (atomic_load(&r->inflight)) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		region_free(r);
	}
	pthread_mutex_unlock(&t->lock);
}

/* ------------------------------------------------------------------------
 * Events: the application changed the address space under the regions
 * ---------------------------------------------------------------------- */

static struct luffd__region *piece(struct luffd__region *r, uint64_t start,
				   uint64_t len, uint64_t new_start)
{
	struct luffd__region *p = region_new(r->tab, new_start, len, r->store,
					     r->off + (start - r->start),
					     r->mapped, r->huge, r->gid,
					     r->flags);

	/* born: the replaced region's, so events read since still apply. */
	if (p) {
		int st = atomic_load(&r->push_state);

		/* The pages keep their state (moved with them on REMAP). */
		if (p->pst && r->pst)
			for (uint64_t i = 0; i < len >> r->tab->page_shift;
			     i++)
				atomic_store_explicit(
					&p->pst[i],
					atomic_load_explicit(
						&r->pst[((start - r->start) >>
							 r->tab->page_shift) + i],
						memory_order_relaxed),
					memory_order_relaxed);

		p->born = r->born;
		/* A piece of a region being pushed goes on being pushed (its
		 * own push, started by the handler after the event); one of
		 * a finished push is finished. */
		p->push_err = r->push_err;
		atomic_store(&p->push_state, st == LUFFD__PUSH_RUNNING ?
					      LUFFD__PUSH_PENDING : st);
	}
	return p;
}

static void insert_piece(struct luffd__rtab *t, struct luffd__region *p)
{
	if (p && table_insert(t, p))
		region_free(p);
}

/*
 * Replace the regions overlapping [start, end) by what is left of them
 * outside it, and, when `to` is not 0, add the part inside it moved to
 * `to` (REMAP).  Handler thread, t->lock held.  The replaced region becomes
 * a zombie: faults holding it finish (an install into the unmapped part
 * fails and wakes the thread).  If a piece cannot be allocated, the range
 * it covers is left without a region and its faults get SIGBUS: the
 * address space change itself cannot be refused.
 */
static void reshape(struct luffd__rtab *t, uint64_t start, uint64_t end,
		    uint64_t to, uint64_t t_read)
{
	struct luffd__region *dead;

	for (dead = t->dying; dead; dead = dead->next)
		if (dead->start < end && start < dead->start + dead->len &&
		    dead->born <= t_read)
			dead->mapped = false;
	for (;;) {
		size_t j = upper(t, end - 1);
		struct luffd__region *r;
		uint64_t a, b, rend;

		if (j == 0)
			break;
		r = t->regions[j - 1];
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
		table_remove(t, r);
		if (r->start < a)
			insert_piece(t, piece(r, r->start, a - r->start,
					      r->start));
		if (b < rend)
			insert_piece(t, piece(r, b, rend - b, b));
		if (to)
			insert_piece(t, piece(r, a, b - a, to + (a - start)));
		r->next = t->zombies;
		t->zombies = r;
	}
}

void luffd__region_unmapped(struct luffd__rtab *t, uint64_t start,
			    uint64_t end, uint64_t t_read)
{
	pthread_mutex_lock(&t->lock);
	reshape(t, start, end, 0, t_read);
	pthread_mutex_unlock(&t->lock);
}

void luffd__region_moved(struct luffd__rtab *t, uint64_t from, uint64_t to,
			 uint64_t len, uint64_t t_read)
{
	pthread_mutex_lock(&t->lock);
	reshape(t, from, from + len, to, t_read);
	pthread_mutex_unlock(&t->lock);
}
