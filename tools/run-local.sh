#!/usr/bin/env bash
# Start a local blockrepl pair on loopback — node A primary, node B secondary, replicating in sync mode —
# and print how to connect a client and how to try a failover.
#
#   make run                      (builds first), or: bash tools/run-local.sh
#   MODE=async SIZE=4G DATA_DIR=/tmp/br bash tools/run-local.sh
#
# Environment: DATA_DIR (./data; the nodes use DATA_DIR/a and DATA_DIR/b), SIZE (1G, sparse images),
#              VOLUME (vol0), MODE (sync|async), NBD_PORT_A (10809), NBD_PORT_B (10810),
#              REPL_PORT_A (7800), REPL_PORT_B (7801), BLOCKREPL (the built daemon), READY_TIMEOUT (60 s).
# Ctrl-C (or SIGTERM to this script) stops both daemons cleanly and exits 0.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${DATA_DIR:-./data}"
SIZE="${SIZE:-1G}"
VOLUME="${VOLUME:-vol0}"
MODE="${MODE:-sync}"
NBD_PORT_A="${NBD_PORT_A:-10809}"
NBD_PORT_B="${NBD_PORT_B:-10810}"
REPL_PORT_A="${REPL_PORT_A:-7800}"
REPL_PORT_B="${REPL_PORT_B:-7801}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
BLOCKREPL="${BLOCKREPL:-$REPO/src/BlockRepl/bin/Release/net10.0/blockrepl}"

die() { echo "run-local: $*" >&2; exit 1; }

[[ "$MODE" == sync || "$MODE" == async ]] || die "MODE must be sync or async, got '$MODE'"
[[ -x "$BLOCKREPL" ]] || die "$BLOCKREPL not found or not executable: run 'make build' first"
BLOCKREPL="$(cd "$(dirname "$BLOCKREPL")" && pwd)/$(basename "$BLOCKREPL")"

for port in "$NBD_PORT_A" "$NBD_PORT_B" "$REPL_PORT_A" "$REPL_PORT_B"; do
    [[ "$port" =~ ^[0-9]+$ ]] || die "ports must be numbers, got '$port'"
    # Is the port free? (SO_REUSEADDR, as servers use, so TIME_WAIT leftovers do not count.)
    if ! python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
PY
    then
        die "port 127.0.0.1:$port is already in use (see the environment variables at the top of $0)"
    fi
done

mkdir -p "$DATA_DIR/a" "$DATA_DIR/b"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
declare -A PID LOG ADMIN
for n in a b; do
    LOG[$n]="$DATA_DIR/$n/blockrepl.log"
    ADMIN[$n]="unix:$DATA_DIR/$n/admin.sock"
    : >"${LOG[$n]}"
done

start_node() { # node role nbd_port repl_port peer_port
    local n=$1
    # Each daemon runs in its own session (setsid), so a terminal Ctrl-C reaches only this script, which then
    # stops the daemons with SIGTERM and waits for them. Output goes to a file, not a pipe.
    setsid "$BLOCKREPL" serve --data-dir "$DATA_DIR/$n" --volume "$VOLUME" --size "$SIZE" --role "$2" \
        --nbd "127.0.0.1:$3" --admin "${ADMIN[$n]}" --listen "127.0.0.1:$4" --peer "http://127.0.0.1:$5" \
        --mode "$MODE" </dev/null >>"${LOG[$n]}" 2>&1 &
    PID[$n]=$!
}

TAIL=""
STOPPING=0
stop_all() {
    local n i
    for n in a b; do
        [[ -n "${PID[$n]:-}" ]] && kill -TERM "${PID[$n]}" 2>/dev/null || true
    done
    for n in a b; do
        [[ -n "${PID[$n]:-}" ]] || continue
        # 30 s to finish in-flight requests, ship what is queued and flush; then force.
        for ((i = 0; i < 300; i++)); do kill -0 "${PID[$n]}" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "${PID[$n]}" 2>/dev/null; then
            echo "run-local: node $n (pid ${PID[$n]}) did not stop within 30 s; killing it" >&2
            kill -KILL "${PID[$n]}" 2>/dev/null || true
        fi
        wait "${PID[$n]}" 2>/dev/null || true
    done
    if [[ -n "$TAIL" ]]; then
        sleep 0.3   # let the last log lines through
        # shellcheck disable=SC2086
        kill $TAIL 2>/dev/null || true
        TAIL=""
    fi
}
on_signal() {
    ((STOPPING)) && return
    STOPPING=1
    echo
    echo "run-local: stopping both nodes ..."
    stop_all
    echo "run-local: stopped"
    exit 0
}
trap on_signal INT TERM
trap stop_all EXIT   # any other way out (errors) must not leave a daemon running

