"""The operations a host may request over the control channel (``{id, op, args}``).

Each is answered by the monitor (firmware.monitor); the client method of the same name
(host_driver.relay.client.Zone) documents its arguments and result. Runs in the guest and on the
host: standard library only.
"""

from __future__ import annotations

import enum

__all__ = ["Op"]


class Op(enum.StrEnum):
    # the session and diagnostics
    HELLO = "hello"
    INFO = "info"
    ECHO = "echo"
    SINK = "sink"
    SOURCE = "source"
    STATS = "stats"
    POWEROFF = "poweroff"
    # identity and evidence
    ATTEST = "attest"
    IDENTITY = "identity"
    # the owner and trusted code
    OWNER = "owner"
    ENROLL = "enroll"
    LOAD = "load"
    APPLETS = "applets"
    # jobs
    RUN = "run"
    SUBMIT = "submit"
    RESULT = "result"
    ACK = "ack"
    JOBS = "jobs"
    # schedules and the audit log
    SCHEDULE = "schedule"
    UNSCHEDULE = "unschedule"
    SCHEDULES = "schedules"
    AUDIT = "audit"
    AUDIT_ACK = "audit-ack"
    # attested sessions (TLS 1.3 terminating in the zone, carried over this channel)
    SESSION_OPEN = "session-open"
    SESSION_DATA = "session-data"
    SESSION_CLOSE = "session-close"
    # provisioned secrets (secret-put only inside a session)
    SECRET_PUT = "secret-put"
    SECRET_LIST = "secret-list"
