"""Layer 0 and the key keeper: the only process in the zone that holds a private key.

PID 1 forks it with the fuses (UDS) it read from fw_cfg. It measures the layer-1 firmware,
derives DeviceID, UEID, the CDI and the alias key (firmware.dice), checks DeviceID against the
certificate the factory signed, issues the alias certificate, and wipes the UDS and the DeviceID
private key. Then it serves the monitor on a root-only unix socket (SOCK_SEQPACKET, one CBOR
message per packet, ``{id, op, args}`` -> ``{id, ok, result | error}``):

``identity``   UEID, alias and DeviceID certificates (DER), measurements, debug
``evidence``   ``{nonce}`` -> an EAT signed by the alias key (firmware.abi.evidence)

The monitor, which parses everything that crosses the channel, never holds a key: it can ask
for evidence, not forge it.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import FIRMWARE_VERSION, dice
from .abi import cose
from .abi import evidence as claims
from .abi.errors import Code
from .hardware import Hardware
from .reactor import log, log_exception

SOCKET_DIR = "/run/sez"
SOCKET = f"{SOCKET_DIR}/keeper.sock"
MAX_MESSAGE = 1 << 20


class IdentityError(Exception):
    """The zone has no usable identity (no fuses, or fuses that do not match DeviceID)."""


class Identity:
    """What layer 0 derived: the alias key and what evidence says about this boot."""

    def __init__(self, hw: Hardware, root: str = "/") -> None:
        if hw.uds is None or hw.device_id_cert is None:
            raise IdentityError("the hardware passed no fuses or no DeviceID certificate")
        measurements = dict(hw.measurements)
        measurements["firmware"] = dice.measure_firmware(root)
        missing = [m for m in dice.MEASURED if m not in measurements]
        if missing:
            raise IdentityError(f"the hardware passed no measurement of {', '.join(missing)}")
        uds = hw.uds
        try:
            device_id = dice.device_id_key(uds)
            self.ueid = dice.ueid(uds)
            cdi = dice.cdi(uds, measurements, hw.debug)
        finally:
            uds[:] = bytes(len(uds))  # layer 0 is done with the fuses
        certified = x509.load_pem_x509_certificate(hw.device_id_cert)
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if certified.public_key().public_bytes(*spki) != device_id.public_key().public_bytes(*spki):
            raise IdentityError("the fuses do not match the DeviceID certificate")
        self.alias = dice.alias_key(cdi)
        alias_cert = dice.issue_alias_cert(
            self.alias.public_key(), device_id, certified, self.ueid, measurements,
            FIRMWARE_VERSION, hw.debug, datetime.datetime.now(datetime.timezone.utc))
        del device_id  # the DeviceID private key does not outlive layer 0
        self.cdi = cdi
        self.measurements = measurements
        self.debug = hw.debug
        self.boot_counter = hw.boot_counter
        self.chain = [alias_cert.public_bytes(serialization.Encoding.DER),
                      certified.public_bytes(serialization.Encoding.DER)]

    def describe(self) -> dict[str, Any]:
        return {"ueid": self.ueid, "alias_cert": self.chain[0], "device_id_cert": self.chain[1],
                "measurements": self.measurements, "debug": self.debug}

    def evidence(self, nonce: Any, extra: dict[Any, Any]) -> bytes:
        if not isinstance(nonce, bytes) or not claims.NONCE_MIN <= len(nonce) <= claims.NONCE_MAX:
            raise ValueError(f"the nonce must be {claims.NONCE_MIN} to {claims.NONCE_MAX} bytes")
        if set(extra) & claims.KEEPER_CLAIMS:
            raise ValueError("the monitor may not set layer 0's claims")
        payload = {
            **extra,
            claims.NONCE: nonce,
            claims.UEID: self.ueid,
            claims.IAT: int(time.time()),
            claims.PROFILE_KEY: claims.PROFILE,
            claims.DBGSTAT: (claims.DBGSTAT_ENABLED if self.debug
                             else claims.DBGSTAT_DISABLED_SINCE_BOOT),
            claims.BOOTCOUNT: self.boot_counter,
            claims.MEASUREMENTS: self.measurements,
            claims.DEBUG: self.debug,
            claims.FIRMWARE: FIRMWARE_VERSION,
        }
        return cose.sign1(cbor2.dumps(payload), self.alias, self.chain)


class Keeper:
    def __init__(self, identity: Identity | None, failure: str | None) -> None:
        self.identity = identity
        self.failure = failure

    def handle(self, message: bytes) -> dict[str, Any]:
        try:
            request = cbor2.loads(message)
            request_id, op, args = request["id"], request["op"], request.get("args") or {}
        except Exception as exc:
            return {"id": None, "ok": False,
                    "error": {"code": Code.BAD_REQUEST, "message": f"keeper: {exc}"}}
        try:
            if self.identity is None:
                return _error(request_id, Code.NO_IDENTITY, f"no identity: {self.failure}")
            if op == "identity":
                return {"id": request_id, "ok": True, "result": self.identity.describe()}
            if op == "evidence":
                evidence = self.identity.evidence(args.get("nonce"), args.get("claims") or {})
                return {"id": request_id, "ok": True, "result": {"evidence": evidence}}
            return _error(request_id, Code.UNKNOWN_OP, f"keeper has no op {op!r}")
        except ValueError as exc:
            return _error(request_id, Code.BAD_ARGS, str(exc))

    def serve(self) -> None:
        os.makedirs(SOCKET_DIR, mode=0o700, exist_ok=True)
        try:
            os.unlink(SOCKET)
        except FileNotFoundError:
            pass
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server.bind(SOCKET)
        os.chmod(SOCKET, 0o600)
        server.listen(4)
        while True:
            conn, _ = server.accept()
            with conn:
                while True:
                    try:
                        message = conn.recv(MAX_MESSAGE)
                    except OSError:
                        break
                    if not message:
                        break
                    try:
                        conn.send(cbor2.dumps(self.handle(message)))
                    except OSError:
                        break


def _error(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def main(hw: Hardware) -> None:
    started = time.monotonic()
    identity, failure = None, None
    try:
        identity = Identity(hw)
        log(f"layer 0: identity {identity.ueid.hex()} derived in "
            f"{time.monotonic() - started:.2f} s; alias key certified")
    except IdentityError as exc:
        failure = str(exc)
        log(f"layer 0: NO IDENTITY: {failure}")
    except Exception:
        failure = "layer 0 failed (see the console)"
        log_exception("layer 0 failed")
    Keeper(identity, failure).serve()

