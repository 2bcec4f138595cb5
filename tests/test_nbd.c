/* SPDX-License-Identifier: MIT */
/*
 * The NBD store against a real server: nbdkit, started here on a Unix
 * socket (the file plugin over a generated file, its error filter for
 * injected errors).  Data identical to the export, 16 faulting threads,
 * pages past the end, errors while a trigger file exists, a server killed
 * and a server stopped (SIGSTOP), teardown with requests in flight, and
 * every refused URI, a push over holes (qemu-nbd) and over one or four
 * connections, four handlers on one connection.  Write-back over one or
 * four connections (the file is the region after it), a read-only export
 * refused, write errors, a server killed, slow or stopped (its writes and
 * flushes given up after read_timeout_ms, each write on its own), a stale
 * write never landing last, servers without flush (FUA, or nothing).
 * Skipped (77) without nbdkit or libnbd.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
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

/* nbdkit -U SOCK -f [args...], read-only unless rw, ready once its
 * socket is. */
static void start_server(struct server *sv, bool rw,
			 const char *const *args)
{
	static int n;
	const char *argv[32] = { "nbdkit", "-f", "--exit-with-parent", "-U",
				 NULL };
	int k = 4;

	snprintf(sv->sock, sizeof(sv->sock), "%s/nbd%d-%d.sock", t_dir,
		 (int)getpid(), n);
	snprintf(sv->pidf, sizeof(sv->pidf), "%s/nbd%d-%d.pid", t_dir,
		 (int)getpid(), n++);
	unlink(sv->pidf);
	argv[k++] = sv->sock;
	if (!rw)
		argv[k++] = "-r";
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

static void start(struct server *sv, const char *const *args)
{
	start_server(sv, false, args);
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

/* ---- write-back (LUFFD_MAP_WRITEBACK over a writable export) --------- */

/* A write-back mapping of len bytes of s; false (and a note) where the
 * kernel cannot write-protect. */
static bool wb_map(struct luffd_ctx *ctx, struct luffd_store *s, size_t len,
		   char **m)
{
	int err = luffd_map(ctx, s, 0, len, PROT_READ | PROT_WRITE,
			    LUFFD_MAP_WRITEBACK, (void **)m);

	if (err == -EOPNOTSUPP) {
		printf("no write-protect here: write-back not tested\n");
		return false;
	}
	ck_assert_int_eq(err, 0);
	return true;
}

/* The first page of [m, m+len) whose bytes differ from the file at path
 * (pread), -1 when all are the same. */
static long file_diff(const char *path, const char *m, size_t len)
{
	char *buf = malloc(t_ps);
	int fd = open(path, O_RDONLY);
	long bad = -1;

	ck_assert_ptr_nonnull(buf);
	ck_assert_int_ge(fd, 0);
	for (size_t off = 0; off < len && bad < 0; off += t_ps) {
		ck_assert_int_eq(pread(fd, buf, t_ps, (off_t)off),
				 (ssize_t)t_ps);
		if (memcmp(buf, m + off, t_ps))
			bad = (long)(off / t_ps);
	}
	close(fd);
	free(buf);
	return bad;
}

/* Pages of [m, m+len) that luffd_dirty() reports (kept dirty). */
static size_t dirty_pages(struct luffd_ctx *ctx, char *m, size_t len)
{
	struct luffd_range r[64];
	ssize_t k = luffd_dirty(ctx, m, len, r, 64, LUFFD_DIRTY_KEEP);
	size_t n = 0;

	ck_assert_int_ge(k, 0);
	for (ssize_t i = 0; i < k; i++)
		n += r[i].len / t_ps;
	return n;
}

/* Lines of an nbdkit log filter's file for requests of kind verb
 * ("Write", "Flush") on connection conn (0: any), and of those how many
 * carry fua=1 (*fua, may be NULL). */
static int logged(const char *log, const char *verb, int conn, int *fua)
{
	char line[512], want[64];
	int n = 0, c;
	FILE *f = fopen(log, "r");

	ck_assert_ptr_nonnull(f);
	snprintf(want, sizeof(want), " %s id=", verb);
	if (fua)
		*fua = 0;
	while (fgets(line, sizeof(line), f)) {
		const char *p = strstr(line, "connection=");

		if (!p || !strstr(line, want) ||
		    sscanf(p, "connection=%d", &c) != 1 || (conn && c != conn))
			continue;
		n++;
		if (fua && strstr(line, " fua=1 "))
			(*fua)++;
	}
	fclose(f);
	return n;
}

struct wb_writer {
	pthread_t t;
	char *m;
	size_t npg, id;
	atomic_bool *stop;
};

/* Stamps random pages (faulting them in from the server first) until
 * told to stop. */
static void *wb_writer_main(void *arg)
{
	struct wb_writer *w = arg;
	uint64_t rs = w->id * 104729 + 3;

	for (uint64_t k = 1; !atomic_load(w->stop); k++) {
		size_t p = (size_t)(t_rand(&rs) % w->npg);
		uint64_t v = w->id << 56 | k;

		memcpy(w->m + p * t_ps + (w->id * 8 + k % 64 * 64) %
					 (t_ps - 8), &v, sizeof(v));
		if (k % 64 == 0)
			usleep(100);
	}
	return NULL;
}

/*
 * Four threads write random pages while write-backs run, then a last one:
 * the file is the region.  A durable write-back flushes every connection
 * that wrote; luffd_unmap() writes back.  With multi-conn the writes went
 * on the background connections only, spread over them; with one
 * connection, on it.
 */
static void wb_over(bool multi)
{
	const size_t npg = t_size(2048, 512), len = npg * t_ps;
	char *path = t_make_file(len, SEED), log[300], lf[320], last[64];
	const char *args[] = { "--filter=log", "--filter=multi-conn", "file",
			       path, lf, "multi-conn-mode=disable", NULL };
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct wb_writer w[4];
	atomic_bool quit = false;
	struct server sv;
	struct luffd_store *s;
	uint64_t flushes;
	char *m = NULL;
	long bad;
	int err[5];

	snprintf(log, sizeof(log), "%s/nbdlog-wb-%d-%d", t_dir, (int)getpid(),
		 multi);
	snprintf(lf, sizeof(lf), "logfile=%s", log);
	if (multi) { /* no multi-conn filter */
		args[1] = "file";
		args[2] = path;
		args[3] = lf;
		args[4] = NULL;
	}
	start_server(&sv, true, args);
	s = open_store(&sv);
	if (!wb_map(ctx, s, len, &m))
		goto out;
	for (size_t i = 0; i < 4; i++) {
		w[i] = (struct wb_writer){ .m = m, .npg = npg, .id = i + 1,
					   .stop = &quit };
		ck_assert_int_eq(pthread_create(&w[i].t, NULL, wb_writer_main,
						&w[i]), 0);
	}
	/* Checked once the writers are stopped (a failed check ends the
	 * test at once). */
	for (int i = 0; i < 5; i++) {
		usleep(20000);
		err[i] = luffd_msync(ctx, m, len, 0);
	}
	atomic_store(&quit, true);
	for (int i = 0; i < 4; i++)
		pthread_join(w[i].t, NULL);
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(err[i], 0);
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), 0);
	bad = file_diff(path, m, len);
	ck_assert_msg(bad < 0, "file page %ld is not the region's", bad);
	ck_assert_uint_eq(dirty_pages(ctx, m, len), 0);
	t_stats(ctx, &st);
	ck_assert_uint_gt(st.written_back, 0);
	ck_assert_uint_ge(st.writeback_writes, 6);
	ck_assert_uint_eq(st.writeback_errors, 0);
	ck_assert_uint_eq(st.faults[LUFFD_ERROR], 0);
	/* Durable: one flush per region. */
	flushes = st.writeback_flushes;
	m[5 * t_ps] ^= 0x5a;
	ck_assert_int_eq(luffd_msync(ctx, m, len, LUFFD_MSYNC_DURABLE), 0);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.writeback_flushes, flushes + 1);
	ck_assert_uint_eq(st.writeback_errors, 0);
	/* Unmap writes back. */
	memset(m + (npg - 1) * t_ps, 0x77, sizeof(last));
	memcpy(last, m + (npg - 1) * t_ps, sizeof(last));
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
	{
		char got[64];
		int fd = open(path, O_RDONLY);

		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(pread(fd, got, sizeof(got),
				       (off_t)((npg - 1) * t_ps)),
				 (ssize_t)sizeof(got));
		close(fd);
		ck_assert_mem_eq(got, last, sizeof(got));
	}
