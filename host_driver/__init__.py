"""SEZ host driver: talks to a zone over its virtio-serial control channel.

The host side is untrusted (DESIGN §2): it holds no secret and only relays. ``Zone`` is the
asyncio client, ``SyncZone`` its blocking facade; errors come from one tree rooted in
``SezError`` (see ``host_driver.errors``).
"""

import logging

from firmware.abi.errors import BadArgs, ProtocolError, SezError, UnknownOp, ZoneError

from .client import DEFAULT_TIMEOUT, Zone, ZoneState
from .errors import (ChannelBusy, ChannelClosed, ChannelError, ConnectError, StateError,
                     ZoneTimeout, ZoneUnresponsive)
from .sync import SyncZone

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
