"""What runs inside a job's process, after it dropped its privileges (firmware.runner.runner):
one job (run_job), or, in a warm worker, one job after another (serve_warm).

The job socket's protocol is in firmware.runtime.ipc: one event frame with the job (its
``input``, or a batch job's ``inputs``, run one after another in this process), the applet's
calls as requests, and an event frame that ends the job (``output``, or ``outputs``).
"""

from __future__ import annotations

import importlib
import os
import resource
import socket
import sys
import time
import traceback
from typing import Any

from ..abi import wire
from ..runtime.ipc import JOB_DONE, JOB_ERROR, JobCall


class JobChannel:
    """The job's socket to the monitor. Every wait on it is bounded by ``timeout`` seconds
    (the job's wall time: the monitor kills the job by then anyway); past it the wait raises
    TimeoutError."""

    def __init__(self, fd: int, timeout: float) -> None:
        self.timeout = timeout
        self.sock = socket.socket(fileno=fd)
        self.sock.settimeout(timeout)
        self.decoder = wire.FrameDecoder()
        self.encoder = wire.FrameEncoder()
        self.items: list[Any] = []
        self.next_id = 0

    def _next_frame(self) -> wire.Frame:
        while not self.items:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                raise TimeoutError(f"the monitor sent nothing within {self.timeout:.0f} s") \
                    from None
            if not data:
                raise ConnectionError("the monitor closed the job channel")
            self.items = [i for i in self.decoder.feed(data) if isinstance(i, wire.Frame)]
        return self.items.pop(0)  # type: ignore[no-any-return]

    def send(self, kind: int, payload: Any) -> None:
        self.sock.sendall(self.encoder.frame(kind, payload))

    def receive_job(self) -> dict[str, Any]:
        frame = self._next_frame()
        return dict(frame.payload)

    def call(self, op: str, args: dict[str, Any]) -> Any:
        self.next_id += 1
        self.send(wire.Kind.REQUEST, {"id": self.next_id, "op": op, "args": args})
        frame = self._next_frame()
        payload = frame.payload
        if not payload.get("ok"):
            error = payload.get("error") or {}
            raise RuntimeError(f"zone refused {op}: [{error.get('code')}] {error.get('message')}")
        return payload.get("result")


class ZoneAPI:
    """The applet's only way to the zone: ``run(data, zone)`` receives one of these."""

    def __init__(self, channel: JobChannel) -> None:
        self._channel = channel
        self._signer: dict[str, bytes] | None = None

    def random(self, n: int) -> bytes:
        """``n`` bytes from the zone's CRNG."""
        return os.urandom(n)

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-384 / SHA-384 signature (DER) of ``data`` with this applet's own key: derived
        from the zone's CDI and this applet's measurement, so no other code can make it."""
        result = self._channel.call(JobCall.SIGN, {"data": bytes(data)})
        self._signer = result
        return bytes(result["signature"])

    def public_key(self) -> bytes:
        """This applet's public key (SubjectPublicKeyInfo, DER)."""
        return bytes(self._signed()["public_key"])

    def certificate(self) -> bytes:
        """This applet's key certificate (DER), signed by the zone's alias key; its TcbInfo
        carries the applet's measurement. Chain: certificate_chain()."""
        return bytes(self._signed()["certificate"])

    def certificate_chain(self) -> list[bytes]:
        """[alias, DeviceID] certificates (DER), up to the manufacturer root."""
        return [bytes(c) for c in self._signed()["chain"]]

    def _signed(self) -> dict[str, Any]:
        if self._signer is None:
            self.sign(b"")
        assert self._signer is not None
        return self._signer

    def seal(self, data: bytes) -> bytes:
        """``data`` sealed for this applet: a blob that only this applet (this name, or a later
        version of it), under this owner, on this device, can unseal. Anyone may keep it."""
        return bytes(self._channel.call(JobCall.SEAL, {"data": bytes(data)})["blob"])

    def unseal(self, blob: bytes) -> bytes:
        """The data in a blob this applet (or an older version of it) sealed; RuntimeError
        ``bad-blob`` for any other blob, or a changed one."""
        return bytes(self._channel.call(JobCall.UNSEAL, {"blob": bytes(blob)})["data"])

    def secret(self, name: str) -> bytes:
        """The value of the secret provisioned as ``name`` (abi.secret), if its policy admits
        this applet: this exact measurement, or this applet's name at a version and under an
        owner the policy names. RuntimeError ``no-such-secret`` if none is provisioned under
        that name, ``secret-denied`` if the policy is for other applets."""
        return bytes(self._channel.call(JobCall.SECRET, {"name": str(name)})["value"])

    def log(self, message: str) -> None:
        """One line on the zone's console, prefixed with the job id."""
        self._channel.call(JobCall.LOG, {"message": str(message)[:500]})


