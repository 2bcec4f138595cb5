/* SPDX-License-Identifier: MIT */
/*
 * A memory cgroup of its own for one run (--workload ooc): a child of the
 * cgroup uffd-bench itself is in, so whatever limits that one has still
 * hold, with a limit on memory.  cgroup v2 (memory.max) where the bench's
 * cgroup can give its children the memory controller, else the v1 memory
 * controller (memory.limit_in_bytes), which charges page cache and
 * anonymous memory alike.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"

struct cg_base {
	bool done;
	enum cg_version ver;
	char dir[2048]; /* the bench's own memory cgroup */
	char why[512];  /* CG_NONE: why not */
};

static struct cg_base g_base;

static int read_file(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t got;

	if (fd < 0)
		return -errno;
	got = read(fd, buf, n - 1);
	close(fd);
	if (got < 0)
		return -errno;
	buf[got] = 0;
	return 0;
}

static int write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), err = 0;
	size_t len = strlen(s);

	if (fd < 0)
		return -errno;
	if (write(fd, s, len) != (ssize_t)len)
		err = -errno;
	close(fd);
	return err;
}

/* Is word one of the comma- or space-separated words of list? */
static bool has_word(const char *list, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = list; (p = strstr(p, word)); p += n)
		if ((p == list || p[-1] == ',' || p[-1] == ' ') &&
		    (!p[n] || p[n] == ',' || p[n] == ' ' || p[n] == '\n'))
			return true;
	return false;
}

/* The mount point and mounted root of the cgroup2 file system (v2) or of
 * the v1 hierarchy with the memory controller, from /proc/self/mountinfo. */
static bool find_mount(bool v2, char *mnt, size_t mn, char *root, size_t rn)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	char line[8192];
	bool found = false;

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		char r[1024], m[1024], type[64], opts[1024];
		char *sep = strstr(line, " - ");

		if (!sep || sscanf(line, "%*s %*s %*s %1023s %1023s", r, m) != 2 ||
		    sscanf(sep + 3, "%63s %*s %1023s", type, opts) != 2)
			continue;
		if (v2 ? strcmp(type, "cgroup2") != 0
		       : strcmp(type, "cgroup") != 0 || !has_word(opts, "memory"))
			continue;
		snprintf(mnt, mn, "%s", m);
		snprintf(root, rn, "%s", r);
		found = true;
	}
	fclose(f);
	return found;
}

/* This process's cgroup path in the v2 hierarchy, or in the v1 hierarchy
 * with the memory controller, from /proc/self/cgroup. */
