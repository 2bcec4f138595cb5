/* SPDX-License-Identifier: MIT */
/*
 * Trace writer: pfaults.stp lines and CSV, one line per fault, whole lines
 * across buffer flushes, flushed by luffd_trace_flush() and by destroy;
 * write errors reported.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <regex.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define RA (64 * 1024)

static char *tmp_path(const char *tag)
{
	char *p = malloc(strlen(t_dir) + 64);

	sprintf(p, "%s/%s-XXXXXX", t_dir, tag);
	return p;
}

/* Read a whole file into a NUL-terminated buffer. */
static char *slurp(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY);
	struct stat sb;
	char *buf;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &sb), 0);
	buf = malloc((size_t)sb.st_size + 1);
	ck_assert_int_eq(read(fd, buf, (size_t)sb.st_size), sb.st_size);
	buf[sb.st_size] = 0;
	close(fd);
	*len = (size_t)sb.st_size;
	return buf;
}

/* Split buf into lines (in place); returns the count. */
static size_t lines(char *buf, char ***out)
{
	size_t n = 0, cap = 1024;
	char **v = malloc(cap * sizeof(*v));

	for (char *l = buf; *l;) {
		char *nl = strchr(l, '\n');

		ck_assert_msg(nl != NULL, "last line not terminated: '%s'", l);
		*nl = 0;
		if (n == cap)
			v = realloc(v, (cap *= 2) * sizeof(*v));
		v[n++] = l;
		l = nl + 1;
	}
	*out = v;
	return n;
}

struct setup {
	struct luffd_ctx *ctx;
	struct luffd_store *st;
	char *path, *out;
	int fd;
	char *a;
	size_t n;
};

static void setup(struct setup *s, enum luffd_trace_format fmt, size_t n,
		  unsigned threads)
{
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = RA,
		   .readahead_mode = LUFFD_RA_FIXED, .trace_format = fmt,
		   .handler_threads = threads);

	s->n = n;
	s->path = t_make_file(n * t_ps, 0x7ace);
	s->out = tmp_path("trace");
	s->fd = mkstemp(s->out);
	ck_assert_int_ge(s->fd, 0);
	o.trace_fd = s->fd;
	s->ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_store_open(s->path, 0, &s->st), 0);
	ck_assert_int_eq(luffd_map(s->ctx, s->st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&s->a), 0);
	for (size_t i = 0; i < n; i++)
		(void)((volatile char *)s->a)[i * t_ps];
	/* The last fault is traced just after its thread is woken. */
	ck_assert_int_eq(luffd_ctx_sync(s->ctx), 0);
}

static void teardown(struct setup *s)
{
	luffd_store_put(s->st);
	if (s->ctx)
		ck_assert_int_eq(luffd_ctx_destroy(s->ctx), 0);
	close(s->fd);
	free(s->path);
	free(s->out);
}

