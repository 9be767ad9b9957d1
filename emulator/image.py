"""Builds the zone image from Debian packages (``sez image build``, ``make image``).

Steps: fetch the packages of ``images/recipe.toml`` with ``apt-get download`` (cached in
``images/build/cache/``), unpack them with ``dpkg-deb``, extract the ELF ``vmlinux`` from the
kernel's bzImage (booted directly through its PVH entry), assemble the root (busybox, the
virtio modules in load order, a trimmed Python with precompiled bytecode, ``firmware/``),
write it as an uncompressed newc cpio, and record the reference values in ``manifest.json``.

Everything is deterministic: sorted entries, fixed owners and times, bytecode compiled by the
guest's own Python with a fixed hash seed. Two builds from the same packages are byte-identical.

(One module of over 400 lines: the build is one pipeline whose steps share the recipe and the
work tree, and the unit tests drive each step here.)
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from firmware import FIRMWARE_VERSION
from firmware.abi.dice import measure_firmware

from .errors import ImageError
from .paths import image_dir, project_root

__all__ = ["Recipe", "Image", "build_image", "load_image", "sha384_file"]

Progress = Callable[[str], None]

KERNEL_FILE = "vmlinux"
INITRAMFS_FILE = "initramfs.cpio"
MANIFEST_FILE = "manifest.json"
#: Every file in the image carries this modification time (SOURCE_DATE_EPOCH style).
EPOCH = 0
#: Seconds ``apt-get download`` may take (the network), and any other build tool (apt-cache,
#: dpkg-deb, the guest's compileall): past them the build fails with ImageError, not a hang.
DOWNLOAD_TIMEOUT = 1200.0
TOOL_TIMEOUT = 600.0
_XZ_MAGIC = b"\xfd7zXZ\x00"
_MULTIARCH = "x86_64-linux-gnu"


@dataclass(frozen=True)
class Recipe:
    kernel: str
    packages: list[str]
    modules: list[str]
    device_modules: list[str]
    cmdline: list[str]
    busybox: list[str]
    keep: list[str]
    drop: list[str]

    @classmethod
    def load(cls, path: Path | None = None) -> "Recipe":
        path = path or project_root() / "images" / "recipe.toml"
        data = tomllib.loads(path.read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Image:
    """A built image: the files QEMU boots and the reference values measured from them."""

    directory: Path
    manifest: dict[str, Any]

    @property
    def kernel(self) -> Path:
        return self.directory / KERNEL_FILE

    @property
    def initramfs(self) -> Path:
        return self.directory / INITRAMFS_FILE

    @property
    def cmdline(self) -> str:
        return str(self.manifest["cmdline"]["value"])

    def measure(self) -> str:
        """What the hardware measures at power-on: "kernel HEX", "initramfs HEX" and "cmdline
        HEX" lines (SHA-384) of the files it boots, as fw_cfg hands them to the zone.

        A file's digest is kept in ``measured.json`` beside it (when the directory is
        writable) with the file's identity: device, inode, size, mtime and ctime. It is hashed
        again whenever any of them changed, as after any write to it (ctime cannot be set back
        from user space)."""
        cache_file = self.directory / "measured.json"
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        lines, changed = [], False
        for name, path in (("kernel", self.kernel), ("initramfs", self.initramfs)):
            st = path.stat()
            identity = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
            entry = cache.get(name)
            if not (isinstance(entry, dict) and entry.get("identity") == identity):
                entry = cache[name] = {"identity": identity, "sha384": sha384_file(path)}
                changed = True
            lines.append(f"{name} {entry['sha384']}\n")
        lines.append(f"cmdline {hashlib.sha384(self.cmdline.encode()).hexdigest()}\n")
        if changed:
            try:
                tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(cache))
                os.replace(tmp, cache_file)
            except OSError:
                pass
        return "".join(lines)


def sha384_file(path: Path) -> str:
    h = hashlib.sha384()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_image(directory: Path | None = None) -> Image:
    """The image in ``directory`` (default: $SEZ_IMAGE or images/build/); ImageError if absent."""
    directory = directory or image_dir()
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"no guest image in {directory} (build it: sez image build)") from exc
    image = Image(directory, manifest)
    for path in (image.kernel, image.initramfs):
        if not path.is_file():
            raise ImageError(f"image incomplete: {path} missing (rebuild: sez image build --force)")
    return image


def build_image(out: Path | None = None, *, force: bool = False,
                progress: Progress = lambda msg: None, recipe: Recipe | None = None,
                cache: Path | None = None, firmware_source: Path | None = None) -> Image:
    """Build the image into ``out`` (default images/build/), unless it is up to date.

    ``cache`` holds the downloaded .deb files (default ``out/cache/debs``); ``firmware_source``
    is the firmware tree to pack (default: this checkout's ``firmware/`` package).
    """
    source = firmware_source or project_root() / "firmware"
    out = out or image_dir()
    recipe = recipe or Recipe.load()
    if not force:
        try:
            image = load_image(out)
        except ImageError:
            pass
        else:
            if image.manifest.get("inputs") == _inputs_digest(recipe, source):
                progress(f"image up to date in {out}")
                return image
    out.mkdir(parents=True, exist_ok=True)
    cache = cache or out / "cache" / "debs"
    if force and cache.exists():
        shutil.rmtree(cache)
    debs = _fetch(cache, recipe, progress)
    with tempfile.TemporaryDirectory(prefix="sez-image-") as tmp:
        work = Path(tmp)
        root = work / "root"
        kroot = work / "kernel"
        versions = {}
        progress(f"unpacking {len(debs)} packages")
        for name, deb in debs.items():
            versions[name] = _deb_field(deb, "Version")
            _run(["dpkg-deb", "-x", str(deb), str(kroot if name == "kernel" else root)])
        kernel_pkg = _deb_field(debs["kernel"], "Package")
        versions[kernel_pkg] = versions.pop("kernel")
        progress("extracting vmlinux from the kernel's bzImage")
        vmlinuz = next((kroot / "boot").glob("vmlinuz-*"))
        kernel_release = vmlinuz.name.removeprefix("vmlinuz-")
        vmlinux = _extract_vmlinux(vmlinuz.read_bytes())
        progress("assembling the root file system")
        order = _install_modules(root, kroot / "lib" / "modules" / kernel_release, recipe.modules)
        _assemble_root(root, recipe, order, source)
        progress("compiling Python bytecode with the guest's interpreter")
        _compile_bytecode(root)
        firmware_digest = measure_firmware(str(root))
        entries = list(_walk(root))
        progress(f"packing the initramfs ({len(entries)} entries)")
        initramfs = _cpio(root, entries)

        tmp_kernel = out / (KERNEL_FILE + ".tmp")
        tmp_initramfs = out / (INITRAMFS_FILE + ".tmp")
        tmp_kernel.write_bytes(vmlinux)
        tmp_initramfs.write_bytes(initramfs)
        os.replace(tmp_kernel, out / KERNEL_FILE)
        os.replace(tmp_initramfs, out / INITRAMFS_FILE)

    cmdline = " ".join(recipe.cmdline)
    manifest = {
        "format": 2,
        "firmware_version": FIRMWARE_VERSION,
        "kernel": {"file": KERNEL_FILE, "release": kernel_release,
                   "sha384": hashlib.sha384(vmlinux).hexdigest(), "size": len(vmlinux)},
        "initramfs": {"file": INITRAMFS_FILE, "sha384": hashlib.sha384(initramfs).hexdigest(),
                      "size": len(initramfs)},
        "cmdline": {"value": cmdline, "sha384": hashlib.sha384(cmdline.encode()).hexdigest()},
        "firmware": {"paths": ["init", "opt/sez/firmware"], "sha384": firmware_digest.hex()},
        "modules": order,
        "packages": dict(sorted(versions.items())),
        "inputs": _inputs_digest(recipe, source),
    }
    tmp_manifest = out / (MANIFEST_FILE + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp_manifest, out / MANIFEST_FILE)
    return Image(out, manifest)


# -- packages ----------------------------------------------------------------------------------


def _fetch(cache: Path, recipe: Recipe, progress: Progress) -> dict[str, Path]:
    """The .deb of every recipe package (plus "kernel"), downloading the ones not cached."""
    cache.mkdir(parents=True, exist_ok=True)
    wanted = {name: name for name in recipe.packages}
    cached_kernel = sorted(cache.glob("linux-image-*.deb"))
    wanted["kernel"] = (
        cached_kernel[-1].name.split("_")[0] if cached_kernel else _resolve_kernel(recipe.kernel)
    )
    found: dict[str, Path] = {}
    missing = []
    for key, package in wanted.items():
        hits = sorted(cache.glob(f"{package}_*.deb"))
        if hits:
            found[key] = hits[-1]
        else:
            missing.append(package)
    if missing:
        progress(f"downloading {len(missing)} Debian packages: {' '.join(missing)}")
        cmd = ["apt-get", "download", "-q"]
        if os.geteuid() == 0:
            cmd += ["-o", "APT::Sandbox::User=root"]
        proc = _spawn(cmd + missing, timeout=DOWNLOAD_TIMEOUT, cwd=cache)
        if proc.returncode != 0:
            raise ImageError(
                f"apt-get download failed ({proc.returncode}): {proc.stderr.strip()[-400:]}"
                " (is the apt package list current? run: apt-get update)"
            )
        return _fetch(cache, recipe, progress)
    progress(f"using {len(found)} cached packages in {cache}")
    return found


def _resolve_kernel(metapackage: str) -> str:
    proc = _spawn(["apt-cache", "depends", metapackage])
    match = re.search(r"Depends: (linux-image-\S+)", proc.stdout)
    if proc.returncode != 0 or not match:
        raise ImageError(
            f"cannot resolve {metapackage} with apt-cache ({proc.stderr.strip()[-300:]});"
            " run apt-get update first"
        )
    return match.group(1)


def _deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), field]).strip()


def _spawn(cmd: list[str], *, timeout: float = TOOL_TIMEOUT, what: str | None = None,
           **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (output captured) for at most ``timeout`` seconds. Raises ImageError if the
    tool is missing or hangs (``what`` names it in the message; default: the command)."""
    what = what or " ".join(cmd[:3])
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError as exc:
        raise ImageError(f"{cmd[0]} not found (run: make deps)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what} hung: no result within {timeout:.0f} s (killed it)") from exc


def _run(cmd: list[str], *, timeout: float = TOOL_TIMEOUT, what: str | None = None,
         **kwargs: Any) -> str:
    """``cmd``'s stdout. Raises ImageError if it is missing, hangs (see _spawn) or fails."""
    proc = _spawn(cmd, timeout=timeout, what=what, **kwargs)
    if proc.returncode != 0:
        raise ImageError(f"{what or ' '.join(cmd[:3])} failed: {proc.stderr.strip()[-400:]}")
    return str(proc.stdout)


# -- kernel -----------------------------------------------------------------------------------


def _extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage whose payload is xz-compressed."""
    start = bzimage.find(_XZ_MAGIC)
    if start < 0:
        raise ImageError("kernel image holds no xz stream")
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
    if elf[:4] != b"\x7fELF":
        raise ImageError("decompressed kernel is not an ELF file")
    return elf


def _module_depends(ko: Path) -> list[str]:
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", ko.read_bytes())
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def _install_modules(root: Path, moddir: Path, wanted: list[str]) -> list[str]:
    """Copy ``wanted`` and their dependencies to /lib/modules/; return the load order."""
    by_name = {ko.name[:-3].replace("-", "_"): ko for ko in moddir.rglob("*.ko")}
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in stack:
            raise ImageError(f"module dependency cycle: {' -> '.join(stack + (name,))}")
        if name not in by_name:
            raise ImageError(f"kernel module {name} not found in {moddir}")
        for dep in _module_depends(by_name[name]):
            visit(dep, stack + (name,))
        order.append(name)

    for name in wanted:
        visit(name, ())
    dest = root / "lib" / "modules"
    dest.mkdir(parents=True, exist_ok=True)
    for name in order:
        shutil.copyfile(by_name[name], dest / f"{name}.ko")
    return order


# -- root file system ---------------------------------------------------------------------------


def _assemble_root(root: Path, recipe: Recipe, modules: list[str], src: Path) -> None:
    for rel in recipe.drop:
        for path in sorted(root.glob(rel), reverse=True):
            if path.relative_to(root).as_posix() not in recipe.keep:
                _remove(path)
    # Third-party Python packages go beside the standard library: the monitor runs with -S.
    stdlib = root / "usr" / "lib" / "python3.11"
    dist = root / "usr" / "lib" / "python3" / "dist-packages"
    for entry in sorted(dist.iterdir()):
        shutil.move(str(entry), stdlib / entry.name)
    shutil.rmtree(root / "usr" / "lib" / "python3")
    # OpenSSL (cryptography) wants its configuration and provider modules.
    (root / "etc" / "ssl").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "ssl" / "openssl.cnf").write_text("# SEZ zone: OpenSSL defaults\n")
    # Busybox: /bin/<applet> -> busybox.
    for applet in recipe.busybox:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    for d in ("dev", "proc", "sys", "tmp", "run", "etc/sez"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # /init loads the machine's modules; PID 1 the device's, once the hardware says start
    # (firmware.pid1.start): a template snapshot holds no device's fuses or disk.
    machine = [m for m in modules if m not in recipe.device_modules]
    device = [m for m in modules if m in recipe.device_modules]
    (root / "etc" / "sez" / "modules").write_text("".join(f"{m}\n" for m in machine))
    (root / "etc" / "sez" / "modules.device").write_text("".join(f"{m}\n" for m in device))
    # The firmware: /init, and the package under /opt/sez/firmware.
    shutil.copyfile(src / "pid1" / "init.sh", root / "init")
    (root / "init").chmod(0o755)
    dest = root / "opt" / "sez" / "firmware"
    for py in sorted(src.rglob("*.py")):
        target = dest / py.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(py, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _compile_bytecode(root: Path) -> None:
    """Compile every module with the guest's Python (not the host's, whatever it is).

    The standard library and third-party packages ship as bytecode only; the firmware keeps its
    sources beside unchecked-hash bytecode (sources stay readable in the zone's tracebacks).
    """
    libdirs = [root / "lib" / _MULTIARCH, root / "usr" / "lib" / _MULTIARCH]
    loader = root / "lib" / _MULTIARCH / "ld-linux-x86-64.so.2"
    python = root / "usr" / "bin" / "python3.11"
    env = {"PYTHONHOME": str(root / "usr"), "PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin",
           "LC_ALL": "C"}
    base = [str(loader), "--library-path", ":".join(map(str, libdirs)), str(python), "-S", "-m",
            "compileall", "-q", "-j", "1", "--invalidation-mode", "unchecked-hash"]
    stdlib = root / "usr" / "lib" / "python3.11"
    compiling = "the guest's python3.11 -m compileall"
    _run(base + ["-b", "-s", str(root), "-p", "/", str(stdlib)], env=env, what=compiling)
    for py in stdlib.rglob("*.py"):
        py.unlink()
    for cache_dir in stdlib.rglob("__pycache__"):
        shutil.rmtree(cache_dir)
    _run(base + ["-s", str(root), "-p", "/", str(root / "opt" / "sez")], env=env,
         what=compiling)


# -- cpio (newc) ----------------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            yield base / name


def _cpio(root: Path, entries: list[Path]) -> bytes:
    """A newc archive of ``entries``: sorted, owned by root, every time EPOCH, fresh inodes.

    /dev/console is added as a device node so the kernel can give PID 1 its console before
    devtmpfs is mounted.
    """
    out = bytearray()

    def add(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
            ino: int = 0) -> None:
        fields = (ino, mode, 0, 0, 1, EPOCH, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        out.extend(b"070701" + "".join(f"{v:08x}" for v in fields).encode())
        out.extend(name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    names = sorted([(p.relative_to(root).as_posix(), p) for p in entries] + [("dev/console", None)])
    for ino, (name, path) in enumerate(names, start=1):
        if path is None:
            add(name, 0o020600, rdev=(5, 1), ino=ino)
            continue
        st = path.lstat()
        if path.is_symlink():
            add(name, st.st_mode, os.readlink(path).encode(), ino=ino)
        elif path.is_dir():
            add(name, st.st_mode, ino=ino)
        else:
            add(name, st.st_mode, path.read_bytes(), ino=ino)
    add("TRAILER!!!", 0)
    return bytes(out)


def _inputs_digest(recipe: Recipe, src: Path) -> str:
    """What the image was built from besides the packages: recipe and firmware sources."""
    h = hashlib.sha384(json.dumps(recipe.__dict__, sort_keys=True).encode())
    for path in sorted(list(src.rglob("*.py")) + [src / "pid1" / "init.sh"]):
        h.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
