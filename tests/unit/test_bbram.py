"""The BBRAM store on a plain file: checkpoints and the log of changes, torn writes at every
moment, foreign keys, older disks; and the monitor's changes (diff, apply) that the log holds."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, cast

import cbor2
import pytest

from emulator.factory import Factory
from firmware.abi import dice
from firmware.abi.device import BBRAM_LOG_SIZE, BBRAM_SIZE
from firmware.layer0 import bbram
from firmware.layer0.keeper import Keeper
from firmware.monitor.links import KeeperLink
from firmware.monitor.state import apply, diff
from firmware.monitor.store import ZoneStore
from firmware.runtime.ipc import KeeperOp

from .conftest import HostKeeper, Zone, settle

KEY = bytes(range(32))


def disk(tmp_path: Path, size: int = BBRAM_SIZE) -> str:
    path = tmp_path / "bbram.img"
    with path.open("wb") as f:
        f.truncate(size)
    return str(path)


def damage(path: str, offset: int) -> None:
    """Flip every bit of the byte at ``offset`` (writing a fixed value would change nothing
    where the random nonce or ciphertext held it already: 1 run in 256)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def change(**put: Any) -> bytes:
    return cbor2.dumps({"put": put})


def reload(path: str) -> tuple[bbram.Bbram, dict[str, Any]]:
    """A new store on ``path`` (a reboot) and the state it gives back."""
    store = bbram.Bbram(KEY, path)
    state, changes = store.load()
    for c in changes:
        apply(state, c)
    return store, state


def test_fresh_commit_load(tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    assert store.load() == ({}, []) and store.status == bbram.FRESH
    assert store.room == 0  # a new device's first write is a checkpoint
    for i in range(1, 6):
        assert store.commit(cbor2.dumps({"n": i, "blob": os.urandom(100)})) == i
    again, state = reload(path)
    assert state["n"] == 5 and again.status == bbram.OK and again.seq == 5


def test_changes_are_logged_after_the_checkpoint_and_replayed_in_order(tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"n": 0, "keep": b"k"}))
    assert store.room == bbram.CHANGE_MAX
    for i in range(1, 11):
        assert store.append(change(n=i)) == 1 + i
    assert store.tail == 10 * bbram.BLOCK  # a small change takes one block
    again, state = reload(path)
    assert state == {"n": 10, "keep": b"k"} and again.seq == 11
    assert again.room == store.room  # the next change goes after the last one
    again.append(change(n=11))
    assert reload(path)[1]["n"] == 11


def test_a_checkpoint_starts_the_log_afresh_and_old_changes_are_never_replayed(
        tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"n": 0}))
    for i in range(1, 6):
        store.append(change(n=i, old=True))
    store.commit(cbor2.dumps({"n": 100}))  # seq 7; the log still holds seqs 2..6 on disk
    store.append(change(n=101))  # overwrites the first block only
    again, state = reload(path)
    assert state == {"n": 101} and again.seq == 8


def test_a_full_log_refuses_a_change_until_a_checkpoint(tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({}))
    big = change(blob=bytes(bbram.CHANGE_MAX - 100))
    with pytest.raises(bbram.BbramError, match="does not fit"):
        store.append(change(blob=bytes(bbram.CHANGE_MAX)))  # over CHANGE_MAX
    appended = 0
    while store.room >= len(big):
        store.append(big)
        appended += 1
    assert appended == BBRAM_LOG_SIZE // bbram.CHANGE_MAX  # each takes 1 MiB of the log
    with pytest.raises(bbram.BbramError, match="does not fit"):
        store.append(big)
    store.commit(cbor2.dumps({"blob": b"small"}))
    store.append(big)
    assert len(reload(path)[1]["blob"]) == bbram.CHANGE_MAX - 100


