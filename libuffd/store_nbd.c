/* SPDX-License-Identifier: MIT */
/*
 * NBD store: pages from an NBD server through libnbd.
 *
 * Connections are made at creation (nbd_connect_uri(), which blocks for
 * the handshake): one, or NBD_CONNS where the server offers multi-conn (its
 * connections then see one another's writes, so any may serve any
 * request).  Demand faults and read-ahead (which a sequential reader waits
 * for) have the first connection; prefetch and the push share the others,
 * so that a thread's page never waits in the socket behind megabytes of
 * background replies (QEMU's post-copy preempt channel, for the same
 * reason).
 *
 * The first connection is driven from the handlers' rings: a request
 * becomes one nbd_aio_pread_structured() per iovec, issued on the handler
 * thread and returning at once; the handler that issued a command polls
 * the socket (luffd__cq_poll()), and the poll's completion hands the
 * socket's readiness to libnbd (nbd_aio_notify_read/write), which reads
 * the replies in and runs their callbacks; the last one completes the
 * request.  No thread blocks per request, and none of libuffd's is spent
 * on the socket while nothing is in flight.
 *
 * The others are driven by a thread of the store's own, at nice 10: the
 * handler queues a background request to it and goes on, and the store
 * thread issues it, reads the replies in (the copy from the socket, which
 * would otherwise take the handler from its demand faults) and completes
 * the requests through the completion queue, as an asynchronous store
 * does.  The handler never touches those connections: libnbd holds a
 * handle's lock while it reads replies in, and a stream of background
 * replies kept a handler issuing on one waiting for 10 ms at a time.
 *
 * Structured replies: a hole reads as zeroes, and a request that was hole
 * from end to end answers 0 (its fault is ZERO).  A server error fails
 * the request (its pages are read again alone, and fail alone).  A server
 * that stops answering is the timeout's business (read_timeout_ms): libnbd
 * cannot cancel a command, so a cancelled request's buffers stay the
 * connection's until the reply, as for any store; a server that dies
 * retires every command in flight with an error (ENOTCONN).
 *
 * Writes (write-back regions; the export must be writable on every
 * connection) come from the writer's thread and go to the store thread,
 * which sends them with nbd_aio_pwrite(); their callbacks complete them
 * (luffd__wreq_done()), from whichever thread reads the reply in.  With
 * multi-conn they share the background connections round-robin, so a
 * write-back never queues in front of a fault's read.  With one
 * connection the store thread is started at the first write and sends
 * them on it, polling its socket while they are out, beside the handlers
 * that poll it for their reads (libnbd's handle lock orders the calls;
 * conn_read() keeps two readers from confusing libnbd); that thread then
 * keeps its priority, since it may read a fault's reply in.  Not in
 * place (no LUFFD__CAP_WRITE_INPLACE): a server may stop answering, so
 * writeback.c gives a copy and stops waiting after read_timeout_ms.  A
 * write the writer gave up on is still out (NBD cannot cancel one): a
 * later write of the same bytes waits until it is answered, or the stale
 * one could land last.  A server error fails the write with its errno; a
 * dead connection fails it at once (ENOTCONN).
 *
 * Durability (LUFFD_MSYNC_DURABLE, flush()): NBD_CMD_FLUSH on every
 * connection that carried a write, where the server takes it; else FUA on
 * every write where it takes that (each is durable when answered); else
 * nothing (a server with neither says it has no cache to flush: the Linux
 * NBD client and QEMU take its answered writes as durable).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "req.h"
#include "store.h"
#include "util.h"
#include "writeback.h"

#ifdef LUFFD_HAVE_NBD
#include <libnbd.h>

/* Connections at most (where the server offers multi-conn). */
#define NBD_CONNS 4

struct nbd_conn;

/* One poller per handler that issued on a connection (kept until the
 * store goes: a few dozen bytes per context). */
struct nbd_poller {
	struct luffd__poller p;    /* first: poll_done() gets &p */
	struct nbd_conn *c;
	struct nbd_poller *next;
};

struct nbd_conn {
	struct nbd_handle *h;
	int fd;
	struct nbd_poller *pollers; /* the store's lock */
	/* Held around every nbd_aio_notify_read() (see conn_read()). */
	pthread_mutex_t rlock;
	bool shared;                /* more than one thread reads it in
				       (rlock) */
	atomic_uint wout;           /* the store thread's writes and flushes
				       out on it */
	bool wrote;                 /* it carried a write (store thread) */
};

