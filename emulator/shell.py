"""The host end of a debug zone's console shell (firmware.pid1.shell): ``run/NAME/shell.sock``,
a unix socket QEMU serves as the guest's terminal hvc0.

``Shell(machine).run(command)`` runs one command line and returns its exit status and output;
``interact()`` joins a terminal to the shell until the escape character (Ctrl-]). One client
at a time (QEMU serves one); output written while none is connected is dropped.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import shlex
import socket
import sys
import termios
import time
import tty
from types import TracebackType
from typing import Callable

from .errors import MachineStateError, MachineTimeout
from .machine import Machine

__all__ = ["Shell", "ESCAPE"]

#: The byte that ends ``interact`` (Ctrl-], as in telnet).
ESCAPE = b"\x1d"
#: Ctrl-C, and how the terminal echoes it; Ctrl-U (erase the line typed so far).
INTERRUPT, ECHOED_INTERRUPT, KILL_LINE = b"\x03", b"^C", b"\x15"
#: The longest line busybox's line editor takes whole (its limit is 1,024 bytes).
MAX_LINE = 1000


class Shell:
    """A connection to the console shell of the running debug zone ``machine``."""

    def __init__(self, machine: Machine, timeout: float = 10.0) -> None:
        if not machine.is_running():
            raise MachineStateError(f"zone {machine.name!r} is not running "
                                    f"(start it: sez boot {machine.name} --debug)")
        if not machine.state().get("debug"):
            raise MachineStateError(f"zone {machine.name!r} is a production zone: only a debug "
                                    f"zone has a console shell (sez stop {machine.name}; "
                                    f"sez boot {machine.name} --debug)")
        self.machine = machine
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(machine.shell_socket))
        except OSError as exc:
            self._sock.close()
            raise MachineStateError(f"zone {machine.name!r}: cannot reach its console shell "
                                    f"({exc.strerror or exc})") from None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def run(self, command: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run ``command`` (shell text, newlines allowed) in a subshell: its exit status and
        its output (the terminal's: stdout and stderr together, lines ending in \\n).
        MachineTimeout if it has not finished within ``timeout`` seconds (it is then
        interrupted, as Ctrl-C would); ValueError if it is longer than the shell's line allows."""
        # One line, read whole before anything runs: the terminal's echo of it (and the
        # prompt) come before the first marker. A subshell runs it: its ``exit`` ends only it.
        # The markers are printed from two halves, so that echo never contains them; the
        # token keeps an earlier client's output out.
        token = f"SEZ{secrets.token_hex(6)}"
        line = (f"printf '%s_BEGIN\\n' {token}; (eval {shlex.quote(command)}); "
                f"printf '%s_END %s\\n' {token} \"$?\"\n").encode()
        if len(line) > MAX_LINE:
            raise ValueError(f"the command is too long for the console shell's line editor "
                             f"({len(line) - len(command)} bytes of the {MAX_LINE} go to the "
                             "markers): split it")
        deadline = time.monotonic() + timeout
        self._sock.sendall(KILL_LINE + line)  # Ctrl-U: whatever an earlier client left typed
        begin, end = f"{token}_BEGIN\r\n".encode(), re.compile(rf"{token}_END (\d+)\r?\n".encode())

        def finished(seen: bytes) -> bool:
            found = end.search(seen)
            return found is not None and begin in seen[:found.start()]

        try:
            received = self._read_until(finished, deadline, f"finish {command[:60]!r}")
        except MachineTimeout:
            # Ctrl-C ends the command; the terminal drops its pending input as it takes it
            # (then echoes it), so a next line sent only after the echo is not lost.
            self._sock.sendall(INTERRUPT)
            self._read_until(lambda seen: ECHOED_INTERRUPT in seen, time.monotonic() + 5,
                             "take Ctrl-C")
            raise
        found = end.search(received)
        assert found is not None
        output = received[received.index(begin) + len(begin):found.start()]
        return int(found.group(1)), output.replace(b"\r\n", b"\n").decode(errors="replace")

    def _read_until(self, done: Callable[[bytes], bool], deadline: float, what: str) -> bytes:
        """Read the terminal until ``done(what was read)``: what was read. MachineTimeout at
        ``deadline`` (a time.monotonic() value), MachineStateError if the terminal closes."""
        received = b""
        while not done(received):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                raise MachineTimeout(f"zone {self.machine.name!r}: the console shell did not "
                                     f"{what} in time")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise MachineStateError(f"zone {self.machine.name!r}: the console shell's "
                                        "terminal closed (the zone stopped?)")
            received += chunk
        return received

    def interact(self) -> None:
        """Join this process's terminal to the shell until Ctrl-] or the zone stops."""
        stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
        if not os.isatty(stdin):
            raise MachineStateError("an interactive shell needs a terminal: "
                                    "run one command with --command")
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
        try:
            self._sock.sendall(b"\n")  # a fresh prompt: the last one went to no one
            while True:
                ready = select.select([stdin, self._sock], [], [])[0]
                if self._sock in ready:
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        return
                    os.write(stdout, chunk)
                if stdin in ready:
                    typed = os.read(stdin, 1024)
                    if not typed or ESCAPE in typed:
                        self._sock.sendall(typed.partition(ESCAPE)[0])
                        return
                    self._sock.sendall(typed)
        finally:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
