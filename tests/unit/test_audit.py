"""The audit-log verifier on entries signed by the real layer-0 code (no QEMU), and the
schedule-change format."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization

from emulator.factory import Factory
from firmware.abi import audit, cose
from firmware.abi import schedule as schedules
from firmware.abi.errors import BadArgs
from host_driver.verifier import AuditAnchor, VerificationError, verify_audit, verify_audit_log

from .conftest import NONCE, Zone


def chain_of(zone: Zone) -> list[bytes]:
    return list(zone.identity.chain)


def entries(zone: Zone, count: int, first: int = 1, prev: bytes = audit.GENESIS) -> list[bytes]:
    """``count`` entries as the zone appends them: each names the one before."""
    out = []
    for seq in range(first, first + count):
        entry = zone.identity.audit_entry({audit.SEQ: seq, audit.PREV: prev, audit.EVENT: {
            "kind": "run", "schedule": "tick", "run": seq, "state": "done"}})
        out.append(entry)
        prev = audit.link(entry)
    return out


def check(zone: Zone, factory: Factory, log: list[bytes], **kwargs: Any) -> str:
    with pytest.raises(VerificationError) as failure:
        verify_audit(chain_of(zone), log, root=factory.root_cert(), **kwargs)
    return failure.value.check


def test_an_unbroken_log_verifies(zone: Zone, factory: Factory) -> None:
    log = entries(zone, 6)
    result = verify_audit(chain_of(zone), log, root=factory.root_cert(), expected_ueid=zone.ueid)
    assert [e.seq for e in result.entries] == [1, 2, 3, 4, 5, 6]
    assert [e.event["run"] for e in result.entries] == [1, 2, 3, 4, 5, 6]
    assert result.entries[0].boot_counter == 7
    assert result.anchor == AuditAnchor(zone.ueid, 6, audit.link(log[-1]))


@pytest.mark.parametrize("index", [0, 2, 4])
def test_a_removed_entry_is_detected(zone: Zone, factory: Factory, index: int) -> None:
    log = entries(zone, 6)
    anchor = AuditAnchor(zone.ueid, 0, audit.GENESIS)
    assert check(zone, factory, log[:index] + log[index + 1:], anchor=anchor) in (
        "sequence", "link")


def test_entries_cut_off_the_end_are_detected_against_the_head(zone: Zone,
                                                               factory: Factory) -> None:
    log = entries(zone, 6)
    head = AuditAnchor(zone.ueid, 6, audit.link(log[-1]))
    verify_audit(chain_of(zone), log, root=factory.root_cert(), head=head)
    assert check(zone, factory, log[:5], head=head) == "head"
    assert check(zone, factory, [], head=head,
                 anchor=AuditAnchor(zone.ueid, 0, audit.GENESIS)) == "head"
    # newer entries than the head are fine (appended after the evidence was made)
    earlier = AuditAnchor(zone.ueid, 4, audit.link(log[3]))
    verify_audit(chain_of(zone), log, root=factory.root_cert(), head=earlier)
    assert check(zone, factory, log, head=AuditAnchor(zone.ueid, 4, audit.link(log[4]))) \
        == "head"


def test_reordered_and_repeated_entries_are_detected(zone: Zone, factory: Factory) -> None:
    log = entries(zone, 6)
    assert check(zone, factory, [log[0], log[2], log[1], *log[3:]]) == "sequence"
    assert check(zone, factory, [*log[:3], log[2], *log[3:]]) == "sequence"
    assert check(zone, factory, log[::-1]) == "sequence"


def test_every_flipped_byte_of_an_entry_fails(zone: Zone, factory: Factory) -> None:
    log = entries(zone, 3)
    middle = log[1]
    for i in range(0, len(middle), 7):
        flipped = middle[:i] + bytes([middle[i] ^ 0x01]) + middle[i + 1:]
        assert check(zone, factory, [log[0], flipped, log[2]]) in (
            "format", "key", "signature", "link", "sequence")


def test_an_entry_with_the_right_number_but_another_history_is_detected(
        zone: Zone, factory: Factory) -> None:
    log = entries(zone, 4)
    forged = entries(zone, 2, first=3, prev=b"\x01" * 48)  # signed, numbered right, wrong chain
    assert check(zone, factory, log[:2] + forged) == "link"


def test_the_log_must_continue_the_anchor(zone: Zone, factory: Factory) -> None:
    log = entries(zone, 8)
    first = verify_audit(chain_of(zone), log[:5], root=factory.root_cert())
    assert first.anchor is not None
    rest = verify_audit(chain_of(zone), log[5:], root=factory.root_cert(), anchor=first.anchor)
    assert [e.seq for e in rest.entries] == [6, 7, 8]
    # entries 6 and 7 removed (e.g. acknowledged by someone else, or withheld): detected
    assert check(zone, factory, log[7:], anchor=first.anchor) == "sequence"
    # a log that starts over at the anchor's number with another history
    other = AuditAnchor(zone.ueid, 5, b"\x02" * 48)
    assert check(zone, factory, log[5:], anchor=other) == "link"
    # without an anchor, a log that starts later verifies from where it starts
    assert verify_audit(chain_of(zone), log[5:], root=factory.root_cert()).entries[0].seq == 6
    # with no new entries, the anchor stays where it was
    assert verify_audit(chain_of(zone), [], root=factory.root_cert(),
                        anchor=first.anchor).anchor == first.anchor


def test_without_an_anchor_the_view_starts_where_the_kept_entries_start(
        zone: Zone, factory: Factory) -> None:
    log = entries(zone, 8)
    root = factory.root_cert()
    head = AuditAnchor(zone.ueid, 6, audit.link(log[5]))
    # every entry up to the head was acknowledged before: the view starts at the head
    acked = verify_audit(chain_of(zone), [], root=root, head=head)
    assert (acked.entries, acked.start, acked.anchor) == ([], 6, head)
    # and the next fetch continues from there, as from an anchor
    later = verify_audit(chain_of(zone), log[6:], root=root, anchor=acked.anchor,
                         head=AuditAnchor(zone.ueid, 8, audit.link(log[7])))
    assert ([e.seq for e in later.entries], later.start) == ([7, 8], None)
    # some entries acknowledged: the view starts at the first one kept, and says so
    partly = verify_audit(chain_of(zone), log[3:6], root=root, head=head)
    assert ([e.seq for e in partly.entries], partly.start) == ([4, 5, 6], 4)
    assert verify_audit(chain_of(zone), log[:6], root=root, head=head).start is None
    # kept entries still must reach the head, and the head must be this device's
    assert check(zone, factory, log[3:5], head=head) == "head"
    other = Zone(factory.home, "audit-head-other", zone.root.parent)
    assert check(zone, factory, [], head=AuditAnchor(other.ueid, 6, head.link)) == "device"
    # with an anchor nothing is loosened: entries missing up to the head still fail
    anchor = AuditAnchor(zone.ueid, 3, audit.link(log[2]))
    assert check(zone, factory, [], anchor=anchor, head=head) == "head"
    assert check(zone, factory, log[4:6], anchor=anchor, head=head) == "sequence"


def test_an_acknowledged_log_verifies_against_fresh_evidence(zone: Zone,
                                                             factory: Factory) -> None:
    """What `sez audit NAME` sees after `sez audit NAME --ack`: no entry kept, evidence
    naming the last one."""
    log = entries(zone, 3)
    evidence = zone.identity.evidence(NONCE, {"sez.audit": {"seq": 3,
                                                            "link": audit.link(log[2])}})
    fetched = {"chain": chain_of(zone), "entries": [], "evidence": evidence, "nonce": NONCE}
    result = verify_audit_log(fetched, root=factory.root_cert())
    assert (result.entries, result.start) == ([], 3)
    assert result.anchor == AuditAnchor(zone.ueid, 3, audit.link(log[2]))
    # with the anchor of an earlier fetch (entry 1), entries 2 and 3 are missing: still fails
    with pytest.raises(VerificationError) as failure:
        verify_audit_log(fetched, root=factory.root_cert(),
                         anchor=AuditAnchor(zone.ueid, 1, audit.link(log[0])))
    assert failure.value.check == "head"


def test_a_first_entry_must_start_from_genesis(zone: Zone, factory: Factory) -> None:
    log = entries(zone, 2, prev=b"\x03" * 48)
    assert check(zone, factory, log) == "link"


def test_entries_of_another_device_or_kind(zone: Zone, factory: Factory, tmp_path: Path) -> None:
    other = Zone(factory.home, "audit-other", tmp_path)
    log = entries(zone, 3)
    assert check(zone, factory, log, expected_ueid=other.ueid) == "device"
    anchor = AuditAnchor(other.ueid, 0, audit.GENESIS)
    assert check(zone, factory, log, anchor=anchor) == "device"
    # the other device's entries presented under this device's chain
    assert check(zone, factory, log[:1] + entries(other, 2, first=2,
                                                  prev=audit.link(log[0]))) == "key"
    # signed by the same key, numbered and linked right, but not an audit entry
    claims = cbor2.loads(cose.decode_sign1(log[1]).payload)
    claims[audit.PROFILE_KEY] = "urn:sez:receipt:1"
    alias = zone.identity.alias
    kid = hashlib.sha256(alias.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
    assert check(zone, factory, [log[0], cose.sign1(cbor2.dumps(claims), alias, kid=kid)]) \
        == "profile"
    # evidence carries its chain, not the kid
    assert check(zone, factory, [zone.evidence(NONCE)]) == "key"


def good_schedule(**changes: Any) -> dict[str, Any]:
    doc = schedules.Change("schedule", b"\x01" * 17, 0, "tick", "null", b"m" * 48, b"in",
                           5).document()
    return {**doc, **changes}


def test_a_schedule_change_round_trips() -> None:
    change = schedules.parse(good_schedule())
    assert (change.name, change.every, change.input) == ("tick", 5, b"in")
    gone = schedules.Change("unschedule", b"\x01" * 17, 3, "tick")
    assert schedules.parse(gone.document()) == gone


@pytest.mark.parametrize("changes", [
    {"op": "run"}, {"name": "Tick"}, {"name": ""}, {"name": "x" * 33}, {"every": 0},
    {"every": 1.5}, {"every": 10 ** 9}, {"measurement": b"short"}, {"input": "text"},
    {"input": bytes(schedules.INPUT_MAX + 1)}, {"epoch": "0"}, {"ueid": None},
    {"extra": 1}, {"applet": 7},
])
def test_malformed_schedule_changes_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(BadArgs):
        schedules.parse(good_schedule(**changes))


def test_an_unschedule_takes_no_schedule_fields() -> None:
    with pytest.raises(BadArgs):
        schedules.parse({**good_schedule(), "op": "unschedule"})
    with pytest.raises(BadArgs):
        schedules.parse([1, 2])
