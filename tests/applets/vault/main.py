"""Seals and unseals on request: {"op": "seal", "data": HEX} or {"op": "unseal", "blob": HEX}."""

import json


def run(data, zone):
    request = json.loads(data)
    if request["op"] == "seal":
        return zone.seal(bytes.fromhex(request["data"]))
    return zone.unseal(bytes.fromhex(request["blob"]))
