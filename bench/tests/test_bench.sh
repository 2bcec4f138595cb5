#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Tests for uffd-bench.  Usage: test_bench.sh PATH/TO/uffd-bench TEST
# TEST is one of: args json corrupt small trace store ooc (or "all").
# Exit 0 pass, 1 fail, 77 skipped (no userfaultfd, no python3 for json and
# ooc, no memory cgroup for ooc).
set -u

BENCH=${1:?usage: test_bench.sh PATH/TO/uffd-bench TEST}
TEST=${2:-all}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/uffd-bench-test.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT INT TERM
NAME=uffd-bench
. "$(dirname "$0")/lib.sh"

need_uffd() {
	if ! "$BENCH" --check-uffd 2>"$TMP/why"; then
		echo "SKIP: $(cat "$TMP/why")" >&2
		exit 77
	fi
}

t_args() {
	expect_exit 0 --help
	grep -q -- "--corrupt-page" "$TMP/out" || fail "--help text incomplete"
	expect_exit 2 --bogus
	expect_exit 2 --size
	expect_exit 2 --size 0
	expect_exit 2 --size 12Q
	expect_exit 2 --size -5
	expect_exit 2 --pattern seq,bogus
	expect_exit 2 --pattern stride:0
	expect_exit 2 --pattern zipf:x
	expect_exit 2 --engine libuffd,bogus
	expect_exit 2 --threads 0
	expect_exit 2 --threads many
	expect_exit 2 --repeat 0
	expect_exit 2 --trace-format xml
	expect_exit 2 --file /nonexistent/uffd-bench-file
	expect_exit 2 --file "$TMP" # a directory
	expect_exit 2 --file /etc/hostname --size 1M
	expect_exit 2 --size 1M --corrupt-page 256
	expect_exit 2 --engine mmap --trace "$TMP/t"
	expect_exit 2 extra-argument
	# The out-of-core workload's own errors.
	expect_exit 2 --workload bogus
	expect_exit 2 --workload ooc --file /etc/hostname
	expect_exit 2 --workload touch --resident 8M
	expect_exit 2 --engine mmap-shared
	expect_exit 2 --workload ooc --engine naive
	expect_exit 2 --write-ratio 1.5
	expect_exit 2 --write-ratio x
	expect_exit 2 --passes 0
	expect_exit 2 --size 4M --resident 4M
	expect_exit 2 --size 4M --resident 100000
	expect_exit 2 --workload ooc --size 1000000
	expect_exit 2 --workload ooc --warm
	expect_exit 2 --workload ooc --pattern seq
	expect_exit 2 --workload ooc --prot r
	expect_exit 2 --workload ooc --store memory
	expect_exit 2 --mmap-advice sometimes
	expect_exit 2 --size 1M --store memory --corrupt-page 3
	# CPU 63 only, on a machine with fewer CPUs.
	[ "$(nproc --all)" -lt 64 ] &&
		expect_exit 2 --size 1M --thread-cpus 9223372036854775808
	# Settings the library refuses (luffd_ctx_create: -EINVAL) are bad
	# arguments too; telling them apart needs a userfaultfd.
	if "$BENCH" --check-uffd 2>/dev/null; then
		expect_exit 2 --size 1M --handler-threads 65
		expect_exit 2 --size 1M --readahead 8M
		expect_exit 2 --size 1M --cache-size 4K
	fi
}

