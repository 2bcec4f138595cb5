/* SPDX-License-Identifier: MIT */
/*
 * Opening a userfaultfd and negotiating features.
 *
 * Three ways in, tried in this order by LUFFD_OPEN_AUTO:
 *  - /dev/userfaultfd + USERFAULTFD_IOC_NEW (6.1+): access is governed by
 *    the device node's permissions, not by vm.unprivileged_userfaultfd;
 *  - userfaultfd(2): needs CAP_SYS_PTRACE unless
 *    vm.unprivileged_userfaultfd=1;
 *  - userfaultfd(2) with UFFD_USER_MODE_ONLY (5.11+): always allowed, but
 *    faults raised by the kernel itself (read(2) into a missing page) fail
 *    with EFAULT instead of reaching the handler.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uffd.h"

#ifndef __NR_userfaultfd
#error "userfaultfd syscall number unknown on this architecture"
#endif

static const char *mode_name(enum luffd_open_mode m)
{
	switch (m) {
	case LUFFD_OPEN_DEV: return "/dev/userfaultfd";
	case LUFFD_OPEN_SYSCALL: return "userfaultfd(2)";
	case LUFFD_OPEN_USER_ONLY: return "userfaultfd(2, UFFD_USER_MODE_ONLY)";
	default: return "auto";
	}
}

static int open_one(enum luffd_open_mode m)
{
	int flags = O_CLOEXEC | O_NONBLOCK;
	int dev, fd;

	switch (m) {
	case LUFFD_OPEN_DEV:
		dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dev < 0)
			return -errno;
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
		fd = fd < 0 ? -errno : fd;
		close(dev);
		return fd;
	case LUFFD_OPEN_SYSCALL:
		fd = (int)syscall(__NR_userfaultfd, flags);
		return fd < 0 ? -errno : fd;
	case LUFFD_OPEN_USER_ONLY:
		fd = (int)syscall(__NR_userfaultfd, flags | UFFD_USER_MODE_ONLY);
		return fd < 0 ? -errno : fd;
	default:
		return -EINVAL;
	}
}

static void explain(enum luffd_open_mode m, int err)
{
	const char *why = "";
	int v = -1;
	FILE *f;

	if (m == LUFFD_OPEN_SYSCALL && err == -EPERM) {
		f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "re");
		if (f) {
			if (fscanf(f, "%d", &v) != 1)
				v = -1;
			fclose(f);
		}
		why = v == 0 ? " (vm.unprivileged_userfaultfd=0 and no "
			       "CAP_SYS_PTRACE)" : "";
	} else if (m == LUFFD_OPEN_DEV && err == -EACCES) {
		why = " (no read/write permission on /dev/userfaultfd)";
	} else if (m == LUFFD_OPEN_DEV && err == -ENOENT) {
		why = " (no /dev/userfaultfd: kernel < 6.1 or no devtmpfs)";
	}
	pr_info("%s: %s%s\n", mode_name(m), luffd_strerror(err), why);
}

/* Map a list of refusals to one error: privilege wins over absence. */
static int summarise(const int *errs, int n)
{
	bool perm = false, nosys = true;

	for (int i = 0; i < n; i++) {
		if (errs[i] == -EPERM || errs[i] == -EACCES)
			perm = true;
		if (errs[i] != -ENOSYS && errs[i] != -ENOENT &&
		    errs[i] != -EINVAL)
			nosys = false;
	}
	if (perm)
		return -LUFFD_E_UFFD_PERM;
	if (nosys)
		return -LUFFD_E_NOUFFD;
	return errs[n - 1];
}

static int open_mode(enum luffd_open_mode mode, enum luffd_open_mode *how)
{
	static const enum luffd_open_mode order[] = {
		LUFFD_OPEN_DEV, LUFFD_OPEN_SYSCALL, LUFFD_OPEN_USER_ONLY,
	};
	int errs[3], n = 0, fd;

	for (unsigned int i = 0; i < 3; i++) {
		if (mode != LUFFD_OPEN_AUTO && mode != order[i])
			continue;
		fd = open_one(order[i]);
		if (fd >= 0) {
			*how = order[i];
			return fd;
		}
		explain(order[i], fd);
		errs[n++] = fd;
	}
	if (n == 0)
		return -EINVAL;
	return summarise(errs, n);
}

static int api(int fd, uint64_t features, struct uffdio_api *a)
{
	a->api = UFFD_API;
	a->features = features;
	a->ioctls = 0;
	if (ioctl(fd, UFFDIO_API, a) < 0)
		return -errno;
	return 0;
}

int luffd__probe(enum luffd_open_mode mode, struct luffd__kernel *k)
{
	enum luffd_open_mode how;
	struct uffdio_api a;
	int fd, err;

	/* UFFDIO_API may be called once per descriptor, and asking for a
	 * feature the kernel lacks fails the call: learn the offer on a
	 * throw-away descriptor first. */
	fd = open_mode(mode, &how);
	if (fd < 0)
		return fd;
	err = api(fd, 0, &a);
	close(fd);
	if (err) {
		pr_warn("UFFDIO_API: %s\n", luffd_strerror(err));
		return -LUFFD_E_UFFD_API;
	}
	k->api = a.api;
	k->features = a.features;
	k->ioctls = a.ioctls;
	return 0;
}

int luffd__uffd_open(enum luffd_open_mode mode, uint64_t features, int *fdp,
		     enum luffd_open_mode *how, uint64_t *ioctls)
{
	struct uffdio_api a;
	int fd, err;

	fd = open_mode(mode, how);
	if (fd < 0)
		return fd;
	err = api(fd, features, &a);
	if (err) {
		close(fd);
		pr_warn("UFFDIO_API(features=%#llx): %s\n",
			(unsigned long long)features, luffd_strerror(err));
		return -LUFFD_E_UFFD_API;
	}
	*fdp = fd;
	*ioctls = a.ioctls;
	return 0;
}
