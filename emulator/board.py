"""The board QEMU emulates for a zone: which accelerator, which CPU model, which devices and
ports, and the command line that asks QEMU for them.

``emulator.machine`` runs QEMU with this command line and looks after the process; what the
hardware *is* lives here, apart from how it is started and stopped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from firmware.abi.bulk import WINDOW_SIZE
from firmware.abi.device import CONTROL_PORT, FW_CFG_PREFIX, START_PORT, TAMPER_PORT

from .errors import LaunchError, MachineStateError
from .image import Image

__all__ = ["QEMU", "QBOOT", "CPUS", "TCG_THREAD", "TCG_CPU", "Board", "probe_kvm",
           "resolve_accel", "qemu_command"]

QEMU = os.environ.get("SEZ_QEMU", "qemu-system-x86_64")
QBOOT = Path("/usr/share/qemu/qboot.rom")
#: vCPUs of a zone, and how TCG runs them: "single" (one host thread for all vCPUs) or
#: "multi" (a host thread each). One vCPU in one thread: with two vCPUs under multi-threaded
#: TCG (QEMU 7.2) zones soft-locked in the guest kernel (cross-vCPU code patching and IPIs;
#: README "Reliability"); one vCPU also boots and answers faster when zones share the host.
#: $SEZ_CPUS and $SEZ_TCG_THREAD override them (A/B runs, or parallel jobs at that risk).
CPUS = int(os.environ.get("SEZ_CPUS", "1"))
TCG_THREAD = os.environ.get("SEZ_TCG_THREAD", "single")
#: The guest's CPU model under TCG (why: qemu_command).
TCG_CPU = "qemu64,+rdrand,+aes,+pclmulqdq,+ssse3,+sse4.1,+sse4.2"


@dataclass(frozen=True)
class Board:
    """How QEMU runs one machine: what a template and a machine resumed from it share."""

    accel: str
    cpus: int
    tcg_thread: str
    memory_mb: int
    debug: bool  # a debug zone's board has the console shell's port

    @classmethod
    def make(cls, *, accel: str, cpus: int | None, tcg_thread: str | None, memory_mb: int,
             debug: bool) -> "Board":
        """The board asked for (None: the defaults CPUS, TCG_THREAD), checked."""
        if shutil.which(QEMU) is None:
            raise LaunchError(f"{QEMU} not found (install it: make deps)")
        board = cls(resolve_accel(accel), CPUS if cpus is None else cpus,
                    TCG_THREAD if tcg_thread is None else tcg_thread, memory_mb, debug)
        if board.tcg_thread not in ("single", "multi"):
            raise ValueError(f"tcg_thread must be single or multi, not {board.tcg_thread!r}")
        return board

    def key(self, image: Image) -> str:
        """A digest of the board, the image's reference values (its manifest), the QEMU
        binary and $SEZ_QEMU_ARGS: a template resumes only on a machine of the same key."""
        qemu = shutil.which(QEMU) or QEMU
        try:
            st = os.stat(qemu)
            binary = [qemu, st.st_size, st.st_mtime_ns]
        except OSError:
            binary = [qemu]
        described = {"board": self.__dict__, "image": image.manifest, "qemu": binary,
                     "args": os.environ.get("SEZ_QEMU_ARGS", "")}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def probe_kvm() -> bool:
    """True when KVM really works here: /dev/kvm opens and the CPU has vmx or svm.

    (A /dev/kvm without hardware virtualisation underneath makes the guest hang at boot.)
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if " vmx" not in flags and " svm" not in flags:
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        kvm_get_api_version = 0xAE00
        return fcntl.ioctl(fd, kvm_get_api_version) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def resolve_accel(accel: str) -> str:
    if accel == "auto":
        return "kvm" if probe_kvm() else "tcg"
    if accel not in ("tcg", "kvm"):
        raise ValueError(f"accel must be auto, tcg or kvm, not {accel!r}")
    if accel == "kvm" and not probe_kvm():
        raise MachineStateError("KVM is not usable here (no /dev/kvm or no vmx/svm): use --accel tcg")
    return accel


