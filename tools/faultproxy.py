#!/usr/bin/python3
"""faultproxy: a TCP proxy that injects network faults on command, for tests (tc netem is unavailable).

Put it between two blockrepl daemons (the replication link is gRPC over h2c on 127.0.0.1) and switch the
link between healthy, silently dead, reset and slow while the daemons run:

  faultproxy.py --listen 127.0.0.1:0 --target 127.0.0.1:PORT --control PATH [--max-buffer BYTES]
  faultproxy.py --control PATH --send 'COMMAND'

Proxy mode binds --listen (port 0 picks a free one), creates the unix control socket PATH, then prints
exactly one line on stdout, flushed:

  faultproxy: listening 127.0.0.1:PORT

Point the client daemon at that port. The proxy serves until SIGTERM or SIGINT, then closes every socket,
removes PATH and exits 0. The control socket is ready before that line is printed. Diagnostics go to
stderr only; --verbose logs every connection and command there (redirect it to a file or drain it: a
full stderr pipe would block the proxy).

Control: connect to PATH and send one-line commands; each gets one line back, `ok ...` or `error ...`.
The effect is in place when the answer is sent. Client mode (--send) sends one command, prints the
answer and exits 0 on `ok`, 1 on `error`, 2 if it cannot talk to the proxy.

  drop DIR     DIR is up (client to target), down (target to client) or both: every byte read in that
               direction is discarded (counted in stats) while connections stay open and the other
               direction flows: lost packets TCP cannot repair, e.g. the peer's acks vanishing. The
               stream is corrupt from then on; the endpoints notice (timeouts, framing errors).
               `pass` ends it.
  pass         forward normally (the default). Ends freeze, cut and drop; connections held by freeze
               resume, their bytes still in order (like a healed partition).
  freeze       a silent dead link: nothing is read or written on any connection, in either direction,
               and nothing is closed, so neither side sees data, EOF or a reset (their kernel buffers
               fill and writers eventually block). New connections are accepted but not connected to
               the target until `pass`.
  cut          reset (SO_LINGER 0, close) every current connection, both sides; until `pass`, new
               connections are accepted and reset at once. Answer: `ok cut reset=N`.
  delay MS     every chunk read from either side is forwarded MS milliseconds later (order kept per
               direction; `delay 0` turns it off). Buffering under delay is capped per direction
               (--max-buffer, default 64 MiB); over the cap the proxy stops reading from the sender.
  garbage N    the next new connection gets N random bytes sent to the target instead of the client's
               bytes; the proxy then half-closes towards the target, drains its answer (at most 5 s),
               and closes both sides. The client's bytes are discarded. `garbage 0` cancels.
  stats        `ok conns=N bytes_up=N bytes_down=N`: conns = connections open now; bytes_up = bytes
               written to the target (garbage included), bytes_down = bytes written to clients, both
               cumulative since start.

Other behaviour: a client's EOF is passed on as a half-close (shutdown SHUT_WR) after the delayed data
before it; a reset or any socket error on either side resets both sides of that connection; a target
that refuses the connection makes the proxy reset the client. A dead peer never stops the proxy.

Single-threaded (selectors); python3 standard library only.

Example (shell):
  python3 tools/faultproxy.py --listen 127.0.0.1:0 --target 127.0.0.1:7001 --control /tmp/fp.sock > fp.out &
  until [ -s fp.out ]; do sleep 0.05; done; read -r _ _ addr < fp.out   # addr=127.0.0.1:PORT
  python3 tools/faultproxy.py --control /tmp/fp.sock --send freeze
  python3 tools/faultproxy.py --control /tmp/fp.sock --send 'delay 200'
  python3 tools/faultproxy.py --control /tmp/fp.sock --send stats
"""

import argparse
import collections
import errno
import os
import selectors
import signal
import socket
import struct
import sys
import time

CHUNK = 65536
GARBAGE_DRAIN_SECONDS = 5.0
MAX_CONTROL_LINE = 4096
MAX_GARBAGE = 64 << 20
ENTRY_OVERHEAD = 128  # bytes charged per queued chunk against --max-buffer (deque entry, objects)

UP, DOWN = 0, 1  # UP: client -> target, DOWN: target -> client

