/* SPDX-License-Identifier: MIT */
/*
 * The install layer (install.c): the only code that changes the page
 * tables of registered memory.  Each call takes a mode:
 * LUFFD__PT_DONTWAKE leaves threads blocked on the range asleep (they find
 * the page present when something wakes them); LUFFD__PT_WP installs the
 * pages write-protected, so the first write to each raises a WP fault
 * (regions with LUFFD_REGISTER_WP: luffd__pt_mode() picks the mode from a
 * region's flags).  The two combine.  UFFDIO_CONTINUE comes with minor
 * mode.
 */
#ifndef LUFFD_INSTALL_H
#define LUFFD_INSTALL_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

/* Bytes this thread installed (copies and zero pages), for the resident
 * limit's estimate (evict.c): a plain thread-local add, no atomic. */
extern _Thread_local uint64_t luffd__tls_installed;

#define LUFFD__PT_DONTWAKE (1u << 0)
#define LUFFD__PT_WP (1u << 1)

/* The install mode a region's flags (LUFFD_REGISTER_*) ask for. */
static inline unsigned int luffd__pt_mode(unsigned int region_flags)
{
	return (region_flags & LUFFD_REGISTER_WP) ? LUFFD__PT_WP : 0;
}

/* UFFDIO_COPY of [src, src+len) to dst: 0 or -errno (-EEXIST: a page was
 * present, -EAGAIN: the address space is changing). */
int luffd__pt_copy(int uffd, uint64_t dst, const void *src, uint64_t len,
		   unsigned int mode);
/* UFFDIO_ZEROPAGE: the shared zero page at [dst, dst+len).  With
 * LUFFD__PT_WP, private zeroed pages copied in write-protected instead
 * (UFFDIO_COPY_MODE_WP): the shared zero page could only be protected
 * after it is mapped, and a write in between would go untracked. */
int luffd__pt_zero(int uffd, uint64_t dst, uint64_t len, unsigned int mode);
/* UFFDIO_POISON: touching [dst, dst+len) raises SIGBUS. */
int luffd__pt_poison(int uffd, uint64_t dst, uint64_t len, unsigned int mode);
/* UFFDIO_WAKE the threads blocked on [dst, dst+len). */
void luffd__pt_wake(int uffd, uint64_t dst, uint64_t len);
/* UFFDIO_WRITEPROTECT [dst, dst+len): protect (wp true), or lift the
 * protection, which wakes the writers blocked on it unless mode has
 * LUFFD__PT_DONTWAKE.  0 or -errno. */
int luffd__pt_protect(int uffd, uint64_t dst, uint64_t len, bool wp,
		      unsigned int mode);
/* Is the page at addr write-protected now?  1 or 0 from pagemap_fd
 * (/proc/self/pagemap: PM_UFFD_WP), -errno if it cannot be read. */
int luffd__pt_protected(int pagemap_fd, uint64_t addr, unsigned int shift);

/*
 * Copy [src, src+len) to dst page by page where pages are missing,
 * stepping over present ones (found with mincore() after an -EEXIST, not
 * by one failed copy per page).  Stops at any other error.  Returns the
 * pages installed; *err (if not NULL) gets the error that stopped it, or
 * 0.
 */
uint64_t luffd__pt_copy_missing(int uffd, uint64_t dst, const void *src,
				uint64_t len, unsigned int mode, int *err);

/*
 * Page copies gathered into runs: pages whose source and destination both
 * follow the previous ones go in with one UFFDIO_COPY (through
 * luffd__pt_copy_missing()).  Start with LUFFD__RUN(uffd, mode), add page
 * by page, and flush at the end; installed counts the pages put in.
 */
struct luffd__run {
	int uffd;
	unsigned int mode;
	uint64_t dst, src, len;
	uint64_t installed;
};
#define LUFFD__RUN(fd, m) ((struct luffd__run){ .uffd = (fd), .mode = (m) })
void luffd__run_flush(struct luffd__run *run);
static inline void luffd__run_add(struct luffd__run *run, uint64_t dst,
				  const void *src, uint64_t len)
{
	uint64_t s = (uint64_t)(uintptr_t)src;

	if (run->len && run->dst + run->len == dst &&
	    run->src + run->len == s) {
		run->len += len;
		return;
	}
	luffd__run_flush(run);
	run->dst = dst;
	run->src = s;
	run->len = len;
}

/* The outcome of luffd__pt_move(). */
struct luffd__moved {
	uint64_t done;  /* pages from dst on in place now (moved or present)
			   before any error */
	uint64_t moved; /* of those, moved */
	bool present;   /* some were present already (and their threads
			   were woken) */
};
/*
 * UFFDIO_MOVE of [src, src+len) (whole pages of a private anonymous
 * mapping this process alone maps) to dst, stepping over pages present at
 * dst.  Threads blocked on [dst, dst+len) are woken.  0 or the -errno that
 * stopped it.  There is no write-protected move: a moved page is writable
 * until a UFFDIO_WRITEPROTECT after it, and a write in between would go
 * untracked, so LUFFD_REGISTER_WP regions never take chunks (map.c).
 */
int luffd__pt_move(int uffd, uint64_t dst, uint64_t src, uint64_t len,
		   unsigned int page_shift, struct luffd__moved *out);

#endif /* LUFFD_INSTALL_H */
