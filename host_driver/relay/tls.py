"""The client end of an attested session's TLS: a channel (write, drain, close) that runs
TLS 1.3 over a :class:`~host_driver.relay.tunnel.Tunnel`, with Python's ssl and memory BIOs.

The zone's certificate must chain to the manufacturer's root (session <- alias <- DeviceID
<- root): a chain that does not raises VerificationError ``tls-certificate``; any other TLS
failure (bytes changed, dropped, replayed, reordered or injected by the relay) SessionFailed.
``Zone.session`` (host_driver.relay.client) runs a Zone over this channel and appraises the
zone before handing it out.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from firmware.abi.errors import SessionFailed, SezError

from ..errors import ChannelClosed, ZoneTimeout
from ..verifier import VerificationError
from .channel import Channel
from .tunnel import Tunnel

__all__ = ["TlsChannel", "client_context"]

_READ = 1 << 16


def client_context(root: x509.Certificate) -> ssl.SSLContext:
    """TLS 1.3 only, trusting ``root`` alone. No host name check: the zone is identified by
    its evidence (UEID, measurements), which the appraisal checks, not by a DNS name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=root.public_bytes(serialization.Encoding.DER))
    return context


class TlsChannel(Channel):
    """The channel interface (write, drain, close) over TLS in a Tunnel."""

    def __init__(self, tunnel: Tunnel, context: ssl.SSLContext,
                 on_data: Callable[[bytes], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self.url = tunnel.url
        self.tunnel = tunnel
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=False)
        self._on_data = on_data
        self._on_lost = on_lost
        self._handshaken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failure: SezError | None = None
        tunnel.on_data = self._received
        tunnel.on_close = self._tunnel_closed

    async def handshake(self, timeout: float) -> None:
        """Run the TLS handshake, for at most ``timeout`` seconds."""
        self._step()
        try:
            await asyncio.wait_for(asyncio.shield(self._handshaken), timeout)
        except TimeoutError:
            self._fail(ZoneTimeout(f"no TLS handshake within {timeout:.1f} s", op="session",
                                   seconds=timeout))
            raise self.failure from None  # type: ignore[misc]

    @property
    def peer_certificate(self) -> x509.Certificate:
        der = self._tls.getpeercert(binary_form=True)
        assert der is not None  # CERT_REQUIRED: the handshake had one
        return x509.load_der_x509_certificate(der)

    def write(self, data: bytes) -> None:
        if self.failure is not None:
            return
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            self._fail(SessionFailed(f"TLS: {exc.reason or exc}"))
        self._pump()

    async def drain(self) -> None:
        await self.tunnel.drain()

    def close(self) -> None:
        if self.failure is None and self._handshaken.done():
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass
            self._pump()
        self.tunnel.close()

    # -- the TLS engine ---------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        self._in.write(data)
        self._step()

    def _step(self) -> None:
        try:
            if not self._handshaken.done():
                try:
                    self._tls.do_handshake()
                except ssl.SSLWantReadError:
                    return
                self._handshaken.set_result(None)
            while True:
                try:
                    chunk = self._tls.read(_READ)
                except ssl.SSLWantReadError:
                    return
                if not chunk:
                    self._fail(ChannelClosed("the zone closed the session"))
                    return
                self._on_data(chunk)
        except ssl.SSLZeroReturnError:
            self._fail(ChannelClosed("the zone closed the session"))
        except ssl.SSLCertVerificationError as exc:
            self._fail(VerificationError("tls-certificate", exc.verify_message or str(exc)))
        except ssl.SSLError as exc:
            self._fail(SessionFailed(f"TLS: {exc.reason or exc}"))
        finally:
            self._pump()

    def _pump(self) -> None:
        data = self._out.read()
        if data:
            self.tunnel.write(data)

    def _tunnel_closed(self, error: SezError | None) -> None:
        self._fail(error or ChannelClosed("the zone closed the session"))

    def _fail(self, error: SezError) -> None:
        if self.failure is not None:
            return
        self.failure = error
        if not self._handshaken.done():
            self._handshaken.set_exception(error)
            self._handshaken.exception()  # retrieved: handshake() raises self.failure
        self._pump()  # an alert, if TLS has one to send
        self.tunnel.close()
        self._on_lost(error)

