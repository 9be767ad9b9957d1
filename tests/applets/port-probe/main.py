"""Tries to reach fw_cfg's I/O ports (selector 0x510) from a job: ioperm, iopl, /dev/port,
/dev/mem. Input: JSON, optionally {"exists": PATH}. Returns JSON: {attempts: {attempt: errno
name, or "allowed" (undone at once)}, capabilities: the job's sets as /proc/self/status prints
them, uid, cwd (its work directory), exists: whether PATH exists (with "exists")}."""

import ctypes
import errno
import json
import os


def _name(code):
    return errno.errorcode.get(code, str(code))


def _syscall(call, *args, undo=None):
    ctypes.set_errno(0)
    if call(*args) == 0:
        if undo is not None:
            undo()
        return "allowed"
    return _name(ctypes.get_errno())


def _open(path):
    try:
        os.close(os.open(path, os.O_RDONLY))
        return "allowed"
    except OSError as exc:
        return _name(exc.errno)


def run(data, zone):
    request = json.loads(data or b"{}")
    libc = ctypes.CDLL(None, use_errno=True)
    port, count = ctypes.c_ulong(0x510), ctypes.c_ulong(2)
    attempts = {
        "ioperm": _syscall(libc.ioperm, port, count, 1,
                           undo=lambda: libc.ioperm(port, count, 0)),
        "iopl": _syscall(libc.iopl, 3, undo=lambda: libc.iopl(0)),
        "/dev/port": _open("/dev/port"),
        "/dev/mem": _open("/dev/mem"),
    }
    with open("/proc/self/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    capabilities = {key: status[key].strip() for key in status if key.startswith("Cap")}
    report = {"attempts": attempts, "capabilities": capabilities, "uid": os.getuid(),
              "cwd": os.getcwd()}
    if "exists" in request:
        report["exists"] = os.path.exists(request["exists"])
    return json.dumps(report).encode()
