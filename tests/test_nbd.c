/* SPDX-License-Identifier: MIT */
/*
 * The NBD store against a real server: nbdkit, started here on a Unix
 * socket (the file plugin over a generated file, its error filter for
 * injected errors).  Data identical to the export, 16 faulting threads,
 * pages past the end, errors while a trigger file exists, a server killed
 * and a server stopped (SIGSTOP), teardown with requests in flight, and
 * every refused URI, a push over holes (qemu-nbd) and over one or four
 * connections.  Skipped (77) without nbdkit or libnbd.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEED 0x4e

struct server {
	pid_t pid;
	char sock[256], pidf[256], uri[320];
};

/* nbdkit -U SOCK -f [args...] (read-only), ready once its socket is. */
static void start(struct server *sv, const char *const *args)
{
	static int n;
	const char *argv[32] = { "nbdkit", "-r", "-f", "--exit-with-parent",
				 "-U", NULL };
	int k = 5;

	snprintf(sv->sock, sizeof(sv->sock), "%s/nbd%d-%d.sock", t_dir,
		 (int)getpid(), n);
	snprintf(sv->pidf, sizeof(sv->pidf), "%s/nbd%d-%d.pid", t_dir,
		 (int)getpid(), n++);
	unlink(sv->pidf);
	argv[k++] = sv->sock;
	/* Written once it accepts connections (the socket exists a moment
	 * before). */
	argv[k++] = "-P";
	argv[k++] = sv->pidf;
	for (int i = 0; args[i] && k < 31; i++)
		argv[k++] = args[i];
	argv[k] = NULL;
	sv->pid = fork();
	ck_assert_int_ge(sv->pid, 0);
	if (!sv->pid) {
		int null = open("/dev/null", O_WRONLY);

		if (null >= 0) {
			dup2(null, 1);
			dup2(null, 2); /* the error filter's notes */
		}
		execvp("nbdkit", (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		struct stat st;
		int status;

		if (!stat(sv->pidf, &st) && st.st_size > 0)
			break;
		ck_assert_msg(waitpid(sv->pid, &status, WNOHANG) == 0,
			      "nbdkit exited before it listened");
		usleep(10000);
	}
	snprintf(sv->uri, sizeof(sv->uri), "nbd+unix:///?socket=%s",
		 sv->sock);
}

static void stop(struct server *sv)
{
	if (sv->pid > 0) {
		kill(sv->pid, SIGCONT);
		kill(sv->pid, SIGKILL);
		waitpid(sv->pid, NULL, 0);
	}
	sv->pid = 0;
	unlink(sv->sock);
	unlink(sv->pidf);
}

/* SIGSTOP sv and wait until it is stopped (the signal is asynchronous). */
static void pause_server(struct server *sv)
{
	char path[64], buf[256];

	kill(sv->pid, SIGSTOP);
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)sv->pid);
	for (int i = 0; i < 500; i++) {
		FILE *f = fopen(path, "r");
		char *p = NULL;

		if (f) {
			p = fgets(buf, sizeof(buf), f);
			fclose(f);
		}
		p = p ? strrchr(buf, ')') : NULL;
		if (p && p[1] == ' ' && p[2] == 'T')
			return;
		usleep(2000);
	}
	ck_abort_msg("nbdkit did not stop");
}

static struct luffd_store *open_store(const struct server *sv)
{
	struct luffd_store *s;

	ck_assert_int_eq(luffd_store_nbd(sv->uri, 0, &s), 0);
	return s;
}

/* ---- data ------------------------------------------------------------ */

START_TEST(data_identical)
{
	const size_t npg = 1024, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	const char *args[] = { "file", path, NULL };
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct server sv;
	struct luffd_store *s;
	void *m;

	start(&sv, args);
	s = open_store(&sv);
	ck_assert_uint_eq(luffd_store_size(s), len);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0, &m), 0);
	luffd_store_put(s);
	for (size_t i = 0; i < npg; i++)
		t_assert_page(m, i, 0, len, SEED);
	t_stats(ctx, &st);
	ck_assert_uint_gt(st.faults[LUFFD_MAJOR], 0);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_uint_ge(st.bytes_read, len);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	free(path);
}
END_TEST

