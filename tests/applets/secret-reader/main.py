"""Reads a provisioned secret: input {"name": NAME, "poll": SECONDS (optional)}; returns the
SHA-384 of the value, never the value (a job's output crosses the host in clear). With "poll",
it asks again while the zone answers no-such-secret, for up to that many seconds: a job that
starts before the secret is provisioned."""

import hashlib
import json
import time


def run(data, zone):
    request = json.loads(data)
    deadline = time.monotonic() + request.get("poll", 0)
    while True:
        try:
            return hashlib.sha384(zone.secret(request["name"])).digest()
        except RuntimeError as exc:
            if "no-such-secret" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
