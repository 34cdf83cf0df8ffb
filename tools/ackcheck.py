#!/usr/bin/python3
"""ackcheck: acknowledged-write checker for an NBD export (blockrepl, or any NBD server).

  ackcheck.py write  --uri NBD_URI --state FILE [--blocks N] [--block-size 4096] [--depth 32]
                     [--seconds S | --writes W] [--seed K] [--flush-every M] [--fua-ratio R]
  ackcheck.py verify --uri NBD_URI --state FILE [--mode durable|acked|prefix] [--all]

The writer picks random blocks, gives each write the block's next version, and fills the block with a
stamp (layout below). It keeps up to --depth writes in flight with libnbd's aio calls and never has two
writes to the same block in flight (NBD does not order concurrent writes). What it learns goes into the
append-only state file, one line per event, so that the verifier (possibly after a kill -9 of the server,
a failover, a restart) knows what the export must hold:

  R <run-id-hex> <blocks> <block-size>   a writer run starts (state file header for that run)
  S <block> <version>                    write about to be sent (written to the file BEFORE it is sent)
  A <block> <version>                    plain write acknowledged
  D <block> <version>                    FUA write acknowledged, hence durable
  FS <id>                                flush sent: covers every A line above it in this run
  FD <id>                                that flush completed: those writes are durable
  E <sent> <acked> <durable> <reason>    the run ended

NBD semantics: a FLUSH reply makes durable every write whose reply arrived before the flush was sent;
a write with FUA is durable when acknowledged. Writes acknowledged after a flush was sent are not
covered by it, and a new run (new connection) never inherits an older run's unflushed writes.
Lines are written with os.write before the event they describe may matter (S before submitting, the
others as soon as they happen, in event order); the file is fdatasync'ed after each D and FD line.
A truncated last line (the checker itself killed) is ignored.

Stamp, little-endian, one per block of --block-size bytes (>= 64):
  0  8  magic b"ACKCHK01"
  8  8  block number
  16 8  version (>= 1)
  24 8  writer run id
  32 4  block size
  36 .. payload: SHAKE-128 of (b"ackcheck" + block u64 + version u64), block size - 52 bytes
  -16   first 16 bytes of SHA-256 over bytes [0, block size - 16)

Verify reads every block the state mentions (--all: every block of the area) and classifies it:
  corrupt: bad magic, checksum, block number, block size, payload, unknown run id, a version that was
           never sent (greater than the last S line for that block), or non-zero bytes that are not a stamp;
  lost:    the block holds a version (all zeroes = version 0) below the required one: the last durable
           version (--mode durable), the last acknowledged one (--mode acked and prefix).
The result line is `ackcheck: N blocks checked, M lost writes, K corrupt` where M counts blocks whose
newest required write is missing. Exit 1 if M>0 or K>0 (durable, acked) or K>0 (prefix), else 0.
--mode prefix (async replication) also checks the write order: a block may miss acknowledged writes, but
if the export holds a write, it must hold every write acknowledged before that one was sent in the same
writer run; otherwise the blocks that break the order are reported ("out of order") and the exit is 1.
Exit 2 on usage errors or when the server cannot be reached.
The writer exits 0 when the server goes away (expected in failover runs) and prints
`ackcheck: run RUN: W writes sent, A acknowledged, D durable, F flushes, ended: REASON`;
it exits 1 if the server answers a command with an error while the connection is alive.
"""

import argparse
import hashlib
import os
import random
import struct
import sys
import time

import nbd

MAGIC = b"ACKCHK01"
HEADER = struct.Struct("<8sQQ8sI")  # magic, block, version, run id, block size
CHECKSUM_LEN = 16
EXIT_USAGE = 2


def payload(block, version, length):
    return hashlib.shake_128(b"ackcheck" + struct.pack("<QQ", block, version)).digest(length)


def make_stamp(block, version, run_id, block_size):
    head = HEADER.pack(MAGIC, block, version, run_id, block_size)
    body = head + payload(block, version, block_size - HEADER.size - CHECKSUM_LEN)
    return body + hashlib.sha256(body).digest()[:CHECKSUM_LEN]