struct toucher {
	pthread_t t;
	const char *m;
	size_t npg, first;
	uint64_t len;
	long bad;
};

static void *touch_main(void *arg)
{
	struct toucher *w = arg;
	uint64_t rs = w->first * 7919 + 1;

	for (size_t k = 0; k < w->npg / 4; k++) {
		size_t i = (size_t)(t_rand(&rs) % w->npg);

		if (t_page_diff(w->m + i * t_ps, i * t_ps, w->len, SEED) >= 0)
			w->bad++;
	}
	return NULL;
}

/* 16 threads at random pages at once: every page right, reads in flight
 * together on one connection. */
START_TEST(sixteen_threads)
{
	const size_t npg = 4096, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	const char *args[] = { "file", path, NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct toucher w[16];
	struct server sv;
	struct luffd_store *s;
	void *m;

	start(&sv, args);
	s = open_store(&sv);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0, &m), 0);
	luffd_store_put(s);
	for (int i = 0; i < 16; i++) {
		w[i] = (struct toucher){ .m = m, .npg = npg, .first = (size_t)i,
					 .len = len };
		ck_assert_int_eq(pthread_create(&w[i].t, NULL, touch_main,
						&w[i]), 0);
	}
	for (int i = 0; i < 16; i++) {
		pthread_join(w[i].t, NULL);
		ck_assert_int_eq(w[i].bad, 0);
	}
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	free(path);
}
END_TEST

/* One connection (no multi-conn) read by four handler threads (a striped
 * region), each polling its socket: every reply is read in by one of them
 * and the others must not be told of it (libnbd would then stop sending
 * until a reply came, and none would).  Every page right, no timeout. */
START_TEST(handlers_share_one_conn)
{
	const size_t npg = t_size(8192, 2048), len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	const char *args[] = { "--filter=multi-conn", "file", path,
			       "multi-conn-mode=disable", NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD,
		   .handler_threads = 4, .stripe_bytes = 64 * t_ps,
		   .read_timeout_ms = 10000);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct toucher w[8];
	struct server sv;
	struct luffd_store *s;
	void *m;

	start(&sv, args);
	s = open_store(&sv);
	ck_assert_int_eq(luffd_map(ctx, s, 0, len, PROT_READ, 0, &m), 0);
	luffd_store_put(s);
	for (int i = 0; i < 8; i++) {
		w[i] = (struct toucher){ .m = m, .npg = npg, .first = (size_t)i,
					 .len = len };
		ck_assert_int_eq(pthread_create(&w[i].t, NULL, touch_main,
						&w[i]), 0);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(w[i].t, NULL);
		ck_assert_int_eq(w[i].bad, 0);
	}
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_uint_eq(st.read_timeouts, 0);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	free(path);
}
END_TEST

/* An export of 3 pages and 100 bytes: its last page ends in zeroes, the
 * page after it gives SIGBUS. */
START_TEST(past_the_end)
{
	const uint64_t fsize = 3 * t_ps + 100;
	char *path = t_make_file(fsize, SEED);
	const char *args[] = { "file", path, NULL };
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct server sv;
	struct luffd_store *s;
	char *m = t_anon(8 * t_ps);
	int code;

	start(&sv, args);
	s = open_store(&sv);
	ck_assert_uint_eq(luffd_store_size(s), fsize);
	ck_assert_int_eq(luffd_register(ctx, m, 4 * t_ps, s, 0, 0), 0);
	for (size_t i = 0; i < 4; i++)
		t_assert_page(m, i, 0, fsize, SEED);
	ck_assert_int_eq(luffd_unregister(ctx, m, 4 * t_ps), 0);
	ck_assert_int_eq(madvise(m, 8 * t_ps, MADV_DONTNEED), 0);
	/* Registered past the end: the page after the last is SIGBUS. */
	ck_assert_int_eq(luffd_register(ctx, m, 4 * t_ps, s, t_ps, 0), 0);
	t_assert_page(m, 2, t_ps, fsize, SEED);
	ck_assert_int_eq(t_touch_sig(m + 3 * t_ps, 0, &code, NULL, NULL),
			 SIGBUS);
	t_stats(ctx, &st);
	ck_assert_uint_ge(st.faults[LUFFD_ERROR], 1);
	ck_assert_int_eq(luffd_unregister(ctx, m, 4 * t_ps), 0);
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	munmap(m, 8 * t_ps);
	free(path);
}
END_TEST

