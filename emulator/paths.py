"""Where SEZ keeps its state (README, "CLI"): $SEZ_HOME and the image directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DeviceNotFound

__all__ = ["SezHome", "image_dir", "project_root", "check_name", "write_atomic"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def image_dir() -> Path:
    """The guest image: $SEZ_IMAGE, else images/build/ of this checkout."""
    env = os.environ.get("SEZ_IMAGE")
    return Path(env) if env else project_root() / "images" / "build"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` whole or not at all (a temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid device name {name!r}: use letters, digits, '.', '_', '-'")
    return name


@dataclass(frozen=True)
class SezHome:
    root: Path

    @classmethod
    def default(cls) -> "SezHome":
        env = os.environ.get("SEZ_HOME")
        return cls(Path(env) if env else Path.home() / ".sez")

    @property
    def factory(self) -> Path:
        return self.root / "factory"

    def device_dir(self, name: str) -> Path:
        return self.root / "devices" / check_name(name)

    def run_dir(self, name: str) -> Path:
        return self.root / "run" / check_name(name)

    def existing_device(self, name: str) -> Path:
        path = self.device_dir(name)
        if not path.is_dir():
            raise DeviceNotFound(f"no device {name!r} (provision it with: sez device new {name})")
        return path

    def devices(self) -> list[str]:
        base = self.root / "devices"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