def test_a_torn_write_at_any_moment_keeps_the_last_commit(tmp_path: Path) -> None:
    """Simulate a power cut after every prefix length of a checkpoint's record."""
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"n": 1}))
    store.commit(cbor2.dumps({"n": 2}))
    committed = Path(path).read_bytes()
    # The next commit (seq 3) would go to slot 0: write a growing prefix of its record.
    writer = bbram.Bbram(KEY, str(tmp_path / "scratch.img"))
    Path(writer.path).write_bytes(committed)
    writer.load()
    writer.commit(cbor2.dumps({"n": 3, "pad": b"x" * 3000}))
    record = Path(writer.path).read_bytes()[:bbram.SLOT_SIZE]
    length = len(record.rstrip(b"\0"))
    for cut in list(range(0, 64)) + list(range(64, length + 1, 97)) + [length]:
        torn = bytearray(committed)
        torn[:cut] = record[:cut]
        Path(path).write_bytes(bytes(torn))
        reader, state = reload(path)
        assert reader.status == bbram.OK, cut
        assert state["n"] in (2, 3) and (state["n"] == 3) == (cut >= length), cut


def test_a_torn_change_at_any_moment_keeps_the_last_one(tmp_path: Path) -> None:
    """A power cut after every prefix of a log record, over a stale record of an older log."""
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"n": 0}))
    for i in range(1, 4):
        store.append(change(n=i, pad=os.urandom(6000)))  # stale once the checkpoint follows
    store.commit(cbor2.dumps({"n": 10}))
    store.append(change(n=11))
    committed = Path(path).read_bytes()
    offset = bbram.LOG_START + store.tail
    store.append(change(n=12, pad=b"y" * 5000))  # the record a power cut tears
    record = Path(path).read_bytes()[offset:offset + 2 * bbram.BLOCK]
    length = bbram.OVERHEAD - 16 + int.from_bytes(record[16:20], "big")  # header, nonce, length
    assert bbram.BLOCK < length < 2 * bbram.BLOCK and record[length:].strip(b"\0")  # stale
    for cut in list(range(0, 64)) + list(range(64, length + 1, 211)) + [length]:
        torn = bytearray(committed)
        torn[offset:offset + cut] = record[:cut]
        Path(path).write_bytes(bytes(torn))
        reader, state = reload(path)
        assert reader.status == bbram.OK, cut
        assert state["n"] == (12 if cut >= length else 11), cut
        assert reader.tail == offset - bbram.LOG_START + (2 * bbram.BLOCK if cut >= length else 0)


def test_a_damaged_change_ends_the_log_there(tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"n": 0}))
    for i in range(1, 4):
        store.append(change(n=i))
    damage(path, bbram.LOG_START + bbram.BLOCK + 40)  # inside the second change
    reader, state = reload(path)
    assert state["n"] == 1 and reader.seq == 2 and reader.tail == bbram.BLOCK


def test_a_torn_first_commit_is_not_authentic(tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"first": True}))
    damage(path, 40)
    reader = bbram.Bbram(KEY, path)
    assert reader.load() == ({}, []) and reader.status == bbram.UNAUTHENTICATED


def test_another_key_cannot_read_or_overwrite(tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"secret": 1}))
    store.append(change(more=2))
    stranger = bbram.Bbram(bytes(32), path)
    assert stranger.load() == ({}, []) and stranger.status == bbram.UNAUTHENTICATED
    with pytest.raises(bbram.BbramError, match="unauthenticated"):
        stranger.commit(cbor2.dumps({"reset": True}))
    with pytest.raises(bbram.BbramError, match="unauthenticated"):
        stranger.append(change(reset=True))
    assert reload(path)[1] == {"secret": 1, "more": 2}


def test_a_disk_of_the_older_size_keeps_its_state_and_writes_checkpoints(tmp_path: Path) -> None:
    """A device whose disk has only the two slots: its state loads, and every commit is a
    checkpoint until the emulator extends the disk (emulator.device.Device.ensure_bbram)."""
    path = disk(tmp_path, 2 * bbram.SLOT_SIZE)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"n": 1}))
    assert store.room == 0
    with pytest.raises(bbram.BbramError, match="does not fit"):
        store.append(change(n=2))
    os.truncate(path, BBRAM_SIZE)
    extended, state = reload(path)
    assert state == {"n": 1} and extended.room > 0
    extended.append(change(n=2))
    assert reload(path)[1] == {"n": 2}


def test_state_larger_than_a_slot_is_refused(tmp_path: Path) -> None:
    store = bbram.Bbram(KEY, disk(tmp_path))
    store.load()
    with pytest.raises(bbram.BbramError, match="exceeds"):
        store.commit(cbor2.dumps({"blob": bytes(bbram.SLOT_SIZE)}))


