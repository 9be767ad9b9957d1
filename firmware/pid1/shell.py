"""The console shell of a debug zone (``sez boot --debug``; ``sez shell NAME`` on the host).

PID 1 of a debug zone forks it after the boot's privileged steps (firmware.pid1.supervisor),
so it starts from what every zone process starts from: fw_cfg unloaded, kexec disabled, an
empty bounding set. It is root with no capability at all: it sees the zone's files, sockets
and processes, but cannot reach fw_cfg's ports (firmware.runtime.caps) nor read the memory of
a zone process (each is non-dumpable, and reading it needs CAP_SYS_PTRACE). Whatever it asks
layer 0 for is signed with the debug keys, which evidence marks as debug: nothing the device
sealed or was provisioned with in production opens here.

Its terminal is the virtio console hvc0, which QEMU adds to debug zones only; a production
zone has neither the terminal nor this process.
"""

from __future__ import annotations

import os
import signal
import time

from ..runtime import caps

__all__ = ["TERMINAL", "run"]

TERMINAL = "/dev/hvc0"
#: Seconds to wait for the terminal (the virtio console driver adds ports after its probe).
WAIT = 30.0


def run() -> None:
    """Become a login shell on the terminal (never returns; raises TimeoutError if the
    terminal did not appear)."""
    deadline = time.monotonic() + WAIT
    while not os.path.exists(TERMINAL):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{TERMINAL} did not appear within {WAIT:.0f} s")
        time.sleep(0.05)
    caps.confine(frozenset())
    os.setsid()
    terminal = os.open(TERMINAL, os.O_RDWR)  # a session leader's first tty: its controlling one
    _cooked(terminal)
    for fd in (0, 1, 2):
        os.dup2(terminal, fd)
    os.close(terminal)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it; the shell's tools not
    os.chdir("/")
    os.execve("/bin/sh", ["-sh"], {"PATH": "/bin", "HOME": "/", "TERM": "vt100",
                                   "PS1": "sez-debug:\\w# "})


def _cooked(fd: int) -> None:
    """The terminal in the usual line mode (``stty sane``): a virtio console starts raw, so
    Ctrl-C would not interrupt a command, nor would typing echo while one runs."""
    import termios

    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag |= termios.ICRNL | termios.IXON
    oflag |= termios.OPOST | termios.ONLCR
    lflag |= (termios.ISIG | termios.ICANON | termios.IEXTEN | termios.ECHO | termios.ECHOE
              | termios.ECHOK | termios.ECHOCTL | termios.ECHOKE)
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])
