/* SPDX-License-Identifier: MIT */
/*
 * Staging chunks (chunk.c): sequential streams (and densely random
 * access) read 2 MiB at a time into transparent huge pages and moved into
 * place with UFFDIO_MOVE.
 */
#ifndef LUFFD_CHUNK_H
#define LUFFD_CHUNK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct luffd__loop;
struct luffd__op;
struct luffd__region;

enum { LUFFD__CHUNK_FREE = 0, LUFFD__CHUNK_INFLIGHT, LUFFD__CHUNK_READY };

enum {
	LUFFD__CHUNK_MEM_NONE = 0,  /* no page: a read must fault one in */
	LUFFD__CHUNK_MEM_FILLING,   /* being populated on an io_uring worker */
	LUFFD__CHUNK_MEM_READY,     /* populated or read into */
};

/* 2 MiB of a store read into a transparent huge page. */
struct luffd__chunk {
	uint64_t store_id;
	uint64_t off;     /* store offset of its first page */
	uint64_t tick;    /* when it became ready: the oldest goes first */
	uint32_t op;      /* INFLIGHT: the read filling it (its waiters are
			     on that read's waiters[0]) */
	uint16_t avail;   /* READY: pages [0, avail) still here; the rest
			     were moved into place */
	uint8_t state;
	uint8_t mem;      /* its memory: LUFFD__CHUNK_MEM_* */
	uint8_t whole;    /* read for a random miss: moved whole at once */
};

struct luffd__chunks {
	/* cfg->hp_chunks of them, 2 MiB each, in one 2 MiB-aligned THP
	 * mapping (data). */
	struct luffd__chunk *c;
	unsigned char *data, *map;
	size_t map_len;
	uint64_t tick;
	uint32_t populating; /* populates in flight */
};

int luffd__chunks_init(struct luffd__loop *l);
/* Unmaps the staging area unless keep (it was handed to the completion
 * queue: a read may still write into it). */
void luffd__chunks_fini(struct luffd__loop *l);

/* The 2 MiB block of r's mapping around addr: its address and store
 * offset; false when the block starts before r. */
bool luffd__chunk_of(const struct luffd__region *r, uint64_t addr,
		     uint64_t *base, uint64_t *off);
/* The staged (or being read) chunk of store id at off, or LUFFD__NIL. */
uint32_t luffd__chunk_find(struct luffd__loop *l, uint64_t id, uint64_t off);
/* Pages of r the page path may read or install from store page pg on
 * without running into the stream's chunks. */
uint64_t luffd__chunk_clip(struct luffd__loop *l, struct luffd__region *r,
			   uint64_t pg, uint64_t n);

/* Serve fault fi (its region held, r->huge) from the chunks if its block
 * is staged, being read, or the stream's next.  False: take the page
 * path. */
bool luffd__chunk_fault(struct luffd__loop *l, uint32_t fi);
/* A stream in r has filled a whole window up to store page r->ra_next:
 * from the next 2 MiB boundary of the mapping on, read it in chunks. */
void luffd__chunk_kick(struct luffd__loop *l, struct luffd__region *r);
/* Read the chunk of r at mapping address base (store offset off) whole,
 * with fault fi waiting (a random miss whose neighbours keep being used).
 * False when no chunk or read is free. */
bool luffd__chunk_read_whole(struct luffd__loop *l, struct luffd__region *r,
			     uint64_t base, uint64_t off, uint32_t fi);

/* The read of chunk op->chunk finished (total bytes, or err): its waiters
 * are served from it; those it cannot serve (past its data, a failed read
 * or move) come back on *rest, marked for the page path. */
void luffd__chunk_complete(struct luffd__loop *l, struct luffd__op *op,
			   uint64_t total, int err, uint32_t *rest);
/* The read of chunk op->chunk came back after it was cancelled. */
void luffd__chunk_late(struct luffd__loop *l, struct luffd__op *op);
/* The populate of chunk i finished with res. */
void luffd__chunk_populated(struct luffd__loop *l, uint32_t i, int res);

#endif /* LUFFD_CHUNK_H */