/* The error filter fails every read while its trigger file exists: those
 * pages get SIGBUS; dropped and touched again once it is gone, they are
 * served. */
START_TEST(server_errors)
{
	const size_t npg = 64, len = npg * t_ps;
	char *path = t_make_file(len, SEED), trig[300], ef[320];
	const char *args[] = { "--filter=error", "file", path, "error=EIO",
			       "error-pread-rate=100%", ef, NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct server sv;
	struct luffd_store *s;
	char *m = t_anon(len);
	int fd;

	snprintf(trig, sizeof(trig), "%s/nbd-trigger-%d", t_dir, (int)getpid());
	snprintf(ef, sizeof(ef), "error-pread-file=%s", trig);
	start(&sv, args);
	s = open_store(&sv);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	t_assert_page(m, 1, 0, len, SEED);
	fd = open(trig, O_CREAT | O_WRONLY, 0600);
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_int_eq(t_touch_sig(m + 7 * t_ps, 0, NULL, NULL, NULL),
			 SIGBUS);
	ck_assert_int_eq(t_touch_sig(m + 9 * t_ps, 0, NULL, NULL, NULL),
			 SIGBUS);
	/* Only those pages: page 1 still reads. */
	t_assert_page(m, 1, 0, len, SEED);
	unlink(trig);
	ck_assert_int_eq(madvise(m + 7 * t_ps, t_ps, MADV_DONTNEED), 0);
	t_assert_page(m, 7, 0, len, SEED);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 2);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	munmap(m, len);
	free(path);
}
END_TEST

/* ---- a server that goes away ----------------------------------------- */

/* Killed: faults in flight and after get SIGBUS, teardown returns. */
START_TEST(server_killed)
{
	const size_t npg = 256, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	const char *args[] = { "file", path, NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD,
		   .read_timeout_ms = 5000);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct server sv;
	struct luffd_store *s;
	char *m = t_anon(len);
	double t0;

	start(&sv, args);
	s = open_store(&sv);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	t_assert_page(m, 0, 0, len, SEED);
	kill(sv.pid, SIGKILL);
	waitpid(sv.pid, NULL, 0);
	sv.pid = 0;
	t0 = t_now_s();
	ck_assert_int_eq(t_touch_sig(m + 100 * t_ps, 0, NULL, NULL, NULL),
			 SIGBUS);
	ck_assert_int_eq(t_touch_sig(m + 200 * t_ps, 0, NULL, NULL, NULL),
			 SIGBUS);
	ck_assert_msg(t_now_s() - t0 < 4.0, "SIGBUS after %.2f s",
		      t_now_s() - t0);
	t_assert_page(m, 0, 0, len, SEED); /* what was served stays */
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	munmap(m, len);
	free(path);
}
END_TEST

/* Stopped (SIGSTOP): hung, not dead.  SIGBUS within read_timeout_ms, and
 * unregister and destroy return with the request still out. */