struct nbd_flush;

/* A write or a flush, issued by the store thread. */
struct nbd_cmd {
	struct nbd_cmd *next, *prev; /* queued, held or out (qlock) */
	struct nbd_cmd *go;          /* held_go()'s list */
	struct nbd_store *n;
	int conn;
	struct luffd__wreq *w;       /* a write, or NULL: a part of */
	struct nbd_flush *f;
};

/* One flush(): a part per connection flushed, and one for the store
 * thread while it issues them.  Freed by the last of the caller (who may
 * leave at its deadline) and the parts. */
struct nbd_flush {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	int left;                    /* parts not answered */
	int err;                     /* the first error, an errno */
	bool waiting;                /* the caller has not left */
	struct nbd_cmd issue;
	struct nbd_cmd part[NBD_CONNS];
};

struct nbd_store {
	pthread_mutex_t lock;   /* pollers; starting the thread */
	int nconn;
	struct nbd_conn conn[NBD_CONNS];
	bool can_flush;         /* the server takes NBD_CMD_FLUSH */
	bool fua;               /* no flush, but FUA: every write has it */
	/* The thread driving connections 1.. (nconn > 1, from creation)
	 * and the writes (with one connection, from the first write):
	 * woken through evfd when work was queued for it or the store
	 * goes. */
	pthread_t bg;
	int evfd;
	atomic_bool bg_on, stop;
	pthread_mutex_t qlock;  /* requests for it, linked by priv; its
				   commands; the commands out */
	struct luffd__req *qhead, *qtail;
	struct nbd_cmd *chead, *ctail; /* writes and flushes queued */
	struct nbd_cmd *held;   /* writes waiting for an earlier write of
				   the same bytes to be answered */
	unsigned int nheld;
	struct nbd_cmd *out;    /* writes and flush parts issued */
	unsigned int rr;        /* its connection for the next (its own) */
};

static struct nbd_store *N(struct luffd_store *s)
{
	return s->priv;
}

/* The last part of r is in: answer it. */
static void part_done(struct luffd__req *r, int err)
{
	if (err) {
		int zero = 0;

		atomic_compare_exchange_strong(&r->part_err, &zero, err);
	}
	if (atomic_fetch_sub(&r->parts, 1) != 1)
		return;
	err = atomic_load(&r->part_err);
	if (err)
		luffd__req_complete(r, -err);
	else if (!atomic_load(&r->part_data))
		luffd__req_complete(r, 0); /* a hole end to end: ZERO */
	else
		luffd__req_complete(r, (int64_t)r->done);
}

static int chunk_cb(void *arg, const void *subbuf, size_t count,
		    uint64_t offset, unsigned int status, int *error)
{
	struct luffd__req *r = arg;

	(void)offset;
	(void)error;
	if (status == LIBNBD_READ_DATA)
		atomic_fetch_add(&r->part_data, count);
	else if (status == LIBNBD_READ_HOLE)
		memset((void *)(uintptr_t)subbuf, 0, count); /* in r's buffer */
	return 0;
}

static int done_cb(void *arg, int *error)
{
	part_done(arg, *error);
	return 1; /* retire the command */
}

/*
 * Hand libnbd the socket of c to read replies from.  libnbd told of a
 * readable socket that holds nothing (another thread read the reply in
 * first) stays in REPLY.START until the next reply comes, and holds every
 * command issued meanwhile unsent (libnbd 1.14 to at least 1.15.12); with
 * nothing else in flight, for ever.  So once more than one thread polls c
 * (several handlers, or the store thread writing on the only connection),
 * a zero-timeout poll under rlock, which every reader takes, must still
 * see the socket readable; before that, rlock alone (uncontended) keeps
 * the switch from racing with a reader.  check: look whatever the case (a
 * poll that failed says nothing of the socket).
 */
static void conn_read(struct nbd_conn *c, bool check)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };

	pthread_mutex_lock(&c->rlock);
	if (!(check || c->shared) || poll(&p, 1, 0) > 0)
		nbd_aio_notify_read(c->h);
	pthread_mutex_unlock(&c->rlock);
}

/* From now on, c is read by more than one thread. */
static void conn_share(struct nbd_conn *c)
{
	pthread_mutex_lock(&c->rlock);
	c->shared = true;
	pthread_mutex_unlock(&c->rlock);
}

