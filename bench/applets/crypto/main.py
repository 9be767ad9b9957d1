"""In-zone crypto timings for `make bench` (bench/bench.py), measured in the job's process.

Input, JSON or CBOR: {"op": NAME or "all", "count": N (1-1000, default 20)}. Output, in the
input's encoding: {"ops": {NAME: {"ms": [N times, milliseconds]} or {"error": why}},
"versions": {"cryptography", "openssl"}}. Each op is set up (its key, its data) and run once
untimed, then timed N times with time.perf_counter. NAMEs:

  p384-sign      ECDSA P-384 / SHA-384 signature of 32 bytes (the raw signature)
  p256-sign      ECDSA P-256 / SHA-256 signature of 32 bytes
  ed25519-sign   Ed25519 signature of 32 bytes
  aes256gcm-64k  AES-256-GCM encryption of 64 KiB
  sha384-1m      SHA-384 (hashlib) of 1 MiB
  zone-sign      zone.sign of 32 bytes: the applet's own P-384 key, through layer 0

Run natively (bench.py imports this module) ``zone`` is None and zone-sign is left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable

MESSAGE = bytes(32)
Call = Callable[[], object]


def _ecdsa(curve: str, digest: str) -> Call:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(getattr(ec, curve)())
    algorithm = ec.ECDSA(getattr(hashes, digest)())
    return lambda: key.sign(MESSAGE, algorithm)


def _ed25519() -> Call:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    return lambda: key.sign(MESSAGE)


def _aes_gcm() -> Call:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, data, nonce = AESGCM(AESGCM.generate_key(256)), os.urandom(64 << 10), os.urandom(12)
    return lambda: aead.encrypt(nonce, data, None)  # one nonce again and again: a timing only


def _sha384() -> Call:
    data = os.urandom(1 << 20)
    return lambda: hashlib.sha384(data).digest()


#: op -> its setup, given the zone API; the setup returns the call to time.
OPS: dict[str, Callable[[Any], Call]] = {
    "p384-sign": lambda zone: _ecdsa("SECP384R1", "SHA384"),
    "p256-sign": lambda zone: _ecdsa("SECP256R1", "SHA256"),
    "ed25519-sign": lambda zone: _ed25519(),
    "aes256gcm-64k": lambda zone: _aes_gcm(),
    "sha384-1m": lambda zone: _sha384(),
    "zone-sign": lambda zone: lambda: zone.sign(MESSAGE),
}


def timings(setup: Callable[[Any], Call], zone: Any, count: int) -> dict[str, Any]:
    try:
        call = setup(zone)
        call()  # untimed: imports, first use
    except Exception as exc:  # an op this build cannot do is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}
    ms = []
    for _ in range(count):
        t = time.perf_counter()
        call()
        ms.append((time.perf_counter() - t) * 1000)
    return {"ms": ms}


def versions() -> dict[str, str]:
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    return {"cryptography": cryptography.__version__, "openssl": backend.openssl_version_text()}


def run(data: bytes, zone: Any) -> bytes:
    as_json = data[:1] == b"{"
    if not as_json:
        import cbor2  # only here: a host's Python without cbor2 still runs the JSON form
    request = json.loads(data) if as_json else cbor2.loads(data)
    count = min(max(int(request.get("count", 20)), 1), 1000)
    names = list(OPS) if request["op"] == "all" else [request["op"]]
    ops = {name: timings(OPS[name], zone, count) for name in names
           if zone is not None or name != "zone-sign"}
    answer = {"ops": ops, "versions": versions()}
    return json.dumps(answer).encode() if as_json else bytes(cbor2.dumps(answer))
