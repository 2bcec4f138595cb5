/* SPDX-License-Identifier: MIT */
/*
 * Asynchronous store: the application starts a fetch in read() and
 * answers it later, from any thread, with luffd_request_complete().
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "opts.h"
#include "req.h"
#include "store.h"

struct async_store {
	struct luffd_async_ops ops;
	void *arg;
};

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
	free(a);
}

static const struct luffd__store_ops async_ops = {
	.read = as_read,
	.cancel = as_cancel,
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
					  LUFFD__CAP_APP_CODE, a->ops.size, a);
	if (!s) {
		free(a);
		return err ? err : -ENOMEM;
	}
	a->arg = arg;
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