out:
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	if (m) {
		/* Connection 1 is the first, the demand one. */
		int writes = logged(log, "Write", 0, NULL);

		ck_assert_int_eq(connects(log), multi ? 4 : 1);
		ck_assert_int_ge(writes, 7);
		ck_assert_int_eq(logged(log, "Write", 1, NULL),
				 multi ? 0 : writes);
		for (int c = 2; multi && c <= 4; c++)
			ck_assert_int_gt(logged(log, "Write", c, NULL), 0);
		ck_assert_int_eq(logged(log, "Flush", 1, NULL), multi ? 0 : 1);
		ck_assert_int_eq(logged(log, "Flush", 0, NULL), multi ? 3 : 1);
	}
	unlink(log);
	free(path);
}

START_TEST(wb_multi_conn)
{
	wb_over(true);
}
END_TEST

START_TEST(wb_one_conn)
{
	wb_over(false);
}
END_TEST

/* A read-only export: the store cannot be written back to. */
START_TEST(wb_read_only)
{
	char *path = t_make_file(16 * t_ps, SEED);
	const char *args[] = { "file", path, NULL };
	struct luffd_ctx *ctx = t_ctx(NULL);
	struct server sv;
	struct luffd_store *s;
	char *m = (void *)1;

	start(&sv, args);
	s = open_store(&sv);
	ck_assert_int_eq(luffd_map(ctx, s, 0, 16 * t_ps,
				   PROT_READ | PROT_WRITE, LUFFD_MAP_WRITEBACK,
				   (void **)&m), -EACCES);
	ck_assert_ptr_null(m);
	/* Read as always. */
	ck_assert_int_eq(luffd_map(ctx, s, 0, 16 * t_ps, PROT_READ, 0,
				   (void **)&m), 0);
	t_assert_page(m, 3, 0, 16 * t_ps, SEED);
	ck_assert_int_eq(luffd_unmap(ctx, m, 16 * t_ps), 0);
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	free(path);
}
END_TEST

