"""key-custody: sign on request with a key that exists only inside the zone.

Input (JSON): {"op": "public-key"} or {"op": "sign", "message": "<hex>"}.
Output (JSON): {"public_key": hex SPKI, "certificate": hex DER} and, for sign,
{"signature": hex DER ECDSA-P384-SHA384 over the message}. The certificate is signed by the
zone's alias key and names this applet's measurement: verifiers chain it to the manufacturer.
"""

import json


def run(data: bytes, zone) -> bytes:
    request = json.loads(data or b"{}")
    op = request.get("op", "public-key")
    answer = {}
    if op == "sign":
        message = bytes.fromhex(request["message"])
        answer["signature"] = zone.sign(message).hex()
    elif op != "public-key":
        raise ValueError(f"unknown op {op!r}: use public-key or sign")
    answer["public_key"] = zone.public_key().hex()
    answer["certificate"] = zone.certificate().hex()
    zone.log(f"key-custody: {op}")
    return json.dumps(answer, sort_keys=True).encode()
