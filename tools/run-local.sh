#!/usr/bin/env bash
# Start a local standalone blockrepl volume and print how to connect to it.
#
#   make run                      (builds first), or: bash tools/run-local.sh
#   NBD_PORT=10810 DATA_DIR=/tmp/br SIZE=4G bash tools/run-local.sh
#
# Environment: NBD_PORT (10809), DATA_DIR (./data), SIZE (1G), VOLUME (vol0),
#              BLOCKREPL (path to the built daemon), READY_TIMEOUT (seconds, 60).
# Ctrl-C (or SIGTERM to this script) stops the daemon cleanly and exits 0.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NBD_PORT="${NBD_PORT:-10809}"
DATA_DIR="${DATA_DIR:-./data}"
SIZE="${SIZE:-1G}"
VOLUME="${VOLUME:-vol0}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
BLOCKREPL="${BLOCKREPL:-$REPO/src/BlockRepl/bin/Release/net10.0/blockrepl}"

die() { echo "run-local: $*" >&2; exit 1; }

[[ "$NBD_PORT" =~ ^[0-9]+$ ]] || die "NBD_PORT must be a number, got '$NBD_PORT'"
[[ -x "$BLOCKREPL" ]] || die "$BLOCKREPL not found or not executable: run 'make build' first"
BLOCKREPL="$(cd "$(dirname "$BLOCKREPL")" && pwd)/$(basename "$BLOCKREPL")"

# Is the port free? (SO_REUSEADDR, as servers use, so TIME_WAIT leftovers do not count.)
if ! python3 - "$NBD_PORT" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
PY
then
    echo "run-local: port 127.0.0.1:$NBD_PORT is already in use (set NBD_PORT=... to use another)" >&2
    exit 1
fi

mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
ADMIN="unix:$DATA_DIR/admin.sock"
LOG="$DATA_DIR/blockrepl.log"
: >"$LOG"

echo "run-local: starting $BLOCKREPL serve (volume $VOLUME, size $SIZE, data $DATA_DIR); log: $LOG"
# The daemon runs in its own session (setsid), so a terminal Ctrl-C reaches only this script,
# which then stops the daemon with SIGTERM and waits for it. Its stdout and stderr go to $LOG
# (a file, not a pipe, so nothing breaks when the viewer goes away); tail shows them here.
setsid "$BLOCKREPL" serve --data-dir "$DATA_DIR" --volume "$VOLUME" --size "$SIZE" \
    --nbd "127.0.0.1:$NBD_PORT" --admin "$ADMIN" </dev/null >>"$LOG" 2>&1 &
PID=$!
tail -n +1 -s 0.2 -f --pid="$PID" "$LOG" &
TAIL=$!

STOPPING=0
stop_daemon() {
    local sig="${1:-TERM}" i
    kill -0 "$PID" 2>/dev/null || return 0
    kill -"$sig" "$PID" 2>/dev/null || true
    # Give it 30 s to finish in-flight requests and flush, then force it.
    for ((i = 0; i < 300; i++)); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PID" 2>/dev/null; then
        echo "run-local: daemon $PID did not stop within 30 s after SIG$sig; killing it" >&2
        kill -KILL "$PID" 2>/dev/null || true
    fi
    wait "$PID" 2>/dev/null || true
    # tail prints what is left in the log and exits by itself once the daemon is gone.
    for ((i = 0; i < 10; i++)); do kill -0 "$TAIL" 2>/dev/null || break; sleep 0.1; done
    kill "$TAIL" 2>/dev/null || true
    wait "$TAIL" 2>/dev/null || true
}
on_signal() {
    ((STOPPING)) && return
    STOPPING=1
    echo
    echo "run-local: stopping blockrepl (pid $PID) ..."
    stop_daemon TERM
    echo "run-local: stopped"
    exit 0
}
trap on_signal INT TERM
trap 'stop_daemon TERM' EXIT   # any other way out (errors) must not leave the daemon running

# Wait for the single 'ready' line:
#   blockrepl: ready volume=vol0 nbd=nbd://127.0.0.1:10809/vol0 admin=unix:/abs/path/admin.sock
ready_line=""
for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    if ready_line=$(grep -m1 -E '(^|: )ready( |$)' "$LOG" 2>/dev/null); then
        break
    fi
    if ! kill -0 "$PID" 2>/dev/null; then
        rc=0; wait "$PID" || rc=$?
        stop_daemon TERM   # only collects tail
        trap - EXIT
        die "blockrepl exited with status $rc before it was ready (see output above, or $LOG)"
    fi
    sleep 0.1
done
[[ -n "$ready_line" ]] || die "blockrepl did not print its ready line within ${READY_TIMEOUT} s (see $LOG)"

URI=$(sed -n 's/.*[[:space:]]nbd=\([^[:space:]]*\).*/\1/p' <<<"$ready_line")
URI="${URI:-nbd://127.0.0.1:$NBD_PORT/$VOLUME}"
ADMIN_READY=$(sed -n 's/.*[[:space:]]admin=\([^[:space:]]*\).*/\1/p' <<<"$ready_line")
ADMIN_READY="${ADMIN_READY:-$ADMIN}"

sleep 0.3   # let tail show the ready line first
cat <<MSG

==============================================================================
blockrepl is serving volume '$VOLUME' ($SIZE) at $URI   (pid $PID)

Inspect it:
  nbdinfo $URI
  qemu-img info $URI
Write 1 MiB of 0xab at offset 0, then read it back:
  qemu-io -f raw -c 'write -P 0xab 0 1M' $URI
  qemu-io -f raw -c 'read -P 0xab 0 1M' $URI
Attach it to a VM (qemu-system-x86_64), either
  -drive file=$URI,format=raw,if=virtio,cache=none,aio=native
or
  -blockdev driver=nbd,node-name=$VOLUME,server.type=inet,server.host=127.0.0.1,server.port=$NBD_PORT,export=$VOLUME \\
  -device virtio-blk-pci,drive=$VOLUME
Daemon status:
  $BLOCKREPL status --admin $ADMIN_READY

Press Ctrl-C to stop the daemon.
==============================================================================
MSG

# Foreground until Ctrl-C (handled by on_signal) or until the daemon exits by itself.
rc=0
wait "$PID" || rc=$?
((STOPPING)) && exit 0
stop_daemon TERM   # only collects tail
trap - EXIT
echo "run-local: blockrepl exited by itself with status $rc" >&2
exit "$rc"
