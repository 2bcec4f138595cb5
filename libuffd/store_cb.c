/* SPDX-License-Identifier: MIT */
/* Callback store: the application fills pages with a synchronous fill(),
 * run on the context's worker pool. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "opts.h"
#include "pool.h"
#include "req.h"
#include "store.h"
#include "writeback.h"

struct cb_store {
	struct luffd_callback_ops ops;
	void *arg;
};

/* On a worker (pool.c): the window's slots are not contiguous, so fill
 * them one run at a time, stopping at the first short answer. */
static int64_t cb_work(struct luffd__req *r)
{
	struct cb_store *cb = r->store->priv;
	int64_t res = 0;

	for (int i = 0; i < r->pub.iovcnt; i++) {
		ssize_t n = cb->ops.fill(cb->arg, r->pub.offset + (uint64_t)res,
					 r->iov[i].iov_base, r->iov[i].iov_len);

		if (n < 0) {
			/* Not an errno (below -4095): an I/O error. */
			if (res == 0)
				res = n < -4095 ? -EIO : n;
			break;
		}
		if ((size_t)n > r->iov[i].iov_len)
			n = (ssize_t)r->iov[i].iov_len;
		res += n;
		if ((size_t)n < r->iov[i].iov_len)
			break;
	}
	return res;
}

static int cb_read(struct luffd_store *s LUFFD__UNUSED, struct luffd__req *r)
{
	luffd__pool_submit(r->cq->pool, r, cb_work);
	return 0;
}

static void cb_cancel(struct luffd_store *s LUFFD__UNUSED,
		      struct luffd__req *r)
{
	luffd__pool_cancel(r->cq->pool, r);
}

/* On the writing thread itself, at once (see luffd_callback_ops). */
static int cb_write(struct luffd_store *s, struct luffd__wreq *w)
{
	struct cb_store *cb = s->priv;
	ssize_t n = cb->ops.write(cb->arg, w->off, w->buf, w->len);

	if (n < 0 && n < -4095)
		n = -EIO;
	if ((size_t)n > w->len && n > 0)
		n = (ssize_t)w->len;
	luffd__wreq_done(w, n);
	return 0;
}

static int cb_flush(struct luffd_store *s, uint64_t deadline)
{
	struct cb_store *cb = s->priv;
	int err;

	(void)deadline; /* flush() runs here, on the caller's thread */
	if (!cb->ops.flush)
		return 0;
	err = cb->ops.flush(cb->arg);
	return err < 0 ? (err < -4095 ? -EIO : err) : 0;
}

static void cb_destroy(struct luffd_store *s)
{
	struct cb_store *cb = s->priv;

	if (cb->ops.destroy)
		cb->ops.destroy(cb->arg);
	free(cb);
}

static const struct luffd__store_ops cb_ops = {
	.read = cb_read,
	.cancel = cb_cancel,
	.write = cb_write,
	.flush = cb_flush,
	.destroy = cb_destroy,
};

int luffd_store_callback(const struct luffd_callback_ops *ops, void *arg,
			 struct luffd_store **storep)
{
	struct luffd_store *s;
	struct cb_store *cb;
	int err;

	if (storep)
		*storep = NULL;
	if (!ops || !storep)
		return -EINVAL;
	cb = calloc(1, sizeof(*cb));
	if (!cb)
		return -ENOMEM;
	err = luffd__opts_copy(&cb->ops, sizeof(cb->ops), ops, ops->sz,
			       offsetof(struct luffd_callback_ops, size) +
				       sizeof(ops->size),
			       "luffd_callback_ops");
	if (!err && (!cb->ops.fill || !cb->ops.size)) {
		pr_warn("luffd_callback_ops: fill and size are required\n");
		err = -EINVAL;
	}
	s = err ? NULL : luffd__store_new(&cb_ops, LUFFD__CAP_EMPTY_ZERO |
					  (cb->ops.write ? LUFFD__CAP_WRITE |
					   LUFFD__CAP_WRITE_INPLACE : 0),
					  cb->ops.size,
					  cb);
	if (!s) {
		free(cb);
		return err ? err : -ENOMEM;
	}
	cb->arg = arg;
	*storep = s;
	return 0;
}
