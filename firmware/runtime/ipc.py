"""The sockets between zone processes, and what travels on them.

The key keeper (layer 0) and the applet runner each listen on a root-only unix socket
(SOCK_SEQPACKET, one CBOR message per packet, directory 0700); the monitor is their only
client. Requests to the keeper are ``{id, op, args}`` -> ``{id, ok, result | error: {code,
message}}`` (codes: abi.errors.Code); the runner takes ``{op, job, ...}`` (a job's socket
travels with ``start``, SCM_RIGHTS) and sends ``{event: "exit", job, status, oom}``.

A job's socket (a stream between the monitor and the job's process) speaks the channel's frame
format (abi.wire): the monitor sends one event ``{files, entry: [module, function], input}``;
the applet's calls (JobCall) are requests answered by responses; the job ends with an event
``{event: "done", output}`` or ``{event: "error", message}``.
"""

from __future__ import annotations

import enum
import os
import socket

__all__ = ["KEEPER_SOCKET", "RUNNER_SOCKET", "MAX_MESSAGE", "KEEPER_TIMEOUT", "KeeperOp",
           "RunnerOp", "EXIT", "CONFINEMENT_FAILED", "TAMPERED_EXIT", "TAMPER_RECORD", "JobCall",
           "JOB_DONE", "JOB_ERROR", "listen", "size_buffers", "raise_buffer_limits"]

KEEPER_SOCKET = "/run/sez/keeper.sock"
RUNNER_SOCKET = "/run/sez/runner.sock"
#: Largest message between zone processes (the whole BBRAM state travels in one).
MAX_MESSAGE = 16 << 20
#: The most seconds a keeper call may take; the keeper drops a connection idle that long.
KEEPER_TIMEOUT = 30.0
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # Linux: CAP_NET_ADMIN may exceed wmem_max/rmem_max
#: The kernel's ceilings on SO_SNDBUF and SO_RCVBUF for processes without CAP_NET_ADMIN.
BUFFER_LIMITS = ("/proc/sys/net/core/wmem_max", "/proc/sys/net/core/rmem_max")


class KeeperOp(enum.StrEnum):
    """What the monitor may ask of layer 0 (firmware.layer0.keeper documents each)."""

    IDENTITY = "identity"
    EVIDENCE = "evidence"
    BBRAM_LOAD = "bbram-load"
    BBRAM_COMMIT = "bbram-commit"
    VERIFY = "verify"
    RECEIPTS = "receipts"
    AUDIT_ENTRY = "audit-entry"
    APPLET_SIGN = "applet-sign"
    SEAL = "seal"
    UNSEAL = "unseal"
    SESSION_KEY = "session-key"
    SECRET_SEAL = "secret-seal"
    SECRET_OPEN = "secret-open"


class RunnerOp(enum.StrEnum):
    START = "start"  # {job, uid, limits} + the job's socket
    KILL = "kill"  # {job}


#: The runner's one event: a job's process ended.
EXIT = "exit"
#: A job process's exit status when it could not confine itself (the applet never ran).
CONFINEMENT_FAILED = 71
#: Layer 0's exit status after a tamper trip; the cause is left in TAMPER_RECORD for PID 1.
TAMPERED_EXIT = 72
TAMPER_RECORD = "/run/sez/tampered"


class JobCall(enum.StrEnum):
    """What an applet may ask of the zone over its job socket."""

    SIGN = "sign"  # {data} -> its own signature, public key, certificate, chain
    LOG = "log"  # {message} -> one console line
    SEAL = "seal"  # {data} -> {blob}: only this applet (name, owner, device) opens it
    UNSEAL = "unseal"  # {blob} -> {data}
    SECRET = "secret"  # {name} -> {value}: a provisioned secret whose policy admits this applet


#: The events that end a job.
JOB_DONE, JOB_ERROR = "done", "error"


def listen(path: str) -> socket.socket:
    """A root-only SOCK_SEQPACKET server socket at ``path`` (its directory made 0700)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(4)
    return server


def size_buffers(sock: socket.socket) -> None:
    """A SOCK_SEQPACKET message must fit the socket buffer whole: make room for MAX_MESSAGE.
    In the zone no process keeps CAP_NET_ADMIN (firmware.runtime.caps): the plain options
    reach MAX_MESSAGE because PID 1 raised the kernel's ceilings (raise_buffer_limits)."""
    size = MAX_MESSAGE + (1 << 16)
    for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF),
                         (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:  # no CAP_NET_ADMIN: as much as the kernel's ceiling allows
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass


def raise_buffer_limits() -> bool:
    """PID 1, at boot: let any socket's buffers hold MAX_MESSAGE without CAP_NET_ADMIN (root's
    own sysctl files). Whether both ceilings are now high enough."""
    size = MAX_MESSAGE + (1 << 16)
    ok = True
    for path in BUFFER_LIMITS:
        try:
            with open(path, "r+") as f:
                if int(f.read()) < size:
                    f.seek(0)
                    f.write(str(size))
            with open(path) as f:
                ok = ok and int(f.read()) >= size
        except (OSError, ValueError):
            ok = False
    return ok
