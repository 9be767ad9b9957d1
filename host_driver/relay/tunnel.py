"""One attested session's bytes, as the untrusted host relays them.

A :class:`Tunnel` is the host's view of a session (firmware.monitor.sessions): opaque TLS
bytes each way, nothing more. ``sez relay`` joins one to a TCP connection; an attested
:class:`~host_driver.relay.session.Session` runs TLS over one. The host never holds the
session's keys.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from firmware.abi.errors import SessionFailed, SezError
from firmware.abi.ops import Op

#: How a tunnel sends a request whose answer matters only if it is an error (Zone._post).
Post = Callable[[str, dict[str, Any], Callable[[SezError], None]], None]

__all__ = ["Tunnel", "DATA_PIECE"]

#: Most TLS bytes one ``session-data`` carries: a message of up to wire.MAX_PAYLOAD is more
#: than one request may be once encrypted, so it goes in several.
DATA_PIECE = 1 << 20


class Tunnel:
    """Session ``number`` on the channel at ``url``: ``write`` sends TLS bytes to the zone's
    endpoint, ``on_data`` gets what it sends back, ``on_close`` (once) how the session ended.
    Zone.tunnel makes them, giving each its way to send (``post``), to wait for room
    (``drain``) and to be forgotten when closed (``forget``)."""

    def __init__(self, url: str, number: int, post: Post, drain: Callable[[], Awaitable[None]],
                 forget: Callable[[int], None]) -> None:
        self.number = number
        self.url = f"{url}#session-{number}"
        self._post = post
        self._drain = drain
        self._forget = forget
        self.on_data: Callable[[bytes], None] = lambda data: None
        self.on_close: Callable[[SezError | None], None] = lambda error: None
        self.closed = False
        self.sent = self.received = 0

    def write(self, data: bytes) -> None:
        """Relay ``data`` to the zone, in requests of at most DATA_PIECE bytes (in order; a
        refusal closes the tunnel)."""
        if self.closed or not data:
            return
        self.sent += len(data)
        for start in range(0, len(data), DATA_PIECE):
            if self.closed:  # a piece was refused at once: the channel is gone
                return
            self._post(Op.SESSION_DATA, {"session": self.number,
                                         "data": bytes(data[start:start + DATA_PIECE])},
                       self._refused)

    async def drain(self) -> None:
        await self._drain()

    def close(self) -> None:
        """End the session (the zone forgets it). Idempotent."""
        if self.closed:
            return
        self._closed(None)
        self._post(Op.SESSION_CLOSE, {"session": self.number}, lambda error: None)

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
        self._forget(self.number)
        self.on_close(error)