t_json() {
	need_uffd
	command -v python3 >/dev/null || { echo "SKIP: no python3" >&2; exit 77; }
	expect_exit 0 --size 4M --pattern seq,stride:16 --warm-and-cold \
		--repeat 2 --quiet --json "$TMP/r.json"
	python3 - "$TMP/r.json" <<'EOF' || fail "JSON report invalid"
import json, sys
d = json.load(open(sys.argv[1]))
for k in ("schema", "libuffd_version", "machine", "config", "runs",
          "ratios", "failures", "result"):
    assert k in d, "missing top-level key " + k
assert d["schema"] == "uffd-bench/1"
assert d["result"] == "ok", d["failures"]
c = d["config"]
for k in ("file", "generated", "size", "pages", "patterns", "engines",
          "cache", "threads", "repeat", "seed", "libuffd", "trace",
          "trace_format", "corrupt_page"):
    assert k in c, "missing config key " + k
for k in ("handler_threads", "queue_depth", "cache_bytes", "readahead_bytes",
          "readahead_mode", "install_ahead_bytes", "direct", "spin_us"):
    assert k in c["libuffd"], "missing config.libuffd key " + k
assert len(d["runs"]) == 2 * 2 * 2 * 3, len(d["runs"])
lat = ("count", "min", "mean", "p50", "p90", "p99", "p999", "max")
for r in d["runs"]:
    for k in ("engine", "pattern", "cache", "repeat", "ok", "error",
              "verified", "bad_pages", "pages", "bytes", "wall_ns", "gbps",
              "faults_per_s", "faults", "rusage", "page_cache",
              "latency_ns"):
        assert k in r, "missing run key " + k
    assert r["ok"] and r["verified"] and r["pages"] == 1024
    # Read amplification: what was read to serve the run, per byte
    # touched.  A sequential libuffd run reads the file once (the 4 MiB
    # file is all touched); naive reads a page per fault.
    assert "bytes_read" in r and "read_amp" in r
    if r["engine"] == "libuffd" and r["pattern"] == "seq":
        assert 0.99 <= r["read_amp"] <= 1.05, r["read_amp"]
    if r["engine"] == "naive":
        assert r["read_amp"] == 1.0, r["read_amp"]
    assert all(k in r["latency_ns"] for k in lat)
    l = r["latency_ns"]
    assert l["min"] <= l["p50"] <= l["p90"] <= l["p99"] <= l["p999"] <= l["max"]
    assert set(r["faults"]) == {"minor", "major", "zero", "error", "total"}
    if r["engine"] == "libuffd":
        u = r["libuffd"]
        for k in ("stats", "service_latency_ns",
                  "thread_latency_by_class_ns", "trace_callback_faults"):
            assert k in u, "missing libuffd key " + k
        assert set(u["service_latency_ns"]) == {"minor", "major", "zero", "error"}
        assert r["faults"]["total"] > 0
        b = u["blocktime"]
        for k in ("threads", "all_threads", "sum_ns", "max_ns", "any_ns",
                  "all_ns", "untracked_faults", "wall_ns"):
            assert k in b, "missing blocktime key " + k
        assert b["threads"] == 1 == b["all_threads"], b
        assert b["wall_ns"] == r["wall_ns"], b
        # One faulting thread: its total is any, and all.
        assert 0 < b["sum_ns"] == b["max_ns"], b
        assert b["all_ns"] == b["any_ns"] > 0, b
        assert len(u["latency_dist"]) == 24, u["latency_dist"]
        assert sum(u["latency_dist"]) == r["faults"]["total"], u
    if r["engine"] == "naive":
        assert r["faults"]["major"] == 1024, r["faults"]
        assert all(k in r["naive"]["service_latency_ns"] for k in lat)
assert len(d["ratios"]) == 2 * 2 * 2, len(d["ratios"])
for q in d["ratios"]:
    for k in ("pattern", "cache", "numerator", "denominator", "time_ratio",
              "throughput_ratio", "p50_latency_ratio", "p99_latency_ratio"):
        assert k in q, "missing ratio key " + k
    assert q["numerator"] == "libuffd"
    assert q["denominator"] in ("mmap", "naive")
EOF
	# pread (the one-copy ceiling) only on request, with its own ratio.
	expect_exit 0 --size 2M --pattern seq --warm --quiet \
		--engine libuffd,pread --json "$TMP/p.json"
	python3 - "$TMP/p.json" <<'EOF' || fail "JSON report with pread invalid"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["result"] == "ok", d["failures"]
assert sorted(r["engine"] for r in d["runs"]) == ["libuffd", "pread"]
p = [r for r in d["runs"] if r["engine"] == "pread"][0]
assert p["verified"] and p["faults"]["total"] == 0 and p["wall_ns"] > 0
assert [q["denominator"] for q in d["ratios"]] == ["pread"]
EOF
}

