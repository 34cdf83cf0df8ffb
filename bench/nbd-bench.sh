#!/usr/bin/env bash
# End-to-end NBD benchmark (issue "foundation"): blockrepl vs qemu-nbd vs nbdkit, side by side in one run.
#
#   make bench                          (builds first), or: bash bench/nbd-bench.sh
#   SERVERS="qemu-nbd nbdkit" RUNTIME=3 REPEATS=1 bash bench/nbd-bench.sh
#
# Environment:
#   SERVERS    servers to measure, any of "blockrepl qemu-nbd nbdkit" (default: all three)
#   RUNTIME    seconds per fio run, time_based (default 10); RAMP: ramp_time seconds (default 1)
#   REPEATS    runs per (server, job) cell; the table shows the median (default 3)
#   WARMUP     seconds of unmeasured 4 KiB randrw QD8 per server before the first run (default 2; 0 = none)
#   BLOCKREPL  daemon binary (default src/BlockRepl/bin/Release/net10.0/blockrepl)
#   BENCH_TMPDIR  where the 1 GiB images go (default ${TMPDIR:-/var/tmp}; should be a real disk, not tmpfs)
#   KEEP_TMP=1 keep the temp dir (images, fio JSON, server logs) for inspection
#
# Method: every server gets its own 1 GiB raw file. One master file is filled once with 1 GiB from
# /dev/urandom and copied (cp --reflink=never, a real data copy) to each server's file, so all start
# with identical, fully allocated, non-zero data and reads hit real data. All servers run for the whole
# benchmark (idle when not measured). Runs are interleaved: for each repeat, for each job, every
# server in turn (A,B,C,A,B,C,...), so drift over time hits all servers alike.
# fio uses its nbd engine (libnbd, one connection); numbers are from fio's JSON: IOPS, bandwidth,
# completion latency (clat) p50 and p99 in microseconds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

SERVERS="${SERVERS:-blockrepl qemu-nbd nbdkit}"
RUNTIME="${RUNTIME:-10}"
RAMP="${RAMP:-1}"
REPEATS="${REPEATS:-3}"
WARMUP="${WARMUP:-2}"
BLOCKREPL="${BLOCKREPL:-src/BlockRepl/bin/Release/net10.0/blockrepl}"
BENCH_TMPDIR="${BENCH_TMPDIR:-${TMPDIR:-/var/tmp}}"
RESULTS_DIR="$REPO/bench/results"
OUT_MD="$RESULTS_DIR/nbd-bench-latest.md"
OUT_TSV="$RESULTS_DIR/nbd-bench-latest.tsv"
EXPORT=bench
IMAGE_SIZE_MIB=1024

# name | fio arguments
JOBS=(
    "4k-randwrite-qd1|--rw=randwrite --bs=4k --iodepth=1"
    "4k-randwrite-qd32|--rw=randwrite --bs=4k --iodepth=32"
    "4k-randread-qd32|--rw=randread --bs=4k --iodepth=32"
    "1m-seqwrite-qd8|--rw=write --bs=1m --iodepth=8"
)

die() { echo "nbd-bench: $*" >&2; exit 1; }
log() { echo "nbd-bench: $*" >&2; }

# ---------------------------------------------------------------- checks
for v in RUNTIME RAMP REPEATS WARMUP; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number of seconds/runs, got '${!v}'"
done
((RUNTIME > 0 && REPEATS > 0)) || die "RUNTIME and REPEATS must be > 0"
read -r -a SERVER_LIST <<<"$SERVERS"
((${#SERVER_LIST[@]} > 0)) || die "SERVERS is empty"
for s in "${SERVER_LIST[@]}"; do
    case "$s" in blockrepl | qemu-nbd | nbdkit) ;; *) die "unknown server '$s' in SERVERS (known: blockrepl qemu-nbd nbdkit)" ;; esac
done
for tool in fio jq python3 nbdinfo; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run 'make deps' (tools/install-deps.sh)"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (Debian's fio has it): run 'make deps'"
for s in "${SERVER_LIST[@]}"; do
    case "$s" in
    blockrepl) [[ -x "$BLOCKREPL" ]] || die "$BLOCKREPL not found or not executable: run 'make build' first" ;;
    qemu-nbd) command -v qemu-nbd >/dev/null 2>&1 || die "qemu-nbd not found: run 'make deps'" ;;
    nbdkit) command -v nbdkit >/dev/null 2>&1 || die "nbdkit not found: run 'make deps'" ;;
    esac
