"""SEZ host driver: talks to a zone over its virtio-serial control channel.

The host side is untrusted (docs/architecture.md, "Trust boundary"): it holds no secret and
only relays. It is laid out by role:

``relay``         the untrusted relay: the channel, ``Zone`` (asyncio), ``SyncZone`` (blocking)
``verifier``      the relying party: appraises evidence, receipts and audit logs
``owner``         the owner's tools: keys, applet packages, enrolment and schedule changes
``lifecycle``     a zone's machine: boot it, ask QEMU its state, stop it (imports ``emulator``)
``cli``           the ``sez`` command
``pytest_plugin`` booted zones as pytest fixtures

Errors come from one tree rooted in ``SezError`` (see ``host_driver.errors``).
"""

import logging

from firmware.abi.errors import BadArgs, ProtocolError, SezError, UnknownOp, ZoneError

from .errors import (ChannelBusy, ChannelClosed, ChannelError, ConnectError, StateError,
                     ZoneTimeout, ZoneUnresponsive)
from .relay import DEFAULT_TIMEOUT, SyncZone, Zone, ZoneState

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_TIMEOUT",
    "Zone",
    "ZoneState",
    "SyncZone",
    "SezError",
    "ZoneError",
    "ProtocolError",
    "UnknownOp",
    "BadArgs",
    "ChannelError",
    "ConnectError",
    "ChannelBusy",
    "ChannelClosed",
    "ZoneTimeout",
    "ZoneUnresponsive",
    "StateError",
]
