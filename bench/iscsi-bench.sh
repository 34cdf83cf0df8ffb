#!/usr/bin/env bash
# iSCSI benchmark (issue 5): blockrepl's iSCSI target vs tgt (tgtd, Debian's tgt) in one run, on copies of
# the same file.
#
#   make bench-iscsi                     (builds first), or: bash bench/iscsi-bench.sh
#   REPEATS=1 WRITES=5000 bash bench/iscsi-bench.sh
#
# Environment:
#   REPEATS     runs per (target, job) cell; the table shows the median (default 3)
#   WRITES      4 KiB writes per qemu-img bench run (default 20000; QD1 runs use a quarter)
#   READ_SECS   seconds per iscsi-perf read run (default 5)
#   BLOCKREPL   daemon binary (default src/BlockRepl/bin/Release/net10.0/blockrepl)
#   BENCH_TMPDIR  where the 256 MiB images go (default ${TMPDIR:-/var/tmp})
#   KEEP_TMP=1  keep the temp dir (images, logs) for inspection
#
# Method: one master file of 256 MiB from /dev/urandom is copied (a real data copy) to each target's file.
# blockrepl serves it standalone (no peer) with NBD off; tgtd (a private instance: its own control port
# and portal) serves its copy as LUN 1 with the default rdwr backing store. Both are write-back to the page
# cache. Jobs, interleaved per repeat (blockrepl, tgt, blockrepl, tgt, ...):
#   4k-write-qd1 / 4k-write-qd32: qemu-img bench -w -s 4096 -S 4096 (qemu's iscsi:// driver, libiscsi)
#   4k-read-qd32: iscsi-perf -b 8 -m 32 -r (libiscsi, random 4 KiB reads) for READ_SECS seconds
# Results go to bench/results/iscsi-bench-latest.md and .tsv (gitignored).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

REPEATS="${REPEATS:-3}"
WRITES="${WRITES:-20000}"
READ_SECS="${READ_SECS:-5}"
BLOCKREPL="${BLOCKREPL:-src/BlockRepl/bin/Release/net10.0/blockrepl}"
BENCH_TMPDIR="${BENCH_TMPDIR:-${TMPDIR:-/var/tmp}}"
RESULTS_DIR="$REPO/bench/results"
OUT_MD="$RESULTS_DIR/iscsi-bench-latest.md"
OUT_TSV="$RESULTS_DIR/iscsi-bench-latest.tsv"
SIZE_MIB=256
TGT_CONTROL_PORT=17
TGT_IQN=iqn.2026-11.io.blockrepl.bench:tgt

die() { echo "iscsi-bench: $*" >&2; exit 1; }
log() { echo "iscsi-bench: $*" >&2; }