static struct nbd_poller *poller_of(struct luffd_store *s,
				    struct nbd_conn *c, struct luffd__cq *cq)
{
	struct nbd_store *n = N(s);
	struct nbd_poller *np;

	pthread_mutex_lock(&n->lock);
	for (np = c->pollers; np && np->p.cq != cq; np = np->next)
		;
	if (!np) {
		np = calloc(1, sizeof(*np));
		if (np) {
			np->p.store = s;
			np->p.cq = cq;
			np->p.fd = c->fd;
			np->c = c;
			np->next = c->pollers;
			if (c->pollers)
				conn_share(c); /* a second handler */
			c->pollers = np;
		}
	}
	pthread_mutex_unlock(&n->lock);
	return np;
}

/* Handler thread of np: poll its socket while commands are out. */
static void arm(struct nbd_poller *np)
{
	unsigned int dir;

	if (!np || np->p.armed || nbd_aio_in_flight(np->c->h) <= 0)
		return;
	dir = nbd_aio_get_direction(np->c->h);
	luffd__cq_poll(&np->p, POLLIN |
		       (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0));
}

static int issue(struct luffd_store *s, struct nbd_conn *c,
		 struct luffd__req *r);

/* Wake the background thread: a command to send, or time to go. */
static void bg_kick(struct nbd_store *n)
{
	uint64_t one = 1;

	if (write(n->evfd, &one, sizeof(one)) < 0)
		pr_debug("nbd: eventfd: %s\n", strerror(errno));
}

/* ---- writes and flushes (the store thread's) ------------------------ */

static void flush_free(struct nbd_flush *f)
{
	pthread_mutex_destroy(&f->lock);
	pthread_cond_destroy(&f->cv);
	free(f);
}

/* A part of f answered (err: an errno, or 0). */
static void flush_part_done(struct nbd_flush *f, int err)
{
	bool last, gone;

	pthread_mutex_lock(&f->lock);
	if (err && !f->err)
		f->err = err;
	last = --f->left == 0;
	if (last)
		pthread_cond_signal(&f->cv);
	gone = last && !f->waiting;
	pthread_mutex_unlock(&f->lock);
	if (gone)
		flush_free(f);
}

/* k is over (err: an errno, or 0): tell the writer, or its flush. */
static void cmd_finish(struct nbd_cmd *k, int err)
{
	struct luffd__wreq *w = k->w;

	if (!w) {
		flush_part_done(k->f, err);
		return;
	}
	free(k);
	/* NBD writes all or nothing. */
	luffd__wreq_done(w, err ? -(int64_t)err : (int64_t)w->len);
}

static void list_add(struct nbd_cmd **head, struct nbd_cmd *k)
{
	k->prev = NULL;
	k->next = *head;
	if (*head)
		(*head)->prev = k;
	*head = k;
}

static void list_del(struct nbd_cmd **head, struct nbd_cmd *k)
{
	if (k->prev)
		k->prev->next = k->next;
	else
		*head = k->next;
	if (k->next)
		k->next->prev = k->prev;
}

/* An issued command's answer (any thread that reads replies in: the
 * store thread, or with one connection a handler too). */
static void cmd_end(struct nbd_cmd *k, int err)
{
	struct nbd_store *n = k->n;
	bool kick;

	pthread_mutex_lock(&n->qlock);
	list_del(&n->out, k);
	kick = n->nheld > 0; /* a held write may go now */
	pthread_mutex_unlock(&n->qlock);
	atomic_fetch_sub(&n->conn[k->conn].wout, 1);
	if (kick)
		bg_kick(n);
	cmd_finish(k, err);
}

static int cmd_cb(void *arg, int *error)
{
	cmd_end(arg, *error);
	return 1; /* retire the command */
}

/* The errno of a command libnbd would not take from c: ENOTCONN for a
 * dead connection (libnbd says EINVAL, the handle's state). */
static int cmd_errno(struct nbd_conn *c)
{
	int err = nbd_get_errno();

	if (nbd_aio_is_dead(c->h) == 1 || nbd_aio_is_closed(c->h) == 1)
		return ENOTCONN;
	return err > 0 ? err : EIO;
}

