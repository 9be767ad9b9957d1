"""The claims of the zone's evidence: an EAT (RFC 9711) in a COSE_Sign1 by the alias key.

Standard claims use their CWT/EAT integer keys (abi.claims); SEZ's own claims use text keys
"sez.*".

=====================  =====  ==========================================================
claim                  key    value
=====================  =====  ==========================================================
eat_nonce              10     the verifier's nonce, 8..64 bytes
ueid                   256    the device's UEID (0x01 || 16 bytes)
iat                    6      issue time, seconds since the epoch (the zone's clock)
eat_profile            265    PROFILE
dbgstat                263    0 (debug enabled) in a debug zone, else 2 (disabled since boot)
bootcount              267    the hardware boot counter
sez.measurements       text   {kernel, initramfs, cmdline, firmware: SHA-384 (48 bytes)}
sez.debug              text   bool
sez.firmware           text   the firmware version
sez.tamper_state       text   {count, last}: the factory's record of tamper events before
                              this provisioning of the device, and the last one's cause
sez.session_key        text   SHA-256 of the SubjectPublicKeyInfo of the zone's TLS key this
                              boot (abi.keys.key_id), or absent before the first session
sez.owner              text   SHA-256 of the enrolled owner's SPKI, or null
sez.applets            text   [{name, version, measurement}] of the loaded applets
sez.bbram              text   the persistent store's status (BbramStatus)
sez.audit              text   {seq, link}: the audit log's last entry (firmware.abi.audit)
sez.host               text   {sessions, disconnects, stalls, errors}: what the zone saw of
                              its host
=====================  =====  ==========================================================
"""

from __future__ import annotations

import enum

from .claims import BOOTCOUNT, DBGSTAT, IAT, NONCE, PROFILE_KEY, UEID

__all__ = ["NONCE", "UEID", "IAT", "PROFILE_KEY", "DBGSTAT", "BOOTCOUNT", "MEASUREMENTS",
           "DEBUG", "FIRMWARE", "SESSION_KEY", "TAMPER_STATE", "OWNER", "APPLETS", "BBRAM", "AUDIT", "HOST", "PROFILE",
           "DBGSTAT_ENABLED", "DBGSTAT_DISABLED_SINCE_BOOT", "NONCE_MIN", "NONCE_MAX",
           "KEEPER_CLAIMS", "BbramStatus"]

# layer 0's claims
MEASUREMENTS = "sez.measurements"
DEBUG = "sez.debug"
FIRMWARE = "sez.firmware"
SESSION_KEY = "sez.session_key"
TAMPER_STATE = "sez.tamper_state"
# the monitor's claims
OWNER = "sez.owner"
APPLETS = "sez.applets"
BBRAM = "sez.bbram"
AUDIT = "sez.audit"
HOST = "sez.host"

PROFILE = "urn:sez:evidence:1"
DBGSTAT_ENABLED = 0
DBGSTAT_DISABLED_SINCE_BOOT = 2
NONCE_MIN, NONCE_MAX = 8, 64

#: Claims only the key keeper (layer 0) sets; the monitor cannot supply them.
KEEPER_CLAIMS = frozenset({IAT, NONCE, UEID, DBGSTAT, PROFILE_KEY, BOOTCOUNT, MEASUREMENTS,
                           DEBUG, FIRMWARE, SESSION_KEY, TAMPER_STATE})


class BbramStatus(enum.StrEnum):
    """The persistent store's status (claim ``sez.bbram``, and ``info``'s ``bbram``)."""

    LOADING = "loading"  # the monitor has not heard from the key keeper yet
    FRESH = "fresh"  # both slots blank: a new device
    OK = "ok"
    UNAUTHENTICATED = "unauthenticated"  # data present, no slot authenticates: left alone
    ABSENT = "absent"  # no BBRAM disk
    TAMPERED = "tampered"  # zeroised by the tamper line: nothing is left to load
