"""The policy on the zone's persistent state (firmware.monitor.state): ownership, applets,
rollback counters, the job counter, the outbox of detached jobs and provisioned secrets.

The state map::

    owner        SPKI (DER) of the enrolled owner, or absent
    owner_epoch  +1 at every enrolment (an owner's authorization names the epoch it replaces)
    rollback     {name: highest version ever loaded}
    applets      {name: canonical package}  (versions of one name replace each other)
    audit, audit_next, audit_last
                 the audit log (firmware.monitor.audit): enrolments, loads, schedule changes and
                 scheduled runs, each committed together with the change it records
    schedules    {name: {applet, measurement, input, every, runs}} (monitor.schedules)
    schedule_epoch  +1 at every schedule change (a change names the epoch it replaces)
    job_lease    job counters below this may have been used: a boot starts at the lease and
                 reserves JOB_LEASE more, so the counter never repeats across power cuts
    outbox       {job: record} of detached jobs until the host acknowledges their result:
                 {applet, measurement, input, nonce, key, state, output, receipt, error,
                 submitted, finished, and for a scheduled run: schedule, run, skipped};
                 state: abi.jobs.JobState
    acked        {key: job} of the last ACKED_KEPT acknowledged jobs (idempotent retries)
    secrets      {name: {policy, blob}}: provisioned secrets (abi.secret), each value sealed
                 by layer 0 to its name and policy (firmware.layer0.secrets); written once
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import cbor2

from ..abi import applet as applets
from ..abi import evidence, secret
from ..abi.audit import GENESIS
from ..abi.errors import (BadArgs, BadPackage, NoSuchApplet, NoSuchJob, NotOwner, OutboxFull,
                          PolicyUnmatched, Rollback, SecretExists, Tampered)
from ..abi.jobs import FINAL, JobState
from ..abi.keys import key_id
from ..runtime.ipc import KeeperOp
from .audit import AuditLog
from .deferred import Deferred
from .links import KeeperLink
from .state import Mutation, State

JOB_LEASE = 1024
#: Detached jobs the outbox holds (queued, running or unacknowledged), and their bytes.
OUTBOX_JOBS = 1024
OUTBOX_BYTES = 3 << 20
ACKED_KEPT = 1024


class ZoneStore:
    def __init__(self, keeper: KeeperLink) -> None:
        self.keeper = keeper
        self.state = State(keeper)
        self.packages: dict[str, applets.Package] = {}
        self.ueid = b""
        self.unreadable: list[str] = []
        self.next_job = 0
        self.audit = AuditLog(self.state, keeper)
        #: Why the zone is zeroised (layer 0 answered ``tampered``), or None.
        self.tampered: str | None = None
        identity = keeper.call(KeeperOp.IDENTITY, {}).then(self._identified)
        self.ready = identity.then(lambda _: keeper.call(KeeperOp.BBRAM_LOAD, {})).then(
            self._read_log).then(self._loaded)
        self.ready.add(self._unloadable)

    @property
    def status(self) -> str:
        return self.state.status

    def update(self, mutate: Mutation) -> Deferred:
        return self.state.update(mutate)

    def _identified(self, identity: dict[str, Any]) -> None:
        self.ueid = bytes(identity["ueid"])

    def _unloadable(self, ready: Deferred) -> None:
        if isinstance(ready.error, Tampered):
            self.state.status = evidence.BbramStatus.TAMPERED
            self.tampered = ready.error.message

    def _read_log(self, result: dict[str, Any]) -> Deferred:
        """The load's answer, with the changes of every page that follows it."""
        if not result.get("more"):
            return Deferred.of(result)

        def add(page: dict[str, Any]) -> Deferred:
            return self._read_log({**result, "changes": list(result["changes"]) +
                                   list(page["changes"]), "more": page["more"]})

        return self.keeper.call(KeeperOp.BBRAM_LOAD,
                                {"after": len(result["changes"])}).then(add)

    def _loaded(self, result: dict[str, Any]) -> Deferred:
        self.state.loaded(str(result["status"]), dict(result["state"]),
                          list(result["changes"]), int(result["room"]))
        for name, raw in self.state.map.get("applets", {}).items():
            try:
                self.packages[name] = applets.parse(raw)
            except BadPackage as exc:  # a package this firmware cannot read any more
                self.unreadable.append(f"{name}: {exc}")
        self.next_job = int(self.state.map.get("job_lease", 0))
        if not self.state.usable:
            return Deferred.of()
        return self.update(lambda state: state.update(job_lease=self.next_job + JOB_LEASE))

    # -- ownership ---------------------------------------------------------------------------

    def owner(self) -> dict[str, Any]:
        owner = self.state.map.get("owner")
        return {"owner": key_id(owner).hex() if owner else None,
                "epoch": int(self.state.map.get("owner_epoch", 0)), "ueid": self.ueid}

    def enroll(self, new_owner: Any, authorization: Any) -> Deferred:
        """First enrolment is free; a new owner needs the current owner's signature over
        ``{op: "enroll", owner, ueid, epoch}`` (COSE_Sign1)."""
        if not isinstance(new_owner, bytes) or not 50 <= len(new_owner) <= 1024:
            raise BadArgs("enroll takes {owner: SubjectPublicKeyInfo (DER)}")
        current = self.state.map.get("owner")
        event = {"kind": "enroll", "owner": key_id(new_owner)}
        if current is None:
            return self.audit.append(event, lambda state: self._set_owner(state, new_owner, None))
        if current == new_owner:  # enrolling the owner again changes nothing
            return Deferred.of({"owner": key_id(current).hex(),
                                "epoch": int(self.state.map.get("owner_epoch", 0))})
        if not isinstance(authorization, bytes):
            raise NotOwner("a new owner needs the current owner's authorization")
        expected = {"op": "enroll", "owner": new_owner, "ueid": self.ueid,
                    "epoch": int(self.state.map.get("owner_epoch", 0))}

        def check(result: dict[str, Any]) -> Deferred:
            try:
                signed = cbor2.loads(result["payload"])
            except (ValueError, TypeError):  # cbor2's decode errors are ValueErrors
                signed = None
            if signed != expected:
                raise NotOwner("the authorization is for another owner, device or epoch")
            return self.audit.append(event,
                                     lambda state: self._set_owner(state, new_owner, current))

        return self._verify(current, authorization).then(check)

    def verify_owner(self, message: Any) -> Deferred:
        """The payload of COSE_Sign1 ``message`` if the enrolled owner signed it."""
        if not isinstance(message, bytes):
            raise BadArgs("expected the owner's signed document (COSE_Sign1 bytes)")
        owner = self.state.map.get("owner")
        if owner is None:
            raise NotOwner("no owner is enrolled")
        return self._verify(owner, message)

    def _verify(self, spki: bytes, message: bytes) -> Deferred:
        verified = Deferred()

        def done(d: Deferred) -> None:
            if isinstance(d.error, BadArgs):
                verified.resolve(error=NotOwner(f"not signed by the owner: {d.error.message}"))
            else:
                verified.resolve(d.value, d.error)

        self.keeper.call(KeeperOp.VERIFY, {"key": spki, "message": message}).add(done)
        return verified

    def _set_owner(self, state: dict[str, Any], owner: bytes, previous: bytes | None) -> dict[str, Any]:
        if state.get("owner") != previous:
            raise NotOwner("the owner changed meanwhile")
        state["owner"] = owner
        state["owner_epoch"] = int(state.get("owner_epoch", 0)) + 1
        return {"owner": key_id(owner).hex(), "epoch": state["owner_epoch"]}

    # -- applets -------------------------------------------------------------------------------

    def load(self, signed: Any) -> Deferred:
        """Load an owner-signed package: signature, then format, then the rollback counter."""
        if not isinstance(signed, bytes):
            raise BadArgs("load takes {package: the signed .sez bytes}")
        if self.state.map.get("owner") is None:
            raise NotOwner("no owner is enrolled: the zone loads no code")

        def admit(result: dict[str, Any]) -> Deferred:
            package = applets.parse(bytes(result["payload"]))

            def admitted(described: dict[str, Any]) -> dict[str, Any]:
                self.packages[package.name] = package
                return described

            event = {"kind": "load", "name": package.name, "version": package.version,
                     "measurement": package.measurement}
            return self.audit.append(event, lambda state: self._admit(state, package)
                                     ).then(admitted)

        return self.verify_owner(signed).then(admit)

    def _admit(self, state: dict[str, Any], package: applets.Package) -> dict[str, Any]:
        highest = dict(state.get("rollback", {}))
        seen = int(highest.get(package.name, 0))
        if package.version < seen:
            raise Rollback(f"{package.name} version {package.version} is lower than version "
                           f"{seen}, already loaded once")
        highest[package.name] = package.version
        state["rollback"] = highest
        state["applets"] = {**state.get("applets", {}), package.name: package.raw}
        return describe(package)

    def find(self, applet: Any) -> applets.Package:
        """The loaded applet with this name, or whose id (measurement prefix) this is."""
        if not isinstance(applet, str) or not applet:
            raise BadArgs("applet must be a name or an id")
        if applet in self.packages:
            return self.packages[applet]
        matches = [p for p in self.packages.values() if p.measurement.hex().startswith(applet)]
        if len(matches) != 1 or len(applet) < 8:
            raise NoSuchApplet(f"no loaded applet {applet!r:.80}")
        return matches[0]

    def listing(self) -> list[dict[str, Any]]:
        return [describe(p) for _, p in sorted(self.packages.items())]

    # -- jobs ----------------------------------------------------------------------------------

    def allocate_job(self) -> Deferred:
        """The next job counter, reserving another lease in BBRAM when this one is used up."""
        self.state.require()
        counter = self.next_job
        self.next_job += 1
        if self.next_job < int(self.state.map.get("job_lease", 0)):
            return Deferred.of(counter)
        return self.update(lambda state: state.update(job_lease=counter + 1 + JOB_LEASE)
                           ).then(lambda _: counter)

    # -- the outbox of detached jobs -------------------------------------------------------------

    def outbox(self) -> dict[str, dict[str, Any]]:
        return dict(self.state.map.get("outbox", {}))

    def find_key(self, key: bytes) -> tuple[str, str] | None:
        """(job, state) of the job submitted under idempotency ``key``, if any."""
        for job, record in self.outbox().items():
            if record.get("key") == key:
                return job, str(record["state"])
        acked = self.state.map.get("acked", {}).get(key)
        return (str(acked), JobState.ACKNOWLEDGED) if acked is not None else None

    def submit(self, package: applets.Package, data: bytes, nonce: bytes,
               key: bytes | None, scheduled: dict[str, Any] | None = None) -> Deferred:
        """Queue a detached job durably; resolve to its id once BBRAM holds it. A scheduled
        run (``scheduled``: {schedule, run, skipped}) also counts the run in its schedule."""
        outbox = self.outbox()
        used = sum(_record_bytes(r) for r in outbox.values())
        if len(outbox) >= OUTBOX_JOBS or used + len(data) > OUTBOX_BYTES:
            raise OutboxFull(f"the outbox is full ({len(outbox)} jobs, {used} bytes): fetch and "
                             "acknowledge results first")

        def record(counter: int) -> Deferred:
            job = str(counter)
            entry = {"applet": package.name, "measurement": package.measurement, "input": data,
                     "nonce": nonce, "key": key, "state": JobState.QUEUED, "counter": counter,
                     "submitted": int(time.time()), **(scheduled or {})}

            def put(state: dict[str, Any]) -> None:
                _put(state, job, entry)
                if scheduled is not None and scheduled["schedule"] in state.get("schedules", {}):
                    schedules = dict(state["schedules"])
                    name = scheduled["schedule"]
                    schedules[name] = {**schedules[name], "runs": scheduled["run"]}
                    state["schedules"] = schedules

            return self.update(put).then(lambda _: job)

        return self.allocate_job().then(record)

    def set_job(self, job: str, **changes: Any) -> Deferred:
        """Change a job's record. A scheduled run's final state is committed together with
        its audit-log entry."""
        def change(state: dict[str, Any]) -> None:
            entry = state.get("outbox", {}).get(job)
            if entry is not None:
                _put(state, job, {**entry, **changes})

        entry = self.outbox().get(job)
        if entry is None or entry.get("schedule") is None or changes.get("state") not in FINAL:
            return self.update(change)
        return self.audit.append(_run_event(job, entry, changes), change)

    def ack(self, job: str) -> Deferred:
        """Forget a finished job's result: the host has it."""
        entry = self.outbox().get(job)
        if entry is None:
            raise NoSuchJob(f"no job {job!r:.80} in the outbox")
        if entry["state"] not in FINAL:
            raise BadArgs(f"job {job} is {entry['state']}: nothing to acknowledge yet")

        def remove(state: dict[str, Any]) -> dict[str, Any]:
            outbox = dict(state.get("outbox", {}))
            removed = outbox.pop(job, None)
            state["outbox"] = outbox
            if removed is not None and removed.get("key") is not None:
                acked = dict(state.get("acked", {}))
                acked[removed["key"]] = job
                state["acked"] = dict(list(acked.items())[-ACKED_KEPT:])
            return {"job": job, "acknowledged": removed is not None}

        return self.update(remove)

    # -- provisioned secrets ----------------------------------------------------------------------

    def secrets(self) -> dict[str, dict[str, Any]]:
        """{name: {policy, blob}} of every provisioned secret."""
        return dict(self.state.map.get("secrets", {}))

    def put_secret(self, name: str, value: bytes, requested: secret.Policy) -> Deferred:
        """Provision secret ``name``: layer 0 seals ``value`` to the policy, and the secret and
        its audit-log entry (the name and the policy's fields, flat: abi.audit) are committed
        together before the answer, ``{name, policy}``. An applet policy gets the enrolled
        owner's key id (NotOwner with none enrolled); a policy that no loaded applet meets is
        PolicyUnmatched, a mistake caught before the secret is sealed for no one.

        Secrets are written once (SecretExists): the host opens sessions too, so a secret that
        could be put again could be swapped by the host for one it knows, and the applet that
        reads it would then sign or encrypt with what the host chose."""
        self.state.require()
        _check_room(self.secrets(), name)
        owner = self.state.map.get("owner")
        policy = dict(requested)
        if "applet" in policy and "owner" not in policy:
            if owner is None:
                raise NotOwner("no owner is enrolled: an applet policy names the owner")
            policy["owner"] = key_id(owner)
        owner_id = key_id(owner) if owner is not None else b""
        if not any(secret.admits(policy, p.measurement, p.name, p.version, owner_id)
                   for p in self.packages.values()):
            raise PolicyUnmatched(f"no loaded applet meets the policy of secret {name!r}")

        def store(sealed: dict[str, Any]) -> Deferred:
            entry = {"policy": policy, "blob": bytes(sealed["blob"])}

            def put(state: dict[str, Any]) -> dict[str, Any]:
                _check_room(state.get("secrets", {}), name)
                state["secrets"] = {**state.get("secrets", {}), name: entry}
                return {"name": name, "policy": policy}

            return self.audit.append({"kind": "secret", "name": name, **policy}, put)

        return self.keeper.call(KeeperOp.SECRET_SEAL,
                                {"name": name, "policy": policy, "value": value}).then(store)

    def secret_listing(self) -> list[dict[str, Any]]:
        """[{name, policy}] of every secret, by name: never a value, never a blob."""
        return [{"name": name, "policy": entry["policy"]}
                for name, entry in sorted(self.secrets().items())]

    def claims(self) -> dict[str, Any]:
        """What evidence says about this state (the monitor's claims; see abi.evidence)."""
        owner = self.state.map.get("owner")
        return {
            evidence.OWNER: key_id(owner) if owner else None,
            evidence.APPLETS: [{"name": p.name, "version": p.version,
                                "measurement": p.measurement}
                               for _, p in sorted(self.packages.items())],
            evidence.BBRAM: self.status,
            evidence.AUDIT: {"seq": self.audit.next_seq() - 1,
                             "link": bytes(self.state.map.get("audit_last", GENESIS))},
        }


