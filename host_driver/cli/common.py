"""What the ``sez`` commands share: registering a command, printing its result, reading its
input files, the root certificate it trusts, and a session with a named zone."""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from cryptography import x509

from emulator.device import Device
from emulator.factory import Factory
from emulator.machine import Machine
from emulator.paths import SezHome, image_dir
from firmware.abi.errors import SezError

from ..relay.sync import SyncZone
from ..verifier import Reference, VerificationError, load_root

__all__ = ["Command", "command", "group", "emit", "jsonable", "read_file", "trusted_root",
           "reference_values", "appraising", "open_zone", "attested_session", "trust_flags"]

#: What a command runs: it gets the parsed arguments, prints its result, raises on failure.
Command = Callable[[argparse.Namespace], None]


def command(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
            func: Command, help: str, *, json_flag: bool = True) -> argparse.ArgumentParser:
    """Add the command ``name`` (running ``func``) to ``parent``, with ``--json`` unless told
    otherwise; its help is also its description."""
    c: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
    c.set_defaults(func=func)
    if json_flag:
        c.add_argument("--json", action="store_true", help="machine-readable output")
    return c


def group(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
          ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command ``name`` whose own commands follow it (``sez image build``)."""
    return parent.add_parser(name, help=help).add_subparsers(
        dest=f"{name}_command", required=True, metavar="COMMAND")


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else ``text``."""
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


def jsonable(value: Any) -> Any:
    """``value`` with its bytes as hex and its keys as strings."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SezError(f"cannot read {path}: {exc.strerror}") from exc


def trusted_root(path: str | None) -> x509.Certificate:
    """The manufacturer root certificate at ``path`` (``--root``), else the factory's."""
    return load_root(path or Factory().root_cert_path)


def reference_values(path: str | None) -> Reference:
    """The reference values at ``path`` (``--reference``), else the image's manifest."""
    return Reference.from_manifest(path or image_dir() / "manifest.json")


def trust_flags(c: argparse.ArgumentParser) -> None:
    """``--root`` and ``--reference``: what an attested session is appraised against."""
    c.add_argument("--root", help="manufacturer root certificate (default: the factory's)")
    c.add_argument("--reference", help="reference values (default: the image's manifest.json)")


@contextmanager
def attested_session(zone: SyncZone, name: str, args: argparse.Namespace, *,
                     allow_debug: bool = False) -> Iterator[SyncZone]:
    """An attested session with device ``name``'s zone (Zone.session), appraised against
    ``args.root`` and ``args.reference`` and the UEID the factory recorded for ``name``; a
    debug zone only with ``allow_debug``."""
    ueid = bytes.fromhex(str(Device.open(name).info["ueid"]))
    with appraising():
        session = zone.session(root=trusted_root(args.root),
                               reference=reference_values(args.reference), ueid=ueid,
                               allow_debug=allow_debug)
    with session:
        yield session


@contextmanager
def appraising() -> Iterator[None]:
    """A VerificationError inside is the command's failure: ``verification failed: CHECK: …``."""
    try:
        yield
    except VerificationError as exc:
        raise SezError(f"verification failed: {exc}") from exc


def open_zone(name: str, timeout: float = 60.0) -> SyncZone:
    """A session with the running zone of device ``name``."""
    SezHome.default().existing_device(name)
    return SyncZone(Machine(name).channel, timeout=timeout)
