/* SPDX-License-Identifier: MIT */
/*
 * Stores: where a region's bytes come from.  Each kind fills in
 * luffd__store_ops and capability bits; the fault loop knows only those.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h>

#include "internal.h"

static atomic_uint_fast64_t next_store_id = 1;

static struct luffd_store *store_new(const struct luffd__store_ops *ops,
				     unsigned int caps, uint64_t size)
{
	struct luffd_store *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	atomic_init(&s->refs, 1);
	atomic_init(&s->dfd_refused, false);
	s->ops = ops;
	s->caps = caps;
	s->size = size;
	s->fd = -1;
	s->dfd = -1;
	s->id = atomic_fetch_add(&next_store_id, 1);
	return s;
}

struct luffd_store *luffd__store_get(struct luffd_store *s)
{
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	return s;
}

void luffd_store_put(struct luffd_store *s)
{
	if (!s)
		return;
	if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (s->ops->destroy)
		s->ops->destroy(s);
	free(s);
}

uint64_t luffd_store_size(const struct luffd_store *s)
{
	return s ? s->size : 0;
}

/* ------------------------------------------------------------------------
 * File store: io_uring reads
 * ---------------------------------------------------------------------- */

static int file_read(struct luffd_store *s, struct luffd__loop *l,
		     struct luffd__op *op)
{
	struct io_uring_sqe *sqe;

	/* Data in the page cache is copied now, without a trip through the
	 * ring (which would serve it inline too, one loop turn later);
	 * anything that would block goes to io_uring.  A partial answer
	 * (part of the window cached) is taken: the rest is asked for as a
	 * continuation. */
	int fd = op->direct ? s->dfd : s->fd;

	if (!s->direct_io && !op->direct && !op->done && !op->async) {
		ssize_t n = preadv2(s->fd, op->iov, (int)op->niov,
				    (off_t)op->off, RWF_NOWAIT);

		if (n >= 0) {
			op->res = n;
			return LUFFD__READ_DONE;
		}
	}
	sqe = luffd__get_sqe(l);
	if (!sqe) {
		/* Cannot happen with the ring sized for every read in flight;
		 * should it, a blocking read beats failing the fault. */
		ssize_t n = preadv(fd, op->iov, (int)op->niov,
				   (off_t)(op->off + op->done));

		op->res = n < 0 ? -errno : n;
		return LUFFD__READ_DONE;
	}
	if (op->niov == 1)
		io_uring_prep_read(sqe, fd, op->iov[0].iov_base,
				   (unsigned int)op->iov[0].iov_len,
				   op->off + op->done);
	else
		io_uring_prep_readv(sqe, fd, op->iov, op->niov,
				    op->off + op->done);
	if (op->async)
		sqe->flags |= IOSQE_ASYNC;
	io_uring_sqe_set_data(sqe, op);
	return 0;
}

/* Sparse files only: one lseek per cache miss to tell a hole from data,
 * so holes map the zero page without a read (the extra syscall is paid
 * only where st_blocks said the file has holes). */
static int file_hole(struct luffd_store *s, uint64_t off, uint64_t len,
		     uint64_t *data_end)
{
	off_t d = lseek(s->fd, (off_t)off, SEEK_DATA);
	off_t h;

	if (d < 0)
		return errno == ENXIO ? 1 : 0; /* ENXIO: no data after off */
	if ((uint64_t)d >= off + len)
		return 1;
	if ((uint64_t)d > off) {
		/* Data starts inside the page: read just this page. */
		*data_end = off + len;
		return 0;
	}
	h = lseek(s->fd, (off_t)off, SEEK_HOLE);
	*data_end = h < 0 ? UINT64_MAX : (uint64_t)h;
	return 0;
}

static void file_destroy(struct luffd_store *s)
{
	if (s->fd >= 0)
		close(s->fd);
	if (s->dfd >= 0)
		close(s->dfd);
}

bool luffd__store_cold(struct luffd_store *s, uint64_t off, uint64_t len)
{
	static atomic_bool unsupported;
	struct luffd__cachestat_range r = { .off = off, .len = len };
	struct luffd__cachestat cs;

	if (s->dfd < 0 || atomic_load_explicit(&unsupported,
					       memory_order_relaxed) ||
	    atomic_load_explicit(&s->dfd_refused, memory_order_relaxed))
		return false;
	if (syscall(__NR_cachestat, s->fd, &r, &cs, 0) < 0) {
		/* Not again: for anyone when the kernel (or a seccomp
		 * filter) refuses the call, for this file otherwise. */
		if (errno == ENOSYS || errno == EPERM)
			atomic_store(&unsupported, true);
		else
			atomic_store(&s->dfd_refused, true);
		return false;
	}
	/* cachestat() counts pages. */
	return cs.nr_cache * 2 * (uint64_t)getpagesize() < len;
}

/* A new description of fd's file with O_DIRECT (the flag belongs to the
 * description: the caller's keeps its own), or -errno. */
static int reopen_direct(int fd)
{
	char path[64];
	int nfd;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	nfd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	return nfd < 0 ? -errno : nfd;
}

static const struct luffd__store_ops file_ops = {
	.read = file_read,
	.hole = file_hole,
	.destroy = file_destroy,
};

