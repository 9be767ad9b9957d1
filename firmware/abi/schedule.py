"""Owner-signed schedules: "run applet X every N seconds on input Y", kept by the zone.

A schedule change is a COSE_Sign1 (ES384) by the owner (``kid`` = SHA-256 of the owner's SPKI)
over one CBOR map::

    {"op": "schedule", "ueid": bytes, "epoch": int, "name": text, "applet": text,
     "measurement": 48 bytes, "input": bytes, "every": seconds}
    {"op": "unschedule", "ueid": bytes, "epoch": int, "name": text}

``ueid`` binds it to one device and ``epoch`` to one moment: the zone counts accepted changes
and takes a change only if it names the current count, so an old change cannot be replayed
(the same scheme as an enrolment hand-over). ``measurement`` pins the exact code: a schedule
whose applet has been replaced by another version skips its runs until it is scheduled anew.
Runs in the guest and on the host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import BadArgs

__all__ = ["Change", "parse", "EVERY_MIN", "EVERY_MAX", "INPUT_MAX", "MAX_SCHEDULES"]

EVERY_MIN, EVERY_MAX = 1, 7 * 86400
INPUT_MAX = 64 << 10
MAX_SCHEDULES = 16
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


@dataclass(frozen=True)
class Change:
    op: str
    ueid: bytes
    epoch: int
    name: str
    applet: str = ""
    measurement: bytes = b""
    input: bytes = b""
    every: int = 0

    def document(self) -> dict[str, Any]:
        """The map the owner signs."""
        doc: dict[str, Any] = {"op": self.op, "ueid": self.ueid, "epoch": self.epoch,
                               "name": self.name}
        if self.op == "schedule":
            doc.update(applet=self.applet, measurement=self.measurement, input=self.input,
                       every=self.every)
        return doc


def parse(doc: Any) -> Change:
    """The change a signed document asks for; BadArgs saying what is wrong with it."""
    if not isinstance(doc, dict):
        raise BadArgs("a schedule change is a CBOR map")
    op, name = doc.get("op"), doc.get("name")
    if op not in ("schedule", "unschedule"):
        raise BadArgs("op must be schedule or unschedule")
    if not isinstance(doc.get("ueid"), bytes) or type(doc.get("epoch")) is not int:
        raise BadArgs("a schedule change names the device (ueid) and the epoch")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadArgs("a schedule name is 1-32 of a-z, 0-9 and '-'")
    keys = {"op", "ueid", "epoch", "name"}
    if op == "unschedule":
        if set(doc) != keys:
            raise BadArgs(f"unschedule takes {sorted(keys)}")
        return Change(op, doc["ueid"], doc["epoch"], name)
    keys |= {"applet", "measurement", "input", "every"}
    if set(doc) != keys:
        raise BadArgs(f"schedule takes {sorted(keys)}")
    applet, measurement, data, every = (doc["applet"], doc["measurement"], doc["input"],
                                        doc["every"])
    if not isinstance(applet, str) or not isinstance(measurement, bytes) or len(measurement) != 48:
        raise BadArgs("a schedule names its applet and pins its measurement (48 bytes)")
    if not isinstance(data, bytes) or len(data) > INPUT_MAX:
        raise BadArgs(f"a schedule's input is bytes, at most {INPUT_MAX}")
    if type(every) is not int or not EVERY_MIN <= every <= EVERY_MAX:
        raise BadArgs(f"every is {EVERY_MIN} to {EVERY_MAX} seconds")
    return Change(op, doc["ueid"], doc["epoch"], name, applet, measurement, data, every)