t_corrupt() {
	need_uffd
	expect_exit 1 --size 2M --engine libuffd --pattern rand --warm \
		--corrupt-page 77 --quiet --json "$TMP/c.json"
	grep -q "page 77 " "$TMP/err" || fail "the error does not name page 77"
	grep -q "libuffd" "$TMP/err" || fail "the error does not name the engine"
	grep -q '"result": "failed"' "$TMP/c.json" || fail "JSON says not failed"
	# The same run without the hook passes.
	expect_exit 0 --size 2M --engine libuffd --pattern rand --warm --quiet
}

t_small() {
	need_uffd
	expect_exit 0 --size 8M --quiet
	for e in libuffd mmap naive; do
		grep -q "^seq  *warm *$e " "$TMP/out" || fail "no $e row"
	done
	grep -q "FAILED" "$TMP/out" && fail "a run failed"
	# Several faulting threads, a file given by path, odd size, zipf.
	head -c 3000001 /dev/urandom >"$TMP/f"
	expect_exit 0 --file "$TMP/f" --threads 3 --pattern zipf,stride:7 \
		--warm --quiet
	# The references, a memory store, copies only, read-only mappings,
	# pinned threads: every run verified, every ratio printed.
	expect_exit 0 --size 8M --pattern seq,rand --warm \
		--engine libuffd,pread,fill,bare --store memory --quiet
	for e in pread fill bare; do
		grep -q "^seq  *warm *$e " "$TMP/out" || fail "no $e row"
		grep -q "libuffd/$e" "$TMP/out" || fail "no libuffd/$e ratio"
	done
	# Every engine with the most ratios (7 patterns, warm and cold, 5
	# denominators: all 70 printed), plotted: each engine has a colour.
	expect_exit 0 --size 1M --warm-and-cold \
		--pattern seq,rand,stride:3,stride:5,stride:7,zipf,zipf:1.2 \
		--engine libuffd,mmap,naive,pread,fill,bare --quiet \
		--plot "$TMP/all.png"
	n=$(grep -c "libuffd/" "$TMP/out")
	[ "$n" -eq 70 ] || fail "$n ratios, want 70"
	if command -v gnuplot >/dev/null; then
		grep -q "gnuplot failed" "$TMP/err" && fail "plot: $(head -c 300 "$TMP/err")"
		[ -s "$TMP/all.png" ] || fail "no plot written"
	fi
	expect_exit 0 --size 8M --warm --engine libuffd,mmap --install copy \
		--prot r --spin-us 0 --handler-cpus 1 --thread-cpus 1 --quiet
	grep -q "FAILED" "$TMP/out" && fail "a run failed"
	expect_exit 2 --store disk
	expect_exit 2 --install move
	expect_exit 2 --prot w
	expect_exit 2 --handler-cpus 0
	:
}

t_trace() {
	need_uffd
	expect_exit 0 --size 1M --engine libuffd --pattern seq --cold --quiet \
		--trace "$TMP/t.csv" --trace-format csv
	head -1 "$TMP/t.csv" | grep -q '^time_ns,tid,addr,rw,class,latency_ns,error$' ||
		fail "CSV trace header missing"
	[ "$(wc -l <"$TMP/t.csv")" -gt 1 ] || fail "CSV trace empty"
	expect_exit 0 --size 1M --engine libuffd --pattern seq,rand --warm \
		--quiet --trace "$TMP/t.pf"
	for f in "$TMP/t.pf.seq-warm-1" "$TMP/t.pf.rand-warm-1"; do
		[ -s "$f" ] || fail "no trace $f"
		grep -qE '^[0-9]+:[0-9]+:[0-9]+:[rw]:(minor|major):[0-9]+$' "$f" ||
			fail "pfaults lines malformed in $f"
	done
}

