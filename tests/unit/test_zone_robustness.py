"""The zone's runtime when things go wrong on purpose: a callback that fails on every wake-up
is logged once per FAILURE_QUIET, not once per wake-up; an applet's log line stays one line;
a port closed by its own reader is not read again."""

from __future__ import annotations

import pytest

import os
import socket
from types import SimpleNamespace

from firmware.monitor.jobs import _one_line
from firmware.runtime import reactor
from firmware.runtime.port import Port
from firmware.runtime.reactor import FAILURE_QUIET, Reactor


def test_a_callback_failing_again_and_again_is_logged_once_then_counted(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that fails on each wake-up (MemoryError under memory pressure) printed a
    traceback each time: 27 MB of console in a few minutes, until the zone was rebooted."""
    now = [1000.0]
    monkeypatch.setattr(reactor, "time", SimpleNamespace(monotonic=lambda: now[0]))
    loop = Reactor()

    def failing() -> None:
        raise MemoryError

    for _ in range(500):
        loop._call(failing)
    first = capsys.readouterr().err
    assert first.count("callback failed") == 1 and "MemoryError" in first
    now[0] += FAILURE_QUIET
    loop._call(failing)
    again = capsys.readouterr().err
    assert again.count("callback failed") == 1 and "499 times more" in again

    def other() -> None:
        raise ValueError("another failure")

    loop._call(other)  # another callback, or another error, is logged at once
    assert "another failure" in capsys.readouterr().err


@pytest.mark.parametrize("message", [
    "ok\n[    1.00] sez: the key keeper ended", "a\rb\x1b[2J", "x" * 1000, ["not", "text"]])
def test_an_applet_log_line_stays_one_printable_line(message: object) -> None:
    line = _one_line(message)
    assert len(line) <= 300 and line.isprintable()
    assert "\n" not in line and "\r" not in line and "\x1b" not in line


def test_a_port_closed_by_its_reader_is_not_read_again(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A job's answer of 4 KiB or more, read in a burst: the reader closed the port (the
    job was done) and the burst read its descriptor again: "Bad file descriptor" on the
    console, or, had the number been reused meanwhile, another job's socket."""
    loop = Reactor()
    ours, theirs = socket.socketpair()
    reads: list[bytes] = []
    reused: list[socket.socket] = []

    def on_data(data: bytes) -> None:
        reads.append(data)
        port.close()
        reused.extend(socket.socketpair())  # likely the number just closed
        for sock in reused:
            sock.setblocking(False)  # (a read that should not happen must not hang the test)
        reused[0].send(b"not yours")

    port = Port(loop, ours.detach(), "job 1", on_data, lambda: None)
    theirs.sendall(os.urandom(3 * 4096))
    port._readable()
    assert len(reads) == 1 and port.closed
    assert "Bad file descriptor" not in capsys.readouterr().err
    for sock in (theirs, *reused):
        sock.close()
