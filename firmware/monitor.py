"""Layer 1: the zone monitor. Serves the control port ``org.sez.ctl`` (DESIGN §6).

One reactor (firmware.reactor) owns the port. Bytes go through :class:`~firmware.abi.wire.FrameDecoder`;
every frame becomes a response, every fault an error frame with ``id: null``; nothing that
crosses the channel can raise out of the loop. Writes are non-blocking and queued, so a host
that does not read never stalls the zone.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import time
from collections import deque

import cbor2

from . import FIRMWARE_VERSION
from .abi import evidence as claims
from .abi import wire
from .abi.errors import BadArgs, Code, ProtocolError, UnknownOp, ZoneError, error_for_code
from .hardware import Hardware
from .reactor import Reactor, Timer, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

CONTROL_PORT = "org.sez.ctl"
#: A frame whose sender falls silent this long before finishing it is dropped.
TRUNCATED_AFTER = 0.5
#: Re-poll a port whose host end is closed this often.
HOST_POLL = 0.05
#: Responses queued for a host that does not read, before the oldest unsent ones are dropped.
MAX_QUEUED = 64 * 1024 * 1024
READ_BURST = 1 << 20
KEEPER_SOCKET = "/run/sez/keeper.sock"
#: Seconds between attempts to reach the key keeper, and the most a keeper call may take.
KEEPER_RETRY = 0.05
KEEPER_TIMEOUT = 30.0
_PAGE = 4096
VIRTIO_PORTS = "/sys/class/virtio-ports"
INPUT_CLASS = "/sys/class/input"
_INPUT_EVENT = struct.Struct("llHHi")  # struct input_event on x86-64
_EV_KEY, _KEY_POWER = 1, 116
_MAX_ID = (1 << 64) - 1


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def find_port(name: str, root: str = VIRTIO_PORTS) -> str:
    """The /dev node of the virtio-serial port called ``name``."""
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        entries = []
    for entry in entries:
        try:
            if _read(f"{root}/{entry}/name").strip() == name.encode():
                return f"/dev/{entry}"
        except OSError:
            continue
    raise FileNotFoundError(f"no virtio-serial port named {name}")


def find_power_buttons(root: str = INPUT_CLASS) -> list[str]:
    """The evdev nodes of the ACPI power button(s) (QMP system_powerdown presses them)."""
    found = []
    try:
        entries = sorted(e for e in os.listdir(root) if e.startswith("event"))
    except OSError:
        entries = []
    for entry in entries:
        try:
            if _read(f"{root}/{entry}/device/name").strip() == b"Power Button":
                found.append(f"/dev/input/{entry}")
        except OSError:
            continue
    return found


class Port:
    """Non-blocking reader and writer over one virtio-serial port."""

    def __init__(self, loop: Reactor, fd: int, path: str, on_data: Callable[[bytes], None],
                 on_host_gone: Callable[[], None]) -> None:
        self.path = path
        self._on_data = on_data
        self._on_host_gone = on_host_gone
        self._fd = fd
        os.set_blocking(fd, False)
        self._loop = loop
        self._out: deque[list[memoryview]] = deque()  # frames not yet fully written
        self._queued = 0
        self._head_started = False  # the first queued frame is partly written
        self.host_present = True
        self.dropped_frames = 0
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        # virtio-serial hands out at most one page-sized buffer per read. A full page means
        # more is likely queued: keep reading (up to READ_BURST bytes) so bulk data costs one
        # wake-up, not one per page; a short read is the end of what has arrived.
        total = 0
        while total < READ_BURST:
            try:
                data = os.read(self._fd, READ_BURST)
            except BlockingIOError:
                return
            except OSError as exc:
                log(f"read {self.path}: {exc}")
                data = b""
            if not data:
                self._host_closed()
                return
            self.host_present = True
            self._on_data(data)
            if len(data) < _PAGE:
                return
            total += len(data)

    def _host_closed(self) -> None:
        # The host end is closed: poll again later instead of spinning on EOF.
        self._loop.remove_reader(self._fd)
        self._loop.call_later(HOST_POLL, self._loop.add_reader, self._fd, self._readable)
        if self.host_present:
            self.host_present = False
            self._on_host_gone()

    def send(self, header: bytes, body: bytes) -> None:
        """Queue one frame (header and body written with one writev, the body not copied)."""
        frame = [memoryview(header), memoryview(body)]
        size = len(header) + len(body)
        if not self._out:  # nothing queued: try to write it at once
            try:
                n = os.writev(self._fd, frame)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._write_failed(exc)
                return
            if n == size:
                return
            _consume(frame, n)
            self._head_started = n > 0
            self._out.append(frame)
            self._queued += size - n
            self._loop.add_writer(self._fd, self._flush)
            return
        if self._queued + size > MAX_QUEUED:
            self.drop_unsent()
        self._out.append(frame)
        self._queued += size

    def drop_unsent(self) -> None:
        """Forget queued frames that have not started to go out (a new host session)."""
        keep = 1 if self._head_started else 0
        while len(self._out) > keep:
            self._queued -= sum(len(part) for part in self._out.pop())
            self.dropped_frames += 1

    def _write_failed(self, exc: OSError) -> None:
        """A write error other than "would block": the frame cannot go out; drop it."""
        log(f"write {self.path}: {exc}; dropping a frame")
        self.dropped_frames += 1

    def _flush(self) -> None:
        out = self._out
        while out:
            frame = out[0]
            try:
                n = os.writev(self._fd, frame)
            except BlockingIOError:
                return
            except OSError as exc:
                self._queued -= sum(len(part) for part in out.popleft())
                self._head_started = False
                self._write_failed(exc)
                continue
            self._queued -= n
            if _consume(frame, n):
                out.popleft()
                self._head_started = False
            else:
                self._head_started = True
        self._loop.remove_writer(self._fd)


def _consume(parts: list[memoryview], n: int) -> bool:
    """Drop the first ``n`` bytes of ``parts`` (in place); True if nothing is left."""
    while parts and n >= len(parts[0]):
        n -= len(parts.pop(0))
    if n:
        parts[0] = parts[0][n:]
    return not parts


class Deferred:
    """A result that arrives later (from the key keeper): resolved once, then callbacks run."""

    __slots__ = ("_callbacks", "done", "value", "error")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Deferred], None]] = []
        self.done = False
        self.value: Any = None
        self.error: ZoneError | None = None

    def add(self, callback: Callable[["Deferred"], None]) -> None:
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def resolve(self, value: Any = None, error: ZoneError | None = None) -> None:
        if self.done:
            return
        self.done, self.value, self.error = True, value, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def then(self, transform: Callable[[Any], Any]) -> "Deferred":
        """A Deferred of ``transform(value)``; errors pass through."""
        out = Deferred()

        def chain(d: Deferred) -> None:
            if d.error is not None:
                out.resolve(error=d.error)
                return
            try:
                out.resolve(transform(d.value))
            except ZoneError as exc:
                out.resolve(error=exc)

        self.add(chain)
        return out


class KeeperLink:
    """The monitor's connection to the key keeper (firmware.keeper), in the reactor.

    Calls made before the keeper listens (it derives the keys while the monitor already
    serves) wait for it, for at most KEEPER_TIMEOUT seconds.
    """

    def __init__(self, loop: Reactor, path: str) -> None:
        self.loop = loop
        self.path = path
        self.sock: socket.socket | None = None
        self._pending: dict[int, Deferred] = {}
        self._queue: list[bytes] = []
        self._next_id = 0
        self._connect()

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            self.loop.call_later(KEEPER_RETRY, self._connect)
            return
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._readable)
        queue, self._queue = self._queue, []
        for message in queue:
            self._send(message)

    def call(self, op: str, args: dict[str, Any]) -> Deferred:
        self._next_id += 1
        request_id = self._next_id
        deferred = Deferred()
        self._pending[request_id] = deferred
        self.loop.call_later(KEEPER_TIMEOUT, self._expire, request_id)
        message = cbor2.dumps({"id": request_id, "op": op, "args": args})
        if self.sock is None:
            self._queue.append(message)
        else:
            self._send(message)
        return deferred

    def _send(self, message: bytes) -> None:
        try:
            self.sock.send(message)  # type: ignore[union-attr]
        except OSError as exc:
            log(f"keeper: send failed: {exc}")
            self._lost()

    def _expire(self, request_id: int) -> None:
        deferred = self._pending.pop(request_id, None)
        if deferred is not None:
            deferred.resolve(error=ZoneError(
                f"the key keeper did not answer within {KEEPER_TIMEOUT:.0f} s",
                code=Code.NO_IDENTITY))

    def _readable(self) -> None:
        try:
            message = self.sock.recv(1 << 20)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:
            self._lost()
            return
        try:
            reply = cbor2.loads(message)
            deferred = self._pending.pop(reply["id"], None)
        except Exception as exc:
            log(f"keeper: unreadable reply: {exc!r}")
            return
        if deferred is None:
            return
        if reply.get("ok"):
            deferred.resolve(reply.get("result"))
        else:
            error = reply.get("error") or {}
            deferred.resolve(error=error_for_code(str(error.get("code")),
                                                  str(error.get("message"))))

    def _lost(self) -> None:
        log("keeper: connection lost")
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        pending, self._pending = self._pending, {}
        for deferred in pending.values():
            deferred.resolve(error=ZoneError("the key keeper is gone", code=Code.NO_IDENTITY))
        self.loop.call_later(KEEPER_RETRY, self._connect)


class Monitor:
    def __init__(self, loop: Reactor, hw: Hardware, restarts: int = 0,
                 keeper_socket: str = KEEPER_SOCKET) -> None:
        self.loop = loop
        self.started = time.monotonic()
        self.restarts = restarts
        self.boot_counter = hw.boot_counter
        self.debug = hw.debug
        self.keeper = KeeperLink(loop, keeper_socket)
        self.decoder = wire.FrameDecoder()
        self.encoder = wire.FrameEncoder()
        self.sessions = 0
        self.host_disconnects = 0
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.errors: dict[str, int] = {}
        self.ops_served: dict[str, int] = {}
        self._truncation_timer: Timer | None = None
        self._last_rx = 0.0
        self.port: Port | None = None
        self.native = False  # serving a plain fd on the host (benchmark baseline), not a zone
        self.ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "hello": self.op_hello,
            "info": self.op_info,
            "echo": self.op_echo,
            "sink": self.op_sink,
            "source": self.op_source,
            "stats": self.op_stats,
            "poweroff": self.op_poweroff,
            "attest": self.op_attest,
            "identity": self.op_identity,
        }

    # -- channel -----------------------------------------------------------------------------

    def open(self, fd: int | None = None) -> None:
        """Serve the control port, or ``fd`` (the host-native benchmark baseline uses a PTY)."""
        if fd is None:
            path = _wait_for_port(CONTROL_PORT)
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            for button in find_power_buttons():
                self._watch_power_button(os.open(button, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        else:
            path = f"fd {fd}"
            self.native = True
        self.port = Port(self.loop, fd, path, self.on_data, self.on_host_gone)
        log(f"serving {CONTROL_PORT} on {path} (firmware {FIRMWARE_VERSION}); zone ready")

    def _watch_power_button(self, fd: int) -> None:
        self.loop.add_reader(fd, lambda: self._on_power_button(fd))

    def _on_power_button(self, fd: int) -> None:
        try:
            data = os.read(fd, _INPUT_EVENT.size * 64)
        except OSError:
            return
        for offset in range(0, len(data) - _INPUT_EVENT.size + 1, _INPUT_EVENT.size):
            _, _, kind, code, value = _INPUT_EVENT.unpack_from(data, offset)
            if kind == _EV_KEY and code == _KEY_POWER and value == 1:
                log("power button pressed: powering off")
                _power_off()

    def on_host_gone(self) -> None:
        self.host_disconnects += 1
        if self.decoder.reset():
            self._count_error(Code.TRUNCATED_FRAME)

    def on_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        for item in self.decoder.feed(data):
            if type(item) is wire.Fault:
                self.send_error(None, item.code, item.message)
            else:
                self.frames_in += 1
                self.handle(item)  # type: ignore[arg-type]
        if self.decoder.pending:
            self._last_rx = time.monotonic()
            if self._truncation_timer is None:
                self._truncation_timer = self.loop.call_later(TRUNCATED_AFTER,
                                                              self._check_truncated)

    def _check_truncated(self) -> None:
        """Drop a partial frame once its sender has been silent for TRUNCATED_AFTER seconds."""
        self._truncation_timer = None
        if not self.decoder.pending:
            return
        quiet = time.monotonic() - self._last_rx
        if quiet < TRUNCATED_AFTER:
            self._truncation_timer = self.loop.call_later(TRUNCATED_AFTER - quiet,
                                                          self._check_truncated)
            return
        dropped = self.decoder.reset()
        self.send_error(None, Code.TRUNCATED_FRAME,
                        f"dropped {dropped} bytes of a frame the host did not finish")

    def send(self, frame: tuple[bytes, bytes]) -> None:
        header, body = frame
        self.frames_out += 1
        self.bytes_out += len(header) + len(body)
        self.port.send(header, body)  # type: ignore[union-attr]

    def send_error(self, request_id: Any, code: str, message: str) -> None:
        self._count_error(code)
        self.send(self.encoder.error(request_id, code, message))

    def _count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def respond(self, request_id: Any, result: Any) -> None:
        try:
            frame = self.encoder.response(request_id, result)
        except Exception as exc:  # a result the wire cannot carry is the zone's fault
            log(f"cannot encode the result of request {request_id!r}: {exc!r}")
            self.send_error(request_id, Code.INTERNAL, f"result not encodable: {exc}"[:200])
            return
        self.send(frame)

    # -- requests ----------------------------------------------------------------------------

    def handle(self, frame: wire.Frame) -> None:
        payload = frame.payload
        request_id = payload.get("id") if type(payload) is dict else None
        if type(request_id) is not int or not 0 <= request_id <= _MAX_ID:
            request_id = None
        try:
            if frame.kind is not wire.Kind.REQUEST:
                raise ProtocolError(f"the zone takes requests, not {frame.kind.name.lower()} "
                                    "frames", code=Code.UNEXPECTED_KIND)
            if type(payload) is not dict:
                raise ProtocolError(f"a request is a CBOR map, not {type(payload).__name__}")
            if request_id is None:
                raise ProtocolError("a request needs an id: an unsigned integer")
            op = payload.get("op")
            if type(op) is not str:
                raise ProtocolError("a request needs an op: a text string")
            args = payload.get("args")
            if args is None:
                args = {}
            elif type(args) is not dict:
                raise BadArgs(f"args must be a map, not {type(args).__name__}")
            handler = self.ops.get(op)
            if handler is None:
                raise UnknownOp(f"no operation {op!r}")
            self.ops_served[op] = self.ops_served.get(op, 0) + 1
            result = handler(args)
        except ZoneError as exc:
            self.send_error(request_id, exc.code, exc.message)
            return
        except Exception as exc:
            log(f"request {request_id!r} failed: {exc!r}")
            self.send_error(request_id, Code.INTERNAL, f"{type(exc).__name__}: {exc}"[:200])
            return
        if type(result) is Deferred:
            result.add(lambda d: self.send_error(request_id, d.error.code, d.error.message)
                       if d.error is not None else self.respond(request_id, d.value))
            return
        self.respond(request_id, result)

    # -- operations --------------------------------------------------------------------------

    def op_hello(self, args: dict[str, Any]) -> dict[str, Any]:
        """Start a host session: forget responses queued for a host that went away."""
        assert self.port is not None
        self.port.drop_unsent()
        self.sessions += 1
        return {
            "protocol": wire.VERSION,
            "firmware": FIRMWARE_VERSION,
            "session": self.sessions,
            "nonce": args.get("nonce"),
            "max_payload": wire.MAX_PAYLOAD,
            "boot_counter": self.boot_counter,
            "debug": self.debug,
        }

    def op_info(self, args: dict[str, Any]) -> dict[str, Any]:
        mem = _meminfo()
        return {
            "firmware": FIRMWARE_VERSION,
            "protocol": wire.VERSION,
            "boot_counter": self.boot_counter,
            "debug": self.debug,
            "uptime": _uptime(),
            "monitor_uptime": round(time.monotonic() - self.started, 3),
            "monitor_restarts": self.restarts,
            "memory": {"total": mem.get("MemTotal", 0), "available": mem.get("MemAvailable", 0)},
            "host_sessions": self.sessions,
            "host_disconnects": self.host_disconnects,
        }

    def op_echo(self, args: dict[str, Any]) -> dict[str, Any]:
        data = args.get("data")
        if not isinstance(data, bytes):
            raise BadArgs("echo takes {data: bytes}")
        return {"data": data}

    def op_sink(self, args: dict[str, Any]) -> dict[str, Any]:
        """Diagnostics: take ``data`` and answer only its size (host-to-zone throughput)."""
        data = args.get("data")
        if not isinstance(data, bytes):
            raise BadArgs("sink takes {data: bytes}")
        return {"size": len(data)}

    def op_source(self, args: dict[str, Any]) -> dict[str, Any]:
        """Diagnostics: answer ``size`` bytes (zone-to-host throughput)."""
        size = args.get("size")
        if type(size) is not int or not 0 <= size <= wire.MAX_PAYLOAD - 64:
            raise BadArgs(f"source takes {{size: 0..{wire.MAX_PAYLOAD - 64}}}")
        return {"data": bytes(size)}

    def op_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.port is not None
        return {
            "frames_in": self.frames_in, "frames_out": self.frames_out,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "errors": dict(self.errors),
            "ops": dict(self.ops_served),
            "dropped_frames": self.port.dropped_frames,
            "cpu_user_seconds": round(os.times()[0], 3),
            "cpu_system_seconds": round(os.times()[1], 3),
        }

    def op_attest(self, args: dict[str, Any]) -> Deferred:
        """Evidence for the verifier's ``nonce``: an EAT signed by layer 0's alias key."""
        nonce = args.get("nonce")
        if not isinstance(nonce, bytes) or not claims.NONCE_MIN <= len(nonce) <= claims.NONCE_MAX:
            raise BadArgs(f"attest takes {{nonce: {claims.NONCE_MIN} to {claims.NONCE_MAX} bytes}}")
        return self.keeper.call("evidence", {"nonce": nonce}).then(
            lambda result: {"evidence": result["evidence"]})

    def op_identity(self, args: dict[str, Any]) -> Deferred:
        """UEID, alias and DeviceID certificates (DER), measurements, debug."""
        return self.keeper.call("identity", {})

    def op_poweroff(self, args: dict[str, Any]) -> dict[str, Any]:
        """Answer, then sync and power the machine off (QEMU exits)."""
        if self.native:
            raise ZoneError("poweroff is refused outside a zone")
        self.loop.call_later(0.05, _power_off)
        return {"powering_off": True}


def _wait_for_port(name: str) -> str:
    while True:
        try:
            return find_port(name)
        except FileNotFoundError:
            time.sleep(0.01)


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in _read("/proc/meminfo").decode().splitlines():
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _uptime() -> float:
    try:
        return float(_read("/proc/uptime").split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def _power_off() -> None:
    import ctypes

    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(0x4321FEDC)  # LINUX_REBOOT_CMD_POWER_OFF


def _limit_memory() -> None:
    """Bound the monitor's address space so hostile input ends in MemoryError, not the OOM killer."""
    total = _meminfo().get("MemTotal", 0)
    if total:
        limit = max(total * 3 // 4, 192 * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(hw: Hardware, restarts: int = 0, fd: int | None = None,
         keeper_socket: str = KEEPER_SOCKET) -> None:
    if fd is None:
        _limit_memory()
    loop = Reactor()
    Monitor(loop, hw, restarts, keeper_socket).open(fd)
    loop.run()
