"""The claims of a job receipt: a COSE_Sign1 (ES384) by the zone's alias key, x5chain
[alias, DeviceID], over a CBOR map. It proves that this zone (the UEID, chained to the root)
ran exactly this code (the applet's measurement) on exactly this input and produced exactly
this output, for this caller's nonce.

==================  =====  =====================================================
claim               key    value
==================  =====  =====================================================
ueid                256    the device
iat                 6      issue time (the zone's clock)
eat_profile         265    PROFILE
bootcount           267    the hardware boot counter
sez.job             text   the job id (text)
sez.job_counter     text   monotonic across the device's life (never repeats)
sez.applet          text   {name, version, measurement (48 bytes)}
sez.input           text   SHA-384 of the input
sez.output          text   SHA-384 of the output
sez.nonce           text   the caller's nonce (0 to 64 bytes)
sez.batch           text   a batch job's number of inputs (absent for one input)
==================  =====  =====================================================

A **batch job** runs the applet on several inputs in turn (``run`` with ``inputs``) and has
one receipt over all of them: ``sez.input`` and ``sez.output`` are then the SHA-384 of the
CBOR arrays of the inputs and of the outputs, in order (``digest``).
"""

from __future__ import annotations

import hashlib

import cbor2

from .claims import BOOTCOUNT, IAT, PROFILE_KEY, UEID
from .jobs import NONCE_MAX

__all__ = ["IAT", "UEID", "PROFILE_KEY", "BOOTCOUNT", "PROFILE", "JOB", "JOB_COUNTER", "APPLET",
           "INPUT", "OUTPUT", "NONCE", "NONCE_MAX", "BATCH", "BATCH_MAX", "digest"]

PROFILE = "urn:sez:receipt:1"
JOB = "sez.job"
JOB_COUNTER = "sez.job_counter"
APPLET = "sez.applet"
INPUT = "sez.input"
OUTPUT = "sez.output"
NONCE = "sez.nonce"
BATCH = "sez.batch"
#: The most inputs a batch job takes.
BATCH_MAX = 1024


def digest(data: bytes | list[bytes]) -> bytes:
    """What ``sez.input`` and ``sez.output`` hold for ``data``: its SHA-384, or for a batch's
    list, the SHA-384 of its CBOR array (definite lengths: one encoding only)."""
    return hashlib.sha384(data if isinstance(data, bytes) else cbor2.dumps(data)).digest()
