/* SPDX-License-Identifier: MIT */
/*
 * File store: reads through the handler's io_uring, page-cache hits copied
 * inline, holes found with SEEK_DATA, cold staging chunks read with
 * O_DIRECT.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/fs.h>

#include "compat.h"
#include "req.h"
#include "store.h"
#include "writeback.h"

struct file_store {
	int fd;
	int wfd;                 /* for writes (buffered), or -1: fd itself
				    when it is open O_RDWR without O_DIRECT,
				    else a reopen without O_DIRECT */
	int dfd;                 /* O_DIRECT reopen for cold chunks, or -1 */
	struct file_key *key;    /* the cache key shared with other stores
				    on the file, or NULL */
	atomic_bool dfd_refused; /* cachestat or an O_DIRECT read failed */
	bool direct_io;          /* fd itself is O_DIRECT */
};

/* r->priv: read through dfd (a cold chunk). */
#define VIA_DFD ((void *)(uintptr_t)1)

static struct file_store *F(struct luffd_store *s)
{
	return s->priv;
}

/*
 * Does the page cache hold less than half of [off, off+len)?  One
 * cachestat() call per 2 MiB chunk, which it turns into either a memory
 * copy or one device request.
 */
static bool cold(struct file_store *f, uint64_t off, uint64_t len)
{
	static atomic_bool unsupported;
	struct luffd__cachestat_range rg = { .off = off, .len = len };
	struct luffd__cachestat cs;

	if (f->dfd < 0 || atomic_load_explicit(&unsupported,
					       memory_order_relaxed) ||
	    atomic_load_explicit(&f->dfd_refused, memory_order_relaxed))
		return false;
	if (syscall(__NR_cachestat, f->fd, &rg, &cs, 0) < 0) {
		/* Not again: for anyone when the kernel (or a seccomp
		 * filter) refuses the call, for this file otherwise. */
		if (errno == ENOSYS || errno == EPERM)
			atomic_store(&unsupported, true);
		else
			atomic_store(&f->dfd_refused, true);
		return false;
	}
	/* cachestat() counts pages. */
	return cs.nr_cache * 2 * (uint64_t)getpagesize() < len;
}

/* Skip the first n bytes of r's iovecs (a short read goes on after them). */
static void iov_advance(struct luffd__req *r, uint64_t n)
{
	while (n && r->pub.iovcnt) {
		if (n >= r->iov->iov_len) {
			n -= r->iov->iov_len;
			r->iov++;
			r->pub.iovcnt--;
		} else {
			r->iov->iov_base = (char *)r->iov->iov_base + n;
			r->iov->iov_len -= n;
			n = 0;
		}
	}
	r->pub.iov = r->iov;
}

/* The rest of r (from r->done on) through the ring. */
static void submit(struct luffd_store *s, struct luffd__req *r)
{
	struct file_store *f = F(s);
	int fd = r->priv == VIA_DFD ? f->dfd : f->fd;
	struct io_uring_sqe *sqe = luffd__req_sqe(r);

	if (!sqe) {
		/* Cannot happen with the ring sized for every read in flight;
		 * should it, a blocking read beats failing the fault. */
		ssize_t n = preadv(fd, r->iov, r->pub.iovcnt,
				   (off_t)(r->pub.offset + r->done));

		luffd__req_complete(r, n < 0 ? -errno : (int64_t)(r->done + n));
		return;
	}
	if (r->pub.iovcnt == 1)
		io_uring_prep_read(sqe, fd, r->iov[0].iov_base,
				   (unsigned int)r->iov[0].iov_len,
				   r->pub.offset + r->done);
	else
		io_uring_prep_readv(sqe, fd, r->iov, (unsigned int)r->pub.iovcnt,
				    r->pub.offset + r->done);
	/* Read-ahead nobody waits for goes to an io_uring worker, even when
	 * cached: its copy then runs beside the handler. */
	if (r->flags & LUFFD__REQ_OFFLOAD)
		sqe->flags |= IOSQE_ASYNC;
	/* Prefetch yields the device to demand: the idle I/O class, which
	 * mq-deadline and bfq dispatch after every other (with aging, so it
	 * is not starved for good).  It applies to the device reads of
	 * O_DIRECT requests, which cold prefetch reads are. */
	if (r->pub.priority == LUFFD_PRIO_PREFETCH)
		sqe->ioprio = LUFFD__IOPRIO_IDLE;
}

/* n more bytes of r arrived (or -errno): go on, or complete. */
static void progress(struct luffd_store *s, struct luffd__req *r, int64_t n)
{
	size_t ps = (size_t)getpagesize();

	if (luffd__req_state(r) == LUFFD__REQ_CANCELLED) {
		luffd__req_complete(r, -ECANCELED);
		return;
	}
	if (n == -EAGAIN || n == -EINTR) {
		submit(s, r);
		return;
	}
	if (n == -EINVAL && r->priv == VIA_DFD) {
		/* A file system that opened O_DIRECT but refuses its reads
		 * (an alignment bigger than a page): buffered from now on. */
		atomic_store(&F(s)->dfd_refused, true);
		r->priv = NULL;
		submit(s, r);
		return;
	}
	if (n > 0) {
		r->done += (uint64_t)n;
		/* Regular files only come up short at their end, and an
		 * O_DIRECT read may not resume at an unaligned offset: keep
		 * reading only after a page-aligned short read. */
		if (r->done < r->pub.len && !(r->done & (ps - 1))) {
			iov_advance(r, (uint64_t)n);
			submit(s, r);
			return;
		}
	}
	/* Bytes read so far win over a later error: the pages after them
	 * are read again alone (see fault.c), and fail then. */
	luffd__req_complete(r, r->done || n >= 0 ? (int64_t)r->done : n);
}