# Slow stores: the overlap table against its ideal (with the zero-latency
# calibration rows), the prefetch comparison, both in the JSON; the
# callback store too; the option's errors.
t_store() {
	need_uffd
	expect_exit 0 --size 4M --store async --store-latency-us 100 \
		--threads 4 --pattern rand --warm --readahead 0 \
		--engine libuffd,naive,prefetch --quiet --json "$TMP/s.json"
	grep -q "FAILED" "$TMP/out" && fail "a run failed"
	grep -q "^Overlap: --store async, 100 us per request, 4 faulting" \
		"$TMP/out" || fail "no overlap table"
	grep -q "^rand  *warm *luffd@0 " "$TMP/out" || fail "no zero-latency row"
	grep -q "^Prefetch: demand-fault p50" "$TMP/out" ||
		fail "no prefetch table"
	grep -q "^Blocktime (libuffd" "$TMP/out" || fail "no blocktime table"
	grep -qE "^rand  *warm *libuffd  *1  *4 " "$TMP/out" ||
		fail "no blocktime row for 4 threads"
	grep -q "^Service latency distribution (QEMU's" "$TMP/out" ||
		fail "no latency distribution"
	if command -v python3 >/dev/null; then
		python3 - "$TMP/s.json" <<'PY' || fail "store JSON"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["config"]["libuffd"]["store"] == "async", d["config"]["libuffd"]
assert d["config"]["libuffd"]["store_latency_us"] == 100
o = d["overlap"][0]
assert o["threads_over_latency"] == 40000, o
assert 0 < o["ratio"] and o["ideal"] <= 40000, o
assert o["served_delay_p50_ns"] >= 100000, o
assert o["naive_ratio"] < o["ratio"], o
assert any(r["calibration"] for r in d["runs"])
pf = [r for r in d["runs"] if r["engine"] == "prefetch"][0]
assert pf["libuffd"]["stats"]["prefetched"] > 0, pf["libuffd"]["stats"]
assert d["prefetch"][0]["demand_p50_ns"] > 0, d["prefetch"]
for r in d["runs"]:
    if r["engine"] != "libuffd" or r["calibration"]:
        continue
    b = r["libuffd"]["blocktime"]
    # Four threads each waiting >= 100 us per fault.
    assert b["threads"] == 4 and b["untracked_faults"] == 0, b
    assert b["sum_ns"] >= r["faults"]["major"] * 100000, (b, r["faults"])
    assert b["max_ns"] <= b["sum_ns"] <= 4 * b["max_ns"], b
    assert 0 < b["all_ns"] <= b["any_ns"] <= b["sum_ns"], b
    dist = r["libuffd"]["latency_dist"]
    assert sum(dist) == r["faults"]["total"], dist
    # A major fault waited >= 100 us: bucket 6 ([64, 128) us) or above.
    assert sum(dist[6:]) >= r["faults"]["major"], (dist, r["faults"])
PY
	fi
	expect_exit 0 --size 2M --store callback --store-latency-us 50 \
		--threads 4 --pattern rand --warm --engine libuffd --quiet
	grep -q "^Overlap: --store callback" "$TMP/out" ||
		fail "no callback overlap table"
	expect_exit 2 --size 1M --store-latency-us 10
	expect_exit 2 --size 1M --store async --store-latency-us x
	expect_exit 2 --size 1M --engine prefetch,bogus
	expect_exit 2 --size 1M --engine libuffd,nbdcopy
	# Microsecond delays need nbdkit-delayus-filter.so next to the bench
	# (FILTER_REL, from CMake, is where an install puts it relative to
	# the bench); a copy of the bench without it takes whole ms only.
	filter=$(dirname "$BENCH")/nbdkit-delayus-filter.so
	mkdir "$TMP/bare" && cp "$BENCH" "$TMP/bare/uffd-bench" ||
		fail "cannot copy the bench"
	BENCH0=$BENCH
	BENCH=$TMP/bare/uffd-bench
	expect_exit 2 --size 1M --store nbd --store-latency-us 500
	grep -q "no nbdkit-delayus-filter.so next to uffd-bench" "$TMP/err" ||
		fail "the refusal does not say why: $(cat "$TMP/err")"
	BENCH=$BENCH0
	[ -e "$filter" ] ||
		expect_exit 2 --size 1M --store nbd --store-latency-us 500
	# An NBD export of the bench file, served by an nbdkit the bench
	# starts: every engine verified, the nbdcopy ratio printed, and the
	# overlap table against a delayed server.
	if command -v nbdkit >/dev/null && command -v nbdcopy >/dev/null &&
		! grep -q "without libnbd" "$TMP/err"; then
		expect_exit 0 --size 4M --store nbd --pattern seq,rand --warm \
			--engine libuffd,naive,nbdcopy --quiet
		grep -q "FAILED" "$TMP/out" && fail "an NBD run failed"
		grep -q "^seq  *warm *nbdcopy " "$TMP/out" || fail "no nbdcopy row"
		grep -q "libuffd/nbdcopy" "$TMP/out" || fail "no nbdcopy ratio"
		if [ -e "$filter" ]; then
			t_store_delayus
		fi
		# Without the filter: nbdkit's delay filter, and a note.
		BENCH=$TMP/bare/uffd-bench
		expect_exit 0 --size 2M --store nbd --store-latency-us 1000 \
			--threads 4 --pattern rand --warm --readahead 0 \
			--engine libuffd --quiet
		BENCH=$BENCH0
		grep -q "^Overlap: --store nbd, 1000 us" "$TMP/out" ||
			fail "no NBD overlap table"
		grep -q "no nbdkit-delayus-filter.so next to uffd-bench: 1 ms" \
			"$TMP/err" || fail "the fallback is not said"
	fi
}

