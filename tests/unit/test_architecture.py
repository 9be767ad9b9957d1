"""The architecture, as import rules (docs/architecture.md, "Where each concern lives").

Parses every module's imports (no QEMU, nothing imported) and checks who may import whom:

- the firmware imports neither the emulator nor the host driver;
- the emulator never imports the host driver;
- the host side (emulator, host_driver, bench) imports only the firmware's contract,
  ``firmware.abi`` (and the package root, for its version and location);
- the contract imports only itself, and only libraries the guest has;
- each zone process's package imports no other process's package, only the contract and the
  runtime (PID 1 starts them all; the others may read PID 1's hardware hand-over);
- layer 0 imports exactly what its docstring says it trusts;
- no import cycles between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("firmware", "emulator", "host_driver")
#: Third-party libraries the guest image carries (what firmware.abi may use).
GUEST_LIBRARIES = {"cbor2", "cryptography", "pyasn1"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES + ("bench",):
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str:
    """``name`` as the module that defines it (``a.b.c`` -> ``a.b`` if ``c`` is a name)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str, path: Path) -> set[str]:
    """Every module ``module`` imports (absolute names, internal ones resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                full = f"{prefix}.{alias.name}"
                found.add(full if full in MODULES else _resolve(prefix))
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _internal(module: str) -> set[str]:
    return {m for m in GRAPH[module] if m.split(".")[0] in PACKAGES}


def _within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _violations(modules: list[str], allowed: tuple[str, ...],
                exact: tuple[str, ...] = ()) -> list[str]:
    """What ``modules`` import from the project outside the packages ``allowed`` and the
    modules ``exact``."""
    return [f"{m} imports {i}" for m in modules for i in sorted(_internal(m))
            if not (i in exact or _within(i, *allowed))]


def _of(*packages: str) -> list[str]:
    return [m for m in MODULES if _within(m, *packages)]


def test_the_tree_was_read() -> None:
    assert "firmware.abi.wire" in GRAPH and "host_driver" in GRAPH and "emulator.machine" in GRAPH
    assert "firmware.abi.errors" in GRAPH["firmware.abi.wire"]


def test_the_firmware_imports_neither_the_emulator_nor_the_host_driver() -> None:
    assert _violations(_of("firmware"), ("firmware",)) == []


def test_the_emulator_never_imports_the_host_driver() -> None:
    assert _violations(_of("emulator"), ("emulator", "firmware")) == []


@pytest.mark.parametrize("side", ["emulator", "host_driver", "bench"])
def test_the_host_side_imports_only_the_contract(side: str) -> None:
    assert _violations(_of(side), ("firmware.abi", "emulator", "host_driver"),
                       exact=("firmware",)) == []


def test_the_contract_imports_only_itself_and_guest_libraries() -> None:
    wrong = []
    for module in _of("firmware.abi"):
        for name in GRAPH[module]:
            top = name.split(".")[0]
            if top in PACKAGES and not _within(name, "firmware.abi"):
                wrong.append(f"{module} imports {name}")
            elif top not in PACKAGES and top not in GUEST_LIBRARIES and not _stdlib(top):
                wrong.append(f"{module} imports {name} (not in the guest image)")
    assert wrong == []


def _stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names or name == "__future__"


@pytest.mark.parametrize("process", ["layer0", "monitor", "runner"])
def test_a_zone_process_imports_no_other_process(process: str) -> None:
    allowed = ("firmware.abi", "firmware.runtime", f"firmware.{process}")
    assert _violations(_of(f"firmware.{process}"), allowed,
                       exact=("firmware", "firmware.pid1.hardware")) == []


def test_the_runtime_imports_only_itself() -> None:
    assert _violations(_of("firmware.runtime"), ("firmware.runtime",)) == []


def test_layer0_imports_what_its_docstring_says_it_trusts() -> None:
    imported = {i for m in _of("firmware.layer0") for i in _internal(m)
                if not _within(i, "firmware.layer0")}
    assert imported <= {"firmware", "firmware.pid1.hardware", "firmware.runtime.console",
                        "firmware.runtime.ipc", "firmware.runtime.process",
                        "firmware.runtime.virtio"} | set(
        _of("firmware.abi"))
    doc = ast.get_docstring(ast.parse(MODULES["firmware.layer0.keeper"].read_text())) or ""
    for name in ("firmware.abi", "firmware.pid1.hardware", "runtime"):
        assert name in doc, f"layer 0's docstring does not name {name}"


def test_no_import_cycles() -> None:
    cycles = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(_internal(node)):
            if nxt not in GRAPH:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []
