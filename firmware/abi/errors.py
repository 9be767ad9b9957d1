"""The error codes the zone puts on the wire, one exception class per code, and the one root.

Every failure anywhere in SEZ is a :class:`SezError`. The tree::

    SezError
     +-- ZoneError              the zone refused or failed a request; .code is the wire code
     |    +-- ProtocolError     the zone could not read what was sent
     |    |    +-- BadFrame, FrameTooLarge, TruncatedFrame, BadCbor, BadRequest,
     |    |        UnexpectedKind
     |    +-- UnknownOp, BadArgs, NoIdentity, BbramError, NotOwner, Rollback, BadPackage,
     |        NoSuchApplet, AppletFailed, OutboxFull, NoSuchJob, Interrupted, AuditFull,
     |        NoSuchSchedule, BadBlob, NeedsSession, NoSuchSession, TooManySessions,
     |        SessionFailed, NoSuchSecret, SecretExists, SecretDenied, PolicyUnmatched,
     |        DebugRefused, Tampered, Internal
     +-- cose.CoseError         a COSE_Sign1 that is malformed or does not verify
     +-- (emulator.errors)      the "hardware": image, machine lifecycle, boot
     +-- (host_driver.errors)   the host side of the channel: connect, timeout, closed

A zone process raises the class of the code; the monitor turns it into an error frame, and
the host driver turns the frame back into the same class (:func:`error_for_code`), so both
sides catch one name for one failure: ``except NotOwner``, never ``exc.code == "not-owner"``.
This module runs inside the guest: standard library only.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "Code", "SezError", "ZoneError", "ProtocolError", "BadFrame", "FrameTooLarge",
    "TruncatedFrame", "BadCbor", "BadRequest", "UnexpectedKind", "UnknownOp", "BadArgs",
    "NoIdentity", "BbramError", "NotOwner", "Rollback", "BadPackage", "NoSuchApplet",
    "AppletFailed", "OutboxFull", "NoSuchJob", "Interrupted", "AuditFull", "NoSuchSchedule",
    "BadBlob", "NeedsSession", "NoSuchSession", "TooManySessions", "SessionFailed",
    "NoSuchSecret", "SecretExists", "SecretDenied", "PolicyUnmatched", "DebugRefused",
    "Tampered", "Internal",
    "error_for_code",
]


class Code(enum.StrEnum):
    """Error codes carried in ``error.code`` of a response frame."""

    BAD_FRAME = "bad-frame"  # bytes that are not a frame header (skipped while resynchronising)
    FRAME_TOO_LARGE = "frame-too-large"  # a header announcing more than the maximum payload
    TRUNCATED_FRAME = "truncated-frame"  # a message started, then another began
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
    BAD_BLOB = "bad-blob"  # a sealed blob that does not open for this applet (or was changed)
    NEEDS_SESSION = "needs-session"  # an operation only an attested session may request
    NO_SUCH_SESSION = "no-such-session"  # not open (never opened, closed, or a new host)
    TOO_MANY_SESSIONS = "too-many-sessions"
    SESSION_FAILED = "session-failed"  # the session's TLS failed (bytes changed, lost, forged)
    NO_SUCH_SECRET = "no-such-secret"
    SECRET_EXISTS = "secret-exists"  # secrets are written once
    SECRET_DENIED = "secret-denied"  # the secret's policy does not admit this applet
    POLICY_UNMATCHED = "policy-unmatched"  # provisioning to a policy no loaded applet meets
    DEBUG_REFUSED = "debug-refused"  # a debug zone, and a secret's policy does not allow one
    TAMPERED = "tampered"  # the tamper line tripped: every key and the BBRAM are zeroised
    INTERNAL = "internal"  # a fault inside the zone; the zone keeps serving

    #: The codes of ProtocolError: what crossed the channel could not be read as a request.
    PROTOCOL: ClassVar[frozenset[Code]]


Code.PROTOCOL = frozenset({Code.BAD_FRAME, Code.FRAME_TOO_LARGE, Code.TRUNCATED_FRAME,
                           Code.BAD_CBOR, Code.BAD_REQUEST, Code.UNEXPECTED_KIND})

class SezError(Exception):
    """Root of every error SEZ raises."""


class ZoneError(SezError):
    """The zone refused or failed a request. ``code`` is the wire code: a :class:`Code`, or
    the text of a code this side does not know (a newer zone)."""

    code: Code | str = Code.INTERNAL

    def __init__(self, message: str, *, code: Code | str | None = None,
                 request_id: object = None) -> None:
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


class BadFrame(ProtocolError):
    code = Code.BAD_FRAME


class FrameTooLarge(ProtocolError):
    code = Code.FRAME_TOO_LARGE


class TruncatedFrame(ProtocolError):
    code = Code.TRUNCATED_FRAME


class BadCbor(ProtocolError):
    code = Code.BAD_CBOR


class BadRequest(ProtocolError):
    code = Code.BAD_REQUEST


class UnexpectedKind(ProtocolError):
    code = Code.UNEXPECTED_KIND


class UnknownOp(ZoneError):
    code = Code.UNKNOWN_OP


class BadArgs(ZoneError):
    code = Code.BAD_ARGS


class NoIdentity(ZoneError):
    """The zone has no usable identity (no fuses, fuses that do not match DeviceID, or a key
    keeper that does not answer): it cannot attest or sign."""

    code = Code.NO_IDENTITY


class BbramError(ZoneError):
    """The persistent state cannot be read (unauthenticated) or committed."""

    code = Code.BBRAM


class NotOwner(ZoneError):
    code = Code.NOT_OWNER


class Rollback(ZoneError):
    code = Code.ROLLBACK


class BadPackage(ZoneError):
    """An applet package that is malformed or lies about itself."""

    code = Code.BAD_PACKAGE


class NoSuchApplet(ZoneError):
    code = Code.NO_SUCH_APPLET


class AppletFailed(ZoneError):
    code = Code.APPLET_FAILED


class OutboxFull(ZoneError):
    code = Code.OUTBOX_FULL


class NoSuchJob(ZoneError):
    code = Code.NO_SUCH_JOB


class Interrupted(ZoneError):
    code = Code.INTERRUPTED


class AuditFull(ZoneError):
    code = Code.AUDIT_FULL


class NoSuchSchedule(ZoneError):
    code = Code.NO_SUCH_SCHEDULE


class BadBlob(ZoneError):
    """A sealed blob that does not open: another device, owner or applet sealed it, a newer
    version of this applet did, or it was changed."""

    code = Code.BAD_BLOB


class NeedsSession(ZoneError):
    """An operation that carries secrets: the zone takes it only inside an attested session."""

    code = Code.NEEDS_SESSION


class NoSuchSession(ZoneError):
    code = Code.NO_SUCH_SESSION


class TooManySessions(ZoneError):
    code = Code.TOO_MANY_SESSIONS


class SessionFailed(ZoneError):
    """A session's TLS failed: its bytes were changed, dropped, replayed or forged on the way,
    or its peer's certificate or evidence did not verify. The session is gone; others go on."""

    code = Code.SESSION_FAILED


