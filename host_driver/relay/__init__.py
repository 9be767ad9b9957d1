"""The untrusted relay: the host's end of the zone's control channel.

The host holds no secret and proves nothing (docs/architecture.md, "Trust boundary"): it opens
the channel (``channel``), sends requests and matches their answers (``client.Zone``, asyncio),
and offers the same calls blocking (``sync.SyncZone``). Whatever it relays is appraised by a
relying party with ``host_driver.verifier``.
"""

from .client import DEFAULT_TIMEOUT, Zone, ZoneState
from .sync import SyncZone

__all__ = ["DEFAULT_TIMEOUT", "Zone", "ZoneState", "SyncZone"]
