"""Layer 0, the key keeper: the only process in the zone that holds a private key.

PID 1 forks it with the fuses (UDS) it read from fw_cfg. It measures the layer-1 firmware,
derives its identity (firmware.layer0.identity), wipes the UDS and the DeviceID private key,
and serves the monitor on a root-only unix socket (firmware.runtime.ipc):

``identity``      UEID, alias and DeviceID certificates (DER), measurements, debug
``evidence``      ``{nonce, claims}`` -> an EAT signed by the alias key (abi.evidence)
``bbram-load``    ``{status, seq, state, changes, more, room}``: the newest checkpoint, the
                  first changes logged since (firmware.layer0.bbram) and the largest change
                  the log takes; ``{after: n}`` -> ``{changes, more}``: the changes from the
                  n-th on. Each answer carries at most CHANGE_MAX bytes of changes (a
                  unix socket's message must fit one kernel allocation), and ``more`` says
                  whether others follow
``bbram-commit``  ``{change: CBOR bytes}`` (logged) or ``{state: CBOR bytes}`` (a checkpoint
                  of the whole state) -> ``{seq, room}`` once BBRAM holds it durably
``verify``        ``{key, message}`` -> the payload of a COSE_Sign1 that ``key`` (SPKI) signed
``receipts``      ``{jobs: [claims]}`` -> ``{receipts}``: the jobs' receipts under one signature
                  by the alias key (abi.receipt)
``audit-entry``   ``{claims}`` -> an audit-log entry (COSE_Sign1 by the alias key, with kid)
``applet-sign``   ``{measurement, data}`` -> the applet's own signature, its public key and
                  its certificate (signed by the alias key)
``seal``          ``{owner, name, version, data}`` -> a blob only that applet opens
``unseal``        ``{owner, name, version, blob}`` -> the data (firmware.layer0.sealing)
``secret-seal``   ``{name, policy, value}`` -> ``{blob}``: a provisioned secret, sealed to its
                  name and policy (abi.secret; firmware.layer0.secrets)
``secret-open``   ``{name, policy, blob, applet: {measurement, name, version, owner}}`` ->
                  ``{value}`` if the policy admits that applet; ``secret-denied`` if not
``session-key``   -> ``{key, chain}`` (PEM): a new TLS key for the monitor's sessions and its
                  certificate (issued by the alias key); evidence names it from then on

Layer 0 also watches the tamper line (firmware.layer0.tamper): a trip ends every other zone
process, wipes BBRAM, and ends layer 0 itself (``Keeper.zeroise``).

The monitor, which parses everything that crosses the channel, holds no key but its sessions'
TLS key of this boot: it can ask for evidence, not forge it. What layer 0 trusts is what it
imports: firmware.abi (the contract, with the DICE derivations), its own modules, PID 1's
hand-over record (firmware.pid1.hardware) and the runtime's console, priority, socket and
port-finding helpers; never the monitor, the runner or anything that parses host input.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from typing import Any, Callable

import cbor2

from ..abi.errors import BadArgs, BadRequest, NoIdentity, Tampered, UnknownOp, ZoneError
from ..pid1.hardware import Hardware
from ..runtime.console import log, log_exception
from ..runtime.ipc import (KEEPER_SOCKET, KEEPER_TIMEOUT, MAX_MESSAGE, TAMPER_RECORD,
                           TAMPERED_EXIT, KeeperOp, listen, size_buffers)
from ..runtime.process import foreground
from . import bbram
from .bbram import CHANGE_MAX
from .identity import Identity, verify_signed
from .secrets import Applet
from .tamper import TamperLine


class Keeper:
    def __init__(self, identity: Identity | None, failure: str | None,
                 tampered: str | None = None) -> None:
        self.identity = identity
        self.failure = failure
        self.tampered = tampered
        self.ops = self._ops(identity) if identity is not None else {}

    def _ops(self, identity: Identity) -> dict[str, Callable[[dict[str, Any]], Any]]:
        bbram = identity.bbram

        logged: list[dict[str, Any]] = []  # the changes the last load read

        def load(args: dict[str, Any]) -> dict[str, Any]:
            after = args.get("after")
            if after is not None:
                if type(after) is not int or not 0 <= after <= len(logged):
                    raise ValueError("after must count the changes already taken")
                return page(after)
            state, logged[:] = bbram.load()
            return {"status": bbram.status, "seq": bbram.seq, "state": state,
                    "room": bbram.room, **page(0)}

        def page(start: int) -> dict[str, Any]:
            end, size = start, 0
            while end < len(logged):
                size += bbram.change_sizes[end]
                if size > CHANGE_MAX and end > start:
                    break
                end += 1
            return {"changes": logged[start:end], "more": end < len(logged)}

        def commit(args: dict[str, Any]) -> dict[str, Any]:
            change, state = args.get("change"), args.get("state")
            if isinstance(change, bytes):
                seq = bbram.append(change)
            elif isinstance(state, bytes):
                seq = bbram.commit(state)
            else:
                raise ValueError("bbram-commit takes {change} or {state}: CBOR bytes")
            return {"seq": seq, "room": bbram.room}

        return {
            KeeperOp.IDENTITY: lambda args: identity.describe(),
            KeeperOp.EVIDENCE: lambda args: {"evidence": identity.evidence(
                args.get("nonce"), args.get("claims") or {})},
            KeeperOp.BBRAM_LOAD: load,
            KeeperOp.BBRAM_COMMIT: commit,
            KeeperOp.VERIFY: lambda args: {"payload": verify_signed(args.get("key"),
                                                                    args.get("message"))},
            KeeperOp.RECEIPTS: lambda args: {"receipts": identity.receipts(args.get("jobs"))},
            KeeperOp.AUDIT_ENTRY: lambda args: {"entry": identity.audit_entry(args["claims"])},
            KeeperOp.APPLET_SIGN: lambda args: identity.applet_sign(args.get("measurement"),
                                                                    args.get("data")),
            KeeperOp.SESSION_KEY: lambda args: identity.session_key(),
            KeeperOp.SEAL: lambda args: {"blob": identity.sealer.seal(
                _bytes(args, "owner"), _text(args, "name"), _version(args),
                _bytes(args, "data"))},
            KeeperOp.UNSEAL: lambda args: {"data": identity.sealer.unseal(
                _bytes(args, "owner"), _text(args, "name"), _version(args),
                _bytes(args, "blob"))},
            KeeperOp.SECRET_SEAL: lambda args: {"blob": identity.secrets.seal(
                args.get("name"), args.get("policy"), args.get("value"))},
            KeeperOp.SECRET_OPEN: lambda args: {"value": identity.secrets.open(
                args.get("name"), args.get("policy"), args.get("blob"),
                Applet(args.get("applet")))},
        }

    def handle(self, message: bytes) -> dict[str, Any]:
        request_id = None
        try:
            try:
                request = cbor2.loads(message)
                request_id, op, args = request["id"], request["op"], request.get("args") or {}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BadRequest(f"keeper: {exc}") from None
            if self.tampered is not None:
                raise Tampered(f"the zone was tampered with ({self.tampered}) and zeroised: "
                               "its keys, BBRAM and secrets are gone; provision the device "
                               "anew (sez device new NAME --force)")
            if self.identity is None:
                raise NoIdentity(f"no identity: {self.failure}")
            handler = self.ops.get(op)
            if handler is None:
                raise UnknownOp(f"keeper has no op {op!r}")
            try:
                return {"id": request_id, "ok": True, "result": handler(args)}
            except (ValueError, KeyError, TypeError) as exc:
                raise BadArgs(str(exc)) from None
        except ZoneError as exc:
            return {"id": request_id, "ok": False,
                    "error": {"code": exc.code, "message": exc.message}}

    def serve(self, tamper: TamperLine | None = None) -> None:
        """Serve the monitor, one connection at a time, and watch the tamper line. A reply
        the monitor does not take within KEEPER_TIMEOUT drops the connection (the call has
        expired on its side too); a new connection replaces the old one (a restarted
        monitor). A trip on the tamper line zeroises the zone (``zeroise``) and ends layer 0."""
        server = listen(KEEPER_SOCKET)
        conn: socket.socket | None = None
        while True:
            watched: list[Any] = [server] + ([conn] if conn is not None else [])
            if tamper is not None and tamper.listening():
                watched.append(tamper)
            ready = select.select(watched, [], [], 1.0)[0]
            if tamper is not None and tamper in ready:
                cause = tamper.read_trip()
                if cause is not None:
                    server.close()  # a restarted monitor waits for the next keeper
                    try:
                        os.unlink(KEEPER_SOCKET)
                    except OSError:  # nothing may keep the zone from zeroising
                        pass
                    tamper.acknowledge(self.zeroise(cause))
                    _end_tampered(cause)
            if server in ready:
                if conn is not None:
                    conn.close()
                conn, _ = server.accept()
                size_buffers(conn)
                conn.settimeout(KEEPER_TIMEOUT)
            elif conn is not None and conn in ready:
                try:
                    message = conn.recv(MAX_MESSAGE)
                    if message:
                        conn.send(cbor2.dumps(self.handle(message)))
                        continue
                except OSError:
                    pass
                conn.close()
                conn = None

    def zeroise(self, cause: str) -> float:
        """The tamper response: every other zone process ends at once (SIGKILL to all but
        PID 1 and this one: the monitor and its decrypted state, the runner, every job),
        both BBRAM slots are overwritten with zeros, every key is dropped. Returns the
        milliseconds it took. Layer 0 then exits (its memory goes with it) and PID 1 starts
        a keeper that answers ``tampered`` (firmware.pid1.supervisor)."""
        started = time.monotonic()
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        bbram.wipe()
        self.identity, self.ops, self.failure = None, {}, f"tampered: {cause}"
        return (time.monotonic() - started) * 1000


def _bytes(args: dict[str, Any], key: str) -> bytes:
    value = args.get(key)
    if not isinstance(value, bytes):
        raise ValueError(f"{key} must be bytes")
    return value


def _text(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text")
    return value


def _version(args: dict[str, Any]) -> int:
    value = args.get("version")
    if type(value) is not int or not 1 <= value < 1 << 32:
        raise ValueError("version must be an integer >= 1")
    return value


def _end_tampered(cause: str) -> None:
    """Leave the cause for PID 1 and exit: this process's memory, which held the keys, goes
    with it."""
    try:
        with open(TAMPER_RECORD, "w") as f:
            f.write(cause)
    except OSError:
        pass
    log(f"layer 0: TAMPERED ({cause}): zeroised")
    os._exit(TAMPERED_EXIT)


def serve_tampered(cause: str) -> None:
    """What PID 1 runs in place of layer 0 after a trip: a keeper with nothing to keep,
    answering ``tampered`` to every request (PID 1 forks it from its own clean memory)."""
    foreground()
    Keeper(None, None, tampered=cause).serve()


def main(hw: Hardware) -> None:
    started = time.monotonic()
    tamper = TamperLine.open()
    identity, failure = None, None
    try:
        identity = Identity(hw)
        log(f"layer 0: identity {identity.ueid.hex()} derived in "
            f"{time.monotonic() - started:.2f} s; alias key certified")
    except NoIdentity as exc:
        failure = exc.message
        log(f"layer 0: NO IDENTITY: {failure}")
    except Exception:  # whatever broke, the keeper still answers: no-identity, saying so
        failure = "layer 0 failed (see the console)"
        log_exception("layer 0 failed")
    foreground()
    Keeper(identity, failure).serve(tamper)
