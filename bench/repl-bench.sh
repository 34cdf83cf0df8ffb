#!/usr/bin/env bash
# End-to-end replication benchmark: blockrepl standalone, async pair and sync pair against
# qemu-storage-daemon's blockdev-mirror (write-blocking = synchronous, background = asynchronous),
# side by side in one run, each over NBD on a unix socket and on TCP 127.0.0.1; CPU seconds of the daemons per GiB
# written; garbage collections of both sync-pair daemons in a longer QD32 run; the wire ratio of the sync pair on
# filesystem data.
#
#   bash tools/install-deps.sh && make build && bash bench/repl-bench.sh
#   RUNTIME=3 REPEATS=1 CONFIGS="standalone qsd-sync" bash bench/repl-bench.sh
#   BLOCKREPL=/elsewhere/blockrepl bash bench/repl-bench.sh       (a binary built outside this tree)
#
# Environment:
#   CONFIGS    configurations to measure, any of "standalone async-pair sync-pair qsd-sync qsd-async" (the default)
#              and, for the activity-log comparison (make bench-al), "async-pair-nolog sync-pair-nolog" (the pairs
#              with --activity-log off) and "async-pair-log64" (a 64-extent, 256 MiB log: random writes over
#              the 1 GiB volume keep evicting extents); "async-pair-twin" is a second, identical async pair
#              (a control: how far two identical pairs differ within one run, by their place in the list);
#              "standalone-b sync-pair-b async-pair-b" run the same configurations with the daemon in BLOCKREPL_B
#              (an A/B of two builds in one run, e.g. before and after a change)
#   TRANSPORTS how fio reaches each export, any of "unix tcp" (the default: both, every job on each): a blockrepl
#              daemon listens on both (--nbd unix:PATH,127.0.0.1:0); qemu-storage-daemon has one NBD server per
#              process, so a qsd configuration runs one instance (source, mirror job, qemu-nbd target) per transport
#   GCRUN      1 (default) adds a GC_SECONDS (default 30) 4 KiB randwrite QD32 run on the sync pair (first transport)
#              and reports the gen0/gen1/gen2 collections, GC pause and allocated bytes per replicated write of both
#              daemons (the `runtime` object of `blockrepl status --json`); 0 skips it
#   OUT_NAME   base name of the report in bench/results (default repl-bench-latest)
#   RUNTIME    seconds per fio run, time_based (default 4); RAMP: ramp_time seconds (default 1)
#   REPEATS    runs per (configuration, job) cell; the table shows the median (default 3)
#   WARMUP     seconds of unmeasured 4 KiB randrw QD8 per configuration before the first run (default 2; 0 = none)
#   SEQ        1 (default) adds the 1 MiB sequential write QD8 job; 0 leaves it out
#   WIRE       1 (default) measures the sync pair's wire ratio on an ext4 image; 0 skips it
#   WIRE_ROOTS directories the ext4 image's data set is taken from (default "/usr/lib/x86_64-linux-gnu
#              /usr/bin /usr/share/doc STDLIB", STDLIB = the python3 standard library, /usr/lib/python3.11 on
#              Debian 12: shared libraries, executables, compressed and plain docs, source text)
#   WIRE_MIB   size of the data set in MiB, split evenly over WIRE_ROOTS (default 400)
#   BLOCKREPL  daemon binary (default src/BlockRepl/bin/Release/net10.0/blockrepl; BLOCKREPL_BIN also works)
#   BLOCKREPL_B  the second daemon binary for the *-b configurations (a copy of another build's output directory)
#   BENCH_TMPDIR  where the 1 GiB images go (default ${TMPDIR:-/tmp}; should be a real disk, not tmpfs)
#   CONNECT_TIMEOUT  seconds to wait for a pair to show connection "connected" (default 120)
#   READY_TIMEOUT    seconds to wait for a qsd mirror job to become ready (default 300)
#   DRAIN_TIMEOUT    seconds to wait after a run for a replica to catch up (default 60)
#   KEEP_TMP=1 keep the temp dir (images, fio JSON, daemon logs) for inspection
#
# Method: every daemon side gets its own 1 GiB raw file, zero-filled (written from /dev/zero, fully
# allocated; the same for every configuration). All configurations run for the whole benchmark (idle
# when not measured), fronted by NBD on each transport of TRANSPORTS; replication links are TCP on 127.0.0.1.
# Runs are interleaved: for each repeat, for each job, every (configuration, transport) in turn (the order
# rotated by one each repeat). After each run on a replicated configuration the script records how far the replica lags
# (blockrepl: queuedBytes + dirtyBytes, lastSeq - appliedSeq, lastSeq - durableSeq from `blockrepl status --json`; qsd: len - offset
# of the mirror job from QMP query-block-jobs), then waits (bounded by DRAIN_TIMEOUT) until it has caught
# up, so a backlog never runs into the next measurement. The sync pair then takes the wire-ratio copy, and
# after a clean stop its secondary's image is compared with the copied ext4 image byte for byte.
# CPU: utime + stime (/proc/PID/stat) of the configuration's processes (blockrepl primary + secondary; qsd + its
# qemu-nbd target) read when fio's ramp ends and again after the catch-up wait, divided by the GiB fio wrote.
# Ratios (per transport): sync pair QD1 p50 minus standalone QD1 p50 (<= 100 us; p99 for information), sync pair
# / qsd write-blocking mirror at QD1 (>= 1.5x) and QD32 (>= 3x), async pair / standalone at QD32 (>= 0.85x).
# A full run with the defaults takes about 12 minutes on 2 cores (SEQ=0 saves about a quarter, TRANSPORTS=unix half).
# fio uses its nbd engine (libnbd, one connection); numbers are from fio's JSON: IOPS, bandwidth,
# completion latency (clat) p50 and p99 in microseconds.
# A configuration that cannot be started (e.g. a blockrepl without replication) is reported as
# "failed: <reason>" and the others go on; no number is ever made up.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

