// The public header compiles and links from C++.
#include <cstdio>
#include <libuffd.h>

int main()
{
	struct luffd_stats st = {};
	st.sz = sizeof(st);
	std::printf("%s %s\n", luffd_class_name(LUFFD_MAJOR),
		    luffd_strerror(-LUFFD_E_UFFD_PERM));
	return luffd_stats_get(nullptr, &st) == -22 ? 0 : 1;
}
