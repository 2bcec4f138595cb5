/* SPDX-License-Identifier: MIT */
/*
 * Stores: references and ids, common to every kind.  The kinds live in
 * store_file.c, store_mem.c and store_cb.c.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "store.h"

static atomic_uint_fast64_t next_store_id = 1;

uint64_t luffd__store_new_id(void)
{
	return atomic_fetch_add(&next_store_id, 1);
}

struct luffd_store *luffd__store_new(const struct luffd__store_ops *ops,
				     unsigned int caps, uint64_t size,
				     void *priv)
{
	struct luffd_store *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	atomic_init(&s->refs, 1);
	atomic_init(&s->own_regions, 0);
	atomic_init(&s->written, false);
	s->nregions = &s->own_regions;
	s->ops = ops;
	s->caps = caps;
	s->size = size;
	s->priv = priv;
	s->id = luffd__store_new_id();
	return s;
}

struct luffd_store *luffd__store_get(struct luffd_store *s)
{
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	return s;
}

void luffd_store_put(struct luffd_store *s)
{
	if (!s)
		return;
	if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (s->ops->destroy)
		s->ops->destroy(s);
	free(s);
}

int luffd__store_unshare(struct luffd_store *s)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	int err = 0;

	if (atomic_load_explicit(&s->written, memory_order_acquire))
		return 0;
	pthread_mutex_lock(&lock);
	if (atomic_load(&s->written))
		goto out;
	if (atomic_load(s->nregions)) {
		err = -EBUSY;
		goto out;
	}
	if (s->ops->unshare)
		s->ops->unshare(s);
	s->id = luffd__store_new_id();
	s->nregions = &s->own_regions;
	atomic_store_explicit(&s->written, true, memory_order_release);
out:
	pthread_mutex_unlock(&lock);
	return err;
}

uint64_t luffd_store_size(const struct luffd_store *s)
{
	return s ? s->size : 0;
}
