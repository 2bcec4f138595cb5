/* SPDX-License-Identifier: MIT */
/*
 * Stores with a set latency (--store async|callback --store-latency-us N):
 * the file's bytes, read into memory beforehand, served only after N us,
 * as a source machine would serve them across a network.
 *
 *  - async: luffd_store_async().  read() queues the request and returns;
 *    a server thread answers each one N us after it arrived (all have the
 *    same delay, so arrival order is due order: a FIFO), from memory,
 *    with luffd_request_complete().  Any number are in flight at once.
 *  - callback: luffd_store_callback() whose fill() sleeps N us and then
 *    copies: the synchronous store a post-copy prototype writes first,
 *    overlapped only by libuffd's worker pool.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "bench.h"

#define QCAP 8192 /* requests in flight, at most (queue_depth is 64) */

struct lreq {
	uint64_t id, off, due, since;
	const struct iovec *iov;
	int iovcnt;
	bool cancel;      /* in the inbox: cancel request id */
	bool cancelled;
};

/*
 * The asynchronous side.  read() runs on a libuffd handler thread, so it
 * must be cheap: it appends to the inbox under a lock held for a copy,
 * and wakes the server only when it sleeps with nothing to do.  The server
 * takes the whole inbox in one swap per wake-up, and keeps its requests in
 * a FIFO of its own (every request has the same delay, so arrival order is
 * due order).  Cancels travel through the inbox too.
 */
struct latstore {
	const char *mem;
	uint64_t size, lat_ns;
	struct luffd_store *store; /* async: for luffd_request_complete() */
	pthread_mutex_t lock;
	pthread_cond_t cv;
	struct lreq *in, *spare;   /* the inbox (lock), the server's spare */
	size_t nin;
	bool idle;                 /* the server waits on cv (lock) */
	bool stop;
	struct lreq q[QCAP];       /* the server's FIFO */
	size_t head, n;
	pthread_t thread;
	bool started;
	/* Each request's delay as served (arrival to answer): a timer
	 * wakes late on a VM, so the store is slower than it was asked. */
	uint32_t *delays;
	atomic_size_t ndelays;
	size_t cap;
};

static void note_delay(struct latstore *s, uint64_t since)
{
	size_t i = atomic_fetch_add_explicit(&s->ndelays, 1,
					     memory_order_relaxed);
	uint64_t d = now_ns() - since;

	if (i < s->cap)
		s->delays[i] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

/* Sleep until CLOCK_MONOTONIC time t, with 1 ns of timer slack (the
 * default 50 us would make every request that much later). */
static void sleep_until(uint64_t t)
{
	static _Thread_local bool slack_set;
	struct timespec ts;

	if (!slack_set) {
		prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
		slack_set = true;
	}
	ts = (struct timespec){ .tv_sec = (time_t)(t / 1000000000ull),
				.tv_nsec = (long)(t % 1000000000ull) };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) ==
	       EINTR)
		;
}

/* Copy [off, off+len) of the file into buf, zeroes past its end; the
 * bytes of the file that were there. */
static size_t copy_out(const struct latstore *s, uint64_t off, void *buf,
		       size_t len)
{
	size_t have = off < s->size ? (size_t)(s->size - off) : 0;

	if (have > len)
		have = len;
	memcpy(buf, s->mem + off, have);
	memset((char *)buf + have, 0, len - have);
	return have;
}

static ssize_t answer(const struct latstore *s, const struct lreq *r)
{
	uint64_t off = r->off;
	size_t total = 0;

	for (int i = 0; i < r->iovcnt; i++) {
		total += copy_out(s, off, r->iov[i].iov_base,
				  r->iov[i].iov_len);
		off += r->iov[i].iov_len;
	}
	return total ? (ssize_t)total : -ENXIO;
}

/* Move the inbox into the FIFO (server thread). */
static void take_inbox(struct latstore *s, struct lreq *in, size_t nin)
{
	for (size_t i = 0; i < nin; i++) {
		if (!in[i].cancel) {
			if (s->n < QCAP)
				s->q[(s->head + s->n++) % QCAP] = in[i];
			continue;
		}
		for (size_t k = 0; k < s->n; k++) {
			struct lreq *r = &s->q[(s->head + k) % QCAP];

			if (r->id == in[i].id)
				r->cancelled = true;
		}
	}
}