for v in REPEATS WRITES READ_SECS; do
    [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || die "$v must be a positive whole number, got '${!v}'"
done
if ! command -v tgtd >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    log "installing Debian's tgt (the comparison target)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends tgt >&2
fi
for tool in qemu-img iscsi-perf iscsi-ls tgtd tgtadm python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run 'make deps' (tgt: apt-get install -y --no-install-recommends tgt)"
done
[[ -f /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so ]] || die "qemu's iscsi driver is missing: apt-get install -y qemu-block-extra"
[[ -x "$BLOCKREPL" ]] || die "$BLOCKREPL not found or not executable: run 'make build' first"
[[ "$BLOCKREPL" == /* ]] || BLOCKREPL="$REPO/$BLOCKREPL"
[[ $(id -u) -eq 0 ]] || die "tgtd needs root"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

WORK="$(mktemp -d "$BENCH_TMPDIR/iscsi-bench.XXXXXX")"
BR_PID=""
TGT_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$TGT_PID" ]]; then
        # tgtd ignores SIGTERM while a target exists: delete it, then the system.
        tgtadm -C "$TGT_CONTROL_PORT" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
        tgtadm -C "$TGT_CONTROL_PORT" --op delete --mode system >/dev/null 2>&1 || true
        for _ in $(seq 50); do kill -0 "$TGT_PID" 2>/dev/null || break; sleep 0.1; done
        kill "$TGT_PID" 2>/dev/null || true
        wait "$TGT_PID" 2>/dev/null || true
    fi
    if [[ -n "$BR_PID" ]]; then
        kill "$BR_PID" 2>/dev/null || true
        wait "$BR_PID" 2>/dev/null || true
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT INT TERM

log "preparing ${SIZE_MIB} MiB of random data in $WORK"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/master.img"
mkdir -p "$WORK/br"
cp --reflink=never "$WORK/master.img" "$WORK/br/bench.img"
cp --reflink=never "$WORK/master.img" "$WORK/tgt.img"
sync

# ---------------------------------------------------------------- blockrepl
"$BLOCKREPL" serve --data-dir "$WORK/br" --volume bench --size "${SIZE_MIB}M" --nbd off \
    --admin "unix:$WORK/br/admin.sock" --iscsi 127.0.0.1:0 >"$WORK/br.out" 2>"$WORK/br.log" &
BR_PID=$!
for _ in $(seq 100); do grep -q '^blockrepl: ready' "$WORK/br.out" && break; sleep 0.1; done
grep -q '^blockrepl: ready' "$WORK/br.out" || die "blockrepl did not start: $(tail -3 "$WORK/br.log")"
BR_ADDR="$(grep -o 'iscsi=[0-9.:]*' "$WORK/br.out" | cut -d= -f2)"
BR_URL="iscsi://$BR_ADDR/iqn.2026-11.io.blockrepl:bench/0"

# ---------------------------------------------------------------- tgt
TGT_PORT="$(free_port)"
tgtd -f -C "$TGT_CONTROL_PORT" --iscsi "portal=127.0.0.1:$TGT_PORT" >"$WORK/tgtd.log" 2>&1 &
TGT_PID=$!
for _ in $(seq 50); do tgtadm -C "$TGT_CONTROL_PORT" --op show --mode system >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm -C "$TGT_CONTROL_PORT" --lld iscsi --op new --mode target --tid 1 -T "$TGT_IQN"
tgtadm -C "$TGT_CONTROL_PORT" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$WORK/tgt.img"
tgtadm -C "$TGT_CONTROL_PORT" --lld iscsi --op bind --mode target --tid 1 -I ALL
TGT_URL="iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/1"
iscsi-ls -s "iscsi://127.0.0.1:$TGT_PORT" | grep -q "$TGT_IQN" || die "tgtd does not list $TGT_IQN"
TGT_VERSION="$(dpkg-query -W -f='${Version}' tgt 2>/dev/null || true)"

declare -A URLS=([blockrepl]="$BR_URL" [tgt]="$TGT_URL")
TARGETS=(blockrepl tgt)
JOBS=(4k-write-qd1 4k-write-qd32 4k-read-qd32)

# One measurement; prints IOPS.
measure() {
    local job=$1 url=$2 count secs out
    case "$job" in
    4k-write-qd1 | 4k-write-qd32)
        local depth=${job##*qd}
        count=$WRITES
        ((depth == 1)) && count=$((WRITES / 4))
        out="$(qemu-img bench -f raw -w -c "$count" -d "$depth" -s 4096 -S 4096 "$url" 2>&1)" || die "qemu-img bench failed on $url: $out"
        secs="$(sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' <<<"$out")"
        [[ -n "$secs" ]] || die "no timing in qemu-img bench output: $out"
        python3 -c "print(round($count / $secs))"
        ;;
    4k-read-qd32)
        out="$(iscsi-perf -t "$READ_SECS" -m 32 -b 8 -r "$url" 2>&1)" || die "iscsi-perf failed on $url: $out"
        sed -n 's/.*iops average \([0-9]*\) .*/\1/p' <<<"$(tr '\r' '\n' <<<"$out")" | tail -1
        ;;
    esac
}

declare -A RESULTS=()
log "warming up both targets"
for t in "${TARGETS[@]}"; do measure 4k-write-qd32 "${URLS[$t]}" >/dev/null; done
for ((r = 1; r <= REPEATS; r++)); do
    for job in "${JOBS[@]}"; do
        for t in "${TARGETS[@]}"; do
            iops="$(measure "$job" "${URLS[$t]}")"
            [[ "$iops" =~ ^[0-9]+$ ]] || die "could not read IOPS for $t $job"
            RESULTS[$t,$job]+="$iops "
            log "repeat $r $job $t: $iops IOPS"
        done
    done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

mkdir -p "$RESULTS_DIR"
{
    echo "# iSCSI benchmark: blockrepl vs tgt"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r), blockrepl $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'),"
    echo "tgt ${TGT_VERSION:-?}, $(qemu-img --version | head -1), ${SIZE_MIB} MiB file each, median of $REPEATS."
    echo
    echo "| job | blockrepl IOPS | tgt IOPS | blockrepl / tgt |"
    echo "|---|---:|---:|---:|"
    for job in "${JOBS[@]}"; do
        b="$(median "${RESULTS[blockrepl,$job]}")"
        g="$(median "${RESULTS[tgt,$job]}")"
        echo "| $job | $b | $g | $(python3 -c "print(f'{$b / $g:.2f}x')") |"
    done
} >"$OUT_MD"
{
    printf 'job\ttarget\truns\n'
    for job in "${JOBS[@]}"; do for t in "${TARGETS[@]}"; do printf '%s\t%s\t%s\n' "$job" "$t" "${RESULTS[$t,$job]}"; done; done
} >"$OUT_TSV"
cat "$OUT_MD"
log "results in $OUT_MD and $OUT_TSV"