START_TEST(server_stopped)
{
	const size_t npg = 64, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	const char *args[] = { "file", path, NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD,
		   .read_timeout_ms = 300);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct t_reader r[3];
	struct server sv;
	struct luffd_store *s;
	char *m = t_anon(len);
	double t0;

	start(&sv, args);
	s = open_store(&sv);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	t_assert_page(m, 0, 0, len, SEED);
	pause_server(&sv);
	t0 = t_now_s();
	for (int i = 0; i < 3; i++)
		t_reader_start(&r[i], m + (size_t)(10 + i) * t_ps);
	for (int i = 0; i < 3; i++) {
		t_reader_join(&r[i]);
		ck_assert_int_eq(r[i].sig, SIGBUS);
	}
	ck_assert_msg(t_now_s() - t0 < 3.0, "SIGBUS after %.2f s",
		      t_now_s() - t0);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.read_timeouts, 3);
	/* A fault in flight at teardown. */
	t_reader_start(&r[0], m + 30 * t_ps);
	usleep(50000);
	t0 = t_now_s();
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	t_reader_join(&r[0]);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	ck_assert_msg(t_now_s() - t0 < 2.0, "teardown took %.2f s",
		      t_now_s() - t0);
	luffd_store_put(s);
	stop(&sv); /* SIGCONT, SIGKILL: the connection dies, the rest ends */
	munmap(m, len);
	free(path);
}
END_TEST

/* ---- holes (qemu-nbd sends them as structured-reply hole chunks) ---- */

START_TEST(holes_read_as_zero)
{
	const size_t npg = 16, len = npg * t_ps;
	char *path = t_make_file(len, SEED), pidf[300], sock[300], uri[400];
	LUFFD_OPTS(luffd_ctx_opts, o, .readahead_bytes = LUFFD_NO_READAHEAD,
		   .install_ahead_bytes = LUFFD_NO_INSTALL_AHEAD);
	struct luffd_ctx *ctx;
	LUFFD_OPTS(luffd_stats, st);
	struct luffd_store *s;
	char *m;
	pid_t pid;
	int fd;

	if (system("qemu-nbd --version >/dev/null 2>&1") != 0) {
		printf("qemu-nbd not found: holes not tested\n");
		free(path);
		return;
	}
	fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)(4 * t_ps), (off_t)(8 * t_ps))) {
		printf("no hole punching in %s: holes not tested\n", t_dir);
		close(fd);
		free(path);
		return;
	}
	close(fd);
	snprintf(pidf, sizeof(pidf), "%s/qnbd-%d.pid", t_dir, (int)getpid());
	snprintf(sock, sizeof(sock), "%s/qnbd-%d.sock", t_dir, (int)getpid());
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (!pid) {
		char pf[320];
		int null = open("/dev/null", O_WRONLY);

		if (null >= 0) {
			dup2(null, 1);
			dup2(null, 2);
		}
		snprintf(pf, sizeof(pf), "--pid-file=%s", pidf);
		execlp("qemu-nbd", "qemu-nbd", "-r", "-f", "raw", "-k", sock,
		       pf, path, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		struct stat sb;

		if (!stat(pidf, &sb) && sb.st_size > 0 && !stat(sock, &sb))
			break;
		usleep(10000);
	}
	snprintf(uri, sizeof(uri), "nbd+unix:///?socket=%s", sock);
	ctx = t_ctx(&o);
	ck_assert_int_eq(luffd_store_nbd(uri, 0, &s), 0);
	m = t_anon(len);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0, 0), 0);
	for (size_t i = 4; i < 12; i++)
		for (size_t b = 0; b < t_ps; b += 512)
			ck_assert_int_eq(m[i * t_ps + b], 0);
	t_assert_page(m, 0, 0, len, SEED);
	t_assert_page(m, 12, 0, len, SEED);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.faults[LUFFD_ZERO], 8);
	ck_assert_uint_eq(st.faults[LUFFD_MAJOR], 2);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	/* A push installs the holes as zero pages: the region completes. */
	munmap(m, len);
	m = t_anon(len);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	t_assert_page(m, 0, 0, len, SEED);
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 20000), 0);
	{
		unsigned char v[16];

		ck_assert_int_eq(mincore(m, len, v), 0);
		for (size_t i = 0; i < npg; i++)
			ck_assert_msg(v[i] & 1, "page %zu not pushed", i);
	}
	for (size_t i = 4; i < 12; i++)
		for (size_t b = 0; b < t_ps; b += 512)
			ck_assert_int_eq(m[i * t_ps + b], 0);
	for (size_t i = 12; i < npg; i++)
		t_assert_page(m, i, 0, len, SEED);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	munmap(m, len);
	free(path);
}
END_TEST

