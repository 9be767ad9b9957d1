"""The zone's own operations: identity and evidence, the owner, applets, jobs, schedules, the
audit log and provisioned secrets. Each ``op_*`` takes the request's args and returns its
result, or a Deferred of it; bad args raise BadArgs before anything changes. The monitor
(firmware.monitor.server) routes requests here and answers the host: ``table()`` on any
channel, ``session_table()`` only inside an attested session.

This is where the monitor's parts meet: the persistent store (store, state, audit), the jobs
(jobs, run by firmware.runner), the schedules (schedules), and the key keeper (links).
"""

from __future__ import annotations

from typing import Any, Callable

from ..abi import evidence, secret
from ..abi.audit import KEPT
from ..abi.jobs import KEY_MAX, KEY_MIN, NONCE_MAX, RESULT_WAIT_MAX
from ..abi.receipt import BATCH_MAX
from ..abi.errors import BadArgs
from ..abi.ops import Op
from ..runtime.ipc import KeeperOp
from ..runtime.reactor import Reactor
from .deferred import Deferred
from .jobs import Jobs
from .links import KeeperLink
from .schedules import Schedules
from .store import ZoneStore

__all__ = ["Operations"]


class Operations:
    def __init__(self, loop: Reactor, keeper: KeeperLink,
                 host_claims: Callable[[], dict[str, int]]) -> None:
        self.keeper = keeper
        self.host_claims = host_claims
        self.store = ZoneStore(keeper)
        self.jobs = Jobs(loop, keeper, self.store)
        self.schedules = Schedules(loop, self.store, self.jobs)
        self.store.ready.add(self._resume)

    def _resume(self, ready: Deferred) -> None:
        """Once the state is loaded: queued jobs run again, schedules tick again."""
        if ready.error is None:
            self.schedules.start(self.jobs.recover())

    def table(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            Op.ATTEST: self.op_attest,
            Op.IDENTITY: self.op_identity,
            Op.OWNER: self.op_owner,
            Op.ENROLL: self.op_enroll,
            Op.LOAD: self.op_load,
            Op.APPLETS: self.op_applets,
            Op.RUN: self.op_run,
            Op.SUBMIT: self.op_submit,
            Op.RESULT: self.op_result,
            Op.ACK: self.op_ack,
            Op.JOBS: self.op_jobs,
            Op.SCHEDULE: self.op_schedule,
            Op.UNSCHEDULE: self.op_unschedule,
            Op.SCHEDULES: self.op_schedules,
            Op.AUDIT: self.op_audit,
            Op.AUDIT_ACK: self.op_audit_ack,
            Op.SECRET_LIST: self.op_secret_list,
        }

    def session_table(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The operations only an attested session may request (firmware.monitor.sessions):
        they carry secrets, which the host would read on the plain channel; there the monitor
        answers NeedsSession."""
        return {
            Op.SECRET_PUT: self.op_secret_put,
        }

    def op_attest(self, args: dict[str, Any]) -> Deferred:
        """Evidence for the verifier's ``nonce``: an EAT signed by layer 0's alias key."""
        nonce = args.get("nonce")
        if not isinstance(nonce, bytes) or not (
                evidence.NONCE_MIN <= len(nonce) <= evidence.NONCE_MAX):
            raise BadArgs(f"attest takes {{nonce: {evidence.NONCE_MIN} to {evidence.NONCE_MAX} "
                          "bytes}")
        return self.store.ready.then(lambda _: self.keeper.call(
            KeeperOp.EVIDENCE, {"nonce": nonce, "claims": {
                **self.store.claims(), evidence.HOST: self.host_claims()}})
        ).then(
            lambda result: {"evidence": result["evidence"]})

    def op_identity(self, args: dict[str, Any]) -> Deferred:
        """UEID, alias and DeviceID certificates (DER), measurements, debug."""
        return self.keeper.call(KeeperOp.IDENTITY, {})

    def op_owner(self, args: dict[str, Any]) -> Deferred:
        """The enrolled owner's key fingerprint (SHA-256 of its SPKI), the epoch, the UEID."""
        return self.store.ready.then(lambda _: self.store.owner())

    def op_enroll(self, args: dict[str, Any]) -> Deferred:
        """Bind ``owner`` (SPKI DER); replacing an owner needs ``authorization`` (see store)."""
        return self.store.ready.then(
            lambda _: self.store.enroll(args.get("owner"), args.get("authorization")))

    def op_load(self, args: dict[str, Any]) -> Deferred:
        """Load an owner-signed applet package (the bytes of a .sez file)."""
        return self.store.ready.then(lambda _: self.store.load(args.get("package")))

    def op_applets(self, args: dict[str, Any]) -> Deferred:
        return self.store.ready.then(lambda _: {"applets": self.store.listing()})

    def op_run(self, args: dict[str, Any]) -> Deferred:
        """Run ``applet`` (name or id) on ``input``; answer {job, applet, output, receipt}. A
        batch job runs it on each of ``inputs`` in turn (one process, one receipt over all:
        abi.receipt) and answers ``outputs``."""
        data, nonce = args.get("inputs", args.get("input", b"")), args.get("nonce", b"")
        if isinstance(data, list) and "input" not in args and 1 <= len(data) <= BATCH_MAX:
            if not all(isinstance(item, bytes) for item in data):
                raise BadArgs("a batch's inputs are bytes")
        elif not isinstance(data, bytes):
            raise BadArgs(f"run takes {{applet, input: bytes, nonce: bytes}}, or inputs: "
                          f"1 to {BATCH_MAX} bytes instead of input")
        _check_nonce(nonce)
        return self.store.ready.then(
            lambda _: self.jobs.run(self.store.find(args.get("applet")), data, nonce))

    def op_submit(self, args: dict[str, Any]) -> Deferred:
        """Queue a detached job: {job, state, duplicate}. ``key`` (bytes, optional) makes a
        retried submission return the first one's job instead of running again."""
        data, nonce, key = args.get("input", b""), args.get("nonce", b""), args.get("key")
        if not isinstance(data, bytes):
            raise BadArgs("submit takes {applet, input: bytes, nonce: bytes, key: bytes}")
        _check_nonce(nonce)
        if key is not None and (not isinstance(key, bytes) or
                                not KEY_MIN <= len(key) <= KEY_MAX):
            raise BadArgs(f"the idempotency key must be {KEY_MIN} to {KEY_MAX} bytes")
        return self.store.ready.then(lambda _: self.jobs.submit(
            self.store.find(args.get("applet")), data, nonce, key))

    def op_result(self, args: dict[str, Any]) -> Deferred:
        """A detached job's state, and its output and receipt (or error) once final. ``wait``
        (seconds, at most RESULT_WAIT_MAX) holds the answer until then. The result stays in the
        outbox until ``ack``."""
        job, wait = args.get("job"), args.get("wait", 0)
        if not isinstance(job, str) or type(wait) not in (int, float) or not (
                0 <= wait <= RESULT_WAIT_MAX):
            raise BadArgs(f"result takes {{job: text, wait: 0..{RESULT_WAIT_MAX} seconds}}")
        return self.store.ready.then(lambda _: self.jobs.result(job, float(wait)))

    def op_ack(self, args: dict[str, Any]) -> Deferred:
        """The host has a job's result: the zone may forget it."""
        job = args.get("job")
        if not isinstance(job, str):
            raise BadArgs("ack takes {job: text}")
        return self.store.ready.then(lambda _: self.store.ack(job))

    def op_jobs(self, args: dict[str, Any]) -> Deferred:
        """The outbox: every detached job not yet acknowledged, with its state."""
        return self.store.ready.then(lambda _: {"jobs": self.jobs.listing()})

    def op_schedule(self, args: dict[str, Any]) -> Deferred:
        """Install an owner-signed schedule (abi.schedule); it runs at once, then
        every ``every`` seconds, with or without a host."""
        return self.store.ready.then(lambda _: self.schedules.change(args.get("change"),
                                                                     Op.SCHEDULE))

    def op_unschedule(self, args: dict[str, Any]) -> Deferred:
        """Remove a schedule (an owner-signed unschedule change)."""
        return self.store.ready.then(lambda _: self.schedules.change(args.get("change"),
                                                                     Op.UNSCHEDULE))

    def op_schedules(self, args: dict[str, Any]) -> Deferred:
        """{ueid, epoch, schedules: [{name, applet, every, runs, skipped, ...}]}; a change
        must name this epoch."""
        return self.store.ready.then(lambda _: self.schedules.listing())

    def op_audit(self, args: dict[str, Any]) -> Deferred:
        """Audit-log entries after sequence number ``after`` (at most ``limit``), with the
        certificate chain [alias, DeviceID] of the key that signed them."""
        after, limit = args.get("after", 0), args.get("limit", 256)
        if type(after) is not int or after < 0 or type(limit) is not int or not (
                1 <= limit <= KEPT):
            raise BadArgs(f"audit takes {{after: sequence number >= 0, limit: 1..{KEPT}}}")

        def fetch(identity: dict[str, Any]) -> dict[str, Any]:
            return {**self.store.audit.fetch(after, limit),
                    "chain": [identity["alias_cert"], identity["device_id_cert"]]}

        return self.store.ready.then(lambda _: self.keeper.call(KeeperOp.IDENTITY, {})).then(fetch)

    def op_audit_ack(self, args: dict[str, Any]) -> Deferred:
        """The host has the entries up to sequence number ``upto``: the zone may forget them."""
        upto = args.get("upto")
        if type(upto) is not int or upto < 0:
            raise BadArgs("audit-ack takes {upto: sequence number}")
        return self.store.ready.then(lambda _: self.store.audit.ack(upto))

    def op_secret_put(self, args: dict[str, Any]) -> Deferred:
        """Provision secret ``name`` with ``value`` for the applets ``policy`` admits
        (abi.secret; an applet policy without an owner gets the enrolled one); answer
        {name, policy} once it is in BBRAM. Written once: SecretExists for a name already
        provisioned; PolicyUnmatched if no loaded applet meets the policy."""
        name = secret.check_name(args.get("name"))
        value = secret.check_value(args.get("value"))
        policy = secret.parse_policy(args.get("policy"), complete=False)
        return self.store.ready.then(lambda _: self.store.put_secret(name, value, policy))

    def op_secret_list(self, args: dict[str, Any]) -> Deferred:
        """{secrets: [{name, policy}]}: what is provisioned and for whom, never a value."""
        return self.store.ready.then(lambda _: {"secrets": self.store.secret_listing()})


def _check_nonce(nonce: Any) -> None:
    if not isinstance(nonce, bytes) or len(nonce) > NONCE_MAX:
        raise BadArgs(f"the nonce must be 0 to {NONCE_MAX} bytes")