def run_job(fd: int, work: str, timeout: float, forked: int,
            cache: dict[str, Any] | None = None) -> int:
    """Run the job the monitor sends on ``fd``; ``timeout`` bounds every wait on the monitor.
    The final event carries when each step ended (CLOCK_MONOTONIC ns, one clock for every
    process of the zone), from ``forked``, when the process began (or, in a warm worker,
    took the job), to the applet's return. A warm worker's ``cache`` keeps the applet it
    loaded for the jobs after (serve_warm). The job's socket is closed on return."""
    marks = [forked, time.monotonic_ns()]  # forked, confined, received, loaded, ran
    channel = JobChannel(fd, timeout)
    try:
        job = channel.receive_job()
        marks.append(time.monotonic_ns())
        module, function = job["entry"]
        entry = _load(job["files"], module, function, work, cache)
        marks.append(time.monotonic_ns())
        zone = ZoneAPI(channel)
        batch = job.get("inputs")
        outputs = [_output(entry(bytes(data), zone), module, function)
                   for data in (batch if batch is not None else [job["input"]])]
        marks.append(time.monotonic_ns())
        channel.send(wire.Kind.EVENT, {"event": JOB_DONE, "marks": marks,
                                       **({"outputs": outputs} if batch is not None else
                                          {"output": outputs[0]})})
        return 0
    except BaseException as exc:
        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        try:
            channel.send(wire.Kind.EVENT, {"event": JOB_ERROR, "message": message[-1000:]})
        except OSError:
            pass
        return 1
    finally:
        channel.sock.close()


def _output(output: Any, module: str, function: str) -> bytes:
    if not isinstance(output, (bytes, bytearray, memoryview)):
        raise TypeError(f"{module}:{function} returned {type(output).__name__}, not bytes")
    return bytes(output)


def _load(files: dict[str, bytes], module: str, function: str, work: str,
          cache: dict[str, Any] | None) -> Any:
    """The applet's entry function: its files written to ``work``/pkg and imported, or, in
    a warm worker, the one loaded for its first job (RuntimeError for another applet's)."""
    if cache:
        if (cache["files"], cache["entry"]) != (files, (module, function)):
            raise RuntimeError("this warm worker serves another applet")
        return cache["function"]
    root = os.path.join(work, "pkg")
    for path, data in files.items():
        target = os.path.join(root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
    sys.path.insert(0, root)
    sys.dont_write_bytecode = True
    loaded = getattr(importlib.import_module(module), function)
    if cache is not None:
        cache.update(files=files, entry=(module, function), function=loaded)
    return loaded


def serve_warm(control: int, work: str) -> int:
    """A warm worker's life (an applet whose manifest says ``warm = true``): take jobs from
    the runner one at a time on ``control`` — b"CPU_SECONDS WALL_SECONDS" and the job's
    socket — run each, answer its exit code (one byte); end when the runner hangs up. The
    CPU limit is the job's own: what the worker has used so far, plus the job's seconds."""
    runner = socket.socket(fileno=control)
    cache: dict[str, Any] = {}
    while True:
        message, fds, _, _ = socket.recv_fds(runner, 64, 1)
        if not message or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return 0
        taken = time.monotonic_ns()
        cpu, wall = (int(x) for x in message.split())
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (spent + cpu, resource.RLIM_INFINITY))
        runner.sendall(bytes([run_job(fds[0], work, wall, taken, cache)]))