class NoSuchSecret(ZoneError):
    code = Code.NO_SUCH_SECRET


class SecretExists(ZoneError):
    """A secret of that name is already provisioned: secrets are written once."""

    code = Code.SECRET_EXISTS


class SecretDenied(ZoneError):
    """The secret's policy does not admit the applet that asked for it."""

    code = Code.SECRET_DENIED


class PolicyUnmatched(ZoneError):
    """Provisioning to a policy that no loaded applet meets."""

    code = Code.POLICY_UNMATCHED


class DebugRefused(ZoneError):
    """The zone runs in debug mode, and the secret's policy does not say ``debug: true``."""

    code = Code.DEBUG_REFUSED


class Tampered(ZoneError):
    """The zone's tamper line tripped: it zeroised every key, BBRAM, the secrets and the
    sealing keys, and the emulator wiped the fuses. Nothing it signed before can be made
    again; the device must be provisioned anew (``sez device new NAME --force``)."""

    code = Code.TAMPERED


class Internal(ZoneError):
    code = Code.INTERNAL


_BY_CODE: dict[str, type[ZoneError]] = {
    cls.code: cls for cls in (
        BadFrame, FrameTooLarge, TruncatedFrame, BadCbor, BadRequest, UnexpectedKind,
        UnknownOp, BadArgs, NoIdentity, BbramError, NotOwner, Rollback, BadPackage,
        NoSuchApplet, AppletFailed, OutboxFull, NoSuchJob, Interrupted, AuditFull,
        NoSuchSchedule, BadBlob, NeedsSession, NoSuchSession, TooManySessions,
        SessionFailed, NoSuchSecret, SecretExists, SecretDenied, PolicyUnmatched,
        DebugRefused, Tampered, Internal)
}


def error_for_code(code: str, message: str, request_id: object = None) -> ZoneError:
    """The exception an error frame stands for: the class of its code, or a plain ZoneError
    carrying a code this side does not know."""
    try:
        known = Code(code)
    except ValueError:
        return ZoneError(message, code=code, request_id=request_id)
    return _BY_CODE[known](message, request_id=request_id)
