/* SPDX-License-Identifier: MIT */
/* Regions as the application sees them (map.c): luffd_map(),
 * luffd_register() and their undoing, over a context's handlers. */
#ifndef LUFFD_MAP_H
#define LUFFD_MAP_H

struct luffd_ctx;

/* Remove every region of ctx, as luffd_unmap()/luffd_unregister() do. */
void luffd__map_remove_all(struct luffd_ctx *ctx);

#endif /* LUFFD_MAP_H */
