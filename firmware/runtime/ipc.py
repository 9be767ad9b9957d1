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
           "RunnerOp", "EXIT", "CONFINEMENT_FAILED", "TAMPERED_EXIT", "TAMPER_RECORD", "JobCall", "JOB_DONE", "JOB_ERROR", "listen", "size_buffers"]

KEEPER_SOCKET = "/run/sez/keeper.sock"
RUNNER_SOCKET = "/run/sez/runner.sock"
#: Largest message between zone processes (the whole BBRAM state travels in one).
MAX_MESSAGE = 16 << 20
#: The most seconds a keeper call may take; the keeper drops a connection idle that long.
KEEPER_TIMEOUT = 30.0
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # Linux: root may exceed wmem_max/rmem_max


class KeeperOp(enum.StrEnum):
    """What the monitor may ask of layer 0 (firmware.layer0.keeper documents each)."""

    IDENTITY = "identity"
    EVIDENCE = "evidence"
    BBRAM_LOAD = "bbram-load"
    BBRAM_COMMIT = "bbram-commit"
    VERIFY = "verify"
    RECEIPT = "receipt"
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
    """A SOCK_SEQPACKET message must fit the socket buffer whole: make room for MAX_MESSAGE."""
    for option in (_SO_SNDBUFFORCE, _SO_RCVBUFFORCE):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, MAX_MESSAGE + (1 << 16))
        except OSError:  # not root (the host-native baseline): the defaults must do
            pass