/* The error filter fails every write while its trigger file exists: the
 * server's errno comes back, the pages stay dirty and the file as it was;
 * once the trigger is gone, the next write-back writes them. */
START_TEST(wb_server_errors)
{
	const size_t npg = 64, len = npg * t_ps;
	char *path = t_make_file(len, SEED), trig[300], ef[320];
	const char *args[] = { "--filter=error", "file", path,
			       "error=ENOSPC", "error-pwrite-rate=100%", ef,
			       NULL };
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct server sv;
	struct luffd_store *s;
	char *m = NULL, *orig = malloc(len);
	long bad;
	int fd;

	snprintf(trig, sizeof(trig), "%s/nbd-wtrigger-%d", t_dir,
		 (int)getpid());
	snprintf(ef, sizeof(ef), "error-pwrite-file=%s", trig);
	t_pattern(orig, 0, len, SEED);
	start_server(&sv, true, args);
	s = open_store(&sv);
	if (!wb_map(ctx, s, len, &m))
		goto out;
	fd = open(trig, O_CREAT | O_WRONLY, 0600);
	ck_assert_int_ge(fd, 0);
	close(fd);
	memset(m + 3 * t_ps, 0x31, 10 * t_ps);
	memset(m + 40 * t_ps, 0x32, t_ps);
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), -ENOSPC);
	t_stats(ctx, &st);
	ck_assert_uint_ge(st.writeback_errors, 2);
	ck_assert_uint_eq(st.written_back, 0);
	ck_assert_uint_eq(dirty_pages(ctx, m, len), 11);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), -ENOSPC); /* stays */
	bad = file_diff(path, orig, len);
	ck_assert_msg(bad < 0, "file page %ld written", bad);
	unlink(trig);
	ck_assert_int_eq(luffd_msync(ctx, m, len, LUFFD_MSYNC_DURABLE), 0);
	bad = file_diff(path, m, len);
	ck_assert_msg(bad < 0, "file page %ld is not the region's", bad);
	ck_assert_uint_eq(dirty_pages(ctx, m, len), 0);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.written_back, 11);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
out:
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	free(orig);
	free(path);
}
END_TEST

/* Killed: a write-back fails at once (not after read_timeout_ms) and its
 * pages stay dirty. */
