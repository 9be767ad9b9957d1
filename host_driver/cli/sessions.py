"""``sez relay``: attested sessions for any TLS client. Every TCP connection to the listening
address becomes one session with the zone (firmware.monitor.sessions); the relay copies bytes
it cannot read, so ``openssl s_client -connect HOST:PORT -CAfile root.pem -tls1_3`` (or any
TLS 1.3 client trusting the manufacturer's root) talks to the zone end to end."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Callable

from emulator.machine import Machine
from emulator.paths import SezHome
from firmware.abi.errors import SezError, ZoneError

from ..relay.client import Zone, ZoneState
from ..relay.tunnel import Tunnel
from .common import command

__all__ = ["register"]

log = logging.getLogger(__name__)
#: Seconds between checks that the zone is still there (its heartbeat says so).
_WATCH = 0.5


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SezError(f"--listen takes HOST:PORT (e.g. 127.0.0.1:8443), not {text!r}")
    return host.strip("[]"), int(port)


def cmd_relay(args: argparse.Namespace) -> None:
    SezHome.default().existing_device(args.name)
    asyncio.run(relay(Machine(args.name).channel, *parse_listen(args.listen),
                      announce=lambda host, port: print(
                          f"relaying {args.name}'s attested sessions on {host}:{port}",
                          flush=True)))


async def relay(url: str, host: str, port: int, *,
                announce: Callable[[str, int], None] | None = None) -> None:
    """Serve ``host:port`` until SIGINT or SIGTERM, or until the zone goes away."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with await Zone.connect(url, hello_timeout=60.0) as zone:

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                tunnel = await zone.tunnel()
            except (ZoneError, SezError) as exc:
                log.warning("no session for %s: %s", writer.get_extra_info("peername"), exc)
                writer.close()
                return
            await join(tunnel, reader, writer)

        server = await asyncio.start_server(connection, host, port)
        bound = server.sockets[0].getsockname()
        if announce is not None:
            announce(bound[0], bound[1])
        async with server:
            while not stop.is_set() and zone.state is ZoneState.RUNNING:
                try:
                    await asyncio.wait_for(stop.wait(), _WATCH)
                except TimeoutError:
                    pass
        if zone.failure is not None:
            raise zone.failure


async def join(tunnel: Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
               ) -> None:
    """Copy bytes between ``tunnel`` and a TCP connection until either side ends."""
    ended = asyncio.Event()

    def closed(error: SezError | None) -> None:
        ended.set()
        writer.close()

    tunnel.on_data = writer.write
    tunnel.on_close = closed
    waiting = asyncio.ensure_future(ended.wait())
    try:
        while True:
            reading = asyncio.ensure_future(reader.read(1 << 16))
            await asyncio.wait({reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()
                return
            data = reading.result()
            if not data:
                return
            tunnel.write(data)
            await tunnel.drain()
    except ConnectionError:
        return
    finally:
        waiting.cancel()
        tunnel.close()
        writer.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = command(sub, "relay", cmd_relay, "relay TLS clients to the zone: each TCP connection "
                "to --listen is one attested session (TLS 1.3 terminating in the zone)",
                json_flag=False)
    c.add_argument("name")
    c.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="where to listen (port 0: any free port, printed)")