DEFAULT_CONFIGS="standalone async-pair sync-pair qsd-sync qsd-async"
ALL_CONFIGS="$DEFAULT_CONFIGS async-pair-nolog sync-pair-nolog async-pair-log64 async-pair-twin standalone-b sync-pair-b async-pair-b"
CONFIGS="${CONFIGS:-$DEFAULT_CONFIGS}"
RUNTIME="${RUNTIME:-4}"
RAMP="${RAMP:-1}"
REPEATS="${REPEATS:-3}"
WARMUP="${WARMUP:-2}"
SEQ="${SEQ:-1}"
WIRE="${WIRE:-1}"
WIRE_ROOTS="${WIRE_ROOTS:-}"
WIRE_MIB="${WIRE_MIB:-400}"
TRANSPORTS="${TRANSPORTS:-unix tcp}"
GCRUN="${GCRUN:-1}"
GC_SECONDS="${GC_SECONDS:-30}"
BLOCKREPL="${BLOCKREPL:-${BLOCKREPL_BIN:-src/BlockRepl/bin/Release/net10.0/blockrepl}}"
BLOCKREPL_B="${BLOCKREPL_B:-}"
BENCH_TMPDIR="${BENCH_TMPDIR:-${TMPDIR:-/tmp}}"
CONNECT_TIMEOUT="${CONNECT_TIMEOUT:-120}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-60}"
RESULTS_DIR="$REPO/bench/results"
OUT_NAME="${OUT_NAME:-repl-bench-latest}"
[[ "$OUT_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "repl-bench: OUT_NAME must be a plain file name" >&2; exit 1; }
OUT_MD="$RESULTS_DIR/$OUT_NAME.md"
OUT_TSV="$RESULTS_DIR/$OUT_NAME.tsv"
VOL=vol
IMAGE_SIZE_MIB=1024

# name | fio arguments
JOBS=(
    "4k-randwrite-qd1|--rw=randwrite --bs=4k --iodepth=1"
    "4k-randwrite-qd32|--rw=randwrite --bs=4k --iodepth=32"
)
[[ "$SEQ" == 1 ]] && JOBS+=("1m-seqwrite-qd8|--rw=write --bs=1m --iodepth=8")

die() { echo "repl-bench: $*" >&2; exit 1; }
log() { echo "repl-bench: [$(printf '%3d' "$SECONDS") s] $*" >&2; }

# ---------------------------------------------------------------- checks
for v in RUNTIME RAMP REPEATS WARMUP WIRE_MIB CONNECT_TIMEOUT READY_TIMEOUT DRAIN_TIMEOUT GC_SECONDS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[[ "$SEQ" =~ ^[01]$ && "$WIRE" =~ ^[01]$ && "$GCRUN" =~ ^[01]$ ]] || die "SEQ, WIRE and GCRUN must be 0 or 1"
read -r -a TR_LIST <<<"$TRANSPORTS"
((${#TR_LIST[@]} > 0)) || die "TRANSPORTS is empty"
for t in "${TR_LIST[@]}"; do [[ "$t" == unix || "$t" == tcp ]] || die "unknown transport '$t' in TRANSPORTS (known: unix tcp)"; done
[[ "${TR_LIST[*]}" != "unix unix" && "${TR_LIST[*]}" != "tcp tcp" ]] || die "TRANSPORTS names a transport twice"
((RUNTIME > 0 && REPEATS > 0)) || die "RUNTIME and REPEATS must be > 0"
read -r -a CFG_LIST <<<"$CONFIGS"
((${#CFG_LIST[@]} > 0)) || die "CONFIGS is empty"
for c in "${CFG_LIST[@]}"; do
    [[ " $ALL_CONFIGS " == *" $c "* ]] || die "unknown configuration '$c' in CONFIGS (known: $ALL_CONFIGS)"
done
has_cfg() { [[ " ${CFG_LIST[*]} " == *" $1 "* ]]; }
uses_blockrepl=0 uses_qsd=0
for c in "${CFG_LIST[@]}"; do
    case "$c" in qsd-*) uses_qsd=1 ;; *) uses_blockrepl=1 ;; esac
done
if [[ "$GCRUN" == 1 ]] && ! has_cfg sync-pair; then
    log "GCRUN=1 needs sync-pair in CONFIGS; skipping the GC run"
    GCRUN=0
fi
if [[ "$WIRE" == 1 ]] && ! has_cfg sync-pair; then
    log "WIRE=1 needs sync-pair in CONFIGS; skipping the wire ratio"
    WIRE=0
fi
PY=/usr/bin/python3
[[ -x "$PY" ]] || die "/usr/bin/python3 not found: run 'bash tools/install-deps.sh'"
# Directories with very many small files (e.g. /usr/share/man) make mke2fs -d take minutes: avoid them.
[[ -n "$WIRE_ROOTS" ]] ||
    WIRE_ROOTS="/usr/lib/x86_64-linux-gnu /usr/bin /usr/share/doc $("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
for tool in fio jq nbdinfo timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run 'bash tools/install-deps.sh'"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (Debian's fio has it): run 'bash tools/install-deps.sh'"
if ((uses_qsd)); then
    for tool in qemu-storage-daemon qemu-nbd; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian: qemu-system-common, qemu-utils): run 'bash tools/install-deps.sh'"
    done
fi
if [[ "$WIRE" == 1 ]]; then
    for tool in nbdcopy mke2fs tar; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian: libnbd-bin, e2fsprogs, tar): run 'bash tools/install-deps.sh'"
    done
fi
[[ "$BLOCKREPL" == /* ]] || BLOCKREPL="$REPO/$BLOCKREPL"
if [[ " ${CFG_LIST[*]} " == *-b" "* ]]; then
    [[ -n "$BLOCKREPL_B" && -x "$BLOCKREPL_B" ]] || die "the *-b configurations need BLOCKREPL_B, an executable daemon binary (got '$BLOCKREPL_B')"
fi
if ((uses_blockrepl)); then
    [[ -x "$BLOCKREPL" ]] || die "$BLOCKREPL not found or not executable: run 'make build' first (or set BLOCKREPL)"
fi

# ---------------------------------------------------------------- processes and cleanup
# Every process this script starts is in PROCS ("label pid", start order); they are stopped in reverse
# order (a primary before its secondary, qsd before its qemu-nbd target) with SIGTERM, then waited for.
PROCS=()
DD_PIDS=()
declare -A EXIT_CODES=()
WORK=""
FIO_PID=""
stop_proc() { # label pid
    local label=$1 pid=$2 i rc=0
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$label (pid $pid) did not stop within 10 s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    EXIT_CODES[$label]=$rc
}
stop_all() {
    local i entry
    for ((i = ${#PROCS[@]} - 1; i >= 0; i--)); do
        entry=${PROCS[$i]}
        stop_proc "${entry% *}" "${entry##* }"
    done
    PROCS=()
}
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    if [[ -n "$FIO_PID" ]]; then
        kill -TERM "$FIO_PID" 2>/dev/null || true
        wait "$FIO_PID" 2>/dev/null || true
    fi
    for pid in "${DD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    stop_all
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
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- machine info
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*: //' || true)
[[ -n "$CPU_MODEL" ]] || CPU_MODEL=$(uname -m)
if GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
    git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || GIT_REV="$GIT_REV + uncommitted changes in src/"
else
    GIT_REV="(no git checkout)"
fi

mkdir -p "$BENCH_TMPDIR" "$RESULTS_DIR"
WORK=$(mktemp -d "$BENCH_TMPDIR/repl-bench.XXXXXX")
FSTYPE=$(stat -f -c %T "$WORK" 2>/dev/null || echo "?")
[[ "$FSTYPE" == tmpfs ]] && log "warning: $WORK is on tmpfs; set BENCH_TMPDIR to a directory on a real disk"
# Unix socket paths are limited to 107 bytes; the longest one is $WORK/<config>/s/admin.sock.
((${#WORK} + 30 < 107)) || die "BENCH_TMPDIR is too long for unix socket paths ($WORK); set BENCH_TMPDIR=/tmp"

# QMP client for qemu-storage-daemon (python3 standard library only).
cat >"$WORK/qmp.py" <<'PY'
"""qmp.py SOCKET COMMAND [JSON-ARGS]   run one QMP command, print its return value as JSON
   qmp.py SOCKET wait-ready JOB SECS  wait until the block job is ready; print the job as JSON
   qmp.py SOCKET lag JOB              print len - offset of the block job (bytes not yet mirrored)
   qmp.py SOCKET drain JOB SECS       wait until len == offset; print the seconds waited (exit 1 on timeout)"""
import json, socket, sys, time

class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(30)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")
        self.recv()  # greeting
        self.cmd("qmp_capabilities")

    def recv(self):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("QMP connection closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, name, args=None):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.f.write(json.dumps(req).encode() + b"\n")
        self.f.flush()
        msg = self.recv()
        if "error" in msg:
            raise RuntimeError(f"{name}: {msg['error'].get('class')}: {msg['error'].get('desc')}")
        return msg.get("return")

    def job(self, name):
        for j in self.cmd("query-block-jobs"):
            if j.get("device") == name:
                return j
        raise RuntimeError(f"block job {name} does not exist")

def main():
    path, op = sys.argv[1], sys.argv[2]
    q = Qmp(path)
    if op == "wait-ready":
        name, limit = sys.argv[3], float(sys.argv[4])
        end = time.monotonic() + limit
        while True:
            j = q.job(name)
            if j.get("ready"):
                print(json.dumps(j))
                return 0
            if time.monotonic() > end:
                raise RuntimeError(f"job {name} not ready after {limit:.0f} s: {j.get('offset')} of {j.get('len')} bytes, status {j.get('status')}")
            time.sleep(0.2)
    if op == "lag":
        j = q.job(sys.argv[3])
        print(j["len"] - j["offset"])
        return 0
    if op == "drain":
        name, limit = sys.argv[3], float(sys.argv[4])
        start = time.monotonic()
        while True:
            j = q.job(name)
            waited = time.monotonic() - start
            if j["len"] == j["offset"]:
                print(f"{waited:.1f}")
                return 0
            if waited > limit:
                print(f"{waited:.1f}")
                return 1
            time.sleep(0.1)
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps(q.cmd(op, args)))
    return 0

try:
    sys.exit(main())
except Exception as e:
    print(f"qmp: {e}", file=sys.stderr)
    sys.exit(2)
PY
qmp() { "$PY" "$WORK/qmp.py" "$@"; }

versions=()
if ((uses_blockrepl)); then
    if [[ "$BLOCKREPL" == "$REPO/"* ]]; then
        versions+=("blockrepl $GIT_REV")
    else
        versions+=("blockrepl from $BLOCKREPL (built $(date -u -r "$BLOCKREPL" '+%Y-%m-%d %H:%M UTC'))")
    fi
fi
((uses_qsd)) && versions+=("$(qemu-storage-daemon --version | head -1)" "$(qemu-nbd --version | head -1)")
job_names=()
for job in "${JOBS[@]}"; do job_names+=("${job%%|*}"); done

HEADER=$(
    cat <<EOF
# Replication end-to-end benchmark

- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: $(nproc) CPUs, $CPU_MODEL; kernel $(uname -r); $(awk '/^MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo)
- tools: $(fio --version)$(printf ', %s' "${versions[@]}")
- method: fio --ioengine=nbd (1 connection; transports: ${TR_LIST[*]}: unix socket and/or TCP on 127.0.0.1), time_based ${RUNTIME} s + ramp ${RAMP} s per run, median of ${REPEATS} interleaved run(s) per cell (the order of (configuration, transport) units rotates by one each repetition), warm-up ${WARMUP} s per configuration and transport; jobs: ${job_names[*]}$( [[ "$GCRUN" == 1 ]] && echo "; GC run ${GC_SECONDS} s")
- images: one 1 GiB raw file per daemon side on $FSTYPE ($BENCH_TMPDIR), **zero-filled** (written from /dev/zero, fully allocated) for every configuration
- blockrepl: \`serve --data-dir D --volume vol --size 1G --nbd unix:D/nbd.sock,127.0.0.1:0 (the transports of TRANSPORTS) --admin unix:D/admin.sock\` (DOTNET_gcServer=0); pairs add \`--role primary|secondary --listen 127.0.0.1:PORT --peer http://127.0.0.1:PEERPORT --mode sync|async\`, secondary started first, measured once the primary's status shows connection \`connected\`
- qemu-storage-daemon: file node (cache.direct=off, writeback) + raw node exported over NBD (one instance per transport: unix socket or TCP 127.0.0.1); \`blockdev-mirror sync=full\` to a \`driver=nbd\` blockdev on \`qemu-nbd --cache=writeback -f raw\` over TCP 127.0.0.1; measured once the job is ready (never completed: the mirror stays active)
- replication links: TCP on 127.0.0.1 for every pair
- load average at start (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg) (anything else running on the machine skews every row)
EOF
)
echo "$HEADER"
echo

# ---------------------------------------------------------------- images
# Daemon sides per configuration: standalone 1, pairs and qsd 2 (primary/source "p", secondary/target "s").
# qemu-storage-daemon has one NBD server per process (a second --nbd-server is refused: "NBD server already
# running"), so a qsd configuration runs one instance per transport: source and target "unix/p unix/s tcp/p tcp/s".
sides_of() {
    case "$1" in
    standalone | standalone-b) echo p ;;
    qsd-*) for t in "${TR_LIST[@]}"; do echo "$t/p $t/s"; done ;;
    *) echo "p s" ;;
    esac
}
nimg=0
for c in "${CFG_LIST[@]}"; do for side in $(sides_of "$c"); do nimg=$((nimg + 1)); done; done
need_mib=$(((nimg + 2) * IMAGE_SIZE_MIB))
avail_mib=$(df -Pm "$WORK" | awk 'NR == 2 {print $4}')
[[ "$avail_mib" =~ ^[0-9]+$ ]] && ((avail_mib < need_mib)) &&
    die "$WORK has $avail_mib MiB free; this run needs about $need_mib MiB (set BENCH_TMPDIR or CONFIGS)"
log "writing $nimg zero-filled 1 GiB images in $WORK (two at a time) ..."
for c in "${CFG_LIST[@]}"; do
    for side in $(sides_of "$c"); do
        mkdir -p "$WORK/$c/$side"
        dd if=/dev/zero of="$WORK/$c/$side/$VOL.img" bs=1M count="$IMAGE_SIZE_MIB" status=none &
        DD_PIDS+=($!)
        if ((${#DD_PIDS[@]} >= 2)); then
            wait "${DD_PIDS[0]}" || die "writing a zero-filled image failed (disk full?)"
            DD_PIDS=("${DD_PIDS[@]:1}")
        fi
    done
done
for pid in "${DD_PIDS[@]}"; do wait "$pid" || die "writing a zero-filled image failed (disk full?)"; done
DD_PIDS=()
sync

# ---------------------------------------------------------------- wire data set (built before any daemon runs)
WIRE_IMG="$WORK/wire-ext4.img"
WIRE_DESC=""
WIRE_FAIL=""
if [[ "$WIRE" == 1 ]]; then
    log "building the wire-ratio data set (${WIRE_MIB} MiB from: $WIRE_ROOTS) and its ext4 image ..."
    mkdir -p "$WORK/wire-data"
    # Deterministic selection: regular files of each root in sorted path order, up to WIRE_MIB / number of
    # roots MiB per root (files that would overshoot are skipped).
    read -r -a wire_roots <<<"$WIRE_ROOTS"
    if WIRE_DESC=$("$PY" - "$WORK/wire-files" "$WIRE_MIB" "${wire_roots[@]}" <<'PY'
import os, sys
out, total_mib, roots = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
budget = total_mib * 1048576 // max(1, len(roots))
parts, grand, nfiles = [], 0, 0
with open(out, "wb") as f:
    for root in roots:
        if not os.path.isdir(root):
            parts.append(f"{root} (missing)")
            continue
        files = []
        for d, dirs, names in os.walk(root):
            dirs.sort()
            for n in names:
                p = os.path.join(d, n)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if os.path.isfile(p) and not os.path.islink(p) and os.access(p, os.R_OK):
                    files.append((p, st.st_size))
        files.sort()
        used = n = 0
        for p, size in files:
            if used + size > budget:
                continue
            f.write(p.lstrip("/").encode() + b"\0")
            used += size
            n += 1
        parts.append(f"{root} {n} files {used / 1048576:.0f} MiB")
        grand += used
        nfiles += n
print(f"{nfiles} files, {grand / 1048576:.0f} MiB: " + "; ".join(parts))
PY
    ); then
        tar -C / --null -T "$WORK/wire-files" -cf - 2>/dev/null | tar -C "$WORK/wire-data" -xf - ||
            WIRE_FAIL="copying the data set failed"
        if [[ -z "$WIRE_FAIL" ]]; then
            truncate -s "${IMAGE_SIZE_MIB}M" "$WIRE_IMG"
            if ! mke2fs -q -F -t ext4 -d "$WORK/wire-data" "$WIRE_IMG" >"$WORK/mke2fs.log" 2>&1; then
                WIRE_FAIL="mke2fs -d failed: $(tail -n 1 "$WORK/mke2fs.log")"
            fi
        fi
        rm -rf "$WORK/wire-data" "$WORK/wire-files"
    else
        WIRE_FAIL="selecting the data set failed"
    fi
    [[ -z "$WIRE_FAIL" ]] || log "wire ratio: $WIRE_FAIL"
fi

# ---------------------------------------------------------------- daemons
# URIS and QMPSOCK are keyed by "config/transport"; ADMIN (primary) and ADMIN_S (secondary) by config.
declare -A URIS=() FAIL=() ADMIN=() ADMIN_S=() QMPSOCK=() STARTUP=()

# The first line of a log that looks like an error, else its last line; one line, at most 200 chars.
reason_from_log() {
    local line
    line=$(grep -m1 -iE 'error|exception|not matched|unrecognized|unknown|invalid|refus|fail|cannot|could not' "$1" 2>/dev/null) ||
        line=$(grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1) || line=""
    line=${line//|/\\|}
    echo "${line:0:200}"
}

# Start one blockrepl daemon; wait for its 'blockrepl: ready ' line. Sets REASON on failure.
# NBD listens on every transport of TRANSPORTS from the same daemon: --nbd unix:DIR/nbd.sock,127.0.0.1:0 (a
# free port; the ready line names it as nbd= or nbd2=). LAST_URI[unix|tcp] are the URIs of the last start.
REASON=""
declare -A LAST_URI=()
start_blockrepl() { # label dir args...   (the binary: BLOCKREPL_B for a *-b configuration's label, else BLOCKREPL)
    local label=$1 dir=$2 pid i line bin=$BLOCKREPL t tok nbd_arg=""
    shift 2
    [[ "${label%%/*}" == *-b ]] && bin=$BLOCKREPL_B
    for t in "${TR_LIST[@]}"; do
        case "$t" in unix) nbd_arg+=",unix:$dir/nbd.sock" ;; tcp) nbd_arg+=",127.0.0.1:0" ;; esac
    done
    DOTNET_gcServer=0 "$bin" serve --data-dir "$dir" --volume "$VOL" --size 1G \
        --nbd "${nbd_arg#,}" --admin "unix:$dir/admin.sock" "$@" </dev/null >"$dir/daemon.log" 2>&1 &
    pid=$!
    PROCS+=("$label $pid")
    line=""
    for ((i = 0; i < 600; i++)); do
        line=$(grep -m1 '^blockrepl: ready ' "$dir/daemon.log" 2>/dev/null) && break
        line=""
        if ! kill -0 "$pid" 2>/dev/null; then
            REASON="$label exited during startup: $(reason_from_log "$dir/daemon.log")"
            return 1
        fi
        sleep 0.1
    done
    if [[ -z "$line" ]]; then
        REASON="$label printed no ready line within 60 s: $(reason_from_log "$dir/daemon.log")"
        return 1
    fi
    LAST_URI=()
    for tok in $line; do
        case "$tok" in
        nbd=nbd+unix://* | nbd[0-9]*=nbd+unix://*) LAST_URI[unix]=${tok#*=} ;;
        nbd=nbd://* | nbd[0-9]*=nbd://*) LAST_URI[tcp]=${tok#*=} ;;
        esac
    done
    for t in "${TR_LIST[@]}"; do
        [[ -n "${LAST_URI[$t]:-}" ]] || { REASON="$label's ready line names no $t NBD listener (a build before --nbd lists?): $line"; return 1; }
    done
    log "$label ready (pid $pid)"
}

br_status() { # admin-address -> status JSON on stdout
    timeout 20 "$BLOCKREPL" status --admin "$1" --json 2>/dev/null
}

pid_of() { # label
    local entry
    for entry in "${PROCS[@]}"; do [[ "${entry% *}" == "$1" ]] && { echo "${entry##* }"; return 0; }; done
    return 1
}
alive() { # config: every process of the configuration is running
    local entry found=0
    for entry in "${PROCS[@]}"; do
        [[ "${entry% *}" == "$1/"* ]] || continue
        found=1
        kill -0 "${entry##* }" 2>/dev/null || return 1
    done
    ((found))
}

start_standalone() { # config
    local c=$1
    start_blockrepl "$c/p" "$WORK/$c/p" || return 1
    for t in "${TR_LIST[@]}"; do URIS[$c/$t]=${LAST_URI[$t]}; done
    ADMIN[$c]="unix:$WORK/$c/p/admin.sock"
}

start_pair() { # config mode [extra serve args...]
    local c=$1 mode=$2 p1 p2 t0 deadline conn st
    shift 2
    p1=$(free_port)
    p2=$(free_port)
    while [[ "$p2" == "$p1" ]]; do p2=$(free_port); done
    t0=$(date +%s.%N)
    start_blockrepl "$c/s" "$WORK/$c/s" --role secondary --listen "127.0.0.1:$p2" \
        --peer "http://127.0.0.1:$p1" --mode "$mode" "$@" || return 1
    start_blockrepl "$c/p" "$WORK/$c/p" --role primary --listen "127.0.0.1:$p1" \
        --peer "http://127.0.0.1:$p2" --mode "$mode" "$@" || return 1
    for t in "${TR_LIST[@]}"; do URIS[$c/$t]=${LAST_URI[$t]}; done
    ADMIN[$c]="unix:$WORK/$c/p/admin.sock"
    ADMIN_S[$c]="unix:$WORK/$c/s/admin.sock"
    conn=""
    deadline=$((SECONDS + CONNECT_TIMEOUT))
    while ((SECONDS < deadline)); do
        alive "$c" || { REASON="a daemon exited while connecting: $(reason_from_log "$WORK/$c/p/daemon.log") / $(reason_from_log "$WORK/$c/s/daemon.log")"; return 1; }
        if st=$(br_status "${ADMIN[$c]}"); then
            conn=$(jq -r '.volumes[0].connection // "(no connection field)"' <<<"$st" 2>/dev/null) || conn="(status is not JSON)"
            [[ "$conn" == connected ]] && break
        else
            conn="(status failed)"
        fi
        sleep 0.5
    done
    if [[ "$conn" != connected ]]; then
        REASON="primary not connected after ${CONNECT_TIMEOUT} s (connection: ${conn:-unknown})"
        return 1
    fi
    STARTUP[$c]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    log "$c connected ${STARTUP[$c]} s after the secondary was started"
}

start_qsd() { # config copy-mode transport   (one instance per transport: $WORK/config/transport/{p,s})
    local c=$1 mode=$2 t=$3 port nport dir pid i t0 out nbd_server
    dir="$WORK/$c/$t"
    port=$(free_port)
    qemu-nbd --cache=writeback -f raw --persistent -b 127.0.0.1 -p "$port" -x "$VOL" "$dir/s/$VOL.img" \
        </dev/null >"$dir/s/qemu-nbd.log" 2>&1 &
    pid=$!
    PROCS+=("$c/$t/target $pid")
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || { REASON="qemu-nbd exited: $(reason_from_log "$dir/s/qemu-nbd.log")"; return 1; }
        nbdinfo --size "nbd://127.0.0.1:$port/$VOL" >/dev/null 2>&1 && break
        sleep 0.1
    done
    ((i < 300)) || { REASON="qemu-nbd did not accept connections within 30 s"; return 1; }
    QMPSOCK[$c/$t]="$dir/p/qmp.sock"
    if [[ "$t" == unix ]]; then
        nbd_server="addr.type=unix,addr.path=$dir/p/nbd.sock"
        URIS[$c/$t]="nbd+unix:///$VOL?socket=$dir/p/nbd.sock"
    else
        nport=$(free_port)
        while [[ "$nport" == "$port" ]]; do nport=$(free_port); done
        nbd_server="addr.type=inet,addr.host=127.0.0.1,addr.port=$nport"
        URIS[$c/$t]="nbd://127.0.0.1:$nport/$VOL"
    fi
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=src-file,filename=$dir/p/$VOL.img,cache.direct=off" \
        --blockdev driver=raw,node-name=src,file=src-file \
        --blockdev "driver=nbd,node-name=tgt,server.type=inet,server.host=127.0.0.1,server.port=$port,export=$VOL" \
        --nbd-server "$nbd_server" \
        --export "type=nbd,id=exp0,node-name=src,name=$VOL,writable=on" \
        --chardev "socket,id=qmp,path=${QMPSOCK[$c/$t]},server=on,wait=off" \
        --monitor chardev=qmp </dev/null >"$dir/p/qsd.log" 2>&1 &
    pid=$!
    PROCS+=("$c/$t/qsd $pid")
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || { REASON="qemu-storage-daemon exited: $(reason_from_log "$dir/p/qsd.log")"; return 1; }
        qmp "${QMPSOCK[$c/$t]}" query-block-jobs >/dev/null 2>&1 && break
        sleep 0.1
    done
    ((i < 300)) || { REASON="qemu-storage-daemon's QMP socket did not answer within 30 s"; return 1; }
    t0=$(date +%s.%N)
    out=$(qmp "${QMPSOCK[$c/$t]}" blockdev-mirror \
        "{\"job-id\":\"m0\",\"device\":\"src\",\"target\":\"tgt\",\"sync\":\"full\",\"copy-mode\":\"$mode\"}" 2>&1) ||
        { REASON="blockdev-mirror failed: $out"; return 1; }
    out=$(qmp "${QMPSOCK[$c/$t]}" wait-ready m0 "$READY_TIMEOUT" 2>&1) || { REASON="$out"; return 1; }
    STARTUP[$c]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    log "$c ($t instance) mirror job ready after ${STARTUP[$c]} s (initial full copy of 1 GiB)"
}

for c in "${CFG_LIST[@]}"; do
    REASON=""
    case "$c" in
    standalone | standalone-b) start_standalone "$c" || FAIL[$c]="$REASON" ;;
    async-pair | async-pair-b) start_pair "$c" async || FAIL[$c]="$REASON" ;;
    sync-pair | sync-pair-b) start_pair "$c" sync || FAIL[$c]="$REASON" ;;
    async-pair-nolog) start_pair "$c" async --activity-log off || FAIL[$c]="$REASON" ;;
    sync-pair-nolog) start_pair "$c" sync --activity-log off || FAIL[$c]="$REASON" ;;
    async-pair-log64) start_pair "$c" async --activity-log 64 || FAIL[$c]="$REASON" ;;
    async-pair-twin) start_pair "$c" async || FAIL[$c]="$REASON" ;;
    qsd-sync | qsd-async)
        for t in "${TR_LIST[@]}"; do
            if [[ "$c" == qsd-sync ]]; then start_qsd "$c" write-blocking "$t" || { FAIL[$c]="$REASON"; break; }; else
                start_qsd "$c" background "$t" || { FAIL[$c]="$REASON"; break; }
            fi
        done
        ;;
    esac
    [[ -z "${FAIL[$c]:-}" ]] || log "$c failed: ${FAIL[$c]} (continuing without it)"
done

# ---------------------------------------------------------------- lag and drain
# Right after a run on a replicated configuration, one reading of how far the replica is behind:
#   LAG_B  bytes not yet on the replica: blockrepl replication.queuedBytes (queued or sent, not received)
#          + dirtyBytes (ranges tracked in the bitmap after going ahead); qsd len - offset of the mirror job
#   LAG_UA writes the replica has not applied yet (blockrepl lastSeq - appliedSeq)
#   LAG_UD writes not yet durable on the replica (blockrepl lastSeq - durableSeq)
#   AHEAD  times the primary went ahead (async queue full) since the previous reading (replication.aheadCount)
# Empty when unknown. Then waits until the replica has everything (blockrepl: durableSeq == lastSeq, no
# dirty bytes, no resync; qsd: len == offset) and sets DRAIN_S to the seconds waited ("timeout" after
# DRAIN_TIMEOUT).
LAG_B="" LAG_UA="" LAG_UD="" AHEAD="" DRAIN_S=""
declare -A PREV_AHEAD=()
lag_and_drain() { # config transport
    local c=$1 t=$2 st t0 deadline out ahead=""
    LAG_B="" LAG_UA="" LAG_UD="" AHEAD="" DRAIN_S=""
    case "$c" in
    standalone | standalone-b) return 0 ;;
    qsd-*)
        LAG_B=$(qmp "${QMPSOCK[$c/$t]}" lag m0 2>/dev/null) || LAG_B=""
        if out=$(qmp "${QMPSOCK[$c/$t]}" drain m0 "$DRAIN_TIMEOUT" 2>/dev/null); then DRAIN_S=$out; else DRAIN_S=timeout; fi
        ;;
    *-pair | *-pair-*)
        if st=$(br_status "${ADMIN[$c]}"); then
            IFS='|' read -r LAG_B LAG_UA LAG_UD ahead < <(jq -r '
                .volumes[0] as $v | ($v.replication // {}) as $r
                | [(if $r.queuedBytes != null then $r.queuedBytes + ($v.dirtyBytes // 0) else "" end),
                   (if $r.lastSeq != null and $r.appliedSeq != null then $r.lastSeq - $r.appliedSeq else "" end),
                   (if $r.lastSeq != null and $r.durableSeq != null then $r.lastSeq - $r.durableSeq else "" end),
                   ($r.aheadCount // "")]
                | map(tostring) | join("|")' <<<"$st" 2>/dev/null || echo "|||") || true
            if [[ "$ahead" =~ ^[0-9]+$ ]]; then
                AHEAD=$((ahead - ${PREV_AHEAD[$c]:-0}))
                PREV_AHEAD[$c]=$ahead
            fi
        fi
        t0=$(date +%s.%N)
        DRAIN_S=timeout
        deadline=$((SECONDS + DRAIN_TIMEOUT))
        while ((SECONDS < deadline)); do
            st=$(br_status "${ADMIN[$c]}") || break
            if jq -e '.volumes[0] as $v | ($v.replication // {}) as $r
                      | ($r.lastSeq != null) and ($r.durableSeq == $r.lastSeq)
                        and (($v.dirtyBytes // 0) == 0) and ($v.resync == null)' <<<"$st" >/dev/null 2>&1; then
                DRAIN_S=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
                break
            fi
            sleep 0.25
        done
        ;;
    esac
    [[ "$DRAIN_S" != timeout ]] || log "$c: replica did not catch up within ${DRAIN_TIMEOUT} s"
    return 0
}

# ---------------------------------------------------------------- runs
FIO_TIMEOUT=$((RUNTIME + RAMP + 60))
FAILED=0
: >"$OUT_TSV.tmp"
declare -A RUNFAIL=() # "config|transport|job" -> reason
CLK_TCK=$(getconf CLK_TCK)

# CPU accounting. The processes of a configuration on one transport: blockrepl primary (and secondary);
# qsd and its qemu-nbd target (the instance of that transport).
procs_of() { # config transport -> "pid pid"
    case "$1" in
    qsd-*) echo "$(pid_of "$1/$2/qsd") $(pid_of "$1/$2/target")" ;;
    *) echo "$(pid_of "$1/p") $(pid_of "$1/s" 2>/dev/null || true)" ;;
    esac
}
cpu_ticks() { # pid... -> utime+stime of each (clock ticks, /proc/PID/stat fields 14 and 15), space-separated
    local pid out=""
    for pid in "$@"; do
        # The command name (field 2) may hold spaces: the fields after its closing ')' start with field 3.
        out+="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') "
    done
    echo "${out% }"
}

CPU0=""
run_fio() { # config transport jobname out.json fio-args...   (sets CPU0: CPU ticks RAMP s after fio started)
    local c=$1 t=$2 name=$3 out=$4 rc=0 key="$1|$2|$3"
    shift 4
    CPU0=""
    if ! alive "$c"; then
        RUNFAIL[$key]="a daemon of $c is no longer running"
        log "${RUNFAIL[$key]}; skipping $name"
        FAIL[$c]="${FAIL[$c]:-a daemon exited during the benchmark}"
        return 1
    fi
    # fio's nbd engine may print a line before the JSON: the JSON goes to a file of its own.
    # fio runs in the background and is waited for, so a signal to this script is acted on at once.
    timeout "$FIO_TIMEOUT" fio --name="$name" --ioengine=nbd --uri="${URIS[$c/$t]}" \
        --numjobs=1 --norandommap --randrepeat=0 "$@" \
        --output-format=json --output="$out" >"$out.stdout" 2>"$out.stderr" &
    FIO_PID=$!
    # fio counts nothing during its ramp: the CPU window starts when the ramp ends (aligned to within fio's
    # connect time), so CPU and fio's bytes cover the same writes.
    ((RAMP == 0)) || sleep "$RAMP"
    # shellcheck disable=SC2046
    CPU0=$(cpu_ticks $(procs_of "$c" "$t"))
    wait "$FIO_PID" || rc=$?
    FIO_PID=""
    if ((rc != 0)); then
        RUNFAIL[$key]="fio status $rc: $(cat "$out.stderr" "$out.stdout" 2>/dev/null | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-160)"
        log "fio failed for $c ($t) / $name: ${RUNFAIL[$key]}"
        return 1
    fi
}
# CPU seconds of each process of the configuration since CPU0 ("p s", empty when unknown), read after the
# catch-up wait, so the secondary's (or qemu-nbd's) work on the run's writes is counted.
cpu_since() { # config transport
    local now
    # shellcheck disable=SC2046
    now=$(cpu_ticks $(procs_of "$1" "$2"))
    [[ -n "$CPU0" && -n "$now" ]] || { echo ""; return; }
    awk -v a="$CPU0" -v b="$now" -v hz="$CLK_TCK" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); s = ""
        for (i = 1; i <= n; i++) s = s (i > 1 ? " " : "") sprintf("%.2f", (y[i] - x[i]) / hz)
        print s }'
}

# The measured units: every active configuration on every transport.
UNITS=()
for c in "${CFG_LIST[@]}"; do
    [[ -z "${FAIL[$c]:-}" ]] || continue
    for t in "${TR_LIST[@]}"; do UNITS+=("$c/$t"); done
done
log "measuring: ${UNITS[*]:-(nothing)}"

if ((WARMUP > 0)); then
    for u in "${UNITS[@]}"; do
        c=${u%/*} t=${u#*/}
        log "warm-up: $c over $t ${WARMUP} s"
        if run_fio "$c" "$t" warmup "$WORK/$c/warmup.$t.json" --rw=randrw --bs=4k --iodepth=8 --time_based --runtime="$WARMUP"; then
            lag_and_drain "$c" "$t"
        else
            log "warm-up failed for $c over $t (continuing)"
        fi
    done
fi

total=$((REPEATS * ${#JOBS[@]} * ${#UNITS[@]}))
n=0
for ((rep = 1; rep <= REPEATS; rep++)); do
    for job in "${JOBS[@]}"; do
        name="${job%%|*}"
        read -r -a args <<<"${job#*|}"
        # Each repetition starts one unit further on (a rotation): the first unit of a round runs right after
        # another's writes and pays for their writeback, so no configuration or transport may always be first.
        ORDER=()
        for ((k = 0; k < ${#UNITS[@]}; k++)); do ORDER+=("${UNITS[$(((k + rep - 1) % ${#UNITS[@]}))]}"); done
        for u in "${ORDER[@]}"; do
            c=${u%/*} t=${u#*/}
            n=$((n + 1))
            out="$WORK/$c/$name.$t.$rep.json"
            log "[$n/$total] run $rep/$REPEATS $name on $c over $t"
            if run_fio "$c" "$t" "$name" "$out" "${args[@]}" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP"; then
                lag_and_drain "$c" "$t"
                cpu=$(cpu_since "$c" "$t")
                # The JSON may be preceded by a non-JSON line: start at the first line that opens an object.
                if ! sed -n '/^{/,$p' "$out" | jq -r --arg c "$c" --arg t "$t" --arg j "$name" --arg r "$rep" \
                    --arg lb "$LAG_B" --arg ua "$LAG_UA" --arg ud "$LAG_UD" --arg ah "$AHEAD" --arg dr "$DRAIN_S" \
                    --arg cpu "$cpu" '
                    .jobs[0] as $job
                    | $job.write as $d
                    | if ($job.error // 0) != 0 then error("fio job error \($job.error)") else . end
                    | ($cpu | split(" ") | map(select(. != "") | tonumber)) as $cs
                    | [$c, $t, $j, $r, $d.iops, ($d.bw_bytes / 1048576),
                       ($d.clat_ns.percentile["50.000000"] / 1000), ($d.clat_ns.percentile["99.000000"] / 1000),
                       $lb, $ua, $ud, $ah, $dr, ($d.io_bytes / 1073741824),
                       ($cs[0] // ""), ($cs[1] // ""),
                       (if ($cs | length) > 0 and $d.io_bytes > 0 then ($cs | add) / ($d.io_bytes / 1073741824) else "" end)]
                    | @tsv' >>"$OUT_TSV.tmp"; then
                    RUNFAIL["$c|$t|$name"]="could not parse fio output"
                    log "could not parse fio output for $c ($t) / $name (run $rep)"
                    FAILED=1
                fi
            else
                FAILED=1
            fi
        done
    done
done

# ---------------------------------------------------------------- GC run (sync pair)
# GC_SECONDS of 4 KiB randwrite QD32 on the sync pair (over the first transport of TRANSPORTS); both daemons'
# `runtime` of `blockrepl status --json` read before fio and after the catch-up wait.
GC_JSON="$WORK/gc.json"
GC_FAIL=""
echo '{}' >"$GC_JSON"
if [[ "$GCRUN" == 1 ]]; then
    c=sync-pair t=${TR_LIST[0]}
    if [[ -n "${FAIL[$c]:-}" ]]; then
        GC_FAIL="sync pair not running (${FAIL[$c]})"
    elif ! gb_p=$(br_status "${ADMIN[$c]}") || ! gb_s=$(br_status "${ADMIN_S[$c]}"); then
        GC_FAIL="status of the sync pair failed"
    elif ! jq -e '.runtime.gen0Collections != null' <<<"$gb_p" >/dev/null 2>&1; then
        GC_FAIL="the daemon's status JSON has no runtime object (a build before a95ea31?)"
    else
        log "GC run: ${GC_SECONDS} s of 4k randwrite QD32 on $c over $t"
        out="$WORK/$c/gc-run.json"
        if run_fio "$c" "$t" gc-run "$out" --rw=randwrite --bs=4k --iodepth=32 --time_based --runtime="$GC_SECONDS"; then
            lag_and_drain "$c" "$t"
            if ga_p=$(br_status "${ADMIN[$c]}") && ga_s=$(br_status "${ADMIN_S[$c]}"); then
                sed -n '/^{/,$p' "$out" | jq --argjson bp "$gb_p" --argjson bs "$gb_s" --argjson ap "$ga_p" --argjson sa "$ga_s" \
                    --arg t "$t" --arg secs "$GC_SECONDS" --arg drain "$DRAIN_S" '
                    {transport: $t, seconds: ($secs | tonumber), drain: $drain, iops: .jobs[0].write.iops,
                     fio_writes: .jobs[0].write.total_ios,
                     writes: ($ap.volumes[0].counters.writes - $bp.volumes[0].counters.writes),
                     primary: {before: $bp.runtime, after: $ap.runtime}, secondary: {before: $bs.runtime, after: $sa.runtime}}' \
                    >"$GC_JSON" || GC_FAIL="could not parse the GC run's fio output or status"
            else
                GC_FAIL="status of the sync pair failed after the GC run"
            fi
        else
            GC_FAIL="fio failed: ${RUNFAIL["$c|$t|gc-run"]:-?}"
        fi
    fi
    [[ -z "$GC_FAIL" ]] || log "GC run failed: $GC_FAIL"
fi

# ---------------------------------------------------------------- wire ratio (sync pair)
WIRE_JSON="$WORK/wire.json"
echo '{}' >"$WIRE_JSON"
if [[ "$WIRE" == 1 ]]; then
    c=sync-pair
    if [[ -n "$WIRE_FAIL" ]]; then
        :
    elif [[ -n "${FAIL[$c]:-}" ]]; then
        WIRE_FAIL="sync pair not running (${FAIL[$c]})"
    elif ! alive "$c"; then
        WIRE_FAIL="a sync pair daemon is no longer running"
    else
        log "wire ratio: nbdcopy of the ext4 image into the sync pair's primary ..."
        wire_counters() { br_status "${ADMIN[$c]}" | jq -c '.volumes[0].wire // empty'; }
        before=$(wire_counters 2>/dev/null) || before=""
        t0=$(date +%s.%N)
        if ! nbdcopy --flush "$WIRE_IMG" "${URIS[$c/${TR_LIST[0]}]}" >"$WORK/nbdcopy.log" 2>&1; then
            WIRE_FAIL="nbdcopy failed: $(reason_from_log "$WORK/nbdcopy.log")"
        else
            secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
            lag_and_drain "$c" "${TR_LIST[0]}" # everything sent and durable before the counters are read
            after=$(wire_counters 2>/dev/null) || after=""
            if [[ -z "$after" ]] || ! jq -e '(.payloadBytes | type) == "number" and (.wireBytes | type) == "number"' <<<"$after" >/dev/null 2>&1; then
                WIRE_FAIL="status JSON has no volumes[0].wire.payloadBytes / wireBytes"
            else
                jq -n --argjson b "${before:-null}" --argjson a "$after" --arg s "$secs" '
                    {before: $b, after: $a, seconds: ($s | tonumber),
                     payload: ($a.payloadBytes - ($b.payloadBytes // 0)), wire: ($a.wireBytes - ($b.wireBytes // 0))}' >"$WIRE_JSON"
            fi
        fi
    fi
    [[ -z "$WIRE_FAIL" ]] || log "wire ratio failed: $WIRE_FAIL"
fi

# ---------------------------------------------------------------- stop everything, check the sync secondary
log "stopping daemons (SIGTERM) ..."
stop_all
STOP_NOTES=""
for label in "${!EXIT_CODES[@]}"; do
    [[ "$label" == */qsd || "$label" == */target ]] && continue
    rc=${EXIT_CODES[$label]}
    [[ "$rc" == 0 || -n "${FAIL[${label%/*}]:-}" ]] || STOP_NOTES+="$label exited $rc after SIGTERM; "
done
WIRE_MATCH=""
if [[ "$WIRE" == 1 && -z "$WIRE_FAIL" ]]; then
    # After a sync-mode copy and a clean stop, the secondary's image must hold the ext4 image byte for byte.
    if cmp -s "$WIRE_IMG" "$WORK/sync-pair/s/$VOL.img"; then WIRE_MATCH=yes; else WIRE_MATCH=no; fi
fi

# ---------------------------------------------------------------- report
{
    printf 'config\ttransport\tjob\trun\tiops\tmib_s\tclat_p50_us\tclat_p99_us\tlag_bytes\tlag_unapplied\tlag_undurable\tahead\tdrain_s\tgib_written\tcpu_s_1\tcpu_s_2\tcpu_s_per_gib\n'
    cat "$OUT_TSV.tmp"
} >"$OUT_TSV"
rm -f "$OUT_TSV.tmp"
FAILS_TSV="$WORK/fails.tsv"
: >"$FAILS_TSV"
for k in "${!FAIL[@]}"; do printf '%s\t\t\t%s\n' "$k" "${FAIL[$k]}" >>"$FAILS_TSV"; done
for k in "${!RUNFAIL[@]}"; do IFS='|' read -r fc ft fj <<<"$k"; printf '%s\t%s\t%s\t%s\n' "$fc" "$ft" "$fj" "${RUNFAIL[$k]}" >>"$FAILS_TSV"; done
STARTS=""
for k in "${!STARTUP[@]}"; do STARTS+="$k=${STARTUP[$k]} "; done

REPORT=$("$PY" - "$OUT_TSV" "$FAILS_TSV" "${CFG_LIST[*]}" "${job_names[*]}" "$WIRE_JSON" "$WIRE" "$WIRE_FAIL" \
    "$WIRE_DESC" "$WIRE_MATCH" "$STARTS" "$WIRE_ROOTS" "${TR_LIST[*]}" "$GCRUN" "$GC_JSON" "$GC_FAIL" <<'PY'
import csv, json, statistics, sys

(tsv, fails_tsv, cfgs, jobs, wire_json, wire_on, wire_fail, wire_desc, wire_match, starts, wire_roots,
 transports, gc_on, gc_json, gc_fail) = sys.argv[1:16]
cfgs, jobs, transports = cfgs.split(), jobs.split(), transports.split()
starts = dict(s.split("=", 1) for s in starts.split())
runs = {}  # (config, transport, job) -> rows
with open(tsv) as f:
    for row in csv.DictReader(f, delimiter="\t"):
        runs.setdefault((row["config"], row["transport"], row["job"]), []).append(row)
cfg_fail, run_fail = {}, {}
with open(fails_tsv) as f:
    for line in f:
        c, t, j, reason = line.rstrip("\n").split("\t", 3)
        (cfg_fail.__setitem__(c, reason) if not j else run_fail.__setitem__((c, t, j), reason))

NAMES = {"standalone": "blockrepl standalone", "async-pair": "blockrepl async pair", "sync-pair": "blockrepl sync pair",
         "qsd-sync": "qsd mirror write-blocking (sync)", "qsd-async": "qsd mirror background (async)",
         "async-pair-nolog": "blockrepl async pair, activity log off", "sync-pair-nolog": "blockrepl sync pair, activity log off",
         "async-pair-log64": "blockrepl async pair, 64-extent activity log",
         "async-pair-twin": "blockrepl async pair, identical twin (control)",
         "standalone-b": "BLOCKREPL_B standalone", "sync-pair-b": "BLOCKREPL_B sync pair", "async-pair-b": "BLOCKREPL_B async pair"}
STANDALONE = ("standalone", "standalone-b")

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

def vals(c, t, j, k):
    return [x for x in (num(r[k]) for r in runs.get((c, t, j), [])) if x is not None]

def med(c, t, j, k):
    v = vals(c, t, j, k)
    return statistics.median(v) if v else None

def mx(c, t, j, k):
    v = vals(c, t, j, k)
    return max(v) if v else None

def f_int(v): return "n/a" if v is None else f"{v:,.0f}"
def f_dec(v): return "n/a" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")

def f_bytes(v):
    if v < 1048576:
        return f"{v / 1024:,.0f} KiB"
    return f"{v / 1048576:,.1f} MiB"

def why_missing(c, t, j):
    if c not in cfgs:
        return f"{NAMES[c]} not in CONFIGS"
    return f"{NAMES[c]} failed: {cfg_fail.get(c, run_fail.get((c, t, j), 'no successful run'))}"

def lag_cell(c, t, j):
    if c in STANDALONE:
        return "-"
    lb, lbmax = med(c, t, j, "lag_bytes"), mx(c, t, j, "lag_bytes")
    ua, ud = med(c, t, j, "lag_unapplied"), med(c, t, j, "lag_undurable")
    ahead = sum(vals(c, t, j, "ahead"))
    if lb is None and ua is None and ud is None:
        return "n/a"
    parts = []
    if lb is not None:
        parts.append(f"{f_bytes(lb)} (max {f_bytes(lbmax)})")
    if ua is not None or ud is not None:
        parts.append(f"{'n/a' if ua is None else f'{ua:,.0f}'} unapplied / {'n/a' if ud is None else f'{ud:,.0f}'} not durable writes")
    if ahead:
        parts.append(f"went ahead {ahead:,.0f}x")
    return "; ".join(parts)

def drain_cell(c, t, j):
    if c in STANDALONE:
        return "-"
    vs = [r["drain_s"] for r in runs.get((c, t, j), [])]
    if not vs:
        return "n/a"
    timeouts = sum(v == "timeout" for v in vs)
    nums = [float(v) for v in vs if num(v) is not None]
    s = f"{statistics.median(nums):.1f}" if nums else "n/a"
    return s + (f" ({timeouts} timed out)" if timeouts else "")

out = []
out.append("| job | transport | configuration | IOPS | MiB/s | p50 us | p99 us | replica lag at end of run | catch-up s |")
out.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
for j in jobs:
    for t in transports:
        for c in cfgs:
            name = NAMES[c]
            if not runs.get((c, t, j)):
                out.append(f"| {j} | {t} | {name} | {why_missing(c, t, j)} | | | | | |")
                continue
            out.append(f"| {j} | {t} | {name} | {f_int(med(c, t, j, 'iops'))} | {f_dec(med(c, t, j, 'mib_s'))} | "
                       f"{f_dec(med(c, t, j, 'clat_p50_us'))} | {f_dec(med(c, t, j, 'clat_p99_us'))} | {lag_cell(c, t, j)} | {drain_cell(c, t, j)} |")
counts = sorted({len(v) for v in runs.values()})
out.append("")
out.append("Transport: how fio's nbd engine reaches the export, `unix` (a unix socket) or `tcp` (127.0.0.1, as a hypervisor "
           "on another host would connect); a blockrepl daemon serves both from one process (`--nbd unix:PATH,127.0.0.1:0`), "
           "a qsd configuration runs one qemu-storage-daemon instance per transport (one NBD server per process), each "
           "with its own images, mirror job and qemu-nbd target. "
           "p50/p99: fio completion latency (clat) percentiles, microseconds; MiB/s = 2^20 bytes/s; runs per cell: "
           + (", ".join(map(str, counts)) if counts else "none") + " (median shown). "
           "Replica lag: one reading right after fio exits (one `blockrepl status --json` call or one QMP query; median over "
           "runs, max bytes in brackets). blockrepl: bytes = `replication.queuedBytes` (queued or sent, not yet received) + "
           "`dirtyBytes` (bitmap after going ahead); writes = `lastSeq - appliedSeq` and `lastSeq - durableSeq` of the primary; "
           "'went ahead' = increase of `replication.aheadCount`, summed over runs. qsd: bytes = `len - offset` of the mirror "
           "job (dirty bytes at the job's granularity, 64 KiB for a 1 GiB image). Catch-up: seconds until the replica had "
           "everything (blockrepl: durableSeq == lastSeq, no dirty bytes, no resync; qsd: len == offset), waited for before the next run.")
if starts:
    out.append("Time from start to measurable (pairs: secondary started to `connected`; qsd: blockdev-mirror to ready, the last "
               "instance started): " + ", ".join(f"{NAMES[k]} {v} s" for k, v in sorted(starts.items())) + ".")

# ---- CPU per GiB
out.append("")
out.append("## CPU s per GiB (primary + secondary)")
out.append("")
out.append("CPU seconds (utime + stime from /proc/PID/stat) of the configuration's processes from the end of fio's ramp to "
           "the end of the catch-up wait after the run, divided by the GiB (2^30 bytes) fio wrote in its measured time; "
           "median over runs. blockrepl: primary + secondary daemon (standalone: the one daemon); qsd: qemu-storage-daemon "
           "+ its qemu-nbd target. fio's own CPU is not counted.")
out.append("")
out.append("| job | transport | configuration | CPU s per GiB | of which primary / secondary (qsd / qemu-nbd), s per GiB | GiB per run |")
out.append("|---|---|---|---:|---:|---:|")
for j in jobs:
    for t in transports:
        for c in cfgs:
            rows = runs.get((c, t, j), [])
            per = [x for x in (num(r["cpu_s_per_gib"]) for r in rows) if x is not None]
            if not per:
                out.append(f"| {j} | {t} | {NAMES[c]} | n/a | | |")
                continue
            p1 = [num(r["cpu_s_1"]) / num(r["gib_written"]) for r in rows if num(r["cpu_s_1"]) is not None and num(r["gib_written"])]
            p2 = [num(r["cpu_s_2"]) / num(r["gib_written"]) for r in rows if num(r["cpu_s_2"]) is not None and num(r["gib_written"])]
            split = f"{statistics.median(p1):.1f}" + (f" / {statistics.median(p2):.1f}" if p2 else " / -") if p1 else "n/a"
            out.append(f"| {j} | {t} | {NAMES[c]} | {statistics.median(per):.1f} | {split} | {med(c, t, j, 'gib_written'):.2f} |")

# ---- ratios
out.append("")
out.append("## Ratios (IOPS and latency, medians)")
out.append("")
out.append("| ratio | transport | job | value | target | |")
out.append("|---|---|---|---:|---:|---|")
def ratio(a, b, t, j, target, label):
    if a not in cfgs or b not in cfgs:
        return
    va, vb = med(a, t, j, "iops"), med(b, t, j, "iops")
    if va is None or vb is None or vb == 0:
        why = "; ".join(why_missing(x, t, j) for x in (a, b) if med(x, t, j, "iops") is None)
        out.append(f"| {label} | {t} | {j} | n/a | {'-' if target is None else f'>= {target:.2f}x'} | {why or 'n/a'} |")
        return
    r = va / vb
    if target is None:
        out.append(f"| {label} | {t} | {j} | {r:.2f}x | - | for information |")
        return
    out.append(f"| {label} | {t} | {j} | {r:.2f}x | >= {target:.2f}x | {'met' if r >= target else 'MISSED'} |")
def lat_diff(a, b, t, j, pct, target, label):
    if a not in cfgs or b not in cfgs:
        return
    k = f"clat_{pct}_us"
    va, vb = med(a, t, j, k), med(b, t, j, k)
    tgt = "-" if target is None else f"<= {target:,.0f} us"
    if va is None or vb is None:
        why = "; ".join(why_missing(x, t, j) for x in (a, b) if med(x, t, j, k) is None)
        out.append(f"| {label} | {t} | {j} | n/a | {tgt} | {why or 'n/a'} |")
        return
    d = va - vb
    verdict = "for information" if target is None else ("met" if d <= target else "MISSED")
    out.append(f"| {label} | {t} | {j} | {d:+,.0f} us ({va:,.0f} - {vb:,.0f}) | {tgt} | {verdict} |")
QD1, QD32 = "4k-randwrite-qd1", "4k-randwrite-qd32"
for t in transports:
    if QD1 in jobs:
        lat_diff("sync-pair", "standalone", t, QD1, "p50", 100, "sync pair p50 - standalone p50")
        lat_diff("sync-pair", "standalone", t, QD1, "p99", None, "sync pair p99 - standalone p99")
        ratio("sync-pair", "qsd-sync", t, QD1, 1.5, "sync pair / qsd write-blocking mirror")
    if QD32 in jobs:
        ratio("sync-pair", "qsd-sync", t, QD32, 3.0, "sync pair / qsd write-blocking mirror")
        ratio("async-pair", "standalone", t, QD32, 0.85, "async pair / standalone")
    for j in (QD1, QD32):
        if j in jobs:
            for m in ("async", "sync"):
                if f"{m}-pair-nolog" in cfgs:
                    ratio(f"{m}-pair", f"{m}-pair-nolog", t, j, 0.9, f"{m} pair: activity log on / off")
            if "async-pair-twin" in cfgs and "async-pair" in cfgs:
                ratio("async-pair-twin", "async-pair", t, j, None, "identical async pairs: twin / async pair (control)")
            for base in ("standalone", "sync-pair", "async-pair"):
                if f"{base}-b" in cfgs:
                    ratio(base, f"{base}-b", t, j, None, f"{NAMES[base]} / {NAMES[base + '-b']}")
            if "async-pair-log64" in cfgs:
                ratio("async-pair-log64", "async-pair-nolog", t, j, None, "async pair: 64-extent log (evicting) / log off")
if len(transports) > 1:
    for j in (QD1, QD32):
        if j in jobs:
            for c in cfgs:
                ratio_tcp = (med(c, "tcp", j, "iops"), med(c, "unix", j, "iops"))
                if None not in ratio_tcp and ratio_tcp[1]:
                    out.append(f"| {NAMES[c]}: tcp / unix | - | {j} | {ratio_tcp[0] / ratio_tcp[1]:.2f}x | - | for information |")

# ---- GC run
if gc_on == "1":
    out.append("")
    out.append("## Garbage collection during a sync-pair run")
    out.append("")
    if gc_fail:
        out.append(f"failed: {gc_fail}")
    else:
        g = json.load(open(gc_json))
        out.append(f"{g['seconds']} s of 4 KiB randwrite QD32 on the sync pair over {g['transport']} (no ramp), "
                   f"{g['iops']:,.0f} IOPS; counters are the change of each daemon's `runtime` in `status --json` from before "
                   f"fio to after the catch-up wait ({g['drain']} s), so they include two status calls per daemon. "
                   f"Writes: the primary's `counters.writes` went up by {g['writes']:,} (fio counted {g['fio_writes']:,}).")
        out.append("")
        out.append("| daemon | gen0 | gen1 | gen2 | GC pause ms | allocated MiB | allocated bytes per replicated write |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for side in ("primary", "secondary"):
            b, a = g[side]["before"] or {}, g[side]["after"] or {}
            d = lambda k: (a.get(k) or 0) - (b.get(k) or 0)
            per = d("totalAllocatedBytes") / g["writes"] if g["writes"] else None
            out.append(f"| {side} | {d('gen0Collections'):,} | {d('gen1Collections'):,} | {d('gen2Collections'):,} | "
                       f"{d('gcPauseTotalMs'):,.1f} | {d('totalAllocatedBytes') / 1048576:,.1f} | {'n/a' if per is None else f'{per:,.0f}'} |")

if wire_on == "1":
    out.append("")
    out.append("## Wire ratio on filesystem data (sync pair)")
    out.append("")
    out.append(f"Data set: {wire_desc or '(not built)'}; regular files of each of {wire_roots} in sorted path order, "
               "put into a 1 GiB ext4 image with `mke2fs -t ext4 -d` (no mount), copied into the sync pair's primary with "
               "`nbdcopy --flush` over the volume that the fio runs had filled. Bytes are the change of the primary's "
               "`volumes[0].wire` counters across the copy.")
    out.append("")
    if wire_fail:
        out.append(f"failed: {wire_fail}")
    else:
        w = json.load(open(wire_json))
        p, wb = w["payload"], w["wire"]
        r = wb / p if p else None
        out.append("| payloadBytes | wireBytes | wire / payload | target | | nbdcopy | secondary == image after stop |")
        out.append("|---:|---:|---:|---:|---|---:|---|")
        out.append(f"| {p:,} | {wb:,} | {'n/a' if r is None else f'{r:.3f}'} | <= 0.55 | "
                   f"{'n/a' if r is None else ('met' if r <= 0.55 else 'MISSED')} | {w['seconds']:.1f} s | {wire_match or 'n/a'} |")
print("\n".join(out))
PY
)

echo "$REPORT"
{
    echo "$HEADER"
    echo
    echo "$REPORT"
    echo
    echo "Load average at the end (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg). Run took ${SECONDS} s."
    if [[ -n "$STOP_NOTES" ]]; then
        echo
        echo "Note: ${STOP_NOTES%; }."
    fi
    echo
    echo "Raw per-run numbers: bench/results/$(basename "$OUT_TSV")"
} >"$OUT_MD"
echo
[[ -z "$STOP_NOTES" ]] || log "note: ${STOP_NOTES%; }"
log "report written to ${OUT_MD#"$REPO"/}, per-run numbers to ${OUT_TSV#"$REPO"/}"
if ((FAILED)) || ((${#FAIL[@]} > 0)) || [[ -n "$WIRE_FAIL" ]] || [[ -n "$GC_FAIL" ]]; then
    log "some configurations or runs failed (see above); the report says which"
    exit 1
fi
