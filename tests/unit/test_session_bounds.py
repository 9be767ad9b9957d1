"""The monitor's attested sessions under hostile clients, on the host: the real session code
(firmware.monitor.sessions) with a TLS key from the real layer-0 code, a TLS client on memory
BIOs. A large answer travels in several events; unfinished messages are bounded across
sessions; a closed session's memory goes at once."""

from __future__ import annotations

import gc
import os
import ssl
import weakref
from typing import Any

import pytest

from emulator.factory import Factory
from firmware.abi import wire
from firmware.abi.errors import Code
from firmware.monitor.deferred import Deferred
from firmware.monitor.sessions import EVENT_DATA, IN_FLIGHT, Session, Sessions
from host_driver.relay.tls import client_context
from host_driver.relay.tunnel import DATA_PIECE, Tunnel

from .conftest import Zone

MIB = 1 << 20


class Keeper:
    """Layer 0's answer to the session-key request, made once."""

    def __init__(self, zone: Zone) -> None:
        self.made = zone.identity.session_key()

    def call(self, op: Any, args: dict[str, Any]) -> Deferred:
        return Deferred.of(self.made)


def echo(frame: wire.Frame, session: Session) -> None:
    """What the monitor does with a session's request, for echo."""
    session.respond(frame.payload["id"], {"data": frame.payload["args"]["data"]})


class Client:
    """A TLS client of session ``number``: writes go in as session-data, events come out."""

    def __init__(self, sessions: Sessions, events: list[dict[str, Any]],
                 context: ssl.SSLContext) -> None:
        opened = sessions.op_open({})
        self.number = opened.value["session"]
        self.sessions, self.events = sessions, events
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._in, self._out, server_side=False)
        self.decoder = wire.FrameDecoder()
        self.closed: dict[str, Any] | None = None  # how the zone ended the session
        for _ in range(4):  # the handshake's flights
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.pump()
        self.pump()

    def pump(self) -> None:
        data = self._out.read()
        for start in range(0, len(data), DATA_PIECE):
            if self.number in self.sessions.open:
                self.sessions.op_data({"session": self.number,
                                       "data": data[start:start + DATA_PIECE]})
        for event in self.mine():
            if "data" in event:
                self._in.write(event["data"])
            else:
                self.closed = event

    def mine(self) -> list[dict[str, Any]]:
        found = [e for e in self.events if e["session"] == self.number]
        self.events[:] = [e for e in self.events if e["session"] != self.number]
        return found

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.pump()

    def frames(self) -> list[wire.Frame]:
        out = bytearray()
        while True:
            try:
                out += self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                break
        return [i for i in self.decoder.feed(bytes(out)) if isinstance(i, wire.Frame)]


@pytest.fixture
def sessions(zone: Zone) -> tuple[Sessions, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    keeper: Any = Keeper(zone)  # what Sessions asks of a KeeperLink: call()
    return Sessions(keeper, {}, {}, lambda args, n: {}, echo, events.append), events


def test_a_large_answer_goes_in_several_events(sessions: tuple[Sessions, list[Any]],
                                               factory: Factory) -> None:
    """An answer near the largest message is more than one event may carry once encrypted:
    it once ended the session with ``internal`` (and the host's Tunnel could not send such
    a request either)."""
    zone_sessions, events = sessions
    client = Client(zone_sessions, events, client_context(factory.root_cert()))
    data = os.urandom(wire.MAX_PAYLOAD - 1024)
    client.tls.write(wire.encode_request(7, "echo", {"data": data}))
    outgoing = client._out.read()
    sizes = []
    for start in range(0, len(outgoing), DATA_PIECE):
        zone_sessions.op_data({"session": client.number,
                               "data": outgoing[start:start + DATA_PIECE]})
        sizes += [len(e["data"]) for e in events if "data" in e]
        for event in client.mine():
            assert "closed" not in event, event
            client._in.write(event["data"])
    assert len(outgoing) > wire.MAX_PAYLOAD and max(sizes) <= EVENT_DATA
    [answer] = client.frames()
    assert answer.payload == {"id": 7, "ok": True, "result": {"data": data}}


def test_a_tunnel_sends_large_writes_in_pieces() -> None:
    posted: list[tuple[str, dict[str, Any]]] = []

    async def drain() -> None:
        pass

    tunnel = Tunnel("pty", 3, lambda op, args, on_error: posted.append((op, args)), drain,
                    lambda number: None)
    tunnel.write(bytes(2 * DATA_PIECE + 5))
    assert [len(args["data"]) for _, args in posted] == [DATA_PIECE, DATA_PIECE, 5]
    assert {args["session"] for _, args in posted} == {3}


def test_unfinished_messages_are_bounded_across_sessions(
        sessions: tuple[Sessions, list[Any]], factory: Factory) -> None:
    """Each session may hold one unfinished message of up to 16 MiB; together no more than
    IN_FLIGHT: the session that would go past it is ended, saying why."""
    zone_sessions, events = sessions
    context = client_context(factory.root_cert())
    clients = [Client(zone_sessions, events, context) for _ in range(3)]
    body = os.urandom(15 * MIB)
    unfinished = b"".join(bytes(p) for p in wire.frames_of(wire.Kind.REQUEST, body)[:-2])
    for client in clients:
        client.send(unfinished)
    assert zone_sessions.in_flight() <= IN_FLIGHT
    assert sorted(zone_sessions.open) == [c.number for c in clients[:2]]
    ended = clients[2].closed
    assert ended is not None and ended["closed"]["code"] == Code.SESSION_FAILED
    assert "unfinished" in ended["closed"]["message"]
    assert clients[0].closed is None and clients[1].closed is None
    assert zone_sessions.stats()["failed"] == 1


def test_a_closed_session_lets_go_of_its_memory_at_once(
        sessions: tuple[Sessions, list[Any]], factory: Factory) -> None:
    """A session refers to itself through its ops; closed, it must not wait for the cyclic
    garbage collector (closed sessions holding 16 MiB each once ran the monitor out of
    memory)."""
    zone_sessions, events = sessions
    context = client_context(factory.root_cert())
    gc.disable()
    try:
        for end in ("close", "reset"):
            client = Client(zone_sessions, events, context)
            client.send(b"".join(bytes(p) for p in wire.frames_of(
                wire.Kind.REQUEST, os.urandom(MIB))[:-2]))
            held = weakref.ref(zone_sessions.open[client.number])
            assert held().decoder.pending > 0  # type: ignore[union-attr]
            if end == "close":
                zone_sessions.op_close({"session": client.number})
            else:
                zone_sessions.reset()
            assert held() is None, f"a session after {end} waits for the garbage collector"
    finally:
        gc.enable()
