# SPDX-License-Identifier: MIT
#
# Shared by the bench tests (sourced, not run).  The sourcing script sets
# BENCH (the binary), NAME (its name, as its messages start) and TMP (a
# scratch directory).

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# expect_exit CODE ARGS...: run the binary, want exit CODE and, for 2, a
# message on stderr that names it.  Its output is left in $TMP/out and
# $TMP/err.
expect_exit() {
	want=$1
	shift
	"$BENCH" "$@" >"$TMP/out" 2>"$TMP/err"
	got=$?
	[ "$got" -eq "$want" ] ||
		fail "$NAME $* exited $got, want $want: $(cat "$TMP/err")"
	if [ "$want" -eq 2 ]; then
		grep -q "$NAME: " "$TMP/err" ||
			fail "$NAME $*: no message on stderr"
	fi
}
