#!/usr/bin/env bash
# Resync speed and fairness: how fast an idle full resync of a fully written 1 GiB volume runs over loopback,
# beside qemu-storage-daemon's blockdev-mirror copying the same image, and what a resync does to the
# application's 4 KiB QD1 write latency (the rate controller at work).
#
#   bash tools/install-deps.sh && make build && bash bench/resync-bench.sh      (make bench-resync)
#
# Environment: RUNTIME fio seconds per latency run (default 5); REPEATS latency runs per phase (default 3);
# MODE sync|async (default sync); BLOCKREPL daemon binary; BENCH_TMPDIR where the images go (default /tmp);
# EXTRA extra serve flags for both daemons (e.g. "--resync-min-rate 32M"); QSD=0 skips the qemu-storage-daemon
# comparison (default 1); KEEP_TMP=1 keeps the work dir.
#
# Method: node A's image is 1 GiB of random data (no holes, written before A starts, so every block must go);
# node B starts fresh (no image, no metadata): A runs a full sync to it. Phase 1 measures that sync with no
# application I/O (bytes / seconds from A's `status --json` lastResync). Phase 1b: qemu-storage-daemon (file node
# on A's image, A idle) runs blockdev-mirror sync=full to a qemu-nbd target serving a fresh sparse raw image over
# TCP on 127.0.0.1, timed from the command to BLOCK_JOB_READY; the job is then cancelled (a ready job completes
# without a pivot), both processes stopped and the target compared with A's image (cmp). Phase 2: fio 4 KiB randwrite QD1 on A
# (nbd engine, unix socket) with the pair in sync, REPEATS runs. Phase 3: B is stopped, its image and metadata
# removed and B restarted, so A runs the same full sync again while fio runs REPEATS times; a run starts only
# during a sync (when the previous one has ended, B is wiped again first), and the report says whether the sync
# was still running when the run ended. Reported: the full-sync rates,
# the latencies (mean, p50, p99 of fio's completion latency) and their ratios. Targets (issue 4): idle resync
# >= 300 MB/s (10^6 bytes), QD1 latency during a resync <= 2x idle (mean); issue 11: blockrepl's idle full
# sync rate / qsd's mirror rate >= 1.0x. The images are compared at the end.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
RUNTIME="${RUNTIME:-5}"
REPEATS="${REPEATS:-3}"
MODE="${MODE:-sync}"
EXTRA="${EXTRA:-}"
QSD="${QSD:-1}"
BLOCKREPL="${BLOCKREPL:-src/BlockRepl/bin/Release/net10.0/blockrepl}"
[[ "$BLOCKREPL" == /* ]] || BLOCKREPL="$REPO/$BLOCKREPL"
BENCH_TMPDIR="${BENCH_TMPDIR:-${TMPDIR:-/tmp}}"
RESULTS_DIR="$REPO/bench/results"
OUT_MD="$RESULTS_DIR/resync-bench-latest.md"
PY=/usr/bin/python3

die() { echo "resync-bench: $*" >&2; exit 1; }
log() { echo "resync-bench: [$(printf '%3d' "$SECONDS") s] $*" >&2; }
for v in RUNTIME REPEATS; do [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive whole number"; done
[[ "$MODE" == sync || "$MODE" == async ]] || die "MODE must be sync or async"
[[ "$QSD" == 0 || "$QSD" == 1 ]] || die "QSD must be 0 or 1"
for tool in fio jq; do command -v "$tool" >/dev/null || die "$tool not found: run 'bash tools/install-deps.sh'"; done
if [[ "$QSD" == 1 ]]; then
    for tool in qemu-storage-daemon qemu-nbd nbdinfo; do
        command -v "$tool" >/dev/null || die "$tool not found (Debian: qemu-system-common, qemu-utils, libnbd-bin): run 'bash tools/install-deps.sh' or set QSD=0"
    done
fi
[[ -x "$BLOCKREPL" ]] || die "$BLOCKREPL not found: run 'make build' first"

WORK=$(mktemp -d "$BENCH_TMPDIR/resync-bench.XXXXXX")
declare -A PIDS=()
cleanup() {
    local rc=$? n
    trap - EXIT
    for n in "${!PIDS[@]}"; do
        [[ -n "${PIDS[$n]:-}" ]] && { kill -TERM "${PIDS[$n]}" 2>/dev/null || true; wait "${PIDS[$n]}" 2>/dev/null || true; }
    done
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PA=$(free_port)
PB=$(free_port)
while [[ "$PB" == "$PA" ]]; do PB=$(free_port); done

start_node() { # node role listen-port peer-port
    local n=$1 role=$2 port=$3 peer=$4 dir="$WORK/$1" i
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    DOTNET_gcServer=0 "$BLOCKREPL" serve --data-dir "$dir" --volume vol --size 1G --nbd "unix:$dir/nbd.sock" \
        --admin "unix:$dir/admin.sock" --role "$role" --listen "127.0.0.1:$port" --peer "http://127.0.0.1:$peer" \
        --mode "$MODE" $EXTRA </dev/null >>"$dir/daemon.log" 2>&1 &
    PIDS[$n]=$!
    for ((i = 0; i < 600; i++)); do
        grep -q '^blockrepl: ready ' "$dir/daemon.log" 2>/dev/null && return 0
        kill -0 "${PIDS[$n]}" 2>/dev/null || die "node $n exited: $(tail -n 3 "$dir/daemon.log")"
        sleep 0.1
    done
    die "node $n printed no ready line"
}
stop_node() { kill -TERM "${PIDS[$1]}"; wait "${PIDS[$1]}" || true; PIDS[$1]=""; }
stop_proc() { [[ -z "${PIDS[$1]:-}" ]] || { kill -TERM "${PIDS[$1]}" 2>/dev/null || true; wait "${PIDS[$1]}" 2>/dev/null || true; PIDS[$1]=""; }; }
status_a() { timeout 20 "$BLOCKREPL" status --admin "unix:$WORK/a/admin.sock" --json | jq -c '.volumes[0]'; }
in_sync() { # status json
    jq -e '.role == "primary" and .connection == "connected" and .dirtyBytes == 0 and .resync == null
        and .replication.lastSeq == .replication.durableSeq' <<<"$1" >/dev/null
}
wait_in_sync() {
    local st i
    for ((i = 0; i < 3000; i++)); do
        st=$(status_a) && in_sync "$st" && { echo "$st"; return 0; }
        sleep 0.2
    done
    die "the pair did not get in sync: $st"
}
fio_qd1() { # output json file
    fio --name=qd1 --ioengine=nbd --uri="nbd+unix:///vol?socket=$WORK/a/nbd.sock" --rw=randwrite --bs=4k --iodepth=1 \
        --time_based --runtime="$RUNTIME" --size=1G --randrepeat=0 --output-format=json --output="$1" >/dev/null
}
lat() { # fio json -> "mean p50 p99" in microseconds
    jq -r '.jobs[0].write.clat_ns | "\(.mean / 1000) \(.percentile["50.000000"] / 1000) \(.percentile["99.000000"] / 1000)"' "$1"
}

log "writing 1 GiB of random data as node A's image ..."
mkdir -p "$WORK/a" "$WORK/b" "$RESULTS_DIR"
head -c 1G /dev/urandom >"$WORK/a/vol.img"
sync

log "phase 1: idle full sync of 1 GiB to a fresh node B"
start_node b secondary "$PB" "$PA"
start_node a primary "$PA" "$PB"
st=$(wait_in_sync)
IDLE_BYTES=$(jq -r '.lastResync.bytes' <<<"$st")
IDLE_SECS=$(jq -r '.lastResync.seconds' <<<"$st")
log "idle full sync: $IDLE_BYTES bytes in $IDLE_SECS s"

# Phase 1b: the same copy by qemu-storage-daemon, from the same image (A idle, its image unchanged since phase 1):
# blockdev-mirror sync=full to a qemu-nbd target serving a fresh sparse raw image over TCP on 127.0.0.1 (like
# blockrepl's replication link), timed from the blockdev-mirror command to the BLOCK_JOB_READY event.
QSD_BYTES="" QSD_SECS="" QSD_SAME="" QSD_FAIL=""
if [[ "$QSD" == 1 ]]; then
    log "phase 1b: qemu-storage-daemon blockdev-mirror (sync=full) of the same image to a qemu-nbd target"
    mkdir -p "$WORK/q"
    truncate -s 1G "$WORK/q/tgt.img"
    PQ=$(free_port)
    qemu-nbd --cache=writeback -f raw --persistent -b 127.0.0.1 -p "$PQ" -x vol "$WORK/q/tgt.img" \
        </dev/null >"$WORK/q/qemu-nbd.log" 2>&1 &
    PIDS[qemu-nbd]=$!
    for ((i = 0; i < 300; i++)); do
        nbdinfo --size "nbd://127.0.0.1:$PQ/vol" >/dev/null 2>&1 && break
        kill -0 "${PIDS[qemu-nbd]}" 2>/dev/null || break
        sleep 0.1
    done
    # locking=off: node A's daemon has the image open too (idle; nothing writes it during this phase).
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=src-file,filename=$WORK/a/vol.img,cache.direct=off,locking=off" \
        --blockdev driver=raw,node-name=src,file=src-file \
        --chardev "socket,id=qmp,path=$WORK/q/qmp.sock,server=on,wait=off" \
        --monitor chardev=qmp </dev/null >"$WORK/q/qsd.log" 2>&1 &
    PIDS[qsd]=$!
    for ((i = 0; i < 300; i++)); do [[ -S "$WORK/q/qmp.sock" ]] && break; sleep 0.1; done
    if out=$("$PY" - "$WORK/q/qmp.sock" "$PQ" 2>&1 <<'PY'
import json, socket, sys, time
path, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(600)
s.connect(path)
f = s.makefile("rwb")
pending = []  # events read while waiting for a command's return

def send(name, args=None):
    f.write(json.dumps({"execute": name, **({"arguments": args} if args else {})}).encode() + b"\n")
    f.flush()
    while True:
        msg = json.loads(f.readline())
        if "event" in msg:
            pending.append(msg)
            continue
        if "error" in msg:
            raise RuntimeError(f"{name}: {msg['error'].get('desc')}")
        return msg.get("return")

def event(name):
    while True:
        msg = pending.pop(0) if pending else json.loads(f.readline() or "null")
        if msg is None:
            raise RuntimeError("QMP connection closed")
        if msg.get("event") == name:
            return msg

json.loads(f.readline())  # greeting
send("qmp_capabilities")
send("blockdev-add", {"driver": "nbd", "node-name": "tgt", "export": "vol",
                      "server": {"type": "inet", "host": "127.0.0.1", "port": str(port)}})
t0 = time.monotonic()
send("blockdev-mirror", {"job-id": "m0", "device": "src", "target": "tgt", "sync": "full"})
ready = event("BLOCK_JOB_READY")
secs = time.monotonic() - t0
# A ready job has copied everything; cancelling it then completes it without a pivot (the target is flushed).
send("block-job-cancel", {"device": "m0"})
event("BLOCK_JOB_COMPLETED")
send("blockdev-del", {"node-name": "tgt"})
print(json.dumps({"bytes": ready["data"]["offset"], "len": ready["data"]["len"], "seconds": secs}))
PY
    ); then
        QSD_BYTES=$(jq -r '.bytes' <<<"$out")
        QSD_SECS=$(jq -r '.seconds' <<<"$out")
        log "qsd mirror: $QSD_BYTES bytes in $QSD_SECS s"
    else
        QSD_FAIL="qemu-storage-daemon mirror failed: $(tail -n 1 <<<"$out") $(tail -n 1 "$WORK/q/qsd.log" 2>/dev/null)"
        log "$QSD_FAIL"
    fi
    stop_proc qsd
    stop_proc qemu-nbd
    if [[ -z "$QSD_FAIL" ]]; then
        if cmp -s "$WORK/a/vol.img" "$WORK/q/tgt.img"; then QSD_SAME=yes; else QSD_SAME=no; fi
    fi
    rm -f "$WORK/q/tgt.img"
fi

log "phase 2: fio 4k randwrite QD1, pair in sync, $REPEATS x ${RUNTIME} s"
IDLE_LAT=()
for ((r = 1; r <= REPEATS; r++)); do
    fio_qd1 "$WORK/idle-$r.json"
    IDLE_LAT+=("$(lat "$WORK/idle-$r.json")")
    wait_in_sync >/dev/null
done

log "phase 3: the same full sync again (node B fresh) while fio runs"
BUSY_LAT=() BUSY_OK=() RESTARTS=0
fresh_sync() { # B wiped and restarted: A starts a full sync to it
    stop_node b
    rm -f "$WORK/b/vol.img" "$WORK/b/vol.meta"
    start_node b secondary "$PB" "$PA"
    for ((i = 0; i < 300; i++)); do
        st=$(status_a) && [[ "$(jq -r '.resync != null' <<<"$st")" == true ]] && return 0
        sleep 0.1
    done
    die "the resync did not start: $st"
}
fresh_sync
for ((r = 1; r <= REPEATS; r++)); do
    # Each run must start during a resync: when the last one has ended, B is wiped again.
    st=$(status_a)
    if [[ "$(jq -r '.resync != null' <<<"$st")" != true ]]; then
        fresh_sync
        RESTARTS=$((RESTARTS + 1))
    fi
    fio_qd1 "$WORK/busy-$r.json"
    st=$(status_a)
    BUSY_LAT+=("$(lat "$WORK/busy-$r.json")")
    if [[ "$(jq -r '.resync != null' <<<"$st")" == true ]]; then BUSY_OK+=(yes); else BUSY_OK+=("no (the resync had ended)"); fi
done
st=$(wait_in_sync)
BUSY_SECS=$(jq -r '.lastResync.seconds' <<<"$st")
BUSY_BYTES=$(jq -r '.lastResync.bytes' <<<"$st")
log "full sync under load: $BUSY_BYTES bytes in $BUSY_SECS s (B wiped again $RESTARTS times between runs)"

stop_node a
stop_node b
SAME=no
cmp -s "$WORK/a/vol.img" "$WORK/b/vol.img" && SAME=yes

"$PY" - "$OUT_MD" "$IDLE_BYTES" "$IDLE_SECS" "$BUSY_BYTES" "$BUSY_SECS" "$SAME" "$MODE" "$RUNTIME" "$EXTRA" \
    "$(printf '%s;' "${IDLE_LAT[@]}")" "$(printf '%s;' "${BUSY_LAT[@]}")" "$(printf '%s;' "${BUSY_OK[@]}")" \
    "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$RESTARTS" \
    "$QSD" "$QSD_BYTES" "$QSD_SECS" "$QSD_SAME" "$QSD_FAIL" "$( ((QSD)) && qemu-storage-daemon --version | head -1)" <<'PY'
import statistics, sys, time
(out, ib, isec, bb, bsec, same, mode, runtime, extra, idle, busy, busy_ok, rev, cpus, load, restarts,
 qsd_on, qb, qsec, qsame, qfail, qver) = sys.argv[1:23]
parse = lambda s: [tuple(map(float, x.split())) for x in s.split(";") if x.strip()]
idle, busy = parse(idle), parse(busy)
oks = [x for x in busy_ok.split(";") if x]
med = lambda rows, i: statistics.median(r[i] for r in rows)
rate = lambda b, s: float(b) / float(s) / 1e6 if float(s) > 0 else 0.0
lines = [
    "# Resync speed and fairness", "",
    f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; blockrepl {rev}; {cpus} CPUs; load at end {load}",
    f"- pair: {mode} mode, 1 GiB volume, node A's image 1 GiB of random data, node B fresh; loopback TCP; extra flags: {extra or 'none'}",
    f"- fio: 4 KiB randwrite QD1, nbd engine over a unix socket, {runtime} s per run, median of {len(idle)} runs per phase", "",
    "| measurement | value | target | |", "|---|---:|---:|---|",
]
r_idle = rate(ib, isec)
lines.append(f"| idle full sync | {int(ib):,} bytes in {float(isec):.2f} s = {r_idle:,.0f} MB/s | >= 300 MB/s | {'met' if r_idle >= 300 else 'MISSED'} |")
if qsd_on == "1":
    if qfail:
        lines.append(f"| qsd blockdev-mirror sync=full of the same image | failed: {qfail} | - | |")
        lines.append("| blockrepl / qsd | n/a | >= 1.0x | |")
    else:
        r_q = rate(qb, qsec)
        lines.append(f"| qsd blockdev-mirror sync=full of the same image | {int(qb):,} bytes in {float(qsec):.2f} s = {r_q:,.0f} MB/s | - | for comparison |")
        rr = r_idle / r_q if r_q else None
        lines.append(f"| blockrepl / qsd, idle full copy rate | {'n/a' if rr is None else f'{rr:.2f}x'} | >= 1.0x | "
                     f"{'n/a' if rr is None else ('met' if rr >= 1.0 else 'MISSED')} |")
lines.append(f"| full sync while fio QD1 writes (the last one) | {int(bb):,} bytes in {float(bsec):.2f} s = {rate(bb, bsec):,.0f} MB/s | - | the controller's floor |")
for name, i in (("mean", 0), ("p50", 1), ("p99", 2)):
    a, b = med(idle, i), med(busy, i)
    target = " <= 2.0x " if name == "mean" else " - "
    verdict = ("met" if b / a <= 2.0 else "MISSED") if name == "mean" else "for information"
    lines.append(f"| QD1 write latency {name}: idle / during resync | {a:,.0f} us / {b:,.0f} us = {b / a:.2f}x |{target}| {verdict} |")
lines.append("")
lines.append(f"Every run started during a full sync (B was wiped again {restarts} time(s) between runs, when the previous sync "
             f"had ended); still running when the run ended: {', '.join(oks)}. Images identical after both daemons stopped: {same}.")
if qsd_on == "1":
    lines.append("")
    lines.append(f"qsd ({qver}): node A's image (file node, cache.direct=off) mirrored with `blockdev-mirror sync=full` (default "
                 "granularity and buffer) to a `driver=nbd` blockdev on `qemu-nbd --cache=writeback` serving a fresh sparse raw "
                 "image over TCP on 127.0.0.1, timed from the command to BLOCK_JOB_READY, right after blockrepl's idle sync (A "
                 "idle, its image unchanged); MB = 10^6 bytes. Target identical to the source after the job and both "
                 f"processes stopped: {qsame or 'n/a'}.")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "report written to ${OUT_MD#"$REPO"/}"
[[ "$SAME" == yes ]] || die "the images differ after the resync"
[[ "$QSD" == 0 || "$QSD_SAME" == yes ]] || die "the qsd mirror failed or its target differs from the source"