def test_a_missing_disk_is_absent(tmp_path: Path) -> None:
    store = bbram.Bbram(KEY, str(tmp_path / "none"))
    assert store.load() == ({}, []) and store.status == bbram.ABSENT


# -- the monitor's changes -----------------------------------------------------------------------

def mutate(state: dict[str, Any], rng: random.Random, step: int) -> None:
    """One update as firmware.monitor.store makes them: new values, never in place."""
    job = str(rng.randrange(40))
    what = rng.randrange(7)
    if what == 0:
        state["outbox"] = {**state.get("outbox", {}), job: {"state": "queued", "n": step}}
    elif what == 1 and state.get("outbox"):
        outbox = dict(state["outbox"])
        outbox.pop(rng.choice(list(outbox)), None)
        state["outbox"] = outbox
    elif what == 2:
        acked = {**state.get("acked", {}), os.urandom(4): job}
        state["acked"] = dict(list(acked.items())[-8:])
    elif what == 3:
        state["audit"] = list(state.get("audit", []))[rng.randrange(3):] + [
            {"seq": step}] * rng.randrange(3)
    elif what == 4:
        state["job_lease"] = step
    elif what == 5:
        state.pop(rng.choice(["owner", "schedules", "audit"]), None)
    else:
        state["owner"] = os.urandom(8)


def test_replaying_the_changes_gives_the_state_back() -> None:
    """Random updates, each saved as diff() and replayed with apply(): the same state, and
    each change names only what changed."""
    rng = random.Random(13)
    state: dict[str, Any] = {}
    replayed: dict[str, Any] = {}
    for step in range(2000):
        new = dict(state)
        for _ in range(rng.randrange(1, 4)):  # a group commit of several updates
            mutate(new, rng, step)
        delta = cbor2.loads(cbor2.dumps(diff(state, new)))  # as the log holds it
        apply(replayed, delta)
        assert replayed == new, step
        state = new
    assert diff(state, dict(state)) == {}


def test_a_change_holds_what_changed_not_what_it_joins() -> None:
    outbox = {str(i): {"input": os.urandom(1000)} for i in range(1000)}
    old = {"outbox": outbox, "audit": [{"entry": os.urandom(300)} for _ in range(500)]}
    new = dict(old)
    new["outbox"] = {**outbox, "1000": {"input": b"new"}}
    new["audit"] = old["audit"][2:] + [{"entry": b"e"}]
    delta = diff(old, new)
    assert delta == {"in": {"outbox": {"put": {"1000": {"input": b"new"}}, "drop": []}},
                     "tail": {"audit": {"from": 2, "add": [{"entry": b"e"}]}}}
    assert len(cbor2.dumps(delta)) < 100


def test_the_monitor_commits_changes_and_reloads_a_log_of_many_messages(
        factory: Factory, tmp_path: Path) -> None:
    """The monitor's store on the real layer 0: a new device's first commit is a checkpoint,
    the next ones are changes, a change over CHANGE_MAX is a checkpoint, and a reboot reads
    the log back in several answers (each about CHANGE_MAX) to the same state."""
    zone = Zone(factory.home, "log-pages", tmp_path)
    path = disk(tmp_path)

    def boot() -> tuple[ZoneStore, HostKeeper]:
        zone.identity.bbram = bbram.Bbram(dice.bbram_key(zone.identity.cdi), path)
        link = HostKeeper(Keeper(zone.identity, None))
        store = ZoneStore(cast(KeeperLink, link))
        settle(store.ready)
        return store, link

    store, link = boot()
    for i in range(30):
        settle(store.update(lambda state, i=i: state.update({f"k{i}": os.urandom(100_000)})))
    settle(store.update(lambda state: state.update(big=os.urandom(bbram.CHANGE_MAX))))
    for i in range(30, 60):
        settle(store.update(lambda state, i=i: state.update({f"k{i}": os.urandom(100_000)})))
    commits = [next(iter(args)) for op, args in link.calls if op == KeeperOp.BBRAM_COMMIT]
    assert commits == ["state"] + ["change"] * 30 + ["state"] + ["change"] * 30
    again, relink = boot()
    assert again.state.map == {**store.state.map, "job_lease": 2048}  # a boot takes a lease
    loads = [args for op, args in relink.calls if op == KeeperOp.BBRAM_LOAD]
    assert loads[0] == {} and [a["after"] for a in loads[1:]] == [10, 20]  # 1 MiB at most