/* Store thread: send k (on the out list) on its connection. */
static void cmd_send(struct nbd_store *n, struct nbd_cmd *k)
{
	struct nbd_conn *c = &n->conn[k->conn];
	nbd_completion_callback cb = { .callback = cmd_cb, .user_data = k };
	int64_t r;

	atomic_fetch_add(&c->wout, 1);
	if (k->w) {
		c->wrote = true;
		r = nbd_aio_pwrite(c->h, k->w->buf, (size_t)k->w->len,
				   k->w->off, cb,
				   n->fua ? LIBNBD_CMD_FLAG_FUA : 0);
	} else {
		r = nbd_aio_flush(c->h, cb, 0);
	}
	if (r < 0) {
		/* Not issued (its callback is never called): a dead server
		 * fails the write here, at once. */
		int err = cmd_errno(c);

		pr_debug("nbd: %s: %s\n", k->w ? "pwrite" : "flush",
			 nbd_get_error());
		cmd_end(k, err);
		return;
	}
	/* k may be answered and gone already.  The rest of a payload that
	 * did not fit the socket goes out as it drains (POLLOUT). */
	if (nbd_aio_get_direction(c->h) & LIBNBD_AIO_DIRECTION_WRITE)
		nbd_aio_notify_write(c->h);
}

static bool overlap(const struct nbd_cmd *a, const struct nbd_cmd *b)
{
	return a->w && b->w && a->w->off < b->w->off + b->w->len &&
	       b->w->off < a->w->off + a->w->len;
}

/* Does k overlap a write out, or one of the held writes up to stop? */
static bool must_wait(const struct nbd_store *n, const struct nbd_cmd *k,
		      const struct nbd_cmd *stop)
{
	for (const struct nbd_cmd *o = n->out; o; o = o->next)
		if (overlap(o, k))
			return true;
	for (const struct nbd_cmd *o = n->held; o != stop; o = o->next)
		if (overlap(o, k))
			return true;
	return false;
}

/* Store thread (qlock held): k goes out now, on the next background
 * connection, or the only one. */
static void cmd_out(struct nbd_store *n, struct nbd_cmd *k)
{
	k->conn = n->nconn > 1 ? 1 + (int)(n->rr++ % (unsigned int)
					   (n->nconn - 1)) : 0;
	list_add(&n->out, k);
}

/*
 * Store thread: a write is sent only once every earlier write of the same
 * bytes was answered.  Writes that the writer gave up on (read_timeout_ms)
 * are still out, and NBD cannot cancel them: a later write-back of the
 * same pages sent at once, on another connection or to a server that runs
 * commands in parallel, could be overtaken and overwritten by the stale
 * one.  Held writes are sent in their order as the answers come.
 */
static void write_go(struct nbd_store *n, struct nbd_cmd *k)
{
	bool wait;

	pthread_mutex_lock(&n->qlock);
	wait = must_wait(n, k, NULL);
	if (wait) {
		struct nbd_cmd **pp = &n->held;

		while (*pp)
			pp = &(*pp)->next;
		k->next = NULL;
		*pp = k;
		n->nheld++;
	} else {
		cmd_out(n, k);
	}
	pthread_mutex_unlock(&n->qlock);
	if (!wait)
		cmd_send(n, k);
}

/* Store thread: the held writes that may go now, in their order. */
static void held_go(struct nbd_store *n)
{
	struct nbd_cmd *go = NULL, **tail = &go, **pp, *k;

	pthread_mutex_lock(&n->qlock);
	for (pp = &n->held; (k = *pp);) {
		if (must_wait(n, k, k)) {
			pp = &k->next;
			continue;
		}
		*pp = k->next;
		n->nheld--;
		cmd_out(n, k);
		k->go = NULL;
		*tail = k;
		tail = &k->go;
	}
	pthread_mutex_unlock(&n->qlock);
	for (struct nbd_cmd *next; go; go = next) {
		next = go->go; /* go may be answered and gone once sent */
		cmd_send(n, go);
	}
}

/* Store thread: flush every connection that carried a write.  A
 * multi-conn server promises that a flush on any connection covers the
 * writes answered on all of them; one per connection written costs little
 * more and does not lean on that. */
static void flush_go(struct nbd_store *n, struct nbd_flush *f)
{
	for (int i = 0; i < n->nconn; i++) {
		struct nbd_cmd *k = &f->part[i];

		if (!n->conn[i].wrote)
			continue;
		*k = (struct nbd_cmd){ .n = n, .conn = i, .f = f };
		pthread_mutex_lock(&f->lock);
		f->left++;
		pthread_mutex_unlock(&f->lock);
		pthread_mutex_lock(&n->qlock);
		list_add(&n->out, k);
		pthread_mutex_unlock(&n->qlock);
		cmd_send(n, k);
	}
	flush_part_done(f, 0); /* the issuing part */
}