def qemu_command(name: str, image: Image, *, accel: str, memory_mb: int, cpus: int,
                 tcg_thread: str, console_log: Path, tamper_line: Path, qmp_socket: Path,
                 sensors_socket: Path, ctl_socket: Path, start_line: Path,
                 gdb_port: int | None = None, shell_socket: Path | None = None,
                 fw_cfg: dict[str, Path | str], bbram: Path,
                 ram: Path | None = None, ram_shared: bool = False,
                 incoming: bool = False, bulk: Path | None) -> list[str]:
    """QEMU's command line for zone ``name``: the board booting ``image``, its console written
    to ``console_log``, its control port on the unix socket ``ctl_socket``, its tamper line
    and start line on the pipes ``tamper_line`` and ``start_line`` (.in, .out), QMP on the
    unix sockets ``qmp_socket`` and ``sensors_socket`` (the sensors' own), a gdb stub on
    127.0.0.1:``gdb_port`` and the console shell's terminal (a virtio console, hvc0 in the
    guest) on the unix socket ``shell_socket`` (debug zones only), ``fw_cfg`` items
    under opt/sez/ (a Path is a file, a str the value), ``bbram`` its BBRAM disk.

    With ``ram``, the guest's RAM is that file: shared (``ram_shared``: a template being made
    writes its RAM there) or private (a machine resumed from the template maps it copy on
    write); ``incoming`` makes QEMU wait for the template's device state (emulator.machine).
    ``bulk`` is the file of the bulk window (firmware.abi.bulk), shared with the host driver
    (None: no window, as on a template's machine)."""
    # q35 boots ~1 s faster than pc under TCG (no ACPI interrupt-link routing for each
    # virtio-pci device). Under TCG a plain x86-64 model beats "max" (its REP MOVSB and AVX2
    # string copies are slower to emulate), plus RDRAND (the guest's CRNG is seeded at
    # once), AES-NI and PCLMULQDQ (AES-GCM 2.2x faster in the guest), and SSSE3/SSE4.x
    # (without them OpenSSL's AES-NI code raises SIGILL). The soft lockups once blamed on
    # these flags came from multi-threaded TCG (see CPUS).
    cpu = "host" if accel == "kvm" else TCG_CPU
    argv = [
        QEMU, "-name", f"sez-{name},debug-threads=on",
        "-machine", "q35,memory-backend=ram" if ram else "q35", "-accel", accel if accel == "kvm" else f"tcg,thread={tcg_thread}",
        "-cpu", cpu, "-smp", str(cpus), "-m", str(memory_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-bios", str(QBOOT),
        "-kernel", str(image.kernel), "-initrd", str(image.initramfs),
        "-append", image.cmdline,
        "-chardev", f"file,id=console,path={console_log}",
        "-serial", "chardev:console",
        "-device", "virtio-serial-pci,id=vser",
        # A unix socket: QEMU sees a driver come and go at once (a PTY back end polls for a
        # reopened PTY once a second), and the channel is faster than through a tty.
        "-chardev", f"socket,id=ctl,path={ctl_socket},server=on,wait=off",
        "-device", f"virtserialport,bus=vser.0,chardev=ctl,name={CONTROL_PORT}",
        # A pipe is always connected, so the guest's end never reads as hung up.
        "-chardev", f"pipe,id=tamper,path={tamper_line}",
        "-device", f"virtserialport,bus=vser.0,chardev=tamper,name={TAMPER_PORT}",
        "-chardev", f"pipe,id=start,path={start_line}",
        "-device", f"virtserialport,bus=vser.0,chardev=start,name={START_PORT}",
        "-device", "virtio-rng-pci",
        "-drive", f"file={bbram},if=none,format=raw,id=bbram,cache=writeback",
        "-device", "virtio-blk-pci,drive=bbram",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-qmp", f"unix:{sensors_socket},server=on,wait=off",
    ]
    if ram is not None:
        argv += ["-object", f"memory-backend-file,id=ram,size={memory_mb}M,mem-path={ram},"
                            f"share={'on' if ram_shared else 'off'}"]
    if bulk is not None:
        # The last PCI device, so the others sit where they sit on a template's machine, which
        # has none (firmware.pid1.start.attach_window); master=on lets a machine resumed
        # from a template take its migration stream.
        argv += ["-object", f"memory-backend-file,id=bulk,size={WINDOW_SIZE},mem-path={bulk},"
                            "share=on",
                 "-device", "ivshmem-plain,memdev=bulk,master=on"]
    if incoming:
        argv += ["-incoming", "defer"]
    if gdb_port is not None:
        argv += ["-gdb", f"tcp:127.0.0.1:{gdb_port}"]
    if shell_socket is not None:
        argv += ["-chardev", f"socket,id=shell,path={shell_socket},server=on,wait=off",
                 "-device", "virtconsole,bus=vser.0,chardev=shell"]
    for item, value in sorted(fw_cfg.items()):
        source = f"file={value}" if isinstance(value, Path) else f"string={value}"
        argv += ["-fw_cfg", f"name={FW_CFG_PREFIX}{item},{source}"]
    # Expert knob: extra QEMU arguments (later options override earlier ones).
    return argv + shlex.split(os.environ.get("SEZ_QEMU_ARGS", ""))
