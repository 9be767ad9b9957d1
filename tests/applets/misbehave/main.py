import os
import signal
import socket
import struct
import time

REQUEST, RESPONSE = 1, 2


def _spin():
    while True:  # CPU only: the memory stays flat, so the CPU-time limit is what ends it
        pass


def _open(path):
    with open(path, "rb") as f:
        return f.read(16)


def _frame(kind, body):
    """A frame of the job socket's protocol (abi.wire), made by hand: what a hostile applet
    can write to the socket it holds."""
    return b"SZ" + struct.pack(">BBI", 2, kind, len(body)) + body


def _message(body):
    """``body`` in two frames: the first 64 KiB with MORE set, then a continuation."""
    return (b"SZ" + struct.pack(">BBI", 2, 0x80 | REQUEST, 65536) + body[:65536]
            + _frame(4, body[65536:]))


def _raw(zone, data):
    zone._channel.sock.sendall(data)
    time.sleep(10)  # the zone ends the job when it reads that; the wall limit is 4 s


def _call(zone, op, args):
    """A call with any args (the ZoneAPI only makes well-formed ones); the zone's answer."""
    channel = zone._channel
    channel.next_id += 1
    channel.send(REQUEST, {"id": channel.next_id, "op": op, "args": args})
    payload = channel._next_frame().payload
    if not payload.get("ok"):
        error = payload.get("error") or {}
        raise RuntimeError(f"zone refused {op}: [{error.get('code')}] {error.get('message')}")
    return b"answered"


def _cbor_head(major, value):
    return bytes([major << 5 | 26]) + struct.pack(">I", value)


def _log_flood(zone):
    for i in range(500):
        zone.log(f"line {i}")
    return b"logged"


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
    # the job socket, spoken wrongly
    "garbage": lambda zone: _raw(zone, os.urandom(4096)),
    "bignum": lambda zone: _raw(zone, _frame(REQUEST, b"\xa1\x62op\xc4\x82\x00\xc2"
                                             + _cbor_head(2, 60000) + b"\xff" * 60000)),
    "deep": lambda zone: _raw(zone, _frame(REQUEST, b"\x81" * 60000 + b"\x00")),
    "many-items": lambda zone: _raw(zone, _message(_cbor_head(4, 65537) + bytes(65537))),
    "bad-args": lambda zone: _call(zone, "sign", [1, 2]),
    "unknown-call": lambda zone: _call(zone, "format-the-disk", {}),
    "response-frame": lambda zone: (zone._channel.sock.sendall(_frame(RESPONSE, b"\xa0")),
                                    b"survived")[1],
    "log-flood": _log_flood,
    "forge-log": lambda zone: (zone.log("ok\n[    1.00] sez: the key keeper ended\r\x1b[2J"),
                               b"logged")[1],
}


def run(data, zone):
    behaviour, _, name = data.decode().partition(":")
    if behaviour == "secret":  # a provisioned secret whose policy is for another applet
        return zone.secret(name)
    result = BEHAVIOURS[behaviour](zone)
    return result if isinstance(result, (bytes, str)) else b"survived"