START_TEST(wb_server_killed)
{
	const size_t npg = 32, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	const char *args[] = { "file", path, NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 10000);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct server sv;
	struct luffd_store *s;
	char *m = NULL;
	double t0;

	start_server(&sv, true, args);
	s = open_store(&sv);
	if (!wb_map(ctx, s, len, &m))
		goto out;
	memset(m, 0x41, 4 * t_ps);
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), 0);
	memset(m + 8 * t_ps, 0x42, 4 * t_ps);
	kill(sv.pid, SIGKILL);
	waitpid(sv.pid, NULL, 0);
	sv.pid = 0;
	t0 = t_now_s();
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), -ENOTCONN);
	ck_assert_int_eq(luffd_msync(ctx, m, len, LUFFD_MSYNC_DURABLE),
			 -ENOTCONN);
	ck_assert_msg(t_now_s() - t0 < 2.0, "failed after %.2f s",
		      t_now_s() - t0);
	ck_assert_uint_eq(dirty_pages(ctx, m, len), 4);
	/* Teardown does not wait for it either (the pages are lost). */
	ck_assert_int_lt(luffd_ctx_destroy(ctx), 0);
	ctx = NULL;
out:
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	free(path);
}
END_TEST

/* Every write held 2 s at the server: a write-back gives up after
 * read_timeout_ms (-ETIMEDOUT), its pages stay dirty; the late replies
 * come and go harmlessly, and teardown after is bounded too. */
START_TEST(wb_server_slow)
{
	const size_t npg = 32, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	const char *args[] = { "--filter=delay", "file", path,
			       "delay-write=2000ms", NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 300);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct server sv;
	struct luffd_store *s;
	char *m = NULL;
	double t0, dt;
	long bad;

	start_server(&sv, true, args);
	s = open_store(&sv);
	if (!wb_map(ctx, s, len, &m))
		goto out;
	memset(m + t_ps, 0x51, 3 * t_ps);
	memset(m + 10 * t_ps, 0x52, t_ps);
	t0 = t_now_s();
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), -ETIMEDOUT);
	dt = t_now_s() - t0;
	ck_assert_msg(dt >= 0.25 && dt < 1.5, "gave up after %.2f s", dt);
	ck_assert_uint_eq(dirty_pages(ctx, m, len), 4);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.writeback_errors, 2);
	ck_assert_uint_eq(st.written_back, 0);
	/* The server does the writes late: the replies find nobody. */
	usleep((useconds_t)((t0 + 2.5 - t_now_s()) * 1e6));
	bad = file_diff(path, m, len);
	ck_assert_msg(bad < 0, "file page %ld: the late write missing", bad);
	/* Still dirty: teardown writes them again, and gives up again. */
	t0 = t_now_s();
	ck_assert_int_eq(luffd_ctx_destroy(ctx), -ETIMEDOUT);
	ctx = NULL;
	dt = t_now_s() - t0;
	ck_assert_msg(dt < 1.5, "teardown took %.2f s", dt);
out:
	/* The store goes with those writes still out. */
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	free(path);
}
END_TEST

/* Each write has read_timeout_ms of its own: 640 writes of 50 ms each at
 * the server, 16 at a time, take 2 s, twice the timeout, and succeed. */
START_TEST(wb_long_writeback)
{
	const size_t npg = 1280, len = npg * t_ps;
	char *path = t_make_file(len, SEED);
	const char *args[] = { "--filter=delay", "file", path,
			       "delay-write=50ms", NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 1000);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct server sv;
	struct luffd_store *s;
	char *m = NULL;
	double t0, dt;
	long bad;

	start_server(&sv, true, args);
	s = open_store(&sv);
	if (!wb_map(ctx, s, len, &m))
		goto out;
	for (size_t p = 0; p < npg; p += 2) /* runs of one page */
		m[p * t_ps + 9] = (char)p;
	t0 = t_now_s();
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), 0);
	dt = t_now_s() - t0;
	ck_assert_msg(dt > 1.0, "only %.2f s: the test proves nothing", dt);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.written_back, npg / 2);
	ck_assert_uint_eq(st.writeback_writes, npg / 2);
	ck_assert_uint_eq(st.writeback_errors, 0);
	bad = file_diff(path, m, len);
	ck_assert_msg(bad < 0, "file page %ld is not the region's", bad);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
out:
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	free(path);
}
END_TEST

/* Where in an nbdkit log the write at off starts (the first one from line
 * after on), and where its reply is logged (*ret); -1 when missing. */
