// The public header compiles and links from C++.
#include <cstdio>
#include <libuffd.h>

int main()
{
	struct luffd_stats st = {};
	st.sz = sizeof(st);
	std::printf("%s %s\n", luffd_class_name(LUFFD_MAJOR),
		    luffd_strerror(-LUFFD_E_UFFD_PERM));
	/* Names of the newer API reachable at namespace scope from C++. */
	struct luffd_ctx_opts o = {};
	struct luffd_range r = {};
	o.wp_mode = LUFFD_WP_ASYNC;
	if (o.wp_mode != LUFFD_WP_ASYNC || (LUFFD_MAP_WP & LUFFD_MAP_PUSH) ||
	    luffd_dirty(nullptr, nullptr, 0, &r, 1, 0) != -22 ||
	    luffd_push_wait(nullptr, nullptr, 0, 0) != -22)
		return 1;
	/* Write-back and the resident limit (exported: these link). */
	o.resident_bytes = 0;
	if (!(LUFFD_MAP_WRITEBACK & LUFFD_REGISTER_WRITEBACK) ||
	    luffd_msync(nullptr, nullptr, 0, LUFFD_MSYNC_DURABLE) != -22 ||
	    luffd_write_complete(nullptr, 0, 0) != -22 ||
	    luffd_stats_peek(nullptr, &st) != -22)
		return 1;
	return luffd_stats_get(nullptr, &st) == -22 ? 0 : 1;
}
