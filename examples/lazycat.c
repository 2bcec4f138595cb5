/* SPDX-License-Identifier: MIT */
/*
 * lazycat FILE...: write each FILE to stdout by reading it through a region
 * libuffd maps lazily, byte-identical to cat(1).  -s prints the fault
 * statistics to stderr.  Options: -r BYTES largest read-ahead window
 * (0: the default), -f fixed read-ahead windows (LUFFD_RA_FIXED), -i BYTES
 * install-ahead (0: off), -c BYTES cache size, -d O_DIRECT, -p US spin
 * before sleeping (0: never), -t FILE pfaults trace.  Settings libuffd
 * refuses are usage errors (exit 2).
 *
 * The region is written out with write(2) straight from the mapping, which
 * would be a kernel-mode access (EFAULT under UFFD_USER_MODE_ONLY), so each
 * chunk is first touched from user space by copying it to a buffer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libuffd.h>

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void print_stats(const char *name, struct luffd_ctx *ctx)
{
	LUFFD_OPTS(luffd_stats, st);

	if (luffd_ctx_sync(ctx) || luffd_stats_get(ctx, &st))
		return;
	fprintf(stderr, "%s: faults minor=%" PRIu64 " major=%" PRIu64
		" zero=%" PRIu64 " error=%" PRIu64 "; reads=%" PRIu64
		" bytes_read=%" PRIu64 " readahead_pages=%" PRIu64
		" installed_ahead=%" PRIu64 " moved_pages=%" PRIu64 "\n",
		name, st.faults[LUFFD_MINOR], st.faults[LUFFD_MAJOR],
		st.faults[LUFFD_ZERO], st.faults[LUFFD_ERROR], st.reads,
		st.bytes_read, st.readahead_pages, st.installed_ahead,
		st.moved_pages);
	for (int c = 0; c < LUFFD_NR_CLASSES; c++) {
		const struct luffd_latency *l = &st.latency[c];

		if (!l->count)
			continue;
		fprintf(stderr, "  %-5s n=%-8" PRIu64 " latency ns: min=%" PRIu64
			" p50=%" PRIu64 " p90=%" PRIu64 " p99=%" PRIu64
			" p99.9=%" PRIu64 " max=%" PRIu64 "\n",
			luffd_class_name((enum luffd_class)c), l->count,
			l->min_ns, l->p50_ns, l->p90_ns, l->p99_ns, l->p999_ns,
			l->max_ns);
	}
}

static int cat_one(const char *path, const struct luffd_ctx_opts *opts,
		   unsigned int sflags, int stats, char *buf, size_t bufsz)
{
	struct luffd_store *store = NULL;
	struct luffd_ctx *ctx = NULL;
	long ps = sysconf(_SC_PAGESIZE);
	uint64_t size, maplen;
	char *map = NULL;
	int err;

	/* An NBD URI is an export to read; anything else, a file. */
	if (!strncmp(path, "nbd://", 6) || !strncmp(path, "nbds://", 7) ||
	    !strncmp(path, "nbd+unix://", 11) ||
	    !strncmp(path, "nbds+unix://", 12) ||
	    !strncmp(path, "nbd+vsock://", 12))
		err = luffd_store_nbd(path, 0, &store);
	else
		err = luffd_store_open(path, sflags, &store);
	if (err) {
		fprintf(stderr, "lazycat: %s: %s\n", path, luffd_strerror(err));
		return 1;
	}
	size = luffd_store_size(store);
	if (size == 0) { /* nothing to map, as cat prints nothing */
		luffd_store_put(store);
		return 0;
	}
	err = luffd_ctx_create(opts, &ctx);
	if (err) {
		fprintf(stderr, "lazycat: %s\n", luffd_strerror(err));
		luffd_store_put(store);
		return 1;
	}
	maplen = (size + (uint64_t)ps - 1) & ~((uint64_t)ps - 1);
	/* Writable (private: nothing reaches the file) so that a sequential
	 * read can take whole 2 MiB chunks (LUFFD_INSTALL_AUTO). */
	err = luffd_map(ctx, store, 0, maplen, PROT_READ | PROT_WRITE, 0,
			(void **)&map);
	luffd_store_put(store); /* the region holds its own reference */
	if (err) {
		fprintf(stderr, "lazycat: %s: map: %s\n", path,
			luffd_strerror(err));
		luffd_ctx_destroy(ctx);
		return 1;
	}
	for (uint64_t off = 0; off < size && !err; off += bufsz) {
		size_t n = size - off < bufsz ? (size_t)(size - off) : bufsz;

		/* The faults happen here, in file order: glibc's memcpy may
		 * copy a large block backwards, which would defeat the
		 * forward read-ahead window. */
		for (size_t i = 0; i < n; i += (size_t)ps)
			(void)*(volatile char *)(map + off + i);
		memcpy(buf, map + off, n);
		err = write_all(STDOUT_FILENO, buf, n);
	}
	if (err)
		fprintf(stderr, "lazycat: write: %s\n", strerror(-err));
	if (stats)
		print_stats(path, ctx);
	luffd_unmap(ctx, map, maplen);
	luffd_ctx_destroy(ctx);
	return err ? 1 : 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: lazycat [-s] [-d] [-f] [-r READAHEAD] "
		"[-i INSTALL_AHEAD] [-c CACHE] [-p SPIN_US] [-t TRACEFILE] "
		"FILE|NBD-URI...\n");
	exit(2);
}