done
[[ "$BLOCKREPL" == /* ]] || BLOCKREPL="$REPO/$BLOCKREPL"

# ---------------------------------------------------------------- cleanup
declare -A PIDS=() PORTS=() URIS=() LOGS=()
WORK=""
FIO_PID=""
cleanup() {
    local rc=$? s pid i
    trap - EXIT INT TERM
    if [[ -n "$FIO_PID" ]]; then
        kill -TERM "$FIO_PID" 2>/dev/null || true
        wait "$FIO_PID" 2>/dev/null || true
    fi
    for s in "${!PIDS[@]}"; do
        pid="${PIDS[$s]}"
        kill -TERM "$pid" 2>/dev/null || continue
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$s (pid $pid) did not stop within 10 s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "${KEEP_TMP:-0}" == 1 ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- machine info
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*: //' || true)
[[ -n "$CPU_MODEL" ]] || CPU_MODEL=$(uname -m)
if GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
    git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || GIT_REV="$GIT_REV + uncommitted changes in src/"
else
    GIT_REV="(no commit yet)"
fi

mkdir -p "$BENCH_TMPDIR" "$RESULTS_DIR"
WORK=$(mktemp -d "$BENCH_TMPDIR/nbd-bench.XXXXXX")
FSTYPE=$(stat -f -c %T "$WORK" 2>/dev/null || echo "?")
[[ "$FSTYPE" == tmpfs ]] && log "warning: $WORK is on tmpfs; set BENCH_TMPDIR to a directory on a real disk"

versions=() server_desc=()
for s in "${SERVER_LIST[@]}"; do
    case "$s" in
    blockrepl)
        versions+=("blockrepl $GIT_REV")
        server_desc+=("blockrepl \`serve --image FILE --size 1G\` (DOTNET_gcServer=0)")
        ;;
    qemu-nbd)
        versions+=("$(qemu-nbd --version | head -1)")
        server_desc+=("\`qemu-nbd --cache=writeback -f raw --persistent\`")
        ;;
    nbdkit)
        versions+=("$(nbdkit --version | head -1)")
        server_desc+=("\`nbdkit file\` (defaults)")
        ;;
    esac
done

HEADER=$(
    cat <<EOF
# NBD end-to-end benchmark

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: $(nproc) CPUs, $CPU_MODEL; kernel $(uname -r); $(awk '/^MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo)
- tools: $(fio --version)$(printf ', %s' "${versions[@]}")
- method: fio --ioengine=nbd (1 connection), time_based ${RUNTIME} s + ramp ${RAMP} s per run, median of ${REPEATS} interleaved run(s) per cell, warm-up ${WARMUP} s per server
- images: one 1 GiB raw file per server on $FSTYPE ($BENCH_TMPDIR), each a copy of the same 1 GiB of /dev/urandom data
- servers:$(printf ' %s;' "${server_desc[@]}" | sed 's/;$//')
EOF
)
echo "$HEADER"
echo

# ---------------------------------------------------------------- images
log "filling a 1 GiB master image from /dev/urandom in $WORK ..."
dd if=/dev/urandom of="$WORK/master.img" bs=1M count="$IMAGE_SIZE_MIB" iflag=fullblock status=none
for s in "${SERVER_LIST[@]}"; do
    mkdir -p "$WORK/$s"
    cp --reflink=never "$WORK/master.img" "$WORK/$s/disk.img"
done
rm -f "$WORK/master.img"
sync

# ---------------------------------------------------------------- servers
wait_nbd_ready() { # server uri pid
    local s=$1 uri=$2 pid=$3 i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "${LOGS[$s]}" >&2; die "$s exited during startup (log above)"; }
        if nbdinfo --size "$uri" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    tail -n 20 "${LOGS[$s]}" >&2
    die "$s did not accept NBD connections on $uri within 30 s"
}

start_server() { # server
    local s=$1 port dir pid i line uri
    port=$(free_port)
    dir="$WORK/$s"
    LOGS[$s]="$dir/server.log"
    case "$s" in
    blockrepl)
        DOTNET_gcServer=0 "$BLOCKREPL" serve --data-dir "$dir" --volume "$EXPORT" --image "$dir/disk.img" \
            --size 1G --nbd "127.0.0.1:$port" --admin "unix:$dir/admin.sock" </dev/null >"${LOGS[$s]}" 2>&1 &
        pid=$!
        PIDS[$s]=$pid
        # Wait for its one 'ready' line: blockrepl: ready volume=bench nbd=nbd://127.0.0.1:PORT/bench admin=...
        line=""
        for ((i = 0; i < 600; i++)); do
            line=$(grep -m1 -E '(^|: )ready( |$)' "${LOGS[$s]}" 2>/dev/null) && break
            kill -0 "$pid" 2>/dev/null || { tail -n 20 "${LOGS[$s]}" >&2; die "blockrepl exited before it was ready (log above)"; }
            sleep 0.1
        done
        [[ -n "$line" ]] || { tail -n 20 "${LOGS[$s]}" >&2; die "blockrepl printed no ready line within 60 s"; }
        uri=$(sed -n 's/.*[[:space:]]nbd=\([^[:space:]]*\).*/\1/p' <<<"$line")
        uri="${uri:-nbd://127.0.0.1:$port/$EXPORT}"
        ;;
    qemu-nbd)
        # --persistent is the long form of -t: keep serving after a client disconnects.
        qemu-nbd --cache=writeback -f raw --persistent -b 127.0.0.1 -p "$port" -x "$EXPORT" "$dir/disk.img" \
            </dev/null >"${LOGS[$s]}" 2>&1 &
        pid=$!
        PIDS[$s]=$pid
        uri="nbd://127.0.0.1:$port/$EXPORT"
        wait_nbd_ready "$s" "$uri" "$pid"
        ;;
    nbdkit)
        # nbdkit's file plugin ignores the export name; the same URI form is used.
        nbdkit --foreground -i 127.0.0.1 -p "$port" file "$dir/disk.img" </dev/null >"${LOGS[$s]}" 2>&1 &
        pid=$!
        PIDS[$s]=$pid
        uri="nbd://127.0.0.1:$port/$EXPORT"
        wait_nbd_ready "$s" "$uri" "$pid"
        ;;
    esac
    PORTS[$s]=$port
    URIS[$s]=$uri
    log "$s ready at $uri (pid $pid)"
}

