"""Layer 0 and the key keeper: the only process in the zone that holds a private key.

PID 1 forks it with the fuses (UDS) it read from fw_cfg. It measures the layer-1 firmware,
derives DeviceID, UEID, the CDI and the alias key (firmware.dice), checks DeviceID against the
certificate the factory signed, issues the alias certificate, and wipes the UDS and the DeviceID
private key. Then it serves the monitor on a root-only unix socket (SOCK_SEQPACKET, one CBOR
message per packet, ``{id, op, args}`` -> ``{id, ok, result | error}``):

``identity``      UEID, alias and DeviceID certificates (DER), measurements, debug
``evidence``      ``{nonce, claims}`` -> an EAT signed by the alias key (firmware.abi.evidence)
``bbram-load``    the persistent state and the store's status (firmware.bbram)
``bbram-commit``  ``{state: CBOR bytes}`` -> make it the persistent state, durably
``verify``        ``{key, message}`` -> the payload of a COSE_Sign1 that ``key`` (SPKI) signed
``receipt``       ``{claims}`` -> a job receipt (COSE_Sign1 by the alias key)
``audit-entry``   ``{claims}`` -> an audit-log entry (COSE_Sign1 by the alias key, with kid)
``applet-sign``   ``{measurement, data}`` -> the applet's own signature, its public key and
                  its certificate (signed by the alias key)

The monitor, which parses everything that crosses the channel, never holds a key: it can ask
for evidence, not forge it.
"""

from __future__ import annotations

import datetime
import hashlib
import select
import time
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import FIRMWARE_VERSION, dice
from .abi import audit as audit_claims
from .abi import cose
from .abi import receipt as receipt_claims
from .bbram import Bbram, BbramError
from .abi import evidence as claims
from .abi.errors import Code
from .hardware import Hardware
from .links import KEEPER_TIMEOUT, MAX_MESSAGE, listen, size_buffers
from .reactor import foreground, log, log_exception

SOCKET = "/run/sez/keeper.sock"
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


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
        self.bbram = Bbram(dice.bbram_key(cdi))
        self._applet_keys: dict[bytes, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}

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
        return cose.sign1(cbor2.dumps(payload), self.alias, x5chain=self.chain)

    def receipt(self, extra: dict[Any, Any]) -> bytes:
        """A job receipt: the monitor's job claims, with this zone's identity and time."""
        return self._attested(receipt_claims.PROFILE, extra, x5chain=self.chain)

    def audit_entry(self, extra: dict[Any, Any]) -> bytes:
        """An audit-log entry: the chain travels beside the log, the entry names the key."""
        return self._attested(audit_claims.PROFILE, extra,
                              kid=hashlib.sha256(self.alias.public_key().public_bytes(*_SPKI))
                              .digest())

    def _attested(self, profile: str, extra: dict[Any, Any], **headers: Any) -> bytes:
        """``extra`` with this zone's UEID, time, boot counter and ``profile``, signed by the
        alias key. The monitor's claims may not set those."""
        if set(extra) & claims.KEEPER_CLAIMS:
            raise ValueError("the monitor may not set layer 0's claims")
        payload: dict[Any, Any] = {**extra, claims.UEID: self.ueid, claims.IAT: int(time.time()),
                                   claims.BOOTCOUNT: self.boot_counter, claims.PROFILE_KEY: profile}
        return cose.sign1(cbor2.dumps(payload), self.alias, **headers)

    def applet_sign(self, measurement: Any, data: Any) -> dict[str, Any]:
        """Sign ``data`` with the applet's own key (derived from the CDI and its measurement)."""
        if not isinstance(measurement, bytes) or len(measurement) != 48:
            raise ValueError("measurement must be 48 bytes")
        if not isinstance(data, bytes):
            raise ValueError("data must be bytes")
        if measurement not in self._applet_keys:
            key = dice.applet_key(self.cdi, measurement)
            cert = dice.issue_applet_cert(key.public_key(), self.alias,
                                          x509.load_der_x509_certificate(self.chain[0]),
                                          measurement,
                                          datetime.datetime.now(datetime.timezone.utc))
            self._applet_keys[measurement] = (key, cert.public_bytes(serialization.Encoding.DER))
        key, cert_der = self._applet_keys[measurement]
        return {"signature": key.sign(data, ec.ECDSA(hashes.SHA384())),
                "public_key": key.public_key().public_bytes(*_SPKI),
                "certificate": cert_der, "chain": self.chain}


def verify_signed(spki: Any, message: Any) -> bytes:
    """The payload of COSE_Sign1 ``message`` if the key ``spki`` made it; ValueError if not."""
    try:
        key = serialization.load_der_public_key(spki)
    except Exception as exc:
        raise ValueError(f"not a public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an EC public key")
    try:
        signed = cose.decode_sign1(message)
        signed.verify(key)
    except cose.CoseError as exc:
        raise ValueError(str(exc)) from exc
    return signed.payload


def key_id(spki: bytes) -> bytes:
    return hashlib.sha256(spki).digest()


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
            if op == "bbram-load":
                bbram = self.identity.bbram
                state = bbram.load()
                return {"id": request_id, "ok": True,
                        "result": {"status": bbram.status, "seq": bbram.seq, "state": state}}
            if op == "bbram-commit":
                state = args["state"]
                if not isinstance(state, bytes):
                    raise ValueError("bbram-commit takes {state: the CBOR-encoded state}")
                seq = self.identity.bbram.commit(state)
                return {"id": request_id, "ok": True, "result": {"seq": seq}}
            if op == "verify":
                payload = verify_signed(args.get("key"), args.get("message"))
                return {"id": request_id, "ok": True, "result": {"payload": payload}}
            if op == "receipt":
                return {"id": request_id, "ok": True,
                        "result": {"receipt": self.identity.receipt(args["claims"])}}
            if op == "audit-entry":
                return {"id": request_id, "ok": True,
                        "result": {"entry": self.identity.audit_entry(args["claims"])}}
            if op == "applet-sign":
                return {"id": request_id, "ok": True, "result": self.identity.applet_sign(
                    args.get("measurement"), args.get("data"))}
            return _error(request_id, Code.UNKNOWN_OP, f"keeper has no op {op!r}")
        except BbramError as exc:
            return _error(request_id, Code.BBRAM, str(exc))
        except (ValueError, KeyError, TypeError) as exc:
            return _error(request_id, Code.BAD_ARGS, str(exc))

    def serve(self) -> None:
        """Serve the monitor, one connection at a time. Waits on a connection are bounded by
        KEEPER_TIMEOUT: a reply the monitor does not take by then drops the connection (the
        call has expired on its side too), and a connection idle that long gives way to a
        monitor waiting to connect (a restarted one)."""
        server = listen(SOCKET)
        while True:
            conn, _ = server.accept()
            size_buffers(conn)
            conn.settimeout(KEEPER_TIMEOUT)
            with conn:
                while True:
                    try:
                        message = conn.recv(MAX_MESSAGE)
                    except TimeoutError:
                        if select.select([server], [], [], 0)[0]:
                            log("layer 0: a new connection replaces an idle one")
                            break
                        continue
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
    foreground()
    Keeper(identity, failure).serve()

