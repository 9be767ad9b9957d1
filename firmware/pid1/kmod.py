"""Unloading a kernel module by system call (delete_module): PID 1 spawns no tool for it (a
spawn costs tens of milliseconds under TCG)."""

from __future__ import annotations

import ctypes
import os

__all__ = ["unload"]

_SYS_DELETE_MODULE = 176  # x86-64


def unload(name: str) -> None:
    """Unload module ``name`` now, or raise OSError (EWOULDBLOCK while it is in use)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_DELETE_MODULE, name.encode(), os.O_NONBLOCK) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
