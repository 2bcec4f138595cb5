/* SPDX-License-Identifier: MIT */
/*
 * uring-reg-bench: what io_uring's registered buffers and registered files
 * save on the reads libuffd makes, measured on this machine.
 *
 * Reads of --bs bytes at random aligned offsets of a page-cached file, --qd
 * in flight, into a 64 MiB anonymous area shaped like libuffd's cache
 * (MADV_HUGEPAGE, touched beforehand), five ways: plain IORING_OP_READ,
 * IORING_OP_READ_FIXED (the area registered as one buffer),
 * IOSQE_FIXED_FILE (the file registered), both, and no ring at all: one
 * synchronous preadv2(RWF_NOWAIT) at a time, which is how libuffd reads
 * data the page cache holds (the ring only gets reads that would block).
 * The five run interleaved, --rounds times each; the table gives each
 * one's median ns per read and its ratio to plain ring reads (below 1:
 * faster).
 *
 * Exit codes: 0 done, 1 a read or setup failed, 2 bad arguments, 77 no
 * io_uring here, or no right to register 64 MiB (RLIMIT_MEMLOCK without
 * CAP_IPC_LOCK).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define AREA (64u << 20)
#define MAX_BS 16
#define MAX_ROUNDS 101
#define NVAR 5
#define V_PREADV2 4

static const char *const var_name[NVAR] = {
	"plain", "fixed-buffer", "fixed-file", "both", "preadv2",
};

struct opts {
	const char *file;
	uint64_t size;
	uint32_t bs[MAX_BS];
	int nbs;
	unsigned int qd;
	long reads;
	int rounds;
};


static int usage_error(const char *what, const char *arg)
{
	fprintf(stderr, "uring-reg-bench: %s: %s (see --help)\n", what, arg);
	return 2;
}

/* A size (see parse_size()); 0 when malformed. */
static uint64_t size_arg(const char *s)
{
	uint64_t v;

	return parse_size(s, &v) ? 0 : v;
}

static long parse_count(const char *s, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	return errno || *end || end == s || v < 1 || v > max ? 0 : v;
}

static void help(void)
{
	puts("usage: uring-reg-bench [options]\n"
	     "  --file PATH    page-cached file to read (default: a generated one)\n"
	     "  --size SIZE    size of the generated file (default 256M)\n"
	     "  --bs LIST      read sizes, comma-separated, multiples of 4K\n"
	     "                 up to 2M (default 4K,64K,512K)\n"
	     "  --qd N         reads in flight, 1-64 (default 4)\n"
	     "  --reads N      reads per measurement (default: 64M worth,\n"
	     "                 at least 2000)\n"
	     "  --rounds N     measurements of each way, 1-101 (default 5)\n"
	     "  --help");
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "file", required_argument, NULL, 'f' },
		{ "size", required_argument, NULL, 's' },
		{ "bs", required_argument, NULL, 'b' },
		{ "qd", required_argument, NULL, 'q' },
		{ "reads", required_argument, NULL, 'r' },
		{ "rounds", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool size_set = false;
	int c;

	*o = (struct opts){ .size = 256u << 20, .qd = 4, .rounds = 5 };
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'f':
			o->file = optarg;
			break;
		case 's':
			size_set = true;
			if (!(o->size = size_arg(optarg)) ||
			    o->size < (2u << 20))
				return usage_error("--size wants 2M or more",
						   optarg);
			break;
		case 'b': {
			const char *p = optarg;

			o->nbs = 0;
			for (;;) {
				char tok[32];
				size_t n = strcspn(p, ",");
				uint64_t v = 0;

				if (n < sizeof(tok)) {
					memcpy(tok, p, n);
					tok[n] = 0;
					v = size_arg(tok);
				}
				if (!v || v % 4096 || v > (2u << 20) ||
				    o->nbs == MAX_BS)
					return usage_error(
						"--bs wants 4K multiples up to 2M",
						optarg);
				o->bs[o->nbs++] = (uint32_t)v;
				if (!p[n])
					break;
				p += n + 1;
			}
			break;
		}
		case 'q':
			if (!(o->qd = (unsigned int)parse_count(optarg, 64)))
				return usage_error("--qd wants 1-64", optarg);
			break;
		case 'r':
			if (!(o->reads = parse_count(optarg, 1L << 30)))
				return usage_error("--reads wants a count",
						   optarg);
			break;
		case 'n':
			if (!(o->rounds = (int)parse_count(optarg,
							   MAX_ROUNDS)))
				return usage_error("--rounds wants 1-101",
						   optarg);
			break;
		case 'h':
			help();
			exit(0);
		default:
			return usage_error("unknown or incomplete option",
					   argv[optind - 1]);
		}
	}
	if (o->file && size_set)
		return usage_error("--file and --size exclude each other",
				   o->file);
	if (optind < argc)
		return usage_error("unexpected argument", argv[optind]);
	if (!o->nbs) {
		o->bs[0] = 4096;
		o->bs[1] = 64 << 10;
		o->bs[2] = 512 << 10;
		o->nbs = 3;
	}
	return 0;
}