/* ---- connections and push -------------------------------------------- */

/* " Connect" lines in an nbdkit log filter's file. */
static int connects(const char *log)
{
	char line[512];
	int n = 0;
	FILE *f = fopen(log, "r");

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		n += strstr(line, " Connect ") != NULL;
	fclose(f);
	return n;
}

/* A region pushed over NBD while 4 threads fault at random: every page
 * right and present in the end; with a server that offers multi-conn the
 * store makes 4 connections (demand on its own), with one that does not,
 * one. */
static void push_over(bool multi)
{
	const size_t npg = t_size(16384, 2048), len = npg * t_ps;
	char *path = t_make_file(len, SEED), log[300], lf[320];
	const char *args[] = { "--filter=log", "--filter=multi-conn", "file",
			       path, lf, "multi-conn-mode=disable", NULL };
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct toucher w[4];
	struct server sv;
	struct luffd_store *s;
	unsigned char *v = malloc(npg);
	char *m = t_anon(len);

	snprintf(log, sizeof(log), "%s/nbdlog-%d-%d", t_dir, (int)getpid(),
		 multi);
	snprintf(lf, sizeof(lf), "logfile=%s", log);
	if (multi) { /* no multi-conn filter */
		args[1] = "file";
		args[2] = path;
		args[3] = lf;
		args[4] = NULL;
	}
	start(&sv, args);
	s = open_store(&sv);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	luffd_store_put(s);
	for (int i = 0; i < 4; i++) {
		w[i] = (struct toucher){ .m = m, .npg = npg, .first = (size_t)i,
					 .len = len };
		ck_assert_int_eq(pthread_create(&w[i].t, NULL, touch_main,
						&w[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(w[i].t, NULL);
		ck_assert_int_eq(w[i].bad, 0);
	}
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 60000), 0);
	ck_assert_int_eq(mincore(m, len, v), 0);
	for (size_t i = 0; i < npg; i++) {
		ck_assert_msg(v[i] & 1, "page %zu not pushed", i);
		t_assert_page(m, i, 0, len, SEED);
	}
	t_stats(ctx, &st);
	ck_assert_uint_gt(st.pushed, 0);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	ck_assert_int_eq(connects(log), multi ? 4 : 1);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	unlink(log);
	munmap(m, len);
	free(v);
	free(path);
}

START_TEST(push_multi_conn)
{
	push_over(true);
}
END_TEST

START_TEST(push_one_conn)
{
	push_over(false);
}
END_TEST

/* Is there a read of count bytes at off in an nbdkit log filter's file? */
static bool logged_read(const char *log, uint64_t off, uint64_t count)
{
	char line[512], want[96];
	bool found = false;
	FILE *f = fopen(log, "r");

	ck_assert_ptr_nonnull(f);
	snprintf(want, sizeof(want), " offset=0x%llx count=0x%llx ",
		 (unsigned long long)off, (unsigned long long)count);
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, " Read ") && strstr(line, want);
	fclose(f);
	return found;
}

/* A fault on a page that a push read is bringing in (each read takes
 * 300 ms at the server): with a lane for demand (multi-conn) the fault
 * reads its page alone on it; with one connection it joins the push read
 * (no read of its page alone).  Either way the data is right. */
