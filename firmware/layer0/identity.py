"""Layer 0's identity: what it derives from the fuses, and everything it signs with it.

From the UDS and the measurements (firmware.abi.dice): DeviceID (checked against the
certificate the factory signed, then dropped), the UEID, the CDI, the alias key (certified
here, by DeviceID), the BBRAM key, and each applet's own key. Signing: evidence
(abi.evidence), job receipts (abi.receipt), audit-log entries (abi.audit) and applet
signatures; verifying: a COSE_Sign1 against a given public key (the owner's); sealing for
applets (firmware.layer0.sealing) and of provisioned secrets (firmware.layer0.secrets).
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .. import FIRMWARE_VERSION
from ..abi import audit as audit_claims
from ..abi import claims, cose, dice, evidence, keys
from ..abi import receipt as receipt_claims
from ..abi.errors import NoIdentity
from ..pid1.hardware import Hardware
from .bbram import Bbram
from .sealing import Sealer
from .secrets import SecretSealer

__all__ = ["Identity", "verify_signed"]


class Identity:
    """What layer 0 derived: the alias key and what evidence says about this boot."""

    def __init__(self, hw: Hardware, root: str = "/") -> None:
        if hw.uds is None or hw.device_id_cert is None:
            raise NoIdentity("the hardware passed no fuses or no DeviceID certificate")
        measurements = dict(hw.measurements)
        measurements["firmware"] = dice.measure_firmware(root)
        missing = [m for m in dice.MEASURED if m not in measurements]
        if missing:
            raise NoIdentity(f"the hardware passed no measurement of {', '.join(missing)}")
        uds = hw.uds
        try:
            device_id = dice.device_id_key(uds)
            self.ueid = dice.ueid(uds)
            cdi = dice.cdi(uds, measurements, hw.debug)
            seal_root = dice.seal_root(uds, hw.debug)
            self.sealer = Sealer(seal_root, self.ueid)
            self.secrets = SecretSealer(seal_root, self.ueid, hw.debug)
        finally:
            uds[:] = bytes(len(uds))  # layer 0 is done with the fuses
        certified = x509.load_pem_x509_certificate(hw.device_id_cert)
        certified_key = certified.public_key()
        if not isinstance(certified_key, ec.EllipticCurvePublicKey) or (
                keys.spki(certified_key) != keys.spki(device_id)):
            raise NoIdentity("the fuses do not match the DeviceID certificate")
        self.alias = dice.alias_key(cdi)
        alias_cert = dice.issue_alias_cert(
            self.alias.public_key(), device_id, certified, self.ueid, measurements,
            FIRMWARE_VERSION, hw.debug, datetime.datetime.now(datetime.timezone.utc))
        del device_id  # the DeviceID private key does not outlive layer 0
        self.cdi = cdi
        self.measurements = measurements
        self.debug = hw.debug
        self.boot_counter = hw.boot_counter
        self.tamper = dict(hw.tamper)
        self.chain = [alias_cert.public_bytes(serialization.Encoding.DER),
                      certified.public_bytes(serialization.Encoding.DER)]
        self.bbram = Bbram(dice.bbram_key(cdi))
        self._applet_keys: dict[bytes, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
        self._session_key: bytes | None = None

    def describe(self) -> dict[str, Any]:
        return {"ueid": self.ueid, "alias_cert": self.chain[0], "device_id_cert": self.chain[1],
                "measurements": self.measurements, "debug": self.debug}

    def evidence(self, nonce: Any, extra: dict[Any, Any]) -> bytes:
        """An EAT for ``nonce``: the monitor's claims ``extra`` and layer 0's own, signed."""
        if not isinstance(nonce, bytes) or not (
                evidence.NONCE_MIN <= len(nonce) <= evidence.NONCE_MAX):
            raise ValueError(f"the nonce must be {evidence.NONCE_MIN} to {evidence.NONCE_MAX} "
                             "bytes")
        if set(extra) & evidence.KEEPER_CLAIMS:
            raise ValueError("the monitor may not set layer 0's claims")
        payload = {
            **extra,
            claims.NONCE: nonce,
            claims.UEID: self.ueid,
            claims.IAT: int(time.time()),
            claims.PROFILE_KEY: evidence.PROFILE,
            claims.DBGSTAT: (evidence.DBGSTAT_ENABLED if self.debug
                             else evidence.DBGSTAT_DISABLED_SINCE_BOOT),
            claims.BOOTCOUNT: self.boot_counter,
            evidence.MEASUREMENTS: self.measurements,
            evidence.DEBUG: self.debug,
            evidence.FIRMWARE: FIRMWARE_VERSION,
            evidence.TAMPER_STATE: self.tamper,
        }
        if self._session_key is not None:
            payload[evidence.SESSION_KEY] = self._session_key
        return cose.sign1(cbor2.dumps(payload), self.alias, x5chain=self.chain)

    def receipts(self, jobs: Any) -> list[bytes]:
        """The receipts of these jobs (the monitor's claims of each), under one signature:
        each job's claims, salted, are a leaf of a tree whose root the alias key signs with
        this zone's identity and time (abi.receipt)."""
        if not (isinstance(jobs, list) and 1 <= len(jobs) <= receipt_claims.SIGNED_MAX
                and all(isinstance(job, dict) for job in jobs)):
            raise ValueError(f"receipts takes 1 to {receipt_claims.SIGNED_MAX} jobs' claims")
        if any(set(job) & evidence.KEEPER_CLAIMS for job in jobs):
            raise ValueError("the monitor may not set layer 0's claims")
        leaves = [cbor2.dumps({**job, receipt_claims.SALT: os.urandom(16)}) for job in jobs]
        root, paths = receipt_claims.tree([receipt_claims.leaf_hash(leaf) for leaf in leaves])
        payload = self._claims(receipt_claims.PROFILE, {
            receipt_claims.TREE: {"size": len(leaves), "root": root}})
        return cose.sign1_each(cbor2.dumps(payload), self.alias, [
            {receipt_claims.LEAF: receipt_claims.proof(i, path, leaf)}
            for i, (path, leaf) in enumerate(zip(paths, leaves))], x5chain=self.chain)

    def audit_entry(self, extra: dict[Any, Any]) -> bytes:
        """An audit-log entry: the chain travels beside the log, the entry names the key."""
        return self._attested(audit_claims.PROFILE, extra,
                              kid=keys.key_id(keys.spki(self.alias)))

    def _attested(self, profile: str, extra: dict[Any, Any], **headers: Any) -> bytes:
        """``extra`` with this zone's identity and time (``_claims``), signed by the alias
        key."""
        return cose.sign1(cbor2.dumps(self._claims(profile, extra)), self.alias, **headers)

    def _claims(self, profile: str, extra: dict[Any, Any]) -> dict[Any, Any]:
        """``extra`` with this zone's UEID, time, boot counter and ``profile``. The monitor's
        claims may not set those."""
        if set(extra) & evidence.KEEPER_CLAIMS:
            raise ValueError("the monitor may not set layer 0's claims")
        return {**extra, claims.UEID: self.ueid, claims.IAT: int(time.time()),
                claims.BOOTCOUNT: self.boot_counter, claims.PROFILE_KEY: profile}

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
                "public_key": keys.spki(key),
                "certificate": cert_der, "chain": self.chain}


    def session_key(self) -> dict[str, Any]:
        """A new TLS key for the monitor's sessions, with its certificate chain (PEM): the
        monitor terminates TLS, so it holds this key, for this boot only; the evidence layer 0
        signs from now on names it (claim ``sez.session_key``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = dice.issue_session_cert(key.public_key(), self.alias,
                                       x509.load_der_x509_certificate(self.chain[0]), self.ueid,
                                       datetime.datetime.now(datetime.timezone.utc))
        self._session_key = keys.key_id(keys.spki(key))
        pem = serialization.Encoding.PEM
        chain = [cert.public_bytes(pem)] + [
            x509.load_der_x509_certificate(der).public_bytes(pem) for der in self.chain]
        return {"key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()),
                "chain": b"".join(chain)}


def verify_signed(spki: Any, message: Any) -> bytes:
    """The payload of COSE_Sign1 ``message`` if the key ``spki`` made it; ValueError if not."""
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an EC public key")
    try:
        signed = cose.decode_sign1(message)
        signed.verify(key)
    except cose.CoseError as exc:
        raise ValueError(str(exc)) from exc
    return signed.payload
