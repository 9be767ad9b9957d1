"""The bulk window's lanes and both of its ends, over one shared buffer (no QEMU)."""

from __future__ import annotations

import os

import pytest

from firmware.abi import bulk
from firmware.abi.errors import BadArgs, ProtocolError
from firmware.abi.wire import MAX_PAYLOAD
from firmware.monitor.bulk import ZoneWindow
from host_driver.relay.bulk import HostWindow

BIG = bulk.WINDOW_MIN


@pytest.fixture
def ends() -> tuple[HostWindow, ZoneWindow]:
    memory = bytearray(bulk.WINDOW_SIZE)
    return HostWindow(memory), ZoneWindow(memory)


def test_lanes_are_disjoint_pages_after_the_header() -> None:
    assert bulk.H2Z_BASE == bulk.HEADER_SIZE > bulk.DONE_OFFSET + 8
    assert bulk.Z2H_BASE == bulk.H2Z_BASE + bulk.LANE_SIZE
    assert bulk.Z2H_BASE + bulk.LANE_SIZE <= bulk.WINDOW_SIZE
    assert bulk.LANE_SIZE % 4096 == 0 and bulk.LANE_SIZE >= MAX_PAYLOAD


def test_a_lane_wraps_to_its_start_and_refuses_what_would_overrun_its_reader() -> None:
    lane = bulk.Lane(0, size=100)
    assert lane.place(60, done=0) == 0
    assert lane.place(50, done=0) is None  # 60 + 50 unread would not fit
    assert lane.place(30, done=0) == 60
    assert lane.place(30, done=60) == 100  # skips the 10 bytes left at the end
    assert lane.span(100, 30) == slice(0, 30)
    assert lane.place(101, done=lane.head) is None  # never more than the lane


def test_a_readers_lie_about_its_progress_is_bounded() -> None:
    lane = bulk.Lane(0, size=100)
    lane.place(80, done=0)
    assert lane.place(50, done=10**12) == 100  # "done" beyond the head counts as the head
    assert lane.place(60, done=0) is None  # and behind a lane's length as that


@pytest.mark.parametrize("position, length", [(0, bulk.LANE_SIZE + 1), (bulk.LANE_SIZE - 1, 2),
                                              (0, MAX_PAYLOAD + 1)])
def test_a_span_outside_its_lane_is_refused(position: int, length: int) -> None:
    with pytest.raises(ValueError):
        bulk.Lane(bulk.H2Z_BASE).span(position, length)


def test_a_request_and_its_answer_go_through_the_window(ends: tuple[HostWindow, ZoneWindow]) -> None:
    host, zone = ends
    data, small = os.urandom(3 * BIG), os.urandom(BIG - 1)
    sent, mark = host.put({"data": data, "note": small, "n": 7})
    assert sent[bulk.KEY] == {"data": [0, len(data)]} and sent["note"] == small
    assert "data" not in sent and sent[bulk.REPLY] is True
    assert mark == len(data)
    args, reply = zone.take(dict(sent))
    assert args == {"data": data, "note": small, "n": 7} and reply is True
    answer = zone.give({"output": data, "size": len(data)})
    assert answer[bulk.KEY] == {"output": [0, len(data)]} and "output" not in answer
    assert host.take(answer) == {"output": data, "size": len(data)}
    assert bulk.read_done(zone.memory) == 0  # before hello's answer: nothing said
    host.started(0)
    assert host.take(zone.give({"output": data}))["output"] == data
    assert bulk.read_done(zone.memory) == 2 * len(data)  # the host said what it took


def test_the_zone_copies_what_it_reads_once(ends: tuple[HostWindow, ZoneWindow]) -> None:
    host, zone = ends
    data = bytes(BIG)
    sent, _ = host.put({"data": data})
    args, _ = zone.take(dict(sent))
    host.memory[bulk.H2Z_BASE:bulk.H2Z_BASE + BIG] = b"\xff" * BIG  # the host changes its mind
    assert type(args["data"]) is bytes and args["data"] == data


def test_a_full_lane_leaves_fields_inline(ends: tuple[HostWindow, ZoneWindow]) -> None:
    host, zone = ends
    big = bytes(MAX_PAYLOAD)
    first, mark = host.put({"data": big})
    second, _ = host.put({"data": big})  # the zone has not read the first yet
    assert bulk.KEY in first and second["data"] is big
    host.freed(mark)  # an answer came: the zone has read the first
    third, _ = host.put({"data": big})
    assert bulk.KEY in third
    zone.z2h.place(bulk.LANE_SIZE - 100, done=0)  # the host took nothing yet
    answer = zone.give({"output": big})
    assert answer == {"output": big}


@pytest.mark.parametrize("refs", [
    {"data": [0, bulk.LANE_SIZE + 1]}, {"data": [0]}, {"data": [-1, 10]}, {"data": "0:10"},
    {1: [0, 10]}, {}, [0, 10], {f"f{i}": [0, 1] for i in range(bulk.MAX_FIELDS + 1)},
    {"a": [0, MAX_PAYLOAD], "b": [MAX_PAYLOAD, 1]},
])
def test_bad_spans_are_bad_args(ends: tuple[HostWindow, ZoneWindow], refs: object) -> None:
    _, zone = ends
    with pytest.raises(BadArgs):
        zone.take({bulk.KEY: refs})


def test_a_field_given_inline_and_in_the_window_is_refused(ends: tuple[HostWindow, ZoneWindow]) -> None:
    _, zone = ends
    with pytest.raises(BadArgs, match="inline and in the window"):
        zone.take({"data": b"x", bulk.KEY: {"data": [0, 1]}})
    with pytest.raises(BadArgs):
        zone.take({bulk.REPLY: "yes"})


def test_an_answer_naming_a_span_outside_the_lane_is_a_protocol_error(
        ends: tuple[HostWindow, ZoneWindow]) -> None:
    host, _ = ends
    with pytest.raises(ProtocolError):
        host.take({bulk.KEY: {"output": [bulk.LANE_SIZE - 1, 2]}})


def test_a_new_host_starts_where_the_zone_is(ends: tuple[HostWindow, ZoneWindow]) -> None:
    host, zone = ends
    host.started(0)
    host.take(zone.give({"output": bytes(BIG)}))
    assert bulk.read_done(zone.memory) == BIG
    zone.give({"output": bytes(BIG)})  # an answer the first host never reads
    again = HostWindow(host.memory)  # the next host's driver, before its hello
    again.started(zone.z2h.head)  # hello's answer says where the lane is
    answer = zone.give({"output": b"\1" * BIG})
    assert answer[bulk.KEY] == {"output": [2 * BIG, BIG]}
    assert again.take(answer)["output"] == b"\1" * BIG
    assert bulk.read_done(zone.memory) == 3 * BIG


def test_args_that_are_not_a_map_go_as_they_are(ends: tuple[HostWindow, ZoneWindow]) -> None:
    host, _ = ends
    for args in ([1], "args", 7):
        assert host.put(args) == (args, 0)


def test_a_restarted_monitor_starts_its_positions_again(ends: tuple[HostWindow, ZoneWindow]) -> None:
    host, zone = ends
    host.started(0)
    for _ in range(3):
        host.take(zone.give({"output": bytes(BIG)}))
    assert bulk.read_done(zone.memory) == 3 * BIG
    restarted = ZoneWindow(zone.memory)  # PID 1 restarts the monitor: its lane starts at 0
    assert host.take(restarted.give({"output": b"\2" * BIG}))["output"] == b"\2" * BIG
    assert bulk.read_done(zone.memory) == BIG  # the host follows the new positions
