"""Layer 1: the zone monitor. Serves the control port (abi.device.CONTROL_PORT).

One reactor (firmware.runtime.reactor) owns the port. Bytes go through
:class:`~firmware.abi.wire.FrameDecoder`; every frame becomes a response, every fault an error
frame with ``id: null``; nothing that crosses the channel can raise out of the loop. Writes are
non-blocking and queued, so a host that does not read never stalls the zone.

The host session and diagnostics operations (hello, info, echo, sink, source, stats,
poweroff) are here; the zone's own operations are firmware.monitor.ops, attested sessions
firmware.monitor.sessions. A request is answered where it came from: on the port, or inside
its session's TLS. An operation that waits on another process returns a Deferred, answered
when it resolves.
"""

from __future__ import annotations

import os
import time

from .. import FIRMWARE_VERSION
from ..abi import bulk, wellformed, wire
from ..abi.device import BULK_BAR, CONTROL_PORT
from ..abi.errors import (BadArgs, BadRequest, Code, Internal, NeedsSession, UnexpectedKind,
                          UnknownOp, ZoneError)
from ..abi.ops import Op
from ..pid1.hardware import Hardware, bulk_window
from ..runtime import caps
from ..runtime.console import log
from ..runtime.ipc import KEEPER_SOCKET
from ..runtime.port import Port
from ..runtime.process import foreground
from ..runtime.reactor import Reactor
from ..runtime.virtio import wait_for_port
from . import platform
from .bulk import ZoneWindow
from .deferred import Deferred
from .links import KeeperLink
from .ops import Operations
from .sessions import Session, Sessions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

#: A host that reads none of the zone's answers for this long counts as one stall.
STALL_AFTER = 2.0
_MAX_ID = (1 << 64) - 1


