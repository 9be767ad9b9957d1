"""The zone's audit log: a hash chain of entries, each a COSE_Sign1 (ES384) by the alias key.

Every entry is signed over a CBOR map; its protected header carries ``kid`` = SHA-256 of the
alias key's SubjectPublicKeyInfo (the fetch that returns entries returns the certificate chain
once, beside them). Entry ``n`` names entry ``n - 1`` by the SHA-384 of its bytes, so a removed,
inserted, altered or reordered entry breaks the chain or the sequence.

==================  =====  ===========================================================
claim               key    value
==================  =====  ===========================================================
ueid                256    the device
iat                 6      when the zone appended it (the zone's clock)
eat_profile         265    PROFILE
bootcount           267    the hardware boot counter
sez.seq             text   1, 2, 3 … over the device's life (never reused)
sez.prev            text   SHA-384 of the previous entry (GENESIS before the first)
sez.event           text   what happened, a map with ``kind``:
                           ``enroll``     {owner: SHA-256 of the owner's SPKI}
                           ``load``       {name, version, measurement}
                           ``schedule``   {name, applet, measurement, every, input (SHA-384)}
                           ``unschedule`` {name}
                           ``secret``     {name, and its policy's fields (abi.secret):
                                           measurement, or applet, min_version, owner;
                                           debug if true}
                           ``run``        {schedule, run, job, applet, measurement,
                                           input (SHA-384), state, output (SHA-384) | error,
                                           skipped (ticks missed since the run before)}
==================  =====  ===========================================================

Runs in the guest and on the host.
"""

from __future__ import annotations

import hashlib

from .claims import BOOTCOUNT, IAT, PROFILE_KEY, UEID

__all__ = ["IAT", "UEID", "PROFILE_KEY", "BOOTCOUNT", "PROFILE", "SEQ", "PREV", "EVENT",
           "GENESIS", "KEPT", "link"]

PROFILE = "urn:sez:audit:1"
SEQ = "sez.seq"
PREV = "sez.prev"
EVENT = "sez.event"
#: ``sez.prev`` of the first entry a device ever writes.
GENESIS = bytes(48)
#: The most entries the zone keeps (those not yet acknowledged).
KEPT = 1024


def link(entry: bytes) -> bytes:
    """What the next entry's ``sez.prev`` must be: the SHA-384 of this entry's bytes."""
    return hashlib.sha384(entry).digest()
