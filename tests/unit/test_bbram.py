"""The BBRAM store on a plain file: commits, torn writes at every moment, foreign keys."""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import pytest

from firmware.layer0 import bbram

KEY = bytes(range(32))


def disk(tmp_path: Path) -> str:
    path = tmp_path / "bbram.img"
    with path.open("wb") as f:
        f.truncate(2 * bbram.SLOT_SIZE)
    return str(path)


def test_fresh_commit_load(tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    assert store.load() == {} and store.status == bbram.FRESH
    for i in range(1, 6):
        assert store.commit(cbor2.dumps({"n": i, "blob": os.urandom(100)})) == i
    again = bbram.Bbram(KEY, path)
    assert again.load()["n"] == 5
    assert again.status == bbram.OK and again.seq == 5


def test_a_torn_write_at_any_moment_keeps_the_last_commit(tmp_path: Path) -> None:
    """Simulate a power cut after every prefix length of a commit's record."""
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
        reader = bbram.Bbram(KEY, path)
        state = reader.load()
        assert reader.status == bbram.OK, cut
        assert state["n"] in (2, 3) and (state["n"] == 3) == (cut >= length), cut


def test_a_torn_first_commit_is_not_authentic(tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"first": True}))
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"\xff")
    reader = bbram.Bbram(KEY, path)
    assert reader.load() == {} and reader.status == bbram.UNAUTHENTICATED


def test_another_key_cannot_read_or_overwrite(tmp_path: Path) -> None:
    path = disk(tmp_path)
    store = bbram.Bbram(KEY, path)
    store.load()
    store.commit(cbor2.dumps({"secret": 1}))
    stranger = bbram.Bbram(bytes(32), path)
    assert stranger.load() == {} and stranger.status == bbram.UNAUTHENTICATED
    with pytest.raises(bbram.BbramError, match="unauthenticated"):
        stranger.commit(cbor2.dumps({"reset": True}))
    assert bbram.Bbram(KEY, path).load() == {"secret": 1}


def test_state_larger_than_a_slot_is_refused(tmp_path: Path) -> None:
    store = bbram.Bbram(KEY, disk(tmp_path))
    store.load()
    with pytest.raises(bbram.BbramError, match="exceeds"):
        store.commit(cbor2.dumps({"blob": bytes(bbram.SLOT_SIZE)}))


def test_a_missing_disk_is_absent(tmp_path: Path) -> None:
    store = bbram.Bbram(KEY, str(tmp_path / "none"))
    assert store.load() == {} and store.status == bbram.ABSENT
