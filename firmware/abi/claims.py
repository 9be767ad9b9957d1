"""The claim keys every signed message of the zone shares (evidence, receipts, audit entries).

Standard claims use their CWT/EAT (RFC 8392, RFC 9711) integer keys; SEZ's own claims are text
keys ``sez.*`` and live with the message that carries them (abi.evidence, abi.receipt,
abi.audit). Layer 0 sets these on everything it signs, after the monitor's claims, so the
monitor can neither set nor forge them (:data:`ATTESTED`).

=====================  =====  ==========================================================
claim                  key    value
=====================  =====  ==========================================================
iat                    6      issue time, seconds since the epoch (the zone's clock)
eat_nonce              10     the verifier's nonce (evidence only)
ueid                   256    the device's UEID (0x01 || 16 bytes)
dbgstat                263    debug status (evidence only)
eat_profile            265    which message this is (each module's PROFILE)
bootcount              267    the hardware boot counter
=====================  =====  ==========================================================

Runs in the guest and on the host: standard library only.
"""

from __future__ import annotations

__all__ = ["IAT", "NONCE", "UEID", "DBGSTAT", "PROFILE_KEY", "BOOTCOUNT", "ATTESTED"]

IAT = 6
NONCE = 10
UEID = 256
DBGSTAT = 263
PROFILE_KEY = 265
BOOTCOUNT = 267

#: What layer 0 stamps on every message it signs for the monitor.
ATTESTED = frozenset({IAT, UEID, PROFILE_KEY, BOOTCOUNT})