static void *server(void *arg)
{
	struct latstore *s = arg;

	for (;;) {
		struct lreq *in;
		size_t nin;

		pthread_mutex_lock(&s->lock);
		while (!s->nin && !s->n && !s->stop) {
			s->idle = true;
			pthread_cond_wait(&s->cv, &s->lock);
			s->idle = false;
		}
		in = s->in;
		nin = s->nin;
		s->in = s->spare;
		s->nin = 0;
		pthread_mutex_unlock(&s->lock);
		take_inbox(s, in, nin);
		s->spare = in; /* only the server swaps it back in */
		if (!s->n) {
			if (s->stop)
				break;
			continue;
		}
		while (s->n) {
			struct lreq *r = &s->q[s->head];

			if (!r->cancelled && r->due > now_ns()) {
				sleep_until(r->due);
				break; /* look at the inbox again first */
			}
			s->head = (s->head + 1) % QCAP;
			s->n--;
			if (r->cancelled)
				continue;
			note_delay(s, r->since);
			luffd_request_complete(s->store, r->id, answer(s, r));
		}
	}
	return NULL;
}

static int async_read(void *arg, const struct luffd_request *req)
{
	struct latstore *s = arg;
	struct lreq r = { .id = req->id, .off = req->offset,
			  .since = now_ns(), .iov = req->iov,
			  .iovcnt = req->iovcnt };
	bool wake;

	r.due = r.since + s->lat_ns;
	pthread_mutex_lock(&s->lock);
	if (s->nin == QCAP) {
		pthread_mutex_unlock(&s->lock);
		return -EAGAIN;
	}
	s->in[s->nin++] = r;
	wake = s->idle;
	pthread_mutex_unlock(&s->lock);
	if (wake)
		pthread_cond_signal(&s->cv);
	return 0;
}

static void async_cancel(void *arg, const struct luffd_request *req)
{
	struct latstore *s = arg;
	bool wake;

	pthread_mutex_lock(&s->lock);
	if (s->nin < QCAP)
		s->in[s->nin++] = (struct lreq){ .id = req->id, .cancel = true };
	wake = s->idle;
	pthread_mutex_unlock(&s->lock);
	if (wake)
		pthread_cond_signal(&s->cv);
}

static ssize_t cb_fill(void *arg, uint64_t off, void *buf, size_t len)
{
	struct latstore *s = arg;
	uint64_t since = now_ns();
	size_t have;

	if (s->lat_ns)
		sleep_until(since + s->lat_ns);
	note_delay(s, since);
	have = copy_out(s, off, buf, len);
	return have ? (ssize_t)have : -ENXIO;
}

int latstore_new(enum store_kind kind, const char *mem, uint64_t size,
		 uint64_t lat_us, struct latstore **sp,
		 struct luffd_store **storep)
{
	struct latstore *s = calloc(1, sizeof(*s));
	int err;

	*sp = NULL;
	*storep = NULL;
	if (!s)
		return -ENOMEM;
	s->mem = mem;
	s->size = size;
	s->lat_ns = lat_us * 1000;
	s->cap = (size_t)(size / 4096) + 4096;
	s->delays = malloc(s->cap * sizeof(*s->delays));
	s->in = malloc(QCAP * sizeof(*s->in));
	s->spare = malloc(QCAP * sizeof(*s->spare));
	if (!s->delays || !s->in || !s->spare) {
		free(s->delays);
		free(s->in);
		free(s->spare);
		free(s);
		return -ENOMEM;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cv, NULL);
	if (kind == STORE_ASYNC) {
		struct luffd_async_ops ops = {
			.sz = sizeof(ops), .read = async_read,
			.cancel = async_cancel, .size = size,
		};

		err = luffd_store_async(&ops, s, &s->store);
		if (!err) {
			err = -pthread_create(&s->thread, NULL, server, s);
			s->started = !err;
		}
		*storep = s->store;
	} else {
		struct luffd_callback_ops ops = {
			.sz = sizeof(ops), .fill = cb_fill, .size = size,
		};

		err = luffd_store_callback(&ops, s, storep);
	}
	*sp = s;
	return err;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

void latstore_delay(struct latstore *s, uint64_t *p50_ns, double *mean_ns)
{
	size_t n = atomic_load(&s->ndelays);
	double sum = 0;

	if (n > s->cap)
		n = s->cap;
	*p50_ns = 0;
	*mean_ns = 0;
	if (!n)
		return;
	qsort(s->delays, n, sizeof(*s->delays), cmp_u32);
	for (size_t i = 0; i < n; i++)
		sum += s->delays[i];
	*p50_ns = s->delays[n / 2];
	*mean_ns = sum / (double)n;
}

void latstore_free(struct latstore *s)
{
	if (!s)
		return;
	if (s->started) {
		pthread_mutex_lock(&s->lock);
		s->stop = true;
		pthread_cond_signal(&s->cv);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->thread, NULL);
	}
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cv);
	free(s->delays);
	free(s->in);
	free(s->spare);
	free(s);
}