for s in "${SERVER_LIST[@]}"; do start_server "$s"; done

# ---------------------------------------------------------------- runs
FIO_TIMEOUT=$((RUNTIME + RAMP + 60))
FAILED=0
: >"$OUT_TSV.tmp"

run_fio() { # server jobname out.json fio-args...
    local s=$1 name=$2 out=$3
    shift 3
    if ! kill -0 "${PIDS[$s]}" 2>/dev/null; then
        log "$s is no longer running; skipping $name"
        return 1
    fi
    # fio's nbd engine may print a line before the JSON: the JSON goes to a file of its own.
    # fio runs in the background and is waited for, so a signal to this script is acted on at once.
    timeout "$FIO_TIMEOUT" fio --name="$name" --ioengine=nbd --uri="${URIS[$s]}" \
        --numjobs=1 --norandommap --randrepeat=0 "$@" \
        --output-format=json --output="$out" >"$out.stdout" 2>"$out.stderr" &
    FIO_PID=$!
    local rc=0
    wait "$FIO_PID" || rc=$?
    FIO_PID=""
    if ((rc != 0)); then
        log "fio failed (status $rc) for $s / $name: $(cat "$out.stderr" "$out.stdout" 2>/dev/null | tail -n 3 | tr '\n' ' ')"
        return 1
    fi
}

if ((WARMUP > 0)); then
    for s in "${SERVER_LIST[@]}"; do
        log "warm-up: $s ${WARMUP} s"
        run_fio "$s" warmup "$WORK/$s/warmup.json" --rw=randrw --bs=4k --iodepth=8 --time_based --runtime="$WARMUP" ||
            log "warm-up failed for $s (continuing)"
    done
fi

