"""The error codes the zone puts on the wire, and the one exception root.

Every failure anywhere in SEZ is a :class:`SezError`. The tree is short::

    SezError
     +-- ZoneError            the zone answered with an error frame; .code is the wire code
     |    +-- ProtocolError   the zone could not read what was sent (framing, CBOR, request shape)
     |    +-- UnknownOp       no such operation
     |    +-- BadArgs         the operation exists, its arguments do not fit
     +-- (emulator.errors)    the "hardware": image, machine lifecycle, boot
     +-- (host_driver.errors) the host side of the channel: connect, timeout, closed

The zone raises ZoneError subclasses internally; the monitor turns each into an error frame and
the host driver turns each error frame back into the same class, so both sides share one name
for one failure. This module runs inside the guest: standard library only.
"""

from __future__ import annotations

__all__ = [
    "SezError",
    "ZoneError",
    "ProtocolError",
    "UnknownOp",
    "BadArgs",
    "Code",
    "error_for_code",
]


class Code:
    """Error codes carried in ``error.code`` of a response frame."""

    BAD_FRAME = "bad-frame"  # bytes that are not a frame header (skipped while resynchronising)
    FRAME_TOO_LARGE = "frame-too-large"  # a header announcing more than the maximum payload
    TRUNCATED_FRAME = "truncated-frame"  # a frame started, then the sender fell silent
    BAD_CBOR = "bad-cbor"  # the payload is not exactly one CBOR item
    BAD_REQUEST = "bad-request"  # CBOR, but not {id, op, args}
    UNEXPECTED_KIND = "unexpected-kind"  # the host sent a response or event frame
    UNKNOWN_OP = "unknown-op"
    BAD_ARGS = "bad-args"
    NO_IDENTITY = "no-identity"  # the zone cannot attest (no fuses, or they do not match)
    BBRAM = "bbram"  # persistent state unreadable (unauthenticated) or a commit failed
    NOT_OWNER = "not-owner"  # no owner enrolled, or the signature is not the owner's
    ROLLBACK = "rollback"  # an applet version lower than the highest seen for its name
    BAD_PACKAGE = "bad-package"  # an applet package that is malformed or lies about itself
    NO_SUCH_APPLET = "no-such-applet"
    APPLET_FAILED = "applet-failed"  # the applet raised, crashed or broke a limit
    OUTBOX_FULL = "outbox-full"  # no room for another detached job until results are acked
    NO_SUCH_JOB = "no-such-job"  # not in the outbox (never submitted, or acknowledged)
    INTERRUPTED = "interrupted"  # the job was running when the power went
    AUDIT_FULL = "audit-full"  # the audit log holds its most: the host must acknowledge entries
    NO_SUCH_SCHEDULE = "no-such-schedule"
    INTERNAL = "internal"  # a fault inside the zone; the zone keeps serving

    PROTOCOL = frozenset(
        {BAD_FRAME, FRAME_TOO_LARGE, TRUNCATED_FRAME, BAD_CBOR, BAD_REQUEST, UNEXPECTED_KIND}
    )


class SezError(Exception):
    """Root of every error SEZ raises."""


class ZoneError(SezError):
    """The zone refused or failed a request. ``code`` is the wire code (see :class:`Code`)."""

    code = Code.INTERNAL

    def __init__(self, message: str, *, code: str | None = None, request_id: object = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class ProtocolError(ZoneError):
    """What crossed the channel could not be read as a request."""

    code = Code.BAD_REQUEST


class UnknownOp(ZoneError):
    code = Code.UNKNOWN_OP


class BadArgs(ZoneError):
    code = Code.BAD_ARGS


def error_for_code(code: str, message: str, request_id: object = None) -> ZoneError:
    """Rebuild the exception a zone error frame stands for."""
    if code in Code.PROTOCOL:
        cls: type[ZoneError] = ProtocolError
    elif code == Code.UNKNOWN_OP:
        cls = UnknownOp
    elif code == Code.BAD_ARGS:
        cls = BadArgs
    else:
        cls = ZoneError
    return cls(message, code=code, request_id=request_id)
