"""The device ABI: what crosses the channel, shared by the zone and the host driver."""

from .errors import BadArgs, Code, ProtocolError, SezError, UnknownOp, ZoneError, error_for_code
from .wire import MAX_PAYLOAD, VERSION, Fault, Frame, FrameDecoder, Kind

PROTOCOL_VERSION = VERSION

__all__ = [
    "BadArgs",
    "Code",
    "Fault",
    "Frame",
    "FrameDecoder",
    "Kind",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "SezError",
    "UnknownOp",
    "ZoneError",
    "error_for_code",
]