/* The store thread: issue what was queued for it, poll every connection
 * with its commands out, hand libnbd what is ready (its callbacks complete
 * the requests and writes, from this thread). */
static void *bg_main(void *arg)
{
	struct luffd_store *s = arg;
	struct nbd_store *n = N(s);
	struct pollfd pfd[1 + NBD_CONNS];
	int idx[1 + NBD_CONNS];

	/* Background work yields the CPU to the handlers' demand faults:
	 * on a 2-vCPU machine running its server too, a push at the same
	 * priority made faults wait 4-5 ms (p99) for a CPU, at nice 10
	 * 1.3-2.4 ms (examples/postcopy, bench/README.md).  Raising one's
	 * own nice needs no privilege; if it fails, it stays as it is.
	 * With one connection this thread only writes, on the demand
	 * connection, where it may read a fault's reply in with the
	 * handle's lock held: it keeps the priority it was given. */
	if (n->nconn > 1 &&
	    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10))
		pr_debug("nbd: nice: %s\n", strerror(errno));

	while (!atomic_load(&n->stop)) {
		struct luffd__req *r, *next;
		struct nbd_cmd *c, *cnext;
		int k = 1;

		/* The requests queued for us, spread round-robin. */
		pthread_mutex_lock(&n->qlock);
		r = n->qhead;
		n->qhead = n->qtail = NULL;
		c = n->chead;
		n->chead = n->ctail = NULL;
		pthread_mutex_unlock(&n->qlock);
		for (; r; r = next) {
			next = r->priv;
			issue(s, &n->conn[1 + n->rr++ % (unsigned int)
							(n->nconn - 1)], r);
		}
		held_go(n);
		for (; c; c = cnext) {
			cnext = c->next;
			if (c->w)
				write_go(n, c);
			else
				flush_go(n, c->f);
		}

		pfd[0] = (struct pollfd){ .fd = n->evfd, .events = POLLIN };
		for (int i = 0; i < n->nconn; i++) {
			struct nbd_handle *h = n->conn[i].h;
			unsigned int dir;

			/* The first connection is the handlers' (each polls
			 * it for its own reads): polled here only while our
			 * writes are out on it.  A dead connection (its
			 * commands retired with errors) has nothing to wait
			 * for. */
			if ((i == 0 && !atomic_load(&n->conn[0].wout)) ||
			    nbd_aio_in_flight(h) <= 0)
				continue;
			dir = nbd_aio_get_direction(h);
			pfd[k] = (struct pollfd){
				.fd = n->conn[i].fd,
				.events = POLLIN |
					  (dir & LIBNBD_AIO_DIRECTION_WRITE ?
						   POLLOUT : 0) };
			idx[k++] = i;
		}
		if (poll(pfd, (nfds_t)k, -1) < 0)
			continue; /* EINTR */
		if (pfd[0].revents) {
			uint64_t v;

			if (read(n->evfd, &v, sizeof(v)) < 0)
				v = 0;
		}
		for (int j = 1; j < k; j++) {
			struct nbd_handle *h = n->conn[idx[j]].h;

			if (pfd[j].revents & (POLLIN | POLLHUP | POLLERR))
				conn_read(&n->conn[idx[j]], false);
			if ((pfd[j].revents & POLLOUT) ||
			    (nbd_aio_get_direction(h) &
			     LIBNBD_AIO_DIRECTION_WRITE))
				nbd_aio_notify_write(h);
		}
	}
	return NULL;
}

/* The store thread, from creation (multi-conn) or the first write. */
static int bg_start(struct luffd_store *s)
{
	struct nbd_store *n = N(s);
	int err = 0;

	if (atomic_load_explicit(&n->bg_on, memory_order_acquire))
		return 0;
	pthread_mutex_lock(&n->lock);
	if (!atomic_load(&n->bg_on)) {
		/* With one connection, its writes are read in on the
		 * handlers' connection. */
		if (n->nconn == 1)
			conn_share(&n->conn[0]);
		n->evfd = eventfd(0, EFD_CLOEXEC);
		if (n->evfd < 0)
			err = -errno;
		else if ((err = luffd__thread_create(&n->bg, bg_main, s))) {
			close(n->evfd);
			n->evfd = -1;
		} else {
			atomic_store_explicit(&n->bg_on, true,
					      memory_order_release);
		}
	}
	pthread_mutex_unlock(&n->lock);
	return err;
}

