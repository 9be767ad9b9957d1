"""Without QEMU: what a template is keyed by, its RAM made sparse, the hardware's cached
measurements, and the control channel's lock."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path

import pytest

from emulator.board import Board
from emulator.image import Image
from emulator.template import _punch_zeros
from host_driver import ChannelBusy
from host_driver.relay.channel import open_channel


def fake_image(tmp_path: Path, cmdline: str = "console=ttyS0") -> Image:
    (tmp_path / "vmlinux").write_bytes(b"kernel" * 1000)
    (tmp_path / "initramfs.cpio").write_bytes(b"initramfs" * 1000)
    return Image(tmp_path, {"cmdline": {"value": cmdline}, "kernel": {"sha384": "k"}})


def test_a_template_resumes_only_on_the_same_board_and_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = fake_image(tmp_path)
    board = Board("tcg", 1, "single", 512, False)
    key = board.key(image)
    assert key == Board("tcg", 1, "single", 512, False).key(image)
    others = {Board("tcg", 1, "single", 512, True).key(image),  # debug: the shell's port
              Board("tcg", 2, "single", 512, False).key(image),
              Board("tcg", 1, "single", 1024, False).key(image),
              board.key(fake_image(tmp_path, cmdline="console=ttyS0 quiet"))}
    monkeypatch.setenv("SEZ_QEMU_ARGS", "-device virtio-net-pci")
    others.add(board.key(image))
    assert key not in others and len(others) == 5


def test_the_zero_pages_of_a_template_ram_become_holes(tmp_path: Path) -> None:
    ram = tmp_path / "ram"
    page = 4096
    layout = [b"\0" * (1 << 21), b"x" * page, b"\0" * page * 3, b"y" * 10 + b"\0" * (page - 10)]
    content = b"".join(layout)
    ram.write_bytes(content)
    allocated = _punch_zeros(ram)
    assert ram.read_bytes() == content
    assert allocated <= 2 * page < os.stat(ram).st_size  # the two pages with data


def test_measurements_are_hashed_again_after_any_change(tmp_path: Path) -> None:
    image = fake_image(tmp_path)
    first = image.measure()
    kernel_hash = hashlib.sha384(image.kernel.read_bytes()).hexdigest()
    assert f"kernel {kernel_hash}\n" in first
    assert first == image.measure()  # from the cache
    stat = image.initramfs.stat()
    image.initramfs.write_bytes(b"INITRAMFS" * 1000)  # same size, mtime put back: ctime moves
    os.utime(image.initramfs, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = image.measure()
    assert changed != first
    assert hashlib.sha384(b"INITRAMFS" * 1000).hexdigest() in changed


def test_a_second_driver_of_a_socket_channel_is_told_it_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)

    async def go() -> None:
        first = await open_channel(f"unix:{path}", lambda data: None, lambda exc: None)
        with pytest.raises(ChannelBusy):
            await open_channel(f"unix:{path}", lambda data: None, lambda exc: None)
        first.close()
        again = await open_channel(f"unix:{path}", lambda data: None, lambda exc: None)
        again.close()

    try:
        asyncio.run(go())
    finally:
        server.close()
