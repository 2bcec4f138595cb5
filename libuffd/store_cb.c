/* SPDX-License-Identifier: MIT */
/* Callback store: the application fills pages with a synchronous fill(). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "opts.h"
#include "req.h"
#include "store.h"

struct cb_store {
	struct luffd_callback_ops ops;
	void *arg;
};

static int cb_read(struct luffd_store *s, struct luffd__req *r)
{
	struct cb_store *cb = s->priv;
	int64_t res = 0;

	/* The window's slots are not contiguous: fill them one run at a
	 * time, stopping at the first short answer. */
	for (int i = 0; i < r->pub.iovcnt; i++) {
		ssize_t n = cb->ops.fill(cb->arg, r->pub.offset + (uint64_t)res,
					 r->iov[i].iov_base, r->iov[i].iov_len);

		if (n < 0) {
			if (res == 0)
				res = n;
			break;
		}
		if ((size_t)n > r->iov[i].iov_len)
			n = (ssize_t)r->iov[i].iov_len;
		res += n;
		if ((size_t)n < r->iov[i].iov_len)
			break;
	}
	luffd__req_complete(r, res);
	return 0;
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
					  LUFFD__CAP_APP_CODE, cb->ops.size,
					  cb);
	if (!s) {
		free(cb);
		return err ? err : -ENOMEM;
	}
	cb->arg = arg;
	*storep = s;
	return 0;
}
