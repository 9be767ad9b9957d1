"""Input "count": {pid, uid, count} (jobs this process has served); "remember:TEXT" keeps TEXT,
"recall" returns what an earlier job kept; "spin" and "sleep" break the CPU and wall-time
limits; "raise" fails; "sign" signs with the applet's key."""

import json
import os
import time

served = 0
kept = b""


def run(data, zone):
    global served, kept
    served += 1
    if data == b"count":
        return json.dumps({"pid": os.getpid(), "uid": os.getuid(), "count": served}).encode()
    if data.startswith(b"remember:"):
        kept = data[len(b"remember:"):]
        return b"kept"
    if data == b"recall":
        return kept
    if data == b"spin":
        while True:
            pass
    if data == b"sleep":
        time.sleep(60)
    if data == b"raise":
        raise ValueError("asked to fail")
    if data == b"sign":
        return zone.sign(b"warm")
    return data