static int logged_write(const char *log, uint64_t off, int after, int *ret)
{
	char line[512], want[64], reply[64];
	int i = 0, at = -1, conn = 0, id = 0;
	FILE *f = fopen(log, "r");

	ck_assert_ptr_nonnull(f);
	snprintf(want, sizeof(want), " offset=0x%llx ",
		 (unsigned long long)off);
	*ret = -1;
	for (; fgets(line, sizeof(line), f); i++) {
		const char *p = strstr(line, "connection=");

		if (!p)
			continue;
		if (at < 0 && i > after && strstr(line, " Write id=") &&
		    strstr(line, want) &&
		    sscanf(p, "connection=%d Write id=%d", &conn, &id) == 2) {
			at = i;
			snprintf(reply, sizeof(reply),
				 "connection=%d ...Write id=%d ", conn, id);
		} else if (at >= 0 && strstr(line, reply)) {
			*ret = i;
			break;
		}
	}
	fclose(f);
	return at;
}

/*
 * A write given up (read_timeout_ms) is still out at the server, and NBD
 * cannot cancel it: the next write-back's write of the same page is sent
 * only once the first was answered, or the old bytes could land last.
 * Each write takes 1.2 s at the server, the timeout is 0.6 s.
 */
START_TEST(wb_stale_write_not_last)
{
	const size_t npg = 16, len = npg * t_ps;
	char *path = t_make_file(len, SEED), log[300], lf[320];
	const char *args[] = { "--filter=log", "--filter=delay", "file", path,
			       lf, "delay-write=1200ms", NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 600);
	struct luffd_ctx *ctx = t_ctx(&o);
	struct server sv;
	struct luffd_store *s;
	char *m = NULL, got[32];
	int a, a_ret, b, b_ret, fd;

	snprintf(log, sizeof(log), "%s/nbdlog-stale-%d", t_dir,
		 (int)getpid());
	snprintf(lf, sizeof(lf), "logfile=%s", log);
	start_server(&sv, true, args);
	s = open_store(&sv);
	if (!wb_map(ctx, s, len, &m))
		goto out;
	memset(m + 2 * t_ps, 'X', sizeof(got));
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), -ETIMEDOUT);
	memset(m + 2 * t_ps, 'Y', sizeof(got));
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), -ETIMEDOUT);
	/* Both answered by now (the second 1.2 s after the first). */
	usleep(2200000);
	fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, got, sizeof(got), (off_t)(2 * t_ps)),
			 (ssize_t)sizeof(got));
	close(fd);
	ck_assert_mem_eq(got, m + 2 * t_ps, sizeof(got));
	a = logged_write(log, 2 * t_ps, -1, &a_ret);
	b = logged_write(log, 2 * t_ps, a, &b_ret);
	ck_assert_int_ge(a, 0);
	ck_assert_int_gt(a_ret, a);
	ck_assert_int_gt(b, a);
	ck_assert_msg(b > a_ret, "the second write (log line %d) was sent "
		      "before the first was answered (line %d)", b, a_ret);
	ck_assert_int_gt(b_ret, b);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), -ETIMEDOUT); /* dirty */
	ctx = NULL;
out:
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	unlink(log);
	free(path);
}
END_TEST

/* Stopped after the writes: a durable write-back's flush gives up after
 * read_timeout_ms; once the server goes on, flushes work again.  (The
 * memory plugin: a file's flush could take longer than the timeout on a
 * busy disk.) */
START_TEST(wb_flush_timeout)
{
	const size_t npg = 16, len = npg * t_ps;
	char size[64];
	const char *args[] = { "memory", size, NULL };
	LUFFD_OPTS(luffd_ctx_opts, o, .read_timeout_ms = 300);
	struct luffd_ctx *ctx = t_ctx(&o);
	LUFFD_OPTS(luffd_stats, st);
	struct server sv;
	struct luffd_store *s;
	char *m = NULL;
	double t0, dt;

	snprintf(size, sizeof(size), "size=%zu", len);
	start_server(&sv, true, args);
	s = open_store(&sv);
	if (!wb_map(ctx, s, len, &m))
		goto out;
	memset(m, 0x61, t_ps);
	ck_assert_int_eq(luffd_msync(ctx, m, len, 0), 0);
	pause_server(&sv);
	t0 = t_now_s();
	ck_assert_int_eq(luffd_msync(ctx, m, len, LUFFD_MSYNC_DURABLE),
			 -ETIMEDOUT);
	dt = t_now_s() - t0;
	ck_assert_msg(dt >= 0.25 && dt < 1.5, "gave up after %.2f s", dt);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.writeback_flushes, 1);
	ck_assert_uint_eq(st.writeback_errors, 1);
	kill(sv.pid, SIGCONT);
	ck_assert_int_eq(luffd_msync(ctx, m, len, LUFFD_MSYNC_DURABLE), 0);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.writeback_flushes, 2);
	ck_assert_uint_eq(st.writeback_errors, 1);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
