"""Capabilities: what each zone process keeps of root's powers, and how it drops the rest.

QEMU's fw_cfg has no lock: unloading the driver (firmware.pid1.hardware) hides the fuses from
sysfs, but root could still read them through fw_cfg's I/O ports (0x510, 0x511, DMA at 0x514):
with ioperm(2) or iopl(2), /dev/port or /dev/mem (each needs CAP_SYS_RAWIO), a kernel module
(CAP_SYS_MODULE) or another kernel booted with kexec (CAP_SYS_BOOT). So once PID 1 has read
fw_cfg and unloaded its driver (unload_module), it empties the bounding set of every process to come (nothing
execs after that, and whatever did would gain no capability: see capabilities(7), "execve"),
disables kexec for the rest of the boot, and keeps in its own sets only what its children
need; each child keeps only its own:

=========  ==========================================================================
process    keeps
=========  ==========================================================================
PID 1      what it hands its children when it restarts them (the union below)
layer 0    nothing: /dev/vda is root's own file; BBRAM needs no BLKFLSBUF (it drops
           the page cache with posix_fadvise)
monitor    CAP_SYS_BOOT: reboot(2), to power off (kexec is disabled)
runner     CAP_SETUID, CAP_SETGID (a job's uid, no groups), CAP_CHOWN (the job's work
           directory), CAP_DAC_OVERRIDE (to enter and remove that 0700 directory, which
           the job owns)
a job      nothing: its setresuid() to an unprivileged uid clears what the runner had
=========  ==========================================================================

The zone's file systems, cgroup2 included, are mounted by /init (firmware/pid1/init.sh), so
no process needs CAP_SYS_ADMIN. Every process is also made non-dumpable: another process of
the same uid (root) that holds no CAP_SYS_PTRACE — none does — cannot read its memory
(ptrace, /proc/PID/mem, process_vm_readv), which matters for layer 0 with an empty set.

ctypes over the C library: the guest has nothing else (no libcap, no capsh).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
from typing import Callable

__all__ = ["Cap", "PID1", "KEEPER", "MONITOR", "RUNNER", "confine", "disable_kexec",
           "unload_module", "capabilities", "probe_port_io", "FW_CFG_PORT"]


class Cap(enum.IntEnum):
    """Linux capability numbers (linux/capability.h): those this module names."""

    CHOWN = 0
    DAC_OVERRIDE = 1
    KILL = 5
    SETGID = 6
    SETUID = 7
    SETPCAP = 8
    NET_ADMIN = 12
    SYS_MODULE = 16
    SYS_RAWIO = 17
    SYS_PTRACE = 19
    SYS_ADMIN = 21
    SYS_BOOT = 22
    SYS_NICE = 23
    SYS_RESOURCE = 24


#: Layer 0: the tamper response ends every other zone process, jobs of other uids included.
KEEPER = frozenset({Cap.KILL})
MONITOR = frozenset({Cap.SYS_BOOT})
RUNNER = frozenset({Cap.SETUID, Cap.SETGID, Cap.CHOWN, Cap.DAC_OVERRIDE})
#: PID 1 forks (and restarts) the others, which can only keep what it still has.
PID1 = KEEPER | MONITOR | RUNNER

#: fw_cfg's selector port on x86 (the data port follows it).
FW_CFG_PORT = 0x510
_PR_SET_DUMPABLE, _PR_CAPBSET_READ, _PR_CAPBSET_DROP = 4, 23, 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAPABILITY_VERSION_3 = 0x20080522
_SYS_KEXEC_LOAD = 246  # x86-64
_KEXEC_DISABLED = "/proc/sys/kernel/kexec_load_disabled"
_SYS_DELETE_MODULE = 176  # x86-64


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def confine(keep: frozenset[Cap]) -> None:
    """Keep only ``keep`` (of what the process has): empty the bounding set (while
    CAP_SETPCAP, which that needs, is still effective), set effective = permitted = ``keep``
    and inheritable and ambient empty; then make the process non-dumpable. OSError if the
    kernel refuses (a process without CAP_SETPCAP whose bounding set is not empty yet)."""
    libc = _libc()
    for cap in range(_last_cap() + 1):
        if libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            _check(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    header = _Header(_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    had = data[0].permitted | data[1].permitted << 32
    mask = sum(1 << cap for cap in keep) & had
    for i in (0, 1):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
        data[i].inheritable = 0
    _check(libc.capset(ctypes.byref(header), data), "capset")
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL before 4.3
    _check(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "making the process non-dumpable")


def disable_kexec() -> bool:
    """Forbid loading another kernel until the machine powers off (a one-way switch): the
    monitor keeps CAP_SYS_BOOT to power off, and kexec would let it run a kernel of its own.
    Whether the switch is now on."""
    try:
        with open(_KEXEC_DISABLED, "w") as f:
            f.write("1")
    except OSError:
        pass
    try:
        with open(_KEXEC_DISABLED) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def unload_module(name: str) -> None:
    """Unload kernel module ``name`` now (delete_module(2): no tool to spawn), or raise
    OSError (EWOULDBLOCK while it is in use)."""
    _check(_libc().syscall(_SYS_DELETE_MODULE, name.encode(), os.O_NONBLOCK),
           f"unloading {name}")


def capabilities(pid: int | str = "self") -> dict[str, str] | None:
    """A process's capability sets from /proc/PID/status, as the kernel prints them (16 hex
    digits): {effective, permitted, bounding, inheritable, ambient}; None if it is gone."""
    fields = {"CapEff": "effective", "CapPrm": "permitted", "CapBnd": "bounding",
              "CapInh": "inheritable", "CapAmb": "ambient"}
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in fields:
            found[fields[key]] = value.strip()
    return found


def probe_port_io() -> dict[str, str]:
    """Try every way to fw_cfg's ports this module's docstring names, each undone at once if
    it works: {attempt: the errno's name, or "allowed"}. A confined process gets EPERM for
    each (for the files, DAC may answer EACCES first)."""
    libc = _libc()
    result = {}

    def attempt(name: str, call: Callable[..., int], *args: object,
                undo: tuple[Callable[..., int], tuple[object, ...]] | None = None) -> None:
        ctypes.set_errno(0)
        if call(*args) == 0:
            if undo is not None:
                undo[0](*undo[1])
            result[name] = "allowed"
        else:
            result[name] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

    attempt("ioperm", libc.ioperm, ctypes.c_ulong(FW_CFG_PORT), ctypes.c_ulong(2), 1,
            undo=(libc.ioperm, (ctypes.c_ulong(FW_CFG_PORT), ctypes.c_ulong(2), 0)))
    attempt("iopl", libc.iopl, 3, undo=(libc.iopl, (0,)))
    for path in ("/dev/port", "/dev/mem"):
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            result[path] = "allowed"
        except OSError as exc:
            result[path] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    # kexec_load with no segments unloads a loaded kernel (there is none): harmless if allowed
    attempt("kexec_load", libc.syscall, ctypes.c_long(_SYS_KEXEC_LOAD), ctypes.c_ulong(0),
            ctypes.c_ulong(0), None, ctypes.c_ulong(0))
    return result
