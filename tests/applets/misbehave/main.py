import os
import signal
import socket
import time


def _spin():
    while True:  # CPU only: the memory stays flat, so the CPU-time limit is what ends it
        pass


def _open(path):
    with open(path, "rb") as f:
        return f.read(16)


BEHAVIOURS = {
    "spin": lambda zone: _spin(),
    "sleep": lambda zone: time.sleep(3600),
    "allocate": lambda zone: bytearray(4 << 30),
    "grow": lambda zone: [bytearray(1 << 20) for _ in range(4096)],
    "fork": lambda zone: [os.fork() for _ in range(10000)],
    "output": lambda zone: b"x" * (1 << 20),
    "huge-output": lambda zone: b"x" * (1 << 30),
    "dev-mem": lambda zone: _open("/dev/mem"),
    "bbram": lambda zone: _open("/dev/vda"),
    "fuses": lambda zone: _open("/sys/firmware/qemu_fw_cfg/by_name/opt/sez/uds/raw"),
    "keeper": lambda zone: socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).connect(
        "/run/sez/keeper.sock"),
    "kill-parent": lambda zone: os.kill(os.getppid(), signal.SIGKILL),
    "kill-init": lambda zone: os.kill(1, signal.SIGKILL),
    "abort": lambda zone: os.abort(),
    "raise": lambda zone: 1 / 0,
    "not-bytes": lambda zone: "text",
}


def run(data, zone):
    result = BEHAVIOURS[data.decode()](zone)
    return result if isinstance(result, (bytes, str)) else b"survived"
