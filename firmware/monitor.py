"""Layer 1: the zone monitor. Serves the control port ``org.sez.ctl`` (DESIGN §6).

One reactor (firmware.reactor) owns the port. Bytes go through
:class:`~firmware.abi.wire.FrameDecoder`; every frame becomes a response, every fault an error
frame with ``id: null``; nothing that crosses the channel can raise out of the loop. Writes are
non-blocking and queued, so a host that does not read never stalls the zone.

The operations are the ``op_*`` methods. What needs a key goes to the key keeper
(firmware.links.KeeperLink); persistent state is firmware.store (kept in BBRAM by the keeper);
jobs are firmware.jobs (run by firmware.runner); schedules are firmware.schedules, and the
audit log firmware.audit. An operation that waits on another process
returns a Deferred, answered when it resolves.
"""

from __future__ import annotations

import os
import resource
import struct
import time

from . import FIRMWARE_VERSION
from .abi import evidence as claims
from .abi import wire
from .abi.errors import BadArgs, Code, ProtocolError, UnknownOp, ZoneError
from .hardware import Hardware
from .jobs import Jobs
from .links import KEEPER_SOCKET, Deferred, KeeperLink
from .port import Port
from .reactor import Reactor, log
from .schedules import Schedules
from .store import ZoneStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

CONTROL_PORT = "org.sez.ctl"
#: A host that reads none of the zone's answers for this long counts as one stall.
STALL_AFTER = 2.0
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