/* Issue r on connection c (any thread; c's commands then need polling):
 * the number of commands issued. */
static int issue(struct luffd_store *s, struct nbd_conn *c,
		 struct luffd__req *r)
{
	uint64_t off = r->pub.offset, want = 0;
	int issued = 0;

	/* Not past the export: the rest of the last page reads as zeroes
	 * (a short count). */
	for (int i = 0; i < r->pub.iovcnt; i++)
		want += r->iov[i].iov_len;
	if (off >= s->size) {
		luffd__req_complete(r, -ENXIO); /* past the export */
		return 0;
	}
	if (want > s->size - off)
		want = s->size - off;
	r->done = want;
	atomic_store(&r->part_data, 0);
	atomic_store(&r->part_err, 0);
	/* One part more than issued until all are: a reply that comes
	 * before the last is issued must not answer the request. */
	atomic_store(&r->parts, 1);
	for (int i = 0; i < r->pub.iovcnt && want; i++) {
		size_t len = r->iov[i].iov_len < want ? r->iov[i].iov_len
						       : (size_t)want;

		if (len < r->iov[i].iov_len)
			memset((char *)r->iov[i].iov_base + len, 0,
			       r->iov[i].iov_len - len);
		atomic_fetch_add(&r->parts, 1);
		if (nbd_aio_pread_structured(
			    c->h, r->iov[i].iov_base, len, off,
			    (nbd_chunk_callback){ .callback = chunk_cb,
						  .user_data = r },
			    (nbd_completion_callback){ .callback = done_cb,
						       .user_data = r },
			    0) < 0) {
			int err = nbd_get_errno();

			/* Not issued: its part is ours to end. */
			part_done(r, err ? err : EIO);
			pr_debug("nbd: pread %llu+%zu: %s\n",
				 (unsigned long long)off, len,
				 nbd_get_error());
			break;
		}
		issued++;
		off += len;
		want -= len;
	}
	part_done(r, 0);
	/* A command libnbd could not send at once (it was reading a reply
	 * in) waits for the socket to be writable: it nearly always is, so
	 * send it now rather than after the next reply. */
	if (issued && (nbd_aio_get_direction(c->h) &
		       LIBNBD_AIO_DIRECTION_WRITE))
		nbd_aio_notify_write(c->h);
	return issued;
}

static int nbd_read(struct luffd_store *s, struct luffd__req *r)
{
	struct nbd_store *n = N(s);

	if (n->nconn > 1 && r->pub.priority == LUFFD_PRIO_PREFETCH) {
		/* To the background thread (a lock and an eventfd write per
		 * background request, off the demand path). */
		r->priv = NULL;
		pthread_mutex_lock(&n->qlock);
		if (n->qtail)
			n->qtail->priv = r;
		else
			n->qhead = r;
		n->qtail = r;
		pthread_mutex_unlock(&n->qlock);
		bg_kick(n);
		return 0;
	}
	if (issue(s, &n->conn[0], r))
		arm(poller_of(s, &n->conn[0], r->cq));
	return 0;
}

static void nbd_poll_done(struct luffd_store *s, struct luffd__poller *p,
			  int res)
{
	struct nbd_poller *np = (struct nbd_poller *)p;
	struct nbd_handle *h = np->c->h;

	if (res < 0 && res != -ECANCELED)
		pr_debug("nbd: poll: %s\n", luffd_strerror(res));
	/* Replies in, and their callbacks run (a dead connection retires
	 * every command with an error); then what is left to send. */
	if (res < 0 || res & (POLLIN | POLLHUP | POLLERR))
		conn_read(np->c, res < 0);
	if ((res > 0 && (res & POLLOUT)) ||
	    (nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_WRITE))
		nbd_aio_notify_write(h);
	(void)s;
	arm(np);
}

static void nbd_cancel(struct luffd_store *s, struct luffd__req *r)
{
	/* NBD has no cancel: the reply, if it comes, is dropped. */
	(void)s;
	(void)r;
}

/* For the store thread: a write, or a flush's issuing part. */
static void cmd_queue(struct nbd_store *n, struct nbd_cmd *k)
{
	k->next = NULL;
	pthread_mutex_lock(&n->qlock);
	if (n->ctail)
		n->ctail->next = k;
	else
		n->chead = k;
	n->ctail = k;
	pthread_mutex_unlock(&n->qlock);
	bg_kick(n);
}

