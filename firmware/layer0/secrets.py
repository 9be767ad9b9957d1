"""Provisioned secrets, sealed by layer 0 and opened only for an applet their policy admits.

    blob = "SZSC" | format u8 | nonce (12) | AES-256-GCM ciphertext of the value
    AAD  = the blob's header | UEID | the secret's name | 0x00 | canonical CBOR of its policy

(the layout firmware.layer0.aead makes and opens)

The key is firmware.abi.dice.secret_key(seal root): this device, this mode, any firmware. The
monitor keeps ``{policy, blob}`` in BBRAM and hands both back with the applet it names; layer 0
checks the policy itself (abi.secret.admits) and the AAD proves the policy and the name are the
ones the secret was sealed with, so a monitor, or a stored state, that changed a policy or
renamed a secret opens nothing. Refusals say which secret and which applet, never the value.

In a debug zone the seal root, and so this key, is the debug one (abi.dice.seal_root): what
the device sealed in production does not open. Layer 0 of a debug zone also neither seals nor
opens a secret whose policy lacks ``debug: true`` (``DebugRefused``): it knows its mode from
the hardware's strap, not from the monitor.
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..abi import dice
from ..abi import secret
from ..abi.applet import NAME as APPLET_NAME
from ..abi.errors import BadArgs, BadBlob, DebugRefused, SecretDenied
from .aead import OVERHEAD, open_blob, seal

__all__ = ["SecretSealer", "Applet"]

MAGIC = b"SZSC"
FORMAT = 1
_HEADER = struct.Struct(">4sB")


class Applet:
    """The applet a job runs, as the monitor names it: what a policy is checked against."""

    __slots__ = ("measurement", "name", "version", "owner")

    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise BadArgs("applet is {measurement, name, version, owner}")
        measurement, name = raw.get("measurement"), raw.get("name")
        version, owner = raw.get("version"), raw.get("owner")
        if not isinstance(measurement, bytes) or len(measurement) != secret.MEASUREMENT_SIZE:
            raise BadArgs(f"applet.measurement must be {secret.MEASUREMENT_SIZE} bytes")
        if not isinstance(name, str) or not APPLET_NAME.fullmatch(name):
            raise BadArgs("applet.name must be an applet's name")
        if type(version) is not int or not 1 <= version < 1 << 32:
            raise BadArgs("applet.version must be an integer >= 1")
        if not isinstance(owner, bytes) or len(owner) != secret.OWNER_SIZE:
            raise BadArgs(f"applet.owner must be a key id ({secret.OWNER_SIZE} bytes)")
        self.measurement, self.name, self.version, self.owner = measurement, name, version, owner


class SecretSealer:
    def __init__(self, root: bytes, ueid: bytes, debug: bool = False) -> None:
        self._aead = AESGCM(dice.secret_key(root))
        self._ueid = ueid
        self._debug = debug

    def _check_mode(self, name: str, policy: secret.Policy) -> None:
        if self._debug and not secret.allows_debug(policy):
            raise DebugRefused(f"secret {name!r}: this is a debug zone, and the secret's policy "
                               "does not say debug: true")

    def _bound(self, name: str, policy: secret.Policy) -> bytes:
        return self._ueid + name.encode() + b"\0" + secret.encode_policy(policy)

    def seal(self, name: Any, policy: Any, value: Any) -> bytes:
        """A blob of ``value`` that opens only under this ``name`` and ``policy``, here;
        DebugRefused in a debug zone unless the policy says ``debug: true``."""
        name = secret.check_name(name)
        parsed = secret.parse_policy(policy)
        value = secret.check_value(value)
        self._check_mode(name, parsed)
        return seal(self._aead, _HEADER.pack(MAGIC, FORMAT), self._bound(name, parsed), value)

    def open(self, name: Any, policy: Any, blob: Any, applet: Applet) -> bytes:
        """The value sealed in ``blob`` if ``policy`` admits ``applet``: SecretDenied if it
        does not, DebugRefused in a debug zone if it does not say ``debug: true``, BadBlob if
        the blob does not open under this name and policy (changed, or another device's, or
        sealed in the other mode)."""
        name = secret.check_name(name)
        parsed = secret.parse_policy(policy)
        self._check_mode(name, parsed)
        if not secret.admits(parsed, applet.measurement, applet.name, applet.version,
                              applet.owner):
            raise SecretDenied(f"secret {name!r} is not for applet {applet.name} "
                               f"v{applet.version} ({applet.measurement.hex()[:16]})")
        if not isinstance(blob, bytes) or not (
                _HEADER.size + OVERHEAD <= len(blob) <= _HEADER.size + OVERHEAD
                + secret.VALUE_MAX):
            raise BadBlob(f"secret {name!r}: not a sealed secret")
        magic, fmt = _HEADER.unpack_from(blob)
        if magic != MAGIC or fmt != FORMAT:
            raise BadBlob(f"secret {name!r}: not a sealed secret")
        try:
            return open_blob(self._aead, blob, _HEADER.size, self._bound(name, parsed))
        except InvalidTag:
            raise BadBlob(f"secret {name!r} does not open: its blob, name or policy was "
                          "changed, or another device sealed it") from None
