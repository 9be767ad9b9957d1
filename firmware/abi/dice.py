"""DICE layering (TCG DICE): what is derived from the unique device secret, and how.

::

    UDS (32 random bytes: the fuses)
     +-- DeviceID key   = P384(HKDF(UDS, "DeviceID"))            certified by the factory root
     +-- UEID           = 0x01 || HKDF(UDS, "UEID")[:16]          (EAT UEID, type RAND)
     +-- CDI            = HKDF(UDS, salt = SHA-384(measurements || mode), "CDI")
          +-- Alias key = P384(HKDF(CDI, "Alias"))                certified by DeviceID, with
                                                                  a TcbInfo extension

The factory (on the host) and layer 0 (in the zone) run this same code, so the key layer 0
derives is the one the factory certified. A changed kernel, initramfs, command line or firmware
changes the CDI and so the alias key; so does debug mode. Keys are P-384 scalars reduced from
64 bytes of HKDF-SHA384 output (bias below 2^-128).

Runs in the guest and on the host: cryptography and pyasn1 only.
"""

from __future__ import annotations

import datetime
import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import char, namedtype, tag, univ

from .device import UDS_SIZE
from .keys import key_id, spki

__all__ = [
    "MEASURED", "UDS_SIZE", "TCB_INFO_OID", "device_id_key", "ueid", "cdi", "alias_key",
    "bbram_key", "applet_key", "seal_root", "sealing_key", "secret_key",
    "derive_key", "measure_firmware", "measurement_digest", "encode_tcb_info", "decode_tcb_info",
    "issue_alias_cert", "issue_applet_cert", "issue_session_cert", "device_id_name",
]

#: What the zone's evidence measures, in this order (also the order of the TcbInfo fwids).
MEASURED = ("kernel", "initramfs", "cmdline", "firmware")
TCB_INFO_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
SHA384_OID = univ.ObjectIdentifier("2.16.840.1.101.3.4.2.2")
_SALT = b"SEZ DICE v1"
_P384_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
                  "581a0db248b0a77aecec196accc52973", 16)
#: The firmware as measured: /init and the firmware package, paths relative to the image root.
FIRMWARE_PATHS = ("init", "opt/sez/firmware")


def _kdf(secret: bytes | bytearray, info: bytes, length: int, salt: bytes = _SALT) -> bytes:
    return HKDF(algorithm=hashes.SHA384(), length=length, salt=salt, info=info).derive(secret)


def derive_key(secret: bytes | bytearray, label: bytes) -> ec.EllipticCurvePrivateKey:
    seed = _kdf(secret, b"key:" + label, 64)
    scalar = int.from_bytes(seed, "big") % (_P384_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP384R1())


def device_id_key(uds: bytes | bytearray) -> ec.EllipticCurvePrivateKey:
    _check_uds(uds)
    return derive_key(uds, b"DeviceID")


def ueid(uds: bytes | bytearray) -> bytes:
    _check_uds(uds)
    return b"\x01" + _kdf(uds, b"UEID", 16)


def measurement_digest(measurements: dict[str, bytes], debug: bool) -> bytes:
    """SHA-384 over the measurements in MEASURED order and the mode (debug or not)."""
    h = hashlib.sha384()
    for name in MEASURED:
        value = measurements[name]
        if len(value) != 48:
            raise ValueError(f"measurement {name} must be 48 bytes (SHA-384), not {len(value)}")
        h.update(name.encode() + b"\0" + value)
    h.update(b"mode\0" + (b"debug" if debug else b"normal"))
    return h.digest()


def cdi(uds: bytes | bytearray, measurements: dict[str, bytes], debug: bool) -> bytes:
    _check_uds(uds)
    return _kdf(uds, b"CDI", 48, salt=measurement_digest(measurements, debug))


def alias_key(cdi_value: bytes) -> ec.EllipticCurvePrivateKey:
    return derive_key(cdi_value, b"Alias")


def bbram_key(cdi_value: bytes) -> bytes:
    """The AES-256-GCM key that seals BBRAM: bound to this device and this firmware."""
    return _kdf(cdi_value, b"BBRAM", 32)


def seal_root(uds: bytes | bytearray, debug: bool) -> bytes:
    """The root of applets' sealing keys: bound to the device and the mode, not to the
    firmware, so what applets sealed survives a firmware update (the owner and the applet's
    name and version bind each key: see sealing_key)."""
    _check_uds(uds)
    return _kdf(uds, b"Seal:" + (b"debug" if debug else b"normal"), 32)


def sealing_key(root: bytes, owner: bytes, name: str, version: int) -> bytes:
    """The AES-256-GCM key for blobs that version ``version`` of applet ``name`` seals under
    the owner whose key id is ``owner``."""
    return _kdf(root, b"SealKey\0" + owner + b"\0" + name.encode() + b"\0"
                + version.to_bytes(4, "big"), 32)