/* A file of --size bytes of pseudo-random data in $TMPDIR (or /tmp),
 * unlinked at once. */
static int make_file(uint64_t size)
{
	const char *dir = getenv("TMPDIR");
	char path[4096];
	uint64_t buf[8192], x = 0x9e3779b97f4a7c15ull;
	int fd;

	snprintf(path, sizeof(path), "%s/uring-reg-bench.XXXXXX",
		 dir && *dir ? dir : "/tmp");
	fd = mkstemp(path);
	if (fd < 0)
		return -1;
	unlink(path);
	for (uint64_t done = 0; done < size; done += sizeof(buf)) {
		for (size_t i = 0; i < 8192; i++)
			buf[i] = (x += 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull;
		if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf)) {
			close(fd);
			return -1;
		}
	}
	return fd;
}

/* Read the whole file once so that every measurement hits the page cache. */
static int warm(int fd, uint64_t size, char *buf)
{
	for (uint64_t off = 0; off < size; off += AREA) {
		size_t n = size - off < AREA ? (size_t)(size - off) : AREA;

		if (pread(fd, buf, n, (off_t)off) != (ssize_t)n)
			return -1;
	}
	return 0;
}

static uint64_t next_off(uint64_t *rng, uint64_t nblk, uint32_t bs)
{
	*rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
	return ((*rng >> 33) % nblk) * bs;
}

/* ns per read of one way (v: bit 0 fixed buffer, bit 1 fixed file, or
 * V_PREADV2). */
