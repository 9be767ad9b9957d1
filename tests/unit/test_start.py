"""PID 1's start line and its hand-over to layer 0 (firmware.pid1), over real pipes."""

from __future__ import annotations

import os
import threading

import pytest

from firmware.abi import device
from firmware.pid1.hardware import Hardware
from firmware.pid1.start import _Line


def hand_over(parts: list[bytes | bytearray | memoryview]) -> Hardware:
    read, write = os.pipe()
    for part in parts:
        os.write(write, part)
    os.close(write)
    return Hardware.receive(read)


def test_layer_0_gets_the_whole_record_and_the_fuses_in_a_bytearray() -> None:
    uds = bytearray(os.urandom(device.UDS_SIZE))
    hw = Hardware(uds=bytearray(uds), device_id_cert=b"-----BEGIN CERTIFICATE-----",
                  measurements={"kernel": b"\1" * 48}, boot_counter=7, debug=True,
                  tamper={"count": 1, "last": "lid"})
    got = hand_over(hw.handing_over())
    assert isinstance(got.uds, bytearray) and got.uds == uds
    assert (got.device_id_cert, got.measurements, got.boot_counter, got.debug, got.tamper) == (
        hw.device_id_cert, hw.measurements, 7, True, {"count": 1, "last": "lid"})
    hw.wipe_fuses()
    assert hand_over(hw.handing_over()).uds is None  # no fuses read: none handed over


def test_a_record_cut_short_is_refused() -> None:
    hw = Hardware(uds=bytearray(os.urandom(device.UDS_SIZE)))
    parts = hw.handing_over()
    with pytest.raises(ValueError, match="cut short"):
        hand_over([parts[0], bytes(parts[1])[:10]])


def test_start_is_heard_in_pieces_among_other_words() -> None:
    read, write = os.pipe()
    line = _Line(read)
    assert line.start(wait=0.05) is False  # nothing said yet
    os.write(write, b"noise\nST")
    assert line.start(wait=0.05) is False

    def rest() -> None:
        os.write(write, b"ART\n")

    threading.Timer(0.1, rest).start()
    assert line.start(wait=True) is True
    os.close(read)
    os.close(write)
