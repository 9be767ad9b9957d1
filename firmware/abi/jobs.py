"""Jobs as the host sees them: their states and the limits of what a job request carries.

A detached job (``submit``) lives in the zone's outbox until the host acknowledges it::

    queued -> running -> done | failed | interrupted        (FINAL: the result is there)

``acknowledged`` is what ``submit`` answers for an idempotency key whose job the host already
acknowledged. Runs in the guest and on the host: standard library only.
"""

from __future__ import annotations

import enum

__all__ = ["JobState", "FINAL", "NONCE_MAX", "KEY_MIN", "KEY_MAX", "RESULT_WAIT_MAX", "TIMED_JOBS"]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # running when the power went, or its applet was replaced
    ACKNOWLEDGED = "acknowledged"


#: States in which a job's result (output and receipt, or error) is final.
FINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.INTERRUPTED})
#: The most bytes of a caller's nonce a job (and its receipt) binds.
NONCE_MAX = 64
#: An idempotency key's length in bytes.
KEY_MIN, KEY_MAX = 8, 64
#: The most seconds the zone holds one ``result`` answer (a client waiting longer asks again).
RESULT_WAIT_MAX = 60
#: ``stats``' job_phases_ms: medians over the last TIMED_JOBS jobs.
TIMED_JOBS = 64
