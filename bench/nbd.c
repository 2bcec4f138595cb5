/* SPDX-License-Identifier: MIT */
/*
 * --store nbd: the bench file exported by nbdkit servers this process
 * starts itself on Unix sockets (the file plugin, read-only), one delayed
 * by --store-latency-us N when it is set and one without (the
 * zero-latency calibration).  The delay is our own filter,
 * nbdkit-delayus-filter.so (nbdkit-delayus-filter.c), with N microseconds
 * exactly: nbdkit 1.32's delay filter counts in whole milliseconds.  The
 * filter is looked for next to this program (the build tree) and at
 * LIBDIR/libuffd relative to it (an install); without it the bench falls
 * back to nbdkit's delay filter, says so, and takes whole milliseconds
 * only.  Also the textbook handler's fetch over NBD (libnbd's
 * synchronous nbd_pread(), one at a time) and the nbdcopy engine.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#ifdef BENCH_HAVE_NBD
#include <libnbd.h>
#endif

struct nbd_server {
	pid_t pid;
	char sock[4200], pidf[4210];
};

static struct nbd_server servers[2];
static char sock_dir[4096];

static void stop_servers(void)
{
	for (int i = 0; i < 2; i++) {
		if (servers[i].pid > 0) {
			kill(servers[i].pid, SIGTERM);
			waitpid(servers[i].pid, NULL, 0);
			unlink(servers[i].sock);
			unlink(servers[i].pidf);
		}
		servers[i].pid = 0;
	}
	if (sock_dir[0])
		rmdir(sock_dir);
	sock_dir[0] = 0;
}

#ifdef BENCH_HAVE_DELAYUS
/* realpath() of DIR/REL/NAME into out if that file exists, else false. */
static bool filter_at(char *out, const char *dir, const char *rel,
		      const char *name)
{
	char p[PATH_MAX + 64];

	snprintf(p, sizeof(p), "%s/%s%s%s", dir, rel, *rel ? "/" : "", name);
	return realpath(p, out) && !access(out, R_OK);
}

const char *nbd_delayus_filter(void)
{
	static char path[PATH_MAX];
	static bool looked;
	char dir[PATH_MAX];
	ssize_t n;

	if (looked)
		return path[0] ? path : NULL;
	looked = true;
	n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
	if (n <= 0)
		return NULL;
	dir[n] = 0;
	*strrchr(dir, '/') = 0; /* an absolute path: there is one */
	if (filter_at(path, dir, "", BENCH_DELAYUS_NAME) ||
	    filter_at(path, dir, BENCH_DELAYUS_REL, BENCH_DELAYUS_NAME))
		return path;
	path[0] = 0;
	return NULL;
}
#else
const char *nbd_delayus_filter(void)
{
	return NULL;
}
#endif

static int start_server(struct nbd_server *sv, const char *file,
			const char *sock, unsigned int delay_us)
{
	const char *filter = delay_us ? nbd_delayus_filter() : NULL;
	char delay[64], filter_arg[PATH_MAX + 16];
	const char *argv[20];
	int k = 0;

	snprintf(sv->sock, sizeof(sv->sock), "%s", sock);
	snprintf(sv->pidf, sizeof(sv->pidf), "%s.pid", sock);
	argv[k++] = "nbdkit";
	argv[k++] = "-r";
	argv[k++] = "-f";
	argv[k++] = "--exit-with-parent";
	argv[k++] = "-U";
	argv[k++] = sv->sock;
	argv[k++] = "-P"; /* written once it accepts connections */
	argv[k++] = sv->pidf;
	if (filter) {
		snprintf(filter_arg, sizeof(filter_arg), "--filter=%s", filter);
		snprintf(delay, sizeof(delay), "delay-read-us=%u", delay_us);
		argv[k++] = filter_arg;
	} else if (delay_us) {
		/* main() let through whole milliseconds only. */
		snprintf(delay, sizeof(delay), "rdelay=%ums", delay_us / 1000);
		argv[k++] = "--filter=delay";
	}
	argv[k++] = "file";
	argv[k++] = file;
	if (delay_us)
		argv[k++] = delay;
	argv[k] = NULL;
	sv->pid = fork();
	if (sv->pid < 0)
		return -errno;
	if (!sv->pid) {
		int null = open("/dev/null", O_WRONLY);

		if (null >= 0)
			dup2(null, 1);
		execvp("nbdkit", (char *const *)argv);
		fprintf(stderr, "uffd-bench: nbdkit: %s\n", strerror(errno));
		_exit(127);
	}
	for (int i = 0; i < 1000; i++) {
		struct stat st;
		int status;

		if (!stat(sv->pidf, &st) && st.st_size > 0)
			return 0;
		if (waitpid(sv->pid, &status, WNOHANG) == sv->pid) {
			sv->pid = 0;
			return -ECHILD;
		}
		usleep(10000);
	}
	return -ETIMEDOUT;
}