def _check_room(held: dict[str, Any], name: str) -> None:
    """SecretExists if ``name`` is provisioned; BadArgs if the zone holds its most secrets."""
    if name in held:
        raise SecretExists(f"secret {name!r} is already provisioned: secrets are written once")
    if len(held) >= secret.COUNT_MAX:
        raise BadArgs(f"the zone holds its most secrets ({secret.COUNT_MAX})")


def _put(state: dict[str, Any], job: str, entry: dict[str, Any]) -> None:
    state["outbox"] = {**state.get("outbox", {}), job: entry}


def _run_event(job: str, entry: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """The audit-log event of a scheduled run that ended (abi.audit)."""
    event = {"kind": "run", "schedule": entry["schedule"], "run": entry["run"], "job": job,
             "applet": entry["applet"], "measurement": entry["measurement"],
             "input": hashlib.sha384(entry["input"]).digest(), "state": final["state"],
             "skipped": entry.get("skipped", 0)}
    if final.get("output") is not None:
        event["output"] = hashlib.sha384(final["output"]).digest()
    if final.get("error") is not None:
        event["error"] = final["error"]["message"]
    return event


def _record_bytes(entry: dict[str, Any]) -> int:
    return sum(len(entry.get(k) or b"") for k in ("input", "output", "receipt"))


def describe(package: applets.Package) -> dict[str, Any]:
    return {"id": package.id, "name": package.name, "version": package.version,
            "measurement": package.measurement.hex(), "limits": package.limits}
