"""Templates: a zone saved at READY, before it is any device, for machines to resume from.

A template is made once per image and board (``Board.key``: accelerator, vCPUs, memory,
debug, the image's manifest, the QEMU binary, $SEZ_QEMU_ARGS) by booting the image as no
device until PID 1 says READY on the start line (firmware.pid1.start), then saving the
machine (``Machine.save_template``) into ``$SEZ_HOME/templates/KEY/``:

=============  ===============================================================================
``ram``        the guest's RAM, a file the template's QEMU mapped shared (what the guest wrote
               is in it; its zero pages are then made holes); machines resumed from it map
               it private, copy on write
``state``      the device state, by migration with ``x-ignore-shared`` (the RAM not in it)
``meta.json``  the board's key, when and from which image it was made, the seconds it took
=============  ===============================================================================

What a template holds is what the measured image computes before it reads anything of a
device: no fuses, no BBRAM, no key, no random number drawn by the firmware. Each machine
resumed from it reseeds the kernel's CRNG from the virtio RNG before anything draws one, then
reads its own device's fuses, boot counter and disk. The template is the hardware's, as the
fuses are: kept under $SEZ_HOME with them, never handed to the zone's host driver.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .board import Board
from .image import Image
from .machine import LAUNCH_TIMEOUT, Machine
from .paths import SezHome

__all__ = ["Template", "template_for", "templates", "remove_templates"]

#: Seconds a template's boot to READY may take (a cold boot under TCG: ~3 s on an idle host).
MAKE_TIMEOUT = 90.0


@dataclass(frozen=True)
class Template:
    directory: Path
    meta: dict[str, Any]

    @property
    def board(self) -> str:
        """The key of the board it was made on (``Board.key``)."""
        return str(self.meta.get("board"))

    @property
    def ram(self) -> Path:
        return self.directory / "ram"

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @classmethod
    def open(cls, directory: Path) -> "Template | None":
        """The template saved in ``directory``, or None if there is none (or half of one)."""
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        template = cls(directory, meta)
        return template if template.ram.is_file() and template.state.is_file() else None


def _templates(home: SezHome) -> Path:
    return home.root / "templates"


def template_for(image: Image, *, home: SezHome | None = None, accel: str = "auto",
                 debug: bool = False, memory_mb: int = 512, cpus: int | None = None,
                 tcg_thread: str | None = None, timeout: float = MAKE_TIMEOUT) -> Template:
    """The template of ``image`` on this board, made now if there is none yet (one process
    makes it; others wait for it under a lock)."""
    home = home or SezHome.default()
    key = Board.make(accel=accel, cpus=cpus, tcg_thread=tcg_thread, memory_mb=memory_mb,
                     debug=debug).key(image)
    root = _templates(home)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory = root / key[:32]
    with open(root / f"{key[:32]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        template = Template.open(directory)
        if template is not None and template.board == key:
            return template
        work = root / f"{key[:32]}.new"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        started = time.monotonic()
        made = Machine(f"template-{key[:12]}", home).save_template(
            image, work, accel=accel, debug=debug, memory_mb=memory_mb, cpus=cpus,
            tcg_thread=tcg_thread, timeout=max(timeout, LAUNCH_TIMEOUT))
        meta = {"board": made, "image": str(image.directory), "made": time.time(),
                "seconds": round(time.monotonic() - started, 3)}
        meta["ram_bytes"] = _punch_zeros(work / "ram")
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(work, directory)
        template = Template.open(directory)
        assert template is not None
        return template


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_PAGE = 4096
_CHUNK = 1 << 21


def _punch_zeros(path: Path) -> int:
    """Make every all-zero page of ``path`` a hole (the guest kernel zeroes what it frees,
    so most of a fresh zone's RAM is zeros); the bytes still allocated."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    zero_chunk, zero_page = bytes(_CHUNK), bytes(_PAGE)
    with path.open("r+b") as f:
        fd = f.fileno()
        offset = 0
        while chunk := f.read(_CHUNK):
            holes = [(offset, len(chunk))] if chunk == zero_chunk[:len(chunk)] else [
                (offset + i, _PAGE) for i in range(0, len(chunk), _PAGE)
                if chunk[i:i + _PAGE] == zero_page[:len(chunk) - i]]
            for start, size in holes:
                if libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                                  start, size) != 0:
                    return os.fstat(fd).st_blocks * 512  # no holes here: keep the file
            offset += len(chunk)
        return os.fstat(fd).st_blocks * 512


def templates(home: SezHome | None = None) -> list[Template]:
    """The templates saved under ``home``."""
    root = _templates(home or SezHome.default())
    found = [Template.open(d) for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else []
    return [t for t in found if t is not None]


def remove_templates(home: SezHome | None = None) -> int:
    """Delete every template under ``home`` (a machine resumed from one keeps its RAM: the
    file stays open until it stops); the number removed."""
    root = _templates(home or SezHome.default())
    removed = 0
    for directory in sorted(root.glob("*")) if root.is_dir() else []:
        if directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)
            removed += 1
    return removed
