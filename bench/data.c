/* SPDX-License-Identifier: MIT */
/*
 * The backing file (generation and verification), the access patterns, and
 * page cache control for warm and cold runs.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/*
 * The generated file's 8-byte word at byte offset off (a multiple of 8).  A
 * hash of the offset, so any page can be checked without the file, a page
 * installed at the wrong address is caught, and no page is all zeroes.
 */
uint64_t expected_word(uint64_t off)
{
	uint64_t s = off ^ 0x75666664u; /* "uffd" */

	return splitmix64(&s);
}

/* Expected contents of page pg of the generated file, zero past its end. */
void expected_page(const struct config *cfg, uint64_t pg, void *buf)
{
	uint64_t off = pg * cfg->page;
	uint64_t *w = buf;
	size_t nw = cfg->page / 8, i;

	for (i = 0; i < nw; i++)
		w[i] = expected_word(off + i * 8);
	if (off + cfg->page > cfg->size) {
		size_t keep = off < cfg->size ? (size_t)(cfg->size - off) : 0;

		memset((char *)buf + keep, 0, cfg->page - keep);
	}
}

/* Write the generated contents over the whole of fd (cfg->size bytes). */
static int write_expected(const struct config *cfg, int fd)
{
	size_t chunk = 1u << 20;
	uint64_t off;
	char *buf = aligned_alloc(cfg->page, chunk);
	int err = 0;

	if (!buf)
		return -ENOMEM;
	for (off = 0; off < cfg->size && !err; off += chunk) {
		size_t len = cfg->size - off < chunk ? (size_t)(cfg->size - off)
						     : chunk;
		size_t done = 0, p;

		for (p = 0; p < len; p += cfg->page)
			expected_page(cfg, (off + p) / cfg->page, buf + p);
		while (done < len) {
			ssize_t w = pwrite(fd, buf + done, len - done,
					   (off_t)(off + done));

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				err = w < 0 ? -errno : -EIO;
				break;
			}
			done += (size_t)w;
		}
	}
	free(buf);
	return err;
}