START_TEST(pfaults_format)
{
	struct setup s;
	size_t n = t_size(4096, 512), len, nl, majors = 0;
	char *buf, **l;
	regex_t re;
	pid_t me = t_gettid();
	uint64_t last_us = 0;
	struct luffd_stats st;

	/* > 64 KiB of lines: the per-thread buffer is written several
	 * times, and every line must still be whole. */
	setup(&s, LUFFD_TRACE_PFAULTS, n, 1);
	ck_assert_int_eq(luffd_trace_flush(s.ctx), 0);
	t_stats(s.ctx, &st);
	ck_assert_uint_eq(st.trace_errors, 0);
	buf = slurp(s.out, &len);
	nl = lines(buf, &l);
	ck_assert_uint_eq(nl, n);
	ck_assert_int_eq(regcomp(&re,
				 "^[0-9]+:[0-9]+:[0-9]+:[rw]:(minor|major):[0-9]+$",
				 REG_EXTENDED | REG_NOSUB), 0);
	for (size_t i = 0; i < nl; i++) {
		unsigned long long us, tid, addr, lat;
		char rw, cls[8];

		ck_assert_msg(regexec(&re, l[i], 0, NULL, 0) == 0,
			      "line %zu: '%s'", i, l[i]);
		ck_assert_int_eq(sscanf(l[i], "%llu:%llu:%llu:%c:%7[a-z]:%llu",
					&us, &tid, &addr, &rw, cls, &lat), 6);
		/* One handler, one touching thread: lines in touch order. */
		ck_assert_uint_eq(addr, (uintptr_t)(s.a + i * t_ps));
		ck_assert_int_eq(rw, 'r');
		ck_assert_str_eq(cls, i % (RA / t_ps) ? "minor" : "major");
		majors += strcmp(cls, "major") == 0;
		if (t_feat.has_thread_id)
			ck_assert_uint_eq(tid, (unsigned long long)me);
		ck_assert_uint_ge(us, last_us);
		last_us = us;
		ck_assert_uint_lt(lat, 10ull * 1000 * 1000);
	}
	ck_assert_uint_eq(majors, n / (RA / t_ps));
	regfree(&re);
	free(l);
	free(buf);
	/* Nothing new: a second flush writes nothing. */
	ck_assert_int_eq(luffd_trace_flush(s.ctx), 0);
	buf = slurp(s.out, &nl);
	ck_assert_uint_eq(nl, len);
	free(buf);
	teardown(&s);
}
END_TEST

static uint64_t parse_u64(const char *f, int base)
{
	char *end;
	uint64_t v;

	errno = 0;
	v = strtoull(f, &end, base);
	ck_assert_msg(errno == 0 && *end == 0 && end != f, "bad number '%s'",
		      f);
	return v;
}

/* Parse a CSV line into its 7 fields (in place). */
static void csv_fields(char *line, char *f[7])
{
	int k = 0;

	f[k++] = line;
	for (char *p = line; *p; p++)
		if (*p == ',') {
			*p = 0;
			ck_assert_int_lt(k, 7);
			f[k++] = p + 1;
		}
	ck_assert_int_eq(k, 7);
}

START_TEST(csv_format)
{
	struct setup s;
	size_t n = 256, len, nl, errors = 0;
	char *buf, **l;
	uint64_t last = 0;

	setup(&s, LUFFD_TRACE_CSV, n, 1);
	/* An error fault too: a store past its end.  (Memory store of 1
	 * page mapped over 2.) */
	{
		static uint64_t mem[8192];
		struct luffd_store *ms;
		char *b;
		int sig;

		ck_assert_int_eq(luffd_store_memory(mem, t_ps, &ms), 0);
		ck_assert_int_eq(luffd_map(s.ctx, ms, 0, 2 * t_ps, PROT_READ,
					   0, (void **)&b), 0);
		luffd_store_put(ms);
		(void)((volatile char *)b)[0];
		sig = t_touch_sig(b + t_ps, 0, NULL, NULL, NULL);
		ck_assert_int_eq(sig, SIGBUS);
	}
	ck_assert_int_eq(luffd_ctx_sync(s.ctx), 0);
	ck_assert_int_eq(luffd_trace_flush(s.ctx), 0);
	buf = slurp(s.out, &len);
	nl = lines(buf, &l);
	ck_assert_uint_eq(nl, 1 + n + 2);
	ck_assert_str_eq(l[0], "time_ns,tid,addr,rw,class,latency_ns,error");
	for (size_t i = 1; i < nl; i++) {
		char *f[7];
		uint64_t t, addr;

		csv_fields(l[i], f);
		t = parse_u64(f[0], 10);
		ck_assert_uint_ge(t, last);
		last = t;
		(void)parse_u64(f[1], 10);
		ck_assert_msg(strncmp(f[2], "0x", 2) == 0, "addr '%s'", f[2]);
		addr = parse_u64(f[2], 16);
		ck_assert_uint_eq(addr % t_ps, 0);
		ck_assert_str_eq(f[3], "r");
		(void)parse_u64(f[5], 10);
		if (i <= n) {
			ck_assert_uint_eq(addr,
					  (uintptr_t)(s.a + (i - 1) * t_ps));
			ck_assert_str_eq(f[4], (i - 1) % (RA / t_ps) ? "minor"
								    : "major");
			ck_assert_str_eq(f[6], "0");
		} else if (strcmp(f[4], "error") == 0) {
			errors++;
			ck_assert_int_eq(atoi(f[6]), -ENXIO);
		} else {
			ck_assert_str_eq(f[4], "minor");
			ck_assert_str_eq(f[6], "0");
		}
	}
	ck_assert_uint_eq(errors, 1);
	free(l);
	free(buf);
	teardown(&s);
}
END_TEST