static bool own_path(bool v2, char *path, size_t n)
{
	FILE *f = fopen("/proc/self/cgroup", "r");
	char line[1024];
	bool found = false;

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':')
						       : NULL;

		if (!c2)
			continue;
		*c1 = *c2 = 0;
		c2[1 + strcspn(c2 + 1, "\n")] = 0;
		if (v2 ? !strcmp(line, "0") && c1 + 1 == c2
		       : has_word(c1 + 1, "memory")) {
			snprintf(path, n, "%s", c2 + 1);
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* mnt + path, the part of path under the mounted root (a container may
 * mount only its own subtree). */
static void join(char *out, size_t n, const char *mnt, const char *root,
		 const char *path)
{
	size_t rl = strlen(root);

	if (strcmp(root, "/") && !strncmp(path, root, rl))
		path += rl;
	snprintf(out, n, "%s%s", mnt, strcmp(path, "/") ? path : "");
}

static enum cg_version detect_v2(char *why, size_t wn)
{
	char mnt[1024], root[1024], path[1024], f[2100], buf[1024];

	if (!find_mount(true, mnt, sizeof(mnt), root, sizeof(root)) ||
	    !own_path(true, path, sizeof(path)))
		return CG_NONE;
	join(g_base.dir, sizeof(g_base.dir), mnt, root, path);
	snprintf(f, sizeof(f), "%s/cgroup.controllers", g_base.dir);
	if (read_file(f, buf, sizeof(buf)) || !has_word(buf, "memory")) {
		snprintf(why, wn, "cgroup v2 at %.300s has no memory controller",
			 g_base.dir);
		return CG_NONE;
	}
	snprintf(f, sizeof(f), "%s/cgroup.subtree_control", g_base.dir);
	if (!read_file(f, buf, sizeof(buf)) && has_word(buf, "memory"))
		return CG_V2;
	/* Only the root may hold processes and delegate controllers too. */
	if (!strcmp(path, "/") && !write_file(f, "+memory"))
		return CG_V2;
	snprintf(why, wn, "cgroup v2: %.300s does not give its children the "
		 "memory controller (cgroup.subtree_control), and a cgroup "
		 "with processes in it cannot", g_base.dir);
	return CG_NONE;
}

enum cg_version cg_detect(const char **why)
{
	char mnt[1024], root[1024], path[1024], v2why[512] = "";

	if (g_base.done)
		goto out;
	g_base.done = true;
	g_base.ver = detect_v2(v2why, sizeof(v2why));
	if (g_base.ver != CG_NONE)
		goto out;
	if (find_mount(false, mnt, sizeof(mnt), root, sizeof(root)) &&
	    own_path(false, path, sizeof(path))) {
		join(g_base.dir, sizeof(g_base.dir), mnt, root, path);
		g_base.ver = CG_V1;
		goto out;
	}
	snprintf(g_base.why, sizeof(g_base.why), "%.400s%sno cgroup v1 memory "
		 "controller mounted", v2why, v2why[0] ? "; " : "");
out:
	if (why)
		*why = g_base.why;
	return g_base.ver;
}

static void cg_file(const struct cgroup *cg, char *out, size_t n,
		    const char *name)
{
	snprintf(out, n, "%s/%s", cg->dir, name);
}

int cg_create(struct cgroup *cg, const char *name, uint64_t limit)
{
	char f[4200], v[32];
	int err;

	memset(cg, 0, sizeof(*cg));
	cg->ver = cg_detect(NULL);
	if (cg->ver == CG_NONE)
		return -ENOTSUP;
	snprintf(cg->dir, sizeof(cg->dir), "%s/%s", g_base.dir, name);
	if (mkdir(cg->dir, 0755) < 0) {
		err = -errno;
		cg->dir[0] = 0;
		return err;
	}
	snprintf(v, sizeof(v), "%" PRIu64, limit);
	cg_file(cg, f, sizeof(f), cg->ver == CG_V1 ? "memory.limit_in_bytes"
						   : "memory.max");
	err = write_file(f, v);
	if (err) {
		rmdir(cg->dir);
		cg->dir[0] = 0;
	}
	return err;
}

int cg_enter(const struct cgroup *cg, pid_t pid)
{
	char f[4200], v[32];

	snprintf(v, sizeof(v), "%d", (int)pid);
	cg_file(cg, f, sizeof(f), "cgroup.procs");
	return write_file(f, v);
}

/* The number after key (a line "key N") in file, or the file's only
 * number when key is NULL; 0 when unknown. */
static uint64_t read_num(const struct cgroup *cg, const char *file,
			 const char *key)
{
	char f[4200], buf[4096], *p = buf;
	size_t kl = key ? strlen(key) : 0;

	cg_file(cg, f, sizeof(f), file);
	if (!cg->dir[0] || read_file(f, buf, sizeof(buf)))
		return 0;
	while (key && p) {
		if (!strncmp(p, key, kl) && p[kl] == ' ') {
			p += kl;
			break;
		}
		p = strchr(p, '\n');
		p = p ? p + 1 : NULL;
	}
	return p ? strtoull(p, NULL, 10) : 0;
}

uint64_t cg_usage(const struct cgroup *cg)
{
	return read_num(cg, cg->ver == CG_V1 ? "memory.usage_in_bytes"
					     : "memory.current", NULL);
}

uint64_t cg_peak(const struct cgroup *cg)
{
	/* memory.peak: Linux 5.19 and later; 0 (unknown) before. */
	return read_num(cg, cg->ver == CG_V1 ? "memory.max_usage_in_bytes"
					     : "memory.peak", NULL);
}

uint64_t cg_failcnt(const struct cgroup *cg)
{
	return cg->ver == CG_V1 ? read_num(cg, "memory.failcnt", NULL)
				: read_num(cg, "memory.events", "max");
}

uint64_t cg_oom_kills(const struct cgroup *cg)
{
	return cg->ver == CG_V1 ? read_num(cg, "memory.oom_control",
					   "oom_kill")
				: read_num(cg, "memory.events", "oom_kill");
}

int cg_destroy(struct cgroup *cg)
{
	char f[4200];
	int err = 0;

	if (!cg->dir[0])
		return 0;
	/* v1: reclaim what is still charged here (the file's pages), so the
	 * removed cgroup does not linger as a zombie holding them. */
	if (cg->ver == CG_V1) {
		cg_file(cg, f, sizeof(f), "memory.force_empty");
		write_file(f, "0");
	}
	/* The last task may take a moment to leave after waitpid(). */
	for (int i = 0; i < 200; i++) {
		err = rmdir(cg->dir) < 0 ? -errno : 0;
		if (err != -EBUSY)
			break;
		usleep(10000);
	}
	cg->dir[0] = 0;
	return err;
}

int cg_check(char *why, size_t n)
{
	const char *w;
	struct cgroup cg;
	char name[64];
	int err;

	if (cg_detect(&w) == CG_NONE) {
		snprintf(why, n, "no memory cgroup: %s", w);
		return 0;
	}
	snprintf(name, sizeof(name), "uffd-bench.%d.check", (int)getpid());
	err = cg_create(&cg, name, 64ull << 20);
	if (err) {
		snprintf(why, n, "cannot create a memory cgroup under %s: %s",
			 g_base.dir, strerror(-err));
		return 0;
	}
	cg_destroy(&cg);
	return 1;
}

const char *cg_base_dir(void)
{
	cg_detect(NULL);
	return g_base.dir;
}
