/* SPDX-License-Identifier: MIT */
/*
 * Userfaultfd messages (msg.c): faults and the events that change the
 * ranges under the handler's feet (REMOVE, UNMAP, REMAP).
 */
#ifndef LUFFD_MSG_H
#define LUFFD_MSG_H

struct luffd__loop;

/* Read and serve every queued message; returns how many were read. */
int luffd__msg_drain(struct luffd__loop *l);
/* Faults with no region yet get another look (see msg.c). */
void luffd__msg_orphans(struct luffd__loop *l);

#endif /* LUFFD_MSG_H */
