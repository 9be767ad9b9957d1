"""The client end of an attested session: TLS 1.3 to the zone, appraised, then the zone's
operations inside it.

    async with await zone.session(root=root, reference=reference) as s:
        result = await s.run("aggregate", records, nonce=nonce)   # the host sees TLS only

:meth:`Session.start`, in order (any failure closes the session and raises):

1. TLS 1.3 over a :class:`~host_driver.relay.tunnel.Tunnel` (Python's ssl, memory BIOs). The
   zone's certificate must chain to ``root``: session <- alias <- DeviceID <- root. A chain
   that does not raises VerificationError ``tls-certificate``; any other TLS failure
   (bytes changed, dropped, replayed, reordered or injected by the relay) SessionFailed.
2. ``hello`` inside TLS.
3. Appraisal: ``attest`` with a fresh nonce, inside TLS, and
   :func:`~host_driver.verifier.verify_session`: the evidence verifies against ``root`` and
   ``reference`` (and ``ueid``; debug only with ``allow_debug``), names this connection's TLS
   key, and its alias key issued the TLS certificate. Only then does the caller get the
   session: every operation of :class:`~host_driver.relay.client.Zone`, plus those only a
   session carries (``secret_put``).
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from firmware.abi.errors import SessionFailed, SezError

from ..errors import ChannelClosed, ZoneTimeout
from ..verifier import AttestationResult, Reference, VerificationError, verify_session
from .channel import Channel
from .client import Zone, ZoneState
from .tunnel import Tunnel

__all__ = ["Session", "client_context"]

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


class Session(Zone):
    """An attested session: a Zone whose requests travel in TLS to the zone (see the module's
    docstring). ``attestation`` is what the appraisal proved."""

    _BREAK = b""  # a new TLS connection has no half-sent frame to end

    def __init__(self, tunnel: Tunnel, context: ssl.SSLContext, *, timeout: float) -> None:
        super().__init__(tunnel.url, timeout=timeout, heartbeat=None)
        self._tunnel = tunnel
        self._context = context
        self.attestation: AttestationResult | None = None

    @classmethod
    async def start(cls, tunnel: Tunnel, *, root: x509.Certificate, reference: Reference,
                    ueid: bytes | None = None, allow_debug: bool = False,
                    timeout: float) -> "Session":
        """Handshake, hello and appraisal over ``tunnel`` (see the module's docstring)."""
        session = cls(tunnel, client_context(root), timeout=timeout)
        try:
            await session.open()
            await session._appraise(root, reference, ueid, allow_debug)
        except BaseException:
            await session.close()
            raise
        return session

    async def _open_channel(self) -> Channel:
        channel = TlsChannel(self._tunnel, self._context, self._on_data, self._on_lost)
        await channel.handshake(self.timeout)
        return channel

    async def _appraise(self, root: x509.Certificate, reference: Reference,
                        ueid: bytes | None, allow_debug: bool) -> None:
        nonce = secrets.token_bytes(32)
        evidence = await self.attest(nonce)
        assert isinstance(self._channel, TlsChannel)
        self.attestation = verify_session(
            evidence, self._channel.peer_certificate, nonce=nonce, root=root,
            reference=reference, expected_ueid=ueid, allow_debug=allow_debug)

    def _on_lost(self, exc: Exception | None) -> None:
        """The session ended: waiting and later calls raise what ended it (SessionFailed,
        VerificationError, ChannelClosed …)."""
        if self.state is not ZoneState.CLOSED:
            self._dead(exc if isinstance(exc, SezError)
                       else ChannelClosed(f"the session closed ({exc or 'EOF'})"))

    async def close(self) -> None:
        await super().close()
        self._tunnel.close()