verbose = False


def log(msg):
    if verbose:
        print(f"faultproxy: {msg}", file=sys.stderr, flush=True)


def parse_hostport(s):
    host, sep, port = s.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {s!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_hostport(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def set_linger0(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class Conn:
    def __init__(self, cid, client, garbage):
        self.id = cid
        self.client = client
        self.target = None
        # held: accepted while frozen, target not connected yet; connecting; open;
        # gsend / gdrain: garbage connection sending / draining the target's answer; closed
        self.state = "held"
        self.q = (collections.deque(), collections.deque())  # entries [due, memoryview | None(EOF)]
        self.buffered = [0, 0]
        self.eof_read = [False, False]  # source of direction d has sent EOF
        self.eof_sent = [False, False]  # destination of direction d has been shut down for writing
        self.garbage = garbage  # None, or bytes to send instead of the client's
        self.garbage_deadline = None

    def src(self, d):
        return self.client if d == UP else self.target

    def dst(self, d):
        return self.target if d == UP else self.client


class Proxy:
    def __init__(self, listen, target, control_path, max_buffer):
        self.target_addr = target
        self.control_path = control_path
        self.max_buffer = max_buffer
        self.mode = "pass"
        self.drop = [False, False]
        self.dropped = [0, 0]
        self.delay = 0.0
        self.garbage_pending = 0
        self.bytes = [0, 0]
        self.next_id = 1
        self.conns = set()
        self.controls = {}  # sock -> [inbuf bytearray, outbuf bytearray, close_after_write]
        self.registered = {}  # sock -> mask
        self.sel = selectors.DefaultSelector()
        self.stopping = False

        host, port = listen
        self.lsock = socket.socket(family_of(host), socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(128)
        self.lsock.setblocking(False)

        self.csock = self._bind_control(control_path)

        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)

    @staticmethod
    def _bind_control(path):
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                probe.close()
                raise SystemExit(f"faultproxy: control socket {path} is in use by a live process")
            except OSError:
                probe.close()
                os.unlink(path)  # stale
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(16)
        s.setblocking(False)
        return s

    # ---- selector bookkeeping -------------------------------------------------------------

    def set_interest(self, sock, mask, data):
        old = self.registered.get(sock, 0)
        if mask == old:
            return
        if old and mask:
            self.sel.modify(sock, mask, data)
        elif mask:
            self.sel.register(sock, mask, data)
        else:
            self.sel.unregister(sock)
        if mask:
            self.registered[sock] = mask
        else:
            self.registered.pop(sock, None)

    def drop_sock(self, sock, reset):
        if sock is None:
            return
        if sock in self.registered:
            try:
                self.sel.unregister(sock)
            except (KeyError, ValueError, OSError):
                pass
            del self.registered[sock]
        if reset:
            set_linger0(sock)
        try:
            sock.close()
        except OSError:
            pass

    def close_conn(self, c, reset, why=""):
        if c.state == "closed":
            return
        log(f"conn {c.id}: {'reset' if reset else 'closed'} {why}".rstrip())
        c.state = "closed"
        self.drop_sock(c.client, reset)
        self.drop_sock(c.target, reset)
        c.q[UP].clear()
        c.q[DOWN].clear()
        self.conns.discard(c)

    # ---- connections ----------------------------------------------------------------------

    def on_accept(self):
        for _ in range(64):
            try:
                sock, addr = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE, ECONNABORTED...: keep serving
                log(f"accept: {e}")
                return
            if self.mode == "cut":
                log(f"refusing {format_hostport(addr)} (cut)")
                set_linger0(sock)
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            garbage = None
            if self.garbage_pending:
                garbage = os.urandom(self.garbage_pending)
                self.garbage_pending = 0
            c = Conn(self.next_id, sock, garbage)
            self.next_id += 1
            self.conns.add(c)
            log(f"conn {c.id}: accepted from {format_hostport(addr)}{' (garbage)' if garbage else ''}")
            if self.mode != "freeze":
                self.start_connect(c)

    def start_connect(self, c):
        host, port = self.target_addr
        t = socket.socket(family_of(host), socket.SOCK_STREAM)
        t.setblocking(False)
        try:
            t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        c.target = t
        c.state = "connecting"
        err = t.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            self.close_conn(c, True, f"connect to target: {os.strerror(err)}")

    def on_connected(self, c):
        err = c.target.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.close_conn(c, True, f"connect to target: {os.strerror(err)}")
            return
        if c.garbage is not None:
            c.state = "gsend"
            c.q[UP].append([0.0, memoryview(c.garbage)])
            c.buffered[UP] = len(c.garbage) + ENTRY_OVERHEAD
        else:
            c.state = "open"
        log(f"conn {c.id}: connected to target")

    def on_read(self, c, d, now):
        src = c.src(d)
        try:
            data = src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.close_conn(c, True, f"{'client' if d == UP else 'target'} read: {e}")
            return
        if data and self.drop[d]:
            self.dropped[d] += len(data)
            return
        if c.state in ("gsend", "gdrain"):  # garbage connection: discard everything read
            if not data:
                c.eof_read[d] = True
                if d == DOWN:
                    self.close_conn(c, False, "garbage sent, target closed")
            return
        if not data:
            c.eof_read[d] = True
            c.q[d].append([now + self.delay, None])
            return
        c.q[d].append([now + self.delay, memoryview(data)])
        c.buffered[d] += len(data) + ENTRY_OVERHEAD

    def on_write(self, c, d, now):
        dst = c.dst(d)
        q = c.q[d]
        while q and q[0][0] <= now:
            data = q[0][1]
            if data is None:
                q.popleft()
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError as e:
                    self.close_conn(c, True, f"shutdown: {e}")
                    return
                c.eof_sent[d] = True
                if c.eof_sent[UP] and c.eof_sent[DOWN]:
                    self.close_conn(c, False, "both sides finished")
                return
            try:
                n = dst.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.close_conn(c, True, f"{'target' if d == UP else 'client'} write: {e}")
                return
            self.bytes[d] += n
            c.buffered[d] -= n
            if n < len(data):
                q[0][1] = data[n:]
                return
            q.popleft()
            c.buffered[d] -= ENTRY_OVERHEAD
        if c.state == "gsend" and not q:
            try:
                c.target.shutdown(socket.SHUT_WR)
            except OSError:
                self.close_conn(c, True, "garbage: target gone")
                return
            c.state = "gdrain"
            c.garbage_deadline = now + GARBAGE_DRAIN_SECONDS
            log(f"conn {c.id}: garbage sent ({len(c.garbage)} bytes)")

    def interest(self, c, now):
        """Desired selector masks for (client, target)."""
        R, W = selectors.EVENT_READ, selectors.EVENT_WRITE
        if self.mode == "freeze" or c.state in ("held", "closed"):
            return 0, 0
        if c.state == "connecting":
            return 0, W
        if c.state == "gsend":
            return (0 if c.eof_read[UP] else R), W
        if c.state == "gdrain":
            return (0 if c.eof_read[UP] else R), R
        masks = [0, 0]  # index UP = client socket, DOWN = target socket
        for d in (UP, DOWN):
            if not c.eof_read[d] and c.buffered[d] < self.max_buffer:
                masks[d] |= R  # the source socket of direction d has index d
            q = c.q[d]
            if q and q[0][0] <= now:
                masks[1 - d] |= W
        return masks[UP], masks[DOWN]

    def cut_all(self):
        n = 0
        for c in list(self.conns):
            self.close_conn(c, True, "cut")
            n += 1
        return n

    # ---- control --------------------------------------------------------------------------

    def command(self, line):
        parts = line.split()
        if not parts:
            return "error empty command"
        cmd, args = parts[0].lower(), parts[1:]

        def noargs():
            return None if not args else f"error {cmd} takes no argument"

        if cmd == "pass":
            if (e := noargs()):
                return e
            was = self.mode
            self.mode = "pass"
            self.drop = [False, False]
            if was == "freeze":
                for c in list(self.conns):
                    if c.state == "held":
                        self.start_connect(c)
            return "ok pass"
        if cmd == "drop":
            if len(args) != 1 or args[0] not in ("up", "down", "both"):
                return "error usage: drop up|down|both"
            self.drop = [args[0] in ("up", "both"), args[0] in ("down", "both")]
            return f"ok drop {args[0]} conns={len(self.conns)}"
        if cmd == "freeze":
            if (e := noargs()):
                return e
            self.mode = "freeze"
            return f"ok freeze conns={len(self.conns)}"
        if cmd == "cut":
            if (e := noargs()):
                return e
            self.mode = "cut"
            return f"ok cut reset={self.cut_all()}"
        if cmd == "delay":
            if len(args) != 1:
                return "error usage: delay MS"
            try:
                ms = float(args[0])
            except ValueError:
                return f"error bad delay {args[0]!r}"
            if not (0 <= ms <= 3_600_000):
                return f"error delay out of range: {args[0]}"
            self.delay = ms / 1000.0
            return f"ok delay {args[0]}"
        if cmd == "garbage":
            if len(args) != 1:
                return "error usage: garbage N"
            try:
                n = int(args[0])
            except ValueError:
                return f"error bad byte count {args[0]!r}"
            if not (0 <= n <= MAX_GARBAGE):
                return f"error garbage size out of range (0..{MAX_GARBAGE})"
            self.garbage_pending = n
            return f"ok garbage {n}"
        if cmd == "stats":
            if (e := noargs()):
                return e
            return (f"ok conns={len(self.conns)} bytes_up={self.bytes[UP]} bytes_down={self.bytes[DOWN]} "
                    f"dropped_up={self.dropped[UP]} dropped_down={self.dropped[DOWN]}")
        return f"error unknown command {cmd!r} (pass, freeze, cut, drop DIR, delay MS, garbage N, stats)"

    def on_control_accept(self):
        while True:
            try:
                s, _ = self.csock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log(f"control accept: {e}")
                return
            s.setblocking(False)
            self.controls[s] = [bytearray(), bytearray(), False]

    def drop_control(self, s):
        self.controls.pop(s, None)
        self.drop_sock(s, False)

    def on_control_read(self, s):
        st = self.controls[s]
        try:
            data = s.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop_control(s)
            return
        if not data:
            if st[0].strip():  # last command without a newline
                st[1] += (self.command(st[0].decode("utf-8", "replace").strip()) + "\n").encode()
                st[0].clear()
            st[2] = True
            if not st[1]:
                self.drop_control(s)
            return
        st[0] += data
        while b"\n" in st[0]:
            line, _, rest = bytes(st[0]).partition(b"\n")
            st[0] = bytearray(rest)
            text = line.decode("utf-8", "replace").strip()
            if text:
                reply = self.command(text)
                log(f"control: {text} -> {reply}")
                st[1] += (reply + "\n").encode()
        if len(st[0]) > MAX_CONTROL_LINE:
            st[1] += b"error command line too long\n"
            st[0].clear()
            st[2] = True

    def on_control_write(self, s):
        st = self.controls[s]
        try:
            n = s.send(st[1])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop_control(s)
            return
        del st[1][:n]
        if not st[1] and st[2]:
            self.drop_control(s)

    # ---- main loop ------------------------------------------------------------------------

    def stop(self, *_):
        self.stopping = True
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    def run(self):
        R, W = selectors.EVENT_READ, selectors.EVENT_WRITE
        self.set_interest(self.lsock, R, ("listen",))
        self.set_interest(self.csock, R, ("control-listen",))
        self.set_interest(self.wake_r, R, ("wake",))
        while not self.stopping:
            now = time.monotonic()
            timeout = 1.0
            for c in list(self.conns):
                if c.state == "gdrain" and now >= c.garbage_deadline:
                    self.close_conn(c, False, "garbage drain timeout")
                    continue
                cm, tm = self.interest(c, now)
                self.set_interest(c.client, cm, ("conn", c, "client"))
                if c.target is not None:
                    self.set_interest(c.target, tm, ("conn", c, "target"))
                if self.mode != "freeze":
                    for d in (UP, DOWN):
                        if c.q[d] and c.q[d][0][0] > now:
                            timeout = min(timeout, c.q[d][0][0] - now)
                    if c.state == "gdrain":
                        timeout = min(timeout, max(0.0, c.garbage_deadline - now))
            for s, st in self.controls.items():
                self.set_interest(s, (R if not st[2] else 0) | (W if st[1] else 0), ("control", s))
            try:
                events = self.sel.select(max(timeout, 0.0))
            except InterruptedError:
                continue
            now = time.monotonic()
            for key, mask in events:
                kind = key.data[0]
                if kind == "listen":
                    self.on_accept()
                elif kind == "control-listen":
                    self.on_control_accept()
                elif kind == "wake":
                    try:
                        self.wake_r.recv(4096)
                    except OSError:
                        pass
                elif kind == "control":
                    s = key.data[1]
                    if s in self.controls and mask & R:
                        self.on_control_read(s)
                    if s in self.controls and mask & W:
                        self.on_control_write(s)
                elif kind == "conn":
                    self.on_conn_event(key.data[1], key.data[2], mask, now)
        self.shutdown()

    def on_conn_event(self, c, side, mask, now):
        R, W = selectors.EVENT_READ, selectors.EVENT_WRITE
        if c.state == "closed" or self.mode == "freeze":
            return  # stale event (closed, or frozen by a command processed in this same batch)
        if side == "target" and c.state == "connecting":
            self.on_connected(c)
            return
        if side == "client":
            if mask & W and c.state == "open":
                self.on_write(c, DOWN, now)
            if mask & R and c.state != "closed":
                self.on_read(c, UP, now)
        else:
            if mask & W and c.state in ("open", "gsend"):
                self.on_write(c, UP, now)
            if mask & R and c.state != "closed":
                self.on_read(c, DOWN, now)

    def shutdown(self):
        log("stopping")
        for c in list(self.conns):
            self.close_conn(c, False, "proxy stopping")
        for s in list(self.controls):
            self.drop_control(s)
        for s in (self.lsock, self.csock, self.wake_r, self.wake_w):
            self.drop_sock(s, False)
        try:
            os.unlink(self.control_path)
        except OSError:
            pass
        self.sel.close()


def client_send(path, command, timeout):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(command.strip().encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        print(f"faultproxy: cannot talk to {path}: {e}", file=sys.stderr)
        return 2
    finally:
        s.close()
    answer = buf.decode("utf-8", "replace").split("\n", 1)[0].strip()
    if not answer:
        print(f"faultproxy: no answer from {path}", file=sys.stderr)
        return 2
    print(answer, flush=True)
    return 0 if answer.startswith("ok") else 1


def main():
    global verbose
    ap = argparse.ArgumentParser(
        description="TCP proxy with fault injection (freeze, cut, drop, delay, garbage) for tests.",
        epilog="See the header of this file for the control commands.")
    ap.add_argument("--listen", help="HOST:PORT to listen on (port 0: pick a free one)")
    ap.add_argument("--target", help="HOST:PORT to forward to")
    ap.add_argument("--control", required=True, help="unix socket path for control commands")
    ap.add_argument("--send", metavar="COMMAND", help="client mode: send one command to a running proxy")
    ap.add_argument("--timeout", type=float, default=10.0, help="client mode timeout in seconds")
    ap.add_argument("--max-buffer", type=int, default=64 << 20,
                    help="bytes buffered per direction per connection before reading stops (default 64 MiB)")
    ap.add_argument("--verbose", "-v", action="store_true", help="log connection events to stderr")
    a = ap.parse_args()

    if a.send is not None:
        if a.listen or a.target:
            ap.error("--send does not take --listen/--target")
        return client_send(a.control, a.send, a.timeout)

    if not a.listen or not a.target:
        ap.error("proxy mode needs --listen and --target (or use --send)")
    verbose = a.verbose
    try:
        listen = parse_hostport(a.listen)
        target = parse_hostport(a.target)
    except ValueError as e:
        ap.error(str(e))
    if a.max_buffer < CHUNK:
        ap.error(f"--max-buffer must be at least {CHUNK}")

    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    proxy = Proxy(listen, target, a.control, a.max_buffer)
    signal.signal(signal.SIGTERM, proxy.stop)
    signal.signal(signal.SIGINT, proxy.stop)
    print(f"faultproxy: listening {format_hostport(proxy.lsock.getsockname())}", flush=True)
    proxy.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