class Monitor:
    def __init__(self, loop: Reactor, hw: Hardware, restarts: int = 0,
                 keeper_socket: str = KEEPER_SOCKET) -> None:
        self.loop = loop
        self.started = time.monotonic()
        self.restarts = restarts
        self.boot_counter = hw.boot_counter
        self.debug = hw.debug
        self.keeper = KeeperLink(loop, keeper_socket)
        self.store = ZoneStore(self.keeper)
        self.jobs = Jobs(loop, self.keeper, self.store)
        self.schedules = Schedules(loop, self.store, self.jobs)
        self.store.ready.add(self._resume)
        self.decoder = wire.FrameDecoder()
        self.encoder = wire.FrameEncoder()
        self.sessions = 0
        self.host_disconnects = 0
        self.host_stalls = 0
        self._stalled = False
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.errors: dict[str, int] = {}
        self.ops_served: dict[str, int] = {}
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
            "owner": self.op_owner,
            "enroll": self.op_enroll,
            "load": self.op_load,
            "applets": self.op_applets,
            "run": self.op_run,
            "submit": self.op_submit,
            "result": self.op_result,
            "ack": self.op_ack,
            "jobs": self.op_jobs,
            "schedule": self.op_schedule,
            "unschedule": self.op_unschedule,
            "schedules": self.op_schedules,
            "audit": self.op_audit,
            "audit-ack": self.op_audit_ack,
        }

    def _resume(self, ready: Deferred) -> None:
        """Once the state is loaded: queued jobs run again, schedules tick again."""
        if ready.error is None:
            self.schedules.start(self.jobs.recover())

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
        self.port = Port(self.loop, fd, path, self.on_data, self.on_host_gone, repoll=True)
        self.loop.call_later(STALL_AFTER / 2, self._watch_host)
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
        return {"sessions": self.sessions, "disconnects": self.host_disconnects,
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
            "host": self.host_claims(),
            "bbram": self.store.status,
            "owner": self.store.owner()["owner"],
            "applets": len(self.store.packages),
            "jobs": {"active": len(self.jobs.active), "queued": len(self.jobs.waiting),
                     "finished": self.jobs.finished, "failed": self.jobs.failed,
                     "interrupted": self.jobs.interrupted, "outbox": len(self.store.outbox())},
            "schedules": len(self.schedules.specs()),
            "audit": {"kept": len(self.store.audit.entries()),
                      "next": self.store.audit.next_seq()},
            "bbram_commits": self.store.commits,
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
        return self.store.ready.then(lambda _: self.keeper.call(
            "evidence", {"nonce": nonce,
                         "claims": {**self.store.claims(), "sez.host": self.host_claims()}})
        ).then(
            lambda result: {"evidence": result["evidence"]})

    def op_identity(self, args: dict[str, Any]) -> Deferred:
        """UEID, alias and DeviceID certificates (DER), measurements, debug."""
        return self.keeper.call("identity", {})

    def op_owner(self, args: dict[str, Any]) -> Deferred:
        """The enrolled owner's key fingerprint (SHA-256 of its SPKI), the epoch, the UEID."""
        return self.store.ready.then(lambda _: self.store.owner())

    def op_enroll(self, args: dict[str, Any]) -> Deferred:
        """Bind ``owner`` (SPKI DER); replacing an owner needs ``authorization`` (see store)."""
        return self.store.ready.then(
            lambda _: self.store.enroll(args.get("owner"), args.get("authorization")))

    def op_load(self, args: dict[str, Any]) -> Deferred:
        """Load an owner-signed applet package (the bytes of a .sez file)."""
        return self.store.ready.then(lambda _: self.store.load(args.get("package")))

    def op_applets(self, args: dict[str, Any]) -> Deferred:
        return self.store.ready.then(lambda _: {"applets": self.store.listing()})

    def op_run(self, args: dict[str, Any]) -> Deferred:
        """Run ``applet`` (name or id) on ``input``; answer {job, applet, output, receipt}."""
        data, nonce = args.get("input", b""), args.get("nonce", b"")
        if not isinstance(data, bytes):
            raise BadArgs("run takes {applet, input: bytes, nonce: bytes}")
        if not isinstance(nonce, bytes) or len(nonce) > 64:
            raise BadArgs("the nonce must be 0 to 64 bytes")
        return self.store.ready.then(
            lambda _: self.jobs.run(self.store.find(args.get("applet")), data, nonce))

    def op_submit(self, args: dict[str, Any]) -> Deferred:
        """Queue a detached job: {job, state, duplicate}. ``key`` (bytes, optional) makes a
        retried submission return the first one's job instead of running again."""
        data, nonce, key = args.get("input", b""), args.get("nonce", b""), args.get("key")
        if not isinstance(data, bytes):
            raise BadArgs("submit takes {applet, input: bytes, nonce: bytes, key: bytes}")
        if not isinstance(nonce, bytes) or len(nonce) > 64:
            raise BadArgs("the nonce must be 0 to 64 bytes")
        if key is not None and (not isinstance(key, bytes) or not 8 <= len(key) <= 64):
            raise BadArgs("the idempotency key must be 8 to 64 bytes")
        return self.store.ready.then(lambda _: self.jobs.submit(
            self.store.find(args.get("applet")), data, nonce, key))

    def op_result(self, args: dict[str, Any]) -> Deferred:
        """A detached job's state, and its output and receipt (or error) once final. ``wait``
        (seconds, at most 60) holds the answer until then. The result stays in the outbox
        until ``ack``."""
        job, wait = args.get("job"), args.get("wait", 0)
        if not isinstance(job, str) or type(wait) not in (int, float) or not 0 <= wait <= 60:
            raise BadArgs("result takes {job: text, wait: 0..60 seconds}")
        return self.store.ready.then(lambda _: self.jobs.result(job, float(wait)))

    def op_ack(self, args: dict[str, Any]) -> Deferred:
        """The host has a job's result: the zone may forget it."""
        job = args.get("job")
        if not isinstance(job, str):
            raise BadArgs("ack takes {job: text}")
        return self.store.ready.then(lambda _: self.store.ack(job))

    def op_jobs(self, args: dict[str, Any]) -> Deferred:
        """The outbox: every detached job not yet acknowledged, with its state."""
        return self.store.ready.then(lambda _: {"jobs": self.jobs.listing()})

    def op_schedule(self, args: dict[str, Any]) -> Deferred:
        """Install an owner-signed schedule (firmware.abi.schedule); it runs at once, then
        every ``every`` seconds, with or without a host."""
        return self.store.ready.then(lambda _: self.schedules.change(args.get("change"),
                                                                     "schedule"))

    def op_unschedule(self, args: dict[str, Any]) -> Deferred:
        """Remove a schedule (an owner-signed unschedule change)."""
        return self.store.ready.then(lambda _: self.schedules.change(args.get("change"),
                                                                     "unschedule"))

    def op_schedules(self, args: dict[str, Any]) -> Deferred:
        """{ueid, epoch, schedules: [{name, applet, every, runs, skipped, ...}]}; a change
        must name this epoch."""
        return self.store.ready.then(lambda _: self.schedules.listing())

    def op_audit(self, args: dict[str, Any]) -> Deferred:
        """Audit-log entries after sequence number ``after`` (at most ``limit``), with the
        certificate chain [alias, DeviceID] of the key that signed them."""
        after, limit = args.get("after", 0), args.get("limit", 256)
        if type(after) is not int or after < 0 or type(limit) is not int or not 1 <= limit <= 1024:
            raise BadArgs("audit takes {after: sequence number >= 0, limit: 1..1024}")

        def fetch(identity: dict[str, Any]) -> dict[str, Any]:
            return {**self.store.audit.fetch(after, limit),
                    "chain": [identity["alias_cert"], identity["device_id_cert"]]}

        return self.store.ready.then(lambda _: self.keeper.call("identity", {})).then(fetch)

    def op_audit_ack(self, args: dict[str, Any]) -> Deferred:
        """The host has the entries up to sequence number ``upto``: the zone may forget them."""
        upto = args.get("upto")
        if type(upto) is not int or upto < 0:
            raise BadArgs("audit-ack takes {upto: sequence number}")
        return self.store.ready.then(lambda _: self.store.audit.ack(upto))

    def op_poweroff(self, args: dict[str, Any]) -> dict[str, Any]:
        """Answer, then sync and power the machine off (QEMU exits)."""
        if self.native:
            raise ZoneError("poweroff is refused outside a zone")
        self.loop.call_later(0.05, _power_off)
        return {"powering_off": True}


def _wait_for_port(name: str, timeout: float = 30.0) -> str:
    """The /dev node of the port ``name``, once the virtio driver has made it.

    Raises TimeoutError if it has not appeared within ``timeout`` seconds: the monitor then
    exits and PID 1 restarts it (firmware.init.supervise), which waits again.
    """
    started = time.monotonic()
    warned = False
    while True:
        try:
            return find_port(name)
        except FileNotFoundError:
            waited = time.monotonic() - started
            if waited > timeout:
                raise TimeoutError(f"no virtio-serial port named {name} appeared within "
                                   f"{timeout:.0f} s") from None
            if not warned and waited > 5:
                log(f"still waiting for the virtio-serial port {name}")
                warned = True
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