# --store nbd --store-latency-us 500 through nbdkit-delayus-filter.so,
# found next to the bench and in an install's layout: the overlap table
# says 500 us, and naive, one read at a time, is held to under 1 / 500 us
# (2000 faults/s; without the delay it makes 10-20 thousand here).
t_store_delayus() {
	for layout in build install; do
		if [ $layout = install ]; then
			[ -n "${FILTER_REL:-}" ] || continue
			mkdir -p "$TMP/inst/bin/$FILTER_REL" &&
				cp "$BENCH0" "$TMP/inst/bin/uffd-bench" &&
				cp "$filter" "$TMP/inst/bin/$FILTER_REL/" ||
				fail "cannot lay out an install"
			BENCH=$TMP/inst/bin/uffd-bench
			fdir=$(cd "$TMP/inst/bin/$FILTER_REL" && pwd -P)
		else
			fdir=$(cd "$(dirname "$filter")" && pwd -P)
		fi
		expect_exit 0 --size 2M --store nbd --store-latency-us 500 \
			--threads 4 --pattern rand --warm --readahead 0 \
			--engine libuffd,naive
		BENCH=$BENCH0
		grep -q "FAILED" "$TMP/out" && fail "a delayed NBD run failed"
		grep -q "500 us per read by $fdir/nbdkit-delayus-filter.so" \
			"$TMP/err" || fail "$layout: filter not used: $(cat "$TMP/err")"
		grep -q "^Overlap: --store nbd, 500 us" "$TMP/out" ||
			fail "no 500 us NBD overlap table"
		# The served delay, measured through libnbd alone with 4
		# reads in flight: at least the 500 us asked for.
		sd=$(awk '$1 == "rand" && $5 == "us" { print $4 }' "$TMP/out")
		[ -n "$sd" ] || fail "no served delay for NBD"
		[ "$(echo "$sd" | cut -d. -f1)" -ge 500 ] ||
			fail "served delay $sd us against a 500 us server"
		fps=$(awk '$1 == "rand" && $3 == "naive" { print $7 }' "$TMP/out")
		[ -n "$fps" ] || fail "no naive row"
		[ "$(echo "$fps" | cut -d. -f1)" -lt 2000 ] ||
			fail "naive made $fps faults/s against a 500 us server"
	done
}

