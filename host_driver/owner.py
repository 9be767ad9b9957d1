"""The owner's tools: owner keys, applet packages, enrolment authorizations, schedule changes.

    key = generate_owner_key("owner.pem")
    signed = build_applet("docs/examples/key-custody", key)       # the .sez bytes
    measurement = package_measurement(signed)

Packing is deterministic (firmware.abi.applet: the same directory always gives the same
package and measurement); the signature (ECDSA, randomized) is a COSE_Sign1 whose ``kid`` is
the SHA-256 of the owner's public key.
"""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from firmware.abi import applet as applets
from firmware.abi import cose, keys
from firmware.abi import schedule as schedules
from firmware.abi.errors import SezError

__all__ = ["generate_owner_key", "load_owner_key", "owner_spki", "read_applet_files",
           "build_applet", "package_of", "package_measurement", "enroll_authorization",
           "schedule_change", "unschedule_change"]

def generate_owner_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """A new owner key (ECDSA P-384), written to ``path`` (PEM, PKCS#8, mode 0600)."""
    key = ec.generate_private_key(ec.SECP384R1())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return key


def load_owner_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise SezError(f"cannot read the owner key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve,
                                                                         ec.SECP384R1):
        raise SezError(f"{path} is not an ECDSA P-384 key (make one: sez owner keygen)")
    return key


def owner_spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return keys.spki(key)


def read_applet_files(directory: Path | str) -> dict[str, bytes]:
    """Every regular file under ``directory`` (no hidden files, no __pycache__, no links)."""
    root = Path(directory)
    if not (root / "manifest.toml").is_file():
        raise SezError(f"{root} has no manifest.toml: not an applet directory")
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
            continue
        if path.is_symlink():
            raise SezError(f"{rel} is a symbolic link: applets hold regular files only")
        if path.is_file():
            files[rel] = path.read_bytes()
    return files


def _sign(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """COSE_Sign1 by the owner: alg ES384, kid = SHA-256(SPKI)."""
    return cose.sign1(payload, key, kid=keys.key_id(owner_spki(key)))


def build_applet(directory: Path | str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Pack ``directory`` canonically and sign it: the bytes of a .sez file."""
    return _sign(applets.pack_files(read_applet_files(directory)), key)


def package_of(signed: bytes) -> applets.Package:
    """The package inside a .sez file (its signature is the zone's to check)."""
    return applets.parse(cose.decode_sign1(signed).payload)


def package_measurement(signed: bytes) -> bytes:
    return package_of(signed).measurement


def enroll_authorization(current: ec.EllipticCurvePrivateKey, new_owner: bytes, ueid: bytes,
                         epoch: int) -> bytes:
    """The current owner's consent to hand the zone ``ueid`` over to ``new_owner`` (SPKI)."""
    return _sign(cbor2.dumps({"op": "enroll", "owner": new_owner, "ueid": ueid,
                              "epoch": epoch}), current)


def schedule_change(key: ec.EllipticCurvePrivateKey, *, ueid: bytes, epoch: int, name: str,
                    applet: str, measurement: bytes, input: bytes, every: int) -> bytes:
    """The owner's order to run ``applet`` (pinned to ``measurement``) on ``input`` every
    ``every`` seconds on device ``ueid``; ``epoch`` is the zone's schedule epoch now."""
    change = schedules.Change("schedule", ueid, epoch, name, applet, measurement, input, every)
    schedules.parse(change.document())  # refuse here what the zone would refuse
    return _sign(cbor2.dumps(change.document()), key)


def unschedule_change(key: ec.EllipticCurvePrivateKey, *, ueid: bytes, epoch: int,
                      name: str) -> bytes:
    """The owner's order to remove schedule ``name`` from device ``ueid``."""
    change = schedules.Change("unschedule", ueid, epoch, name)
    schedules.parse(change.document())
    return _sign(cbor2.dumps(change.document()), key)