/* The writer's thread: to the store thread, which sends it (see
 * write_go()).  The bytes are writeback.c's copy (no CAP_WRITE_INPLACE),
 * which stays until the completion, however late. */
static int nbd_store_write(struct luffd_store *s, struct luffd__wreq *w)
{
	struct nbd_store *n = N(s);
	struct nbd_cmd *k = calloc(1, sizeof(*k));
	int err;

	if (!k)
		return -ENOMEM;
	err = bg_start(s);
	if (err) {
		free(k);
		return err;
	}
	k->n = n;
	k->w = w;
	cmd_queue(n, k);
	return 0;
}

/* Wait for f until deadline: 0, -errno of a part, or -ETIMEDOUT (f is
 * then left to its parts). */
static int flush_wait(struct nbd_flush *f, uint64_t deadline)
{
	bool gone;
	int err;

	pthread_mutex_lock(&f->lock);
	while (f->left) {
		struct timespec ts;

		if (deadline == UINT64_MAX) {
			pthread_cond_wait(&f->cv, &f->lock);
			continue;
		}
		if (luffd__now_ns() >= deadline)
			break;
		ts.tv_sec = (time_t)(deadline / 1000000000ull);
		ts.tv_nsec = (long)(deadline % 1000000000ull);
		pthread_cond_timedwait(&f->cv, &f->lock, &ts);
	}
	err = f->left ? -ETIMEDOUT : -f->err;
	f->waiting = false;
	gone = !f->left;
	pthread_mutex_unlock(&f->lock);
	if (gone)
		flush_free(f);
	return err;
}

/*
 * NBD_CMD_FLUSH on every connection that carried a write, from the store
 * thread (a synchronous nbd_flush() would hold the handle's lock until the
 * reply, stopping every handler that reads on it).  A server that cannot
 * flush has FUA on every write (then each is durable when answered) or
 * said it has no cache to flush (the Linux NBD client and QEMU take its
 * answered writes as durable): 0.
 */
static int nbd_store_flush(struct luffd_store *s, uint64_t deadline)
{
	struct nbd_store *n = N(s);
	struct nbd_flush *f;
	pthread_condattr_t ca;

	/* Without the thread, nothing was ever written. */
	if (!n->can_flush ||
	    !atomic_load_explicit(&n->bg_on, memory_order_acquire))
		return 0;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	pthread_mutex_init(&f->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&f->cv, &ca);
	pthread_condattr_destroy(&ca);
	f->left = 1;
	f->waiting = true;
	f->issue.n = n;
	f->issue.f = f;
	cmd_queue(n, &f->issue);
	return flush_wait(f, deadline);
}

/* Commands of list (linked by next) that no answer will end. */
static void cmds_cancel(struct nbd_cmd *k)
{
	for (struct nbd_cmd *next; k; k = next) {
		next = k->next;
		cmd_finish(k, ECANCELED);
	}
}

static void nbd_destroy(struct luffd_store *s)
{
	struct nbd_store *n = N(s);

	/* No poll is armed (each holds a reference), so nothing of ours
	 * waits on the sockets but the store thread. */
	if (atomic_load(&n->bg_on)) {
		atomic_store(&n->stop, true);
		bg_kick(n);
		pthread_join(n->bg, NULL);
		close(n->evfd);
	}
	for (int i = 0; i < n->nconn; i++) {
		struct nbd_conn *c = &n->conn[i];

		nbd_close(c->h);
		while (c->pollers) {
			struct nbd_poller *np = c->pollers;

			c->pollers = np->next;
			free(np);
		}
	}
	/* Writes and flushes still out (nbd_close() calls no completion):
	 * their writers gave up on them (a region, which holds the store,
	 * is gone), so ending them only frees what they hold. */
	cmds_cancel(n->chead);
	cmds_cancel(n->held);
	cmds_cancel(n->out);
	for (int i = 0; i < NBD_CONNS; i++)
		pthread_mutex_destroy(&n->conn[i].rlock);
	pthread_mutex_destroy(&n->lock);
	pthread_mutex_destroy(&n->qlock);
	free(n);
}

