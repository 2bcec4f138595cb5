/* SPDX-License-Identifier: MIT */
/*
 * --store nbd: the bench file exported by nbdkit servers this process
 * starts itself on Unix sockets (the file plugin, read-only), one behind
 * nbdkit's delay filter when --store-latency-us is set (whole
 * milliseconds: the filter's resolution) and one without (the zero-latency
 * calibration).  Also the textbook handler's fetch over NBD (libnbd's
 * synchronous nbd_pread(), one at a time) and the nbdcopy engine.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

static int start_server(struct nbd_server *sv, const char *file,
			const char *sock, unsigned int delay_ms)
{
	char delay[64];
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
	if (delay_ms) {
		snprintf(delay, sizeof(delay), "rdelay=%ums", delay_ms);
		argv[k++] = "--filter=delay";
	}
	argv[k++] = "file";
	argv[k++] = file;
	if (delay_ms)
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
				   (unsigned int)(cfg->store_lat_us / 1000));
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