static void overtake(bool multi)
{
	const size_t npg = 64, len = npg * t_ps;
	char *path = t_make_file(len, SEED), log[300], lf[320];
	const char *args[] = { "--filter=log", "--filter=delay",
			       "--filter=multi-conn", "file", path, lf,
			       "delay-read=300ms", "multi-conn-mode=disable",
			       NULL };
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct server sv;
	struct luffd_store *s;
	char *m = t_anon(len);

	snprintf(log, sizeof(log), "%s/nbdlog-ot-%d-%d", t_dir,
		 (int)getpid(), multi);
	snprintf(lf, sizeof(lf), "logfile=%s", log);
	if (multi) { /* no multi-conn filter */
		args[2] = "file";
		args[3] = path;
		args[4] = lf;
		args[5] = "delay-read=300ms";
		args[6] = NULL;
	}
	start(&sv, args);
	s = open_store(&sv);
	ck_assert_int_eq(luffd_register(ctx, m, len, s, 0,
					LUFFD_REGISTER_PUSH), 0);
	luffd_store_put(s);
	/* Page 0 starts the push at page 1: its first read (pages 1-16)
	 * goes out with page 0's and comes back with it; the next one
	 * (pages 17-32) is out for the next 300 ms. */
	t_assert_page(m, 0, 0, len, SEED);
	usleep(50000);
	t_assert_page(m, 20, 0, len, SEED);
	ck_assert_int_eq(luffd_push_wait(ctx, m, len, 20000), 0);
	for (size_t i = 0; i < npg; i++)
		t_assert_page(m, i, 0, len, SEED);
	ck_assert_int_eq(luffd_unregister(ctx, m, len), 0);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	ck_assert_int_eq(logged_read(log, 0, t_ps), true);
	ck_assert_int_eq(logged_read(log, 20 * t_ps, t_ps), multi);
	unlink(log);
	munmap(m, len);
	free(path);
}

START_TEST(overtake_multi_conn)
{
	overtake(true);
}
END_TEST

START_TEST(no_overtake_one_conn)
{
	overtake(false);
}
END_TEST

/* ---- refusals --------------------------------------------------------- */

START_TEST(refused)
{
	struct luffd_store *s = (void *)1;
	char uri[400];

	ck_assert_int_eq(luffd_store_nbd(NULL, 0, &s), -EINVAL);
	ck_assert_ptr_null(s);
	ck_assert_int_eq(luffd_store_nbd("nbd://localhost/", 0, NULL),
			 -EINVAL);
	s = (void *)1;
	ck_assert_int_eq(luffd_store_nbd("nbd+unix:///?socket=/x", 1, &s),
			 -EINVAL);
	ck_assert_ptr_null(s);
	/* Malformed, or a scheme that is not NBD's. */
	ck_assert_int_lt(luffd_store_nbd("not a uri", 0, &s), 0);
	ck_assert_ptr_null(s);
	ck_assert_int_lt(luffd_store_nbd("http://localhost/", 0, &s), 0);
	ck_assert_int_lt(luffd_store_nbd("nbd://[::1/", 0, &s), 0);
	/* Nobody listening. */
	snprintf(uri, sizeof(uri), "nbd+unix:///?socket=%s/none.sock", t_dir);
	ck_assert_int_lt(luffd_store_nbd(uri, 0, &s), 0);
	ck_assert_ptr_null(s);
	ck_assert_int_lt(luffd_store_nbd("nbd://127.0.0.1:1/", 0, &s), 0);
	ck_assert_ptr_null(s);
}
END_TEST

static Suite *make(void)
{
	Suite *s = suite_create("nbd");
	TCase *tc = t_tcase(s, "nbdkit");

	tcase_add_test(tc, data_identical);
	tcase_add_test(tc, sixteen_threads);
	tcase_add_test(tc, handlers_share_one_conn);
	tcase_add_test(tc, past_the_end);
	tcase_add_test(tc, server_errors);
	tcase_add_test(tc, server_killed);
	tcase_add_test(tc, server_stopped);
	tcase_add_test(tc, holes_read_as_zero);
	tcase_add_test(tc, push_multi_conn);
	tcase_add_test(tc, push_one_conn);
	tcase_add_test(tc, overtake_multi_conn);
	tcase_add_test(tc, no_overtake_one_conn);
	tcase_add_test(tc, refused);
	return s;
}

int main(void)
{
	struct luffd_store *s;

	if (luffd_store_nbd("nbd+unix:///?socket=/nonexistent", 0, &s) ==
	    -EOPNOTSUPP) {
		printf("skipped: libuffd built without libnbd\n");
		return T_SKIP;
	}
	if (system("nbdkit --version >/dev/null 2>&1") != 0) {
		printf("skipped: nbdkit not found\n");
		return T_SKIP;
	}
	return t_main(make, 0);
}