static int file_read(struct luffd_store *s, struct luffd__req *r)
{
	struct file_store *f = F(s);

	if ((r->flags & LUFFD__REQ_BULK) &&
	    cold(f, r->pub.offset, r->pub.len))
		r->priv = VIA_DFD;
	/* Data in the page cache is copied now, without a trip through the
	 * ring (which would serve it inline too, one loop turn later);
	 * anything that would block goes to io_uring.  A partial answer
	 * (part of the window cached) is taken: the rest is asked for as a
	 * continuation. */
	if (!f->direct_io && r->priv != VIA_DFD &&
	    !(r->flags & LUFFD__REQ_OFFLOAD)) {
		ssize_t n = preadv2(f->fd, r->iov, r->pub.iovcnt,
				    (off_t)r->pub.offset, RWF_NOWAIT);

		if (n >= 0) {
			progress(s, r, n);
			return 0;
		}
	}
	submit(s, r);
	return 0;
}

static void file_ring_done(struct luffd_store *s, struct luffd__req *r,
			   int res)
{
	progress(s, r, res);
}

/* A read of a local file under way cannot be stopped; a pipe, FIFO or a
 * dead network file system's can. */
static void file_cancel(struct luffd_store *s LUFFD__UNUSED,
			struct luffd__req *r)
{
	struct io_uring_sqe *sqe = luffd__sqe(r->cq->ring);

	if (!sqe)
		return;
	io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)r | LUFFD__TAG_REQ, 0);
	io_uring_sqe_set_data64(sqe, LUFFD__TAG_CANCEL);
}

/* Sparse files only: one lseek per cache miss to tell a hole from data,
 * so holes map the zero page without a read (the extra syscall is paid
 * only where st_blocks said the file has holes). */
static int file_hole(struct luffd_store *s, uint64_t off, uint64_t len,
		     uint64_t *data_end)
{
	int fd = F(s)->fd;
	off_t d = lseek(fd, (off_t)off, SEEK_DATA);
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
	h = lseek(fd, (off_t)off, SEEK_HOLE);
	*data_end = h < 0 ? UINT64_MAX : (uint64_t)h;
	return 0;
}

/*
 * Stores over one file share its pages in every cache: their cache key is
 * the file's (device, inode), held in this registry while any of them
 * lives, so a second store on a file that a first one has read finds
 * those pages (minor faults) instead of reading them again.  They share
 * the count of regions over the key too (see luffd__install_ahead()).
 */
struct file_key {
	dev_t dev;
	ino_t ino;
	uint64_t id;
	unsigned int stores;
	atomic_uint nregions;
	bool detached;           /* taken out of the registry: a store over
				    the file was written (file_unshare()) */
	struct file_key *next;
};

static pthread_mutex_t keys_lock = PTHREAD_MUTEX_INITIALIZER;
static struct file_key *keys;

/* The key of (dev, ino), with one more store on it; NULL when memory is
 * short (the store then keeps a key of its own). */
static struct file_key *key_get(dev_t dev, ino_t ino)
{
	struct file_key *k;

	pthread_mutex_lock(&keys_lock);
	for (k = keys; k; k = k->next)
		if (k->dev == dev && k->ino == ino)
			break;
	if (!k) {
		k = calloc(1, sizeof(*k));
		if (k) {
			k->dev = dev;
			k->ino = ino;
			k->id = luffd__store_new_id();
			atomic_init(&k->nregions, 0);
			k->next = keys;
			keys = k;
		}
	}
	if (k)
		k->stores++;
	pthread_mutex_unlock(&keys_lock);
	return k;
}

static void key_put(struct file_key *k)
{
	struct file_key **pp;

	if (!k)
		return;
	pthread_mutex_lock(&keys_lock);
	if (--k->stores == 0) {
		if (!k->detached) {
			for (pp = &keys; *pp != k; pp = &(*pp)->next)
				;
			*pp = k->next;
		}
		free(k);
	}
	pthread_mutex_unlock(&keys_lock);
}

/* A store over the file is about to be written (luffd__store_unshare()):
 * it leaves the file's key, and stores opened later get a new one, so no
 * store shares cache pages read before the write. */
static void file_unshare(struct luffd_store *s)
{
	struct file_store *f = F(s);
	struct file_key *k = f->key, **pp;

	if (!k)
		return;
	pthread_mutex_lock(&keys_lock);
	if (!k->detached) {
		for (pp = &keys; *pp != k; pp = &(*pp)->next)
			;
		*pp = k->next;
		k->detached = true;
	}
	pthread_mutex_unlock(&keys_lock);
	key_put(k);
	f->key = NULL;
}

