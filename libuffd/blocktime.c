/* SPDX-License-Identifier: MIT */
/*
 * Blocktime, as QEMU's post-copy reports it (migration/postcopy-ram.c):
 * per faulting thread, the time it was blocked in faults libuffd served;
 * across threads, the time at least one was blocked and the time all were.
 *
 * A fault blocks its thread from its start (today: libuffd reading the
 * message) to its end (the wake-up after the install, or libuffd letting
 * it go).  A thread's blocked time is the union of its faults' intervals:
 * a thread normally has one fault open at a time, but a retried fault can
 * queue a second message before the first is served, as QEMU notes.
 *
 * "Any" and "all" are swept over the events in the order libuffd learns
 * of them; an event stamped earlier than the last one seen (another
 * handler thread took the lock first) counts from that last one, so the
 * totals never run backwards.  Handler threads read their messages in
 * batches and register every fault of a batch before serving any, so a
 * fault served at once cannot end before its neighbours have started.
 *
 * The table is allocated with the context and never grows: the fault path
 * allocates nothing, logs nothing and makes no system call.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blocktime.h"

struct luffd__bt *luffd__bt_new(uint32_t want, bool tids)
{
	struct luffd__bt *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	pthread_mutex_init(&b->lock, NULL);
	b->want = want;
	b->tids = tids;
	return b;
}

void luffd__bt_free(struct luffd__bt *b)
{
	if (!b)
		return;
	pthread_mutex_destroy(&b->lock);
	free(b);
}

/* The event time t, never before the last one (lock held). */
static uint64_t tick(struct luffd__bt *b, uint64_t t)
{
	if (t < b->clock)
		t = b->clock;
	b->clock = t;
	return t;
}

/* After b->blocked or b->counted changed at time t (lock held). */
static void settle(struct luffd__bt *b, uint64_t t)
{
	uint32_t all_n = b->want ? b->want : b->counted;
	bool any = b->blocked > 0;
	bool all = b->tids && all_n && b->blocked >= all_n;

	if (any != b->any_on) {
		if (any)
			b->any_since = t;
		else
			b->any_ns += t - b->any_since;
		b->any_on = any;
	}
	if (all != b->all_on) {
		if (all)
			b->all_since = t;
		else
			b->all_ns += t - b->all_since;
		b->all_on = all;
	}
}

/* The entry of thread tid, added if new; LUFFD__NIL when the table is
 * full (lock held). */
static uint32_t lookup(struct luffd__bt *b, uint32_t tid)
{
	uint32_t h = (tid * 2654435761u) & (LUFFD__BT_SLOTS - 1);

	for (;; h = (h + 1) & (LUFFD__BT_SLOTS - 1)) {
		uint16_t s = b->hash[h];

		if (!s)
			break;
		if (b->thr[s - 1].tid == tid)
			return s - 1u;
	}
	/* Half the slots at most are used: the probe above always ends. */
	if (b->n == LUFFD_BLOCKTIME_MAX_THREADS)
		return LUFFD__NIL;
	b->thr[b->n] = (struct luffd__bt_thread){ .tid = tid };
	b->hash[h] = (uint16_t)(b->n + 1);
	b->counted++;
	return b->n++;
}

static uint16_t start_one(struct luffd__bt *b, uint32_t tid, uint64_t ts)
{
	uint64_t t = tick(b, ts);
	struct luffd__bt_thread *e;
	uint32_t i;

	if (!tid) {
		/* Without thread ids every fault is a thread of its own:
		 * "any" still holds, "all" cannot be told. */
		b->blocked++;
		settle(b, t);
		return LUFFD__BT_ANON;
	}
	i = lookup(b, tid);
	if (i == LUFFD__NIL) {
		b->untracked++;
		return LUFFD__BT_NONE;
	}
	e = &b->thr[i];
	if (e->library)
		return LUFFD__BT_NONE;
	e->faults++;
	if (e->depth++ == 0) {
		/* Its own stretches never overlap, whatever ts says. */
		e->since = ts > e->last_end ? ts : e->last_end;
		b->blocked++;
		settle(b, t);
	}
	return (uint16_t)(i + 1);
}