def parse_stamp(data, block_size):
    """Returns (block, version, run_id) of a valid stamp, 0 for an all-zero block, or an error string."""
    if data.count(0) == len(data):
        return 0
    if data[:8] != MAGIC:
        return "no stamp (bad magic)"
    body, checksum = data[:-CHECKSUM_LEN], data[-CHECKSUM_LEN:]
    if hashlib.sha256(body).digest()[:CHECKSUM_LEN] != checksum:
        return "checksum mismatch"
    _, block, version, run_id, size = HEADER.unpack_from(data)
    if size != block_size:
        return "block size %d in stamp, expected %d" % (size, block_size)
    if version < 1:
        return "version 0 in stamp"
    if body[HEADER.size:] != payload(block, version, block_size - HEADER.size - CHECKSUM_LEN):
        return "payload mismatch"
    return (block, version, run_id)


def fail_usage(message):
    print("ackcheck: " + message, file=sys.stderr)
    sys.exit(EXIT_USAGE)


class State:
    """What the state file says: per block [last sent, last acked, last durable] versions (0 = none)."""

    def __init__(self):
        self.blocks = {}
        self.runs = set()
        self.area = None  # (blocks, block size) from the R lines
        self.sent = self.acked = self.durable = 0
        self._pending = []  # acknowledged, not yet durable, in this run: (block, version)
        self._base = 0  # index (over the run's A lines) of _pending[0]
        self._flush_marks = {}
        self.events = 0  # index of the current line, for the order checks of --mode prefix
        self.send_index = {}  # (block, version) -> index of its S line
        self.ack_history = {}  # block -> [(index of the A/D line, version)], in file order
        self.run_starts = []  # index of each R line

    def _entry(self, block):
        e = self.blocks.get(block)
        if e is None:
            e = self.blocks[block] = [0, 0, 0]
        return e

    def _make_durable(self, block, version):
        e = self._entry(block)
        if version > e[2]:
            e[2] = version
        self.durable += 1

    def acked_before(self, block, index):
        """The newest version of block acknowledged in the same writer run as event index, before it (0: none)."""
        start = max((r for r in self.run_starts if r <= index), default=0)
        best = 0
        for at, version in self.ack_history.get(block, ()):
            if at >= index:
                break
            if at > start:
                best = max(best, version)
        return best

    def apply(self, fields):
        kind = fields[0]
        self.events += 1
        if kind in ("A", "D"):
            self.ack_history.setdefault(int(fields[1]), []).append((self.events, int(fields[2])))
        if kind == "S":
            e = self._entry(int(fields[1]))
            e[0] = max(e[0], int(fields[2]))
            self.sent += 1
            self.send_index[(int(fields[1]), int(fields[2]))] = self.events
        elif kind == "A":
            block, version = int(fields[1]), int(fields[2])
            e = self._entry(block)
            e[1] = max(e[1], version)
            self.acked += 1
            self._pending.append((block, version))
        elif kind == "D":
            block, version = int(fields[1]), int(fields[2])
            e = self._entry(block)
            e[1] = max(e[1], version)
            self.acked += 1
            self._make_durable(block, version)
        elif kind == "FS":
            self._flush_marks[fields[1]] = self._base + len(self._pending)
        elif kind == "FD":
            mark = self._flush_marks.pop(fields[1])
            if mark > self._base:
                cut = mark - self._base
                for block, version in self._pending[:cut]:
                    self._make_durable(block, version)
                del self._pending[:cut]
                self._base = mark
        elif kind == "R":
            self.run_starts.append(self.events)
            run_id = bytes.fromhex(fields[1])
            area = (int(fields[2]), int(fields[3]))
            if self.area is not None and self.area != area:
                raise ValueError("run %s uses %d blocks of %d bytes, earlier runs %d of %d"
                                 % (fields[1], area[0], area[1], self.area[0], self.area[1]))
            self.area = area
            self.runs.add(run_id)
            self._pending = []
            self._base = 0
            self._flush_marks = {}
        elif kind == "E":
            pass
        else:
            raise ValueError("unknown record " + kind)

    @classmethod
    def load(cls, path):
        state = cls()
        if not os.path.exists(path):
            return state
        with open(path, "r", encoding="ascii") as f:
            lines = f.read().split("\n")
        # The last element is "" after a complete last line, or a fragment if the checker was killed mid-line.
        for number, line in enumerate(lines[:-1], 1):
            if not line:
                continue
            try:
                state.apply(line.split())
            except (ValueError, IndexError, KeyError) as e:
                fail_usage("%s:%d: bad state line %r: %s" % (path, number, line, e))
        return state


