#!/bin/sh
# SPDX-License-Identifier: MIT
# lazycat is byte-identical to cat: for files (empty, odd-sized, several at
# once) and for an NBD export served by nbdkit (skipped without nbdkit).
# Usage: test_lazycat.sh PATH/TO/lazycat.  Exit 0 pass, 1 fail, 77 skip.
set -u
LAZYCAT=${1:?usage: test_lazycat.sh PATH/TO/lazycat}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/lazycat-test.XXXXXX") || exit 1
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM
fail() { echo "FAIL: $*" >&2; exit 1; }

if ! "$LAZYCAT" /dev/null 2>"$TMP/err"; then
	grep -qi "userfaultfd\|io_uring" "$TMP/err" && { echo "SKIP: $(cat "$TMP/err")"; exit 77; }
fi
head -c 5000001 /dev/urandom >"$TMP/a" || exit 1
head -c 4096 /dev/urandom >"$TMP/b"
: >"$TMP/empty"
"$LAZYCAT" "$TMP/a" "$TMP/empty" "$TMP/b" >"$TMP/out" || fail "lazycat files"
cat "$TMP/a" "$TMP/empty" "$TMP/b" | cmp -s - "$TMP/out" || fail "files differ from cat"

if ! command -v nbdkit >/dev/null; then
	echo "PASS (files; no nbdkit for the NBD part)"; exit 0
fi
sock="$TMP/nbd.sock"
# -P: the pid file appears once nbdkit accepts connections.
nbdkit -r -f -U "$sock" -P "$TMP/nbd.pid" file "$TMP/a" 2>"$TMP/nbdkit.err" &
pid=$!
i=0
while [ ! -s "$TMP/nbd.pid" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
[ -s "$TMP/nbd.pid" ] || fail "nbdkit did not listen: $(cat "$TMP/nbdkit.err")"
if ! "$LAZYCAT" -s "nbd+unix:///?socket=$sock" >"$TMP/nbd.out" 2>"$TMP/nbd.err"; then
	grep -q "without libnbd" "$TMP/nbd.err" && { echo "PASS (files; libuffd without libnbd)"; exit 0; }
	fail "lazycat NBD: $(cat "$TMP/nbd.err")"
fi
cmp -s "$TMP/a" "$TMP/nbd.out" || fail "the NBD export differs from cat of its file"
echo "PASS"
