"""The manufacturer: a root CA, and the provisioning of each device (README, "Identity and
evidence").

``Factory.init()`` makes the root CA (ECDSA P-384) under ``$SEZ_HOME/factory/``:
``root.pem`` (the certificate verifiers trust) and ``root.key.pem`` (kept offline, 0600).

``Factory.provision(name)`` blows one device's fuses: a fresh random 32-byte UDS, from which
the DeviceID key pair is derived (firmware.abi.dice, the same code layer 0 runs), and a DeviceID
certificate signed by the root whose subject carries the device's UEID. The factory does not
keep the DeviceID private key: it is derived again in the zone at every boot. No two devices
share anything.
"""

from __future__ import annotations

import datetime
import secrets
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware.abi import dice

from .device import Device
from .errors import EmulatorError
from .paths import SezHome, check_name, write_atomic

__all__ = ["Factory", "FactoryError", "ROOT_VALIDITY", "DEVICE_VALIDITY"]

ROOT_VALIDITY = datetime.timedelta(days=20 * 365)
DEVICE_VALIDITY = datetime.timedelta(days=15 * 365)
_SKEW = datetime.timedelta(hours=1)


class FactoryError(EmulatorError):
    """The factory is missing, already set up, or cannot provision."""


def _ca_usage(digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                         decipher_only=False)


class Factory:
    def __init__(self, home: SezHome | None = None) -> None:
        self.home = home or SezHome.default()
        self.directory = self.home.factory

    @property
    def root_cert_path(self) -> Path:
        return self.directory / "root.pem"

    @property
    def root_key_path(self) -> Path:
        return self.directory / "root.key.pem"

    def exists(self) -> bool:
        return self.root_cert_path.is_file() and self.root_key_path.is_file()

    def init(self, now: datetime.datetime | None = None) -> x509.Certificate:
        """Create the manufacturer root CA. Refuses to replace an existing one."""
        if self.exists():
            raise FactoryError(f"the factory already has a root CA in {self.directory}")
        now = now or datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SEZ"),
            x509.NameAttribute(NameOID.COMMON_NAME, "SEZ Manufacturer Root CA"),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=2), critical=True)
            .add_extension(_ca_usage(False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA384())
        )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.root_key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
        write_atomic(self.root_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert

    def root_cert(self) -> x509.Certificate:
        self._require()
        return x509.load_pem_x509_certificate(self.root_cert_path.read_bytes())

    def _require(self) -> None:
        if not self.exists():
            raise FactoryError(f"no factory in {self.directory} (create it: sez factory init)")

    def provision(self, name: str, now: datetime.datetime | None = None,
                  validity: datetime.timedelta = DEVICE_VALIDITY,
                  force: bool = False) -> Device:
        """Provision device ``name``: fuses (UDS) and the DeviceID certificate. ``force``
        provisions an existing device anew (after a tamper event): new fuses, so a new
        DeviceID and UEID, a blank BBRAM, and the factory's record of its tamper events
        and its sensor setting kept."""
        self._require()
        directory = self.home.device_dir(check_name(name))
        tamper, kept_sensors = None, {}
        if directory.exists():
            if not force:
                raise FactoryError(f"device {name!r} already exists in {directory} "
                                   "(--force provisions it anew)")
            old = Device(name, directory)
            tamper, kept_sensors = old.tamper_record, old.sensors
            shutil.rmtree(directory)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        root_key = serialization.load_pem_private_key(self.root_key_path.read_bytes(), None)
        assert isinstance(root_key, ec.EllipticCurvePrivateKey)
        root = self.root_cert()
        uds = secrets.token_bytes(dice.UDS_SIZE)
        device_key = dice.device_id_key(uds).public_key()
        ueid = dice.ueid(uds)
        cert = (
            x509.CertificateBuilder()
            .subject_name(dice.device_id_name(ueid, "DeviceID"))
            .issuer_name(root.subject).public_key(device_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_usage(True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(device_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA384())
        )
        device = Device.create(self.home, name, uds=uds, ueid=ueid,
                               device_id_cert=cert.public_bytes(serialization.Encoding.PEM),
                               tamper=tamper)
        if kept_sensors:
            device.set_sensors(kept_sensors)
        return device
