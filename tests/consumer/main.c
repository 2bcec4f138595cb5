/* Links against the installed library and serves one page. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <libuffd.h>

int main(void)
{
	static char page[4096];
	struct luffd_store *store;
	struct luffd_ctx *ctx;
	char *p;
	int err;

	memset(page, 'x', sizeof(page));
	err = luffd_ctx_create(NULL, &ctx);
	if (err) {
		printf("skipped: %s\n", luffd_strerror(err));
		return 77;
	}
	if (luffd_store_memory(page, sizeof(page), &store) ||
	    luffd_map(ctx, store, 0, sizeof(page), PROT_READ, 0, (void **)&p))
		return 1;
	luffd_store_put(store);
	printf("libuffd %s: %c\n", LUFFD_VERSION_STRING, p[100]);
	err = p[100] == 'x' ? 0 : 1;
	luffd_ctx_destroy(ctx);
	return err;
}
