/* SPDX-License-Identifier: MIT */
/*
 * The smallest useful libuffd program: register memory the application owns
 * and let a callback produce each page the first time it is touched, which
 * is what a lazy allocator or a post-copy receiver does.  Copy from here.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>

#include <libuffd.h>

#define LEN (64u << 20)

/* Runs on libuffd's handler thread: must not touch the registered range. */
static ssize_t fill(void *arg, uint64_t offset, void *buf, size_t len)
{
	(void)arg;
	for (size_t i = 0; i < len; i += sizeof(uint64_t)) {
		uint64_t v = (offset + i) * 2654435761u;

		memcpy((char *)buf + i, &v, sizeof(v));
	}
	return (ssize_t)len;
}

int main(void)
{
	LUFFD_OPTS(luffd_ctx_opts, opts, .readahead_bytes = 64 << 10);
	LUFFD_OPTS(luffd_callback_ops, ops, .fill = fill, .size = LEN);
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *store;
	struct luffd_ctx *ctx;
	uint64_t sum = 0;
	char *mem;
	int err;

	err = luffd_ctx_create(&opts, &ctx);
	if (err) {
		fprintf(stderr, "luffd_ctx_create: %s\n", luffd_strerror(err));
		return 1;
	}
	mem = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 1;
	err = luffd_store_callback(&ops, NULL, &store);
	if (!err)
		err = luffd_register(ctx, mem, LEN, store, 0, 0);
	luffd_store_put(store);
	if (err) {
		fprintf(stderr, "register: %s\n", luffd_strerror(err));
		return 1;
	}

	/* Touch one word in every 16th page: only those pages (and their
	 * read-ahead windows) are ever produced. */
	for (size_t off = 0; off < LEN; off += 16 * 4096)
		sum += *(volatile uint64_t *)(mem + off);

	luffd_stats_get(ctx, &st);
	printf("checksum %llu, %llu major and %llu minor faults, "
	       "p50 major latency %llu ns\n", (unsigned long long)sum,
	       (unsigned long long)st.faults[LUFFD_MAJOR],
	       (unsigned long long)st.faults[LUFFD_MINOR],
	       (unsigned long long)st.latency[LUFFD_MAJOR].p50_ns);
	luffd_unregister(ctx, mem, LEN);
	munmap(mem, LEN);
	luffd_ctx_destroy(ctx);
	return 0;
}