int nbd_servers_start(struct config *cfg, const char *dir)
{
	char sock[4200];
	int err;

	snprintf(sock_dir, sizeof(sock_dir), "%s", dir);
	snprintf(sock, sizeof(sock), "%s/nbd0.sock", dir);
	err = start_server(&servers[0], cfg->path, sock, 0);
	if (!err && cfg->store_lat_us) {
		snprintf(sock, sizeof(sock), "%s/nbd1.sock", dir);
		err = start_server(&servers[1], cfg->path, sock,
				   (unsigned int)cfg->store_lat_us);
	}
	if (err) {
		stop_servers();
		return err;
	}
	atexit(stop_servers);
	snprintf(cfg->nbd_uri0, sizeof(cfg->nbd_uri0),
		 "nbd+unix:///?socket=%s", servers[0].sock);
	snprintf(cfg->nbd_uri, sizeof(cfg->nbd_uri), "nbd+unix:///?socket=%s",
		 servers[cfg->store_lat_us ? 1 : 0].sock);
	return 0;
}

#ifdef BENCH_HAVE_NBD
void *nbd_sync_open(const char *uri)
{
	struct nbd_handle *h = nbd_create();

	if (h && nbd_connect_uri(h, uri) < 0) {
		fprintf(stderr, "uffd-bench: naive: %s: %s\n", uri,
			nbd_get_error());
		nbd_close(h);
		h = NULL;
	}
	return h;
}

ssize_t nbd_sync_pread(void *h, void *buf, size_t len, uint64_t off)
{
	return nbd_pread(h, buf, len, off, 0) < 0 ? -(nbd_get_errno() ?
						       nbd_get_errno() : EIO)
						    : (ssize_t)len;
}

void nbd_sync_close(void *h)
{
	if (h)
		nbd_close(h);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* What the server really serves to `depth` requests in flight: libnbd
 * alone, one connection, rounds of depth random 4 KiB reads issued at once
 * and waited for; the median round, in ns (0 on failure).  The Overlap
 * table's "served delay" for --store nbd (the delay filter's sleeps wake
 * late, and nbdkit shares the CPUs). */
uint64_t nbd_served_delay(const char *uri, unsigned int depth, uint64_t size)
{
	enum { ROUNDS = 101, MAXD = 256 };
	static char buf[MAXD][4096];
	uint64_t t[ROUNDS], x = 0x9e3779b97f4a7c15ull, pages = size / 4096;
	struct nbd_handle *h = nbd_sync_open(uri);
	int64_t ck[MAXD];

	if (!h || !pages)
		return 0;
	depth = depth > MAXD ? MAXD : depth ? depth : 1;
	for (int k = 0; k < ROUNDS; k++) {
		struct timespec a, b;

		clock_gettime(CLOCK_MONOTONIC, &a);
		for (unsigned int i = 0; i < depth; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			ck[i] = nbd_aio_pread(h, buf[i], 4096,
					      (x % pages) * 4096,
					      NBD_NULL_COMPLETION, 0);
		}
		for (unsigned int i = 0; i < depth; i++)
			while (ck[i] >= 0 &&
			       nbd_aio_command_completed(h, ck[i]) == 0)
				if (nbd_poll(h, -1) < 0)
					break;
		clock_gettime(CLOCK_MONOTONIC, &b);
		t[k] = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull +
		       (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec;
	}
	nbd_close(h);
	qsort(t, ROUNDS, sizeof(t[0]), cmp_u64);
	return t[ROUNDS / 2];
}
#else
void *nbd_sync_open(const char *uri)
{
	fprintf(stderr, "uffd-bench: built without libnbd: no naive over "
		"%s\n", uri);
	return NULL;
}

ssize_t nbd_sync_pread(void *h, void *buf, size_t len, uint64_t off)
{
	(void)h;
	(void)buf;
	(void)len;
	(void)off;
	return -EOPNOTSUPP;
}

void nbd_sync_close(void *h)
{
	(void)h;
}

uint64_t nbd_served_delay(const char *uri, unsigned int depth, uint64_t size)
{
	(void)uri;
	(void)depth;
	(void)size;
	return 0;
}
#endif

/* nbdcopy of the export to null:, timed as a whole: libnbd's own copy
 * tool (several requests in flight, multi-conn where offered). */
int run_nbdcopy(const struct config *cfg, struct run *r)
{
	uint64_t t0 = now_ns();
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return -errno;
	if (!pid) {
		execlp("nbdcopy", "nbdcopy", "--", cfg->nbd_uri, "null:",
		       (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	r->wall_ns = now_ns() - t0;
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		return -EIO;
	r->verified = false;
	return 0;
}