class Monitor:
    def __init__(self, loop: Reactor, hw: Hardware, restarts: int = 0,
                 keeper_socket: str = KEEPER_SOCKET) -> None:
        self.loop = loop
        self.started = time.monotonic()
        self.restarts = restarts
        self.boot_counter = hw.boot_counter
        self.debug = hw.debug
        self.zone = Operations(loop, KeeperLink(loop, keeper_socket), self.host_claims)
        self.decoder = wire.FrameDecoder(limits=wellformed.INBOUND)
        self.encoder = wire.FrameEncoder()
        self.host_sessions = 0
        self.host_disconnects = 0
        self.host_stalls = 0
        self._stalled = False
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.errors: dict[str, int] = {}
        self.ops_served: dict[str, int] = {}
        self.port: Port | None = None
        self.window: ZoneWindow | None = None
        self.native = False  # serving a plain fd on the host (benchmark baseline), not a zone
        #: What the boot-time self-check got trying to reach fw_cfg's ports (caps.probe_port_io).
        self.port_io: dict[str, str] | None = None
        self.ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            Op.HELLO: self.op_hello,
            Op.INFO: self.op_info,
            Op.ECHO: self.op_echo,
            Op.SINK: self.op_sink,
            Op.SOURCE: self.op_source,
            Op.STATS: self.op_stats,
            Op.POWEROFF: self.op_poweroff,
            **self.zone.table(),
        }
        in_session = {op: handler for op, handler in self.ops.items()
                      if op not in (Op.HELLO, Op.POWEROFF)}
        self.sessions = Sessions(self.zone.keeper, in_session, self.zone.session_table(),
                                 self._session_hello, self.handle, self.send_event)
        self.ops.update(self.sessions.table())
        for op in self.zone.session_table():
            self.ops[op] = _needs_session

    # -- channel -----------------------------------------------------------------------------

    def open(self, fd: int | None = None, window: str | None = None) -> None:
        """Serve the control port and the bulk window, or ``fd`` and the file ``window`` (the
        host-native benchmark baseline: a unix socket, a file in /dev/shm)."""
        if fd is None:
            path = wait_for_port(CONTROL_PORT)
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            for button in platform.find_power_buttons():
                self._watch_power_button(os.open(button, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            pci = bulk_window()
            window = f"{pci}/resource{BULK_BAR}" if pci is not None else None
        else:
            path = f"fd {fd}"
            self.native = True
        if window is not None:
            self.window = ZoneWindow.open(window)
        self.port = Port(self.loop, fd, path, self.on_data, self.on_host_gone, repoll=True)
        self.loop.call_later(STALL_AFTER / 2, self._watch_host)
        log(f"serving {CONTROL_PORT} on {path} (firmware {FIRMWARE_VERSION}"
            f"{', bulk window' if self.window else ''}); zone ready")

    def _watch_power_button(self, fd: int) -> None:
        self.loop.add_reader(fd, lambda: self._on_power_button(fd))

    def _on_power_button(self, fd: int) -> None:
        try:
            data = os.read(fd, platform.INPUT_EVENT.size * 64)
        except OSError:
            return
        if platform.is_power_press(data):
            log("power button pressed: powering off")
            platform.power_off()

    def _watch_host(self) -> None:
        """Count stalls: episodes in which the host reads nothing for STALL_AFTER seconds."""
        since = self.port.blocked_since if self.port is not None else None
        stalled = since is not None and time.monotonic() - since > STALL_AFTER
        if stalled and not self._stalled:
            self.host_stalls += 1
            log(f"the host has read nothing for {STALL_AFTER:.0f} s (stall {self.host_stalls})")
        self._stalled = stalled
        self.loop.call_later(STALL_AFTER / 2, self._watch_host)

    def host_claims(self) -> dict[str, int]:
        """What the zone saw of its host: sessions, disconnects, stalls, unreadable input."""
        return {"sessions": self.host_sessions, "disconnects": self.host_disconnects,
                "stalls": self.host_stalls, "errors": sum(self.errors.values())}

    def on_host_gone(self) -> None:
        self.host_disconnects += 1
        if self.decoder.reset():
            self._count_error(Code.TRUNCATED_FRAME)

    def on_data(self, data: bytes) -> None:
        """Bytes from the host. A message a host left unfinished waits until the next one
        starts (a new session's wire.BREAK and hello end it: see abi.wire); the zone never
        guesses from silence, which a slow host under load would be mistaken for."""
        self.bytes_in += len(data)
        for item in self.decoder.feed(data):
            if type(item) is wire.Fault:
                self.send_error(None, item.code, item.message)
            else:
                self.frames_in += 1
                self.handle(item)  # type: ignore[arg-type]

    def send(self, parts: list[bytes | memoryview]) -> None:
        self.frames_out += 1
        self.bytes_out += sum(len(part) for part in parts)
        self.port.send(parts)  # type: ignore[union-attr]

    def send_error(self, request_id: Any, code: str, message: str) -> None:
        self._count_error(code)
        self.send(self.encoder.error(request_id, code, message))

    def _count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def send_event(self, event: dict[str, Any]) -> None:
        self.send(self.encoder.parts(wire.Kind.EVENT, event))

    def respond(self, request_id: Any, result: Any) -> None:
        try:
            frame = self.encoder.response(request_id, result)
        except (ValueError, TypeError) as exc:  # a result the wire cannot carry: a zone bug
            log(f"cannot encode the result of request {request_id!r}: {exc!r}")
            self.send_error(request_id, Code.INTERNAL, f"result not encodable: {exc}"[:200])
            return
        self.send(frame)

    # -- requests ----------------------------------------------------------------------------

    def handle(self, frame: wire.Frame, peer: "Monitor | Session | None" = None) -> None:
        """Serve one request from the port or, with ``peer``, from a session; answer there.
        A request on the port may move large fields through the bulk window (abi.bulk)."""
        peer = peer or self
        payload = frame.payload
        request_id = payload.get("id") if type(payload) is dict else None
        if type(request_id) is not int or not 0 <= request_id <= _MAX_ID:
            request_id = None
        reply = False
        try:
            if frame.kind is not wire.Kind.REQUEST:
                raise UnexpectedKind(f"the zone takes requests, not {frame.kind.name.lower()} "
                                     "frames")
            if type(payload) is not dict:
                raise BadRequest(f"a request is a CBOR map, not {type(payload).__name__}")
            if request_id is None:
                raise BadRequest("a request needs an id: an unsigned integer")
            op = payload.get("op")
            if type(op) is not str:
                raise BadRequest("a request needs an op: a text string")
            args = payload.get("args")
            if args is None:
                args = {}
            elif type(args) is not dict:
                raise BadArgs(f"args must be a map, not {type(args).__name__}")
            if bulk.KEY in args or bulk.REPLY in args:
                if peer is not self or self.window is None:
                    raise BadArgs("no bulk window here: " + ("a session's bytes stay in its TLS"
                                  if peer is not self else "this zone has none"))
                args, reply = self.window.take(args)
            handler = peer.ops.get(op)
            if handler is None:
                raise UnknownOp(f"no operation {op!r:.80}")
            self.ops_served[op] = self.ops_served.get(op, 0) + 1
            result = handler(args)
        except ZoneError as exc:
            peer.send_error(request_id, exc.code, exc.message)
            return
        except Exception as exc:  # a zone bug: the host gets "internal", the zone goes on
            log(f"request {request_id!r} failed: {exc!r}")
            peer.send_error(request_id, Code.INTERNAL, f"{type(exc).__name__}: {exc}"[:200])
            return
        out = self.window.give if reply and self.window is not None else _same
        if type(result) is Deferred:
            result.add(lambda d: peer.send_error(request_id, d.error.code, d.error.message)
                       if d.error is not None else peer.respond(request_id, out(d.value)))
            return
        peer.respond(request_id, out(result))

    # -- operations --------------------------------------------------------------------------

    def op_hello(self, args: dict[str, Any]) -> dict[str, Any]:
        """Start a host session: forget responses queued for a host that went away, and the
        attested sessions it relayed; say where the bulk window's answers are (abi.bulk)."""
        assert self.port is not None
        self.port.drop_unsent()
        self.sessions.reset()
        self.host_sessions += 1
        answer = self._session_hello(args, self.host_sessions)
        if self.window is not None:
            answer[bulk.HEAD] = self.window.z2h.head
        return answer

    def _session_hello(self, args: dict[str, Any], session: int) -> dict[str, Any]:
        return {
            "protocol": wire.VERSION,
            "firmware": FIRMWARE_VERSION,
            "session": session,
            "nonce": args.get("nonce"),
            "max_payload": wire.MAX_PAYLOAD,
            "boot_counter": self.boot_counter,
            "debug": self.debug,
        }

    def op_info(self, args: dict[str, Any]) -> dict[str, Any]:
        store, jobs = self.zone.store, self.zone.jobs
        mem = platform.meminfo()
        return {
            "firmware": FIRMWARE_VERSION,
            "protocol": wire.VERSION,
            "boot_counter": self.boot_counter,
            "debug": self.debug,
            "uptime": platform.uptime(),
            "monitor_uptime": round(time.monotonic() - self.started, 3),
            "monitor_restarts": self.restarts,
            "memory": {"total": mem.get("MemTotal", 0), "available": mem.get("MemAvailable", 0)},
            "host_sessions": self.host_sessions,
            "sessions": self.sessions.stats(),
            "host_disconnects": self.host_disconnects,
            "host": self.host_claims(),
            "bbram": store.status,
            "tampered": store.tampered,
            "owner": store.owner()["owner"],
            "applets": len(store.packages),
            "jobs": {"active": len(jobs.active), "queued": len(jobs.waiting),
                     "finished": jobs.finished, "failed": jobs.failed,
                     "interrupted": jobs.interrupted, "outbox": len(store.outbox())},
            "schedules": len(self.zone.schedules.specs()),
            "audit": {"kept": len(store.audit.entries()), "next": store.audit.next_seq()},
            "bbram_commits": store.state.commits,
            "receipt_signatures": jobs.receipts.signatures,
            "capabilities": self.capabilities(),
            "port_io": self.port_io,
        }

    def capabilities(self) -> dict[str, dict[str, str] | None] | None:
        """Each zone process's capability sets (caps.capabilities), read from /proc: PID 1,
        this monitor, and the keeper and the runner as their sockets name them (None while
        not connected)."""
        if self.native:
            return None
        runner = self.zone.jobs.runner.peer_pid
        keeper = self.zone.keeper.peer_pid
        return {"pid1": caps.capabilities(1), "monitor": caps.capabilities(),
                "keeper": caps.capabilities(keeper) if keeper else None,
                "runner": caps.capabilities(runner) if runner else None}

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
        """Counters of the channel (``window_in``, ``window_out``: bytes through the bulk
        window) and the monitor's CPU time and memory (``memory``: bytes
        resident now, the peak, the address-space limit)."""
        assert self.port is not None
        return {
            "frames_in": self.frames_in, "frames_out": self.frames_out,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "window_in": self.window.taken if self.window else 0,
            "window_out": self.window.given if self.window else 0,
            "errors": dict(self.errors),
            "ops": dict(self.ops_served),
            "dropped_frames": self.port.dropped_frames,
            "cpu_user_seconds": round(os.times()[0], 3),
            "cpu_system_seconds": round(os.times()[1], 3),
            "memory": platform.own_memory(),
            "job_phases_ms": self.zone.jobs.phase_medians(),
        }

    def op_poweroff(self, args: dict[str, Any]) -> dict[str, Any]:
        """Answer, then sync and power the machine off (QEMU exits)."""
        if self.native:
            raise Internal("poweroff is refused outside a zone")
        self.loop.call_later(0.05, platform.power_off)
        return {"powering_off": True}


def _same(result: Any) -> Any:
    return result


def _needs_session(args: dict[str, Any]) -> None:
    raise NeedsSession("this operation carries a secret: the zone takes it only inside an "
                       "attested session")


def _confine() -> None:
    """In the zone: keep only CAP_SYS_BOOT (caps.MONITOR) and bound the address space; run at
    nice 0 (PID 1 runs at 10 once it has started the zone, and its children with it)."""
    foreground()
    platform.limit_memory()
    caps.confine(caps.MONITOR)


def _probe() -> dict[str, str]:
    """Check that fw_cfg's ports are out of reach (``info``'s ``port_io``), once PID 1 has
    taken every way to them."""
    port_io = caps.probe_port_io()
    reached = sorted(way for way, got in port_io.items() if got == "allowed")
    log("monitor: fw_cfg's ports are out of reach" if not reached else
        f"monitor: WARNING: fw_cfg's ports are reachable through {', '.join(reached)}")
    return port_io


def main(hw: Hardware, restarts: int = 0, fd: int | None = None,
         keeper_socket: str = KEEPER_SOCKET, port_io: dict[str, str] | None = None,
         window: str | None = None) -> None:
    """Serve the control port (or ``fd`` and ``window``: natively, unconfined). In the zone,
    confine the process first, unless it is (``port_io``: what that found)."""
    hw.wipe_fuses()  # a restarted monitor's copy of PID 1's record: wiped already
    if fd is None and port_io is None:
        _confine()
        port_io = _probe()
    loop = Reactor()
    monitor = Monitor(loop, hw, restarts, keeper_socket)
    monitor.port_io = port_io
    monitor.open(fd, window)
    loop.run()


def main_when_told(told: int, set_up: Callable[[], None]) -> None:
    """The first monitor of a boot, forked by PID 1 before the start line (so a template holds
    it ready): confined at once, it opens the control port only when PID 1 has read the
    hardware and confined itself, and says so on ``told``: the boot counter and the debug
    strap, then end of file. It never holds the fuses. ``set_up`` says it is confined."""
    _confine()
    set_up()
    word = b""
    while chunk := os.read(told, 64):
        word += chunk
    os.close(told)
    counter, _, debug = word.decode("ascii", errors="replace").partition(" ")
    if not counter.isdigit():  # PID 1 starts another monitor, as after any exit
        raise RuntimeError(f"PID 1 did not tell the monitor to start ({word[:40]!r})")
    main(Hardware(boot_counter=int(counter), debug=debug == "1"), port_io=_probe())
