"""The image builder's own parts, and a rebuild that must be byte-identical (no QEMU)."""

from __future__ import annotations

import hashlib
import lzma
import os
from pathlib import Path

import pytest

from emulator import image as img
from emulator.errors import ImageError


def fake_ko(path: Path, depends: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF junk\x00license=GPL\x00depends=" + depends.encode() + b"\x00x")


def test_modules_load_after_their_dependencies(tmp_path: Path) -> None:
    moddir = tmp_path / "modules"
    fake_ko(moddir / "a" / "virtio_ring.ko", "")
    fake_ko(moddir / "a" / "virtio.ko", "virtio_ring")
    fake_ko(moddir / "b" / "virtio_pci.ko", "virtio,virtio_ring")
    fake_ko(moddir / "c" / "virtio-rng.ko", "virtio,virtio_ring")
    root = tmp_path / "root"
    order = img._install_modules(root, moddir, ["virtio_rng", "virtio_pci"])
    assert order == ["virtio_ring", "virtio", "virtio_rng", "virtio_pci"]
    assert sorted(p.name for p in (root / "lib" / "modules").iterdir()) == sorted(
        f"{m}.ko" for m in order)


def test_missing_module_and_cycles_are_image_errors(tmp_path: Path) -> None:
    fake_ko(tmp_path / "m" / "a.ko", "b")
    fake_ko(tmp_path / "m" / "b.ko", "a")
    with pytest.raises(ImageError, match="cycle"):
        img._install_modules(tmp_path / "r", tmp_path / "m", ["a"])
    with pytest.raises(ImageError, match="not found"):
        img._install_modules(tmp_path / "r", tmp_path / "m", ["nosuch"])


def test_vmlinux_is_found_inside_a_bzimage() -> None:
    elf = b"\x7fELF" + os.urandom(1000)
    bzimage = b"setup code" * 50 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailer"
    assert img._extract_vmlinux(bzimage) == elf
    with pytest.raises(ImageError):
        img._extract_vmlinux(b"no xz stream here")


def test_cpio_is_deterministic_and_has_a_console(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"\x7fELF")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "init").write_text("#!/bin/sh\n")
    first = img._cpio(root, list(img._walk(root)))
    os.utime(root / "init", (12345, 12345))  # times never leak into the archive
    assert img._cpio(root, list(img._walk(root))) == first
    assert first.startswith(b"070701")
    assert b"dev/console\x00" in first and b"TRAILER!!!\x00" in first
    assert len(first) % 4 == 0


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    """Building again from the same packages gives the same kernel and initramfs."""
    try:
        built = img.load_image()
    except ImageError:
        if os.environ.get("SEZ_REQUIRE_QEMU") == "1":
            raise
        pytest.skip("no image built yet (make image)")
    cache = built.directory / "cache" / "debs"
    again = img.build_image(tmp_path / "build", cache=cache)
    for name in ("kernel", "initramfs"):
        assert again.manifest[name]["sha384"] == hashlib.sha384(
            (tmp_path / "build" / again.manifest[name]["file"]).read_bytes()).hexdigest()
    assert again.manifest["inputs"] == built.manifest["inputs"], "stale image: make image"
    assert again.manifest["kernel"] == built.manifest["kernel"]
    assert again.manifest["initramfs"] == built.manifest["initramfs"]
    assert again.manifest["packages"] == built.manifest["packages"]