/* luffd_ctx_destroy() flushes; several handler threads each write whole
 * lines. */
START_TEST(destroy_flushes)
{
	struct setup s;
	size_t n = 512, len, nl;
	char *buf, **l;

	setup(&s, LUFFD_TRACE_CSV, n, 2);
	{
		/* More regions so both handler threads serve some. */
		void *b[3];

		for (int k = 0; k < 3; k++) {
			ck_assert_int_eq(luffd_map(s.ctx, s.st, 0, n * t_ps,
						   PROT_READ, 0, &b[k]), 0);
			for (size_t i = 0; i < n; i++)
				(void)((volatile char *)b[k])[i * t_ps];
		}
	}
	ck_assert_int_eq(luffd_ctx_destroy(s.ctx), 0);
	s.ctx = NULL;
	buf = slurp(s.out, &len);
	nl = lines(buf, &l);
	ck_assert_uint_eq(nl, 1 + 4 * n);
	ck_assert_str_eq(l[0], "time_ns,tid,addr,rw,class,latency_ns,error");
	for (size_t i = 1; i < nl; i++) {
		char *f[7];

		csv_fields(l[i], f);
		ck_assert(strcmp(f[4], "minor") == 0 ||
			  strcmp(f[4], "major") == 0);
	}
	free(l);
	free(buf);
	teardown(&s);
}
END_TEST

/* A trace fd that cannot be written: create refuses it, or the flush
 * reports the error and trace_errors counts it. */
START_TEST(write_error)
{
	size_t n = 32;
	char *path = t_make_file(n * t_ps, 1);
	int fd = open(path, O_RDONLY);
	LUFFD_OPTS(luffd_ctx_opts, o, .trace_format = LUFFD_TRACE_PFAULTS,
		   .trace_fd = fd);
	struct luffd_ctx *ctx = NULL;
	struct luffd_store *st;
	struct luffd_stats s;
	int err;
	char *a;

	ck_assert_int_ge(fd, 0);
	err = luffd_ctx_create(&o, &ctx);
	if (err) {
		ck_assert_int_eq(err, -EBADF);
		goto out;
	}
	ck_assert_int_eq(luffd_store_open(path, 0, &st), 0);
	ck_assert_int_eq(luffd_map(ctx, st, 0, n * t_ps, PROT_READ, 0,
				   (void **)&a), 0);
	for (size_t i = 0; i < n; i++)
		t_assert_page(a, i, 0, n * t_ps, 1);
	ck_assert_int_eq(luffd_trace_flush(ctx), -EBADF);
	t_stats(ctx, &s);
	ck_assert_uint_ge(s.trace_errors, 1);
	ck_assert_uint_eq(s.faults[LUFFD_ERROR], 0);
	luffd_store_put(st);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
out:
	close(fd);
	free(path);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("trace");
	TCase *tc = t_tcase(s, "trace");

	tcase_add_test(tc, pfaults_format);
	tcase_add_test(tc, csv_format);
	tcase_add_test(tc, destroy_flushes);
	tcase_add_test(tc, write_error);
	return s;
}

int main(void)
{
	return t_main(make, 0);
}
