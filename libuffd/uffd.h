/* SPDX-License-Identifier: MIT */
/* Opening a userfaultfd and negotiating its features (open.c). */
#ifndef LUFFD_UFFD_H
#define LUFFD_UFFD_H

#include <stdint.h>

#include "compat.h"
#include "libuffd.h"
#include "util.h"

struct luffd__kernel {
	uint64_t api;
	uint64_t features; /* offered by the kernel */
	uint64_t ioctls;
};

/* Learn once per process what the kernel offers (a probe descriptor). */
int luffd__probe(enum luffd_open_mode mode, struct luffd__kernel *k);
/* Open a non-blocking, close-on-exec userfaultfd and enable features
 * (a subset of what luffd__probe reported).  *how says which way worked. */
int luffd__uffd_open(enum luffd_open_mode mode, uint64_t features, int *fdp,
		     enum luffd_open_mode *how, uint64_t *ioctls);

#endif /* LUFFD_UFFD_H */