wait_ready() { # node -> prints the ready line
    local n=$1 i line
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        if line=$(grep -m1 -E '^blockrepl: ready ' "${LOG[$n]}" 2>/dev/null); then
            echo "$line"; return 0
        fi
        if ! kill -0 "${PID[$n]}" 2>/dev/null; then
            cat "${LOG[$n]}" >&2
            die "node $n exited before it was ready (log: ${LOG[$n]})"
        fi
        sleep 0.1
    done
    die "node $n did not print its ready line within ${READY_TIMEOUT} s (log: ${LOG[$n]})"
}

echo "run-local: starting a $MODE pair: volume $VOLUME ($SIZE, sparse), data in $DATA_DIR/{a,b}"
start_node b secondary "$NBD_PORT_B" "$REPL_PORT_B" "$REPL_PORT_A"
wait_ready b >/dev/null
start_node a primary "$NBD_PORT_A" "$REPL_PORT_A" "$REPL_PORT_B"
wait_ready a >/dev/null

# Both logs, each line prefixed with its node. tail --pid ends with this script; the sed PIDs are what we stop.
tail -n +1 -s 0.2 -F --pid=$$ "${LOG[a]}" 2>/dev/null | sed -u 's/^/[a] /' &
TAIL="$!"
tail -n +1 -s 0.2 -F --pid=$$ "${LOG[b]}" 2>/dev/null | sed -u 's/^/[b] /' &
TAIL="$TAIL $!"

# Wait until the primary reports the pair connected (first start: a full sync that skips holes).
for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    state=$("$BLOCKREPL" status --admin "${ADMIN[a]}" --json 2>/dev/null | python3 -c 'import json,sys; v=json.load(sys.stdin)["volumes"][0]; print(v["role"], v["connection"])' 2>/dev/null || true)
    [[ "$state" == "primary connected" || "$state" == "secondary connected" ]] && break
    sleep 0.1
done

URI_A="nbd://127.0.0.1:$NBD_PORT_A/$VOLUME"
URI_B="nbd://127.0.0.1:$NBD_PORT_B/$VOLUME"
sleep 0.3
cat <<MSG

==============================================================================
blockrepl pair ($MODE mode), volume '$VOLUME' ($SIZE):
  node a  primary    NBD $URI_A   replication 127.0.0.1:$REPL_PORT_A   (pid ${PID[a]})
  node b  secondary  NBD $URI_B   replication 127.0.0.1:$REPL_PORT_B   (pid ${PID[b]}, read-only)

Connect a client to the primary:
  nbdinfo $URI_A
  qemu-io -f raw -c 'write -P 0xab 0 1M' $URI_A
  qemu-system-x86_64 ... -drive file=$URI_A,format=raw,if=virtio,cache=none
Status of each node:
  $BLOCKREPL status --admin ${ADMIN[a]}
  $BLOCKREPL status --admin ${ADMIN[b]}

Try a failover:
  kill -9 ${PID[a]}                                   # the primary dies
  $BLOCKREPL promote --admin ${ADMIN[b]}              # node b takes over
  qemu-io -f raw -c 'read -P 0xab 0 1M' $URI_B       # the data is there
Bring node a back: it finds node b's newer generation, steps down to secondary and is resynced from b:
  $BLOCKREPL serve --data-dir $DATA_DIR/a --volume $VOLUME --nbd 127.0.0.1:$NBD_PORT_A --admin ${ADMIN[a]} \\
      --listen 127.0.0.1:$REPL_PORT_A --peer http://127.0.0.1:$REPL_PORT_B --mode $MODE &
Planned switchover instead: 'demote' on a, then 'promote' on b.

Press Ctrl-C to stop both nodes.
==============================================================================
MSG

# Foreground until Ctrl-C (on_signal) or until both daemons have exited by themselves.
while kill -0 "${PID[a]}" 2>/dev/null || kill -0 "${PID[b]}" 2>/dev/null; do
    sleep 0.5
done
((STOPPING)) && exit 0
stop_all
trap - EXIT
echo "run-local: both nodes exited by themselves" >&2
exit 1