def secret_key(root: bytes) -> bytes:
    """The AES-256-GCM key that seals provisioned secrets (firmware.layer0.secrets): from the
    seal root, so bound to the device and the mode and not to the firmware; each secret's
    name and policy are bound by the AEAD's associated data, not by the key."""
    return _kdf(root, b"SecretKey", 32)


def applet_key(cdi_value: bytes, measurement: bytes) -> ec.EllipticCurvePrivateKey:
    """An applet's own signing key: bound to the device, the firmware and the applet's code."""
    return derive_key(cdi_value, b"Applet:" + measurement)


def _check_uds(uds: bytes | bytearray) -> None:
    if len(uds) != UDS_SIZE:
        raise ValueError(f"the UDS is {UDS_SIZE} bytes, not {len(uds)}")


def measure_firmware(root: str) -> bytes:
    """SHA-384 of the layer-1 firmware under the image root ``root``: every file of
    FIRMWARE_PATHS (sources and bytecode), in sorted path order, with its path and size."""
    files = []
    for rel in FIRMWARE_PATHS:
        top = os.path.join(root, rel)
        if os.path.isfile(top):
            files.append(rel)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in filenames:
                files.append(os.path.relpath(os.path.join(dirpath, name), root))
    h = hashlib.sha384()
    for rel in sorted(files):
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.digest()


# -- TcbInfo (TCG DICE Attestation Architecture, OID 2.23.133.5.4.1) --------------------------


def _implicit(cls: type, number: int, constructed: bool = False) -> object:
    fmt = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return cls().subtype(implicitTag=tag.Tag(tag.tagClassContext, fmt, number))


class _FWID(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("hashAlg", univ.ObjectIdentifier()),
        namedtype.NamedType("digest", univ.OctetString()),
    )


class _FWIDList(univ.SequenceOf):
    componentType = _FWID()


class _OperationalFlags(univ.BitString):
    pass


class _DiceTcbInfo(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("vendor", _implicit(char.UTF8String, 0)),
        namedtype.OptionalNamedType("model", _implicit(char.UTF8String, 1)),
        namedtype.OptionalNamedType("version", _implicit(char.UTF8String, 2)),
        namedtype.OptionalNamedType("svn", _implicit(univ.Integer, 3)),
        namedtype.OptionalNamedType("layer", _implicit(univ.Integer, 4)),
        namedtype.OptionalNamedType("index", _implicit(univ.Integer, 5)),
        namedtype.OptionalNamedType("fwids", _implicit(_FWIDList, 6, constructed=True)),
        namedtype.OptionalNamedType("flags", _implicit(_OperationalFlags, 7)),
        namedtype.OptionalNamedType("vendorInfo", _implicit(univ.OctetString, 8)),
        namedtype.OptionalNamedType("type", _implicit(univ.OctetString, 9)),
    )


_DEBUG_FLAG = 3  # OperationalFlags: notConfigured(0) notSecure(1) recovery(2) debug(3)


def _tcb_info(model: str, version: str, layer: int, digests: list[bytes], debug: bool) -> bytes:
    info = _DiceTcbInfo()
    info["vendor"] = "SEZ"
    info["model"] = model
    info["version"] = version
    info["layer"] = layer
    fwids = info["fwids"]
    for i, digest in enumerate(digests):
        fwid = _FWID()
        fwid["hashAlg"] = SHA384_OID
        fwid["digest"] = digest
        fwids[i] = fwid
    info["flags"] = (0, 0, 0, 1) if debug else (0, 0, 0, 0)
    return bytes(der_encoder.encode(info))


def encode_tcb_info(measurements: dict[str, bytes], version: str, debug: bool) -> bytes:
    """Layer 1's TcbInfo: model sez-zone, fwids = the MEASURED digests in order."""
    return _tcb_info("sez-zone", version, 1, [measurements[name] for name in MEASURED], debug)


def decode_tcb_info(der: bytes) -> dict[str, object]:
    """{vendor, model, version, layer, debug, measurements: {name: 48 bytes}}; ValueError if
    the extension is not a TcbInfo with one SHA-384 fwid per MEASURED entry."""
    try:
        info, rest = der_decoder.decode(der, asn1Spec=_DiceTcbInfo())
    except Exception as exc:  # pyasn1 raises several types on hostile input: all mean this
        raise ValueError(f"not a DiceTcbInfo: {exc}") from exc
    if rest:
        raise ValueError("bytes after the DiceTcbInfo")
    fwids = list(info["fwids"])
    if len(fwids) != len(MEASURED) or any(f["hashAlg"] != SHA384_OID for f in fwids):
        raise ValueError(f"TcbInfo needs {len(MEASURED)} SHA-384 fwids")
    flags = tuple(info["flags"]) if info["flags"].isValue else ()
    return {
        "vendor": str(info["vendor"]),
        "model": str(info["model"]),
        "version": str(info["version"]),
        "layer": int(info["layer"]),
        "debug": len(flags) > _DEBUG_FLAG and bool(flags[_DEBUG_FLAG]),
        "measurements": {name: bytes(f["digest"]) for name, f in zip(MEASURED, fwids)},
    }