class Log:
    """The append-only state file. Lines go out with os.write, whole, in event order."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines = []

    def add(self, line):
        self.lines.append(line)

    def write(self, sync=False):
        if self.lines:
            data = ("\n".join(self.lines) + "\n").encode("ascii")
            self.lines = []
            while data:
                data = data[os.write(self.fd, data):]
        if sync:
            os.fdatasync(self.fd)

    def close(self):
        self.write(sync=True)
        os.close(self.fd)


def connect(uri):
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
    except nbd.Error as e:
        print("ackcheck: cannot connect to %s: %s" % (uri, e), file=sys.stderr)
        sys.exit(EXIT_USAGE)
    return h


def cmd_write(args):
    state = State.load(args.state)
    h = connect(args.uri)
    size = h.get_size()
    bs = args.block_size
    if bs < 64 or bs % 8:
        fail_usage("--block-size must be a multiple of 8, at least 64")
    blocks = args.blocks
    if blocks is None:
        blocks = state.area[0] if state.area else size // bs
    if state.area is not None and state.area != (blocks, bs):
        fail_usage("state file uses %d blocks of %d bytes; this run asked for %d of %d"
                   % (state.area[0], state.area[1], blocks, bs))
    if blocks < 1 or blocks * bs > size:
        fail_usage("%d blocks of %d bytes do not fit the export (%d bytes)" % (blocks, bs, size))
    depth = max(1, min(args.depth, blocks))
    if h.can_fua() is False and args.fua_ratio > 0:
        fail_usage("the server does not support FUA")

    rng = random.Random(args.seed)
    run_id = os.urandom(8)
    run_hex = run_id.hex()
    log = Log(args.state)
    log.add("R %s %d %d" % (run_hex, blocks, bs))
    log.write(sync=True)
    # Versions continue from the last one ever *sent*: a write sent but never acknowledged may still have
    # landed, so its version number must not be reused for different content.
    last_sent = {b: e[0] for b, e in state.blocks.items()}
    del state

    busy = set()  # blocks with a write in flight
    counts = {"sent": 0, "acked": 0, "durable": 0, "flushes": 0}
    errors = []  # (what, errno) reported by callbacks
    pending_durable = []  # plain writes acknowledged, not yet covered by a sent flush
    flushes = {}  # flush id -> list of (block, version) it covers
    next_flush = [0]
    buffers = {}  # block -> nbd.Buffer kept alive until completion

    def write_done(block, version, fua, err):
        busy.discard(block)
        buffers.pop(block, None)
        if err.value != 0:
            errors.append(("write block %d version %d" % (block, version), err.value))
            return 1
        counts["acked"] += 1
        if fua:
            counts["durable"] += 1
            log.add("D %d %d" % (block, version))
            log.write(sync=True)
        else:
            pending_durable.append((block, version))
            log.add("A %d %d" % (block, version))
        return 1

    def flush_done(fid, err):
        covered = flushes.pop(fid)
        if err.value != 0:
            errors.append(("flush %d" % fid, err.value))
            return 1
        counts["durable"] += len(covered)
        log.add("FD %d" % fid)
        log.write(sync=True)
        return 1

    def send_flush():
        fid = next_flush[0]
        next_flush[0] += 1
        flushes[fid] = pending_durable[:]
        pending_durable.clear()
        log.add("FS %d" % fid)
        log.write()
        h.aio_flush(lambda err, fid=fid: flush_done(fid, err))
        counts["flushes"] += 1

    deadline = time.monotonic() + args.seconds if args.seconds is not None else None
    reason = "done"
    print("ackcheck: writer connected run=%s blocks=%d block-size=%d depth=%d" % (run_hex, blocks, bs, depth),
          flush=True)
    try:
        while not errors:
            more = (counts["sent"] < args.writes) if args.writes is not None else (time.monotonic() < deadline)
            if not more:
                break
            batch = []
            while h.aio_in_flight() + len(batch) < depth and len(busy) < blocks:
                if args.writes is not None and counts["sent"] + len(batch) >= args.writes:
                    break
                block = rng.randrange(blocks)
                while block in busy:
                    block = rng.randrange(blocks)
                version = last_sent.get(block, 0) + 1
                last_sent[block] = version
                busy.add(block)
                fua = args.fua_ratio > 0 and rng.random() < args.fua_ratio
                batch.append((block, version, fua))
                log.add("S %d %d" % (block, version))
            log.write()  # every S line reaches the file before its write is sent
            for block, version, fua in batch:
                buf = nbd.Buffer.from_bytearray(bytearray(make_stamp(block, version, run_id, bs)))
                buffers[block] = buf
                h.aio_pwrite(buf, block * bs,
                             lambda err, b=block, v=version, f=fua: write_done(b, v, f, err),
                             nbd.CMD_FLAG_FUA if fua else 0)
                counts["sent"] += 1
                if args.flush_every and counts["sent"] % args.flush_every == 0:
                    send_flush()
            if h.aio_in_flight() > 0:
                h.poll(-1)
            log.write()
        # Normal end (or a server error reply): drain, then one last flush so every acknowledged write is durable.
        while h.aio_in_flight() > 0:
            h.poll(-1)
        log.write()
        if not errors:
            send_flush()
            while h.aio_in_flight() > 0:
                h.poll(-1)
        if errors:
            what, errno_value = errors[0]
            reason = "server error on %s: %s" % (what, os.strerror(errno_value))
        else:
            h.shutdown()
    except nbd.Error as e:
        reason = "error: %s" % e
    # A dead connection (the server was killed, or failed over) is expected; anything else is a failure.
    exit_code = 0
    if reason != "done":
        if h.aio_is_dead() or h.aio_is_closed():
            reason = "connection lost: %s" % reason[len("error: "):] if reason.startswith("error: ") else \
                "connection lost (%s)" % reason
        else:
            exit_code = 1
    log.add("E %d %d %d %s" % (counts["sent"], counts["acked"], counts["durable"], reason.split(":")[0].replace(" ", "_")))
    log.close()
    print("ackcheck: run %s: %d writes sent, %d acknowledged, %d durable, %d flushes, ended: %s"
          % (run_hex, counts["sent"], counts["acked"], counts["durable"], counts["flushes"], reason), flush=True)
    return exit_code


def cmd_verify(args):
    state = State.load(args.state)
    if state.area is None:
        fail_usage("state file %s holds no writer run" % args.state)
    blocks, bs = state.area
    h = connect(args.uri)
    if blocks * bs > h.get_size():
        fail_usage("state covers %d blocks of %d bytes, the export has only %d bytes" % (blocks, bs, h.get_size()))
    required_index = 2 if args.mode == "durable" else 1
    to_check = range(blocks) if args.all else sorted(state.blocks)
    checked = lost = corrupt = missing_acked = 0
    reported = 0
    present = {}  # block -> version found on the export

    def report(message):
        nonlocal reported
        reported += 1
        if reported <= 20:
            print("ackcheck: " + message, file=sys.stderr)

    def check(block, data):
        nonlocal checked, lost, corrupt, missing_acked
        checked += 1
        sent, acked, durable = state.blocks.get(block, (0, 0, 0))
        required = (sent, acked, durable)[required_index]
        parsed = parse_stamp(data, bs)
        if isinstance(parsed, str):
            corrupt += 1
            report("block %d corrupt: %s" % (block, parsed))
            return
        if parsed == 0:
            version = 0
        else:
            stamp_block, version, run_id = parsed
            if stamp_block != block:
                corrupt += 1
                report("block %d corrupt: holds the stamp of block %d version %d" % (block, stamp_block, version))
                return
            if run_id not in state.runs:
                corrupt += 1
                report("block %d corrupt: version %d from unknown run %s" % (block, version, run_id.hex()))
                return
            if version > sent:
                corrupt += 1
                report("block %d corrupt: version %d was never sent (last sent %d)" % (block, version, sent))
                return
        present[block] = version
        if version < acked:
            missing_acked += 1
        if version < required:
            lost += 1
            if args.mode != "prefix":
                report("block %d lost: holds version %d, %s version is %d (acked %d, durable %d, sent %d)"
                       % (block, version, "durable" if required_index == 2 else "acknowledged", required,
                          acked, durable, sent))

    # Read runs of adjacent blocks, up to 1 MiB per request, several requests in flight.
    chunk = max(1, (1 << 20) // bs)
    requests = []
    i = 0
    to_check = list(to_check)
    while i < len(to_check):
        j = i + 1
        while j < len(to_check) and j - i < chunk and to_check[j] == to_check[j - 1] + 1:
            j += 1
        requests.append((to_check[i], j - i))
        i = j
    in_flight = {}
    queue = list(reversed(requests))
    try:
        while queue or in_flight:
            while queue and len(in_flight) < 16:
                first, count = queue.pop()
                buf = nbd.Buffer(count * bs)
                cookie = h.aio_pread(buf, first * bs)
                in_flight[cookie] = (first, count, buf)
            h.poll(-1)
            for cookie in [c for c in in_flight if h.aio_command_completed(c)]:
                first, count, buf = in_flight.pop(cookie)
                data = buf.to_bytearray()
                for k in range(count):
                    check(first + k, bytes(data[k * bs:(k + 1) * bs]))
        h.shutdown()
    except nbd.Error as e:
        print("ackcheck: read failed: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    if reported > 20:
        print("ackcheck: ... %d more problems not shown" % (reported - 20), file=sys.stderr)
    print("ackcheck: state: %d runs, %d writes sent, %d acknowledged, %d durable; mode %s"
          % (len(state.runs), state.sent, state.acked, state.durable, args.mode), file=sys.stderr)
    disorder = 0
    if args.mode == "prefix":
        print("ackcheck: prefix mode: %d blocks miss their last acknowledged write (not a failure)"
              % missing_acked, file=sys.stderr)
        # A write-ordered prefix: if the export holds a write, it holds every write that was acknowledged
        # before that one was sent in the same writer run (the client had seen it complete, so any server
        # must have ordered it first). The newest-sent write present decides the cut; every block must be at
        # least at the version acknowledged before it in that run. Earlier runs are not held against it: an
        # async failover may legitimately have dropped their last acknowledged writes, and the run after it
        # started from what the promoted node had (which that failover's own verify checked).
        cut, cut_write = 0, None
        for block, version in present.items():
            at = state.send_index.get((block, version), 0) if version > 0 else 0
            if at > cut:
                cut, cut_write = at, (block, version)
        for block in sorted(state.blocks):
            need = state.acked_before(block, cut)
            if present.get(block, 0) < need:
                disorder += 1
                report("block %d out of order: holds version %d, but version %d was acknowledged before block %d "
                       "version %d was sent, and that write is present" % (block, present.get(block, 0), need,
                                                                          cut_write[0], cut_write[1]))
        print("ackcheck: prefix mode: %d blocks break the write order" % disorder, file=sys.stderr)
    print("ackcheck: %d blocks checked, %d lost writes, %d corrupt" % (checked, lost, corrupt), flush=True)
    if corrupt > 0 or disorder > 0 or (lost > 0 and args.mode != "prefix"):
        return 1
    return 0


def main():
    p = argparse.ArgumentParser(prog="ackcheck.py", description="acknowledged-write checker for NBD exports")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write stamped blocks and record what was acknowledged and made durable")
    w.add_argument("--uri", required=True)
    w.add_argument("--state", required=True)
    w.add_argument("--blocks", type=int, help="blocks in the test area (default: export size / block size)")
    w.add_argument("--block-size", type=int, default=4096)
    w.add_argument("--depth", type=int, default=32)
    g = w.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=float)
    g.add_argument("--writes", type=int)
    w.add_argument("--seed", type=int, default=None)
    w.add_argument("--flush-every", type=int, default=0, help="send a flush after every M writes (0: never)")
    w.add_argument("--fua-ratio", type=float, default=0.0)
    v = sub.add_parser("verify", help="check the export against the state file")
    v.add_argument("--uri", required=True)
    v.add_argument("--state", required=True)
    v.add_argument("--mode", choices=["durable", "acked", "prefix"], default="durable")
    v.add_argument("--all", action="store_true", help="read every block of the area, not only those written")
    args = p.parse_args()
    if args.command == "write":
        if args.seconds is None and args.writes is None:
            args.seconds = 10.0
        if not 0.0 <= args.fua_ratio <= 1.0:
            fail_usage("--fua-ratio must be between 0 and 1")
        sys.exit(cmd_write(args))
    sys.exit(cmd_verify(args))


if __name__ == "__main__":
    main()