# The out-of-core workload, tiny: both engines verified against the model
# of their writes, the JSON's fields, and a lost write caught.
t_ooc() {
	need_uffd
	command -v python3 >/dev/null || { echo "SKIP: no python3" >&2; exit 77; }
	if ! "$BENCH" --check-cgroup 2>"$TMP/why"; then
		echo "SKIP: $(cat "$TMP/why")" >&2
		exit 77
	fi
	# 32 MiB file, 8 MiB resident limit; the cgroups get 24 MiB, room
	# for the bench's own memory, libuffd's cache and the page cache
	# its write-backs leave dirty (with 16 MiB the cgroup's OOM killer
	# took libuffd in one CI run of many).  Two
	# passes: pages are read again after they were written (and, with
	# the limit in effect, after they were evicted).
	expect_exit 0 --workload ooc --size 32M --resident 8M \
		--memory-limit 24M --threads 2 --write-ratio 0.5 --passes 2 \
		--json "$TMP/o.json"
	grep -q "libuffd also keeps itself under resident_bytes" "$TMP/out" ||
		fail "the output does not say how libuffd is held"
	grep -q "^mmap-shared  *1 .* ok$" "$TMP/out" || fail "no mmap-shared row"
	python3 - "$TMP/o.json" <<'EOF' || fail "ooc JSON report invalid"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["result"] == "ok", d["failures"]
c = d["config"]
assert c["workload"] == "ooc" and c["threads"] == 2, c
o = c["ooc"]
for k in ("resident_bytes", "write_ratio", "passes", "memory_limit_bytes",
          "mmap_advice", "cgroup", "cgroup_unavailable",
          "resident_limit_in_effect", "resident_probe", "lose_write"):
    assert k in o, "missing config.ooc key " + k
assert o["resident_bytes"] == 8 << 20 and o["memory_limit_bytes"] == 24 << 20
assert o["write_ratio"] == 0.5 and o["passes"] == 2
assert o["cgroup"] in ("v1", "v2"), o
assert sorted(r["engine"] for r in d["runs"]) == ["libuffd", "mmap-shared"]
for r in d["runs"]:
    assert r["ok"] and r["verified"] and r["bad_pages"] == 0, r["error"]
    x = r["ooc"]
    for k in ("file_size", "threads", "write_ratio", "passes",
              "resident_bytes", "touches", "writes", "reads",
              "read_mismatches", "lost_writes", "touch_ns", "sync_ns",
              "wall_ns", "touches_per_s", "gbps", "peak_rss_bytes",
              "rss_hwm_bytes", "rss_samples", "sample_interval_us",
              "rss_within_limit", "device_read_bytes",
              "device_write_bytes", "cgroup"):
        assert k in x, "missing ooc key " + k
    assert x["file_size"] == 32 << 20 and x["threads"] == 2
    assert x["touches"] == 2 * 8192, x["touches"]
    assert 0 < x["writes"] < x["touches"]
    assert x["reads"] == x["touches"] - x["writes"]
    assert x["read_mismatches"] == 0 and x["lost_writes"] == 0
    assert x["wall_ns"] == x["touch_ns"] + x["sync_ns"] == r["wall_ns"]
    assert x["touch_ns"] > 0 and x["sync_ns"] > 0
    assert x["touches_per_s"] > 0 and x["gbps"] > 0
    assert x["peak_rss_bytes"] > 0 and x["rss_hwm_bytes"] > 0
    assert x["rss_samples"] > 0
    limited = r["engine"] == "mmap-shared" or o["resident_limit_in_effect"]
    assert (x["cgroup"] is not None) == limited, (r["engine"], x["cgroup"])
    if limited:
        g = x["cgroup"]
        assert g["limit_bytes"] == 24 << 20
        assert 0 < g["peak_bytes"] <= g["limit_bytes"], g
        assert g["oom_kills"] == 0, g
    if r["engine"] == "libuffd":
        assert r["libuffd"]["stats"]["written_back"] > 0, r["libuffd"]
assert [q["denominator"] for q in d["ratios"]] == ["mmap-shared"]
assert d["ratios"][0]["throughput_ratio"] > 0
EOF
	# A lost write fails the run (exit 1) with a message naming the page,
	# for each engine, and the next repetition starts from a good file.
	for e in libuffd mmap-shared; do
		expect_exit 1 --workload ooc --size 8M --resident 1M \
			--memory-limit 16M --threads 2 --engine "$e" \
			--repeat 2 --lose-write --quiet
		n=$(grep -c "FAILED: verification failed: engine $e (repetition [12]): page [0-9]* (file offset 0x[0-9a-f]*): lost write" "$TMP/err")
		[ "$n" -eq 2 ] || fail "$e: $n lost writes reported: $(cat "$TMP/err")"
	done
}

case "$TEST" in
args) t_args ;;
json) t_json ;;
corrupt) t_corrupt ;;
small) t_small ;;
trace) t_trace ;;
store) t_store ;;
ooc) t_ooc ;;
all) t_args; t_json; t_corrupt; t_small; t_trace; t_store; t_ooc ;;
*) echo "unknown test $TEST" >&2; exit 2 ;;
esac
echo "PASS: $TEST"
exit 0
