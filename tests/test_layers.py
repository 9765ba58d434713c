"""The house's layers import only downward, and no two modules import each other in a circle.

core (``tokenskip/*.py``, ``tokenskip/scorers``) → ``tokenskip.runtime`` (local generation) →
``tokenskip.tasks`` (GSM8K) → ``tokenskip.proxy`` / ``tokenskip.evaluation`` /
``tokenskip.trainers`` (side by side, never importing each other) → ``tokenskip.cli``.
Read from the source with ``ast`` (imports inside functions count too), so a lazy import that
runs upward fails here as surely as a top-level one. One name goes up on purpose:
``tokenskip.wrap``, the package's lazy alias of ``tokenskip.proxy.api.sdk.wrap`` (by
``importlib``, on first use), so ``import tokenskip`` loads no gateway;
``test_the_only_upward_name_is_wrap`` holds it to that.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tokenskip"
LAYER = {"core": 0, "runtime": 1, "tasks": 2, "proxy": 3, "evaluation": 3, "trainers": 3, "cli": 4}
SIDE_BY_SIDE = {"proxy", "evaluation", "trainers"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYER else "core"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m == "tokenskip" or m.startswith("tokenskip.")}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {
    name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()
}


def test_the_package_is_laid_out_as_documented():
    rooms = {room(m) for m in MODULES}
    assert rooms == set(LAYER)
    for old in ("proxy", "evaluation", "trainers"):  # no top-level packages that can clash
        assert not (PACKAGE.parent / old / "__init__.py").exists()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_downward(name):
    here = room(name)
    for target in sorted(GRAPH[name]):
        there = room(target)
        if target == "tokenskip":
            continue  # the package's own __init__ (core API)
        assert LAYER[there] <= LAYER[here], f"{name} ({here}) imports {target} ({there}): upward"
        if here in SIDE_BY_SIDE and there in SIDE_BY_SIDE:
            assert here == there, f"{name} imports {target}: {here} and {there} are side by side"


def test_no_import_circles():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_the_gateway_config_reads_deployments_without_importing_a_backend():
    """``proxy.config`` decides each deployment's backend from ``proxy.deployments`` (pure
    functions of its litellm params); importing a backend would tie configuration to
    aiohttp sessions and litellm."""
    reached, todo = set(), ["tokenskip.proxy.infra.config"]
    while todo:  # everything config imports, directly or not
        name = todo.pop()
        for target in GRAPH.get(name, ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert "tokenskip.proxy.infra.deployments" in reached
    assert not {m for m in reached if m.startswith("tokenskip.proxy.infra.backends")}


GATEWAY_FLOOR = {"wire": 0, "infra": 1, "serving": 2, "api": 3}
"""The gateway's rooms, bottom up: the wire vocabulary at ``tokenskip/proxy/*.py``
(protocol, errors, jsonio), then ``infra``, ``serving`` and ``api``."""


def gateway_room(module: str) -> str:
    parts = module.split(".")
    assert parts[:2] == ["tokenskip", "proxy"]
    if len(parts) == 2:
        return "wire"  # the package's docstring
    return parts[2] if parts[2] in GATEWAY_FLOOR else "wire"


def test_the_gateway_is_three_rooms_over_its_wire_vocabulary():
    proxy = PACKAGE / "proxy"
    assert {p.name for p in proxy.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "api",
        "serving",
        "infra",
    }
    assert sorted(p.stem for p in proxy.glob("*.py")) == [
        "__init__",
        "errors",
        "jsonio",
        "protocol",
    ]


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("tokenskip.proxy")))
def test_the_gateway_rooms_import_only_downward(name):
    here = gateway_room(name)
    for target in sorted(GRAPH[name]):
        if not target.startswith("tokenskip.proxy"):
            continue
        there = gateway_room(target)
        assert GATEWAY_FLOOR[there] <= GATEWAY_FLOOR[here], (
            f"{name} ({here}) imports {target} ({there}): upward"
        )


def test_the_only_upward_name_is_wrap():
    import tokenskip

    source = (PACKAGE / "__init__.py").read_text()
    assert source.count("import_module(") == 1 and '"tokenskip.proxy.api.sdk"' in source
    from tokenskip.proxy.api.sdk import wrap

    assert tokenskip.wrap is wrap
    with pytest.raises(AttributeError):
        tokenskip.no_such_name  # noqa: B018