out:
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
}
END_TEST

/*
 * A server without flush (nbdkit's eval plugin over a file, one
 * connection): with FUA, every write carries it and a durable write-back
 * sends no flush; without FUA either, no flush, no FUA, and 0.
 */
static void wb_no_flush(bool fua)
{
	const size_t npg = 8, len = npg * t_ps;
	char *path = t_make_file(len, SEED), log[300], lf[320];
	char size[400], rd[500], wr[500], fuas[64];
	const char *args[] = { "--filter=log", "eval", lf, size, rd, wr,
			       "can_flush=exit 3", fuas,
			       "can_multi_conn=exit 3", NULL };
	struct luffd_ctx *ctx = t_ctx(NULL);
	LUFFD_OPTS(luffd_stats, st);
	struct server sv;
	struct luffd_store *s;
	char *m = NULL;
	int nfua;
	long bad;

	snprintf(log, sizeof(log), "%s/nbdlog-nf-%d-%d", t_dir,
		 (int)getpid(), fua);
	snprintf(lf, sizeof(lf), "logfile=%s", log);
	snprintf(size, sizeof(size), "get_size=stat -L -c %%s %s", path);
	snprintf(rd, sizeof(rd), "pread=dd if=%s skip=$4 count=$3 "
		 "iflag=skip_bytes,count_bytes status=none", path);
	snprintf(wr, sizeof(wr), "pwrite=dd of=%s seek=$4 conv=notrunc "
		 "oflag=seek_bytes status=none", path);
	snprintf(fuas, sizeof(fuas), "can_fua=echo %s",
		 fua ? "native" : "none");
	start_server(&sv, true, args);
	s = open_store(&sv);
	if (!wb_map(ctx, s, len, &m))
		goto out;
	memset(m + t_ps, 0x71, 2 * t_ps);
	memset(m + 5 * t_ps, 0x72, t_ps);
	ck_assert_int_eq(luffd_msync(ctx, m, len, LUFFD_MSYNC_DURABLE), 0);
	bad = file_diff(path, m, len);
	ck_assert_msg(bad < 0, "file page %ld is not the region's", bad);
	t_stats(ctx, &st);
	ck_assert_uint_eq(st.written_back, 3);
	ck_assert_uint_eq(st.writeback_flushes, 1);
	ck_assert_uint_eq(st.writeback_errors, 0);
	ck_assert_int_eq(luffd_unmap(ctx, m, len), 0);
out:
	luffd_store_put(s);
	ck_assert_int_eq(luffd_ctx_destroy(ctx), 0);
	stop(&sv);
	if (m) {
		ck_assert_int_eq(logged(log, "Write", 0, &nfua), 2);
		ck_assert_int_eq(nfua, fua ? 2 : 0);
		ck_assert_int_eq(logged(log, "Flush", 0, NULL), 0);
	}
	unlink(log);
	free(path);
}

START_TEST(wb_no_flush_fua)
{
	wb_no_flush(true);
}
END_TEST

START_TEST(wb_no_flush_no_fua)
{
	wb_no_flush(false);
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
	tc = t_tcase(s, "writeback");
	tcase_add_test(tc, wb_multi_conn);
	tcase_add_test(tc, wb_one_conn);
	tcase_add_test(tc, wb_read_only);
	tcase_add_test(tc, wb_server_errors);
	tcase_add_test(tc, wb_server_killed);
	tcase_add_test(tc, wb_server_slow);
	tcase_add_test(tc, wb_long_writeback);
	tcase_add_test(tc, wb_stale_write_not_last);
	tcase_add_test(tc, wb_flush_timeout);
	tcase_add_test(tc, wb_no_flush_fua);
	tcase_add_test(tc, wb_no_flush_no_fua);
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
