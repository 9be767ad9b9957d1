"""The RA-TLS binding, on certificates and evidence made by the real layer-0 code on the host:
a TLS certificate only passes ``verify_session`` if this zone's alias key issued it and the
evidence names its key."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.factory import Factory
from firmware.abi import dice
from firmware.abi.keys import key_id, spki
from host_driver.verifier import VerificationError, verify_session

from .conftest import NONCE, Zone


def session_cert(zone: Zone) -> tuple[x509.Certificate, bytes]:
    """A fresh session key from layer 0: its certificate and the PEM of its key."""
    made = zone.identity.session_key()
    certs = x509.load_pem_x509_certificates(made["chain"])
    return certs[0], made["key"]


def test_the_session_certificate_chains_to_the_root_and_evidence_names_it(
        factory: Factory, zone: Zone) -> None:
    cert, key_pem = session_cert(zone)
    result = verify_session(zone.evidence(), cert, nonce=NONCE, root=factory.root_cert(),
                            reference=zone.reference)
    assert result.session_key == key_id(spki(cert.public_key()))  # type: ignore[arg-type]
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert x509.ExtendedKeyUsageOID.SERVER_AUTH in \
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_openssl_verifies_the_chain_for_a_tls_server(factory: Factory, zone: Zone,
                                                     tmp_path: Path) -> None:
    """What a TLS client does: the server's chain, the root as the only trust anchor."""
    made = zone.identity.session_key()
    (tmp_path / "chain.pem").write_bytes(made["chain"] + made["key"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "chain.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cadata=factory.root_cert().public_bytes(
        serialization.Encoding.DER))
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_side=False)
    for _ in range(6):  # a TLS 1.3 handshake is a few flights
        for tls in (c, s):
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert c.version() == "TLSv1.3"
    assert c.getpeercert(binary_form=True) == x509.load_pem_x509_certificates(
        made["chain"])[0].public_bytes(serialization.Encoding.DER)


def test_a_key_the_evidence_does_not_name(factory: Factory, zone: Zone) -> None:
    old, _ = session_cert(zone)
    session_cert(zone)  # a newer key: evidence names that one now
    with pytest.raises(VerificationError) as failure:
        verify_session(zone.evidence(), old, nonce=NONCE, root=factory.root_cert())
    assert failure.value.check == "session-key"


def test_evidence_from_before_the_first_session_names_no_key(factory: Factory,
                                                             tmp_path: Path) -> None:
    fresh = Zone(factory.home, "no-session-yet", tmp_path)
    cert, _ = session_cert(Zone(factory.home, "other", tmp_path / "o"))
    with pytest.raises(VerificationError) as failure:
        verify_session(fresh.evidence(), cert, nonce=NONCE, root=factory.root_cert())
    assert failure.value.check == "session-key"


def test_a_certificate_another_key_issued_for_the_named_key(factory: Factory,
                                                            zone: Zone) -> None:
    """A relay that has the zone's TLS public key (it is public) cannot present a certificate
    of its own making for it."""
    cert, _ = session_cert(zone)
    forger = ec.generate_private_key(ec.SECP384R1())
    alias = x509.load_der_x509_certificate(zone.identity.chain[0])
    forged = dice.issue_session_cert(cert.public_key(), forger, alias,  # type: ignore[arg-type]
                                     zone.ueid, datetime.datetime.now(datetime.timezone.utc))
    with pytest.raises(VerificationError) as failure:
        verify_session(zone.evidence(), forged, nonce=NONCE, root=factory.root_cert())
    assert failure.value.check == "session-certificate"
