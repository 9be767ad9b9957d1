"""One attested session's bytes, as the untrusted host relays them.

A :class:`Tunnel` is the host's view of a session (firmware.monitor.sessions): opaque TLS
bytes each way, nothing more. ``sez relay`` joins one to a TCP connection; an attested
:class:`~host_driver.relay.session.Session` runs TLS over one. The host never holds the
session's keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from firmware.abi.errors import SessionFailed, SezError
from firmware.abi.ops import Op

if TYPE_CHECKING:
    from .client import Zone

__all__ = ["Tunnel"]


class Tunnel:
    """Session ``number`` of ``zone``: ``write`` sends TLS bytes to the zone's endpoint,
    ``on_data`` gets what it sends back, ``on_close`` (once) how the session ended."""

    def __init__(self, zone: "Zone", number: int) -> None:
        self.zone = zone
        self.number = number
        self.url = f"{zone.url}#session-{number}"
        self.on_data: Callable[[bytes], None] = lambda data: None
        self.on_close: Callable[[SezError | None], None] = lambda error: None
        self.closed = False
        self.sent = self.received = 0

    def write(self, data: bytes) -> None:
        """Relay ``data`` to the zone (in order; a refusal closes the tunnel)."""
        if self.closed or not data:
            return
        self.sent += len(data)
        self.zone._post(Op.SESSION_DATA, {"session": self.number, "data": bytes(data)},
                        self._refused)

    async def drain(self) -> None:
        await self.zone._drain()

    def close(self) -> None:
        """End the session (the zone forgets it). Idempotent."""
        if self.closed:
            return
        self._closed(None)
        self.zone._post(Op.SESSION_CLOSE, {"session": self.number}, lambda error: None)

    # -- from the zone --------------------------------------------------------------------

    def event(self, event: dict[str, Any]) -> None:
        data = event.get("data")
        if isinstance(data, bytes):
            if not self.closed:
                self.received += len(data)
                self.on_data(data)
            return
        closed = event.get("closed")
        if isinstance(closed, dict):
            self._closed(SessionFailed(str(closed.get("message")), request_id=None))
        else:
            self._closed(None)

    def _refused(self, error: SezError) -> None:
        self._closed(error)

    def _closed(self, error: SezError | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.zone._tunnels.pop(self.number, None)
        self.on_close(error)

