/* SPDX-License-Identifier: MIT */
/* The callback guard (guard.c). */
#ifndef LUFFD_GUARD_H
#define LUFFD_GUARD_H

struct luffd_ctx;

int luffd__guard_start(struct luffd_ctx *ctx);
void luffd__guard_stop(struct luffd_ctx *ctx);
void luffd__guard_kick(struct luffd_ctx *ctx);

#endif /* LUFFD_GUARD_H */
