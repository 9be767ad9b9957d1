"""The host side's errors. The whole tree (rooted in firmware.abi.errors)::

    SezError
     +-- ZoneError                 the zone answered with an error frame (.code, .request_id)
     |    +-- ProtocolError        it could not read what was sent
     |    +-- UnknownOp, BadArgs
     +-- ChannelError              the channel to the zone
     |    +-- ConnectError         could not open it (no such PTY, bad URL)
     |    |    +-- ChannelBusy     another driver holds it
     |    +-- ChannelClosed        it closed under us (QEMU gone, close() called)
     +-- ZoneTimeout               no answer in time (also a builtin TimeoutError)
     |    +-- ZoneUnresponsive     the zone stopped answering heartbeats: frozen or gone
     +-- StateError                a call at the wrong time (names the state)
     +-- emulator.errors.*         image, device, machine lifecycle, boot
"""

from __future__ import annotations

from firmware.abi.errors import BadArgs, ProtocolError, SezError, UnknownOp, ZoneError

__all__ = [
    "SezError", "ZoneError", "ProtocolError", "UnknownOp", "BadArgs",
    "ChannelError", "ConnectError", "ChannelBusy", "ChannelClosed", "ZoneTimeout", "ZoneUnresponsive", "StateError",
]


class ChannelError(SezError):
    """The byte channel to the zone could not be used."""


class ConnectError(ChannelError):
    """The channel could not be opened."""


class ChannelBusy(ConnectError):
    """Another host driver holds the channel (it is locked exclusively)."""


class ChannelClosed(ChannelError):
    """The channel closed while a request was waiting, or was used after close()."""


class ZoneTimeout(SezError, TimeoutError):
    """The zone did not answer in time. ``op`` and ``seconds`` say what and how long."""

    def __init__(self, message: str, *, op: str | None = None, seconds: float | None = None):
        super().__init__(message)
        self.op = op
        self.seconds = seconds


class ZoneUnresponsive(ZoneTimeout):
    """The zone answered no heartbeat in time: it is frozen or gone. Every waiting call and
    every later one on this client raises it."""


class StateError(SezError):
    """A call that the client's current state does not allow."""
