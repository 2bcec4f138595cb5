/* SPDX-License-Identifier: MIT */
/* Memory store: faults are installed straight from the caller's memory. */
#include <errno.h>
#include <stddef.h>

#include "store.h"

static const void *mem_direct(struct luffd_store *s, uint64_t off)
{
	return off < s->size ? (const unsigned char *)s->priv + off : NULL;
}

static const struct luffd__store_ops mem_ops = {
	.direct = mem_direct,
};

int luffd_store_memory(const void *base, size_t len,
		       struct luffd_store **storep)
{
	struct luffd_store *s;

	if (storep)
		*storep = NULL;
	if (!base || !len || !storep)
		return -EINVAL;
	s = luffd__store_new(&mem_ops, LUFFD__CAP_DIRECT, len, (void *)base);
	if (!s)
		return -ENOMEM;
	*storep = s;
	return 0;
}
