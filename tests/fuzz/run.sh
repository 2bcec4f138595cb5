#!/bin/bash
# Build the libFuzzer targets with clang (library instrumented too) in
# their own directory and run each for a bounded time on a generated seed
# corpus.  Exits non-zero on a crash, a leak or a failed check.
#
#   tests/fuzz/run.sh [-max_total_time=N] [other libFuzzer options]
#
# Environment: FUZZ_BUILD (default /tmp/luffd-fuzz-build), FUZZ_TIME
# (default 60 s), FUZZ_JOBS (parallel fuzzing processes, default 1),
# FUZZ_NO_SYNC=1 (skip luffd_ctx_sync() calls).
set -euo pipefail

src=$(cd "$(dirname "$0")/../.." && pwd)
build=${FUZZ_BUILD:-/tmp/luffd-fuzz-build}
time=${FUZZ_TIME:-60}
san="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"

CC=clang cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DLUFFD_FUZZ=ON -DLUFFD_BUILD_TESTS=OFF -DLUFFD_BUILD_EXAMPLES=OFF \
	-DLUFFD_BUILD_BENCH=OFF -DLUFFD_WERROR=OFF -DBUILD_SHARED_LIBS=OFF \
	"-DCMAKE_C_FLAGS=$san" >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzz_api

corpus=$build/corpus/fuzz_api
mkdir -p "$corpus" "$build/artifacts"
# A small deterministic seed corpus: one input per operation, with the
# defaults and with a context of its own, plus random mixes.
python3 - "$corpus" <<'PY'
import os, random, sys
out = sys.argv[1]
rnd = random.Random(1234)
def put(name, b):
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes(b))
for op in range(22):
    # mode 0: shared context; a file store in slot 0, a mapping, the op
    put("op%02d" % op, [0, 0, 0, 0, 0,            # store_file(fd 0)
                        5, 0, 0, 4 << 2, 1, 0,     # map 4 pages, PROT_READ
                        9, 0, 1, 0,                # touch
                        op, 0] + [rnd.randrange(256) for _ in range(24)])
    put("own%02d" % op, [7] + [0] * 40 + [op, 1] +
        [rnd.randrange(256) for _ in range(32)])
for i in range(24):
    put("mix%02d" % i, [rnd.randrange(256) for _ in range(rnd.randrange(8, 400))])
PY

status=0
"$build/tests/fuzz/fuzz_api" -max_total_time="$time" -timeout=20 \
	-rss_limit_mb=4096 -print_final_stats=1 \
	-artifact_prefix="$build/artifacts/" \
	${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} \
	"$@" "$corpus" || status=$?
if [ "$status" -ne 0 ]; then
	echo "fuzz_api: FAILED (exit $status); artifacts in $build/artifacts" >&2
	exit "$status"
fi
echo "fuzz_api: no crash in ${time}s"
