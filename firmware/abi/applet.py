"""Applet packages: the canonical form that is measured and signed.

An applet is a directory of Python files and a ``manifest.toml``::

    name = "key-custody"      # versions of one name replace each other
    version = 3               # integer >= 1; the zone refuses one lower than it has seen
    entry = "main:run"        # module:function, called as run(data: bytes, zone) -> bytes
    [limits]                  # optional; defaults and ceilings in LIMITS
    cpu_seconds = 5
    memory_mb = 64
    wall_seconds = 10
    output_bytes = 1048576
    processes = 8
    idempotent = false        # optional: may a job cut off by a power loss run again?
    warm = false              # optional: serve jobs from a long-lived worker (see below)

The package is one canonical CBOR map (sorted keys, definite lengths)::

    {"format": 1, "manifest": {...parsed and completed...},
     "files": {path: bytes}, "inventory": {path: SHA-384 hex}}

``warm = true`` trades isolation between the applet's own jobs for speed: one confined
process serves them one after another (firmware.runner.runner), so whatever a job leaves in
memory the next job of the applet can read. Other applets stay as isolated as ever.

Its measurement is the SHA-384 of those bytes. A ``.sez`` file is a COSE_Sign1 (ES384) whose
payload is the package, signed by the owner (``kid`` = SHA-256 of the owner's public key).
``parse`` checks everything a package claims: the manifest it carries is the one its
``manifest.toml`` says, the inventory matches the files exactly, the entry module exists.
Runs in the guest and on the host.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from typing import Any

import cbor2

from .errors import BadPackage

__all__ = ["LIMITS", "NAME", "Package", "pack_files", "parse", "measure",
           "validate_manifest", "FORMAT"]

FORMAT = 1
#: limit -> (default, minimum, maximum)
LIMITS: dict[str, tuple[int, int, int]] = {
    "cpu_seconds": (5, 1, 300),
    "memory_mb": (64, 16, 512),
    "wall_seconds": (10, 1, 600),
    "output_bytes": (1 << 20, 0, 8 << 20),
    "processes": (8, 1, 64),
}
#: An applet's name.
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_PATH = re.compile(r"^(?!.*(^|/)\.)[A-Za-z0-9_./-]{1,200}$")
_ENTRY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")
MAX_FILES = 256
#: The most bytes an applet seals at once (``zone.seal``).
SEAL_MAX = 1 << 20
MAX_PACKAGE = 8 << 20


def measure(package: bytes) -> bytes:
    return hashlib.sha384(package).digest()


def validate_manifest(raw: Any) -> dict[str, Any]:
    """The manifest with its limits completed; BadPackage saying what is wrong."""
    if not isinstance(raw, dict):
        raise BadPackage("the manifest is not a table")
    name, version, entry = raw.get("name"), raw.get("version"), raw.get("entry")
    if not isinstance(name, str) or not NAME.match(name):
        raise BadPackage("name must be 1-64 of a-z, 0-9, '-'")
    if type(version) is not int or version < 1:
        raise BadPackage("version must be an integer >= 1")
    if not isinstance(entry, str) or not _ENTRY.match(entry):
        raise BadPackage("entry must be 'module:function'")
    for flag in ("idempotent", "warm"):
        if not isinstance(raw.get(flag, False), bool):
            raise BadPackage(f"{flag} must be true or false")
    given = raw.get("limits", {})
    if not isinstance(given, dict) or set(given) - set(LIMITS):
        raise BadPackage(f"limits may only set {', '.join(LIMITS)}")
    limits = {}
    for key, (default, low, high) in LIMITS.items():
        value = given.get(key, default)
        if type(value) is not int or not low <= value <= high:
            raise BadPackage(f"limits.{key} must be an integer in {low}..{high}")
        limits[key] = value
    return {**raw, "limits": limits}


def _declared_manifest(files: dict[str, bytes]) -> dict[str, Any]:
    """The manifest that ``files``' manifest.toml declares, validated and completed."""
    if "manifest.toml" not in files:
        raise BadPackage("no manifest.toml")
    try:
        return validate_manifest(tomllib.loads(files["manifest.toml"].decode()))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadPackage(f"manifest.toml: {exc}") from exc


def pack_files(files: dict[str, bytes]) -> bytes:
    """The canonical package of ``files`` (which must hold manifest.toml)."""
    manifest = _declared_manifest(files)
    package = {
        "format": FORMAT,
        "manifest": manifest,
        "files": dict(sorted(files.items())),
        "inventory": {path: hashlib.sha384(data).hexdigest() for path, data in sorted(files.items())},
    }
    data = cbor2.dumps(package, canonical=True)
    parse(data)
    return data


class Package:
    def __init__(self, raw: bytes, manifest: dict[str, Any], files: dict[str, bytes]) -> None:
        self.raw = raw
        self.manifest = manifest
        self.files = files
        self.measurement = measure(raw)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def entry(self) -> tuple[str, str]:
        module, _, function = str(self.manifest["entry"]).partition(":")
        return module, function

    @property
    def limits(self) -> dict[str, int]:
        return dict(self.manifest["limits"])

    @property
    def idempotent(self) -> bool:
        return bool(self.manifest.get("idempotent", False))

    @property
    def warm(self) -> bool:
        """Whether a long-lived worker serves the applet's jobs (firmware.runner.runner)."""
        return bool(self.manifest.get("warm", False))

    @property
    def id(self) -> str:
        """Short id: the first 16 hex digits of the measurement."""
        return self.measurement.hex()[:16]


def parse(raw: bytes) -> Package:
    """Check a package in canonical form; BadPackage if it is malformed or lies."""
    if len(raw) > MAX_PACKAGE:
        raise BadPackage(f"package of {len(raw)} bytes exceeds {MAX_PACKAGE}")
    try:
        package = cbor2.loads(raw)
    except Exception as exc:  # cbor2 raises several types on hostile input: all mean this
        raise BadPackage(f"package is not CBOR: {exc}") from exc
    if not isinstance(package, dict) or package.get("format") != FORMAT:
        raise BadPackage(f"not a format-{FORMAT} applet package")
    files, inventory = package.get("files"), package.get("inventory")
    if not isinstance(files, dict) or not isinstance(inventory, dict):
        raise BadPackage("package has no files or no inventory")
    if len(files) > MAX_FILES:
        raise BadPackage(f"more than {MAX_FILES} files")
    for path, data in files.items():
        if not isinstance(path, str) or not _PATH.match(path) or not isinstance(data, bytes):
            raise BadPackage(f"bad file entry {path!r}")
    if set(inventory) != set(files) or any(
            hashlib.sha384(files[p]).hexdigest() != inventory[p] for p in files):
        raise BadPackage("the inventory does not match the files")
    declared = _declared_manifest(files)
    if package.get("manifest") != declared:
        raise BadPackage("the packed manifest is not the one manifest.toml says")
    if cbor2.dumps(package, canonical=True) != raw:
        raise BadPackage("package is not in canonical form")
    result = Package(raw, declared, files)
    module, _ = result.entry
    module_path = module.replace(".", "/")
    if f"{module_path}.py" not in files and f"{module_path}/__init__.py" not in files:
        raise BadPackage(f"entry module {module} is not in the package")
    return result
