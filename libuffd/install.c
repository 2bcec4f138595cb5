/* SPDX-License-Identifier: MIT */
/*
 * The install layer: every change to the page tables of registered memory
 * goes through here (see install.h).
 */
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "compat.h"
#include "install.h"

/* Pages in a 2 MiB window scanned by one mincore() call. */
#define SCAN_PAGES 512

/* The source of write-protected zero pages (LUFFD__PT_WP): in .bss,
 * aligned for any page size up to 64 KiB, never written. */
#define ZEROES (64 * 1024)
static unsigned char zeroes[ZEROES] __attribute__((aligned(ZEROES)));

_Thread_local uint64_t luffd__tls_installed;

static __u64 copy_mode(unsigned int mode)
{
	return ((mode & LUFFD__PT_DONTWAKE) ? UFFDIO_COPY_MODE_DONTWAKE : 0) |
	       ((mode & LUFFD__PT_WP) ? UFFDIO_COPY_MODE_WP : 0);
}

int luffd__pt_copy(int uffd, uint64_t dst, const void *src, uint64_t len,
		   unsigned int mode)
{
	struct uffdio_copy c = {
		.dst = dst,
		.src = (uint64_t)(uintptr_t)src,
		.len = len,
		.mode = copy_mode(mode),
	};

	if (ioctl(uffd, UFFDIO_COPY, &c) == 0) {
		luffd__tls_installed += len;
		return 0;
	}
	return c.copy < 0 ? (int)c.copy : -errno;
}

/* Zeroes copied in write-protected, ZEROES at a time; stops at the first
 * error (-EEXIST for a present page, as UFFDIO_ZEROPAGE). */
static int zero_wp(int uffd, uint64_t dst, uint64_t len, unsigned int mode)
{
	while (len) {
		uint64_t n = len < ZEROES ? len : ZEROES;
		int err = luffd__pt_copy(uffd, dst, zeroes, n, mode);

		if (err)
			return err;
		dst += n;
		len -= n;
	}
	return 0;
}

int luffd__pt_zero(int uffd, uint64_t dst, uint64_t len, unsigned int mode)
{
	struct uffdio_zeropage z = {
		.range = { .start = dst, .len = len },
		.mode = (mode & LUFFD__PT_DONTWAKE) ?
			UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0,
	};

	if (mode & LUFFD__PT_WP)
		return zero_wp(uffd, dst, len, mode);
	if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0) {
		luffd__tls_installed += len;
		return 0;
	}
	return z.zeropage < 0 ? (int)z.zeropage : -errno;
}

int luffd__pt_poison(int uffd, uint64_t dst, uint64_t len, unsigned int mode)
{
	struct uffdio_poison p = {
		.range = { .start = dst, .len = len },
		.mode = (mode & LUFFD__PT_DONTWAKE) ?
			UFFDIO_POISON_MODE_DONTWAKE : 0,
	};

	if (ioctl(uffd, UFFDIO_POISON, &p) == 0)
		return 0;
	return p.updated < 0 ? (int)p.updated : -errno;
}

void luffd__pt_wake(int uffd, uint64_t dst, uint64_t len)
{
	struct uffdio_range r = { .start = dst, .len = len };

	ioctl(uffd, UFFDIO_WAKE, &r);
}

int luffd__pt_protect(int uffd, uint64_t dst, uint64_t len, bool wp,
		      unsigned int mode)
{
	struct uffdio_writeprotect w = {
		.range = { .start = dst, .len = len },
		.mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP
			   : ((mode & LUFFD__PT_DONTWAKE) ?
				      UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0),
	};

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &w) ? -errno : 0;
}

int luffd__pt_protected(int pagemap_fd, uint64_t addr, unsigned int shift)
{
	uint64_t e;

	if (pread(pagemap_fd, &e, sizeof(e), (off_t)((addr >> shift) * 8)) !=
	    (ssize_t)sizeof(e))
		return -EIO;
	return (int)((e >> 57) & 1); /* PM_UFFD_WP */
}

/* Pages present in a row from addr on (at least 1: the one that said
 * -EEXIST), at most n. */
static uint64_t present_run(uint64_t addr, uint64_t n, unsigned int shift)
{
	unsigned char vec[SCAN_PAGES];
	uint64_t k = 1;

	if (n > SCAN_PAGES)
		n = SCAN_PAGES;
	if (mincore((void *)(uintptr_t)addr, n << shift, vec))
		return 1;
	while (k < n && (vec[k] & 1))
		k++;
	return k;
}

uint64_t luffd__pt_copy_missing(int uffd, uint64_t dst, const void *src,
				uint64_t len, unsigned int mode, int *err)
{
	unsigned int shift = (unsigned int)__builtin_ctzl(
		(unsigned long)getpagesize());
	uint64_t s = (uint64_t)(uintptr_t)src, done = 0;

	if (err)
		*err = 0;
	while (len) {
		struct uffdio_copy c = {
			.dst = dst, .src = s, .len = len,
			.mode = copy_mode(mode),
		};
		uint64_t step;

		if (ioctl(uffd, UFFDIO_COPY, &c) == 0) {
			done += len;
			break;
		}
		if (c.copy > 0) {
			step = (uint64_t)c.copy;
			done += step;
		} else if (c.copy == -EEXIST || errno == EEXIST) {
			/* Present already (touched meanwhile): skip it and
			 * the present pages after it. */
			step = present_run(dst, len >> shift, shift) << shift;
		} else {
			if (err)
				*err = c.copy < 0 ? (int)c.copy : -errno;
			break;
		}
		dst += step;
		s += step;
		len -= step;
	}
	luffd__tls_installed += done;
	return done >> shift;
}

int luffd__pt_move(int uffd, uint64_t dst, uint64_t src, uint64_t len,
		   unsigned int shift, struct luffd__moved *out)
{
	uint64_t wake_from = dst, wake_len = len, moved = 0, done = 0;
	bool present = false;
	int err = 0;

	while (len) {
		struct uffdio_move m = {
			.dst = dst, .src = src, .len = len, .mode = 0,
		};
		uint64_t step;

		if (ioctl(uffd, UFFDIO_MOVE, &m) == 0) {
			moved += len;
			done += len;
			break;
		}
		if (m.move > 0) {
			step = (uint64_t)m.move;
			moved += step;
		} else if (m.move == -EEXIST || errno == EEXIST) {
			/* Pages installed meanwhile (by the page path, or a
			 * racing fault): one mincore() finds how many in a
			 * row, rather than one failed move per page. */
			present = true;
			step = present_run(dst, len >> shift, shift) << shift;
		} else {
			err = m.move < 0 ? (int)m.move : -errno;
			break;
		}
		done += step;
		dst += step;
		src += step;
		len -= step;
	}
	/* A thread may wait on a page someone else installed. */
	if (present)
		luffd__pt_wake(uffd, wake_from, wake_len);
	out->done = done >> shift;
	out->moved = moved >> shift;
	out->present = present;
	return err;
}

void luffd__run_flush(struct luffd__run *run)
{
	if (run->len)
		run->installed += luffd__pt_copy_missing(
			run->uffd, run->dst,
			(const void *)(uintptr_t)run->src, run->len, run->mode,
			NULL);
	run->len = 0;
}
