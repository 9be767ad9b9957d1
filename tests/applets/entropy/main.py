"""Random numbers drawn in the zone both ways an applet may: 32 bytes from the kernel
(os.urandom), then a new P-256 public key (OpenSSL's generator), 65 bytes."""

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def run(data, zone):
    key = ec.generate_private_key(ec.SECP256R1())
    return os.urandom(32) + key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