static const struct luffd__store_ops nbd_ops = {
	.read = nbd_read,
	.cancel = nbd_cancel,
	.poll_done = nbd_poll_done,
	.write = nbd_store_write,
	.flush = nbd_store_flush,
	.destroy = nbd_destroy,
};

/* libnbd's errno for its last error, as a negative errno (EINVAL when it
 * gave none), and its message through the print callback. */
static int nbd_fail(const char *what, const char *uri)
{
	int err = nbd_get_errno();

	pr_warn("nbd %s: %s: %s\n", uri, what, nbd_get_error());
	return err > 0 ? -err : -EINVAL;
}

int luffd_store_nbd(const char *uri, unsigned int flags,
		    struct luffd_store **storep)
{
	struct nbd_handle *h;
	struct nbd_store *n;
	struct luffd_store *s;
	bool writable = true;
	int64_t size;
	int err;

	if (storep)
		*storep = NULL;
	if (!uri || !storep || flags)
		return -EINVAL;
	h = nbd_create();
	if (!h)
		return nbd_fail("nbd_create", uri);
	if (!nbd_supports_uri(h)) {
		nbd_close(h);
		pr_warn("nbd %s: this libnbd was built without URI support\n",
			uri);
		return -EOPNOTSUPP;
	}
	if (nbd_connect_uri(h, uri) < 0) {
		err = nbd_fail("connect", uri);
		nbd_close(h);
		return err;
	}
	size = nbd_get_size(h);
	if (size < 0) {
		err = nbd_fail("size", uri);
		nbd_close(h);
		return err;
	}
	n = calloc(1, sizeof(*n));
	if (!n) {
		nbd_close(h);
		return -ENOMEM;
	}
	n->conn[0].h = h;
	n->nconn = 1;
	/* More connections where the server says they are coherent; one
	 * that fails is done without (the first one works). */
	if (nbd_can_multi_conn(h) == 1)
		while (n->nconn < NBD_CONNS) {
			struct nbd_handle *h2 = nbd_create();

			if (!h2 || nbd_connect_uri(h2, uri) < 0) {
				pr_debug("nbd %s: connection %d: %s\n", uri,
					 n->nconn, nbd_get_error());
				nbd_close(h2);
				break;
			}
			n->conn[n->nconn++].h = h2;
		}
	/* Written back to where every connection may write; never
	 * in place: a write may wait for a server that stops answering. */
	for (int i = 0; i < n->nconn; i++)
		writable &= nbd_is_read_only(n->conn[i].h) == 0;
	n->can_flush = nbd_can_flush(h) == 1;
	n->fua = !n->can_flush && nbd_can_fua(h) == 1;
	/* Chunks: a sequential stream reads 2 MiB per request, several
	 * ahead, which a connection with a round trip per request needs. */
	s = luffd__store_new(&nbd_ops, LUFFD__CAP_EMPTY_ZERO |
					       LUFFD__CAP_READ_AROUND |
					       LUFFD__CAP_CHUNKS |
					       (n->nconn > 1 ?
							LUFFD__CAP_DEMAND_LANE
							: 0) |
					       (writable ? LUFFD__CAP_WRITE
							 : 0),
			     (uint64_t)size, n);
	if (!s) {
		for (int i = 0; i < n->nconn; i++)
			nbd_close(n->conn[i].h);
		free(n);
		return -ENOMEM;
	}
	for (int i = 0; i < n->nconn; i++)
		n->conn[i].fd = nbd_aio_get_fd(n->conn[i].h);
	pthread_mutex_init(&n->lock, NULL);
	pthread_mutex_init(&n->qlock, NULL);
	for (int i = 0; i < NBD_CONNS; i++)
		pthread_mutex_init(&n->conn[i].rlock, NULL);
	n->evfd = -1;
	if (n->nconn > 1 && bg_start(s)) {
		/* Without it, the first connection does it all. */
		for (int i = 1; i < n->nconn; i++)
			nbd_close(n->conn[i].h);
		n->nconn = 1;
		s->caps &= ~LUFFD__CAP_DEMAND_LANE;
	}
	*storep = s;
	return 0;
}

#else /* !LUFFD_HAVE_NBD */

int luffd_store_nbd(const char *uri, unsigned int flags,
		    struct luffd_store **storep)
{
	if (storep)
		*storep = NULL;
	if (!uri || !storep || flags)
		return -EINVAL;
	pr_warn("nbd %s: libuffd was built without libnbd\n", uri);
	return -EOPNOTSUPP;
}

#endif
