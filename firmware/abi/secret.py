"""Provisioned secrets: what a secret is called, how large it may be, and which applets read it.

A relying party provisions a secret (``secret-put``, taken only inside an attested session)
under a name and a policy. Layer 0 seals it, the zone keeps it in BBRAM, and a job reads it
(``zone.secret(name)``) only if the policy admits the job's applet. A policy is one CBOR map,
in one of two forms:

``{"measurement": M}``
    exactly the applet whose measurement (SHA-384 of its package, 48 bytes) is M: one build of
    one applet, like SGX's MRENCLAVE.
``{"applet": NAME, "min_version": N, "owner": K}``
    any applet named NAME at version N or later, run under the owner whose key id
    (abi.keys.key_id, 32 bytes) is K: the versions that owner signs later read it too, like
    SGX's MRSIGNER. The host gives NAME and N; the zone fills in K with the owner enrolled
    when the secret is put.

Either form may add ``"debug": true``: the secret may be provisioned to a debug zone (one that
booted with the debug strap, whose evidence says so). A debug zone refuses any other policy
(``debug-refused``), so a relying party that lets its client appraise debug evidence must
still say so in the policy the zone binds. A debug zone derives other sealing keys than the
same device in production, so a production secret never opens in debug whatever its policy
says; in a production zone the flag changes nothing. ``"debug": false`` is the same as no
flag (the parsed policy leaves it out).

Runs in the guest and on the host: standard library and cbor2.
"""

from __future__ import annotations

import re
from typing import Any

import cbor2

from .applet import NAME as APPLET_NAME
from .errors import BadArgs

__all__ = ["NAME", "VALUE_MAX", "COUNT_MAX", "MEASUREMENT_SIZE", "OWNER_SIZE", "Policy",
           "check_name", "check_value", "parse_policy", "encode_policy", "admits", "allows_debug"]

#: A secret's name (matched whole).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The largest value a secret holds, in bytes.
VALUE_MAX = 64 << 10
#: The most secrets a zone holds.
COUNT_MAX = 64
MEASUREMENT_SIZE = 48
OWNER_SIZE = 32
_VERSION_MAX = (1 << 32) - 1

#: A parsed policy: ``{"measurement"}`` or ``{"applet", "min_version", "owner"}``, each with
#: ``"debug": True`` or without it.
Policy = dict[str, Any]


def check_name(name: Any) -> str:
    """``name`` if it is a valid secret name; BadArgs otherwise (the name is not repeated: it
    may be anything a host sent)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadArgs("a secret's name is 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter "
                      "or a digit")
    return name


def check_value(value: Any) -> bytes:
    """``value`` if it is a secret's value: 1 to VALUE_MAX bytes; BadArgs saying only its
    size otherwise."""
    if not isinstance(value, bytes):
        raise BadArgs("a secret's value must be bytes")
    if not 1 <= len(value) <= VALUE_MAX:
        raise BadArgs(f"a secret's value is 1 to {VALUE_MAX} bytes, not {len(value)}")
    return value


def parse_policy(raw: Any, *, complete: bool = True) -> Policy:
    """The policy ``raw`` stands for, as a new map; BadArgs saying what is wrong. Unknown keys
    are refused: a policy the zone does not understand would admit other applets than meant.
    With ``complete=False`` an applet policy may lack its ``owner`` (the host's request, which
    the zone completes)."""
    if not isinstance(raw, dict):
        raise BadArgs("a policy is a map: {measurement} or {applet, min_version, owner}")
    debug = raw.get("debug", False)
    if type(debug) is not bool:
        raise BadArgs("a policy's debug is true or false")
    flag: Policy = {"debug": True} if debug else {}
    if "measurement" in raw:
        measurement = raw["measurement"]
        if not set(raw) <= {"measurement", "debug"}:
            raise BadArgs("a measurement policy has only a measurement (and debug)")
        if not isinstance(measurement, bytes) or len(measurement) != MEASUREMENT_SIZE:
            raise BadArgs(f"a policy's measurement is {MEASUREMENT_SIZE} bytes (SHA-384)")
        return {"measurement": measurement, **flag}
    if "applet" not in raw:
        raise BadArgs("a policy names a measurement or an applet")
    allowed = {"applet", "min_version", "owner", "debug"}
    if not set(raw) <= allowed:
        raise BadArgs("an applet policy has only applet, min_version, owner (and debug)")
    applet, min_version = raw["applet"], raw.get("min_version")
    if not isinstance(applet, str) or not APPLET_NAME.fullmatch(applet):
        raise BadArgs("a policy's applet is an applet's name: 1 to 64 of a-z 0-9 -")
    if type(min_version) is not int or not 1 <= min_version <= _VERSION_MAX:
        raise BadArgs("a policy's min_version is an integer >= 1")
    policy: Policy = {"applet": applet, "min_version": min_version}
    if "owner" in raw:
        owner = raw["owner"]
        if not isinstance(owner, bytes) or len(owner) != OWNER_SIZE:
            raise BadArgs(f"a policy's owner is a key id: {OWNER_SIZE} bytes (SHA-256)")
        policy["owner"] = owner
    elif complete:
        raise BadArgs("an applet policy names its owner")
    return {**policy, **flag}


def allows_debug(policy: Policy) -> bool:
    """Whether ``policy`` (parsed) lets a debug zone hold the secret."""
    return policy.get("debug") is True


def encode_policy(policy: Policy) -> bytes:
    """The canonical CBOR of a parsed policy: what layer 0 binds a sealed secret to."""
    return cbor2.dumps(policy, canonical=True)


def admits(policy: Policy, measurement: bytes, name: str, version: int, owner: bytes) -> bool:
    """Whether ``policy`` (parsed) admits the applet with this measurement, name and version,
    run under the owner whose key id is ``owner``."""
    if "measurement" in policy:
        return bool(policy["measurement"] == measurement)
    return bool(policy["applet"] == name and version >= policy["min_version"]
                and policy["owner"] == owner)