void luffd__bt_start(struct luffd__bt *b, const uint32_t *tids,
		     uint16_t *slots, size_t n, uint64_t t)
{
	if (!n)
		return;
	/* Uncontended with one handler thread; with several, each takes it
	 * once per batch of messages and once per fault served, for a few
	 * dozen instructions: counting across handlers needs one place. */
	pthread_mutex_lock(&b->lock);
	for (size_t i = 0; i < n; i++)
		slots[i] = start_one(b, tids[i], t);
	pthread_mutex_unlock(&b->lock);
}

static void end_locked(struct luffd__bt *b, uint16_t slot, uint64_t te)
{
	uint64_t t = tick(b, te);
	struct luffd__bt_thread *e;

	if (slot == LUFFD__BT_ANON) {
		b->blocked--;
		settle(b, t);
		return;
	}
	e = &b->thr[slot - 1];
	if (--e->depth)
		return;
	e->blocked_ns += te > e->since ? te - e->since : 0;
	e->last_end = te > e->since ? te : e->since;
	b->blocked--;
	settle(b, t);
}

void luffd__bt_end(struct luffd__bt *b, uint16_t slot, uint64_t t)
{
	if (slot == LUFFD__BT_NONE)
		return;
	pthread_mutex_lock(&b->lock);
	end_locked(b, slot, t);
	pthread_mutex_unlock(&b->lock);
}

void luffd__bt_forget(struct luffd__bt *b, uint16_t slot, uint64_t t)
{
	struct luffd__bt_thread *e;

	if (slot == LUFFD__BT_NONE)
		return;
	pthread_mutex_lock(&b->lock);
	end_locked(b, slot, t);
	if (slot != LUFFD__BT_ANON) {
		e = &b->thr[slot - 1];
		if (!e->library) {
			e->library = true;
			b->counted--;
			settle(b, b->clock);
		}
	}
	pthread_mutex_unlock(&b->lock);
}

/* Now, and never before an event already counted (lock held). */
static uint64_t snap_now(const struct luffd__bt *b)
{
	uint64_t now = luffd__now_ns();

	return now > b->clock ? now : b->clock;
}

static uint64_t thread_ns(const struct luffd__bt_thread *e, uint64_t now)
{
	return e->blocked_ns + (e->depth && now > e->since ? now - e->since : 0);
}

void luffd__bt_snapshot(struct luffd__bt *b, struct luffd_stats *st)
{
	uint64_t now, sum = 0, max = 0, blocked = 0;

	pthread_mutex_lock(&b->lock);
	now = snap_now(b);
	for (uint32_t i = 0; i < b->n; i++) {
		const struct luffd__bt_thread *e = &b->thr[i];
		uint64_t v;

		if (e->library)
			continue;
		v = thread_ns(e, now);
		sum += v;
		max = v > max ? v : max;
		blocked += e->depth > 0;
	}
	st->blocktime_threads_seen = b->counted;
	st->blocktime_all_threads = b->want ? b->want : b->counted;
	st->blocktime_sum_ns = sum;
	st->blocktime_max_ns = max;
	st->blocktime_any_ns = b->any_ns + (b->any_on ? now - b->any_since : 0);
	st->blocktime_all_ns = b->all_ns + (b->all_on ? now - b->all_since : 0);
	st->blocktime_blocked_now = b->tids ? blocked : b->blocked;
	st->blocktime_untracked = b->untracked;
	pthread_mutex_unlock(&b->lock);
}

int luffd__bt_threads(struct luffd__bt *b, struct luffd_thread_blocktime *out,
		      size_t n)
{
	uint64_t now;
	size_t k = 0;

	pthread_mutex_lock(&b->lock);
	now = snap_now(b);
	for (uint32_t i = 0; i < b->n; i++) {
		const struct luffd__bt_thread *e = &b->thr[i];

		if (e->library)
			continue;
		if (k < n)
			out[k] = (struct luffd_thread_blocktime){
				.tid = e->tid,
				.blocked_now = e->depth > 0,
				.blocked_ns = thread_ns(e, now),
				.faults = e->faults,
			};
		k++;
	}
	pthread_mutex_unlock(&b->lock);
	return (int)k;
}
