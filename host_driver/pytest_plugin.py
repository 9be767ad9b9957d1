"""pytest plugin (registered under ``pytest11``): booted zones as fixtures.

Fixtures:

``sez_home``          a private $SEZ_HOME for the test session, with a factory (root CA)
``sez_zone_factory``  ``factory(name, debug=False, snapshot=False) -> BootedZone``: provisions
                      and boots a zone (with ``snapshot``, resumed from the image's template);
                      every zone it made is killed at the end of the session, its console log
                      kept under the session's $SEZ_HOME, and no QEMU process may be left
``sez_zone``          one zone for the whole session (``.url`` is its channel), resumed from the
                      image's template (emulator.template; made at the first use, one boot)

A failed test's report has a section per booted zone: QEMU's run state and the console's tail.

Without QEMU or a built image these fixtures skip with the reason; with ``SEZ_REQUIRE_QEMU=1``
(what ``make test`` sets) they fail instead, so a broken set-up can never pass as skipped.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from typing import Callable, Iterator

import pytest

from emulator.board import QEMU
from emulator.errors import ImageError
from emulator.factory import Factory
from emulator.image import load_image
from emulator.paths import SezHome

from .lifecycle import BootedZone, booted, qemu_processes, qemu_state

__all__ = ["sez_home", "sez_zone_factory", "sez_zone"]


#: The zones sez_zone_factory booted in this session.
_BOOTED: list[BootedZone] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report shows, for every zone booted, QEMU's run state (from QMP,
    bounded) and the console's tail: a hung guest is told apart from a failing test."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for zone in _BOOTED:
        report.sections.append((f"sez zone {zone.name}",
                                f"QEMU: {qemu_state(zone.machine)}\n"
                                f"console ({zone.machine.console_log}), last lines:\n"
                                f"{zone.machine.console(tail=15)}"))


def _unavailable(reason: str) -> None:
    if os.environ.get("SEZ_REQUIRE_QEMU") == "1":
        pytest.fail(f"SEZ_REQUIRE_QEMU=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sez_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SezHome]:
    root = tmp_path_factory.mktemp("sez-home")
    saved = os.environ.get("SEZ_HOME")
    os.environ["SEZ_HOME"] = str(root)
    home = SezHome(root)
    Factory(home).init()
    try:
        yield home
    finally:
        if saved is None:
            os.environ.pop("SEZ_HOME", None)
        else:
            os.environ["SEZ_HOME"] = saved


@pytest.fixture(scope="session")
def sez_zone_factory(sez_home: SezHome) -> Iterator[Callable[..., BootedZone]]:
    if shutil.which(QEMU) is None:
        _unavailable(f"{QEMU} is not installed (make deps)")
    try:
        load_image()
    except ImageError as exc:
        _unavailable(str(exc))
    zones = ExitStack()  # closing it kills every zone booted here

    def factory(name: str, *, debug: bool = False, snapshot: bool = False) -> BootedZone:
        if not sez_home.device_dir(name).exists():
            Factory(sez_home).provision(name)
        zone = zones.enter_context(booted(name, debug=debug, home=sez_home, snapshot=snapshot))
        _BOOTED.append(zone)
        return zone

    try:
        yield factory
    finally:
        _BOOTED.clear()
        zones.close()
    left = qemu_processes(sez_home.root / "run")
    assert not left, f"QEMU processes left behind: {left}"


@pytest.fixture(scope="session")
def sez_zone(sez_zone_factory: Callable[..., BootedZone]) -> BootedZone:
    return sez_zone_factory("session-zone", snapshot=True)
