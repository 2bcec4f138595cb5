/* SPDX-License-Identifier: MIT */
/*
 * nbdkit-delayus-filter: delays each read (and, if asked, each write and
 * zero) by a number of microseconds before passing it to the plugin below.
 * nbdkit 1.32's own delay filter counts in whole milliseconds, and the
 * bench needs 200 us per request (uffd-bench --store nbd
 * --store-latency-us N starts nbdkit with it).
 *
 *   nbdkit --filter=/abs/path/nbdkit-delayus-filter.so file FILE \
 *          delay-read-us=200 [delay-write-us=N] [delay-zero-us=N]
 *
 * The sleep is nbdkit_nanosleep(), which returns early (ESHUTDOWN) when
 * the server shuts down or the client goes away, so a long delay never
 * holds up nbdkit's exit.  The filter keeps no state and declares no
 * thread model, so the plugin's (parallel for the file plugin) stands:
 * requests in flight sleep side by side.  nbdkit loads only filters built
 * against its own version's header.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <nbdkit-filter.h>

static unsigned int delay_read_us, delay_write_us, delay_zero_us;

static int delayus_config(nbdkit_next_config *next, nbdkit_backend *nxdata,
			  const char *key, const char *value)
{
	if (!strcmp(key, "delay-read-us"))
		return nbdkit_parse_unsigned(key, value, &delay_read_us);
	if (!strcmp(key, "delay-write-us"))
		return nbdkit_parse_unsigned(key, value, &delay_write_us);
	if (!strcmp(key, "delay-zero-us"))
		return nbdkit_parse_unsigned(key, value, &delay_zero_us);
	return next(nxdata, key, value);
}

/* 0, or -1 with *err set (ESHUTDOWN: nbdkit is stopping or the client
 * left; the request then fails, as it would in nbdkit's delay filter). */
static int delay(unsigned int us, int *err)
{
	if (us && nbdkit_nanosleep(us / 1000000, us % 1000000 * 1000) < 0) {
		*err = errno;
		return -1;
	}
	return 0;
}

static int delayus_pread(nbdkit_next *next, void *handle, void *buf,
			 uint32_t count, uint64_t offset, uint32_t flags,
			 int *err)
{
	(void)handle;
	if (delay(delay_read_us, err) < 0)
		return -1;
	return next->pread(next, buf, count, offset, flags, err);
}

static int delayus_pwrite(nbdkit_next *next, void *handle, const void *buf,
			  uint32_t count, uint64_t offset, uint32_t flags,
			  int *err)
{
	(void)handle;
	if (delay(delay_write_us, err) < 0)
		return -1;
	return next->pwrite(next, buf, count, offset, flags, err);
}

static int delayus_zero(nbdkit_next *next, void *handle, uint32_t count,
			uint64_t offset, uint32_t flags, int *err)
{
	(void)handle;
	if (delay(delay_zero_us, err) < 0)
		return -1;
	return next->zero(next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
	.name = "delayus",
	.longname = "libuffd bench microsecond delay filter",
	.config = delayus_config,
	.config_help =
		"delay-read-us=<N>           Delay each read by N microseconds.\n"
		"delay-write-us=<N>          Delay each write by N microseconds.\n"
		"delay-zero-us=<N>           Delay each zero by N microseconds.",
	.pread = delayus_pread,
	.pwrite = delayus_pwrite,
	.zero = delayus_zero,
};

/* Defined by NBDKIT_REGISTER_FILTER, the one symbol nbdkit looks up. */
struct nbdkit_filter *filter_init(void);

NBDKIT_REGISTER_FILTER(filter)