int main(int argc, char **argv)
{
	LUFFD_OPTS(luffd_ctx_opts, opts);
	unsigned int sflags = 0;
	int opt, stats = 0, rc = 0, tfd = -1;
	size_t bufsz = 1 << 20;
	char *buf, *end;

	while ((opt = getopt(argc, argv, "sdfr:i:c:p:t:h")) != -1) {
		switch (opt) {
		case 's': stats = 1; break;
		case 'd': sflags |= LUFFD_FILE_DIRECT; break;
		case 'f': opts.readahead_mode = LUFFD_RA_FIXED; break;
		case 'i':
			opts.install_ahead_bytes = strtoull(optarg, &end, 0);
			if (*end)
				usage();
			if (!opts.install_ahead_bytes)
				opts.install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD;
			break;
		case 'p':
			opts.spin_us = (unsigned int)strtoul(optarg, &end, 0);
			if (*end)
				usage();
			if (!opts.spin_us)
				opts.spin_us = LUFFD_NO_SPIN;
			break;
		case 'r':
			opts.readahead_bytes = strtoull(optarg, &end, 0);
			if (*end)
				usage();
			break;
		case 'c':
			opts.cache_bytes = strtoull(optarg, &end, 0);
			if (*end)
				usage();
			break;
		case 't':
			tfd = open(optarg, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
				   0644);
			if (tfd < 0) {
				perror(optarg);
				return 1;
			}
			opts.trace_fd = tfd;
			opts.trace_format = LUFFD_TRACE_PFAULTS;
			break;
		default: usage();
		}
	}
	if (optind >= argc)
		usage();
	{
		/* Refused settings are the caller's mistake: say so before
		 * any file is opened. */
		struct luffd_ctx_opts check = opts;
		struct luffd_ctx *ctx;
		int err;

		check.trace_format = 0; /* no header from this one */
		err = luffd_ctx_create(&check, &ctx);

		if (err == -EINVAL) {
			fprintf(stderr, "lazycat: libuffd refuses these "
				"settings: %s\n", luffd_strerror(err));
			usage();
		}
		if (!err)
			luffd_ctx_destroy(ctx);
	}
	buf = malloc(bufsz);
	if (!buf)
		return 1;
	for (int i = optind; i < argc; i++)
		rc |= cat_one(argv[i], &opts, sflags, stats, buf, bufsz);
	free(buf);
	if (tfd >= 0)
		close(tfd);
	return rc;
}
