"""What the zone keys for this applet, on request (JSON):

{"op": "public-key"}           its signing key (SubjectPublicKeyInfo, DER)
{"op": "seal", "data": HEX}    a blob only this applet opens
{"op": "unseal", "blob": HEX}  the data
{"op": "secret", "name": N}    the SHA-384 of a provisioned secret's value, never the value
"""

import hashlib
import json


def run(data, zone):
    request = json.loads(data)
    op = request["op"]
    if op == "public-key":
        return zone.public_key()
    if op == "seal":
        return zone.seal(bytes.fromhex(request["data"]))
    if op == "unseal":
        return zone.unseal(bytes.fromhex(request["blob"]))
    if op == "secret":
        return hashlib.sha384(zone.secret(request["name"])).digest()
    raise ValueError(f"no op {op!r}")