int luffd_store_file(int fd, unsigned int flags, struct luffd_store **storep)
{
	struct luffd_store *s;
	struct stat st;
	uint64_t size;
	int acc, nfd;
	bool direct;
	unsigned int caps = LUFFD__CAP_SHORT_EOF;

	if (!storep || (flags & ~(LUFFD_FILE_DIRECT | LUFFD_FILE_CACHED)))
		return -EINVAL;
	if (fd < 0)
		return -EBADF;
	if (fstat(fd, &st) < 0)
		return -errno;
	acc = fcntl(fd, F_GETFL);
	if (acc < 0)
		return -errno;
	if ((acc & O_ACCMODE) == O_WRONLY || (acc & O_PATH))
		return -EACCES;
	if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
		/* Fewer blocks than bytes: the file has holes. */
		if ((uint64_t)st.st_blocks * 512 < size)
			caps |= LUFFD__CAP_HOLES;
	} else if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &size) < 0)
			return -errno;
	} else {
		return -EINVAL;
	}

	/* A descriptor opened with O_DIRECT reads everything that way. */
	direct = (flags & LUFFD_FILE_DIRECT) || (acc & O_DIRECT);
	if (direct && !(acc & O_DIRECT)) {
		nfd = reopen_direct(fd);
	} else {
		nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		if (nfd < 0)
			nfd = -errno;
	}
	if (nfd < 0)
		return nfd;
	s = store_new(&file_ops, caps, size);
	if (!s) {
		close(nfd);
		return -ENOMEM;
	}
	s->fd = nfd;
	s->direct_io = direct;
	/* Cold chunks: a second description with O_DIRECT, if the file
	 * system takes it (tmpfs does not: then everything is buffered). */
	if (!direct && !(flags & LUFFD_FILE_CACHED) && S_ISREG(st.st_mode)) {
		nfd = reopen_direct(fd);
		s->dfd = nfd < 0 ? -1 : nfd;
	}
	*storep = s;
	return 0;
}

int luffd_store_open(const char *path, unsigned int flags,
		     struct luffd_store **storep)
{
	int fd, err;

	if (!path || !storep || (flags & ~(LUFFD_FILE_DIRECT |
					    LUFFD_FILE_CACHED)))
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC |
			((flags & LUFFD_FILE_DIRECT) ? O_DIRECT : 0));
	if (fd < 0)
		return -errno;
	/* Opened as wanted: luffd_store_file() takes a duplicate. */
	err = luffd_store_file(fd, flags, storep);
	close(fd);
	return err;
}

/* ------------------------------------------------------------------------
 * Memory store: installs straight from the caller's memory
 * ---------------------------------------------------------------------- */

static const void *mem_direct(struct luffd_store *s, uint64_t off)
{
	return off < s->size ? s->mem + off : NULL;
}

static const struct luffd__store_ops mem_ops = {
	.direct = mem_direct,
};

int luffd_store_memory(const void *base, size_t len,
		       struct luffd_store **storep)
{
	struct luffd_store *s;

	if (!base || !len || !storep)
		return -EINVAL;
	s = store_new(&mem_ops, LUFFD__CAP_DIRECT, len);
	if (!s)
		return -ENOMEM;
	s->mem = base;
	*storep = s;
	return 0;
}

/* ------------------------------------------------------------------------
 * Callback store: the application fills pages, synchronously
 * ---------------------------------------------------------------------- */

static int cb_read(struct luffd_store *s, struct luffd__loop *l LUFFD__UNUSED,
		   struct luffd__op *op)
{
	ssize_t n;

	/* The window's slots are not contiguous: fill them one run at a
	 * time, stopping at the first short answer. */
	op->res = 0;
	for (uint32_t i = 0; i < op->niov; i++) {
		n = s->cb.fill(s->cb_arg, op->off + (uint64_t)op->res,
			       op->iov[i].iov_base, op->iov[i].iov_len);
		if (n < 0) {
			if (op->res == 0)
				op->res = n;
			break;
		}
		if ((size_t)n > op->iov[i].iov_len)
			n = (ssize_t)op->iov[i].iov_len;
		op->res += n;
		if ((size_t)n < op->iov[i].iov_len)
			break;
	}
	return LUFFD__READ_DONE;
}

static void cb_destroy(struct luffd_store *s)
{
	if (s->cb.destroy)
		s->cb.destroy(s->cb_arg);
}

static const struct luffd__store_ops cb_ops = {
	.read = cb_read,
	.destroy = cb_destroy,
};

int luffd_store_callback(const struct luffd_callback_ops *ops, void *arg,
			 struct luffd_store **storep)
{
	struct luffd_store *s;

	if (!ops || !storep || ops->sz < offsetof(struct luffd_callback_ops,
						  size) + sizeof(ops->size) ||
	    ops->sz > sizeof(*ops) || !ops->fill || !ops->size)
		return -EINVAL;
	s = store_new(&cb_ops, LUFFD__CAP_EMPTY_ZERO | LUFFD__CAP_APP_CODE,
		      ops->size);
	if (!s)
		return -ENOMEM;
	memcpy(&s->cb, ops, sizeof(*ops));
	s->cb_arg = arg;
	*storep = s;
	return 0;
}