total=$((REPEATS * ${#JOBS[@]} * ${#SERVER_LIST[@]}))
n=0
for ((rep = 1; rep <= REPEATS; rep++)); do
    for job in "${JOBS[@]}"; do
        name="${job%%|*}"
        read -r -a args <<<"${job#*|}"
        for s in "${SERVER_LIST[@]}"; do
            n=$((n + 1))
            out="$WORK/$s/$name.$rep.json"
            log "[$n/$total] run $rep/$REPEATS $name on $s"
            if run_fio "$s" "$name" "$out" "${args[@]}" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP"; then
                # The JSON may be preceded by a non-JSON line: start at the first line that opens an object.
                if ! sed -n '/^{/,$p' "$out" | jq -r --arg s "$s" --arg j "$name" --arg r "$rep" '
                    .jobs[0] as $job
                    | (if ($job.write.io_bytes // 0) > 0 then $job.write else $job.read end) as $d
                    | if ($job.error // 0) != 0 then error("fio job error \($job.error)") else . end
                    | [$s, $j, $r, $d.iops, ($d.bw_bytes / 1048576),
                       ($d.clat_ns.percentile["50.000000"] / 1000), ($d.clat_ns.percentile["99.000000"] / 1000)]
                    | @tsv' >>"$OUT_TSV.tmp"; then
                    log "could not parse fio output for $s / $name (run $rep)"
                    FAILED=1
                fi
            else
                FAILED=1
            fi
        done
    done
done

# ---------------------------------------------------------------- table
JOB_NAMES=()
for job in "${JOBS[@]}"; do JOB_NAMES+=("${job%%|*}"); done
{
    printf 'server\tjob\trun\tiops\tmib_s\tclat_p50_us\tclat_p99_us\n'
    cat "$OUT_TSV.tmp"
} >"$OUT_TSV"
rm -f "$OUT_TSV.tmp"

TABLE=$(python3 - "$OUT_TSV" "$SERVERS" "${JOB_NAMES[*]}" <<'PY'
import csv, statistics, sys

tsv, servers, jobs = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
runs = {}
with open(tsv) as f:
    for row in csv.DictReader(f, delimiter="\t"):
        key = (row["server"], row["job"])
        runs.setdefault(key, []).append({k: float(row[k]) for k in ("iops", "mib_s", "clat_p50_us", "clat_p99_us")})

def med(s, j, k):
    vals = [r[k] for r in runs.get((s, j), [])]
    return statistics.median(vals) if vals else None

def fmt_int(v):  return "n/a" if v is None else f"{v:,.0f}"
def fmt_mib(v):  return "n/a" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")
def fmt_us(v):   return "n/a" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")
def fmt_ratio(a, b): return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"

ratios = [(a, b) for a, b in (("blockrepl", "qemu-nbd"), ("blockrepl", "nbdkit")) if a in servers and b in servers]
head = ["job"]
for s in servers:
    head += [f"{s} IOPS", f"{s} MiB/s", f"{s} p50 us", f"{s} p99 us"]
head += [f"IOPS {a}/{b}" for a, b in ratios]
lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
for j in jobs:
    cells = [j]
    for s in servers:
        cells += [fmt_int(med(s, j, "iops")), fmt_mib(med(s, j, "mib_s")),
                  fmt_us(med(s, j, "clat_p50_us")), fmt_us(med(s, j, "clat_p99_us"))]
    cells += [fmt_ratio(med(a, j, "iops"), med(b, j, "iops")) for a, b in ratios]
    lines.append("| " + " | ".join(cells) + " |")
print("\n".join(lines))
counts = sorted({len(v) for v in runs.values()})
if counts:
    print()
    print("p50/p99: fio completion latency (clat) percentiles, microseconds; MiB/s = 2^20 bytes/s. "
          "Runs per cell: " + ", ".join(map(str, counts)) + " (median shown).")
PY
)

echo "$TABLE"
{
    echo "$HEADER"
    echo
    echo "$TABLE"
    echo
    echo "Raw per-run numbers: bench/results/$(basename "$OUT_TSV")"
} >"$OUT_MD"
echo
log "table written to ${OUT_MD#"$REPO"/}, per-run numbers to ${OUT_TSV#"$REPO"/}"
if ((FAILED)); then
    log "some runs failed (see messages above); their cells use the remaining runs or show n/a"
    exit 1
fi
