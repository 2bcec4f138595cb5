/* SPDX-License-Identifier: MIT */
/*
 * Asynchronous store: the application starts a fetch in read() and
 * answers it later, from any thread, with luffd_request_complete().
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "opts.h"
#include "req.h"
#include "store.h"
#include "writeback.h"

/* A write the application has not answered yet.  Each holds a reference
 * to the store, so a late answer (after a write-back gave up on it and
 * the region went) still finds the store. */
struct pending_write {
	struct luffd_write pub;
	struct luffd__wreq *w;
	struct pending_write *next;
};

struct async_store {
	struct luffd_async_ops ops;
	void *arg;
	pthread_mutex_t lock;  /* the pending writes */
	struct pending_write *writes;
	uint64_t next_id;
};

/* Write-back, on the writing thread: hand the bytes (the batch's copy) to
 * the application, answered later by luffd_write_complete(). */
static int as_write(struct luffd_store *s, struct luffd__wreq *w)
{
	struct async_store *a = s->priv;
	struct pending_write *p = malloc(sizeof(*p)), **pp;
	bool found;
	int err;

	if (!p)
		return -ENOMEM;
	p->w = w;
	p->pub = (struct luffd_write){ .offset = w->off, .len = w->len,
				       .buf = w->buf };
	luffd__store_get(s);
	pthread_mutex_lock(&a->lock);
	p->pub.id = ++a->next_id;
	p->next = a->writes;
	a->writes = p;
	pthread_mutex_unlock(&a->lock);
	err = a->ops.write(a->arg, &p->pub);
	if (err >= 0)
		return 0;
	/* Refused at once: never answered.  (Answered inside write() and
	 * refused all the same is the application's mistake: the answer
	 * stands, and p is gone with it.) */
	pthread_mutex_lock(&a->lock);
	for (pp = &a->writes; *pp && *pp != p; pp = &(*pp)->next)
		;
	found = *pp == p;
	if (found)
		*pp = p->next;
	pthread_mutex_unlock(&a->lock);
	if (!found)
		return 0;
	free(p);
	luffd_store_put(s);
	return err < -4095 ? -EIO : err;
}

static int as_flush(struct luffd_store *s, uint64_t deadline LUFFD__UNUSED)
{
	struct async_store *a = s->priv;
	int err;

	if (!a->ops.flush)
		return 0;
	err = a->ops.flush(a->arg);
	return err < 0 ? (err < -4095 ? -EIO : err) : 0;
}

static int as_read(struct luffd_store *s, struct luffd__req *r)
{
	struct async_store *a = s->priv;

	return a->ops.read(a->arg, &r->pub);
}

static void as_cancel(struct luffd_store *s, struct luffd__req *r)
{
	struct async_store *a = s->priv;

	if (a->ops.cancel)
		a->ops.cancel(a->arg, &r->pub);
}

static void as_destroy(struct luffd_store *s)
{
	struct async_store *a = s->priv;

	if (a->ops.destroy)
		a->ops.destroy(a->arg);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

static const struct luffd__store_ops async_ops = {
	.read = as_read,
	.cancel = as_cancel,
	.write = as_write,
	.flush = as_flush,
	.destroy = as_destroy,
};

int luffd_store_async(const struct luffd_async_ops *ops, void *arg,
		      struct luffd_store **storep)
{
	struct async_store *a;
	struct luffd_store *s;
	int err;

	if (storep)
		*storep = NULL;
	if (!ops || !storep)
		return -EINVAL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	err = luffd__opts_copy(&a->ops, sizeof(a->ops), ops, ops->sz,
			       offsetof(struct luffd_async_ops, size) +
				       sizeof(ops->size),
			       "luffd_async_ops");
	if (!err && (!a->ops.read || !a->ops.size)) {
		pr_warn("luffd_async_ops: read and size are required\n");
		err = -EINVAL;
	}
	s = err ? NULL : luffd__store_new(&async_ops, LUFFD__CAP_EMPTY_ZERO |
					  LUFFD__CAP_APP_CODE |
					  (a->ops.write ? LUFFD__CAP_WRITE : 0),
					  a->ops.size, a);
	if (!s) {
		free(a);
		return err ? err : -ENOMEM;
	}
	a->arg = arg;
	pthread_mutex_init(&a->lock, NULL);
	*storep = s;
	return 0;
}

int luffd_request_complete(struct luffd_store *store, uint64_t id,
			   ssize_t res)
{
	if (!store || store->ops != &async_ops || res < -4095)
		return -EINVAL;
	return luffd__req_complete_id(store, id, res);
}

int luffd_write_complete(struct luffd_store *store, uint64_t id,
			 ssize_t res)
{
	struct async_store *a;
	struct pending_write *p, **pp;

	if (!store || store->ops != &async_ops || res < -4095)
		return -EINVAL;
	a = store->priv;
	pthread_mutex_lock(&a->lock);
	for (pp = &a->writes; (p = *pp) && p->pub.id != id; pp = &p->next)
		;
	if (p && res > 0 && (uint64_t)res > p->pub.len)
		p = NULL; /* more than was asked: refused, nothing changed */
	if (p)
		*pp = p->next;
	pthread_mutex_unlock(&a->lock);
	if (!p)
		return -EINVAL;
	luffd__wreq_done(p->w, res);
	free(p);
	luffd_store_put(store); /* may destroy it: last */
	return 0;
}