int generate_file(struct config *cfg, char *dir, size_t dirlen)
{
	const char *tmp = getenv("TMPDIR");
	int fd, err;

	if (!tmp || !*tmp)
		tmp = "/tmp";
	if ((size_t)snprintf(dir, dirlen, "%s/uffd-bench.XXXXXX", tmp) >= dirlen)
		return -ENAMETOOLONG;
	if (!mkdtemp(dir))
		return -errno;
	snprintf(cfg->path, sizeof(cfg->path), "%s/data", dir);
	set_cleanup_paths(cfg->path, dir);
	fd = open(cfg->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	err = write_expected(cfg, fd);
	if (close(fd) < 0 && !err)
		err = -errno;
	return err;
}

int rewrite_file(const struct config *cfg)
{
	int fd = open(cfg->path, O_WRONLY | O_CLOEXEC), err;

	if (fd < 0)
		return -errno;
	err = write_expected(cfg, fd);
	if (!err && fsync(fd) < 0)
		err = -errno;
	if (close(fd) < 0 && !err)
		err = -errno;
	return err;
}

/* ------------------------------------------------------------------------
 * Access patterns: the order in which pages are first touched.
 * ---------------------------------------------------------------------- */

uint64_t rand_below(uint64_t *st, uint64_t n)
{
	/* Lemire's multiply-shift (a GCC/Clang 128-bit product); the bias for
	 * n < 2^32 is negligible here. */
	return (uint64_t)(((unsigned __int128)splitmix64(st) * n) >> 64);
}

static int order_zipf(const struct config *cfg, const struct pattern *pat,
		      uint32_t *order, uint64_t *np)
{
	uint64_t n = cfg->npages, i, k = 0, st = cfg->seed * 2 + 1;
	double *cdf = malloc(n * sizeof(*cdf)), sum = 0;
	uint8_t *seen = calloc(n, 1);

	if (!cdf || !seen) {
		free(cdf);
		free(seen);
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		sum += 1.0 / pow((double)(i + 1), pat->zipf_s);
		cdf[i] = sum;
	}
	/* n draws; rank r is page r, so the hot pages lead the file.  Only
	 * a page's first draw is kept: later touches of a mapped page never
	 * fault. */
	for (i = 0; i < n; i++) {
		double u = (double)(splitmix64(&st) >> 11) * 0x1p-53 * sum;
		uint64_t lo = 0, hi = n - 1;

		while (lo < hi) {
			uint64_t mid = lo + (hi - lo) / 2;

			if (cdf[mid] < u)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (!seen[lo]) {
			seen[lo] = 1;
			order[k++] = (uint32_t)lo;
		}
	}
	free(cdf);
	free(seen);
	*np = k;
	return 0;
}

int build_order(const struct config *cfg, const struct pattern *pat,
		uint32_t **orderp, uint64_t *np)
{
	uint64_t n = cfg->npages, i, k = 0, st = cfg->seed;
	uint32_t *order = malloc((n ? n : 1) * sizeof(*order));
	int err = 0;

	if (!order)
		return -ENOMEM;
	switch (pat->kind) {
	case PAT_SEQ:
		for (i = 0; i < n; i++)
			order[i] = (uint32_t)i;
		k = n;
		break;
	case PAT_RAND:
		for (i = 0; i < n; i++)
			order[i] = (uint32_t)i;
		for (i = n; i > 1; i--) {
			uint64_t j = rand_below(&st, i);
			uint32_t t = order[i - 1];

			order[i - 1] = order[j];
			order[j] = t;
		}
		k = n;
		break;
	case PAT_STRIDE: {
		uint64_t s;

		for (s = 0; s < pat->stride && s < n; s++)
			for (i = s; i < n; i += pat->stride)
				order[k++] = (uint32_t)i;
		break;
	}
	case PAT_ZIPF:
		err = order_zipf(cfg, pat, order, &k);
		break;
	}
	if (err) {
		free(order);
		return err;
	}
	*orderp = order;
	*np = k;
	return 0;
}

/* ------------------------------------------------------------------------
 * Page cache control
 * ---------------------------------------------------------------------- */

static int resident_pages(const struct config *cfg, int fd, uint64_t *res)
{
	size_t len = cfg->npages * cfg->page, i;
	unsigned char *vec;
	void *m;
	uint64_t r = 0;

	m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return -errno;
	vec = malloc(cfg->npages);
	if (!vec) {
		munmap(m, len);
		return -ENOMEM;
	}
	if (mincore(m, len, vec) < 0) {
		int err = -errno;

		free(vec);
		munmap(m, len);
		return err;
	}
	for (i = 0; i < cfg->npages; i++)
		r += vec[i] & 1;
	free(vec);
	munmap(m, len);
	*res = r;
	return 0;
}

/*
 * Drop the file from the page cache.  DONTNEED only drops clean pages that
 * nobody maps, hence the fsync first; mincore then says what is left.
 */
int make_cold(const struct config *cfg, int fd, uint64_t *resident)
{
	int err;

	if (fsync(fd) < 0 && errno != EINVAL && errno != EROFS)
		return -errno;
	err = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	if (err)
		return -err;
	return resident_pages(cfg, fd, resident);
}

/* Read the whole file so every page is in the page cache. */
int make_warm(const struct config *cfg, int fd, uint64_t *resident)
{
	size_t chunk = 1u << 20;
	char *buf = malloc(chunk);
	uint64_t off = 0;

	if (!buf)
		return -ENOMEM;
	while (off < cfg->size) {
		ssize_t r = pread(fd, buf, chunk, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		off += (uint64_t)r;
	}
	free(buf);
	return resident_pages(cfg, fd, resident);
}

/* ------------------------------------------------------------------------
 * Verification (after the timed touch, never timed)
 * ---------------------------------------------------------------------- */

static int file_page(const struct config *cfg, int fd, uint64_t pg, char *buf)
{
	size_t done = 0;

	while (done < cfg->page) {
		ssize_t r = pread(fd, buf + done, cfg->page - done,
				  (off_t)(pg * cfg->page + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		done += (size_t)r;
	}
	/* The mapping covers the file only up to its (used) size. */
	if (pg * cfg->page + cfg->page > cfg->size) {
		uint64_t off = pg * cfg->page;
		size_t keep = off < cfg->size ? (size_t)(cfg->size - off) : 0;

		if (keep < done)
			done = keep;
	}
	memset(buf + done, 0, cfg->page - done);
	return 0;
}

int verify_pages(const struct config *cfg, int fd, const char *base,
		 const uint32_t *order, uint64_t n, struct run *r)
{
	char *exp = aligned_alloc(cfg->page, cfg->page);
	uint64_t i;
	int err;

	if (!exp)
		return -ENOMEM;
	r->bad_pages = 0;
	for (i = 0; i < n; i++) {
		uint64_t pg = order[i];
		const char *got = base + pg * cfg->page;

		if (cfg->generated) {
			expected_page(cfg, pg, exp);
		} else if ((err = file_page(cfg, fd, pg, exp)) < 0) {
			free(exp);
			return err;
		}
		if (memcmp(got, exp, cfg->page) != 0) {
			size_t b = 0;

			while (got[b] == exp[b])
				b++;
			if (r->bad_pages++ == 0)
				snprintf(r->err, sizeof(r->err),
					 "verification failed: engine %s (pattern "
					 "%s, %s, repetition %u): page %" PRIu64
					 " (file offset 0x%" PRIx64 "), byte %zu: "
					 "got 0x%02x, expected 0x%02x",
					 engine_name(r->eng),
					 cfg->pats[r->pat].name,
					 r->cold ? "cold" : "warm", r->rep + 1, pg,
					 pg * cfg->page + b, b,
					 (unsigned char)got[b],
					 (unsigned char)exp[b]);
		}
	}
	free(exp);
	r->verified = r->bad_pages == 0;
	return 0;
}
