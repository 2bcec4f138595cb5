#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Tests for uring-reg-bench.  Usage: test_uring_reg.sh PATH/TO/uring-reg-bench
# Exit 0 pass, 1 fail, 77 skipped (no io_uring).
set -u

BENCH=${1:?usage: test_uring_reg.sh PATH/TO/uring-reg-bench}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/uring-reg-test.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT INT TERM
NAME=uring-reg-bench
. "$(dirname "$0")/lib.sh"

expect_exit 0 --help
grep -q -- "--bs" "$TMP/out" || fail "--help text incomplete"
expect_exit 2 --bogus
expect_exit 2 --bs 1000
expect_exit 2 --bs 4M
expect_exit 2 --bs 4K,
expect_exit 2 --qd 0
expect_exit 2 --qd 65
expect_exit 2 --rounds 0
expect_exit 2 --reads x
expect_exit 2 --size 1M
expect_exit 2 --file /nonexistent/uring-reg-file
expect_exit 2 --file "$TMP"
expect_exit 2 extra
expect_exit 2 --file /etc/hostname --size 4M

# A small real run: one line per read size, five positive figures each,
# ratios that agree with them.
"$BENCH" --size 4M --bs 4K,64K --reads 500 --rounds 3 >"$TMP/out" 2>"$TMP/err"
rc=$?
[ "$rc" -eq 77 ] && { echo "SKIP: $(cat "$TMP/err")" >&2; exit 77; }
[ "$rc" -eq 0 ] || fail "small run exited $rc: $(cat "$TMP/err")"
awk '
	$1 == "4096" || $1 == "65536" {
		rows++
		gsub(/[()]/, "")
		if (NF != 10) bad = bad " fields:" NF
		for (i = 2; i <= 10; i++) if ($i <= 0) bad = bad " zero"
		for (i = 3; i <= 9; i += 2)
			if (($(i + 1) - $i / $2) > 0.002 || ($i / $2 - $(i + 1)) > 0.002)
				bad = bad " ratio"
	}
	END { if (rows != 2 || bad != "") { print "rows " rows bad; exit 1 } }
' "$TMP/out" || fail "unexpected table: $(cat "$TMP/out")"
exit 0