# -- certificates --------------------------------------------------------------------------------


def issue_applet_cert(applet: ec.EllipticCurvePublicKey, alias: ec.EllipticCurvePrivateKey,
                      alias_cert: x509.Certificate, measurement: bytes,
                      now: datetime.datetime) -> x509.Certificate:
    """An applet key's certificate, signed by the alias key: a TcbInfo (layer 2, model
    sez-applet) carries the applet's measurement, so the key is bound to its code."""
    not_after = (alias_cert.not_valid_after_utc if hasattr(alias_cert, "not_valid_after_utc")
                 else alias_cert.not_valid_after.replace(tzinfo=datetime.timezone.utc))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SEZ"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"SEZ Applet {measurement.hex()[:16]}"),
        ]))
        .issuer_name(alias_cert.subject)
        .public_key(applet)
        .serial_number(int.from_bytes(measurement[:16], "big") >> 1)
        .not_valid_before(min(now - datetime.timedelta(hours=1),
                              not_after - datetime.timedelta(seconds=1)))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.UnrecognizedExtension(
            TCB_INFO_OID, _tcb_info("sez-applet", "", 2, [measurement], False)), critical=False)
        .sign(alias, hashes.SHA384())
    )


def issue_session_cert(session: ec.EllipticCurvePublicKey, alias: ec.EllipticCurvePrivateKey,
                       alias_cert: x509.Certificate, ueid_value: bytes,
                       now: datetime.datetime) -> x509.Certificate:
    """The zone's TLS server certificate for this boot, signed by the alias key: a TLS client
    that trusts the manufacturer's root verifies session <- alias <- DeviceID <- root, and the
    alias certificate's TcbInfo says what code holds the key. The evidence names the key too
    (claim ``sez.session_key``), which binds fresh evidence to the TLS connection."""
    not_after = (alias_cert.not_valid_after_utc if hasattr(alias_cert, "not_valid_after_utc")
                 else alias_cert.not_valid_after.replace(tzinfo=datetime.timezone.utc))
    return (
        x509.CertificateBuilder()
        .subject_name(device_id_name(ueid_value, "Session"))
        .issuer_name(alias_cert.subject)
        .public_key(session)
        .serial_number(int.from_bytes(key_id(spki(session))[:16], "big") >> 1)
        .not_valid_before(min(now - datetime.timedelta(hours=1),
                              not_after - datetime.timedelta(seconds=1)))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(session), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(alias.public_key()),
                       critical=False)
        .sign(alias, hashes.SHA384())
    )


def device_id_name(ueid_value: bytes, role: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SEZ"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"SEZ {role}"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, ueid_value.hex()),
    ])


def issue_alias_cert(alias: ec.EllipticCurvePublicKey, devid: ec.EllipticCurvePrivateKey,
                     devid_cert: x509.Certificate, ueid_value: bytes,
                     measurements: dict[str, bytes], version: str, debug: bool,
                     now: datetime.datetime) -> x509.Certificate:
    """The layer-1 alias certificate: signed by DeviceID, carrying the TcbInfo extension.

    Valid from an hour before ``now`` (clock skew) until the DeviceID certificate expires. The
    zone does not judge its own clock: under an expired DeviceID it still issues (valid for the
    last second of DeviceID's life) and leaves the verdict to the verifier.
    """
    not_after = (devid_cert.not_valid_after_utc if hasattr(devid_cert, "not_valid_after_utc")
                 else devid_cert.not_valid_after.replace(tzinfo=datetime.timezone.utc))
    not_before = min(now - datetime.timedelta(hours=1), not_after - datetime.timedelta(seconds=1))
    builder = (
        x509.CertificateBuilder()
        .subject_name(device_id_name(ueid_value, "Alias"))
        .issuer_name(devid_cert.subject)
        .public_key(alias)
        .serial_number(int.from_bytes(key_id(spki(alias))[:16], "big") >> 1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(alias), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(devid.public_key()),
                       critical=False)
        .add_extension(x509.UnrecognizedExtension(
            TCB_INFO_OID, encode_tcb_info(measurements, version, debug)), critical=False)
    )
    return builder.sign(devid, hashes.SHA384())