static double measure(struct io_uring *ring, int fd, char *area,
		      uint64_t size, uint32_t bs, const struct opts *o,
		      long reads, int v, uint64_t seed)
{
	bool fixbuf = v & 1, fixfile = v & 2;
	uint64_t nblk = size / bs, nslot = AREA / bs, rng = seed;
	long sub = 0, done = 0;
	uint64_t t0 = now_ns();

	if (v == V_PREADV2) {
		for (long i = 0; i < reads; i++) {
			struct iovec iov = {
				area + (uint64_t)(i % (long)nslot) * bs, bs
			};
			off_t off = (off_t)next_off(&rng, nblk, bs);
			ssize_t n = preadv2(fd, &iov, 1, off, RWF_NOWAIT);

			/* As libuffd does: what would block (here, only a
			 * page marked for async read-ahead) is read
			 * blocking, the ring's job in the library. */
			if (n < 0 && errno == EAGAIN)
				n = 0;
			if (n >= 0 && n < (ssize_t)bs) {
				ssize_t m = pread(fd, (char *)iov.iov_base + n,
						  bs - (size_t)n, off + n);

				n = m < 0 ? m : n + m;
			}
			if (n != (ssize_t)bs) {
				fprintf(stderr, "uring-reg-bench: preadv2 of "
					"%u bytes: %zd\n", bs, n);
				return -1;
			}
		}
		return (double)(now_ns() - t0) / (double)reads;
	}

	while (done < reads) {
		struct io_uring_cqe *cqe;
		unsigned int head, n = 0;

		while (sub - done < (long)o->qd && sub < reads) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
			uint64_t off = next_off(&rng, nblk, bs);
			char *dst = area + (uint64_t)(sub % (long)nslot) * bs;
			int file = fixfile ? 0 : fd;

			if (fixbuf)
				io_uring_prep_read_fixed(sqe, file, dst, bs,
							 off, 0);
			else
				io_uring_prep_read(sqe, file, dst, bs, off);
			if (fixfile)
				sqe->flags |= IOSQE_FIXED_FILE;
			sub++;
		}
		if (io_uring_submit_and_wait(ring, 1) < 0)
			return -1;
		io_uring_for_each_cqe(ring, head, cqe) {
			if (cqe->res != (int)bs) {
				fprintf(stderr, "uring-reg-bench: %s read of "
					"%u bytes: %d\n", var_name[v], bs,
					cqe->res);
				return -1;
			}
			n++;
		}
		io_uring_cq_advance(ring, n);
		done += n;
	}
	return (double)(now_ns() - t0) / (double)reads;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	struct opts o;
	struct io_uring ring;
	struct iovec iov;
	struct stat st;
	double ns[NVAR][MAX_ROUNDS];
	uint64_t size;
	char *area;
	int fd, err;

	if ((err = parse(argc, argv, &o)))
		return err;
	if (o.file) {
		fd = open(o.file, O_RDONLY);
		if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
			fprintf(stderr, "uring-reg-bench: %s: not a readable "
				"file\n", o.file);
			return 2;
		}
		size = (uint64_t)st.st_size;
	} else {
		fd = make_file(o.size);
		if (fd < 0) {
			perror("uring-reg-bench: generating the file");
			return 1;
		}
		size = o.size;
	}
	for (int i = 0; i < o.nbs; i++)
		if (size < o.bs[i]) {
			fprintf(stderr, "uring-reg-bench: the file is smaller "
				"than --bs %u\n", o.bs[i]);
			return 2;
		}
	area = mmap(NULL, AREA, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		perror("uring-reg-bench: mmap");
		return 1;
	}
	madvise(area, AREA, MADV_HUGEPAGE);
	memset(area, 1, AREA);
	if (warm(fd, size, area)) {
		perror("uring-reg-bench: reading the file");
		return 1;
	}
	err = io_uring_queue_init(64, &ring, 0);
	if (err) {
		fprintf(stderr, "uring-reg-bench: no io_uring: %s\n",
			strerror(-err));
		return err == -ENOSYS || err == -EPERM ? 77 : 1;
	}
	iov = (struct iovec){ area, AREA };
	if ((err = io_uring_register_buffers(&ring, &iov, 1)) ||
	    (err = io_uring_register_files(&ring, &fd, 1))) {
		fprintf(stderr, "uring-reg-bench: registering the buffer and "
			"file: %s\n", strerror(-err));
		/* Pinning 64 MiB needs CAP_IPC_LOCK or RLIMIT_MEMLOCK. */
		return err == -ENOMEM || err == -EPERM ? 77 : 1;
	}
	printf("file %llu MiB (page-cached), qd %u, %d rounds, median "
	       "ns per read (ratio to plain)\n",
	       (unsigned long long)(size >> 20), o.qd, o.rounds);
	printf("%-8s %16s %22s %22s %22s %22s\n", "bs", var_name[0],
	       var_name[1], var_name[2], var_name[3], var_name[4]);
	for (int b = 0; b < o.nbs; b++) {
		uint32_t bs = o.bs[b];
		long reads = o.reads ? o.reads : (long)(AREA / bs);
		double med[NVAR];

		if (!o.reads && reads < 2000)
			reads = 2000;
		/* Interleaved, so drift on a shared machine hits all five. */
		for (int r = 0; r < o.rounds; r++)
			for (int v = 0; v < NVAR; v++) {
				ns[v][r] = measure(&ring, fd, area, size, bs,
						   &o, reads, v,
						   0x5eed + (uint64_t)r);
				if (ns[v][r] < 0)
					return 1;
			}
		for (int v = 0; v < NVAR; v++) {
			qsort(ns[v], (size_t)o.rounds, sizeof(double),
			      cmp_double);
			med[v] = o.rounds % 2 ?
					 ns[v][o.rounds / 2] :
					 (ns[v][o.rounds / 2 - 1] +
					  ns[v][o.rounds / 2]) / 2;
		}
		printf("%-8u %16.0f", bs, med[0]);
		for (int v = 1; v < NVAR; v++)
			printf(" %14.0f (%5.3f)", med[v], med[v] / med[0]);
		printf("\n");
	}
	io_uring_queue_exit(&ring);
	munmap(area, AREA);
	close(fd);
	return 0;
}