/* On the writing thread: through its own ring (writeback.c), or, without
 * one, pwrite() at once. */
static int file_write(struct luffd_store *s, struct luffd__wreq *w)
{
	struct file_store *f = F(s);
	struct io_uring_sqe *sqe = luffd__wreq_sqe(w);
	ssize_t n;

	if (sqe) {
		io_uring_prep_write(sqe, f->wfd, w->buf, (unsigned int)w->len,
				    w->off);
		return 0;
	}
	n = pwrite(f->wfd, w->buf, w->len, (off_t)w->off);
	luffd__wreq_done(w, n < 0 ? -errno : n);
	return 0;
}

static int file_flush(struct luffd_store *s, uint64_t deadline)
{
	(void)deadline; /* a local fdatasync() always returns */
	return fdatasync(F(s)->wfd) < 0 ? -errno : 0;
}

static void file_destroy(struct luffd_store *s)
{
	struct file_store *f = F(s);

	key_put(f->key);
	if (f->wfd >= 0 && f->wfd != f->fd)
		close(f->wfd);
	if (f->fd >= 0)
		close(f->fd);
	if (f->dfd >= 0)
		close(f->dfd);
	free(f);
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

/* The same for buffered writes (fd open O_RDWR with O_DIRECT). */
static int reopen_write(int fd)
{
	char path[64];
	int nfd;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	nfd = open(path, O_RDWR | O_CLOEXEC);
	return nfd < 0 ? -errno : nfd;
}

static const struct luffd__store_ops file_ops = {
	.read = file_read,
	.ring_done = file_ring_done,
	.cancel = file_cancel,
	.hole = file_hole,
	.write = file_write,
	.flush = file_flush,
	.unshare = file_unshare,
	.destroy = file_destroy,
};

#define FILE_FLAGS (LUFFD_FILE_DIRECT | LUFFD_FILE_CACHED | LUFFD_FILE_WRITE)

int luffd_store_file(int fd, unsigned int flags, struct luffd_store **storep)
{
	unsigned int caps = LUFFD__CAP_LIVE_SIZE | LUFFD__CAP_READ_AROUND;
	struct luffd_store *s;
	struct file_store *f;
	struct stat st;
	uint64_t size;
	int acc, nfd;
	bool direct;

	if (storep)
		*storep = NULL;
	if (!storep || (flags & ~FILE_FLAGS))
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
	if ((flags & LUFFD_FILE_WRITE) && (acc & O_ACCMODE) != O_RDWR)
		return -EBADF;
	if ((acc & O_ACCMODE) == O_RDWR)
		caps |= LUFFD__CAP_WRITE | LUFFD__CAP_WRITE_INPLACE;
	if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
		caps |= LUFFD__CAP_CHUNKS;
		/* Fewer blocks than bytes: the file has holes. */
		if ((uint64_t)st.st_blocks * 512 < size)
			caps |= LUFFD__CAP_HOLES;
	} else if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &size) < 0)
			return -errno;
		caps |= LUFFD__CAP_CHUNKS;
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
	f = calloc(1, sizeof(*f));
	s = f ? luffd__store_new(&file_ops, caps, size, f) : NULL;
	if (!s) {
		free(f);
		close(nfd);
		return -ENOMEM;
	}
	f->fd = nfd;
	f->dfd = -1;
	f->wfd = -1;
	if (caps & LUFFD__CAP_WRITE) {
		/* Writes are buffered: O_DIRECT would need aligned lengths,
		 * and the last page of a file ends where the file does. */
		f->wfd = direct ? reopen_write(fd) : nfd;
		if (f->wfd < 0) {
			int err = f->wfd;

			f->wfd = -1;
			luffd_store_put(s);
			return err;
		}
	}
	f->key = key_get(st.st_dev, st.st_ino);
	if (f->key) {
		s->id = f->key->id;
		s->nregions = &f->key->nregions;
	}
	atomic_init(&f->dfd_refused, false);
	f->direct_io = direct;
	/* Cold chunks: a second description with O_DIRECT, if the file
	 * system takes it (tmpfs does not: then everything is buffered). */
	if (!direct && !(flags & LUFFD_FILE_CACHED) && S_ISREG(st.st_mode)) {
		nfd = reopen_direct(fd);
		f->dfd = nfd < 0 ? -1 : nfd;
	}
	*storep = s;
	return 0;
}

int luffd_store_open(const char *path, unsigned int flags,
		     struct luffd_store **storep)
{
	int fd, err;

	if (storep)
		*storep = NULL;
	if (!path || !storep || (flags & ~FILE_FLAGS))
		return -EINVAL;
	fd = open(path, ((flags & LUFFD_FILE_WRITE) ? O_RDWR : O_RDONLY) |
			O_CLOEXEC |
			((flags & LUFFD_FILE_DIRECT) ? O_DIRECT : 0));
	if (fd < 0)
		return -errno;
	/* Opened as wanted: luffd_store_file() takes a duplicate. */
	err = luffd_store_file(fd, flags, storep);
	close(fd);
	return err;
}
